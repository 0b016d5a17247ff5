//! Root filesystems: an image's layers, unpacked in order, made into an
//! ext4 image with `mkfs.ext4 -d`, cached by the image's config digest.
//! Each container then gets its own copy, a reflink where the filesystem
//! allows and a sparse copy otherwise.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::store::{FileLock, ImageRecord, Store, StoreError};
use super::unpack::{UnpackError, UnpackStats, Unpacker};

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot unpack layer {layer}: {err}")]
    Unpack { layer: String, err: UnpackError },
    #[error("rootfs I/O on {path}: {err}")]
    Io { path: String, err: io::Error },
    #[error("cannot run {tool} (install e2fsprogs): {err}")]
    Tool { tool: &'static str, err: io::Error },
    #[error("{tool} failed: {stderr}")]
    ToolFailed { tool: &'static str, stderr: String },
    #[error("the requested size of {want} bytes is smaller than the image's {have} bytes")]
    TooSmall { want: u64, have: u64 },
}

type Result<T> = std::result::Result<T, RootfsError>;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> RootfsError + '_ {
    move |err| RootfsError::Io {
        path: crate::text::echo_path(path),
        err,
    }
}

/// How much room the cached filesystem leaves beyond the image's content.
#[derive(Clone, Copy, Debug)]
pub struct RootfsOptions {
    pub headroom_percent: u64,
    pub headroom_min_mib: u64,
    /// Most file data an image may unpack to (decompression bombs).
    pub max_content_bytes: u64,
}

impl Default for RootfsOptions {
    fn default() -> Self {
        RootfsOptions {
            headroom_percent: 25,
            headroom_min_mib: 16,
            max_content_bytes: super::unpack::DEFAULT_UNPACK_LIMIT,
        }
    }
}

const MIB: u64 = 1 << 20;
const INODE_SIZE: u64 = 256;

/// Finds an e2fsprogs tool even when /usr/sbin is not on PATH.
fn tool(name: &'static str) -> PathBuf {
    for dir in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    PathBuf::from(name)
}

fn run(name: &'static str, args: &[&std::ffi::OsStr]) -> Result<()> {
    let out = Command::new(tool(name))
        .args(args)
        .output()
        .map_err(|err| RootfsError::Tool { tool: name, err })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(RootfsError::ToolFailed {
            tool: name,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Filesystem size and inode count for unpacked content.
pub fn plan(stats: UnpackStats, opts: RootfsOptions) -> (u64, u64) {
    // Room for the files the container will add.
    let inodes = stats.entries + stats.entries / 4 + 1024;
    let content = stats.bytes + inodes * INODE_SIZE + stats.entries * 64;
    let size = content + content * opts.headroom_percent / 100 + opts.headroom_min_mib * MIB;
    // mkfs.ext4 wants room for its journal and metadata on small images.
    (size.max(16 * MIB).div_ceil(MIB) * MIB, inodes)
}

/// Returns the cached ext4 root filesystem of `image`, building it first
/// when there is none. A second call for the same image does no work.
pub fn build(store: &Store, image: &ImageRecord, opts: RootfsOptions) -> Result<PathBuf> {
    let path = store.rootfs_path(&image.config);
    if path.is_file() {
        return Ok(path);
    }
    let lock_path = path.with_extension("lock");
    let _lock = FileLock::acquire(&lock_path, true, true)?;
    if path.is_file() {
        // Someone else built it while we waited.
        let _ = fs::remove_file(&lock_path);
        return Ok(path);
    }
    let _pin = store.pin()?;
    let staging = store.temp_path("unpack");
    fs::create_dir(&staging).map_err(io_err(&staging))?;
    let staging_lock = File::open(&staging)
        .ok()
        .and_then(|f| FileLock::on(f, true, true).ok().flatten());
    let result = build_in(store, image, opts, &staging, &path);
    drop(staging_lock);
    let _ = fs::remove_dir_all(&staging);
    let _ = fs::remove_file(&lock_path);
    result.map(|_| path)
}

fn build_in(
    store: &Store,
    image: &ImageRecord,
    opts: RootfsOptions,
    staging: &Path,
    dest: &Path,
) -> Result<()> {
    let mut unpacker = Unpacker::new(staging).with_limit(opts.max_content_bytes);
    for layer in &image.layers {
        let blob = store.open_blob(&layer.digest)?;
        unpacker
            .apply(io::BufReader::with_capacity(1 << 20, blob))
            .map_err(|err| RootfsError::Unpack {
                layer: layer.digest.to_string(),
                err,
            })?;
    }
    for w in unpacker.warnings() {
        tracing::warn!("{w}");
    }
    let (mut size, inodes) = plan(unpacker.stats(), opts);
    let img = store.temp_path("ext4");
    let img_lock = File::create(&img)
        .ok()
        .and_then(|f| FileLock::on(f, true, true).ok().flatten());
    // Estimates can fall short for unusual content; grow and retry.
    let mut attempt = 0;
    let made = loop {
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&img)
            .map_err(io_err(&img))?;
        f.set_len(size).map_err(io_err(&img))?;
        drop(f);
        let inodes = inodes.to_string();
        let r = run(
            "mkfs.ext4",
            &[
                "-q".as_ref(),
                "-F".as_ref(),
                "-t".as_ref(),
                "ext4".as_ref(),
                "-b".as_ref(),
                "4096".as_ref(),
                "-m".as_ref(),
                "0".as_ref(),
                "-N".as_ref(),
                inodes.as_ref(),
                "-L".as_ref(),
                "rootfs".as_ref(),
                "-d".as_ref(),
                staging.as_os_str(),
                img.as_os_str(),
            ],
        );
        match r {
            Err(RootfsError::ToolFailed { stderr, .. })
                if attempt < 3 && (stderr.contains("allocate") || stderr.contains("space")) =>
            {
                attempt += 1;
                size = (size + size / 2).div_ceil(MIB) * MIB;
            }
            other => break other,
        }
    };
    if let Err(e) = made {
        let _ = fs::remove_file(&img);
        return Err(e);
    }
    fs::rename(&img, dest).map_err(io_err(dest))?;
    drop(img_lock);
    Ok(())
}

/// FICLONE: share all of `src`'s extents with `dst`.
const FICLONE: libc::c_ulong = 0x4004_9409;

/// Copies `src` to `dst` as a reflink when the filesystem can, else as a
/// sparse copy that skips holes. `dst` is created or replaced.
pub fn copy_sparse(src: &Path, dst: &Path) -> io::Result<()> {
    let from = File::open(src)?;
    let to = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(dst)?;
    // SAFETY: both descriptors are open files we own.
    if unsafe { libc::ioctl(to.as_raw_fd(), FICLONE, from.as_raw_fd()) } == 0 {
        return Ok(());
    }
    let len = from.metadata()?.len();
    to.set_len(len)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut pos: i64 = 0;
    while (pos as u64) < len {
        // SAFETY: lseek on an open descriptor.
        let data = unsafe { libc::lseek(from.as_raw_fd(), pos, libc::SEEK_DATA) };
        if data < 0 {
            break; // only a hole remains
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(from.as_raw_fd(), data, libc::SEEK_HOLE) };
        let end = if hole < 0 { len as i64 } else { hole };
        let mut at = data as u64;
        while at < end as u64 {
            let n = ((end as u64 - at) as usize).min(buf.len());
            from.read_exact_at(&mut buf[..n], at)?;
            // Blocks of zeros inside data extents stay holes too.
            if buf[..n].iter().any(|b| *b != 0) {
                to.write_all_at(&buf[..n], at)?;
            }
            at += n as u64;
        }
        pos = end;
    }
    to.sync_all()
}

/// Writes a private, writable copy of `image`'s root filesystem to
/// `dst`, grown to `size` bytes when given.
pub fn export(
    store: &Store,
    image: &ImageRecord,
    opts: RootfsOptions,
    dst: &Path,
    size: Option<u64>,
) -> Result<()> {
    let cached = build(store, image, opts)?;
    copy_sparse(&cached, dst).map_err(io_err(dst))?;
    match size {
        Some(want) => grow(dst, want),
        None => Ok(()),
    }
}

/// Grows the ext4 image `path` (not in use) to `want` bytes; one already
/// that size is left alone, and a bigger one is an error.
pub fn grow(path: &Path, want: u64) -> Result<()> {
    let have = fs::metadata(path).map_err(io_err(path))?.len();
    if want < have {
        return Err(RootfsError::TooSmall { want, have });
    }
    if want > have {
        let f = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io_err(path))?;
        f.set_len(want).map_err(io_err(path))?;
        drop(f);
        run("e2fsck", &["-f".as_ref(), "-p".as_ref(), path.as_os_str()])?;
        run("resize2fs", &[path.as_os_str()])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_adds_headroom_and_inodes() {
        let (size, inodes) = plan(
            UnpackStats {
                entries: 1000,
                bytes: 100 * MIB,
            },
            RootfsOptions::default(),
        );
        assert_eq!(inodes, 1000 + 250 + 1024);
        assert!(size > 125 * MIB + 16 * MIB, "{size}");
        assert_eq!(size % MIB, 0);
        let (small, _) = plan(UnpackStats::default(), RootfsOptions::default());
        assert!(small >= 16 * MIB);
    }

    #[test]
    fn sparse_copy_keeps_holes_and_data() {
        let dir = std::env::temp_dir().join(format!("husk-sparse-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let src = dir.join("src");
        let f = File::create(&src).unwrap();
        f.set_len(64 * MIB).unwrap();
        f.write_all_at(b"head", 0).unwrap();
        f.write_all_at(b"tail", 64 * MIB - 4).unwrap();
        drop(f);
        let dst = dir.join("dst");
        copy_sparse(&src, &dst).unwrap();
        assert_eq!(fs::read(&src).unwrap(), fs::read(&dst).unwrap());
        use std::os::unix::fs::MetadataExt;
        let blocks = fs::metadata(&dst).unwrap().blocks();
        assert!(blocks * 512 < 8 * MIB, "copy is sparse ({blocks} blocks)");
        fs::remove_dir_all(dir).unwrap();
    }
}
