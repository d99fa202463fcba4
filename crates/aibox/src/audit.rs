//! `aibox audit`: verify a tenant's log, export it for third parties, and
//! check a receipt offline with only public keys.

use std::path::Path;

use aibox_auditlog::{AuditLog, AuditLogOptions, Bundle, Receipt, SignatureCheck};
use aibox_config::{Config, DatabaseUrl};
use aibox_core::{Secret, TenantId};
use anyhow::{Context as _, bail};

/// The SQLite file of the audit log under the data directory.
pub const AUDIT_DB: &str = "audit.db";

/// Opens the audit log the config names: `DATA_DIR/audit.db` beside the
/// SQLite store, or the same PostgreSQL database.
pub async fn open(cfg: &Config, key: &Secret) -> anyhow::Result<AuditLog> {
    let options = AuditLogOptions {
        pg_max_connections: usize::try_from(cfg.database.audit_max_connections)
            .unwrap_or(aibox_auditlog::DEFAULT_PG_MAX_CONNECTIONS),
        checkpoint_interval: std::time::Duration::from_millis(
            cfg.database.audit_checkpoint_interval_ms,
        ),
        ..AuditLogOptions::default()
    };
    Ok(match &cfg.database.url {
        DatabaseUrl::Sqlite(_) => {
            let path = cfg.server.data_dir.join(AUDIT_DB);
            let key = key.clone();
            tokio::task::spawn_blocking(move || {
                AuditLog::open_sqlite(&path, key.expose(), &options)
            })
            .await??
        }
        DatabaseUrl::Postgres(url) => {
            AuditLog::connect_postgres(url.expose(), key.expose(), &options).await?
        }
    })
}

/// Re-creates the append-only guards of the configured audit database.
pub fn restore_guards(cfg: &Config) -> anyhow::Result<()> {
    match &cfg.database.url {
        DatabaseUrl::Sqlite(_) => {
            AuditLog::restore_guards_sqlite(&cfg.server.data_dir.join(AUDIT_DB))?
        }
        DatabaseUrl::Postgres(url) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(AuditLog::restore_guards_postgres(url.expose()))?;
        }
    }
    eprintln!(
        "restored the audit log's append-only guards; now run `aibox audit verify` for every tenant"
    );
    Ok(())
}

/// Verifies one tenant's log and prints the report; fails when it is bad.
pub async fn verify(
    log: &AuditLog,
    tenant: &str,
    signatures: SignatureCheck,
) -> anyhow::Result<()> {
    let tenant = TenantId::new(tenant).context("--tenant")?;
    let interactive = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let progress = move |done: u64, total: u64| {
        if interactive && total > 0 && (done == total || done.is_multiple_of(65_536)) {
            let pct = done.saturating_mul(100) / total;
            eprint!("\rverifying {done}/{total} rows ({pct}%)");
            if done == total {
                eprintln!();
            }
        }
    };
    let report = match signatures {
        SignatureCheck::All => log.verify(&tenant, progress).await?,
        SignatureCheck::Head => log.verify_head_then_pin(&tenant, progress).await?,
    };
    println!("{}", serde_json::to_string_pretty(&report)?);
    if !report.ok {
        bail!(
            "tenant {tenant}'s audit log does NOT verify: first bad sequence number {:?}: {}",
            report.first_bad_seq,
            report.problem.as_deref().unwrap_or("unknown problem")
        );
    }
    Ok(())
}

/// Writes the tenant's bundle (rows, envelopes, checkpoints, public keys).
pub async fn export(log: &AuditLog, tenant: &str, out: Option<&Path>) -> anyhow::Result<()> {
    let tenant = TenantId::new(tenant).context("--tenant")?;
    let bundle = log.export(&tenant).await?;
    let json = serde_json::to_string_pretty(&bundle)?;
    match out {
        Some(p) => {
            std::fs::write(p, json).with_context(|| format!("cannot write {}", p.display()))?;
            eprintln!("wrote tenant {tenant}'s audit bundle to {}", p.display());
        }
        None => println!("{json}"),
    }
    Ok(())
}

/// Reads verifier key strings: one per line, or a JSON array of the
/// `GET /v1/audit/keys` records.
fn read_keys(path: &Path) -> anyhow::Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    if let Ok(records) = serde_json::from_str::<Vec<aibox_auditlog::PublicKeyRecord>>(&text) {
        return Ok(records
            .into_iter()
            .flat_map(|r| [r.checkpoint_key, r.envelope_key])
            .collect());
    }
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect())
}

/// Checks a receipt offline.
pub fn verify_receipt_file(file: &Path, keys: &Path) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let receipt: Receipt = serde_json::from_str(&text)
        .with_context(|| format!("{} is not an aibox receipt", file.display()))?;
    let keys = read_keys(keys)?;
    let verified = aibox_auditlog::verify_receipt(&receipt, &keys)
        .map_err(|e| anyhow::anyhow!("the receipt does NOT verify: {e}"))?;
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "ok": true,
            "tenant": verified.tenant,
            "turn": verified.envelope.turn.as_ref().map(|t| t.to_string()),
            "first_seq": verified.envelope.first_seq,
            "last_seq": verified.envelope.last_seq,
            "leaf_index": verified.leaf_index,
            "tree_size": verified.tree_size,
        }))?
    );
    Ok(())
}

/// Checks an exported bundle offline.
pub fn verify_bundle_file(file: &Path, keys: &Path) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let bundle: Bundle = serde_json::from_str(&text)
        .with_context(|| format!("{} is not an aibox audit bundle", file.display()))?;
    let report = aibox_auditlog::verify_bundle(&bundle, &read_keys(keys)?);
    println!("{}", serde_json::to_string_pretty(&report)?);
    if !report.ok {
        bail!(
            "the bundle does NOT verify: first bad sequence number {:?}",
            report.first_bad_seq
        );
    }
    Ok(())
}
