"""The life of an `aibox` process: first start, ops listener, shutdown, and the
checks that refuse unsafe or broken configurations.

Covers: a first start in an empty directory with no config file (only the
listener addresses overridden, to stay on free ports) creating ./data/aibox.db
and ./data/dev-keys.env (mode 0600) with a development-keys warning that never
prints the keys, and reusing them on the next start; /healthz, /readyz and
/metrics on the ops listener only; graceful shutdown on SIGTERM/SIGINT, both
idle and with a stream in flight (bounded by server.shutdown_grace_secs);
`aibox config check` naming file, line and key of a mistake, and redacting
secrets; refusal of the placeholder AUDIT_SIGNING_KEY and of non-loopback
listeners.
"""

from __future__ import annotations

import signal
import stat
import threading
import time

import httpx
import pytest

from conftest import base_config, model, to_yaml

PORT0 = {"AIBOX_LISTEN": "127.0.0.1:0", "AIBOX_OPS_LISTEN": "127.0.0.1:0"}
PLACEHOLDER = "aibox-audit-signing-key-change-me"
DEV_KEY_NAMES = ("AUDIT_SIGNING_KEY", "AIBOX_PRINCIPAL_KEYS", "AIBOX_CAPTOKEN_KEYS", "SECRETS_MASTER_KEY")


def read_env_file(path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#") and "=" in line:
            k, v = line.split("=", 1)
            out[k] = v
    return out


def test_first_start_without_config_creates_private_data_and_dev_keys(cluster):
    cwd = cluster.aibox_dir()
    assert list(cwd.iterdir()) == []
    gw = cluster.aibox(None, env=PORT0, cwd=cwd)

    data = cwd / "data"
    assert data.is_dir()
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert (data / "aibox.db").is_file()
    keys_file = data / "dev-keys.env"
    assert keys_file.is_file()
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600
    keys = read_env_file(keys_file)
    assert set(keys) == set(DEV_KEY_NAMES)

    err = gw.stderr()
    assert "DEVELOPMENT KEYS" in err
    assert "dev-keys.env" in err
    for name, value in keys.items():
        assert value and value not in err and value not in gw.proc.stdout(), f"{name} leaked to the log"


def test_second_start_reuses_the_development_keys(cluster):
    cwd = cluster.aibox_dir()
    first = cluster.aibox(None, env=PORT0, cwd=cwd)
    keys_file = cwd / "data" / "dev-keys.env"
    before = keys_file.read_text()
    assert first.proc.stop(10) == 0
    second = cluster.aibox(None, env=PORT0, cwd=cwd)
    assert keys_file.read_text() == before
    assert "DEVELOPMENT KEYS" in second.stderr()
    assert second.ops().get("/readyz").status_code == 200


def test_ops_listener_serves_health_readiness_and_metrics(cluster):
    gw = cluster.aibox(None, env=PORT0)
    ops = gw.ops()
    r = ops.get("/healthz")
    assert r.status_code == 200 and r.text.strip() == "ok"
    r = ops.get("/readyz")
    assert r.status_code == 200 and r.text.strip() == "ready"

    # One request on the main listener, so the request counter has a sample.
    assert gw.http().get("/v1/does-not-exist").status_code == 404
    r = ops.get("/metrics")
    assert r.status_code == 200
    assert "aibox_http_requests_total" in r.text
    assert 'status="404"' in r.text
    # The main listener's OpenAI routes are not on the ops listener.
    assert ops.get("/v1/models").status_code == 404


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
def test_ops_routes_are_not_served_on_the_main_listener(cluster, path):
    gw = cluster.aibox(None, env=PORT0)
    r = gw.http().get(path)
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"
    assert "aibox_" not in r.text


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_idle_gateway_exits_zero_promptly_on_signal(cluster, sig):
    gw = cluster.aibox(None, env=PORT0)
    gw.http().get("/v1/nope")  # leaves an idle keep-alive connection open
    started = time.monotonic()
    gw.proc.signal(sig)
    rc = gw.proc.wait(10)
    assert rc == 0, gw.proc.describe()
    assert time.monotonic() - started < 2.0
    assert "stopped cleanly" in gw.stderr()


def test_sigterm_drains_an_in_flight_stream_within_shutdown_grace(cluster):
    up = cluster.fake_upstream("slowstream")
    cfg = base_config(shutdown_grace_secs=2)
    cfg["upstreams"] = [up.upstream(timeouts={"total_ms": 120000, "idle_ms": 5000})]
    cfg["models"] = [model("chat", (up, "fault-slow-stream"))]
    gw = cluster.aibox(cfg)

    events: list[float] = []
    failure: list[BaseException] = []
    first_events = threading.Event()

    def read_stream():
        try:
            with httpx.Client(timeout=30) as http:
                with http.stream(
                    "POST",
                    f"{gw.main_url}/v1/chat/completions",
                    json={"model": "chat", "stream": True,
                          "messages": [{"role": "user", "content": "still here"}]},
                ) as resp:
                    for line in resp.iter_lines():
                        if line.startswith("data:"):
                            events.append(time.monotonic())
                            if len(events) >= 3:
                                first_events.set()
        except httpx.HTTPError as e:  # the gateway closes it after the grace
            failure.append(e)

    reader = threading.Thread(target=read_stream, daemon=True)
    reader.start()
    assert first_events.wait(10), "the stream did not start\n" + gw.proc.describe()

    sigterm_at = time.monotonic()
    gw.proc.signal(signal.SIGTERM)
    time.sleep(1.0)
    assert gw.proc.running(), "aibox exited while a stream was in flight\n" + gw.proc.describe()
    assert any(t > sigterm_at + 0.5 for t in events), "the stream stopped flowing after SIGTERM"
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{gw.main_url}/v1/models", timeout=2)

    rc = gw.proc.wait(10)
    elapsed = time.monotonic() - sigterm_at
    assert rc == 0, gw.proc.describe()
    assert 1.5 <= elapsed <= 4.5, f"exited {elapsed:.2f} s after SIGTERM with a 2 s grace"
    reader.join(10)
    assert not reader.is_alive()
    assert "shutdown_grace_secs" in gw.stderr()


def test_sigterm_lets_a_waiting_non_streaming_request_finish(cluster):
    slow = cluster.fake_upstream("slowpoke", slow_ms=1200)
    cfg = base_config(shutdown_grace_secs=5)
    cfg["upstreams"] = [slow.upstream()]
    cfg["models"] = [model("chat", (slow, "fault-slow-first-byte"))]
    gw = cluster.aibox(cfg)

    result: dict = {}

    def call():
        try:
            result["response"] = httpx.post(
                f"{gw.main_url}/v1/chat/completions",
                json={"model": "chat", "messages": [{"role": "user", "content": "wait"}]},
                timeout=10,
            )
        except httpx.HTTPError as e:
            result["error"] = e

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    assert slow.wait_stats(lambda s: s["requests"] == 1)["requests"] == 1
    sigterm_at = time.monotonic()
    gw.proc.signal(signal.SIGTERM)
    caller.join(10)
    assert "error" not in result, result
    r = result["response"]
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "slowpoke: wait"
    rc = gw.proc.wait(10)
    assert rc == 0, gw.proc.describe()
    assert time.monotonic() - sigterm_at < 4.0, "exit should follow the drained request, not the grace"


BAD_CONFIGS = [
    pytest.param(
        "server:\n  listen: 127.0.0.1:0\n  listn: 127.0.0.1:8080\n",
        ["bad.yaml:3", "server", "listn", "listen"],
        id="misspelt-key",
    ),
    pytest.param(
        "upstreams:\n  - name: a\n    base_url: http://127.0.0.1:1/v1\n    timeouts:\n      idle_ms: 0\n",
        ["bad.yaml:5", "upstreams[0].timeouts.idle_ms"],
        id="zero-timeout",
    ),
    pytest.param(
        "upstreams:\n  - name: a\n    base_url: http://127.0.0.1:1/v1\nmodels:\n  - name: m\n"
        "    targets:\n      - upstream: ghost\n",
        ["bad.yaml:7", "models[0].targets[0].upstream", "ghost"],
        id="unknown-upstream",
    ),
    pytest.param(
        "limits:\n  user:\n    requests_per_minute: many\n",
        ["bad.yaml:3", "requests_per_minute"],
        id="wrong-type",
    ),
]


@pytest.mark.parametrize("yaml_text,fragments", BAD_CONFIGS)
def test_config_check_names_file_line_and_key_of_a_mistake(cluster, yaml_text, fragments):
    cwd = cluster.aibox_dir()
    (cwd / "bad.yaml").write_text(yaml_text)
    r = cluster.run_aibox(["config", "check", "--config", "bad.yaml"], cwd=cwd)
    assert r.returncode != 0
    for f in fragments:
        assert f in r.stderr, f"{f!r} missing from: {r.stderr}"
    assert "fix:" in r.stderr
    assert r.stdout == ""


def test_serve_refuses_a_bad_config_with_the_same_message(cluster):
    cwd = cluster.aibox_dir()
    (cwd / "bad.yaml").write_text("server:\n  listn: 127.0.0.1:0\n")
    _, err = cluster.aibox_must_refuse_to_start(None, args=["--config", "bad.yaml"], cwd=cwd)
    assert "bad.yaml:2" in err and "listn" in err


def test_config_check_without_config_prints_the_built_in_defaults(cluster):
    r = cluster.run_aibox(["config", "check"])
    assert r.returncode == 0, r.stderr
    assert "built-in defaults" in r.stdout
    assert "http://127.0.0.1:11434/v1" in r.stdout
    assert "127.0.0.1:8080" in r.stdout and "127.0.0.1:9000" in r.stdout


@pytest.mark.parametrize("with_file", [False, True], ids=["no-file", "with-file"])
def test_out_of_range_env_override_is_blamed_on_the_env_var(cluster, with_file):
    """A value from the environment that fails validation must be reported as
    coming from that variable, not from the file or the built-in default."""
    cwd = cluster.aibox_dir()
    args = ["config", "check"]
    if with_file:
        (cwd / "gateway.yaml").write_text(to_yaml(base_config()))
        args += ["--config", "gateway.yaml"]
    r = cluster.run_aibox(args, env={"AIBOX_MAX_BODY_BYTES": "10"}, cwd=cwd)
    assert r.returncode != 0
    assert "AIBOX_MAX_BODY_BYTES" in r.stderr, r.stderr
    # The same variable with a non-number is already reported correctly.
    r = cluster.run_aibox(args, env={"AIBOX_MAX_BODY_BYTES": "lots"}, cwd=cwd)
    assert r.returncode != 0 and "AIBOX_MAX_BODY_BYTES" in r.stderr, r.stderr


@pytest.mark.parametrize("redis_in", ["file", "env"])
def test_config_check_redacts_secrets(cluster, redis_in):
    secrets = {
        "upstream_key": "sk-live-e2e-upstream-secret-0123456789",
        "redis_password": "redis-e2e-password-9876",
        "pg_password": "pg-e2e-password-5555",
        "audit_key": "audit-e2e-signing-key-with-enough-characters-42",
    }
    cfg = {
        "database": {"url": f"postgres://aibox:{secrets['pg_password']}@127.0.0.1:5432/aibox"},
        "upstreams": [
            {"name": "openai", "base_url": "http://127.0.0.1:9/v1", "api_key_env": "E2E_OPENAI_KEY"}
        ],
    }
    env = {"E2E_OPENAI_KEY": secrets["upstream_key"], "AUDIT_SIGNING_KEY": secrets["audit_key"]}
    if redis_in == "file":
        cfg["redis_url"] = f"redis://:{secrets['redis_password']}@127.0.0.1:6379/0"
    else:
        env["AIBOX_REDIS_URL"] = "redis://127.0.0.1:6379/0"
        env["REDIS_PASSWORD"] = secrets["redis_password"]
    cwd = cluster.aibox_dir()
    (cwd / "gateway.yaml").write_text(to_yaml(cfg))
    r = cluster.run_aibox(["config", "check", "--config", "gateway.yaml"], cwd=cwd, env=env)
    assert r.returncode == 0, r.stderr
    for name, value in secrets.items():
        assert value not in r.stdout, f"{name} leaked into stdout:\n{r.stdout}"
        assert value not in r.stderr, f"{name} leaked into stderr:\n{r.stderr}"
    assert "REDACTED" in r.stdout
    assert "E2E_OPENAI_KEY" in r.stdout
    redis_line = next(l for l in r.stdout.splitlines() if l.startswith("redis_url:"))
    assert "REDACTED" in redis_line and "127.0.0.1:6379" in redis_line, redis_line
    assert "AUDIT_SIGNING_KEY: set" in r.stdout


@pytest.mark.parametrize("where", ["env", "dotenv"])
def test_placeholder_audit_signing_key_is_refused(cluster, where):
    cwd = cluster.aibox_dir()
    env = dict(PORT0)
    if where == "env":
        env["AUDIT_SIGNING_KEY"] = PLACEHOLDER
    else:
        (cwd / ".env").write_text(f"AUDIT_SIGNING_KEY={PLACEHOLDER}\n")
    _, err = cluster.aibox_must_refuse_to_start(None, env=env, cwd=cwd)
    assert "placeholder" in err
    assert "AUDIT_SIGNING_KEY" in err

    r = cluster.run_aibox(["config", "check"], env=env, cwd=cwd)
    assert r.returncode != 0
    assert "placeholder" in r.stderr


@pytest.mark.parametrize("via", ["env", "file"])
def test_listening_on_all_interfaces_without_the_danger_flag_is_refused(cluster, via):
    if via == "env":
        _, err = cluster.aibox_must_refuse_to_start(
            None, env={"AIBOX_LISTEN": "0.0.0.0:0", "AIBOX_OPS_LISTEN": "127.0.0.1:0"}
        )
    else:
        _, err = cluster.aibox_must_refuse_to_start(base_config(listen="0.0.0.0:0"))
    assert "0.0.0.0" in err
    assert "not loopback" in err
    assert "auth" in err


def test_ops_listener_on_all_interfaces_is_refused_even_with_the_danger_flag(cluster):
    _, err = cluster.aibox_must_refuse_to_start(
        base_config(ops_listen="0.0.0.0:0"),
        args=["--danger-allow-unauthenticated-public-bind"],
    )
    assert "ops_listen" in err and "0.0.0.0" in err
