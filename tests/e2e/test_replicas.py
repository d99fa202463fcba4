"""Scale-out and its faults (issue 9): three `aibox serve` replicas behind a
real HAProxy, sharing one real PostgreSQL and one real Redis, driven through
the balancer with the official `openai` SDK; then the database and Redis
taken away under traffic.

The balancer is Debian's HAProxy 2.6 (`apt-get install haproxy`, as
`.ci/run` does), run as a child of the test, in the foreground, with
deploy/haproxy/haproxy.cfg itself as its configuration: the addresses of
the replicas come from the environment variables that file documents.

Shared through PostgreSQL (a fresh database per module on the server at
127.0.0.1:5432, dropped after): one audit chain per tenant, receipts, API
keys, the vault. Through Redis (127.0.0.1:6379): rate limits and single-use
CapTokens (`AIBOX_MCP_CAPTOKEN_SINGLE_USE`). Keys are in each replica's
`.env` (identical), so SIGHUP on each replica rotates them everywhere.

Faults: one replica SIGKILLed under load through the balancer (nothing
acknowledged is lost, the others keep serving); PostgreSQL restarted under
load (its own server, initdb in a temporary directory: turns fail closed
with 503, /readyz says not ready, service comes back by itself, the log
verifies); Redis stopped under traffic (its own redis-server: rate limits
fall back to per-process memory, never to no limit; single-use CapTokens
are refused; both return to Redis when it is back).
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import McpError

from conftest import (
    REPO_ROOT,
    Aibox,
    Cluster,
    Proc,
    base_config,
    clean_env,
    dead_port,
    fresh_postgres_database,
    metric_samples,
    model,
)
from identity_kit import keyring_value, new_secret
from test_mcp import CAPTOKEN_REFUSED, UPSTREAM_UNAVAILABLE, captoken, stdio_server, write_registry
from test_rate_limits import REDIS_URL, assert_rate_limited, fresh_window, redis_now_ms

HAPROXY_CFG = REPO_ROOT / "deploy" / "haproxy" / "haproxy.cfg"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
REPLICAS = 3
#: Concurrent clients of the load phases (each has at most one request in flight).
CLIENTS = 6
HELLO = [{"role": "user", "content": "hello"}]
#: A tenant of this run only, so parallel runs on the shared Redis never
#: share its rate-limit counters.
LIMITED_TENANT = f"rl{uuid.uuid4().hex[:10]}"
LIMIT = 4


def tool_binary(name: str, fix: str) -> str:
    path = shutil.which(name) or (str(PG_BIN / name) if (PG_BIN / name).exists() else None)
    if not path:
        pytest.fail(f"`{name}` is not installed; {fix}", pytrace=False)
    return path


def wait_port(port: int, proc: Proc, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.running():
            pytest.fail(f"{proc.name} exited before listening\n" + proc.describe(), pytrace=False)
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"{proc.name} did not listen on {port} within {timeout} s\n" + proc.describe(), pytrace=False)


def key_env(captoken_ring: list[tuple[str, bytes]], ops_token: str, **extra: str) -> dict[str, str]:
    """The secrets every replica shares, as the lines of its `.env`."""
    return {
        "AUDIT_SIGNING_KEY": secrets.token_urlsafe(32),
        "AIBOX_PRINCIPAL_KEYS": keyring_value([("p1", new_secret())]),
        "AIBOX_CAPTOKEN_KEYS": keyring_value(captoken_ring),
        "SECRETS_MASTER_KEY": keyring_value([("m1", new_secret())]),
        "OPS_CONTROLLER_TOKEN": ops_token,
        **extra,
    }


def write_env_file(cwd: Path, values: dict[str, str]) -> None:
    path = cwd / ".env"
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    path.chmod(0o600)


def start_replicas(cluster: Cluster, cfg: dict[str, Any], env_file: dict[str, str], n: int, mcp: bool = True) -> list[Aibox]:
    """Starts `n` replicas at once (their migrations meet at the advisory
    lock), each in its own directory with the same config and `.env`."""
    procs = []
    for _ in range(n):
        cwd = cluster.aibox_dir()
        write_env_file(cwd, env_file)
        if mcp:
            write_registry(cwd, ["local"], {"local": stdio_server(allow_clients=["*"])})
        procs.append(cluster.spawn_aibox(cfg, cwd=cwd))
    gws = []
    for proc in procs:
        gw = Aibox(proc, cluster)
        cluster.others.remove(proc)
        cluster.gateways.append(gw)
        gws.append(gw)
    return gws


def create_key(cluster: Cluster, gw: Aibox, tenant: str, user: str, roles: str = "") -> str:
    args = ["apikey", "create", "--config", str(gw.cwd / "config.yaml"), "--tenant", tenant, "--user", user]
    if roles:
        args += ["--roles", roles]
    r = cluster.run_aibox(args, cwd=gw.cwd)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def verify_log(url: str, key: str, tenant: str) -> dict[str, Any]:
    r = httpx.get(f"{url}/v1/admin/audit/verify", params={"tenant_id": tenant}, headers=bearer(key), timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def missing_receipts(url: str, key: str, turns: list[str]) -> list[str]:
    with httpx.Client(base_url=url, headers=bearer(key), timeout=10) as c:
        return [t for t in turns if c.get(f"/v1/audit/receipts/{t}").status_code != 200]


def chat_requests_served(gw: Aibox) -> float:
    text = httpx.get(f"{gw.ops_url}/metrics", timeout=5).text
    return sum(v for labels, v in metric_samples(text, "aibox_http_requests_total") if "chat/completions" in labels)


class LoadBalancer:
    """HAProxy with deploy/haproxy/haproxy.cfg in front of `gws`."""

    def __init__(self, cluster: Cluster, gws: list[Aibox]):
        binary = tool_binary("haproxy", "install it with `apt-get install -y haproxy` (`.ci/run` does)")
        assert len(gws) == 3, "deploy/haproxy/haproxy.cfg names three replicas"
        self.port = dead_port()
        env = {"AIBOX_LB_BIND": f"127.0.0.1:{self.port}"}
        for i, gw in enumerate(gws, 1):
            env[f"AIBOX_REPLICA_{i}"] = gw.main_url.removeprefix("http://")
            env[f"AIBOX_OPS_PORT_{i}"] = gw.ops_url.rsplit(":", 1)[1]
        self.proc = Proc("haproxy", [binary, "-db", "-f", str(HAPROXY_CFG)], cluster._dir("haproxy-"), clean_env(env))
        cluster.others.append(self.proc)
        wait_port(self.port, self.proc)
        self.url = f"http://127.0.0.1:{self.port}"
        self.base_url = f"{self.url}/v1"

    def client(self, key: str, **kw: Any) -> openai.OpenAI:
        kw.setdefault("max_retries", 0)
        kw.setdefault("timeout", 30.0)
        return openai.OpenAI(base_url=self.base_url, api_key=key, **kw)


# --------------------------------------------------------------------------
# MCP through a replica, with the official SDK
# --------------------------------------------------------------------------


def mcp_call(gw_url: str, key: str, token: str, a: int = 1, b: int = 2) -> Any:
    """`local__add` through `/mcp` of one replica: the result, or the McpError."""

    async def go() -> Any:
        async with httpx.AsyncClient(headers=bearer(key), timeout=httpx.Timeout(30, read=60)) as client:
            async with streamable_http_client(f"{gw_url}/mcp", http_client=client) as (read, write, _):
                async with ClientSession(read, write) as session:
                    await session.initialize()
                    try:
                        return await session.call_tool("local__add", {"a": a, "b": b}, meta={"aibox/captoken": token})
                    except McpError as e:
                        return e

    return asyncio.run(go())


def tool_text(result: Any) -> str:
    assert not isinstance(result, McpError), f"the call failed: {result.error}"
    return "".join(c.text for c in result.content if getattr(c, "type", "") == "text")


# --------------------------------------------------------------------------
# Three replicas behind HAProxy
# --------------------------------------------------------------------------


@dataclass
class Fleet:
    cluster: Cluster
    gws: list[Aibox]
    lb: LoadBalancer
    admin: str  # tenant acme, role admin
    alice: str  # tenant acme
    captoken_ring: list[tuple[str, bytes]]
    env_file: dict[str, str]
    acked: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def postgres_db():
    with fresh_postgres_database("aibox_replicas") as url:
        yield url


@pytest.fixture(scope="module")
def fleet(postgres_db, module_cluster: Cluster) -> Fleet:
    up = module_cluster.fake_upstream("up1")
    cfg = base_config()
    cfg["log"] = {"format": "json"}
    cfg["database"] = {"url": postgres_db}
    cfg["redis_url"] = REDIS_URL
    cfg["auth"] = {"enabled": True, "api_keys": True}
    cfg["upstreams"] = [up.upstream()]
    cfg["models"] = [model("chat", (up, "m1"))]
    cfg["limits"] = {"tenants": {LIMITED_TENANT: {"requests_per_minute": LIMIT}}}
    ring = [("c1", new_secret())]
    env_file = key_env(ring, "ops-" + secrets.token_hex(16), AIBOX_MCP_CAPTOKEN_SINGLE_USE="true")
    gws = start_replicas(module_cluster, cfg, env_file, REPLICAS)
    lb = LoadBalancer(module_cluster, gws)
    admin = create_key(module_cluster, gws[0], "acme", "auditor", "admin")
    alice = create_key(module_cluster, gws[0], "acme", "alice")
    return Fleet(module_cluster, gws, lb, admin, alice, ring, env_file)


def test_issue9_traffic_spreads_and_one_audit_chain_per_tenant_verifies(fleet: Fleet):
    before = [chat_requests_served(gw) for gw in fleet.gws]
    client = fleet.lb.client(fleet.alice)
    turns = []
    for i in range(30):
        if i % 3 == 2:
            raw = client.chat.completions.with_raw_response.create(model="chat", messages=HELLO, stream=True)
            text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
        else:
            raw = client.chat.completions.with_raw_response.create(model="chat", messages=HELLO)
            text = raw.parse().choices[0].message.content
        assert text == "up1: hello"
        turns.append(raw.headers["x-aibox-turn"])
    served = [chat_requests_served(gw) - b for gw, b in zip(fleet.gws, before)]
    assert sum(served) == 30 and all(s >= 5 for s in served), f"requests per replica: {served}"
    fleet.acked.extend(turns)

    # Every turn, whichever replica wrote it, is in the one chain of the
    # tenant, and every replica serves every receipt.
    for gw in fleet.gws:
        assert not missing_receipts(gw.main_url, fleet.alice, turns), gw.main_url
    for url in [fleet.lb.url] + [gw.main_url for gw in fleet.gws]:
        report = verify_log(url, fleet.admin, "acme")
        assert report["ok"] is True, report
        assert report["envelopes"] >= len(turns), report
    # One chain: the checkpoint every replica serves is the same tree.
    heads = {httpx.get(f"{gw.main_url}/v1/audit/checkpoint", params={"tenant_id": "acme"}, headers=bearer(fleet.alice), timeout=10).text for gw in fleet.gws}
    assert len(heads) == 1, heads


def test_issue9_api_key_created_on_one_replica_works_on_every_other(fleet: Fleet):
    key = create_key(fleet.cluster, fleet.gws[1], "acme", "bob")
    for gw in fleet.gws:
        assert gw.client(api_key=key).chat.completions.create(model="chat", messages=HELLO).choices
    # Revoked through another replica's CLI: refused everywhere at once.
    key_id = key.split("_")[1]
    r = fleet.cluster.run_aibox(["apikey", "revoke", key_id, "--config", str(fleet.gws[2].cwd / "config.yaml")], cwd=fleet.gws[2].cwd)
    assert r.returncode == 0, r.stderr
    for gw in fleet.gws:
        with pytest.raises(openai.AuthenticationError):
            gw.client(api_key=key).chat.completions.create(model="chat", messages=HELLO)


def test_issue9_rate_limit_is_shared_by_the_replicas(fleet: Fleet):
    r = redis.Redis.from_url(REDIS_URL, socket_timeout=2)
    key = create_key(fleet.cluster, fleet.gws[0], LIMITED_TENANT, "u1")
    window = fresh_window(lambda: redis_now_ms(r))
    order = [0, 1, 2, 0]
    for i in order:
        fleet.gws[i].client(api_key=key).chat.completions.create(model="chat", messages=HELLO)
    for gw in fleet.gws:
        assert_rate_limited(
            lambda: gw.client(api_key=key).chat.completions.create(model="chat", messages=HELLO),
            "tenant", "requests", LIMIT,
        )
    assert r.get(f"aibox:rl:{window}:t:r:{LIMITED_TENANT}") == str(LIMIT).encode()
    # Other tenants are not affected.
    assert fleet.lb.client(fleet.alice).chat.completions.create(model="chat", messages=HELLO).choices
    r.close()


def test_issue9_vault_secret_written_on_one_replica_is_read_on_another(fleet: Fleet):
    value = "ghp_" + uuid.uuid4().hex
    a, b, c = fleet.gws
    put = httpx.put(f"{a.main_url}/v1/secrets/token", json={"value": value}, headers=bearer(fleet.alice), timeout=10)
    assert put.status_code == 204, put.text
    for gw in (b, c):
        got = httpx.get(f"{gw.main_url}/v1/secrets/token", headers=bearer(fleet.alice), timeout=10)
        assert got.status_code == 200 and got.json()["value"] == value, got.text
    # Another user of the tenant does not see it on any replica.
    bob = create_key(fleet.cluster, c, "acme", "bob2")
    assert httpx.get(f"{b.main_url}/v1/secrets/token", headers=bearer(bob), timeout=10).status_code == 404
    assert httpx.delete(f"{c.main_url}/v1/secrets/token", headers=bearer(fleet.alice), timeout=10).status_code == 204
    assert httpx.get(f"{a.main_url}/v1/secrets/token", headers=bearer(fleet.alice), timeout=10).status_code == 404


def test_issue9_single_use_captoken_spent_on_one_replica_is_refused_on_the_others(fleet: Fleet):
    a, b, c = fleet.gws
    secret = dict(fleet.captoken_ring)["c1"]
    token, _ = captoken("acme", "alice", ["tool:local/add"], secret=secret)
    assert tool_text(mcp_call(a.main_url, fleet.alice, token)) == "3"
    for gw in (b, c, a):
        err = mcp_call(gw.main_url, fleet.alice, token)
        assert isinstance(err, McpError), f"a spent CapToken was accepted again on {gw.main_url}"
        assert err.error.code == CAPTOKEN_REFUSED and "already used" in err.error.message, err.error
    jti = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "==="))["jti"]
    ttl = redis.Redis.from_url(REDIS_URL).pttl(f"aibox:captoken:jti:{jti}")
    assert 250_000 < ttl <= 306_000, ttl
    # A fresh token of the same turn's grant works once, on any replica.
    fresh, _ = captoken("acme", "alice", ["tool:local/add"], secret=secret)
    assert tool_text(mcp_call(c.main_url, fleet.alice, fresh, 2, 2)) == "4"


def test_issue9_sighup_on_every_replica_rotates_keys_everywhere(fleet: Fleet):
    """The operator's procedure: write the new keys to every replica's
    `.env` (or secret store), then SIGHUP each replica (or POST
    /ops/reload/keys to each); until a replica has reloaded, it still
    accepts only the old keys."""
    old_ops = fleet.env_file["OPS_CONTROLLER_TOKEN"]
    new_ops = "ops-" + secrets.token_hex(16)
    c2 = new_secret()
    ring = [("c2", c2)] + fleet.captoken_ring
    token_c2 = lambda: captoken("acme", "alice", ["tool:local/add"], secret=c2, kid="c2")[0]  # noqa: E731

    # Before: a token of the next key version is refused everywhere.
    err = mcp_call(fleet.gws[0].main_url, fleet.alice, token_c2())
    assert isinstance(err, McpError) and err.error.code == CAPTOKEN_REFUSED
    new_env = dict(fleet.env_file, AIBOX_CAPTOKEN_KEYS=keyring_value(ring), OPS_CONTROLLER_TOKEN=new_ops)
    for gw in fleet.gws:
        write_env_file(gw.cwd, new_env)
        gw.proc.signal(signal.SIGHUP)
    for gw in fleet.gws:
        deadline = time.monotonic() + 5
        while httpx.get(f"{gw.ops_url}/ops/health", headers=bearer(new_ops), timeout=5).status_code != 200:
            assert time.monotonic() < deadline, f"{gw.ops_url} did not reload on SIGHUP\n{gw.stderr()[-3000:]}"
            time.sleep(0.1)
        assert httpx.get(f"{gw.ops_url}/ops/health", headers=bearer(old_ops), timeout=5).status_code == 401
        assert tool_text(mcp_call(gw.main_url, fleet.alice, token_c2())) == "3"
        # Tokens of the old version still verify (it stays in the ring).
        old = captoken("acme", "alice", ["tool:local/add"], secret=dict(fleet.captoken_ring)["c1"])[0]
        assert tool_text(mcp_call(gw.main_url, fleet.alice, old)) == "3"
    fleet.env_file.update(new_env)


def run_load(client_factory, stop: threading.Event, results: list, lock: threading.Lock, stream_every: int = 4) -> None:
    """One client: chat turns in a loop until `stop`; appends
    (start, end, ok, turn or error text) to `results`."""
    client = client_factory()
    i = 0
    while not stop.is_set():
        i += 1
        start = time.monotonic()
        try:
            if i % stream_every == 0:
                raw = client.chat.completions.with_raw_response.create(model="chat", messages=HELLO, stream=True)
                text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
            else:
                raw = client.chat.completions.with_raw_response.create(model="chat", messages=HELLO)
                text = raw.parse().choices[0].message.content
            ok = text == "up1: hello"
            outcome = raw.headers["x-aibox-turn"] if ok else f"unexpected answer {text!r}"
        except Exception as e:  # noqa: BLE001 - every failure is counted
            cause = f" ({type(e.__cause__).__name__}: {e.__cause__})" if e.__cause__ else ""
            kind = "stream" if i % stream_every == 0 else "request"
            ok, outcome = False, f"{kind}: {type(e).__name__}: {e}{cause}"
        with lock:
            results.append((start, time.monotonic(), ok, outcome))


def test_issue9_sigkill_of_one_replica_under_load_loses_no_acknowledged_turn(fleet: Fleet):
    """Runs last in the module: it kills replica 2."""
    results: list = []
    lock = threading.Lock()
    stop = threading.Event()
    threads = [
        threading.Thread(target=run_load, args=(lambda: fleet.lb.client(fleet.alice), stop, results, lock))
        for _ in range(CLIENTS)
    ]
    for t in threads:
        t.start()
    time.sleep(2.0)
    victim = fleet.gws[1]
    killed_at = time.monotonic()
    victim.proc.signal(signal.SIGKILL)
    assert victim.proc.wait(10) is not None
    fleet.cluster.gateways.remove(victim)
    time.sleep(3.0)
    stop.set()
    for t in threads:
        t.join(30)

    acked = [o for _, _, ok, o in results if ok]
    errors = [(s - killed_at, e - killed_at, o) for s, e, ok, o in results if not ok]
    before = [r for r in results if r[1] < killed_at]
    after = [r for r in results if r[0] > killed_at + 0.5]
    assert len(before) > 10 and len(after) > 10, (len(before), len(after))
    # Only requests that were in flight on the killed replica may fail: at
    # most one per client, all started before the kill.
    assert len(errors) <= CLIENTS, errors
    assert all(start < 0.5 for start, _, _ in errors), errors
    assert all(ok for _, _, ok, _ in after), [o for _, _, ok, o in after if not ok]
    print(f"\nSIGKILL under load: {len(results)} requests, {len(errors)} failed (in flight on the killed replica), {len(after)} after the kill all served")

    survivors = [gw for gw in fleet.gws if gw is not victim]
    for gw in survivors:
        missing = missing_receipts(gw.main_url, fleet.alice, acked)
        assert not missing, f"{len(missing)} acknowledged turns are not in the log: {missing[:5]}"
    report = verify_log(fleet.lb.url, fleet.admin, "acme")
    assert report["ok"] is True, report
    assert report["envelopes"] >= len(acked) + len(fleet.acked)


# --------------------------------------------------------------------------
# PostgreSQL restarted under load (its own server)
# --------------------------------------------------------------------------


class OwnPostgres:
    """A PostgreSQL 15 of this test only: initdb in a temporary directory,
    run as the `postgres` user on a free loopback port."""

    def __init__(self, cluster: Cluster):
        initdb = tool_binary("initdb", "install postgresql-15")
        self.postgres = str(PG_BIN / "postgres")
        # The data directory must be the postgres user's; pytest's tmp_path
        # (under /tmp/pytest-of-root, mode 0700) is not reachable by it.
        self.dir = Path(tempfile.mkdtemp(prefix="aibox-e2e-pg-", dir="/var/tmp"))
        self.data = self.dir / "data"
        shutil.chown(self.dir, "postgres", "postgres")
        self.port = dead_port()
        self.cluster = cluster
        r = subprocess.run(
            ["runuser", "-u", "postgres", "--", initdb, "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync"],
            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
        )
        assert r.returncode == 0, r.stdout + r.stderr
        self.proc: Proc | None = None
        self.start()
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        argv = [
            "runuser", "-u", "postgres", "--", self.postgres, "-D", str(self.data),
            "-c", f"port={self.port}", "-c", "listen_addresses=127.0.0.1",
            "-c", f"unix_socket_directories={self.dir}",
        ]
        self.proc = Proc("postgres", argv, self.cluster._dir("postgres-"), clean_env())
        self.cluster.others.append(self.proc)
        deadline = time.monotonic() + 30
        while True:
            r = subprocess.run(
                [str(PG_BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)], capture_output=True
            )
            if r.returncode == 0:
                return
            assert self.proc.running(), self.proc.describe()
            assert time.monotonic() < deadline, self.proc.describe()
            time.sleep(0.1)

    def stop(self) -> None:
        """A fast shutdown: open sessions are cut, as in a restart. (runuser
        does not pass signals on to the server, so pg_ctl sends it.)"""
        assert self.proc is not None
        r = subprocess.run(
            ["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), "stop", "-D", str(self.data), "-m", "fast"],
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        )
        assert r.returncode == 0, r.stdout + r.stderr
        assert self.proc.wait(30) is not None, "postgres did not stop"
        self.cluster.others.remove(self.proc)

    def close(self) -> None:
        if self.proc is not None and self.proc.running():
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def test_issue9_postgres_restart_under_load_fails_closed_and_recovers_by_itself(cluster: Cluster):
    pg = OwnPostgres(cluster)
    try:
        up = cluster.fake_upstream("up1")
        cfg = base_config()
        cfg["database"] = {"url": pg.url}
        cfg["auth"] = {"enabled": True, "api_keys": True}
        cfg["upstreams"] = [up.upstream()]
        cfg["models"] = [model("chat", (up, "m1"))]
        [gw] = start_replicas(cluster, cfg, key_env([("c1", new_secret())], "ops-" + secrets.token_hex(8)), 1, mcp=False)
        admin = create_key(cluster, gw, "acme", "auditor", "admin")
        key = create_key(cluster, gw, "acme", "alice")

        results: list = []
        lock = threading.Lock()
        stop = threading.Event()
        threads = [
            threading.Thread(target=run_load, args=(lambda: gw.client(api_key=key), stop, results, lock))
            for _ in range(3)
        ]
        for t in threads:
            t.start()
        time.sleep(1.5)
        pg.stop()
        down_at = time.monotonic()
        time.sleep(1.0)
        ready = httpx.get(f"{gw.ops_url}/readyz", timeout=10)
        assert ready.status_code == 503 and ("database" in ready.text or "audit" in ready.text), ready.text
        # A turn now is refused, with a clear reason.
        with pytest.raises(openai.APIStatusError) as exc:
            gw.client(api_key=key).chat.completions.create(model="chat", messages=HELLO)
        assert exc.value.status_code == 503, exc.value
        down_message = exc.value.message
        time.sleep(1.0)
        # The database may accept connections before `pg_ctl start -w` sees
        # it (it polls), so "down" ends when the start begins.
        starting_at = time.monotonic()
        pg.start()
        up_at = time.monotonic()  # accepting connections again
        time.sleep(4.0)
        stop.set()
        for t in threads:
            t.join(30)

        acked = [o for _, _, ok, o in results if ok]
        # No answer without its record: nothing that started after the
        # database went away was answered before it came back.
        answered_while_down = [r for r in results if r[2] and r[0] > down_at + 0.2 and r[1] < starting_at]
        assert not answered_while_down, answered_while_down
        failures = [o for _, _, ok, o in results if not ok]
        assert failures, "no request failed while the database was down"
        # A refusal is a 503, or for a stream whose headers were already
        # sent, the error event that replaces its final chunk.
        withheld = "could not be recorded in the audit log"
        not_refused = [
            o for o in failures
            if "Error code: 503" not in o and not (o.startswith("stream: APIError") and withheld in o)
        ]
        assert not not_refused, not_refused
        # Service came back by itself, within a few seconds of the database.
        first_ok_after = min((e for s, e, ok, _ in results if ok and e > up_at), default=None)
        assert first_ok_after is not None, f"no turn succeeded after PostgreSQL came back\n{gw.stderr()[-4000:]}"
        recovery = first_ok_after - up_at
        # Nothing waits or backs off: the pools connect again on the next
        # request. The bound is loose for loaded CI machines.
        assert recovery < 10.0, recovery
        assert httpx.get(f"{gw.ops_url}/readyz", timeout=10).status_code == 200
        print(f"\nPostgreSQL restart: {len(acked)} acknowledged, {len(failures)} refused with 503 while down, first success {recovery:.2f} s after it was back; while down: {down_message!r}")

        assert not missing_receipts(gw.main_url, key, acked)
        report = verify_log(gw.main_url, admin, "acme")
        assert report["ok"] is True, report
        assert report["envelopes"] >= len(acked)
    finally:
        for g in list(cluster.gateways):
            g.proc.stop(10)
        pg.close()


# --------------------------------------------------------------------------
# Redis down under traffic (its own server)
# --------------------------------------------------------------------------


class OwnRedis:
    def __init__(self, cluster: Cluster):
        self.binary = tool_binary("redis-server", "install redis-server")
        self.port = dead_port()
        self.cluster = cluster
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: Proc | None = None
        self.start()

    def start(self) -> None:
        argv = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.proc = Proc("redis", argv, self.cluster._dir("redis-"), clean_env())
        self.cluster.others.append(self.proc)
        wait_port(self.port, self.proc)

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.signal(signal.SIGKILL)
        self.proc.wait(10)
        self.cluster.others.remove(self.proc)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=2)


def fallbacks(gw: Aibox) -> float:
    text = httpx.get(f"{gw.ops_url}/metrics", timeout=5).text
    return metric_samples(text, "aibox_ratelimit_redis_fallbacks")[0][1]


def test_issue9_redis_down_limits_fall_back_to_memory_and_single_use_captokens_fail_closed(cluster: Cluster):
    rds = OwnRedis(cluster)
    limit = 5
    up = cluster.fake_upstream("up1")
    cfg = base_config()
    cfg["redis_url"] = rds.url
    cfg["upstreams"] = [up.upstream()]
    cfg["models"] = [model("chat", (up, "m1"))]
    cfg["limits"] = {"user": {"requests_per_minute": limit}}
    ring = [("c1", new_secret())]
    env_file = key_env(ring, "ops-" + secrets.token_hex(8), AIBOX_MCP_CAPTOKEN_SINGLE_USE="true")
    a, b = start_replicas(cluster, cfg, env_file, 2)
    no_key = "unused"  # auth is off: every request is default/anonymous
    chat = lambda gw: gw.client().chat.completions.create(model="chat", messages=HELLO)  # noqa: E731
    token = lambda: captoken("default", "anonymous", ["tool:local/add"], secret=ring[0][1])[0]  # noqa: E731

    r = rds.client()
    window = fresh_window(lambda: redis_now_ms(r), min_left_ms=20_000)
    # Redis up: one budget for both replicas.
    for i in range(limit):
        chat((a, b)[i % 2])
    assert_rate_limited(lambda: chat(b), "user", "requests", limit)
    assert r.get(f"aibox:rl:{window}:u:r:default:anonymous") == str(limit).encode()
    assert tool_text(mcp_call(a.main_url, no_key, token())) == "3"
    assert fallbacks(a) == 0

    # Redis gone: each replica enforces the limit in its own memory (counts
    # made in Redis are not seen), never no limit.
    rds.stop()
    for _ in range(limit):
        chat(a)
    assert_rate_limited(lambda: chat(a), "user", "requests", limit)
    assert_rate_limited(lambda: chat(a), "user", "requests", limit)
    assert fallbacks(a) >= limit + 2
    assert "Redis" in a.stderr() and "rate limits" in a.stderr()
    # Single-use CapTokens cannot be checked: refused, not waved through.
    err = mcp_call(a.main_url, no_key, token())
    assert isinstance(err, McpError), "a single-use CapToken was accepted while Redis was down"
    assert err.error.code == UPSTREAM_UNAVAILABLE and "cannot be checked" in err.error.message, err.error
    assert "replay protection cannot reach Redis" in a.stderr()

    # Redis back (empty, as after a restart without persistence): decisions
    # go to Redis again by themselves.
    rds.start()
    r = rds.client()
    key = f"aibox:rl:{window}:u:r:default:anonymous"
    back_at = time.monotonic()
    while r.get(key) is None:
        assert time.monotonic() - back_at < 5, "rate limits did not return to Redis"
        # Until Redis answers again, `a` still decides in memory, where its
        # budget is spent.
        try:
            chat(a)
        except openai.RateLimitError:
            time.sleep(0.2)
    settled = fallbacks(a)
    chat(a)
    assert fallbacks(a) == settled, "a decision was still taken in memory with Redis back"
    assert int(r.get(key)) >= 2
    assert "Redis is reachable again" in a.stderr()
    # The replay guard's connection was cut with the old server: the first
    # call may still be refused (fail closed) while it reconnects.
    refused = 0
    while isinstance(result := mcp_call(a.main_url, no_key, token()), McpError):
        refused += 1
        assert refused < 5 and result.error.code == UPSTREAM_UNAVAILABLE, result.error
        time.sleep(0.3)
    assert tool_text(result) == "3"
    print(f"\nRedis down: {fallbacks(a):.0f} decisions in memory on replica a; single-use CapToken refused {refused} time(s) after Redis came back")
