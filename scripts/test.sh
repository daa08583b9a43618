#!/usr/bin/env bash
# Sets up what is missing, then runs every check CI runs: format, lints, doc tests, all tests.
# Tests start their own throwaway redis-server, nats-server and Postgres on loopback.
# nextest runs last, so its summary line closes the output.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/setup.sh
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo clippy (the production build: flashsale without the local feature)"
cargo clippy --package flashsale --no-default-features --locked -- -D warnings
echo "== cargo deny (licenses, bans, sources)"
cargo deny --locked check --hide-inclusion-graph licenses bans sources
if cargo deny fetch >/dev/null 2>&1; then
  echo "== cargo deny (advisories)"
  cargo deny --locked check --hide-inclusion-graph advisories
else
  echo "== cargo deny (advisories): SKIPPED, the RustSec database (github.com) cannot be fetched"
fi
echo "== benchmarks build (dev profile: it shares the test build; figures come from \`cargo bench\`)"
cargo build --workspace --benches --locked --quiet
echo "== doc tests"
cargo test --workspace --doc --locked --quiet
echo "== fuzz targets: build, then a few seconds each"
FUZZ_PROFILE=--dev scripts/fuzz.sh 5
echo "== cargo nextest"
cargo nextest run --workspace --locked --no-fail-fast
