//! Importing `docker save` archives and OCI image layouts (directories or
//! tarballs), and exporting an image as an OCI image layout.
//!
//! Every blob is checked as it enters the store: OCI blobs against their
//! descriptors' digests, `docker save` layers against the config's
//! `rootfs.diff_ids`.

use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use super::digest::{Digest, DigestError};
use super::reference::{ImageRef, ReferenceError};
use super::store::{FileLock, ImageRecord, LayerRecord, Store, StoreError};
use super::unpack::{decompress, resolve_in_root, UnpackError, Unpacker};

pub const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("cannot read {path}: {err}")]
    Io { path: String, err: io::Error },
    #[error("cannot unpack the archive: {0}")]
    Unpack(#[from] UnpackError),
    #[error("{0} is neither a docker save archive nor an OCI image layout")]
    UnknownFormat(String),
    #[error("invalid {what}: {err}")]
    Json {
        what: String,
        err: serde_json::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("layer {index} does not match the config's diff_id {expected} (got {actual})")]
    DiffIdMismatch {
        index: usize,
        expected: String,
        actual: String,
    },
    #[error(transparent)]
    Digest(#[from] DigestError),
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

type Result<T> = std::result::Result<T, ArchiveError>;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ArchiveError + '_ {
    move |err| ArchiveError::Io {
        path: path.display().to_string(),
        err,
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = fs::read(path).map_err(io_err(path))?;
    serde_json::from_slice(&bytes).map_err(|err| ArchiveError::Json {
        what: path.display().to_string(),
        err,
    })
}

/// The layer media type its first bytes call for.
fn layer_media_type(path: &Path) -> Result<&'static str> {
    let mut head = [0u8; 4];
    let n = File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .map_err(io_err(path))?;
    Ok(match &head[..n] {
        [0x1f, 0x8b, ..] => "application/vnd.oci.image.layer.v1.tar+gzip",
        [0x28, 0xb5, 0x2f, 0xfd] => "application/vnd.oci.image.layer.v1.tar+zstd",
        _ => "application/vnd.oci.image.layer.v1.tar",
    })
}

/// A path named inside an archive, kept inside it: `..` is refused and
/// symlinks (which `docker save` uses between layers) resolve within it.
fn inside(root: &Path, name: &str) -> Result<PathBuf> {
    let rel = Path::new(name);
    if rel.is_absolute()
        || rel
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(ArchiveError::Invalid(format!(
            "archive path {name:?} leaves the archive"
        )));
    }
    Ok(resolve_in_root(root, rel, name)?)
}

/// Imports every image in `path` (a file or directory). `tag` names the
/// image when the archive does not, or overrides it when it holds one.
pub fn import(store: &Store, path: &Path, tag: Option<&str>) -> Result<Vec<ImageRecord>> {
    let _pin = store.pin()?;
    if path.is_dir() {
        return import_dir(store, path, tag);
    }
    // Tarballs are unpacked (safely) into the store's scratch space first.
    let scratch = store.temp_path("import");
    fs::create_dir(&scratch).map_err(io_err(&scratch))?;
    let lock = File::open(&scratch)
        .ok()
        .and_then(|f| FileLock::on(f, true, true).ok().flatten());
    let result = (|| {
        let f = File::open(path).map_err(io_err(path))?;
        Unpacker::new(&scratch).apply(BufReader::new(f))?;
        import_dir(store, &scratch, tag)
    })();
    drop(lock);
    let _ = fs::remove_dir_all(&scratch);
    result
}

fn import_dir(store: &Store, dir: &Path, tag: Option<&str>) -> Result<Vec<ImageRecord>> {
    if inside(dir, "manifest.json")?.is_file() {
        import_docker_save(store, dir, tag)
    } else if inside(dir, "index.json")?.is_file() && inside(dir, "oci-layout")?.is_file() {
        import_oci_layout(store, dir, tag)
    } else {
        Err(ArchiveError::UnknownFormat(dir.display().to_string()))
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

/// The sha256 of a layer's uncompressed tar stream (its diff_id).
fn diff_id(path: &Path) -> Result<String> {
    let f = File::open(path).map_err(io_err(path))?;
    let mut r = decompress(f).map_err(io_err(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("sha256:{:x}", h.finalize()))
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

/// Records one image under each of `refs`.
fn record_all(
    store: &Store,
    refs: Vec<String>,
    manifest: &Digest,
    config: &Digest,
    layers: &[LayerRecord],
) -> Result<Vec<ImageRecord>> {
    refs.into_iter()
        .map(|reference| {
            let record = ImageRecord {
                reference,
                manifest: manifest.clone(),
                config: config.clone(),
                layers: layers.to_vec(),
            };
            store.add_image(record.clone())?;
            Ok(record)
        })
        .collect()
}

fn import_docker_save(store: &Store, dir: &Path, tag: Option<&str>) -> Result<Vec<ImageRecord>> {
    let entries: Vec<DockerSaveEntry> = read_json(&inside(dir, "manifest.json")?)?;
    let mut out = Vec::new();
    for entry in entries {
        let config_path = inside(dir, &entry.config)?;
        let config_bytes = fs::read(&config_path).map_err(io_err(&config_path))?;
        let config_json: Value =
            serde_json::from_slice(&config_bytes).map_err(|err| ArchiveError::Json {
                what: entry.config.clone(),
                err,
            })?;
        let diff_ids: Vec<String> = config_json["rootfs"]["diff_ids"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        if diff_ids.len() != entry.layers.len() {
            return Err(ArchiveError::Invalid(format!(
                "the config lists {} layers but the archive has {}",
                diff_ids.len(),
                entry.layers.len()
            )));
        }
        let config = store.put_blob(&config_bytes)?;
        let mut layers = Vec::new();
        for (index, name) in entry.layers.iter().enumerate() {
            let path = inside(dir, name)?;
            let actual = diff_id(&path)?;
            if actual != diff_ids[index] {
                return Err(ArchiveError::DiffIdMismatch {
                    index,
                    expected: diff_ids[index].clone(),
                    actual,
                });
            }
            let media_type = layer_media_type(&path)?;
            let mut f = File::open(&path).map_err(io_err(&path))?;
            let (digest, size) = store.put_blob_computed(&mut f)?;
            layers.push(LayerRecord {
                digest,
                media_type: media_type.to_string(),
                size,
            });
        }
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_OCI_MANIFEST,
            "config": {
                "mediaType": MEDIA_OCI_CONFIG,
                "digest": config,
                "size": config_bytes.len(),
            },
            "layers": layers.iter().map(|l| json!({
                "mediaType": l.media_type,
                "digest": l.digest,
                "size": l.size,
            })).collect::<Vec<_>>(),
        });
        let manifest = store.put_blob(manifest.to_string().as_bytes())?;
        let refs = names(tag, entry.repo_tags.unwrap_or_default(), &config)?;
        out.extend(record_all(store, refs, &manifest, &config, &layers)?);
    }
    Ok(out)
}

#[derive(Deserialize, Clone)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    #[serde(default)]
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default)]
    annotations: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    platform: Option<Value>,
}

/// Copies a layout blob into the store, checking its digest and size.
fn take_blob(store: &Store, dir: &Path, d: &Descriptor) -> Result<Digest> {
    let digest = Digest::parse(&d.digest)?;
    let path = inside(dir, &format!("blobs/sha256/{}", digest.hex()))?;
    let mut f = File::open(&path).map_err(io_err(&path))?;
    let size = store.put_blob_from(&mut f, &digest)?;
    if size != d.size {
        return Err(ArchiveError::Invalid(format!(
            "blob {digest} is {size} bytes, its descriptor says {}",
            d.size
        )));
    }
    Ok(digest)
}

fn is_linux_amd64(d: &Descriptor) -> bool {
    d.platform.as_ref().is_some_and(|p| {
        p["os"].as_str() == Some("linux") && p["architecture"].as_str() == Some("amd64")
    })
}

fn import_oci_layout(store: &Store, dir: &Path, tag: Option<&str>) -> Result<Vec<ImageRecord>> {
    #[derive(Deserialize)]
    struct Index {
        manifests: Vec<Descriptor>,
    }
    let index: Index = read_json(&inside(dir, "index.json")?)?;
    let mut out = Vec::new();
    for top in index.manifests {
        let mut desc = top.clone();
        // Follow nested indexes down to the linux/amd64 manifest.
        for _ in 0..4 {
            if desc.media_type != MEDIA_OCI_INDEX && desc.media_type != MEDIA_DOCKER_LIST {
                break;
            }
            let digest = take_blob(store, dir, &desc)?;
            let nested: Index =
                serde_json::from_slice(&store.read_blob(&digest)?).map_err(|err| {
                    ArchiveError::Json {
                        what: format!("index {digest}"),
                        err,
                    }
                })?;
            desc = nested
                .manifests
                .iter()
                .find(|m| is_linux_amd64(m))
                .cloned()
                .ok_or_else(|| {
                    ArchiveError::Invalid(format!("index {digest} has no linux/amd64 image"))
                })?;
        }
        let manifest = take_blob(store, dir, &desc)?;
        let m: Value = serde_json::from_slice(&store.read_blob(&manifest)?).map_err(|err| {
            ArchiveError::Json {
                what: format!("manifest {manifest}"),
                err,
            }
        })?;
        let config_desc: Descriptor =
            serde_json::from_value(m["config"].clone()).map_err(|err| ArchiveError::Json {
                what: format!("config descriptor in {manifest}"),
                err,
            })?;
        let layer_descs: Vec<Descriptor> =
            serde_json::from_value(m["layers"].clone()).map_err(|err| ArchiveError::Json {
                what: format!("layers in {manifest}"),
                err,
            })?;
        let config = take_blob(store, dir, &config_desc)?;
        let mut layers = Vec::new();
        for l in &layer_descs {
            layers.push(LayerRecord {
                digest: take_blob(store, dir, l)?,
                media_type: l.media_type.clone(),
                size: l.size,
            });
        }
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
        out.extend(record_all(store, refs, &manifest, &config, &layers)?);
    }
    Ok(out)
}

/// Writes `image` as an OCI image layout in directory `out`.
pub fn export_oci_layout(store: &Store, image: &ImageRecord, out: &Path) -> Result<()> {
    let blobs = out.join("blobs/sha256");
    fs::create_dir_all(&blobs).map_err(io_err(&blobs))?;
    let manifest_bytes = store.read_blob(&image.manifest)?;
    let manifest: Value =
        serde_json::from_slice(&manifest_bytes).map_err(|err| ArchiveError::Json {
            what: format!("manifest {}", image.manifest),
            err,
        })?;
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
            fs::copy(&src, &dst).map_err(io_err(&dst))?;
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
        fs::write(&p, data).map_err(io_err(&p))
    };
    write(
        "oci-layout",
        json!({"imageLayoutVersion": "1.0.0"}).to_string(),
    )?;
    write("index.json", index.to_string())?;
    Ok(())
}
