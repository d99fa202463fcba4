//! Identity and trust at the edge of aibox.
//!
//! This crate holds the security logic that decides *who* a request comes
//! from and carries that decision to the services behind the gateway. It does
//! no HTTP serving and reads no configuration files; the gateway wires it in.
//!
//! - [`oidc`]: validates OIDC access tokens (JWTs) against the configured
//!   provider's JWKS: exact issuer, audience or `azp`, an asymmetric-only
//!   algorithm allow-list, keys chosen only by `kid` from the configured JWKS,
//!   and claim mapping into an [`aibox_core::Principal`].
//! - [`principal`]: signs and verifies the `X-Aibox-Principal` header, a
//!   standard compact JWS (HS256 or EdDSA) any JWT library can verify.
//! - [`captoken`]: mints and verifies per-turn capability tokens, with
//!   single-use replay protection in memory or in Redis ([`replay`]).
//! - [`apikey`]: generates, parses and verifies gateway API keys, which are
//!   stored only as domain-separated SHA-256 hashes.
//! - [`keys`]: loading the `AIBOX_PRINCIPAL_KEYS` / `AIBOX_CAPTOKEN_KEYS`
//!   keyrings with errors that name the variable and the fix.
//!
//! Every error type here has a `Display` that is safe to show a client (it
//! never quotes a token, a key or a secret) and an `operator_hint()` that
//! names the cause and the fix for the logs.

pub mod apikey;
pub mod captoken;
pub mod client_credentials;
mod http;
mod jws;
pub mod keys;
pub mod oidc;
pub mod principal;
pub mod replay;
mod token_error;

pub use apikey::{ApiKey, ApiKeyError, ApiKeyHash, ApiKeyId, ApiKeyPlain, GeneratedApiKey};
pub use captoken::{CapGrant, CapTokenClaims, CapTokenMinter, CapTokenVerifier, MintedCapToken};
pub use client_credentials::{
    ClientCredentials, ClientCredentialsError, TokenRequest, discover_token_endpoint,
};
pub use http::describe_reqwest;
pub use jsonwebtoken::Algorithm;
pub use jsonwebtoken::jwk::{Jwk, JwkSet};
pub use keys::{KeyringKind, KeyringLoadError, load_keyring};
pub use oidc::{
    AuthError, ClaimMapping, HttpJwksSource, JwksSource, OidcConfigError, OidcSettings,
    OidcValidator, StaticJwksSource,
};
pub use principal::{PrincipalClaims, PrincipalSigner, PrincipalVerifier};
pub use replay::{AnyReplayGuard, MemoryReplayGuard, RedisReplayGuard, ReplayError, ReplayGuard};
pub use token_error::{IdentityError, VerifyError};

/// Makes sure `jsonwebtoken` has a crypto provider.
///
/// `jsonwebtoken` 11 picks its provider from crate features, and if feature
/// unification ever enables a second backend in this workspace it would pick
/// a provider that panics. Installing the RustCrypto provider explicitly,
/// once, before the first use, keeps verification working either way. A
/// provider installed earlier by someone else is left in place.
pub(crate) fn ensure_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
    });
}
