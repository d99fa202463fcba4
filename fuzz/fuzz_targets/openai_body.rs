//! OpenAI request bodies as the gateway reads them (`/v1/chat/completions`,
//! `/v1/completions`, `/v1/embeddings`): the router's inspection (object,
//! `model`, `stream`), the guard's text extraction and in-place redaction,
//! and the guard over an upstream's answer, complete and streamed (the
//! stream rewriter splices released text into each chunk's bytes).
//!
//! Input: one byte choosing the endpoint, then the request body, the
//! complete answer and the SSE stream separated by 0xFF bytes (never part
//! of UTF-8 text). Properties: an accepted body has a non-empty string
//! `model` and a boolean or absent `stream`, and what would be forwarded
//! is JSON that parses back to the same object.
#![no_main]

use std::sync::{Arc, OnceLock};

use aibox_gateway::guard::screen_exchange;
use aibox_guardrail::Guardrail;
use aibox_router::Endpoint;
use libfuzzer_sys::fuzz_target;

fn guardrail() -> Arc<Guardrail> {
    static G: OnceLock<Arc<Guardrail>> = OnceLock::new();
    G.get_or_init(|| Arc::new(Guardrail::default_standard().expect("guardrail")))
        .clone()
}

/// Splits an SSE stream into events, each with its blank line.
fn events(stream: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = stream;
    while let Some(p) = rest.windows(2).position(|w| w == b"\n\n") {
        out.push(&rest[..p + 2]);
        rest = &rest[p + 2..];
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let endpoint = match mode % 3 {
        0 => Endpoint::ChatCompletions,
        1 => Endpoint::Completions,
        _ => Endpoint::Embeddings,
    };
    let mut parts = rest.splitn(3, |&b| b == 0xFF);
    let request = parts.next().unwrap_or_default();
    let answer = parts.next().unwrap_or_default();
    let stream = parts.next().unwrap_or_default();
    let events = events(stream);
    let Ok(screened) = screen_exchange(guardrail(), "acme", endpoint, request, answer, &events)
    else {
        return;
    };
    let map = &screened.forwarded;
    assert!(
        map.get("model")
            .and_then(serde_json::Value::as_str)
            .is_some_and(|m| !m.is_empty()),
        "a body without a string model was accepted"
    );
    assert!(
        matches!(
            map.get("stream"),
            None | Some(serde_json::Value::Null | serde_json::Value::Bool(_))
        ),
        "a non-boolean stream was accepted"
    );
    let encoded = serde_json::to_vec(map).expect("the forwarded body encodes");
    let back: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&encoded).expect("the forwarded body parses");
    assert_eq!(&back, map, "the forwarded body does not round-trip");
});
