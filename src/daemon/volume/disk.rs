//! A volume's disk: a sparse file holding an ext4 filesystem, made with
//! `mkfs.ext4` and grown with `resize2fs` (e2fsprogs, which root
//! filesystems need anyway).
//!
//! The guest is the only one that mounts it; the host only creates,
//! checks and grows it with userspace tools, never with its own kernel.

use std::path::Path;
use std::process::Command;

use super::VolumeError;

/// The smallest volume: room for ext4's journal and metadata.
pub const MIN_SIZE: u64 = 16 << 20;
/// The largest: ext4 with 4 KiB blocks and no 64bit feature tricks.
pub const MAX_SIZE: u64 = 16 << 40;

fn run(prog: &'static str, args: &[&std::ffi::OsStr]) -> Result<(), VolumeError> {
    let out = Command::new(prog)
        .args(args)
        .env("PATH", "/usr/sbin:/sbin:/usr/bin:/bin")
        .output()
        .map_err(|err| VolumeError::Tool {
            prog,
            detail: format!("cannot run it: {err}"),
        })?;
    // e2fsck -p exits 1 when it fixed something, which is fine.
    let ok = out.status.success() || (prog == "e2fsck" && out.status.code() == Some(1));
    if ok {
        return Ok(());
    }
    Err(VolumeError::Tool {
        prog,
        detail: crate::text::echo(String::from_utf8_lossy(&out.stderr).trim()).into_owned(),
    })
}

/// Sets the file's length (a new file's, with `create`).
fn set_len(path: &Path, size: u64, create: bool) -> Result<(), VolumeError> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(create)
        .open(path)
        .and_then(|f| f.set_len(size))
        .map_err(|err| VolumeError::Io {
            path: path.display().to_string(),
            err,
        })
}

/// Makes `path` a new, empty ext4 filesystem of `size` bytes. The file
/// is sparse; the inode tables are marked zeroed (the file's holes read
/// as zeros), so neither mkfs nor the guest writes them out.
pub fn make(path: &Path, size: u64) -> Result<(), VolumeError> {
    set_len(path, size, true)?;
    let made = run(
        "mkfs.ext4",
        &[
            "-q".as_ref(),
            "-F".as_ref(),
            "-b".as_ref(),
            "4096".as_ref(),
            "-m".as_ref(),
            "0".as_ref(),
            "-E".as_ref(),
            "root_owner=0:0,assume_storage_prezeroed=1,nodiscard".as_ref(),
            "-L".as_ref(),
            "volume".as_ref(),
            path.as_os_str(),
        ],
    )
    // A new volume looks empty, as Docker's do: mkfs's lost+found goes
    // (e2fsck makes it again if it ever needs it).
    .and_then(|()| {
        run(
            "debugfs",
            &[
                "-w".as_ref(),
                "-R".as_ref(),
                "rmdir lost+found".as_ref(),
                path.as_os_str(),
            ],
        )
    });
    if made.is_err() {
        let _ = std::fs::remove_file(path);
    }
    made
}

/// Grows the filesystem in `path` to `size` bytes (checked first, as
/// resize2fs requires).
pub fn grow(path: &Path, size: u64) -> Result<(), VolumeError> {
    run("e2fsck", &["-f".as_ref(), "-p".as_ref(), path.as_os_str()])?;
    set_len(path, size, false)?;
    run("resize2fs", &["-f".as_ref(), path.as_os_str()])
}

/// Bytes the file takes on the host (its allocated blocks).
pub fn used(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map_or(0, |m| m.blocks() * 512)
}
