//! Pure core of the secrets vault: envelope encryption, no IO.
//!
//! Every secret gets its own random 256-bit data key. The value is sealed
//! with XChaCha20-Poly1305 under that data key, and the data key is sealed
//! (wrapped) under a key-encryption key derived with HKDF-SHA256 from the
//! current entry of the `SECRETS_MASTER_KEY` keyring. Both seals carry the
//! secret's tenant, user and name as associated data, and the wrap also
//! carries the master key id, so a ciphertext copied to another user's row,
//! renamed, or relabelled with another key version fails to open instead of
//! decrypting into the wrong hands.
//!
//! Rotation re-wraps only the 32-byte data keys ([`rewrap`]); the values are
//! never decrypted for it, so a rotation cannot corrupt a value, and a row is
//! always openable under exactly the key version it names.
//!
//! Invariant: nothing here formats a value or a key into an error or a
//! `Debug` string. [`SealedSecret`] holds only ciphertext.

use aibox_core::keyring::{KeyEntry, Keyring};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

/// The longest secret name.
pub const MAX_NAME_CHARS: usize = 128;
/// The largest secret value, in bytes.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
const KEY_LEN: usize = 32;
const FORMAT: &[u8] = b"aibox-vault/v1";
const KEK_INFO: &[u8] = b"aibox-vault/v1/kek";

/// Vault errors. None of them carries a value or key material.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VaultError {
    /// The name is not a valid secret name.
    #[error(
        "invalid secret name: {0}; fix: use 1-128 characters from A-Z a-z 0-9 . _ -, starting with a letter or digit"
    )]
    BadName(String),
    /// The value is too large.
    #[error("the secret value has {0} bytes, more than the vault's limit of 65536")]
    TooLarge(usize),
    /// The row names a master key version that is not in the keyring.
    #[error(
        "the secret is sealed under SECRETS_MASTER_KEY version {kid}, which is not in the keyring; fix: put that version back into SECRETS_MASTER_KEY (after a rotation, keep old versions until `aibox keys rotate secrets-master` has finished)"
    )]
    UnknownMasterKey {
        /// The missing version.
        kid: String,
    },
    /// The data key did not unwrap: wrong master key bytes for that
    /// version, or a row that was moved, relabelled or altered.
    #[error(
        "the secret's data key does not open under SECRETS_MASTER_KEY version {kid}: either that version's value is wrong, or the stored row was altered or moved to another tenant, user or name; fix: restore the right SECRETS_MASTER_KEY, or restore the row from a backup"
    )]
    Unwrap {
        /// The version it was tried with.
        kid: String,
    },
    /// The value did not decrypt under its own data key.
    #[error(
        "the secret's ciphertext was altered or moved to another tenant, user or name; fix: restore the row from a backup, or store the secret again"
    )]
    Tampered,
    /// A stored field has the wrong length.
    #[error("the stored secret is malformed ({0}); fix: restore the row from a backup")]
    Malformed(&'static str),
    /// The operating system's random generator failed.
    #[error("the OS random generator failed")]
    Random,
}

/// Who owns a secret and what it is called: bound into every seal.
#[derive(Debug, Clone, Copy)]
pub struct Binding<'a> {
    /// The tenant.
    pub tenant: &'a str,
    /// The user within the tenant.
    pub user: &'a str,
    /// The secret's name.
    pub name: &'a str,
}

impl Binding<'_> {
    /// The associated data: a format tag, then each field length-prefixed,
    /// so that no two different bindings encode to the same bytes.
    fn aad(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            FORMAT.len() + 12 + self.tenant.len() + self.user.len() + self.name.len(),
        );
        out.extend_from_slice(FORMAT);
        for field in [self.tenant, self.user, self.name] {
            out.extend_from_slice(&u32::try_from(field.len()).unwrap_or(u32::MAX).to_be_bytes());
            out.extend_from_slice(field.as_bytes());
        }
        out
    }

    fn wrap_aad(&self, kid: &str) -> Vec<u8> {
        let mut out = self.aad();
        out.extend_from_slice(&u32::try_from(kid.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(kid.as_bytes());
        out
    }
}

/// A sealed secret as stored: only ciphertext and the master key version.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedSecret {
    /// The `SECRETS_MASTER_KEY` version that wraps the data key.
    pub master_kid: String,
    /// Nonce and sealed data key (24 + 32 + 16 bytes).
    pub wrapped_key: Vec<u8>,
    /// Nonce and sealed value.
    pub ciphertext: Vec<u8>,
}

impl std::fmt::Debug for SealedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedSecret")
            .field("master_kid", &self.master_kid)
            .field("ciphertext_len", &self.ciphertext.len())
            .finish_non_exhaustive()
    }
}

/// Checks a secret name: it is used as a URL path segment, an audit field
/// and a registry reference, so it is kept to a plain, printable alphabet.
pub fn validate_name(name: &str) -> Result<(), VaultError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_CHARS
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        let shown: String = name.chars().take(40).filter(|c| !c.is_control()).collect();
        Err(VaultError::BadName(format!("{shown:?}")))
    }
}

fn kek(entry: &KeyEntry) -> Zeroizing<[u8; KEY_LEN]> {
    let hk = Hkdf::<Sha256>::new(Some(FORMAT), entry.secret());
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    // A 32-byte output is far below HKDF-SHA256's limit, so expand cannot fail.
    let _ = hk.expand(KEK_INFO, out.as_mut());
    out
}

fn random<const N: usize>() -> Result<Zeroizing<[u8; N]>, VaultError> {
    let mut out = Zeroizing::new([0u8; N]);
    getrandom::fill(out.as_mut()).map_err(|_| VaultError::Random)?;
    Ok(out)
}

fn seal_with(key: &[u8; KEY_LEN], plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, VaultError> {
    let cipher = XChaCha20Poly1305::new(key.into());
    let nonce = random::<NONCE_LEN>()?;
    let ct = cipher
        .encrypt(
            XNonce::from_slice(nonce.as_ref()),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|_| VaultError::Malformed("encryption failed"))?;
    let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
    out.extend_from_slice(nonce.as_ref());
    out.extend_from_slice(&ct);
    Ok(out)
}

fn open_with(key: &[u8; KEY_LEN], sealed: &[u8], aad: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    if sealed.len() < NONCE_LEN + TAG_LEN {
        return None;
    }
    let (nonce, ct) = sealed.split_at(NONCE_LEN);
    let cipher = XChaCha20Poly1305::new(key.into());
    cipher
        .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad })
        .ok()
        .map(Zeroizing::new)
}

fn unwrap_key(
    master: &Keyring,
    binding: &Binding<'_>,
    sealed: &SealedSecret,
) -> Result<Zeroizing<[u8; KEY_LEN]>, VaultError> {
    let entry = master
        .get(&sealed.master_kid)
        .ok_or_else(|| VaultError::UnknownMasterKey {
            kid: sealed.master_kid.clone(),
        })?;
    if sealed.wrapped_key.len() != NONCE_LEN + KEY_LEN + TAG_LEN {
        return Err(VaultError::Malformed("wrapped data key length"));
    }
    let dek = open_with(
        &kek(entry),
        &sealed.wrapped_key,
        &binding.wrap_aad(&sealed.master_kid),
    )
    .ok_or_else(|| VaultError::Unwrap {
        kid: sealed.master_kid.clone(),
    })?;
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    if dek.len() != KEY_LEN {
        return Err(VaultError::Malformed("data key length"));
    }
    out.copy_from_slice(&dek);
    Ok(out)
}

fn wrap_key(
    master: &Keyring,
    binding: &Binding<'_>,
    dek: &[u8; KEY_LEN],
) -> Result<(String, Vec<u8>), VaultError> {
    let entry = master.signing();
    let kid = entry.id().to_owned();
    let wrapped = seal_with(&kek(entry), dek, &binding.wrap_aad(&kid))?;
    Ok((kid, wrapped))
}

/// Seals `value` for `binding` under a fresh data key wrapped by the
/// keyring's current (first) version.
pub fn seal(
    master: &Keyring,
    binding: &Binding<'_>,
    value: &[u8],
) -> Result<SealedSecret, VaultError> {
    validate_name(binding.name)?;
    if value.len() > MAX_VALUE_BYTES {
        return Err(VaultError::TooLarge(value.len()));
    }
    let dek = random::<KEY_LEN>()?;
    let ciphertext = seal_with(&dek, value, &binding.aad())?;
    let (master_kid, wrapped_key) = wrap_key(master, binding, &dek)?;
    Ok(SealedSecret {
        master_kid,
        wrapped_key,
        ciphertext,
    })
}

/// Opens a sealed secret. The result zeroizes itself when dropped.
pub fn open(
    master: &Keyring,
    binding: &Binding<'_>,
    sealed: &SealedSecret,
) -> Result<Zeroizing<Vec<u8>>, VaultError> {
    let dek = unwrap_key(master, binding, sealed)?;
    open_with(&dek, &sealed.ciphertext, &binding.aad()).ok_or(VaultError::Tampered)
}

/// Re-wraps the data key under the keyring's current version, leaving the
/// value's ciphertext untouched. `None` when it already is.
pub fn rewrap(
    master: &Keyring,
    binding: &Binding<'_>,
    sealed: &SealedSecret,
) -> Result<Option<SealedSecret>, VaultError> {
    if sealed.master_kid == master.signing().id() {
        return Ok(None);
    }
    let dek = unwrap_key(master, binding, sealed)?;
    let (master_kid, wrapped_key) = wrap_key(master, binding, &dek)?;
    Ok(Some(SealedSecret {
        master_kid,
        wrapped_key,
        ciphertext: sealed.ciphertext.clone(),
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn ring(entries: &[(&str, u8)]) -> Keyring {
        Keyring::from_entries(
            entries
                .iter()
                .map(|(id, b)| KeyEntry::new(*id, vec![*b; 32]).unwrap())
                .collect(),
        )
        .unwrap()
    }

    fn b<'a>(tenant: &'a str, user: &'a str, name: &'a str) -> Binding<'a> {
        Binding { tenant, user, name }
    }

    #[test]
    fn round_trip() {
        let k = ring(&[("v1", 1)]);
        let s = seal(&k, &b("acme", "alice", "github-token"), b"ghp_value").unwrap();
        assert_eq!(s.master_kid, "v1");
        assert!(!s.ciphertext.windows(9).any(|w| w == b"ghp_value"));
        let v = open(&k, &b("acme", "alice", "github-token"), &s).unwrap();
        assert_eq!(v.as_slice(), b"ghp_value");
    }

    #[test]
    fn each_seal_uses_a_fresh_data_key_and_nonce() {
        let k = ring(&[("v1", 1)]);
        let x = seal(&k, &b("t", "u", "n"), b"same").unwrap();
        let y = seal(&k, &b("t", "u", "n"), b"same").unwrap();
        assert_ne!(x.ciphertext, y.ciphertext);
        assert_ne!(x.wrapped_key, y.wrapped_key);
    }

    #[test]
    fn moved_rows_do_not_open() {
        let k = ring(&[("v1", 1)]);
        let s = seal(&k, &b("acme", "alice", "tok"), b"value").unwrap();
        for other in [
            b("acme", "bob", "tok"),
            b("acme", "alice", "tok2"),
            b("other", "alice", "tok"),
            // Length prefixes keep shifted boundaries apart.
            b("acmea", "lice", "tok"),
        ] {
            assert_eq!(
                open(&k, &other, &s).unwrap_err(),
                VaultError::Unwrap { kid: "v1".into() }
            );
        }
    }

    #[test]
    fn a_ciphertext_swapped_between_rows_is_tampered() {
        // Wrapped key of one row with the ciphertext of another row of the
        // same owner and name: the data key unwraps but the value does not open.
        let k = ring(&[("v1", 1)]);
        let x = seal(&k, &b("t", "u", "n"), b"one").unwrap();
        let y = seal(&k, &b("t", "u", "n"), b"two").unwrap();
        let mixed = SealedSecret {
            ciphertext: y.ciphertext,
            ..x
        };
        assert_eq!(
            open(&k, &b("t", "u", "n"), &mixed).unwrap_err(),
            VaultError::Tampered
        );
    }

    #[test]
    fn flipped_bits_are_detected() {
        let k = ring(&[("v1", 1)]);
        let s = seal(&k, &b("t", "u", "n"), b"value").unwrap();
        for i in 0..s.ciphertext.len() {
            let mut t = s.clone();
            t.ciphertext[i] ^= 1;
            assert_eq!(
                open(&k, &b("t", "u", "n"), &t).unwrap_err(),
                VaultError::Tampered
            );
        }
        for i in 0..s.wrapped_key.len() {
            let mut t = s.clone();
            t.wrapped_key[i] ^= 0x80;
            assert!(matches!(
                open(&k, &b("t", "u", "n"), &t).unwrap_err(),
                VaultError::Unwrap { .. }
            ));
        }
    }

    #[test]
    fn wrong_master_bytes_and_missing_versions_are_named() {
        let s = seal(&ring(&[("v1", 1)]), &b("t", "u", "n"), b"value").unwrap();
        assert_eq!(
            open(&ring(&[("v1", 2)]), &b("t", "u", "n"), &s).unwrap_err(),
            VaultError::Unwrap { kid: "v1".into() }
        );
        let e = open(&ring(&[("v2", 1)]), &b("t", "u", "n"), &s).unwrap_err();
        assert_eq!(e, VaultError::UnknownMasterKey { kid: "v1".into() });
        assert!(e.to_string().contains("SECRETS_MASTER_KEY"));
    }

    #[test]
    fn relabelling_the_key_version_fails() {
        // Same bytes under two ids: the wrap binds the id, so a row relabelled
        // from v1 to v2 does not open even though the key bytes match.
        let k = ring(&[("v2", 1), ("v1", 1)]);
        let mut s = seal(&ring(&[("v1", 1)]), &b("t", "u", "n"), b"value").unwrap();
        s.master_kid = "v2".into();
        assert!(matches!(
            open(&k, &b("t", "u", "n"), &s).unwrap_err(),
            VaultError::Unwrap { .. }
        ));
    }

    #[test]
    fn rewrap_moves_to_the_new_version_and_keeps_the_value() {
        let old = ring(&[("v1", 1)]);
        let s = seal(&old, &b("t", "u", "n"), b"value").unwrap();
        let new = ring(&[("v2", 9), ("v1", 1)]);
        let r = rewrap(&new, &b("t", "u", "n"), &s).unwrap().unwrap();
        assert_eq!(r.master_kid, "v2");
        assert_eq!(r.ciphertext, s.ciphertext);
        assert_eq!(
            open(&ring(&[("v2", 9)]), &b("t", "u", "n"), &r)
                .unwrap()
                .as_slice(),
            b"value"
        );
        assert!(rewrap(&new, &b("t", "u", "n"), &r).unwrap().is_none());
    }

    #[test]
    fn names_are_checked() {
        for bad in ["", "../x", "a b", "-lead", "x/y", "é", &"a".repeat(129)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        for good in ["a", "github-token", "OPENAI_API_KEY", "db.password", "9"] {
            validate_name(good).unwrap();
        }
        let k = ring(&[("v1", 1)]);
        assert!(matches!(
            seal(&k, &b("t", "u", "../etc"), b"v"),
            Err(VaultError::BadName(_))
        ));
        assert_eq!(
            seal(&k, &b("t", "u", "n"), &vec![0; MAX_VALUE_BYTES + 1]).unwrap_err(),
            VaultError::TooLarge(MAX_VALUE_BYTES + 1)
        );
    }

    #[test]
    fn debug_shows_no_bytes() {
        let k = ring(&[("v1", 1)]);
        let s = seal(&k, &b("t", "u", "n"), b"value").unwrap();
        let d = format!("{s:?}");
        assert!(d.contains("v1") && !d.contains("ciphertext:"));
    }
}
