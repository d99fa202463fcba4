"""Identity at the edge, end to end: a real OIDC provider's tokens, forged
tokens, gateway API keys (SQLite and the real PostgreSQL), and the refusal to
listen publicly without authentication.

The identity provider is the certified `oidc-provider` package on Node.js
(tests/e2e/oidc/provider.js; install with `npm ci --prefix tests/e2e/oidc`),
issuing RFC 9068 JWT access tokens for the resource `urn:aibox` (audience
`aibox`) through the client_credentials grant, signed RS256 with keys the test
generated and so also holds: tokens with a valid signature but bad claims are
forged with the provider's own private key, and every other attack with keys
the provider never published.

Every refusal must be a 401 OpenAI error object with `WWW-Authenticate`, and
aibox's log line for that request (JSON logs, matched by request id) must name
the reason; no refused request may reach the upstream.
"""

from __future__ import annotations

import base64
import json
import os
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable

import httpx
import jwt
import openai
import pytest

from conftest import _AIBOX_LINE, Aibox, Cluster, base_config, dead_port, fresh_postgres_database, model, to_yaml
from identity_kit import (
    Client,
    OidcProvider,
    RecordingServer,
    SigningKey,
    b64url,
    b64url_decode,
    events_for,
    hs256,
    jws_header,
    log_events,
    keyring_value,
    new_secret,
    raw_jws,
    refusal_reason,
    user_claims,
    verify_principal,
)

CI = Client("ci", user_claims("acme", "ci-bot", ["admin", "user"]))
POSTER = Client("poster", user_claims("globex", "poster", ["viewer"]), auth_method="client_secret_post")
#: aibox's own confidential client (seed 000 §6), for service-to-service tokens.
AIBOX_SVC = Client("aibox-svc", {})
CLIENTS = [CI, POSTER, AIBOX_SVC]

PRINCIPAL_RING = [("p1", new_secret())]
CAPTOKEN_RING = [("c1", new_secret())]
KEY_ENV = {
    "AIBOX_PRINCIPAL_KEYS": keyring_value(PRINCIPAL_RING),
    "AIBOX_CAPTOKEN_KEYS": keyring_value(CAPTOKEN_RING),
}
CHAT = {"model": "m1", "messages": [{"role": "user", "content": "hi"}]}


def gateway_config(fake, auth: dict[str, Any], **extra: Any) -> dict[str, Any]:
    cfg = base_config()
    cfg["log"] = {"format": "json", "level": "info"}
    cfg["auth"] = auth
    cfg["upstreams"] = [fake.upstream()]
    cfg["models"] = [model("m1", (fake, "m1"))]
    cfg.update(extra)
    return cfg


@dataclass
class IdpEnv:
    idp: OidcProvider
    fake: Any
    gw: Aibox
    svc: RecordingServer
    attacker: RecordingServer
    attacker_key: SigningKey


@pytest.fixture(scope="module")
def env(module_cluster: Cluster) -> IdpEnv:
    idp = OidcProvider(module_cluster, CLIENTS)
    fake = module_cluster.fake_upstream()
    svc = RecordingServer()
    attacker = RecordingServer()
    module_cluster._closers.append(svc.close)
    module_cluster._closers.append(attacker.close)
    attacker_key = SigningKey.rsa("attacker-kid")
    attacker.files["/jwks.json"] = (
        200,
        "application/json",
        json.dumps({"keys": [attacker_key.public_jwk(), {**attacker_key.public_jwk(), "kid": "k1"}]}).encode(),
    )
    cfg = gateway_config(
        fake,
        idp.auth_config(),
        routes=[{"prefix": "/svc/", "upstream": svc.url, "audience": "svc", "allowed_roles": ["admin"]}],
    )
    gw = module_cluster.aibox(cfg, env=KEY_ENV)
    return IdpEnv(idp, fake, gw, svc, attacker, attacker_key)


def assert_refused(resp: httpx.Response, gw: Aibox, rid: str, reason: str, secret: str | None = None) -> None:
    assert resp.status_code == 401, f"{resp.status_code} {resp.text}"
    assert resp.headers.get("www-authenticate", "").startswith("Bearer"), resp.headers
    err = resp.json()["error"]
    assert err["code"] == "invalid_api_key" and err["type"] == "invalid_request_error", err
    assert resp.headers["x-request-id"] == rid
    logged = refusal_reason(gw, rid)
    assert logged == reason, (
        f"aibox logged reason {logged!r}, expected {reason!r}; events: {events_for(gw.stderr(), rid)}"
    )
    assert f"({reason})" in err["message"], err
    if secret:
        assert secret not in resp.text


# --------------------------------------------------------------------------
# Real tokens through the official SDK
# --------------------------------------------------------------------------


def test_provider_tokens_work_with_the_openai_sdk_and_never_reach_the_upstream(env: IdpEnv):
    token = env.idp.token("ci")
    assert jws_header(token)["kid"] == "k1" and jws_header(token)["alg"] == "RS256"
    client = env.gw.client(api_key=token)
    assert [m.id for m in client.models.list()] == ["m1"]
    r = client.chat.completions.create(**CHAT)
    assert r.choices[0].message.content
    chunks = list(client.chat.completions.create(**CHAT, stream=True))
    assert chunks
    stats = env.fake.stats()
    assert stats["last_headers"]["authorization"] is None
    assert stats["last_headers"]["x-aibox-principal"] is None
    assert token not in json.dumps(stats)

    # A second client of the provider, authenticating with client_secret_post.
    other = env.gw.client(api_key=env.idp.token("poster"))
    assert other.chat.completions.create(**CHAT).choices[0].message.content


def test_missing_or_garbage_token_is_authentication_error_with_www_authenticate(env: IdpEnv):
    before = env.fake.stats()["requests"]
    for garbage in ("garbage", "eyJhbGciOi.not.a-jwt", env.idp.token("ci")[:-30]):
        client = env.gw.client(api_key=garbage)
        with pytest.raises(openai.AuthenticationError) as ei:
            client.chat.completions.create(**CHAT)
        assert ei.value.status_code == 401
        assert ei.value.response.headers["www-authenticate"].startswith("Bearer")
        assert ei.value.code == "invalid_api_key"
    rid = "no-credential-1"
    r = env.gw.http().post("/v1/chat/completions", json=CHAT, headers={"x-request-id": rid})
    assert_refused(r, env.gw, rid, "missing")
    assert env.fake.stats()["requests"] == before


def test_tenant_user_and_roles_come_from_the_token_claims(env: IdpEnv):
    token = env.idp.token("ci")
    http = env.gw.http()
    spoofed = [
        ("X-Aibox-Principal", env.idp.signing_key.sign({"sub": "root", "tenant": "globex"})),
        ("X-Aibox-Tenant", "globex"),
        ("X-Forwarded-User", "root"),
    ]
    r = http.get("/svc/whoami", headers=[("authorization", f"Bearer {token}"), *spoofed])
    assert r.status_code == 200, r.text
    rec = env.svc.last()
    assert not {"x-aibox-tenant", "x-forwarded-user"} & rec.names()
    claims = verify_principal(rec.one("x-aibox-principal"), dict(PRINCIPAL_RING), "svc")
    assert claims["tenant"] == "acme"
    assert claims["sub"] == "ci-bot"  # preferred_username wins over sub
    assert claims["roles"] == ["admin", "user"]
    assert claims["auth"] == {"method": "oidc", "issuer": env.idp.issuer, "client_id": None}
    assert claims["rid"] == r.headers["x-request-id"]
    assert not rec.all("authorization")
    assert token not in json.dumps(rec.headers)

    # The provider's other client has the role `viewer` only: the route
    # (allowed_roles: [admin]) refuses it before anything is forwarded.
    n = len(env.svc.requests)
    r = http.get("/svc/whoami", headers={"authorization": f"Bearer {env.idp.token('poster')}"})
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == "permission_denied"
    assert len(env.svc.requests) == n


def test_jwks_discovered_from_the_issuer_when_jwks_url_is_absent(env: IdpEnv, cluster: Cluster):
    fake = cluster.fake_upstream()
    gw = cluster.aibox(gateway_config(fake, env.idp.auth_config(discovery=True)), env=KEY_ENV)
    client = gw.client(api_key=env.idp.token("ci"))
    assert client.chat.completions.create(**CHAT).choices[0].message.content
    with pytest.raises(openai.AuthenticationError):
        gw.client(api_key=env.idp.token("ci", resource="urn:other")).chat.completions.create(**CHAT)
    assert fake.stats()["last_headers"]["authorization"] is None


def test_provider_key_rotation_new_kid_is_fetched_and_accepted(cluster: Cluster):
    idp = OidcProvider(cluster, [CI])
    fake = cluster.fake_upstream()
    gw = cluster.aibox(
        gateway_config(fake, idp.auth_config(jwks_refresh_min_secs=1)), env=KEY_ENV
    )
    started = time.monotonic()
    old = idp.token("ci")
    assert gw.client(api_key=old).chat.completions.create(**CHAT).choices

    kids = idp.rotate(SigningKey.rsa("k2"))
    assert kids == ["k2", "k1"]
    new = idp.token("ci")
    assert jws_header(new)["kid"] == "k2"
    # aibox loaded the JWKS at start-up; an unknown kid refetches it at most
    # once per jwks_refresh_min_secs (1 s here).
    time.sleep(max(0.0, 1.2 - (time.monotonic() - started)))
    assert gw.client(api_key=new).chat.completions.create(**CHAT).choices
    # The old key is still published, so tokens it signed stay valid.
    assert gw.client(api_key=old).chat.completions.create(**CHAT).choices
    # A kid the provider never published is still refused after the refetch.
    forged = SigningKey.rsa("k3").sign(idp.claims("ci"))
    rid = "rotation-unknown-kid"
    r = gw.http().post(
        "/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {forged}", "x-request-id": rid}
    )
    assert_refused(r, gw, rid, "unknown_kid", forged)


def test_unknown_kids_refetch_the_jwks_at_most_once_per_interval(env: IdpEnv, cluster: Cluster):
    # The provider's JWKS served through a recording mirror, to count fetches.
    mirror = RecordingServer()
    cluster._closers.append(mirror.close)
    mirror.files["/jwks"] = (200, "application/json", httpx.get(env.idp.jwks_url).content)
    fake = cluster.fake_upstream()
    gw = cluster.aibox(
        gateway_config(fake, env.idp.auth_config(jwks_url=f"{mirror.url}/jwks", jwks_refresh_min_secs=3)),
        env=KEY_ENV,
    )
    started = time.monotonic()
    assert len(mirror.requests) == 1  # loaded at start-up
    # Tokens are signed before the burst, so the burst fits well inside one
    # 3 s interval even on a loaded machine; the interval is what is tested.
    tokens = [SigningKey(f"random-{i}", "RS256", env.attacker_key.private).sign(env.idp.claims("ci")) for i in range(24)]
    time.sleep(max(0.0, 3.2 - (time.monotonic() - started)))

    def attempt(i: int) -> int:
        token = tokens[i]
        with httpx.Client(base_url=gw.main_url, timeout=10) as c:
            return c.post("/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {token}"}).status_code

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(attempt, range(24))) == {401}
    assert len(mirror.requests) == 2, f"{len(mirror.requests)} JWKS fetches for one burst of unknown kids"
    # The cached keys still validate the provider's tokens without a fetch.
    assert gw.client(api_key=env.idp.token("ci")).chat.completions.create(**CHAT).choices
    assert len(mirror.requests) == 2


def test_unreachable_identity_provider_fails_closed_with_503(env: IdpEnv, cluster: Cluster):
    fake = cluster.fake_upstream()
    dead = f"http://127.0.0.1:{dead_port()}/jwks"
    gw = cluster.aibox(gateway_config(fake, env.idp.auth_config(jwks_url=dead)), env=KEY_ENV)
    r = gw.http().post("/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {env.idp.token('ci')}"})
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "identity_provider_unavailable"
    assert fake.stats()["requests"] == 0
    logged = [e for e in log_events(gw.stderr()) if e.get("level") == "ERROR"]
    assert any(dead in json.dumps(e) for e in logged), logged


def _jwks_redis_key(issuer: str, jwks_url: str) -> str:
    """The Redis key aibox shares a provider's JWKS under (oidc/shared.rs)."""
    import hashlib

    return "aibox:jwks:" + hashlib.sha256(f"{issuer}\n{jwks_url}".encode()).hexdigest()[:32]


def test_issue_9_replicas_share_the_jwks_through_redis_and_refuse_a_planted_one(env: IdpEnv, cluster: Cluster):
    import secrets as pysecrets

    import redis as pyredis

    r = pyredis.Redis.from_url("redis://127.0.0.1:6379/0", socket_timeout=2)
    # The provider's JWKS through a mirror that counts fetches and can fail.
    mirror = RecordingServer()
    cluster._closers.append(mirror.close)
    jwks = httpx.get(env.idp.jwks_url).content
    mirror.files["/jwks"] = (200, "application/json", jwks)
    jwks_url = f"{mirror.url}/jwks"
    key = _jwks_redis_key(env.idp.issuer, jwks_url)
    cluster._closers.append(lambda: r.delete(key))
    fake = cluster.fake_upstream()
    cfg = gateway_config(fake, env.idp.auth_config(jwks_url=jwks_url), redis_url="redis://127.0.0.1:6379")
    # Every replica has the same AUDIT_SIGNING_KEY, as the README's topology says.
    replica_env = {**KEY_ENV, "AUDIT_SIGNING_KEY": pysecrets.token_urlsafe(32)}
    token = env.idp.token("ci")

    a = cluster.aibox(cfg, env=replica_env)
    assert len(mirror.requests) == 1  # fetched at start-up and published
    entry = r.get(key)
    assert entry is not None and entry.startswith(b"v1\n") and entry.endswith(jwks), entry
    assert a.client(api_key=token).chat.completions.create(**CHAT).choices

    # A second replica starts from the shared set: no fetch, tokens valid.
    b = cluster.aibox(cfg, env=replica_env)
    assert b.client(api_key=token).chat.completions.create(**CHAT).choices
    assert len(mirror.requests) == 1, "the second replica asked the provider"

    # The provider goes down; a replica starting now still validates tokens
    # with the set another replica fetched.
    mirror.files["/jwks"] = (503, "text/plain", b"down")
    c = cluster.aibox(cfg, env=replica_env)
    assert c.client(api_key=token).chat.completions.create(**CHAT).choices

    # The attack: whoever can write to Redis plants a JWKS holding their own
    # key under the provider's kid, with a tag made without the shared
    # secret (here: by a replica with another AUDIT_SIGNING_KEY, which is
    # what an attacker without the secret can at best do).
    attacker_jwks = json.dumps({"keys": [{**env.attacker_key.public_jwk(), "kid": "k1"}]}).encode()
    ms, tag = entry.split(b"\n")[1:3]
    r.set(key, b"v1\n" + ms + b"\n" + tag + b"\n" + attacker_jwks, px=60_000)
    forged = SigningKey("k1", "RS256", env.attacker_key.private).sign(env.idp.claims("ci"))
    d = cluster.aibox(cfg, env=replica_env)
    resp = d.http().post("/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {forged}"})
    # The planted set is ignored: with the provider down there are no keys,
    # so the token fails closed (503), never 200.
    assert resp.status_code == 503, resp.text
    assert resp.json()["error"]["code"] == "identity_provider_unavailable"
    assert "ignoring the JWKS shared through Redis" in d.stderr()
    # With the provider back, the replica uses the provider's keys only.
    mirror.files["/jwks"] = (200, "application/json", jwks)
    time.sleep(5.2)  # aibox retries a failed fetch after at most 5 s
    rid = "planted-jwks"
    resp = d.http().post(
        "/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {forged}", "x-request-id": rid}
    )
    assert_refused(resp, d, rid, "bad_signature", forged)
    assert d.client(api_key=token).chat.completions.create(**CHAT).choices
    assert fake.stats()["requests"] == 4  # a, b, c and d each answered once; nothing forged got through


# --------------------------------------------------------------------------
# The attack table
# --------------------------------------------------------------------------


@dataclass
class Attack:
    id: str
    reason: str  # the reason code aibox must log
    build: Callable[[IdpEnv], Any]  # -> token str, or a list of extra header pairs


def _forge(e: IdpEnv, key: SigningKey | None = None, headers: dict | None = None, **over: Any) -> str:
    return (key or e.idp.signing_key).sign(e.idp.claims("ci", **over), headers)


def _tamper_payload(e: IdpEnv) -> str:
    h, _, s = e.idp.token("ci").split(".")
    claims = e.idp.claims("ci", realm_access={"roles": ["admin", "superuser"]}, tenant="globex")
    return f"{h}.{b64url(json.dumps(claims).encode())}.{s}"


def _tamper_signature(e: IdpEnv) -> str:
    h, p, s = e.idp.token("ci").split(".")
    sig = bytearray(b64url_decode(s))
    sig[len(sig) // 2] ^= 0x01
    return f"{h}.{p}.{b64url(bytes(sig))}"


def _alg_none(e: IdpEnv, signature: bytes) -> str:
    return raw_jws({"alg": "none", "typ": "JWT", "kid": "k1"}, e.idp.claims("ci"), lambda _: signature)


def _key_confusion(e: IdpEnv) -> str:
    # The classic: HS256 with the provider's PUBLIC key as the HMAC secret.
    # PyJWT refuses to do this, so the JWS is built by hand.
    return raw_jws(
        {"alg": "HS256", "typ": "JWT", "kid": "k1"},
        e.idp.claims("ci"),
        hs256(e.idp.signing_key.public_pem()),
    )


def _key_confusion_jwk(e: IdpEnv) -> str:
    # The same with the JWK's modulus bytes as the secret.
    n = b64url_decode(e.idp.signing_key.public_jwk()["n"])
    return raw_jws({"alg": "HS256", "typ": "JWT", "kid": "k1"}, e.idp.claims("ci"), hs256(n))


def _es256_on_rsa_kid(e: IdpEnv) -> str:
    k = SigningKey.ec("k1")
    return k.sign(e.idp.claims("ci"))


def _jku(e: IdpEnv, field: str, kid: str) -> str:
    k = SigningKey(kid, "RS256", e.attacker_key.private)
    return k.sign(e.idp.claims("ci"), {field: f"{e.attacker.url}/jwks.json"})


def _embedded_jwk(e: IdpEnv) -> str:
    k = SigningKey("k1", "RS256", e.attacker_key.private)
    jwk = e.attacker_key.public_jwk()
    jwk["kid"] = "k1"
    return k.sign(e.idp.claims("ci"), {"jwk": jwk})


def _x5c(e: IdpEnv) -> str:
    k = SigningKey("k1", "RS256", e.attacker_key.private)
    return k.sign(e.idp.claims("ci"), {"x5c": [base64.b64encode(b"not really a certificate").decode()]})


def _oversized(e: IdpEnv) -> str:
    return _forge(e, padding="x" * 9000)


def _jwe_shaped(e: IdpEnv) -> str:
    header = b64url(json.dumps({"alg": "RSA-OAEP-256", "enc": "A256GCM", "kid": "k1"}).encode())
    return ".".join([header] + [b64url(os.urandom(n)) for n in (256, 12, 200, 16)])


def _crit(e: IdpEnv) -> str:
    return _forge(e, headers={"crit": ["exp"], "exp": 1})


ATTACKS: list[Attack] = [
    # Algorithms
    Attack("alg-none-empty-signature", "malformed", lambda e: _alg_none(e, b"")),
    Attack("alg-none-with-signature", "algorithm_not_allowed", lambda e: _alg_none(e, b"\x00" * 32)),
    Attack("hs256-signed-with-provider-public-key-pem", "algorithm_not_allowed", _key_confusion),
    Attack("hs256-signed-with-provider-modulus", "algorithm_not_allowed", _key_confusion_jwk),
    Attack("es256-header-on-rsa-kid", "key_mismatch", _es256_on_rsa_kid),
    # Times (valid signature by the provider's own key)
    Attack("expired", "expired", lambda e: _forge(e, iat=int(time.time()) - 7200, exp=int(time.time()) - 3600)),
    Attack("not-yet-valid", "not_yet_valid", lambda e: _forge(e, nbf=int(time.time()) + 3600)),
    Attack("issued-in-the-future", "issued_in_future", lambda e: _forge(e, iat=int(time.time()) + 3600)),
    Attack("no-exp", "missing_claim", lambda e: _forge(e, exp=None)),
    # Issuer (valid signature)
    Attack("issuer-trailing-slash", "issuer_mismatch", lambda e: _forge(e, iss=e.idp.issuer + "/")),
    Attack("issuer-https-instead-of-http", "issuer_mismatch", lambda e: _forge(e, iss=e.idp.issuer.replace("http:", "https:"))),
    Attack("issuer-other-port", "issuer_mismatch", lambda e: _forge(e, iss=f"http://127.0.0.1:{e.idp.port + 1}")),
    Attack("issuer-localhost-alias", "issuer_mismatch", lambda e: _forge(e, iss=e.idp.issuer.replace("127.0.0.1", "localhost"))),
    Attack("no-issuer", "missing_claim", lambda e: _forge(e, iss=None)),
    # Audience (valid signature)
    Attack("audience-other-forged", "audience_mismatch", lambda e: _forge(e, aud="other")),
    Attack("audience-other-from-provider", "audience_mismatch", lambda e: e.idp.token("ci", resource="urn:other")),
    Attack("no-audience", "audience_mismatch", lambda e: _forge(e, aud=None)),
    Attack("id-token-type", "bad_claim", lambda e: _forge(e, typ="ID")),
    # Keys and signatures
    Attack("unknown-kid", "unknown_kid", lambda e: _forge(e, key=e.attacker_key)),
    Attack("no-kid", "unknown_kid", lambda e: _forge(e, headers={"kid": None})),
    Attack("kid-path-traversal", "unknown_kid", lambda e: _forge(e, key=SigningKey("../../../../../../etc/passwd", "RS256", e.attacker_key.private))),
    Attack("kid-url", "unknown_kid", lambda e: _forge(e, key=SigningKey(f"{e.attacker.url}/jwks.json", "RS256", e.attacker_key.private))),
    Attack("right-kid-attacker-key", "bad_signature", lambda e: _forge(e, key=SigningKey("k1", "RS256", e.attacker_key.private))),
    Attack("tampered-payload", "bad_signature", _tamper_payload),
    Attack("tampered-signature", "bad_signature", _tamper_signature),
    Attack("truncated-token", "malformed", lambda e: (t := e.idp.token("ci"))[: len(t) // 2]),
    Attack("truncated-signature", "bad_signature", lambda e: e.idp.token("ci")[:-12]),
    Attack("oversized-token", "too_large", _oversized),
    Attack("jwe-shaped-five-parts", "malformed", _jwe_shaped),
    Attack("crit-header", "malformed", _crit),
    # Headers naming another key source (never fetched, never trusted)
    Attack("jku-attacker-jwks-with-provider-kid", "bad_signature", lambda e: _jku(e, "jku", "k1")),
    Attack("jku-attacker-jwks-with-attacker-kid", "unknown_kid", lambda e: _jku(e, "jku", "attacker-kid")),
    Attack("x5u-attacker-url", "bad_signature", lambda e: _jku(e, "x5u", "k1")),
    Attack("embedded-jwk-attacker-key", "bad_signature", _embedded_jwk),
    Attack("x5c-attacker-chain", "bad_signature", _x5c),
    # The Authorization header itself
    Attack("garbage-bearer", "malformed", lambda e: "definitely-not-a-token"),
    Attack("basic-scheme", "unsupported_scheme", lambda e: [("authorization", "Basic " + base64.b64encode(b"ci:pw").decode())]),
    Attack(
        "two-authorization-headers",
        "several_credentials",
        lambda e: [("authorization", f"Bearer {e.idp.token('ci')}"), ("authorization", "Bearer x")],
    ),
    # Identity claimed by headers instead of a credential
    Attack(
        "spoofed-identity-headers-without-token",
        "missing",
        lambda e: [
            ("X-Aibox-Principal", e.idp.signing_key.sign({"sub": "admin", "tenant": "acme"})),
            ("X-Aibox-Tenant", "acme"),
            ("x-aibox-user", "admin"),
            ("X-Forwarded-User", "admin"),
            ("X-Tenant-Id", "acme"),
            ("Remote-User", "admin"),
        ],
    ),
]

#: Tokens that must be accepted: they prove the refusals above come from the
#: one thing each attack changed, not from the way tokens are built here.
VALID: list[tuple[str, Callable[[IdpEnv], str]]] = [
    ("provider-token-client-secret-basic", lambda e: e.idp.token("ci")),
    ("provider-token-client-secret-post", lambda e: e.idp.token("poster")),
    ("forged-with-the-provider-key", lambda e: _forge(e)),
    ("audience-as-array", lambda e: _forge(e, aud=["other", "aibox"])),
    ("expired-within-leeway", lambda e: _forge(e, exp=int(time.time()) - 5)),
    ("large-but-under-max-token-bytes", lambda e: _forge(e, padding="x" * 4000)),
]


def _send(e: IdpEnv, built: Any, rid: str) -> httpx.Response:
    headers: list[tuple[str, str]] = [("x-request-id", rid)]
    if isinstance(built, str):
        headers.append(("authorization", f"Bearer {built}"))
    else:
        headers.extend(built)
    return e.gw.http().post("/v1/chat/completions", json=CHAT, headers=headers)


@pytest.mark.parametrize("attack", ATTACKS, ids=lambda a: a.id)
def test_attack_is_refused_with_the_reason_logged(env: IdpEnv, attack: Attack):
    built = attack.build(env)
    rid = f"atk-{attack.id}-{uuid.uuid4().hex[:8]}"
    before = env.fake.stats()["requests"]
    r = _send(env, built, rid)
    assert_refused(r, env.gw, rid, attack.reason, built if isinstance(built, str) else None)
    assert env.fake.stats()["requests"] == before, "a refused request reached the upstream"
    assert env.attacker.requests == [], "aibox fetched a key URL named by a token"


@pytest.mark.parametrize("case", VALID, ids=lambda c: c[0])
def test_valid_token_is_accepted(env: IdpEnv, case):
    rid = f"ok-{case[0]}-{uuid.uuid4().hex[:8]}"
    r = _send(env, case[1](env), rid)
    assert r.status_code == 200, f"{r.status_code} {r.text}\n{events_for(env.gw.stderr(), rid)}"
    assert r.json()["choices"][0]["message"]["content"]


# --------------------------------------------------------------------------
# Gateway API keys
# --------------------------------------------------------------------------

API_KEY_RE = re.compile(r"^aibox_([0-9a-f]{16})_[A-Za-z0-9_-]{43}$")


def apikey_cli(cluster: Cluster, gw_cwd, *args: str) -> str:
    r = cluster.run_aibox(["apikey", *args, "--config", str(gw_cwd / "config.yaml")], cwd=gw_cwd, env=KEY_ENV)
    assert r.returncode == 0, f"aibox apikey {' '.join(args)}: status {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r.stdout


def create_key(cluster: Cluster, gw_cwd, *args: str) -> tuple[str, str]:
    out = apikey_cli(cluster, gw_cwd, "create", *args).strip()
    m = API_KEY_RE.match(out)
    assert m, f"`aibox apikey create` printed {out!r}, not one key"
    return out, m.group(1)


def apikey_gateway(cluster: Cluster, fake, svc: RecordingServer, **extra: Any) -> Aibox:
    cfg = gateway_config(
        fake,
        {"enabled": True, "api_keys": True},
        routes=[{"prefix": "/svc/", "upstream": svc.url, "audience": "svc"}],
        **extra,
    )
    return cluster.aibox(cfg, env=KEY_ENV)


def test_api_key_create_use_list_revoke(cluster: Cluster):
    fake = cluster.fake_upstream()
    svc = RecordingServer()
    cluster._closers.append(svc.close)
    gw = apikey_gateway(cluster, fake, svc)
    key, key_id = create_key(cluster, gw.cwd, "--tenant", "acme", "--user", "ci", "--roles", "admin")

    client = gw.client(api_key=key)
    assert client.chat.completions.create(**CHAT).choices[0].message.content
    assert fake.stats()["last_headers"]["authorization"] is None
    r = gw.http().get("/svc/me", headers={"authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    claims = verify_principal(svc.last().one("x-aibox-principal"), dict(PRINCIPAL_RING), "svc")
    assert (claims["tenant"], claims["sub"], claims["roles"]) == ("acme", "ci", ["admin"])
    assert claims["auth"] == {"method": "api_key", "key_id": key_id}

    listing = apikey_cli(cluster, gw.cwd, "list")
    row = next(line for line in listing.splitlines() if line.startswith(key_id))
    assert row.split() == [key_id, "acme", "ci", "admin", "active"], row
    secret = key.split("_", 2)[2]
    assert secret not in listing and key not in listing

    out = apikey_cli(cluster, gw.cwd, "revoke", key_id)
    assert key_id in out
    rid = "revoked-key-1"
    r = gw.http().post("/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {key}", "x-request-id": rid})
    assert_refused(r, gw, rid, "revoked_api_key", key)
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(**CHAT)
    row = next(line for line in apikey_cli(cluster, gw.cwd, "list").splitlines() if line.startswith(key_id))
    assert row.split()[-1] == "revoked"


def test_api_key_expired_wrong_secret_and_malformed_are_refused(cluster: Cluster):
    fake = cluster.fake_upstream()
    svc = RecordingServer()
    cluster._closers.append(svc.close)
    gw = apikey_gateway(cluster, fake, svc)
    short, _ = create_key(cluster, gw.cwd, "--tenant", "acme", "--user", "ci", "--roles", "admin", "--expires", "1s")
    good, good_id = create_key(cluster, gw.cwd, "--tenant", "acme", "--user", "ops", "--roles", "admin")
    time.sleep(1.1)
    http = gw.http()
    before = fake.stats()["requests"]

    wrong_secret = f"aibox_{good_id}_{b64url(os.urandom(32))}"
    cases = [
        ("expired", short, "expired_api_key"),
        ("wrong-secret", wrong_secret, "unknown_api_key"),
        ("unknown-id", f"aibox_{'0' * 16}_{b64url(os.urandom(32))}", "unknown_api_key"),
        ("truncated", good[:-5], "malformed_api_key"),
        ("uppercase-id", good.replace(good_id, good_id.upper()), "malformed_api_key"),
    ]
    for name, key, reason in cases:
        rid = f"apikey-{name}"
        r = http.post("/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {key}", "x-request-id": rid})
        assert_refused(r, gw, rid, reason, key)
    assert fake.stats()["requests"] == before
    assert gw.client(api_key=good).chat.completions.create(**CHAT).choices
    listing = apikey_cli(cluster, gw.cwd, "list")
    assert any(line.split()[-1] == "expired" for line in listing.splitlines()[1:]), listing


def _auth_refused_events(cluster: Cluster, gw: Aibox) -> tuple[list[dict[str, Any]], str]:
    """The `auth_refused` events of the `_aibox` tenant, through `aibox
    audit export` as an operator reads them, and the export's whole text."""
    out = gw.cwd / f"export-{uuid.uuid4().hex[:6]}.json"
    r = cluster.run_aibox(["audit", "export", "--tenant", "_aibox", "--out", str(out), "--config", str(gw.cwd / "config.yaml")],
                          cwd=gw.cwd, env=KEY_ENV)
    if r.returncode != 0:
        # No event of the tenant yet: the records are written after the 401s.
        return [], ""
    text = out.read_text()
    events = [json.loads(row["event"]) for row in json.loads(text)["rows"]]
    return [e for e in events if e.get("type") == "auth_refused"], text


def _wait_accounted(cluster: Cluster, gw: Aibox, total: int, timeout: float) -> tuple[list[dict[str, Any]], str]:
    deadline = time.monotonic() + timeout
    while True:
        events, text = _auth_refused_events(cluster, gw)
        if sum(1 + e["suppressed"] for e in events) >= total or time.monotonic() > deadline:
            return events, text
        time.sleep(0.3)


def test_refused_authentications_are_in_the_audit_log_rate_limited_and_counted(cluster: Cluster):
    """Every 401 of the edge is accounted for in the `_aibox` tenant's
    tamper-evident log: a record per refusal (reason, route, request id, a
    presented API key's public id, never the credential) up to a burst,
    then one per 10 s, each record counting the refusals it stands for
    since the previous one, so that a flood of bad credentials cannot turn
    into a flood of durable writes and still leaves an exact count: within
    one interval after the flood, and at shutdown for a flood just before
    it."""
    fake = cluster.fake_upstream()
    svc = RecordingServer()
    cluster._closers.append(svc.close)
    gw = apikey_gateway(cluster, fake, svc)
    good, good_id = create_key(cluster, gw.cwd, "--tenant", "acme", "--user", "ci", "--roles", "admin")
    wrong_secret = f"aibox_{good_id}_{b64url(os.urandom(32))}"
    http = gw.http()
    first = [
        ("refused-missing", None, "missing"),
        ("refused-garbage", "not-a-key-" + b64url(new_secret()), "not_an_api_key"),
        ("refused-wrong-secret", wrong_secret, "unknown_api_key"),
    ]
    for rid, credential, reason in first:
        headers = {"x-request-id": rid} | ({"authorization": f"Bearer {credential}"} if credential else {})
        assert_refused(http.post("/v1/chat/completions", json=CHAT, headers=headers), gw, rid, reason, credential)

    def flood(n: int, tag: str) -> float:
        started = time.monotonic()
        for i in range(n):
            r = http.post("/v1/models", headers={"authorization": f"Bearer {wrong_secret}", "x-request-id": f"{tag}-{i}"})
            assert r.status_code == 401, r.text
        return time.monotonic() - started

    flood_secs = flood(150, "flood")
    total = len(first) + 150
    # No further request: the recorder's own timer writes the count of the
    # refusals held back, one interval (10 s) after it started holding back.
    events, text = _wait_accounted(cluster, gw, total, 25)
    assert sum(1 + e["suppressed"] for e in events) == total, events
    # Rate-limited: a burst of 20, then one per 10 s, far fewer records than
    # refusals.
    assert len(events) <= 20 + flood_secs / 10 + 2, (len(events), flood_secs)
    by_rid = {e["request_id"]: e for e in events if e["request_id"]}
    for rid, credential, reason in first:
        e = by_rid[rid]
        assert (e["reason"], e["route"], e["suppressed"]) == (reason, "/v1/chat/completions", 0), e
    assert by_rid["refused-wrong-secret"]["key_id"] == good_id
    # Every record names the connection's peer (this test's loopback).
    assert {e["peer"] for e in events} == {"127.0.0.1"}, events
    assert by_rid["refused-missing"]["key_id"] is None and by_rid["refused-garbage"]["key_id"] is None
    # The timer's record is the newest refusal held back, with the others'
    # count (one record per 10 s of flood before it, on a slow machine).
    counted = [e for e in events if e["suppressed"] > 0]
    assert counted and len(counted) <= 1 + flood_secs / 10 + 1, (counted, flood_secs)
    assert counted[-1]["request_id"] == "flood-149", counted
    assert (counted[-1]["reason"], counted[-1]["route"], counted[-1]["key_id"]) == ("unknown_api_key", "/v1/models", good_id)
    # No credential, or any part of one, is in the log.
    for secret in (wrong_secret.split("_", 2)[2], first[1][1], good.split("_", 2)[2]):
        assert secret not in text

    # The metric counts every refusal by reason.
    metrics = gw.ops().get("/metrics").text
    counts = {m.group(1): float(m.group(2)) for m in re.finditer(r'^aibox_auth_refusals_total\{reason="([a-z_]+)"\} (\S+)$', metrics, re.M)}
    assert counts == {"missing": 1, "not_an_api_key": 1, "unknown_api_key": 151}, counts

    # A flood right before a shutdown is accounted for by the shutdown.
    flood(30, "late")
    assert gw.proc.stop(30) == 0, gw.stderr()[-2000:]
    events, _ = _auth_refused_events(cluster, gw)
    assert sum(1 + e["suppressed"] for e in events) == total + 30, events
    assert events[-1]["request_id"] == "late-29", events[-1]
    assert cluster.run_aibox(["audit", "verify", "--tenant", "_aibox", "--config", str(gw.cwd / "config.yaml")],
                             cwd=gw.cwd, env=KEY_ENV).returncode == 0


def test_api_keys_on_real_postgresql(cluster: Cluster):
    import psycopg

    with fresh_postgres_database() as db_url:
        fake = cluster.fake_upstream()
        svc = RecordingServer()
        cluster._closers.append(svc.close)
        cwd = cluster.aibox_dir()
        cfg = gateway_config(
            fake,
            {"enabled": True, "api_keys": True},
            database={"url": db_url},
            routes=[{"prefix": "/svc/", "upstream": svc.url, "audience": "svc"}],
        )
        (cwd / "config.yaml").write_text(to_yaml(cfg))
        key, key_id = create_key(cluster, cwd, "--tenant", "acme", "--user", "pg-user", "--roles", "admin,ops")
        with psycopg.connect(db_url) as conn:
            rows = conn.execute("SELECT id, hash, tenant, user_id FROM api_keys").fetchall()
        assert [(r[0], r[2], r[3]) for r in rows] == [(key_id, "acme", "pg-user")]
        assert key.split("_", 2)[2] not in rows[0][1], "the secret is stored in clear"

        gw = cluster.aibox(cfg, env=KEY_ENV, cwd=cwd)
        assert gw.client(api_key=key).chat.completions.create(**CHAT).choices
        r = gw.http().get("/svc/pg", headers={"authorization": f"Bearer {key}"})
        claims = verify_principal(svc.last().one("x-aibox-principal"), dict(PRINCIPAL_RING), "svc")
        assert (claims["tenant"], claims["sub"], claims["roles"]) == ("acme", "pg-user", ["admin", "ops"])
        apikey_cli(cluster, cwd, "revoke", key_id)
        rid = "pg-revoked"
        r = gw.http().post("/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {key}", "x-request-id": rid})
        assert_refused(r, gw, rid, "revoked_api_key", key)
        gw.proc.stop(10)


# --------------------------------------------------------------------------
# Listening publicly
# --------------------------------------------------------------------------


def test_public_bind_with_auth_disabled_is_refused_without_the_danger_flag(cluster: Cluster):
    cfg = base_config(listen="0.0.0.0:0")
    cfg["auth"] = {"enabled": False}
    rc, err = cluster.aibox_must_refuse_to_start(cfg)
    assert rc == 2
    assert "0.0.0.0" in err and "not loopback" in err and "auth" in err

    proc = cluster.spawn_aibox(cfg, args=["--danger-allow-unauthenticated-public-bind"])
    m = proc.wait_for(_AIBOX_LINE)
    port = int(m.group(1).rsplit(":", 1)[1])
    assert m.group(1).startswith("0.0.0.0:")
    r = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=10)
    assert r.status_code in (200, 503)  # reachable; no upstream is running
    assert proc.stop(10) == 0


def test_public_bind_with_auth_enabled_is_allowed(cluster: Cluster):
    """README: only a non-loopback listener with auth.enabled: false needs
    --danger-allow-unauthenticated-public-bind."""
    cfg = base_config(listen="0.0.0.0:0")
    cfg["auth"] = {"enabled": True, "api_keys": True}
    proc = cluster.spawn_aibox(cfg, env=KEY_ENV)
    m = proc.wait_for(_AIBOX_LINE)
    port = int(m.group(1).rsplit(":", 1)[1])
    r = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=10)
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    assert proc.stop(10) == 0


def test_upstream_gets_a_cached_client_credentials_token_never_a_shared_bearer(env: IdpEnv, cluster: Cluster):
    """Issue 3 item 8: aibox calls an upstream that requires it with a
    short-lived token from the provider's client-credentials grant (its own
    confidential client, secret from SERVICE_AIBOX_CLIENT_SECRET), cached
    until shortly before expiry; the client's token is never forwarded."""
    fake = cluster.fake_upstream("svc-up")
    upstream = fake.upstream()
    upstream["service_auth"] = {"resource": "urn:other"}
    cfg = gateway_config(
        fake,
        env.idp.auth_config(),
        service_auth={"client_id": "aibox-svc", "client_secret_env": "SERVICE_AIBOX_CLIENT_SECRET"},
    )
    cfg["upstreams"] = [upstream]
    gw = cluster.aibox(cfg, env={**KEY_ENV, "SERVICE_AIBOX_CLIENT_SECRET": AIBOX_SVC.client_secret})
    user_token = env.idp.token("ci")
    client = gw.client(api_key=user_token)
    client.chat.completions.create(**CHAT)
    first = fake.stats()["last_headers"]["authorization"]
    assert first and first.startswith("Bearer ")
    service_token = first.removeprefix("Bearer ")
    assert service_token != user_token
    # A real token from the provider: its issuer, aibox's client, the resource's audience.
    claims = jwt.decode(service_token, options={"verify_signature": False})
    assert claims["iss"] == env.idp.issuer
    assert claims["client_id"] == "aibox-svc"
    assert claims["aud"] == "other"
    # Cached: the next call reuses it.
    client.chat.completions.create(**CHAT)
    assert fake.stats()["last_headers"]["authorization"] == first

    # A wrong secret fails closed: the upstream is never called without a token.
    before = fake.stats()["requests"]
    bad = cluster.aibox(cfg, env={**KEY_ENV, "SERVICE_AIBOX_CLIENT_SECRET": "wrong-secret"})
    with pytest.raises(openai.APIStatusError) as ei:
        bad.client(api_key=user_token).chat.completions.create(**CHAT)
    assert ei.value.status_code == 502
    assert fake.stats()["requests"] == before
    assert "wrong-secret" not in bad.stderr()
