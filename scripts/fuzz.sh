#!/usr/bin/env bash
# Builds the fuzz targets (fuzz/) and runs each for a bounded time.
#
#   scripts/fuzz.sh [SECONDS]        every target SECONDS long (default 10)
#   scripts/fuzz.sh SECONDS TARGET   one target
#   FUZZ_PROFILE=--dev scripts/fuzz.sh 5   a faster build, unoptimized (CI)
#
# The default build is cargo-fuzz's: optimized, with debug assertions and overflow checks.
#
# cargo-fuzz wants nightly-only flags (-Z sanitizer); the pinned stable toolchain takes them with
# RUSTC_BOOTSTRAP=1, so no second toolchain is needed. New inputs go to fuzz/corpus/<target>
# (not committed); a crash is written to fuzz/artifacts/<target>/ and fails the run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../fuzz"

seconds="${1:-10}"
only="${2:-}"
profile=()
if [[ -n "${FUZZ_PROFILE:-}" ]]; then profile=("$FUZZ_PROFILE"); fi
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: cargo-fuzz is missing: run scripts/setup.sh" >&2
  exit 1
fi

echo "== cargo fuzz build ${profile[*]}"
cargo fuzz build "${profile[@]}"
for target in $(cargo fuzz list); do
  if [[ -n "$only" && "$target" != "$only" ]]; then continue; fi
  echo "== fuzz $target for ${seconds}s"
  mkdir -p "corpus/$target"
  cargo fuzz run "${profile[@]}" "$target" "corpus/$target" seeds/"$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 2>&1 |
    grep -E '^(Done|stat::number_of_executed_units)|panicked|ERROR|SUMMARY|artifact|Test unit written'
done
