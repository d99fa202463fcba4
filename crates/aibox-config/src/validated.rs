//! The second loading step: defaults, environment overrides, validation.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aibox_core::{Secret, TenantId};
use serde::Serialize;

use crate::env::{self, Env};
use crate::error::{ConfigError, Origin};
use crate::raw::{RawConfig, RawEgress, RawRate, RawTimeouts};
use aibox_core::yamlpath::{Seg, locate};

/// The validated configuration.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// The file it was loaded from, if any.
    #[serde(skip)]
    pub source: Option<PathBuf>,
    /// HTTP server settings.
    pub server: ServerConfig,
    /// Logging.
    pub log: LogConfig,
    /// The database and its PostgreSQL pool sizes.
    pub database: DatabaseConfig,
    /// Redis, when limits and replay state are shared between replicas.
    #[serde(
        serialize_with = "redacted_url",
        skip_serializing_if = "Option::is_none"
    )]
    pub redis_url: Option<Secret>,
    /// Gateway authentication.
    pub auth: AuthConfig,
    /// Upstreams, in file order.
    pub upstreams: Vec<UpstreamConfig>,
    /// Configured models; empty means "whatever the upstreams list".
    pub models: Vec<ModelConfig>,
    /// Rate limits.
    pub limits: LimitsConfig,
    /// The signed principal header.
    pub principal: PrincipalConfig,
    /// Per-turn capability tokens.
    pub captoken: CaptokenConfig,
    /// Downstream HTTP services.
    pub routes: Vec<RouteConfig>,
    /// aibox's own client for service-to-service tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_auth: Option<ServiceAuthConfig>,
    /// The SSRF-safe egress policy of tools and remote MCP servers.
    pub egress: EgressConfig,
    /// The admin dashboard.
    pub dashboard: DashboardConfig,
    /// Traces.
    pub telemetry: TelemetryConfig,
}

/// `telemetry:`.
#[derive(Debug, Clone, Serialize)]
pub struct TelemetryConfig {
    /// Whether spans are exported over OTLP.
    pub traces: bool,
    /// The OTLP/HTTP (protobuf) traces endpoint.
    #[serde(serialize_with = "url_text")]
    pub otlp_endpoint: url::Url,
    /// The variable holding the collector's `Authorization` value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp_authorization_env: Option<String>,
    /// Its value; never serialised.
    #[serde(skip)]
    pub otlp_authorization: Option<Secret>,
    /// `service.name`.
    pub service_name: String,
    /// The share of new traces sampled.
    pub sample_ratio: f64,
    /// Prompts and completions in spans.
    pub capture_content: bool,
}

/// `dashboard:`.
#[derive(Debug, Clone, Serialize)]
pub struct DashboardConfig {
    /// Whether the dashboard listener runs.
    pub enabled: bool,
    /// Its listener.
    pub listen: SocketAddr,
    /// How long a login lasts.
    #[serde(serialize_with = "secs", rename = "session_ttl_secs")]
    pub session_ttl: Duration,
    /// Whether the session cookie is `Secure`.
    pub secure_cookie: bool,
    /// Single sign-on through `auth.issuer`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oidc: Option<DashboardOidcConfig>,
}

/// `dashboard.oidc:`.
#[derive(Debug, Clone, Serialize)]
pub struct DashboardOidcConfig {
    /// The dashboard's client id at the provider.
    pub client_id: String,
    /// The variable the secret came from.
    pub client_secret_env: String,
    /// The secret; never serialised.
    #[serde(skip)]
    pub client_secret: Secret,
    /// The registered callback URL.
    #[serde(serialize_with = "url_text")]
    pub redirect_url: url::Url,
}

/// `egress:`, checked by building the policy it describes.
#[derive(Debug, Clone, Serialize)]
pub struct EgressConfig {
    /// Internal hosts tools may reach, as written.
    pub allow_hosts: Vec<String>,
    /// Every allowed port (80 and 443 included).
    pub allowed_ports: Vec<u16>,
    /// Whether plain `http:` is refused.
    pub https_only: bool,
    /// Redirect hops followed per call.
    pub max_redirects: u32,
    /// The largest response body read.
    pub max_response_bytes: u64,
    /// The whole call.
    #[serde(serialize_with = "millis", rename = "timeout_ms")]
    pub timeout: Duration,
    /// One connection.
    #[serde(serialize_with = "millis", rename = "connect_timeout_ms")]
    pub connect_timeout: Duration,
    /// The policy itself, for `aibox_egress::EgressGuard`.
    #[serde(skip)]
    pub policy: aibox_egress::EgressPolicy,
}

/// `service_auth:`.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceAuthConfig {
    /// The token endpoint; `None` means discovery from `auth.issuer`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_url: Option<String>,
    /// The client id.
    pub client_id: String,
    /// The variable the secret came from.
    pub client_secret_env: String,
    /// The secret; never serialised.
    #[serde(skip)]
    pub client_secret: Secret,
}

/// What token to request for one upstream or route.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TokenFor {
    /// RFC 8707 `resource`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// OAuth `scope`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

/// `server:`.
#[derive(Debug, Clone, Serialize)]
pub struct ServerConfig {
    /// Main listener.
    pub listen: SocketAddr,
    /// Ops listener.
    pub ops_listen: SocketAddr,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Drain budget at shutdown.
    #[serde(serialize_with = "secs", rename = "shutdown_grace_secs")]
    pub shutdown_grace: Duration,
    /// How long a client may take to send a complete request head, on a
    /// new connection or between requests on a kept-alive one.
    #[serde(serialize_with = "millis", rename = "header_read_timeout_ms")]
    pub header_read_timeout: Duration,
    /// The longest pause between two frames of a request body.
    #[serde(serialize_with = "millis", rename = "body_idle_timeout_ms")]
    pub body_idle_timeout: Duration,
    /// How long a new connection may stay silent before its first byte
    /// (hyper arms its header-read timer only at that byte).
    #[serde(serialize_with = "millis", rename = "first_byte_timeout_ms")]
    pub first_byte_timeout: Duration,
    /// How long a client may leave response bytes unaccepted (its receive
    /// window full) before its connection is closed.
    #[serde(serialize_with = "millis", rename = "send_stall_timeout_ms")]
    pub send_stall_timeout: Duration,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `log:`.
#[derive(Debug, Clone, Serialize)]
pub struct LogConfig {
    /// Format.
    pub format: LogFormat,
    /// `tracing` filter directive.
    pub level: String,
}

/// The default `database.max_connections`: the store's PostgreSQL pool.
pub const DEFAULT_STORE_MAX_CONNECTIONS: u32 = 16;
/// The default `database.audit_max_connections`: the audit log's
/// PostgreSQL pool (one writer plus the readers).
pub const DEFAULT_AUDIT_MAX_CONNECTIONS: u32 = 8;
/// The largest pool size accepted for either pool: PostgreSQL's own
/// `max_connections` limit is far below it on any real server.
pub const MAX_POOL_CONNECTIONS: u32 = 1000;
/// The default `database.audit_checkpoint_interval_ms`.
pub const DEFAULT_AUDIT_CHECKPOINT_INTERVAL_MS: u64 = 1000;
/// The largest `database.audit_checkpoint_interval_ms`: one hour.
pub const MAX_AUDIT_CHECKPOINT_INTERVAL_MS: u64 = 3_600_000;

/// `database:`: where state lives and, for PostgreSQL, how many
/// connections each pool of one process may open (a replica opens at most
/// the sum of both).
#[derive(Debug, Clone, Serialize)]
pub struct DatabaseConfig {
    /// `database.url`.
    pub url: DatabaseUrl,
    /// `database.max_connections`: the store's pool (API keys, vault, usage).
    pub max_connections: u32,
    /// `database.audit_max_connections`: the audit log's pool (its writer
    /// and the receipt, proof and verification readers).
    pub audit_max_connections: u32,
    /// `database.audit_checkpoint_interval_ms`: the longest a tenant's
    /// newest audit envelopes wait for a signed checkpoint (0: one per
    /// commit). Receipts, proofs, exports and the published checkpoint get
    /// one signed at once whenever they need it.
    pub audit_checkpoint_interval_ms: u64,
}

/// Where state lives.
#[derive(Debug, Clone)]
pub enum DatabaseUrl {
    /// A SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL connection string (may hold a password).
    Postgres(Secret),
}

impl Serialize for DatabaseUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let url = match self {
            DatabaseUrl::Sqlite(p) => format!("sqlite://{}", p.display()),
            DatabaseUrl::Postgres(url) => redact_userinfo(url.expose()),
        };
        s.serialize_str(&url)
    }
}

/// `auth:`.
#[derive(Debug, Clone, Serialize)]
pub struct AuthConfig {
    /// Whether requests must authenticate.
    pub enabled: bool,
    /// JWKS endpoint; absent means discovery from the issuer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    /// Exact issuer; absent means OIDC is off (API keys only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Accepted audiences (`aud` or `azp`); empty means not checked.
    pub audiences: Vec<String>,
    /// Accepted JWS algorithms.
    pub algorithms: Vec<String>,
    /// Clock leeway.
    #[serde(serialize_with = "secs", rename = "leeway_secs")]
    pub leeway: Duration,
    /// Largest token.
    pub max_token_bytes: usize,
    /// Shortest interval between unknown-kid refetches.
    #[serde(serialize_with = "secs", rename = "jwks_refresh_min_secs")]
    pub jwks_refresh_min: Duration,
    /// Claim mapping.
    pub claims: ClaimsConfig,
    /// Whether gateway API keys are accepted.
    pub api_keys: bool,
    /// Inbound identity headers removed besides every `X-Aibox-*`.
    pub strip_headers: Vec<String>,
}

/// `auth.claims:`.
#[derive(Debug, Clone, Serialize)]
pub struct ClaimsConfig {
    /// Claims tried in order for the user id.
    pub user: Vec<String>,
    /// The tenant claim.
    pub tenant: String,
    /// The claim holding group paths.
    pub groups: String,
    /// Group prefix whose remainder names the tenant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant_from_group_prefix: Option<String>,
    /// Tenant for tokens that name none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_tenant: Option<TenantId>,
    /// Dotted path to the roles array.
    pub roles: String,
}

/// Signing algorithm of the principal header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum PrincipalAlgorithm {
    /// HMAC-SHA256 with the shared keyring (seed 000 default).
    #[serde(rename = "HS256")]
    Hs256,
    /// Ed25519, so downstream services hold only public keys.
    #[serde(rename = "EdDSA")]
    EdDsa,
}

/// `principal:`.
#[derive(Debug, Clone, Serialize)]
pub struct PrincipalConfig {
    /// Algorithm.
    pub algorithm: PrincipalAlgorithm,
    /// Lifetime.
    #[serde(serialize_with = "secs", rename = "ttl_secs")]
    pub ttl: Duration,
}

/// `captoken:`.
#[derive(Debug, Clone, Serialize)]
pub struct CaptokenConfig {
    /// Lifetime.
    #[serde(serialize_with = "secs", rename = "ttl_secs")]
    pub ttl: Duration,
}

/// One downstream route.
#[derive(Debug, Clone, Serialize)]
pub struct RouteConfig {
    /// Path prefix, starting and ending with `/`.
    pub prefix: String,
    /// Base URL without trailing slash.
    pub upstream: String,
    /// Audience of the principal sent downstream.
    pub audience: String,
    /// Roles allowed; empty means any authenticated principal.
    pub allowed_roles: Vec<String>,
    /// CapToken operations granted per request.
    pub operations: Vec<String>,
    /// Whether the prefix is removed before forwarding.
    pub strip_prefix: bool,
    /// Client-credentials token sent as `Authorization`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_auth: Option<TokenFor>,
    /// Timeouts.
    pub timeouts: Timeouts,
}

/// Identity headers stripped by default besides every `X-Aibox-*`: the
/// headers reverse proxies and auth proxies use to assert a user.
pub const DEFAULT_STRIP_HEADERS: &[&str] = &[
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-groups",
    "x-forwarded-preferred-username",
    "x-remote-user",
    "x-remote-group",
    "x-auth-request-user",
    "x-auth-request-email",
    "x-auth-request-groups",
    "x-auth-request-preferred-username",
    "x-auth-request-access-token",
    "x-tenant-id",
    "x-user-id",
    "x-user",
    "x-email",
    "remote-user",
];

/// Algorithms `auth.algorithms` may list. Symmetric ones are excluded on
/// purpose: a shared secret with the identity provider would let anyone who
/// holds the JWKS forge tokens (key confusion).
pub const ALLOWED_JWT_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

/// Upstream timeouts.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Timeouts {
    /// Connect.
    #[serde(serialize_with = "millis", rename = "connect_ms")]
    pub connect: Duration,
    /// Until response headers.
    #[serde(serialize_with = "millis", rename = "first_byte_ms")]
    pub first_byte: Duration,
    /// Between body chunks.
    #[serde(serialize_with = "millis", rename = "idle_ms")]
    pub idle: Duration,
    /// Whole exchange.
    #[serde(serialize_with = "millis", rename = "total_ms")]
    pub total: Duration,
}

/// One upstream.
#[derive(Debug, Clone, Serialize)]
pub struct UpstreamConfig {
    /// Unique name.
    pub name: String,
    /// Base URL without trailing slash, e.g. `http://127.0.0.1:11434/v1`.
    pub base_url: String,
    /// The variable the key came from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    /// The key itself; never serialised.
    #[serde(skip)]
    pub api_key: Option<Secret>,
    /// Client-credentials token instead of an API key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_auth: Option<TokenFor>,
    /// Timeouts.
    pub timeouts: Timeouts,
}

/// One target of a model.
#[derive(Debug, Clone, Serialize)]
pub struct TargetConfig {
    /// Index into [`Config::upstreams`].
    #[serde(skip)]
    pub upstream: usize,
    /// The upstream's name, for display.
    #[serde(rename = "upstream")]
    pub upstream_name: String,
    /// The model name sent upstream.
    pub model: String,
}

/// One model.
#[derive(Debug, Clone, Serialize)]
pub struct ModelConfig {
    /// Client-facing name.
    pub name: String,
    /// Other client-facing names.
    pub aliases: Vec<String>,
    /// Ordered fallback list.
    pub targets: Vec<TargetConfig>,
}

/// A rate; `None` means unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Rate {
    /// Requests per minute.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u64>,
    /// Tokens per minute.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u64>,
}

/// `limits:`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LimitsConfig {
    /// Per tenant.
    pub tenant: Rate,
    /// Per user.
    pub user: Rate,
    /// Overrides of `tenant` for named tenants.
    pub tenants: BTreeMap<TenantId, Rate>,
}

impl LimitsConfig {
    /// The tenant rate that applies to `tenant`.
    pub fn tenant_rate(&self, tenant: &TenantId) -> Rate {
        self.tenants.get(tenant).copied().unwrap_or(self.tenant)
    }
}

fn url_text<S: serde::Serializer>(url: &url::Url, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(url.as_str())
}

fn redacted_url<S: serde::Serializer>(url: &Option<Secret>, s: S) -> Result<S::Ok, S::Error> {
    match url {
        Some(u) => s.serialize_str(&redact_userinfo(u.expose())),
        None => s.serialize_none(),
    }
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs())
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Replaces the password of a URL with `[REDACTED]`.
fn redact_userinfo(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("REDACTED"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => aibox_core::secret::REDACTED.to_owned(),
    }
}

/// The default upstream: Ollama's OpenAI-compatible endpoint.
pub const DEFAULT_UPSTREAM_URL: &str = "http://127.0.0.1:11434/v1";

const DEFAULT_MAX_BODY: u64 = 4 * 1024 * 1024;

/// The default of three edge timeouts of `server:` (header read, body idle,
/// a new connection's first byte), in milliseconds.
pub const DEFAULT_EDGE_TIMEOUT_MS: u64 = 30_000;
/// The default of `server.send_stall_timeout_ms`: nginx's `send_timeout`.
pub const DEFAULT_SEND_STALL_TIMEOUT_MS: u64 = 60_000;
/// The range of the edge timeouts, in milliseconds: under 100 ms a healthy
/// client on a slow link would be cut off; over an hour a timeout no longer
/// bounds anything an operator would notice.
const EDGE_TIMEOUT_RANGE_MS: std::ops::RangeInclusive<u64> = 100..=3_600_000;

/// Loads the configuration: `path` if given, else `AIBOX_CONFIG`, else
/// [`crate::DEFAULT_CONFIG_PATH`] if it exists, else built-in defaults; then
/// the environment overrides.
pub fn load(path: Option<&Path>, env: &Env) -> Result<Config, ConfigError> {
    let chosen: Option<PathBuf> = match (path, env.get(env::AIBOX_CONFIG)) {
        (Some(p), _) => Some(p.to_path_buf()),
        (None, Some(p)) if !p.is_empty() => Some(PathBuf::from(p)),
        _ => {
            let p = PathBuf::from(crate::DEFAULT_CONFIG_PATH);
            p.is_file().then_some(p)
        }
    };
    match chosen {
        Some(p) => {
            let text = std::fs::read_to_string(&p).map_err(|source| ConfigError::Read {
                path: p.clone(),
                source,
            })?;
            load_from_str(&text, Some(&p), env)
        }
        None => load_from_str("", None, env),
    }
}

struct Ctx<'a> {
    path: Option<&'a Path>,
    text: &'a str,
}

impl Ctx<'_> {
    fn origin(&self, key: &[Seg<'_>]) -> Origin {
        match self.path {
            Some(p) => Origin::File {
                path: p.to_path_buf(),
                line: locate(self.text, key),
            },
            None => Origin::Default,
        }
    }

    fn invalid(
        &self,
        key: &[Seg<'_>],
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> ConfigError {
        ConfigError::Invalid {
            origin: self.origin(key),
            key: dotted(key),
            message: message.into(),
            fix: fix.into(),
        }
    }
}

/// A pool size under `database:` (`name`), from the environment variable
/// `var` or the file, between 1 and [`MAX_POOL_CONNECTIONS`].
fn pool_size(
    ctx: &Ctx<'_>,
    env: &Env,
    var: &'static str,
    name: &'static str,
    file: Option<u64>,
    default: u32,
) -> Result<u32, ConfigError> {
    let fix = format!(
        "give a number of connections between 1 and {MAX_POOL_CONNECTIONS} (default {default}); keep the sum of both pools times the replicas below PostgreSQL's max_connections"
    );
    let range = 1..=u64::from(MAX_POOL_CONNECTIONS);
    let v = ranged(
        ctx,
        env,
        var,
        ("database", name),
        file,
        u64::from(default),
        range,
        "",
        fix,
    )?;
    Ok(u32::try_from(v).unwrap_or(default))
}

/// A number under `section.name`: the environment variable `var` if set,
/// else the file's value, else `default`; refused outside `range`, the
/// error naming the variable or the file's line as the value's origin.
#[allow(clippy::too_many_arguments)]
fn ranged(
    ctx: &Ctx<'_>,
    env: &Env,
    var: &'static str,
    (section, name): (&'static str, &'static str),
    file: Option<u64>,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
    unit: &str,
    fix: String,
) -> Result<u64, ConfigError> {
    let key = format!("{section}.{name}");
    let v = match env.get(var) {
        Some(v) => v
            .trim()
            .parse::<u64>()
            .map_err(|_| env_invalid(var, &key, format!("'{v}' is not a number"), fix.clone()))?,
        None => file.unwrap_or(default),
    };
    if range.contains(&v) {
        return Ok(v);
    }
    let msg = format!("{v}{unit} is outside {}..={}", range.start(), range.end());
    Err(if env.contains_key(var) {
        env_invalid(var, &key, msg, fix)
    } else {
        ctx.invalid(&[Seg::Key(section), Seg::Key(name)], msg, fix)
    })
}

fn env_invalid(
    var: &'static str,
    key: &str,
    message: impl Into<String>,
    fix: impl Into<String>,
) -> ConfigError {
    ConfigError::Invalid {
        origin: Origin::Env(var),
        key: key.to_owned(),
        message: message.into(),
        fix: fix.into(),
    }
}

fn dotted(key: &[Seg<'_>]) -> String {
    let mut s = String::new();
    for seg in key {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

fn has_content(text: &str) -> bool {
    text.lines().any(|l| {
        let t = l.trim();
        !t.is_empty() && !t.starts_with('#') && t != "---"
    })
}

fn parse_raw(text: &str, path: Option<&Path>) -> Result<RawConfig, ConfigError> {
    if !has_content(text) {
        return Ok(RawConfig::default());
    }
    let de = serde_yaml_ng::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.inner();
        let line = inner.location().map(|l| l.line());
        let raw_msg = inner.to_string();
        // serde_yaml appends " at line L column C"; the origin already says it.
        let message = raw_msg
            .split(" at line ")
            .next()
            .unwrap_or(&raw_msg)
            .to_owned();
        let fix = if let Some(rest) = message.strip_prefix("unknown field") {
            let expected = rest.split_once("expected").map(|(_, e)| e.trim()).unwrap_or("");
            if expected.is_empty() {
                "remove the key; this section takes no keys".to_owned()
            } else {
                format!("remove the key or correct its spelling (expected {expected}); the README lists every key")
            }
        } else if message.starts_with("missing field") {
            "add the missing key; the README lists every key".to_owned()
        } else if message.starts_with("invalid type") {
            "give a value of the expected type".to_owned()
        } else {
            "correct the YAML at that position".to_owned()
        };
        ConfigError::Parse {
            origin: match path {
                Some(p) => Origin::File {
                    path: p.to_path_buf(),
                    line,
                },
                None => Origin::Default,
            },
            key: if key == "." { "(document)".to_owned() } else { key },
            message,
            fix,
        }
    })
}

/// Loads from YAML text; `path` is used in messages.
pub fn load_from_str(text: &str, path: Option<&Path>, env: &Env) -> Result<Config, ConfigError> {
    let raw = parse_raw(text, path)?;
    let ctx = Ctx { path, text };
    validate(raw, &ctx, env)
}

fn parse_addr(
    ctx: &Ctx<'_>,
    env: &Env,
    var: &'static str,
    key: &[Seg<'_>],
    file: Option<String>,
    default: &str,
) -> Result<SocketAddr, ConfigError> {
    let fix = "use IP:PORT, for example 127.0.0.1:8080 or [::1]:8080";
    if let Some(v) = env.get(var) {
        return v.parse().map_err(|_| {
            env_invalid(
                var,
                &dotted(key),
                format!("'{v}' is not an IP:PORT address"),
                fix,
            )
        });
    }
    let v = file.unwrap_or_else(|| default.to_owned());
    v.parse()
        .map_err(|_| ctx.invalid(key, format!("'{v}' is not an IP:PORT address"), fix))
}

fn validate(raw: RawConfig, ctx: &Ctx<'_>, env: &Env) -> Result<Config, ConfigError> {
    use Seg::{Index, Key};

    let rs = raw.server.unwrap_or_default();
    let listen = parse_addr(
        ctx,
        env,
        env::AIBOX_LISTEN,
        &[Key("server"), Key("listen")],
        rs.listen,
        "127.0.0.1:8080",
    )?;
    let ops_listen = parse_addr(
        ctx,
        env,
        env::AIBOX_OPS_LISTEN,
        &[Key("server"), Key("ops_listen")],
        rs.ops_listen,
        "127.0.0.1:9000",
    )?;
    if listen == ops_listen && listen.port() != 0 {
        return Err(ctx.invalid(
            &[Key("server"), Key("ops_listen")],
            format!("the ops listener {ops_listen} is the same address as the main listener"),
            "give the ops listener its own port; it must never share the public listener",
        ));
    }
    let data_dir = match env.get(env::AIBOX_DATA_DIR) {
        Some(v) if v.is_empty() => {
            return Err(env_invalid(
                env::AIBOX_DATA_DIR,
                "server.data_dir",
                "it is empty",
                "set a directory path",
            ));
        }
        Some(v) => PathBuf::from(v),
        None => match rs.data_dir {
            Some(d) if d.is_empty() => {
                return Err(ctx.invalid(
                    &[Key("server"), Key("data_dir")],
                    "it is empty",
                    "set a directory path such as ./data",
                ));
            }
            Some(d) => PathBuf::from(d),
            None => PathBuf::from("./data"),
        },
    };
    let max_body = match env.get(env::AIBOX_MAX_BODY_BYTES) {
        Some(v) => v.parse::<u64>().map_err(|_| {
            env_invalid(
                env::AIBOX_MAX_BODY_BYTES,
                "server.max_body_bytes",
                format!("'{v}' is not a number"),
                "give a byte count such as 4194304",
            )
        })?,
        None => rs.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY),
    };
    if !(1024..=1 << 30).contains(&max_body) {
        let msg = format!("{max_body} is outside 1024..=1073741824");
        let fix = "give a byte count between 1 KiB and 1 GiB (default 4194304)";
        return Err(if env.contains_key(env::AIBOX_MAX_BODY_BYTES) {
            env_invalid(env::AIBOX_MAX_BODY_BYTES, "server.max_body_bytes", msg, fix)
        } else {
            ctx.invalid(&[Key("server"), Key("max_body_bytes")], msg, fix)
        });
    }
    let edge_ms = |var: &'static str, name: &'static str, file: Option<u64>| {
        edge_timeout(ctx, env, var, name, file, DEFAULT_EDGE_TIMEOUT_MS)
    };
    let header_read_timeout = edge_ms(
        env::AIBOX_HEADER_READ_TIMEOUT_MS,
        "header_read_timeout_ms",
        rs.header_read_timeout_ms,
    )?;
    let body_idle_timeout = edge_ms(
        env::AIBOX_BODY_IDLE_TIMEOUT_MS,
        "body_idle_timeout_ms",
        rs.body_idle_timeout_ms,
    )?;
    let first_byte_timeout = edge_ms(
        env::AIBOX_FIRST_BYTE_TIMEOUT_MS,
        "first_byte_timeout_ms",
        rs.first_byte_timeout_ms,
    )?;
    let send_stall_timeout = edge_timeout(
        ctx,
        env,
        env::AIBOX_SEND_STALL_TIMEOUT_MS,
        "send_stall_timeout_ms",
        rs.send_stall_timeout_ms,
        DEFAULT_SEND_STALL_TIMEOUT_MS,
    )?;
    let grace = rs.shutdown_grace_secs.unwrap_or(30);
    if grace > 3600 {
        return Err(ctx.invalid(
            &[Key("server"), Key("shutdown_grace_secs")],
            format!("{grace} is over 3600"),
            "give at most 3600 seconds",
        ));
    }

    let rd = raw.dashboard.unwrap_or_default();
    let dashboard_listen = parse_addr(
        ctx,
        env,
        env::AIBOX_DASHBOARD_LISTEN,
        &[Key("dashboard"), Key("listen")],
        rd.listen,
        "127.0.0.1:9001",
    )?;
    if dashboard_listen.port() != 0
        && (dashboard_listen == listen || dashboard_listen == ops_listen)
    {
        return Err(ctx.invalid(
            &[Key("dashboard"), Key("listen")],
            format!("the dashboard listener {dashboard_listen} is the address of another listener"),
            "give the dashboard its own port (default 127.0.0.1:9001)",
        ));
    }
    let dashboard_enabled = match env.get(env::AIBOX_DASHBOARD_ENABLED).map(String::as_str) {
        None => rd.enabled.unwrap_or(false),
        Some("true" | "1") => true,
        Some("false" | "0") => false,
        Some(v) => {
            return Err(env_invalid(
                env::AIBOX_DASHBOARD_ENABLED,
                "dashboard.enabled",
                format!("'{v}' is not a boolean"),
                "use true or false",
            ));
        }
    };
    let session_ttl = rd.session_ttl_secs.unwrap_or(3600);
    if !(60..=86_400).contains(&session_ttl) {
        return Err(ctx.invalid(
            &[Key("dashboard"), Key("session_ttl_secs")],
            format!("{session_ttl} is outside 60..=86400"),
            "give a login lifetime between one minute and one day (default 3600)",
        ));
    }
    let rd_oidc = rd.oidc;
    let mut dashboard = DashboardConfig {
        oidc: None,
        enabled: dashboard_enabled,
        listen: dashboard_listen,
        session_ttl: Duration::from_secs(session_ttl),
        secure_cookie: rd
            .secure_cookie
            .unwrap_or(!dashboard_listen.ip().is_loopback()),
    };

    let telemetry = telemetry(raw.telemetry.unwrap_or_default(), ctx, env)?;

    let rl = raw.log.unwrap_or_default();
    let format_text = env
        .get(env::AIBOX_LOG_FORMAT)
        .cloned()
        .or(rl.format)
        .unwrap_or_else(|| "text".into());
    let format = match format_text.as_str() {
        "text" => LogFormat::Text,
        "json" => LogFormat::Json,
        other => {
            let msg = format!("'{other}' is not a log format");
            return Err(if env.contains_key(env::AIBOX_LOG_FORMAT) {
                env_invalid(env::AIBOX_LOG_FORMAT, "log.format", msg, "use text or json")
            } else {
                ctx.invalid(&[Key("log"), Key("format")], msg, "use text or json")
            });
        }
    };
    let level = env
        .get(env::AIBOX_LOG_LEVEL)
        .cloned()
        .or(rl.level)
        .unwrap_or_else(|| "info".into());

    let rdb = raw.database.unwrap_or_default();
    let max_connections = pool_size(
        ctx,
        env,
        env::AIBOX_DATABASE_MAX_CONNECTIONS,
        "max_connections",
        rdb.max_connections,
        DEFAULT_STORE_MAX_CONNECTIONS,
    )?;
    let audit_max_connections = pool_size(
        ctx,
        env,
        env::AIBOX_DATABASE_AUDIT_MAX_CONNECTIONS,
        "audit_max_connections",
        rdb.audit_max_connections,
        DEFAULT_AUDIT_MAX_CONNECTIONS,
    )?;
    let audit_checkpoint_interval_ms = ranged(
        ctx,
        env,
        env::AIBOX_DATABASE_AUDIT_CHECKPOINT_INTERVAL_MS,
        ("database", "audit_checkpoint_interval_ms"),
        rdb.audit_checkpoint_interval_ms,
        DEFAULT_AUDIT_CHECKPOINT_INTERVAL_MS,
        0..=MAX_AUDIT_CHECKPOINT_INTERVAL_MS,
        " ms",
        format!(
            "give milliseconds between 0 (a checkpoint in every commit) and {MAX_AUDIT_CHECKPOINT_INTERVAL_MS} (default {DEFAULT_AUDIT_CHECKPOINT_INTERVAL_MS})"
        ),
    )?;
    let url = match env.get(env::AIBOX_DATABASE_URL).cloned().or(rdb.url) {
        None => DatabaseUrl::Sqlite(data_dir.join("aibox.db")),
        Some(u) => parse_database_url(&u).ok_or_else(|| {
            let msg = "it is neither sqlite://PATH nor postgres://...".to_owned();
            let fix = "use sqlite://./data/aibox.db or postgres://USER@HOST:5432/DB";
            if env.contains_key(env::AIBOX_DATABASE_URL) {
                env_invalid(env::AIBOX_DATABASE_URL, "database.url", msg, fix)
            } else {
                ctx.invalid(&[Key("database"), Key("url")], msg, fix)
            }
        })?,
    };

    let redis_url = match env.get(env::AIBOX_REDIS_URL).cloned().or(raw.redis_url) {
        None => None,
        Some(u) if u.is_empty() => None,
        Some(u) => Some(
            parse_redis_url(&u, env.get(env::REDIS_PASSWORD)).map_err(|msg| {
                let fix =
                    "use redis://HOST:6379/0 or rediss://... ; put the password in REDIS_PASSWORD";
                if env.contains_key(env::AIBOX_REDIS_URL) {
                    env_invalid(env::AIBOX_REDIS_URL, "redis_url", msg, fix)
                } else {
                    ctx.invalid(&[Key("redis_url")], msg, fix)
                }
            })?,
        ),
    };

    let ra = raw.auth.unwrap_or_default();
    let enabled = match env.get(env::AIBOX_AUTH_ENABLED) {
        Some(v) => parse_bool(v).ok_or_else(|| {
            env_invalid(
                env::AIBOX_AUTH_ENABLED,
                "auth.enabled",
                format!("'{v}' is not a boolean"),
                "use true or false",
            )
        })?,
        None => ra.enabled.unwrap_or(false),
    };
    let jwks_url = env.get(env::AIBOX_AUTH_JWKS_URL).cloned().or(ra.jwks_url);
    let issuer = env.get(env::AIBOX_AUTH_ISSUER).cloned().or(ra.issuer);
    for (name, value) in [("jwks_url", &jwks_url), ("issuer", &issuer)] {
        if let Some(v) = value.as_ref().filter(|v| !is_http_url(v)) {
            return Err(ctx.invalid(
                &[Key("auth"), Key(name)],
                format!("'{v}' is not an http(s) URL"),
                "give the full URL including scheme, host and port",
            ));
        }
    }
    let api_keys = ra.api_keys.unwrap_or(true);
    if enabled && issuer.is_none() && !api_keys {
        return Err(ctx.invalid(
            &[Key("auth"), Key("api_keys")],
            "auth.enabled is true but neither OIDC (auth.issuer) nor API keys (auth.api_keys) are on, so nobody could authenticate",
            "set auth.issuer and auth.jwks_url (see seed 000 §2), or auth.api_keys: true",
        ));
    }
    let algorithms = ra.algorithms.unwrap_or_else(|| {
        ["RS256", "PS256", "ES256", "EdDSA"]
            .map(String::from)
            .to_vec()
    });
    if algorithms.is_empty() {
        return Err(ctx.invalid(
            &[Key("auth"), Key("algorithms")],
            "the list is empty",
            "list at least one of RS256, PS256, ES256, EdDSA",
        ));
    }
    for a in &algorithms {
        if !ALLOWED_JWT_ALGORITHMS.contains(&a.as_str()) {
            return Err(ctx.invalid(
                &[Key("auth"), Key("algorithms")],
                format!("'{a}' is not an allowed algorithm (symmetric algorithms and `none` are refused)"),
                format!("use only: {}", ALLOWED_JWT_ALGORITHMS.join(", ")),
            ));
        }
    }
    let leeway = ra.leeway_secs.unwrap_or(30);
    if leeway > 300 {
        return Err(ctx.invalid(
            &[Key("auth"), Key("leeway_secs")],
            format!("{leeway} s is over 300 s"),
            "keep the leeway small (default 30)",
        ));
    }
    let max_token = ra.max_token_bytes.unwrap_or(8192);
    if !(512..=65536).contains(&max_token) {
        return Err(ctx.invalid(
            &[Key("auth"), Key("max_token_bytes")],
            format!("{max_token} is outside 512..=65536"),
            "use the default 8192 unless your provider issues larger tokens",
        ));
    }
    let refresh = ra.jwks_refresh_min_secs.unwrap_or(30);
    if refresh == 0 {
        return Err(ctx.invalid(
            &[Key("auth"), Key("jwks_refresh_min_secs")],
            "0 would let random key ids make aibox hammer the identity provider",
            "use at least 1 (default 30)",
        ));
    }
    let rc = ra.claims.unwrap_or_default();
    let default_tenant = match rc.default_tenant {
        None => None,
        Some(t) => Some(TenantId::new(t).map_err(|e| {
            ctx.invalid(
                &[Key("auth"), Key("claims"), Key("default_tenant")],
                e.to_string(),
                "use a valid tenant id",
            )
        })?),
    };
    let claims = ClaimsConfig {
        user: rc
            .user
            .unwrap_or_else(|| vec!["preferred_username".into(), "sub".into()]),
        tenant: rc.tenant.unwrap_or_else(|| "tenant".into()),
        groups: rc.groups.unwrap_or_else(|| "groups".into()),
        tenant_from_group_prefix: rc.tenant_from_group_prefix,
        default_tenant,
        roles: rc.roles.unwrap_or_else(|| "realm_access.roles".into()),
    };
    let mut strip_headers: Vec<String> = DEFAULT_STRIP_HEADERS
        .iter()
        .map(|h| (*h).to_owned())
        .collect();
    for h in ra.strip_headers.unwrap_or_default() {
        let lower = h.to_ascii_lowercase();
        if lower.is_empty()
            || !lower
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(ctx.invalid(
                &[Key("auth"), Key("strip_headers")],
                format!("'{h}' is not a header name"),
                "list header names such as X-Forwarded-User",
            ));
        }
        if !strip_headers.contains(&lower) {
            strip_headers.push(lower);
        }
    }
    let auth = AuthConfig {
        enabled,
        jwks_url,
        issuer,
        audiences: ra.audiences.unwrap_or_default(),
        algorithms,
        leeway: Duration::from_secs(leeway),
        max_token_bytes: usize::try_from(max_token).unwrap_or(8192),
        jwks_refresh_min: Duration::from_secs(refresh),
        claims,
        api_keys,
        strip_headers,
    };

    let service_auth = match raw.service_auth {
        None => None,
        Some(sa) => {
            let key = |k| [Key("service_auth"), Key(k)];
            if let Some(u) = sa.token_url.as_ref().filter(|u| !is_http_url(u)) {
                return Err(ctx.invalid(
                    &key("token_url"),
                    format!("'{u}' is not an http(s) URL"),
                    "give the provider's token endpoint",
                ));
            }
            if sa.token_url.is_none() && auth.issuer.is_none() {
                return Err(ctx.invalid(
                    &key("token_url"),
                    "no token_url and no auth.issuer to discover it from",
                    "set service_auth.token_url or auth.issuer",
                ));
            }
            if sa.client_id.is_empty() {
                return Err(ctx.invalid(
                    &key("client_id"),
                    "it is empty",
                    "give aibox's client id at the identity provider",
                ));
            }
            let secret = match env.get(&sa.client_secret_env) {
                Some(v) if !v.is_empty() => Secret::new(v.clone()),
                _ => {
                    return Err(ctx.invalid(
                        &key("client_secret_env"),
                        format!(
                            "environment variable {} is not set or empty",
                            sa.client_secret_env
                        ),
                        format!(
                            "export {} (or put it in .env); there is no shared-bearer fallback",
                            sa.client_secret_env
                        ),
                    ));
                }
            };
            Some(ServiceAuthConfig {
                token_url: sa.token_url,
                client_id: sa.client_id,
                client_secret_env: sa.client_secret_env,
                client_secret: secret,
            })
        }
    };
    let token_for = |t: Option<crate::raw::RawTokenFor>,
                     key: &[Seg<'_>]|
     -> Result<Option<TokenFor>, ConfigError> {
        match t {
            None => Ok(None),
            Some(_) if service_auth.is_none() => Err(ctx.invalid(
                key,
                "service_auth is used here but the top-level service_auth client is not configured",
                "add service_auth: {token_url, client_id, client_secret_env}",
            )),
            Some(t) => Ok(Some(TokenFor {
                resource: t.resource,
                scope: t.scope,
            })),
        }
    };

    let mut upstreams = Vec::new();
    let raw_upstreams = raw.upstreams.unwrap_or_default();
    if raw_upstreams.is_empty() {
        upstreams.push(UpstreamConfig {
            name: "ollama".into(),
            base_url: DEFAULT_UPSTREAM_URL.into(),
            api_key_env: None,
            api_key: None,
            service_auth: None,
            timeouts: timeouts(RawTimeouts::default(), ctx, &[])?,
        });
    }
    for (i, u) in raw_upstreams.into_iter().enumerate() {
        let key = |k| [Key("upstreams"), Index(i), Key(k)];
        if !valid_name(&u.name) {
            return Err(ctx.invalid(
                &key("name"),
                format!("'{}' is not a valid name", u.name),
                "use 1-64 characters of [A-Za-z0-9._-]",
            ));
        }
        if upstreams.iter().any(|p: &UpstreamConfig| p.name == u.name) {
            return Err(ctx.invalid(
                &key("name"),
                format!("upstream '{}' is defined twice", u.name),
                "give each upstream a unique name",
            ));
        }
        let base_url = normalize_base_url(&u.base_url).map_err(|msg| {
            ctx.invalid(&key("base_url"), msg, "give an http(s) URL such as http://127.0.0.1:11434/v1, without credentials, query or fragment")
        })?;
        let api_key = match &u.api_key_env {
            None => None,
            Some(var) => match env.get(var) {
                Some(v) if !v.is_empty() => Some(Secret::new(v.clone())),
                _ => {
                    return Err(ctx.invalid(
                        &key("api_key_env"),
                        format!("environment variable {var} is not set or empty"),
                        format!("export {var} (or put it in .env), or remove api_key_env"),
                    ));
                }
            },
        };
        if u.api_key_env.is_some() && u.service_auth.is_some() {
            return Err(ctx.invalid(
                &key("service_auth"),
                "api_key_env and service_auth are both set",
                "use one way to authenticate to the upstream",
            ));
        }
        let up_token = token_for(u.service_auth, &key("service_auth"))?;
        let t = timeouts(
            u.timeouts.unwrap_or_default(),
            ctx,
            &[Key("upstreams"), Index(i), Key("timeouts")],
        )?;
        upstreams.push(UpstreamConfig {
            name: u.name,
            base_url,
            api_key_env: u.api_key_env,
            api_key,
            service_auth: up_token,
            timeouts: t,
        });
    }

    let mut models: Vec<ModelConfig> = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    for (i, m) in raw.models.unwrap_or_default().into_iter().enumerate() {
        let aliases = m.aliases.unwrap_or_default();
        for (j, n) in std::iter::once(&m.name).chain(aliases.iter()).enumerate() {
            let k: Vec<Seg<'_>> = if j == 0 {
                vec![Key("models"), Index(i), Key("name")]
            } else {
                vec![Key("models"), Index(i), Key("aliases")]
            };
            if n.is_empty() || n.len() > 256 || n.chars().any(char::is_control) {
                return Err(ctx.invalid(
                    &k,
                    format!("'{n}' is not a valid model name"),
                    "use 1-256 printable characters",
                ));
            }
            if !seen.insert(n.clone()) {
                return Err(ctx.invalid(
                    &k,
                    format!("model name '{n}' is used twice"),
                    "each name and alias must be unique across models",
                ));
            }
        }
        if m.targets.is_empty() {
            return Err(ctx.invalid(
                &[Key("models"), Index(i), Key("targets")],
                "a model needs at least one target",
                "add a target: { upstream: NAME, model: UPSTREAM_MODEL }",
            ));
        }
        let mut targets = Vec::new();
        for (j, t) in m.targets.into_iter().enumerate() {
            let idx = upstreams
                .iter()
                .position(|u| u.name == t.upstream)
                .ok_or_else(|| {
                    let known: Vec<&str> = upstreams.iter().map(|u| u.name.as_str()).collect();
                    ctx.invalid(
                        &[
                            Key("models"),
                            Index(i),
                            Key("targets"),
                            Index(j),
                            Key("upstream"),
                        ],
                        format!("upstream '{}' is not defined", t.upstream),
                        format!("use one of: {}", known.join(", ")),
                    )
                })?;
            targets.push(TargetConfig {
                upstream: idx,
                upstream_name: t.upstream,
                model: t.model.unwrap_or_else(|| m.name.clone()),
            });
        }
        models.push(ModelConfig {
            name: m.name,
            aliases,
            targets,
        });
    }

    let rl = raw.limits.unwrap_or_default();
    let tenant = rate(rl.tenant, ctx, &[Key("limits"), Key("tenant")])?;
    let user = rate(rl.user, ctx, &[Key("limits"), Key("user")])?;
    let mut tenants = BTreeMap::new();
    for (name, r) in rl.tenants.unwrap_or_default() {
        let key = [Key("limits"), Key("tenants"), Key(name.as_str())];
        let id = TenantId::new(name.clone())
            .map_err(|e| ctx.invalid(&key, e.to_string(), "use a valid tenant id"))?;
        let r = rate(Some(r), ctx, &key)?;
        tenants.insert(id, r);
    }

    let rp = raw.principal.unwrap_or_default();
    let algorithm = match rp.algorithm.as_deref() {
        None | Some("HS256") => PrincipalAlgorithm::Hs256,
        Some("EdDSA") => PrincipalAlgorithm::EdDsa,
        Some(other) => {
            return Err(ctx.invalid(
                &[Key("principal"), Key("algorithm")],
                format!("'{other}' is not supported"),
                "use HS256 (shared keyring) or EdDSA (services hold public keys)",
            ));
        }
    };
    let principal_ttl = rp.ttl_secs.unwrap_or(60);
    if !(1..=3600).contains(&principal_ttl) {
        return Err(ctx.invalid(
            &[Key("principal"), Key("ttl_secs")],
            format!("{principal_ttl} is outside 1..=3600"),
            "keep signed principals short-lived (default 60)",
        ));
    }
    let cap_ttl = raw.captoken.and_then(|c| c.ttl_secs).unwrap_or(300);
    if !(1..=86_400).contains(&cap_ttl) {
        return Err(ctx.invalid(
            &[Key("captoken"), Key("ttl_secs")],
            format!("{cap_ttl} is outside 1..=86400"),
            "a CapToken lives for one turn (default 300)",
        ));
    }
    let mut routes: Vec<RouteConfig> = Vec::new();
    for (i, r) in raw.routes.unwrap_or_default().into_iter().enumerate() {
        let key = |k| [Key("routes"), Index(i), Key(k)];
        if !r.prefix.starts_with('/')
            || !r.prefix.ends_with('/')
            || r.prefix.len() < 3
            || r.prefix.contains("..")
            || r.prefix.contains("//")
        {
            return Err(ctx.invalid(
                &key("prefix"),
                format!("'{}' is not a path prefix", r.prefix),
                "use a prefix such as /webui/ that starts and ends with /",
            ));
        }
        if r.prefix.starts_with("/v1/") || r.prefix.starts_with("/mcp/") {
            return Err(ctx.invalid(
                &key("prefix"),
                format!("'{}' overlaps the gateway's own API", r.prefix),
                "pick a prefix outside /v1/ and /mcp/",
            ));
        }
        if routes
            .iter()
            .any(|p| p.prefix.starts_with(&r.prefix) || r.prefix.starts_with(&p.prefix))
        {
            return Err(ctx.invalid(
                &key("prefix"),
                format!("'{}' overlaps another route's prefix", r.prefix),
                "give each route a distinct, non-nested prefix",
            ));
        }
        let upstream = normalize_base_url(&r.upstream).map_err(|msg| {
            ctx.invalid(
                &key("upstream"),
                msg,
                "give an http(s) URL such as http://127.0.0.1:3000",
            )
        })?;
        if !valid_name(&r.audience) {
            return Err(ctx.invalid(
                &key("audience"),
                format!("'{}' is not a valid audience", r.audience),
                "use the downstream service's name, [A-Za-z0-9._-]{1,64}",
            ));
        }
        let operations = r.operations.unwrap_or_default();
        for op in &operations {
            let ok = op.split_once(':').is_some_and(|(kind, name)| {
                !kind.is_empty()
                    && kind.bytes().all(|b| b.is_ascii_lowercase())
                    && !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-/*".contains(&b))
            });
            if !ok {
                return Err(ctx.invalid(
                    &key("operations"),
                    format!("'{op}' is not an operation"),
                    "use KIND:NAME such as tool:files/read or memory:read",
                ));
            }
        }
        let t = timeouts(
            r.timeouts.unwrap_or_default(),
            ctx,
            &[Key("routes"), Index(i), Key("timeouts")],
        )?;
        routes.push(RouteConfig {
            prefix: r.prefix,
            upstream,
            audience: r.audience,
            allowed_roles: r.allowed_roles.unwrap_or_default(),
            operations,
            strip_prefix: r.strip_prefix.unwrap_or(true),
            service_auth: token_for(r.service_auth, &key("service_auth"))?,
            timeouts: t,
        });
    }

    dashboard.oidc = dashboard_oidc(rd_oidc, &auth, ctx, env)?;
    Ok(Config {
        source: ctx.path.map(Path::to_path_buf),
        server: ServerConfig {
            listen,
            ops_listen,
            data_dir,
            max_body_bytes: usize::try_from(max_body).unwrap_or(usize::MAX),
            shutdown_grace: Duration::from_secs(grace),
            header_read_timeout,
            body_idle_timeout,
            first_byte_timeout,
            send_stall_timeout,
        },
        log: LogConfig { format, level },
        database: DatabaseConfig {
            url,
            max_connections,
            audit_max_connections,
            audit_checkpoint_interval_ms,
        },
        redis_url,
        auth,
        upstreams,
        models,
        limits: LimitsConfig {
            tenant,
            user,
            tenants,
        },
        principal: PrincipalConfig {
            algorithm,
            ttl: Duration::from_secs(principal_ttl),
        },
        captoken: CaptokenConfig {
            ttl: Duration::from_secs(cap_ttl),
        },
        routes,
        service_auth,
        egress: egress(raw.egress.unwrap_or_default(), ctx, env)?,
        dashboard,
        telemetry,
    })
}

/// `dashboard.oidc`: needs OIDC on (`auth.enabled` and `auth.issuer`), a
/// secret in the named variable, and a callback URL that is `https` unless
/// it is on loopback (the authorization code travels in it).
fn dashboard_oidc(
    raw: Option<crate::raw::RawDashboardOidc>,
    auth: &AuthConfig,
    ctx: &Ctx<'_>,
    env: &Env,
) -> Result<Option<DashboardOidcConfig>, ConfigError> {
    use Seg::Key;
    let Some(o) = raw else {
        return Ok(None);
    };
    let key = |k| [Key("dashboard"), Key("oidc"), Key(k)];
    if !auth.enabled || auth.issuer.is_none() {
        return Err(ctx.invalid(
            &[Key("dashboard"), Key("oidc")],
            "SSO needs an identity provider, and auth.enabled is false or auth.issuer is unset",
            "set auth.enabled: true and auth.issuer, or remove dashboard.oidc",
        ));
    }
    if o.client_id.is_empty() {
        return Err(ctx.invalid(
            &key("client_id"),
            "it is empty",
            "give the dashboard's client id at the identity provider",
        ));
    }
    let client_secret = match env.get(&o.client_secret_env) {
        Some(v) if !v.is_empty() => Secret::new(v.clone()),
        _ => {
            return Err(ctx.invalid(
                &key("client_secret_env"),
                format!(
                    "environment variable {} is not set or empty",
                    o.client_secret_env
                ),
                format!(
                    "export {} (or put it in .env) with the client secret of {}",
                    o.client_secret_env, o.client_id
                ),
            ));
        }
    };
    let redirect_url = match url::Url::parse(&o.redirect_url) {
        Ok(u) if u.scheme() == "https" && u.host().is_some() => u,
        Ok(u)
            if u.scheme() == "http"
                && match u.host() {
                    Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                    Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                    Some(url::Host::Domain(d)) => d == "localhost",
                    None => false,
                } =>
        {
            u
        }
        _ => {
            return Err(ctx.invalid(
                &key("redirect_url"),
                format!("'{}' is not an https URL (or http on loopback)", o.redirect_url),
                "give the dashboard's public callback, e.g. https://dashboard.example.com/oidc/callback, as registered at the provider",
            ));
        }
    };
    if redirect_url.path() != "/oidc/callback" || redirect_url.query().is_some() {
        return Err(ctx.invalid(
            &key("redirect_url"),
            format!("the path of '{}' is not /oidc/callback", o.redirect_url),
            "end the URL with /oidc/callback (the dashboard's callback route), without a query",
        ));
    }
    Ok(Some(DashboardOidcConfig {
        client_id: o.client_id,
        client_secret_env: o.client_secret_env,
        client_secret,
        redirect_url,
    }))
}

fn env_bool(env: &Env, var: &'static str, key: &str) -> Result<Option<bool>, ConfigError> {
    match env.get(var).map(String::as_str) {
        None => Ok(None),
        Some("true" | "1") => Ok(Some(true)),
        Some("false" | "0") => Ok(Some(false)),
        Some(v) => Err(env_invalid(
            var,
            key,
            format!("'{v}' is not a boolean"),
            "use true or false",
        )),
    }
}

fn telemetry(
    rt: crate::raw::RawTelemetry,
    ctx: &Ctx<'_>,
    env: &Env,
) -> Result<TelemetryConfig, ConfigError> {
    use Seg::Key;
    let traces = env_bool(env, env::AIBOX_TRACES, "telemetry.traces")?
        .or(rt.traces)
        .unwrap_or(false);
    let capture_content = env_bool(
        env,
        env::AIBOX_TRACES_CAPTURE_CONTENT,
        "telemetry.capture_content",
    )?
    .or(rt.capture_content)
    .unwrap_or(false);
    let fix = "give the collector's OTLP/HTTP traces URL, e.g. http://127.0.0.1:4318/v1/traces";
    let otlp_endpoint = match env.get(env::AIBOX_OTLP_ENDPOINT) {
        Some(v) => url::Url::parse(v).map_err(|e| {
            env_invalid(
                env::AIBOX_OTLP_ENDPOINT,
                "telemetry.otlp_endpoint",
                format!("'{v}' is not a URL: {e}"),
                fix,
            )
        })?,
        None => {
            let v = rt
                .otlp_endpoint
                .unwrap_or_else(|| "http://127.0.0.1:4318/v1/traces".to_owned());
            url::Url::parse(&v).map_err(|e| {
                ctx.invalid(
                    &[Key("telemetry"), Key("otlp_endpoint")],
                    format!("'{v}' is not a URL: {e}"),
                    fix,
                )
            })?
        }
    };
    if !matches!(otlp_endpoint.scheme(), "http" | "https")
        || !otlp_endpoint.username().is_empty()
        || otlp_endpoint.password().is_some()
    {
        return Err(ctx.invalid(
            &[Key("telemetry"), Key("otlp_endpoint")],
            "it must be an http or https URL without credentials",
            "put the collector's credential in a variable named by telemetry.otlp_authorization_env",
        ));
    }
    let otlp_authorization = match &rt.otlp_authorization_env {
        None => None,
        Some(name) => match env.get(name) {
            Some(v) if !v.is_empty() => Some(Secret::new(v.clone())),
            _ => {
                return Err(ctx.invalid(
                    &[Key("telemetry"), Key("otlp_authorization_env")],
                    format!("the variable {name} is not set"),
                    format!("set {name} in the environment or .env (its value is sent as Authorization to the collector), or remove the key"),
                ));
            }
        },
    };
    let sample_ratio = rt.sample_ratio.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&sample_ratio) {
        return Err(ctx.invalid(
            &[Key("telemetry"), Key("sample_ratio")],
            format!("{sample_ratio} is outside 0.0..=1.0"),
            "give the share of traces to keep, e.g. 0.1",
        ));
    }
    let service_name = rt.service_name.unwrap_or_else(|| "aibox".to_owned());
    if service_name.is_empty() || service_name.len() > 128 {
        return Err(ctx.invalid(
            &[Key("telemetry"), Key("service_name")],
            "it must be 1 to 128 characters",
            "use a short name such as aibox",
        ));
    }
    Ok(TelemetryConfig {
        traces,
        otlp_endpoint,
        otlp_authorization_env: rt.otlp_authorization_env,
        otlp_authorization,
        service_name,
        sample_ratio,
        capture_content,
    })
}

/// Splits a comma-separated environment list.
fn env_list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `egress:`: the file's values, the lists replaced by
/// `AIBOX_EGRESS_ALLOW_HOSTS` / `AIBOX_EGRESS_ALLOWED_PORTS` when set, checked
/// by `aibox_egress`'s policy builder. Its errors name the key with the list
/// index (`egress.allow_hosts[2]`), which is mapped back to the file's line,
/// or to the variable when the list came from the environment.
fn egress(re: RawEgress, ctx: &Ctx<'_>, env: &Env) -> Result<EgressConfig, ConfigError> {
    use Seg::{Index, Key};

    let hosts_env = env.get(env::AIBOX_EGRESS_ALLOW_HOSTS);
    let ports_env = env.get(env::AIBOX_EGRESS_ALLOWED_PORTS);
    let allow_hosts = match hosts_env {
        Some(v) => env_list(v),
        None => re.allow_hosts.unwrap_or_default(),
    };
    let ports: Vec<i64> = match ports_env {
        Some(v) => {
            let mut out = Vec::new();
            for p in env_list(v) {
                out.push(p.parse::<i64>().map_err(|_| {
                    env_invalid(
                        env::AIBOX_EGRESS_ALLOWED_PORTS,
                        "egress.allowed_ports",
                        format!("'{p}' is not a port number"),
                        "a comma-separated list of ports such as 8443,9000",
                    )
                })?);
            }
            out
        }
        None => re.allowed_ports.unwrap_or_default(),
    };
    let mut b = aibox_egress::EgressPolicy::builder()
        .allow_hosts(allow_hosts.iter().cloned())
        .allowed_ports(ports)
        .https_only(re.https_only.unwrap_or(false));
    if let Some(n) = re.max_redirects {
        b = b.max_redirects(n);
    }
    if let Some(n) = re.max_response_bytes {
        b = b.max_response_bytes(n);
    }
    if let Some(ms) = re.timeout_ms {
        b = b.timeout(Duration::from_millis(ms));
    }
    if let Some(ms) = re.connect_timeout_ms {
        b = b.connect_timeout(Duration::from_millis(ms));
    }
    let policy = b.build().map_err(|e| {
        // `egress.allow_hosts[2]` → the key path and the index.
        let field = e.key.strip_prefix("egress.").unwrap_or(&e.key);
        let (name, index) = match field.split_once('[') {
            Some((n, rest)) => (n, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (field, None),
        };
        let message = format!("'{}' is refused: {}", e.value, e.reason);
        let fix = "correct or remove the entry (see the README's egress keys)";
        let from_env = match name {
            "allow_hosts" => hosts_env.map(|_| env::AIBOX_EGRESS_ALLOW_HOSTS),
            "allowed_ports" => ports_env.map(|_| env::AIBOX_EGRESS_ALLOWED_PORTS),
            _ => None,
        };
        match (from_env, index) {
            (Some(var), _) => env_invalid(var, &e.key, message, fix),
            (None, Some(i)) => ctx.invalid(&[Key("egress"), Key(name), Index(i)], message, fix),
            (None, None) => ctx.invalid(&[Key("egress"), Key(name)], message, fix),
        }
    })?;
    Ok(EgressConfig {
        allow_hosts,
        allowed_ports: policy.allowed_ports().iter().copied().collect(),
        https_only: policy.https_only(),
        max_redirects: policy.max_redirects(),
        max_response_bytes: policy.max_response_bytes(),
        timeout: policy.timeout(),
        connect_timeout: policy.connect_timeout(),
        policy,
    })
}

fn rate(r: Option<RawRate>, ctx: &Ctx<'_>, key: &[Seg<'_>]) -> Result<Rate, ConfigError> {
    let r = r.unwrap_or_default();
    for (name, v) in [
        ("requests_per_minute", r.requests_per_minute),
        ("tokens_per_minute", r.tokens_per_minute),
    ] {
        if v == Some(0) {
            let mut k = key.to_vec();
            k.push(Seg::Key(name));
            return Err(ctx.invalid(
                &k,
                "0 would refuse every request",
                "give a positive number, or remove the key for no limit",
            ));
        }
    }
    Ok(Rate {
        requests_per_minute: r.requests_per_minute,
        tokens_per_minute: r.tokens_per_minute,
    })
}

/// One of the edge timeouts of `server:` in milliseconds: the environment
/// variable `var` if set, else the file's value, else `default`; within
/// [`EDGE_TIMEOUT_RANGE_MS`].
fn edge_timeout(
    ctx: &Ctx<'_>,
    env: &Env,
    var: &'static str,
    name: &'static str,
    file: Option<u64>,
    default: u64,
) -> Result<Duration, ConfigError> {
    let fix = format!(
        "give milliseconds between {} and {} (default {default})",
        EDGE_TIMEOUT_RANGE_MS.start(),
        EDGE_TIMEOUT_RANGE_MS.end()
    );
    let range = EDGE_TIMEOUT_RANGE_MS;
    ranged(
        ctx,
        env,
        var,
        ("server", name),
        file,
        default,
        range,
        " ms",
        fix,
    )
    .map(Duration::from_millis)
}

fn timeouts(t: RawTimeouts, ctx: &Ctx<'_>, key: &[Seg<'_>]) -> Result<Timeouts, ConfigError> {
    let get = |name: &'static str, v: Option<u64>, default: u64| -> Result<Duration, ConfigError> {
        let v = v.unwrap_or(default);
        if v == 0 || v > 86_400_000 {
            let mut k = key.to_vec();
            k.push(Seg::Key(name));
            return Err(ctx.invalid(
                &k,
                format!("{v} ms is outside 1..=86400000"),
                "give milliseconds between 1 and 86400000",
            ));
        }
        Ok(Duration::from_millis(v))
    };
    let out = Timeouts {
        connect: get("connect_ms", t.connect_ms, 5_000)?,
        first_byte: get("first_byte_ms", t.first_byte_ms, 120_000)?,
        idle: get("idle_ms", t.idle_ms, 60_000)?,
        total: get("total_ms", t.total_ms, 600_000)?,
    };
    if out.connect > out.total || out.first_byte > out.total {
        let mut k = key.to_vec();
        k.push(Seg::Key("total_ms"));
        return Err(ctx.invalid(
            &k,
            "total_ms is shorter than connect_ms or first_byte_ms",
            "make total_ms the largest timeout",
        ));
    }
    Ok(out)
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

fn is_http_url(v: &str) -> bool {
    url::Url::parse(v).is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
}

fn normalize_base_url(v: &str) -> Result<String, String> {
    let u = url::Url::parse(v).map_err(|e| format!("'{v}' is not a URL ({e})"))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(format!("scheme '{}' is not http or https", u.scheme()));
    }
    if u.host().is_none() {
        return Err("the URL has no host".into());
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err("the URL carries credentials".into());
    }
    if u.query().is_some() || u.fragment().is_some() {
        return Err("the URL has a query or fragment".into());
    }
    Ok(u.as_str().trim_end_matches('/').to_owned())
}

fn parse_database_url(v: &str) -> Option<DatabaseUrl> {
    if let Some(p) = v
        .strip_prefix("sqlite://")
        .or_else(|| v.strip_prefix("sqlite:"))
    {
        return (!p.is_empty()).then(|| DatabaseUrl::Sqlite(PathBuf::from(p)));
    }
    if (v.starts_with("postgres://") || v.starts_with("postgresql://"))
        && url::Url::parse(v).is_ok()
    {
        return Some(DatabaseUrl::Postgres(Secret::new(v)));
    }
    None
}

fn parse_redis_url(v: &str, password: Option<&String>) -> Result<Secret, String> {
    let mut u = url::Url::parse(v).map_err(|_| "it is not a URL".to_owned())?;
    if !matches!(u.scheme(), "redis" | "rediss") {
        return Err(format!("scheme '{}' is not redis or rediss", u.scheme()));
    }
    if u.host().is_none() {
        return Err("the URL has no host".into());
    }
    if let Some(p) = password.filter(|p| !p.is_empty() && u.password().is_none()) {
        u.set_password(Some(p))
            .map_err(|()| "cannot add REDIS_PASSWORD to it".to_owned())?;
    }
    Ok(Secret::new(u.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn err(yaml: &str) -> String {
        load_from_str(yaml, Some(Path::new("cfg.yaml")), &Env::new())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn empty_config_is_the_embedded_default() {
        let c = load_from_str("", None, &Env::new()).unwrap();
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.server.ops_listen.to_string(), "127.0.0.1:9000");
        assert_eq!(c.upstreams.len(), 1);
        assert_eq!(c.upstreams[0].base_url, DEFAULT_UPSTREAM_URL);
        assert!(c.models.is_empty());
        assert!(!c.auth.enabled);
        assert!(matches!(c.database.url, DatabaseUrl::Sqlite(ref p) if p.ends_with("aibox.db")));
    }

    #[test]
    fn issue9_edge_timeouts_default_override_and_range() {
        let c = load_from_str("", None, &Env::new()).unwrap();
        assert_eq!(c.server.header_read_timeout, Duration::from_secs(30));
        assert_eq!(c.server.body_idle_timeout, Duration::from_secs(30));
        assert_eq!(c.server.first_byte_timeout, Duration::from_secs(30));
        assert_eq!(c.server.send_stall_timeout, Duration::from_secs(60));
        let c = load_from_str(
            "server:\n  header_read_timeout_ms: 1500\n  body_idle_timeout_ms: 2500\n  first_byte_timeout_ms: 700\n  send_stall_timeout_ms: 900\n",
            None,
            &env(&[(env::AIBOX_SEND_STALL_TIMEOUT_MS, "4000")]),
        )
        .unwrap();
        assert_eq!(c.server.header_read_timeout, Duration::from_millis(1500));
        assert_eq!(c.server.body_idle_timeout, Duration::from_millis(2500));
        assert_eq!(c.server.first_byte_timeout, Duration::from_millis(700));
        assert_eq!(c.server.send_stall_timeout, Duration::from_millis(4000));

        let e = err("server:\n  listen: 127.0.0.1:1\n  header_read_timeout_ms: 0\n");
        assert!(e.contains("server.header_read_timeout_ms"), "{e}");
        assert!(e.contains("cfg.yaml:3"), "{e}");
        assert!(e.contains("between 100 and 3600000"), "{e}");
        let e = err("server:\n  send_stall_timeout_ms: 3600001\n");
        assert!(e.contains("server.send_stall_timeout_ms"), "{e}");
        let e = load_from_str("", None, &env(&[(env::AIBOX_BODY_IDLE_TIMEOUT_MS, "soon")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains(env::AIBOX_BODY_IDLE_TIMEOUT_MS), "{e}");
        assert!(e.contains("server.body_idle_timeout_ms"), "{e}");
        assert!(e.contains("'soon' is not a number"), "{e}");
    }

    #[test]
    fn issue_4_the_audit_checkpoint_interval_is_a_config_key() {
        let c = load_from_str("", None, &Env::new()).unwrap();
        assert_eq!(c.database.audit_checkpoint_interval_ms, 1000);
        let yaml = "database:\n  audit_checkpoint_interval_ms: 0\n";
        let c = load_from_str(yaml, None, &Env::new()).unwrap();
        assert_eq!(c.database.audit_checkpoint_interval_ms, 0);
        let c = load_from_str(
            yaml,
            None,
            &env(&[(env::AIBOX_DATABASE_AUDIT_CHECKPOINT_INTERVAL_MS, "250")]),
        )
        .unwrap();
        assert_eq!(c.database.audit_checkpoint_interval_ms, 250);
        let e = err("database:\n  audit_checkpoint_interval_ms: 3600001\n");
        assert!(e.contains("database.audit_checkpoint_interval_ms"), "{e}");
        assert!(e.contains("cfg.yaml:2"), "{e}");
        let e = load_from_str(
            "",
            None,
            &env(&[(env::AIBOX_DATABASE_AUDIT_CHECKPOINT_INTERVAL_MS, "soon")]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("AIBOX_DATABASE_AUDIT_CHECKPOINT_INTERVAL_MS"),
            "{e}"
        );
    }

    #[test]
    fn issue_9_database_pool_sizes_are_config_keys() {
        // The defaults are the sizes that were hard-coded before.
        let c = load_from_str("", None, &Env::new()).unwrap();
        assert_eq!(c.database.max_connections, 16);
        assert_eq!(c.database.audit_max_connections, 8);

        let yaml = "database:\n  url: postgres://aibox@db:5432/aibox\n  max_connections: 30\n  audit_max_connections: 4\n";
        let c = load_from_str(yaml, None, &Env::new()).unwrap();
        assert_eq!(c.database.max_connections, 30);
        assert_eq!(c.database.audit_max_connections, 4);
        assert_eq!(c.database.audit_checkpoint_interval_ms, 1000);
        let printed = serde_json::to_string(&c).unwrap();
        assert!(printed.contains("\"audit_max_connections\":4"), "{printed}");

        // The environment overrides the file.
        let c = load_from_str(
            yaml,
            None,
            &env(&[
                (env::AIBOX_DATABASE_MAX_CONNECTIONS, "5"),
                (env::AIBOX_DATABASE_AUDIT_MAX_CONNECTIONS, " 3 "),
            ]),
        )
        .unwrap();
        assert_eq!(c.database.max_connections, 5);
        assert_eq!(c.database.audit_max_connections, 3);

        // Out of range in the file: the key, its line and the fix.
        let e = err("database:\n  max_connections: 0\n");
        assert!(e.contains("database.max_connections"), "{e}");
        assert!(e.contains("cfg.yaml:2"), "{e}");
        assert!(e.contains("between 1 and 1000"), "{e}");
        assert!(e.contains("max_connections"), "{e}");
        let e = err("database:\n  url: sqlite://x.db\n  audit_max_connections: 1001\n");
        assert!(e.contains("database.audit_max_connections"), "{e}");
        assert!(e.contains("cfg.yaml:3"), "{e}");
        assert!(e.contains("1001 is outside 1..=1000"), "{e}");
        // Not a number, or negative, in the file: refused by the first step.
        let e = err("database:\n  max_connections: many\n");
        assert!(e.contains("database.max_connections"), "{e}");
        let e = err("database:\n  audit_max_connections: -1\n");
        assert!(e.contains("database.audit_max_connections"), "{e}");
        // Bad values from the environment name the variable and the key.
        for (var, key, value) in [
            (
                env::AIBOX_DATABASE_MAX_CONNECTIONS,
                "database.max_connections",
                "lots",
            ),
            (
                env::AIBOX_DATABASE_AUDIT_MAX_CONNECTIONS,
                "database.audit_max_connections",
                "0",
            ),
        ] {
            let e = load_from_str("", None, &env(&[(var, value)]))
                .unwrap_err()
                .to_string();
            assert!(e.contains(var), "{e}");
            assert!(e.contains(key), "{e}");
            assert!(e.contains("between 1 and 1000"), "{e}");
        }
        // A misspelt key is refused, not ignored.
        let e = err("database:\n  pool_size: 4\n");
        assert!(e.contains("pool_size"), "{e}");
    }

    #[test]
    fn dashboard_sso_needs_an_issuer_a_secret_and_a_callback_url() {
        let auth = "auth:\n  enabled: true\n  issuer: https://idp.example.com/realms/x\n";
        let oidc = |redirect: &str| {
            format!(
                "dashboard:\n  oidc:\n    client_id: dash\n    client_secret_env: DASH_SECRET\n    redirect_url: {redirect}\n"
            )
        };
        let good = format!("{auth}{}", oidc("https://dash.example.com/oidc/callback"));
        let secret = env(&[("DASH_SECRET", "s3cret-value")]);
        let c = load_from_str(&good, None, &secret).unwrap();
        let o = c.dashboard.oidc.unwrap();
        assert_eq!(o.client_id, "dash");
        assert_eq!(o.client_secret.expose(), "s3cret-value");
        let printed = serde_json::to_string(&load_from_str(&good, None, &secret).unwrap()).unwrap();
        assert!(!printed.contains("s3cret-value"), "{printed}");
        for (yaml, env_, words) in [
            (
                oidc("http://127.0.0.1:9001/oidc/callback"),
                &secret,
                &["auth.enabled"][..],
            ),
            (
                good.clone(),
                &Env::new(),
                &["DASH_SECRET", "client_secret_env"][..],
            ),
            (
                format!("{auth}{}", oidc("http://dash.example.com/oidc/callback")),
                &secret,
                &["redirect_url", "https"][..],
            ),
            (
                format!("{auth}{}", oidc("https://dash.example.com/callback")),
                &secret,
                &["/oidc/callback"][..],
            ),
        ] {
            let e = load_from_str(&yaml, Some(Path::new("cfg.yaml")), env_)
                .unwrap_err()
                .to_string();
            for w in words {
                assert!(e.contains(w), "{w} not in {e}");
            }
            assert!(!e.contains("s3cret-value"), "{e}");
        }
        // http is fine on loopback.
        let local = format!("{auth}{}", oidc("http://127.0.0.1:9001/oidc/callback"));
        assert!(load_from_str(&local, None, &secret).is_ok());
    }

    #[test]
    fn environment_overrides_the_file() {
        let c = load_from_str(
            "server:\n  listen: 127.0.0.1:1111\n",
            None,
            &env(&[
                (env::AIBOX_LISTEN, "127.0.0.1:2222"),
                (env::AIBOX_LOG_FORMAT, "json"),
            ]),
        )
        .unwrap();
        assert_eq!(c.server.listen.port(), 2222);
        assert_eq!(c.log.format, LogFormat::Json);
    }

    /// Each row: YAML, then fragments the error must contain.
    #[test]
    fn bad_files_name_the_line_the_key_and_the_fix() {
        let cases: &[(&str, &[&str])] = &[
            (
                "server:\n  listn: 1\n",
                &["cfg.yaml:2", "server", "unknown field `listn`", "listen"],
            ),
            (
                "server:\n  listen: nope\n",
                &["cfg.yaml:2", "server.listen", "IP:PORT"],
            ),
            (
                "auth:\n  enabled: maybe\n",
                &["cfg.yaml:2", "auth.enabled", "invalid type"],
            ),
            (
                "auth:\n  enabled: true\n  api_keys: false\n",
                &["cfg.yaml:3", "auth.api_keys", "nobody could authenticate"],
            ),
            (
                "egress:\n  allow_hosts:\n    - wiki.corp.example\n    - 10.0.0.5/8\n",
                &["cfg.yaml:4", "egress.allow_hosts[1]", "10.0.0.5/8", "fix:"],
            ),
            (
                "egress:\n  allowed_ports: [8443, 70000]\n",
                &[
                    "cfg.yaml:2",
                    "egress.allowed_ports[1]",
                    "70000",
                    "1 to 65535",
                ],
            ),
            (
                "egress:\n  max_redirects: 99\n",
                &["cfg.yaml:2", "egress.max_redirects", "between 0 and 20"],
            ),
            (
                "egress:\n  timeout_ms: 1000\n  connect_timeout_ms: 5000\n",
                &[
                    "cfg.yaml:3",
                    "egress.connect_timeout_ms",
                    "bounds the whole call",
                ],
            ),
            (
                "egress:\n  allow_host: [x]\n",
                &["cfg.yaml:2", "unknown field `allow_host`", "allow_hosts"],
            ),
            (
                "auth:\n  algorithms: [RS256, HS256]\n",
                &["cfg.yaml:2", "auth.algorithms", "HS256", "symmetric"],
            ),
            (
                "auth:\n  algorithms: [none]\n",
                &["auth.algorithms", "'none'"],
            ),
            (
                "routes:\n  - prefix: /v1/x/\n    upstream: http://x\n    audience: a\n",
                &["cfg.yaml:2", "routes[0].prefix", "overlaps"],
            ),
            (
                "routes:\n  - prefix: /a/\n    upstream: http://x\n    audience: a\n  - prefix: /a/b/\n    upstream: http://y\n    audience: b\n",
                &["cfg.yaml:5", "routes[1].prefix"],
            ),
            (
                "routes:\n  - prefix: /a/\n    upstream: http://x\n    audience: a\n    operations: ['tool files']\n",
                &["cfg.yaml:5", "routes[0].operations"],
            ),
            (
                "principal:\n  algorithm: RS256\n",
                &["cfg.yaml:2", "principal.algorithm"],
            ),
            (
                "upstreams:\n  - name: a\n    base_url: http://x/v1\n    timeouts:\n      connect_ms: 0\n",
                &["cfg.yaml:5", "upstreams[0].timeouts.connect_ms"],
            ),
            (
                "upstreams:\n  - name: a\n    base_url: ftp://x\n",
                &["cfg.yaml:3", "upstreams[0].base_url", "ftp"],
            ),
            (
                "upstreams:\n  - name: a\n    base_url: http://user:pw@x/v1\n",
                &["cfg.yaml:3", "credentials"],
            ),
            (
                "models:\n  - name: m\n    targets:\n      - upstream: ghost\n",
                &[
                    "cfg.yaml:4",
                    "models[0].targets[0].upstream",
                    "ghost",
                    "ollama",
                ],
            ),
            (
                "models:\n  - name: m\n    targets: [{upstream: ollama}]\n  - name: m\n    targets: [{upstream: ollama}]\n",
                &["cfg.yaml:4", "used twice"],
            ),
            (
                "limits:\n  user:\n    requests_per_minute: 0\n",
                &["cfg.yaml:3", "limits.user.requests_per_minute"],
            ),
            ("server: [1, 2\n", &["cfg.yaml"]),
            (
                "upstreams:\n  - name: a\n    base_url: http://x/v1\n    api_key_env: AIBOX_TEST_UNSET_VAR\n",
                &["cfg.yaml:4", "AIBOX_TEST_UNSET_VAR", "export"],
            ),
        ];
        for (yaml, wants) in cases {
            let e = err(yaml);
            for w in *wants {
                assert!(e.contains(w), "error for {yaml:?} lacks {w:?}: {e}");
            }
            assert!(e.contains("fix:"), "{e}");
        }
    }

    #[test]
    fn secrets_are_redacted_in_the_effective_config() {
        let yaml = "database:\n  url: postgres://aibox:pgpass123@db:5432/aibox\nupstreams:\n  - name: openai\n    base_url: https://api.openai.com/v1\n    api_key_env: OPENAI_KEY_FOR_TEST\n";
        let c = load_from_str(
            yaml,
            None,
            &env(&[
                ("OPENAI_KEY_FOR_TEST", "sk-live-abcdef"),
                (env::AIBOX_REDIS_URL, "redis://cache:6379/0"),
                (env::REDIS_PASSWORD, "redispw99"),
            ]),
        )
        .unwrap();
        assert_eq!(
            c.upstreams[0].api_key.as_ref().unwrap().expose(),
            "sk-live-abcdef"
        );
        assert!(c.redis_url.as_ref().unwrap().expose().contains("redispw99"));
        let printed = serde_yaml_ng::to_string(&c).unwrap();
        for secret in ["sk-live-abcdef", "pgpass123", "redispw99"] {
            assert!(!printed.contains(secret), "{secret} leaked: {printed}");
        }
        assert!(printed.contains("REDACTED"));
        // The effective config is itself a valid config file.
        let again = load_from_str(
            &printed,
            None,
            &env(&[("OPENAI_KEY_FOR_TEST", "sk-live-abcdef")]),
        )
        .unwrap();
        assert_eq!(again.upstreams[0].base_url, c.upstreams[0].base_url);
    }

    #[test]
    fn models_resolve_targets_and_default_upstream_model() {
        let yaml = "upstreams:\n  - name: a\n    base_url: http://127.0.0.1:1/v1/\n  - name: b\n    base_url: http://127.0.0.1:2/v1\nmodels:\n  - name: chat\n    aliases: [gpt-4o]\n    targets:\n      - upstream: b\n        model: llama3:8b\n      - upstream: a\n";
        let c = load_from_str(yaml, None, &Env::new()).unwrap();
        assert_eq!(c.upstreams[0].base_url, "http://127.0.0.1:1/v1");
        let m = &c.models[0];
        assert_eq!(m.targets[0].upstream, 1);
        assert_eq!(m.targets[0].model, "llama3:8b");
        assert_eq!(m.targets[1].model, "chat");
        assert_eq!(m.aliases, vec!["gpt-4o".to_owned()]);
    }

    #[test]
    fn egress_from_the_file_and_the_environment() {
        let yaml = "egress:\n  allow_hosts: [wiki.corp.example, 10.1.0.0/16]\n  allowed_ports: [8443]\n  max_response_bytes: 1000\n  timeout_ms: 2000\n";
        let c = load_from_str(yaml, None, &Env::new()).unwrap();
        assert_eq!(c.egress.allow_hosts, ["wiki.corp.example", "10.1.0.0/16"]);
        assert_eq!(c.egress.allowed_ports, [80, 443, 8443]);
        assert_eq!(c.egress.policy.max_response_bytes(), 1000);
        assert_eq!(c.egress.policy.timeout(), Duration::from_secs(2));
        assert!(
            c.egress
                .policy
                .allow_list()
                .allows_name("wiki.corp.example")
        );
        // The variables replace the file's lists.
        let c = load_from_str(
            yaml,
            None,
            &env(&[
                (env::AIBOX_EGRESS_ALLOW_HOSTS, "127.0.0.1, mcp.internal"),
                (env::AIBOX_EGRESS_ALLOWED_PORTS, "9000"),
            ]),
        )
        .unwrap();
        assert_eq!(c.egress.allow_hosts, ["127.0.0.1", "mcp.internal"]);
        assert_eq!(c.egress.allowed_ports, [80, 443, 9000]);
        assert!(
            !c.egress
                .policy
                .allow_list()
                .allows_name("wiki.corp.example")
        );
        // A bad entry from a variable names the variable, not the file.
        for (var, value, want) in [
            (env::AIBOX_EGRESS_ALLOW_HOSTS, "10.0.0.5/8", "10.0.0.5/8"),
            (
                env::AIBOX_EGRESS_ALLOWED_PORTS,
                "http",
                "'http' is not a port",
            ),
            (env::AIBOX_EGRESS_ALLOWED_PORTS, "0", "1 to 65535"),
        ] {
            let e = load_from_str(yaml, Some(Path::new("cfg.yaml")), &env(&[(var, value)]))
                .unwrap_err()
                .to_string();
            assert!(e.contains(var) && e.contains(want), "{e}");
            assert!(!e.contains("cfg.yaml"), "{e}");
        }
        // Defaults: nothing internal, ports 80 and 443.
        let c = load_from_str("", None, &Env::new()).unwrap();
        assert!(c.egress.allow_hosts.is_empty());
        assert_eq!(c.egress.allowed_ports, [80, 443]);
    }

    #[test]
    fn env_errors_name_the_variable() {
        let e = load_from_str("", None, &env(&[(env::AIBOX_LISTEN, "bogus")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("AIBOX_LISTEN"), "{e}");
        let e = load_from_str("", None, &env(&[(env::AIBOX_AUTH_ENABLED, "perhaps")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("AIBOX_AUTH_ENABLED"), "{e}");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod telemetry_tests {
    use super::*;

    #[test]
    fn telemetry_defaults_off_and_checks_its_keys() {
        let c = load_from_str("", None, &Env::new()).unwrap();
        assert!(!c.telemetry.traces && !c.telemetry.capture_content);
        assert_eq!(
            c.telemetry.otlp_endpoint.as_str(),
            "http://127.0.0.1:4318/v1/traces"
        );
        let bad = [
            ("telemetry:\n  sample_ratio: 1.5\n", "sample_ratio"),
            (
                "telemetry:\n  otlp_endpoint: \"ftp://x/\"\n",
                "otlp_endpoint",
            ),
            (
                "telemetry:\n  otlp_endpoint: \"http://u:p@x/\"\n",
                "otlp_endpoint",
            ),
            (
                "telemetry:\n  otlp_authorization_env: NOPE_UNSET\n",
                "NOPE_UNSET",
            ),
            ("telemetry:\n  prompts: true\n", "prompts"),
        ];
        for (yaml, word) in bad {
            let e = load_from_str(yaml, Some(Path::new("c.yaml")), &Env::new())
                .unwrap_err()
                .to_string();
            assert!(e.contains(word), "{yaml}: {e}");
        }
        let mut env = Env::new();
        env.insert("AIBOX_TRACES".into(), "true".into());
        env.insert("COLLECTOR_AUTH".into(), "Bearer s3cret".into());
        let c = load_from_str(
            "telemetry:\n  otlp_authorization_env: COLLECTOR_AUTH\n",
            None,
            &env,
        )
        .unwrap();
        assert!(c.telemetry.traces);
        assert!(!serde_json::to_string(&c).unwrap().contains("s3cret"));
    }
}
