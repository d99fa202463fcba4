//! OIDC access-token validation against the provider's JWKS.
//!
//! [`OidcValidator::validate`] applies, in this order and before trusting
//! anything in the token:
//!
//! 1. size: a token over `max_token_bytes` is refused unparsed;
//! 2. shape: exactly three base64url parts, a JSON header without `crit`;
//! 3. algorithm: the header `alg` must be in the allow-list, which never
//!    holds `none` or HS*; the `jku`, `x5u`, `jwk` and `x5c` headers are
//!    never read;
//! 4. key: chosen only by `kid` from the cached JWKS of the configured URL;
//!    an unknown `kid` refetches the JWKS at most once per
//!    `jwks_refresh_min_interval` (single-flight), and the key's own `alg`
//!    and type must fit the header `alg`;
//! 5. signature;
//! 6. claims: `iss` equal to the configured issuer byte for byte, `exp`
//!    required, `nbf`/`iat` with leeway, audience via `aud` or `azp`;
//! 7. mapping: user, tenant and roles into a [`Principal`].

mod claims;
mod error;
mod jwks;
mod settings;
mod shared;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use aibox_core::Principal;
use jsonwebtoken::Algorithm;
use tokio::time::Instant;

pub use error::AuthError;
pub use jwks::{HttpJwksSource, JwksSource, MAX_JWKS_BYTES, StaticJwksSource, parse_jwks};
pub use settings::{
    ClaimMapping, DEFAULT_ALGORITHMS, OidcConfigError, OidcSettings, parse_algorithm,
};
pub use shared::{JWKS_REDIS_PREFIX, SharedJwks, SharedJwksCache, SharedJwksError};

use crate::jws;
use jwks::{FAILED_FETCH_RETRY, KeySet, display_url};

/// The longest `kid` worth a JWKS refetch; longer ones are refused as
/// unknown without asking the provider.
const MAX_KID_CHARS: usize = 256;

/// Validates OIDC access tokens. Cheap to share behind an `Arc`.
pub struct OidcValidator<S: JwksSource = HttpJwksSource> {
    settings: OidcSettings,
    source: S,
    keys: RwLock<Arc<KeySet>>,
    refresh: tokio::sync::Mutex<RefreshState>,
    fetches: AtomicU64,
}

impl<S: JwksSource> std::fmt::Debug for OidcValidator<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcValidator")
            .field("issuer", &self.settings.issuer)
            .field(
                "jwks_url",
                &self.settings.jwks_url.as_deref().map(display_url),
            )
            .field("fetches", &self.jwks_fetches())
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct RefreshState {
    last_attempt: Option<Instant>,
    last_error: Option<AuthError>,
}

impl OidcValidator<HttpJwksSource> {
    /// A validator fetching the JWKS over HTTP(S).
    pub fn new(settings: OidcSettings) -> Result<Self, OidcConfigError> {
        settings.check()?;
        let source = HttpJwksSource::new(&settings)?;
        Self::with_source(settings, source)
    }
}

fn alg_name(alg: Algorithm) -> Option<&'static str> {
    let name = match alg {
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::EdDSA => "EdDSA",
        // A variant added by a later jsonwebtoken is never matched by name
        // until this table learns it.
        _ => return None,
    };
    Some(name)
}

impl<S: JwksSource> OidcValidator<S> {
    /// A validator with a custom key source (tests, pinned keys).
    pub fn with_source(settings: OidcSettings, source: S) -> Result<Self, OidcConfigError> {
        settings.check()?;
        crate::ensure_crypto_provider();
        Ok(Self {
            settings,
            source,
            keys: RwLock::new(Arc::new(KeySet::unloaded())),
            refresh: tokio::sync::Mutex::new(RefreshState::default()),
            fetches: AtomicU64::new(0),
        })
    }

    /// The settings in force.
    pub fn settings(&self) -> &OidcSettings {
        &self.settings
    }

    /// The key source.
    pub fn source(&self) -> &S {
        &self.source
    }

    /// How many JWKS fetches were attempted, for metrics.
    pub fn jwks_fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// Fetches the JWKS now, so a wrong URL or an unreachable provider shows
    /// at startup (the caller decides whether that is fatal).
    pub async fn preload(&self) -> Result<usize, AuthError> {
        let mut st = self.refresh.lock().await;
        self.fetch_into(&mut st).await.map(|set| set.len())
    }

    /// Validates a bearer token (without the `Bearer ` prefix) at `now`.
    pub async fn validate(&self, token: &str, now: SystemTime) -> Result<Principal, AuthError> {
        let claims = self.verified_claims(token).await?;
        claims::check(&self.settings, &claims, now)?;
        claims::map(&self.settings, &claims)
    }

    /// Validates an ID token from an authorization-code login at `now`:
    /// the same size, algorithm, key and signature rules as access tokens,
    /// then the ID-token claims (`aud` containing `client_id`, `azp` if
    /// present equal to it, `nonce` equal to the login's), and the same
    /// claim mapping into a principal.
    pub async fn validate_id_token(
        &self,
        token: &str,
        client_id: &str,
        nonce: &str,
        now: SystemTime,
    ) -> Result<Principal, AuthError> {
        let claims = self.verified_claims(token).await?;
        claims::check_id_token(&self.settings, &claims, client_id, nonce, now)?;
        claims::map(&self.settings, &claims)
    }

    /// The claims of a token whose shape, algorithm, key and signature
    /// passed; nothing in them is checked yet.
    async fn verified_claims(
        &self,
        token: &str,
    ) -> Result<serde_json::Map<String, serde_json::Value>, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let max = self.settings.max_token_bytes;
        if token.len() > max {
            return Err(AuthError::TooLarge {
                len: token.len(),
                max,
            });
        }
        let parts = jws::split(token).ok_or(AuthError::Malformed)?;
        let header_bytes = jws::b64_decode(parts.header).ok_or(AuthError::Malformed)?;
        let header = jws::parse_header(&header_bytes).ok_or(AuthError::Malformed)?;
        let alg_text = header.alg.as_deref().ok_or(AuthError::Malformed)?;
        let alg = self
            .settings
            .algorithms
            .iter()
            .copied()
            .find(|a| alg_name(*a) == Some(alg_text))
            .ok_or_else(|| AuthError::AlgorithmNotAllowed {
                alg: jws::printable(alg_text, 16),
            })?;
        let kid = header.kid.as_deref().unwrap_or("");
        let set = self.key_set_for(kid).await?;
        let key = set.select(kid, alg)?;
        match jsonwebtoken::crypto::verify(
            parts.signature,
            parts.signing_input.as_bytes(),
            &key.key,
            alg,
        ) {
            Ok(true) => {}
            _ => return Err(AuthError::BadSignature),
        }
        let payload = jws::b64_decode(parts.payload).ok_or(AuthError::Malformed)?;
        serde_json::from_slice(&payload).map_err(|_| AuthError::Malformed)
    }

    fn current(&self) -> Arc<KeySet> {
        // Writers only swap the Arc, so a poisoned lock still holds a
        // consistent value.
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn unknown(kid: &str) -> AuthError {
        AuthError::UnknownKid {
            kid: jws::printable(kid, 64),
        }
    }

    /// A key set that holds `kid`, fetching or refreshing as the rules
    /// allow, or the reason there is none.
    async fn key_set_for(&self, kid: &str) -> Result<Arc<KeySet>, AuthError> {
        let set = self.current();
        if kid.is_empty() || kid.len() > MAX_KID_CHARS {
            // No JWKS key can match; asking the provider would only let
            // such tokens drive fetches. Before the first load, though, the
            // caller deserves the real reason if the provider is down.
            if set.loaded_at.is_some() {
                return Err(Self::unknown(kid));
            }
        }
        match set.loaded_at {
            Some(at) if set.contains(kid) => {
                if at.elapsed() >= self.settings.jwks_max_age
                    && let Some(fresh) = self.refresh_stale().await
                {
                    return if fresh.contains(kid) {
                        Ok(fresh)
                    } else {
                        Err(Self::unknown(kid))
                    };
                }
                Ok(set)
            }
            _ => self.refresh_for(kid).await,
        }
    }

    fn may_fetch(&self, st: &RefreshState) -> bool {
        let Some(last) = st.last_attempt else {
            return true;
        };
        let interval = if st.last_error.is_some() {
            self.settings
                .jwks_refresh_min_interval
                .min(FAILED_FETCH_RETRY)
        } else {
            self.settings.jwks_refresh_min_interval
        };
        last.elapsed() >= interval
    }

    /// The refetch for an unknown `kid` (or the first load), single-flight:
    /// concurrent callers queue on the lock, and those that find a fresh
    /// attempt when they get it do not fetch again.
    async fn refresh_for(&self, kid: &str) -> Result<Arc<KeySet>, AuthError> {
        let mut st = self.refresh.lock().await;
        let set = self.current();
        if set.loaded_at.is_some() && set.contains(kid) {
            return Ok(set);
        }
        if !self.may_fetch(&st) {
            if set.loaded_at.is_none() {
                return Err(st.last_error.clone().unwrap_or_else(|| self.never_loaded()));
            }
            return Err(Self::unknown(kid));
        }
        let fresh = self.fetch_into(&mut st).await?;
        if fresh.contains(kid) {
            Ok(fresh)
        } else {
            Err(Self::unknown(kid))
        }
    }

    /// The periodic refresh of a set older than `jwks_max_age`. Only the
    /// caller that gets the lock without waiting refreshes; everyone else
    /// keeps using the current set. A failed refresh keeps the old keys
    /// (logged), because the provider being briefly down must not lock
    /// every user out.
    async fn refresh_stale(&self) -> Option<Arc<KeySet>> {
        let mut st = self.refresh.try_lock().ok()?;
        if !self.may_fetch(&st) {
            return None;
        }
        self.fetch_into(&mut st).await.ok()
    }

    fn never_loaded(&self) -> AuthError {
        AuthError::JwksUnavailable {
            url: self
                .settings
                .jwks_url
                .as_deref()
                .map_or_else(|| display_url(&self.settings.issuer), display_url),
            cause: "the JWKS has not been loaded yet".into(),
        }
    }

    /// Fetches and installs a new key set. Must be called with the refresh
    /// lock held (enforced by taking the guarded state).
    async fn fetch_into(&self, st: &mut RefreshState) -> Result<Arc<KeySet>, AuthError> {
        st.last_attempt = Some(Instant::now());
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let result = match self.source.fetch_with_age().await {
            Ok((jwks, age)) => {
                // A copy fetched earlier by another replica is as old as its
                // fetch, so it is refreshed when the provider's copy would be.
                let fetched = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
                let (set, skipped) = KeySet::from_jwks(&jwks, fetched);
                if set.is_empty() {
                    // An empty answer is far more likely a provider fault
                    // than a real "trust nothing", and keeping the previous
                    // keys is no less safe than before the fetch.
                    Err(AuthError::JwksUnavailable {
                        url: self.source_label(),
                        cause: format!(
                            "the JWKS holds no usable signing key ({} keys, {skipped} skipped: \
                             aibox needs RSA >= 2048 bits, P-256, P-384 or Ed25519 keys with a kid)",
                            jwks.keys.len()
                        ),
                    })
                } else {
                    Ok(set)
                }
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(set) => {
                let set = Arc::new(set);
                *self.keys.write().unwrap_or_else(|p| p.into_inner()) = set.clone();
                st.last_error = None;
                tracing::debug!(issuer = %self.settings.issuer, keys = set.len(), "loaded the OIDC JWKS");
                Ok(set)
            }
            Err(e) => {
                tracing::warn!(
                    issuer = %self.settings.issuer,
                    hint = %e.operator_hint(),
                    "cannot load the OIDC JWKS"
                );
                st.last_error = Some(e.clone());
                Err(e)
            }
        }
    }

    fn source_label(&self) -> String {
        match &self.settings.jwks_url {
            Some(u) => display_url(u),
            None => format!(
                "{}/.well-known/openid-configuration (jwks_uri)",
                display_url(&self.settings.issuer).trim_end_matches('/')
            ),
        }
    }
}

#[cfg(test)]
mod tests;
