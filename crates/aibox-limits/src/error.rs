//! What a refused request and a failed construction look like.
//!
//! [`Denied`] is not an operational error: it is the normal answer to a caller
//! over its limit, and carries everything the router needs for a `429` with a
//! `Retry-After` header. [`LimitError`] is reserved for a limiter that cannot
//! be built, and never prints the Redis password.

use std::fmt;
use std::time::Duration;

/// Whose budget ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// The whole tenant's budget, shared by all its users.
    Tenant,
    /// One user's budget within a tenant.
    User,
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tenant => "tenant",
            Self::User => "user",
        })
    }
}

/// Which budget ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitKind {
    /// Requests per minute.
    Requests,
    /// Tokens per minute.
    Tokens,
}

impl fmt::Display for LimitKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Requests => "requests",
            Self::Tokens => "tokens",
        })
    }
}

/// A request refused because a limit is reached; nothing was counted for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "{scope} limit of {limit} {kind} per minute reached; retry after {} s",
    retry_after.as_secs()
)]
pub struct Denied {
    /// Whose limit.
    pub scope: Scope,
    /// Which limit.
    pub kind: LimitKind,
    /// The configured limit per minute.
    pub limit: u64,
    /// Time until the current window ends, in whole seconds between 1 and 60.
    pub retry_after: Duration,
}

/// Why a limiter could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// The Redis URL could not be parsed.
    #[error(
        "the Redis URL is not valid ({reason}); fix `redis_url` in the config or AIBOX_REDIS_URL, \
         e.g. redis://:PASSWORD@HOST:6379/0"
    )]
    InvalidUrl {
        /// What is wrong with it, without the URL itself.
        reason: String,
    },
    /// Redis did not accept a connection or the limiter script.
    #[error(
        "cannot use Redis at {target} for rate limits: {cause}; check that Redis is running and \
         reachable and that `redis_url` / AIBOX_REDIS_URL (and REDIS_PASSWORD) are right"
    )]
    Connect {
        /// Host and port, never the password.
        target: String,
        /// The underlying failure, with the password scrubbed.
        cause: String,
    },
}
