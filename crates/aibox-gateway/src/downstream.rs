//! Downstream HTTP services behind the gateway (`routes:` in the config).
//!
//! This is how Open WebUI, Dify or an agent runtime sit behind aibox. For a
//! request under a route's prefix the gateway has already authenticated the
//! caller and stripped every identity header; here it checks the route's
//! roles, signs a short-lived `X-Aibox-Principal` for the route's audience,
//! mints a CapToken for a fresh turn when the route grants operations, and
//! streams the request and the response through. The client's own
//! credential is never forwarded.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use aibox_config::RouteConfig;
use aibox_core::audit::{Sha256Hex, TurnStatus};
use aibox_core::{Principal, RequestId};
use sha2::{Digest as _, Sha256};

use crate::turn::{TurnLog, record};
use aibox_identity::{CapGrant, ClientCredentials, TokenRequest};
use axum::body::Body;
use axum::extract::{Extension, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::Response;
use futures_util::TryStreamExt as _;

use crate::AppState;
use crate::error::ApiError;

/// The header carrying the signed principal.
pub const PRINCIPAL_HEADER: &str = "x-aibox-principal";
/// The header carrying the turn's CapToken.
pub const CAPTOKEN_HEADER: &str = "x-aibox-captoken";
/// The header carrying the turn id.
pub const TURN_HEADER: &str = "x-aibox-turn";

/// A configured route with its HTTP client.
pub struct Downstream {
    cfg: RouteConfig,
    client: reqwest::Client,
    service_token: Option<(Arc<ClientCredentials>, TokenRequest)>,
}

impl Downstream {
    /// Builds the client of one route.
    pub fn new(
        cfg: RouteConfig,
        service: Option<&Arc<ClientCredentials>>,
    ) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .connect_timeout(cfg.timeouts.connect)
            .timeout(cfg.timeouts.total)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(60))
            .build()?;
        let service_token = match (&cfg.service_auth, service) {
            (Some(t), Some(cc)) => Some((
                cc.clone(),
                TokenRequest {
                    resource: t.resource.clone(),
                    scope: t.scope.clone(),
                },
            )),
            _ => None,
        };
        Ok(Self {
            cfg,
            client,
            service_token,
        })
    }

    /// The route's prefix.
    pub fn prefix(&self) -> &str {
        &self.cfg.prefix
    }
}

/// Headers that describe one hop and must not be forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
];

fn copy_headers(from: &HeaderMap, to: &mut HeaderMap) {
    // Headers named in `Connection` are hop-by-hop too.
    let named: Vec<String> = from
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_ascii_lowercase()))
        .collect();
    for (k, v) in from {
        let name = k.as_str();
        if HOP_BY_HOP.contains(&name) || named.iter().any(|n| n == name) {
            continue;
        }
        to.append(k.clone(), v.clone());
    }
}

fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "invalid_request_error",
        "request_too_large",
        "the request body exceeds server.max_body_bytes (AIBOX_MAX_BODY_BYTES)",
    )
}

/// Proxies one request to the route whose prefix matches.
pub(crate) async fn proxy(
    State(st): State<Arc<AppState>>,
    Extension(rid): Extension<RequestId>,
    Extension(principal): Extension<Principal>,
    req: Request,
) -> Result<Response, ApiError> {
    let path = req.uri().path().to_owned();
    let Some(route) = st
        .downstreams
        .iter()
        .find(|d| path.starts_with(&d.cfg.prefix))
    else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "not_found",
            "no route",
        ));
    };
    let cfg = &route.cfg;
    if !cfg.allowed_roles.is_empty() && !cfg.allowed_roles.iter().any(|r| principal.has_role(r)) {
        tracing::warn!(route = %cfg.prefix, user = %principal.user, "refused: the principal has none of the route's allowed_roles");
        return Err(ApiError::forbidden(format!(
            "your roles do not allow {}; ask an operator for one of the roles this route requires",
            cfg.prefix
        )));
    }
    let rest = if cfg.strip_prefix {
        &path[cfg.prefix.len() - 1..]
    } else {
        path.as_str()
    };
    let mut url = format!("{}{}", cfg.upstream, rest);
    if let Some(q) = req.uri().query() {
        url.push('?');
        url.push_str(q);
    }

    let now = SystemTime::now();
    let signed = st
        .principal_signer
        .load()
        .sign(&principal, &cfg.audience, &rid, now)
        .map_err(|e| {
            tracing::error!(error = %e, "cannot sign the principal; check AIBOX_PRINCIPAL_KEYS");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "principal_signing_failed",
                "the gateway cannot sign the caller's identity",
            )
        })?;
    // The body is streamed; its hash is completed as it is forwarded and
    // set on the turn before the turn is recorded.
    let mut turn_log = TurnLog::start(&principal, &rid, &cfg.prefix, None, Sha256Hex::of(b""));
    let turn = turn_log.turn().clone();
    let body_hash = Arc::new(std::sync::Mutex::new(Sha256::new()));
    let mut headers = HeaderMap::new();
    copy_headers(req.headers(), &mut headers);
    let sensitive = |v: String| {
        HeaderValue::from_str(&v).map(|mut h| {
            h.set_sensitive(true);
            h
        })
    };
    let internal = |what: &str| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "header_encoding",
            format!("cannot encode the {what} header"),
        )
    };
    headers.insert(
        HeaderName::from_static(PRINCIPAL_HEADER),
        sensitive(signed).map_err(|_| internal("principal"))?,
    );
    if let Some((cc, treq)) = &route.service_token {
        let token = cc.token(treq).await.map_err(|e| {
            tracing::error!(route = %cfg.prefix, error = %e, "cannot obtain a service token");
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                "service_token_unavailable",
                format!(
                    "the gateway cannot obtain a token for the service behind {}",
                    cfg.prefix
                ),
            )
        })?;
        headers.insert(
            header::AUTHORIZATION,
            sensitive(format!("Bearer {}", token.expose()))
                .map_err(|_| internal("authorization"))?,
        );
    }
    headers.insert(
        HeaderName::from_static(TURN_HEADER),
        HeaderValue::from_str(turn.as_str()).map_err(|_| internal("turn"))?,
    );
    headers.insert(
        HeaderName::from_static("x-request-id"),
        HeaderValue::from_str(rid.as_str()).map_err(|_| internal("request id"))?,
    );
    if !cfg.operations.is_empty() {
        let grant = CapGrant {
            turn: &turn,
            tenant: &principal.tenant,
            user: &principal.user,
            ops: &cfg.operations,
            audience: Some(&cfg.audience),
        };
        let minted = st.captoken_minter.load().mint(&grant, now).map_err(|e| {
            tracing::error!(error = %e, "cannot mint a CapToken; check AIBOX_CAPTOKEN_KEYS");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "captoken_minting_failed",
                "the gateway cannot mint the turn's capability token",
            )
        })?;
        headers.insert(
            HeaderName::from_static(CAPTOKEN_HEADER),
            sensitive(minted.token).map_err(|_| internal("captoken"))?,
        );
    }

    // With traces on, the service's spans hang under aibox's client span;
    // the caller's own trace headers (its parent is aibox's server span
    // now) are not passed on.
    let call_span = tracing::info_span!(
        "downstream",
        otel.name = %format!("{} {}", req.method(), cfg.prefix),
        otel.kind = "client",
        aibox.route = %cfg.prefix,
        aibox.turn = %turn,
    );
    if st.config.telemetry.traces {
        headers.remove(aibox_router::tracectx::TRACEPARENT);
        headers.remove(aibox_router::tracectx::TRACESTATE);
        headers.extend(call_span.in_scope(aibox_router::tracectx::current_headers));
    }
    let method = req.method().clone();
    // server.max_body_bytes holds here too: refuse a declared length at once,
    // and cut a chunked body that grows past the limit.
    let limit = st.config.server.max_body_bytes;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let over = Arc::new(AtomicBool::new(false));
    let body = {
        let over = over.clone();
        let body_hash = body_hash.clone();
        let mut seen = 0usize;
        req.into_body().into_data_stream().and_then(move |chunk| {
            seen = seen.saturating_add(chunk.len());
            if let Ok(mut h) = body_hash.lock() {
                h.update(&chunk);
            }
            let exceeded = seen > limit;
            if exceeded {
                over.store(true, Ordering::Relaxed);
            }
            async move {
                if exceeded {
                    Err(axum::Error::new(std::io::Error::other(
                        "request body exceeds server.max_body_bytes",
                    )))
                } else {
                    Ok(chunk)
                }
            }
        })
    };
    let body = reqwest::Body::wrap_stream(body);
    let send = route
        .client
        .request(method, url)
        .headers(headers)
        .body(body)
        .send();
    let outcome = match tokio::time::timeout(
        cfg.timeouts.first_byte,
        tracing::Instrument::instrument(send, call_span),
    )
    .await
    {
        Err(_) => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "upstream_error",
            "upstream_timeout",
            format!("the service behind {} did not answer in time", cfg.prefix),
        )),
        Ok(Err(_)) if over.load(Ordering::Relaxed) => Err(too_large()),
        Ok(Err(e)) => {
            tracing::warn!(route = %cfg.prefix, error = %e, "downstream request failed");
            Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                "upstream_unavailable",
                format!("the service behind {} is unavailable", cfg.prefix),
            ))
        }
        Ok(Ok(r)) => Ok(r),
    };
    if let Ok(h) = body_hash.lock() {
        turn_log.set_request_body_sha256(Sha256Hex::from_digest(h.clone().finalize().into()));
    }
    // The call is recorded before anything of the answer reaches the client.
    let resp = match outcome {
        Err(err) => {
            turn_log.status_only(&cfg.audience, 0);
            record(
                &st,
                turn_log,
                TurnStatus::Error {
                    code: err.code().to_owned(),
                },
            )
            .await?;
            return Err(err);
        }
        Ok(r) => {
            turn_log.status_only(&cfg.audience, r.status().as_u16());
            let status = if r.status().is_success() {
                TurnStatus::Ok
            } else {
                TurnStatus::Error {
                    code: format!("http_{}", r.status().as_u16()),
                }
            };
            record(&st, turn_log, status).await?;
            r
        }
    };
    let mut out = Response::builder().status(resp.status());
    if let Some(h) = out.headers_mut() {
        copy_headers(resp.headers(), h);
        if let Ok(v) = HeaderValue::from_str(turn.as_str()) {
            h.insert(HeaderName::from_static(TURN_HEADER), v);
        }
    }
    let stream = resp.bytes_stream().map_err(std::io::Error::other);
    out.body(Body::from_stream(stream)).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "upstream_error",
            "upstream_invalid_response",
            "the downstream response could not be relayed",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_not_copied() {
        let mut from = HeaderMap::new();
        from.insert(
            "connection",
            HeaderValue::from_static("close, x-secret-hop"),
        );
        from.insert("x-secret-hop", HeaderValue::from_static("1"));
        from.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        from.insert("host", HeaderValue::from_static("evil"));
        from.insert("content-type", HeaderValue::from_static("text/plain"));
        let mut to = HeaderMap::new();
        copy_headers(&from, &mut to);
        assert_eq!(to.len(), 1);
        assert!(to.contains_key("content-type"));
    }
}
