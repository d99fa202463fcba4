//! The OpenAI-compatible routes.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use aibox_core::audit::Usage;
use aibox_core::audit::{Sha256Hex, TurnStatus};
use aibox_core::{Principal, RequestId};
use aibox_router::{
    Endpoint, Gate, GateVerdict, Routed, Router as ModelRouter, StreamEnd, StreamSummary,
};
use aibox_store::UsageRecord;
use axum::body::{Body, Bytes};
use axum::extract::{Extension, FromRequest, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tracing::Instrument as _;

use crate::AppState;
use crate::downstream::TURN_HEADER;
use crate::error::ApiError;
use crate::guard;
use crate::metrics::{ScopeLabels, TokenLabels, UpstreamLabels};
use crate::turn::{TurnLog, record};

/// A JSON request body: the content type is checked before the body is read,
/// and the size limit is reported as an OpenAI error.
pub(crate) struct JsonBody(Bytes);

/// How much of an oversized body is read and discarded before the 413 goes
/// out, and for how long. Closing a socket with unread request bytes makes
/// the kernel send a reset, which can reach the client before the 413 does
/// (clients then report "server disconnected" instead of the error).
const DRAIN_BYTES: usize = 1024 * 1024;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_millis(500);

async fn drain(body: axum::body::Body) {
    use http_body_util::BodyExt as _;
    let mut body = body;
    let mut seen = 0usize;
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, Bytes::len);
            if seen > DRAIN_BYTES {
                break;
            }
        }
    })
    .await;
}

impl FromRequest<Arc<AppState>> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        let ct = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let essence = ct.split(';').next().unwrap_or("").trim();
        if !essence.eq_ignore_ascii_case("application/json") {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "invalid_request_error",
                "unsupported_media_type",
                format!(
                    "the Content-Type must be application/json, not '{}'",
                    if ct.is_empty() { "(none)" } else { ct }
                ),
            ));
        }
        let limit = state.config.server.max_body_bytes;
        let (_, body) = req.into_parts();
        let mut body = body;
        let mut buf = bytes::BytesMut::new();
        let mut too_large = false;
        {
            use http_body_util::BodyExt as _;
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| {
                    ApiError::bad_request(format!("cannot read the request body: {e}"), None)
                })?;
                if let Some(data) = frame.data_ref() {
                    if buf.len() + data.len() > limit {
                        too_large = true;
                        break;
                    }
                    buf.extend_from_slice(data);
                }
            }
        }
        if too_large {
            drain(body).await;
        }
        match if too_large {
            Err(StatusCode::PAYLOAD_TOO_LARGE)
        } else {
            Ok(buf.freeze())
        } {
            Ok(b) => Ok(JsonBody(b)),
            Err(_) => Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                "request_too_large",
                "the request body exceeds server.max_body_bytes (AIBOX_MAX_BODY_BYTES)",
            )),
        }
    }
}

pub(crate) async fn chat_completions(
    State(st): State<Arc<AppState>>,
    Extension(rid): Extension<RequestId>,
    Extension(principal): Extension<Principal>,
    body: JsonBody,
) -> Result<Response, ApiError> {
    proxy(st, Endpoint::ChatCompletions, rid, principal, body.0).await
}

pub(crate) async fn completions(
    State(st): State<Arc<AppState>>,
    Extension(rid): Extension<RequestId>,
    Extension(principal): Extension<Principal>,
    body: JsonBody,
) -> Result<Response, ApiError> {
    proxy(st, Endpoint::Completions, rid, principal, body.0).await
}

pub(crate) async fn embeddings(
    State(st): State<Arc<AppState>>,
    Extension(rid): Extension<RequestId>,
    Extension(principal): Extension<Principal>,
    body: JsonBody,
) -> Result<Response, ApiError> {
    proxy(st, Endpoint::Embeddings, rid, principal, body.0).await
}

pub(crate) async fn models(State(st): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let data = st.router.load_full().list_models().await?;
    let body = serde_json::json!({ "object": "list", "data": data });
    Ok(json_response(StatusCode::OK, Bytes::from(body.to_string())))
}

pub(crate) async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "not_found",
        format!(
            "no route {} {}; the API lives under /v1",
            req.method(),
            req.uri().path()
        ),
    )
}

pub(crate) async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        "method_not_allowed",
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    )
}

fn json_response(status: StatusCode, body: Bytes) -> Response {
    let mut r = (status, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Records usage in the store, the token metrics and the token limits.
fn account(
    st: &Arc<AppState>,
    principal: &Principal,
    model: &str,
    upstream: &str,
    rid: &RequestId,
    usage: Usage,
    span: &tracing::Span,
) {
    crate::telemetry::record_usage(span, upstream, usage);
    st.store.record_usage(UsageRecord {
        at_ms: now_ms(),
        tenant: principal.tenant.clone(),
        user: principal.user.clone(),
        model: model.to_owned(),
        upstream: upstream.to_owned(),
        request_id: rid.as_str().to_owned(),
        usage,
    });
    for (kind, n) in [
        ("prompt", usage.prompt_tokens),
        ("completion", usage.completion_tokens),
    ] {
        st.metrics
            .tokens
            .get_or_create(&TokenLabels {
                tenant: principal.tenant.as_str().to_owned(),
                model: model.to_owned(),
                kind: kind.to_owned(),
            })
            .inc_by(n);
    }
    let total = usage.total_tokens;
    if st.limiter.record_tokens_in_place(principal, total) {
        return;
    }
    // Token limits in Redis: recording them must not hold up the response,
    // and a summary can arrive from a drop outside a task.
    let limiter = st.limiter.clone();
    let principal = principal.clone();
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(async move { limiter.record_tokens(&principal, total).await });
    }
}

async fn proxy(
    st: Arc<AppState>,
    endpoint: Endpoint,
    rid: RequestId,
    principal: Principal,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (map, info) = ModelRouter::inspect(endpoint, &body)?;
    if let Err(denied) = st.limiter.admit(&principal).await {
        let scope = match denied.scope {
            aibox_limits::Scope::Tenant => "tenant",
            aibox_limits::Scope::User => "user",
        };
        st.metrics
            .rate_limited
            .get_or_create(&ScopeLabels {
                scope: scope.to_owned(),
            })
            .inc();
        return Err(denied.into());
    }

    let mut turn = TurnLog::start(
        &principal,
        &rid,
        endpoint.route(),
        Some(&info.model),
        Sha256Hex::of(&body),
    );
    let turn_id = turn.turn().clone();
    let mut map = map;
    let span = crate::telemetry::model_span(endpoint, &info.model, &principal, &turn_id);
    crate::telemetry::record_input(&span, st.config.telemetry.capture_content, &map);
    let guardrail = st.guardrail.current();
    let result = async {
        match guard_input(
            &st, &guardrail, endpoint, &rid, &principal, &mut map, &info, &mut turn,
        )
        .await
        {
            Ok(vault) => {
                run_turn(
                    &st, endpoint, &rid, &principal, map, &info, turn, guardrail, vault,
                )
                .await
            }
            Err(e) => {
                let status = TurnStatus::Error {
                    code: e.code().to_owned(),
                };
                match record(&st, turn, status).await {
                    Ok(()) => Err(e),
                    Err(audit) => Err(audit),
                }
            }
        }
    }
    .instrument(span.clone())
    .await;
    if let Err(e) = &result {
        crate::telemetry::record_error(&span, e.code());
    }
    let mut resp = match result {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    resp.extensions_mut()
        .insert(crate::metrics::ModelLabel(info.model.clone()));
    if let Ok(v) = HeaderValue::from_str(turn_id.as_str()) {
        resp.headers_mut().insert(TURN_HEADER, v);
    }
    Ok(resp)
}

/// What the stream callback needs to finish the turn.
type StreamTurn = (TurnLog, String, String, u32);

/// Scans (and redacts) the request, then runs the input critique when the
/// constitution asks for it. Verdicts go into the turn either way.
#[allow(clippy::too_many_arguments)]
async fn guard_input(
    st: &Arc<AppState>,
    g: &aibox_guardrail::Guardrail,
    endpoint: Endpoint,
    rid: &RequestId,
    principal: &Principal,
    map: &mut serde_json::Map<String, serde_json::Value>,
    info: &aibox_router::RequestInfo,
    turn: &mut TurnLog,
) -> Result<aibox_guardrail::TurnVault, ApiError> {
    let tenant = principal.tenant.as_str();
    let scan = match guard::scan_input(g, tenant, endpoint, map) {
        Ok(scan) => scan,
        Err(blocked) => {
            for e in blocked.events {
                turn.event(e);
            }
            st.metrics.guardrail_blocks.inc();
            return Err(blocked.error);
        }
    };
    for e in scan.events {
        turn.event(e);
    }
    if g.enabled_for(tenant)
        && g.critique_settings(tenant).input
        && !g.principles().is_empty()
        && let Some(text) = guard::last_user_text(endpoint, map)
    {
        let mut events = Vec::new();
        let judged = guard::critique(
            &st.router.load_full(),
            g,
            tenant,
            aibox_core::audit::GuardStage::Input,
            &text,
            &info.model,
            rid,
            &mut events,
        )
        .await;
        for e in events {
            turn.event(e);
        }
        if let guard::Judged::Refuse(e) = judged {
            st.metrics.guardrail_blocks.inc();
            return Err(e);
        }
    }
    Ok(scan.vault)
}

#[allow(clippy::too_many_arguments)]
async fn run_turn(
    st: &Arc<AppState>,
    endpoint: Endpoint,
    rid: &RequestId,
    principal: &Principal,
    map: serde_json::Map<String, serde_json::Value>,
    info: &aibox_router::RequestInfo,
    mut turn: TurnLog,
    guardrail: Arc<aibox_guardrail::Guardrail>,
    mut vault: aibox_guardrail::TurnVault,
) -> Result<Response, ApiError> {
    let tenant = principal.tenant.as_str();
    let guarded = guardrail.enabled_for(tenant) && endpoint != Endpoint::Embeddings;
    let guard_events = guard::SharedEvents::default();
    // With an output critique, a streamed answer is held whole and judged at
    // the stream's gate, before anything of it reaches the client.
    let critique_stream =
        guarded && guardrail.critique_settings(tenant).output && !guardrail.principles().is_empty();
    let held_answer = guard::SharedAnswer::default();
    // The stream's turn is finished by the relay's callback, which needs the
    // turn log; the slot hands it over once a stream has started.
    let stream_turn: Arc<std::sync::Mutex<Option<StreamTurn>>> =
        Arc::new(std::sync::Mutex::new(None));
    let on_end: aibox_router::OnEnd = {
        let st = st.clone();
        let principal = principal.clone();
        let model = info.model.clone();
        let rid = rid.clone();
        let slot = stream_turn.clone();
        let guard_events = guard_events.clone();
        let critique = critique_stream.then(|| (guardrail.clone(), held_answer.clone(), endpoint));
        // The guard lives in the callback, which the router drops when no
        // stream starts, the relay drops when a stream ends, and a cancelled
        // handler drops with the router future: every path decrements once.
        let inflight = Inflight::enter(&st.metrics.inflight);
        // The model call's span lives until the stream ends.
        let span = tracing::Span::current();
        Box::new(move |summary: StreamSummary| -> Option<Gate> {
            let _inflight = inflight;
            let (mut turn, upstream, upstream_model, attempt) = slot.lock().ok()?.take()?;
            if let Ok(mut ev) = guard_events.lock() {
                for e in ev.drain(..) {
                    turn.event(e);
                }
            }
            let status = match &summary.end {
                StreamEnd::Completed => TurnStatus::Ok,
                StreamEnd::Refused(r) => {
                    st.metrics.guardrail_blocks.inc();
                    tracing::info!(request_id = %rid, code = %r.code, "stream cut by the output guardrail");
                    TurnStatus::Error {
                        code: r.code.clone(),
                    }
                }
                StreamEnd::UpstreamFailed(reason) => {
                    st.metrics
                        .upstream_errors
                        .get_or_create(&UpstreamLabels {
                            upstream: upstream.clone(),
                        })
                        .inc();
                    tracing::warn!(request_id = %rid, upstream = %upstream, reason = %reason, "stream ended with an upstream error");
                    TurnStatus::Error {
                        code: "upstream_stream_error".into(),
                    }
                }
                StreamEnd::ClientGone => {
                    tracing::info!(request_id = %rid, upstream = %upstream, "client went away; upstream request cancelled");
                    TurnStatus::ClientGone
                }
            };
            crate::telemetry::record_response_model(&span, &upstream_model);
            if let Some(u) = summary.usage {
                account(&st, &principal, &model, &upstream, &rid, u, &span);
            }
            turn.answer(
                &upstream,
                &upstream_model,
                200,
                attempt,
                Sha256Hex::from_digest(summary.sha256),
                summary.usage,
            );
            let completed = matches!(summary.end, StreamEnd::Completed);
            let (tx, rx) = tokio::sync::oneshot::channel();
            let st2 = st.clone();
            let task = async move {
                let mut status = status;
                let mut verdict = GateVerdict::Release;
                if let Some((g, answer, endpoint)) = critique.filter(|_| completed) {
                    let held = answer
                        .lock()
                        .ok()
                        .and_then(|mut a| a.take())
                        .unwrap_or_default();
                    let mut events = Vec::new();
                    let judged = guard::critique(
                        &st2.router.load_full(),
                        &g,
                        principal.tenant.as_str(),
                        aibox_core::audit::GuardStage::Output,
                        &held.text,
                        &model,
                        &rid,
                        &mut events,
                    )
                    .await;
                    for e in events {
                        turn.event(e);
                    }
                    match judged {
                        guard::Judged::Pass => {}
                        guard::Judged::Revise(r) => {
                            verdict = GateVerdict::Replace(guard::revision_stream(
                                endpoint,
                                held.template,
                                &r,
                            ));
                        }
                        guard::Judged::Refuse(e) => {
                            st2.metrics.guardrail_blocks.inc();
                            status = TurnStatus::Error {
                                code: e.code().into(),
                            };
                            verdict = GateVerdict::Refuse {
                                kind: e.kind().into(),
                                refusal: aibox_router::Refusal {
                                    code: e.code().into(),
                                    message: e.message().into(),
                                },
                            };
                        }
                    }
                }
                let verdict = match record(&st2, turn, status).await {
                    Ok(()) => verdict,
                    Err(e) => GateVerdict::Refuse {
                        kind: e.kind().into(),
                        refusal: aibox_router::Refusal {
                            code: e.code().into(),
                            message: e.message().into(),
                        },
                    },
                };
                let _ = tx.send(verdict);
            };
            // The callback can run from a drop outside a task; without a
            // runtime there is nothing to record with, and the gate fails.
            tokio::runtime::Handle::try_current().ok()?.spawn(task);
            completed.then_some(rx)
        })
    };
    let routed = st
        .router
        .load_full()
        .forward(endpoint, map, info, rid, on_end)
        .await;
    match routed {
        Err(e) => {
            if let aibox_router::RouterError::Unavailable { attempts } = &e {
                for a in attempts {
                    st.metrics
                        .upstream_errors
                        .get_or_create(&UpstreamLabels {
                            upstream: a.upstream.clone(),
                        })
                        .inc();
                }
                turn.failures(attempts);
            }
            let err: ApiError = e.into();
            record(
                st,
                turn,
                TurnStatus::Error {
                    code: err.code().to_owned(),
                },
            )
            .await?;
            Err(err)
        }
        Ok(Routed::Complete {
            status,
            body,
            usage,
            upstream,
            upstream_model,
            attempt,
            failures,
        }) => {
            let span = tracing::Span::current();
            crate::telemetry::record_response_model(&span, &upstream_model);
            if let Some(u) = usage {
                account(st, principal, &info.model, &upstream, rid, u, &span);
            }
            turn.failures(&failures);
            turn.answer(
                &upstream,
                &upstream_model,
                status.as_u16(),
                attempt,
                Sha256Hex::of(&body),
                usage,
            );
            let body = if status.is_success() && guarded {
                match guard_output(
                    st,
                    &guardrail,
                    endpoint,
                    rid,
                    tenant,
                    &info.model,
                    body,
                    &mut vault,
                    &mut turn,
                )
                .await
                {
                    Ok(b) => b,
                    Err(e) => {
                        record(
                            st,
                            turn,
                            TurnStatus::Error {
                                code: e.code().to_owned(),
                            },
                        )
                        .await?;
                        return Err(e);
                    }
                }
            } else {
                body
            };
            if status.is_success() || is_openai_error(&body) {
                let outcome = if status.is_success() {
                    TurnStatus::Ok
                } else {
                    TurnStatus::Error {
                        code: "upstream_error".into(),
                    }
                };
                record(st, turn, outcome).await?;
                crate::telemetry::record_output(
                    &tracing::Span::current(),
                    st.config.telemetry.capture_content,
                    &body,
                );
                Ok(json_response(status, body))
            } else {
                let err = ApiError::new(
                    status,
                    "upstream_error",
                    "upstream_error",
                    format!(
                        "upstream '{upstream}' answered HTTP {} without an OpenAI error object",
                        status.as_u16()
                    ),
                );
                record(
                    st,
                    turn,
                    TurnStatus::Error {
                        code: "upstream_error".into(),
                    },
                )
                .await?;
                Err(err)
            }
        }
        Ok(Routed::Stream {
            relay,
            upstream,
            upstream_model,
            attempt,
            failures,
        }) => {
            turn.failures(&failures);
            if let Ok(mut slot) = stream_turn.lock() {
                *slot = Some((turn, upstream, upstream_model, attempt));
            }
            let mut relay = relay;
            if guarded {
                let sg = guard::StreamGuard::new(guardrail, tenant, endpoint, vault, guard_events);
                relay.set_rewriter(Box::new(if critique_stream {
                    sg.hold_for_critique(held_answer)
                } else {
                    sg
                }));
            }
            let mut r = Response::new(Body::from_stream(relay));
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            );
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            h.insert("x-accel-buffering", HeaderValue::from_static("no"));
            Ok(r)
        }
    }
}

/// Scans a complete answer and runs the output critique when the
/// constitution asks for it; returns the body to send.
#[allow(clippy::too_many_arguments)]
async fn guard_output(
    st: &Arc<AppState>,
    g: &aibox_guardrail::Guardrail,
    endpoint: Endpoint,
    rid: &RequestId,
    tenant: &str,
    model: &str,
    body: Bytes,
    vault: &mut aibox_guardrail::TurnVault,
    turn: &mut TurnLog,
) -> Result<Bytes, ApiError> {
    let body = match guard::scan_output(g, tenant, endpoint, body, vault) {
        Ok((body, events)) => {
            for e in events {
                turn.event(e);
            }
            body
        }
        Err(blocked) => {
            for e in blocked.events {
                turn.event(e);
            }
            st.metrics.guardrail_blocks.inc();
            return Err(blocked.error);
        }
    };
    // Without principles there is nothing to judge against (the built-in
    // default has none), so no judge call is made.
    if !g.critique_settings(tenant).output || g.principles().is_empty() {
        return Ok(body);
    }
    let Some(text) = guard::answer_text(endpoint, &body) else {
        return Ok(body);
    };
    let mut events = Vec::new();
    let judged = guard::critique(
        &st.router.load_full(),
        g,
        tenant,
        aibox_core::audit::GuardStage::Output,
        &text,
        model,
        rid,
        &mut events,
    )
    .await;
    for e in events {
        turn.event(e);
    }
    match judged {
        guard::Judged::Pass => Ok(body),
        guard::Judged::Revise(revision) => {
            Ok(guard::replace_answer(endpoint, &body, &revision).unwrap_or(body))
        }
        guard::Judged::Refuse(e) => {
            st.metrics.guardrail_blocks.inc();
            Err(e)
        }
    }
}

/// Counts a request in the in-flight gauge until dropped.
struct Inflight(prometheus_client::metrics::gauge::Gauge);

impl Inflight {
    fn enter(g: &prometheus_client::metrics::gauge::Gauge) -> Self {
        g.inc();
        Self(g.clone())
    }
}

impl Drop for Inflight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn is_openai_error(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .is_some_and(|v| v.get("error").is_some_and(serde_json::Value::is_object))
}
