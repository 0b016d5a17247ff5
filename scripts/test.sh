#!/usr/bin/env bash
# Sets up a fresh machine for the tests (scripts/setup.sh test) and runs
# husk's whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
cargo build --all-targets --locked
cargo test --locked -- --test-threads "$(nproc)"
