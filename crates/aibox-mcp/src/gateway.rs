//! The gateway: the enabled servers, policy on `tools/list` and
//! `tools/call`, the guardrail, the audit record, health and shutdown.
//!
//! A `tools/call` runs these steps, and every call, allowed or refused, is
//! recorded as its own audit turn before the client gets an answer:
//!
//! 1. the name in the JSON-RPC body (`SERVER__TOOL`) picks the server;
//!    unknown servers and names are refused;
//! 2. the principal must match the server's `allow_clients`, and the tool
//!    its `tools` lists;
//! 3. the CapToken (params `_meta["aibox/captoken"]`, else the
//!    `X-Aibox-Captoken` header) must verify, grant `tool:SERVER/TOOL` and
//!    belong to the caller's tenant and user; required unless the operator
//!    set `AIBOX_MCP_REQUIRE_CAPTOKEN=false` (a presented token is checked
//!    either way). The token is per turn and may serve several calls of it,
//!    so its `jti` is not burnt;
//! 4. the arguments pass the guardrail (block → error naming the rule;
//!    redact → the redacted arguments are sent);
//! 5. the server is called with the server's `timeout_ms` (else
//!    `AIBOX_MCP_CALL_TIMEOUT_MS`);
//! 6. the result passes the guardrail (block → error; redact → redacted);
//! 7. the turn (request, verdicts, `tool_call` with argument and result
//!    hashes, outcome, duration, parent turn, turn end) is recorded; if that
//!    fails the client gets an error and never the result.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use aibox_core::audit::{
    AuditEvent, EventKind, GuardAction, GuardStage, Sha256Hex, ToolOutcome, TurnStatus,
};
use aibox_core::{Principal, RequestId, TurnId};
use aibox_identity::{
    AnyReplayGuard, CapTokenClaims, CapTokenVerifier, MemoryReplayGuard, VerifyError,
};
use serde_json::{Map, Value, json};

use crate::fetch::FetchServer;
use crate::fs::{FILESYSTEM_ROOT_ENV, FsRootError, FsServer};
use crate::names;
use crate::origin::{BadOrigin, OriginPolicy};
use crate::policy::{self, Denial, ToolVerdict};
use crate::protocol::{RpcError, codes};
use crate::registry::{self, Builtin, RegistryError, ServerSpec, Transport};
use crate::remote::RemoteServer;
use crate::seams::{
    GuardOutcome, HttpEgress, NoGuard, NoSecrets, SecretSource, ToolAudit, ToolCallRecord,
    ToolGuard, UncheckedEgress,
};
use crate::session::SessionStore;
use crate::stdio::StdioServer;
use crate::upstream::{CallError, ServerHealth, Upstream};

/// The params `_meta` key that carries the turn's CapToken.
pub const CAPTOKEN_META_KEY: &str = "aibox/captoken";
/// The result `_meta` key (and error `data` key `turn`) naming the audit
/// turn of a call.
pub const TURN_META_KEY: &str = "aibox/turn";
/// The default per-call timeout.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a call or a tool list waits for a (re)starting stdio server.
pub const STARTUP_WAIT: Duration = Duration::from_secs(10);
/// The audience the MCP gateway's CapToken verifier accepts (tokens without
/// `aud` are accepted by every turn-aware service).
pub const DEFAULT_CAPTOKEN_AUDIENCE: &str = "aibox-mcp";
/// The route recorded in `request_received`.
pub const ROUTE: &str = "/mcp";
/// The longest upstream error message passed on to a client.
const MAX_UPSTREAM_MESSAGE: usize = 500;

/// The environment variables of the MCP gateway.
pub mod env {
    /// `true` (default) or `false`: whether `tools/call` needs a CapToken.
    pub const AIBOX_MCP_REQUIRE_CAPTOKEN: &str = "AIBOX_MCP_REQUIRE_CAPTOKEN";
    /// Default per-call timeout in milliseconds (1..=600000, default 30000).
    pub const AIBOX_MCP_CALL_TIMEOUT_MS: &str = "AIBOX_MCP_CALL_TIMEOUT_MS";
    /// Comma-separated browser origins allowed to use `/mcp`.
    pub const AIBOX_MCP_ALLOWED_ORIGINS: &str = "AIBOX_MCP_ALLOWED_ORIGINS";
    /// The CapToken audience the gateway accepts (default `aibox-mcp`).
    pub const AIBOX_MCP_CAPTOKEN_AUDIENCE: &str = "AIBOX_MCP_CAPTOKEN_AUDIENCE";
    /// `false` (default) or `true`: whether each `tools/call` uses up its
    /// CapToken (a second call with the same token is refused as a replay).
    pub const AIBOX_MCP_CAPTOKEN_SINGLE_USE: &str = "AIBOX_MCP_CAPTOKEN_SINGLE_USE";
    /// The directory of the built-in filesystem server.
    pub const FILESYSTEM_ROOT: &str = super::FILESYSTEM_ROOT_ENV;
}

/// Why the gateway cannot start.
#[derive(Debug, thiserror::Error)]
pub enum McpError {
    /// The registry files.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The filesystem root.
    #[error(transparent)]
    Filesystem(#[from] FsRootError),
    /// An allowed origin.
    #[error(transparent)]
    Origin(#[from] BadOrigin),
    /// A setting from the environment.
    #[error("{name}={value}: {why}")]
    Setting {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
        /// What is wrong and the fix.
        why: String,
    },
    /// A remote server's URL is refused by the egress policy.
    #[error(
        "server '{server}': the egress policy refuses {url}: {why}; fix: allow the host in the egress allow-list, or remove the server from data/mcp/servers.txt"
    )]
    Egress {
        /// The server.
        server: String,
        /// Its URL.
        url: String,
        /// The rule that refused it.
        why: String,
    },
    /// Single-use CapTokens are on and their shared store did not answer.
    #[error("AIBOX_MCP_CAPTOKEN_SINGLE_USE is on, but {0}")]
    ReplayStore(String),
    /// The development egress client could not be built.
    #[error("cannot build the HTTP client for MCP servers: {0}")]
    Client(String),
}

/// Settings of the MCP gateway.
#[derive(Debug, Clone)]
pub struct McpSettings {
    /// Where `servers.txt` and `registry.json` live (`DATA_DIR/mcp`).
    pub mcp_dir: PathBuf,
    /// The default per-call timeout.
    pub call_timeout: Duration,
    /// Whether `tools/call` needs a CapToken.
    pub require_captoken: bool,
    /// Browser origins allowed besides local development.
    pub allowed_origins: Vec<String>,
    /// The CapToken audience accepted.
    pub captoken_audience: String,
    /// Whether each `tools/call` uses up its CapToken.
    pub captoken_single_use: bool,
    /// `FILESYSTEM_ROOT`, if set.
    pub filesystem_root: Option<PathBuf>,
    /// `$HOME`, for the filesystem root check.
    pub home: Option<PathBuf>,
    /// The sandbox launcher for stdio servers with a `sandbox` profile
    /// (default `/proc/self/exe`: the running aibox binary).
    pub sandbox_launcher: PathBuf,
}

impl McpSettings {
    /// Defaults for a data directory.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            mcp_dir: data_dir.join("mcp"),
            call_timeout: DEFAULT_CALL_TIMEOUT,
            require_captoken: true,
            allowed_origins: Vec::new(),
            captoken_audience: DEFAULT_CAPTOKEN_AUDIENCE.to_owned(),
            captoken_single_use: false,
            filesystem_root: None,
            home: None,
            sandbox_launcher: PathBuf::from("/proc/self/exe"),
        }
    }

    /// Defaults overridden by the environment (`get` looks a variable up,
    /// e.g. in the map of the process environment plus `.env`).
    pub fn from_env(
        data_dir: &Path,
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, McpError> {
        let mut s = Self::new(data_dir);
        let flag = |name: &'static str, default: bool| -> Result<bool, McpError> {
            let Some(v) = get(name) else {
                return Ok(default);
            };
            match v.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" => Ok(true),
                "false" | "0" | "no" => Ok(false),
                _ => Err(McpError::Setting {
                    name,
                    value: v,
                    why: "use true or false".into(),
                }),
            }
        };
        s.require_captoken = flag(env::AIBOX_MCP_REQUIRE_CAPTOKEN, s.require_captoken)?;
        s.captoken_single_use = flag(env::AIBOX_MCP_CAPTOKEN_SINGLE_USE, s.captoken_single_use)?;
        if let Some(v) = get(env::AIBOX_MCP_CALL_TIMEOUT_MS) {
            let ms = v
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|ms| (1..=registry::MAX_TIMEOUT_MS).contains(ms))
                .ok_or_else(|| McpError::Setting {
                    name: env::AIBOX_MCP_CALL_TIMEOUT_MS,
                    value: v.clone(),
                    why: format!(
                        "use a number of milliseconds in 1..={}",
                        registry::MAX_TIMEOUT_MS
                    ),
                })?;
            s.call_timeout = Duration::from_millis(ms);
        }
        if let Some(v) = get(env::AIBOX_MCP_ALLOWED_ORIGINS) {
            s.allowed_origins = v
                .split(',')
                .map(str::trim)
                .filter(|o| !o.is_empty())
                .map(str::to_owned)
                .collect();
        }
        if let Some(v) = get(env::AIBOX_MCP_CAPTOKEN_AUDIENCE) {
            let v = v.trim().to_owned();
            if v.is_empty() {
                return Err(McpError::Setting {
                    name: env::AIBOX_MCP_CAPTOKEN_AUDIENCE,
                    value: v,
                    why: "use a service name, or unset it for the default".into(),
                });
            }
            s.captoken_audience = v;
        }
        s.filesystem_root = get(env::FILESYSTEM_ROOT)
            .filter(|v| !v.trim().is_empty())
            .map(PathBuf::from);
        s.home = get("HOME").filter(|v| !v.is_empty()).map(PathBuf::from);
        Ok(s)
    }
}

/// What the gateway is plugged into.
pub struct McpDeps {
    /// Verifies CapTokens (`AIBOX_CAPTOKEN_KEYS`).
    pub captoken: CapTokenVerifier,
    /// The audit log.
    pub audit: Arc<dyn ToolAudit>,
    /// The guardrail.
    pub guard: Arc<dyn ToolGuard>,
    /// The egress client for remote servers.
    pub egress: Arc<dyn HttpEgress>,
    /// The vault.
    pub secrets: Arc<dyn SecretSource>,
    /// Where used CapToken ids are remembered when
    /// `AIBOX_MCP_CAPTOKEN_SINGLE_USE` is on: Redis when replicas share one
    /// (so a token used on one replica is refused on every other), else
    /// this process's memory (the default when `None`).
    pub replay: Option<AnyReplayGuard>,
}

impl McpDeps {
    /// Development and test defaults: no guardrail, no vault, the
    /// loopback-allowing [`UncheckedEgress`].
    pub fn development(
        captoken: CapTokenVerifier,
        audit: Arc<dyn ToolAudit>,
    ) -> Result<Self, McpError> {
        Ok(Self {
            captoken,
            audit,
            guard: Arc::new(NoGuard),
            egress: Arc::new(UncheckedEgress::new().map_err(|e| McpError::Client(e.to_string()))?),
            secrets: Arc::new(NoSecrets),
            replay: None,
        })
    }
}

pub(crate) struct Server {
    pub(crate) spec: ServerSpec,
    pub(crate) upstream: Arc<dyn Upstream>,
}

/// The MCP tool gateway.
pub struct McpGateway {
    settings: McpSettings,
    servers: Vec<Server>,
    pub(crate) origin: OriginPolicy,
    pub(crate) sessions: SessionStore,
    verifier: arc_swap::ArcSwap<CapTokenVerifier>,
    /// Set when CapTokens are single-use.
    replay: Option<AnyReplayGuard>,
    audit: Arc<dyn ToolAudit>,
    guard: Arc<dyn ToolGuard>,
}

impl std::fmt::Debug for McpGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.servers.iter().map(|s| s.spec.name.as_str()).collect();
        f.debug_struct("McpGateway")
            .field("servers", &names)
            .field("require_captoken", &self.settings.require_captoken)
            .finish_non_exhaustive()
    }
}

/// One server as the ops API and the dashboard show it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ServerOverview {
    /// Its health (name, transport, state, restarts, ...).
    pub health: ServerHealth,
    /// The client selectors that may use it.
    pub allow_clients: Vec<String>,
    /// The tool allow-list; `None` allows every tool not denied.
    pub allow_tools: Option<Vec<String>>,
    /// The tool deny-list (always wins).
    pub deny_tools: Vec<String>,
    /// The tools it offers now (its own names, before namespacing).
    pub tools: Vec<String>,
}

/// Who is calling, from the HTTP layer.
#[derive(Debug, Clone)]
pub struct CallContext<'a> {
    /// The principal the edge authenticated.
    pub principal: &'a Principal,
    /// The request id the edge assigned.
    pub request_id: Option<&'a RequestId>,
    /// A CapToken presented outside the body (header or edge extension).
    pub captoken: Option<&'a str>,
    /// The hash of the HTTP request body.
    pub body_sha256: Sha256Hex,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Collects a call's events.
pub(crate) struct Recorder<'a> {
    ctx: &'a CallContext<'a>,
    turn: TurnId,
    events: Vec<AuditEvent>,
}

impl<'a> Recorder<'a> {
    pub(crate) fn new(ctx: &'a CallContext<'a>) -> Self {
        let mut r = Self {
            ctx,
            turn: TurnId::generate(),
            events: Vec::with_capacity(5),
        };
        let p = ctx.principal;
        r.push(EventKind::RequestReceived {
            user: p.user.clone(),
            roles: p.roles.clone(),
            auth: p.auth.clone(),
            route: ROUTE.to_owned(),
            model: None,
            body_sha256: ctx.body_sha256.clone(),
            content: None,
        });
        r
    }

    fn push(&mut self, kind: EventKind) {
        self.events.push(AuditEvent {
            tenant: self.ctx.principal.tenant.clone(),
            turn: Some(self.turn.clone()),
            request_id: self.ctx.request_id.cloned(),
            at_ms: now_ms(),
            kind,
        });
    }
}

/// How a call ended before it produced a result.
pub(crate) enum Stop {
    Denied(Denial),
    BadArguments(String),
    Failed {
        code: i64,
        message: String,
        reason: String,
    },
}

fn denial_code(d: &Denial) -> i64 {
    match d {
        Denial::BadName(_) | Denial::UnknownServer(_) | Denial::UnknownTool { .. } => {
            codes::INVALID_PARAMS
        }
        Denial::BadUri(_) | Denial::NotOffered { .. } => codes::INVALID_PARAMS,
        Denial::ClientNotAllowed { .. }
        | Denial::ToolNotAllowed { .. }
        | Denial::ResourceNotAllowed { .. }
        | Denial::PromptNotAllowed { .. } => codes::POLICY_DENIED,
        Denial::CapTokenMissing { .. }
        | Denial::CapTokenInvalid { .. }
        | Denial::CapTokenOpNotGranted { .. }
        | Denial::CapTokenWrongPrincipal => codes::CAPTOKEN_REFUSED,
        Denial::GuardBlocked { .. } | Denial::ToolDefinitionBlocked { .. } => {
            codes::GUARDRAIL_BLOCKED
        }
    }
}

fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

impl McpGateway {
    /// Loads the registry from `settings.mcp_dir`, checks every server, and
    /// starts the stdio supervisors. Fails with the fix when the registry,
    /// `FILESYSTEM_ROOT`, an origin or a remote URL is not usable; nothing
    /// is spawned then.
    pub async fn start(settings: McpSettings, deps: McpDeps) -> Result<Arc<Self>, McpError> {
        let reg = registry::load_dir(&settings.mcp_dir)?;
        let origin = OriginPolicy::new(&settings.allowed_origins)?;
        // Check everything before spawning anything, so that a refused
        // start-up leaves no process behind.
        for spec in &reg.servers {
            match &spec.transport {
                Transport::Http(h) => {
                    deps.egress.check(&h.url).map_err(|why| McpError::Egress {
                        server: spec.name.clone(),
                        url: h.url.to_string(),
                        why,
                    })?;
                }
                Transport::Builtin(Builtin::Filesystem) => {
                    let Some(root) = &settings.filesystem_root else {
                        return Err(McpError::Filesystem(FsRootError {
                            root: "(unset)".into(),
                            why: "'filesystem' is enabled in servers.txt but FILESYSTEM_ROOT is not set".into(),
                        }));
                    };
                    crate::fs::check_root(root, settings.home.as_deref())?;
                }
                Transport::Builtin(Builtin::Fetch) | Transport::Stdio(_) => {}
            }
        }
        if settings.filesystem_root.is_some() && reg.get(registry::FILESYSTEM_SERVER).is_none() {
            tracing::warn!(
                "{FILESYSTEM_ROOT_ENV} is set but 'filesystem' is not enabled in data/mcp/servers.txt; the filesystem server stays off"
            );
        }
        let pids = Arc::new(crate::sandbox_watch::ServerPids::default());
        if reg
            .servers
            .iter()
            .any(|s| matches!(&s.transport, Transport::Stdio(st) if st.sandbox.is_some()))
        {
            crate::sandbox_watch::start(pids.clone(), deps.audit.clone());
        }
        let mut servers = Vec::with_capacity(reg.servers.len());
        for spec in reg.servers {
            let upstream: Arc<dyn Upstream> = match &spec.transport {
                Transport::Http(h) => Arc::new(RemoteServer::new(
                    &spec.name,
                    h.url.clone(),
                    deps.egress.clone(),
                )),
                Transport::Builtin(Builtin::Filesystem) => {
                    let root = settings.filesystem_root.clone().unwrap_or_default();
                    let fs = FsServer::open(&root, settings.home.as_deref())?;
                    tracing::info!(root = %fs.root().display(), "filesystem MCP server enabled, confined to its root");
                    Arc::new(fs)
                }
                Transport::Builtin(Builtin::Fetch) => {
                    tracing::info!(
                        "fetch MCP server enabled; it reaches the network only through the egress guard"
                    );
                    Arc::new(FetchServer::new(deps.egress.clone()))
                }
                Transport::Stdio(s) => Arc::new(StdioServer::start(
                    &spec.name,
                    s.clone(),
                    deps.audit.clone(),
                    deps.secrets.clone(),
                    crate::stdio::SandboxDeps {
                        launcher: settings.sandbox_launcher.clone(),
                        egress: deps.egress.clone(),
                        pids: pids.clone(),
                    },
                    STARTUP_WAIT,
                )),
            };
            servers.push(Server { spec, upstream });
        }
        tracing::info!(
            servers = %servers.iter().map(|s| format!("{}({})", s.spec.name, s.spec.transport.kind())).collect::<Vec<_>>().join(","),
            require_captoken = settings.require_captoken,
            captoken_single_use = settings.captoken_single_use,
            "MCP gateway started"
        );
        // Single-use without a shared store still refuses replays within
        // this process, rather than not at all.
        let replay = match (settings.captoken_single_use, deps.replay) {
            (false, _) => None,
            (true, Some(guard)) => Some(guard),
            (true, None) => Some(AnyReplayGuard::Memory(MemoryReplayGuard::default())),
        };
        let verifier = deps
            .captoken
            .with_audience(settings.captoken_audience.clone());
        Ok(Arc::new(Self {
            settings,
            servers,
            origin,
            sessions: SessionStore::default(),
            verifier: arc_swap::ArcSwap::from_pointee(verifier),
            replay,
            audit: deps.audit,
            guard: deps.guard,
        }))
    }

    /// The health of every enabled server, in `servers.txt` order.
    pub fn servers_health(&self) -> Vec<ServerHealth> {
        self.servers.iter().map(|s| s.upstream.health()).collect()
    }

    /// Stops every server (processes get SIGTERM, then SIGKILL).
    pub async fn shutdown(&self) {
        futures_util::future::join_all(self.servers.iter().map(|s| s.upstream.shutdown())).await;
        tracing::info!("MCP servers stopped");
    }

    /// Replaces the CapToken verifier after `AIBOX_CAPTOKEN_KEYS` was
    /// rotated (the ops API or SIGHUP). Calls already past their check
    /// keep the verdict they had; the gateway's audience is applied here.
    pub fn replace_captoken_verifier(&self, verifier: CapTokenVerifier) {
        self.verifier.store(Arc::new(
            verifier.with_audience(self.settings.captoken_audience.clone()),
        ));
    }

    /// Restarts one server on an operator's request; `Ok` says what was
    /// done. Unknown names and servers without a process are errors.
    pub fn restart_server(&self, name: &str) -> Result<String, String> {
        let server = self.server(name).ok_or_else(|| {
            format!(
                "no enabled MCP server is called '{}'",
                crate::names::printable(name)
            )
        })?;
        server.upstream.restart()
    }

    /// Every enabled server with the tool names its allow and deny lists
    /// name literally (patterns ending in `*` are left out): the label
    /// values the metrics keep for that server's calls.
    pub fn configured_tool_names(&self) -> Vec<(String, Vec<String>)> {
        self.servers
            .iter()
            .map(|s| {
                let rules = &s.spec.tools;
                let names = rules
                    .allow
                    .iter()
                    .flatten()
                    .chain(rules.deny.iter())
                    .map(|p| p.as_str())
                    .filter(|p| !p.ends_with('*'))
                    .map(str::to_owned)
                    .collect();
                (s.spec.name.clone(), names)
            })
            .collect()
    }

    /// Every enabled server with its health, its policy (client selectors,
    /// tool allow and deny lists) and the tools it offers now, for the ops
    /// API and the dashboard. A server that does not list its tools within
    /// `wait` is shown without them.
    pub async fn overview(&self, wait: Duration) -> Vec<ServerOverview> {
        futures_util::future::join_all(self.servers.iter().map(|s| async move {
            let tools = match tokio::time::timeout(wait, s.upstream.tools()).await {
                Ok(Ok(t)) => t.iter().map(|t| t.name.clone()).collect(),
                _ => Vec::new(),
            };
            ServerOverview {
                health: s.upstream.health(),
                allow_clients: s
                    .spec
                    .allow_clients
                    .iter()
                    .map(|c| c.as_str().to_owned())
                    .collect(),
                allow_tools: s
                    .spec
                    .tools
                    .allow
                    .as_ref()
                    .map(|a| a.iter().map(|p| p.as_str().to_owned()).collect()),
                deny_tools: s
                    .spec
                    .tools
                    .deny
                    .iter()
                    .map(|p| p.as_str().to_owned())
                    .collect(),
                tools,
            }
        }))
        .await
    }

    /// The settings in force.
    pub fn settings(&self) -> &McpSettings {
        &self.settings
    }

    pub(crate) fn server(&self, name: &str) -> Option<&Server> {
        self.servers.iter().find(|s| s.spec.name == name)
    }

    pub(crate) fn servers(&self) -> &[Server] {
        &self.servers
    }

    fn check_captoken(
        &self,
        token: &str,
        principal: &Principal,
        op: &str,
    ) -> Result<CapTokenClaims, Denial> {
        let claims = self
            .verifier
            .load()
            .verify(token, None, op, SystemTime::now())
            .map_err(|e| match e {
                VerifyError::OpNotAllowed { .. } => {
                    Denial::CapTokenOpNotGranted { op: op.to_owned() }
                }
                other => Denial::CapTokenInvalid {
                    why: other.to_string(),
                },
            })?;
        if claims.tenant != principal.tenant || claims.sub != principal.user {
            return Err(Denial::CapTokenWrongPrincipal);
        }
        Ok(claims)
    }

    /// With single-use CapTokens, uses up the token of a call that passed
    /// every other check; a replay is refused, and so is every call while
    /// the replay store cannot answer (fail closed).
    async fn consume_captoken(&self, claims: &CapTokenClaims) -> Result<(), Stop> {
        let Some(guard) = &self.replay else {
            return Ok(());
        };
        match self.verifier.load().consume(claims, guard).await {
            Ok(()) => Ok(()),
            Err(VerifyError::ReplayCheck(e)) => {
                tracing::error!(error = %e.operator_hint(), "tools/call refused: the CapToken replay store did not answer");
                Err(Stop::Failed {
                    code: codes::UPSTREAM_UNAVAILABLE,
                    message: "single-use CapTokens cannot be checked right now, so the call is refused; retry later (the operator sees why in the logs)".into(),
                    reason: "replay_check_failed".into(),
                })
            }
            Err(other) => Err(Stop::Denied(Denial::CapTokenInvalid {
                why: other.to_string(),
            })),
        }
    }

    /// The tools `principal` may call, namespaced. With a CapToken, only
    /// the tools it grants; an invalid token is an error.
    pub async fn list_tools(
        &self,
        principal: &Principal,
        captoken: Option<&str>,
    ) -> Result<Vec<Value>, RpcError> {
        let admitted: Vec<&Server> = self
            .servers
            .iter()
            .filter(|s| policy::client_allowed(&s.spec.allow_clients, principal))
            .collect();
        let lists =
            futures_util::future::join_all(admitted.iter().map(|s| s.upstream.tools())).await;
        let mut out = Vec::new();
        for (server, tools) in admitted.iter().zip(lists) {
            let tools = match tools {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(server = %server.spec.name, error = %e, "tools of an unavailable MCP server are not listed");
                    continue;
                }
            };
            for t in tools.iter() {
                if !server.spec.tools.permits(&t.name) {
                    continue;
                }
                if let Some(token) = captoken {
                    let op = format!("tool:{}/{}", server.spec.name, t.name);
                    match self.check_captoken(token, principal, &op) {
                        Ok(_) => {}
                        Err(Denial::CapTokenOpNotGranted { .. }) => continue,
                        Err(d) => {
                            return Err(RpcError::new(codes::CAPTOKEN_REFUSED, d.message())
                                .with_data(json!({"reason": d.code(), "fix": d.fix()})));
                        }
                    }
                }
                let Ok(full) = names::join(&server.spec.name, &t.name) else {
                    continue;
                };
                let Some(mut def) = self.listed(
                    principal,
                    &server.spec.name,
                    "tools",
                    &t.name,
                    &t.text,
                    &t.def,
                ) else {
                    continue;
                };
                if let Some(o) = def.as_object_mut() {
                    o.insert("name".into(), Value::String(full));
                }
                out.push(def);
            }
        }
        Ok(out)
    }

    /// Runs one `tools/call`; returns the result (or the error) and the
    /// call's audit turn.
    pub async fn call_tool(
        &self,
        ctx: &CallContext<'_>,
        params: Option<&Value>,
    ) -> (Result<Value, RpcError>, TurnId) {
        let started = Instant::now();
        let mut rec = Recorder::new(ctx);
        let empty = Map::new();
        let params_obj = params.and_then(Value::as_object).unwrap_or(&empty);
        let name = params_obj.get("name").and_then(Value::as_str).unwrap_or("");
        let arguments = params_obj
            .get("arguments")
            .cloned()
            .unwrap_or_else(|| json!({}));
        let meta_token = params_obj
            .get("_meta")
            .and_then(|m| m.get(CAPTOKEN_META_KEY))
            .and_then(Value::as_str);
        let token = meta_token.or(ctx.captoken);
        // Serialised once: the same text is hashed for the record and
        // scanned by the guardrail.
        let args_text = serde_json::to_string(&arguments).unwrap_or_default();
        let args_hash = Sha256Hex::of(args_text.as_bytes());
        let (server_name, tool_name) = match names::split(name) {
            Ok((s, t)) => (s.to_owned(), t.to_owned()),
            Err(_) => (String::new(), names::printable(name)),
        };

        let mut parent_turn = None;
        let mut result_hash = None;
        let outcome: Result<Value, Stop> = async {
            if name.is_empty() {
                return Err(Stop::BadArguments(
                    "params.name (the tool) is required".into(),
                ));
            }
            if !arguments.is_object() {
                return Err(Stop::BadArguments(
                    "params.arguments must be an object".into(),
                ));
            }
            if server_name.is_empty() {
                return Err(Stop::Denied(Denial::BadName(names::printable(name))));
            }
            let Some(server) = self.server(&server_name) else {
                return Err(Stop::Denied(Denial::UnknownServer(server_name.clone())));
            };
            let spec = &server.spec;
            if !policy::client_allowed(&spec.allow_clients, ctx.principal) {
                return Err(Stop::Denied(Denial::ClientNotAllowed {
                    server: server_name.clone(),
                }));
            }
            let verdict = spec.tools.verdict(&tool_name);
            if verdict != ToolVerdict::Allowed {
                return Err(Stop::Denied(Denial::ToolNotAllowed {
                    server: server_name.clone(),
                    tool: tool_name.clone(),
                    verdict,
                }));
            }
            let op = format!("tool:{server_name}/{tool_name}");
            match token {
                Some(t) => {
                    let claims = self
                        .check_captoken(t, ctx.principal, &op)
                        .map_err(Stop::Denied)?;
                    self.consume_captoken(&claims).await?;
                    parent_turn = Some(claims.turn);
                }
                None if self.settings.require_captoken => {
                    return Err(Stop::Denied(Denial::CapTokenMissing { op }));
                }
                None => {}
            }
            let timeout = spec.timeout.unwrap_or(self.settings.call_timeout);
            let tools = server
                .upstream
                .tools()
                .await
                .map_err(|e| upstream_stop(&server_name, e))?;
            let Some(info) = tools.iter().find(|t| t.name == tool_name) else {
                return Err(Stop::Denied(Denial::UnknownTool {
                    server: server_name.clone(),
                    tool: tool_name.clone(),
                }));
            };
            // A client may call a tool that tools/list withheld by name; it
            // is refused the same way. Only a refusal is recorded, so that
            // a call's record does not grow by a verdict on every call.
            if let DefinitionCheck::Blocked { reason, outcome } =
                self.check_definition(ctx.principal, &server_name, &info.name, &info.text)
            {
                rec.push(EventKind::GuardrailVerdict {
                    stage: GuardStage::ToolResult,
                    profile: outcome.profile,
                    action: outcome.action,
                    findings: outcome.findings,
                });
                tracing::warn!(server = %server_name, tool = %tool_name, reason = %reason, "tools/call refused: the guardrail refused the tool's definition (tool poisoning?)");
                return Err(Stop::Denied(Denial::ToolDefinitionBlocked {
                    server: server_name.clone(),
                    tool: tool_name.clone(),
                    reason,
                }));
            }

            let arguments = self.guard_stage_text(
                ctx,
                &mut rec,
                GuardStage::ToolArguments,
                &server_name,
                &tool_name,
                arguments,
                &args_text,
                |reason| Stop::Denied(Denial::GuardBlocked { reason }),
            )?;
            let remaining = timeout.saturating_sub(started.elapsed());
            let result = server
                .upstream
                .call(&tool_name, arguments, remaining)
                .await
                .map_err(|e| match e {
                    CallError::Timeout(_) => CallError::Timeout(timeout),
                    other => other,
                });
            let result = match result {
                Ok(v) if v.is_object() => v,
                Ok(_) => {
                    return Err(upstream_stop(
                        &server_name,
                        CallError::Protocol("the result is not an object".into()),
                    ));
                }
                Err(CallError::Rpc(e)) => {
                    return Err(self.upstream_error(ctx, &mut rec, &server_name, &tool_name, &e));
                }
                Err(e) => return Err(upstream_stop(&server_name, e)),
            };
            let result_text = serde_json::to_string(&result).unwrap_or_default();
            result_hash = Some(Sha256Hex::of(result_text.as_bytes()));
            self.guard_result_text(
                ctx,
                &mut rec,
                &server_name,
                &tool_name,
                result,
                &result_text,
            )
        }
        .await;

        let (server, tool) = (server_name.clone(), tool_name.clone());
        self.conclude(
            ctx,
            rec,
            started,
            outcome,
            &server_name,
            &tool_name,
            "tool call",
            parent_turn.clone(),
            move |outcome, duration_ms| EventKind::ToolCall {
                server,
                tool,
                arguments_sha256: args_hash,
                result_sha256: result_hash,
                outcome,
                duration_ms,
                parent_turn,
            },
        )
        .await
    }

    /// Ends a call, read or get: records its turn (the request, the
    /// verdicts, the event `event` builds from the outcome and duration,
    /// and the turn's end) durably, then answers. A turn that cannot be
    /// recorded withholds the result. `what` names the tool, prompt or
    /// resource scheme in the logs; `label` the kind of request.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn conclude(
        &self,
        ctx: &CallContext<'_>,
        mut rec: Recorder<'_>,
        started: Instant,
        outcome: Result<Value, Stop>,
        server_name: &str,
        what: &str,
        label: &str,
        parent_turn: Option<TurnId>,
        event: impl FnOnce(ToolOutcome, u64) -> EventKind,
    ) -> (Result<Value, RpcError>, TurnId) {
        let duration_ms = millis(started.elapsed());
        let (tool_outcome, reply, status) = match outcome {
            Ok(v) => (ToolOutcome::Ok, Ok(v), TurnStatus::Ok),
            Err(Stop::Denied(d)) => {
                tracing::warn!(server = %server_name, target = %what, reason = d.code(), user = %ctx.principal.user, "{label} refused");
                let err = RpcError::new(
                    denial_code(&d),
                    format!("{}; fix: {}", d.message(), d.fix()),
                )
                .with_data(json!({"reason": d.code(), "fix": d.fix()}));
                let status = TurnStatus::Error {
                    code: d.code().to_owned(),
                };
                (
                    ToolOutcome::Denied {
                        reason: d.code().to_owned(),
                    },
                    Err(err),
                    status,
                )
            }
            Err(Stop::BadArguments(why)) => {
                let err = RpcError::new(codes::INVALID_PARAMS, why)
                    .with_data(json!({"reason": "bad_arguments"}));
                (
                    ToolOutcome::Denied {
                        reason: "bad_arguments".into(),
                    },
                    Err(err),
                    TurnStatus::Error {
                        code: "bad_arguments".into(),
                    },
                )
            }
            Err(Stop::Failed {
                code,
                message,
                reason,
            }) => {
                tracing::warn!(server = %server_name, target = %what, %reason, "{label} failed");
                let err = RpcError::new(code, message).with_data(json!({"reason": reason}));
                (
                    ToolOutcome::Failed {
                        reason: reason.clone(),
                    },
                    Err(err),
                    TurnStatus::Error { code: reason },
                )
            }
        };
        let ok = matches!(tool_outcome, ToolOutcome::Ok);
        rec.push(event(tool_outcome, duration_ms));
        rec.push(EventKind::TurnEnd {
            status,
            duration_ms,
        });
        let turn = rec.turn.clone();
        let record = ToolCallRecord {
            principal: ctx.principal.clone(),
            request_id: ctx.request_id.cloned(),
            turn: turn.clone(),
            parent_turn,
            events: rec.events,
        };
        if let Err(e) = self.audit.record_call(record).await {
            tracing::error!(error = %e, server = %server_name, target = %what, "cannot record the {label} in the audit log; withholding the result");
            let err = RpcError::new(
                codes::AUDIT_UNAVAILABLE,
                format!("the {label} could not be recorded in the audit log, so its result is withheld; retry later"),
            )
            .with_data(json!({"reason": "audit_unavailable", "turn": turn.as_str()}));
            return (Err(err), turn);
        }
        if ok {
            tracing::info!(server = %server_name, target = %what, duration_ms, turn = %turn, "{label}");
        }
        let reply = match reply {
            Ok(mut v) => {
                if let Some(o) = v.as_object_mut() {
                    let meta = o.entry("_meta").or_insert_with(|| json!({}));
                    if let Some(m) = meta.as_object_mut() {
                        m.insert(
                            TURN_META_KEY.into(),
                            Value::String(turn.as_str().to_owned()),
                        );
                    }
                }
                Ok(v)
            }
            Err(mut e) => {
                if let Some(Value::Object(d)) = e.data.as_mut() {
                    d.insert("turn".into(), Value::String(turn.as_str().to_owned()));
                }
                Err(e)
            }
        };
        (reply, turn)
    }

    /// A server's JSON-RPC error, passed on through the guardrail like any
    /// output of the server.
    pub(crate) fn upstream_error(
        &self,
        ctx: &CallContext<'_>,
        rec: &mut Recorder<'_>,
        server: &str,
        what: &str,
        e: &RpcError,
    ) -> Stop {
        let text = cut(&e.message, MAX_UPSTREAM_MESSAGE);
        let checked = self.guard_stage(
            ctx,
            rec,
            GuardStage::ToolResult,
            server,
            what,
            Value::String(text),
            |reason| Stop::Failed {
                code: codes::GUARDRAIL_BLOCKED,
                message: format!(
                    "the guardrail blocked the tool server's error message ({reason})"
                ),
                reason: format!("guardrail: {reason}"),
            },
        );
        match checked {
            Ok(text) => Stop::Failed {
                code: e.code,
                message: format!(
                    "the tool server '{server}' answered with an error: {}",
                    text.as_str().unwrap_or("")
                ),
                reason: format!("upstream error {}", e.code),
            },
            Err(stop) => stop,
        }
    }

    /// A server's result through the guardrail's output scan; `text` is
    /// the result serialised (compact JSON), which the caller also hashed
    /// for the record.
    pub(crate) fn guard_result_text(
        &self,
        ctx: &CallContext<'_>,
        rec: &mut Recorder<'_>,
        server: &str,
        what: &str,
        result: Value,
        text: &str,
    ) -> Result<Value, Stop> {
        self.guard_stage_text(
            ctx,
            rec,
            GuardStage::ToolResult,
            server,
            what,
            result,
            text,
            |reason| Stop::Failed {
                code: codes::GUARDRAIL_BLOCKED,
                message: format!("the guardrail blocked the result ({reason})"),
                reason: format!("guardrail: {reason}"),
            },
        )
    }

    /// Runs the guardrail at one stage over `value` (as JSON text) and
    /// records the verdict; returns the value to continue with.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn guard_stage(
        &self,
        ctx: &CallContext<'_>,
        rec: &mut Recorder<'_>,
        stage: GuardStage,
        server: &str,
        tool: &str,
        value: Value,
        blocked: impl FnOnce(String) -> Stop,
    ) -> Result<Value, Stop> {
        if !self.guard.active() {
            return Ok(value);
        }
        let text = serde_json::to_string(&value).unwrap_or_default();
        self.guard_stage_text(ctx, rec, stage, server, tool, value, &text, blocked)
    }

    /// [`Self::guard_stage`] with `value` already serialised as `text`
    /// (compact `serde_json`, exactly what `guard_stage` would scan), so a
    /// caller that also hashes that text serialises it once.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn guard_stage_text(
        &self,
        ctx: &CallContext<'_>,
        rec: &mut Recorder<'_>,
        stage: GuardStage,
        server: &str,
        tool: &str,
        value: Value,
        text: &str,
        blocked: impl FnOnce(String) -> Stop,
    ) -> Result<Value, Stop> {
        if !self.guard.active() {
            return Ok(value);
        }
        let out = self.guard.inspect(ctx.principal, stage, server, tool, text);
        rec.push(EventKind::GuardrailVerdict {
            stage,
            profile: out.profile.clone(),
            action: out.action,
            findings: out.findings.clone(),
        });
        match out.action {
            GuardAction::Allow | GuardAction::Flag => Ok(value),
            GuardAction::Block => Err(blocked(out.reason.unwrap_or_else(|| "blocked".into()))),
            GuardAction::Redact => redacted(out.replacement.as_deref(), value.is_object())
                .map_err(|why| blocked(why.into())),
        }
    }
}

/// The value a redaction gives: its text parsed as JSON, which must be an
/// object exactly when the original was. A redaction with nothing usable
/// fails closed: passing the original on would release what the guardrail
/// flagged.
fn redacted(replacement: Option<&str>, object: bool) -> Result<Value, &'static str> {
    let Some(text) = replacement else {
        return Err("the guardrail asked for a redaction but gave no redacted text");
    };
    match serde_json::from_str::<Value>(text) {
        Ok(v) if v.is_object() == object => Ok(v),
        _ => Err("the redacted text is not valid JSON of the same shape"),
    }
}

/// What the guardrail made of a definition: a tool's, or a prompt's or
/// resource's list entry.
pub(crate) enum DefinitionCheck {
    /// Pass it on: as the server sent it (`None`) or redacted.
    Pass(Option<Value>),
    /// Withhold it: neither listed nor called.
    Blocked {
        /// `scanner/rule`, or a description.
        reason: String,
        /// The verdict, for the record of a refused call.
        outcome: GuardOutcome,
    },
}

impl McpGateway {
    /// A list entry (of `list`: `tools`, `prompts`, `resources`) as the
    /// guardrail lets it be listed: `def` itself, redacted, or, with a
    /// warning, not at all.
    pub(crate) fn listed(
        &self,
        principal: &Principal,
        server: &str,
        list: &str,
        name: &str,
        text: &str,
        def: &Value,
    ) -> Option<Value> {
        match self.check_definition(principal, server, name, text) {
            DefinitionCheck::Pass(None) => Some(def.clone()),
            DefinitionCheck::Pass(Some(redacted)) => Some(redacted),
            DefinitionCheck::Blocked { reason, .. } => {
                tracing::warn!(server, list, entry = %names::printable(name), reason = %reason, "entry withheld from the {list} list: the guardrail refused its description (tool poisoning?)");
                None
            }
        }
    }

    /// Runs a definition (a tool's, or a prompt's or resource's list
    /// entry: whatever a client may show the model as guidance) named
    /// `name`, as JSON `text`, through the guardrail for `principal`
    /// (whose tenant picks the profile). A redaction that yields no JSON
    /// object withholds it: passing the original on would release what
    /// the guardrail flagged.
    pub(crate) fn check_definition(
        &self,
        principal: &Principal,
        server: &str,
        name: &str,
        text: &str,
    ) -> DefinitionCheck {
        if !self.guard.active() {
            return DefinitionCheck::Pass(None);
        }
        let out = self.guard.inspect_definition(principal, server, name, text);
        match out.action {
            GuardAction::Allow | GuardAction::Flag => DefinitionCheck::Pass(None),
            GuardAction::Block => DefinitionCheck::Blocked {
                reason: out.reason.clone().unwrap_or_else(|| "blocked".into()),
                outcome: out,
            },
            GuardAction::Redact => match redacted(out.replacement.as_deref(), true) {
                Ok(v) => DefinitionCheck::Pass(Some(v)),
                Err(why) => DefinitionCheck::Blocked {
                    reason: why.into(),
                    outcome: out,
                },
            },
        }
    }
}

pub(crate) fn upstream_stop(server: &str, e: CallError) -> Stop {
    match e {
        CallError::Timeout(d) => Stop::Failed {
            code: codes::UPSTREAM_TIMEOUT,
            message: format!(
                "the tool server '{server}' did not answer within {} ms; the operator can raise timeout_ms for it in data/mcp/registry.json",
                d.as_millis()
            ),
            reason: "timeout".into(),
        },
        // The details (addresses, exit statuses) go to the operator's log,
        // not to the client.
        CallError::Unavailable(why) => {
            tracing::warn!(server, reason = %why, "tool server unavailable");
            Stop::Failed {
                code: codes::UPSTREAM_UNAVAILABLE,
                message: format!(
                    "the tool server '{server}' is not available right now; retry later (the operator sees why in the logs and in the server health)"
                ),
                reason: "unavailable".into(),
            }
        }
        CallError::Protocol(why) => {
            tracing::warn!(server, reason = %why, "tool server answered something that is not MCP");
            Stop::Failed {
                code: codes::UPSTREAM_UNAVAILABLE,
                message: format!(
                    "the tool server '{server}' answered something that is not a valid MCP response"
                ),
                reason: "protocol_error".into(),
            }
        }
        CallError::Rpc(e) => Stop::Failed {
            code: e.code,
            message: format!(
                "the tool server '{server}' answered with an error: {}",
                cut(&e.message, MAX_UPSTREAM_MESSAGE)
            ),
            reason: format!("upstream error {}", e.code),
        },
    }
}
