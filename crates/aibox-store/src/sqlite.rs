//! The SQLite backend of the embedded default.
//!
//! SQLite calls block, so a single writer thread owns the read-write
//! connection and the async world talks to it over a channel; usage records
//! are batched into one transaction per drain of the channel (group commit),
//! which keeps the request path free of disk waits. A usage record that
//! finds the writer idle waits [`USAGE_LINGER`] for others before the
//! drain, so that at low rates one transaction and one wake-up of the
//! writer cover many turns instead of one each. A second, read-only
//! connection serves lookups: WAL mode lets it read while the writer commits.
//!
//! Migrations are numbered SQL scripts applied in order on open; the applied
//! version is SQLite's `user_version`, so re-opening is idempotent and an
//! older binary refuses a newer database instead of corrupting it.

use std::path::Path;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::thread;

use aibox_core::{TenantId, UserId};
use rusqlite::Connection;
use tokio::sync::oneshot;

use crate::{ApiKeyRecord, Rewrap, SecretMeta, StoreError, StoredSecret, UsageRecord, UsageTotals};

/// The SQLite backend. Cloning shares the writer and the reader.
#[derive(Clone)]
pub(crate) struct SqliteStore {
    tx: std_mpsc::Sender<Cmd>,
    /// A second connection for reads: WAL mode lets it read while the writer
    /// commits, so lookups on the request path never queue behind writes.
    reader: Arc<Mutex<Connection>>,
}

/// A job for the writer thread, run with exclusive use of the connection.
type Job = Box<dyn FnOnce(&mut Connection) + Send>;

enum Cmd {
    Usage(UsageRecord),
    Flush(oneshot::Sender<()>),
    Exec(Job),
}

const MIGRATIONS: &[&str] = &[
    // 1: token usage per call.
    "CREATE TABLE usage (
        id INTEGER PRIMARY KEY,
        at_ms INTEGER NOT NULL,
        tenant TEXT NOT NULL,
        user_id TEXT NOT NULL,
        model TEXT NOT NULL,
        upstream TEXT NOT NULL,
        request_id TEXT NOT NULL,
        prompt_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        total_tokens INTEGER NOT NULL
    );
    CREATE INDEX usage_by_principal ON usage (tenant, user_id, at_ms);",
    // 2: gateway API keys (hashes only).
    "CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        hash TEXT NOT NULL,
        tenant TEXT NOT NULL,
        user_id TEXT NOT NULL,
        roles TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        expires_ms INTEGER,
        revoked_ms INTEGER
    );",
    // 3: vault secrets (ciphertext and wrapped data keys only).
    "CREATE TABLE vault_secrets (
        tenant TEXT NOT NULL,
        user_id TEXT NOT NULL,
        name TEXT NOT NULL,
        master_kid TEXT NOT NULL,
        wrapped_key BLOB NOT NULL,
        ciphertext BLOB NOT NULL,
        created_ms INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL,
        PRIMARY KEY (tenant, user_id, name)
    );
    CREATE INDEX vault_by_master_kid ON vault_secrets (master_kid);",
];

fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let known = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
    let current: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if current > known {
        return Err(StoreError::TooNew {
            path: path.to_path_buf(),
            found: current,
            known,
        });
    }
    for (i, sql) in MIGRATIONS
        .iter()
        .enumerate()
        .skip(usize::try_from(current).unwrap_or(0))
    {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i + 1)?;
        tx.commit()?;
        tracing::info!(version = i + 1, "applied database migration");
    }
    Ok(())
}

impl SqliteStore {
    /// Opens (creating if needed) the SQLite database at `path`, applies
    /// migrations and starts the writer thread.
    pub(crate) fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::DataDir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let open_err = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        let mut conn = Connection::open(path).map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        migrate(&mut conn, path)?;
        let reader = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(open_err)?;
        reader
            .busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        let (tx, rx) = std_mpsc::channel();
        thread::Builder::new()
            .name("aibox-sqlite".into())
            .spawn(move || writer(conn, rx))
            .map_err(|e| StoreError::DataDir {
                path: path.to_path_buf(),
                source: e,
            })?;
        Ok(Self {
            tx,
            reader: Arc::new(Mutex::new(reader)),
        })
    }

    /// Runs `f` on the writer thread and returns its result.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (reply, rx) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let _ = reply.send(f(conn));
        });
        self.tx
            .send(Cmd::Exec(job))
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs a primary-key lookup on the calling thread when the read
    /// connection is free. Such a lookup takes microseconds from SQLite's
    /// page cache, far less than a hop to the blocking pool and back, which
    /// is what the request path paid per API key before. A busy connection
    /// falls back to the pool rather than waiting on the async thread.
    async fn read_point<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        if let Ok(conn) = self.reader.try_lock() {
            return f(&conn);
        }
        self.read(f).await
    }

    /// Runs `f` on the read connection in the blocking pool.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let conn = reader.lock().map_err(|_| StoreError::Closed)?;
            f(&conn)
        })
        .await
        .map_err(|_| StoreError::Closed)?
    }

    /// Stores a new API key record.
    pub(crate) async fn insert_api_key(&self, rec: ApiKeyRecord) -> Result<(), StoreError> {
        self.write(move |conn| {
            let roles = rec.roles.join(",");
            conn.execute(
                "INSERT INTO api_keys (id, hash, tenant, user_id, roles, created_ms, expires_ms, revoked_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL)",
                (&rec.id, &rec.hash, rec.tenant.as_str(), rec.user.as_str(), &roles, rec.created_ms, rec.expires_ms),
            )?;
            Ok(())
        })
        .await
    }

    /// Looks up an API key by its public id.
    pub(crate) async fn api_key(&self, id: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        let id = id.to_owned();
        self.read_point(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, hash, tenant, user_id, roles, created_ms, expires_ms, revoked_ms FROM api_keys WHERE id = ?1",
            )?;
            let mut rows = stmt.query_map([&id], api_key_row)?;
            rows.next().transpose().map_err(StoreError::from)?.transpose()
        })
        .await
    }

    /// Lists API keys, optionally of one tenant, oldest first.
    pub(crate) async fn list_api_keys(
        &self,
        tenant: Option<&TenantId>,
    ) -> Result<Vec<ApiKeyRecord>, StoreError> {
        let tenant = tenant.map(|t| t.as_str().to_owned());
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, hash, tenant, user_id, roles, created_ms, expires_ms, revoked_ms FROM api_keys
                 WHERE ?1 IS NULL OR tenant = ?1 ORDER BY created_ms, id",
            )?;
            let rows = stmt.query_map([&tenant], api_key_row)?;
            let mut out = Vec::new();
            for r in rows {
                out.push(r??);
            }
            Ok(out)
        })
        .await
    }

    /// Revokes an API key; false when no such key exists or it was already revoked.
    pub(crate) async fn revoke_api_key(&self, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.write(move |conn| {
            let n = conn.execute(
                "UPDATE api_keys SET revoked_ms = ?2 WHERE id = ?1 AND revoked_ms IS NULL",
                (&id, now_ms),
            )?;
            Ok(n == 1)
        })
        .await
    }

    pub(crate) async fn put_secret(&self, rec: StoredSecret) -> Result<(), StoreError> {
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO vault_secrets (tenant, user_id, name, master_kid, wrapped_key, ciphertext, created_ms, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)
                 ON CONFLICT (tenant, user_id, name) DO UPDATE SET
                   master_kid = excluded.master_kid, wrapped_key = excluded.wrapped_key,
                   ciphertext = excluded.ciphertext, updated_ms = excluded.updated_ms",
                (
                    rec.tenant.as_str(),
                    rec.user.as_str(),
                    &rec.name,
                    &rec.master_kid,
                    &rec.wrapped_key,
                    &rec.ciphertext,
                    rec.updated_ms,
                ),
            )?;
            Ok(())
        })
        .await
    }

    pub(crate) async fn get_secret(
        &self,
        tenant: &TenantId,
        user: &UserId,
        name: &str,
    ) -> Result<Option<StoredSecret>, StoreError> {
        let (t, u, n) = (
            tenant.as_str().to_owned(),
            user.as_str().to_owned(),
            name.to_owned(),
        );
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT tenant, user_id, name, master_kid, wrapped_key, ciphertext, created_ms, updated_ms
                 FROM vault_secrets WHERE tenant = ?1 AND user_id = ?2 AND name = ?3",
            )?;
            let mut rows = stmt.query_map((&t, &u, &n), secret_row)?;
            rows.next().transpose().map_err(StoreError::from)?.transpose()
        })
        .await
    }

    pub(crate) async fn delete_secret(
        &self,
        tenant: &TenantId,
        user: &UserId,
        name: &str,
    ) -> Result<bool, StoreError> {
        let (t, u, n) = (
            tenant.as_str().to_owned(),
            user.as_str().to_owned(),
            name.to_owned(),
        );
        self.write(move |conn| {
            let n = conn.execute(
                "DELETE FROM vault_secrets WHERE tenant = ?1 AND user_id = ?2 AND name = ?3",
                (&t, &u, &n),
            )?;
            Ok(n == 1)
        })
        .await
    }

    pub(crate) async fn list_secrets(
        &self,
        tenant: &TenantId,
        user: &UserId,
    ) -> Result<Vec<SecretMeta>, StoreError> {
        let (t, u) = (tenant.as_str().to_owned(), user.as_str().to_owned());
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT name, master_kid, created_ms, updated_ms FROM vault_secrets
                 WHERE tenant = ?1 AND user_id = ?2 ORDER BY name",
            )?;
            let rows = stmt.query_map((&t, &u), |r| {
                Ok(SecretMeta {
                    name: r.get(0)?,
                    master_kid: r.get(1)?,
                    created_ms: r.get(2)?,
                    updated_ms: r.get(3)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    pub(crate) async fn secrets_not_under(
        &self,
        kid: &str,
        limit: u32,
    ) -> Result<Vec<StoredSecret>, StoreError> {
        let kid = kid.to_owned();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT tenant, user_id, name, master_kid, wrapped_key, ciphertext, created_ms, updated_ms
                 FROM vault_secrets WHERE master_kid <> ?1 ORDER BY tenant, user_id, name LIMIT ?2",
            )?;
            let rows = stmt.query_map((&kid, limit), secret_row)?;
            let mut out = Vec::new();
            for r in rows {
                out.push(r??);
            }
            Ok(out)
        })
        .await
    }

    pub(crate) async fn rewrap_secret(&self, rw: Rewrap<'_>) -> Result<bool, StoreError> {
        let old = rw.old.clone();
        let (kid, wrapped) = (rw.master_kid.to_owned(), rw.wrapped_key.to_vec());
        self.write(move |conn| {
            let n = conn.execute(
                "UPDATE vault_secrets SET master_kid = ?5, wrapped_key = ?6
                 WHERE tenant = ?1 AND user_id = ?2 AND name = ?3 AND master_kid = ?4
                   AND wrapped_key = ?7 AND ciphertext = ?8",
                (
                    old.tenant.as_str(),
                    old.user.as_str(),
                    &old.name,
                    &old.master_kid,
                    &kid,
                    &wrapped,
                    &old.wrapped_key,
                    &old.ciphertext,
                ),
            )?;
            Ok(n == 1)
        })
        .await
    }

    pub(crate) async fn secrets_per_master_kid(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT master_kid, COUNT(*) FROM vault_secrets GROUP BY master_kid ORDER BY master_kid",
            )?;
            let rows = stmt.query_map([], |r| {
                let n: i64 = r.get(1)?;
                Ok((r.get::<_, String>(0)?, u64::try_from(n).unwrap_or(0)))
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Queues a usage record. Never blocks; a record queued before
    /// [`SqliteStore::flush`] returns is durable after it.
    pub(crate) fn record_usage(&self, rec: UsageRecord) {
        if self.tx.send(Cmd::Usage(rec)).is_err() {
            tracing::error!("usage record dropped: the database writer has stopped");
        }
    }

    /// Checks that the database answers a query. It goes through the writer,
    /// so a wedged writer makes the store not ready.
    pub(crate) async fn ping(&self) -> Result<(), StoreError> {
        self.write(|conn| {
            conn.query_row("SELECT 1", [], |_| Ok(()))?;
            Ok(())
        })
        .await
    }

    /// Waits until everything queued so far is committed.
    pub(crate) async fn flush(&self) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Flush(reply))
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)
    }

    /// Usage totals of one principal, over all time.
    pub(crate) async fn usage_totals(
        &self,
        tenant: &TenantId,
        user: &UserId,
    ) -> Result<UsageTotals, StoreError> {
        let (tenant, user) = (tenant.as_str().to_owned(), user.as_str().to_owned());
        self.read(move |conn| {
            let totals = conn.query_row(
                "SELECT COUNT(*), COALESCE(SUM(prompt_tokens),0), COALESCE(SUM(completion_tokens),0)
                 FROM usage WHERE tenant = ?1 AND user_id = ?2",
                (&tenant, &user),
                |r| {
                    Ok(UsageTotals {
                        requests: r.get::<_, i64>(0)?.try_into().unwrap_or(0),
                        prompt_tokens: r.get::<_, i64>(1)?.try_into().unwrap_or(0),
                        completion_tokens: r.get::<_, i64>(2)?.try_into().unwrap_or(0),
                    })
                },
            )?;
            Ok(totals)
        })
        .await
    }
}

/// Maps a vault row, validating the owner again.
fn secret_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<StoredSecret, StoreError>> {
    Ok(crate::secret_record(
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
    ))
}

/// Maps a row to a record; a tenant or user that no longer validates is an
/// error rather than a silently different identity.
fn api_key_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<ApiKeyRecord, StoreError>> {
    let roles: String = r.get(4)?;
    Ok(crate::api_key_record(
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        &roles,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
    ))
}

/// How long a usage record that woke the writer waits for company. While
/// the writer sleeps it is not waiting on the channel, so the turns that
/// send records meanwhile make no wake-up system call; at c=1 this thread
/// had cost a wake-up and a commit per turn (about 7% of aibox's CPU). The
/// records are no less durable: they are queued in memory either way until
/// the commit, and a crash loses at most this much more of them (usage is
/// accounting; every turn's usage is also in its audit record).
pub(crate) const USAGE_LINGER: std::time::Duration = std::time::Duration::from_millis(20);

fn writer(mut conn: Connection, rx: std_mpsc::Receiver<Cmd>) {
    let mut pending: Vec<UsageRecord> = Vec::new();
    while let Ok(first) = rx.recv() {
        if matches!(first, Cmd::Usage(_)) {
            thread::sleep(USAGE_LINGER);
        }
        let mut replies = Vec::new();
        let mut next = Some(first);
        // Drain whatever else is queued so that one commit covers it all.
        while let Some(cmd) = next.take().or_else(|| rx.try_recv().ok()) {
            match cmd {
                Cmd::Usage(r) => pending.push(r),
                other => replies.push(other),
            }
            if pending.len() >= 4096 {
                break;
            }
        }
        if !pending.is_empty() {
            if let Err(e) = insert_usage(&mut conn, &pending) {
                tracing::error!(error = %e, rows = pending.len(), "cannot write usage records; they are lost");
            }
            pending.clear();
        }
        for cmd in replies {
            match cmd {
                Cmd::Flush(reply) => {
                    let _ = reply.send(());
                }
                Cmd::Exec(job) => job(&mut conn),
                Cmd::Usage(_) => {}
            }
        }
    }
}

fn insert_usage(conn: &mut Connection, rows: &[UsageRecord]) -> Result<(), rusqlite::Error> {
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO usage (at_ms, tenant, user_id, model, upstream, request_id, prompt_tokens, completion_tokens, total_tokens)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?;
        for r in rows {
            stmt.execute((
                r.at_ms,
                r.tenant.as_str(),
                r.user.as_str(),
                &r.model,
                &r.upstream,
                &r.request_id,
                crate::count_i64(r.usage.prompt_tokens),
                crate::count_i64(r.usage.completion_tokens),
                crate::count_i64(r.usage.total_tokens),
            ))?;
        }
    }
    tx.commit()
}

#[cfg(test)]
mod tests {
    use super::*;
    use aibox_core::audit::Usage;

    fn rec(user: &str, p: u64, c: u64) -> UsageRecord {
        UsageRecord {
            at_ms: 1,
            tenant: TenantId::new("t").unwrap(),
            user: UserId::new(user).unwrap(),
            model: "m".into(),
            upstream: "u".into(),
            request_id: "r".into(),
            usage: Usage {
                prompt_tokens: p,
                completion_tokens: c,
                total_tokens: p + c,
            },
        }
    }

    #[tokio::test]
    async fn usage_is_durable_after_flush_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/aibox.db");
        let store = crate::Store::open_sqlite(&path).unwrap();
        store.ping().await.unwrap();
        for _ in 0..100 {
            store.record_usage(rec("alice", 2, 3));
        }
        store.record_usage(rec("bob", 1, 1));
        store.flush().await.unwrap();
        let t = store
            .usage_totals(&TenantId::new("t").unwrap(), &UserId::new("alice").unwrap())
            .await
            .unwrap();
        assert_eq!(
            t,
            UsageTotals {
                requests: 100,
                prompt_tokens: 200,
                completion_tokens: 300
            }
        );
        drop(store);
        let again = crate::Store::open_sqlite(&path).unwrap();
        let t = again
            .usage_totals(&TenantId::new("t").unwrap(), &UserId::new("bob").unwrap())
            .await
            .unwrap();
        assert_eq!(t.requests, 1);
    }

    #[tokio::test]
    async fn api_keys_insert_lookup_list_and_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::Store::open_sqlite(&dir.path().join("aibox.db")).unwrap();
        let rec = ApiKeyRecord {
            id: "0123456789abcdef".into(),
            hash: "ab".repeat(32),
            tenant: TenantId::new("acme").unwrap(),
            user: UserId::new("ci-bot").unwrap(),
            roles: vec!["admin".into(), "user".into()],
            created_ms: 5,
            expires_ms: Some(10),
            revoked_ms: None,
        };
        store.insert_api_key(rec.clone()).await.unwrap();
        assert!(
            store.insert_api_key(rec.clone()).await.is_err(),
            "duplicate id accepted"
        );
        assert_eq!(
            store.api_key("0123456789abcdef").await.unwrap(),
            Some(rec.clone())
        );
        assert_eq!(store.api_key("' OR 1=1 --").await.unwrap(), None);
        assert_eq!(
            store
                .list_api_keys(Some(&TenantId::new("acme").unwrap()))
                .await
                .unwrap()
                .len(),
            1
        );
        assert!(
            store
                .list_api_keys(Some(&TenantId::new("other").unwrap()))
                .await
                .unwrap()
                .is_empty()
        );
        assert!(store.revoke_api_key("0123456789abcdef", 7).await.unwrap());
        assert!(!store.revoke_api_key("0123456789abcdef", 8).await.unwrap());
        assert_eq!(
            store
                .api_key("0123456789abcdef")
                .await
                .unwrap()
                .unwrap()
                .revoked_ms,
            Some(7)
        );
    }

    #[tokio::test]
    async fn refuses_a_database_from_a_newer_binary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("aibox.db");
        {
            let c = Connection::open(&path).unwrap();
            c.pragma_update(None, "user_version", 99).unwrap();
        }
        let err = crate::Store::open_sqlite(&path).err().unwrap().to_string();
        assert!(err.contains("schema version 99"), "{err}");
    }
}
