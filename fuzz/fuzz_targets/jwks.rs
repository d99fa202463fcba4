//! JWKS documents, as fetched from the identity provider: parsing, the
//! conversion of each key into a verifying key, and key selection by `kid`.
//!
//! Properties: a parsed set serialises and parses back to as many keys;
//! a token signed with a fixed Ed25519 key validates against the fuzzed set
//! only if the set really holds that public key under the token's `kid`.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

use aibox_identity::oidc::parse_jwks;
use aibox_identity::{Algorithm, OidcSettings, OidcValidator, StaticJwksSource};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::EncodingKey;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk};
use libfuzzer_sys::fuzz_target;

const ISSUER: &str = "https://idp.example.com/realms/acme";
const NOW: u64 = 1_750_000_000;

/// The PKCS#8 v1 prefix of an Ed25519 private key (RFC 8410).
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

struct Fixture {
    rt: tokio::runtime::Runtime,
    key: EncodingKey,
    public_x: String,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        // The verifiers install it too, but the JWK below is made first.
        let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
        let mut der = ED25519_PKCS8_PREFIX.to_vec();
        der.extend_from_slice(&[7u8; 32]);
        let key = EncodingKey::from_ed_der(&der);
        let jwk = Jwk::from_encoding_key(&key, Algorithm::EdDSA).expect("jwk");
        let AlgorithmParameters::OctetKeyPair(okp) = &jwk.algorithm else {
            unreachable!("an Ed25519 JWK is an OKP")
        };
        Fixture {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("runtime"),
            public_x: okp.x.clone(),
            key,
        }
    })
}

fn token(key: &EncodingKey, kid: &str) -> String {
    let header = serde_json::json!({"alg": "EdDSA", "kid": kid, "typ": "JWT"});
    let claims = serde_json::json!({
        "iss": ISSUER, "aud": "aibox-gateway", "sub": "alice", "tenant": "acme",
        "exp": NOW + 300,
    });
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let sig = jsonwebtoken::crypto::sign(input.as_bytes(), key, Algorithm::EdDSA).expect("sign");
    format!("{input}.{sig}")
}

fuzz_target!(|data: &[u8]| {
    let Ok(set) = parse_jwks(data) else {
        return;
    };
    let again = serde_json::to_vec(&set).expect("a parsed JWKS serialises");
    let back = parse_jwks(&again).expect("a serialised JWKS parses");
    assert_eq!(back.keys.len(), set.keys.len(), "keys lost in a round trip");

    let f = fixture();
    let kids: Vec<String> = set
        .keys
        .iter()
        .filter_map(|k| k.common.key_id.clone())
        .take(4)
        .collect();
    let mut settings = OidcSettings::new(ISSUER);
    settings.audiences = vec!["aibox-gateway".into()];
    settings.algorithms = vec![
        Algorithm::RS256,
        Algorithm::PS256,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ];
    let Ok(v) = OidcValidator::with_source(settings, StaticJwksSource::new(set.clone())) else {
        return;
    };
    if f.rt.block_on(v.preload()).is_err() {
        return;
    }
    let now = UNIX_EPOCH + Duration::from_secs(NOW);
    for kid in kids.iter().map(String::as_str).chain(["", "missing"]) {
        if f.rt.block_on(v.validate(&token(&f.key, kid), now)).is_ok() {
            let holds = set.keys.iter().any(|k| {
                k.common.key_id.as_deref() == Some(kid)
                    && matches!(&k.algorithm, AlgorithmParameters::OctetKeyPair(p) if p.x == f.public_x)
            });
            assert!(
                holds,
                "a token validated against a JWKS without its key (kid {kid:?})"
            );
        }
    }
});
