//! The durable, append-only, per-tenant audit log of aibox.
//!
//! Storage lives here; every hash, proof and signature comes from the pure
//! [`aibox_audit`] core. Two backends: SQLite (the embedded default, one
//! file, e.g. `data/audit.db`) and PostgreSQL (several replicas sharing one
//! database). This documentation is the specification: a third party can
//! write a verifier for receipts and export bundles from it alone.
//!
//! # What is stored
//!
//! Each tenant has one **chain of rows** (one row per audit event, with
//! sequence numbers `1, 2, 3, ...` without gaps) and one **log**: an RFC
//! 6962 Merkle tree whose leaves are the tenant's **envelopes**, one per
//! sealed turn. [`AuditLog::append_turn`] writes a turn's events as rows,
//! seals and signs an envelope over exactly those rows and appends it to
//! the tenant's log, all in one transaction. A signed **checkpoint** of the
//! tree head is written in the same transaction when the tenant's cadence
//! is due ([`AuditLogOptions::checkpoint_interval`], 1 s by default; 0 signs
//! one in every commit), by the writer's timer when a tail has waited that
//! long, and at once when a receipt, proof, export, verification or the
//! published checkpoint needs one ([`AuditLog::cover`]).
//!
//! ```text
//! rows:       seq 1 ─ seq 2 ─ seq 3 ─ seq 4 ─ seq 5 ─ ...   (row hash chain)
//!             └── envelope 0 ──┘ └──── envelope 1 ─────┘      (events root, signed)
//! log:        leaf 0 = envelope 0 text, leaf 1 = envelope 1 text, ...
//! checkpoint: <origin>\n<tree size>\n<root>\n, signed
//! ```
//!
//! ## Tables (SQLite types; PostgreSQL uses BIGINT/BYTEA)
//!
//! | table | columns | key |
//! |---|---|---|
//! | `audit_rows` | tenant TEXT, seq INTEGER, turn TEXT NULL, event TEXT (canonical JSON), prev_row_hash BLOB(32), row_hash BLOB(32) | (tenant, seq) |
//! | `audit_envelopes` | tenant, leaf_index, turn (UNIQUE), first_seq, last_seq, key_version, leaf_hash BLOB(32), note TEXT (signed envelope) | (tenant, leaf_index) |
//! | `audit_checkpoints` | tenant, size, key_version, root BLOB(32), note TEXT (signed checkpoint), created_ms | (tenant, size) |
//! | `audit_keys` | version, fingerprint (UNIQUE), created_ms | version |
//! | `audit_tenant_keys` | tenant, version, checkpoint_key, envelope_key (verifier key strings), created_ms | (tenant, version) |
//! | `audit_heads` | tenant, last_seq, last_row_hash, tree_size, last_envelope_hash, updated_ms | tenant |
//!
//! All tables but `audit_heads` are append-only: triggers refuse UPDATE,
//! DELETE (and, on PostgreSQL, TRUNCATE); `audit_heads` may only move
//! forward; the PostgreSQL notes below say more.
//!
//! # Formats
//!
//! All base64 is standard and padded (RFC 4648 §4). `H(x)` is SHA-256.
//!
//! ## Event
//!
//! The event's bytes are `AuditEvent::canonical_bytes()`: the compact JSON
//! of `aibox_core::audit::AuditEvent` with fields in declaration order. It
//! always starts with `{"tenant":"<tenant>","turn":` followed by
//! `"<turn id>"` or `null`, then `,`; verifiers check an event's tenant
//! and turn by this prefix. The event leaf hash is `H(0x00 || bytes)`.
//!
//! ## Row hash
//!
//! ```text
//! row_hash = H( "aibox-audit-row/v1" || 0x00
//!               || u8(len(tenant)) || tenant
//!               || u64_be(seq)
//!               || prev_row_hash                 (32 bytes; 32 zero bytes for seq 1)
//!               || H(0x00 || event bytes) )      (the event leaf hash)
//! ```
//!
//! `tenant` is the UTF-8 tenant id (at most 64 bytes of `[A-Za-z0-9._-]`),
//! `prev_row_hash` of row `n` is `row_hash` of row `n - 1`.
//!
//! ## Envelope
//!
//! A C2SP signed note (see [`aibox_audit::note`]) whose text is nine lines:
//! `aibox-envelope/v1`, tenant, turn (`*` when none), first seq, last seq,
//! event count, base64 of the RFC 6962 root over the events' leaf hashes
//! in seq order, base64 of the previous envelope's leaf hash (32 zero bytes
//! for the first), seal time in Unix ms. It is signed by the tenant's
//! envelope key, named `<origin>/envelope`. Its leaf in the tenant's log is
//! `H(0x00 || text)` (the nine lines, without signatures).
//!
//! ## Checkpoint
//!
//! C2SP tlog-checkpoint `<origin>\n<size>\n<base64 root>\n`, signed by the
//! log key named `<origin>`, where `origin = <prefix>/<tenant>` (default
//! prefix `aibox.local/audit`). The prefix must stay the same for the life
//! of a log.
//!
//! ## Keys and versions
//!
//! Both keys of a tenant derive from `AUDIT_SIGNING_KEY` and a **key
//! version** (HKDF, see [`aibox_audit::keys`]). Versions are numbered from
//! 1 in `audit_keys`, which stores for each version only a *fingerprint* of
//! the secret: `hex(H("aibox-audit-key-fingerprint/v1" || 0x00 || P))`
//! where `P` is the Ed25519 public key derived with version 0 (never used
//! for signing) under the key name `aibox-audit-key-fingerprint`. At
//! start-up the fingerprint of the configured key is looked up; an unknown
//! one becomes version `max + 1` — **rotation is setting a new
//! `AUDIT_SIGNING_KEY` and restarting**. The placeholder and keys shorter
//! than 32 characters are refused
//! (`aibox_core::keyring::check_audit_signing_key`).
//!
//! The first envelope a version signs for a tenant records that tenant's
//! verifier key strings (`<origin>+<key id>+<base64(0x01||key)>` and the
//! envelope one) in `audit_tenant_keys`, in the same transaction. Every
//! envelope and checkpoint row names its `key_version`, and the signature
//! line of the note carries the version's key id. Verification uses the
//! recorded public keys, so records signed before a rotation keep
//! verifying after the old secret is gone; the current version's record
//! must equal what the configured secret derives. Third parties get the
//! keys from [`AuditLog::public_keys`] and should pin them: a record signed
//! by a key they were never given does not verify.
//!
//! ## Receipt (`aibox-receipt/v1`)
//!
//! JSON object ([`Receipt`]): `format`, `tenant`, `turn` (string or null),
//! `events` (array of the canonical event JSON texts, as strings),
//! `envelope` (signed note), `key_version`, `leaf_index`, `tree_size`,
//! `inclusion_proof` (array of base64 hashes, RFC 9162 §2.1.3 order), and
//! `checkpoint` (signed note of `tree_size`). To verify
//! ([`verify_receipt`]): open the checkpoint with the tenant's published log
//! keys (its origin must be `<prefix>/<tenant>` and its size `tree_size`);
//! open the envelope with a key named `<origin>/envelope`; its tenant and
//! turn must be the receipt's; the events must start with the tenant/turn
//! prefix and their leaf hashes' Merkle root must equal the envelope's root;
//! `H(0x00 || envelope text)` at `leaf_index` must verify with the proof
//! against the checkpoint's root and size (exact proof length enforced).
//!
//! ## Export bundle (`aibox-audit-bundle/v1`)
//!
//! JSON object ([`Bundle`]):
//!
//! ```json
//! { "format": "aibox-audit-bundle/v1", "tenant": "acme", "origin": "aibox.local/audit/acme",
//!   "public_keys": [ {"version": 1, "checkpoint_key": "...", "envelope_key": "..."} ],
//!   "rows": [ {"seq": 1, "turn": "0190...", "event": "{\"tenant\":\"acme\",...}",
//!              "prev_row_hash": "AAAA...=", "row_hash": "..."} ],
//!   "envelopes": [ {"leaf_index": 0, "key_version": 1, "note": "aibox-envelope/v1\n...\n\n— ...\n"} ],
//!   "checkpoints": [ {"size": 1, "key_version": 1, "note": "aibox.local/audit/acme\n1\n...\n\n— ...\n"} ] }
//! ```
//!
//! Rows are in seq order, envelopes in leaf order, checkpoints in size
//! order; `event` holds the exact canonical bytes as a JSON string (the
//! leaf data is its UTF-8). `public_keys` is informational: verify with keys
//! obtained independently. Verification ([`verify_bundle`]) in order:
//!
//! 1. For each envelope `i` (must be `0, 1, 2, ...`): it verifies with a
//!    trusted key named `<origin>/envelope`; its tenant is the bundle's;
//!    its first seq is one past the previous envelope's last seq (1 for the
//!    first); its previous hash is the previous envelope's leaf hash (zeros
//!    first). Then its rows, `first..=last`, each must have the next seq,
//!    `prev_row_hash` equal to the previous row's `row_hash` (zeros for seq
//!    1), `row_hash` equal to the recomputation above, an event prefix of
//!    the envelope's tenant and turn and a `turn` equal to the envelope's.
//!    The root over the rows' event leaf hashes must equal the envelope's.
//!    The envelope's leaf hash is appended to the recomputed tree.
//! 2. No row may remain after the last envelope.
//! 3. Each checkpoint verifies with a trusted key named `<origin>`, has the
//!    listed size, sizes increase, and its root equals the recomputed tree's
//!    root at its size. Envelopes past the last checkpoint (a tail not yet
//!    covered, see above) are allowed: step 1 checked their signatures and
//!    links; the report's `checkpoint_size` says how far checkpoints reach.
//!    An export covers the tail first, so its last checkpoint's size is
//!    normally the tree size.
//!
//! # Detecting tampering
//!
//! [`AuditLog::verify`] runs the same checks on the database (plus the index
//! columns against the signed texts and the head row) and reports the first
//! problem in a [`VerifyReport`], pinned to the first sequence number it
//! implicates: a modified row → that row; a deleted row
//! → the missing seq; an inserted or swapped row → that row; a dropped or
//! reordered event with the chain rewritten → the first seq of its
//! envelope. A truncated tail or a rollback to an older backup leaves an
//! internally consistent log; [`AuditLog::verify_against_checkpoint`]
//! catches both with a checkpoint kept outside the database (the stored
//! tree must contain its size with the same root), and a checkpoint of the
//! same size with another root is reported as a fork.
//!
//! # Durability and throughput
//!
//! `append_turn` returns only after its transaction committed: SQLite in
//! WAL mode with `synchronous=FULL` (the WAL is fsynced at commit),
//! PostgreSQL with `COMMIT` (`synchronous_commit = on`). Concurrent calls
//! are batched by one writer (a thread for SQLite, a task for PostgreSQL)
//! into one transaction (group commit, at most 8192 events each). Events
//! are encoded and hashed on the caller's task; the writer chains, signs
//! (one Ed25519 signature per turn, one per tenant per batch) and stores.
//! The writer keeps each tenant's head and Merkle tree in memory, loaded
//! lazily from the stored envelope leaf hashes; readers keep their own tree
//! cache, so proofs are `O(log n)` after the first load.
//!
//! # PostgreSQL
//!
//! Several processes may append to one tenant: each transaction locks the
//! tenant's `audit_heads` row (`FOR UPDATE`) and, when another process
//! advanced it, extends its tree from the database before chaining. Guards
//! are `ENABLE ALWAYS` triggers (so `session_replication_role = replica`
//! does not bypass them), checked at start-up against `pg_trigger`,
//! `pg_proc` and `pg_rules`; a missing, disabled or altered guard (as after
//! some `pg_dump` restores) stops start-up with the fix
//! ([`AuditLog::restore_guards_postgres`]). The table owner can always drop
//! triggers, so the role aibox writes with must not own the audit tables:
//! grant it `SELECT, INSERT` on them and `UPDATE` on `audit_heads` only.

// The unit tests share the integration tests' fixture and tampering table,
// which name this crate by its package name.
#[cfg(test)]
extern crate self as aibox_auditlog;

mod error;
mod format;
mod postgres;
mod readahead;
mod sqlite;
mod state;
#[cfg(test)]
#[path = "../tests/common/mod.rs"]
mod test_common;
#[cfg(test)]
mod tests_readahead;
mod verify;

use std::path::Path;

use aibox_audit::merkle::Tree;
use aibox_core::audit::AuditEvent;
use aibox_core::{TenantId, TurnId};
use tokio::sync::oneshot;

pub use error::{AuditLogError, ReceiptError};
pub use format::{
    BUNDLE_FORMAT, Bundle, BundleCheckpoint, BundleEnvelope, BundleRow, ConsistencyProof,
    GENESIS_ROW_HASH, LogPage, PageRow, PublicKeyRecord, RECEIPT_FORMAT, Receipt, SignatureCheck,
    TurnRecord, VerifyReport, key_fingerprint, row_hash,
};
pub use verify::{
    VerifiedReceipt, verify_bundle, verify_bundle_with, verify_consistency, verify_receipt,
    verify_receipt_for_tenant,
};

use crate::format::PublicKeyRecord as Keys;
use crate::state::{Request, Signing};
use crate::verify::{CpBuf, EnvBuf, RowBuf, Source};

/// Options of an audit log.
#[derive(Debug, Clone)]
pub struct AuditLogOptions {
    /// The origin prefix: tenant logs are `<prefix>/<tenant>`. It must not
    /// change for the life of a log.
    pub origin_prefix: String,
    /// PostgreSQL only: the most connections of the log's pool (the writer
    /// and the readers; `database.audit_max_connections`, at least one).
    pub pg_max_connections: usize,
    /// The longest a tenant's newest envelopes stay without a signed
    /// checkpoint over them (`audit.checkpoint_interval_ms`). Envelopes are
    /// signed as they are stored whatever this is; a checkpoint is signed
    /// in the first commit after the interval, when the tail is that old
    /// and idle, and at once whenever a reader needs one. Zero signs one
    /// in every commit.
    pub checkpoint_interval: std::time::Duration,
}

/// The default of [`AuditLogOptions::checkpoint_interval`].
pub const DEFAULT_CHECKPOINT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(1000);

/// The default size of the PostgreSQL pool (`database.audit_max_connections`).
pub const DEFAULT_PG_MAX_CONNECTIONS: usize = 8;

impl Default for AuditLogOptions {
    fn default() -> Self {
        Self {
            origin_prefix: aibox_audit::checkpoint::DEFAULT_ORIGIN_PREFIX.to_owned(),
            pg_max_connections: DEFAULT_PG_MAX_CONNECTIONS,
            checkpoint_interval: DEFAULT_CHECKPOINT_INTERVAL,
        }
    }
}

/// The audit log. Cloning is cheap and shares the backend and its writer.
#[derive(Clone)]
pub struct AuditLog {
    backend: Backend,
    key_version: u32,
    key_is_new: bool,
}

#[derive(Clone)]
enum Backend {
    Sqlite(sqlite::SqliteLog),
    Postgres(postgres::PgLog),
}

macro_rules! dispatch {
    ($self:ident, $b:ident => $e:expr) => {
        match &$self.backend {
            Backend::Sqlite($b) => $e,
            Backend::Postgres($b) => $e,
        }
    };
}

/// The outcome of a database verification, with what the trusted
/// checkpoint comparison needs.
pub(crate) struct Verified {
    pub report: VerifyReport,
    pub tree: Tree,
    pub next_seq: u64,
    pub recorded: Vec<Keys>,
}

impl Verified {
    fn failed(problem: String) -> Self {
        Self {
            report: VerifyReport {
                ok: false,
                problem: Some(problem),
                root: format::b64(&Tree::new().root()),
                ..VerifyReport::default()
            },
            tree: Tree::new(),
            next_seq: 1,
            recorded: Vec::new(),
        }
    }
}

/// Unix milliseconds now; 0 if the clock is before 1970.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

type Collected = (Vec<BundleRow>, Vec<BundleEnvelope>, Vec<BundleCheckpoint>);

/// Reads a whole tenant's log from a source into bundle parts.
pub(crate) async fn collect_bundle<S: Source>(src: &mut S) -> Result<Collected, S::Error> {
    let mut rows = Vec::new();
    let mut envelopes = Vec::new();
    let mut checkpoints = Vec::new();
    let mut r = RowBuf::default();
    while src.next_row(&mut r).await? {
        rows.push(BundleRow {
            seq: r.seq,
            turn: r.turn.clone(),
            event: String::from_utf8_lossy(&r.event).into_owned(),
            prev_row_hash: format::b64(&r.prev),
            row_hash: format::b64(&r.hash),
        });
    }
    let mut e = EnvBuf::default();
    while src.next_envelope(&mut e).await? {
        envelopes.push(BundleEnvelope {
            leaf_index: e.leaf_index,
            key_version: e.key_version.unwrap_or(0),
            note: String::from_utf8_lossy(&e.note).into_owned(),
        });
    }
    let mut c = CpBuf::default();
    while src.next_checkpoint(&mut c).await? {
        checkpoints.push(BundleCheckpoint {
            size: c.size,
            key_version: c.key_version.unwrap_or(0),
            note: String::from_utf8_lossy(&c.note).into_owned(),
        });
    }
    Ok((rows, envelopes, checkpoints))
}

pub(crate) fn bundle(
    signing: &Signing,
    tenant: &TenantId,
    public_keys: Vec<Keys>,
    (rows, envelopes, checkpoints): Collected,
) -> Result<Bundle, AuditLogError> {
    Ok(Bundle {
        format: BUNDLE_FORMAT.to_owned(),
        tenant: tenant.clone(),
        origin: signing.origin(tenant.as_str())?,
        public_keys,
        rows,
        envelopes,
        checkpoints,
    })
}

impl AuditLog {
    /// Opens (creating if needed) the SQLite audit database at `path`:
    /// applies migrations, checks the append-only guards, and registers the
    /// key version of `audit_signing_key` (refusing the placeholder and
    /// short keys).
    pub fn open_sqlite(
        path: &Path,
        audit_signing_key: &str,
        options: &AuditLogOptions,
    ) -> Result<Self, AuditLogError> {
        let (log, key_version, key_is_new) =
            sqlite::SqliteLog::open(path, audit_signing_key, options)?;
        if key_is_new {
            tracing::info!(version = key_version, "registered a new audit key version");
        }
        Ok(Self {
            backend: Backend::Sqlite(log),
            key_version,
            key_is_new,
        })
    }

    /// Connects to PostgreSQL: applies migrations under an advisory lock,
    /// runs the guard self-check, and registers the key version.
    pub async fn connect_postgres(
        url: &str,
        audit_signing_key: &str,
        options: &AuditLogOptions,
    ) -> Result<Self, AuditLogError> {
        let (log, key_version, key_is_new) =
            postgres::PgLog::connect(url, audit_signing_key, options).await?;
        if key_is_new {
            tracing::info!(version = key_version, "registered a new audit key version");
        }
        Ok(Self {
            backend: Backend::Postgres(log),
            key_version,
            key_is_new,
        })
    }

    /// Re-creates the append-only guards of a SQLite audit database (the
    /// fix named by [`AuditLogError::Guards`]). Run a verification after.
    pub fn restore_guards_sqlite(path: &Path) -> Result<(), AuditLogError> {
        sqlite::restore_guards(path)
    }

    /// Re-creates the append-only guards in PostgreSQL; needs the table
    /// owner's rights. Run a verification after.
    pub async fn restore_guards_postgres(url: &str) -> Result<(), AuditLogError> {
        postgres::restore_guards(url).await
    }

    /// Runs the guard self-check again (start-up already ran it).
    pub async fn check_guards(&self) -> Result<(), AuditLogError> {
        match &self.backend {
            Backend::Sqlite(s) => s.check_guards().await,
            Backend::Postgres(p) => p.check_guards().await,
        }
    }

    /// `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// The audit key version this process signs with.
    pub fn key_version(&self) -> u32 {
        self.key_version
    }

    /// Whether this start registered that version (a rotation, or the first
    /// start); the caller may record an `EventKind::KeyRotated`.
    pub fn key_is_new(&self) -> bool {
        self.key_is_new
    }

    fn signing(&self) -> &Signing {
        dispatch!(self, b => b.signing())
    }

    /// Appends one turn's events, seals and signs its envelope, appends it
    /// to the tenant's log and signs a checkpoint; returns once committed.
    /// Every event must carry `tenant` and `turn`; a turn is sealed once.
    pub async fn append_turn(
        &self,
        tenant: &TenantId,
        turn: Option<TurnId>,
        events: Vec<AuditEvent>,
    ) -> Result<TurnRecord, AuditLogError> {
        let prepared = state::prepare(tenant, turn, events)?;
        let (reply, rx) = oneshot::channel();
        let req = Request::Turn { prepared, reply };
        dispatch!(self, b => b.submit(req))?;
        rx.await.map_err(|_| AuditLogError::Closed)?
    }

    /// Has the writer sign and store a checkpoint over the tenant's whole
    /// tree now, unless the newest stored one covers it already (see
    /// [`AuditLogOptions::checkpoint_interval`]). A tenant without a log is
    /// left alone.
    pub async fn cover(&self, tenant: &TenantId) -> Result<(), AuditLogError> {
        let (reply, rx) = oneshot::channel();
        let req = Request::Cover {
            tenant: tenant.clone(),
            reply,
        };
        dispatch!(self, b => b.submit(req))?;
        rx.await.map_err(|_| AuditLogError::Closed)?
    }

    /// [`AuditLog::cover`] where a stale answer beats none: the failure is
    /// logged and the caller reads what is stored.
    async fn cover_or_warn(&self, tenant: &TenantId) {
        if let Err(e) = self.cover(tenant).await {
            tracing::warn!(tenant = %tenant, error = %e, "cannot sign a checkpoint over the audit log's newest envelopes; using the newest stored one");
        }
    }

    /// The receipt of `turn` in `tenant`'s log, against the newest
    /// checkpoint (signed now if none covers the turn yet). A turn of
    /// another tenant is "not found".
    pub async fn receipt(
        &self,
        tenant: &TenantId,
        turn: &TurnId,
    ) -> Result<Receipt, AuditLogError> {
        match dispatch!(self, b => b.receipt(tenant, turn).await) {
            Err(AuditLogError::Uncovered { .. }) => {
                self.cover(tenant).await?;
                dispatch!(self, b => b.receipt(tenant, turn).await)
            }
            other => other,
        }
    }

    /// The receipt of the envelope at `leaf_index` (also for turnless
    /// batches).
    pub async fn receipt_at(
        &self,
        tenant: &TenantId,
        leaf_index: u64,
    ) -> Result<Receipt, AuditLogError> {
        match dispatch!(self, b => b.receipt_at(tenant, leaf_index).await) {
            Err(AuditLogError::Uncovered { .. }) => {
                self.cover(tenant).await?;
                dispatch!(self, b => b.receipt_at(tenant, leaf_index).await)
            }
            other => other,
        }
    }

    /// Which tenant's log holds `turn`, if any.
    pub async fn tenant_of_turn(&self, turn: &TurnId) -> Result<Option<TenantId>, AuditLogError> {
        let t = dispatch!(self, b => b.tenant_of_turn(turn).await)?;
        t.map(|t| {
            TenantId::new(t.as_str()).map_err(|e| AuditLogError::Corrupt {
                tenant: "(invalid)".into(),
                detail: e.to_string(),
            })
        })
        .transpose()
    }

    /// An RFC 9162 consistency proof between two sizes of the tenant's log
    /// (`0 < old_size <= new_size <= ` newest checkpoint size).
    pub async fn consistency_proof(
        &self,
        tenant: &TenantId,
        old_size: u64,
        new_size: u64,
    ) -> Result<ConsistencyProof, AuditLogError> {
        match dispatch!(self, b => b.consistency_proof(tenant, old_size, new_size).await) {
            Err(AuditLogError::Proof(aibox_audit::ProofError::BeyondTree { .. })) => {
                // The size may be stored but not yet covered.
                self.cover(tenant).await?;
                dispatch!(self, b => b.consistency_proof(tenant, old_size, new_size).await)
            }
            other => other,
        }
    }

    /// The newest signed checkpoint of the tenant's log, signed now if
    /// newer envelopes are stored; keep it outside the database to detect
    /// truncation and rollback later.
    pub async fn latest_checkpoint(
        &self,
        tenant: &TenantId,
    ) -> Result<Option<String>, AuditLogError> {
        self.cover_or_warn(tenant).await;
        dispatch!(self, b => b.latest_checkpoint(tenant).await)
    }

    /// The verifier keys of every version for the tenant (recorded ones and
    /// the current one), by version, for export to third parties.
    pub async fn public_keys(
        &self,
        tenant: &TenantId,
    ) -> Result<Vec<PublicKeyRecord>, AuditLogError> {
        dispatch!(self, b => b.public_keys(tenant).await)
    }

    /// The tenants that have a log.
    pub async fn tenants(&self) -> Result<Vec<TenantId>, AuditLogError> {
        let names = dispatch!(self, b => b.tenants().await)?;
        names
            .into_iter()
            .map(|t| {
                TenantId::new(t).map_err(|e| AuditLogError::Corrupt {
                    tenant: "(invalid)".into(),
                    detail: e.to_string(),
                })
            })
            .collect()
    }

    async fn verified(
        &self,
        tenant: &TenantId,
        mode: SignatureCheck,
        progress: Box<dyn FnMut(u64, u64) + Send>,
    ) -> Result<Verified, AuditLogError> {
        // The newest envelopes are checked by their own signatures either
        // way; covering them first lets the checkpoint vouch for them too.
        self.cover_or_warn(tenant).await;
        match &self.backend {
            Backend::Sqlite(s) => s.verify(tenant, mode, progress).await,
            Backend::Postgres(p) => {
                let mut progress = progress;
                p.verify(tenant, mode, &mut *progress).await
            }
        }
    }

    /// Recomputes and checks the tenant's whole log: the row chain, every
    /// envelope (signature with the recorded key of its version, root over
    /// its rows, link to the previous one, contiguity), every checkpoint
    /// (signature, root of the recomputed tree at its size) and the head.
    /// `progress(done_rows, total_rows)` is called as it goes. An `Err` is a
    /// storage failure; tampering is a report with `ok: false`.
    pub async fn verify(
        &self,
        tenant: &TenantId,
        progress: impl FnMut(u64, u64) + Send + 'static,
    ) -> Result<VerifyReport, AuditLogError> {
        self.verify_with(tenant, SignatureCheck::All, progress)
            .await
    }

    /// [`AuditLog::verify`] checking the signatures `mode` names. In
    /// [`SignatureCheck::Head`] mode a failure may be pinned later than the
    /// first bad sequence number; [`AuditLog::verify_head_then_pin`] does
    /// the second pass that pins it.
    pub async fn verify_with(
        &self,
        tenant: &TenantId,
        mode: SignatureCheck,
        progress: impl FnMut(u64, u64) + Send + 'static,
    ) -> Result<VerifyReport, AuditLogError> {
        Ok(self
            .verified(tenant, mode, Box::new(progress))
            .await?
            .report)
    }

    /// Verifies at hashing speed ([`SignatureCheck::Head`]); only if that
    /// finds a problem, verifies again with every signature, so the report
    /// pins the first bad sequence number as precisely as the full check
    /// (the second pass reports no progress).
    pub async fn verify_head_then_pin(
        &self,
        tenant: &TenantId,
        progress: impl FnMut(u64, u64) + Send + 'static,
    ) -> Result<VerifyReport, AuditLogError> {
        let report = self
            .verify_with(tenant, SignatureCheck::Head, progress)
            .await?;
        if report.ok {
            return Ok(report);
        }
        self.verify_with(tenant, SignatureCheck::All, |_, _| {})
            .await
    }

    /// [`AuditLog::verify`], then compares the log with a signed checkpoint
    /// kept outside the database: a larger size means a truncated tail or a
    /// rollback to an older backup; the same size (or a smaller one) with
    /// another root means a fork.
    pub async fn verify_against_checkpoint(
        &self,
        tenant: &TenantId,
        trusted_checkpoint: &[u8],
    ) -> Result<VerifyReport, AuditLogError> {
        let v = self
            .verified(tenant, SignatureCheck::All, Box::new(|_, _| {}))
            .await?;
        // A log that fails on its own is reported as such; the trusted
        // checkpoint matters only for a log that is internally consistent.
        if !v.report.ok {
            return Ok(v.report);
        }
        let recorded = if v.recorded.is_empty() {
            dispatch!(self, b => b.recorded_keys(tenant).await)?
        } else {
            v.recorded
        };
        let cp = state::open_trusted(
            self.signing(),
            tenant.as_str(),
            &recorded,
            trusted_checkpoint,
        )?;
        let mut report = v.report;
        let stored = v.tree.size();
        if cp.size() > stored {
            report.ok = false;
            report.first_bad_seq = Some(v.next_seq);
            report.problem = Some(format!(
                "the log is shorter than the trusted checkpoint: it covers {} envelopes, the database holds {stored} (a truncated tail or a rollback to an older backup); seq {} onwards is missing",
                cp.size(),
                v.next_seq
            ));
        } else if &v.tree.root_at(cp.size())? != cp.root() {
            report.ok = false;
            report.first_bad_seq = None;
            report.problem = Some(format!(
                "fork: the database's log at size {} has another root than the trusted checkpoint (a forked log, or history rewritten and re-signed)",
                cp.size()
            ));
        }
        Ok(report)
    }

    /// At most `limit` rows of the tenant's log with a seq below `before`
    /// (all when `None`), newest first, only events of type `kind` when
    /// given; one indexed range read, never the whole log.
    pub async fn page(
        &self,
        tenant: &TenantId,
        before: Option<u64>,
        limit: usize,
        kind: Option<&str>,
    ) -> Result<LogPage, AuditLogError> {
        let kind = kind.map(str::to_owned);
        dispatch!(self, b => b.page(tenant, before, limit, kind).await)
    }

    /// Exports the tenant's whole log as a bundle (see the crate docs).
    pub async fn export(&self, tenant: &TenantId) -> Result<Bundle, AuditLogError> {
        self.cover_or_warn(tenant).await;
        dispatch!(self, b => b.export(tenant).await)
    }
}
