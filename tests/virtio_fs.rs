//! virtio-fs end to end: a real virtiofsd serves a host directory over
//! vhost-user, the probe guest (`probe=fs`) sends it FUSE requests
//! through husk's device (INIT, LOOKUP + OPEN + READ of `hello.txt`,
//! CREATE + WRITE of `guest.txt`), and the test checks the bytes on both
//! sides. Then the edges: a read-only share (EROFS), a backend that is
//! not there, one that hangs up at once, one that dies mid-run, the API's
//! validation, the snapshot refusal, and a jailed run. virtiofsd is found
//! on PATH or in ~/.cargo/bin; without it each test says `skipped:`.

mod common;
#[path = "common/jail.rs"]
mod jail;

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{kvm_available, skip, TempDir, Vmm, TIMEOUT};
use serde_json::{json, Value};

const HOST_DATA: &str = "HUSK-VIRTIOFS-HOST-DATA";
const GUEST_DATA: &str = "HUSK-VIRTIOFS-GUEST-WRITE";
/// The line `probe=fs` prints for a writable share tagged "share".
const FS_OK: &str = "PROBE fs OK tag=share queues=1 init=7.";

/// virtiofsd, from PATH or ~/.cargo/bin; None (after saying so) when it
/// is not installed, or when this host cannot run VMs.
fn virtiofsd_bin() -> Option<PathBuf> {
    if !kvm_available() {
        return None;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let cargo = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin"));
    let found = std::env::split_paths(&path)
        .chain(cargo)
        .map(|d| d.join("virtiofsd"))
        .find(|p| p.is_file());
    if found.is_none() {
        skip("virtiofsd is not installed");
    }
    found
}

/// A virtiofsd serving a fresh directory that holds `hello.txt`.
struct Virtiofsd {
    child: Child,
    shared: TempDir,
    sock: PathBuf,
    log: Arc<Mutex<String>>,
}

impl Virtiofsd {
    /// Starts virtiofsd on `sock` (`--sandbox namespace` as root, `none`
    /// otherwise) with `extra` flags, and waits until it listens.
    fn start(bin: &Path, sock: &Path, extra: &[&str]) -> Virtiofsd {
        let shared = TempDir::new();
        std::fs::write(shared.path("hello.txt"), HOST_DATA).unwrap();
        // SAFETY: geteuid cannot fail.
        let sandbox = if unsafe { libc::geteuid() } == 0 {
            "namespace"
        } else {
            "none"
        };
        let mut child = Command::new(bin)
            .arg("--socket-path")
            .arg(sock)
            .arg("--shared-dir")
            .arg(&shared.0)
            .args(["--sandbox", sandbox, "--log-level", "info"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn virtiofsd");
        // It says it waits for a connection once it listens: connecting
        // earlier could be refused, and it serves one connection only.
        let (tx, rx) = std::sync::mpsc::channel();
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(stderr).lines().map_while(Result::ok) {
                if l.contains("Waiting for vhost-user socket connection") {
                    let _ = tx.send(());
                }
                sink.lock().unwrap().push_str(&(l + "\n"));
            }
        });
        let listening = rx.recv_timeout(TIMEOUT).is_ok();
        assert!(
            listening,
            "virtiofsd never listened on {}: {}",
            sock.display(),
            log.lock().unwrap()
        );
        Virtiofsd {
            child,
            shared,
            sock: sock.to_path_buf(),
            log,
        }
    }

    /// Waits for virtiofsd to exit by itself (it does once husk closes
    /// the connection); None if it is still running after `within`.
    fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `PUT /fs/share` for `sock`, with the defaults left out.
fn fs_body(sock: &Path) -> Value {
    json!({"tag": "share", "socket_path": sock})
}

/// The guest's `fs` line read `hello.txt` and created `guest.txt` with
/// its bytes, which are now in the host directory.
fn assert_read_and_wrote(line: &str, fsd: &Virtiofsd) {
    assert!(line.starts_with(FS_OK), "{line}");
    let tail = format!(" irq=1 size=23 read={HOST_DATA} create=0 wrote=25");
    assert!(line.ends_with(&tail), "{line}");
    let created = std::fs::read_to_string(fsd.shared.path("guest.txt")).unwrap();
    assert_eq!(created, GUEST_DATA);
}

#[test]
fn the_guest_reads_and_writes_a_host_directory_through_the_api() {
    let Some(bin) = virtiofsd_bin() else {
        return;
    };
    let mut vmm = Vmm::with_api();
    let mut fsd = Virtiofsd::start(&bin, &vmm.dir.path("fs.sock"), &[]);
    vmm.put_ok("/fs/share", fs_body(&fsd.sock));
    assert_eq!(
        vmm.get("/vm/config").json()["fs-devices"],
        json!([{"tag": "share", "socket_path": fsd.sock, "num_queues": 1, "queue_size": 1024}])
    );
    vmm.configure("probe=fs,fs-again,wait-cad", 1, 128);
    vmm.start();
    let line = vmm.expect_line("PROBE fs ");
    assert_read_and_wrote(&line, &fsd);
    // A reset, and the backend gets the queues again.
    assert_eq!(
        vmm.expect_line("PROBE fs-again"),
        "PROBE fs-again OK size=23"
    );
    common::assert_filtered(vmm.pid());
    let m = vmm.get("/metrics").json();
    assert_eq!(m["fs"]["activations"], 2, "{m}");
    assert!(m["fs"]["interrupts"].as_u64().unwrap() >= 1, "{m}");
    assert_eq!(m["fs"]["backend_disconnects"], 0, "{m}");
    assert_eq!(m["fs"]["backend_errors"], 0, "{m}");
    vmm.action("SendCtrlAltDel");
    assert_eq!(vmm.wait().code(), Some(0));
    // The connection closed with the VMM: virtiofsd ends by itself.
    let status = fsd.wait_exit(TIMEOUT);
    assert!(status.is_some(), "virtiofsd still runs: {}", fsd.log());
    assert!(!fsd.log().contains("ERROR"), "{}", fsd.log());
}

#[test]
fn a_config_file_fs_device_serves_the_guest() {
    let Some(bin) = virtiofsd_bin() else {
        return;
    };
    let dir = TempDir::new();
    let fsd = Virtiofsd::start(&bin, &dir.path("fs.sock"), &[]);
    let sock = fsd.sock.clone();
    let mut vmm = Vmm::with_config(|kernel| {
        json!({
            "boot-source": {"kernel_image_path": kernel, "boot_args": "probe=fs"},
            "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
            "fs-devices": [{"tag": "share", "socket_path": sock, "queue_size": 256}],
        })
    });
    let line = vmm.expect_line("PROBE fs ");
    assert_read_and_wrote(&line, &fsd);
    assert_eq!(vmm.wait().code(), Some(0));
}

/// With `huge_pages: "2M"` the shared memfd virtiofsd maps is a
/// hugetlbfs one, and the guest's requests go through it all the same.
#[test]
fn a_hugetlbfs_memfd_is_shared_with_the_backend() {
    let Some(bin) = virtiofsd_bin() else {
        return;
    };
    let Some(_pool) = common::hugepages::Pool::with_available(64) else {
        return;
    };
    let mut vmm = Vmm::with_api();
    let mut fsd = Virtiofsd::start(&bin, &vmm.dir.path("fs.sock"), &[]);
    vmm.put_ok("/fs/share", fs_body(&fsd.sock));
    vmm.put_ok(
        "/boot-source",
        json!({"kernel_image_path": vmm.kernel, "boot_args": "probe=fs,wait-cad"}),
    );
    vmm.put_ok(
        "/machine-config",
        json!({"vcpu_count": 1, "mem_size_mib": 128, "huge_pages": "2M"}),
    );
    vmm.start();
    let line = vmm.expect_line("PROBE fs ");
    assert_read_and_wrote(&line, &fsd);
    // Both processes map the same hugetlbfs memfd, which holds the pages
    // (virtiofsd's sandbox runs it in a child of the process started).
    let children =
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", fsd.child.id())).unwrap();
    let backend: u32 = children
        .split_whitespace()
        .next()
        .map_or(fsd.child.id(), |c| c.parse().unwrap());
    for pid in [vmm.pid(), backend] {
        let vmas = common::hugepages::guest_memory_vmas(pid, 128);
        assert_eq!(vmas.len(), 1, "pid {pid}: {vmas:?}");
        let vma = &vmas[0];
        assert!(vma.header.contains("memfd:husk-guest-ram"), "{vma:?}");
        assert_eq!(vma.num("KernelPageSize"), 2048, "{vma:?}");
        assert!(vma.num("Shared_Hugetlb") > 0, "{vma:?}");
    }
    vmm.action("SendCtrlAltDel");
    vmm.expect_line("PROBE wait-cad OK");
    assert_eq!(vmm.wait().code(), Some(0));
    assert!(fsd.wait_exit(TIMEOUT).is_some(), "{}", fsd.log());
}

#[test]
fn a_read_only_share_refuses_the_guests_create_with_erofs() {
    let Some(bin) = virtiofsd_bin() else {
        return;
    };
    let mut vmm = Vmm::with_api();
    let fsd = Virtiofsd::start(&bin, &vmm.dir.path("fs.sock"), &["--readonly"]);
    vmm.put_ok("/fs/share", fs_body(&fsd.sock));
    vmm.configure("probe=fs", 1, 128);
    vmm.start();
    let line = vmm.expect_line("PROBE fs ");
    assert!(line.starts_with(FS_OK), "{line}");
    // FUSE error -30: EROFS; reading still works.
    let tail = format!(" irq=1 size=23 read={HOST_DATA} create=-30");
    assert!(line.ends_with(&tail), "{line}");
    assert!(!fsd.shared.path("guest.txt").exists());
    assert_eq!(vmm.wait().code(), Some(0));
}

#[test]
fn bad_fs_devices_get_400s_and_the_same_tag_replaces() {
    if virtiofsd_bin().is_none() {
        return;
    }
    let vmm = Vmm::with_api();
    let sock = vmm.dir.path("fs.sock");
    let _listener = UnixListener::bind(&sock).unwrap();
    let file = vmm.dir.path("file");
    std::fs::write(&file, b"not a socket").unwrap();
    let long = "x".repeat(37);
    let long_path = format!("/fs/{long}");
    let body = |tag: &str, extra: Value| {
        let mut b = json!({"tag": tag, "socket_path": sock});
        b.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        b
    };
    let cases = [
        (
            "/fs/share",
            body("other", json!({})),
            "differs from the one in the path",
        ),
        (long_path.as_str(), body(&long, json!({})), "invalid fs tag"),
        ("/fs/a%00b", body("a\0b", json!({})), "invalid fs tag"),
        (
            "/fs/share",
            body("share", json!({"num_queues": 0})),
            "num_queues must be between 1 and 8",
        ),
        (
            "/fs/share",
            body("share", json!({"num_queues": 9})),
            "num_queues must be between 1 and 8",
        ),
        (
            "/fs/share",
            body("share", json!({"queue_size": 1000})),
            "queue_size must be a power of two",
        ),
        (
            "/fs/share",
            body("share", json!({"queue_size": 2048})),
            "queue_size must be a power of two",
        ),
        (
            "/fs/share",
            body("share", json!({"socket_path": "/nonexistent/fs.sock"})),
            "cannot be reached",
        ),
        (
            "/fs/share",
            body("share", json!({"socket_path": file})),
            "is not a socket",
        ),
        (
            "/fs/share",
            body("share", json!({"cache": "always"})),
            "unknown field `cache`",
        ),
        (
            "/fs/share",
            json!({"tag": "share"}),
            "missing field `socket_path`",
        ),
    ];
    for (path, body, want) in cases {
        let msg = Vmm::fault(&vmm.put(path, body.clone()));
        assert!(msg.contains(want), "{path} {body}: {msg}");
    }
    assert!(vmm.get("/vm/config").json().get("fs-devices").is_none());
    // The same tag twice: the second replaces the first.
    vmm.put_ok("/fs/share", body("share", json!({"num_queues": 2})));
    vmm.put_ok("/fs/share", body("share", json!({"queue_size": 64})));
    vmm.put_ok("/fs/other", body("other", json!({})));
    let devs = vmm.get("/vm/config").json()["fs-devices"].clone();
    assert_eq!(devs.as_array().unwrap().len(), 2, "{devs}");
    assert_eq!(devs[0]["tag"], "share");
    assert_eq!(
        (devs[0]["num_queues"].clone(), devs[0]["queue_size"].clone()),
        (json!(1), json!(64))
    );
}

#[test]
fn an_fs_device_cannot_be_added_after_start() {
    let Some(bin) = virtiofsd_bin() else {
        return;
    };
    let mut vmm = Vmm::with_api();
    let fsd = Virtiofsd::start(&bin, &vmm.dir.path("fs.sock"), &[]);
    vmm.configure("probe=wait-cad", 1, 128);
    vmm.start();
    let r = vmm.put("/fs/share", fs_body(&fsd.sock));
    let msg = Vmm::fault(&r);
    assert!(msg.contains("not supported after starting"), "{msg}");
    vmm.action("SendCtrlAltDel");
    assert_eq!(vmm.wait().code(), Some(0));
}

#[test]
fn a_backend_that_is_not_there_fails_instance_start() {
    if virtiofsd_bin().is_none() {
        return;
    }
    let mut vmm = Vmm::with_api();
    // A socket file nobody listens on (its owner is gone).
    let sock = vmm.dir.path("stale.sock");
    drop(UnixListener::bind(&sock).unwrap());
    vmm.put_ok("/fs/share", fs_body(&sock));
    vmm.configure("probe=fs", 1, 128);
    let msg = Vmm::fault(&vmm.action("InstanceStart"));
    assert!(
        msg.contains("cannot connect to the vhost-user backend at")
            && msg.contains("Connection refused"),
        "{msg}"
    );
    assert!(vmm.is_running());
    assert_eq!(vmm.get("/").json()["state"], "Not started");
}

#[test]
fn more_queues_than_the_backend_serves_fail_the_start() {
    let Some(bin) = virtiofsd_bin() else {
        return;
    };
    let mut vmm = Vmm::with_api();
    let fsd = Virtiofsd::start(&bin, &vmm.dir.path("fs.sock"), &[]);
    let body = json!({"tag": "share", "socket_path": fsd.sock, "num_queues": 2});
    vmm.put_ok("/fs/share", body);
    vmm.configure("probe=fs", 1, 128);
    let msg = Vmm::fault(&vmm.action("InstanceStart"));
    // virtiofsd serves the hiprio queue and one request queue.
    assert!(
        msg.contains("the vhost-user backend serves 2 queues; the device needs 3"),
        "{msg}"
    );
    assert!(vmm.is_running());
}

#[test]
fn a_backend_that_hangs_up_at_once_fails_the_start_and_a_real_one_then_works() {
    let Some(bin) = virtiofsd_bin() else {
        return;
    };
    let mut vmm = Vmm::with_api();
    let hostile = vmm.dir.path("hostile.sock");
    let listener = UnixListener::bind(&hostile).unwrap();
    let server = std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        drop(s);
    });
    vmm.put_ok("/fs/share", fs_body(&hostile));
    vmm.configure("probe=fs", 1, 128);
    let msg = Vmm::fault(&vmm.action("InstanceStart"));
    server.join().unwrap();
    assert!(
        msg.contains("the vhost-user backend closed the connection (during"),
        "{msg}"
    );
    assert!(vmm.is_running(), "the VMM died");
    assert_eq!(vmm.get("/").json()["state"], "Not started");
    // Nothing of the failed start is left: the same tag, now on a real
    // backend, boots.
    let fsd = Virtiofsd::start(&bin, &vmm.dir.path("fs.sock"), &[]);
    vmm.put_ok("/fs/share", fs_body(&fsd.sock));
    vmm.start();
    let line = vmm.expect_line("PROBE fs ");
    assert_read_and_wrote(&line, &fsd);
    assert_eq!(vmm.wait().code(), Some(0));
}

#[test]
fn a_backend_that_dies_mid_run_leaves_the_guests_requests_unanswered() {
    let Some(bin) = virtiofsd_bin() else {
        return;
    };
    let mut vmm = Vmm::with_api();
    let mut fsd = Virtiofsd::start(&bin, &vmm.dir.path("fs.sock"), &[]);
    vmm.put_ok("/fs/share", fs_body(&fsd.sock));
    vmm.configure("probe=fs,wait-cad,fs-again", 1, 128);
    vmm.start();
    let line = vmm.expect_line("PROBE fs ");
    assert!(line.starts_with(FS_OK), "{line}");
    fsd.child.kill().unwrap();
    fsd.child.wait().unwrap();
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let m = vmm.get("/metrics").json();
        if m["fs"]["backend_disconnects"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "no disconnect counted: {m}");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(vmm.is_running());
    vmm.action("SendCtrlAltDel");
    assert_eq!(
        vmm.expect_line("PROBE fs-again"),
        "PROBE fs-again FAIL lookup: timed out waiting for the used ring"
    );
    assert_eq!(vmm.wait().code(), Some(0));
}

#[test]
fn a_vm_with_an_fs_device_cannot_be_snapshotted() {
    let Some(bin) = virtiofsd_bin() else {
        return;
    };
    let mut vmm = Vmm::with_api();
    let fsd = Virtiofsd::start(&bin, &vmm.dir.path("fs.sock"), &[]);
    vmm.put_ok("/fs/share", fs_body(&fsd.sock));
    vmm.configure("probe=fs,wait-cad", 1, 128);
    vmm.start();
    vmm.expect_line("PROBE fs ");
    let r = vmm.patch("/vm", json!({"state": "Paused"}));
    assert_eq!(r.status, 204, "{}", r.body);
    let (state, mem) = (vmm.dir.path("vm.snap"), vmm.dir.path("vm.mem"));
    let body = json!({"snapshot_path": state, "mem_file_path": mem, "snapshot_type": "Full"});
    let msg = Vmm::fault(&vmm.put("/snapshot/create", body));
    assert!(
        msg.contains("cannot be snapshotted")
            && msg.contains("\"share\"")
            && msg.contains("virtiofsd"),
        "{msg}"
    );
    assert!(!state.exists() && !mem.exists());
    let r = vmm.patch("/vm", json!({"state": "Resumed"}));
    assert_eq!(r.status, 204, "{}", r.body);
    vmm.action("SendCtrlAltDel");
    assert_eq!(vmm.wait().code(), Some(0));
}

#[test]
fn a_jailed_vmm_reaches_a_backend_socket_inside_its_jail() {
    use jail::{can_jail, wait_pid_file, Jailer, Scratch, GID, UID};
    let Some(bin) = virtiofsd_bin() else {
        return;
    };
    if !can_jail() {
        return;
    }
    let s = Scratch::new();
    let mut j = Jailer::spawn(&s.jail_args("fs").api());
    let root = s.root("fs");
    let api = root.join("run/api.sock");
    let deadline = Instant::now() + TIMEOUT;
    while std::os::unix::net::UnixStream::connect(&api).is_err() {
        assert!(
            Instant::now() < deadline,
            "no API socket; stderr {}",
            j.stderr()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let pid = wait_pid_file(&root);
    // The backend's socket lives in the jail, and the jailed uid may use it.
    let fsd = Virtiofsd::start(&bin, &root.join("run/fs.sock"), &[]);
    std::os::unix::fs::chown(&fsd.sock, Some(UID), Some(GID)).unwrap();
    let req = |method: &str, path: &str, body: Value| {
        let r = husk::vmm::client::request(&api, method, path, Some(&body.to_string())).unwrap();
        assert_eq!(r.status, 204, "{method} {path}: {}", r.body);
    };
    req(
        "PUT",
        "/fs/share",
        json!({"tag": "share", "socket_path": "/run/fs.sock"}),
    );
    req(
        "PUT",
        "/boot-source",
        json!({"kernel_image_path": "/kernel", "boot_args": "probe=fs,wait-cad"}),
    );
    req(
        "PUT",
        "/machine-config",
        json!({"vcpu_count": 1, "mem_size_mib": 128}),
    );
    req("PUT", "/actions", json!({"action_type": "InstanceStart"}));
    let line = j.expect_line("PROBE fs ");
    assert_read_and_wrote(&line, &fsd);
    common::assert_filtered(pid as u32);
    assert_eq!(jail::status_field(pid, "NoNewPrivs"), "1");
    let uid = jail::status_field(pid, "Uid");
    assert_eq!(uid, format!("{UID}\t{UID}\t{UID}\t{UID}"));
    req("PUT", "/actions", json!({"action_type": "SendCtrlAltDel"}));
    let status = j.wait();
    let err = j.stderr();
    assert_eq!(status.code(), Some(0), "stderr {err}");
    assert!(!err.contains("seccomp"), "{err}");
}
