//! Service-to-service tokens: the OAuth client-credentials grant.
//!
//! When aibox calls an upstream or a downstream service that requires it, it
//! presents a short-lived access token from the identity provider, obtained
//! with its own confidential client (seed 000 §6: there is no shared-bearer
//! fallback). Tokens are cached per (resource, scope) until shortly before
//! they expire, and concurrent callers share one request to the provider.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aibox_core::Secret;
use tokio::sync::Mutex;

/// Refresh this long before the provider's `expires_in` runs out, so a token
/// never expires in flight.
const EARLY: Duration = Duration::from_secs(30);

/// Why a token could not be obtained. Never contains the secret or a token.
#[derive(Debug, thiserror::Error)]
pub enum ClientCredentialsError {
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client for the token endpoint: {0}")]
    Client(String),
    /// The token endpoint did not answer or answered an error.
    #[error(
        "the token endpoint {url} refused or failed: {cause}; fix: check service_auth.client_id, the secret in {secret_env}, and that the client may use the client_credentials grant"
    )]
    Token {
        /// The token endpoint.
        url: String,
        /// What happened (status and the provider's `error` code only).
        cause: String,
        /// The variable holding the client secret.
        secret_env: String,
    },
}

/// Finds the token endpoint in `{issuer}/.well-known/openid-configuration`.
pub async fn discover_token_endpoint(issuer: &str) -> Result<String, ClientCredentialsError> {
    #[derive(serde::Deserialize)]
    struct Discovery {
        issuer: String,
        token_endpoint: String,
    }
    let url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let fail = |cause: &str| ClientCredentialsError::Token {
        url: url.clone(),
        cause: cause.to_owned(),
        secret_env: "(discovery)".into(),
    };
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .map_err(|e| ClientCredentialsError::Client(e.to_string()))?;
    let resp = http
        .get(&url)
        .send()
        .await
        .map_err(|_| fail("connection failed"))?;
    if !resp.status().is_success() {
        return Err(fail("the discovery document is not available"));
    }
    let body = resp
        .bytes()
        .await
        .map_err(|_| fail("the answer broke off"))?;
    let d: Discovery =
        serde_json::from_slice(&body).map_err(|_| fail("not an OpenID discovery document"))?;
    // The same exact-issuer rule as token validation: a document for another
    // issuer is not ours to trust.
    if d.issuer != issuer {
        return Err(fail(
            "the discovery document names another issuer; set service_auth.token_url",
        ));
    }
    Ok(d.token_endpoint)
}

/// What a token is for: the RFC 8707 resource and the scope.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct TokenRequest {
    /// `resource` parameter, if any.
    pub resource: Option<String>,
    /// `scope` parameter, if any.
    pub scope: Option<String>,
}

struct Cached {
    token: Secret,
    refresh_at: Instant,
}

/// A confidential client that fetches and caches access tokens.
pub struct ClientCredentials {
    token_url: String,
    client_id: String,
    secret: Secret,
    secret_env: String,
    http: reqwest::Client,
    cache: Mutex<HashMap<TokenRequest, Cached>>,
}

impl std::fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

impl ClientCredentials {
    /// A client for `token_url`; `secret_env` names the variable the secret
    /// came from, for error messages.
    pub fn new(
        token_url: String,
        client_id: String,
        secret: Secret,
        secret_env: String,
    ) -> Result<Self, ClientCredentialsError> {
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .map_err(|e| ClientCredentialsError::Client(e.to_string()))?;
        Ok(Self {
            token_url,
            client_id,
            secret,
            secret_env,
            http,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// A valid access token for `req`, from the cache or the provider.
    pub async fn token(&self, req: &TokenRequest) -> Result<Secret, ClientCredentialsError> {
        // Holding the lock across the fetch makes concurrent callers share
        // one request to the provider (single flight).
        let mut cache = self.cache.lock().await;
        if let Some(c) = cache.get(req).filter(|c| Instant::now() < c.refresh_at) {
            return Ok(c.token.clone());
        }
        let (token, expires_in) = self.fetch(req).await?;
        let lifetime = Duration::from_secs(expires_in.unwrap_or(60));
        let refresh_at = Instant::now() + lifetime.saturating_sub(EARLY.min(lifetime / 2));
        cache.insert(
            req.clone(),
            Cached {
                token: token.clone(),
                refresh_at,
            },
        );
        Ok(token)
    }

    async fn fetch(
        &self,
        req: &TokenRequest,
    ) -> Result<(Secret, Option<u64>), ClientCredentialsError> {
        #[derive(serde::Deserialize)]
        struct Answer {
            access_token: Option<String>,
            expires_in: Option<u64>,
            error: Option<String>,
        }
        let fail = |cause: String| ClientCredentialsError::Token {
            url: self.token_url.clone(),
            cause,
            secret_env: self.secret_env.clone(),
        };
        let mut form: Vec<(&str, &str)> = vec![("grant_type", "client_credentials")];
        if let Some(r) = &req.resource {
            form.push(("resource", r));
        }
        if let Some(s) = &req.scope {
            form.push(("scope", s));
        }
        let resp = self
            .http
            .post(&self.token_url)
            .basic_auth(&self.client_id, Some(self.secret.expose()))
            .form(&form)
            .send()
            .await
            .map_err(|e| {
                fail(if e.is_timeout() {
                    "timed out".into()
                } else {
                    "connection failed".into()
                })
            })?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|_| fail("the answer broke off".into()))?;
        let answer: Answer = serde_json::from_slice(&body).map_err(|_| {
            fail(format!(
                "HTTP {} with a body that is not a token response",
                status.as_u16()
            ))
        })?;
        if !status.is_success() {
            return Err(fail(format!(
                "HTTP {}: {}",
                status.as_u16(),
                answer.error.as_deref().unwrap_or("no error code")
            )));
        }
        let token = answer
            .access_token
            .filter(|t| !t.is_empty())
            .ok_or_else(|| fail("no access_token in the answer".into()))?;
        Ok((Secret::new(token), answer.expires_in))
    }
}
