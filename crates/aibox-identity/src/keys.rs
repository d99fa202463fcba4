//! Loading the keyrings that sign the principal header and CapTokens.
//!
//! Seed 000's troubleshooting table makes "a missing or wrong principal key"
//! and "a missing CapToken key" errors that name the cause and the fix. The
//! two keyrings differ only in who must share them, so one loader takes a
//! [`KeyringKind`] and words its errors for that keyring.

use aibox_core::keyring::{Keyring, KeyringError};

/// Which of the two token keyrings a key or an error belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyringKind {
    /// `AIBOX_PRINCIPAL_KEYS`: signs the `X-Aibox-Principal` header.
    Principal,
    /// `AIBOX_CAPTOKEN_KEYS`: signs per-turn CapTokens.
    CapToken,
    /// `SECRETS_MASTER_KEY`: wraps the vault's data keys.
    SecretsMaster,
}

impl KeyringKind {
    /// The environment variable that holds this keyring.
    pub fn env_var(self) -> &'static str {
        match self {
            Self::Principal => "AIBOX_PRINCIPAL_KEYS",
            Self::CapToken => "AIBOX_CAPTOKEN_KEYS",
            Self::SecretsMaster => "SECRETS_MASTER_KEY",
        }
    }

    /// The fix seed 000 gives when this keyring is missing or differs
    /// between the signer and a verifier.
    pub fn share_hint(self) -> &'static str {
        match self {
            Self::Principal => {
                "Verify AIBOX_PRINCIPAL_KEYS are shared between gateway and services"
            }
            Self::CapToken => "Verify AIBOX_CAPTOKEN_KEYS are shared by turn-aware services",
            Self::SecretsMaster => {
                "Set SECRETS_MASTER_KEY (aibox bootstrap writes one) and keep every version that still wraps a secret"
            }
        }
    }
}

impl std::fmt::Display for KeyringKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.env_var())
    }
}

/// Why a keyring could not be loaded. Never contains key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyringLoadError {
    /// The variable is unset or blank.
    #[error(
        "{kind} is missing or empty; fix: set it to comma-separated KEY_ID:BASE64URL_SECRET entries \
         (at least 32 random bytes each, newest first). {hint}",
        hint = kind.share_hint()
    )]
    Missing {
        /// Which keyring.
        kind: KeyringKind,
    },
    /// The value is not a valid keyring.
    #[error("{kind} is not a valid keyring: {source}. {hint}", hint = kind.share_hint())]
    Invalid {
        /// Which keyring.
        kind: KeyringKind,
        /// What is wrong with it.
        source: KeyringError,
    },
}

impl KeyringLoadError {
    /// The cause and the fix, for the logs (the same text as `Display`,
    /// which already names no secret).
    pub fn operator_hint(&self) -> String {
        self.to_string()
    }
}

/// Parses a keyring from the value of its environment variable (`None` when
/// the variable is unset), distinguishing "missing or empty" from "invalid".
pub fn load_keyring(kind: KeyringKind, value: Option<&str>) -> Result<Keyring, KeyringLoadError> {
    let value = value.map(str::trim).unwrap_or_default();
    if value.is_empty() {
        return Err(KeyringLoadError::Missing { kind });
    }
    Keyring::parse(value).map_err(|source| KeyringLoadError::Invalid { kind, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_invalid_are_distinguished_and_name_the_fix() {
        let e = load_keyring(KeyringKind::Principal, None).unwrap_err();
        assert_eq!(
            e,
            KeyringLoadError::Missing {
                kind: KeyringKind::Principal
            }
        );
        assert!(
            e.to_string()
                .contains("Verify AIBOX_PRINCIPAL_KEYS are shared between gateway and services")
        );
        let e = load_keyring(KeyringKind::CapToken, Some("  ")).unwrap_err();
        assert!(
            e.operator_hint()
                .contains("Verify AIBOX_CAPTOKEN_KEYS are shared by turn-aware services")
        );
        let e = load_keyring(KeyringKind::CapToken, Some("v1:c2hvcnQ")).unwrap_err();
        assert!(matches!(e, KeyringLoadError::Invalid { .. }));
        assert!(!e.to_string().contains("c2hvcnQ"));
        let ok = load_keyring(
            KeyringKind::Principal,
            Some("v1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"),
        )
        .unwrap();
        assert_eq!(ok.signing().id(), "v1");
    }
}
