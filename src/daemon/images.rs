//! The daemon's image endpoints: `GET /v1/images`, `POST /v1/images/pull`
//! (progress streamed as NDJSON), `POST /v1/images/import` (the archive is
//! the request body) and `DELETE /v1/images/{reference}`.
//!
//! They work on the same store as `husk image`, which may run beside the
//! daemon: the store's own locks keep the two apart.

use std::io::Write;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use futures_util::StreamExt;
use serde::Deserialize;
use tokio::sync::mpsc;

use super::api::ndjson;
use super::containers::{ApiError, Manager};
use crate::image::registry::{self, PullEvent, PullOptions};
use crate::image::store::{ImageRecord, Store};
use oci_client::secrets::RegistryAuth;

type Shared = State<Arc<Manager>>;

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(e.to_string())
}

fn open_store(m: &Manager) -> Result<Store, ApiError> {
    Store::open(&m.cfg.state_dir).map_err(internal)
}

/// One image as the API lists it.
/// The store's record as is, with `id` (the config digest) and `size`.
fn describe(i: &ImageRecord) -> serde_json::Value {
    let mut v = serde_json::to_value(i).unwrap_or_default();
    v["id"] = i.config.to_string().into();
    v["size"] = i.size().into();
    v
}

#[utoipa::path(get, path = "/v1/images", tag = "images", responses((status = 200, description = "The store's image records, each with `id` (config digest) and `size`", body = [Object])))]
pub(super) async fn list(State(m): Shared) -> Result<Json<Vec<serde_json::Value>>, ApiError> {
    let list = tokio::task::spawn_blocking(move || open_store(&m)?.list().map_err(internal))
        .await
        .map_err(internal)??;
    Ok(Json(list.iter().map(describe).collect()))
}

#[utoipa::path(delete, path = "/v1/images/{reference}", tag = "images",
    params(("reference" = String, Path, description = "An image reference or manifest digest")),
    responses((status = 204, description = "Removed; unreferenced blobs collected"),
        (status = 404, description = "No such image", body = super::api::ErrorBody),
        (status = 409, description = "A running container uses it", body = super::api::ErrorBody)))]
pub(super) async fn remove(
    State(m): Shared,
    Path(reference): Path<String>,
) -> Result<StatusCode, ApiError> {
    tokio::task::spawn_blocking(move || {
        let store = open_store(&m)?;
        let image = store
            .get(&reference)
            .map_err(|e| ApiError::NotFound(e.to_string()))?;
        // A running container's VM reads its own copy of the root
        // filesystem, but its record names the image: keep it while it runs.
        let in_use = m.all().iter().any(|c| {
            let r = c.snapshot();
            r.state.is_active() && r.image == image.reference
        });
        if in_use {
            return Err(ApiError::Conflict(format!(
                "image {} is used by a running container",
                crate::text::echo(&reference)
            )));
        }
        store.remove(&image.reference).map_err(internal)?;
        store.gc().map_err(internal)?;
        Ok(())
    })
    .await
    .map_err(internal)??;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PullBody {
    /// e.g. `busybox`, `registry.example:5000/team/app:1.2`.
    reference: String,
    /// Basic auth (or a token service's) for the registry.
    username: Option<String>,
    password: Option<String>,
    /// A bearer token presented as is.
    registry_token: Option<String>,
}

impl PullBody {
    fn auth(&self) -> Result<RegistryAuth, ApiError> {
        match (&self.username, &self.password, &self.registry_token) {
            (Some(u), Some(p), None) => Ok(RegistryAuth::Basic(u.clone(), p.clone())),
            (None, None, Some(t)) => Ok(RegistryAuth::Bearer(t.clone())),
            (None, None, None) => Ok(RegistryAuth::Anonymous),
            _ => Err(ApiError::BadRequest(
                "give username and password together, or registry_token alone".into(),
            )),
        }
    }
}

/// A registry event as the pull stream's line: `{status, layer, current,
/// total}`, then `{done, reference}` or `{error}` last.
fn progress_line(e: &PullEvent) -> Vec<serde_json::Value> {
    match e {
        PullEvent::Resolved { reference, layers } => {
            let mut v = vec![serde_json::json!({"status": format!("Pulling from {reference}")})];
            v.extend(layers.iter().map(
                |(d, size)| serde_json::json!({"status": "Waiting", "layer": d, "total": size}),
            ));
            v
        }
        PullEvent::Progress {
            digest,
            done,
            total,
        } => vec![serde_json::json!({
            "status": "Downloading", "layer": digest, "current": done, "total": total,
        })],
        PullEvent::LayerDone { digest, cached } => vec![serde_json::json!({
            "status": if *cached { "Already exists" } else { "Pull complete" },
            "layer": digest,
        })],
    }
}

#[utoipa::path(post, path = "/v1/images/pull", tag = "images", request_body = PullBody,
    responses((status = 200, description = "NDJSON progress lines `{status, layer, current, total}`, then `{done, reference}` or `{error}`", content_type = "application/x-ndjson", body = String),
        (status = 400, description = "Bad input", body = super::api::ErrorBody)))]
pub(super) async fn pull(
    State(m): Shared,
    body: super::api::JsonBody<PullBody>,
) -> Result<Response, ApiError> {
    let auth = body.0.auth()?;
    let reference = body.0.reference;
    let (tx, rx) = mpsc::channel(256);
    // The pull drives its own runtime on a blocking thread, where a tokio
    // channel cannot block: its lines go through a std channel, and a
    // second blocking thread hands them to the response. A client that
    // went away does not stop the pull; a slow one slows it (both
    // channels are bounded).
    let (line_tx, line_rx) = std::sync::mpsc::sync_channel::<serde_json::Value>(256);
    tokio::task::spawn_blocking(move || {
        while let Ok(line) = line_rx.recv() {
            let _ = tx.blocking_send(line);
        }
    });
    tokio::task::spawn_blocking(move || {
        let end = pull_blocking(&m, &reference, auth, &|e| {
            for line in progress_line(e) {
                let _ = line_tx.send(line);
            }
        });
        let last = match end {
            Ok(image) => serde_json::json!({"done": true, "reference": image.reference}),
            Err(e) => serde_json::json!({"error": e.to_string()}),
        };
        let _ = line_tx.send(last);
    });
    Ok(ndjson(rx))
}

/// Pulls `reference` into the daemon's store (blocking).
pub fn pull_blocking(
    m: &Manager,
    reference: &str,
    auth: RegistryAuth,
    progress: &dyn Fn(&PullEvent),
) -> Result<ImageRecord, ApiError> {
    let store = open_store(m)?;
    let opts = PullOptions {
        insecure_registries: m.cfg.insecure_registries.clone(),
        auth,
        ..Default::default()
    };
    registry::pull(&store, reference, &opts, progress).map_err(|e| match e {
        registry::PullError::Reference(_) => ApiError::BadRequest(e.to_string()),
        registry::PullError::NotFound { .. } => ApiError::NotFound(e.to_string()),
        e => ApiError::Internal(e.to_string()),
    })
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct ImportQuery {
    /// Names the image when the archive does not, or overrides it.
    tag: Option<String>,
}

/// What a client uploads is written to the store's scratch space first:
/// an archive is read more than once (its manifest, then its layers).
#[utoipa::path(post, path = "/v1/images/import", tag = "images", params(ImportQuery),
    request_body(content = Vec<u8>, content_type = "application/x-tar", description = "A `docker save` archive or an OCI layout as a tarball; plain, gzip or zstd"),
    responses((status = 200, description = "The imported images' records", body = [Object]),
        (status = 400, description = "Not an image archive, or a broken one", body = super::api::ErrorBody)))]
pub(super) async fn import(
    State(m): Shared,
    Query(q): Query<ImportQuery>,
    body: Body,
) -> Result<Json<Vec<serde_json::Value>>, ApiError> {
    let store = {
        let m = m.clone();
        tokio::task::spawn_blocking(move || open_store(&m))
            .await
            .map_err(internal)??
    };
    let mut upload = store.blob_writer().map_err(internal)?;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::BadRequest(format!("the upload broke off: {e}")))?;
        // Local disk: small writes, done in place.
        upload
            .write_all(&chunk)
            .map_err(|e| ApiError::Internal(format!("cannot keep the upload: {e}")))?;
    }
    if upload.written() == 0 {
        return Err(ApiError::BadRequest(
            "the request body is empty: send a docker-save or OCI archive".into(),
        ));
    }
    let images = tokio::task::spawn_blocking(move || {
        upload.flush().map_err(internal)?;
        let scratch = upload.path().display().to_string();
        crate::image::archive::import(&store, upload.path(), q.tag.as_deref()).map_err(|e| {
            ApiError::BadRequest(e.to_string().replace(&scratch, "the uploaded archive"))
        })
        // `upload` is dropped here: its scratch file goes with it.
    })
    .await
    .map_err(internal)??;
    Ok(Json(images.iter().map(describe).collect()))
}
