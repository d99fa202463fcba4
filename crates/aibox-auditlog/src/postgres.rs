//! The PostgreSQL backend, for several replicas sharing one database.
//!
//! Each process runs one writer task that seals every queued turn of a
//! drain of its channel in one transaction (group commit) and returns only
//! after `COMMIT` (with the default `synchronous_commit = on`, after the
//! WAL is flushed). Several processes appending to one tenant produce one
//! chain: inside the transaction the writer locks the tenant's
//! `audit_heads` row (`SELECT ... FOR UPDATE`, tenants in sorted order so
//! that two writers cannot deadlock), and when the locked head shows that
//! another process advanced the tenant it extends its in-memory tree from
//! the stored envelope leaf hashes before chaining on top. Primary keys on
//! (tenant, seq), (tenant, leaf index) and (tenant, size) make a duplicate
//! or a fork impossible even if that serialisation were bypassed.
//!
//! Guards: BEFORE UPDATE and BEFORE DELETE row triggers and a BEFORE
//! TRUNCATE statement trigger on every audit table raise an exception, and
//! are set `ENABLE ALWAYS`, so `SET session_replication_role = replica`
//! does not switch them off. Start-up queries `pg_trigger` and `pg_rules`
//! and refuses to run unless every guard is present, ALWAYS enabled, of the
//! right kind and calling the unchanged guard function, and no other
//! trigger or rule sits on an audit table (a `BEFORE INSERT` trigger
//! returning NULL, or a `DO INSTEAD NOTHING` rule, would drop records).
//!
//! The table owner (and any superuser) can still drop or disable triggers.
//! Deploy with the tables owned by a migration role and let aibox connect
//! as a role that only has `SELECT, INSERT` on the audit tables (and
//! `UPDATE` on `audit_heads`); verification never relies on the guards.

use std::collections::HashSet;
use std::str::FromStr as _;
use std::sync::Arc;

use aibox_audit::merkle::Hash;
use aibox_core::{TenantId, TurnId};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::sync::mpsc;
use tokio_postgres::{GenericClient, IsolationLevel, NoTls};

use crate::error::AuditLogError;
use crate::format::{self, Bundle, ConsistencyProof, PublicKeyRecord, Receipt, SignatureCheck};
use crate::state::{
    self, CpRow, EnvRow, Head, Plan, ReadOps, Request, Signing, TreeCache, WriteTx, Writer,
};
use crate::verify::{self, ChainVerifier, CpBuf, EnvBuf, EnvColumns, RowBuf, Source};
use crate::{Verified, now_ms};

/// A lock id private to the audit migrations (an arbitrary constant).
const MIGRATION_LOCK: i64 = 0x6169_626f_785f_616c;
/// A lock id private to key version registration.
const KEYS_LOCK: i64 = 0x6169_626f_785f_616b;

const SCHEMA_VERSION: i64 = 1;

/// Rows fetched per round trip while verifying or exporting.
const CHUNK: i32 = 8192;

const TABLES: &str = "
CREATE TABLE audit_keys (
    version BIGINT PRIMARY KEY,
    fingerprint TEXT NOT NULL UNIQUE,
    created_ms BIGINT NOT NULL
);
CREATE TABLE audit_tenant_keys (
    tenant TEXT NOT NULL,
    version BIGINT NOT NULL,
    checkpoint_key TEXT NOT NULL,
    envelope_key TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    PRIMARY KEY (tenant, version)
);
CREATE TABLE audit_heads (
    tenant TEXT PRIMARY KEY,
    last_seq BIGINT NOT NULL,
    last_row_hash BYTEA NOT NULL,
    tree_size BIGINT NOT NULL,
    last_envelope_hash BYTEA NOT NULL,
    updated_ms BIGINT NOT NULL
);
CREATE TABLE audit_rows (
    tenant TEXT NOT NULL,
    seq BIGINT NOT NULL,
    turn TEXT,
    event TEXT NOT NULL,
    prev_row_hash BYTEA NOT NULL,
    row_hash BYTEA NOT NULL,
    PRIMARY KEY (tenant, seq)
);
CREATE TABLE audit_envelopes (
    tenant TEXT NOT NULL,
    leaf_index BIGINT NOT NULL,
    turn TEXT UNIQUE,
    first_seq BIGINT NOT NULL,
    last_seq BIGINT NOT NULL,
    key_version BIGINT NOT NULL,
    leaf_hash BYTEA NOT NULL,
    note TEXT NOT NULL,
    PRIMARY KEY (tenant, leaf_index)
);
CREATE TABLE audit_checkpoints (
    tenant TEXT NOT NULL,
    size BIGINT NOT NULL,
    key_version BIGINT NOT NULL,
    root BYTEA NOT NULL,
    note TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    PRIMARY KEY (tenant, size)
);
";

/// The body of the function every refusing guard calls; start-up compares
/// `pg_proc.prosrc` with it, so a function replaced by a no-op is caught.
const REFUSE_BODY: &str = "
BEGIN
    RAISE EXCEPTION 'aibox audit log is append-only: % of % refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END
";

/// The body of the head guard: a head may only move forward.
const FORWARD_BODY: &str = "
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.tenant = OLD.tenant AND NEW.last_seq > OLD.last_seq
       AND NEW.tree_size > OLD.tree_size THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'aibox audit log heads only move forward: % of % refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END
";

const REFUSE_FN: &str = "aibox_audit_refuse";
const FORWARD_FN: &str = "aibox_audit_heads_forward";

/// `pg_trigger.tgtype` bits: ROW 1, BEFORE 2, DELETE 8, UPDATE 16, TRUNCATE 32.
const ROW_BEFORE_UPDATE: i32 = 1 | 2 | 16;
const ROW_BEFORE_DELETE: i32 = 1 | 2 | 8;
const STATEMENT_BEFORE_TRUNCATE: i32 = 2 | 32;

const FROZEN_TABLES: &[&str] = &[
    "audit_keys",
    "audit_tenant_keys",
    "audit_rows",
    "audit_envelopes",
    "audit_checkpoints",
];

/// One guard trigger.
struct Guard {
    table: &'static str,
    name: String,
    function: &'static str,
    tgtype: i32,
    create: String,
}

fn guards() -> Vec<Guard> {
    let mut out = Vec::new();
    let mut add = |table: &'static str,
                   suffix: &str,
                   function: &'static str,
                   tgtype: i32,
                   when: &str,
                   level: &str| {
        let name = format!("{table}_{suffix}");
        out.push(Guard {
            table,
            create: format!(
                "CREATE TRIGGER {name} BEFORE {when} ON {table} FOR EACH {level} EXECUTE FUNCTION {function}()"
            ),
            name,
            function,
            tgtype,
        });
    };
    for t in FROZEN_TABLES {
        add(
            t,
            "no_update",
            REFUSE_FN,
            ROW_BEFORE_UPDATE,
            "UPDATE",
            "ROW",
        );
        add(
            t,
            "no_delete",
            REFUSE_FN,
            ROW_BEFORE_DELETE,
            "DELETE",
            "ROW",
        );
        add(
            t,
            "no_truncate",
            REFUSE_FN,
            STATEMENT_BEFORE_TRUNCATE,
            "TRUNCATE",
            "STATEMENT",
        );
    }
    add(
        "audit_heads",
        "forward",
        FORWARD_FN,
        ROW_BEFORE_UPDATE,
        "UPDATE",
        "ROW",
    );
    add(
        "audit_heads",
        "no_delete",
        REFUSE_FN,
        ROW_BEFORE_DELETE,
        "DELETE",
        "ROW",
    );
    add(
        "audit_heads",
        "no_truncate",
        REFUSE_FN,
        STATEMENT_BEFORE_TRUNCATE,
        "TRUNCATE",
        "STATEMENT",
    );
    out
}

/// The SQL that (re)creates the guard functions and triggers.
fn guard_sql() -> String {
    let mut sql = format!(
        "CREATE OR REPLACE FUNCTION {REFUSE_FN}() RETURNS trigger LANGUAGE plpgsql AS $aibox${REFUSE_BODY}$aibox$;\n\
         CREATE OR REPLACE FUNCTION {FORWARD_FN}() RETURNS trigger LANGUAGE plpgsql AS $aibox${FORWARD_BODY}$aibox$;\n"
    );
    for g in guards() {
        sql.push_str(&g.create);
        sql.push_str(";\n");
        // ALWAYS: the trigger fires even with session_replication_role =
        // replica, which otherwise skips ordinary triggers.
        sql.push_str(&format!(
            "ALTER TABLE {} ENABLE ALWAYS TRIGGER {};\n",
            g.table, g.name
        ));
    }
    sql
}

fn pg(e: tokio_postgres::Error) -> AuditLogError {
    // The Display of a server error is only "db error"; the detail names
    // the cause (for example the guard's refusal).
    match e.as_db_error() {
        Some(d) => AuditLogError::Db(format!("{}: {}", d.code().code(), d.message())),
        None => AuditLogError::db(e),
    }
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

fn version_of(n: i64) -> Option<u32> {
    u32::try_from(n).ok()
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

fn pool(url: &str, max_connections: usize) -> Result<(Pool, String), AuditLogError> {
    let cfg = tokio_postgres::Config::from_str(url).map_err(|_| AuditLogError::Connect {
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
    // `database.audit_max_connections`; zero would leave the writer
    // waiting for a connection that never comes, so it counts as one.
    let pool = Pool::builder(mgr)
        .max_size(max_connections.max(1))
        .build()
        .map_err(|e| AuditLogError::Connect {
            target: where_.clone(),
            cause: e.to_string(),
        })?;
    Ok((pool, where_))
}

async fn client(pool: &Pool) -> Result<deadpool_postgres::Object, AuditLogError> {
    pool.get()
        .await
        .map_err(|e| AuditLogError::Db(e.to_string()))
}

async fn migrate(c: &mut tokio_postgres::Client) -> Result<(), AuditLogError> {
    c.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg)?;
    let result = apply(c).await;
    // Release even when a migration failed, so another replica can retry.
    let unlock = c
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    result?;
    unlock.map_err(pg)?;
    Ok(())
}

async fn apply(c: &mut tokio_postgres::Client) -> Result<(), AuditLogError> {
    c.batch_execute("CREATE TABLE IF NOT EXISTS aibox_audit_schema (version INTEGER NOT NULL)")
        .await
        .map_err(pg)?;
    let current: i64 = c
        .query_one(
            "SELECT COALESCE(MAX(version), 0)::BIGINT FROM aibox_audit_schema",
            &[],
        )
        .await
        .map_err(pg)?
        .try_get(0)
        .map_err(pg)?;
    if current > SCHEMA_VERSION {
        return Err(AuditLogError::TooNew {
            found: current,
            known: SCHEMA_VERSION,
        });
    }
    if current < 1 {
        let tx = c.transaction().await.map_err(pg)?;
        tx.batch_execute(TABLES).await.map_err(pg)?;
        tx.batch_execute(&guard_sql()).await.map_err(pg)?;
        tx.execute("INSERT INTO aibox_audit_schema (version) VALUES (1)", &[])
            .await
            .map_err(pg)?;
        tx.commit().await.map_err(pg)?;
        tracing::info!(version = 1, "applied PostgreSQL audit migration");
    }
    Ok(())
}

/// The start-up self-check of the guards.
pub(crate) async fn check_guards(c: &impl GenericClient) -> Result<(), AuditLogError> {
    let rows = c
        .query(
            "SELECT c.relname::text, t.tgname::text, t.tgenabled::text, t.tgtype::int4, p.proname::text
             FROM pg_trigger t
             JOIN pg_class c ON c.oid = t.tgrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace
             JOIN pg_proc p ON p.oid = t.tgfoid
             WHERE NOT t.tgisinternal AND n.nspname = current_schema()
               AND c.relname LIKE 'audit\\_%'",
            &[],
        )
        .await
        .map_err(pg)?;
    let mut found = Vec::new();
    for r in &rows {
        found.push((
            r.try_get::<_, String>(0).map_err(pg)?,
            r.try_get::<_, String>(1).map_err(pg)?,
            r.try_get::<_, String>(2).map_err(pg)?,
            r.try_get::<_, i32>(3).map_err(pg)?,
            r.try_get::<_, String>(4).map_err(pg)?,
        ));
    }
    let expected = guards();
    let mut problems = Vec::new();
    for g in &expected {
        match found.iter().find(|f| f.0 == g.table && f.1 == g.name) {
            None => problems.push(format!("trigger {} on {} is missing", g.name, g.table)),
            Some(f) => {
                if f.2 != "A" {
                    problems.push(format!(
                        "trigger {} is not ENABLE ALWAYS (tgenabled = {:?})",
                        g.name, f.2
                    ));
                }
                if f.3 != g.tgtype || f.4 != g.function {
                    problems.push(format!("trigger {} was altered", g.name));
                }
            }
        }
    }
    for f in &found {
        if !expected.iter().any(|g| g.table == f.0 && g.name == f.1) {
            problems.push(format!("unexpected trigger {} on {}", f.1, f.0));
        }
    }
    let bodies = c
        .query(
            "SELECT p.proname::text, p.prosrc FROM pg_proc p
             JOIN pg_namespace n ON n.oid = p.pronamespace
             WHERE n.nspname = current_schema() AND p.proname = ANY($1)",
            &[&vec![REFUSE_FN, FORWARD_FN]],
        )
        .await
        .map_err(pg)?;
    for (name, body) in [(REFUSE_FN, REFUSE_BODY), (FORWARD_FN, FORWARD_BODY)] {
        let got = bodies.iter().find_map(|r| {
            (r.try_get::<_, &str>(0).ok() == Some(name))
                .then(|| r.try_get::<_, String>(1).ok())
                .flatten()
        });
        match got {
            None => problems.push(format!("function {name} is missing")),
            Some(b) if b != body => problems.push(format!("function {name} was altered")),
            Some(_) => {}
        }
    }
    let rules = c
        .query(
            "SELECT tablename::text, rulename::text FROM pg_rules
             WHERE schemaname = current_schema() AND tablename LIKE 'audit\\_%'",
            &[],
        )
        .await
        .map_err(pg)?;
    for r in &rules {
        problems.push(format!(
            "unexpected rule {} on {}",
            r.try_get::<_, String>(1).map_err(pg)?,
            r.try_get::<_, String>(0).map_err(pg)?
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(AuditLogError::Guards {
            detail: problems.join(", "),
        })
    }
}

/// Re-creates the guards (dropping altered or unexpected triggers and
/// rules on the audit tables). Needs the table owner's rights.
pub(crate) async fn restore_guards(url: &str) -> Result<(), AuditLogError> {
    // One connection does the whole repair.
    let (pool, where_) = pool(url, 1)?;
    let mut c = pool.get().await.map_err(|e| AuditLogError::Connect {
        target: where_,
        cause: e.to_string(),
    })?;
    migrate(&mut c).await?;
    let tx = c.transaction().await.map_err(pg)?;
    let existing = tx
        .query(
            "SELECT c.relname::text, t.tgname::text FROM pg_trigger t
             JOIN pg_class c ON c.oid = t.tgrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE NOT t.tgisinternal AND n.nspname = current_schema() AND c.relname LIKE 'audit\\_%'",
            &[],
        )
        .await
        .map_err(pg)?;
    for r in &existing {
        let table: String = r.try_get(0).map_err(pg)?;
        let name: String = r.try_get(1).map_err(pg)?;
        tx.batch_execute(&format!(
            "DROP TRIGGER IF EXISTS {} ON {}",
            quote_ident(&name),
            quote_ident(&table)
        ))
        .await
        .map_err(pg)?;
    }
    let rules = tx
        .query(
            "SELECT tablename::text, rulename::text FROM pg_rules
             WHERE schemaname = current_schema() AND tablename LIKE 'audit\\_%'",
            &[],
        )
        .await
        .map_err(pg)?;
    for r in &rules {
        let table: String = r.try_get(0).map_err(pg)?;
        let name: String = r.try_get(1).map_err(pg)?;
        tx.batch_execute(&format!(
            "DROP RULE IF EXISTS {} ON {}",
            quote_ident(&name),
            quote_ident(&table)
        ))
        .await
        .map_err(pg)?;
    }
    tx.batch_execute(&guard_sql()).await.map_err(pg)?;
    tx.commit().await.map_err(pg)?;
    check_guards(&**c).await
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

async fn register_key(
    c: &mut tokio_postgres::Client,
    fingerprint: &str,
) -> Result<(u32, bool), AuditLogError> {
    let tx = c.transaction().await.map_err(pg)?;
    // An advisory lock rather than LOCK TABLE: the latter would need
    // UPDATE or DELETE rights, which the writing role should not have.
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&KEYS_LOCK])
        .await
        .map_err(pg)?;
    let known = tx
        .query_opt(
            "SELECT version FROM audit_keys WHERE fingerprint = $1",
            &[&fingerprint],
        )
        .await
        .map_err(pg)?;
    let (version, new) = match known {
        Some(r) => (r.try_get::<_, i64>(0).map_err(pg)?, false),
        None => {
            let next: i64 = tx
                .query_one(
                    "SELECT (COALESCE(MAX(version), 0) + 1)::BIGINT FROM audit_keys",
                    &[],
                )
                .await
                .map_err(pg)?
                .try_get(0)
                .map_err(pg)?;
            tx.execute(
                "INSERT INTO audit_keys (version, fingerprint, created_ms) VALUES ($1, $2, $3)",
                &[&next, &fingerprint, &to_i64(now_ms())],
            )
            .await
            .map_err(pg)?;
            (next, true)
        }
    };
    tx.commit().await.map_err(pg)?;
    let version =
        u32::try_from(version).map_err(|_| AuditLogError::Db("key version out of range".into()))?;
    Ok((version, new))
}

/// The PostgreSQL audit log.
#[derive(Clone)]
pub(crate) struct PgLog {
    pool: Pool,
    tx: mpsc::UnboundedSender<Request>,
    trees: Arc<TreeCache>,
    signing: Signing,
}

impl PgLog {
    pub(crate) async fn connect(
        url: &str,
        secret: &str,
        options: &crate::AuditLogOptions,
    ) -> Result<(Self, u32, bool), AuditLogError> {
        let prefix = options.origin_prefix.as_str();
        let max_connections = options.pg_max_connections;
        let fingerprint = format::key_fingerprint(secret)?;
        aibox_audit::checkpoint::origin_for_tenant(prefix, &TenantId::default_tenant())
            .map_err(AuditLogError::Origin)?;
        let (pool, where_) = pool(url, max_connections)?;
        let mut c = pool.get().await.map_err(|e| AuditLogError::Connect {
            target: where_,
            cause: e.to_string(),
        })?;
        migrate(&mut c).await?;
        check_guards(&**c).await?;
        let (version, new) = register_key(&mut c, &fingerprint).await?;
        drop(c);
        let signing = Signing {
            material: aibox_audit::AuditKeyMaterial::new(secret, version)?,
            prefix: prefix.to_owned(),
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let writer = Writer::new(signing.clone(), options.checkpoint_interval);
        tokio::spawn(writer_task(pool.clone(), writer, rx));
        Ok((
            Self {
                pool,
                tx,
                trees: Arc::new(TreeCache::default()),
                signing,
            },
            version,
            new,
        ))
    }

    pub(crate) fn submit(&self, req: Request) -> Result<(), AuditLogError> {
        self.tx.send(req).map_err(|_| AuditLogError::Closed)
    }

    pub(crate) fn signing(&self) -> &Signing {
        &self.signing
    }

    pub(crate) async fn check_guards(&self) -> Result<(), AuditLogError> {
        let c = client(&self.pool).await?;
        check_guards(&**c).await
    }

    pub(crate) async fn receipt(
        &self,
        tenant: &TenantId,
        turn: &TurnId,
    ) -> Result<Receipt, AuditLogError> {
        let c = client(&self.pool).await?;
        state::receipt_for_turn(&mut PgRead { c: &**c }, &self.trees, tenant, turn).await
    }

    pub(crate) async fn receipt_at(
        &self,
        tenant: &TenantId,
        index: u64,
    ) -> Result<Receipt, AuditLogError> {
        let c = client(&self.pool).await?;
        state::receipt_at(&mut PgRead { c: &**c }, &self.trees, tenant, index).await
    }

    pub(crate) async fn consistency_proof(
        &self,
        tenant: &TenantId,
        old_size: u64,
        new_size: u64,
    ) -> Result<ConsistencyProof, AuditLogError> {
        let c = client(&self.pool).await?;
        state::consistency(
            &mut PgRead { c: &**c },
            &self.trees,
            tenant,
            old_size,
            new_size,
        )
        .await
    }

    pub(crate) async fn public_keys(
        &self,
        tenant: &TenantId,
    ) -> Result<Vec<PublicKeyRecord>, AuditLogError> {
        let c = client(&self.pool).await?;
        state::public_keys(&mut PgRead { c: &**c }, &self.signing, tenant).await
    }

    pub(crate) async fn recorded_keys(
        &self,
        tenant: &TenantId,
    ) -> Result<Vec<PublicKeyRecord>, AuditLogError> {
        let c = client(&self.pool).await?;
        PgRead { c: &**c }.tenant_keys(tenant.as_str()).await
    }

    pub(crate) async fn tenant_of_turn(
        &self,
        turn: &TurnId,
    ) -> Result<Option<String>, AuditLogError> {
        let c = client(&self.pool).await?;
        Ok(PgRead { c: &**c }
            .envelope_by_turn(turn.as_str())
            .await?
            .map(|e| e.tenant))
    }

    pub(crate) async fn latest_checkpoint(
        &self,
        tenant: &TenantId,
    ) -> Result<Option<String>, AuditLogError> {
        let c = client(&self.pool).await?;
        Ok(PgRead { c: &**c }
            .latest_checkpoint(tenant.as_str())
            .await?
            .map(|c| c.note))
    }

    pub(crate) async fn tenants(&self) -> Result<Vec<String>, AuditLogError> {
        let c = client(&self.pool).await?;
        let rows = c
            .query("SELECT tenant FROM audit_heads ORDER BY tenant", &[])
            .await
            .map_err(pg)?;
        rows.iter()
            .map(|r| r.try_get::<_, String>(0).map_err(pg))
            .collect()
    }

    /// A page of one tenant's log, newest first (see `AuditLog::page`).
    pub(crate) async fn page(
        &self,
        tenant: &TenantId,
        before: Option<u64>,
        limit: usize,
        kind: Option<String>,
    ) -> Result<format::LogPage, AuditLogError> {
        let mut c = client(&self.pool).await?;
        let tx = Self::snapshot(&mut c).await?;
        let t = tenant.as_str();
        let before = before.map_or(i64::MAX, |b| i64::try_from(b).unwrap_or(i64::MAX));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = tx
            .query(
                "SELECT seq, turn, event FROM audit_rows
                 WHERE tenant = $1 AND seq < $2
                   AND ($3::text IS NULL OR (event::jsonb)->>'type' = $3)
                 ORDER BY seq DESC LIMIT $4",
                &[&t, &before, &kind, &limit],
            )
            .await
            .map_err(pg)?;
        let rows = rows
            .iter()
            .map(|r| {
                Ok(format::PageRow {
                    seq: u64::try_from(r.try_get::<_, i64>(0).map_err(pg)?).unwrap_or(0),
                    turn: r.try_get(1).map_err(pg)?,
                    event: r.try_get(2).map_err(pg)?,
                })
            })
            .collect::<Result<Vec<_>, AuditLogError>>()?;
        let last_seq = read_head(&*tx, t).await?.map_or(0, |h| h.last_seq);
        Ok(format::LogPage { rows, last_seq })
    }

    /// Opens a snapshot (REPEATABLE READ, read-only) transaction, so that
    /// rows, envelopes, checkpoints and the head are read as of one moment
    /// while writers keep appending.
    async fn snapshot<'c>(
        c: &'c mut deadpool_postgres::Object,
    ) -> Result<deadpool_postgres::Transaction<'c>, AuditLogError> {
        c.build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(pg)
    }

    pub(crate) async fn verify(
        &self,
        tenant: &TenantId,
        mode: SignatureCheck,
        progress: &mut (dyn FnMut(u64, u64) + Send),
    ) -> Result<Verified, AuditLogError> {
        let mut c = client(&self.pool).await?;
        let tx = Self::snapshot(&mut c).await?;
        let t = tenant.as_str();
        let recorded = PgRead { c: &*tx }.tenant_keys(t).await?;
        let origin = self.signing.origin(t)?;
        let keys = match state::recorded_key_set(&self.signing, t, &recorded) {
            Ok(k) => k,
            Err(problem) => return Ok(Verified::failed(problem)),
        };
        let head = read_head(&*tx, t).await?;
        let total = head.as_ref().map_or(0, |h| h.last_seq);
        let mut src = PgSource::open(&tx, t).await?;
        let mut v = ChainVerifier::new(t, &origin, &keys)
            .signatures(mode)
            .parallel_signatures();
        let result = verify::drive(&mut v, &mut src, total, progress).await?;
        let result = result.and_then(|()| v.check_head(head.as_ref()));
        let result = v.settle(result);
        let report = v.report(result);
        let next_seq = v.next_seq();
        Ok(Verified {
            report,
            tree: v.into_tree(),
            next_seq,
            recorded,
        })
    }

    pub(crate) async fn export(&self, tenant: &TenantId) -> Result<Bundle, AuditLogError> {
        let mut c = client(&self.pool).await?;
        let tx = Self::snapshot(&mut c).await?;
        let keys = state::public_keys(&mut PgRead { c: &*tx }, &self.signing, tenant).await?;
        let mut src = PgSource::open(&tx, tenant.as_str()).await?;
        let collected = crate::collect_bundle(&mut src).await?;
        crate::bundle(&self.signing, tenant, keys, collected)
    }
}

async fn read_head(c: &impl GenericClient, tenant: &str) -> Result<Option<Head>, AuditLogError> {
    let row = c
        .query_opt(
            "SELECT last_seq, last_row_hash, tree_size, last_envelope_hash FROM audit_heads WHERE tenant = $1",
            &[&tenant],
        )
        .await
        .map_err(pg)?;
    row.map(|r| head_from(tenant, &r)).transpose()
}

fn head_from(tenant: &str, r: &tokio_postgres::Row) -> Result<Head, AuditLogError> {
    let corrupt = || AuditLogError::Corrupt {
        tenant: tenant.to_owned(),
        detail: "the head row holds a malformed value".into(),
    };
    let s: i64 = r.try_get(0).map_err(pg)?;
    let rh: &[u8] = r.try_get(1).map_err(pg)?;
    let t: i64 = r.try_get(2).map_err(pg)?;
    let eh: &[u8] = r.try_get(3).map_err(pg)?;
    Ok(Head {
        last_seq: u64::try_from(s).map_err(|_| corrupt())?,
        last_row_hash: format::hash_from_slice(rh).ok_or_else(corrupt)?,
        tree_size: u64::try_from(t).map_err(|_| corrupt())?,
        last_envelope_hash: format::hash_from_slice(eh).ok_or_else(corrupt)?,
    })
}

/// Three portals over one snapshot, fetched in chunks.
struct PgSource<'a> {
    tx: &'a deadpool_postgres::Transaction<'a>,
    portals: [tokio_postgres::Portal; 3],
    bufs: [Vec<tokio_postgres::Row>; 3],
    pos: [usize; 3],
    done: [bool; 3],
}

const ENVS: usize = 0;
const ROWS: usize = 1;
const CPS: usize = 2;

impl<'a> PgSource<'a> {
    async fn open(
        tx: &'a deadpool_postgres::Transaction<'a>,
        tenant: &str,
    ) -> Result<Self, AuditLogError> {
        let envs = tx
            .prepare(
                "SELECT leaf_index, key_version, note, turn, first_seq, last_seq, leaf_hash
                 FROM audit_envelopes WHERE tenant = $1 ORDER BY leaf_index",
            )
            .await
            .map_err(pg)?;
        let rows = tx
            .prepare(
                "SELECT seq, turn, event, prev_row_hash, row_hash
                 FROM audit_rows WHERE tenant = $1 ORDER BY seq",
            )
            .await
            .map_err(pg)?;
        let cps = tx
            .prepare(
                "SELECT size, key_version, note FROM audit_checkpoints WHERE tenant = $1 ORDER BY size",
            )
            .await
            .map_err(pg)?;
        let portals = [
            tx.bind(&envs, &[&tenant]).await.map_err(pg)?,
            tx.bind(&rows, &[&tenant]).await.map_err(pg)?,
            tx.bind(&cps, &[&tenant]).await.map_err(pg)?,
        ];
        Ok(Self {
            tx,
            portals,
            bufs: [Vec::new(), Vec::new(), Vec::new()],
            pos: [0; 3],
            done: [false; 3],
        })
    }

    /// The next row of portal `k`, fetching a chunk when the buffer is used
    /// up.
    async fn next(&mut self, k: usize) -> Result<Option<&tokio_postgres::Row>, AuditLogError> {
        if self.pos[k] >= self.bufs[k].len() {
            if self.done[k] {
                return Ok(None);
            }
            self.bufs[k] = self
                .tx
                .query_portal(&self.portals[k], CHUNK)
                .await
                .map_err(pg)?;
            self.pos[k] = 0;
            if self.bufs[k].len() < CHUNK as usize {
                self.done[k] = true;
            }
        }
        let i = self.pos[k];
        self.pos[k] += 1;
        Ok(self.bufs[k].get(i))
    }
}

impl Source for PgSource<'_> {
    type Error = AuditLogError;

    async fn next_envelope(&mut self, buf: &mut EnvBuf) -> Result<bool, AuditLogError> {
        let Some(r) = self.next(ENVS).await? else {
            return Ok(false);
        };
        buf.leaf_index = to_u64(r.try_get(0).map_err(pg)?);
        buf.key_version = version_of(r.try_get(1).map_err(pg)?);
        buf.note.clear();
        buf.note
            .extend_from_slice(r.try_get::<_, &str>(2).map_err(pg)?.as_bytes());
        buf.prepared = None;
        let cols = buf.columns.get_or_insert_with(EnvColumns::default);
        cols.turn = r
            .try_get::<_, Option<&str>>(3)
            .map_err(pg)?
            .map(str::to_owned);
        cols.first_seq = to_u64(r.try_get(4).map_err(pg)?);
        cols.last_seq = to_u64(r.try_get(5).map_err(pg)?);
        cols.leaf_hash.clear();
        cols.leaf_hash
            .extend_from_slice(r.try_get::<_, &[u8]>(6).map_err(pg)?);
        Ok(true)
    }

    async fn next_row(&mut self, buf: &mut RowBuf) -> Result<bool, AuditLogError> {
        let Some(r) = self.next(ROWS).await? else {
            return Ok(false);
        };
        buf.set(
            to_u64(r.try_get(0).map_err(pg)?),
            r.try_get::<_, Option<&str>>(1).map_err(pg)?,
            r.try_get::<_, &str>(2).map_err(pg)?.as_bytes(),
            r.try_get::<_, &[u8]>(3).map_err(pg)?,
            r.try_get::<_, &[u8]>(4).map_err(pg)?,
        );
        Ok(true)
    }

    async fn next_checkpoint(&mut self, buf: &mut CpBuf) -> Result<bool, AuditLogError> {
        let Some(r) = self.next(CPS).await? else {
            return Ok(false);
        };
        buf.size = to_u64(r.try_get(0).map_err(pg)?);
        buf.key_version = version_of(r.try_get(1).map_err(pg)?);
        buf.note.clear();
        buf.note
            .extend_from_slice(r.try_get::<_, &str>(2).map_err(pg)?.as_bytes());
        Ok(true)
    }
}

/// The read paths' queries on a PostgreSQL client or transaction.
struct PgRead<'c, C: GenericClient> {
    c: &'c C,
}

fn env_row(tenant: String, r: &tokio_postgres::Row) -> Result<EnvRow, AuditLogError> {
    Ok(EnvRow {
        tenant,
        leaf_index: to_u64(r.try_get(0).map_err(pg)?),
        first_seq: to_u64(r.try_get(1).map_err(pg)?),
        last_seq: to_u64(r.try_get(2).map_err(pg)?),
        key_version: version_of(r.try_get(3).map_err(pg)?).unwrap_or(0),
        note: r.try_get(4).map_err(pg)?,
    })
}

impl<C: GenericClient + Sync> ReadOps for PgRead<'_, C> {
    async fn envelope_by_turn(&mut self, turn: &str) -> Result<Option<EnvRow>, AuditLogError> {
        let row = self
            .c
            .query_opt(
                "SELECT leaf_index, first_seq, last_seq, key_version, note, tenant
                 FROM audit_envelopes WHERE turn = $1",
                &[&turn],
            )
            .await
            .map_err(pg)?;
        row.map(|r| env_row(r.try_get(5).map_err(pg)?, &r))
            .transpose()
    }

    async fn envelope_at(
        &mut self,
        tenant: &str,
        index: u64,
    ) -> Result<Option<EnvRow>, AuditLogError> {
        let row = self
            .c
            .query_opt(
                "SELECT leaf_index, first_seq, last_seq, key_version, note
                 FROM audit_envelopes WHERE tenant = $1 AND leaf_index = $2",
                &[&tenant, &to_i64(index)],
            )
            .await
            .map_err(pg)?;
        row.map(|r| env_row(tenant.to_owned(), &r)).transpose()
    }

    async fn events(
        &mut self,
        tenant: &str,
        first: u64,
        last: u64,
    ) -> Result<Vec<String>, AuditLogError> {
        let rows = self
            .c
            .query(
                "SELECT event FROM audit_rows WHERE tenant = $1 AND seq BETWEEN $2 AND $3 ORDER BY seq",
                &[&tenant, &to_i64(first), &to_i64(last)],
            )
            .await
            .map_err(pg)?;
        rows.iter()
            .map(|r| r.try_get::<_, String>(0).map_err(pg))
            .collect()
    }

    async fn latest_checkpoint(&mut self, tenant: &str) -> Result<Option<CpRow>, AuditLogError> {
        let row = self
            .c
            .query_opt(
                "SELECT size, note FROM audit_checkpoints WHERE tenant = $1 ORDER BY size DESC LIMIT 1",
                &[&tenant],
            )
            .await
            .map_err(pg)?;
        row.map(|r| {
            Ok(CpRow {
                size: to_u64(r.try_get(0).map_err(pg)?),
                note: r.try_get(1).map_err(pg)?,
            })
        })
        .transpose()
    }

    async fn checkpoint_at(
        &mut self,
        tenant: &str,
        size: u64,
    ) -> Result<Option<CpRow>, AuditLogError> {
        let row = self
            .c
            .query_opt(
                "SELECT size, note FROM audit_checkpoints WHERE tenant = $1 AND size = $2",
                &[&tenant, &to_i64(size)],
            )
            .await
            .map_err(pg)?;
        row.map(|r| {
            Ok(CpRow {
                size: to_u64(r.try_get(0).map_err(pg)?),
                note: r.try_get(1).map_err(pg)?,
            })
        })
        .transpose()
    }

    async fn leaf_hashes(
        &mut self,
        tenant: &str,
        from: u64,
        to: u64,
    ) -> Result<Vec<Hash>, AuditLogError> {
        leaf_hashes(self.c, tenant, from, to).await
    }

    async fn tenant_keys(&mut self, tenant: &str) -> Result<Vec<PublicKeyRecord>, AuditLogError> {
        let rows = self
            .c
            .query(
                "SELECT version, checkpoint_key, envelope_key FROM audit_tenant_keys
                 WHERE tenant = $1 ORDER BY version",
                &[&tenant],
            )
            .await
            .map_err(pg)?;
        rows.iter()
            .map(|r| {
                Ok(PublicKeyRecord {
                    version: version_of(r.try_get(0).map_err(pg)?).unwrap_or(0),
                    checkpoint_key: r.try_get(1).map_err(pg)?,
                    envelope_key: r.try_get(2).map_err(pg)?,
                })
            })
            .collect()
    }
}

async fn leaf_hashes(
    c: &impl GenericClient,
    tenant: &str,
    from: u64,
    to: u64,
) -> Result<Vec<Hash>, AuditLogError> {
    let rows = c
        .query(
            "SELECT leaf_index, leaf_hash FROM audit_envelopes
             WHERE tenant = $1 AND leaf_index >= $2 AND leaf_index < $3 ORDER BY leaf_index",
            &[&tenant, &to_i64(from), &to_i64(to)],
        )
        .await
        .map_err(pg)?;
    let mut out = Vec::with_capacity(rows.len());
    for (i, r) in rows.iter().enumerate() {
        let index = to_u64(r.try_get(0).map_err(pg)?);
        let h = format::hash_from_slice(r.try_get::<_, &[u8]>(1).map_err(pg)?);
        match h {
            Some(h) if index == from + i as u64 => out.push(h),
            _ => {
                return Err(AuditLogError::Corrupt {
                    tenant: tenant.to_owned(),
                    detail: format!("envelope {} is missing or malformed", from + i as u64),
                });
            }
        }
    }
    Ok(out)
}

/// The writer's side of one PostgreSQL transaction.
struct PgTx<'a> {
    tx: &'a deadpool_postgres::Transaction<'a>,
}

impl WriteTx for PgTx<'_> {
    async fn lock_head(&mut self, tenant: &str) -> Result<Head, AuditLogError> {
        let g = Head::genesis();
        self.tx.execute(&self.tx.prepare_cached("INSERT INTO audit_heads (tenant, last_seq, last_row_hash, tree_size, last_envelope_hash, updated_ms)
                 VALUES ($1, 0, $2, 0, $3, $4) ON CONFLICT (tenant) DO NOTHING").await.map_err(pg)?, &[&tenant, &&g.last_row_hash[..], &&g.last_envelope_hash[..], &to_i64(now_ms())],
            )
            .await
            .map_err(pg)?;
        self.lock_existing_head(tenant)
            .await?
            .ok_or_else(|| AuditLogError::Corrupt {
                tenant: tenant.to_owned(),
                detail: "the head row cannot be created".into(),
            })
    }

    async fn lock_existing_head(&mut self, tenant: &str) -> Result<Option<Head>, AuditLogError> {
        // FOR UPDATE serialises every writer of this tenant, in every
        // process, until this transaction ends.
        let row = self
            .tx
            .query_opt(
                &self
                    .tx
                    .prepare_cached(
                        "SELECT last_seq, last_row_hash, tree_size, last_envelope_hash
                 FROM audit_heads WHERE tenant = $1 FOR UPDATE",
                    )
                    .await
                    .map_err(pg)?,
                &[&tenant],
            )
            .await
            .map_err(pg)?;
        row.map(|r| head_from(tenant, &r)).transpose()
    }

    async fn newest_checkpoint_size(&mut self, tenant: &str) -> Result<u64, AuditLogError> {
        let row = self
            .tx
            .query_one(
                &self
                    .tx
                    .prepare_cached(
                        "SELECT COALESCE(MAX(size), 0) FROM audit_checkpoints WHERE tenant = $1",
                    )
                    .await
                    .map_err(pg)?,
                &[&tenant],
            )
            .await
            .map_err(pg)?;
        Ok(to_u64(row.try_get(0).map_err(pg)?))
    }

    async fn leaf_hashes(
        &mut self,
        tenant: &str,
        from: u64,
        to: u64,
    ) -> Result<Vec<Hash>, AuditLogError> {
        leaf_hashes(&**self.tx, tenant, from, to).await
    }

    async fn sealed_turns(&mut self, turns: &[String]) -> Result<HashSet<String>, AuditLogError> {
        let rows = self
            .tx
            .query(
                &self
                    .tx
                    .prepare_cached("SELECT turn FROM audit_envelopes WHERE turn = ANY($1)")
                    .await
                    .map_err(pg)?,
                &[&turns],
            )
            .await
            .map_err(pg)?;
        rows.iter()
            .map(|r| r.try_get::<_, String>(0).map_err(pg))
            .collect()
    }

    async fn record_keys(
        &mut self,
        tenant: &str,
        rec: &PublicKeyRecord,
        now_ms: i64,
    ) -> Result<PublicKeyRecord, AuditLogError> {
        let version = i64::from(rec.version);
        self.tx.execute(&self.tx.prepare_cached("INSERT INTO audit_tenant_keys (tenant, version, checkpoint_key, envelope_key, created_ms)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant, version) DO NOTHING").await.map_err(pg)?, &[&tenant, &version, &rec.checkpoint_key, &rec.envelope_key, &now_ms],
            )
            .await
            .map_err(pg)?;
        let r = self
            .tx
            .query_one(
                &self
                    .tx
                    .prepare_cached(
                        "SELECT version, checkpoint_key, envelope_key FROM audit_tenant_keys
                 WHERE tenant = $1 AND version = $2",
                    )
                    .await
                    .map_err(pg)?,
                &[&tenant, &version],
            )
            .await
            .map_err(pg)?;
        Ok(PublicKeyRecord {
            version: version_of(r.try_get(0).map_err(pg)?).unwrap_or(0),
            checkpoint_key: r.try_get(1).map_err(pg)?,
            envelope_key: r.try_get(2).map_err(pg)?,
        })
    }

    async fn write(&mut self, plan: &Plan) -> Result<(), AuditLogError> {
        let expect = |n: u64, want: usize, what: &str| {
            if n == want as u64 {
                Ok(())
            } else {
                Err(AuditLogError::Guards {
                    detail: format!(
                        "{} of {want} inserts into {what} were silently skipped",
                        want as u64 - n.min(want as u64)
                    ),
                })
            }
        };
        // One statement per table per batch: arrays unnested server-side
        // instead of a round trip per row.
        let rows = &plan.rows;
        let tenants: Vec<&str> = rows.iter().map(|r| r.tenant.as_str()).collect();
        let seqs: Vec<i64> = rows.iter().map(|r| to_i64(r.seq)).collect();
        let turns: Vec<Option<&str>> = rows.iter().map(|r| r.turn.as_deref()).collect();
        let events: Vec<&str> = rows.iter().map(|r| r.event.as_str()).collect();
        let prevs: Vec<&[u8]> = rows.iter().map(|r| &r.prev[..]).collect();
        let hashes: Vec<&[u8]> = rows.iter().map(|r| &r.hash[..]).collect();
        let n = self.tx.execute(&self.tx.prepare_cached("INSERT INTO audit_rows (tenant, seq, turn, event, prev_row_hash, row_hash)
                 SELECT * FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::text[], $5::bytea[], $6::bytea[])").await.map_err(pg)?, &[&tenants, &seqs, &turns, &events, &prevs, &hashes],
            )
            .await
            .map_err(pg)?;
        expect(n, rows.len(), "audit_rows")?;

        let envs = &plan.envelopes;
        let tenants: Vec<&str> = envs.iter().map(|e| e.tenant.as_str()).collect();
        let indexes: Vec<i64> = envs.iter().map(|e| to_i64(e.leaf_index)).collect();
        let turns: Vec<Option<&str>> = envs.iter().map(|e| e.turn.as_deref()).collect();
        let firsts: Vec<i64> = envs.iter().map(|e| to_i64(e.first_seq)).collect();
        let lasts: Vec<i64> = envs.iter().map(|e| to_i64(e.last_seq)).collect();
        let versions: Vec<i64> = envs.iter().map(|e| i64::from(e.key_version)).collect();
        let leaves: Vec<&[u8]> = envs.iter().map(|e| &e.leaf_hash[..]).collect();
        let notes: Vec<&str> = envs.iter().map(|e| e.note.as_str()).collect();
        let n = self.tx.execute(&self.tx.prepare_cached("INSERT INTO audit_envelopes (tenant, leaf_index, turn, first_seq, last_seq, key_version, leaf_hash, note)
                 SELECT * FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::int8[], $5::int8[], $6::int8[], $7::bytea[], $8::text[])").await.map_err(pg)?, &[&tenants, &indexes, &turns, &firsts, &lasts, &versions, &leaves, &notes],
            )
            .await
            .map_err(pg)?;
        expect(n, envs.len(), "audit_envelopes")?;

        for cp in &plan.checkpoints {
            let n = self.tx.execute(&self.tx.prepare_cached("INSERT INTO audit_checkpoints (tenant, size, key_version, root, note, created_ms)
                     VALUES ($1, $2, $3, $4, $5, $6)").await.map_err(pg)?, &[
                        &cp.tenant,
                        &to_i64(cp.size),
                        &i64::from(cp.key_version),
                        &&cp.root[..],
                        &cp.note,
                        &plan.now_ms,
                    ],
                )
                .await
                .map_err(pg)?;
            expect(n, 1, "audit_checkpoints")?;
        }
        for (t, h) in &plan.heads {
            let n = self.tx.execute(&self.tx.prepare_cached("UPDATE audit_heads SET last_seq = $2, last_row_hash = $3, tree_size = $4,
                     last_envelope_hash = $5, updated_ms = $6 WHERE tenant = $1").await.map_err(pg)?, &[
                        t,
                        &to_i64(h.last_seq),
                        &&h.last_row_hash[..],
                        &to_i64(h.tree_size),
                        &&h.last_envelope_hash[..],
                        &plan.now_ms,
                    ],
                )
                .await
                .map_err(pg)?;
            expect(n, 1, "audit_heads")?;
        }
        Ok(())
    }
}

async fn writer_task(pool: Pool, mut writer: Writer, mut rx: mpsc::UnboundedReceiver<Request>) {
    loop {
        // Wait for a request, or until the oldest uncovered tail is due
        // for its checkpoint.
        let batch = match writer.next_due(now_ms()) {
            None => match rx.recv().await {
                Some(first) => state::gather_batch(first, || rx.try_recv().ok()),
                None => break,
            },
            Some(wait) => match tokio::time::timeout(wait, rx.recv()).await {
                Ok(Some(first)) => state::gather_batch(first, || rx.try_recv().ok()),
                Ok(None) => break,
                Err(_) => state::Batch::covering(writer.due(now_ms(), false)),
            },
        };
        run_batch(&pool, &mut writer, batch).await;
    }
    // Closed: leave no tail uncovered if the database lets us.
    let last = state::Batch::covering(writer.due(now_ms(), true));
    if !last.is_empty() {
        run_batch(&pool, &mut writer, last).await;
    }
}

/// Commits one batch (one transaction) and answers its requesters.
async fn run_batch(pool: &Pool, writer: &mut Writer, mut batch: state::Batch) {
    if batch.is_empty() {
        return;
    }
    let tenants = batch.tenants();
    let turns = std::mem::take(&mut batch.turns);
    let outcome = commit_batch(pool, writer, turns, &batch.covers).await;
    writer.settle(batch, &tenants, outcome);
}

async fn commit_batch(
    pool: &Pool,
    writer: &mut Writer,
    batch: Vec<state::Prepared>,
    covers: &[TenantId],
) -> Result<state::Staged, AuditLogError> {
    let mut c = client(pool).await?;
    let tx = c.transaction().await.map_err(pg)?;
    // Durable at COMMIT whatever the server's default: an acknowledged
    // audit record must survive a crash of the database server.
    tx.batch_execute("SET LOCAL synchronous_commit = on")
        .await
        .map_err(pg)?;
    let staged = writer
        .stage(&mut PgTx { tx: &tx }, batch, covers, now_ms())
        .await?;
    tx.commit().await.map_err(pg)?;
    Ok(staged)
}
