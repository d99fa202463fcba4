//! The config file as written: every key optional, unknown keys refused.
//!
//! These types only mirror the YAML. Defaults, environment overrides and
//! cross-field checks happen in the second step, so that a parse error can
//! always point at the line the operator wrote.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Listeners and limits of the HTTP server.
    pub server: Option<RawServer>,
    /// Logging.
    pub log: Option<RawLog>,
    /// The database.
    pub database: Option<RawDatabase>,
    /// Redis, for limits shared between replicas.
    pub redis_url: Option<String>,
    /// Gateway authentication (seed 000 §2).
    pub auth: Option<RawAuth>,
    /// OpenAI-compatible upstreams.
    pub upstreams: Option<Vec<RawUpstream>>,
    /// Models clients may ask for.
    pub models: Option<Vec<RawModel>>,
    /// Rate limits.
    pub limits: Option<RawLimits>,
    /// The signed principal header.
    pub principal: Option<RawPrincipal>,
    /// Per-turn capability tokens.
    pub captoken: Option<RawCaptoken>,
    /// Downstream HTTP services.
    pub routes: Option<Vec<RawRoute>>,
    /// aibox's own confidential client, for service-to-service tokens.
    pub service_auth: Option<RawServiceAuth>,
    /// What tools and remote MCP servers may reach (the SSRF-safe egress).
    pub egress: Option<RawEgress>,
    /// The admin dashboard.
    pub dashboard: Option<RawDashboard>,
    /// Traces (OpenTelemetry over OTLP).
    pub telemetry: Option<RawTelemetry>,
}

/// `telemetry:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTelemetry {
    /// Export traces (default false).
    pub traces: Option<bool>,
    /// The OTLP/HTTP traces endpoint (protobuf), e.g. `http://127.0.0.1:4318/v1/traces`.
    pub otlp_endpoint: Option<String>,
    /// The NAME of a variable whose value is sent as `Authorization` to the collector.
    pub otlp_authorization_env: Option<String>,
    /// `service.name` of the resource.
    pub service_name: Option<String>,
    /// The share of new traces sampled, 0.0 to 1.0.
    pub sample_ratio: Option<f64>,
    /// Put prompts and completions into spans (default false; seed 000 §9).
    pub capture_content: Option<bool>,
}

/// `dashboard:`: the admin dashboard on its own listener.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDashboard {
    /// Serve it at all (default false).
    pub enabled: Option<bool>,
    /// Its listener address.
    pub listen: Option<String>,
    /// How long a login lasts.
    pub session_ttl_secs: Option<u64>,
    /// Mark the session cookie `Secure` (default: when `listen` is not
    /// loopback, where a TLS-terminating proxy must be in front).
    pub secure_cookie: Option<bool>,
    /// Single sign-on through `auth.issuer` (authorization code with PKCE).
    pub oidc: Option<RawDashboardOidc>,
}

/// `dashboard.oidc:`: the dashboard's own confidential client at the
/// identity provider, for the "Log in with SSO" button.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDashboardOidc {
    /// The client id (the audience of its ID tokens).
    pub client_id: String,
    /// The variable holding the client secret.
    pub client_secret_env: String,
    /// The callback URL registered at the provider
    /// (`https://dashboard.example.com/oidc/callback`).
    pub redirect_url: String,
}

/// `egress:`: the policy of the SSRF-safe egress client (seed 004 §1, §2).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEgress {
    /// Internal names, `*.suffix` patterns, IPs and CIDRs tools may reach.
    pub allow_hosts: Option<Vec<String>>,
    /// Ports allowed besides 80 and 443 (signed, so a negative value is
    /// reported by the validation rather than as a type error).
    pub allowed_ports: Option<Vec<i64>>,
    /// Refuse plain `http:`.
    pub https_only: Option<bool>,
    /// Redirect hops followed per call.
    pub max_redirects: Option<i64>,
    /// The largest response body read.
    pub max_response_bytes: Option<u64>,
    /// The whole call, every hop and the body included.
    pub timeout_ms: Option<u64>,
    /// Establishing one connection.
    pub connect_timeout_ms: Option<u64>,
}

/// `service_auth:`: the client-credentials client aibox uses (seed 000 §6).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServiceAuth {
    /// The token endpoint; absent means discovery from `auth.issuer`.
    pub token_url: Option<String>,
    /// aibox's client id.
    pub client_id: String,
    /// The variable holding the client secret (`SERVICE_<NAME>_CLIENT_SECRET`).
    pub client_secret_env: String,
}

/// Per upstream or route: ask for a client-credentials token for this.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTokenFor {
    /// RFC 8707 `resource`.
    pub resource: Option<String>,
    /// OAuth `scope`.
    pub scope: Option<String>,
}

/// `server:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// Main listener address.
    pub listen: Option<String>,
    /// Ops listener address.
    pub ops_listen: Option<String>,
    /// Directory for SQLite and development keys.
    pub data_dir: Option<String>,
    /// Largest request body accepted.
    pub max_body_bytes: Option<u64>,
    /// How long shutdown waits for in-flight requests and streams.
    pub shutdown_grace_secs: Option<u64>,
    /// How long a client may take to send a complete request head.
    pub header_read_timeout_ms: Option<u64>,
    /// The longest pause between two frames of a request body.
    pub body_idle_timeout_ms: Option<u64>,
    /// How long a new connection may stay silent before its first byte.
    pub first_byte_timeout_ms: Option<u64>,
    /// How long a client may leave response bytes unaccepted.
    pub send_stall_timeout_ms: Option<u64>,
}

/// `log:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    /// `text` or `json`.
    pub format: Option<String>,
    /// A `tracing` filter such as `info` or `aibox=debug,info`.
    pub level: Option<String>,
}

/// `database:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDatabase {
    /// `sqlite://PATH` or `postgres://...`.
    pub url: Option<String>,
    /// PostgreSQL: the most connections of the store's pool.
    pub max_connections: Option<u64>,
    /// PostgreSQL: the most connections of the audit log's pool.
    pub audit_max_connections: Option<u64>,
    /// The longest a tenant's newest audit envelopes wait for a signed
    /// checkpoint, in milliseconds.
    pub audit_checkpoint_interval_ms: Option<u64>,
}

/// `auth:` (seed 000 §2).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    /// Whether requests must carry a valid token.
    pub enabled: Option<bool>,
    /// The identity provider's JWKS endpoint.
    pub jwks_url: Option<String>,
    /// The exact issuer tokens must carry.
    pub issuer: Option<String>,
    /// Accepted audiences: a token's `aud` or `azp` must contain one.
    pub audiences: Option<Vec<String>>,
    /// Accepted signature algorithms (asymmetric only).
    pub algorithms: Option<Vec<String>>,
    /// Clock leeway for `exp`, `nbf` and `iat`.
    pub leeway_secs: Option<u64>,
    /// Largest token accepted, in bytes.
    pub max_token_bytes: Option<u64>,
    /// Shortest interval between JWKS refetches caused by unknown key ids.
    pub jwks_refresh_min_secs: Option<u64>,
    /// Where tenant, user and roles come from in the token.
    pub claims: Option<RawClaims>,
    /// Whether gateway API keys are accepted.
    pub api_keys: Option<bool>,
    /// Extra inbound identity headers to strip (X-Aibox-* always are).
    pub strip_headers: Option<Vec<String>>,
}

/// `auth.claims:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClaims {
    /// Claims tried in order for the user id.
    pub user: Option<Vec<String>>,
    /// The claim holding the tenant.
    pub tenant: Option<String>,
    /// The claim holding group paths (Keycloak: `groups`).
    pub groups: Option<String>,
    /// A group prefix such as `/tenants/` whose remainder is the tenant.
    pub tenant_from_group_prefix: Option<String>,
    /// The tenant when the token names none; absent means refuse.
    pub default_tenant: Option<String>,
    /// Dotted path to the roles array.
    pub roles: Option<String>,
}

/// `principal:`: the signed `X-Aibox-Principal` header.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrincipal {
    /// `HS256` (default) or `EdDSA`.
    pub algorithm: Option<String>,
    /// Lifetime of a signed principal.
    pub ttl_secs: Option<u64>,
}

/// `captoken:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCaptoken {
    /// Lifetime of a CapToken.
    pub ttl_secs: Option<u64>,
}

/// One entry of `routes:`: a downstream HTTP service behind the gateway.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// Path prefix, e.g. `/webui/`.
    pub prefix: String,
    /// Base URL of the downstream service.
    pub upstream: String,
    /// The `aud` of the signed principal sent to it.
    pub audience: String,
    /// Roles allowed to use the route; absent or empty means any principal.
    pub allowed_roles: Option<Vec<String>>,
    /// Operations put in the CapToken minted for each request.
    pub operations: Option<Vec<String>>,
    /// Whether the prefix is removed before forwarding.
    pub strip_prefix: Option<bool>,
    /// Send a client-credentials token from `service_auth` as `Authorization`.
    pub service_auth: Option<RawTokenFor>,
    /// Timeouts.
    pub timeouts: Option<RawTimeouts>,
}

/// One entry of `upstreams:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    /// Unique name, used by model targets.
    pub name: String,
    /// Base URL including `/v1`.
    pub base_url: String,
    /// Name of the environment variable holding the upstream's API key.
    pub api_key_env: Option<String>,
    /// Use a client-credentials token from `service_auth` instead.
    pub service_auth: Option<RawTokenFor>,
    /// Timeouts.
    pub timeouts: Option<RawTimeouts>,
}

/// `timeouts:` of an upstream.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    /// TCP (and TLS) connect.
    pub connect_ms: Option<u64>,
    /// From sending the request to the response headers.
    pub first_byte_ms: Option<u64>,
    /// Longest silence between two chunks of a body.
    pub idle_ms: Option<u64>,
    /// The whole exchange.
    pub total_ms: Option<u64>,
}

/// One entry of `models:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    /// The name clients use.
    pub name: String,
    /// Other names clients may use for it.
    pub aliases: Option<Vec<String>>,
    /// Ordered fallback list.
    pub targets: Vec<RawTarget>,
}

/// One target of a model.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    /// The upstream's `name`.
    pub upstream: String,
    /// The model name sent upstream; defaults to the model's `name`.
    pub model: Option<String>,
}

/// `limits:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Applies to each tenant.
    pub tenant: Option<RawRate>,
    /// Applies to each user.
    pub user: Option<RawRate>,
    /// Per-tenant overrides of `tenant`.
    pub tenants: Option<BTreeMap<String, RawRate>>,
}

/// A rate: absent means unlimited.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRate {
    /// Requests per minute.
    pub requests_per_minute: Option<u64>,
    /// Tokens (prompt plus completion) per minute.
    pub tokens_per_minute: Option<u64>,
}
