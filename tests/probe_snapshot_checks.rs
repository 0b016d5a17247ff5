//! The probe checks the snapshot tests use (`dirty:N`, `blk-again`,
//! `vsock-reset`), proven on a plain cold boot: no snapshot is taken here.
//! `blk-again` and `vsock-reset` go on with a device an earlier check set
//! up; without one they fail cleanly, and `vsock-reset` (whose event only a
//! restore sends) fails on its bounded wait.

mod common;
#[path = "common/vsock.rs"]
mod vsock;

use std::io::{BufRead, Read, Write};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{kvm_available, Vmm};
use serde_json::json;
use vsock::{accept, connect, port_path};

/// `first=0x<hex>` of a `PROBE dirty:N OK pages=N first=...` line.
fn first_page(line: &str) -> u64 {
    let hex = line
        .rsplit_once(" first=0x")
        .unwrap_or_else(|| panic!("no first= in {line:?}"))
        .1;
    u64::from_str_radix(hex, 16).unwrap()
}

#[test]
fn dirty_writes_fresh_pages_each_time() {
    if !kvm_available() {
        return;
    }
    let mut vmm = Vmm::with_api();
    vmm.configure("probe=dirty:100,dirty:50,dirty:0", 1, 128);
    vmm.start();
    let a = vmm.expect_line("PROBE dirty:100");
    assert!(a.starts_with("PROBE dirty:100 OK pages=100 first="), "{a}");
    let b = vmm.expect_line("PROBE dirty:50");
    assert!(b.starts_with("PROBE dirty:50 OK pages=50 first="), "{b}");
    let z = vmm.expect_line("PROBE dirty:0");
    // The region starts at 64 MiB; each run goes on after the last page.
    assert_eq!(first_page(&a), 64 << 20);
    assert_eq!(first_page(&b), (64 << 20) + 100 * 4096);
    assert_eq!(
        z,
        format!(
            "PROBE dirty:0 OK pages=0 first={:#x}",
            (64 << 20) + 150 * 4096
        )
    );
    vmm.expect_line("PROBE DONE");
    assert_eq!(vmm.wait().code(), Some(0));
}

#[test]
fn dirty_fails_cleanly_past_the_end_of_ram() {
    if !kvm_available() {
        return;
    }
    let mut vmm = Vmm::with_api();
    // 128 MiB leaves 64 MiB (16384 pages) above 64 MiB.
    vmm.configure("probe=dirty:16385,dirty:16384,dirty:1,dirty:x", 1, 128);
    vmm.start();
    assert_eq!(
        vmm.expect_line("PROBE dirty:16385"),
        "PROBE dirty:16385 FAIL 16385 pages from 0x4000000 do not fit below 0x8000000 \
         (the end of RAM or the initrd)"
    );
    // A failure dirties nothing, so the whole range is still there.
    assert_eq!(
        vmm.expect_line("PROBE dirty:16384"),
        "PROBE dirty:16384 OK pages=16384 first=0x4000000"
    );
    assert!(vmm
        .expect_line("PROBE dirty:1")
        .starts_with("PROBE dirty:1 FAIL 1 pages from 0x8000000"));
    assert_eq!(
        vmm.expect_line("PROBE dirty:x"),
        "PROBE dirty:x FAIL usage: dirty:N"
    );
    assert_eq!(vmm.wait().code(), Some(0));
}

/// Under every boot protocol (the memory map and initrd come from the
/// zero page or from hvm_start_info), dirty:N stops below the initrd at
/// the top of RAM.
#[test]
fn dirty_stops_below_an_initrd() {
    if !kvm_available() {
        return;
    }
    use husk::probe::ProbeFormat;
    for format in [ProbeFormat::Linux64, ProbeFormat::Pvh, ProbeFormat::Bzimage] {
        dirty_below_initrd(format);
    }
}

fn dirty_below_initrd(format: husk::probe::ProbeFormat) {
    let mut vmm = Vmm::with_api();
    let kernel = vmm.dir.path("kernel");
    husk::probe::write_probe_as(&kernel, format).unwrap();
    let initrd = vmm.dir.path("initrd");
    std::fs::write(&initrd, vec![7u8; 8192]).unwrap();
    let boot = json!({"kernel_image_path": kernel, "initrd_path": initrd,
                      "boot_args": "probe=initrd,dirty:16384,dirty:100"});
    vmm.put_ok("/boot-source", boot);
    vmm.put_ok(
        "/machine-config",
        json!({"vcpu_count": 1, "mem_size_mib": 128}),
    );
    vmm.start();
    let line = vmm.expect_line("PROBE initrd");
    let addr = line
        .split(" addr=0x")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .unwrap_or_else(|| panic!("{line}"));
    let addr = u64::from_str_radix(addr, 16).unwrap();
    assert!(addr > 64 << 20 && addr < 128 << 20, "{line}");
    assert_eq!(
        vmm.expect_line("PROBE dirty:16384"),
        format!(
            "PROBE dirty:16384 FAIL 16384 pages from 0x4000000 do not fit below {addr:#x} \
             (the end of RAM or the initrd)"
        )
    );
    assert_eq!(
        vmm.expect_line("PROBE dirty:100"),
        "PROBE dirty:100 OK pages=100 first=0x4000000"
    );
    assert_eq!(vmm.wait().code(), Some(0));
}

/// A 1 MiB disk image.
fn disk(vmm: &Vmm) -> PathBuf {
    let p = vmm.dir.path("rw.img");
    std::fs::write(&p, vec![0u8; 1 << 20]).unwrap();
    p
}

#[test]
fn blk_again_writes_sector_2_on_the_queue_blk_set_up() {
    if !kvm_available() {
        return;
    }
    let mut vmm = Vmm::with_api();
    let rw = disk(&vmm);
    vmm.put_ok(
        "/drives/rw",
        json!({"drive_id": "rw", "path_on_host": rw, "is_root_device": false, "is_read_only": false}),
    );
    vmm.configure("probe=blk,blk-again,blk-again", 1, 128);
    vmm.start();
    let line = vmm.expect_line("PROBE blk ");
    assert!(line.starts_with("PROBE blk OK"), "{line}");
    // Twice: each takes a fresh vector and goes on from the ring indices.
    assert_eq!(
        vmm.expect_line("PROBE blk-again"),
        "PROBE blk-again OK wrote=1"
    );
    assert_eq!(
        vmm.expect_line("PROBE blk-again"),
        "PROBE blk-again OK wrote=1"
    );
    assert_eq!(vmm.wait().code(), Some(0));
    let after = std::fs::read(&rw).unwrap();
    assert_eq!(&after[512..528], b"HUSK-PROBE-WRITE");
    assert_eq!(&after[1024..1042], b"HUSK-AFTER-RESTORE");
    assert!(after[1042..1536].iter().all(|b| *b == 0));
}

#[test]
fn blk_again_without_blk_fails_cleanly() {
    if !kvm_available() {
        return;
    }
    let mut vmm = Vmm::with_api();
    let rw = disk(&vmm);
    vmm.put_ok(
        "/drives/rw",
        json!({"drive_id": "rw", "path_on_host": rw, "is_root_device": false, "is_read_only": false}),
    );
    vmm.configure("probe=blk-again,count:1", 1, 128);
    vmm.start();
    assert_eq!(
        vmm.expect_line("PROBE blk-again"),
        "PROBE blk-again FAIL blk not set up"
    );
    vmm.expect_line("PROBE count:1 OK");
    assert_eq!(vmm.wait().code(), Some(0));
    assert!(std::fs::read(&rw).unwrap().iter().all(|b| *b == 0));
}

#[test]
fn vsock_reset_times_out_without_a_restore_and_fails_cleanly() {
    if !kvm_available() {
        return;
    }
    let mut vmm = Vmm::with_api();
    let uds = vmm.dir.path("v.sock");
    let to_host = UnixListener::bind(port_path(&uds, 5678)).unwrap();
    vmm.put_ok("/vsock", json!({"guest_cid": 3, "uds_path": uds}));
    vmm.configure("probe=vsock-reset,vsock,vsock-reset,vsock-reset", 1, 128);
    vmm.start();
    assert_eq!(
        vmm.expect_line("PROBE vsock-reset"),
        "PROBE vsock-reset FAIL vsock not set up"
    );
    // What `vsock` needs from the host, as in tests/virtio_vsock.rs.
    let mut s = connect(&uds, 1234).0;
    s.get_mut().write_all(b"hello vsock\n").unwrap();
    let mut echo = String::new();
    s.read_line(&mut echo).unwrap();
    assert_eq!(echo, "hello vsock\n");
    let mut got = String::new();
    accept(&to_host).read_to_string(&mut got).unwrap();
    assert_eq!(got, "HUSK-PROBE-VSOCK");
    assert_eq!(
        vmm.expect_line("PROBE vsock "),
        "PROBE vsock OK echoed=12 sent=16"
    );
    // A cold boot sends no TRANSPORT_RESET: the bounded wait ends in a FAIL,
    // which resets the device, so the next one finds nothing set up.
    let t = Instant::now();
    assert_eq!(
        vmm.expect_line("PROBE vsock-reset"),
        "PROBE vsock-reset FAIL no TRANSPORT_RESET event (timed out waiting for the event queue)"
    );
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
    assert_eq!(
        vmm.expect_line("PROBE vsock-reset"),
        "PROBE vsock-reset FAIL vsock not set up"
    );
    assert_eq!(vmm.wait().code(), Some(0));
}

/// tests/snapshot.rs counts to 10^8 and pauses mid-count; check_arg takes
/// up to about 10^9.
#[test]
fn count_takes_a_hundred_million() {
    if !kvm_available() {
        return;
    }
    let mut vmm = Vmm::with_api();
    vmm.configure("probe=count:100000000", 1, 128);
    vmm.start();
    // One line per number; the first few suffice here.
    assert_eq!(vmm.expect_line("COUNT "), "COUNT 1");
    assert_eq!(vmm.expect_line("COUNT "), "COUNT 2");
    assert_eq!(vmm.expect_line("COUNT "), "COUNT 3");
}
