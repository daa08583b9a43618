#!/usr/bin/env bash
# Sets up what is missing, then runs every check CI runs: format, lints, all tests, doc tests.
# Tests start their own throwaway redis-server, nats-server and Postgres on loopback.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/setup.sh
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo nextest"
cargo nextest run --workspace --locked --no-fail-fast
echo "== doc tests"
cargo test --workspace --doc --locked --quiet
