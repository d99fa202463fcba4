//! Counters shared by every replica through Redis, with an in-process
//! fallback while Redis is unreachable.
//!
//! Each admission is one `EVALSHA` of [`ADMIT_LUA`], which reads the window
//! from `redis.call('TIME')`, checks every budget and increments the request
//! counters in one atomic step. Keys are built inside the script because the
//! window is only known there; that suits a single Redis (with or without
//! replicas or Sentinel) but not Redis Cluster, which needs keys declared up
//! front.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aibox_core::{Principal, Secret};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Script};

use crate::error::{Denied, LimitError};
use crate::memory::MemoryLimiter;
use crate::rates::Rates;
use crate::window::{now_ms, retry_after};

/// Checks every budget of one principal and, when all have room, counts one
/// request. Returns `{0, ms_left}` when admitted, or `{i, ms_left}` where `i`
/// is the 1-based index of the first full budget in [`Rates::checks`] order.
///
/// ARGV: prefix, tenant, user, then the tenant RPM, tenant TPM, user RPM and
/// user TPM limits, where a negative limit means none.
pub(crate) const ADMIT_LUA: &str = r"
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local window = math.floor(now_ms / 60000)
local ms_left = (window + 1) * 60000 - now_ms
local base = ARGV[1] .. ':rl:' .. string.format('%d', window) .. ':'
local tenant = ':' .. ARGV[2]
local user = ':' .. ARGV[2] .. ':' .. ARGV[3]
local budgets = {
  {base .. 't:r' .. tenant, tonumber(ARGV[4])},
  {base .. 't:k' .. tenant, tonumber(ARGV[5])},
  {base .. 'u:r' .. user, tonumber(ARGV[6])},
  {base .. 'u:k' .. user, tonumber(ARGV[7])},
}
for i, b in ipairs(budgets) do
  if b[2] >= 0 then
    local used = tonumber(redis.call('GET', b[1]) or '0')
    if used >= b[2] then
      return {i, ms_left}
    end
  end
end
for _, i in ipairs({1, 3}) do
  local b = budgets[i]
  if b[2] >= 0 then
    redis.call('INCR', b[1])
    redis.call('PEXPIRE', b[1], 120000)
  end
end
return {0, ms_left}
";

/// Adds token usage to the current window's token counters.
///
/// ARGV: prefix, tenant, user, tokens, then `1` or `0` for whether the tenant
/// and the user have a token budget (counters without a budget are not kept).
pub(crate) const TOKENS_LUA: &str = r"
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local window = math.floor(now_ms / 60000)
local base = ARGV[1] .. ':rl:' .. string.format('%d', window) .. ':'
local keys = {}
if ARGV[5] == '1' then table.insert(keys, base .. 't:k:' .. ARGV[2]) end
if ARGV[6] == '1' then table.insert(keys, base .. 'u:k:' .. ARGV[2] .. ':' .. ARGV[3]) end
for _, k in ipairs(keys) do
  redis.call('INCRBY', k, ARGV[4])
  redis.call('PEXPIRE', k, 120000)
end
return 0
";

/// How long one limiter call may wait for Redis before it is served from
/// memory; a rate limiter must not add noticeable latency to every request.
const CALL_TIMEOUT: Duration = Duration::from_millis(250);
/// How long construction may wait for the first connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// After a failure, calls skip Redis for this long, so an outage costs each
/// request nothing instead of a full [`CALL_TIMEOUT`].
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);
/// At most one warning per this interval, so an outage does not flood logs.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The Redis-backed limiter.
pub(crate) struct RedisBackend {
    conn: ConnectionManager,
    prefix: String,
    /// Strings that must never appear in a log line: the URL and password.
    secrets: Vec<Secret>,
    target: String,
    admit: Script,
    tokens: Script,
    local: MemoryLimiter,
    fallbacks: AtomicU64,
    /// The origin of the millisecond stamps below, monotonic so a wall-clock
    /// step cannot silence warnings or keep Redis skipped.
    started: Instant,
    /// When the last warning was logged, plus one; zero means never.
    last_warn: AtomicU64,
    /// Until when calls skip Redis.
    skip_until: AtomicU64,
    degraded: AtomicBool,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("target", &self.target)
            .field("prefix", &self.prefix)
            .field("fallbacks", &self.fallbacks())
            .finish_non_exhaustive()
    }
}

impl RedisBackend {
    /// Builds the backend; unless `lazily`, connects and loads both scripts
    /// first so a wrong address, password or ACL fails at startup.
    pub async fn connect(url: &Secret, prefix: &str, lazily: bool) -> Result<Self, LimitError> {
        let mut secrets = vec![url.clone()];
        let client = Client::open(url.expose()).map_err(|e| LimitError::InvalidUrl {
            reason: scrub(&e.to_string(), &secrets),
        })?;
        let info = client.get_connection_info();
        if let Some(pw) = info.redis_settings().password() {
            secrets.push(Secret::new(pw));
        }
        let target = info.addr().to_string();
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(CALL_TIMEOUT))
            // Reconnection is paced by `RETRY_AFTER_FAILURE` instead of long
            // backoff loops inside the manager that calls would wait on.
            .set_number_of_retries(1);
        let connect_error = |cause: String| LimitError::Connect {
            target: target.clone(),
            cause,
        };
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| connect_error(scrub(&e.to_string(), &secrets)))?;
        let backend = Self {
            conn,
            prefix: prefix.to_owned(),
            secrets,
            target: target.clone(),
            admit: Script::new(ADMIT_LUA),
            tokens: Script::new(TOKENS_LUA),
            local: MemoryLimiter::default(),
            fallbacks: AtomicU64::new(0),
            started: Instant::now(),
            last_warn: AtomicU64::new(0),
            skip_until: AtomicU64::new(0),
            degraded: AtomicBool::new(false),
        };
        if !lazily {
            let mut conn = backend.conn.clone();
            let load = async {
                backend.admit.prepare_invoke().load_async(&mut conn).await?;
                backend.tokens.prepare_invoke().load_async(&mut conn).await
            };
            match tokio::time::timeout(CONNECT_TIMEOUT, load).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(connect_error(scrub(&e.to_string(), &backend.secrets))),
                Err(_) => {
                    return Err(connect_error(format!(
                        "no answer within {} s",
                        CONNECT_TIMEOUT.as_secs()
                    )));
                }
            }
        }
        Ok(backend)
    }

    /// How many calls were served from memory because Redis failed.
    pub fn fallbacks(&self) -> u64 {
        self.fallbacks.load(Ordering::Relaxed)
    }

    pub async fn admit(&self, rates: &Rates, principal: &Principal) -> Result<(), Denied> {
        if self.redis_allowed() {
            let mut invocation = self.admit.prepare_invoke();
            invocation
                .arg(&self.prefix)
                .arg(principal.tenant.as_str())
                .arg(principal.user.as_str());
            for (_, _, limit) in rates.checks() {
                invocation.arg(limit.map_or_else(|| "-1".to_owned(), |l| l.to_string()));
            }
            let mut conn = self.conn.clone();
            let call = invocation.invoke_async::<(u64, u64)>(&mut conn);
            if let Some((index, ms_left)) = self.finish(call).await {
                return match index.checked_sub(1) {
                    None => Ok(()),
                    Some(i) => Err(denied(rates, i, ms_left)),
                };
            }
        }
        self.local.admit(rates, principal, now_ms())
    }

    pub async fn record_tokens(&self, rates: &Rates, principal: &Principal, tokens: u64) {
        if self.redis_allowed() {
            let flag = |limit: Option<u64>| if limit.is_some() { "1" } else { "0" };
            let mut invocation = self.tokens.prepare_invoke();
            invocation
                .arg(&self.prefix)
                .arg(principal.tenant.as_str())
                .arg(principal.user.as_str())
                // Redis counters are signed 64-bit; clamping keeps an absurd
                // usage report from turning into a script error and a fallback.
                .arg(i64::try_from(tokens).unwrap_or(i64::MAX))
                .arg(flag(rates.tenant.tokens_per_minute))
                .arg(flag(rates.user.tokens_per_minute));
            let mut conn = self.conn.clone();
            let call = invocation.invoke_async::<i64>(&mut conn);
            if self.finish(call).await.is_some() {
                return;
            }
        }
        self.local.record_tokens(rates, principal, tokens, now_ms());
    }

    /// Milliseconds since construction, the clock of the fields below.
    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// True unless a recent failure says to go straight to memory; counts the
    /// fallback when it does.
    fn redis_allowed(&self) -> bool {
        if self.elapsed_ms() >= self.skip_until.load(Ordering::Relaxed) {
            return true;
        }
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
        false
    }

    /// Awaits a Redis call with the per-call timeout. On failure, counts the
    /// fallback, pauses Redis use briefly, warns (rate-limited) and returns
    /// `None` so the caller uses memory.
    async fn finish<T>(&self, call: impl Future<Output = redis::RedisResult<T>>) -> Option<T> {
        let cause = match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(Ok(value)) => {
                if self.degraded.swap(false, Ordering::Relaxed) {
                    tracing::info!(
                        redis = %self.target,
                        "Redis is reachable again; rate limits are shared across replicas again"
                    );
                }
                return Some(value);
            }
            Ok(Err(e)) => scrub(&e.to_string(), &self.secrets),
            Err(_) => format!("no answer within {} ms", CALL_TIMEOUT.as_millis()),
        };
        let now = self.elapsed_ms();
        let pause = u64::try_from(RETRY_AFTER_FAILURE.as_millis()).unwrap_or(u64::MAX);
        self.skip_until
            .store(now.saturating_add(pause), Ordering::Relaxed);
        self.degraded.store(true, Ordering::Relaxed);
        let fallbacks = self.fallbacks.fetch_add(1, Ordering::Relaxed) + 1;
        self.warn(now, &cause, fallbacks);
        None
    }

    fn warn(&self, now: u64, cause: &str, fallbacks: u64) {
        let last = self.last_warn.load(Ordering::Relaxed);
        let every = u64::try_from(WARN_EVERY.as_millis()).unwrap_or(u64::MAX);
        let due = last == 0 || now.saturating_add(1) >= last.saturating_add(every);
        // Only the caller that wins the exchange logs, so concurrent failures
        // produce one line per interval.
        if due
            && self
                .last_warn
                .compare_exchange(
                    last,
                    now.saturating_add(1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            tracing::warn!(
                redis = %self.target,
                cause,
                fallbacks,
                "Redis is unavailable; rate limits are now enforced per process (not shared \
                 across replicas) until Redis is back; check `redis_url` / AIBOX_REDIS_URL"
            );
        }
    }
}

/// The denial for the 0-based budget `index` in [`Rates::checks`] order.
fn denied(rates: &Rates, index: u64, ms_left: u64) -> Denied {
    let checks = rates.checks();
    let (scope, kind, limit) = usize::try_from(index)
        .ok()
        .and_then(|i| checks.get(i).copied())
        // The script only returns indexes of budgets it was given, so this is
        // unreachable; the first budget is a safe stand-in if it ever is not.
        .unwrap_or(checks[0]);
    Denied {
        scope,
        kind,
        limit: limit.unwrap_or(0),
        retry_after: retry_after(ms_left),
    }
}

/// Removes every secret from a message that may quote the URL.
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

    #[test]
    fn scrub_removes_url_and_password() {
        let secrets = [Secret::new("redis://:pw123@h:1"), Secret::new("pw123")];
        let out = scrub("failed redis://:pw123@h:1 and pw123 again", &secrets);
        assert!(!out.contains("pw123"), "{out}");
        assert!(out.contains("[REDACTED]"));
    }
}
