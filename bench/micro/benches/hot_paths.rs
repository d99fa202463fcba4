//! Per-request costs on the gateway's hot path, in isolation: request
//! inspection, SSE scanning, OIDC token validation, principal signing and
//! verification, CapToken minting and verification, API key checks, audit
//! event encoding and Merkle proofs.

// Benchmark set-up may unwrap: a failure is a broken benchmark, not input.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::time::{Duration, SystemTime};

use aibox_core::keyring::{KeyEntry, Keyring};
use aibox_core::{AuthMethod, Principal, RequestId, TenantId, TurnId, UserId};
use aibox_identity::{
    ApiKey, CapGrant, CapTokenMinter, CapTokenVerifier, OidcSettings, OidcValidator,
    PrincipalSigner, PrincipalVerifier, StaticJwksSource,
};
use criterion::{Criterion, criterion_group, criterion_main};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};

const P256_PEM: &str = include_str!("../../../crates/aibox-identity/testdata/provider-p256.pem");
const ISSUER: &str = "https://idp.example.com/realms/aibox";

fn principal() -> Principal {
    Principal {
        tenant: TenantId::new("acme").unwrap(),
        user: UserId::new("alice").unwrap(),
        roles: vec!["user".into(), "admin".into()],
        auth: AuthMethod::Oidc {
            issuer: ISSUER.into(),
            client_id: Some("webui".into()),
        },
    }
}

fn keyring(id: &str, byte: u8) -> Keyring {
    Keyring::from_entries(vec![KeyEntry::new(id, vec![byte; 32]).unwrap()]).unwrap()
}

fn router(c: &mut Criterion) {
    let body = serde_json::json!({
        "model": "llama3",
        "messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hello in five words, please."}],
        "temperature": 0.2,
        "stream": true,
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    })
    .to_string();
    c.bench_function("router/inspect_chat_request", |b| {
        b.iter(|| {
            aibox_router::Router::inspect(
                aibox_router::Endpoint::ChatCompletions,
                black_box(body.as_bytes()),
            )
            .unwrap()
        })
    });
    let mut chunk = String::new();
    for i in 0..16 {
        chunk.push_str(&format!(
            "data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"word{i} \"}}}}]}}\n\n"
        ));
    }
    c.bench_function("router/sse_scan_16_chunks", |b| {
        b.iter(|| {
            let mut s = aibox_router::sse::SseScanner::default();
            s.feed(black_box(chunk.as_bytes()));
            s.done()
        })
    });
}

fn identity(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let key = EncodingKey::from_ec_pem(P256_PEM.as_bytes()).unwrap();
    let mut jwk = Jwk::from_encoding_key(&key, Algorithm::ES256).unwrap();
    jwk.common.key_id = Some("k1".into());
    let source = StaticJwksSource::new(JwkSet { keys: vec![jwk] });
    let mut settings = OidcSettings::new(ISSUER);
    settings.jwks_url = Some("https://idp.example.com/certs".into());
    settings.audiences = vec!["aibox".into()];
    let validator = OidcValidator::with_source(settings, source).unwrap();
    let now = SystemTime::now();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "iss": ISSUER, "aud": "aibox", "sub": "f1d2", "azp": "webui", "exp": secs + 600, "iat": secs,
        "preferred_username": "alice", "tenant": "acme", "realm_access": {"roles": ["user", "admin"]}
    });
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("k1".into());
    let token = jsonwebtoken::encode(&header, &claims, &key).unwrap();
    rt.block_on(validator.preload()).unwrap();
    c.bench_function("identity/oidc_validate_es256", |b| {
        b.iter(|| {
            rt.block_on(validator.validate(black_box(&token), now))
                .unwrap()
        })
    });

    let ring = keyring("v1", 7);
    let signer = PrincipalSigner::hmac(&ring);
    let verifier = PrincipalVerifier::hmac(&ring);
    let p = principal();
    let rid = RequestId::generate();
    c.bench_function("identity/principal_sign_hs256", |b| {
        b.iter(|| signer.sign(black_box(&p), "svc", &rid, now).unwrap())
    });
    let signed = signer.sign(&p, "svc", &rid, now).unwrap();
    c.bench_function("identity/principal_verify_hs256", |b| {
        b.iter(|| verifier.verify(black_box(&signed), "svc", now).unwrap())
    });
    let ed_signer = PrincipalSigner::ed25519(&ring);
    c.bench_function("identity/principal_sign_ed25519", |b| {
        b.iter(|| ed_signer.sign(black_box(&p), "svc", &rid, now).unwrap())
    });

    let cap_ring = keyring("c1", 9);
    let minter = CapTokenMinter::new(&cap_ring).with_ttl(Duration::from_secs(300));
    let cap_verifier = CapTokenVerifier::new(&cap_ring);
    let turn = TurnId::generate();
    let ops = vec!["tool:files/read".to_owned(), "memory:read".to_owned()];
    let grant = CapGrant {
        turn: &turn,
        tenant: &p.tenant,
        user: &p.user,
        ops: &ops,
        audience: None,
    };
    c.bench_function("identity/captoken_mint", |b| {
        b.iter(|| minter.mint(black_box(&grant), now).unwrap())
    });
    let minted = minter.mint(&grant, now).unwrap();
    c.bench_function("identity/captoken_verify", |b| {
        b.iter(|| {
            cap_verifier
                .verify(
                    black_box(&minted.token),
                    Some(&turn),
                    "tool:files/read",
                    now,
                )
                .unwrap()
        })
    });

    let generated = ApiKey::generate().unwrap();
    let presented = generated.plain.expose().to_owned();
    let stored = generated.hash.as_str().to_owned();
    c.bench_function("identity/apikey_parse_and_verify", |b| {
        b.iter(|| {
            ApiKey::parse(black_box(&presented))
                .unwrap()
                .verify(&stored)
        })
    });
}

fn audit(c: &mut Criterion) {
    let event = aibox_core::audit::AuditEvent {
        tenant: TenantId::new("acme").unwrap(),
        turn: Some(TurnId::generate()),
        request_id: Some(RequestId::generate()),
        at_ms: 1_700_000_000_000,
        kind: aibox_core::audit::EventKind::TurnEnd {
            status: aibox_core::audit::TurnStatus::Ok,
            duration_ms: 12,
        },
    };
    c.bench_function("audit/event_canonical_bytes", |b| {
        b.iter(|| black_box(&event).canonical_bytes().unwrap())
    });
    let mut tree = aibox_audit::merkle::Tree::new();
    for i in 0u64..1_000_000 {
        tree.push_leaf(&i.to_le_bytes());
    }
    c.bench_function("audit/inclusion_proof_at_1m", |b| {
        b.iter(|| tree.inclusion_proof(black_box(777_777), 1_000_000).unwrap())
    });
}

criterion_group!(benches, router, identity, audit);
criterion_main!(benches);
