//! JWT validation: OIDC access tokens (the bearer credential of every API
//! call), the `X-Aibox-Principal` JWS and CapTokens.
//!
//! The first byte picks the shape of the input, so that the fuzzer reaches
//! past the signature check too:
//! - 0: the whole rest is a token, given to all three verifiers;
//! - 1: the rest is an OIDC payload (claims JSON), signed with the trusted
//!   Ed25519 key under a good header: validation may refuse the claims but
//!   never the signature;
//! - 2: the rest is a JOSE header, with good claims, signed with the
//!   trusted key;
//! - 3: the rest is principal/CapToken claims, signed HS256 with the
//!   keyring's key: the verifiers may refuse the claims, never the signature.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aibox_core::keyring::{KeyEntry, Keyring};
use aibox_identity::{
    Algorithm, AuthError, CapTokenVerifier, OidcSettings, OidcValidator, PrincipalVerifier,
    StaticJwksSource, VerifyError,
};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::EncodingKey;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use libfuzzer_sys::fuzz_target;

const ISSUER: &str = "https://idp.example.com/realms/acme";
const AUDIENCE: &str = "aibox-gateway";
const NOW: u64 = 1_750_000_000;
const KID: &str = "ed-1";

/// The PKCS#8 v1 prefix of an Ed25519 private key (RFC 8410).
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

struct Fixture {
    rt: tokio::runtime::Runtime,
    oidc: OidcValidator<StaticJwksSource>,
    ed: EncodingKey,
    hmac: EncodingKey,
    principal: PrincipalVerifier,
    captoken: CapTokenVerifier,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        // The verifiers install it too, but the JWK below is made first.
        let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
        let mut der = ED25519_PKCS8_PREFIX.to_vec();
        der.extend_from_slice(&[7u8; 32]);
        let ed = EncodingKey::from_ed_der(&der);
        let mut jwk = Jwk::from_encoding_key(&ed, Algorithm::EdDSA).expect("jwk");
        jwk.common.key_id = Some(KID.into());
        let mut settings = OidcSettings::new(ISSUER);
        settings.audiences = vec![AUDIENCE.into()];
        settings.algorithms.push(Algorithm::EdDSA);
        let oidc =
            OidcValidator::with_source(settings, StaticJwksSource::new(JwkSet { keys: vec![jwk] }))
                .expect("validator");
        let secret = vec![42u8; 32];
        let keyring =
            Keyring::from_entries(vec![KeyEntry::new("k1", secret.clone()).expect("entry")])
                .expect("keyring");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        rt.block_on(oidc.preload()).expect("preload");
        Fixture {
            rt,
            oidc,
            ed,
            hmac: EncodingKey::from_secret(&secret),
            principal: PrincipalVerifier::hmac(&keyring),
            captoken: CapTokenVerifier::new(&keyring),
        }
    })
}

fn sign(header: &[u8], payload: &[u8], key: &EncodingKey, alg: Algorithm) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let sig = jsonwebtoken::crypto::sign(input.as_bytes(), key, alg).expect("sign");
    format!("{input}.{sig}")
}

fn good_claims() -> Vec<u8> {
    serde_json::json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "tenant": "acme",
        "exp": NOW + 300, "iat": NOW - 5,
    })
    .to_string()
    .into_bytes()
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let f = fixture();
    let now = UNIX_EPOCH + Duration::from_secs(NOW);
    let validate = |token: &str| f.rt.block_on(f.oidc.validate(token, now));
    match mode % 4 {
        0 => {
            let token = String::from_utf8_lossy(rest);
            let _ = validate(&token);
            let _ = f.principal.verify(&token, "downstream", now);
            let _ = f.captoken.verify(&token, None, "tools/call", now);
            let _ = f
                .captoken
                .verify(&token, None, "tools/call", SystemTime::now());
        }
        1 => {
            let header = br#"{"alg":"EdDSA","kid":"ed-1","typ":"JWT"}"#;
            let token = sign(header, rest, &f.ed, Algorithm::EdDSA);
            if let Err(e) = validate(&token) {
                // A token over the size limit is refused before anything else.
                assert!(
                    !matches!(e, AuthError::BadSignature | AuthError::UnknownKid { .. }),
                    "a correctly signed token was refused as {e:?}"
                );
            }
        }
        2 => {
            let token = sign(rest, &good_claims(), &f.ed, Algorithm::EdDSA);
            if validate(&token).is_ok() {
                // Only the trusted key's kid and its algorithm may pass.
                let header: serde_json::Value =
                    serde_json::from_slice(rest).expect("a passing header is JSON");
                assert_eq!(header["alg"], "EdDSA");
                assert_eq!(header["kid"], KID);
            }
        }
        _ => {
            let header = br#"{"alg":"HS256","kid":"k1","typ":"JWT"}"#;
            let token = sign(header, rest, &f.hmac, Algorithm::HS256);
            for result in [
                f.principal.verify(&token, "downstream", now).map(|_| ()),
                f.captoken
                    .verify(&token, None, "tools/call", now)
                    .map(|_| ()),
            ] {
                if let Err(e) = result {
                    assert!(
                        !matches!(e, VerifyError::BadSignature { .. }),
                        "a correctly signed token was refused as {e:?}"
                    );
                }
            }
        }
    }
});
