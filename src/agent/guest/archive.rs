//! `husk cp` in the guest: each archive operation runs in a child of the
//! agent (forked, not exec'd: the agent's own code, in the container's
//! root), with the tar stream on its stdin or stdout. So the streams get
//! the same flow control as any process's, and a hostile archive that
//! trips the unpacker costs a child, never PID 1.
//!
//! The child reports failure on stderr and with its exit code:
//! [`ARCHIVE_NOT_FOUND`] when the path is missing, [`ARCHIVE_REFUSED`]
//! when the request or the archive is refused, 1 otherwise.

use std::io::{self, Write};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use super::spawn::Spawned;
use crate::agent::protocol::{ArchiveOp, ARCHIVE_NOT_FOUND, ARCHIVE_REFUSED};
use crate::archive::{self, ArchiveError, UnpackOptions};

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two descriptors into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors are new and ours.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn nonblocking(fd: &OwnedFd) {
    use std::os::fd::AsRawFd;
    // SAFETY: fcntl on a descriptor we own, with integer arguments.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
}

/// Forks the child that runs `op`; the agent is single-threaded, so the
/// child may run Rust code after the fork.
pub fn spawn(op: &ArchiveOp) -> io::Result<Spawned> {
    use std::os::fd::AsRawFd;
    let (in_r, in_w) = pipe()?;
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    // SAFETY: see the function's comment; the child only uses its copy
    // of the address space and ends with _exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: dup2 and close_range on descriptors of this process.
        unsafe {
            libc::dup2(in_r.as_raw_fd(), 0);
            libc::dup2(out_w.as_raw_fd(), 1);
            libc::dup2(err_w.as_raw_fd(), 2);
            // The agent's sockets and other processes' pipes.
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
        }
        let code = run(op);
        // SAFETY: ends the child without running the agent's destructors.
        unsafe { libc::_exit(code) };
    }
    drop((in_r, out_w, err_w));
    for fd in [&in_w, &out_r, &err_r] {
        nonblocking(fd);
    }
    Ok(Spawned {
        pid,
        stdin: in_w,
        stdout: out_r,
        stderr: Some(err_r),
    })
}

/// The child's work; returns its exit code.
fn run(op: &ArchiveOp) -> i32 {
    let code = match run_op(op) {
        Ok(()) => 0,
        Err((code, msg)) => {
            let _ = writeln!(io::stderr(), "{msg}");
            code
        }
    };
    // The child ends with _exit, which flushes nothing of Rust's.
    let _ = io::stdout().flush();
    code
}

/// The child's stdout, written through a buffer flushed at the end.
fn stdout() -> io::BufWriter<io::StdoutLock<'static>> {
    io::BufWriter::with_capacity(64 * 1024, io::stdout().lock())
}

type Failure = (i32, String);

fn failure(e: ArchiveError) -> Failure {
    let code = if e.is_not_found() {
        ARCHIVE_NOT_FOUND
    } else if e.is_refusal() {
        ARCHIVE_REFUSED
    } else {
        1
    };
    (code, e.to_string())
}

fn run_op(op: &ArchiveOp) -> Result<(), Failure> {
    match op {
        ArchiveOp::Stat { path } => {
            let p = archive::resolve_in_root(Path::new("/"), path, false).map_err(failure)?;
            let st = archive::stat(&p).map_err(failure)?;
            let json = serde_json::to_vec(&st).map_err(|e| (1, e.to_string()))?;
            let mut out = stdout();
            out.write_all(&json)
                .and_then(|()| out.flush())
                .map_err(|e| (1, e.to_string()))
        }
        ArchiveOp::Read { path, name } => {
            let follow = path.ends_with('/') || name == ".";
            let p = archive::resolve_in_root(Path::new("/"), path, follow).map_err(failure)?;
            let mut out = stdout();
            archive::pack(&p, name, &mut out).map_err(failure)?;
            out.flush().map_err(|e| (1, e.to_string()))
        }
        ArchiveOp::Write { path } => {
            let p = archive::resolve_in_root(Path::new("/"), path, true).map_err(failure)?;
            let opts = UnpackOptions {
                same_owner: true,
                devices: true,
                ..UnpackOptions::default()
            };
            let input = io::BufReader::with_capacity(64 * 1024, io::stdin().lock());
            archive::unpack(input, &p, &opts)
                .map(|_| ())
                .map_err(failure)
        }
    }
}
