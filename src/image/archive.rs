//! Importing `docker save` archives and OCI image layouts (directories or
//! tarballs, plain, gzip or zstd), and exporting an image as an OCI image
//! layout.
//!
//! A tarball is never extracted. A first pass reads its headers (seeking
//! past the data of a plain archive; decompressing and discarding it
//! otherwise) and keeps only small JSON documents. From `manifest.json` or
//! `index.json` the import then knows which entries it needs, and what
//! each must be: an OCI blob its descriptor's digest and size, a `docker
//! save` layer its config's diff_id. Before any byte is written, the
//! archive must not hold more than what its manifest and index declare
//! (plus a little slack for the files `docker save` adds), nor more than
//! the unpack limit. A second pass then streams the needed entries, and
//! only those, into the store's temporary blob files, hashing as they go;
//! each blob lands in the store only once it checks out.
//!
//! Errors name the path the user gave, never a scratch path, and whatever
//! of the user's input they echo goes through [`crate::text`].

use std::collections::hash_map::Entry as MapEntry;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use super::digest::{Digest, DigestError};
use super::reference::{ImageRef, ReferenceError};
use super::store::{BlobWriter, ImageRecord, LayerRecord, Store, StoreError};
use super::tarscan::{
    checksum_ok, read_full, Catalog, Entry, FileInput, Input, Kind, Resolved, ScanError,
    StreamInput, Walker,
};
use super::unpack::{decompress, resolve_in_root, UnpackError, DEFAULT_UNPACK_LIMIT};
use crate::text::{echo, echo_path};

pub const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";

/// Largest JSON document an import reads: `manifest.json`, `index.json`,
/// an image config, manifest or index.
pub const MAX_JSON: u64 = 4 << 20;
/// Most JSON an import keeps in memory: the small JSON entries of a
/// compressed archive (between its two passes), and apart from those the
/// configs, manifests and indexes it will store.
pub const MAX_JSON_TOTAL: u64 = 64 << 20;
/// Data an archive may hold beyond what its manifest and index declare:
/// `docker save` adds a `json` and a `VERSION` file per layer and a
/// `repositories` file.
pub const UNDECLARED_SLACK: u64 = 32 << 20;
/// Most bytes an archive may hold, or unpack to when compressed.
pub const MAX_ARCHIVE: u64 = DEFAULT_UNPACK_LIMIT;
/// How much of a pipe is read to see whether it holds a tar archive
/// (enough for a compressed one's first block).
const SNIFF: usize = 256 * 1024;
/// Deepest nesting of indexes followed to a manifest.
const MAX_INDEX_DEPTH: usize = 4;
/// Most images one `manifest.json` or `index.json` may list.
const MAX_IMAGES: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The user's path cannot be opened or read.
    #[error("cannot read {path}: {err}")]
    Io { path: String, err: io::Error },
    #[error("{path} is neither a docker save archive nor an OCI image layout: {why}")]
    UnknownFormat { path: String, why: String },
    /// Something about the archive at `archive` (the user's path).
    #[error("cannot import {archive}: {err}")]
    In {
        archive: String,
        err: Box<ArchiveError>,
    },
    /// Reading the archive failed (named by [`ArchiveError::Io`] once
    /// the user's path is known).
    #[error("cannot read the archive: {0}")]
    Read(io::Error),
    #[error("{0}")]
    Scan(#[from] ScanError),
    #[error("invalid {what}: {err}")]
    Json { what: String, err: String },
    #[error("{0}")]
    Invalid(String),
    #[error("layer {index} does not match the config's diff_id {expected} (got {actual})")]
    DiffIdMismatch {
        index: usize,
        expected: String,
        actual: String,
    },
    #[error("cannot write {path}: {err}")]
    Write { path: String, err: io::Error },
    #[error(transparent)]
    Digest(#[from] DigestError),
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

type Result<T> = std::result::Result<T, ArchiveError>;

fn read_err(path: &Path) -> impl FnOnce(io::Error) -> ArchiveError + '_ {
    move |err| ArchiveError::Io {
        path: echo_path(path),
        err,
    }
}

fn write_err(path: &Path) -> impl FnOnce(io::Error) -> ArchiveError + '_ {
    move |err| ArchiveError::Write {
        path: echo_path(path),
        err,
    }
}

fn invalid(msg: impl Into<String>) -> ArchiveError {
    ArchiveError::Invalid(msg.into())
}

fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|err| ArchiveError::Json {
        what: what.to_string(),
        err: echo(&err.to_string()).into_owned(),
    })
}

fn human(bytes: u64) -> String {
    if bytes < 1 << 20 {
        format!("{bytes} bytes")
    } else if bytes < 1 << 30 {
        format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
    } else {
        format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
    }
}

/// The name of a blob in an OCI image layout.
fn blob_name(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

/// A file of the archive, found by name.
#[derive(Clone, Debug)]
struct FileRef {
    /// The source's handle on it: two names for one file share it.
    id: usize,
    /// The name it was asked for, printable.
    shown: String,
    size: u64,
}

/// What an import reads from: a directory, or a tarball scanned up front.
trait Source {
    /// The regular file `name` names in the archive (links followed, and
    /// kept inside the archive); None when there is none.
    fn file(&mut self, name: &str) -> Result<Option<FileRef>>;
    /// A JSON document, at most [`MAX_JSON`] bytes.
    fn json(&mut self, f: &FileRef) -> Result<Vec<u8>>;
    /// Refuses an archive holding much more than the files in `declared`.
    fn check_declared(&self, declared: &BTreeSet<usize>) -> Result<()>;
    /// Hands each file of `wanted` to `take` once, as a reader that ends
    /// exactly at its size, in whatever order suits the source.
    fn fetch(
        &mut self,
        wanted: &BTreeSet<usize>,
        take: &mut dyn FnMut(usize, &mut dyn Read) -> Result<()>,
    ) -> Result<()>;
}

/// A reader that must yield exactly `left` bytes.
struct Exact<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file ended early",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

fn too_big_json(f: &FileRef) -> ArchiveError {
    invalid(format!(
        "{} is {}, more than the {} a JSON document may have",
        f.shown,
        human(f.size),
        human(MAX_JSON)
    ))
}

/// An image layout or `docker save` output, extracted in a directory.
struct DirSource {
    root: PathBuf,
    files: Vec<PathBuf>,
    ids: HashMap<PathBuf, usize>,
}

/// A path named inside an archive, kept inside it: `..` is refused and
/// symlinks (which `docker save` uses between layers) resolve within it.
fn inside(root: &Path, name: &str) -> Result<PathBuf> {
    let rel = Path::new(name);
    if rel
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(invalid(format!(
            "archive path {} leaves the archive",
            echo(name)
        )));
    }
    resolve_in_root(root, rel, name).map_err(|e| match e {
        UnpackError::SymlinkLoop { .. } => invalid(format!(
            "archive path {} resolves through too many symlinks",
            echo(name)
        )),
        UnpackError::Io { err, .. } => ArchiveError::Read(err),
        other => invalid(format!("archive path {}: {other}", echo(name))),
    })
}

impl Source for DirSource {
    fn file(&mut self, name: &str) -> Result<Option<FileRef>> {
        let path = inside(&self.root, name)?;
        let meta = match fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(read_err(&path)(e)),
        };
        if !meta.is_file() {
            return Err(invalid(format!("{} is not a regular file", echo(name))));
        }
        let next = self.files.len();
        let id = *self.ids.entry(path.clone()).or_insert(next);
        if id == next {
            self.files.push(path);
        }
        Ok(Some(FileRef {
            id,
            shown: echo(name).into_owned(),
            size: meta.len(),
        }))
    }

    fn json(&mut self, f: &FileRef) -> Result<Vec<u8>> {
        if f.size > MAX_JSON {
            return Err(too_big_json(f));
        }
        let path = &self.files[f.id];
        let mut data = Vec::new();
        File::open(path)
            .and_then(|file| file.take(MAX_JSON + 1).read_to_end(&mut data))
            .map_err(read_err(path))?;
        if data.len() as u64 > MAX_JSON {
            return Err(too_big_json(f));
        }
        Ok(data)
    }

    fn check_declared(&self, _declared: &BTreeSet<usize>) -> Result<()> {
        // Nothing is unpacked from a directory; what else it holds costs
        // nothing.
        Ok(())
    }

    fn fetch(
        &mut self,
        wanted: &BTreeSet<usize>,
        take: &mut dyn FnMut(usize, &mut dyn Read) -> Result<()>,
    ) -> Result<()> {
        for &id in wanted {
            let path = &self.files[id];
            let file = File::open(path).map_err(read_err(path))?;
            let size = file.metadata().map_err(read_err(path))?.len();
            let mut r = Exact {
                inner: BufReader::with_capacity(1 << 20, file),
                left: size,
            };
            take(id, &mut r)?;
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// The compression `head` (a file's first 512 bytes, or all of a
    /// shorter one) shows; a tar header means none, whatever its name.
    fn of(head: &[u8]) -> Result<Compression> {
        if <&[u8; 512]>::try_from(head).is_ok_and(checksum_ok) {
            return Ok(Compression::None);
        }
        Ok(match head {
            [0x1f, 0x8b, ..] => Compression::Gzip,
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Compression::Zstd,
            [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => {
                return Err(invalid(
                    "xz-compressed archives are not supported; decompress it first (xz -d)",
                ))
            }
            [b'B', b'Z', b'h', b'1'..=b'9', ..] => {
                return Err(invalid(
                    "bzip2-compressed archives are not supported; decompress it first (bzip2 -d)",
                ))
            }
            _ => Compression::None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Compression::None => "",
            Compression::Gzip => "gzip-compressed ",
            Compression::Zstd => "zstd-compressed ",
        }
    }
}

/// Whether `data` looks like a JSON object or array.
fn looks_like_json(data: &[u8]) -> bool {
    let data = data.strip_prefix(b"\xef\xbb\xbf").unwrap_or(data);
    matches!(
        data.iter().find(|b| !b.is_ascii_whitespace()),
        Some(b'{' | b'[')
    )
}

/// A tarball, its entries catalogued by a first pass.
struct TarSource {
    file: File,
    compression: Compression,
    catalog: Catalog,
    /// Data of every entry in the archive, records included.
    data_total: u64,
    /// Small JSON entries of a compressed archive, by ordinal (a plain
    /// archive's are read in place).
    json: HashMap<usize, Vec<u8>>,
    /// The copy of a stream that could not be read twice.
    _spool: Option<BlobWriter>,
}

impl TarSource {
    /// Catalogues the archive in `file`. Errors are about the archive, for
    /// the caller to name.
    fn scan(file: File, spool: Option<BlobWriter>) -> Result<TarSource> {
        let len = file.metadata().map_err(ArchiveError::Read)?.len();
        if len == 0 {
            return Err(ArchiveError::UnknownFormat {
                path: String::new(),
                why: "it is empty".into(),
            });
        }
        let mut head = [0u8; 512];
        let n = read_at_most(&file, &mut head, 0).map_err(ArchiveError::Read)?;
        let compression = Compression::of(&head[..n])?;
        let mut src = TarSource {
            file,
            compression,
            catalog: Catalog::default(),
            data_total: 0,
            json: HashMap::new(),
            _spool: spool,
        };
        let r = if compression == Compression::None {
            let mut w = Walker::new(FileInput::new(&src.file, len), MAX_ARCHIVE);
            let r = scan_all(&mut w, &mut src.catalog, |_, _| Ok(()));
            src.data_total = w.data_total();
            r
        } else {
            let stream = decompress(&src.file).map_err(ArchiveError::Read)?;
            let mut w = Walker::new(StreamInput(stream), MAX_ARCHIVE);
            let mut json_total = 0;
            let json = &mut src.json;
            let r = scan_all(&mut w, &mut src.catalog, |e, data| {
                if e.kind != Kind::File || e.size == 0 || e.size > MAX_JSON {
                    return Ok(());
                }
                let mut buf = Vec::with_capacity(e.size as usize);
                data.read_to_end(&mut buf).map_err(ArchiveError::Read)?;
                if looks_like_json(&buf) {
                    json_total += buf.len() as u64;
                    if json_total > MAX_JSON_TOTAL {
                        return Err(invalid(format!(
                            "the archive holds more than {} of JSON",
                            human(MAX_JSON_TOTAL)
                        )));
                    }
                    json.insert(e.ordinal, buf);
                }
                Ok(())
            });
            src.data_total = w.data_total();
            r
        };
        match r {
            Err(ArchiveError::Scan(ScanError::NotTar)) => Err(ArchiveError::UnknownFormat {
                path: String::new(),
                why: format!("it is not a {}tar archive", compression.name()),
            }),
            // Junk that starts like a compressed file.
            Err(ArchiveError::Scan(ScanError::Io(e)) | ArchiveError::Read(e))
                if src.catalog.is_empty() && compression != Compression::None =>
            {
                Err(ArchiveError::UnknownFormat {
                    path: String::new(),
                    why: format!("it is not a {}tar archive ({e})", compression.name()),
                })
            }
            Err(ArchiveError::Scan(ScanError::Io(e))) => Err(ArchiveError::Read(e)),
            Err(e) => Err(e),
            Ok(()) => Ok(src),
        }
    }
}

/// Reads up to `buf.len()` bytes at `offset`; returns how many.
fn read_at_most(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], offset + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Walks the whole archive into `catalog`, letting `look` read entries'
/// data as they pass.
fn scan_all<I: Input>(
    w: &mut Walker<I>,
    catalog: &mut Catalog,
    mut look: impl FnMut(&Entry, &mut dyn Read) -> Result<()>,
) -> Result<()> {
    while let Some(e) = w.next_entry()? {
        look(&e, &mut w.data())?;
        catalog.add(e)?;
    }
    Ok(())
}

impl Source for TarSource {
    fn file(&mut self, name: &str) -> Result<Option<FileRef>> {
        if Path::new(name)
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(invalid(format!(
                "archive path {} leaves the archive",
                echo(name)
            )));
        }
        match self.catalog.resolve(name) {
            Resolved::File(id) => Ok(Some(FileRef {
                id,
                shown: echo(name).into_owned(),
                size: self.catalog.get(id).size,
            })),
            Resolved::Missing => Ok(None),
            Resolved::NotFile => Err(invalid(format!(
                "{} is not a regular file in the archive",
                echo(name)
            ))),
            Resolved::Loop => Err(invalid(format!(
                "archive path {} resolves through too many symlinks",
                echo(name)
            ))),
        }
    }

    fn json(&mut self, f: &FileRef) -> Result<Vec<u8>> {
        if f.size > MAX_JSON {
            return Err(too_big_json(f));
        }
        if self.compression != Compression::None {
            return self
                .json
                .get(&f.id)
                .cloned()
                .ok_or_else(|| invalid(format!("{} is not a JSON document", f.shown)));
        }
        let e = self.catalog.get(f.id);
        let mut buf = vec![0u8; e.size as usize];
        self.file
            .read_exact_at(&mut buf, e.offset)
            .map_err(ArchiveError::Read)?;
        Ok(buf)
    }

    fn check_declared(&self, declared: &BTreeSet<usize>) -> Result<()> {
        let declared_bytes: u64 = declared.iter().map(|&id| self.catalog.get(id).size).sum();
        let undeclared = self.data_total.saturating_sub(declared_bytes);
        if undeclared > UNDECLARED_SLACK {
            return Err(invalid(format!(
                "it holds {} of data that neither its manifest nor its index declares \
                 (at most {} is allowed); nothing was imported",
                human(undeclared),
                human(UNDECLARED_SLACK)
            )));
        }
        Ok(())
    }

    fn fetch(
        &mut self,
        wanted: &BTreeSet<usize>,
        take: &mut dyn FnMut(usize, &mut dyn Read) -> Result<()>,
    ) -> Result<()> {
        if wanted.is_empty() {
            return Ok(());
        }
        if self.compression == Compression::None {
            // Straight to each entry's data.
            let mut order: Vec<usize> = wanted.iter().copied().collect();
            order.sort_by_key(|&id| self.catalog.get(id).offset);
            for id in order {
                let e = self.catalog.get(id);
                let mut f = &self.file;
                f.seek(SeekFrom::Start(e.offset))
                    .map_err(ArchiveError::Read)?;
                let mut r = Exact {
                    inner: BufReader::with_capacity(1 << 20, f.take(e.size)),
                    left: e.size,
                };
                take(id, &mut r)?;
            }
            return Ok(());
        }
        // A compressed archive is read again from the start; only the
        // wanted entries are read out, and the pass ends with the last.
        let mut f = &self.file;
        f.seek(SeekFrom::Start(0)).map_err(ArchiveError::Read)?;
        let stream = decompress(f).map_err(ArchiveError::Read)?;
        let mut w = Walker::new(StreamInput(stream), MAX_ARCHIVE);
        let mut left = wanted.len();
        while left > 0 {
            let e = w.next_entry().map_err(|e| match e {
                ScanError::Io(e) => ArchiveError::Read(e),
                e => ArchiveError::Scan(e),
            })?;
            let Some(e) = e else { break };
            if !wanted.contains(&e.ordinal) {
                continue;
            }
            let known = self.catalog.get(e.ordinal);
            if known.name != e.name || known.size != e.size {
                break;
            }
            take(e.ordinal, &mut w.data())?;
            left -= 1;
        }
        if left > 0 {
            return Err(invalid("the archive changed while it was being read"));
        }
        Ok(())
    }
}

/// Opens what the user named as a source.
fn open_source(store: &Store, path: &Path) -> Result<Box<dyn Source>> {
    let meta = fs::metadata(path).map_err(read_err(path))?;
    if meta.is_dir() {
        return Ok(Box::new(DirSource {
            root: path.to_path_buf(),
            files: Vec::new(),
            ids: HashMap::new(),
        }));
    }
    let mut file = File::open(path).map_err(read_err(path))?;
    let unknown = |why: String| ArchiveError::UnknownFormat {
        path: echo_path(path),
        why,
    };
    let in_archive = |err| about(path, err);
    let spool = if meta.is_file() {
        None
    } else {
        // A pipe or a device: keep a copy (as it comes, still compressed)
        // to read it twice, once its start shows a tar archive.
        let mut head = vec![0u8; SNIFF];
        let n = read_full(&mut file, &mut head).map_err(read_err(path))?;
        head.truncate(n);
        if head.is_empty() {
            return Err(unknown("it is empty".into()));
        }
        let compression = Compression::of(&head).map_err(in_archive)?;
        let mut block = [0u8; 512];
        let whole = match compression {
            Compression::None => read_full(&mut &head[..], &mut block).ok(),
            _ => decompress(&head[..])
                .and_then(|mut r| read_full(&mut r, &mut block))
                .ok(),
        } == Some(512);
        if whole && block.iter().all(|&b| b == 0) {
            return Err(unknown(format!(
                "it is an empty {}tar archive",
                compression.name()
            )));
        }
        if !(whole && checksum_ok(&block)) {
            return Err(unknown(format!(
                "it is not a {}tar archive",
                compression.name()
            )));
        }
        let head = &head[..];
        let mut w = store.blob_writer()?;
        copy(&mut head.chain(&mut file), &mut w, MAX_ARCHIVE).map_err(in_archive)?;
        let copy = w.reopen()?;
        file = copy;
        Some(w)
    };
    let src = TarSource::scan(file, spool).map_err(in_archive)?;
    if src.catalog.is_empty() {
        return Err(unknown(format!(
            "it is an empty {}tar archive",
            src.compression.name()
        )));
    }
    Ok(Box::new(src))
}

/// Copies `r` into a blob writer, at most `limit` bytes: read errors are
/// the archive's, write errors the store's.
fn copy(r: &mut dyn Read, w: &mut BlobWriter, limit: u64) -> Result<u64> {
    use std::io::Write;
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ArchiveError::Read(e)),
        };
        total += n as u64;
        if total > limit {
            return Err(invalid(format!("it is larger than {}", human(limit))));
        }
        w.write_all(&buf[..n]).map_err(|err| {
            ArchiveError::Store(StoreError::Io {
                path: w.path().display().to_string(),
                err,
            })
        })?;
    }
}

/// Imports every image in `path` (a file or directory). `tag` names the
/// image when the archive does not, or overrides it when it holds one.
pub fn import(store: &Store, path: &Path, tag: Option<&str>) -> Result<Vec<ImageRecord>> {
    let _pin = store.pin()?;
    let mut src = open_source(store, path)?;
    import_from(store, &mut *src, tag).map_err(|err| about(path, err))
}

/// An error met in the archive at `path`, naming it.
fn about(path: &Path, err: ArchiveError) -> ArchiveError {
    match err {
        ArchiveError::UnknownFormat { why, .. } => ArchiveError::UnknownFormat {
            path: echo_path(path),
            why,
        },
        ArchiveError::Read(err) => read_err(path)(err),
        err @ (ArchiveError::Io { .. } | ArchiveError::In { .. }) => err,
        err => ArchiveError::In {
            archive: echo_path(path),
            err: Box::new(err),
        },
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerSaveEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

#[derive(Deserialize, Clone)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    #[serde(default)]
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    platform: Option<Value>,
}

#[derive(Deserialize)]
struct Index {
    manifests: Vec<Descriptor>,
}

/// What a file the import needs must turn out to be.
enum Want {
    /// An OCI blob: the digest its name and descriptor give, and the size
    /// its descriptor declares.
    Blob(Digest, u64),
    /// A `docker save` layer: (layer index, the config's diff_id) for
    /// each image that uses it.
    Layer(Vec<(usize, String)>),
}

enum Layers {
    Oci {
        manifest: Digest,
        layers: Vec<LayerRecord>,
    },
    /// A `docker save` image's manifest is built once its layers are in.
    Docker {
        config_size: usize,
        layers: Vec<usize>,
    },
}

struct PlannedImage {
    refs: Vec<String>,
    config: Digest,
    layers: Layers,
}

/// Everything an import will do, worked out from the archive's JSON
/// before any of its data is read.
#[derive(Default)]
struct Plan {
    images: Vec<PlannedImage>,
    /// Files to bring into the store, by source id.
    wanted: BTreeMap<usize, Want>,
    /// Configs, manifests and indexes, already checked.
    json: BTreeMap<Digest, Vec<u8>>,
    json_bytes: u64,
    /// Files the archive's manifest or index accounts for.
    declared: BTreeSet<usize>,
}

impl Plan {
    /// Keeps a checked JSON blob for the store, within
    /// [`MAX_JSON_TOTAL`] in all.
    fn keep_json(&mut self, digest: Digest, bytes: Vec<u8>) -> Result<()> {
        if !self.json.contains_key(&digest) {
            self.json_bytes += bytes.len() as u64;
            if self.json_bytes > MAX_JSON_TOTAL {
                return Err(invalid(format!(
                    "its images' configs and manifests add up to more than {}",
                    human(MAX_JSON_TOTAL)
                )));
            }
            self.json.insert(digest, bytes);
        }
        Ok(())
    }

    fn want_blob(&mut self, f: &FileRef, digest: &Digest, size: u64) {
        self.declared.insert(f.id);
        self.wanted
            .entry(f.id)
            .or_insert_with(|| Want::Blob(digest.clone(), size));
    }
}

fn missing(name: &str) -> ArchiveError {
    invalid(format!("the archive has no {}", echo(name)))
}

/// An OCI blob the import needs, checked against its descriptor.
fn oci_blob(src: &mut dyn Source, d: &Descriptor) -> Result<(Digest, FileRef)> {
    let digest = Digest::parse(&d.digest)?;
    let f = src
        .file(&blob_name(&digest))?
        .ok_or_else(|| missing(&blob_name(&digest)))?;
    if f.size != d.size {
        return Err(invalid(format!(
            "blob {digest} is {} bytes in the archive, but its descriptor declares {}",
            f.size, d.size
        )));
    }
    Ok((digest, f))
}

/// A JSON blob (index, manifest or config) of an OCI layout, checked and
/// kept in `plan.json` (read once, however often it is named).
fn oci_json(src: &mut dyn Source, plan: &mut Plan, d: &Descriptor) -> Result<Digest> {
    let (digest, f) = oci_blob(src, d)?;
    plan.declared.insert(f.id);
    if !plan.json.contains_key(&digest) {
        let bytes = src.json(&f)?;
        let actual = Digest::of(&bytes);
        if actual != digest {
            return Err(StoreError::DigestMismatch {
                expected: digest,
                actual,
                size: bytes.len() as u64,
            }
            .into());
        }
        plan.keep_json(digest.clone(), bytes)?;
    }
    Ok(digest)
}

fn names(tag: Option<&str>, found: Vec<String>, fallback: &Digest) -> Result<Vec<String>> {
    if let Some(t) = tag {
        return Ok(vec![ImageRef::parse(t)?.canonical()]);
    }
    if found.is_empty() {
        return Ok(vec![fallback.to_string()]);
    }
    found
        .iter()
        .map(|n| Ok(ImageRef::parse(n)?.canonical()))
        .collect()
}

fn import_from(store: &Store, src: &mut dyn Source, tag: Option<&str>) -> Result<Vec<ImageRecord>> {
    let mut plan = Plan::default();
    if let Some(manifest) = src.file("manifest.json")? {
        plan_docker_save(src, &mut plan, &manifest, tag)?;
        // A newer `docker save` is also an OCI layout.
        declare_layout(src, &mut plan);
    } else if let (Some(index), Some(_)) = (src.file("index.json")?, src.file("oci-layout")?) {
        plan_oci_layout(src, &mut plan, &index, tag)?;
        declare_layout(src, &mut plan);
    } else {
        return Err(ArchiveError::UnknownFormat {
            path: String::new(),
            why: "it has neither a manifest.json nor an index.json and oci-layout".into(),
        });
    }
    src.check_declared(&plan.declared)?;

    // Blobs the store already holds need not be read again.
    let wanted: BTreeSet<usize> = plan
        .wanted
        .iter()
        .filter(|(_, w)| !matches!(w, Want::Blob(d, _) if store.has_blob(d)))
        .map(|(&id, _)| id)
        .collect();
    let mut fetched: HashMap<usize, LayerRecord> = HashMap::new();
    src.fetch(&wanted, &mut |id, r| {
        let want = &plan.wanted[&id];
        let mut w = store.blob_writer()?;
        match want {
            Want::Blob(digest, size) => {
                // The sizes were checked; this holds should the file grow.
                copy(r, &mut w, *size).map_err(|e| match e {
                    ArchiveError::Invalid(_) => invalid(format!(
                        "blob {digest} is larger than the {size} bytes its descriptor declares"
                    )),
                    e => e,
                })?;
                store.commit(w, digest)?;
            }
            Want::Layer(expected) => {
                copy(r, &mut w, MAX_ARCHIVE)?;
                let (diff_id, media_type) = layer_facts(&mut w)?;
                for (index, want) in expected {
                    if &diff_id != want {
                        return Err(ArchiveError::DiffIdMismatch {
                            index: *index,
                            expected: echo(want).into_owned(),
                            actual: diff_id,
                        });
                    }
                }
                let (digest, size) = store.commit_computed(w)?;
                fetched.insert(
                    id,
                    LayerRecord {
                        digest,
                        media_type: media_type.to_string(),
                        size,
                    },
                );
            }
        }
        Ok(())
    })?;

    for bytes in plan.json.values() {
        store.put_blob(bytes)?;
    }
    let mut out = Vec::new();
    for image in plan.images {
        let (manifest, layers) = match image.layers {
            Layers::Oci { manifest, layers } => (manifest, layers),
            Layers::Docker {
                config_size,
                layers,
            } => {
                let layers: Vec<LayerRecord> = layers
                    .iter()
                    .map(|id| {
                        fetched
                            .get(id)
                            .cloned()
                            .ok_or_else(|| invalid("a layer was not read"))
                    })
                    .collect::<Result<_>>()?;
                let manifest = json!({
                    "schemaVersion": 2,
                    "mediaType": MEDIA_OCI_MANIFEST,
                    "config": {
                        "mediaType": MEDIA_OCI_CONFIG,
                        "digest": image.config,
                        "size": config_size,
                    },
                    "layers": layers.iter().map(|l| json!({
                        "mediaType": l.media_type,
                        "digest": l.digest,
                        "size": l.size,
                    })).collect::<Vec<_>>(),
                });
                (store.put_blob(manifest.to_string().as_bytes())?, layers)
            }
        };
        for reference in image.refs {
            let record = ImageRecord {
                reference,
                manifest: manifest.clone(),
                config: image.config.clone(),
                layers: layers.clone(),
            };
            store.add_image(record.clone())?;
            out.push(record);
        }
    }
    Ok(out)
}

/// A layer blob's diff_id (the sha256 of its uncompressed tar stream) and
/// media type, read back from the store's temporary file.
fn layer_facts(w: &mut BlobWriter) -> Result<(String, &'static str)> {
    let file = w.reopen()?;
    let store_err = |err: io::Error| StoreError::Io {
        path: w.path().display().to_string(),
        err,
    };
    let mut head = [0u8; 4];
    let n = read_at_most(&file, &mut head, 0).map_err(store_err)?;
    let media_type = match &head[..n] {
        [0x1f, 0x8b, ..] => "application/vnd.oci.image.layer.v1.tar+gzip",
        [0x28, 0xb5, 0x2f, 0xfd] => "application/vnd.oci.image.layer.v1.tar+zstd",
        _ => "application/vnd.oci.image.layer.v1.tar",
    };
    // A decompression error is the layer's fault, not the store's.
    let broken = |e: io::Error| invalid(format!("a layer cannot be decompressed: {e}"));
    let mut r = decompress(file).map_err(broken)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => h.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(broken(e)),
        }
    }
    Ok((format!("sha256:{:x}", h.finalize()), media_type))
}

fn plan_docker_save(
    src: &mut dyn Source,
    plan: &mut Plan,
    manifest: &FileRef,
    tag: Option<&str>,
) -> Result<()> {
    plan.declared.insert(manifest.id);
    let entries: Vec<DockerSaveEntry> = parse(&src.json(manifest)?, "manifest.json")?;
    if entries.is_empty() {
        return Err(invalid("manifest.json lists no images"));
    }
    if entries.len() > MAX_IMAGES {
        return Err(invalid(format!(
            "manifest.json lists more than {MAX_IMAGES} images"
        )));
    }
    // Configs by source id: images that share one read it once.
    let mut configs: HashMap<usize, (Digest, usize, Vec<String>)> = HashMap::new();
    for entry in entries {
        let config_file = src
            .file(&entry.config)?
            .ok_or_else(|| missing(&entry.config))?;
        plan.declared.insert(config_file.id);
        let (config, config_size, diff_ids) = match configs.entry(config_file.id) {
            MapEntry::Occupied(o) => o.into_mut(),
            MapEntry::Vacant(v) => {
                let config_bytes = src.json(&config_file)?;
                let config_json: Value =
                    parse(&config_bytes, &format!("config {}", config_file.shown))?;
                let diff_ids: Vec<String> = config_json["rootfs"]["diff_ids"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|v| v.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default();
                let digest = Digest::of(&config_bytes);
                let size = config_bytes.len();
                plan.keep_json(digest.clone(), config_bytes)?;
                v.insert((digest, size, diff_ids))
            }
        };
        if diff_ids.len() != entry.layers.len() {
            return Err(invalid(format!(
                "the config lists {} layers but the archive has {}",
                diff_ids.len(),
                entry.layers.len()
            )));
        }
        let mut layers = Vec::new();
        for (index, name) in entry.layers.iter().enumerate() {
            let f = src.file(name)?.ok_or_else(|| missing(name))?;
            plan.declared.insert(f.id);
            let want = plan
                .wanted
                .entry(f.id)
                .or_insert_with(|| Want::Layer(Vec::new()));
            match want {
                Want::Layer(expected) => {
                    if !expected.iter().any(|(_, d)| d == &diff_ids[index]) {
                        expected.push((index, diff_ids[index].clone()));
                    }
                }
                Want::Blob(..) => unreachable!("docker save imports want layers only"),
            }
            layers.push(f.id);
        }
        let refs = names(tag, entry.repo_tags.unwrap_or_default(), config)?;
        plan.images.push(PlannedImage {
            refs,
            config: config.clone(),
            layers: Layers::Docker {
                config_size: *config_size,
                layers,
            },
        });
    }
    Ok(())
}

fn is_linux_amd64(d: &Descriptor) -> bool {
    d.platform.as_ref().is_some_and(|p| {
        p["os"].as_str() == Some("linux") && p["architecture"].as_str() == Some("amd64")
    })
}

fn is_index(media_type: &str) -> bool {
    media_type == MEDIA_OCI_INDEX || media_type == MEDIA_DOCKER_LIST
}

fn plan_oci_layout(
    src: &mut dyn Source,
    plan: &mut Plan,
    index_file: &FileRef,
    tag: Option<&str>,
) -> Result<()> {
    plan.declared.insert(index_file.id);
    let index: Index = parse(&src.json(index_file)?, "index.json")?;
    if index.manifests.len() > MAX_IMAGES {
        return Err(invalid(format!(
            "index.json lists more than {MAX_IMAGES} images"
        )));
    }
    // Each index and manifest is worked out once, however many entries
    // name it.
    let mut chosen: HashMap<Digest, Descriptor> = HashMap::new();
    let mut resolved: HashMap<Digest, (Digest, Vec<LayerRecord>)> = HashMap::new();
    for top in index.manifests {
        let mut desc = top.clone();
        // Follow nested indexes down to the linux/amd64 manifest.
        let mut depth = 0;
        while is_index(&desc.media_type) {
            depth += 1;
            if depth > MAX_INDEX_DEPTH {
                return Err(invalid(format!(
                    "indexes nest more than {MAX_INDEX_DEPTH} deep"
                )));
            }
            let digest = oci_json(src, plan, &desc)?;
            if let Some(d) = chosen.get(&digest) {
                desc = d.clone();
                continue;
            }
            let nested: Index = parse(&plan.json[&digest], &format!("index {digest}"))?;
            desc = nested
                .manifests
                .iter()
                .find(|m| is_linux_amd64(m))
                .cloned()
                .ok_or_else(|| invalid(format!("index {digest} has no linux/amd64 image")))?;
            chosen.insert(digest, desc.clone());
        }
        let manifest = oci_json(src, plan, &desc)?;
        let (config, layers) = match resolved.get(&manifest) {
            Some(r) => r.clone(),
            None => {
                let r = plan_oci_manifest(src, plan, &manifest)?;
                resolved.insert(manifest.clone(), r.clone());
                r
            }
        };
        let found: Vec<String> = top
            .annotations
            .get(ANNOTATION_CONTAINERD_NAME)
            .or_else(|| top.annotations.get(ANNOTATION_REF_NAME))
            .map(|n| {
                // A bare tag names an image in the local namespace.
                if n.contains('/') || n.contains('@') {
                    n.clone()
                } else {
                    format!("localhost/import:{n}")
                }
            })
            .into_iter()
            .collect();
        let refs = names(tag, found, &manifest)?;
        plan.images.push(PlannedImage {
            refs,
            config,
            layers: Layers::Oci { manifest, layers },
        });
    }
    Ok(())
}

/// The config and layers of a manifest already in `plan.json`; its layers
/// are wanted.
fn plan_oci_manifest(
    src: &mut dyn Source,
    plan: &mut Plan,
    manifest: &Digest,
) -> Result<(Digest, Vec<LayerRecord>)> {
    let m: Value = parse(&plan.json[manifest], &format!("manifest {manifest}"))?;
    let json_err = |what: String| {
        move |err: serde_json::Error| ArchiveError::Json {
            what,
            err: echo(&err.to_string()).into_owned(),
        }
    };
    let config_desc = Descriptor::deserialize(&m["config"])
        .map_err(json_err(format!("config descriptor in {manifest}")))?;
    let layer_descs = Vec::<Descriptor>::deserialize(&m["layers"])
        .map_err(json_err(format!("layers in {manifest}")))?;
    let config = oci_json(src, plan, &config_desc)?;
    let mut layers = Vec::new();
    for l in &layer_descs {
        let (digest, f) = oci_blob(src, l)?;
        plan.want_blob(&f, &digest, l.size);
        layers.push(LayerRecord {
            digest,
            media_type: l.media_type.clone(),
            size: l.size,
        });
    }
    Ok((config, layers))
}

/// Declares every blob the layout's index reaches, on every platform,
/// even those the import skips: they count towards what the archive may
/// hold. A layout that cannot be read this way declares nothing more.
fn declare_layout(src: &mut dyn Source, plan: &mut Plan) {
    for name in ["index.json", "oci-layout"] {
        if let Ok(Some(f)) = src.file(name) {
            plan.declared.insert(f.id);
        }
    }
    let Some(index) = src
        .file("index.json")
        .ok()
        .flatten()
        .and_then(|f| src.json(&f).ok())
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
    else {
        return;
    };
    let mut todo = vec![(index, 0)];
    let mut seen = HashSet::new();
    while let Some((doc, depth)) = todo.pop() {
        let children = ["manifests", "layers"]
            .iter()
            .filter_map(|k| doc[k].as_array())
            .flatten()
            .chain(Some(&doc["config"]));
        for child in children {
            let Ok(d) = serde_json::from_value::<Descriptor>(child.clone()) else {
                continue;
            };
            let Ok(digest) = Digest::parse(&d.digest) else {
                continue;
            };
            if !seen.insert(digest.clone()) || seen.len() > super::tarscan::MAX_ENTRIES {
                continue;
            }
            let Ok(Some(f)) = src.file(&blob_name(&digest)) else {
                continue;
            };
            if f.size != d.size {
                continue;
            }
            plan.declared.insert(f.id);
            let nests = is_index(&d.media_type)
                || d.media_type == MEDIA_OCI_MANIFEST
                || d.media_type == MEDIA_DOCKER_MANIFEST;
            if nests && depth < MAX_INDEX_DEPTH {
                let doc = src
                    .json(&f)
                    .ok()
                    .filter(|b| Digest::of(b) == digest)
                    .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
                if let Some(doc) = doc {
                    todo.push((doc, depth + 1));
                }
            }
        }
    }
}

/// Writes `image` as an OCI image layout in directory `out`.
pub fn export_oci_layout(store: &Store, image: &ImageRecord, out: &Path) -> Result<()> {
    let blobs = out.join("blobs/sha256");
    fs::create_dir_all(&blobs).map_err(write_err(out))?;
    let manifest_bytes = store.read_blob(&image.manifest)?;
    let manifest: Value = parse(&manifest_bytes, &format!("manifest {}", image.manifest))?;
    let digests = [&image.manifest, &image.config]
        .into_iter()
        .chain(image.layers.iter().map(|l| &l.digest));
    for d in digests {
        let dst = blobs.join(d.hex());
        if dst.exists() {
            continue;
        }
        let src = store.blob_path(d);
        if fs::hard_link(&src, &dst).is_err() {
            fs::copy(&src, &dst).map_err(write_err(&dst))?;
        }
    }
    let media_type = manifest["mediaType"]
        .as_str()
        .unwrap_or(MEDIA_OCI_MANIFEST)
        .to_string();
    let index = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_OCI_INDEX,
        "manifests": [{
            "mediaType": media_type,
            "digest": image.manifest,
            "size": manifest_bytes.len(),
            "annotations": {
                ANNOTATION_REF_NAME: image.reference,
                ANNOTATION_CONTAINERD_NAME: image.reference,
            },
        }],
    });
    let write = |name: &str, data: String| {
        let p = out.join(name);
        fs::write(&p, data).map_err(write_err(&p))
    };
    write(
        "oci-layout",
        json!({"imageLayoutVersion": "1.0.0"}).to_string(),
    )?;
    write("index.json", index.to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_is_told_by_magic_unless_a_tar_header_says_otherwise() {
        assert_eq!(Compression::of(b"\x1f\x8b\x08").unwrap(), Compression::Gzip);
        assert_eq!(
            Compression::of(b"\x28\xb5\x2f\xfd").unwrap(),
            Compression::Zstd
        );
        assert!(Compression::of(b"\xfd7zXZ\0").is_err());
        assert!(Compression::of(b"BZh91AY&SY").is_err());
        assert_eq!(Compression::of(b"hello").unwrap(), Compression::None);
        // A plain tar whose first entry happens to be named like a magic.
        let mut h = tar::Header::new_ustar();
        h.set_path("BZh9-notes").unwrap();
        h.set_size(0);
        h.set_cksum();
        assert_eq!(Compression::of(h.as_bytes()).unwrap(), Compression::None);
    }

    #[test]
    fn json_is_told_from_layers() {
        assert!(looks_like_json(b"{\"a\": 1}"));
        assert!(looks_like_json(b"\xef\xbb\xbf \n[1]"));
        assert!(!looks_like_json(b"\x1f\x8b"));
        assert!(!looks_like_json(b"bin/busybox\0\0"));
        assert!(!looks_like_json(b"   "));
    }
}
