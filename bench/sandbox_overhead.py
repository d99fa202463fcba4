"""Sandbox overhead (issue 10's benchmark): a sandboxed stdio MCP server
against the same server unconfined, side by side in one run.

Three pairs, rounds alternating between the two sides so machine noise hits
both alike:

1. spawn: `/bin/true` started directly, against `aibox sandbox-exec` doing
   everything aibox does for a sandboxed server (control socket, rlimits,
   network namespace with lo up and the proxy listener, uid/gid nobody,
   no_new_privs, Landlock, seccomp, the report with the listener over
   SCM_RIGHTS) and then exec'ing `/bin/true`. Measured from spawn to exit,
   so it is the full added cost of a sandboxed start (target: +20 ms).
2. ready: the real MCP server (tests/e2e/mcp_servers/sandbox_server.py,
   official SDK) from spawn until it answers `initialize`.
3. call: one long-lived server of each kind, `tools/call echo` over its
   stdio, many times (the sandbox's per-call cost: seccomp on every
   syscall, Landlock on every open).

Needs root (network namespace, uid drop), like the full sandbox.

Usage (from the repository root, after `cargo build --release -p aibox`):

    .venv/bin/python bench/sandbox_overhead.py [--aibox target/release/aibox] [--spawns 200] [--calls 1000]
"""

from __future__ import annotations

import argparse
import array
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERVER = ROOT / "tests" / "e2e" / "mcp_servers" / "sandbox_server.py"


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def profile(read: list[str], write: list[str]) -> dict:
    # The default profile as aibox-sandbox builds it ({} validated), with
    # the server's paths added. The deny-list is the documented default.
    deny = sorted([
        "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "mount", "umount2", "pivot_root",
        "move_mount", "open_tree", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr", "bpf",
        "perf_event_open", "userfaultfd", "kexec_load", "kexec_file_load", "init_module", "finit_module",
        "delete_module", "reboot", "swapon", "swapoff", "acct", "quotactl", "syslog", "settimeofday",
        "clock_settime", "clock_adjtime", "adjtimex", "vhangup", "unshare", "setns", "clone_namespaces",
        "keyctl", "add_key", "request_key", "open_by_handle_at", "name_to_handle_at", "fanotify_init",
        "io_uring_setup", "io_uring_enter", "io_uring_register", "socket_raw",
    ])
    return {"mode": "require", "read": read, "write": write, "system_paths": True, "network": "proxy",
            "seccomp_deny": deny, "on_violation": "errno", "uid": 65534, "gid": 65534}


class Control:
    """aibox's side of the launcher handshake (what stdio.rs does)."""

    def __init__(self, base: Path):
        self.dir = Path(tempfile.mkdtemp(prefix="aibox-sandbox-bench-", dir=base))
        os.chmod(self.dir, 0o700)
        self.path = self.dir / "ctl"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(self.path))
        self.sock.listen(1)

    def receive(self) -> tuple[dict, int | None]:
        conn, _ = self.sock.accept()
        fds = array.array("i")
        msg, anc, _, _ = conn.recvmsg(65536, socket.CMSG_SPACE(fds.itemsize))
        fd = None
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
                fd = fds[0]
        conn.close()
        return json.loads(msg.split(b"\n", 1)[0]), fd

    def close(self) -> None:
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def launch(aibox: str, base: Path, command: str, args: list[str], prof: dict, **popen) -> tuple[subprocess.Popen, dict]:
    ctl = Control(base)
    req = {"profile": prof, "limits": {"cpu_secs": None, "memory_mb": 1024, "open_files": 256, "processes": 256},
           "command": command, "args": args, "control": str(ctl.path), "probe": False}
    p = subprocess.Popen([aibox, "sandbox-exec"], env={"PATH": "/usr/bin:/bin", "AIBOX_SANDBOX_REQUEST": json.dumps(req)}, **popen)
    report, fd = ctl.receive()
    if fd is not None:
        os.close(fd)  # aibox would serve the proxy on it
    ctl.close()
    if report["refused"] or report["missing"]:
        raise SystemExit(f"the sandbox is incomplete on this host: {report}")
    return p, report


class Rpc:
    def __init__(self, p: subprocess.Popen):
        self.p = p
        self.n = 0

    def request(self, method: str, params: dict) -> dict:
        self.n += 1
        assert self.p.stdin is not None and self.p.stdout is not None
        self.p.stdin.write((json.dumps({"jsonrpc": "2.0", "id": self.n, "method": method, "params": params}) + "\n").encode())
        self.p.stdin.flush()
        while True:
            line = self.p.stdout.readline()
            if not line:
                raise RuntimeError("the server closed its stdout")
            msg = json.loads(line)
            if msg.get("id") == self.n:
                return msg

    def notify(self, method: str) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write((json.dumps({"jsonrpc": "2.0", "method": method}) + "\n").encode())
        self.p.stdin.flush()

    def initialize(self) -> None:
        r = self.request("initialize", {"protocolVersion": "2025-06-18", "capabilities": {},
                                        "clientInfo": {"name": "bench", "version": "1"}})
        assert "result" in r, r
        self.notify("notifications/initialized")

    def stop(self) -> None:
        self.p.kill()
        self.p.wait()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--aibox", default=str(ROOT / "target" / "release" / "aibox"))
    ap.add_argument("--spawns", type=int, default=200)
    ap.add_argument("--readies", type=int, default=20)
    ap.add_argument("--calls", type=int, default=1000)
    a = ap.parse_args()
    a.aibox = str(Path(a.aibox).resolve())
    if os.geteuid() != 0:
        raise SystemExit("run as root: the full sandbox (network namespace, uid drop) needs it")
    base = Path(tempfile.mkdtemp(prefix="aibox-bench-"))
    os.chmod(base, 0o755)
    work = base / "work"
    work.mkdir()
    os.chmod(work, 0o777)
    prof = profile([sys.prefix, str(SERVER.parent)], [str(work)])
    py = sys.executable
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "stderr": subprocess.DEVNULL}

    # 1. spawn to exit, /bin/true
    plain, boxed = [], []
    report = None
    for i in range(a.spawns + 10):
        t = time.perf_counter()
        subprocess.Popen(["/bin/true"], env={"PATH": "/usr/bin:/bin"}).wait()
        d1 = time.perf_counter() - t
        t = time.perf_counter()
        p, report = launch(a.aibox, base, "/bin/true", [], prof)
        p.wait()
        d2 = time.perf_counter() - t
        if i >= 10:
            plain.append(d1 * 1000)
            boxed.append(d2 * 1000)
    print(f"applied: {', '.join(report['applied']) if report else '?'}")
    print(f"spawn (/bin/true, to exit), {a.spawns} each:")
    print(f"  unconfined  p50 {pct(plain, 50):7.2f} ms  p99 {pct(plain, 99):7.2f} ms")
    print(f"  sandboxed   p50 {pct(boxed, 50):7.2f} ms  p99 {pct(boxed, 99):7.2f} ms")
    print(f"  added       p50 {pct(boxed, 50) - pct(plain, 50):+7.2f} ms")

    # 2. spawn to MCP initialize answered, the real server
    plain, boxed = [], []
    for _ in range(a.readies):
        t = time.perf_counter()
        r = Rpc(subprocess.Popen([py, str(SERVER)], cwd=work, env={"PATH": "/usr/bin:/bin"}, **pipes))
        r.initialize()
        plain.append((time.perf_counter() - t) * 1000)
        r.stop()
        t = time.perf_counter()
        p, _ = launch(a.aibox, base, py, [str(SERVER)], prof, cwd=work, **pipes)
        r = Rpc(p)
        r.initialize()
        boxed.append((time.perf_counter() - t) * 1000)
        r.stop()
    print(f"spawn to MCP ready (sandbox_server.py), {a.readies} each:")
    print(f"  unconfined  p50 {statistics.median(plain):7.1f} ms")
    print(f"  sandboxed   p50 {statistics.median(boxed):7.1f} ms")
    print(f"  added       p50 {statistics.median(boxed) - statistics.median(plain):+7.1f} ms")

    # 3. tool calls on long-lived servers
    out = Rpc(subprocess.Popen([py, str(SERVER)], cwd=work, env={"PATH": "/usr/bin:/bin"}, **pipes))
    out.initialize()
    p, _ = launch(a.aibox, base, py, [str(SERVER)], prof, cwd=work, **pipes)
    inside = Rpc(p)
    inside.initialize()
    plain, boxed = [], []
    for i in range(a.calls + 50):
        for rpc, acc in ((out, plain), (inside, boxed)):
            t = time.perf_counter()
            r = rpc.request("tools/call", {"name": "echo", "arguments": {"text": f"hello {i}"}})
            d = (time.perf_counter() - t) * 1000
            assert "result" in r, r
            if i >= 50:
                acc.append(d)
    out.stop()
    inside.stop()
    print(f"tools/call echo over stdio, {a.calls} each:")
    print(f"  outside     p50 {pct(plain, 50):7.3f} ms  p99 {pct(plain, 99):7.3f} ms")
    print(f"  inside      p50 {pct(boxed, 50):7.3f} ms  p99 {pct(boxed, 99):7.3f} ms")
    print(f"  added       p50 {pct(boxed, 50) - pct(plain, 50):+7.3f} ms")
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
