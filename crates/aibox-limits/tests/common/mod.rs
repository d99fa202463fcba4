//! Helpers shared by the integration tests: principals, configs, unique key
//! prefixes and a guard against a window boundary in the middle of a test.

// Each test binary uses a different subset of these helpers, and helpers
// outside `#[test]` functions are not covered by clippy's test allowances,
// yet failing loudly on a broken fixture is exactly what a test helper is for.
#![allow(dead_code, clippy::unwrap_used, clippy::panic)]

use std::collections::BTreeMap;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aibox_config::{LimitsConfig, Rate};
use aibox_core::{AuthMethod, Principal, Secret, TenantId, UserId};
use aibox_limits::Limiter;

/// The Redis the tests run against.
pub const REDIS_URL: &str = "redis://127.0.0.1:6379";

pub fn who(tenant: &str, user: &str) -> Principal {
    Principal {
        tenant: TenantId::new(tenant).unwrap(),
        user: UserId::new(user).unwrap(),
        roles: Vec::new(),
        auth: AuthMethod::Anonymous,
    }
}

pub fn rate(rpm: Option<u64>, tpm: Option<u64>) -> Rate {
    Rate {
        requests_per_minute: rpm,
        tokens_per_minute: tpm,
    }
}

pub fn limits(tenant: Rate, user: Rate) -> LimitsConfig {
    LimitsConfig {
        tenant,
        user,
        tenants: BTreeMap::new(),
    }
}

/// A key prefix no other test (or earlier run) uses, so tests sharing one
/// Redis never see each other's counters.
pub fn unique_prefix() -> String {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    format!("aibox-test-{:016x}", h.finish())
}

/// Connects to the test Redis, failing loudly when it is not there: a
/// skipped test would hide that shared limits were never exercised.
pub async fn redis_limiter(cfg: LimitsConfig, prefix: &str) -> Limiter {
    Limiter::with_redis(cfg, &Secret::new(REDIS_URL), prefix)
        .await
        .unwrap_or_else(|e| {
            panic!("these tests need a running Redis at {REDIS_URL} (e.g. `redis-server`): {e}")
        })
}

/// Waits for the next window when fewer than 5 s of the current one are
/// left, so the counts a test builds up cannot be reset half-way.
pub async fn fresh_local_window() {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    wait_if_late(u64::try_from(now.as_millis()).unwrap()).await;
}

/// Like [`fresh_local_window`], by the Redis server's clock, which is the
/// one the shared limiter uses.
pub async fn fresh_redis_window() {
    let client = redis::Client::open(REDIS_URL).unwrap();
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("these tests need a running Redis at {REDIS_URL}: {e}"));
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await.unwrap();
    wait_if_late(secs * 1000 + micros / 1000).await;
}

async fn wait_if_late(now_ms: u64) {
    let left = 60_000 - now_ms % 60_000;
    if left < 5_000 {
        tokio::time::sleep(Duration::from_millis(left + 100)).await;
    }
}

/// Every key under `prefix`, with its remaining time to live.
pub async fn keys_with_ttl(prefix: &str) -> Vec<(String, i64)> {
    let client = redis::Client::open(REDIS_URL).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut out = Vec::new();
    for k in keys {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&k)
            .query_async(&mut conn)
            .await
            .unwrap();
        out.push((k, ttl));
    }
    out.sort();
    out
}
