//! The daemon's HTTP/JSON API (`/v1/...`). Errors are `{code, message}`
//! with a stable code: `not_found` (404), `conflict` (409), `bad_request`
//! (400), `cannot_run` (400, with the `exit_code` a shell would give: 127
//! for a missing program, 126 for one that cannot run), `unauthorized`
//! (401), `internal` (500). Streams (logs, exec
//! output, pull progress, events) are NDJSON: one JSON object per line;
//! interactive stdio (attach, and exec with `Connection: Upgrade`) is on
//! an upgraded connection, framed as `attach.rs` describes.

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
use super::images;
use super::logs::{self, LogFilter};
use super::state::{ContainerState, ContainerView, CreateRequest};
use crate::agent::client::Event;
use crate::agent::protocol::{ProcessSpec, Stream};

/// Every error: a stable `code` and a message.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(super) struct ErrorBody {
    /// `not_found`, `conflict`, `bad_request`, `cannot_run`,
    /// `unauthorized` or `internal`.
    code: &'static str,
    message: String,
    /// With `cannot_run`: 127 (no such program) or 126 (cannot execute).
    #[serde(skip_serializing_if = "Option::is_none")]
    exit_code: Option<i32>,
}

/// The answer to a create.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(super) struct Created {
    id: String,
    name: String,
}

/// The answer to a wait.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(super) struct Waited {
    /// The shell's code: the exit status, or 128+N after signal N; -1
    /// when the container died without one.
    exit_code: i32,
    /// The process's own exit status, when it exited.
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<i32>,
    /// The signal that ended it.
    #[serde(skip_serializing_if = "Option::is_none")]
    signal: Option<i32>,
    /// Why it died, if it did not exit by itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            ApiError::CannotRun { .. } => (StatusCode::BAD_REQUEST, "cannot_run"),
        };
        let body = ErrorBody {
            code,
            message: self.to_string(),
            exit_code: match self {
                ApiError::CannotRun { exit_code, .. } => Some(exit_code),
                _ => None,
            },
        };
        (status, Json(body)).into_response()
    }
}

/// JSON bodies whose errors come back as `{code, message}`.
pub(super) struct JsonBody<T>(pub T);

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
        .route("/v1/containers/{id}/attach", post(super::attach::attach))
        .route("/v1/images", get(images::list))
        .route("/v1/images/pull", post(images::pull))
        .route("/v1/images/import", post(images::import))
        .route("/v1/images/{*reference}", delete(images::remove))
        .route(
            "/v1/networks",
            post(super::networks::create).get(super::networks::list),
        )
        .route(
            "/v1/networks/{id}",
            get(super::networks::inspect).delete(super::networks::remove),
        )
        .route(
            "/v1/volumes",
            post(super::volumes::create).get(super::volumes::list),
        )
        .route("/v1/volumes/prune", post(super::volumes::prune))
        .route(
            "/v1/volumes/{name}",
            get(super::volumes::inspect).delete(super::volumes::remove),
        )
        .route("/v1/volumes/{name}/resize", post(super::volumes::resize))
        .route(
            "/v1/containers/{id}/archive",
            get(super::archive::get)
                .put(super::archive::put)
                .head(super::archive::head),
        )
        .route("/v1/info", get(info))
        .route(
            "/v1/openapi.json",
            get(|| async { Json(super::openapi::document()) }),
        )
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

#[utoipa::path(post, path = "/v1/containers", tag = "containers", request_body = CreateRequest, responses((status = 201, description = "Created", body = Created), (status = 400, description = "Bad input", body = ErrorBody), (status = 404, description = "No such image, and it could not be pulled", body = ErrorBody), (status = 409, description = "The name is in use", body = ErrorBody)))]
async fn create(
    State(m): Shared,
    JsonBody(req): JsonBody<CreateRequest>,
) -> Result<Response, ApiError> {
    let r = m.create(req).await?;
    Ok((
        StatusCode::CREATED,
        Json(Created {
            id: r.id,
            name: r.name,
        }),
    )
        .into_response())
}

#[utoipa::path(post, path = "/v1/containers/{id}/start", tag = "containers", params(("id" = String, Path, description = "A container's id, unique id prefix, or name")), responses((status = 204, description = "Its main process runs"), (status = 404, description = "No such container", body = ErrorBody), (status = 409, description = "The container's state does not allow it", body = ErrorBody), (status = 400, description = "Its program cannot run: `cannot_run` with the shell's `exit_code` (126, 127)", body = ErrorBody), (status = 500, description = "The daemon failed", body = ErrorBody)))]
async fn start(State(m): Shared, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    // In a task of its own: a client that hangs up must not cancel a start
    // half way (the container would stay "starting", its VM unwatched).
    detached(async move { m.start(&id).await }).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Also the containers that are not running.
    #[serde(default)]
    all: bool,
    /// Only those in this state (`created`, `running`, `exited`, `dead`, ...).
    state: Option<String>,
    /// Only those with this label: `KEY` or `KEY=VALUE`.
    label: Option<String>,
}

#[utoipa::path(get, path = "/v1/containers", tag = "containers", params(ListQuery), responses((status = 200, description = "The containers", body = [ContainerView])))]
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
        .filter(|r| q.state.as_deref().is_none_or(|s| r.state.as_str() == s))
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

#[utoipa::path(get, path = "/v1/containers/{id}", tag = "containers", params(("id" = String, Path, description = "A container's id, unique id prefix, or name")), responses((status = 200, description = "The container", body = ContainerView), (status = 404, description = "No such container", body = ErrorBody)))]
async fn inspect(
    State(m): Shared,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(m.find(&id)?.snapshot().to_api()))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct RemoveQuery {
    /// Kill it first if it runs.
    #[serde(default)]
    force: bool,
    /// Remove its anonymous volumes too (`-v`), unless another container
    /// uses them.
    #[serde(default)]
    volumes: bool,
}

#[utoipa::path(delete, path = "/v1/containers/{id}", tag = "containers", params(("id" = String, Path, description = "A container's id, unique id prefix, or name"), RemoveQuery), responses((status = 204, description = "Removed, with its files"), (status = 404, description = "No such container", body = ErrorBody), (status = 409, description = "The container's state does not allow it", body = ErrorBody)))]
async fn remove(
    State(m): Shared,
    Path(id): Path<String>,
    Query(q): Query<RemoveQuery>,
) -> Result<StatusCode, ApiError> {
    detached(async move { m.remove(&id, q.force, q.volumes).await }).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/containers/{id}/wait", tag = "containers", params(("id" = String, Path, description = "A container's id, unique id prefix, or name")), responses((status = 200, description = "It is no longer running (answered then)", body = Waited), (status = 404, description = "No such container", body = ErrorBody)))]
async fn wait(State(m): Shared, Path(id): Path<String>) -> Result<Json<Waited>, ApiError> {
    let c = m.find(&id)?;
    c.wait_exit().await;
    let r = c.snapshot();
    Ok(Json(Waited {
        exit_code: r.exit_code.unwrap_or(-1),
        code: r.exit_code.filter(|_| r.signal.is_none()),
        signal: r.signal,
        error: r.error,
    }))
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
struct KillBody {
    /// The signal number (default 9, SIGKILL).
    signal: Option<i32>,
}

#[utoipa::path(post, path = "/v1/containers/{id}/kill", tag = "containers", params(("id" = String, Path, description = "A container's id, unique id prefix, or name")), request_body = KillBody, responses((status = 204, description = "Sent to the main process"), (status = 400, description = "Bad input", body = ErrorBody), (status = 404, description = "No such container", body = ErrorBody), (status = 409, description = "The container's state does not allow it", body = ErrorBody)))]
async fn kill(
    State(m): Shared,
    Path(id): Path<String>,
    JsonBody(b): JsonBody<KillBody>,
) -> Result<StatusCode, ApiError> {
    m.kill(&id, b.signal.unwrap_or(libc::SIGKILL)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
struct StopBody {
    /// Seconds between SIGTERM and powering the VM off (default 10).
    timeout: Option<u64>,
}

#[utoipa::path(post, path = "/v1/containers/{id}/stop", tag = "containers", params(("id" = String, Path, description = "A container's id, unique id prefix, or name")), request_body = StopBody, responses((status = 204, description = "It has stopped"), (status = 404, description = "No such container", body = ErrorBody), (status = 409, description = "The container's state does not allow it", body = ErrorBody)))]
async fn stop(
    State(m): Shared,
    Path(id): Path<String>,
    JsonBody(b): JsonBody<StopBody>,
) -> Result<StatusCode, ApiError> {
    let t = Duration::from_secs(b.timeout.unwrap_or(10).min(3600));
    detached(async move { m.stop(&id, t).await }).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Runs a lifecycle step to its end even when the request that asked for
/// it is dropped (hyper drops a handler whose client hangs up).
async fn detached<F>(f: F) -> Result<(), ApiError>
where
    F: std::future::Future<Output = Result<(), ApiError>> + Send + 'static,
{
    tokio::spawn(f)
        .await
        .map_err(|e| ApiError::Internal(format!("the request's task failed: {e}")))?
}

/// A streamed NDJSON body fed by a channel.
pub(super) fn ndjson(rx: mpsc::Receiver<serde_json::Value>) -> Response {
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

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct LogsQuery {
    /// Keep streaming until the container ends.
    #[serde(default)]
    follow: bool,
    /// Only the last N lines.
    tail: Option<usize>,
    /// Only lines from this time on (ms since the epoch).
    since: Option<u64>,
    /// Include stdout (default true).
    stdout: Option<bool>,
    /// Include stderr (default true).
    stderr: Option<bool>,
}

#[utoipa::path(get, path = "/v1/containers/{id}/logs", tag = "containers", params(("id" = String, Path, description = "A container's id, unique id prefix, or name"), LogsQuery), responses((status = 200, description = "NDJSON lines `{stream, time_ms, data}`", content_type = "application/x-ndjson", body = String), (status = 404, description = "No such container", body = ErrorBody)))]
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

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ExecBody {
    cmd: Vec<String>,
    #[serde(default)]
    env: Vec<String>,
    workdir: Option<String>,
    user: Option<String>,
    #[serde(default)]
    tty: bool,
    /// Keep stdin open: only on an upgraded connection (`attach.rs`).
    #[serde(default)]
    stdin: bool,
    /// The terminal's size, with `tty`: `{rows, cols}`.
    #[schema(value_type = Option<Object>)]
    window: Option<crate::agent::protocol::WindowSize>,
}

#[utoipa::path(post, path = "/v1/containers/{id}/exec", tag = "containers", params(("id" = String, Path, description = "A container's id, unique id prefix, or name")), request_body = ExecBody, responses((status = 200, description = "NDJSON lines `{stream, data}`, then `{exit_code}`", content_type = "application/x-ndjson", body = String), (status = 101, description = "With `Connection: Upgrade` and `Upgrade: tcp`: an interactive session, framed as docs/agent-protocol.md (Interactive stdio through the daemon) says"), (status = 400, description = "Bad input, or `cannot_run` with the shell's `exit_code`", body = ErrorBody), (status = 404, description = "No such container", body = ErrorBody), (status = 409, description = "The container's state does not allow it", body = ErrorBody)))]
/// With `Connection: Upgrade`, an interactive session (`attach.rs`);
/// else the output as NDJSON.
async fn exec(
    State(m): Shared,
    Path(id): Path<String>,
    super::attach::Upgrade(up): super::attach::Upgrade,
    JsonBody(b): JsonBody<ExecBody>,
) -> Result<Response, ApiError> {
    let spec = ProcessSpec {
        args: b.cmd,
        env: b.env,
        working_dir: b.workdir,
        user: b.user,
        tty: b.tty,
        window: b.window.filter(|_| b.tty),
    };
    if let Some(up) = up {
        return super::attach::exec(m, &id, spec, b.stdin, up).await;
    }
    if b.stdin {
        return Err(ApiError::BadRequest(
            "stdin needs an upgraded connection: send Connection: Upgrade and Upgrade: tcp".into(),
        ));
    }
    let tty = spec.tty;
    let mut p = m.exec(&id, spec).await?;
    if !tty {
        // No stdin here: the process reads an empty one, as with
        // `docker exec` without -i.
        let _ = p.close_stdin().await;
    }
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

#[utoipa::path(get, path = "/v1/info", tag = "system", responses((status = 200, description = "`version`, `backend`, `fallback_reason`, `kernel`, `virtualization`, `containers`, `running`, `images`, `state_dir`", body = Object)))]
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
    match m.net.unavailable() {
        Some(why) => v["networking_off"] = why.into(),
        None => {
            let names: Vec<String> = m.net.list().await.into_iter().map(|n| n.name).collect();
            v["networks"] = names.into();
        }
    }
    Json(v)
}

#[utoipa::path(get, path = "/v1/events", tag = "system", responses((status = 200, description = "NDJSON lines `{time_ms, id, name, action, exit_code}` as they happen", content_type = "application/x-ndjson", body = String)))]
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
