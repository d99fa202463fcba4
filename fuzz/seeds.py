#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets into fuzz/seeds/<target>/.

The seeds come from the repository's own test tables where they exist: the
guardrail's labelled corpus, the URL and address tables of the egress crate
and its end-to-end test, the identity crate's test keys, the SSE and MCP
shapes the tests use. Deterministic: running it twice writes the same files.
"""

import base64
import hashlib
import json
import pathlib
import random
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "fuzz" / "seeds"


def write(target: str, name: str, data: bytes) -> None:
    d = OUT / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


def b64url(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def guardrail_texts() -> list[str]:
    """The labelled corpus, with its generated-credential markers expanded."""
    rng = random.Random(9)
    alphabets = {
        "b32": "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567",
        "b64": "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
        "hex": "0123456789abcdef",
        "alnum": "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
    }

    def expand(m: re.Match) -> str:
        kind, n = m.group(1), int(m.group(2))
        return "".join(rng.choice(alphabets.get(kind, alphabets["alnum"])) for _ in range(n))

    texts = []
    for f in sorted((ROOT / "crates/aibox-guardrail/corpus").glob("*.jsonl")):
        for line in f.read_text().splitlines():
            if line.strip():
                texts.append(re.sub(r"⟦(\w+):(\d+)⟧", expand, json.loads(line)["text"]))
    return texts


def guardrail() -> None:
    for i, t in enumerate(guardrail_texts()):
        write("guardrail", f"corpus-{i:03}", bytes([i % 256]) + t.encode())


def egress() -> None:
    sources = [
        *(ROOT / "crates/aibox-egress/src").glob("*.rs"),
        ROOT / "tests/e2e/test_egress.py",
        ROOT / "tests/e2e/test_fetch.py",
    ]
    urls, addrs = set(), set()
    for src in sources:
        text = src.read_text()
        urls.update(re.findall(r'"((?:https?|ftp|file|gopher)://[^"\s]*)"', text))
        addrs.update(re.findall(r'"([0-9a-fA-F:.]{2,45})"', text))
    for u in sorted(urls):
        write("egress", "url-" + hashlib.sha1(u.encode()).hexdigest()[:12], u.encode())
    import ipaddress

    for a in sorted(addrs):
        try:
            ip = ipaddress.ip_address(a)
        except ValueError:
            continue
        # As raw octets (the first 4 or 16 bytes are read as an address).
        write("egress", "ip-" + hashlib.sha1(a.encode()).hexdigest()[:12], ip.packed + b"\0" * 12)


def sse() -> None:
    chunk = lambda c: "data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": c}}]}) + "\n\n"
    usage = 'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}\r\n\r\n'
    streams = [
        chunk("hi") + usage + "data: [DONE]\n\n",
        chunk("a") + chunk("b") + "data: [DONE]\n\n",
        ": keep-alive\n\nevent: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n\n",
        "data: line one\r\ndata: line two\r\rid: 7\nretry: 10\n\n",
        'data: {"usage":null,"choices":[{"delta":{"content":"[DONE]"}}]}\n\n',
    ]
    for i, s in enumerate(streams):
        write("sse", f"stream-{i}", bytes([3, 7]) + s.encode())


def openai_body() -> None:
    prompts = guardrail_texts()[::20] + ["hello", "my email is alice@example.com, call +1 415 555 0100"]
    for i, p in enumerate(prompts):
        chat = {"model": "m", "messages": [{"role": "system", "content": "be brief"},
                                           {"role": "user", "content": p},
                                           {"role": "tool", "content": [{"type": "text", "text": p}]}],
                "stream": i % 2 == 0}
        answer = {"id": "c1", "object": "chat.completion", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "[EMAIL_1] " + p}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}}
        events = "".join(
            "data: " + json.dumps({"id": "c1", "object": "chat.completion.chunk",
                                   "choices": [{"index": 0, "delta": {"content": w + " "}}]}) + "\n\n"
            for w in p.split()[:12]) + "data: [DONE]\n\n"
        blob = json.dumps(chat).encode() + b"\xff" + json.dumps(answer).encode() + b"\xff" + events.encode()
        write("openai_body", f"chat-{i:02}", b"\x00" + blob)
        comp = {"model": "m", "prompt": [p, "x"], "max_tokens": 5}
        write("openai_body", f"completion-{i:02}", b"\x01" + json.dumps(comp).encode() + b"\xff"
              + json.dumps({"choices": [{"text": p}]}).encode())
    write("openai_body", "embeddings", b"\x02" + json.dumps({"model": "e", "input": ["a", "b"]}).encode())


def mcp() -> None:
    msgs = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "c", "version": "1"}}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}},
        {"jsonrpc": "2.0", "id": "a", "method": "tools/call",
         "params": {"name": "fetch__fetch", "arguments": {"url": "http://169.254.169.254/latest/meta-data"}}},
        {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "nope__x", "arguments": {}}},
        {"jsonrpc": "2.0", "id": 4, "method": "ping"},
        {"jsonrpc": "2.0", "id": 5, "result": {}},
        {"jsonrpc": "2.0", "id": 6, "error": {"code": -32601, "message": "nope", "data": [1]}},
        [{"jsonrpc": "2.0", "id": 7, "method": "tools/list"}, {"jsonrpc": "2.0", "method": "x"}],
    ]
    for i, m in enumerate(msgs):
        write("mcp_jsonrpc", f"msg-{i}", json.dumps(m).encode())


def jwt() -> None:
    now = 1_750_000_000
    claims = {"iss": "https://idp.example.com/realms/acme", "aud": ["aibox-gateway", "account"],
              "sub": "alice", "tenant": "acme", "exp": now + 300, "iat": now - 5, "nbf": now - 5,
              "azp": "open-webui", "realm_access": {"roles": ["ai-user"]}, "groups": ["/acme/dev"]}
    write("jwt", "oidc-claims", b"\x01" + json.dumps(claims).encode())
    write("jwt", "oidc-header", b"\x02" + json.dumps({"alg": "EdDSA", "kid": "ed-1", "typ": "JWT"}).encode())
    principal = {"iss": "aibox", "aud": "downstream", "sub": "alice", "tenant": "acme", "roles": ["r"],
                 "rid": "req-1", "auth": {"method": "api_key", "key_id": "k"}, "iat": now, "exp": now + 60,
                 "jti": "j1", "turn": "turn-1", "ops": ["tools/call"]}
    write("jwt", "hs256-claims", b"\x03" + json.dumps(principal).encode())
    for i, h in enumerate([{"alg": "none"}, {"alg": "HS256", "kid": "ed-1"}, {"alg": "RS256", "kid": "x", "jku": "http://e"},
                           {"alg": "EdDSA", "kid": "ed-1", "crit": ["b64"]}]):
        tok = b64url(json.dumps(h).encode()) + "." + b64url(json.dumps(claims).encode()) + "." + b64url(b"\0" * 64)
        write("jwt", f"token-{i}", b"\x00" + tok.encode())


def jwks() -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    def n(i: int) -> str:
        return b64url(i.to_bytes((i.bit_length() + 7) // 8, "big"))

    keys = []
    td = ROOT / "crates/aibox-identity/testdata"
    for pem, alg, kid in [("provider-rsa2048.pem", "RS256", "rsa-1"), ("provider-p256.pem", "ES256", "ec-1"),
                          ("provider-p384.pem", "ES384", "ec384-1")]:
        k = serialization.load_pem_private_key((td / pem).read_bytes(), None)
        pub = k.public_key().public_numbers()
        if isinstance(k, rsa.RSAPrivateKey):
            keys.append({"kty": "RSA", "kid": kid, "alg": alg, "use": "sig", "n": n(pub.n), "e": n(pub.e)})
        elif isinstance(k, ec.EllipticCurvePrivateKey):
            size = (k.curve.key_size + 7) // 8
            crv = {"secp256r1": "P-256", "secp384r1": "P-384"}[k.curve.name]
            keys.append({"kty": "EC", "kid": kid, "alg": alg, "crv": crv,
                         "x": b64url(pub.x.to_bytes(size, "big")), "y": b64url(pub.y.to_bytes(size, "big"))})
    # The fuzz targets' own Ed25519 key (seed of 32 bytes of 7).
    ed = ed25519.Ed25519PrivateKey.from_private_bytes(bytes([7] * 32)).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    keys.append({"kty": "OKP", "crv": "Ed25519", "kid": "ed-1", "alg": "EdDSA", "x": b64url(ed)})
    keys.append({"kty": "oct", "kid": "hmac", "k": b64url(b"secret")})
    write("jwks", "provider", json.dumps({"keys": keys}).encode())
    for i, k in enumerate(keys):
        write("jwks", f"key-{i}", json.dumps({"keys": [k]}).encode())


def audit() -> None:
    write("audit_note", "checkpoint-text", b"\x01aibox.example/audit/acme\n7\n" + base64.b64encode(b"\x11" * 32) + b"\n")
    env = ("aibox-envelope/v1\nacme\nturn-fuzz-1\n0\n2\n3\n" + base64.b64encode(b"\x22" * 32).decode()
           + "\n" + base64.b64encode(b"\0" * 32).decode() + "\n1\n")
    write("audit_note", "envelope-text", b"\x01" + env.encode())
    write("audit_note", "signed-shape", b"\x00" + env.encode() + "\n— aibox.example/audit/acme/envelope AAAAAA==\n".encode())
    write("audit_note", "verifier-key", b"\x01example.com/log+0123abcd+AQ" + b"A" * 42 + b"=")
    write("receipt", "built", b"\x01\x02\x00\x10\x41\x00{}")
    write("receipt", "json", b"\x00" + json.dumps({
        "format": "aibox-receipt/v1", "tenant": "acme", "turn": "turn-1", "events": ["{}"],
        "envelope": env, "key_version": 1, "leaf_index": 0, "tree_size": 1,
        "inclusion_proof": [], "checkpoint": "aibox.example/audit/acme\n1\nAA==\n\n"}).encode())


if __name__ == "__main__":
    for f in (guardrail, egress, sse, openai_body, mcp, jwt, jwks, audit):
        f()
    for d in sorted(OUT.iterdir()):
        print(f"{d.name}: {len(list(d.iterdir()))} seeds")
