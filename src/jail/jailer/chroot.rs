//! The jail on the host's file system, made by the jailer (as root)
//! before the VMM's process starts:
//!
//! ```text
//! <base>/<exec name>/<id>/root/        root:root 0755, `/` for the VMM
//!     <exec name>                      a copy of --exec-file, root:root 0755
//!     <exec name>.pid                  the VMM's host pid, while it runs
//!     dev/  proc/                      mount points (a tmpfs and a proc)
//!     run/                             uid:gid 0700, made afresh each start
//!     <each --mount target>            an empty file or directory
//! ```
//!
//! Only `/run` (and read-write `--mount`s) are writable by the VMM; `/run`
//! is emptied at each start, so nothing the VMM left there (a symlink
//! planted for the next run, say) is ever followed by the jailer as root.

use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::config::{CheckedMount, Plan, SourceKind};
use super::{sys, JailPaths, JailerError, Result};
use crate::text::echo_path;

/// Serialises jailers of one exec file from the check that a jail is
/// free until its VMM's pid file is written: two starts of one id cannot
/// both pass [`check_not_in_use`]. An exclusive `flock` on
/// `<base>/<exec name>`, released when the returned file is dropped.
pub fn lock(paths: &JailPaths) -> Result<fs::File> {
    let exec_dir = paths.id_dir.parent().unwrap_or(Path::new("/"));
    if let Some(base) = exec_dir.parent() {
        DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(base)
            .map_err(|e| JailerError::io("create --chroot-base-dir", base, e))?;
    }
    real_dir(exec_dir, 0o755)?;
    let dir = fs::File::open(exec_dir).map_err(|e| JailerError::io("open", exec_dir, e))?;
    sys::flock_exclusive(&dir).map_err(|e| JailerError::io("lock", exec_dir, e))?;
    Ok(dir)
}

/// Refuses a jail whose pid file names a live process.
pub fn check_not_in_use(paths: &JailPaths) -> Result<()> {
    let pid_file = paths.pid_file();
    let Ok(text) = fs::read_to_string(&pid_file) else {
        return Ok(());
    };
    match text.trim().parse::<i32>() {
        Ok(pid) if sys::pid_alive(pid) => Err(JailerError::InUse {
            path: echo_path(&paths.root),
            pid,
        }),
        _ => Ok(()),
    }
}

/// What [`prepare`] made, so a failed start can take it away again.
#[derive(Debug, Default)]
pub struct Prepared {
    /// The `<base>/<exec name>/<id>` directory did not exist before.
    pub made_id_dir: bool,
}

/// A directory that must be a real directory, not a symlink; made with
/// `mode` when missing. Returns whether it was made.
fn real_dir(path: &Path, mode: u32) -> Result<bool> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Ok(false),
        Ok(_) => Err(JailerError::Invalid(format!(
            "{} exists and is not a directory (a symlink is refused too)",
            echo_path(path)
        ))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            DirBuilder::new()
                .mode(mode)
                .create(path)
                .map_err(|e| JailerError::io("create directory", path, e))?;
            Ok(true)
        }
        Err(e) => Err(JailerError::io("inspect", path, e)),
    }
}

fn own(path: &Path, uid: u32, gid: u32, mode: u32) -> Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .map_err(|e| JailerError::io("chown", path, e))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| JailerError::io("chmod", path, e))
}

/// Makes (or refreshes) the jail's directory tree and copies the exec
/// file in. On failure, whatever it made of a new jail is removed.
pub fn prepare(plan: &Plan) -> Result<Prepared> {
    let paths = &plan.paths;
    let mut prepared = Prepared::default();
    let base = paths
        .id_dir
        .parent()
        .and_then(Path::parent)
        .unwrap_or(Path::new("/"));
    DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(base)
        .map_err(|e| JailerError::io("create --chroot-base-dir", base, e))?;
    let exec_dir = paths.id_dir.parent().unwrap_or(base);
    real_dir(exec_dir, 0o755)?;
    prepared.made_id_dir = real_dir(&paths.id_dir, 0o755)?;
    let made = fill(plan);
    if made.is_err() {
        cleanup_failed(&prepared, paths);
    }
    made.map(|_| prepared)
}

fn fill(plan: &Plan) -> Result<()> {
    let paths = &plan.paths;
    real_dir(&paths.root, 0o755)?;
    own(&paths.root, 0, 0, 0o755)?;
    copy_exec(&plan.exec_file, &paths.exec_copy())?;
    let _ = fs::remove_file(paths.pid_file());
    // /run: emptied and made again, the VMM's own.
    let run = paths.root.join("run");
    match fs::symlink_metadata(&run) {
        Ok(m) if m.is_dir() => {
            fs::remove_dir_all(&run).map_err(|e| JailerError::io("empty", &run, e))?
        }
        Ok(_) => fs::remove_file(&run).map_err(|e| JailerError::io("remove", &run, e))?,
        Err(_) => {}
    }
    real_dir(&run, 0o700)?;
    real_dir(&paths.root.join("dev"), 0o755)?;
    real_dir(&paths.root.join("proc"), 0o555)?;
    for m in &plan.mounts {
        make_target(&paths.root, m)?;
    }
    own(&run, plan.uid, plan.gid, 0o700)
}

/// Copies (not links: jails share no page cache and no inode) the exec
/// file to `dest`, root-owned and executable by all.
fn copy_exec(src: &Path, dest: &Path) -> Result<()> {
    let name = dest.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dest.with_file_name(format!(".{name}.new"));
    let _ = fs::remove_file(&tmp);
    fs::copy(src, &tmp).map_err(|e| JailerError::io("copy --exec-file to", &tmp, e))?;
    own(&tmp, 0, 0, 0o755)?;
    fs::rename(&tmp, dest).map_err(|e| JailerError::io("install", dest, e))
}

/// Makes a `--mount` target (and its parents) inside `root`, refusing to
/// go through anything but real directories.
fn make_target(root: &Path, m: &CheckedMount) -> Result<PathBuf> {
    let rel = m.spec.jail.strip_prefix("/").unwrap_or(&m.spec.jail);
    let target = root.join(rel);
    let mut dir = root.to_path_buf();
    if let Some(parent) = rel.parent() {
        for c in parent.components() {
            dir.push(c);
            real_dir(&dir, 0o755)?;
        }
    }
    let existing = fs::symlink_metadata(&target);
    if m.kind == SourceKind::Dir {
        match existing {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(JailerError::Invalid(format!(
                    "--mount target {} exists in the jail and is not a directory",
                    echo_path(&m.spec.jail)
                )))
            }
            Err(_) => real_dir(&target, 0o755).map(drop)?,
        }
    } else {
        match existing {
            Ok(meta) if meta.is_file() => {}
            Ok(_) => {
                return Err(JailerError::Invalid(format!(
                    "--mount target {} exists in the jail and is not a plain file",
                    echo_path(&m.spec.jail)
                )))
            }
            Err(_) => {
                fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o644)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&target)
                    .map_err(|e| JailerError::io("create mount target", &target, e))?;
            }
        }
    }
    Ok(target)
}

/// Writes `<root>/<exec name>.pid`.
pub fn write_pid_file(paths: &JailPaths, pid: i32) -> Result<()> {
    let p = paths.pid_file();
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&p)
        .and_then(|mut f| io::Write::write_all(&mut f, pid.to_string().as_bytes()))
        .map_err(|e| JailerError::io("write pid file", &p, e))
}

pub fn remove_pid_file(paths: &JailPaths) {
    let _ = fs::remove_file(paths.pid_file());
}

/// After a failed start: removes the jail when this start made it.
pub fn cleanup_failed(prepared: &Prepared, paths: &JailPaths) {
    if prepared.made_id_dir {
        let _ = fs::remove_dir_all(&paths.id_dir);
        // The per-exec directory too, when this jail was its only one.
        if let Some(exec_dir) = paths.id_dir.parent() {
            let _ = fs::remove_dir(exec_dir);
        }
    } else {
        remove_pid_file(paths);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jail::jailer::config::MountSpec;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("husk-chroot-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn target(jail: &str, kind: SourceKind) -> CheckedMount {
        CheckedMount {
            spec: MountSpec {
                host: "/dev/null".into(),
                jail: jail.into(),
                read_only: true,
            },
            host: "/dev/null".into(),
            kind,
        }
    }

    #[test]
    fn targets_are_made_and_symlinks_refused() {
        let root = scratch("targets");
        let t = make_target(&root, &target("/a/b/kernel", SourceKind::File)).unwrap();
        assert!(fs::metadata(&t).unwrap().is_file());
        // Again: already there, fine.
        make_target(&root, &target("/a/b/kernel", SourceKind::File)).unwrap();
        // Wrong kind.
        assert!(make_target(&root, &target("/a/b/kernel", SourceKind::Dir)).is_err());
        let d = make_target(&root, &target("/data", SourceKind::Dir)).unwrap();
        assert!(d.is_dir());
        // A symlinked parent is not followed.
        let outside = scratch("outside");
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        assert!(make_target(&root, &target("/link/x", SourceKind::File)).is_err());
        assert!(!outside.join("x").exists());
        // A symlink at the target is not followed either.
        std::os::unix::fs::symlink(outside.join("y"), root.join("y")).unwrap();
        assert!(make_target(&root, &target("/y", SourceKind::File)).is_err());
        assert!(!outside.join("y").exists());
        let _ = fs::remove_dir_all(&root);
        let _ = fs::remove_dir_all(&outside);
    }

    #[test]
    fn a_stale_pid_file_does_not_lock_the_jail() {
        let base = scratch("pid");
        let paths = JailPaths::new(&base, "vmm", "x");
        fs::create_dir_all(&paths.root).unwrap();
        check_not_in_use(&paths).unwrap();
        write_pid_file(&paths, std::process::id() as i32).unwrap();
        let e = check_not_in_use(&paths).unwrap_err().to_string();
        assert!(e.contains("in use"), "{e}");
        // A pid that cannot exist.
        write_pid_file(&paths, i32::MAX).unwrap();
        check_not_in_use(&paths).unwrap();
        fs::write(paths.pid_file(), "garbage").unwrap();
        check_not_in_use(&paths).unwrap();
        let _ = fs::remove_dir_all(&base);
    }
}
