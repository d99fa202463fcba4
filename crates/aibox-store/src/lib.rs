//! Persistence of aibox.
//!
//! The embedded default keeps its state in one SQLite file under the data
//! directory. SQLite calls block, so a single writer thread owns the
//! connection and the async world talks to it over a channel; usage records
//! are batched into one transaction per drain of the channel (group commit),
//! which keeps the request path free of disk waits.
//!
//! Migrations are numbered SQL scripts applied in order on open; the applied
//! version is SQLite's `user_version`, so re-opening is idempotent and an
//! older binary refuses a newer database instead of corrupting it.

use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::thread;

use aibox_core::audit::Usage;
use aibox_core::{TenantId, UserId};
use rusqlite::Connection;
use tokio::sync::oneshot;

/// Storage errors. Messages name the file and the fix, never row contents.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened.
    #[error("cannot open the SQLite database {path}: {source}; fix: check that server.data_dir (AIBOX_DATA_DIR) is writable", path = path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        source: rusqlite::Error,
    },
    /// The database was written by a newer aibox.
    #[error("the database {path} has schema version {found}, newer than this binary's {known}; fix: run the newer aibox or restore a matching backup", path = path.display())]
    TooNew {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: i64,
        /// Ours.
        known: i64,
    },
    /// A query failed.
    #[error("database error: {0}")]
    Sql(#[from] rusqlite::Error),
    /// The writer thread is gone (it only stops at shutdown).
    #[error("the database writer has stopped")]
    Closed,
    /// The data directory could not be created.
    #[error("cannot create the data directory {path}: {source}; fix: set server.data_dir (AIBOX_DATA_DIR) to a writable directory", path = path.display())]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// One model call's token usage, attributed to its principal.
#[derive(Debug, Clone)]
pub struct UsageRecord {
    /// Unix milliseconds.
    pub at_ms: i64,
    /// The tenant.
    pub tenant: TenantId,
    /// The user.
    pub user: UserId,
    /// The model the client asked for.
    pub model: String,
    /// The upstream that served it.
    pub upstream: String,
    /// The request id.
    pub request_id: String,
    /// Tokens.
    pub usage: Usage,
}

/// Token totals of one tenant and user.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageTotals {
    /// Number of recorded calls.
    pub requests: u64,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
}

enum Cmd {
    Usage(UsageRecord),
    Ping(oneshot::Sender<Result<(), StoreError>>),
    Flush(oneshot::Sender<()>),
    Totals {
        tenant: TenantId,
        user: UserId,
        reply: oneshot::Sender<Result<UsageTotals, StoreError>>,
    },
}

/// Handle to the store. Cloning shares the writer.
#[derive(Clone)]
pub struct Store {
    tx: std_mpsc::Sender<Cmd>,
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

impl Store {
    /// Opens (creating if needed) the SQLite database at `path`, applies
    /// migrations and starts the writer thread.
    pub fn open_sqlite(path: &Path) -> Result<Self, StoreError> {
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
        let (tx, rx) = std_mpsc::channel();
        thread::Builder::new()
            .name("aibox-sqlite".into())
            .spawn(move || writer(conn, rx))
            .map_err(|e| StoreError::DataDir {
                path: path.to_path_buf(),
                source: e,
            })?;
        Ok(Self { tx })
    }

    /// Queues a usage record. Never blocks; a record queued before
    /// [`Store::flush`] returns is durable after it.
    pub fn record_usage(&self, rec: UsageRecord) {
        if self.tx.send(Cmd::Usage(rec)).is_err() {
            tracing::error!("usage record dropped: the database writer has stopped");
        }
    }

    /// Checks that the database answers a query.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Ping(reply))
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Waits until everything queued so far is committed.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Flush(reply))
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)
    }

    /// Usage totals of one principal, over all time.
    pub async fn usage_totals(
        &self,
        tenant: &TenantId,
        user: &UserId,
    ) -> Result<UsageTotals, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Totals {
                tenant: tenant.clone(),
                user: user.clone(),
                reply,
            })
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }
}

fn writer(mut conn: Connection, rx: std_mpsc::Receiver<Cmd>) {
    let mut pending: Vec<UsageRecord> = Vec::new();
    while let Ok(first) = rx.recv() {
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
                Cmd::Ping(reply) => {
                    let r = conn
                        .query_row("SELECT 1", [], |_| Ok(()))
                        .map_err(StoreError::from);
                    let _ = reply.send(r);
                }
                Cmd::Flush(reply) => {
                    let _ = reply.send(());
                }
                Cmd::Totals {
                    tenant,
                    user,
                    reply,
                } => {
                    let r = conn
                        .query_row(
                            "SELECT COUNT(*), COALESCE(SUM(prompt_tokens),0), COALESCE(SUM(completion_tokens),0)
                             FROM usage WHERE tenant = ?1 AND user_id = ?2",
                            (tenant.as_str(), user.as_str()),
                            |r| {
                                Ok(UsageTotals {
                                    requests: r.get::<_, i64>(0)?.try_into().unwrap_or(0),
                                    prompt_tokens: r.get::<_, i64>(1)?.try_into().unwrap_or(0),
                                    completion_tokens: r.get::<_, i64>(2)?.try_into().unwrap_or(0),
                                })
                            },
                        )
                        .map_err(StoreError::from);
                    let _ = reply.send(r);
                }
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
                i64::try_from(r.usage.prompt_tokens).unwrap_or(i64::MAX),
                i64::try_from(r.usage.completion_tokens).unwrap_or(i64::MAX),
                i64::try_from(r.usage.total_tokens).unwrap_or(i64::MAX),
            ))?;
        }
    }
    tx.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let store = Store::open_sqlite(&path).unwrap();
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
        let again = Store::open_sqlite(&path).unwrap();
        let t = again
            .usage_totals(&TenantId::new("t").unwrap(), &UserId::new("bob").unwrap())
            .await
            .unwrap();
        assert_eq!(t.requests, 1);
    }

    #[tokio::test]
    async fn refuses_a_database_from_a_newer_binary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("aibox.db");
        {
            let c = Connection::open(&path).unwrap();
            c.pragma_update(None, "user_version", 99).unwrap();
        }
        let err = Store::open_sqlite(&path).err().unwrap().to_string();
        assert!(err.contains("schema version 99"), "{err}");
    }
}
