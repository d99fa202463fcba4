//! Who is calling: API keys and OIDC access tokens, at the edge.
//!
//! The edge calls [`Authenticator::authenticate`] after it has stripped every
//! inbound identity header, and puts the resulting [`Principal`] in the
//! request's extensions; nothing downstream reads identity from anywhere else.
//!
//! Credentials come from `Authorization: Bearer`. A value shaped like a
//! gateway API key (`aibox_<id>_<secret>`) is looked up by its public id and
//! compared by hash in constant time; anything else is an OIDC access token
//! for the configured issuer.
//!
//! With `auth.enabled: false` (loopback-only development), a request without
//! a credential is the `default` tenant's anonymous user, and so is one whose
//! bearer value is not an aibox API key: the OpenAI SDKs insist on sending
//! some key. An aibox API key is still checked, and a bad one is refused.

use std::time::SystemTime;

use aibox_config::AuthConfig;
use aibox_core::{AuthMethod, Principal};
use aibox_identity::{ApiKey, AuthError, ClaimMapping, OidcSettings, OidcValidator};
use aibox_store::Store;
use axum::http::{HeaderMap, HeaderName, header};

use crate::error::ApiError;

/// Authenticates requests.
pub struct Authenticator {
    enabled: bool,
    api_keys: bool,
    oidc: Option<std::sync::Arc<OidcValidator>>,
    store: Store,
    strip: Vec<HeaderName>,
    cache: TokenCache,
}

/// Validated OIDC tokens, by SHA-256 of the token, for a short time.
///
/// A signature check costs hundreds of microseconds (ES256 with RustCrypto),
/// and a client sends the same access token on every request until it
/// expires. An entry lives for at most [`CACHE_TTL`] and never past the
/// token's own `exp`, so a key the provider withdraws stops working within
/// that time. Only successes are cached: every refusal is checked and logged
/// again.
struct TokenCache {
    map: std::sync::Mutex<std::collections::HashMap<[u8; 32], (Principal, SystemTime)>>,
}

/// How long a validated token is trusted without a new signature check.
const CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(30);
/// Bound on cached tokens; when full, the cache starts over.
const CACHE_MAX: usize = 10_000;

impl TokenCache {
    fn key(token: &str) -> [u8; 32] {
        use sha2::Digest as _;
        sha2::Sha256::digest(token.as_bytes()).into()
    }

    fn get(&self, key: &[u8; 32], now: SystemTime) -> Option<Principal> {
        let map = self.map.lock().ok()?;
        let (p, until) = map.get(key)?;
        (now < *until).then(|| p.clone())
    }

    /// Caches a token that was just validated, until `exp` at the latest.
    fn put(&self, key: [u8; 32], token: &str, p: &Principal, now: SystemTime) {
        let Some(exp) = token_exp(token) else {
            return;
        };
        let until = (now + CACHE_TTL).min(exp);
        if let Ok(mut map) = self.map.lock() {
            if map.len() >= CACHE_MAX {
                map.clear();
            }
            map.insert(key, (p.clone(), until));
        }
    }
}

/// The `exp` of a token that has already been validated.
fn token_exp(token: &str) -> Option<SystemTime> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    #[derive(serde::Deserialize)]
    struct Exp {
        exp: u64,
    }
    let e: Exp = serde_json::from_slice(&bytes).ok()?;
    Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(e.exp))
}

/// Why the authenticator could not be built.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    /// The OIDC settings were refused.
    #[error("auth: {0}")]
    Oidc(#[from] aibox_identity::OidcConfigError),
    /// A configured header name is not valid.
    #[error("auth.strip_headers: '{0}' is not a valid header name")]
    Header(String),
}

impl Authenticator {
    /// Builds the authenticator from `auth:`.
    pub fn new(cfg: &AuthConfig, store: Store) -> Result<Self, AuthSetupError> {
        let oidc = match &cfg.issuer {
            None => None,
            Some(issuer) => {
                let mut s = OidcSettings::new(issuer.clone());
                s.jwks_url = cfg.jwks_url.clone();
                s.audiences = cfg.audiences.clone();
                s.algorithms = cfg
                    .algorithms
                    .iter()
                    .map(|a| aibox_identity::oidc::parse_algorithm(a))
                    .collect::<Result<_, _>>()?;
                s.leeway = cfg.leeway;
                s.max_token_bytes = cfg.max_token_bytes;
                s.jwks_refresh_min_interval = cfg.jwks_refresh_min;
                s.claims = ClaimMapping {
                    user_claims: cfg.claims.user.clone(),
                    tenant_claim: cfg.claims.tenant.clone(),
                    tenant_from_group_prefix: cfg.claims.tenant_from_group_prefix.clone(),
                    groups_claim: cfg.claims.groups.clone(),
                    default_tenant: cfg.claims.default_tenant.clone(),
                    roles_claim: cfg.claims.roles.clone(),
                };
                Some(std::sync::Arc::new(OidcValidator::new(s)?))
            }
        };
        let strip = cfg
            .strip_headers
            .iter()
            .map(|h| {
                HeaderName::from_bytes(h.as_bytes()).map_err(|_| AuthSetupError::Header(h.clone()))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            enabled: cfg.enabled,
            api_keys: cfg.api_keys,
            oidc,
            store,
            strip,
            cache: TokenCache {
                map: std::sync::Mutex::new(std::collections::HashMap::new()),
            },
        })
    }

    /// The OIDC validator of `auth.issuer`, shared with the dashboard's
    /// SSO login (one JWKS cache).
    pub fn oidc_validator(&self) -> Option<std::sync::Arc<OidcValidator>> {
        self.oidc.clone()
    }

    /// The identity headers removed from every request besides `X-Aibox-*`.
    pub fn strip_headers(&self) -> &[HeaderName] {
        &self.strip
    }

    /// Fetches the identity provider's keys once, so a misconfiguration shows
    /// at start-up. Failure is logged, not fatal: requests fail closed with
    /// 503 until the provider answers.
    pub async fn preload(&self) {
        if let Some(v) = &self.oidc {
            match v.preload().await {
                Ok(n) => tracing::info!(keys = n, "loaded the identity provider's signing keys"),
                Err(e) => tracing::error!(
                    error = %e,
                    hint = %e.operator_hint(),
                    "cannot load the identity provider's keys; token requests fail with 503 until it answers"
                ),
            }
        }
    }

    /// Authenticates one request.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, AuthFailure> {
        let bearer = bearer(headers)?;
        let Some(token) = bearer else {
            if self.enabled {
                return Err(refused(
                    "missing",
                    "the request has no `Authorization: Bearer` credential; send an access token or a gateway API key",
                ));
            }
            return Ok(Principal::anonymous());
        };
        if token.starts_with(aibox_identity::apikey::PREFIX) {
            if !self.api_keys {
                return Err(refused(
                    "api_keys_disabled",
                    "gateway API keys are disabled (auth.api_keys: false)",
                ));
            }
            return self.api_key(token).await;
        }
        if !self.enabled {
            return Ok(Principal::anonymous());
        }
        let Some(oidc) = &self.oidc else {
            return Err(refused(
                "not_an_api_key",
                "the bearer value is not a gateway API key, and OIDC is not configured (auth.issuer)",
            ));
        };
        let now = SystemTime::now();
        let key = TokenCache::key(token);
        if let Some(p) = self.cache.get(&key, now) {
            return Ok(p);
        }
        let p = oidc.validate(token, now).await.map_err(oidc_error)?;
        self.cache.put(key, token, &p, now);
        Ok(p)
    }

    async fn api_key(&self, presented: &str) -> Result<Principal, AuthFailure> {
        let key = ApiKey::parse(presented)
            .map_err(|e| refused("malformed_api_key", e.operator_hint()))?;
        let record = self.store.api_key(key.id().as_str()).await.map_err(|e| {
            tracing::error!(error = %e, "cannot look up an API key");
            ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "auth_store_unavailable",
                "the gateway cannot check credentials right now",
            )
        })?;
        // The hash comparison runs even for unknown ids, so the response time
        // does not reveal which ids exist.
        let stored = record
            .as_ref()
            .map(|r| r.hash.as_str())
            .unwrap_or(UNKNOWN_HASH);
        let matches = key.verify(stored);
        let id = || Some(key.id().as_str().to_owned());
        let Some(record) = record.filter(|_| matches) else {
            return Err(refused(
                "unknown_api_key",
                "no API key with this id and secret (`aibox apikey list` shows the ids)",
            )
            .with_key_id(id()));
        };
        if record.revoked_ms.is_some() {
            return Err(refused(
                "revoked_api_key",
                "the API key was revoked (`aibox apikey revoke`)",
            )
            .with_key_id(id()));
        }
        if record.expires_ms.is_some_and(|exp| exp <= now_ms()) {
            return Err(refused(
                "expired_api_key",
                "the API key has expired; create a new one with `aibox apikey create`",
            )
            .with_key_id(id()));
        }
        Ok(Principal {
            tenant: record.tenant,
            user: record.user,
            roles: record.roles,
            auth: AuthMethod::ApiKey { key_id: record.id },
        })
    }
}

/// A hash no key has, compared against when the id is unknown.
const UNKNOWN_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The bearer value, if any. Several `Authorization` headers, or one that is
/// not `Bearer`, are refused rather than guessed at.
fn bearer(headers: &HeaderMap) -> Result<Option<&str>, AuthFailure> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(refused(
            "several_credentials",
            "the request has more than one Authorization header",
        ));
    }
    let text = first
        .to_str()
        .map_err(|_| refused("malformed", "the Authorization header is not visible ASCII"))?;
    let Some((scheme, rest)) = text.split_once(' ') else {
        return Err(refused(
            "malformed",
            "the Authorization header is not `Bearer <token>`",
        ));
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(refused(
            "unsupported_scheme",
            "only `Authorization: Bearer` is accepted",
        ));
    }
    let token = rest.trim();
    if token.is_empty() {
        return Err(refused("missing", "the bearer value is empty"));
    }
    Ok(Some(token))
}

/// Why a request was not authenticated: the client's error and, when the
/// credential was refused (a 401, not an unavailable identity provider or
/// store), the reason code and a presented API key's public id, which the
/// edge records in the audit log ([`crate::refusals`]).
#[derive(Debug)]
pub struct AuthFailure {
    /// What the client gets.
    pub error: ApiError,
    /// What was refused, when the credential was (boxed: a failure travels
    /// in a `Result` on every request's path).
    pub refusal: Option<Box<Refusal>>,
}

/// A refused credential, as the audit log records it.
#[derive(Debug)]
pub struct Refusal {
    /// The reason code the client also gets.
    pub reason: &'static str,
    /// The public id of the API key that was refused, if one parsed.
    pub key_id: Option<String>,
}

impl AuthFailure {
    fn refused(reason: &'static str) -> Self {
        Self {
            error: ApiError::unauthorized(reason),
            refusal: Some(Box::new(Refusal {
                reason,
                key_id: None,
            })),
        }
    }

    fn with_key_id(mut self, key_id: Option<String>) -> Self {
        if let Some(r) = &mut self.refusal {
            r.key_id = key_id;
        }
        self
    }
}

impl From<ApiError> for AuthFailure {
    fn from(error: ApiError) -> Self {
        Self {
            error,
            refusal: None,
        }
    }
}

/// A 401 whose client message is generic and whose log line names the cause.
fn refused(reason: &'static str, hint: &str) -> AuthFailure {
    tracing::warn!(reason, hint, "authentication refused");
    AuthFailure::refused(reason)
}

fn oidc_error(e: AuthError) -> AuthFailure {
    if e.is_server_side() {
        tracing::error!(reason = e.code(), hint = %e.operator_hint(), "cannot validate tokens");
        return ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "identity_provider_unavailable",
            "the gateway cannot reach the identity provider to validate tokens",
        )
        .into();
    }
    tracing::warn!(reason = e.code(), hint = %e.operator_hint(), "authentication refused");
    AuthFailure::refused(e.code())
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    fn token_with_exp(exp: u64) -> String {
        let b = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        format!(
            "{}.{}.sig",
            b(r#"{"alg":"ES256"}"#),
            b(&format!(r#"{{"exp":{exp}}}"#))
        )
    }

    #[test]
    fn cached_tokens_never_outlive_their_exp_or_the_ttl() {
        let cache = TokenCache {
            map: std::sync::Mutex::new(std::collections::HashMap::new()),
        };
        let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        let p = Principal::anonymous();
        // Expires in 5 s: cached for 5 s, not 30.
        let short = token_with_exp(1_000_005);
        let k = TokenCache::key(&short);
        cache.put(k, &short, &p, now);
        assert!(
            cache
                .get(&k, now + std::time::Duration::from_secs(4))
                .is_some()
        );
        assert!(
            cache
                .get(&k, now + std::time::Duration::from_secs(5))
                .is_none()
        );
        // Expires in an hour: cached for the TTL only.
        let long = token_with_exp(1_003_600);
        let k = TokenCache::key(&long);
        cache.put(k, &long, &p, now);
        assert!(
            cache
                .get(&k, now + CACHE_TTL - std::time::Duration::from_secs(1))
                .is_some()
        );
        assert!(cache.get(&k, now + CACHE_TTL).is_none());
        // A different token is a different entry.
        assert!(cache.get(&TokenCache::key("other"), now).is_none());
    }
}
