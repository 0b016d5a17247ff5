//! Boots the guest kernel (resources/guest-kernel/build.sh) under QEMU's
//! software emulation, with a busybox initramfs and no husk agent, and
//! checks what a container guest needs from it: virtio-mmio devices found
//! from the command line (blk, vsock, rng), ext4 and overlayfs, the cgroup
//! v2 controllers, the namespaces and seccomp, a vsock echo reached from
//! the host through the hybrid vsock socket, and a reboot that ends QEMU.
//!
//! Skipped, visibly, when QEMU, vhost-device-vsock, busybox-static, a gcc
//! that links statically, or the kernel is missing; scripts/test.sh
//! installs them all and sets HUSK_REQUIRE_QEMU, so in CI it runs for real.

#[path = "common/qemu.rs"]
mod qemu;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use qemu::{Initramfs, QemuGuest, QemuSpec};

const BUSYBOX: &str = "/bin/busybox";

/// The guest's /init. Each check prints one `SMOKE <name> <value>` line.
const INIT: &str = r#"#!/bin/sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "SMOKE init uptime=$(cut -d' ' -f1 /proc/uptime)"
echo "SMOKE kernel $(uname -r) $(uname -m)"
for d in vda vdb; do
    if [ -b /dev/$d ]; then
        echo "SMOKE $d yes sectors=$(cat /sys/block/$d/size)"
    else
        echo "SMOKE $d no"
    fi
done
ids=""
for d in /sys/bus/virtio/devices/*; do
    [ -e "$d/device" ] && ids="$ids $(cat $d/device)"
done
echo "SMOKE virtio-ids$ids"
for fs in ext4 overlay tmpfs cgroup2 devtmpfs; do
    if grep -qw "$fs" /proc/filesystems; then echo "SMOKE fs $fs=yes"; else echo "SMOKE fs $fs=no"; fi
done
mkdir -p /sys/fs/cgroup
mount -t cgroup2 cgroup2 /sys/fs/cgroup && echo "SMOKE cgroup-controllers $(cat /sys/fs/cgroup/cgroup.controllers)"
echo "SMOKE namespaces $(ls /proc/self/ns | tr '\n' ' ')"
echo "SMOKE seccomp $(grep -c '^Seccomp_filters:' /proc/self/status)"
[ -c /dev/vsock ] && echo "SMOKE dev-vsock yes" || echo "SMOKE dev-vsock no"
echo "SMOKE hwrng $(cat /sys/class/misc/hw_random/rng_current 2>/dev/null)"
mkdir -p /mnt/lower /mnt/upper /mnt/work /mnt/merged
mount -t tmpfs tmpfs /mnt/upper && mkdir /mnt/upper/u /mnt/upper/w
echo lower > /mnt/lower/f
mount -t overlay overlay -o lowerdir=/mnt/lower,upperdir=/mnt/upper/u,workdir=/mnt/upper/w /mnt/merged &&
    echo upper >> /mnt/merged/f && echo "SMOKE overlay-mount $(cat /mnt/merged/f | tr '\n' ' ')"
/bin/vsock-echo 1234 && echo "SMOKE vsock-served"
echo "SMOKE done"
reboot -f
"#;

/// A guest program that echoes one vsock connection on the port it is
/// given (busybox has no AF_VSOCK), built static so it needs no libc.
const VSOCK_ECHO_C: &str = r#"
#include <linux/vm_sockets.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
    struct sockaddr_vm addr = {0};
    char buf[4096];
    ssize_t n;
    int s = socket(AF_VSOCK, SOCK_STREAM, 0), c;
    addr.svm_family = AF_VSOCK;
    addr.svm_cid = VMADDR_CID_ANY;
    addr.svm_port = argc > 1 ? atoi(argv[1]) : 1234;
    if (s < 0 || bind(s, (struct sockaddr *)&addr, sizeof addr) || listen(s, 1)) {
        perror("vsock-echo");
        return 1;
    }
    printf("SMOKE vsock-listening %u\n", addr.svm_port);
    fflush(stdout);
    c = accept(s, NULL, NULL);
    if (c < 0) {
        perror("vsock-echo: accept");
        return 1;
    }
    while ((n = read(c, buf, sizeof buf)) > 0) {
        for (ssize_t off = 0, w; off < n; off += w) {
            w = write(c, buf + off, n - off);
            if (w <= 0)
                return 1;
        }
    }
    return 0;
}
"#;

#[test]
fn guest_kernel_boots_under_qemu() {
    let kernel = match qemu::tools_available().and_then(|()| qemu::guest_kernel()) {
        Ok(kernel) => kernel,
        Err(reason) => return qemu::skip(&reason),
    };
    if let Err(reason) = qemu::check_static_elf(Path::new(BUSYBOX)) {
        return qemu::skip(&reason);
    }
    let busybox = std::fs::read(BUSYBOX).unwrap();

    let scratch = Scratch::new();
    let vsock_echo = match build_vsock_echo(&scratch.0) {
        Ok(program) => program,
        Err(reason) => return qemu::skip(&reason),
    };
    let initrd = scratch.0.join("initrd.gz");
    let mut initramfs = Initramfs::new();
    for dir in ["bin", "dev", "proc", "sys", "mnt", "tmp"] {
        initramfs.dir(dir);
    }
    initramfs
        .char_dev("dev/console", 0o600, 5, 1)
        .file("bin/busybox", &busybox, 0o755)
        .symlink("bin/sh", "busybox")
        .file("bin/vsock-echo", &vsock_echo, 0o755)
        .file("init", INIT.as_bytes(), 0o755);
    initramfs.write_gz(&initrd).unwrap();
    // Two drives of different sizes show which became vda and which vdb.
    let vda = scratch.0.join("vda.img");
    let vdb = scratch.0.join("vdb.img");
    std::fs::File::create(&vda)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    std::fs::File::create(&vdb)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();

    let mut spec = QemuSpec::new(
        &kernel,
        &initrd,
        "console=ttyS0 reboot=t panic=-1 no_timer_check",
    );
    spec.drives = vec![vda, vdb];
    spec.vsock_cid = Some(3);
    spec.rng = true;
    let mut guest = QemuGuest::start(spec).unwrap();
    let t = Duration::from_secs(60);

    let (line, at) = guest.expect_line_timed("SMOKE init", t).unwrap();
    // Information, not an assertion; straight to stderr, past the test
    // harness's capture, so every run's log shows it.
    info(&format!(
        "QEMU (TCG) start to /init: {at:?} ({line}; kernel {})",
        kernel.display()
    ));

    // vhost-device-vsock listens for host connections by now.
    assert!(
        guest.vsock_uds().exists(),
        "no vsock socket at {}",
        guest.vsock_uds().display()
    );

    let mut check = |marker: &str| -> String {
        let line = guest.expect_line(marker, t).unwrap();
        line[line.find(marker).unwrap() + marker.len()..]
            .trim()
            .to_string()
    };
    let kernel_line = check("SMOKE kernel");
    assert!(kernel_line.starts_with("6.12"), "{kernel_line}");
    assert!(kernel_line.ends_with("x86_64"), "{kernel_line}");
    // 8 MiB and 16 MiB in 512-byte sectors: the drives keep their order.
    assert_eq!(check("SMOKE vda"), "yes sectors=16384");
    assert_eq!(check("SMOKE vdb"), "yes sectors=32768");
    let ids = check("SMOKE virtio-ids");
    let ids: Vec<&str> = ids.split_whitespace().collect();
    for (id, what) in [("0x0002", "blk"), ("0x0013", "vsock"), ("0x0004", "rng")] {
        assert!(ids.contains(&id), "no virtio {what} device: {ids:?}");
    }
    for fs in ["ext4", "overlay", "tmpfs", "cgroup2", "devtmpfs"] {
        assert_eq!(check("SMOKE fs"), format!("{fs}=yes"));
    }
    let controllers = check("SMOKE cgroup-controllers");
    for c in ["cpuset", "cpu", "io", "memory", "pids"] {
        assert!(
            controllers.split_whitespace().any(|x| x == c),
            "no {c} controller: {controllers}"
        );
    }
    let namespaces = check("SMOKE namespaces");
    for ns in ["ipc", "mnt", "net", "pid", "user", "uts"] {
        assert!(
            namespaces.split_whitespace().any(|x| x == ns),
            "no {ns} namespace: {namespaces}"
        );
    }
    assert_eq!(check("SMOKE seccomp"), "1", "no seccomp filters");
    assert_eq!(check("SMOKE dev-vsock"), "yes");
    assert_eq!(check("SMOKE hwrng"), "virtio_rng.0");
    assert_eq!(check("SMOKE overlay-mount"), "lower upper");
    assert_eq!(check("SMOKE vsock-listening"), "1234");

    // The host reaches the guest's vsock listener through the hybrid
    // vsock socket, as husk's daemon reaches its agent.
    let mut stream = guest.vsock_connect(1234, Duration::from_secs(10)).unwrap();
    let ping = b"ping over vsock\n";
    stream.write_all(ping).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut echo = vec![0u8; ping.len()];
    stream.read_exact(&mut echo).unwrap();
    assert_eq!(echo, ping);
    let echoed = guest.elapsed();
    drop(stream);
    info(&format!("QEMU (TCG) start to a vsock echo: {echoed:?}"));
    guest
        .expect_line("SMOKE vsock-served", Duration::from_secs(30))
        .unwrap();
    guest
        .expect_line("SMOKE done", Duration::from_secs(30))
        .unwrap();

    // reboot -f with reboot=t: QEMU (-no-reboot) exits.
    let status = guest.wait_exit(Duration::from_secs(30)).unwrap();
    assert!(status.success(), "QEMU exited with {status}");
    info(&format!("QEMU (TCG) start to exit: {:?}", guest.elapsed()));
    // The whole boot, for `cargo test -- --nocapture`.
    println!("--- console ---\n{}", guest.serial_so_far());
}

fn info(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Compiles VSOCK_ECHO_C with gcc (which building husk needs anyway).
fn build_vsock_echo(dir: &Path) -> Result<Vec<u8>, String> {
    let src = dir.join("vsock-echo.c");
    let out = dir.join("vsock-echo");
    std::fs::write(&src, VSOCK_ECHO_C).unwrap();
    let result = Command::new("gcc")
        .args(["-static", "-O2", "-o"])
        .arg(&out)
        .arg(&src)
        .output()
        .map_err(|e| format!("gcc is not usable: {e}"))?;
    if !result.status.success() {
        return Err(format!(
            "gcc -static failed: {}",
            String::from_utf8_lossy(&result.stderr)
        ));
    }
    Ok(std::fs::read(&out).unwrap())
}

/// The test's own files (the harness has its own scratch directory).
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        let dir = std::env::temp_dir().join(format!("husk-guest-kernel-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
