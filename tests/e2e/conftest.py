"""Fixtures for the end-to-end tests: real `aibox` and `fake-upstream` processes.

Nothing is built here. The binaries are taken from the environment variables
AIBOX_BIN and FAKE_UPSTREAM_BIN, defaulting to target/debug/ of the repository
(two levels above this directory); build them first with
`cargo build -p aibox -p fake-upstream`.

Every process gets its own working directory under the test's tmp_path (so an
aibox's ./data is private), listens on port 0 and announces its address on
stdout (`LISTENING ADDR`, `aibox listening main=ADDR ops=ADDR`). stdout and
stderr go to files next to it (NAME.stdout, NAME.stderr), kept by pytest's
tmp_path retention for debugging. At teardown every aibox still running gets
SIGTERM and must exit 0; fake upstreams are stopped after the gateways.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import httpx
import openai
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
AIBOX_BIN = Path(os.environ.get("AIBOX_BIN", REPO_ROOT / "target" / "debug" / "aibox"))
FAKE_UPSTREAM_BIN = Path(
    os.environ.get("FAKE_UPSTREAM_BIN", REPO_ROOT / "target" / "debug" / "fake-upstream")
)

#: How long a process may take to announce its address (raise it with
#: AIBOX_E2E_STARTUP_TIMEOUT on a machine that is busy with other work).
STARTUP_TIMEOUT = float(os.environ.get("AIBOX_E2E_STARTUP_TIMEOUT", "15"))
#: How long a gateway may take to exit after SIGTERM when nothing is in flight.
STOP_TIMEOUT = 10.0
#: The API key the test clients present to aibox. It must never reach an upstream.
CLIENT_API_KEY = "sk-client-e2e-must-not-be-forwarded"

_FAKE_LINE = re.compile(r"^LISTENING (\S+)$", re.M)
_AIBOX_LINE = re.compile(r"^aibox listening main=(\S+) ops=(\S+)$", re.M)

#: Variables of the developer's shell that would change aibox's behaviour.
_SCRUBBED_ENV = (
    "AUDIT_SIGNING_KEY", "SECRETS_MASTER_KEY", "REDIS_PASSWORD",
    "OPS_CONTROLLER_TOKEN", "DASHBOARD_AUTH_TOKEN", "DASHBOARD_PASSWORD",
)


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test runner's environment without any aibox setting, plus `extra`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AIBOX_") and k not in _SCRUBBED_ENV
    }
    env.update(extra or {})
    return env


def _binary(path: Path) -> str:
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(
            f"binary {path} not found; build it with `cargo build -p aibox -p fake-upstream` "
            "from the repository root, or point AIBOX_BIN / FAKE_UPSTREAM_BIN at it",
            pytrace=False,
        )
    return str(path)


#: A PostgreSQL server where the test user may CREATE DATABASE (the shared
#: one of README "Run the tests"); each test makes its own database there.
POSTGRES_ADMIN_URL = os.environ.get("E2E_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres")


@contextlib.contextmanager
def fresh_postgres_database(prefix: str = "aibox_e2e") -> Iterator[str]:
    """Creates a database with a random name on the PostgreSQL at
    POSTGRES_ADMIN_URL, yields its URL, and drops it afterwards (closing
    whatever still uses it). Fails the test with the fix if the server does
    not answer."""
    import psycopg

    try:
        admin = psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as e:
        pytest.fail(
            f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL} ({e}); start it (`.ci/run` does) "
            "or point E2E_POSTGRES_URL at a server where this user may CREATE DATABASE",
            pytrace=False,
        )
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{POSTGRES_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def dead_port() -> int:
    """A loopback port that nothing listens on (connections are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------
# YAML: a tiny block-style emitter, so generated configs look like real ones.
# --------------------------------------------------------------------------


def _scalar(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, dict):
        return "{}"
    if isinstance(v, list):
        return "[]"
    # A JSON string is a valid YAML double-quoted scalar.
    return json.dumps(str(v))


def _yaml_lines(value: Any, indent: int) -> Iterable[str]:
    pad = "  " * indent
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, (dict, list)) and v:
                yield f"{pad}{k}:"
                yield from _yaml_lines(v, indent + 1)
            else:
                yield f"{pad}{k}: {_scalar(v)}"
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, (dict, list)) and item:
                sub = list(_yaml_lines(item, indent + 1))
                yield f"{pad}- {sub[0][len(pad) + 2:]}"
                yield from sub[1:]
            else:
                yield f"{pad}- {_scalar(item)}"
    else:
        yield f"{pad}{_scalar(value)}"


def to_yaml(value: Mapping[str, Any]) -> str:
    return "\n".join(_yaml_lines(dict(value), 0)) + "\n"


# --------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------


def _tail(text: str, limit: int = 6000) -> str:
    return text if len(text) <= limit else "...\n" + text[-limit:]


class Proc:
    """A subprocess whose stdout and stderr are files in its directory."""

    def __init__(self, name: str, argv: Sequence[str], cwd: Path, env: Mapping[str, str]):
        self.name = name
        self.argv = list(argv)
        self.cwd = cwd
        cwd.mkdir(parents=True, exist_ok=True)
        self.stdout_path = cwd / f"{name}.stdout"
        self.stderr_path = cwd / f"{name}.stderr"
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.popen = subprocess.Popen(
                self.argv,
                cwd=cwd,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def running(self) -> bool:
        return self.popen.poll() is None

    def describe(self) -> str:
        return (
            f"{self.name} (pid {self.pid}, cwd {self.cwd})\n"
            f"argv: {' '.join(self.argv)}\n"
            f"--- stdout ---\n{_tail(self.stdout())}\n"
            f"--- stderr ---\n{_tail(self.stderr())}"
        )

    def wait_for(self, pattern: re.Pattern[str], timeout: float = STARTUP_TIMEOUT) -> re.Match[str]:
        """Waits for `pattern` on stdout; fails the test with stderr if the
        process exits first or the timeout passes."""
        deadline = time.monotonic() + timeout
        while True:
            m = pattern.search(self.stdout())
            if m:
                return m
            rc = self.popen.poll()
            if rc is not None:
                m = pattern.search(self.stdout())
                if m:
                    return m
                pytest.fail(
                    f"{self.name} exited with status {rc} before printing its address\n"
                    + self.describe(),
                    pytrace=False,
                )
            if time.monotonic() > deadline:
                pytest.fail(
                    f"{self.name} did not print its address within {timeout:.0f} s\n"
                    + self.describe(),
                    pytrace=False,
                )
            time.sleep(0.02)

    def signal(self, sig: int) -> None:
        if self.running():
            self.popen.send_signal(sig)

    def wait(self, timeout: float) -> int | None:
        """The exit status, or None if still running after `timeout`."""
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        if self.running():
            self.popen.kill()
            self.popen.wait(timeout=10)

    def stop(self, timeout: float) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`. Returns the status of the
        SIGTERM exit, or None if it had to be killed."""
        if not self.running():
            return self.popen.returncode
        self.popen.send_signal(signal.SIGTERM)
        rc = self.wait(timeout)
        if rc is None:
            self.kill()
        return rc


class FakeUpstream:
    """A running fake-upstream."""

    def __init__(self, proc: Proc, name: str, models: Sequence[str]):
        self.proc = proc
        self.name = name
        self.models = list(models)
        addr = proc.wait_for(_FAKE_LINE).group(1)
        self.url = f"http://{addr}"
        self.base_url = f"{self.url}/v1"

    def stats(self) -> dict[str, Any]:
        r = httpx.get(f"{self.url}/_stats", timeout=5)
        r.raise_for_status()
        return r.json()

    def reset(self) -> None:
        httpx.post(f"{self.url}/_reset", timeout=5).raise_for_status()

    def wait_stats(self, predicate, timeout: float = 3.0) -> dict[str, Any]:
        """Polls /_stats until `predicate(stats)` holds; returns the last stats."""
        deadline = time.monotonic() + timeout
        while True:
            s = self.stats()
            if predicate(s) or time.monotonic() > deadline:
                return s
            time.sleep(0.05)

    def upstream(self, name: str | None = None, **extra: Any) -> dict[str, Any]:
        """A config `upstreams:` entry pointing at this fake."""
        entry: dict[str, Any] = {"name": name or self.name, "base_url": self.base_url}
        entry.update(extra)
        return entry


class Aibox:
    """A running `aibox serve`."""

    def __init__(self, proc: Proc, cluster: "Cluster"):
        self.proc = proc
        self.cwd = proc.cwd
        self._cluster = cluster
        m = proc.wait_for(_AIBOX_LINE)
        self.main_url = f"http://{m.group(1)}"
        self.ops_url = f"http://{m.group(2)}"
        self.base_url = f"{self.main_url}/v1"

    def client(self, **kw: Any) -> openai.OpenAI:
        kw.setdefault("api_key", CLIENT_API_KEY)
        kw.setdefault("max_retries", 0)
        kw.setdefault("timeout", 30.0)
        c = openai.OpenAI(base_url=self.base_url, **kw)
        self._cluster._closers.append(c.close)
        return c

    def async_client(self, **kw: Any) -> openai.AsyncOpenAI:
        """Close it in the test (`async with`); it is bound to the test's loop."""
        kw.setdefault("api_key", CLIENT_API_KEY)
        kw.setdefault("max_retries", 0)
        kw.setdefault("timeout", 30.0)
        return openai.AsyncOpenAI(base_url=self.base_url, **kw)

    def http(self, **kw: Any) -> httpx.Client:
        kw.setdefault("timeout", 30.0)
        c = httpx.Client(base_url=self.main_url, **kw)
        self._cluster._closers.append(c.close)
        return c

    def ops(self, **kw: Any) -> httpx.Client:
        kw.setdefault("timeout", 10.0)
        c = httpx.Client(base_url=self.ops_url, **kw)
        self._cluster._closers.append(c.close)
        return c

    def stderr(self) -> str:
        return self.proc.stderr()


def metric_samples(text: str, name: str) -> list[tuple[str, float]]:
    """The samples of metric `name` in a Prometheus/OpenMetrics exposition,
    as (labels text, value) pairs."""
    out = []
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)", line)
        if m and m.group(1) == name:
            out.append((m.group(2) or "", float(m.group(3))))
    return out


#: The gauge of requests being forwarded or streamed. It was called
#: aibox_active_streams before it was renamed; either name is accepted.
INFLIGHT_GAUGES = ("aibox_inflight_requests", "aibox_active_streams")


def inflight_gauge(gw: "Aibox") -> float:
    text = httpx.get(f"{gw.ops_url}/metrics", timeout=5).text
    for name in INFLIGHT_GAUGES:
        samples = metric_samples(text, name)
        if samples:
            return samples[0][1]
    pytest.fail(f"none of {INFLIGHT_GAUGES} in /metrics:\n{text}", pytrace=False)


def collect_until_error(stream) -> tuple[str, "openai.APIError"]:
    """Iterates an `openai` chat stream that must end in an error event;
    returns (content received, the exception raised)."""
    text = ""
    with pytest.raises(openai.APIError) as exc:
        for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
    return text, exc.value


def vm_rss(pid: int) -> int:
    """A process's resident set size in bytes (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


def open_fds(pid: int) -> int:
    """How many file descriptors a process has open."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def base_config(**server: Any) -> dict[str, Any]:
    """A config with both listeners on loopback port 0."""
    s = {"listen": "127.0.0.1:0", "ops_listen": "127.0.0.1:0"}
    s.update(server)
    return {"server": s}


def model(name: str, *targets: tuple[Any, str], aliases: Sequence[str] = ()) -> dict[str, Any]:
    """A `models:` entry; each target is (FakeUpstream or upstream name, upstream model)."""
    entry: dict[str, Any] = {"name": name}
    if aliases:
        entry["aliases"] = list(aliases)
    entry["targets"] = [
        {"upstream": u.name if isinstance(u, FakeUpstream) else u, "model": m}
        for u, m in targets
    ]
    return entry


class Cluster:
    """Starts processes for one test and stops them at its end."""

    def __init__(self, tmp_path: Path):
        self.tmp = tmp_path
        self._count = 0
        self.gateways: list[Aibox] = []
        self.fakes: list[FakeUpstream] = []
        self.others: list[Proc] = []
        self._closers: list = []

    def _dir(self, prefix: str) -> Path:
        self._count += 1
        d = self.tmp / f"{prefix}{self._count}"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def fake_upstream(
        self, name: str = "up1", models: Sequence[str] = ("m1",), slow_ms: int = 3000
    ) -> FakeUpstream:
        argv = [
            _binary(FAKE_UPSTREAM_BIN),
            "--listen", "127.0.0.1:0",
            "--name", name,
            "--models", ",".join(models),
            "--slow-ms", str(slow_ms),
        ]
        proc = Proc(f"fake-{name}", argv, self._dir(f"fake-{name}-"), clean_env())
        self.others.append(proc)
        fake = FakeUpstream(proc, name, models)
        self.others.remove(proc)
        self.fakes.append(fake)
        return fake

    def aibox_dir(self) -> Path:
        """A fresh, empty working directory for an aibox process."""
        return self._dir("aibox-")

    def spawn_aibox(
        self,
        config: Mapping[str, Any] | str | None = None,
        *,
        env: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
        cwd: Path | None = None,
        command: Sequence[str] = ("serve",),
    ) -> Proc:
        """Starts aibox without waiting for it. `config` (a mapping or YAML
        text) is written to CONFIG.yaml in its directory and passed with
        --config; None passes no --config."""
        cwd = cwd or self.aibox_dir()
        argv = [_binary(AIBOX_BIN), *command]
        if config is not None:
            path = cwd / "config.yaml"
            path.write_text(config if isinstance(config, str) else to_yaml(config))
            argv += ["--config", str(path)]
        argv += list(args)
        proc = Proc("aibox", argv, cwd, clean_env(env))
        self.others.append(proc)
        return proc

    def aibox(
        self,
        config: Mapping[str, Any] | str | None = None,
        *,
        env: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
        cwd: Path | None = None,
    ) -> Aibox:
        """Starts `aibox serve` and waits until it listens."""
        proc = self.spawn_aibox(config, env=env, args=args, cwd=cwd)
        gw = Aibox(proc, self)
        self.others.remove(proc)
        self.gateways.append(gw)
        return gw

    def aibox_must_refuse_to_start(
        self,
        config: Mapping[str, Any] | str | None = None,
        *,
        env: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
        cwd: Path | None = None,
        timeout: float = STARTUP_TIMEOUT,
    ) -> tuple[int, str]:
        """Starts `aibox serve` expecting it to exit non-zero before listening.
        Returns (status, stderr). Fails at once if it starts serving."""
        proc = self.spawn_aibox(config, env=env, args=args, cwd=cwd)
        deadline = time.monotonic() + timeout
        while proc.running():
            if _AIBOX_LINE.search(proc.stdout()):
                proc.kill()
                pytest.fail("aibox started serving but should have refused\n" + proc.describe())
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"aibox neither served nor exited within {timeout} s\n" + proc.describe())
            time.sleep(0.02)
        rc = proc.popen.returncode
        assert rc != 0, "aibox exited 0 but should have refused to start\n" + proc.describe()
        return rc, proc.stderr()

    def run_aibox(
        self,
        args: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        timeout: float = 30.0,
    ) -> subprocess.CompletedProcess[str]:
        """Runs a short aibox command (such as `config check`) to completion."""
        cwd = cwd or self.aibox_dir()
        return subprocess.run(
            [_binary(AIBOX_BIN), *args],
            cwd=cwd,
            env=clean_env(env),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def close(self) -> list[str]:
        """Stops everything; returns problems found (gateway exit status)."""
        problems: list[str] = []
        for close in reversed(self._closers):
            try:
                close()
            except Exception:  # noqa: BLE001 - teardown must go on
                pass
        for gw in self.gateways:
            if not gw.proc.running():
                rc = gw.proc.popen.returncode
                if rc != 0:
                    problems.append(f"aibox had exited with status {rc}\n" + gw.proc.describe())
                continue
            rc = gw.proc.stop(STOP_TIMEOUT)
            if rc != 0:
                problems.append(
                    f"aibox did not exit 0 after SIGTERM within {STOP_TIMEOUT} s (status {rc})\n"
                    + gw.proc.describe()
                )
        for proc in self.others:
            proc.stop(5.0)
        for fake in self.fakes:
            # fake-upstream gives open streams 2 s after SIGTERM.
            fake.proc.stop(5.0)
        return problems


@pytest.fixture
def cluster(tmp_path: Path):
    """Starts fake upstreams and aibox gateways; stops them at teardown and
    asserts every gateway exited 0 on SIGTERM."""
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        problems = c.close()
    assert not problems, "\n\n".join(problems)


@pytest.fixture(scope="module")
def module_cluster(tmp_path_factory, request):
    """Like `cluster`, shared by the tests of one module (for processes that
    are expensive to start and that the tests do not change); the same
    SIGTERM exit-0 check runs when the module's last test ends."""
    c = Cluster(tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1]))
    try:
        yield c
    finally:
        problems = c.close()
    assert not problems, "\n\n".join(problems)
