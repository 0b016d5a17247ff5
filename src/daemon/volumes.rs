//! The daemon's volume endpoints: `POST /v1/volumes`, `GET /v1/volumes`,
//! `GET /v1/volumes/{name}`, `DELETE /v1/volumes/{name}`,
//! `POST /v1/volumes/{name}/resize` and `POST /v1/volumes/prune`. The
//! work is in [`super::volume`].

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::api::{ErrorBody, JsonBody};
use super::containers::{ApiError, Manager};
use super::volume::VolumeError;
use crate::client::types::{
    VolumeCreateRequest, VolumePruneReport, VolumeResizeRequest, VolumeView,
};

type Shared = State<Arc<Manager>>;

fn api_error(e: VolumeError) -> ApiError {
    super::containers::mount_error(e.into())
}

/// The ids of the containers whose config names volume `name`.
fn users(m: &Manager, name: &str) -> Vec<String> {
    m.all()
        .iter()
        .map(|c| c.snapshot())
        .filter(|r| super::mounts::volume_names(&r.config.mounts).any(|v| v == name))
        .map(|r| r.id)
        .collect()
}

/// Runs blocking volume work (mkfs, resize2fs) off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, VolumeError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(api_error)
}

#[utoipa::path(post, path = "/v1/volumes", tag = "volumes", request_body = VolumeCreateRequest,
    responses((status = 201, description = "Created: an empty ext4 filesystem", body = VolumeView),
        (status = 400, description = "A bad name or size", body = ErrorBody),
        (status = 409, description = "The name is taken", body = ErrorBody)))]
pub(super) async fn create(
    State(m): Shared,
    JsonBody(req): JsonBody<VolumeCreateRequest>,
) -> Result<Response, ApiError> {
    let vols = m.volumes.clone();
    let anonymous = req.name.is_none();
    let r = blocking(move || vols.create(&req, anonymous)).await?;
    Ok((StatusCode::CREATED, Json(m.volumes.view(&r, vec![]))).into_response())
}

#[utoipa::path(get, path = "/v1/volumes", tag = "volumes",
    responses((status = 200, description = "The volumes", body = [VolumeView])))]
pub(super) async fn list(State(m): Shared) -> Json<Vec<VolumeView>> {
    let v = m
        .volumes
        .list()
        .iter()
        .map(|r| m.volumes.view(r, users(&m, &r.name)))
        .collect();
    Json(v)
}

#[utoipa::path(get, path = "/v1/volumes/{name}", tag = "volumes",
    params(("name" = String, Path, description = "The volume's name")),
    responses((status = 200, description = "The volume and the containers that mount it", body = VolumeView),
        (status = 404, description = "No such volume", body = ErrorBody)))]
pub(super) async fn inspect(
    State(m): Shared,
    Path(name): Path<String>,
) -> Result<Json<VolumeView>, ApiError> {
    let r = m.volumes.get(&name).map_err(api_error)?;
    Ok(Json(m.volumes.view(&r, users(&m, &name))))
}

#[utoipa::path(delete, path = "/v1/volumes/{name}", tag = "volumes",
    params(("name" = String, Path, description = "The volume's name")),
    responses((status = 204, description = "Removed, with its data"),
        (status = 404, description = "No such volume", body = ErrorBody),
        (status = 409, description = "A container uses it (running or not)", body = ErrorBody)))]
pub(super) async fn remove(
    State(m): Shared,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let using = users(&m, &name);
    let vols = m.volumes.clone();
    blocking(move || vols.remove(&name, using)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/volumes/{name}/resize", tag = "volumes",
    request_body = VolumeResizeRequest,
    params(("name" = String, Path, description = "The volume's name")),
    responses((status = 200, description = "Grown (its filesystem too)", body = VolumeView),
        (status = 400, description = "Smaller than it is, or out of range", body = ErrorBody),
        (status = 404, description = "No such volume", body = ErrorBody),
        (status = 409, description = "A running container mounts it", body = ErrorBody)))]
pub(super) async fn resize(
    State(m): Shared,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<VolumeResizeRequest>,
) -> Result<Json<VolumeView>, ApiError> {
    let vols = m.volumes.clone();
    let n = name.clone();
    let r = blocking(move || vols.resize(&n, req.size)).await?;
    Ok(Json(m.volumes.view(&r, users(&m, &name))))
}

#[utoipa::path(post, path = "/v1/volumes/prune", tag = "volumes",
    responses((status = 200, description = "The volumes no container uses, removed", body = VolumePruneReport)))]
pub(super) async fn prune(State(m): Shared) -> Result<Json<VolumePruneReport>, ApiError> {
    let mut report = VolumePruneReport::default();
    for r in m.volumes.list() {
        if !users(&m, &r.name).is_empty() {
            continue;
        }
        let used = m.volumes.view(&r, vec![]).used;
        let vols = m.volumes.clone();
        let name = r.name.clone();
        // One that a VM holds (a copy from a stopped container) stays.
        if blocking(move || vols.remove(&name, vec![])).await.is_ok() {
            report.removed.push(r.name);
            report.reclaimed += used;
        }
    }
    Ok(Json(report))
}
