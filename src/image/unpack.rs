//! Applies image layers to a directory, in order, with OCI whiteouts:
//! `.wh.NAME` deletes NAME from lower layers, `.wh..wh..opq` empties its
//! directory of lower-layer content. Hard links, symlinks, modes,
//! ownership, device nodes, FIFOs, mtimes and xattrs are kept.
//!
//! Nothing a layer says can write outside the root: entry paths with `..`
//! are refused, and every directory on the way to an entry is resolved
//! inside the root, with symlinks followed as the guest would see them
//! (an absolute target means the root, `..` stops at the root).

use std::collections::HashSet;
use std::ffi::CString;
use std::fs::{self, OpenOptions};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use tar::EntryType;

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("layer I/O on {path}: {err}")]
    Io { path: String, err: io::Error },
    #[error("cannot read the layer: {0}")]
    Read(io::Error),
    #[error("tar entry {0:?} would escape the root filesystem")]
    Escape(String),
    #[error("tar entry {entry:?} links to {target:?}, which does not exist in the image")]
    BadLink { entry: String, target: String },
    #[error("tar entry {entry:?} resolves through too many symlinks")]
    SymlinkLoop { entry: String },
    #[error("the image unpacks to more than the {limit}-byte limit")]
    TooLarge { limit: u64 },
}

type Result<T> = std::result::Result<T, UnpackError>;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> UnpackError + '_ {
    move |err| UnpackError::Io {
        path: path.display().to_string(),
        err,
    }
}

/// Wraps a layer blob in the decompressor its magic bytes call for:
/// gzip, zstd, or none.
pub fn decompress<'a>(reader: impl Read + 'a) -> io::Result<Box<dyn Read + 'a>> {
    let mut r = BufReader::with_capacity(256 * 1024, reader);
    let head = r.fill_buf()?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::bufread::MultiGzDecoder::new(r)))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Ok(Box::new(zstd::stream::read::Decoder::with_buffer(r)?))
    } else {
        Ok(Box::new(r))
    }
}

/// Totals over everything unpacked, to size the filesystem.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UnpackStats {
    /// Inodes created.
    pub entries: u64,
    /// File data, each file rounded up to 4 KiB blocks.
    pub bytes: u64,
}

/// Applies layers to one root directory.
pub struct Unpacker {
    root: PathBuf,
    stats: UnpackStats,
    /// Whether ownership and device nodes can be set (we are root).
    privileged: bool,
    warnings: Vec<String>,
    /// Most file data the layers may unpack to, against decompression
    /// bombs.
    limit: u64,
}

/// The default cap on unpacked file data.
pub const DEFAULT_UNPACK_LIMIT: u64 = 64 << 30;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";
const MAX_SYMLINK_HOPS: usize = 40;

/// The path inside the image: relative, without `.`, refusing `..`.
fn clean(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

fn c_path(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Removes whatever is at `p` (file, symlink or whole directory).
fn remove_any(p: &Path) -> io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Resolves `rel` inside `root`, following every symlink on the way (the
/// last component too) the way the guest will see it: absolute targets
/// start again at `root`, and `..` stops there. `entry` names the path in
/// errors.
pub fn resolve_in_root(root: &Path, rel: &Path, entry: &str) -> Result<PathBuf> {
    let mut done = PathBuf::new();
    let mut todo: Vec<PathBuf> = rel
        .components()
        .rev()
        .map(|c| PathBuf::from(c.as_os_str()))
        .collect();
    let mut hops = 0;
    while let Some(part) = todo.pop() {
        match part.components().next() {
            None | Some(Component::CurDir) => {}
            Some(Component::RootDir) => done.clear(),
            Some(Component::ParentDir) => {
                done.pop();
            }
            Some(Component::Normal(name)) => {
                let candidate = root.join(&done).join(name);
                match fs::symlink_metadata(&candidate) {
                    Ok(m) if m.file_type().is_symlink() => {
                        hops += 1;
                        if hops > MAX_SYMLINK_HOPS {
                            return Err(UnpackError::SymlinkLoop {
                                entry: entry.into(),
                            });
                        }
                        let target = fs::read_link(&candidate).map_err(io_err(&candidate))?;
                        if target.is_absolute() {
                            done.clear();
                        }
                        todo.extend(
                            target
                                .components()
                                .rev()
                                .map(|c| PathBuf::from(c.as_os_str())),
                        );
                    }
                    _ => done.push(name),
                }
            }
            Some(Component::Prefix(_)) => return Err(UnpackError::Escape(entry.into())),
        }
    }
    Ok(root.join(done))
}

impl Unpacker {
    /// Unpacks into `root`, which must exist and be empty.
    pub fn new(root: &Path) -> Unpacker {
        Unpacker {
            root: root.to_path_buf(),
            stats: UnpackStats::default(),
            // SAFETY: geteuid has no preconditions.
            privileged: unsafe { libc::geteuid() } == 0,
            warnings: Vec::new(),
            limit: DEFAULT_UNPACK_LIMIT,
        }
    }

    /// Caps the file data all layers together may unpack to.
    pub fn with_limit(mut self, bytes: u64) -> Unpacker {
        self.limit = bytes;
        self
    }

    pub fn stats(&self) -> UnpackStats {
        self.stats
    }

    /// Things that could not be reproduced (say, device nodes without
    /// privilege).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    fn resolve(&self, rel: &Path, entry: &str) -> Result<PathBuf> {
        resolve_in_root(&self.root, rel, entry)
    }

    /// Applies one layer (compressed or not).
    pub fn apply(&mut self, layer: impl Read) -> Result<()> {
        let reader = decompress(layer).map_err(UnpackError::Read)?;
        let mut archive = tar::Archive::new(reader);
        let mut created: HashSet<PathBuf> = HashSet::new();
        for entry in archive.entries().map_err(UnpackError::Read)? {
            let mut entry = entry.map_err(UnpackError::Read)?;
            self.apply_entry(&mut entry, &mut created)?;
        }
        Ok(())
    }

    fn apply_entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<R>,
        created: &mut HashSet<PathBuf>,
    ) -> Result<()> {
        let raw = entry.path().map_err(UnpackError::Read)?.into_owned();
        let shown = raw.display().to_string();
        let rel = clean(&raw).ok_or_else(|| UnpackError::Escape(shown.clone()))?;
        let kind = entry.header().entry_type();
        let Some(name) = rel.file_name().map(|n| n.to_owned()) else {
            // The root itself ("./"): only its metadata matters.
            if kind == EntryType::Directory {
                let root = self.root.clone();
                self.set_metadata(entry, &root)?;
            }
            return Ok(());
        };
        let parent_rel = rel.parent().unwrap_or(Path::new(""));
        let parent = self.resolve(parent_rel, &shown)?;
        fs::create_dir_all(&parent).map_err(io_err(&parent))?;
        let name_str = name.to_string_lossy();

        if name_str == OPAQUE_WHITEOUT {
            for child in fs::read_dir(&parent).map_err(io_err(&parent))? {
                let child = child.map_err(io_err(&parent))?.path();
                if !created.contains(&child) {
                    remove_any(&child).map_err(io_err(&child))?;
                }
            }
            return Ok(());
        }
        if let Some(hidden) = name_str.strip_prefix(WHITEOUT_PREFIX) {
            // `.wh..` would name the parent itself, `.wh...` its parent.
            if hidden.is_empty() || hidden == "." || hidden == ".." {
                return Err(UnpackError::Escape(shown));
            }
            let victim = parent.join(hidden);
            remove_any(&victim).map_err(io_err(&victim))?;
            return Ok(());
        }

        let target = parent.join(&name);
        let existing = fs::symlink_metadata(&target).ok();
        let keep_dir =
            kind == EntryType::Directory && existing.as_ref().is_some_and(|m| m.is_dir());
        if existing.is_some() && !keep_dir {
            remove_any(&target).map_err(io_err(&target))?;
        }
        let mode = entry.header().mode().unwrap_or(0o644) & 0o7777;
        match kind {
            EntryType::Directory => {
                if !keep_dir {
                    fs::create_dir(&target).map_err(io_err(&target))?;
                }
            }
            EntryType::Regular | EntryType::Continuous => {
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .mode(0o600)
                    .open(&target)
                    .map_err(io_err(&target))?;
                let want = entry.header().size().unwrap_or(0);
                let room = self.limit.saturating_sub(self.stats.bytes);
                if want > room {
                    return Err(UnpackError::TooLarge { limit: self.limit });
                }
                let n = io::copy(&mut entry.take(want), &mut f).map_err(UnpackError::Read)?;
                if n != want {
                    return Err(UnpackError::Read(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("{shown}: {n} of {want} bytes; the layer is truncated"),
                    )));
                }
                self.stats.bytes += n.div_ceil(4096) * 4096;
            }
            EntryType::Symlink => {
                let link = entry
                    .link_name()
                    .map_err(UnpackError::Read)?
                    .ok_or_else(|| UnpackError::BadLink {
                        entry: shown.clone(),
                        target: String::new(),
                    })?;
                symlink(&link, &target).map_err(io_err(&target))?;
            }
            EntryType::Link => {
                let link = entry
                    .link_name()
                    .map_err(UnpackError::Read)?
                    .map(|l| l.into_owned())
                    .unwrap_or_default();
                let bad = || UnpackError::BadLink {
                    entry: shown.clone(),
                    target: link.display().to_string(),
                };
                let link_rel = clean(&link).ok_or_else(|| UnpackError::Escape(shown.clone()))?;
                let link_name = link_rel.file_name().ok_or_else(bad)?;
                let source = self
                    .resolve(link_rel.parent().unwrap_or(Path::new("")), &shown)?
                    .join(link_name);
                match fs::symlink_metadata(&source) {
                    Ok(m) if !m.is_dir() => {}
                    _ => return Err(bad()),
                }
                fs::hard_link(&source, &target).map_err(io_err(&target))?;
                created.insert(target);
                self.stats.entries += 1;
                // A hard link shares the source's metadata.
                return Ok(());
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let file_type = match kind {
                    EntryType::Char => libc::S_IFCHR,
                    EntryType::Block => libc::S_IFBLK,
                    _ => libc::S_IFIFO,
                };
                let major = entry.header().device_major().ok().flatten().unwrap_or(0);
                let minor = entry.header().device_minor().ok().flatten().unwrap_or(0);
                let dev = libc::makedev(major, minor);
                let p = c_path(&target).map_err(io_err(&target))?;
                // SAFETY: `p` is a valid NUL-terminated path for the call.
                let r = check(unsafe { libc::mknod(p.as_ptr(), file_type | 0o600, dev) });
                if let Err(e) = r {
                    if kind != EntryType::Fifo && !self.privileged {
                        self.warnings
                            .push(format!("skipped device node {shown}: {e}"));
                        return Ok(());
                    }
                    return Err(io_err(&target)(e));
                }
            }
            // Global PAX headers and the like carry nothing to create.
            _ => return Ok(()),
        }
        created.insert(target.clone());
        self.stats.entries += 1;
        self.set_metadata(entry, &target)?;
        if kind != EntryType::Symlink {
            fs::set_permissions(&target, fs::Permissions::from_mode(mode))
                .map_err(io_err(&target))?;
        }
        Ok(())
    }

    /// Ownership, xattrs and mtime (mode is set by the caller, after
    /// ownership, which would clear set-id bits).
    fn set_metadata<R: Read>(&mut self, entry: &mut tar::Entry<R>, target: &Path) -> Result<()> {
        let p = c_path(target).map_err(io_err(target))?;
        let uid = entry.header().uid().unwrap_or(0) as libc::uid_t;
        let gid = entry.header().gid().unwrap_or(0) as libc::gid_t;
        // SAFETY: `p` is a valid NUL-terminated path.
        if let Err(e) = check(unsafe { libc::lchown(p.as_ptr(), uid, gid) }) {
            if self.privileged {
                return Err(io_err(target)(e));
            }
        }
        if let Ok(Some(exts)) = entry.pax_extensions() {
            for ext in exts.flatten() {
                let Some(name) = ext.key().ok().and_then(|k| k.strip_prefix("SCHILY.xattr."))
                else {
                    continue;
                };
                let (Ok(cname), value) = (CString::new(name), ext.value_bytes()) else {
                    continue;
                };
                // SAFETY: all pointers are valid for the lengths passed.
                let r = unsafe {
                    libc::lsetxattr(
                        p.as_ptr(),
                        cname.as_ptr(),
                        value.as_ptr().cast(),
                        value.len(),
                        0,
                    )
                };
                if let Err(e) = check(r) {
                    self.warnings
                        .push(format!("xattr {name} on {}: {e}", target.display()));
                }
            }
        }
        let mtime = entry.header().mtime().unwrap_or(0) as libc::time_t;
        let times = [
            libc::timespec {
                tv_sec: mtime,
                tv_nsec: 0,
            },
            libc::timespec {
                tv_sec: mtime,
                tv_nsec: 0,
            },
        ];
        // SAFETY: `p` and `times` are valid for the call.
        let _ = unsafe {
            libc::utimensat(
                libc::AT_FDCWD,
                p.as_ptr(),
                times.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn scratch() -> PathBuf {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let d = std::env::temp_dir().join(format!(
            "husk-unpack-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&d).unwrap();
        d
    }

    /// A layer builder: (path, kind, data or link target).
    fn layer(entries: &[(&str, EntryType, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(if *kind == EntryType::Directory {
                0o755
            } else {
                0o644
            });
            h.set_uid(1000);
            h.set_gid(1001);
            h.set_mtime(1_700_000_000);
            match kind {
                EntryType::Symlink | EntryType::Link => {
                    h.set_size(0);
                    b.append_link(&mut h, path, std::str::from_utf8(data).unwrap())
                        .unwrap();
                }
                _ => {
                    h.set_size(data.len() as u64);
                    // Bypass the builder's own path checks to write hostile names.
                    let name = path.as_bytes();
                    h.as_old_mut().name[..name.len()].copy_from_slice(name);
                    h.set_cksum();
                    b.append(&h, *data).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    use EntryType::{Directory as D, Link as H, Regular as F, Symlink as S};

    #[test]
    fn files_links_and_metadata() {
        let root = scratch();
        let mut u = Unpacker::new(&root);
        u.apply(
            &layer(&[
                ("etc/", D, b""),
                ("etc/hosts", F, b"127.0.0.1 localhost\n"),
                ("etc/hosts.link", H, b"etc/hosts"),
                ("bin", S, b"usr/bin"),
                ("usr/bin/", D, b""),
                ("bin/sh", F, b"#!"),
            ])[..],
        )
        .unwrap();
        assert_eq!(
            fs::read(root.join("etc/hosts")).unwrap(),
            b"127.0.0.1 localhost\n"
        );
        let a = fs::metadata(root.join("etc/hosts")).unwrap();
        let b = fs::metadata(root.join("etc/hosts.link")).unwrap();
        assert_eq!(a.ino(), b.ino(), "hard link");
        assert_eq!(
            fs::read_link(root.join("bin")).unwrap(),
            Path::new("usr/bin")
        );
        // Written through the symlink, inside the root.
        assert_eq!(fs::read(root.join("usr/bin/sh")).unwrap(), b"#!");
        if u.privileged {
            assert_eq!((a.uid(), a.gid()), (1000, 1001));
        }
        assert_eq!(a.mode() & 0o7777, 0o644);
        assert_eq!(a.mtime(), 1_700_000_000);
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn whiteouts_and_opaque_directories() {
        let root = scratch();
        let mut u = Unpacker::new(&root);
        u.apply(
            &layer(&[
                ("a/", D, b""),
                ("a/keep", F, b"1"),
                ("a/gone", F, b"2"),
                ("o/", D, b""),
                ("o/lower1", F, b"3"),
                ("o/sub/", D, b""),
                ("o/sub/lower2", F, b"4"),
            ])[..],
        )
        .unwrap();
        u.apply(
            &layer(&[
                ("a/.wh.gone", F, b""),
                ("o/", D, b""),
                ("o/.wh..wh..opq", F, b""),
                ("o/upper", F, b"5"),
            ])[..],
        )
        .unwrap();
        assert!(root.join("a/keep").exists());
        assert!(!root.join("a/gone").exists());
        assert!(!root.join("a/.wh.gone").exists());
        assert!(!root.join("o/lower1").exists());
        assert!(!root.join("o/sub").exists());
        assert!(!root.join("o/.wh..wh..opq").exists());
        assert_eq!(fs::read(root.join("o/upper")).unwrap(), b"5");
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn hostile_paths_never_leave_the_root() {
        let outside = scratch();
        let root = scratch();
        // `..` in a name is refused.
        let e = Unpacker::new(&root)
            .apply(&layer(&[("../escaped", F, b"x")])[..])
            .unwrap_err();
        assert!(matches!(e, UnpackError::Escape(_)), "{e}");
        // A symlink pointing outside is followed inside the root instead.
        let out = outside.display().to_string();
        let mut u = Unpacker::new(&root);
        u.apply(
            &layer(&[
                ("evil", S, out.as_bytes()),
                ("evil/pwned", F, b"x"),
                ("up", S, b"../../../../.."),
                ("up/pwned2", F, b"y"),
            ])[..],
        )
        .unwrap();
        assert_eq!(
            fs::read_dir(&outside).unwrap().count(),
            0,
            "nothing written outside"
        );
        assert!(root
            .join(out.trim_start_matches('/'))
            .join("pwned")
            .exists());
        assert!(root.join("pwned2").exists());
        // A hard link to a file outside the root is refused.
        let e = Unpacker::new(&root)
            .apply(&layer(&[("steal", H, b"/etc/passwd")])[..])
            .unwrap_err();
        assert!(matches!(e, UnpackError::BadLink { .. }), "{e}");
        // Whiteouts cannot name a directory above themselves.
        let keep = outside.join("keep");
        fs::write(&keep, b"k").unwrap();
        for name in ["x/.wh..", "x/.wh...", ".wh..."] {
            let e = Unpacker::new(&root)
                .apply(&layer(&[("x/", D, b""), (name, F, b"")])[..])
                .unwrap_err();
            assert!(matches!(e, UnpackError::Escape(_)), "{name}: {e}");
        }
        assert!(keep.exists());
        assert!(root.exists());
        fs::remove_file(&keep).unwrap();
        // Symlink loops end.
        let e = Unpacker::new(&root)
            .apply(&layer(&[("l1", S, b"l2"), ("l2", S, b"l1"), ("l1/x", F, b"")])[..])
            .unwrap_err();
        assert!(matches!(e, UnpackError::SymlinkLoop { .. }), "{e}");
        fs::remove_dir_all(root).unwrap();
        fs::remove_dir_all(outside).unwrap();
    }

    #[test]
    fn compressed_layers() {
        use std::io::Write;
        let plain = layer(&[("f", F, b"data")]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&plain).unwrap();
        let gz = gz.finish().unwrap();
        let zst = zstd::encode_all(&plain[..], 1).unwrap();
        for blob in [plain.clone(), gz, zst] {
            let root = scratch();
            Unpacker::new(&root).apply(&blob[..]).unwrap();
            assert_eq!(fs::read(root.join("f")).unwrap(), b"data");
            fs::remove_dir_all(root).unwrap();
        }
    }

    #[test]
    fn the_unpack_limit_holds() {
        let root = scratch();
        let blob = layer(&[("a", F, &[1u8; 5000]), ("b", F, &[2u8; 5000])]);
        let e = Unpacker::new(&root)
            .with_limit(6000)
            .apply(&blob[..])
            .unwrap_err();
        assert!(matches!(e, UnpackError::TooLarge { limit: 6000 }), "{e}");
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn truncated_layers_fail() {
        let mut blob = layer(&[("f", F, &[7u8; 10000])]);
        blob.truncate(3000);
        let root = scratch();
        assert!(Unpacker::new(&root).apply(&blob[..]).is_err());
        fs::remove_dir_all(root).unwrap();
    }
}
