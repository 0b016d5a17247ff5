//! The tar streams behind `husk cp`, shared by the host CLI and the guest
//! agent: one side packs, the other unpacks, and either side's input may
//! be hostile (a container's files unpacked on the host, a caller's
//! archive unpacked in the guest).
//!
//! - [`pack`]`(src, name, out)` writes a tar of `src` (GNU format, long
//!   names and link targets as GNU extensions). Entries are named `name`,
//!   then the path below `src`: packing `/var/log` as `log` gives `log`,
//!   `log/syslog`, ... `name` is the base name the receiver gets, one
//!   path component; `name` `"."` packs a directory's contents with no
//!   top entry (`docker cp SRC/. DEST`), entries `syslog`, ... Regular
//!   files, directories (recursively), symlinks (as symlinks, never
//!   followed, `src` itself included), FIFOs and device nodes are kept,
//!   with mode (setuid, setgid and sticky bits included), owner, group,
//!   mtime (whole seconds) and symlink target; files with more than one
//!   link inside the tree become hard link entries after the first.
//!   Sockets are left out. A file that cannot be read fails the whole
//!   pack, naming it.
//! - [`unpack`]`(input, dest, opts)` unpacks into the existing directory
//!   `dest` (resolved by the caller, see [`resolve_in_root`]; a symlink
//!   there is refused). Entry paths must be relative, without `..` or NUL
//!   (a leading `./` is fine); no entry is created or written through a
//!   symlink, whether the archive made it or `dest` had it: every parent
//!   directory is opened with `openat2(RESOLVE_BENEATH |
//!   RESOLVE_NO_SYMLINKS)` from `dest`'s descriptor. An existing file or
//!   symlink at an entry's path is replaced, an existing directory is
//!   merged into by a directory entry; a directory over a non-directory
//!   (symlinks included) or the reverse is an error, as Docker's
//!   `noOverwriteDirNonDir`. Hard links must name an earlier entry of the
//!   same archive. Device nodes are made only with
//!   [`UnpackOptions::devices`]; otherwise they, and types tar has but
//!   this does not make (sockets, volume labels), are counted as skipped.
//!   Owners, and the setuid and setgid bits, are kept only with
//!   [`UnpackOptions::same_owner`]; modes (no umask) and mtimes always;
//!   a directory's mode and mtime are set after its contents.
//!   [`UnpackOptions::rename_top`] replaces every entry's first path
//!   component, hard link targets' too (`husk cp c:/data ./backup`,
//!   `./backup` missing: `data/x` unpacks as `backup/x`); it is meant
//!   for an archive with one top entry, packed with a `name`.
//!
//!   The stream is read once, so an entry that is refused stops the
//!   unpack there: what earlier entries made stays, always inside `dest`
//!   (directories the archive made keep mode 0700 then, their own mode
//!   being set only at the end).
//!   Limits: entry paths up to 4096 bytes and 512 components; an entry's
//!   header extensions (GNU long names, PAX records) up to 1 MiB
//!   together; file contents are
//!   streamed, never held. What stays in memory is one 64 KiB buffer, a
//!   64-bit hash per non-directory entry (for hard links) and the path and
//!   metadata of each directory entry (applied at the end).
//! - [`stat`]`(path)` is the `lstat` of `path` as [`PathStat`], the JSON
//!   Docker sends in `X-Docker-Container-Path-Stat`: `mode` in Go's
//!   `os.FileMode` bits (see [`go_mode`]), `mtime` an RFC 3339 UTC time
//!   with nanoseconds, `linkTarget` the raw target of a symlink.
//! - [`resolve_in_root`]`(root, path, follow_last)` is the path `path`
//!   names inside `root`, symlinks resolved as if `root` were `/`.

mod fs;
mod pack;
mod resolve;
mod unpack;

#[cfg(test)]
mod tests;

use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

pub use pack::pack;
pub use resolve::resolve_in_root;
pub use unpack::{unpack, UnpackOptions, UnpackSummary};

use crate::text::{echo, echo_path};

/// The longest entry path accepted, in bytes (Linux's `PATH_MAX`).
pub const MAX_PATH: usize = 4096;
/// The most components an entry path may have.
pub const MAX_DEPTH: usize = 512;
/// The most bytes of header extensions (GNU long names, PAX records)
/// read for one entry.
pub const MAX_HEADER_EXTENSION: u64 = 1 << 20;
/// The most symlinks [`resolve_in_root`] follows for one path.
pub const MAX_SYMLINKS: u32 = 40;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("{path}: no such file or directory")]
    NotFound { path: String },
    #[error("{path} is not a directory")]
    NotADirectory { path: String },
    #[error("cannot {op} {path}: {err}")]
    Local {
        op: &'static str,
        path: String,
        err: io::Error,
    },
    #[error("{path} changed while it was being packed")]
    Changed { path: String },
    #[error("cannot pack {path}: {why}")]
    PackLimit { path: String, why: &'static str },
    #[error("invalid name '{name}': {why}")]
    InvalidName { name: String, why: &'static str },
    #[error("invalid path '{path}': {why}")]
    InvalidPath { path: String, why: &'static str },
    #[error("{path}: too many levels of symbolic links (more than {MAX_SYMLINKS})")]
    SymlinkLoop { path: String },
    #[error("cannot read the archive: {0}")]
    Read(io::Error),
    #[error("cannot write the archive: {0}")]
    Write(io::Error),
    #[error("refusing the archive: an entry's header extensions (long name, PAX records) exceed {MAX_HEADER_EXTENSION} bytes")]
    HeaderTooLarge,
    #[error("refusing the archive: entry '{entry}' {why}")]
    Unsafe { entry: String, why: &'static str },
    #[error("refusing the archive: entry '{entry}' would be written through the symlink '{link}'")]
    ThroughSymlink { entry: String, link: String },
    #[error("cannot unpack '{entry}': '{parent}' is not a directory")]
    ParentNotDir { entry: String, parent: String },
    #[error("cannot overwrite non-directory '{entry}' with a directory")]
    DirOverNonDir { entry: String },
    #[error("cannot overwrite directory '{entry}' with a non-directory")]
    NonDirOverDir { entry: String },
    #[error("refusing the archive: hard link '{entry}' points to '{target}', {why}")]
    BadLink {
        entry: String,
        target: String,
        why: &'static str,
    },
    #[error("archive entry '{entry}': {why}")]
    BadHeader { entry: String, why: String },
    #[error("cannot {op} '{entry}': {err}")]
    Entry {
        op: &'static str,
        entry: String,
        err: io::Error,
    },
}

impl ArchiveError {
    /// The path to pack, stat or unpack into does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, ArchiveError::NotFound { .. })
    }

    /// The request (a name, a path) or the archive was refused, as
    /// opposed to an I/O failure along the way.
    pub fn is_refusal(&self) -> bool {
        use ArchiveError::*;
        matches!(
            self,
            NotADirectory { .. }
                | PackLimit { .. }
                | InvalidName { .. }
                | InvalidPath { .. }
                | SymlinkLoop { .. }
                | HeaderTooLarge
                | Unsafe { .. }
                | ThroughSymlink { .. }
                | ParentNotDir { .. }
                | DirOverNonDir { .. }
                | NonDirOverDir { .. }
                | BadLink { .. }
                | BadHeader { .. }
        )
    }
}

/// An error on the local path `path`: a missing path is
/// [`ArchiveError::NotFound`], a path that is not a directory where one
/// is needed (`ENOTDIR`, or `ELOOP` from `O_NOFOLLOW`) is
/// [`ArchiveError::NotADirectory`] when `dir` says one was needed.
fn local(op: &'static str, path: &Path, err: io::Error, dir: bool) -> ArchiveError {
    let p = echo_path(path);
    match err.raw_os_error() {
        Some(libc::ENOENT) => ArchiveError::NotFound { path: p },
        Some(libc::ENOTDIR) | Some(libc::ELOOP) if dir => ArchiveError::NotADirectory { path: p },
        _ => ArchiveError::Local { op, path: p, err },
    }
}

/// Archive path bytes as text for a message.
fn shown(b: &[u8]) -> String {
    echo(&String::from_utf8_lossy(b)).into_owned()
}

/// Checks a base name (`pack`'s `name`, `rename_top`): one path
/// component, not `.` or `..`.
fn check_name(name: &str) -> Result<(), ArchiveError> {
    let why = if name.is_empty() {
        "it is empty"
    } else if name == "." || name == ".." {
        "it must name a file, not '.' or '..'"
    } else if name.contains('/') {
        "it must be one path component, without '/'"
    } else if name.contains('\0') {
        "it contains a NUL byte"
    } else if name.len() > 255 {
        "it is longer than 255 bytes"
    } else {
        return Ok(());
    };
    Err(ArchiveError::InvalidName {
        name: echo(name).into_owned(),
        why,
    })
}

/// What [`stat`] reports of a path: the JSON of Docker's
/// `X-Docker-Container-Path-Stat` header.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PathStat {
    /// The last component of the path (`/` for the root).
    pub name: String,
    /// `st_size`: bytes for a file, the target's length for a symlink.
    pub size: u64,
    /// Go's `os.FileMode` bits, as Docker sends them (see [`go_mode`]).
    pub mode: u32,
    /// The modification time, RFC 3339 in UTC with as many fractional
    /// digits as needed (Go's `RFC3339Nano`): `2024-05-01T10:20:30.5Z`.
    pub mtime: String,
    /// A symlink's target as stored in the link; empty for other files.
    #[serde(default)]
    pub link_target: String,
}

impl PathStat {
    pub fn is_dir(&self) -> bool {
        self.mode & GO_DIR != 0
    }

    pub fn is_symlink(&self) -> bool {
        self.mode & GO_SYMLINK != 0
    }

    /// The mode as `st_mode` bits (type and permissions).
    pub fn unix_mode(&self) -> u32 {
        unix_mode(self.mode)
    }
}

const GO_DIR: u32 = 1 << 31;
const GO_SYMLINK: u32 = 1 << 27;
const GO_DEVICE: u32 = 1 << 26;
const GO_PIPE: u32 = 1 << 25;
const GO_SOCKET: u32 = 1 << 24;
const GO_SETUID: u32 = 1 << 23;
const GO_SETGID: u32 = 1 << 22;
const GO_CHAR: u32 = 1 << 21;
const GO_STICKY: u32 = 1 << 20;
const GO_IRREGULAR: u32 = 1 << 19;

/// `st_mode` as Go's `os.FileMode`: permissions in the low nine bits,
/// the type and the setuid, setgid and sticky bits as Go's flags.
pub fn go_mode(st_mode: u32) -> u32 {
    let mut m = st_mode & 0o777;
    m |= match st_mode & libc::S_IFMT {
        libc::S_IFREG => 0,
        libc::S_IFDIR => GO_DIR,
        libc::S_IFLNK => GO_SYMLINK,
        libc::S_IFBLK => GO_DEVICE,
        libc::S_IFCHR => GO_DEVICE | GO_CHAR,
        libc::S_IFIFO => GO_PIPE,
        libc::S_IFSOCK => GO_SOCKET,
        _ => GO_IRREGULAR,
    };
    for (unix, go) in [
        (libc::S_ISUID, GO_SETUID),
        (libc::S_ISGID, GO_SETGID),
        (libc::S_ISVTX, GO_STICKY),
    ] {
        if st_mode & unix != 0 {
            m |= go;
        }
    }
    m
}

/// Go's `os.FileMode` as `st_mode` (the inverse of [`go_mode`]).
pub fn unix_mode(go: u32) -> u32 {
    let kind = if go & GO_DIR != 0 {
        libc::S_IFDIR
    } else if go & GO_SYMLINK != 0 {
        libc::S_IFLNK
    } else if go & GO_DEVICE != 0 && go & GO_CHAR != 0 {
        libc::S_IFCHR
    } else if go & GO_DEVICE != 0 {
        libc::S_IFBLK
    } else if go & GO_PIPE != 0 {
        libc::S_IFIFO
    } else if go & GO_SOCKET != 0 {
        libc::S_IFSOCK
    } else {
        libc::S_IFREG
    };
    let mut m = kind | (go & 0o777);
    for (unix, g) in [
        (libc::S_ISUID, GO_SETUID),
        (libc::S_ISGID, GO_SETGID),
        (libc::S_ISVTX, GO_STICKY),
    ] {
        if go & g != 0 {
            m |= unix;
        }
    }
    m
}

/// The `lstat` of `path`: a symlink is described, not followed.
pub fn stat(path: &Path) -> Result<PathStat, ArchiveError> {
    let st = fs::lstat(path).map_err(|e| local("stat", path, e, false))?;
    let link_target = if st.kind() == libc::S_IFLNK {
        let t = std::fs::read_link(path).map_err(|e| local("read the link", path, e, false))?;
        t.to_string_lossy().into_owned()
    } else {
        String::new()
    };
    let name = match path.file_name() {
        Some(n) => n.to_string_lossy().into_owned(),
        None if path.as_os_str().is_empty() => ".".to_string(),
        None => "/".to_string(),
    };
    Ok(PathStat {
        name,
        size: st.size,
        mode: go_mode(st.mode),
        mtime: rfc3339(st.mtime, st.mtime_nsec),
        link_target,
    })
}

/// Unix time as RFC 3339 in UTC, fractional seconds without trailing
/// zeros (Go's `time.RFC3339Nano`).
pub fn rfc3339(sec: i64, nsec: i64) -> String {
    let (y, mo, d) = civil_from_days(sec.div_euclid(86_400));
    let s = sec.rem_euclid(86_400);
    let mut out = format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}",
        s / 3600,
        s / 60 % 60,
        s % 60
    );
    let nsec = nsec.clamp(0, 999_999_999);
    if nsec != 0 {
        let frac = format!("{nsec:09}");
        out.push('.');
        out.push_str(frac.trim_end_matches('0'));
    }
    out.push('Z');
    out
}

/// Days since 1970-01-01 as (year, month, day), proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}
