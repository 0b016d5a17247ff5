//! The daemon's VM backends: how one container's microVM is started as
//! detached processes, found again after a daemon restart, and stopped.
//!
//! - [`BackendKind::Kvm`]: one `husk-vmm` process, booting from a config
//!   file and serving its per-VM API (see [`kvm`]).
//! - [`BackendKind::Tcg`]: QEMU's software emulation, for hosts where a
//!   stock Linux guest cannot run under KVM (PVM hosts, design.md): a
//!   `qemu-system-x86_64` process and its `vhost-device-vsock` backend
//!   (see [`tcg`]).
//!
//! Either way the VM's files live in the container's run directory:
//!
//! | file | what |
//! |---|---|
//! | `console.log` | the guest's serial console |
//! | `vmm.log` | the VMM's (husk-vmm's or QEMU's) own messages |
//! | `vsock.sock` | the hybrid vsock socket: `CONNECT <port>\n` reaches the agent |
//! | `vmm.sock`, `vm.json` | kvm: the per-VM API and the config it booted from |
//! | `vhost.sock`, `vhost.log` | tcg: QEMU's link to `vhost-device-vsock`, and its log |
//!
//! The processes are started in a session of their own and are not kept
//! as `Child`ren: a [`VmHandle`] (serde, stored in the container record)
//! names them by pid and start time, so a restarted daemon finds them
//! again and a reused pid is never mistaken for them. The calls here
//! block (a launch waits for sockets, `wait_exit` sleeps); from async
//! code, run them in `spawn_blocking`.

use std::fmt;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::doctor::HostVirt;
use crate::text::echo_path;

pub mod jail;
pub mod kvm;
mod process;
pub mod tcg;
pub mod virtiofs;

pub use process::ProcId;

/// Which VMM runs a container's microVM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// husk's own VMM on KVM.
    Kvm,
    /// QEMU's software emulation (TCG).
    Tcg,
}

impl BackendKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            BackendKind::Kvm => "kvm",
            BackendKind::Tcg => "tcg",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BackendKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "kvm" => Ok(BackendKind::Kvm),
            "tcg" => Ok(BackendKind::Tcg),
            _ => Err(format!(
                "unknown backend {:?}: use kvm or tcg",
                crate::text::echo(s)
            )),
        }
    }
}

/// What to boot.
#[derive(Clone, Debug)]
pub struct VmSpec {
    /// The container's run directory: sockets, logs and the VM config go
    /// here (created if missing).
    pub dir: PathBuf,
    /// An uncompressed `vmlinux`.
    pub kernel: PathBuf,
    /// The initramfs holding `husk-agent` as `/init`.
    pub initramfs: PathBuf,
    /// The container's root filesystem, attached as `/dev/vda`
    /// (read-write); `None` for a pod's VM, whose containers' roots come
    /// over a share (`husk.pod=`, see `agent::guest::pod`).
    pub rootfs: Option<PathBuf>,
    pub vcpus: u8,
    pub memory_mib: u32,
    /// Extra kernel arguments, after the backend's own.
    pub boot_args: String,
    /// kvm: run the VMM under `husk jailer` with these settings (see
    /// [`jail`]); `None` runs it unjailed (still seccomp-filtered).
    pub jail: Option<jail::JailSettings>,
    /// The container's network interface, if it has one.
    pub net: Option<VmNet>,
    /// Extra disks (volumes), after the rootfs.
    pub drives: Vec<VmDrive>,
    /// Host directories shared over virtio-fs (bind mounts).
    pub shares: Vec<VmShare>,
}

/// An extra disk: the guest finds it by its serial, `id`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmDrive {
    /// 1 to 20 letters and digits: the drive id, and the disk's serial.
    pub id: String,
    pub path: PathBuf,
    pub read_only: bool,
}

/// A host directory shared with the guest through virtiofsd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmShare {
    /// The virtio-fs tag the guest mounts (at most 36 bytes).
    pub tag: String,
    pub dir: PathBuf,
    pub read_only: bool,
}

/// A VM's network interface: a TAP that exists on the host already (the
/// network manager made it), and the guest's MAC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmNet {
    pub tap: String,
    pub mac: String,
    pub mtu: u16,
}

/// What the daemon records (in the container record) to find the VM
/// again after a restart.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmHandle {
    pub kind: BackendKind,
    /// The main process first (husk-vmm, or QEMU), then its helpers
    /// (vhost-device-vsock).
    pub procs: Vec<ProcId>,
    /// The hybrid vsock socket, for `AgentClient::connect_vsock`.
    pub vsock_uds: PathBuf,
    /// The per-VM API socket (kvm only).
    pub api_sock: Option<PathBuf>,
    pub console_log: PathBuf,
    /// kvm under the jailer: what to clean up after the VM. The main
    /// process is then the jailer, and the VMM is the second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jail: Option<jail::JailRecord>,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// A tool is missing or KVM is not usable.
    #[error("{0}")]
    Unavailable(String),
    #[error("{what} {path}: {err}")]
    Io {
        what: &'static str,
        path: String,
        err: std::io::Error,
    },
    #[error("invalid VM config: {0}")]
    Config(String),
    #[error("{0} is in use (is another VM running in this directory?)")]
    InUse(String),
    #[error("cannot start {prog}: {err}")]
    Spawn {
        prog: &'static str,
        err: std::io::Error,
    },
    #[error("the VM ended before its agent started")]
    EndedEarly,
    #[error("{prog} exited as it started{}", log_suffix(.log))]
    Exited { prog: &'static str, log: String },
    #[error("{prog} did not {what} within {secs} s{}", log_suffix(.log))]
    Timeout {
        prog: &'static str,
        what: &'static str,
        secs: u64,
        log: String,
    },
}

fn log_suffix(log: &str) -> String {
    if log.is_empty() {
        String::new()
    } else {
        format!(": {log}")
    }
}

/// How long a launch waits for a VMM's or backend's socket.
const START_TIMEOUT: Duration = Duration::from_secs(10);

fn has_agent_line(console: &[u8]) -> bool {
    const MARKER: &[u8] = b"husk-agent: ";
    console.windows(MARKER.len()).any(|w| w == MARKER)
}

/// The guest console, in every run directory.
pub const CONSOLE_LOG: &str = "console.log";
/// The VMM's own stdout/stderr (kvm: stderr; tcg: both).
pub const VMM_LOG: &str = "vmm.log";
/// The hybrid vsock socket.
pub const VSOCK_SOCK: &str = "vsock.sock";

/// The vsock CID every guest gets (each VM has its own vsock device).
pub const GUEST_CID: u32 = 3;

/// Kernel arguments both backends start with; `reboot=` differs: husk
/// ends the VM on the i8042 reset, QEMU's microvm machine has no i8042.
/// `no_timer_check`: the kernel does not time the IO-APIC timer against
/// busy-wait loops at boot. A VM's vCPU can be off its host CPU for that
/// whole window (a loaded host; always a risk under software emulation),
/// and the check then panics the guest ("IO-APIC + timer doesn't work!"):
/// seen about once in 100 boots with two emulated guests per CPU.
fn base_cmdline(reboot: &str) -> String {
    format!("console=ttyS0 reboot={reboot} panic=-1 quiet no_timer_check husk.root=/dev/vda")
}

/// The full kernel command line: `base`, then the spec's extra arguments.
fn with_extra(base: String, extra: &str) -> String {
    let extra = extra.trim();
    if extra.is_empty() {
        base
    } else {
        format!("{base} {extra}")
    }
}

/// Starts the VM's processes, detached from the daemon, and returns once
/// they run (the VMM's API socket answers / the vsock backend's socket
/// exists). Does not wait for the guest.
pub fn launch(kind: BackendKind, spec: &VmSpec) -> Result<VmHandle, BackendError> {
    std::fs::create_dir_all(&spec.dir).map_err(io_err("run directory", &spec.dir))?;
    let files = [
        ("kernel", Some(&spec.kernel)),
        ("initramfs", Some(&spec.initramfs)),
        ("rootfs", spec.rootfs.as_ref()),
    ];
    for (what, path) in files.into_iter().filter_map(|(w, p)| Some((w, p?))) {
        std::fs::File::open(path).map_err(io_err(what, path))?;
    }
    for d in &spec.drives {
        std::fs::File::open(&d.path).map_err(io_err("volume", &d.path))?;
    }
    for s in &spec.shares {
        if !s.dir.is_dir() {
            return Err(BackendError::Config(format!(
                "the bind mount's source {} is not a directory",
                echo_path(&s.dir)
            )));
        }
    }
    tracing::debug!(backend = %kind, dir = %spec.dir.display(), "launching a VM");
    match kind {
        BackendKind::Kvm => kvm::launch(spec),
        BackendKind::Tcg => tcg::launch(spec),
    }
}

impl VmHandle {
    /// Whether the VM's main process still runs (and is the same
    /// process: its start time matches). Reaps it, and any helper that
    /// ended, when they are our children.
    /// Waits until the guest's agent has spoken on the console (it is up,
    /// or says why not); an error when the VM ends first or `timeout`
    /// passes.
    ///
    /// Connect only after this: a vsock CONNECT that reaches the guest
    /// while its virtio-vsock driver is still starting can wedge
    /// vhost-device-vsock's receive path for good (every later CONNECT
    /// then goes unanswered; seen about once in six boots here). The agent
    /// prints its line once the kernel has finished booting.
    pub async fn agent_started(&self, timeout: Duration) -> Result<(), BackendError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let mut text = Vec::new();
            if let Ok(f) = tokio::fs::File::open(&self.console_log).await {
                use tokio::io::AsyncReadExt;
                // The kernel is quiet: the line comes within its first bytes.
                let _ = f.take(256 * 1024).read_to_end(&mut text).await;
            }
            if has_agent_line(&text) {
                return Ok(());
            }
            let vm = self.clone();
            if !tokio::task::spawn_blocking(move || vm.is_running())
                .await
                .unwrap_or(false)
            {
                return Err(BackendError::EndedEarly);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(BackendError::Timeout {
                    prog: "the guest's agent",
                    what: "start",
                    secs: timeout.as_secs(),
                    log: String::new(),
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn is_running(&self) -> bool {
        let Some((main, helpers)) = self.procs.split_first() else {
            return false;
        };
        let alive = main.is_alive();
        if !alive {
            for p in helpers {
                p.is_alive();
            }
        }
        alive
    }

    /// Whether any process of the VM, helpers included, still runs.
    pub fn any_running(&self) -> bool {
        // Every one is polled (no short cut), so each exited child of
        // ours gets reaped.
        let alive: Vec<bool> = self.procs.iter().map(ProcId::is_alive).collect();
        alive.contains(&true)
    }

    /// SIGKILLs every process of the VM and waits (up to a few seconds)
    /// until they are gone, reaping those that are our children. A
    /// jailed VMM goes first, so its jailer can remove its cgroup.
    pub fn kill(&self) {
        if self.kind == BackendKind::Kvm && self.jail.is_some() {
            for p in self.procs.iter().skip(1) {
                p.signal(libc::SIGKILL);
            }
            let main = self.procs.first();
            let deadline = Instant::now() + Duration::from_secs(2);
            while main.is_some_and(ProcId::is_alive) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        for p in &self.procs {
            p.signal(libc::SIGKILL);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.any_running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Waits until the main process exits, up to `timeout`; returns
    /// whether it did. Then gives the helpers the rest of `timeout` to
    /// end by themselves (vhost-device-vsock is killed as QEMU ends), so
    /// they are reaped too.
    pub fn wait_exit(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.is_running() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        while self.any_running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        true
    }

    /// Kills the VM (if it still runs) and removes its sockets. The logs
    /// and the run directory stay. Not for a stale handle once another VM
    /// was launched in the same directory: the sockets are that VM's now.
    pub fn cleanup(&self) {
        self.kill();
        let mut sockets = vec![self.vsock_uds.clone()];
        sockets.extend(self.api_sock.clone());
        if self.kind == BackendKind::Tcg {
            sockets.push(self.vsock_uds.with_file_name(tcg::VHOST_SOCK));
        }
        for s in sockets {
            let _ = std::fs::remove_file(s);
        }
        if let Some(j) = &self.jail {
            jail::clean_up(j);
        }
    }

    /// The run directory the VM was launched in (its console log's; a
    /// jailed VM's sockets are in its jail).
    pub fn dir(&self) -> &Path {
        self.console_log.parent().unwrap_or(Path::new("/"))
    }

    /// The last few KiB of the VMM's own log (`vmm.log`), to explain a
    /// VM that ended early.
    pub fn vmm_log_tail(&self) -> String {
        log_tail(&self.dir().join(VMM_LOG))
    }
}

/// The backend for `auto`: Kvm when this host can run the guest kernel
/// natively, else Tcg with the reason.
pub fn auto(kernel: &Path) -> (BackendKind, Option<String>) {
    let facts = HostFacts {
        kvm: available(BackendKind::Kvm),
        virt: crate::doctor::host_virt(),
        kernel_is_pvm: std::env::var("HUSK_KERNEL_IS_PVM").is_ok_and(|v| v == "1"),
    };
    decide(&facts, kernel)
}

/// What [`auto`] decides on.
struct HostFacts {
    /// Whether husk-vmm and KVM can run here.
    kvm: Result<(), String>,
    virt: HostVirt,
    /// `HUSK_KERNEL_IS_PVM=1`: the guest kernel is built as a PVM guest.
    kernel_is_pvm: bool,
}

const FALLBACK: &str = "using QEMU's software emulation";

fn decide(facts: &HostFacts, kernel: &Path) -> (BackendKind, Option<String>) {
    if let Err(why) = &facts.kvm {
        return (BackendKind::Tcg, Some(format!("{why}: {FALLBACK}")));
    }
    if facts.virt == HostVirt::Pvm && !facts.kernel_is_pvm {
        return (
            BackendKind::Tcg,
            Some(format!(
                "this host virtualizes with PVM (no VT-x/AMD-V) and the guest kernel {} \
                 is not PVM-enabled (set HUSK_KERNEL_IS_PVM=1 if it is): {FALLBACK}",
                echo_path(kernel)
            )),
        );
    }
    (BackendKind::Kvm, None)
}

/// `Ok` when `kind` can run here: husk-vmm and a usable /dev/kvm, or
/// qemu-system-x86_64 and vhost-device-vsock. `Err` says what is missing.
pub fn available(kind: BackendKind) -> Result<(), String> {
    match kind {
        BackendKind::Kvm => {
            kvm::vmm_binary()?;
            kvm::kvm_usable()
        }
        BackendKind::Tcg => tcg::tools().map(|_| ()),
    }
}

/// `$env` when given and set, else `name` on PATH or (for what `cargo
/// install` put there) in `$CARGO_HOME/bin` or `~/.cargo/bin`.
pub fn find_tool(name: &str, env: Option<&str>) -> Option<PathBuf> {
    if let Some(p) = env.and_then(std::env::var_os).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return is_executable(&p).then_some(p);
    }
    let mut dirs: Vec<PathBuf> = match std::env::var_os("PATH") {
        Some(p) => std::env::split_paths(&p).collect(),
        None => ["/usr/local/bin", "/usr/bin", "/bin"]
            .iter()
            .map(PathBuf::from)
            .collect(),
    };
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(home).join("bin"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

/// The executable `name` in `exe`'s directory, or, for a test binary in
/// `target/*/deps/`, in the directory above, where cargo puts binaries.
pub fn beside(exe: &Path, name: &str) -> Option<PathBuf> {
    let dir = exe.parent()?;
    let mut dirs = vec![dir.to_path_buf()];
    if dir.file_name().is_some_and(|n| n == "deps") {
        dirs.extend(dir.parent().map(Path::to_path_buf));
    }
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> BackendError + 'a {
    move |err| BackendError::Io {
        what,
        path: echo_path(path),
        err,
    }
}

/// Makes `path` free for a new socket: a stale socket file (no one
/// accepts on it) is removed; a live one is refused.
fn free_socket(path: &Path) -> Result<(), BackendError> {
    if std::fs::symlink_metadata(path).is_err() {
        return Ok(());
    }
    if UnixStream::connect(path).is_ok() {
        return Err(BackendError::InUse(echo_path(path)));
    }
    std::fs::remove_file(path).map_err(io_err("stale socket", path))
}

/// A log file for a VM process, emptied.
fn create_log(path: &Path) -> Result<std::fs::File, BackendError> {
    std::fs::File::create(path).map_err(io_err("log", path))
}

/// The end of a log file (at most 2 KiB, from a line start), trimmed, in
/// printable text.
fn log_tail(path: &Path) -> String {
    const TAIL: u64 = 2048;
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(TAIL)));
    let mut buf = Vec::new();
    let _ = f.take(TAIL).read_to_end(&mut buf);
    let mut text = String::from_utf8_lossy(&buf).into_owned();
    if len > TAIL {
        if let Some(nl) = text.find('\n') {
            text.drain(..=nl);
        }
    }
    // Lines stay lines; other control characters (a terminal escape from
    // a guest or a tool) are shown escaped.
    text.trim()
        .chars()
        .flat_map(|c| match c {
            '\n' | '\t' => vec![c],
            c if c.is_control() => c.escape_debug().collect(),
            c => vec![c],
        })
        .collect()
}

/// Polls `ready` every 2 ms until it holds, the process `main` dies, or
/// [`START_TIMEOUT`] passes. On failure the process is killed, and the
/// error carries `log`'s tail.
fn wait_started(
    prog: &'static str,
    what: &'static str,
    main: &ProcId,
    log: &Path,
    mut ready: impl FnMut() -> bool,
) -> Result<(), BackendError> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if ready() {
            return Ok(());
        }
        if !main.is_alive() {
            return Err(BackendError::Exited {
                prog,
                log: log_tail(log),
            });
        }
        if Instant::now() >= deadline {
            main.signal(libc::SIGKILL);
            while main.is_alive() && Instant::now() < deadline + Duration::from_secs(2) {
                std::thread::sleep(Duration::from_millis(2));
            }
            return Err(BackendError::Timeout {
                prog,
                what,
                secs: START_TIMEOUT.as_secs(),
                log: log_tail(log),
            });
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A scratch directory removed on drop.
    pub(crate) struct Scratch(pub PathBuf);

    impl Scratch {
        pub(crate) fn new(name: &str) -> Scratch {
            use std::sync::atomic::{AtomicUsize, Ordering};
            static N: AtomicUsize = AtomicUsize::new(0);
            let p = std::env::temp_dir().join(format!(
                "husk-backend-{name}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Scratch(p)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A spec whose files exist (their contents do not matter here).
    pub(crate) fn spec(dir: &Path) -> VmSpec {
        for f in ["vmlinux", "initramfs.cpio.gz", "rootfs.ext4"] {
            std::fs::write(dir.join(f), b"x").unwrap();
        }
        VmSpec {
            dir: dir.join("run"),
            kernel: dir.join("vmlinux"),
            initramfs: dir.join("initramfs.cpio.gz"),
            rootfs: Some(dir.join("rootfs.ext4")),
            vcpus: 2,
            memory_mib: 256,
            boot_args: " probe=x  ".into(),
            jail: None,
            net: None,
            drives: vec![],
            shares: vec![],
        }
    }

    #[test]
    fn kinds_by_name() {
        assert_eq!("kvm".parse::<BackendKind>(), Ok(BackendKind::Kvm));
        assert_eq!(BackendKind::Tcg.to_string(), "tcg");
        assert!("auto".parse::<BackendKind>().is_err());
        assert_eq!(serde_json::to_string(&BackendKind::Tcg).unwrap(), "\"tcg\"");
    }

    #[test]
    fn the_handle_round_trips_through_json() {
        let h = VmHandle {
            kind: BackendKind::Tcg,
            procs: vec![
                ProcId {
                    pid: 10,
                    start_time: 99,
                },
                ProcId {
                    pid: 11,
                    start_time: 100,
                },
            ],
            vsock_uds: "/run/c/vsock.sock".into(),
            api_sock: None,
            console_log: "/run/c/console.log".into(),
            jail: None,
        };
        let json = serde_json::to_value(&h).unwrap();
        assert_eq!(json["kind"], "tcg");
        assert_eq!(json["procs"][1]["start_time"], 100);
        let back: VmHandle = serde_json::from_value(json).unwrap();
        assert_eq!(back, h);
        assert_eq!(back.dir(), Path::new("/run/c"));
    }

    #[test]
    fn a_handle_of_dead_processes_is_not_running() {
        let h = VmHandle {
            kind: BackendKind::Kvm,
            procs: vec![ProcId {
                pid: std::process::id() as i32,
                start_time: 1,
            }],
            vsock_uds: "/nonexistent/vsock.sock".into(),
            api_sock: Some("/nonexistent/vmm.sock".into()),
            console_log: "/nonexistent/console.log".into(),
            jail: None,
        };
        // Our own pid, with another start time: not this process.
        assert!(!h.is_running());
        assert!(h.wait_exit(Duration::from_millis(1)));
        h.cleanup();
        let empty = VmHandle {
            procs: vec![],
            ..h.clone()
        };
        assert!(!empty.is_running());
    }

    fn facts(kvm: Result<(), String>, virt: HostVirt, pvm_kernel: bool) -> HostFacts {
        HostFacts {
            kvm,
            virt,
            kernel_is_pvm: pvm_kernel,
        }
    }

    #[test]
    fn auto_picks_kvm_only_where_the_kernel_runs_natively() {
        let k = Path::new("/k/vmlinux");
        for virt in [HostVirt::VtX, HostVirt::AmdV, HostVirt::Unknown] {
            assert_eq!(
                decide(&facts(Ok(()), virt, false), k),
                (BackendKind::Kvm, None)
            );
        }
        assert_eq!(
            decide(&facts(Ok(()), HostVirt::Pvm, true), k),
            (BackendKind::Kvm, None)
        );
        let (kind, why) = decide(&facts(Ok(()), HostVirt::Pvm, false), k);
        assert_eq!(kind, BackendKind::Tcg);
        let why = why.unwrap();
        assert!(why.contains("PVM (no VT-x/AMD-V)"), "{why}");
        assert!(why.contains("/k/vmlinux is not PVM-enabled"), "{why}");
        assert!(why.ends_with("using QEMU's software emulation"), "{why}");
        let (kind, why) = decide(
            &facts(
                Err("cannot open /dev/kvm: denied".into()),
                HostVirt::VtX,
                false,
            ),
            k,
        );
        assert_eq!(kind, BackendKind::Tcg);
        assert_eq!(
            why.unwrap(),
            "cannot open /dev/kvm: denied: using QEMU's software emulation"
        );
    }

    #[test]
    fn auto_on_this_host() {
        let (kind, why) = auto(Path::new("/var/lib/husk/kernels/vmlinux"));
        let pvm = Path::new("/sys/module/kvm_pvm").exists()
            && std::env::var("HUSK_KERNEL_IS_PVM").as_deref() != Ok("1");
        println!("auto: {kind} ({why:?})");
        if pvm {
            // design.md: these machines are PVM hosts.
            assert_eq!(kind, BackendKind::Tcg);
            assert!(why.unwrap().contains("PVM"));
        } else {
            assert_eq!(kind == BackendKind::Tcg, why.is_some());
        }
    }

    #[test]
    fn stale_sockets_are_replaced_and_live_ones_refused() {
        let dir = Scratch::new("sock");
        let path = dir.0.join("s.sock");
        free_socket(&path).unwrap();
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert!(matches!(free_socket(&path), Err(BackendError::InUse(_))));
        drop(listener);
        free_socket(&path).unwrap();
        assert!(!path.exists());
    }

    #[test]
    fn log_tails_are_short_and_start_at_a_line() {
        let dir = Scratch::new("log");
        let p = dir.0.join("vmm.log");
        assert_eq!(log_tail(&p), "");
        std::fs::write(&p, "first\nsecond \x1b[31m\n").unwrap();
        assert_eq!(log_tail(&p), "first\nsecond \\u{1b}[31m");
        let long: String = (0..500).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&p, long).unwrap();
        let tail = log_tail(&p);
        assert!(tail.len() <= 2048 && tail.starts_with("line "), "{tail}");
        assert!(tail.ends_with("line 499"));
    }

    #[test]
    fn a_launch_without_its_files_fails_before_starting_anything() {
        let dir = Scratch::new("nofiles");
        let mut s = spec(&dir.0);
        s.rootfs = Some(dir.0.join("missing.ext4"));
        for kind in [BackendKind::Kvm, BackendKind::Tcg] {
            let e = launch(kind, &s).unwrap_err().to_string();
            assert!(
                e.starts_with("rootfs ") && e.contains("missing.ext4"),
                "{e}"
            );
        }
    }
}
