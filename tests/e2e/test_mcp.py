"""The MCP tool gateway end to end: the official MCP Python SDK as the client.

aibox serves `/mcp` (Streamable HTTP) in front of two real MCP servers
written with the same SDK (tests/e2e/mcp_servers/): one stdio server that
aibox starts as a child process, one Streamable HTTP server on a loopback
port, plus the built-in filesystem server confined to a directory of the
test. Callers authenticate with gateway API keys; CapTokens are minted here
with the test's `AIBOX_CAPTOKEN_KEYS` (HS256 JWS, the claim set of
crates/aibox-identity/src/captoken.rs) and presented per call in
`params._meta["aibox/captoken"]`.

Covered: tools are listed and called over stdio and HTTP, namespaced
`SERVER__TOOL`; a client in no `allow_clients` sees no tool and cannot call
one; calls without a valid CapToken (none, another tool's, forged, expired,
another user's) are refused with the reason and the fix; every call,
allowed or refused, is its own audit turn whose receipt (served at
`/v1/audit/receipts/{turn}`) holds the `tool_call` event; the stdio process
gets a cleared environment with only the registry's variables and the
injected secret, its working directory and limits; slow tools time out and a
crashed server comes back; filesystem escapes are refused; `Origin` and
`MCP-Protocol-Version` are enforced; registry mistakes stop start-up.

Note: the HTTP upstream is on 127.0.0.1, which the SSRF-safe egress refuses
by default; the test allow-lists that host and port
(`AIBOX_EGRESS_ALLOW_HOSTS`, `AIBOX_EGRESS_ALLOWED_PORTS`), and
`test_remote_server_on_loopback_is_refused_without_allow_list` checks the
refusal without them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import secrets
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

import httpx
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import McpError

from conftest import Aibox, Cluster, Proc, base_config, clean_env
from identity_kit import b64url, hs256, keyring_value, log_events, new_secret, raw_jws

SERVERS_DIR = Path(__file__).resolve().parent / "mcp_servers"
CAPTOKEN_SECRET = new_secret()
CAPTOKEN_RING = [("c1", CAPTOKEN_SECRET)]
KEY_ENV = {
    "AIBOX_PRINCIPAL_KEYS": keyring_value([("p1", new_secret())]),
    "AIBOX_CAPTOKEN_KEYS": keyring_value(CAPTOKEN_RING),
}
#: The secret aibox injects into the stdio server as API_TOKEN (interim
#: secret source: AIBOX_MCP_SECRET_<NAME> until the vault is wired).
INJECTED_SECRET = "tok-e2e-" + secrets.token_hex(8)
TOOL_TIMEOUT_MS = 2000

#: JSON-RPC error codes of the gateway.
INVALID_PARAMS = -32602
POLICY_DENIED = -32010
CAPTOKEN_REFUSED = -32011
GUARDRAIL_BLOCKED = -32012
UPSTREAM_TIMEOUT = -32013
UPSTREAM_UNAVAILABLE = -32014


# --------------------------------------------------------------------------
# CapTokens, as aibox mints them
# --------------------------------------------------------------------------


def captoken(
    tenant: str,
    user: str,
    ops: list[str],
    *,
    turn: str | None = None,
    secret: bytes = CAPTOKEN_SECRET,
    kid: str = "c1",
    iat: int | None = None,
    ttl: int = 300,
) -> tuple[str, str]:
    """A CapToken and its turn id."""
    turn = turn or str(uuid.uuid4())
    now = int(time.time()) if iat is None else iat
    claims = {
        "iss": "aibox",
        "jti": b64url(secrets.token_bytes(16)),
        "turn": turn,
        "tenant": tenant,
        "sub": user,
        "ops": ops,
        "iat": now,
        "exp": now + ttl,
    }
    return raw_jws({"alg": "HS256", "typ": "JWT", "kid": kid}, claims, hs256(secret)), turn


# --------------------------------------------------------------------------
# The environment: two MCP servers, aibox, API keys
# --------------------------------------------------------------------------


@dataclass
class Env:
    gw: Aibox
    alice: str  # tenant acme, role tools: in allow_clients
    bob: str  # tenant acme, no role: in no allow_clients
    shared: Path  # FILESYSTEM_ROOT
    workdir: Path  # the stdio server's cwd
    http_server: Proc

    def url(self) -> str:
        return f"{self.gw.main_url}/mcp"


def create_key(cluster: Cluster, cwd: Path, tenant: str, user: str, roles: str) -> str:
    r = cluster.run_aibox(
        ["apikey", "create", "--config", str(cwd / "config.yaml"), "--tenant", tenant, "--user", user, "--roles", roles],
        cwd=cwd,
        env=KEY_ENV,
    )
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def write_registry(cwd: Path, servers: list[str], registry: dict[str, Any]) -> None:
    mcp_dir = cwd / "data" / "mcp"
    mcp_dir.mkdir(parents=True, exist_ok=True)
    (mcp_dir / "servers.txt").write_text("# enabled MCP servers\n" + "\n".join(servers) + "\n")
    (mcp_dir / "registry.json").write_text(json.dumps({"servers": registry}, indent=2))


def gateway_config() -> dict[str, Any]:
    cfg = base_config()
    cfg["log"] = {"format": "json"}
    cfg["auth"] = {"enabled": True, "api_keys": True}
    return cfg


def stdio_server(**extra: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "transport": "stdio",
        "command": sys.executable,
        "args": [str(SERVERS_DIR / "stdio_server.py")],
    }
    entry.update(extra)
    return entry


@pytest.fixture(scope="module")
def env(module_cluster: Cluster) -> Env:
    http_dir = module_cluster._dir("mcp-http-")
    http_server = Proc("mcp-http", [sys.executable, str(SERVERS_DIR / "http_server.py")], http_dir, clean_env())
    module_cluster.others.append(http_server)
    http_addr = http_server.wait_for(re.compile(r"^LISTENING (\S+)$", re.M)).group(1)

    cwd = module_cluster.aibox_dir()
    shared = cwd / "shared"
    (shared / "docs").mkdir(parents=True)
    (shared / "docs" / "note.txt").write_text("shared note")
    (cwd / "shared2").mkdir()
    (cwd / "shared2" / "secret.txt").write_text("SECRET-SIBLING")
    (cwd / "outside.txt").write_text("SECRET-OUTSIDE")
    os.symlink(cwd / "outside.txt", shared / "link-out")
    workdir = cwd / "work"
    workdir.mkdir()
    write_registry(
        cwd,
        ["local", "remote", "filesystem", "closed"],
        {
            "local": stdio_server(
                env={"GREETING": "hello"},
                secrets={"API_TOKEN": "api-token"},
                cwd=str(workdir),
                limits={"open_files": 128},
                timeout_ms=TOOL_TIMEOUT_MS,
                allow_clients=["tenant:acme&role:tools"],
                tools={"deny": ["danger"]},
                resources={"deny": ["notes://private/*"]},
                prompts={"deny": ["debug_*"]},
            ),
            "remote": {
                "transport": "http",
                "url": f"http://{http_addr}/mcp",
                "allow_clients": ["tenant:acme&role:tools"],
                # Resources exposed; no "prompts" key, so its prompts stay hidden.
                "resources": {},
            },
            "filesystem": {"transport": "builtin", "allow_clients": ["user:acme/alice"]},
            "closed": stdio_server(allow_clients=[]),
            "unused": stdio_server(),
        },
    )
    gw = module_cluster.aibox(
        gateway_config(),
        env={
            **KEY_ENV,
            "FILESYSTEM_ROOT": str(shared),
            "AIBOX_MCP_SECRET_API_TOKEN": INJECTED_SECRET,
            # The SSRF-safe egress refuses loopback: the test's HTTP MCP
            # server is allow-listed explicitly, host and port.
            "AIBOX_EGRESS_ALLOW_HOSTS": "127.0.0.1",
            "AIBOX_EGRESS_ALLOWED_PORTS": http_addr.rsplit(":", 1)[1],
        },
        cwd=cwd,
    )
    alice = create_key(module_cluster, cwd, "acme", "alice", "tools")
    bob = create_key(module_cluster, cwd, "acme", "bob", "viewer")
    return Env(gw, alice, bob, shared, workdir, http_server)


# --------------------------------------------------------------------------
# The MCP client
# --------------------------------------------------------------------------


def with_session(
    env: Env, key: str, fn: Callable[[ClientSession], Awaitable[Any]], extra: dict[str, str] | None = None
) -> Any:
    """Runs `fn` in an initialized MCP session as the holder of `key`."""

    async def go() -> Any:
        headers = {"Authorization": f"Bearer {key}", **(extra or {})}
        async with httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(30, read=60)) as client:
            async with streamable_http_client(env.url(), http_client=client) as (read, write, _):
                async with ClientSession(read, write) as session:
                    init = await session.initialize()
                    # The SDK asks for its newest revision; aibox answers
                    # with 2025-06-18, which the SDK accepts.
                    assert init.protocolVersion == "2025-06-18", init
                    return await fn(session)

    return asyncio.run(go())


def tool_names(env: Env, key: str) -> list[str]:
    async def fn(s: ClientSession) -> list[str]:
        return sorted(t.name for t in (await s.list_tools()).tools)

    return with_session(env, key, fn)


def call(env: Env, key: str, tool: str, args: dict[str, Any], token: str | None) -> Any:
    """The CallToolResult, or the McpError."""

    async def fn(s: ClientSession) -> Any:
        meta = {"aibox/captoken": token} if token else None
        try:
            return await s.call_tool(tool, args, meta=meta)
        except McpError as e:
            return e

    return with_session(env, key, fn)


def text(result: Any) -> str:
    assert not isinstance(result, McpError), f"the call failed: {result.error}"
    return "".join(c.text for c in result.content if getattr(c, "type", "") == "text")


def receipt_events(env: Env, key: str, turn: str) -> list[dict[str, Any]]:
    r = env.gw.http().get(f"/v1/audit/receipts/{turn}", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200, f"no receipt for turn {turn}: {r.status_code} {r.text}"
    return [json.loads(e) for e in r.json()["events"]]


def tool_call_event(env: Env, key: str, turn: str) -> dict[str, Any]:
    events = receipt_events(env, key, turn)
    assert [e["type"] for e in events][0] == "request_received", events
    assert events[0]["route"] == "/mcp"
    assert events[-1]["type"] == "turn_end", events
    calls = [e for e in events if e["type"] == "tool_call"]
    assert len(calls) == 1, events
    return calls[0]


def error_turn(err: McpError) -> str:
    return err.error.data["turn"]


def mcp_request_event(env: Env, key: str, turn: str) -> dict[str, Any]:
    """The one `mcp_request` event of a resources/read or prompts/get turn."""
    events = receipt_events(env, key, turn)
    assert events[0]["type"] == "request_received" and events[0]["route"] == "/mcp", events
    assert events[-1]["type"] == "turn_end", events
    found = [e for e in events if e["type"] == "mcp_request"]
    assert len(found) == 1, events
    return found[0]


def sha256_json(v: Any) -> str:
    """The hash aibox records for a JSON value (compact, keys sorted)."""
    return hashlib.sha256(json.dumps(v, separators=(",", ":"), sort_keys=True).encode()).hexdigest()


async def refused(coro: Awaitable[Any]) -> McpError:
    """The McpError a request must end in."""
    try:
        r = await coro
    except McpError as e:
        return e
    raise AssertionError(f"the request was not refused: {r}")


# --------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------


def test_list_and_call_over_stdio_and_http_with_audit_receipts(env: Env):
    names = tool_names(env, env.alice)
    for want in ["local__echo", "local__add", "local__env_names", "remote__weather", "remote__upper", "filesystem__read_file", "filesystem__list_directory"]:
        assert want in names, names
    assert "local__danger" not in names, "a tool the registry denies was listed"
    assert not [n for n in names if n.startswith(("closed__", "unused__"))], names
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{1,64}", n) for n in names), "names must be valid OpenAI function names"

    # stdio
    token, parent = captoken("acme", "alice", ["tool:local/add", "tool:remote/weather"])
    args = {"a": 2, "b": 3}
    result = call(env, env.alice, "local__add", args, token)
    assert text(result) == "5"
    assert result.structuredContent == {"result": 5}
    turn = result.meta["aibox/turn"]
    ev = tool_call_event(env, env.alice, turn)
    assert (ev["server"], ev["tool"], ev["outcome"]) == ("local", "add", {"outcome": "ok"}), ev
    assert ev["parent_turn"] == parent
    assert ev["arguments_sha256"] == hashlib.sha256(json.dumps(args, separators=(",", ":"), sort_keys=True).encode()).hexdigest()
    assert re.fullmatch(r"[0-9a-f]{64}", ev["result_sha256"]), ev
    # The arguments themselves are never in the log.
    assert '"a":2' not in json.dumps(receipt_events(env, env.alice, turn), separators=(",", ":"))

    # HTTP, with the same turn's token (a CapToken serves all calls of its turn).
    result = call(env, env.alice, "remote__weather", {"city": "Oslo"}, token)
    assert text(result) == "sunny in Oslo"
    ev = tool_call_event(env, env.alice, result.meta["aibox/turn"])
    assert (ev["server"], ev["tool"], ev["outcome"], ev["parent_turn"]) == ("remote", "weather", {"outcome": "ok"}, parent)

    # A receipt of another tenant's principal is not served.
    r = env.gw.http().get(f"/v1/audit/receipts/{turn}")
    assert r.status_code == 401


def test_captoken_in_the_x_aibox_captoken_header(env: Env):
    """An agent runtime holds its turn's CapToken as a header, as aibox sent
    it; the edge moves it out of the headers and the MCP gateway verifies it.
    A route audience (a token minted for a downstream service) is accepted,
    another audience is not, and two copies of the header count as none."""

    async def add(s: ClientSession) -> Any:
        try:
            return await s.call_tool("local__add", {"a": 1, "b": 1})
        except McpError as e:
            return e

    token, _ = captoken("acme", "alice", ["tool:local/add"])
    assert text(with_session(env, env.alice, add, {"X-Aibox-CapToken": token})) == "2"
    forged, _ = captoken("acme", "alice", ["tool:local/add"], secret=b"x" * 32)
    err = with_session(env, env.alice, add, {"X-Aibox-CapToken": forged})
    assert isinstance(err, McpError) and err.error.code == CAPTOKEN_REFUSED, err
    err = with_session(env, env.alice, add)
    assert isinstance(err, McpError) and err.error.code == CAPTOKEN_REFUSED, err


def test_client_not_in_allow_clients_sees_no_tools_and_cannot_call_any(env: Env):
    assert tool_names(env, env.bob) == []
    for tool in ["local__echo", "remote__weather", "filesystem__read_file", "closed__echo"]:
        server, name = tool.split("__", 1)
        token, _ = captoken("acme", "bob", [f"tool:{server}/{name}"])
        err = call(env, env.bob, tool, {"text": "hi", "city": "x", "path": "docs/note.txt"}, token)
        assert isinstance(err, McpError), f"bob called {tool}: {err}"
        assert err.error.code == POLICY_DENIED, err.error
        assert err.error.data["reason"] == "client_not_allowed"
        assert "allow_clients" in err.error.message
        ev = tool_call_event(env, env.bob, error_turn(err))
        assert ev["outcome"] == {"outcome": "denied", "reason": "client_not_allowed"}, ev
        assert ev["result_sha256"] is None


def test_calls_without_a_valid_captoken_are_refused_and_recorded(env: Env):
    now = int(time.time())
    cases = [
        ("none", None, "captoken_missing"),
        ("another tool", captoken("acme", "alice", ["tool:local/add"])[0], "captoken_op_not_granted"),
        ("another server", captoken("acme", "alice", ["tool:remote/*"])[0], "captoken_op_not_granted"),
        ("forged", captoken("acme", "alice", ["tool:local/echo"], secret=new_secret())[0], "captoken_invalid"),
        ("unknown key", captoken("acme", "alice", ["tool:local/echo"], kid="c9")[0], "captoken_invalid"),
        ("expired", captoken("acme", "alice", ["tool:local/echo"], iat=now - 3600)[0], "captoken_invalid"),
        ("another user", captoken("acme", "bob", ["tool:local/echo"])[0], "captoken_wrong_principal"),
        ("another tenant", captoken("globex", "alice", ["tool:local/echo"])[0], "captoken_wrong_principal"),
        ("garbage", "not-a-token", "captoken_invalid"),
    ]
    for what, token, reason in cases:
        err = call(env, env.alice, "local__echo", {"text": "hi"}, token)
        assert isinstance(err, McpError), f"{what}: the call was not refused: {err}"
        assert err.error.code == CAPTOKEN_REFUSED, (what, err.error)
        assert err.error.data["reason"] == reason, (what, err.error)
        assert "fix:" in err.error.message, err.error.message
        ev = tool_call_event(env, env.alice, error_turn(err))
        assert ev["server"] == "local" and ev["tool"] == "echo", ev
        assert ev["outcome"] == {"outcome": "denied", "reason": reason}, ev
        assert ev["parent_turn"] is None
    err = call(env, env.alice, "local__echo", {"text": "hi"}, None)
    assert "aibox/captoken" in err.error.message, "the refusal must name where the CapToken goes"
    # And with a valid one, the same call works.
    token, _ = captoken("acme", "alice", ["tool:local/echo"])
    assert text(call(env, env.alice, "local__echo", {"text": "hi"}, token)) == "hi"


def test_stdio_server_gets_only_the_registry_environment_and_its_limits(env: Env):
    token, _ = captoken("acme", "alice", ["tool:local/*"])
    names = call(env, env.alice, "local__env_names", {}, token).structuredContent["result"]
    assert {"PATH", "GREETING", "API_TOKEN"} <= set(names), names
    # Python may add LC_CTYPE itself (PEP 538); nothing of aibox's leaks.
    assert set(names) <= {"PATH", "GREETING", "API_TOKEN", "LC_CTYPE"}, names
    assert text(call(env, env.alice, "local__env_value", {"name": "API_TOKEN"}, token)) == INJECTED_SECRET
    assert text(call(env, env.alice, "local__env_value", {"name": "PATH"}, token)) == "/usr/local/bin:/usr/bin:/bin"
    assert Path(text(call(env, env.alice, "local__cwd", {}, token))).resolve() == env.workdir.resolve()
    limits = call(env, env.alice, "local__limits", {}, token).structuredContent
    assert limits["nofile"] == 128, limits
    # The spawn is logged with variable names, never values.
    spawns = [e for e in log_events(env.gw.stderr()) if e.get("message") == "MCP server spawned" and e.get("server") == "local"]
    assert spawns, "no spawn log line"
    assert "API_TOKEN" in spawns[0]["detail"] and INJECTED_SECRET not in env.gw.stderr()


def test_slow_tool_times_out_and_crashed_server_comes_back(env: Env):
    token, _ = captoken("acme", "alice", ["tool:local/*"])
    started = time.monotonic()
    err = call(env, env.alice, "local__sleep", {"seconds": 30}, token)
    elapsed = time.monotonic() - started
    assert isinstance(err, McpError), err
    assert err.error.code == UPSTREAM_TIMEOUT, err.error
    assert f"{TOOL_TIMEOUT_MS} ms" in err.error.message
    assert elapsed < TOOL_TIMEOUT_MS / 1000 + 3, elapsed
    ev = tool_call_event(env, env.alice, error_turn(err))
    assert ev["outcome"] == {"outcome": "failed", "reason": "timeout"}, ev

    err = call(env, env.alice, "local__crash", {}, token)
    assert isinstance(err, McpError) and err.error.code == UPSTREAM_UNAVAILABLE, err
    deadline = time.monotonic() + 20
    while True:
        r = call(env, env.alice, "local__echo", {"text": "back"}, token)
        if not isinstance(r, McpError):
            assert text(r) == "back"
            break
        assert time.monotonic() < deadline, f"the stdio server did not come back: {r.error}"
        time.sleep(0.2)
    spawns = [e for e in log_events(env.gw.stderr()) if e.get("message") == "MCP server spawned" and e.get("server") == "local"]
    assert len(spawns) >= 2, "the crashed server was not spawned again"


def test_filesystem_server_is_confined(env: Env):
    token, _ = captoken("acme", "alice", ["tool:filesystem/*"])
    assert text(call(env, env.alice, "filesystem__read_file", {"path": "docs/note.txt"}, token)) == "shared note"
    assert "[DIR] docs" in text(call(env, env.alice, "filesystem__list_directory", {"path": "."}, token))
    escapes = [
        "../outside.txt",
        "../shared2/secret.txt",
        "docs/../../outside.txt",
        "/etc/passwd",
        str(env.shared.parent / "outside.txt"),
        "link-out",
        "..",
    ]
    for path in escapes:
        r = call(env, env.alice, "filesystem__read_file", {"path": path}, token)
        assert not isinstance(r, McpError), r
        assert r.isError, f"{path} was not refused: {text(r)}"
        assert "SECRET" not in text(r)
    r = call(env, env.alice, "filesystem__write_file", {"path": "../pwned.txt", "content": "x"}, token)
    assert r.isError and not (env.shared.parent / "pwned.txt").exists()


def test_origin_protocol_version_and_authentication_on_the_wire(env: Env):
    http = env.gw.http()
    auth = {"Authorization": f"Bearer {env.alice}", "Accept": "application/json, text/event-stream"}
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-03-26", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}}
    r = http.post("/mcp", json=init, headers={**auth, "Origin": "http://evil.example"})
    assert r.status_code == 403, r.text
    r = http.post("/mcp", json=init, headers={"Accept": auth["Accept"]})
    assert r.status_code == 401, r.text
    r = http.post("/mcp", json=init, headers=auth)
    assert r.status_code == 200, r.text
    assert r.json()["result"]["protocolVersion"] == "2025-03-26"
    sid = r.headers["mcp-session-id"]
    ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
    r = http.post("/mcp", json=ping, headers={**auth, "Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-03-26"})
    assert r.status_code == 200 and r.json()["result"] == {}, r.text
    r = http.post("/mcp", json=ping, headers={**auth, "Mcp-Session-Id": sid, "MCP-Protocol-Version": "1999-01-01"})
    assert r.status_code == 400, r.text
    r = http.post("/mcp", json=ping, headers={"Authorization": f"Bearer {env.bob}", "Accept": auth["Accept"], "Mcp-Session-Id": sid})
    assert r.status_code == 404, "another principal must not use the session"
    assert http.get("/mcp", headers=auth).status_code == 405
    assert http.delete("/mcp", headers={**auth, "Mcp-Session-Id": sid}).status_code == 204
    r = http.post("/mcp", json=ping, headers={**auth, "Mcp-Session-Id": sid})
    assert r.status_code == 404


@pytest.mark.parametrize(
    ("servers", "registry", "words"),
    [
        (["ghost"], {}, ["ghost", "registry.json", "fix:"]),
        (["local"], {"local": stdio_server(env={"GITHUB_TOKEN": "ghp_plaintext_value_123"}, allow_clients=["*"])}, ["GITHUB_TOKEN", "secrets", "vault"]),
        (["local"], {"local": stdio_server(allow_clients=["team:x"])}, ["allow_clients", "team:x"]),
        (["local"], {"local": stdio_server(colour="blue")}, ["unknown field", "colour"]),
        (["filesystem"], {"filesystem": {"transport": "builtin", "allow_clients": []}}, ["FILESYSTEM_ROOT"]),
        (["local"], {"local": stdio_server(sandbox={"read": ["relative"]})}, ["sandbox.read", "not an absolute path", "fix:"]),
        (["local"], {"local": stdio_server(sandbox={"uid": 0})}, ["sandbox.uid", "0 is root"]),
        (["local"], {"local": stdio_server(sandbox={"seccomp_deny": ["nosuchcall"]})}, ["unknown syscall 'nosuchcall'", "use one of"]),
    ],
    ids=["unknown-server", "plaintext-secret", "bad-selector", "unknown-field", "filesystem-without-root",
         "sandbox-relative-path", "sandbox-root-uid", "sandbox-unknown-syscall"],
)
def test_registry_mistakes_stop_start_up(cluster: Cluster, servers, registry, words):
    cwd = cluster.aibox_dir()
    write_registry(cwd, servers, registry)
    _, stderr = cluster.aibox_must_refuse_to_start(gateway_config(), env=KEY_ENV, cwd=cwd)
    for w in words:
        assert w in stderr, f"'{w}' missing from:\n{stderr}"
    assert "ghp_plaintext_value_123" not in stderr


def test_filesystem_root_must_not_be_a_home_or_the_root(cluster: Cluster):
    for root in ["/", "/root", str(Path.home())]:
        cwd = cluster.aibox_dir()
        write_registry(cwd, ["filesystem"], {"filesystem": {"transport": "builtin", "allow_clients": ["*"]}})
        _, stderr = cluster.aibox_must_refuse_to_start(
            gateway_config(), env={**KEY_ENV, "FILESYSTEM_ROOT": root, "HOME": str(Path.home())}, cwd=cwd
        )
        assert "FILESYSTEM_ROOT" in stderr and "fix:" in stderr, stderr


def test_stdio_secrets_come_from_the_vault(cluster: Cluster):
    """Issue 7 with issue 6: a stdio server's `secrets` are read from the
    vault of the MCP secrets owner (`_aibox/mcp`), stored there over the
    vault API, and injected into the child's environment; nothing in the
    registry or the environment holds the value."""
    cwd = cluster.aibox_dir()
    value = "vault-held-" + secrets.token_hex(8)
    gw = cluster.aibox(gateway_config(), env=KEY_ENV, cwd=cwd)
    owner = create_key(cluster, cwd, "_aibox", "mcp", "ops")
    r = gw.http().put("/v1/secrets/api-token", json={"value": value}, headers={"Authorization": f"Bearer {owner}"})
    assert r.status_code == 204, r.text
    assert gw.proc.stop(10.0) == 0
    cluster.gateways.remove(gw)

    write_registry(cwd, ["local"], {"local": stdio_server(secrets={"API_TOKEN": "api-token"}, allow_clients=["*"])})
    gw = cluster.aibox(gateway_config(), env=KEY_ENV, cwd=cwd)
    alice = create_key(cluster, cwd, "acme", "alice", "tools")
    env = Env(gw, alice, alice, cwd, cwd, gw.proc)
    token, _ = captoken("acme", "alice", ["tool:local/env_value"])
    assert text(call(env, alice, "local__env_value", {"name": "API_TOKEN"}, token)) == value
    assert value not in gw.stderr() and value not in (cwd / "data" / "mcp" / "registry.json").read_text()


def _tool_samples(env: Env) -> tuple[dict[tuple[str, str, str], float], str]:
    """`aibox_mcp_tool_calls_total` by (server, tool, verdict), parsed by the
    official client's strict OpenMetrics parser, and the text-format
    exposition (for promtool)."""
    from test_metrics import OPENMETRICS, families

    om = env.gw.ops().get("/metrics", headers=OPENMETRICS).text
    fams = families(om)
    out = {}
    if "aibox_mcp_tool_calls" in fams:
        for s in fams["aibox_mcp_tool_calls"].samples:
            if s.name == "aibox_mcp_tool_calls_total":
                out[(s.labels["server"], s.labels["tool"], s.labels["verdict"])] = s.value
    return out, env.gw.ops().get("/metrics").text


def test_issue8_tool_call_metrics_by_server_tool_and_verdict_with_bounded_labels(env: Env):
    import shutil
    import subprocess

    token, _ = captoken("acme", "alice", ["tool:local/*", "tool:nosuch/*"])
    # The stdio server may still be starting (on a busy machine beyond the
    # 2 s call timeout): wait until it answers, then count.
    for _ in range(10):
        if not isinstance(call(env, env.alice, "local__echo", {"text": "warm"}, token), McpError):
            break
    before, _ = _tool_samples(env)
    assert text(call(env, env.alice, "local__add", {"a": 1, "b": 2}, token)) == "3"
    assert text(call(env, env.alice, "local__add", {"a": 2, "b": 2}, token)) == "4"
    assert isinstance(call(env, env.alice, "local__danger", {}, token), McpError)
    # Names a client invents: an unknown server, unknown tools.
    for i in range(3):
        assert isinstance(call(env, env.alice, f"nosuch__invented-{i}", {}, token), McpError)
        assert isinstance(call(env, env.alice, f"local__invented-{i}", {}, token), McpError)
    after, text_004 = _tool_samples(env)

    def delta(*key: str) -> float:
        return after.get(key, 0) - before.get(key, 0)

    assert delta("local", "add", "ok") == 2
    assert delta("local", "danger", "denied") == 1
    assert delta("_other", "_other", "denied") == 3
    assert delta("local", "_other", "denied") == 3
    assert not [k for k in after if "invented" in k[1] or k[0] == "nosuch"], after
    # The duration histogram, with the same bounded labels.
    assert 'aibox_mcp_tool_call_duration_seconds_count{server="local",tool="add"}' in text_004
    assert "invented" not in text_004 and "nosuch" not in text_004
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found; install Debian's `prometheus` package (.ci/run does)", pytrace=False)
    r = subprocess.run([promtool, "check", "metrics"], input=text_004, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, f"promtool rejected the exposition:\n{r.stdout}\n{r.stderr}"


def test_issue6_resources_and_prompts_pass_through_over_stdio_and_http(env: Env):
    """The official SDK client lists and reads resources and resource
    templates, and lists and gets prompts, of an SDK stdio server and an SDK
    Streamable HTTP server through /mcp, namespaced; each read and get is
    its own audit turn."""

    async def fn(s: ClientSession) -> dict[str, Any]:
        return {
            "resources": sorted(str(r.uri) for r in (await s.list_resources()).resources),
            "templates": sorted(t.uriTemplate for t in (await s.list_resource_templates()).resourceTemplates),
            "prompts": sorted(p.name for p in (await s.list_prompts()).prompts),
            "index": await s.read_resource("aibox://local/notes://index"),
            "templated": await s.read_resource("aibox://local/notes://42"),
            "remote": await s.read_resource("aibox://remote/weather://today"),
            "greet": await s.get_prompt("local__greet", {"name": "Ada"}),
        }

    r = with_session(env, env.alice, fn)
    for want in ["aibox://local/notes://index", "aibox://local/notes://injected", "aibox://remote/weather://today"]:
        assert want in r["resources"], r["resources"]
    assert not [u for u in r["resources"] if "private" in u], "a resource the registry denies was listed"
    assert r["templates"] == ["aibox://local/notes://{id}"], r["templates"]
    assert "local__greet" in r["prompts"], r["prompts"]
    assert "local__debug_dump" not in r["prompts"], "a prompt the registry denies was listed"
    assert not [p for p in r["prompts"] if p.startswith("remote__")], "prompts of a server without a prompts key were listed"

    index = r["index"]
    assert [c.text for c in index.contents] == ["index: 1, 2, 3"]
    assert str(index.contents[0].uri) == "aibox://local/notes://index"
    assert [c.text for c in r["templated"].contents] == ["note 42"]
    assert [c.text for c in r["remote"].contents] == ["sunny everywhere"]
    assert str(r["remote"].contents[0].uri) == "aibox://remote/weather://today"
    assert [m.content.text for m in r["greet"].messages] == ["Say hello to Ada."]

    ev = mcp_request_event(env, env.alice, index.meta["aibox/turn"])
    assert (ev["server"], ev["method"], ev["target"], ev["outcome"]) == ("local", "resources/read", "notes", {"outcome": "ok"}), ev
    assert ev["request_sha256"] == sha256_json({"uri": "notes://index"}), ev
    assert re.fullmatch(r"[0-9a-f]{64}", ev["result_sha256"]), ev
    ev = mcp_request_event(env, env.alice, r["remote"].meta["aibox/turn"])
    assert (ev["server"], ev["method"], ev["target"]) == ("remote", "resources/read", "weather"), ev
    ev = mcp_request_event(env, env.alice, r["greet"].meta["aibox/turn"])
    assert (ev["server"], ev["method"], ev["target"], ev["outcome"]) == ("local", "prompts/get", "greet", {"outcome": "ok"}), ev
    assert ev["request_sha256"] == sha256_json({"name": "Ada"}), ev
    # Neither the URI's path nor the prompt's arguments are in the log.
    logged = json.dumps(receipt_events(env, env.alice, r["greet"].meta["aibox/turn"]))
    assert "Ada" not in logged, logged


def test_issue6_resource_and_prompt_refusals(env: Env):
    """A client outside allow_clients sees no resources or prompts and can
    read or get none; denied, hidden, unknown and malformed identifiers are
    refused with the reason and recorded; the guardrail blocks an injection
    in a resource, redacts a key from one, and blocks a secret in a prompt's
    arguments."""

    async def bob(s: ClientSession) -> dict[str, Any]:
        return {
            "resources": (await s.list_resources()).resources,
            "templates": (await s.list_resource_templates()).resourceTemplates,
            "prompts": (await s.list_prompts()).prompts,
            "read": await refused(s.read_resource("aibox://local/notes://index")),
            "remote": await refused(s.read_resource("aibox://remote/weather://today")),
            "get": await refused(s.get_prompt("local__greet", {"name": "Ada"})),
        }

    r = with_session(env, env.bob, bob)
    assert r["resources"] == [] and r["templates"] == [] and r["prompts"] == [], r
    for what in ["read", "remote", "get"]:
        err = r[what]
        assert err.error.code == POLICY_DENIED and err.error.data["reason"] == "client_not_allowed", (what, err.error)
        ev = mcp_request_event(env, env.bob, error_turn(err))
        assert ev["outcome"] == {"outcome": "denied", "reason": "client_not_allowed"}, ev
        assert ev["result_sha256"] is None

    async def alice(s: ClientSession) -> dict[str, Any]:
        return {
            "denied": await refused(s.read_resource("aibox://local/notes://private/diary")),
            "hidden_prompt": await refused(s.get_prompt("remote__forecast", {"city": "Oslo"})),
            "denied_prompt": await refused(s.get_prompt("local__debug_dump")),
            "unknown_server": await refused(s.read_resource("aibox://ghost/notes://1")),
            "not_namespaced": await refused(s.read_resource("notes://index")),
            "injected": await refused(s.read_resource("aibox://local/notes://injected")),
            "secret_argument": await refused(s.get_prompt("local__greet", {"name": "AKIAQ3EGRDQYB7NXPL2Q"})),
            "leaky": await s.read_resource("aibox://local/notes://leaky"),
        }

    r = with_session(env, env.alice, alice)
    expected = {
        "denied": (POLICY_DENIED, "resource_not_allowed", "resources.allow"),
        "hidden_prompt": (POLICY_DENIED, "prompt_not_allowed", "prompts.allow"),
        "denied_prompt": (POLICY_DENIED, "prompt_not_allowed", "prompts.allow"),
        "unknown_server": (INVALID_PARAMS, "unknown_server", "resources/list"),
        "not_namespaced": (INVALID_PARAMS, "bad_resource_uri", "resources/list"),
    }
    for what, (code, reason, fix) in expected.items():
        err = r[what]
        assert (err.error.code, err.error.data["reason"]) == (code, reason), (what, err.error)
        assert fix in err.error.message, (what, err.error.message)
        ev = mcp_request_event(env, env.alice, error_turn(err))
        assert ev["outcome"] == {"outcome": "denied", "reason": reason}, (what, ev)
    assert "this must never" not in json.dumps([str(r[k].error) for k in expected])

    err = r["injected"]
    assert err.error.code == GUARDRAIL_BLOCKED and "prompt_injection" in err.error.message, err.error
    assert "system prompt" not in err.error.message
    ev = mcp_request_event(env, env.alice, error_turn(err))
    assert ev["outcome"]["outcome"] == "failed" and ev["outcome"]["reason"].startswith("guardrail:"), ev
    verdicts = [e for e in receipt_events(env, env.alice, error_turn(err)) if e["type"] == "guardrail_verdict"]
    assert [(v["stage"], v["action"]) for v in verdicts] == [("tool_result", "block")], verdicts

    err = r["secret_argument"]
    assert err.error.code == GUARDRAIL_BLOCKED and err.error.data["reason"] == "guardrail_blocked", err.error
    verdicts = [e for e in receipt_events(env, env.alice, error_turn(err)) if e["type"] == "guardrail_verdict"]
    assert [(v["stage"], v["action"]) for v in verdicts] == [("tool_arguments", "block")], verdicts

    leaky = r["leaky"]
    body = " ".join(c.text for c in leaky.contents)
    assert "deploy with key" in body and "AKIAQ3" not in body, body


def test_issue6_tools_with_poisoned_definitions_are_withheld(cluster: Cluster):
    """Tool poisoning: a tool server's descriptions reach the model as
    guidance, so aibox scans every tool definition with the guardrail
    (`standard` profile) before a client sees it. Poisoned tools are left
    out of tools/list and refused by name, before the server is called,
    with the refusal recorded in the audit log; a description with a
    person's e-mail address is listed redacted; ordinary tools work.
    Prompts and resources with poisoned descriptions are left out of
    prompts/list and resources/list."""
    cwd = cluster.aibox_dir()
    marker = cwd / "poison-calls.txt"
    write_registry(cwd, ["tricky"], {"tricky": {
        "transport": "stdio",
        "command": sys.executable,
        "args": [str(SERVERS_DIR / "poisoned_server.py")],
        "env": {"POISON_MARKER": str(marker)},
        "allow_clients": ["*"],
        "prompts": {},
        "resources": {},
    }})
    gw = cluster.aibox(gateway_config(), env=KEY_ENV, cwd=cwd)
    alice = create_key(cluster, cwd, "acme", "alice", "tools")
    env = Env(gw, alice, alice, cwd, cwd, gw.proc)

    async def listing(s: ClientSession) -> dict[str, Any]:
        return {t.name: t for t in (await s.list_tools()).tools}

    async def others(s: ClientSession) -> dict[str, Any]:
        return {
            "prompts": sorted(p.name for p in (await s.list_prompts()).prompts),
            "resources": sorted(str(r.uri) for r in (await s.list_resources()).resources),
            "team": await s.read_resource("aibox://tricky/notes://team"),
        }

    # Prompt and resource descriptions are scanned the same way.
    listed = with_session(env, alice, others)
    assert listed["prompts"] == ["tricky__summarize"], listed
    assert listed["resources"] == ["aibox://tricky/notes://team"], listed
    assert [c.text for c in listed["team"].contents] == ["Monday: planning."], listed

    tools = with_session(env, alice, listing)
    assert sorted(tools) == ["tricky__contact", "tricky__lookup"], sorted(tools)
    description = tools["tricky__contact"].description or ""
    assert description.startswith("Who maintains this server"), description
    assert "jane.roe@example.org" not in description, description

    token, _ = captoken("acme", "alice", ["tool:tricky/*"])
    for tool in ("add", "daily_fact"):
        err = call(env, alice, f"tricky__{tool}", {"a": 1, "b": 2} if tool == "add" else {}, token)
        assert isinstance(err, McpError), f"{tool}: the call was not refused: {err}"
        assert err.error.code == GUARDRAIL_BLOCKED, (tool, err.error)
        assert err.error.data["reason"] == "tool_definition_blocked", (tool, err.error)
        assert "withheld" in err.error.message and "fix:" in err.error.message, err.error.message
        events = receipt_events(env, alice, error_turn(err))
        ev = [e for e in events if e["type"] == "tool_call"][0]
        assert ev["tool"] == tool and ev["outcome"] == {"outcome": "denied", "reason": "tool_definition_blocked"}, ev
        verdicts = [e for e in events if e["type"] == "guardrail_verdict"]
        assert verdicts and verdicts[0]["action"] == "block" and verdicts[0]["stage"] == "tool_result", events
        assert any(f["scanner"] == "prompt_injection" for f in verdicts[0]["findings"]), verdicts
    assert not marker.exists(), f"aibox forwarded a poisoned call: {marker.read_text()}"
    assert "tool poisoning" in gw.stderr()

    assert text(call(env, alice, "tricky__lookup", {"word": "gate"}, token)) == "gate: a word"
