//! Single sign-on for the dashboard: the OpenID Connect authorization code
//! flow with PKCE (RFC 7636, `S256`), as a confidential client of
//! `auth.issuer` (`dashboard.oidc`).
//!
//! `GET /oidc/login` creates a pending login (random `state`, `nonce` and
//! code verifier, kept only here, for at most [`PENDING_TTL`]), binds it to
//! the browser with a random, `HttpOnly`, `SameSite=Lax` pre-login cookie
//! (Lax, because the provider's redirect back is a cross-site top-level
//! navigation, which a `Strict` cookie would not follow) and redirects to the
//! provider's authorization endpoint. `GET /oidc/callback` takes the pending
//! login of that cookie out of the table (so a callback works once), checks
//! `state` in constant time, exchanges the code at the token endpoint with
//! the verifier and the client secret, verifies the ID token with the same
//! JWKS verifier as access tokens (issuer, signature, `exp`, `aud` = the
//! client id, `nonce`), and opens an ordinary dashboard session only for a
//! principal with the [`ADMIN_ROLE`], the role `/v1/admin/*` requires.
//!
//! A callback whose `iss` (RFC 9207) is another issuer is refused (mix-up).
//! Every refusal redirects to `/?sso_error=CODE` with a fixed code (never
//! text from the request or the provider) and logs the cause for the
//! operator.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use aibox_config::DashboardOidcConfig;
use aibox_core::Secret;
use aibox_identity::OidcValidator;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest as _, Sha256};

use crate::audit::ADMIN_ROLE;

/// How long a started login may take at the provider.
pub const PENDING_TTL: Duration = Duration::from_secs(600);
/// At most this many logins in progress; beyond it new ones are refused.
const MAX_PENDING: usize = 4096;
/// The largest discovery document or token response read.
const MAX_BODY: usize = 256 * 1024;

/// Why an SSO step failed. `code()` is what the browser is told.
#[derive(Debug, thiserror::Error)]
pub enum SsoError {
    /// No pending login for this browser (no cookie, expired, or used).
    #[error(
        "no login in progress for this browser (the pre-login cookie is missing, expired or was used); start again"
    )]
    NoPending,
    /// The `state` does not match the pending login.
    #[error("the state parameter does not match this browser's login; possible login CSRF")]
    State,
    /// The callback's `iss` (RFC 9207) names another issuer: an answer
    /// from another provider (mix-up attack).
    #[error("the callback's iss parameter is not auth.issuer")]
    Issuer,
    /// The provider answered the authorization request with an error.
    #[error("the identity provider refused the login ({0})")]
    Provider(String),
    /// The callback has no code.
    #[error("the callback has no authorization code")]
    NoCode,
    /// Discovery or the token endpoint failed.
    #[error("{0}")]
    Exchange(String),
    /// The ID token was refused.
    #[error("the ID token was refused: {0}")]
    IdToken(aibox_identity::AuthError),
    /// The user has no admin role.
    #[error("user '{user}' of tenant '{tenant}' lacks the '{ADMIN_ROLE}' role")]
    NotAdmin {
        /// The user id.
        user: String,
        /// The tenant.
        tenant: String,
    },
    /// Too many logins in progress, or the random generator failed.
    #[error("{0}")]
    Unavailable(String),
}

impl SsoError {
    /// The fixed code the browser sees.
    pub fn code(&self) -> &'static str {
        match self {
            SsoError::NoPending => "no_login_in_progress",
            SsoError::State => "state_mismatch",
            SsoError::Issuer => "issuer_mismatch",
            SsoError::Provider(_) => "provider_refused",
            SsoError::NoCode => "no_code",
            SsoError::Exchange(_) => "code_exchange_failed",
            SsoError::IdToken(_) => "id_token_refused",
            SsoError::NotAdmin { .. } => "not_admin",
            SsoError::Unavailable(_) => "sso_unavailable",
        }
    }
}

struct Pending {
    state: String,
    nonce: String,
    verifier: String,
    expires: Instant,
}

/// The provider's endpoints, from its discovery document.
#[derive(Debug, Clone)]
struct Endpoints {
    authorization: url::Url,
    token: String,
}

/// The dashboard's OIDC client.
pub struct Sso {
    config: DashboardOidcConfig,
    issuer: String,
    validator: Arc<OidcValidator>,
    http: reqwest::Client,
    endpoints: tokio::sync::OnceCell<Endpoints>,
    pending: Mutex<HashMap<[u8; 32], Pending>>,
}

impl std::fmt::Debug for Sso {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sso")
            .field("issuer", &self.issuer)
            .field("client_id", &self.config.client_id)
            .finish_non_exhaustive()
    }
}

fn random() -> Result<String, SsoError> {
    let mut buf = [0u8; 32];
    getrandom::fill(&mut buf)
        .map_err(|e| SsoError::Unavailable(format!("the OS random generator failed: {e}")))?;
    Ok(URL_SAFE_NO_PAD.encode(buf))
}

fn key(cookie: &str) -> [u8; 32] {
    Sha256::digest(cookie.as_bytes()).into()
}

/// The PKCE `S256` challenge of a verifier (RFC 7636 §4.2).
pub fn s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// `application/x-www-form-urlencoded` of one value, as RFC 6749 §2.3.1
/// requires for the client id and secret before HTTP Basic.
fn form_encode(v: &str) -> String {
    url::form_urlencoded::byte_serialize(v.as_bytes()).collect()
}

impl Sso {
    /// A client for `issuer`, verifying ID tokens with `validator` (the
    /// access-token validator of `auth:`, so the JWKS cache is shared).
    pub fn new(
        config: DashboardOidcConfig,
        issuer: String,
        validator: Arc<OidcValidator>,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()?;
        Ok(Self {
            config,
            issuer,
            validator,
            http,
            endpoints: tokio::sync::OnceCell::new(),
            pending: Mutex::new(HashMap::new()),
        })
    }

    /// The registered callback URL.
    pub fn redirect_url(&self) -> &url::Url {
        &self.config.redirect_url
    }

    async fn get_limited(&self, resp: reqwest::Response) -> Result<Vec<u8>, String> {
        let mut resp = resp;
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| aibox_identity::describe_reqwest(&e))?
        {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(format!("the answer is larger than {MAX_BODY} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    async fn discover(&self) -> Result<Endpoints, SsoError> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.issuer.trim_end_matches('/')
        );
        let fail = |cause: String| {
            SsoError::Exchange(format!(
                "cannot use the discovery document {url}: {cause}; fix: check auth.issuer and that the provider is reachable from aibox"
            ))
        };
        let resp = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| fail(aibox_identity::describe_reqwest(&e)))?;
        if !resp.status().is_success() {
            return Err(fail(format!("HTTP {}", resp.status())));
        }
        let body = self.get_limited(resp).await.map_err(fail)?;
        #[derive(serde::Deserialize)]
        struct Discovery {
            issuer: String,
            authorization_endpoint: String,
            token_endpoint: String,
        }
        let d: Discovery = serde_json::from_slice(&body).map_err(|_| {
            fail("not JSON with issuer, authorization_endpoint and token_endpoint".into())
        })?;
        // The exact-issuer rule of token validation (OpenID Connect
        // Discovery §4.3).
        if d.issuer != self.issuer {
            return Err(fail("the document names another issuer".into()));
        }
        let authorization = url::Url::parse(&d.authorization_endpoint)
            .ok()
            .filter(|u| matches!(u.scheme(), "https" | "http"))
            .ok_or_else(|| fail("authorization_endpoint is not an http(s) URL".into()))?;
        if !url::Url::parse(&d.token_endpoint).is_ok_and(|u| matches!(u.scheme(), "https" | "http"))
        {
            return Err(fail("token_endpoint is not an http(s) URL".into()));
        }
        Ok(Endpoints {
            authorization,
            token: d.token_endpoint,
        })
    }

    async fn endpoints(&self) -> Result<&Endpoints, SsoError> {
        // A failed discovery is not cached: the next login tries again.
        self.endpoints.get_or_try_init(|| self.discover()).await
    }

    /// Starts a login: returns the pre-login cookie value and the URL of
    /// the provider's authorization endpoint to send the browser to.
    pub async fn start(&self) -> Result<(String, String), SsoError> {
        let endpoints = self.endpoints().await?;
        let cookie = random()?;
        let pending = Pending {
            state: random()?,
            nonce: random()?,
            verifier: random()?,
            expires: Instant::now() + PENDING_TTL,
        };
        let mut url = endpoints.authorization.clone();
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.config.client_id)
            .append_pair("redirect_uri", self.config.redirect_url.as_str())
            .append_pair("scope", "openid profile")
            .append_pair("state", &pending.state)
            .append_pair("nonce", &pending.nonce)
            .append_pair("code_challenge", &s256(&pending.verifier))
            .append_pair("code_challenge_method", "S256");
        let mut table = self
            .pending
            .lock()
            .map_err(|_| SsoError::Unavailable("the login table is poisoned".into()))?;
        let now = Instant::now();
        table.retain(|_, p| p.expires > now);
        if table.len() >= MAX_PENDING {
            return Err(SsoError::Unavailable(format!(
                "{MAX_PENDING} SSO logins are in progress; wait for some to expire"
            )));
        }
        table.insert(key(&cookie), pending);
        Ok((cookie, url.into()))
    }

    /// Finishes a login: the principal of a verified ID token with the
    /// admin role.
    pub async fn finish(
        &self,
        cookie: Option<&str>,
        params: &CallbackParams,
    ) -> Result<aibox_core::Principal, SsoError> {
        // Taken out whatever happens next, so neither a replayed callback
        // nor a second try with another code can use this login again.
        let pending = cookie
            .and_then(|c| self.pending.lock().ok().and_then(|mut t| t.remove(&key(c))))
            .filter(|p| p.expires > Instant::now())
            .ok_or(SsoError::NoPending)?;
        let given = params.state.as_deref().unwrap_or("");
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            given.as_bytes(),
            pending.state.as_bytes(),
        )) {
            return Err(SsoError::State);
        }
        if params.iss.as_deref().is_some_and(|i| i != self.issuer) {
            return Err(SsoError::Issuer);
        }
        if let Some(err) = &params.error {
            // Only the registered error-code alphabet is logged.
            let code: String = err
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                .take(64)
                .collect();
            return Err(SsoError::Provider(code));
        }
        let code = params
            .code
            .as_deref()
            .filter(|c| !c.is_empty())
            .ok_or(SsoError::NoCode)?;
        let id_token = self.exchange(code, &pending.verifier).await?;
        let principal = self
            .validator
            .validate_id_token(
                id_token.expose(),
                &self.config.client_id,
                &pending.nonce,
                SystemTime::now(),
            )
            .await
            .map_err(SsoError::IdToken)?;
        if !principal.has_role(ADMIN_ROLE) {
            return Err(SsoError::NotAdmin {
                user: principal.user.as_str().to_owned(),
                tenant: principal.tenant.as_str().to_owned(),
            });
        }
        Ok(principal)
    }

    /// The authorization code grant at the token endpoint; the ID token.
    async fn exchange(&self, code: &str, verifier: &str) -> Result<Secret, SsoError> {
        let endpoints = self.endpoints().await?;
        let url = &endpoints.token;
        let fail = |cause: String| {
            SsoError::Exchange(format!(
                "the token endpoint {url} did not give an ID token: {cause}; fix: check dashboard.oidc.client_id, the secret in {}, and that the client may use the authorization_code grant with redirect URI {}",
                self.config.client_secret_env, self.config.redirect_url
            ))
        };
        let resp = self
            .http
            .post(url)
            .basic_auth(
                form_encode(&self.config.client_id),
                Some(form_encode(self.config.client_secret.expose())),
            )
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", self.config.redirect_url.as_str()),
                ("code_verifier", verifier),
            ])
            .send()
            .await
            .map_err(|e| fail(aibox_identity::describe_reqwest(&e)))?;
        let status = resp.status();
        let body = self.get_limited(resp).await.map_err(fail)?;
        #[derive(serde::Deserialize)]
        struct TokenAnswer {
            id_token: Option<String>,
            error: Option<String>,
        }
        let answer: TokenAnswer = serde_json::from_slice(&body)
            .map_err(|_| fail(format!("HTTP {status}, not a JSON token response")))?;
        if !status.is_success() {
            let err: String = answer
                .error
                .unwrap_or_default()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                .take(64)
                .collect();
            return Err(fail(format!("HTTP {status}, error '{err}'")));
        }
        answer.id_token.map(Secret::new).ok_or_else(|| {
            fail("the answer has no id_token (is `openid` a permitted scope?)".into())
        })
    }
}

/// The query of `GET /oidc/callback`.
#[derive(Debug, Default, serde::Deserialize)]
pub struct CallbackParams {
    /// The authorization code.
    pub code: Option<String>,
    /// The state sent with the authorization request.
    pub state: Option<String>,
    /// The provider's error code, when it refused.
    pub error: Option<String>,
    /// The issuer of the answer (RFC 9207), when the provider sends it.
    pub iss: Option<String>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn pkce_s256_is_unpadded_base64url_of_sha256() {
        // SHA-256("abc") is the FIPS 180-2 test vector ba7816bf...f20015ad.
        assert_eq!(s256("abc"), "ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0");
    }

    #[test]
    fn client_credentials_are_form_encoded_for_basic() {
        assert_eq!(form_encode("a b:c%"), "a+b%3Ac%25");
    }
}
