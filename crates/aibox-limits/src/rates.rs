//! The limits that apply to one principal.
//!
//! Both backends evaluate the same four budgets in the same order, so a caller
//! over several limits at once gets the same [`Denied`](crate::Denied) answer
//! whichever backend served the request.

use aibox_config::{LimitsConfig, Rate};
use aibox_core::Principal;

use crate::error::{LimitKind, Scope};

/// The tenant and user rates that apply to one principal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rates {
    /// The tenant's rate, after per-tenant overrides.
    pub tenant: Rate,
    /// The per-user rate.
    pub user: Rate,
}

impl Rates {
    /// Resolves the rates for `principal`.
    pub fn for_principal(cfg: &LimitsConfig, principal: &Principal) -> Self {
        Self {
            tenant: cfg.tenant_rate(&principal.tenant),
            user: cfg.user,
        }
    }

    /// True when no budget applies, so nothing needs to be counted at all.
    pub fn is_unlimited(&self) -> bool {
        self.checks().iter().all(|(_, _, limit)| limit.is_none())
    }

    /// True when some token budget applies, so token usage must be recorded.
    pub fn counts_tokens(&self) -> bool {
        self.tenant.tokens_per_minute.is_some() || self.user.tokens_per_minute.is_some()
    }

    /// Every budget in the order denials are reported: the tenant before the
    /// user (a tenant-wide block is the more useful thing to tell a caller),
    /// requests before tokens.
    pub fn checks(&self) -> [(Scope, LimitKind, Option<u64>); 4] {
        [
            (
                Scope::Tenant,
                LimitKind::Requests,
                self.tenant.requests_per_minute,
            ),
            (
                Scope::Tenant,
                LimitKind::Tokens,
                self.tenant.tokens_per_minute,
            ),
            (
                Scope::User,
                LimitKind::Requests,
                self.user.requests_per_minute,
            ),
            (Scope::User, LimitKind::Tokens, self.user.tokens_per_minute),
        ]
    }
}
