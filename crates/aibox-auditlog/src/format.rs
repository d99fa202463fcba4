//! The byte formats this crate adds to the `aibox-audit` core: the row hash,
//! the key fingerprint, the event prefix check, and the JSON documents
//! (turn records, receipts, bundles, reports) that leave the process.
//!
//! Everything here is pure and documented in the crate root, so that a
//! third party can re-implement it.

use aibox_audit::Hash;
use aibox_audit::keys::{AuditKeyMaterial, KeyError, KeyPurpose};
use aibox_core::{TenantId, TurnId};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The domain-separation label of row hashes (followed by one 0x00 byte).
pub const ROW_HASH_LABEL: &[u8] = b"aibox-audit-row/v1";

/// The domain-separation label of key fingerprints (followed by 0x00).
pub const FINGERPRINT_LABEL: &[u8] = b"aibox-audit-key-fingerprint/v1";

/// The key name under which the fingerprint key is derived (version 0, which
/// never signs anything: signing versions start at 1).
pub const FINGERPRINT_KEY_NAME: &str = "aibox-audit-key-fingerprint";

/// The `prev_row_hash` of a tenant's first row.
pub const GENESIS_ROW_HASH: Hash = [0u8; 32];

/// The `format` value of receipts.
pub const RECEIPT_FORMAT: &str = "aibox-receipt/v1";

/// The `format` value of export bundles.
pub const BUNDLE_FORMAT: &str = "aibox-audit-bundle/v1";

/// The hash of one row of a tenant's chain:
///
/// ```text
/// SHA-256( "aibox-audit-row/v1" || 0x00
///          || u8(byte length of tenant) || tenant (UTF-8)
///          || u64 big-endian seq
///          || prev_row_hash (32 bytes)
///          || event leaf hash (32 bytes) = SHA-256(0x00 || canonical event bytes) )
/// ```
pub fn row_hash(tenant: &str, seq: u64, prev_row_hash: &Hash, event_leaf_hash: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update(ROW_HASH_LABEL);
    h.update([0u8]);
    // Tenant ids are at most 64 bytes (aibox_core::ids), so one length byte
    // is enough; saturating keeps a hypothetical longer id unambiguous
    // enough to never panic, and such an id cannot be constructed anyway.
    h.update([u8::try_from(tenant.len()).unwrap_or(u8::MAX)]);
    h.update(tenant.as_bytes());
    h.update(seq.to_be_bytes());
    h.update(prev_row_hash);
    h.update(event_leaf_hash);
    h.finalize().into()
}

/// The fingerprint of an `AUDIT_SIGNING_KEY`, recorded in `audit_keys` so a
/// restarted process recognises which version its key is:
///
/// ```text
/// P = Ed25519 public key of AuditKeyMaterial(secret, version 0)
///         .signer(checkpoint purpose, key name "aibox-audit-key-fingerprint")
/// fingerprint = lowercase hex( SHA-256("aibox-audit-key-fingerprint/v1" || 0x00 || P) )
/// ```
///
/// It is derived from a public key, so it reveals no more about the secret
/// than the published verifier keys do.
pub fn key_fingerprint(secret: &str) -> Result<String, KeyError> {
    let material = AuditKeyMaterial::new(secret, 0)?;
    let signer = material.signer(KeyPurpose::Checkpoint, FINGERPRINT_KEY_NAME)?;
    let mut h = Sha256::new();
    h.update(FINGERPRINT_LABEL);
    h.update([0u8]);
    h.update(signer.verifier().public_key());
    Ok(hex::encode(h.finalize()))
}

/// Writes into `out` the prefix that the canonical bytes of every event of
/// `tenant` and `turn` start with: `{"tenant":"<tenant>","turn":` followed by
/// `null` or `"<turn>"`, then `,`.
///
/// Tenant and turn ids contain no character that JSON escapes, and the
/// field order of `AuditEvent` is fixed, so this byte comparison is exactly
/// "the event belongs to this tenant and turn" without parsing JSON.
pub fn event_prefix(tenant: &str, turn: Option<&str>, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(br#"{"tenant":""#);
    out.extend_from_slice(tenant.as_bytes());
    out.extend_from_slice(br#"","turn":"#);
    match turn {
        Some(t) => {
            out.push(b'"');
            out.extend_from_slice(t.as_bytes());
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
    out.push(b',');
}

/// Standard padded base64 of a hash.
pub fn b64(h: &[u8]) -> String {
    STANDARD.encode(h)
}

/// Decodes standard padded base64 of exactly 32 bytes.
pub fn unb64_hash(s: &str) -> Option<Hash> {
    STANDARD
        .decode(s)
        .ok()
        .and_then(|v| Hash::try_from(v.as_slice()).ok())
}

/// A 32-byte hash from a database column.
pub(crate) fn hash_from_slice(b: &[u8]) -> Option<Hash> {
    Hash::try_from(b).ok()
}

/// What `append_turn` returns once the turn is durable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TurnRecord {
    /// The tenant.
    pub tenant: TenantId,
    /// The turn, or `None` for a batch of events without a turn.
    pub turn: Option<TurnId>,
    /// The tenant-wide sequence number of the first event.
    pub first_seq: u64,
    /// The tenant-wide sequence number of the last event.
    pub last_seq: u64,
    /// The envelope's index in the tenant's log (Merkle tree).
    pub leaf_index: u64,
    /// The signed envelope (note text, blank line, signature line).
    pub envelope: String,
    /// The audit key version that signed the envelope (and the checkpoint).
    pub key_version: u32,
    /// The size of the tenant's tree once the transaction committed.
    pub tree_size: u64,
    /// The checkpoint of that size, signed in the same transaction, when
    /// the tenant's checkpoint cadence was due (see
    /// [`crate::AuditLogOptions::checkpoint_interval`]); `None` otherwise,
    /// and then a later one covers this turn.
    pub checkpoint: Option<String>,
}

/// The published verifier keys of one key version for one tenant's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKeyRecord {
    /// The audit key version.
    pub version: u32,
    /// Verifies checkpoints: `<origin>+<key id>+<base64(0x01 || key)>`.
    pub checkpoint_key: String,
    /// Verifies envelopes: `<origin>/envelope+<key id>+<base64>`.
    pub envelope_key: String,
}

/// Proof that one turn's envelope is in a tenant's log, verifiable offline
/// with [`crate::verify_receipt`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// Always [`RECEIPT_FORMAT`].
    pub format: String,
    /// The tenant whose log holds the envelope.
    pub tenant: TenantId,
    /// The turn, or `None` for a turnless batch.
    pub turn: Option<TurnId>,
    /// The events of the envelope, each its canonical JSON text, in order.
    pub events: Vec<String>,
    /// The signed envelope note.
    pub envelope: String,
    /// The audit key version that signed the envelope.
    pub key_version: u32,
    /// The envelope's leaf index in the tenant's log.
    pub leaf_index: u64,
    /// The tree size the proof and checkpoint refer to.
    pub tree_size: u64,
    /// The RFC 9162 inclusion proof, base64 hashes, leaf to root.
    pub inclusion_proof: Vec<String>,
    /// The signed checkpoint of `tree_size`.
    pub checkpoint: String,
}

/// An RFC 9162 consistency proof between two sizes of a tenant's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsistencyProof {
    /// The tenant.
    pub tenant: TenantId,
    /// The old tree size.
    pub old_size: u64,
    /// The new tree size.
    pub new_size: u64,
    /// The proof hashes, base64.
    pub proof: Vec<String>,
    /// The stored signed checkpoint of the old size, when one was written.
    pub old_checkpoint: Option<String>,
    /// The stored signed checkpoint of the new size, when one was written.
    pub new_checkpoint: Option<String>,
}

/// The result of a verification.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// Whether everything checked out.
    pub ok: bool,
    /// Rows (events) checked.
    pub rows: u64,
    /// Envelopes checked.
    pub envelopes: u64,
    /// Checkpoints checked.
    pub checkpoints: u64,
    /// The first sequence number that is missing, altered or unproven.
    pub first_bad_seq: Option<u64>,
    /// What is wrong, for a person.
    pub problem: Option<String>,
    /// The number of envelopes in the recomputed tree.
    pub tree_size: u64,
    /// The recomputed root, base64.
    pub root: String,
    /// Which signatures were checked: `all`, or `head` (see
    /// [`SignatureCheck`]).
    #[serde(default)]
    pub signatures: SignatureCheck,
    /// How many Ed25519 signatures were checked.
    #[serde(default)]
    pub signatures_checked: u64,
    /// The size of the newest stored checkpoint; envelopes past it (at
    /// most `tree_size - checkpoint_size`) are not yet covered by one and
    /// were vouched for by their own signatures.
    #[serde(default)]
    pub checkpoint_size: u64,
}

/// Which signatures a verification checks. Both modes read every row and
/// recompute every row hash and link, every envelope's events root, link
/// and leaf, the whole Merkle tree, and every stored checkpoint's root at
/// its size; they differ only in how many Ed25519 signatures they check,
/// which is what bounds the speed (a signature check costs as much as
/// hashing a few hundred rows).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignatureCheck {
    /// Every envelope's and every checkpoint's signature (the default).
    #[default]
    All,
    /// The newest checkpoint's signature, plus those of the first and the
    /// last envelope and checkpoint signed with each key version. The
    /// newest signed checkpoint commits to every envelope's signed text
    /// through the tree recomputed from the rows, so any change to a row,
    /// to an envelope's text or to the order still fails. What this mode
    /// does not see is damaged signature bytes under a text that is right,
    /// on an envelope or an older checkpoint: the log's content is intact,
    /// but that turn's receipt would not verify. A failure found this way
    /// may be pinned later than the first bad sequence number (a rewritten
    /// older checkpoint is not caught by its signature): a second pass with
    /// [`SignatureCheck::All`] pins it.
    Head,
}

impl std::str::FromStr for SignatureCheck {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "all" => Ok(Self::All),
            "head" => Ok(Self::Head),
            other => Err(format!(
                "unknown signature check {other:?}: use `all` (every signature) or `head` (the newest checkpoint and each key version's first and last)"
            )),
        }
    }
}

/// One row of an export bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleRow {
    /// The tenant-wide sequence number.
    pub seq: u64,
    /// The turn id column, `null` for turnless events.
    pub turn: Option<String>,
    /// The event's canonical JSON text; its UTF-8 bytes are the leaf data.
    pub event: String,
    /// The previous row's hash, base64.
    pub prev_row_hash: String,
    /// This row's hash, base64.
    pub row_hash: String,
}

/// One row of a page of a tenant's log ([`crate::AuditLog::page`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageRow {
    /// The tenant-wide sequence number.
    pub seq: u64,
    /// The turn id column, `null` for turnless events.
    pub turn: Option<String>,
    /// The event's canonical JSON text.
    pub event: String,
}

/// A page of a tenant's log, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogPage {
    /// The rows, by descending seq.
    pub rows: Vec<PageRow>,
    /// The newest seq of the whole log (0 when empty): its row count.
    pub last_seq: u64,
}

/// One envelope of an export bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleEnvelope {
    /// Its index in the tenant's log.
    pub leaf_index: u64,
    /// The key version that signed it.
    pub key_version: u32,
    /// The signed envelope note.
    pub note: String,
}

/// One checkpoint of an export bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleCheckpoint {
    /// Its tree size.
    pub size: u64,
    /// The key version that signed it.
    pub key_version: u32,
    /// The signed checkpoint note.
    pub note: String,
}

/// Everything about one tenant's log, verifiable offline with
/// [`crate::verify_bundle`]. The format is specified in the crate docs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bundle {
    /// Always [`BUNDLE_FORMAT`].
    pub format: String,
    /// The tenant.
    pub tenant: TenantId,
    /// The log origin, `<prefix>/<tenant>`.
    pub origin: String,
    /// The verifier keys of every key version used for this tenant.
    pub public_keys: Vec<PublicKeyRecord>,
    /// Every row, by ascending seq.
    pub rows: Vec<BundleRow>,
    /// Every envelope, by ascending leaf index.
    pub envelopes: Vec<BundleEnvelope>,
    /// Every checkpoint, by ascending size.
    pub checkpoints: Vec<BundleCheckpoint>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_hash_matches_its_documented_encoding() {
        let prev = [7u8; 32];
        let leaf = [9u8; 32];
        let mut msg = Vec::new();
        msg.extend_from_slice(b"aibox-audit-row/v1\0");
        msg.push(4);
        msg.extend_from_slice(b"acme");
        msg.extend_from_slice(&[0, 0, 0, 0, 0, 0, 1, 2]);
        msg.extend_from_slice(&prev);
        msg.extend_from_slice(&leaf);
        let want: Hash = Sha256::digest(&msg).into();
        assert_eq!(row_hash("acme", 258, &prev, &leaf), want);
        // Every input matters.
        assert_ne!(row_hash("acmf", 258, &prev, &leaf), want);
        assert_ne!(row_hash("acme", 259, &prev, &leaf), want);
        assert_ne!(row_hash("acme", 258, &leaf, &leaf), want);
        assert_ne!(row_hash("acme", 258, &prev, &prev), want);
        // The length byte separates tenant from seq.
        assert_ne!(
            row_hash("a", 0, &prev, &leaf),
            row_hash("a\0", 0, &prev, &leaf)
        );
    }

    #[test]
    fn fingerprint_is_stable_per_secret_and_hides_it() {
        let a = key_fingerprint(&"a".repeat(32)).unwrap();
        assert_eq!(
            a,
            key_fingerprint(&format!(" {}\n", "a".repeat(32))).unwrap()
        );
        assert_ne!(a, key_fingerprint(&"b".repeat(32)).unwrap());
        assert_eq!(a.len(), 64);
        assert!(key_fingerprint("short").is_err());
        assert!(key_fingerprint(aibox_core::keyring::AUDIT_KEY_PLACEHOLDER).is_err());
    }

    #[test]
    fn event_prefix_matches_canonical_bytes() {
        use aibox_core::audit::{AuditEvent, EventKind, TurnStatus};
        let turn = TurnId::generate();
        for t in [Some(turn), None] {
            let e = AuditEvent {
                tenant: TenantId::new("acme").unwrap(),
                turn: t.clone(),
                request_id: None,
                at_ms: 1,
                kind: EventKind::TurnEnd {
                    status: TurnStatus::Ok,
                    duration_ms: 1,
                },
            };
            let mut p = Vec::new();
            event_prefix("acme", t.as_ref().map(TurnId::as_str), &mut p);
            assert!(e.canonical_bytes().unwrap().starts_with(&p));
            event_prefix("acm", t.as_ref().map(TurnId::as_str), &mut p);
            assert!(!e.canonical_bytes().unwrap().starts_with(&p));
        }
    }
}
