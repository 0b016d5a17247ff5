//! The container's processes as the agent's loop drives them: their
//! pipes (read only while the host granted credit, written as the pipe
//! takes it), the signals PID 1 receives and passes on, reaping, and
//! reporting each exit once its output is done.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use super::server::{Agent, FORWARDED};
use super::spawn::Spawned;
use crate::agent::protocol::{encode_data, Message, Stream, MAX_DATA, WINDOW};

/// How long a process's output may stay open after it exited (a
/// background child holding the pipe) before its exit is reported.
pub(super) const EXIT_GRACE: Duration = Duration::from_secs(2);

pub(super) struct Output {
    pub(super) fd: OwnedFd,
    pub(super) credit: u32,
    pub(super) eof: bool,
}

pub(super) struct Proc {
    pub(super) pid: i32,
    pub(super) stdin: Option<OwnedFd>,
    pub(super) stdin_buf: Vec<u8>,
    /// Close stdin (or send ^D to a terminal) once the buffer is written.
    pub(super) stdin_closing: bool,
    pub(super) tty: bool,
    pub(super) out: [Option<Output>; 2],
    pub(super) status: Option<(Option<i32>, Option<i32>)>,
    pub(super) exited_at: Option<Instant>,
    /// The current connection follows this process.
    pub(super) attached: bool,
    pub(super) spawn_us: u64,
}

impl Proc {
    pub(super) fn new(s: Spawned, tty: bool) -> Proc {
        let out = |fd| Output {
            fd,
            credit: WINDOW,
            eof: false,
        };
        Proc {
            pid: s.pid,
            stdin: Some(s.stdin),
            stdin_buf: Vec::new(),
            stdin_closing: false,
            tty,
            out: [Some(out(s.stdout)), s.stderr.map(out)],
            status: None,
            exited_at: None,
            attached: true,
            spawn_us: 0,
        }
    }

    pub(super) fn output_done(&self) -> bool {
        self.out.iter().flatten().all(|o| o.eof)
    }
}

pub(super) fn errno() -> io::Error {
    io::Error::last_os_error()
}

/// A signalfd for SIGCHLD and the forwarded signals, which are blocked
/// for normal delivery (children get an empty mask at spawn).
pub(super) fn signal_fd() -> io::Result<OwnedFd> {
    // SAFETY: the sigset is initialised by sigemptyset before use, and
    // every call gets valid pointers to it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in FORWARDED.iter().chain(&[libc::SIGCHLD]) {
            libc::sigaddset(&mut set, *s);
        }
        if libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err(errno());
        }
        let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
        if fd < 0 {
            return Err(errno());
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

pub(super) fn read_fd(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the buffer is valid for writes of its length.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(errno())
    } else {
        Ok(n as usize)
    }
}

pub(super) fn write_fd(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: the buffer is valid for reads of its length. MSG_NOSIGNAL
    // is not available for pipes; SIGPIPE is ignored by the agent.
    let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(errno())
    } else {
        Ok(n as usize)
    }
}

pub(super) fn would_block(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

impl Agent {
    pub(super) fn on_signals(&mut self) {
        let mut info = [0u8; std::mem::size_of::<libc::signalfd_siginfo>()];
        while let Ok(n) = read_fd(self.signals.as_raw_fd(), &mut info) {
            if n < info.len() {
                break;
            }
            let signo = u32::from_ne_bytes([info[0], info[1], info[2], info[3]]) as i32;
            if signo == libc::SIGCHLD {
                self.reap();
            } else if let Some((id, _)) = self.main {
                if let Some(p) = self.procs.get(&id) {
                    // SAFETY: kill takes no pointers.
                    unsafe { libc::kill(p.pid, signo) };
                }
            }
        }
        // A SIGCHLD may have been merged with one read before: reap anyway.
        self.reap();
    }

    /// Collects every exited child: ours get their status, orphans that
    /// PID 1 inherited are just reaped.
    pub(super) fn reap(&mut self) {
        loop {
            let mut status = 0;
            // SAFETY: waitpid writes the status into the local.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                return;
            }
            let exit = if libc::WIFEXITED(status) {
                (Some(libc::WEXITSTATUS(status)), None)
            } else if libc::WIFSIGNALED(status) {
                (None, Some(libc::WTERMSIG(status)))
            } else {
                continue;
            };
            if let Some(p) = self
                .procs
                .values_mut()
                .find(|p| p.pid == pid && p.status.is_none())
            {
                p.status = Some(exit);
                p.exited_at = Some(Instant::now());
            }
        }
    }

    pub(super) fn on_output(&mut self, id: u32, i: usize, buf: &mut [u8]) {
        let Some(p) = self.procs.get_mut(&id) else {
            return;
        };
        let Some(o) = p.out[i].as_mut() else {
            return;
        };
        let want = (o.credit as usize).min(buf.len());
        if want == 0 {
            return;
        }
        match read_fd(o.fd.as_raw_fd(), &mut buf[..want]) {
            Ok(0) => o.eof = true,
            Ok(n) => {
                if let Some(c) = &mut self.conn {
                    o.credit -= n as u32;
                    let stream = if i == 0 {
                        Stream::Stdout
                    } else {
                        Stream::Stderr
                    };
                    encode_data(id, stream, &buf[..n], &mut c.out);
                }
            }
            Err(e) if would_block(&e) => {}
            // EIO: the terminal's last user closed it.
            Err(_) => o.eof = true,
        }
        if self.conn.as_ref().is_some_and(|c| c.out.len() >= MAX_DATA) {
            self.flush();
        }
    }

    pub(super) fn on_stdin(&mut self, id: u32) {
        let Some(p) = self.procs.get_mut(&id) else {
            return;
        };
        let Some(fd) = &p.stdin else {
            return;
        };
        let mut written = 0;
        while written < p.stdin_buf.len() {
            match write_fd(fd.as_raw_fd(), &p.stdin_buf[written..]) {
                Ok(n) => written += n,
                Err(e) if would_block(&e) => break,
                Err(_) => {
                    // The process closed its stdin: what is left is dropped.
                    written = p.stdin_buf.len();
                    p.stdin = None;
                    break;
                }
            }
        }
        p.stdin_buf.drain(..written);
        if p.stdin_buf.is_empty() && p.stdin_closing {
            p.stdin = None;
        }
        if written > 0 {
            let bytes = written as u32;
            self.send(&Message::Credit {
                id,
                stream: Stream::Stdin,
                bytes,
            });
        }
    }

    /// Reports processes whose exit and output are both done (or whose
    /// output outlived the grace period) to the host that follows them.
    pub(super) fn report_exits(&mut self) {
        if self.conn.is_none() {
            return;
        }
        let done: Vec<u32> = self
            .procs
            .iter()
            .filter(|(_, p)| {
                p.attached
                    && p.status.is_some()
                    && (p.output_done() || p.exited_at.is_some_and(|t| t.elapsed() >= EXIT_GRACE))
            })
            .map(|(&id, _)| id)
            .collect();
        for id in done {
            let Some(p) = self.procs.remove(&id) else {
                continue;
            };
            let (code, signal) = p.status.unwrap_or((None, None));
            self.send(&Message::Exit { id, code, signal });
            self.pod_exited(id);
            if let Some((main, keep)) = self.main {
                if main == id && !keep {
                    self.finished = true;
                }
            }
        }
    }
}
