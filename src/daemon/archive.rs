//! `husk cp`: `HEAD`, `GET` and `PUT /v1/containers/{id}/archive?path=`,
//! as Docker's API has them. `GET` streams a tar of the path, `PUT`
//! unpacks a tar into the directory at the path, `HEAD` (and `GET`)
//! answer with the path's stat in the `X-Husk-Path-Stat` header
//! (base64 of its JSON).
//!
//! The agent does the work in the guest, as a child process whose stdin
//! or stdout is the tar stream (`agent::guest::archive`). A running
//! container's own agent serves the request. A container that is not
//! running gets a short-lived VM of its own: its root filesystem and
//! volumes (claimed like a start's, read-only for a read) and bind
//! mounts, no network, no process, shut down when the request ends. The
//! container cannot start meanwhile.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use futures_util::StreamExt;
use serde::Deserialize;

use super::api::ErrorBody;
use super::backend::VmHandle;
use super::containers::{ApiError, Container, Manager};
use crate::agent::client::{AgentClient, ClientError, Event, Output, Process};
use crate::agent::protocol::{ArchiveOp, Stream, ARCHIVE_NOT_FOUND, ARCHIVE_REFUSED};
use crate::archive::PathStat;

/// The response header with the path's stat.
pub const STAT_HEADER: &str = "x-husk-path-stat";

/// How long a copying VM may take to boot.
const BOOT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ArchiveQuery {
    /// A path in the container. For GET, a path ending in `/.` means the
    /// directory's contents; for PUT, an existing directory.
    path: String,
}

/// A VM started only to reach a stopped container's files.
struct CopyVm {
    m: Arc<Manager>,
    id: String,
    holder: String,
    vm: VmHandle,
    /// Set once connected: asked to end the VM cleanly (its disks synced
    /// and unmounted) before it is killed.
    client: Option<Arc<AgentClient>>,
    /// The container's lifecycle turn, held until the VM is gone: a
    /// start meanwhile waits for the disks.
    turn: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for CopyVm {
    fn drop(&mut self) {
        let (m, id, holder, vm) = (
            self.m.clone(),
            self.id.clone(),
            self.holder.clone(),
            self.vm.clone(),
        );
        let client = self.client.take();
        let turn = self.turn.take();
        tokio::spawn(async move {
            if let Some(c) = client {
                let _ = c.shutdown().await;
            }
            // Waiting and killing block: not on the async threads.
            let _ = tokio::task::spawn_blocking(move || {
                if !vm.wait_exit(std::time::Duration::from_secs(10)) {
                    tracing::warn!(%id, "the copying VM did not end by itself; killing it");
                }
                vm.cleanup();
                let _ = std::fs::remove_dir_all(vm.dir());
                m.volumes.release(&holder);
                tracing::debug!(%id, "the copying VM is gone");
            })
            .await;
            drop(turn);
        });
    }
}

/// An agent to run archive operations with, and what keeps it there.
struct Session {
    client: Arc<AgentClient>,
    _vm: Option<CopyVm>,
}

async fn session(m: &Arc<Manager>, key: &str, writing: bool) -> Result<Session, ApiError> {
    let c = m.find(key)?;
    if let Ok((client, _)) = m.agent_of(&c).await {
        return Ok(Session { client, _vm: None });
    }
    let turn = c.lifecycle.clone().lock_owned().await;
    let r = c.snapshot();
    if r.state.is_active() {
        // It started while this request waited: use its agent.
        drop(turn);
        let (client, _) = m.agent_of(&c).await?;
        return Ok(Session { client, _vm: None });
    }
    let (client, mut vm) = copy_vm(m, &c, writing).await?;
    vm.turn = Some(turn);
    Ok(Session {
        client,
        _vm: Some(vm),
    })
}

/// Boots a stopped container's disks in a VM with no network.
async fn copy_vm(
    m: &Arc<Manager>,
    c: &Container,
    writing: bool,
) -> Result<(Arc<AgentClient>, CopyVm), ApiError> {
    let r = c.snapshot();
    let internal =
        |e: String| ApiError::Internal(format!("cannot reach the container's files: {e}"));
    let mut plan = super::mounts::plan(&m.volumes, &r.config.mounts)
        .map_err(super::containers::mount_error)?;
    if !writing {
        // Reading needs no write access, so running writers do not block it.
        for d in &mut plan.drives {
            d.read_only = true;
        }
        for g in &mut plan.guest {
            g.read_only = true;
        }
        for claim in &mut plan.claims {
            claim.1 = false;
        }
    }
    let holder = format!("{} (copying files)", &r.id[..12]);
    m.volumes
        .claim(&holder, &plan.claims)
        .map_err(|e| super::containers::mount_error(e.into()))?;
    let spec = match m
        .vm_spec(&r, &format!("{}c", &r.id[..11]), &plan, None)
        .await
    {
        Ok(s) => s,
        Err(e) => {
            m.volumes.release(&holder);
            return Err(internal(e));
        }
    };
    let kind = m.cfg.backend;
    let launched = tokio::task::spawn_blocking(move || super::backend::launch(kind, &spec)).await;
    let vm = match launched {
        Ok(Ok(vm)) => vm,
        Ok(Err(e)) => {
            m.volumes.release(&holder);
            return Err(internal(e.to_string()));
        }
        Err(e) => {
            m.volumes.release(&holder);
            return Err(internal(e.to_string()));
        }
    };
    let mut guard = CopyVm {
        m: m.clone(),
        id: r.id.clone(),
        holder,
        vm: vm.clone(),
        client: None,
        turn: None,
    };
    vm.agent_started(BOOT_TIMEOUT)
        .await
        .map_err(|e| internal(e.to_string()))?;
    let client = Arc::new(
        AgentClient::connect_vsock(&vm.vsock_uds, BOOT_TIMEOUT)
            .await
            .map_err(|e| internal(e.to_string()))?,
    );
    guard.client = Some(client.clone());
    if !plan.guest.is_empty() {
        let out = client
            .mount(plan.guest.clone())
            .await
            .map_err(|e| internal(e.to_string()))?
            .output()
            .await
            .map_err(|e| internal(e.to_string()))?;
        if out.status.code != Some(0) {
            return Err(internal(String::from_utf8_lossy(&out.stderr).into_owned()));
        }
    }
    Ok((client, guard))
}

/// The API's error for an archive child that failed.
fn failed(code: Option<i32>, stderr: &[u8]) -> ApiError {
    let msg = crate::text::echo(String::from_utf8_lossy(stderr).trim()).into_owned();
    match code {
        Some(ARCHIVE_NOT_FOUND) => ApiError::NotFound(msg),
        Some(ARCHIVE_REFUSED) => ApiError::BadRequest(msg),
        _ if msg.is_empty() => ApiError::Internal("the copy failed in the guest".into()),
        _ => ApiError::Internal(msg),
    }
}

fn agent_error(e: ClientError) -> ApiError {
    match e {
        ClientError::Refused(m) => ApiError::BadRequest(m),
        e => ApiError::Internal(e.to_string()),
    }
}

async fn run_op(client: &AgentClient, op: ArchiveOp) -> Result<Process, ApiError> {
    client.archive(op).await.map_err(agent_error)
}

async fn stat(client: &AgentClient, path: &str) -> Result<PathStat, ApiError> {
    let out: Output = run_op(client, ArchiveOp::Stat { path: path.into() })
        .await?
        .output()
        .await
        .map_err(agent_error)?;
    if out.status.code != Some(0) {
        return Err(failed(out.status.code, &out.stderr));
    }
    serde_json::from_slice(&out.stdout)
        .map_err(|e| ApiError::Internal(format!("the agent's stat is not JSON: {e}")))
}

fn stat_header(st: &PathStat) -> HeaderValue {
    let json = serde_json::to_vec(st).expect("a stat serializes");
    let b64 = base64::engine::general_purpose::STANDARD.encode(json);
    HeaderValue::from_str(&b64).expect("base64 is a valid header value")
}

fn check_path(path: &str) -> Result<(), ApiError> {
    if !path.starts_with('/') || path.contains('\0') || path.len() > 4096 {
        return Err(ApiError::BadRequest(
            "path must be an absolute path in the container".into(),
        ));
    }
    Ok(())
}

#[utoipa::path(head, path = "/v1/containers/{id}/archive", tag = "containers",
    params(("id" = String, Path, description = "A container's id, unique id prefix, or name"), ArchiveQuery),
    responses((status = 200, description = "The path exists; its stat is in X-Husk-Path-Stat"),
        (status = 400, description = "A bad path", body = ErrorBody),
        (status = 404, description = "No such container or path", body = ErrorBody)))]
pub(super) async fn head(
    State(m): State<Arc<Manager>>,
    Path(id): Path<String>,
    Query(q): Query<ArchiveQuery>,
) -> Result<Response, ApiError> {
    let answer = async {
        check_path(&q.path)?;
        let s = session(&m, &id, false).await?;
        stat(&s.client, &q.path).await
    };
    match answer.await {
        Ok(st) => {
            let mut r = StatusCode::OK.into_response();
            r.headers_mut().insert(STAT_HEADER, stat_header(&st));
            Ok(r)
        }
        // A HEAD answer has no body: the message goes in a header.
        Err(e) => {
            let msg = crate::text::echo(&e.to_string()).replace(|c: char| !c.is_ascii(), "?");
            let mut r = e.into_response();
            if let Ok(v) = HeaderValue::from_str(&msg) {
                r.headers_mut().insert(ERROR_HEADER, v);
            }
            Ok(r)
        }
    }
}

/// A failed HEAD's message.
pub const ERROR_HEADER: &str = "x-husk-error";

#[utoipa::path(get, path = "/v1/containers/{id}/archive", tag = "containers",
    params(("id" = String, Path, description = "A container's id, unique id prefix, or name"), ArchiveQuery),
    responses((status = 200, description = "A tar stream of the path (its stat in X-Husk-Path-Stat)", content_type = "application/x-tar"),
        (status = 400, description = "A bad path", body = ErrorBody),
        (status = 404, description = "No such container or path", body = ErrorBody),
        (status = 409, description = "A running container writes to one of its volumes", body = ErrorBody)))]
pub(super) async fn get(
    State(m): State<Arc<Manager>>,
    Path(id): Path<String>,
    Query(q): Query<ArchiveQuery>,
) -> Result<Response, ApiError> {
    check_path(&q.path)?;
    let s = session(&m, &id, false).await?;
    let st = stat(&s.client, &q.path).await?;
    let contents = q.path.ends_with("/.");
    let name = if contents {
        ".".to_string()
    } else {
        st.name.clone()
    };
    let p = run_op(
        &s.client,
        ArchiveOp::Read {
            path: q.path.clone(),
            name,
        },
    )
    .await?;
    // The tar flows out as the child writes it; a failure midway ends
    // the body with an error, so the client sees a broken transfer, not
    // a short archive.
    let body = futures_util::stream::unfold(Some((p, s, Vec::new())), |state| async move {
        let (mut p, s, mut stderr) = state?;
        loop {
            match p.next().await {
                Ok(Some(Event::Output(Stream::Stdout, d))) => {
                    return Some((Ok(bytes::Bytes::from(d)), Some((p, s, stderr))))
                }
                Ok(Some(Event::Output(_, d))) => stderr.extend_from_slice(&d),
                Ok(Some(Event::Exit(st))) if st.code == Some(0) => return None,
                Ok(Some(Event::Exit(st))) => {
                    let e = failed(st.code, &stderr).to_string();
                    return Some((Err(std::io::Error::other(e)), None));
                }
                Ok(None) => return None,
                Err(e) => return Some((Err(std::io::Error::other(e.to_string())), None)),
            }
        }
    });
    let mut r = Response::new(Body::from_stream(body));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-tar"),
    );
    r.headers_mut().insert(STAT_HEADER, stat_header(&st));
    Ok(r)
}

#[utoipa::path(put, path = "/v1/containers/{id}/archive", tag = "containers",
    params(("id" = String, Path, description = "A container's id, unique id prefix, or name"), ArchiveQuery),
    request_body(content = Vec<u8>, content_type = "application/x-tar", description = "A tar stream"),
    responses((status = 200, description = "Unpacked"),
        (status = 400, description = "A bad path, or an archive refused (an entry escaping the directory, through '..', an absolute path or a symlink)", body = ErrorBody),
        (status = 404, description = "No such container or directory", body = ErrorBody),
        (status = 409, description = "Another running container writes to one of its volumes", body = ErrorBody)))]
pub(super) async fn put(
    State(m): State<Arc<Manager>>,
    Path(id): Path<String>,
    Query(q): Query<ArchiveQuery>,
    body: Body,
) -> Result<StatusCode, ApiError> {
    check_path(&q.path)?;
    let s = session(&m, &id, true).await?;
    let mut p = run_op(
        &s.client,
        ArchiveOp::Write {
            path: q.path.clone(),
        },
    )
    .await?;
    let input = p.input();
    let feed = async move {
        let mut body = body.into_data_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| format!("the request body broke: {e}"))?;
            // The child stops reading once it refused the archive.
            if input.write_stdin(&chunk).await.is_err() {
                return Ok(());
            }
        }
        let _ = input.close_stdin().await;
        Ok::<(), String>(())
    };
    let drain = async {
        let mut stderr = Vec::new();
        loop {
            match p.next().await {
                Ok(Some(Event::Output(_, d))) => stderr.extend_from_slice(&d),
                Ok(Some(Event::Exit(st))) => return Ok((st, stderr)),
                Ok(None) => return Err(ApiError::Internal("the agent sent no exit".into())),
                Err(e) => return Err(agent_error(e)),
            }
        }
    };
    let (fed, drained) = tokio::join!(feed, drain);
    let (st, stderr) = drained?;
    if st.code != Some(0) {
        return Err(failed(st.code, &stderr));
    }
    fed.map_err(ApiError::BadRequest)?;
    drop(s);
    Ok(StatusCode::OK)
}
