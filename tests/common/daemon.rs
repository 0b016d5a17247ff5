//! A real `husk serve` for tests: a busybox image imported into its
//! store, the stripped agent, the software-emulation backend, and a small
//! HTTP client for its Unix socket. The including test declares the
//! `busybox_image` and `qemu` modules beside this one.
//!
//! Each daemon runs in a network namespace of its own ([`NetNs`]), which
//! stands in for its host: its bridges, TAPs and nftables rules are its
//! own, many daemons run side by side without clashing, and everything
//! goes when the namespace does.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{busybox_image, qemu};

/// One HTTP response: status and body (chunked bodies decoded).
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    /// NDJSON lines.
    pub fn lines(&self) -> Vec<Value> {
        String::from_utf8_lossy(&self.body)
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(i) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let n = usize::from_str_radix(std::str::from_utf8(&b[..i]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[i + 2..i + 2 + n]);
        b = &b[i + 2 + n + 2..];
    }
}

pub fn request(sock: &Path, method: &str, path: &str, body: Option<Value>) -> Response {
    let mut s = UnixStream::connect(sock).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: husk\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..end]).to_string();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let rest = &raw[end + 4..];
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_vec()
    };
    Response { status, body }
}

/// A named network namespace (`ip netns add`), removed on drop.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    /// A new namespace with its loopback up.
    pub fn new(tag: &str) -> NetNs {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "husk-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        ip(&["netns", "add", &name]);
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip ARGS` inside the namespace; panics when it fails.
    pub fn ip(&self, args: &[&str]) {
        let mut a = vec!["-n", &self.name];
        a.extend_from_slice(args);
        ip(&a);
    }

    /// A command to run inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Makes `cmd` start inside the namespace (setns before exec; no
    /// new mount namespace, unlike `ip netns exec`).
    pub fn enter(&self, cmd: &mut Command) {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let f = std::fs::File::open(format!("/run/netns/{}", self.name)).unwrap();
        // SAFETY: setns with a descriptor we keep open in the closure;
        // async-signal-safe, between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }

    /// Runs a shell line inside the namespace; its stdout, trimmed.
    pub fn sh(&self, line: &str) -> String {
        let out = self.command("sh").args(["-c", line]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// `ip ARGS`; panics when it fails.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub struct Daemon {
    child: Child,
    pub sock: PathBuf,
    pub state: PathBuf,
    args: Vec<String>,
    pub dir: PathBuf,
    /// Its host's network namespace (`None`: this host's own).
    pub netns: Option<NetNs>,
}

impl Daemon {
    fn start(dir: &Path, kernel: &Path, backend: &str, extra: &[&str]) -> Daemon {
        Self::start_in(dir, kernel, backend, extra, Some(NetNs::new("d")))
    }

    fn start_in(
        dir: &Path,
        kernel: &Path,
        backend: &str,
        extra: &[&str],
        netns: Option<NetNs>,
    ) -> Daemon {
        let state = dir.join("state");
        busybox_image::import(dir, &state);
        let agent = busybox_image::stripped_agent(dir);
        let sock = dir.join("husk.sock");
        let args: Vec<String> = [
            "serve",
            "--socket",
            sock.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
            "--kernel",
            kernel.to_str().unwrap(),
            "--agent",
            agent.to_str().unwrap(),
            "--vm-backend",
            backend,
        ]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect();
        let mut d = Daemon {
            child: Self::spawn(&args, netns.as_ref()),
            sock,
            state,
            args,
            dir: dir.into(),
            netns,
        };
        d.wait_ready();
        d
    }

    fn spawn(args: &[String], netns: Option<&NetNs>) -> Child {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_husk"));
        cmd.args(args).stdin(Stdio::null());
        if let Some(ns) = netns {
            ns.enter(&mut cmd);
        }
        cmd.spawn().unwrap()
    }

    /// The daemon's network namespace.
    pub fn ns(&self) -> &NetNs {
        self.netns
            .as_ref()
            .expect("this daemon runs in its own namespace")
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while UnixStream::connect(&self.sock).is_err() {
            assert!(
                self.child.try_wait().unwrap().is_none(),
                "the daemon exited"
            );
            assert!(Instant::now() < deadline, "the daemon never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// kill -9 the daemon alone (its VMs run on).
    pub fn crash(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// A new daemon on the same state, after [`Daemon::crash`].
    pub fn restart(&mut self) {
        self.child = Self::spawn(&self.args, self.netns.as_ref());
        self.wait_ready();
    }

    /// kill -9, then a new daemon on the same state.
    pub fn crash_and_restart(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.child = Self::spawn(&self.args, self.netns.as_ref());
        self.wait_ready();
    }

    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> Response {
        request(&self.sock, method, path, body)
    }

    /// Creates and starts a container; returns its id.
    pub fn run(&self, body: Value) -> String {
        let r = self.call("POST", "/v1/containers", Some(body));
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        let id = r.json()["id"].as_str().unwrap().to_string();
        let r = self.call("POST", &format!("/v1/containers/{id}/start"), None);
        assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));
        id
    }

    pub fn wait(&self, id: &str) -> Value {
        self.call("POST", &format!("/v1/containers/{id}/wait"), None)
            .json()
    }

    pub fn logs(&self, id: &str, query: &str) -> String {
        let r = self.call("GET", &format!("/v1/containers/{id}/logs?{query}"), None);
        assert_eq!(r.status, 200);
        r.lines()
            .iter()
            .map(|l| l["data"].as_str().unwrap().to_string())
            .collect()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The VMs run on without the daemon: end them too.
        let _ = Command::new("pkill")
            .arg("-9")
            .arg("-f")
            .arg(self.dir.to_str().unwrap())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn setup(name: &str) -> Option<Daemon> {
    setup_with(name, &[])
}

/// A daemon in this host's own network namespace, with no default
/// network (`--bridge none`): for tests that reach it over TCP, or a
/// registry on its loopback.
pub fn setup_in_host_net(name: &str, extra: &[&str]) -> Option<Daemon> {
    let (kernel, dir) = tcg_scratch(name)?;
    let mut args = vec!["--bridge", "none"];
    args.extend_from_slice(extra);
    Some(Daemon::start_in(&dir, &kernel, "tcg", &args, None))
}

/// A daemon started with these flags besides the harness's own.
pub fn setup_with(name: &str, extra: &[&str]) -> Option<Daemon> {
    let (kernel, dir) = tcg_scratch(name)?;
    Some(Daemon::start(&dir, &kernel, "tcg", extra))
}

/// The guest kernel for the tcg backend and an empty scratch directory;
/// `None`, after saying `skipped:`, when QEMU's tools or the kernel are
/// missing.
fn tcg_scratch(name: &str) -> Option<(PathBuf, PathBuf)> {
    let kernel = match qemu::tools_available().and_then(|()| qemu::guest_kernel()) {
        Ok(k) => k,
        Err(reason) => {
            qemu::skip(&reason);
            return None;
        }
    };
    let dir = std::env::temp_dir().join(format!("husk-daemon-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    Some((kernel, dir))
}

/// A daemon on the `kvm` backend (`husk-vmm`), when `HUSK_TEST_KERNEL`
/// (a kernel built from resources/guest-kernel) can boot under this
/// host's KVM: on a PVM host only a PVM-enabled one can, which
/// `HUSK_TEST_KERNEL_IS_PVM=1` declares.
pub fn setup_kvm(name: &str) -> Option<Daemon> {
    let skip = |reason: &str| {
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "skipped: {reason}");
    };
    let Some(kernel) = std::env::var_os("HUSK_TEST_KERNEL") else {
        skip("HUSK_TEST_KERNEL is not set: the kvm backend's containers need a kernel that boots here");
        return None;
    };
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        skip(&format!("/dev/kvm is not usable: {e}"));
        return None;
    }
    let pvm = husk::doctor::host_virt() == husk::doctor::HostVirt::Pvm;
    if pvm && std::env::var_os("HUSK_TEST_KERNEL_IS_PVM").is_none() {
        skip(
            "this host virtualizes with PVM and only PVM-enabled kernels boot here; \
             set HUSK_TEST_KERNEL_IS_PVM=1 if HUSK_TEST_KERNEL is one",
        );
        return None;
    }
    let dir = std::env::temp_dir().join(format!("husk-daemon-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    Some(Daemon::start(&dir, Path::new(&kernel), "kvm", &[]))
}
