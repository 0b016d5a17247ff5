//! The container's extra filesystems: volumes (virtio-blk disks found by
//! their serial), bind mounts (virtio-fs shares found by their tag) and
//! tmpfs mounts, mounted in the container's root before its process
//! starts.
//!
//! A volume that is still empty when it is first mounted read-write gets
//! a copy of what the image has at its target, as Docker does, so an
//! image's `VOLUME /var/lib/app` keeps the files the image put there.

use std::ffi::CString;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path};
use std::time::Duration;

use super::setup::{mount, SetupError};
use crate::agent::protocol::{GuestMount, MountSource};

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error(
        "invalid mount target {0:?}: an absolute path without '..', not / or under /proc or /sys"
    )]
    Target(String),
    #[error("invalid {what} {value:?}")]
    Invalid { what: &'static str, value: String },
    #[error("no disk with serial {0:?} is attached to the VM")]
    NoDisk(String),
    #[error("cannot create the mount point {path}: {err}")]
    MountPoint { path: String, err: io::Error },
    #[error("the mount point {0} is not a directory")]
    NotDirectory(String),
    #[error("cannot copy the image's {target} into its new volume: {err}")]
    CopyUp { target: String, err: io::Error },
    #[error(transparent)]
    Mount(#[from] SetupError),
}

/// How long a disk may take to show up after boot (virtio-blk probes
/// before init runs; this only covers a slow devtmpfs).
const DISK_WAIT: Duration = Duration::from_secs(2);

/// A mount target the agent accepts: absolute, normal components only,
/// and not over the kernel's own filesystems.
pub fn check_target(t: &str) -> Result<(), MountError> {
    let p = Path::new(t);
    let bad = || MountError::Target(crate::text::echo(t).into_owned());
    if !p.is_absolute() || t.contains('\0') || t.len() > 4096 {
        return Err(bad());
    }
    let mut normal = p.components().filter(|c| matches!(c, Component::Normal(_)));
    let first = normal.next().ok_or_else(bad)?;
    if t.split('/').any(|seg| seg == "." || seg == "..")
        || first.as_os_str() == "proc"
        || first.as_os_str() == "sys"
    {
        return Err(bad());
    }
    Ok(())
}

/// Mounts `mounts` in order, in the current root.
pub fn apply(mounts: &[GuestMount]) -> Result<(), MountError> {
    for m in mounts {
        check_target(&m.target)?;
    }
    for m in mounts {
        apply_one(m)?;
    }
    Ok(())
}

fn apply_one(m: &GuestMount) -> Result<(), MountError> {
    let ro = if m.read_only { libc::MS_RDONLY } else { 0 };
    match &m.source {
        MountSource::Block { serial } => {
            let dev = find_disk(serial)?;
            let fresh = !Path::new(&m.target).exists();
            mount_point(&m.target)?;
            if m.read_only {
                read_only_ext4(&dev, &m.target)?;
            } else if fresh {
                mount(&dev, &m.target, "ext4", 0, None)?;
            } else {
                // Mounted aside first: an empty volume gets the image's
                // files at its target before it covers them.
                let aside = "/run/husk-volume";
                mount_point(aside)?;
                mount(&dev, aside, "ext4", 0, None)?;
                let copied = copy_up_if_empty(&m.target, aside);
                let moved = copied.and_then(|()| {
                    mount(aside, &m.target, "", libc::MS_MOVE, None).map_err(MountError::from)
                });
                if moved.is_err() {
                    detach(aside);
                }
                let _ = std::fs::remove_dir(aside);
                moved?;
            }
        }
        MountSource::VirtioFs { tag } => {
            if tag.is_empty() || tag.len() > 36 || tag.contains('\0') {
                return Err(MountError::Invalid {
                    what: "virtio-fs tag",
                    value: crate::text::echo(tag).into_owned(),
                });
            }
            mount_point(&m.target)?;
            mount(tag, &m.target, "virtiofs", ro, None)?;
        }
        MountSource::Tmpfs {
            size,
            mode,
            noexec,
            nosuid,
            nodev,
        } => {
            let mode = mode.unwrap_or(0o1777);
            if mode > 0o7777 {
                return Err(MountError::Invalid {
                    what: "tmpfs mode",
                    value: format!("{mode:o}"),
                });
            }
            let mut data = format!("mode={mode:o}");
            if let Some(size) = size {
                data.push_str(&format!(",size={size}"));
            }
            let mut flags = ro;
            for (on, f) in [
                (*noexec, libc::MS_NOEXEC),
                (*nosuid, libc::MS_NOSUID),
                (*nodev, libc::MS_NODEV),
            ] {
                if on {
                    flags |= f;
                }
            }
            mount_point(&m.target)?;
            mount("tmpfs", &m.target, "tmpfs", flags, Some(&data))?;
        }
    }
    Ok(())
}

/// A read-only disk whose journal was left dirty (its last VM was
/// killed) cannot replay it: it is then mounted without recovery, as it
/// was last written through.
fn read_only_ext4(dev: &str, target: &str) -> Result<(), MountError> {
    match mount(dev, target, "ext4", libc::MS_RDONLY, None) {
        Err(SetupError::Mount { err, .. }) if err.raw_os_error() == Some(libc::EROFS) => {
            eprintln!("husk-agent: warning: {dev} was not cleanly unmounted; mounting it without journal recovery");
            Ok(mount(
                dev,
                target,
                "ext4",
                libc::MS_RDONLY,
                Some("norecovery"),
            )?)
        }
        r => Ok(r?),
    }
}

/// Unmounts the container's filesystems, deepest first, so that volumes
/// are clean for the next VM (called as the VM ends).
pub fn unmount_all() {
    let Ok(text) = std::fs::read_to_string("/proc/self/mounts") else {
        return;
    };
    let targets: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .filter(|t| *t != "/")
        .collect();
    for t in targets.iter().rev() {
        // Octal escapes (\040 for a space) are left: such a target only
        // stays mounted, and the reboot's sync still covers it.
        if let Ok(c) = CString::new(*t) {
            // SAFETY: a valid path string.
            unsafe { libc::umount2(c.as_ptr(), 0) };
        }
    }
}

fn detach(path: &str) {
    if let Ok(c) = CString::new(path) {
        // SAFETY: a valid path string.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

/// `/dev/<name>` of the virtio-blk disk whose serial is `serial`.
fn find_disk(serial: &str) -> Result<String, MountError> {
    if serial.is_empty() || serial.len() > 20 || !serial.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(MountError::Invalid {
            what: "disk serial",
            value: crate::text::echo(serial).into_owned(),
        });
    }
    let start = std::time::Instant::now();
    loop {
        if let Ok(dir) = std::fs::read_dir("/sys/block") {
            for e in dir.flatten() {
                let found = std::fs::read_to_string(e.path().join("serial"))
                    .is_ok_and(|s| s.trim_end_matches(['\n', '\0']) == serial);
                let dev = Path::new("/dev").join(e.file_name());
                if found && dev.exists() {
                    return Ok(dev.to_string_lossy().into_owned());
                }
            }
        }
        if start.elapsed() > DISK_WAIT {
            return Err(MountError::NoDisk(serial.into()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Creates `path` (and its parents) as a directory unless it is one.
fn mount_point(path: &str) -> Result<(), MountError> {
    use std::os::unix::fs::DirBuilderExt;
    let err = |err| MountError::MountPoint {
        path: crate::text::echo(path).into_owned(),
        err,
    };
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(MountError::NotDirectory(
            crate::text::echo(path).into_owned(),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(path)
            .map_err(err),
        Err(e) => Err(err(e)),
    }
}

/// Whether a volume's root holds nothing but mkfs's `lost+found`.
fn is_empty_volume(dir: &Path) -> io::Result<bool> {
    for e in std::fs::read_dir(dir)? {
        if e?.file_name() != "lost+found" {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Copies the image's `target` into the volume at `volume` when the
/// volume is empty, and gives the volume's root the target's owner and
/// mode (as Docker does).
fn copy_up_if_empty(target: &str, volume: &str) -> Result<(), MountError> {
    let err = |err| MountError::CopyUp {
        target: crate::text::echo(target).into_owned(),
        err,
    };
    let (src, dst) = (Path::new(target), Path::new(volume));
    if !is_empty_volume(dst).map_err(err)? {
        return Ok(());
    }
    let meta = std::fs::symlink_metadata(src).map_err(err)?;
    copy_tree(src, dst).map_err(err)?;
    copy_owner_and_mode(dst, &meta).map_err(err)
}

fn copy_owner_and_mode(path: &Path, meta: &std::fs::Metadata) -> io::Result<()> {
    std::os::unix::fs::lchown(path, Some(meta.uid()), Some(meta.gid()))?;
    if !meta.file_type().is_symlink() {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    }
    Ok(())
}

/// Copies the contents of directory `src` into directory `dst`: files,
/// directories, symlinks (as links), with owners and modes. Other file
/// types (sockets, devices) are left out.
fn copy_tree(src: &Path, dst: &Path) -> io::Result<()> {
    for e in std::fs::read_dir(src)? {
        let e = e?;
        let (from, to) = (e.path(), dst.join(e.file_name()));
        let meta = std::fs::symlink_metadata(&from)?;
        let t = meta.file_type();
        if t.is_dir() {
            std::fs::create_dir(&to)?;
            copy_tree(&from, &to)?;
        } else if t.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&from)?, &to)?;
        } else if t.is_file() {
            std::fs::copy(&from, &to)?;
        } else {
            continue;
        }
        copy_owner_and_mode(&to, &meta)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_must_be_plain_absolute_paths() {
        for ok in ["/data", "/var/lib/app", "/src/", "/procfs"] {
            assert!(check_target(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "data", "/", "/..", "/a/../b", "/./a", "/proc", "/proc/x", "/sys/fs", "/a\0b",
        ] {
            assert!(check_target(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn copy_up_fills_only_an_empty_volume() {
        let base = std::env::temp_dir().join(format!("husk-copyup-{}", std::process::id()));
        let (img, vol) = (base.join("img"), base.join("vol"));
        std::fs::create_dir_all(img.join("sub")).unwrap();
        std::fs::create_dir_all(vol.join("lost+found")).unwrap();
        std::fs::write(img.join("sub/f"), b"seed").unwrap();
        std::os::unix::fs::symlink("sub/f", img.join("l")).unwrap();
        std::fs::set_permissions(&img, std::fs::Permissions::from_mode(0o750)).unwrap();
        copy_up_if_empty(img.to_str().unwrap(), vol.to_str().unwrap()).unwrap();
        assert_eq!(std::fs::read(vol.join("sub/f")).unwrap(), b"seed");
        assert_eq!(
            std::fs::read_link(vol.join("l")).unwrap(),
            Path::new("sub/f")
        );
        let mode = std::fs::metadata(&vol).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o750);
        // Not empty any more: a second mount copies nothing.
        std::fs::write(img.join("new"), b"x").unwrap();
        copy_up_if_empty(img.to_str().unwrap(), vol.to_str().unwrap()).unwrap();
        assert!(!vol.join("new").exists());
        std::fs::remove_dir_all(&base).unwrap();
    }
}
