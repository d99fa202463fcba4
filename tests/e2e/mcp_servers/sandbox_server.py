"""A real MCP server over stdio (official Python SDK, FastMCP) that tries to
break out of its sandbox.

aibox starts it through `aibox sandbox-exec` with a sandbox profile in the
sandbox end-to-end tests. Its legitimate tools (echo, whoami, read_file and
write_file on allowed paths, fetch through the proxy) must keep working;
its attacks must fail. Each attack tool reports what the kernel answered
(an errno name, an exception) and never raises, so the test sees the
outcome of every attempt:

- read_file(path): /etc/shadow, files outside the allowed paths;
- write_file(path, text): outside the allowed write paths;
- raw_socket(): SOCK_RAW and AF_PACKET sockets;
- connect_direct(host, port): TCP without the proxy (127.0.0.1, metadata);
- udp_route(host, port): whether any route leaves the namespace;
- fetch(url) / fetch_direct(url): HTTP through aibox's proxy / around it;
- tunnel(host, port, path): CONNECT through the proxy, then a GET;
- fork_bomb(n): forks until the process limit stops it;
- allocate(mb): allocates past the memory limit;
- ptrace(), unshare(): denied syscalls (EPERM, or SIGSYS with kill);
- burn_cpu(seconds): spins past the CPU limit.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import socket
import time
import urllib.error
import urllib.request

from mcp.server.fastmcp import FastMCP

mcp = FastMCP("e2e-sandbox")
LIBC = ctypes.CDLL(None, use_errno=True)


def _err(e: BaseException) -> str:
    if isinstance(e, OSError) and e.errno is not None:
        return f"ERROR {errno.errorcode.get(e.errno, e.errno)}"
    return f"ERROR {type(e).__name__}"


@mcp.tool()
def echo(text: str) -> str:
    """Returns the text unchanged."""
    return text


@mcp.tool()
def whoami() -> dict[str, int]:
    """The process's user and group ids."""
    return {"uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid()}


@mcp.tool()
def env_names() -> list[str]:
    """The names of this process's environment variables."""
    return sorted(os.environ)


@mcp.tool()
def read_file(path: str) -> str:
    """A file's text, or the error."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read(4096)
    except BaseException as e:  # noqa: BLE001 - the outcome is the answer
        return _err(e)


@mcp.tool()
def write_file(path: str, text: str) -> str:
    """Writes a file; 'ok' or the error."""
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return "ok"
    except BaseException as e:  # noqa: BLE001
        return _err(e)


@mcp.tool()
def raw_socket() -> dict[str, str]:
    """Tries a raw IP socket and a packet socket."""
    out = {}
    for name, args in {
        "raw_icmp": (socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP),
        "packet": (socket.AF_PACKET, socket.SOCK_RAW, 0),
    }.items():
        try:
            socket.socket(*args).close()
            out[name] = "ok"
        except BaseException as e:  # noqa: BLE001
            out[name] = _err(e)
    return out


@mcp.tool()
def connect_direct(host: str, port: int) -> str:
    """A TCP connection that ignores the proxy."""
    try:
        with socket.create_connection((host, port), timeout=3):
            return "connected"
    except BaseException as e:  # noqa: BLE001
        return _err(e)


@mcp.tool()
def udp_route(host: str, port: int) -> str:
    """Whether a UDP socket can be routed to host:port (connect(2) on UDP
    sends nothing; it fails only when no route exists)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((host, port))
            return "routed"
    except BaseException as e:  # noqa: BLE001
        return _err(e)


@mcp.tool()
def fetch(url: str) -> str:
    """GET through the proxy of the environment (HTTP_PROXY)."""
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return f"{r.status} {r.read(4096).decode('utf-8', 'replace')}"
    except urllib.error.HTTPError as e:
        return f"HTTP {e.code} {e.read(4096).decode('utf-8', 'replace')}"
    except BaseException as e:  # noqa: BLE001
        return _err(e)


@mcp.tool()
def fetch_direct(url: str) -> str:
    """GET with proxies disabled: must not get out of the namespace."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=5) as r:
            return f"{r.status} {r.read(4096).decode('utf-8', 'replace')}"
    except urllib.error.URLError as e:
        return _err(e.reason) if isinstance(e.reason, BaseException) else f"ERROR {e.reason}"
    except BaseException as e:  # noqa: BLE001
        return _err(e)


@mcp.tool()
def tunnel(host: str, port: int, path: str) -> str:
    """CONNECT host:port through the proxy, then GET path in the tunnel;
    returns the CONNECT status line and the first response line."""
    proxy = os.environ.get("HTTP_PROXY", "")
    if not proxy.startswith("http://"):
        return "ERROR no proxy"
    phost, pport = proxy[len("http://") :].rstrip("/").rsplit(":", 1)
    try:
        with socket.create_connection((phost, int(pport)), timeout=10) as s:
            s.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
            f = s.makefile("rb")
            status = f.readline().decode().strip()
            while f.readline() not in (b"\r\n", b"\n", b""):
                pass
            if " 200 " not in status + " ":
                return status
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
            first = f.readline().decode().strip()
            body = f.read().decode("utf-8", "replace")
            return f"{status} | {first} | {body[-200:]}"
    except BaseException as e:  # noqa: BLE001
        return _err(e)


@mcp.tool()
def fork_bomb(n: int) -> dict[str, object]:
    """Forks up to n children (each sleeps, then exits) until fork fails;
    kills them all afterwards."""
    children: list[int] = []
    error = "none"
    for _ in range(n):
        try:
            pid = os.fork()
        except BaseException as e:  # noqa: BLE001
            error = _err(e)
            break
        if pid == 0:
            time.sleep(30)
            os._exit(0)
        children.append(pid)
    for pid in children:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except OSError:
            pass
    return {"forked": len(children), "error": error}


@mcp.tool()
def allocate(mb: int) -> str:
    """Allocates mb MiB (touched), or the error."""
    try:
        block = bytearray(mb * 1024 * 1024)
        block[-1] = 1
        return f"allocated {len(block) // (1024 * 1024)} MiB"
    except BaseException as e:  # noqa: BLE001
        return _err(e)


@mcp.tool()
def ptrace() -> str:
    """ptrace(PTRACE_ATTACH, parent) and ptrace(PTRACE_TRACEME)."""
    out = []
    for req, pid in ((16, os.getppid()), (0, 0)):
        rc = LIBC.ptrace(ctypes.c_long(req), ctypes.c_long(pid), None, None)
        out.append("ok" if rc == 0 else f"ERROR {errno.errorcode.get(ctypes.get_errno(), ctypes.get_errno())}")
    return ",".join(out)


@mcp.tool()
def unshare() -> str:
    """unshare(CLONE_NEWUSER): a new user namespace."""
    rc = LIBC.unshare(ctypes.c_int(0x10000000))
    return "ok" if rc == 0 else f"ERROR {errno.errorcode.get(ctypes.get_errno(), ctypes.get_errno())}"


@mcp.tool()
def burn_cpu(seconds: float) -> str:
    """Spins for `seconds` of wall time."""
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += 1
    return f"spun {n}"


if __name__ == "__main__":
    mcp.run("stdio")
