//! The pure core of aibox's guardrails: text in, findings and verdicts out.
//!
//! This crate does no IO: no files, no sockets, no clock. The gateway owns
//! the request path, the model calls of the critique step and the audit log;
//! everything it decides about *content* is decided here, where it can be
//! unit-tested and benchmarked in isolation.
//!
//! - [`constitution`]: `deploy/config/guardrail/constitution.yaml`, parsed
//!   and validated with errors that name the file, the line, the key and the
//!   fix.
//! - [`profile`]: the `permissive`, `standard` and `strict` scanner profiles,
//!   each a table of actions per scanner and stage.
//! - [`normalize`]: the folded view of a text (compatibility decomposition,
//!   invisible and bidi characters removed, homoglyphs and full-width forms
//!   mapped to ASCII, lower case, simple obfuscation collapsed) with an
//!   offset map back to the original.
//! - [`pii`], [`secrets`], [`injection`], [`topics`]: the scanners, each a
//!   pure function from text to [`Finding`]s, each running its whole pattern
//!   set in one pass (a keyword prefilter at word starts, then regexes on
//!   small windows around the keywords found).
//! - [`tooldef`]: the tool-poisoning rules for MCP tool definitions, which
//!   [`Guardrail::scan_tool_definition`] adds to the injection score.
//! - [`engine`]: the [`Guardrail`], compiled once from a constitution, and
//!   its [`Verdict`].
//! - [`vault`]: per-turn redaction with stable placeholders and restore.
//! - [`stream`]: the hold-back state machine that scans a streamed
//!   completion.
//! - [`critique`]: the request body and verdict parser of the Constitutional
//!   AI critique step (the gateway makes the call).
//! - [`eval`]: precision and recall over the labelled corpus in `corpus/`.

pub mod constitution;
pub mod critique;
pub mod engine;
pub mod eval;
pub mod finding;
pub mod injection;
mod kwindex;
pub mod normalize;
pub mod pii;
pub mod profile;
pub mod secrets;
pub mod stream;
mod swar;
pub mod synth;
pub mod tooldef;
pub mod topics;
pub mod vault;

pub use aibox_core::audit::{FindingCount, GuardAction, GuardStage};
pub use constitution::{Constitution, ConstitutionError, CritiqueConfig, OnError};
pub use critique::{CritiqueDecision, CritiqueError, CritiqueVerdict};
pub use engine::{CritiqueSettings, Guardrail, GuardrailError, Verdict};
pub use finding::{Finding, Scanner};
pub use profile::{Profile, profile_table_markdown};
pub use stream::{StreamScanner, StreamStep};
pub use vault::TurnVault;
