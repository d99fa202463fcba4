//! Errors of the tokens aibox itself signs: the principal header and
//! CapTokens.
//!
//! Both kinds share one verifier error type because they fail in the same
//! ways (bad signature, unknown key version, expiry) and differ only in which
//! keyring an operator must fix, which each variant records.

use crate::keys::{KeyringKind, KeyringLoadError};
use crate::replay::ReplayError;

/// Why a token could not be signed or a signer could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The keyring is missing, empty or invalid.
    #[error(transparent)]
    Keyring(#[from] KeyringLoadError),
    /// The audience (downstream service name) is empty, too long or holds
    /// characters outside `[A-Za-z0-9._:/-]`.
    #[error("the audience is not a valid service name")]
    BadAudience,
    /// An operation string does not follow the `kind:target` grammar.
    #[error("the operation '{op}' is not a valid CapToken operation")]
    BadOperation {
        /// The refused operation, made printable.
        op: String,
    },
    /// A CapToken needs at least one operation.
    #[error("a CapToken needs at least one operation")]
    NoOperations,
    /// A public key set holds no usable key.
    #[error("the public key set holds no usable Ed25519 key with a kid")]
    NoUsableKey,
    /// The system random number generator failed.
    #[error("the system random number generator failed")]
    Random,
    /// The signature could not be computed.
    #[error("the token could not be signed")]
    Signing,
}

impl IdentityError {
    /// The cause and the fix, for the logs.
    pub fn operator_hint(&self) -> String {
        match self {
            Self::Keyring(e) => e.operator_hint(),
            Self::BadAudience => "the downstream service name used as the token audience must be \
                1-128 characters from [A-Za-z0-9._:/-]; fix the service name in the gateway config"
                .into(),
            Self::BadOperation { op } => format!(
                "operation '{op}' must be `kind:target` (kind [a-z0-9_-], target \
                 [A-Za-z0-9._:/@+-]); tool operations are `tool:SERVER/TOOL` or `tool:SERVER/*`"
            ),
            Self::NoOperations => "a turn without allowed operations needs no CapToken; \
                do not mint one"
                .into(),
            Self::NoUsableKey => "the principal public JWKS must contain OKP/Ed25519 keys with a \
                kid (as served by the gateway); check the key set the service was given"
                .into(),
            Self::Random => "the operating system's random number generator failed; \
                check the host (getrandom)"
                .into(),
            Self::Signing => "the signing key was refused by the crypto provider; regenerate the \
                keyring entry"
                .into(),
        }
    }
}

/// Why a principal header or CapToken was refused.
///
/// `Display` is safe for clients: it never quotes the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// No token was presented.
    #[error("no token was presented")]
    Missing,
    /// The token is not a compact JWS with the expected claims.
    #[error("the token is not well-formed")]
    Malformed,
    /// The token is larger than any token aibox mints.
    #[error("the token is {len} bytes long; at most {max} are accepted")]
    TooLarge {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The header algorithm is not the one of the verifier's keyring.
    #[error("the token's signing algorithm is not accepted")]
    AlgorithmNotAllowed {
        /// The algorithm the header named (printable, truncated).
        alg: String,
        /// The keyring the verifier holds.
        keyring: KeyringKind,
    },
    /// The key id is not (or no longer) in the keyring.
    #[error("the token was signed with an unknown key")]
    UnknownKid {
        /// The key id (printable, truncated).
        kid: String,
        /// The keyring that lacks it.
        keyring: KeyringKind,
    },
    /// The signature does not verify.
    #[error("the token signature is invalid")]
    BadSignature {
        /// The keyring whose key did not verify it.
        keyring: KeyringKind,
    },
    /// The token has expired.
    #[error("the token has expired")]
    Expired,
    /// The token was issued in the future.
    #[error("the token was issued in the future")]
    IssuedInFuture,
    /// The issuer is not aibox.
    #[error("the token was not issued by aibox")]
    WrongIssuer,
    /// The token is for another service.
    #[error("the token is meant for another service")]
    WrongAudience,
    /// The CapToken is bound to another turn.
    #[error("the capability token belongs to another turn")]
    WrongTurn,
    /// The CapToken does not allow the operation.
    #[error("the capability token does not allow '{op}'")]
    OpNotAllowed {
        /// The operation that was asked for (printable, truncated).
        op: String,
    },
    /// A claim is missing or has an unusable value.
    #[error("the token claim '{claim}' is missing or unusable")]
    BadClaim {
        /// The claim name.
        claim: &'static str,
    },
    /// The single-use CapToken was already used.
    #[error("the capability token was already used")]
    Replayed,
    /// The replay guard could not decide; the token is refused (fail closed).
    #[error("the capability token cannot be checked for reuse right now")]
    ReplayCheck(#[source] ReplayError),
}

impl VerifyError {
    /// True when the refusal is the server's fault (the replay store is
    /// down), so the caller should answer 503 rather than 401/403.
    pub fn is_server_side(&self) -> bool {
        matches!(self, Self::ReplayCheck(_))
    }

    /// A short stable code for metrics and audit events.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::TooLarge { .. } => "too_large",
            Self::AlgorithmNotAllowed { .. } => "algorithm_not_allowed",
            Self::UnknownKid { .. } => "unknown_kid",
            Self::BadSignature { .. } => "bad_signature",
            Self::Expired => "expired",
            Self::IssuedInFuture => "issued_in_future",
            Self::WrongIssuer => "wrong_issuer",
            Self::WrongAudience => "wrong_audience",
            Self::WrongTurn => "wrong_turn",
            Self::OpNotAllowed { .. } => "op_not_allowed",
            Self::BadClaim { .. } => "bad_claim",
            Self::Replayed => "replayed",
            Self::ReplayCheck(_) => "replay_check_failed",
        }
    }

    /// The cause and the fix, for the logs.
    pub fn operator_hint(&self) -> String {
        match self {
            Self::Missing => "the request carried no token where one is required; the gateway \
                adds it, so a direct call that bypasses the gateway is the likely cause"
                .into(),
            Self::Malformed => "the value is not a compact JWS with aibox's claims; it was \
                truncated, altered, or is a different kind of token"
                .into(),
            Self::TooLarge { len, max } => format!(
                "a {len}-byte token exceeds the {max}-byte limit; aibox never mints tokens that \
                 large, so it was not minted by aibox"
            ),
            Self::AlgorithmNotAllowed { alg, keyring } => format!(
                "header alg '{alg}' does not match the {} verifier (HS256 for a shared keyring, \
                 EdDSA for public keys; 'none' is never accepted); gateway and service must use \
                 the same mode. {}",
                keyring.env_var(),
                keyring.share_hint()
            ),
            Self::UnknownKid { kid, keyring } => format!(
                "key id '{kid}' is not in {}: the signer has a newer key than this verifier, or \
                 the key was removed after rotation. {}",
                keyring.env_var(),
                keyring.share_hint()
            ),
            Self::BadSignature { keyring } => format!(
                "the signature does not verify with the key of the same id in {}: the secrets \
                 differ between signer and verifier, or the token was altered. {}",
                keyring.env_var(),
                keyring.share_hint()
            ),
            Self::Expired => "the token's exp has passed; tokens are short-lived by design, so \
                check clock sync (NTP) between gateway and service, or the caller reused an old token"
                .into(),
            Self::IssuedInFuture => {
                "the token's iat is ahead of this host's clock; check clock sync (NTP)".into()
            }
            Self::WrongIssuer => "iss is not 'aibox'; the token was not minted by the gateway".into(),
            Self::WrongAudience => "the token names another service as its audience; the gateway \
                mints one per downstream service, so check which service name this service \
                verifies with"
                .into(),
            Self::WrongTurn => "the CapToken is bound to a different turn id than the call; \
                tokens cannot be carried between turns"
                .into(),
            Self::OpNotAllowed { op } => format!(
                "operation '{op}' is not in the CapToken's ops; the turn's policy did not grant it"
            ),
            Self::BadClaim { claim } => {
                format!("claim '{claim}' is missing or does not have the aibox format")
            }
            Self::Replayed => "the single-use CapToken's jti was seen before: a replay, or a \
                client retrying with the same token"
                .into(),
            Self::ReplayCheck(e) => e.operator_hint(),
        }
    }
}
