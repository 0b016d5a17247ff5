//! virtio-pmem end to end: the probe guest finds each device's window
//! far above RAM, reads the host file through it, writes into it and
//! sends FLUSH; the tests check the file, a read-only device's file left
//! alone while the VMM goes on, hostile requests, the API's answers,
//! the config file, the root device's command line, and a snapshot.

mod common;

use std::path::Path;

use common::{kvm_available, TempDir, Vmm};
use serde_json::json;

const HEAD: &[u8; 8] = b"PMEMHEAD";
const PATTERN: &[u8; 16] = b"husk-pmem-write!";
/// Where the probe writes (tests/guest/pmem.c).
const WRITE_AT: usize = 4096;
/// The device memory above RAM starts at 512 GiB (layout.rs).
const DEVICE_MEMORY: u64 = 512 << 30;

/// A backing file of `len` bytes that starts with HEAD.
fn backing(dir: &TempDir, name: &str, len: usize) -> std::path::PathBuf {
    let p = dir.path(name);
    let mut bytes = vec![0u8; len];
    bytes[..8].copy_from_slice(HEAD);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn head_hex() -> String {
    format!("{:#x}", u64::from_le_bytes(*HEAD))
}

fn written(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()[WRITE_AT..WRITE_AT + 16].to_vec()
}

#[test]
fn the_guest_reads_the_file_its_writes_reach_it_and_a_read_only_one_stays_untouched() {
    if !kvm_available() {
        return;
    }
    let dir = TempDir::new();
    // 3 MiB: a 4 MiB window. The read-only one comes after it.
    let rw = backing(&dir, "rw.img", 3 << 20);
    let ro = backing(&dir, "ro.img", 1 << 20);
    let mut vmm = Vmm::with_api();
    vmm.put_ok(
        "/pmem/rw",
        json!({"id": "rw", "path_on_host": rw, "root_device": false}),
    );
    vmm.put_ok(
        "/pmem/ro",
        json!({"id": "ro", "path_on_host": ro, "read_only": true}),
    );
    vmm.configure("probe=pmem:0,pmem-hostile:0,pmem:1,wait-cad", 1, 128);
    vmm.start();
    assert_eq!(
        vmm.expect_line("PROBE pmem:0 "),
        format!(
            "PROBE pmem:0 OK start={DEVICE_MEMORY:#x} size=0x400000 head={} readback=1 flush=0 used=4",
            head_hex()
        )
    );
    assert_eq!(written(&rw), PATTERN);
    assert_eq!(
        vmm.expect_line("PROBE pmem-hostile:0"),
        "PROBE pmem-hostile:0 OK"
    );
    // The read-only window: the file reads through, the writes are
    // dropped (each one an exit the VMM counts), FLUSH still answers.
    assert_eq!(
        vmm.expect_line("PROBE pmem:1 "),
        format!(
            "PROBE pmem:1 OK start={:#x} size=0x200000 head={} readback=0 flush=0 used=4",
            DEVICE_MEMORY + (4 << 20),
            head_hex()
        )
    );
    assert_eq!(written(&ro), [0u8; 16]);
    assert!(vmm.is_running());
    let m = vmm.get("/metrics").json();
    let pm = &m["pmem"];
    assert_eq!(pm["activations"], 2, "{m}");
    assert_eq!(pm["read_only_writes"], 16, "{m}");
    // pmem:0, the good one after the hostile ones, pmem:1.
    assert_eq!(pm["flushes"], 3, "{m}");
    // An unknown type, a device-writable request, a read-only status, a
    // 2-byte status.
    assert_eq!(pm["malformed"], 4, "{m}");
    assert_eq!(pm["sync_fails"], 0, "{m}");
    let cfg = vmm.get("/vm/config").json();
    assert_eq!(cfg["pmem"][1]["id"], "ro", "{cfg}");
    assert_eq!(cfg["pmem"][1]["read_only"], true, "{cfg}");
    assert_eq!(cfg["pmem"][0]["root_device"], false, "{cfg}");
    common::assert_filtered(vmm.pid());
    // PUT after start is refused; PATCH swaps the rate limiter.
    let r = vmm.put("/pmem/x", json!({"id": "x", "path_on_host": rw}));
    assert!(Vmm::fault(&r).contains("after starting"), "{}", r.body);
    let r = vmm.patch(
        "/pmem/rw",
        json!({"id": "rw", "rate_limiter": {"ops": {"size": 10, "refill_time": 100}}}),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(
        vmm.get("/vm/config").json()["pmem"][0]["rate_limiter"]["ops"]["size"],
        10
    );
    let r = vmm.patch("/pmem/nope", json!({"id": "nope", "rate_limiter": {}}));
    assert!(
        Vmm::fault(&r).contains("no pmem device \"nope\""),
        "{}",
        r.body
    );
    vmm.action("SendCtrlAltDel");
    assert_eq!(vmm.wait().code(), Some(0));
}

#[test]
fn bad_pmem_requests_get_clear_400s() {
    if !kvm_available() {
        return;
    }
    let dir = TempDir::new();
    let img = backing(&dir, "a.img", 4096);
    let empty = dir.path("empty.img");
    std::fs::write(&empty, b"").unwrap();
    let vmm = Vmm::with_api();
    vmm.put_ok(
        "/pmem/root",
        json!({"id": "root", "path_on_host": img, "root_device": true}),
    );
    for (method, path, body, want) in [
        (
            "PUT",
            "/pmem/a",
            json!({"id": "a"}),
            "missing field `path_on_host`",
        ),
        (
            "PUT",
            "/pmem/a",
            json!({"id": "a", "path_on_host": img, "size": 1}),
            "unknown field `size`",
        ),
        (
            "PUT",
            "/pmem/a",
            json!({"id": "b", "path_on_host": img}),
            "differs from the one in the path",
        ),
        (
            "PUT",
            "/pmem/a",
            json!({"id": "a", "path_on_host": dir.path("none")}),
            "No such file",
        ),
        (
            "PUT",
            "/pmem/a",
            json!({"id": "a", "path_on_host": empty}),
            "is empty",
        ),
        (
            "PUT",
            "/pmem/a",
            json!({"id": "a", "path_on_host": dir.0, "read_only": true}),
            "not a regular file",
        ),
        (
            "PUT",
            "/pmem/a",
            json!({"id": "a", "path_on_host": img, "root_device": true}),
            "a root device is configured already (pmem \"root\")",
        ),
        (
            "PUT",
            "/drives/rootfs",
            json!({"drive_id": "rootfs", "path_on_host": img, "is_root_device": true}),
            "a root device is configured already (pmem \"root\")",
        ),
        (
            "PATCH",
            "/pmem/a",
            json!({"id": "a", "rate_limiter": {}}),
            "no pmem device \"a\"",
        ),
        (
            "PATCH",
            "/pmem/root",
            json!({"id": "root", "rate_limiter": {"ops": {"size": 1, "refill_time": 0}}}),
            "refill_time",
        ),
    ] {
        let r = vmm.request(method, path, Some(&body.to_string()));
        assert!(
            Vmm::fault(&r).contains(want),
            "{method} {path}: {} (want {want:?})",
            r.body
        );
    }
    // The same id replaces; a drive cannot be root while pmem is.
    vmm.put_ok(
        "/pmem/root",
        json!({"id": "root", "path_on_host": img, "root_device": false}),
    );
    vmm.put_ok(
        "/drives/rootfs",
        json!({"drive_id": "rootfs", "path_on_host": img, "is_root_device": true}),
    );
    let r = vmm.put(
        "/pmem/root",
        json!({"id": "root", "path_on_host": img, "root_device": true}),
    );
    assert!(Vmm::fault(&r).contains("(drive \"rootfs\")"), "{}", r.body);
    assert_eq!(
        vmm.get("/vm/config").json()["pmem"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn a_root_pmem_from_the_config_file_names_the_root_and_ids_are_unique() {
    if !kvm_available() {
        return;
    }
    let dir = TempDir::new();
    let img = backing(&dir, "root.img", 4096);
    let mut vmm = Vmm::with_config(|kernel| {
        json!({
            "boot-source": {"kernel_image_path": kernel, "boot_args": "probe=cmdline,pmem:0"},
            "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
            "pmem": [{"id": "data", "path_on_host": img},
                     {"id": "root", "path_on_host": img, "root_device": true, "read_only": true}],
        })
    });
    let line = vmm.expect_line("PROBE cmdline");
    assert!(line.contains(" root=/dev/pmem0 ro "), "{line}");
    // The root device is attached first: it is pmem0, read-only.
    assert!(
        vmm.expect_line("PROBE pmem:0")
            .contains("readback=0 flush=0"),
        "the root device is not the first one"
    );
    assert_eq!(vmm.wait().code(), Some(0));
    let cfg = dir.path("dup.json");
    let kernel = common::probe_kernel(&dir);
    std::fs::write(
        &cfg,
        json!({
            "boot-source": {"kernel_image_path": kernel},
            "pmem": [{"id": "a", "path_on_host": img}, {"id": "a", "path_on_host": img}],
        })
        .to_string(),
    )
    .unwrap();
    let out = std::process::Command::new(common::husk_bin())
        .args(["vmm", "--no-api", "--config-file", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pmem id \"a\" is given twice"), "{err}");
}

#[test]
fn a_pmem_device_is_mapped_again_from_its_file_after_a_snapshot() {
    if !kvm_available() {
        return;
    }
    let dir = TempDir::new();
    let img = backing(&dir, "p.img", 2 << 20);
    let mut a = Vmm::with_api();
    a.put_ok("/pmem/p", json!({"id": "p", "path_on_host": img}));
    a.configure("probe=pmem:0,wait-cad,pmem-again:0,wait-cad", 1, 128);
    a.start();
    assert!(a.expect_line("PROBE pmem:0").contains("readback=1 flush=0"));
    assert_eq!(a.patch("/vm", json!({"state": "Paused"})).status, 204);
    let (state, mem) = (dir.path("s"), dir.path("m"));
    let r = a.put(
        "/snapshot/create",
        json!({"snapshot_type": "Full", "snapshot_path": state, "mem_file_path": mem}),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    drop(a);
    // The file's contents are the device's, not the snapshot's.
    assert_eq!(written(&img), PATTERN);
    assert_eq!(std::fs::metadata(&mem).unwrap().len(), 128 << 20);

    // A file that grew would move the window: refused.
    let grown = dir.path("grown");
    std::fs::copy(&img, &grown).unwrap();
    let b = Vmm::with_api();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .unwrap()
        .set_len((2 << 20) + 1)
        .unwrap();
    let r = b.put(
        "/snapshot/load",
        json!({"snapshot_path": state, "mem_backend": {"backend_type": "File", "backend_path": mem}}),
    );
    assert!(Vmm::fault(&r).contains("size differs"), "{}", r.body);
    std::fs::rename(&grown, &img).unwrap();

    let mut c = Vmm::with_api();
    let r = c.put(
        "/snapshot/load",
        json!({
            "snapshot_path": state,
            "mem_backend": {"backend_type": "File", "backend_path": mem},
            "resume_vm": true,
        }),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(c.get("/vm/config").json()["pmem"][0]["id"], "p");
    common::assert_filtered(c.pid());
    c.action("SendCtrlAltDel");
    assert_eq!(
        c.expect_line("PROBE pmem-again:0"),
        "PROBE pmem-again:0 OK readback=1 flush=0"
    );
    c.action("SendCtrlAltDel");
    assert_eq!(c.wait().code(), Some(0));
}
