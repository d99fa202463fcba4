//! Errors of the audit log. Each names its cause and the fix; none carries
//! key material or event contents.

use std::path::PathBuf;

use aibox_audit::{CheckpointError, EnvelopeError, KeyError, ProofError};

/// Why an audit log operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditLogError {
    /// `AUDIT_SIGNING_KEY` is the placeholder or too short, or a key could
    /// not be derived. The message comes from the key check and names the
    /// fix.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The origin prefix cannot name a log.
    #[error(transparent)]
    Origin(CheckpointError),
    /// The SQLite audit database could not be opened.
    #[error("cannot open the SQLite audit database {path}: {cause}; fix: check that server.data_dir (AIBOX_DATA_DIR) is writable", path = path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        cause: String,
    },
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
    /// A database statement failed.
    #[error("audit database error: {0}")]
    Db(String),
    /// The audit schema was written by a newer aibox.
    #[error(
        "the audit schema has version {found}, newer than this binary's {known}; fix: run the newer aibox or restore a matching backup"
    )]
    TooNew {
        /// Its version.
        found: i64,
        /// Ours.
        known: i64,
    },
    /// An append-only guard (trigger) is missing, altered or not enabled
    /// ALWAYS. A restore with pg_dump, a manual `DROP TRIGGER` or `ALTER
    /// TABLE ... DISABLE TRIGGER` causes this.
    #[error(
        "the audit log's append-only guards are not intact ({detail}); fix: restore them with `aibox audit restore-guards` (AuditLog::restore_guards_sqlite / restore_guards_postgres, which re-runs the guard migration), then run `aibox audit verify` because the log may have been changed while unguarded"
    )]
    Guards {
        /// Which guards are missing or wrong.
        detail: String,
    },
    /// The events handed to `append_turn` do not form a valid envelope.
    #[error(
        "cannot seal these events: {0}; fix: pass at least one event, all with the tenant and turn given to append_turn"
    )]
    Events(#[source] EnvelopeError),
    /// An event could not be encoded.
    #[error("event {index} cannot be encoded: {cause}")]
    Encoding {
        /// Its position.
        index: usize,
        /// The encoder's message.
        cause: String,
    },
    /// The envelope is newer than the tenant's newest signed checkpoint
    /// (checkpoints follow `audit.checkpoint_interval_ms`); `AuditLog`
    /// covers it and retries, so callers see this only in a race.
    #[error(
        "envelope {leaf_index} of tenant {tenant} is not yet covered by a signed checkpoint; fix: retry (a checkpoint over it is signed within audit.checkpoint_interval_ms)"
    )]
    Uncovered {
        /// The tenant.
        tenant: String,
        /// The envelope's index.
        leaf_index: u64,
    },
    /// The turn already has an envelope.
    #[error(
        "turn {turn} is already sealed in the audit log; fix: seal each turn once, with all of its events"
    )]
    TurnAlreadySealed {
        /// The turn.
        turn: String,
    },
    /// The turn has no envelope in this tenant's log (it may belong to
    /// another tenant, which is not revealed).
    #[error("turn {turn} has no envelope in tenant {tenant}'s audit log")]
    TurnNotFound {
        /// The turn.
        turn: String,
        /// The tenant asked about.
        tenant: String,
    },
    /// The tenant has no envelope at that index.
    #[error("tenant {tenant}'s audit log has no envelope {index}")]
    NoSuchEnvelope {
        /// The tenant.
        tenant: String,
        /// The leaf index.
        index: u64,
    },
    /// The tenant's log has no checkpoint yet.
    #[error("tenant {tenant}'s audit log is empty")]
    EmptyLog {
        /// The tenant.
        tenant: String,
    },
    /// A proof could not be built for the sizes asked.
    #[error("cannot build the proof: {0}")]
    Proof(#[from] ProofError),
    /// The database disagrees with itself or with what this process wrote.
    #[error(
        "the audit log of tenant {tenant} is inconsistent: {detail}; fix: run `aibox audit verify --tenant {tenant}` and restore from a backup verified against an external checkpoint"
    )]
    Corrupt {
        /// The tenant.
        tenant: String,
        /// What disagrees.
        detail: String,
    },
    /// The tenant's log in the database is shorter than what this process
    /// already committed: it was truncated or rolled back underneath us.
    /// Appending would fork the log, so it is refused.
    #[error(
        "the audit log of tenant {tenant} went backwards (this process committed {had} envelopes, the database now holds {now}); appending is refused because it would fork the log; fix: find out who restored or truncated the database, restore the newest backup and verify it against the last published checkpoint"
    )]
    WentBackwards {
        /// The tenant.
        tenant: String,
        /// Envelopes this process had seen committed.
        had: u64,
        /// Envelopes in the database now.
        now: u64,
    },
    /// The recorded verifier key of the current version differs from the one
    /// derived from `AUDIT_SIGNING_KEY`.
    #[error(
        "audit_tenant_keys records another public key for tenant {tenant} version {version} than AUDIT_SIGNING_KEY derives; fix: the key table was tampered with or two different keys share a fingerprint: restore audit_tenant_keys from a backup and verify"
    )]
    KeyMismatch {
        /// The tenant.
        tenant: String,
        /// The version.
        version: u32,
    },
    /// A trusted checkpoint handed in by the caller could not be opened.
    #[error(
        "the trusted checkpoint is not valid for this tenant: {0}; fix: pass the signed checkpoint note exactly as published for this tenant"
    )]
    TrustedCheckpoint(#[source] CheckpointError),
    /// The writer has stopped (only at shutdown, or after a panic in it).
    #[error("the audit log writer has stopped; fix: restart aibox")]
    Closed,
}

impl AuditLogError {
    pub(crate) fn db(e: impl std::fmt::Display) -> Self {
        Self::Db(e.to_string())
    }
}

/// Why a receipt or bundle did not verify offline.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptError {
    /// The receipt's format field is unknown.
    #[error("unknown receipt format {0:?}; expected aibox-receipt/v1")]
    Format(String),
    /// A verifier key string is malformed.
    #[error("verifier key {index} is malformed: {cause}")]
    BadKey {
        /// Its position.
        index: usize,
        /// Why.
        cause: String,
    },
    /// The checkpoint did not open with the supplied keys.
    #[error("the checkpoint does not verify: {0}")]
    Checkpoint(String),
    /// The envelope did not open with the supplied keys.
    #[error("the envelope does not verify: {0}")]
    Envelope(String),
    /// The receipt belongs to another tenant than claimed or expected.
    #[error("the receipt is for another tenant: {0}")]
    WrongTenant(String),
    /// The receipt's turn differs from its envelope's.
    #[error("the receipt's turn does not match its envelope")]
    WrongTurn,
    /// The events are not exactly the envelope's events.
    #[error("the events do not match the envelope: {0}")]
    Events(String),
    /// The inclusion proof does not lead to the checkpoint's root.
    #[error("the inclusion proof does not verify: {0}")]
    Inclusion(String),
}
