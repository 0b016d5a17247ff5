//! Interactive stdio over an upgraded HTTP/1.1 connection: attaching to
//! a container's main process (`POST /v1/containers/{id}/attach`) and
//! interactive exec (`POST /v1/containers/{id}/exec` with the upgrade
//! headers), as Docker's hijacked connections do.
//!
//! The client sends the request with `Connection: Upgrade` and
//! `Upgrade: tcp`, and a JSON body (`{"window": {"rows", "cols"}}` for
//! attach, the exec request with `stdin`, `tty` and `window` for exec).
//! Errors come back as usual (`404`, `409`, `cannot_run`, ...); success
//! is `101 Switching Protocols`, after which the connection carries
//! frames both ways:
//!
//! ```text
//! u8      kind
//! u32 LE  payload length, 0 ..= 65536
//! ...     payload
//! ```
//!
//! | kind | name        | way             | payload                           |
//! |------|-------------|-----------------|-----------------------------------|
//! | 0    | stdin       | client → daemon | bytes for the process's stdin     |
//! | 1    | stdout      | daemon → client | output (all of it with a TTY)     |
//! | 2    | stderr      | daemon → client | error output (never with a TTY)   |
//! | 3    | close_stdin | client → daemon | none: end of stdin (^D on a TTY)  |
//! | 4    | resize      | client → daemon | u16 LE rows, u16 LE cols          |
//! | 5    | signal      | client → daemon | i32 LE signal number (1 ..= 64)   |
//! | 6    | exit        | daemon → client | i32 LE exit code, 128 + N after signal N; last frame |
//! | 7    | error       | daemon → client | UTF-8 message; last frame         |
//!
//! An unknown kind, a payload over 64 KiB, or a fixed-size payload of
//! the wrong size ends the session. After `exit` or `error` the daemon
//! closes the connection. The end of the client's side of the
//! connection means the client left (it is not the end of stdin: send
//! `close_stdin` for that). Then:
//! - for an attach, nothing happens to the container: it runs on, and
//!   may be attached again;
//! - for an exec, the process's stdin is closed (when it was open) and,
//!   with a TTY, it gets SIGHUP, as a hung-up terminal would give; its
//!   output is read and dropped until it exits.
//!
//! Stdin is forwarded only within the agent's credit (a client that
//! sends faster than the process reads is held at its socket), and
//! only for an exec with `stdin` or a container created with `stdin`;
//! otherwise stdin frames are dropped. An attach made before the
//! container's start sees all its output; its `window` is the size the
//! main process's terminal starts with. A client that reads the main
//! process's output slower than it comes is waited for up to
//! [`SLOW_CLIENT`], then gets `error` and is dropped: the container's
//! logs never wait on it longer than that. An exec's output waits for
//! its client, as a pipe would.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::Response;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::sync::watch;

use super::api::JsonBody;
use super::containers::{ApiError, Container, Manager};
use super::state::ContainerState;
use crate::agent::client::{Event, Process, ProcessInput};
use crate::agent::protocol::{ProcessSpec, Stream, WindowSize};
use crate::client::types::AttachFrame;
use crate::client::{AttachReader, AttachWriter};

/// How long the main process's output waits for one attached client.
pub const SLOW_CLIENT: Duration = Duration::from_secs(5);
/// Output chunks queued for one attached client.
const QUEUE: usize = 64;

type Chunk = (Stream, Vec<u8>);

/// What a container keeps for clients attached to its main process: where
/// its output goes, its input once it runs, and the terminal's size.
pub struct AttachPoint {
    sinks: Mutex<Vec<mpsc::Sender<Chunk>>>,
    input: watch::Sender<Option<ProcessInput>>,
    window: Mutex<Option<WindowSize>>,
    ended: AtomicBool,
}

impl Default for AttachPoint {
    fn default() -> Self {
        AttachPoint {
            sinks: Mutex::new(Vec::new()),
            input: watch::channel(None).0,
            window: Mutex::new(None),
            ended: AtomicBool::new(false),
        }
    }
}

impl AttachPoint {
    /// A new client: the main process's output from now on.
    fn subscribe(&self) -> mpsc::Receiver<Chunk> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let mut sinks = self.sinks.lock().unwrap_or_else(|e| e.into_inner());
        sinks.retain(|s| !s.is_closed());
        sinks.push(tx);
        rx
    }

    /// The pump: a chunk of the main process's output, for every attached
    /// client. A client that has not taken its queue within
    /// [`SLOW_CLIENT`] is dropped.
    pub async fn output(&self, stream: Stream, data: &[u8]) {
        let sinks = self.sinks.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut gone = Vec::new();
        for s in sinks {
            match s.try_send((stream, data.to_vec())) {
                Ok(()) => {}
                Err(TrySendError::Closed(_)) => gone.push(s),
                Err(TrySendError::Full(chunk)) => {
                    if !matches!(
                        tokio::time::timeout(SLOW_CLIENT, s.send(chunk)).await,
                        Ok(Ok(()))
                    ) {
                        tracing::warn!("an attached client fell behind the output; dropped");
                        gone.push(s);
                    }
                }
            }
        }
        if !gone.is_empty() {
            self.sinks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|s| !gone.iter().any(|g| g.same_channel(s)));
        }
    }

    /// The main process runs: attached clients' input goes to it.
    pub fn started(&self, input: ProcessInput) {
        self.input.send_replace(Some(input));
    }

    /// The container starts again after it exited: its next main process
    /// has not ended.
    pub fn restarted(&self) {
        self.ended.store(false, Ordering::SeqCst);
    }

    /// The main process ended: clients get the end of its output.
    pub fn ended(&self) {
        self.ended.store(true, Ordering::SeqCst);
        self.input.send_replace(None);
        self.sinks.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// The attached terminal's latest size.
    pub fn window(&self) -> Option<WindowSize> {
        *self.window.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_window(&self, w: WindowSize) {
        *self.window.lock().unwrap_or_else(|e| e.into_inner()) = Some(w);
    }

    fn current_input(&self) -> Option<ProcessInput> {
        self.input.borrow().clone()
    }
}

/// The upgrade a request asked for (`Connection: Upgrade` and an
/// `Upgrade` header), if it did.
pub(super) struct Upgrade(pub Option<OnUpgrade>);

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        let asked = parts
            .headers
            .get(header::CONNECTION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
            && parts.headers.contains_key(header::UPGRADE);
        Ok(Upgrade(if asked {
            parts.extensions.remove::<OnUpgrade>()
        } else {
            None
        }))
    }
}

fn need_upgrade() -> ApiError {
    ApiError::BadRequest(
        "this needs an upgraded connection: send Connection: Upgrade and Upgrade: tcp".into(),
    )
}

fn switching_protocols() -> Response {
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "tcp")
        .body(Body::empty())
        .expect("a valid response")
}

fn usable(w: &WindowSize) -> bool {
    w.rows > 0 && w.cols > 0
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct AttachBody {
    /// The terminal's size, with a TTY: `{rows, cols}`. A container
    /// attached before its start starts with it.
    #[schema(value_type = Option<Object>)]
    window: Option<WindowSize>,
}

/// `POST /v1/containers/{id}/attach`: the main process's stdio, of a
/// container that is created (attached before its start) or running.
#[utoipa::path(post, path = "/v1/containers/{id}/attach", tag = "containers", params(("id" = String, Path, description = "A container's id, unique id prefix, or name")), request_body = AttachBody, responses((status = 101, description = "With `Connection: Upgrade` and `Upgrade: tcp`: the main process's stdio, framed as src/daemon/attach.rs and docs/agent-protocol.md say"), (status = 400, description = "Without the upgrade headers, or bad input", body = super::api::ErrorBody), (status = 404, description = "No such container", body = super::api::ErrorBody), (status = 409, description = "The container has exited", body = super::api::ErrorBody)))]
pub(super) async fn attach(
    State(m): State<Arc<Manager>>,
    Path(id): Path<String>,
    Upgrade(up): Upgrade,
    JsonBody(b): JsonBody<AttachBody>,
) -> Result<Response, ApiError> {
    let up = up.ok_or_else(need_upgrade)?;
    let c = m.find(&id)?;
    let r = c.snapshot();
    if !(r.state == ContainerState::Created || r.state.is_active()) {
        return Err(ApiError::Conflict(format!(
            "container {} is {}: only a created or running container can be attached",
            &r.id[..12],
            r.state.as_str()
        )));
    }
    if let Some(w) = b.window.filter(usable) {
        c.stdio.set_window(w);
        if let Some(input) = c.stdio.current_input() {
            let _ = input.resize(w).await;
        }
    }
    let out = c.stdio.subscribe();
    tokio::spawn(async move {
        match up.await {
            Ok(io) => main_session(c, out, io).await,
            Err(e) => tracing::debug!("attach: the upgrade failed: {e}"),
        }
    });
    Ok(switching_protocols())
}

/// The last frame for an attach: how the container ended.
fn exit_frame(c: &Container) -> AttachFrame {
    let r = c.snapshot();
    match r.exit_code {
        Some(code) => AttachFrame::Exit(code),
        None => AttachFrame::Error(
            r.error
                .unwrap_or_else(|| "the container ended without an exit status".into()),
        ),
    }
}

fn data_frame((stream, data): Chunk) -> AttachFrame {
    match stream {
        Stream::Stderr => AttachFrame::Stderr(data),
        _ => AttachFrame::Stdout(data),
    }
}

type ClientReader = AttachReader<tokio::io::ReadHalf<TokioIo<Upgraded>>>;
type ClientWriter = AttachWriter<tokio::io::WriteHalf<TokioIo<Upgraded>>>;

fn split(io: Upgraded) -> (ClientReader, ClientWriter) {
    let (r, w) = tokio::io::split(TokioIo::new(io));
    (AttachReader::new(r), AttachWriter::new(w))
}

async fn main_session(c: Arc<Container>, mut out: mpsc::Receiver<Chunk>, io: Upgraded) {
    let (reader, mut writer) = split(io);
    let mut from_client = tokio::spawn(main_input(c.clone(), reader));
    let last = loop {
        tokio::select! {
            biased;
            _ = &mut from_client => return,
            got = out.recv() => match got {
                Some(chunk) => {
                    if writer.send(&data_frame(chunk)).await.is_err() {
                        break None;
                    }
                }
                None if c.stdio.ended.load(Ordering::SeqCst) => {
                    c.wait_exit().await;
                    break Some(exit_frame(&c));
                }
                None => break Some(AttachFrame::Error(
                    "the client fell behind the container's output; detached".into(),
                )),
            },
            // A container that did not start has no pump to end it.
            _ = c.wait_exit() => {
                while let Ok(chunk) = out.try_recv() {
                    if writer.send(&data_frame(chunk)).await.is_err() {
                        from_client.abort();
                        return;
                    }
                }
                break Some(exit_frame(&c));
            }
        }
    };
    from_client.abort();
    if let Some(f) = last {
        let _ = writer.send(&f).await;
        writer.shutdown().await;
    }
}

/// The main process's input, once it runs (None if it never does).
async fn main_process(
    c: &Container,
    rx: &mut watch::Receiver<Option<ProcessInput>>,
) -> Option<ProcessInput> {
    tokio::select! {
        r = rx.wait_for(|i| i.is_some()) => r.ok().and_then(|i| i.clone()),
        _ = c.wait_exit() => None,
    }
}

/// A client's frames to the main process, until the client leaves.
async fn main_input(c: Arc<Container>, mut reader: ClientReader) {
    let stdin = c.snapshot().config.stdin;
    let mut rx = c.stdio.input.subscribe();
    loop {
        let frame = match reader.recv().await {
            Ok(Some(f)) => f,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!("attach: {e}");
                return;
            }
        };
        match frame {
            AttachFrame::Resize(w) if usable(&w) => {
                c.stdio.set_window(w);
                if let Some(input) = c.stdio.current_input() {
                    let _ = input.resize(w).await;
                }
            }
            AttachFrame::Resize(_) => {}
            AttachFrame::Stdin(d) if stdin => {
                if let Some(input) = main_process(&c, &mut rx).await {
                    // Fails only once the process is gone.
                    let _ = input.write_stdin(&d).await;
                }
            }
            AttachFrame::CloseStdin if stdin => {
                if let Some(input) = main_process(&c, &mut rx).await {
                    let _ = input.close_stdin().await;
                }
            }
            AttachFrame::Stdin(_) | AttachFrame::CloseStdin => {}
            AttachFrame::Signal(n) if (1..=64).contains(&n) => {
                if let Some(input) = main_process(&c, &mut rx).await {
                    let _ = input.signal(n).await;
                }
            }
            AttachFrame::Signal(_) => {}
            other => {
                tracing::debug!("attach: a client sent {other:?}; closing");
                return;
            }
        }
    }
}

/// The upgraded form of `POST /v1/containers/{id}/exec`: the process
/// starts (or its error is the answer), then the session runs.
pub(super) async fn exec(
    m: Arc<Manager>,
    id: &str,
    spec: ProcessSpec,
    stdin: bool,
    up: OnUpgrade,
) -> Result<Response, ApiError> {
    let tty = spec.tty;
    let p = m.exec(id, spec).await?;
    let input = p.input();
    if !stdin && !tty {
        // As with `docker exec` without -i: stdin is empty.
        let _ = input.close_stdin().await;
    }
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::spawn(forward(p, tx));
    tokio::spawn(async move {
        match up.await {
            Ok(io) => exec_session(io, rx, input, stdin, tty).await,
            Err(e) => {
                tracing::debug!("exec: the upgrade failed: {e}");
                client_left(&input, stdin, tty).await;
            }
        }
    });
    Ok(switching_protocols())
}

/// Reads the process's output until it exits, for the session while it
/// lasts (waiting for it), then dropping it.
async fn forward(mut p: Process, tx: mpsc::Sender<AttachFrame>) {
    let mut tx = Some(tx);
    loop {
        let (frame, last) = match p.next().await {
            Ok(Some(Event::Output(stream, data))) => (data_frame((stream, data)), false),
            Ok(Some(Event::Exit(s))) => (AttachFrame::Exit(s.shell_code()), true),
            Ok(None) => (
                AttachFrame::Error("the agent sent no exit status".into()),
                true,
            ),
            Err(e) => (AttachFrame::Error(e.to_string()), true),
        };
        if let Some(t) = &tx {
            if t.send(frame).await.is_err() {
                tx = None;
            }
        }
        if last {
            return;
        }
    }
}

/// What a hung-up client leaves an exec'd process with.
async fn client_left(input: &ProcessInput, stdin: bool, tty: bool) {
    if stdin {
        let _ = input.close_stdin().await;
    }
    if tty {
        let _ = input.signal(libc::SIGHUP).await;
    }
}

async fn exec_session(
    io: Upgraded,
    mut out: mpsc::Receiver<AttachFrame>,
    input: ProcessInput,
    stdin: bool,
    tty: bool,
) {
    let (reader, mut writer) = split(io);
    let mut from_client = tokio::spawn(exec_input(reader, input.clone(), stdin));
    loop {
        tokio::select! {
            biased;
            _ = &mut from_client => {
                client_left(&input, stdin, tty).await;
                return;
            }
            f = out.recv() => {
                let f = f.unwrap_or_else(|| AttachFrame::Error("the process's output ended".into()));
                let last = matches!(f, AttachFrame::Exit(_) | AttachFrame::Error(_));
                if writer.send(&f).await.is_err() {
                    from_client.abort();
                    if !last {
                        client_left(&input, stdin, tty).await;
                    }
                    return;
                }
                if last {
                    break;
                }
            }
        }
    }
    from_client.abort();
    writer.shutdown().await;
}

/// A client's frames to an exec'd process, until the client leaves.
async fn exec_input(mut reader: ClientReader, input: ProcessInput, stdin: bool) {
    loop {
        let frame = match reader.recv().await {
            Ok(Some(f)) => f,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!("exec: {e}");
                return;
            }
        };
        match frame {
            AttachFrame::Stdin(d) if stdin => {
                let _ = input.write_stdin(&d).await;
            }
            AttachFrame::CloseStdin if stdin => {
                let _ = input.close_stdin().await;
            }
            AttachFrame::Stdin(_) | AttachFrame::CloseStdin => {}
            AttachFrame::Resize(w) if usable(&w) => {
                let _ = input.resize(w).await;
            }
            AttachFrame::Resize(_) => {}
            AttachFrame::Signal(n) if (1..=64).contains(&n) => {
                let _ = input.signal(n).await;
            }
            AttachFrame::Signal(_) => {}
            other => {
                tracing::debug!("exec: a client sent {other:?}; closing");
                return;
            }
        }
    }
}
