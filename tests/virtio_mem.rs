//! Memory hotplug (virtio-mem) end to end: the probe guest drives the
//! device as Linux's driver does; the tests set the requested size
//! through the API, see the guest plug towards it (and be refused past
//! it), watch the VMM's resident memory grow with plugged memory the
//! guest touches and fall when it unplugs, and check the API's answers,
//! hostile requests, and plugged memory across a snapshot; with
//! `huge_pages` "2M", the region reserved with RAM and restored through
//! a page server.

mod common;

use std::time::{Duration, Instant};

use common::{kvm_available, status_field, TempDir, Vmm};
use serde_json::json;

const MIB: u64 = 1 << 20;
/// The device memory above RAM starts at 512 GiB (layout.rs).
const ADDR: u64 = 512 << 30;

fn rss_kib(pid: u32) -> u64 {
    let v = status_field(pid as i32, "VmRSS");
    v.trim_end_matches("kB").trim().parse().unwrap()
}

fn hotplug(vmm: &Vmm) -> serde_json::Value {
    let r = vmm.get("/hotplug/memory");
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

/// The plugged size GET answers, once it is `want` (the guest's request
/// is served on the VMM thread, after the serial line may have come).
fn plugged_mib(vmm: &Vmm, want: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let p = hotplug(vmm)["plugged_size_mib"].as_u64().unwrap();
        if p == want || Instant::now() > deadline {
            return p;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn the_guest_plugs_what_is_requested_and_unplugging_gives_memory_back() {
    if !kvm_available() {
        return;
    }
    let mut vmm = Vmm::with_api();
    vmm.put_ok(
        "/hotplug/memory",
        json!({"total_size_mib": 256, "block_size_mib": 2, "slot_size_mib": 128}),
    );
    let r = vmm.get("/hotplug/memory");
    assert!(Vmm::fault(&r).contains("before starting"), "{}", r.body);
    let r = vmm.patch("/hotplug/memory", json!({"requested_size_mib": 2}));
    assert!(Vmm::fault(&r).contains("before starting"), "{}", r.body);
    vmm.configure(
        "probe=mem,mem-plug,mem-hostile,wait-cad,mem-unplug,mem-unplug-all,wait-cad",
        1,
        128,
    );
    vmm.start();
    assert_eq!(
        vmm.expect_line("PROBE mem "),
        format!(
            "PROBE mem OK block=0x200000 addr={ADDR:#x} region=0x10000000 usable=0x0 requested=0x0 plugged=0x0 features=0x100000002"
        )
    );
    assert_eq!(
        hotplug(&vmm),
        json!({"total_size_mib": 256, "slot_size_mib": 128, "block_size_mib": 2,
               "plugged_size_mib": 0, "requested_size_mib": 0})
    );
    for (body, want) in [
        (
            json!({"requested_size_mib": 3}),
            "multiple of block_size_mib 2",
        ),
        (
            json!({"requested_size_mib": 258}),
            "more than total_size_mib 256",
        ),
        (
            json!({"requested_size_mib": 2, "x": 1}),
            "unknown field `x`",
        ),
    ] {
        let r = vmm.patch("/hotplug/memory", body);
        assert!(Vmm::fault(&r).contains(want), "{}", r.body);
    }
    let r = vmm.put("/hotplug/memory", json!({"total_size_mib": 128}));
    assert!(Vmm::fault(&r).contains("after starting"), "{}", r.body);

    let before = rss_kib(vmm.pid());
    let r = vmm.patch("/hotplug/memory", json!({"requested_size_mib": 32}));
    assert_eq!(r.status, 204, "{}", r.body);
    // 17 blocks are more than requested (NACK); one past the usable
    // region is an error; 16 are plugged, touched, and read back.
    assert_eq!(
        vmm.expect_line("PROBE mem-plug"),
        format!(
            "PROBE mem-plug OK requested=16 plugged={} nack=1 outside=3 state=0 mixed=2 touched=8192 intact=1",
            32 * MIB
        )
    );
    assert_eq!(vmm.expect_line("PROBE mem-hostile"), "PROBE mem-hostile OK");
    assert_eq!(plugged_mib(&vmm, 32), 32);
    assert_eq!(hotplug(&vmm)["requested_size_mib"], 32);
    let plugged = rss_kib(vmm.pid());
    let grew = plugged.saturating_sub(before);
    eprintln!("VmRSS before plugging {before} KiB, with 32 MiB plugged and touched {plugged} KiB (+{grew} KiB)");
    assert!(
        grew >= 32 * 1024 * 3 / 4,
        "VmRSS grew by {grew} KiB only for 32 MiB plugged and touched"
    );

    vmm.action("SendCtrlAltDel");
    // Unplugged: given back (the slot left the guest, so reading it
    // exits to the VMM, which answers 0); again: an error.
    assert_eq!(
        vmm.expect_line("PROBE mem-unplug "),
        "PROBE mem-unplug OK resp=0 again=3 state=1 plugged=0 read=0x0"
    );
    assert_eq!(
        vmm.expect_line("PROBE mem-unplug-all"),
        format!(
            "PROBE mem-unplug-all OK plug=0 all=0 plugged=0 usable={:#x}",
            128 * MIB
        )
    );
    assert_eq!(plugged_mib(&vmm, 0), 0);
    let after = rss_kib(vmm.pid());
    let fell = plugged.saturating_sub(after);
    eprintln!("VmRSS after unplugging {after} KiB (-{fell} KiB)");
    assert!(
        fell >= 32 * 1024 * 3 / 4,
        "VmRSS fell by {fell} KiB only ({plugged} -> {after}) when 32 MiB were unplugged"
    );
    let m = vmm.get("/metrics").json();
    let hm = &m["memory_hotplug"];
    assert_eq!(hm["activations"], 1, "{m}");
    // NACK, outside, the 16 blocks; then one block before UNPLUG_ALL.
    assert_eq!(hm["plug_count"], 4, "{m}");
    assert_eq!(hm["plug_fails"], 2, "{m}");
    assert_eq!(hm["plug_bytes"], 34 * MIB, "{m}");
    assert_eq!(hm["unplug_count"], 2, "{m}");
    assert_eq!(hm["unplug_fails"], 1, "{m}");
    assert_eq!(hm["unplug_bytes"], 34 * MIB, "{m}");
    assert_eq!(hm["unplug_all_count"], 1, "{m}");
    // A short request, an unknown type, a device-writable request.
    assert_eq!(hm["bad_requests"], 3, "{m}");
    // A read-only response, a 4-byte one.
    assert_eq!(hm["malformed"], 2, "{m}");
    assert_eq!(hm["requested_size_updates"], 1, "{m}");
    assert!(hm["unplugged_accesses"].as_u64().unwrap() >= 1, "{m}");
    assert_eq!(hm["unplug_discard_fails"], 0, "{m}");
    assert_eq!(
        vmm.get("/vm/config").json()["memory-hotplug"],
        json!({"total_size_mib": 256, "block_size_mib": 2, "slot_size_mib": 128})
    );
    common::assert_filtered(vmm.pid());
    vmm.action("SendCtrlAltDel");
    assert_eq!(vmm.wait().code(), Some(0));
}

/// With `huge_pages` "2M" the hotpluggable region is hugetlbfs like RAM,
/// and both are reserved from the host's pool at start; an unplugged block
/// keeps its pages (the reservation holds them for this VM either way),
/// and a pool too small for RAM and the region is a 400 at InstanceStart.
#[test]
fn with_2m_huge_pages_the_region_is_reserved_with_ram_and_keeps_its_pages() {
    use common::hugepages::{guest_memory_vmas, Counts, Pool};
    if !kvm_available() {
        return;
    }
    const RAM_MIB: u64 = 256;
    const REGION_MIB: u64 = 128;
    let need = (RAM_MIB + REGION_MIB) / 2;
    let Some(_pool) = Pool::with_available(need) else {
        return;
    };
    let machine = |vmm: &Vmm, mib: u64| {
        vmm.put_ok(
            "/machine-config",
            json!({"vcpu_count": 1, "mem_size_mib": mib, "huge_pages": "2M"}),
        )
    };
    // RAM alone fits the pool, RAM and a larger region do not.
    let vmm = Vmm::with_api();
    vmm.configure("probe=mem", 1, RAM_MIB);
    machine(&vmm, RAM_MIB);
    vmm.put_ok("/hotplug/memory", json!({"total_size_mib": 2 * REGION_MIB}));
    let r = vmm.action("InstanceStart");
    assert_eq!(r.status, 400, "{}", r.body);
    let msg = Vmm::fault(&r);
    let short = (RAM_MIB + 2 * REGION_MIB) / 2;
    assert!(
        msg.contains(&format!("needs {short} free 2 MiB huge pages")),
        "{msg}"
    );
    assert_eq!(Counts::read().available(), need);
    drop(vmm);

    let mut vmm = Vmm::with_api();
    vmm.configure(
        "probe=mem,mem-plug,wait-cad,mem-unplug,mem-unplug-all,wait-cad",
        1,
        RAM_MIB,
    );
    machine(&vmm, RAM_MIB);
    vmm.put_ok("/hotplug/memory", json!({"total_size_mib": REGION_MIB}));
    vmm.start();
    vmm.expect_line("PROBE mem OK");
    assert_eq!(Counts::read().available(), 0, "{:?}", Counts::read());
    let region = |pid: u32| {
        let vmas = guest_memory_vmas(pid, REGION_MIB);
        assert_eq!(vmas.len(), 1, "{vmas:?}");
        assert_eq!(vmas[0].num("KernelPageSize"), 2048, "{vmas:?}");
        vmas[0].num("Private_Hugetlb")
    };
    assert_eq!(region(vmm.pid()), 0);
    let r = vmm.patch("/hotplug/memory", json!({"requested_size_mib": 32}));
    assert_eq!(r.status, 204, "{}", r.body);
    let line = vmm.expect_line("PROBE mem-plug");
    assert!(
        line.starts_with("PROBE mem-plug OK requested=16 ") && line.contains(" intact=1"),
        "{line}"
    );
    assert_eq!(plugged_mib(&vmm, 32), 32);
    assert_eq!(region(vmm.pid()), 32 << 10);
    vmm.action("SendCtrlAltDel");
    let line = vmm.expect_line("PROBE mem-unplug ");
    assert!(line.ends_with("plugged=0 read=0x0"), "{line}");
    vmm.expect_line("PROBE mem-unplug-all OK");
    assert_eq!(plugged_mib(&vmm, 0), 0);
    // Unplugged, out of the guest's reach, but still backed.
    assert!(region(vmm.pid()) >= 32 << 10);
    let m = vmm.get("/metrics").json();
    let hm = &m["memory_hotplug"];
    assert_eq!(hm["hugetlb_kept_bytes"], 34 * MIB, "{m}");
    assert_eq!(hm["unplug_discard_fails"], 0, "{m}");
    assert_eq!(Counts::read().available(), 0, "{:?}", Counts::read());
    common::assert_filtered(vmm.pid());
    vmm.action("SendCtrlAltDel");
    assert_eq!(vmm.wait().code(), Some(0));
}

#[test]
fn bad_hotplug_configurations_get_clear_400s() {
    if !kvm_available() {
        return;
    }
    let vmm = Vmm::with_api();
    let r = vmm.patch("/hotplug/memory", json!({"requested_size_mib": 2}));
    assert!(
        Vmm::fault(&r).contains("no hotpluggable memory is configured"),
        "{}",
        r.body
    );
    let r = vmm.get("/hotplug/memory");
    assert!(
        Vmm::fault(&r).contains("no hotpluggable memory is configured"),
        "{}",
        r.body
    );
    for (body, want) in [
        (
            json!({"block_size_mib": 2}),
            "missing field `total_size_mib`",
        ),
        (
            json!({"total_size_mib": 256, "block_size_mib": 1}),
            "block_size_mib must be at least 2",
        ),
        (
            json!({"total_size_mib": 256, "block_size_mib": 6}),
            "power of 2",
        ),
        (
            json!({"total_size_mib": 256, "slot_size_mib": 64}),
            "slot_size_mib must be at least 128",
        ),
        (
            json!({"total_size_mib": 520, "block_size_mib": 8, "slot_size_mib": 130}),
            "multiple of block_size_mib 8",
        ),
        (json!({"total_size_mib": 64}), "at least slot_size_mib 128"),
        (
            json!({"total_size_mib": 200}),
            "multiple of slot_size_mib 128",
        ),
        (
            json!({"total_size_mib": 1 << 20}),
            "more than the 524288 MiB",
        ),
        (json!({"total_size_mib": -128}), "invalid"),
    ] {
        let r = vmm.put("/hotplug/memory", body.clone());
        assert!(Vmm::fault(&r).contains(want), "{body}: {}", r.body);
    }
    assert_eq!(vmm.get("/vm/config").json()["memory-hotplug"], json!(null));
    vmm.put_ok("/hotplug/memory", json!({"total_size_mib": 256}));
    vmm.put_ok("/hotplug/memory", json!({"total_size_mib": 128}));
    assert_eq!(
        vmm.get("/vm/config").json()["memory-hotplug"],
        json!({"total_size_mib": 128, "block_size_mib": 2, "slot_size_mib": 128})
    );
}

#[test]
fn plugged_memory_and_its_blocks_survive_a_snapshot() {
    if !kvm_available() {
        return;
    }
    let dir = TempDir::new();
    let mut a = Vmm::with_api();
    a.put_ok(
        "/hotplug/memory",
        json!({"total_size_mib": 256, "block_size_mib": 4}),
    );
    a.configure(
        "probe=mem,mem-plug,wait-cad,mem-check,mem-unplug,wait-cad",
        1,
        128,
    );
    a.start();
    a.expect_line("PROBE mem OK");
    assert_eq!(
        a.patch("/hotplug/memory", json!({"requested_size_mib": 8}))
            .status,
        204
    );
    assert!(a.expect_line("PROBE mem-plug").contains(
        "requested=2 plugged=8388608 nack=1 outside=3 state=0 mixed=2 touched=2048 intact=1"
    ));
    assert_eq!(plugged_mib(&a, 8), 8);
    assert_eq!(a.patch("/vm", json!({"state": "Paused"})).status, 204);
    let (state, mem) = (dir.path("s"), dir.path("m"));
    let r = a.put(
        "/snapshot/create",
        json!({"snapshot_type": "Full", "snapshot_path": state, "mem_file_path": mem}),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    drop(a);
    // RAM and the whole region, sparse: the region's unplugged blocks
    // are holes.
    let meta = std::fs::metadata(&mem).unwrap();
    assert_eq!(meta.len(), (128 + 256) * MIB);
    assert!(
        std::os::unix::fs::MetadataExt::blocks(&meta) * 512 < 64 * MIB,
        "the memory file is not sparse"
    );

    let mut b = Vmm::with_api();
    let r = b.put(
        "/snapshot/load",
        json!({
            "snapshot_path": state,
            "mem_backend": {"backend_type": "File", "backend_path": mem},
            "resume_vm": true,
        }),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(
        hotplug(&b),
        json!({"total_size_mib": 256, "slot_size_mib": 128, "block_size_mib": 4,
               "plugged_size_mib": 8, "requested_size_mib": 8})
    );
    common::assert_filtered(b.pid());
    b.action("SendCtrlAltDel");
    // The plugged blocks' slot is in the restored guest, with what the
    // guest wrote there before the snapshot.
    assert_eq!(
        b.expect_line("PROBE mem-check"),
        format!("PROBE mem-check OK plugged={} intact=1 state=0", 8 * MIB)
    );
    assert_eq!(
        b.expect_line("PROBE mem-unplug "),
        "PROBE mem-unplug OK resp=0 again=3 state=1 plugged=0 read=0x0"
    );
    assert_eq!(plugged_mib(&b, 0), 0);
    b.action("SendCtrlAltDel");
    assert_eq!(b.wait().code(), Some(0));
}

/// A "2M" guest's plugged memory restores through a page server (the only
/// backend for hugetlbfs memory), the region one of the regions it
/// serves in whole huge pages.
#[test]
fn a_2m_guest_with_plugged_memory_restores_through_a_page_server() {
    use common::hugepages::{guest_memory_vmas, Pool};
    use common::{assert_pages_served, page_server_bin, wait_page_server};
    if !kvm_available() {
        return;
    }
    // Both VMs (RAM 128 MiB, region 128 MiB) may overlap for a moment.
    let Some(_pool) = Pool::with_available(2 * 128) else {
        return;
    };
    let dir = TempDir::new();
    let mut a = Vmm::with_api();
    a.configure("probe=mem,mem-plug,wait-cad,mem-check,wait-cad", 1, 128);
    a.put_ok(
        "/machine-config",
        json!({"vcpu_count": 1, "mem_size_mib": 128, "huge_pages": "2M"}),
    );
    a.put_ok("/hotplug/memory", json!({"total_size_mib": 128}));
    a.start();
    a.expect_line("PROBE mem OK");
    let r = a.patch("/hotplug/memory", json!({"requested_size_mib": 8}));
    assert_eq!(r.status, 204, "{}", r.body);
    assert!(a.expect_line("PROBE mem-plug").contains(" intact=1"));
    assert_eq!(plugged_mib(&a, 8), 8);
    assert_eq!(a.patch("/vm", json!({"state": "Paused"})).status, 204);
    let (state, mem) = (dir.path("s"), dir.path("m"));
    let r = a.put(
        "/snapshot/create",
        json!({"snapshot_type": "Full", "snapshot_path": state, "mem_file_path": mem}),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    drop(a);
    assert_eq!(std::fs::metadata(&mem).unwrap().len(), 256 * MIB);

    let sock = dir.path("uffd.sock");
    let mut server = std::process::Command::new(page_server_bin())
        .arg(&sock)
        .arg(&mem)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_page_server(&sock, Duration::from_secs(10));
    let mut b = Vmm::with_api();
    let r = b.put(
        "/snapshot/load",
        json!({
            "snapshot_path": state,
            "mem_backend": {"backend_type": "Uffd", "backend_path": sock},
            "resume_vm": true,
        }),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(hotplug(&b)["plugged_size_mib"], 8);
    b.action("SendCtrlAltDel");
    assert_eq!(
        b.expect_line("PROBE mem-check"),
        format!("PROBE mem-check OK plugged={} intact=1 state=0", 8 * MIB)
    );
    let vmas = guest_memory_vmas(b.pid(), 128);
    assert_eq!(vmas.len(), 2, "{vmas:?}");
    for v in &vmas {
        assert_eq!(v.num("KernelPageSize"), 2048, "{v:?}");
    }
    // The plugged blocks the guest read again came from the server (the
    // region's mapping is not necessarily above RAM's in this process).
    assert!(
        vmas.iter().any(|v| v.num("Private_Hugetlb") >= 8 << 10),
        "{vmas:?}"
    );
    common::assert_filtered(b.pid());
    b.action("SendCtrlAltDel");
    assert_eq!(b.wait().code(), Some(0));
    drop(b);
    assert_pages_served(&mut server);
}

#[test]
fn a_diff_snapshot_holds_memory_plugged_and_written_since_the_base() {
    if !kvm_available() {
        return;
    }
    let dir = TempDir::new();
    let mut a = Vmm::with_api();
    a.put_ok("/hotplug/memory", json!({"total_size_mib": 128}));
    a.configure(
        "probe=mem,wait-cad,mem-plug,wait-cad,mem-check,mem-unplug,wait-cad",
        1,
        128,
    );
    a.put_ok(
        "/machine-config",
        json!({"vcpu_count": 1, "mem_size_mib": 128, "track_dirty_pages": true}),
    );
    a.start();
    a.expect_line("PROBE mem OK");
    let pause = |v: &Vmm, state: &str| {
        let r = v.patch("/vm", json!({ "state": state }));
        assert_eq!(r.status, 204, "{}", r.body);
    };
    let snapshot = |v: &Vmm, kind: &str, state: &std::path::Path, mem: &std::path::Path| {
        let r = v.put(
            "/snapshot/create",
            json!({"snapshot_type": kind, "snapshot_path": state, "mem_file_path": mem}),
        );
        assert_eq!(r.status, 204, "{}", r.body);
    };
    pause(&a, "Paused");
    let (base_state, base_mem) = (dir.path("base.snap"), dir.path("base.mem"));
    snapshot(&a, "Full", &base_state, &base_mem);
    pause(&a, "Resumed");
    a.action("SendCtrlAltDel");
    let r = a.patch("/hotplug/memory", json!({"requested_size_mib": 8}));
    assert_eq!(r.status, 204, "{}", r.body);
    assert!(a
        .expect_line("PROBE mem-plug")
        .contains("touched=2048 intact=1"));
    pause(&a, "Paused");
    let (diff_state, diff_mem) = (dir.path("diff.snap"), dir.path("diff.mem"));
    snapshot(&a, "Diff", &diff_state, &diff_mem);
    drop(a);
    // The guest wrote the plugged pages through KVM: the region's slot
    // logged them, and the diff holds them where the region follows RAM.
    let diff = std::fs::read(&diff_mem).unwrap();
    assert_eq!(diff.len() as u64, 256 * MIB);
    let at = (128 * MIB) as usize;
    let want = (ADDR ^ 0x5a5a_5a5a_5a5a_5a5a).to_le_bytes();
    assert_eq!(
        diff[at..at + 8],
        want,
        "the plugged memory is not in the diff"
    );
    drop(diff);
    let out = std::process::Command::new(common::husk_bin())
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
    let mut b = Vmm::with_api();
    let r = b.put(
        "/snapshot/load",
        json!({"snapshot_path": diff_state, "mem_file_path": base_mem, "resume_vm": true}),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    b.action("SendCtrlAltDel");
    assert_eq!(
        b.expect_line("PROBE mem-check"),
        format!("PROBE mem-check OK plugged={} intact=1 state=0", 8 * MIB)
    );
    assert!(b.expect_line("PROBE mem-unplug ").contains("resp=0"));
    b.action("SendCtrlAltDel");
    assert_eq!(b.wait().code(), Some(0));
}

#[test]
fn hotplug_memory_and_pmem_from_the_config_file_share_the_space_above_ram() {
    if !kvm_available() {
        return;
    }
    let dir = TempDir::new();
    let img = dir.path("p.img");
    std::fs::write(&img, [1u8; 4096]).unwrap();
    let mut vmm = Vmm::with_config(|kernel| {
        json!({
            "boot-source": {"kernel_image_path": kernel, "boot_args": "probe=mem,pmem:0"},
            "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
            "memory-hotplug": {"total_size_mib": 256},
            "pmem": [{"id": "p", "path_on_host": img}],
        })
    });
    assert!(vmm.expect_line("PROBE mem ").starts_with(&format!(
        "PROBE mem OK block=0x200000 addr={ADDR:#x} region=0x10000000 "
    )));
    // The pmem window comes after the hotpluggable region.
    assert!(
        vmm.expect_line("PROBE pmem:0").contains(&format!(
            "start={:#x} size=0x200000 head=0x101010101010101 readback=1 flush=0",
            ADDR + 256 * MIB
        )),
        "{:?}",
        vmm.drain(Duration::from_millis(100))
    );
    assert_eq!(vmm.wait().code(), Some(0));
    let cfg = dir.path("bad.json");
    let kernel = common::probe_kernel(&dir);
    std::fs::write(
        &cfg,
        json!({
            "boot-source": {"kernel_image_path": kernel},
            "memory-hotplug": {"total_size_mib": 256, "block_size_mib": 3},
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
    assert!(err.contains("block_size_mib must be a power of 2"), "{err}");
}
