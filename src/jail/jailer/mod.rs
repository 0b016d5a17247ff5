//! The jailer: `husk jailer`, shaped after Firecracker's.
//!
//! It runs one VMM process (normally `husk-vmm`) inside:
//! - a chroot at `<chroot-base-dir>/<exec-file name>/<id>/root`, entered
//!   with `pivot_root`, holding a private copy of the exec file, a tmpfs
//!   `/dev` with only `kvm`, `net/tun` and `userfaultfd`, a read-only
//!   `/proc` of its own PID namespace, a writable `/run` for its sockets,
//!   and whatever `--mount` binds in;
//! - new mount, PID, IPC and UTS namespaces, and optionally an existing
//!   network namespace;
//! - a cgroup per VM (v2, or v1 as Firecracker defaults to), removed when
//!   the VM ends;
//! - rlimits, no other open files, an unprivileged uid/gid, no
//!   capabilities at all, and `no_new_privs`.
//!
//! Unlike Firecracker's jailer, it does not end in `exec`: the jailer
//! stays outside as root, waits for the VMM, forwards signals to it, and
//! removes the cgroups afterwards. The file map: [`config`] (flags and
//! their validation), [`chroot`] (the jail on the host's file system),
//! [`cgroup`] (v1 and v2), [`child`] (the steps the VMM's process takes
//! before it execs), [`process`] (fork, wait, signals, daemonizing) and
//! [`sys`] (thin wrappers over the system calls).

pub mod cgroup;
pub mod child;
pub mod chroot;
pub mod config;
pub mod process;
mod sys;

use std::io;
use std::path::PathBuf;

pub use config::{CgroupSetting, JailerArgs, MountSpec, Plan, ResourceLimit};

/// Everything that can stop the jailer, as one short line each.
#[derive(Debug, thiserror::Error)]
pub enum JailerError {
    /// A flag's value is wrong (checked before anything is created).
    #[error("{0}")]
    Invalid(String),
    /// A `--mount` source the VMM's uid/gid would not be able to use.
    #[error(
        "--mount {path}: uid {uid} gid {gid} cannot {need} it (mode {mode:04o}, owner {owner}:{group}); \
         chown it to {uid}:{gid} or chmod it so they can"
    )]
    Access {
        path: String,
        uid: u32,
        gid: u32,
        need: &'static str,
        mode: u32,
        owner: u32,
        group: u32,
    },
    /// A file-system step on the host failed.
    #[error("cannot {what} {path}: {err}")]
    Io {
        what: &'static str,
        path: String,
        err: io::Error,
    },
    /// A system call failed.
    #[error("{what}: {err}")]
    Sys { what: String, err: io::Error },
    /// A cgroup cannot be set up as asked.
    #[error("cgroup: {0}")]
    Cgroup(String),
    /// Another VMM runs in this jail.
    #[error("jail {path} is in use by pid {pid} (its pid file names a live process)")]
    InUse { path: String, pid: i32 },
    /// The VMM's process failed a step before it could exec.
    #[error("{0}")]
    Child(String),
    /// A check after dropping privileges did not hold.
    #[error("privilege drop did not hold: {0}")]
    Privileges(String),
}

impl JailerError {
    pub(crate) fn io(what: &'static str, path: &std::path::Path, err: io::Error) -> Self {
        JailerError::Io {
            what,
            path: crate::text::echo_path(path),
            err,
        }
    }

    pub(crate) fn sys(what: impl Into<String>) -> Self {
        JailerError::Sys {
            what: what.into(),
            err: io::Error::last_os_error(),
        }
    }
}

pub type Result<T> = std::result::Result<T, JailerError>;

/// Waits for an exclusive `flock` on `f` (held until `f` is closed).
pub fn lock_exclusive(f: &std::fs::File) -> io::Result<()> {
    sys::flock_exclusive(f)
}

/// Runs `husk jailer`; returns the process exit status: the VMM's own
/// status, 128 + the signal that killed it, or 1 when the jail could not
/// be set up (after printing one line saying why).
pub fn run(args: JailerArgs) -> i32 {
    process::run(args)
}

/// Where a jail lives on the host: `<base>/<exec name>/<id>/root`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailPaths {
    /// The exec file's name: the binary's name inside the jail, the
    /// default parent cgroup and the middle path component.
    pub exec_name: String,
    /// `<base>/<exec name>/<id>`.
    pub id_dir: PathBuf,
    /// `<base>/<exec name>/<id>/root`: `/` for the VMM.
    pub root: PathBuf,
}

impl JailPaths {
    pub fn new(base: &std::path::Path, exec_name: &str, id: &str) -> Self {
        let id_dir = base.join(exec_name).join(id);
        JailPaths {
            exec_name: exec_name.to_string(),
            root: id_dir.join("root"),
            id_dir,
        }
    }

    /// The copy of the exec file, seen from the host.
    pub fn exec_copy(&self) -> PathBuf {
        self.root.join(&self.exec_name)
    }

    /// `<root>/<exec name>.pid`: the VMM's pid as the host sees it, where
    /// Firecracker's jailer writes it with `--new-pid-ns`.
    pub fn pid_file(&self) -> PathBuf {
        self.root.join(format!("{}.pid", self.exec_name))
    }
}
