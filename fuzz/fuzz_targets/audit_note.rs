//! Signed notes, checkpoints and envelopes of the audit log (C2SP signed
//! notes, tlog checkpoints, aibox envelopes) and verifier key strings: what
//! a third party hands aibox's verifiers.
//!
//! The first byte picks the mode:
//! - even: the rest is a signed note, opened with the tenant's keys and as
//!   a checkpoint and an envelope; a verified note's text is a prefix of it;
//! - odd: the rest is a note text: a parsed checkpoint or envelope writes
//!   back to exactly that text (one text per value, so no two texts sign
//!   the same log state), a signable text opens back to itself with one
//!   verified signature, and a parsed verifier key string survives a round
//!   trip.
#![no_main]

use std::sync::OnceLock;

use aibox_audit::checkpoint::{self, Checkpoint};
use aibox_audit::envelope::{Envelope, open_envelope};
use aibox_audit::note::{self, NoteVerifier};
use aibox_audit::{AuditKeyMaterial, TenantKeys};
use libfuzzer_sys::fuzz_target;

const ORIGIN: &str = "aibox.example/audit/acme";

fn keys() -> &'static (TenantKeys, Vec<NoteVerifier>) {
    static K: OnceLock<(TenantKeys, Vec<NoteVerifier>)> = OnceLock::new();
    K.get_or_init(|| {
        let material =
            AuditKeyMaterial::new("fuzzing-audit-signing-key-0123456789abcdef", 1).expect("key");
        let keys = material.tenant_keys(ORIGIN).expect("tenant keys");
        let (cp, env) = keys.verifiers();
        (keys, vec![cp, env])
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (keys, verifiers) = keys();
    if mode % 2 == 0 {
        if let Ok(opened) = note::open(rest, verifiers) {
            assert!(rest.starts_with(opened.text.as_bytes()));
            assert!(opened.verified.len() <= verifiers.len());
        }
        let _ = checkpoint::open(rest, &verifiers[..1]);
        let _ = open_envelope(rest, &verifiers[1..]);
        return;
    }
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    if let Ok(cp) = Checkpoint::parse(text) {
        assert_eq!(cp.to_text(), text, "a checkpoint text is not canonical");
    }
    if let Ok(env) = Envelope::parse(text) {
        assert_eq!(env.to_text(), text, "an envelope text is not canonical");
    }
    if let Ok(signed) = note::sign(text, &[&keys.envelope]) {
        let opened = note::open(signed.as_bytes(), verifiers).expect("a signed note opens");
        assert_eq!(opened.text, text);
        assert_eq!(opened.verified.len(), 1);
    }
    if let Ok(v) = NoteVerifier::from_key_string(text) {
        let again = NoteVerifier::from_key_string(&v.to_string()).expect("a key string parses");
        assert_eq!(again, v);
    }
});
