//! The daemon's HTTP/JSON API (`/v1/...`). Errors are `{code, message}`
//! with a stable code: `not_found` (404), `conflict` (409), `bad_request`
//! (400), `cannot_run` (400, with the `exit_code` a shell would give: 127
//! for a missing program, 126 for one that cannot run), `unauthorized`
//! (401), `internal` (500). Streams (logs, exec
//! output, pull progress, events) are NDJSON: one JSON object per line.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use tokio::sync::mpsc;

use super::containers::{ApiError, Manager};
use super::logs::{self, LogFilter};
use super::state::{ContainerState, CreateRequest};
use crate::agent::client::Event;
use crate::agent::protocol::{ProcessSpec, Stream};

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            ApiError::CannotRun { .. } => (StatusCode::BAD_REQUEST, "cannot_run"),
        };
        let mut body = serde_json::json!({"code": code, "message": self.to_string()});
        if let ApiError::CannotRun { exit_code, .. } = self {
            body["exit_code"] = exit_code.into();
        }
        (status, Json(body)).into_response()
    }
}

/// JSON bodies whose errors come back as `{code, message}`.
struct JsonBody<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::BadRequest(e.body_text()))?;
        let bytes = if bytes.is_empty() {
            Bytes::from_static(b"{}")
        } else {
            bytes
        };
        serde_json::from_slice(&bytes).map(JsonBody).map_err(|e| {
            ApiError::BadRequest(format!(
                "invalid JSON body: {}",
                crate::text::echo(&e.to_string())
            ))
        })
    }
}

type Shared = State<Arc<Manager>>;

pub fn router(m: Arc<Manager>, token: Option<String>) -> Router {
    let r = Router::new()
        .route("/v1/containers", post(create).get(list))
        .route("/v1/containers/{id}", get(inspect).delete(remove))
        .route("/v1/containers/{id}/start", post(start))
        .route("/v1/containers/{id}/wait", post(wait))
        .route("/v1/containers/{id}/kill", post(kill))
        .route("/v1/containers/{id}/stop", post(stop))
        .route("/v1/containers/{id}/logs", get(logs_of))
        .route("/v1/containers/{id}/exec", post(exec))
        .route("/v1/images", get(images))
        .route("/v1/images/{*reference}", delete(remove_image))
        .route("/v1/info", get(info))
        .route("/v1/events", get(events))
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .with_state(m);
    match token {
        Some(t) => r.layer(axum::middleware::from_fn(
            move |req: Request, next: Next| {
                let t = t.clone();
                async move { bearer(&t, req, next).await }
            },
        )),
        None => r,
    }
}

/// The TCP listener answers only requests with the token.
async fn bearer(token: &str, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // Compared in constant time for equal lengths.
    let ok = given.is_some_and(|g| {
        g.len() == token.len()
            && g.bytes()
                .zip(token.bytes())
                .fold(0u8, |a, (x, y)| a | (x ^ y))
                == 0
    });
    if ok {
        next.run(req).await
    } else {
        let body = serde_json::json!({"code": "unauthorized", "message": "a valid bearer token is required"});
        (StatusCode::UNAUTHORIZED, Json(body)).into_response()
    }
}

async fn create(
    State(m): Shared,
    JsonBody(req): JsonBody<CreateRequest>,
) -> Result<Response, ApiError> {
    let r = m.create(req).await?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({"id": r.id, "name": r.name})),
    )
        .into_response())
}

async fn start(State(m): Shared, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    m.start(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(default)]
    all: bool,
    state: Option<String>,
    label: Option<String>,
}

async fn list(State(m): Shared, Query(q): Query<ListQuery>) -> Json<Vec<serde_json::Value>> {
    let label = q
        .label
        .as_deref()
        .map(|l| l.split_once('=').unwrap_or((l, "")));
    let out = m
        .all()
        .iter()
        .map(|c| c.snapshot())
        .filter(|r| q.all || q.state.is_some() || r.state == ContainerState::Running)
        .filter(|r| q.state.as_deref().is_none_or(|s| r.state.name() == s))
        .filter(|r| {
            label.is_none_or(|(k, v)| {
                r.config
                    .labels
                    .get(k)
                    .is_some_and(|have| v.is_empty() || have == v)
            })
        })
        .map(|r| r.to_api())
        .collect();
    Json(out)
}

async fn inspect(
    State(m): Shared,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(m.find(&id)?.snapshot().to_api()))
}

#[derive(Deserialize)]
struct RemoveQuery {
    #[serde(default)]
    force: bool,
}

async fn remove(
    State(m): Shared,
    Path(id): Path<String>,
    Query(q): Query<RemoveQuery>,
) -> Result<StatusCode, ApiError> {
    m.remove(&id, q.force).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn wait(
    State(m): Shared,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let c = m.find(&id)?;
    c.wait_exit().await;
    let r = c.snapshot();
    let mut v = serde_json::json!({"exit_code": r.exit_code.unwrap_or(-1)});
    if let Some(s) = r.signal {
        v["signal"] = s.into();
    } else if let Some(code) = r.exit_code {
        v["code"] = code.into();
    }
    if let Some(e) = r.error {
        v["error"] = e.into();
    }
    Ok(Json(v))
}

#[derive(Deserialize, Default)]
struct KillBody {
    signal: Option<i32>,
}

async fn kill(
    State(m): Shared,
    Path(id): Path<String>,
    JsonBody(b): JsonBody<KillBody>,
) -> Result<StatusCode, ApiError> {
    m.kill(&id, b.signal.unwrap_or(libc::SIGKILL)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, Default)]
struct StopBody {
    timeout: Option<u64>,
}

async fn stop(
    State(m): Shared,
    Path(id): Path<String>,
    JsonBody(b): JsonBody<StopBody>,
) -> Result<StatusCode, ApiError> {
    let t = Duration::from_secs(b.timeout.unwrap_or(10).min(3600));
    m.stop(&id, t).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A streamed NDJSON body fed by a channel.
fn ndjson(rx: mpsc::Receiver<serde_json::Value>) -> Response {
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|v| {
            let mut line = serde_json::to_vec(&v).expect("JSON values serialize");
            line.push(b'\n');
            (Ok::<_, std::io::Error>(Bytes::from(line)), rx)
        })
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(stream))
        .expect("a valid response")
}

#[derive(Deserialize)]
struct LogsQuery {
    #[serde(default)]
    follow: bool,
    tail: Option<usize>,
    since: Option<u64>,
    stdout: Option<bool>,
    stderr: Option<bool>,
}

async fn logs_of(
    State(m): Shared,
    Path(id): Path<String>,
    Query(q): Query<LogsQuery>,
) -> Result<Response, ApiError> {
    let c = m.find(&id)?;
    let filter = LogFilter {
        stdout: q.stdout.unwrap_or(true),
        stderr: q.stderr.unwrap_or(true),
        since_ms: q.since.unwrap_or(0),
        tail: q.tail,
    };
    // Subscribe before reading the file, so nothing falls in between.
    let mut live = c.follow();
    let dir = m.log_dir(&c.snapshot().id);
    let history = tokio::task::spawn_blocking(move || logs::read(&dir, &filter))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let last = history.last().cloned();
        for l in history {
            if tx.send(serde_json::json!(l)).await.is_err() {
                return;
            }
        }
        if !q.follow {
            return;
        }
        let mut caught_up = last.is_none();
        loop {
            tokio::select! {
                got = live.recv() => match got {
                    Ok(l) => {
                        // Lines the file already gave are skipped.
                        if !caught_up {
                            if let Some(last) = &last {
                                if l.time_ms < last.time_ms || (l.time_ms == last.time_ms && &l == last) {
                                    if &l == last { caught_up = true; }
                                    continue;
                                }
                            }
                            caught_up = true;
                        }
                        if filter.wants(&l) && tx.send(serde_json::json!(l)).await.is_err() {
                            return;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!("a log follower missed {n} lines");
                    }
                    Err(_) => return,
                },
                _ = c.wait_exit() => {
                    // What is still queued, then the end.
                    while let Ok(l) = live.try_recv() {
                        if filter.wants(&l) && tx.send(serde_json::json!(l)).await.is_err() {
                            return;
                        }
                    }
                    return;
                }
            }
        }
    });
    Ok(ndjson(rx))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecBody {
    cmd: Vec<String>,
    #[serde(default)]
    env: Vec<String>,
    workdir: Option<String>,
    user: Option<String>,
    #[serde(default)]
    tty: bool,
}

async fn exec(
    State(m): Shared,
    Path(id): Path<String>,
    JsonBody(b): JsonBody<ExecBody>,
) -> Result<Response, ApiError> {
    let spec = ProcessSpec {
        args: b.cmd,
        env: b.env,
        working_dir: b.workdir,
        user: b.user,
        tty: b.tty,
        window: None,
    };
    let mut p = m.exec(&id, spec).await?;
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let line = match p.next().await {
                Ok(Some(Event::Output(stream, data))) => {
                    let s = if stream == Stream::Stderr {
                        "stderr"
                    } else {
                        "stdout"
                    };
                    serde_json::json!({"stream": s, "data": String::from_utf8_lossy(&data)})
                }
                Ok(Some(Event::Exit(s))) => {
                    let _ = tx
                        .send(serde_json::json!({"exit_code": s.shell_code()}))
                        .await;
                    return;
                }
                Ok(None) => return,
                Err(e) => {
                    let _ = tx.send(serde_json::json!({"error": e.to_string()})).await;
                    return;
                }
            };
            if tx.send(line).await.is_err() {
                return;
            }
        }
    });
    Ok(ndjson(rx))
}

async fn images(State(m): Shared) -> Result<Json<Vec<serde_json::Value>>, ApiError> {
    let dir = m.cfg.state_dir.clone();
    let list = tokio::task::spawn_blocking(move || {
        let store = crate::image::store::Store::open(&dir)?;
        store.list()
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?
    .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(Json(
        list.iter()
            .map(|i| serde_json::json!({"reference": i.reference, "id": i.config.to_string(), "size": i.size()}))
            .collect(),
    ))
}

async fn remove_image(
    State(m): Shared,
    Path(reference): Path<String>,
) -> Result<StatusCode, ApiError> {
    let dir = m.cfg.state_dir.clone();
    let in_use = m.all().iter().any(|c| {
        let r = c.snapshot();
        r.state.is_active() && (r.image == reference || r.config.image == reference)
    });
    if in_use {
        return Err(ApiError::Conflict(format!(
            "image {} is used by a running container",
            crate::text::echo(&reference)
        )));
    }
    tokio::task::spawn_blocking(move || {
        let store = crate::image::store::Store::open(&dir)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        store
            .remove(&reference)
            .map(drop)
            .map_err(|e| ApiError::NotFound(e.to_string()))
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))??;
    Ok(StatusCode::NO_CONTENT)
}

async fn info(State(m): Shared) -> Json<serde_json::Value> {
    let all: Vec<_> = m.all().iter().map(|c| c.snapshot()).collect();
    let running = all
        .iter()
        .filter(|r| r.state == ContainerState::Running)
        .count();
    let dir = m.cfg.state_dir.clone();
    let images = tokio::task::spawn_blocking(move || {
        crate::image::store::Store::open(&dir)
            .and_then(|s| s.list())
            .map_or(0, |l| l.len())
    })
    .await
    .unwrap_or(0);
    let virtualization = crate::doctor::host_virt().describe();
    let mut v = serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "backend": m.cfg.backend,
        "kernel": m.cfg.kernel,
        "virtualization": virtualization,
        "containers": all.len(),
        "running": running,
        "images": images,
        "state_dir": m.cfg.state_dir,
    });
    if let Some(why) = &m.cfg.fallback_reason {
        v["fallback_reason"] = why.clone().into();
    }
    Json(v)
}

async fn events(State(m): Shared, Query(_q): Query<HashMap<String, String>>) -> Response {
    let mut rx = m.events();
    let (tx, out) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Ok(e) => {
                    if tx.send(e).await.is_err() {
                        return;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => return,
            }
        }
    });
    ndjson(out)
}
