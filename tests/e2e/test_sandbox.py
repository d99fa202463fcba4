"""Sandboxed stdio MCP servers end to end (issue 10).

aibox starts a real MCP server written with the official Python SDK
(tests/e2e/mcp_servers/sandbox_server.py) through `aibox sandbox-exec` with
a sandbox profile: Landlock read/write rules, the seccomp deny-list,
no_new_privs, uid/gid nobody (the tests run as root), resource limits, and
its own network namespace whose only way out is aibox's HTTP proxy through
the SSRF-safe egress guard. The official MCP client calls its tools
through /mcp.

Each attack (reading /etc/shadow and a file outside the allowed paths,
writing outside them, raw sockets, direct connections to 127.0.0.1 and
169.254.169.254, a fork bomb, allocating past the memory limit, ptrace,
unshare) must fail while the legitimate tools keep working; what aibox or
the kernel reports (the spawn with what was applied, refused egress, a
kill by SIGSYS or SIGXCPU) must be in the audit log of the `_aibox` system
tenant, read with `aibox audit export` as an operator would.

The "public" destination is a test host in a network namespace this module
creates (veth pair, 203.0.113.1/24 on the host side, an HTTP server on
203.0.113.2:8080 inside), allow-listed with AIBOX_EGRESS_ALLOW_HOSTS and
AIBOX_EGRESS_ALLOWED_PORTS. Needs root and iproute2 (`ip`).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import McpError

from conftest import Aibox, Cluster, Proc, base_config
from identity_kit import keyring_value, log_events, new_secret

SERVERS_DIR = Path(__file__).resolve().parent / "mcp_servers"
NOBODY = 65534
PUBLIC_IP = "203.0.113.2"
HOST_IP = "203.0.113.1"
PUBLIC_PORT = 8080
MEMORY_MB = 512
PROCESSES = 48

def _world_reachable(path: Path) -> bool:
    """Whether `nobody` can reach and run `path` (every parent o+x)."""
    path = path.resolve()
    return all(os.stat(p).st_mode & 0o001 for p in [*reversed(path.parents), path])


# With CI set, a missing prerequisite fails the tests instead of skipping
# them (as in test_egress.py): .ci/run provides root, iproute2 and a venv
# made from the system's python3.
_CI = bool(os.environ.get("CI"))
pytestmark = [
    pytest.mark.skipif(
        not _CI and (os.geteuid() != 0 or shutil.which("ip") is None),
        reason="needs root (uid drop, network namespaces) and iproute2",
    ),
    pytest.mark.skipif(
        not _CI and not _world_reachable(Path(sys.executable)),
        reason="the e2e venv's interpreter is not reachable by uid nobody (e.g. pyenv under /root); "
        "make the venv with /usr/bin/python3 -m venv .venv",
    ),
]


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, text=True)


@dataclass
class PublicHost:
    ns: str
    veth: str
    server: subprocess.Popen[bytes]
    marker: str


@pytest.fixture(scope="module")
def public_host() -> Any:
    """An HTTP server on 203.0.113.2:8080 in its own network namespace,
    reachable from the host over a veth pair."""
    tag = secrets.token_hex(3)
    ns, veth, peer = f"aibox-e2e-{tag}", f"abxh{tag}", f"abxn{tag}"
    www = Path(tempfile.mkdtemp(prefix="aibox-pub-"))
    marker = "PUBLIC-" + secrets.token_hex(6)
    (www / "index.html").write_text(marker)
    sh("ip", "netns", "add", ns)
    server = None
    try:
        sh("ip", "link", "add", veth, "type", "veth", "peer", "name", peer)
        sh("ip", "link", "set", peer, "netns", ns)
        sh("ip", "addr", "add", f"{HOST_IP}/24", "dev", veth)
        sh("ip", "link", "set", veth, "up")
        sh("ip", "-n", ns, "addr", "add", f"{PUBLIC_IP}/24", "dev", peer)
        sh("ip", "-n", ns, "link", "set", peer, "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        server = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "http.server", str(PUBLIC_PORT), "--bind", PUBLIC_IP, "--directory", str(www)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                if httpx.get(f"http://{PUBLIC_IP}:{PUBLIC_PORT}/", timeout=1).text == marker:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the test host did not come up"
            time.sleep(0.1)
        yield PublicHost(ns, veth, server, marker)
    finally:
        if server is not None:
            server.kill()
            server.wait()
        subprocess.run(["ip", "link", "del", veth], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(www, ignore_errors=True)


@dataclass
class Env:
    gw: Aibox
    key: str
    config: Path
    allowed: Path  # readable by the server
    writable: Path  # writable by the server
    outside: Path  # neither
    host: PublicHost
    cluster: Cluster

    def url(self) -> str:
        return f"{self.gw.main_url}/mcp"


_NOBODY_COPIES: dict[Path, Path] = {}


def nobody_copy(path: Path) -> Path:
    """A copy of `path` that uid nobody can read and run: the checkout may sit
    under a directory that user cannot enter (scripts/test.sh puts the venv
    where nobody can reach it for the same reason)."""
    path = path.resolve()
    if path not in _NOBODY_COPIES:
        d = Path(tempfile.mkdtemp(prefix="aibox-sbx-copy-"))
        os.chmod(d, 0o755)
        shutil.copy2(path, d / path.name)
        os.chmod(d / path.name, 0o755)
        _NOBODY_COPIES[path] = d / path.name
    return _NOBODY_COPIES[path]


def sandbox_entry(allowed: Path, writable: Path, **profile: Any) -> dict[str, Any]:
    venv = Path(sys.prefix)
    server = nobody_copy(SERVERS_DIR / "sandbox_server.py")
    p: dict[str, Any] = {
        "mode": "require",
        "read": [str(venv), str(Path(sys.base_prefix) / "lib"), str(server.parent), str(allowed)],
        "write": [str(writable)],
    }
    p.update(profile)
    return {
        "transport": "stdio",
        "command": sys.executable,
        "args": [str(server)],
        "cwd": str(writable),
        "limits": {"memory_mb": MEMORY_MB, "processes": PROCESSES, "open_files": 256, "cpu_secs": 120},
        "timeout_ms": 20000,
        "allow_clients": ["*"],
        "sandbox": p,
    }


@pytest.fixture(scope="module")
def env(module_cluster: Cluster, public_host: PublicHost) -> Env:
    # The server runs as nobody: its directories must be reachable by that
    # user, so they live outside pytest's 0700 temporary tree.
    base = Path(tempfile.mkdtemp(prefix="aibox-sbx-"))
    os.chmod(base, 0o755)
    allowed, writable, outside = base / "allowed", base / "writable", base / "outside"
    for d in (allowed, writable, outside):
        d.mkdir()
        os.chmod(d, 0o777)
    (allowed / "data.txt").write_text("ALLOWED-DATA")
    (outside / "secret.txt").write_text("OUTSIDE-SECRET")
    os.chmod(outside / "secret.txt", 0o644)

    cwd = module_cluster.aibox_dir()
    mcp_dir = cwd / "data" / "mcp"
    mcp_dir.mkdir(parents=True)
    (mcp_dir / "servers.txt").write_text("sb\nsbkill\n")
    registry = {
        "sb": sandbox_entry(allowed, writable),
        "sbkill": sandbox_entry(allowed, writable, on_violation="kill")
        | {"limits": {"memory_mb": MEMORY_MB, "processes": PROCESSES, "cpu_secs": 3}},
    }
    (mcp_dir / "registry.json").write_text(json.dumps({"servers": registry}, indent=2))
    cfg = base_config()
    cfg["log"] = {"format": "json"}
    cfg["auth"] = {"enabled": True, "api_keys": True}
    key_env = {
        "AIBOX_PRINCIPAL_KEYS": keyring_value([("p1", new_secret())]),
        "AIBOX_CAPTOKEN_KEYS": keyring_value([("c1", new_secret())]),
    }
    gw = module_cluster.aibox(
        cfg,
        env={
            **key_env,
            "AIBOX_MCP_REQUIRE_CAPTOKEN": "false",
            "AIBOX_EGRESS_ALLOW_HOSTS": PUBLIC_IP,
            "AIBOX_EGRESS_ALLOWED_PORTS": str(PUBLIC_PORT),
        },
        cwd=cwd,
    )
    r = module_cluster.run_aibox(
        ["apikey", "create", "--config", str(cwd / "config.yaml"), "--tenant", "acme", "--user", "alice", "--roles", "tools"],
        cwd=cwd,
        env=key_env,
    )
    assert r.returncode == 0, r.stderr
    yield Env(gw, r.stdout.strip(), cwd / "config.yaml", allowed, writable, outside, public_host, module_cluster)
    shutil.rmtree(base, ignore_errors=True)


def call(env: Env, tool: str, args: dict[str, Any] | None = None) -> Any:
    """The tool's structured result (or text); an McpError is returned."""

    async def go() -> Any:
        headers = {"Authorization": f"Bearer {env.key}"} if env.key else {}
        async with httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(30, read=60)) as client:
            async with streamable_http_client(env.url(), http_client=client) as (read, write, _):
                async with ClientSession(read, write) as s:
                    await s.initialize()
                    try:
                        res = await s.call_tool(tool, args or {})
                    except McpError as e:
                        return e
                    if res.isError:
                        return McpError(type("E", (), {"code": -1, "message": str(res.content), "data": None})())  # type: ignore[arg-type]
                    if res.structuredContent is not None:
                        return res.structuredContent.get("result", res.structuredContent)
                    return "".join(c.text for c in res.content if getattr(c, "type", "") == "text")

    return asyncio.run(go())


def wait_ready(env: Env, server: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        r = call(env, f"{server}__echo", {"text": "ping"})
        if r == "ping":
            return
        assert time.monotonic() < deadline, f"{server} did not come up: {r}\n{env.gw.stderr()[-3000:]}"
        time.sleep(0.3)


def sandbox_events(env: Env) -> list[dict[str, Any]]:
    """The sandbox events of the `_aibox` tenant, through `aibox audit export`."""
    out = env.config.parent / f"export-{secrets.token_hex(3)}.json"
    r = env.cluster.run_aibox(["audit", "export", "--tenant", "_aibox", "--out", str(out), "--config", str(env.config)], cwd=env.config.parent)
    assert r.returncode == 0, r.stderr
    bundle = json.loads(out.read_text())
    events = [json.loads(row["event"]) for row in bundle["rows"]]
    return [e for e in events if e.get("type") == "sandbox"]


# --------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------


def test_legitimate_tools_work_as_nobody_with_every_protection_applied(env: Env):
    wait_ready(env, "sb")
    assert call(env, "sb__whoami") == {"uid": NOBODY, "euid": NOBODY, "gid": NOBODY}
    assert call(env, "sb__read_file", {"path": str(env.allowed / "data.txt")}) == "ALLOWED-DATA"
    target = env.writable / "out.txt"
    assert call(env, "sb__write_file", {"path": str(target), "text": "written"}) == "ok"
    assert target.read_text() == "written"
    names = call(env, "sb__env_names")
    assert {"HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"} <= set(names), names
    assert "AIBOX_SANDBOX_REQUEST" not in names, "the launch request must not reach the server"

    spawns = [e for e in sandbox_events(env) if e["server"] == "sb" and e["what"] == "spawn"]
    assert spawns, "no spawn event in the _aibox audit log"
    d = spawns[-1]["detail"]
    for applied in ["rlimits", "netns", f"user(uid={NOBODY},gid={NOBODY})", "no_new_privs", "landlock(abi=", "seccomp("]:
        assert applied in d, f"{applied} not applied: {d}"
    assert "missing=[]" in d, d
    assert "mode=require network=proxy" in d, d
    # Nothing of the sandbox went to the default tenant (the old behaviour).
    r = env.cluster.run_aibox(["audit", "export", "--tenant", "default", "--config", str(env.config)], cwd=env.config.parent)
    assert r.returncode == 0, r.stderr
    assert '\\"type\\":\\"sandbox\\"' not in r.stdout


#: (tool, arguments, what the attempt must return)
ATTACKS = [
    ("read_file", {"path": "/etc/shadow"}, "ERROR EACCES"),
    ("read_file", {"path": "/root/.bashrc"}, "ERROR EACCES"),
    ("read_file", {"path": "OUTSIDE"}, "ERROR EACCES"),
    ("write_file", {"path": "OUTSIDE_NEW", "text": "x"}, "ERROR EACCES"),
    ("write_file", {"path": "/tmp/aibox-sandbox-escape.txt", "text": "x"}, "ERROR EACCES"),
    ("raw_socket", {}, {"raw_icmp": "ERROR EPERM", "packet": "ERROR EPERM"}),
    # TCP to anything but the proxy port: Landlock's network rule (EACCES).
    ("connect_direct", {"host": "169.254.169.254", "port": 80}, "ERROR EACCES"),
    ("connect_direct", {"host": PUBLIC_IP, "port": PUBLIC_PORT}, "ERROR EACCES"),
    ("connect_direct", {"host": "127.0.0.1", "port": 22}, "ERROR EACCES"),
    # Beneath it, the network namespace has no route out at all (UDP is
    # not covered by Landlock, so it shows the namespace on its own).
    ("udp_route", {"host": "169.254.169.254", "port": 53}, "ERROR ENETUNREACH"),
    ("udp_route", {"host": PUBLIC_IP, "port": 53}, "ERROR ENETUNREACH"),
    ("udp_route", {"host": "8.8.8.8", "port": 53}, "ERROR ENETUNREACH"),
    ("ptrace", {}, "ERROR EPERM,ERROR EPERM"),
    ("unshare", {}, "ERROR EPERM"),
    ("allocate", {"mb": MEMORY_MB * 2}, "ERROR MemoryError"),
]


@pytest.mark.parametrize("tool,args,want", ATTACKS, ids=[f"{t}-{i}" for i, (t, _, _) in enumerate(ATTACKS)])
def test_attacks_fail_and_the_server_keeps_working(env: Env, tool: str, args: dict[str, Any], want: Any):
    wait_ready(env, "sb")
    args = {k: (str(env.outside / "secret.txt") if v == "OUTSIDE" else str(env.outside / "new.txt") if v == "OUTSIDE_NEW" else v) for k, v in args.items()}
    assert call(env, f"sb__{tool}", args) == want
    assert not (env.outside / "new.txt").exists()
    assert call(env, "sb__echo", {"text": "still here"}) == "still here"


def test_loopback_is_the_namespace_s_own(env: Env):
    wait_ready(env, "sb")
    # 127.0.0.1 inside the namespace is not the host's: aibox's own
    # listeners (and every other host service) are out of reach, by
    # Landlock (only the proxy port may be connected to) and by the
    # namespace (nothing listens there but the proxy).
    port = int(env.gw.main_url.rsplit(":", 1)[1])
    assert call(env, "sb__connect_direct", {"host": "127.0.0.1", "port": port}) == "ERROR EACCES"
    assert call(env, "sb__udp_route", {"host": "127.0.0.1", "port": port}) == "routed"


def test_fork_bomb_stops_at_the_process_limit(env: Env):
    wait_ready(env, "sb")
    r = call(env, "sb__fork_bomb", {"n": 500})
    assert r["error"] == "ERROR EAGAIN", r
    assert r["forked"] < PROCESSES, r
    assert call(env, "sb__echo", {"text": "alive"}) == "alive"


def test_public_host_reachable_only_through_the_egress_proxy(env: Env):
    wait_ready(env, "sb")
    url = f"http://{PUBLIC_IP}:{PUBLIC_PORT}/"
    assert call(env, "sb__fetch", {"url": url}) == f"200 {env.host.marker}"
    t = call(env, "sb__tunnel", {"host": PUBLIC_IP, "port": PUBLIC_PORT, "path": "/"})
    assert t.startswith("HTTP/1.1 200 Connection Established | HTTP/1.0 200 OK") and env.host.marker in t, t
    assert call(env, "sb__fetch_direct", {"url": url}) == "ERROR EACCES"

    # Through the proxy, the egress guard refuses what is not allowed.
    for dest in ["http://169.254.169.254/latest/meta-data/", "http://127.0.0.1:9/", f"http://{HOST_IP}:{PUBLIC_PORT}/"]:
        r = call(env, "sb__fetch", {"url": dest})
        assert r.startswith("HTTP 403 aibox egress refused"), (dest, r)
    t = call(env, "sb__tunnel", {"host": "169.254.169.254", "port": 80, "path": "/"})
    assert t.startswith("HTTP/1.1 403"), t
    denied = [e["detail"] for e in sandbox_events(env) if e["server"] == "sb" and e["what"] == "egress_denied"]
    for want in ["GET 169.254.169.254:80", "GET 127.0.0.1:9", f"GET {HOST_IP}:{PUBLIC_PORT}", "CONNECT 169.254.169.254:80"]:
        assert any(d.startswith(want) for d in denied), (want, denied)


def test_kernel_kills_are_audited_as_violations_and_the_server_comes_back(env: Env):
    wait_ready(env, "sbkill")
    # on_violation kill: the denied syscall kills the process (SIGSYS).
    r = call(env, "sbkill__ptrace")
    assert isinstance(r, McpError), r
    wait_ready(env, "sbkill")
    # cpu_secs 3: spinning past it ends in SIGXCPU.
    r = call(env, "sbkill__burn_cpu", {"seconds": 15})
    assert isinstance(r, McpError), r
    wait_ready(env, "sbkill", timeout=40)
    violations = [e["detail"] for e in sandbox_events(env) if e["server"] == "sbkill" and e["what"] == "violation"]
    assert any("SIGSYS" in v and "seccomp" in v for v in violations), violations
    # The kernel's own record (audit netlink, as root): which syscall.
    assert any("kernel audit: seccomp killed the process at syscall" in v and "(ptrace)" in v for v in violations), violations
    assert any("SIGXCPU" in v or "SIGKILL" in v for v in violations), violations
    spawns = [e for e in log_events(env.gw.stderr()) if e.get("message") == "MCP server spawned" and e.get("server") == "sbkill"]
    assert len(spawns) >= 3, "the killed server was not restarted"


def test_doctor_reports_the_protections_of_this_host(tmp_path: Path):
    r = subprocess.run(
        [str(Path(__file__).resolve().parents[2] / "target" / "debug" / "aibox"), "doctor", "--sandbox", "--format", "json",
         "--data-dir", str(tmp_path / "none"), "--deploy-dir", str(tmp_path / "none")],
        capture_output=True, text=True, cwd=tmp_path, stdin=subprocess.DEVNULL,
    )
    doc = json.loads(r.stdout)
    found = {f["rule_id"] if "rule_id" in f else f.get("id"): f for f in doc["findings"]}
    support = [f for f in doc["findings"] if "AIBOX-SANDBOX-001" in json.dumps(f)]
    assert support, doc["findings"]
    text = json.dumps(support[0])
    for protection in ["netns", "user(uid=65534", "no_new_privs", "landlock(abi=", "seccomp("]:
        assert protection in text, (protection, text)
    assert not [f for f in doc["findings"] if "AIBOX-SANDBOX-002" in json.dumps(f)], found


def test_missing_protection_refuses_in_require_and_degrades_loudly_in_best_effort(cluster: Cluster):
    """A host where network namespaces are unavailable, made real: aibox
    itself runs confined (through its own launcher, as nobody, with
    `unshare` denied by seccomp), so its servers' launchers cannot create
    a namespace. The `require` server must not start (audited `refused`);
    the `best_effort` one starts, works, and is audited `degraded` naming
    what is missing."""
    from conftest import AIBOX_BIN

    base = Path(tempfile.mkdtemp(prefix="aibox-sbx-host-"))
    os.chmod(base, 0o777)
    cwd = base / "aibox"
    (cwd / "data" / "mcp").mkdir(parents=True)
    for d in [cwd, cwd / "data", cwd / "data" / "mcp"]:
        os.chmod(d, 0o777)
    registry = {
        "strict": sandbox_entry(base, base),
        "lenient": sandbox_entry(base, base, mode="best_effort"),
    }
    for entry in registry.values():
        entry["cwd"] = str(base)
    (cwd / "data" / "mcp" / "servers.txt").write_text("strict\nlenient\n")
    (cwd / "data" / "mcp" / "registry.json").write_text(json.dumps({"servers": registry}))
    cfg = base_config()
    cfg["log"] = {"format": "json"}
    (cwd / "config.yaml").write_text(json.dumps(cfg))
    aibox_bin = nobody_copy(AIBOX_BIN)
    outer = {
        "mode": "require", "read": [str(aibox_bin.parent), sys.prefix, str(nobody_copy(SERVERS_DIR / "sandbox_server.py").parent)],
        "write": [str(base)], "system_paths": True,
        "network": "host", "seccomp_deny": sorted(["unshare", "setns", "clone_namespaces", "ptrace"]),
        "on_violation": "errno", "uid": NOBODY, "gid": NOBODY,
    }
    request = {"profile": outer, "limits": {"cpu_secs": None, "memory_mb": None, "open_files": None, "processes": None},
               "command": str(aibox_bin), "args": ["serve", "--config", str(cwd / "config.yaml")],
               "control": None, "probe": False}
    env = {
        "AIBOX_SANDBOX_REQUEST": json.dumps(request),
        "TMPDIR": str(base),
        "AIBOX_MCP_REQUIRE_CAPTOKEN": "false",
        "AIBOX_PRINCIPAL_KEYS": keyring_value([("p1", new_secret())]),
        "AIBOX_CAPTOKEN_KEYS": keyring_value([("c1", new_secret())]),
    }
    proc = cluster.spawn_aibox(None, env=env, cwd=cwd, command=("sandbox-exec",))
    gw = Aibox(proc, cluster)
    cluster.others.remove(proc)
    cluster.gateways.append(gw)
    e = Env(gw, "", cwd / "config.yaml", base, base, base, None, cluster)  # type: ignore[arg-type]

    deadline = time.monotonic() + 30
    while True:
        events = sandbox_events(e)
        refused = [x for x in events if x["server"] == "strict" and x["what"] == "refused"]
        degraded = [x for x in events if x["server"] == "lenient" and x["what"] == "degraded"]
        spawned = [x for x in events if x["server"] == "lenient" and x["what"] == "spawn"]
        if refused and degraded and spawned:
            break
        assert time.monotonic() < deadline, f"{events}\n{gw.stderr()[-3000:]}"
        time.sleep(0.3)
    assert "missing=[netns:" in refused[0]["detail"], refused
    assert "netns:" in degraded[0]["detail"] and "unshare" in degraded[0]["detail"], degraded
    assert "landlock(abi=" in spawned[0]["detail"] and "seccomp(" in spawned[0]["detail"], spawned
    assert not [x for x in events if x["server"] == "strict" and x["what"] == "spawn"], "the require server started"
    # The degraded server works; the refused one is not available.
    wait_ready(e, "lenient")
    assert call(e, "lenient__whoami")["uid"] == NOBODY
    assert call(e, "lenient__read_file", {"path": "/etc/shadow"}) == "ERROR EACCES"
    assert isinstance(call(e, "strict__echo", {"text": "x"}), McpError)
    warnings = [x for x in log_events(gw.stderr()) if "WEAKER SANDBOX" in x.get("message", "")]
    assert warnings and warnings[0]["level"] == "WARN", "the degraded start must be loud in the log"
    shutil.rmtree(base, ignore_errors=True)
