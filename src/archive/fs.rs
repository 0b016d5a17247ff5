//! The system calls behind packing and unpacking, on descriptors: every
//! name below is one path component relative to a directory descriptor
//! (or, for [`open_beneath`], a relative path resolved with no symlinks),
//! so nothing here follows a symlink the caller did not ask to follow.

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

/// The metadata of one inode, as `stat` gives it.
#[derive(Clone, Copy, Debug)]
pub struct Stat {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: i64,
    pub mtime_nsec: i64,
    pub dev: u64,
    pub ino: u64,
    pub nlink: u64,
    pub rdev: u64,
}

impl Stat {
    fn from_raw(st: &libc::stat) -> Stat {
        Stat {
            mode: st.st_mode,
            uid: st.st_uid,
            gid: st.st_gid,
            size: st.st_size.max(0) as u64,
            mtime: st.st_mtime,
            mtime_nsec: st.st_mtime_nsec,
            dev: st.st_dev,
            ino: st.st_ino,
            nlink: st.st_nlink,
            rdev: st.st_rdev,
        }
    }

    /// The file type bits (`S_IFMT`).
    pub fn kind(&self) -> u32 {
        self.mode & libc::S_IFMT
    }

    pub fn is_dir(&self) -> bool {
        self.kind() == libc::S_IFDIR
    }
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `bytes` as a C string; a NUL inside is an `InvalidInput` error.
pub fn cstr(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a name"))
}

fn cpath(p: &Path) -> io::Result<CString> {
    cstr(p.as_os_str().as_bytes())
}

fn owned(fd: libc::c_int) -> OwnedFd {
    // SAFETY: the caller passes a descriptor a system call just returned,
    // which nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Opens the directory `path` itself, refusing a symlink in its last
/// component (the caller has resolved the path already).
pub fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    let c = cpath(path)?;
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: `c` is a NUL-terminated string that outlives the call.
    check(unsafe { libc::open(c.as_ptr(), flags) }).map(owned)
}

/// Opens `path` with `flags` plus `O_NOFOLLOW | O_CLOEXEC`.
pub fn open_nofollow(path: &Path, flags: libc::c_int) -> io::Result<OwnedFd> {
    let c = cpath(path)?;
    let flags = flags | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: `c` is a NUL-terminated string that outlives the call.
    check(unsafe { libc::open(c.as_ptr(), flags) }).map(owned)
}

/// `openat(dir, name, flags | O_NOFOLLOW | O_CLOEXEC, mode)`.
pub fn openat(dir: BorrowedFd, name: &CStr, flags: libc::c_int, mode: u32) -> io::Result<OwnedFd> {
    let flags = flags | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: `name` is NUL-terminated and outlives the call; the mode is
    // passed as the variadic argument openat reads with O_CREAT.
    check(unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags, mode as libc::c_uint) })
        .map(owned)
}

/// Set once `openat2` has answered ENOSYS: the kernel predates it.
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// Opens the directory `path` (relative, components joined by `/`, no
/// `.` or `..`) beneath `dir`, refusing any symlink on the way, the last
/// component included. With `openat2` this is one call with
/// `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS`; on a
/// kernel without it, one `openat(O_NOFOLLOW | O_DIRECTORY)` per
/// component. A symlink is `ELOOP`, a non-directory `ENOTDIR`, a missing
/// component `ENOENT`.
pub fn open_beneath(dir: BorrowedFd, path: &[u8]) -> io::Result<OwnedFd> {
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    if path.is_empty() {
        return dup(dir);
    }
    if !NO_OPENAT2.load(Ordering::Relaxed) {
        let c = cstr(path)?;
        // SAFETY: open_how is plain data; all-zero is its documented
        // default, and the fields this kernel ignores stay zero.
        let mut how: libc::open_how = unsafe { std::mem::zeroed() };
        how.flags = flags as u64;
        how.resolve =
            libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
        for _ in 0..8 {
            // SAFETY: `c` is NUL-terminated and `how` a live open_how
            // whose size is passed; the kernel only reads both.
            let ret = unsafe {
                libc::syscall(
                    libc::SYS_openat2,
                    dir.as_raw_fd(),
                    c.as_ptr(),
                    &how as *const libc::open_how,
                    std::mem::size_of::<libc::open_how>(),
                )
            };
            if ret >= 0 {
                return Ok(owned(ret as RawFd));
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                // A rename elsewhere raced the lookup: try again.
                Some(libc::EAGAIN) => continue,
                Some(libc::ENOSYS) => {
                    NO_OPENAT2.store(true, Ordering::Relaxed);
                    break;
                }
                _ => return Err(err),
            }
        }
        if !NO_OPENAT2.load(Ordering::Relaxed) {
            return Err(io::Error::from_raw_os_error(libc::EAGAIN));
        }
    }
    walk_beneath(dir, path)
}

/// [`open_beneath`] without `openat2`: one `openat(O_NOFOLLOW |
/// O_DIRECTORY)` per component.
pub fn walk_beneath(dir: BorrowedFd, path: &[u8]) -> io::Result<OwnedFd> {
    let mut cur = dup(dir)?;
    for part in path.split(|&b| b == b'/').filter(|p| !p.is_empty()) {
        if part == b".." {
            // Never asked for; refused as RESOLVE_BENEATH would.
            return Err(io::Error::from_raw_os_error(libc::EXDEV));
        }
        cur = openat(
            cur.as_fd(),
            &cstr(part)?,
            libc::O_RDONLY | libc::O_DIRECTORY,
            0,
        )?;
    }
    Ok(cur)
}

/// A new descriptor for the same open directory or file.
pub fn dup(fd: BorrowedFd) -> io::Result<OwnedFd> {
    fd.try_clone_to_owned()
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`.
pub fn lstat_at(dir: BorrowedFd, name: &CStr) -> io::Result<Stat> {
    // SAFETY: stat is plain data, filled in by the call.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `name` is NUL-terminated and `st` a live stat; both outlive
    // the call.
    check(unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(Stat::from_raw(&st))
}

/// `lstat(path)`.
pub fn lstat(path: &Path) -> io::Result<Stat> {
    let c = cpath(path)?;
    // SAFETY: stat is plain data, filled in by the call.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated and `st` a live stat.
    check(unsafe { libc::lstat(c.as_ptr(), &mut st) })?;
    Ok(Stat::from_raw(&st))
}

/// `fstat(fd)`.
pub fn fstat(fd: BorrowedFd) -> io::Result<Stat> {
    // SAFETY: stat is plain data, filled in by the call.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a live stat; a bad descriptor is an error.
    check(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    Ok(Stat::from_raw(&st))
}

pub fn mkdirat(dir: BorrowedFd, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated and outlives the call.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) }).map(drop)
}

/// Removes `name` (a directory with `AT_REMOVEDIR`); a symlink is
/// removed itself, never followed.
pub fn unlinkat(dir: BorrowedFd, name: &CStr, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated and outlives the call.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) }).map(drop)
}

pub fn symlinkat(target: &CStr, dir: BorrowedFd, name: &CStr) -> io::Result<()> {
    // SAFETY: both strings are NUL-terminated and outlive the call.
    check(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) }).map(drop)
}

/// A hard link `new_dir/new` to `old_dir/old`; with no flags, a symlink
/// `old` is linked itself, not followed.
pub fn linkat(old_dir: BorrowedFd, old: &CStr, new_dir: BorrowedFd, new: &CStr) -> io::Result<()> {
    // SAFETY: both strings are NUL-terminated and outlive the call.
    check(unsafe {
        libc::linkat(
            old_dir.as_raw_fd(),
            old.as_ptr(),
            new_dir.as_raw_fd(),
            new.as_ptr(),
            0,
        )
    })
    .map(drop)
}

pub fn mknodat(dir: BorrowedFd, name: &CStr, mode: u32, dev: u64) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated and outlives the call.
    check(unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), mode, dev) }).map(drop)
}

/// `lchown` of `dir/name`.
pub fn lchownat(dir: BorrowedFd, name: &CStr, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated and outlives the call.
    check(unsafe {
        libc::fchownat(
            dir.as_raw_fd(),
            name.as_ptr(),
            uid,
            gid,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(drop)
}

pub fn fchown(fd: BorrowedFd, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: fchown takes no pointers; a bad descriptor is an error.
    check(unsafe { libc::fchown(fd.as_raw_fd(), uid, gid) }).map(drop)
}

pub fn fchmod(fd: BorrowedFd, mode: u32) -> io::Result<()> {
    // SAFETY: fchmod takes no pointers; a bad descriptor is an error.
    check(unsafe { libc::fchmod(fd.as_raw_fd(), mode) }).map(drop)
}

/// `chmod` of `dir/name`, never through a symlink: with
/// `AT_SYMLINK_NOFOLLOW` where the C library and kernel support it;
/// otherwise only after `fstatat` shows `name` is not a symlink.
pub fn chmodat_nofollow(dir: BorrowedFd, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated and outlives the call.
    let ret = unsafe {
        libc::fchmodat(
            dir.as_raw_fd(),
            name.as_ptr(),
            mode,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if ret == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EOPNOTSUPP) && err.raw_os_error() != Some(libc::ENOTSUP) {
        return Err(err);
    }
    if lstat_at(dir, name)?.kind() == libc::S_IFLNK {
        return Err(err);
    }
    // SAFETY: as above.
    check(unsafe { libc::fchmodat(dir.as_raw_fd(), name.as_ptr(), mode, 0) }).map(drop)
}

fn times(sec: i64, nsec: i64) -> [libc::timespec; 2] {
    let t = libc::timespec {
        tv_sec: sec,
        tv_nsec: nsec.clamp(0, 999_999_999),
    };
    [t, t]
}

/// Sets the access and modification times of the open file to `sec`.
pub fn futimens(fd: BorrowedFd, sec: i64, nsec: i64) -> io::Result<()> {
    let t = times(sec, nsec);
    // SAFETY: `t` is an array of two timespecs that outlives the call.
    check(unsafe { libc::futimens(fd.as_raw_fd(), t.as_ptr()) }).map(drop)
}

/// Sets the times of `dir/name` itself (a symlink's own, not its target's).
pub fn lutimensat(dir: BorrowedFd, name: &CStr, sec: i64, nsec: i64) -> io::Result<()> {
    let t = times(sec, nsec);
    // SAFETY: `name` is NUL-terminated; `t` holds two timespecs; both
    // outlive the call.
    check(unsafe {
        libc::utimensat(
            dir.as_raw_fd(),
            name.as_ptr(),
            t.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(drop)
}

/// The target of the symlink `dir/name`, whatever its length.
pub fn readlinkat(dir: BorrowedFd, name: &CStr) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    loop {
        // SAFETY: the pointer and length describe `buf`, which outlives
        // the call; `name` is NUL-terminated.
        let n = unsafe {
            libc::readlinkat(
                dir.as_raw_fd(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        if n < buf.len() {
            buf.truncate(n);
            return Ok(buf);
        }
        if buf.len() > 1 << 20 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "symlink target too long",
            ));
        }
        buf.resize(buf.len() * 2, 0);
    }
}

/// The names in the open directory `dir`, without `.` and `..`, sorted
/// (so an archive of the same tree is the same archive).
pub fn read_dir_names(dir: BorrowedFd) -> io::Result<Vec<CString>> {
    let own = dup(dir)?;
    // SAFETY: fdopendir takes over the duplicate on success; on failure it
    // stays ours and `own` closes it.
    let d = unsafe { libc::fdopendir(own.as_raw_fd()) };
    if d.is_null() {
        return Err(io::Error::last_os_error());
    }
    // The DIR owns the descriptor now.
    std::mem::forget(own);
    struct Dir(*mut libc::DIR);
    impl Drop for Dir {
        fn drop(&mut self) {
            // SAFETY: the DIR came from fdopendir and is closed once.
            unsafe { libc::closedir(self.0) };
        }
    }
    let d = Dir(d);
    // SAFETY: the stream starts at the directory's current offset, which
    // a previous listing through another duplicate may have moved.
    unsafe { libc::rewinddir(d.0) };
    let mut names = Vec::new();
    loop {
        // SAFETY: errno is thread-local; clearing it tells end-of-stream
        // from an error after readdir returns null.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: `d.0` is a live DIR; the entry it returns stays valid
        // until the next readdir on it, and is copied before then.
        let ent = unsafe { libc::readdir64(d.0) };
        if ent.is_null() {
            let err = io::Error::last_os_error();
            if err.raw_os_error().unwrap_or(0) != 0 {
                return Err(err);
            }
            break;
        }
        // SAFETY: d_name is a NUL-terminated array inside the entry.
        let name = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) };
        let b = name.to_bytes();
        if b != b"." && b != b".." {
            names.push(name.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// The device number of `major:minor`.
pub fn makedev(major: u32, minor: u32) -> u64 {
    libc::makedev(major, minor)
}

/// `(major, minor)` of a device number.
pub fn major_minor(dev: u64) -> (u32, u32) {
    (libc::major(dev), libc::minor(dev))
}

/// A component's bytes as a path, for messages.
pub fn as_path(b: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(b))
}
