//! Versioned keyrings: several keys, the first signs, all verify.
//!
//! `AIBOX_PRINCIPAL_KEYS`, `AIBOX_CAPTOKEN_KEYS` and `SECRETS_MASTER_KEY` hold
//! keyrings in one documented text format so that rotation is the same
//! operation everywhere: put a new entry in front, keep the old ones until
//! nothing signed by them needs verifying, then drop them.
//!
//! Format: comma-separated entries `KEY_ID:SECRET`, where `KEY_ID` matches
//! `[A-Za-z0-9._-]{1,64}` and `SECRET` is unpadded base64url of at least 32
//! bytes. Example: `v2:3q2-7w...,v1:AAEC...`. The first entry is the signing
//! key. Key ids must be unique.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// The smallest key, in bytes, that a keyring accepts.
pub const MIN_KEY_BYTES: usize = 32;

/// Why a keyring string was refused. Never contains key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyringError {
    /// The value was empty.
    #[error("the keyring is empty; it needs at least one entry KEY_ID:BASE64URL_SECRET")]
    Empty,
    /// An entry had no `:` separator.
    #[error("entry {index} has no ':'; each entry is KEY_ID:BASE64URL_SECRET")]
    NoSeparator {
        /// The 1-based position of the entry.
        index: usize,
    },
    /// A key id was malformed.
    #[error("entry {index} has a key id outside [A-Za-z0-9._-]{{1,64}}")]
    BadKeyId {
        /// The 1-based position of the entry.
        index: usize,
    },
    /// A key id appeared twice.
    #[error("key id '{key_id}' appears more than once")]
    DuplicateKeyId {
        /// The repeated id.
        key_id: String,
    },
    /// The secret was not base64url.
    #[error("the secret of key '{key_id}' is not unpadded base64url")]
    BadEncoding {
        /// The key's id.
        key_id: String,
    },
    /// The secret was too short.
    #[error("the secret of key '{key_id}' is {len} bytes; at least {MIN_KEY_BYTES} are required")]
    TooShort {
        /// The key's id.
        key_id: String,
        /// Its length in bytes.
        len: usize,
    },
}

/// One key of a keyring.
#[derive(Clone)]
pub struct KeyEntry {
    id: String,
    secret: Zeroizing<Vec<u8>>,
}

impl KeyEntry {
    /// Builds an entry, checking the id and length.
    pub fn new(id: impl Into<String>, secret: Vec<u8>) -> Result<Self, KeyringError> {
        let id = id.into();
        let secret = Zeroizing::new(secret);
        if !valid_key_id(&id) {
            return Err(KeyringError::BadKeyId { index: 1 });
        }
        if secret.len() < MIN_KEY_BYTES {
            return Err(KeyringError::TooShort {
                key_id: id,
                len: secret.len(),
            });
        }
        Ok(Self { id, secret })
    }

    /// The key id (`kid`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The key material.
    pub fn secret(&self) -> &[u8] {
        &self.secret
    }

    /// A fingerprint safe to print: the first 16 hex digits of SHA-256 over
    /// the key material.
    pub fn fingerprint(&self) -> String {
        let d = Sha256::digest(self.secret.as_slice());
        d.iter().take(8).map(|b| format!("{b:02x}")).collect()
    }
}

impl std::fmt::Debug for KeyEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyEntry")
            .field("id", &self.id)
            .field("fingerprint", &self.fingerprint())
            .finish()
    }
}

/// A versioned keyring.
#[derive(Clone, Debug)]
pub struct Keyring {
    entries: Vec<KeyEntry>,
}

fn valid_key_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

impl Keyring {
    /// Parses the documented text format.
    pub fn parse(text: &str) -> Result<Self, KeyringError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(KeyringError::Empty);
        }
        let mut entries: Vec<KeyEntry> = Vec::new();
        for (i, raw) in text.split(',').enumerate() {
            let index = i + 1;
            let raw = raw.trim();
            let (id, secret) = raw
                .split_once(':')
                .ok_or(KeyringError::NoSeparator { index })?;
            if !valid_key_id(id) {
                return Err(KeyringError::BadKeyId { index });
            }
            if entries.iter().any(|e| e.id == id) {
                return Err(KeyringError::DuplicateKeyId { key_id: id.into() });
            }
            let bytes = URL_SAFE_NO_PAD
                .decode(secret)
                .map_err(|_| KeyringError::BadEncoding { key_id: id.into() })?;
            entries.push(KeyEntry::new(id, bytes)?);
        }
        Ok(Self { entries })
    }

    /// Builds a keyring from entries, signing key first.
    pub fn from_entries(entries: Vec<KeyEntry>) -> Result<Self, KeyringError> {
        if entries.is_empty() {
            return Err(KeyringError::Empty);
        }
        for (i, e) in entries.iter().enumerate() {
            if entries[..i].iter().any(|p| p.id == e.id) {
                return Err(KeyringError::DuplicateKeyId {
                    key_id: e.id.clone(),
                });
            }
        }
        Ok(Self { entries })
    }

    /// The key that signs.
    pub fn signing(&self) -> &KeyEntry {
        // `parse` and `from_entries` refuse empty keyrings, so there is a first.
        &self.entries[0]
    }

    /// The key with id `kid`, for verification.
    pub fn get(&self, kid: &str) -> Option<&KeyEntry> {
        self.entries.iter().find(|e| e.id == kid)
    }

    /// All keys, signing key first.
    pub fn entries(&self) -> &[KeyEntry] {
        &self.entries
    }

    /// The text format, for writing to `.env`. Contains key material.
    pub fn to_env_value(&self) -> Zeroizing<String> {
        let parts: Vec<String> = self
            .entries
            .iter()
            .map(|e| format!("{}:{}", e.id, URL_SAFE_NO_PAD.encode(e.secret.as_slice())))
            .collect();
        Zeroizing::new(parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> String {
        URL_SAFE_NO_PAD.encode([n; 32])
    }

    #[test]
    fn first_entry_signs_and_all_verify() {
        let ring = Keyring::parse(&format!("v2:{},v1:{}", key(2), key(1))).unwrap();
        assert_eq!(ring.signing().id(), "v2");
        assert_eq!(ring.get("v1").unwrap().secret(), &[1u8; 32]);
        assert!(ring.get("v3").is_none());
        let again = Keyring::parse(&ring.to_env_value()).unwrap();
        assert_eq!(again.entries().len(), 2);
        assert_eq!(again.signing().fingerprint(), ring.signing().fingerprint());
    }

    #[test]
    fn refuses_malformed_keyrings_without_echoing_secrets() {
        let short = URL_SAFE_NO_PAD.encode([7u8; 16]);
        let cases = [
            ("", KeyringError::Empty),
            ("   ", KeyringError::Empty),
            ("nokey", KeyringError::NoSeparator { index: 1 }),
            (
                &format!("v/1:{}", key(1)),
                KeyringError::BadKeyId { index: 1 },
            ),
            (
                &format!("v1:{},v1:{}", key(1), key(2)),
                KeyringError::DuplicateKeyId {
                    key_id: "v1".into(),
                },
            ),
            (
                "v1:not base64!",
                KeyringError::BadEncoding {
                    key_id: "v1".into(),
                },
            ),
            (
                &format!("v1:{short}"),
                KeyringError::TooShort {
                    key_id: "v1".into(),
                    len: 16,
                },
            ),
        ];
        for (input, want) in cases {
            let err = Keyring::parse(input).unwrap_err();
            assert_eq!(err, want, "input {input:?}");
            assert!(!err.to_string().contains(&short));
        }
    }

    #[test]
    fn debug_shows_fingerprint_not_material() {
        let ring = Keyring::parse(&format!("v1:{}", key(9))).unwrap();
        let dbg = format!("{ring:?}");
        assert!(!dbg.contains(&key(9)));
        assert!(dbg.contains(&ring.signing().fingerprint()));
    }
}

/// The placeholder value that seed 000 §1 says the audit service rejects.
pub const AUDIT_KEY_PLACEHOLDER: &str = "aibox-audit-signing-key-change-me";

/// The shortest acceptable `AUDIT_SIGNING_KEY`, in characters.
pub const AUDIT_KEY_MIN_CHARS: usize = 32;

/// Why an `AUDIT_SIGNING_KEY` was refused. Never contains the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditKeyError {
    /// The documented placeholder is still in place.
    #[error(
        "AUDIT_SIGNING_KEY is the placeholder '{AUDIT_KEY_PLACEHOLDER}'; fix: replace it with a random value of at least {AUDIT_KEY_MIN_CHARS} characters (`aibox bootstrap` writes one, or `openssl rand -hex 32`), keeping old versions when rotating"
    )]
    Placeholder,
    /// The key is too short.
    #[error(
        "AUDIT_SIGNING_KEY is {len} characters long; at least {AUDIT_KEY_MIN_CHARS} are required; fix: set a random value such as the output of `openssl rand -hex 32`"
    )]
    TooShort {
        /// Its length in characters.
        len: usize,
    },
}

/// Checks an `AUDIT_SIGNING_KEY` value as seed 000 §1 requires.
pub fn check_audit_signing_key(value: &str) -> Result<(), AuditKeyError> {
    let v = value.trim();
    if v == AUDIT_KEY_PLACEHOLDER {
        return Err(AuditKeyError::Placeholder);
    }
    let len = v.chars().count();
    if len < AUDIT_KEY_MIN_CHARS {
        return Err(AuditKeyError::TooShort { len });
    }
    Ok(())
}

#[cfg(test)]
mod audit_key_tests {
    use super::*;

    #[test]
    fn placeholder_and_short_keys_are_refused() {
        assert_eq!(
            check_audit_signing_key(AUDIT_KEY_PLACEHOLDER),
            Err(AuditKeyError::Placeholder)
        );
        assert_eq!(
            check_audit_signing_key(" aibox-audit-signing-key-change-me\n"),
            Err(AuditKeyError::Placeholder)
        );
        assert_eq!(
            check_audit_signing_key("short-but-secret"),
            Err(AuditKeyError::TooShort { len: 16 })
        );
        assert!(
            !AuditKeyError::TooShort { len: 16 }
                .to_string()
                .contains("short-but-secret")
        );
        assert!(check_audit_signing_key(&"k".repeat(32)).is_ok());
    }
}
