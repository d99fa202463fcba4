//! Counters kept in this process only.
//!
//! One mutex guards every counter, which makes check-then-increment across
//! the tenant and the user budgets trivially atomic; the critical section is a
//! few hash lookups, far shorter than anything else a request does. Only the
//! current window is kept: when the clock enters a new window the whole map is
//! cleared, so memory is bounded by the principals active in one minute.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use aibox_core::{Principal, TenantId, UserId};

use crate::error::{Denied, LimitKind, Scope};
use crate::rates::Rates;
use crate::window::{WINDOW_MS, retry_after, window_of};

/// In-process counters for the current window.
#[derive(Debug, Default)]
pub(crate) struct MemoryLimiter {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    window: u64,
    counters: HashMap<Key, Counts>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Tenant(TenantId),
    User(TenantId, UserId),
}

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    requests: u64,
    tokens: u64,
}

impl Counts {
    fn get(self, kind: LimitKind) -> u64 {
        match kind {
            LimitKind::Requests => self.requests,
            LimitKind::Tokens => self.tokens,
        }
    }
}

impl State {
    /// Moves to the window of `now_ms` and returns the window in force.
    ///
    /// The window never moves backwards: if the clock steps back, counting
    /// continues in the later window instead of handing out a fresh budget.
    fn roll(&mut self, now_ms: u64) -> u64 {
        let window = window_of(now_ms);
        if window > self.window {
            let active = self.counters.len();
            self.window = window;
            self.counters.clear();
            // Keeping the capacity of the last window avoids rehashing in the
            // steady state, while a one-off burst of principals is released
            // one window later instead of being held forever.
            self.counters.shrink_to(active);
        }
        self.window
    }

    fn counts(&self, key: &Key) -> Counts {
        self.counters.get(key).copied().unwrap_or_default()
    }
}

impl MemoryLimiter {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing inside the lock can panic half-way through an update, so a
        // poisoned mutex still holds consistent counters and is safe to use.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts one request for `principal` if every budget has room.
    pub fn admit(&self, rates: &Rates, principal: &Principal, now_ms: u64) -> Result<(), Denied> {
        let tenant_key = Key::Tenant(principal.tenant.clone());
        let user_key = Key::User(principal.tenant.clone(), principal.user.clone());
        let mut state = self.lock();
        let window = state.roll(now_ms);
        let tenant = state.counts(&tenant_key);
        let user = state.counts(&user_key);
        for (scope, kind, limit) in rates.checks() {
            let Some(limit) = limit else { continue };
            let used = match scope {
                Scope::Tenant => tenant.get(kind),
                Scope::User => user.get(kind),
            };
            if used >= limit {
                let window_end = (window + 1).saturating_mul(WINDOW_MS);
                return Err(Denied {
                    scope,
                    kind,
                    limit,
                    retry_after: retry_after(window_end.saturating_sub(now_ms)),
                });
            }
        }
        if rates.tenant.requests_per_minute.is_some() {
            let c = state.counters.entry(tenant_key).or_default();
            c.requests = c.requests.saturating_add(1);
        }
        if rates.user.requests_per_minute.is_some() {
            let c = state.counters.entry(user_key).or_default();
            c.requests = c.requests.saturating_add(1);
        }
        Ok(())
    }

    /// Adds `tokens` to the token budgets of `principal` that have a limit.
    pub fn record_tokens(&self, rates: &Rates, principal: &Principal, tokens: u64, now_ms: u64) {
        if tokens == 0 || !rates.counts_tokens() {
            return;
        }
        let mut state = self.lock();
        state.roll(now_ms);
        if rates.tenant.tokens_per_minute.is_some() {
            let c = state
                .counters
                .entry(Key::Tenant(principal.tenant.clone()))
                .or_default();
            c.tokens = c.tokens.saturating_add(tokens);
        }
        if rates.user.tokens_per_minute.is_some() {
            let c = state
                .counters
                .entry(Key::User(principal.tenant.clone(), principal.user.clone()))
                .or_default();
            c.tokens = c.tokens.saturating_add(tokens);
        }
    }

    /// How many counters are held, for tests of pruning.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().counters.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use aibox_config::Rate;

    use super::*;

    /// The start of some window, far from the epoch like real timestamps.
    const T0: u64 = 29_000_000 * WINDOW_MS;

    fn who(tenant: &str, user: &str) -> Principal {
        let mut p = Principal::anonymous();
        p.tenant = TenantId::new(tenant).unwrap();
        p.user = UserId::new(user).unwrap();
        p
    }

    fn rate(rpm: Option<u64>, tpm: Option<u64>) -> Rate {
        Rate {
            requests_per_minute: rpm,
            tokens_per_minute: tpm,
        }
    }

    #[test]
    fn user_rpm_is_per_user_and_resets_with_the_window() {
        let m = MemoryLimiter::default();
        let rates = Rates {
            tenant: Rate::default(),
            user: rate(Some(2), None),
        };
        let (a, b) = (who("t", "a"), who("t", "b"));
        assert!(m.admit(&rates, &a, T0).is_ok());
        assert!(m.admit(&rates, &a, T0 + 1).is_ok());
        let d = m.admit(&rates, &a, T0 + 10_000).unwrap_err();
        assert_eq!(
            d,
            Denied {
                scope: Scope::User,
                kind: LimitKind::Requests,
                limit: 2,
                retry_after: Duration::from_secs(50),
            }
        );
        assert!(
            m.admit(&rates, &b, T0 + 10_000).is_ok(),
            "b has its own budget"
        );
        assert!(m.admit(&rates, &a, T0 + WINDOW_MS).is_ok(), "next window");
    }

    #[test]
    fn a_denied_request_counts_nothing() {
        let m = MemoryLimiter::default();
        let rates = Rates {
            tenant: rate(Some(3), None),
            user: rate(Some(1), None),
        };
        assert!(m.admit(&rates, &who("t", "a"), T0).is_ok());
        // Denied by the user limit; had it counted for the tenant, the
        // tenant would be full after "c" and "d" would be the one refused.
        assert_eq!(
            m.admit(&rates, &who("t", "a"), T0).unwrap_err().scope,
            Scope::User
        );
        assert!(m.admit(&rates, &who("t", "b"), T0).is_ok());
        assert!(m.admit(&rates, &who("t", "c"), T0).is_ok());
        let d = m.admit(&rates, &who("t", "d"), T0).unwrap_err();
        assert_eq!(
            (d.scope, d.kind, d.limit),
            (Scope::Tenant, LimitKind::Requests, 3)
        );
    }

    #[test]
    fn tokens_block_once_the_window_total_reaches_the_limit() {
        let m = MemoryLimiter::default();
        let rates = Rates {
            tenant: rate(None, Some(1_000)),
            user: Rate::default(),
        };
        let p = who("t", "a");
        assert!(m.admit(&rates, &p, T0).is_ok());
        m.record_tokens(&rates, &p, 999, T0);
        assert!(m.admit(&rates, &p, T0).is_ok(), "999 < 1000 still admits");
        m.record_tokens(&rates, &p, 1, T0);
        let d = m.admit(&rates, &p, T0 + 59_001).unwrap_err();
        assert_eq!(
            (d.scope, d.kind, d.limit, d.retry_after),
            (
                Scope::Tenant,
                LimitKind::Tokens,
                1_000,
                Duration::from_secs(1)
            )
        );
        assert!(m.admit(&rates, &p, T0 + WINDOW_MS).is_ok());
    }

    #[test]
    fn a_new_window_prunes_old_counters() {
        let m = MemoryLimiter::default();
        let rates = Rates {
            tenant: rate(Some(100), None),
            user: rate(Some(100), None),
        };
        for i in 0..50 {
            assert!(m.admit(&rates, &who("t", &format!("u{i}")), T0).is_ok());
        }
        assert_eq!(m.len(), 51);
        assert!(m.admit(&rates, &who("t", "u0"), T0 + WINDOW_MS).is_ok());
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn a_clock_step_back_does_not_reset_the_budget() {
        let m = MemoryLimiter::default();
        let rates = Rates {
            tenant: Rate::default(),
            user: rate(Some(1), None),
        };
        let p = who("t", "a");
        assert!(m.admit(&rates, &p, T0 + WINDOW_MS).is_ok());
        let d = m.admit(&rates, &p, T0).unwrap_err();
        assert_eq!(d.retry_after, Duration::from_secs(60));
    }
}
