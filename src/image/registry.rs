//! Pulling images from OCI Distribution / Docker Registry v2 registries
//! with `oci-client`: anonymous, basic or bearer-token auth, multi-arch
//! indexes resolved to linux/amd64, Docker v2 and OCI manifests. Every
//! blob is hashed as it streams into the store and only kept when its
//! digest matches; a dropped connection resumes with a Range request.

use std::io::Write;
use std::sync::Once;
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use oci_client::client::{linux_amd64_resolver, BlobResponse, ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::Client;

use super::digest::{Digest, DigestError};
use super::reference::{ImageRef, ReferenceError};
use super::store::{BlobWriter, ImageRecord, LayerRecord, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error("registry {registry}: {err}")]
    Registry { registry: String, err: String },
    /// The registry has no such repository or tag.
    #[error("registry {registry}: no image {reference}: {err}")]
    NotFound {
        registry: String,
        reference: String,
        err: String,
    },
    #[error("blob {digest}: {err}")]
    Blob { digest: String, err: String },
    #[error("blob {digest}: gave up after {attempts} attempts: {err}")]
    Retries {
        digest: String,
        attempts: u32,
        err: String,
    },
    #[error("blob {digest}: the registry sent more than the {size} bytes the manifest names")]
    Oversized { digest: String, size: u64 },
    #[error(transparent)]
    Digest(#[from] DigestError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot start the pull: {0}")]
    Runtime(std::io::Error),
}

/// What a pull reports as it goes, for progress bars. Serialises as
/// `{"event": "progress", "digest": ..., "done": ..., "total": ...}`, so a
/// daemon can stream the events as JSON lines.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum PullEvent {
    /// The manifest is in: these layers (digest, size) follow.
    Resolved {
        reference: String,
        layers: Vec<(String, u64)>,
    },
    /// Bytes of one layer so far.
    Progress {
        digest: String,
        done: u64,
        total: u64,
    },
    /// A layer is in the store (`cached`: it already was).
    LayerDone { digest: String, cached: bool },
}

/// How to reach the registry.
#[derive(Clone, Debug)]
pub struct PullOptions {
    /// `host:port` registries that may be reached over plain HTTP.
    pub insecure_registries: Vec<String>,
    pub auth: RegistryAuth,
    /// Attempts per blob before giving up on a flaky connection.
    pub attempts: u32,
    /// Layers fetched at once.
    pub concurrency: usize,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            insecure_registries: Vec::new(),
            auth: RegistryAuth::Anonymous,
            attempts: 5,
            concurrency: 3,
        }
    }
}

fn install_crypto() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

pub fn client(opts: &PullOptions) -> Client {
    install_crypto();
    Client::new(ClientConfig {
        protocol: if opts.insecure_registries.is_empty() {
            ClientProtocol::Https
        } else {
            ClientProtocol::HttpsExcept(opts.insecure_registries.clone())
        },
        platform_resolver: Some(Box::new(linux_amd64_resolver)),
        connect_timeout: Some(Duration::from_secs(10)),
        read_timeout: Some(Duration::from_secs(30)),
        ..Default::default()
    })
}

/// An error with all its causes, `outer: inner: innermost`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cause = c.source();
    }
    s
}

/// Whether trying again may help.
fn transient(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::RequestError(_) | OciDistributionError::IoError(_) => true,
        OciDistributionError::ServerError { code, .. } => *code >= 500 || *code == 429,
        _ => false,
    }
}

/// Whether the registry said it has no such repository or tag.
fn unknown_image(e: &OciDistributionError) -> bool {
    use oci_client::errors::OciErrorCode;
    match e {
        OciDistributionError::ImageManifestNotFoundError(_) => true,
        OciDistributionError::ServerError { code, .. } => *code == 404,
        OciDistributionError::RegistryError { envelope, .. } => envelope.errors.iter().any(|e| {
            matches!(
                e.code,
                OciErrorCode::ManifestUnknown | OciErrorCode::NameUnknown | OciErrorCode::NotFound
            )
        }),
        _ => false,
    }
}

/// Pulls `reference` into the store and records it.
pub fn pull(
    store: &Store,
    reference: &str,
    opts: &PullOptions,
    progress: &dyn Fn(&PullEvent),
) -> Result<ImageRecord, PullError> {
    let image = ImageRef::parse(reference)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(PullError::Runtime)?;
    let _pin = store.pin()?;
    rt.block_on(pull_async(store, &image, opts, progress))
}

async fn pull_async(
    store: &Store,
    image: &ImageRef,
    opts: &PullOptions,
    progress: &dyn Fn(&PullEvent),
) -> Result<ImageRecord, PullError> {
    let client = client(opts);
    let registry_err = |err: OciDistributionError| PullError::Registry {
        registry: image.registry().to_string(),
        err: chain(&err),
    };
    let mut attempt = 0;
    let (manifest, _digest, _index) = loop {
        attempt += 1;
        match client
            .pull_image_manifest_and_list_digest(image.inner(), &opts.auth)
            .await
        {
            Ok(m) => break m,
            Err(e) if transient(&e) && attempt < opts.attempts => {
                tracing::warn!("retrying the manifest after: {}", chain(&e));
                tokio::time::sleep(Duration::from_millis(50 << attempt.min(6))).await;
            }
            Err(e) if unknown_image(&e) => {
                return Err(PullError::NotFound {
                    registry: image.registry().to_string(),
                    reference: image.canonical(),
                    err: chain(&e),
                })
            }
            Err(e) => return Err(registry_err(e)),
        }
    };
    progress(&PullEvent::Resolved {
        reference: image.canonical(),
        layers: manifest
            .layers
            .iter()
            .map(|l| (l.digest.clone(), l.size as u64))
            .collect(),
    });

    fetch_blob(store, &client, image, &manifest.config, opts, &|_| {}).await?;
    let results: Vec<Result<(), PullError>> = futures_util::stream::iter(manifest.layers.iter())
        .map(|layer| fetch_blob(store, &client, image, layer, opts, progress))
        .buffered(opts.concurrency.max(1))
        .collect()
        .await;
    results.into_iter().collect::<Result<Vec<()>, _>>()?;

    let manifest_json = serde_json::to_vec(&manifest).map_err(|e| PullError::Registry {
        registry: image.registry().to_string(),
        err: format!("cannot re-encode the manifest: {e}"),
    })?;
    let record = ImageRecord {
        reference: image.canonical(),
        manifest: store.put_blob(&manifest_json)?,
        config: Digest::parse(&manifest.config.digest)?,
        layers: manifest
            .layers
            .iter()
            .map(|l| {
                Ok(LayerRecord {
                    digest: Digest::parse(&l.digest)?,
                    media_type: l.media_type.clone(),
                    size: l.size as u64,
                })
            })
            .collect::<Result<_, DigestError>>()?,
    };
    store.add_image(record.clone())?;
    Ok(record)
}

/// Streams one blob into the store, resuming after dropped connections,
/// and keeps it only if its digest matches.
async fn fetch_blob(
    store: &Store,
    client: &Client,
    image: &ImageRef,
    desc: &OciDescriptor,
    opts: &PullOptions,
    progress: &dyn Fn(&PullEvent),
) -> Result<(), PullError> {
    let digest = Digest::parse(&desc.digest)?;
    let size = u64::try_from(desc.size).unwrap_or(0);
    if store.has_blob(&digest) {
        progress(&PullEvent::LayerDone {
            digest: desc.digest.clone(),
            cached: true,
        });
        return Ok(());
    }
    let blob_err = |err: String| PullError::Blob {
        digest: desc.digest.clone(),
        err,
    };
    let mut w = store.blob_writer()?;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let outcome = stream_into(client, image, desc, &mut w, size, progress).await;
        let err = match outcome {
            Ok(()) => break,
            Err(StreamError::Fatal(e)) => return Err(e),
            Err(StreamError::Transient(e)) => e,
        };
        if attempt >= opts.attempts {
            return Err(PullError::Retries {
                digest: desc.digest.clone(),
                attempts: attempt,
                err,
            });
        }
        tracing::warn!(blob = %desc.digest, "retrying after: {err}");
        tokio::time::sleep(Duration::from_millis(50 << attempt.min(6))).await;
    }
    w.flush().map_err(|e| blob_err(e.to_string()))?;
    store.commit(w, &digest).map_err(|e| match e {
        StoreError::DigestMismatch { .. } => blob_err(e.to_string()),
        other => PullError::Store(other),
    })?;
    progress(&PullEvent::LayerDone {
        digest: desc.digest.clone(),
        cached: false,
    });
    Ok(())
}

enum StreamError {
    Transient(String),
    Fatal(PullError),
}

/// One attempt: asks for the bytes not yet written and appends them.
async fn stream_into(
    client: &Client,
    image: &ImageRef,
    desc: &OciDescriptor,
    w: &mut BlobWriter,
    size: u64,
    progress: &dyn Fn(&PullEvent),
) -> Result<(), StreamError> {
    let fatal = |err: String| {
        StreamError::Fatal(PullError::Blob {
            digest: desc.digest.clone(),
            err,
        })
    };
    let classify = |e: OciDistributionError| {
        if transient(&e) {
            StreamError::Transient(chain(&e))
        } else {
            fatal(chain(&e))
        }
    };
    let offset = w.written();
    let mut stream = if offset == 0 {
        client
            .pull_blob_stream(image.inner(), desc)
            .await
            .map_err(classify)?
            .stream
    } else {
        match client
            .pull_blob_stream_partial(image.inner(), desc, offset, None)
            .await
            .map_err(classify)?
        {
            BlobResponse::Partial(s) => s.stream,
            BlobResponse::Full(s) => {
                // No range support: start over.
                w.restart().map_err(|e| fatal(e.to_string()))?;
                s.stream
            }
        }
    };
    loop {
        match stream.try_next().await {
            Ok(Some(chunk)) => {
                if size > 0 && w.written() + chunk.len() as u64 > size {
                    return Err(StreamError::Fatal(PullError::Oversized {
                        digest: desc.digest.clone(),
                        size,
                    }));
                }
                w.write_all(&chunk).map_err(|e| fatal(e.to_string()))?;
                progress(&PullEvent::Progress {
                    digest: desc.digest.clone(),
                    done: w.written(),
                    total: size,
                });
            }
            Ok(None) => break,
            // All bytes are in: the store's own digest check decides.
            Err(_) if size > 0 && w.written() == size => break,
            Err(e) => return Err(StreamError::Transient(chain(&e))),
        }
    }
    if size > 0 && w.written() < size {
        return Err(StreamError::Transient(format!(
            "connection ended after {} of {size} bytes",
            w.written()
        )));
    }
    Ok(())
}
