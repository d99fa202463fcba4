//! Who may use the dashboard (seed 004 §4), and their sessions.
//!
//! Two credentials, either or both: `DASHBOARD_AUTH_TOKEN`, compared in
//! constant time, and `DASHBOARD_PASSWORD`, kept only as an argon2id PHC
//! hash (a plain password is hashed once at start-up and on reload; a PHC
//! string is used as given). A login creates a session: a random 256-bit id
//! in an `HttpOnly; SameSite=Strict` cookie, stored here only as its SHA-256,
//! with its own random CSRF token and an absolute expiry. Rotating either
//! credential (SIGHUP or `POST /ops/reload/keys`) ends every session.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aibox_core::Secret;
use argon2::{PasswordHasher as _, PasswordVerifier as _};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest as _, Sha256};

/// The shortest plain `DASHBOARD_PASSWORD` accepted.
pub const MIN_PASSWORD_CHARS: usize = 12;

/// At most this many live sessions; a login beyond it is refused rather
/// than letting a flood of logins grow memory.
const MAX_SESSIONS: usize = 4096;

/// Why the dashboard credentials are not usable.
#[derive(Debug, thiserror::Error)]
pub enum DashboardAuthError {
    /// `DASHBOARD_PASSWORD` looks like a PHC string but is not a valid one.
    #[error(
        "DASHBOARD_PASSWORD starts with '$argon2' but is not a valid argon2 PHC hash ({0}); fix: give the plain password (aibox hashes it at start-up), or an argon2id PHC string such as the `argon2` command prints with -e"
    )]
    BadHash(String),
    /// A plain password too short to stand an online guessing attack.
    #[error(
        "DASHBOARD_PASSWORD has {0} characters; at least {MIN_PASSWORD_CHARS} are required; fix: use a longer passphrase, or DASHBOARD_AUTH_TOKEN (`aibox bootstrap` writes a strong one)"
    )]
    TooShort(usize),
    /// Hashing a plain password failed.
    #[error("cannot hash DASHBOARD_PASSWORD: {0}")]
    Hash(String),
    /// The OS random generator failed.
    #[error("the OS random generator failed: {0}")]
    Random(String),
}

/// The configured credentials.
pub struct DashboardAuth {
    token: Option<Secret>,
    /// The PHC string of the password's argon2 hash.
    password_hash: Option<String>,
}

impl std::fmt::Debug for DashboardAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DashboardAuth")
            .field("token", &self.token.is_some())
            .field("password", &self.password_hash.is_some())
            .finish()
    }
}

impl DashboardAuth {
    /// From `DASHBOARD_AUTH_TOKEN` and `DASHBOARD_PASSWORD`; empty values
    /// count as unset.
    pub fn new(
        token: Option<Secret>,
        password: Option<&Secret>,
    ) -> Result<Self, DashboardAuthError> {
        let token = token.filter(|t| !t.expose().is_empty());
        let password_hash = match password.map(Secret::expose).filter(|p| !p.is_empty()) {
            None => None,
            Some(p) if p.starts_with("$argon2") => {
                argon2::PasswordHash::new(p)
                    .map_err(|e| DashboardAuthError::BadHash(e.to_string()))?;
                Some(p.to_owned())
            }
            Some(p) if p.chars().count() < MIN_PASSWORD_CHARS => {
                return Err(DashboardAuthError::TooShort(p.chars().count()));
            }
            Some(p) => Some(hash_password(p)?),
        };
        Ok(Self {
            token,
            password_hash,
        })
    }

    /// Whether any credential is configured.
    pub fn enabled(&self) -> bool {
        self.token.is_some() || self.password_hash.is_some()
    }

    /// Whether a token login is possible.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// Whether a password login is possible.
    pub fn has_password(&self) -> bool {
        self.password_hash.is_some()
    }

    /// Whether `token` and `password` (as read from the environment) are
    /// the credentials in force: the token compared in constant time, a
    /// plain password verified against the kept hash, a PHC string compared
    /// as text. A reload with unchanged credentials keeps the sessions.
    pub fn same_credentials(&self, token: Option<&Secret>, password: Option<&Secret>) -> bool {
        let token = token.map(Secret::expose).filter(|t| !t.is_empty());
        let same_token = match (&self.token, token) {
            (None, None) => true,
            (Some(old), Some(new)) => {
                subtle::ConstantTimeEq::ct_eq(old.expose().as_bytes(), new.as_bytes()).into()
            }
            _ => false,
        };
        let password = password.map(Secret::expose).filter(|p| !p.is_empty());
        let same_password = match (&self.password_hash, password) {
            (None, None) => true,
            (Some(hash), Some(new)) if new.starts_with("$argon2") => hash == new,
            (Some(_), Some(new)) => self.check_password(new),
            _ => false,
        };
        same_token && same_password
    }

    /// Constant-time comparison with `DASHBOARD_AUTH_TOKEN`.
    pub fn check_token(&self, given: &str) -> bool {
        match &self.token {
            Some(t) => {
                subtle::ConstantTimeEq::ct_eq(given.as_bytes(), t.expose().as_bytes()).into()
            }
            None => false,
        }
    }

    /// Verifies a password against the argon2 hash. CPU-heavy by design:
    /// call it off the async workers.
    pub fn check_password(&self, given: &str) -> bool {
        let Some(hash) = &self.password_hash else {
            return false;
        };
        argon2::Argon2::default()
            .verify_password(given.as_bytes(), hash.as_str())
            .is_ok()
    }
}

/// Hashes a password with argon2id and the crate's recommended parameters
/// into a PHC string.
pub fn hash_password(password: &str) -> Result<String, DashboardAuthError> {
    argon2::Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| DashboardAuthError::Hash(e.to_string()))
}

/// A live login.
#[derive(Debug, Clone)]
pub struct Session {
    /// The token every state-changing request must carry.
    pub csrf: String,
    /// How the user logged in (`token`, `password` or `oidc`).
    pub method: &'static str,
    /// Who, for an SSO login (`tenant/user`).
    pub user: Option<String>,
    /// When it ends, whatever happens.
    pub expires: Instant,
}

/// The credentials in force and the sessions they opened.
pub struct DashboardHandle {
    auth: arc_swap::ArcSwap<DashboardAuth>,
    sessions: Mutex<HashMap<[u8; 32], Session>>,
    ttl: Duration,
}

fn random_token() -> Result<String, DashboardAuthError> {
    let mut buf = [0u8; 32];
    getrandom::fill(&mut buf).map_err(|e| DashboardAuthError::Random(e.to_string()))?;
    Ok(URL_SAFE_NO_PAD.encode(buf))
}

fn session_key(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

impl DashboardHandle {
    /// Starts with `auth` and no sessions.
    pub fn new(auth: DashboardAuth, ttl: Duration) -> Self {
        Self {
            auth: arc_swap::ArcSwap::from_pointee(auth),
            sessions: Mutex::new(HashMap::new()),
            ttl,
        }
    }

    /// The credentials in force.
    pub fn current(&self) -> Arc<DashboardAuth> {
        self.auth.load_full()
    }

    /// Swaps in rotated credentials and ends every session opened with the
    /// old ones.
    pub fn replace(&self, auth: DashboardAuth) {
        self.auth.store(Arc::new(auth));
        if let Ok(mut s) = self.sessions.lock() {
            s.clear();
        }
    }

    /// Opens a session; returns its id (for the cookie) and the session.
    pub fn open(&self, method: &'static str) -> Result<(String, Session), DashboardAuthError> {
        self.open_for(method, None)
    }

    /// Opens a session for a named user (an SSO login).
    pub fn open_for(
        &self,
        method: &'static str,
        user: Option<String>,
    ) -> Result<(String, Session), DashboardAuthError> {
        let id = random_token()?;
        let session = Session {
            user,
            csrf: random_token()?,
            method,
            expires: Instant::now() + self.ttl,
        };
        let mut sessions = self
            .sessions
            .lock()
            .map_err(|_| DashboardAuthError::Random("session table poisoned".into()))?;
        let now = Instant::now();
        sessions.retain(|_, s| s.expires > now);
        if sessions.len() >= MAX_SESSIONS {
            return Err(DashboardAuthError::Random(format!(
                "too many open dashboard sessions ({MAX_SESSIONS}); wait for some to expire"
            )));
        }
        sessions.insert(session_key(&id), session.clone());
        Ok((id, session))
    }

    /// The live session with this id, if any; an expired one is removed.
    pub fn get(&self, id: &str) -> Option<Session> {
        let key = session_key(id);
        let mut sessions = self.sessions.lock().ok()?;
        match sessions.get(&key) {
            Some(s) if s.expires > Instant::now() => Some(s.clone()),
            Some(_) => {
                sessions.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Ends a session.
    pub fn close(&self, id: &str) {
        if let Ok(mut s) = self.sessions.lock() {
            s.remove(&session_key(id));
        }
    }

    /// The session lifetime.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn token_and_password_checks() {
        let a = DashboardAuth::new(
            Some(Secret::new(String::from("t0ken-value"))),
            Some(&Secret::new(String::from("correct horse"))),
        )
        .unwrap();
        assert!(a.check_token("t0ken-value"));
        assert!(!a.check_token("t0ken-valuf"));
        assert!(!a.check_token(""));
        assert!(a.check_password("correct horse"));
        assert!(!a.check_password("correct horsE"));
        assert!(!a.check_password(""));
        // The password is kept only as a hash.
        assert!(!format!("{a:?}").contains("correct"));
        assert!(
            a.password_hash
                .as_deref()
                .unwrap()
                .starts_with("$argon2id$")
        );
    }

    #[test]
    fn a_phc_hash_is_used_as_given_and_a_bad_one_refused() {
        let phc = hash_password("s3cret pass").unwrap();
        let a = DashboardAuth::new(None, Some(&Secret::new(phc))).unwrap();
        assert!(a.check_password("s3cret pass"));
        assert!(!a.check_password("$argon2id$"));
        let err = DashboardAuth::new(
            None,
            Some(&Secret::new(String::from("$argon2id$v=19$garbage"))),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("DASHBOARD_PASSWORD"), "{err}");
    }

    #[test]
    fn a_short_plain_password_is_refused_without_echoing_it() {
        let e = DashboardAuth::new(None, Some(&Secret::new(String::from("hunter2"))))
            .unwrap_err()
            .to_string();
        assert!(e.contains("at least 12") && !e.contains("hunter2"), "{e}");
    }

    #[test]
    fn same_credentials_tells_a_rotation_from_a_reload() {
        let tok = |v: &str| Some(Secret::new(String::from(v)));
        let a = DashboardAuth::new(tok("t1"), tok("long enough password").as_ref()).unwrap();
        assert!(a.same_credentials(tok("t1").as_ref(), tok("long enough password").as_ref()));
        assert!(!a.same_credentials(tok("t2").as_ref(), tok("long enough password").as_ref()));
        assert!(!a.same_credentials(tok("t1").as_ref(), tok("other long password").as_ref()));
        assert!(!a.same_credentials(None, tok("long enough password").as_ref()));
        assert!(!a.same_credentials(tok("t1").as_ref(), None));
        let none = DashboardAuth::new(None, None).unwrap();
        assert!(none.same_credentials(None, tok("").as_ref()));
    }

    #[test]
    fn nothing_configured_means_disabled_and_nothing_matches() {
        let a = DashboardAuth::new(Some(Secret::new(String::new())), None).unwrap();
        assert!(!a.enabled());
        assert!(!a.check_token(""));
        assert!(!a.check_password(""));
    }

    #[test]
    fn sessions_expire_and_rotation_ends_them() {
        let h = DashboardHandle::new(
            DashboardAuth::new(Some(Secret::new(String::from("x"))), None).unwrap(),
            Duration::from_millis(50),
        );
        let (id, s) = h.open("token").unwrap();
        assert_eq!(h.get(&id).unwrap().csrf, s.csrf);
        assert!(h.get("not-a-session").is_none());
        std::thread::sleep(Duration::from_millis(80));
        assert!(h.get(&id).is_none(), "expired session still valid");

        let h = DashboardHandle::new(
            DashboardAuth::new(Some(Secret::new(String::from("x"))), None).unwrap(),
            Duration::from_secs(60),
        );
        let (id, _) = h.open("token").unwrap();
        h.replace(DashboardAuth::new(Some(Secret::new(String::from("y"))), None).unwrap());
        assert!(h.get(&id).is_none(), "rotation must end sessions");
        let (id, _) = h.open("token").unwrap();
        h.close(&id);
        assert!(h.get(&id).is_none());
    }
}
