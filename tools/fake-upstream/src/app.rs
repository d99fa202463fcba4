//! The HTTP router: OpenAI endpoints, fault injection, and test endpoints.
//!
//! Handlers do the minimum of work per request (one JSON parse, one
//! serialization per response object or chunk, relaxed atomics) because this
//! server is the "direct upstream" baseline in benchmarks and must never be
//! the bottleneck it is compared against.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use serde_json::{Map, Value, json};

use crate::sse::{self, End, Plan};
use crate::stats::{Stats, StreamGuard};
use crate::wire::{
    self, ApiError, AssistantMessage, ChatChoice, ChatChunk, ChatChunkChoice, ChatCompletion,
    Delta, Embedding, EmbeddingList, EmbeddingUsage, EmbeddingVector, Input, TextChoice,
    TextCompletion, Usage,
};

/// Number of content chunks sent by `fault-slow-stream` (one minute at 100 ms).
const SLOW_STREAM_CHUNKS: usize = 600;
/// Interval between content chunks of `fault-slow-stream`.
const SLOW_STREAM_INTERVAL: Duration = Duration::from_millis(100);
/// Number of content chunks sent by `fault-reset-mid-stream` before aborting.
const RESET_AFTER_CHUNKS: usize = 2;
/// Embedding size when the request does not ask for `dimensions`.
const DEFAULT_DIMENSIONS: usize = 8;
/// Upper bound on `dimensions`, so a request cannot make the fake allocate
/// without limit.
const MAX_DIMENSIONS: usize = 8192;
/// Request bodies up to this size are accepted; axum's 2 MiB default is too
/// small for long-context benchmark prompts.
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// Settings of a fake upstream instance.
#[derive(Clone, Debug)]
pub struct Config {
    /// Prefix of every reply (`"{name}: {prompt}"`) and `owned_by` of models,
    /// so tests can tell which upstream answered.
    pub name: String,
    /// Model ids listed by `GET /v1/models`.
    pub models: Vec<String>,
    /// Delay before the response of `fault-slow-first-byte` requests.
    pub slow_first_byte: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            name: "fake".to_owned(),
            models: vec!["fake-model".to_owned()],
            slow_first_byte: Duration::from_millis(3000),
        }
    }
}

/// State shared by all handlers.
struct Shared {
    name: String,
    slow_first_byte: Duration,
    /// The `/v1/models` body never changes, so it is rendered once.
    models_body: Bytes,
    next_id: AtomicU64,
    stats: Arc<Stats>,
}

type Ctx = State<Arc<Shared>>;

/// Behaviour selected by the request's `model` field.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fault {
    None,
    ServerError,
    SlowFirstByte,
    Malformed,
    ResetMidStream,
    NoDone,
    SlowStream,
}

impl Fault {
    fn of(model: &str) -> Self {
        match model {
            "fault-500" => Self::ServerError,
            "fault-slow-first-byte" => Self::SlowFirstByte,
            "fault-malformed" => Self::Malformed,
            "fault-reset-mid-stream" => Self::ResetMidStream,
            "fault-no-done" => Self::NoDone,
            "fault-slow-stream" => Self::SlowStream,
            _ => Self::None,
        }
    }
}

/// A made-up AWS access key id that `leak-secret` puts in its answer, for
/// output guardrail tests (never a real credential).
pub const LEAKED_KEY: &str = "AKIAQ3EGRDQYB7NXPL2Q";

/// Fixed answers of scripted models, for guardrail tests: `leak-secret`
/// answers with a credential the prompt did not contain, and `judge-allow`,
/// `judge-block`, `judge-revise` answer like a constitutional critique judge
/// (principle `p1`).
fn scripted_reply(model: &str) -> Option<String> {
    Some(match model {
        "leak-secret" => format!(
            "Sure. The deploy key for the staging bucket is {LEAKED_KEY} and you should rotate it after use. That is all I know."
        ),
        "judge-allow" => r#"{"verdict":"allow","principle":null,"reason":"complies"}"#.to_owned(),
        "judge-block" => {
            r#"{"verdict":"block","principle":"p1","reason":"violates P1"}"#.to_owned()
        }
        "judge-revise" => r#"```json
{"verdict":"revise","principle":"p1","reason":"too blunt","revision":"A revised, compliant answer."}
```"#
            .to_owned(),
        "judge-garbage" => "I think it is fine?".to_owned(),
        _ => return None,
    })
}

/// The OpenAI endpoints that accept a POST body.
#[derive(Clone, Copy)]
enum Endpoint {
    Chat,
    Completions,
    Embeddings,
}

/// Builds the router serving the OpenAI endpoints and `/_stats`, `/_reset`.
pub fn router(config: Config) -> Router {
    let models: Vec<Value> = config
        .models
        .iter()
        .map(|id| {
            json!({
                "id": id,
                "object": "model",
                "created": 1_700_000_000,
                "owned_by": config.name,
            })
        })
        .collect();
    let models_body = Bytes::from(json!({ "object": "list", "data": models }).to_string());
    let shared = Arc::new(Shared {
        name: config.name,
        slow_first_byte: config.slow_first_byte,
        models_body,
        next_id: AtomicU64::new(1),
        stats: Arc::new(Stats::default()),
    });
    Router::new()
        .route("/v1/models", get(list_models))
        .route(
            "/v1/chat/completions",
            post(|ctx: Ctx, headers: HeaderMap, body: Bytes| {
                handle(ctx, headers, body, Endpoint::Chat)
            }),
        )
        .route(
            "/v1/completions",
            post(|ctx: Ctx, headers: HeaderMap, body: Bytes| {
                handle(ctx, headers, body, Endpoint::Completions)
            }),
        )
        .route(
            "/v1/embeddings",
            post(|ctx: Ctx, headers: HeaderMap, body: Bytes| {
                handle(ctx, headers, body, Endpoint::Embeddings)
            }),
        )
        .route("/_stats", get(stats))
        .route("/_reset", post(reset))
        .fallback(fallback)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(shared)
}

async fn list_models(State(shared): Ctx) -> Response {
    wire::json_response(StatusCode::OK, shared.models_body.clone())
}

async fn stats(State(shared): Ctx) -> Response {
    axum::Json(shared.stats.snapshot()).into_response()
}

async fn reset(State(shared): Ctx) -> StatusCode {
    shared.stats.reset();
    StatusCode::NO_CONTENT
}

/// Unknown routes get OpenAI's 404 error shape; POSTs under `/v1` still count
/// as requests so tests can see that the gateway forwarded them.
async fn fallback(
    State(shared): Ctx,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if method == Method::POST && uri.path().starts_with("/v1/") {
        shared.stats.record(&headers, &body);
    }
    ApiError::not_found(format!("Invalid URL ({method} {})", uri.path())).into_response()
}

/// Common entry of the POST endpoints: records the request, parses the body,
/// applies the fault chosen by `model`, then dispatches.
async fn handle(
    State(shared): Ctx,
    headers: HeaderMap,
    body: Bytes,
    endpoint: Endpoint,
) -> Response {
    shared.stats.record(&headers, &body);
    let request: Value = match serde_json::from_slice(&body) {
        Ok(value) => value,
        Err(err) => {
            return ApiError::invalid(
                format!("We could not parse the JSON body of your request. ({err})"),
                None,
            )
            .into_response();
        }
    };
    let Some(request) = request.as_object() else {
        return ApiError::invalid("The request body must be a JSON object.", None).into_response();
    };
    let Some(model) = request.get("model").and_then(Value::as_str) else {
        return ApiError::invalid("you must provide a model parameter", Some("model"))
            .into_response();
    };
    let fault = Fault::of(model);
    match fault {
        Fault::ServerError => {
            return ApiError::server(
                "The server had an error while processing your request. (fake-upstream fault-500)",
            )
            .into_response();
        }
        Fault::Malformed => {
            return wire::json_response(
                StatusCode::OK,
                Bytes::from_static(b"{\"id\":\"x\",\"choices\":["),
            );
        }
        Fault::SlowFirstByte => tokio::time::sleep(shared.slow_first_byte).await,
        _ => {}
    }
    let result = match endpoint {
        Endpoint::Chat => chat(&shared, request, model, fault),
        Endpoint::Completions => completions(&shared, request, model, fault),
        Endpoint::Embeddings => embeddings(request, model, fault),
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

/// Whether the request asked for SSE, and for a trailing usage chunk.
fn stream_flags(request: &Map<String, Value>) -> (bool, bool) {
    let stream = request.get("stream").and_then(Value::as_bool) == Some(true);
    let include_usage = request
        .get("stream_options")
        .and_then(|options| options.get("include_usage"))
        .and_then(Value::as_bool)
        == Some(true);
    (stream, include_usage)
}

/// Content pieces of a stream as `(choice index, text)`, shaped by the fault:
/// the reply's words normally, exactly two for `fault-reset-mid-stream`, and
/// 600 cycled words for `fault-slow-stream`.
fn stream_pieces<'a>(replies: &'a [String], fault: Fault) -> Vec<(u32, Cow<'a, str>)> {
    let normal = replies.iter().zip(0u32..).flat_map(|(reply, index)| {
        wire::pieces(reply)
            .into_iter()
            .map(move |piece| (index, Cow::Borrowed(piece)))
    });
    match fault {
        Fault::ResetMidStream => normal.cycle().take(RESET_AFTER_CHUNKS).collect(),
        Fault::SlowStream => {
            let words: Vec<&str> = replies.iter().flat_map(|r| r.split_whitespace()).collect();
            if words.is_empty() {
                return Vec::new();
            }
            (0..SLOW_STREAM_CHUNKS)
                .map(|i| {
                    let word = words[i % words.len()];
                    let text = if i + 1 == SLOW_STREAM_CHUNKS {
                        word.to_owned()
                    } else {
                        format!("{word} ")
                    };
                    (0, Cow::Owned(text))
                })
                .collect()
        }
        _ => normal.collect(),
    }
}

/// Assembles a stream plan from rendered chunks according to the fault.
struct StreamShape {
    fault: Fault,
    plan: Plan,
}

impl StreamShape {
    fn new(fault: Fault) -> Self {
        let end = if fault == Fault::ResetMidStream {
            End::Abort
        } else {
            End::Clean
        };
        Self {
            fault,
            plan: Plan::new(end),
        }
    }

    fn content(&mut self, event: Bytes) {
        if self.fault == Fault::SlowStream {
            self.plan.push_after(SLOW_STREAM_INTERVAL, event);
        } else {
            self.plan.push(event);
        }
    }

    /// Whether the finish, usage and `[DONE]` events are sent at all.
    fn has_tail(&self) -> bool {
        self.fault != Fault::ResetMidStream
    }

    fn done(&mut self) {
        if self.fault != Fault::NoDone && self.has_tail() {
            self.plan.push(Bytes::from_static(wire::DONE_EVENT));
        }
    }

    fn into_response(self, stats: &Arc<Stats>) -> Response {
        let guard = StreamGuard::new(Arc::clone(stats));
        let mut response = Response::new(sse::body(self.plan, Some(guard)));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        response
    }
}

/// A 200 JSON response that stops halfway through its body and then aborts
/// the connection, for `fault-reset-mid-stream` without streaming.
fn truncated_then_abort(full: &Bytes) -> Response {
    let mut plan = Plan::new(End::Abort);
    plan.push(full.slice(..full.len() / 2));
    let mut response = Response::new(sse::body(plan, None));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// A complete JSON body, or its truncated-then-aborted variant.
fn json_or_abort(body: Bytes, fault: Fault) -> Response {
    if fault == Fault::ResetMidStream {
        truncated_then_abort(&body)
    } else {
        wire::json_response(StatusCode::OK, body)
    }
}

/// The single choice of a chat chunk.
fn choice<'a>(delta: Delta<'a>, finish_reason: Option<&'static str>) -> ChatChunkChoice<'a> {
    ChatChunkChoice {
        index: 0,
        delta,
        logprobs: (),
        finish_reason,
    }
}

fn chat(
    shared: &Shared,
    request: &Map<String, Value>,
    model: &str,
    fault: Fault,
) -> Result<Response, ApiError> {
    let messages = request
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            ApiError::invalid("Missing required parameter: 'messages'.", Some("messages"))
        })?;
    let mut prompt_tokens = 0;
    let mut last = Cow::Borrowed("");
    for message in messages {
        let text = wire::content_text(message.get("content"));
        prompt_tokens += wire::count_words(&text);
        last = text;
    }
    let reply = scripted_reply(model).unwrap_or_else(|| format!("{}: {}", shared.name, last));
    let (stream, include_usage) = stream_flags(request);
    let id = format!(
        "chatcmpl-fake-{}",
        shared.next_id.fetch_add(1, Ordering::Relaxed)
    );
    let created = wire::unix_now();

    if !stream {
        let usage = Usage::new(prompt_tokens, wire::count_words(&reply));
        let body = wire::to_json(&ChatCompletion {
            id: &id,
            object: "chat.completion",
            created,
            model,
            choices: [ChatChoice {
                index: 0,
                message: AssistantMessage {
                    role: "assistant",
                    content: &reply,
                },
                logprobs: (),
                finish_reason: "stop",
            }],
            usage,
        })?;
        return Ok(json_or_abort(body, fault));
    }

    let replies = [reply];
    let pieces = stream_pieces(&replies, fault);
    let usage = Usage::new(
        prompt_tokens,
        pieces.iter().map(|(_, text)| wire::count_words(text)).sum(),
    );
    // OpenAI sends `"usage": null` on every chunk once usage is requested.
    let usage_field = include_usage.then_some(None);
    let chunk = |choices: &[ChatChunkChoice<'_>], usage: Option<Option<Usage>>| {
        wire::sse_event(&ChatChunk {
            id: &id,
            object: "chat.completion.chunk",
            created,
            model,
            choices,
            usage,
        })
    };

    let mut shape = StreamShape::new(fault);
    let role = Delta {
        role: Some("assistant"),
        content: Some(""),
    };
    shape.plan.push(chunk(&[choice(role, None)], usage_field)?);
    for (_, text) in &pieces {
        let delta = Delta {
            role: None,
            content: Some(text),
        };
        shape.content(chunk(&[choice(delta, None)], usage_field)?);
    }
    if shape.has_tail() {
        shape.plan.push(chunk(
            &[choice(Delta::default(), Some("stop"))],
            usage_field,
        )?);
        if include_usage {
            shape.plan.push(chunk(&[], Some(Some(usage)))?);
        }
    }
    shape.done();
    Ok(shape.into_response(&shared.stats))
}

fn completions(
    shared: &Shared,
    request: &Map<String, Value>,
    model: &str,
    fault: Fault,
) -> Result<Response, ApiError> {
    let prompts = match request.get("prompt") {
        // OpenAI defaults a missing prompt to the end-of-text token; an empty
        // prompt is the closest text equivalent.
        None | Some(Value::Null) => vec![Input::Text("")],
        Some(value) => wire::parse_inputs(value)
            .filter(|inputs| !inputs.is_empty())
            .ok_or_else(|| {
                ApiError::invalid(
                    "'prompt' must be a string, an array of strings, or an array of token arrays.",
                    Some("prompt"),
                )
            })?,
    };
    let prompt_tokens = prompts.iter().map(Input::tokens).sum();
    let replies: Vec<String> = prompts
        .iter()
        .map(|prompt| format!("{}: {}", shared.name, prompt.text()))
        .collect();
    let (stream, include_usage) = stream_flags(request);
    let id = format!(
        "cmpl-fake-{}",
        shared.next_id.fetch_add(1, Ordering::Relaxed)
    );
    let created = wire::unix_now();
    let chunk = |choices: &[TextChoice<'_>], usage: Option<Option<Usage>>| {
        wire::sse_event(&TextCompletion {
            id: &id,
            object: "text_completion",
            created,
            model,
            choices,
            usage,
        })
    };

    if !stream {
        let completion_tokens = replies.iter().map(|r| wire::count_words(r)).sum();
        let choices: Vec<TextChoice<'_>> = replies
            .iter()
            .zip(0u32..)
            .map(|(reply, index)| TextChoice {
                text: reply,
                index,
                logprobs: (),
                finish_reason: Some("stop"),
            })
            .collect();
        let body = wire::to_json(&TextCompletion {
            id: &id,
            object: "text_completion",
            created,
            model,
            choices: &choices,
            usage: Some(Some(Usage::new(prompt_tokens, completion_tokens))),
        })?;
        return Ok(json_or_abort(body, fault));
    }

    let pieces = stream_pieces(&replies, fault);
    let usage = Usage::new(
        prompt_tokens,
        pieces.iter().map(|(_, text)| wire::count_words(text)).sum(),
    );
    let usage_field = include_usage.then_some(None);
    let mut shape = StreamShape::new(fault);
    for (index, text) in &pieces {
        let choice = TextChoice {
            text,
            index: *index,
            logprobs: (),
            finish_reason: None,
        };
        shape.content(chunk(&[choice], usage_field)?);
    }
    if shape.has_tail() {
        for index in (0u32..).take(replies.len()) {
            let choice = TextChoice {
                text: "",
                index,
                logprobs: (),
                finish_reason: Some("stop"),
            };
            shape.plan.push(chunk(&[choice], usage_field)?);
        }
        if include_usage {
            shape.plan.push(chunk(&[], Some(Some(usage)))?);
        }
    }
    shape.done();
    Ok(shape.into_response(&shared.stats))
}

fn embeddings(
    request: &Map<String, Value>,
    model: &str,
    fault: Fault,
) -> Result<Response, ApiError> {
    let inputs = request
        .get("input")
        .and_then(wire::parse_inputs)
        .filter(|inputs| !inputs.is_empty())
        .ok_or_else(|| {
            ApiError::invalid(
                "'input' must be a non-empty string, array of strings, or array of token arrays.",
                Some("input"),
            )
        })?;
    let dimensions = match request.get("dimensions") {
        None | Some(Value::Null) => DEFAULT_DIMENSIONS,
        Some(value) => value
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .filter(|n| (1..=MAX_DIMENSIONS).contains(n))
            .ok_or_else(|| {
                ApiError::invalid(
                    format!("'dimensions' must be an integer between 1 and {MAX_DIMENSIONS}."),
                    Some("dimensions"),
                )
            })?,
    };
    let base64 = request.get("encoding_format").and_then(Value::as_str) == Some("base64");
    let data = inputs
        .iter()
        .enumerate()
        .map(|(index, input)| {
            let floats = wire::embed(input, dimensions);
            let embedding = if base64 {
                let bytes: Vec<u8> = floats.iter().flat_map(|f| f.to_le_bytes()).collect();
                EmbeddingVector::Base64(wire::base64(&bytes))
            } else {
                EmbeddingVector::Float(floats)
            };
            Embedding {
                object: "embedding",
                index,
                embedding,
            }
        })
        .collect();
    let tokens = inputs.iter().map(Input::tokens).sum();
    let body = wire::to_json(&EmbeddingList {
        object: "list",
        data,
        model,
        usage: EmbeddingUsage {
            prompt_tokens: tokens,
            total_tokens: tokens,
        },
    })?;
    Ok(json_or_abort(body, fault))
}
