//! [`resolve_in_root`]: a path inside a root, symlinks resolved as if the
//! root were `/`.

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use super::fs;
use super::{local, ArchiveError, MAX_PATH, MAX_SYMLINKS};
use crate::text::echo;

/// The path that `path` names inside `root`, with every symlink on the
/// way resolved as if `root` were `/`: an absolute target starts again
/// at `root`, and `..` stops there. The last component is followed when
/// `follow_last` is set or `path` ends in `/` or `/.`. Components that
/// do not exist (yet) are kept as they are written, so the path of a
/// file about to be made resolves too.
///
/// The result starts with `root` made canonical, and never leaves it
/// unless the tree changes while it is being resolved; it is a path, so
/// whoever opens it must still not trust it more than that (as
/// [`super::unpack`] does with `O_NOFOLLOW`). More than 40 symlinks is an
/// error.
pub fn resolve_in_root(
    root: &Path,
    path: &str,
    follow_last: bool,
) -> Result<PathBuf, ArchiveError> {
    let invalid = |why| ArchiveError::InvalidPath {
        path: echo(path).into_owned(),
        why,
    };
    if path.contains('\0') {
        return Err(invalid("it contains a NUL byte"));
    }
    if path.len() > MAX_PATH {
        return Err(invalid("it is longer than 4096 bytes"));
    }
    let root = std::fs::canonicalize(root).map_err(|e| local("resolve", root, e, true))?;
    let follow_last = follow_last || path.ends_with('/') || path.ends_with("/.") || path == ".";
    let mut pending: VecDeque<Vec<u8>> = split(path.as_bytes()).collect();
    let mut done: Vec<Vec<u8>> = Vec::new();
    let mut links = 0;
    while let Some(c) = pending.pop_front() {
        if c == b".." {
            done.pop();
            continue;
        }
        let here = join(&root, &done).join(OsStr::from_bytes(&c));
        let last = pending.is_empty();
        let is_link = fs::lstat(&here).is_ok_and(|st| st.kind() == libc::S_IFLNK);
        if !is_link || (last && !follow_last) {
            done.push(c);
            continue;
        }
        links += 1;
        if links > MAX_SYMLINKS {
            return Err(ArchiveError::SymlinkLoop {
                path: echo(path).into_owned(),
            });
        }
        let target = std::fs::read_link(&here)
            .map_err(|e| local("read the link", &here, e, false))?
            .into_os_string()
            .into_vec();
        if target.starts_with(b"/") {
            done.clear();
        }
        for t in split(&target).collect::<Vec<_>>().into_iter().rev() {
            pending.push_front(t);
        }
    }
    Ok(join(&root, &done))
}

/// The components of `p`, without empty ones and `.`.
fn split(p: &[u8]) -> impl Iterator<Item = Vec<u8>> + '_ {
    p.split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .map(<[u8]>::to_vec)
}

fn join(root: &Path, comps: &[Vec<u8>]) -> PathBuf {
    let mut p = root.to_path_buf();
    for c in comps {
        p.push(OsStr::from_bytes(c));
    }
    p
}
