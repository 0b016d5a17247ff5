//! `husk bench --jail`: the vmm suite's VMMs run under `husk jailer`, as
//! the daemon runs them (a uid of their own, the chroot with the probe
//! kernel and config bind-mounted in, namespaces, and the daemon's
//! cgroup limits), so the figures show what the jail costs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::daemon::backend::jail::{
    cgroup_settings, find_jailer, jailer_command, EXEC_NAME, PARENT_CGROUP,
};
use crate::jail::jailer::cgroup::HostCgroups;
use crate::jail::jailer::JailPaths;

/// The uid every bench VMM runs as.
const BENCH_UID: u32 = 300_000;
/// The probe kernel and the whole-cycle config, inside each jail.
pub const KERNEL: &str = "/probe.elf";
pub const CONFIG: &str = "/cycle.json";
const API_SOCK: &str = "run/api.sock";

pub struct Jail {
    /// `husk-jailer` (or `husk`, for its `jailer` subcommand).
    jailer: PathBuf,
    /// The static `husk-vmm` the jails hold.
    vmm: PathBuf,
    base: PathBuf,
    kernel: PathBuf,
    cgroups: (u8, Vec<String>),
    next: AtomicUsize,
}

impl Jail {
    pub fn new(husk: &Path, vmm: PathBuf, dir: &Path, kernel: &Path) -> Result<Jail, String> {
        if !vmm
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("husk-vmm"))
        {
            return Err("--jail needs the static husk-vmm binary (--vmm PATH/husk-vmm)".into());
        }
        let host = HostCgroups::read().map_err(|e| e.to_string())?;
        Ok(Jail {
            jailer: find_jailer(husk),
            vmm,
            base: dir.join("jail"),
            kernel: kernel.to_path_buf(),
            cgroups: cgroup_settings(&host, 1, super::GUEST_MEM_MIB as u32),
            next: AtomicUsize::new(0),
        })
    }

    fn paths(&self, id: &str) -> JailPaths {
        JailPaths::new(&self.base, EXEC_NAME, id)
    }

    /// The API socket of the jail `n`, as the host sees it.
    pub fn sock(&self, n: usize) -> PathBuf {
        self.paths(&format!("a{n}")).root.join(API_SOCK)
    }

    /// The jail id an API socket from [`sock`](Self::sock) belongs to.
    fn id_of(sock: &Path) -> String {
        // <base>/husk-vmm/<id>/root/run/api.sock
        sock.ancestors()
            .nth(3)
            .and_then(Path::file_name)
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// `husk jailer` running the VMM with `vmm_args`, in jail `id`, with
    /// the kernel (and `config`, if any) bind-mounted in.
    fn command(&self, id: &str, config: Option<&Path>, vmm_args: &[&str]) -> Command {
        let paths = self.paths(id);
        // A jail left by an earlier run of the same id.
        let _ = std::fs::remove_dir_all(&paths.id_dir);
        let uid = BENCH_UID.to_string();
        let mut c = jailer_command(&self.jailer);
        c.args(["--id", id])
            .arg("--exec-file")
            .arg(&self.vmm)
            .args(["--uid", &uid, "--gid", &uid])
            .arg("--chroot-base-dir")
            .arg(&self.base)
            .args(["--cgroup-version", &self.cgroups.0.to_string()])
            .args(["--parent-cgroup", PARENT_CGROUP]);
        for s in &self.cgroups.1 {
            c.args(["--cgroup", s]);
        }
        let mut mount = self.kernel.as_os_str().to_owned();
        mount.push(format!(":{KERNEL}:ro"));
        c.arg("--mount").arg(mount);
        if let Some(cfg) = config {
            let mut mount = cfg.as_os_str().to_owned();
            mount.push(format!(":{CONFIG}:ro"));
            c.arg("--mount").arg(mount);
        }
        c.arg("--").args(vmm_args);
        c
    }

    /// A jailed VMM serving its API on `sock` (from [`sock`](Self::sock)).
    pub fn api_command(&self, sock: &Path) -> Command {
        self.command(&Self::id_of(sock), None, &["--api-sock", "/run/api.sock"])
    }

    /// A jailed whole cycle: boot from the config and run to the reset.
    pub fn cycle_command(&self, config: &Path) -> (Command, String) {
        let id = format!("c{}", self.next.fetch_add(1, Ordering::Relaxed));
        let cmd = self.command(&id, Some(config), &["--no-api", "--config-file", CONFIG]);
        (cmd, id)
    }

    /// The VMM's pid (as the host sees it) of the jail `sock` is in.
    pub fn vmm_pid(&self, sock: &Path) -> Option<u32> {
        let pid_file = self.paths(&Self::id_of(sock)).pid_file();
        std::fs::read_to_string(pid_file).ok()?.trim().parse().ok()
    }

    /// Ends a jailed VMM the way the daemon does: the VMM first, so its
    /// jailer removes its cgroup; then the jail itself.
    pub fn stop(&self, child: &mut Child, sock: &Path) {
        if let Some(pid) = self.vmm_pid(sock) {
            // SAFETY: kill takes no pointers.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        let _ = child.wait();
        self.remove(&Self::id_of(sock));
    }

    pub fn remove(&self, id: &str) {
        let _ = std::fs::remove_dir_all(self.paths(id).id_dir);
    }
}
