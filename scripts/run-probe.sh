#!/usr/bin/env bash
# Builds husk and boots the embedded probe guest from resources/probe-vm.json.
# Installs only what that needs (scripts/setup.sh run).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh run
cargo build --release --locked
HUSK=${CARGO_TARGET_DIR:-target}/x86_64-unknown-linux-gnu/release/husk
if ! "$HUSK" doctor; then
    echo "run-probe: this host cannot run husk (see the report above)" >&2
    exit 1
fi
# resources/probe-vm.json boots target/probe-guest.elf.
mkdir -p target
"$HUSK" probe-guest --output target/probe-guest.elf
exec "$HUSK" vmm --no-api --config-file resources/probe-vm.json
