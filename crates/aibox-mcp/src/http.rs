//! The `/mcp` endpoint: MCP over Streamable HTTP (revisions 2025-06-18
//! and 2025-03-26), mounted behind the gateway's edge.
//!
//! - `POST` carries one JSON-RPC message (or, in 2025-03-26 sessions, a
//!   batch). Requests are answered with `application/json` (the transport
//!   lets a server choose JSON over SSE; aibox sends no server-initiated
//!   messages, so a stream would carry exactly one message anyway).
//!   Notifications and responses get `202 Accepted`.
//! - `initialize` negotiates the revision (the client's if supported, else
//!   2025-06-18) and opens a session: `Mcp-Session-Id` in the answer, bound
//!   to the caller; every later request must carry it (400 without, 404 for
//!   an unknown or foreign one).
//! - `MCP-Protocol-Version` on later requests must be a supported revision
//!   and the session's (400 otherwise); without it the session's revision
//!   applies.
//! - `GET` answers 405: aibox offers no server-initiated stream.
//! - `DELETE` ends the session (204).
//! - `Origin` is checked first, on every method ([`crate::origin`]): 403.
//!
//! The principal comes from the request extensions, where the edge put it;
//! without one the endpoint refuses (it must never run unauthenticated).
//! A `tools/call`, `resources/read` or `prompts/get` answer carries its
//! audit turn in `X-Aibox-Turn` and in `result._meta["aibox/turn"]` (or
//! `error.data.turn`).

use std::sync::Arc;

use aibox_core::audit::Sha256Hex;
use aibox_core::{Principal, RequestId};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use serde_json::{Value, json};

use crate::gateway::{CAPTOKEN_META_KEY, CallContext, McpGateway};
use crate::protocol::{self, Message, RpcError, codes};
use crate::session::owner_key;

/// Where the gateway mounts the endpoint.
pub const MCP_PATH: &str = "/mcp";
/// The session header.
pub const SESSION_HEADER: &str = "mcp-session-id";
/// The protocol revision header.
pub const PROTOCOL_HEADER: &str = "mcp-protocol-version";
/// The header a CapToken may come in (when the edge lets it through).
pub const CAPTOKEN_HEADER: &str = "x-aibox-captoken";
/// The header naming a tool call's audit turn.
pub const TURN_HEADER: &str = "x-aibox-turn";
/// The largest request body.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// A CapToken the edge took from `X-Aibox-Captoken` before it stripped the
/// client's `X-Aibox-*` headers. The token is a capability aibox signed
/// itself (verified here), not an identity claim, so lifting it is safe.
#[derive(Debug, Clone)]
pub struct PresentedCapToken(pub String);

/// The router serving [`MCP_PATH`]; mount it with
/// `.route_service(MCP_PATH, aibox_mcp::router(gw))` inside the edge.
pub fn router(gw: Arc<McpGateway>) -> axum::Router {
    axum::Router::new()
        .route(MCP_PATH, any(handle))
        .with_state(gw)
}

fn rpc_reply(status: StatusCode, id: Option<&Value>, err: &RpcError) -> Response {
    json_reply(status, &protocol::error_response(id, err))
}

fn json_reply(status: StatusCode, body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut r = (status, bytes).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn accepts_json(h: &HeaderMap) -> bool {
    let Some(accept) = header_str(h, header::ACCEPT.as_str()) else {
        return true;
    };
    accept.split(',').any(|part| {
        let t = part
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        t == "application/json" || t == "application/*" || t == "*/*"
    })
}

fn is_json_content(h: &HeaderMap) -> bool {
    header_str(h, header::CONTENT_TYPE.as_str()).is_some_and(|ct| {
        ct.split(';')
            .next()
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
    })
}

async fn handle(State(gw): State<Arc<McpGateway>>, req: Request) -> Response {
    let headers = req.headers();
    if let Err(e) = gw.origin.check(
        header_str(headers, header::ORIGIN.as_str()),
        header_str(headers, header::HOST.as_str()),
    ) {
        tracing::warn!(error = %e, "MCP request refused: Origin not allowed");
        return rpc_reply(
            StatusCode::FORBIDDEN,
            None,
            &RpcError::new(codes::INVALID_REQUEST, e.to_string()),
        );
    }
    let Some(principal) = req.extensions().get::<Principal>().cloned() else {
        tracing::error!(
            "the MCP endpoint received a request without a principal; it must be mounted behind the gateway's edge"
        );
        return rpc_reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            None,
            &RpcError::new(codes::INTERNAL_ERROR, "the MCP endpoint is misconfigured"),
        );
    };
    match *req.method() {
        Method::POST => post(gw, principal, req).await,
        Method::DELETE => {
            let owner = owner_key(&principal);
            match header_str(req.headers(), SESSION_HEADER) {
                Some(id) if gw.sessions.remove(id, &owner) => {
                    StatusCode::NO_CONTENT.into_response()
                }
                Some(_) => rpc_reply(
                    StatusCode::NOT_FOUND,
                    None,
                    &RpcError::new(codes::INVALID_REQUEST, "session not found"),
                ),
                None => rpc_reply(
                    StatusCode::BAD_REQUEST,
                    None,
                    &RpcError::new(
                        codes::INVALID_REQUEST,
                        "DELETE needs the Mcp-Session-Id header",
                    ),
                ),
            }
        }
        _ => {
            let mut r = rpc_reply(
                StatusCode::METHOD_NOT_ALLOWED,
                None,
                &RpcError::new(
                    codes::INVALID_REQUEST,
                    "this MCP endpoint offers no server-initiated stream; use POST (and DELETE to end a session)",
                ),
            );
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST, DELETE"));
            r
        }
    }
}

async fn post(gw: Arc<McpGateway>, principal: Principal, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let h = &parts.headers;
    if !is_json_content(h) {
        return rpc_reply(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            None,
            &RpcError::new(
                codes::INVALID_REQUEST,
                "send the JSON-RPC message with Content-Type: application/json",
            ),
        );
    }
    if !accepts_json(h) {
        return rpc_reply(
            StatusCode::NOT_ACCEPTABLE,
            None,
            &RpcError::new(
                codes::INVALID_REQUEST,
                "this endpoint answers with application/json; include it in Accept (with text/event-stream)",
            ),
        );
    }
    let header_version = match header_str(h, PROTOCOL_HEADER) {
        None => None,
        Some(v) => match protocol::supported(v.trim()) {
            Some(v) => Some(v),
            None => {
                return rpc_reply(
                    StatusCode::BAD_REQUEST,
                    None,
                    &RpcError::new(
                        codes::INVALID_REQUEST,
                        format!(
                            "unsupported MCP-Protocol-Version '{}'; this server speaks {}",
                            crate::names::printable(v),
                            protocol::SUPPORTED_PROTOCOL_VERSIONS.join(", ")
                        ),
                    ),
                );
            }
        },
    };
    let bytes = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(_) => {
            return rpc_reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                None,
                &RpcError::new(
                    codes::INVALID_REQUEST,
                    format!("the body exceeds {MAX_BODY_BYTES} bytes"),
                ),
            );
        }
    };
    let value: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => {
            return rpc_reply(
                StatusCode::BAD_REQUEST,
                None,
                &RpcError::new(codes::PARSE_ERROR, format!("the body is not JSON: {e}")),
            );
        }
    };
    let owner = owner_key(&principal);
    let session_id = header_str(h, SESSION_HEADER).map(str::to_owned);
    let request_id = parts.extensions.get::<RequestId>().cloned();
    let captoken = parts
        .extensions
        .get::<crate::http::PresentedCapToken>()
        .map(|t| t.0.clone())
        .or_else(|| header_str(h, CAPTOKEN_HEADER).map(str::to_owned));
    let ctx = CallContext {
        principal: &principal,
        request_id: request_id.as_ref(),
        captoken: captoken.as_deref(),
        body_sha256: Sha256Hex::of(&bytes),
    };

    let session = SessionInfo {
        id: session_id.as_deref(),
        owner,
        header_version,
    };
    match value {
        Value::Array(items) => batch(&gw, &ctx, &session, items).await,
        single => single_message(&gw, &ctx, session, single).await,
    }
}

/// The session a request names, and who sends it.
struct SessionInfo<'a> {
    id: Option<&'a str>,
    owner: String,
    header_version: Option<&'static str>,
}

/// One message. `initialize` opens a session and needs none; everything
/// else needs the caller's session.
async fn single_message(
    gw: &McpGateway,
    ctx: &CallContext<'_>,
    session: SessionInfo<'_>,
    value: Value,
) -> Response {
    let msg = match protocol::classify(value) {
        Ok(m) => m,
        Err(e) => return rpc_reply(StatusCode::BAD_REQUEST, None, &e),
    };
    if let Message::Request { id, method, params } = &msg
        && method == "initialize"
    {
        let requested = params
            .as_ref()
            .and_then(|p| p.get("protocolVersion"))
            .and_then(Value::as_str);
        let version = protocol::negotiate(requested);
        let Some(sid) = gw.sessions.create(session.owner, version) else {
            return rpc_reply(
                StatusCode::SERVICE_UNAVAILABLE,
                Some(id),
                &RpcError::new(codes::INTERNAL_ERROR, "cannot open a session"),
            );
        };
        tracing::info!(user = %ctx.principal.user, %version, "MCP session opened");
        let mut r = json_reply(
            StatusCode::OK,
            &protocol::response(id, protocol::server_initialize_result(version)),
        );
        if let Ok(v) = HeaderValue::from_str(&sid) {
            r.headers_mut().insert(SESSION_HEADER, v);
        }
        return r;
    }
    if let Err((status, e)) =
        session_version(gw, session.id, &session.owner, session.header_version)
    {
        return rpc_reply(status, None, &e);
    }
    match msg {
        Message::Request { id, method, params } => {
            let (reply, turn) = dispatch(gw, ctx, &method, params.as_ref()).await;
            let body = match reply {
                Ok(result) => protocol::response(&id, result),
                Err(e) => protocol::error_response(Some(&id), &e),
            };
            let mut r = json_reply(StatusCode::OK, &body);
            if let Some(turn) = turn
                && let Ok(v) = HeaderValue::from_str(turn.as_str())
            {
                r.headers_mut().insert(TURN_HEADER, v);
            }
            r
        }
        Message::Notification { .. } | Message::Response { .. } => {
            StatusCode::ACCEPTED.into_response()
        }
    }
}

/// A batch: only in 2025-03-26 sessions (2025-06-18 removed batching).
async fn batch(
    gw: &McpGateway,
    ctx: &CallContext<'_>,
    session: &SessionInfo<'_>,
    items: Vec<Value>,
) -> Response {
    let version = match session_version(gw, session.id, &session.owner, session.header_version) {
        Ok(v) => v,
        Err((status, e)) => return rpc_reply(status, None, &e),
    };
    if version != "2025-03-26" {
        return rpc_reply(
            StatusCode::BAD_REQUEST,
            None,
            &RpcError::new(
                codes::INVALID_REQUEST,
                format!(
                    "JSON-RPC batches are not part of MCP {version}; send one message per request"
                ),
            ),
        );
    }
    if items.is_empty() {
        return rpc_reply(
            StatusCode::BAD_REQUEST,
            None,
            &RpcError::new(codes::INVALID_REQUEST, "empty batch"),
        );
    }
    let mut responses = Vec::new();
    for item in items {
        match protocol::classify(item) {
            Err(e) => responses.push(protocol::error_response(None, &e)),
            Ok(Message::Request { id, method, .. }) if method == "initialize" => {
                responses.push(protocol::error_response(
                    Some(&id),
                    &RpcError::new(
                        codes::INVALID_REQUEST,
                        "initialize must not be part of a batch",
                    ),
                ));
            }
            Ok(Message::Request { id, method, params }) => {
                let (reply, _) = dispatch(gw, ctx, &method, params.as_ref()).await;
                responses.push(match reply {
                    Ok(result) => protocol::response(&id, result),
                    Err(e) => protocol::error_response(Some(&id), &e),
                });
            }
            Ok(_) => {}
        }
    }
    if responses.is_empty() {
        return StatusCode::ACCEPTED.into_response();
    }
    json_reply(StatusCode::OK, &Value::Array(responses))
}

/// The session's revision, checked against the header; the refusal's
/// status and error otherwise.
fn session_version(
    gw: &McpGateway,
    session_id: Option<&str>,
    owner: &str,
    header_version: Option<&'static str>,
) -> Result<&'static str, (StatusCode, RpcError)> {
    let Some(sid) = session_id else {
        return Err((
            StatusCode::BAD_REQUEST,
            RpcError::new(
                codes::INVALID_REQUEST,
                "missing Mcp-Session-Id; send initialize first and then the session id it returned",
            ),
        ));
    };
    let Some(version) = gw.sessions.get(sid, owner) else {
        return Err((
            StatusCode::NOT_FOUND,
            RpcError::new(
                codes::INVALID_REQUEST,
                "session not found (expired or never opened); send initialize again",
            ),
        ));
    };
    if let Some(h) = header_version
        && h != version
    {
        return Err((
            StatusCode::BAD_REQUEST,
            RpcError::new(
                codes::INVALID_REQUEST,
                format!("MCP-Protocol-Version {h} differs from the session's negotiated {version}"),
            ),
        ));
    }
    Ok(version)
}

async fn dispatch(
    gw: &McpGateway,
    ctx: &CallContext<'_>,
    method: &str,
    params: Option<&Value>,
) -> (Result<Value, RpcError>, Option<aibox_core::TurnId>) {
    match method {
        "ping" => (Ok(json!({})), None),
        "tools/list" => {
            let token = params
                .and_then(|p| p.get("_meta"))
                .and_then(|m| m.get(CAPTOKEN_META_KEY))
                .and_then(Value::as_str)
                .or(ctx.captoken);
            (
                gw.list_tools(ctx.principal, token)
                    .await
                    .map(|tools| json!({"tools": tools})),
                None,
            )
        }
        "tools/call" => {
            let (reply, turn) = gw.call_tool(ctx, params).await;
            (reply, Some(turn))
        }
        "resources/list" => (Ok(gw.list_resources(ctx.principal).await), None),
        "resources/templates/list" => (Ok(gw.list_resource_templates(ctx.principal).await), None),
        "resources/read" => {
            let (reply, turn) = gw.read_resource(ctx, params).await;
            (reply, Some(turn))
        }
        "prompts/list" => (Ok(gw.list_prompts(ctx.principal).await), None),
        "prompts/get" => {
            let (reply, turn) = gw.get_prompt(ctx, params).await;
            (reply, Some(turn))
        }
        "initialize" => (
            Err(RpcError::new(
                codes::INVALID_REQUEST,
                "the session is already initialized",
            )),
            None,
        ),
        other => (
            Err(RpcError::new(
                codes::METHOD_NOT_FOUND,
                format!(
                    "method '{}' is not offered by the aibox MCP gateway (it serves tools, resources and prompts)",
                    crate::names::printable(other)
                ),
            )),
            None,
        ),
    }
}
