//! The ops API: liveness, readiness and metrics, plus the operator's
//! actions (health of upstreams and MCP servers, constitution and keyring
//! reloads, MCP server restarts).
//!
//! Everything here is mounted only on the ops listener, which binds to
//! loopback by default (seed 004 §3: never expose the ops port to the
//! network) and is a separate router on a separate socket, so no path of
//! the public listener reaches it.
//!
//! The contract: `/healthz` and `/readyz` answer anyone who can reach the
//! listener (probes carry no credentials); `/metrics` does too on loopback,
//! and needs `OPS_CONTROLLER_TOKEN` when the listener is not on loopback
//! (metrics name tenants and models). Every route under `/ops/` (and the
//! older `POST /reload/constitution`) needs the token as
//! `Authorization: Bearer`, compared in constant time; with no token
//! configured they are refused, never open. Every action is an
//! `ops_action` audit event in the `_aibox` system tenant.

use std::sync::Arc;
use std::time::Duration;

use aibox_core::Secret;
use aibox_core::keyring::Keyring;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::AppState;

/// The credentials that rotate without a restart: read again from the
/// environment and `.env` on `SIGHUP` or `POST /ops/reload/keys`.
pub struct Credentials {
    /// `AIBOX_PRINCIPAL_KEYS`.
    pub principal: Keyring,
    /// `AIBOX_CAPTOKEN_KEYS`.
    pub captoken: Keyring,
    /// `OPS_CONTROLLER_TOKEN`, if set and not empty.
    pub ops_token: Option<Secret>,
    /// `DASHBOARD_AUTH_TOKEN`, if set and not empty.
    pub dashboard_token: Option<Secret>,
    /// `DASHBOARD_PASSWORD` (a plain password or a PHC argon2 hash).
    pub dashboard_password: Option<Secret>,
}

/// Where [`Credentials`] come from; the binary reads the environment and
/// `.env` (and the development keys). The error names the variable and the
/// fix, never a value.
pub trait CredentialSource: Send + Sync {
    /// Reads and validates every rotatable credential.
    fn load(&self) -> Result<Credentials, String>;

    /// Reads and validates the config file again, with the environment and
    /// `.env` as at start-up. The error is the validation error (key, line,
    /// fix), never a value.
    fn load_config(&self) -> Result<aibox_config::Config, String> {
        Err("this gateway was started without a config source".into())
    }
}

/// The top-level config sections a reload applies; a change anywhere else
/// is reported as needing a restart.
pub const RELOADABLE_SECTIONS: [&str; 3] = ["upstreams", "models", "limits"];

/// Liveness: the process answers.
pub(crate) async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: the database answers, and the audit log answers with its
/// append-only guards intact, each within two seconds. A gateway whose audit
/// log is unusable fails every turn closed, so it must not receive traffic.
pub(crate) async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    match tokio::time::timeout(Duration::from_secs(2), state.audit.check_guards()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness check failed: audit log");
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: audit log: {e}\n"),
            )
                .into_response();
        }
        Err(_) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: audit log did not answer within 2 s\n",
            )
                .into_response();
        }
    }
    match tokio::time::timeout(Duration::from_secs(2), state.store.ping()).await {
        Ok(Ok(())) => (StatusCode::OK, "ready\n").into_response(),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: database: {e}\n"),
            )
                .into_response()
        }
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: database did not answer within 2 s\n",
        )
            .into_response(),
    }
}

/// Prometheus metrics: OpenMetrics when the scraper asks for it (as
/// Prometheus does), else the text format 0.0.4. Needs the ops token when
/// the ops listener is not on loopback.
pub(crate) async fn metrics(
    State(state): State<Arc<AppState>>,
    peer: Option<axum::Extension<crate::edge::Peer>>,
    headers: HeaderMap,
) -> Response {
    if state.ops_public
        && let Err(refused) = check_token(&state, &headers, peer.map(|p| p.0.0))
    {
        return *refused;
    }
    state
        .metrics
        .limiter_fallbacks
        .set(state.limiter.fallbacks());
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let text = state.metrics.encode();
    if openmetrics {
        (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            crate::metrics::to_prometheus_text(&text),
        )
            .into_response()
    }
}

/// The tenant whose audit log records plane-level events (ops actions,
/// reloads): they belong to no customer tenant.
pub fn system_tenant() -> aibox_core::TenantId {
    aibox_core::TenantId::new("_aibox").unwrap_or_else(|_| aibox_core::TenantId::default_tenant())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Appends one `ops_action` event to the `_aibox` tenant's log. The action
/// has already happened (or failed) when this runs; a log that cannot take
/// the record is reported loudly, and the caller tells the operator.
pub async fn record_ops_action(
    state: &AppState,
    actor: &str,
    action: &str,
    target: String,
    ok: bool,
) -> Result<(), String> {
    let event = aibox_core::audit::AuditEvent {
        tenant: system_tenant(),
        turn: None,
        request_id: None,
        at_ms: now_ms(),
        kind: aibox_core::audit::EventKind::OpsAction {
            actor: actor.to_owned(),
            action: action.to_owned(),
            target,
            ok,
        },
    };
    state
        .metrics
        .time_audit(state.audit.append_turn(&system_tenant(), None, vec![event]))
        .await
        .map(|_| ())
        .map_err(|e| {
            tracing::error!(error = %e, action, "cannot record an ops action in the audit log");
            e.to_string()
        })
}

/// Re-reads the constitution and records the ops action. A bad file keeps
/// the running guardrail and says why.
pub async fn reload_guardrail(state: &AppState, actor: &str) -> Result<String, String> {
    let result = state.guardrail.reload().map_err(|e| e.to_string());
    let target = state
        .guardrail
        .source()
        .map_or_else(|| "(built-in)".to_owned(), |p| p.display().to_string());
    let _ = record_ops_action(state, actor, "reload_constitution", target, result.is_ok()).await;
    match &result {
        Ok(profile) => tracing::info!(actor, profile = %profile, "constitution reloaded"),
        Err(e) => {
            tracing::error!(actor, error = %e, "constitution reload failed; the previous guardrail stays")
        }
    }
    result
}

fn describe_ring(ring: &Keyring) -> String {
    ring.entries()
        .iter()
        .map(|e| format!("{}({})", e.id(), e.fingerprint()))
        .collect::<Vec<_>>()
        .join(",")
}

fn set_or_unset(s: &Option<Secret>) -> &'static str {
    if s.is_some() { "set" } else { "unset" }
}

/// Reads the rotatable credentials again and swaps them in: requests in
/// flight keep the keys they started with, the next ones use the new ones.
/// A source that cannot be read, or a keyring that does not parse, leaves
/// everything as it was. The audit record names key ids and fingerprints,
/// never material. Returns that description.
pub async fn reload_keys(state: &AppState, actor: &str) -> Result<String, String> {
    let Some(source) = &state.credentials else {
        let why = "this gateway was started without a credential source".to_owned();
        let _ = record_ops_action(state, actor, "reload_keys", why.clone(), false).await;
        return Err(why);
    };
    let creds = match source.load() {
        Ok(c) => c,
        Err(e) => {
            let _ = record_ops_action(state, actor, "reload_keys", e.clone(), false).await;
            tracing::error!(actor, error = %e, "key reload failed; the previous keys stay");
            return Err(e);
        }
    };
    // Unchanged dashboard credentials keep their sessions (a SIGHUP for the
    // constitution must not log everybody out); changed ones are validated
    // before anything is swapped.
    let current = state.dashboard.current();
    let (token, password) = (
        creds.dashboard_token.clone(),
        creds.dashboard_password.clone(),
    );
    let unchanged = tokio::task::spawn_blocking(move || {
        current.same_credentials(token.as_ref(), password.as_ref())
    })
    .await
    .unwrap_or(false);
    let dashboard = if unchanged {
        None
    } else {
        match crate::dashboard::DashboardAuth::new(
            creds.dashboard_token.clone(),
            creds.dashboard_password.as_ref(),
        ) {
            Ok(d) => Some(d),
            Err(e) => {
                let e = e.to_string();
                let _ = record_ops_action(state, actor, "reload_keys", e.clone(), false).await;
                tracing::error!(actor, error = %e, "key reload failed; the previous keys stay");
                return Err(e);
            }
        }
    };
    let target = format!(
        "principal={} captoken={} ops_token={} dashboard_token={} dashboard_password={} dashboard_sessions={}",
        describe_ring(&creds.principal),
        describe_ring(&creds.captoken),
        set_or_unset(&creds.ops_token),
        set_or_unset(&creds.dashboard_token),
        set_or_unset(&creds.dashboard_password),
        if dashboard.is_some() { "ended" } else { "kept" },
    );
    state.set_signing_keys(&creds.principal, &creds.captoken);
    if let Some(mcp) = &state.mcp {
        mcp.replace_captoken_verifier(
            aibox_identity::CapTokenVerifier::new(&creds.captoken)
                .also_accepting(state.config.routes.iter().map(|r| r.audience.clone())),
        );
    }
    state.ops_token.store(creds.ops_token.map(Arc::new));
    if let Some(d) = dashboard {
        state.dashboard.replace(d);
    }
    let _ = record_ops_action(state, actor, "reload_keys", target.clone(), true).await;
    tracing::info!(actor, keys = %target, "keys and tokens reloaded");
    Ok(target)
}

/// Reads the config file again and swaps in its upstreams, models and
/// limits: a new router and new limits are built and checked first, then
/// each is swapped whole, so a request uses either the old or the new one
/// (a request in flight, a stream included, finishes on the router it
/// loaded). A file that does not validate, or a router that cannot be
/// built from it, leaves everything as it was and returns the reason.
/// Other sections that changed are named as needing a restart.
pub async fn reload_config(state: &AppState, actor: &str) -> Result<String, String> {
    let fail = move |why: String| async move {
        let _ = record_ops_action(state, actor, "reload_config", why.clone(), false).await;
        tracing::error!(actor, error = %why, "config reload failed; the running config stays");
        Err::<String, String>(why)
    };
    let Some(source) = &state.credentials else {
        return fail("this gateway was started without a config source".into()).await;
    };
    let new = match source.load_config() {
        Ok(c) => c,
        Err(e) => return fail(e).await,
    };
    let router = match aibox_router::Router::new(&new, state.service.clone()) {
        Ok(r) => r,
        Err(e) => return fail(format!("upstreams: {e}")).await,
    };
    let restart: Vec<String> = match (
        serde_json::to_value(&*state.config),
        serde_json::to_value(&new),
    ) {
        (Ok(serde_json::Value::Object(old)), Ok(serde_json::Value::Object(mut fresh))) => old
            .iter()
            .filter(|(k, _)| !RELOADABLE_SECTIONS.contains(&k.as_str()))
            .filter(|(k, v)| fresh.remove(k.as_str()).as_ref() != Some(*v))
            .map(|(k, _)| k.clone())
            .collect(),
        _ => Vec::new(),
    };
    state.router.store(router);
    state.limiter.set_limits(new.limits.clone());
    let target = format!(
        "upstreams={} models={} limits=applied restart_needed=[{}]",
        new.upstreams
            .iter()
            .map(|u| u.name.as_str())
            .collect::<Vec<_>>()
            .join(","),
        new.models
            .iter()
            .map(|m| m.name.as_str())
            .collect::<Vec<_>>()
            .join(","),
        restart.join(","),
    );
    let _ = record_ops_action(state, actor, "reload_config", target.clone(), true).await;
    if restart.is_empty() {
        tracing::info!(actor, config = %target, "config reloaded");
    } else {
        tracing::warn!(actor, config = %target, "config reloaded; changes to other sections need a restart");
    }
    Ok(target)
}

/// Checks `Authorization: Bearer OPS_CONTROLLER_TOKEN` in constant time.
/// With no token configured every caller is refused: the actions are never
/// open, whatever the listener's address.
fn check_token(
    state: &AppState,
    headers: &HeaderMap,
    peer: Option<std::net::IpAddr>,
) -> Result<(), Box<Response>> {
    let current = state.ops_token.load_full();
    let Some(token) = current.as_deref() else {
        return Err(Box::new((
            StatusCode::FORBIDDEN,
            "ops actions are disabled: OPS_CONTROLLER_TOKEN is not set; fix: set it in the environment or .env \
             (aibox bootstrap writes one), then send SIGHUP or restart\n",
        )
            .into_response()));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let ok: bool =
        subtle::ConstantTimeEq::ct_eq(given.as_bytes(), token.expose().as_bytes()).into();
    if ok {
        return Ok(());
    }
    state.metrics.ops_auth_failures.inc();
    let reason = if given.is_empty() {
        "missing_ops_token"
    } else {
        "wrong_ops_token"
    };
    state
        .refusals
        .record(&state.audit, reason, "ops", None, peer, None);
    tracing::warn!("ops API: request refused, missing or wrong OPS_CONTROLLER_TOKEN");
    let mut resp = (
        StatusCode::UNAUTHORIZED,
        "send OPS_CONTROLLER_TOKEN as `Authorization: Bearer`\n",
    )
        .into_response();
    resp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    Err(Box::new(resp))
}

/// The middleware in front of every ops action.
pub(crate) async fn require_token(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    if let Err(refused) = check_token(&state, req.headers(), crate::edge::peer_of(&req)) {
        return *refused;
    }
    let mut resp = next.run(req).await;
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn text(status: StatusCode, body: String) -> Response {
    (status, body).into_response()
}

/// `POST /ops/reload/constitution` (and `POST /reload/constitution`).
pub(crate) async fn reload_constitution(State(state): State<Arc<AppState>>) -> Response {
    match reload_guardrail(&state, "ops_api").await {
        Ok(profile) => text(StatusCode::OK, format!("reloaded; profile {profile}\n")),
        Err(e) => text(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("not reloaded: {e}\n"),
        ),
    }
}

/// `POST /ops/reload/keys`.
pub(crate) async fn reload_keys_handler(State(state): State<Arc<AppState>>) -> Response {
    match reload_keys(&state, "ops_api").await {
        Ok(keys) => text(StatusCode::OK, format!("reloaded; {keys}\n")),
        Err(e) => text(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("not reloaded, the previous keys stay: {e}\n"),
        ),
    }
}

/// `POST /ops/reload/config`.
pub(crate) async fn reload_config_handler(State(state): State<Arc<AppState>>) -> Response {
    match reload_config(&state, "ops_api").await {
        Ok(what) => text(StatusCode::OK, format!("reloaded; {what}\n")),
        Err(e) => text(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("not reloaded, the running config stays: {e}\n"),
        ),
    }
}

/// `GET /ops/health`: every upstream probed now, every MCP server's state.
/// Reading health is not an action and is not audited.
pub(crate) async fn health(State(state): State<Arc<AppState>>) -> Response {
    let router = state.router.load_full();
    let (upstreams, mcp) = tokio::join!(router.probe_upstreams(), async {
        match &state.mcp {
            Some(m) => m.overview(Duration::from_secs(2)).await,
            None => Vec::new(),
        }
    });
    let ok = upstreams.iter().all(|u| u.ok)
        && mcp
            .iter()
            .all(|s| s.health.state == aibox_mcp::HealthState::Ready);
    axum::Json(serde_json::json!({
        "ok": ok,
        "upstreams": upstreams,
        "mcp_servers": mcp,
    }))
    .into_response()
}

/// `POST /ops/mcp/{server}/restart`.
pub(crate) async fn restart_mcp(
    State(state): State<Arc<AppState>>,
    Path(server): Path<String>,
) -> Response {
    let result = match &state.mcp {
        Some(m) => m.restart_server(&server),
        None => Err("the MCP gateway is not running".to_owned()),
    };
    let target = match &result {
        Ok(done) => format!("{server}: {done}"),
        Err(why) => format!("{server}: {why}"),
    };
    let _ = record_ops_action(
        &state,
        "ops_api",
        "restart_mcp_server",
        target,
        result.is_ok(),
    )
    .await;
    match result {
        Ok(done) => {
            tracing::info!(server = %server, "MCP server restarted by the ops API");
            text(StatusCode::OK, format!("restarting {server}: {done}\n"))
        }
        Err(why) => text(StatusCode::NOT_FOUND, format!("not restarted: {why}\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_tenant_is_a_valid_reserved_id() {
        assert_eq!(system_tenant().as_str(), "_aibox");
    }
}
