//! virtio devices end to end: the probe guest drives each device as
//! Linux's driver does, and the tests check the host side (backing files,
//! metrics, the API).

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

fn drive(id: &str, path: &Path, root: bool, ro: bool) -> serde_json::Value {
    json!({"drive_id": id, "path_on_host": path, "is_root_device": root, "is_read_only": ro})
}

#[test]
fn rng_fills_the_guests_buffer_and_interrupts() {
    if !kvm_available() {
        return;
    }
    let mut vmm = Vmm::with_api();
    vmm.put_ok("/entropy", json!({}));
    vmm.configure("probe=rng,wait-cad", 1, 128);
    vmm.start();
    assert_eq!(vmm.expect_line("PROBE rng"), "PROBE rng OK bytes=32 irq=1");
    common::assert_filtered(vmm.pid());
    let m = vmm.get("/metrics").json();
    assert!(m["rng"]["bytes"].as_u64().unwrap() >= 32, "{m}");
    assert_eq!(m["rng"]["errors"], 0, "{m}");
    vmm.action("SendCtrlAltDel");
    assert_eq!(vmm.wait().code(), Some(0));
}

#[test]
fn without_the_device_the_guest_finds_none() {
    if !kvm_available() {
        return;
    }
    let mut vmm = Vmm::with_api();
    vmm.configure("probe=rng", 1, 128);
    vmm.start();
    let line = vmm.expect_line("PROBE rng");
    assert!(line.starts_with("PROBE rng FAIL"), "{line}");
}

#[test]
fn drives_and_entropy_show_in_the_config_and_on_the_command_line() {
    if !kvm_available() {
        return;
    }
    let mut vmm = Vmm::with_api();
    let data = disk(&vmm, "data.img", b"");
    let root = disk(&vmm, "root.img", b"");
    vmm.put_ok("/drives/data", drive("data", &data, false, true));
    vmm.put_ok("/drives/root", drive("root", &root, true, false));
    vmm.put_ok("/entropy", json!({}));
    let cfg = vmm.get("/vm/config").json();
    // The root drive is listed (and attached) first: it is /dev/vda.
    assert_eq!(cfg["drives"][0]["drive_id"], "root");
    assert_eq!(cfg["drives"][1]["is_read_only"], true);
    assert_eq!(cfg["drives"][1]["cache_type"], "Unsafe");
    assert_eq!(cfg["entropy"], json!({}));
    vmm.configure("probe=cmdline", 1, 128);
    vmm.start();
    let line = vmm.expect_line("PROBE cmdline");
    assert!(
        line.ends_with(
            "probe=cmdline root=/dev/vda rw virtio_mmio.device=4K@0xd0000000:5 \
             virtio_mmio.device=4K@0xd0001000:6 virtio_mmio.device=4K@0xd0002000:7"
        ),
        "{line}"
    );
    assert_eq!(vmm.wait().code(), Some(0));
}

#[test]
fn bad_device_configs_get_clear_400s() {
    if !kvm_available() {
        return;
    }
    let vmm = Vmm::with_api();
    let img = disk(&vmm, "ok.img", b"");
    let fifo = vmm.dir.path("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    vmm.put_ok("/drives/root", drive("root", &img, true, false));
    let cases = [
        (
            "/drives/a",
            drive("a", Path::new("/nonexistent/disk.img"), false, false),
            "cannot open /nonexistent/disk.img",
        ),
        (
            "/drives/a",
            drive("b", &img, false, false),
            "differs from the one in the path",
        ),
        (
            "/drives/two",
            drive("two", &img, true, false),
            "only one drive can be the root",
        ),
        (
            "/drives/f",
            drive("f", &fifo, false, false),
            "not a regular file or a block device",
        ),
        (
            "/drives/a",
            drive("a", Path::new("/"), false, true),
            "not a regular file or a block device",
        ),
        (
            "/drives/..",
            drive("..", &img, false, false),
            "invalid drive_id",
        ),
        (
            "/drives/a",
            json!({"drive_id": "a", "path_on_host": img, "is_root_device": false, "io_engine": "Fast"}),
            "unknown variant `Fast`, expected `Sync` or `Async`",
        ),
        (
            "/entropy",
            json!({"rate_limiter": {"ops": {"size": 5, "refill_time": 0}}}),
            "refill_time must be more than 0",
        ),
        (
            "/drives/a",
            json!({"drive_id": "a", "path_on_host": img, "is_root_device": false,
                   "rate_limiter": {"bandwidth": {"size": 1, "refill_time": 1, "burst": 2}}}),
            "unknown field `burst`",
        ),
    ];
    for (path, body, want) in cases {
        let msg = Vmm::fault(&vmm.put(path, body.clone()));
        assert!(msg.contains(want), "{path} {body}: {msg}");
    }
    let r = vmm.patch(
        "/drives/nope",
        json!({"drive_id": "nope", "path_on_host": img}),
    );
    assert!(Vmm::fault(&r).contains("no drive \"nope\""));
    assert_eq!(vmm.get("/").status, 200);
}

#[test]
fn a_running_drive_can_be_swapped_but_not_added() {
    if !kvm_available() {
        return;
    }
    let mut vmm = Vmm::with_api();
    let first = disk(&vmm, "first.img", b"");
    let second = disk(&vmm, "second.img", b"");
    vmm.put_ok("/drives/data", drive("data", &first, false, false));
    vmm.configure("probe=wait-cad", 1, 128);
    vmm.start();
    vmm.expect_line("PROBE BOOT");
    let r = vmm.patch(
        "/drives/data",
        json!({"drive_id": "data", "path_on_host": second}),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(
        vmm.get("/vm/config").json()["drives"][0]["path_on_host"],
        second.to_str().unwrap()
    );
    assert_eq!(vmm.get("/metrics").json()["block"]["swaps"], 1);
    let r = vmm.patch(
        "/drives/data",
        json!({"drive_id": "data", "path_on_host": "/nonexistent"}),
    );
    assert!(Vmm::fault(&r).contains("cannot update drive data"));
    let msg = Vmm::fault(&vmm.put("/drives/more", drive("more", &first, false, false)));
    assert!(msg.contains("not supported after starting"), "{msg}");
    vmm.action("SendCtrlAltDel");
    assert_eq!(vmm.wait().code(), Some(0));
}

#[test]
fn a_rate_limiter_holds_the_second_burst_back() {
    if !kvm_available() {
        return;
    }
    let mut vmm = Vmm::with_api();
    // 32 bytes fill the bucket; the next 32 wait for it to refill.
    vmm.put_ok(
        "/entropy",
        json!({"rate_limiter": {"bandwidth": {"size": 32, "refill_time": 50}}}),
    );
    vmm.configure("probe=rng,rng,wait-cad", 1, 128);
    vmm.start();
    assert_eq!(vmm.expect_line("PROBE rng"), "PROBE rng OK bytes=32 irq=1");
    assert_eq!(vmm.expect_line("PROBE rng"), "PROBE rng OK bytes=32 irq=1");
    let m = vmm.get("/metrics").json();
    assert!(m["rng"]["rate_limited"].as_u64().unwrap() >= 1, "{m}");
    assert_eq!(m["rng"]["bytes"], 64, "{m}");
    vmm.action("SendCtrlAltDel");
    assert_eq!(vmm.wait().code(), Some(0));
}

#[test]
fn blk_writes_land_in_the_backing_file_and_read_only_files_stay_untouched() {
    if !kvm_available() {
        return;
    }
    let mut vmm = Vmm::with_api();
    let rw = disk(&vmm, "rw.img", b"HUSK-PROBE-DISK0");
    let ro = disk(&vmm, "ro.img", b"HUSK-PROBE-DISK1");
    let ro_before = std::fs::read(&ro).unwrap();
    vmm.put_ok("/drives/rw", drive("rw", &rw, false, false));
    let mut ro_drive = drive("ro", &ro, false, true);
    ro_drive["cache_type"] = json!("Writeback");
    vmm.put_ok("/drives/ro", ro_drive);
    vmm.configure("probe=blk,wait-cad", 1, 128);
    vmm.start();
    assert_eq!(
        vmm.expect_line("PROBE blk"),
        "PROBE blk OK capacity=2048 head=HUSK-PROBE-DISK0 wrote=1 past_end=ioerr irq=1 ro=ioerr"
    );
    common::assert_filtered(vmm.pid());
    vmm.action("SendCtrlAltDel");
    assert_eq!(vmm.wait().code(), Some(0));
    let after = std::fs::read(&rw).unwrap();
    assert_eq!(&after[512..528], b"HUSK-PROBE-WRITE");
    assert!(after[528..1024].iter().all(|b| *b == 0));
    assert_eq!(&after[..16], b"HUSK-PROBE-DISK0");
    assert_eq!(std::fs::read(&ro).unwrap(), ro_before);
}

#[test]
fn a_drive_rate_limiter_throttles_the_guests_requests() {
    if !kvm_available() {
        return;
    }
    let mut vmm = Vmm::with_api();
    let rw = disk(&vmm, "rw.img", b"HUSK-PROBE-DISK0");
    let mut d = drive("rw", &rw, false, false);
    // Two operations at once, then one per 20 ms.
    d["rate_limiter"] = json!({"ops": {"size": 2, "refill_time": 40}});
    vmm.put_ok("/drives/rw", d);
    vmm.configure("probe=blk,wait-cad", 1, 128);
    vmm.start();
    let line = vmm.expect_line("PROBE blk");
    assert!(line.starts_with("PROBE blk OK"), "{line}");
    let m = vmm.get("/metrics").json();
    assert!(m["block"]["rate_limited"].as_u64().unwrap() >= 1, "{m}");
    // Lifting the limit by PATCH applies at once.
    let r = vmm.patch(
        "/drives/rw",
        json!({"drive_id": "rw", "rate_limiter": {"ops": {"size": 0, "refill_time": 0}}}),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    vmm.action("SendCtrlAltDel");
    assert_eq!(vmm.wait().code(), Some(0));
}
