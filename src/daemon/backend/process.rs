//! The processes of a VM: spawned detached from the daemon, told apart
//! from a later process that reuses their pid, killed, and reaped.
//!
//! A VM's processes outlive the daemon that started them (it may be
//! killed and restarted), so nothing here keeps a `std::process::Child`:
//! a process is named by its pid and its start time, and its liveness is
//! read from the kernel each time. While the daemon that spawned a
//! process lives, it is that process's parent and reaps it with
//! `waitpid(WNOHANG)`; a restarted daemon is not the parent (the process
//! went to init or a subreaper), gets `ECHILD`, and reads the process's
//! state from `/proc` instead.

use std::fs::File;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

/// One process of a VM, as recorded by the daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcId {
    pub pid: i32,
    /// Field 22 of `/proc/PID/stat` (clock ticks after boot): tells the
    /// process apart from a later one that got the same pid.
    pub start_time: u64,
}

/// The state letter (field 3) and start time (field 22) in the text of
/// `/proc/PID/stat`.
pub(crate) fn parse_stat(text: &[u8]) -> Option<(u8, u64)> {
    // Field 2, the command name, is in parentheses and may itself hold
    // spaces and ')': the fixed fields resume after the last ')'.
    let close = text.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(&text[close + 1..]).ok()?;
    let mut fields = rest.split_ascii_whitespace();
    let state = *fields.next()?.as_bytes().first()?;
    // Fields 4 to 21 come between the state and the start time.
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

/// The state letter and start time of the process `pid`, if there is one.
fn stat(pid: i32) -> Option<(u8, u64)> {
    if pid <= 0 {
        return None;
    }
    parse_stat(&std::fs::read(format!("/proc/{pid}/stat")).ok()?)
}

/// Whether a thread other than the leader of `pid`'s thread group is
/// still there.
fn other_threads(pid: i32) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/task")).is_ok_and(|d| {
        d.flatten()
            .any(|e| e.file_name().to_str() != Some(&pid.to_string()))
    })
}

impl ProcId {
    /// The process that runs as `pid` now, if any.
    pub fn of(pid: i32) -> Option<ProcId> {
        stat(pid).map(|(_, start_time)| ProcId { pid, start_time })
    }

    /// Whether `pid` still names this process (alive or a zombie).
    fn is_same(&self) -> bool {
        stat(self.pid).is_some_and(|(_, start)| start == self.start_time)
    }

    /// Whether this process still runs. A child of ours that exited is
    /// reaped here; a process that is not our child (a previous daemon's)
    /// counts as dead once it is a zombie.
    pub fn is_alive(&self) -> bool {
        // The start time is checked first, so a reused pid is never
        // waited for: ours cannot be reused before we reap it.
        let Some((state, start)) = stat(self.pid) else {
            return false;
        };
        if start != self.start_time {
            return false;
        }
        let mut status = 0;
        // SAFETY: waitpid only writes the exit status into `status`, a
        // valid local; WNOHANG keeps it from blocking.
        let r = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
        if r == 0 {
            // Our child, still running.
            return true;
        }
        if r == self.pid {
            // Our child, exited, and now reaped.
            return false;
        }
        // ECHILD: not our child. Its own parent reaps it; until then a
        // zombie is as dead as it gets, once all its threads are gone: a
        // killed thread group's leader shows as a zombie while its other
        // threads still tear down, holding its files (a listening socket).
        !matches!(state, b'Z' | b'X' | b'x') || other_threads(self.pid)
    }

    /// Sends `signal` to this process if it still runs as `pid`; returns
    /// whether the signal was sent. Race-free: a pidfd pins the process
    /// before its start time is checked.
    pub fn signal(&self, signal: i32) -> bool {
        if self.pid <= 0 {
            return false;
        }
        // SAFETY: pidfd_open takes a pid and flags and returns a new file
        // descriptor (or -1); no memory is passed.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, self.pid, 0) };
        if fd < 0 {
            if io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS) {
                // Before Linux 5.3: check, then kill (a pid is reused
                // only after many others, so the window is tiny).
                // SAFETY: kill takes a pid and a signal number.
                return self.is_same() && unsafe { libc::kill(self.pid, signal) } == 0;
            }
            return false;
        }
        // SAFETY: `fd` was just returned by pidfd_open and nothing else
        // owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        // The pidfd names the process that had the pid when it was opened.
        // If the pid still has our start time now, that process is ours
        // (ours held the pid from its start until now).
        if !self.is_same() {
            return false;
        }
        use std::os::fd::AsRawFd;
        // SAFETY: a valid pidfd, a signal number, no siginfo (NULL is
        // allowed), flags 0.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                fd.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        r == 0
    }
}

/// Makes `cmd` start detached from the daemon: stdin from /dev/null and a
/// new session (`setsid`), so neither a terminal nor the daemon's process
/// group takes it down. Call this before adding other `pre_exec` steps
/// that must run in the new session.
pub(crate) fn detach(cmd: &mut Command) {
    cmd.stdin(Stdio::null());
    // SAFETY: the closure runs between fork and exec and only calls
    // setsid, which is async-signal-safe, and builds an io::Error from
    // errno, which does not allocate.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Spawns `cmd` and forgets the `Child`: the process is reaped by
/// [`ProcId::is_alive`]. Returns the new process.
pub(crate) fn spawn(cmd: &mut Command) -> io::Result<ProcId> {
    let child = cmd.spawn()?;
    let pid = child.id() as i32;
    // Dropping a Child neither kills nor waits for it.
    drop(child);
    // Not reaped yet, so /proc/PID exists even if it exited already.
    ProcId::of(pid).ok_or_else(|| io::Error::other(format!("process {pid} vanished at start")))
}

/// A pipe whose two ends close on exec.
pub(crate) fn cloexec_pipe() -> io::Result<(File, OwnedFd)> {
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 writes two file descriptors into `fds`, a valid
    // array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by no one
    // else.
    let (r, w) = unsafe { (File::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok((r, w))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn wait_dead(p: &ProcId) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while p.is_alive() {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }

    #[test]
    fn stat_fields_survive_odd_command_names() {
        let mut text = b"4242 (a) b) (c) S 1 4242 4242 0 -1 4194560".to_vec();
        // Fields 10 to 21, then the start time, then more.
        text.extend_from_slice(b" 1 2 3 4 5 6 7 8 20 0 1 0 987654 11 22\n");
        assert_eq!(parse_stat(&text), Some((b'S', 987654)));
        assert_eq!(parse_stat(b"1 (x) R 0"), None);
        assert_eq!(parse_stat(b"garbage"), None);
        let me = ProcId::of(std::process::id() as i32).unwrap();
        assert!(me.start_time > 0);
    }

    #[test]
    fn a_child_is_alive_until_it_exits_and_is_reaped() {
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        detach(&mut cmd);
        let p = spawn(&mut cmd).unwrap();
        assert!(p.is_alive());
        // A new session of its own.
        // SAFETY: getsid takes a pid.
        assert_eq!(unsafe { libc::getsid(p.pid) }, p.pid);
        // Another process that got the same pid is not this one.
        let reused = ProcId {
            pid: p.pid,
            start_time: p.start_time + 1,
        };
        assert!(!reused.is_alive());
        assert!(!reused.signal(libc::SIGKILL));
        assert!(p.is_alive(), "a stale id must not kill the live process");
        assert!(p.signal(libc::SIGKILL));
        assert!(wait_dead(&p));
        // Reaped: the pid is gone.
        assert!(!std::path::Path::new(&format!("/proc/{}", p.pid)).exists());
        assert!(!p.signal(libc::SIGKILL));

        // One that exits by itself.
        let mut cmd = Command::new("true");
        detach(&mut cmd);
        let p = spawn(&mut cmd).unwrap();
        assert!(wait_dead(&p));
    }

    #[test]
    fn a_process_that_is_not_our_child_is_judged_from_proc() {
        // A grandchild: its parent, sh, exits at once, so it belongs to
        // init (or a subreaper), as a VM does after the daemon restarts.
        let out = Command::new("sh")
            .args(["-c", "sleep 30 </dev/null >/dev/null 2>&1 & echo $!"])
            .output()
            .unwrap();
        let pid: i32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        let p = ProcId::of(pid).unwrap();
        // SAFETY: waitpid on a pid with a valid status pointer.
        let r = unsafe { libc::waitpid(pid, &mut 0, libc::WNOHANG) };
        assert_eq!(r, -1, "not our child");
        assert!(p.is_alive());
        assert!(p.signal(libc::SIGKILL));
        assert!(wait_dead(&p));
    }

    #[test]
    fn nothing_runs_as_pid_zero_or_below() {
        for pid in [0, -1] {
            assert!(ProcId::of(pid).is_none());
            let p = ProcId { pid, start_time: 0 };
            assert!(!p.is_alive());
            assert!(!p.signal(0));
        }
    }
}
