#!/usr/bin/env bash
# Builds husk's guest kernel: an uncompressed vmlinux with a PVH entry
# point, from Debian's linux-source-6.12 and the fragment microvm.config
# applied on top of `make tinyconfig`.
#
#   resources/guest-kernel/build.sh [OUTPUT]
#
# The kernel is cached by content: the key is the sha256 of microvm.config,
# this script and the linux-source package's version, and the kernel lives
# in $cache/<key>/vmlinux (with the .config it was built from beside it),
# where $cache is $HUSK_KERNEL_CACHE, else $HUSK_STATE_DIR/kernels, else
# /var/lib/husk/kernels. $cache/vmlinux is a symlink to the kernel of the
# last run, the default kernel path. A run whose kernel is cached costs
# nothing. OUTPUT, when given, gets a hard link to (or a copy of) the
# kernel. The last line on stdout is the kernel's path (OUTPUT when given);
# everything else goes to stderr.
#
# Missing build dependencies are installed with apt-get (needs root).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
fragment=$here/microvm.config
self=$here/build.sh
package=linux-source-6.12
tarball=/usr/src/$package.tar.xz
output=${1:-}
cache=$(realpath -m "${HUSK_KERNEL_CACHE:-${HUSK_STATE_DIR:-/var/lib/husk}/kernels}")

# stdout carries only the final path.
exec 3>&1 1>&2

log() { echo "guest-kernel: $*" >&2; }
die() {
    log "error: $*"
    exit 1
}

package_version() {
    dpkg-query -W -f='${db:Status-Status} ${Version}' "$package" 2>/dev/null |
        sed -n 's/^installed //p'
}

apt_install() {
    if [[ $(id -u) -ne 0 ]]; then
        die "need root to install: $*"
    fi
    log "installing $*"
    # The package mirror can fail for a moment; try a few times.
    local attempt
    for attempt in 1 2 3; do
        if apt-get update -qq &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2; then
            return 0
        fi
        ((attempt == 3)) && die "cannot install $*"
        sleep $((attempt * 5))
    done
}

# Points OUTPUT and $cache/vmlinux at the cached kernel and prints the path.
finish() {
    local key=$1 kernel=$cache/$1/vmlinux
    # An atomic replace: readers see the old link or the new one.
    ln -sfn "$key/vmlinux" "$cache/.vmlinux.$$"
    mv -T "$cache/.vmlinux.$$" "$cache/vmlinux"
    if [[ -n $output ]]; then
        mkdir -p "$(dirname "$output")"
        rm -f "$output"
        ln "$kernel" "$output" 2>/dev/null || cp "$kernel" "$output"
        kernel=$(cd "$(dirname "$output")" && pwd)/$(basename "$output")
    fi
    echo "$kernel" >&3
    exit 0
}

cache_key() {
    { cat "$fragment" "$self"; echo "$package $1"; } | sha256sum | cut -d' ' -f1
}

# A cache hit needs only the package's version.
version=$(package_version)
if [[ -n $version ]]; then
    key=$(cache_key "$version")
    if [[ -f $cache/$key/vmlinux ]]; then
        log "cached: $cache/$key/vmlinux"
        finish "$key"
    fi
fi

# A miss: install what building needs.
need_apt=()
[[ -n $version && -r $tarball ]] || need_apt+=("$package")
command -v gcc >/dev/null || need_apt+=(gcc libc6-dev)
command -v make >/dev/null || need_apt+=(make)
command -v flex >/dev/null || need_apt+=(flex)
command -v bison >/dev/null || need_apt+=(bison)
command -v bc >/dev/null || need_apt+=(bc)
command -v xz >/dev/null || need_apt+=(xz-utils)
command -v readelf >/dev/null || need_apt+=(binutils)
command -v flock >/dev/null || need_apt+=(util-linux)
# objtool, which x86-64 builds always run, links against libelf.
[[ -f /usr/include/gelf.h ]] || need_apt+=(libelf-dev)
if ((${#need_apt[@]})); then
    apt_install "${need_apt[@]}"
fi
version=$(package_version)
[[ -n $version && -r $tarball ]] || die "$package is not installed ($tarball)"
key=$(cache_key "$version")

mkdir -p "$cache"
# One build at a time per cache; a second run waits, then finds the kernel.
exec 9>"$cache/.lock"
flock 9
if [[ -f $cache/$key/vmlinux ]]; then
    log "cached: $cache/$key/vmlinux"
    finish "$key"
fi

# What a killed build left behind (no other build runs while we hold the
# lock).
find "$cache" -maxdepth 1 -type d \( -name 'build.??????' -o -name '.*.[0-9]*' \) \
    -exec rm -rf {} +
work=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
trap 'exit 130' INT TERM
build_log=$cache/build.log
log "building $package $version (key $key) in $work; log: $build_log"
start=$(date +%s)

# The tarball is multi-block xz: decompress on all cores.
xz -T0 -dc "$tarball" | tar -x -C "$work"
src=$work/$package
[[ -d $src ]] || die "$tarball did not unpack into $package/"
# (merge_config.sh leaves its temporary files in the current directory.)
cd "$src"

kmake() {
    make ARCH=x86_64 KBUILD_BUILD_USER=husk KBUILD_BUILD_HOST=husk "$@"
}

if ! {
    kmake tinyconfig &&
        scripts/kconfig/merge_config.sh -m .config "$fragment" &&
        kmake olddefconfig
} >"$build_log" 2>&1; then
    tail -n 40 "$build_log" >&2
    die "configuring the kernel failed"
fi

# Every option the fragment names must have survived olddefconfig: a
# dependency that went missing would otherwise drop it without a word.
missing=$(awk '
    FNR == NR {
        if (match($0, /^CONFIG_[A-Za-z0-9_]+=/)) {
            want[substr($0, 1, RLENGTH - 1)] = substr($0, RLENGTH + 1)
        } else if (match($0, /^# CONFIG_[A-Za-z0-9_]+ is not set/)) {
            want[$2] = "n"
        }
        next
    }
    match($0, /^CONFIG_[A-Za-z0-9_]+=/) { have[substr($0, 1, RLENGTH - 1)] = substr($0, RLENGTH + 1) }
    END {
        for (k in want) {
            h = (k in have) ? have[k] : "n"
            if (h != want[k]) printf "%s: wanted %s, got %s\n", k, want[k], h
        }
    }' "$fragment" "$src/.config")
if [[ -n $missing ]]; then
    echo "$missing" >&2
    die "the configuration lost options of microvm.config"
fi

if ! kmake -j"$(nproc)" vmlinux >>"$build_log" 2>&1; then
    tail -n 40 "$build_log" >&2
    die "building vmlinux failed"
fi

# husk and QEMU enter vmlinux through PVH: the Xen note of type 0x12
# (XEN_ELFNOTE_PHYS32_ENTRY) must be there.
if ! readelf -n "$src/vmlinux" | grep -iE '^\s*Xen\s' | grep -q '0x00000012\|PHYS32_ENTRY'; then
    readelf -n "$src/vmlinux" >&2
    die "vmlinux has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)"
fi

staging=$cache/.$key.$$
rm -rf "$staging"
mkdir "$staging"
cp "$src/vmlinux" "$staging/vmlinux"
cp "$src/.config" "$staging/config"
rm -rf "${cache:?}/$key"
mv -T "$staging" "$cache/$key"
rm -rf "$work"
log "built $cache/$key/vmlinux ($(stat -c %s "$cache/$key/vmlinux") bytes) in $(($(date +%s) - start)) s"
finish "$key"
