//! Fixed one-minute windows aligned on the wall clock.
//!
//! Aligning windows on `floor(unix_ms / 60000)` rather than on each caller's
//! first request lets every replica, and Redis, agree on which window a
//! request falls into without sharing any state but the clock.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The length of one window in milliseconds.
pub(crate) const WINDOW_MS: u64 = 60_000;

/// The current Unix time in milliseconds.
pub(crate) fn now_ms() -> u64 {
    // A clock before 1970 is a broken host; treating it as the epoch keeps
    // limits working (in one very long window) instead of failing requests.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The window a Unix millisecond timestamp falls into.
pub(crate) fn window_of(ms: u64) -> u64 {
    ms / WINDOW_MS
}

/// How long a denied caller should wait: the rest of the window, rounded up
/// to whole seconds so a `Retry-After` header is exact, and kept within
/// 1..=60 s so a clock step can neither ask for an immediate retry nor for
/// more than one window.
pub(crate) fn retry_after(ms_left: u64) -> Duration {
    Duration::from_secs(ms_left.div_ceil(1000).clamp(1, WINDOW_MS / 1000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_and_stays_within_one_window() {
        assert_eq!(retry_after(0), Duration::from_secs(1));
        assert_eq!(retry_after(1), Duration::from_secs(1));
        assert_eq!(retry_after(1_001), Duration::from_secs(2));
        assert_eq!(retry_after(60_000), Duration::from_secs(60));
        assert_eq!(retry_after(90_000), Duration::from_secs(60));
    }

    #[test]
    fn windows_are_aligned_on_the_minute() {
        assert_eq!(window_of(0), 0);
        assert_eq!(window_of(59_999), 0);
        assert_eq!(window_of(60_000), 1);
        assert!(window_of(now_ms()) > 28_000_000);
    }
}
