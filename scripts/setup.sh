#!/usr/bin/env bash
# Installs what husk needs on a fresh Debian machine, and nothing more.
#
#   scripts/setup.sh run        to build husk and boot the probe guest: a C
#                               toolchain (gcc, libc6-dev) besides cargo
#   scripts/setup.sh container  also what running a container needs:
#                               e2fsprogs (root filesystems and volumes),
#                               busybox-static (the demo image),
#                               nftables and iproute2 (container networks),
#                               and virtiofsd (bind mounts; cargo install,
#                               which builds against libseccomp and
#                               libcap-ng)
#   scripts/setup.sh fallback   also the software-emulation backend, for
#                               hosts whose KVM cannot run the guest kernel:
#                               qemu-system-x86 (its microvm machine) and
#                               the vsock backend vhost-device-vsock (cargo
#                               install)
#   scripts/setup.sh test       all of the above, and what the test suite
#                               uses besides: docker-registry, openssl, tar,
#                               containerd (the shim's tests),
#                               qemu-storage-daemon (qemu-system-common)
#
# Packages already present are not touched. Installing needs root. No
# package's service is started, and docker-registry is left disabled at
# boot: the tests start their own registry on loopback when they need one.
set -euo pipefail

mode=${1:-run}
container=false fallback=false
case $mode in
run) ;;
container) container=true ;;
fallback) container=true fallback=true ;;
test) container=true fallback=true ;;
*)
    echo "usage: scripts/setup.sh [run|container|fallback|test]" >&2
    exit 2
    ;;
esac

need_apt=()
# build.rs compiles the probe guest with gcc, and husk links statically
# against glibc, which needs libc.a.
if ! command -v gcc >/dev/null; then
    need_apt+=(gcc libc6-dev)
elif [[ $(gcc -print-file-name=libc.a) != /* ]]; then
    need_apt+=(libc6-dev)
fi
# The userfaultfd crate generates its kernel bindings with bindgen, which
# loads libclang at build time.
compgen -G '/usr/lib/llvm-*/lib/libclang*.so*' >/dev/null || need_apt+=(libclang-dev)
if $container; then
    # Root filesystems are built with mkfs.ext4 -d and checked with debugfs.
    [[ -x /usr/sbin/mkfs.ext4 && -x /usr/sbin/debugfs ]] || need_apt+=(e2fsprogs)
    # Images are made here from busybox-static (no registry needed).
    [[ -x /bin/busybox ]] || need_apt+=(busybox-static)
    # Container networks: the daemon writes its packet filter rules with
    # nft's JSON API (links and addresses go over netlink directly).
    command -v nft >/dev/null || [[ -x /usr/sbin/nft ]] || need_apt+=(nftables)
    # Bind mounts are served by virtiofsd, built from crates.io below.
    if ! command -v virtiofsd >/dev/null && [[ ! -x ${CARGO_HOME:-$HOME/.cargo}/bin/virtiofsd ]]; then
        for p in libseccomp-dev libcap-ng-dev pkg-config; do
            dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null | grep -qx installed || need_apt+=("$p")
        done
    fi
fi
if $fallback; then
    # A stock Linux guest cannot run on a PVM host's KVM: the daemon and the
    # guest tests then boot it under QEMU's software emulation. Only the
    # emulator itself, not its recommends.
    command -v qemu-system-x86_64 >/dev/null || need_apt+=(qemu-system-x86)
fi
if [[ $mode == test ]]; then
    # The image tests run a real registry on loopback (openssl makes its
    # TLS certificate) and read archives with tar.
    [[ -x /usr/bin/docker-registry ]] || need_apt+=(docker-registry)
    command -v openssl >/dev/null || need_apt+=(openssl)
    command -v tar >/dev/null || need_apt+=(tar)
    # The network tests make namespaces and veth pairs with ip.
    command -v ip >/dev/null || [[ -x /usr/sbin/ip ]] || need_apt+=(iproute2)
    # tests/shim.rs runs containerd-shim-husk-v2 under a real containerd
    # (started by the test with its own root, state and socket; the
    # package's service is never started).
    [[ -x /usr/bin/containerd && -x /usr/bin/ctr ]] || need_apt+=(containerd)
    # The vhost-user-blk tests export images with qemu-storage-daemon,
    # which QEMU's common package ships.
    [[ -x /usr/bin/qemu-storage-daemon ]] || need_apt+=(qemu-system-common)
fi

# Keeps the services of the packages being installed from starting
# (invoke-rc.d and deb-systemd-invoke both ask policy-rc.d first).
policy=/usr/sbin/policy-rc.d
added_policy=false
hold_services() {
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\n# Added by husk scripts/setup.sh while installing.\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        added_policy=true
    fi
}
release_services() {
    if $added_policy; then
        rm -f "$policy"
        added_policy=false
    fi
}

# The registry package enables its service at boot; the tests do not
# want a registry running outside them.
disable_registry_service() {
    if command -v systemctl >/dev/null; then
        if [[ -d /run/systemd/system ]]; then
            systemctl disable --now docker-registry.service >/dev/null 2>&1 || true
        else
            systemctl disable docker-registry.service >/dev/null 2>&1 || true
        fi
    fi
    if [[ -x /etc/init.d/docker-registry ]] && command -v update-rc.d >/dev/null; then
        update-rc.d docker-registry disable >/dev/null 2>&1 || true
    fi
}

if ((${#need_apt[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "setup: need root to install: ${need_apt[*]}" >&2
        exit 1
    fi
    echo "setup: installing ${need_apt[*]}" >&2
    trap release_services EXIT
    hold_services
    # The package mirror can fail for a moment; try a few times.
    for attempt in 1 2 3; do
        if apt-get update -qq &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
                "${need_apt[@]}"; then
            break
        fi
        if ((attempt == 3)); then
            echo "setup: cannot install ${need_apt[*]}" >&2
            exit 1
        fi
        sleep $((attempt * 5))
    done
    release_services
    trap - EXIT
    if [[ " ${need_apt[*]} " == *" docker-registry "* ]]; then
        disable_registry_service
    fi
fi

if ! command -v cargo >/dev/null; then
    echo "setup: cargo (the Rust toolchain) is required: https://rustup.rs" >&2
    exit 1
fi

cargo_install() {
    local tool=$1
    echo "setup: installing $tool (cargo install)" >&2
    for attempt in 1 2 3; do
        if cargo install --locked --quiet "$tool"; then
            return 0
        fi
        if ((attempt == 3)); then
            echo "setup: cannot install $tool" >&2
            exit 1
        fi
        sleep $((attempt * 5))
    done
}

if $container; then
    # virtiofsd serves bind mounts (the Debian release here does not
    # package it).
    if ! command -v virtiofsd >/dev/null && [[ ! -x ${CARGO_HOME:-$HOME/.cargo}/bin/virtiofsd ]]; then
        cargo_install virtiofsd
    fi
fi

if $fallback; then
    # QEMU's microvm machine with a vhost-user vsock device is how the
    # fallback reaches a real guest; make sure this QEMU has both.
    # (Read whole before grep -q, which would otherwise close the pipe early
    # and fail the pipeline under pipefail.)
    machines=$(qemu-system-x86_64 -machine help)
    if ! grep -qw microvm <<<"$machines"; then
        echo "setup: qemu-system-x86_64 has no microvm machine" >&2
        exit 1
    fi
    devices=$(qemu-system-x86_64 -device help)
    for dev in vhost-user-vsock-device vhost-user-fs-device; do
        if ! grep -q "\"$dev\"" <<<"$devices"; then
            echo "setup: qemu-system-x86_64 has no $dev" >&2
            exit 1
        fi
    done
    # The vhost-user backend for that vsock device is a rust-vmm program
    # from crates.io; cargo puts it in $CARGO_HOME/bin.
    cargo_bin=${CARGO_HOME:-$HOME/.cargo}/bin
    if ! command -v vhost-device-vsock >/dev/null && [[ ! -x $cargo_bin/vhost-device-vsock ]]; then
        cargo_install vhost-device-vsock
    fi
    if ! command -v vhost-device-vsock >/dev/null; then
        echo "setup: note: vhost-device-vsock is in $cargo_bin, which is not on PATH;" \
            "the tests look there too" >&2
    fi
fi

if [[ ! -r /dev/kvm || ! -w /dev/kvm ]]; then
    if [[ $mode == test ]]; then
        echo "setup: warning: /dev/kvm is not usable; tests that boot VMs will be skipped" >&2
    else
        echo "setup: warning: /dev/kvm is not usable; husk cannot boot a VM here" >&2
    fi
fi
