//! Per-tenant and per-user rate limits for the OpenAI-compatible router.
//!
//! # Limits
//!
//! Four budgets can apply to a request, each optional (`None` is unlimited):
//! requests per minute (RPM) and tokens per minute (TPM), for the tenant
//! (`limits.tenant`, overridden per tenant by `limits.tenants.<id>`) and for
//! the user within the tenant (`limits.user`, counted per tenant + user).
//! Windows are fixed 60-second windows aligned on the clock
//! (`floor(unix_ms / 60000)`), so a caller denied near the end of a minute
//! waits seconds, not a full minute.
//!
//! [`Limiter::admit`] runs before a request is forwarded. It counts one
//! request for the tenant and the user only if every RPM budget still has room
//! and the TPM counters of the current window are below their limits;
//! otherwise it returns [`Denied`] (scope, kind, limit, `retry_after`) and
//! counts nothing. Token usage is only known after the response, so
//! [`Limiter::record_tokens`] adds it afterwards, and TPM budgets stop
//! admitting once a window's total has reached the limit (the request that
//! crosses the limit is allowed to finish). Check-then-increment is atomic:
//! one mutex in memory, one Lua script in Redis. When no budget applies to a
//! principal, `admit` returns at once without locking or touching Redis.
//!
//! # Backends
//!
//! [`Limiter::in_memory`] counts in this process: right for one replica.
//! [`Limiter::with_redis`] shares the counters between replicas. Keys are
//! `{prefix}:rl:{window}:{t|u}:{r|k}:{tenant}[:{user}]` (`t`/`u` tenant or
//! user, `r`/`k` requests or tokens), expire after two windows, and the window
//! comes from Redis' own clock (`TIME` inside the script), so replicas whose
//! clocks disagree still count into the same window. Each `admit` is a single
//! `EVALSHA` round-trip. Tenant and user ids cannot contain `:` (their types
//! forbid it), so keys cannot collide.
//!
//! # When Redis fails
//!
//! A Redis failure never turns into "no limit". A call that Redis does not
//! answer within 250 ms, or answers with an error, is served by an in-process
//! limiter instead, and Redis is then skipped for one second so an outage
//! does not add the timeout to every request. While this lasts, limits are
//! enforced per process: each replica allows the full budget on its own, and
//! counts made in Redis before the outage are not seen. A warning is logged
//! at most once every ten seconds, naming the cause (never the password) and
//! the settings to check (`redis_url` / `AIBOX_REDIS_URL`), and an info line
//! when Redis answers again. [`Limiter::fallbacks`] counts the calls served
//! from memory so metrics can show it. [`Limiter::with_redis_lazy`] starts
//! without a connection, in this degraded mode until Redis answers.

mod error;
mod memory;
mod rates;
mod shared;
mod window;

use aibox_config::LimitsConfig;
use aibox_core::{Principal, Secret};

pub use error::{Denied, LimitError, LimitKind, Scope};

use memory::MemoryLimiter;
use rates::Rates;
use shared::RedisBackend;

/// The rate limiter; share one per process (e.g. in an `Arc`).
#[derive(Debug)]
pub struct Limiter {
    /// Swapped whole by [`Limiter::set_limits`]; a decision reads it once.
    cfg: arc_swap::ArcSwap<LimitsConfig>,
    backend: Backend,
}

#[derive(Debug)]
enum Backend {
    Memory(MemoryLimiter),
    Redis(Box<RedisBackend>),
}

impl Limiter {
    /// A limiter that counts in this process only.
    pub fn in_memory(cfg: LimitsConfig) -> Self {
        Self {
            cfg: arc_swap::ArcSwap::from_pointee(cfg),
            backend: Backend::Memory(MemoryLimiter::default()),
        }
    }

    /// A limiter shared through Redis at `redis_url`, with keys under
    /// `key_prefix`. Connects and loads the limiter scripts first, so an
    /// unreachable server or a wrong password is an error here rather than a
    /// silent fallback later.
    pub async fn with_redis(
        cfg: LimitsConfig,
        redis_url: &Secret,
        key_prefix: &str,
    ) -> Result<Self, LimitError> {
        let backend = RedisBackend::connect(redis_url, key_prefix, false).await?;
        Ok(Self {
            cfg: arc_swap::ArcSwap::from_pointee(cfg),
            backend: Backend::Redis(Box::new(backend)),
        })
    }

    /// Like [`Limiter::with_redis`], but connects on first use, so the
    /// process can start while Redis is down (limits are then per process
    /// until it answers). Fails only on an invalid URL. Must be called within
    /// a Tokio runtime.
    pub async fn with_redis_lazy(
        cfg: LimitsConfig,
        redis_url: &Secret,
        key_prefix: &str,
    ) -> Result<Self, LimitError> {
        let backend = RedisBackend::connect(redis_url, key_prefix, true).await?;
        Ok(Self {
            cfg: arc_swap::ArcSwap::from_pointee(cfg),
            backend: Backend::Redis(Box::new(backend)),
        })
    }

    /// Admits one request of `principal`, counting it, or refuses it without
    /// counting anything.
    pub async fn admit(&self, principal: &Principal) -> Result<(), Denied> {
        let rates = Rates::for_principal(&self.cfg.load(), principal);
        if rates.is_unlimited() {
            return Ok(());
        }
        match &self.backend {
            Backend::Memory(m) => m.admit(&rates, principal, window::now_ms()),
            Backend::Redis(r) => r.admit(&rates, principal).await,
        }
    }

    /// Adds the tokens a finished request used to the current window of the
    /// tenant's and the user's token budgets.
    pub async fn record_tokens(&self, principal: &Principal, tokens: u64) {
        let rates = Rates::for_principal(&self.cfg.load(), principal);
        if tokens == 0 || !rates.counts_tokens() {
            return;
        }
        match &self.backend {
            Backend::Memory(m) => m.record_tokens(&rates, principal, tokens, window::now_ms()),
            Backend::Redis(r) => r.record_tokens(&rates, principal, tokens).await,
        }
    }

    /// Records the tokens at once when that needs no network: no token
    /// budget applies, or the counters are in memory. Returns false when
    /// they must still go to Redis through [`Limiter::record_tokens`],
    /// which the caller can run off the response path.
    ///
    /// A turn that records in memory thus spawns no task: on a
    /// multi-threaded runtime every spawn may wake another worker thread,
    /// which at low concurrency cost each turn a cross-core wake-up for
    /// what is a few atomic additions (issue 2).
    pub fn record_tokens_in_place(&self, principal: &Principal, tokens: u64) -> bool {
        let rates = Rates::for_principal(&self.cfg.load(), principal);
        if tokens == 0 || !rates.counts_tokens() {
            return true;
        }
        match &self.backend {
            Backend::Memory(m) => {
                m.record_tokens(&rates, principal, tokens, window::now_ms());
                true
            }
            Backend::Redis(_) => false,
        }
    }

    /// Replaces the limits (a config reload). Counters of the current
    /// windows are kept, so a reload neither resets nor doubles a budget;
    /// a decision in flight finishes with the limits it read.
    pub fn set_limits(&self, cfg: LimitsConfig) {
        self.cfg.store(std::sync::Arc::new(cfg));
    }

    /// `"memory"` or `"redis"`, for the startup log and metrics.
    pub fn backend(&self) -> &'static str {
        match self.backend {
            Backend::Memory(_) => "memory",
            Backend::Redis(_) => "redis",
        }
    }

    /// How many calls were served from memory because Redis failed; always
    /// zero for the in-memory backend.
    pub fn fallbacks(&self) -> u64 {
        match &self.backend {
            Backend::Memory(_) => 0,
            Backend::Redis(r) => r.fallbacks(),
        }
    }
}
