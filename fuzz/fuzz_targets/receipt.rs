//! Receipts (`aibox-receipt/v1`), as a client hands them to
//! `aibox audit verify-receipt` or the verify API: JSON, then signatures,
//! tenant, events and the inclusion proof.
//!
//! The first byte picks the mode:
//! - even: the rest is a receipt's JSON, verified with the fixed tenant's
//!   keys; the fuzzer is seeded with a genuine receipt (see README);
//! - odd: a genuine receipt is built for events made from the rest, and must
//!   verify; then one byte of one event or of the envelope text is changed
//!   (positions and values from the input) and it must not verify.
#![no_main]

use std::sync::OnceLock;

use aibox_audit::checkpoint::Checkpoint;
use aibox_audit::envelope::{Envelope, GENESIS_PREVIOUS};
use aibox_audit::{AuditKeyMaterial, TenantKeys, merkle};
use aibox_auditlog::{RECEIPT_FORMAT, Receipt, verify_receipt};
use aibox_core::audit::{AuditEvent, EventKind, TurnStatus};
use aibox_core::{TenantId, TurnId};
use libfuzzer_sys::fuzz_target;

const ORIGIN: &str = "aibox.example/audit/acme";

fn keys() -> &'static (TenantKeys, Vec<String>) {
    static K: OnceLock<(TenantKeys, Vec<String>)> = OnceLock::new();
    K.get_or_init(|| {
        let material =
            AuditKeyMaterial::new("fuzzing-audit-signing-key-0123456789abcdef", 1).expect("key");
        let keys = material.tenant_keys(ORIGIN).expect("tenant keys");
        let (cp, env) = keys.verifier_keys();
        (keys, vec![cp, env])
    })
}

/// A genuine one-leaf receipt for `events` (a tree of size one).
fn receipt(keys: &TenantKeys, events: &[AuditEvent]) -> Receipt {
    let tenant = TenantId::new("acme").expect("tenant");
    let turn = events[0].turn.clone();
    let env = Envelope::build(tenant.clone(), turn.clone(), 0, events, GENESIS_PREVIOUS, 1)
        .expect("envelope");
    let signed_env = env.sign(&keys.envelope).expect("sign envelope");
    let root = merkle::leaf_hash(env.to_text().as_bytes());
    let cp = Checkpoint::new(ORIGIN, 1, root).expect("checkpoint");
    Receipt {
        format: RECEIPT_FORMAT.to_owned(),
        tenant,
        turn,
        events: events
            .iter()
            .map(|e| String::from_utf8(e.canonical_bytes().expect("encode")).expect("utf-8"))
            .collect(),
        envelope: signed_env,
        key_version: 1,
        leaf_index: 0,
        tree_size: 1,
        inclusion_proof: Vec::new(),
        checkpoint: cp.sign(&keys.checkpoint).expect("sign checkpoint"),
    }
}

/// Replaces byte `at % len` of `s` with `to`, if that keeps it UTF-8 and
/// changes it.
fn mutate(s: &str, at: usize, to: u8) -> Option<String> {
    if s.is_empty() {
        return None;
    }
    let mut b = s.as_bytes().to_vec();
    let i = at % b.len();
    if b[i] == to {
        return None;
    }
    b[i] = to;
    String::from_utf8(b).ok()
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (keys, verifier_keys) = keys();
    if mode % 2 == 0 {
        if let Ok(r) = serde_json::from_slice::<Receipt>(rest) {
            let _ = verify_receipt(&r, verifier_keys);
        }
        return;
    }
    let [n, at_hi, at_lo, to, which, body @ ..] = rest else {
        return;
    };
    let turn = Some(TurnId::new("turn-fuzz-1").expect("turn"));
    let count = usize::from(*n % 4) + 1;
    let events: Vec<AuditEvent> = (0..count)
        .map(|i| AuditEvent {
            tenant: TenantId::new("acme").expect("tenant"),
            turn: turn.clone(),
            request_id: None,
            at_ms: i64::try_from(body.len() * 7 + i).unwrap_or(0),
            kind: EventKind::TurnEnd {
                status: if i == 0 {
                    TurnStatus::Error {
                        code: String::from_utf8_lossy(body).into_owned(),
                    }
                } else {
                    TurnStatus::Ok
                },
                duration_ms: u64::from(body.get(i).copied().unwrap_or(0)),
            },
        })
        .collect();
    let good = receipt(keys, &events);
    verify_receipt(&good, verifier_keys).expect("a genuine receipt verifies");
    let at = usize::from(*at_hi) << 8 | usize::from(*at_lo);
    let mut bad = good.clone();
    let changed = if which % 2 == 0 {
        let i = at % bad.events.len();
        mutate(&bad.events[i], at, *to).map(|e| bad.events[i] = e)
    } else {
        // Only the note text: a signature's base64 may have bits that no
        // decoder reads.
        let text_len = bad.envelope.find("\n\n").map_or(0, |p| p + 1);
        mutate(&bad.envelope[..text_len], at, *to)
            .map(|t| bad.envelope = format!("{t}{}", &good.envelope[text_len..]))
    };
    if changed.is_some() {
        assert!(
            verify_receipt(&bad, verifier_keys).is_err(),
            "a modified receipt verified"
        );
    }
});
