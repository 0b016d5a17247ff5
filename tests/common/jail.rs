//! Helpers for the jailer's tests: a `husk jailer` child with its
//! stdout (the VM's serial console) and stderr captured, a scratch
//! directory holding the probe guest and the jails, and a parent cgroup
//! of its own that is removed afterwards.

#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use super::common::status_field;
use super::common::{husk_bin, husk_log, probe_kernel, skip, stdout_lines, TempDir, TIMEOUT};

/// The uid and gid jailed VMMs run as in these tests.
pub const UID: u32 = 40_123;
pub const GID: u32 = 40_124;

pub fn husk_vmm_bin() -> &'static str {
    env!("CARGO_BIN_EXE_husk-vmm")
}

/// Returns false (after printing why) when the jailer cannot run here.
pub fn can_jail() -> bool {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        skip("the jailer needs root");
        return false;
    }
    super::common::kvm_available()
}

/// A scratch area for one test: the probe kernel, config files, the
/// chroot base, and a parent cgroup name of its own.
pub struct Scratch {
    pub dir: TempDir,
    pub kernel: PathBuf,
    pub base: PathBuf,
    pub parent: String,
}

impl Scratch {
    pub fn new() -> Scratch {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = TempDir::new();
        let kernel = probe_kernel(&dir);
        let base = dir.path("jails");
        let parent = format!(
            "husk-jailer-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        Scratch {
            dir,
            kernel,
            base,
            parent,
        }
    }

    /// Writes a config file for the probe guest (kernel at /kernel in the
    /// jail) and returns its host path.
    pub fn config(&self, name: &str, boot_args: &str, mem_mib: u64) -> PathBuf {
        let p = self.dir.path(name);
        let cfg = serde_json::json!({
            "boot-source": {"kernel_image_path": "/kernel", "boot_args": boot_args},
            "machine-config": {"vcpu_count": 1, "mem_size_mib": mem_mib},
        });
        std::fs::write(&p, cfg.to_string()).unwrap();
        p
    }

    /// The jail's root for `id`.
    pub fn root(&self, id: &str) -> PathBuf {
        self.base.join("husk-vmm").join(id).join("root")
    }

    /// The VM's cgroup directory in the v1 hierarchy of `controller`, or
    /// in the v2 hierarchy with `None`.
    pub fn cgroup_dir(&self, controller: Option<&str>, id: &str) -> PathBuf {
        hierarchy(controller).join(&self.parent).join(id)
    }

    /// The jailer's flags every test passes, for `id`, with the probe
    /// kernel mounted at /kernel.
    pub fn args(&self, id: &str) -> Vec<String> {
        [
            "jailer",
            "--id",
            id,
            "--exec-file",
            husk_vmm_bin(),
            "--uid",
            &UID.to_string(),
            "--gid",
            &GID.to_string(),
            "--chroot-base-dir",
            self.base.to_str().unwrap(),
            "--parent-cgroup",
            &self.parent,
            "--mount",
            &format!("{}:/kernel:ro", self.kernel.display()),
        ]
        .map(String::from)
        .to_vec()
    }

    /// [`Scratch::args`] for `id`, to build on with a test's own flags.
    pub fn jail_args(&self, id: &str) -> JailArgs {
        JailArgs {
            args: self.args(id),
            config: None,
        }
    }
}

/// `husk jailer` arguments built up in order: the flags every test passes
/// ([`Scratch::args`]), a test's own jailer flags, then `--` and the
/// VMM's.
pub struct JailArgs {
    args: Vec<String>,
    /// Where [`JailArgs::config`] put the VM's config file in the jail.
    config: Option<String>,
}

impl JailArgs {
    /// More jailer flags, as given.
    pub fn flags(mut self, flags: &[&str]) -> JailArgs {
        self.args.extend(flags.iter().map(|f| f.to_string()));
        self
    }

    /// `--cgroup-version 1`.
    pub fn cgroup_v1(self) -> JailArgs {
        self.flags(&["--cgroup-version", "1"])
    }

    /// `--cgroup SETTING`, as in `memory.limit_in_bytes=256M`.
    pub fn cgroup(self, setting: &str) -> JailArgs {
        self.flags(&["--cgroup", setting])
    }

    /// `--mount SPEC`, as in `HOST:JAIL` or `HOST:JAIL:ro`.
    pub fn mount(self, spec: &str) -> JailArgs {
        self.flags(&["--mount", spec])
    }

    /// `--mount HOST:JAIL:ro`.
    pub fn mount_ro(self, host: &Path, jail: &str) -> JailArgs {
        self.mount(&format!("{}:{jail}:ro", host.display()))
    }

    /// The VM's config file `cfg`, mounted read-only at `jail`; the VMM
    /// gets `--config-file JAIL` after the flags given to
    /// [`JailArgs::vmm`].
    pub fn config(mut self, cfg: &Path, jail: &str) -> JailArgs {
        self.config = Some(jail.to_string());
        self.mount_ro(cfg, jail)
    }

    /// The whole command line: the jailer's flags, `--`, `vmm`, and the
    /// config file if [`JailArgs::config`] named one.
    pub fn vmm(mut self, vmm: &[&str]) -> Vec<String> {
        self.args.push("--".into());
        self.args.extend(vmm.iter().map(|a| a.to_string()));
        if let Some(cfg) = self.config {
            self.args.extend(["--config-file".into(), cfg]);
        }
        self.args
    }

    /// [`JailArgs::vmm`] for a VMM with no API socket.
    pub fn no_api(self) -> Vec<String> {
        self.vmm(&["--no-api"])
    }

    /// [`JailArgs::vmm`] for a VMM with its API socket at /run/api.sock
    /// in the jail.
    pub fn api(self) -> Vec<String> {
        self.vmm(&["--api-sock", "/run/api.sock"])
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // The parent cgroups this test made, in every hierarchy, with any
        // VM cgroup a failed test left in them.
        if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") {
            for e in entries.flatten() {
                let parent = e.path().join(&self.parent);
                if let Ok(vms) = std::fs::read_dir(&parent) {
                    for vm in vms.flatten().filter(|v| v.path().is_dir()) {
                        let _ = std::fs::remove_dir(vm.path());
                    }
                }
                let _ = std::fs::remove_dir(parent);
            }
        }
    }
}

/// Where a controller's v1 hierarchy (or, with `None`, the v2 one) is
/// mounted, from /proc/mounts.
pub fn hierarchy(controller: Option<&str>) -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    for l in mounts.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 4 {
            continue;
        }
        match controller {
            None if f[2] == "cgroup2" => return PathBuf::from(f[1]),
            Some(c) if f[2] == "cgroup" && f[3].split(',').any(|o| o == c) => {
                return PathBuf::from(f[1])
            }
            _ => {}
        }
    }
    PathBuf::from("/nonexistent-cgroup-hierarchy")
}

/// A running `husk jailer`.
pub struct Jailer {
    child: Child,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
    pub seen: Vec<String>,
}

impl Jailer {
    pub fn spawn(args: &[String]) -> Jailer {
        let mut child = Command::new(husk_bin())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("HUSK_LOG", husk_log())
            .spawn()
            .expect("spawn husk jailer");
        let rx = stdout_lines(&mut child);
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1024];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Jailer {
            child,
            lines: rx,
            stderr,
            seen: vec![],
        }
    }

    pub fn jailer_pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// What the jailer (and the VMM) wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits for a serial line starting with `prefix`; returns it.
    pub fn expect_line(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.starts_with(prefix) {
                        return l;
                    }
                }
                Err(RecvTimeoutError::Timeout) => panic!(
                    "no serial line {prefix:?}; saw {:?}; stderr {}",
                    self.seen,
                    self.stderr()
                ),
                Err(RecvTimeoutError::Disconnected) => panic!(
                    "output ended before {prefix:?}; saw {:?}; stderr {}",
                    self.seen,
                    self.stderr()
                ),
            }
        }
    }

    /// Waits for the jailer to exit.
    pub fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                // Let the stderr reader catch up.
                std::thread::sleep(Duration::from_millis(20));
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "husk jailer did not exit; stderr {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Jailer {
    /// Stops the VM the way a user would: SIGTERM to the jailer, which
    /// stops the VMM and cleans up. Returns the jailer's status.
    pub fn terminate(&mut self) -> ExitStatus {
        if let Ok(Some(s)) = self.child.try_wait() {
            return s;
        }
        // SAFETY: kill has no memory effects.
        unsafe { libc::kill(self.jailer_pid(), libc::SIGTERM) };
        self.wait()
    }
}

impl Drop for Jailer {
    fn drop(&mut self) {
        // SIGTERM first so that the jailer removes the VM's cgroups (a
        // SIGKILLed jailer cannot); SIGKILL if that did not end it.
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            // SAFETY: kill has no memory effects.
            unsafe { libc::kill(self.jailer_pid(), libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for `<root>/husk-vmm.pid` and returns the VMM's host pid.
pub fn wait_pid_file(root: &Path) -> i32 {
    let p = root.join("husk-vmm.pid");
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Ok(t) = std::fs::read_to_string(&p) {
            if let Ok(pid) = t.trim().parse() {
                return pid;
            }
        }
        assert!(Instant::now() < deadline, "no pid file {}", p.display());
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Waits for a Unix socket to accept connections.
pub fn wait_socket(sock: &Path) {
    let deadline = Instant::now() + TIMEOUT;
    while std::os::unix::net::UnixStream::connect(sock).is_err() {
        assert!(Instant::now() < deadline, "no socket {}", sock.display());
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Waits until `path` is gone; false if it is still there after `within`.
pub fn gone_within(path: &Path, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while path.exists() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

/// Runs `husk jailer` to its end; returns (status, stderr).
pub fn run_jailer(args: &[String]) -> (ExitStatus, String) {
    let out = Command::new(husk_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run husk jailer");
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
