//! Server-sent events: a pure scanner and the relay that forwards a stream.
//!
//! The relay forwards upstream bytes to the client as they arrive, never
//! buffering a whole response. Alongside, the [`SseScanner`] watches the
//! `data:` lines for two things: the `[DONE]` terminator (a stream that ends
//! without it was cut short) and the `usage` object of the final chunk (for
//! token accounting). It parses JSON only for lines that mention `"usage"`,
//! which keeps the per-chunk cost to a byte scan.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use aibox_core::audit::Usage;
use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use futures_util::stream::BoxStream;
use tokio::time::{Instant, Sleep};

/// Lines longer than this are forwarded but not inspected, so a hostile
/// upstream cannot make the scanner buffer without bound.
const MAX_LINE: usize = 1 << 20;

/// The largest unterminated event the relay holds while it waits for the
/// event's end (with a rewriter or usage filter); beyond it the stream ends.
const MAX_EVENT_BYTES: usize = 8 << 20;

/// Watches an SSE byte stream.
#[derive(Debug, Default)]
pub struct SseScanner {
    line: Vec<u8>,
    overflow: bool,
    done: bool,
    usage: Option<Usage>,
}

impl SseScanner {
    /// Feeds the next bytes.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while let Some(pos) = memchr::memchr(b'\n', bytes) {
            if !self.overflow {
                if self.line.is_empty() {
                    // The whole line is in this chunk (the common case):
                    // inspect it in place rather than copying it.
                    self.on_line(&bytes[..pos]);
                } else {
                    let mut line = std::mem::take(&mut self.line);
                    line.extend_from_slice(&bytes[..pos]);
                    self.on_line(&line);
                    line.clear();
                    self.line = line;
                }
            }
            self.line.clear();
            self.overflow = false;
            bytes = &bytes[pos + 1..];
        }
        if !self.overflow {
            if self.line.len() + bytes.len() > MAX_LINE {
                self.overflow = true;
                self.line.clear();
            } else {
                self.line.extend_from_slice(bytes);
            }
        }
    }

    fn on_line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(data) = line.strip_prefix(b"data:") else {
            return;
        };
        let data = data.trim_ascii();
        if data == b"[DONE]" {
            self.done = true;
        } else if let Some(u) = contains(data, b"\"usage\"")
            .then(|| parse_usage(data))
            .flatten()
        {
            self.usage = Some(u);
        }
    }

    /// True once `data: [DONE]` was seen.
    pub fn done(&self) -> bool {
        self.done
    }

    /// The last usage object seen.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(haystack, needle).is_some()
}

/// Extracts `usage` from a JSON response or chunk, if it is a usage object.
pub fn parse_usage(json: &[u8]) -> Option<Usage> {
    #[derive(serde::Deserialize)]
    struct WithUsage {
        usage: Option<RawUsage>,
    }
    #[derive(serde::Deserialize)]
    struct RawUsage {
        #[serde(default)]
        prompt_tokens: u64,
        #[serde(default)]
        completion_tokens: u64,
        #[serde(default)]
        total_tokens: u64,
    }
    let w: WithUsage = serde_json::from_slice(json).ok()?;
    let u = w.usage?;
    Some(Usage {
        prompt_tokens: u.prompt_tokens,
        completion_tokens: u.completion_tokens,
        // The counts come from the upstream: two near u64::MAX must not
        // overflow (a panic in debug builds, a wrapped total in release).
        total_tokens: u
            .total_tokens
            .max(u.prompt_tokens.saturating_add(u.completion_tokens)),
    })
}

/// An SSE event carrying an OpenAI error object. The OpenAI SDKs raise an
/// `APIError` when a stream yields such an event.
pub fn error_event(message: &str, code: &str) -> Bytes {
    typed_error_event(message, "upstream_error", code)
}

/// An SSE error event with an explicit error type.
pub fn typed_error_event(message: &str, kind: &str, code: &str) -> Bytes {
    let body = serde_json::json!({
        "error": { "message": message, "type": kind, "param": null, "code": code }
    });
    Bytes::from(format!("data: {body}\n\n"))
}

/// Rewrites a stream event by event, for the output guardrail.
///
/// The relay cuts the upstream bytes at event boundaries and hands each
/// complete event (blank line included) to the rewriter, `[DONE]` as well;
/// what it returns is forwarded instead. A rewriter may hold text back and
/// release it later (a scanning window), so the bytes it returns need not
/// match the event it was given. `Err` ends the stream: its bytes (an error
/// event) are the last thing the client receives, and no `[DONE]` follows.
pub trait EventRewriter: Send {
    /// One complete event in, what to forward out.
    fn event(&mut self, event: &[u8]) -> Result<Bytes, Refusal>;

    /// The same, given the event's own bytes: a rewriter that leaves an
    /// event as it is returns them (a reference count, not a copy). The
    /// relay calls this one.
    fn event_bytes(&mut self, event: Bytes) -> Result<Bytes, Refusal> {
        self.event(&event)
    }

    /// The stream broke before `[DONE]`: what may still be released of the
    /// text held back, before the error event goes out.
    fn flush(&mut self) -> Result<Bytes, Refusal> {
        Ok(Bytes::new())
    }
}

/// Why a rewriter ended a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The OpenAI error code sent to the client (`content_policy_violation`).
    pub code: String,
    /// The message sent to the client, without the refused content.
    pub message: String,
}

/// How a relayed stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEnd {
    /// The upstream sent `[DONE]` and closed.
    Completed,
    /// A rewriter refused the content; the client got an error event.
    Refused(Refusal),
    /// The upstream failed; the client got an error event.
    UpstreamFailed(String),
    /// The client went away first; the upstream request was dropped.
    ClientGone,
}

/// What the relay reports when it ends, exactly once.
#[derive(Debug, Clone)]
pub struct StreamSummary {
    /// How it ended.
    pub end: StreamEnd,
    /// The usage of the final chunk, if the upstream sent one.
    pub usage: Option<Usage>,
    /// Bytes received from the upstream.
    pub bytes: u64,
    /// SHA-256 over every byte received from the upstream.
    pub sha256: [u8; 32],
}

/// What a [`Gate`] decided about the held end of a completed stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateVerdict {
    /// Release the held final chunk (with `[DONE]`).
    Release,
    /// Send these bytes instead of the held chunk; they must end the
    /// stream themselves (`[DONE]` included). A judge's revision takes
    /// this path.
    Replace(Bytes),
    /// Send this error event instead of the held chunk: the answer could
    /// not be recorded, or a judge refused it.
    Refuse {
        /// The OpenAI error type (`invalid_request_error`, `server_error`).
        kind: String,
        /// The code and the client-safe message.
        refusal: Refusal,
    },
}

/// Holds back the end of a completed stream until it resolves. This is how
/// "the answer is complete only once it is recorded" reaches streams: the
/// audit log resolves the gate after its commit (and an output critique,
/// when one runs, before it).
pub type Gate = tokio::sync::oneshot::Receiver<GateVerdict>;

/// The callback that receives the summary. For a completed stream it may
/// return a [`Gate`]; for other endings the gate is ignored.
pub type OnEnd = Box<dyn FnOnce(StreamSummary) -> Option<Gate> + Send>;

/// Forwards an upstream SSE body with idle and total timeouts.
pub struct Relay {
    inner: Option<BoxStream<'static, Result<Bytes, reqwest::Error>>>,
    scanner: SseScanner,
    idle: Duration,
    deadline: Instant,
    timer: Pin<Box<Sleep>>,
    /// When the idle timeout ends given the chunks seen so far. The timer
    /// is not reset on every chunk (a timer-wheel update per SSE event is a
    /// measurable cost); when it fires early it is re-armed to this instant.
    idle_until: Instant,
    bytes: u64,
    on_end: Option<OnEnd>,
    end: Option<StreamEnd>,
    filter: Option<UsageEventFilter>,
    hide_usage: bool,
    rewriter: Option<Box<dyn EventRewriter>>,
    hasher: Sha256,
    held: Option<Bytes>,
    gate: Option<Gate>,
}

/// Removes the usage-only chunk from a stream whose client did not ask for
/// it. aibox asks every upstream for usage (token limits need it, and a
/// client must not dodge them by not asking); this hides the extra event
/// from clients that did not request `stream_options.include_usage`.
///
/// It cuts the byte stream at event boundaries (a blank line), which holds a
/// partial event back until its end arrives; events that mention no usage
/// are never parsed.
#[derive(Debug, Default)]
pub struct UsageEventFilter {
    /// The start of an event whose end has not arrived yet.
    buf: BytesMut,
    /// How many bytes of `buf` were already searched for an event's end,
    /// so that an event arriving in many pieces is not rescanned for each.
    searched: usize,
}

/// What one chunk turns into: usually one piece (the chunk itself, or the
/// rewriter's answer to its one event), returned without copying; only
/// several pieces are joined.
#[derive(Default)]
struct Output {
    first: Bytes,
    joined: Option<BytesMut>,
}

impl Output {
    fn push(&mut self, piece: Bytes) {
        if piece.is_empty() {
            return;
        }
        match self.joined.as_mut() {
            Some(j) => j.extend_from_slice(&piece),
            None if self.first.is_empty() => self.first = piece,
            None => {
                let mut j = BytesMut::with_capacity(2 * (self.first.len() + piece.len()));
                j.extend_from_slice(&self.first);
                j.extend_from_slice(&piece);
                self.joined = Some(j);
            }
        }
    }

    fn finish(self) -> Bytes {
        match self.joined {
            Some(j) => j.freeze(),
            None => self.first,
        }
    }
}

impl UsageEventFilter {
    /// Takes the next bytes and returns what may be forwarded now.
    pub fn push(&mut self, chunk: &[u8]) -> Bytes {
        match self.push_through(Bytes::copy_from_slice(chunk), true, None) {
            Ok(b) | Err((b, _)) => b,
        }
    }

    /// Cuts at event boundaries; drops usage-only events when `hide_usage`;
    /// passes each remaining event through `rewriter`. On a refusal, returns
    /// what was released before it and the refusal; the rest is discarded.
    ///
    /// Events are slices of the chunk (or of the partial event held from
    /// the previous chunks joined with it), so an event forwarded as it is
    /// costs no copy, and consecutive forwarded events go out as one slice.
    fn push_through(
        &mut self,
        chunk: Bytes,
        hide_usage: bool,
        mut rewriter: Option<&mut Box<dyn EventRewriter>>,
    ) -> Result<Bytes, (Bytes, Refusal)> {
        let (src, mut from) = if self.buf.is_empty() {
            (chunk, 0)
        } else {
            self.buf.extend_from_slice(&chunk);
            (self.buf.split().freeze(), self.searched)
        };
        self.searched = 0;
        let mut out = Output::default();
        let mut start = 0;
        // The start of a run of events forwarded as they are.
        let mut run: Option<usize> = None;
        while let Some(end) = event_end(&src, start, from) {
            let event = src.slice(start..end);
            let at = start;
            start = end;
            from = end;
            if hide_usage && is_usage_only(&event) {
                if let Some(r) = run.take() {
                    out.push(src.slice(r..at));
                }
                continue;
            }
            match rewriter.as_mut() {
                Some(r) => match r.event_bytes(event) {
                    Ok(b) => out.push(b),
                    Err(refusal) => {
                        self.buf.clear();
                        return Err((out.finish(), refusal));
                    }
                },
                None => {
                    run.get_or_insert(at);
                }
            }
        }
        if let Some(r) = run {
            out.push(src.slice(r..start));
        }
        if start < src.len() {
            self.buf.extend_from_slice(&src[start..]);
            self.searched = src.len() - start;
        }
        Ok(out.finish())
    }

    /// How many bytes of an unterminated event are held.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Returns whatever is left (an unterminated event) at the end.
    pub fn finish(&mut self) -> Bytes {
        self.searched = 0;
        self.buf.split().freeze()
    }
}

/// The end (exclusive) of the first complete event in `buf` starting at
/// `start`, blank line included: the first `\n\n` or `\r\n\r\n` that lies
/// within the event. Line ends before `from` were already searched (an
/// event's end is found at its last `\n`, so looking back is enough).
fn event_end(buf: &[u8], start: usize, from: usize) -> Option<usize> {
    let mut at = from.max(start);
    while let Some(p) = memchr::memchr(b'\n', buf.get(at..)?) {
        let i = at + p;
        let lf = i > start && buf[i - 1] == b'\n';
        let crlf = i >= start + 3 && &buf[i - 3..i] == b"\r\n\r";
        if lf || crlf {
            return Some(i + 1);
        }
        at = i + 1;
    }
    None
}

fn is_usage_only(event: &[u8]) -> bool {
    if !contains(event, b"\"usage\"") {
        return false;
    }
    // Upstreams asked for usage put `"usage":null` in every chunk, so this
    // runs for every event: read only the two members, borrowed, rather
    // than building a JSON tree of the chunk.
    #[derive(serde::Deserialize)]
    struct Probe<'a> {
        #[serde(borrow, default)]
        choices: Option<&'a serde_json::value::RawValue>,
        #[serde(borrow, default)]
        usage: Option<&'a serde_json::value::RawValue>,
    }
    let mut data: Vec<u8> = Vec::new();
    let mut single: Option<&[u8]> = None;
    let mut lines = 0;
    for line in event.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(d) = line.strip_prefix(b"data:") {
            let d = d.trim_ascii();
            lines += 1;
            if lines == 1 {
                single = Some(d);
            } else {
                if let Some(first) = single.take() {
                    data.extend_from_slice(first);
                }
                data.extend_from_slice(d);
            }
        }
    }
    let data = single.unwrap_or(&data);
    // Only an object is a chunk (the typed reader would take an array too).
    if !data.trim_ascii_start().starts_with(b"{") {
        return false;
    }
    let Ok(p) = serde_json::from_slice::<Probe<'_>>(data) else {
        return false;
    };
    let empty_array = |raw: &serde_json::value::RawValue| {
        raw.get()
            .strip_prefix('[')
            .is_some_and(|r| r.trim_start().starts_with(']'))
    };
    p.choices.is_some_and(empty_array) && p.usage.is_some_and(|u| u.get().starts_with('{'))
}

impl Relay {
    /// Wraps an upstream body stream.
    pub fn new(
        inner: BoxStream<'static, Result<Bytes, reqwest::Error>>,
        idle: Duration,
        deadline: Instant,
        on_end: OnEnd,
        hide_usage_event: bool,
    ) -> Self {
        let first = (Instant::now() + idle).min(deadline);
        Self {
            inner: Some(inner),
            scanner: SseScanner::default(),
            idle,
            deadline,
            timer: Box::pin(tokio::time::sleep_until(first)),
            idle_until: first,
            bytes: 0,
            on_end: Some(on_end),
            end: None,
            filter: hide_usage_event.then(UsageEventFilter::default),
            hide_usage: hide_usage_event,
            rewriter: None,
            hasher: Sha256::new(),
            held: None,
            gate: None,
        }
    }

    /// Passes every event through `rewriter` before the client sees it.
    /// Set it before the first poll.
    pub fn set_rewriter(&mut self, rewriter: Box<dyn EventRewriter>) {
        self.filter.get_or_insert_with(UsageEventFilter::default);
        self.rewriter = Some(rewriter);
    }

    /// The bytes to forward for `chunk`, through the event filter and the
    /// rewriter when there are any.
    fn pass(&mut self, chunk: Bytes) -> Result<Bytes, (Bytes, Refusal)> {
        match self.filter.as_mut() {
            Some(f) => f.push_through(chunk, self.hide_usage, self.rewriter.as_mut()),
            None => Ok(chunk),
        }
    }

    /// What is left in the event filter at the end. With a rewriter, an
    /// unterminated tail never reached it, so it is dropped rather than
    /// forwarded unscanned.
    fn rest(&mut self) -> Bytes {
        let rest = self
            .filter
            .as_mut()
            .map(UsageEventFilter::finish)
            .unwrap_or_default();
        if self.rewriter.is_some() {
            Bytes::new()
        } else {
            rest
        }
    }

    fn summary(&self, end: StreamEnd) -> StreamSummary {
        StreamSummary {
            end,
            usage: self.scanner.usage(),
            bytes: self.bytes,
            sha256: self.hasher.clone().finalize().into(),
        }
    }

    fn finish(&mut self, end: StreamEnd) {
        self.inner = None;
        if let Some(cb) = self.on_end.take() {
            // Only a completed stream waits for its gate; here it is moot.
            let _ = cb(self.summary(end));
        }
    }

    fn fail(&mut self, message: String, code: &str) -> Poll<Option<Result<Bytes, std::io::Error>>> {
        self.fail_after(Bytes::new(), message, code)
    }

    /// Like [`Relay::fail`], after sending `released` (events that passed).
    fn fail_after(
        &mut self,
        released: Bytes,
        message: String,
        code: &str,
    ) -> Poll<Option<Result<Bytes, std::io::Error>>> {
        let mut joined = released.to_vec();
        joined.extend_from_slice(&self.rest());
        // Text a rewriter held back was received: release what passes it,
        // then report the failure (or the rewriter's refusal instead).
        if let Some(r) = self.rewriter.as_mut() {
            match r.flush() {
                Ok(tail) => joined.extend_from_slice(&tail),
                Err(refusal) => {
                    joined.extend_from_slice(&typed_error_event(
                        &refusal.message,
                        "invalid_request_error",
                        &refusal.code,
                    ));
                    self.end = Some(StreamEnd::Refused(refusal));
                    self.inner = None;
                    return Poll::Ready(Some(Ok(Bytes::from(joined))));
                }
            }
        }
        joined.extend_from_slice(&error_event(&message, code));
        let ev = Bytes::from(joined);
        self.end = Some(StreamEnd::UpstreamFailed(message));
        self.inner = None;
        Poll::Ready(Some(Ok(ev)))
    }
}

impl Stream for Relay {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Some(gate) = this.gate.as_mut() {
            let verdict = match Pin::new(gate).poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(v)) => v,
                Poll::Ready(Err(_)) => {
                    tracing::error!(
                        "a completed stream could not be recorded (the recorder went away); ending it with an error"
                    );
                    GateVerdict::Refuse {
                        kind: "server_error".into(),
                        refusal: Refusal {
                            code: "audit_unavailable".into(),
                            message: "the answer could not be recorded in the audit log, so it is void; retry later".into(),
                        },
                    }
                }
            };
            this.gate = None;
            this.inner = None;
            this.end = Some(StreamEnd::Completed);
            let held = this.held.take().unwrap_or_default();
            return match verdict {
                GateVerdict::Release => Poll::Ready(Some(Ok(held))),
                GateVerdict::Replace(bytes) => Poll::Ready(Some(Ok(bytes))),
                GateVerdict::Refuse { kind, refusal } => Poll::Ready(Some(Ok(typed_error_event(
                    &refusal.message,
                    &kind,
                    &refusal.code,
                )))),
            };
        }
        let Some(inner) = this.inner.as_mut() else {
            // The error event (if any) was yielded; now report and end.
            let end = this.end.take().unwrap_or(StreamEnd::Completed);
            this.finish(end);
            return Poll::Ready(None);
        };
        match inner.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                this.scanner.feed(&chunk);
                this.hasher.update(&chunk);
                this.bytes += chunk.len() as u64;
                this.idle_until = (Instant::now() + this.idle).min(this.deadline);
                let out = match this.pass(chunk) {
                    Ok(out)
                        if this
                            .filter
                            .as_ref()
                            .is_some_and(|f| f.pending() > MAX_EVENT_BYTES) =>
                    {
                        // An event that never ends would grow the buffer
                        // until the total timeout; its start is dropped (it
                        // was never scanned), what came before it goes out.
                        if let Some(f) = this.filter.as_mut() {
                            f.finish();
                        }
                        return this.fail_after(
                            out,
                            format!(
                                "the upstream sent a stream event larger than {} MiB without ending it; \
                                 the stream was ended",
                                MAX_EVENT_BYTES >> 20
                            ),
                            "upstream_stream_error",
                        );
                    }
                    Ok(out) => out,
                    Err((released, refusal)) => {
                        let mut joined = released.to_vec();
                        joined.extend_from_slice(&typed_error_event(
                            &refusal.message,
                            "invalid_request_error",
                            &refusal.code,
                        ));
                        this.end = Some(StreamEnd::Refused(refusal));
                        this.inner = None;
                        return Poll::Ready(Some(Ok(Bytes::from(joined))));
                    }
                };
                if this.scanner.done()
                    && let Some(cb) = this.on_end.take()
                    && let Some(gate) = cb(this.summary(StreamEnd::Completed))
                {
                    // Hold the final chunk until the gate opens.
                    this.held = Some(out);
                    this.gate = Some(gate);
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                if out.is_empty() {
                    // Everything was held back or filtered; poll again so
                    // the waker is registered with the upstream.
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Poll::Ready(Some(Ok(out)))
            }
            Poll::Ready(Some(Err(e))) => this.fail(
                format!("the upstream stream broke: {}", crate::describe_reqwest(&e)),
                "upstream_stream_error",
            ),
            Poll::Ready(None) => {
                if this.scanner.done() {
                    this.inner = None;
                    let rest = this.rest();
                    if !rest.is_empty() {
                        this.end = Some(StreamEnd::Completed);
                        return Poll::Ready(Some(Ok(rest)));
                    }
                    this.finish(StreamEnd::Completed);
                    Poll::Ready(None)
                } else {
                    this.fail(
                        "the upstream ended the stream without [DONE]; the answer is incomplete"
                            .into(),
                        "upstream_stream_incomplete",
                    )
                }
            }
            Poll::Pending => match this.poll_timer(cx) {
                Poll::Ready(()) => {
                    let what = if Instant::now() >= this.deadline {
                        "the total timeout"
                    } else {
                        "the idle timeout between chunks"
                    };
                    this.fail(
                        format!("the upstream stream exceeded {what}"),
                        "upstream_timeout",
                    )
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl Relay {
    /// Polls the idle/total timer, re-arming it while chunks have moved the
    /// idle deadline past the instant it was set for.
    fn poll_timer(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            match self.timer.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) => {
                    if self.timer.deadline() >= self.idle_until {
                        return Poll::Ready(());
                    }
                    let next = self.idle_until;
                    self.timer.as_mut().reset(next);
                }
            }
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if self.on_end.is_some() {
            let end = match self.end.take() {
                Some(e) => e,
                None if self.inner.is_some() => StreamEnd::ClientGone,
                None => StreamEnd::Completed,
            };
            self.finish(end);
        }
    }
}

use std::future::Future as _;

use sha2::{Digest as _, Sha256};

#[cfg(test)]
mod tests {

    /// An upstream that streams one event and then an event that never
    /// ends: the relay stops holding it at MAX_EVENT_BYTES and ends the
    /// stream with an error event instead of growing until the total
    /// timeout (found in session 5's review of the stream path).
    #[tokio::test]
    async fn issue_9_an_event_that_never_ends_is_bounded() {
        use futures_util::StreamExt as _;
        let first = Bytes::from_static(b"data: {\"choices\":[]}\n\n");
        // 24 MiB in all, then the upstream closes (so the test ends either way).
        let endless = (0..384).map(|_| Ok::<_, reqwest::Error>(Bytes::from(vec![b'x'; 64 * 1024])));
        let inner = futures_util::stream::iter(std::iter::once(Ok(first)).chain(endless)).boxed();
        let ended = std::sync::Arc::new(std::sync::Mutex::new(None));
        let seen = ended.clone();
        let mut relay = Relay::new(
            inner,
            Duration::from_secs(30),
            Instant::now() + Duration::from_secs(30),
            Box::new(move |summary| {
                *seen.lock().unwrap() = Some(summary.end);
                None
            }),
            true,
        );
        let mut out = Vec::new();
        while let Some(piece) = relay.next().await {
            out.extend_from_slice(&piece.unwrap());
            assert!(out.len() < 2 * MAX_EVENT_BYTES, "the relay kept forwarding");
        }
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.starts_with("data: {\"choices\":[]}\n\n"),
            "{}",
            &text[..80.min(text.len())]
        );
        assert!(
            text.contains("upstream_stream_error"),
            "{}",
            &text[..200.min(text.len())]
        );
        assert!(
            !text.contains("xxxx"),
            "the unterminated event was forwarded"
        );
        assert!(matches!(
            *ended.lock().unwrap(),
            Some(StreamEnd::UpstreamFailed(_))
        ));
    }

    use super::*;

    #[test]
    fn issue9_fuzz_usage_counts_near_u64_max_do_not_overflow() {
        let max = u64::MAX;
        let chunk = format!(r#"{{"usage":{{"prompt_tokens":{max},"completion_tokens":1}}}}"#);
        assert_eq!(
            parse_usage(chunk.as_bytes()),
            Some(Usage {
                prompt_tokens: max,
                completion_tokens: 1,
                total_tokens: max
            })
        );
        let mut s = SseScanner::default();
        s.feed(format!("data: {chunk}\n\n").as_bytes());
        assert_eq!(s.usage().map(|u| u.total_tokens), Some(max));
    }

    #[test]
    fn scanner_finds_done_and_usage_across_chunk_boundaries() {
        let mut s = SseScanner::default();
        let text = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4,\"total_tokens\":7}}\r\n\r\ndata: [DONE]\n\n";
        for piece in text.as_bytes().chunks(5) {
            s.feed(piece);
        }
        assert!(s.done());
        assert_eq!(
            s.usage(),
            Some(Usage {
                prompt_tokens: 3,
                completion_tokens: 4,
                total_tokens: 7
            })
        );
    }

    #[test]
    fn scanner_ignores_null_usage_and_content_mentioning_done() {
        let mut s = SseScanner::default();
        s.feed(b"data: {\"usage\":null,\"choices\":[{\"delta\":{\"content\":\"[DONE]\"}}]}\n\n");
        assert!(!s.done());
        assert_eq!(s.usage(), None);
    }

    #[test]
    fn scanner_bounds_long_lines() {
        let mut s = SseScanner::default();
        s.feed(b"data: ");
        s.feed(&vec![b'x'; MAX_LINE + 10]);
        assert!(s.line.is_empty());
        s.feed(b"\ndata: [DONE]\n");
        assert!(s.done());
    }

    #[test]
    fn usage_filter_drops_only_the_usage_event_whatever_the_chunking() {
        let text = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2,\"total_tokens\":3}}\r\n\r\ndata: [DONE]\n\n";
        for size in [1, 3, 7, 64, text.len()] {
            let mut f = UsageEventFilter::default();
            let mut out = Vec::new();
            for piece in text.as_bytes().chunks(size) {
                out.extend_from_slice(&f.push(piece));
            }
            out.extend_from_slice(&f.finish());
            let out = String::from_utf8(out).unwrap();
            assert!(out.contains("\"content\":\"hi\""), "{out}");
            assert!(out.contains("[DONE]"), "{out}");
            assert!(
                !out.contains("prompt_tokens"),
                "usage event kept at chunk size {size}: {out}"
            );
        }
    }

    /// The event cut before issue 5's rewrite: a search of the whole
    /// buffer for each boundary. The incremental search must agree.
    fn old_event_end(buf: &[u8]) -> Option<usize> {
        let lf = buf.windows(2).position(|w| w == b"\n\n").map(|p| p + 2);
        let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
        match (lf, crlf) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    #[test]
    fn issue_5_incremental_event_cut_matches_the_whole_buffer_search() {
        let text: &[u8] = b"data: a\n\ndata: b\r\n\r\n: c\n\r\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\n\n\r\n\r\n\n\ndata: d\r\n\ndata: [DONE]\n\ntail";
        let mut expected = Vec::new();
        let mut rest = text;
        while let Some(e) = old_event_end(rest) {
            expected.push(rest[..e].to_vec());
            rest = &rest[e..];
        }
        for size in 1..=text.len() {
            // Without hiding usage or rewriting, the output is the input.
            let mut f = UsageEventFilter::default();
            let mut out = Vec::new();
            let mut cuts = Vec::new();
            for piece in text.chunks(size) {
                let b = f
                    .push_through(Bytes::copy_from_slice(piece), false, None)
                    .unwrap();
                out.extend_from_slice(&b);
                cuts.push(out.len());
            }
            out.extend_from_slice(&f.finish());
            assert_eq!(out, text, "chunk size {size}");
            // Every forwarded piece ends at an event boundary.
            let mut bounds = vec![0];
            for e in &expected {
                bounds.push(bounds.last().unwrap() + e.len());
            }
            for c in &cuts {
                assert!(bounds.contains(c), "chunk size {size}: cut at {c}");
            }
            // The rewriter sees exactly the events of the whole-buffer search.
            struct Collect(std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>);
            impl EventRewriter for Collect {
                fn event(&mut self, event: &[u8]) -> Result<Bytes, Refusal> {
                    self.0.lock().unwrap().push(event.to_vec());
                    Ok(Bytes::copy_from_slice(event))
                }
            }
            let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            let mut r: Box<dyn EventRewriter> = Box::new(Collect(seen.clone()));
            let mut f = UsageEventFilter::default();
            for piece in text.chunks(size) {
                f.push_through(Bytes::copy_from_slice(piece), false, Some(&mut r))
                    .unwrap();
            }
            assert_eq!(*seen.lock().unwrap(), expected, "chunk size {size}");
        }
    }

    #[test]
    fn issue_5_usage_only_events_are_recognised_without_a_json_tree() {
        assert!(is_usage_only(
            b"data: {\"id\":\"x\",\"choices\": [ ],\"usage\": {\"total_tokens\":3}}\n\n"
        ));
        assert!(is_usage_only(
            b"data: {\"choices\":[],\r\ndata: \"usage\":{}}\r\n\r\n"
        ));
        for not in [
            &b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n"[..],
            b"data: {\"choices\":[],\"usage\":null}\n\n",
            b"data: {\"usage\":{\"total_tokens\":3}}\n\n",
            b"data: [[],{\"usage\":{}}]\n\n",
            b"data: {\"choices\":[],\"usage\":{},\"usage\":{}}\n\n",
            b": usage\n\n",
        ] {
            assert!(!is_usage_only(not), "{}", String::from_utf8_lossy(not));
        }
    }

    #[test]
    fn issue_5_a_whole_chunk_passes_without_a_copy() {
        let chunk = Bytes::from_static(
            b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\ndata: x\n\n",
        );
        let mut f = UsageEventFilter::default();
        let out = f.push_through(chunk.clone(), true, None).unwrap();
        assert_eq!(out, chunk);
        assert_eq!(out.as_ptr(), chunk.as_ptr());
    }

    #[test]
    fn error_event_is_an_openai_error_object() {
        let ev = error_event("boom \"quoted\"", "c");
        let text = std::str::from_utf8(&ev).unwrap();
        let json: serde_json::Value =
            serde_json::from_str(text.strip_prefix("data: ").unwrap().trim()).unwrap();
        assert_eq!(json["error"]["message"], "boom \"quoted\"");
        assert_eq!(json["error"]["code"], "c");
    }
}
