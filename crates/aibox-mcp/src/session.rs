//! MCP sessions of the gateway's clients (`Mcp-Session-Id`).
//!
//! A session records the revision negotiated in `initialize` and who opened
//! it. It is bound to that principal (tenant, user and credential): another
//! caller presenting the id gets "session not found", exactly like an
//! unknown id, so ids are useless to anyone who overhears them. Sessions
//! live in memory, expire after [`IDLE_TIMEOUT`] without a request, and the
//! least recently used is dropped when [`MAX_SESSIONS`] is reached; a client
//! whose session is gone gets 404 and initializes again, as the transport
//! spec prescribes. (Several gateway replicas need sticky routing for
//! `/mcp`, or clients re-initialize when they land elsewhere.)

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aibox_core::{AuthMethod, Principal};
use base64::Engine as _;

/// Sessions idle longer than this are forgotten.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60 * 60);
/// The most sessions kept at once.
pub const MAX_SESSIONS: usize = 10_000;
/// The most sessions one principal keeps; its oldest goes first, so one
/// caller opening sessions in a loop evicts only its own.
pub const MAX_SESSIONS_PER_OWNER: usize = 64;

/// Who owns a session.
pub fn owner_key(p: &Principal) -> String {
    let auth = match &p.auth {
        AuthMethod::Anonymous => "anonymous".to_owned(),
        AuthMethod::ApiKey { key_id } => format!("apikey:{key_id}"),
        AuthMethod::Oidc { issuer, client_id } => {
            format!("oidc:{issuer}#{}", client_id.as_deref().unwrap_or(""))
        }
    };
    format!("{}/{}|{auth}", p.tenant, p.user)
}

#[derive(Debug)]
struct Entry {
    owner: String,
    version: &'static str,
    last_seen: Instant,
}

/// The session table.
#[derive(Debug)]
pub struct SessionStore {
    inner: Mutex<HashMap<String, Entry>>,
    max: usize,
    idle: Duration,
}

impl Default for SessionStore {
    fn default() -> Self {
        Self::new(MAX_SESSIONS, IDLE_TIMEOUT)
    }
}

impl SessionStore {
    /// A table with the given bounds.
    pub fn new(max: usize, idle: Duration) -> Self {
        Self {
            inner: Mutex::new(HashMap::new()),
            max: max.max(1),
            idle,
        }
    }

    /// Opens a session; returns its id (128 random bits, base64url).
    pub fn create(&self, owner: String, version: &'static str) -> Option<String> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).ok()?;
        let id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let now = Instant::now();
        let mut map = self.inner.lock().ok()?;
        map.retain(|_, e| now.duration_since(e.last_seen) < self.idle);
        let own: Vec<(&String, &Entry)> = map.iter().filter(|(_, e)| e.owner == owner).collect();
        if own.len() >= MAX_SESSIONS_PER_OWNER
            && let Some(oldest) = own
                .iter()
                .min_by_key(|(_, e)| e.last_seen)
                .map(|(k, _)| (*k).clone())
        {
            map.remove(&oldest);
        }
        if map.len() >= self.max
            && let Some(oldest) = map
                .iter()
                .min_by_key(|(_, e)| e.last_seen)
                .map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(
            id.clone(),
            Entry {
                owner,
                version,
                last_seen: now,
            },
        );
        Some(id)
    }

    /// The negotiated revision of session `id` if `owner` holds it.
    pub fn get(&self, id: &str, owner: &str) -> Option<&'static str> {
        let mut map = self.inner.lock().ok()?;
        let now = Instant::now();
        let e = map.get_mut(id)?;
        if e.owner != owner {
            return None;
        }
        if now.duration_since(e.last_seen) >= self.idle {
            map.remove(id);
            return None;
        }
        e.last_seen = now;
        Some(e.version)
    }

    /// Ends session `id` if `owner` holds it.
    pub fn remove(&self, id: &str, owner: &str) -> bool {
        let Ok(mut map) = self.inner.lock() else {
            return false;
        };
        if map.get(id).is_some_and(|e| e.owner == owner) {
            map.remove(id);
            return true;
        }
        false
    }

    /// How many sessions are open.
    pub fn len(&self) -> usize {
        self.inner.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// True when none is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use aibox_core::{TenantId, UserId};

    fn p(user: &str, key: &str) -> Principal {
        Principal {
            tenant: TenantId::new("acme").unwrap(),
            user: UserId::new(user).unwrap(),
            roles: vec![],
            auth: AuthMethod::ApiKey { key_id: key.into() },
        }
    }

    #[test]
    fn sessions_are_bound_to_their_owner() {
        let s = SessionStore::default();
        let alice = owner_key(&p("alice", "k1"));
        let id = s.create(alice.clone(), "2025-06-18").unwrap();
        assert_eq!(id.len(), 22);
        assert_eq!(s.get(&id, &alice), Some("2025-06-18"));
        assert_eq!(s.get(&id, &owner_key(&p("bob", "k2"))), None);
        assert_eq!(s.get(&id, &owner_key(&p("alice", "k9"))), None);
        assert!(!s.remove(&id, &owner_key(&p("bob", "k2"))));
        assert!(s.remove(&id, &alice));
        assert_eq!(s.get(&id, &alice), None);
        assert_ne!(s.create(alice.clone(), "2025-06-18").unwrap(), id);
    }

    #[test]
    fn oldest_session_is_dropped_when_full_and_idle_ones_expire() {
        let s = SessionStore::new(2, Duration::from_secs(3600));
        let a = s.create("o".into(), "2025-06-18").unwrap();
        std::thread::sleep(Duration::from_millis(2));
        let b = s.create("o".into(), "2025-06-18").unwrap();
        std::thread::sleep(Duration::from_millis(2));
        let c = s.create("o".into(), "2025-06-18").unwrap();
        assert_eq!(s.len(), 2);
        assert!(s.get(&a, "o").is_none());
        assert!(s.get(&b, "o").is_some() && s.get(&c, "o").is_some());
        // One owner's flood evicts only its own sessions.
        let s = SessionStore::default();
        let other = s.create("other".into(), "2025-06-18").unwrap();
        for _ in 0..(MAX_SESSIONS_PER_OWNER * 3) {
            s.create("flood".into(), "2025-06-18").unwrap();
        }
        assert_eq!(s.len(), MAX_SESSIONS_PER_OWNER + 1);
        assert!(s.get(&other, "other").is_some());
        let short = SessionStore::new(10, Duration::from_millis(1));
        let d = short.create("o".into(), "2025-03-26").unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert!(short.get(&d, "o").is_none());
    }
}
