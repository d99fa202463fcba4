//! A fake OpenAI-compatible model server for end-to-end tests and benchmarks.
//!
//! It speaks the real OpenAI wire protocol (JSON bodies, SSE streaming with
//! `data: {json}\n\n` events and a final `data: [DONE]\n\n`) so that the
//! gateway and the official SDKs exercise the same code paths as against
//! api.openai.com. Fault modes are selected by the request's `model` field so a
//! gateway configuration can route a model alias to a misbehaving upstream.
//! The binary in `main.rs` is a thin CLI around [`router`].

mod app;
mod sse;
mod stats;
mod wire;

#[cfg(test)]
mod tests;

pub use app::{Config, router};
