//! The audit log on the real PostgreSQL at 127.0.0.1:5432.
//!
//! Each test creates its own database from the `test` database and drops
//! it at the end. A server that is down fails the test; it is never
//! skipped. Tampering uses a superuser session that disables the guards
//! (`ALTER TABLE ... DISABLE TRIGGER ALL`), as an attacker owning the
//! tables could; verification must still catch it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicU64, Ordering};

use aibox_auditlog::{
    AuditLog, AuditLogError, AuditLogOptions, verify_bundle, verify_consistency, verify_receipt,
    verify_receipt_for_tenant,
};
use aibox_core::TurnId;
use common::{
    Case, KEY1, KEY2, Row, Step, cases, check_case, events, fixture, forked_checkpoint, tenant,
};
use tokio_postgres::{Client, NoTls};

const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

static COUNTER: AtomicU64 = AtomicU64::new(0);

struct TempDb {
    name: String,
}

async fn admin() -> Client {
    let (client, conn) = tokio_postgres::connect(ADMIN_URL, NoTls)
        .await
        .expect("PostgreSQL must be running on 127.0.0.1:5432 (see .ci/run)");
    tokio::spawn(conn);
    client
}

impl TempDb {
    async fn new() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let name = format!(
            "aibox_auditlog_{}_{}_{}",
            std::process::id(),
            nanos,
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        admin()
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        Self { name }
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{}", self.name)
    }

    /// A superuser session on this database.
    async fn raw(&self) -> Client {
        let (client, conn) = tokio_postgres::connect(&self.url(), NoTls).await.unwrap();
        tokio::spawn(conn);
        client
    }

    async fn drop_db(self) {
        admin()
            .await
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .await
            .unwrap();
    }
}

async fn connect(db: &TempDb, key: &str) -> AuditLog {
    AuditLog::connect_postgres(&db.url(), key, &common::per_commit())
        .await
        .unwrap()
}

fn key_strings(keys: &[aibox_auditlog::PublicKeyRecord]) -> Vec<String> {
    keys.iter()
        .flat_map(|k| [k.checkpoint_key.clone(), k.envelope_key.clone()])
        .collect()
}

const TABLES: &[&str] = &[
    "audit_rows",
    "audit_envelopes",
    "audit_checkpoints",
    "audit_keys",
    "audit_tenant_keys",
    "audit_heads",
];

async fn disable_guards(c: &Client) {
    for t in TABLES {
        c.batch_execute(&format!("ALTER TABLE {t} DISABLE TRIGGER ALL"))
            .await
            .unwrap();
    }
}

async fn apply(c: &Client, steps: &[Step]) {
    for s in steps {
        match s {
            Step::Sql(sql) => c.batch_execute(sql).await.unwrap(),
            Step::Rows(edit) => {
                let mut rows: Vec<Row> = c
                    .query(
                        "SELECT seq, turn, event, prev_row_hash, row_hash FROM audit_rows WHERE tenant = 'acme' ORDER BY seq",
                        &[],
                    )
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| Row {
                        seq: r.get(0),
                        turn: r.get(1),
                        event: r.get(2),
                        prev: r.get(3),
                        hash: r.get(4),
                    })
                    .collect();
                edit(&mut rows);
                c.batch_execute("DELETE FROM audit_rows WHERE tenant = 'acme'")
                    .await
                    .unwrap();
                for r in rows {
                    c.execute(
                        "INSERT INTO audit_rows (tenant, seq, turn, event, prev_row_hash, row_hash) VALUES ('acme', $1, $2, $3, $4, $5)",
                        &[&r.seq, &r.turn, &r.event, &r.prev, &r.hash],
                    )
                    .await
                    .unwrap();
                }
            }
        }
    }
}

#[tokio::test]
async fn append_receipt_and_offline_verification() {
    let db = TempDb::new().await;
    let log = connect(&db, KEY1).await;
    assert_eq!(log.backend(), "postgres");
    assert_eq!(log.key_version(), 1);
    log.check_guards().await.unwrap();
    let acme = tenant("acme");
    let turns = fixture(&log).await;
    let keys = key_strings(&log.public_keys(&acme).await.unwrap());
    let receipt = log.receipt(&acme, &turns[2]).await.unwrap();
    let json = serde_json::to_string_pretty(&receipt).unwrap();
    let back: aibox_auditlog::Receipt = serde_json::from_str(&json).unwrap();
    let v = verify_receipt_for_tenant(&back, &acme, &keys).unwrap();
    assert_eq!((v.envelope.first_seq, v.tree_size), (7, 4));
    let mut dropped = back.clone();
    dropped.events.pop();
    assert!(verify_receipt(&dropped, &keys).is_err());
    // Tenant A's receipt is not B's.
    let b = tenant("bravo");
    assert!(matches!(
        log.receipt(&b, &turns[2]).await,
        Err(AuditLogError::TurnNotFound { .. })
    ));
    let mut relabelled = back.clone();
    relabelled.tenant = b.clone();
    assert!(verify_receipt(&relabelled, &keys).is_err());
    assert_eq!(
        log.tenant_of_turn(&turns[2]).await.unwrap(),
        Some(acme.clone())
    );

    let p = log.consistency_proof(&acme, 1, 4).await.unwrap();
    verify_consistency(
        p.old_checkpoint.as_deref().unwrap(),
        p.new_checkpoint.as_deref().unwrap(),
        &p.proof,
        &keys,
    )
    .unwrap();
    assert!(log.consistency_proof(&acme, 1, 5).await.is_err());

    let r = log.verify(&acme, |_, _| {}).await.unwrap();
    assert!(r.ok, "{r:?}");
    assert_eq!((r.rows, r.envelopes, r.checkpoints), (12, 4, 4));
    let bundle = log.export(&acme).await.unwrap();
    assert_eq!(bundle.rows.len(), 12);
    assert!(verify_bundle(&bundle, &keys).ok);
    db.drop_db().await;
}

#[tokio::test]
async fn every_tampering_case_is_detected_and_pinned() {
    for case in &cases() {
        run_case(case).await;
    }
}

async fn run_case(case: &Case) {
    let db = TempDb::new().await;
    let log = connect(&db, KEY1).await;
    fixture(&log).await;
    let acme = tenant("acme");
    assert!(
        log.verify(&acme, |_, _| {}).await.unwrap().ok,
        "{}",
        case.name
    );
    let external = log.latest_checkpoint(&acme).await.unwrap().unwrap();
    let raw = db.raw().await;
    disable_guards(&raw).await;
    apply(&raw, &case.steps).await;
    check_case(&log, case, &external).await;
    drop(log);
    db.drop_db().await;
}

#[tokio::test]
async fn guards_refuse_update_delete_truncate_even_as_replica() {
    let db = TempDb::new().await;
    let log = connect(&db, KEY1).await;
    fixture(&log).await;
    let raw = db.raw().await;
    for replica in [false, true] {
        if replica {
            // What a logical-replication apply worker (or an attacker with
            // superuser) uses to skip ordinary triggers.
            raw.batch_execute("SET session_replication_role = replica")
                .await
                .unwrap();
        }
        for t in TABLES {
            for sql in [
                format!("UPDATE {t} SET tenant = tenant"),
                format!("DELETE FROM {t}"),
                format!("TRUNCATE {t}"),
            ] {
                let sql = sql.replace(
                    "UPDATE audit_keys SET tenant = tenant",
                    "UPDATE audit_keys SET version = version",
                );
                let err = raw.batch_execute(&sql).await.unwrap_err();
                let msg = err
                    .as_db_error()
                    .map(|d| d.message().to_owned())
                    .unwrap_or_default();
                assert!(
                    msg.contains("aibox audit log"),
                    "replica={replica}: {sql} was not refused: {err:?}"
                );
            }
        }
    }
    raw.batch_execute("RESET session_replication_role")
        .await
        .unwrap();
    let r = log.verify(&tenant("acme"), |_, _| {}).await.unwrap();
    assert!(r.ok, "{r:?}");
    drop(log);
    db.drop_db().await;
}

#[tokio::test]
async fn guard_self_check_refuses_start_until_guards_are_restored() {
    let db = TempDb::new().await;
    let log = connect(&db, KEY1).await;
    fixture(&log).await;
    let raw = db.raw().await;
    let breakages: &[(&str, &str)] = &[
        ("DROP TRIGGER audit_rows_no_update ON audit_rows", "audit_rows_no_update on audit_rows is missing"),
        ("ALTER TABLE audit_envelopes DISABLE TRIGGER audit_envelopes_no_delete", "audit_envelopes_no_delete is not ENABLE ALWAYS"),
        // ENABLE (origin mode) is what a plain re-create gives: replica
        // sessions would skip it.
        ("ALTER TABLE audit_checkpoints ENABLE TRIGGER audit_checkpoints_no_truncate", "audit_checkpoints_no_truncate is not ENABLE ALWAYS"),
        (
            "CREATE OR REPLACE FUNCTION aibox_audit_refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN OLD; END $$",
            "function aibox_audit_refuse was altered",
        ),
        (
            "CREATE FUNCTION skip() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;
             CREATE TRIGGER sneaky BEFORE INSERT ON audit_rows FOR EACH ROW EXECUTE FUNCTION skip()",
            "unexpected trigger sneaky on audit_rows",
        ),
        (
            "CREATE RULE drop_rows AS ON INSERT TO audit_rows DO INSTEAD NOTHING",
            "unexpected rule drop_rows on audit_rows",
        ),
    ];
    for (breakage, expected) in breakages {
        raw.batch_execute(breakage).await.unwrap();
        let err = log.check_guards().await.unwrap_err();
        assert!(err.to_string().contains(expected), "{breakage}: {err}");
        let err = AuditLog::connect_postgres(&db.url(), KEY1, &AuditLogOptions::default())
            .await
            .err()
            .unwrap();
        let msg = err.to_string();
        assert!(matches!(err, AuditLogError::Guards { .. }), "{msg}");
        assert!(
            msg.contains(expected) && msg.contains("restore-guards") && msg.contains("verify"),
            "{breakage}: {msg}"
        );
        AuditLog::restore_guards_postgres(&db.url()).await.unwrap();
        log.check_guards().await.unwrap();
    }
    let again = connect(&db, KEY1).await;
    assert!(again.verify(&tenant("acme"), |_, _| {}).await.unwrap().ok);
    drop((log, again));
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_appending_to_one_tenant_make_one_chain() {
    let db = TempDb::new().await;
    // Two AuditLog instances: two pools, two writers, as two replicas.
    let a = connect(&db, KEY1).await;
    let b = connect(&db, KEY1).await;
    let acme = tenant("acme");
    // Warm both writers' caches so that each must notice the other's
    // progress from the head row.
    for log in [&a, &b] {
        let turn = TurnId::generate();
        log.append_turn(&acme, Some(turn.clone()), events(&acme, Some(&turn), 2, 0))
            .await
            .unwrap();
    }
    let mut tasks = Vec::new();
    for w in 0..16i64 {
        let log = if w % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..25 {
                let t = tenant(if i % 5 == 0 { "bravo" } else { "acme" });
                let turn = TurnId::generate();
                let rec = log
                    .append_turn(
                        &t,
                        Some(turn.clone()),
                        events(&t, Some(&turn), 3, w * 100 + i),
                    )
                    .await
                    .unwrap();
                seqs.push((t, rec.first_seq, rec.last_seq));
            }
            seqs
        }));
    }
    let mut ranges = Vec::new();
    for t in tasks {
        ranges.extend(t.await.unwrap());
    }
    // No two turns got overlapping seq ranges.
    for name in ["acme", "bravo"] {
        let mut r: Vec<(u64, u64)> = ranges
            .iter()
            .filter(|(t, _, _)| t.as_str() == name)
            .map(|(_, f, l)| (*f, *l))
            .collect();
        r.sort();
        for w in r.windows(2) {
            assert_eq!(w[0].1 + 1, w[1].0, "{name}: {w:?}");
        }
    }
    for log in [&a, &b] {
        let r = log.verify(&acme, |_, _| {}).await.unwrap();
        assert!(r.ok, "{r:?}");
        assert_eq!((r.rows, r.envelopes), (4 + 16 * 20 * 3, 2 + 16 * 20));
        let r = log.verify(&tenant("bravo"), |_, _| {}).await.unwrap();
        assert!(r.ok, "{r:?}");
        assert_eq!(r.rows, 16 * 5 * 3);
    }
    // Receipts from either process verify against the shared keys.
    let keys = key_strings(&a.public_keys(&acme).await.unwrap());
    let idx = b.receipt_at(&acme, 100).await.unwrap();
    verify_receipt(&idx, &keys).unwrap();
    drop((a, b));
    db.drop_db().await;
}

#[tokio::test]
async fn key_rotation_on_postgres() {
    let db = TempDb::new().await;
    let acme = tenant("acme");
    let t1 = TurnId::generate();
    {
        let log = connect(&db, KEY1).await;
        log.append_turn(&acme, Some(t1.clone()), events(&acme, Some(&t1), 2, 1))
            .await
            .unwrap();
    }
    let log = connect(&db, KEY2).await;
    assert_eq!((log.key_version(), log.key_is_new()), (2, true));
    let t2 = TurnId::generate();
    log.append_turn(&acme, Some(t2.clone()), events(&acme, Some(&t2), 2, 2))
        .await
        .unwrap();
    let keys = log.public_keys(&acme).await.unwrap();
    assert_eq!(keys.len(), 2);
    let ks = key_strings(&keys);
    assert!(log.verify(&acme, |_, _| {}).await.unwrap().ok);
    verify_receipt(&log.receipt(&acme, &t1).await.unwrap(), &ks).unwrap();
    assert!(verify_receipt(&log.receipt(&acme, &t1).await.unwrap(), &ks[2..]).is_err());
    let again = connect(&db, KEY1).await;
    assert_eq!((again.key_version(), again.key_is_new()), (1, false));
    drop((log, again));
    db.drop_db().await;
}

#[tokio::test]
async fn forked_checkpoint_on_postgres() {
    let db = TempDb::new().await;
    let other_db = TempDb::new().await;
    let log = connect(&db, KEY1).await;
    let other = connect(&other_db, KEY1).await;
    fixture(&log).await;
    let fork = forked_checkpoint(&other).await;
    let r = log
        .verify_against_checkpoint(&tenant("acme"), fork.as_bytes())
        .await
        .unwrap();
    assert!(!r.ok);
    assert!(r.problem.unwrap().contains("fork"));
    drop((log, other));
    db.drop_db().await;
    other_db.drop_db().await;
}

/// pg_dump of an older state, restored into a fresh database: the guards
/// come back ALWAYS enabled, the self-check and verification pass, and the
/// newer checkpoint kept outside exposes the rollback.
#[tokio::test]
async fn pg_dump_restore_round_trip_and_rollback_detection() {
    let db = TempDb::new().await;
    let restored = TempDb::new().await;
    let log = connect(&db, KEY1).await;
    let acme = tenant("acme");
    for i in 0..2 {
        let turn = TurnId::generate();
        log.append_turn(&acme, Some(turn.clone()), events(&acme, Some(&turn), 3, i))
            .await
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("audit.sql");
    let out = std::process::Command::new("pg_dump")
        .args(["-h", "127.0.0.1", "-U", "postgres", "--no-owner", "-f"])
        .arg(&dump)
        .arg(&db.name)
        .output()
        .expect("pg_dump must be installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for i in 2..5 {
        let turn = TurnId::generate();
        log.append_turn(&acme, Some(turn.clone()), events(&acme, Some(&turn), 3, i))
            .await
            .unwrap();
    }
    let external = log.latest_checkpoint(&acme).await.unwrap().unwrap();
    let out = std::process::Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
        ])
        .arg(&restored.name)
        .arg("-f")
        .arg(&dump)
        .output()
        .expect("psql must be installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let back = connect(&restored, KEY1).await;
    back.check_guards().await.unwrap();
    assert_eq!(back.key_version(), 1);
    let r = back.verify(&acme, |_, _| {}).await.unwrap();
    assert!(r.ok, "{r:?}");
    assert_eq!(r.rows, 6);
    let r = back
        .verify_against_checkpoint(&acme, external.as_bytes())
        .await
        .unwrap();
    assert!(!r.ok);
    assert_eq!(r.first_bad_seq, Some(7), "{r:?}");
    // The restored log appends on from where the dump ended.
    let turn = TurnId::generate();
    let rec = back
        .append_turn(&acme, Some(turn.clone()), events(&acme, Some(&turn), 1, 9))
        .await
        .unwrap();
    assert_eq!(rec.first_seq, 7);

    // The running process, whose database is rolled back underneath it,
    // refuses to fork the log.
    let raw = db.raw().await;
    disable_guards(&raw).await;
    apply(
        &raw,
        &[
            Step::Sql("DELETE FROM audit_rows WHERE tenant = 'acme' AND seq >= 13"),
            Step::Sql("DELETE FROM audit_envelopes WHERE tenant = 'acme' AND leaf_index = 4"),
            Step::Sql("DELETE FROM audit_checkpoints WHERE tenant = 'acme' AND size = 5"),
            Step::Sql(
                "UPDATE audit_heads SET last_seq = 12, tree_size = 4,
                 last_row_hash = (SELECT r.row_hash FROM audit_rows r WHERE r.tenant = 'acme' AND r.seq = 12),
                 last_envelope_hash = (SELECT e.leaf_hash FROM audit_envelopes e WHERE e.tenant = 'acme' AND e.leaf_index = 3)
                 WHERE tenant = 'acme'",
            ),
        ],
    )
    .await;
    let turn = TurnId::generate();
    let err = log
        .append_turn(&acme, Some(turn.clone()), events(&acme, Some(&turn), 1, 10))
        .await
        .unwrap_err();
    assert!(
        matches!(err, AuditLogError::WentBackwards { had: 5, now: 4, .. }),
        "{err}"
    );
    drop((log, back));
    db.drop_db().await;
    restored.drop_db().await;
}

/// The stored checkpoint sizes of `tenant`, read past the log's API.
async fn stored_checkpoints(db: &TempDb, tenant: &str) -> Vec<u64> {
    db.raw()
        .await
        .query(
            "SELECT size FROM audit_checkpoints WHERE tenant = $1 ORDER BY size",
            &[&tenant],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| u64::try_from(r.get::<_, i64>(0)).unwrap())
        .collect()
}

/// Issue 4 (session 9), on PostgreSQL: the writer task's timer covers an
/// idle tail, a receipt covers on demand, and a second process covering a
/// tail the first one already covered signs nothing twice.
#[tokio::test]
async fn issue_4_checkpoint_cadence_on_postgres() {
    let db = TempDb::new().await;
    let opts = |ms| AuditLogOptions {
        checkpoint_interval: std::time::Duration::from_millis(ms),
        ..AuditLogOptions::default()
    };
    let a = AuditLog::connect_postgres(&db.url(), KEY1, &opts(300))
        .await
        .unwrap();
    let b = AuditLog::connect_postgres(&db.url(), KEY1, &opts(3_600_000))
        .await
        .unwrap();
    let acme = tenant("acme");
    for i in 0..3 {
        let rec = a
            .append_turn(&acme, None, events(&acme, None, 1, i))
            .await
            .unwrap();
        assert_eq!(rec.checkpoint.is_some(), i == 0, "turn {i}");
    }
    assert_eq!(stored_checkpoints(&db, "acme").await, vec![1]);
    // Process A's timer covers its idle tail.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while stored_checkpoints(&db, "acme").await != vec![1, 3] {
        assert!(
            std::time::Instant::now() < deadline,
            "the idle tail was not covered"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Process B appends: its first commit for the tenant is due (it
    // cannot know how old the tail it found is), its second is not.
    let mut recs = Vec::new();
    for i in 0..2 {
        let turn = TurnId::generate();
        let rec = b
            .append_turn(
                &acme,
                Some(turn.clone()),
                events(&acme, Some(&turn), 2, 7 + i),
            )
            .await
            .unwrap();
        recs.push((turn, rec.checkpoint.is_some()));
    }
    assert_eq!(
        recs.iter().map(|r| r.1).collect::<Vec<_>>(),
        vec![true, false]
    );
    assert_eq!(stored_checkpoints(&db, "acme").await, vec![1, 3, 4]);
    // A receipt through A covers B's newest envelope.
    let keys = key_strings(&a.public_keys(&acme).await.unwrap());
    let receipt = a.receipt(&acme, &recs[1].0).await.unwrap();
    assert_eq!(receipt.tree_size, 5);
    verify_receipt(&receipt, &keys).unwrap();
    // B asked to cover the same tail: already covered, nothing is signed.
    b.cover(&acme).await.unwrap();
    assert_eq!(stored_checkpoints(&db, "acme").await, vec![1, 3, 4, 5]);
    let r = b.verify(&acme, |_, _| {}).await.unwrap();
    assert!(r.ok && r.checkpoint_size == 5, "{r:?}");
    drop((a, b));
    db.drop_db().await;
}
