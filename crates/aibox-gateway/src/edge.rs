//! The first thing every request meets.
//!
//! It removes every inbound `X-Aibox-*` header before anything else can read
//! it (identity is derived by aibox, never claimed by a client), assigns the
//! request id (the client's `X-Request-Id` when it is well-formed, a fresh
//! UUID v7 otherwise), echoes it in the response, opens the tracing span and
//! records the request metrics.

use std::sync::Arc;
use std::time::Instant;

use aibox_core::RequestId;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use tracing::Instrument as _;

use crate::AppState;
use crate::metrics::{HttpLabels, ModelLabel, RouteLabels};

/// The request id header.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Removes every header whose name starts with `x-aibox-`, and every header
/// in `extra`. Header names are case-insensitive and `http` stores them
/// lowercased, so one comparison covers every spelling, and `remove` drops
/// every copy.
pub fn strip_identity_headers(headers: &mut axum::http::HeaderMap, extra: &[HeaderName]) {
    // CGI and WSGI servers map `X_Aibox_Principal` and `X-Aibox-Principal`
    // to the same variable, so underscores count as dashes when matching.
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|k| {
            let name = k.as_str().as_bytes();
            name.len() >= 8 && same_header(&name[..8], b"x-aibox-")
                || extra
                    .iter()
                    .any(|e| same_header(name, e.as_str().as_bytes()))
        })
        .cloned()
        .collect();
    for k in doomed {
        headers.remove(&k);
    }
}

/// Header names are equal when they differ only in `_` versus `-` (both are
/// lowercase already).
fn same_header(a: &[u8], b: &[u8]) -> bool {
    let norm = |c: u8| if c == b'_' { b'-' } else { c };
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| norm(*x) == norm(*y))
}

/// The IP address of a request's connection peer, which the listener puts
/// in every request's extensions (behind a load balancer, the balancer's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer(pub std::net::IpAddr);

/// The peer of a request, if the listener recorded one.
pub fn peer_of(req: &Request) -> Option<std::net::IpAddr> {
    req.extensions().get::<Peer>().map(|p| p.0)
}

/// The edge middleware.
pub async fn edge(State(state): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    // A CapToken the client presents (an agent calling `/mcp` within a turn)
    // is a credential to verify, not an identity to trust: it is taken out
    // of the headers with every other `X-Aibox-*` and handed on only as an
    // extension, which the MCP gateway verifies. Two copies mean none.
    let mut presented = req
        .headers()
        .get_all(crate::downstream::CAPTOKEN_HEADER)
        .iter();
    let captoken = match (presented.next(), presented.next()) {
        (Some(v), None) => v.to_str().ok().map(str::to_owned),
        _ => None,
    };
    strip_identity_headers(req.headers_mut(), state.auth.strip_headers());
    if let Some(token) = captoken {
        req.extensions_mut()
            .insert(aibox_mcp::PresentedCapToken(token));
    }
    let rid = req
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| RequestId::new(s).ok())
        .unwrap_or_else(RequestId::generate);
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    req.extensions_mut().insert(rid.clone());
    let span = tracing::info_span!(
        "request",
        otel.kind = "server",
        request_id = %rid,
        method = %req.method(),
        route = %route
    );
    // A caller's valid W3C `traceparent` makes this span part of its trace;
    // a malformed one is ignored (aibox's own trace starts here).
    if state.config.telemetry.traces {
        aibox_router::tracectx::set_remote_parent(&span, req.headers());
    }
    // If the client goes away before the response, this future is dropped
    // mid-await; the guard still counts and logs the request (as 499, the
    // status nginx uses for a client that closed the connection).
    let mut gone = ClientGone {
        state: Some((state.clone(), route.clone(), started, span.clone())),
    };
    let mut tenant = String::new();
    let mut resp = async {
        match state.auth.authenticate(req.headers()).await {
            Ok(principal) => {
                tenant = state.metrics.tenants.label(principal.tenant.as_str());
                // The credential has done its job; nothing after the edge
                // may forward it (a downstream gets the signed principal).
                req.headers_mut().remove(axum::http::header::AUTHORIZATION);
                tracing::debug!(tenant = %principal.tenant, user = %principal.user, "authenticated");
                req.extensions_mut().insert(principal);
                next.run(req).await
            }
            Err(failure) => {
                if let Some(r) = failure.refusal {
                    state
                        .metrics
                        .auth_refusals
                        .get_or_create(&crate::metrics::ReasonLabels {
                            reason: r.reason.to_owned(),
                        })
                        .inc();
                    state.refusals.record(
                        &state.audit,
                        r.reason,
                        &route,
                        r.key_id,
                        peer_of(&req),
                        Some(&rid),
                    );
                }
                // Refused before the body was read: hyper will not reuse a
                // connection with an unread body, so say so; otherwise a
                // client may send its next request into the closing
                // connection and see it dropped unanswered.
                let mut resp = failure.error.into_response();
                resp.headers_mut().insert(
                    axum::http::header::CONNECTION,
                    HeaderValue::from_static("close"),
                );
                resp
            }
        }
    }
    .instrument(span.clone())
    .await;
    gone.state = None;
    let status = resp.status();
    if let Ok(v) = HeaderValue::from_str(rid.as_str()) {
        resp.headers_mut().insert(X_REQUEST_ID.clone(), v);
    }
    let elapsed = started.elapsed();
    let model = resp
        .extensions()
        .get::<ModelLabel>()
        .map(|m| state.metrics.models.label(&m.0))
        .unwrap_or_default();
    state
        .metrics
        .requests
        .get_or_create(&HttpLabels {
            route: route.clone(),
            model: model.clone(),
            tenant: tenant.clone(),
            status: status.as_u16().to_string(),
        })
        .inc();
    state
        .metrics
        .latency
        .get_or_create(&RouteLabels {
            route,
            model,
            tenant,
        })
        .observe(elapsed.as_secs_f64());
    span.in_scope(|| {
        tracing::info!(
            status = status.as_u16(),
            micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            "response"
        );
    });
    resp
}

struct ClientGone {
    state: Option<(Arc<AppState>, String, Instant, tracing::Span)>,
}

impl Drop for ClientGone {
    fn drop(&mut self) {
        if let Some((state, route, started, span)) = self.state.take() {
            state
                .metrics
                .requests
                .get_or_create(&HttpLabels {
                    route,
                    model: String::new(),
                    tenant: String::new(),
                    status: "499".to_owned(),
                })
                .inc();
            span.in_scope(|| {
                tracing::info!(
                    micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
                    "client closed the connection before the response"
                );
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_every_spelling_and_copy() {
        let mut h = axum::http::HeaderMap::new();
        h.append("X-Aibox-Principal", HeaderValue::from_static("forged"));
        h.append("x-aibox-principal", HeaderValue::from_static("forged2"));
        h.append("X-AIBOX-TENANT", HeaderValue::from_static("acme"));
        h.append("x-request-id", HeaderValue::from_static("keep"));
        h.append("X_Aibox_Principal", HeaderValue::from_static("forged3"));
        h.append("x_forwarded_user", HeaderValue::from_static("admin3"));
        h.append("X-Forwarded-User", HeaderValue::from_static("admin"));
        h.append("x-forwarded-user", HeaderValue::from_static("admin2"));
        strip_identity_headers(&mut h, &[HeaderName::from_static("x-forwarded-user")]);
        assert_eq!(h.len(), 1);
        assert!(h.get("x-request-id").is_some());
    }
}
