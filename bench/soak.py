"""Soak test (issue 9): aibox under a steady mixed load for a long time.

Starts the release fake upstream and aibox (API keys on, the durable SQLite
audit log, the guardrail on its `standard` profile, an MCP stdio server
behind `/mcp` with CapTokens required), measures the capacity of the mix
briefly (closed loop) unless `--capacity` gives it, then drives an open-loop
load at `--share` of that capacity for `--minutes`, from `--workers` client
processes. The mix (weights in `MIX`):

- `chat`: a non-streamed chat completion (200 with an answer);
- `stream`: a streamed one (200, `text/event-stream`, ends with `[DONE]`,
  no error event);
- `mcp`: a `tools/call` of the stdio server's `echo` through `/mcp` (200,
  a result that is not an error, the echoed text);
- `redact`: a prompt with an e-mail address and a phone number, which the
  guardrail redacts before the upstream sees it (200);
- `block`: a prompt with an AWS key pair, which the guardrail refuses (400
  `content_policy_violation`): expected, counted as `blocked`, not an error.

Any other status, a transport error, a timeout, a stream without `[DONE]`
or with an error event, or a wrong MCP answer is an error. In open loop a
request that cannot start because `--max-inflight` requests are already
waiting is an error too (aibox fell behind).

Every `--interval` seconds it prints the requests, errors, guardrail
blocks, latency p50/p95/p99 (whole stream for streams) and aibox's RSS;
at the end the totals and the RSS growth from the end of the warm-up
(`--warmup` seconds into the soak) to the end, in percent. Exit status 1
when there were errors or the growth is 10% or more.

Usage, from the repository root (builds the release binaries first unless
`--skip-build`; the venv is the end-to-end tests' one):

    .venv/bin/python bench/soak.py --minutes 10 --share 0.5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import queue
import random
import re
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mcp_overhead import STDIO_SERVER, b64url, captoken, pct, wait_line  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODEL = "soak-model"
TENANT, USER = "soak", "u"
MIX = {"chat": 40, "stream": 30, "mcp": 10, "redact": 12, "block": 8}
CAPTOKEN_REFRESH_S = 600
REQUEST_TIMEOUT_S = 30


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def aws_key_pair(rng: random.Random) -> str:
    b32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
    b64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    return ("AWS_ACCESS_KEY_ID=AKIA" + "".join(rng.choice(b32) for _ in range(16))
            + " AWS_SECRET_ACCESS_KEY=" + "".join(rng.choice(b64) for _ in range(40)))


class Client:
    """One worker's connections to aibox: the OpenAI API and an MCP session."""

    def __init__(self, base: str, key: str, cap_secret: bytes, conns: int, seed: int):
        self.base = base
        self.key = key
        self.cap_secret = cap_secret
        self.rng = random.Random(seed)
        limits = httpx.Limits(max_connections=conns, max_keepalive_connections=conns)
        self.http = httpx.AsyncClient(base_url=base, timeout=REQUEST_TIMEOUT_S, limits=limits,
                                      headers={"Authorization": f"Bearer {key}"})
        self.mcp_headers: dict[str, str] = {}
        self.cap_minted = 0.0
        self.next_id = 1

    def mint(self) -> None:
        self.mcp_headers["X-Aibox-CapToken"] = captoken(self.cap_secret, TENANT, USER, ["tool:local/echo"])
        self.cap_minted = time.monotonic()

    async def mcp_rpc(self, method: str, params: dict | None) -> httpx.Response:
        msg: dict = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            msg["params"] = params
        if not method.startswith("notifications/"):
            msg["id"] = self.next_id
            self.next_id += 1
        return await self.http.post("/mcp", content=json.dumps(msg), headers={
            **self.mcp_headers, "Accept": "application/json, text/event-stream",
            "Content-Type": "application/json"})

    async def start(self) -> None:
        self.mint()
        r = await self.mcp_rpc("initialize", {"protocolVersion": "2025-06-18", "capabilities": {},
                                              "clientInfo": {"name": "soak", "version": "1"}})
        r.raise_for_status()
        self.mcp_headers["mcp-session-id"] = r.headers["mcp-session-id"]
        self.mcp_headers["mcp-protocol-version"] = mcp_result(r)["protocolVersion"]
        (await self.mcp_rpc("notifications/initialized", None)).raise_for_status()

    def chat_body(self, kind: str) -> dict:
        n = self.rng.randrange(1_000_000)
        if kind == "redact":
            text = f"Please write to alice.{n}@example.com or call +1 415 555 {n % 10000:04d} about the invoice."
        elif kind == "block":
            text = f"My deploy fails, here is my env: {aws_key_pair(self.rng)}"
        else:
            text = f"Summarise in one sentence why gateways must be fast (request {n})."
        body = {"model": MODEL, "max_tokens": 64,
                "messages": [{"role": "system", "content": "You are concise."},
                             {"role": "user", "content": text}]}
        if kind == "stream":
            body["stream"] = True
        return body

    async def one(self, kind: str) -> str:
        """Runs one request; returns `ok`, `blocked` or `error:<why>`."""
        if kind == "mcp":
            if time.monotonic() - self.cap_minted > CAPTOKEN_REFRESH_S:
                self.mint()
            text = f"echo {self.rng.randrange(1_000_000)}"
            r = await self.mcp_rpc("tools/call", {"name": "local__echo", "arguments": {"text": text}})
            if r.status_code != 200:
                return f"error:mcp-http-{r.status_code}"
            res = mcp_result(r)
            if res is None or res.get("isError"):
                return "error:mcp-tool-error"
            if text not in json.dumps(res):
                return "error:mcp-wrong-answer"
            return "ok"
        body = self.chat_body(kind)
        if kind == "stream":
            async with self.http.stream("POST", "/v1/chat/completions", json=body,
                                        headers={"Accept": "text/event-stream"}) as r:
                if r.status_code != 200:
                    await r.aread()
                    return f"error:stream-http-{r.status_code}"
                done = False
                async for line in r.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        done = True
                    elif '"error"' in data and "error" in json.loads(data):
                        return "error:stream-error-event"
                return "ok" if done else "error:stream-no-done"
        r = await self.http.post("/v1/chat/completions", json=body)
        if kind == "block":
            if r.status_code == 400 and r.json().get("error", {}).get("code") == "content_policy_violation":
                return "blocked"
            return f"error:block-http-{r.status_code}"
        if r.status_code != 200:
            return f"error:{kind}-http-{r.status_code}"
        if not r.json()["choices"][0]["message"]["content"]:
            return f"error:{kind}-empty-answer"
        return "ok"


def mcp_result(r: httpx.Response) -> dict | None:
    if r.headers.get("content-type", "").startswith("text/event-stream"):
        data = [line[5:].strip() for line in r.text.splitlines() if line.startswith("data:")]
        msg = json.loads(data[-1]) if data else {}
    else:
        msg = r.json()
    return msg.get("result")


def pick(rng: random.Random) -> str:
    return rng.choices(list(MIX), weights=list(MIX.values()))[0]


async def worker_main(idx: int, base: str, key: str, cap_secret: bytes, mode: str, rate: float,
                      conns: int, max_inflight: int, seconds: float, out: mp.Queue) -> None:
    client = Client(base, key, cap_secret, conns, seed=idx)
    await client.start()
    results: list[tuple[float, str, str, float]] = []
    deadline = time.monotonic() + seconds

    async def run_one(kind: str) -> None:
        t0 = time.monotonic()
        try:
            outcome = await client.one(kind)
        except (httpx.HTTPError, json.JSONDecodeError, KeyError, IndexError, TypeError) as e:
            outcome = f"error:{kind}-{type(e).__name__}"
        results.append((time.time(), kind, outcome, (time.monotonic() - t0) * 1000))

    async def flush_loop() -> None:
        while True:
            await asyncio.sleep(1)
            if results:
                out.put((idx, results.copy()))
                results.clear()

    flusher = asyncio.create_task(flush_loop())
    if mode == "closed":
        async def loop() -> None:
            while time.monotonic() < deadline:
                await run_one(pick(client.rng))
        await asyncio.gather(*(loop() for _ in range(conns)))
    else:
        # Open loop: starts are spaced by exponential gaps (a Poisson
        # process at `rate`), independent of how fast answers come back.
        inflight: set[asyncio.Task] = set()
        next_at = time.monotonic()
        while True:
            next_at += client.rng.expovariate(rate)
            if next_at >= deadline:
                break
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            if len(inflight) >= max_inflight:
                results.append((time.time(), "any", "error:client-overload", 0.0))
                continue
            t = asyncio.create_task(run_one(pick(client.rng)))
            inflight.add(t)
            t.add_done_callback(inflight.discard)
        if inflight:
            await asyncio.wait(inflight, timeout=REQUEST_TIMEOUT_S + 5)
    flusher.cancel()
    out.put((idx, results))
    out.put((idx, None))
    await client.http.aclose()


def worker(*args) -> None:
    asyncio.run(worker_main(*args))


def run_phase(args, base: str, key: str, cap_secret: bytes, mode: str, rate_total: float,
              seconds: float, aibox_pid: int, report) -> None:
    """Runs the workers for `seconds` and feeds `report(batch)` as results arrive."""
    out: mp.Queue = mp.Queue()
    procs = [mp.Process(target=worker, args=(i, base, key, cap_secret, mode, rate_total / args.workers,
                                             args.conns, args.max_inflight, seconds, out), daemon=True)
             for i in range(args.workers)]
    for p in procs:
        p.start()
    finished = 0
    while finished < len(procs):
        try:
            _, batch = out.get(timeout=1)
        except queue.Empty:
            report(None)
            if any(p.exitcode not in (None, 0) for p in procs):
                raise SystemExit("a load worker died; see its traceback above")
            continue
        if batch is None:
            finished += 1
        else:
            report(batch)
    for p in procs:
        p.join(timeout=10)


def fmt_ms(xs: list[float], p: float) -> str:
    return f"{pct(xs, p):7.1f}" if xs else "      -"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="length of the soak (default 10)")
    ap.add_argument("--share", type=float, default=0.5, help="share of the measured capacity (default 0.5)")
    ap.add_argument("--capacity", type=float, help="capacity in requests/s of the mix; skips measuring it")
    ap.add_argument("--capacity-seconds", type=float, default=20.0, help="length of the capacity run")
    ap.add_argument("--warmup", type=float, default=60.0, help="seconds of the soak before the RSS baseline")
    ap.add_argument("--interval", type=float, default=30.0, help="seconds per printed line")
    ap.add_argument("--workers", type=int, default=2, help="client processes")
    ap.add_argument("--conns", type=int, default=16, help="connections per worker (closed-loop concurrency)")
    ap.add_argument("--max-inflight", type=int, default=256, help="open loop: waiting requests per worker")
    ap.add_argument("--aibox", default=str(ROOT / "target" / "release" / "aibox"))
    ap.add_argument("--fake-upstream", default=str(ROOT / "target" / "release" / "fake-upstream"))
    ap.add_argument("--skip-build", action="store_true", help="use the binaries as they are")
    args = ap.parse_args()

    if not args.skip_build:
        print("building: cargo build --release -p aibox -p fake-upstream", flush=True)
        subprocess.run(["cargo", "build", "--release", "-p", "aibox", "-p", "fake-upstream"], cwd=ROOT, check=True)
    work = Path(tempfile.mkdtemp(prefix="aibox-soak-"))
    procs: list[subprocess.Popen] = []
    try:
        fake = subprocess.Popen([args.fake_upstream, "--listen", "127.0.0.1:0", "--models", MODEL],
                                stdout=subprocess.PIPE, stderr=open(work / "fake.stderr", "w"), text=True)
        procs.append(fake)
        fake_addr = wait_line(fake, "LISTENING", "fake-upstream", work / "fake.stderr").split()[1]
        (work / "data" / "mcp").mkdir(parents=True)
        (work / "data" / "mcp" / "servers.txt").write_text("local\n")
        (work / "data" / "mcp" / "registry.json").write_text(json.dumps({"servers": {
            "local": {"transport": "stdio", "command": sys.executable, "args": [str(STDIO_SERVER)],
                      "allow_clients": ["*"]}}}))
        (work / "config.yaml").write_text(
            "auth:\n  enabled: true\n  api_keys: true\n"
            "server:\n  listen: 127.0.0.1:0\n  ops_listen: 127.0.0.1:0\n  data_dir: ./data\n"
            f"upstreams:\n  - name: fake\n    base_url: http://{fake_addr}/v1\n"
            f"models:\n  - name: {MODEL}\n    targets:\n      - upstream: fake\n")
        cap_secret = secrets.token_bytes(32)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIBOX_")}
        env["AIBOX_CAPTOKEN_KEYS"] = f"c1:{b64url(cap_secret)}"
        env["AIBOX_LOG_LEVEL"] = os.environ.get("AIBOX_LOG_LEVEL", "warn")
        key = subprocess.run([args.aibox, "apikey", "create", "--config", "config.yaml", "--tenant", TENANT,
                              "--user", USER], cwd=work, env=env, capture_output=True, text=True,
                             check=True).stdout.strip()
        aibox = subprocess.Popen([args.aibox, "serve", "--config", "config.yaml"], cwd=work, env=env,
                                 stdout=subprocess.PIPE, stderr=open(work / "aibox.stderr", "w"), text=True)
        procs.append(aibox)
        line = wait_line(aibox, "aibox listening", "aibox", work / "aibox.stderr")
        main_addr = re.search(r"main=(\S+)", line).group(1)
        ops_addr = re.search(r"ops=(\S+)", line).group(1)
        base = f"http://{main_addr}"
        print(f"aibox {main_addr} (pid {aibox.pid}), fake upstream {fake_addr}, work dir {work}", flush=True)
        print(f"idle RSS {rss_kb(aibox.pid) / 1024:.1f} MiB; mix {MIX}", flush=True)

        capacity = args.capacity
        if capacity is None:
            done = [0]

            def count(batch):
                if batch:
                    done[0] += sum(1 for r in batch if not r[2].startswith("error"))

            t0 = time.monotonic()
            run_phase(args, base, key, cap_secret, "closed", 0, args.capacity_seconds, aibox.pid, count)
            capacity = done[0] / (time.monotonic() - t0)
            print(f"capacity (closed loop, {args.workers}x{args.conns} connections, "
                  f"{args.capacity_seconds:.0f} s): {capacity:.0f} req/s", flush=True)
        rate = capacity * args.share
        seconds = args.minutes * 60
        print(f"soak: {rate:.0f} req/s ({args.share:.0%} of {capacity:.0f}) for {args.minutes:g} min, "
              f"RSS baseline after {args.warmup:.0f} s", flush=True)
        print(f"{'t s':>6} {'req':>7} {'req/s':>7} {'errors':>6} {'blocked':>7} "
              f"{'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'RSS MiB':>8}", flush=True)

        start = time.time()
        state = {"next": start + args.interval, "lat": [], "n": 0, "err": 0, "blk": 0}
        totals = {"n": 0, "err": 0, "blk": 0, "reasons": {}, "kinds": {}}
        rss: list[tuple[float, int]] = []
        all_lat: list[float] = []
        intervals = []

        def report(batch) -> None:
            now = time.time()
            if not rss or now - rss[-1][0] >= 1:
                rss.append((now, rss_kb(aibox.pid)))
            for t, kind, outcome, ms in batch or []:
                state["n"] += 1
                totals["n"] += 1
                k = totals["kinds"].setdefault(kind, {"ok": 0, "blocked": 0, "error": 0})
                if outcome.startswith("error"):
                    state["err"] += 1
                    totals["err"] += 1
                    k["error"] += 1
                    totals["reasons"][outcome] = totals["reasons"].get(outcome, 0) + 1
                    continue
                k[outcome] += 1
                if outcome == "blocked":
                    state["blk"] += 1
                    totals["blk"] += 1
                state["lat"].append(ms)
                all_lat.append(ms)
            while now >= state["next"]:
                lat, r = state["lat"], rss[-1][1]
                print(f"{state['next'] - start:6.0f} {state['n']:7d} {state['n'] / args.interval:7.1f} "
                      f"{state['err']:6d} {state['blk']:7d} {fmt_ms(lat, 50)} {fmt_ms(lat, 95)} "
                      f"{fmt_ms(lat, 99)} {r / 1024:8.1f}", flush=True)
                intervals.append({"t": state["next"] - start, "requests": state["n"], "errors": state["err"],
                                  "blocked": state["blk"], "p50_ms": pct(lat, 50) if lat else None,
                                  "p95_ms": pct(lat, 95) if lat else None,
                                  "p99_ms": pct(lat, 99) if lat else None, "rss_kb": r})
                state.update(next=state["next"] + args.interval, lat=[], n=0, err=0, blk=0)

        run_phase(args, base, key, cap_secret, "open", rate, seconds, aibox.pid, report)
        end_rss = rss_kb(aibox.pid)
        alive = aibox.poll() is None
        after = [r for t, r in rss if t - start >= args.warmup]
        baseline = after[0] if after else rss[0][1]
        growth = (end_rss - baseline) / baseline * 100
        peak = max(r for _, r in rss)
        metrics = httpx.get(f"http://{ops_addr}/metrics", timeout=10).text
        verdicts = [ln for ln in metrics.splitlines() if "guardrail" in ln and not ln.startswith("#")]
        print("\nsummary", flush=True)
        print(f"  requests {totals['n']} in {time.time() - start:.0f} s ({totals['n'] / seconds:.1f}/s), "
              f"errors {totals['err']}, guardrail blocks (expected) {totals['blk']}")
        for kind, c in sorted(totals["kinds"].items()):
            print(f"    {kind:7} ok {c['ok']:7d}  blocked {c['blocked']:6d}  errors {c['error']:5d}")
        for why, n in sorted(totals["reasons"].items()):
            print(f"    error {why}: {n}")
        print(f"  latency p50 {fmt_ms(all_lat, 50)} p95 {fmt_ms(all_lat, 95)} p99 {fmt_ms(all_lat, 99)} ms")
        print(f"  RSS after warm-up {baseline / 1024:.1f} MiB, at the end {end_rss / 1024:.1f} MiB "
              f"({growth:+.1f}%), peak {peak / 1024:.1f} MiB; aibox {'still running' if alive else 'EXITED'}")
        for ln in verdicts:
            print(f"  {ln}")
        results_dir = ROOT / "bench" / "results"
        results_dir.mkdir(exist_ok=True)
        out = results_dir / f"soak-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
        out.write_text(json.dumps({
            "minutes": args.minutes, "share": args.share, "capacity_rps": capacity, "rate_rps": rate,
            "mix": MIX, "requests": totals["n"], "errors": totals["err"], "blocked": totals["blk"],
            "error_reasons": totals["reasons"], "kinds": totals["kinds"],
            "p50_ms": pct(all_lat, 50), "p95_ms": pct(all_lat, 95), "p99_ms": pct(all_lat, 99),
            "rss_baseline_kb": baseline, "rss_end_kb": end_rss, "rss_peak_kb": peak,
            "rss_growth_pct": growth, "intervals": intervals, "guardrail_metrics": verdicts}, indent=1))
        print(f"  written to {out}")
        ok = totals["err"] == 0 and growth < 10 and alive
        print(f"  target (zero errors, RSS growth under 10%): {'met' if ok else 'NOT met'}", flush=True)
        sys.exit(0 if ok else 1)
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    main()
