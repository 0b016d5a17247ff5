//! The VMM's process between fork and exec: PID 1 of a new PID
//! namespace, it waits for the jailer to put it in its cgroups, then
//! builds its mount namespace, pivots into the jail, drops everything it
//! may drop and execs the VMM.
//!
//! Every path and string it needs is made before the fork
//! ([`ChildSetup::new`]); a step that fails writes its error to the
//! jailer through a close-on-exec pipe and the process exits, so the
//! jailer can print one line saying which step failed and why.

use std::ffi::{CStr, CString};
use std::os::fd::RawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use super::config::{Plan, ResourceLimit, SourceKind};
use super::{sys, JailerError, Result};

/// A `--mount`, as the child makes it.
struct Bind {
    source: CString,
    target: CString,
    read_only: bool,
    /// Directories and files get `nodev`; device nodes cannot have it.
    nodev: bool,
    shown: String,
}

/// A device node to make in the jail's /dev.
struct Node {
    path: CString,
    dev: libc::dev_t,
    name: &'static str,
}

/// Everything the child needs, made before the fork.
pub struct ChildSetup {
    id: String,
    uid: u32,
    gid: u32,
    root: CString,
    run: CString,
    dev: CString,
    dev_net: CString,
    nodes: Vec<Node>,
    proc_dir: CString,
    binds: Vec<Bind>,
    netns: Option<CString>,
    rlimits: Vec<ResourceLimit>,
    exec: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    /// The signal mask to exec with (the jailer's own, before it blocked
    /// the signals it waits for).
    pub sigmask: libc::sigset_t,
}

/// The child's ends of the jailer's pipes.
pub struct ChildFds {
    /// Read end: one byte once the jailer has placed the child in its
    /// cgroups; end of file means stop.
    pub go: RawFd,
    /// Write end, close-on-exec: the error text, if a step fails.
    pub errors: RawFd,
    /// Read end of a pipe only the jailer writes to: hung up once the
    /// jailer is gone.
    pub alive: RawFd,
}

fn cstr(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| JailerError::Invalid(format!("{s:?} holds a NUL byte")))
}

fn cpath(p: &Path) -> Result<CString> {
    sys::cpath(p).map_err(|_| {
        JailerError::Invalid(format!("{} holds a NUL byte", crate::text::echo_path(p)))
    })
}

/// Environment variables passed to the VMM; everything else is dropped.
const KEPT_ENV: &[&str] = &["HUSK_LOG"];

impl ChildSetup {
    pub fn new(plan: &Plan) -> Result<ChildSetup> {
        let root = &plan.paths.root;
        let dev = root.join("dev");
        let mut nodes = vec![
            Node {
                path: cpath(&dev.join("kvm"))?,
                dev: libc::makedev(10, 232),
                name: "/dev/kvm",
            },
            Node {
                path: cpath(&dev.join("net/tun"))?,
                dev: libc::makedev(10, 200),
                name: "/dev/net/tun",
            },
        ];
        // userfaultfd's minor is dynamic (10:126 on some hosts, 10:257
        // here): copy the host's node, when it has one.
        if let Ok(m) = std::fs::metadata("/dev/userfaultfd") {
            nodes.push(Node {
                path: cpath(&dev.join("userfaultfd"))?,
                dev: m.rdev(),
                name: "/dev/userfaultfd",
            });
        }
        let binds = plan
            .mounts
            .iter()
            .map(|m| {
                let rel = m.spec.jail.strip_prefix("/").unwrap_or(&m.spec.jail);
                Ok(Bind {
                    source: cpath(&m.host)?,
                    target: cpath(&root.join(rel))?,
                    read_only: m.spec.read_only,
                    nodev: m.kind != SourceKind::Device,
                    shown: format!(
                        "{}:{}",
                        crate::text::echo_path(&m.host),
                        crate::text::echo_path(&m.spec.jail)
                    ),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let exec_in_jail = format!("/{}", plan.paths.exec_name);
        let mut argv = vec![cstr(&plan.paths.exec_name)?, cstr("--id")?, cstr(&plan.id)?];
        for a in &plan.vmm_args {
            argv.push(cstr(a)?);
        }
        let mut envp = Vec::new();
        for k in KEPT_ENV {
            if let Ok(v) = std::env::var(k) {
                envp.push(cstr(&format!("{k}={v}"))?);
            }
        }
        Ok(ChildSetup {
            id: plan.id.clone(),
            uid: plan.uid,
            gid: plan.gid,
            root: cpath(root)?,
            run: cpath(&root.join("run"))?,
            dev_net: cpath(&dev.join("net"))?,
            dev: cpath(&dev)?,
            nodes,
            proc_dir: cpath(&root.join("proc"))?,
            binds,
            netns: plan.netns.as_deref().map(cpath).transpose()?,
            rlimits: plan.rlimits.clone(),
            exec: cstr(&exec_in_jail)?,
            argv,
            envp,
            sigmask: sys::sigset(&[]),
        })
    }
}

/// The child's fds once moved out of the way of everything else.
const ERRORS_FD: RawFd = 3;
const ALIVE_FD: RawFd = 4;
const GO_FD: RawFd = 5;

/// Runs the child's steps and execs the VMM; never returns. The steps
/// run while the jailer places this process in its cgroups (a slow
/// write on cgroup v1); the exec waits for its go-ahead, so the VMM runs
/// no instruction of its own outside them.
pub fn run(setup: &ChildSetup, fds: ChildFds) -> ! {
    let err_fd = match move_fds(&fds) {
        Ok(()) => ERRORS_FD,
        Err(e) => {
            // The VMM must not start with the jailer's other files open.
            let msg = format!("cannot close the jailer's files: {e}");
            let _ = sys::write_all(fds.errors, msg.as_bytes());
            sys::exit_now(1)
        }
    };
    let e = match steps(setup) {
        Err(e) => e,
        Ok(()) if !placed() => {
            // The jailer failed or died before placing us: stop quietly.
            sys::exit_now(1)
        }
        Ok(()) => JailerError::Sys {
            what: format!("cannot exec {}", setup.exec.to_string_lossy()),
            err: sys::execve(&setup.exec, &setup.argv, &setup.envp),
        },
    };
    let _ = sys::write_all(err_fd, e.to_string().as_bytes());
    sys::exit_now(1)
}

/// Whether the jailer says the process is in its cgroups.
fn placed() -> bool {
    let mut byte = [0u8; 1];
    let go = matches!(sys::read(GO_FD, &mut byte), Ok(1));
    sys::close(GO_FD);
    go
}

/// Puts the error pipe on fd 3, the alive pipe on fd 4 and the go pipe
/// on fd 5 (all close-on-exec) and closes every other fd but 0, 1 and 2.
fn move_fds(fds: &ChildFds) -> std::io::Result<()> {
    // First move both above the small fds, so neither lands on the other.
    let high = |fd: RawFd| -> std::io::Result<RawFd> {
        // SAFETY: F_DUPFD_CLOEXEC takes an int and only duplicates an fd
        // this process owns.
        let r = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 64) };
        if r < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(r)
        }
    };
    let (e, a, g) = (high(fds.errors)?, high(fds.alive)?, high(fds.go)?);
    sys::dup_cloexec_to(e, ERRORS_FD)?;
    sys::dup_cloexec_to(a, ALIVE_FD)?;
    sys::dup_cloexec_to(g, GO_FD)?;
    sys::close_from(GO_FD as u32 + 1)
}

fn step<T>(what: impl FnOnce() -> String, r: std::io::Result<T>) -> Result<T> {
    r.map_err(|err| JailerError::Sys { what: what(), err })
}

fn steps(s: &ChildSetup) -> Result<()> {
    if let Some(ns) = &s.netns {
        let shown = ns.to_string_lossy();
        let f = step(
            || format!("cannot open --netns {shown}"),
            std::fs::File::open(Path::new(&*shown)),
        )?;
        step(
            || format!("cannot join the network namespace {shown}"),
            sys::setns(f.as_raw_fd(), libc::CLONE_NEWNET),
        )?;
    }
    step(
        || "cannot make mount, IPC and UTS namespaces".into(),
        sys::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS),
    )?;
    step(|| "cannot set the hostname".into(), sys::sethostname(&s.id))?;
    mounts(s)?;
    pivot(s)?;
    for l in &s.rlimits {
        step(
            || format!("cannot set the {} limit to {}", l.resource.name(), l.value),
            sys::setrlimit(l.resource.rlimit(), l.value),
        )?;
    }
    drop_privileges(s)?;
    step(|| "cannot set no_new_privs".into(), sys::set_no_new_privs())?;
    // After the uid change, which clears it.
    step(
        || "cannot set the parent-death signal".into(),
        sys::set_parent_death_signal(libc::SIGKILL),
    )?;
    // The jailer may have died before the line above: then nobody would
    // kill us when it goes, so do not start.
    if step(
        || "cannot poll the jailer".into(),
        sys::pipe_hung_up(ALIVE_FD),
    )? {
        return Err(JailerError::Child(
            "the jailer died before the VMM started".into(),
        ));
    }
    sys::close(ALIVE_FD);
    step(
        || "cannot restore the signal mask".into(),
        sys::set_mask(&s.sigmask),
    )?;
    Ok(())
}

const NO_DATA: Option<&CStr> = None;

fn mounts(s: &ChildSetup) -> Result<()> {
    // As Firecracker's jailer: the host's mounts still reach the jail
    // (a drive bind-mounted into the chroot by tooling after the start),
    // nothing done below reaches the host.
    step(
        || "cannot make / a slave mount".into(),
        sys::mount(
            NO_DATA,
            c"/",
            NO_DATA,
            libc::MS_REC | libc::MS_SLAVE,
            NO_DATA,
        ),
    )?;
    // pivot_root needs the new root to be a mount point; what tooling
    // mounted inside the root comes along.
    let root = s.root.to_string_lossy();
    step(
        || format!("cannot bind {root} onto itself"),
        sys::mount(
            Some(&s.root),
            &s.root,
            NO_DATA,
            libc::MS_BIND | libc::MS_REC,
            NO_DATA,
        ),
    )?;
    // /run: the one writable place of the jail's own, mounted before the
    // --mount binds so that those inside it stay on top.
    step(
        || "cannot bind /run".into(),
        sys::mount(Some(&s.run), &s.run, NO_DATA, libc::MS_BIND, NO_DATA),
    )?;
    let run_flags =
        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    step(
        || "cannot remount /run".into(),
        sys::mount(NO_DATA, &s.run, NO_DATA, run_flags, NO_DATA),
    )?;
    for b in &s.binds {
        // Bound through a descriptor opened with no symlink in the path,
        // so a symlink planted after the checks cannot redirect it.
        let fd = step(
            || format!("cannot open --mount {} (no symlinks allowed)", b.shown),
            sys::open_path_no_symlinks(&b.source),
        )?;
        let via =
            std::ffi::CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap_or_default();
        step(
            || format!("cannot bind-mount --mount {}", b.shown),
            sys::mount(Some(&via), &b.target, NO_DATA, libc::MS_BIND, NO_DATA),
        )?;
        drop(fd);
        let mut flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID;
        if b.nodev {
            flags |= libc::MS_NODEV;
        }
        if b.read_only {
            flags |= libc::MS_RDONLY;
        }
        step(
            || format!("cannot remount --mount {}", b.shown),
            sys::mount(NO_DATA, &b.target, NO_DATA, flags, NO_DATA),
        )?;
    }
    devices(s)?;
    // A proc of the new PID namespace (the snapshot code reads
    // /proc/self/pagemap), read-only, and without the system-wide files
    // where the kernel can leave them out.
    let proc_flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_RDONLY;
    let mounted = sys::mount(
        Some(c"proc"),
        &s.proc_dir,
        Some(c"proc"),
        proc_flags,
        Some(c"subset=pid"),
    )
    .or_else(|_| {
        sys::mount(
            Some(c"proc"),
            &s.proc_dir,
            Some(c"proc"),
            proc_flags,
            NO_DATA,
        )
    });
    step(|| "cannot mount /proc".into(), mounted)?;
    // The root stays writable as Firecracker's is: it is root's (0755),
    // so the VMM writes only to files tooling placed there for it (a
    // hard-linked, chowned rootfs), to /run and to read-write --mounts.
    Ok(())
}

/// A small tmpfs on /dev with only the VMM's devices, owned by its uid,
/// then made read-only (device nodes still open for writing there).
fn devices(s: &ChildSetup) -> Result<()> {
    step(
        || "cannot mount a tmpfs on /dev".into(),
        sys::mount(
            Some(c"tmpfs"),
            &s.dev,
            Some(c"tmpfs"),
            libc::MS_NOSUID | libc::MS_NOEXEC,
            Some(c"mode=0755,size=64k,nr_inodes=32"),
        ),
    )?;
    step(
        || "cannot make /dev/net".into(),
        std::fs::create_dir(Path::new(&*s.dev_net.to_string_lossy())),
    )?;
    for n in &s.nodes {
        step(
            || format!("cannot make {}", n.name),
            sys::mknod(&n.path, libc::S_IFCHR | 0o600, n.dev),
        )?;
        step(
            || format!("cannot chown {}", n.name),
            std::os::unix::fs::chown(
                Path::new(&*n.path.to_string_lossy()),
                Some(s.uid),
                Some(s.gid),
            ),
        )?;
    }
    step(
        || "cannot make /dev read-only".into(),
        sys::mount(
            NO_DATA,
            &s.dev,
            NO_DATA,
            libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NOEXEC,
            NO_DATA,
        ),
    )
}

/// Makes the jail `/` and detaches the host's root from this namespace:
/// `pivot_root(".", ".")` stacks the old root on the new one, and
/// detaching `.` takes it away, with no put_old directory needed.
fn pivot(s: &ChildSetup) -> Result<()> {
    step(
        || "cannot enter the jail's root".into(),
        sys::chdir(&s.root),
    )?;
    step(|| "pivot_root failed".into(), sys::pivot_root(c".", c"."))?;
    step(
        || "cannot detach the old root".into(),
        sys::umount_detach(c"."),
    )?;
    step(|| "cannot chdir to /".into(), sys::chdir(c"/"))
}

/// No supplementary groups, the given gid and uid, an empty bounding
/// set and no capabilities; then checks that it all held.
fn drop_privileges(s: &ChildSetup) -> Result<()> {
    step(
        || "cannot clear the supplementary groups".into(),
        sys::setgroups_none(),
    )?;
    step(
        || format!("cannot set gid {}", s.gid),
        sys::setresgid(s.gid),
    )?;
    // Needs CAP_SETPCAP, so before the uid changes.
    step(
        || "cannot empty the capability bounding set".into(),
        sys::drop_bounding_set(),
    )?;
    step(
        || "cannot clear the ambient capabilities".into(),
        sys::clear_ambient_caps(),
    )?;
    step(
        || format!("cannot set uid {}", s.uid),
        sys::setresuid(s.uid),
    )?;
    step(|| "cannot clear the capabilities".into(), sys::clear_caps())?;
    let bad = |m: String| Err(JailerError::Privileges(m));
    let (u, g) = (sys::getresuid(), sys::getresgid());
    if u != (s.uid, s.uid, s.uid) || g != (s.gid, s.gid, s.gid) {
        return bad(format!("uids {u:?} gids {g:?}"));
    }
    match sys::group_count() {
        Ok(0) => {}
        other => return bad(format!("supplementary groups remain: {other:?}")),
    }
    match sys::get_caps() {
        Ok((0, 0, 0)) => {}
        other => return bad(format!("capabilities remain: {other:?}")),
    }
    if s.uid != 0 && sys::can_become_root() {
        return bad("setuid(0) still works".into());
    }
    Ok(())
}
