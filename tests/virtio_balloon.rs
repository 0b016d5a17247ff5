//! virtio-balloon end to end: the probe guest drives the device as
//! Linux's driver does; the tests change the target through the API, see
//! the guest read it after a configuration-change interrupt, and see the
//! VMM's resident memory fall when the guest inflates.

mod common;

use std::time::{Duration, Instant};

use common::{kvm_available, status_field, Vmm};
use serde_json::json;

/// Pages the probe touches and then inflates (tests/guest/balloon.c).
const PAGES: u64 = 4096;

fn rss_kib(pid: u32) -> u64 {
    let v = status_field(pid as i32, "VmRSS");
    v.trim_end_matches("kB").trim().parse().unwrap()
}

/// Checks that the VMM's resident memory fell by most of PAGES pages
/// since `before` (some slack for what else it allocated meanwhile).
fn assert_pages_left(pid: u32, before: u64, how: &str) {
    let after = rss_kib(pid);
    let freed = before.saturating_sub(after);
    eprintln!(
        "VmRSS before {how} {before} KiB, after {after} KiB: {freed} KiB freed for {PAGES} pages"
    );
    assert!(
        freed >= PAGES * 4 * 3 / 4,
        "VmRSS fell by {freed} KiB only ({before} -> {after}); {PAGES} pages were {how}"
    );
}

fn fault(r: &husk::vmm::client::Response) -> String {
    Vmm::fault(r)
}

#[test]
fn the_guest_sees_a_new_target_and_inflating_gives_memory_back() {
    if !kvm_available() {
        return;
    }
    let mut vmm = Vmm::with_api();
    vmm.put_ok(
        "/balloon",
        json!({"amount_mib": 0, "deflate_on_oom": true, "stats_polling_interval_s": 1}),
    );
    let b = vmm.get("/balloon");
    assert_eq!(b.status, 200, "{}", b.body);
    assert_eq!(
        b.json(),
        json!({"amount_mib": 0, "deflate_on_oom": true, "stats_polling_interval_s": 1})
    );
    let r = vmm.get("/balloon/statistics");
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(fault(&r).contains("before starting"), "{}", r.body);
    vmm.configure(
        "probe=balloon,balloon-stats,balloon-inflate,balloon-deflate,wait-cad",
        1,
        128,
    );
    vmm.start();
    let r = vmm.put("/balloon", json!({"amount_mib": 1, "deflate_on_oom": true}));
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(fault(&r).contains("after starting"), "{}", r.body);

    assert_eq!(
        vmm.expect_line("PROBE balloon "),
        format!("PROBE balloon OK target=0 features=0x100000006 touched={PAGES}")
    );
    assert_eq!(
        vmm.expect_line("PROBE balloon-stats"),
        "PROBE balloon-stats OK round=1"
    );
    // The guest's second report arrives shortly after it re-posted the
    // buffer.
    let deadline = Instant::now() + Duration::from_secs(5);
    let stats = loop {
        let s = vmm.get("/balloon/statistics");
        assert_eq!(s.status, 200, "{}", s.body);
        let s = s.json();
        if s["free_memory"] == 1_000_001 || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(stats["free_memory"], 1_000_001, "{stats}");
    assert_eq!(stats["total_memory"], 128u64 << 20, "{stats}");
    assert_eq!(stats["major_faults"], 1, "{stats}");
    assert_eq!(stats["oom_kill"], 8, "{stats}");
    assert_eq!(stats["target_pages"], 0, "{stats}");
    assert!(stats.get("swap_in").is_none(), "{stats}");

    // Statistics cannot be turned off after start; the interval changes.
    let r = vmm.patch(
        "/balloon/statistics",
        json!({"stats_polling_interval_s": 0}),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        fault(&r).contains("cannot be enabled or disabled"),
        "{}",
        r.body
    );
    let r = vmm.patch(
        "/balloon/statistics",
        json!({"stats_polling_interval_s": 2}),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    let r = vmm.patch("/balloon", json!({"amount_mib": 129}));
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        fault(&r).contains("more than the guest's 128 MiB"),
        "{}",
        r.body
    );

    let before = rss_kib(vmm.pid());
    let target_mib = (PAGES * 4096) >> 20;
    let r = vmm.patch("/balloon", json!({"amount_mib": target_mib}));
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(
        vmm.expect_line("PROBE balloon-inflate"),
        format!("PROBE balloon-inflate OK target={PAGES} inflated={PAGES} config-irq=1")
    );
    assert_pages_left(vmm.pid(), before, "inflated");
    let b = vmm.get("/balloon").json();
    assert_eq!(b["amount_mib"], target_mib, "{b}");
    assert_eq!(
        vmm.get("/vm/config").json()["balloon"]["amount_mib"],
        target_mib
    );
    let s = vmm.get("/balloon/statistics").json();
    assert_eq!(s["target_pages"], PAGES, "{s}");
    assert_eq!(s["target_mib"], target_mib, "{s}");
    assert_eq!(s["actual_pages"], PAGES, "{s}");
    assert_eq!(s["actual_mib"], target_mib, "{s}");

    assert_eq!(
        vmm.expect_line("PROBE balloon-deflate"),
        format!("PROBE balloon-deflate OK deflated={PAGES} zeroed=1")
    );
    let m = vmm.get("/metrics").json();
    let bm = &m["balloon"];
    assert_eq!(bm["activations"], 1, "{m}");
    assert_eq!(bm["inflated_pages"], PAGES, "{m}");
    assert_eq!(bm["deflated_pages"], PAGES, "{m}");
    assert_eq!(bm["bad_pfns"], 0, "{m}");
    assert_eq!(bm["malformed"], 0, "{m}");
    assert_eq!(bm["target_updates"], 1, "{m}");
    assert!(bm["stats_updates"].as_u64().unwrap() >= 2, "{m}");
    common::assert_filtered(vmm.pid());
    vmm.action("SendCtrlAltDel");
    assert_eq!(vmm.wait().code(), Some(0));
}

/// With hugetlbfs guest memory (`huge_pages: "2M"`) the balloon works
/// as Firecracker's does there: the guest gives its pages, but the host
/// keeps them backed (a 4 KiB page cannot leave a 2 MiB one), so the
/// guest finds its data still in them after a deflate.
#[test]
fn with_2m_huge_pages_inflated_pages_stay_backed() {
    if !kvm_available() {
        return;
    }
    let Some(_pool) = common::hugepages::Pool::with_available(64) else {
        return;
    };
    let mut vmm = Vmm::with_api();
    vmm.put_ok(
        "/balloon",
        json!({"amount_mib": 0, "deflate_on_oom": false}),
    );
    vmm.put_ok(
        "/boot-source",
        json!({
            "kernel_image_path": vmm.kernel,
            "boot_args": "probe=balloon,balloon-inflate,balloon-deflate,wait-cad",
        }),
    );
    vmm.put_ok(
        "/machine-config",
        json!({"vcpu_count": 1, "mem_size_mib": 128, "huge_pages": "2M"}),
    );
    vmm.start();
    vmm.expect_line("PROBE balloon OK");
    let hugetlb = |vmm: &Vmm| {
        let vmas = common::hugepages::guest_memory_vmas(vmm.pid(), 128);
        vmas[0].num("Private_Hugetlb")
    };
    let before = hugetlb(&vmm);
    let target_mib = (PAGES * 4096) >> 20;
    let r = vmm.patch("/balloon", json!({"amount_mib": target_mib}));
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(
        vmm.expect_line("PROBE balloon-inflate"),
        format!("PROBE balloon-inflate OK target={PAGES} inflated={PAGES} config-irq=1")
    );
    assert_eq!(hugetlb(&vmm), before);
    assert_eq!(
        vmm.expect_line("PROBE balloon-deflate"),
        format!("PROBE balloon-deflate OK deflated={PAGES} zeroed=0")
    );
    let m = vmm.get("/metrics").json();
    let bm = &m["balloon"];
    assert_eq!(bm["inflated_pages"], 0, "{m}");
    assert_eq!(bm["hugetlb_kept_pages"], PAGES, "{m}");
    assert_eq!(bm["deflated_pages"], PAGES, "{m}");
    common::assert_filtered(vmm.pid());
    vmm.action("SendCtrlAltDel");
    vmm.expect_line("PROBE wait-cad OK");
    assert_eq!(vmm.wait().code(), Some(0));
}

#[test]
fn hostile_balloon_buffers_are_counted_and_the_vmm_lives_on() {
    if !kvm_available() {
        return;
    }
    let mut vmm = Vmm::with_api();
    vmm.put_ok(
        "/balloon",
        json!({"amount_mib": 0, "deflate_on_oom": false}),
    );
    vmm.configure("probe=balloon,balloon-hostile,wait-cad", 1, 128);
    vmm.start();
    assert_eq!(
        vmm.expect_line("PROBE balloon "),
        format!("PROBE balloon OK target=0 features=0x100000000 touched={PAGES}")
    );
    assert_eq!(
        vmm.expect_line("PROBE balloon-hostile"),
        "PROBE balloon-hostile OK"
    );
    let m = vmm.get("/metrics").json();
    let bm = &m["balloon"];
    // Four bad PFNs inflated, the same four deflated.
    assert_eq!(bm["bad_pfns"], 8, "{m}");
    // A 2-byte buffer, a device-writable one, one outside guest memory.
    assert_eq!(bm["malformed"], 3, "{m}");
    assert_eq!(bm["inflated_pages"], 0, "{m}");
    // Without statistics there are none to ask for.
    let r = vmm.get("/balloon/statistics");
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        fault(&r).contains("statistics are not enabled"),
        "{}",
        r.body
    );
    assert!(vmm.is_running());
    vmm.action("SendCtrlAltDel");
    assert_eq!(vmm.wait().code(), Some(0));
}

#[test]
fn bad_balloon_requests_get_clear_400s() {
    if !kvm_available() {
        return;
    }
    let vmm = Vmm::with_api();
    for (method, path, body, want) in [
        ("GET", "/balloon", None, "no balloon device is configured"),
        (
            "PATCH",
            "/balloon",
            Some(json!({"amount_mib": 1})),
            "no balloon device is configured",
        ),
        (
            "PATCH",
            "/balloon/statistics",
            Some(json!({"stats_polling_interval_s": 1})),
            "no balloon device is configured",
        ),
        (
            "PUT",
            "/balloon",
            Some(json!({"amount_mib": 129, "deflate_on_oom": false})),
            "amount_mib 129 is more than the guest's 128 MiB",
        ),
        (
            "GET",
            "/balloon/hinting/status",
            None,
            "no balloon device is configured",
        ),
        (
            "PATCH",
            "/balloon/hinting/x",
            Some(json!({})),
            "Invalid request method and/or path",
        ),
        (
            "PUT",
            "/balloon",
            Some(json!({"amount_mib": 1})),
            "missing field `deflate_on_oom`",
        ),
    ] {
        let body = body.map(|b| b.to_string());
        let r = vmm.request(method, path, body.as_deref());
        assert_eq!(r.status, 400, "{method} {path}: {}", r.body);
        assert!(fault(&r).contains(want), "{method} {path}: {}", r.body);
    }
    // Before start, PATCH changes the configuration.
    vmm.put_ok(
        "/balloon",
        json!({"amount_mib": 4, "deflate_on_oom": false}),
    );
    let r = vmm.patch("/balloon", json!({"amount_mib": 8}));
    assert_eq!(r.status, 204, "{}", r.body);
    let r = vmm.patch(
        "/balloon/statistics",
        json!({"stats_polling_interval_s": 3}),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(
        vmm.get("/vm/config").json()["balloon"],
        json!({"amount_mib": 8, "deflate_on_oom": false, "stats_polling_interval_s": 3})
    );
    // Hinting needs a balloon configured with it.
    for (method, path) in [
        ("PATCH", "/balloon/hinting/start"),
        ("GET", "/balloon/hinting/status"),
        ("PATCH", "/balloon/hinting/stop"),
    ] {
        let body = (method == "PATCH").then_some("{}");
        let r = vmm.request(method, path, body);
        assert_eq!(r.status, 400, "{method} {path}: {}", r.body);
        assert!(
            fault(&r).contains("free page hinting is not enabled"),
            "{method} {path}: {}",
            r.body
        );
    }
    let r = vmm.patch("/balloon/hinting/start", json!({"acknowledge_on_stop": 1}));
    assert_eq!(r.status, 400, "{}", r.body);
}

#[test]
fn a_balloon_from_the_config_file_shows_its_target() {
    if !kvm_available() {
        return;
    }
    let mut vmm = Vmm::with_config(|kernel| {
        json!({
            "boot-source": {"kernel_image_path": kernel, "boot_args": "probe=balloon"},
            "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
            "balloon": {"amount_mib": 4, "deflate_on_oom": true},
        })
    });
    assert_eq!(
        vmm.expect_line("PROBE balloon "),
        format!("PROBE balloon OK target=1024 features=0x100000004 touched={PAGES}")
    );
    assert_eq!(vmm.wait().code(), Some(0));
}

#[test]
fn a_balloon_and_its_statistics_buffer_survive_a_snapshot() {
    if !kvm_available() {
        return;
    }
    let dir = common::TempDir::new();
    let mut a = Vmm::with_api();
    a.put_ok(
        "/balloon",
        json!({"amount_mib": 0, "deflate_on_oom": false, "stats_polling_interval_s": 1}),
    );
    a.configure(
        "probe=balloon,balloon-stats,wait-cad,balloon-inflate,balloon-deflate,balloon-stats",
        1,
        128,
    );
    a.start();
    a.expect_line("PROBE balloon OK");
    a.expect_line("PROBE balloon-stats OK round=1");
    // The guest's second report is in: the device holds its buffer.
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.get("/balloon/statistics").json()["free_memory"] != 1_000_001 {
        assert!(Instant::now() < deadline, "no second statistics report");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(a.patch("/vm", json!({"state": "Paused"})).status, 204);
    let (state, mem) = (dir.path("s"), dir.path("m"));
    let r = a.put(
        "/snapshot/create",
        json!({"snapshot_type": "Full", "snapshot_path": state, "mem_file_path": mem}),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    drop(a);

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
        b.get("/balloon").json(),
        json!({"amount_mib": 0, "deflate_on_oom": false, "stats_polling_interval_s": 1})
    );
    let s = b.get("/balloon/statistics").json();
    assert_eq!(s["free_memory"], 1_000_001, "{s}");
    // The guest waits for Ctrl-Alt-Del: its vCPU thread is there.
    common::assert_filtered(b.pid());
    assert_eq!(b.action("SendCtrlAltDel").status, 204);
    // The guest now waits for the configuration change.
    std::thread::sleep(Duration::from_millis(200));
    let r = b.patch("/balloon", json!({"amount_mib": 16}));
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(
        b.expect_line("PROBE balloon-inflate"),
        format!("PROBE balloon-inflate OK target={PAGES} inflated={PAGES} config-irq=1")
    );
    // Restored memory is the memory file mapped private: a page dropped
    // from it reads as the file has it (the spec leaves a deflated page's
    // contents undefined).
    assert_eq!(
        b.expect_line("PROBE balloon-deflate"),
        format!("PROBE balloon-deflate OK deflated={PAGES} zeroed=0")
    );
    // The buffer the device held at the snapshot comes back: the
    // guest's statistics go on.
    assert_eq!(
        b.expect_line("PROBE balloon-stats"),
        "PROBE balloon-stats OK round=2"
    );
    let m = b.get("/metrics").json();
    assert_eq!(m["balloon"]["inflated_pages"], PAGES, "{m}");
    assert_eq!(b.wait().code(), Some(0));
}

#[test]
fn free_pages_the_guest_reports_leave_the_vmm() {
    if !kvm_available() {
        return;
    }
    let mut vmm = Vmm::with_api();
    vmm.put_ok(
        "/balloon",
        json!({"amount_mib": 0, "deflate_on_oom": false, "free_page_reporting": true}),
    );
    assert_eq!(
        vmm.get("/balloon").json(),
        json!({"amount_mib": 0, "deflate_on_oom": false, "stats_polling_interval_s": 0,
               "free_page_reporting": true})
    );
    vmm.configure("probe=balloon,wait-cad,balloon-report,wait-cad", 1, 128);
    vmm.start();
    assert_eq!(
        vmm.expect_line("PROBE balloon "),
        format!("PROBE balloon OK target=0 features=0x100000020 touched={PAGES}")
    );
    let before = rss_kib(vmm.pid());
    vmm.action("SendCtrlAltDel");
    assert_eq!(
        vmm.expect_line("PROBE balloon-report"),
        format!("PROBE balloon-report OK reported={PAGES}")
    );
    assert_pages_left(vmm.pid(), before, "reported");
    let m = vmm.get("/metrics").json();
    assert_eq!(m["balloon"]["reported_pages"], PAGES, "{m}");
    assert_eq!(m["balloon"]["malformed"], 0, "{m}");
    vmm.action("SendCtrlAltDel");
    assert_eq!(vmm.wait().code(), Some(0));
}

#[test]
fn free_pages_the_guest_hints_leave_the_vmm_during_a_run() {
    if !kvm_available() {
        return;
    }
    let mut vmm = Vmm::with_api();
    vmm.put_ok(
        "/balloon",
        json!({"amount_mib": 0, "deflate_on_oom": false, "free_page_hinting": true}),
    );
    // Hinting runs exist after start only.
    let r = vmm.patch("/balloon/hinting/start", json!({}));
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(fault(&r).contains("before starting"), "{}", r.body);
    vmm.configure(
        "probe=balloon,balloon-hint,balloon-hint-done,balloon-hint,balloon-hint-done,wait-cad",
        1,
        128,
    );
    vmm.start();
    assert_eq!(
        vmm.expect_line("PROBE balloon "),
        format!("PROBE balloon OK target=0 features=0x100000008 touched={PAGES}")
    );
    assert_eq!(
        vmm.get("/balloon/hinting/status").json(),
        json!({"host_cmd": 0, "guest_cmd": null})
    );
    let before = rss_kib(vmm.pid());
    // A run the host ends itself.
    let r = vmm.patch(
        "/balloon/hinting/start",
        json!({"acknowledge_on_stop": false}),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(
        vmm.expect_line("PROBE balloon-hint "),
        format!("PROBE balloon-hint OK id=2 hinted={PAGES}")
    );
    assert_pages_left(vmm.pid(), before, "hinted");
    // The guest said STOP; the host has not said DONE yet.
    assert_eq!(
        vmm.get("/balloon/hinting/status").json(),
        json!({"host_cmd": 2, "guest_cmd": 0})
    );
    let r = vmm.patch("/balloon/hinting/stop", json!({}));
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(
        vmm.expect_line("PROBE balloon-hint-done"),
        "PROBE balloon-hint-done OK cmd=1 zeroed=1"
    );
    assert_eq!(
        vmm.get("/balloon/hinting/status").json(),
        json!({"host_cmd": 1, "guest_cmd": 0})
    );
    // A run with no body: acknowledge_on_stop, so the guest's STOP brings
    // DONE at once.
    let mut s = std::os::unix::net::UnixStream::connect(&vmm.sock).unwrap();
    let status = raw_status(
        &mut s,
        b"PATCH /balloon/hinting/start HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(status, 204);
    assert_eq!(
        vmm.expect_line("PROBE balloon-hint "),
        format!("PROBE balloon-hint OK id=3 hinted={PAGES}")
    );
    assert_eq!(
        vmm.expect_line("PROBE balloon-hint-done"),
        "PROBE balloon-hint-done OK cmd=1 zeroed=1"
    );
    assert_eq!(
        vmm.get("/balloon/hinting/status").json(),
        json!({"host_cmd": 1, "guest_cmd": 0})
    );
    let m = vmm.get("/metrics").json();
    assert_eq!(m["balloon"]["hinted_pages"], 2 * PAGES, "{m}");
    assert_eq!(m["balloon"]["malformed"], 0, "{m}");
    vmm.action("SendCtrlAltDel");
    assert_eq!(vmm.wait().code(), Some(0));
}

/// Sends one raw request and returns the answer's status code.
fn raw_status(s: &mut std::os::unix::net::UnixStream, req: &[u8]) -> u16 {
    use std::io::{Read, Write};
    s.write_all(req).unwrap();
    let mut b = [0u8; 4096];
    let n = s.read(&mut b).unwrap();
    let head = String::from_utf8_lossy(&b[..n]);
    head.split(' ').nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_driver_that_declines_hinting_still_gets_its_other_queues() {
    if !kvm_available() {
        return;
    }
    let mut vmm = Vmm::with_api();
    vmm.put_ok(
        "/balloon",
        json!({"amount_mib": 0, "deflate_on_oom": false, "free_page_hinting": true,
               "free_page_reporting": true}),
    );
    vmm.configure(
        "probe=balloon-decline-hint,wait-cad,balloon-report,wait-cad",
        1,
        128,
    );
    vmm.start();
    assert_eq!(
        vmm.expect_line("PROBE balloon-decline-hint"),
        format!("PROBE balloon-decline-hint OK target=0 features=0x100000020 touched={PAGES}")
    );
    let r = vmm.patch("/balloon/hinting/start", json!({}));
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        fault(&r).contains("did not accept free page hinting"),
        "{}",
        r.body
    );
    let before = rss_kib(vmm.pid());
    vmm.action("SendCtrlAltDel");
    // Reporting took the hinting queue's index, and works.
    assert_eq!(
        vmm.expect_line("PROBE balloon-report"),
        format!("PROBE balloon-report OK reported={PAGES}")
    );
    assert_pages_left(vmm.pid(), before, "reported");
    vmm.action("SendCtrlAltDel");
    assert_eq!(vmm.wait().code(), Some(0));
}
