//! The span of a model call, with the OpenTelemetry GenAI semantic
//! conventions (`gen_ai.operation.name`, `gen_ai.request.model`,
//! `gen_ai.usage.input_tokens`, ...), exported by the binary's OTLP layer
//! when traces are on (a no-op otherwise).
//!
//! Prompts and completions go into the span only when
//! `telemetry.capture_content` is true (seed 000 §9): a trace backend is
//! usually readable by more people than the audit log, which itself keeps
//! only hashes of bodies.

use aibox_core::audit::Usage;
use aibox_core::{Principal, TurnId};
use aibox_router::Endpoint;
use tracing::field::Empty;

/// Most characters of captured content per attribute.
const MAX_CONTENT: usize = 16 * 1024;

/// `gen_ai.operation.name` of an endpoint.
pub fn operation(endpoint: Endpoint) -> &'static str {
    match endpoint {
        Endpoint::ChatCompletions => "chat",
        Endpoint::Completions => "text_completion",
        Endpoint::Embeddings => "embeddings",
    }
}

/// Opens the span of one model call (a child of the request's span).
pub fn model_span(
    endpoint: Endpoint,
    model: &str,
    principal: &Principal,
    turn: &TurnId,
) -> tracing::Span {
    let op = operation(endpoint);
    tracing::info_span!(
        target: "aibox_gateway::genai",
        "gen_ai",
        otel.name = %format!("{op} {model}"),
        otel.kind = "client",
        otel.status_code = Empty,
        gen_ai.operation.name = op,
        gen_ai.provider.name = "openai",
        gen_ai.request.model = %model,
        gen_ai.response.model = Empty,
        gen_ai.usage.input_tokens = Empty,
        gen_ai.usage.output_tokens = Empty,
        gen_ai.input.messages = Empty,
        gen_ai.output.messages = Empty,
        error.type = Empty,
        aibox.tenant = %principal.tenant,
        aibox.turn = %turn,
        aibox.upstream = Empty,
    )
}

fn cut(mut s: String) -> String {
    if s.len() > MAX_CONTENT {
        let mut end = MAX_CONTENT;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

/// Records the request's messages (or prompt, or input) when capture is on.
pub fn record_input(
    span: &tracing::Span,
    capture: bool,
    body: &serde_json::Map<String, serde_json::Value>,
) {
    if !capture {
        return;
    }
    if let Some(v) = ["messages", "prompt", "input"]
        .iter()
        .find_map(|k| body.get(*k))
    {
        span.record("gen_ai.input.messages", cut(v.to_string()).as_str());
    }
}

/// Records a complete answer's choices when capture is on.
pub fn record_output(span: &tracing::Span, capture: bool, body: &[u8]) {
    if !capture {
        return;
    }
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body)
        && let Some(choices) = v.get("choices")
    {
        span.record("gen_ai.output.messages", cut(choices.to_string()).as_str());
    }
}

/// Records the upstream that answered, its model name and the usage.
pub fn record_usage(span: &tracing::Span, upstream: &str, usage: Usage) {
    span.record("aibox.upstream", upstream);
    // OpenTelemetry integers are signed; an unsigned value would be
    // exported as its text.
    let int = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    span.record("gen_ai.usage.input_tokens", int(usage.prompt_tokens));
    span.record("gen_ai.usage.output_tokens", int(usage.completion_tokens));
}

/// Records the model name the upstream was asked for.
pub fn record_response_model(span: &tracing::Span, model: &str) {
    span.record("gen_ai.response.model", model);
}

/// Records why the call failed (the OpenAI error code).
pub fn record_error(span: &tracing::Span, code: &str) {
    span.record("error.type", code);
    span.record("otel.status_code", "ERROR");
}
