//! `husk cp`: files between a container and the host, as `docker cp`
//! copies them, through tar streams (`/v1/containers/{id}/archive`).
//!
//! `husk cp CONTAINER:SRC DEST` and `husk cp SRC CONTAINER:DEST`:
//! - a DEST that is a directory gets SRC inside it, under SRC's name;
//! - a DEST that does not exist becomes SRC's copy (its parent must
//!   exist; a DEST ending in `/` must be a directory);
//! - a SRC ending in `/.` copies the directory's contents, not itself;
//! - `-` as DEST writes the tar stream to stdout, as SRC reads one
//!   from stdin.
//!
//! Modes, owners (when run as root), times and symlinks are kept; a
//! symlink is copied as a link (`-L` follows a host SRC's). Archives
//! coming out of a container are unpacked with every entry kept inside
//! DEST: an entry with `..`, an absolute path, or a path through a
//! symlink is refused, whatever the container put in it.

use std::path::{Path, PathBuf};

use clap::Args;

use super::report;
use crate::archive::{self, PathStat, UnpackOptions};
use crate::client::DaemonClient;

#[derive(Args, Debug)]
pub struct CpArgs {
    /// Follow a symlink given as a host SRC_PATH.
    #[arg(short = 'L', long)]
    pub follow_link: bool,
    /// CONTAINER:SRC_PATH, a host path, or - (a tar stream on stdin).
    pub src: String,
    /// CONTAINER:DEST_PATH, a host path, or - (a tar stream to stdout).
    pub dest: String,
}

/// `CONTAINER:PATH`, or a host path. A host path with a colon is
/// written `./a:b` or `/a:b`.
fn split(arg: &str) -> Option<(&str, &str)> {
    if arg.starts_with('/') || arg.starts_with('.') {
        return None;
    }
    let (c, p) = arg.split_once(':')?;
    (!c.is_empty() && !c.contains('/')).then_some((c, p))
}

/// The last component of `p` (`/` alone for the root).
fn base_name(p: &str) -> String {
    let t = p.trim_end_matches('/');
    match t.rsplit_once('/') {
        Some((_, b)) if !b.is_empty() => b.to_string(),
        _ if t.is_empty() => "/".to_string(),
        _ => t.to_string(),
    }
}

/// The directory `p` is in, in the container.
fn parent_in_container(p: &str) -> String {
    let t = p.trim_end_matches('/');
    match t.rsplit_once('/') {
        Some(("", _)) | None => "/".to_string(),
        Some((d, _)) => d.to_string(),
    }
}

fn absolute_in_container(p: &str) -> String {
    if p.starts_with('/') {
        p.to_string()
    } else {
        format!("/{p}")
    }
}

pub async fn cp(client: &DaemonClient, a: CpArgs) -> i32 {
    let result = match (split(&a.src), split(&a.dest)) {
        (Some((c, src)), None) => {
            from_container(client, c, &absolute_in_container(src), &a.dest).await
        }
        (None, Some((c, dest))) => {
            to_container(
                client,
                &a.src,
                c,
                &absolute_in_container(dest),
                a.follow_link,
            )
            .await
        }
        (Some(_), Some(_)) => {
            Err("copying between containers is not supported: copy to the host first".into())
        }
        (None, None) => Err("one of SRC and DEST must be CONTAINER:PATH".into()),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            report(e);
            1
        }
    }
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

async fn from_container(
    client: &DaemonClient,
    container: &str,
    src: &str,
    dest: &str,
) -> Result<(), String> {
    let (stat, reader) = client.archive_get(container, src).await.map_err(err)?;
    if dest == "-" {
        let mut reader = reader;
        return tokio::task::spawn_blocking(move || {
            std::io::copy(&mut reader, &mut std::io::stdout().lock()).map(drop)
        })
        .await
        .map_err(err)?
        .map_err(err);
    }
    let (into, rename) = host_target(&stat, src.ends_with("/."), Path::new(dest))?;
    let opts = UnpackOptions {
        // Owners only as root, as tar's --same-owner.
        // SAFETY: geteuid has no arguments and cannot fail.
        same_owner: unsafe { libc::geteuid() } == 0,
        devices: false,
        rename_top: rename,
    };
    tokio::task::spawn_blocking(move || archive::unpack(reader, &into, &opts))
        .await
        .map_err(err)?
        .map(drop)
        .map_err(err)
}

/// Where on the host the tar of `stat` is unpacked, and under what name.
fn host_target(
    stat: &PathStat,
    contents: bool,
    dest: &Path,
) -> Result<(PathBuf, Option<String>), String> {
    let shown = crate::text::echo_path(dest);
    let parent = || -> Result<PathBuf, String> {
        let p = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if p.is_dir() {
            Ok(p)
        } else {
            Err(format!(
                "the directory {} does not exist",
                crate::text::echo_path(&p)
            ))
        }
    };
    let name = || {
        dest.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| format!("invalid destination {shown}"))
    };
    match std::fs::metadata(dest) {
        Ok(m) if m.is_dir() => Ok((dest.to_path_buf(), None)),
        Ok(_) if stat.is_dir() => Err(format!("cannot copy a directory to the file {shown}")),
        Ok(_) => Ok((parent()?, Some(name()?))),
        Err(_) if dest.to_string_lossy().ends_with('/') => {
            Err(format!("the destination directory {shown} does not exist"))
        }
        Err(_) if contents => {
            parent()?;
            std::fs::create_dir(dest).map_err(|e| format!("{shown}: {e}"))?;
            Ok((dest.to_path_buf(), None))
        }
        Err(_) => Ok((parent()?, Some(name()?))),
    }
}

async fn to_container(
    client: &DaemonClient,
    src: &str,
    container: &str,
    dest: &str,
    follow: bool,
) -> Result<(), String> {
    if src == "-" {
        return client
            .archive_put(container, dest, |w| {
                std::io::copy(&mut std::io::stdin().lock(), w).map(drop)
            })
            .await
            .map_err(err);
    }
    let mut path = PathBuf::from(src);
    let meta =
        std::fs::symlink_metadata(&path).map_err(|e| format!("{}: {e}", crate::text::echo(src)))?;
    if follow && meta.file_type().is_symlink() {
        path =
            std::fs::canonicalize(&path).map_err(|e| format!("{}: {e}", crate::text::echo(src)))?;
    }
    let is_dir = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir());
    let contents = src.ends_with("/.");
    // Where the tar goes, and the name its top entry gets.
    let (into, name) = match client.archive_stat(container, dest).await {
        Ok(st) if st.is_dir() => (
            dest.to_string(),
            if contents {
                ".".to_string()
            } else {
                base_name(src)
            },
        ),
        Ok(_) if is_dir => {
            return Err(format!(
                "cannot copy a directory to the file {}",
                crate::text::echo(dest)
            ))
        }
        Ok(_) => (parent_in_container(dest), base_name(dest)),
        Err(e) if e.is_not_found() => {
            if dest.ends_with('/') {
                return Err(format!(
                    "the destination directory {} does not exist in the container",
                    crate::text::echo(dest)
                ));
            }
            (parent_in_container(dest), base_name(dest))
        }
        Err(e) => return Err(e.to_string()),
    };
    if name == "/" {
        return Err("invalid destination /".into());
    }
    client
        .archive_put(container, &into, move |w| {
            archive::pack(&path, &name, w).map_err(|e| std::io::Error::other(e.to_string()))
        })
        .await
        .map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_paths_are_told_from_host_paths() {
        assert_eq!(split("web:/etc/hosts"), Some(("web", "/etc/hosts")));
        assert_eq!(split("abc123:tmp"), Some(("abc123", "tmp")));
        assert_eq!(split("./a:b"), None);
        assert_eq!(split("/a:b"), None);
        assert_eq!(split("dir/a:b"), None);
        assert_eq!(split("plain"), None);
        assert_eq!(base_name("/a/b/"), "b");
        assert_eq!(base_name("/a"), "a");
        assert_eq!(base_name("/"), "/");
        assert_eq!(parent_in_container("/a/b"), "/a");
        assert_eq!(parent_in_container("/a"), "/");
    }
}
