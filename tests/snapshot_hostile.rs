//! Snapshots as a hostile caller sees them: state files with a valid
//! header and CRC around hostile content, memory files that are not
//! files, create paths that cannot be written, concurrent requests, page
//! servers that do not serve, and `husk snapshot` on bad files. Every
//! refusal must be a 400 naming the problem, change nothing, and leave
//! the VMM serving and able to load a good snapshot afterwards.

mod common;

use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{husk_bin, kvm_available, TempDir, Vmm};
use husk::vmm::client::{self, Response};
use husk::vmm::devices::persist::VirtioEntryState;
use husk::vmm::devices::virtio::persist::DeviceState;
use husk::vmm::snapshot::{format, MicrovmState};
use serde_json::{json, Value};

const PAGE: u64 = 4096;

/// (file name, what the fault message says, the change to the state)
type Case = (&'static str, &'static str, fn(&mut MicrovmState));
/// A snapshot's state and memory files.
type Snap = (PathBuf, PathBuf);

/// A scratch directory, when this host can run VMs.
fn kvm_dir() -> Option<TempDir> {
    kvm_available().then(TempDir::new)
}

fn pause(vmm: &Vmm) -> Response {
    vmm.patch("/vm", json!({"state": "Paused"}))
}

fn create_body(kind: &str, state: &Path, mem: &Path) -> Value {
    json!({"snapshot_type": kind, "snapshot_path": state, "mem_file_path": mem})
}

fn create(vmm: &Vmm, kind: &str, state: &Path, mem: &Path) {
    let r = vmm.put("/snapshot/create", create_body(kind, state, mem));
    assert_eq!(r.status, 204, "{}", r.body);
}

fn load_body(state: &Path, backend: &str, path: &Path, resume: bool) -> Value {
    json!({"snapshot_path": state, "resume_vm": resume,
           "mem_backend": {"backend_type": backend, "backend_path": path}})
}

fn load(vmm: &Vmm, state: &Path, mem: &Path) -> Response {
    vmm.put("/snapshot/load", load_body(state, "File", mem, false))
}

/// PATCH /vm Paused, answered within `secs` (the client's own timeout
/// is longer than a test may wait), or None.
fn pause_within(vmm: &Vmm, secs: u64) -> Option<Response> {
    let (tx, rx) = std::sync::mpsc::channel();
    let sock = vmm.sock.clone();
    std::thread::spawn(move || {
        let _ = tx.send(client::request(
            &sock,
            "PATCH",
            "/vm",
            Some(r#"{"state":"Paused"}"#),
        ));
    });
    rx.recv_timeout(Duration::from_secs(secs)).ok()?.ok()
}

/// Asserts a 400 whose message has `expected`.
fn says(r: &Response, expected: &str) {
    let msg = Vmm::fault(r);
    assert!(msg.contains(expected), "{msg:?} lacks {expected:?}");
}

/// Asserts a 400 whose message has `expected`, and a VMM still fresh.
fn refused(vmm: &Vmm, r: Response, expected: &str, what: &str) {
    assert_eq!(r.status, 400, "{what}: got {} {}", r.status, r.body);
    let msg = Vmm::fault(&r);
    assert!(msg.contains(expected), "{what}: {msg:?} lacks {expected:?}");
    assert_eq!(vmm.get("/").json()["state"], "Not started", "{what}");
}

/// The probe set up by `setup`, booted with `args`, paused at `ready`.
fn paused(setup: impl FnOnce(&Vmm), args: &str, ready: &str) -> Vmm {
    let mut vmm = Vmm::with_api();
    setup(&vmm);
    vmm.configure(args, 1, 128);
    vmm.start();
    vmm.expect_line(ready);
    assert_eq!(pause(&vmm).status, 204);
    vmm
}

/// [`paused`], then a full snapshot into `dir`.
fn snapshot_of(dir: &TempDir, setup: impl FnOnce(&Vmm), args: &str, ready: &str) -> Snap {
    let vmm = paused(setup, args, ready);
    let (state, mem) = (dir.path("vm.snap"), dir.path("vm.mem"));
    create(&vmm, "Full", &state, &mem);
    (state, mem)
}

fn counting(dir: &TempDir) -> Snap {
    snapshot_of(dir, |_| {}, "probe=count:100000000", "COUNT 100")
}

fn decode(path: &Path) -> MicrovmState {
    format::decode(&std::fs::read(path).unwrap(), path).unwrap()
}

/// The state at `good` changed by `f`, with a valid header and CRC.
fn mutate(dir: &TempDir, good: &Path, name: &str, f: impl FnOnce(&mut MicrovmState)) -> PathBuf {
    let mut s = decode(good);
    f(&mut s);
    let p = dir.path(name);
    std::fs::write(&p, format::encode(&s).unwrap()).unwrap();
    p
}

fn config(s: &mut MicrovmState, key: &str, value: Value) {
    let mut cfg: Value = serde_json::from_str(&s.config_json).unwrap();
    match key.split_once('.') {
        Some((a, b)) => cfg[a][b] = value,
        None => cfg[key] = value,
    }
    s.config_json = cfg.to_string();
}

fn drive(path: &str) -> Value {
    json!([{"drive_id": "d", "path_on_host": path, "is_root_device": false, "is_read_only": false}])
}

fn mkfifo(p: &Path) {
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    // SAFETY: a valid C string for the length of the call.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

/// The VMM's open fds, once the count has held for 100 ms: the
/// connection of the request just answered closes on the VMM's side a
/// moment after the client has its answer.
fn fds(vmm: &Vmm) -> usize {
    let dir = format!("/proc/{}/fd", vmm.pid());
    let count = || std::fs::read_dir(&dir).unwrap().count();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    let (mut last, mut held) = (count(), 0);
    while held < 10 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
        let n = count();
        held = if n == last { held + 1 } else { 0 };
        last = n;
    }
    last
}

/// PUTs `bodies` to `path` all at once; the statuses, sorted.
fn at_once(vmm: &Vmm, path: &'static str, bodies: Vec<Value>) -> Vec<u16> {
    let threads: Vec<_> = (bodies.into_iter())
        .map(|body| {
            let sock = vmm.sock.clone();
            std::thread::spawn(move || client::request(&sock, "PUT", path, Some(&body.to_string())))
        })
        .collect();
    let mut got: Vec<u16> = (threads.into_iter())
        .map(|t| t.join().unwrap().unwrap().status)
        .collect();
    got.sort();
    got
}

fn disk(dir: &TempDir, limit: Value) -> Value {
    let path = dir.path("disk.img");
    std::fs::write(&path, vec![0u8; 1 << 20]).unwrap();
    json!({"drive_id": "data", "path_on_host": path, "is_root_device": false,
           "is_read_only": false, "rate_limiter": limit})
}

fn allocated(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().blocks() * 512
}

/// Runs `husk args` (split at spaces), killed after `secs`: then its
/// exit status is 124 (coreutils' `timeout`).
fn husk_within(secs: u64, args: &str) -> Output {
    let mut cmd = Command::new("timeout");
    cmd.arg(secs.to_string())
        .arg(husk_bin())
        .args(args.split(' '));
    cmd.stdin(Stdio::null()).output().unwrap()
}

#[rustfmt::skip]
const VCPU_VM_CONFIG: &[Case] = &[
    ("no-vcpus", "0 vCPU states for 1 vCPUs", |s| s.vcpus.clear()),
    ("100-vcpus", "100 vCPU states", |s| {
        let one = postcard::to_stdvec(&s.vcpus[0]).unwrap();
        s.vcpus = (0..100).map(|_| postcard::from_bytes(&one).unwrap()).collect();
    }),
    ("cfg-2-vcpus", "for 2 vCPUs", |s| config(s, "machine-config.vcpu_count", json!(2))),
    ("cfg-0-vcpus", "vcpu_count", |s| config(s, "machine-config.vcpu_count", json!(0))),
    ("msrs-5000", "more than KVM takes", |s| s.vcpus[0].msrs = vec![s.vcpus[0].msrs[0]; 5000]),
    ("msr-bogus", "was refused", |s| s.vcpus[0].msrs[0].index = 0xdead_beef),
    ("cpuid-10000", "more than KVM takes", |s| s.vcpus[0].cpuid = vec![s.vcpus[0].cpuid[0]; 10000]),
    ("xsave-garbage", "XSAVE", |s| s.vcpus[0].xsave.region = [u32::MAX; 1024]),
    ("mp-state-100", "MP state", |s| s.vcpus[0].mp_state.mp_state = 100),
    ("cr0-0", "sregs", |s| s.vcpus[0].sregs.cr0 = 0),
    ("dr7", "debug registers", |s| s.vcpus[0].debugregs.dr7 = u64::MAX),
    ("xcrs-1000", "XCRs", |s| s.vcpus[0].xcrs.nr_xcrs = 1000),
    ("event-255", "events", |s| {
        s.vcpus[0].vcpu_events.exception.injected = 1;
        s.vcpus[0].vcpu_events.exception.nr = 255;
    }),
    ("layout", "memory layout does not match", |s| s.memory = vec![(0, 64 << 20)]),
    ("layout-wraps", "memory layout does not match", |s| s.memory = vec![(u64::MAX - 4095, 1 << 40)]),
    ("cfg-mem-256", "bytes; the snapshot's guest has", |s| {
        config(s, "machine-config.mem_size_mib", json!(256));
        s.memory = vec![(0, 256 << 20)];
    }),
    ("cfg-not-json", "does not parse", |s| s.config_json = "{\"machine-config\":".into()),
    ("cfg-drive-missing", "/nonexistent/disk", |s| config(s, "drives", drive("/nonexistent/disk"))),
    ("cfg-drive-dir", "/proc", |s| config(s, "drives", drive("/proc"))),
    ("serial-fifo-1m", "UART FIFO", |s| s.devices.legacy.as_mut().unwrap().serial.fifo = vec![b'x'; 1 << 20]),
    ("serial-input-1m", "serial input", |s| s.devices.legacy.as_mut().unwrap().serial.pending = vec![b'x'; 1 << 20]),
    ("i8042-1m", "i8042 buffer", |s| s.devices.legacy.as_mut().unwrap().i8042.buf = vec![0; 1 << 20]),
    ("no-legacy", "legacy devices", |s| s.devices.legacy = None),
];

#[test]
fn hostile_vcpu_vm_and_config_states_and_memory_files_are_refused() {
    let Some(dir) = kvm_dir() else { return };
    let (good, mem) = counting(&dir);
    let mut b = Vmm::with_api();
    for (name, expected, f) in VCPU_VM_CONFIG {
        let p = mutate(&dir, &good, name, f);
        refused(&b, load(&b, &p, &mem), expected, name);
    }
    // Memory "files" that are not files, page servers that are not.
    let fifo = dir.path("fifo");
    mkfifo(&fifo);
    for m in [fifo.as_path(), Path::new("/dev/zero"), dir.0.as_path()] {
        let what = m.display().to_string();
        refused(&b, load(&b, &good, m), "not a regular file", &what);
    }
    for (m, what) in [(&mem, "a regular file"), (&dir.path("nobody"), "nothing")] {
        let r = b.put("/snapshot/load", load_body(&good, "Uffd", m, false));
        refused(&b, r, "cannot connect to the page server", what);
    }
    // --restore-from refuses the same way, and exits.
    let args = format!(
        "vmm --no-api --restore-from {} --mem-file {}",
        dir.path("msr-bogus").display(),
        mem.display()
    );
    let out = husk_within(5, &args);
    assert_eq!(out.status.code(), Some(1), "124 is a hang");
    assert!(String::from_utf8_lossy(&out.stderr).contains("was refused"));
    // After all that, the good snapshot loads and the guest counts on.
    let r = load(&b, &good, &mem);
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(b.patch("/vm", json!({"state": "Resumed"})).status, 204);
    b.expect_line("COUNT ");
}

#[rustfmt::skip]
const DEVICES: &[Case] = &[
    ("size-0", "size 0 is not a power of two", |s| blk(s).state.queues[0].size = 0),
    ("size-65535", "size 65535", |s| blk(s).state.queues[0].size = 65535),
    ("desc-past-ram", "not inside guest memory", |s| blk(s).state.queues[0].desc_table = 1 << 40),
    ("avail-in-mmio-gap", "not inside guest memory", |s| blk(s).state.queues[0].avail_ring = 0xd000_0000),
    ("used-across-the-end", "not inside guest memory", |s| blk(s).state.queues[0].used_ring = (128 << 20) - 8),
    ("desc-wraps", "queue 0", |s| blk(s).state.queues[0].desc_table = u64::MAX - 15),
    ("desc-unaligned", "queue 0", |s| blk(s).state.queues[0].desc_table += 1),
    ("not-ready", "not ready", |s| blk(s).state.queues[0].ready = false),
    ("two-queues", "2 queues", |s| {
        let q = blk(s).state.queues[0];
        blk(s).state.queues.push(q);
        blk(s).state.bad_size.push(false);
    }),
    ("no-queues", "0 queues", |s| {
        blk(s).state.queues.clear();
        blk(s).state.bad_size.clear();
    }),
    ("bad-size-count", "queues", |s| blk(s).state.bad_size.push(false)),
    ("bad-size-set", "not ready", |s| blk(s).state.bad_size[0] = true),
    ("running-without-driver-ok", "does not fit a device that is running", |s| blk(s).state.status &= !4),
    ("driver-ok-not-running", "does not fit a device that is stopped", |s| blk(s).state.activated = false),
    ("features", "not ones the device offers", |s| blk(s).state.driver_features = u64::MAX),
    ("event-idx", "EVENT_IDX", |s| blk(s).state.queues[0].event_idx ^= true),
    ("vsock-on-blk", "virtio-vsock device, not a virtio-blk", |s| blk(s).state.device = DeviceState::Vsock(Default::default())),
    ("net-on-blk", "virtio-net device, not a virtio-blk", |s| blk(s).state.device = DeviceState::Net(Default::default())),
    ("moved", "was at", |s| blk(s).base += 0x1000),
    ("renamed", "the snapshot has virtio-blk \"other\"", |s| blk(s).id = "other".into()),
    ("twice", "saved twice", |s| s.devices.virtio.push(s.devices.virtio[0].clone())),
    ("missing", "the restored VM has virtio-rng", |s| drop(s.devices.virtio.pop())),
];

fn blk(s: &mut MicrovmState) -> &mut VirtioEntryState {
    &mut s.devices.virtio[0]
}

#[test]
fn hostile_device_states_are_refused() {
    let Some(dir) = kvm_dir() else { return };
    let limit = json!({"bandwidth": {"size": 1 << 30, "refill_time": 100}});
    let drive = disk(&dir, limit);
    let setup = |v: &Vmm| {
        v.put_ok("/drives/data", drive);
        v.put_ok("/entropy", json!({}));
    };
    let args = "probe=blk,rng,wait-cad,blk-again,wait-cad";
    let (good, mem) = snapshot_of(&dir, setup, args, "PROBE rng OK");
    assert!(decode(&good).devices.virtio[0].state.activated);
    let mut b = Vmm::with_api();
    for (name, expected, f) in DEVICES {
        let p = mutate(&dir, &good, name, f);
        refused(&b, load(&b, &p, &mem), expected, name);
    }
    // Budgets beyond the configuration's are clamped, not refused: the
    // load works and the guest goes on with its disk.
    let greedy = mutate(&dir, &good, "greedy", |s| {
        let bucket = husk::vmm::devices::rate_limiter::TokenBucketState {
            budget: u64::MAX,
            one_time_burst: u64::MAX,
        };
        if let DeviceState::Block(b) = &mut blk(s).state.device {
            (b.limiter.bandwidth, b.limiter.ops) = (Some(bucket), Some(bucket));
        }
    });
    let r = b.put("/snapshot/load", load_body(&greedy, "File", &mem, true));
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(b.action("SendCtrlAltDel").status, 204);
    let line = b.expect_line("PROBE blk-again");
    assert!(line.ends_with("OK wrote=1"), "{line}");
}

#[test]
fn a_refused_load_leaves_no_device_socket_or_fd_behind() {
    let Some(dir) = kvm_dir() else { return };
    let (drive, uds) = (disk(&dir, json!({})), dir.path("v.sock"));
    let setup = |v: &Vmm| {
        v.put_ok("/drives/data", drive);
        v.put_ok("/vsock", json!({"guest_cid": 3, "uds_path": uds}));
    };
    let (good, mem) = snapshot_of(&dir, setup, "probe=blk,wait-cad", "PROBE blk OK");
    // Refused before any device is built (another CPU vendor) ...
    let early = mutate(&dir, &good, "vendor", |s| {
        for e in s.vcpus[0].cpuid.iter_mut().filter(|e| e.function == 0) {
            e.ebx ^= 0x2020_2020;
        }
    });
    // ... and after every device was built and started (a vCPU's MSR).
    let late = mutate(&dir, &good, "late", |s| s.vcpus[0].msrs[0].index = 1);
    let b = Vmm::with_api();
    refused(&b, load(&b, &early, &mem), "CPU; this host is", "early");
    let before = fds(&b);
    refused(&b, load(&b, &late, &mem), "was refused", "late");
    let after = fds(&b);
    // The same file again gets the same answer, and the good one loads.
    refused(&b, load(&b, &late, &mem), "was refused", "late, again");
    let r = load(&b, &good, &mem);
    assert_eq!(r.status, 204, "after refused loads: {}", r.body);
    assert!(
        after <= before,
        "fds left open by a refused load: {after} after, {before} before"
    );
}

#[test]
fn a_restored_configuration_is_checked_as_a_cold_boot_is() {
    let Some(dir) = kvm_dir() else { return };
    let uds = dir.path("v.sock");
    let setup = |v: &Vmm| v.put_ok("/vsock", json!({"guest_cid": 3, "uds_path": uds}));
    let (good, mem) = snapshot_of(&dir, setup, "probe=count:100000000", "COUNT 100");
    #[rustfmt::skip]
    let cases: &[Case] = &[
        ("cid-0", "guest_cid", |s| config(s, "vsock.guest_cid", json!(0))),
        ("cid-2", "guest_cid", |s| config(s, "vsock.guest_cid", json!(2))),
        ("cid-any", "guest_cid", |s| config(s, "vsock.guest_cid", json!(u32::MAX))),
        ("uds-empty", "uds_path", |s| config(s, "vsock.uds_path", json!(""))),
    ];
    for (name, expected, f) in cases {
        // A fresh VMM each: a load wrongly taken starts the VMM.
        let b = Vmm::with_api();
        let p = mutate(&dir, &good, name, f);
        refused(&b, load(&b, &p, &mem), expected, name);
    }
}

/// (inode, mtime) of `p`: still the same file, unchanged.
fn identity(p: &Path) -> (u64, i64, i64) {
    let m = std::fs::metadata(p).unwrap();
    (m.ino(), m.mtime(), m.mtime_nsec())
}

#[test]
fn a_refused_create_changes_no_file_and_creates_take_turns() {
    let Some(dir) = kvm_dir() else { return };
    let vmm = paused(|_| {}, "probe=count:100000000", "COUNT 100");
    let (state, mem, sub) = (dir.path("s"), dir.path("m"), dir.path("sub"));
    create(&vmm, "Full", &state, &mem);
    std::fs::create_dir(&sub).unwrap();
    let proc = &PathBuf::from("/proc/self/husk");
    let kept = (identity(&state), identity(&mem));
    // The state file cannot be written: the memory file of the snapshot
    // already there must not be replaced first. Nor the other way round.
    for (s, m, expected) in [
        (&dir.path("missing/s"), &mem, "cannot write"),
        (&sub, &mem, "cannot write"),
        (proc, &mem, "cannot write"),
        (&state, &dir.path("missing/m"), "cannot write"),
        (&state, &sub, "cannot write"),
        (&state, proc, "cannot write"),
    ] {
        let what = format!("{} + {}", s.display(), m.display());
        let msg = Vmm::fault(&vmm.put("/snapshot/create", create_body("Full", s, m)));
        assert!(msg.contains(expected), "{what}: {msg}");
        assert_eq!(vmm.get("/").json()["state"], "Paused", "{what}");
        let now = (identity(&state), identity(&mem));
        assert_eq!(now, kept, "{what} replaced a file");
    }
    // One file under two names is still one file.
    let r = vmm.put(
        "/snapshot/create",
        create_body("Full", &state, &dir.0.join("./s")),
    );
    assert_eq!(r.status, 400, "state and memory in one file: {}", r.body);
    // Two creates at once both work, one after the other; of two loads
    // at once into one VMM, one is taken and the other refused.
    let pairs = [("a", "a.mem"), ("b", "b.mem")].map(|(s, m)| (dir.path(s), dir.path(m)));
    let creates = pairs.iter().map(|(s, m)| create_body("Full", s, m));
    assert_eq!(
        at_once(&vmm, "/snapshot/create", creates.collect()),
        [204, 204]
    );
    let b = Vmm::with_api();
    let loads = pairs.iter().map(|(s, m)| load_body(s, "File", m, false));
    assert_eq!(at_once(&b, "/snapshot/load", loads.collect()), [204, 400]);
    assert_eq!(b.get("/").json()["state"], "Paused");
}

#[test]
fn a_refused_diff_keeps_its_dirty_pages_for_the_next_one() {
    let Some(dir) = kvm_dir() else { return };
    let mut a = Vmm::with_api();
    a.configure("probe=boot,wait-cad,dirty:300,wait-cad", 1, 128);
    let machine = json!({"vcpu_count": 1, "mem_size_mib": 128, "track_dirty_pages": true});
    a.put_ok("/machine-config", machine);
    a.start();
    a.expect_line("PROBE boot OK");
    assert_eq!(pause(&a).status, 204);
    create(&a, "Full", &dir.path("base.snap"), &dir.path("base.mem"));
    assert_eq!(a.patch("/vm", json!({"state": "Resumed"})).status, 204);
    assert_eq!(a.action("SendCtrlAltDel").status, 204);
    a.expect_line("PROBE dirty:300 OK");
    assert_eq!(pause(&a).status, 204);
    // The state file cannot be written: the diff is refused ...
    let lost = create_body("Diff", &dir.0, &dir.path("lost.mem"));
    says(&a.put("/snapshot/create", lost), "cannot write");
    // ... and the next diff still holds the pages written since the full
    // snapshot, or rebasing it onto that snapshot loses them.
    let diff = dir.path("diff.mem");
    create(&a, "Diff", &dir.path("diff.snap"), &diff);
    let pages = allocated(&diff) / PAGE;
    assert!(pages >= 300, "the diff holds {pages} pages");
}

/// A page server for one VMM, on a thread: it serves every fault from
/// `mem`, starting `delay` after the VMM's message; with no delay, it
/// takes the connection and never reads from it.
fn page_server(sock: &Path, mem: &Path, delay: Option<Duration>) {
    use husk::vmm::snapshot::uffd::GuestRegionUffdMapping;
    use std::os::fd::{FromRawFd, IntoRawFd};
    use std::os::unix::fs::FileExt;
    use vmm_sys_util::sock_ctrl_msg::ScmSocket;
    let listener = UnixListener::bind(sock).unwrap();
    let file = std::fs::File::open(mem).unwrap();
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let Some(delay) = delay else {
            std::thread::sleep(Duration::from_secs(3600));
            return;
        };
        let mut buf = vec![0u8; 4096];
        let (n, fd) = stream.recv_with_fd(&mut buf).unwrap();
        // SAFETY: the fd just received is this thread's alone.
        let uffd = unsafe { userfaultfd::Uffd::from_raw_fd(fd.unwrap().into_raw_fd()) };
        let regions: Vec<GuestRegionUffdMapping> = serde_json::from_slice(&buf[..n]).unwrap();
        std::thread::sleep(delay);
        let mut page = vec![0u8; PAGE as usize];
        loop {
            // The userfaultfd is non-blocking: wait for an event (or a
            // millisecond, to notice the VMM going away).
            let mut pfd = libc::pollfd {
                fd: std::os::fd::AsRawFd::as_raw_fd(&uffd),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd, for the duration of the call.
            unsafe { libc::poll(&mut pfd, 1, 1) };
            while let Ok(Some(userfaultfd::Event::Pagefault { addr, .. })) = uffd.read_event() {
                let at = addr as u64 & !(PAGE - 1);
                let r = regions.iter().find(|r| r.contains(at)).unwrap();
                let offset = r.offset + at - r.base_host_virt_addr;
                file.read_exact_at(&mut page, offset).unwrap();
                // SAFETY: `at` is a page of the VMM's registered memory.
                let _ = unsafe { uffd.copy(page.as_ptr().cast(), at as *mut _, page.len(), true) };
            }
        }
    });
}

/// Whether a `COUNT` line comes within `secs`.
fn counts_within(vmm: &mut Vmm, secs: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        let lines = vmm.drain(Duration::from_millis(200));
        if lines.iter().any(|l| l.starts_with("COUNT ")) {
            return true;
        }
    }
    false
}

#[test]
fn a_page_server_that_never_reads_does_not_stop_the_api() {
    let Some(dir) = kvm_dir() else { return };
    let (state, mem) = counting(&dir);
    let sock = dir.path("deaf.sock");
    page_server(&sock, &mem, None);
    let b = Vmm::with_api();
    let r = b.put("/snapshot/load", load_body(&state, "Uffd", &sock, true));
    assert_eq!(r.status, 204, "{}", r.body);
    // The vCPU waits for a page that never comes: pausing it fails in
    // time, with a reason, and the API goes on answering.
    let r = pause_within(&b, 5).expect("PATCH /vm hangs");
    says(&r, "did not answer in time");
    assert_eq!(b.get("/").json()["state"], "Running");
}

#[test]
fn a_vcpu_that_pauses_late_does_not_leave_a_running_vm_stopped() {
    let Some(dir) = kvm_dir() else { return };
    let (state, mem) = counting(&dir);
    let sock = dir.path("slow.sock");
    page_server(&sock, &mem, Some(Duration::from_secs(3)));
    let mut b = Vmm::with_api();
    let r = b.put("/snapshot/load", load_body(&state, "Uffd", &sock, true));
    assert_eq!(r.status, 204, "{}", r.body);
    // The vCPU waits for its first page: the pause may time out. What
    // the VMM then says must be true once the pages come.
    let r = pause(&b);
    if r.status == 204 {
        assert_eq!(b.patch("/vm", json!({"state": "Resumed"})).status, 204);
    } else {
        says(&r, "did not answer in time");
        assert_eq!(b.get("/").json()["state"], "Running");
    }
    assert!(
        counts_within(&mut b, 6),
        "the VMM says Running, the guest does not run"
    );
}

#[test]
fn a_snapshot_of_a_uffd_restored_vm_holds_all_its_memory() {
    let Some(dir) = kvm_dir() else { return };
    let (state, mem) = counting(&dir);
    let sock = dir.path("uffd.sock");
    page_server(&sock, &mem, Some(Duration::ZERO));
    let b = Vmm::with_api();
    let r = b.put("/snapshot/load", load_body(&state, "Uffd", &sock, false));
    assert_eq!(r.status, 204, "{}", r.body);
    let (s2, m2) = (dir.path("again.snap"), dir.path("again.mem"));
    create(&b, "Full", &s2, &m2);
    let (now, then) = (allocated(&m2) >> 10, allocated(&mem) >> 10);
    assert!(
        now >= then,
        "the new memory file holds {now} KiB, the one restored {then} KiB"
    );
    let mut c = Vmm::with_api();
    let r = c.put("/snapshot/load", load_body(&s2, "File", &m2, true));
    assert_eq!(r.status, 204, "{}", r.body);
    c.expect_line("COUNT ");
}

#[test]
fn the_snapshot_commands_refuse_what_is_not_a_snapshot_without_hanging() {
    let dir = TempDir::new();
    let base = dir.path("base.mem");
    std::fs::write(&base, [1u8; 8192]).unwrap();
    let (fifo, sub, junk) = (dir.path("fifo"), dir.path("sub"), dir.path("junk"));
    mkfifo(&fifo);
    std::fs::create_dir(&sub).unwrap();
    std::fs::write(&junk, format::frame(b"\x05hello")).unwrap();
    let [base, fifo, sub, junk] = [base, fifo, sub, junk].map(|p| p.display().to_string());
    for (args, expected) in [
        (format!("rebase {fifo} --base {base}"), "fifo"),
        (format!("rebase {base} --base {fifo}"), "fifo"),
        (format!("rebase {sub} --base {base}"), "sub"),
        (format!("rebase {base} --base {sub}"), "sub"),
        (format!("inspect {junk}"), "corrupt"),
        (format!("inspect {fifo}"), "not a regular file"),
    ] {
        let out = husk_within(3, &format!("snapshot {args}"));
        let err = String::from_utf8_lossy(&out.stderr);
        let code = out.status.code();
        assert_eq!(code, Some(1), "husk snapshot {args} (124: hangs): {err}");
        assert!(err.contains(expected), "husk snapshot {args}: {err}");
    }
    assert_eq!(std::fs::read(&base).unwrap(), [1u8; 8192]);
}
