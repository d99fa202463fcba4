//! The authenticated caller of a request.
//!
//! The edge builds exactly one [`Principal`] per request, after it has
//! stripped every inbound identity header, and every later stage (limits,
//! router, guardrail, MCP policy, audit, vault) reads identity from it and
//! from nothing else.

use serde::{Deserialize, Serialize};

use crate::ids::{TenantId, UserId};

/// How the principal proved who it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum AuthMethod {
    /// Authentication is off (loopback-only development default).
    Anonymous,
    /// An OIDC access token from the configured issuer.
    Oidc {
        /// The exact issuer of the token.
        issuer: String,
        /// The OAuth client the token was issued to (`azp`), if any.
        client_id: Option<String>,
    },
    /// A gateway API key; only its public id is kept.
    ApiKey {
        /// The key's public id.
        key_id: String,
    },
}

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    /// The tenant the caller acts in.
    pub tenant: TenantId,
    /// The user within the tenant.
    pub user: UserId,
    /// Roles granted by the identity provider or the API key.
    pub roles: Vec<String>,
    /// How the caller authenticated.
    pub auth: AuthMethod,
}

impl Principal {
    /// The principal of every request when authentication is off.
    pub fn anonymous() -> Self {
        Self {
            tenant: TenantId::default_tenant(),
            user: UserId::anonymous(),
            roles: Vec::new(),
            auth: AuthMethod::Anonymous,
        }
    }

    /// True when the principal holds `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anonymous_is_default_tenant_without_roles() {
        let p = Principal::anonymous();
        assert_eq!(p.tenant.as_str(), "default");
        assert_eq!(p.user.as_str(), "anonymous");
        assert!(!p.has_role("admin"));
        assert_eq!(p.auth, AuthMethod::Anonymous);
    }
}
