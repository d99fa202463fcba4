//! Response bodies built from a pre-rendered list of chunks.
//!
//! Every streamed (and deliberately broken) body is described as a list of
//! byte chunks, each with an optional delay before it, plus how the body ends.
//! Rendering chunks up front keeps the streaming loop trivial, and yielding
//! each SSE event as its own frame matches how OpenAI flushes events while
//! still letting hyper coalesce them into few writes when no delay applies.

use std::io;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;

use crate::stats::StreamGuard;

/// How long to wait before an injected abort, so that hyper flushes the chunks
/// already produced and the client observes a mid-body failure rather than a
/// connection that died before the response started.
const ABORT_FLUSH_DELAY: Duration = Duration::from_millis(50);

/// How a planned body ends after its last chunk.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// The body ends normally (terminating chunk sent).
    Clean,
    /// The body stream yields an error, making hyper abort the connection
    /// without the terminating chunk.
    Abort,
}

/// A body to be sent: chunks with the delay to wait before each, and its end.
pub(crate) struct Plan {
    pub(crate) chunks: Vec<(Duration, Bytes)>,
    pub(crate) end: End,
}

impl Plan {
    /// Starts an empty plan with the given ending.
    pub(crate) fn new(end: End) -> Self {
        Self {
            chunks: Vec::new(),
            end,
        }
    }

    /// Appends a chunk sent without delay.
    pub(crate) fn push(&mut self, chunk: Bytes) {
        self.chunks.push((Duration::ZERO, chunk));
    }

    /// Appends a chunk sent after `delay`.
    pub(crate) fn push_after(&mut self, delay: Duration, chunk: Bytes) {
        self.chunks.push((delay, chunk));
    }
}

/// Streaming state carried between polls of the body.
struct State {
    chunks: std::vec::IntoIter<(Duration, Bytes)>,
    end: End,
    guard: Option<StreamGuard>,
    done: bool,
}

impl State {
    fn finish(&mut self, completed: bool) {
        if let Some(guard) = self.guard.as_mut() {
            guard.finish(completed);
        }
    }
}

/// Turns a plan into a response body. When `guard` is given the body counts
/// as an SSE stream in the stats: completed when its final chunk is produced,
/// a disconnect if it is dropped before that.
pub(crate) fn body(plan: Plan, guard: Option<StreamGuard>) -> Body {
    let state = State {
        chunks: plan.chunks.into_iter(),
        end: plan.end,
        guard,
        done: false,
    };
    let stream = futures_util::stream::unfold(state, |mut state| async move {
        if state.done {
            return None;
        }
        if let Some((delay, chunk)) = state.chunks.next() {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            // The stream is counted as completed when its final chunk is
            // produced, before the client can see it, so a test reading
            // `/_stats` right after the end of the stream observes the count.
            if state.chunks.len() == 0 && state.end == End::Clean {
                state.finish(true);
                state.done = true;
            }
            return Some((Ok::<Bytes, io::Error>(chunk), state));
        }
        state.done = true;
        match state.end {
            End::Clean => {
                state.finish(true);
                None
            }
            End::Abort => {
                tokio::time::sleep(ABORT_FLUSH_DELAY).await;
                state.finish(false);
                Some((
                    Err(io::Error::other("fake-upstream: injected abort")),
                    state,
                ))
            }
        }
    });
    Body::from_stream(stream)
}
