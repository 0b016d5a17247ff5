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
mod tests {
    //! The router driven in process: HTTP in, actions out, answers mapped
    //! to status codes. The VMM thread's side is played by a thread that
    //! records each action and answers it.
    use super::*;
    use crate::vmm::rpc::{channel_pair, VmmActionError};
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    /// Runs `f` against a router whose VMM side answers with `answer`;
    /// returns the actions the VMM side saw.
    fn with_router(
        answer: fn(&VmmAction) -> VmmReply,
        f: impl FnOnce(Router) -> Vec<(u16, serde_json::Value)>,
    ) -> (Vec<(u16, serde_json::Value)>, Vec<String>) {
        let (tx, rx) = channel_pair().unwrap();
        let vmm_side = std::thread::spawn(move || {
            let mut seen = Vec::new();
            while let Ok(req) = rx.rx.recv() {
                seen.push(format!("{:?}", req.action));
                req.serve(|a| answer(&a));
            }
            seen
        });
        let results = f(router(tx));
        (results, vmm_side.join().unwrap())
    }

    fn send(router: &Router, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let req = Request::builder()
                .method(method)
                .uri(path)
                .body(Body::from(body.to_string()))
                .unwrap();
            let r = router.clone().oneshot(req).await.unwrap();
            let status = r.status().as_u16();
            let bytes = axum::body::to_bytes(r.into_body(), MAX_BODY).await.unwrap();
            (status, serde_json::from_slice(&bytes).unwrap_or_default())
        })
    }

    #[test]
    fn requests_become_actions_and_answers_become_status_codes() {
        let (results, seen) = with_router(
            |a| match a {
                VmmAction::GetVmInfo => Ok(VmmData::Json(serde_json::json!({"id": "x"}))),
                VmmAction::InstanceStart => Err(VmmActionError::NoKernel),
                _ => Ok(VmmData::Empty),
            },
            |r| {
                vec![
                    send(&r, "GET", "/", ""),
                    send(
                        &r,
                        "PUT",
                        "/machine-config",
                        r#"{"vcpu_count": 2, "mem_size_mib": 256}"#,
                    ),
                    send(&r, "PUT", "/actions", r#"{"action_type": "InstanceStart"}"#),
                    send(&r, "PATCH", "/vm", r#"{"state": "Paused"}"#),
                ]
            },
        );
        assert_eq!(results[0], (200, serde_json::json!({"id": "x"})));
        assert_eq!(results[1].0, 204);
        assert_eq!(results[2].0, 400);
        assert!(results[2].1["fault_message"]
            .as_str()
            .unwrap()
            .contains("PUT /boot-source first"));
        assert_eq!(results[3].0, 204);
        assert_eq!(seen.len(), 4);
        assert!(seen[1].starts_with("PutMachineConfig"), "{seen:?}");
        assert_eq!(seen[3], "Pause");
    }

    #[test]
    fn bad_requests_never_reach_the_vmm() {
        let (results, seen) = with_router(
            |_| Ok(VmmData::Empty),
            |r| {
                vec![
                    send(&r, "PUT", "/machine-config", "{\"vcpu_count\": "),
                    send(&r, "PUT", "/machine-config", "[1]"),
                    send(&r, "PUT", "/boot-source", ""),
                    send(&r, "PUT", "/actions", r#"{"action_type": "Explode"}"#),
                    send(&r, "DELETE", "/boot-source", ""),
                    send(&r, "GET", "/no/such/path", ""),
                ]
            },
        );
        for (status, body) in &results {
            assert_eq!(*status, 400, "{body}");
            assert!(body["fault_message"].is_string(), "{body}");
        }
        assert!(seen.is_empty(), "{seen:?}");
    }

    #[test]
    fn fs_devices_become_actions_with_the_path_tag() {
        let (results, seen) = with_router(
            |_| Ok(VmmData::Empty),
            |r| {
                vec![
                    send(
                        &r,
                        "PUT",
                        "/fs/share",
                        r#"{"tag": "share", "socket_path": "/run/fs.sock"}"#,
                    ),
                    // Never reach the VMM: a missing field, an unknown
                    // one, no tag in the path, a PATCH.
                    send(&r, "PUT", "/fs/share", r#"{"tag": "share"}"#),
                    send(
                        &r,
                        "PUT",
                        "/fs/share",
                        r#"{"tag": "share", "socket_path": "/s", "dax": true}"#,
                    ),
                    send(&r, "PUT", "/fs", r#"{"tag": "a", "socket_path": "/s"}"#),
                    send(&r, "PATCH", "/fs/share", r#"{"tag": "share"}"#),
                ]
            },
        );
        let codes: Vec<_> = results.iter().map(|r| r.0).collect();
        assert_eq!(codes, vec![204, 400, 400, 400, 400], "{results:?}");
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert!(
            seen[0].starts_with("PutFs(\"share\", FsConfig { tag: \"share\""),
            "{seen:?}"
        );
        assert!(
            seen[0].contains("num_queues: 1, queue_size: 1024"),
            "{seen:?}"
        );
    }

    #[test]
    fn balloon_requests_become_actions() {
        let (results, seen) = with_router(
            |a| match a {
                VmmAction::GetBalloonStats => Ok(VmmData::Json(
                    serde_json::json!({"target_pages": 256, "actual_pages": 0,
                                       "target_mib": 1, "actual_mib": 0}),
                )),
                VmmAction::PatchBalloonStats(_) => Err(VmmActionError::Config(
                    crate::vmm::config::ConfigError::BalloonStatsChange,
                )),
                _ => Ok(VmmData::Empty),
            },
            |r| {
                vec![
                    send(
                        &r,
                        "PUT",
                        "/balloon",
                        r#"{"amount_mib": 16, "deflate_on_oom": true, "stats_polling_interval_s": 1}"#,
                    ),
                    send(&r, "GET", "/balloon", ""),
                    send(&r, "PATCH", "/balloon", r#"{"amount_mib": 32}"#),
                    send(&r, "GET", "/balloon/statistics", ""),
                    send(
                        &r,
                        "PATCH",
                        "/balloon/statistics",
                        r#"{"stats_polling_interval_s": 0}"#,
                    ),
                    // Never reach the VMM: a missing field, an unknown
                    // one, a negative target, a PUT of statistics.
                    send(&r, "PUT", "/balloon", r#"{"amount_mib": 16}"#),
                    send(
                        &r,
                        "PATCH",
                        "/balloon",
                        r#"{"amount_mib": 1, "deflate_on_oom": true}"#,
                    ),
                    send(&r, "PATCH", "/balloon", r#"{"amount_mib": -1}"#),
                    send(
                        &r,
                        "PUT",
                        "/balloon/statistics",
                        r#"{"stats_polling_interval_s": 1}"#,
                    ),
                ]
            },
        );
        let codes: Vec<_> = results.iter().map(|r| r.0).collect();
        assert_eq!(
            codes,
            vec![204, 204, 204, 200, 400, 400, 400, 400, 400],
            "{results:?}"
        );
        assert_eq!(results[3].1["target_mib"], 1);
        assert!(results[4].1["fault_message"]
            .as_str()
            .unwrap()
            .contains("cannot be enabled or disabled after the microVM started"));
        assert!(results[5].1["fault_message"]
            .as_str()
            .unwrap()
            .contains("missing field `deflate_on_oom`"));
        assert_eq!(seen.len(), 5, "{seen:?}");
        assert!(
            seen[0].starts_with("PutBalloon(BalloonConfig { amount_mib: 16, deflate_on_oom: true, stats_polling_interval_s: 1"),
            "{seen:?}"
        );
        assert_eq!(seen[1], "GetBalloon");
        assert_eq!(seen[2], "PatchBalloon(BalloonUpdate { amount_mib: 32 })");
        assert_eq!(seen[3], "GetBalloonStats");
        assert!(seen[4].starts_with("PatchBalloonStats"), "{seen:?}");
    }

    #[test]
    fn network_interfaces_become_actions_with_the_path_id() {
        let (results, seen) = with_router(
            |_| Ok(VmmData::Empty),
            |r| {
                vec![
                    send(
                        &r,
                        "PUT",
                        "/network-interfaces/eth0",
                        r#"{"iface_id": "eth0", "host_dev_name": "tap0", "mtu": 1400}"#,
                    ),
                    send(
                        &r,
                        "PATCH",
                        "/network-interfaces/eth0",
                        r#"{"iface_id": "eth0"}"#,
                    ),
                    // Never reach the VMM: a missing field, an unknown one.
                    send(
                        &r,
                        "PUT",
                        "/network-interfaces/eth0",
                        r#"{"iface_id": "eth0"}"#,
                    ),
                    send(
                        &r,
                        "PATCH",
                        "/network-interfaces/eth0",
                        r#"{"iface_id": "eth0", "host_dev_name": "tap1"}"#,
                    ),
                ]
            },
        );
        let codes: Vec<_> = results.iter().map(|r| r.0).collect();
        assert_eq!(codes, vec![204, 204, 400, 400], "{results:?}");
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert!(
            seen[0].starts_with("PutNetworkInterface(\"eth0\", NetworkInterfaceConfig"),
            "{seen:?}"
        );
        assert!(
            seen[1].starts_with("PatchNetworkInterface(\"eth0\""),
            "{seen:?}"
        );
    }

    #[test]
    fn mmds_requests_become_actions_and_413s() {
        use crate::vmm::mmds::data_store::DataStoreError;
        use crate::vmm::mmds::MmdsError;
        let (results, seen) = with_router(
            |a| match a {
                VmmAction::PatchMmds(_) => Err(VmmActionError::Mmds(MmdsError::DataStore(
                    DataStoreError::TooLarge { size: 9, limit: 1 },
                ))),
                VmmAction::GetMmds => Ok(VmmData::Json(serde_json::json!({}))),
                _ => Ok(VmmData::Empty),
            },
            |r| {
                vec![
                    send(&r, "PUT", "/mmds", r#"["any", "json"]"#),
                    send(&r, "PATCH", "/mmds", r#"{"a": null}"#),
                    send(&r, "GET", "/mmds", ""),
                    send(
                        &r,
                        "PUT",
                        "/mmds/config",
                        r#"{"network_interfaces": ["eth0"], "version": "V2"}"#,
                    ),
                    // Never reach the VMM: not JSON, no body, a bad config.
                    send(&r, "PUT", "/mmds", "{"),
                    send(&r, "PATCH", "/mmds", ""),
                    send(
                        &r,
                        "PUT",
                        "/mmds/config",
                        r#"{"network_interfaces": ["eth0"], "ipv4_address": 7}"#,
                    ),
                ]
            },
        );
        let codes: Vec<_> = results.iter().map(|r| r.0).collect();
        assert_eq!(
            codes,
            vec![204, 413, 200, 204, 400, 400, 400],
            "{results:?}"
        );
        assert!(results[1].1["fault_message"]
            .as_str()
            .unwrap()
            .contains("over its limit"));
        assert_eq!(seen.len(), 4, "{seen:?}");
        assert!(seen[0].starts_with("PutMmds(Array"), "{seen:?}");
        assert!(seen[3].contains("version: V2"), "{seen:?}");
    }

    #[test]
    fn a_v1_mmds_config_is_answered_as_deprecated() {
        let (tx, rx) = channel_pair().unwrap();
        let vmm_side = std::thread::spawn(move || {
            while let Ok(req) = rx.rx.recv() {
                req.serve(|_| Ok(VmmData::Empty));
            }
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let router = router(tx);
        let deprecation = |body: &str| {
            let req = Request::builder()
                .method("PUT")
                .uri("/mmds/config")
                .body(Body::from(body.to_string()))
                .unwrap();
            let r = rt.block_on(router.clone().oneshot(req)).unwrap();
            assert_eq!(r.status(), 204);
            r.headers().get("Deprecation").cloned()
        };
        assert_eq!(
            deprecation(r#"{"network_interfaces": ["eth0"]}"#).unwrap(),
            "true"
        );
        assert!(deprecation(r#"{"network_interfaces": ["eth0"], "version": "V2"}"#).is_none());
        drop(router);
        vmm_side.join().unwrap();
    }
}
