#!/usr/bin/env bash
# Sets up a fresh machine and runs husk's whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --all-targets --locked
cargo test --locked -- --test-threads "$(nproc)"
