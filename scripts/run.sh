#!/usr/bin/env bash
# Runs a container in its own microVM, from nothing: installs what is
# missing (scripts/setup.sh container, plus the software-emulation backend
# when this host's KVM cannot run the guest kernel), builds husk, builds the
# guest kernel once (cached by content), makes a small demo image here from
# busybox-static, starts `husk serve` unless one is running, and runs
#
#     husk run --rm husk-demo/hello:1
#
# printing the container's output. Any arguments replace the command:
#     scripts/run.sh uname -a
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh container
cargo build --release --locked --bins
bin=${CARGO_TARGET_DIR:-target}/x86_64-unknown-linux-gnu/release
HUSK=$bin/husk

# One verdict per use; the containers line says whether KVM can run the
# guest kernel here. Where it cannot, the daemon falls back to QEMU's
# software emulation, which needs QEMU and vhost-device-vsock.
report=$("$HUSK" doctor || true)
verdict=$(grep '^containers:' <<<"$report" || true)
echo "run: $verdict" >&2
if [[ $verdict != "containers: yes"* ]]; then
    echo "run: the daemon will use the software-emulation fallback; installing it if missing" >&2
    scripts/setup.sh fallback
    export PATH=$PATH:${CARGO_HOME:-$HOME/.cargo}/bin
fi

# The guest kernel: built once, then found in its cache. Its last line on
# stdout is its path.
kernel_out=$(resources/guest-kernel/build.sh)
kernel=$(tail -n 1 <<<"$kernel_out")

# The daemon's defaults: root keeps state in /var/lib/husk and listens on
# /run/husk/husk.sock; others under $HOME and $XDG_RUNTIME_DIR (or /tmp).
export HUSK_HOST=${HUSK_HOST:-}
started=""
cleanup() {
    if [[ -n $started ]]; then
        kill "$started" 2>/dev/null || true
        wait "$started" 2>/dev/null || true
    fi
    rm -rf "${work:-}"
}
trap cleanup EXIT
work=$(mktemp -d)

if ! "$HUSK" info >/dev/null 2>&1; then
    echo "run: starting husk serve (log: $work/serve.log)" >&2
    "$HUSK" serve --kernel "$kernel" >"$work/serve.log" 2>&1 &
    started=$!
    for _ in $(seq 200); do
        "$HUSK" info >/dev/null 2>&1 && break
        if ! kill -0 "$started" 2>/dev/null; then
            cat "$work/serve.log" >&2
            echo "run: husk serve did not start" >&2
            exit 1
        fi
        sleep 0.05
    done
fi
"$HUSK" info | grep -E '^ (Backend|Fallback Reason|Kernel):' >&2 || true

# The demo image, made here: busybox in one layer, as `docker save` writes
# it, loaded into the daemon's store.
make_demo_image() {
    local root=$work/rootfs out=$work/image
    mkdir -p "$root/bin" "$root/etc" "$root/tmp" "$out"
    cp /bin/busybox "$root/bin/busybox"
    for applet in $("$root/bin/busybox" --list); do
        [[ $applet == busybox ]] || ln -sf busybox "$root/bin/$applet"
    done
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n' >"$root/etc/passwd"
    printf 'root:x:0:\nnobody:x:65534:\n' >"$root/etc/group"
    tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$root" -cf "$out/layer.tar" .
    local diff_id config_digest
    diff_id=$(sha256sum "$out/layer.tar" | cut -d' ' -f1)
    cat >"$out/config.json" <<EOF
{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin"],"Cmd":["sh","-c","echo \"Hello from a husk microVM: \$(uname -sr), \$(nproc) vCPU, \$(free -m | awk '/Mem:/ {print \$2}') MiB\""]},"rootfs":{"type":"layers","diff_ids":["sha256:$diff_id"]}}
EOF
    config_digest=$(sha256sum "$out/config.json" | cut -d' ' -f1)
    mv "$out/config.json" "$out/$config_digest.json"
    mkdir "$out/$diff_id"
    mv "$out/layer.tar" "$out/$diff_id/layer.tar"
    printf '[{"Config":"%s.json","RepoTags":["husk-demo/hello:1"],"Layers":["%s/layer.tar"]}]\n' \
        "$config_digest" "$diff_id" >"$out/manifest.json"
    tar -C "$out" -cf "$work/hello.tar" .
}
make_demo_image
"$HUSK" load -i "$work/hello.tar" >&2

set +e
"$HUSK" run --rm husk-demo/hello:1 "$@"
code=$?
set -e
echo "run: the container exited with $code" >&2
if [[ -n $started ]]; then
    echo "run: stopping the daemon this script started; keep one running with: $HUSK serve --kernel $kernel" >&2
fi
exit "$code"
