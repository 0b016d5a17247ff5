//! The content-addressed image store under `<state-dir>/images`:
//!
//! ```text
//! blobs/sha256/<hex>   verified blobs, never modified once in place
//! tmp/                 blobs being written; each holds a lock while alive
//! rootfs/<hex>.ext4    root filesystems, by image config digest
//! index.json           reference -> image record
//! index.lock           serialises index updates
//! gc.lock              pulls hold it shared, garbage collection exclusive
//! ```
//!
//! A blob only enters `blobs/` by rename after its digest was checked, so a
//! crash leaves at most a temporary file, which the next open removes.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::digest::{Digest, HashingWriter};
use super::reference::{ImageRef, ReferenceError};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("image store I/O on {path}: {err}")]
    Io { path: String, err: io::Error },
    #[error("digest mismatch: expected {expected}, got {actual} ({size} bytes)")]
    DigestMismatch {
        expected: Digest,
        actual: Digest,
        size: u64,
    },
    #[error("blob {0} is not in the store")]
    MissingBlob(Digest),
    #[error("the image index is corrupt: {0}")]
    CorruptIndex(serde_json::Error),
    #[error("no image {} in the store", crate::text::echo(.0))]
    NoImage(String),
    #[error(transparent)]
    Reference(#[from] ReferenceError),
}

type Result<T> = std::result::Result<T, StoreError>;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |err| StoreError::Io {
        path: path.display().to_string(),
        err,
    }
}

/// One layer of an image, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
}

/// An image the store holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Canonical reference, e.g. `docker.io/library/busybox:latest`.
    pub reference: String,
    /// The digest of the image manifest, as stored in `blobs/`.
    pub manifest: Digest,
    pub config: Digest,
    pub layers: Vec<LayerRecord>,
}

impl ImageRecord {
    /// Compressed size of all layers.
    pub fn size(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }

    fn blobs(&self) -> impl Iterator<Item = &Digest> {
        [&self.manifest, &self.config]
            .into_iter()
            .chain(self.layers.iter().map(|l| &l.digest))
    }
}

#[derive(Default, Serialize, Deserialize)]
struct Index {
    images: BTreeMap<String, ImageRecord>,
}

/// What garbage collection removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct GcStats {
    pub blobs: usize,
    pub rootfs: usize,
    pub bytes: u64,
}

/// An exclusive or shared `flock`, released when the file closes on drop.
pub struct FileLock(#[allow(dead_code)] File);

impl FileLock {
    pub fn acquire(path: &Path, exclusive: bool, wait: bool) -> Result<Option<FileLock>> {
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(io_err(path))?;
        Self::on(f, exclusive, wait).map_err(io_err(path))
    }

    pub fn on(f: File, exclusive: bool, wait: bool) -> io::Result<Option<FileLock>> {
        let mut op = if exclusive {
            libc::LOCK_EX
        } else {
            libc::LOCK_SH
        };
        if !wait {
            op |= libc::LOCK_NB;
        }
        // SAFETY: flock on a descriptor we own; no memory is involved.
        if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
            return Ok(Some(FileLock(f)));
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            Ok(None)
        } else {
            Err(e)
        }
    }
}

pub struct Store {
    root: PathBuf,
}

/// A blob being written: a locked temporary file and its running digest.
/// Dropped without being committed, it deletes its file.
pub struct BlobWriter {
    path: PathBuf,
    /// None once finished.
    out: Option<HashingWriter<File>>,
    _lock: FileLock,
}

impl BlobWriter {
    fn out(&mut self) -> &mut HashingWriter<File> {
        // Only `finish` empties it, and it consumes the writer.
        self.out.as_mut().expect("blob writer used after finish")
    }

    pub fn written(&self) -> u64 {
        self.out.as_ref().map_or(0, |o| o.written())
    }

    /// The temporary file, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What was written so far, read back from the start.
    pub fn reopen(&mut self) -> Result<File> {
        let path = self.path.clone();
        self.out().flush().map_err(io_err(&path))?;
        File::open(&path).map_err(io_err(&path))
    }

    /// Throws away what was written, to start the blob over.
    pub fn restart(&mut self) -> Result<()> {
        use std::io::Seek;
        let path = self.path.clone();
        let f = self.out().get_mut();
        f.set_len(0).map_err(io_err(&path))?;
        f.seek(io::SeekFrom::Start(0)).map_err(io_err(&path))?;
        self.out().reset();
        Ok(())
    }

    /// The file, its digest and size; the file stays until renamed.
    fn finish(mut self) -> (PathBuf, File, Digest, u64) {
        let out = self.out.take().expect("blob writer finished twice");
        let (file, digest, size) = out.finish();
        (self.path.clone(), file, digest, size)
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if self.out.is_some() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out().write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out().flush()
    }
}

impl Store {
    /// Opens (creating if needed) the store under `state_dir`, and removes
    /// temporary files that no live writer holds.
    pub fn open(state_dir: &Path) -> Result<Store> {
        let root = state_dir.join("images");
        for d in ["blobs/sha256", "tmp", "rootfs"] {
            let p = root.join(d);
            fs::create_dir_all(&p).map_err(io_err(&p))?;
        }
        let store = Store { root };
        store.clean_tmp()?;
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn clean_tmp(&self) -> Result<()> {
        let dir = self.tmp_dir();
        for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            let path = entry.path();
            let Ok(f) = File::open(&path) else { continue };
            // A writer still holds its lock; anything else is left over
            // from a crash.
            if let Ok(Some(_lock)) = FileLock::on(f, true, false) {
                let _ = if path.is_dir() {
                    fs::remove_dir_all(&path)
                } else {
                    fs::remove_file(&path)
                };
            }
        }
        Ok(())
    }

    /// A fresh, locked path under `tmp/` (file or directory).
    pub fn temp_path(&self, kind: &str) -> PathBuf {
        static N: AtomicU64 = AtomicU64::new(0);
        self.tmp_dir().join(format!(
            "{kind}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ))
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    pub fn blob_writer(&self) -> Result<BlobWriter> {
        let path = self.temp_path("blob");
        let f = OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let lock = FileLock::on(f.try_clone().map_err(io_err(&path))?, true, true)
            .map_err(io_err(&path))?
            .ok_or_else(|| io_err(&path)(io::Error::other("cannot lock")))?;
        Ok(BlobWriter {
            path,
            out: Some(HashingWriter::new(f)),
            _lock: lock,
        })
    }

    /// Verifies the blob against `expected` and moves it into place.
    pub fn commit(&self, w: BlobWriter, expected: &Digest) -> Result<u64> {
        let (path, file, actual, size) = w.finish();
        if &actual != expected {
            let _ = fs::remove_file(&path);
            return Err(StoreError::DigestMismatch {
                expected: expected.clone(),
                actual,
                size,
            });
        }
        file.sync_all().map_err(io_err(&path))?;
        let dest = self.blob_path(expected);
        fs::rename(&path, &dest).map_err(io_err(&dest))?;
        Ok(size)
    }

    /// Stores `data`, returning its digest.
    pub fn put_blob(&self, data: &[u8]) -> Result<Digest> {
        let d = Digest::of(data);
        if !self.has_blob(&d) {
            let mut w = self.blob_writer()?;
            w.write_all(data).map_err(io_err(&w.path))?;
            self.commit(w, &d)?;
        }
        Ok(d)
    }

    /// Copies `reader` into the store under the digest of what it held.
    pub fn put_blob_computed(&self, reader: &mut dyn Read) -> Result<(Digest, u64)> {
        let mut w = self.blob_writer()?;
        io::copy(reader, &mut w).map_err(io_err(&w.path))?;
        self.commit_computed(w)
    }

    /// Moves the blob into place under the digest of what it holds.
    pub fn commit_computed(&self, w: BlobWriter) -> Result<(Digest, u64)> {
        let (path, file, digest, size) = w.finish();
        if self.has_blob(&digest) {
            let _ = fs::remove_file(&path);
            return Ok((digest, size));
        }
        file.sync_all().map_err(io_err(&path))?;
        let dest = self.blob_path(&digest);
        fs::rename(&path, &dest).map_err(io_err(&dest))?;
        Ok((digest, size))
    }

    /// Copies `reader` into the store, checking it against `expected`.
    pub fn put_blob_from(&self, reader: &mut dyn Read, expected: &Digest) -> Result<u64> {
        if self.has_blob(expected) {
            return fs::metadata(self.blob_path(expected))
                .map(|m| m.len())
                .map_err(io_err(&self.blob_path(expected)));
        }
        let mut w = self.blob_writer()?;
        io::copy(reader, &mut w).map_err(io_err(&w.path))?;
        self.commit(w, expected)
    }

    pub fn open_blob(&self, d: &Digest) -> Result<File> {
        File::open(self.blob_path(d)).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => StoreError::MissingBlob(d.clone()),
            _ => io_err(&self.blob_path(d))(e),
        })
    }

    /// Reads a small blob (a manifest or config), checking its digest again.
    pub fn read_blob(&self, d: &Digest) -> Result<Vec<u8>> {
        let mut data = Vec::new();
        self.open_blob(d)?
            .read_to_end(&mut data)
            .map_err(io_err(&self.blob_path(d)))?;
        let actual = Digest::of(&data);
        if &actual != d {
            return Err(StoreError::DigestMismatch {
                expected: d.clone(),
                actual,
                size: data.len() as u64,
            });
        }
        Ok(data)
    }

    /// Holds off garbage collection while a pull or import is under way.
    pub fn pin(&self) -> Result<FileLock> {
        let path = self.root.join("gc.lock");
        FileLock::acquire(&path, false, true)?
            .ok_or_else(|| io_err(&path)(io::Error::from(io::ErrorKind::WouldBlock)))
    }

    fn with_index<T>(&self, f: impl FnOnce(&mut Index) -> Result<T>) -> Result<T> {
        let _lock = FileLock::acquire(&self.root.join("index.lock"), true, true)?;
        let path = self.root.join("index.json");
        let mut index: Index = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(StoreError::CorruptIndex)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Index::default(),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let before = serde_json::to_vec_pretty(&index).unwrap_or_default();
        let out = f(&mut index)?;
        let after = serde_json::to_vec_pretty(&index).unwrap_or_default();
        if after != before {
            let tmp = self.temp_path("index");
            fs::write(&tmp, &after).map_err(io_err(&tmp))?;
            fs::rename(&tmp, &path).map_err(io_err(&path))?;
        }
        Ok(out)
    }

    /// Records `image` under its reference, replacing what was there.
    pub fn add_image(&self, image: ImageRecord) -> Result<()> {
        self.with_index(|idx| {
            idx.images.insert(image.reference.clone(), image);
            Ok(())
        })
    }

    pub fn list(&self) -> Result<Vec<ImageRecord>> {
        self.with_index(|idx| Ok(idx.images.values().cloned().collect()))
    }

    /// Finds an image by reference (short forms allowed) or by manifest
    /// digest.
    pub fn get(&self, name: &str) -> Result<ImageRecord> {
        let key = Self::key(name);
        self.with_index(|idx| {
            idx.images
                .get(&key)
                .or_else(|| idx.images.values().find(|i| i.manifest.as_str() == name))
                .cloned()
                .ok_or_else(|| StoreError::NoImage(name.into()))
        })
    }

    fn key(name: &str) -> String {
        ImageRef::parse(name)
            .map(|r| r.canonical())
            .unwrap_or_else(|_| name.to_string())
    }

    /// Forgets a reference; its blobs go at the next garbage collection.
    pub fn remove(&self, name: &str) -> Result<ImageRecord> {
        let key = Self::key(name);
        self.with_index(|idx| {
            idx.images
                .remove(&key)
                .ok_or_else(|| StoreError::NoImage(name.into()))
        })
    }

    /// Path of the cached root filesystem for an image config.
    pub fn rootfs_path(&self, config: &Digest) -> PathBuf {
        self.root
            .join("rootfs")
            .join(format!("{}.ext4", config.hex()))
    }

    /// Deletes blobs and root filesystems no image refers to.
    pub fn gc(&self) -> Result<GcStats> {
        let _exclusive = FileLock::acquire(&self.root.join("gc.lock"), true, true)?;
        let images = self.list()?;
        let live: BTreeSet<String> = images
            .iter()
            .flat_map(|i| i.blobs().map(|d| d.hex().to_string()))
            .collect();
        let live_rootfs: BTreeSet<String> = images
            .iter()
            .map(|i| format!("{}.ext4", i.config.hex()))
            .collect();
        let mut stats = GcStats::default();
        let mut sweep = |dir: PathBuf, keep: &BTreeSet<String>, count: &mut usize| -> Result<()> {
            for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
                let entry = entry.map_err(io_err(&dir))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if !keep.contains(&name) {
                    let len = entry.metadata().map(|m| m.len()).unwrap_or(0);
                    fs::remove_file(entry.path()).map_err(io_err(&entry.path()))?;
                    *count += 1;
                    stats.bytes += len;
                }
            }
            Ok(())
        };
        let (mut blobs, mut rootfs) = (0, 0);
        sweep(self.root.join("blobs/sha256"), &live, &mut blobs)?;
        sweep(self.root.join("rootfs"), &live_rootfs, &mut rootfs)?;
        stats.blobs = blobs;
        stats.rootfs = rootfs;
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (Store, PathBuf) {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "husk-store-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        (Store::open(&dir).unwrap(), dir)
    }

    fn record(store: &Store, name: &str, layer: &[u8]) -> ImageRecord {
        let layer = store.put_blob(layer).unwrap();
        let config = store
            .put_blob(format!("config of {name}").as_bytes())
            .unwrap();
        let manifest = store
            .put_blob(format!("manifest of {name}").as_bytes())
            .unwrap();
        ImageRecord {
            reference: ImageRef::parse(name).unwrap().canonical(),
            manifest,
            config,
            layers: vec![LayerRecord {
                digest: layer,
                media_type: "application/vnd.oci.image.layer.v1.tar".into(),
                size: 5,
            }],
        }
    }

    #[test]
    fn blobs_are_verified_before_they_land() {
        let (s, dir) = store();
        let good = Digest::of(b"hello");
        let bad = Digest::of(b"other");
        assert!(matches!(
            s.put_blob_from(&mut &b"hello"[..], &bad),
            Err(StoreError::DigestMismatch { .. })
        ));
        assert!(!s.has_blob(&bad));
        assert_eq!(s.put_blob_from(&mut &b"hello"[..], &good).unwrap(), 5);
        assert_eq!(s.read_blob(&good).unwrap(), b"hello");
        // Nothing is left in tmp.
        assert_eq!(fs::read_dir(s.tmp_dir()).unwrap().count(), 0);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_tampered_blob_is_caught_on_read() {
        let (s, dir) = store();
        let d = s.put_blob(b"manifest").unwrap();
        fs::write(s.blob_path(&d), b"tampered").unwrap();
        assert!(matches!(
            s.read_blob(&d),
            Err(StoreError::DigestMismatch { .. })
        ));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn leftovers_of_a_crash_are_removed_on_open() {
        let (s, dir) = store();
        let stale = s.temp_path("blob");
        fs::write(&stale, b"half a blob").unwrap();
        let live = s.blob_writer().unwrap();
        drop(s);
        let s = Store::open(&dir).unwrap();
        assert!(!stale.exists());
        assert!(live.path.exists(), "a live writer's file is kept");
        drop(live);
        fs::remove_dir_all(dir).unwrap();
        let _ = s;
    }

    #[test]
    fn index_ls_rm_and_gc() {
        let (s, dir) = store();
        let a = record(&s, "localhost:5000/a:1", b"layer a");
        let b = record(&s, "localhost:5000/b:1", b"layer b");
        s.add_image(a.clone()).unwrap();
        s.add_image(b.clone()).unwrap();
        fs::write(s.rootfs_path(&a.config), b"fs").unwrap();
        assert_eq!(s.list().unwrap().len(), 2);
        assert_eq!(s.get("localhost:5000/a:1").unwrap(), a);
        assert_eq!(s.get(a.manifest.as_str()).unwrap(), a);
        assert!(matches!(s.get("nope"), Err(StoreError::NoImage(_))));

        assert_eq!(s.gc().unwrap(), GcStats::default());
        s.remove("localhost:5000/a:1").unwrap();
        assert!(matches!(
            s.remove("localhost:5000/a:1"),
            Err(StoreError::NoImage(_))
        ));
        let stats = s.gc().unwrap();
        assert_eq!((stats.blobs, stats.rootfs), (3, 1));
        assert!(!s.has_blob(&a.layers[0].digest));
        assert!(s.has_blob(&b.layers[0].digest));
        assert_eq!(s.list().unwrap(), vec![b]);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn reading_the_index_does_not_rewrite_it() {
        let (s, dir) = store();
        s.add_image(record(&s, "localhost:5000/a:1", b"layer a"))
            .unwrap();
        let index = s.root().join("index.json");
        let written = fs::metadata(&index).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        s.list().unwrap();
        s.get("localhost:5000/a:1").unwrap();
        assert_eq!(fs::metadata(&index).unwrap().modified().unwrap(), written);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn an_abandoned_writer_leaves_nothing() {
        let (s, dir) = store();
        let mut w = s.blob_writer().unwrap();
        w.write_all(b"partial").unwrap();
        drop(w);
        assert_eq!(fs::read_dir(s.tmp_dir()).unwrap().count(), 0);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn concurrent_writers_of_one_blob_agree() {
        let (s, dir) = store();
        let s = std::sync::Arc::new(s);
        let data = vec![7u8; 1 << 20];
        let d = Digest::of(&data);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (s, data, d) = (s.clone(), data.clone(), d.clone());
                std::thread::spawn(move || {
                    let mut w = s.blob_writer().unwrap();
                    w.write_all(&data).unwrap();
                    s.commit(w, &d).unwrap();
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(s.read_blob(&d).unwrap(), data);
        fs::remove_dir_all(dir).unwrap();
    }
}
