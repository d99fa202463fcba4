//! Persistence of aibox.
//!
//! One facade, [`Store`], over two backends: SQLite for the embedded default
//! ([`sqlite`]) and PostgreSQL for replicas at scale ([`postgres`]). Both
//! keep the request path free of disk waits: usage records are queued and
//! committed in batches (group commit); lookups run on their own connections.
//! Queries are parameterised everywhere; identifiers read back from the
//! database are validated again, so a tampered row cannot become a different
//! identity silently.

mod postgres;
mod sqlite;
pub mod vault;

use std::path::{Path, PathBuf};

use aibox_core::audit::Usage;
use aibox_core::{TenantId, UserId};

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
    /// PostgreSQL could not be reached.
    #[error(
        "cannot connect to PostgreSQL at {target}: {cause}; fix: check database.url (AIBOX_DATABASE_URL) and that the server is up"
    )]
    Connect {
        /// Host, port and database, never the password.
        target: String,
        /// Why.
        cause: String,
    },
    /// A PostgreSQL query failed.
    #[error("PostgreSQL error: {0}")]
    Postgres(String),
    /// The PostgreSQL schema was written by a newer aibox.
    #[error(
        "the PostgreSQL schema has version {found}, newer than this binary's {known}; fix: run the newer aibox"
    )]
    TooNewPostgres {
        /// Its version.
        found: i64,
        /// Ours.
        known: i64,
    },
    /// The writer thread is gone (it only stops at shutdown).
    #[error("the database writer has stopped")]
    Closed,
    /// A stored value no longer passes validation.
    #[error("the database holds an invalid value: {0}; fix: restore from a backup")]
    Corrupt(String),
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

/// A gateway API key as stored: only the hash of its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    /// The public id.
    pub id: String,
    /// The hex hash of the secret.
    pub hash: String,
    /// The tenant it acts in.
    pub tenant: TenantId,
    /// The user it acts as.
    pub user: UserId,
    /// Roles it grants.
    pub roles: Vec<String>,
    /// Unix milliseconds.
    pub created_ms: i64,
    /// Unix milliseconds after which it is refused.
    pub expires_ms: Option<i64>,
    /// Unix milliseconds when it was revoked.
    pub revoked_ms: Option<i64>,
}

/// A vault secret as stored: ciphertext only (see the `aibox-vault` crate).
#[derive(Clone, PartialEq, Eq)]
pub struct StoredSecret {
    /// The owner's tenant.
    pub tenant: TenantId,
    /// The owner.
    pub user: UserId,
    /// The secret's name.
    pub name: String,
    /// The `SECRETS_MASTER_KEY` version that wraps the data key.
    pub master_kid: String,
    /// The wrapped data key.
    pub wrapped_key: Vec<u8>,
    /// The sealed value.
    pub ciphertext: Vec<u8>,
    /// Unix milliseconds of the first write.
    pub created_ms: i64,
    /// Unix milliseconds of the last write.
    pub updated_ms: i64,
}

impl std::fmt::Debug for StoredSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredSecret")
            .field("tenant", &self.tenant)
            .field("user", &self.user)
            .field("name", &self.name)
            .field("master_kid", &self.master_kid)
            .finish_non_exhaustive()
    }
}

/// A secret's metadata, for listings: never its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretMeta {
    /// The name.
    pub name: String,
    /// The master key version that wraps it.
    pub master_kid: String,
    /// Unix milliseconds of the first write.
    pub created_ms: i64,
    /// Unix milliseconds of the last write.
    pub updated_ms: i64,
}

/// A re-wrapped data key to store, conditional on the row being unchanged.
#[derive(Debug, Clone)]
pub struct Rewrap<'a> {
    /// The row as it was read.
    pub old: &'a StoredSecret,
    /// The new master key version.
    pub master_kid: &'a str,
    /// The data key wrapped under it.
    pub wrapped_key: &'a [u8],
}

/// Handle to the store. Cloning is cheap and shares the backend.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Sqlite(sqlite::SqliteStore),
    Postgres(postgres::PgStore),
}

macro_rules! dispatch {
    ($self:ident, $b:ident => $e:expr) => {
        match &$self.backend {
            Backend::Sqlite($b) => $e,
            Backend::Postgres($b) => $e,
        }
    };
}

/// The default size of the PostgreSQL pool (`database.max_connections`).
pub const DEFAULT_PG_MAX_CONNECTIONS: usize = 16;

impl Store {
    /// Opens (creating if needed) the SQLite database at `path` and applies
    /// migrations.
    pub fn open_sqlite(path: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            backend: Backend::Sqlite(sqlite::SqliteStore::open(path)?),
        })
    }

    /// Connects to PostgreSQL with a pool of at most
    /// [`DEFAULT_PG_MAX_CONNECTIONS`] connections and applies migrations.
    pub async fn connect_postgres(url: &str) -> Result<Self, StoreError> {
        Self::connect_postgres_with_pool(url, DEFAULT_PG_MAX_CONNECTIONS).await
    }

    /// Connects to PostgreSQL with a pool of at most `max_connections`
    /// connections (`database.max_connections`; at least one) and applies
    /// migrations.
    pub async fn connect_postgres_with_pool(
        url: &str,
        max_connections: usize,
    ) -> Result<Self, StoreError> {
        Ok(Self {
            backend: Backend::Postgres(postgres::PgStore::connect(url, max_connections).await?),
        })
    }

    /// `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// Queues a usage record. Never blocks; a record queued before
    /// [`Store::flush`] returns is durable after it.
    pub fn record_usage(&self, rec: UsageRecord) {
        dispatch!(self, b => b.record_usage(rec))
    }

    /// Checks that the database answers a query.
    pub async fn ping(&self) -> Result<(), StoreError> {
        dispatch!(self, b => b.ping().await)
    }

    /// Waits until everything queued so far is committed.
    pub async fn flush(&self) -> Result<(), StoreError> {
        dispatch!(self, b => b.flush().await)
    }

    /// Usage totals of one principal, over all time.
    pub async fn usage_totals(
        &self,
        tenant: &TenantId,
        user: &UserId,
    ) -> Result<UsageTotals, StoreError> {
        dispatch!(self, b => b.usage_totals(tenant, user).await)
    }

    /// Stores a new API key record; an existing id is an error.
    pub async fn insert_api_key(&self, rec: ApiKeyRecord) -> Result<(), StoreError> {
        dispatch!(self, b => b.insert_api_key(rec).await)
    }

    /// Looks up an API key by its public id.
    pub async fn api_key(&self, id: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        dispatch!(self, b => b.api_key(id).await)
    }

    /// Lists API keys, optionally of one tenant, oldest first.
    pub async fn list_api_keys(
        &self,
        tenant: Option<&TenantId>,
    ) -> Result<Vec<ApiKeyRecord>, StoreError> {
        dispatch!(self, b => b.list_api_keys(tenant).await)
    }

    /// Revokes an API key; false when no such key exists or it was already revoked.
    pub async fn revoke_api_key(&self, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        dispatch!(self, b => b.revoke_api_key(id, now_ms).await)
    }

    /// Stores a vault secret, replacing one of the same owner and name.
    pub async fn put_secret(&self, rec: StoredSecret) -> Result<(), StoreError> {
        dispatch!(self, b => b.put_secret(rec).await)
    }

    /// Reads a vault secret.
    pub async fn get_secret(
        &self,
        tenant: &TenantId,
        user: &UserId,
        name: &str,
    ) -> Result<Option<StoredSecret>, StoreError> {
        dispatch!(self, b => b.get_secret(tenant, user, name).await)
    }

    /// Deletes a vault secret; false when there was none.
    pub async fn delete_secret(
        &self,
        tenant: &TenantId,
        user: &UserId,
        name: &str,
    ) -> Result<bool, StoreError> {
        dispatch!(self, b => b.delete_secret(tenant, user, name).await)
    }

    /// Lists one owner's secrets by name.
    pub async fn list_secrets(
        &self,
        tenant: &TenantId,
        user: &UserId,
    ) -> Result<Vec<SecretMeta>, StoreError> {
        dispatch!(self, b => b.list_secrets(tenant, user).await)
    }

    /// Up to `limit` secrets whose data key is not wrapped under `kid`, for
    /// a master key rotation.
    pub async fn secrets_not_under(
        &self,
        kid: &str,
        limit: u32,
    ) -> Result<Vec<StoredSecret>, StoreError> {
        dispatch!(self, b => b.secrets_not_under(kid, limit).await)
    }

    /// Stores a re-wrapped data key if the row is still as it was read;
    /// false when it changed meanwhile (a concurrent write wins).
    pub async fn rewrap_secret(&self, rw: Rewrap<'_>) -> Result<bool, StoreError> {
        dispatch!(self, b => b.rewrap_secret(rw).await)
    }

    /// How many secrets each master key version wraps.
    pub async fn secrets_per_master_kid(&self) -> Result<Vec<(String, u64)>, StoreError> {
        dispatch!(self, b => b.secrets_per_master_kid().await)
    }
}

/// Builds a record from stored columns, validating the identities again.
/// One argument per column keeps both backends' row mappings obvious.
#[allow(clippy::too_many_arguments)]
pub(crate) fn api_key_record(
    id: String,
    hash: String,
    tenant: String,
    user: String,
    roles: &str,
    created_ms: i64,
    expires_ms: Option<i64>,
    revoked_ms: Option<i64>,
) -> Result<ApiKeyRecord, StoreError> {
    Ok(ApiKeyRecord {
        id,
        hash,
        tenant: TenantId::new(tenant).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        user: UserId::new(user).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        roles: roles
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        created_ms,
        expires_ms,
        revoked_ms,
    })
}

/// Converts a token count for a signed database column.
pub(crate) fn count_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Builds a secret row from stored columns, validating the identities again.
#[allow(clippy::too_many_arguments)]
pub(crate) fn secret_record(
    tenant: String,
    user: String,
    name: String,
    master_kid: String,
    wrapped_key: Vec<u8>,
    ciphertext: Vec<u8>,
    created_ms: i64,
    updated_ms: i64,
) -> Result<StoredSecret, StoreError> {
    Ok(StoredSecret {
        tenant: TenantId::new(tenant).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        user: UserId::new(user).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        name,
        master_kid,
        wrapped_key,
        ciphertext,
        created_ms,
        updated_ms,
    })
}
