//! The per-VM HTTP API on a Unix socket, shaped after Firecracker's so its
//! clients and SDKs work unchanged.
//!
//! The API thread runs axum on a current-thread tokio runtime. Each request
//! becomes a [`VmmAction`], sent over a channel to the VMM thread, which is
//! woken through an event fd and answers on a oneshot. Connections, their
//! timeouts and their number are managed in [`server`].

mod paths;
pub mod server;

use std::io;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

use crate::jail::seccomp::{Policy, ThreadKind};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::DefaultBodyLimit;
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::vmm::metrics::{prometheus_text, snapshot_json, METRICS};
use crate::vmm::rpc::{ApiSender, VmmAction, VmmData, VmmReply};

/// Binds the API socket. A socket file left by a dead VMM is replaced; one
/// that still answers is refused.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{} is in use by another process", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    UnixListener::bind(path)
}

/// Serves the API on its own thread.
///
/// The thread installs the API seccomp filter before it serves anything;
/// this returns once it has (or with the reason it could not).
pub fn spawn_server(
    listener: UnixListener,
    api: ApiSender,
    limits: server::Limits,
    seccomp: Policy,
) -> io::Result<std::thread::JoinHandle<()>> {
    listener.set_nonblocking(true)?;
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
    let thread = std::thread::Builder::new()
        .name("husk-api".into())
        .spawn(move || {
            // Timers are needed for the connection limits (and by any
            // accept back-off); without them the runtime panics.
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .enable_time()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("cannot start the API runtime: {e}")));
                    return;
                }
            };
            let filtered = seccomp.apply(ThreadKind::Api).map_err(|e| e.to_string());
            let ok = filtered.is_ok();
            let _ = ready_tx.send(filtered);
            if !ok {
                return;
            }
            rt.block_on(async move {
                let listener = match tokio::net::UnixListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!("cannot serve the API socket: {e}");
                        return;
                    }
                };
                server::serve(listener, router(api), limits).await;
            });
        })?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(thread),
        Ok(Err(e)) => Err(io::Error::other(e)),
        Err(_) => Err(io::Error::other("the API thread ended at start")),
    }
}

/// The largest body the router itself takes; the server has already
/// held every request to its configured limit (`server::Limits`).
const MAX_BODY: usize = server::MAX_MAX_PAYLOAD;

/// A request body, or why it could not be read (too large, cut short).
type Body = Result<Bytes, BytesRejection>;

pub fn router(api: ApiSender) -> Router {
    let routes = Router::new()
        .route("/", get(get_root))
        .route("/version", get(get_version))
        .route("/boot-source", put(put_boot_source))
        .route(
            "/machine-config",
            get(get_machine_config)
                .put(put_machine_config)
                .patch(patch_machine_config),
        )
        .route("/cpu-config", put(put_cpu_config))
        .route("/actions", put(put_actions))
        .route("/vm/config", get(get_vm_config))
        .route("/vm", axum::routing::patch(patch_vm))
        .route("/logger", put(put_logger))
        .route("/metrics", put(put_metrics).get(get_metrics))
        .route("/serial", put(put_serial))
        .route("/entropy", put(put_entropy))
        .route("/vsock", put(put_vsock))
        .route("/snapshot/create", put(put_snapshot_create))
        .route("/snapshot/load", put(put_snapshot_load))
        .route("/drives/{drive_id}", put(put_drive).patch(patch_drive))
        .route(
            "/network-interfaces/{iface_id}",
            put(put_network_interface).patch(patch_network_interface),
        )
        .route("/fs/{tag}", put(put_fs))
        .route(
            "/balloon",
            put(put_balloon).get(get_balloon).patch(patch_balloon),
        )
        .route(
            "/balloon/statistics",
            get(get_balloon_stats).patch(patch_balloon_stats),
        )
        .route(
            "/balloon/hinting/start",
            axum::routing::patch(patch_balloon_hinting_start),
        )
        .route("/balloon/hinting/status", get(get_balloon_hinting))
        .route(
            "/balloon/hinting/stop",
            axum::routing::patch(patch_balloon_hinting_stop),
        )
        .route("/pmem/{id}", put(put_pmem).patch(patch_pmem))
        .route(
            "/hotplug/memory",
            put(put_memory_hotplug)
                .get(get_memory_hotplug)
                .patch(patch_memory_hotplug),
        )
        .route("/mmds", get(get_mmds).put(put_mmds).patch(patch_mmds))
        .route("/mmds/config", put(put_mmds_config));
    #[cfg(feature = "test-hooks")]
    let routes = routes.route("/test/forbidden-call", put(put_forbidden_call));
    routes
        .fallback(invalid_route)
        .method_not_allowed_fallback(invalid_route)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(api)
}

/// The tests' hook: `{"thread": "api"|"vmm"|"vcpu"}` makes that thread
/// call something its seccomp filter forbids. 204 when the call went
/// through (no filter, or `--seccomp-level log`): `{"went_through": true}`; under a killing
/// filter the process is gone before it answers.
#[cfg(feature = "test-hooks")]
async fn put_forbidden_call(State(api): State<ApiSender>, body: Body) -> Response {
    use crate::jail::seccomp::{forbidden_call, ThreadKind};
    #[derive(serde::Deserialize)]
    struct Req {
        thread: ThreadKind,
    }
    match parse::<Req>(&body) {
        Ok(Req {
            thread: ThreadKind::Api,
        }) => {
            let went = forbidden_call();
            (
                StatusCode::OK,
                Json(serde_json::json!({ "went_through": went })),
            )
                .into_response()
        }
        Ok(Req { thread }) => call(&api, VmmAction::ForbiddenCall(thread)).await,
        Err(e) => fault(e),
    }
}

/// A 400 with Firecracker's error body.
pub fn fault(msg: impl Into<String>) -> Response {
    fault_with(StatusCode::BAD_REQUEST, msg)
}

/// An error status with Firecracker's error body.
pub fn fault_with(status: StatusCode, msg: impl Into<String>) -> Response {
    METRICS.api_server.bad_requests.inc();
    let body = serde_json::json!({ "fault_message": msg.into() });
    (status, Json(body)).into_response()
}

fn respond(reply: VmmReply) -> Response {
    match reply {
        Ok(VmmData::Empty) => StatusCode::NO_CONTENT.into_response(),
        Ok(VmmData::Json(v)) => (StatusCode::OK, Json(v)).into_response(),
        // An MMDS update over the data store's limit, as Firecracker
        // answers it.
        Err(crate::vmm::rpc::VmmActionError::Mmds(e)) if e.is_too_large() => {
            fault_with(StatusCode::PAYLOAD_TOO_LARGE, e.to_string())
        }
        Err(e) => fault(e.to_string()),
    }
}

/// Parses any JSON value (the MMDS document need not be an object).
fn parse_value(body: &Body) -> Result<serde_json::Value, String> {
    let body = body
        .as_ref()
        .map_err(|e| format!("cannot read the request body: {}", e.body_text()))?;
    if body.is_empty() {
        return Err("the request body is empty; a JSON document is expected".into());
    }
    serde_json::from_slice(body).map_err(|e| format!("invalid request body: {e}"))
}

/// Parses a JSON object body; the error is the fault message.
fn parse<T: DeserializeOwned>(body: &Body) -> Result<T, String> {
    let body = body
        .as_ref()
        .map_err(|e| format!("cannot read the request body: {}", e.body_text()))?;
    if body.is_empty() {
        return Err("the request body is empty; a JSON object is expected".into());
    }
    let invalid = |e: serde_json::Error| format!("invalid request body: {e}");
    let value: serde_json::Value = serde_json::from_slice(body).map_err(invalid)?;
    if !value.is_object() {
        return Err("invalid request body: a JSON object is expected".into());
    }
    serde_json::from_value(value).map_err(invalid)
}

async fn call(api: &ApiSender, action: VmmAction) -> Response {
    METRICS.api_server.requests.inc();
    respond(api.call(action).await)
}

async fn call_with<T: DeserializeOwned>(
    api: &ApiSender,
    body: &Body,
    action: impl FnOnce(T) -> VmmAction,
) -> Response {
    METRICS.api_server.requests.inc();
    match parse::<T>(body) {
        Ok(v) => respond(api.call(action(v)).await),
        Err(e) => fault(e.to_string()),
    }
}

async fn invalid_route(method: Method, uri: Uri) -> Response {
    METRICS.api_server.requests.inc();
    fault(format!(
        "Invalid request method and/or path: {method} {}",
        uri.path()
    ))
}

async fn get_root(State(api): State<ApiSender>) -> Response {
    call(&api, VmmAction::GetVmInfo).await
}

async fn get_version(State(api): State<ApiSender>) -> Response {
    call(&api, VmmAction::GetVersion).await
}

async fn get_machine_config(State(api): State<ApiSender>) -> Response {
    call(&api, VmmAction::GetMachineConfig).await
}

async fn get_vm_config(State(api): State<ApiSender>) -> Response {
    call(&api, VmmAction::GetFullConfig).await
}

async fn put_boot_source(State(api): State<ApiSender>, body: Body) -> Response {
    call_with(&api, &body, VmmAction::PutBootSource).await
}

async fn put_machine_config(State(api): State<ApiSender>, body: Body) -> Response {
    call_with(&api, &body, VmmAction::PutMachineConfig).await
}

async fn patch_machine_config(State(api): State<ApiSender>, body: Body) -> Response {
    // A PATCH that changes nothing is refused, as Firecracker refuses it.
    match parse::<crate::vmm::config::MachineConfigUpdate>(&body) {
        Ok(u) if u.is_empty() => {
            METRICS.api_server.requests.inc();
            fault("Empty PATCH request: name at least one field to change")
        }
        _ => call_with(&api, &body, VmmAction::PatchMachineConfig).await,
    }
}

async fn put_cpu_config(State(api): State<ApiSender>, body: Body) -> Response {
    call_with(&api, &body, VmmAction::PutCpuConfig).await
}

async fn put_logger(State(api): State<ApiSender>, body: Body) -> Response {
    call_with(&api, &body, VmmAction::PutLogger).await
}

async fn put_metrics(State(api): State<ApiSender>, body: Body) -> Response {
    call_with(&api, &body, VmmAction::PutMetrics).await
}

async fn put_serial(State(api): State<ApiSender>, body: Body) -> Response {
    call_with(&api, &body, VmmAction::PutSerial).await
}

async fn put_drive(
    State(api): State<ApiSender>,
    UrlPath(id): UrlPath<String>,
    body: Body,
) -> Response {
    call_with(&api, &body, |d| VmmAction::PutDrive(id, d)).await
}

async fn patch_drive(
    State(api): State<ApiSender>,
    UrlPath(id): UrlPath<String>,
    body: Body,
) -> Response {
    call_with(&api, &body, |d| VmmAction::PatchDrive(id, d)).await
}

async fn put_network_interface(
    State(api): State<ApiSender>,
    UrlPath(id): UrlPath<String>,
    body: Body,
) -> Response {
    call_with(&api, &body, |n| VmmAction::PutNetworkInterface(id, n)).await
}

async fn patch_network_interface(
    State(api): State<ApiSender>,
    UrlPath(id): UrlPath<String>,
    body: Body,
) -> Response {
    call_with(&api, &body, |n| VmmAction::PatchNetworkInterface(id, n)).await
}

async fn put_fs(
    State(api): State<ApiSender>,
    UrlPath(tag): UrlPath<String>,
    body: Body,
) -> Response {
    call_with(&api, &body, |f| VmmAction::PutFs(tag, f)).await
}

async fn put_pmem(
    State(api): State<ApiSender>,
    UrlPath(id): UrlPath<String>,
    body: Body,
) -> Response {
    call_with(&api, &body, |p| VmmAction::PutPmem(id, p)).await
}

async fn patch_pmem(
    State(api): State<ApiSender>,
    UrlPath(id): UrlPath<String>,
    body: Body,
) -> Response {
    call_with(&api, &body, |u| VmmAction::PatchPmem(id, u)).await
}

async fn put_memory_hotplug(State(api): State<ApiSender>, body: Body) -> Response {
    call_with(&api, &body, VmmAction::PutMemoryHotplug).await
}

async fn get_memory_hotplug(State(api): State<ApiSender>) -> Response {
    call(&api, VmmAction::GetMemoryHotplug).await
}

async fn patch_memory_hotplug(State(api): State<ApiSender>, body: Body) -> Response {
    call_with(&api, &body, VmmAction::PatchMemoryHotplug).await
}

async fn put_balloon(State(api): State<ApiSender>, body: Body) -> Response {
    call_with(&api, &body, VmmAction::PutBalloon).await
}

async fn get_balloon(State(api): State<ApiSender>) -> Response {
    call(&api, VmmAction::GetBalloon).await
}

async fn patch_balloon(State(api): State<ApiSender>, body: Body) -> Response {
    call_with(&api, &body, VmmAction::PatchBalloon).await
}

async fn get_balloon_stats(State(api): State<ApiSender>) -> Response {
    call(&api, VmmAction::GetBalloonStats).await
}

async fn patch_balloon_stats(State(api): State<ApiSender>, body: Body) -> Response {
    call_with(&api, &body, VmmAction::PatchBalloonStats).await
}

/// The body may be left out (Firecracker's defaults apply).
async fn patch_balloon_hinting_start(State(api): State<ApiSender>, body: Body) -> Response {
    if matches!(&body, Ok(b) if b.is_empty()) {
        let cmd = crate::vmm::config::BalloonStartCmd::default();
        return call(&api, VmmAction::StartBalloonHinting(cmd)).await;
    }
    call_with(&api, &body, VmmAction::StartBalloonHinting).await
}

async fn get_balloon_hinting(State(api): State<ApiSender>) -> Response {
    call(&api, VmmAction::GetBalloonHinting).await
}

/// Any body is ignored, as in Firecracker.
async fn patch_balloon_hinting_stop(State(api): State<ApiSender>) -> Response {
    call(&api, VmmAction::StopBalloonHinting).await
}

async fn put_entropy(State(api): State<ApiSender>, body: Body) -> Response {
    call_with(&api, &body, VmmAction::PutEntropy).await
}

async fn put_vsock(State(api): State<ApiSender>, body: Body) -> Response {
    call_with(&api, &body, VmmAction::PutVsock).await
}

async fn put_snapshot_create(State(api): State<ApiSender>, body: Body) -> Response {
    call_with(&api, &body, VmmAction::CreateSnapshot).await
}

async fn put_snapshot_load(State(api): State<ApiSender>, body: Body) -> Response {
    call_with(&api, &body, VmmAction::LoadSnapshot).await
}

async fn get_mmds(State(api): State<ApiSender>) -> Response {
    call(&api, VmmAction::GetMmds).await
}

async fn put_mmds(State(api): State<ApiSender>, body: Body) -> Response {
    METRICS.api_server.requests.inc();
    match parse_value(&body) {
        Ok(v) => respond(api.call(VmmAction::PutMmds(v)).await),
        Err(e) => fault(e),
    }
}

async fn patch_mmds(State(api): State<ApiSender>, body: Body) -> Response {
    METRICS.api_server.requests.inc();
    match parse_value(&body) {
        Ok(v) => respond(api.call(VmmAction::PatchMmds(v)).await),
        Err(e) => fault(e),
    }
}

/// `PUT /mmds/config`; a V1 configuration is answered with Firecracker's
/// `Deprecation` header (V1 is deprecated there).
async fn put_mmds_config(State(api): State<ApiSender>, body: Body) -> Response {
    let v1 = parse::<crate::vmm::config::MmdsConfig>(&body)
        .is_ok_and(|c| c.version == crate::vmm::config::MmdsVersion::V1);
    let mut r = call_with(&api, &body, VmmAction::PutMmdsConfig).await;
    if v1 && r.status().is_success() {
        tracing::warn!("PUT /mmds/config: V1 is deprecated. Use V2 instead.");
        r.headers_mut()
            .insert("Deprecation", axum::http::HeaderValue::from_static("true"));
    }
    r
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionBody {
    action_type: ActionType,
}

#[derive(Deserialize)]
enum ActionType {
    InstanceStart,
    SendCtrlAltDel,
    FlushMetrics,
}

async fn put_actions(State(api): State<ApiSender>, body: Body) -> Response {
    METRICS.api_server.actions.inc();
    call_with(&api, &body, |a: ActionBody| match a.action_type {
        ActionType::InstanceStart => VmmAction::InstanceStart,
        ActionType::SendCtrlAltDel => VmmAction::SendCtrlAltDel,
        ActionType::FlushMetrics => VmmAction::FlushMetrics,
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VmStateBody {
    state: VmStateChange,
}

#[derive(Deserialize)]
enum VmStateChange {
    Paused,
    Resumed,
}

async fn patch_vm(State(api): State<ApiSender>, body: Body) -> Response {
    call_with(&api, &body, |b: VmStateBody| match b.state {
        VmStateChange::Paused => VmmAction::Pause,
        VmStateChange::Resumed => VmmAction::Resume,
    })
    .await
}

/// Counters as JSON, or as Prometheus text when the client asks for it.
async fn get_metrics(headers: HeaderMap) -> Response {
    METRICS.api_server.requests.inc();
    let wants_text = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/plain"));
    if wants_text {
        (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            prometheus_text(&METRICS),
        )
            .into_response()
    } else {
        Json(snapshot_json(&METRICS)).into_response()
    }
}

#[cfg(test)]
mod tests;
