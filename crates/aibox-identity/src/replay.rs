//! Single-use enforcement for CapTokens: remember each `jti` until its token
//! expires.
//!
//! A replay guard answers one question, "is this the first use of `jti`?",
//! atomically. In one process [`MemoryReplayGuard`] is enough; several
//! replicas share [`RedisReplayGuard`] (`SET key NX PX ttl`). Both fail
//! closed: when the guard cannot answer (Redis down, memory bound reached)
//! the caller gets an error and must refuse the token, never allow it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use aibox_core::Secret;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// The default Redis key prefix for remembered `jti`s.
pub const DEFAULT_REDIS_PREFIX: &str = "aibox:captoken:jti:";

/// The default number of `jti`s the memory guard remembers.
pub const DEFAULT_MEMORY_CAPACITY: usize = 100_000;

/// How long one Redis call may take before the guard gives up (and refuses).
const REDIS_CALL_TIMEOUT: Duration = Duration::from_millis(500);

/// Why a replay guard could not decide.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// The shared store failed or did not answer.
    #[error("the replay store is unavailable")]
    Unavailable {
        /// The store's address (no credentials).
        target: String,
        /// What failed (credentials scrubbed).
        cause: String,
    },
    /// The in-memory guard is full of unexpired entries.
    #[error("the replay store is full")]
    Full {
        /// Its capacity.
        capacity: usize,
    },
    /// The Redis URL could not be parsed.
    #[error("the replay store URL is invalid")]
    InvalidUrl {
        /// Why (credentials scrubbed).
        reason: String,
    },
}

impl ReplayError {
    /// The cause and the fix, for the logs.
    pub fn operator_hint(&self) -> String {
        match self {
            Self::Unavailable { target, cause } => format!(
                "CapToken replay protection cannot reach Redis at {target} ({cause}); tokens are \
                 refused until it is back; check that Redis is running and that the Redis URL \
                 and REDIS_PASSWORD are right"
            ),
            Self::Full { capacity } => format!(
                "the in-memory CapToken replay guard holds {capacity} unexpired token ids; tokens \
                 are refused rather than forgotten; raise its capacity, shorten the CapToken TTL, \
                 or use the Redis guard"
            ),
            Self::InvalidUrl { reason } => format!(
                "the Redis URL for CapToken replay protection is invalid ({reason}); use \
                 redis://:PASSWORD@HOST:6379/0"
            ),
        }
    }
}

/// Remembers which token ids were used.
///
/// The returned future is `Send` so guards work inside multi-threaded
/// servers; implementors may still write `async fn`.
pub trait ReplayGuard: Send + Sync {
    /// Records `jti` until `expires_at` and returns `true` if this is its
    /// first use, `false` if it was seen before and has not expired.
    fn first_use(
        &self,
        jti: &str,
        expires_at: SystemTime,
    ) -> impl Future<Output = Result<bool, ReplayError>> + Send;
}

/// A bounded in-process guard.
#[derive(Debug)]
pub struct MemoryReplayGuard {
    seen: Mutex<HashMap<String, SystemTime>>,
    capacity: usize,
}

impl Default for MemoryReplayGuard {
    fn default() -> Self {
        Self::new(DEFAULT_MEMORY_CAPACITY)
    }
}

impl MemoryReplayGuard {
    /// A guard that remembers at most `capacity` unexpired ids.
    pub fn new(capacity: usize) -> Self {
        Self {
            seen: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    /// How many ids are remembered now (expired ones included until pruned).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, SystemTime>> {
        // A panic while holding the lock cannot leave the map half-updated
        // (every update is one insert), so a poisoned lock is still usable.
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn check(
        &self,
        jti: &str,
        expires_at: SystemTime,
        now: SystemTime,
    ) -> Result<bool, ReplayError> {
        let mut seen = self.lock();
        if let Some(until) = seen.get_mut(jti) {
            if *until > now {
                return Ok(false);
            }
            // The earlier use has expired, and so has any token carrying this
            // id; the verifier refuses expired tokens before asking here.
            *until = expires_at;
            return Ok(true);
        }
        if seen.len() >= self.capacity {
            seen.retain(|_, until| *until > now);
            if seen.len() >= self.capacity {
                // Forgetting a live id would let its token be replayed, so a
                // full guard refuses instead.
                return Err(ReplayError::Full {
                    capacity: self.capacity,
                });
            }
        }
        seen.insert(jti.to_owned(), expires_at);
        Ok(true)
    }
}

impl ReplayGuard for MemoryReplayGuard {
    async fn first_use(&self, jti: &str, expires_at: SystemTime) -> Result<bool, ReplayError> {
        self.check(jti, expires_at, SystemTime::now())
    }
}

/// A guard shared by all replicas through Redis.
#[derive(Clone)]
pub struct RedisReplayGuard {
    conn: ConnectionManager,
    prefix: String,
    target: String,
    secrets: Vec<Secret>,
}

impl std::fmt::Debug for RedisReplayGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisReplayGuard")
            .field("target", &self.target)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisReplayGuard {
    /// Connects to Redis at `url` and checks it answers, so a wrong address
    /// or password fails at startup rather than on the first tool call.
    /// Keys are `{prefix}{jti}`.
    pub async fn connect(url: &Secret, prefix: impl Into<String>) -> Result<Self, ReplayError> {
        let guard = Self::connect_lazy(url, prefix)?;
        let mut conn = guard.conn.clone();
        let ping = redis::cmd("PING");
        guard.finish(ping.query_async::<String>(&mut conn)).await?;
        Ok(guard)
    }

    /// Like [`RedisReplayGuard::connect`] but connects on first use.
    pub fn connect_lazy(url: &Secret, prefix: impl Into<String>) -> Result<Self, ReplayError> {
        let mut secrets = vec![url.clone()];
        let client = redis::Client::open(url.expose()).map_err(|e| ReplayError::InvalidUrl {
            reason: scrub(&e.to_string(), &secrets),
        })?;
        let info = client.get_connection_info();
        if let Some(pw) = info.redis_settings().password() {
            secrets.push(Secret::new(pw));
        }
        let target = info.addr().to_string();
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(REDIS_CALL_TIMEOUT))
            .set_number_of_retries(1);
        let conn = ConnectionManager::new_lazy_with_config(client, config).map_err(|e| {
            ReplayError::Unavailable {
                target: target.clone(),
                cause: scrub(&e.to_string(), &secrets),
            }
        })?;
        Ok(Self {
            conn,
            prefix: prefix.into(),
            target,
            secrets,
        })
    }

    /// Uses an existing connection manager (shared with other Redis users).
    pub fn from_connection(
        conn: ConnectionManager,
        target: impl Into<String>,
        prefix: impl Into<String>,
    ) -> Self {
        Self {
            conn,
            prefix: prefix.into(),
            target: target.into(),
            secrets: Vec::new(),
        }
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    async fn finish<T>(
        &self,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, ReplayError> {
        match tokio::time::timeout(REDIS_CALL_TIMEOUT, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(ReplayError::Unavailable {
                target: self.target.clone(),
                cause: scrub(&e.to_string(), &self.secrets),
            }),
            Err(_) => Err(ReplayError::Unavailable {
                target: self.target.clone(),
                cause: format!("no answer within {} ms", REDIS_CALL_TIMEOUT.as_millis()),
            }),
        }
    }
}

impl RedisReplayGuard {
    /// Reads `{prefix}{name}`, for the other shared caches that reuse this
    /// connection (the JWKS cache); `None` when the key does not exist.
    pub(crate) async fn get_raw(&self, name: &str) -> Result<Option<Vec<u8>>, ReplayError> {
        let mut conn = self.conn.clone();
        let mut get = redis::cmd("GET");
        get.arg(format!("{}{name}", self.prefix));
        self.finish(get.query_async::<Option<Vec<u8>>>(&mut conn))
            .await
    }

    /// Writes `{prefix}{name}` with a time to live.
    pub(crate) async fn set_raw(
        &self,
        name: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<(), ReplayError> {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut conn = self.conn.clone();
        let mut set = redis::cmd("SET");
        set.arg(format!("{}{name}", self.prefix))
            .arg(value)
            .arg("PX")
            .arg(ttl_ms);
        self.finish(set.query_async::<()>(&mut conn)).await
    }
}

impl ReplayGuard for RedisReplayGuard {
    async fn first_use(&self, jti: &str, expires_at: SystemTime) -> Result<bool, ReplayError> {
        // Remember the id at least one second, so a token that expires in
        // the same instant is still remembered while verifiers with a little
        // clock leeway might accept it.
        let ttl = expires_at
            .duration_since(SystemTime::now())
            .unwrap_or_default()
            .max(Duration::from_secs(1));
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let mut key = String::with_capacity(self.prefix.len() + jti.len());
        key.push_str(&self.prefix);
        key.push_str(jti);
        let mut conn = self.conn.clone();
        let mut set = redis::cmd("SET");
        set.arg(&key).arg(1u8).arg("NX").arg("PX").arg(ttl_ms);
        // `OK` means the key was created (first use); nil means it existed.
        let reply = self
            .finish(set.query_async::<Option<String>>(&mut conn))
            .await?;
        Ok(reply.is_some())
    }
}

/// Either guard, chosen at startup from the configuration.
#[derive(Debug)]
pub enum AnyReplayGuard {
    /// In this process only.
    Memory(MemoryReplayGuard),
    /// Shared through Redis.
    Redis(RedisReplayGuard),
}

impl ReplayGuard for AnyReplayGuard {
    async fn first_use(&self, jti: &str, expires_at: SystemTime) -> Result<bool, ReplayError> {
        match self {
            Self::Memory(g) => g.first_use(jti, expires_at).await,
            Self::Redis(g) => g.first_use(jti, expires_at).await,
        }
    }
}

/// Replaces every secret in `message` with the redaction marker.
fn scrub(message: &str, secrets: &[Secret]) -> String {
    let mut out = message.to_owned();
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        out = out.replace(s.expose(), aibox_core::secret::REDACTED);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const REDIS_URL: &str = "redis://127.0.0.1:6379";

    fn unique_prefix(test: &str) -> String {
        let mut b = [0u8; 8];
        getrandom::fill(&mut b).unwrap();
        format!("aibox-identity-test:{test}:{}:", hex::encode(b))
    }

    async fn redis_guard(test: &str) -> RedisReplayGuard {
        match RedisReplayGuard::connect(&Secret::new(REDIS_URL), unique_prefix(test)).await {
            Ok(g) => g,
            Err(e) => panic!(
                "these tests need the real Redis at {REDIS_URL} (start it, e.g. \
                 `redis-server --daemonize yes`): {}",
                e.operator_hint()
            ),
        }
    }

    #[tokio::test]
    async fn memory_guard_refuses_second_use() {
        let g = MemoryReplayGuard::new(10);
        let exp = SystemTime::now() + Duration::from_secs(60);
        assert!(g.first_use("a", exp).await.unwrap());
        assert!(!g.first_use("a", exp).await.unwrap());
        assert!(g.first_use("b", exp).await.unwrap());
        assert_eq!(g.len(), 2);
    }

    #[test]
    fn memory_guard_prunes_expired_and_fails_closed_when_full() {
        let g = MemoryReplayGuard::new(2);
        let now = SystemTime::now();
        let past = now - Duration::from_secs(1);
        let future = now + Duration::from_secs(60);
        assert!(g.check("old", past, now).unwrap());
        assert!(g.check("live", future, now).unwrap());
        // Full: the expired entry is pruned to make room.
        assert!(g.check("new", future, now).unwrap());
        assert_eq!(g.len(), 2);
        // Full of live entries: refuse rather than forget.
        assert_eq!(
            g.check("more", future, now),
            Err(ReplayError::Full { capacity: 2 })
        );
        // Still remembered.
        assert!(!g.check("live", future, now).unwrap());
        // An expired entry no longer blocks its id.
        let later = future + Duration::from_secs(1);
        assert!(
            g.check("live", later + Duration::from_secs(60), later)
                .unwrap()
        );
    }

    #[tokio::test]
    async fn redis_guard_refuses_second_use_across_instances() {
        let a = redis_guard("second-use").await;
        let b = RedisReplayGuard::connect(&Secret::new(REDIS_URL), a.prefix().to_owned())
            .await
            .unwrap();
        let exp = SystemTime::now() + Duration::from_secs(30);
        assert!(a.first_use("jti-1", exp).await.unwrap());
        assert!(!a.first_use("jti-1", exp).await.unwrap());
        assert!(!b.first_use("jti-1", exp).await.unwrap());
        assert!(b.first_use("jti-2", exp).await.unwrap());

        // The key carries a TTL close to the token's remaining lifetime.
        let client = redis::Client::open(REDIS_URL).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let pttl: i64 = redis::cmd("PTTL")
            .arg(format!("{}jti-1", a.prefix()))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(pttl > 25_000 && pttl <= 30_000, "pttl {pttl}");
    }

    #[tokio::test]
    async fn redis_guard_concurrent_first_use_has_one_winner() {
        let g = redis_guard("race").await;
        let exp = SystemTime::now() + Duration::from_secs(30);
        let tries = (0..20).map(|_| g.first_use("same", exp));
        let results = futures_util::future::join_all(tries).await;
        let winners = results.iter().filter(|r| *r.as_ref().unwrap()).count();
        assert_eq!(winners, 1);
    }

    #[tokio::test]
    async fn redis_guard_fails_closed_when_redis_is_unreachable() {
        // Nothing listens on port 1; the guard must report an error, never
        // "first use", and must not echo the password.
        let g =
            RedisReplayGuard::connect_lazy(&Secret::new("redis://:hunter2-pw@127.0.0.1:1/0"), "x:")
                .unwrap();
        let err = g
            .first_use("jti", SystemTime::now() + Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, ReplayError::Unavailable { .. }), "{err:?}");
        assert!(!err.operator_hint().contains("hunter2"));
        assert!(!format!("{g:?}").contains("hunter2"));
        assert!(
            RedisReplayGuard::connect(&Secret::new("redis://:hunter2-pw@127.0.0.1:1/0"), "x:")
                .await
                .is_err()
        );
    }
}
