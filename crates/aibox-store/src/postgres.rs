//! The PostgreSQL backend, for several replicas sharing one database.
//!
//! A connection pool serves lookups; usage records go through a channel to
//! one task per process that commits them in batches (group commit).
//! Migrations run under a PostgreSQL advisory lock, so replicas starting
//! together apply each migration exactly once.

use std::str::FromStr as _;

use aibox_core::{TenantId, UserId};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::NoTls;

use crate::{ApiKeyRecord, Rewrap, SecretMeta, StoreError, StoredSecret, UsageRecord, UsageTotals};

/// A lock id private to aibox migrations (an arbitrary constant).
const MIGRATION_LOCK: i64 = 0x6169_626f_785f_6d67;

const MIGRATIONS: &[&str] = &[
    // 1: token usage per call.
    "CREATE TABLE usage (
        id BIGSERIAL PRIMARY KEY,
        at_ms BIGINT NOT NULL,
        tenant TEXT NOT NULL,
        user_id TEXT NOT NULL,
        model TEXT NOT NULL,
        upstream TEXT NOT NULL,
        request_id TEXT NOT NULL,
        prompt_tokens BIGINT NOT NULL,
        completion_tokens BIGINT NOT NULL,
        total_tokens BIGINT NOT NULL
    );
    CREATE INDEX usage_by_principal ON usage (tenant, user_id, at_ms);",
    // 2: gateway API keys (hashes only).
    "CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        hash TEXT NOT NULL,
        tenant TEXT NOT NULL,
        user_id TEXT NOT NULL,
        roles TEXT NOT NULL,
        created_ms BIGINT NOT NULL,
        expires_ms BIGINT,
        revoked_ms BIGINT
    );",
    // 3: vault secrets (ciphertext and wrapped data keys only).
    "CREATE TABLE vault_secrets (
        tenant TEXT NOT NULL,
        user_id TEXT NOT NULL,
        name TEXT NOT NULL,
        master_kid TEXT NOT NULL,
        wrapped_key BYTEA NOT NULL,
        ciphertext BYTEA NOT NULL,
        created_ms BIGINT NOT NULL,
        updated_ms BIGINT NOT NULL,
        PRIMARY KEY (tenant, user_id, name)
    );
    CREATE INDEX vault_by_master_kid ON vault_secrets (master_kid);",
];

enum Cmd {
    Usage(UsageRecord),
    Flush(oneshot::Sender<()>),
}

/// The PostgreSQL backend.
#[derive(Clone)]
pub(crate) struct PgStore {
    pool: Pool,
    tx: mpsc::UnboundedSender<Cmd>,
}

/// Describes where a URL points without its password.
fn target(cfg: &tokio_postgres::Config) -> String {
    let host = cfg
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}/{}", cfg.get_dbname().unwrap_or("(default)"))
}

fn pg_err(e: tokio_postgres::Error) -> StoreError {
    StoreError::Postgres(e.to_string())
}

impl PgStore {
    pub(crate) async fn connect(url: &str, max_connections: usize) -> Result<Self, StoreError> {
        let cfg = tokio_postgres::Config::from_str(url).map_err(|_| StoreError::Connect {
            target: "(unparseable URL)".into(),
            cause: "database.url is not a valid PostgreSQL URL".into(),
        })?;
        let where_ = target(&cfg);
        let mgr = Manager::from_config(
            cfg,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        // `database.max_connections`; zero would leave every request waiting
        // for a connection that never comes, so it counts as one.
        let pool = Pool::builder(mgr)
            .max_size(max_connections.max(1))
            .build()
            .map_err(|e| StoreError::Connect {
                target: where_.clone(),
                cause: e.to_string(),
            })?;
        let mut client = pool.get().await.map_err(|e| StoreError::Connect {
            target: where_.clone(),
            cause: e.to_string(),
        })?;
        migrate(&mut client).await?;
        drop(client);
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(writer(pool.clone(), rx));
        Ok(Self { pool, tx })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|e| StoreError::Postgres(e.to_string()))
    }

    pub(crate) fn record_usage(&self, rec: UsageRecord) {
        if self.tx.send(Cmd::Usage(rec)).is_err() {
            tracing::error!("usage record dropped: the database writer has stopped");
        }
    }

    pub(crate) async fn ping(&self) -> Result<(), StoreError> {
        let c = self.client().await?;
        c.simple_query("SELECT 1").await.map_err(pg_err)?;
        Ok(())
    }

    pub(crate) async fn flush(&self) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Flush(reply))
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)
    }

    pub(crate) async fn usage_totals(
        &self,
        tenant: &TenantId,
        user: &UserId,
    ) -> Result<UsageTotals, StoreError> {
        let c = self.client().await?;
        let row = c
            .query_one(
                "SELECT COUNT(*)::BIGINT, COALESCE(SUM(prompt_tokens),0)::BIGINT, COALESCE(SUM(completion_tokens),0)::BIGINT
                 FROM usage WHERE tenant = $1 AND user_id = $2",
                &[&tenant.as_str(), &user.as_str()],
            )
            .await
            .map_err(pg_err)?;
        let get = |i: usize| -> Result<u64, StoreError> {
            let v: i64 = row.try_get(i).map_err(pg_err)?;
            Ok(u64::try_from(v).unwrap_or(0))
        };
        Ok(UsageTotals {
            requests: get(0)?,
            prompt_tokens: get(1)?,
            completion_tokens: get(2)?,
        })
    }

    pub(crate) async fn insert_api_key(&self, rec: ApiKeyRecord) -> Result<(), StoreError> {
        let c = self.client().await?;
        c.execute(
            "INSERT INTO api_keys (id, hash, tenant, user_id, roles, created_ms, expires_ms, revoked_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, NULL)",
            &[
                &rec.id,
                &rec.hash,
                &rec.tenant.as_str(),
                &rec.user.as_str(),
                &rec.roles.join(","),
                &rec.created_ms,
                &rec.expires_ms,
            ],
        )
        .await
        .map_err(pg_err)?;
        Ok(())
    }

    pub(crate) async fn api_key(&self, id: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT id, hash, tenant, user_id, roles, created_ms, expires_ms, revoked_ms FROM api_keys WHERE id = $1",
                &[&id],
            )
            .await
            .map_err(pg_err)?;
        rows.first().map(api_key_row).transpose()
    }

    pub(crate) async fn list_api_keys(
        &self,
        tenant: Option<&TenantId>,
    ) -> Result<Vec<ApiKeyRecord>, StoreError> {
        let c = self.client().await?;
        let tenant = tenant.map(TenantId::as_str);
        let rows = c
            .query(
                "SELECT id, hash, tenant, user_id, roles, created_ms, expires_ms, revoked_ms FROM api_keys
                 WHERE $1::TEXT IS NULL OR tenant = $1 ORDER BY created_ms, id",
                &[&tenant],
            )
            .await
            .map_err(pg_err)?;
        rows.iter().map(api_key_row).collect()
    }

    pub(crate) async fn revoke_api_key(&self, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        let c = self.client().await?;
        let n = c
            .execute(
                "UPDATE api_keys SET revoked_ms = $2 WHERE id = $1 AND revoked_ms IS NULL",
                &[&id, &now_ms],
            )
            .await
            .map_err(pg_err)?;
        Ok(n == 1)
    }
}

const SECRET_COLUMNS: &str =
    "tenant, user_id, name, master_kid, wrapped_key, ciphertext, created_ms, updated_ms";

impl PgStore {
    pub(crate) async fn put_secret(&self, rec: StoredSecret) -> Result<(), StoreError> {
        let c = self.client().await?;
        c.execute(
            "INSERT INTO vault_secrets (tenant, user_id, name, master_kid, wrapped_key, ciphertext, created_ms, updated_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7)
             ON CONFLICT (tenant, user_id, name) DO UPDATE SET
               master_kid = EXCLUDED.master_kid, wrapped_key = EXCLUDED.wrapped_key,
               ciphertext = EXCLUDED.ciphertext, updated_ms = EXCLUDED.updated_ms",
            &[
                &rec.tenant.as_str(),
                &rec.user.as_str(),
                &rec.name,
                &rec.master_kid,
                &rec.wrapped_key,
                &rec.ciphertext,
                &rec.updated_ms,
            ],
        )
        .await
        .map_err(pg_err)?;
        Ok(())
    }

    pub(crate) async fn get_secret(
        &self,
        tenant: &TenantId,
        user: &UserId,
        name: &str,
    ) -> Result<Option<StoredSecret>, StoreError> {
        let c = self.client().await?;
        let rows = c
            .query(
                &format!(
                    "SELECT {SECRET_COLUMNS} FROM vault_secrets WHERE tenant = $1 AND user_id = $2 AND name = $3"
                ),
                &[&tenant.as_str(), &user.as_str(), &name],
            )
            .await
            .map_err(pg_err)?;
        rows.first().map(secret_row).transpose()
    }

    pub(crate) async fn delete_secret(
        &self,
        tenant: &TenantId,
        user: &UserId,
        name: &str,
    ) -> Result<bool, StoreError> {
        let c = self.client().await?;
        let n = c
            .execute(
                "DELETE FROM vault_secrets WHERE tenant = $1 AND user_id = $2 AND name = $3",
                &[&tenant.as_str(), &user.as_str(), &name],
            )
            .await
            .map_err(pg_err)?;
        Ok(n == 1)
    }

    pub(crate) async fn list_secrets(
        &self,
        tenant: &TenantId,
        user: &UserId,
    ) -> Result<Vec<SecretMeta>, StoreError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT name, master_kid, created_ms, updated_ms FROM vault_secrets
                 WHERE tenant = $1 AND user_id = $2 ORDER BY name",
                &[&tenant.as_str(), &user.as_str()],
            )
            .await
            .map_err(pg_err)?;
        rows.iter()
            .map(|r| {
                Ok(SecretMeta {
                    name: r.try_get(0).map_err(pg_err)?,
                    master_kid: r.try_get(1).map_err(pg_err)?,
                    created_ms: r.try_get(2).map_err(pg_err)?,
                    updated_ms: r.try_get(3).map_err(pg_err)?,
                })
            })
            .collect()
    }

    pub(crate) async fn secrets_not_under(
        &self,
        kid: &str,
        limit: u32,
    ) -> Result<Vec<StoredSecret>, StoreError> {
        let c = self.client().await?;
        let rows = c
            .query(
                &format!(
                    "SELECT {SECRET_COLUMNS} FROM vault_secrets WHERE master_kid <> $1
                     ORDER BY tenant, user_id, name LIMIT $2"
                ),
                &[&kid, &i64::from(limit)],
            )
            .await
            .map_err(pg_err)?;
        rows.iter().map(secret_row).collect()
    }

    pub(crate) async fn rewrap_secret(&self, rw: Rewrap<'_>) -> Result<bool, StoreError> {
        let c = self.client().await?;
        let old = rw.old;
        let n = c
            .execute(
                "UPDATE vault_secrets SET master_kid = $5, wrapped_key = $6
                 WHERE tenant = $1 AND user_id = $2 AND name = $3 AND master_kid = $4
                   AND wrapped_key = $7 AND ciphertext = $8",
                &[
                    &old.tenant.as_str(),
                    &old.user.as_str(),
                    &old.name,
                    &old.master_kid,
                    &rw.master_kid,
                    &rw.wrapped_key,
                    &old.wrapped_key,
                    &old.ciphertext,
                ],
            )
            .await
            .map_err(pg_err)?;
        Ok(n == 1)
    }

    pub(crate) async fn secrets_per_master_kid(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT master_kid, COUNT(*)::BIGINT FROM vault_secrets GROUP BY master_kid ORDER BY master_kid",
                &[],
            )
            .await
            .map_err(pg_err)?;
        rows.iter()
            .map(|r| {
                let n: i64 = r.try_get(1).map_err(pg_err)?;
                Ok((r.try_get(0).map_err(pg_err)?, u64::try_from(n).unwrap_or(0)))
            })
            .collect()
    }
}

fn secret_row(r: &tokio_postgres::Row) -> Result<StoredSecret, StoreError> {
    crate::secret_record(
        r.try_get(0).map_err(pg_err)?,
        r.try_get(1).map_err(pg_err)?,
        r.try_get(2).map_err(pg_err)?,
        r.try_get(3).map_err(pg_err)?,
        r.try_get(4).map_err(pg_err)?,
        r.try_get(5).map_err(pg_err)?,
        r.try_get(6).map_err(pg_err)?,
        r.try_get(7).map_err(pg_err)?,
    )
}

fn api_key_row(r: &tokio_postgres::Row) -> Result<ApiKeyRecord, StoreError> {
    let roles: String = r.try_get(4).map_err(pg_err)?;
    crate::api_key_record(
        r.try_get(0).map_err(pg_err)?,
        r.try_get(1).map_err(pg_err)?,
        r.try_get(2).map_err(pg_err)?,
        r.try_get(3).map_err(pg_err)?,
        &roles,
        r.try_get(5).map_err(pg_err)?,
        r.try_get(6).map_err(pg_err)?,
        r.try_get(7).map_err(pg_err)?,
    )
}

async fn migrate(client: &mut deadpool_postgres::Object) -> Result<(), StoreError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg_err)?;
    let result = apply(client).await;
    // Release even when a migration failed, so another replica can retry.
    let unlock = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    result?;
    unlock.map_err(pg_err)?;
    Ok(())
}

async fn apply(client: &mut deadpool_postgres::Object) -> Result<(), StoreError> {
    client
        .batch_execute("CREATE TABLE IF NOT EXISTS aibox_schema (version INTEGER NOT NULL)")
        .await
        .map_err(pg_err)?;
    let current: i64 = client
        .query_one(
            "SELECT COALESCE(MAX(version), 0)::BIGINT FROM aibox_schema",
            &[],
        )
        .await
        .map_err(pg_err)?
        .try_get(0)
        .map_err(pg_err)?;
    let known = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
    if current > known {
        return Err(StoreError::TooNewPostgres {
            found: current,
            known,
        });
    }
    for (i, sql) in MIGRATIONS
        .iter()
        .enumerate()
        .skip(usize::try_from(current).unwrap_or(0))
    {
        let version = i32::try_from(i + 1).unwrap_or(i32::MAX);
        let tx = client.transaction().await.map_err(pg_err)?;
        tx.batch_execute(sql).await.map_err(pg_err)?;
        tx.execute(
            "INSERT INTO aibox_schema (version) VALUES ($1)",
            &[&version],
        )
        .await
        .map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)?;
        tracing::info!(version, "applied PostgreSQL migration");
    }
    Ok(())
}

async fn writer(pool: Pool, mut rx: mpsc::UnboundedReceiver<Cmd>) {
    let mut batch: Vec<UsageRecord> = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut flushes = Vec::new();
        let mut next = Some(first);
        while let Some(cmd) = next.take().or_else(|| rx.try_recv().ok()) {
            match cmd {
                Cmd::Usage(r) => batch.push(r),
                Cmd::Flush(reply) => flushes.push(reply),
            }
            if batch.len() >= 4096 {
                break;
            }
        }
        if !batch.is_empty() {
            if let Err(e) = insert_usage(&pool, &batch).await {
                tracing::error!(error = %e, rows = batch.len(), "cannot write usage records; they are lost");
            }
            batch.clear();
        }
        for reply in flushes {
            let _ = reply.send(());
        }
    }
}

async fn insert_usage(pool: &Pool, rows: &[UsageRecord]) -> Result<(), StoreError> {
    let mut c = pool
        .get()
        .await
        .map_err(|e| StoreError::Postgres(e.to_string()))?;
    let tx = c.transaction().await.map_err(pg_err)?;
    let stmt = tx
        .prepare_cached(
            "INSERT INTO usage (at_ms, tenant, user_id, model, upstream, request_id, prompt_tokens, completion_tokens, total_tokens)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .await
        .map_err(pg_err)?;
    for r in rows {
        tx.execute(
            &stmt,
            &[
                &r.at_ms,
                &r.tenant.as_str(),
                &r.user.as_str(),
                &r.model,
                &r.upstream,
                &r.request_id,
                &crate::count_i64(r.usage.prompt_tokens),
                &crate::count_i64(r.usage.completion_tokens),
                &crate::count_i64(r.usage.total_tokens),
            ],
        )
        .await
        .map_err(pg_err)?;
    }
    tx.commit().await.map_err(pg_err)
}
