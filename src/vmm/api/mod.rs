//! The per-VM HTTP API on a Unix socket, shaped after Firecracker's so its
//! clients and SDKs work unchanged.
//!
//! The API thread runs axum on a current-thread tokio runtime. Each request
//! becomes a [`VmmAction`], sent over a channel to the VMM thread, which is
//! woken through an event fd and answers on a oneshot. Connections, their
//! timeouts and their number are managed in [`server`].

pub mod server;

use std::io;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::DefaultBodyLimit;
use axum::extract::State;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::vmm::config::{
    BootSourceConfig, LoggerConfig, MachineConfig, MachineConfigUpdate, MetricsConfig, SerialConfig,
};
use crate::vmm::metrics::{prometheus_text, snapshot_json, METRICS};

/// What the API asks of the VMM thread.
#[derive(Debug)]
pub enum VmmAction {
    GetVmInfo,
    GetVersion,
    GetMachineConfig,
    GetFullConfig,
    PutBootSource(BootSourceConfig),
    PutMachineConfig(MachineConfig),
    PatchMachineConfig(MachineConfigUpdate),
    PutLogger(LoggerConfig),
    PutMetrics(MetricsConfig),
    PutSerial(SerialConfig),
    InstanceStart,
    SendCtrlAltDel,
    FlushMetrics,
    Pause,
    Resume,
}

/// A successful answer.
#[derive(Debug, PartialEq)]
pub enum VmmData {
    Empty,
    Json(serde_json::Value),
}

pub type VmmReply = Result<VmmData, String>;

pub struct ApiRequest {
    pub action: VmmAction,
    pub reply: tokio::sync::oneshot::Sender<VmmReply>,
}

/// The API thread's end of the channel.
#[derive(Clone)]
pub struct ApiSender {
    tx: Sender<ApiRequest>,
    evt: Arc<EventFd>,
}

/// The VMM thread's end of the channel.
pub struct ApiReceiver {
    pub rx: Receiver<ApiRequest>,
    pub evt: EventFd,
}

pub fn channel_pair() -> io::Result<(ApiSender, ApiReceiver)> {
    let evt = EventFd::new(EFD_NONBLOCK)?;
    let (tx, rx) = channel();
    Ok((
        ApiSender {
            tx,
            evt: Arc::new(evt.try_clone()?),
        },
        ApiReceiver { rx, evt },
    ))
}

impl ApiSender {
    async fn call(&self, action: VmmAction) -> VmmReply {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let gone = || Err("the microVM is shutting down".to_string());
        if self.tx.send(ApiRequest { action, reply }).is_err() {
            return gone();
        }
        if self.evt.write(1).is_err() {
            return gone();
        }
        answer.await.unwrap_or_else(|_| gone())
    }
}

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
pub fn spawn_server(
    listener: UnixListener,
    api: ApiSender,
    limits: server::Limits,
) -> io::Result<std::thread::JoinHandle<()>> {
    listener.set_nonblocking(true)?;
    std::thread::Builder::new()
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
                    tracing::error!("cannot start the API runtime: {e}");
                    return;
                }
            };
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
        })
}

/// No request this API takes comes close to this.
pub const MAX_BODY: usize = 64 * 1024;

/// A request body, or why it could not be read (too large, cut short).
type Body = Result<Bytes, BytesRejection>;

pub fn router(api: ApiSender) -> Router {
    Router::new()
        .route("/", get(get_root))
        .route("/version", get(get_version))
        .route("/boot-source", put(put_boot_source))
        .route(
            "/machine-config",
            get(get_machine_config)
                .put(put_machine_config)
                .patch(patch_machine_config),
        )
        .route("/actions", put(put_actions))
        .route("/vm/config", get(get_vm_config))
        .route("/vm", axum::routing::patch(patch_vm))
        .route("/logger", put(put_logger))
        .route("/metrics", put(put_metrics).get(get_metrics))
        .route("/serial", put(put_serial))
        .fallback(invalid_route)
        .method_not_allowed_fallback(invalid_route)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(api)
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
        Err(msg) => fault(msg),
    }
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
        Err(msg) => fault(msg),
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
    call_with(&api, &body, VmmAction::PatchMachineConfig).await
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
