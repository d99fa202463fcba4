"""Downstream routes, end to end: what a service behind aibox receives.

A stdlib HTTP server in a thread stands in for the downstream service
(Open WebUI, an agent runtime, ...) and records every request. Callers
authenticate with gateway API keys made by `aibox apikey create`. The service
must see exactly one `X-Aibox-Principal` that verifies with PyJWT and the
keyring (HS256, and EdDSA with the public key derived from it), a CapToken
for the route's operations bound to the `X-Aibox-Turn` it gets, none of the
identity headers the client tried to smuggle in and never the client's
credential; paths, query strings, request bodies and streamed responses pass
through. Principal key rotation with `aibox keys rotate` keeps old principals
verifiable until the old key is removed.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from conftest import Aibox, Cluster, base_config, model
from identity_kit import (
    RecordingServer,
    ed25519_public_key,
    keyring_value,
    new_secret,
    parse_keyring,
    read_env_file,
    verify_captoken,
    verify_principal,
)

PRINCIPAL_RING = [("p2", new_secret()), ("p1", new_secret())]
CAPTOKEN_RING = [("c1", new_secret())]
KEY_ENV = {
    "AIBOX_PRINCIPAL_KEYS": keyring_value(PRINCIPAL_RING),
    "AIBOX_CAPTOKEN_KEYS": keyring_value(CAPTOKEN_RING),
}
OPS = ["tool:files/read", "memory:read"]
MAX_BODY = 2 * 1024 * 1024

#: Identity headers a client might send to impersonate someone, in several
#: spellings and copies. None of them may reach a downstream service.
SPOOFED: list[tuple[str, str]] = [
    ("X-Aibox-Principal", "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZG1pbiJ9."),
    ("x-aibox-principal", "forged-second-copy"),
    ("X-AIBOX-TENANT", "globex"),
    ("X-Aibox-User", "root"),
    ("X-Aibox-Captoken", "forged-captoken"),
    ("X-Aibox-Turn", "forged-turn"),
    ("X-Forwarded-User", "admin"),
    ("x-forwarded-user", "admin2"),
    ("X-Forwarded-Email", "admin@example.com"),
    ("X-Forwarded-Groups", "admins"),
    ("X-Tenant-Id", "globex"),
    ("x-TENANT-id", "globex2"),
    ("X-User-Id", "root"),
    ("Remote-User", "root"),
    ("X-Auth-Request-User", "root"),
    ("X-Org-Id", "globex"),  # configured in auth.strip_headers
]
SPOOFED_NAMES = {k.lower() for k, _ in SPOOFED} - {"x-aibox-principal", "x-aibox-captoken", "x-aibox-turn"}


def route(svc: RecordingServer, prefix: str, audience: str, **extra: Any) -> dict[str, Any]:
    r = {"prefix": prefix, "upstream": svc.url, "audience": audience}
    r.update(extra)
    return r


def gateway_config(fake, routes: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    cfg = base_config()
    cfg["log"] = {"format": "json"}
    cfg["auth"] = {"enabled": True, "api_keys": True, "strip_headers": ["X-Org-Id"]}
    cfg["upstreams"] = [fake.upstream()]
    cfg["models"] = [model("m1", (fake, "m1"))]
    cfg["routes"] = routes
    cfg.update(extra)
    return cfg


def create_key(cluster: Cluster, gw_cwd: Path, tenant: str, user: str, roles: str, env=None) -> str:
    r = cluster.run_aibox(
        ["apikey", "create", "--config", str(gw_cwd / "config.yaml"), "--tenant", tenant, "--user", user, "--roles", roles],
        cwd=gw_cwd,
        env=env if env is not None else KEY_ENV,
    )
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


@dataclass
class Env:
    gw: Aibox
    svc: RecordingServer
    admin: str
    viewer: str

    def get(self, path: str, key: str | None = None, headers: list[tuple[str, str]] | None = None, **kw: Any) -> httpx.Response:
        h = list(headers or [])
        if key:
            h.append(("authorization", f"Bearer {key}"))
        return self.gw.http().request(kw.pop("method", "GET"), path, headers=h, **kw)


@pytest.fixture(scope="module")
def env(module_cluster: Cluster) -> Env:
    svc = RecordingServer(stream_chunks=5, stream_delay=0.25)
    module_cluster._closers.append(svc.close)
    fake = module_cluster.fake_upstream()
    routes = [
        route(svc, "/svc/", "svc", allowed_roles=["admin", "operator"], operations=OPS),
        route(svc, "/raw/", "raw", strip_prefix=False),
    ]
    cfg = gateway_config(fake, routes)
    cfg["server"]["max_body_bytes"] = MAX_BODY
    gw = module_cluster.aibox(cfg, env=KEY_ENV)
    admin = create_key(module_cluster, gw.cwd, "acme", "alice", "admin,user")
    viewer = create_key(module_cluster, gw.cwd, "acme", "victor", "viewer")
    return Env(gw, svc, admin, viewer)


def test_downstream_gets_one_verifiable_principal_and_captoken_and_nothing_spoofed(env: Env):
    body = json.dumps({"path": "/etc/hosts"}).encode()
    headers = SPOOFED + [("x-request-id", "client-rid-42"), ("content-type", "application/json")]
    r = env.get("/svc/files/read?x=1&y=two%20words&x=3", env.admin, headers, method="POST", content=body)
    assert r.status_code == 200, r.text
    assert r.headers["x-downstream"] == "yes"
    rid = r.headers["x-request-id"]
    assert rid == "client-rid-42"
    rec = env.svc.last()

    # Path with the prefix stripped, query string untouched, body intact.
    assert rec.method == "POST"
    assert rec.path == "/files/read?x=1&y=two%20words&x=3"
    assert rec.body == body
    assert rec.one("x-request-id") == rid

    # Exactly one principal, signed by the first key of the keyring.
    token = rec.one("x-aibox-principal")
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "typ": "JWT", "kid": "p2"}
    claims = verify_principal(token, dict(PRINCIPAL_RING), "svc")
    assert claims["iss"] == "aibox" and claims["aud"] == "svc"
    assert (claims["tenant"], claims["sub"], claims["roles"]) == ("acme", "alice", ["admin", "user"])
    assert claims["rid"] == rid
    assert claims["auth"]["method"] == "api_key"
    assert 0 < claims["exp"] - claims["iat"] <= 60
    with pytest.raises(jwt.InvalidAudienceError):
        verify_principal(token, dict(PRINCIPAL_RING), "other-service")

    # The turn's CapToken: the route's operations, bound to X-Aibox-Turn.
    turn = rec.one("x-aibox-turn")
    cap = verify_captoken(rec.one("x-aibox-captoken"), dict(CAPTOKEN_RING), audience="svc")
    assert cap["ops"] == OPS
    assert cap["turn"] == turn != "forged-turn"
    assert (cap["tenant"], cap["sub"]) == ("acme", "alice")
    assert cap["jti"]

    # Nothing the client claimed, and not its credential.
    assert not rec.all("authorization")
    assert env.admin not in json.dumps(rec.headers)
    leaked = SPOOFED_NAMES & rec.names()
    assert not leaked, f"spoofed headers reached the service: {leaked}"
    for _, value in SPOOFED:
        assert value not in [v for _, v in rec.headers], value


def test_each_request_gets_a_fresh_turn_and_captoken(env: Env):
    seen = set()
    for _ in range(3):
        assert env.get("/svc/x", env.admin).status_code == 200
        rec = env.svc.last()
        cap = verify_captoken(rec.one("x-aibox-captoken"), dict(CAPTOKEN_RING), audience="svc")
        seen.add((rec.one("x-aibox-turn"), cap["jti"]))
    assert len({t for t, _ in seen}) == 3 and len({j for _, j in seen}) == 3


def test_route_without_strip_prefix_or_operations(env: Env):
    r = env.get("/raw/a/b?q=1", env.viewer, [("X-Aibox-Captoken", "forged"), ("X-Aibox-Turn", "forged")])
    assert r.status_code == 200, r.text
    rec = env.svc.last()
    assert rec.path == "/raw/a/b?q=1"
    claims = verify_principal(rec.one("x-aibox-principal"), dict(PRINCIPAL_RING), "raw")
    assert (claims["sub"], claims["roles"]) == ("victor", ["viewer"])
    # No operations configured: no CapToken at all, and not the client's.
    assert rec.all("x-aibox-captoken") == []
    assert rec.one("x-aibox-turn") != "forged"


def test_large_request_body_and_streamed_response_pass_through(env: Env):
    body = bytes(range(256)) * 4096  # 1 MiB
    r = env.get("/svc/upload", env.admin, method="PUT", content=body)
    assert r.status_code == 200, r.text
    assert r.json()["body_bytes"] == len(body)
    assert env.svc.last().body == body

    started = time.monotonic()
    arrivals = []
    with env.gw.http().stream("GET", "/svc/stream", headers={"authorization": f"Bearer {env.admin}"}) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"] == "text/event-stream"
        text = ""
        for chunk in resp.iter_text():
            arrivals.append(time.monotonic() - started)
            text += chunk
    events = [e for e in text.split("\n\n") if e]
    assert [e.split(" at ")[0] for e in events] == [f"data: chunk {i}" for i in range(5)], text
    total = 5 * env.svc.stream_delay
    # The first chunk arrived while the service was still producing the rest.
    assert arrivals[0] < total * 0.6, arrivals
    assert arrivals[-1] >= total * 0.8, arrivals


def test_body_over_max_body_bytes_gets_413_and_never_reaches_the_service(env: Env):
    """README: server.max_body_bytes is the largest request body; larger gets
    413. That holds for the OpenAI endpoints, and must for routes too."""
    n = len(env.svc.requests)
    big = b"x" * (MAX_BODY + 1024)
    r = env.get("/svc/upload", env.admin, method="POST", content=big)
    assert r.status_code == 413, f"{r.status_code} {r.text[:200]}"
    assert r.json()["error"]["type"] == "invalid_request_error"

    def chunked():  # no content-length: the limit must hold while streaming
        for _ in range(MAX_BODY // 65536 + 2):
            yield b"y" * 65536

    r = env.get("/svc/upload", env.admin, method="POST", content=chunked())
    assert r.status_code == 413, f"{r.status_code} {r.text[:200]}"
    bodies = [len(x.body) for x in env.svc.requests[n:]]
    assert all(b <= MAX_BODY for b in bodies), f"the service received bodies of {bodies} bytes"


def test_underscore_spellings_of_identity_headers_are_stripped(env: Env):
    """CGI/WSGI servers (and frameworks built on them) read `X_Aibox_Principal`
    and `X-Aibox-Principal` as the same HTTP_X_AIBOX_PRINCIPAL, so a client
    sending the underscore spelling could still assert an identity to such a
    service. oauth2-proxy strips these spellings for the same reason."""
    r = env.get(
        "/svc/x",
        env.admin,
        [
            ("X_Aibox_Principal", "forged"),
            ("x_aibox_tenant", "globex"),
            ("X_Forwarded_User", "admin"),
            ("X_Tenant_Id", "globex"),
            ("X_Org_Id", "globex"),
        ],
    )
    assert r.status_code == 200, r.text
    rec = env.svc.last()
    normalized = [k.lower().replace("_", "-") for k, _ in rec.headers]
    assert normalized.count("x-aibox-principal") == 1, rec.headers
    smuggled = {k for k, _ in rec.headers if "_" in k}
    assert not smuggled, f"underscore spellings of identity headers reached the service: {smuggled}"


def test_principal_without_an_allowed_role_gets_403(env: Env):
    n = len(env.svc.requests)
    r = env.get("/svc/files/read", env.viewer, method="POST", content=b"{}")
    assert r.status_code == 403
    assert r.headers["content-type"] == "application/json"
    err = r.json()["error"]
    assert err["code"] == "permission_denied" and err["type"] == "invalid_request_error"
    assert "/svc/" in err["message"]
    assert len(env.svc.requests) == n, "a refused request reached the service"


def test_unauthenticated_request_to_a_route_never_reaches_it(env: Env):
    n = len(env.svc.requests)
    r = env.get("/svc/files/read", None, SPOOFED)
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    r = env.get("/svc/files/read", "aibox_0123456789abcdef_" + "A" * 43)
    assert r.status_code == 401
    assert len(env.svc.requests) == n


def test_eddsa_principal_verifies_with_the_derived_public_key(cluster: Cluster):
    svc = RecordingServer()
    cluster._closers.append(svc.close)
    fake = cluster.fake_upstream()
    cfg = gateway_config(fake, [route(svc, "/svc/", "svc")], principal={"algorithm": "EdDSA", "ttl_secs": 30})
    gw = cluster.aibox(cfg, env=KEY_ENV)
    key = create_key(cluster, gw.cwd, "acme", "eddie", "user")
    r = gw.http().get("/svc/hello", headers={"authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    token = svc.last().one("x-aibox-principal")
    assert jwt.get_unverified_header(token) == {"alg": "EdDSA", "typ": "JWT", "kid": "p2"}
    claims = verify_principal(token, dict(PRINCIPAL_RING), "svc", alg="EdDSA")
    assert (claims["tenant"], claims["sub"], claims["rid"]) == ("acme", "eddie", r.headers["x-request-id"])
    assert 0 < claims["exp"] - claims["iat"] <= 30
    # The HS256 reading of the same secret must not verify it.
    with pytest.raises(jwt.InvalidAlgorithmError):
        jwt.decode(token, dict(PRINCIPAL_RING)["p2"], algorithms=["HS256"], audience="svc")
    # Another key's public half does not verify it either.
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, ed25519_public_key(dict(PRINCIPAL_RING)["p1"]), algorithms=["EdDSA"], audience="svc")
    out = cluster.run_aibox(["principal", "verify", token, "--audience", "svc", "--ed25519"], env=KEY_ENV)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["sub"] == "eddie"


def test_principal_key_rotation_with_aibox_keys_rotate(cluster: Cluster):
    svc = RecordingServer()
    cluster._closers.append(svc.close)
    fake = cluster.fake_upstream()
    cwd = cluster.aibox_dir()
    # The keyrings live in .env in aibox's working directory (not in the
    # process environment), as an operator would keep them.
    (cwd / ".env").write_text(
        f"AIBOX_PRINCIPAL_KEYS={keyring_value([('v1', new_secret())])}\n"
        f"AIBOX_CAPTOKEN_KEYS={keyring_value(CAPTOKEN_RING)}\n"
    )
    cfg = gateway_config(fake, [route(svc, "/svc/", "svc")])

    def principal_via(gw: Aibox, key: str) -> str:
        r = gw.http().get("/svc/who", headers={"authorization": f"Bearer {key}"})
        assert r.status_code == 200, r.text
        return svc.last().one("x-aibox-principal")

    gw1 = cluster.aibox(cfg, cwd=cwd, env={})
    key = create_key(cluster, cwd, "acme", "rota", "user", env={})
    old = principal_via(gw1, key)
    ring1 = parse_keyring(read_env_file(cwd / ".env")["AIBOX_PRINCIPAL_KEYS"])
    assert jwt.get_unverified_header(old)["kid"] == "v1"
    verify_principal(old, ring1, "svc")
    assert gw1.proc.stop(10) == 0

    r = cluster.run_aibox(["keys", "rotate", "principal", "--env-file", ".env"], cwd=cwd, env={})
    assert r.returncode == 0, r.stderr
    assert "v2" in r.stdout
    env_after = read_env_file(cwd / ".env")
    ring2 = parse_keyring(env_after["AIBOX_PRINCIPAL_KEYS"])
    assert list(ring2) == ["v2", "v1"] and ring2["v1"] == ring1["v1"]
    assert env_after["AIBOX_CAPTOKEN_KEYS"] == keyring_value(CAPTOKEN_RING)
    assert (cwd / ".env").stat().st_mode & 0o077 == 0, "the rotated .env is readable by others"

    gw2 = cluster.aibox(cfg, cwd=cwd, env={})
    new = principal_via(gw2, key)
    assert jwt.get_unverified_header(new)["kid"] == "v2"
    # A service holding the new keyring verifies both the new principal
    # and one signed before the rotation.
    assert verify_principal(new, ring2, "svc")["sub"] == "rota"
    assert verify_principal(old, ring2, "svc")["sub"] == "rota"
    ok = cluster.run_aibox(["principal", "verify", old, "--audience", "svc"], cwd=cwd, env={})
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["sub"] == "rota"

    # Retire v1: principals it signed no longer verify; v2's still do.
    (cwd / ".env").write_text(
        f"AIBOX_PRINCIPAL_KEYS=v2:{env_after['AIBOX_PRINCIPAL_KEYS'].split(',')[0].split(':', 1)[1]}\n"
        f"AIBOX_CAPTOKEN_KEYS={keyring_value(CAPTOKEN_RING)}\n"
    )
    gone = cluster.run_aibox(["principal", "verify", old, "--audience", "svc"], cwd=cwd, env={})
    assert gone.returncode != 0, gone.stdout
    assert "unknown key" in gone.stderr and "'v1'" in gone.stderr, gone.stderr
    assert "AIBOX_PRINCIPAL_KEYS" in gone.stderr
    assert cluster.run_aibox(["principal", "verify", new, "--audience", "svc"], cwd=cwd, env={}).returncode == 0
    wrong_aud = cluster.run_aibox(["principal", "verify", new, "--audience", "other"], cwd=cwd, env={})
    assert wrong_aud.returncode != 0


def test_downstream_calls_are_recorded_in_the_audit_log(cluster):
    """A request through a downstream route is a turn too: the client gets
    its turn id, and the receipt exists once the answer arrives."""
    svc = RecordingServer()
    cluster._closers.append(svc.close)
    fake = cluster.fake_upstream()
    cfg = base_config()
    cfg["upstreams"] = [fake.upstream()]
    cfg["routes"] = [{"prefix": "/svc/", "upstream": svc.url, "audience": "svc"}]
    gw = cluster.aibox(cfg)
    r = gw.http().post("/svc/echo", content=b"payload")
    assert r.status_code == 200, r.text
    turn = r.headers["x-aibox-turn"]
    assert svc.requests[-1].one("x-aibox-turn") == turn
    receipt = gw.http().get(f"/v1/audit/receipts/{turn}")
    assert receipt.status_code == 200, receipt.text
    events = [json.loads(e) for e in receipt.json()["events"]]
    assert [e["type"] for e in events] == ["request_received", "upstream_response", "turn_end"]
    assert events[0]["route"] == "/svc/"
    assert events[0]["body_sha256"] == hashlib.sha256(b"payload").hexdigest()
    assert events[1]["upstream"] == "svc" and events[1]["status"] == 200
