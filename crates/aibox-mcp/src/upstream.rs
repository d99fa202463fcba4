//! What the gateway needs from every tool server, whatever its transport:
//! its tools, a call with a deadline, its health, and a way to stop it.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::names::{self, Namespace};
use crate::protocol::RpcError;
use crate::seams::BoxFuture;

/// The most tools one server may offer.
pub const MAX_TOOLS_PER_SERVER: usize = 1024;
/// The largest JSON-RPC message read from a tool server.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// One tool of a server.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolInfo {
    /// The server's own name for it.
    pub name: String,
    /// The tool object as the server described it (schema, description...).
    pub def: Value,
    /// `def` as JSON text, serialised once when the list is read: every
    /// `tools/call` checks the called tool's definition by this text.
    pub text: String,
}

impl ToolInfo {
    /// A tool named `name` described by `def`.
    pub fn new(name: String, def: Value) -> Self {
        let text = serde_json::to_string(&def).unwrap_or_default();
        Self { name, def, text }
    }
}

/// Why a call to a tool server failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CallError {
    /// No answer within the deadline.
    #[error("no answer within {} ms", .0.as_millis())]
    Timeout(Duration),
    /// The server is down, restarting or unreachable.
    #[error("{0}")]
    Unavailable(String),
    /// The server answered something that is not MCP.
    #[error("invalid answer: {0}")]
    Protocol(String),
    /// The server answered with a JSON-RPC error.
    #[error("error {}: {}", .0.code, .0.message)]
    Rpc(RpcError),
}

/// The state of a tool server, for the ops API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthState {
    /// Starting for the first time.
    Starting,
    /// Answering.
    Ready,
    /// Died or failed to start; waiting to try again.
    Restarting,
    /// Unreachable at the last attempt (remote servers).
    Unreachable,
    /// Stopped by shutdown.
    Stopped,
}

/// The health of one tool server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerHealth {
    /// The registry name.
    pub name: String,
    /// `stdio`, `http` or `builtin`.
    pub transport: &'static str,
    /// Its state.
    pub state: HealthState,
    /// The process id (stdio servers while running).
    pub pid: Option<u32>,
    /// How many times it was started again after dying.
    pub restarts: u32,
    /// Failures since it last stayed up; a growing number is a crash loop.
    pub consecutive_failures: u32,
    /// The last failure, without tool data.
    pub last_error: Option<String>,
    /// How many tools it offers.
    pub tools: usize,
    /// When the next start attempt is due, while restarting.
    pub next_attempt_in_ms: Option<u64>,
}

impl ServerHealth {
    /// A server built into aibox: always ready, no process, no restarts.
    pub fn builtin(name: &str, tools: usize) -> Self {
        Self {
            name: name.to_owned(),
            transport: "builtin",
            state: HealthState::Ready,
            pid: None,
            restarts: 0,
            consecutive_failures: 0,
            last_error: None,
            tools,
            next_attempt_in_ms: None,
        }
    }
}

/// What a server offers besides tools, as its `initialize` answer
/// announced (`capabilities.resources`, `capabilities.prompts`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Offers {
    /// `resources/list`, `resources/templates/list`, `resources/read`.
    pub resources: bool,
    /// `prompts/list`, `prompts/get`.
    pub prompts: bool,
}

impl Offers {
    /// Reads the capabilities of an `initialize` result.
    pub fn from_initialize(result: &Value) -> Self {
        let caps = result.get("capabilities");
        let has = |k: &str| caps.and_then(|c| c.get(k)).is_some_and(Value::is_object);
        Self {
            resources: has("resources"),
            prompts: has("prompts"),
        }
    }
}

/// A tool server.
pub trait Upstream: Send + Sync {
    /// Its tools (cached; refreshed as the transport allows).
    fn tools(&self) -> BoxFuture<'_, Result<Arc<Vec<ToolInfo>>, CallError>>;
    /// Calls `tool` with `arguments`; the result object as the server sent it.
    fn call<'a>(
        &'a self,
        tool: &'a str,
        arguments: Value,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Value, CallError>>;
    /// What it offers besides tools (nothing, for the built-in servers).
    fn offers(&self) -> BoxFuture<'_, Result<Offers, CallError>> {
        Box::pin(async { Ok(Offers::default()) })
    }
    /// Sends one other request (`resources/*`, `prompts/*`) with a
    /// deadline; the result as the server sent it. Transports without a
    /// protocol of their own (the built-in servers) have none.
    fn request<'a>(
        &'a self,
        method: &'a str,
        _params: Value,
        _timeout: Duration,
    ) -> BoxFuture<'a, Result<Value, CallError>> {
        Box::pin(async move {
            Err(CallError::Rpc(RpcError::new(
                crate::protocol::codes::METHOD_NOT_FOUND,
                format!("this server does not serve {method}"),
            )))
        })
    }
    /// Its health.
    fn health(&self) -> ServerHealth;
    /// Stops it (kills processes); later calls fail.
    fn shutdown(&self) -> BoxFuture<'_, ()>;
    /// Restarts it on an operator's request (the ops API). Transports
    /// without a process of their own have nothing to restart and say so.
    fn restart(&self) -> Result<String, String> {
        Err(format!(
            "a {} server has no process of its own to restart",
            self.health().transport
        ))
    }
}

/// Keeps the tools of a `tools/list` answer that aibox can expose: a name
/// that makes a valid `SERVER__TOOL`, not a case-insensitive duplicate,
/// at most [`MAX_TOOLS_PER_SERVER`]. Each dropped tool is logged once per
/// refresh with the reason.
pub fn accept_tools(server: &str, listed: Vec<Value>) -> Vec<ToolInfo> {
    let mut ns = Namespace::new();
    let mut out = Vec::new();
    for def in listed {
        let Some(name) = def.get("name").and_then(Value::as_str).map(str::to_owned) else {
            tracing::warn!(server, "a tool without a name was ignored");
            continue;
        };
        let full = match names::join(server, &name) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(server, tool = %names::printable(&name), error = %e, "tool not exposed");
                continue;
            }
        };
        if let Err(c) = ns.insert(&full) {
            tracing::warn!(server, error = %c, "tool not exposed: its name collides with another tool of the server");
            continue;
        }
        if out.len() >= MAX_TOOLS_PER_SERVER {
            tracing::warn!(
                server,
                max = MAX_TOOLS_PER_SERVER,
                "the server lists too many tools; the rest are not exposed"
            );
            break;
        }
        out.push(ToolInfo::new(name, def));
    }
    out
}

/// Reads the tools and the next cursor of a `tools/list` result.
pub fn tools_page(result: &Value) -> Result<(Vec<Value>, Option<String>), CallError> {
    let tools = result
        .get("tools")
        .and_then(Value::as_array)
        .ok_or_else(|| CallError::Protocol("tools/list result has no tools array".into()))?
        .clone();
    let cursor = result
        .get("nextCursor")
        .and_then(Value::as_str)
        .map(str::to_owned);
    Ok((tools, cursor))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn accept_tools_drops_bad_names_and_collisions() {
        let listed = vec![
            json!({"name": "echo", "inputSchema": {"type": "object"}}),
            json!({"name": "Echo"}),
            json!({"name": "files.read"}),
            json!({"name": "x".repeat(70)}),
            json!({"description": "nameless"}),
            json!({"name": "add"}),
        ];
        let got: Vec<String> = accept_tools("local", listed)
            .into_iter()
            .map(|t| t.name)
            .collect();
        assert_eq!(got, ["echo", "add"]);
    }

    #[test]
    fn offers_follow_the_announced_capabilities() {
        let o = Offers::from_initialize(
            &json!({"capabilities": {"tools": {}, "prompts": {"listChanged": false}}}),
        );
        assert_eq!(
            o,
            Offers {
                resources: false,
                prompts: true
            }
        );
        let o =
            Offers::from_initialize(&json!({"capabilities": {"resources": {}, "prompts": null}}));
        assert_eq!(
            o,
            Offers {
                resources: true,
                prompts: false
            }
        );
        assert_eq!(Offers::from_initialize(&json!({})), Offers::default());
    }

    #[test]
    fn tools_page_reads_cursor() {
        let (t, c) = tools_page(&json!({"tools": [{"name": "a"}], "nextCursor": "2"})).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(c.as_deref(), Some("2"));
        assert!(tools_page(&json!({})).is_err());
    }
}
