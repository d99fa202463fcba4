//! Checks of the SQLite audit log's key versions (seed 000 §1, §8).
//!
//! The log records a fingerprint per `AUDIT_SIGNING_KEY` version
//! (`audit_keys`) and the verifier keys each version used per tenant
//! (`audit_tenant_keys`), so rotation needs no old secret. Two things can
//! still go wrong, and both are visible offline in a read-only open:
//!
//! - the configured key is none of the recorded versions while records
//!   exist: the key was replaced since aibox last started (a rotation not
//!   yet picked up, or a regenerated env file that lost the key);
//! - envelopes or checkpoints name a version whose verifier keys are not
//!   recorded for their tenant: those records cannot be verified.

use std::collections::BTreeSet;
use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use super::model::{self, Finding, Location};

/// What the audit database says about key versions.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct KeyState {
    /// Recorded fingerprints.
    pub fingerprints: BTreeSet<String>,
    /// Number of audit rows.
    pub rows: i64,
    /// (table, tenant, version) of records without recorded verifier keys.
    pub unverifiable: Vec<(String, String, i64)>,
}

fn open(path: &Path) -> rusqlite::Result<Connection> {
    match Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    ) {
        Ok(c) => Ok(c),
        // A WAL database in a read-only directory: open it immutable.
        Err(_) => Connection::open_with_flags(
            format!("file:{}?immutable=1", path.display()),
            OpenFlags::SQLITE_OPEN_READ_ONLY
                | OpenFlags::SQLITE_OPEN_URI
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        ),
    }
}

/// Reads the key state of an audit database.
pub fn read_state(path: &Path) -> rusqlite::Result<KeyState> {
    let conn = open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let mut state = KeyState::default();
    let mut stmt = conn.prepare("SELECT fingerprint FROM audit_keys")?;
    for fp in stmt.query_map([], |r| r.get::<_, String>(0))? {
        state.fingerprints.insert(fp?);
    }
    state.rows = conn.query_row("SELECT COUNT(*) FROM audit_rows", [], |r| r.get(0))?;
    for table in ["audit_envelopes", "audit_checkpoints"] {
        let sql = format!(
            "SELECT DISTINCT t.tenant, t.key_version FROM {table} t WHERE NOT EXISTS \
             (SELECT 1 FROM audit_tenant_keys k WHERE k.tenant = t.tenant AND k.version = t.key_version) \
             ORDER BY 1, 2 LIMIT 100"
        );
        let mut stmt = conn.prepare(&sql)?;
        for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
            let (tenant, version) = row?;
            state.unverifiable.push((table.to_owned(), tenant, version));
        }
    }
    Ok(state)
}

/// Judges the state against the configured key (pure).
pub fn judge(
    db: &Path,
    state: &KeyState,
    current_fingerprint: Option<&str>,
    key_at: &Location,
    out: &mut Vec<Finding>,
) {
    if let Some(fp) = current_fingerprint
        && state.rows > 0
        && !state.fingerprints.contains(fp)
    {
        out.push(Finding::new(
                &model::AUDIT_KEY_REPLACED,
                Some(key_at.clone()),
                format!(
                    "AUDIT_SIGNING_KEY is none of the {} key version(s) recorded in {} ({} records): it was replaced since aibox last started",
                    state.fingerprints.len(),
                    db.display(),
                    state.rows
                ),
                "if you rotated it (`aibox keys rotate audit`), restart aibox so it registers the new version and publish `aibox audit keys`; if the env file was regenerated, restore the previous AUDIT_SIGNING_KEY from backup",
            ));
    }
    for (table, tenant, version) in &state.unverifiable {
        out.push(Finding::new(
            &model::AUDIT_VERSION_WITHOUT_KEYS,
            Some(Location::new(db, None)),
            format!("{table} of tenant '{tenant}' are signed by key version {version}, whose verifier keys are not recorded"),
            format!("restore {} from a backup taken before the loss, then run `aibox audit verify --tenant {tenant}`", db.display()),
        ));
    }
}

/// Checks `data_dir/audit.db` if it exists.
pub fn check(
    data_dir: &Path,
    audit_key: Option<&str>,
    key_at: &Location,
    out: &mut Vec<Finding>,
) -> anyhow::Result<()> {
    let db = data_dir.join(crate::audit::AUDIT_DB);
    if !db.is_file() {
        return Ok(());
    }
    let state = read_state(&db).map_err(|e| {
        anyhow::anyhow!(
            "cannot read the audit database {} ({e}); fix: point --data-dir at aibox's data directory, or check the file's permissions",
            db.display()
        )
    })?;
    let fp = audit_key.and_then(|k| aibox_auditlog::key_fingerprint(k).ok());
    judge(&db, &state, fp.as_deref(), key_at, out);
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const KEY_A: &str = "Zq8-rT3_kLm9Pw2xVb7NcY4sHd6Jf1GaQ0aa";
    const KEY_B: &str = "Pw2xVb7NcY4sHd6Jf1GaQ0aaZq8-rT3_kLm9";

    fn db(dir: &Path, rows: usize, tenant_keys: bool) -> std::path::PathBuf {
        let p = dir.join("audit.db");
        let _ = std::fs::remove_file(&p);
        let c = Connection::open(&p).unwrap();
        c.execute_batch(
            "CREATE TABLE audit_keys (version INTEGER PRIMARY KEY, fingerprint TEXT NOT NULL UNIQUE, created_ms INTEGER NOT NULL);
             CREATE TABLE audit_tenant_keys (tenant TEXT, version INTEGER, checkpoint_key TEXT, envelope_key TEXT, created_ms INTEGER);
             CREATE TABLE audit_rows (tenant TEXT, seq INTEGER, turn TEXT, event TEXT, prev_row_hash BLOB, row_hash BLOB);
             CREATE TABLE audit_envelopes (tenant TEXT, leaf_index INTEGER, turn TEXT, first_seq INTEGER, last_seq INTEGER, key_version INTEGER, leaf_hash BLOB, note TEXT);
             CREATE TABLE audit_checkpoints (tenant TEXT, size INTEGER, key_version INTEGER, root BLOB, note TEXT, created_ms INTEGER);",
        )
        .unwrap();
        let fp = aibox_auditlog::key_fingerprint(KEY_A).unwrap();
        c.execute("INSERT INTO audit_keys VALUES (1, ?1, 0)", [fp])
            .unwrap();
        for i in 0..rows {
            c.execute(
                "INSERT INTO audit_rows VALUES ('default', ?1, NULL, '{}', x'00', x'00')",
                [i64::try_from(i).unwrap() + 1],
            )
            .unwrap();
        }
        if rows > 0 {
            c.execute(
                "INSERT INTO audit_envelopes VALUES ('default', 0, 't', 1, 1, 1, x'00', 'n')",
                [],
            )
            .unwrap();
            c.execute(
                "INSERT INTO audit_checkpoints VALUES ('default', 1, 1, x'00', 'n', 0)",
                [],
            )
            .unwrap();
        }
        if tenant_keys {
            c.execute(
                "INSERT INTO audit_tenant_keys VALUES ('default', 1, 'k', 'k', 0)",
                [],
            )
            .unwrap();
        }
        p
    }

    #[test]
    fn key_versions_table() {
        let dir = tempfile::tempdir().unwrap();
        let at = Location::new(Path::new(".env"), Some(3));
        let cases: Vec<(usize, bool, Option<&str>, Vec<&str>)> = vec![
            (2, true, Some(KEY_A), vec![]),
            (2, true, Some(KEY_B), vec!["AIBOX-AUDIT-001"]),
            // No records yet: a new key is simply the first version.
            (0, true, Some(KEY_B), vec![]),
            (
                2,
                false,
                Some(KEY_A),
                vec!["AIBOX-AUDIT-002", "AIBOX-AUDIT-002"],
            ),
            (2, true, None, vec![]),
        ];
        for (rows, tk, key, want) in cases {
            db(dir.path(), rows, tk);
            let mut out = Vec::new();
            check(dir.path(), key, &at, &mut out).unwrap();
            let got: Vec<&str> = out.iter().map(|f| f.rule.id).collect();
            assert_eq!(got, want, "rows={rows} tk={tk} key={key:?}");
            for f in &out {
                assert!(!f.evidence.contains(KEY_A) && !f.evidence.contains(KEY_B));
            }
        }
        // Not an audit database: an error that names the file and the fix.
        std::fs::write(dir.path().join("audit.db"), b"not sqlite").unwrap();
        let e = check(dir.path(), Some(KEY_A), &at, &mut Vec::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("audit.db") && e.contains("--data-dir"), "{e}");
    }
}
