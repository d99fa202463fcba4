//! The seams the gateway plugs the rest of aibox into: the audit log, the
//! guardrail, the egress client and the vault.
//!
//! This crate depends on none of them. Each is a trait with a small default
//! implementation for tests and development; `aibox serve` passes the real
//! ones (the audit log, `aibox-guardrail`, `aibox-egress`, `aibox-vault`).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

use aibox_core::audit::{AuditEvent, EventKind, FindingCount, GuardAction, GuardStage};
use aibox_core::{Principal, RequestId, Secret, TurnId};

/// A boxed, sendable future (the traits here are used as `dyn`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

// ---------------------------------------------------------------------------
// Audit
// ---------------------------------------------------------------------------

/// One `tools/call`, allowed or refused, as one turn of the caller's tenant.
///
/// `events` are complete, in order: `request_received` (route `/mcp`), the
/// guardrail verdicts, `tool_call` (with `parent_turn`, the turn whose
/// CapToken authorised it) and `turn_end`. Append them as one turn:
/// `audit.append_turn(&rec.principal.tenant, Some(rec.turn), rec.events)`.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCallRecord {
    /// The caller.
    pub principal: Principal,
    /// The HTTP request that carried the call.
    pub request_id: Option<RequestId>,
    /// The tool call's own turn.
    pub turn: TurnId,
    /// The turn whose CapToken authorised the call, if one did.
    pub parent_turn: Option<TurnId>,
    /// The events, each already stamped with tenant, turn and request id.
    pub events: Vec<AuditEvent>,
}

/// A sandbox event of a tool server process (no tenant: servers are shared).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxRecord {
    /// Unix milliseconds.
    pub at_ms: i64,
    /// `EventKind::Sandbox { server, what, detail }`.
    pub kind: EventKind,
}

/// Where tool calls and sandbox events are recorded.
///
/// A tool call whose record fails is failed closed: the client gets a
/// JSON-RPC error and never the result. A spawn whose record fails is
/// killed and retried with backoff.
pub trait ToolAudit: Send + Sync {
    /// Records one tool call; returns only once it is durable.
    fn record_call(&self, rec: ToolCallRecord) -> BoxFuture<'_, Result<(), String>>;
    /// Records a sandbox event (spawn, exit, degraded limits).
    fn record_sandbox(&self, rec: SandboxRecord) -> BoxFuture<'_, Result<(), String>>;
}

/// An in-memory audit sink for tests, which can be told to fail.
#[derive(Debug, Default)]
pub struct MemoryAudit {
    calls: Mutex<Vec<ToolCallRecord>>,
    sandbox: Mutex<Vec<SandboxRecord>>,
    fail: std::sync::atomic::AtomicBool,
}

impl MemoryAudit {
    /// An empty sink.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes every later record fail (or succeed again).
    pub fn set_failing(&self, fail: bool) {
        self.fail.store(fail, std::sync::atomic::Ordering::SeqCst);
    }

    /// The tool calls recorded so far.
    pub fn calls(&self) -> Vec<ToolCallRecord> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// The sandbox events recorded so far.
    pub fn sandbox(&self) -> Vec<SandboxRecord> {
        self.sandbox.lock().map(|c| c.clone()).unwrap_or_default()
    }

    fn failing(&self) -> bool {
        self.fail.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl ToolAudit for MemoryAudit {
    fn record_call(&self, rec: ToolCallRecord) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            if self.failing() {
                return Err("the test audit sink is failing".to_owned());
            }
            self.calls
                .lock()
                .map_err(|_| "poisoned".to_owned())?
                .push(rec);
            Ok(())
        })
    }

    fn record_sandbox(&self, rec: SandboxRecord) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            if self.failing() {
                return Err("the test audit sink is failing".to_owned());
            }
            self.sandbox
                .lock()
                .map_err(|_| "poisoned".to_owned())?
                .push(rec);
            Ok(())
        })
    }
}

// ---------------------------------------------------------------------------
// Guardrail
// ---------------------------------------------------------------------------

/// What the guardrail decided about one text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardOutcome {
    /// The active profile (recorded in the verdict event).
    pub profile: String,
    /// Allow, flag, redact or block.
    pub action: GuardAction,
    /// What it found, counted.
    pub findings: Vec<FindingCount>,
    /// For `Redact`: the text to use instead (must still be valid JSON).
    pub replacement: Option<String>,
    /// For `Block`: `scanner/rule` (e.g. `secrets/aws_access_key`).
    pub reason: Option<String>,
}

impl GuardOutcome {
    /// Nothing found.
    pub fn allow(profile: impl Into<String>) -> Self {
        Self {
            profile: profile.into(),
            action: GuardAction::Allow,
            findings: Vec::new(),
            replacement: None,
            reason: None,
        }
    }
}

/// Scans tool arguments (as JSON text, before the call) and results (as
/// JSON text, before the client sees them).
pub trait ToolGuard: Send + Sync {
    /// False when no guardrail is configured: nothing is scanned and no
    /// verdict is recorded.
    fn active(&self) -> bool {
        true
    }
    /// Scans `text` at `stage` of a call of `server`/`tool` by `principal`.
    fn inspect(
        &self,
        principal: &Principal,
        stage: GuardStage,
        server: &str,
        tool: &str,
        text: &str,
    ) -> GuardOutcome;
    /// Scans a tool's definition (the JSON object its server sent for
    /// it) before `principal` sees or calls the tool: a description is
    /// read by the model like a tool result, and a poisoned one instructs
    /// it without the tool ever being called. The default scans it as a
    /// result; a guardrail with rules for definitions overrides this.
    fn inspect_definition(
        &self,
        principal: &Principal,
        server: &str,
        tool: &str,
        text: &str,
    ) -> GuardOutcome {
        self.inspect(principal, GuardStage::ToolResult, server, tool, text)
    }
}

/// No guardrail.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoGuard;

impl ToolGuard for NoGuard {
    fn active(&self) -> bool {
        false
    }
    fn inspect(&self, _: &Principal, _: GuardStage, _: &str, _: &str, _: &str) -> GuardOutcome {
        GuardOutcome::allow("none")
    }
}

// ---------------------------------------------------------------------------
// Egress
// ---------------------------------------------------------------------------

/// The HTTP client for remote MCP servers, and the check every URL passes
/// before a request. The real implementation is the SSRF-safe egress crate
/// (which resolves names itself and connects only to checked addresses).
pub trait HttpEgress: Send + Sync {
    /// Refuses URLs the operator has not allowed; the error names the rule.
    fn check(&self, url: &url::Url) -> Result<(), String>;
    /// The client to send with (no proxy from the environment, redirects
    /// re-checked or off).
    fn client(&self) -> reqwest::Client;
    /// Checks `url` and resolves its host, checking every address: the
    /// only addresses the sandbox proxy may connect to for it.
    fn resolve<'a>(
        &'a self,
        url: &'a url::Url,
    ) -> BoxFuture<'a, Result<Vec<std::net::SocketAddr>, String>>;

    /// Headers every request to a remote server carries for the current
    /// span (W3C `traceparent`/`tracestate`); none by default.
    fn trace_headers(&self) -> http::HeaderMap {
        http::HeaderMap::new()
    }

    /// One `GET` for the built-in `fetch` tool: the URL and every redirect
    /// hop checked, every resolved address checked, the body capped in size
    /// and the whole exchange in time. The default refuses: only an egress
    /// that enforces all of that (aibox's SSRF-safe guard) may fetch.
    fn fetch<'a>(&'a self, url: &'a url::Url) -> BoxFuture<'a, Result<Fetched, FetchRefused>> {
        let _ = url;
        Box::pin(async move {
            Err(FetchRefused {
                rule: "no-guarded-egress".into(),
                refusal: true,
                message: "not fetched: the built-in fetch tool needs aibox's SSRF-safe egress guard, which this gateway was not given".into(),
            })
        })
    }
}

/// What a guarded fetch returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The final HTTP status.
    pub status: u16,
    /// The URL that answered, after redirects (credentials removed).
    pub url: String,
    /// Its `Content-Type`, if any.
    pub content_type: Option<String>,
    /// The body, within the egress size cap.
    pub body: bytes::Bytes,
}

/// Why a guarded fetch returned nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchRefused {
    /// The rule or failure kind (`loopback`, `cloud-metadata`, `scheme`,
    /// `max-response-bytes`, `timeout`, `connect`...).
    pub rule: String,
    /// True when the egress policy refused (not the network or the server).
    pub refusal: bool,
    /// The whole message, naming the rule and the configuration key.
    pub message: String,
}

/// An egress that allows every http(s) URL, loopback included, with a plain
/// client (no proxy, no redirects). For tests and development only: it is
/// *not* SSRF-safe; `aibox serve` must pass the egress crate's guard.
#[derive(Debug, Clone)]
pub struct UncheckedEgress {
    client: reqwest::Client,
}

impl UncheckedEgress {
    /// Builds the client.
    pub fn new() -> Result<Self, reqwest::Error> {
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .tcp_nodelay(true)
            .build()?;
        Ok(Self { client })
    }
}

impl HttpEgress for UncheckedEgress {
    fn check(&self, url: &url::Url) -> Result<(), String> {
        match url.scheme() {
            "http" | "https" => Ok(()),
            other => Err(format!("scheme '{other}' is not allowed for MCP servers")),
        }
    }

    fn client(&self) -> reqwest::Client {
        self.client.clone()
    }

    fn resolve<'a>(
        &'a self,
        url: &'a url::Url,
    ) -> BoxFuture<'a, Result<Vec<std::net::SocketAddr>, String>> {
        Box::pin(async move {
            self.check(url)?;
            let host = url.host_str().ok_or("the URL has no host")?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let port = url.port_or_known_default().ok_or("the URL has no port")?;
            tokio::net::lookup_host((host, port))
                .await
                .map(Iterator::collect)
                .map_err(|e| format!("cannot resolve {host}: {e}"))
        })
    }
}

// ---------------------------------------------------------------------------
// Secrets
// ---------------------------------------------------------------------------

/// Where the `secrets` of a stdio server come from (the vault).
pub trait SecretSource: Send + Sync {
    /// The secret `name` for server `server`. The error names the secret
    /// and the fix, never a value.
    fn get<'a>(&'a self, server: &'a str, name: &'a str) -> BoxFuture<'a, Result<Secret, String>>;
}

/// No vault: every secret is refused, so servers that need one do not start.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoSecrets;

impl SecretSource for NoSecrets {
    fn get<'a>(&'a self, server: &'a str, name: &'a str) -> BoxFuture<'a, Result<Secret, String>> {
        Box::pin(async move {
            Err(format!(
                "server '{server}' needs secret '{name}', but no secret store is configured; \
                 configure the vault, or remove the server's \"secrets\""
            ))
        })
    }
}

/// The prefix of [`EnvSecrets`] variables.
pub const ENV_SECRET_PREFIX: &str = "AIBOX_MCP_SECRET_";

/// Secrets from aibox's own environment (`.env` included), until the vault
/// lands: secret `github-token` is `AIBOX_MCP_SECRET_GITHUB_TOKEN` (upper
/// case, `-` and `.` as `_`).
#[derive(Debug, Default)]
pub struct EnvSecrets {
    values: HashMap<String, Secret>,
}

impl EnvSecrets {
    /// Keeps the `AIBOX_MCP_SECRET_*` variables of `env`.
    pub fn from_env<'a, I>(env: I) -> Self
    where
        I: IntoIterator<Item = (&'a String, &'a String)>,
    {
        let values = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_SECRET_PREFIX))
            .map(|(k, v)| (k.clone(), Secret::new(v.clone())))
            .collect();
        Self { values }
    }

    /// The variable that holds secret `name`.
    pub fn variable(name: &str) -> String {
        let mut v = String::from(ENV_SECRET_PREFIX);
        v.extend(name.chars().map(|c| match c {
            '-' | '.' => '_',
            c => c.to_ascii_uppercase(),
        }));
        v
    }
}

impl SecretSource for EnvSecrets {
    fn get<'a>(&'a self, server: &'a str, name: &'a str) -> BoxFuture<'a, Result<Secret, String>> {
        Box::pin(async move {
            let var = Self::variable(name);
            self.values.get(&var).cloned().ok_or_else(|| {
                format!("server '{server}' needs secret '{name}'; set {var} in aibox's environment or .env")
            })
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn env_secrets_map_names_and_refuse_missing() {
        let env: HashMap<String, String> = [
            (
                "AIBOX_MCP_SECRET_GITHUB_TOKEN".to_owned(),
                "ghp_x".to_owned(),
            ),
            ("OTHER".to_owned(), "y".to_owned()),
        ]
        .into();
        let s = EnvSecrets::from_env(&env);
        assert_eq!(s.get("gh", "github-token").await.unwrap().expose(), "ghp_x");
        let e = s.get("gh", "other").await.unwrap_err();
        assert!(e.contains("AIBOX_MCP_SECRET_OTHER"), "{e}");
        assert!(NoSecrets.get("gh", "x").await.is_err());
    }

    #[tokio::test]
    async fn memory_audit_can_fail() {
        let a = MemoryAudit::new();
        let rec = SandboxRecord {
            at_ms: 1,
            kind: EventKind::Sandbox {
                server: "s".into(),
                what: "spawn".into(),
                detail: String::new(),
            },
        };
        a.record_sandbox(rec.clone()).await.unwrap();
        a.set_failing(true);
        assert!(a.record_sandbox(rec).await.is_err());
        assert_eq!(a.sandbox().len(), 1);
    }
}
