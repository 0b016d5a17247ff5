#!/bin/sh
# Writes the seed corpora: for kernel_loader, the probe guest in its three
# formats (ELF, ELF with the PVH note, bzImage), each after the 0 byte
# that asks for no hole; for config_file, the example config files.
set -eu
cd "$(dirname "$0")"
mkdir -p corpus/kernel_loader corpus/config_file
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# HUSK names a husk binary to use instead of building one.
if [ -z "${HUSK:-}" ]; then
    cargo build -q --manifest-path ../Cargo.toml --bin husk
    HUSK=../target/x86_64-unknown-linux-gnu/debug/husk
fi
for boot in linux64 pvh bzimage; do
    "$HUSK" probe-guest --boot "$boot" --output "$tmp/$boot"
    { printf '\0'; cat "$tmp/$boot"; } >"corpus/kernel_loader/probe-$boot"
done
cp ../resources/probe-vm.json corpus/config_file/
# /proc/self/exe is a regular file that always exists, so the kernel and
# initrd checks pass and the rest of the validation is reached.
cat >corpus/config_file/full.json <<'JSON'
{
  "boot-source": {
    "kernel_image_path": "/proc/self/exe",
    "initrd_path": "/proc/self/exe",
    "boot_args": "console=ttyS0 reboot=k panic=1"
  },
  "machine-config": {
    "vcpu_count": 2,
    "mem_size_mib": 256,
    "smt": false,
    "track_dirty_pages": false,
    "cpu_template": "None",
    "huge_pages": "None"
  },
  "logger": {
    "log_path": "/dev/null",
    "level": "Debug",
    "show_level": true,
    "show_log_origin": false,
    "module": "husk::vmm"
  },
  "metrics": { "metrics_path": "/dev/null" },
  "serial": { "serial_out_path": "/dev/null" },
  "entropy": {}
}
JSON
cat >corpus/config_file/devices.json <<'JSON'
{
  "boot-source": { "kernel_image_path": "/proc/self/exe" },
  "drives": [
    {
      "drive_id": "rootfs",
      "path_on_host": "/proc/self/exe",
      "is_root_device": true,
      "is_read_only": true,
      "partuuid": "0eaa91a0-01",
      "cache_type": "Unsafe",
      "io_engine": "Sync",
      "rate_limiter": {
        "bandwidth": { "size": 1048576, "one_time_burst": 4096, "refill_time": 100 },
        "ops": { "size": 100, "refill_time": 1000 }
      }
    }
  ],
  "network-interfaces": [
    {
      "iface_id": "eth0",
      "host_dev_name": "tap0",
      "guest_mac": "06:00:ac:10:00:02",
      "mtu": 1500,
      "rx_rate_limiter": { "bandwidth": { "size": 1000, "refill_time": 10 } },
      "tx_rate_limiter": { "ops": { "size": 10, "refill_time": 10 } }
    }
  ],
  "vsock": { "guest_cid": 3, "uds_path": "/tmp/v.sock", "vsock_id": "vsock0" },
  "entropy": {}
}
JSON
printf '{"boot-source":{"kernel_image_path":"/proc/self/exe"}}' \
    >corpus/config_file/minimal.json
