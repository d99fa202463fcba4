//! The MCP tool gateway of aibox.
//!
//! One endpoint, `/mcp`, speaks the Model Context Protocol over Streamable
//! HTTP to clients (agents, IDEs) and stands in front of many MCP servers:
//! child processes over stdio, remote servers over HTTP, a built-in,
//! confined filesystem server and a built-in `fetch` tool that reaches the
//! network only through the SSRF-safe egress. Its tools are named
//! `SERVER__TOOL`.
//!
//! Every `tools/list` shows a caller only what it may call, and every
//! `tools/call` is decided on the tool name in the JSON-RPC body against the
//! caller's principal (from the gateway's edge), the server's
//! `allow_clients` and tool lists, and the turn's CapToken
//! (`tool:SERVER/TOOL`); its arguments and result pass the guardrail; and it
//! is recorded in the audit log, with argument and result hashes, before the
//! caller gets the answer.
//!
//! Layers:
//! - pure: [`names`] (namespacing), [`policy`] (selectors, tool lists,
//!   denials), [`passthrough`] (resource URIs and the registry's
//!   `resources` / `prompts` rules), [`origin`] (`Origin` validation), [`protocol`] (JSON-RPC and
//!   MCP shapes, revision negotiation), [`registry`] (`servers.txt` and
//!   `registry.json` validation; `load_dir` reads them), [`sse`];
//! - seams to the rest of aibox: [`seams`] ([`ToolAudit`], [`ToolGuard`],
//!   [`HttpEgress`], [`SecretSource`], with test and development defaults);
//! - IO: [`stdio`] (supervised child processes), [`remote`] (Streamable
//!   HTTP client; [`oauth`] discovers its authorization server after a
//!   401), [`fs`] (the filesystem server, `cap-std`), [`fetch`] (the fetch
//!   tool, through [`HttpEgress::fetch`]), [`gateway`] (the call pipeline),
//!   [`access`] (resources and prompts through the same pipeline),
//!   [`http`] (the axum endpoint), [`session`].
//!
//! The crate does not use the `rmcp` SDK. The gateway is a proxy that must
//! decide every message on the caller's principal, CapToken and policy
//! before anything reaches a server, and pass tool schemas and results
//! through byte-for-byte in meaning; rmcp's server handlers hide the HTTP
//! request behind typed handlers and its typed models re-serialise results.
//! The surface the gateway needs (initialize, ping, tools, resources and
//! prompts, sessions, SSE answers) is small, and owning it keeps policy in one place
//! and the dependency tree (and the request path) short.

pub mod access;
pub mod egress_proxy;
pub mod fetch;
pub mod fs;
pub mod gateway;
pub mod http;
pub mod names;
pub mod oauth;
pub mod origin;
pub mod passthrough;
pub mod policy;
pub mod protocol;
pub mod registry;
pub mod remote;
pub mod sandbox_watch;
pub mod seams;
pub mod session;
pub mod sse;
pub mod stdio;
pub mod upstream;

pub use gateway::{CallContext, McpDeps, McpError, McpGateway, McpSettings, ServerOverview};
pub use http::{MCP_PATH, PresentedCapToken, router};
pub use seams::{
    BoxFuture, EnvSecrets, FetchRefused, Fetched, GuardOutcome, HttpEgress, MemoryAudit, NoGuard,
    NoSecrets, SandboxRecord, SecretSource, ToolAudit, ToolCallRecord, ToolGuard, UncheckedEgress,
};
pub use upstream::{HealthState, ServerHealth};
