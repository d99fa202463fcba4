//! Measures durable append throughput (group commit under concurrent
//! callers) and verification speed, on SQLite or the local PostgreSQL.
//!
//! ```text
//! cargo run --release -p aibox-auditlog --example throughput -- sqlite   [turns] [events/turn] [callers]
//! cargo run --release -p aibox-auditlog --example throughput -- postgres [turns] [events/turn] [callers]
//! THROUGHPUT_MODES=head cargo run ... (one verification mode only, e.g. to profile it)
//! THROUGHPUT_DB=/var/tmp/a.db cargo run ... -- sqlite 0 (verify an existing log, no appends)
//! THROUGHPUT_RECEIPTS_ONLY=1 cargo run ... (append and receipts only: no verification, no export)
//! ```
//!
//! `THROUGHPUT_DB` keeps the SQLite log in that file instead of a
//! temporary directory, and `THROUGHPUT_PG_DB` names a PostgreSQL database
//! to use and keep; with 0 turns nothing is appended and the log already
//! there is measured, so two builds (a baseline and a change) can verify
//! the very same log alternately. `THROUGHPUT_ROUNDS` (default 3) sets how
//! many verifications of each mode are run; the best is printed, and
//! `THROUGHPUT_BUNDLE=0` skips the export and the bundle verification.
//!
//! Otherwise PostgreSQL uses a fresh database on 127.0.0.1:5432 (user
//! postgres), dropped at the end. This is a measurement, not a test: it
//! prints rates.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use aibox_auditlog::{AuditLog, AuditLogOptions, SignatureCheck};
use aibox_core::audit::{
    AuditEvent, EventKind, GuardAction, GuardStage, Sha256Hex, TurnStatus, Usage,
};
use aibox_core::{RequestId, TenantId, TurnId, UserId};

/// The allocator of the aibox binary, so that the figures are the
/// server's (the verification's read-ahead worker allocates what the
/// verifier's thread frees, which glibc malloc makes dearer).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const KEY: &str = "throughput-0123456789abcdef0123456789";

/// A realistic turn: request, guardrail verdict, upstream response, turn end.
fn turn_events(t: &TenantId, turn: &TurnId, n: usize, i: usize) -> Vec<AuditEvent> {
    let rid = RequestId::generate();
    (0..n)
        .map(|j| {
            let kind = match j % 4 {
                0 => EventKind::RequestReceived {
                    user: UserId::new("alice@example.com").unwrap(),
                    roles: vec!["user".into()],
                    auth: aibox_core::AuthMethod::ApiKey {
                        key_id: "0123456789abcdef".into(),
                    },
                    route: "/v1/chat/completions".into(),
                    model: Some("llama3".into()),
                    body_sha256: Sha256Hex::of(format!("{i}-{j}").as_bytes()),
                    content: None,
                },
                1 => EventKind::GuardrailVerdict {
                    stage: GuardStage::Input,
                    profile: "standard".into(),
                    action: GuardAction::Allow,
                    findings: vec![],
                },
                2 => EventKind::UpstreamResponse {
                    upstream: "ollama".into(),
                    model: "llama3".into(),
                    status: 200,
                    attempt: 1,
                    body_sha256: Some(Sha256Hex::of(b"response")),
                    usage: Some(Usage {
                        prompt_tokens: 12,
                        completion_tokens: 40,
                        total_tokens: 52,
                    }),
                    duration_ms: 230,
                },
                _ => EventKind::TurnEnd {
                    status: TurnStatus::Ok,
                    duration_ms: 250,
                },
            };
            AuditEvent {
                tenant: t.clone(),
                turn: Some(turn.clone()),
                request_id: Some(rid.clone()),
                at_ms: 1_700_000_000_000 + i as i64,
                kind,
            }
        })
        .collect()
}

async fn run(log: AuditLog, turns: usize, per_turn: usize, callers: usize) {
    let t = TenantId::new("bench").unwrap();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..callers {
        let log = log.clone();
        let t = t.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = c;
            let mut sample = Vec::new();
            let mut waits = Vec::new();
            while i < turns {
                let turn = TurnId::generate();
                let events = turn_events(&t, &turn, per_turn, i);
                let began = Instant::now();
                log.append_turn(&t, Some(turn.clone()), events)
                    .await
                    .unwrap();
                waits.push(began.elapsed().as_secs_f64() * 1e3);
                // Every 97th turn is kept for the receipt measurement, so
                // the sample spreads over the whole log.
                if i % 97 == 0 {
                    sample.push(turn);
                }
                i += callers;
            }
            (sample, waits)
        }));
    }
    let mut sample = Vec::new();
    let mut waits = Vec::new();
    for task in tasks {
        let (s, w) = task.await.unwrap();
        sample.extend(s);
        waits.extend(w);
    }
    waits.sort_by(f64::total_cmp);
    let pct = |q: f64| {
        waits
            .get(((waits.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    let secs = start.elapsed().as_secs_f64();
    let events = (turns * per_turn) as f64;
    if turns > 0 {
        println!(
            "append ({}): {turns} turns x {per_turn} events, {callers} concurrent callers: {:.2}s, {:.0} events/s durable, {:.0} turns/s",
            log.backend(),
            secs,
            events / secs,
            turns as f64 / secs
        );
        // What one append_turn costs its caller, from submission to the
        // durable commit: with one caller, the audit write's share of a
        // turn's latency.
        println!(
            "append latency ({}): p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            log.backend(),
            pct(0.5),
            pct(0.99),
            pct(1.0)
        );
    }
    let rounds: usize = std::env::var("THROUGHPUT_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    // THROUGHPUT_RECEIPTS_ONLY=1 measures appends and receipts only, which
    // keeps a run at a million entries short on a shared machine.
    let receipts_only = std::env::var("THROUGHPUT_RECEIPTS_ONLY").is_ok_and(|v| v == "1");
    // Both signature modes, alternated in one run so that the machine's
    // noise falls on both alike; the best of three is printed.
    for mode in modes().into_iter().filter(|_| !receipts_only) {
        let mut best = f64::MAX;
        let mut best_cpu = f64::MAX;
        let mut report = None;
        for _ in 0..rounds {
            let start = Instant::now();
            let cpu = cpu_secs();
            let r = log.verify_with(&t, mode, |_, _| {}).await.unwrap();
            best = best.min(start.elapsed().as_secs_f64());
            best_cpu = best_cpu.min(cpu_secs() - cpu);
            assert!(r.ok, "{r:?}");
            report = Some(r);
        }
        let report = report.unwrap();
        println!(
            "verify {mode:?} ({}): {} rows, {} envelopes, {} checkpoints, {} signatures in {:.3}s: {:.0} rows/s wall, {:.0} rows per CPU-second",
            log.backend(),
            report.rows,
            report.envelopes,
            report.checkpoints,
            report.signatures_checked,
            best,
            report.rows as f64 / best,
            report.rows as f64 / best_cpu
        );
    }
    // Receipt generation at this size: envelope lookup, the turn's events,
    // an inclusion proof and the newest checkpoint, one turn at a time.
    let mut lat: Vec<f64> = Vec::with_capacity(sample.len());
    for turn in &sample {
        let start = Instant::now();
        let r = log.receipt(&t, turn).await.unwrap();
        lat.push(start.elapsed().as_secs_f64() * 1e3);
        assert_eq!(r.tenant, t);
    }
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p).round() as usize];
    if !lat.is_empty() {
        println!(
            "receipt ({}): {} receipts at tree size {turns}: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            log.backend(),
            lat.len(),
            pct(0.5),
            pct(0.99),
            pct(1.0)
        );
    }
    println!("rss after receipts: {:.1} MiB", rss_kib() as f64 / 1024.0);
    // THROUGHPUT_BUNDLE=0 skips the export and the bundle verification, for
    // a profile of the database verification alone.
    if receipts_only || std::env::var("THROUGHPUT_BUNDLE").is_ok_and(|v| v == "0") {
        return;
    }
    let start = Instant::now();
    let bundle = log.export(&t).await.unwrap();
    let keys: Vec<String> = log
        .public_keys(&t)
        .await
        .unwrap()
        .into_iter()
        .flat_map(|k| [k.checkpoint_key, k.envelope_key])
        .collect();
    let export_secs = start.elapsed().as_secs_f64();
    // THROUGHPUT_BUNDLE_LOOPS=N repeats the in-memory verification, for a
    // profile of the verifier alone.
    let loops: usize = std::env::var("THROUGHPUT_BUNDLE_LOOPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    for mode in modes() {
        for _ in 1..loops {
            aibox_auditlog::verify_bundle_with(&bundle, &keys, mode);
        }
        let start = Instant::now();
        let cpu = cpu_secs();
        let r = aibox_auditlog::verify_bundle_with(&bundle, &keys, mode);
        let secs = start.elapsed().as_secs_f64();
        let cpu = cpu_secs() - cpu;
        assert!(r.ok, "{r:?}");
        println!(
            "export {:.2}s; verify_bundle {mode:?} (in memory, pure): {:.0} rows/s wall, {:.0} rows per CPU-second",
            export_secs,
            r.rows as f64 / secs,
            r.rows as f64 / cpu
        );
    }
}

/// The signature modes to measure: `THROUGHPUT_MODES=head` (or `all`)
/// measures one only, for a profile of it; both by default.
fn modes() -> Vec<SignatureCheck> {
    match std::env::var("THROUGHPUT_MODES") {
        Ok(list) => list.split(',').map(|m| m.trim().parse().unwrap()).collect(),
        Err(_) => vec![SignatureCheck::All, SignatureCheck::Head],
    }
}

/// The process's resident set size in KiB, from `/proc/self/status`.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The process's CPU time (user plus system) in seconds, from
/// `/proc/self/stat` (clock ticks of 10 ms): on a shared, loaded machine,
/// CPU time per row says more than wall time.
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the parenthesised command name; utime and stime are
    // the 14th and 15th fields of the whole line.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let backend = args.get(1).map_or("sqlite", String::as_str).to_owned();
    let turns: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(50_000);
    let per_turn: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(4);
    let callers: usize = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(256);
    match backend.as_str() {
        "sqlite" => {
            let dir = tempfile::tempdir().unwrap();
            let path = std::env::var_os("THROUGHPUT_DB")
                .map_or_else(|| dir.path().join("audit.db"), std::path::PathBuf::from);
            let log = AuditLog::open_sqlite(&path, KEY, &AuditLogOptions::default()).unwrap();
            run(log, turns, per_turn, callers).await;
        }
        "postgres" => {
            // THROUGHPUT_PG_DB names a database to keep (created if absent,
            // never dropped), like THROUGHPUT_DB for SQLite.
            let keep = std::env::var("THROUGHPUT_PG_DB").ok();
            let name = keep
                .clone()
                .unwrap_or_else(|| format!("aibox_auditlog_bench_{}", std::process::id()));
            let (admin, conn) = tokio_postgres::connect(
                "postgres://postgres@127.0.0.1:5432/test",
                tokio_postgres::NoTls,
            )
            .await
            .expect("PostgreSQL on 127.0.0.1:5432");
            tokio::spawn(conn);
            let created = admin
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .await;
            if keep.is_none() {
                created.unwrap();
            }
            let url = format!("postgres://postgres@127.0.0.1:5432/{name}");
            let log = AuditLog::connect_postgres(&url, KEY, &AuditLogOptions::default())
                .await
                .unwrap();
            run(log, turns, per_turn, callers).await;
            if keep.is_none() {
                admin
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await
                    .unwrap();
            }
        }
        other => eprintln!("unknown backend {other}; use sqlite or postgres"),
    }
}
