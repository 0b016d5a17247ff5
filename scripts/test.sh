#!/usr/bin/env bash
# Sets up a fresh machine for the tests (scripts/setup.sh test), builds the
# guest kernel (cached: later runs cost nothing) and runs husk's whole test
# suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
# The guest kernel for the tests that boot real Linux under QEMU
# (tests/guest_kernel.rs). Its last line on stdout is its path; a failed
# build fails the run.
if ! kernel_out=$(resources/guest-kernel/build.sh); then
    echo "test: building the guest kernel failed" >&2
    exit 1
fi
HUSK_GUEST_KERNEL=$(tail -n 1 <<<"$kernel_out")
if [[ ! -f $HUSK_GUEST_KERNEL ]]; then
    echo "test: the guest kernel build printed no kernel path" >&2
    exit 1
fi
export HUSK_GUEST_KERNEL
# Everything for the QEMU tests is installed now: they must run, not skip.
export HUSK_REQUIRE_QEMU=1
cargo build --all-targets --locked --features test-hooks
cargo test --locked --features test-hooks -- --test-threads "$(nproc)"
