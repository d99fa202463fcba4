//! The JWKS shared between replicas through Redis (issue 9: "JWKS cache
//! warm-up").
//!
//! A replica that fetched the provider's JWKS publishes the exact bytes it
//! fetched in Redis, with the time of the fetch and an HMAC-SHA256 tag. A
//! replica that starts later loads its first key set from there instead of
//! the provider, and a replica whose provider fetch fails falls back to a
//! set another replica fetched recently. Refreshes (a new `kid`, a set older
//! than `jwks_max_age`) always go to the provider first, so a rotation or a
//! revocation is seen as soon as on a replica without the cache.
//!
//! Redis is not trusted with the keys that decide who a caller is: whoever
//! can write to Redis could otherwise plant a key and mint tokens for any
//! user. The tag is keyed by a secret every replica shares and Redis never
//! sees (derived with HKDF-SHA256 from `AUDIT_SIGNING_KEY` under its own
//! label), and covers the entry's name (issuer and JWKS URL), the fetch time
//! and the body, so an entry can be neither forged, nor moved to another
//! provider, nor kept alive past `jwks_max_age`. An entry that fails any
//! check is ignored (the provider is asked), never trusted.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aibox_core::Secret;
use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::replay::{RedisReplayGuard, ReplayError};

/// The Redis key prefix of shared JWKS entries.
pub const JWKS_REDIS_PREFIX: &str = "aibox:jwks:";

/// The HKDF salt and the tag's domain label.
const LABEL: &[u8] = b"aibox jwks cache v1";

/// How far in the future an entry's fetch time may be (clock skew between
/// replicas) before the entry is refused.
const MAX_FUTURE_SKEW: Duration = Duration::from_secs(60);

/// A JWKS entry read back from Redis and found authentic and fresh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedJwks {
    /// The JWKS document, byte for byte as the provider served it.
    pub body: Vec<u8>,
    /// How long ago a replica fetched it.
    pub age: Duration,
}

/// The shared JWKS of one provider.
pub struct SharedJwksCache {
    redis: RedisReplayGuard,
    /// One HMAC-SHA256 block, so the MAC is built without a fallible
    /// key-length check.
    mac_key: Zeroizing<[u8; 64]>,
    /// The entry's name: a digest of the issuer and the configured JWKS URL,
    /// so two providers (or two configurations of one) never share an entry.
    name: String,
}

impl std::fmt::Debug for SharedJwksCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedJwksCache")
            .field("redis", &self.redis)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Why a shared entry was not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SharedJwksError {
    /// Redis failed or did not answer.
    #[error("the shared JWKS cache is unavailable: {0}")]
    Redis(#[from] ReplayError),
    /// The entry is not in the expected layout.
    #[error("the shared JWKS entry is malformed")]
    Malformed,
    /// The tag does not match: the entry was not written by a replica with
    /// this `AUDIT_SIGNING_KEY`.
    #[error(
        "the shared JWKS entry's tag does not verify (written by a replica with another \
         AUDIT_SIGNING_KEY, or not by aibox); it is ignored"
    )]
    BadTag,
    /// The entry is older than `jwks_max_age` or dated in the future.
    #[error("the shared JWKS entry is stale or dated in the future")]
    Stale,
}

impl SharedJwksCache {
    /// A cache over `redis` (whose prefix should be [`JWKS_REDIS_PREFIX`])
    /// for the provider `issuer` with the configured `jwks_url` (`None`:
    /// discovered), tagged under a key derived from `shared_secret`.
    pub fn new(
        redis: RedisReplayGuard,
        shared_secret: &Secret,
        issuer: &str,
        jwks_url: Option<&str>,
    ) -> Self {
        let hk = hkdf::Hkdf::<Sha256>::new(Some(LABEL), shared_secret.expose().trim().as_bytes());
        let mut mac_key = Zeroizing::new([0u8; 64]);
        // 64 bytes is far below HKDF-SHA256's output limit, so expand always
        // succeeds; were it ever to fail, the zero key would only make every
        // tag differ from the other replicas' (entries ignored, not trusted).
        let _ = hk.expand(b"hmac key", mac_key.as_mut_slice());
        let mut h = Sha256::new();
        h.update(issuer.as_bytes());
        h.update(b"\n");
        h.update(jwks_url.unwrap_or("").as_bytes());
        let name = hex::encode(&h.finalize()[..16]);
        Self {
            redis,
            mac_key,
            name,
        }
    }

    fn tag(&self, fetched_ms: u64, body: &[u8]) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new(&(*self.mac_key).into());
        mac.update(LABEL);
        mac.update(b"\n");
        mac.update(self.name.as_bytes());
        mac.update(b"\n");
        mac.update(fetched_ms.to_string().as_bytes());
        mac.update(b"\n");
        mac.update(body);
        mac
    }

    /// The entry for `body` fetched at `fetched`: `v1`, the fetch time in
    /// Unix milliseconds, the hex tag, each ending in a newline, then the
    /// body.
    pub fn encode(&self, body: &[u8], fetched: SystemTime) -> Vec<u8> {
        let ms = unix_ms(fetched);
        let tag = hex::encode(self.tag(ms, body).finalize().into_bytes());
        let mut out = format!("v1\n{ms}\n{tag}\n").into_bytes();
        out.extend_from_slice(body);
        out
    }

    /// Checks an entry read from Redis at `now` against `max_age`.
    pub fn decode(
        &self,
        entry: &[u8],
        now: SystemTime,
        max_age: Duration,
    ) -> Result<SharedJwks, SharedJwksError> {
        let mut parts = entry.splitn(4, |b| *b == b'\n');
        let (Some(b"v1"), Some(ms), Some(tag), Some(body)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(SharedJwksError::Malformed);
        };
        let ms: u64 = std::str::from_utf8(ms)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(SharedJwksError::Malformed)?;
        let tag = std::str::from_utf8(tag)
            .ok()
            .and_then(|t| hex::decode(t).ok())
            .ok_or(SharedJwksError::Malformed)?;
        // verify_slice compares in constant time.
        self.tag(ms, body)
            .verify_slice(&tag)
            .map_err(|_| SharedJwksError::BadTag)?;
        let fetched = UNIX_EPOCH + Duration::from_millis(ms);
        let age = match now.duration_since(fetched) {
            Ok(age) => age,
            Err(ahead) if ahead.duration() <= MAX_FUTURE_SKEW => Duration::ZERO,
            Err(_) => return Err(SharedJwksError::Stale),
        };
        if age >= max_age {
            return Err(SharedJwksError::Stale);
        }
        Ok(SharedJwks {
            body: body.to_vec(),
            age,
        })
    }

    /// Publishes `body`, fetched from the provider just now, for
    /// `max_age`.
    pub async fn publish(&self, body: &[u8], max_age: Duration) -> Result<(), SharedJwksError> {
        let entry = self.encode(body, SystemTime::now());
        self.redis.set_raw(&self.name, &entry, max_age).await?;
        Ok(())
    }

    /// The entry another replica published, if there is one younger than
    /// `max_age` with a valid tag.
    pub async fn load(&self, max_age: Duration) -> Result<Option<SharedJwks>, SharedJwksError> {
        match self.redis.get_raw(&self.name).await? {
            None => Ok(None),
            Some(entry) => self.decode(&entry, SystemTime::now(), max_age).map(Some),
        }
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(secret: &str, issuer: &str) -> SharedJwksCache {
        let redis = RedisReplayGuard::connect_lazy(
            &Secret::new("redis://127.0.0.1:6379"),
            JWKS_REDIS_PREFIX,
        )
        .expect("lazy connect");
        SharedJwksCache::new(redis, &Secret::new(secret), issuer, None)
    }

    const SECRET: &str = "a-replica-shared-audit-signing-key-of-32+chars";
    const BODY: &[u8] = br#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"k1","x":"AAAA"}]}"#;
    const HOUR: Duration = Duration::from_secs(3600);

    // The lazy Redis connection needs a runtime, though these two tests
    // never reach Redis.
    #[tokio::test]
    async fn an_entry_round_trips() {
        let c = cache(SECRET, "https://idp.example");
        let now = SystemTime::now();
        let e = c.encode(BODY, now - Duration::from_secs(5));
        let got = c.decode(&e, now, HOUR).expect("valid");
        assert_eq!(got.body, BODY);
        assert!(got.age >= Duration::from_secs(4) && got.age <= Duration::from_secs(6));
    }

    /// The attacks on the entry: each altered part is refused.
    #[tokio::test]
    async fn issue_9_forged_moved_or_stale_entries_are_refused() {
        let c = cache(SECRET, "https://idp.example");
        let now = SystemTime::now();
        let good = c.encode(BODY, now);
        let text = String::from_utf8(good.clone()).expect("utf-8");
        let mut lines: Vec<&str> = text.splitn(4, '\n').collect();
        let planted = br#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"evil","x":"BBBB"}]}"#;

        // A planted body under the old tag.
        let mut e = format!("{}\n{}\n{}\n", lines[0], lines[1], lines[2]).into_bytes();
        e.extend_from_slice(planted);
        assert_eq!(c.decode(&e, now, HOUR), Err(SharedJwksError::BadTag));

        // An entry tagged by a replica with another AUDIT_SIGNING_KEY (or by
        // an attacker guessing one).
        let other = cache(
            "another-audit-signing-key-of-at-least-32-chars",
            "https://idp.example",
        );
        let e = other.encode(planted, now);
        assert_eq!(c.decode(&e, now, HOUR), Err(SharedJwksError::BadTag));

        // A valid entry of another provider moved under this one's name.
        let idp2 = cache(SECRET, "https://other-idp.example");
        let e = idp2.encode(planted, now);
        assert_eq!(c.decode(&e, now, HOUR), Err(SharedJwksError::BadTag));

        // The fetch time pushed forward to keep an old entry alive.
        let old = c.encode(BODY, now - 2 * HOUR);
        let old_text = String::from_utf8(old).expect("utf-8");
        let mut old_lines: Vec<&str> = old_text.splitn(4, '\n').collect();
        let fresh_ms = unix_ms(now).to_string();
        old_lines[1] = &fresh_ms;
        assert_eq!(
            c.decode(old_lines.join("\n").as_bytes(), now, HOUR),
            Err(SharedJwksError::BadTag)
        );

        // Authentic but older than max_age, or dated far in the future.
        assert_eq!(
            c.decode(&c.encode(BODY, now - 2 * HOUR), now, HOUR),
            Err(SharedJwksError::Stale)
        );
        assert_eq!(
            c.decode(&c.encode(BODY, now + HOUR), now, HOUR),
            Err(SharedJwksError::Stale)
        );

        // Garbage.
        lines[0] = "v2";
        assert_eq!(
            c.decode(lines.join("\n").as_bytes(), now, HOUR),
            Err(SharedJwksError::Malformed)
        );
        assert_eq!(c.decode(b"", now, HOUR), Err(SharedJwksError::Malformed));
        assert_eq!(
            c.decode(b"v1\nnot-a-number\nab\n{}", now, HOUR),
            Err(SharedJwksError::Malformed)
        );
        assert!(c.decode(&good, now, HOUR).is_ok());
    }

    #[tokio::test]
    async fn publish_and_load_through_the_real_redis() {
        let mut b = [0u8; 8];
        getrandom::fill(&mut b).expect("random");
        let issuer = format!("https://idp-{}.example", hex::encode(b));
        let a = cache(SECRET, &issuer);
        let b = cache(SECRET, &issuer);
        match a.publish(BODY, Duration::from_secs(30)).await {
            Ok(()) => {}
            Err(e) => panic!("this test needs the real Redis at 127.0.0.1:6379: {e}"),
        }
        let got = b
            .load(Duration::from_secs(30))
            .await
            .expect("load")
            .expect("published");
        assert_eq!(got.body, BODY);
        // A replica with another secret sees the entry but refuses it.
        let c = cache("another-audit-signing-key-of-at-least-32-chars", &issuer);
        assert_eq!(
            c.load(Duration::from_secs(30)).await,
            Err(SharedJwksError::BadTag)
        );
    }
}
