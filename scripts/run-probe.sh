#!/usr/bin/env bash
# Builds husk and boots the embedded probe guest from resources/probe-vm.json.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --locked
HUSK=target/x86_64-unknown-linux-gnu/release/husk
"$HUSK" doctor || true
"$HUSK" probe-guest --output target/probe-guest.elf
exec "$HUSK" vmm --no-api --config-file resources/probe-vm.json
