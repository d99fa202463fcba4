//! Issue 4: the parallel read-ahead of a SQLite verification must change
//! nothing but the speed. Every case of the shared tampering table is
//! verified sequentially and with read-ahead cut into the smallest blocks
//! (so that every block boundary, the tail past the head's bounds and
//! every storage order meet the tampering), in both signature modes, and
//! the reports must be identical.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use rusqlite::Connection;

use crate::readahead::Config;
use crate::test_common::{Case, Expect, KEY1, Row, Step, cases, fixture, tenant};
use crate::{AuditLog, Backend, SignatureCheck, VerifyReport};

/// `log` (opened before the tampering, since start-up refuses a log
/// without its guards) verifying with `cfg`.
fn with(log: &AuditLog, cfg: Config) -> AuditLog {
    let mut log = log.clone();
    log.backend = match log.backend {
        Backend::Sqlite(s) => Backend::Sqlite(s.with_read_ahead(cfg)),
        other => other,
    };
    log
}

/// No read-ahead at all: the one sequential scan.
fn sequential() -> Config {
    Config {
        min_rows: u64::MAX,
        ..Config::default()
    }
}

/// The configurations under test: envelopes only (the default's shape),
/// and rows too with several workers, all with blocks of one or two keys.
fn ahead() -> Vec<Config> {
    vec![
        Config {
            workers: 1,
            rows: false,
            row_block: 2,
            env_block: 1,
            window: 2,
            min_rows: 0,
        },
        Config {
            workers: 3,
            rows: true,
            row_block: 2,
            env_block: 1,
            window: 2,
            min_rows: 0,
        },
        Config {
            workers: 2,
            rows: true,
            row_block: 5,
            env_block: 3,
            window: 1,
            min_rows: 0,
        },
        // The measured layout, with blocks small enough for these logs.
        Config {
            row_block: 2,
            env_block: 1,
            min_rows: 0,
            ..Config::enabled()
        },
    ]
}

/// Removes every trigger, as an attacker with write access can.
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
            Step::Sql(sql) => c.execute_batch(sql).unwrap(),
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

/// Both signature modes and the head-then-pin pass; a storage error (a
/// row the scan cannot decode) counts as an outcome too.
async fn reports(log: &AuditLog, cfg: Config) -> Vec<Result<VerifyReport, String>> {
    let log = with(log, cfg);
    let t = tenant("acme");
    let mut out = Vec::new();
    for mode in [SignatureCheck::All, SignatureCheck::Head] {
        out.push(
            log.verify_with(&t, mode, |_, _| {})
                .await
                .map_err(|e| e.to_string()),
        );
    }
    out.push(
        log.verify_head_then_pin(&t, |_, _| {})
            .await
            .map_err(|e| e.to_string()),
    );
    out
}

async fn run(name: &str, steps: &[Step], expect: Option<&Expect>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let log = AuditLog::open_sqlite(&path, KEY1, &crate::test_common::per_commit()).unwrap();
    fixture(&log).await;
    {
        let c = Connection::open(&path).unwrap();
        drop_guards(&c);
        apply(&c, steps);
    }
    let want = reports(&log, sequential()).await;
    if let Some(Expect::Bad(seq)) = expect {
        let first = want[0].as_ref().map(|r| r.first_bad_seq);
        assert_eq!(first, Ok(Some(*seq)), "{name}: {:?}", want[0]);
    }
    for cfg in ahead() {
        let got = reports(&log, cfg).await;
        assert_eq!(got, want, "{name}: read-ahead {cfg:?} disagrees");
    }
}

#[tokio::test]
async fn issue_4_read_ahead_reports_exactly_what_the_sequential_scan_reports() {
    run("untampered", &[], None).await;
    let all: Vec<Case> = cases();
    for case in &all {
        run(case.name, &case.steps, Some(&case.expect)).await;
    }
    // Keys that sort outside the blocks: a seq below the first and one
    // stored as text (after every integer), each must land where the
    // ordered scan puts it.
    run(
        "row with seq 0",
        &[Step::Sql(
            "INSERT INTO audit_rows (tenant, seq, turn, event, prev_row_hash, row_hash) SELECT tenant, 0, turn, event, prev_row_hash, row_hash FROM audit_rows WHERE tenant = 'acme' AND seq = 3",
        )],
        Some(&Expect::Bad(0)),
    )
    .await;
    run(
        "row with a text seq",
        &[Step::Sql(
            "INSERT INTO audit_rows (tenant, seq, turn, event, prev_row_hash, row_hash) SELECT tenant, 'x', turn, event, prev_row_hash, row_hash FROM audit_rows WHERE tenant = 'acme' AND seq = 3",
        )],
        None,
    )
    .await;
}
