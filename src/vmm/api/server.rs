//! Connections to the per-VM API: the accept loop and the limits that keep
//! any number of clients from exhausting the VMM's files or memory.
//!
//! - Each connection's request head must arrive within `header_timeout` of
//!   its first byte, and its body within `body_timeout` of the head.
//! - A connection with nothing in flight and no traffic for
//!   `idle_timeout` is closed; that also ends clients that stop reading
//!   their answers.
//! - At most `max_connections` are open. One more evicts the connection
//!   that has been quiet longest (never one whose request the VMM is
//!   handling), so the API keeps answering new clients while the cap is
//!   reached.
//! - When `accept` fails because the process is out of file descriptors,
//!   the quietest connection is closed to make room and the loop goes on.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Notify;
use tokio::time::Instant;
use tower::ServiceExt;

use super::fault_with;
use crate::vmm::metrics::METRICS;

/// The API server's limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    /// The largest request body (`--http-api-max-payload-size`).
    pub max_payload: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 128,
            max_payload: DEFAULT_MAX_PAYLOAD,
        }
    }
}

/// File descriptors kept free for everything but API connections
/// (devices, log and metrics files, KVM).
const RESERVED_FDS: u64 = 64;
/// Never fewer connections than this, however low the fd limit.
const MIN_CONNECTIONS: usize = 4;
/// How long the accept loop waits when no connection can be closed to
/// free a descriptor.
const EXHAUSTED_BACKOFF: Duration = Duration::from_millis(20);
/// Firecracker's default request body limit.
pub const DEFAULT_MAX_PAYLOAD: usize = 51_200;
/// The largest body limit that may be configured.
pub const MAX_MAX_PAYLOAD: usize = 16 << 20;
/// Room for a request's head in hyper's read buffer, beyond its body.
const HEAD_ROOM: usize = 16 * 1024;
/// How much of a body over the limit is still read (and dropped) so
/// that the client, still writing it, gets the 400 rather than a broken
/// pipe; a bigger one closes the connection.
const DRAIN_LIMIT: usize = 1 << 20;

impl Limits {
    /// The connection cap, lowered so that connections can take at most
    /// about half of what `RLIMIT_NOFILE` leaves after the VMM's own
    /// descriptors.
    pub fn effective_max_connections(&self) -> usize {
        let soft = nofile_limit();
        let room = usize::try_from(soft.saturating_sub(RESERVED_FDS) / 2).unwrap_or(usize::MAX);
        self.max_connections.min(room.max(MIN_CONNECTIONS))
    }
}

fn nofile_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return u64::MAX;
    }
    lim.rlim_cur
}

/// What the server knows of one connection, shared between its I/O, its
/// requests and its watchdog.
struct ConnState {
    /// The last time a byte was read or written.
    last_io: Mutex<Instant>,
    /// When the first byte of a request head arrived, until the head is
    /// complete.
    head_started: Mutex<Option<Instant>>,
    /// Requests handed to the router and not yet answered.
    in_flight: AtomicU64,
    /// Wakes the watchdog to close the connection at once.
    evict: Notify,
}

impl ConnState {
    fn new() -> Self {
        ConnState {
            last_io: Mutex::new(Instant::now()),
            head_started: Mutex::new(None),
            in_flight: AtomicU64::new(0),
            evict: Notify::new(),
        }
    }

    fn touch(&self) {
        *lock(&self.last_io) = Instant::now();
    }

    fn last_io(&self) -> Instant {
        *lock(&self.last_io)
    }

    fn on_read(&self) {
        self.touch();
        if self.in_flight.load(Ordering::Acquire) == 0 {
            lock(&self.head_started).get_or_insert_with(Instant::now);
        }
    }

    fn busy(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) > 0
    }

    /// When the watchdog must close the connection, if nothing changes.
    fn deadline(&self, limits: &Limits) -> Option<Instant> {
        if self.busy() {
            // The request's body has its own timeout, and the VMM
            // thread answers every action it is sent.
            return None;
        }
        match *lock(&self.head_started) {
            Some(t) => Some(t + limits.header_timeout),
            None => Some(self.last_io() + limits.idle_timeout),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Marks a request in flight while it lives.
struct InFlight(Arc<ConnState>);

impl InFlight {
    fn new(conn: Arc<ConnState>) -> Self {
        *lock(&conn.head_started) = None;
        conn.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(conn)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A stream that reports its traffic to its connection's state.
struct TrackedStream {
    inner: UnixStream,
    conn: Arc<ConnState>,
}

impl AsyncRead for TrackedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.conn.on_read();
        }
        r
    }
}

impl AsyncWrite for TrackedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.conn.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The open connections, for eviction.
#[derive(Default)]
struct Registry {
    next_id: u64,
    conns: HashMap<u64, Arc<ConnState>>,
}

impl Registry {
    fn add(&mut self, conn: Arc<ConnState>) -> u64 {
        self.next_id += 1;
        self.conns.insert(self.next_id, conn);
        self.next_id
    }

    /// Asks the quietest connection with nothing in flight to close.
    /// Returns false when every connection is busy.
    fn evict_quietest(&mut self) -> bool {
        let victim = self
            .conns
            .iter()
            .filter(|(_, c)| !c.busy())
            .min_by_key(|(_, c)| c.last_io())
            .map(|(id, _)| *id);
        match victim.and_then(|id| self.conns.remove(&id)) {
            Some(conn) => {
                METRICS.api_server.evicted_connections.inc();
                conn.evict.notify_one();
                true
            }
            None => false,
        }
    }
}

/// Serves `router` on `listener` until the runtime stops.
pub async fn serve(listener: UnixListener, router: Router, limits: Limits) {
    let registry = Arc::new(Mutex::new(Registry::default()));
    let cap = limits.effective_max_connections();
    tracing::debug!(cap, "API accepting connections");
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) if out_of_descriptors(&e) => {
                METRICS.api_server.accept_errors.inc();
                tracing::warn!("API cannot accept a connection: {e}; closing the quietest");
                if !lock(&registry).evict_quietest() {
                    tokio::time::sleep(EXHAUSTED_BACKOFF).await;
                }
                // Let the evicted connection's task run and close its fd.
                tokio::task::yield_now().await;
                continue;
            }
            Err(e) => {
                // ECONNABORTED and the like concern one client only.
                METRICS.api_server.accept_errors.inc();
                tracing::debug!("API accept failed: {e}");
                continue;
            }
        };
        let conn = Arc::new(ConnState::new());
        let id = {
            let mut reg = lock(&registry);
            while reg.conns.len() >= cap && reg.evict_quietest() {}
            reg.add(conn.clone())
        };
        METRICS.api_server.connections.inc();
        let registry = registry.clone();
        let router = router.clone();
        tokio::spawn(async move {
            serve_connection(stream, conn, router, limits).await;
            lock(&registry).conns.remove(&id);
        });
    }
}

fn out_of_descriptors(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

async fn serve_connection(
    stream: UnixStream,
    conn: Arc<ConnState>,
    router: Router,
    limits: Limits,
) {
    let io = TokioIo::new(TrackedStream {
        inner: stream,
        conn: conn.clone(),
    });
    let for_requests = conn.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let in_flight = InFlight::new(for_requests.clone());
        let router = router.clone();
        async move {
            let answer = handle(req, router, &limits).await;
            drop(in_flight);
            Ok::<_, std::convert::Infallible>(answer)
        }
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.max_buf_size(limits.max_payload.min(MAX_MAX_PAYLOAD) + HEAD_ROOM);
    let serving = http.serve_connection(io, service);
    tokio::pin!(serving);
    loop {
        let deadline = conn.deadline(&limits);
        let expired = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = serving.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!("API connection ended: {e}");
                }
                return;
            }
            _ = conn.evict.notified() => return,
            _ = expired => {
                // The deadline may have moved while we slept.
                if conn.deadline(&limits).is_some_and(|d| d <= Instant::now()) {
                    METRICS.api_server.timed_out_connections.inc();
                    return;
                }
            }
            // A request that finishes changes the deadline; look again.
            _ = tokio::time::sleep(limits.idle_timeout.min(limits.header_timeout)) => {}
        }
    }
}

/// Reads the whole body, within the body timeout and the size limit, then
/// routes the request by its path as Firecracker reads one.
async fn handle(req: Request<Incoming>, router: Router, limits: &Limits) -> Response {
    let (mut parts, body) = req.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let limit = limits.max_payload;
    let read =
        async {
            match declared {
                // A body over the limit that the client declared (and may
                // still be sending) is read and dropped, up to a bound, so the
                // client gets the answer rather than a broken pipe.
                Some(n) if n > limit => {
                    let drained = n <= DRAIN_LIMIT
                        && axum::body::to_bytes(Body::new(body), DRAIN_LIMIT)
                            .await
                            .is_ok();
                    Err(ReadError::Over { drained })
                }
                _ => axum::body::to_bytes(Body::new(body), limit)
                    .await
                    .map_err(|e| match is_over_limit(&e) {
                        true => ReadError::Over { drained: false },
                        false => ReadError::Other(e),
                    }),
            }
        };
    let bytes = match tokio::time::timeout(limits.body_timeout, read).await {
        Ok(Ok(b)) => b,
        Ok(Err(ReadError::Other(e))) => {
            METRICS.api_server.requests.inc();
            return closing(fault_with(
                StatusCode::BAD_REQUEST,
                format!("cannot read the request body: {e}"),
            ));
        }
        Ok(Err(ReadError::Over { drained })) => {
            METRICS.api_server.requests.inc();
            let size = declared.map_or("unknown".into(), |n| n.to_string());
            let answer = fault_with(
                StatusCode::BAD_REQUEST,
                format!(
                    "Request payload with size {size} is larger than the limit of {limit} \
                     allowed by server."
                ),
            );
            return if drained { answer } else { closing(answer) };
        }
        Err(_) => {
            METRICS.api_server.requests.inc();
            METRICS.api_server.timed_out_connections.inc();
            return closing(fault_with(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {} ms",
                    limits.body_timeout.as_millis()
                ),
            ));
        }
    };
    if parts.method == axum::http::Method::GET && !bytes.is_empty() {
        METRICS.api_server.requests.inc();
        return fault_with(StatusCode::BAD_REQUEST, "GET request cannot have a body.");
    }
    if let Some(path) = super::paths::canonical(&parts.method, &parts.uri) {
        if let Ok(uri) = path.parse() {
            parts.uri = uri;
        }
    }
    let req = Request::from_parts(parts, axum::body::Body::from(bytes));
    match router.oneshot(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    }
}

/// Why a request body was not read.
enum ReadError {
    /// It is over the limit; `drained` when it was read to its end anyway
    /// (the connection can go on).
    Over {
        drained: bool,
    },
    Other(axum::Error),
}

fn is_over_limit(e: &axum::Error) -> bool {
    use std::error::Error as _;
    let mut source: Option<&(dyn std::error::Error + 'static)> = e.source();
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// The answer, with the connection closed after it: what is left of the
/// request cannot be trusted to be read.
fn closing(mut r: Response) -> Response {
    r.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    r.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_follow_the_connection_phase() {
        let limits = Limits {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 8,
            max_payload: DEFAULT_MAX_PAYLOAD,
        };
        let c = Arc::new(ConnState::new());
        let idle = c.deadline(&limits).unwrap();
        assert_eq!(idle, c.last_io() + limits.idle_timeout);
        c.on_read();
        let head = c.deadline(&limits).unwrap();
        assert!(head < idle, "a started head has the shorter deadline");
        let busy = InFlight::new(c.clone());
        assert_eq!(c.deadline(&limits), None, "busy connections wait");
        drop(busy);
        assert_eq!(c.deadline(&limits), Some(c.last_io() + limits.idle_timeout));
    }

    #[test]
    fn eviction_spares_busy_connections_and_takes_the_quietest() {
        let mut reg = Registry::default();
        let busy = Arc::new(ConnState::new());
        let old = Arc::new(ConnState::new());
        let new = Arc::new(ConnState::new());
        *lock(&busy.last_io) -= Duration::from_secs(100);
        *lock(&old.last_io) -= Duration::from_secs(50);
        let _in_flight = InFlight::new(busy.clone());
        *lock(&busy.last_io) -= Duration::from_secs(100);
        reg.add(busy.clone());
        let old_id = reg.add(old.clone());
        reg.add(new.clone());
        assert!(reg.evict_quietest());
        assert!(!reg.conns.contains_key(&old_id));
        assert!(reg.evict_quietest());
        assert!(!reg.evict_quietest(), "only the busy one is left");
        assert_eq!(reg.conns.len(), 1);
    }

    #[test]
    fn the_cap_follows_the_fd_limit() {
        let l = Limits {
            max_connections: usize::MAX,
            ..Default::default()
        };
        let soft = nofile_limit();
        let expected = usize::try_from(soft.saturating_sub(RESERVED_FDS) / 2)
            .unwrap_or(usize::MAX)
            .max(MIN_CONNECTIONS);
        assert_eq!(l.effective_max_connections(), expected);
        let small = Limits {
            max_connections: 2,
            ..Default::default()
        };
        assert_eq!(small.effective_max_connections(), 2, "a lower cap is kept");
    }
}
