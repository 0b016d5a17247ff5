//! The probe guest's full device run inside `husk jailer`, under the
//! VMM's default seccomp filters: a drive brought in with --mount, entropy,
//! a vsock whose sockets live in the jail's /run, and a virtio-net
//! interface on a real TAP the jailed uid owns, all driven by the guest and
//! checked from the host (bytes in the backing file, a frame each way on
//! the TAP, a vsock exchange through `<root>/run/v.sock`); then a snapshot
//! taken in that jail is restored in a second jail, whose guest carries on
//! with the same disk, a reset vsock and the same TAP. Needs root,
//! /dev/kvm and the right to create a TAP (each test says `skipped:`
//! otherwise).

mod common;
#[path = "common/jail.rs"]
mod jail;
#[path = "common/tap.rs"]
mod tap;
#[path = "common/vsock.rs"]
mod vsock;

use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{assert_pages_served, page_server_bin, wait_page_server, TIMEOUT};
use husk::vmm::client::{self, Response};
use jail::*;
use serde_json::{json, Value};
use tap::{Packets, TestTap, GUEST_MAC};
use vsock::{port_path, probe_exchange};

/// The jailed guest's broadcast arrives on the TAP; `reply` goes back.
fn exchange(packets: &Packets, reply: &[u8]) {
    let f = packets
        .recv(Duration::from_secs(10))
        .expect("no frame from the jailed guest on the TAP");
    assert_eq!(&f[0..6], &[0xff; 6], "broadcast: {f:02x?}");
    assert_eq!(&f[6..12], &GUEST_MAC, "from the guest_mac: {f:02x?}");
    assert_eq!(&f[14..], b"HUSK-PROBE-NET", "{f:02x?}");
    packets.send(GUEST_MAC, reply);
}

// ---- a jailed VMM and its API

/// A jailed VMM with its API socket at /run/api.sock in the jail.
struct JailedVmm {
    j: Jailer,
    root: PathBuf,
    pid: i32,
}

impl JailedVmm {
    /// Starts `husk jailer` for `id` with `mounts` (HOST:JAIL[:ro]) on
    /// top of the kernel's, in cgroup v1 memory and pids cgroups of its
    /// own, and waits for the API.
    fn start(s: &Scratch, id: &str, mounts: &[String]) -> JailedVmm {
        let mut args = s
            .jail_args(id)
            .cgroup_v1()
            .cgroup("memory.limit_in_bytes=512M")
            .cgroup("pids.max=64");
        for m in mounts {
            args = args.mount(m);
        }
        // Default seccomp filters: no --no-seccomp.
        let j = Jailer::spawn(&args.api());
        let root = s.root(id);
        // The API socket, or the jailer's (or the VMM's) complaint.
        let deadline = Instant::now() + TIMEOUT;
        while std::os::unix::net::UnixStream::connect(root.join("run/api.sock")).is_err() {
            let err = j.stderr();
            assert!(
                Instant::now() < deadline
                    && !err.contains("husk jailer:")
                    && !err.contains("husk vmm:"),
                "no API socket in {}; stderr {err}",
                root.display(),
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        let pid = wait_pid_file(&root);
        JailedVmm { j, root, pid }
    }

    /// The host path of `/run/<name>` in the jail.
    fn run(&self, name: &str) -> PathBuf {
        self.root.join("run").join(name)
    }

    fn request(&self, method: &str, path: &str, body: Option<Value>) -> Response {
        let body = body.map(|b| b.to_string());
        client::request(&self.run("api.sock"), method, path, body.as_deref()).unwrap_or_else(|e| {
            panic!(
                "{method} {path}: {e}; serial {:?}; stderr {}",
                self.j.seen,
                self.j.stderr()
            )
        })
    }

    /// A request that must answer 204.
    fn ok(&self, method: &str, path: &str, body: Value) {
        let r = self.request(method, path, Some(body));
        assert_eq!(
            r.status,
            204,
            "{method} {path}: {}; stderr {}",
            r.body,
            self.j.stderr()
        );
    }

    fn cad(&self) {
        self.ok("PUT", "/actions", json!({"action_type": "SendCtrlAltDel"}));
    }

    /// A host listener for the guest's connections to vsock port `port`
    /// on `/run/<uds>`, which the jailed uid may connect to.
    fn vsock_listener(&self, uds: &str, port: u32) -> UnixListener {
        let p = port_path(&self.run(uds), port);
        let l = UnixListener::bind(&p).unwrap();
        chown(&p);
        l
    }

    /// Every husk thread of the VMM (the VMM thread, the API thread, the
    /// vCPU) runs under a seccomp filter (mode 2), with no_new_privs, as
    /// the jailed uid with no capabilities. (Threads the kernel adds, such
    /// as KVM's `kvm-nx-lpage-recovery`, are not husk's to filter.)
    fn assert_filtered(&self) {
        let modes = common::seccomp_modes(self.pid as u32);
        for kind in ["husk-vmm", "husk-api", "husk-vcpu0"] {
            assert!(
                modes.iter().any(|(c, _)| c == kind),
                "no {kind} thread in {modes:?}"
            );
        }
        common::assert_filtered(self.pid as u32);
        assert_eq!(status_field(self.pid, "NoNewPrivs"), "1");
        assert_eq!(
            status_field(self.pid, "Uid"),
            format!("{UID}\t{UID}\t{UID}\t{UID}")
        );
        assert_eq!(status_field(self.pid, "CapEff"), "0000000000000000");
    }

    /// The VM ended by itself: the jailer exits 0 and leaves no cgroup.
    fn wait_clean_exit(&mut self, s: &Scratch, id: &str) {
        let status = self.j.wait();
        let err = self.j.stderr();
        assert_eq!(
            status.code(),
            Some(0),
            "serial {:?}; stderr {err}",
            self.j.seen
        );
        assert!(
            !err.contains("seccomp"),
            "the VMM complained about seccomp: {err}"
        );
        for c in ["memory", "pids"] {
            let d = s.cgroup_dir(Some(c), id);
            assert!(!d.exists(), "{} is left behind", d.display());
        }
    }
}

/// Gives a host file to the jailed uid.
fn chown(p: &Path) {
    std::os::unix::fs::chown(p, Some(UID), Some(GID))
        .unwrap_or_else(|e| panic!("chown {}: {e}", p.display()));
}

/// A 1 MiB disk image whose sector 0 starts with `head`, owned by the
/// jailed uid and private to it.
fn disk(s: &Scratch, head: &[u8]) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = s.dir.path("disk.img");
    let mut bytes = vec![0u8; 1 << 20];
    bytes[..head.len()].copy_from_slice(head);
    std::fs::write(&p, bytes).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    chown(&p);
    p
}

#[test]
fn jailed_and_filtered_vmm_runs_every_device_and_restores_a_snapshot_in_a_second_jail() {
    if !can_jail() {
        return;
    }
    let Some(tap) = TestTap::create("jd", Some(UID)) else {
        return;
    };
    let s = Scratch::new();
    let disk = disk(&s, b"HUSK-PROBE-DISK0");
    let disk_mount = format!("{}:/disk.img", disk.display());

    // ---- VM A: every device, in its own jail.
    let mut a = JailedVmm::start(&s, "devs", std::slice::from_ref(&disk_mount));
    // /run was emptied at the start: the host's listener goes in now.
    let to_host = a.vsock_listener("v.sock", 5678);
    a.ok(
        "PUT",
        "/boot-source",
        json!({"kernel_image_path": "/kernel",
               "boot_args": "probe=blk,rng,vsock,net,wait-cad,blk-again,vsock-reset,net,wait-cad"}),
    );
    a.ok(
        "PUT",
        "/machine-config",
        json!({"vcpu_count": 1, "mem_size_mib": 128}),
    );
    a.ok(
        "PUT",
        "/drives/data",
        json!({"drive_id": "data", "path_on_host": "/disk.img",
               "is_root_device": false, "is_read_only": false}),
    );
    a.ok("PUT", "/entropy", json!({}));
    a.ok(
        "PUT",
        "/vsock",
        json!({"guest_cid": 3, "uds_path": "/run/v.sock"}),
    );
    a.ok(
        "PUT",
        "/network-interfaces/eth0",
        json!({"iface_id": "eth0", "host_dev_name": tap.name,
               "guest_mac": "06:00:AC:10:00:02"}),
    );
    let packets = Packets::open(&tap);
    a.ok("PUT", "/actions", json!({"action_type": "InstanceStart"}));

    // vsock: the host reaches the guest through the jail's /run, and the
    // jailed VMM reaches the host's listener there.
    assert_eq!(
        probe_exchange(&a.run("v.sock"), &to_host, "jailed\n"),
        "HUSK-PROBE-VSOCK"
    );
    // net: the guest's frame crosses the TAP, and the host's comes back.
    exchange(&packets, b"HUSK-JAILED-NET");
    assert_eq!(
        a.j.expect_line("PROBE blk"),
        "PROBE blk OK capacity=2048 head=HUSK-PROBE-DISK0 wrote=1 past_end=ioerr irq=1"
    );
    assert_eq!(a.j.expect_line("PROBE rng"), "PROBE rng OK bytes=32 irq=1");
    assert_eq!(
        a.j.expect_line("PROBE vsock"),
        "PROBE vsock OK echoed=7 sent=16"
    );
    assert_eq!(
        a.j.expect_line("PROBE net"),
        "PROBE net OK sent=1 got=HUSK-JAILED-NET"
    );
    // The guest's write went through the bind mount to the host's file.
    let on_disk = std::fs::read(&disk).unwrap();
    assert_eq!(&on_disk[..16], b"HUSK-PROBE-DISK0");
    assert_eq!(&on_disk[512..528], b"HUSK-PROBE-WRITE");
    assert!(on_disk[528..1024].iter().all(|b| *b == 0));
    a.assert_filtered();
    let m = a.request("GET", "/metrics", None).json();
    assert!(m["rng"]["bytes"].as_u64().unwrap() >= 32, "{m}");
    assert_eq!(m["net"]["tx_frames"], 1, "{m}");
    assert_eq!(m["net"]["rx_frames"], 1, "{m}");
    assert_eq!(m["vsock"]["host_connections"], 1, "{m}");
    assert_eq!(m["vsock"]["guest_connections"], 1, "{m}");

    // ---- The snapshot, written into the jail's /run.
    a.ok("PATCH", "/vm", json!({"state": "Paused"}));
    a.ok(
        "PUT",
        "/snapshot/create",
        json!({"snapshot_type": "Full", "snapshot_path": "/run/vm.state",
               "mem_file_path": "/run/vm.mem"}),
    );
    a.assert_filtered();
    let (state, mem) = (a.run("vm.state"), a.run("vm.mem"));
    let (state_md, mem_md) = (
        std::fs::metadata(&state).unwrap(),
        std::fs::metadata(&mem).unwrap(),
    );
    assert!(state_md.len() > 0);
    assert_eq!(mem_md.len(), 128 << 20);
    // Written by the jailed uid.
    assert_eq!((state_md.uid(), mem_md.uid()), (UID, UID));
    let status = a.j.terminate();
    let err = a.j.stderr();
    assert!(
        matches!(status.code(), Some(137) | Some(143)),
        "{status:?}; stderr {err}"
    );
    assert!(!err.contains("seccomp"), "{err}");
    drop(to_host);

    // ---- VM B: another jail, the snapshot's files and the same disk
    // brought in read-only and read-write.
    let mut b = JailedVmm::start(
        &s,
        "restored",
        &[
            disk_mount,
            format!("{}:/snap/vm.state:ro", state.display()),
            format!("{}:/snap/vm.mem:ro", mem.display()),
        ],
    );
    let to_host = b.vsock_listener("v.sock", 5678);
    b.ok(
        "PUT",
        "/snapshot/load",
        json!({
            "snapshot_path": "/snap/vm.state",
            "mem_backend": {"backend_type": "File", "backend_path": "/snap/vm.mem"},
            "resume_vm": true,
            "track_dirty_pages": true,
            "vsock_override": {"uds_path": "/run/v.sock"},
        }),
    );
    b.cad();
    // blk-again carries on with the restored queue, into the host's file.
    assert_eq!(
        b.j.expect_line("PROBE blk-again"),
        "PROBE blk-again OK wrote=1"
    );
    let on_disk = std::fs::read(&disk).unwrap();
    assert_eq!(&on_disk[1024..1042], b"HUSK-AFTER-RESTORE");
    assert_eq!(&on_disk[512..528], b"HUSK-PROBE-WRITE");
    // The vsock was reset, and works both ways through B's own /run.
    assert_eq!(
        probe_exchange(&b.run("v.sock"), &to_host, "restored\n"),
        "HUSK-AFTER-RESTORE"
    );
    assert_eq!(
        b.j.expect_line("PROBE vsock-reset"),
        "PROBE vsock-reset OK echoed=9 sent=18"
    );
    // The restored net device opened the same TAP from inside its jail.
    exchange(&packets, b"HUSK-RESTORED-NET");
    assert_eq!(
        b.j.expect_line("PROBE net"),
        "PROBE net OK sent=1 got=HUSK-RESTORED-NET"
    );
    b.assert_filtered();
    // A diff snapshot of the restored VM (KVM's dirty log, under the VMM
    // thread's filter), into B's /run: only the pages the guest wrote
    // since the restore.
    b.ok("PATCH", "/vm", json!({"state": "Paused"}));
    b.ok(
        "PUT",
        "/snapshot/create",
        json!({"snapshot_type": "Diff", "snapshot_path": "/run/diff.state",
               "mem_file_path": "/run/diff.mem"}),
    );
    let diff = std::fs::metadata(b.run("diff.mem")).unwrap();
    assert_eq!(diff.len(), 128 << 20);
    let written = diff.blocks() * 512;
    assert!(
        (4096..(8 << 20)).contains(&written),
        "the diff holds {written} bytes"
    );
    assert_eq!(diff.uid(), UID);
    // A full one too: the pages it touched plus the data of the file
    // its memory is mapped from (SEEK_DATA over the read-only mount).
    b.ok(
        "PUT",
        "/snapshot/create",
        json!({"snapshot_type": "Full", "snapshot_path": "/run/full.state",
               "mem_file_path": "/run/full.mem"}),
    );
    let full = std::fs::metadata(b.run("full.mem")).unwrap().blocks() * 512;
    assert!(
        full >= mem_md.blocks() * 512 && full > written,
        "the full snapshot of the restored VM holds {full} bytes, its source {}",
        mem_md.blocks() * 512
    );
    b.ok("PATCH", "/vm", json!({"state": "Resumed"}));
    b.assert_filtered();
    b.cad();
    b.j.expect_line("PROBE DONE");
    b.wait_clean_exit(&s, "restored");
}

/// A child process killed if the test ends early.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_page_server_feeds_a_jailed_restore_through_the_jails_userfaultfd() {
    if !can_jail() {
        return;
    }
    let s = Scratch::new();
    let mut a = JailedVmm::start(&s, "counter", &[]);
    a.ok(
        "PUT",
        "/boot-source",
        json!({"kernel_image_path": "/kernel", "boot_args": "probe=count:100000000"}),
    );
    a.ok(
        "PUT",
        "/machine-config",
        json!({"vcpu_count": 1, "mem_size_mib": 128}),
    );
    a.ok("PUT", "/actions", json!({"action_type": "InstanceStart"}));
    a.j.expect_line("COUNT 100");
    a.ok("PATCH", "/vm", json!({"state": "Paused"}));
    a.ok(
        "PUT",
        "/snapshot/create",
        json!({"snapshot_type": "Full", "snapshot_path": "/run/s", "mem_file_path": "/run/m"}),
    );
    a.assert_filtered();
    a.j.terminate();

    let sock = s.dir.path("uffd.sock");
    let mut server = KillOnDrop(
        std::process::Command::new(page_server_bin())
            .arg(&sock)
            .arg(a.run("m"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    wait_page_server(&sock, TIMEOUT);
    chown(&sock);
    let mut b = JailedVmm::start(
        &s,
        "uffd",
        &[
            format!("{}:/snap/s:ro", a.run("s").display()),
            format!("{}:/uffd.sock", sock.display()),
        ],
    );
    b.ok(
        "PUT",
        "/snapshot/load",
        json!({
            "snapshot_path": "/snap/s",
            "mem_backend": {"backend_type": "Uffd", "backend_path": "/uffd.sock"},
            "resume_vm": true,
        }),
    );
    // The guest counts on from where it was paused, from memory the page
    // server copied in (a guest that lost it would not count at all).
    let count = |l: String| -> u64 { l.strip_prefix("COUNT ").unwrap().parse().unwrap() };
    let n = count(b.j.expect_line("COUNT "));
    assert!(n > 100, "COUNT {n} after the restore");
    assert_eq!(count(b.j.expect_line("COUNT ")), n + 1);
    b.assert_filtered();
    b.j.terminate();
    assert_pages_served(&mut server.0);
}
