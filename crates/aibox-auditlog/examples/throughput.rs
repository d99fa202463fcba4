//! Measures durable append throughput (group commit under concurrent
//! callers) and verification speed, on SQLite or the local PostgreSQL.
//!
//! ```text
//! cargo run --release -p aibox-auditlog --example throughput -- sqlite   [turns] [events/turn] [callers]
//! cargo run --release -p aibox-auditlog --example throughput -- postgres [turns] [events/turn] [callers]
//! ```
//!
//! PostgreSQL uses a fresh database on 127.0.0.1:5432 (user postgres),
//! dropped at the end. This is a measurement, not a test: it prints rates.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use aibox_auditlog::{AuditLog, AuditLogOptions};
use aibox_core::audit::{
    AuditEvent, EventKind, GuardAction, GuardStage, Sha256Hex, TurnStatus, Usage,
};
use aibox_core::{RequestId, TenantId, TurnId, UserId};

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
            while i < turns {
                let turn = TurnId::generate();
                log.append_turn(&t, Some(turn.clone()), turn_events(&t, &turn, per_turn, i))
                    .await
                    .unwrap();
                i += callers;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    let events = (turns * per_turn) as f64;
    println!(
        "append ({}): {turns} turns x {per_turn} events, {callers} concurrent callers: {:.2}s, {:.0} events/s durable, {:.0} turns/s",
        log.backend(),
        secs,
        events / secs,
        turns as f64 / secs
    );
    let start = Instant::now();
    let report = log.verify(&t, |_, _| {}).await.unwrap();
    let secs = start.elapsed().as_secs_f64();
    assert!(report.ok, "{report:?}");
    println!(
        "verify ({}): {} rows, {} envelopes, {} checkpoints in {:.2}s: {:.0} rows/s",
        log.backend(),
        report.rows,
        report.envelopes,
        report.checkpoints,
        secs,
        report.rows as f64 / secs
    );
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
    let start = Instant::now();
    let r = aibox_auditlog::verify_bundle(&bundle, &keys);
    let secs = start.elapsed().as_secs_f64();
    assert!(r.ok, "{r:?}");
    println!(
        "export {:.2}s; verify_bundle (in memory, pure): {:.0} rows/s",
        export_secs,
        r.rows as f64 / secs
    );
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
            let log = AuditLog::open_sqlite(
                &dir.path().join("audit.db"),
                KEY,
                &AuditLogOptions::default(),
            )
            .unwrap();
            run(log, turns, per_turn, callers).await;
        }
        "postgres" => {
            let name = format!("aibox_auditlog_bench_{}", std::process::id());
            let (admin, conn) = tokio_postgres::connect(
                "postgres://postgres@127.0.0.1:5432/test",
                tokio_postgres::NoTls,
            )
            .await
            .expect("PostgreSQL on 127.0.0.1:5432");
            tokio::spawn(conn);
            admin
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .await
                .unwrap();
            let url = format!("postgres://postgres@127.0.0.1:5432/{name}");
            let log = AuditLog::connect_postgres(&url, KEY, &AuditLogOptions::default())
                .await
                .unwrap();
            run(log, turns, per_turn, callers).await;
            admin
                .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await
                .unwrap();
        }
        other => eprintln!("unknown backend {other}; use sqlite or postgres"),
    }
}
