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
