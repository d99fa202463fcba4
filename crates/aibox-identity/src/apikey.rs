//! Gateway API keys: `aibox_<id>_<secret>`.
//!
//! The id (16 lowercase hex characters) is public: it names the key in logs,
//! audit rows and the admin API, and is the lookup key of the stored row. The
//! secret (32 random bytes, unpadded base64url) is shown once at creation and
//! stored only as `hex(SHA-256("aibox-apikey-v1\0" || secret))`. A plain
//! hash suffices because the secret has 256 bits of entropy (no dictionary to
//! attack), and the domain label keeps these hashes from being mistaken for
//! any other SHA-256 in the system. Verification compares in constant time.
//!
//! Because the base64url alphabet contains `_`, a key is parsed by position
//! (prefix, 16 hex, `_`, 43 base64url), never by splitting on `_`.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// The literal every key starts with.
pub const PREFIX: &str = "aibox_";
/// Hex characters of the public id.
pub const ID_CHARS: usize = 16;
/// Random bytes of the secret.
pub const SECRET_BYTES: usize = 32;
/// Base64url characters of the secret (32 bytes, unpadded).
pub const SECRET_CHARS: usize = 43;
/// The full length of a key.
pub const KEY_CHARS: usize = PREFIX.len() + ID_CHARS + 1 + SECRET_CHARS;
/// The domain label hashed in front of the secret.
pub const HASH_DOMAIN: &[u8] = b"aibox-apikey-v1\0";

/// Why a presented key was refused. Never contains the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ApiKeyError {
    /// The value does not have the `aibox_<16 hex>_<43 base64url>` shape.
    #[error("the API key is malformed")]
    Malformed,
    /// The system random number generator failed while generating a key.
    #[error("the system random number generator failed")]
    Random,
}

impl ApiKeyError {
    /// The cause and the fix, for the logs.
    pub fn operator_hint(&self) -> &'static str {
        match self {
            Self::Malformed => {
                "gateway API keys look like aibox_<16 hex>_<43 base64url>; the client sent \
                 something else (a truncated key, an upstream provider's key, or a JWT that is \
                 not a well-formed token)"
            }
            Self::Random => "the operating system's random number generator failed",
        }
    }
}

/// The public id of a key (16 lowercase hex characters).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ApiKeyId(String);

impl ApiKeyId {
    /// Validates an id taken from storage or an admin request.
    pub fn parse(s: &str) -> Result<Self, ApiKeyError> {
        if s.len() == ID_CHARS && s.bytes().all(is_lower_hex) {
            Ok(Self(s.to_owned()))
        } else {
            Err(ApiKeyError::Malformed)
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ApiKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The stored form of a key: lowercase hex SHA-256 of the domain-separated
/// secret. Not secret by itself, but it is all an attacker would need to
/// mount an offline search, so it is not printed by `Debug` either.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKeyHash(String);

impl ApiKeyHash {
    /// The hex text to store.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKeyHash(..)")
    }
}

/// The full key text, to print exactly once. `Debug`/`Display` redact it.
#[derive(Clone)]
pub struct ApiKeyPlain(Zeroizing<String>);

impl ApiKeyPlain {
    /// The key, to show the operator once.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKeyPlain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(aibox_core::secret::REDACTED)
    }
}

impl fmt::Display for ApiKeyPlain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(aibox_core::secret::REDACTED)
    }
}

/// A freshly generated key: the text for the user, and what to store.
#[derive(Debug, Clone)]
pub struct GeneratedApiKey {
    /// The full key, shown once.
    pub plain: ApiKeyPlain,
    /// The public id (the stored row's key).
    pub id: ApiKeyId,
    /// The hash to store.
    pub hash: ApiKeyHash,
}

/// A presented key, parsed: its public id and its secret.
pub struct ApiKey {
    id: ApiKeyId,
    secret: Zeroizing<[u8; SECRET_BYTES]>,
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKey")
            .field("id", &self.id)
            .field("secret", &aibox_core::secret::REDACTED)
            .finish()
    }
}

fn is_lower_hex(b: u8) -> bool {
    b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
}

fn is_b64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

fn hash_secret(secret: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(HASH_DOMAIN);
    h.update(secret);
    h.finalize().into()
}

impl ApiKey {
    /// Generates a new key.
    pub fn generate() -> Result<GeneratedApiKey, ApiKeyError> {
        let mut id_bytes = [0u8; ID_CHARS / 2];
        let mut secret = Zeroizing::new([0u8; SECRET_BYTES]);
        getrandom::fill(&mut id_bytes).map_err(|_| ApiKeyError::Random)?;
        getrandom::fill(secret.as_mut_slice()).map_err(|_| ApiKeyError::Random)?;
        let id = ApiKeyId(hex::encode(id_bytes));
        let mut plain = Zeroizing::new(String::with_capacity(KEY_CHARS));
        plain.push_str(PREFIX);
        plain.push_str(id.as_str());
        plain.push('_');
        URL_SAFE_NO_PAD.encode_string(secret.as_slice(), &mut plain);
        let hash = ApiKeyHash(hex::encode(hash_secret(secret.as_slice())));
        Ok(GeneratedApiKey {
            plain: ApiKeyPlain(plain),
            id,
            hash,
        })
    }

    /// Parses a presented key strictly: exact prefix and length, lowercase
    /// hex id, canonical unpadded base64url secret of exactly 32 bytes.
    pub fn parse(presented: &str) -> Result<Self, ApiKeyError> {
        let b = presented.as_bytes();
        if b.len() != KEY_CHARS || !presented.starts_with(PREFIX) {
            return Err(ApiKeyError::Malformed);
        }
        let id_end = PREFIX.len() + ID_CHARS;
        let id = &presented[PREFIX.len()..id_end];
        if !id.bytes().all(is_lower_hex) || b[id_end] != b'_' {
            return Err(ApiKeyError::Malformed);
        }
        let secret_text = &presented[id_end + 1..];
        if !secret_text.bytes().all(is_b64url) {
            return Err(ApiKeyError::Malformed);
        }
        // The engine refuses non-zero trailing bits, so each secret has one
        // spelling and the same key cannot be presented in two forms.
        let decoded = Zeroizing::new(
            URL_SAFE_NO_PAD
                .decode(secret_text)
                .map_err(|_| ApiKeyError::Malformed)?,
        );
        let mut secret = Zeroizing::new([0u8; SECRET_BYTES]);
        if decoded.len() != SECRET_BYTES {
            return Err(ApiKeyError::Malformed);
        }
        secret.copy_from_slice(&decoded);
        Ok(Self {
            id: ApiKeyId(id.to_owned()),
            secret,
        })
    }

    /// The public id, to look up the stored hash.
    pub fn id(&self) -> &ApiKeyId {
        &self.id
    }

    /// The hash of this key's secret.
    pub fn hash(&self) -> ApiKeyHash {
        ApiKeyHash(hex::encode(hash_secret(self.secret.as_slice())))
    }

    /// True when this key's secret matches `stored_hash` (hex, as produced
    /// by [`ApiKey::generate`]). The comparison is constant-time; a
    /// malformed stored hash never matches.
    pub fn verify(&self, stored_hash: &str) -> bool {
        verify(self.secret.as_slice(), stored_hash)
    }
}

/// True when `secret` (the 32 decoded bytes) hashes to `stored_hash`, in
/// constant time with respect to the secret and the hash.
pub fn verify(secret: &[u8], stored_hash: &str) -> bool {
    let mut stored = [0u8; 32];
    if hex::decode_to_slice(stored_hash, &mut stored).is_err() {
        return false;
    }
    let computed = hash_secret(secret);
    computed.ct_eq(&stored).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_verify() {
        let g = ApiKey::generate().unwrap();
        let text = g.plain.expose();
        assert_eq!(text.len(), KEY_CHARS);
        assert!(text.starts_with("aibox_"));
        let k = ApiKey::parse(text).unwrap();
        assert_eq!(k.id(), &g.id);
        assert!(k.verify(g.hash.as_str()));
        assert_eq!(k.hash(), g.hash);
        assert_eq!(g.hash.as_str().len(), 64);
        // The id in the key is the public id.
        assert_eq!(&text[6..22], g.id.as_str());
        assert!(ApiKeyId::parse(g.id.as_str()).is_ok());
    }

    #[test]
    fn hash_is_domain_separated_sha256_of_the_secret_bytes() {
        let secret = [7u8; 32];
        let mut h = Sha256::new();
        h.update(b"aibox-apikey-v1\0");
        h.update(secret);
        let want = hex::encode(h.finalize());
        assert!(verify(&secret, &want));
        assert_ne!(want, hex::encode(Sha256::digest(secret)));
        let text = format!("aibox_0123456789abcdef_{}", URL_SAFE_NO_PAD.encode(secret));
        let k = ApiKey::parse(&text).unwrap();
        assert_eq!(k.hash().as_str(), want);
    }

    #[test]
    fn other_keys_and_bad_hashes_do_not_verify() {
        let a = ApiKey::generate().unwrap();
        let b = ApiKey::generate().unwrap();
        let ka = ApiKey::parse(a.plain.expose()).unwrap();
        assert!(!ka.verify(b.hash.as_str()));
        for bad in [
            "",
            "zz",
            &"0".repeat(63),
            &"0".repeat(66),
            &a.hash.as_str().to_uppercase(),
        ] {
            // Uppercase hex decodes to the same bytes; everything else fails.
            let want = bad == a.hash.as_str().to_uppercase();
            assert_eq!(ka.verify(bad), want, "{bad:?}");
        }
    }

    #[test]
    fn parse_is_strict() {
        let good = format!(
            "aibox_0123456789abcdef_{}",
            URL_SAFE_NO_PAD.encode([1u8; 32])
        );
        assert!(ApiKey::parse(&good).is_ok());
        let secret = URL_SAFE_NO_PAD.encode([1u8; 32]);
        // The last character of 43 carries two unused bits; a non-zero
        // spelling of the same bytes must be refused.
        let mut non_canonical = good.clone();
        let last = non_canonical.pop().unwrap();
        let alt = match last {
            'E' => 'F',
            _ => 'B',
        };
        non_canonical.push(alt);
        let cases = [
            String::new(),
            "aibox_".into(),
            good.replace("aibox_", "AIBOX_"),
            good.replace("aibox_", "aibo_x"),
            format!("aibox_0123456789ABCDEF_{secret}"),
            format!("aibox_0123456789abcdeg_{secret}"),
            format!("aibox_0123456789abcde_{secret}A"),
            format!("aibox_0123456789abcdef-{secret}"),
            format!("aibox_0123456789abcdef_{secret}="),
            format!("aibox_0123456789abcdef_{secret}A"),
            format!("aibox_0123456789abcdef_{}", &secret[..42]),
            format!("aibox_0123456789abcdef_{}+", &secret[..42]),
            format!("aibox_0123456789abcdef_{}/", &secret[..42]),
            format!(" {good}"),
            format!("{good}\n"),
            good.replace('_', "é"),
            non_canonical,
            "sk-proj-abcdef".into(),
        ];
        for c in cases {
            assert_eq!(
                ApiKey::parse(&c).err(),
                Some(ApiKeyError::Malformed),
                "{c:?}"
            );
        }
    }

    #[test]
    fn debug_never_prints_secrets() {
        let g = ApiKey::generate().unwrap();
        let secret_part = &g.plain.expose()[23..];
        for s in [
            format!("{g:?}"),
            format!("{}", g.plain),
            format!("{:?}", ApiKey::parse(g.plain.expose()).unwrap()),
        ] {
            assert!(!s.contains(secret_part), "{s}");
            assert!(!s.contains(g.hash.as_str()), "{s}");
        }
        assert!(format!("{g:?}").contains(g.id.as_str()));
    }
}
