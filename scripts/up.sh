#!/usr/bin/env bash
# Sets up what is missing, builds flashsale in release mode and starts the mesh locally.
# Extra arguments go to `flashsale up` (e.g. --exit).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/setup.sh
cargo build --release --locked -p flashsale
exec target/release/flashsale up "$@"
