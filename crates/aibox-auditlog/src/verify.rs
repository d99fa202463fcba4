//! Verification: the streaming chain verifier shared by the database
//! verification and the offline bundle verification, and the offline
//! receipt and consistency checks.
//!
//! The chain verifier is fed envelopes in leaf order and, after each, the
//! rows that envelope covers in seq order, then the checkpoints in size
//! order. It keeps O(1) state per row (the running row hash, the leaf hashes
//! of the open envelope) plus the tenant's Merkle tree, and reuses its
//! buffers, so it runs at hashing speed; envelope signatures, which cost
//! far more than hashing (an Ed25519 verification is tens of microseconds),
//! are checked on worker threads in parallel. It stops at the first problem and
//! pins it to the first sequence number the evidence implicates:
//!
//! - a row whose stored hash differs from its recomputation: that row;
//! - a missing seq (deleted row): the missing seq;
//! - a row whose `prev_row_hash` is not the previous row's hash: that row,
//!   or the previous row when the link skips it (an inserted row);
//! - an envelope whose events root differs, or a row whose event names
//!   another tenant or turn than its envelope, while every row hash checks
//!   out (the chain was rewritten after an insertion, deletion or
//!   reordering): the envelope's first seq, the most precise the evidence
//!   allows;
//! - an envelope that is missing, out of place, unlinked or badly signed:
//!   its first seq (or the first seq it should have had);
//! - a checkpoint whose root differs from the recomputed tree: the first seq
//!   of the first envelope after the last checkpoint that did match.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use aibox_audit::envelope::Envelope;
use aibox_audit::keys::ENVELOPE_KEY_SUFFIX;
use aibox_audit::merkle::{self, Hash, Tree};
use aibox_audit::{NoteVerifier, checkpoint, note};
use aibox_core::TenantId;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::error::ReceiptError;
use crate::format::{
    self, BUNDLE_FORMAT, Bundle, GENESIS_ROW_HASH, RECEIPT_FORMAT, Receipt, SignatureCheck,
    VerifyReport,
};
use crate::state::Head;

/// A verification failure, pinned to a sequence number where possible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Bad {
    pub seq: Option<u64>,
    pub problem: String,
}

fn bad(seq: impl Into<Option<u64>>, problem: impl Into<String>) -> Bad {
    Bad {
        seq: seq.into(),
        problem: problem.into(),
    }
}

/// The verifier keys of one tenant's log.
#[derive(Debug, Clone)]
pub(crate) enum KeySet {
    /// Database verification: each note must verify under the recorded key
    /// of the version its row names.
    ByVersion(BTreeMap<u32, (NoteVerifier, NoteVerifier)>),
    /// Offline verification: any of the trusted keys may have signed.
    Any {
        checkpoint: Vec<NoteVerifier>,
        envelope: Vec<NoteVerifier>,
    },
}

impl KeySet {
    fn checkpoint_keys(&self, version: Option<u32>) -> Result<&[NoteVerifier], String> {
        match self {
            Self::ByVersion(map) => {
                let v = version.ok_or("no key version recorded")?;
                map.get(&v)
                    .map(|(c, _)| std::slice::from_ref(c))
                    .ok_or_else(|| format!("key version {v} has no recorded public key"))
            }
            Self::Any { checkpoint, .. } => Ok(checkpoint),
        }
    }

    fn envelope_keys(&self, version: Option<u32>) -> Result<&[NoteVerifier], String> {
        match self {
            Self::ByVersion(map) => {
                let v = version.ok_or("no key version recorded")?;
                map.get(&v)
                    .map(|(_, e)| std::slice::from_ref(e))
                    .ok_or_else(|| format!("key version {v} has no recorded public key"))
            }
            Self::Any { envelope, .. } => Ok(envelope),
        }
    }

    /// Builds the offline key set of `origin` from verifier key strings:
    /// keys named `<origin>/envelope` verify envelopes, every other key is
    /// offered to checkpoints (where only keys named `<origin>` count).
    pub(crate) fn from_strings(origin: &str, keys: &[String]) -> Result<Self, ReceiptError> {
        let env_name = format!("{origin}{ENVELOPE_KEY_SUFFIX}");
        let mut checkpoint = Vec::new();
        let mut envelope = Vec::new();
        for (index, k) in keys.iter().enumerate() {
            let v = NoteVerifier::from_key_string(k.trim()).map_err(|e| ReceiptError::BadKey {
                index,
                cause: e.to_string(),
            })?;
            // A key listed twice would make note::open refuse the note as
            // ambiguous; once is enough.
            let list = if v.name() == env_name {
                &mut envelope
            } else {
                &mut checkpoint
            };
            if !list.contains(&v) {
                list.push(v);
            }
        }
        Ok(Self::Any {
            checkpoint,
            envelope,
        })
    }
}

/// One row as read from storage, in reused buffers.
#[derive(Debug, Default)]
pub(crate) struct RowBuf {
    pub seq: u64,
    pub turn: Option<String>,
    pub event: Vec<u8>,
    pub prev: Vec<u8>,
    pub hash: Vec<u8>,
    /// The event's leaf hash and the row hash recomputed from the row's own
    /// columns, when a [`HashAhead`] worker computed them already.
    pub hashed: Option<(Hash, Hash)>,
}

impl RowBuf {
    pub(crate) fn set_turn(&mut self, turn: Option<&str>) {
        match (turn, &mut self.turn) {
            (Some(t), Some(s)) => {
                s.clear();
                s.push_str(t);
            }
            (Some(t), slot) => *slot = Some(t.to_owned()),
            (None, slot) => *slot = None,
        }
    }

    pub(crate) fn set(
        &mut self,
        seq: u64,
        turn: Option<&str>,
        event: &[u8],
        prev: &[u8],
        hash: &[u8],
    ) {
        self.seq = seq;
        self.hashed = None;
        self.set_turn(turn);
        self.event.clear();
        self.event.extend_from_slice(event);
        self.prev.clear();
        self.prev.extend_from_slice(prev);
        self.hash.clear();
        self.hash.extend_from_slice(hash);
    }
}

/// The index columns stored beside an envelope note in the database.
#[derive(Debug, Default)]
pub(crate) struct EnvColumns {
    pub turn: Option<String>,
    pub first_seq: u64,
    pub last_seq: u64,
    pub leaf_hash: Vec<u8>,
}

/// One envelope as read from storage.
#[derive(Debug, Default)]
pub(crate) struct EnvBuf {
    pub leaf_index: u64,
    pub key_version: Option<u32>,
    pub note: Vec<u8>,
    pub columns: Option<EnvColumns>,
    /// What [`prepare_envelope`] computed from `note` alone, when a
    /// read-ahead worker did it already. Every source that fills `note`
    /// must reset this to `None`, since buffers are reused.
    pub prepared: Option<PreparedEnv>,
}

/// The order-independent work on one envelope note: everything
/// [`ChainVerifier::envelope`] derives from the note's bytes alone, done
/// ahead on a worker so that the verifier's thread only runs the checks
/// that depend on the log's order.
#[derive(Debug)]
pub(crate) struct PreparedEnv {
    /// The unverified first seq, to pin a problem with the envelope.
    pin: Option<u64>,
    /// Whether the note is UTF-8 with a signed-note text part.
    is_note: bool,
    /// The parsed text, or the parser's message.
    parsed: Result<Envelope, String>,
    /// The leaf hash of the text (zero when there is no text).
    leaf: Hash,
}

/// Parses and hashes the note of `e` into `e.prepared`; a pure function
/// of the note, so it may run on any thread, in any order.
pub(crate) fn prepare_envelope(e: &mut EnvBuf) {
    let text = std::str::from_utf8(&e.note).ok().and_then(note_text);
    e.prepared = Some(PreparedEnv {
        pin: unverified_first_seq(&e.note),
        is_note: text.is_some(),
        // Without a text part the verifier stops at "not a signed note"
        // before it looks at the parse.
        parsed: text.map_or_else(
            || Err(String::new()),
            |t| Envelope::parse(t).map_err(|err| err.to_string()),
        ),
        leaf: text.map_or([0u8; 32], |t| merkle::leaf_hash(t.as_bytes())),
    });
}

/// One checkpoint as read from storage.
#[derive(Debug, Default)]
pub(crate) struct CpBuf {
    pub size: u64,
    pub key_version: Option<u32>,
    pub note: Vec<u8>,
}

/// The streaming verifier of one tenant's log.
pub(crate) struct ChainVerifier<'a> {
    tenant: &'a str,
    origin: &'a str,
    env_key_name: String,
    keys: &'a KeySet,
    next_seq: u64,
    prev_hash: Hash,
    prev_prev_hash: Option<Hash>,
    tree: Tree,
    last_env_leaf: Hash,
    env_first_seqs: Vec<u64>,
    cur: Option<Envelope>,
    cur_leaf: Hash,
    cur_leaves: Vec<Hash>,
    sigs: Option<SigPool>,
    /// Whether rows are hashed a batch ahead on a worker thread; only for
    /// synchronous sources, whose driver runs on a thread of its own.
    hash_ahead: bool,
    mode: SignatureCheck,
    /// In [`SignatureCheck::Head`] mode, the envelopes and checkpoints whose
    /// signatures are checked at the end.
    env_samples: Samples,
    cp_samples: Samples,
    signatures_checked: u64,
    prefix: Vec<u8>,
    last_good_checkpoint: u64,
    last_checkpoint: Option<u64>,
    pub rows: u64,
    pub envelopes: u64,
    pub checkpoints: u64,
}

impl<'a> ChainVerifier<'a> {
    pub(crate) fn new(tenant: &'a str, origin: &'a str, keys: &'a KeySet) -> Self {
        Self {
            tenant,
            origin,
            env_key_name: format!("{origin}{ENVELOPE_KEY_SUFFIX}"),
            keys,
            next_seq: 1,
            prev_hash: GENESIS_ROW_HASH,
            prev_prev_hash: None,
            tree: Tree::new(),
            last_env_leaf: aibox_audit::envelope::GENESIS_PREVIOUS,
            env_first_seqs: Vec::new(),
            cur: None,
            cur_leaf: [0u8; 32],
            cur_leaves: Vec::new(),
            sigs: None,
            hash_ahead: false,
            mode: SignatureCheck::All,
            env_samples: Samples::default(),
            cp_samples: Samples::default(),
            signatures_checked: 0,
            prefix: Vec::new(),
            last_good_checkpoint: 0,
            last_checkpoint: None,
            rows: 0,
            envelopes: 0,
            checkpoints: 0,
        }
    }

    /// Checks envelope signatures on worker threads (one per CPU) while
    /// this thread hashes rows: Ed25519 verification costs far more than
    /// hashing a few rows, so it would otherwise bound the speed.
    pub(crate) fn parallel_signatures(mut self) -> Self {
        if self.mode == SignatureCheck::All {
            self.sigs = Some(SigPool::start(self.keys.clone(), self.env_key_name.clone()));
        }
        self
    }

    /// Hashes rows a batch ahead on a worker thread (see [`HashAhead`]).
    /// Only for synchronous sources: the driver blocks on the worker.
    pub(crate) fn hash_ahead(mut self) -> Self {
        self.hash_ahead = true;
        self
    }

    /// Sets which signatures are checked; call before
    /// [`ChainVerifier::parallel_signatures`], which [`SignatureCheck::Head`]
    /// does not need.
    pub(crate) fn signatures(mut self, mode: SignatureCheck) -> Self {
        self.mode = mode;
        if mode == SignatureCheck::Head {
            self.sigs = None;
        }
        self
    }

    /// Waits for the signature workers and combines their verdict with
    /// `result`: the problem with the smaller seq wins.
    pub(crate) fn settle(&mut self, result: Result<(), Bad>) -> Result<(), Bad> {
        let Some(pool) = self.sigs.take() else {
            return result;
        };
        let (failure, checked) = pool.finish();
        self.signatures_checked += checked;
        match (result, failure) {
            (r, None) => r,
            (Ok(()), Some(s)) => Err(s),
            (Err(c), Some(s)) => match (c.seq, s.seq) {
                (Some(cs), Some(ss)) if ss < cs => Err(s),
                (None, Some(_)) => Err(s),
                _ => Err(c),
            },
        }
    }

    /// The recomputed tree, taken out of the verifier.
    pub(crate) fn into_tree(self) -> Tree {
        self.tree
    }

    /// The sequence number after the last verified row.
    pub(crate) fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The first seq of the envelope at `index`, or the next seq past the
    /// end.
    fn first_seq_of(&self, index: u64) -> u64 {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.env_first_seqs.get(i).copied())
            .unwrap_or(self.next_seq)
    }

    /// Opens the next envelope; returns its last seq, up to which the driver
    /// then feeds rows.
    pub(crate) fn envelope(&mut self, e: &mut EnvBuf) -> Result<u64, Bad> {
        let index = self.tree.size();
        if e.leaf_index != index {
            return Err(bad(
                self.next_seq,
                format!(
                    "envelope {index} is missing (the next stored envelope has index {})",
                    e.leaf_index
                ),
            ));
        }
        // Where to pin a problem with the envelope itself: its own first seq
        // if the (unverified) text says so, else the next expected seq.
        // What depends on the note alone may have been computed ahead.
        let prepared = e.prepared.take();
        let pin = match &prepared {
            Some(p) => p.pin,
            None => unverified_first_seq(&e.note),
        }
        .unwrap_or(self.next_seq);
        // An unknown key version is known now, without a signature check.
        self.keys
            .envelope_keys(e.key_version)
            .map_err(|m| bad(pin, format!("envelope {index}: {m}")))?;
        let not_a_note = || bad(pin, format!("envelope {index} is not a signed note"));
        let text = match &prepared {
            Some(p) => p.is_note.then_some(""),
            None => std::str::from_utf8(&e.note).ok().and_then(note_text),
        };
        match &mut self.sigs {
            // Head mode: the text is parsed unverified; the newest
            // checkpoint's signature vouches for it through the tree, and a
            // few envelopes per key version are checked at the end.
            None if self.mode == SignatureCheck::Head => {
                self.env_samples.offer(index, pin, e.key_version, &e.note);
                text.ok_or_else(not_a_note)?;
            }
            // The signature is checked on a worker thread; the text is
            // parsed now, unverified, and a bad signature is reported at the
            // end, pinned to this envelope, if nothing earlier was bad.
            Some(pool) => {
                text.ok_or_else(not_a_note)?;
                pool.submit(SigJob {
                    index,
                    pin,
                    version: e.key_version,
                    note: e.note.clone(),
                });
            }
            None => {
                check_envelope_signature(
                    self.keys,
                    &self.env_key_name,
                    index,
                    pin,
                    e.key_version,
                    &e.note,
                )?;
                self.signatures_checked += 1;
                text.ok_or_else(not_a_note)?;
            }
        }
        let (parsed, leaf) = match prepared {
            Some(p) => (p.parsed, p.leaf),
            None => {
                let text = text.unwrap_or_default();
                (
                    Envelope::parse(text).map_err(|err| err.to_string()),
                    merkle::leaf_hash(text.as_bytes()),
                )
            }
        };
        let env =
            parsed.map_err(|err| bad(pin, format!("envelope {index} is malformed: {err}")))?;
        if env.tenant.as_str() != self.tenant {
            return Err(bad(pin, format!("envelope {index} is another tenant's")));
        }
        if env.first_seq > self.next_seq {
            return Err(bad(
                self.next_seq,
                format!(
                    "rows {}..{} are not sealed by any envelope (an envelope was removed before envelope {index})",
                    self.next_seq,
                    env.first_seq - 1
                ),
            ));
        }
        if env.first_seq < self.next_seq {
            return Err(bad(
                env.first_seq,
                format!(
                    "envelope {index} starts at seq {} inside the previous envelope",
                    env.first_seq
                ),
            ));
        }
        if env.previous != self.last_env_leaf {
            return Err(bad(
                env.first_seq,
                format!("envelope {index} does not link to the previous envelope"),
            ));
        }
        if let Some(c) = &e.columns {
            let turn_ok = c.turn.as_deref() == env.turn.as_ref().map(|t| t.as_str());
            if !turn_ok
                || c.first_seq != env.first_seq
                || c.last_seq != env.last_seq
                || c.leaf_hash.as_slice() != leaf.as_slice()
            {
                return Err(bad(
                    env.first_seq,
                    format!("the index columns of envelope {index} disagree with its signed text"),
                ));
            }
        }
        format::event_prefix(
            self.tenant,
            env.turn.as_ref().map(|t| t.as_str()),
            &mut self.prefix,
        );
        self.cur_leaves.clear();
        self.cur_leaf = leaf;
        let last = env.last_seq;
        self.env_first_seqs.push(env.first_seq);
        self.cur = Some(env);
        Ok(last)
    }

    /// Checks the next row of the open envelope.
    pub(crate) fn row(&mut self, r: &RowBuf) -> Result<(), Bad> {
        let Some(env) = &self.cur else {
            return Err(bad(r.seq, "a row outside any envelope"));
        };
        let seq = r.seq;
        if seq > self.next_seq {
            return Err(bad(
                self.next_seq,
                format!(
                    "row {} is missing (deleted); the next stored row is {seq}",
                    self.next_seq
                ),
            ));
        }
        if seq < self.next_seq {
            return Err(bad(seq, format!("row {seq} appears twice or out of order")));
        }
        let Some(prev) = format::hash_from_slice(&r.prev) else {
            return Err(bad(seq, format!("row {seq} has a malformed previous hash")));
        };
        if prev != self.prev_hash {
            if Some(prev) == self.prev_prev_hash {
                // This row was chained directly after row seq-2: the row now
                // at seq-1 was inserted (and later rows renumbered).
                return Err(bad(
                    seq - 1,
                    format!(
                        "row {} was inserted: row {seq} links to row {} instead",
                        seq - 1,
                        seq - 2
                    ),
                ));
            }
            return Err(bad(
                seq,
                format!(
                    "row {seq} does not link to row {} (rows swapped, inserted or rewritten)",
                    seq.saturating_sub(1)
                ),
            ));
        }
        // A row hash depends only on the row's own columns, so a worker may
        // have computed it ahead; the chain checks stay here, in order.
        let (leaf, computed) = r
            .hashed
            .unwrap_or_else(|| recompute(self.tenant, seq, &prev, &r.event));
        if computed.as_slice() != r.hash.as_slice() {
            return Err(bad(
                seq,
                format!("row {seq} was modified: its hash does not match its contents"),
            ));
        }
        if !r.event.starts_with(&self.prefix) {
            // The row's own hash checked out, so the chain was rewritten
            // around a misplaced event: the envelope's first seq is the
            // earliest the evidence can vouch for no longer.
            return Err(bad(
                env.first_seq,
                format!(
                    "row {seq}'s event belongs to another tenant or turn than envelope {} (seq {}..{}): the chain was rewritten",
                    self.tree.size(),
                    env.first_seq,
                    env.last_seq
                ),
            ));
        }
        if r.turn.as_deref() != env.turn.as_ref().map(|t| t.as_str()) {
            return Err(bad(
                seq,
                format!("row {seq}'s turn column disagrees with its envelope"),
            ));
        }
        self.cur_leaves.push(leaf);
        self.prev_prev_hash = Some(self.prev_hash);
        self.prev_hash = computed;
        self.next_seq += 1;
        self.rows += 1;
        Ok(())
    }

    /// Closes the open envelope: all its rows were seen and they hash to its
    /// events root.
    pub(crate) fn end_envelope(&mut self) -> Result<(), Bad> {
        let Some(env) = self.cur.take() else {
            return Ok(());
        };
        let index = self.tree.size();
        if self.next_seq <= env.last_seq {
            return Err(bad(
                self.next_seq,
                format!(
                    "rows {}..{} of envelope {index} are missing",
                    self.next_seq, env.last_seq
                ),
            ));
        }
        if merkle::root(&self.cur_leaves) != env.events_root {
            return Err(bad(
                env.first_seq,
                format!(
                    "the events of envelope {index} (seq {}..{}) do not match its signed root: an event was dropped, added, reordered or modified and the chain rewritten",
                    env.first_seq, env.last_seq
                ),
            ));
        }
        let leaf = self.cur_leaf;
        self.tree.push_leaf_hash(leaf);
        self.last_env_leaf = leaf;
        self.envelopes += 1;
        Ok(())
    }

    /// A row left over after the last envelope.
    pub(crate) fn unsealed_row(&self, seq: u64) -> Bad {
        bad(
            seq,
            format!("row {seq} is not sealed by any envelope (inserted after the last envelope)"),
        )
    }

    /// Checks the next checkpoint against the recomputed tree.
    pub(crate) fn checkpoint(&mut self, c: &CpBuf) -> Result<(), Bad> {
        let pin = self.first_seq_of(self.last_good_checkpoint);
        let keys = self
            .keys
            .checkpoint_keys(c.key_version)
            .map_err(|m| bad(pin, format!("checkpoint of size {}: {m}", c.size)))?;
        let cp = if self.mode == SignatureCheck::Head {
            self.cp_samples.offer(c.size, pin, c.key_version, &c.note);
            std::str::from_utf8(&c.note)
                .ok()
                .and_then(note_text)
                .and_then(|t| checkpoint::Checkpoint::parse(t).ok())
                .ok_or_else(|| {
                    bad(
                        pin,
                        format!("checkpoint of size {} is not a signed checkpoint", c.size),
                    )
                })?
        } else {
            self.signatures_checked += 1;
            open_checkpoint(keys, c.size, pin, &c.note)?
        };
        if cp.origin() != self.origin {
            return Err(bad(
                pin,
                format!("checkpoint of size {} names another log", c.size),
            ));
        }
        if cp.size() != c.size {
            return Err(bad(
                pin,
                format!("checkpoint of size {} claims size {}", c.size, cp.size()),
            ));
        }
        if let Some(last) = self.last_checkpoint
            && cp.size() <= last
        {
            return Err(bad(pin, "checkpoints are out of order"));
        }
        if cp.size() > self.tree.size() {
            return Err(bad(
                self.next_seq,
                format!(
                    "a checkpoint covers {} envelopes but only {} are stored: the tail was truncated",
                    cp.size(),
                    self.tree.size()
                ),
            ));
        }
        let root = self
            .tree
            .root_at(cp.size())
            .map_err(|e| bad(pin, e.to_string()))?;
        if &root != cp.root() {
            return Err(bad(
                pin,
                format!(
                    "the signed checkpoint of size {} does not match the recomputed tree (the log forked or was rewritten after envelope {})",
                    cp.size(),
                    self.last_good_checkpoint
                ),
            ));
        }
        self.last_good_checkpoint = cp.size();
        self.last_checkpoint = Some(cp.size());
        self.checkpoints += 1;
        Ok(())
    }

    /// After the checkpoints.
    ///
    /// Envelopes past the newest checkpoint are legitimate: checkpoints
    /// follow a cadence (`audit.checkpoint_interval_ms`), and a process that
    /// stopped hard leaves its newest envelopes uncovered until the next
    /// one covers them. They are not left unchecked: in full mode every
    /// envelope's signature is checked, and in head mode the newest
    /// envelope's is, which vouches for every earlier envelope through the
    /// chain of `previous` leaf hashes checked above. The report's
    /// `checkpoint_size` says how far the checkpoints reach.
    pub(crate) fn finish_checkpoints(&mut self) -> Result<(), Bad> {
        self.check_samples()
    }

    /// Head mode: checks the signatures of the sampled envelopes and
    /// checkpoints, the newest checkpoint among them. The earliest failure
    /// wins, as in the full check.
    fn check_samples(&mut self) -> Result<(), Bad> {
        let mut worst: Option<Bad> = None;
        for j in self.env_samples.take() {
            self.signatures_checked += 1;
            if let Err(b) = check_envelope_signature(
                self.keys,
                &self.env_key_name,
                j.index,
                j.pin,
                j.version,
                &j.note,
            ) {
                worst = earlier(worst, b);
            }
        }
        for j in self.cp_samples.take() {
            self.signatures_checked += 1;
            let checked = self
                .keys
                .checkpoint_keys(j.version)
                .map_err(|m| bad(j.pin, format!("checkpoint of size {}: {m}", j.index)))
                .and_then(|keys| open_checkpoint(keys, j.index, j.pin, &j.note));
            if let Err(b) = checked {
                worst = earlier(worst, b);
            }
        }
        worst.map_or(Ok(()), Err)
    }

    /// Compares the stored head with the recomputed end of the log.
    pub(crate) fn check_head(&self, head: Option<&Head>) -> Result<(), Bad> {
        let last_seq = self.next_seq - 1;
        let Some(h) = head else {
            if self.rows == 0 && self.envelopes == 0 {
                return Ok(());
            }
            return Err(bad(None, "the tenant has rows but no head row"));
        };
        if h.last_seq > last_seq || h.tree_size > self.tree.size() {
            return Err(bad(
                self.next_seq,
                format!(
                    "the tail was truncated: the head records seq {} and {} envelopes, the log ends at seq {last_seq} with {}",
                    h.last_seq,
                    h.tree_size,
                    self.tree.size()
                ),
            ));
        }
        if h.last_seq < last_seq || h.tree_size < self.tree.size() {
            return Err(bad(
                h.last_seq + 1,
                format!(
                    "rows or envelopes after the head (seq {}, {} envelopes) were added outside the writer",
                    h.last_seq, h.tree_size
                ),
            ));
        }
        if h.last_row_hash != self.prev_hash || h.last_envelope_hash != self.last_env_leaf {
            return Err(bad(
                self.first_seq_of(self.tree.size().saturating_sub(1)),
                "the head's hashes disagree with the recomputed log",
            ));
        }
        Ok(())
    }

    /// The report for a run that ended with `result`.
    pub(crate) fn report(&self, result: Result<(), Bad>) -> VerifyReport {
        let (ok, first_bad_seq, problem) = match result {
            Ok(()) => (true, None, None),
            Err(b) => (false, b.seq, Some(b.problem)),
        };
        VerifyReport {
            ok,
            rows: self.rows,
            envelopes: self.envelopes,
            checkpoints: self.checkpoints,
            first_bad_seq,
            problem,
            tree_size: self.tree.size(),
            root: format::b64(&self.tree.root()),
            signatures: self.mode,
            signatures_checked: self.signatures_checked,
            checkpoint_size: self.last_checkpoint.unwrap_or(0),
        }
    }
}

/// Opens a stored checkpoint note with `keys`, pinning a bad signature to
/// `pin`.
fn open_checkpoint(
    keys: &[NoteVerifier],
    size: u64,
    pin: u64,
    note: &[u8],
) -> Result<checkpoint::Checkpoint, Bad> {
    checkpoint::open(note, keys).map_err(|err| {
        bad(
            pin,
            format!("checkpoint of size {size} does not verify with the published keys: {err}"),
        )
    })
}

/// The notes whose signatures [`SignatureCheck::Head`] checks: the first
/// and the last of each key version, in log order (the last one offered is
/// the newest). Buffers are reused, so offering every note costs a copy
/// only, never an allocation once warmed up.
#[derive(Default)]
struct Samples {
    /// Per run of one key version: its first note and its latest one.
    runs: Vec<(SigJob, Option<SigJob>)>,
}

impl Samples {
    fn offer(&mut self, index: u64, pin: u64, version: Option<u32>, note: &[u8]) {
        match self.runs.last_mut() {
            Some((first, last)) if first.version == version => {
                let slot = last.get_or_insert_with(|| SigJob {
                    index,
                    pin,
                    version,
                    note: Vec::new(),
                });
                slot.index = index;
                slot.pin = pin;
                slot.note.clear();
                slot.note.extend_from_slice(note);
            }
            _ => self.runs.push((
                SigJob {
                    index,
                    pin,
                    version,
                    note: note.to_vec(),
                },
                None,
            )),
        }
    }

    fn take(&mut self) -> impl Iterator<Item = SigJob> {
        std::mem::take(&mut self.runs)
            .into_iter()
            .flat_map(|(first, last)| std::iter::once(first).chain(last))
    }
}

/// The first seq line of an envelope note, read without verifying it, only
/// to pin a problem with that envelope.
fn unverified_first_seq(note: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(note).ok()?;
    text.split('\n').nth(3)?.parse().ok()
}

/// Checks one envelope's signature: it must verify under the keys of its
/// version (or any trusted key offline) and come from a key named
/// `<origin>/envelope`.
fn check_envelope_signature(
    keys: &KeySet,
    env_key_name: &str,
    index: u64,
    pin: u64,
    version: Option<u32>,
    note_bytes: &[u8],
) -> Result<(), Bad> {
    let keys = keys
        .envelope_keys(version)
        .map_err(|m| bad(pin, format!("envelope {index}: {m}")))?;
    let opened = note::open(note_bytes, keys).map_err(|err| {
        bad(
            pin,
            format!("envelope {index} does not verify with the published keys: {err}"),
        )
    })?;
    if !opened.verified.iter().any(|s| s.name == env_key_name) {
        return Err(bad(
            pin,
            format!("envelope {index} is not signed by this tenant's envelope key"),
        ));
    }
    Ok(())
}

/// One envelope signature to check.
struct SigJob {
    index: u64,
    pin: u64,
    version: Option<u32>,
    note: Vec<u8>,
}

/// Jobs are sent in batches to keep channel traffic per envelope low.
const SIG_BATCH: usize = 128;

/// Worker threads checking envelope signatures; each keeps the failure
/// with the smallest seq it saw.
struct SigPool {
    tx: Option<std::sync::mpsc::SyncSender<Vec<SigJob>>>,
    batch: Vec<SigJob>,
    workers: Vec<std::thread::JoinHandle<(Option<Bad>, u64)>>,
    keys: std::sync::Arc<KeySet>,
    name: std::sync::Arc<String>,
    inline: Option<Bad>,
    inline_checked: u64,
}

fn earlier(a: Option<Bad>, b: Bad) -> Option<Bad> {
    match a {
        Some(a) if a.seq <= b.seq => Some(a),
        _ => Some(b),
    }
}

impl SigPool {
    fn start(keys: KeySet, env_key_name: String) -> Self {
        let n = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        // Bounded: a verifier far ahead of the workers waits instead of
        // queueing the whole log in memory.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<SigJob>>(4 * n);
        let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
        let keys = std::sync::Arc::new(keys);
        let env_key_name = std::sync::Arc::new(env_key_name);
        let mut workers = Vec::new();
        for _ in 0..n {
            let (rx, keys, name) = (rx.clone(), keys.clone(), env_key_name.clone());
            let spawned = std::thread::Builder::new()
                .name("aibox-audit-verify".into())
                .spawn(move || {
                    let mut worst: Option<Bad> = None;
                    let mut checked = 0u64;
                    loop {
                        let next = match rx.lock() {
                            Ok(r) => r.recv(),
                            Err(_) => break,
                        };
                        let Ok(batch) = next else { break };
                        for j in batch {
                            if worst.as_ref().is_some_and(|w| w.seq <= Some(j.pin)) {
                                continue;
                            }
                            checked += 1;
                            if let Err(b) = check_envelope_signature(
                                &keys, &name, j.index, j.pin, j.version, &j.note,
                            ) {
                                worst = earlier(worst, b);
                            }
                        }
                    }
                    (worst, checked)
                });
            if let Ok(h) = spawned {
                workers.push(h);
            }
        }
        Self {
            tx: Some(tx),
            batch: Vec::with_capacity(SIG_BATCH),
            workers,
            keys,
            name: env_key_name,
            inline: None,
            inline_checked: 0,
        }
    }

    fn submit(&mut self, job: SigJob) {
        self.batch.push(job);
        if self.batch.len() >= SIG_BATCH {
            self.flush();
        }
    }

    fn flush(&mut self) {
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(SIG_BATCH));
        if batch.is_empty() {
            return;
        }
        let unsent = match &self.tx {
            Some(tx) if !self.workers.is_empty() => tx.send(batch).err().map(|e| e.0),
            _ => Some(batch),
        };
        // No worker could be started (or all stopped): check here, so a
        // signature is never skipped.
        if let Some(batch) = unsent {
            self.workers.clear();
            for j in batch {
                self.inline_checked += 1;
                if let Err(b) = check_envelope_signature(
                    &self.keys, &self.name, j.index, j.pin, j.version, &j.note,
                ) {
                    self.inline = earlier(self.inline.take(), b);
                }
            }
        }
    }

    /// Waits for the workers: the earliest failure, and how many signatures
    /// were checked.
    fn finish(mut self) -> (Option<Bad>, u64) {
        self.flush();
        drop(self.tx.take());
        let mut worst = self.inline.take();
        let mut checked = self.inline_checked;
        for w in self.workers.drain(..) {
            match w.join() {
                Ok((found, n)) => {
                    checked += n;
                    if let Some(b) = found {
                        worst = earlier(worst, b);
                    }
                }
                Err(_) => {
                    worst = earlier(
                        worst,
                        bad(
                            None,
                            "a signature worker failed; signatures were not all checked",
                        ),
                    );
                }
            }
        }
        (worst, checked)
    }
}

/// Where the driver reads a tenant's log from. Methods are async so that
/// PostgreSQL can fetch in chunks; synchronous sources return ready
/// futures.
pub(crate) trait Source {
    type Error;
    /// Fills `buf` with the next envelope by leaf index; false at the end.
    fn next_envelope(
        &mut self,
        buf: &mut EnvBuf,
    ) -> impl Future<Output = Result<bool, Self::Error>>;
    /// Fills `buf` with the next row by seq; false at the end.
    fn next_row(&mut self, buf: &mut RowBuf) -> impl Future<Output = Result<bool, Self::Error>>;
    /// Fills `buf` with the next checkpoint by size; false at the end.
    fn next_checkpoint(
        &mut self,
        buf: &mut CpBuf,
    ) -> impl Future<Output = Result<bool, Self::Error>>;
}

/// How often progress is reported, in rows.
const PROGRESS_EVERY: u64 = 65_536;

/// Runs the whole verification over `src`. The outer error is a storage
/// error; the inner one a verification failure.
pub(crate) async fn drive<S: Source>(
    v: &mut ChainVerifier<'_>,
    src: &mut S,
    total_rows: u64,
    progress: &mut (dyn FnMut(u64, u64) + Send),
) -> Result<Result<(), Bad>, S::Error> {
    let mut env = EnvBuf::default();
    let mut cp = CpBuf::default();
    let mut rows = RowFeed::new(v.tenant, v.hash_ahead);
    if let Err(b) = rows.advance(src).await? {
        return Ok(Err(b));
    }
    progress(0, total_rows);
    while src.next_envelope(&mut env).await? {
        let last = match v.envelope(&mut env) {
            Ok(l) => l,
            Err(b) => return Ok(Err(b)),
        };
        while let Some(row) = rows.current().filter(|r| r.seq <= last) {
            if let Err(b) = v.row(row) {
                return Ok(Err(b));
            }
            if v.rows.is_multiple_of(PROGRESS_EVERY) {
                progress(v.rows, total_rows);
            }
            if let Err(b) = rows.advance(src).await? {
                return Ok(Err(b));
            }
        }
        if let Err(b) = v.end_envelope() {
            return Ok(Err(b));
        }
    }
    if let Some(row) = rows.current() {
        return Ok(Err(v.unsealed_row(row.seq)));
    }
    while src.next_checkpoint(&mut cp).await? {
        if let Err(b) = v.checkpoint(&cp) {
            return Ok(Err(b));
        }
    }
    progress(v.rows, total_rows);
    Ok(v.finish_checkpoints())
}

/// The event's leaf hash and the row hash, from the row's own columns.
pub(crate) fn recompute(tenant: &str, seq: u64, prev: &Hash, event: &[u8]) -> (Hash, Hash) {
    let leaf = merkle::leaf_hash(event);
    (leaf, format::row_hash(tenant, seq, prev, &leaf))
}

/// Rows per batch handed to the [`HashAhead`] worker: large enough that
/// the channel traffic is noise, small enough to stay in cache.
const HASH_BATCH: usize = 256;

/// The rows of a verification, one at a time, in seq order.
enum RowFeed {
    /// Read and hashed on the verifier's thread.
    Direct { row: RowBuf, have: bool },
    /// Read in batches; each batch is hashed on a worker thread while this
    /// thread reads the next batch and checks the previous one.
    Ahead(HashAhead),
}

impl RowFeed {
    fn new(tenant: &str, ahead: bool) -> Self {
        if ahead && let Some(h) = HashAhead::start(tenant) {
            return Self::Ahead(h);
        }
        Self::Direct {
            row: RowBuf::default(),
            have: false,
        }
    }

    fn current(&self) -> Option<&RowBuf> {
        match self {
            Self::Direct { row, have } => have.then_some(row),
            Self::Ahead(h) => h.cur.get(h.pos),
        }
    }

    async fn advance<S: Source>(&mut self, src: &mut S) -> Result<Result<(), Bad>, S::Error> {
        match self {
            Self::Direct { row, have } => {
                *have = src.next_row(row).await?;
                Ok(Ok(()))
            }
            Self::Ahead(h) => h.advance(src).await,
        }
    }
}

/// A worker thread that computes row hashes a batch ahead of the chain
/// checks. Hashing is the largest share of a verification without
/// signatures, and it needs nothing but the row, so it overlaps with
/// reading the next batch; the order-dependent checks stay on the
/// verifier's thread.
struct HashAhead {
    tx: Option<std::sync::mpsc::SyncSender<Vec<RowBuf>>>,
    rx: std::sync::mpsc::Receiver<Vec<RowBuf>>,
    worker: Option<std::thread::JoinHandle<()>>,
    /// The batch being checked, and the position in it.
    cur: Vec<RowBuf>,
    pos: usize,
    /// Whether a batch is at the worker.
    in_flight: bool,
    /// Whether the source has no more rows.
    done: bool,
    /// Emptied batches, for reuse.
    spare: Vec<Vec<RowBuf>>,
}

impl HashAhead {
    fn start(tenant: &str) -> Option<Self> {
        let (tx, work) = std::sync::mpsc::sync_channel::<Vec<RowBuf>>(1);
        let (back, rx) = std::sync::mpsc::sync_channel::<Vec<RowBuf>>(1);
        let tenant = tenant.to_owned();
        let worker = std::thread::Builder::new()
            .name("aibox-audit-hash".into())
            .spawn(move || {
                while let Ok(mut batch) = work.recv() {
                    for r in &mut batch {
                        // A malformed previous hash is left for the
                        // verifier to report, in order. Every row is
                        // (re)set, since batches and their rows are reused.
                        r.hashed = format::hash_from_slice(&r.prev)
                            .map(|prev| recompute(&tenant, r.seq, &prev, &r.event));
                    }
                    if back.send(batch).is_err() {
                        return;
                    }
                }
            })
            .ok()?;
        Some(Self {
            tx: Some(tx),
            rx,
            worker: Some(worker),
            cur: Vec::new(),
            pos: 0,
            in_flight: false,
            done: false,
            spare: Vec::new(),
        })
    }

    /// Reads up to [`HASH_BATCH`] rows into a (reused) batch.
    async fn read_batch<S: Source>(&mut self, src: &mut S) -> Result<Vec<RowBuf>, S::Error> {
        let mut batch = self.spare.pop().unwrap_or_default();
        batch.resize_with(HASH_BATCH, RowBuf::default);
        let mut n = 0;
        while n < HASH_BATCH {
            if !src.next_row(&mut batch[n]).await? {
                self.done = true;
                break;
            }
            n += 1;
        }
        batch.truncate(n);
        Ok(batch)
    }

    /// Moves to the next row: at the end of a batch, takes the hashed one
    /// from the worker and hands it the next. The inner error: the worker
    /// is gone with a batch, so the verification cannot be completed (it
    /// fails, without blaming the log).
    async fn advance<S: Source>(&mut self, src: &mut S) -> Result<Result<(), Bad>, S::Error> {
        self.pos += 1;
        if self.pos < self.cur.len() {
            return Ok(Ok(()));
        }
        let used = std::mem::take(&mut self.cur);
        self.spare.push(used);
        self.pos = 0;
        if !self.in_flight {
            // The first call: read one batch to start.
            if self.done {
                return Ok(Ok(()));
            }
            let first = self.read_batch(src).await?;
            if let Err(b) = self.send(first) {
                return Ok(Err(b));
            }
        }
        self.in_flight = false;
        match self.rx.recv() {
            Ok(b) => self.cur = b,
            Err(_) => return Ok(Err(worker_lost())),
        }
        if !self.done {
            let next = self.read_batch(src).await?;
            if let Err(b) = self.send(next) {
                return Ok(Err(b));
            }
        }
        Ok(Ok(()))
    }

    fn send(&mut self, batch: Vec<RowBuf>) -> Result<(), Bad> {
        let tx = self.tx.as_ref().ok_or_else(worker_lost)?;
        tx.send(batch).map_err(|_| worker_lost())?;
        self.in_flight = true;
        Ok(())
    }
}

fn worker_lost() -> Bad {
    bad(
        None,
        "internal error: the row hashing worker stopped; the log was not fully verified (run the verification again)",
    )
}

impl Drop for HashAhead {
    fn drop(&mut self) {
        drop(self.tx.take());
        // Unblock a worker waiting to hand back a batch, then wait for it.
        while self.rx.try_recv().is_ok() {}
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

/// Runs a future that never waits (a synchronous source) to completion.
pub(crate) fn run_ready<F: Future>(f: F) -> Option<F::Output> {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    match f.as_mut().poll(&mut cx) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

/// A source over an export bundle.
struct BundleSource<'b> {
    bundle: &'b Bundle,
    row: usize,
    env: usize,
    cp: usize,
}

/// A bundle field that is not what the format says.
#[derive(Debug)]
struct BundleMalformed(String);

impl Source for BundleSource<'_> {
    type Error = BundleMalformed;

    async fn next_envelope(&mut self, buf: &mut EnvBuf) -> Result<bool, BundleMalformed> {
        let Some(e) = self.bundle.envelopes.get(self.env) else {
            return Ok(false);
        };
        self.env += 1;
        buf.leaf_index = e.leaf_index;
        buf.key_version = Some(e.key_version);
        buf.note.clear();
        buf.note.extend_from_slice(e.note.as_bytes());
        buf.columns = None;
        buf.prepared = None;
        Ok(true)
    }

    async fn next_row(&mut self, buf: &mut RowBuf) -> Result<bool, BundleMalformed> {
        let Some(r) = self.bundle.rows.get(self.row) else {
            return Ok(false);
        };
        self.row += 1;
        buf.seq = r.seq;
        buf.set_turn(r.turn.as_deref());
        buf.event.clear();
        buf.event.extend_from_slice(r.event.as_bytes());
        buf.prev.clear();
        buf.hash.clear();
        STANDARD
            .decode_vec(&r.prev_row_hash, &mut buf.prev)
            .map_err(|_| BundleMalformed(format!("row {}: prev_row_hash is not base64", r.seq)))?;
        STANDARD
            .decode_vec(&r.row_hash, &mut buf.hash)
            .map_err(|_| BundleMalformed(format!("row {}: row_hash is not base64", r.seq)))?;
        Ok(true)
    }

    async fn next_checkpoint(&mut self, buf: &mut CpBuf) -> Result<bool, BundleMalformed> {
        let Some(c) = self.bundle.checkpoints.get(self.cp) else {
            return Ok(false);
        };
        self.cp += 1;
        buf.size = c.size;
        buf.key_version = Some(c.key_version);
        buf.note.clear();
        buf.note.extend_from_slice(c.note.as_bytes());
        Ok(true)
    }
}

fn failed(problem: impl Into<String>) -> VerifyReport {
    VerifyReport {
        ok: false,
        problem: Some(problem.into()),
        ..VerifyReport::default()
    }
}

/// Verifies an export bundle offline with the keys the verifier trusts
/// (the verifier key strings published for the tenant, every version). The
/// keys inside the bundle are not trusted: they are there to be compared
/// with the published ones.
pub fn verify_bundle(bundle: &Bundle, trusted_keys: &[String]) -> VerifyReport {
    verify_bundle_with(bundle, trusted_keys, SignatureCheck::All)
}

/// [`verify_bundle`] checking the signatures `mode` names. In
/// [`SignatureCheck::Head`] mode a failure may be pinned later than the
/// first bad sequence number; verify again with [`SignatureCheck::All`] to
/// pin it.
pub fn verify_bundle_with(
    bundle: &Bundle,
    trusted_keys: &[String],
    mode: SignatureCheck,
) -> VerifyReport {
    if bundle.format != BUNDLE_FORMAT {
        return failed(format!(
            "unknown bundle format {:?}; expected {BUNDLE_FORMAT}",
            bundle.format
        ));
    }
    if !bundle
        .origin
        .strip_suffix(bundle.tenant.as_str())
        .is_some_and(|p| p.ends_with('/') && p.len() > 1)
    {
        return failed("the bundle's origin does not name its tenant");
    }
    let keys = match KeySet::from_strings(&bundle.origin, trusted_keys) {
        Ok(k) => k,
        Err(e) => return failed(e.to_string()),
    };
    let mut v = ChainVerifier::new(bundle.tenant.as_str(), &bundle.origin, &keys)
        .signatures(mode)
        .parallel_signatures()
        .hash_ahead();
    let mut src = BundleSource {
        bundle,
        row: 0,
        env: 0,
        cp: 0,
    };
    let total = bundle.rows.len() as u64;
    let mut no_progress = |_: u64, _: u64| {};
    match run_ready(drive(&mut v, &mut src, total, &mut no_progress)) {
        Some(Ok(result)) => {
            let result = v.settle(result);
            v.report(result)
        }
        Some(Err(BundleMalformed(m))) => {
            let mut r = v.report(Ok(()));
            r.ok = false;
            r.first_bad_seq = Some(v.next_seq());
            r.problem = Some(format!("malformed bundle: {m}"));
            r
        }
        None => failed("internal error: the bundle source waited"),
    }
}

/// What a verified receipt proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedReceipt {
    /// The tenant.
    pub tenant: TenantId,
    /// The envelope as signed.
    pub envelope: Envelope,
    /// The envelope's leaf index.
    pub leaf_index: u64,
    /// The checkpoint's tree size.
    pub tree_size: u64,
    /// The checkpoint's root.
    pub root: Hash,
}

/// Verifies a receipt offline: the checkpoint and the envelope are signed by
/// one of `verifier_keys` (the tenant's published checkpoint and envelope
/// keys), both belong to the receipt's tenant, the events are exactly the
/// envelope's, and the inclusion proof leads from the envelope to the
/// checkpoint's root.
pub fn verify_receipt(
    receipt: &Receipt,
    verifier_keys: &[String],
) -> Result<VerifiedReceipt, ReceiptError> {
    if receipt.format != RECEIPT_FORMAT {
        return Err(ReceiptError::Format(receipt.format.clone()));
    }
    // The checkpoint names the origin; parse it unverified first only to
    // learn which key names to require.
    let unverified = note_text(&receipt.checkpoint)
        .and_then(|t| checkpoint::Checkpoint::parse(t).ok())
        .ok_or_else(|| ReceiptError::Checkpoint("not a signed checkpoint".into()))?;
    let origin = unverified.origin().to_owned();
    if !origin
        .strip_suffix(receipt.tenant.as_str())
        .is_some_and(|p| p.ends_with('/'))
    {
        return Err(ReceiptError::WrongTenant(
            "the checkpoint's origin is not the receipt tenant's log".into(),
        ));
    }
    let keys = KeySet::from_strings(&origin, verifier_keys)?;
    let KeySet::Any {
        checkpoint: cp_keys,
        envelope: env_keys,
    } = &keys
    else {
        return Err(ReceiptError::Checkpoint("no keys".into()));
    };
    let cp = checkpoint::open(receipt.checkpoint.as_bytes(), cp_keys)
        .map_err(|e| ReceiptError::Checkpoint(e.to_string()))?;
    if cp.size() != receipt.tree_size {
        return Err(ReceiptError::Checkpoint(format!(
            "the checkpoint has size {} but the receipt says {}",
            cp.size(),
            receipt.tree_size
        )));
    }
    let opened = note::open(receipt.envelope.as_bytes(), env_keys)
        .map_err(|e| ReceiptError::Envelope(e.to_string()))?;
    let env_name = format!("{origin}{ENVELOPE_KEY_SUFFIX}");
    if !opened.verified.iter().any(|s| s.name == env_name) {
        return Err(ReceiptError::Envelope(
            "not signed by this log's envelope key".into(),
        ));
    }
    let env = Envelope::parse(&opened.text).map_err(|e| ReceiptError::Envelope(e.to_string()))?;
    if env.tenant != receipt.tenant {
        return Err(ReceiptError::WrongTenant(
            "the envelope names another tenant than the receipt".into(),
        ));
    }
    if env.turn != receipt.turn {
        return Err(ReceiptError::WrongTurn);
    }
    if receipt.events.len() as u64 != env.event_count {
        return Err(ReceiptError::Events(format!(
            "{} events for an envelope of {}",
            receipt.events.len(),
            env.event_count
        )));
    }
    let mut prefix = Vec::new();
    format::event_prefix(
        env.tenant.as_str(),
        env.turn.as_ref().map(|t| t.as_str()),
        &mut prefix,
    );
    let mut leaves = Vec::with_capacity(receipt.events.len());
    for (i, e) in receipt.events.iter().enumerate() {
        if !e.as_bytes().starts_with(&prefix) {
            return Err(ReceiptError::Events(format!(
                "event {i} belongs to another tenant or turn"
            )));
        }
        leaves.push(merkle::leaf_hash(e.as_bytes()));
    }
    if merkle::root(&leaves) != env.events_root {
        return Err(ReceiptError::Events(
            "an event was dropped, added, reordered or modified".into(),
        ));
    }
    let proof = decode_hashes(&receipt.inclusion_proof)
        .ok_or_else(|| ReceiptError::Inclusion("a proof hash is not base64 of 32 bytes".into()))?;
    merkle::verify_inclusion(
        &merkle::leaf_hash(opened.text.as_bytes()),
        receipt.leaf_index,
        cp.size(),
        &proof,
        cp.root(),
    )
    .map_err(|e| ReceiptError::Inclusion(e.to_string()))?;
    Ok(VerifiedReceipt {
        tenant: env.tenant.clone(),
        envelope: env,
        leaf_index: receipt.leaf_index,
        tree_size: cp.size(),
        root: *cp.root(),
    })
}

/// [`verify_receipt`], and the receipt must be `tenant`'s: a receipt of
/// tenant A presented as tenant B's is refused even when A's keys are
/// among `verifier_keys`.
pub fn verify_receipt_for_tenant(
    receipt: &Receipt,
    tenant: &TenantId,
    verifier_keys: &[String],
) -> Result<VerifiedReceipt, ReceiptError> {
    if &receipt.tenant != tenant {
        return Err(ReceiptError::WrongTenant(format!(
            "expected tenant {tenant}"
        )));
    }
    let v = verify_receipt(receipt, verifier_keys)?;
    if &v.tenant != tenant {
        return Err(ReceiptError::WrongTenant(format!(
            "expected tenant {tenant}"
        )));
    }
    Ok(v)
}

/// Verifies offline that the log at `new_checkpoint` extends the log at
/// `old_checkpoint` (both signed notes of one origin, opened with
/// `verifier_keys`) with an RFC 9162 consistency proof of base64 hashes.
pub fn verify_consistency(
    old_checkpoint: &str,
    new_checkpoint: &str,
    proof: &[String],
    verifier_keys: &[String],
) -> Result<(), ReceiptError> {
    let origin = note_text(new_checkpoint)
        .and_then(|t| checkpoint::Checkpoint::parse(t).ok())
        .map(|c| c.origin().to_owned())
        .ok_or_else(|| ReceiptError::Checkpoint("not a signed checkpoint".into()))?;
    let keys: Vec<NoteVerifier> = match KeySet::from_strings(&origin, verifier_keys)? {
        KeySet::Any { checkpoint, .. } => checkpoint,
        KeySet::ByVersion(_) => Vec::new(),
    };
    let old = checkpoint::open(old_checkpoint.as_bytes(), &keys)
        .map_err(|e| ReceiptError::Checkpoint(format!("old: {e}")))?;
    let new = checkpoint::open(new_checkpoint.as_bytes(), &keys)
        .map_err(|e| ReceiptError::Checkpoint(format!("new: {e}")))?;
    if old.origin() != new.origin() {
        return Err(ReceiptError::WrongTenant(
            "the checkpoints are of different logs".into(),
        ));
    }
    let proof = decode_hashes(proof)
        .ok_or_else(|| ReceiptError::Inclusion("a proof hash is not base64 of 32 bytes".into()))?;
    merkle::verify_consistency(old.size(), new.size(), old.root(), new.root(), &proof)
        .map_err(|e| ReceiptError::Inclusion(e.to_string()))
}

/// The text part of a signed note (up to and including the newline before
/// the last blank line).
pub(crate) fn note_text(signed: &str) -> Option<&str> {
    let split = signed.rfind("\n\n")?;
    signed.get(..split + 1)
}

fn decode_hashes(list: &[String]) -> Option<Vec<Hash>> {
    list.iter().map(|s| format::unb64_hash(s)).collect()
}
