//! The whole audit path as a third party sees it: per-turn envelopes appended
//! to a tenant log, a signed checkpoint, and verification of an envelope's
//! events, its place in the log, and the log's growth, using only verifier
//! key strings.

use aibox_audit::checkpoint::{self, Checkpoint, DEFAULT_ORIGIN_PREFIX, origin_for_tenant};
use aibox_audit::envelope::{Envelope, EnvelopeError, GENESIS_PREVIOUS, verify_envelope};
use aibox_audit::keys::AuditKeyMaterial;
use aibox_audit::merkle::{self, Tree};
use aibox_audit::note::NoteVerifier;
use aibox_core::audit::{AuditEvent, EventKind, TurnStatus};
use aibox_core::{TenantId, TurnId};

fn turn_events(tenant: &TenantId, turn: &TurnId, n: u32) -> Vec<AuditEvent> {
    (0..n)
        .map(|i| AuditEvent {
            tenant: tenant.clone(),
            turn: Some(turn.clone()),
            request_id: None,
            at_ms: 1_700_000_000_000 + i64::from(i),
            kind: EventKind::TurnEnd {
                status: TurnStatus::Ok,
                duration_ms: u64::from(i),
            },
        })
        .collect()
}

#[test]
fn envelopes_in_a_checkpointed_log_verify_end_to_end() {
    let tenant = TenantId::new("acme").unwrap();
    let origin = origin_for_tenant(DEFAULT_ORIGIN_PREFIX, &tenant).unwrap();
    let material = AuditKeyMaterial::new("an-operator-secret-of-at-least-32-chars", 1).unwrap();
    let keys = material.tenant_keys(&origin).unwrap();
    // What a third party is given: two verifier key strings.
    let (log_vkey, envelope_vkey) = keys.verifier_keys();
    assert!(log_vkey.starts_with("aibox.local/audit/acme+"));
    assert!(envelope_vkey.starts_with("aibox.local/audit/acme/envelope+"));

    // The service seals five turns into the tenant log.
    let mut log = Tree::new();
    let mut sealed = Vec::new();
    let mut previous = GENESIS_PREVIOUS;
    let mut next_seq = 0;
    for t in 0..5u32 {
        let turn = TurnId::new(format!("turn-{t}")).unwrap();
        let events = turn_events(&tenant, &turn, t + 1);
        let env = Envelope::build(
            tenant.clone(),
            Some(turn),
            next_seq,
            &events,
            previous,
            1_700_000_001_000 + u64::from(t),
        )
        .unwrap();
        next_seq = env.last_seq + 1;
        previous = env.leaf_hash();
        let index = log.push_leaf(env.to_text().as_bytes());
        assert_eq!(index, u64::from(t));
        sealed.push((env.sign(&keys.envelope).unwrap(), events, env));
    }
    let old_size = 3;
    let old_checkpoint = Checkpoint::new(&origin, old_size, log.root_at(old_size).unwrap())
        .unwrap()
        .sign(&keys.checkpoint)
        .unwrap();
    let checkpoint_note = Checkpoint::new(&origin, log.size(), log.root())
        .unwrap()
        .sign(&keys.checkpoint)
        .unwrap();

    // The third party verifies with the key strings only.
    let log_key = [NoteVerifier::from_key_string(&log_vkey).unwrap()];
    let envelope_key = [NoteVerifier::from_key_string(&envelope_vkey).unwrap()];
    let head = checkpoint::open(checkpoint_note.as_bytes(), &log_key).unwrap();
    assert_eq!(head.size(), 5);
    for (index, (signed, events, _)) in sealed.iter().enumerate() {
        let env = verify_envelope(signed.as_bytes(), events, &envelope_key).unwrap();
        let index = index as u64;
        let proof = log.inclusion_proof(index, head.size()).unwrap();
        merkle::verify_inclusion(&env.leaf_hash(), index, head.size(), &proof, head.root())
            .unwrap();
    }
    for pair in sealed.windows(2) {
        pair[1].2.check_follows(&pair[0].2).unwrap();
    }
    assert!(matches!(
        sealed[2].2.check_follows(&sealed[0].2),
        Err(EnvelopeError::ChainBroken(_))
    ));

    // The log only grew between the two checkpoints.
    let old = checkpoint::open(old_checkpoint.as_bytes(), &log_key).unwrap();
    let proof = log.consistency_proof(old.size(), head.size()).unwrap();
    merkle::verify_consistency(old.size(), head.size(), old.root(), head.root(), &proof).unwrap();

    // An envelope that is signed but not in the log fails inclusion.
    let stray_turn = TurnId::new("stray").unwrap();
    let stray_events = turn_events(&tenant, &stray_turn, 1);
    let stray = Envelope::build(
        tenant.clone(),
        Some(stray_turn),
        99,
        &stray_events,
        previous,
        0,
    )
    .unwrap();
    let proof = log.inclusion_proof(4, head.size()).unwrap();
    assert!(
        merkle::verify_inclusion(&stray.leaf_hash(), 4, head.size(), &proof, head.root()).is_err()
    );

    // Envelope and log keys are not interchangeable.
    assert!(verify_envelope(sealed[0].0.as_bytes(), &sealed[0].1, &log_key).is_err());
    assert!(checkpoint::open(checkpoint_note.as_bytes(), &envelope_key).is_err());
}
