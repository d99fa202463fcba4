#!/usr/bin/env bash
# Side-by-side HTTP benchmark of the aibox gateway.
#
# In one run it measures, on the same fake OpenAI-compatible upstream
# (tools/fake-upstream):
#   direct   wrk -> fake upstream
#   aibox    wrk -> aibox serve -> fake upstream
#   litellm  wrk -> LiteLLM proxy -> fake upstream
# for chat completions, non-streaming and streaming, at 1 and 32 connections,
# then prints a markdown report (stdout) and writes a JSON summary to
# bench/results/gateway-<timestamp>.json. See bench/README.md.
#
# Environment:
#   BENCH_SECONDS          seconds per measured run (default 10)
#   BENCH_WARMUP_SECONDS   warm-up before each run, not measured (default 2)
#   BENCH_LITELLM_SECONDS  seconds per LiteLLM run (default: BENCH_SECONDS, at most 5)
#   BENCH_SKIP_LITELLM=1   do not install or run LiteLLM
#   BENCH_LITELLM_SPEC     pip requirement for LiteLLM (default litellm[proxy]==1.82.6)
#   BENCH_SKIP_BUILD=1     use the existing target/release binaries
#   BENCH_AIBOX_BIN        aibox binary to measure (default target/release/aibox), e.g.
#                          to compare two builds; combine with BENCH_SKIP_BUILD=1
#   BENCH_AIBOX_LOG_LEVEL  aibox log.level (default warn)
#   BENCH_AIBOX_GUARDRAIL=off  run aibox with the guardrail switched off (a
#                          constitution with `enabled: false`); the default is
#                          the built-in standard profile on every turn, so two
#                          runs give the guardrail's cost
#   BENCH_AIBOX_AUTH=apikey  run aibox with auth.enabled and a gateway API key
#                          (created with `aibox apikey create`) on every request
#   BENCH_CONCURRENCIES   connection counts to run (default "1 32")
#   BENCH_STREAM_MODES     0 = non-streamed, 1 = streamed (default "0 1")
#   BENCH_WAIT_QUIET=N     before each run, wait up to N s for other load to drop
#   BENCH_KEEP_TMP=1       keep the temporary directory (configs, logs, wrk output)
#   BENCH_PYTHON           python used for the LiteLLM venv and the report (default python3)
#   BENCH_RT=1             run the servers and wrk under SCHED_FIFO (chrt -f 20, root
#                          only) so that other work on a shared machine cannot
#                          preempt them; every target gets the same treatment
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)

SECONDS_RUN=${BENCH_SECONDS:-10}
WARMUP=${BENCH_WARMUP_SECONDS:-2}
if [[ -n ${BENCH_LITELLM_SECONDS:-} ]]; then
  LITELLM_SECONDS=$BENCH_LITELLM_SECONDS
elif ((SECONDS_RUN > 5)); then
  LITELLM_SECONDS=5
else
  LITELLM_SECONDS=$SECONDS_RUN
fi
SKIP_LITELLM=${BENCH_SKIP_LITELLM:-0}
SKIP_BUILD=${BENCH_SKIP_BUILD:-0}
# Pinned by default: litellm 1.82.7 and 1.82.8 on PyPI were malicious
# (March 2026 supply-chain incident) and 1.82.6 is the last release widely
# verified clean. Override to benchmark another release.
LITELLM_SPEC=${BENCH_LITELLM_SPEC:-'litellm[proxy]==1.82.6'}
AIBOX_LOG_LEVEL=${BENCH_AIBOX_LOG_LEVEL:-warn}
AIBOX_AUTH=${BENCH_AIBOX_AUTH:-off}
AIBOX_GUARDRAIL=${BENCH_AIBOX_GUARDRAIL:-on}
case $AIBOX_GUARDRAIL in on | off) ;; *) echo "BENCH_AIBOX_GUARDRAIL must be on or off" >&2; exit 2 ;; esac
case $AIBOX_AUTH in off | apikey) ;; *) echo "BENCH_AIBOX_AUTH must be off or apikey" >&2; exit 2 ;; esac
export BENCH_BEARER=bench-dummy-key
PYTHON=${BENCH_PYTHON:-python3}
read -r -a CONCURRENCIES <<<"${BENCH_CONCURRENCIES:-1 32}"
read -r -a STREAM_MODES <<<"${BENCH_STREAM_MODES:-0 1}"
for c in "${CONCURRENCIES[@]}"; do [[ $c =~ ^[1-9][0-9]*$ ]] || { echo "BENCH_CONCURRENCIES must list positive integers, got '$c'" >&2; exit 2; }; done
for m in "${STREAM_MODES[@]}"; do [[ $m == 0 || $m == 1 ]] || { echo "BENCH_STREAM_MODES must list 0 (plain) and/or 1 (streamed), got '$m'" >&2; exit 2; }; done
WRK_TIMEOUT=10s
MODEL=fake-model

for v in SECONDS_RUN WARMUP LITELLM_SECONDS; do
  if ! [[ ${!v} =~ ^[1-9][0-9]*$ ]]; then
    echo "bench: ${v} must be a positive whole number of seconds (got '${!v}')" >&2
    exit 2
  fi
done

TS=$(date -u +%Y%m%dT%H%M%SZ)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/aibox-bench.XXXXXX")
META=$WORK/meta.tsv
RUNS=$WORK/runs.jsonl
: >"$META"
: >"$RUNS"
CLK_TCK=$(getconf CLK_TCK)

# BENCH_RT=1: SCHED_FIFO for every server and load generator (see above).
RT_PREFIX=()
if [[ ${BENCH_RT:-0} == 1 ]]; then
  chrt -f 20 true 2>/dev/null || { echo "bench: BENCH_RT=1 needs chrt and root (SCHED_FIFO)" >&2; exit 2; }
  RT_PREFIX=(chrt -f 20)
fi

SERVER_PIDS=()
SAMPLER_PID=
WRK_PID=
FAKE_PID=
AIBOX_PID=
LITELLM_PID=

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
  log "ERROR: $*"
  exit 1
}

# meta KEY VALUE: one line of run metadata for report.py.
meta() {
  local value=${2//$'\t'/ }
  value=${value//$'\n'/ }
  printf '%s\t%s\n' "$1" "$value" >>"$META"
}

# stop_group PID: TERM the process group led by PID (servers are started with
# setsid, so this reaches their children too), then KILL after 5 s.
stop_group() {
  local pid=$1 i
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local rc=$? pid
  trap - EXIT INT TERM
  if [[ -n $WRK_PID ]]; then
    kill -TERM "$WRK_PID" 2>/dev/null || true
    wait "$WRK_PID" 2>/dev/null || true
  fi
  if [[ -n $SAMPLER_PID ]]; then
    kill "$SAMPLER_PID" 2>/dev/null || true
    wait "$SAMPLER_PID" 2>/dev/null || true
  fi
  for pid in "${SERVER_PIDS[@]}"; do
    stop_group "$pid"
  done
  if [[ ${BENCH_KEEP_TMP:-0} == 1 || $rc -ne 0 ]]; then
    log "temporary files kept in $WORK"
  else
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- tools -----------------------------------------------------------------

apt_install() {
  local sudo=()
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || die "need root or sudo to apt-get install $*"
    sudo=(sudo)
  fi
  log "installing $* with apt-get"
  timeout 600 "${sudo[@]}" apt-get update -qq || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive timeout 900 "${sudo[@]}" apt-get install -y -qq "$@" >/dev/null ||
    die "apt-get install $* failed"
}

ensure_tools() {
  local missing=()
  command -v wrk >/dev/null || missing+=(wrk)
  command -v curl >/dev/null || missing+=(curl)
  command -v "$PYTHON" >/dev/null || missing+=(python3)
  if ((${#missing[@]})); then
    apt_install "${missing[@]}"
  fi
  if [[ $PYTHON != python3 ]] && ! command -v "$PYTHON" >/dev/null; then
    die "BENCH_PYTHON=$PYTHON not found"
  fi
}

build() {
  if [[ $SKIP_BUILD == 1 ]]; then
    log "BENCH_SKIP_BUILD=1: using existing release binaries"
  else
    command -v cargo >/dev/null || die "cargo not found; install Rust or set BENCH_SKIP_BUILD=1 with prebuilt binaries"
    log "building release binaries (cargo waits if another build holds the lock)"
    (cd "$ROOT" && timeout 3600 cargo build --release --quiet -p aibox -p fake-upstream) ||
      die "cargo build --release -p aibox -p fake-upstream failed"
  fi
  AIBOX_BIN=${BENCH_AIBOX_BIN:-$ROOT/target/release/aibox}
  FAKE_BIN=${BENCH_FAKE_BIN:-$ROOT/target/release/fake-upstream}
  [[ -x $AIBOX_BIN ]] || die "$AIBOX_BIN missing"
  [[ -x $FAKE_BIN ]] || die "$FAKE_BIN missing"
}

# --- processes and /proc ---------------------------------------------------

# start_server NAME DIR CMD...: starts CMD in its own session (so the whole
# tree can be stopped) with a minimal environment, stdout to DIR/NAME.out
# and stderr to DIR/NAME.err; sets STARTED_PID.
start_server() {
  local name=$1 dir=$2
  shift 2
  (cd "$dir" && exec "${RT_PREFIX[@]}" setsid env -i PATH="/usr/local/bin:/usr/bin:/bin" HOME="$dir" LANG=C.UTF-8 "$@" \
    >"$WORK/$name.out" 2>"$WORK/$name.err" </dev/null) &
  STARTED_PID=$!
  SERVER_PIDS+=("$STARTED_PID")
}

# wait_line FILE REGEX SECONDS PID: waits until FILE has a line matching REGEX
# and prints it; fails if PID exits or time runs out.
wait_line() {
  local file=$1 re=$2 secs=$3 pid=$4 i line
  for ((i = 0; i < secs * 10; i++)); do
    line=$(grep -m1 -E "$re" "$file" 2>/dev/null || true)
    if [[ -n $line ]]; then
      printf '%s\n' "$line"
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

# rss_kb PID: VmRSS in kB (0 if gone).
rss_kb() {
  local k v _
  while read -r k v _; do
    if [[ $k == VmRSS: ]]; then
      printf '%s\n' "$v"
      return 0
    fi
  done 2>/dev/null <"/proc/$1/status" || true
  printf '0\n'
}

# tree_pids ROOT: ROOT and all its descendants, from /proc.
tree_pids() {
  local -A kids=()
  local st line rest pid
  local -a f
  for st in /proc/[0-9]*/stat; do
    { read -r line <"$st"; } 2>/dev/null || continue
    rest=${line##*) }
    read -ra f <<<"$rest"
    pid=${st#/proc/}
    pid=${pid%/stat}
    kids[${f[1]}]+=" $pid"
  done
  local -a queue=("$1") out=()
  while ((${#queue[@]})); do
    pid=${queue[0]}
    queue=("${queue[@]:1}")
    out+=("$pid")
    # shellcheck disable=SC2206 # word splitting of the pid list is intended
    [[ -n ${kids[$pid]:-} ]] && queue+=(${kids[$pid]})
  done
  printf '%s\n' "${out[@]}"
}

# rss_tree_kb ROOT: summed VmRSS of ROOT's process tree.
rss_tree_kb() {
  local total=0 p
  local -a pids
  mapfile -t pids < <(tree_pids "$1")
  for p in "${pids[@]}"; do
    total=$((total + $(rss_kb "$p")))
  done
  printf '%s\n' "$total"
}

# cpu_ticks PID...: summed utime+stime of the processes, in clock ticks.
cpu_ticks() {
  local total=0 p line rest
  local -a f
  for p in "$@"; do
    { read -r line <"/proc/$p/stat"; } 2>/dev/null || continue
    rest=${line##*) }
    read -ra f <<<"$rest"
    total=$((total + f[11] + f[12]))
  done
  printf '%s\n' "$total"
}

# cpu_ticks_with_children PID: utime+stime+cutime+cstime of one process.
cpu_ticks_with_children() {
  local line rest
  local -a f
  { read -r line <"/proc/$1/stat"; } 2>/dev/null || {
    printf '0\n'
    return 0
  }
  rest=${line##*) }
  read -ra f <<<"$rest"
  printf '%s\n' "$((f[11] + f[12] + f[13] + f[14]))"
}

# sys_busy_ticks: non-idle CPU time of the whole machine (all cores), from
# /proc/stat, without steal. sys_steal_ticks: time the hypervisor ran other
# guests while this machine's CPUs had work (the machine is oversubscribed).
sys_busy_ticks() {
  local _cpu user nice system idle iowait irq softirq steal _rest
  read -r _cpu user nice system idle iowait irq softirq steal _rest </proc/stat
  printf '%s\n' "$((user + nice + system + irq + softirq))"
}
sys_steal_ticks() {
  local _cpu user nice system idle iowait irq softirq steal _rest
  read -r _cpu user nice system idle iowait irq softirq steal _rest </proc/stat
  printf '%s\n' "$steal"
}

# children_ticks FILE: the waited-for children's user+system time from the
# output of the `times` builtin (second line, "XmY.YYYs XmY.YYYs"), in ticks.
children_ticks() {
  awk -v tck="$CLK_TCK" 'NR == 2 {
    t = 0
    for (i = 1; i <= 2; i++) { split($i, a, "m"); sub("s", "", a[2]); t += a[1] * 60 + a[2] }
    printf "%d\n", t * tck + 0.5
  }' "$1"
}

# sampler ROOT TREE OUT: writes to OUT the peak RSS (kB) of ROOT (or of its
# process tree when TREE=1), sampled every 100 ms until terminated.
sampler() {
  local root=$1 tree=$2 out=$3 peak=0 cur n=0 p
  local -a pids=("$root")
  trap 'printf "%s\n" "$peak" >"$out"; exit 0' TERM
  while :; do
    if [[ $tree == 1 ]] && ((n % 10 == 0)); then
      mapfile -t pids < <(tree_pids "$root")
    fi
    cur=0
    for p in "${pids[@]}"; do
      cur=$((cur + $(rss_kb "$p")))
    done
    ((cur > peak)) && peak=$cur
    n=$((n + 1))
    sleep 0.1
  done
}

# --- load runs -------------------------------------------------------------

# wait_quiet: with BENCH_WAIT_QUIET=N, waits up to N seconds until the machine
# (whose servers are idle at this point) is busy less than 15% of one core.
wait_quiet() {
  local limit=${BENCH_WAIT_QUIET:-0} waited=0 b0 b1 pct
  ((limit > 0)) || return 0
  while :; do
    b0=$(($(sys_busy_ticks) + $(sys_steal_ticks)))
    sleep 1
    b1=$(($(sys_busy_ticks) + $(sys_steal_ticks)))
    pct=$(((b1 - b0) * 100 / CLK_TCK))
    ((pct <= 15)) && return 0
    waited=$((waited + 1))
    if ((waited >= limit)); then
      log "machine still busy (${pct}% of a core used by others or stolen by the hypervisor) after ${limit}s; measuring anyway"
      return 0
    fi
  done
}

# audit_buckets: aibox's audit append histogram (cumulative bucket counts by
# upper bound, as JSON), read from its ops listener; `null` if unavailable.
# The difference of two readings is the wait of the turns in between for
# their durable audit record (issue 4's "audit write" figure).
audit_buckets() {
  local text
  text=$(curl -fsS --max-time 5 "http://$AIBOX_OPS/metrics" 2>/dev/null) || { echo null; return; }
  awk 'BEGIN { printf "{" }
       /^aibox_audit_append_duration_seconds_bucket\{le="/ {
         match($0, /le="[^"]+"/); le = substr($0, RSTART + 4, RLENGTH - 5)
         printf "%s\"%s\":%s", (n++ ? "," : ""), le, $NF }
       END { printf "}" }' <<<"$text"
}

fake_requests() {
  curl -fsS --max-time 5 "http://$FAKE_ADDR/_stats" 2>/dev/null | grep -o '"requests":[0-9]*' | cut -d: -f2 || true
}

# run_wrk OUT STREAM SECONDS WRK_ARGS...: runs wrk (bounded by timeout) in the
# background and waits for it, so that a signal to this script interrupts the
# run at once (cleanup stops wrk).
run_wrk() {
  local out=$1 stream=$2 secs=$3 rc=0
  shift 3
  BENCH_MODEL=$MODEL BENCH_STREAM=$stream timeout $((secs + 30)) "$@" >"$out" 2>&1 &
  WRK_PID=$!
  wait "$WRK_PID" || rc=$?
  WRK_PID=
  return "$rc"
}

# run_one TARGET BASE_URL CONC STREAM SECONDS SERVER_PID TREE
run_one() {
  local target=$1 base=$2 conc=$3 stream=$4 secs=$5 spid=$6 tree=$7
  local threads=$((conc < 2 ? conc : 2))
  local url=$base/chat/completions
  local label="$target c=$conc stream=$stream"
  local out=$WORK/wrk-$target-c$conc-s$stream.txt
  local -a wrk_cmd=("${RT_PREFIX[@]}" wrk -t"$threads" -c"$conc" --timeout "$WRK_TIMEOUT" --latency -s "$BENCH_DIR/lua/chat.lua")

  wait_quiet
  log "$label: warm-up ${WARMUP}s"
  run_wrk "$out.warmup" "$stream" "$WARMUP" "${wrk_cmd[@]}" -d"${WARMUP}s" "$url" ||
    log "$label: warm-up wrk exited non-zero"

  local -a pids=("$spid")
  if [[ $tree == 1 ]]; then mapfile -t pids < <(tree_pids "$spid"); fi
  # The fake upstream works for every target: count it among "our" CPU.
  local -a own=("${pids[@]}")
  [[ $spid != "$FAKE_PID" ]] && own+=("$FAKE_PID")
  local peak_file=$WORK/peak-$target-c$conc-s$stream
  sampler "$spid" "$tree" "$peak_file" &
  SAMPLER_PID=$!
  local up0 up1 cpu0 cpu1 own0 own1 sys0 sys1 st0 st1 kids0 kids1 t0 t1 samp
  up0=$(fake_requests)
  local audit0=null audit1=null
  [[ $target == aibox ]] && audit0=$(audit_buckets)
  log "$label: measuring ${secs}s"
  local wrk_rc=0
  times >"$WORK/times0"
  t0=$(date +%s%N)
  sys0=$(sys_busy_ticks)
  st0=$(sys_steal_ticks)
  cpu0=$(cpu_ticks "${pids[@]}")
  own0=$(cpu_ticks "${own[@]}")
  run_wrk "$out" "$stream" "$secs" "${wrk_cmd[@]}" -d"${secs}s" "$url" || wrk_rc=$?
  times >"$WORK/times1"
  cpu1=$(cpu_ticks "${pids[@]}")
  own1=$(cpu_ticks "${own[@]}")
  samp=$(cpu_ticks_with_children "$SAMPLER_PID")
  sys1=$(sys_busy_ticks)
  st1=$(sys_steal_ticks)
  t1=$(date +%s%N)
  up1=$(fake_requests)
  [[ $target == aibox ]] && audit1=$(audit_buckets)
  kill -TERM "$SAMPLER_PID" 2>/dev/null || true
  wait "$SAMPLER_PID" 2>/dev/null || true
  SAMPLER_PID=
  local peak
  peak=$(cat "$peak_file" 2>/dev/null || echo null)
  # CPU of waited-for children (wrk via timeout) between the two snapshots.
  kids0=$(children_ticks "$WORK/times0")
  kids1=$(children_ticks "$WORK/times1")
  local own_ticks=$((own1 - own0 + kids1 - kids0 + samp))
  local window_ms=$(((t1 - t0) / 1000000))

  local wrk_json upstream=null
  wrk_json=$(grep -m1 '^BENCH_JSON ' "$out" | cut -d' ' -f2- || true)
  if [[ -n $up0 && -n $up1 ]]; then upstream=$((up1 - up0)); fi
  local stream_json=false
  [[ $stream == 1 ]] && stream_json=true
  if [[ -z $wrk_json ]]; then
    log "$label: wrk produced no result (exit $wrk_rc); output in $out:"
    sed 's/^/    /' "$out" >&2 || true
    printf '{"target":"%s","concurrency":%d,"stream":%s,"seconds":%d,"error":"wrk exit %d, no result"}\n' \
      "$target" "$conc" "$stream_json" "$secs" "$wrk_rc" >>"$RUNS"
    return 0
  fi
  printf '{"target":"%s","concurrency":%d,"stream":%s,"seconds":%d,"warmup_seconds":%d,"threads":%d,"peak_rss_kb":%s,"cpu_ticks":%d,"clk_tck":%d,"window_ms":%d,"system_busy_ticks":%d,"steal_ticks":%d,"own_ticks":%d,"upstream_requests":%s,"audit_buckets_before":%s,"audit_buckets_after":%s,"wrk":%s}\n' \
    "$target" "$conc" "$stream_json" "$secs" "$WARMUP" "$threads" "$peak" "$((cpu1 - cpu0))" "$CLK_TCK" \
    "$window_ms" "$((sys1 - sys0))" "$((st1 - st0))" "$own_ticks" "$upstream" "$audit0" "$audit1" "$wrk_json" >>"$RUNS"
  # Keep wrk's own --latency report visible in the log.
  grep -E '^\s+(Latency|Req/Sec)|^\s+(50|99)%|requests in|Requests/sec|Socket errors|Non-2xx' "$out" |
    sed "s/^/    [$label] /" >&2 || true
}

# sanity TARGET BASE_URL: one plain and one streamed request with curl, so a
# target that answers fast with errors or empty bodies is noticed.
sanity() {
  local target=$1 base=$2 body plain streamed result=
  body='{"model":"'$MODEL'","messages":[{"role":"user","content":"sanity check"}]}'
  plain=$(curl -sS --max-time 30 -H 'Content-Type: application/json' -H "Authorization: Bearer $BENCH_BEARER" -d "$body" "$base/chat/completions" 2>&1 || true)
  streamed=$(curl -sS -N --max-time 30 -H 'Content-Type: application/json' -H "Authorization: Bearer $BENCH_BEARER" \
    -d "${body%\}},\"stream\":true}" "$base/chat/completions" 2>&1 || true)
  if [[ $plain != *'"choices"'* || $plain != *'sanity check'* ]]; then
    result="non-stream reply unexpected: ${plain:0:300}"
  fi
  if [[ $streamed != *'data: [DONE]'* || $streamed != *'"delta"'* ]]; then
    result="${result:+$result; }stream reply unexpected: ${streamed:0:300}"
  fi
  result=${result:-ok}
  meta "sanity_$target" "$result"
  [[ $result == ok ]] || log "sanity check of $target: $result"
  printf '%s\n' "$plain" >"$WORK/sanity-$target-plain.json"
  printf '%s\n' "$streamed" >"$WORK/sanity-$target-stream.txt"
}

run_target() {
  local target=$1 base=$2 secs=$3 spid=$4 tree=$5 conc stream
  sanity "$target" "$base"
  for stream in "${STREAM_MODES[@]}"; do
    for conc in "${CONCURRENCIES[@]}"; do
      kill -0 "$spid" 2>/dev/null || die "$target (pid $spid) exited; logs in $WORK"
      run_one "$target" "$base" "$conc" "$stream" "$secs" "$spid" "$tree"
    done
  done
}

# --- servers ---------------------------------------------------------------

start_fake() {
  mkdir -p "$WORK/fake"
  start_server fake "$WORK/fake" "$FAKE_BIN" --listen 127.0.0.1:0 --name fake --models "$MODEL"
  FAKE_PID=$STARTED_PID
  local line
  line=$(wait_line "$WORK/fake.out" '^LISTENING ' 20 "$FAKE_PID") ||
    die "fake-upstream did not start; stderr: $(head -c 2000 "$WORK/fake.err")"
  FAKE_ADDR=${line#LISTENING }
  [[ $FAKE_ADDR == 127.0.0.1:* ]] || die "fake-upstream listens on unexpected address $FAKE_ADDR"
  log "fake upstream at $FAKE_ADDR (pid $FAKE_PID)"
  sleep 1
  meta fake_idle_rss_kb "$(rss_kb "$FAKE_PID")"
}

start_aibox() {
  local dir=$WORK/aibox
  mkdir -p "$dir"
  cat >"$dir/config.yaml" <<EOF
server:
  listen: 127.0.0.1:0
  ops_listen: 127.0.0.1:0
  data_dir: ./data
log:
  level: $AIBOX_LOG_LEVEL
upstreams:
  - name: fake
    base_url: http://$FAKE_ADDR/v1
models:
  - name: $MODEL
    targets:
      - upstream: fake
EOF
  if [[ $AIBOX_AUTH == apikey ]]; then
    printf 'auth:\n  enabled: true\n  api_keys: true\n' >>"$dir/config.yaml"
    BENCH_BEARER=$(cd "$dir" && env -i PATH="/usr/local/bin:/usr/bin:/bin" HOME="$dir" \
      "$AIBOX_BIN" apikey create --tenant bench --user bench --config "$dir/config.yaml" 2>>"$WORK/aibox.err") ||
      die "cannot create the benchmark API key; stderr: $(head -c 2000 "$WORK/aibox.err")"
    export BENCH_BEARER
  fi
  local guard=()
  if [[ $AIBOX_GUARDRAIL == off ]]; then
    printf 'enabled: false\n' >"$dir/constitution.yaml"
    guard=(AIBOX_CONSTITUTION="$dir/constitution.yaml")
  fi
  start_server aibox "$dir" env "${guard[@]}" "$AIBOX_BIN" serve --config "$dir/config.yaml"
  AIBOX_PID=$STARTED_PID
  local line
  line=$(wait_line "$WORK/aibox.out" '^aibox listening ' 30 "$AIBOX_PID") ||
    die "aibox did not start; stderr: $(head -c 3000 "$WORK/aibox.err")"
  AIBOX_ADDR=$(sed -E 's/.*main=([^ ]+).*/\1/' <<<"$line")
  AIBOX_OPS=$(sed -E 's/.*ops=([^ ]+).*/\1/' <<<"$line")
  log "aibox at $AIBOX_ADDR, ops $AIBOX_OPS (pid $AIBOX_PID, log level $AIBOX_LOG_LEVEL)"
  sleep 1
  meta aibox_idle_rss_kb "$(rss_kb "$AIBOX_PID")"
}

# setup_litellm: creates bench/.venv and installs LiteLLM there (once per
# spec). Returns non-zero with LITELLM_WHY set on failure; never exits.
setup_litellm() {
  local venv=$BENCH_DIR/.venv
  LITELLM_BIN=$venv/bin/litellm
  if [[ -x $LITELLM_BIN && -f $venv/.bench-spec && $(cat "$venv/.bench-spec") == "$LITELLM_SPEC" ]]; then
    log "LiteLLM already installed in $venv ($LITELLM_SPEC)"
  else
    log "installing $LITELLM_SPEC into $venv (a few minutes the first time)"
    if [[ ! -x $venv/bin/pip ]]; then
      if ! "$PYTHON" -m venv "$venv" >"$WORK/venv.log" 2>&1; then
        rm -rf "$venv"
        if command -v apt-get >/dev/null && [[ $(id -u) -eq 0 ]]; then
          local pyver
          pyver=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
          DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq "python${pyver}-venv" >/dev/null 2>&1 ||
            DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq python3-venv >/dev/null 2>&1 || true
        fi
        if ! "$PYTHON" -m venv "$venv" >"$WORK/venv.log" 2>&1; then
          LITELLM_WHY="cannot create a Python venv: $(tail -n 3 "$WORK/venv.log")"
          return 1
        fi
      fi
    fi
    if ! timeout 1200 "$venv/bin/pip" install --disable-pip-version-check -q "$LITELLM_SPEC" >"$WORK/pip.log" 2>&1; then
      LITELLM_WHY="pip install '$LITELLM_SPEC' failed: $(tail -n 5 "$WORK/pip.log")"
      return 1
    fi
    printf '%s\n' "$LITELLM_SPEC" >"$venv/.bench-spec"
  fi
  # Refuse the build whose litellm_init.pth stole credentials at start-up.
  if compgen -G "$venv/lib/python*/site-packages/litellm_init.pth" >/dev/null; then
    LITELLM_WHY="$venv contains litellm_init.pth (the known-malicious 1.82.8 payload); delete $venv and rerun"
    return 1
  fi
  [[ -x $LITELLM_BIN ]] || {
    LITELLM_WHY="$LITELLM_BIN missing after install"
    return 1
  }
  LITELLM_VERSION=$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("litellm"))' 2>/dev/null || echo '?')
  return 0
}

# start_litellm: returns non-zero with LITELLM_WHY set on failure.
start_litellm() {
  local dir=$WORK/litellm port i
  mkdir -p "$dir"
  port=$("$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  cat >"$dir/config.yaml" <<EOF
model_list:
  - model_name: $MODEL
    litellm_params:
      model: openai/$MODEL
      api_base: http://$FAKE_ADDR/v1
      api_key: dummy
litellm_settings:
  telemetry: false
  set_verbose: false
EOF
  # env -i (in start_server): LiteLLM sees no credentials from this shell.
  # LITELLM_LOCAL_MODEL_COST_MAP avoids fetching the price list from the
  # network at start-up; LITELLM_LOG=ERROR keeps per-request logging off.
  start_server litellm "$dir" env LITELLM_LOCAL_MODEL_COST_MAP=True LITELLM_LOG=ERROR \
    "$LITELLM_BIN" --config "$dir/config.yaml" --host 127.0.0.1 --port "$port" --num_workers 1 --telemetry False
  LITELLM_PID=$STARTED_PID
  LITELLM_ADDR=127.0.0.1:$port
  for ((i = 0; i < 1200; i++)); do
    if curl -fsS --max-time 2 "http://$LITELLM_ADDR/health/liveliness" >/dev/null 2>&1; then
      log "LiteLLM $LITELLM_VERSION at $LITELLM_ADDR (pid $LITELLM_PID), ready after $((i / 10)) s"
      sleep 1
      meta litellm_idle_rss_kb "$(rss_tree_kb "$LITELLM_PID")"
      return 0
    fi
    if ! kill -0 "$LITELLM_PID" 2>/dev/null; then
      LITELLM_WHY="litellm exited during start-up: $(tail -q -n 8 "$WORK/litellm.err" "$WORK/litellm.out" 2>/dev/null | tr '\n' ' ' | head -c 1500)"
      return 1
    fi
    sleep 0.1
  done
  LITELLM_WHY="litellm not ready on /health/liveliness after 120 s: $(tail -n 5 "$WORK/litellm.err" | tr '\n' ' ' | head -c 1000)"
  stop_group "$LITELLM_PID"
  return 1
}

# --- main ------------------------------------------------------------------

main() {
  ensure_tools
  build

  meta timestamp "$TS"
  meta loadavg_start "$(cut -d' ' -f1-3 /proc/loadavg)"
  meta bench_seconds "$SECONDS_RUN"
  meta sched "$([[ ${BENCH_RT:-0} == 1 ]] && echo 'SCHED_FIFO 20 (BENCH_RT=1)' || echo 'normal')"
  meta warmup_seconds "$WARMUP"
  meta nproc_cores "$(nproc)"
  meta kernel "$(uname -r)"
  meta cpu_model "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || echo unknown)"
  meta wrk_version "$(wrk -v 2>&1 | head -n1 | awk '{print $2}' || true)"
  meta aibox_version "$("$AIBOX_BIN" --version 2>/dev/null | head -n1 || echo '?')"
  meta fake_upstream_version "$("$FAKE_BIN" --version 2>/dev/null | head -n1 || echo '?')"
  meta git_rev "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" diff --quiet HEAD -- crates tools 2>/dev/null || echo '+dirty')"
  meta aibox_log_level "$AIBOX_LOG_LEVEL"
  meta aibox_auth "$AIBOX_AUTH"
  meta aibox_guardrail "$AIBOX_GUARDRAIL"
  meta aibox_bin "${AIBOX_BIN#"$ROOT"/}"

  local litellm_ok=0
  LITELLM_WHY=
  LITELLM_VERSION='?'
  if [[ $SKIP_LITELLM == 1 ]]; then
    meta litellm_status "skipped on purpose (BENCH_SKIP_LITELLM=1)"
  elif setup_litellm; then
    litellm_ok=1
  else
    log "LiteLLM unavailable: $LITELLM_WHY"
    meta litellm_status "NOT RUN: could not be installed: $LITELLM_WHY"
  fi

  start_fake
  run_target direct "http://$FAKE_ADDR/v1" "$SECONDS_RUN" "$FAKE_PID" 0

  start_aibox
  run_target aibox "http://$AIBOX_ADDR/v1" "$SECONDS_RUN" "$AIBOX_PID" 0
  sleep 2
  meta aibox_after_load_rss_kb "$(rss_kb "$AIBOX_PID")"
  meta aibox_log_lines_count "$(wc -l <"$WORK/aibox.err")"
  meta aibox_log_first "$(head -n1 "$WORK/aibox.err" | cut -c1-300)"
  stop_group "$AIBOX_PID"

  if ((litellm_ok)); then
    if start_litellm; then
      meta litellm_status ok
      meta litellm_version "$LITELLM_VERSION"
      meta litellm_seconds "$LITELLM_SECONDS"
      meta litellm_tuning "telemetry off (--telemetry False, litellm_settings.telemetry false), LITELLM_LOG=ERROR, local model cost map, no database, no master key"
      run_target litellm "http://$LITELLM_ADDR/v1" "$LITELLM_SECONDS" "$LITELLM_PID" 1
      stop_group "$LITELLM_PID"
    else
      log "LiteLLM did not start: $LITELLM_WHY"
      meta litellm_status "NOT RUN: installed ($LITELLM_VERSION) but did not start: $LITELLM_WHY"
    fi
  fi

  mkdir -p "$BENCH_DIR/results"
  local json=$BENCH_DIR/results/gateway-$TS.json
  "$PYTHON" "$BENCH_DIR/report.py" "$WORK" "$json"
  log "JSON summary: ${json#"$ROOT"/}"
}

main "$@"
