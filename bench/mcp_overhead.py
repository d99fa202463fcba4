"""MCP tool-call overhead: the same stdio MCP server called directly and
through aibox's `/mcp`, side by side in one run (issue 6's benchmark).

Both sides use the official MCP Python SDK as the client and one session for
all calls, so the client's own cost is the same on both; the difference is
what aibox adds: HTTP, authentication (a gateway API key), CapToken
verification, policy, the guardrail on arguments and results, the durable
audit turn per call, and the hop to the child process.

Usage (from the repository root, after `cargo build --release -p aibox`):

    .venv/bin/python bench/mcp_overhead.py [--calls 500] [--aibox target/release/aibox]

It prints p50/p99 of both and the added latency at p50. Rounds alternate
direct and gateway calls so that machine noise hits both alike.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client

ROOT = Path(__file__).resolve().parents[1]
SERVER = ROOT / "tests" / "e2e" / "mcp_servers" / "stdio_server.py"


def b64url(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def captoken(secret: bytes, tenant: str, user: str, ops: list[str]) -> str:
    now = int(time.time())
    header = {"alg": "HS256", "typ": "JWT", "kid": "c1"}
    claims = {"iss": "aibox", "jti": b64url(secrets.token_bytes(16)), "turn": str(uuid.uuid4()),
              "tenant": tenant, "sub": user, "ops": ops, "iat": now, "exp": now + 3600}
    signing = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    sig = hmac.new(secret, signing.encode(), hashlib.sha256).digest()
    return f"{signing}.{b64url(sig)}"


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


async def run(aibox: str, calls: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="aibox-mcp-bench-"))
    (work / "data" / "mcp").mkdir(parents=True)
    (work / "data" / "mcp" / "servers.txt").write_text("local\n")
    (work / "data" / "mcp" / "registry.json").write_text(json.dumps({"servers": {"local": {
        "transport": "stdio", "command": sys.executable, "args": [str(SERVER)],
        "allow_clients": ["*"],
    }}}))
    (work / "config.yaml").write_text("auth:\n  enabled: true\n  api_keys: true\nserver:\n  listen: 127.0.0.1:0\n  ops_listen: 127.0.0.1:0\n")
    cap_secret = secrets.token_bytes(32)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIBOX_")}
    env["AIBOX_CAPTOKEN_KEYS"] = f"c1:{b64url(cap_secret)}"
    key = subprocess.run([aibox, "apikey", "create", "--config", "config.yaml", "--tenant", "bench", "--user", "u"],
                         cwd=work, env=env, capture_output=True, text=True, check=True).stdout.strip()
    proc = subprocess.Popen([aibox, "serve", "--config", "config.yaml"], cwd=work, env=env,
                            stdout=subprocess.PIPE, stderr=open(work / "aibox.stderr", "w"), text=True)
    try:
        line = ""
        assert proc.stdout is not None
        while "aibox listening" not in line:
            line = proc.stdout.readline()
            if not line:
                raise SystemExit("aibox exited before listening: " + (work / "aibox.stderr").read_text()[-2000:])
        main = re.search(r"main=(\S+)", line).group(1)
        token = captoken(cap_secret, "bench", "u", ["tool:local/echo"])
        headers = {"Authorization": f"Bearer {key}", "X-Aibox-CapToken": token}
        direct_t: list[float] = []
        gw_t: list[float] = []
        params = StdioServerParameters(command=sys.executable, args=[str(SERVER)])
        async with stdio_client(params) as (dr, dw), ClientSession(dr, dw) as direct:
            await direct.initialize()
            async with httpx.AsyncClient(headers=headers, timeout=30) as client:
                async with streamable_http_client(f"http://{main}/mcp", http_client=client) as (gr, gw_, _):
                    async with ClientSession(gr, gw_) as gw:
                        await gw.initialize()
                        for i in range(calls + 20):
                            for sess, name, acc in ((direct, "echo", direct_t), (gw, "local__echo", gw_t)):
                                t0 = time.perf_counter()
                                r = await sess.call_tool(name, {"text": f"hello {i}"})
                                dt = time.perf_counter() - t0
                                if r.isError:
                                    raise SystemExit(f"{name} failed: {r.content}")
                                if i >= 20:  # warm-up
                                    acc.append(dt * 1000)
        d50, d99 = pct(direct_t, 50), pct(direct_t, 99)
        g50, g99 = pct(gw_t, 50), pct(gw_t, 99)
        print(f"calls per side: {len(direct_t)}")
        print(f"direct stdio   p50 {d50:.3f} ms  p99 {d99:.3f} ms  mean {statistics.mean(direct_t):.3f} ms")
        print(f"through /mcp   p50 {g50:.3f} ms  p99 {g99:.3f} ms  mean {statistics.mean(gw_t):.3f} ms")
        print(f"added by aibox p50 {g50 - d50:.3f} ms  p99 {g99 - d99:.3f} ms  (target: p50 <= 1 ms)")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=500)
    ap.add_argument("--aibox", default=str(ROOT / "target" / "release" / "aibox"))
    a = ap.parse_args()
    asyncio.run(run(a.aibox, a.calls))


if __name__ == "__main__":
    main()
