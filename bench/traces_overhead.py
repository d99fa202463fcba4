"""What exporting traces costs a model turn: two aibox processes on one fake
upstream, one with `telemetry.traces: false` and one exporting every span
over OTLP/HTTP to a local receiver, called alternately in one run (issue 8).

Usage (from the repository root, after building aibox and fake-upstream):

    .venv/bin/python bench/traces_overhead.py [--requests 2000] [--bin-dir target/release]

Non-streamed chat turns over one keep-alive connection per gateway (httpx),
in alternating rounds of 50 so that machine noise hits both alike. Prints
p50/p99 of each and the ratio. The receiver accepts and discards (it does not
decode), so the figure is aibox's own cost: span creation, attributes, the
batch queue and the exporter thread competing for the CPU.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


class Sink(BaseHTTPRequestHandler):
    received = 0

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("content-length", "0")))
        Sink.received += 1
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def start(argv, cwd, pattern):
    out = open(cwd / "stdout", "w+")
    p = subprocess.Popen(argv, cwd=cwd, stdout=out, stderr=open(cwd / "stderr", "w"), stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        out.seek(0)
        m = re.search(pattern, out.read(), re.M)
        if m:
            return p, m
        time.sleep(0.05)
    p.kill()
    raise SystemExit(f"{argv[0]} did not start; see {cwd}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--bin-dir", default=str(ROOT / "target" / "release"))
    args = ap.parse_args()
    bins = Path(args.bin_dir).resolve()
    sink = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    procs = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "fake").mkdir()
        fake, m = start([str(bins / "fake-upstream"), "--listen", "127.0.0.1:0", "--models", "m1"], tmp / "fake", r"^LISTENING (\S+)$")
        procs.append(fake)
        urls = {}
        for name, traces in (("off", "false"), ("on", "true")):
            d = tmp / name
            d.mkdir()
            (d / "config.yaml").write_text(
                "server:\n  listen: 127.0.0.1:0\n  ops_listen: 127.0.0.1:0\nlog:\n  level: warn\n"
                f"upstreams:\n  - name: fake\n    base_url: http://{m.group(1)}/v1\n"
                "models:\n  - name: chat\n    targets:\n      - upstream: fake\n        model: m1\n"
                f"telemetry:\n  traces: {traces}\n  otlp_endpoint: http://127.0.0.1:{sink.server_address[1]}/v1/traces\n"
            )
            p, g = start([str(bins / "aibox"), "serve", "--config", "config.yaml"], d, r"^aibox listening main=(\S+) ops=")
            procs.append(p)
            urls[name] = f"http://{g.group(1)}"
        body = {"model": "chat", "messages": [{"role": "user", "content": "hello"}]}
        clients = {k: httpx.Client(base_url=v, timeout=30) for k, v in urls.items()}
        lat: dict[str, list[float]] = {"off": [], "on": []}
        for c in clients.values():
            for _ in range(50):
                c.post("/v1/chat/completions", json=body).raise_for_status()
        done = 0
        while done < args.requests:
            for name, c in clients.items():
                for _ in range(50):
                    t = time.perf_counter()
                    c.post("/v1/chat/completions", json=body).raise_for_status()
                    lat[name].append((time.perf_counter() - t) * 1000)
            done += 50
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(10)
    q = lambda xs, f: statistics.quantiles(xs, n=100)[f - 1]  # noqa: E731
    for name in ("off", "on"):
        print(f"traces {name:3}: p50 {statistics.median(lat[name]):.3f} ms  p99 {q(lat[name], 99):.3f} ms  n={len(lat[name])}")
    print(f"ratio on/off: p50 {statistics.median(lat['on']) / statistics.median(lat['off']):.3f}  "
          f"p99 {q(lat['on'], 99) / q(lat['off'], 99):.3f}; export requests received: {Sink.received}")


if __name__ == "__main__":
    main()
