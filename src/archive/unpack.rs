//! [`unpack`]: a tar stream into a directory, every entry made through
//! descriptors beneath it (see the module documentation for the rules).

use std::cell::Cell;
use std::collections::{BTreeMap, HashSet};
use std::ffi::CString;
use std::fs::File;
use std::hash::{BuildHasher, RandomState};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::rc::Rc;

use serde::{Deserialize, Serialize};
use tar::EntryType;

use super::fs;
use super::{check_name, local, shown, ArchiveError, MAX_DEPTH, MAX_HEADER_EXTENSION, MAX_PATH};

/// How [`unpack`] treats what an archive asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnpackOptions {
    /// Keep owners and the setuid and setgid bits (as `tar
    /// --same-owner`); set it when running as root.
    pub same_owner: bool,
    /// Make character and block device entries; without it they are
    /// skipped (and counted).
    pub devices: bool,
    /// Replace the first path component of every entry (and of every
    /// hard link's target) with this one name.
    pub rename_top: Option<String>,
}

/// What [`unpack`] made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnpackSummary {
    /// Regular files.
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub hard_links: u64,
    /// FIFOs and device nodes.
    pub special: u64,
    /// Bytes of regular files' contents.
    pub bytes: u64,
    /// Entries left out: device nodes without [`UnpackOptions::devices`],
    /// types this does not make (sockets, volume labels, ...).
    pub skipped: u64,
}

/// Unpacks the tar stream `input` into the existing directory `dest`.
pub fn unpack<R: Read>(
    input: R,
    dest: &Path,
    opts: &UnpackOptions,
) -> Result<UnpackSummary, ArchiveError> {
    if let Some(top) = &opts.rename_top {
        check_name(top)?;
    }
    let root = fs::open_dir(dest).map_err(|e| local("open", dest, e, true))?;
    let left = Rc::new(Cell::new(u64::MAX));
    let tripped = Rc::new(Cell::new(false));
    let mut ar = tar::Archive::new(Budget {
        inner: input,
        left: left.clone(),
        tripped: tripped.clone(),
    });
    let mut entries = ar.entries().map_err(ArchiveError::Read)?;
    let mut u = Unpacker {
        root,
        opts,
        summary: UnpackSummary::default(),
        dirs: BTreeMap::new(),
        made: HashSet::new(),
        hasher: RandomState::new(),
        buf: vec![0; 64 * 1024],
    };
    loop {
        // Between entries the tar reader reads headers and their
        // extensions, whose size the archive gives: bound them.
        left.set(MAX_HEADER_EXTENSION + 64 * 1024);
        let next = entries.next();
        left.set(u64::MAX);
        let mut entry = match next {
            None => break,
            Some(Ok(e)) => e,
            Some(Err(_)) if tripped.get() => return Err(ArchiveError::HeaderTooLarge),
            Some(Err(e)) => return Err(ArchiveError::Read(e)),
        };
        let consumed = u.entry(&mut entry)?;
        let rest = io::copy(&mut entry, &mut io::sink()).map_err(ArchiveError::Read)?;
        if consumed + rest != entry.size() {
            return Err(ArchiveError::Read(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "the archive ends in the middle of entry '{}'",
                    shown(&entry.path_bytes())
                ),
            )));
        }
    }
    u.finish_dirs()?;
    Ok(u.summary)
}

/// The input, with a byte budget the caller sets between entries; past
/// it, reads fail and `tripped` is set.
struct Budget<R> {
    inner: R,
    left: Rc<Cell<u64>>,
    tripped: Rc<Cell<bool>>,
}

impl<R: Read> Read for Budget<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.left.get();
        if left == 0 && !buf.is_empty() {
            self.tripped.set(true);
            return Err(io::Error::other("header extensions too large"));
        }
        let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let got = self.inner.read(&mut buf[..n])?;
        self.left.set(left - got as u64);
        Ok(got)
    }
}

/// A directory entry's metadata, applied once everything is unpacked.
#[derive(Clone, Copy)]
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    mtime_nsec: i64,
}

struct Unpacker<'a> {
    root: OwnedFd,
    opts: &'a UnpackOptions,
    summary: UnpackSummary,
    /// Directory entries by path below the root (after `rename_top`).
    dirs: BTreeMap<Vec<u8>, Meta>,
    /// Hashes of the paths of the non-directories made so far: the
    /// targets a hard link may name.
    made: HashSet<u64>,
    hasher: RandomState,
    buf: Vec<u8>,
}

/// The components of an entry path, or why it is refused.
fn components(raw: &[u8]) -> Result<Vec<&[u8]>, &'static str> {
    if raw.contains(&0) {
        return Err("has a NUL byte in its path");
    }
    if raw.len() > MAX_PATH {
        return Err("has a path longer than 4096 bytes");
    }
    if raw.starts_with(b"/") {
        return Err("has an absolute path");
    }
    let mut out = Vec::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("has a '..' component"),
            c => out.push(c),
        }
    }
    if out.len() > MAX_DEPTH {
        return Err("is nested deeper than 512 directories");
    }
    Ok(out)
}

/// `comps` with the first replaced by `top`, if any.
fn renamed<'p>(mut comps: Vec<&'p [u8]>, top: Option<&'p str>) -> Vec<&'p [u8]> {
    if let (Some(top), Some(first)) = (top, comps.first_mut()) {
        *first = top.as_bytes();
    }
    comps
}

fn join(comps: &[&[u8]]) -> Vec<u8> {
    comps.join(&b'/')
}

fn os_err(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

impl Unpacker<'_> {
    fn hash(&self, path: &[u8]) -> u64 {
        self.hasher.hash_one(path)
    }

    /// Opens the directory `comps` beneath the root, making missing ones
    /// when `create`; a symlink or a non-directory on the way is an
    /// error naming `entry`.
    fn open_dir(
        &self,
        comps: &[&[u8]],
        entry: &str,
        create: bool,
    ) -> Result<OwnedFd, ArchiveError> {
        // The usual case, one call: every directory is there.
        let err = match fs::open_beneath(self.root.as_fd(), &join(comps)) {
            Ok(fd) => return Ok(fd),
            Err(e) => e,
        };
        if !matches!(
            os_err(&err),
            libc::ENOENT | libc::ELOOP | libc::ENOTDIR | libc::EXDEV
        ) {
            return Err(entry_err("open the directory of", entry, err));
        }
        // One component at a time, to make what is missing and to name
        // what is in the way.
        let mut cur = fs::dup(self.root.as_fd()).map_err(|e| entry_err("open", entry, e))?;
        for (i, c) in comps.iter().enumerate() {
            let name = fs::cstr(c).map_err(|e| entry_err("open", entry, e))?;
            let flags = libc::O_RDONLY | libc::O_DIRECTORY;
            let mut r = fs::openat(cur.as_fd(), &name, flags, 0);
            if create && r.as_ref().is_err_and(|e| os_err(e) == libc::ENOENT) {
                match fs::mkdirat(cur.as_fd(), &name, 0o755) {
                    Ok(()) => {}
                    Err(e) if os_err(&e) == libc::EEXIST => {}
                    Err(e) => return Err(entry_err("make a directory for", entry, e)),
                }
                r = fs::openat(cur.as_fd(), &name, flags, 0);
            }
            cur = match r {
                Ok(fd) => fd,
                Err(e) if matches!(os_err(&e), libc::ELOOP | libc::ENOTDIR) => {
                    let here = shown(&join(&comps[..=i]));
                    let link =
                        fs::lstat_at(cur.as_fd(), &name).is_ok_and(|st| st.kind() == libc::S_IFLNK);
                    return Err(if link {
                        ArchiveError::ThroughSymlink {
                            entry: entry.to_string(),
                            link: here,
                        }
                    } else {
                        ArchiveError::ParentNotDir {
                            entry: entry.to_string(),
                            parent: here,
                        }
                    });
                }
                Err(e) => return Err(entry_err("open the directory of", entry, e)),
            };
        }
        Ok(cur)
    }

    /// Unpacks one entry; returns how many bytes of its data it read.
    fn entry<R: Read>(&mut self, e: &mut tar::Entry<R>) -> Result<u64, ArchiveError> {
        let raw = e.path_bytes().into_owned();
        let name = shown(&raw);
        let mut kind = e.header().entry_type();
        if kind.is_pax_global_extensions() {
            return Ok(0);
        }
        // Old archives mark a directory with a trailing slash only.
        if kind == EntryType::Regular && raw.ends_with(b"/") {
            kind = EntryType::Directory;
        }
        let comps = components(&raw).map_err(|why| ArchiveError::Unsafe {
            entry: name.clone(),
            why,
        })?;
        let opts = self.opts;
        let comps = renamed(comps, opts.rename_top.as_deref());
        let Some((last, parents)) = comps.split_last() else {
            // "." or "./": the destination itself, left as it is.
            if kind == EntryType::Directory {
                return Ok(0);
            }
            return Err(ArchiveError::Unsafe {
                entry: name,
                why: "would replace the destination directory",
            });
        };
        let made = match kind {
            EntryType::Regular
            | EntryType::Continuous
            | EntryType::GNUSparse
            | EntryType::Directory
            | EntryType::Symlink
            | EntryType::Link
            | EntryType::Fifo => true,
            EntryType::Char | EntryType::Block => self.opts.devices,
            _ => false,
        };
        if !made {
            self.summary.skipped += 1;
            return Ok(0);
        }
        let meta = self.meta(e, &name)?;
        let path = join(&comps);

        // A hard link's target, found before anything at the entry's
        // path is removed (a link to itself is already there).
        let link = if kind == EntryType::Link {
            let target = self.link_target(e, &name, &comps)?;
            if target.is_none() {
                self.summary.hard_links += 1;
                return Ok(0);
            }
            target
        } else {
            None
        };

        // The rest of what the header says, checked before anything at
        // the entry's path is touched.
        let symlink_target = if kind == EntryType::Symlink {
            match e.link_name_bytes() {
                Some(t) if !t.is_empty() => Some(
                    fs::cstr(&t)
                        .map_err(|_| bad_header(&name, "its symlink target has a NUL byte"))?,
                ),
                _ => return Err(bad_header(&name, "it is a symlink without a target")),
            }
        } else {
            None
        };
        let dev = match kind {
            EntryType::Char | EntryType::Block => self.device(e, &name)?,
            _ => 0,
        };

        let parent = self.open_dir(parents, &name, true)?;
        let p = parent.as_fd();
        let leaf = fs::cstr(last).map_err(|err| entry_err("unpack", &name, err))?;
        let existing = match fs::lstat_at(p, &leaf) {
            Ok(st) => Some(st),
            Err(err) if os_err(&err) == libc::ENOENT => None,
            Err(err) => return Err(entry_err("stat", &name, err)),
        };
        if kind == EntryType::Directory {
            match existing {
                Some(st) if st.is_dir() => {}
                Some(_) => return Err(ArchiveError::DirOverNonDir { entry: name }),
                None => fs::mkdirat(p, &leaf, 0o700)
                    .map_err(|err| entry_err("make the directory", &name, err))?,
            }
            self.dirs.insert(path, meta);
            self.summary.dirs += 1;
            return Ok(0);
        }
        match existing {
            Some(st) if st.is_dir() => return Err(ArchiveError::NonDirOverDir { entry: name }),
            Some(_) => fs::unlinkat(p, &leaf, 0).map_err(|err| entry_err("replace", &name, err))?,
            None => {}
        }
        let mut consumed = 0;
        match kind {
            EntryType::Symlink => {
                let target = symlink_target.as_deref().unwrap_or_default();
                fs::symlinkat(target, p, &leaf)
                    .map_err(|err| entry_err("make the symlink", &name, err))?;
                self.leaf_meta(p, &leaf, &name, meta, false)?;
                self.summary.symlinks += 1;
            }
            EntryType::Link => {
                if let Some((tdir, tleaf)) = &link {
                    fs::linkat(tdir.as_fd(), tleaf, p, &leaf)
                        .map_err(|err| entry_err("make the hard link", &name, err))?;
                }
                self.summary.hard_links += 1;
            }
            EntryType::Fifo => {
                fs::mknodat(p, &leaf, libc::S_IFIFO | 0o600, 0)
                    .map_err(|err| entry_err("make the FIFO", &name, err))?;
                // Opening a FIFO to read, without blocking, gives a
                // descriptor to set its metadata through.
                let flags = libc::O_RDONLY | libc::O_NONBLOCK;
                let fd =
                    fs::openat(p, &leaf, flags, 0).map_err(|err| entry_err("open", &name, err))?;
                self.fd_meta(fd.as_fd(), &name, meta)?;
                self.summary.special += 1;
            }
            EntryType::Char | EntryType::Block => {
                let kind_bits = if kind == EntryType::Char {
                    libc::S_IFCHR
                } else {
                    libc::S_IFBLK
                };
                fs::mknodat(p, &leaf, kind_bits | 0o600, dev)
                    .map_err(|err| entry_err("make the device node", &name, err))?;
                self.leaf_meta(p, &leaf, &name, meta, true)?;
                self.summary.special += 1;
            }
            _ => {
                let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL;
                let fd = fs::openat(p, &leaf, flags, 0o600)
                    .map_err(|err| entry_err("create", &name, err))?;
                let mut f = File::from(fd);
                let sparse = kind == EntryType::GNUSparse;
                consumed = self.copy(e, &mut f, sparse, &name)?;
                self.fd_meta(f.as_fd(), &name, meta)?;
                self.summary.files += 1;
                self.summary.bytes += consumed;
            }
        }
        self.made.insert(self.hash(&path));
        Ok(consumed)
    }

    /// The entry's metadata, from its header and PAX records.
    fn meta<R: Read>(&self, e: &mut tar::Entry<R>, name: &str) -> Result<Meta, ArchiveError> {
        let h = e.header();
        let num = |r: io::Result<u64>, what: &str| -> Result<u32, ArchiveError> {
            let v = r.map_err(|_| bad_header(name, &format!("its {what} field is malformed")))?;
            u32::try_from(v)
                .ok()
                .filter(|&v| v != u32::MAX)
                .ok_or_else(|| bad_header(name, &format!("its {what} {v} is out of range")))
        };
        let mode = h
            .mode()
            .map_err(|_| bad_header(name, "its mode field is malformed"))?;
        let (uid, gid) = if self.opts.same_owner {
            (num(h.uid(), "uid")?, num(h.gid(), "gid")?)
        } else {
            (0, 0)
        };
        let mut mtime = i64::try_from(h.mtime().unwrap_or(0)).unwrap_or(i64::MAX);
        let mut mtime_nsec = 0;
        if let Ok(Some(pax)) = e.pax_extensions() {
            for ext in pax.flatten() {
                if ext.key_bytes() == b"mtime" {
                    if let Some((s, ns)) = pax_time(ext.value_bytes()) {
                        (mtime, mtime_nsec) = (s, ns);
                    }
                }
            }
        }
        let keep = if self.opts.same_owner { 0o7777 } else { 0o1777 };
        Ok(Meta {
            mode: mode & keep,
            uid,
            gid,
            mtime,
            mtime_nsec,
        })
    }

    /// The directory and name of a hard link's target, or `None` when it
    /// is the entry itself.
    fn link_target<R: Read>(
        &self,
        e: &tar::Entry<R>,
        name: &str,
        comps: &[&[u8]],
    ) -> Result<Option<(OwnedFd, CString)>, ArchiveError> {
        let raw = e
            .link_name_bytes()
            .ok_or_else(|| bad_header(name, "it is a hard link without a target"))?
            .into_owned();
        let bad = |why| ArchiveError::BadLink {
            entry: name.to_string(),
            target: shown(&raw),
            why,
        };
        let tcomps = components(&raw).map_err(|why| {
            bad(match why {
                "has an absolute path" => "an absolute path",
                "has a '..' component" => "a path with a '..' component",
                _ => "a path that is not allowed",
            })
        })?;
        let tcomps = renamed(tcomps, self.opts.rename_top.as_deref());
        let Some((tlast, tparents)) = tcomps.split_last() else {
            return Err(bad("the destination directory"));
        };
        if tcomps == comps {
            return Ok(None);
        }
        if !self.made.contains(&self.hash(&join(&tcomps))) {
            return Err(bad("which is not an earlier file of the archive"));
        }
        let dir = self.open_dir(tparents, name, false)?;
        let leaf = fs::cstr(tlast).map_err(|err| entry_err("link", name, err))?;
        Ok(Some((dir, leaf)))
    }

    fn device<R: Read>(&self, e: &tar::Entry<R>, name: &str) -> Result<u64, ArchiveError> {
        let h = e.header();
        match (h.device_major(), h.device_minor()) {
            (Ok(Some(major)), Ok(Some(minor))) => Ok(fs::makedev(major, minor)),
            _ => Err(bad_header(
                name,
                "its device numbers are missing or malformed",
            )),
        }
    }

    /// Copies the entry's data into `f`; a sparse entry's runs of zeros
    /// become holes. Returns the bytes copied, which must be all of them.
    fn copy<R: Read>(
        &mut self,
        e: &mut tar::Entry<R>,
        f: &mut File,
        sparse: bool,
        name: &str,
    ) -> Result<u64, ArchiveError> {
        let size = e.size();
        let mut done = 0u64;
        let mut hole = false;
        loop {
            let n = match e.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(ArchiveError::Read(err)),
            };
            let chunk = &self.buf[..n];
            let w = if sparse && chunk.iter().all(|&b| b == 0) {
                hole = true;
                f.seek(SeekFrom::Current(n as i64)).map(drop)
            } else {
                f.write_all(chunk)
            };
            w.map_err(|err| entry_err("write", name, err))?;
            done += n as u64;
        }
        if hole {
            f.set_len(done)
                .map_err(|err| entry_err("write", name, err))?;
        }
        if done != size {
            return Err(ArchiveError::Read(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the archive ends in the middle of entry '{name}'"),
            )));
        }
        Ok(done)
    }

    /// Owner, mode and times through a descriptor (files, FIFOs,
    /// directories); the owner first, as chown clears setuid.
    fn fd_meta(&self, fd: BorrowedFd, name: &str, m: Meta) -> Result<(), ArchiveError> {
        if self.opts.same_owner {
            fs::fchown(fd, m.uid, m.gid).map_err(|e| entry_err("set the owner of", name, e))?;
        }
        fs::fchmod(fd, m.mode).map_err(|e| entry_err("set the mode of", name, e))?;
        fs::futimens(fd, m.mtime, m.mtime_nsec).map_err(|e| entry_err("set the times of", name, e))
    }

    /// Owner, mode (`chmod`) and times of `dir/leaf` itself, never
    /// through a symlink (symlinks have no mode of their own).
    fn leaf_meta(
        &self,
        dir: BorrowedFd,
        leaf: &CString,
        name: &str,
        m: Meta,
        chmod: bool,
    ) -> Result<(), ArchiveError> {
        if self.opts.same_owner {
            fs::lchownat(dir, leaf, m.uid, m.gid)
                .map_err(|e| entry_err("set the owner of", name, e))?;
        }
        if chmod {
            fs::chmodat_nofollow(dir, leaf, m.mode)
                .map_err(|e| entry_err("set the mode of", name, e))?;
        }
        fs::lutimensat(dir, leaf, m.mtime, m.mtime_nsec)
            .map_err(|e| entry_err("set the times of", name, e))
    }

    /// Applies directory entries' metadata, deepest first (a path sorts
    /// after its parent's), so a read-only directory is filled before it
    /// becomes read-only and its mtime is not changed after it is set.
    fn finish_dirs(&mut self) -> Result<(), ArchiveError> {
        let dirs = std::mem::take(&mut self.dirs);
        for (path, meta) in dirs.into_iter().rev() {
            let name = shown(&path);
            let comps: Vec<&[u8]> = path.split(|&b| b == b'/').collect();
            let fd = self.open_dir(&comps, &name, false)?;
            self.fd_meta(fd.as_fd(), &name, meta)?;
        }
        Ok(())
    }
}

/// A PAX time, `SECONDS[.FRACTION]`.
fn pax_time(v: &[u8]) -> Option<(i64, i64)> {
    let s = std::str::from_utf8(v).ok()?;
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    let sec: i64 = whole.parse().ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
    let nsec: i64 = digits.parse().ok()?;
    // A negative time's fraction counts back from its seconds.
    if whole.starts_with('-') && nsec > 0 {
        return Some((sec - 1, 1_000_000_000 - nsec));
    }
    Some((sec, nsec))
}

fn entry_err(op: &'static str, entry: &str, err: io::Error) -> ArchiveError {
    ArchiveError::Entry {
        op,
        entry: entry.to_string(),
        err,
    }
}

fn bad_header(entry: &str, why: &str) -> ArchiveError {
    ArchiveError::BadHeader {
        entry: entry.to_string(),
        why: why.to_string(),
    }
}
