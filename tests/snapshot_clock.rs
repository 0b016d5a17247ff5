//! `clock_realtime` on `PUT /snapshot/load`: the probe guest registers a
//! kvmclock page, is snapshotted, and is restored seconds later. With
//! `clock_realtime` its kvmclock has moved on by at least the time the
//! snapshot spent on disk; without it, it goes on from where it stopped.
//! A snapshot whose host did not report the wall-clock time with its
//! kvmclock cannot be loaded with `clock_realtime` (400).

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{kvm_available, TempDir, Vmm};
use husk::vmm::snapshot::{format, MicrovmState};
use serde_json::json;

/// How long the snapshot waits on disk before it is loaded.
const ON_DISK: Duration = Duration::from_secs(3);

/// The number after `key=` on a probe line.
fn field(line: &str, key: &str) -> u64 {
    line.split(' ')
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

/// Boots a guest that reads kvmclock and then waits for Ctrl-Alt-Del,
/// and snapshots it. Returns the state and memory files and when the
/// snapshot was written.
fn snapshot(dir: &TempDir) -> (PathBuf, PathBuf, Instant) {
    let mut vmm = Vmm::with_api();
    vmm.configure("probe=kvmclock,wait-cad,kvmclock-again", 1, 128);
    vmm.start();
    let line = vmm.expect_line("PROBE kvmclock");
    assert!(line.starts_with("PROBE kvmclock OK ns="), "{line}");
    let r = vmm.patch("/vm", json!({"state": "Paused"}));
    assert_eq!(r.status, 204, "{}", r.body);
    let (state, mem) = (dir.path("vm.snap"), dir.path("vm.mem"));
    let r = vmm.put(
        "/snapshot/create",
        json!({"snapshot_path": state, "mem_file_path": mem}),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    (state, mem, Instant::now())
}

fn load_body(state: &Path, mem: &Path, realtime: Option<bool>) -> serde_json::Value {
    let mut body = json!({
        "snapshot_path": state,
        "mem_backend": {"backend_type": "File", "backend_path": mem},
        "resume_vm": true,
    });
    if let Some(r) = realtime {
        body["clock_realtime"] = json!(r);
    }
    body
}

/// Loads the snapshot `ON_DISK` after it was written; returns how long
/// it was on disk at least and the `since=` the guest printed after.
fn restore(state: &Path, mem: &Path, written: Instant, realtime: Option<bool>) -> (Duration, u64) {
    std::thread::sleep(ON_DISK.saturating_sub(written.elapsed()));
    let mut vmm = Vmm::with_api();
    let gap = written.elapsed();
    let r = vmm.put("/snapshot/load", load_body(state, mem, realtime));
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(vmm.action("SendCtrlAltDel").status, 204);
    let line = vmm.expect_line("PROBE kvmclock-again");
    assert!(line.starts_with("PROBE kvmclock-again OK"), "{line}");
    assert_eq!(vmm.wait().code(), Some(0));
    eprintln!("clock_realtime {realtime:?}: {gap:?} on disk, {line}");
    (gap, field(&line, "since"))
}

#[test]
fn kvmclock_jumps_by_the_time_on_disk_only_with_clock_realtime() {
    if !kvm_available() {
        return;
    }
    let dir = TempDir::new();
    let (state, mem, written) = snapshot(&dir);
    // The snapshot's host reported the wall-clock time with kvmclock.
    let s: MicrovmState = format::read_file(&state).unwrap();
    assert_ne!(
        s.vm.clock.flags & kvm_bindings::KVM_CLOCK_REALTIME,
        0,
        "KVM_GET_CLOCK flags {:#x}",
        s.vm.clock.flags
    );
    // Each restore uses its own copy of the memory file's pages
    // (MAP_PRIVATE), so one snapshot serves all three.
    let (gap, since) = restore(&state, &mem, written, Some(true));
    assert!(
        since >= gap.as_nanos() as u64,
        "kvmclock moved {since} ns across a {gap:?} gap"
    );
    // Without it (false, or left out) the guest sees only the time it ran.
    for realtime in [Some(false), None] {
        let (gap, since) = restore(&state, &mem, Instant::now(), realtime);
        assert!(gap >= ON_DISK);
        assert!(
            since < (gap - Duration::from_secs(1)).as_nanos() as u64,
            "kvmclock moved {since} ns across a {gap:?} gap without clock_realtime"
        );
    }
}

#[test]
fn clock_realtime_needs_a_snapshot_with_the_wall_clock_time() {
    if !kvm_available() {
        return;
    }
    let dir = TempDir::new();
    let (state, mem, _) = snapshot(&dir);
    let mut s: MicrovmState = format::read_file(&state).unwrap();
    s.vm.clock.flags &= !kvm_bindings::KVM_CLOCK_REALTIME;
    s.vm.clock.realtime = 0;
    let old = dir.path("old-host.snap");
    std::fs::write(&old, format::encode(&s).unwrap()).unwrap();
    let vmm = Vmm::with_api();
    let r = vmm.put("/snapshot/load", load_body(&old, &mem, Some(true)));
    assert_eq!(r.status, 400, "{}", r.body);
    let fault = Vmm::fault(&r);
    assert!(
        fault.contains("clock_realtime") && fault.contains("KVM_CLOCK_REALTIME"),
        "{fault}"
    );
    // Nothing was built: the same process loads it without the option.
    let r = vmm.put("/snapshot/load", load_body(&old, &mem, Some(false)));
    assert_eq!(r.status, 204, "{}", r.body);
    let r = vmm.get("/");
    assert!(r.body.contains("Running"), "{}", r.body);
}

#[test]
fn kvmclock_again_without_kvmclock_fails_cleanly() {
    if !kvm_available() {
        return;
    }
    let mut vmm = Vmm::with_api();
    vmm.configure("probe=kvmclock-again,kvmclock,kvmclock-again", 1, 128);
    vmm.start();
    assert_eq!(
        vmm.expect_line("PROBE kvmclock-again"),
        "PROBE kvmclock-again FAIL kvmclock not set up"
    );
    let first = vmm.expect_line("PROBE kvmclock ");
    let again = vmm.expect_line("PROBE kvmclock-again");
    // A cold boot's kvmclock starts near zero and runs forward.
    assert!(field(&first, "ns") < 60_000_000_000, "{first}");
    assert!(field(&again, "ns") >= field(&first, "ns"), "{again}");
    assert!(field(&again, "since") < 5_000_000_000, "{again}");
    assert_eq!(vmm.wait().code(), Some(0));
}
