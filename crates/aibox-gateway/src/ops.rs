//! Ops endpoints: liveness, readiness (database and audit log) and metrics.
//!
//! These are mounted only on the ops listener, which binds to loopback by
//! default (seed 004 §3: never expose the ops port to the network).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::AppState;

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

/// Prometheus metrics in the OpenMetrics text format.
pub(crate) async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    state
        .metrics
        .limiter_fallbacks
        .set(state.limiter.fallbacks());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

/// The tenant whose audit log records plane-level events (ops actions,
/// reloads): they belong to no customer tenant.
pub fn system_tenant() -> aibox_core::TenantId {
    aibox_core::TenantId::new("_aibox").unwrap_or_else(|_| aibox_core::TenantId::default_tenant())
}

/// Re-reads the constitution and records the ops action. A bad file keeps
/// the running guardrail and says why.
pub async fn reload_guardrail(state: &AppState, actor: &str) -> Result<String, String> {
    let result = state.guardrail.reload().map_err(|e| e.to_string());
    let event = aibox_core::audit::AuditEvent {
        tenant: system_tenant(),
        turn: None,
        request_id: None,
        at_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0),
        kind: aibox_core::audit::EventKind::OpsAction {
            actor: actor.to_owned(),
            action: "reload_constitution".into(),
            target: state
                .guardrail
                .source()
                .map_or_else(|| "(built-in)".to_owned(), |p| p.display().to_string()),
            ok: result.is_ok(),
        },
    };
    if let Err(e) = state
        .audit
        .append_turn(&system_tenant(), None, vec![event])
        .await
    {
        tracing::error!(error = %e, "cannot record the constitution reload in the audit log");
    }
    match &result {
        Ok(profile) => tracing::info!(actor, profile = %profile, "constitution reloaded"),
        Err(e) => {
            tracing::error!(actor, error = %e, "constitution reload failed; the previous guardrail stays")
        }
    }
    result
}

/// `POST /reload/constitution` on the ops listener. When
/// `OPS_CONTROLLER_TOKEN` is set it must be presented as a bearer token.
pub(crate) async fn reload_constitution(
    State(state): State<Arc<AppState>>,
    headers: axum::http::HeaderMap,
) -> Response {
    if let Some(token) = &state.ops_token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let ok: bool =
            subtle::ConstantTimeEq::ct_eq(given.as_bytes(), token.expose().as_bytes()).into();
        if !ok {
            return (
                StatusCode::UNAUTHORIZED,
                "send OPS_CONTROLLER_TOKEN as `Authorization: Bearer`\n",
            )
                .into_response();
        }
    }
    match reload_guardrail(&state, "ops_api").await {
        Ok(profile) => (StatusCode::OK, format!("reloaded; profile {profile}\n")).into_response(),
        Err(e) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("not reloaded: {e}\n"),
        )
            .into_response(),
    }
}
