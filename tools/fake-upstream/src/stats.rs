//! Counters and last-request capture behind the `/_stats` test endpoint.
//!
//! Counters are plain atomics so the request hot path never contends on a
//! lock; only the last-request capture takes a short `Mutex`, and it stores
//! reference-counted `Bytes`/`HeaderValue`s so that capture is a few pointer
//! copies rather than a JSON clone.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::http::{HeaderMap, HeaderValue};
use bytes::Bytes;
use serde_json::{Value, json};

/// Request headers captured for `/_stats`, in the order they are reported.
const CAPTURED_HEADERS: [&str; 3] = ["authorization", "x-request-id", "x-aibox-principal"];

/// The last POST seen on `/v1/*`, kept raw so that capturing it is cheap.
#[derive(Default)]
struct Last {
    body: Option<Bytes>,
    headers: [Option<HeaderValue>; 3],
}

/// Process-wide counters shared by all handlers and open streams.
#[derive(Default)]
pub(crate) struct Stats {
    requests: AtomicU64,
    disconnects: AtomicU64,
    completed_streams: AtomicU64,
    // Signed so that a decrement racing a `/_reset` can never wrap around.
    active_streams: AtomicI64,
    last: Mutex<Last>,
}

impl Stats {
    /// Locks the last-request capture, recovering from poisoning because the
    /// data is purely diagnostic and always left in a consistent state.
    fn last(&self) -> MutexGuard<'_, Last> {
        self.last
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Counts a POST to `/v1/*` and remembers its body and selected headers.
    pub(crate) fn record(&self, headers: &HeaderMap, body: &Bytes) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let captured = CAPTURED_HEADERS.map(|name| headers.get(name).cloned());
        let mut last = self.last();
        last.body = Some(body.clone());
        last.headers = captured;
    }

    /// Counts a stream whose final event was produced.
    pub(crate) fn stream_completed(&self) {
        self.completed_streams.fetch_add(1, Ordering::Relaxed);
    }

    /// Zeroes the counters and forgets the last request.
    ///
    /// `active_streams` is a gauge of streams that are open right now, so it is
    /// deliberately not reset: zeroing it would make it go negative when those
    /// streams end.
    pub(crate) fn reset(&self) {
        self.requests.store(0, Ordering::Relaxed);
        self.disconnects.store(0, Ordering::Relaxed);
        self.completed_streams.store(0, Ordering::Relaxed);
        *self.last() = Last::default();
    }

    /// Renders the `/_stats` document.
    pub(crate) fn snapshot(&self) -> Value {
        let (body, headers) = {
            let last = self.last();
            (last.body.clone(), last.headers.clone())
        };
        // The body is parsed only here, off the hot path; a body that is not
        // valid JSON is reported as null.
        let last_body = body
            .and_then(|raw| serde_json::from_slice::<Value>(&raw).ok())
            .unwrap_or(Value::Null);
        let mut last_headers = serde_json::Map::new();
        for (name, value) in CAPTURED_HEADERS.iter().zip(headers) {
            let value = value
                .and_then(|v| v.to_str().ok().map(|s| Value::String(s.to_owned())))
                .unwrap_or(Value::Null);
            last_headers.insert((*name).to_owned(), value);
        }
        json!({
            "requests": self.requests.load(Ordering::Relaxed),
            "disconnects": self.disconnects.load(Ordering::Relaxed),
            "completed_streams": self.completed_streams.load(Ordering::Relaxed),
            "active_streams": self.active_streams.load(Ordering::Relaxed).max(0),
            "last_body": last_body,
            "last_headers": last_headers,
        })
    }
}

/// Tracks one open SSE stream: it is counted as active while alive, and if it
/// is dropped before being marked finished the client must have gone away.
pub(crate) struct StreamGuard {
    stats: Arc<Stats>,
    finished: bool,
}

impl StreamGuard {
    /// Registers a new active stream.
    pub(crate) fn new(stats: Arc<Stats>) -> Self {
        stats.active_streams.fetch_add(1, Ordering::Relaxed);
        Self {
            stats,
            finished: false,
        }
    }

    /// Marks the stream as ended on purpose, counting it as completed when it
    /// ran to its normal end (as opposed to an injected abort).
    pub(crate) fn finish(&mut self, completed: bool) {
        if !self.finished && completed {
            self.stats.stream_completed();
        }
        self.finished = true;
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.stats.active_streams.fetch_sub(1, Ordering::Relaxed);
        if !self.finished {
            self.stats.disconnects.fetch_add(1, Ordering::Relaxed);
        }
    }
}
