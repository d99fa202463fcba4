//! Parallel read-ahead of a verification: worker threads, each with its own
//! reader (for SQLite, its own read-only connection), read the log's rows
//! and envelopes in blocks of consecutive keys and do every piece of work
//! that depends on one row or one envelope alone (row hashes, envelope
//! parsing and leaf hashes), while the verifier's thread takes the blocks
//! strictly in key order and runs only the order-dependent checks.
//!
//! The blocks partition the key space exactly: the first starts at
//! `i64::MIN`, each next one where the previous ended, and the last ends at
//! a bound the caller read from the head row inside its own snapshot
//! (`last_seq + 1` for rows, `tree_size` for envelopes). Everything at or
//! past the bound is read by the caller itself, in that snapshot. So the
//! concatenation of the blocks and the caller's tail is exactly the one
//! ordered scan the verifier saw before, row for row, including rows with
//! out-of-range or non-integer keys (which sort before the first or after
//! the last integer key and land in the first block or the tail); and
//! since the log is append-only, a worker whose snapshot is newer than the
//! caller's sees the same rows below the bound, while whatever was
//! appended concurrently lies past it and is never mixed in. (A writer who
//! dropped the guards and edits rows while a verification runs may be seen
//! by one snapshot and not the other; a mix of an intact and an edited log
//! verifies only if the edited parts alone would, so this hides nothing.)
//!
//! A storage error is delivered after the rows of its block that were read
//! before it, when the verifier reaches it, so a verification failure
//! earlier in the log still wins, as in a sequential scan. At most a
//! bounded number of blocks per stream is in flight, so memory stays
//! bounded whatever the log's size.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::error::AuditLogError;
use crate::format;
use crate::verify::{self, EnvBuf, RowBuf};

/// Reads blocks of one tenant's log: rows with `lo <= seq < hi` in seq
/// order, envelopes with `lo <= leaf_index < hi` in index order. `out` is
/// a reused buffer; on an error it must hold the items read before it.
pub(crate) trait BlockRead {
    fn rows(&mut self, lo: i64, hi: i64, out: &mut Vec<RowBuf>) -> Result<(), AuditLogError>;
    fn envelopes(&mut self, lo: i64, hi: i64, out: &mut Vec<EnvBuf>) -> Result<(), AuditLogError>;
}

/// Opens one worker's reader, on the worker's own thread.
pub(crate) type OpenReader =
    Arc<dyn Fn() -> Result<Box<dyn BlockRead>, AuditLogError> + Send + Sync>;

/// How the key space is cut and how many workers read it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Config {
    /// Worker threads (each with its own reader).
    pub workers: usize,
    /// Whether rows are read ahead too; otherwise only envelopes are, and
    /// the caller reads the rows itself.
    pub rows: bool,
    /// Rows per block.
    pub row_block: i64,
    /// Envelopes per block.
    pub env_block: i64,
    /// Blocks per stream queued or being read at any time.
    pub window: usize,
    /// Logs with fewer rows are read on the verifier's thread alone:
    /// starting a worker and its reader costs more than it would save.
    pub min_rows: u64,
}

impl Default for Config {
    /// Off: measured on 2 quiet cores under real-time priority (README,
    /// "Performance", issue 4), the sequential verifier read a 1,000,000-row
    /// log at 1.29-1.32 million rows/s with `signatures=head` and the
    /// envelope read-ahead at 1.18 million (every signature: 194,000-198,000
    /// rows/s either way); on a loaded machine it took a quarter to a third
    /// off the verifier thread for 2-4% more CPU in all, and reading rows
    /// ahead as well cost 14% more CPU per row. [`Config::enabled`] is the
    /// measured layout, kept for machines with idle cores to spare and for
    /// the equivalence test that holds it to the sequential scan.
    fn default() -> Self {
        Self {
            workers: 1,
            rows: false,
            row_block: 512,
            env_block: 256,
            window: 3,
            min_rows: u64::MAX,
        }
    }
}

impl Config {
    /// One worker reading and preparing envelopes a block ahead, for logs of
    /// at least 16,384 rows.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn enabled() -> Self {
        Self {
            min_rows: 16_384,
            ..Self::default()
        }
    }
}

/// A block's items and the storage error that ended it early, if any.
type Done<T> = (Vec<T>, Option<AuditLogError>);

enum Job {
    Rows {
        lo: i64,
        hi: i64,
        buf: Vec<RowBuf>,
        reply: SyncSender<Done<RowBuf>>,
    },
    Envs {
        lo: i64,
        hi: i64,
        buf: Vec<EnvBuf>,
        reply: SyncSender<Done<EnvBuf>>,
    },
}

/// The blocks of one stream (rows or envelopes), taken in key order.
struct Stream<T> {
    /// Where the next block to hand out starts (`None`: `i64::MIN`).
    next_lo: Option<i64>,
    /// The first key of the next block after the first.
    start: i64,
    /// Where the blocks end; the caller reads from here on.
    end: i64,
    block: i64,
    /// Blocks handed out, oldest first.
    pending: VecDeque<Receiver<Done<T>>>,
    cur: Vec<T>,
    pos: usize,
    err: Option<AuditLogError>,
    spare: Vec<Vec<T>>,
}

/// What [`Stream::advance`] did.
enum Advance {
    /// An item was swapped out.
    Item,
    /// The blocks are used up.
    Done,
    /// The next block arrived and a slot for another is free: the caller
    /// hands one out, then advances again.
    Refilled,
}

impl<T> Stream<T> {
    /// Swaps the next item into `out`, or waits for the next block; a
    /// block's storage error comes after the items read before it.
    fn advance(&mut self, out: &mut T) -> Result<Advance, AuditLogError> {
        if let Some(item) = self.cur.get_mut(self.pos) {
            std::mem::swap(out, item);
            self.pos += 1;
            return Ok(Advance::Item);
        }
        if let Some(e) = self.err.take() {
            return Err(e);
        }
        let Some(rx) = self.pending.pop_front() else {
            return Ok(Advance::Done);
        };
        let (items, err) = rx.recv().map_err(|_| worker_lost())?;
        let used = std::mem::replace(&mut self.cur, items);
        self.spare.push(used);
        self.pos = 0;
        self.err = err;
        Ok(Advance::Refilled)
    }

    fn new(start: i64, end: i64, block: i64) -> Self {
        Self {
            next_lo: (end > start).then_some(i64::MIN),
            start,
            end,
            block: block.max(1),
            pending: VecDeque::new(),
            cur: Vec::new(),
            pos: 0,
            err: None,
            spare: Vec::new(),
        }
    }

    /// The next block's bounds, if any is left to hand out.
    fn next_range(&mut self) -> Option<(i64, i64)> {
        let lo = self.next_lo?;
        let base = if lo == i64::MIN { self.start } else { lo };
        let hi = base.saturating_add(self.block).min(self.end);
        self.next_lo = (hi < self.end).then_some(hi);
        Some((lo, hi))
    }
}

/// The read-ahead workers of one verification and the two streams they
/// feed.
pub(crate) struct ReadAhead {
    jobs: Option<SyncSender<Job>>,
    workers: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    rows: Stream<RowBuf>,
    envs: Stream<EnvBuf>,
    window: usize,
}

fn worker_lost() -> AuditLogError {
    AuditLogError::Db(
        "a verification read-ahead worker stopped; the log was not fully verified (run the verification again)"
            .into(),
    )
}

impl ReadAhead {
    /// Starts the workers for `tenant`'s rows below seq `row_end` and
    /// envelopes below leaf index `env_end`. `None` when no worker could
    /// be started (the caller then reads everything itself).
    pub(crate) fn start(
        cfg: Config,
        tenant: &str,
        open: &OpenReader,
        row_end: i64,
        env_end: i64,
    ) -> Option<Self> {
        let n = cfg.workers.max(1);
        // Bounded: at most `window` blocks per stream are queued or read.
        let window = cfg.window.max(1);
        let (tx, rx) = sync_channel::<Job>(2 * window);
        let rx = Arc::new(Mutex::new(rx));
        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::new();
        for _ in 0..n {
            let (rx, stop, open, tenant) =
                (rx.clone(), stop.clone(), open.clone(), tenant.to_owned());
            let spawned = std::thread::Builder::new()
                .name("aibox-audit-read".into())
                .spawn(move || work(&rx, &stop, &open, &tenant));
            if let Ok(h) = spawned {
                workers.push(h);
            }
        }
        if workers.is_empty() {
            return None;
        }
        let mut me = Self {
            jobs: Some(tx),
            workers,
            stop,
            rows: Stream::new(1, row_end, cfg.row_block),
            envs: Stream::new(0, env_end, cfg.env_block),
            window,
        };
        // Interleaved, in the order the verifier will want them.
        for _ in 0..window {
            me.dispatch_envs();
            me.dispatch_rows();
        }
        Some(me)
    }

    fn send(&self, job: Job) -> bool {
        self.jobs.as_ref().is_some_and(|tx| tx.send(job).is_ok())
    }

    fn dispatch_rows(&mut self) {
        if self.rows.pending.len() >= self.window {
            return;
        }
        let Some((lo, hi)) = self.rows.next_range() else {
            return;
        };
        let buf = self.rows.spare.pop().unwrap_or_default();
        let (reply, rx) = sync_channel(1);
        // A failed send drops the reply sender, so the verifier's receive
        // fails and reports the lost worker: nothing is skipped silently.
        self.send(Job::Rows { lo, hi, buf, reply });
        self.rows.pending.push_back(rx);
    }

    fn dispatch_envs(&mut self) {
        if self.envs.pending.len() >= self.window {
            return;
        }
        let Some((lo, hi)) = self.envs.next_range() else {
            return;
        };
        let buf = self.envs.spare.pop().unwrap_or_default();
        let (reply, rx) = sync_channel(1);
        self.send(Job::Envs { lo, hi, buf, reply });
        self.envs.pending.push_back(rx);
    }

    /// Swaps the next row into `out` (its hashes computed); `false` when
    /// the blocks are used up and the caller reads on from the bound.
    pub(crate) fn next_row(&mut self, out: &mut RowBuf) -> Result<bool, AuditLogError> {
        loop {
            match self.rows.advance(out)? {
                Advance::Item => return Ok(true),
                Advance::Done => return Ok(false),
                Advance::Refilled => self.dispatch_rows(),
            }
        }
    }

    /// Swaps the next envelope into `out` (prepared); `false` when the
    /// blocks are used up.
    pub(crate) fn next_envelope(&mut self, out: &mut EnvBuf) -> Result<bool, AuditLogError> {
        loop {
            match self.envs.advance(out)? {
                Advance::Item => return Ok(true),
                Advance::Done => return Ok(false),
                Advance::Refilled => self.dispatch_envs(),
            }
        }
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        // Queued blocks are skipped, not read, once the verifier is done.
        self.stop.store(true, Ordering::Relaxed);
        drop(self.jobs.take());
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// One worker: opens its reader, then reads and prepares blocks until the
/// job queue closes.
fn work(jobs: &Mutex<Receiver<Job>>, stop: &AtomicBool, open: &OpenReader, tenant: &str) {
    let mut reader = open();
    loop {
        let next = match jobs.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(job) = next else { return };
        let skip = stop.load(Ordering::Relaxed);
        match job {
            Job::Rows {
                lo,
                hi,
                mut buf,
                reply,
            } => {
                let err = match (&mut reader, skip) {
                    (_, true) => {
                        buf.clear();
                        None
                    }
                    (Ok(r), false) => r.rows(lo, hi, &mut buf).err(),
                    (Err(e), false) => {
                        buf.clear();
                        Some(e.clone())
                    }
                };
                for r in &mut buf {
                    // A malformed previous hash is left for the verifier
                    // to report, in order.
                    r.hashed = format::hash_from_slice(&r.prev)
                        .map(|prev| verify::recompute(tenant, r.seq, &prev, &r.event));
                }
                let _ = reply.send((buf, err));
            }
            Job::Envs {
                lo,
                hi,
                mut buf,
                reply,
            } => {
                let err = match (&mut reader, skip) {
                    (_, true) => {
                        buf.clear();
                        None
                    }
                    (Ok(r), false) => r.envelopes(lo, hi, &mut buf).err(),
                    (Err(e), false) => {
                        buf.clear();
                        Some(e.clone())
                    }
                };
                for e in &mut buf {
                    verify::prepare_envelope(e);
                }
                let _ = reply.send((buf, err));
            }
        }
    }
}
