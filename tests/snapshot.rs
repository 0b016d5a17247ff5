//! Snapshots on real KVM with the probe guest: pause, save, restore into a
//! new `husk vmm` process, and check that the guest carries on where it
//! was, that its devices work, that diff snapshots hold what the guest
//! wrote, that clones run apart, and that bad files are refused.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{kvm_available, TempDir, Vmm};
use serde_json::{json, Value};

/// A count long enough never to finish during a test.
const LONG_COUNT: &str = "probe=count:100000000";

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

fn pause(vmm: &Vmm) {
    let r = vmm.patch("/vm", json!({"state": "Paused"}));
    assert_eq!(r.status, 204, "{}", r.body);
}

fn resume(vmm: &Vmm) {
    let r = vmm.patch("/vm", json!({"state": "Resumed"}));
    assert_eq!(r.status, 204, "{}", r.body);
}

fn create(vmm: &Vmm, kind: &str, state: &Path, mem: &Path) {
    let r = vmm.put(
        "/snapshot/create",
        json!({"snapshot_type": kind, "snapshot_path": state, "mem_file_path": mem}),
    );
    assert_eq!(r.status, 204, "{}", r.body);
}

fn load_body(state: &Path, mem: &Path, resume: bool) -> Value {
    json!({
        "snapshot_path": state,
        "mem_backend": {"backend_type": "File", "backend_path": mem},
        "resume_vm": resume,
    })
}

/// The number on a `COUNT n` line.
fn count_of(line: &str) -> Option<u64> {
    line.strip_prefix("COUNT ")?.parse().ok()
}

/// The last `COUNT` the guest printed before it was paused.
fn last_count(vmm: &mut Vmm) -> u64 {
    vmm.drain(Duration::from_millis(300));
    vmm.seen
        .iter()
        .rev()
        .find_map(|l| count_of(l))
        .expect("the guest counted")
}

/// Checks that `vmm`'s output continues a count that stopped at `last`:
/// the first whole `COUNT` line is the next number (or the one after, if
/// the snapshot split a line, whose tail then comes first), and the
/// lines after it go up by one.
fn expect_count_continues(vmm: &mut Vmm, last: u64) {
    let first = vmm.expect_line("COUNT ");
    let n = count_of(&first).unwrap();
    let earlier: Vec<String> = vmm.seen[..vmm.seen.len() - 1].to_vec();
    match earlier.as_slice() {
        [] => assert_eq!(n, last + 1, "restart at {first:?} after COUNT {last}"),
        [tail] => {
            assert_eq!(n, last + 2, "{first:?} after COUNT {last} and {tail:?}");
            assert!(
                format!("COUNT {}", last + 1).ends_with(tail.as_str()),
                "{tail:?}"
            );
        }
        more => panic!("unexpected output before the count: {more:?}"),
    }
    for i in 1..=20 {
        let l = vmm.expect_line("COUNT ");
        assert_eq!(count_of(&l), Some(n + i), "{l}");
    }
}

/// A fresh `husk vmm` with an API socket.
fn fresh() -> Vmm {
    Vmm::with_api()
}

/// Boots a counting guest, pauses it mid-count and snapshots it into
/// `dir`. Returns the last count printed.
fn counting_snapshot(dir: &TempDir, extra: impl FnOnce(&Vmm)) -> (PathBuf, PathBuf, u64) {
    let mut vmm = Vmm::with_api();
    extra(&vmm);
    vmm.configure(LONG_COUNT, 1, 128);
    vmm.start();
    vmm.expect_line("COUNT 200");
    pause(&vmm);
    let last = last_count(&mut vmm);
    let (state, mem) = (dir.path("vm.snap"), dir.path("vm.mem"));
    create(&vmm, "Full", &state, &mem);
    (state, mem, last)
}

#[test]
fn a_restored_guest_counts_on_from_where_it_stopped() {
    if !kvm_available() {
        return;
    }
    let dir = TempDir::new();
    let (state, mem, last) = counting_snapshot(&dir, |_| {});
    assert!(last >= 200);
    // Sparse: a 128 MiB guest that touched little memory.
    let meta = std::fs::metadata(&mem).unwrap();
    assert_eq!(meta.len(), 128 << 20);
    assert!(
        std::os::unix::fs::MetadataExt::blocks(&meta) * 512 < 16 << 20,
        "memory file not sparse"
    );

    let mut b = fresh();
    let r = b.put("/snapshot/load", load_body(&state, &mem, false));
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(b.get("/").json()["state"], "Paused");
    let cfg = b.get("/vm/config").json();
    assert_eq!(cfg["machine-config"]["mem_size_mib"], 128, "{cfg}");
    assert!(
        cfg["boot-source"]["boot_args"]
            .as_str()
            .unwrap()
            .contains(LONG_COUNT),
        "{cfg}"
    );
    // Nothing runs until it is resumed.
    assert!(b.drain(Duration::from_millis(200)).is_empty());
    resume(&b);
    expect_count_continues(&mut b, last);
    // A restored VMM is started: a second load or a boot is refused.
    let again = b.put("/snapshot/load", load_body(&state, &mem, true));
    assert_eq!(again.status, 400, "{}", again.body);
    assert_eq!(b.action("InstanceStart").status, 400);
}

#[test]
fn restore_from_the_command_line_runs_at_once() {
    if !kvm_available() {
        return;
    }
    let dir = TempDir::new();
    let (state, mem, last) = counting_snapshot(&dir, |_| {});
    let mut b = Vmm::with_args(|_| {
        vec![
            "vmm".into(),
            "--no-api".into(),
            "--restore-from".into(),
            s(&state),
            "--mem-file".into(),
            s(&mem),
        ]
    });
    expect_count_continues(&mut b, last);
}

#[test]
fn clones_of_one_snapshot_run_apart_with_their_own_vsock() {
    if !kvm_available() {
        return;
    }
    let dir = TempDir::new();
    let uds = dir.path("origin.vsock");
    let (state, mem, last) = counting_snapshot(&dir, |v| {
        v.put_ok("/vsock", json!({"guest_cid": 3, "uds_path": uds}));
    });
    let clone = |cid: u32| {
        let (state, mem) = (s(&state), s(&mem));
        Vmm::with_args(move |d| {
            let uds = s(&d.path("clone.vsock"));
            let sock = s(&d.path("api.sock"));
            vec![
                "vmm".into(),
                "--api-sock".into(),
                sock,
                "--restore-from".into(),
                state,
                "--mem-file".into(),
                mem,
                "--vsock-uds".into(),
                uds,
                "--vsock-cid".into(),
                cid.to_string(),
            ]
        })
    };
    let mut a = clone(7);
    let mut b = clone(8);
    expect_count_continues(&mut a, last);
    expect_count_continues(&mut b, last);
    for (vmm, cid) in [(&a, 7), (&b, 8)] {
        let cfg = vmm.get("/vm/config").json();
        assert_eq!(cfg["vsock"]["guest_cid"], cid, "{cfg}");
        let uds = PathBuf::from(cfg["vsock"]["uds_path"].as_str().unwrap());
        assert!(uds.starts_with(&vmm.dir.0), "{cfg}");
        assert!(uds.exists(), "the clone's vsock socket is bound");
    }
    // Pausing one leaves the other counting.
    pause(&a);
    a.drain(Duration::from_millis(200));
    let b_before = b.seen.len();
    b.drain(Duration::from_millis(300));
    assert!(b.seen.len() > b_before, "the other clone stopped too");
    assert!(a.drain(Duration::from_millis(300)).is_empty());
}

#[test]
fn pause_and_resume_a_thousand_times() {
    if !kvm_available() {
        return;
    }
    let mut vmm = Vmm::with_api();
    vmm.configure(LONG_COUNT, 2, 128);
    vmm.start();
    vmm.expect_line("COUNT 10");
    for _ in 0..1000 {
        pause(&vmm);
        resume(&vmm);
    }
    assert_eq!(vmm.get("/").json()["state"], "Running");
    // Still counting, one by one.
    let a = count_of(&vmm.expect_line("COUNT ")).unwrap();
    let b = count_of(&vmm.expect_line("COUNT ")).unwrap();
    assert_eq!(b, a + 1);
    // Pausing twice, or resuming a running VM, changes nothing (a 204,
    // as in Firecracker).
    pause(&vmm);
    assert_eq!(vmm.patch("/vm", json!({"state": "Paused"})).status, 204);
    assert_eq!(vmm.get("/").json()["state"], "Paused");
    resume(&vmm);
    assert_eq!(vmm.patch("/vm", json!({"state": "Resumed"})).status, 204);
    assert_eq!(vmm.get("/").json()["state"], "Running");
    let a = count_of(&vmm.expect_line("COUNT ")).unwrap();
    let b = count_of(&vmm.expect_line("COUNT ")).unwrap();
    assert_eq!(b, a + 1);
}

#[test]
fn snapshots_need_a_paused_vm_and_diffs_need_tracking() {
    if !kvm_available() {
        return;
    }
    let dir = TempDir::new();
    let mut vmm = Vmm::with_api();
    vmm.configure(LONG_COUNT, 1, 128);
    vmm.start();
    vmm.expect_line("COUNT 5");
    let (st, mem) = (dir.path("s"), dir.path("m"));
    let body = |kind| json!({"snapshot_type": kind, "snapshot_path": st, "mem_file_path": mem});
    let msg = Vmm::fault(&vmm.put("/snapshot/create", body("Full")));
    assert!(msg.contains("not paused"), "{msg}");
    pause(&vmm);
    let msg = Vmm::fault(&vmm.put("/snapshot/create", body("Diff")));
    assert!(msg.contains("track_dirty_pages"), "{msg}");
    assert!(!st.exists() && !mem.exists());
}

#[test]
fn bad_snapshot_files_are_refused_and_the_vmm_keeps_serving() {
    if !kvm_available() {
        return;
    }
    let dir = TempDir::new();
    let (state, mem, last) = counting_snapshot(&dir, |_| {});
    let good = std::fs::read(&state).unwrap();
    let variant = |name: &str, bytes: &[u8]| {
        let p = dir.path(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let mut flipped = good.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x20;
    let mut version = good.clone();
    version[8] = 99;
    let mut arch = good.clone();
    arch[12] = 7;
    let mut longer = good.clone();
    longer.extend_from_slice(b"junk");
    let cases: Vec<(PathBuf, &str)> = vec![
        (variant("crc", &flipped), "CRC64"),
        (variant("truncated", &good[..good.len() - 100]), "truncated"),
        (variant("short", &good[..10]), "truncated"),
        (variant("version", &version), "version 99"),
        (variant("arch", &arch), "architecture 7"),
        (variant("longer", &longer), "trailing"),
        (
            variant("garbage", b"{\"not\": \"a snapshot\"}"),
            "not a husk snapshot",
        ),
        (variant("empty", b""), "not a husk snapshot"),
        (dir.path("missing"), "cannot read"),
        (dir.0.clone(), "not a regular file"),
    ];
    let mut b = fresh();
    for (path, expected) in &cases {
        let msg = Vmm::fault(&b.put("/snapshot/load", load_body(path, &mem, true)));
        assert!(msg.contains(expected), "{}: {msg}", path.display());
        assert_eq!(b.get("/").json()["state"], "Not started");
    }
    // A memory file of the wrong size would fault the VMM on access past
    // its end: it is refused before anything is mapped.
    let short_mem = variant("short.mem", &[0u8; 4096]);
    let msg = Vmm::fault(&b.put("/snapshot/load", load_body(&state, &short_mem, true)));
    assert!(msg.contains("bytes; the snapshot's guest has"), "{msg}");
    // A vCPU that needs a CPU feature this host's KVM lacks.
    let msg = Vmm::fault(&b.put(
        "/snapshot/load",
        load_body(
            &variant("cpu", &with_foreign_cpu(&good, &state)),
            &mem,
            true,
        ),
    ));
    assert!(msg.contains("CPU features"), "{msg}");
    // A load after a configuration step is refused too.
    let c = fresh();
    c.configure("probe=boot", 1, 128);
    let msg = Vmm::fault(&c.put("/snapshot/load", load_body(&state, &mem, true)));
    assert!(msg.contains("already configured"), "{msg}");
    // After all that, the same process still loads the good snapshot.
    let r = b.put("/snapshot/load", load_body(&state, &mem, true));
    assert_eq!(r.status, 204, "{}", r.body);
    expect_count_continues(&mut b, last);
    drop(c);
}

/// `good` with vCPU 0 asking for a leaf-7 feature this host does not
/// offer, re-encoded with a valid header and CRC.
fn with_foreign_cpu(good: &[u8], path: &Path) -> Vec<u8> {
    use husk::vmm::snapshot::{format, MicrovmState};
    let mut state: MicrovmState = format::decode(good, path).unwrap();
    let host = husk::vmm::kvm::Vm::open().unwrap();
    let leaf7 = host
        .supported_cpuid()
        .as_slice()
        .iter()
        .find(|e| e.function == 7 && e.index == 0)
        .map_or(0, |e| e.ebx);
    let native = husk::vmm::kvm::persist::native_cpuid(7, 0)[1];
    let missing = (0..32)
        .map(|b| 1u32 << b)
        .find(|bit| (leaf7 | native) & bit == 0)
        .expect("a leaf 7 EBX feature this host lacks");
    let entry = state.vcpus[0]
        .cpuid
        .iter_mut()
        .find(|e| e.function == 7 && e.index == 0)
        .expect("leaf 7 in the snapshot");
    entry.ebx |= missing;
    format::encode(&state).unwrap()
}
