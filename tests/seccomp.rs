//! Seccomp filters on every thread of `husk vmm`: a forbidden system
//! call from each thread kind kills the process with SIGSYS, `log` lets
//! it through, `--no-seccomp` turns the filters off and says so, and the
//! filters are on before the API answers and before guest code runs.
//!
//! The forbidden call comes from the `test-hooks` feature's
//! `PUT /test/forbidden-call` (a TCP socket, which no filter allows),
//! made on the thread the test names; `scripts/test.sh` builds with it.
//! The device tests (`virtio*.rs`, `snapshot_devices.rs`) check with
//! `assert_filtered` that the probe guest's device and snapshot runs
//! happen under the filters.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use common::{husk_bin, kvm_available, probe_kernel, seccomp_modes, skip, TempDir, TIMEOUT};
use husk::vmm::client;
use serde_json::json;

fn hooks_built() -> bool {
    if !cfg!(feature = "test-hooks") {
        skip("built without the test-hooks feature (scripts/test.sh turns it on)");
        return false;
    }
    kvm_available()
}

/// A `husk vmm` with an API socket and its stdout and stderr captured.
struct Proc {
    _dir: TempDir,
    sock: PathBuf,
    child: Child,
    stdout: Receiver<String>,
    stderr: Receiver<String>,
}

fn lines(r: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for l in BufReader::new(r).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    rx
}

impl Proc {
    /// Starts `husk vmm --api-sock` with `extra` arguments; with `boot`,
    /// a probe guest that counts for a long time, once it has counted.
    fn start(extra: &[&str], boot: bool) -> Proc {
        let dir = TempDir::new();
        let sock = dir.path("api.sock");
        let kernel = probe_kernel(&dir);
        let mut args: Vec<String> = vec!["vmm".into(), "--api-sock".into()];
        args.push(sock.to_str().unwrap().into());
        if boot {
            let cfg = dir.path("vm.json");
            let vm = json!({
                "boot-source": {"kernel_image_path": kernel, "boot_args": "probe=count:100000000"},
                "machine-config": {"vcpu_count": 2, "mem_size_mib": 128},
            });
            std::fs::write(&cfg, vm.to_string()).unwrap();
            args.push("--config-file".into());
            args.push(cfg.to_str().unwrap().into());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut child = Command::new(husk_bin())
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("HUSK_LOG", "error")
            .spawn()
            .expect("spawn husk vmm");
        let stdout = lines(child.stdout.take().unwrap());
        let stderr = lines(child.stderr.take().unwrap());
        let p = Proc {
            _dir: dir,
            sock,
            child,
            stdout,
            stderr,
        };
        let t = Instant::now();
        while std::os::unix::net::UnixStream::connect(&p.sock).is_err() {
            assert!(t.elapsed() < TIMEOUT, "API socket never came up");
            std::thread::sleep(Duration::from_millis(2));
        }
        if boot {
            let line = p.stdout.recv_timeout(TIMEOUT).expect("no serial output");
            assert!(
                line.starts_with("PROBE") || line.starts_with("COUNT"),
                "{line}"
            );
        }
        p
    }

    fn call(&self, thread: &str) -> Option<client::Response> {
        let body = json!({ "thread": thread }).to_string();
        client::request(&self.sock, "PUT", "/test/forbidden-call", Some(&body)).ok()
    }

    fn wait(&mut self) -> std::process::ExitStatus {
        let t = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(t.elapsed() < TIMEOUT, "husk vmm did not exit");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn stderr_text(&self) -> String {
        let mut s = String::new();
        while let Ok(l) = self.stderr.recv_timeout(Duration::from_millis(200)) {
            s.push_str(&l);
            s.push('\n');
        }
        s
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_forbidden_call_from_each_thread_kind_kills_the_process_with_sigsys() {
    if !hooks_built() {
        return;
    }
    for kind in ["api", "vmm", "vcpu"] {
        let mut p = Proc::start(&[], true);
        // The process dies before it can answer.
        let answer = p.call(kind);
        assert!(
            answer.as_ref().is_none_or(|r| r.status >= 500),
            "{kind}: answered {:?}",
            answer.map(|r| r.body)
        );
        let status = p.wait();
        assert_eq!(status.signal(), Some(libc::SIGSYS), "{kind}: {status:?}");
        let err = p.stderr_text();
        let expected = format!(
            "the {kind} thread made forbidden system call {}",
            libc::SYS_socket
        );
        assert!(err.contains(&expected), "{kind}: stderr was {err:?}");
    }
}

#[test]
fn at_log_level_the_call_goes_through_and_the_vmm_keeps_serving() {
    if !hooks_built() {
        return;
    }
    let mut p = Proc::start(&["--seccomp-level", "log"], true);
    for kind in ["api", "vmm", "vcpu"] {
        let r = p.call(kind).expect("an answer");
        assert_eq!(r.status, 200, "{kind}: {}", r.body);
        assert_eq!(r.json()["went_through"], true, "{kind}: {}", r.body);
    }
    // Still filtered, still running, still counting.
    common::assert_filtered(p.pid());
    assert_eq!(
        client::request(&p.sock, "GET", "/", None).unwrap().status,
        200
    );
    assert!(p.child.try_wait().unwrap().is_none());
    assert!(p.stdout.recv_timeout(TIMEOUT).is_ok());
}

#[test]
fn no_seccomp_says_so_loudly_and_filters_nothing() {
    if !hooks_built() {
        return;
    }
    let p = Proc::start(&["--no-seccomp"], true);
    let r = p.call("vcpu").expect("an answer");
    assert_eq!(r.json()["went_through"], true, "{}", r.body);
    for (comm, mode) in seccomp_modes(p.pid()) {
        assert_eq!(mode, 0, "{comm} is filtered under --no-seccomp");
    }
    let err = p.stderr_text();
    assert!(err.contains("WARNING: --no-seccomp"), "{err:?}");
}

#[test]
fn the_api_is_filtered_before_it_answers_and_the_vmm_once_the_guest_starts() {
    if !kvm_available() {
        return;
    }
    // No VM yet: the API thread is filtered, the VMM thread (which still
    // opens files as the VM is configured) is not.
    let p = Proc::start(&[], false);
    assert_eq!(
        client::request(&p.sock, "GET", "/", None).unwrap().status,
        200
    );
    let modes = seccomp_modes(p.pid());
    let mode = |name: &str| modes.iter().find(|(c, _)| c == name).map(|m| m.1);
    assert_eq!(mode("husk-api"), Some(2), "{modes:?}");
    assert_eq!(mode("husk"), Some(0), "{modes:?}");
    drop(p);

    let mut p = Proc::start(&[], true);
    common::assert_filtered(p.pid());
    // The counting guest runs on under its filters.
    for _ in 0..3 {
        let l = p.stdout.recv_timeout(TIMEOUT).expect("the guest stopped");
        assert!(l.starts_with("COUNT"), "{l}");
    }
    assert!(p.child.try_wait().unwrap().is_none());
}

#[test]
fn seccomp_level_and_no_seccomp_are_exclusive() {
    let out = Command::new(husk_bin())
        .args([
            "vmm",
            "--api-sock",
            "/nonexistent/x.sock",
            "--no-seccomp",
            "--seccomp-level",
            "log",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot be used with"), "{err}");
}
