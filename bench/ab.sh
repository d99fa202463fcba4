#!/usr/bin/env bash
# A/B of aibox builds on a noisy machine: every build runs at once in front
# of one fake upstream, and short wrk runs alternate between them round by
# round, so that the machine's noise (other guests, other builds) falls on
# all of them alike. Prints, per build, the median over rounds of wrk's p50
# and p99 and of requests per second, and the direct upstream's figures
# measured in the same rounds.
#
#   bench/ab.sh BIN_A BIN_B [BIN_C ...]
#
# Environment: AB_ROUNDS (default 15), AB_SECONDS per run (default 2),
# AB_CONNECTIONS (default 1), AB_STREAM (0 or 1, default 0), AB_RT=1 to run
# the servers and wrk under SCHED_FIFO (root only), TMPDIR for the data
# directories (/dev/shm takes the disk out of the comparison).
# Needs wrk and the release fake upstream (cargo build --release -p fake-upstream).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
(($# >= 1)) || { echo "usage: bench/ab.sh BIN_A [BIN_B ...]" >&2; exit 2; }
ROUNDS=${AB_ROUNDS:-15}
SECS=${AB_SECONDS:-2}
CONC=${AB_CONNECTIONS:-1}
STREAM=${AB_STREAM:-0}
for v in ROUNDS SECS CONC; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "AB_$v must be a positive integer" >&2; exit 2; }
done
[[ $STREAM == 0 || $STREAM == 1 ]] || { echo "AB_STREAM must be 0 or 1" >&2; exit 2; }
FAKE_BIN=${AB_FAKE_BIN:-$ROOT/target/release/fake-upstream}
[[ -x $FAKE_BIN ]] || { echo "$FAKE_BIN missing: cargo build --release -p fake-upstream" >&2; exit 2; }
command -v wrk >/dev/null || { echo "wrk missing (apt-get install wrk)" >&2; exit 2; }
RT=()
if [[ ${AB_RT:-0} == 1 ]]; then RT=(chrt -f 20); fi
MODEL=fake-model
WORK=$(mktemp -d "${TMPDIR:-/tmp}/aibox-ab.XXXXXX")
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# wait_line FILE REGEX: the first line of FILE matching REGEX, within 30 s.
wait_line() {
  for _ in $(seq 1 300); do
    if grep -m1 -E "$2" "$1" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  return 1
}

mkdir -p "$WORK/fake"
"${RT[@]}" "$FAKE_BIN" --listen 127.0.0.1:0 --name fake --models "$MODEL" >"$WORK/fake/out" 2>"$WORK/fake/err" &
PIDS+=($!)
line=$(wait_line "$WORK/fake/out" '^LISTENING ') || { echo "fake upstream did not start" >&2; exit 1; }
FAKE=${line#LISTENING }

URLS=("http://$FAKE/v1/chat/completions")
NAMES=(direct)
i=0
for bin in "$@"; do
  [[ -x $bin ]] || { echo "$bin is not an executable" >&2; exit 2; }
  dir=$WORK/b$i
  mkdir -p "$dir"
  cat >"$dir/config.yaml" <<EOF
server:
  listen: 127.0.0.1:0
  ops_listen: 127.0.0.1:0
  data_dir: ./data
log:
  level: warn
upstreams:
  - name: fake
    base_url: http://$FAKE/v1
models:
  - name: $MODEL
    targets:
      - upstream: fake
EOF
  (cd "$dir" && exec "${RT[@]}" env -i PATH=/usr/local/bin:/usr/bin:/bin HOME="$dir" \
    "$bin" serve --config "$dir/config.yaml" >"$dir/out" 2>"$dir/err") &
  PIDS+=($!)
  line=$(wait_line "$dir/out" '^aibox listening ') || { echo "$bin did not start: $(head -c 2000 "$dir/err")" >&2; exit 1; }
  URLS+=("http://$(sed -E 's/.*main=([^ ]+).*/\1/' <<<"$line")/v1/chat/completions")
  NAMES+=("$bin")
  i=$((i + 1))
done

# ms VALUE: wrk's latency text (us, ms or s) in milliseconds.
ms() {
  awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n = n; else if (v ~ /s$/) n *= 1000; printf "%.3f", n }'
}
threads=$((CONC < 2 ? CONC : 2))
export BENCH_STREAM=$STREAM
for ((r = 1; r <= ROUNDS; r++)); do
  for j in "${!URLS[@]}"; do
    out=$("${RT[@]}" wrk -t"$threads" -c"$CONC" -d"${SECS}s" --latency -s "$ROOT/bench/lua/chat.lua" "${URLS[$j]}" 2>&1) || true
    p50=$(awk '$1 == "50%" { print $2 }' <<<"$out")
    p99=$(awk '$1 == "99%" { print $2 }' <<<"$out")
    rps=$(awk '$1 == "Requests/sec:" { print $2 }' <<<"$out")
    [[ -n $p50 && -n $rps ]] || { echo "wrk gave no result for ${NAMES[$j]}: $out" >&2; exit 1; }
    if grep -qE 'Non-2xx|Socket errors' <<<"$out"; then
      echo "errors against ${NAMES[$j]}: $out" >&2
      exit 1
    fi
    echo "$j $(ms "$p50") $(ms "$p99") $rps" >>"$WORK/results"
  done
done

echo "rounds=$ROUNDS seconds=$SECS connections=$CONC stream=$STREAM (medians over rounds)"
printf '%-40s %10s %10s %10s\n' build "p50 ms" "p99 ms" "req/s"
for j in "${!URLS[@]}"; do
  med() { awk -v j="$j" -v k="$1" '$1 == j { print $k }' "$WORK/results" | sort -g | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
  printf '%-40s %10s %10s %10s\n' "${NAMES[$j]}" "$(med 2)" "$(med 3)" "$(med 4)"
done
