//! C2SP transparency log checkpoints (<https://c2sp.org/tlog-checkpoint>):
//! the signed head of a tenant's log.
//!
//! The checkpoint is the text of a [signed note](crate::note):
//!
//! ```text
//! <origin>
//! <tree size, ASCII decimal, no leading zeros unless "0">
//! <base64 (standard, padded) of the 32-byte RFC 6962 root hash>
//! [<extension line>]...
//! ```
//!
//! Every line ends in `\n`, no line is empty, and at least the first three
//! lines are present. The log key's name is the origin, and [`open`] accepts a
//! checkpoint only when it is signed by a supplied key whose name equals the
//! origin line, so one tenant's key can never vouch for
//! another tenant's log.
//!
//! aibox gives every tenant its own log and origin, see
//! [`origin_for_tenant`].

use aibox_core::TenantId;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::merkle::Hash;
use crate::note::{self, NoteError, NoteSigner, NoteVerifier};

/// The default origin prefix: origins are `aibox.local/audit/<tenant>`.
pub const DEFAULT_ORIGIN_PREFIX: &str = "aibox.local/audit";

/// Why a checkpoint was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    /// The text is not a well-formed checkpoint.
    #[error("malformed checkpoint: {0}")]
    Malformed(&'static str),
    /// The origin cannot be a note key name.
    #[error("invalid origin {0:?}: it must be non-empty without white space or '+'")]
    InvalidOrigin(String),
    /// An origin prefix is unusable.
    #[error(
        "invalid origin prefix {0:?}: it must be non-empty, without white space or '+', and not end in '/'"
    )]
    InvalidPrefix(String),
    /// The signing or verifying key is not named after the origin.
    #[error("the log key is named {key_name:?} but the checkpoint origin is {origin:?}")]
    KeyNameMismatch {
        /// The key's name.
        key_name: String,
        /// The checkpoint's origin.
        origin: String,
    },
    /// The signed note did not verify.
    #[error(transparent)]
    Note(#[from] NoteError),
}

/// The origin of a tenant's log: `<prefix>/<tenant>`, for example
/// `aibox.local/audit/acme`.
///
/// The prefix is a deployment-wide schema-less URL path without white space,
/// `+` or a trailing `/`; tenant ids contain only `[A-Za-z0-9._-]`, so the
/// origin is always a valid note key name and distinct tenants always get
/// distinct origins.
pub fn origin_for_tenant(prefix: &str, tenant: &TenantId) -> Result<String, CheckpointError> {
    if !note::valid_key_name(prefix) || prefix.ends_with('/') {
        return Err(CheckpointError::InvalidPrefix(prefix.to_owned()));
    }
    Ok(format!("{prefix}/{}", tenant.as_str()))
}

/// A parsed checkpoint body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    origin: String,
    size: u64,
    root: Hash,
    extensions: Vec<String>,
}

fn valid_line(line: &str) -> bool {
    !line.is_empty() && !line.chars().any(|c| c < ' ')
}

impl Checkpoint {
    /// A checkpoint without extension lines. The origin must be a valid key
    /// name, since the log signs under its origin.
    pub fn new(origin: &str, size: u64, root: Hash) -> Result<Self, CheckpointError> {
        Self::with_extensions(origin, size, root, Vec::new())
    }

    /// A checkpoint with extension lines, each non-empty and without control
    /// characters.
    pub fn with_extensions(
        origin: &str,
        size: u64,
        root: Hash,
        extensions: Vec<String>,
    ) -> Result<Self, CheckpointError> {
        if !note::valid_key_name(origin) {
            return Err(CheckpointError::InvalidOrigin(origin.to_owned()));
        }
        if !extensions.iter().all(|e| valid_line(e)) {
            return Err(CheckpointError::Malformed(
                "an extension line is empty or has a control character",
            ));
        }
        Ok(Self {
            origin: origin.to_owned(),
            size,
            root,
            extensions,
        })
    }

    /// The origin line.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The tree size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The root hash.
    pub fn root(&self) -> &Hash {
        &self.root
    }

    /// The extension lines, without their newlines.
    pub fn extensions(&self) -> &[String] {
        &self.extensions
    }

    /// The note text.
    pub fn to_text(&self) -> String {
        let mut out = format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            STANDARD.encode(self.root)
        );
        for e in &self.extensions {
            out.push_str(e);
            out.push('\n');
        }
        out
    }

    /// Parses a note text strictly.
    ///
    /// The origin is only required to be non-empty here, as the
    /// specification allows; [`open`] additionally requires it to equal the
    /// log key's name.
    pub fn parse(text: &str) -> Result<Self, CheckpointError> {
        let body = text.strip_suffix('\n').ok_or(CheckpointError::Malformed(
            "the text does not end in a newline",
        ))?;
        let mut lines = body.split('\n');
        let (Some(origin), Some(size), Some(root)) = (lines.next(), lines.next(), lines.next())
        else {
            return Err(CheckpointError::Malformed("fewer than three lines"));
        };
        if !valid_line(origin) {
            return Err(CheckpointError::Malformed(
                "the origin is empty or has a control character",
            ));
        }
        let size = parse_decimal(size).ok_or(CheckpointError::Malformed(
            "the tree size is not a decimal number without leading zeros",
        ))?;
        let root = STANDARD
            .decode(root)
            .ok()
            .and_then(|r| Hash::try_from(r.as_slice()).ok())
            .ok_or(CheckpointError::Malformed(
                "the root hash is not the base64 of 32 bytes",
            ))?;
        let mut extensions = Vec::new();
        for line in lines {
            if !valid_line(line) {
                return Err(CheckpointError::Malformed(
                    "an extension line is empty or has a control character",
                ));
            }
            extensions.push(line.to_owned());
        }
        Ok(Self {
            origin: origin.to_owned(),
            size,
            root,
            extensions,
        })
    }

    /// Signs the checkpoint with the log key, which must be named after the
    /// origin, and returns the signed note.
    pub fn sign(&self, log_key: &NoteSigner) -> Result<String, CheckpointError> {
        if log_key.name() != self.origin {
            return Err(CheckpointError::KeyNameMismatch {
                key_name: log_key.name().to_owned(),
                origin: self.origin.clone(),
            });
        }
        Ok(note::sign(&self.to_text(), &[log_key])?)
    }
}

/// Parses a canonical unsigned decimal: digits only, no sign, no leading zero
/// unless the number is `0`, within `u64`.
pub(crate) fn parse_decimal(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return None;
    }
    s.parse().ok()
}

/// Opens a signed checkpoint.
///
/// `log_keys` are the log's verifier keys (several during a key rotation,
/// all named after the origin) and possibly witness keys. The note must
/// verify under the rules of [`crate::note`], its text must be a well-formed
/// checkpoint, and at least one verified signature must come from a key
/// whose name equals the origin line.
pub fn open(signed: &[u8], log_keys: &[NoteVerifier]) -> Result<Checkpoint, CheckpointError> {
    let opened = note::open(signed, log_keys)?;
    let checkpoint = Checkpoint::parse(&opened.text)?;
    if !opened.verified.iter().any(|s| s.name == checkpoint.origin) {
        return Err(CheckpointError::KeyNameMismatch {
            key_name: opened
                .verified
                .first()
                .map(|s| s.name.clone())
                .unwrap_or_default(),
            origin: checkpoint.origin,
        });
    }
    Ok(checkpoint)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle;

    fn tenant(s: &str) -> TenantId {
        TenantId::new(s).unwrap()
    }

    #[test]
    fn origin_format() {
        assert_eq!(
            origin_for_tenant(DEFAULT_ORIGIN_PREFIX, &tenant("acme")).unwrap(),
            "aibox.local/audit/acme"
        );
        for bad in ["", "a b", "a+b", "x/"] {
            assert!(matches!(
                origin_for_tenant(bad, &tenant("acme")),
                Err(CheckpointError::InvalidPrefix(_))
            ));
        }
    }

    #[test]
    fn spec_example_parses_and_formats_identically() {
        let text =
            "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n";
        let c = Checkpoint::parse(text).unwrap();
        assert_eq!(c.origin(), "example.com/behind-the-sofa");
        assert_eq!(c.size(), 20852163);
        assert_eq!(c.to_text(), text);
        let with_ext = format!("{text}ext one\next two\n");
        let c = Checkpoint::parse(&with_ext).unwrap();
        assert_eq!(c.extensions(), ["ext one", "ext two"]);
        assert_eq!(c.to_text(), with_ext);
    }

    #[test]
    fn parse_is_strict() {
        let root = STANDARD.encode(merkle::empty_root());
        let good = format!("o\n0\n{root}\n");
        assert!(Checkpoint::parse(&good).is_ok());
        let bad = [
            format!("o\n0\n{root}"),
            format!("\n0\n{root}\n"),
            format!("o\n00\n{root}\n"),
            format!("o\n01\n{root}\n"),
            format!("o\n+1\n{root}\n"),
            format!("o\n-1\n{root}\n"),
            format!("o\n 1\n{root}\n"),
            format!("o\n\n{root}\n"),
            format!("o\n18446744073709551616\n{root}\n"),
            "o\n1\n\n".to_owned(),
            "o\n1\nAAAA\n".to_owned(),
            format!("o\n1\n{}\n", root.trim_end_matches('=')),
            format!("o\n1\n{root}\n\n"),
            format!("o\n1\n{root}\next\n\n"),
            format!("o\n1\n{root}\r\n"),
            "o\n1\n".to_owned(),
        ];
        for text in bad {
            assert!(Checkpoint::parse(&text).is_err(), "{text:?}");
        }
        assert_eq!(
            Checkpoint::parse(&format!("o\n18446744073709551615\n{root}\n"))
                .unwrap()
                .size(),
            u64::MAX
        );
    }

    #[test]
    fn sign_and_open() {
        let origin = origin_for_tenant(DEFAULT_ORIGIN_PREFIX, &tenant("acme")).unwrap();
        let key = NoteSigner::from_seed(&origin, &[7; 32]).unwrap();
        let root = merkle::root(&[merkle::leaf_hash(b"a")]);
        let c = Checkpoint::new(&origin, 1, root).unwrap();
        let signed = c.sign(&key).unwrap();
        assert!(signed.starts_with("aibox.local/audit/acme\n1\n"));
        assert_eq!(open(signed.as_bytes(), &[key.verifier()]).unwrap(), c);

        // Another tenant's key cannot sign or open this tenant's checkpoint.
        let other_origin = origin_for_tenant(DEFAULT_ORIGIN_PREFIX, &tenant("evil")).unwrap();
        let other = NoteSigner::from_seed(&other_origin, &[7; 32]).unwrap();
        assert!(matches!(
            c.sign(&other),
            Err(CheckpointError::KeyNameMismatch { .. })
        ));
        assert_eq!(
            open(signed.as_bytes(), &[other.verifier()]),
            Err(CheckpointError::Note(NoteError::NoKnownSignature))
        );
        // A key named differently that signs a checkpoint for this origin is
        // refused even though its signature is valid.
        let forged = note::sign(&c.to_text(), &[&other]).unwrap();
        assert!(matches!(
            open(forged.as_bytes(), &[other.verifier()]),
            Err(CheckpointError::KeyNameMismatch { .. })
        ));
        // A tampered size fails the signature.
        let tampered = signed.replacen("\n1\n", "\n2\n", 1);
        assert!(matches!(
            open(tampered.as_bytes(), &[key.verifier()]),
            Err(CheckpointError::Note(NoteError::InvalidSignature { .. }))
        ));
        // A cosignature from an unknown witness is ignored.
        let witness = NoteSigner::from_seed("witness.example", &[9; 32]).unwrap();
        let cosigned = note::sign(&c.to_text(), &[&key, &witness]).unwrap();
        assert_eq!(open(cosigned.as_bytes(), &[key.verifier()]).unwrap(), c);
        // During a rotation both log keys are supplied; either one suffices.
        let rotated = NoteSigner::from_seed(&origin, &[8; 32]).unwrap();
        let both = [key.verifier(), rotated.verifier()];
        assert_eq!(open(signed.as_bytes(), &both).unwrap(), c);
        let new_signed = c.sign(&rotated).unwrap();
        assert_eq!(open(new_signed.as_bytes(), &both).unwrap(), c);
        // A supplied witness key alone does not make a checkpoint valid: the
        // verified signature must be the log's.
        let witnessed_only = note::sign(&c.to_text(), &[&witness]).unwrap();
        assert!(matches!(
            open(
                witnessed_only.as_bytes(),
                &[key.verifier(), witness.verifier()]
            ),
            Err(CheckpointError::KeyNameMismatch { .. })
        ));
        assert_eq!(
            open(cosigned.as_bytes(), &[key.verifier(), witness.verifier()]).unwrap(),
            c
        );
        // A signed note whose text is not a checkpoint is refused.
        let not_cp = note::sign(&format!("{origin}\nx\n"), &[&key]).unwrap();
        assert!(matches!(
            open(not_cp.as_bytes(), &[key.verifier()]),
            Err(CheckpointError::Malformed(_))
        ));
    }

    #[test]
    fn invalid_origins_and_extensions_are_refused() {
        let r = merkle::empty_root();
        assert!(Checkpoint::new("a b", 0, r).is_err());
        assert!(Checkpoint::new("", 0, r).is_err());
        assert!(Checkpoint::with_extensions("o", 0, r, vec![String::new()]).is_err());
        assert!(Checkpoint::with_extensions("o", 0, r, vec!["a\nb".into()]).is_err());
    }
}
