//! The pure core of aibox's tamper-evident, independently verifiable audit
//! log.
//!
//! This crate does no IO: no files, no network, no clock. Callers pass
//! timestamps and store what it produces; storage lives in another crate.
//! Everything below is meant to be enough for a third party to write a
//! verifier without reading this code.
//!
//! # Structure
//!
//! Every tenant has one append-only log, an RFC 6962 Merkle tree. Each leaf
//! of the log is one **envelope**: the sealed record of one turn (or of one
//! batch of events without a turn). An envelope commits to its turn's
//! [`AuditEvent`](aibox_core::audit::AuditEvent)s through the Merkle root of
//! their leaf hashes. The head of the log is published as a **checkpoint**.
//! Envelopes and checkpoints are both C2SP signed notes with Ed25519.
//!
//! ```text
//! events ──leaf hashes──▶ events root ──▶ envelope text ──leaf──▶ tenant log ──▶ checkpoint
//!                                          (signed note,                       (signed note,
//!                                           envelope key)                       log key)
//! ```
//!
//! # Hashing ([`merkle`])
//!
//! RFC 6962 / RFC 9162 with SHA-256: leaf hash `SHA-256(0x00 || data)`, node
//! hash `SHA-256(0x01 || left || right)`, empty tree root `SHA-256("")`, and
//! for `n > 1` leaves `MTH(D[0:n]) = node(MTH(D[0:k]), MTH(D[k:n]))` with `k`
//! the largest power of two below `n`. Inclusion and consistency proofs are
//! those of RFC 9162 §2.1.3 and §2.1.4; verifiers must require the exact
//! proof length implied by the sizes, and a consistency proof needs
//! `0 < old size <= new size`.
//!
//! - Event leaf data: `AuditEvent::canonical_bytes()`, the `serde_json`
//!   encoding of the event (see `aibox_core::audit`).
//! - Envelope leaf data (in the tenant log): the envelope's note text, i.e.
//!   the nine lines below including the final newline, without the blank
//!   line and the signature lines.
//!
//! # Signed notes ([`note`])
//!
//! C2SP signed-note, as `golang.org/x/mod/sumdb/note`: the text (ending in
//! `\n`), a blank line, then lines `— <key name> <base64(key id || sig)>\n`
//! (U+2014 em dash, space). Base64 is standard and padded. The key id is the
//! big-endian first 4 bytes of `SHA-256(name || 0x0A || 0x01 || public
//! key)`; the signature is Ed25519 (RFC 8032) over the text. Verifier keys
//! are shared as `<name>+<8 hex key id>+<base64(0x01 || public key)>`.
//!
//! # Envelopes ([`envelope`])
//!
//! ```text
//! aibox-envelope/v1
//! <tenant id>
//! <turn id, or "*" when the events have no turn>
//! <first event sequence number>
//! <last event sequence number>
//! <event count>
//! <base64 of the events' Merkle root>
//! <base64 of the previous envelope's leaf hash in the tenant log, 32 zero bytes for the first>
//! <seal time in Unix milliseconds>
//! ```
//!
//! Decimal numbers have no sign and no leading zeros; `count >= 1` and
//! `last - first + 1 == count`. The envelope key's name is
//! `<origin>/envelope`. To verify a turn: open the signed note with the
//! tenant's envelope verifier key, parse the nine lines, check that every
//! event has the envelope's tenant and turn (`turn: null` for `*`), that
//! the count matches, and that the Merkle root over the events'
//! leaf hashes, in order, equals line 7. Consecutive envelopes of a tenant
//! chain: line 8 of each is `SHA-256(0x00 || previous envelope text)` and its
//! first sequence number is the previous one's last plus one.
//!
//! # Checkpoints ([`checkpoint`])
//!
//! C2SP tlog-checkpoint: `<origin>\n<tree size>\n<base64 root>\n` plus
//! optional non-empty extension lines (aibox writes none). The origin of a
//! tenant's log is `<prefix>/<tenant id>` (default prefix
//! `aibox.local/audit`), and the checkpoint is signed by the log key, whose
//! name is the origin. To verify that an envelope is in the log: open the
//! checkpoint with the log verifier key, check its origin equals the key
//! name, and verify the envelope's inclusion proof (leaf hash =
//! `SHA-256(0x00 || envelope text)`) against the checkpoint's size and root;
//! between two checkpoints, verify a consistency proof.
//!
//! # Keys ([`keys`])
//!
//! Both keys of a tenant log are derived from `AUDIT_SIGNING_KEY` and a key
//! version with HKDF-SHA256 (salt `aibox audit ed25519 v1`, info
//! `<checkpoint|envelope>\n<version>\n<key name>`); third parties only ever
//! need the exported verifier key strings.

pub mod checkpoint;
pub mod envelope;
pub mod keys;
pub mod merkle;
pub mod note;

pub use checkpoint::{Checkpoint, CheckpointError, origin_for_tenant};
pub use envelope::{Envelope, EnvelopeError, open_envelope, verify_envelope};
pub use keys::{AuditKeyMaterial, KeyError, KeyPurpose, TenantKeys};
pub use merkle::{CoarseTree, Frontier, Hash, ProofError, Tree};
pub use note::{NoteError, NoteSigner, NoteVerifier, OpenedNote};
