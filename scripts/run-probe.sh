#!/usr/bin/env bash
# Builds husk and boots the embedded probe guest from resources/probe-vm.json.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --locked
./target/release/husk doctor || true
./target/release/husk probe-guest --output target/probe-guest.elf
exec ./target/release/husk vmm --no-api --config-file resources/probe-vm.json
