//! Remote tool servers over MCP Streamable HTTP, through the egress seam.
//!
//! The gateway is an MCP client here: it POSTs `initialize`, keeps the
//! `Mcp-Session-Id` the server assigns and the negotiated revision (sent as
//! `MCP-Protocol-Version` on every later request), and reads each answer as
//! JSON or as an SSE stream, waiting for the response with its request's id.
//! A 404 on a request that carried a session id means the session is gone:
//! the client initializes again once and retries. Every request's URL passes
//! [`HttpEgress::check`] first, and the whole exchange has the call's
//! deadline. Answers larger than [`MAX_MESSAGE_BYTES`] are refused.
//!
//! A `401` runs OAuth metadata discovery ([`crate::oauth`], through the
//! same egress) once, so the operator's error names the authorization
//! server the remote server wants a token from.
//!
//! The tool list is cached for [`TOOLS_TTL`] (a remote server cannot notify
//! aibox of changes without a standing GET stream, which aibox does not
//! keep open).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use serde_json::{Value, json};

use crate::protocol::{self, Message, RpcError};
use crate::seams::{BoxFuture, HttpEgress};
use crate::sse::SseParser;
use crate::upstream::{
    CallError, HealthState, MAX_MESSAGE_BYTES, Offers, ServerHealth, ToolInfo, Upstream,
    accept_tools, tools_page,
};

/// How long a remote server's tool list is reused.
pub const TOOLS_TTL: Duration = Duration::from_secs(30);
/// The deadline of `initialize` and of each `tools/list` page.
pub const LIST_TIMEOUT: Duration = Duration::from_secs(15);
const MAX_PAGES: usize = 64;
/// The target of the client span of a remote tool call; the binary exports
/// spans of this target with traces on.
pub const CLIENT_SPAN_TARGET: &str = "aibox_mcp::client";

#[derive(Debug, Clone)]
struct Session {
    id: Option<String>,
    version: String,
    offers: Offers,
}

#[derive(Debug, Default)]
struct Status {
    state: Option<HealthState>,
    failures: u32,
    last_error: Option<String>,
}

/// A remote MCP server.
pub struct RemoteServer {
    name: String,
    url: url::Url,
    egress: Arc<dyn HttpEgress>,
    client: reqwest::Client,
    session: tokio::sync::Mutex<Option<Session>>,
    tools: Mutex<Option<(Instant, Arc<Vec<ToolInfo>>)>>,
    status: Mutex<Status>,
    next_id: AtomicU64,
    /// What OAuth discovery found after a `401`.
    oauth: Mutex<Option<String>>,
}

impl RemoteServer {
    /// A client for `url`; nothing is sent until the first use.
    pub fn new(name: &str, url: url::Url, egress: Arc<dyn HttpEgress>) -> Self {
        let client = egress.client();
        Self {
            name: name.to_owned(),
            url,
            egress,
            client,
            session: tokio::sync::Mutex::new(None),
            tools: Mutex::new(None),
            status: Mutex::new(Status::default()),
            next_id: AtomicU64::new(1),
            oauth: Mutex::new(None),
        }
    }

    fn note(&self, r: &Result<Value, CallError>) {
        if let Ok(mut s) = self.status.lock() {
            match r {
                Ok(_) | Err(CallError::Rpc(_)) => {
                    s.state = Some(HealthState::Ready);
                    s.failures = 0;
                    s.last_error = None;
                }
                Err(e) => {
                    s.state = Some(HealthState::Unreachable);
                    s.failures = s.failures.saturating_add(1);
                    s.last_error = Some(e.to_string());
                }
            }
        }
    }

    /// POSTs one message; returns the response to `expect` (None for a
    /// notification) and the session id header, if any.
    async fn post(
        &self,
        message: &Value,
        session: Option<&Session>,
        expect: Option<u64>,
    ) -> Result<(Option<Result<Value, RpcError>>, Option<String>), CallError> {
        self.egress
            .check(&self.url)
            .map_err(|why| CallError::Unavailable(format!("egress refused {}: {why}", self.url)))?;
        let mut req = self
            .client
            .post(self.url.clone())
            .header(http::header::ACCEPT, "application/json, text/event-stream")
            .header(http::header::CONTENT_TYPE, "application/json")
            .headers(self.egress.trace_headers())
            .body(serde_json::to_vec(message).map_err(|e| CallError::Protocol(e.to_string()))?);
        if let Some(s) = session {
            req = req.header("mcp-protocol-version", &s.version);
            if let Some(id) = &s.id {
                req = req.header("mcp-session-id", id);
            }
        }
        let resp = req.send().await.map_err(|e| {
            CallError::Unavailable(format!(
                "cannot reach {}: {}",
                self.url,
                aibox_identity::describe_reqwest(&e)
            ))
        })?;
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_FOUND && session.is_some_and(|s| s.id.is_some()) {
            return Err(CallError::Unavailable(SESSION_GONE.into()));
        }
        let session_id = resp
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| {
                !v.is_empty() && v.len() <= 256 && v.bytes().all(|b| (0x21..=0x7e).contains(&b))
            })
            .map(str::to_owned);
        if status == reqwest::StatusCode::UNAUTHORIZED {
            let challenge = resp
                .headers()
                .get(http::header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            return Err(CallError::Unavailable(
                self.needs_oauth(challenge.as_deref()).await,
            ));
        }
        if status == reqwest::StatusCode::ACCEPTED && expect.is_none() {
            return Ok((None, session_id));
        }
        if !status.is_success() {
            return Err(CallError::Unavailable(format!(
                "{} answered HTTP {}",
                self.url,
                status.as_u16()
            )));
        }
        let Some(want) = expect else {
            return Ok((None, session_id));
        };
        let is_sse = resp
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.trim_start()
                    .to_ascii_lowercase()
                    .starts_with("text/event-stream")
            });
        let mut body = resp.bytes_stream();
        if is_sse {
            let mut parser = SseParser::new(MAX_MESSAGE_BYTES);
            while let Some(chunk) = body.next().await {
                let chunk =
                    chunk.map_err(|e| CallError::Unavailable(format!("the stream broke: {e}")))?;
                let events = parser
                    .feed(&chunk)
                    .map_err(|e| CallError::Protocol(e.to_string()))?;
                for data in events {
                    if let Some(outcome) = self.match_response(&data, want) {
                        drain_in_background(body);
                        return Ok((Some(outcome), session_id));
                    }
                }
            }
            return Err(CallError::Protocol(
                "the stream ended without the response".into(),
            ));
        }
        let mut buf = Vec::new();
        while let Some(chunk) = body.next().await {
            let chunk =
                chunk.map_err(|e| CallError::Unavailable(format!("the body broke: {e}")))?;
            if buf.len() + chunk.len() > MAX_MESSAGE_BYTES {
                return Err(CallError::Protocol(format!(
                    "the answer exceeds {MAX_MESSAGE_BYTES} bytes"
                )));
            }
            buf.extend_from_slice(&chunk);
        }
        let text = String::from_utf8_lossy(&buf);
        self.match_response(&text, want)
            .map(|o| (Some(o), session_id))
            .ok_or_else(|| {
                CallError::Protocol("the answer is not the JSON-RPC response to the request".into())
            })
    }

    /// The operator's explanation of a `401`: what OAuth discovery (through
    /// the egress guard) found, remembered so that discovery runs once.
    async fn needs_oauth(&self, challenge: Option<&str>) -> String {
        if let Ok(known) = self.oauth.lock()
            && let Some(m) = known.as_ref()
        {
            return m.clone();
        }
        let message = match crate::oauth::discover(self.egress.as_ref(), &self.url, challenge).await
        {
            Ok(d) => format!(
                "{} answered HTTP 401: it requires an OAuth token from {} (token endpoint {}, PKCE S256 {}); aibox does not obtain tokens for remote MCP servers yet; fix: put the server behind a route that needs no token, or remove it from data/mcp/servers.txt",
                self.url,
                d.issuer,
                d.token_endpoint,
                if d.pkce_s256 {
                    "supported"
                } else {
                    "not advertised"
                }
            ),
            Err(e) => format!("{} answered HTTP 401, and {e}", self.url),
        };
        if let Ok(mut known) = self.oauth.lock() {
            *known = Some(message.clone());
        }
        message
    }

    fn match_response(&self, data: &str, want: u64) -> Option<Result<Value, RpcError>> {
        let v: Value = serde_json::from_str(data).ok()?;
        let items = match v {
            Value::Array(a) => a,
            v => vec![v],
        };
        for item in items {
            match protocol::classify(item) {
                Ok(Message::Response { id, outcome }) if id.as_u64() == Some(want) => {
                    return Some(outcome);
                }
                Ok(Message::Notification { method, .. }) => {
                    tracing::debug!(server = %self.name, %method, "notification from the remote MCP server");
                }
                _ => {}
            }
        }
        None
    }

    async fn initialize(&self) -> Result<Session, CallError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let msg = protocol::request(
            id,
            "initialize",
            protocol::client_initialize_params(protocol::LATEST_PROTOCOL_VERSION),
        );
        let (outcome, session_id) = self.post(&msg, None, Some(id)).await?;
        let result = match outcome {
            Some(Ok(v)) => v,
            Some(Err(e)) => return Err(CallError::Rpc(e)),
            None => return Err(CallError::Protocol("no answer to initialize".into())),
        };
        let version = result
            .get("protocolVersion")
            .and_then(Value::as_str)
            .unwrap_or("");
        if !protocol::UPSTREAM_PROTOCOL_VERSIONS.contains(&version) {
            return Err(CallError::Protocol(format!(
                "the server speaks MCP revision '{}', which aibox does not",
                crate::names::printable(version)
            )));
        }
        let session = Session {
            id: session_id,
            version: version.to_owned(),
            offers: Offers::from_initialize(&result),
        };
        self.post(
            &protocol::notification("notifications/initialized", None),
            Some(&session),
            None,
        )
        .await?;
        tracing::info!(server = %self.name, version = %session.version, "remote MCP server initialized");
        Ok(session)
    }

    /// The current session, initializing one when there is none.
    async fn session(&self) -> Result<Session, CallError> {
        let mut guard = self.session.lock().await;
        match guard.as_ref() {
            Some(s) => Ok(s.clone()),
            None => {
                let s = self.initialize().await?;
                *guard = Some(s.clone());
                Ok(s)
            }
        }
    }

    async fn request(&self, method: &str, params: Value) -> Result<Value, CallError> {
        for attempt in 0..2 {
            let session = self.session().await?;
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let msg = protocol::request(id, method, params.clone());
            match self.post(&msg, Some(&session), Some(id)).await {
                Err(CallError::Unavailable(why)) if why == SESSION_GONE && attempt == 0 => {
                    *self.session.lock().await = None;
                }
                Err(e) => return Err(e),
                Ok((Some(Ok(v)), _)) => return Ok(v),
                Ok((Some(Err(e)), _)) => return Err(CallError::Rpc(e)),
                Ok((None, _)) => return Err(CallError::Protocol("no answer".into())),
            }
        }
        Err(CallError::Unavailable(SESSION_GONE.into()))
    }

    async fn fetch_tools(&self) -> Result<Vec<ToolInfo>, CallError> {
        let mut all = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let params = match &cursor {
                Some(c) => json!({"cursor": c}),
                None => json!({}),
            };
            let result = tokio::time::timeout(LIST_TIMEOUT, self.request("tools/list", params))
                .await
                .map_err(|_| CallError::Timeout(LIST_TIMEOUT))??;
            let (tools, next) = tools_page(&result)?;
            all.extend(tools);
            match next {
                Some(n) if Some(&n) != cursor.as_ref() => cursor = Some(n),
                _ => break,
            }
        }
        Ok(accept_tools(&self.name, all))
    }
}

const SESSION_GONE: &str = "the remote MCP session expired";

/// How long the rest of an answered SSE stream is read before its
/// connection is given up.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// Reads what is left of an SSE response after the awaited message, off
/// the call's path. The server closes the stream after the response, and
/// only a body read to its end returns the keep-alive connection to the
/// pool; dropping it unread would cost a new TCP (and TLS) connection per
/// call. Bounded in time and bytes; the data is discarded unparsed.
fn drain_in_background<S>(mut body: S)
where
    S: futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send + Unpin + 'static,
{
    // Usually the end of the stream arrived with the response (or right
    // behind it): then it is read here, without polling anything that would
    // wait, and no task is spawned for it.
    let mut read = 0usize;
    loop {
        match futures_util::FutureExt::now_or_never(body.next()) {
            Some(Some(Ok(chunk))) => {
                read = read.saturating_add(chunk.len());
                if read > MAX_MESSAGE_BYTES {
                    return;
                }
            }
            Some(None | Some(Err(_))) => return,
            None => break,
        }
    }
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    rt.spawn(async move {
        let _ = tokio::time::timeout(DRAIN_LIMIT, async {
            while let Some(Ok(chunk)) = body.next().await {
                read = read.saturating_add(chunk.len());
                if read > MAX_MESSAGE_BYTES {
                    break;
                }
            }
        })
        .await;
    });
}

impl Upstream for RemoteServer {
    fn tools(&self) -> BoxFuture<'_, Result<Arc<Vec<ToolInfo>>, CallError>> {
        Box::pin(async move {
            if let Ok(cache) = self.tools.lock()
                && let Some((at, tools)) = cache.as_ref()
                && at.elapsed() < TOOLS_TTL
            {
                return Ok(tools.clone());
            }
            let fetched = self.fetch_tools().await;
            self.note(&fetched.as_ref().map(|_| Value::Null).map_err(Clone::clone));
            let tools = Arc::new(fetched?);
            if let Ok(mut cache) = self.tools.lock() {
                *cache = Some((Instant::now(), tools.clone()));
            }
            Ok(tools)
        })
    }

    fn call<'a>(
        &'a self,
        tool: &'a str,
        arguments: Value,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Value, CallError>> {
        Box::pin(async move {
            // The client span of the call, under the request's span; its
            // context goes to the server as `traceparent`.
            let span = tracing::info_span!(
                target: CLIENT_SPAN_TARGET,
                "mcp_call",
                otel.name = %format!("tools/call {tool}"),
                otel.kind = "client",
                mcp.server = %self.name,
                mcp.tool = %tool,
            );
            let r = tokio::time::timeout(
                timeout,
                tracing::Instrument::instrument(
                    self.request("tools/call", json!({"name": tool, "arguments": arguments})),
                    span,
                ),
            )
            .await
            .unwrap_or(Err(CallError::Timeout(timeout)));
            self.note(&r);
            r
        })
    }

    fn offers(&self) -> BoxFuture<'_, Result<Offers, CallError>> {
        Box::pin(async move {
            let r = tokio::time::timeout(LIST_TIMEOUT, self.session())
                .await
                .unwrap_or(Err(CallError::Timeout(LIST_TIMEOUT)));
            self.note(&r.as_ref().map(|_| Value::Null).map_err(Clone::clone));
            Ok(r?.offers)
        })
    }

    fn request<'a>(
        &'a self,
        method: &'a str,
        params: Value,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Value, CallError>> {
        Box::pin(async move {
            let r = tokio::time::timeout(timeout, RemoteServer::request(self, method, params))
                .await
                .unwrap_or(Err(CallError::Timeout(timeout)));
            self.note(&r);
            r
        })
    }

    fn health(&self) -> ServerHealth {
        let tools = self
            .tools
            .lock()
            .ok()
            .and_then(|c| c.as_ref().map(|(_, t)| t.len()))
            .unwrap_or(0);
        let (state, failures, last_error) = self
            .status
            .lock()
            .map(|s| {
                (
                    s.state.unwrap_or(HealthState::Starting),
                    s.failures,
                    s.last_error.clone(),
                )
            })
            .unwrap_or((HealthState::Unreachable, 0, None));
        ServerHealth {
            name: self.name.clone(),
            transport: "http",
            state,
            pid: None,
            restarts: 0,
            consecutive_failures: failures,
            last_error,
            tools,
            next_attempt_in_ms: None,
        }
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            // End the remote session politely; a server that ignores DELETE
            // lets it expire.
            let session = self.session.lock().await.take();
            if let Some(Session {
                id: Some(id),
                version,
                ..
            }) = session
                && self.egress.check(&self.url).is_ok()
            {
                let _ = tokio::time::timeout(
                    Duration::from_secs(2),
                    self.client
                        .delete(self.url.clone())
                        .header("mcp-session-id", id)
                        .header("mcp-protocol-version", version)
                        .send(),
                )
                .await;
            }
        })
    }
}
