"""The ops API through the real binary (seed 004 §3, §5).

Covers: every ops action refuses a missing, wrong or differently-cased token
(401) and every action is refused when no OPS_CONTROLLER_TOKEN is set at all
(403); no ops path answers on the main listener (404); `GET /ops/health`
probes each upstream for real (a live fake is ok, a dead port is not) and
shows the MCP servers; a stdio MCP server restarted through the API comes
back with a new pid; keyrings and tokens rotate without a restart, through
`POST /ops/reload/keys` and through SIGHUP, from `.env`, and the old token
stops working; every action (successful or not) is an `ops_action` event in
the `_aibox` tenant's audit log, read back with `aibox audit export`, and
that log verifies; a non-loopback ops listener needs a token to start.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import base_config, dead_port, model

TOKEN = "ops-token-" + "a" * 40
SERVERS_DIR = Path(__file__).resolve().parent / "mcp_servers"

#: (method, path) of every ops action.
ACTIONS = [
    ("GET", "/ops/health"),
    ("POST", "/ops/reload/constitution"),
    ("POST", "/ops/reload/keys"),
    ("POST", "/ops/mcp/local/restart"),
    ("POST", "/reload/constitution"),
]

#: Authorization headers that must be refused.
BAD_AUTH = [
    pytest.param({}, id="missing"),
    pytest.param({"Authorization": "Bearer wrong"}, id="wrong"),
    pytest.param({"Authorization": f"Bearer {TOKEN[:-1]}"}, id="prefix"),
    pytest.param({"Authorization": f"Bearer {TOKEN}x"}, id="longer"),
    pytest.param({"Authorization": f"bearer {TOKEN}"}, id="scheme-case"),
    pytest.param({"Authorization": f"Basic {TOKEN}"}, id="basic"),
    pytest.param({"Authorization": f"Bearer {TOKEN.upper()}"}, id="upper"),
    pytest.param({"X-Ops-Token": TOKEN}, id="other-header"),
]


def write_registry(cwd: Path) -> None:
    mcp_dir = cwd / "data" / "mcp"
    mcp_dir.mkdir(parents=True, exist_ok=True)
    (mcp_dir / "servers.txt").write_text("local\n")
    (mcp_dir / "registry.json").write_text(json.dumps({"servers": {"local": {
        "transport": "stdio",
        "command": sys.executable,
        "args": [str(SERVERS_DIR / "stdio_server.py")],
        "allow_clients": ["tenant:acme&role:tools"],
        "tools": {"allow": ["echo", "add"], "deny": ["danger"]},
    }}}))


def gateway(cluster, *, token: str | None = TOKEN, dotenv: str | None = None):
    up = cluster.fake_upstream("up1")
    cfg = base_config()
    cfg["upstreams"] = [up.upstream(), {"name": "dead", "base_url": f"http://127.0.0.1:{dead_port()}/v1"}]
    cfg["models"] = [model("chat", (up, "m1"))]
    cwd = cluster.aibox_dir()
    write_registry(cwd)
    if dotenv is not None:
        (cwd / ".env").write_text(dotenv)
    env = {"OPS_CONTROLLER_TOKEN": token} if token else {}
    return cluster.aibox(cfg, env=env, cwd=cwd)


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def system_events(cluster, gw) -> list[dict]:
    out = gw.cwd / "system.json"
    r = cluster.run_aibox(["audit", "export", "--tenant", "_aibox", "--out", str(out),
                           "--config", str(gw.cwd / "config.yaml")], cwd=gw.cwd)
    assert r.returncode == 0, r.stderr
    return [json.loads(row["event"]) for row in json.loads(out.read_text())["rows"]]


def ops_actions(cluster, gw) -> list[dict]:
    return [e for e in system_events(cluster, gw) if e["type"] == "ops_action"]


def wait_mcp_ready(gw, token: str = TOKEN, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        h = gw.ops().get("/ops/health", headers=auth(token)).json()
        local = h["mcp_servers"][0]
        if local["health"]["state"] == "ready" and local["health"]["pid"]:
            return local
        assert time.monotonic() < deadline, h
        time.sleep(0.2)


@pytest.fixture(scope="module")
def shared(module_cluster):
    return gateway(module_cluster)


@pytest.mark.parametrize(("method", "path"), ACTIONS)
@pytest.mark.parametrize("headers", BAD_AUTH)
def test_actions_refuse_a_missing_or_wrong_token(shared, module_cluster, method, path, headers):
    before = len(ops_actions(module_cluster, shared))
    r = shared.ops().request(method, path, headers=headers)
    assert r.status_code == 401, (r.status_code, r.text)
    assert "OPS_CONTROLLER_TOKEN" in r.text and TOKEN not in r.text
    assert r.headers["www-authenticate"] == "Bearer"
    # A refused request did nothing, so nothing was recorded as done.
    assert len(ops_actions(module_cluster, shared)) == before


def test_refusals_are_counted(shared, module_cluster):
    shared.ops().post("/ops/reload/keys", headers={"Authorization": "Bearer nope-wrong-ops-token"})
    text = shared.ops().get("/metrics").text
    line = next(ln for ln in text.splitlines() if ln.startswith("aibox_ops_auth_failures_total "))
    assert float(line.split()[1]) >= 1
    # And recorded in the system tenant's audit log (the record is written
    # after the 401), without the presented token.
    deadline = time.monotonic() + 10
    while True:
        events = system_events(module_cluster, shared)
        refused = [e for e in events if e["type"] == "auth_refused" and e["route"] == "ops"]
        if refused or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert {e["reason"] for e in refused} >= {"wrong_ops_token"}, events
    assert {e["peer"] for e in refused} == {"127.0.0.1"}, refused
    assert "nope-wrong-ops-token" not in json.dumps(events)


@pytest.mark.parametrize(("method", "path"), ACTIONS)
def test_without_a_configured_token_every_action_is_refused(cluster, method, path):
    gw = gateway(cluster, token=None)
    for headers in ({}, {"Authorization": "Bearer"}, auth("anything")):
        r = gw.ops().request(method, path, headers=headers)
        assert r.status_code == 403, r.text
        assert "OPS_CONTROLLER_TOKEN is not set" in r.text
    # Probes stay open on loopback.
    assert gw.ops().get("/healthz").status_code == 200
    assert gw.ops().get("/metrics").status_code == 200


@pytest.mark.parametrize(("method", "path"), ACTIONS + [("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics")])
def test_ops_paths_are_absent_from_the_main_listener(shared, method, path):
    r = shared.http().request(method, path, headers=auth())
    assert r.status_code == 404, (r.status_code, r.text)
    assert "aibox_" not in r.text and "reloaded" not in r.text


def test_health_probes_upstreams_and_mcp_servers(shared):
    local = wait_mcp_ready(shared)
    h = shared.ops().get("/ops/health", headers=auth())
    assert h.status_code == 200 and h.headers["cache-control"] == "no-store"
    body = h.json()
    ups = {u["name"]: u for u in body["upstreams"]}
    assert ups["up1"]["ok"] is True and ups["up1"]["models"] == 1
    assert ups["dead"]["ok"] is False and ups["dead"]["error"]
    assert body["ok"] is False  # one upstream is down
    assert local["allow_clients"] == ["tenant:acme&role:tools"]
    assert local["allow_tools"] == ["echo", "add"] and local["deny_tools"] == ["danger"]
    assert "echo" in local["tools"]


def test_every_action_is_audited_in_the_system_tenant(shared, module_cluster):
    ops = shared.ops()
    pid_before = wait_mcp_ready(shared)["health"]["pid"]
    before = len(ops_actions(module_cluster, shared))

    assert ops.post("/ops/reload/constitution", headers=auth()).status_code == 200
    r = ops.post("/ops/reload/keys", headers=auth())
    assert r.status_code == 200, r.text
    assert "dev1(" in r.text  # key ids and fingerprints, never material
    r = ops.post("/ops/mcp/local/restart", headers=auth())
    assert r.status_code == 200, r.text
    r = ops.post("/ops/mcp/ghost/restart", headers=auth())
    assert r.status_code == 404 and "ghost" in r.text

    deadline = time.monotonic() + 20
    while True:
        local = wait_mcp_ready(shared)
        if local["health"]["pid"] != pid_before:
            break
        assert time.monotonic() < deadline, "the restarted server did not come back with a new process"
        time.sleep(0.2)

    new = ops_actions(module_cluster, shared)[before:]
    assert [(e["action"], e["actor"], e["ok"]) for e in new] == [
        ("reload_constitution", "ops_api", True),
        ("reload_keys", "ops_api", True),
        ("restart_mcp_server", "ops_api", True),
        ("restart_mcp_server", "ops_api", False),
    ], new
    keys_event = new[1]["target"]
    assert "principal=dev1(" in keys_event and "ops_token=set" in keys_event
    # No key material in the record: the dev keyring's secret part is not there.
    dev_keys = (shared.cwd / "data" / "dev-keys.env").read_text()
    for line in dev_keys.splitlines():
        if "=" in line and ":" in line:
            secret = line.split(":", 1)[1].strip().strip('"')
            assert secret not in json.dumps(new)

    # The system tenant's log verifies like any other.
    r = module_cluster.run_aibox(["audit", "verify", "--tenant", "_aibox", "--config", str(shared.cwd / "config.yaml")], cwd=shared.cwd)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("how", ["api", "sighup"])
def test_tokens_rotate_from_dotenv_without_a_restart(cluster, how):
    old, new = "old-" + "b" * 40, "new-" + "c" * 40
    gw = gateway(cluster, token=None, dotenv=f"OPS_CONTROLLER_TOKEN={old}\n")
    ops = gw.ops()
    assert ops.post("/ops/reload/constitution", headers=auth(old)).status_code == 200
    (gw.cwd / ".env").write_text(f"OPS_CONTROLLER_TOKEN={new}\n")
    if how == "api":
        r = ops.post("/ops/reload/keys", headers=auth(old))
        assert r.status_code == 200, r.text
    else:
        gw.proc.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while ops.post("/ops/reload/constitution", headers=auth(new)).status_code != 200:
        assert time.monotonic() < deadline, "the new token was not picked up"
        time.sleep(0.1)
    assert ops.post("/ops/reload/constitution", headers=auth(old)).status_code == 401
    actor = "ops_api" if how == "api" else "sighup"
    rotations = [e for e in ops_actions(cluster, gw) if e["action"] == "reload_keys"]
    assert rotations and rotations[-1]["actor"] == actor and rotations[-1]["ok"] is True
    assert old not in json.dumps(rotations) and new not in json.dumps(rotations)
    assert old not in gw.stderr() and new not in gw.stderr()


def test_a_bad_keyring_on_reload_keeps_the_running_keys_and_is_audited(cluster):
    gw = gateway(cluster, token=None, dotenv=f"OPS_CONTROLLER_TOKEN={TOKEN}\n")
    (gw.cwd / ".env").write_text(f"OPS_CONTROLLER_TOKEN=other-{TOKEN}\nAIBOX_CAPTOKEN_KEYS=k1:tooshort\n")
    r = gw.ops().post("/ops/reload/keys", headers=auth())
    assert r.status_code == 422 and "AIBOX_CAPTOKEN_KEYS" in r.text, r.text
    assert "tooshort" not in r.text
    # Nothing was swapped: the old token still works.
    assert gw.ops().get("/ops/health", headers=auth()).status_code == 200
    (gw.cwd / ".env").write_text(f"OPS_CONTROLLER_TOKEN={TOKEN}\n")  # `aibox audit export` reads it too
    last = ops_actions(cluster, gw)[-1]
    assert last["action"] == "reload_keys" and last["ok"] is False


def test_non_loopback_ops_listener_needs_a_token(cluster):
    _, err = cluster.aibox_must_refuse_to_start(base_config(ops_listen="0.0.0.0:0"))
    assert "ops_listen" in err and "OPS_CONTROLLER_TOKEN" in err
    gw = cluster.aibox(base_config(ops_listen="0.0.0.0:0"), env={"OPS_CONTROLLER_TOKEN": TOKEN})
    ops = gw.ops()
    assert ops.get("/healthz").status_code == 200
    # Off loopback, metrics name tenants and models: they need the token.
    assert ops.get("/metrics").status_code == 401
    assert ops.get("/metrics", headers=auth()).status_code == 200
    assert "not on loopback" in gw.stderr()


def test_issue8_config_reload_swaps_router_and_limits_without_dropping_requests(cluster):
    import threading

    import openai

    from conftest import to_yaml

    up1 = cluster.fake_upstream("up1", models=("m1", "fault-slow-first-byte"), slow_ms=2000)
    up2 = cluster.fake_upstream("up2")
    cfg = base_config()
    cfg["upstreams"] = [up1.upstream()]
    cfg["models"] = [model("chat", (up1, "m1")), model("slow", (up1, "fault-slow-first-byte"))]
    gw = cluster.aibox(cfg, env={"OPS_CONTROLLER_TOKEN": TOKEN})
    client = gw.client()
    assert client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "a"}]).choices[0].message.content == "up1: a"
    path = gw.cwd / "config.yaml"

    # A request in flight on the old router when the reload happens.
    slow: dict = {}

    def in_flight():
        try:
            slow["answer"] = client.chat.completions.create(model="slow", messages=[{"role": "user", "content": "b"}])
        except Exception as e:  # noqa: BLE001 - reported below
            slow["error"] = e

    # The limit checks below must not straddle a minute (fixed windows).
    if time.time() % 60 > 40:
        time.sleep(61 - time.time() % 60)
    t = threading.Thread(target=in_flight)
    t.start()
    time.sleep(0.5)

    # The new config: up1 gone, chat served by up2, a per-user limit.
    new = dict(cfg)
    new["upstreams"] = [up2.upstream()]
    new["models"] = [model("chat", (up2, "m1")), model("chat2", (up2, "m1"))]
    new["limits"] = {"user": {"requests_per_minute": 3}}
    path.write_text(to_yaml(new))
    assert gw.ops().post("/ops/reload/config").status_code == 401
    r = gw.ops().post("/ops/reload/config", headers=auth())
    assert r.status_code == 200, r.text
    assert "upstreams=up2" in r.text and "restart_needed=[]" in r.text
    t.join(timeout=15)
    assert "error" not in slow, slow.get("error")
    assert slow["answer"].choices[0].message.content.startswith("up1:"), "the in-flight request was dropped or rerouted"

    answer = client.chat.completions.create(model="chat2", messages=[{"role": "user", "content": "c"}])
    assert answer.choices[0].message.content == "up2: c"
    assert sorted(m.id for m in client.models.list().data) == ["chat", "chat2"]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="slow", messages=[{"role": "user", "content": "d"}])
    # The new limit holds: 3 per minute, chat2 and the refused "slow" counted.
    client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "e"}])
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "f"}])

    # A bad config is refused with the validation error; the running one stays.
    bad = dict(new)
    bad["limits"] = {}
    bad["upstreams"] = [{"name": "up3", "base_url": "ftp://nowhere"}]
    bad["models"] = [model("chat", ("up3", "m1"))]
    path.write_text(to_yaml(bad))
    r = gw.ops().post("/ops/reload/config", headers=auth())
    assert r.status_code == 422, r.text
    assert "upstreams" in r.text and "base_url" in r.text and "not reloaded" in r.text
    assert sorted(m.id for m in client.models.list().data) == ["chat", "chat2"]
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "g"}])
    # A change that needs a restart is applied where it can be and named.
    other = dict(new)
    other["limits"] = {}
    other["server"] = {**new["server"], "max_body_bytes": 12345}
    path.write_text(to_yaml(other))
    r = gw.ops().post("/ops/reload/config", headers=auth())
    assert r.status_code == 200 and "restart_needed=[server]" in r.text, r.text
    assert client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "h"}]).choices[0].message.content == "up2: h"

    acts = [a for a in ops_actions(cluster, gw) if a["action"] == "reload_config"]
    assert [a["ok"] for a in acts] == [True, False, True]
    assert "base_url" in acts[1]["target"]
