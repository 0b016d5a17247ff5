//! The daemon's network endpoints: `POST /v1/networks`, `GET
//! /v1/networks`, `GET /v1/networks/{id}` and `DELETE /v1/networks/{id}`
//! (by name, id, or a unique id prefix). The work is in [`super::network`].

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::api::{ErrorBody, JsonBody};
use super::containers::{ApiError, Manager};
use crate::client::types::{NetworkCreateRequest, NetworkView};

type Shared = State<Arc<Manager>>;

#[utoipa::path(post, path = "/v1/networks", tag = "networks", request_body = NetworkCreateRequest,
    responses((status = 201, description = "Created: its bridge is up", body = NetworkView),
        (status = 400, description = "Bad input", body = ErrorBody),
        (status = 409, description = "The name is taken, the subnet overlaps another, or networking is off here", body = ErrorBody)))]
pub(super) async fn create(
    State(m): Shared,
    JsonBody(req): JsonBody<NetworkCreateRequest>,
) -> Result<Response, ApiError> {
    let net = m.net.clone();
    let v = tokio::spawn(async move { net.create(req).await })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

#[utoipa::path(get, path = "/v1/networks", tag = "networks",
    responses((status = 200, description = "The networks", body = [NetworkView])))]
pub(super) async fn list(State(m): Shared) -> Json<Vec<NetworkView>> {
    Json(m.net.list().await)
}

#[utoipa::path(get, path = "/v1/networks/{id}", tag = "networks",
    params(("id" = String, Path, description = "A network's name, id, or unique id prefix")),
    responses((status = 200, description = "The network and its containers", body = NetworkView),
        (status = 404, description = "No such network", body = ErrorBody)))]
pub(super) async fn inspect(
    State(m): Shared,
    Path(id): Path<String>,
) -> Result<Json<NetworkView>, ApiError> {
    Ok(Json(m.net.inspect(&id).await?))
}

#[utoipa::path(delete, path = "/v1/networks/{id}", tag = "networks",
    params(("id" = String, Path, description = "A network's name, id, or unique id prefix")),
    responses((status = 204, description = "Removed, with its bridge and rules"),
        (status = 404, description = "No such network", body = ErrorBody),
        (status = 409, description = "The default network, or containers are attached", body = ErrorBody)))]
pub(super) async fn remove(
    State(m): Shared,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let net = m.net.clone();
    tokio::spawn(async move { net.remove(&id).await })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
    Ok(StatusCode::NO_CONTENT)
}
