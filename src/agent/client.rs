//! The host side of the agent protocol, async (tokio), as the daemon uses
//! it: connect (through a VM's hybrid vsock socket, or a Unix socket in
//! tests), wait for the agent's `Ready`, start the container, exec more
//! processes, and follow each one's output and exit.
//!
//! Output is credited back to the agent as the caller takes it
//! ([`Process::next`]), so a caller that stops reading stops the process
//! at its pipe; nothing here buffers more than the protocol's window per
//! stream. Stdin is sent only within the credit the agent grants.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, Notify};

use super::protocol::{
    encode_data, encode_message, CgroupStats, ContainerSpec, Frame, FrameReader, Message,
    ProcessSpec, Resources, Stream, Timings, WindowSize, AGENT_PORT, MAX_DATA, VERSION, WINDOW,
};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the agent through {path}: {err}")]
    Connect { path: String, err: String },
    #[error("the agent did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the agent speaks protocol version {0}, this host {VERSION}")]
    Version(u32),
    #[error("the guest could not be set up: {0}")]
    GuestSetup(String),
    #[error("the agent refused: {0}")]
    Refused(String),
    /// The process could not be started: its program is missing (127) or
    /// cannot be executed (126).
    #[error("{message}")]
    CannotRun { message: String, exit_code: i32 },
    #[error("the connection to the agent broke: {0}")]
    Broken(String),
    #[error("the agent broke the protocol: {0}")]
    Protocol(String),
}

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitStatus {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

impl ExitStatus {
    /// The shell's convention: the code, or 128 + the signal.
    pub fn shell_code(&self) -> i32 {
        self.code.unwrap_or_else(|| 128 + self.signal.unwrap_or(0))
    }
}

/// What a process produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    Output(Stream, Vec<u8>),
    Exit(ExitStatus),
}

/// The agent's `Ready`.
#[derive(Clone, Copy, Debug)]
pub struct Ready {
    pub version: u32,
    pub timings: Timings,
}

enum ProcEvent {
    Event(Event),
    Failed(String),
}

/// A process's pid and spawn time, or why it did not start.
type StartReply = Result<(i32, u64), ClientError>;

#[derive(Default)]
struct Shared {
    /// Waiting for `Started` (or an `Error`) of a process id.
    starting: HashMap<u32, oneshot::Sender<StartReply>>,
    procs: HashMap<u32, ProcState>,
    /// Waiting for the `CgroupStats` (or an `Error`) of an `Update` or
    /// `Stats`.
    stats: HashMap<u32, oneshot::Sender<StatsReply>>,
    broken: Option<String>,
}

type StatsReply = Result<CgroupStats, ClientError>;

struct ProcState {
    events: mpsc::UnboundedSender<ProcEvent>,
    stdin_credit: Arc<(Mutex<u32>, Notify)>,
}

type Writer = Arc<tokio::sync::Mutex<OwnedWriteHalf>>;

/// A connection to one agent.
pub struct AgentClient {
    writer: Writer,
    shared: Arc<Mutex<Shared>>,
    next_id: Mutex<u32>,
    ready: Ready,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for AgentClient {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

async fn send(writer: &Writer, frame: Vec<u8>) -> Result<(), ClientError> {
    let mut w = writer.lock().await;
    w.write_all(&frame)
        .await
        .map_err(|e| ClientError::Broken(e.to_string()))
}

async fn send_message(writer: &Writer, msg: &Message) -> Result<(), ClientError> {
    let mut f = Vec::new();
    encode_message(msg, &mut f);
    send(writer, f).await
}

/// Reads frames until `Ready` (the first thing an agent sends).
async fn read_ready(
    read: &mut OwnedReadHalf,
    reader: &mut FrameReader,
) -> Result<Ready, ClientError> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match reader.next_frame() {
            Err(e) => return Err(ClientError::Protocol(e.to_string())),
            Ok(Some(Ok(Frame::Control(Message::Ready {
                version,
                timings,
                error,
            })))) => {
                if version != VERSION {
                    return Err(ClientError::Version(version));
                }
                if let Some(e) = error {
                    return Err(ClientError::GuestSetup(e));
                }
                return Ok(Ready { version, timings });
            }
            Ok(Some(other)) => {
                return Err(ClientError::Protocol(format!(
                    "expected Ready first, got {other:?}"
                )))
            }
            Ok(None) => {}
        }
        let n = read
            .read(&mut buf)
            .await
            .map_err(|e| ClientError::Broken(e.to_string()))?;
        if n == 0 {
            return Err(ClientError::Broken("closed before Ready".into()));
        }
        reader.push(&buf[..n]);
    }
}

/// `CONNECT <port>` on a hybrid vsock socket; Ok(None) when the guest is
/// not listening yet (an empty reply, a reset or a refusal).
async fn hybrid_connect(uds: &Path, port: u32) -> Result<Option<UnixStream>, ClientError> {
    let mut s = match UnixStream::connect(uds).await {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Ok(None),
        Err(e) => {
            return Err(ClientError::Connect {
                path: uds.display().to_string(),
                err: e.to_string(),
            })
        }
    };
    if s.write_all(format!("CONNECT {port}\n").as_bytes())
        .await
        .is_err()
    {
        return Ok(None);
    }
    // Byte by byte: what follows the line is the agent's.
    let mut line = Vec::new();
    let mut b = [0u8];
    while line.len() < 32 {
        match s.read(&mut b).await {
            Ok(1) if b[0] == b'\n' => break,
            Ok(1) => line.push(b[0]),
            _ => return Ok(None),
        }
    }
    Ok(line.starts_with(b"OK ").then_some(s))
}

/// How long one CONNECT (and the agent's `Ready` after it) may take.
const ATTEMPT: Duration = Duration::from_secs(2);

impl AgentClient {
    /// Through a VM's hybrid vsock socket (`uds_path`), retrying until the
    /// agent listens or `timeout` passes.
    pub async fn connect_vsock(uds: &Path, timeout: Duration) -> Result<AgentClient, ClientError> {
        let attempt = async {
            loop {
                // A vsock backend may hold a CONNECT that the guest does
                // not answer yet: each attempt gets its own deadline.
                let attempt = tokio::time::timeout(ATTEMPT, hybrid_connect(uds, AGENT_PORT));
                match attempt.await {
                    Ok(Ok(Some(s))) => {
                        match tokio::time::timeout(ATTEMPT, Self::handshake(s)).await {
                            // The guest's listener can go away under a
                            // connection made during its start: try again.
                            Err(_) => tracing::debug!("agent handshake timed out"),
                            Ok(Err(ClientError::Broken(e))) => {
                                tracing::debug!("agent handshake broken: {e}")
                            }
                            Ok(r) => return r,
                        }
                    }
                    Ok(Ok(None)) => {}
                    Ok(Err(e)) => tracing::debug!("vsock connect: {e}"),
                    Err(_) => tracing::debug!("vsock CONNECT went unanswered"),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(timeout, attempt)
            .await
            .map_err(|_| ClientError::Timeout(timeout))?
    }

    /// Through the Unix socket of an agent running on the host (tests).
    pub async fn connect_unix(path: &Path, timeout: Duration) -> Result<AgentClient, ClientError> {
        let attempt = async {
            loop {
                match UnixStream::connect(path).await {
                    Ok(s) => return Self::handshake(s).await,
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                        ) =>
                    {
                        tokio::time::sleep(Duration::from_millis(10)).await
                    }
                    Err(e) => {
                        return Err(ClientError::Connect {
                            path: path.display().to_string(),
                            err: e.to_string(),
                        })
                    }
                }
            }
        };
        tokio::time::timeout(timeout, attempt)
            .await
            .map_err(|_| ClientError::Timeout(timeout))?
    }

    async fn handshake(s: UnixStream) -> Result<AgentClient, ClientError> {
        let (mut read, write) = s.into_split();
        let mut reader = FrameReader::default();
        let ready = read_ready(&mut read, &mut reader).await?;
        let shared = Arc::new(Mutex::new(Shared::default()));
        let writer: Writer = Arc::new(tokio::sync::Mutex::new(write));
        let task = tokio::spawn(read_loop(read, reader, shared.clone(), writer.clone()));
        Ok(AgentClient {
            writer,
            shared,
            next_id: Mutex::new(1),
            ready,
            reader: task,
        })
    }

    /// The agent's version and start-up timings.
    pub fn ready(&self) -> Ready {
        self.ready
    }

    /// Starts the container's main process.
    pub async fn start(&self, spec: ContainerSpec) -> Result<Process, ClientError> {
        let id = self.new_id();
        self.launch(
            id,
            Message::Start {
                id,
                spec: Box::new(spec),
            },
        )
        .await
    }

    /// Starts another process in the container.
    pub async fn exec(&self, spec: ProcessSpec) -> Result<Process, ClientError> {
        let id = self.new_id();
        self.launch(
            id,
            Message::Exec {
                id,
                spec,
                container: None,
            },
        )
        .await
    }

    /// Pod mode: creates and starts a container of the pod.
    pub async fn create(
        &self,
        container: crate::agent::protocol::PodContainer,
    ) -> Result<Process, ClientError> {
        let id = self.new_id();
        self.launch(
            id,
            Message::Create {
                id,
                container: Box::new(container),
            },
        )
        .await
    }

    /// Pod mode: starts another process in the pod's container `name`.
    pub async fn exec_in(&self, name: &str, spec: ProcessSpec) -> Result<Process, ClientError> {
        let id = self.new_id();
        let container = Some(name.to_string());
        self.launch(
            id,
            Message::Exec {
                id,
                spec,
                container,
            },
        )
        .await
    }

    /// Mounts filesystems in a container that is not started (to copy
    /// its files); the process ends with 0 once they are mounted.
    pub async fn mount(
        &self,
        mounts: Vec<crate::agent::protocol::GuestMount>,
    ) -> Result<Process, ClientError> {
        let id = self.new_id();
        self.launch(id, Message::Mount { id, mounts }).await
    }

    /// Runs an archive operation (`husk cp`): the tar stream is the
    /// process's stdout (read, stat) or stdin (write).
    pub async fn archive(
        &self,
        op: crate::agent::protocol::ArchiveOp,
    ) -> Result<Process, ClientError> {
        let id = self.new_id();
        self.launch(id, Message::Archive { id, op }).await
    }

    /// Follows a process that an earlier connection started (after the
    /// host restarted): its output from here on, and its exit.
    pub async fn attach(&self, id: u32) -> Result<Process, ClientError> {
        {
            let mut n = self.next_id.lock().unwrap_or_else(|e| e.into_inner());
            // New ids must not collide with the ones the earlier host used.
            *n = (*n).max(id.saturating_add(1));
        }
        self.launch(id, Message::Attach { id }).await
    }

    /// Pod mode: applies `resources` to container `name`'s cgroup; its
    /// figures after the change.
    pub async fn update(&self, name: &str, resources: Resources) -> StatsReply {
        let id = self.new_id();
        let container = name.to_string();
        self.ask_stats(
            id,
            Message::Update {
                id,
                container,
                resources,
            },
        )
        .await
    }

    /// Pod mode: container `name`'s cgroup figures.
    pub async fn stats(&self, name: &str) -> StatsReply {
        let id = self.new_id();
        let container = name.to_string();
        self.ask_stats(id, Message::Stats { id, container }).await
    }

    async fn ask_stats(&self, id: u32, msg: Message) -> StatsReply {
        let (tx, rx) = oneshot::channel();
        {
            let mut s = self.shared.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(why) = &s.broken {
                return Err(ClientError::Broken(why.clone()));
            }
            s.stats.insert(id, tx);
        }
        if let Err(e) = send_message(&self.writer, &msg).await {
            let mut s = self.shared.lock().unwrap_or_else(|e| e.into_inner());
            s.stats.remove(&id);
            return Err(e);
        }
        rx.await
            .map_err(|_| ClientError::Broken("closed before the agent answered".into()))?
    }

    /// Sends `signal` to process `id` (one this connection follows or not).
    pub async fn signal(&self, id: u32, signal: i32) -> Result<(), ClientError> {
        send_message(&self.writer, &Message::Signal { id, signal }).await
    }

    /// Stops everything in the guest and ends the VM.
    pub async fn shutdown(&self) -> Result<(), ClientError> {
        send_message(&self.writer, &Message::Shutdown).await
    }

    fn new_id(&self) -> u32 {
        let mut n = self.next_id.lock().unwrap_or_else(|e| e.into_inner());
        let id = *n;
        *n = n.wrapping_add(1).max(1);
        id
    }

    async fn launch(&self, id: u32, msg: Message) -> Result<Process, ClientError> {
        let (started_tx, started_rx) = oneshot::channel();
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let stdin_credit = Arc::new((Mutex::new(WINDOW), Notify::new()));
        {
            let mut s = self.shared.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(why) = &s.broken {
                return Err(ClientError::Broken(why.clone()));
            }
            s.starting.insert(id, started_tx);
            s.procs.insert(
                id,
                ProcState {
                    events: events_tx,
                    stdin_credit: stdin_credit.clone(),
                },
            );
        }
        send_message(&self.writer, &msg).await?;
        let started = started_rx
            .await
            .map_err(|_| ClientError::Broken("closed before the process started".into()))?;
        match started {
            Ok((pid, spawn_us)) => Ok(Process {
                id,
                pid,
                spawn_us,
                events: events_rx,
                writer: self.writer.clone(),
                stdin_credit,
                shared: self.shared.clone(),
                done: false,
                taken: [0; 2],
            }),
            Err(e) => {
                let mut s = self.shared.lock().unwrap_or_else(|e| e.into_inner());
                s.procs.remove(&id);
                Err(e)
            }
        }
    }
}

/// Dispatches the agent's frames to the processes they are about.
async fn read_loop(
    mut read: OwnedReadHalf,
    mut reader: FrameReader,
    shared: Arc<Mutex<Shared>>,
    writer: Writer,
) {
    let mut buf = vec![0u8; 64 * 1024];
    let why = loop {
        match reader.next_frame() {
            Err(e) => break format!("the agent broke the protocol: {e}"),
            Ok(Some(Ok(frame))) => {
                dispatch(frame, &shared);
                continue;
            }
            Ok(Some(Err(e))) => {
                tracing::warn!("agent: {e}");
                continue;
            }
            Ok(None) => {}
        }
        match read.read(&mut buf).await {
            Ok(0) => break "the agent closed the connection".to_string(),
            Ok(n) => reader.push(&buf[..n]),
            Err(e) => break e.to_string(),
        }
    };
    drop(writer);
    let mut s = shared.lock().unwrap_or_else(|e| e.into_inner());
    for (_, tx) in s.starting.drain() {
        let _ = tx.send(Err(ClientError::Broken(why.clone())));
    }
    for (_, tx) in s.stats.drain() {
        let _ = tx.send(Err(ClientError::Broken(why.clone())));
    }
    for (_, p) in s.procs.drain() {
        let _ = p.events.send(ProcEvent::Failed(why.clone()));
        p.stdin_credit.1.notify_waiters();
    }
    s.broken = Some(why);
}

fn dispatch(frame: Frame, shared: &Mutex<Shared>) {
    let mut s = shared.lock().unwrap_or_else(|e| e.into_inner());
    match frame {
        Frame::Data { id, stream, data } => {
            if let Some(p) = s.procs.get(&id) {
                let _ = p.events.send(ProcEvent::Event(Event::Output(stream, data)));
            }
        }
        Frame::Control(Message::Started { id, pid, spawn_us }) => {
            if let Some(tx) = s.starting.remove(&id) {
                let _ = tx.send(Ok((pid, spawn_us)));
            }
        }
        Frame::Control(Message::Exit { id, code, signal }) => {
            if let Some(p) = s.procs.remove(&id) {
                let _ = p
                    .events
                    .send(ProcEvent::Event(Event::Exit(ExitStatus { code, signal })));
                // A `ProcessInput` waiting for stdin credit learns it is gone.
                p.stdin_credit.1.notify_waiters();
            }
        }
        Frame::Control(Message::CgroupStats { id, stats }) => {
            if let Some(tx) = s.stats.remove(&id) {
                let _ = tx.send(Ok(*stats));
            }
        }
        Frame::Control(Message::Credit {
            id,
            stream: Stream::Stdin,
            bytes,
        }) => {
            if let Some(p) = s.procs.get(&id) {
                let mut c = p.stdin_credit.0.lock().unwrap_or_else(|e| e.into_inner());
                *c = c.saturating_add(bytes).min(WINDOW);
                p.stdin_credit.1.notify_waiters();
            }
        }
        Frame::Control(Message::Error {
            id: Some(id),
            message,
            exit_code,
        }) => {
            if let Some(tx) = s.starting.remove(&id) {
                let _ = tx.send(Err(match exit_code {
                    Some(exit_code) => ClientError::CannotRun { message, exit_code },
                    None => ClientError::Refused(message),
                }));
            } else if let Some(tx) = s.stats.remove(&id) {
                let _ = tx.send(Err(ClientError::Refused(message)));
            } else {
                tracing::warn!("agent: process {id}: {message}");
            }
        }
        Frame::Control(Message::Error {
            id: None, message, ..
        }) => {
            tracing::warn!("agent: {message}");
        }
        Frame::Control(other) => tracing::warn!("agent sent an unexpected {other:?}"),
    }
}

/// A process in the guest.
pub struct Process {
    id: u32,
    pid: i32,
    spawn_us: u64,
    events: mpsc::UnboundedReceiver<ProcEvent>,
    writer: Writer,
    stdin_credit: Arc<(Mutex<u32>, Notify)>,
    shared: Arc<Mutex<Shared>>,
    done: bool,
    /// Output taken but not yet given back as credit: stdout, stderr.
    taken: [u32; 2],
}

/// Credit goes back to the agent in batches of this much output taken,
/// not per frame: far fewer frames against the output's direction, and
/// none at all for an output under this size.
const CREDIT_BATCH: u32 = WINDOW / 4;

impl std::fmt::Debug for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Process")
            .field("id", &self.id)
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

/// Everything a process wrote, and how it ended.
#[derive(Debug)]
pub struct Output {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub status: ExitStatus,
}

impl Process {
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Its pid in the guest.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// From the agent's first instruction to this process's start.
    pub fn spawn_us(&self) -> u64 {
        self.spawn_us
    }

    /// A handle on the process's input (stdin, signals, terminal size)
    /// that other tasks can use while this one reads the output.
    pub fn input(&self) -> ProcessInput {
        ProcessInput {
            id: self.id,
            writer: self.writer.clone(),
            stdin_credit: self.stdin_credit.clone(),
            shared: self.shared.clone(),
        }
    }

    /// The next output or the exit; `Ok(None)` after the exit.
    pub async fn next(&mut self) -> Result<Option<Event>, ClientError> {
        if self.done {
            return Ok(None);
        }
        match self.events.recv().await {
            Some(ProcEvent::Event(Event::Output(stream, data))) => {
                // Taken: the agent may send as much again, once a batch
                // has gathered (the window holds four).
                let i = usize::from(stream == Stream::Stderr);
                self.taken[i] = self.taken[i].saturating_add(data.len() as u32);
                if self.taken[i] >= CREDIT_BATCH {
                    let credit = Message::Credit {
                        id: self.id,
                        stream,
                        bytes: std::mem::take(&mut self.taken[i]),
                    };
                    // An agent that already finished cannot take it; the
                    // events that follow say so if that matters.
                    let _ = send_message(&self.writer, &credit).await;
                }
                Ok(Some(Event::Output(stream, data)))
            }
            Some(ProcEvent::Event(exit)) => {
                self.done = true;
                Ok(Some(exit))
            }
            Some(ProcEvent::Failed(why)) => {
                self.done = true;
                Err(ClientError::Broken(why))
            }
            None => {
                self.done = true;
                Err(ClientError::Broken("the connection is gone".into()))
            }
        }
    }

    /// Collects all output until the exit (for short-lived processes).
    pub async fn output(mut self) -> Result<Output, ClientError> {
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        loop {
            match self.next().await? {
                Some(Event::Output(Stream::Stderr, d)) => stderr.extend_from_slice(&d),
                Some(Event::Output(_, d)) => stdout.extend_from_slice(&d),
                Some(Event::Exit(status)) => {
                    return Ok(Output {
                        stdout,
                        stderr,
                        status,
                    })
                }
                None => return Err(ClientError::Broken("no exit status".into())),
            }
        }
    }

    /// Sends `data` to the process's stdin, as fast as the agent's credit
    /// allows.
    pub async fn write_stdin(&self, mut data: &[u8]) -> Result<(), ClientError> {
        while !data.is_empty() {
            let (credit, notify) = &*self.stdin_credit;
            let wait = notify.notified();
            let n = {
                let mut c = credit.lock().unwrap_or_else(|e| e.into_inner());
                let n = (*c as usize).min(data.len()).min(MAX_DATA);
                *c -= n as u32;
                n
            };
            if n == 0 {
                if self.done {
                    return Err(ClientError::Broken("the process is gone".into()));
                }
                wait.await;
                continue;
            }
            let mut f = Vec::with_capacity(n + 16);
            encode_data(self.id, Stream::Stdin, &data[..n], &mut f);
            send(&self.writer, f).await?;
            data = &data[n..];
        }
        Ok(())
    }

    pub async fn close_stdin(&self) -> Result<(), ClientError> {
        send_message(&self.writer, &Message::CloseStdin { id: self.id }).await
    }

    pub async fn signal(&self, signal: i32) -> Result<(), ClientError> {
        send_message(
            &self.writer,
            &Message::Signal {
                id: self.id,
                signal,
            },
        )
        .await
    }

    pub async fn resize(&self, window: WindowSize) -> Result<(), ClientError> {
        send_message(
            &self.writer,
            &Message::Resize {
                id: self.id,
                window,
            },
        )
        .await
    }
}

/// A process's input side, apart from its output: it can be cloned and
/// used by other tasks while one task reads the output with
/// [`Process::next`] (a writer blocked on stdin credit must not stop the
/// output from being read, or a process that writes before it reads would
/// never free the credit).
///
/// Each frame is written by a task of its own, so a caller that drops one
/// of these futures half-way never leaves half a frame on the connection.
#[derive(Clone)]
pub struct ProcessInput {
    id: u32,
    writer: Writer,
    stdin_credit: Arc<(Mutex<u32>, Notify)>,
    shared: Arc<Mutex<Shared>>,
}

impl std::fmt::Debug for ProcessInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessInput")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl ProcessInput {
    /// Whether the agent still follows the process on this connection.
    fn alive(&self) -> bool {
        let s = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        s.broken.is_none() && s.procs.contains_key(&self.id)
    }

    async fn send_whole(&self, frame: Vec<u8>) -> Result<(), ClientError> {
        let writer = self.writer.clone();
        tokio::spawn(async move { send(&writer, frame).await })
            .await
            .map_err(|e| ClientError::Broken(e.to_string()))?
    }

    /// Sends `data` to the process's stdin within the agent's credit;
    /// fails once the process has exited.
    pub async fn write_stdin(&self, mut data: &[u8]) -> Result<(), ClientError> {
        while !data.is_empty() {
            let (credit, notify) = &*self.stdin_credit;
            let wait = notify.notified();
            let n = {
                let mut c = credit.lock().unwrap_or_else(|e| e.into_inner());
                let n = (*c as usize).min(data.len()).min(MAX_DATA);
                *c -= n as u32;
                n
            };
            if n == 0 {
                if !self.alive() {
                    return Err(ClientError::Broken("the process is gone".into()));
                }
                wait.await;
                continue;
            }
            let mut f = Vec::with_capacity(n + 16);
            encode_data(self.id, Stream::Stdin, &data[..n], &mut f);
            self.send_whole(f).await?;
            data = &data[n..];
        }
        Ok(())
    }

    async fn send_message(&self, msg: &Message) -> Result<(), ClientError> {
        let mut f = Vec::new();
        encode_message(msg, &mut f);
        self.send_whole(f).await
    }

    pub async fn close_stdin(&self) -> Result<(), ClientError> {
        self.send_message(&Message::CloseStdin { id: self.id })
            .await
    }

    pub async fn signal(&self, signal: i32) -> Result<(), ClientError> {
        self.send_message(&Message::Signal {
            id: self.id,
            signal,
        })
        .await
    }

    pub async fn resize(&self, window: WindowSize) -> Result<(), ClientError> {
        self.send_message(&Message::Resize {
            id: self.id,
            window,
        })
        .await
    }
}
