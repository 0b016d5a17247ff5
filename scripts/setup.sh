#!/usr/bin/env bash
# Installs what building and testing husk needs on a fresh Debian machine.
set -euo pipefail

need_apt=()
command -v gcc >/dev/null || need_apt+=(gcc libc6-dev)
command -v curl >/dev/null || need_apt+=(curl)
command -v tar >/dev/null || need_apt+=(tar)
command -v openssl >/dev/null || need_apt+=(openssl)
# Root filesystems are built with mkfs.ext4 -d and checked with debugfs.
[[ -x /usr/sbin/mkfs.ext4 && -x /usr/sbin/debugfs ]] || need_apt+=(e2fsprogs)
# The image tests run a real registry on loopback and build images from
# busybox.
[[ -x /usr/bin/docker-registry ]] || need_apt+=(docker-registry)
[[ -x /bin/busybox ]] || need_apt+=(busybox-static)
if ((${#need_apt[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "setup: need root to install: ${need_apt[*]}" >&2
        exit 1
    fi
    # The package mirror can fail for a moment; try a few times.
    for attempt in 1 2 3; do
        if apt-get update -qq &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"; then
            break
        fi
        if ((attempt == 3)); then
            echo "setup: cannot install ${need_apt[*]}" >&2
            exit 1
        fi
        sleep $((attempt * 5))
    done
fi

if ! command -v cargo >/dev/null; then
    echo "setup: cargo (the Rust toolchain) is required" >&2
    exit 1
fi

if [[ ! -r /dev/kvm || ! -w /dev/kvm ]]; then
    echo "setup: warning: /dev/kvm is not usable; tests that boot VMs will be skipped" >&2
fi
