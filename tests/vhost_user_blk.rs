//! vhost-user-blk drives (`socket` in `PUT /drives`) end to end:
//! qemu-storage-daemon exports image files over vhost-user, the probe
//! guest (`probe=blk`) drives them through husk's frontend as it drives a
//! file-backed drive, and the test checks the bytes in the image files.
//! Then the edges: the API's rules for `socket`, a backend that is not
//! there at InstanceStart, PATCH, and the snapshot refusal.
//! qemu-storage-daemon comes with QEMU (Debian's qemu-system-common);
//! without it each test says `skipped:` (and fails under
//! HUSK_REQUIRE_QEMU, as CI runs).

mod common;
#[path = "common/qemu.rs"]
mod qemu;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{kvm_available, Vmm};
use serde_json::json;

const QSD: &str = "/usr/bin/qemu-storage-daemon";

/// qemu-storage-daemon serving `exports` (image, socket, writable), one
/// vhost-user-blk export each; killed on drop.
struct Qsd(Child);

impl Qsd {
    /// Starts it and waits until it has set up every export (it writes
    /// its pid file then). None, after saying so, where it cannot run.
    fn start(dir: &Path, exports: &[(&Path, &Path, bool)]) -> Option<Qsd> {
        if !kvm_available() {
            return None;
        }
        if !Path::new(QSD).is_file() {
            qemu::skip(&format!(
                "{QSD} is not installed (Debian: qemu-system-common)"
            ));
            return None;
        }
        let pidfile = dir.join(format!("qsd-{}.pid", exports.len()));
        let mut cmd = Command::new(QSD);
        for (i, (image, sock, writable)) in exports.iter().enumerate() {
            cmd.arg("--blockdev").arg(format!(
                "driver=file,node-name=file{i},filename={}",
                image.display()
            ));
            cmd.arg("--export").arg(format!(
                "type=vhost-user-blk,id=e{i},node-name=file{i},addr.type=unix,addr.path={},\
                 writable={}",
                sock.display(),
                if *writable { "on" } else { "off" }
            ));
        }
        let child = cmd
            .arg("--pidfile")
            .arg(&pidfile)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn qemu-storage-daemon");
        let mut qsd = Qsd(child);
        let start = Instant::now();
        while !pidfile.exists() {
            if let Some(status) = qsd.0.try_wait().unwrap() {
                panic!("qemu-storage-daemon exited: {status}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "qemu-storage-daemon did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Some(qsd)
    }
}

impl Drop for Qsd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A 1 MiB image whose sector 0 starts with `head`.
fn image(vmm: &Vmm, name: &str, head: &[u8]) -> PathBuf {
    let p = vmm.dir.path(name);
    let mut bytes = vec![0u8; 1 << 20];
    bytes[..head.len()].copy_from_slice(head);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn vhost_drive(id: &str, sock: &Path) -> serde_json::Value {
    // Writeback: FLUSH reaches the backend (and the probe wants FLUSH).
    json!({"drive_id": id, "socket": sock, "is_root_device": false, "cache_type": "Writeback"})
}

#[test]
fn the_probe_reads_and_writes_through_a_vhost_user_backend() {
    let mut vmm = Vmm::with_api();
    let rw = image(&vmm, "rw.img", b"HUSK-PROBE-DISK0");
    let ro = image(&vmm, "ro.img", b"HUSK-PROBE-DISK1");
    let ro_before = std::fs::read(&ro).unwrap();
    let (rw_sock, ro_sock) = (vmm.dir.path("rw.sock"), vmm.dir.path("ro.sock"));
    let exports = [
        (rw.as_path(), rw_sock.as_path(), true),
        (&ro, &ro_sock, false),
    ];
    let Some(_qsd) = Qsd::start(&vmm.dir.0, &exports) else {
        return;
    };
    vmm.put_ok("/drives/rw", vhost_drive("rw", &rw_sock));
    vmm.put_ok("/drives/ro", vhost_drive("ro", &ro_sock));
    let cfg = vmm.get("/vm/config").json();
    assert_eq!(
        cfg["drives"][0],
        json!({"drive_id": "rw", "socket": rw_sock, "is_root_device": false,
               "cache_type": "Writeback"})
    );
    vmm.configure("probe=blk,wait-cad", 1, 128);
    vmm.start();
    // The backend's capacity, its read-only export refusing the write.
    assert_eq!(
        vmm.expect_line("PROBE blk"),
        "PROBE blk OK capacity=2048 head=HUSK-PROBE-DISK0 wrote=1 past_end=ioerr irq=1 ro=ioerr"
    );
    common::assert_filtered(vmm.pid());
    let m = vmm.get("/metrics").json();
    let vu = &m["vhost_user_block"];
    // Drive 1 was reset by the probe: two starts in all, and none failed.
    assert_eq!(vu["activations"], 2, "{m}");
    assert!(vu["interrupts"].as_u64().unwrap() >= 4, "{m}");
    assert_eq!(vu["backend_errors"], 0, "{m}");
    assert_eq!(
        m["block"]["requests"], 0,
        "husk's own virtio-blk served nothing: {m}"
    );

    // PATCH: only a reload of the backend's configuration.
    let r = vmm.patch("/drives/rw", json!({"drive_id": "rw"}));
    assert_eq!(r.status, 204, "{}", r.body);
    let img = vmm.dir.path("other.img");
    std::fs::write(&img, [0u8; 512]).unwrap();
    for body in [
        json!({"drive_id": "rw", "path_on_host": img}),
        json!({"drive_id": "rw", "rate_limiter": {"ops": {"size": 1, "refill_time": 10}}}),
    ] {
        let fault = Vmm::fault(&vmm.patch("/drives/rw", body));
        assert!(fault.contains("is a vhost-user drive"), "{fault}");
    }
    // No snapshot: the backend's state is not husk's to save.
    let r = vmm.patch("/vm", json!({"state": "Paused"}));
    assert_eq!(r.status, 204, "{}", r.body);
    let r = vmm.put(
        "/snapshot/create",
        json!({"snapshot_path": vmm.dir.path("s"), "mem_file_path": vmm.dir.path("m")}),
    );
    let fault = Vmm::fault(&r);
    assert!(
        fault.contains("vhost-user drive") && fault.contains("\"rw\""),
        "{fault}"
    );
    assert!(!vmm.dir.path("s").exists());
    let r = vmm.patch("/vm", json!({"state": "Resumed"}));
    assert_eq!(r.status, 204, "{}", r.body);
    vmm.action("SendCtrlAltDel");
    assert_eq!(vmm.wait().code(), Some(0));

    // The guest's write reached the image through the backend.
    let after = std::fs::read(&rw).unwrap();
    assert_eq!(&after[..16], b"HUSK-PROBE-DISK0");
    assert_eq!(&after[512..528], b"HUSK-PROBE-WRITE");
    assert!(after[528..1024].iter().all(|b| *b == 0));
    assert_eq!(std::fs::read(&ro).unwrap(), ro_before);
}

#[test]
fn socket_excludes_the_file_fields_and_must_be_there_at_start() {
    if !kvm_available() {
        return;
    }
    let mut vmm = Vmm::with_api();
    let img = image(&vmm, "ok.img", b"");
    let sock = vmm.dir.path("none.sock");
    let with = |k: &str, v: serde_json::Value| {
        let mut d = vhost_drive("v", &sock);
        d[k] = v;
        d
    };
    let cases = [
        (with("path_on_host", json!(img)), "cannot have path_on_host"),
        (
            with("is_read_only", json!(false)),
            "cannot have is_read_only",
        ),
        (with("io_engine", json!("Sync")), "cannot have io_engine"),
        (
            with(
                "rate_limiter",
                json!({"ops": {"size": 1, "refill_time": 1}}),
            ),
            "cannot have rate_limiter",
        ),
        (with("socket", json!("")), "socket must not be empty"),
        (
            json!({"drive_id": "v", "is_root_device": false}),
            "give path_on_host (a file-backed drive) or socket",
        ),
        (
            json!({"drive_id": "v", "path_on_host": img, "is_root_device": false,
                   "io_engine": "Turbo"}),
            "unknown variant `Turbo`, expected `Sync` or `Async`",
        ),
    ];
    for (body, want) in cases {
        let r = vmm.put("/drives/v", body.clone());
        assert_eq!(r.status, 400, "{body}");
        let msg = Vmm::fault(&r);
        assert!(msg.contains(want), "{body}: {msg}");
    }
    // Nothing listens on the socket: PUT takes it, InstanceStart refuses.
    vmm.put_ok("/drives/v", vhost_drive("v", &sock));
    vmm.configure("probe=blk", 1, 128);
    let r = vmm.action("InstanceStart");
    assert_eq!(r.status, 400, "{}", r.body);
    let msg = Vmm::fault(&r);
    assert!(
        msg.contains("vhost-user-blk")
            && msg.contains("drive v")
            && msg.contains("cannot connect to the vhost-user backend at"),
        "{msg}"
    );
    // The VMM is still there, and a backend that appears lets it start.
    assert_eq!(vmm.get("/").status, 200);
    let exports = [(img.as_path(), sock.as_path(), true)];
    let Some(_qsd) = Qsd::start(&vmm.dir.0, &exports) else {
        return;
    };
    vmm.start();
    let line = vmm.expect_line("PROBE blk");
    assert!(line.starts_with("PROBE blk OK capacity=2048"), "{line}");
    assert_eq!(vmm.wait().code(), Some(0));
}

/// 4 KiB random reads (`probe=blk-bench:N`, one at a time) from a
/// 64 MiB page-cached image, side by side: husk's Sync engine, its Async
/// (io_uring) engine, and qemu-storage-daemon over vhost-user. Prints the
/// figures; asserts only that every read worked. The guest runs under
/// KVM's instruction emulator here, so its own instructions weigh on
/// all three alike.
#[test]
fn blk_bench_sync_async_and_vhost_user_side_by_side() {
    const READS: u64 = 2000;
    let mut figures = Vec::new();
    for kind in ["Sync", "Async", "vhost-user"] {
        let mut vmm = Vmm::with_api();
        let img = vmm.dir.path("bench.img");
        std::fs::write(&img, vec![0x5au8; 64 << 20]).unwrap();
        let sock = vmm.dir.path("bench.sock");
        let _qsd = if kind == "vhost-user" {
            let exports = [(img.as_path(), sock.as_path(), true)];
            let Some(q) = Qsd::start(&vmm.dir.0, &exports) else {
                return;
            };
            vmm.put_ok("/drives/d", vhost_drive("d", &sock));
            Some(q)
        } else {
            if !kvm_available() {
                return;
            }
            vmm.put_ok(
                "/drives/d",
                json!({"drive_id": "d", "path_on_host": img, "is_root_device": false,
                       "io_engine": kind, "cache_type": "Writeback"}),
            );
            None
        };
        vmm.configure(&format!("probe=blk,blk-bench:{READS}"), 1, 128);
        vmm.start();
        let blk = vmm.expect_line("PROBE blk ");
        assert!(blk.starts_with("PROBE blk OK"), "{blk}");
        let start = Instant::now();
        let line = vmm.expect_line("PROBE blk-bench");
        let took = start.elapsed();
        assert_eq!(line, format!("PROBE blk-bench:{READS} OK reads={READS}"));
        assert_eq!(vmm.wait().code(), Some(0));
        figures.push(format!(
            "{kind}: {:.0} reads/s ({:.1} us each)",
            READS as f64 / took.as_secs_f64(),
            took.as_secs_f64() * 1e6 / READS as f64
        ));
    }
    eprintln!(
        "blk-bench, 4 KiB random reads, depth 1: {}",
        figures.join("; ")
    );
}
