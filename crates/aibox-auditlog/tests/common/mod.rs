//! Helpers shared by the SQLite and PostgreSQL integration tests: event
//! builders, the standard fixture, and the data-driven tampering table.
//!
//! A tampering case is a list of steps against the raw database (with the
//! guards out of the way, as an attacker with database access would have
//! them): SQL statements, or an edit of the tenant's rows done in Rust (for
//! the attacks that recompute the row hash chain, which needs no secret).

// Test helpers may unwrap: a failure is a test failure. Each test binary
// uses a different subset of the helpers.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use aibox_auditlog::{AuditLog, GENESIS_ROW_HASH, SignatureCheck, row_hash};
use aibox_core::audit::{AuditEvent, EventKind, TurnStatus};
use aibox_core::{TenantId, TurnId};
use sha2::{Digest, Sha256};

pub const KEY1: &str = "k1-0123456789abcdef0123456789abcdef";
pub const KEY2: &str = "k2-0123456789abcdef0123456789abcdef";
pub const KEY3: &str = "k3-never-published-0123456789abcdef";

pub fn tenant(s: &str) -> TenantId {
    TenantId::new(s).unwrap()
}

/// `n` events of one turn; the last is the turn end. Each has a
/// `"duration_ms":` field the tampering cases can edit.
pub fn events(t: &TenantId, turn: Option<&TurnId>, n: usize, salt: i64) -> Vec<AuditEvent> {
    (0..n)
        .map(|i| {
            let kind = if i + 1 == n {
                EventKind::TurnEnd {
                    status: TurnStatus::Ok,
                    duration_ms: 40 + i as u64,
                }
            } else {
                EventKind::UpstreamResponse {
                    upstream: "ollama".into(),
                    model: "llama3".into(),
                    status: 200,
                    attempt: 1,
                    body_sha256: Some(aibox_core::audit::Sha256Hex::of(b"body")),
                    usage: None,
                    duration_ms: 10 + i as u64,
                }
            };
            AuditEvent {
                tenant: t.clone(),
                turn: turn.cloned(),
                request_id: None,
                at_ms: 1_700_000_000_000 + salt * 100 + i as i64,
                kind,
            }
        })
        .collect()
}

/// The standard fixture: tenant `acme`, four turns of three events each
/// (seq 1-3, 4-6, 7-9, 10-12), each its own transaction, so there are
/// checkpoints of sizes 1, 2, 3 and 4. Returns the turn ids.
/// Options that sign a checkpoint in every commit, so that the tampering
/// table can name checkpoints by size (the default cadence is tested on
/// its own).
pub fn per_commit() -> aibox_auditlog::AuditLogOptions {
    aibox_auditlog::AuditLogOptions {
        checkpoint_interval: std::time::Duration::ZERO,
        ..aibox_auditlog::AuditLogOptions::default()
    }
}

pub async fn fixture(log: &AuditLog) -> Vec<TurnId> {
    let t = tenant("acme");
    let mut turns = Vec::new();
    for i in 0..4 {
        let turn = TurnId::generate();
        let rec = log
            .append_turn(&t, Some(turn.clone()), events(&t, Some(&turn), 3, i))
            .await
            .unwrap();
        assert_eq!(rec.first_seq, 3 * i as u64 + 1);
        assert_eq!(rec.leaf_index, i as u64);
        turns.push(turn);
    }
    turns
}

/// One stored row, as the tampering steps see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub seq: i64,
    pub turn: Option<String>,
    pub event: String,
    pub prev: Vec<u8>,
    pub hash: Vec<u8>,
}

/// One step of a tampering case.
pub enum Step {
    /// SQL run as is (portable between SQLite and PostgreSQL).
    Sql(&'static str),
    /// Rewrites tenant `acme`'s rows: the executor reads them by seq, the
    /// function edits the list, and the executor replaces the stored rows.
    Rows(fn(&mut Vec<Row>)),
}

/// What verification must find.
pub enum Expect {
    /// `verify` reports this first bad seq.
    Bad(u64),
    /// `verify` passes (the database is internally consistent), but the
    /// check against the checkpoint kept outside reports this first bad seq.
    BadAgainstCheckpoint(u64),
}

pub struct Case {
    pub name: &'static str,
    pub steps: Vec<Step>,
    pub expect: Expect,
}

/// Renumbers rows `1..` and recomputes the whole chain, as an attacker who
/// knows the (public) row hash format can.
pub fn rehash(rows: &mut [Row]) {
    let mut prev = GENESIS_ROW_HASH;
    for (i, r) in rows.iter_mut().enumerate() {
        r.seq = i as i64 + 1;
        let leaf: [u8; 32] = {
            let mut h = Sha256::new();
            h.update([0u8]);
            h.update(r.event.as_bytes());
            h.finalize().into()
        };
        let h = row_hash("acme", r.seq as u64, &prev, &leaf);
        r.prev = prev.to_vec();
        r.hash = h.to_vec();
        prev = h;
    }
}

fn idx(rows: &[Row], seq: i64) -> usize {
    rows.iter().position(|r| r.seq == seq).unwrap()
}

/// The tampering table. The fixture's envelopes cover seq 1-3, 4-6, 7-9
/// and 10-12; checkpoints have sizes 1 to 4.
pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "modified row",
            steps: vec![Step::Sql(
                "UPDATE audit_rows SET event = replace(event, '\"duration_ms\":', '\"duration_ms\":9') WHERE tenant = 'acme' AND seq = 5",
            )],
            expect: Expect::Bad(5),
        },
        Case {
            name: "modified row, chain rehashed",
            steps: vec![Step::Rows(|rows| {
                let i = idx(rows, 5);
                rows[i].event = rows[i].event.replace("\"duration_ms\":", "\"duration_ms\":9");
                rehash(rows);
            })],
            // Every row hash checks out; only envelope 1's root (seq 4-6)
            // betrays it.
            expect: Expect::Bad(4),
        },
        Case {
            name: "deleted row in the middle",
            steps: vec![Step::Sql("DELETE FROM audit_rows WHERE tenant = 'acme' AND seq = 5")],
            expect: Expect::Bad(5),
        },
        Case {
            name: "deleted row, later rows renumbered",
            steps: vec![Step::Rows(|rows| {
                let i = idx(rows, 5);
                rows.remove(i);
                for r in rows.iter_mut().skip(i) {
                    r.seq -= 1;
                }
            })],
            expect: Expect::Bad(5),
        },
        Case {
            name: "inserted row, later rows renumbered",
            steps: vec![Step::Rows(|rows| {
                let i = idx(rows, 5);
                let mut fake = rows[i].clone();
                fake.event = fake.event.replace("\"duration_ms\":", "\"duration_ms\":7");
                // A perfectly hashed intruder linked after row 4.
                let leaf: [u8; 32] = {
                    let mut h = Sha256::new();
                    h.update([0u8]);
                    h.update(fake.event.as_bytes());
                    h.finalize().into()
                };
                let prev: [u8; 32] = rows[i - 1].hash.clone().try_into().unwrap();
                fake.prev = prev.to_vec();
                fake.hash = row_hash("acme", 5, &prev, &leaf).to_vec();
                for r in rows.iter_mut().skip(i) {
                    r.seq += 1;
                }
                rows.insert(i, fake);
            })],
            expect: Expect::Bad(5),
        },
        Case {
            name: "inserted row after the last envelope",
            steps: vec![Step::Rows(|rows| {
                let mut extra = rows.last().unwrap().clone();
                extra.seq = 13;
                extra.prev = extra.hash.clone();
                rows.push(extra);
            })],
            expect: Expect::Bad(13),
        },
        Case {
            name: "two rows swapped",
            steps: vec![Step::Rows(|rows| {
                let (a, b) = (idx(rows, 5), idx(rows, 6));
                let (sa, sb) = (rows[a].seq, rows[b].seq);
                rows.swap(a, b);
                rows[a].seq = sa;
                rows[b].seq = sb;
            })],
            expect: Expect::Bad(5),
        },
        Case {
            name: "two events swapped, hashes kept",
            steps: vec![Step::Rows(|rows| {
                let (a, b) = (idx(rows, 5), idx(rows, 6));
                let ea = rows[a].event.clone();
                rows[a].event = rows[b].event.clone();
                rows[b].event = ea;
            })],
            expect: Expect::Bad(5),
        },
        Case {
            name: "turn with one event dropped, chain rewritten",
            steps: vec![Step::Rows(|rows| {
                let i = idx(rows, 5);
                rows.remove(i);
                rehash(rows);
            })],
            expect: Expect::Bad(4),
        },
        Case {
            name: "turn with events reordered, chain rewritten",
            steps: vec![Step::Rows(|rows| {
                let (a, b) = (idx(rows, 4), idx(rows, 5));
                rows.swap(a, b);
                rehash(rows);
            })],
            expect: Expect::Bad(4),
        },
        Case {
            name: "turn column changed",
            steps: vec![Step::Sql(
                "UPDATE audit_rows SET turn = NULL WHERE tenant = 'acme' AND seq = 5",
            )],
            expect: Expect::Bad(5),
        },
        Case {
            name: "envelope deleted",
            steps: vec![Step::Sql(
                "DELETE FROM audit_envelopes WHERE tenant = 'acme' AND leaf_index = 1",
            )],
            expect: Expect::Bad(4),
        },
        Case {
            name: "envelope replaced by a later one (replay)",
            steps: vec![Step::Sql(
                "UPDATE audit_envelopes SET note = (SELECT e.note FROM audit_envelopes e WHERE e.tenant = 'acme' AND e.leaf_index = 2) WHERE tenant = 'acme' AND leaf_index = 1",
            )],
            expect: Expect::Bad(4),
        },
        Case {
            name: "envelope names an unknown key version",
            steps: vec![Step::Sql(
                "UPDATE audit_envelopes SET key_version = 99 WHERE tenant = 'acme' AND leaf_index = 2",
            )],
            expect: Expect::Bad(7),
        },
        // A deleted newest checkpoint is no longer a failure (session 9):
        // checkpoints follow a cadence, so a tail past the newest one is
        // legitimate and is vouched for by the envelopes' own signatures;
        // `issue_4_checkpoints_follow_their_cadence_and_cover_on_demand`
        // checks that.
        Case {
            name: "checkpoint replaced by an older one",
            steps: vec![Step::Sql(
                "UPDATE audit_checkpoints SET note = (SELECT c.note FROM audit_checkpoints c WHERE c.tenant = 'acme' AND c.size = 3) WHERE tenant = 'acme' AND size = 4",
            )],
            expect: Expect::Bad(10),
        },
        Case {
            // Issue 4: the head-mode check must still check the newest
            // checkpoint's signature.
            name: "newest checkpoint signed by an unknown key",
            steps: vec![Step::Sql(
                "UPDATE audit_checkpoints SET note = replace(note, '— ', '— x') WHERE tenant = 'acme' AND size = 4",
            )],
            expect: Expect::Bad(10),
        },
        Case {
            name: "truncated tail, head left in place",
            steps: vec![
                Step::Sql("DELETE FROM audit_rows WHERE tenant = 'acme' AND seq >= 10"),
                Step::Sql("DELETE FROM audit_envelopes WHERE tenant = 'acme' AND leaf_index = 3"),
                Step::Sql("DELETE FROM audit_checkpoints WHERE tenant = 'acme' AND size = 4"),
            ],
            expect: Expect::Bad(10),
        },
        Case {
            name: "truncated tail, head rolled back too",
            steps: vec![
                Step::Sql("DELETE FROM audit_rows WHERE tenant = 'acme' AND seq >= 10"),
                Step::Sql("DELETE FROM audit_envelopes WHERE tenant = 'acme' AND leaf_index = 3"),
                Step::Sql("DELETE FROM audit_checkpoints WHERE tenant = 'acme' AND size = 4"),
                Step::Sql(
                    "UPDATE audit_heads SET last_seq = 9, tree_size = 3,
                     last_row_hash = (SELECT r.row_hash FROM audit_rows r WHERE r.tenant = 'acme' AND r.seq = 9),
                     last_envelope_hash = (SELECT e.leaf_hash FROM audit_envelopes e WHERE e.tenant = 'acme' AND e.leaf_index = 2)
                     WHERE tenant = 'acme'",
                ),
            ],
            // Internally consistent: only the checkpoint kept outside the
            // database shows that seq 10 onwards is gone.
            expect: Expect::BadAgainstCheckpoint(10),
        },
    ]
}

/// Runs the expectations of one case against a tampered log.
pub async fn check_case(log: &AuditLog, case: &Case, external_checkpoint: &str) {
    let t = tenant("acme");
    let report = log.verify(&t, |_, _| {}).await.unwrap();
    // Issue 4: the head-only signature check (hashing speed) must catch
    // every case on its own; its second pass pins it like the full check.
    let head = log
        .verify_with(&t, SignatureCheck::Head, |_, _| {})
        .await
        .unwrap();
    let pinned = log.verify_head_then_pin(&t, |_, _| {}).await.unwrap();
    assert_eq!(
        head.ok, report.ok,
        "{}: head-mode verification disagrees with the full check: {head:?}",
        case.name
    );
    assert_eq!(pinned.first_bad_seq, report.first_bad_seq, "{}", case.name);
    if head.ok {
        assert!(
            head.signatures_checked < report.signatures_checked,
            "{}: head mode checked as many signatures as the full check: {head:?}",
            case.name
        );
    }
    match case.expect {
        Expect::Bad(seq) => {
            assert!(
                !report.ok,
                "{}: tampering not detected: {report:?}",
                case.name
            );
            assert_eq!(
                report.first_bad_seq,
                Some(seq),
                "{}: wrong first bad seq: {report:?}",
                case.name
            );
            assert!(report.problem.is_some(), "{}", case.name);
        }
        Expect::BadAgainstCheckpoint(seq) => {
            assert!(
                report.ok,
                "{}: expected a consistent log: {report:?}",
                case.name
            );
            let r = log
                .verify_against_checkpoint(&t, external_checkpoint.as_bytes())
                .await
                .unwrap();
            assert!(!r.ok, "{}: truncation not detected: {r:?}", case.name);
            assert_eq!(r.first_bad_seq, Some(seq), "{}: {r:?}", case.name);
        }
    }
}

/// A second, independent log with the same key and tenant but other
/// events: its checkpoints are a fork of the fixture's.
pub async fn forked_checkpoint(other: &AuditLog) -> String {
    let t = tenant("acme");
    for i in 0..4 {
        let turn = TurnId::generate();
        other
            .append_turn(&t, Some(turn.clone()), events(&t, Some(&turn), 3, 50 + i))
            .await
            .unwrap();
    }
    other.latest_checkpoint(&t).await.unwrap().unwrap()
}
