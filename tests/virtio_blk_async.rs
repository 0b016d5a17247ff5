//! `io_engine: "Async"` end to end: the probe guest drives drives whose
//! requests husk serves through io_uring (the same `blk` checks as the
//! Sync engine's, and `blk-hostile`), the bytes land in the backing
//! files, a snapshot of a guest with an Async drive restores, and where
//! the host refuses io_uring the start is a 400 that says why.

mod common;

use std::path::{Path, PathBuf};

use common::{kvm_available, Vmm};
use serde_json::json;

/// A 1 MiB disk image whose sector 0 starts with `head`.
fn disk(vmm: &Vmm, name: &str, head: &[u8]) -> PathBuf {
    let p = vmm.dir.path(name);
    let mut bytes = vec![0u8; 1 << 20];
    bytes[..head.len()].copy_from_slice(head);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn drive(id: &str, path: &Path, ro: bool, engine: &str) -> serde_json::Value {
    json!({"drive_id": id, "path_on_host": path, "is_root_device": false,
           "is_read_only": ro, "io_engine": engine, "cache_type": "Writeback"})
}

/// What `probe=blk,blk-hostile` prints with `engine`; the bytes of the
/// writable drive afterwards.
fn run_blk(engine: &str) -> (String, String, Vec<u8>, serde_json::Value) {
    let mut vmm = Vmm::with_api();
    let rw = disk(&vmm, "rw.img", b"HUSK-PROBE-DISK0");
    let ro = disk(&vmm, "ro.img", b"HUSK-PROBE-DISK1");
    let ro_before = std::fs::read(&ro).unwrap();
    vmm.put_ok("/drives/rw", drive("rw", &rw, false, engine));
    vmm.put_ok("/drives/ro", drive("ro", &ro, true, engine));
    assert_eq!(
        vmm.get("/vm/config").json()["drives"][0]["io_engine"],
        engine
    );
    vmm.configure("probe=blk,blk-hostile,wait-cad", 1, 128);
    vmm.start();
    let blk = vmm.expect_line("PROBE blk ");
    let hostile = vmm.expect_line("PROBE blk-hostile");
    // Every request after this ran under the VMM thread's filter.
    common::assert_filtered(vmm.pid());
    let metrics = vmm.get("/metrics").json();
    vmm.action("SendCtrlAltDel");
    assert_eq!(vmm.wait().code(), Some(0));
    assert_eq!(std::fs::read(&ro).unwrap(), ro_before);
    (blk, hostile, std::fs::read(&rw).unwrap(), metrics)
}

#[test]
fn the_probe_reads_writes_and_flushes_through_io_uring() {
    if !kvm_available() {
        return;
    }
    let (blk, hostile, after, m) = run_blk("Async");
    assert_eq!(
        blk,
        "PROBE blk OK capacity=2048 head=HUSK-PROBE-DISK0 wrote=1 past_end=ioerr irq=1 ro=ioerr"
    );
    assert_eq!(&after[..16], b"HUSK-PROBE-DISK0");
    assert_eq!(&after[512..528], b"HUSK-PROBE-WRITE");
    assert!(after[528..1024].iter().all(|b| *b == 0));
    // No hostile request came back OK, each was answered, and a good read
    // worked after them. Data outside RAM: the read lands nowhere and says
    // IOERR; the write never reads it (no status: the Sync code's answer).
    assert_eq!(hostile, "PROBE blk-hostile OK statuses=1f1112");
    assert!(m["block"]["read_bytes"].as_u64().unwrap() >= 4 * 512, "{m}");
    assert!(m["block"]["write_bytes"].as_u64().unwrap() >= 512, "{m}");
}

#[test]
fn hostile_requests_get_errors_from_the_sync_engine_too() {
    if !kvm_available() {
        return;
    }
    let (blk, hostile, after, _) = run_blk("Sync");
    assert!(blk.starts_with("PROBE blk OK capacity=2048"), "{blk}");
    assert_eq!(&after[512..528], b"HUSK-PROBE-WRITE");
    assert!(
        hostile.starts_with("PROBE blk-hostile OK statuses="),
        "{hostile}"
    );
}

/// Makes io_uring_setup fail with EPERM in the child, as a seccomp policy
/// or `kernel.io_uring_disabled` would.
fn deny_io_uring() -> std::io::Result<()> {
    let filter = [
        // A = seccomp_data.nr
        libc::sock_filter {
            code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16,
            jt: 0,
            jf: 0,
            k: 0,
        },
        libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt: 0,
            jf: 1,
            k: libc::SYS_io_uring_setup as u32,
        },
        libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
        },
        libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ALLOW,
        },
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut _,
    };
    // SAFETY: prctl with plain integer arguments, then a filter program
    // that lives on this stack for the duration of the call.
    let ok = unsafe {
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
            && libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &prog as *const libc::sock_fprog,
            ) == 0
    };
    if ok {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[test]
fn async_fails_at_start_with_a_clear_400_where_io_uring_is_refused() {
    if !kvm_available() {
        return;
    }
    let vmm = Vmm::with_api_hooked(&[], None, Some(deny_io_uring));
    let rw = disk(&vmm, "rw.img", b"");
    vmm.put_ok("/drives/rw", drive("rw", &rw, false, "Async"));
    vmm.configure("probe=blk", 1, 128);
    let r = vmm.action("InstanceStart");
    assert_eq!(r.status, 400, "{}", r.body);
    let msg = Vmm::fault(&r);
    assert!(
        msg.contains("io_engine Async: this host refuses io_uring")
            && msg.contains("Operation not permitted"),
        "{msg}"
    );
    // The same VMM starts with the Sync engine.
    vmm.put_ok("/drives/rw", drive("rw", &rw, false, "Sync"));
    let r = vmm.action("InstanceStart");
    assert_eq!(r.status, 204, "{}", r.body);
}

#[test]
fn a_guest_with_an_async_drive_is_snapshotted_and_restored() {
    if !kvm_available() {
        return;
    }
    let mut a = Vmm::with_api();
    let rw = disk(&a, "rw.img", b"");
    a.put_ok("/drives/rw", drive("rw", &rw, false, "Async"));
    a.configure("probe=blk,wait-cad,blk-again", 1, 128);
    a.start();
    assert!(a.expect_line("PROBE blk ").starts_with("PROBE blk OK"));
    let r = a.patch("/vm", json!({"state": "Paused"}));
    assert_eq!(r.status, 204, "{}", r.body);
    let (state, mem) = (a.dir.path("s"), a.dir.path("m"));
    let r = a.put(
        "/snapshot/create",
        json!({"snapshot_path": state, "mem_file_path": mem}),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    let mut b = Vmm::with_api();
    let r = b.put(
        "/snapshot/load",
        json!({"snapshot_path": state, "mem_backend": {"backend_type": "File", "backend_path": mem},
               "resume_vm": true}),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(
        b.get("/vm/config").json()["drives"][0]["io_engine"],
        "Async"
    );
    assert_eq!(b.action("SendCtrlAltDel").status, 204);
    assert_eq!(
        b.expect_line("PROBE blk-again"),
        "PROBE blk-again OK wrote=1"
    );
    assert_eq!(b.wait().code(), Some(0));
    let after = std::fs::read(&rw).unwrap();
    assert_eq!(&after[512..528], b"HUSK-PROBE-WRITE");
    assert_eq!(&after[1024..1042], b"HUSK-AFTER-RESTORE");
}
