//! [`pack`]: a tree as a tar stream, walked by descriptor (`openat` with
//! `O_NOFOLLOW` below the top), so a symlink swapped in during the walk
//! is packed as a symlink, never followed.

use std::collections::HashMap;
use std::ffi::CStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use tar::{Builder, EntryType, Header};

use super::fs::{self, Stat};
use super::{check_name, local, ArchiveError, MAX_DEPTH, MAX_PATH};
use crate::text::echo_path;

/// Writes a tar of `src` to `out`, each entry named `name` then the path
/// below `src` (`name` `"."`: a directory's contents, no top entry). See
/// the module documentation for what is kept.
pub fn pack<W: Write>(src: &Path, name: &str, out: W) -> Result<(), ArchiveError> {
    let contents_only = name == ".";
    if !contents_only {
        check_name(name)?;
    }
    let st = fs::lstat(src).map_err(|e| local("stat", src, e, false))?;
    if contents_only && !st.is_dir() {
        return Err(ArchiveError::NotADirectory {
            path: echo_path(src),
        });
    }
    let mut p = Packer {
        b: Builder::new(out),
        links: HashMap::new(),
    };
    let content = match st.kind() {
        libc::S_IFDIR => Content::Dir(fs::open_dir(src).map_err(|e| changed(src, e))?),
        libc::S_IFREG => Content::File(open_file(src, None)?),
        libc::S_IFLNK => {
            let t = std::fs::read_link(src).map_err(|e| changed(src, e))?;
            Content::Symlink(t.into_os_string().into_vec())
        }
        _ => Content::Other,
    };
    let arc = if contents_only {
        None
    } else {
        Some(PathBuf::from(name))
    };
    p.node(st, content, arc, src)?;
    let mut out = p.b.into_inner().map_err(ArchiveError::Write)?;
    out.flush().map_err(ArchiveError::Write)
}

/// What is read of a node besides its `Stat`.
enum Content {
    Dir(OwnedFd),
    File(File),
    Symlink(Vec<u8>),
    Other,
}

struct Packer<W: Write> {
    b: Builder<W>,
    /// The archive path of the first entry of each inode with more than
    /// one link, by (device, inode).
    links: HashMap<(u64, u64), PathBuf>,
}

/// A node that is not what `lstat` said a moment ago: replaced during
/// the walk, or gone.
fn changed(path: &Path, err: io::Error) -> ArchiveError {
    match err.raw_os_error() {
        Some(libc::ELOOP) | Some(libc::ENOTDIR) | Some(libc::ENXIO) => ArchiveError::Changed {
            path: echo_path(path),
        },
        _ => local("open", path, err, false),
    }
}

/// Opens the regular file `path` (or `name` in `dir`) for reading, never
/// through a symlink and never blocking on a FIFO swapped in.
fn open_file(path: &Path, at: Option<(BorrowedFd, &CStr)>) -> Result<File, ArchiveError> {
    let flags = libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY;
    let fd = match at {
        Some((dir, name)) => fs::openat(dir, name, flags, 0),
        None => fs::open_nofollow(path, flags),
    }
    .map_err(|e| changed(path, e))?;
    Ok(File::from(fd))
}

fn header(st: &Stat, kind: EntryType) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(st.mode & 0o7777);
    h.set_uid(u64::from(st.uid));
    h.set_gid(u64::from(st.gid));
    h.set_mtime(st.mtime.max(0) as u64);
    h.set_size(0);
    h
}

/// Reads a file for the builder, keeping its own errors apart from the
/// archive's.
struct Source<'a> {
    inner: &'a mut dyn Read,
    err: &'a mut Option<io::Error>,
}

impl Read for Source<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).map_err(|e| {
            *self.err = Some(e);
            io::Error::other("the file could not be read")
        })
    }
}

impl<W: Write> Packer<W> {
    /// Appends one node (`arc` is its archive path; `None` for the top of
    /// a `"."` pack), and a directory's contents after it.
    fn node(
        &mut self,
        st: Stat,
        content: Content,
        arc: Option<PathBuf>,
        disp: &Path,
    ) -> Result<(), ArchiveError> {
        if let Some(a) = &arc {
            let a = a.as_os_str().as_bytes();
            if a.len() > MAX_PATH {
                return Err(limit(
                    disp,
                    "its path in the archive is longer than 4096 bytes",
                ));
            }
            if a.iter().filter(|&&b| b == b'/').count() >= MAX_DEPTH {
                return Err(limit(disp, "it is nested deeper than 512 directories"));
            }
        }
        let first = match &arc {
            Some(a) if !st.is_dir() && st.nlink > 1 => self
                .links
                .entry((st.dev, st.ino))
                .or_insert_with(|| a.clone())
                .clone(),
            Some(a) => a.clone(),
            None => PathBuf::new(),
        };
        match (content, arc) {
            (Content::Dir(fd), arc) => {
                if fs::fstat(fd.as_fd())
                    .map_err(|e| local("stat", disp, e, false))?
                    .ino
                    != st.ino
                {
                    return Err(ArchiveError::Changed {
                        path: echo_path(disp),
                    });
                }
                if let Some(a) = &arc {
                    let mut h = header(&st, EntryType::Directory);
                    let mut name = a.as_os_str().as_bytes().to_vec();
                    name.push(b'/');
                    self.b
                        .append_data(&mut h, fs::as_path(&name), io::empty())
                        .map_err(ArchiveError::Write)?;
                }
                self.dir(fd, arc.as_deref(), disp)
            }
            (content, Some(a)) if first != a => {
                drop(content);
                let mut h = header(&st, EntryType::Link);
                self.b
                    .append_link(&mut h, &a, &first)
                    .map_err(ArchiveError::Write)
            }
            (Content::File(mut f), Some(a)) => {
                let now = fs::fstat(f.as_fd()).map_err(|e| local("stat", disp, e, false))?;
                if now.kind() != libc::S_IFREG || now.ino != st.ino || now.dev != st.dev {
                    return Err(ArchiveError::Changed {
                        path: echo_path(disp),
                    });
                }
                let mut h = header(&now, EntryType::Regular);
                h.set_size(now.size);
                // Exactly `size` bytes whatever happens to the file
                // meanwhile: a shrunk file is padded with zeros, a grown
                // one cut, so the stream stays well formed.
                let mut data = (&mut f).take(now.size).chain(io::repeat(0)).take(now.size);
                let mut err = None;
                let src = Source {
                    inner: &mut data,
                    err: &mut err,
                };
                let r = self.b.append_data(&mut h, &a, src);
                match (r, err) {
                    (_, Some(e)) => Err(local("read", disp, e, false)),
                    (Err(e), None) => Err(ArchiveError::Write(e)),
                    (Ok(()), None) => Ok(()),
                }
            }
            (Content::Symlink(target), Some(a)) => {
                let mut h = header(&st, EntryType::Symlink);
                self.b
                    .append_link(&mut h, &a, fs::as_path(&target))
                    .map_err(ArchiveError::Write)
            }
            (Content::Other, Some(a)) => {
                let kind = match st.kind() {
                    libc::S_IFIFO => EntryType::Fifo,
                    libc::S_IFCHR => EntryType::Char,
                    libc::S_IFBLK => EntryType::Block,
                    // Sockets (and anything else) have no tar form.
                    _ => return Ok(()),
                };
                let mut h = header(&st, kind);
                if kind != EntryType::Fifo {
                    let (major, minor) = fs::major_minor(st.rdev);
                    h.set_device_major(major).map_err(ArchiveError::Write)?;
                    h.set_device_minor(minor).map_err(ArchiveError::Write)?;
                }
                self.b
                    .append_data(&mut h, &a, io::empty())
                    .map_err(ArchiveError::Write)
            }
            // Only a directory can be the top of a "." pack.
            (_, None) => Ok(()),
        }
    }

    /// Appends the contents of the open directory `dir`.
    fn dir(&mut self, dir: OwnedFd, arc: Option<&Path>, disp: &Path) -> Result<(), ArchiveError> {
        let names = fs::read_dir_names(dir.as_fd()).map_err(|e| local("list", disp, e, false))?;
        for name in names {
            let child_disp = disp.join(fs::as_path(name.to_bytes()));
            let child_arc = match arc {
                Some(a) => a.join(fs::as_path(name.to_bytes())),
                None => PathBuf::from(fs::as_path(name.to_bytes())),
            };
            let st = match fs::lstat_at(dir.as_fd(), &name) {
                Ok(st) => st,
                // Removed since the listing: nothing to pack.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                Err(e) => return Err(local("stat", &child_disp, e, false)),
            };
            let at = Some((dir.as_fd(), name.as_c_str()));
            let content = match st.kind() {
                libc::S_IFDIR => {
                    let flags = libc::O_RDONLY | libc::O_DIRECTORY;
                    let fd = fs::openat(dir.as_fd(), &name, flags, 0)
                        .map_err(|e| changed(&child_disp, e))?;
                    Content::Dir(fd)
                }
                libc::S_IFREG => Content::File(open_file(&child_disp, at)?),
                libc::S_IFLNK => {
                    let t =
                        fs::readlinkat(dir.as_fd(), &name).map_err(|e| changed(&child_disp, e))?;
                    Content::Symlink(t)
                }
                _ => Content::Other,
            };
            self.node(st, content, Some(child_arc), &child_disp)?;
        }
        Ok(())
    }
}

fn limit(path: &Path, why: &'static str) -> ArchiveError {
    ArchiveError::PackLimit {
        path: echo_path(path),
        why,
    }
}
