//! Ed25519 audit keys derived deterministically from `AUDIT_SIGNING_KEY`.
//!
//! Every tenant log has two keys, both derived from the operator's secret and
//! a key version, so nothing but the secret needs storing and every replica
//! derives the same keys:
//!
//! - the **log key** signs checkpoints; its note key name is the log's
//!   origin (`<prefix>/<tenant>`, see [`crate::checkpoint::origin_for_tenant`]),
//!   as the checkpoint specification recommends;
//! - the **envelope key** signs envelopes; its key name is
//!   `<origin>/envelope`.
//!
//! The two are distinct key pairs, so a signature made for one kind of note
//! can never be presented as the other, whatever the texts look like.
//!
//! Derivation of the 32-byte Ed25519 seed (RFC 5869 HKDF with SHA-256):
//!
//! ```text
//! seed = HKDF-SHA256(
//!     salt = "aibox audit ed25519 v1",
//!     ikm  = UTF-8 of AUDIT_SIGNING_KEY with surrounding white space trimmed,
//!     info = <purpose> || 0x0A || <version, decimal> || 0x0A || <key name>,
//!     L    = 32)
//! ```
//!
//! where `<purpose>` is `checkpoint` or `envelope`. The version is the
//! operator's key version: rotating means deriving with a new version (or a
//! new secret), which gives new keys with the same names and different key
//! ids, so verifiers can hold old and new verifier keys side by side. Third
//! parties receive the verifier key strings ([`TenantKeys::verifier_keys`]),
//! which standard signed-note tools accept.

use aibox_core::keyring::{AuditKeyError, check_audit_signing_key};
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::note::{NoteError, NoteSigner, NoteVerifier};

/// The HKDF salt, which is also the derivation's version label.
pub const DERIVATION_SALT: &[u8] = b"aibox audit ed25519 v1";

/// The suffix of an envelope key's name after the origin.
pub const ENVELOPE_KEY_SUFFIX: &str = "/envelope";

/// Why audit keys could not be derived. Never contains key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The secret is the placeholder or too short.
    #[error(transparent)]
    Secret(#[from] AuditKeyError),
    /// The origin cannot be a key name.
    #[error(transparent)]
    Name(#[from] NoteError),
    /// HKDF refused the output length; it always accepts 32 bytes, so this
    /// is never expected.
    #[error("HKDF could not derive a 32-byte seed")]
    Derivation,
}

/// What a derived key signs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyPurpose {
    /// Checkpoints of a tenant log.
    Checkpoint,
    /// Envelopes of a tenant log.
    Envelope,
}

impl KeyPurpose {
    /// The label that enters the derivation.
    pub fn label(self) -> &'static str {
        match self {
            Self::Checkpoint => "checkpoint",
            Self::Envelope => "envelope",
        }
    }

    /// The note key name of this purpose's key for a log origin.
    pub fn key_name(self, origin: &str) -> String {
        match self {
            Self::Checkpoint => origin.to_owned(),
            Self::Envelope => format!("{origin}{ENVELOPE_KEY_SUFFIX}"),
        }
    }
}

/// The validated `AUDIT_SIGNING_KEY` and its version, from which tenant keys
/// are derived.
#[derive(Clone)]
pub struct AuditKeyMaterial {
    secret: Zeroizing<Vec<u8>>,
    version: u32,
}

impl AuditKeyMaterial {
    /// Checks the secret (at least 32 characters, not the placeholder) and
    /// keeps it with its version.
    pub fn new(audit_signing_key: &str, version: u32) -> Result<Self, KeyError> {
        check_audit_signing_key(audit_signing_key)?;
        Ok(Self {
            secret: Zeroizing::new(audit_signing_key.trim().as_bytes().to_vec()),
            version,
        })
    }

    /// The key version.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The signer for `purpose` in the log of `origin`.
    pub fn signer(&self, purpose: KeyPurpose, origin: &str) -> Result<NoteSigner, KeyError> {
        let name = purpose.key_name(origin);
        let info = format!("{}\n{}\n{name}", purpose.label(), self.version);
        let hk = Hkdf::<Sha256>::new(Some(DERIVATION_SALT), &self.secret);
        let mut seed = Zeroizing::new([0u8; 32]);
        // 32 bytes is far below HKDF-SHA256's limit of 255 * 32, so expand
        // cannot fail; the error keeps this function free of panics.
        hk.expand(info.as_bytes(), seed.as_mut_slice())
            .map_err(|_| KeyError::Derivation)?;
        Ok(NoteSigner::from_seed(&name, &seed)?)
    }

    /// Both keys of the log of `origin`.
    pub fn tenant_keys(&self, origin: &str) -> Result<TenantKeys, KeyError> {
        Ok(TenantKeys {
            checkpoint: self.signer(KeyPurpose::Checkpoint, origin)?,
            envelope: self.signer(KeyPurpose::Envelope, origin)?,
        })
    }
}

impl std::fmt::Debug for AuditKeyMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditKeyMaterial")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// The two signing keys of one tenant log.
#[derive(Debug, Clone)]
pub struct TenantKeys {
    /// Signs checkpoints; named after the origin.
    pub checkpoint: NoteSigner,
    /// Signs envelopes; named `<origin>/envelope`.
    pub envelope: NoteSigner,
}

impl TenantKeys {
    /// The verifiers of both keys.
    pub fn verifiers(&self) -> (NoteVerifier, NoteVerifier) {
        (self.checkpoint.verifier(), self.envelope.verifier())
    }

    /// The verifier key strings (checkpoint, envelope) for third parties.
    pub fn verifier_keys(&self) -> (String, String) {
        (
            self.checkpoint.verifier().to_string(),
            self.envelope.verifier().to_string(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::note;
    use aibox_core::keyring::AUDIT_KEY_PLACEHOLDER;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn derivation_is_deterministic_and_separated() {
        let m = AuditKeyMaterial::new(SECRET, 1).unwrap();
        let a = m.tenant_keys("aibox.local/audit/acme").unwrap();
        let again = AuditKeyMaterial::new(&format!(" {SECRET}\n"), 1)
            .unwrap()
            .tenant_keys("aibox.local/audit/acme")
            .unwrap();
        assert_eq!(a.verifier_keys(), again.verifier_keys());
        assert_eq!(a.checkpoint.name(), "aibox.local/audit/acme");
        assert_eq!(a.envelope.name(), "aibox.local/audit/acme/envelope");

        let keys = |m: &AuditKeyMaterial, origin: &str| {
            let k = m.tenant_keys(origin).unwrap().verifiers();
            (k.0.public_key(), k.1.public_key())
        };
        let base = keys(&m, "aibox.local/audit/acme");
        assert_ne!(base.0, base.1, "purposes share a key");
        assert_ne!(
            base,
            keys(&m, "aibox.local/audit/other"),
            "tenants share keys"
        );
        let v2 = AuditKeyMaterial::new(SECRET, 2).unwrap();
        assert_ne!(
            base,
            keys(&v2, "aibox.local/audit/acme"),
            "versions share keys"
        );
        let other = AuditKeyMaterial::new(&SECRET.replace('0', "1"), 1).unwrap();
        assert_ne!(
            base,
            keys(&other, "aibox.local/audit/acme"),
            "secrets share keys"
        );
    }

    #[test]
    fn derivation_matches_its_documented_definition() {
        // Recomputes the documented HKDF directly, pinning the format.
        let hk = Hkdf::<Sha256>::new(Some(b"aibox audit ed25519 v1"), SECRET.as_bytes());
        let mut seed = [0u8; 32];
        hk.expand(b"checkpoint\n7\naibox.local/audit/acme", &mut seed)
            .unwrap();
        let want = NoteSigner::from_seed("aibox.local/audit/acme", &seed).unwrap();
        let got = AuditKeyMaterial::new(SECRET, 7)
            .unwrap()
            .signer(KeyPurpose::Checkpoint, "aibox.local/audit/acme")
            .unwrap();
        assert_eq!(got.verifier(), want.verifier());
    }

    #[test]
    fn exported_verifier_keys_verify_signed_notes() {
        let keys = AuditKeyMaterial::new(SECRET, 1)
            .unwrap()
            .tenant_keys("aibox.local/audit/acme")
            .unwrap();
        let (cp, env) = keys.verifier_keys();
        let cp = NoteVerifier::from_key_string(&cp).unwrap();
        let env = NoteVerifier::from_key_string(&env).unwrap();
        let signed = note::sign("x\n", &[&keys.checkpoint]).unwrap();
        assert!(note::open(signed.as_bytes(), &[cp]).is_ok());
        assert!(note::open(signed.as_bytes(), &[env]).is_err());
    }

    #[test]
    fn weak_secrets_and_bad_origins_are_refused() {
        assert!(matches!(
            AuditKeyMaterial::new(AUDIT_KEY_PLACEHOLDER, 1),
            Err(KeyError::Secret(AuditKeyError::Placeholder))
        ));
        assert!(matches!(
            AuditKeyMaterial::new("short", 1),
            Err(KeyError::Secret(AuditKeyError::TooShort { .. }))
        ));
        let m = AuditKeyMaterial::new(SECRET, 1).unwrap();
        assert!(m.tenant_keys("has space").is_err());
        assert!(m.tenant_keys("").is_err());
        let dbg = format!("{m:?}");
        assert!(!dbg.contains(SECRET), "{dbg}");
    }
}
