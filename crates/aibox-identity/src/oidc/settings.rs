//! Settings of the OIDC validator and their checks.
//!
//! The gateway config (`auth: {enabled, jwks_url, issuer}` plus the optional
//! keys below) maps onto [`OidcSettings`]; [`OidcSettings::check`] refuses
//! what aibox will not run with, such as a symmetric algorithm in the
//! allow-list, before any token is seen.

use std::time::Duration;

use aibox_core::TenantId;
use jsonwebtoken::Algorithm;

/// The algorithms accepted when none are configured.
pub const DEFAULT_ALGORITHMS: [Algorithm; 4] = [
    Algorithm::RS256,
    Algorithm::PS256,
    Algorithm::ES256,
    Algorithm::EdDSA,
];

/// How token claims become a principal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimMapping {
    /// Claims tried in order for the user id; the first present wins.
    pub user_claims: Vec<String>,
    /// The string claim holding the tenant id.
    pub tenant_claim: String,
    /// When the tenant claim is absent: take the tenant from the first entry
    /// of [`ClaimMapping::groups_claim`] that starts with this prefix (for
    /// `/tenants/` and the group `/tenants/acme/admins`, the tenant `acme`).
    pub tenant_from_group_prefix: Option<String>,
    /// The array claim searched with `tenant_from_group_prefix`.
    pub groups_claim: String,
    /// The tenant used when no claim names one; `None` refuses such tokens.
    pub default_tenant: Option<TenantId>,
    /// The claim holding the roles (an array of strings). A dotted path
    /// walks into nested objects (`realm_access.roles`); a top-level claim
    /// whose name contains dots is found first.
    pub roles_claim: String,
}

impl Default for ClaimMapping {
    fn default() -> Self {
        Self {
            user_claims: vec!["preferred_username".into(), "sub".into()],
            tenant_claim: "tenant".into(),
            tenant_from_group_prefix: None,
            groups_claim: "groups".into(),
            default_tenant: None,
            roles_claim: "realm_access.roles".into(),
        }
    }
}

/// Settings of [`crate::oidc::OidcValidator`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcSettings {
    /// The exact `iss` of accepted tokens (`auth.issuer`).
    pub issuer: String,
    /// Where the JWKS is (`auth.jwks_url`); `None` discovers it from
    /// `{issuer}/.well-known/openid-configuration`.
    pub jwks_url: Option<String>,
    /// Accepted audiences: the token's `aud` (string or array) or `azp` must
    /// contain one. Empty means the audience is not checked.
    pub audiences: Vec<String>,
    /// The algorithm allow-list; asymmetric algorithms only.
    pub algorithms: Vec<Algorithm>,
    /// Clock leeway for `exp`, `nbf` and `iat`.
    pub leeway: Duration,
    /// The largest token read at all.
    pub max_token_bytes: usize,
    /// The shortest time between two JWKS fetches caused by unknown key ids.
    pub jwks_refresh_min_interval: Duration,
    /// After this age the JWKS is refetched on the next use, so keys the
    /// provider withdrew stop validating even when no new key appears.
    pub jwks_max_age: Duration,
    /// The timeout of one JWKS (or discovery) request.
    pub jwks_http_timeout: Duration,
    /// Claim mapping.
    pub claims: ClaimMapping,
}

impl OidcSettings {
    /// Settings for `issuer` with every default.
    pub fn new(issuer: impl Into<String>) -> Self {
        Self {
            issuer: issuer.into(),
            jwks_url: None,
            audiences: Vec::new(),
            algorithms: DEFAULT_ALGORITHMS.to_vec(),
            leeway: Duration::from_secs(30),
            max_token_bytes: 8192,
            jwks_refresh_min_interval: Duration::from_secs(30),
            jwks_max_age: Duration::from_secs(10 * 60),
            jwks_http_timeout: Duration::from_secs(5),
            claims: ClaimMapping::default(),
        }
    }

    /// Refuses settings aibox will not run with.
    pub fn check(&self) -> Result<(), OidcConfigError> {
        check_url("auth.issuer", &self.issuer)?;
        if let Some(u) = &self.jwks_url {
            check_url("auth.jwks_url", u)?;
        }
        if self.algorithms.is_empty() {
            return Err(OidcConfigError::NoAlgorithms);
        }
        for alg in &self.algorithms {
            if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
                return Err(OidcConfigError::AlgorithmRefused {
                    alg: format!("{alg:?}"),
                });
            }
        }
        if self.max_token_bytes < 512 {
            return Err(OidcConfigError::Invalid {
                key: "auth.max_token_bytes",
                reason: "must be at least 512".into(),
            });
        }
        if self.claims.user_claims.is_empty()
            || self.claims.user_claims.iter().any(String::is_empty)
        {
            return Err(OidcConfigError::Invalid {
                key: "auth.claims.user",
                reason: "needs at least one non-empty claim name".into(),
            });
        }
        for (key, v) in [
            ("auth.claims.tenant", &self.claims.tenant_claim),
            ("auth.claims.roles", &self.claims.roles_claim),
            ("auth.claims.groups", &self.claims.groups_claim),
        ] {
            if v.is_empty() {
                return Err(OidcConfigError::Invalid {
                    key,
                    reason: "must not be empty".into(),
                });
            }
        }
        if self
            .claims
            .tenant_from_group_prefix
            .as_deref()
            .is_some_and(str::is_empty)
        {
            return Err(OidcConfigError::Invalid {
                key: "auth.claims.tenant_from_group_prefix",
                reason: "must not be empty when set".into(),
            });
        }
        Ok(())
    }
}

fn check_url(key: &'static str, value: &str) -> Result<(), OidcConfigError> {
    let parsed = url::Url::parse(value).map_err(|e| OidcConfigError::Invalid {
        key,
        reason: format!("not a URL ({e})"),
    })?;
    if !matches!(parsed.scheme(), "https" | "http") || parsed.host_str().is_none() {
        return Err(OidcConfigError::Invalid {
            key,
            reason: "must be an http(s) URL with a host".into(),
        });
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(OidcConfigError::Invalid {
            key,
            reason: "must not contain credentials".into(),
        });
    }
    Ok(())
}

/// Parses an algorithm name for the allow-list, refusing `none` and every
/// symmetric (HS*) algorithm: with a public JWKS, accepting HS* would let
/// anyone who holds the public key sign tokens.
pub fn parse_algorithm(name: &str) -> Result<Algorithm, OidcConfigError> {
    let alg = match name {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        other => {
            return Err(OidcConfigError::AlgorithmRefused {
                alg: crate::jws::printable(other, 32),
            });
        }
    };
    Ok(alg)
}

/// Why the OIDC settings were refused. Meant for the operator at startup.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OidcConfigError {
    /// A symmetric, unknown or `none` algorithm was configured.
    #[error(
        "auth.algorithms contains '{alg}', which aibox refuses; fix: use asymmetric algorithms \
         only (RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA); HS* and none are \
         never accepted for OIDC tokens"
    )]
    AlgorithmRefused {
        /// The refused algorithm.
        alg: String,
    },
    /// The allow-list is empty.
    #[error("auth.algorithms is empty; fix: leave it unset for [RS256, PS256, ES256, EdDSA]")]
    NoAlgorithms,
    /// Another setting is invalid.
    #[error("{key} is invalid: {reason}")]
    Invalid {
        /// The config key.
        key: &'static str,
        /// Why.
        reason: String,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client for the JWKS: {cause}")]
    HttpClient {
        /// Why.
        cause: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_contract() {
        let s = OidcSettings::new("https://kc.example.com/realms/acme");
        assert_eq!(s.algorithms, DEFAULT_ALGORITHMS.to_vec());
        assert_eq!(s.leeway, Duration::from_secs(30));
        assert_eq!(s.max_token_bytes, 8192);
        assert_eq!(s.jwks_refresh_min_interval, Duration::from_secs(30));
        assert_eq!(s.jwks_http_timeout, Duration::from_secs(5));
        assert_eq!(s.claims.user_claims, ["preferred_username", "sub"]);
        assert_eq!(s.claims.tenant_claim, "tenant");
        assert_eq!(s.claims.roles_claim, "realm_access.roles");
        assert!(s.check().is_ok());
    }

    #[test]
    fn refuses_symmetric_and_none_algorithms_and_bad_urls() {
        for name in ["HS256", "HS384", "HS512", "none", "None", "", "rs256"] {
            assert!(parse_algorithm(name).is_err(), "{name}");
        }
        assert_eq!(parse_algorithm("EdDSA").unwrap(), Algorithm::EdDSA);
        let mut s = OidcSettings::new("https://kc.example.com/realms/acme");
        s.algorithms.push(Algorithm::HS256);
        assert!(matches!(
            s.check(),
            Err(OidcConfigError::AlgorithmRefused { .. })
        ));
        s.algorithms.clear();
        assert_eq!(s.check(), Err(OidcConfigError::NoAlgorithms));
        for bad in ["", "kc.example.com", "ftp://x/y", "https://user:pw@kc/x"] {
            let s = OidcSettings::new(bad);
            let e = s.check().unwrap_err();
            assert!(!e.to_string().contains("pw@"), "{e}");
        }
        let mut s = OidcSettings::new("https://kc.example.com/realms/acme");
        s.claims.user_claims.clear();
        assert!(s.check().is_err());
    }
}
