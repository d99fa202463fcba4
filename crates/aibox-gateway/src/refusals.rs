//! Refused authentications in the audit log: each 401 of the edge becomes
//! an `auth_refused` event of the `_aibox` system tenant (the reason, the
//! route, a presented API key's public id, the peer's address, never the
//! credential), at a bounded rate.
//!
//! Why a rate: every record is a durable append to a log that is never
//! pruned, so an unauthenticated caller must not be able to make it grow
//! at will, nor turn a flood into a flood of `fsync`s paid by everyone
//! else's turns. A token bucket admits [`BURST`] records at once and then
//! one per [`REFILL`] (at most 8,640 a day, about 8 MiB, under a sustained
//! flood); a refusal it does not admit is counted, and the next record
//! carries the count (`suppressed`), so the records still account for
//! every refusal. The 401 never waits for its record: a refusal releases
//! nothing, so nothing has to be durable before it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aibox_auditlog::AuditLog;
use aibox_core::RequestId;
use aibox_core::audit::{AuditEvent, EventKind};

/// Records admitted at once, after a quiet spell.
pub const BURST: u32 = 20;
/// After a burst, one more record is admitted per this interval.
pub const REFILL: Duration = Duration::from_secs(10);

/// The limiter's state: a token bucket and the refusals it held back
/// since the last admitted record.
#[derive(Debug)]
pub struct Bucket {
    tokens: f64,
    last: Instant,
    suppressed: u64,
}

/// What to do with one refusal.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// Record it, with this many earlier refusals not recorded one by one.
    Record {
        /// Refusals held back since the previous record.
        suppressed: u64,
    },
    /// Only count it; a later record carries the count.
    Suppress,
}

impl Bucket {
    /// A full bucket at `now`.
    pub fn new(now: Instant) -> Self {
        Self {
            tokens: f64::from(BURST),
            last: now,
            suppressed: 0,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed / REFILL.as_secs_f64()).min(f64::from(BURST));
    }

    /// Decides on a refusal at `now`.
    pub fn admit(&mut self, now: Instant) -> Admit {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Admit::Record {
                suppressed: std::mem::take(&mut self.suppressed),
            }
        } else {
            self.suppressed = self.suppressed.saturating_add(1);
            Admit::Suppress
        }
    }

    /// Gives back the count of a record that could not be written, so the
    /// next one carries it.
    pub fn restore(&mut self, refusals: u64) {
        self.suppressed = self.suppressed.saturating_add(refusals);
    }

    /// How many refusals are held back.
    pub fn held_back(&self) -> u64 {
        self.suppressed
    }

    /// Takes every held-back refusal for one record of them, spending a
    /// token (or, with `force`, at shutdown, without one); `None` when
    /// none are held back or no token is available.
    pub fn drain(&mut self, now: Instant, force: bool) -> Option<u64> {
        self.refill(now);
        if self.suppressed == 0 {
            return None;
        }
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
        } else if !force {
            return None;
        }
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// The edge's recorder of refused authentications.
#[derive(Debug, Default)]
pub struct Refusals {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Records being appended, which a shutdown waits for.
    in_flight: AtomicUsize,
    idle: tokio::sync::Notify,
}

impl Default for Shared {
    fn default() -> Self {
        Self {
            state: Mutex::new(State {
                bucket: Bucket::new(Instant::now()),
                held: None,
                flusher: false,
            }),
            in_flight: AtomicUsize::new(0),
            idle: tokio::sync::Notify::new(),
        }
    }
}

#[derive(Debug)]
struct State {
    bucket: Bucket,
    /// The newest refusal held back. Whenever refusals are held back, one
    /// is here, and the flusher records it with the count of the others
    /// unless a later record carries them first.
    held: Option<Held>,
    /// Whether a flusher task is waiting for the next token.
    flusher: bool,
}

/// One refusal, as its record will name it.
#[derive(Debug, Clone)]
struct Held {
    reason: String,
    route: String,
    key_id: Option<String>,
    peer: Option<String>,
    request_id: Option<RequestId>,
}

impl Refusals {
    /// Records (or counts) one refused authentication in `audit`, without
    /// waiting for the append. `route` names what was asked for (a route
    /// pattern, `ops`, `dashboard/login`); `key_id` is the public id of a
    /// refused gateway API key; `peer` the connection's peer address.
    pub fn record(
        &self,
        audit: &AuditLog,
        reason: &str,
        route: &str,
        key_id: Option<String>,
        peer: Option<std::net::IpAddr>,
        request_id: Option<&RequestId>,
    ) {
        let held = Held {
            reason: reason.to_owned(),
            route: route.to_owned(),
            key_id,
            peer: peer.map(|p| p.to_string()),
            request_id: request_id.cloned(),
        };
        let Ok(mut st) = self.shared.state.lock() else {
            return;
        };
        match st.bucket.admit(Instant::now()) {
            Admit::Record { suppressed } => {
                // This record carries every refusal held back so far.
                st.held = None;
                drop(st);
                self.shared.write(audit, held, suppressed);
            }
            Admit::Suppress => {
                st.held = Some(held);
                if !st.flusher {
                    st.flusher = spawn(flusher(self.shared.clone(), audit.clone()));
                }
            }
        }
    }

    /// At shutdown: records what is held back (past the rate limit, since
    /// nothing comes after), then waits for every record to be appended.
    pub async fn flush(&self, audit: &AuditLog) {
        let drained = self.shared.state.lock().ok().and_then(|mut st| {
            let n = st.bucket.drain(Instant::now(), true)?;
            Some((st.held.take()?, n))
        });
        if let Some((held, n)) = drained {
            self.shared.write(audit, held, n.saturating_sub(1));
        }
        loop {
            let idle = self.shared.idle.notified();
            if self.shared.in_flight.load(Ordering::Acquire) == 0 {
                return;
            }
            idle.await;
        }
    }
}

impl Shared {
    /// Appends the record of `held`, standing for itself and `suppressed`
    /// other refusals. A record that cannot be appended is held back
    /// again, count and all, for the next record or the flusher.
    fn write(self: &Arc<Self>, audit: &AuditLog, held: Held, suppressed: u64) {
        let tenant = crate::ops::system_tenant();
        let event = AuditEvent {
            tenant: tenant.clone(),
            turn: None,
            request_id: held.request_id.clone(),
            at_ms: now_ms(),
            kind: EventKind::AuthRefused {
                reason: held.reason.clone(),
                route: held.route.clone(),
                key_id: held.key_id.clone(),
                peer: held.peer.clone(),
                suppressed,
            },
        };
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let shared = self.clone();
        let audit = audit.clone();
        let spawned = spawn(async move {
            if let Err(e) = audit.append_turn(&tenant, None, vec![event]).await {
                tracing::error!(error = %e, "cannot record a refused authentication in the audit log; its count is carried to the next record");
                if let Ok(mut st) = shared.state.lock() {
                    st.bucket.restore(suppressed.saturating_add(1));
                    st.held.get_or_insert(held);
                    if !st.flusher {
                        st.flusher = spawn(flusher(shared.clone(), audit.clone()));
                    }
                }
            }
            if shared.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
                shared.idle.notify_waiters();
            }
        });
        if !spawned {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Waits for the bucket's next token and records the refusals held back
/// then, unless a record carried them meanwhile; so a flood's count is in
/// the log at most about one [`REFILL`] after the flood, not only at the
/// next refusal.
async fn flusher(shared: Arc<Shared>, audit: AuditLog) {
    loop {
        tokio::time::sleep(REFILL).await;
        let Ok(mut st) = shared.state.lock() else {
            return;
        };
        match st.bucket.drain(Instant::now(), false) {
            Some(n) => {
                st.flusher = false;
                let held = st.held.take();
                drop(st);
                if let Some(held) = held {
                    shared.write(&audit, held, n.saturating_sub(1));
                }
                return;
            }
            None if st.bucket.held_back() == 0 => {
                st.flusher = false;
                st.held = None;
                return;
            }
            // Later refusals took the tokens and still some are held back.
            None => {}
        }
    }
}

/// Spawns on the current runtime. Every caller runs inside one (the edge,
/// the ops API, the dashboard); outside one the record is dropped with an
/// error rather than a panic.
fn spawn(fut: impl std::future::Future<Output = ()> + Send + 'static) -> bool {
    match tokio::runtime::Handle::try_current() {
        Ok(h) => {
            h.spawn(fut);
            true
        }
        Err(_) => {
            tracing::error!("a refused authentication was not recorded: no async runtime");
            false
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_recorded_then_refusals_are_counted_into_the_next_record() {
        let t0 = Instant::now();
        let mut b = Bucket::new(t0);
        for _ in 0..BURST {
            assert_eq!(b.admit(t0), Admit::Record { suppressed: 0 });
        }
        for _ in 0..7 {
            assert_eq!(b.admit(t0), Admit::Suppress);
        }
        // One token back after REFILL: the next record carries the 7.
        assert_eq!(b.admit(t0 + REFILL / 2), Admit::Suppress);
        let later = t0 + REFILL + Duration::from_millis(1);
        assert_eq!(b.admit(later), Admit::Record { suppressed: 8 });
        assert_eq!(b.admit(later), Admit::Suppress);
    }

    #[test]
    fn the_bucket_refills_at_the_rate_and_never_above_the_burst() {
        let t0 = Instant::now();
        let mut b = Bucket::new(t0);
        for _ in 0..BURST {
            b.admit(t0);
        }
        // An hour of quiet refills to BURST, not more.
        let later = t0 + Duration::from_secs(3600);
        let admitted = (0..BURST * 3)
            .filter(|_| matches!(b.admit(later), Admit::Record { .. }))
            .count();
        assert_eq!(admitted, BURST as usize);
        // Over ten minutes of a steady flood (one refusal every 10 ms), one
        // record per REFILL.
        let mut recorded = 0u64;
        let mut accounted = 0;
        let n = 60_000u64;
        for i in 0..n {
            if let Admit::Record { suppressed } = b.admit(later + Duration::from_millis(10 * i)) {
                recorded += 1;
                accounted += 1 + suppressed;
            }
        }
        let expected = 600 / REFILL.as_secs();
        assert!(
            (expected - 1..=expected + 1).contains(&recorded),
            "{recorded}"
        );
        // Every refusal of the flood is accounted for by the records, but
        // the ones after the last record, which the next record will carry.
        let per_refill = REFILL.as_millis() as u64 / 10;
        assert!(accounted <= n && accounted + per_refill >= n, "{accounted}");
    }

    #[test]
    fn held_back_refusals_are_drained_by_a_token_or_at_shutdown() {
        let t0 = Instant::now();
        let mut b = Bucket::new(t0);
        assert_eq!(b.drain(t0, false), None, "nothing held back");
        for _ in 0..BURST {
            b.admit(t0);
        }
        for _ in 0..3 {
            b.admit(t0);
        }
        assert_eq!(b.drain(t0, false), None, "no token yet");
        assert_eq!(b.drain(t0 + REFILL, false), Some(3));
        assert_eq!(b.held_back(), 0);
        b.admit(t0 + REFILL);
        assert_eq!(b.drain(t0 + REFILL, true), Some(1), "forced at shutdown");
    }

    #[test]
    fn a_record_that_could_not_be_written_is_carried_forward() {
        let t0 = Instant::now();
        let mut b = Bucket::new(t0);
        assert_eq!(b.admit(t0), Admit::Record { suppressed: 0 });
        b.restore(1);
        assert_eq!(b.admit(t0), Admit::Record { suppressed: 1 });
    }
}
