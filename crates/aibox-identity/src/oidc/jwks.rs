//! Where the provider's keys come from, and which of them aibox will use.
//!
//! [`JwksSource`] fetches the JWKS of the configured URL (never a URL named
//! by a token). [`KeySet`] turns it into verification keys, keeping only
//! signing keys with a `kid` whose parameters are well-formed: an RSA key of
//! at least 2048 bits, a P-256/P-384 point of the right size, or a 32-byte
//! Ed25519 key. Malformed keys are dropped at load time, so no malformed key
//! ever reaches the crypto code on the request path.

use crate::http::describe_reqwest;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, KeyOperations, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::time::Instant;

use super::error::AuthError;
use super::settings::{OidcConfigError, OidcSettings};
use super::shared::SharedJwksCache;
use crate::jws;
use std::sync::atomic::{AtomicBool, Ordering};

/// The largest JWKS or discovery document read.
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// The smallest RSA modulus accepted, in bytes (2048 bits).
const MIN_RSA_MODULUS_BYTES: usize = 256;

/// Fetches the provider's JWKS.
///
/// The returned future is `Send` so the validator works inside
/// multi-threaded servers; implementors may still write `async fn`.
pub trait JwksSource: Send + Sync + 'static {
    /// Fetches the current key set.
    fn fetch(&self) -> impl Future<Output = Result<JwkSet, AuthError>> + Send;

    /// Fetches the current key set and says how long ago it left the
    /// provider: zero for a fresh fetch, more for a copy another replica
    /// fetched earlier, so the validator refreshes it on the provider's
    /// schedule rather than this copy's.
    fn fetch_with_age(&self) -> impl Future<Output = Result<(JwkSet, Duration), AuthError>> + Send {
        async { self.fetch().await.map(|set| (set, Duration::ZERO)) }
    }
}

/// Fetches the JWKS over HTTP(S) from `jwks_url`, or from the `jwks_uri` of
/// the issuer's discovery document. Redirects are not followed, bodies are
/// capped at 1 MiB and every request has a timeout.
#[derive(Debug)]
pub struct HttpJwksSource {
    client: reqwest::Client,
    issuer: String,
    jwks_url: Option<String>,
    discovered: tokio::sync::OnceCell<String>,
    max_age: Duration,
    /// The JWKS shared with other replicas through Redis, when configured.
    shared: std::sync::OnceLock<SharedJwksCache>,
    /// Whether this process has loaded a set yet: only the first load may
    /// come from the shared cache without asking the provider.
    warmed: AtomicBool,
}

impl HttpJwksSource {
    /// Builds the source from checked settings.
    pub fn new(settings: &OidcSettings) -> Result<Self, OidcConfigError> {
        // reqwest is built without a default TLS provider; install ring once
        // per process (a second install is refused harmlessly).
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let client = reqwest::Client::builder()
            .timeout(settings.jwks_http_timeout)
            .connect_timeout(settings.jwks_http_timeout)
            // A redirect could move the fetch to a host an attacker controls
            // (an open redirect on the provider), so the URL is final.
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .map_err(|e| OidcConfigError::HttpClient {
                cause: describe_reqwest(&e),
            })?;
        Ok(Self {
            client,
            issuer: settings.issuer.clone(),
            jwks_url: settings.jwks_url.clone(),
            discovered: tokio::sync::OnceCell::new(),
            max_age: settings.jwks_max_age,
            shared: std::sync::OnceLock::new(),
            warmed: AtomicBool::new(false),
        })
    }

    /// Shares fetched sets with the other replicas through `cache` (see
    /// [`SharedJwksCache`]). Returns false if a cache was already set.
    pub fn share_through(&self, cache: SharedJwksCache) -> bool {
        self.shared.set(cache).is_ok()
    }

    /// The provider's current JWKS, as bytes and parsed.
    async fn fetch_from_provider(&self) -> Result<(Vec<u8>, JwkSet), AuthError> {
        let url = match &self.jwks_url {
            Some(u) => u.as_str(),
            None => self
                .discovered
                .get_or_try_init(|| self.discover())
                .await?
                .as_str(),
        };
        let body = self.get(url).await?;
        let set = parse_jwks(&body).map_err(|cause| AuthError::JwksUnavailable {
            url: display_url(url),
            cause: cause.into(),
        })?;
        Ok((body, set))
    }

    /// The set another replica shared, if one is there, authentic, fresh
    /// and parseable; every other outcome is logged and ignored.
    async fn shared_set(&self, cache: &SharedJwksCache) -> Option<(JwkSet, Duration)> {
        match cache.load(self.max_age).await {
            Ok(Some(entry)) => match parse_jwks(&entry.body) {
                Ok(set) => Some((set, entry.age)),
                Err(cause) => {
                    tracing::warn!(cause, "ignoring the JWKS shared through Redis");
                    None
                }
            },
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring the JWKS shared through Redis");
                None
            }
        }
    }

    async fn get(&self, url: &str) -> Result<Vec<u8>, AuthError> {
        let fail = |cause: String| AuthError::JwksUnavailable {
            url: display_url(url),
            cause,
        };
        let mut resp = self
            .client
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| fail(describe_reqwest(&e)))?;
        let status = resp.status();
        if !status.is_success() {
            let what = if status.is_redirection() {
                format!(
                    "HTTP {} (redirects are not followed; configure the final URL)",
                    status.as_u16()
                )
            } else {
                format!("HTTP {}", status.as_u16())
            };
            return Err(fail(what));
        }
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
        {
            return Err(fail(format!(
                "the body is larger than {MAX_JWKS_BYTES} bytes"
            )));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| fail(describe_reqwest(&e)))? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(fail(format!(
                    "the body is larger than {MAX_JWKS_BYTES} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    async fn discover(&self) -> Result<String, AuthError> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.issuer.trim_end_matches('/')
        );
        let body = self.get(&url).await?;
        let fail = |cause: String| AuthError::JwksUnavailable {
            url: display_url(&url),
            cause,
        };
        #[derive(serde::Deserialize)]
        struct Discovery {
            issuer: Option<String>,
            jwks_uri: Option<String>,
        }
        let doc: Discovery = serde_json::from_slice(&body).map_err(|_| {
            fail("the discovery document is not JSON with issuer and jwks_uri".into())
        })?;
        // OpenID Connect Discovery §4.3: the document's issuer must be the
        // issuer it was fetched for. A mismatch here is the same mistake that
        // would refuse every token, reported once and earlier.
        match doc.issuer.as_deref() {
            Some(i) if i == self.issuer => {}
            Some(i) => {
                return Err(fail(format!(
                    "the discovery document names issuer '{}', not auth.issuer '{}'; the gateway \
                     issuer must match the token issuer exactly, including scheme, host, port and path",
                    jws::printable(i, 200),
                    self.issuer
                )));
            }
            None => return Err(fail("the discovery document has no issuer".into())),
        }
        let jwks_uri = doc
            .jwks_uri
            .ok_or_else(|| fail("the discovery document has no jwks_uri".into()))?;
        match url::Url::parse(&jwks_uri) {
            Ok(u) if matches!(u.scheme(), "https" | "http") => Ok(jwks_uri),
            _ => Err(fail(
                "the discovery document's jwks_uri is not an http(s) URL".into(),
            )),
        }
    }
}

impl JwksSource for HttpJwksSource {
    async fn fetch(&self) -> Result<JwkSet, AuthError> {
        self.fetch_with_age().await.map(|(set, _)| set)
    }

    async fn fetch_with_age(&self) -> Result<(JwkSet, Duration), AuthError> {
        let shared = self.shared.get();
        // Warm-up: a replica's first load takes the set another replica
        // fetched, so N replicas starting together ask the provider once.
        // Later loads (a new kid, a stale set) go to the provider first.
        if let Some(cache) = shared
            && !self.warmed.load(Ordering::Acquire)
            && let Some((set, age)) = self.shared_set(cache).await
        {
            self.warmed.store(true, Ordering::Release);
            tracing::info!(
                age_secs = age.as_secs(),
                "loaded the identity provider's keys from the JWKS another replica shared through Redis"
            );
            return Ok((set, age));
        }
        match self.fetch_from_provider().await {
            Ok((body, set)) => {
                self.warmed.store(true, Ordering::Release);
                if let Some(cache) = shared
                    && let Err(e) = cache.publish(&body, self.max_age).await
                {
                    tracing::warn!(error = %e, "cannot share the JWKS through Redis; each replica fetches its own");
                }
                Ok((set, Duration::ZERO))
            }
            Err(e) => {
                // The provider is down: a set another replica fetched within
                // jwks_max_age is as good as the one this process would
                // have kept had it fetched it itself.
                if let Some(cache) = shared
                    && let Some((set, age)) = self.shared_set(cache).await
                {
                    tracing::warn!(
                        hint = %e.operator_hint(),
                        age_secs = age.as_secs(),
                        "the identity provider is unreachable; using the JWKS another replica fetched"
                    );
                    self.warmed.store(true, Ordering::Release);
                    return Ok((set, age));
                }
                Err(e)
            }
        }
    }
}

/// Parses a JWKS document, skipping keys this library cannot represent
/// (one exotic key must not take the provider's other keys down with it).
pub fn parse_jwks(body: &[u8]) -> Result<JwkSet, &'static str> {
    #[derive(serde::Deserialize)]
    struct Raw {
        keys: Vec<serde_json::Value>,
    }
    let raw: Raw = serde_json::from_slice(body)
        .map_err(|_| "the response is not a JWKS (a JSON object with a keys array)")?;
    let keys = raw
        .keys
        .into_iter()
        .filter_map(|v| serde_json::from_value::<Jwk>(v).ok())
        .collect();
    Ok(JwkSet { keys })
}

/// A fixed or test-controlled JWKS, for tests and for deployments that pin
/// the provider's keys. Counts its fetches.
#[derive(Debug, Default)]
pub struct StaticJwksSource {
    keys: Mutex<JwkSet>,
    fetches: std::sync::atomic::AtomicUsize,
    fail: std::sync::atomic::AtomicBool,
}

impl StaticJwksSource {
    /// A source serving `keys`.
    pub fn new(keys: JwkSet) -> Self {
        Self {
            keys: Mutex::new(keys),
            ..Self::default()
        }
    }

    /// Replaces the served keys (a rotation at the provider).
    pub fn set(&self, keys: JwkSet) {
        *self.keys.lock().unwrap_or_else(|p| p.into_inner()) = keys;
    }

    /// Makes every fetch fail (the provider is down) or succeed again.
    pub fn set_failing(&self, fail: bool) {
        self.fail.store(fail, std::sync::atomic::Ordering::SeqCst);
    }

    /// How many times the validator fetched.
    pub fn fetches(&self) -> usize {
        self.fetches.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl JwksSource for StaticJwksSource {
    async fn fetch(&self) -> Result<JwkSet, AuthError> {
        self.fetches
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(AuthError::JwksUnavailable {
                url: "static".into(),
                cause: "the static source is set to fail".into(),
            });
        }
        Ok(self.keys.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

impl<T: JwksSource> JwksSource for Arc<T> {
    fn fetch(&self) -> impl Future<Output = Result<JwkSet, AuthError>> + Send {
        T::fetch(self)
    }

    fn fetch_with_age(&self) -> impl Future<Output = Result<(JwkSet, Duration), AuthError>> + Send {
        T::fetch_with_age(self)
    }
}

/// The kind of a usable key, which decides the algorithms it may verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyKind {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl KeyKind {
    /// True when a key of this kind may verify `alg`: no RSA key for an EC
    /// algorithm, no P-384 key for ES256, and so on.
    fn fits(self, alg: Algorithm) -> bool {
        match alg {
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => self == Self::Rsa,
            Algorithm::ES256 => self == Self::P256,
            Algorithm::ES384 => self == Self::P384,
            Algorithm::EdDSA => self == Self::Ed25519,
            _ => false,
        }
    }
}

/// One usable verification key.
pub(crate) struct VerifyKey {
    pub alg: Option<KeyAlgorithm>,
    pub kind: KeyKind,
    pub key: DecodingKey,
}

/// The usable keys of one JWKS, by `kid`.
pub(crate) struct KeySet {
    by_kid: HashMap<String, Vec<VerifyKey>>,
    /// When the set was fetched; `None` for the empty set before the first
    /// successful fetch.
    pub loaded_at: Option<Instant>,
}

impl KeySet {
    /// The set before anything was fetched.
    pub fn unloaded() -> Self {
        Self {
            by_kid: HashMap::new(),
            loaded_at: None,
        }
    }

    /// Converts a fetched JWKS; returns the set and how many keys were
    /// skipped.
    pub fn from_jwks(jwks: &JwkSet, loaded_at: Instant) -> (Self, usize) {
        let mut by_kid: HashMap<String, Vec<VerifyKey>> = HashMap::new();
        let mut skipped = 0;
        for jwk in &jwks.keys {
            match convert(jwk) {
                Ok((kid, key)) => by_kid.entry(kid).or_default().push(key),
                Err(reason) => {
                    skipped += 1;
                    tracing::debug!(
                        kid = %jws::printable(jwk.common.key_id.as_deref().unwrap_or(""), 64),
                        reason,
                        "skipping a JWKS key"
                    );
                }
            }
        }
        (
            Self {
                by_kid,
                loaded_at: Some(loaded_at),
            },
            skipped,
        )
    }

    /// True when the set holds a key with this id.
    pub fn contains(&self, kid: &str) -> bool {
        self.by_kid.contains_key(kid)
    }

    /// True when no key is usable.
    pub fn is_empty(&self) -> bool {
        self.by_kid.is_empty()
    }

    /// How many usable keys there are.
    pub fn len(&self) -> usize {
        self.by_kid.values().map(Vec::len).sum()
    }

    /// The key with `kid` that may verify `alg`: its own `alg`, if it
    /// states one, must be `alg`, and its type must fit `alg`.
    pub fn select(&self, kid: &str, alg: Algorithm) -> Result<&VerifyKey, AuthError> {
        let candidates = self.by_kid.get(kid).ok_or_else(|| AuthError::UnknownKid {
            kid: jws::printable(kid, 64),
        })?;
        let wanted = KeyAlgorithm::from(alg);
        candidates
            .iter()
            .find(|k| k.kind.fits(alg) && k.alg.is_none_or(|a| a == wanted))
            .ok_or(AuthError::KeyMismatch)
    }
}

fn decode_exact(s: &str, len: usize) -> Result<Vec<u8>, &'static str> {
    match jws::b64_decode(s) {
        Some(b) if b.len() == len => Ok(b),
        _ => Err("a coordinate is not base64url of the curve's size"),
    }
}

fn convert(jwk: &Jwk) -> Result<(String, VerifyKey), &'static str> {
    let kid = jwk
        .common
        .key_id
        .as_deref()
        .filter(|k| !k.is_empty())
        .ok_or("no kid")?;
    if jwk
        .common
        .public_key_use
        .as_ref()
        .is_some_and(|u| *u != PublicKeyUse::Signature)
    {
        return Err("not a signing key (use)");
    }
    if jwk
        .common
        .key_operations
        .as_ref()
        .is_some_and(|ops| !ops.contains(&KeyOperations::Verify))
    {
        return Err("not a verification key (key_ops)");
    }
    let (kind, key) = match &jwk.algorithm {
        AlgorithmParameters::RSA(p) => {
            let n = jws::b64_decode(&p.n).ok_or("RSA n is not base64url")?;
            let e = jws::b64_decode(&p.e).ok_or("RSA e is not base64url")?;
            let n_len = n.len() - n.iter().take_while(|b| **b == 0).count();
            if n_len < MIN_RSA_MODULUS_BYTES {
                return Err("RSA modulus shorter than 2048 bits");
            }
            if e.is_empty() || e.len() > 8 {
                return Err("RSA exponent out of range");
            }
            (KeyKind::Rsa, DecodingKey::from_rsa_raw_components(&n, &e))
        }
        AlgorithmParameters::EllipticCurve(p) => {
            let (kind, size) = match p.curve {
                EllipticCurve::P256 => (KeyKind::P256, 32),
                EllipticCurve::P384 => (KeyKind::P384, 48),
                _ => return Err("unsupported EC curve"),
            };
            decode_exact(&p.x, size)?;
            decode_exact(&p.y, size)?;
            let key = DecodingKey::from_ec_components(&p.x, &p.y).map_err(|_| "bad EC key")?;
            (kind, key)
        }
        AlgorithmParameters::OctetKeyPair(p) => {
            if p.curve != EllipticCurve::Ed25519 {
                return Err("unsupported OKP curve");
            }
            decode_exact(&p.x, 32)?;
            let key = DecodingKey::from_ed_components(&p.x).map_err(|_| "bad Ed25519 key")?;
            (KeyKind::Ed25519, key)
        }
        // Symmetric (`oct`) keys never verify OIDC tokens: the allow-list
        // holds asymmetric algorithms only.
        _ => return Err("unsupported key type"),
    };
    Ok((
        kid.to_owned(),
        VerifyKey {
            alg: jwk.common.key_algorithm,
            kind,
            key,
        },
    ))
}

/// A URL fit for logs: no credentials, query or fragment.
pub(crate) fn display_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.set_fragment(None);
            u.to_string()
        }
        Err(_) => jws::printable(raw, 200),
    }
}

/// A pause used after a failed fetch before the next attempt, so a provider
/// outage at startup does not lock authentication out for a whole refresh
/// interval, yet cannot be hammered either.
pub(crate) const FAILED_FETCH_RETRY: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_url_strips_credentials_and_query() {
        assert_eq!(
            display_url("https://u:p@kc.example.com:8443/realms/x/certs?token=abc#f"),
            "https://kc.example.com:8443/realms/x/certs"
        );
        assert_eq!(display_url("not a url\n"), "not a url?");
    }

    #[test]
    fn parse_jwks_skips_unknown_keys_and_refuses_non_jwks() {
        let body = br#"{"keys":[
            {"kty":"RSA","kid":"enc","use":"enc","alg":"RSA-OAEP","n":"AQAB","e":"AQAB"},
            {"kty":"weird","kid":"w"},
            {"kty":"OKP","crv":"Ed25519","kid":"ed","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kid":5}
        ]}"#;
        let set = parse_jwks(body).unwrap();
        assert_eq!(set.keys.len(), 3);
        let (ks, skipped) = KeySet::from_jwks(&set, Instant::now());
        assert_eq!(ks.len(), 1);
        assert_eq!(skipped, 2);
        assert!(ks.contains("ed"));
        assert!(parse_jwks(b"[]").is_err());
        assert!(parse_jwks(b"{\"keys\":{}}").is_err());
    }

    #[test]
    fn malformed_keys_are_dropped_at_load() {
        let x32 = jws::b64_encode(&[9u8; 32]);
        let x31 = jws::b64_encode(&[9u8; 31]);
        let small_n = jws::b64_encode(&[0xffu8; 128]);
        let body = format!(
            r#"{{"keys":[
            {{"kty":"OKP","crv":"Ed25519","kid":"short","x":"{x31}"}},
            {{"kty":"OKP","crv":"Ed448","kid":"ed448","x":"{x32}"}},
            {{"kty":"EC","crv":"P-256","kid":"ec-short","x":"{x31}","y":"{x32}"}},
            {{"kty":"EC","crv":"P-256","kid":"ec-p384-size","x":"{x32}{x32}","y":"{x32}"}},
            {{"kty":"RSA","kid":"rsa1024","n":"{small_n}","e":"AQAB"}},
            {{"kty":"oct","kid":"hmac","k":"{x32}"}},
            {{"kty":"OKP","crv":"Ed25519","x":"{x32}"}},
            {{"kty":"OKP","crv":"Ed25519","kid":"verify-only","key_ops":["sign"],"x":"{x32}"}}
        ]}}"#
        );
        let set = parse_jwks(body.as_bytes()).unwrap();
        let (ks, _) = KeySet::from_jwks(&set, Instant::now());
        assert!(ks.is_empty(), "kept {} keys", ks.len());
    }

    #[test]
    fn key_kind_fits_only_its_algorithms() {
        assert!(KeyKind::Rsa.fits(Algorithm::PS256));
        assert!(!KeyKind::Rsa.fits(Algorithm::ES256));
        assert!(!KeyKind::P384.fits(Algorithm::ES256));
        assert!(!KeyKind::Ed25519.fits(Algorithm::RS256));
        assert!(!KeyKind::Rsa.fits(Algorithm::HS256));
        assert!(!KeyKind::P256.fits(Algorithm::EdDSA));
    }
}
