//! The HTTP edge of aibox.
//!
//! Two listeners, two routers. The main router serves the OpenAI-compatible
//! API; the ops router (`/healthz`, `/readyz`, `/metrics`) is mounted on its
//! own listener, loopback by default, and is never reachable through the main
//! one. Every request passes [`edge::edge`] first, which strips inbound
//! `X-Aibox-*` headers, assigns the request id and records metrics.
//! [`error::ApiError`] is the one place where errors become responses.

mod audit;
pub mod auth;
pub mod dashboard;
pub mod downstream;
pub mod edge;
pub mod error;
pub mod guard;
pub mod mcp;
pub mod metrics;
mod openai;
pub mod ops;
pub mod refusals;
pub mod telemetry;
mod turn;
mod vault;

use std::sync::Arc;

use aibox_auditlog::AuditLog;
use aibox_config::Config;
use aibox_config::PrincipalAlgorithm;
use aibox_core::keyring::Keyring;
use aibox_identity::{CapTokenMinter, ClientCredentials, PrincipalSigner};
use aibox_limits::Limiter;
use aibox_router::Router as ModelRouter;
use aibox_store::Store;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{any, get, post};

pub use error::ApiError;
pub use metrics::Metrics;

/// Everything a handler needs, shared by all requests.
pub struct AppState {
    /// The validated config.
    pub config: Arc<Config>,
    /// The inference router (swapped whole by a config reload; a request
    /// keeps the one it loaded).
    pub router: arc_swap::ArcSwap<ModelRouter>,
    /// aibox's own client-credentials client, for routers built on reload.
    pub service: Option<Arc<ClientCredentials>>,
    /// Rate limits.
    pub limiter: Arc<Limiter>,
    /// Persistence.
    pub store: Store,
    /// The tamper-evident audit log.
    pub audit: AuditLog,
    /// Refused authentications on their way into the audit log.
    pub refusals: refusals::Refusals,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Authentication.
    pub auth: Arc<auth::Authenticator>,
    /// Signs `X-Aibox-Principal` for downstream services (swapped when
    /// `AIBOX_PRINCIPAL_KEYS` is reloaded).
    pub principal_signer: arc_swap::ArcSwap<PrincipalSigner>,
    /// Mints per-turn CapTokens (swapped when `AIBOX_CAPTOKEN_KEYS` is
    /// reloaded).
    pub captoken_minter: arc_swap::ArcSwap<CapTokenMinter>,
    /// Downstream routes, in config order.
    pub downstreams: Vec<downstream::Downstream>,
    /// Per-user secrets.
    pub vault: aibox_store::vault::Vault,
    /// The guardrail (swapped on reload).
    pub guardrail: Arc<guard::GuardrailHandle>,
    /// `OPS_CONTROLLER_TOKEN`: every ops action needs it; unset refuses them.
    pub ops_token: arc_swap::ArcSwapOption<aibox_core::Secret>,
    /// The ops listener is not on loopback: `/metrics` needs the token too.
    pub ops_public: bool,
    /// Where rotated keyrings and tokens are read from on reload.
    pub credentials: Option<Arc<dyn ops::CredentialSource>>,
    /// The dashboard's credentials and sessions.
    pub dashboard: dashboard::DashboardHandle,
    /// The dashboard's SSO login (`dashboard.oidc`).
    pub sso: Option<dashboard::sso::Sso>,
    /// Key ids and fingerprints of the keyrings in force (never material).
    pub key_summary: arc_swap::ArcSwap<Vec<KeyInfo>>,
    /// The doctor's findings, for the dashboard (the binary supplies it).
    pub doctor: Option<dashboard::DoctorFn>,
    /// The MCP tool gateway, mounted at `/mcp` when set.
    pub mcp: Option<Arc<aibox_mcp::McpGateway>>,
}

/// One key of a keyring, as the dashboard shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KeyInfo {
    /// The variable of the keyring.
    pub keyring: &'static str,
    /// The key id.
    pub id: String,
    /// Its fingerprint.
    pub fingerprint: String,
    /// The first key signs or encrypts; the others only verify or open.
    pub current: bool,
}

fn key_infos<'a>(keyring: &'static str, ring: &'a Keyring) -> impl Iterator<Item = KeyInfo> + 'a {
    ring.entries()
        .iter()
        .enumerate()
        .map(move |(i, e)| KeyInfo {
            keyring,
            id: e.id().to_owned(),
            fingerprint: e.fingerprint(),
            current: i == 0,
        })
}

/// The keyrings the gateway signs and encrypts with.
pub struct SigningKeys {
    /// `AIBOX_PRINCIPAL_KEYS`.
    pub principal: Keyring,
    /// `AIBOX_CAPTOKEN_KEYS`.
    pub captoken: Keyring,
    /// `SECRETS_MASTER_KEY`, which wraps the vault's data keys.
    pub secrets_master: Keyring,
}

/// Why the gateway could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// Authentication settings.
    #[error(transparent)]
    Auth(#[from] auth::AuthSetupError),
    /// The dashboard credentials.
    #[error(transparent)]
    Dashboard(#[from] dashboard::DashboardAuthError),
    /// The HTTP client of the dashboard's SSO login.
    #[error("dashboard.oidc: cannot build the HTTP client: {0}")]
    Sso(reqwest::Error),
    /// `dashboard.oidc` without an OIDC validator.
    #[error("dashboard.oidc needs auth.issuer (the provider whose ID tokens are verified)")]
    SsoWithoutIssuer,
    /// A downstream route's HTTP client.
    #[error("routes: cannot build the HTTP client for {prefix}: {source}")]
    Route {
        /// The route.
        prefix: String,
        /// Why.
        source: reqwest::Error,
    },
}

impl AppState {
    /// Assembles the state from the config and the parts the binary built.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: Arc<Config>,
        router: Arc<ModelRouter>,
        limiter: Arc<Limiter>,
        store: Store,
        audit: AuditLog,
        keys: &SigningKeys,
        service: Option<Arc<ClientCredentials>>,
        guardrail: Arc<guard::GuardrailHandle>,
    ) -> Result<Self, SetupError> {
        let auth = auth::Authenticator::new(&config.auth, store.clone())?;
        let (principal_signer, captoken_minter) = signers(&config, &keys.principal, &keys.captoken);
        let downstreams = config
            .routes
            .iter()
            .map(|r| {
                downstream::Downstream::new(r.clone(), service.as_ref()).map_err(|source| {
                    SetupError::Route {
                        prefix: r.prefix.clone(),
                        source,
                    }
                })
            })
            .collect::<Result<_, _>>()?;
        let sso = match (&config.dashboard.oidc, &config.auth.issuer) {
            (None, _) => None,
            (Some(o), Some(issuer)) => {
                let validator = auth.oidc_validator().ok_or(SetupError::SsoWithoutIssuer)?;
                Some(
                    dashboard::sso::Sso::new(o.clone(), issuer.clone(), validator)
                        .map_err(SetupError::Sso)?,
                )
            }
            (Some(_), None) => return Err(SetupError::SsoWithoutIssuer),
        };
        let vault = aibox_store::vault::Vault::new(store.clone(), keys.secrets_master.clone());
        let key_summary = key_infos("AIBOX_PRINCIPAL_KEYS", &keys.principal)
            .chain(key_infos("AIBOX_CAPTOKEN_KEYS", &keys.captoken))
            .chain(key_infos("SECRETS_MASTER_KEY", &keys.secrets_master))
            .collect();
        Ok(Self {
            vault,
            guardrail,
            ops_token: arc_swap::ArcSwapOption::empty(),
            ops_public: false,
            credentials: None,
            key_summary: arc_swap::ArcSwap::from_pointee(key_summary),
            doctor: None,
            dashboard: dashboard::DashboardHandle::new(
                dashboard::DashboardAuth::new(None, None)?,
                config.dashboard.session_ttl,
            ),
            mcp: None,
            sso,
            config,
            router: arc_swap::ArcSwap::new(router),
            service,
            limiter,
            store,
            audit,
            refusals: refusals::Refusals::default(),
            metrics: Arc::new(Metrics::new()),
            auth: Arc::new(auth),
            principal_signer: arc_swap::ArcSwap::from_pointee(principal_signer),
            captoken_minter: arc_swap::ArcSwap::from_pointee(captoken_minter),
            downstreams,
        })
    }

    /// Swaps in rotated principal and CapToken keyrings; requests in flight
    /// keep the signer they loaded.
    pub fn set_signing_keys(&self, principal: &Keyring, captoken: &Keyring) {
        let (p, c) = signers(&self.config, principal, captoken);
        self.principal_signer.store(Arc::new(p));
        self.captoken_minter.store(Arc::new(c));
        let mut summary: Vec<KeyInfo> = key_infos("AIBOX_PRINCIPAL_KEYS", principal)
            .chain(key_infos("AIBOX_CAPTOKEN_KEYS", captoken))
            .collect();
        summary.extend(
            self.key_summary
                .load()
                .iter()
                .filter(|k| k.keyring == "SECRETS_MASTER_KEY")
                .cloned(),
        );
        self.key_summary.store(Arc::new(summary));
    }
}

fn signers(
    config: &Config,
    principal: &Keyring,
    captoken: &Keyring,
) -> (PrincipalSigner, CapTokenMinter) {
    let p = match config.principal.algorithm {
        PrincipalAlgorithm::Hs256 => PrincipalSigner::hmac(principal),
        PrincipalAlgorithm::EdDsa => PrincipalSigner::ed25519(principal),
    }
    .with_ttl(config.principal.ttl);
    (
        p,
        CapTokenMinter::new(captoken).with_ttl(config.captoken.ttl),
    )
}

/// The main (public) router.
pub fn main_router(state: Arc<AppState>) -> Router {
    let max_body = state.config.server.max_body_bytes;
    let body_idle = state.config.server.body_idle_timeout;
    let mut router = Router::new();
    if let Some(mcp) = &state.mcp {
        router = router.route_service(aibox_mcp::MCP_PATH, aibox_mcp::router(mcp.clone()));
    }
    for d in &state.downstreams {
        // The prefix itself and everything below it; the handler picks the
        // route by prefix again, so both shapes reach the same config.
        router = router
            .route(d.prefix(), any(downstream::proxy))
            .route(&format!("{}{{*rest}}", d.prefix()), any(downstream::proxy));
    }
    router
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/embeddings", post(openai::embeddings))
        .route("/v1/models", get(openai::models))
        .route("/v1/secrets", get(vault::list))
        .route(
            "/v1/secrets/{name}",
            get(vault::get).put(vault::put).delete(vault::delete),
        )
        .route("/v1/audit/receipts/{turn_id}", get(audit::receipt))
        .route("/v1/audit/checkpoint", get(audit::checkpoint))
        .route("/v1/audit/consistency", get(audit::consistency))
        .route("/v1/audit/keys", get(audit::public_keys))
        .route("/v1/admin/audit/verify", get(audit::verify))
        .fallback(openai::not_found)
        .method_not_allowed_fallback(openai::method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        // A client that stops sending its body (after `Expect:
        // 100-continue`, or mid-upload) gets an error instead of holding the
        // request forever; the timeout (`server.body_idle_timeout_ms`)
        // restarts with every frame received.
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(body_idle))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            edge::edge,
        ))
        .with_state(state)
}

/// The ops router, for the ops listener only. Probes and metrics are open
/// (metrics need the token on a non-loopback listener); every action needs
/// `OPS_CONTROLLER_TOKEN` (see [`ops`]).
pub fn ops_router(state: Arc<AppState>) -> Router {
    let actions = Router::new()
        .route("/ops/health", get(ops::health))
        .route("/ops/reload/constitution", post(ops::reload_constitution))
        .route("/ops/reload/keys", post(ops::reload_keys_handler))
        .route("/ops/reload/config", post(ops::reload_config_handler))
        .route("/ops/mcp/{server}/restart", post(ops::restart_mcp))
        // The first path of the constitution reload, kept for scripts.
        .route("/reload/constitution", post(ops::reload_constitution))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            ops::require_token,
        ));
    Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .merge(actions)
        .with_state(state)
}
