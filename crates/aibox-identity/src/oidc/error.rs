//! Why an OIDC access token was refused.
//!
//! Clients see `Display`, which says what class of problem it is and never
//! quotes the token. Operators see [`AuthError::operator_hint`], which names
//! the cause and the config key that fixes it (seed 000's troubleshooting
//! table: an issuer mismatch must say that the issuer has to match exactly).

/// Why a bearer token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token was presented.
    #[error("no bearer token was presented")]
    Missing,
    /// The token is not a compact JWS with JSON header and claims.
    #[error("the bearer token is not a well-formed JWT")]
    Malformed,
    /// The token is larger than `max_token_bytes`; it was not parsed.
    #[error("the bearer token is {len} bytes long; at most {max} are accepted")]
    TooLarge {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The header algorithm is not in the allow-list (or is `none`/HS*).
    #[error("the token's signing algorithm is not accepted")]
    AlgorithmNotAllowed {
        /// The algorithm the header named (printable, truncated).
        alg: String,
    },
    /// No key with the token's `kid` is in the provider's JWKS.
    #[error("the token was signed with an unknown key")]
    UnknownKid {
        /// The key id (printable, truncated; empty when absent).
        kid: String,
    },
    /// The key selected by `kid` does not fit the header algorithm.
    #[error("the token's key does not fit its algorithm")]
    KeyMismatch,
    /// The signature does not verify.
    #[error("the token signature is invalid")]
    BadSignature,
    /// `exp` has passed (leeway applied).
    #[error("the token has expired")]
    Expired,
    /// `nbf` is in the future (leeway applied).
    #[error("the token is not valid yet")]
    NotYetValid,
    /// `iat` is in the future (leeway applied).
    #[error("the token was issued in the future")]
    IssuedInFuture,
    /// `iss` differs from the configured issuer.
    #[error("the token issuer is not accepted")]
    IssuerMismatch {
        /// The configured issuer.
        expected: String,
        /// The token's issuer (printable, truncated).
        got: String,
    },
    /// Neither `aud` nor `azp` names an accepted audience.
    #[error("the token is not meant for this gateway")]
    AudienceMismatch,
    /// A required claim is absent.
    #[error("the token lacks the claim '{claim}'")]
    MissingClaim {
        /// The claim (or the alternatives tried, joined by `|`).
        claim: String,
    },
    /// A claim has an unusable type or value.
    #[error("the token claim '{claim}' has an unusable value")]
    BadClaim {
        /// The claim.
        claim: String,
    },
    /// The JWKS could not be fetched; no token can be checked.
    #[error("the identity provider's signing keys are unavailable")]
    JwksUnavailable {
        /// The JWKS (or discovery) URL, without credentials or query.
        url: String,
        /// What failed.
        cause: String,
    },
}

impl AuthError {
    /// True when the refusal is the server's fault (the provider's keys
    /// cannot be fetched): answer 503, not 401.
    pub fn is_server_side(&self) -> bool {
        matches!(self, Self::JwksUnavailable { .. })
    }

    /// A short stable code for metrics and audit events.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::TooLarge { .. } => "too_large",
            Self::AlgorithmNotAllowed { .. } => "algorithm_not_allowed",
            Self::UnknownKid { .. } => "unknown_kid",
            Self::KeyMismatch => "key_mismatch",
            Self::BadSignature => "bad_signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::IssuedInFuture => "issued_in_future",
            Self::IssuerMismatch { .. } => "issuer_mismatch",
            Self::AudienceMismatch => "audience_mismatch",
            Self::MissingClaim { .. } => "missing_claim",
            Self::BadClaim { .. } => "bad_claim",
            Self::JwksUnavailable { .. } => "jwks_unavailable",
        }
    }

    /// The cause and the fix, for the logs.
    pub fn operator_hint(&self) -> String {
        match self {
            Self::Missing => "the request had no `Authorization: Bearer` token; the client must \
                send an access token from the configured provider or a gateway API key"
                .into(),
            Self::Malformed => "the bearer value is not a compact JWS (three base64url parts, JSON \
                header and claims); the client may be sending an opaque token, a truncated token \
                or an encrypted (JWE) token; configure the provider to issue JWT access tokens"
                .into(),
            Self::TooLarge { len, max } => format!(
                "a {len}-byte token exceeds auth.max_token_bytes ({max}); if the provider puts \
                 many groups or roles into tokens, trim its mappers or raise the limit"
            ),
            Self::AlgorithmNotAllowed { alg } => format!(
                "header alg '{alg}' is not in auth.algorithms; 'none' and HS* are never accepted; \
                 configure the provider to sign with an allowed asymmetric algorithm or add it to \
                 auth.algorithms"
            ),
            Self::UnknownKid { kid } if kid.is_empty() => "the token header has no kid; aibox \
                selects keys only by kid from the configured JWKS; configure the provider to set kid"
                .into(),
            Self::UnknownKid { kid } => format!(
                "kid '{kid}' is not in the JWKS of auth.jwks_url (refetched on unknown kids at most \
                 once per auth.jwks_refresh_min_secs); the token comes from another provider \
                 or realm, or the provider rotated keys moments ago"
            ),
            Self::KeyMismatch => "the JWKS key with the token's kid has another alg or key type \
                than the token header (for example an RSA key for ES256); the token is forged or \
                the provider's JWKS is inconsistent"
                .into(),
            Self::BadSignature => "the signature does not verify with the JWKS key of the \
                token's kid; the token was altered, or was signed by another provider instance \
                that reuses the kid; check auth.jwks_url points at the issuer's JWKS"
                .into(),
            Self::Expired => "exp has passed (auth.leeway_secs applied); the client must refresh its \
                token; if fresh tokens fail too, check clock sync (NTP) between gateway and provider"
                .into(),
            Self::NotYetValid => "nbf is ahead of the gateway's clock beyond auth.leeway_secs; check \
                clock sync (NTP) between gateway and provider"
                .into(),
            Self::IssuedInFuture => "iat is ahead of the gateway's clock beyond auth.leeway_secs; check \
                clock sync (NTP) between gateway and provider"
                .into(),
            Self::IssuerMismatch { expected, got } => format!(
                "token iss '{got}' is not the configured issuer '{expected}'; the gateway issuer \
                 must match the token issuer exactly, including scheme, host, port and path; set \
                 auth.issuer (Keycloak: the realm URL clients use, e.g. its frontend URL)"
            ),
            Self::AudienceMismatch => "neither aud nor azp contains one of auth.audiences; add an \
                audience mapper for the gateway's client in the provider, or fix auth.audiences"
                .into(),
            Self::MissingClaim { claim } => format!(
                "claim '{claim}' is absent; add a protocol mapper for it in the provider, or set \
                 auth.claims (default_tenant for the tenant)"
            ),
            Self::BadClaim { claim } => format!(
                "claim '{claim}' has an unusable type or characters outside the allowed identifier \
                 alphabet; fix the provider's mapper or map another claim in auth.claims"
            ),
            Self::JwksUnavailable { url, cause } => format!(
                "cannot load the provider's JWKS from {url}: {cause}; check auth.jwks_url (or \
                 auth.issuer, from which it is discovered) and that the provider is reachable \
                 from the gateway"
            ),
        }
    }
}
