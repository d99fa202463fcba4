//! The audit log on SQLite (a temporary directory per test): appends,
//! receipts and offline verification, every tampering case of the shared
//! table, truncation and rollback against a checkpoint kept outside, forks,
//! key rotation, guards and concurrent appends.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use aibox_auditlog::{
    AuditLog, AuditLogError, AuditLogOptions, ReceiptError, SignatureCheck, verify_bundle,
    verify_bundle_with, verify_consistency, verify_receipt, verify_receipt_for_tenant,
};
use aibox_core::TurnId;
use common::{
    Case, KEY1, KEY2, KEY3, Row, Step, cases, check_case, events, fixture, forked_checkpoint,
    per_commit, tenant,
};
use rusqlite::Connection;

fn open(path: &Path, key: &str) -> AuditLog {
    AuditLog::open_sqlite(path, key, &per_commit()).unwrap()
}

fn key_strings(keys: &[aibox_auditlog::PublicKeyRecord]) -> Vec<String> {
    keys.iter()
        .flat_map(|k| [k.checkpoint_key.clone(), k.envelope_key.clone()])
        .collect()
}

/// Removes every trigger on the audit tables, as an attacker with write
/// access to the file can.
fn drop_guards(c: &Connection) {
    let names: Vec<String> = c
        .prepare("SELECT name FROM sqlite_master WHERE type = 'trigger'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for n in names {
        c.execute_batch(&format!("DROP TRIGGER {n}")).unwrap();
    }
}

fn apply(c: &Connection, steps: &[Step]) {
    for s in steps {
        match s {
            Step::Sql(sql) => {
                c.execute_batch(sql).unwrap();
            }
            Step::Rows(edit) => {
                let mut rows: Vec<Row> = c
                    .prepare(
                        "SELECT seq, turn, event, prev_row_hash, row_hash FROM audit_rows WHERE tenant = 'acme' ORDER BY seq",
                    )
                    .unwrap()
                    .query_map([], |r| {
                        Ok(Row {
                            seq: r.get(0)?,
                            turn: r.get(1)?,
                            event: r.get(2)?,
                            prev: r.get(3)?,
                            hash: r.get(4)?,
                        })
                    })
                    .unwrap()
                    .collect::<Result<_, _>>()
                    .unwrap();
                edit(&mut rows);
                c.execute_batch("DELETE FROM audit_rows WHERE tenant = 'acme'")
                    .unwrap();
                for r in rows {
                    c.execute(
                        "INSERT INTO audit_rows (tenant, seq, turn, event, prev_row_hash, row_hash) VALUES ('acme', ?1, ?2, ?3, ?4, ?5)",
                        (r.seq, r.turn, r.event, r.prev, r.hash),
                    )
                    .unwrap();
                }
            }
        }
    }
}

#[tokio::test]
async fn append_receipt_and_offline_verification() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(&dir.path().join("audit.db"), KEY1);
    assert_eq!(log.backend(), "sqlite");
    assert_eq!(log.key_version(), 1);
    assert!(log.key_is_new());
    let acme = tenant("acme");
    let turns = fixture(&log).await;
    // A batch of events without a turn seals too.
    let rec = log
        .append_turn(&acme, None, events(&acme, None, 2, 9))
        .await
        .unwrap();
    assert_eq!((rec.first_seq, rec.last_seq, rec.leaf_index), (13, 14, 4));
    assert_eq!(rec.tree_size, 5);
    // With `per_commit`, every commit signs a checkpoint of its head.
    let cp = rec.checkpoint.as_deref().unwrap_or_default();
    assert!(cp.starts_with("aibox.local/audit/acme\n5\n"), "{cp}");

    let keys = key_strings(&log.public_keys(&acme).await.unwrap());
    assert_eq!(keys.len(), 2);
    let receipt = log.receipt(&acme, &turns[1]).await.unwrap();
    assert_eq!(receipt.leaf_index, 1);
    assert_eq!(receipt.tree_size, 5);
    assert_eq!(receipt.events.len(), 3);
    // The receipt is JSON a third party verifies offline.
    let json = serde_json::to_string(&receipt).unwrap();
    let back: aibox_auditlog::Receipt = serde_json::from_str(&json).unwrap();
    let v = verify_receipt(&back, &keys).unwrap();
    assert_eq!(v.envelope.first_seq, 4);
    assert_eq!(v.envelope.turn.as_ref(), Some(&turns[1]));
    verify_receipt_for_tenant(&back, &acme, &keys).unwrap();
    let turnless = log.receipt_at(&acme, 4).await.unwrap();
    assert_eq!(turnless.turn, None);
    verify_receipt(&turnless, &keys).unwrap();

    // A turn with one event dropped or reordered does not verify.
    let mut dropped = receipt.clone();
    dropped.events.remove(1);
    assert!(matches!(
        verify_receipt(&dropped, &keys),
        Err(ReceiptError::Events(_))
    ));
    let mut reordered = receipt.clone();
    reordered.events.swap(0, 1);
    assert!(matches!(
        verify_receipt(&reordered, &keys),
        Err(ReceiptError::Events(_))
    ));
    let mut moved = receipt.clone();
    moved.leaf_index = 2;
    assert!(matches!(
        verify_receipt(&moved, &keys),
        Err(ReceiptError::Inclusion(_))
    ));
    let mut no_proof = receipt.clone();
    no_proof.inclusion_proof.pop();
    assert!(verify_receipt(&no_proof, &keys).is_err());

    // Consistency between two checkpoints, offline.
    let p = log.consistency_proof(&acme, 2, 5).await.unwrap();
    verify_consistency(
        p.old_checkpoint.as_deref().unwrap(),
        p.new_checkpoint.as_deref().unwrap(),
        &p.proof,
        &keys,
    )
    .unwrap();
    let mut bad = p.proof.clone();
    bad.reverse();
    assert!(
        verify_consistency(
            p.old_checkpoint.as_deref().unwrap(),
            p.new_checkpoint.as_deref().unwrap(),
            &bad,
            &keys
        )
        .is_err()
    );

    let report = log.verify(&acme, |_, _| {}).await.unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!(
        (report.rows, report.envelopes, report.checkpoints),
        (14, 5, 5)
    );
    let cp = log.latest_checkpoint(&acme).await.unwrap().unwrap();
    assert!(
        log.verify_against_checkpoint(&acme, cp.as_bytes())
            .await
            .unwrap()
            .ok
    );

    // Export, through JSON, verifies with the published keys only.
    let bundle = log.export(&acme).await.unwrap();
    let bundle: aibox_auditlog::Bundle =
        serde_json::from_str(&serde_json::to_string(&bundle).unwrap()).unwrap();
    let r = verify_bundle(&bundle, &keys);
    assert!(r.ok, "{r:?}");
    assert_eq!(r.rows, 14);
    assert!(!verify_bundle(&bundle, &[]).ok);
    let mut edited = bundle.clone();
    edited.rows[6].event = edited.rows[6].event.replace("ollama", "0llama");
    let r = verify_bundle(&edited, &keys);
    assert_eq!(r.first_bad_seq, Some(7), "{r:?}");

    assert_eq!(log.tenants().await.unwrap(), vec![acme.clone()]);
    assert_eq!(
        log.tenant_of_turn(&turns[0]).await.unwrap(),
        Some(acme.clone())
    );
    assert_eq!(log.tenant_of_turn(&TurnId::generate()).await.unwrap(), None);
}

#[tokio::test]
async fn a_receipt_of_tenant_a_is_refused_as_tenant_b() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(&dir.path().join("audit.db"), KEY1);
    let (a, b) = (tenant("acme"), tenant("bravo"));
    let turns = fixture(&log).await;
    let tb = TurnId::generate();
    log.append_turn(&b, Some(tb.clone()), events(&b, Some(&tb), 2, 1))
        .await
        .unwrap();
    let a_keys = key_strings(&log.public_keys(&a).await.unwrap());
    let b_keys = key_strings(&log.public_keys(&b).await.unwrap());
    assert_ne!(a_keys, b_keys, "tenants share keys");

    // The store refuses to hand out A's turn as B's, without saying whose.
    let err = log.receipt(&b, &turns[0]).await.unwrap_err();
    assert!(matches!(err, AuditLogError::TurnNotFound { .. }), "{err}");
    assert!(!err.to_string().contains("acme"), "{err}");

    let receipt = log.receipt(&a, &turns[0]).await.unwrap();
    // With B's keys nothing of A's verifies.
    assert!(verify_receipt(&receipt, &b_keys).is_err());
    // Relabelled as B's, the signed texts still name A.
    let mut relabelled = receipt.clone();
    relabelled.tenant = b.clone();
    let all: Vec<String> = a_keys.iter().chain(&b_keys).cloned().collect();
    assert!(matches!(
        verify_receipt(&relabelled, &all),
        Err(ReceiptError::WrongTenant(_))
    ));
    assert!(matches!(
        verify_receipt_for_tenant(&receipt, &b, &all),
        Err(ReceiptError::WrongTenant(_))
    ));
    // B's checkpoint cannot vouch for A's envelope.
    let mut mixed = receipt.clone();
    mixed.checkpoint = log.latest_checkpoint(&b).await.unwrap().unwrap();
    assert!(verify_receipt(&mixed, &all).is_err());
    // An envelope of B's with A's checkpoint fails too.
    let rb = log.receipt(&b, &tb).await.unwrap();
    let mut swapped = rb.clone();
    swapped.envelope = receipt.envelope.clone();
    swapped.events = receipt.events.clone();
    assert!(verify_receipt(&swapped, &all).is_err());
    verify_receipt_for_tenant(&rb, &b, &all).unwrap();
}

#[tokio::test]
async fn every_tampering_case_is_detected_and_pinned() {
    let all = cases();
    assert!(all.len() >= 15);
    for case in &all {
        run_case(case).await;
    }
}

async fn run_case(case: &Case) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let log = open(&path, KEY1);
    fixture(&log).await;
    let acme = tenant("acme");
    let before = log.verify(&acme, |_, _| {}).await.unwrap();
    assert!(
        before.ok,
        "{}: fixture does not verify: {before:?}",
        case.name
    );
    let external = log.latest_checkpoint(&acme).await.unwrap().unwrap();
    {
        let c = Connection::open(&path).unwrap();
        c.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
        drop_guards(&c);
        apply(&c, &case.steps);
    }
    check_case(&log, case, &external).await;
}

#[tokio::test]
async fn rollback_to_an_older_backup_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let backup = dir.path().join("backup.db");
    let log = open(&path, KEY1);
    let acme = tenant("acme");
    for i in 0..2 {
        let turn = TurnId::generate();
        log.append_turn(&acme, Some(turn.clone()), events(&acme, Some(&turn), 3, i))
            .await
            .unwrap();
    }
    {
        let c = Connection::open(&path).unwrap();
        c.execute("VACUUM INTO ?1", [backup.to_str().unwrap()])
            .unwrap();
    }
    for i in 2..5 {
        let turn = TurnId::generate();
        log.append_turn(&acme, Some(turn.clone()), events(&acme, Some(&turn), 3, i))
            .await
            .unwrap();
    }
    let external = log.latest_checkpoint(&acme).await.unwrap().unwrap();
    drop(log);
    // The operator (or an attacker) restores the older copy.
    let restored = open(&backup, KEY1);
    assert_eq!(restored.key_version(), 1);
    let r = restored.verify(&acme, |_, _| {}).await.unwrap();
    assert!(r.ok, "{r:?}");
    let r = restored
        .verify_against_checkpoint(&acme, external.as_bytes())
        .await
        .unwrap();
    assert!(!r.ok);
    assert_eq!(r.first_bad_seq, Some(7), "{r:?}");
    assert!(r.problem.unwrap().contains("rollback"));
}

#[tokio::test]
async fn a_forked_checkpoint_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(&dir.path().join("audit.db"), KEY1);
    let other = open(&dir.path().join("other.db"), KEY1);
    fixture(&log).await;
    let acme = tenant("acme");
    let fork = forked_checkpoint(&other).await;
    let own = log.latest_checkpoint(&acme).await.unwrap().unwrap();
    // Same key, same origin, same size, other root.
    assert_eq!(own.lines().nth(1), fork.lines().nth(1));
    assert_ne!(own, fork);
    let r = log
        .verify_against_checkpoint(&acme, fork.as_bytes())
        .await
        .unwrap();
    assert!(!r.ok);
    assert!(r.problem.as_deref().unwrap().contains("fork"), "{r:?}");

    // A checkpoint of another tenant is refused outright.
    let b = tenant("bravo");
    let tb = TurnId::generate();
    log.append_turn(&b, Some(tb.clone()), events(&b, Some(&tb), 1, 1))
        .await
        .unwrap();
    let b_cp = log.latest_checkpoint(&b).await.unwrap().unwrap();
    assert!(matches!(
        log.verify_against_checkpoint(&acme, b_cp.as_bytes()).await,
        Err(AuditLogError::TrustedCheckpoint(_))
    ));

    // A forked checkpoint stored in place of the real one fails verify too.
    let path = dir.path().join("audit.db");
    {
        let c = Connection::open(&path).unwrap();
        drop_guards(&c);
        c.execute(
            "UPDATE audit_checkpoints SET note = ?1 WHERE tenant = 'acme' AND size = 4",
            [&fork],
        )
        .unwrap();
    }
    let r = log.verify(&acme, |_, _| {}).await.unwrap();
    assert!(!r.ok);
    assert_eq!(r.first_bad_seq, Some(10), "{r:?}");
}

#[tokio::test]
async fn key_rotation_keeps_old_records_verifiable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let acme = tenant("acme");
    let t1 = TurnId::generate();
    {
        let log = open(&path, KEY1);
        assert_eq!(log.key_version(), 1);
        log.append_turn(&acme, Some(t1.clone()), events(&acme, Some(&t1), 3, 1))
            .await
            .unwrap();
    }
    // Rotation: a new AUDIT_SIGNING_KEY; the old one is gone.
    let log = open(&path, KEY2);
    assert_eq!(log.key_version(), 2);
    assert!(log.key_is_new());
    let t2 = TurnId::generate();
    let rec = log
        .append_turn(&acme, Some(t2.clone()), events(&acme, Some(&t2), 3, 2))
        .await
        .unwrap();
    assert_eq!(rec.key_version, 2);
    let published = log.public_keys(&acme).await.unwrap();
    assert_eq!(
        published.iter().map(|k| k.version).collect::<Vec<_>>(),
        vec![1, 2]
    );
    let keys = key_strings(&published);
    let r = log.verify(&acme, |_, _| {}).await.unwrap();
    assert!(r.ok, "{r:?}");
    let old = log.receipt(&acme, &t1).await.unwrap();
    assert_eq!(old.key_version, 1);
    verify_receipt(&old, &keys).unwrap();
    verify_receipt(&log.receipt(&acme, &t2).await.unwrap(), &keys).unwrap();
    // Head mode checks each key version's records too.
    let head = log
        .verify_with(&acme, SignatureCheck::Head, |_, _| {})
        .await
        .unwrap();
    assert!(head.ok, "{head:?}");
    assert_eq!(head.signatures_checked, 4, "{head:?}");
    let bundle = log.export(&acme).await.unwrap();
    assert!(verify_bundle(&bundle, &keys).ok);
    // Without the old version's keys, the old records do not verify, in
    // either mode.
    let only_new = key_strings(&published[1..]);
    let r = verify_bundle(&bundle, &only_new);
    assert!(!r.ok);
    assert_eq!(r.first_bad_seq, Some(1), "{r:?}");
    let r = verify_bundle_with(&bundle, &only_new, SignatureCheck::Head);
    assert!(!r.ok, "{r:?}");
    assert!(verify_receipt(&old, &only_new).is_err());
    drop(log);

    // Going back to the first key is recognised as version 1, not new.
    let again = open(&path, KEY1);
    assert_eq!(again.key_version(), 1);
    assert!(!again.key_is_new());
    drop(again);

    // A record signed by a never-published key does not verify.
    let rogue_dir = tempfile::tempdir().unwrap();
    let rogue = open(&rogue_dir.path().join("rogue.db"), KEY3);
    let forged = rogue
        .append_turn(&acme, Some(t1.clone()), events(&acme, Some(&t1), 3, 1))
        .await
        .unwrap();
    let mut fake = old.clone();
    fake.envelope = forged.envelope.clone();
    assert!(verify_receipt(&fake, &keys).is_err());
    let fake_whole = rogue.receipt(&acme, &t1).await.unwrap();
    assert!(verify_receipt(&fake_whole, &keys).is_err());
    // Stored in the database in place of the genuine envelope, it is caught.
    {
        let c = Connection::open(&path).unwrap();
        drop_guards(&c);
        c.execute(
            "UPDATE audit_envelopes SET note = ?1 WHERE tenant = 'acme' AND leaf_index = 0",
            [&forged.envelope],
        )
        .unwrap();
    }
    let log = open_unguarded(&path);
    let r = log.verify(&acme, |_, _| {}).await.unwrap();
    assert!(!r.ok);
    assert_eq!(r.first_bad_seq, Some(1), "{r:?}");
}

/// Re-opens a database whose guards a test removed: restores them first,
/// since start-up refuses to run without them.
fn open_unguarded(path: &Path) -> AuditLog {
    AuditLog::restore_guards_sqlite(path).unwrap();
    open(path, KEY2)
}

#[tokio::test]
async fn a_substituted_recorded_key_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let log = open(&path, KEY1);
    fixture(&log).await;
    let rogue_dir = tempfile::tempdir().unwrap();
    let rogue = open(&rogue_dir.path().join("r.db"), KEY3);
    let rogue_keys = rogue.public_keys(&tenant("acme")).await.unwrap();
    {
        let c = Connection::open(&path).unwrap();
        drop_guards(&c);
        c.execute(
            "UPDATE audit_tenant_keys SET checkpoint_key = ?1, envelope_key = ?2 WHERE tenant = 'acme'",
            (&rogue_keys[0].checkpoint_key, &rogue_keys[0].envelope_key),
        )
        .unwrap();
    }
    let r = log.verify(&tenant("acme"), |_, _| {}).await.unwrap();
    assert!(!r.ok);
    assert!(r.problem.unwrap().contains("tampered"));
    assert!(matches!(
        log.public_keys(&tenant("acme")).await,
        Err(AuditLogError::KeyMismatch { .. })
    ));
}

#[tokio::test]
async fn guards_refuse_update_and_delete_and_are_checked_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let log = open(&path, KEY1);
    fixture(&log).await;
    let c = Connection::open(&path).unwrap();
    for sql in [
        "UPDATE audit_rows SET event = 'x' WHERE seq = 1",
        "DELETE FROM audit_rows WHERE seq = 12",
        "DELETE FROM audit_rows",
        "UPDATE audit_envelopes SET note = 'x'",
        "DELETE FROM audit_envelopes",
        "UPDATE audit_checkpoints SET note = 'x'",
        "DELETE FROM audit_checkpoints",
        "DELETE FROM audit_keys",
        "UPDATE audit_tenant_keys SET envelope_key = 'x'",
        "DELETE FROM audit_heads",
        "UPDATE audit_heads SET last_seq = 1",
    ] {
        let err = c.execute_batch(sql).unwrap_err().to_string();
        assert!(err.contains("aibox audit log"), "{sql}: {err}");
    }
    assert!(log.verify(&tenant("acme"), |_, _| {}).await.unwrap().ok);

    // A dropped guard is reported by the running process's self-check and
    // stops the next start-up with the fix.
    log.check_guards().await.unwrap();
    c.execute_batch("DROP TRIGGER audit_rows_no_delete")
        .unwrap();
    assert!(matches!(
        log.check_guards().await,
        Err(AuditLogError::Guards { .. })
    ));
    drop(log);
    let err = AuditLog::open_sqlite(&path, KEY1, &AuditLogOptions::default())
        .err()
        .unwrap();
    let msg = err.to_string();
    assert!(matches!(err, AuditLogError::Guards { .. }), "{msg}");
    assert!(
        msg.contains("audit_rows_no_delete is missing") && msg.contains("restore-guards"),
        "{msg}"
    );
    // So does a guard replaced by a harmless one, or a trigger that would
    // silently drop inserts.
    AuditLog::restore_guards_sqlite(&path).unwrap();
    c.execute_batch(
        "DROP TRIGGER audit_rows_no_update;
         CREATE TRIGGER audit_rows_no_update BEFORE UPDATE ON audit_rows WHEN 0 BEGIN SELECT RAISE(ABORT, 'x'); END;",
    )
    .unwrap();
    let msg = AuditLog::open_sqlite(&path, KEY1, &AuditLogOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("audit_rows_no_update was altered"), "{msg}");
    AuditLog::restore_guards_sqlite(&path).unwrap();
    c.execute_batch(
        "CREATE TRIGGER sneaky BEFORE INSERT ON audit_rows BEGIN SELECT RAISE(IGNORE); END;",
    )
    .unwrap();
    let msg = AuditLog::open_sqlite(&path, KEY1, &AuditLogOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("unexpected trigger sneaky"), "{msg}");
    AuditLog::restore_guards_sqlite(&path).unwrap();
    let log = open(&path, KEY1);
    assert!(log.verify(&tenant("acme"), |_, _| {}).await.unwrap().ok);
}

#[tokio::test]
async fn a_silently_skipped_insert_fails_the_append() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let log = open(&path, KEY1);
    let acme = tenant("acme");
    fixture(&log).await;
    // Installed behind the running process's back.
    let c = Connection::open(&path).unwrap();
    c.execute_batch(
        "CREATE TRIGGER sneaky BEFORE INSERT ON audit_rows BEGIN SELECT RAISE(IGNORE); END;",
    )
    .unwrap();
    let turn = TurnId::generate();
    let err = log
        .append_turn(&acme, Some(turn.clone()), events(&acme, Some(&turn), 2, 7))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("silently skipped"), "{err}");
    c.execute_batch("DROP TRIGGER sneaky").unwrap();
    // Nothing of the failed transaction was kept; the log goes on.
    let rec = log
        .append_turn(&acme, Some(turn.clone()), events(&acme, Some(&turn), 2, 7))
        .await
        .unwrap();
    assert_eq!(rec.first_seq, 13);
    assert!(log.verify(&acme, |_, _| {}).await.unwrap().ok);
}

#[tokio::test]
async fn bad_keys_and_bad_events_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    for bad in [aibox_core::keyring::AUDIT_KEY_PLACEHOLDER, "too-short"] {
        let err = AuditLog::open_sqlite(&path, bad, &AuditLogOptions::default())
            .err()
            .unwrap();
        let msg = err.to_string();
        assert!(matches!(err, AuditLogError::Key(_)), "{msg}");
        assert!(
            msg.contains("AUDIT_SIGNING_KEY") && msg.contains("fix"),
            "{msg}"
        );
        assert!(!msg.contains(KEY1));
    }
    let log = open(&path, KEY1);
    let (a, b) = (tenant("acme"), tenant("bravo"));
    let turn = TurnId::generate();
    assert!(matches!(
        log.append_turn(&a, Some(turn.clone()), vec![]).await,
        Err(AuditLogError::Events(_))
    ));
    assert!(matches!(
        log.append_turn(&a, Some(turn.clone()), events(&b, Some(&turn), 2, 1))
            .await,
        Err(AuditLogError::Events(_))
    ));
    assert!(matches!(
        log.append_turn(&a, None, events(&a, Some(&turn), 2, 1))
            .await,
        Err(AuditLogError::Events(_))
    ));
    // A turn is sealed once; its batch mates are unaffected.
    log.append_turn(&a, Some(turn.clone()), events(&a, Some(&turn), 2, 1))
        .await
        .unwrap();
    let other = TurnId::generate();
    let (again, fresh) = tokio::join!(
        log.append_turn(&a, Some(turn.clone()), events(&a, Some(&turn), 2, 2)),
        log.append_turn(&a, Some(other.clone()), events(&a, Some(&other), 2, 3)),
    );
    assert!(matches!(
        again,
        Err(AuditLogError::TurnAlreadySealed { .. })
    ));
    assert_eq!(fresh.unwrap().first_seq, 3);
    assert!(log.verify(&a, |_, _| {}).await.unwrap().ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_form_one_chain_per_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let log = open(&path, KEY1);
    // Two handles on one file, as two processes would have.
    let second = open(&path, KEY1);
    let mut tasks = Vec::new();
    for w in 0..16 {
        let log = if w % 2 == 0 {
            log.clone()
        } else {
            second.clone()
        };
        tasks.push(tokio::spawn(async move {
            for i in 0..10 {
                let t = tenant(if i % 2 == 0 { "acme" } else { "bravo" });
                let turn = TurnId::generate();
                log.append_turn(
                    &t,
                    Some(turn.clone()),
                    events(&t, Some(&turn), 3, w * 100 + i),
                )
                .await
                .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    for name in ["acme", "bravo"] {
        let calls = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let seen = calls.clone();
        let r = log
            .verify(&tenant(name), move |done, total| {
                assert!(done <= total);
                seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            })
            .await
            .unwrap();
        assert!(r.ok, "{name}: {r:?}");
        assert!(calls.load(std::sync::atomic::Ordering::Relaxed) >= 2);
        assert_eq!((r.rows, r.envelopes), (240, 80), "{name}");
        assert!(r.checkpoints >= 1 && r.checkpoints <= 80);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_4_concurrent_appends_strand_no_turn_and_batch_a_backlog() {
    // Every turn queued while a commit runs must be committed by a later
    // one: 64 tasks append in tight loops, each append bounded by a
    // timeout, so a stranded turn fails the test instead of hanging it. A backlog must be batched (fewer
    // checkpoints than envelopes), and the chain must verify.
    let dir = tempfile::tempdir().unwrap();
    let log = open(&dir.path().join("audit.db"), KEY1);
    let acme = tenant("acme");
    let mut tasks = Vec::new();
    for w in 0..64i64 {
        let log = log.clone();
        let t = acme.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..20 {
                let turn = TurnId::generate();
                let append = log.append_turn(
                    &t,
                    Some(turn.clone()),
                    events(&t, Some(&turn), 2, w * 100 + i),
                );
                tokio::time::timeout(std::time::Duration::from_secs(30), append)
                    .await
                    .expect("an append was stranded")
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let r = log.verify(&acme, |_, _| {}).await.unwrap();
    assert!(r.ok, "{r:?}");
    assert_eq!((r.rows, r.envelopes), (2560, 1280));
    assert!(r.checkpoints < r.envelopes, "no batching: {r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_4_the_wal_is_checkpointed_off_the_commit_path() {
    // Commits no longer copy the WAL into the database file themselves
    // (below a large backstop); a background thread does. Without it the
    // database file would not grow while the WAL took every page.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let log = open(&path, KEY1);
    // Let the checkpointer copy what start-up wrote, then measure.
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let before = std::fs::metadata(&path).unwrap().len();
    let acme = tenant("acme");
    for i in 0..200 {
        let turn = TurnId::generate();
        log.append_turn(&acme, Some(turn.clone()), events(&acme, Some(&turn), 5, i))
            .await
            .unwrap();
    }
    let mut after = before;
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        after = std::fs::metadata(&path).unwrap().len();
        if after > before {
            break;
        }
    }
    assert!(
        after > before,
        "the database file did not grow ({before} bytes): no checkpoint ran"
    );
    assert!(log.verify(&acme, |_, _| {}).await.unwrap().ok);
}

#[tokio::test]
async fn issue_9_receipts_and_consistency_proofs_across_cache_blocks() {
    // The readers keep only complete blocks of 256 envelopes and read the
    // leaves below that level per proof: receipts and consistency proofs at
    // sizes around block boundaries, for leaves at both ends of blocks, are
    // checked against the signed checkpoints, as a third party would, while
    // the cached tree grows between requests.
    let dir = tempfile::tempdir().unwrap();
    let log = open(&dir.path().join("audit.db"), KEY1);
    let acme = tenant("acme");
    let keys = key_strings(&log.public_keys(&acme).await.unwrap());
    let mut size = 0u64;
    let mut checkpoints: Vec<(u64, String)> = Vec::new();
    for target in [1u64, 2, 255, 256, 257, 300, 511, 512, 513, 700] {
        // Appends of several turns in one transaction as well as alone.
        let mut tasks = Vec::new();
        while size + (tasks.len() as u64) < target {
            let log = log.clone();
            let t = acme.clone();
            let salt = (size + tasks.len() as u64) as i64;
            tasks.push(tokio::spawn(async move {
                log.append_turn(&t, None, events(&t, None, 1, salt))
                    .await
                    .unwrap()
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        size = target;
        let cp = log.latest_checkpoint(&acme).await.unwrap().unwrap();
        checkpoints.push((size, cp));
        let mut indexes = vec![0, size / 2, size - 1, size.saturating_sub(2)];
        indexes.extend([254, 255, 256, 257, 511, 512].iter().filter(|&&i| i < size));
        for i in indexes {
            let r = log.receipt_at(&acme, i).await.unwrap();
            assert_eq!((r.leaf_index, r.tree_size), (i, size));
            verify_receipt(&r, &keys).unwrap_or_else(|e| panic!("receipt {i} of {size}: {e}"));
        }
    }
    // Consistency between every pair of the sizes above.
    for (m, old_cp) in &checkpoints {
        for (n, new_cp) in checkpoints.iter().filter(|(n, _)| n >= m) {
            let p = log.consistency_proof(&acme, *m, *n).await.unwrap();
            verify_consistency(old_cp, new_cp, &p.proof, &keys)
                .unwrap_or_else(|e| panic!("consistency {m} -> {n}: {e}"));
        }
    }
    // A fresh process (empty caches) answers the same.
    drop(log);
    let log = open(&dir.path().join("audit.db"), KEY1);
    for i in [0, 255, 256, 699] {
        verify_receipt(&log.receipt_at(&acme, i).await.unwrap(), &keys).unwrap();
    }
    let p = log.consistency_proof(&acme, 257, 700).await.unwrap();
    verify_consistency(&checkpoints[4].1, &checkpoints[9].1, &p.proof, &keys).unwrap();
}

/// The stored checkpoint sizes of `tenant`, read past the log's API (which
/// would cover the tail first).
fn stored_checkpoints(path: &Path, tenant: &str) -> Vec<u64> {
    let c = Connection::open(path).unwrap();
    let mut st = c
        .prepare("SELECT size FROM audit_checkpoints WHERE tenant = ?1 ORDER BY size")
        .unwrap();
    st.query_map([tenant], |r| r.get::<_, i64>(0))
        .unwrap()
        .map(|r| u64::try_from(r.unwrap()).unwrap())
        .collect()
}

fn with_interval(ms: u64) -> AuditLogOptions {
    AuditLogOptions {
        checkpoint_interval: std::time::Duration::from_millis(ms),
        ..AuditLogOptions::default()
    }
}

/// Issue 4 (session 9): checkpoints are signed at most once per
/// `checkpoint_interval` per tenant, and a reader that needs one over the
/// newest envelopes gets it signed at once.
#[tokio::test]
async fn issue_4_checkpoints_follow_their_cadence_and_cover_on_demand() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let log = AuditLog::open_sqlite(&path, KEY1, &with_interval(3_600_000)).unwrap();
    let acme = tenant("acme");
    let mut turns = Vec::new();
    for i in 0..6 {
        let turn = TurnId::generate();
        let rec = log
            .append_turn(&acme, Some(turn.clone()), events(&acme, Some(&turn), 2, i))
            .await
            .unwrap();
        // The tenant's first commit is due at once; the others are not.
        assert_eq!(rec.checkpoint.is_some(), i == 0, "turn {i}");
        assert_eq!(rec.tree_size, i as u64 + 1);
        turns.push(turn);
    }
    assert_eq!(stored_checkpoints(&path, "acme"), vec![1]);

    // A receipt of an uncovered turn has a checkpoint signed over it.
    let keys = key_strings(&log.public_keys(&acme).await.unwrap());
    let receipt = log.receipt(&acme, &turns[4]).await.unwrap();
    assert_eq!(receipt.tree_size, 6);
    verify_receipt(&receipt, &keys).unwrap();
    assert_eq!(stored_checkpoints(&path, "acme"), vec![1, 6]);
    // Covered already: nothing more is signed.
    log.receipt(&acme, &turns[5]).await.unwrap();
    assert!(
        log.latest_checkpoint(&acme)
            .await
            .unwrap()
            .unwrap()
            .contains("\n6\n")
    );
    assert_eq!(stored_checkpoints(&path, "acme"), vec![1, 6]);

    // A consistency proof to a size not yet covered is made after a cover.
    let turn = TurnId::generate();
    log.append_turn(&acme, Some(turn.clone()), events(&acme, Some(&turn), 1, 9))
        .await
        .unwrap();
    let proof = log.consistency_proof(&acme, 6, 7).await.unwrap();
    verify_consistency(
        proof.old_checkpoint.as_deref().unwrap(),
        proof.new_checkpoint.as_deref().unwrap(),
        &proof.proof,
        &keys,
    )
    .unwrap();
    assert_eq!(stored_checkpoints(&path, "acme"), vec![1, 6, 7]);

    // A covering request for a tenant without a log creates nothing.
    log.cover(&tenant("nobody")).await.unwrap();
    assert!(
        log.tenants()
            .await
            .unwrap()
            .iter()
            .all(|t| t.as_str() != "nobody")
    );

    // An uncovered tail verifies: each envelope by its own signature.
    let turn = TurnId::generate();
    log.append_turn(&acme, Some(turn.clone()), events(&acme, Some(&turn), 1, 10))
        .await
        .unwrap();
    drop(log);
    // The writer covers what is left when the log is closed; give it the
    // moment it needs, then remove that checkpoint to leave the tail bare
    // (as a process killed before its timer fired would).
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(stored_checkpoints(&path, "acme"), vec![1, 6, 7, 8]);
    let c = Connection::open(&path).unwrap();
    drop_guards(&c);
    c.execute("DELETE FROM audit_checkpoints WHERE size = 8", [])
        .unwrap();
    drop(c);
    let log = open_unguarded(&path);
    let bundle = {
        // The export would cover the tail; take the rows as stored.
        let mut b = log.export(&acme).await.unwrap();
        b.checkpoints.retain(|c| c.size < 8);
        b
    };
    for mode in [SignatureCheck::All, SignatureCheck::Head] {
        let r = verify_bundle_with(&bundle, &keys, mode);
        assert!(r.ok, "{mode:?}: {r:?}");
        assert_eq!((r.tree_size, r.checkpoint_size), (8, 7));
        // A forged signature on the uncovered newest envelope is caught in
        // both modes.
        let mut forged = bundle.clone();
        let last = forged.envelopes.last_mut().unwrap();
        let sig_at = last.note.rfind(' ').unwrap() + 1;
        let mut sig = last.note[sig_at..].trim_end().to_owned();
        sig.replace_range(10..11, if &sig[10..11] == "A" { "B" } else { "A" });
        last.note = format!("{}{sig}\n", &last.note[..sig_at]);
        let r = verify_bundle_with(&forged, &keys, mode);
        assert!(!r.ok, "{mode:?}: a forged signature passed");
    }
}

/// Issue 4 (session 9): a tail left uncovered is covered by the writer's
/// own timer once it is `checkpoint_interval` old, with no reader asking.
#[tokio::test]
async fn issue_4_the_writer_covers_an_idle_tail_when_it_is_due() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let log = AuditLog::open_sqlite(&path, KEY1, &with_interval(200)).unwrap();
    let acme = tenant("acme");
    for i in 0..3 {
        log.append_turn(&acme, None, events(&acme, None, 1, i))
            .await
            .unwrap();
    }
    assert_eq!(stored_checkpoints(&path, "acme"), vec![1]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while stored_checkpoints(&path, "acme") != vec![1, 3] {
        assert!(
            std::time::Instant::now() < deadline,
            "the idle tail was not covered: {:?}",
            stored_checkpoints(&path, "acme")
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let r = log.verify(&acme, |_, _| {}).await.unwrap();
    assert!(r.ok && r.checkpoint_size == 3, "{r:?}");
}
