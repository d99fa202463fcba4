"""Helpers for the identity end-to-end tests (test_identity.py, test_downstream.py).

- `SigningKey`: an RSA or EC key pair the test holds, as a private JWK for the
  OIDC provider and as a PyJWT signing key for forged tokens.
- `OidcProvider`: the real `oidc-provider` (Node.js, tests/e2e/oidc/provider.js)
  started on 127.0.0.1 port 0, issuing JWT access tokens through the
  client_credentials grant; `rotate()` publishes a new signing key.
- `RecordingServer`: a stdlib HTTP server in a thread that records every
  request (raw header list, body) and answers, streams or serves fixed files;
  used as a downstream service and as an attacker's key server.
- Keyrings (`AIBOX_PRINCIPAL_KEYS` / `AIBOX_CAPTOKEN_KEYS`) and verification of
  aibox's signed headers with PyJWT, the way a downstream service would.
- `log_events()`: aibox's JSON log lines, to find the reason of a refusal by
  request id.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from conftest import Proc, clean_env

OIDC_DIR = Path(__file__).resolve().parent / "oidc"
NPM_INSTALL = "npm ci --prefix tests/e2e/oidc"


# --------------------------------------------------------------------------
# Base64url and JWS pieces
# --------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def jws_header(token: str) -> dict[str, Any]:
    return json.loads(b64url_decode(token.split(".")[0]))


def jws_payload(token: str) -> dict[str, Any]:
    return json.loads(b64url_decode(token.split(".")[1]))


def raw_jws(header: Mapping[str, Any], payload: Mapping[str, Any], sign: Callable[[bytes], bytes]) -> str:
    """A compact JWS with exactly this header (PyJWT adds fields of its own)."""
    signing_input = (
        b64url(json.dumps(dict(header), separators=(",", ":")).encode())
        + "."
        + b64url(json.dumps(dict(payload), separators=(",", ":")).encode())
    )
    return signing_input + "." + b64url(sign(signing_input.encode()))


def hs256(secret: bytes) -> Callable[[bytes], bytes]:
    return lambda data: hmac.new(secret, data, hashlib.sha256).digest()


# --------------------------------------------------------------------------
# Keys the test holds
# --------------------------------------------------------------------------


@dataclass
class SigningKey:
    """A key pair with a kid and a JWS algorithm."""

    kid: str
    alg: str
    private: Any

    @classmethod
    def rsa(cls, kid: str, alg: str = "RS256", bits: int = 2048) -> "SigningKey":
        return cls(kid, alg, rsa.generate_private_key(public_exponent=65537, key_size=bits))

    @classmethod
    def ec(cls, kid: str) -> "SigningKey":
        return cls(kid, "ES256", ec.generate_private_key(ec.SECP256R1()))

    def _jwk(self, key: Any) -> dict[str, Any]:
        impl = RSAAlgorithm if self.alg[:2] in ("RS", "PS") else ECAlgorithm
        j = impl.to_jwk(key, as_dict=True)
        # PyJWT marks keys with key_ops ["sign"]/["verify"]; the provider
        # would publish that as is, and a published key must not say "sign".
        j.pop("key_ops", None)
        j.update(kid=self.kid, alg=self.alg, use="sig")
        return j

    def private_jwk(self) -> dict[str, Any]:
        return self._jwk(self.private)

    def public_jwk(self) -> dict[str, Any]:
        return self._jwk(self.private.public_key())

    def public_pem(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, payload: Mapping[str, Any], headers: Mapping[str, Any] | None = None) -> str:
        h = {"kid": self.kid, "typ": "at+jwt"}
        h.update(headers or {})
        h = {k: v for k, v in h.items() if v is not None}  # {"kid": None} drops the kid
        return jwt.encode(dict(payload), self.private, algorithm=self.alg, headers=h)


# --------------------------------------------------------------------------
# The OIDC provider (oidc-provider on Node.js)
# --------------------------------------------------------------------------


def _require_node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail(
            "Node.js is required for the OIDC provider of the identity tests (node >= 20 on PATH); "
            f"install it, then run `{NPM_INSTALL}` from the repository root",
            pytrace=False,
        )
    if not (OIDC_DIR / "node_modules" / "oidc-provider" / "package.json").is_file():
        pytest.fail(
            f"the oidc-provider package is not installed in {OIDC_DIR}; run `{NPM_INSTALL}` "
            "from the repository root (needs npm and the npm registry)",
            pytrace=False,
        )
    return node


@dataclass
class Client:
    """An OAuth client of the provider, with the extra claims its tokens carry."""

    client_id: str
    claims: dict[str, Any]
    auth_method: str = "client_secret_basic"
    client_secret: str = field(default_factory=lambda: "cs-" + secrets.token_urlsafe(24))
    #: Set for a login client (authorization code grant with PKCE).
    redirect_uris: list[str] = field(default_factory=list)

    def as_config(self) -> dict[str, Any]:
        return {
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "auth_method": self.auth_method,
            "claims": self.claims,
            "redirect_uris": self.redirect_uris,
        }


def user_claims(tenant: str, user: str, roles: Sequence[str]) -> dict[str, Any]:
    """Claims the way Keycloak puts them in tokens (aibox's default mapping)."""
    return {"tenant": tenant, "preferred_username": user, "realm_access": {"roles": list(roles)}}


class OidcProvider:
    """A running oidc-provider; tokens come from its real token endpoint."""

    def __init__(
        self,
        cluster,
        clients: Sequence[Client],
        resources: Mapping[str, Mapping[str, Any]] | None = None,
        keys: Sequence[SigningKey] | None = None,
        users: Mapping[str, Mapping[str, Any]] | None = None,
    ):
        node = _require_node()
        self.dir = cluster._dir("oidc-")
        self.clients = {c.client_id: c for c in clients}
        self.keys = list(keys or [SigningKey.rsa("k1")])
        self.keys_file = self.dir / "keys.json"
        self._write_keys()
        self.resources = dict(
            resources
            or {
                "urn:aibox": {"audience": "aibox", "alg": "RS256"},
                "urn:other": {"audience": "other", "alg": "RS256"},
            }
        )
        config = {
            "port": 0,
            "keys_file": str(self.keys_file),
            "resources": self.resources,
            "default_resource": next(iter(self.resources)),
            "clients": [c.as_config() for c in clients],
            "users": dict(users or {}),
        }
        cfg_path = self.dir / "provider.json"
        cfg_path.write_text(json.dumps(config, indent=2))
        env = clean_env({"NODE_ENV": "test"})
        self.proc = Proc("oidc", [node, str(OIDC_DIR / "provider.js"), str(cfg_path)], self.dir, env)
        cluster.others.append(self.proc)
        self.issuer = self.proc.wait_for(re.compile(r"^LISTENING (\S+)$", re.M)).group(1)
        self.port = int(self.issuer.rsplit(":", 1)[1])
        self.jwks_url = f"{self.issuer}/jwks"
        self.token_url = f"{self.issuer}/token"
        self._http = httpx.Client(timeout=10)
        cluster._closers.append(self._http.close)

    def _write_keys(self) -> None:
        self.keys_file.write_text(json.dumps({"keys": [k.private_jwk() for k in self.keys]}))
        os.chmod(self.keys_file, 0o600)

    @property
    def signing_key(self) -> SigningKey:
        return self.keys[0]

    def token(self, client_id: str, resource: str | None = None) -> str:
        """An access token from the token endpoint (client_credentials)."""
        c = self.clients[client_id]
        data = {"grant_type": "client_credentials"}
        if resource:
            data["resource"] = resource
        if c.auth_method == "client_secret_post":
            data.update(client_id=c.client_id, client_secret=c.client_secret)
            r = self._http.post(self.token_url, data=data)
        else:
            r = self._http.post(self.token_url, data=data, auth=(c.client_id, c.client_secret))
        assert r.status_code == 200, f"token endpoint: {r.status_code} {r.text}\n{self.proc.describe()}"
        body = r.json()
        assert body["token_type"].lower() == "bearer"
        return body["access_token"]

    def rotate(self, new_key: SigningKey, keep_old: bool = True) -> list[str]:
        """Puts `new_key` in front (it signs from now on), keeps the old keys
        published, and makes the running provider reload. Returns the kids."""
        self.keys = [new_key] + (self.keys if keep_old else [])
        self._write_keys()
        r = self._http.post(f"{self.issuer}/_rotate")
        assert r.status_code == 200, r.text
        kids = r.json()["kids"]
        published = [k["kid"] for k in self._http.get(self.jwks_url).json()["keys"]]
        assert published == kids == [k.kid for k in self.keys]
        return kids

    def claims(self, client_id: str = "", **over: Any) -> dict[str, Any]:
        """A claim set like the provider's own tokens, for forging."""
        now = int(time.time())
        base: dict[str, Any] = {
            "iss": self.issuer,
            "aud": "aibox",
            "sub": client_id or "forged",
            "client_id": client_id or "forged",
            "jti": uuid.uuid4().hex,
            "iat": now,
            "exp": now + 300,
        }
        if client_id:
            base.update(self.clients[client_id].claims)
        base.update(over)
        return {k: v for k, v in base.items() if v is not None}

    def auth_config(self, discovery: bool = False, **extra: Any) -> dict[str, Any]:
        """An `auth:` section for this provider."""
        a: dict[str, Any] = {"enabled": True, "issuer": self.issuer}
        if not discovery:
            a["jwks_url"] = self.jwks_url
        a["audiences"] = ["aibox"]
        a.update(extra)
        return a


# --------------------------------------------------------------------------
# A recording HTTP server (downstream service, attacker key server)
# --------------------------------------------------------------------------


@dataclass
class Recorded:
    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes

    def all(self, name: str) -> list[str]:
        """Every value of header `name`, whatever its case."""
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def one(self, name: str) -> str:
        values = self.all(name)
        assert len(values) == 1, f"expected exactly one {name}, got {values}"
        return values[0]

    def names(self) -> set[str]:
        return {k.lower() for k, _ in self.headers}


class RecordingServer:
    """Answers on 127.0.0.1, recording each request.

    - `files[path] = (status, content_type, bytes)` serves fixed responses;
    - paths starting with `/stream` answer with `stream_chunks` chunks, one
      every `stream_delay` seconds (chunked transfer encoding);
    - anything else gets 200 JSON echoing method, path and body size.
    """

    def __init__(self, stream_chunks: int = 5, stream_delay: float = 0.2):
        self.requests: list[Recorded] = []
        self.files: dict[str, tuple[int, str, bytes]] = {}
        self.stream_chunks = stream_chunks
        self.stream_delay = stream_delay
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("transfer-encoding", "").lower() == "chunked":
                    out = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return out
                        out += self.rfile.read(size)
                        self.rfile.readline()
                n = int(self.headers.get("content-length") or 0)
                return self.rfile.read(n) if n else b""

            def _handle(self) -> None:
                body = self._body()
                rec = Recorded(self.command, self.path, list(self.headers.items()), body)
                outer.requests.append(rec)
                path = self.path.split("?")[0]
                if path in outer.files:
                    status, ctype, data = outer.files[path]
                    self.send_response(status)
                    self.send_header("content-type", ctype)
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                elif path.startswith("/stream"):
                    self.send_response(200)
                    self.send_header("content-type", "text/event-stream")
                    self.send_header("transfer-encoding", "chunked")
                    self.send_header("x-downstream", "yes")
                    self.end_headers()
                    for i in range(outer.stream_chunks):
                        chunk = f"data: chunk {i} at {time.monotonic():.3f}\n\n".encode()
                        self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                        self.wfile.flush()
                        time.sleep(outer.stream_delay)
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                else:
                    data = json.dumps(
                        {"method": self.command, "path": self.path, "body_bytes": len(body)}
                    ).encode()
                    self.send_response(200)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    self.send_header("x-downstream", "yes")
                    self.end_headers()
                    self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def last(self) -> Recorded:
        assert self.requests, "the server received no request"
        return self.requests[-1]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# --------------------------------------------------------------------------
# Keyrings and aibox's signed headers
# --------------------------------------------------------------------------


def new_secret() -> bytes:
    return secrets.token_bytes(32)


def keyring_value(entries: Sequence[tuple[str, bytes]]) -> str:
    """`KEY_ID:BASE64URL,...` (the first entry signs)."""
    return ",".join(f"{kid}:{b64url(secret)}" for kid, secret in entries)


def parse_keyring(value: str) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for entry in value.split(","):
        kid, secret = entry.strip().split(":", 1)
        out[kid] = b64url_decode(secret)
    return out


def read_env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            k, v = line.split("=", 1)
            v = v.strip()
            if len(v) >= 2 and v[0] == v[-1] and v[0] in "'\"":
                v = v[1:-1]
            out[k.strip()] = v
    return out


ED25519_SEED_DOMAIN = b"aibox-principal-ed25519-v1\0"


def ed25519_public_key(secret: bytes) -> ed25519.Ed25519PublicKey:
    """The public key aibox derives from a principal keyring secret."""
    seed = hashlib.sha256(ED25519_SEED_DOMAIN + secret).digest()
    return ed25519.Ed25519PrivateKey.from_private_bytes(seed).public_key()


def verify_principal(
    token: str, ring: Mapping[str, bytes], audience: str, alg: str = "HS256"
) -> dict[str, Any]:
    """Verifies X-Aibox-Principal as a downstream service would (PyJWT)."""
    header = jwt.get_unverified_header(token)
    assert header["alg"] == alg, header
    secret = ring[header["kid"]]
    key: Any = secret if alg == "HS256" else ed25519_public_key(secret)
    return jwt.decode(
        token,
        key,
        algorithms=[alg],
        audience=audience,
        issuer="aibox",
        options={"require": ["exp", "iat", "iss", "aud", "sub"]},
    )


def verify_captoken(token: str, ring: Mapping[str, bytes], audience: str | None = None) -> dict[str, Any]:
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "HS256", header
    return jwt.decode(
        token,
        ring[header["kid"]],
        algorithms=["HS256"],
        audience=audience,
        issuer="aibox",
        options={"require": ["exp", "iat", "iss", "jti"], "verify_aud": audience is not None},
    )


# --------------------------------------------------------------------------
# aibox's JSON logs
# --------------------------------------------------------------------------


def log_events(stderr: str) -> list[dict[str, Any]]:
    out = []
    for line in stderr.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


def events_for(stderr: str, request_id: str) -> list[dict[str, Any]]:
    return [e for e in log_events(stderr) if (e.get("span") or {}).get("request_id") == request_id]


def refusal_reason(gw, request_id: str, timeout: float = 3.0) -> str | None:
    """The `reason` of aibox's "authentication refused" line for a request."""
    deadline = time.monotonic() + timeout
    while True:
        for e in events_for(gw.stderr(), request_id):
            if "reason" in e and e.get("level") in ("WARN", "ERROR"):
                return e["reason"]
        if time.monotonic() > deadline:
            return None
        time.sleep(0.05)
