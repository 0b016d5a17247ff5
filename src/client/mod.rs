//! A typed async client of the daemon's API (`husk serve`): HTTP/1.1 and
//! JSON on a Unix socket, one connection per request, so that nothing is
//! kept open between calls and a long stream (logs, events) never blocks
//! another request.

pub mod copy;
pub mod ndjson;
pub mod types;
mod upload;
pub mod volumes;

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{header, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::UnixStream;

pub use ndjson::NdjsonStream;
use types::*;

/// The largest whole (not streamed) answer accepted.
const MAX_BODY: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the husk daemon at {path}: {err}; is `husk serve` running?")]
    Unreachable { path: String, err: String },
    #[error("{path}: {err}")]
    Local { path: String, err: String },
    #[error("Error response from daemon: {message}")]
    Api {
        status: u16,
        code: ErrorCode,
        message: String,
        /// With `cannot_run`: the exit code `husk run` gives.
        exit_code: Option<i32>,
    },
    #[error("the connection to the husk daemon broke: {0}")]
    Broken(String),
    #[error("the husk daemon answered something unexpected: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The API's error kind, for an API error.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// For a container whose program could not be started: the code a
    /// shell gives (127 missing, 126 not executable), which `husk run` and
    /// `husk exec` exit with, as Docker's do.
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            ClientError::Api { exit_code, .. } => *exit_code,
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.code() == Some(ErrorCode::NotFound)
    }
}

/// The daemon's socket when nothing says otherwise:
/// `/run/husk/husk.sock` for root, else `$XDG_RUNTIME_DIR/husk/husk.sock`,
/// else `/tmp/husk-$UID/husk.sock`.
pub fn default_socket_path() -> PathBuf {
    // SAFETY: geteuid cannot fail and touches no memory.
    let uid = unsafe { libc::geteuid() };
    let xdg = std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty());
    default_socket_for(uid, xdg.as_deref().map(Path::new))
}

fn default_socket_for(uid: u32, xdg_runtime_dir: Option<&Path>) -> PathBuf {
    if uid == 0 {
        PathBuf::from("/run/husk/husk.sock")
    } else if let Some(dir) = xdg_runtime_dir {
        dir.join("husk/husk.sock")
    } else {
        PathBuf::from(format!("/tmp/husk-{uid}/husk.sock"))
    }
}

/// The socket to use: `flag` (`--socket`), else `$HUSK_HOST`, else the
/// default. Either may be a path or `unix:///path`.
pub fn resolve_socket(flag: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(p) = flag {
        return parse_host(&p.to_string_lossy());
    }
    match std::env::var("HUSK_HOST") {
        Ok(v) if !v.is_empty() => parse_host(&v).map_err(|e| format!("$HUSK_HOST: {e}")),
        _ => Ok(default_socket_path()),
    }
}

/// A path, or `unix://` and a path.
fn parse_host(s: &str) -> Result<PathBuf, String> {
    if let Some(path) = s.strip_prefix("unix://") {
        if path.is_empty() {
            return Err("unix:// names no socket".into());
        }
        return Ok(PathBuf::from(path));
    }
    if let Some((scheme, _)) = s.split_once("://") {
        return Err(format!(
            "\"{}\" is not a Unix socket: the daemon listens on one only (unix:///path)",
            crate::text::echo(scheme)
        ));
    }
    Ok(PathBuf::from(s))
}

/// `s` with everything but unreserved characters percent-encoded, for a
/// path segment or a query value.
pub fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Builds `?k=v&...` from pairs (empty when there are none).
fn query(pairs: &[(&str, String)]) -> String {
    let mut q = String::new();
    for (k, v) in pairs {
        q.push(if q.is_empty() { '?' } else { '&' });
        q.push_str(k);
        q.push('=');
        q.push_str(&encode_component(v));
    }
    q
}

fn container_path(id: &str, rest: &str) -> String {
    format!("/v1/containers/{}{rest}", encode_component(id))
}

/// The client. Cheap to clone: it holds only the socket's path.
#[derive(Clone, Debug)]
pub struct DaemonClient {
    socket: PathBuf,
}

impl DaemonClient {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        DaemonClient {
            socket: socket.into(),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// A new HTTP/1.1 connection to the daemon: the request sender, and
    /// the connection, which the caller drives (spawns).
    pub(crate) async fn open<B>(
        &self,
    ) -> Result<
        (
            hyper::client::conn::http1::SendRequest<B>,
            hyper::client::conn::http1::Connection<TokioIo<UnixStream>, B>,
        ),
        ClientError,
    >
    where
        B: hyper::body::Body + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|e| ClientError::Unreachable {
                    path: crate::text::echo_path(&self.socket),
                    err: e.to_string(),
                })?;
        hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ClientError::Broken(e.to_string()))
    }

    /// Sends one request on a new connection; a non-2xx answer becomes
    /// [`ClientError::Api`].
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Response<Incoming>, ClientError> {
        let (mut sender, conn) = self.open().await?;
        // The connection runs until the answer's body is read or dropped.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "localhost")
            .header(header::ACCEPT, "application/json");
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::Protocol(format!("cannot build the request: {e}")))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| ClientError::Broken(e.to_string()))?;
        if resp.status().is_success() {
            Ok(resp)
        } else {
            Err(api_error(resp).await)
        }
    }

    async fn send_json<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: &B,
    ) -> Result<Response<Incoming>, ClientError> {
        let body = serde_json::to_vec(body)
            .map_err(|e| ClientError::Protocol(format!("cannot encode the request: {e}")))?;
        self.send(method, path, Some(body)).await
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        read_json(self.send(Method::GET, path, None).await?).await
    }

    // --- containers ---

    /// `POST /v1/containers`.
    pub async fn create(&self, req: &CreateRequest) -> Result<CreateResponse, ClientError> {
        read_json(self.send_json(Method::POST, "/v1/containers", req).await?).await
    }

    /// `POST /v1/containers/{id}/start`: returns once the process runs.
    pub async fn start(&self, id: &str) -> Result<(), ClientError> {
        let path = container_path(id, "/start");
        drain(self.send(Method::POST, &path, None).await?).await
    }

    /// `GET /v1/containers`.
    pub async fn list(&self, opts: &ListOptions) -> Result<Vec<ContainerRecord>, ClientError> {
        let mut q = vec![("all", opts.all.to_string())];
        if let Some(s) = opts.state {
            q.push(("state", s.as_str().to_string()));
        }
        if let Some(l) = &opts.label {
            q.push(("label", l.clone()));
        }
        self.get(&format!("/v1/containers{}", query(&q))).await
    }

    /// `GET /v1/containers/{id}`: by id, unique id prefix, or name.
    pub async fn inspect(&self, id: &str) -> Result<ContainerRecord, ClientError> {
        self.get(&container_path(id, "")).await
    }

    /// `GET /v1/containers/{id}/logs`.
    pub async fn logs(
        &self,
        id: &str,
        opts: &LogsOptions,
    ) -> Result<NdjsonStream<LogLine>, ClientError> {
        let mut q = vec![
            ("follow", opts.follow.to_string()),
            ("stdout", opts.stdout.to_string()),
            ("stderr", opts.stderr.to_string()),
        ];
        if let Some(t) = opts.tail {
            q.push(("tail", t.to_string()));
        }
        if let Some(s) = opts.since {
            q.push(("since", s.to_string()));
        }
        let path = container_path(id, &format!("/logs{}", query(&q)));
        Ok(NdjsonStream::new(
            self.send(Method::GET, &path, None).await?.into_body(),
        ))
    }

    /// `POST /v1/containers/{id}/wait`: returns once the container has
    /// exited.
    pub async fn wait(&self, id: &str) -> Result<WaitResponse, ClientError> {
        let path = container_path(id, "/wait");
        read_json(self.send(Method::POST, &path, None).await?).await
    }

    /// `POST /v1/containers/{id}/kill`.
    pub async fn kill(&self, id: &str, signal: i32) -> Result<(), ClientError> {
        let path = container_path(id, "/kill");
        let body = KillRequest { signal };
        drain(self.send_json(Method::POST, &path, &body).await?).await
    }

    /// `POST /v1/containers/{id}/stop`: returns once it has stopped.
    pub async fn stop(&self, id: &str, timeout: Option<u64>) -> Result<(), ClientError> {
        let path = container_path(id, "/stop");
        let body = match timeout {
            Some(timeout) => StopRequest { timeout },
            None => StopRequest::default(),
        };
        drain(self.send_json(Method::POST, &path, &body).await?).await
    }

    /// `DELETE /v1/containers/{id}`.
    pub async fn remove(&self, id: &str, force: bool) -> Result<(), ClientError> {
        self.remove_with(id, force, false).await
    }

    /// `DELETE /v1/containers/{id}`, with its anonymous volumes when
    /// `volumes` is set.
    pub async fn remove_with(
        &self,
        id: &str,
        force: bool,
        volumes: bool,
    ) -> Result<(), ClientError> {
        let mut q = vec![("force", force.to_string())];
        if volumes {
            q.push(("volumes", "true".to_string()));
        }
        let path = container_path(id, &query(&q));
        drain(self.send(Method::DELETE, &path, None).await?).await
    }

    /// `POST /v1/containers/{id}/exec`: the process's output, then its
    /// exit (or an error).
    pub async fn exec(
        &self,
        id: &str,
        req: &ExecRequest,
    ) -> Result<NdjsonStream<ExecEvent>, ClientError> {
        let path = container_path(id, "/exec");
        Ok(NdjsonStream::new(
            self.send_json(Method::POST, &path, req).await?.into_body(),
        ))
    }

    /// `POST /v1/containers/{id}/attach`, upgraded: the main process's
    /// stdio as [`AttachFrame`]s. Attached before the start, nothing of
    /// the output is missed.
    pub async fn attach(&self, id: &str, req: &AttachRequest) -> Result<AttachStream, ClientError> {
        self.upgrade(&container_path(id, "/attach"), req).await
    }

    /// `POST /v1/containers/{id}/exec`, upgraded: a process with stdin
    /// (and a TTY), as [`AttachFrame`]s. Returns once it runs.
    pub async fn exec_attached(
        &self,
        id: &str,
        req: &ExecRequest,
    ) -> Result<AttachStream, ClientError> {
        self.upgrade(&container_path(id, "/exec"), req).await
    }

    /// A request with `Connection: Upgrade` and `Upgrade: tcp`; the
    /// connection after the daemon's `101 Switching Protocols`.
    async fn upgrade<B: Serialize>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<AttachStream, ClientError> {
        let body = serde_json::to_vec(body)
            .map_err(|e| ClientError::Protocol(format!("cannot encode the request: {e}")))?;
        let (mut sender, conn) = self.open().await?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        let req = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(header::HOST, "localhost")
            .header(header::CONNECTION, "Upgrade")
            .header(header::UPGRADE, "tcp")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| ClientError::Protocol(format!("cannot build the request: {e}")))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| ClientError::Broken(e.to_string()))?;
        match resp.status() {
            StatusCode::SWITCHING_PROTOCOLS => {
                let io = hyper::upgrade::on(resp)
                    .await
                    .map_err(|e| ClientError::Broken(e.to_string()))?;
                let (r, w) = tokio::io::split(TokioIo::new(io));
                Ok(AttachStream {
                    reader: AttachReader::new(r),
                    writer: AttachWriter::new(w),
                })
            }
            s if s.is_success() => Err(ClientError::Protocol(format!(
                "{s} where 101 Switching Protocols was expected"
            ))),
            _ => Err(api_error(resp).await),
        }
    }

    // --- images ---

    /// `GET /v1/images`.
    pub async fn images(&self) -> Result<Vec<ImageSummary>, ClientError> {
        self.get("/v1/images").await
    }

    /// `POST /v1/images/pull`: progress, then `done` or an error.
    pub async fn pull(&self, reference: &str) -> Result<NdjsonStream<PullEvent>, ClientError> {
        self.pull_with(&PullRequest {
            reference: reference.to_string(),
            ..Default::default()
        })
        .await
    }

    /// `POST /v1/images/pull` with credentials for the registry.
    pub async fn pull_with(
        &self,
        body: &PullRequest,
    ) -> Result<NdjsonStream<PullEvent>, ClientError> {
        Ok(NdjsonStream::new(
            self.send_json(Method::POST, "/v1/images/pull", body)
                .await?
                .into_body(),
        ))
    }

    /// `DELETE /v1/images/{reference}`.
    pub async fn remove_image(&self, reference: &str) -> Result<(), ClientError> {
        let path = format!("/v1/images/{}", encode_component(reference));
        drain(self.send(Method::DELETE, &path, None).await?).await
    }

    // --- networks ---

    /// `POST /v1/networks`.
    pub async fn create_network(
        &self,
        req: &types::NetworkCreateRequest,
    ) -> Result<types::NetworkView, ClientError> {
        read_json(self.send_json(Method::POST, "/v1/networks", req).await?).await
    }

    /// `GET /v1/networks`.
    pub async fn networks(&self) -> Result<Vec<types::NetworkView>, ClientError> {
        self.get("/v1/networks").await
    }

    /// `GET /v1/networks/{id}`.
    pub async fn inspect_network(&self, id: &str) -> Result<types::NetworkView, ClientError> {
        self.get(&format!("/v1/networks/{}", encode_component(id)))
            .await
    }

    /// `DELETE /v1/networks/{id}`.
    pub async fn remove_network(&self, id: &str) -> Result<(), ClientError> {
        let path = format!("/v1/networks/{}", encode_component(id));
        drain(self.send(Method::DELETE, &path, None).await?).await
    }

    // --- volumes ---

    /// `POST /v1/volumes`.
    pub async fn create_volume(
        &self,
        req: &types::VolumeCreateRequest,
    ) -> Result<types::VolumeView, ClientError> {
        read_json(self.send_json(Method::POST, "/v1/volumes", req).await?).await
    }

    /// `GET /v1/volumes`.
    pub async fn volumes(&self) -> Result<Vec<types::VolumeView>, ClientError> {
        self.get("/v1/volumes").await
    }

    /// `GET /v1/volumes/{name}`.
    pub async fn inspect_volume(&self, name: &str) -> Result<types::VolumeView, ClientError> {
        self.get(&format!("/v1/volumes/{}", encode_component(name)))
            .await
    }

    /// `DELETE /v1/volumes/{name}`.
    pub async fn remove_volume(&self, name: &str) -> Result<(), ClientError> {
        let path = format!("/v1/volumes/{}", encode_component(name));
        drain(self.send(Method::DELETE, &path, None).await?).await
    }

    /// `POST /v1/volumes/{name}/resize`.
    pub async fn resize_volume(
        &self,
        name: &str,
        size: u64,
    ) -> Result<types::VolumeView, ClientError> {
        let path = format!("/v1/volumes/{}/resize", encode_component(name));
        let req = types::VolumeResizeRequest { size };
        read_json(self.send_json(Method::POST, &path, &req).await?).await
    }

    /// `POST /v1/volumes/prune`.
    pub async fn prune_volumes(&self) -> Result<types::VolumePruneReport, ClientError> {
        read_json(self.send(Method::POST, "/v1/volumes/prune", None).await?).await
    }

    // --- system ---

    /// `GET /v1/info`.
    pub async fn info(&self) -> Result<Info, ClientError> {
        self.get("/v1/info").await
    }

    /// `GET /v1/events`: runs until the daemon ends it.
    pub async fn events(&self) -> Result<NdjsonStream<Event>, ClientError> {
        Ok(NdjsonStream::new(
            self.send(Method::GET, "/v1/events", None)
                .await?
                .into_body(),
        ))
    }
}

/// An upgraded connection to the daemon.
pub type AttachConn = TokioIo<hyper::upgrade::Upgraded>;

/// The two directions of an attached session.
pub struct AttachStream {
    pub reader: AttachReader<ReadHalf<AttachConn>>,
    pub writer: AttachWriter<WriteHalf<AttachConn>>,
}

/// Reads [`AttachFrame`]s (the daemon and the client both use it).
pub struct AttachReader<R> {
    r: R,
    buf: Vec<u8>,
}

impl<R: AsyncRead + Unpin> AttachReader<R> {
    pub fn new(r: R) -> Self {
        AttachReader { r, buf: Vec::new() }
    }

    /// The next frame; `Ok(None)` when the peer closed the connection
    /// between frames. Cancel-safe: a frame is taken whole or not at all.
    pub async fn recv(&mut self) -> Result<Option<AttachFrame>, ClientError> {
        loop {
            match AttachFrame::decode(&self.buf) {
                Err(e) => return Err(ClientError::Protocol(e.to_string())),
                Ok(Some((f, n))) => {
                    self.buf.drain(..n);
                    return Ok(Some(f));
                }
                Ok(None) => {}
            }
            self.buf.reserve(32 * 1024);
            let n = self
                .r
                .read_buf(&mut self.buf)
                .await
                .map_err(|e| ClientError::Broken(e.to_string()))?;
            if n == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(ClientError::Broken(
                        "the connection ended inside a frame".into(),
                    ))
                };
            }
        }
    }
}

/// Writes [`AttachFrame`]s.
pub struct AttachWriter<W> {
    w: W,
}

impl<W: AsyncWrite + Unpin> AttachWriter<W> {
    pub fn new(w: W) -> Self {
        AttachWriter { w }
    }

    /// Writes and flushes one frame (several for long data).
    pub async fn send(&mut self, frame: &AttachFrame) -> Result<(), ClientError> {
        let mut b = Vec::new();
        frame.encode(&mut b);
        let broken = |e: std::io::Error| ClientError::Broken(e.to_string());
        self.w.write_all(&b).await.map_err(broken)?;
        self.w.flush().await.map_err(broken)
    }

    /// Ends this direction of the connection.
    pub async fn shutdown(&mut self) {
        let _ = self.w.shutdown().await;
    }
}

async fn read_body(resp: Response<Incoming>) -> Result<Bytes, ClientError> {
    Limited::new(resp.into_body(), MAX_BODY)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| ClientError::Broken(e.to_string()))
}

async fn read_json<T: DeserializeOwned>(resp: Response<Incoming>) -> Result<T, ClientError> {
    let body = read_body(resp).await?;
    serde_json::from_slice(&body).map_err(|e| {
        ClientError::Protocol(format!(
            "bad answer {}: {e}",
            crate::text::echo_bytes(&body)
        ))
    })
}

/// Reads (and drops) an answer's body, so the request is complete.
async fn drain(resp: Response<Incoming>) -> Result<(), ClientError> {
    read_body(resp).await.map(drop)
}

/// A non-2xx answer as an error: its `{code, message}` body, or the
/// status and whatever the body held.
async fn api_error(resp: Response<Incoming>) -> ClientError {
    let status = resp.status();
    let body = match read_body(resp).await {
        Ok(b) => b,
        Err(e) => return e,
    };
    match serde_json::from_slice::<ApiErrorBody>(&body) {
        Ok(b) => ClientError::Api {
            status: status.as_u16(),
            code: b.code,
            message: b.message,
            exit_code: b.exit_code,
        },
        Err(_) => ClientError::Api {
            status: status.as_u16(),
            code: ErrorCode::from_status(status.as_u16()),
            message: status_message(status, &body),
            exit_code: None,
        },
    }
}

fn status_message(status: StatusCode, body: &[u8]) -> String {
    let text = crate::text::echo_bytes(body);
    let text = text.trim();
    if text.is_empty() {
        status.to_string()
    } else {
        format!("{status}: {text}")
    }
}

#[cfg(test)]
pub(crate) mod tests;
