//! OpenAI wire types and the small text helpers the fake replies are made of.
//!
//! Response objects are serialized from borrowed structs rather than built as
//! `serde_json::Value` trees, which keeps per-chunk work to a single
//! allocation on the streaming hot path.

use std::borrow::Cow;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;

/// The final SSE event of a well-formed OpenAI stream.
pub(crate) const DONE_EVENT: &[u8] = b"data: [DONE]\n\n";

/// Token accounting reported in `usage`.
#[derive(Serialize, Clone, Copy, Default)]
pub(crate) struct Usage {
    pub(crate) prompt_tokens: u64,
    pub(crate) completion_tokens: u64,
    pub(crate) total_tokens: u64,
}

impl Usage {
    /// Builds a usage block whose total is the sum of both parts.
    pub(crate) fn new(prompt_tokens: u64, completion_tokens: u64) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        }
    }
}

/// Token accounting of an embeddings response, which has no completion part.
#[derive(Serialize)]
pub(crate) struct EmbeddingUsage {
    pub(crate) prompt_tokens: u64,
    pub(crate) total_tokens: u64,
}

/// A non-streaming `chat.completion` object.
#[derive(Serialize)]
pub(crate) struct ChatCompletion<'a> {
    pub(crate) id: &'a str,
    pub(crate) object: &'static str,
    pub(crate) created: u64,
    pub(crate) model: &'a str,
    pub(crate) choices: [ChatChoice<'a>; 1],
    pub(crate) usage: Usage,
}

/// The single choice of a `chat.completion`.
#[derive(Serialize)]
pub(crate) struct ChatChoice<'a> {
    pub(crate) index: u32,
    pub(crate) message: AssistantMessage<'a>,
    // The unit type serializes as `null`, matching OpenAI's `"logprobs": null`.
    pub(crate) logprobs: (),
    pub(crate) finish_reason: &'static str,
}

/// The assistant message of a `chat.completion` choice.
#[derive(Serialize)]
pub(crate) struct AssistantMessage<'a> {
    pub(crate) role: &'static str,
    pub(crate) content: &'a str,
}

/// One `chat.completion.chunk` SSE event.
#[derive(Serialize)]
pub(crate) struct ChatChunk<'a> {
    pub(crate) id: &'a str,
    pub(crate) object: &'static str,
    pub(crate) created: u64,
    pub(crate) model: &'a str,
    pub(crate) choices: &'a [ChatChunkChoice<'a>],
    /// Absent unless usage was requested; then `null` on every chunk but the
    /// trailing usage chunk, exactly as OpenAI sends it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) usage: Option<Option<Usage>>,
}

/// A choice inside a `chat.completion.chunk`.
#[derive(Serialize)]
pub(crate) struct ChatChunkChoice<'a> {
    pub(crate) index: u32,
    pub(crate) delta: Delta<'a>,
    pub(crate) logprobs: (),
    pub(crate) finish_reason: Option<&'static str>,
}

/// The incremental message of a chat chunk; empty (`{}`) on the final chunk.
#[derive(Serialize, Default)]
pub(crate) struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) content: Option<&'a str>,
}

/// A `text_completion` object, used both whole and as a streaming chunk.
#[derive(Serialize)]
pub(crate) struct TextCompletion<'a> {
    pub(crate) id: &'a str,
    pub(crate) object: &'static str,
    pub(crate) created: u64,
    pub(crate) model: &'a str,
    pub(crate) choices: &'a [TextChoice<'a>],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) usage: Option<Option<Usage>>,
}

/// A choice of a `text_completion`.
#[derive(Serialize)]
pub(crate) struct TextChoice<'a> {
    pub(crate) text: &'a str,
    pub(crate) index: u32,
    pub(crate) logprobs: (),
    pub(crate) finish_reason: Option<&'static str>,
}

/// An embeddings response.
#[derive(Serialize)]
pub(crate) struct EmbeddingList<'a> {
    pub(crate) object: &'static str,
    pub(crate) data: Vec<Embedding>,
    pub(crate) model: &'a str,
    pub(crate) usage: EmbeddingUsage,
}

/// One embedding vector.
#[derive(Serialize)]
pub(crate) struct Embedding {
    pub(crate) object: &'static str,
    pub(crate) index: usize,
    pub(crate) embedding: EmbeddingVector,
}

/// An embedding as floats or, when `encoding_format` is `base64`, as the
/// base64 of its little-endian `f32`s (what the official SDKs request).
#[derive(Serialize)]
#[serde(untagged)]
pub(crate) enum EmbeddingVector {
    Float(Vec<f32>),
    Base64(String),
}

/// The body of an OpenAI error response.
#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

/// The `error` object of an OpenAI error response.
#[derive(Serialize)]
struct ErrorDetail<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

/// An error reported to the client as an OpenAI error object.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
    kind: &'static str,
    param: Option<&'static str>,
}

impl ApiError {
    /// A 400 `invalid_request_error`, optionally naming the offending parameter.
    pub(crate) fn invalid(message: impl Into<String>, param: Option<&'static str>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param,
        }
    }

    /// A 404 for an unknown route, worded like OpenAI's.
    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
            kind: "invalid_request_error",
            param: None,
        }
    }

    /// A 500 `server_error`.
    pub(crate) fn server(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
            kind: "server_error",
            param: None,
        }
    }
}

impl From<serde_json::Error> for ApiError {
    fn from(err: serde_json::Error) -> Self {
        Self::server(format!(
            "fake-upstream failed to serialize a response: {err}"
        ))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                message: &self.message,
                kind: self.kind,
                param: self.param,
                code: None,
            },
        };
        // Serializing this struct of strings cannot fail; the fallback only
        // exists so that the error path itself never needs to panic.
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        json_response(self.status, Bytes::from(bytes))
    }
}

/// A response with a JSON content type and the given pre-serialized body.
pub(crate) fn json_response(status: StatusCode, body: Bytes) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Serializes a value to JSON bytes.
pub(crate) fn to_json<T: Serialize>(value: &T) -> Result<Bytes, serde_json::Error> {
    serde_json::to_vec(value).map(Bytes::from)
}

/// Renders one SSE event: `data: {json}\n\n`.
pub(crate) fn sse_event<T: Serialize>(value: &T) -> Result<Bytes, serde_json::Error> {
    let mut buf = Vec::with_capacity(256);
    buf.extend_from_slice(b"data: ");
    serde_json::to_writer(&mut buf, value)?;
    buf.extend_from_slice(b"\n\n");
    Ok(Bytes::from(buf))
}

/// Counts whitespace-separated words, the fake's notion of a token.
pub(crate) fn count_words(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

/// Splits text into one piece per word, each keeping the whitespace that
/// follows it, so that concatenating the pieces reproduces the text exactly.
/// For single-spaced text this is "word + space", and the last word alone.
pub(crate) fn pieces(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut seen_word = false;
    let mut prev_whitespace = false;
    for (i, c) in text.char_indices() {
        let whitespace = c.is_whitespace();
        if !whitespace {
            // Leading whitespace stays attached to the first word so that no
            // piece is whitespace only.
            if prev_whitespace && seen_word {
                out.push(&text[start..i]);
                start = i;
            }
            seen_word = true;
        }
        prev_whitespace = whitespace;
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

/// Extracts the text of a chat message `content`: a string, or an array of
/// parts whose `text` fields are joined with single spaces. Anything else
/// (null content of tool-call messages, images only) counts as empty.
pub(crate) fn content_text(content: Option<&Value>) -> Cow<'_, str> {
    match content {
        Some(Value::String(text)) => Cow::Borrowed(text),
        Some(Value::Array(parts)) => {
            let texts: Vec<&str> = parts
                .iter()
                .filter_map(|part| part.get("text").and_then(Value::as_str))
                .collect();
            match texts.as_slice() {
                [single] => Cow::Borrowed(single),
                _ => Cow::Owned(texts.join(" ")),
            }
        }
        _ => Cow::Borrowed(""),
    }
}

/// One prompt or embedding input: text, or pre-tokenized integers.
pub(crate) enum Input<'a> {
    Text(&'a str),
    Tokens(&'a [Value]),
}

impl Input<'_> {
    /// The input's size in fake tokens: words for text, length for tokens.
    pub(crate) fn tokens(&self) -> u64 {
        match self {
            Input::Text(text) => count_words(text),
            Input::Tokens(tokens) => tokens.len() as u64,
        }
    }

    /// The input as text; token arrays become their numbers separated by
    /// spaces so that they still produce a readable, word-counted reply.
    pub(crate) fn text(&self) -> Cow<'_, str> {
        match self {
            Input::Text(text) => Cow::Borrowed(text),
            Input::Tokens(tokens) => Cow::Owned(
                tokens
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
        }
    }

    /// Bytes that the deterministic embedding is derived from.
    fn feed(&self, hasher: &mut Fnv) {
        match self {
            Input::Text(text) => hasher.write(text.as_bytes()),
            Input::Tokens(tokens) => {
                for token in *tokens {
                    let n = token
                        .as_i64()
                        .or_else(|| token.as_u64().map(|n| n as i64))
                        .unwrap_or(0);
                    hasher.write(&n.to_le_bytes());
                }
            }
        }
    }
}

/// Parses the OpenAI "string, array of strings, array of tokens, or array of
/// token arrays" shape shared by `prompt` and `input`. Returns `None` when the
/// value has any other shape.
pub(crate) fn parse_inputs(value: &Value) -> Option<Vec<Input<'_>>> {
    match value {
        Value::String(text) => Some(vec![Input::Text(text)]),
        Value::Array(items) if items.iter().all(Value::is_number) && !items.is_empty() => {
            Some(vec![Input::Tokens(items)])
        }
        Value::Array(items) => items
            .iter()
            .map(|item| match item {
                Value::String(text) => Some(Input::Text(text)),
                Value::Array(tokens) if tokens.iter().all(Value::is_number) => {
                    Some(Input::Tokens(tokens))
                }
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

/// 64-bit FNV-1a, a tiny stable hash so embeddings are identical across runs
/// and platforms.
struct Fnv(u64);

impl Fnv {
    fn new(seed: u64) -> Self {
        let mut hasher = Self(0xcbf2_9ce4_8422_2325);
        hasher.write(&seed.to_le_bytes());
        hasher
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    /// Finishes with a splitmix64 round so nearby inputs spread over all bits.
    fn finish(&self) -> u64 {
        let mut z = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// A deterministic unit-length embedding of `dimensions` floats derived from
/// the input's bytes.
pub(crate) fn embed(input: &Input<'_>, dimensions: usize) -> Vec<f32> {
    let mut values: Vec<f64> = (0..dimensions as u64)
        .map(|dimension| {
            let mut hasher = Fnv::new(dimension);
            input.feed(&mut hasher);
            // The top 53 bits give a uniform value in [0, 1), mapped to [-1, 1).
            (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        })
        .collect();
    let norm = values.iter().map(|v| v * v).sum::<f64>().sqrt();
    if norm > 0.0 {
        for value in &mut values {
            *value /= norm;
        }
    }
    values.into_iter().map(|v| v as f32).collect()
}

/// Standard base64 with padding, enough for `encoding_format: "base64"`
/// without pulling in a dependency.
pub(crate) fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let b0 = group[0];
        let b1 = group.get(1).copied().unwrap_or(0);
        let b2 = group.get(2).copied().unwrap_or(0);
        let n = (u32::from(b0) << 16) | (u32::from(b1) << 8) | u32::from(b2);
        out.push(char::from(ALPHABET[(n >> 18) as usize & 63]));
        out.push(char::from(ALPHABET[(n >> 12) as usize & 63]));
        out.push(if group.len() > 1 {
            char::from(ALPHABET[(n >> 6) as usize & 63])
        } else {
            '='
        });
        out.push(if group.len() > 2 {
            char::from(ALPHABET[n as usize & 63])
        } else {
            '='
        });
    }
    out
}

/// Seconds since the Unix epoch for `created` fields.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0)
}
