#!/usr/bin/env python3
"""Turn the raw records of one bench/gateway.sh run into a JSON summary and a
markdown report.

Usage: report.py RUN_DIR JSON_OUT

RUN_DIR holds what gateway.sh collected:
  meta.tsv     key<TAB>value lines about the run (settings, versions, idle RSS)
  runs.jsonl   one JSON object per measured (target, scenario) run
The JSON summary is written to JSON_OUT and the markdown report to stdout.
Only the standard library is used, so a stock python3 is enough.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

# Targets from the project brief.
TARGET_ADDED_P50_MS = 0.2
TARGET_ADDED_P99_MS = 1.0
TARGET_RPS_VS_DIRECT = 0.5
TARGET_RPS_VS_LITELLM = 50.0
TARGET_IDLE_RSS_MIB = 30.0
TARGET_LOAD_RSS_MIB = 100.0
# Issue 4: the audit write adds at most this much to a turn, p50.
TARGET_AUDIT_WAIT_P50_MS = 0.2

# Above this much foreign CPU (% of one core) during a run, the report warns.
NOISY_OTHER_CPU_PCT = 10.0

TARGET_ORDER = {"direct": 0, "aibox": 1, "litellm": 2}
NUMBER = re.compile(r"-?\d+(\.\d+)?")
NUMERIC_SUFFIXES = ("_kb", "_seconds", "_count", "_cores", "_mib")


def load_meta(path: Path) -> dict:
    meta: dict = {}
    for line in path.read_text().splitlines():
        if "\t" not in line:
            continue
        key, value = line.split("\t", 1)
        if key.endswith(NUMERIC_SUFFIXES) and NUMBER.fullmatch(value):
            meta[key] = float(value) if "." in value else int(value)
        else:
            meta[key] = value
    return meta


def mib(kb: float | None) -> float | None:
    return None if kb is None else kb / 1024.0


def enrich(run: dict) -> dict:
    """Adds derived figures (rps, ms latencies, error totals) to a raw run."""
    wrk = run.get("wrk")
    if not wrk:
        run["ok"] = False
        return run
    seconds = wrk["duration_us"] / 1e6
    errors = wrk["errors"]
    socket_errors = errors["connect"] + errors["read"] + errors["write"] + errors["timeout"]
    lat = wrk["latency_us"]
    run.update(
        ok=True,
        rps=wrk["requests"] / seconds if seconds > 0 else 0.0,
        p50_ms=lat["p50"] / 1000.0,
        p90_ms=lat["p90"] / 1000.0,
        p99_ms=lat["p99"] / 1000.0,
        p999_ms=lat["p999"] / 1000.0,
        mean_ms=lat["mean"] / 1000.0,
        max_ms=lat["max"] / 1000.0,
        non_2xx=errors["status"],
        socket_errors=socket_errors,
        peak_rss_mib=mib(run.get("peak_rss_kb")),
    )
    ticks = run.get("cpu_ticks")
    tck = run.get("clk_tck") or 100
    if ticks is not None and seconds > 0:
        # Percent of one core, like top, and CPU time per completed request.
        run["server_cpu_pct"] = 100.0 * ticks / tck / seconds
        if wrk["requests"]:
            run["server_cpu_us_per_request"] = 1e6 * ticks / tck / wrk["requests"]
    window = (run.get("window_ms") or 0) / 1000.0
    if run.get("system_busy_ticks") is not None and run.get("own_ticks") is not None and window > 0:
        # CPU used by anything but wrk, the server and the fake upstream, and
        # CPU time the hypervisor gave to other guests, in % of one core:
        # either makes the figures noisy.
        other = (run["system_busy_ticks"] - run["own_ticks"]) / tck / window
        run["other_cpu_pct"] = max(0.0, 100.0 * other)
        if run.get("steal_ticks") is not None:
            run["steal_cpu_pct"] = 100.0 * run["steal_ticks"] / tck / window
    before, after = run.get("audit_buckets_before"), run.get("audit_buckets_after")
    run["audit_wait_p50_ms"], run["audit_turns"] = bucket_quantile(before, after, 0.5)
    run["audit_wait_p99_ms"], _ = bucket_quantile(before, after, 0.99)
    up = run.get("upstream_requests")
    if up is not None:
        run["upstream_requests_per_client_request"] = up / wrk["requests"] if wrk["requests"] else None
    return run


def bucket_quantile(before: dict | None, after: dict | None, q: float) -> tuple[float | None, int]:
    """The q-quantile, in ms, of the observations between two readings of a
    cumulative Prometheus histogram ({upper bound: count}), interpolated
    linearly inside the bucket it falls in; and how many observations."""
    if not before or not after:
        return None, 0
    bounds = sorted(
        ((float("inf") if le == "+Inf" else float(le), after[le] - before.get(le, 0)) for le in after),
        key=lambda b: b[0],
    )
    total = bounds[-1][1] if bounds else 0
    if total <= 0:
        return None, 0
    rank = q * total
    lower, below = 0.0, 0
    for upper, cum in bounds:
        if cum >= rank:
            if upper == float("inf"):
                return lower * 1000.0, total
            inside = cum - below
            frac = (rank - below) / inside if inside else 1.0
            return (lower + (upper - lower) * frac) * 1000.0, total
        lower, below = upper, cum
    return None, total


def scenario_name(run: dict) -> str:
    return ("stream" if run["stream"] else "non-stream") + f" c={run['concurrency']}"


def find(runs: list[dict], target: str, conc: int, stream: bool) -> dict | None:
    for run in runs:
        if (
            run["target"] == target
            and run["concurrency"] == conc
            and run["stream"] == stream
            and run.get("ok")
        ):
            return run
    return None


def fmt(value, digits: int = 2, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}{unit}"
    return f"{value}{unit}"


def check(name: str, value, op: str, limit: float, unit: str, digits: int = 2) -> dict:
    if value is None:
        status = "N/A"
    elif op == "<=":
        status = "PASS" if value <= limit else "FAIL"
    else:
        status = "PASS" if value >= limit else "FAIL"
    return {
        "check": name,
        "measured": value,
        "target": f"{op} {limit:g}{unit}",
        "status": status,
        "unit": unit,
        "digits": digits,
    }


def comparisons(runs: list[dict], meta: dict) -> list[dict]:
    checks: list[dict] = []
    for stream in (False, True):
        label = "stream" if stream else "non-stream"
        d1, a1 = find(runs, "direct", 1, stream), find(runs, "aibox", 1, stream)
        added50 = a1["p50_ms"] - d1["p50_ms"] if d1 and a1 else None
        added99 = a1["p99_ms"] - d1["p99_ms"] if d1 and a1 else None
        checks.append(check(f"aibox added latency p50, c=1, {label}", added50, "<=", TARGET_ADDED_P50_MS, " ms", 3))
        checks.append(check(f"aibox added latency p99, c=1, {label}", added99, "<=", TARGET_ADDED_P99_MS, " ms", 3))
    for stream in (False, True):
        label = "stream" if stream else "non-stream"
        d32, a32 = find(runs, "direct", 32, stream), find(runs, "aibox", 32, stream)
        ratio = a32["rps"] / d32["rps"] if d32 and a32 and d32["rps"] else None
        checks.append(check(f"aibox rps / direct rps, c=32, {label}", ratio, ">=", TARGET_RPS_VS_DIRECT, "x", 3))
    for stream in (False, True):
        label = "stream" if stream else "non-stream"
        l32, a32 = find(runs, "litellm", 32, stream), find(runs, "aibox", 32, stream)
        ratio = a32["rps"] / l32["rps"] if l32 and a32 and l32["rps"] else None
        checks.append(check(f"aibox rps / LiteLLM rps, c=32, {label}", ratio, ">=", TARGET_RPS_VS_LITELLM, "x", 1))
    for stream in (False, True):
        label = "stream" if stream else "non-stream"
        a1 = find(runs, "aibox", 1, stream)
        checks.append(check(
            f"aibox turn's wait for its durable audit write, p50, c=1, {label}",
            a1.get("audit_wait_p50_ms") if a1 else None, "<=", TARGET_AUDIT_WAIT_P50_MS, " ms", 3,
        ))
    checks.append(check("aibox idle RSS after start-up", mib(meta.get("aibox_idle_rss_kb")), "<=", TARGET_IDLE_RSS_MIB, " MiB", 1))
    peaks = [r["peak_rss_mib"] for r in runs if r["target"] == "aibox" and r.get("peak_rss_mib") is not None]
    checks.append(check("aibox peak RSS under load (max over scenarios)", max(peaks) if peaks else None, "<=", TARGET_LOAD_RSS_MIB, " MiB", 1))
    aibox_runs = [r for r in runs if r["target"] == "aibox" and r.get("ok")]
    errs = sum(r["non_2xx"] + r["socket_errors"] for r in aibox_runs) if aibox_runs else None
    checks.append(check("aibox errors (non-2xx + socket) over all scenarios", errs, "<=", 0, "", 0))
    return checks


def markdown(meta: dict, runs: list[dict], checks: list[dict]) -> str:
    out: list[str] = []
    out.append(f"## aibox gateway benchmark, {meta.get('timestamp', '?')}")
    out.append("")
    out.append(
        f"- machine: {meta.get('cpu_model', '?')}, {meta.get('nproc_cores', '?')} cores, kernel {meta.get('kernel', '?')}; "
        "load generator, gateway and fake upstream share these cores"
    )
    out.append(
        f"- wrk {meta.get('wrk_version', '?')}, closed loop, threads = min(2, connections), "
        f"{meta.get('bench_seconds', '?')} s per run after a {meta.get('warmup_seconds', '?')} s warm-up; "
        "latency is to the last byte of the response (for streams: the whole SSE stream)"
    )
    out.append(
        f"- {meta.get('aibox_version', 'aibox ?')} (`{meta.get('aibox_bin', '?')}`, tree at git {meta.get('git_rev', '?')}), release build, "
        f"log level `{meta.get('aibox_log_level', '?')}`, auth {meta.get('aibox_auth', 'off')}, in-memory limiter, no limits configured"
    )
    out.append(f"- fake upstream: tools/fake-upstream release build ({meta.get('fake_upstream_version', '?')})")
    out.append(f"- load average at start: {meta.get('loadavg_start', '?')}")
    out.append(f"- scheduling of servers and wrk: {meta.get('sched', 'normal')}")
    status = meta.get("litellm_status", "not run")
    if status == "ok":
        note = ""
        if meta.get("litellm_seconds") != meta.get("bench_seconds"):
            note = (
                f"; **LiteLLM runs are SHORTER: {meta.get('litellm_seconds')} s per run** "
                f"(after the same {meta.get('warmup_seconds')} s warm-up), to keep the benchmark short"
            )
        out.append(
            f"- LiteLLM proxy {meta.get('litellm_version', '?')}: `--num_workers 1`, default config apart from "
            f"{meta.get('litellm_tuning', '?')}{note}"
        )
    else:
        out.append(f"- **LiteLLM: {status}**")
    out.append("")

    out.append("| target | scenario | p50 ms | p99 ms | req/s | non-2xx | socket errors | peak RSS MiB | server CPU % | server CPU µs/req | other CPU % | steal % |")
    out.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for run in runs:
        if not run.get("ok"):
            out.append(f"| {run['target']} | {scenario_name(run)} | failed: {run.get('error', 'no wrk output')} | | | | | | | | | |")
            continue
        dur = "" if run["seconds"] == meta.get("bench_seconds") else f" ({run['seconds']} s)"
        out.append(
            f"| {run['target']} | {scenario_name(run)}{dur} | {fmt(run['p50_ms'], 3)} | {fmt(run['p99_ms'], 3)} | "
            f"{fmt(run['rps'], 0)} | {run['non_2xx']} | {run['socket_errors']} | {fmt(run['peak_rss_mib'], 1)} | "
            f"{fmt(run.get('server_cpu_pct'), 0)} | {fmt(run.get('server_cpu_us_per_request'), 0)} | "
            f"{fmt(run.get('other_cpu_pct'), 0)} | {fmt(run.get('steal_cpu_pct'), 0)} |"
        )
    out.append("")
    out.append(
        "Peak RSS: VmRSS of the server sampled every 100 ms during the run (direct: the fake upstream; "
        "LiteLLM: sum over its process tree). Server CPU: user+system time of that process over the run, "
        "in % of one core, and divided by the completed requests. Other CPU: busy time of the machine not spent in wrk, the server or the fake "
        "upstream (other workloads). Steal: time the hypervisor ran other guests while this machine had "
        "work. Both in % of one core."
    )
    noisy = [
        r for r in runs
        if (r.get("other_cpu_pct") or 0) + (r.get("steal_cpu_pct") or 0) > NOISY_OTHER_CPU_PCT
    ]
    if noisy:
        worst = max((r.get("other_cpu_pct") or 0) + (r.get("steal_cpu_pct") or 0) for r in noisy)
        out.append("")
        out.append(
            f"**Warning: other processes or hypervisor steal took up to {worst:.0f}% of a core during "
            f"{len(noisy)} of {len(runs)} runs; latency tails and throughput ratios are unreliable. "
            "Rerun on a quiet machine.**"
        )
    out.append("")

    audited = [r for r in runs if r["target"] == "aibox" and r.get("audit_turns")]
    if audited:
        out.append("| aibox scenario | audited turns | audit wait p50 ms | audit wait p99 ms |")
        out.append("|---|---:|---:|---:|")
        for r in audited:
            out.append(
                f"| {scenario_name(r)} | {r['audit_turns']} | {fmt(r['audit_wait_p50_ms'], 3)} | {fmt(r['audit_wait_p99_ms'], 3)} |"
            )
        out.append("")
        out.append(
            "Audit wait: how long each turn waited, between submitting its events and the durable commit of its "
            "signed record, before its answer (or a stream's last chunk) was released; from aibox's "
            "`aibox_audit_append_duration_seconds` histogram read before and after each run, interpolated within buckets."
        )
        out.append("")

    out.append("| idle RSS | MiB |")
    out.append("|---|---:|")
    rows = [
        ("aibox, after start-up", "aibox_idle_rss_kb"),
        ("aibox, idle after all load runs", "aibox_after_load_rss_kb"),
        ("fake upstream, after start-up", "fake_idle_rss_kb"),
        ("LiteLLM (process tree), after start-up", "litellm_idle_rss_kb"),
    ]
    for label, key in rows:
        if key in meta:
            out.append(f"| {label} | {fmt(mib(meta[key]), 1)} |")
    out.append("")

    out.append("| check | measured | target | result |")
    out.append("|---|---:|---:|---|")
    for c in checks:
        value = c["measured"]
        shown = fmt(float(value), c["digits"], c["unit"]) if value is not None else "n/a"
        out.append(f"| {c['check']} | {shown} | {c['target']} | {c['status']} |")
    out.append("")
    notes = [r for r in runs if r["target"] == "aibox" and r.get("upstream_requests") is not None]
    if notes:
        parts = [
            f"{scenario_name(r)}: {r['upstream_requests']} upstream / {r['wrk']['requests']} client"
            for r in notes
            if r.get("ok")
        ]
        out.append("Upstream requests seen by the fake upstream per aibox run (should match the client count, "
                   "plus at most the in-flight requests wrk abandons at the end): " + "; ".join(parts) + ".")
    if meta.get("aibox_log_lines_count") is not None:
        out.append(
            f"aibox wrote {meta['aibox_log_lines_count']} log lines at level `{meta.get('aibox_log_level')}` during the run"
            + (f" (first: `{meta['aibox_log_first']}`)" if meta.get("aibox_log_first") else "")
            + "."
        )
    for key in ("sanity_direct", "sanity_aibox", "sanity_litellm"):
        if key in meta:
            out.append(f"Sanity check {key.split('_', 1)[1]}: {meta[key]}.")
    return "\n".join(out) + "\n"


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    run_dir, json_out = Path(sys.argv[1]), Path(sys.argv[2])
    meta = load_meta(run_dir / "meta.tsv")
    runs_file = run_dir / "runs.jsonl"
    runs = []
    if runs_file.exists():
        runs = [enrich(json.loads(line)) for line in runs_file.read_text().splitlines() if line.strip()]
    runs.sort(key=lambda r: (TARGET_ORDER.get(r["target"], 9), r["stream"], r["concurrency"]))
    checks = comparisons(runs, meta)
    summary = {
        "schema": "aibox-bench-gateway/1",
        "meta": meta,
        "targets": {
            "added_latency_p50_ms_c1": TARGET_ADDED_P50_MS,
            "added_latency_p99_ms_c1": TARGET_ADDED_P99_MS,
            "rps_vs_direct_c32": TARGET_RPS_VS_DIRECT,
            "rps_vs_litellm_c32": TARGET_RPS_VS_LITELLM,
            "idle_rss_mib": TARGET_IDLE_RSS_MIB,
            "load_rss_mib": TARGET_LOAD_RSS_MIB,
        },
        "runs": runs,
        "checks": [
            {k: (round(v, 4) if isinstance(v, float) else v) for k, v in c.items() if k != "digits"}
            for c in checks
        ],
    }
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(summary, indent=2) + "\n")
    sys.stdout.write(markdown(meta, runs, checks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
