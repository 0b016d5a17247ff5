//! Shared helpers for integration tests: a `husk vmm` child process with
//! its serial console captured, driven through its API socket.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use husk::vmm::client::{self, Response};

pub mod hugepages;
use serde_json::Value;

pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Prints `skipped: <reason>` straight to stderr, past the test
/// harness's output capture, so a skip shows in every run's log.
pub fn skip(reason: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "skipped: {reason}");
}

/// Returns false (after printing why) when this host cannot run VMs.
pub fn kvm_available() -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(e) => {
            skip(&format!("/dev/kvm is not usable: {e}"));
            false
        }
    }
}

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "husk-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn husk_bin() -> &'static str {
    env!("CARGO_BIN_EXE_husk")
}

/// The HUSK_LOG a husk child runs with: the test's own, or `error`.
pub fn husk_log() -> String {
    std::env::var("HUSK_LOG").unwrap_or_else(|_| "error".into())
}

/// Takes `child`'s (piped) stdout and sends each of its lines to the
/// receiver returned, until it ends or the receiver is dropped.
pub fn stdout_lines(child: &mut Child) -> Receiver<String> {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Writes the probe guest into `dir` and returns its path.
pub fn probe_kernel(dir: &TempDir) -> PathBuf {
    let p = dir.path("probe.elf");
    husk::probe::write_probe(&p).unwrap();
    p
}

pub struct Vmm {
    pub dir: TempDir,
    pub sock: PathBuf,
    pub kernel: PathBuf,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    /// Every serial line seen so far.
    pub seen: Vec<String>,
}

fn spawn(args: &[&str], dir: TempDir, sock: PathBuf, kernel: PathBuf) -> Vmm {
    spawn_limited(args, dir, sock, kernel, None)
}

fn spawn_limited(
    args: &[&str],
    dir: TempDir,
    sock: PathBuf,
    kernel: PathBuf,
    nofile: Option<u64>,
) -> Vmm {
    spawn_hooked(args, dir, sock, kernel, nofile, None)
}

/// What runs in the child between fork and exec (async-signal-safe only).
pub type PreExec = fn() -> std::io::Result<()>;

fn spawn_hooked(
    args: &[&str],
    dir: TempDir,
    sock: PathBuf,
    kernel: PathBuf,
    nofile: Option<u64>,
    hook: Option<PreExec>,
) -> Vmm {
    let mut cmd = Command::new(husk_bin());
    if let Some(hook) = hook {
        use std::os::unix::process::CommandExt;
        // SAFETY: the hook is async-signal-safe (see PreExec).
        unsafe {
            cmd.pre_exec(hook);
        }
    }
    if let Some(n) = nofile {
        use std::os::unix::process::CommandExt;
        // SAFETY: setrlimit is async-signal-safe and only touches the
        // child's own limits.
        unsafe {
            cmd.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: n,
                    rlim_max: n,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let mut child = cmd
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .env("HUSK_LOG", husk_log())
        .spawn()
        .expect("spawn husk vmm");
    let rx = stdout_lines(&mut child);
    let stdin = child.stdin.take();
    Vmm {
        dir,
        sock,
        kernel,
        child,
        stdin,
        lines: rx,
        seen: vec![],
    }
}

impl Vmm {
    /// Starts `husk vmm --api-sock` and waits for its socket.
    pub fn with_api() -> Vmm {
        Self::with_api_args(&[], None)
    }

    /// Starts `husk vmm --api-sock` with more arguments and, optionally,
    /// a lower open-file limit, and waits for its socket.
    pub fn with_api_args(extra: &[&str], nofile: Option<u64>) -> Vmm {
        Self::with_api_hooked(extra, nofile, None)
    }

    /// [`with_api_args`](Self::with_api_args), running `hook` in the
    /// child before it execs husk.
    pub fn with_api_hooked(extra: &[&str], nofile: Option<u64>, hook: Option<PreExec>) -> Vmm {
        let dir = TempDir::new();
        let sock = dir.path("api.sock");
        let kernel = probe_kernel(&dir);
        let s = sock.to_str().unwrap().to_string();
        let mut args = vec!["vmm", "--api-sock", &s, "--id", "test-vm"];
        args.extend_from_slice(extra);
        let vmm = spawn_hooked(&args, dir, sock, kernel, nofile, hook);
        let start = Instant::now();
        while std::os::unix::net::UnixStream::connect(&vmm.sock).is_err() {
            assert!(start.elapsed() < TIMEOUT, "API socket never came up");
            std::thread::sleep(Duration::from_millis(2));
        }
        vmm
    }

    /// Starts `husk` with `args` in a fresh directory (`args(dir)` may
    /// name files in it, or elsewhere); waits for `--api-sock`'s socket
    /// when the arguments have one.
    pub fn with_args(args: impl FnOnce(&TempDir) -> Vec<String>) -> Vmm {
        let dir = TempDir::new();
        let kernel = probe_kernel(&dir);
        let args = args(&dir);
        let sock = args
            .iter()
            .position(|a| a == "--api-sock")
            .and_then(|i| args.get(i + 1))
            .map(PathBuf::from);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let vmm = spawn(
            &refs,
            dir,
            sock.clone()
                .unwrap_or_else(|| PathBuf::from("/nonexistent")),
            kernel,
        );
        if let Some(sock) = sock {
            let start = Instant::now();
            while std::os::unix::net::UnixStream::connect(&sock).is_err() {
                assert!(start.elapsed() < TIMEOUT, "API socket never came up");
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        vmm
    }

    /// Every serial line that arrives within `quiet` of the one before,
    /// for at most two seconds (a guest may never go quiet).
    pub fn drain(&mut self, quiet: Duration) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut out = Vec::new();
        while Instant::now() < deadline {
            let Ok(l) = self.lines.recv_timeout(quiet) else {
                break;
            };
            self.seen.push(l.clone());
            out.push(l);
        }
        out
    }

    /// Starts `husk vmm --no-api --config-file` with `config(kernel_path)`.
    pub fn with_config(config: impl FnOnce(&Path) -> Value) -> Vmm {
        let dir = TempDir::new();
        let kernel = probe_kernel(&dir);
        let cfg = dir.path("config.json");
        std::fs::write(&cfg, config(&kernel).to_string()).unwrap();
        let c = cfg.to_str().unwrap().to_string();
        let sock = dir.path("unused.sock");
        spawn(&["vmm", "--no-api", "--config-file", &c], dir, sock, kernel)
    }

    pub fn request(&self, method: &str, path: &str, body: Option<&str>) -> Response {
        client::request(&self.sock, method, path, body).expect("API request")
    }

    pub fn put(&self, path: &str, body: Value) -> Response {
        self.request("PUT", path, Some(&body.to_string()))
    }

    /// PUTs `body` and asserts the VMM took it (204).
    pub fn put_ok(&self, path: &str, body: Value) {
        let r = self.put(path, body);
        assert_eq!(r.status, 204, "PUT {path}: {}", r.body);
    }

    pub fn patch(&self, path: &str, body: Value) -> Response {
        self.request("PATCH", path, Some(&body.to_string()))
    }

    pub fn get(&self, path: &str) -> Response {
        self.request("GET", path, None)
    }

    /// Configures the probe guest with `boot_args` and the machine shape.
    pub fn configure(&self, boot_args: &str, vcpus: u8, mem_mib: u64) {
        self.put_ok(
            "/boot-source",
            serde_json::json!({"kernel_image_path": self.kernel, "boot_args": boot_args}),
        );
        self.put_ok(
            "/machine-config",
            serde_json::json!({"vcpu_count": vcpus, "mem_size_mib": mem_mib}),
        );
    }

    pub fn action(&self, action: &str) -> Response {
        self.put("/actions", serde_json::json!({ "action_type": action }))
    }

    pub fn start(&self) {
        let r = self.action("InstanceStart");
        assert_eq!(r.status, 204, "{}", r.body);
    }

    /// Waits for a serial line starting with `prefix`; returns it.
    pub fn expect_line(&mut self, prefix: &str) -> String {
        self.expect_matching(prefix, |l| l.starts_with(prefix))
    }

    /// Waits for a serial line containing `text`; returns it.
    pub fn expect_containing(&mut self, text: &str) -> String {
        self.expect_matching(text, |l| l.contains(text))
    }

    fn expect_matching(&mut self, what: &str, matches: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if matches(&l) {
                        return l;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no serial line matching {what:?}; saw {:?}", self.seen)
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("serial output ended before {what:?}; saw {:?}", self.seen)
                }
            }
        }
    }

    pub fn write_stdin(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(bytes).unwrap();
        stdin.flush().unwrap();
    }

    /// Waits for the VMM to exit.
    pub fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "husk vmm did not exit");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// The fault message of a 400 answer.
    pub fn fault(r: &Response) -> String {
        assert_eq!(r.status, 400, "expected a 400, got {} {}", r.status, r.body);
        r.json()["fault_message"]
            .as_str()
            .unwrap_or_else(|| panic!("no fault_message in {}", r.body))
            .to_string()
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `Seccomp:` mode (0 none, 2 filter) of each of `pid`'s threads,
/// by thread name.
pub fn seccomp_modes(pid: u32) -> Vec<(String, u32)> {
    let mut out = vec![];
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
        let mode = status
            .lines()
            .find_map(|l| l.strip_prefix("Seccomp:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        out.push((comm.trim().to_string(), mode));
    }
    out
}

/// Asserts that every thread of a running `husk vmm` (the VMM thread,
/// the API thread when there is one, each vCPU) runs under a seccomp
/// filter, as it must once its guest has run.
pub fn assert_filtered(pid: u32) {
    let modes = seccomp_modes(pid);
    let husk: Vec<_> = modes
        .iter()
        .filter(|(c, _)| c.starts_with("husk"))
        .collect();
    assert!(
        husk.iter().any(|(c, _)| c.starts_with("husk-vcpu")),
        "no vCPU thread in {modes:?}"
    );
    for (comm, mode) in husk {
        assert_eq!(
            *mode, 2,
            "thread {comm} runs without a seccomp filter: {modes:?}"
        );
    }
}

/// target/<triple>/debug/examples/uffd_page_server, built by `cargo test`.
pub fn page_server_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|debug| debug.join("examples").join("uffd_page_server"))
        .unwrap();
    assert!(
        bin.exists(),
        "{} is missing: run `cargo test` without target filters, or `cargo build --examples`",
        bin.display()
    );
    bin
}

/// Waits, for `within` at the most, until the page server listens on
/// `sock`.
pub fn wait_page_server(sock: &Path, within: Duration) {
    let deadline = Instant::now() + within;
    while !sock.exists() {
        assert!(Instant::now() < deadline, "the page server never listened");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits for the page server (started with its stderr piped) to exit,
/// and checks it succeeded and said it served pages.
pub fn assert_pages_served(server: &mut Child) {
    use std::io::Read;
    let status = server.wait().unwrap();
    let mut err = String::new();
    server
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "{err}");
    assert!(err.contains("pages served"), "{err}");
}

/// One `Key:\tvalue` line of /proc/PID/status.
pub fn status_field(pid: i32, key: &str) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
        .trim()
        .to_string()
}
