//! Devices and memory across a snapshot, with the probe guest on real
//! KVM: a disk and a vsock keep working in the restored process, a diff
//! snapshot holds the pages the guest wrote since the last one, and a
//! page server can feed the restored guest its memory (Uffd).

mod common;
#[path = "common/vsock.rs"]
mod vsock;

use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{
    assert_pages_served, husk_bin, kvm_available, page_server_bin, wait_page_server, TempDir, Vmm,
};
use serde_json::json;
use vsock::{port_path, probe_exchange};

const PAGE: u64 = 4096;

fn pause(vmm: &Vmm) {
    let r = vmm.patch("/vm", json!({"state": "Paused"}));
    assert_eq!(r.status, 204, "{}", r.body);
}

fn snapshot(vmm: &Vmm, kind: &str, state: &Path, mem: &Path) {
    let r = vmm.put(
        "/snapshot/create",
        json!({"snapshot_type": kind, "snapshot_path": state, "mem_file_path": mem}),
    );
    assert_eq!(r.status, 204, "{}", r.body);
}

fn load(vmm: &Vmm, body: serde_json::Value) {
    let r = vmm.put("/snapshot/load", body);
    assert_eq!(r.status, 204, "{}", r.body);
}

fn cad(vmm: &Vmm) {
    assert_eq!(vmm.action("SendCtrlAltDel").status, 204);
}

#[test]
fn a_disk_and_a_vsock_work_in_the_restored_process() {
    if !kvm_available() {
        return;
    }
    let dir = TempDir::new();
    let disk = dir.path("disk.img");
    let mut bytes = vec![0u8; 1 << 20];
    bytes[..9].copy_from_slice(b"DISK-HEAD");
    std::fs::write(&disk, bytes).unwrap();
    let uds = dir.path("a.vsock");
    let to_host = UnixListener::bind(port_path(&uds, 5678)).unwrap();

    let mut a = Vmm::with_api();
    a.put_ok(
        "/drives/data",
        json!({"drive_id": "data", "path_on_host": disk, "is_root_device": false, "is_read_only": false}),
    );
    a.put_ok("/vsock", json!({"guest_cid": 3, "uds_path": uds}));
    a.configure(
        "probe=blk,vsock,wait-cad,blk-again,vsock-reset,wait-cad",
        1,
        128,
    );
    a.start();
    assert_eq!(
        probe_exchange(&uds, &to_host, "before\n"),
        "HUSK-PROBE-VSOCK"
    );
    a.expect_line("PROBE blk OK");
    a.expect_line("PROBE vsock OK");
    // The guest now waits for Ctrl-Alt-Del, its devices set up; the
    // snapshot below is taken under the VMM thread's filter.
    common::assert_filtered(a.pid());
    pause(&a);
    let (state, mem) = (dir.path("s"), dir.path("m"));
    snapshot(&a, "Full", &state, &mem);
    drop(a);

    // The clone gets its own vsock socket; the disk is re-opened by path.
    let uds_b = dir.path("b.vsock");
    let to_host_b = UnixListener::bind(port_path(&uds_b, 5678)).unwrap();
    let mut b = Vmm::with_api();
    load(
        &b,
        json!({
            "snapshot_path": state,
            "mem_backend": {"backend_type": "File", "backend_path": mem},
            "resume_vm": true,
            "vsock_override": {"uds_path": uds_b},
        }),
    );
    cad(&b);
    // blk-again goes on with the queue set up before the snapshot.
    assert_eq!(
        b.expect_line("PROBE blk-again"),
        "PROBE blk-again OK wrote=1"
    );
    let on_disk = std::fs::read(&disk).unwrap();
    assert_eq!(&on_disk[1024..1042], b"HUSK-AFTER-RESTORE");
    // The guest was told its connections were reset, and new ones work
    // both ways through the clone's socket.
    assert_eq!(
        probe_exchange(&uds_b, &to_host_b, "after\n"),
        "HUSK-AFTER-RESTORE"
    );
    assert_eq!(
        b.expect_line("PROBE vsock-reset"),
        "PROBE vsock-reset OK echoed=6 sent=18"
    );
    common::assert_filtered(b.pid());
    cad(&b);
    assert_eq!(b.wait().code(), Some(0));
}

/// Bytes a file occupies on disk.
fn allocated(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().blocks() * 512
}

/// The first page a `PROBE dirty:N OK pages=N first=0x...` line names.
fn first_page(line: &str) -> u64 {
    let hex = line.rsplit("first=0x").next().unwrap();
    u64::from_str_radix(hex.trim(), 16).unwrap()
}

#[test]
fn a_diff_holds_the_pages_dirtied_since_the_last_snapshot_and_rebases() {
    if !kvm_available() {
        return;
    }
    let dir = TempDir::new();
    let a = Vmm::with_api();
    let mut a = a;
    a.configure(
        "probe=dirty:1000,wait-cad,dirty:300,wait-cad,count:3",
        1,
        128,
    );
    a.put_ok(
        "/machine-config",
        json!({"vcpu_count": 1, "mem_size_mib": 128, "track_dirty_pages": true}),
    );
    a.start();
    a.expect_line("PROBE dirty:1000 OK");
    pause(&a);
    let (base_state, base_mem) = (dir.path("base.snap"), dir.path("base.mem"));
    snapshot(&a, "Full", &base_state, &base_mem);
    assert!(
        allocated(&base_mem) >= 1000 * PAGE,
        "{}",
        allocated(&base_mem)
    );
    let r = a.patch("/vm", json!({"state": "Resumed"}));
    assert_eq!(r.status, 204);
    cad(&a);
    let second = first_page(&a.expect_line("PROBE dirty:300 OK"));
    pause(&a);
    let (diff_state, diff_mem) = (dir.path("diff.snap"), dir.path("diff.mem"));
    snapshot(&a, "Diff", &diff_state, &diff_mem);
    // The 300 pages, and little else (the guest's stack and the rings
    // and page-table bits the check touched).
    let size = allocated(&diff_mem);
    assert!(
        (300 * PAGE..(300 + 32) * PAGE).contains(&size),
        "diff holds {} pages",
        size / PAGE
    );
    assert_eq!(std::fs::metadata(&diff_mem).unwrap().len(), 128 << 20);
    let diff = std::fs::read(&diff_mem).unwrap();
    assert_eq!(diff[second as usize], ((second >> 12) | 1) as u8);
    drop(diff);
    drop(a);

    // Merged onto the base, the diff restores a guest that goes on.
    let out = Command::new(husk_bin())
        .args(["snapshot", "rebase"])
        .arg(&diff_mem)
        .arg("--base")
        .arg(&base_mem)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let merged = std::fs::read(&base_mem).unwrap();
    assert_eq!(merged[second as usize], ((second >> 12) | 1) as u8);
    let mut b = Vmm::with_api();
    load(
        &b,
        json!({"snapshot_path": diff_state, "mem_file_path": base_mem, "resume_vm": true}),
    );
    cad(&b);
    b.expect_line("PROBE count:3 OK");
    assert_eq!(b.wait().code(), Some(0));
}

#[test]
fn a_page_server_feeds_a_restored_guest_through_userfaultfd() {
    if !kvm_available() {
        return;
    }
    let dir = TempDir::new();
    let mut a = Vmm::with_api();
    a.configure("probe=count:100000000", 1, 128);
    a.start();
    a.expect_line("COUNT 100");
    pause(&a);
    let (state, mem) = (dir.path("s"), dir.path("m"));
    snapshot(&a, "Full", &state, &mem);
    a.drain(Duration::from_millis(300));
    let last = a
        .seen
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("COUNT ")?.parse::<u64>().ok())
        .unwrap();
    drop(a);

    let sock = dir.path("uffd.sock");
    let mut server = Command::new(page_server_bin())
        .arg(&sock)
        .arg(&mem)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_page_server(&sock, Duration::from_secs(10));
    let mut b = Vmm::with_api();
    load(
        &b,
        json!({
            "snapshot_path": state,
            "mem_backend": {"backend_type": "Uffd", "backend_path": sock},
            "resume_vm": true,
        }),
    );
    let next = b.expect_line("COUNT ");
    let n: u64 = next.strip_prefix("COUNT ").unwrap().parse().unwrap();
    assert!(n == last + 1 || n == last + 2, "{next} after COUNT {last}");
    drop(b);
    assert_pages_served(&mut server);
}
