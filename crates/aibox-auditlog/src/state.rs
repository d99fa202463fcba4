//! The backend-independent core of the log: preparing a turn on the
//! caller's task, sealing a batch of turns inside one transaction (the
//! group commit), the in-memory per-tenant heads and trees, and the read
//! paths (receipts, proofs, keys) over a small set of storage queries.
//!
//! Storage is reached through two traits, [`WriteTx`] and [`ReadOps`], with
//! async methods: PostgreSQL awaits the network, SQLite returns ready
//! futures that [`crate::verify::run_ready`] completes on its own thread.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use aibox_audit::NoteVerifier;
use aibox_audit::checkpoint::{Checkpoint, origin_for_tenant};
use aibox_audit::envelope::{Envelope, GENESIS_PREVIOUS};
use aibox_audit::keys::{AuditKeyMaterial, ENVELOPE_KEY_SUFFIX, TenantKeys};
use aibox_audit::merkle::{self, CoarseTree, Frontier, Hash};
use aibox_core::audit::AuditEvent;
use aibox_core::{TenantId, TurnId};
use tokio::sync::oneshot;

use crate::error::AuditLogError;
use crate::format::{
    self, ConsistencyProof, GENESIS_ROW_HASH, PublicKeyRecord, RECEIPT_FORMAT, Receipt, TurnRecord,
};
use crate::verify::{KeySet, note_text};

/// The most events one transaction seals; more queued turns wait for the
/// next transaction, which keeps a transaction's memory and latency bounded.
pub(crate) const MAX_BATCH_EVENTS: usize = 8192;

/// What one commit (one fsync) handles: the turns to seal with their
/// reply channels, and the tenants whose tail must be covered by a signed
/// checkpoint now (see [`Writer`]'s checkpoint cadence).
#[derive(Default)]
pub(crate) struct Batch {
    pub turns: Vec<Prepared>,
    pub replies: Vec<oneshot::Sender<Result<TurnRecord, AuditLogError>>>,
    pub covers: Vec<TenantId>,
    pub cover_replies: Vec<oneshot::Sender<Result<(), AuditLogError>>>,
}

impl Batch {
    /// A batch that only covers `tenants` (the writer's own timer).
    pub(crate) fn covering(tenants: Vec<TenantId>) -> Self {
        Self {
            covers: tenants,
            ..Self::default()
        }
    }

    /// Whether there is nothing to commit.
    pub(crate) fn is_empty(&self) -> bool {
        self.turns.is_empty() && self.covers.is_empty()
    }

    /// The tenants the batch touches, for [`Writer::rolled_back`].
    pub(crate) fn tenants(&self) -> Vec<String> {
        let mut t: Vec<String> = self
            .turns
            .iter()
            .map(|p| p.tenant.as_str().to_owned())
            .chain(self.covers.iter().map(|t| t.as_str().to_owned()))
            .collect();
        t.sort();
        t.dedup();
        t
    }

    /// Sends every requester the commit's outcome.
    fn reply(self, outcome: Result<Staged, AuditLogError>) {
        match outcome {
            Ok(staged) => {
                for (reply, o) in self.replies.into_iter().zip(staged.outcomes) {
                    let _ = reply.send(o);
                }
                for reply in self.cover_replies {
                    let _ = reply.send(Ok(()));
                }
            }
            Err(e) => {
                for reply in self.replies {
                    let _ = reply.send(Err(e.clone()));
                }
                for reply in self.cover_replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// The batch one commit (one fsync) seals: `first`, then whatever else is
/// already queued (`next` returns it without waiting) up to
/// [`MAX_BATCH_EVENTS`] events. Both writers (SQLite's thread, PostgreSQL's
/// task) group their commits with it.
pub(crate) fn gather_batch(first: Request, mut next: impl FnMut() -> Option<Request>) -> Batch {
    let mut batch = Batch::default();
    let mut events = 0;
    let mut item = Some(first);
    while let Some(r) = item {
        match r {
            Request::Turn { prepared, reply } => {
                events += prepared.events.len();
                batch.turns.push(prepared);
                batch.replies.push(reply);
            }
            Request::Cover { tenant, reply } => {
                if !batch.covers.contains(&tenant) {
                    batch.covers.push(tenant);
                }
                batch.cover_replies.push(reply);
            }
        }
        if events >= MAX_BATCH_EVENTS {
            break;
        }
        item = next();
    }
    batch
}

/// The head of a tenant's log: where the next row and envelope attach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Head {
    pub last_seq: u64,
    pub last_row_hash: Hash,
    pub tree_size: u64,
    pub last_envelope_hash: Hash,
}

impl Head {
    pub(crate) fn genesis() -> Self {
        Self {
            last_seq: 0,
            last_row_hash: GENESIS_ROW_HASH,
            tree_size: 0,
            last_envelope_hash: GENESIS_PREVIOUS,
        }
    }
}

/// A turn encoded and hashed on the caller's task, so that the writer only
/// chains, signs and stores.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub tenant: TenantId,
    pub turn: Option<TurnId>,
    pub events: Vec<String>,
    pub leaves: Vec<Hash>,
    pub events_root: Hash,
}

/// Checks and encodes the events of one turn.
pub(crate) fn prepare(
    tenant: &TenantId,
    turn: Option<TurnId>,
    events: Vec<AuditEvent>,
) -> Result<Prepared, AuditLogError> {
    use aibox_audit::EnvelopeError;
    if events.is_empty() {
        return Err(AuditLogError::Events(EnvelopeError::NoEvents));
    }
    let mut prefix = Vec::new();
    format::event_prefix(
        tenant.as_str(),
        turn.as_ref().map(TurnId::as_str),
        &mut prefix,
    );
    let mut encoded = Vec::with_capacity(events.len());
    let mut leaves = Vec::with_capacity(events.len());
    for (index, e) in events.iter().enumerate() {
        if &e.tenant != tenant {
            return Err(AuditLogError::Events(EnvelopeError::TenantMismatch {
                index,
            }));
        }
        if e.turn != turn {
            return Err(AuditLogError::Events(EnvelopeError::TurnMismatch { index }));
        }
        let bytes = e.canonical_bytes().map_err(|err| AuditLogError::Encoding {
            index,
            cause: err.to_string(),
        })?;
        // The verifier checks membership by this prefix; refusing here an
        // encoding it would reject keeps a format change from writing rows
        // that can never verify.
        if !bytes.starts_with(&prefix) {
            return Err(AuditLogError::Encoding {
                index,
                cause: "the canonical encoding does not start with the tenant and turn".into(),
            });
        }
        leaves.push(merkle::leaf_hash(&bytes));
        let text = String::from_utf8(bytes).map_err(|err| AuditLogError::Encoding {
            index,
            cause: err.to_string(),
        })?;
        encoded.push(text);
    }
    Ok(Prepared {
        tenant: tenant.clone(),
        turn,
        events_root: merkle::root(&leaves),
        events: encoded,
        leaves,
    })
}

/// A queued request for the writer.
pub(crate) enum Request {
    /// An `append_turn`.
    Turn {
        prepared: Prepared,
        reply: oneshot::Sender<Result<TurnRecord, AuditLogError>>,
    },
    /// Sign and store a checkpoint of the tenant's whole tree now, unless
    /// the newest stored one already covers it (receipts, proofs, exports
    /// and the published checkpoint ask for this).
    Cover {
        tenant: TenantId,
        reply: oneshot::Sender<Result<(), AuditLogError>>,
    },
}

/// The key material and origin prefix shared by the writer and readers.
#[derive(Debug, Clone)]
pub(crate) struct Signing {
    pub material: AuditKeyMaterial,
    pub prefix: String,
}

impl Signing {
    pub(crate) fn origin(&self, tenant: &str) -> Result<String, AuditLogError> {
        let t = TenantId::new(tenant).map_err(|e| AuditLogError::Corrupt {
            tenant: "(invalid)".into(),
            detail: e.to_string(),
        })?;
        origin_for_tenant(&self.prefix, &t).map_err(AuditLogError::Origin)
    }

    pub(crate) fn tenant_keys(&self, tenant: &str) -> Result<TenantKeys, AuditLogError> {
        Ok(self.material.tenant_keys(&self.origin(tenant)?)?)
    }

    pub(crate) fn version(&self) -> u32 {
        self.material.version()
    }

    /// The current version's verifier keys for `tenant`.
    pub(crate) fn current_record(&self, tenant: &str) -> Result<PublicKeyRecord, AuditLogError> {
        let (checkpoint_key, envelope_key) = self.tenant_keys(tenant)?.verifier_keys();
        Ok(PublicKeyRecord {
            version: self.version(),
            checkpoint_key,
            envelope_key,
        })
    }
}

/// The most leaf hashes read from the database in one query when a tree is
/// built or extended (2 MiB), so that loading a large log never holds more
/// than this many at once.
pub(crate) const LOAD_CHUNK: u64 = 1 << 16;

/// What the writer knows about one tenant.
struct TenantState {
    origin: String,
    keys: TenantKeys,
    keys_recorded: bool,
    /// Only the right edge of the tenant's tree: appending and the
    /// checkpoint's root need nothing else, so the writer's memory does not
    /// grow with the log (issue 9). Proofs are the readers' job.
    tree: Frontier,
    head: Head,
    /// The size of the newest checkpoint stored (by this process, or found
    /// when the tenant was loaded or covered).
    checkpoint_size: u64,
    /// When this process last signed a checkpoint of the tenant (0: not
    /// yet), for the cadence.
    checkpoint_ms: u64,
}

/// Appends the stored envelope leaf hashes `[frontier.size(), to)` to
/// `frontier`, reading at most [`LOAD_CHUNK`] per query. It stops early
/// when the database holds fewer; the caller compares the sizes.
async fn extend_frontier<T: WriteTx>(
    tx: &mut T,
    tenant: &str,
    frontier: &mut Frontier,
    to: u64,
) -> Result<(), AuditLogError> {
    extend_frontier_by(tx, tenant, frontier, to, LOAD_CHUNK).await
}

/// [`extend_frontier`] with the chunk size as a parameter, for the tests.
async fn extend_frontier_by<T: WriteTx>(
    tx: &mut T,
    tenant: &str,
    frontier: &mut Frontier,
    to: u64,
    chunk: u64,
) -> Result<(), AuditLogError> {
    while frontier.size() < to {
        let from = frontier.size();
        let end = to.min(from.saturating_add(chunk.max(1)));
        let leaves = tx.leaf_hashes(tenant, from, end).await?;
        let got = leaves.len() as u64;
        frontier.extend(leaves);
        if got != end - from {
            break;
        }
    }
    Ok(())
}

/// One row to insert.
#[derive(Debug)]
pub(crate) struct RowIns {
    pub tenant: String,
    pub seq: u64,
    pub turn: Option<String>,
    pub event: String,
    pub prev: Hash,
    pub hash: Hash,
}

/// One envelope to insert.
#[derive(Debug)]
pub(crate) struct EnvIns {
    pub tenant: String,
    pub leaf_index: u64,
    pub turn: Option<String>,
    pub first_seq: u64,
    pub last_seq: u64,
    pub key_version: u32,
    pub leaf_hash: Hash,
    pub note: String,
}

/// One checkpoint to insert.
#[derive(Debug)]
pub(crate) struct CpIns {
    pub tenant: String,
    pub size: u64,
    pub key_version: u32,
    pub root: Hash,
    pub note: String,
}

/// Everything one transaction writes.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    pub rows: Vec<RowIns>,
    pub envelopes: Vec<EnvIns>,
    pub checkpoints: Vec<CpIns>,
    pub heads: Vec<(String, Head)>,
    pub now_ms: i64,
}

/// The storage side of one write transaction.
pub(crate) trait WriteTx {
    /// Creates the tenant's head row if missing and returns it, locked
    /// until the transaction ends.
    async fn lock_head(&mut self, tenant: &str) -> Result<Head, AuditLogError>;
    /// The stored envelope leaf hashes of `[from, to)`, in order.
    async fn leaf_hashes(
        &mut self,
        tenant: &str,
        from: u64,
        to: u64,
    ) -> Result<Vec<Hash>, AuditLogError>;
    /// Which of `turns` already have an envelope.
    async fn sealed_turns(&mut self, turns: &[String]) -> Result<HashSet<String>, AuditLogError>;
    /// Records the tenant's verifier keys of a version unless present, and
    /// returns what is recorded afterwards.
    async fn record_keys(
        &mut self,
        tenant: &str,
        rec: &PublicKeyRecord,
        now_ms: i64,
    ) -> Result<PublicKeyRecord, AuditLogError>;
    /// Returns the tenant's head, locked until the transaction ends, if
    /// the tenant has one (a cover must not create a log).
    async fn lock_existing_head(&mut self, tenant: &str) -> Result<Option<Head>, AuditLogError>;
    /// The size of the tenant's newest stored checkpoint (0: none).
    async fn newest_checkpoint_size(&mut self, tenant: &str) -> Result<u64, AuditLogError>;
    /// Writes the plan.
    async fn write(&mut self, plan: &Plan) -> Result<(), AuditLogError>;
}

/// The outcome of staging a batch: one result per request, in order.
pub(crate) struct Staged {
    pub outcomes: Vec<Result<TurnRecord, AuditLogError>>,
    tenants: Vec<String>,
}

/// The writer's per-tenant state: heads and trees of what was committed,
/// reloaded from the database whenever another process advanced a tenant.
///
/// Checkpoint cadence: every envelope is signed in the transaction that
/// stores it, but a tenant's checkpoint is signed at most once per
/// `checkpoint_interval` (0: in every transaction, as before session 9).
/// Under a steady stream of turns that saves one Ed25519 signature and one
/// row in most commits. A tail not yet covered is covered when it is
/// `checkpoint_interval` old (the writer's timer), or at once when a
/// reader needs a checkpoint over it ([`Request::Cover`]: receipts,
/// proofs, exports, the published checkpoint, verification).
pub(crate) struct Writer {
    signing: Signing,
    tenants: HashMap<String, TenantState>,
    interval_ms: u64,
}

impl Writer {
    pub(crate) fn new(signing: Signing, checkpoint_interval: std::time::Duration) -> Self {
        Self {
            signing,
            tenants: HashMap::new(),
            interval_ms: u64::try_from(checkpoint_interval.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// How long until the oldest uncovered tail is due for a checkpoint,
    /// or `None` when every tail is covered.
    pub(crate) fn next_due(&self, now_ms: u64) -> Option<std::time::Duration> {
        self.tenants
            .values()
            .filter(|st| st.tree.size() > st.checkpoint_size)
            .map(|st| {
                st.checkpoint_ms
                    .saturating_add(self.interval_ms)
                    .saturating_sub(now_ms)
            })
            .min()
            .map(std::time::Duration::from_millis)
    }

    /// The tenants whose uncovered tail is due at `now_ms` (every
    /// uncovered one with `all`, at shutdown).
    pub(crate) fn due(&self, now_ms: u64, all: bool) -> Vec<TenantId> {
        self.tenants
            .iter()
            .filter(|(_, st)| {
                st.tree.size() > st.checkpoint_size
                    && (all || now_ms.saturating_sub(st.checkpoint_ms) >= self.interval_ms)
            })
            .filter_map(|(t, _)| TenantId::new(t.clone()).ok())
            .collect()
    }

    /// Brings the cached state of `tenant` in line with the locked head.
    async fn reconcile<T: WriteTx>(
        &mut self,
        tx: &mut T,
        tenant: &str,
        head: Head,
    ) -> Result<(), AuditLogError> {
        let corrupt = |detail: String| AuditLogError::Corrupt {
            tenant: tenant.to_owned(),
            detail,
        };
        match self.tenants.get_mut(tenant) {
            Some(st) if st.head == head => {}
            Some(st) => {
                let had = st.tree.size();
                if head.tree_size < had || head.last_seq < st.head.last_seq {
                    // Keep the state: this process keeps refusing to append
                    // on top of a log that lost what it committed.
                    return Err(AuditLogError::WentBackwards {
                        tenant: tenant.to_owned(),
                        had,
                        now: head.tree_size,
                    });
                }
                if head.tree_size == had {
                    return Err(corrupt("the head changed without new envelopes".to_owned()));
                }
                // Another process appended: extend the tree by what it wrote.
                extend_frontier(tx, tenant, &mut st.tree, head.tree_size).await?;
                if st.tree.size() != head.tree_size {
                    let stored = st.tree.size();
                    self.tenants.remove(tenant);
                    return Err(corrupt(format!(
                        "the head records {} envelopes but only {stored} are stored",
                        head.tree_size,
                    )));
                }
                if st.tree.last_leaf_hash() != Some(head.last_envelope_hash) {
                    self.tenants.remove(tenant);
                    return Err(corrupt(
                        "the last envelope differs from the head's".to_owned(),
                    ));
                }
                st.head = head;
            }
            None => {
                let mut tree = Frontier::new();
                extend_frontier(tx, tenant, &mut tree, head.tree_size).await?;
                if tree.size() != head.tree_size {
                    return Err(corrupt(format!(
                        "the head records {} envelopes but {} are stored",
                        head.tree_size,
                        tree.size()
                    )));
                }
                let last = tree.last_leaf_hash().unwrap_or(GENESIS_PREVIOUS);
                if last != head.last_envelope_hash {
                    return Err(corrupt(
                        "the last envelope differs from the head's".to_owned(),
                    ));
                }
                let origin = self.signing.origin(tenant)?;
                let keys = self.signing.material.tenant_keys(&origin)?;
                let checkpoint_size = tx.newest_checkpoint_size(tenant).await?;
                self.tenants.insert(
                    tenant.to_owned(),
                    TenantState {
                        origin,
                        keys,
                        keys_recorded: false,
                        tree,
                        head,
                        checkpoint_size,
                        // A tail left uncovered by an earlier run is due
                        // at this process's first commit.
                        checkpoint_ms: 0,
                    },
                );
            }
        }
        Ok(())
    }

    /// Seals `batch` inside the caller's open transaction. Requests refused
    /// for their own reasons (a turn sealed before, a tenant whose log went
    /// backwards) get their error; an `Err` means the transaction must be
    /// rolled back and every request fails.
    pub(crate) async fn stage<T: WriteTx>(
        &mut self,
        tx: &mut T,
        batch: Vec<Prepared>,
        covers: &[TenantId],
        now_ms: u64,
    ) -> Result<Staged, AuditLogError> {
        let now = i64::try_from(now_ms).unwrap_or(i64::MAX);
        let mut outcomes: Vec<Option<Result<TurnRecord, AuditLogError>>> =
            batch.iter().map(|_| None).collect();

        // Lock heads in one global order, so that two processes sealing
        // overlapping sets of tenants cannot deadlock.
        let mut tenants: Vec<String> = batch.iter().map(|p| p.tenant.as_str().to_owned()).collect();
        tenants.sort();
        tenants.dedup();
        let mut locked: Vec<&str> = tenants
            .iter()
            .map(String::as_str)
            .chain(covers.iter().map(TenantId::as_str))
            .collect();
        locked.sort_unstable();
        locked.dedup();
        let mut refused: HashMap<String, AuditLogError> = HashMap::new();
        let mut covering: Vec<String> = Vec::new();
        for t in locked {
            let head = if tenants.binary_search_by(|x| x.as_str().cmp(t)).is_ok() {
                tx.lock_head(t).await?
            } else {
                // Only covered: a tenant without a log has nothing to cover.
                match tx.lock_existing_head(t).await? {
                    Some(h) if h.tree_size > 0 => h,
                    _ => continue,
                }
            };
            if covers.iter().any(|c| c.as_str() == t) {
                covering.push(t.to_owned());
            }
            match self.reconcile(tx, t, head).await {
                Ok(()) => {}
                Err(e @ (AuditLogError::Db(_) | AuditLogError::Closed)) => return Err(e),
                Err(e) => {
                    tracing::error!(tenant = %t, error = %e, "audit append refused");
                    refused.insert(t.to_owned(), e);
                }
            }
        }

        // A turn is sealed once: refuse repeats, in storage and in the batch.
        let turns: Vec<String> = batch
            .iter()
            .filter_map(|p| p.turn.as_ref().map(|t| t.as_str().to_owned()))
            .collect();
        let mut sealed = if turns.is_empty() {
            HashSet::new()
        } else {
            tx.sealed_turns(&turns).await?
        };
        for (i, p) in batch.iter().enumerate() {
            if let Some(e) = refused.get(p.tenant.as_str()) {
                outcomes[i] = Some(Err(e.clone()));
            } else if let Some(turn) = &p.turn
                && !sealed.insert(turn.as_str().to_owned())
            {
                outcomes[i] = Some(Err(AuditLogError::TurnAlreadySealed {
                    turn: turn.as_str().to_owned(),
                }));
            }
        }

        // Every tenant this transaction may sign for: the turns' and the
        // covered ones.
        for t in &covering {
            if !tenants.contains(t) {
                tenants.push(t.clone());
            }
        }

        // The first envelope or checkpoint a process signs for a tenant
        // records the tenant's verifier keys of the current version in the
        // same transaction, so no signature is ever stored without its key.
        let version = self.signing.version();
        for t in &tenants {
            let Some(st) = self.tenants.get(t.as_str()) else {
                continue;
            };
            if st.keys_recorded || refused.contains_key(t) {
                continue;
            }
            let (checkpoint_key, envelope_key) = st.keys.verifier_keys();
            let want = PublicKeyRecord {
                version,
                checkpoint_key,
                envelope_key,
            };
            let got = tx.record_keys(t, &want, now).await?;
            if got != want {
                return Err(AuditLogError::KeyMismatch {
                    tenant: t.clone(),
                    version,
                });
            }
        }

        let mut plan = Plan {
            now_ms: now,
            ..Plan::default()
        };
        let mut touched: Vec<String> = Vec::new();
        for (i, p) in batch.into_iter().enumerate() {
            if outcomes[i].is_some() {
                continue;
            }
            let tenant = p.tenant.as_str().to_owned();
            let Some(st) = self.tenants.get_mut(&tenant) else {
                outcomes[i] = Some(Err(AuditLogError::Closed));
                continue;
            };
            match seal(st, &mut plan, p, now_ms, version) {
                Ok(rec) => outcomes[i] = Some(Ok(rec)),
                Err(e) => return Err(e),
            }
            if !touched.contains(&tenant) {
                touched.push(tenant);
            }
        }

        for t in &touched {
            if let Some(st) = self.tenants.get(t.as_str()) {
                plan.heads.push((t.clone(), st.head.clone()));
            }
        }

        // At most one signed checkpoint per tenant per transaction, of the
        // head after all of this batch's turns: when the tenant's cadence
        // is due, or when a reader asked for its tail to be covered.
        let mut sign: Vec<String> = Vec::new();
        for t in &touched {
            if let Some(st) = self.tenants.get(t.as_str())
                && st.tree.size() > st.checkpoint_size
                && now_ms.saturating_sub(st.checkpoint_ms) >= self.interval_ms
            {
                sign.push(t.clone());
            }
        }
        for t in &covering {
            if refused.contains_key(t) || sign.contains(t) {
                continue;
            }
            // Another process (or an earlier run) may have covered it.
            let stored = tx.newest_checkpoint_size(t).await?;
            if let Some(st) = self.tenants.get_mut(t.as_str()) {
                st.checkpoint_size = st.checkpoint_size.max(stored);
                if st.tree.size() > st.checkpoint_size {
                    sign.push(t.clone());
                }
            }
        }
        let mut checkpoints: HashMap<String, String> = HashMap::new();
        for t in &sign {
            let Some(st) = self.tenants.get_mut(t.as_str()) else {
                continue;
            };
            let size = st.tree.size();
            let root = st.tree.root();
            let signed = Checkpoint::new(&st.origin, size, root)
                .and_then(|c| c.sign(&st.keys.checkpoint))
                .map_err(|e| AuditLogError::Corrupt {
                    tenant: t.clone(),
                    detail: e.to_string(),
                })?;
            plan.checkpoints.push(CpIns {
                tenant: t.clone(),
                size,
                key_version: version,
                root,
                note: signed.clone(),
            });
            // Rolled back with the rest if the commit fails (the tenant's
            // state is then dropped and reloaded).
            st.checkpoint_size = size;
            st.checkpoint_ms = now_ms;
            checkpoints.insert(t.clone(), signed);
        }
        let outcomes: Vec<Result<TurnRecord, AuditLogError>> = outcomes
            .into_iter()
            .map(|o| {
                let mut r = o.unwrap_or(Err(AuditLogError::Closed))?;
                if let Some(st) = self.tenants.get(r.tenant.as_str()) {
                    r.tree_size = st.tree.size();
                }
                r.checkpoint = checkpoints.get(r.tenant.as_str()).cloned();
                Ok(r)
            })
            .collect();
        tx.write(&plan).await?;
        Ok(Staged { outcomes, tenants })
    }

    /// After a batch's transaction (both writers): updates the state for
    /// its outcome and answers its requesters. `tenants` is
    /// [`Batch::tenants`] taken before the turns were moved out.
    pub(crate) fn settle(
        &mut self,
        batch: Batch,
        tenants: &[String],
        outcome: Result<Staged, AuditLogError>,
    ) {
        match &outcome {
            Ok(staged) => self.committed(staged),
            Err(e) => {
                tracing::error!(error = %e, turns = batch.replies.len(), "audit transaction failed; nothing of it was written");
                self.rolled_back(tenants);
            }
        }
        batch.reply(outcome);
    }

    /// After the commit: the keys of the touched tenants are recorded.
    fn committed(&mut self, staged: &Staged) {
        for t in &staged.tenants {
            if let Some(st) = self.tenants.get_mut(t.as_str()) {
                st.keys_recorded = true;
            }
        }
    }

    /// After a failed transaction: forget what it changed in memory; the
    /// next batch reloads those tenants from the database.
    fn rolled_back(&mut self, tenants: &[String]) {
        for t in tenants {
            self.tenants.remove(t.as_str());
        }
    }
}

/// Chains, seals and signs one turn on top of `st`, adding its rows and
/// envelope to `plan`.
fn seal(
    st: &mut TenantState,
    plan: &mut Plan,
    p: Prepared,
    now_ms: u64,
    version: u32,
) -> Result<TurnRecord, AuditLogError> {
    let tenant = p.tenant.as_str();
    let first_seq = st.head.last_seq + 1;
    let count = p.events.len() as u64;
    let mut prev = st.head.last_row_hash;
    for (i, (event, leaf)) in p.events.into_iter().zip(&p.leaves).enumerate() {
        let seq = first_seq + i as u64;
        let hash = format::row_hash(tenant, seq, &prev, leaf);
        plan.rows.push(RowIns {
            tenant: tenant.to_owned(),
            seq,
            turn: p.turn.as_ref().map(|t| t.as_str().to_owned()),
            event,
            prev,
            hash,
        });
        prev = hash;
    }
    let env = Envelope {
        tenant: p.tenant.clone(),
        turn: p.turn.clone(),
        first_seq,
        last_seq: first_seq + count - 1,
        event_count: count,
        events_root: p.events_root,
        previous: st.head.last_envelope_hash,
        sealed_at_ms: now_ms,
    };
    let signed = env.sign(&st.keys.envelope).map_err(AuditLogError::Events)?;
    let leaf = env.leaf_hash();
    let leaf_index = st.tree.push_leaf_hash(leaf);
    st.head = Head {
        last_seq: env.last_seq,
        last_row_hash: prev,
        tree_size: st.tree.size(),
        last_envelope_hash: leaf,
    };
    plan.envelopes.push(EnvIns {
        tenant: tenant.to_owned(),
        leaf_index,
        turn: p.turn.as_ref().map(|t| t.as_str().to_owned()),
        first_seq,
        last_seq: env.last_seq,
        key_version: version,
        leaf_hash: leaf,
        note: signed.clone(),
    });
    Ok(TurnRecord {
        tenant: p.tenant,
        turn: p.turn,
        first_seq,
        last_seq: env.last_seq,
        leaf_index,
        envelope: signed,
        key_version: version,
        tree_size: 0,
        checkpoint: None,
    })
}

/// An envelope as the read paths need it.
#[derive(Debug, Clone)]
pub(crate) struct EnvRow {
    pub tenant: String,
    pub leaf_index: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    pub key_version: u32,
    pub note: String,
}

/// A checkpoint as the read paths need it.
#[derive(Debug, Clone)]
pub(crate) struct CpRow {
    pub size: u64,
    pub note: String,
}

/// The storage queries of the read paths.
pub(crate) trait ReadOps {
    async fn envelope_by_turn(&mut self, turn: &str) -> Result<Option<EnvRow>, AuditLogError>;
    async fn envelope_at(
        &mut self,
        tenant: &str,
        index: u64,
    ) -> Result<Option<EnvRow>, AuditLogError>;
    async fn events(
        &mut self,
        tenant: &str,
        first: u64,
        last: u64,
    ) -> Result<Vec<String>, AuditLogError>;
    async fn latest_checkpoint(&mut self, tenant: &str) -> Result<Option<CpRow>, AuditLogError>;
    async fn checkpoint_at(
        &mut self,
        tenant: &str,
        size: u64,
    ) -> Result<Option<CpRow>, AuditLogError>;
    async fn leaf_hashes(
        &mut self,
        tenant: &str,
        from: u64,
        to: u64,
    ) -> Result<Vec<Hash>, AuditLogError>;
    async fn tenant_keys(&mut self, tenant: &str) -> Result<Vec<PublicKeyRecord>, AuditLogError>;
}

/// The base-two logarithm of the readers' block width: the proof cache
/// keeps the hash of every complete block of 64 leaves and everything
/// above it (one byte per envelope), and reads the leaves below that level
/// from the database. Blocks of 64 rather than 256 leaves took the receipt
/// p99 at a million entries from 1.14 to 0.48 ms (fewer leaves read and
/// hashed per proof) for three quarters of a byte more per envelope.
pub(crate) const BLOCK_SHIFT: u32 = 6;

/// How many blocks of leaf hashes (2 KiB each) the readers keep, over all
/// tenants, least recently used out first: 1 MiB. The newest, partial
/// block of each active tenant is needed by every proof and so stays.
pub(crate) const CACHED_BLOCKS: usize = 512;

/// The readers' proof cache: per tenant a [`CoarseTree`] of the committed
/// envelopes' complete blocks, plus a bounded LRU of leaf-hash blocks.
/// Committed leaves never change, so everything cached is a prefix of what
/// is stored (unless the database is tampered with, which proofs against
/// signed checkpoints then expose). Memory grows by 64 bytes per 64
/// envelopes per tenant, instead of 32 bytes per envelope (issue 9).
#[derive(Default)]
pub(crate) struct TreeCache {
    inner: Mutex<CacheInner>,
}

#[derive(Default)]
struct CacheInner {
    trees: HashMap<String, CoarseTree>,
    blocks: HashMap<(String, u64), CachedBlock>,
    clock: u64,
}

/// The leaf hashes of one block read so far (the newest block of a log
/// may be partial) and when the block was last used.
struct CachedBlock {
    leaves: Vec<Hash>,
    used: u64,
}

impl CacheInner {
    /// The cached leaves of block `b` of `tenant`, marked as used.
    fn block(&mut self, tenant: &str, b: u64) -> Option<&[Hash]> {
        self.clock += 1;
        let clock = self.clock;
        let e = self.blocks.get_mut(&(tenant.to_owned(), b))?;
        e.used = clock;
        Some(&e.leaves)
    }

    /// Stores (or extends) block `b` of `tenant` and evicts the least
    /// recently used blocks beyond [`CACHED_BLOCKS`].
    fn store_block(&mut self, tenant: &str, b: u64, from: usize, more: &[Hash]) {
        self.clock += 1;
        let used = self.clock;
        let e = self
            .blocks
            .entry((tenant.to_owned(), b))
            .or_insert_with(|| CachedBlock {
                leaves: Vec::new(),
                used,
            });
        e.used = used;
        // Another reader may have extended the block meanwhile; keep only
        // what continues it.
        if e.leaves.len() >= from {
            let skip = e.leaves.len() - from;
            e.leaves.extend(more.iter().skip(skip));
        }
        while self.blocks.len() > CACHED_BLOCKS {
            let Some(oldest) = self
                .blocks
                .iter()
                .min_by_key(|(_, v)| v.used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            self.blocks.remove(&oldest);
        }
    }
}

impl TreeCache {
    fn lock(&self) -> Result<std::sync::MutexGuard<'_, CacheInner>, AuditLogError> {
        self.inner.lock().map_err(|_| AuditLogError::Closed)
    }

    /// Runs `f` on the tenant's coarse tree and a leaf source covering the
    /// blocks `blocks` of a tree of `size` leaves (see
    /// [`CoarseTree::proof_blocks`]). The tree is first extended to every
    /// complete block below `size`, [`LOAD_CHUNK`] leaves per query; each
    /// needed block not cached is read with one range query.
    async fn with_tree<R: ReadOps, T>(
        &self,
        r: &mut R,
        tenant: &str,
        size: u64,
        blocks: [u64; 2],
        f: impl FnOnce(&CoarseTree, &dyn Fn(u64, u64) -> Option<Hash>) -> Result<T, AuditLogError>,
    ) -> Result<T, AuditLogError> {
        let corrupt = |stored: u64| AuditLogError::Corrupt {
            tenant: tenant.to_owned(),
            detail: format!("a checkpoint covers {size} envelopes but only {stored} are stored"),
        };
        let width = 1u64 << BLOCK_SHIFT;
        let need_blocks = size >> BLOCK_SHIFT;
        loop {
            let have = self
                .lock()?
                .trees
                .get(tenant)
                .map_or(0, CoarseTree::complete_blocks);
            if have >= need_blocks {
                break;
            }
            let from = have << BLOCK_SHIFT;
            let to = need_blocks.min(have + (LOAD_CHUNK >> BLOCK_SHIFT)) << BLOCK_SHIFT;
            let leaves = r.leaf_hashes(tenant, from, to).await?;
            if (leaves.len() as u64) < to - from {
                return Err(corrupt(from + leaves.len() as u64));
            }
            let mut inner = self.lock()?;
            let tree = inner
                .trees
                .entry(tenant.to_owned())
                .or_insert_with(|| CoarseTree::new(BLOCK_SHIFT));
            // Another reader may have extended the tree meanwhile.
            if tree.complete_blocks() == have {
                for block in leaves.chunks(width as usize) {
                    tree.push_block(block)?;
                }
            }
        }

        // The leaves of the needed blocks: from the cache, the rest read.
        let mut wanted: Vec<u64> = blocks.to_vec();
        wanted.dedup();
        let mut local: Vec<(u64, Vec<Hash>)> = Vec::with_capacity(2);
        for b in wanted {
            let start = b << BLOCK_SHIFT;
            let end = size.min(start.saturating_add(width));
            if start >= end {
                continue;
            }
            let len = (end - start) as usize;
            let mut leaves = self
                .lock()?
                .block(tenant, b)
                .map(|l| l[..l.len().min(len)].to_vec())
                .unwrap_or_default();
            if leaves.len() < len {
                let from = leaves.len();
                let more = r.leaf_hashes(tenant, start + from as u64, end).await?;
                if more.len() < len - from {
                    return Err(corrupt(start + (from + more.len()) as u64));
                }
                self.lock()?.store_block(tenant, b, from, &more);
                leaves.extend(more);
            }
            local.push((start, leaves));
        }
        let source = |a: u64, b: u64| -> Option<Hash> {
            let (start, leaves) = local
                .iter()
                .find(|(start, l)| *start <= a && b <= *start + l.len() as u64)?;
            let slice = leaves.get((a - start) as usize..(b - start) as usize)?;
            Some(merkle::root(slice))
        };
        let inner = self.lock()?;
        let empty = CoarseTree::new(BLOCK_SHIFT);
        let tree = inner.trees.get(tenant).unwrap_or(&empty);
        f(tree, &source)
    }
}

/// Builds the receipt of one stored envelope against the newest checkpoint.
pub(crate) async fn build_receipt<R: ReadOps>(
    r: &mut R,
    cache: &TreeCache,
    env: EnvRow,
) -> Result<Receipt, AuditLogError> {
    let tenant = env.tenant.clone();
    let corrupt = |detail: String| AuditLogError::Corrupt {
        tenant: tenant.clone(),
        detail,
    };
    let events = r.events(&tenant, env.first_seq, env.last_seq).await?;
    let uncovered = || AuditLogError::Uncovered {
        tenant: tenant.clone(),
        leaf_index: env.leaf_index,
    };
    let cp = r.latest_checkpoint(&tenant).await?.ok_or_else(uncovered)?;
    if cp.size <= env.leaf_index {
        return Err(uncovered());
    }
    let cp_root = note_text(&cp.note)
        .and_then(|t| Checkpoint::parse(t).ok())
        .map(|c| *c.root())
        .ok_or_else(|| corrupt("a stored checkpoint is malformed".to_owned()))?;
    let blocks = CoarseTree::new(BLOCK_SHIFT).proof_blocks(env.leaf_index, cp.size);
    let proof = cache
        .with_tree(r, &tenant, cp.size, blocks, |tree, leaves| {
            if tree.root_at(cp.size, leaves)? != cp_root {
                return Err(AuditLogError::Corrupt {
                    tenant: tenant.clone(),
                    detail: "the stored envelopes do not match the newest checkpoint".into(),
                });
            }
            Ok(tree.inclusion_proof(env.leaf_index, cp.size, leaves)?)
        })
        .await?;
    let text = note_text(&env.note).unwrap_or_default();
    let parsed = Envelope::parse(text).map_err(|e| corrupt(e.to_string()))?;
    Ok(Receipt {
        format: RECEIPT_FORMAT.to_owned(),
        tenant: parsed.tenant,
        turn: parsed.turn,
        events,
        envelope: env.note,
        key_version: env.key_version,
        leaf_index: env.leaf_index,
        tree_size: cp.size,
        inclusion_proof: proof.iter().map(|h| format::b64(h)).collect(),
        checkpoint: cp.note,
    })
}

/// The receipt of `turn`, refusing a turn of another tenant without
/// revealing whose it is.
pub(crate) async fn receipt_for_turn<R: ReadOps>(
    r: &mut R,
    cache: &TreeCache,
    tenant: &TenantId,
    turn: &TurnId,
) -> Result<Receipt, AuditLogError> {
    let not_found = || AuditLogError::TurnNotFound {
        turn: turn.as_str().to_owned(),
        tenant: tenant.as_str().to_owned(),
    };
    let env = r
        .envelope_by_turn(turn.as_str())
        .await?
        .ok_or_else(not_found)?;
    if env.tenant != tenant.as_str() {
        return Err(not_found());
    }
    build_receipt(r, cache, env).await
}

/// The receipt of the envelope at `index`.
pub(crate) async fn receipt_at<R: ReadOps>(
    r: &mut R,
    cache: &TreeCache,
    tenant: &TenantId,
    index: u64,
) -> Result<Receipt, AuditLogError> {
    let env = r
        .envelope_at(tenant.as_str(), index)
        .await?
        .ok_or_else(|| AuditLogError::NoSuchEnvelope {
            tenant: tenant.as_str().to_owned(),
            index,
        })?;
    build_receipt(r, cache, env).await
}

/// A consistency proof between two sizes, with the stored checkpoints of
/// those sizes.
pub(crate) async fn consistency<R: ReadOps>(
    r: &mut R,
    cache: &TreeCache,
    tenant: &TenantId,
    old_size: u64,
    new_size: u64,
) -> Result<ConsistencyProof, AuditLogError> {
    let t = tenant.as_str();
    let newest = r.latest_checkpoint(t).await?.map_or(0, |c| c.size);
    if new_size > newest {
        return Err(AuditLogError::Proof(merkle::ProofError::BeyondTree {
            size: new_size,
            tree_size: newest,
        }));
    }
    let blocks = CoarseTree::new(BLOCK_SHIFT).proof_blocks(old_size.saturating_sub(1), new_size);
    let proof = cache
        .with_tree(r, t, new_size, blocks, |tree, leaves| {
            Ok(tree.consistency_proof(old_size, new_size, leaves)?)
        })
        .await?;
    let old_checkpoint = r.checkpoint_at(t, old_size).await?.map(|c| c.note);
    let new_checkpoint = r.checkpoint_at(t, new_size).await?.map(|c| c.note);
    Ok(ConsistencyProof {
        tenant: tenant.clone(),
        old_size,
        new_size,
        proof: proof.iter().map(|h| format::b64(h)).collect(),
        old_checkpoint,
        new_checkpoint,
    })
}

/// The recorded verifier keys of a tenant plus the current version's
/// (derived, and checked against the record when there is one).
pub(crate) async fn public_keys<R: ReadOps>(
    r: &mut R,
    signing: &Signing,
    tenant: &TenantId,
) -> Result<Vec<PublicKeyRecord>, AuditLogError> {
    let mut recorded = r.tenant_keys(tenant.as_str()).await?;
    let current = signing.current_record(tenant.as_str())?;
    match recorded.iter().find(|k| k.version == current.version) {
        Some(k) if *k != current => {
            return Err(AuditLogError::KeyMismatch {
                tenant: tenant.as_str().to_owned(),
                version: current.version,
            });
        }
        Some(_) => {}
        None => recorded.push(current),
    }
    recorded.sort_by_key(|k| k.version);
    Ok(recorded)
}

/// The database verification key set of a tenant: every recorded version,
/// each key parsed and named for this tenant's origin; the current
/// version's record must equal what `AUDIT_SIGNING_KEY` derives.
pub(crate) fn recorded_key_set(
    signing: &Signing,
    tenant: &str,
    recorded: &[PublicKeyRecord],
) -> Result<KeySet, String> {
    let origin = signing.origin(tenant).map_err(|e| e.to_string())?;
    let env_name = format!("{origin}{ENVELOPE_KEY_SUFFIX}");
    let current = signing.current_record(tenant).map_err(|e| e.to_string())?;
    let mut map = BTreeMap::new();
    for k in recorded {
        if k.version == current.version && *k != current {
            return Err(format!(
                "the recorded public key of version {} differs from the one AUDIT_SIGNING_KEY derives (audit_tenant_keys was tampered with)",
                k.version
            ));
        }
        let parse = |s: &str, name: &str| -> Result<NoteVerifier, String> {
            let v = NoteVerifier::from_key_string(s)
                .map_err(|e| format!("recorded key of version {} is malformed: {e}", k.version))?;
            if v.name() != name {
                return Err(format!(
                    "recorded key of version {} is named {:?}, not {name:?}",
                    k.version,
                    v.name()
                ));
            }
            Ok(v)
        };
        map.insert(
            k.version,
            (
                parse(&k.checkpoint_key, &origin)?,
                parse(&k.envelope_key, &env_name)?,
            ),
        );
    }
    Ok(KeySet::ByVersion(map))
}

/// Opens a checkpoint the caller keeps outside the database with the
/// tenant's recorded and current log keys.
pub(crate) fn open_trusted(
    signing: &Signing,
    tenant: &str,
    recorded: &[PublicKeyRecord],
    trusted: &[u8],
) -> Result<Checkpoint, AuditLogError> {
    let origin = signing.origin(tenant)?;
    let mut keys: Vec<NoteVerifier> = Vec::new();
    let current = signing.current_record(tenant)?;
    for k in recorded.iter().chain(std::iter::once(&current)) {
        if let Ok(v) = NoteVerifier::from_key_string(&k.checkpoint_key)
            && !keys.contains(&v)
        {
            keys.push(v);
        }
    }
    let cp =
        aibox_audit::checkpoint::open(trusted, &keys).map_err(AuditLogError::TrustedCheckpoint)?;
    if cp.origin() != origin {
        return Err(AuditLogError::TrustedCheckpoint(
            aibox_audit::CheckpointError::KeyNameMismatch {
                key_name: origin,
                origin: cp.origin().to_owned(),
            },
        ));
    }
    Ok(cp)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::verify::run_ready;

    /// A write transaction over a list of stored leaf hashes that records
    /// every range it was asked for.
    struct FakeTx {
        stored: Vec<Hash>,
        asked: Vec<(u64, u64)>,
    }

    impl WriteTx for FakeTx {
        async fn lock_head(&mut self, _tenant: &str) -> Result<Head, AuditLogError> {
            Ok(Head::genesis())
        }
        async fn leaf_hashes(
            &mut self,
            _tenant: &str,
            from: u64,
            to: u64,
        ) -> Result<Vec<Hash>, AuditLogError> {
            self.asked.push((from, to));
            let end = (to as usize).min(self.stored.len());
            Ok(self.stored.get(from as usize..end).unwrap_or(&[]).to_vec())
        }
        async fn sealed_turns(
            &mut self,
            _turns: &[String],
        ) -> Result<HashSet<String>, AuditLogError> {
            Ok(HashSet::new())
        }
        async fn record_keys(
            &mut self,
            _tenant: &str,
            rec: &PublicKeyRecord,
            _now_ms: i64,
        ) -> Result<PublicKeyRecord, AuditLogError> {
            Ok(rec.clone())
        }
        async fn lock_existing_head(
            &mut self,
            _tenant: &str,
        ) -> Result<Option<Head>, AuditLogError> {
            Ok(None)
        }
        async fn newest_checkpoint_size(&mut self, _tenant: &str) -> Result<u64, AuditLogError> {
            Ok(0)
        }
        async fn write(&mut self, _plan: &Plan) -> Result<(), AuditLogError> {
            Ok(())
        }
    }

    fn leaves(n: u64) -> Vec<Hash> {
        (0..n)
            .map(|i| merkle::leaf_hash(&i.to_be_bytes()))
            .collect()
    }

    #[test]
    fn issue_9_the_writer_streams_leaves_in_bounded_chunks() {
        let stored = leaves(1000);
        let mut tx = FakeTx {
            stored: stored.clone(),
            asked: Vec::new(),
        };
        let mut f = Frontier::new();
        run_ready(extend_frontier_by(&mut tx, "t", &mut f, 700, 64))
            .unwrap()
            .unwrap();
        // No query asked for more than a chunk, and together they cover
        // exactly the range, in order.
        assert!(tx.asked.iter().all(|(a, b)| b - a <= 64), "{:?}", tx.asked);
        assert_eq!(tx.asked.first(), Some(&(0, 64)));
        assert_eq!(tx.asked.last(), Some(&(640, 700)));
        assert_eq!(tx.asked.len(), 11);
        let full = merkle::Tree::from_leaf_hashes(stored[..700].iter().copied());
        assert_eq!((f.size(), f.root()), (700, full.root()));
        assert_eq!(f.last_leaf_hash(), Some(stored[699]));

        // Extending later reads only the new leaves.
        tx.asked.clear();
        run_ready(extend_frontier_by(&mut tx, "t", &mut f, 1000, 256))
            .unwrap()
            .unwrap();
        assert_eq!(tx.asked, vec![(700, 956), (956, 1000)]);
        assert_eq!(f.root(), merkle::root(&stored));

        // Missing rows stop the extension short instead of looping.
        tx.asked.clear();
        run_ready(extend_frontier_by(&mut tx, "t", &mut f, 5000, 256))
            .unwrap()
            .unwrap();
        assert_eq!(f.size(), 1000);
        assert_eq!(tx.asked, vec![(1000, 1256)]);
    }

    #[test]
    fn issue_9_the_block_cache_is_bounded_and_keeps_recent_blocks() {
        let mut c = CacheInner::default();
        let block = leaves(1 << BLOCK_SHIFT);
        for b in 0..(CACHED_BLOCKS as u64 * 3) {
            c.store_block("t", b, 0, &block);
            // Block 0 is used all the time and so is never evicted.
            assert!(c.block("t", 0).is_some(), "block 0 evicted at {b}");
            assert!(c.blocks.len() <= CACHED_BLOCKS);
        }
        assert_eq!(c.blocks.len(), CACHED_BLOCKS);
        assert!(c.block("t", 1).is_none());
        assert!(c.block("t", CACHED_BLOCKS as u64 * 3 - 1).is_some());

        // A partial block is extended by what continues it only.
        c.store_block("u", 0, 0, &block[..10]);
        c.store_block("u", 0, 5, &block[5..20]);
        assert_eq!(c.block("u", 0).unwrap(), &block[..20]);
        c.store_block("u", 0, 30, &block[30..40]);
        assert_eq!(c.block("u", 0).unwrap(), &block[..20]);
    }
}
