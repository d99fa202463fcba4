//! The JSON-RPC 2.0 and MCP pieces the gateway speaks (pure).
//!
//! The gateway needs only a small part of MCP: `initialize`,
//! `notifications/initialized`, `ping`, `tools/list`, `tools/call`, and the
//! resource and prompt methods it passes through, on both sides (as a
//! server to clients, as a client to upstream servers).
//! Messages stay `serde_json::Value`s so that tool schemas and results pass
//! through unchanged, whatever fields newer revisions add.

use serde_json::{Map, Value, json};

/// The newest protocol revision this gateway speaks.
pub const LATEST_PROTOCOL_VERSION: &str = "2025-06-18";
/// Every revision this gateway speaks to clients, newest first.
pub const SUPPORTED_PROTOCOL_VERSIONS: [&str; 2] = ["2025-06-18", "2025-03-26"];
/// The revision a client that sends no `MCP-Protocol-Version` header and
/// has no session is assumed to speak (the transport spec's rule).
pub const DEFAULT_HTTP_PROTOCOL_VERSION: &str = "2025-03-26";
/// Revisions an upstream server may answer with; 2024-11-05 servers (stdio)
/// have the same tools surface.
pub const UPSTREAM_PROTOCOL_VERSIONS: [&str; 3] = ["2025-06-18", "2025-03-26", "2024-11-05"];

/// JSON-RPC and gateway error codes.
pub mod codes {
    /// Invalid JSON.
    pub const PARSE_ERROR: i64 = -32700;
    /// Not a valid JSON-RPC request.
    pub const INVALID_REQUEST: i64 = -32600;
    /// The method does not exist here.
    pub const METHOD_NOT_FOUND: i64 = -32601;
    /// Invalid parameters (also: unknown tool, as the MCP spec says).
    pub const INVALID_PARAMS: i64 = -32602;
    /// An internal error.
    pub const INTERNAL_ERROR: i64 = -32603;
    /// Policy refused the call (principal, registry lists).
    pub const POLICY_DENIED: i64 = -32010;
    /// The CapToken is missing, invalid or does not grant the tool.
    pub const CAPTOKEN_REFUSED: i64 = -32011;
    /// The guardrail blocked the arguments or the result.
    pub const GUARDRAIL_BLOCKED: i64 = -32012;
    /// The tool server did not answer in time.
    pub const UPSTREAM_TIMEOUT: i64 = -32013;
    /// The tool server is down, restarting, or answered badly.
    pub const UPSTREAM_UNAVAILABLE: i64 = -32014;
    /// The call could not be recorded in the audit log; nothing is returned.
    pub const AUDIT_UNAVAILABLE: i64 = -32015;
}

/// The revision to answer an `initialize` that asked for `requested`: the
/// same when supported, else the newest (the client then decides).
pub fn negotiate(requested: Option<&str>) -> &'static str {
    requested
        .and_then(supported)
        .unwrap_or(LATEST_PROTOCOL_VERSION)
}

/// The supported revision equal to `v`, if any.
pub fn supported(v: &str) -> Option<&'static str> {
    SUPPORTED_PROTOCOL_VERSIONS
        .iter()
        .copied()
        .find(|s| *s == v)
}

/// A JSON-RPC error object.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcError {
    /// The code.
    pub code: i64,
    /// The message.
    pub message: String,
    /// Extra data.
    pub data: Option<Value>,
}

impl RpcError {
    /// An error without data.
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            data: None,
        }
    }

    /// Adds data.
    #[must_use]
    pub fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }

    /// The JSON error object.
    pub fn to_value(&self) -> Value {
        let mut o = Map::new();
        o.insert("code".into(), json!(self.code));
        o.insert("message".into(), json!(self.message));
        if let Some(d) = &self.data {
            o.insert("data".into(), d.clone());
        }
        Value::Object(o)
    }

    /// Reads an error object (from an upstream response).
    pub fn from_value(v: &Value) -> Self {
        Self {
            code: v
                .get("code")
                .and_then(Value::as_i64)
                .unwrap_or(codes::INTERNAL_ERROR),
            message: v
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("(no message)")
                .to_owned(),
            data: v.get("data").cloned(),
        }
    }
}

/// One classified JSON-RPC message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// A request (has an id and a method).
    Request {
        /// The id (string or number).
        id: Value,
        /// The method.
        method: String,
        /// The params, if any.
        params: Option<Value>,
    },
    /// A notification (a method, no id).
    Notification {
        /// The method.
        method: String,
        /// The params, if any.
        params: Option<Value>,
    },
    /// A response (an id and a result or an error).
    Response {
        /// The id.
        id: Value,
        /// The result, or the error.
        outcome: Result<Value, RpcError>,
    },
}

/// Classifies one JSON value as a JSON-RPC 2.0 message.
pub fn classify(v: Value) -> Result<Message, RpcError> {
    let invalid = |why: &str| {
        RpcError::new(
            codes::INVALID_REQUEST,
            format!("invalid JSON-RPC message: {why}"),
        )
    };
    let Value::Object(mut o) = v else {
        return Err(invalid("not an object"));
    };
    if o.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(invalid("\"jsonrpc\" must be \"2.0\""));
    }
    let id = o.remove("id");
    if let Some(id) = &id
        && !(id.is_string() || id.is_i64() || id.is_u64())
    {
        return Err(invalid("\"id\" must be a string or an integer"));
    }
    let params = o.remove("params");
    if params
        .as_ref()
        .is_some_and(|p| !(p.is_object() || p.is_array()))
    {
        return Err(invalid("\"params\" must be an object"));
    }
    match (o.remove("method"), id) {
        (Some(Value::String(method)), Some(id)) => Ok(Message::Request { id, method, params }),
        (Some(Value::String(method)), None) => Ok(Message::Notification { method, params }),
        (Some(_), _) => Err(invalid("\"method\" must be a string")),
        (None, Some(id)) => {
            let outcome = match (o.remove("result"), o.remove("error")) {
                (Some(r), None) => Ok(r),
                (None, Some(e)) => Err(RpcError::from_value(&e)),
                _ => return Err(invalid("a response has exactly one of result and error")),
            };
            Ok(Message::Response { id, outcome })
        }
        (None, None) => Err(invalid("no method and no id")),
    }
}

/// A success response.
pub fn response(id: &Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

/// An error response (`id` is `null` when the request's id is unknown).
pub fn error_response(id: Option<&Value>, err: &RpcError) -> Value {
    json!({"jsonrpc": "2.0", "id": id.cloned().unwrap_or(Value::Null), "error": err.to_value()})
}

/// A request.
pub fn request(id: u64, method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
}

/// A notification.
pub fn notification(method: &str, params: Option<Value>) -> Value {
    match params {
        Some(p) => json!({"jsonrpc": "2.0", "method": method, "params": p}),
        None => json!({"jsonrpc": "2.0", "method": method}),
    }
}

/// The params of the `initialize` aibox sends upstream.
pub fn client_initialize_params(version: &str) -> Value {
    json!({
        "protocolVersion": version,
        "capabilities": {},
        "clientInfo": {"name": "aibox", "version": env!("CARGO_PKG_VERSION")},
    })
}

/// The result aibox answers a client's `initialize` with.
pub fn server_initialize_result(version: &str) -> Value {
    json!({
        "protocolVersion": version,
        "capabilities": {
            "tools": {"listChanged": false},
            "resources": {"subscribe": false, "listChanged": false},
            "prompts": {"listChanged": false},
        },
        "serverInfo": {"name": "aibox", "version": env!("CARGO_PKG_VERSION")},
        "instructions": "Tools of several MCP servers behind the aibox gateway, named SERVER__TOOL. \
    Calls need the turn's CapToken in params._meta[\"aibox/captoken\"] unless the operator turned that off.",
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_table() {
        assert_eq!(negotiate(Some("2025-06-18")), "2025-06-18");
        assert_eq!(negotiate(Some("2025-03-26")), "2025-03-26");
        assert_eq!(negotiate(Some("2025-11-25")), LATEST_PROTOCOL_VERSION);
        assert_eq!(negotiate(Some("2024-11-05")), LATEST_PROTOCOL_VERSION);
        assert_eq!(negotiate(Some("garbage")), LATEST_PROTOCOL_VERSION);
        assert_eq!(negotiate(None), LATEST_PROTOCOL_VERSION);
    }

    #[test]
    fn classify_table() {
        let req = classify(json!({"jsonrpc":"2.0","id":1,"method":"ping"})).unwrap();
        assert!(matches!(req, Message::Request { ref method, .. } if method == "ping"));
        let req =
            classify(json!({"jsonrpc":"2.0","id":"a","method":"tools/list","params":{}})).unwrap();
        assert!(matches!(
            req,
            Message::Request {
                id: Value::String(_),
                ..
            }
        ));
        let n = classify(json!({"jsonrpc":"2.0","method":"notifications/initialized"})).unwrap();
        assert!(matches!(n, Message::Notification { .. }));
        let r = classify(json!({"jsonrpc":"2.0","id":3,"result":{"x":1}})).unwrap();
        assert!(matches!(r, Message::Response { outcome: Ok(_), .. }));
        let e = classify(json!({"jsonrpc":"2.0","id":3,"error":{"code":-32601,"message":"no"}}))
            .unwrap();
        match e {
            Message::Response {
                outcome: Err(err), ..
            } => assert_eq!(err.code, -32601),
            other => panic!("{other:?}"),
        }
        for bad in [
            json!([]),
            json!({"id":1,"method":"ping"}),
            json!({"jsonrpc":"1.0","id":1,"method":"ping"}),
            json!({"jsonrpc":"2.0","id":1.5,"method":"ping"}),
            json!({"jsonrpc":"2.0","id":null,"method":"ping"}),
            json!({"jsonrpc":"2.0","id":{},"method":"ping"}),
            json!({"jsonrpc":"2.0","id":1,"method":7}),
            json!({"jsonrpc":"2.0","id":1,"method":"x","params":"s"}),
            json!({"jsonrpc":"2.0","id":1}),
            json!({"jsonrpc":"2.0","id":1,"result":1,"error":{}}),
            json!({"jsonrpc":"2.0"}),
        ] {
            let e = classify(bad.clone()).unwrap_err();
            assert_eq!(e.code, codes::INVALID_REQUEST, "{bad}");
        }
    }

    #[test]
    fn error_response_shape() {
        let e = RpcError::new(codes::POLICY_DENIED, "no").with_data(json!({"code":"x"}));
        let v = error_response(Some(&json!(7)), &e);
        assert_eq!(
            v,
            json!({"jsonrpc":"2.0","id":7,"error":{"code":-32010,"message":"no","data":{"code":"x"}}})
        );
        assert_eq!(error_response(None, &e)["id"], Value::Null);
    }
}
