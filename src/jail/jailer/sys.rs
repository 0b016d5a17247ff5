//! Thin wrappers over the system calls the jailer makes, each returning
//! `io::Result`. The unsafe code of the jailer lives here.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::ptr;

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn check_long(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// A path as a C string; a path with a NUL byte cannot name a file.
pub fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))
}

fn opt_ptr(s: Option<&CStr>) -> *const libc::c_char {
    s.map_or(ptr::null(), CStr::as_ptr)
}

pub fn mount(
    source: Option<&CStr>,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: libc::c_ulong,
    data: Option<&CStr>,
) -> io::Result<()> {
    // SAFETY: every pointer is null or a NUL-terminated string that
    // outlives the call; the kernel copies them.
    check(unsafe {
        libc::mount(
            opt_ptr(source),
            target.as_ptr(),
            opt_ptr(fstype),
            flags,
            opt_ptr(data).cast(),
        )
    })
    .map(drop)
}

/// An `O_PATH` descriptor of `path`, refusing a path with any symlink in
/// it (`openat2` with `RESOLVE_NO_SYMLINKS`): the file a `--mount` was
/// checked as, not one a symlink planted since points to.
pub fn open_path_no_symlinks(path: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: open_how is plain data; zeroed is its documented default.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_PATH | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_NO_SYMLINKS;
    // SAFETY: `path` is NUL-terminated and `how` a live open_how whose
    // size is passed; the kernel only reads both.
    let fd = check_long(unsafe {
        libc::syscall(
            libc::SYS_openat2,
            libc::AT_FDCWD,
            path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    })?;
    // SAFETY: openat2 returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

pub fn umount_detach(target: &CStr) -> io::Result<()> {
    // SAFETY: `target` is a NUL-terminated string that outlives the call.
    check(unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) }).map(drop)
}

pub fn pivot_root(new_root: &CStr, put_old: &CStr) -> io::Result<()> {
    // SAFETY: both are NUL-terminated strings that outlive the call; glibc
    // has no wrapper for pivot_root.
    check_long(unsafe { libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr()) })
        .map(drop)
}

pub fn chdir(dir: &CStr) -> io::Result<()> {
    // SAFETY: `dir` is a NUL-terminated string that outlives the call.
    check(unsafe { libc::chdir(dir.as_ptr()) }).map(drop)
}

pub fn unshare(flags: libc::c_int) -> io::Result<()> {
    // SAFETY: unshare takes no pointers.
    check(unsafe { libc::unshare(flags) }).map(drop)
}

pub fn setns(fd: RawFd, nstype: libc::c_int) -> io::Result<()> {
    // SAFETY: setns takes no pointers; a bad fd is an error, not UB.
    check(unsafe { libc::setns(fd, nstype) }).map(drop)
}

pub fn sethostname(name: &str) -> io::Result<()> {
    // SAFETY: the pointer and length describe `name`'s bytes, which
    // outlive the call.
    check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) }).map(drop)
}

pub fn mknod(path: &CStr, mode: libc::mode_t, dev: libc::dev_t) -> io::Result<()> {
    // SAFETY: `path` is a NUL-terminated string that outlives the call.
    check(unsafe { libc::mknod(path.as_ptr(), mode, dev) }).map(drop)
}

pub fn umask(mask: libc::mode_t) {
    // SAFETY: umask cannot fail and takes no pointers.
    unsafe { libc::umask(mask) };
}

pub fn setrlimit(resource: libc::__rlimit_resource_t, value: u64) -> io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: `lim` is a valid rlimit that outlives the call.
    check(unsafe { libc::setrlimit(resource, &lim) }).map(drop)
}

/// Closes every fd from `first` on.
pub fn close_from(first: u32) -> io::Result<()> {
    // SAFETY: close_range takes no pointers; it only closes this
    // process's fds, none of which the jailer's Rust code still owns
    // after this point (the caller guarantees it).
    match check_long(unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, 0) }) {
        Ok(_) => Ok(()),
        // Before Linux 5.9: one by one, up to the open-file limit.
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
            let mut lim = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: getrlimit writes one rlimit into `lim`, which we own.
            check(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) })?;
            let last = lim.rlim_cur.min(1 << 20) as RawFd;
            for fd in first as RawFd..last {
                // SAFETY: as above; EBADF for fds not open is expected.
                unsafe { libc::close(fd) };
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Waits for an exclusive `flock` on `f`.
pub fn flock_exclusive(f: &std::fs::File) -> io::Result<()> {
    loop {
        // SAFETY: flock takes an fd the caller owns and no pointers.
        match check(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) }) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r.map(drop),
        }
    }
}

pub fn close(fd: RawFd) {
    // SAFETY: the caller owns `fd` and does not use it again.
    unsafe { libc::close(fd) };
}

/// `dup3(old, new, O_CLOEXEC)`, or just sets FD_CLOEXEC when they are
/// the same fd.
pub fn dup_cloexec_to(old: RawFd, new: RawFd) -> io::Result<()> {
    if old == new {
        // SAFETY: fcntl on an fd the caller owns; no pointers.
        return check(unsafe { libc::fcntl(old, libc::F_SETFD, libc::FD_CLOEXEC) }).map(drop);
    }
    // SAFETY: dup3 takes no pointers; the caller owns both fd numbers.
    check(unsafe { libc::dup3(old, new, libc::O_CLOEXEC) }).map(drop)
}

/// A pipe, both ends close-on-exec: (read, write).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a writable array of two ints.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 succeeded, so both are new fds that only we own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Writes all of `buf`, retrying on EINTR.
pub fn write_all(fd: RawFd, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: the pointer and length describe `buf`, which outlives
        // the call.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        buf = &buf[n as usize..];
    }
    Ok(())
}

/// Reads one chunk (up to `buf.len()` bytes), retrying on EINTR; 0 is
/// end of file.
pub fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: the pointer and length describe `buf`, which is
        // writable and outlives the call.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Reads until end of file, keeping at most `max` bytes.
pub fn read_to_end(fd: RawFd, max: usize) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        let n = read(fd, &mut buf)?;
        if n == 0 {
            return Ok(out);
        }
        let room = max.saturating_sub(out.len());
        out.extend_from_slice(&buf[..n.min(room)]);
    }
}

/// Whether every write end of the pipe whose read end is `fd` is closed.
pub fn pipe_hung_up(fd: RawFd) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `p` is one valid pollfd that outlives the call.
    check(unsafe { libc::poll(&mut p, 1, 0) })?;
    Ok(p.revents & libc::POLLHUP != 0)
}

// ---- credentials and capabilities ----

pub fn setgroups_none() -> io::Result<()> {
    // SAFETY: a zero-length list; the pointer is not read.
    check(unsafe { libc::setgroups(0, ptr::null()) }).map(drop)
}

pub fn setresgid(gid: u32) -> io::Result<()> {
    // SAFETY: no pointers.
    check(unsafe { libc::setresgid(gid, gid, gid) }).map(drop)
}

pub fn setresuid(uid: u32) -> io::Result<()> {
    // SAFETY: no pointers.
    check(unsafe { libc::setresuid(uid, uid, uid) }).map(drop)
}

pub fn getresuid() -> (u32, u32, u32) {
    let (mut r, mut e, mut s) = (0, 0, 0);
    // SAFETY: three writable u32s that outlive the call; it cannot fail
    // with valid pointers.
    unsafe { libc::getresuid(&mut r, &mut e, &mut s) };
    (r, e, s)
}

pub fn getresgid() -> (u32, u32, u32) {
    let (mut r, mut e, mut s) = (0, 0, 0);
    // SAFETY: three writable u32s that outlive the call.
    unsafe { libc::getresgid(&mut r, &mut e, &mut s) };
    (r, e, s)
}

/// How many supplementary groups the process has.
pub fn group_count() -> io::Result<i32> {
    // SAFETY: a zero size only asks for the count; the pointer is unread.
    check(unsafe { libc::getgroups(0, ptr::null_mut()) })
}

/// Whether `setuid(0)` works (it must not, once privileges are dropped).
pub fn can_become_root() -> bool {
    // SAFETY: no pointers; if it succeeds the caller treats that as a
    // failed drop and exits without exec.
    unsafe { libc::setuid(0) == 0 }
}

const CAP_V3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Clears the effective, permitted and inheritable sets.
pub fn clear_caps() -> io::Result<()> {
    let hdr = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: a v3 header and the two data structs v3 takes, both valid
    // and outliving the call; glibc has no capset wrapper.
    check_long(unsafe { libc::syscall(libc::SYS_capset, &hdr, data.as_ptr()) }).map(drop)
}

/// (effective, permitted, inheritable) as 64-bit masks.
pub fn get_caps() -> io::Result<(u64, u64, u64)> {
    let hdr = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: a v3 header and room for the two data structs v3 fills.
    check_long(unsafe { libc::syscall(libc::SYS_capget, &hdr, data.as_mut_ptr()) })?;
    let join = |f: fn(&CapData) -> u32| u64::from(f(&data[0])) | (u64::from(f(&data[1])) << 32);
    Ok((
        join(|d| d.effective),
        join(|d| d.permitted),
        join(|d| d.inheritable),
    ))
}

fn prctl(op: libc::c_int, arg: libc::c_ulong) -> io::Result<libc::c_int> {
    // SAFETY: every op used here takes integer arguments only.
    check(unsafe {
        libc::prctl(
            op,
            arg,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    })
}

/// Drops every capability from the bounding set (needs CAP_SETPCAP, so
/// before the uid changes). Returns how many there were.
pub fn drop_bounding_set() -> io::Result<u32> {
    let mut cap = 0;
    loop {
        match prctl(libc::PR_CAPBSET_READ, cap) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(cap as u32),
            Err(e) => return Err(e),
        }
        prctl(libc::PR_CAPBSET_DROP, cap)?;
        cap += 1;
    }
}

pub fn clear_ambient_caps() -> io::Result<()> {
    // SAFETY: integer arguments only.
    check(unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    })
    .map(drop)
}

pub fn set_no_new_privs() -> io::Result<()> {
    prctl(libc::PR_SET_NO_NEW_PRIVS, 1).map(drop)
}

pub fn set_parent_death_signal(sig: libc::c_int) -> io::Result<()> {
    prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong).map(drop)
}

// ---- processes and signals ----

pub enum Forked {
    Child,
    Parent(libc::pid_t),
}

/// fork(2).
///
/// # Safety
/// The calling process must be single-threaded, so that the child, which
/// keeps running Rust code (and allocating) until it execs, inherits no
/// lock another thread held.
pub unsafe fn fork() -> io::Result<Forked> {
    // SAFETY: the caller guarantees a single-threaded process.
    match check(unsafe { libc::fork() })? {
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(pid)),
    }
}

pub fn setsid() -> io::Result<()> {
    // SAFETY: no pointers.
    check(unsafe { libc::setsid() }).map(drop)
}

/// Leaves the process at once, without running destructors or atexit
/// handlers (the right end for a forked child that did not exec).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit is always safe to call.
    unsafe { libc::_exit(code) }
}

pub fn kill(pid: libc::pid_t, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: no pointers.
    check(unsafe { libc::kill(pid, sig) }).map(drop)
}

/// Whether a process with this pid exists (EPERM still means it does).
pub fn pid_alive(pid: libc::pid_t) -> bool {
    if pid <= 0 {
        return false;
    }
    match kill(pid, 0) {
        Ok(()) => true,
        Err(e) => e.raw_os_error() == Some(libc::EPERM),
    }
}

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

/// waitpid(pid); `None` when `nohang` and it has not ended.
pub fn wait(pid: libc::pid_t, nohang: bool) -> io::Result<Option<Exit>> {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a writable int that outlives the call.
        let r = unsafe { libc::waitpid(pid, &mut status, if nohang { libc::WNOHANG } else { 0 }) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            return Ok(None);
        }
        if libc::WIFEXITED(status) {
            return Ok(Some(Exit::Code(libc::WEXITSTATUS(status))));
        }
        if libc::WIFSIGNALED(status) {
            return Ok(Some(Exit::Signal(libc::WTERMSIG(status))));
        }
        // Stopped or continued: keep waiting for the end.
        if nohang {
            return Ok(None);
        }
    }
}

/// A signal set.
pub fn sigset(signals: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it, and
    // sigaddset only fails for invalid signal numbers, which the callers
    // never pass.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Blocks `set`; returns the previous mask.
pub fn block(set: &libc::sigset_t) -> io::Result<libc::sigset_t> {
    // SAFETY: sigset_t is plain data and both pointers are valid.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` and `old` are valid sigsets that outlive the call.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, set, &mut old) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    Ok(old)
}

/// Sets the signal mask to `set`.
pub fn set_mask(set: &libc::sigset_t) -> io::Result<()> {
    // SAFETY: `set` is a valid sigset that outlives the call.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, set, ptr::null_mut()) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    Ok(())
}

/// Waits for a signal of `set` (which must be blocked) for at most
/// `timeout`; `None` on timeout.
pub fn wait_signal(
    set: &libc::sigset_t,
    timeout: std::time::Duration,
) -> io::Result<Option<libc::c_int>> {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `set` and `ts` are valid and outlive the call; the siginfo
    // pointer may be null.
    let r = unsafe { libc::sigtimedwait(set, ptr::null_mut(), &ts) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(None),
            _ => Err(e),
        };
    }
    Ok(Some(r))
}

/// execve(2); returns only on failure.
pub fn execve(path: &CStr, argv: &[CString], envp: &[CString]) -> io::Error {
    let mut a: Vec<*const libc::c_char> = argv.iter().map(|s| s.as_ptr()).collect();
    a.push(ptr::null());
    let mut e: Vec<*const libc::c_char> = envp.iter().map(|s| s.as_ptr()).collect();
    e.push(ptr::null());
    // SAFETY: `path` and every string are NUL-terminated and outlive the
    // call; both arrays end with a null pointer.
    unsafe { libc::execve(path.as_ptr(), a.as_ptr(), e.as_ptr()) };
    io::Error::last_os_error()
}

/// How many threads this process has (the jailer forks, which is only
/// sound while it has one).
pub fn thread_count() -> io::Result<usize> {
    Ok(std::fs::read_dir("/proc/self/task")?.count())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mount_source_with_a_symlink_in_its_path_is_refused() {
        let dir = std::env::temp_dir().join(format!("husk-nosym-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("real")).unwrap();
        std::fs::write(dir.join("real/f"), b"x").unwrap();
        std::os::unix::fs::symlink(dir.join("real"), dir.join("link")).unwrap();
        let real = cpath(&dir.join("real/f")).unwrap();
        assert!(open_path_no_symlinks(&real).is_ok());
        let via_link = cpath(&dir.join("link/f")).unwrap();
        let err = open_path_no_symlinks(&via_link).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ELOOP), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
