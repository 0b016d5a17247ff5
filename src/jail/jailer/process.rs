//! The jailer's own process: checks, the optional detach, the fork into
//! a new PID namespace, and the wait. The jailer stays outside the jail,
//! as root, for as long as the VMM runs: it forwards SIGTERM, SIGINT and
//! SIGHUP to it, reports how it ended, and removes its cgroups.

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use super::cgroup::{self, Created, HostCgroups};
use super::child::{self, ChildFds, ChildSetup};
use super::chroot;
use super::config::{JailerArgs, Plan};
use super::sys::{self, Exit, Forked};
use super::{JailerError, Result};

/// How long a forwarded signal has to end the VMM before the jailer
/// sends SIGKILL. The VMM is PID 1 of its namespace, and the kernel drops
/// signals to such a process that it has no handler for; without this,
/// `kill <jailer>` would leave the VM running.
const KILL_GRACE: Duration = Duration::from_secs(1);

/// Where the jailer's one-line errors go: stderr, or, once detached, the
/// pipe to the process the user started, which prints them.
struct Reporter {
    pipe: Option<OwnedFd>,
}

impl Reporter {
    fn error(&mut self, e: &JailerError) {
        match self.pipe.take() {
            Some(p) => {
                let _ = sys::write_all(p.as_raw_fd(), e.to_string().as_bytes());
            }
            None => eprintln!("husk jailer: {e}"),
        }
    }

    /// The VMM has exec'd: a detached jailer lets its starter return.
    fn started(&mut self) {
        if let Some(p) = self.pipe.take() {
            let _ = sys::write_all(p.as_raw_fd(), OK);
        }
    }

    fn note(&self, line: &str) {
        if self.pipe.is_none() {
            eprintln!("husk jailer: {line}");
        }
    }
}

const OK: &[u8] = b"\0ok";

pub fn run(args: JailerArgs) -> i32 {
    let mut reporter = Reporter { pipe: None };
    let prepared = prepare(args).and_then(|(plan, cgroups)| {
        if plan.daemonize {
            reporter.pipe = daemonize()?;
        }
        Ok((plan, cgroups))
    });
    let (plan, cgroups) = match prepared {
        Ok(p) => p,
        Err(e) => {
            reporter.error(&e);
            return 1;
        }
    };
    match supervise(&plan, &cgroups, &mut reporter) {
        Ok(code) => code,
        Err(e) => {
            reporter.error(&e);
            1
        }
    }
}

/// Every check that needs no change on the host.
fn prepare(args: JailerArgs) -> Result<(Plan, cgroup::CgroupPlan)> {
    let plan = Plan::new(args)?;
    let host = HostCgroups::read()?;
    let cgroups = cgroup::plan(
        plan.cgroup_version,
        &plan.parent_cgroup,
        &plan.id,
        &plan.cgroups,
        &host,
    )?;
    chroot::check_not_in_use(&plan.paths)?;
    // The forks below are only sound in a single-threaded process.
    match sys::thread_count() {
        Ok(1) => {}
        Ok(n) => {
            return Err(JailerError::Child(format!(
                "the jailer runs {n} threads and cannot fork safely"
            )))
        }
        Err(e) => {
            return Err(JailerError::io(
                "read",
                std::path::Path::new("/proc/self/task"),
                e,
            ))
        }
    }
    Ok((plan, cgroups))
}

/// Detaches, as Firecracker's `--daemonize` does: the process the user
/// started waits on a pipe and returns once the VMM has exec'd (0), or
/// prints the error it gets (1). The detached process goes on, in a new
/// session with its stdio (and so the VMM's) on /dev/null.
fn daemonize() -> Result<Option<OwnedFd>> {
    let (r, w) = sys::pipe().map_err(|e| JailerError::Sys {
        what: "cannot make a pipe".into(),
        err: e,
    })?;
    // SAFETY: prepare() checked that this process has one thread.
    match unsafe { sys::fork() }.map_err(|e| JailerError::Sys {
        what: "cannot fork".into(),
        err: e,
    })? {
        Forked::Parent(_) => {
            drop(w);
            let got = sys::read_to_end(r.as_raw_fd(), 4096).unwrap_or_default();
            if got == OK {
                std::process::exit(0);
            }
            let text = String::from_utf8_lossy(&got);
            if text.is_empty() {
                eprintln!("husk jailer: the detached jailer ended before the VMM started");
            } else {
                eprintln!("husk jailer: {text}");
            }
            std::process::exit(1);
        }
        Forked::Child => {
            drop(r);
            sys::setsid().map_err(|e| JailerError::Sys {
                what: "cannot start a new session".into(),
                err: e,
            })?;
            let null = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
                .map_err(|e| JailerError::io("open", std::path::Path::new("/dev/null"), e))?;
            for fd in 0..3 {
                // SAFETY: dup2 onto the standard fds, which this process
                // owns; `null` stays open across the call.
                if unsafe { libc::dup2(null.as_raw_fd(), fd) } < 0 {
                    return Err(JailerError::sys("cannot redirect stdio to /dev/null"));
                }
            }
            // Hold no directory of the starter's busy.
            let _ = std::env::set_current_dir("/");
            Ok(Some(w))
        }
    }
}

/// Builds the jail, starts the VMM in it, waits for it and cleans up.
/// Returns the jailer's exit status.
fn supervise(
    plan: &Plan,
    cgroup_plan: &cgroup::CgroupPlan,
    reporter: &mut Reporter,
) -> Result<i32> {
    sys::umask(0o022);
    // Held until the VMM's pid file is written (see `chroot::lock`).
    let lock = chroot::lock(&plan.paths)?;
    chroot::check_not_in_use(&plan.paths)?;
    let prepared = chroot::prepare(plan)?;
    let mut cgroups = match cgroup::create(cgroup_plan) {
        Ok(c) => c,
        Err(e) => {
            chroot::cleanup_failed(&prepared, &plan.paths);
            return Err(e);
        }
    };
    let started = start(plan, &cgroups, reporter);
    drop(lock);
    let pid = match started {
        Ok(pid) => pid,
        Err(e) => {
            for line in cgroups.remove() {
                reporter.note(&line);
            }
            chroot::cleanup_failed(&prepared, &plan.paths);
            return Err(e);
        }
    };
    let exit = wait_forwarding(pid);
    let code = match exit {
        Ok(Exit::Code(c)) => c,
        Ok(Exit::Signal(s)) => {
            reporter.note(&format!(
                "{}: the VMM was killed by {}",
                plan.id,
                signal_name(s)
            ));
            128 + s
        }
        Err(e) => {
            reporter.note(&format!("cannot wait for the VMM: {e}"));
            1
        }
    };
    if let Some(line) = cgroups.oom_report() {
        reporter.note(&format!("{}: {line}", plan.id));
    }
    for line in cgroups.remove() {
        reporter.note(&line);
    }
    chroot::remove_pid_file(&plan.paths);
    Ok(code)
}

/// Forks the VMM's process into a new PID namespace, places it in its
/// cgroups, writes its pid file, lets it go and waits until it has
/// exec'd. Returns its host pid.
fn start(plan: &Plan, cgroups: &Created, reporter: &mut Reporter) -> Result<libc::pid_t> {
    let mut setup = ChildSetup::new(plan)?;
    let pipe = || {
        sys::pipe().map_err(|e| JailerError::Sys {
            what: "cannot make a pipe".into(),
            err: e,
        })
    };
    let (go_r, go_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let (alive_r, alive_w) = pipe()?;
    let waited = sys::sigset(&[libc::SIGCHLD, libc::SIGTERM, libc::SIGINT, libc::SIGHUP]);
    setup.sigmask = sys::block(&waited).map_err(|e| JailerError::Sys {
        what: "cannot block signals".into(),
        err: e,
    })?;
    let unblock = |r: Result<libc::pid_t>| {
        if r.is_err() {
            let _ = sys::set_mask(&setup.sigmask);
        }
        r
    };
    // The next child this process makes is PID 1 of a new namespace.
    unblock(
        sys::unshare(libc::CLONE_NEWPID)
            .map(|_| 0)
            .map_err(|e| JailerError::Sys {
                what: "cannot make a PID namespace".into(),
                err: e,
            }),
    )?;
    // SAFETY: prepare() checked that this process has one thread.
    let forked = unsafe { sys::fork() };
    let pid = match forked {
        Ok(Forked::Child) => {
            drop(go_w);
            drop(err_r);
            drop(alive_w);
            if let Some(p) = reporter.pipe.take() {
                drop(p);
            }
            child::run(
                &setup,
                ChildFds {
                    go: go_r.as_raw_fd(),
                    errors: err_w.as_raw_fd(),
                    alive: alive_r.as_raw_fd(),
                },
            )
        }
        Ok(Forked::Parent(pid)) => pid,
        Err(e) => {
            return unblock(Err(JailerError::Sys {
                what: "cannot fork".into(),
                err: e,
            }))
        }
    };
    drop(go_r);
    drop(err_w);
    drop(alive_r);
    // The alive pipe's write end stays open, unwritten, for as long as
    // this process lives.
    std::mem::forget(alive_w);
    // The child goes through its steps meanwhile, and waits for the
    // go-ahead only to exec.
    let placed = cgroups
        .join(pid)
        .and_then(|_| chroot::write_pid_file(&plan.paths, pid));
    if let Err(e) = placed {
        drop(go_w);
        let _ = sys::kill(pid, libc::SIGKILL);
        let _ = sys::wait(pid, false);
        return unblock(Err(e));
    }
    // A child that failed a step has gone already (the write then fails
    // with EPIPE); its error is on the error pipe.
    let go = sys::write_all(go_w.as_raw_fd(), b"1");
    drop(go_w);
    // End of file with nothing written: the exec worked.
    let msg = sys::read_to_end(err_r.as_raw_fd(), 4096).unwrap_or_default();
    if !msg.is_empty() {
        let _ = sys::wait(pid, false);
        return unblock(Err(JailerError::Child(format!(
            "in the jail: {}",
            String::from_utf8_lossy(&msg)
        ))));
    }
    if let Err(e) = go {
        let _ = sys::kill(pid, libc::SIGKILL);
        let _ = sys::wait(pid, false);
        return unblock(Err(JailerError::Sys {
            what: "cannot start the VMM's process".into(),
            err: e,
        }));
    }
    reporter.started();
    Ok(pid)
}

/// Waits for `pid`, forwarding SIGTERM, SIGINT and SIGHUP to it (then
/// SIGKILL after [`KILL_GRACE`]).
fn wait_forwarding(pid: libc::pid_t) -> std::io::Result<Exit> {
    let set = sys::sigset(&[libc::SIGCHLD, libc::SIGTERM, libc::SIGINT, libc::SIGHUP]);
    let mut kill_at: Option<Instant> = None;
    loop {
        if let Some(exit) = sys::wait(pid, true)? {
            return Ok(exit);
        }
        let timeout = match kill_at {
            Some(t) => t.saturating_duration_since(Instant::now()),
            None => Duration::from_secs(3600),
        };
        match sys::wait_signal(&set, timeout)? {
            Some(sig) if sig != libc::SIGCHLD => {
                let _ = sys::kill(pid, sig);
                kill_at.get_or_insert(Instant::now() + KILL_GRACE);
            }
            _ => {
                if kill_at.is_some_and(|t| Instant::now() >= t) {
                    let _ = sys::kill(pid, libc::SIGKILL);
                    kill_at = None;
                }
            }
        }
    }
}

fn signal_name(sig: i32) -> String {
    let name = match sig {
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGHUP => "SIGHUP",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGSYS => "SIGSYS",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGXFSZ => "SIGXFSZ",
        _ => return format!("signal {sig}"),
    };
    name.to_string()
}
