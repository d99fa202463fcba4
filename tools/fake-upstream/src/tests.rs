//! Tests that run the router on an ephemeral port and talk raw HTTP/1.1 to it.
//!
//! A hand-written client is used on purpose: it sees exactly the bytes on the
//! wire, including whether a chunked body was properly terminated, which is
//! what the fault modes are about.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::wire;
use crate::{Config, router};

/// Starts a server with the given slow-first-byte delay and returns its address.
async fn spawn_with(slow_first_byte: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = Config {
        name: "up1".to_owned(),
        models: vec!["fake-model".to_owned(), "other".to_owned()],
        slow_first_byte,
    };
    tokio::spawn(async move { axum::serve(listener, router(config)).await });
    addr
}

async fn spawn() -> SocketAddr {
    spawn_with(Duration::from_millis(200)).await
}

/// A response as seen on the wire.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Whether the body ended properly (terminating chunk or full length).
    complete: bool,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    fn text(&self) -> String {
        String::from_utf8(self.body.clone()).unwrap()
    }

    /// The payloads of the SSE events, asserting that every event is a
    /// single `data: ` line.
    fn events(&self) -> Vec<String> {
        let text = self.text();
        assert!(
            text.ends_with("\n\n"),
            "body must end with an event: {text:?}"
        );
        text.split_terminator("\n\n")
            .map(|event| {
                let payload = event.strip_prefix("data: ").unwrap();
                assert!(!payload.contains('\n'), "one line per event: {event:?}");
                payload.to_owned()
            })
            .collect()
    }
}

fn request_bytes(method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Vec<u8> {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body.as_bytes());
    bytes
}

async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(&request_bytes(method, path, headers, body))
        .await
        .unwrap();
    // Read until EOF or a reset; a reset is an expected outcome for faults.
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
    }
    parse_reply(&raw)
}

async fn post(addr: SocketAddr, path: &str, body: Value) -> Reply {
    send(addr, "POST", path, &[], &body.to_string()).await
}

async fn get_json(addr: SocketAddr, path: &str) -> Value {
    send(addr, "GET", path, &[], "").await.json()
}

fn parse_reply(raw: &[u8]) -> Reply {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = std::str::from_utf8(&raw[..split]).unwrap();
    let rest = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .map(|line| {
            let (name, value) = line.split_once(':').unwrap();
            (name.trim().to_ascii_lowercase(), value.trim().to_owned())
        })
        .collect();
    let find = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let (body, complete) = if find("transfer-encoding").as_deref() == Some("chunked") {
        dechunk(rest)
    } else {
        // Responses without a length (such as 204) have an empty body.
        let len: usize = find("content-length").map_or(0, |v| v.parse().unwrap());
        (rest[..len.min(rest.len())].to_vec(), rest.len() >= len)
    };
    Reply {
        status,
        headers,
        body,
        complete,
    }
}

/// Decodes a chunked body, reporting whether the terminating chunk arrived.
fn dechunk(mut rest: &[u8]) -> (Vec<u8>, bool) {
    let mut body = Vec::new();
    loop {
        let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
            return (body, false);
        };
        let size_line = std::str::from_utf8(&rest[..eol]).unwrap();
        let size = usize::from_str_radix(size_line.trim(), 16).unwrap();
        rest = &rest[eol + 2..];
        if size == 0 {
            return (body, rest.starts_with(b"\r\n"));
        }
        if rest.len() < size + 2 {
            body.extend_from_slice(&rest[..size.min(rest.len())]);
            return (body, false);
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

fn chat_body(model: &str, stream: bool, include_usage: Option<bool>) -> Value {
    let mut body = json!({
        "model": model,
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hello"}, {"type": "text", "text": "world"}]},
        ],
        "stream": stream,
    });
    if let Some(include) = include_usage {
        body["stream_options"] = json!({ "include_usage": include });
    }
    body
}

#[test]
fn pieces_reassemble_exactly() {
    assert_eq!(wire::pieces("up1: hi there"), vec!["up1: ", "hi ", "there"]);
    assert_eq!(wire::pieces("a  b\n"), vec!["a  ", "b\n"]);
    assert_eq!(wire::pieces(" a b"), vec![" a ", "b"]);
    let text = "x:  y\tz ";
    assert_eq!(wire::pieces(text).concat(), text);
}

#[test]
fn base64_matches_known_vectors() {
    assert_eq!(wire::base64(b""), "");
    assert_eq!(wire::base64(b"f"), "Zg==");
    assert_eq!(wire::base64(b"fo"), "Zm8=");
    assert_eq!(wire::base64(b"foo"), "Zm9v");
    assert_eq!(wire::base64(b"foobar"), "Zm9vYmFy");
}

#[tokio::test]
async fn lists_models() {
    let addr = spawn().await;
    let models = get_json(addr, "/v1/models").await;
    assert_eq!(models["object"], "list");
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["fake-model", "other"]);
    assert_eq!(models["data"][0]["object"], "model");
    assert_eq!(models["data"][0]["created"], 1_700_000_000);
    assert_eq!(models["data"][0]["owned_by"], "up1");
}

#[tokio::test]
async fn chat_completion_non_streaming() {
    let addr = spawn().await;
    let reply = post(
        addr,
        "/v1/chat/completions",
        chat_body("fake-model", false, None),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let body = reply.json();
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-fake-"));
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "fake-model");
    assert!(body["created"].as_u64().unwrap() > 1_700_000_000);
    let choice = &body["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["content"], "up1: hello world");
    assert_eq!(choice["finish_reason"], "stop");
    assert!(choice["logprobs"].is_null());
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7})
    );
}

#[tokio::test]
async fn chat_stream_is_openai_sse() {
    let addr = spawn().await;
    let reply = post(addr, "/v1/chat/completions", chat_body("m", true, None)).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("text/event-stream"));
    assert!(reply.complete);
    let events = reply.events();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    // Role chunk, three words, finish chunk; no usage chunk unless asked.
    assert_eq!(chunks.len(), 5);
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    let id = chunks[0]["id"].clone();
    let mut text = String::new();
    for chunk in &chunks {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["id"], id);
        assert_eq!(chunk["model"], "m");
        assert!(chunk.get("usage").is_none());
        let choice = &chunk["choices"][0];
        assert_eq!(choice["index"], 0);
        assert!(choice["logprobs"].is_null());
        text.push_str(choice["delta"]["content"].as_str().unwrap_or(""));
    }
    assert_eq!(text, "up1: hello world");
    assert_eq!(
        chunks[1]["choices"][0]["delta"],
        json!({"content": "up1: "})
    );
    assert_eq!(
        chunks[3]["choices"][0]["delta"],
        json!({"content": "world"})
    );
    let last = &chunks[4]["choices"][0];
    assert_eq!(last["delta"], json!({}));
    assert_eq!(last["finish_reason"], "stop");

    let stats = get_json(addr, "/_stats").await;
    assert_eq!(stats["completed_streams"], 1);
    assert_eq!(stats["disconnects"], 0);
    assert_eq!(stats["active_streams"], 0);
}

#[tokio::test]
async fn usage_chunk_only_when_requested() {
    let addr = spawn().await;
    for include in [None, Some(false)] {
        let reply = post(addr, "/v1/chat/completions", chat_body("m", true, include)).await;
        assert!(!reply.text().contains("\"usage\""), "{include:?}");
    }
    let reply = post(
        addr,
        "/v1/chat/completions",
        chat_body("m", true, Some(true)),
    )
    .await;
    let events = reply.events();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let usage_chunk: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(
        usage_chunk["usage"],
        json!({"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7})
    );
    // Like OpenAI, every earlier chunk carries `"usage": null`.
    for event in &events[..events.len() - 2] {
        let chunk: Value = serde_json::from_str(event).unwrap();
        assert!(chunk["usage"].is_null());
        assert_eq!(chunk["choices"].as_array().unwrap().len(), 1);
    }
}

#[tokio::test]
async fn fault_no_done_ends_cleanly_without_done() {
    let addr = spawn().await;
    let reply = post(
        addr,
        "/v1/chat/completions",
        chat_body("fault-no-done", true, Some(true)),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert!(reply.complete);
    let events = reply.events();
    assert!(events.iter().all(|e| e != "[DONE]"));
    let chunks: Vec<Value> = events
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(
        chunks[chunks.len() - 2]["choices"][0]["finish_reason"],
        "stop"
    );
    assert_eq!(chunks[chunks.len() - 1]["usage"]["total_tokens"], 7);
    assert_eq!(get_json(addr, "/_stats").await["completed_streams"], 1);
}

#[tokio::test]
async fn fault_reset_mid_stream_aborts_after_two_content_chunks() {
    let addr = spawn().await;
    let reply = post(
        addr,
        "/v1/chat/completions",
        chat_body("fault-reset-mid-stream", true, None),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert!(!reply.complete, "the chunked body must not be terminated");
    let events = reply.events();
    assert_eq!(events.len(), 3);
    let chunks: Vec<Value> = events
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(chunks[1]["choices"][0]["delta"]["content"], "up1: ");
    assert_eq!(chunks[2]["choices"][0]["delta"]["content"], "hello ");

    let reply = post(
        addr,
        "/v1/chat/completions",
        chat_body("fault-reset-mid-stream", false, None),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert!(!reply.complete);
    assert!(reply.text().starts_with("{\"id\":\"chatcmpl-fake-"));
    assert!(serde_json::from_slice::<Value>(&reply.body).is_err());

    let stats = get_json(addr, "/_stats").await;
    assert_eq!(stats["disconnects"], 0);
    assert_eq!(stats["completed_streams"], 0);
}

#[tokio::test]
async fn fault_500_and_malformed() {
    let addr = spawn().await;
    for path in ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"] {
        let reply = post(
            addr,
            path,
            json!({"model": "fault-500", "input": "x", "messages": []}),
        )
        .await;
        assert_eq!(reply.status, 500);
        assert_eq!(reply.json()["error"]["type"], "server_error");

        let reply = post(
            addr,
            path,
            json!({"model": "fault-malformed", "stream": true}),
        )
        .await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("content-type"), Some("application/json"));
        assert_eq!(reply.text(), "{\"id\":\"x\",\"choices\":[");
    }
}

#[tokio::test]
async fn malformed_json_is_a_400_openai_error() {
    let addr = spawn().await;
    let reply = send(addr, "POST", "/v1/chat/completions", &[], "{\"model\":").await;
    assert_eq!(reply.status, 400);
    let error = &reply.json()["error"];
    assert_eq!(error["type"], "invalid_request_error");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("parse the JSON body")
    );
    assert!(error["param"].is_null());
    assert!(error["code"].is_null());
    // The body is still counted but is not valid JSON, so it reports as null.
    let stats = get_json(addr, "/_stats").await;
    assert_eq!(stats["requests"], 1);
    assert!(stats["last_body"].is_null());
}

#[tokio::test]
async fn slow_first_byte_delays_the_response() {
    let addr = spawn_with(Duration::from_millis(300)).await;
    let started = Instant::now();
    let reply = post(
        addr,
        "/v1/chat/completions",
        chat_body("fault-slow-first-byte", true, None),
    )
    .await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(reply.events().last().map(String::as_str), Some("[DONE]"));
}

#[tokio::test]
async fn text_completions_stream_and_not() {
    let addr = spawn().await;
    let reply = post(
        addr,
        "/v1/completions",
        json!({"model": "m", "prompt": "say hi"}),
    )
    .await;
    let body = reply.json();
    assert_eq!(body["object"], "text_completion");
    assert!(body["id"].as_str().unwrap().starts_with("cmpl-fake-"));
    assert_eq!(body["choices"][0]["text"], "up1: say hi");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"]["total_tokens"], 5);

    let reply = post(
        addr,
        "/v1/completions",
        json!({"model": "m", "prompt": ["a b", "c"], "stream": true, "stream_options": {"include_usage": true}}),
    )
    .await;
    let events = reply.events();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let mut texts = [String::new(), String::new()];
    let mut finished = 0;
    for event in &events[..events.len() - 2] {
        let chunk: Value = serde_json::from_str(event).unwrap();
        assert_eq!(chunk["object"], "text_completion");
        let choice = &chunk["choices"][0];
        let index = choice["index"].as_u64().unwrap() as usize;
        texts[index].push_str(choice["text"].as_str().unwrap());
        if choice["finish_reason"] == "stop" {
            finished += 1;
        }
    }
    assert_eq!(texts, ["up1: a b", "up1: c"]);
    assert_eq!(finished, 2);
    let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(
        usage["usage"],
        json!({"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8})
    );
}

#[tokio::test]
async fn embeddings_are_deterministic() {
    let addr = spawn().await;
    let body = json!({"model": "emb", "input": ["hello world", [1, 2, 3]]});
    let first = post(addr, "/v1/embeddings", body.clone()).await.json();
    let second = post(addr, "/v1/embeddings", body).await.json();
    assert_eq!(first, second);
    assert_eq!(first["object"], "list");
    assert_eq!(first["model"], "emb");
    assert_eq!(
        first["usage"],
        json!({"prompt_tokens": 5, "total_tokens": 5})
    );
    let data = first["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(data[1]["index"], 1);
    assert_eq!(data[0]["object"], "embedding");
    let vector: Vec<f64> = data[0]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(vector.len(), 8);
    assert_ne!(data[0]["embedding"], data[1]["embedding"]);

    // A single token array is one input, not one input per token.
    let tokens = post(
        addr,
        "/v1/embeddings",
        json!({"model": "emb", "input": [1, 2, 3]}),
    )
    .await
    .json();
    assert_eq!(tokens["data"].as_array().unwrap().len(), 1);
    assert_eq!(tokens["data"][0]["embedding"], data[1]["embedding"]);

    // The base64 form decodes to the same little-endian f32 values.
    let b64 = post(
        addr,
        "/v1/embeddings",
        json!({"model": "emb", "input": "hello world", "encoding_format": "base64"}),
    )
    .await
    .json();
    let floats: Vec<f32> = vector.iter().map(|v| *v as f32).collect();
    let bytes: Vec<u8> = floats.iter().flat_map(|f| f.to_le_bytes()).collect();
    assert_eq!(b64["data"][0]["embedding"], wire::base64(&bytes));

    let bad = post(
        addr,
        "/v1/embeddings",
        json!({"model": "emb", "input": [{"x": 1}]}),
    )
    .await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["error"]["param"], "input");
}

#[tokio::test]
async fn stats_capture_and_reset() {
    let addr = spawn().await;
    let body = json!({"model": "m", "input": "x"});
    send(
        addr,
        "POST",
        "/v1/embeddings",
        &[("authorization", "Bearer sk-up"), ("x-request-id", "req-1")],
        &body.to_string(),
    )
    .await;
    let stats = get_json(addr, "/_stats").await;
    assert_eq!(stats["requests"], 1);
    assert_eq!(stats["last_body"], body);
    assert_eq!(
        stats["last_headers"],
        json!({"authorization": "Bearer sk-up", "x-request-id": "req-1", "x-aibox-principal": null})
    );
    // GETs are not counted as requests.
    get_json(addr, "/v1/models").await;
    assert_eq!(get_json(addr, "/_stats").await["requests"], 1);

    let reset = send(addr, "POST", "/_reset", &[], "").await;
    assert_eq!(reset.status, 204);
    let stats = get_json(addr, "/_stats").await;
    assert_eq!(stats["requests"], 0);
    assert!(stats["last_body"].is_null());
    assert!(stats["last_headers"]["authorization"].is_null());
}

#[tokio::test]
async fn slow_stream_counts_client_disconnect() {
    let addr = spawn().await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let body = chat_body("fault-slow-stream", true, None).to_string();
    stream
        .write_all(&request_bytes("POST", "/v1/chat/completions", &[], &body))
        .await
        .unwrap();
    // Wait for the role chunk and two slow content chunks.
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while seen.windows(6).filter(|w| w == b"data: ").count() < 3 {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0);
        seen.extend_from_slice(&buf[..n]);
    }
    assert_eq!(get_json(addr, "/_stats").await["active_streams"], 1);
    drop(stream);

    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stats = get_json(addr, "/_stats").await;
        if stats["disconnects"] == 1 {
            assert_eq!(stats["active_streams"], 0);
            assert_eq!(stats["completed_streams"], 0);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "disconnect not observed: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn unknown_route_is_openai_404() {
    let addr = spawn().await;
    let reply = post(addr, "/v1/nope", json!({})).await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.json()["error"]["type"], "invalid_request_error");
}
