//! C2SP signed notes (<https://c2sp.org/signed-note>) with Ed25519, compatible
//! with `golang.org/x/mod/sumdb/note`.
//!
//! A signed note is:
//!
//! ```text
//! <text, one or more lines, each ending in "\n">
//! <blank line>
//! — <key name> <base64(key id (4 bytes, big-endian) || Ed25519 signature (64 bytes))>
//! ... more signature lines ...
//! ```
//!
//! The signature line starts with U+2014 (em dash, bytes `E2 80 94`) and one
//! space. Everything is UTF-8 with no control character other than `\n`.
//! The signed message is the text including its final newline, excluding the
//! separating blank line; the text is separated from the signatures by the
//! *last* blank line of the note. Base64 is the standard, padded alphabet of
//! RFC 4648 §4.
//!
//! Keys:
//!
//! - a key name is non-empty UTF-8 without Unicode white space or `+`;
//! - key id = the first 4 bytes, read big-endian, of
//!   `SHA-256(key name || 0x0A || 0x01 || 32-byte Ed25519 public key)`;
//! - a verifier key string is `<name>+<8 hex digits key id>+<base64(0x01 ||
//!   public key)>`;
//! - a signer key string is `PRIVATE+KEY+<name>+<8 hex digits key
//!   id>+<base64(0x01 || 32-byte Ed25519 seed)>`.
//!
//! Opening a note (as Go's `note.Open`): signatures from keys the caller did
//! not supply (by name and key id) are ignored; a signature from a supplied
//! key must verify or the whole note is refused; repeated signatures of one
//! key count once; at least one supplied key must have signed; more than 100
//! signature lines make the note malformed. Verification is strict RFC 8032
//! (`verify_strict`: canonical encodings, no small-order keys), so it never
//! accepts a signature Go would refuse.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// The C2SP signature type byte of Ed25519.
pub const ALG_ED25519: u8 = 0x01;

/// The most signature lines a note may carry, as in Go's `note.Open`.
pub const MAX_SIGNATURES: usize = 100;

/// The prefix of every signature line: em dash and a space.
pub const SIGNATURE_PREFIX: &str = "\u{2014} ";

/// The prefix of a signer key string.
const PRIVATE_KEY_PREFIX: &str = "PRIVATE+KEY+";

/// Why a key or a note was refused. Never contains key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    /// A key name is empty, has white space, `+` or a control character.
    #[error("invalid key name {0:?}: it must be non-empty without white space or '+'")]
    InvalidKeyName(String),
    /// A verifier key string is malformed.
    #[error(
        "malformed verifier key; the format is <name>+<hex key id>+<base64(0x01 || public key)>"
    )]
    MalformedVerifierKey,
    /// A signer key string is malformed.
    #[error(
        "malformed signer key; the format is PRIVATE+KEY+<name>+<hex key id>+<base64(0x01 || seed)>"
    )]
    MalformedSignerKey,
    /// A key string names an algorithm other than Ed25519.
    #[error("unsupported signature algorithm 0x{0:02x}; only Ed25519 (0x01) is supported")]
    UnsupportedAlgorithm(u8),
    /// A key string's key id does not match its name and key.
    #[error("the key id does not match the key name and public key")]
    KeyIdMismatch,
    /// A public key is not a usable Ed25519 key.
    #[error("the public key is not a valid Ed25519 key")]
    InvalidPublicKey,
    /// The text to sign is not a valid note text.
    #[error(
        "invalid note text: it must be non-empty, end in a newline and contain no control character other than newline"
    )]
    InvalidText,
    /// The note is not a syntactically valid signed note.
    #[error("malformed note: {0}")]
    Malformed(&'static str),
    /// Two supplied verifiers share a key name and key id.
    #[error("ambiguous key {name}+{key_id:08x}: more than one verifier has it")]
    AmbiguousKey {
        /// The key name.
        name: String,
        /// The key id.
        key_id: u32,
    },
    /// A signature of a supplied key did not verify.
    #[error("invalid signature for key {name}+{key_id:08x}")]
    InvalidSignature {
        /// The key name.
        name: String,
        /// The key id.
        key_id: u32,
    },
    /// No supplied key signed the note.
    #[error("the note has no signature from a known key")]
    NoKnownSignature,
}

/// Whether `name` may be a key name: non-empty, no Unicode white space, no
/// `+`. Control characters are refused too, since a note cannot carry them.
pub fn valid_key_name(name: &str) -> bool {
    !name.is_empty()
        && !name
            .chars()
            .any(|c| c.is_whitespace() || c == '+' || c.is_control())
}

fn check_key_name(name: &str) -> Result<(), NoteError> {
    if valid_key_name(name) {
        Ok(())
    } else {
        Err(NoteError::InvalidKeyName(name.to_owned()))
    }
}

/// The key id of an Ed25519 key: the first 4 bytes, big-endian, of
/// `SHA-256(name || 0x0A || 0x01 || public key)`.
pub fn key_id(name: &str, public_key: &[u8; 32]) -> u32 {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update([ALG_ED25519]);
    h.update(public_key);
    let d = h.finalize();
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

/// Parses exactly 8 hex digits, as Go's `strconv.ParseUint(s, 16, 32)` with a
/// length check does.
fn parse_key_id(s: &str) -> Option<u32> {
    if s.len() != 8 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(s, 16).ok()
}

/// A key that signs notes.
#[derive(Clone)]
pub struct NoteSigner {
    name: String,
    key_id: u32,
    key: SigningKey,
}

impl NoteSigner {
    /// A signer named `name` with the Ed25519 key of `seed`.
    pub fn from_seed(name: &str, seed: &[u8; 32]) -> Result<Self, NoteError> {
        check_key_name(name)?;
        let key = SigningKey::from_bytes(seed);
        let key_id = key_id(name, key.verifying_key().as_bytes());
        Ok(Self {
            name: name.to_owned(),
            key_id,
            key,
        })
    }

    /// Parses a signer key string `PRIVATE+KEY+<name>+<hex id>+<base64>`.
    pub fn from_key_string(skey: &str) -> Result<Self, NoteError> {
        let rest = skey
            .strip_prefix(PRIVATE_KEY_PREFIX)
            .ok_or(NoteError::MalformedSignerKey)?;
        let (name, rest) = rest.split_once('+').ok_or(NoteError::MalformedSignerKey)?;
        let (id, key64) = rest.split_once('+').ok_or(NoteError::MalformedSignerKey)?;
        let id = parse_key_id(id).ok_or(NoteError::MalformedSignerKey)?;
        if !valid_key_name(name) {
            return Err(NoteError::MalformedSignerKey);
        }
        let key = Zeroizing::new(
            STANDARD
                .decode(key64)
                .map_err(|_| NoteError::MalformedSignerKey)?,
        );
        let (&alg, seed) = key.split_first().ok_or(NoteError::MalformedSignerKey)?;
        if alg != ALG_ED25519 {
            return Err(NoteError::UnsupportedAlgorithm(alg));
        }
        let seed: Zeroizing<[u8; 32]> =
            Zeroizing::new(seed.try_into().map_err(|_| NoteError::MalformedSignerKey)?);
        let signer = Self::from_seed(name, &seed)?;
        if signer.key_id != id {
            return Err(NoteError::KeyIdMismatch);
        }
        Ok(signer)
    }

    /// The signer key string. It contains the private key.
    pub fn to_key_string(&self) -> Zeroizing<String> {
        let mut key = Zeroizing::new(Vec::with_capacity(33));
        key.push(ALG_ED25519);
        key.extend_from_slice(self.key.as_bytes());
        Zeroizing::new(format!(
            "{PRIVATE_KEY_PREFIX}{}+{:08x}+{}",
            self.name,
            self.key_id,
            STANDARD.encode(key.as_slice())
        ))
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key id.
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// The matching verifier.
    pub fn verifier(&self) -> NoteVerifier {
        NoteVerifier {
            name: self.name.clone(),
            key_id: self.key_id,
            key: self.key.verifying_key(),
        }
    }

    /// The signature line for `text`, without checking the text.
    fn signature_line(&self, text: &str) -> String {
        let sig = self.key.sign(text.as_bytes());
        let mut blob = Vec::with_capacity(68);
        blob.extend_from_slice(&self.key_id.to_be_bytes());
        blob.extend_from_slice(&sig.to_bytes());
        format!(
            "{SIGNATURE_PREFIX}{} {}\n",
            self.name,
            STANDARD.encode(blob)
        )
    }
}

impl std::fmt::Debug for NoteSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The seed never appears; the verifier key identifies the signer.
        f.debug_struct("NoteSigner")
            .field("verifier", &self.verifier().to_string())
            .finish()
    }
}

/// A key that verifies notes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoteVerifier {
    name: String,
    key_id: u32,
    key: VerifyingKey,
}

impl NoteVerifier {
    /// A verifier named `name` for an Ed25519 public key.
    pub fn from_public_key(name: &str, public_key: &[u8; 32]) -> Result<Self, NoteError> {
        check_key_name(name)?;
        let key = VerifyingKey::from_bytes(public_key).map_err(|_| NoteError::InvalidPublicKey)?;
        if key.is_weak() {
            return Err(NoteError::InvalidPublicKey);
        }
        Ok(Self {
            name: name.to_owned(),
            key_id: key_id(name, public_key),
            key,
        })
    }

    /// Parses a verifier key string `<name>+<hex id>+<base64(0x01 || key)>`.
    pub fn from_key_string(vkey: &str) -> Result<Self, NoteError> {
        let (name, rest) = vkey
            .split_once('+')
            .ok_or(NoteError::MalformedVerifierKey)?;
        let (id, key64) = rest
            .split_once('+')
            .ok_or(NoteError::MalformedVerifierKey)?;
        let id = parse_key_id(id).ok_or(NoteError::MalformedVerifierKey)?;
        if !valid_key_name(name) {
            return Err(NoteError::MalformedVerifierKey);
        }
        let key = STANDARD
            .decode(key64)
            .map_err(|_| NoteError::MalformedVerifierKey)?;
        let (&alg, public) = key.split_first().ok_or(NoteError::MalformedVerifierKey)?;
        if alg != ALG_ED25519 {
            return Err(NoteError::UnsupportedAlgorithm(alg));
        }
        let public: &[u8; 32] = public
            .try_into()
            .map_err(|_| NoteError::MalformedVerifierKey)?;
        if key_id(name, public) != id {
            return Err(NoteError::KeyIdMismatch);
        }
        Self::from_public_key(name, public)
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key id.
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// The 32-byte Ed25519 public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    fn verify(&self, text: &[u8], sig: &[u8]) -> bool {
        let Ok(sig) = ed25519_dalek::Signature::from_slice(sig) else {
            return false;
        };
        self.key.verify_strict(text, &sig).is_ok()
    }
}

impl std::fmt::Display for NoteVerifier {
    /// The verifier key string.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut key = Vec::with_capacity(33);
        key.push(ALG_ED25519);
        key.extend_from_slice(self.key.as_bytes());
        write!(
            f,
            "{}+{:08x}+{}",
            self.name,
            self.key_id,
            STANDARD.encode(key)
        )
    }
}

impl std::str::FromStr for NoteVerifier {
    type Err = NoteError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_key_string(s)
    }
}

/// One signature line of an opened note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteSignature {
    /// The key name.
    pub name: String,
    /// The key id.
    pub key_id: u32,
    /// The base64 of key id and signature, as on the line.
    pub base64: String,
}

/// A note whose signatures were checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenedNote {
    /// The text, including its final newline.
    pub text: String,
    /// Signatures from supplied keys, all verified, one per key.
    pub verified: Vec<NoteSignature>,
    /// Signatures from keys that were not supplied, unchecked, without
    /// repeated identical lines.
    pub unverified: Vec<NoteSignature>,
}

/// Whether `text` may be a note text: non-empty, ending in a newline, with no
/// control character but newline.
fn valid_text(text: &str) -> bool {
    text.ends_with('\n') && !text.chars().any(|c| c < ' ' && c != '\n')
}

/// Signs `text` with every signer and returns the signed note.
pub fn sign(text: &str, signers: &[&NoteSigner]) -> Result<String, NoteError> {
    if !valid_text(text) {
        return Err(NoteError::InvalidText);
    }
    if signers.is_empty() || signers.len() > MAX_SIGNATURES {
        return Err(NoteError::Malformed(
            "a note needs between 1 and 100 signatures",
        ));
    }
    let mut out = String::with_capacity(text.len() + 1 + signers.len() * 128);
    out.push_str(text);
    out.push('\n');
    for s in signers {
        out.push_str(&s.signature_line(text));
    }
    Ok(out)
}

/// Parses `msg` as a signed note and checks its signatures against
/// `verifiers`, with the rules of the module documentation.
pub fn open(msg: &[u8], verifiers: &[NoteVerifier]) -> Result<OpenedNote, NoteError> {
    let msg = std::str::from_utf8(msg).map_err(|_| NoteError::Malformed("not UTF-8"))?;
    if msg.chars().any(|c| c < ' ' && c != '\n') {
        return Err(NoteError::Malformed("control character"));
    }
    let split = msg
        .rfind("\n\n")
        .ok_or(NoteError::Malformed("no blank line before the signatures"))?;
    let (text, sigs) = (&msg[..split + 1], &msg[split + 2..]);
    if !sigs.ends_with('\n') {
        return Err(NoteError::Malformed(
            "no signature, or no newline after the last",
        ));
    }
    let mut note = OpenedNote {
        text: text.to_owned(),
        verified: Vec::new(),
        unverified: Vec::new(),
    };
    let mut count = 0usize;
    for line in sigs[..sigs.len() - 1].split('\n') {
        let rest = line
            .strip_prefix(SIGNATURE_PREFIX)
            .ok_or(NoteError::Malformed(
                "a signature line does not start with an em dash",
            ))?;
        let (name, b64) = rest.split_once(' ').unwrap_or((rest, ""));
        if !valid_key_name(name) || b64.is_empty() {
            return Err(NoteError::Malformed("bad key name in a signature line"));
        }
        let blob = STANDARD
            .decode(b64)
            .map_err(|_| NoteError::Malformed("a signature is not base64"))?;
        let (id, sig) = match blob.split_first_chunk::<4>() {
            Some((id, sig)) if !sig.is_empty() => (u32::from_be_bytes(*id), sig),
            _ => return Err(NoteError::Malformed("a signature is too short")),
        };
        count += 1;
        if count > MAX_SIGNATURES {
            return Err(NoteError::Malformed("more than 100 signatures"));
        }
        let signature = NoteSignature {
            name: name.to_owned(),
            key_id: id,
            base64: b64.to_owned(),
        };
        let mut known = verifiers
            .iter()
            .filter(|v| v.name == name && v.key_id == id);
        let Some(verifier) = known.next() else {
            if !note.unverified.contains(&signature) {
                note.unverified.push(signature);
            }
            continue;
        };
        if known.next().is_some() {
            return Err(NoteError::AmbiguousKey {
                name: name.to_owned(),
                key_id: id,
            });
        }
        // A key that already verified once is not checked again, as in Go:
        // the first signature line of a key decides.
        if note
            .verified
            .iter()
            .any(|s| s.name == name && s.key_id == id)
        {
            continue;
        }
        if !verifier.verify(text.as_bytes(), sig) {
            return Err(NoteError::InvalidSignature {
                name: name.to_owned(),
                key_id: id,
            });
        }
        note.verified.push(signature);
    }
    if note.verified.is_empty() {
        return Err(NoteError::NoKnownSignature);
    }
    Ok(note)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The example keys and notes of golang.org/x/mod/sumdb/note's tests. They
    // check themselves: the key id must match the key, the signer must derive
    // the verifier's public key and the (deterministic) Ed25519 signature
    // must verify, so a misremembered byte could not pass.
    const PETER_VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    const PETER_SKEY: &str =
        "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    const ENOCH_VKEY: &str = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop";
    const TEXT: &str = "If you think cryptography is the answer to your problem,\n\
                        then you don't know what your problem is.\n";
    const PETER_SIG: &str = "— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
    const ENOCH_SIG: &str = "— EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n";

    fn peter() -> NoteVerifier {
        NoteVerifier::from_key_string(PETER_VKEY).unwrap()
    }

    fn enoch() -> NoteVerifier {
        NoteVerifier::from_key_string(ENOCH_VKEY).unwrap()
    }

    #[test]
    fn go_vector_keys_parse_and_round_trip() {
        let v = peter();
        assert_eq!(v.name(), "PeterNeumann");
        assert_eq!(v.key_id(), 0xc74f20a3);
        assert_eq!(v.to_string(), PETER_VKEY);
        let s = NoteSigner::from_key_string(PETER_SKEY).unwrap();
        assert_eq!(s.verifier(), v);
        assert_eq!(s.to_key_string().as_str(), PETER_SKEY);
        assert_eq!(enoch().to_string(), ENOCH_VKEY);
        let dbg = format!("{s:?}");
        assert!(
            dbg.contains(PETER_VKEY) && !dbg.contains("AYEKFALV"),
            "{dbg}"
        );
    }

    #[test]
    fn go_vector_signature_is_reproduced_byte_for_byte() {
        let s = NoteSigner::from_key_string(PETER_SKEY).unwrap();
        let msg = sign(TEXT, &[&s]).unwrap();
        assert_eq!(msg, format!("{TEXT}\n{PETER_SIG}"));
    }

    #[test]
    fn go_vector_open_semantics() {
        let both = format!("{TEXT}\n{PETER_SIG}{ENOCH_SIG}");
        let n = open(both.as_bytes(), &[peter()]).unwrap();
        assert_eq!(n.text, TEXT);
        assert_eq!(n.verified.len(), 1);
        assert_eq!(n.verified[0].key_id, 0xc74f20a3);
        assert_eq!(n.unverified.len(), 1);
        assert_eq!(n.unverified[0].name, "EnochRoot");

        let n = open(both.as_bytes(), &[peter(), enoch()]).unwrap();
        assert_eq!(n.verified.len(), 2);
        assert!(n.unverified.is_empty());

        assert_eq!(open(both.as_bytes(), &[]), Err(NoteError::NoKnownSignature));

        let enoch_only = format!("{TEXT}\n{ENOCH_SIG}");
        assert!(matches!(
            open(enoch_only.as_bytes(), &[enoch(), peter(), enoch()]),
            Err(NoteError::AmbiguousKey { .. })
        ));
        let peter_only = format!("{TEXT}\n{PETER_SIG}");
        assert!(open(peter_only.as_bytes(), &[enoch(), peter(), enoch()]).is_ok());

        let many = format!("{TEXT}\n{}", PETER_SIG.repeat(101));
        assert!(matches!(
            open(many.as_bytes(), &[peter()]),
            Err(NoteError::Malformed(_))
        ));
        assert!(matches!(
            open(many.as_bytes(), &[]),
            Err(NoteError::Malformed(_))
        ));
        let hundred = format!("{TEXT}\n{}", PETER_SIG.repeat(100));
        assert!(open(hundred.as_bytes(), &[peter()]).is_ok());

        // Go's "invalid signature" case: four characters spliced in at byte 60.
        let bad = format!("{TEXT}\n{}ABCD{}", &PETER_SIG[..60], &PETER_SIG[60..]);
        assert!(matches!(
            open(bad.as_bytes(), &[peter()]),
            Err(NoteError::InvalidSignature {
                key_id: 0xc74f20a3,
                ..
            })
        ));

        // Repeated verified and unverified lines, one unverified line corrupt.
        let enoch_abcd = format!("{}ABCD{}", &ENOCH_SIG[..60], &ENOCH_SIG[60..]);
        let dup = format!("{TEXT}\n{PETER_SIG}{PETER_SIG}{ENOCH_SIG}{ENOCH_SIG}{enoch_abcd}");
        let n = open(dup.as_bytes(), &[peter()]).unwrap();
        assert_eq!(n.verified.len(), 1);
        assert_eq!(n.unverified.len(), 2);
    }

    #[test]
    fn go_vector_malformed_messages() {
        let bad: Vec<String> = vec![
            TEXT.to_owned(),
            format!("{TEXT}\n"),
            format!("{TEXT}\n{}", &PETER_SIG[..PETER_SIG.len() - 1]),
            format!("\x01{TEXT}\n{PETER_SIG}"),
            format!(
                "{TEXT}\n— Bad Name x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM="
            ),
            format!("{TEXT}\n{PETER_SIG}Unexpected line.\n"),
        ];
        for msg in bad {
            assert!(
                matches!(
                    open(msg.as_bytes(), &[peter()]),
                    Err(NoteError::Malformed(_))
                ),
                "{msg:?}"
            );
        }
        let mut invalid_utf8 = vec![0xffu8];
        invalid_utf8.extend_from_slice(format!("{TEXT}\n{PETER_SIG}").as_bytes());
        assert!(matches!(
            open(&invalid_utf8, &[peter()]),
            Err(NoteError::Malformed(_))
        ));
    }

    #[test]
    fn go_vector_key_manglings_are_refused() {
        let b = PETER_VKEY.as_bytes();
        for i in 0..=b.len() {
            for j in i + 1..=b.len() {
                if i != 0 || j != b.len() {
                    let s = String::from_utf8_lossy(&b[i..j]);
                    assert!(NoteVerifier::from_key_string(&s).is_err(), "{s}");
                }
            }
        }
        for i in 0..b.len() {
            let mut m = b.to_vec();
            m[i] = m[i].wrapping_add(1);
            let s = String::from_utf8_lossy(&m);
            assert!(NoteVerifier::from_key_string(&s).is_err(), "{s}");
        }
        // Wrong key length and unknown algorithm, each with a matching key id.
        assert!(
            NoteVerifier::from_key_string(
                "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY=="
            )
            .is_err()
        );
        assert_eq!(
            NoteVerifier::from_key_string(
                "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
            ),
            Err(NoteError::UnsupportedAlgorithm(0x65))
        );
        let b = PETER_SKEY.as_bytes();
        for i in 0..=b.len() {
            for j in i + 1..=b.len() {
                if i != 0 || j != b.len() {
                    let s = String::from_utf8_lossy(&b[i..j]);
                    assert!(NoteSigner::from_key_string(&s).is_err(), "{s}");
                }
            }
        }
        for i in 0..b.len() {
            let mut m = b.to_vec();
            m[i] = m[i].wrapping_add(1);
            let s = String::from_utf8_lossy(&m);
            assert!(NoteSigner::from_key_string(&s).is_err(), "{s}");
        }
    }

    fn signer(name: &str, n: u8) -> NoteSigner {
        NoteSigner::from_seed(name, &[n; 32]).unwrap()
    }

    #[test]
    fn round_trip_and_tampering() {
        let s = signer("example.com/log", 1);
        let msg = sign("hello\nworld\n", &[&s]).unwrap();
        let n = open(msg.as_bytes(), &[s.verifier()]).unwrap();
        assert_eq!(n.text, "hello\nworld\n");

        // Changed text.
        let t = msg.replacen("hello", "hellO", 1);
        assert!(matches!(
            open(t.as_bytes(), &[s.verifier()]),
            Err(NoteError::InvalidSignature { .. })
        ));
        // Changed signature: flip a bit inside the signature bytes.
        let line = msg.lines().last().unwrap();
        let b64 = line.rsplit(' ').next().unwrap();
        let mut blob = STANDARD.decode(b64).unwrap();
        blob[10] ^= 1;
        let t = msg.replace(b64, &STANDARD.encode(&blob));
        assert!(matches!(
            open(t.as_bytes(), &[s.verifier()]),
            Err(NoteError::InvalidSignature { .. })
        ));
        // A key with the same name but another key is unknown, not wrong.
        let other = signer("example.com/log", 2);
        assert_eq!(
            open(msg.as_bytes(), &[other.verifier()]),
            Err(NoteError::NoKnownSignature)
        );
        // The same key under another name is unknown too.
        let renamed =
            NoteVerifier::from_public_key("example.com/other", &s.verifier().public_key()).unwrap();
        assert_eq!(
            open(msg.as_bytes(), &[renamed]),
            Err(NoteError::NoKnownSignature)
        );
        // A forged line that reuses the real name and key id with another key's
        // signature is refused.
        let forged = sign("hello\nworld\n", &[&other]).unwrap();
        let forged_b64 = forged.lines().last().unwrap().rsplit(' ').next().unwrap();
        let mut fblob = STANDARD.decode(forged_b64).unwrap();
        fblob[..4].copy_from_slice(&s.key_id().to_be_bytes());
        let t = msg.replace(b64, &STANDARD.encode(&fblob));
        assert!(matches!(
            open(t.as_bytes(), &[s.verifier()]),
            Err(NoteError::InvalidSignature { .. })
        ));
        // A truncated signature of a known key is invalid.
        let t = msg.replace(b64, &STANDARD.encode(&blob[..40]));
        assert!(matches!(
            open(t.as_bytes(), &[s.verifier()]),
            Err(NoteError::InvalidSignature { .. })
        ));
        // Non-canonical base64 is malformed: the last data character of the
        // 68-byte blob carries two unused bits that must be zero; setting one
        // leaves the decoded bytes unchanged for a lenient decoder.
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut nc = b64.as_bytes().to_vec();
        let last = nc.len() - 2;
        let value = ALPHABET.iter().position(|&c| c == nc[last]).unwrap();
        assert_eq!(value % 4, 0);
        nc[last] = ALPHABET[value + 1];
        let t = msg.replace(b64, std::str::from_utf8(&nc).unwrap());
        assert!(matches!(
            open(t.as_bytes(), &[s.verifier()]),
            Err(NoteError::Malformed(_))
        ));
    }

    #[test]
    fn text_rules_on_sign_and_open() {
        let s = signer("k", 3);
        for bad in ["", "no newline", "tab\there\n", "cr\r\n"] {
            assert_eq!(sign(bad, &[&s]), Err(NoteError::InvalidText), "{bad:?}");
        }
        assert!(sign("x\n", &[]).is_err());
        // Blank lines inside the text are allowed; the last blank line splits.
        let msg = sign("a\n\nb\n", &[&s]).unwrap();
        assert_eq!(
            open(msg.as_bytes(), &[s.verifier()]).unwrap().text,
            "a\n\nb\n"
        );
        // A text that ends in a blank line still splits at the last one.
        let msg = sign("a\n\n", &[&s]).unwrap();
        assert_eq!(open(msg.as_bytes(), &[s.verifier()]).unwrap().text, "a\n\n");
        // An extra blank line between signatures, or after them, is malformed.
        let two = sign("a\n", &[&s, &signer("j", 4)]).unwrap();
        let (head, tail) = two.split_at(two.rfind("— j").unwrap());
        let extra = format!("{head}\n{tail}");
        assert!(open(extra.as_bytes(), &[s.verifier()]).is_err());
        let after = format!("{two}\n");
        assert!(open(after.as_bytes(), &[s.verifier()]).is_err());
        // Missing final newline.
        assert!(open(two.trim_end().as_bytes(), &[s.verifier()]).is_err());
        // A hyphen is not an em dash.
        let dash = two.replace('—', "-");
        assert!(open(dash.as_bytes(), &[s.verifier()]).is_err());
    }

    #[test]
    fn key_names() {
        for good in ["a", "example.com/log42", "PeterNeumann", "é"] {
            assert!(valid_key_name(good), "{good}");
        }
        for bad in [
            "",
            "a b",
            "a+b",
            "a\tb",
            "a\u{a0}b",
            "a\u{2003}b",
            "a\u{1}b",
        ] {
            assert!(!valid_key_name(bad), "{bad:?}");
            assert!(NoteSigner::from_seed(bad, &[1; 32]).is_err());
        }
    }
}
