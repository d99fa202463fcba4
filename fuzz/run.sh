#!/usr/bin/env bash
# Runs the fuzz targets one after the other, each for SECONDS (default 600),
# at the lowest CPU priority, and keeps libFuzzer's output in fuzz/logs/.
#
#   fuzz/run.sh [SECONDS] [TARGET...]     # all targets when none is named
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`) and a nightly
# toolchain (`rustup toolchain install nightly`); set FUZZ_TOOLCHAIN to use
# another one. The seeds are written by seeds.py from the repository's test
# tables; what the fuzzer learns accumulates in fuzz/corpus/TARGET, and a
# crash is saved in fuzz/artifacts/TARGET.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-600}
shift || true
toolchain=${FUZZ_TOOLCHAIN:-nightly}
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
  mapfile -t targets < <(cargo "+$toolchain" fuzz list)
fi
python3 seeds.py >/dev/null
mkdir -p logs
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  # -s none: every aibox crate forbids unsafe code, so the fuzzers look for
  # panics, overflows (-a: debug assertions on), hangs and runaway memory,
  # which need no sanitizer; without one they run several times faster.
  nice -n 19 cargo "+$toolchain" fuzz run -s none -a "$t" "corpus/$t" "seeds/$t" -- \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    >"logs/$t.log" 2>&1 || { echo "$t: FAILED, see fuzz/logs/$t.log and fuzz/artifacts/$t" >&2; continue; }
  echo "$t: $(grep -E '^stat::number_of_executed_units' "logs/$t.log" | awk '{print $2}') executions," \
    "cov $(grep -oE 'cov: [0-9]+' "logs/$t.log" | tail -n1 | cut -d' ' -f2)," \
    "ft $(grep -oE 'ft: [0-9]+' "logs/$t.log" | tail -n1 | cut -d' ' -f2)"
done
