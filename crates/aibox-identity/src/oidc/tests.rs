//! Tests of the OIDC validator: an attack table with real keys, claim
//! mapping, JWKS rotation and refresh limits, and the HTTP key source against
//! a local server.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aibox_core::{AuthMethod, TenantId};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{Jwk, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};

use super::*;

const ISSUER: &str = "https://kc.example.com:8443/realms/acme";
const AUDIENCE: &str = "aibox-gateway";
const NOW: u64 = 1_750_000_000;

const RSA_PEM: &str = include_str!("../../testdata/provider-rsa2048.pem");
const RSA_PUB_PEM: &str = include_str!("../../testdata/provider-rsa2048.pub.pem");
const P256_PEM: &str = include_str!("../../testdata/provider-p256.pem");
const P384_PEM: &str = include_str!("../../testdata/provider-p384.pem");
const ATTACKER_P256_PEM: &str = include_str!("../../testdata/attacker-p256.pem");

/// The PKCS#8 v1 prefix of an Ed25519 private key (RFC 8410), followed by
/// the 32-byte seed.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

fn ed_key(seed: u8) -> EncodingKey {
    let mut der = ED25519_PKCS8_PREFIX.to_vec();
    der.extend_from_slice(&[seed; 32]);
    EncodingKey::from_ed_der(&der)
}

struct Keys {
    rsa: EncodingKey,
    p256: EncodingKey,
    p384: EncodingKey,
    ed: EncodingKey,
    attacker_p256: EncodingKey,
    attacker_ed: EncodingKey,
}

fn keys() -> Keys {
    crate::ensure_crypto_provider();
    Keys {
        rsa: EncodingKey::from_rsa_pem(RSA_PEM.as_bytes()).unwrap(),
        p256: EncodingKey::from_ec_pem(P256_PEM.as_bytes()).unwrap(),
        p384: EncodingKey::from_ec_pem(P384_PEM.as_bytes()).unwrap(),
        ed: ed_key(7),
        attacker_p256: EncodingKey::from_ec_pem(ATTACKER_P256_PEM.as_bytes()).unwrap(),
        attacker_ed: ed_key(66),
    }
}

/// The public JWK of `key`, with `kid` and `use: sig`; `alg` stated unless
/// `None`.
fn jwk(key: &EncodingKey, alg: Algorithm, kid: &str, state_alg: bool) -> Jwk {
    let mut j = Jwk::from_encoding_key(key, alg).unwrap();
    j.common.key_id = Some(kid.into());
    j.common.public_key_use = Some(PublicKeyUse::Signature);
    if !state_alg {
        j.common.key_algorithm = None;
    }
    j
}

/// The provider's JWKS: an RSA key stating RS256, the same RSA key without
/// `alg` (so PS256 may use it), P-256, P-384 and Ed25519 keys.
fn provider_jwks(k: &Keys) -> JwkSet {
    JwkSet {
        keys: vec![
            jwk(&k.rsa, Algorithm::RS256, "rsa-1", true),
            jwk(&k.rsa, Algorithm::RS256, "rsa-any", false),
            jwk(&k.p256, Algorithm::ES256, "ec-1", true),
            jwk(&k.p384, Algorithm::ES384, "ec384-1", true),
            jwk(&k.ed, Algorithm::EdDSA, "ed-1", true),
        ],
    }
}

fn b64json(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

/// Signs `header.claims` with `key` under `alg`, whatever the header says.
fn sign_raw(header: &Value, claims: &Value, key: &EncodingKey, alg: Algorithm) -> String {
    let input = format!("{}.{}", b64json(header), b64json(claims));
    let sig = jsonwebtoken::crypto::sign(input.as_bytes(), key, alg).unwrap();
    format!("{input}.{sig}")
}

fn header(alg: &str, kid: &str) -> Value {
    json!({"alg": alg, "typ": "JWT", "kid": kid})
}

/// Claims shaped like a Keycloak access token.
fn keycloak_claims() -> Value {
    json!({
        "exp": NOW + 300,
        "iat": NOW - 5,
        "auth_time": NOW - 60,
        "jti": "onrtac:1b0f3c4e-6d0e-4a55-9d0e-8f7c2f3b9a11",
        "iss": ISSUER,
        "aud": [AUDIENCE, "account"],
        "sub": "f1d2c3b4-a5e6-4789-9abc-def012345678",
        "typ": "Bearer",
        "azp": "open-webui",
        "sid": "2a3b4c5d",
        "acr": "1",
        "realm_access": {"roles": ["offline_access", "uma_authorization", "ai-user"]},
        "resource_access": {"account": {"roles": ["manage-account"]}},
        "scope": "openid profile email",
        "email_verified": true,
        "preferred_username": "alice",
        "email": "alice@example.com",
        "tenant": "acme"
    })
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

fn without(mut claims: Value, key: &str) -> Value {
    claims.as_object_mut().unwrap().remove(key);
    claims
}

fn settings() -> OidcSettings {
    let mut s = OidcSettings::new(ISSUER);
    s.audiences = vec![AUDIENCE.into()];
    s
}

fn validator(k: &Keys, s: OidcSettings) -> OidcValidator<Arc<StaticJwksSource>> {
    OidcValidator::with_source(s, Arc::new(StaticJwksSource::new(provider_jwks(k)))).unwrap()
}

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

fn code(r: &Result<aibox_core::Principal, AuthError>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(e) => e.code(),
    }
}

#[tokio::test]
async fn attack_table() {
    let k = keys();
    let v = validator(&k, settings());
    let kc = keycloak_claims();
    let rs = |claims: &Value| sign_raw(&header("RS256", "rsa-1"), claims, &k.rsa, Algorithm::RS256);
    let es = |claims: &Value| sign_raw(&header("ES256", "ec-1"), claims, &k.p256, Algorithm::ES256);
    let good_rs = rs(&kc);
    let good_es = es(&kc);
    let good_parts: Vec<&str> = good_es.split('.').collect();

    // Tampering with a valid token.
    let tampered_payload = format!(
        "{}.{}.{}",
        good_parts[0],
        b64json(&with(kc.clone(), "tenant", json!("other"))),
        good_parts[2]
    );
    let mut sig = URL_SAFE_NO_PAD.decode(good_parts[2]).unwrap();
    sig[10] ^= 1;
    let tampered_sig = format!(
        "{}.{}.{}",
        good_parts[0],
        good_parts[1],
        URL_SAFE_NO_PAD.encode(&sig)
    );
    // The attacker's public key, embedded in headers that name key sources.
    let attacker_jwk =
        serde_json::to_value(jwk(&k.attacker_p256, Algorithm::ES256, "ec-1", true)).unwrap();
    let attacker_ed_jwk =
        serde_json::to_value(jwk(&k.attacker_ed, Algorithm::EdDSA, "evil", true)).unwrap();
    let jwk_header_real_kid = sign_raw(
        &json!({"alg":"ES256","kid":"ec-1","jwk":attacker_jwk}),
        &kc,
        &k.attacker_p256,
        Algorithm::ES256,
    );
    let jwk_header_own_kid = sign_raw(
        &json!({"alg":"EdDSA","kid":"evil","jwk":attacker_ed_jwk}),
        &kc,
        &k.attacker_ed,
        Algorithm::EdDSA,
    );
    let jwk_header_no_kid = sign_raw(
        &json!({"alg":"ES256","jwk":attacker_jwk}),
        &kc,
        &k.attacker_p256,
        Algorithm::ES256,
    );
    let jku = sign_raw(
        &json!({"alg":"ES256","kid":"ec-1","jku":"https://attacker.example/jwks.json"}),
        &kc,
        &k.attacker_p256,
        Algorithm::ES256,
    );
    let jku_own_kid = sign_raw(
        &json!({"alg":"ES256","kid":"attacker-1","jku":"https://attacker.example/jwks.json"}),
        &kc,
        &k.attacker_p256,
        Algorithm::ES256,
    );
    let x5u = sign_raw(
        &json!({"alg":"ES256","kid":"ec-1","x5u":"https://attacker.example/cert.pem"}),
        &kc,
        &k.attacker_p256,
        Algorithm::ES256,
    );
    let x5c = sign_raw(
        &json!({"alg":"ES256","kid":"ec-1","x5c":["MIIBszCCAVmgAwIBAgIUQ=="]}),
        &kc,
        &k.attacker_p256,
        Algorithm::ES256,
    );
    // Key confusion: HS256 keyed with the provider's public key material.
    let hs_pem = sign_raw(
        &header("HS256", "rsa-1"),
        &kc,
        &EncodingKey::from_secret(RSA_PUB_PEM.as_bytes()),
        Algorithm::HS256,
    );
    let rsa_n = match &jwk(&k.rsa, Algorithm::RS256, "x", true).algorithm {
        jsonwebtoken::jwk::AlgorithmParameters::RSA(p) => p.n.clone(),
        _ => unreachable!(),
    };
    let hs_n = sign_raw(
        &header("HS256", "rsa-1"),
        &kc,
        &EncodingKey::from_secret(rsa_n.as_bytes()),
        Algorithm::HS256,
    );
    let hs512 = sign_raw(
        &header("HS512", "rsa-1"),
        &kc,
        &EncodingKey::from_secret(RSA_PUB_PEM.as_bytes()),
        Algorithm::HS512,
    );
    let none_empty_sig = format!("{}.{}.", b64json(&header("none", "rsa-1")), b64json(&kc));
    let none_with_sig = format!(
        "{}.{}.{}",
        b64json(&header("none", "rsa-1")),
        b64json(&kc),
        good_parts[2]
    );
    let none_upper = format!(
        "{}.{}.{}",
        b64json(&header("NONE", "rsa-1")),
        b64json(&kc),
        good_parts[2]
    );
    let no_alg = sign_raw(&json!({"kid":"ec-1"}), &kc, &k.p256, Algorithm::ES256);
    let dup_alg_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256","alg":"none","kid":"ec-1"}"#);
    let dup_alg = format!("{dup_alg_header}.{}.{}", good_parts[1], good_parts[2]);
    let crit = sign_raw(
        &json!({"alg":"ES256","kid":"ec-1","crit":["b64"],"b64":false}),
        &kc,
        &k.p256,
        Algorithm::ES256,
    );
    let payload_not_json = {
        let input = format!(
            "{}.{}",
            b64json(&header("ES256", "ec-1")),
            URL_SAFE_NO_PAD.encode(b"not json")
        );
        let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &k.p256, Algorithm::ES256).unwrap();
        format!("{input}.{sig}")
    };
    let header_not_json = format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(b"{alg"),
        good_parts[1],
        good_parts[2]
    );
    let oversized = sign_raw(
        &header("ES256", "ec-1"),
        &with(kc.clone(), "pad", json!("x".repeat(9000))),
        &k.p256,
        Algorithm::ES256,
    );

    let es_with = |key: &str, value: Value| es(&with(kc.clone(), key, value));
    let es_without = |key: &str| es(&without(kc.clone(), key));
    let sign_kid = |alg: &str, kid: &str, key: &EncodingKey, a: Algorithm| {
        sign_raw(&header(alg, kid), &kc, key, a)
    };

    let cases: Vec<(&str, String, &str)> = vec![
        // Accepted tokens.
        ("valid RS256", good_rs.clone(), "ok"),
        ("valid ES256", good_es.clone(), "ok"),
        (
            "valid EdDSA",
            sign_kid("EdDSA", "ed-1", &k.ed, Algorithm::EdDSA),
            "ok",
        ),
        (
            "valid PS256 with a JWK without alg",
            sign_kid("PS256", "rsa-any", &k.rsa, Algorithm::PS256),
            "ok",
        ),
        (
            "valid RS256 with a JWK without alg",
            sign_kid("RS256", "rsa-any", &k.rsa, Algorithm::RS256),
            "ok",
        ),
        ("aud as a string", es_with("aud", json!(AUDIENCE)), "ok"),
        (
            "no aud but azp matches",
            es(&with(without(kc.clone(), "aud"), "azp", json!(AUDIENCE))),
            "ok",
        ),
        ("exp inside leeway", es_with("exp", json!(NOW - 29)), "ok"),
        ("iat inside leeway", es_with("iat", json!(NOW + 29)), "ok"),
        (
            "fractional exp",
            es_with("exp", json!((NOW + 100) as f64 + 0.5)),
            "ok",
        ),
        // alg none and symmetric algorithms.
        ("alg none, empty signature", none_empty_sig, "malformed"),
        (
            "alg none, with a signature",
            none_with_sig,
            "algorithm_not_allowed",
        ),
        ("alg NONE", none_upper, "algorithm_not_allowed"),
        ("alg missing", no_alg, "malformed"),
        (
            "HS256 keyed with the RSA public key PEM",
            hs_pem,
            "algorithm_not_allowed",
        ),
        (
            "HS256 keyed with the JWKS modulus",
            hs_n,
            "algorithm_not_allowed",
        ),
        (
            "HS512 keyed with the RSA public key PEM",
            hs512,
            "algorithm_not_allowed",
        ),
        (
            "ES384 not in the allow-list",
            sign_kid("ES384", "ec384-1", &k.p384, Algorithm::ES384),
            "algorithm_not_allowed",
        ),
        ("duplicate alg in header", dup_alg, "malformed"),
        // Time.
        ("expired", es_with("exp", json!(NOW - 31)), "expired"),
        ("exp missing", es_without("exp"), "missing_claim"),
        (
            "exp as a string",
            es_with("exp", json!("9999999999")),
            "bad_claim",
        ),
        ("exp negative", es_with("exp", json!(-1)), "bad_claim"),
        (
            "nbf in the future",
            es_with("nbf", json!(NOW + 31)),
            "not_yet_valid",
        ),
        ("nbf inside leeway", es_with("nbf", json!(NOW + 29)), "ok"),
        (
            "iat in the future",
            es_with("iat", json!(NOW + 31)),
            "issued_in_future",
        ),
        // Issuer: byte-for-byte.
        (
            "issuer with a trailing slash",
            es_with("iss", json!(format!("{ISSUER}/"))),
            "issuer_mismatch",
        ),
        (
            "issuer over http",
            es_with("iss", json!(ISSUER.replace("https://", "http://"))),
            "issuer_mismatch",
        ),
        (
            "issuer on another port",
            es_with("iss", json!(ISSUER.replace(":8443", ":443"))),
            "issuer_mismatch",
        ),
        (
            "issuer without port",
            es_with("iss", json!(ISSUER.replace(":8443", ""))),
            "issuer_mismatch",
        ),
        (
            "issuer of another realm",
            es_with("iss", json!(ISSUER.replace("acme", "master"))),
            "issuer_mismatch",
        ),
        (
            "issuer in other case",
            es_with("iss", json!(ISSUER.replace("kc.", "KC."))),
            "issuer_mismatch",
        ),
        ("issuer missing", es_without("iss"), "missing_claim"),
        (
            "issuer as an array",
            es_with("iss", json!([ISSUER])),
            "bad_claim",
        ),
        // Audience.
        (
            "wrong audience",
            es(&with(
                with(kc.clone(), "aud", json!(["account"])),
                "azp",
                json!("other"),
            )),
            "audience_mismatch",
        ),
        (
            "no aud and other azp",
            es(&without(without(kc.clone(), "aud"), "azp")),
            "audience_mismatch",
        ),
        (
            "aud with a number",
            es_with("aud", json!([AUDIENCE, 5])),
            "bad_claim",
        ),
        // Keys.
        (
            "unknown kid",
            sign_kid("ES256", "ec-2", &k.p256, Algorithm::ES256),
            "unknown_kid",
        ),
        (
            "no kid",
            sign_raw(&json!({"alg":"ES256"}), &kc, &k.p256, Algorithm::ES256),
            "unknown_kid",
        ),
        (
            "kid with path traversal",
            sign_kid("ES256", "../../etc/passwd", &k.p256, Algorithm::ES256),
            "unknown_kid",
        ),
        (
            "kid with SQL and NUL",
            sign_kid("ES256", "' OR 1=1 --\u{0}", &k.p256, Algorithm::ES256),
            "unknown_kid",
        ),
        (
            "kid that is a URL",
            sign_kid(
                "ES256",
                "https://attacker.example/k",
                &k.p256,
                Algorithm::ES256,
            ),
            "unknown_kid",
        ),
        (
            "kid very long",
            sign_kid("ES256", &"k".repeat(300), &k.p256, Algorithm::ES256),
            "unknown_kid",
        ),
        (
            "PS256 with a JWK stating RS256",
            sign_kid("PS256", "rsa-1", &k.rsa, Algorithm::PS256),
            "key_mismatch",
        ),
        (
            "ES256 header on an RSA key",
            sign_kid("ES256", "rsa-1", &k.p256, Algorithm::ES256),
            "key_mismatch",
        ),
        (
            "ES256 header on a P-384 key",
            sign_kid("ES256", "ec384-1", &k.p256, Algorithm::ES256),
            "key_mismatch",
        ),
        (
            "EdDSA header on an EC key",
            sign_kid("EdDSA", "ec-1", &k.ed, Algorithm::EdDSA),
            "key_mismatch",
        ),
        (
            "RS256 header on an Ed25519 key",
            sign_kid("RS256", "ed-1", &k.rsa, Algorithm::RS256),
            "key_mismatch",
        ),
        (
            "jwk header with the attacker key, real kid",
            jwk_header_real_kid,
            "bad_signature",
        ),
        (
            "jwk header with the attacker key, own kid",
            jwk_header_own_kid,
            "unknown_kid",
        ),
        (
            "jwk header with the attacker key, no kid",
            jwk_header_no_kid,
            "unknown_kid",
        ),
        ("jku header, real kid", jku, "bad_signature"),
        ("jku header, attacker kid", jku_own_kid, "unknown_kid"),
        ("x5u header", x5u, "bad_signature"),
        ("x5c header", x5c, "bad_signature"),
        (
            "signed by the attacker with a real kid",
            sign_kid("ES256", "ec-1", &k.attacker_p256, Algorithm::ES256),
            "bad_signature",
        ),
        // Integrity and shape.
        ("tampered payload", tampered_payload, "bad_signature"),
        ("tampered signature", tampered_sig, "bad_signature"),
        (
            "truncated signature",
            good_es[..good_es.len() - 10].to_owned(),
            "bad_signature",
        ),
        (
            "signature removed",
            format!("{}.{}.", good_parts[0], good_parts[1]),
            "malformed",
        ),
        (
            "two parts",
            format!("{}.{}", good_parts[0], good_parts[1]),
            "malformed",
        ),
        ("five parts (JWE)", format!("{good_es}.a.b"), "malformed"),
        ("padding", format!("{good_es}="), "malformed"),
        ("whitespace", format!(" {good_es}"), "malformed"),
        ("crit header", crit, "malformed"),
        ("header not JSON", header_not_json, "malformed"),
        ("payload not JSON", payload_not_json, "malformed"),
        ("oversized", oversized, "too_large"),
        ("empty", String::new(), "missing"),
        (
            "Keycloak ID token",
            es_with("typ", json!("ID")),
            "bad_claim",
        ),
        (
            "Keycloak refresh token type",
            es_with("typ", json!("Refresh")),
            "bad_claim",
        ),
    ];
    let mut failures = Vec::new();
    for (name, token, want) in &cases {
        let got = v.validate(token, at(NOW)).await;
        if code(&got) != *want {
            failures.push(format!("{name}: want {want}, got {got:?}"));
        }
        if let Err(e) = &got {
            // Client-facing text never quotes the token, and server-side
            // classification is for JWKS failures only.
            if token.len() > 40 {
                assert!(!e.to_string().contains(&token[..40]), "{name}");
            }
            assert!(!e.is_server_side(), "{name}");
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    // Nothing in the table made the validator fetch anything but the
    // configured JWKS, and unknown kids refetched it at most once.
    assert!(
        v.source().fetches() <= 2,
        "fetches: {}",
        v.source().fetches()
    );
}

#[tokio::test]
async fn keycloak_claims_map_to_the_principal() {
    let k = keys();
    let v = validator(&k, settings());
    let token = sign_raw(
        &header("RS256", "rsa-1"),
        &keycloak_claims(),
        &k.rsa,
        Algorithm::RS256,
    );
    let p = v.validate(&token, at(NOW)).await.unwrap();
    assert_eq!(p.user.as_str(), "alice");
    assert_eq!(p.tenant.as_str(), "acme");
    assert_eq!(p.roles, ["offline_access", "uma_authorization", "ai-user"]);
    assert_eq!(
        p.auth,
        AuthMethod::Oidc {
            issuer: ISSUER.into(),
            client_id: Some("open-webui".into())
        }
    );
}

#[tokio::test]
async fn claim_mapping_table() {
    let k = keys();
    let kc = keycloak_claims();
    let sign = |c: &Value| sign_raw(&header("ES256", "ec-1"), c, &k.p256, Algorithm::ES256);
    let plain = settings();
    let mut defaults = settings();
    defaults.claims.default_tenant = Some(TenantId::new("default").unwrap());
    let mut groups = settings();
    groups.claims.tenant_from_group_prefix = Some("/tenants/".into());
    let mut namespaced = settings();
    namespaced.claims.roles_claim = "https://aibox.dev/roles".into();
    namespaced.claims.user_claims = vec!["email".into()];
    namespaced.claims.tenant_claim = "org.id".into();

    // (name, settings, claims, Ok((user, tenant, roles)) or Err(code))
    type Want = Result<(&'static str, &'static str, Vec<&'static str>), &'static str>;
    let cases: Vec<(&str, &OidcSettings, Value, Want)> = vec![
        (
            "no preferred_username falls back to sub",
            &defaults,
            without(kc.clone(), "preferred_username"),
            Ok((
                "f1d2c3b4-a5e6-4789-9abc-def012345678",
                "acme",
                vec!["offline_access", "uma_authorization", "ai-user"],
            )),
        ),
        (
            "no user claim at all",
            &defaults,
            without(without(kc.clone(), "preferred_username"), "sub"),
            Err("missing_claim"),
        ),
        (
            "username with a space",
            &defaults,
            with(kc.clone(), "preferred_username", json!("Alice Smith")),
            Err("bad_claim"),
        ),
        (
            "username not a string",
            &defaults,
            with(kc.clone(), "preferred_username", json!(["a"])),
            Err("bad_claim"),
        ),
        (
            "no tenant, default set",
            &defaults,
            without(kc.clone(), "tenant"),
            Ok((
                "alice",
                "default",
                vec!["offline_access", "uma_authorization", "ai-user"],
            )),
        ),
        (
            "no tenant, no default",
            &plain,
            without(kc.clone(), "tenant"),
            Err("missing_claim"),
        ),
        (
            "tenant with a separator",
            &defaults,
            with(kc.clone(), "tenant", json!("acme:evil")),
            Err("bad_claim"),
        ),
        (
            "tenant not a string",
            &defaults,
            with(kc.clone(), "tenant", json!(7)),
            Err("bad_claim"),
        ),
        (
            "tenant from group",
            &groups,
            with(
                without(kc.clone(), "tenant"),
                "groups",
                json!(["/staff", "/tenants/beta/admins"]),
            ),
            Ok((
                "alice",
                "beta",
                vec!["offline_access", "uma_authorization", "ai-user"],
            )),
        ),
        (
            "tenant claim wins over group",
            &groups,
            with(kc.clone(), "groups", json!(["/tenants/beta"])),
            Ok((
                "alice",
                "acme",
                vec!["offline_access", "uma_authorization", "ai-user"],
            )),
        ),
        (
            "no matching group",
            &groups,
            with(without(kc.clone(), "tenant"), "groups", json!(["/staff"])),
            Err("missing_claim"),
        ),
        (
            "group tenant with bad characters",
            &groups,
            with(
                without(kc.clone(), "tenant"),
                "groups",
                json!(["/tenants/a b"]),
            ),
            Err("bad_claim"),
        ),
        (
            "groups not an array",
            &groups,
            with(
                without(kc.clone(), "tenant"),
                "groups",
                json!("/tenants/beta"),
            ),
            Err("bad_claim"),
        ),
        (
            "no roles",
            &defaults,
            without(kc.clone(), "realm_access"),
            Ok(("alice", "acme", vec![])),
        ),
        (
            "roles not an array",
            &defaults,
            with(kc.clone(), "realm_access", json!({"roles": "admin"})),
            Err("bad_claim"),
        ),
        (
            "role not a string",
            &defaults,
            with(kc.clone(), "realm_access", json!({"roles": ["a", 1]})),
            Err("bad_claim"),
        ),
        (
            "role with a newline",
            &defaults,
            with(kc.clone(), "realm_access", json!({"roles": ["a\nb"]})),
            Err("bad_claim"),
        ),
        (
            "too many roles",
            &defaults,
            with(
                kc.clone(),
                "realm_access",
                json!({"roles": (0..300).map(|i| format!("r{i}")).collect::<Vec<_>>()}),
            ),
            Err("bad_claim"),
        ),
        (
            "namespaced claims and dotted paths",
            &namespaced,
            with(
                with(kc.clone(), "https://aibox.dev/roles", json!(["ops"])),
                "org",
                json!({"id": "org-7"}),
            ),
            Ok(("alice@example.com", "org-7", vec!["ops"])),
        ),
        (
            "azp not a string",
            &defaults,
            with(kc.clone(), "azp", json!(1)),
            Err("bad_claim"),
        ),
    ];
    for (name, s, claims, want) in cases {
        let v = validator(&k, s.clone());
        let got = v.validate(&sign(&claims), at(NOW)).await;
        match (&got, &want) {
            (Ok(p), Ok((user, tenant, roles))) => {
                assert_eq!(p.user.as_str(), *user, "{name}");
                assert_eq!(p.tenant.as_str(), *tenant, "{name}");
                assert_eq!(&p.roles, roles, "{name}");
            }
            (Err(e), Err(c)) => assert_eq!(e.code(), *c, "{name}: {e:?}"),
            _ => panic!("{name}: want {want:?}, got {got:?}"),
        }
    }
}

#[tokio::test]
async fn audience_not_checked_when_none_configured() {
    let k = keys();
    let mut s = settings();
    s.audiences.clear();
    let v = validator(&k, s);
    let c = without(without(keycloak_claims(), "aud"), "azp");
    let token = sign_raw(&header("ES256", "ec-1"), &c, &k.p256, Algorithm::ES256);
    let p = v.validate(&token, at(NOW)).await.unwrap();
    assert_eq!(
        p.auth,
        AuthMethod::Oidc {
            issuer: ISSUER.into(),
            client_id: None
        }
    );
}

#[tokio::test]
async fn issuer_mismatch_hint_names_the_fix() {
    let k = keys();
    let v = validator(&k, settings());
    let token = sign_raw(
        &header("ES256", "ec-1"),
        &with(keycloak_claims(), "iss", json!(format!("{ISSUER}/"))),
        &k.p256,
        Algorithm::ES256,
    );
    let e = v.validate(&token, at(NOW)).await.unwrap_err();
    assert_eq!(e.to_string(), "the token issuer is not accepted");
    let hint = e.operator_hint();
    assert!(hint.contains("the gateway issuer must match the token issuer exactly, including scheme, host, port and path; set auth.issuer"), "{hint}");
    assert!(hint.contains(&format!("{ISSUER}/")));
}

/// A token signed with the given Ed25519 key under `kid`.
fn ed_token(key: &EncodingKey, kid: &str) -> String {
    sign_raw(
        &header("EdDSA", kid),
        &keycloak_claims(),
        key,
        Algorithm::EdDSA,
    )
}

fn ed_jwks(keys: &[(&EncodingKey, &str)]) -> JwkSet {
    JwkSet {
        keys: keys
            .iter()
            .map(|(k, kid)| jwk(k, Algorithm::EdDSA, kid, true))
            .collect(),
    }
}

fn rotation_validator(
    source: &Arc<StaticJwksSource>,
    tweak: impl FnOnce(&mut OidcSettings),
) -> OidcValidator<Arc<StaticJwksSource>> {
    let mut s = settings();
    tweak(&mut s);
    OidcValidator::with_source(s, source.clone()).unwrap()
}

#[tokio::test(start_paused = true)]
async fn rotation_new_kid_validates_after_refresh_and_removed_kid_stops() {
    crate::ensure_crypto_provider();
    let (k1, k2) = (ed_key(1), ed_key(2));
    let source = Arc::new(StaticJwksSource::new(ed_jwks(&[(&k1, "k1")])));
    let v = rotation_validator(&source, |_| {});
    assert!(v.validate(&ed_token(&k1, "k1"), at(NOW)).await.is_ok());
    assert_eq!(source.fetches(), 1);

    // The provider rotates: k2 replaces k1.
    source.set(ed_jwks(&[(&k2, "k2")]));
    // Inside the refresh interval the unknown kid does not refetch.
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(
        code(&v.validate(&ed_token(&k2, "k2"), at(NOW)).await),
        "unknown_kid"
    );
    assert_eq!(source.fetches(), 1);
    // k1 still validates from the cache until the next refresh.
    assert!(v.validate(&ed_token(&k1, "k1"), at(NOW)).await.is_ok());

    tokio::time::advance(Duration::from_secs(21)).await;
    assert!(v.validate(&ed_token(&k2, "k2"), at(NOW)).await.is_ok());
    assert_eq!(source.fetches(), 2);
    // k1 disappeared from the provider's JWKS: it no longer validates.
    assert_eq!(
        code(&v.validate(&ed_token(&k1, "k1"), at(NOW)).await),
        "unknown_kid"
    );
    assert_eq!(source.fetches(), 2);
}

#[tokio::test(start_paused = true)]
async fn unknown_kids_are_rate_limited_sequentially_and_concurrently() {
    crate::ensure_crypto_provider();
    let k1 = ed_key(1);
    let source = Arc::new(StaticJwksSource::new(ed_jwks(&[(&k1, "k1")])));
    let v = Arc::new(rotation_validator(&source, |_| {}));
    assert!(v.validate(&ed_token(&k1, "k1"), at(NOW)).await.is_ok());
    assert_eq!(source.fetches(), 1);

    // 100 random kids, one after another, inside one interval.
    tokio::time::advance(Duration::from_secs(31)).await;
    for _ in 0..100 {
        let mut b = [0u8; 12];
        getrandom::fill(&mut b).unwrap();
        let kid = URL_SAFE_NO_PAD.encode(b);
        assert_eq!(
            code(&v.validate(&ed_token(&k1, &kid), at(NOW)).await),
            "unknown_kid"
        );
    }
    assert_eq!(source.fetches(), 2, "one refetch for 100 unknown kids");

    // 100 random kids at once, in the next interval: single-flight.
    tokio::time::advance(Duration::from_secs(31)).await;
    let tokens: Vec<String> = (0..100)
        .map(|i| ed_token(&k1, &format!("random-{i}")))
        .collect();
    let mut tasks = tokio::task::JoinSet::new();
    for t in tokens {
        let v = v.clone();
        tasks.spawn(async move { code(&v.validate(&t, at(NOW)).await) });
    }
    while let Some(r) = tasks.join_next().await {
        assert_eq!(r.unwrap(), "unknown_kid");
    }
    assert_eq!(
        source.fetches(),
        3,
        "one refetch for 100 concurrent unknown kids"
    );
    // Known kids kept validating throughout.
    assert!(v.validate(&ed_token(&k1, "k1"), at(NOW)).await.is_ok());
    assert_eq!(source.fetches(), 3);
}

#[tokio::test(start_paused = true)]
async fn concurrent_first_use_fetches_once() {
    crate::ensure_crypto_provider();
    let k1 = ed_key(1);
    let source = Arc::new(StaticJwksSource::new(ed_jwks(&[(&k1, "k1")])));
    let v = Arc::new(rotation_validator(&source, |_| {}));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let v = v.clone();
        let t = ed_token(&k1, "k1");
        tasks.spawn(async move { v.validate(&t, at(NOW)).await.is_ok() });
    }
    while let Some(r) = tasks.join_next().await {
        assert!(r.unwrap());
    }
    assert_eq!(source.fetches(), 1);
}

#[tokio::test(start_paused = true)]
async fn stale_jwks_is_refreshed_so_withdrawn_keys_stop() {
    crate::ensure_crypto_provider();
    let (k1, k2) = (ed_key(1), ed_key(2));
    let source = Arc::new(StaticJwksSource::new(ed_jwks(&[(&k1, "k1"), (&k2, "k2")])));
    let v = rotation_validator(&source, |s| s.jwks_max_age = Duration::from_secs(120));
    assert!(v.validate(&ed_token(&k1, "k1"), at(NOW)).await.is_ok());
    // The provider withdraws k1 (say it leaked) without adding a key.
    source.set(ed_jwks(&[(&k2, "k2")]));
    tokio::time::advance(Duration::from_secs(60)).await;
    assert!(v.validate(&ed_token(&k1, "k1"), at(NOW)).await.is_ok());
    tokio::time::advance(Duration::from_secs(61)).await;
    assert_eq!(
        code(&v.validate(&ed_token(&k1, "k1"), at(NOW)).await),
        "unknown_kid"
    );
    assert_eq!(source.fetches(), 2);
    assert!(v.validate(&ed_token(&k2, "k2"), at(NOW)).await.is_ok());

    // A stale set whose refresh fails keeps the old keys.
    source.set_failing(true);
    tokio::time::advance(Duration::from_secs(121)).await;
    assert!(v.validate(&ed_token(&k2, "k2"), at(NOW)).await.is_ok());
    assert_eq!(source.fetches(), 3);
}

#[tokio::test(start_paused = true)]
async fn unavailable_jwks_is_server_side_and_retried_after_a_pause() {
    crate::ensure_crypto_provider();
    let k1 = ed_key(1);
    let source = Arc::new(StaticJwksSource::new(ed_jwks(&[(&k1, "k1")])));
    source.set_failing(true);
    let v = rotation_validator(&source, |_| {});
    let token = ed_token(&k1, "k1");
    let e = v.validate(&token, at(NOW)).await.unwrap_err();
    assert!(e.is_server_side());
    assert!(e.operator_hint().contains("auth.jwks_url"));
    // Inside the retry pause the same error comes back without a fetch.
    let e2 = v.validate(&token, at(NOW)).await.unwrap_err();
    assert_eq!(e2, e);
    assert_eq!(source.fetches(), 1);
    source.set_failing(false);
    tokio::time::advance(Duration::from_secs(6)).await;
    assert!(v.validate(&token, at(NOW)).await.is_ok());
    assert_eq!(source.fetches(), 2);

    // An empty key set is treated as a provider fault: the old keys stay.
    source.set(JwkSet { keys: vec![] });
    tokio::time::advance(Duration::from_secs(31)).await;
    assert_eq!(
        code(&v.validate(&ed_token(&k1, "other"), at(NOW)).await),
        "jwks_unavailable"
    );
    assert!(v.validate(&token, at(NOW)).await.is_ok());
}

#[test]
fn validate_future_is_send() {
    fn assert_send<T: Send>(_: &T) {}
    let k = keys();
    let v = validator(&k, settings());
    let fut = v.validate("x", at(NOW));
    assert_send(&fut);
    let http = OidcValidator::new(settings()).unwrap();
    assert_send(&http.validate("x", at(NOW)));
}

#[test]
fn configuring_symmetric_algorithms_is_refused() {
    let mut s = settings();
    s.algorithms = vec![Algorithm::RS256, Algorithm::HS256];
    assert!(matches!(
        OidcValidator::with_source(s, StaticJwksSource::default()),
        Err(OidcConfigError::AlgorithmRefused { .. })
    ));
}

#[test]
fn auth_error_texts_are_client_safe_and_hints_name_config_keys() {
    let errors = [
        AuthError::Missing,
        AuthError::Malformed,
        AuthError::TooLarge {
            len: 9000,
            max: 8192,
        },
        AuthError::AlgorithmNotAllowed { alg: "none".into() },
        AuthError::UnknownKid { kid: "k9".into() },
        AuthError::UnknownKid { kid: String::new() },
        AuthError::KeyMismatch,
        AuthError::BadSignature,
        AuthError::Expired,
        AuthError::NotYetValid,
        AuthError::IssuedInFuture,
        AuthError::IssuerMismatch {
            expected: ISSUER.into(),
            got: "https://evil".into(),
        },
        AuthError::AudienceMismatch,
        AuthError::MissingClaim {
            claim: "tenant".into(),
        },
        AuthError::BadClaim {
            claim: "tenant".into(),
        },
        AuthError::JwksUnavailable {
            url: "https://kc/certs".into(),
            cause: "timed out".into(),
        },
    ];
    for e in &errors {
        assert!(!e.to_string().is_empty());
        assert!(!e.operator_hint().is_empty());
        assert!(!e.to_string().contains("https://evil"));
        assert_eq!(
            e.is_server_side(),
            matches!(e, AuthError::JwksUnavailable { .. })
        );
    }
    assert!(errors[15].operator_hint().contains("auth.jwks_url"));
}

/// A minimal HTTP/1.1 server answering each request path with a canned
/// response, for the HTTP key source tests.
mod http {
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    pub struct Server {
        pub base: String,
        pub hits: Arc<AtomicUsize>,
    }

    pub struct Reply {
        pub status: &'static str,
        pub headers: Vec<(String, String)>,
        pub body: Vec<u8>,
        pub delay_ms: u64,
    }

    pub fn ok(body: impl Into<Vec<u8>>) -> Reply {
        Reply {
            status: "200 OK",
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: body.into(),
            delay_ms: 0,
        }
    }

    pub async fn serve(routes: impl FnOnce(&str) -> HashMap<String, Reply>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let routes = Arc::new(routes(&base));
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let routes = routes.clone();
                let counter = counter.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    counter.fetch_add(1, Ordering::SeqCst);
                    let text = String::from_utf8_lossy(&buf);
                    // Routes ignore the query string, as real servers do.
                    let target = text.split_whitespace().nth(1).unwrap_or("/");
                    let path = target.split('?').next().unwrap_or("/").to_owned();
                    let (status, headers, body, delay) = match routes.get(&path) {
                        Some(r) => (r.status, r.headers.clone(), r.body.clone(), r.delay_ms),
                        None => ("404 Not Found", vec![], b"{}".to_vec(), 0),
                    };
                    if delay > 0 {
                        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
                    }
                    let mut head = format!(
                        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
                        body.len()
                    );
                    for (k, v) in headers {
                        head.push_str(&format!("{k}: {v}\r\n"));
                    }
                    head.push_str("\r\n");
                    let _ = sock.write_all(head.as_bytes()).await;
                    let _ = sock.write_all(&body).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        Server { base, hits }
    }
}

fn jwks_json(k: &Keys) -> Vec<u8> {
    serde_json::to_vec(&provider_jwks(k)).unwrap()
}

#[tokio::test]
async fn http_source_with_configured_jwks_url_validates_tokens() {
    let k = keys();
    let body = jwks_json(&k);
    let server = http::serve(|_| [("/certs".to_owned(), http::ok(body))].into()).await;
    let mut s = settings();
    s.jwks_url = Some(format!("{}/certs", server.base));
    let v = OidcValidator::new(s).unwrap();
    assert_eq!(v.preload().await.unwrap(), 5);
    let token = sign_raw(
        &header("ES256", "ec-1"),
        &keycloak_claims(),
        &k.p256,
        Algorithm::ES256,
    );
    assert!(v.validate(&token, at(NOW)).await.is_ok());
    assert_eq!(v.jwks_fetches(), 1);
}

#[tokio::test]
async fn http_source_discovers_the_jwks_from_the_issuer() {
    let k = keys();
    let body = jwks_json(&k);
    let server = http::serve(|base| {
        let issuer = format!("{base}/realms/acme");
        let discovery = json!({"issuer": issuer, "jwks_uri": format!("{base}/realms/acme/protocol/openid-connect/certs")});
        [
            ("/realms/acme/.well-known/openid-configuration".to_owned(), http::ok(serde_json::to_vec(&discovery).unwrap())),
            ("/realms/acme/protocol/openid-connect/certs".to_owned(), http::ok(body)),
        ]
        .into()
    })
    .await;
    let issuer = format!("{}/realms/acme", server.base);
    let mut s = OidcSettings::new(issuer.clone());
    s.audiences = vec![AUDIENCE.into()];
    let v = OidcValidator::new(s).unwrap();
    let token = sign_raw(
        &header("RS256", "rsa-1"),
        &with(keycloak_claims(), "iss", json!(issuer)),
        &k.rsa,
        Algorithm::RS256,
    );
    assert!(v.validate(&token, at(NOW)).await.is_ok());
    assert_eq!(server.hits.load(std::sync::atomic::Ordering::SeqCst), 2);
    // A second refresh reuses the discovered URL.
    assert!(v.preload().await.is_ok());
    assert_eq!(server.hits.load(std::sync::atomic::Ordering::SeqCst), 3);
}

#[tokio::test]
async fn http_source_failures_are_reported_with_the_url_and_cause() {
    let k = keys();
    let big = {
        let mut b = b"{\"keys\":[".to_vec();
        b.resize(MAX_JWKS_BYTES + 10, b' ');
        b
    };
    let server = http::serve(|base| {
        let redirect = http::Reply {
            status: "302 Found",
            headers: vec![("Location".into(), format!("{base}/certs"))],
            body: vec![],
            delay_ms: 0,
        };
        let err = http::Reply { status: "500 Internal Server Error", headers: vec![], body: b"oops".to_vec(), delay_ms: 0 };
        let slow = http::Reply { delay_ms: 3_000, ..http::ok(jwks_json(&k)) };
        let discovery_other_issuer = json!({"issuer": "https://elsewhere.example/realms/acme", "jwks_uri": format!("{base}/certs")});
        [
            ("/certs".to_owned(), http::ok(jwks_json(&k))),
            ("/redirect".to_owned(), redirect),
            ("/error".to_owned(), err),
            ("/big".to_owned(), http::ok(big)),
            ("/slow".to_owned(), slow),
            ("/notjwks".to_owned(), http::ok(b"{\"hello\":1}".to_vec())),
            ("/empty".to_owned(), http::ok(b"{\"keys\":[]}".to_vec())),
            ("/other/.well-known/openid-configuration".to_owned(), http::ok(serde_json::to_vec(&discovery_other_issuer).unwrap())),
        ]
        .into()
    })
    .await;
    let check = |path: &str, discover: bool, want: &'static str| {
        let base = server.base.clone();
        let path = path.to_owned();
        async move {
            let mut s = if discover {
                OidcSettings::new(format!("{base}{path}"))
            } else {
                let mut s = OidcSettings::new(ISSUER);
                s.jwks_url = Some(format!("{base}{path}?secret=token123"));
                s
            };
            s.jwks_http_timeout = Duration::from_millis(500);
            let v = OidcValidator::new(s).unwrap();
            let e = v.preload().await.unwrap_err();
            let hint = e.operator_hint();
            assert!(e.is_server_side(), "{path}: {e:?}");
            assert!(hint.contains(want), "{path}: {hint}");
            assert!(!hint.contains("token123"), "{path}: {hint}");
        }
    };
    check("/redirect", false, "redirects are not followed").await;
    check("/error", false, "HTTP 500").await;
    check("/big", false, "larger than 1048576 bytes").await;
    check("/slow", false, "timed out").await;
    check("/notjwks", false, "not a JWKS").await;
    check("/empty", false, "no usable signing key").await;
    check("/missing", false, "HTTP 404").await;
    check(
        "/other",
        true,
        "the gateway issuer must match the token issuer exactly",
    )
    .await;
    // Nothing listens on port 1.
    let mut s = OidcSettings::new(ISSUER);
    s.jwks_url = Some("http://127.0.0.1:1/certs".into());
    let v = OidcValidator::new(s).unwrap();
    let token = sign_raw(
        &header("ES256", "ec-1"),
        &keycloak_claims(),
        &k.p256,
        Algorithm::ES256,
    );
    let e = v.validate(&token, at(NOW)).await.unwrap_err();
    assert_eq!(e.code(), "jwks_unavailable");
    assert!(
        e.operator_hint().contains("http://127.0.0.1:1/certs"),
        "{}",
        e.operator_hint()
    );
}

#[test]
fn jwk_alg_field_is_standard() {
    // The JWK the test provider publishes carries `alg` as a string, as
    // Keycloak's does; a regression here would hide key_mismatch coverage.
    let k = keys();
    let j = jwk(&k.rsa, Algorithm::RS256, "rsa-1", true);
    assert_eq!(j.common.key_algorithm, Some(KeyAlgorithm::RS256));
    let v = serde_json::to_value(&j).unwrap();
    assert_eq!(v["alg"], "RS256");
    assert_eq!(v["kty"], "RSA");
}

/// ID tokens of the dashboard's SSO login: audience, `azp`, nonce and type
/// are checked besides everything an access token must pass.
#[tokio::test]
async fn id_token_table() {
    let k = keys();
    // The access-token audience list is not what an ID token is checked
    // against: the client id is.
    let v = validator(&k, settings());
    let id = json!({
        "iss": ISSUER, "sub": "u-1", "aud": "dash", "exp": NOW + 300, "iat": NOW - 1,
        "nonce": "n-123", "preferred_username": "alice", "tenant": "acme",
        "realm_access": {"roles": ["admin"]},
    });
    let sign = |c: &Value| sign_raw(&header("ES256", "ec-1"), c, &k.p256, Algorithm::ES256);
    let cases: Vec<(&str, Value, &str)> = vec![
        ("good", id.clone(), "ok"),
        (
            "aud list with us",
            with(id.clone(), "aud", json!(["other", "dash"])),
            "ok",
        ),
        ("azp is us", with(id.clone(), "azp", json!("dash")), "ok"),
        (
            "keycloak typ ID",
            with(id.clone(), "typ", json!("ID")),
            "ok",
        ),
        (
            "another audience",
            with(id.clone(), "aud", json!(AUDIENCE)),
            "audience_mismatch",
        ),
        ("no aud", without(id.clone(), "aud"), "missing_claim"),
        (
            "issued to another client",
            with(id.clone(), "azp", json!("other")),
            "audience_mismatch",
        ),
        (
            "wrong nonce",
            with(id.clone(), "nonce", json!("n-124")),
            "bad_claim",
        ),
        (
            "missing nonce",
            without(id.clone(), "nonce"),
            "missing_claim",
        ),
        (
            "an access token",
            with(id.clone(), "typ", json!("Bearer")),
            "bad_claim",
        ),
        (
            "expired",
            with(id.clone(), "exp", json!(NOW - 60)),
            "expired",
        ),
        (
            "other issuer",
            with(id.clone(), "iss", json!("https://evil.example")),
            "issuer_mismatch",
        ),
    ];
    for (name, claims, want) in cases {
        let got = v
            .validate_id_token(&sign(&claims), "dash", "n-123", at(NOW))
            .await;
        assert_eq!(code(&got), want, "{name}: {got:?}");
    }
    let p = v
        .validate_id_token(&sign(&id), "dash", "n-123", at(NOW))
        .await
        .unwrap();
    assert!(p.has_role("admin"));
    assert_eq!(p.user.as_str(), "alice");
    // A forged signature is refused before any claim is read.
    let forged = sign_raw(
        &header("ES256", "ec-1"),
        &id,
        &k.attacker_p256,
        Algorithm::ES256,
    );
    let got = v.validate_id_token(&forged, "dash", "n-123", at(NOW)).await;
    assert_eq!(code(&got), "bad_signature");
}
