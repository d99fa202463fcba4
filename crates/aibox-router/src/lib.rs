//! The OpenAI-compatible inference router.
//!
//! Given a client request body for one of the OpenAI endpoints, the router
//! resolves the requested model to an ordered list of targets (configured
//! upstream plus upstream model name), rewrites only the `model` field and
//! sends the body to the first target that answers. Everything else in the
//! body passes through untouched, so new OpenAI parameters work without a
//! release.
//!
//! Invariants:
//! - The client never chooses the upstream URL: only configured upstreams
//!   are reachable, and redirects are not followed.
//! - A fallback happens only on connect errors, timeouts and 5xx answers, and
//!   only before any byte reached the client. Once a stream has started, a
//!   failure ends it with an error event; it is never retried.
//! - The client's own credentials never go upstream; upstream API keys come
//!   from the config's `api_key_env`.

mod catalog;
mod error;
pub mod sse;
pub mod tracectx;

use std::sync::Arc;
use std::time::Duration;

use aibox_config::{Config, Timeouts};
use aibox_core::RequestId;
use aibox_core::audit::Usage;
use aibox_identity::{ClientCredentials, TokenRequest};
use bytes::Bytes;
use futures_util::StreamExt as _;
use tokio::time::Instant;

pub use catalog::ModelInfo;
pub use error::{AttemptFailure, RouterError};
pub use sse::{EventRewriter, Gate, GateVerdict, OnEnd, Refusal, Relay, StreamEnd, StreamSummary};

/// The OpenAI endpoints the router serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `POST /v1/chat/completions`.
    ChatCompletions,
    /// `POST /v1/completions`.
    Completions,
    /// `POST /v1/embeddings`.
    Embeddings,
}

impl Endpoint {
    /// The path below the upstream's base URL.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/chat/completions",
            Endpoint::Completions => "/completions",
            Endpoint::Embeddings => "/embeddings",
        }
    }

    /// The gateway route, for metrics and logs.
    pub fn route(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/v1/chat/completions",
            Endpoint::Completions => "/v1/completions",
            Endpoint::Embeddings => "/v1/embeddings",
        }
    }

    /// The endpoint's place in per-endpoint tables.
    fn slot(self) -> usize {
        match self {
            Endpoint::ChatCompletions => 0,
            Endpoint::Completions => 1,
            Endpoint::Embeddings => 2,
        }
    }

    fn streams(self) -> bool {
        !matches!(self, Endpoint::Embeddings)
    }
}

/// A configured upstream with its HTTP client.
pub(crate) struct Upstream {
    pub(crate) name: String,
    pub(crate) base_url: String,
    auth_header: Option<http::HeaderValue>,
    service_token: Option<(Arc<ClientCredentials>, TokenRequest)>,
    pub(crate) timeouts: Timeouts,
    pub(crate) client: reqwest::Client,
    /// The endpoints' URLs, parsed once rather than on every request.
    urls: [Option<reqwest::Url>; 3],
}

impl Upstream {
    /// The `Authorization` value for this upstream: its API key, a cached
    /// client-credentials token, or nothing.
    pub(crate) async fn authorization(&self) -> Result<Option<http::HeaderValue>, String> {
        if let Some(h) = &self.auth_header {
            return Ok(Some(h.clone()));
        }
        let Some((cc, req)) = &self.service_token else {
            return Ok(None);
        };
        let token = cc.token(req).await.map_err(|e| {
            tracing::error!(upstream = %self.name, error = %e, "cannot obtain a service token");
            "cannot obtain a service token from the identity provider".to_owned()
        })?;
        let mut v =
            http::HeaderValue::from_str(&format!("Bearer {}", token.expose())).map_err(|_| {
                "the identity provider returned a token that is not a valid header value".to_owned()
            })?;
        v.set_sensitive(true);
        Ok(Some(v))
    }
}

/// The parsed parts of a request that the router looks at.
#[derive(Debug, Clone)]
pub struct RequestInfo {
    /// The model the client asked for.
    pub model: String,
    /// Whether the client asked for a stream.
    pub stream: bool,
}

/// A routed answer.
pub enum Routed {
    /// A complete response body.
    Complete {
        /// HTTP status from the upstream.
        status: http::StatusCode,
        /// The body (JSON).
        body: Bytes,
        /// Token usage, if reported.
        usage: Option<Usage>,
        /// The upstream that answered.
        upstream: String,
        /// The model name sent to it.
        upstream_model: String,
        /// 1-based attempt number.
        attempt: u32,
        /// Earlier targets that failed (fallbacks taken).
        failures: Vec<AttemptFailure>,
    },
    /// A server-sent event stream.
    Stream {
        /// The relay to send as the response body (boxed: it is large, and
        /// moved once per stream).
        relay: Box<Relay>,
        /// The upstream that answered.
        upstream: String,
        /// The model name sent to it.
        upstream_model: String,
        /// 1-based attempt number.
        attempt: u32,
        /// Earlier targets that failed (fallbacks taken).
        failures: Vec<AttemptFailure>,
    },
}

/// One upstream's answer to a health probe.
#[derive(Debug, Clone, serde::Serialize)]
pub struct UpstreamHealth {
    /// The configured name.
    pub name: String,
    /// Whether it answered with a model list.
    pub ok: bool,
    /// How many models it listed.
    pub models: usize,
    /// Why not, without secrets.
    pub error: Option<String>,
    /// How long it took.
    pub latency_ms: u64,
}

/// The router. Cheap to share behind an `Arc`.
pub struct Router {
    upstreams: Vec<Upstream>,
    catalog: catalog::Catalog,
}

pub(crate) use aibox_identity::describe_reqwest;

impl Router {
    /// Builds the router from the validated config.
    pub fn new(
        cfg: &Config,
        service: Option<Arc<ClientCredentials>>,
    ) -> Result<Arc<Self>, RouterError> {
        // reqwest is built without a default TLS provider; install ring once
        // per process (a second install is refused harmlessly).
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let mut upstreams = Vec::with_capacity(cfg.upstreams.len());
        for u in &cfg.upstreams {
            let client = reqwest::Client::builder()
                .connect_timeout(u.timeouts.connect)
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
                .tcp_nodelay(true)
                .pool_idle_timeout(Duration::from_secs(60))
                .build()
                .map_err(|e| RouterError::Protocol {
                    upstream: u.name.clone(),
                    message: format!("cannot build an HTTP client: {}", describe_reqwest(&e)),
                })?;
            let auth_header = match &u.api_key {
                None => None,
                Some(k) => {
                    let mut v = http::HeaderValue::from_str(&format!("Bearer {}", k.expose())).map_err(|_| {
                        RouterError::Protocol {
                            upstream: u.name.clone(),
                            message: format!(
                                "the API key in {} contains characters not allowed in an HTTP header",
                                u.api_key_env.as_deref().unwrap_or("api_key_env")
                            ),
                        }
                    })?;
                    v.set_sensitive(true);
                    Some(v)
                }
            };
            let service_token = match (&u.service_auth, &service) {
                (None, _) => None,
                (Some(t), Some(cc)) => Some((
                    cc.clone(),
                    TokenRequest {
                        resource: t.resource.clone(),
                        scope: t.scope.clone(),
                    },
                )),
                (Some(_), None) => {
                    return Err(RouterError::Protocol {
                        upstream: u.name.clone(),
                        message: "upstreams[].service_auth needs the top-level service_auth client"
                            .into(),
                    });
                }
            };
            let urls = [
                Endpoint::ChatCompletions,
                Endpoint::Completions,
                Endpoint::Embeddings,
            ]
            .map(|e| reqwest::Url::parse(&format!("{}{}", u.base_url, e.path())).ok());
            upstreams.push(Upstream {
                urls,
                name: u.name.clone(),
                base_url: u.base_url.clone(),
                auth_header,
                service_token,
                timeouts: u.timeouts,
                client,
            });
        }
        Ok(Arc::new(Self {
            catalog: catalog::Catalog::new(cfg),
            upstreams,
        }))
    }

    /// Asks every upstream for its model list (`GET /models`, with its
    /// credentials and first-byte timeout), concurrently: the ops API's
    /// upstream health. Nothing is cached or routed by it.
    pub async fn probe_upstreams(&self) -> Vec<UpstreamHealth> {
        futures_util::future::join_all(self.upstreams.iter().map(|up| async move {
            let started = std::time::Instant::now();
            let result = catalog::fetch_models(up).await;
            UpstreamHealth {
                name: up.name.clone(),
                ok: result.is_ok(),
                models: result.as_ref().map_or(0, Vec::len),
                error: result.err().map(|f| f.reason),
                latency_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            }
        }))
        .await
    }

    /// Lists the models a client may ask for.
    pub async fn list_models(&self) -> Result<Vec<ModelInfo>, RouterError> {
        self.catalog.list(&self.upstreams).await
    }

    /// Parses the fields the router needs, refusing bodies that are not a
    /// JSON object with a string `model`.
    pub fn inspect(
        endpoint: Endpoint,
        body: &[u8],
    ) -> Result<(serde_json::Map<String, serde_json::Value>, RequestInfo), RouterError> {
        let value: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| RouterError::BadRequest {
                message: format!("the request body is not valid JSON: {e}"),
                param: None,
            })?;
        let serde_json::Value::Object(map) = value else {
            return Err(RouterError::BadRequest {
                message: "the request body must be a JSON object".into(),
                param: None,
            });
        };
        let model = match map.get("model") {
            Some(serde_json::Value::String(m)) if !m.is_empty() => m.clone(),
            Some(_) => {
                return Err(RouterError::BadRequest {
                    message: "`model` must be a non-empty string".into(),
                    param: Some("model"),
                });
            }
            None => {
                return Err(RouterError::BadRequest {
                    message: "you must provide a model parameter".into(),
                    param: Some("model"),
                });
            }
        };
        let stream = match map.get("stream") {
            None | Some(serde_json::Value::Null) => false,
            Some(serde_json::Value::Bool(b)) => *b,
            Some(_) => {
                return Err(RouterError::BadRequest {
                    message: "`stream` must be a boolean".into(),
                    param: Some("stream"),
                });
            }
        };
        if stream && !endpoint.streams() {
            return Err(RouterError::BadRequest {
                message: "this endpoint does not stream".into(),
                param: Some("stream"),
            });
        }
        Ok((map, RequestInfo { model, stream }))
    }

    /// Routes a request whose body was already inspected.
    pub async fn forward(
        &self,
        endpoint: Endpoint,
        mut body: serde_json::Map<String, serde_json::Value>,
        info: &RequestInfo,
        request_id: &RequestId,
        on_stream_end: OnEnd,
    ) -> Result<Routed, RouterError> {
        let targets = self.catalog.resolve(&info.model, &self.upstreams).await?;
        let hide_usage_event = info.stream && request_usage(&mut body);
        let mut failures = Vec::new();
        let mut on_end = Some(on_stream_end);
        for (i, (upstream_idx, upstream_model)) in targets.iter().enumerate() {
            let attempt = u32::try_from(i + 1).unwrap_or(u32::MAX);
            let Some(up) = self.upstreams.get(*upstream_idx) else {
                continue;
            };
            body.insert(
                "model".into(),
                serde_json::Value::String(upstream_model.clone()),
            );
            let payload = match serde_json::to_vec(&body) {
                Ok(p) => p,
                Err(e) => {
                    return Err(RouterError::BadRequest {
                        message: format!("cannot re-encode the request: {e}"),
                        param: None,
                    });
                }
            };
            match self
                .attempt(up, endpoint, payload, info.stream, request_id)
                .await
            {
                Ok(Answer::Complete { status, body }) => {
                    let usage = if status.is_success() {
                        sse::parse_usage(&body)
                    } else {
                        None
                    };
                    return Ok(Routed::Complete {
                        status,
                        body,
                        usage,
                        upstream: up.name.clone(),
                        upstream_model: upstream_model.clone(),
                        attempt,
                        failures,
                    });
                }
                Ok(Answer::Stream { response, deadline }) => {
                    let Some(cb) = on_end.take() else { break };
                    let relay = Relay::new(
                        response.bytes_stream().boxed(),
                        up.timeouts.idle,
                        deadline,
                        cb,
                        hide_usage_event,
                    );
                    return Ok(Routed::Stream {
                        relay: Box::new(relay),
                        upstream: up.name.clone(),
                        upstream_model: upstream_model.clone(),
                        attempt,
                        failures,
                    });
                }
                Err(Attempt::Retryable(f)) => {
                    tracing::warn!(upstream = %f.upstream, reason = %f.reason, attempt, "upstream attempt failed; trying the next target");
                    failures.push(f);
                }
                Err(Attempt::Fatal(e)) => return Err(e),
            }
        }
        Err(RouterError::Unavailable { attempts: failures })
    }

    async fn attempt(
        &self,
        up: &Upstream,
        endpoint: Endpoint,
        payload: Vec<u8>,
        stream: bool,
        request_id: &RequestId,
    ) -> Result<Answer, Attempt> {
        let started = Instant::now();
        let deadline = started + up.timeouts.total;
        let mut req = match &up.urls[endpoint.slot()] {
            Some(url) => up.client.post(url.clone()),
            // Not a URL after all: reqwest reports why when it is sent.
            None => up
                .client
                .post(format!("{}{}", up.base_url, endpoint.path())),
        };
        req = req
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(
                http::header::ACCEPT,
                if stream {
                    "text/event-stream"
                } else {
                    "application/json"
                },
            )
            .header("x-request-id", request_id.as_str())
            // The model call's client span is the upstream's parent.
            .headers(tracectx::current_headers())
            .body(payload);
        match up.authorization().await {
            Ok(Some(h)) => req = req.header(http::header::AUTHORIZATION, h),
            Ok(None) => {}
            Err(reason) => {
                return Err(Attempt::Retryable(AttemptFailure {
                    upstream: up.name.clone(),
                    reason,
                    timed_out: false,
                }));
            }
        }
        let first_byte = up.timeouts.first_byte.min(up.timeouts.total);
        let retry = |reason: String, timed_out: bool| {
            Attempt::Retryable(AttemptFailure {
                upstream: up.name.clone(),
                reason,
                timed_out,
            })
        };
        let response = match tokio::time::timeout(first_byte, req.send()).await {
            Err(_) => {
                return Err(retry(
                    format!(
                        "no response within {} ms (first_byte_ms)",
                        first_byte.as_millis()
                    ),
                    true,
                ));
            }
            Ok(Err(e)) => return Err(retry(describe_reqwest(&e), e.is_timeout())),
            Ok(Ok(r)) => r,
        };
        let status = response.status();
        if status.is_server_error() {
            return Err(retry(format!("answered HTTP {}", status.as_u16()), false));
        }
        let is_sse = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if stream && status.is_success() && is_sse {
            return Ok(Answer::Stream { response, deadline });
        }
        // A complete body: nothing has reached the client yet, so a timeout
        // or a broken body is still eligible for fallback.
        let body = match read_body(response, up.timeouts.idle, deadline).await {
            Ok(b) => b,
            Err((reason, timed_out)) => return Err(retry(reason, timed_out)),
        };
        if status.is_success() && serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_err() {
            return Err(Attempt::Fatal(RouterError::Protocol {
                upstream: up.name.clone(),
                message: "the body is not valid JSON".into(),
            }));
        }
        Ok(Answer::Complete { status, body })
    }
}

/// Makes a streaming request ask for usage, so that token limits and
/// accounting see every stream. Returns true when the client had not asked
/// for it, in which case the usage-only event must be hidden from it again.
fn request_usage(body: &mut serde_json::Map<String, serde_json::Value>) -> bool {
    let opts = body
        .entry("stream_options")
        .or_insert_with(|| serde_json::Value::Object(serde_json::Map::new()));
    let serde_json::Value::Object(opts) = opts else {
        // A malformed stream_options is the upstream's to refuse; leave it.
        return false;
    };
    if opts.get("include_usage") == Some(&serde_json::Value::Bool(true)) {
        return false;
    }
    opts.insert("include_usage".into(), serde_json::Value::Bool(true));
    true
}

enum Answer {
    Complete {
        status: http::StatusCode,
        body: Bytes,
    },
    Stream {
        response: reqwest::Response,
        deadline: Instant,
    },
}

enum Attempt {
    Retryable(AttemptFailure),
    Fatal(RouterError),
}

/// Upstream bodies larger than this are refused rather than buffered.
const MAX_COMPLETE_BODY: usize = 64 * 1024 * 1024;

async fn read_body(
    response: reqwest::Response,
    idle: Duration,
    deadline: Instant,
) -> Result<Bytes, (String, bool)> {
    let mut stream = response.bytes_stream();
    let mut buf = bytes::BytesMut::new();
    loop {
        let wake = (Instant::now() + idle).min(deadline);
        match tokio::time::timeout_at(wake, stream.next()).await {
            Err(_) => return Err(("the body stalled past idle_ms or total_ms".into(), true)),
            Ok(None) => return Ok(buf.freeze()),
            Ok(Some(Err(e))) => return Err((describe_reqwest(&e), e.is_timeout())),
            Ok(Some(Ok(chunk))) => {
                if buf.len() + chunk.len() > MAX_COMPLETE_BODY {
                    return Err(("the body exceeds 64 MiB".into(), false));
                }
                buf.extend_from_slice(&chunk);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn issue9_fuzz_forwarded_numbers_round_trip() {
        // Found by the `openai_body` fuzz target: without correctly rounded
        // parsing this literal became 8.88888888888889e83, which serialises
        // to a text that parses as 8.888888888888891e83, so the upstream got
        // another number than the one aibox had read.
        let body = format!(
            r#"{{"model": "m", "prompt": ["x"], "max_to!ens": {}5}}"#,
            "8".repeat(83)
        );
        let (map, info) = Router::inspect(Endpoint::Completions, body.as_bytes()).unwrap();
        assert_eq!(info.model, "m");
        let forwarded = serde_json::to_vec(&map).unwrap();
        let back: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&forwarded).unwrap();
        assert_eq!(back, map);
    }
}
