//! The HTTP edge of aibox.
//!
//! Two listeners, two routers. The main router serves the OpenAI-compatible
//! API; the ops router (`/healthz`, `/readyz`, `/metrics`) is mounted on its
//! own listener, loopback by default, and is never reachable through the main
//! one. Every request passes [`edge::edge`] first, which strips inbound
//! `X-Aibox-*` headers, assigns the request id and records metrics.
//! [`error::ApiError`] is the one place where errors become responses.

pub mod edge;
pub mod error;
pub mod metrics;
mod openai;
mod ops;

use std::sync::Arc;

use aibox_config::Config;
use aibox_limits::Limiter;
use aibox_router::Router as ModelRouter;
use aibox_store::Store;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};

pub use error::ApiError;
pub use metrics::Metrics;

/// Everything a handler needs, shared by all requests.
pub struct AppState {
    /// The validated config.
    pub config: Arc<Config>,
    /// The inference router.
    pub router: Arc<ModelRouter>,
    /// Rate limits.
    pub limiter: Arc<Limiter>,
    /// Persistence.
    pub store: Store,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

/// The main (public) router.
pub fn main_router(state: Arc<AppState>) -> Router {
    let max_body = state.config.server.max_body_bytes;
    Router::new()
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/embeddings", post(openai::embeddings))
        .route("/v1/models", get(openai::models))
        .fallback(openai::not_found)
        .method_not_allowed_fallback(openai::method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            edge::edge,
        ))
        .with_state(state)
}

/// The ops router, for the ops listener only.
pub fn ops_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .with_state(state)
}
