//! The daemon API's bodies and records, shared by the client and the
//! daemon. Optional fields are left out of the JSON when unset, and
//! default when missing, so either side may omit them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

fn is_false(b: &bool) -> bool {
    !*b
}

/// `POST /v1/containers`: what to run (and what the daemon's records
/// keep of it). Unknown fields are refused, so a typo is an error.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The command (the image's when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// The entrypoint (the image's when unset; `[]` clears it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// `K=V` pairs, on top of the image's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u32>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub tty: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub stdin: bool,
    /// The daemon removes the container once it has exited.
    #[serde(default, skip_serializing_if = "is_false")]
    pub auto_remove: bool,
    /// Whether the daemon pulls a missing image (its default: yes). The
    /// CLI pulls itself, to show progress, and sends `false`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull: Option<bool>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The network to join: `bridge` (the default network, when unset),
    /// `none` (loopback only), or a network made with `POST /v1/networks`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// Host ports forwarded to the container (`-p`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<PortBinding>,
    /// Volumes, bind mounts and tmpfs mounts (`-v`, `--mount`,
    /// `--tmpfs`). The daemon names the anonymous volumes it makes, and
    /// adds one for each of the image's `VOLUME`s no mount covers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
    /// The root filesystem's size in bytes (`--storage-opt size=`); by
    /// default 10 GiB, or the image's own size when that is more. The
    /// disk is sparse: only what the container writes takes host space.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs_size: Option<u64>,
}

pub use super::volumes::{
    Mount, MountKind, VolumeCreateRequest, VolumePruneReport, VolumeResizeRequest, VolumeView,
};

/// A transport protocol of a published port.
#[derive(
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// A published port: `[HOST_IP:][HOST_PORT:]CONTAINER_PORT[/PROTO]`, as
/// `docker run -p` takes it. `host_port` 0 (or left out) picks a free
/// port when the container starts; `host_ip` unset means every address
/// of the host.
#[derive(
    Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, utoipa::ToSchema,
)]
#[serde(deny_unknown_fields)]
pub struct PortBinding {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub host_ip: Option<std::net::Ipv4Addr>,
    #[serde(default)]
    pub host_port: u16,
    pub container_port: u16,
    #[serde(default)]
    pub protocol: Protocol,
}

impl std::fmt::Display for PortBinding {
    /// As `docker ps` shows it: `0.0.0.0:8080->80/tcp`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ip = self.host_ip.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED);
        write!(
            f,
            "{ip}:{}->{}/{}",
            self.host_port,
            self.container_port,
            self.protocol.as_str()
        )
    }
}

impl std::str::FromStr for PortBinding {
    type Err = String;

    fn from_str(s: &str) -> Result<PortBinding, String> {
        let bad = |why: &str| format!("invalid port {:?}: {why}", crate::text::echo(s));
        let (rest, protocol) = match s.rsplit_once('/') {
            Some((r, "tcp")) => (r, Protocol::Tcp),
            Some((r, "udp")) => (r, Protocol::Udp),
            Some(_) => return Err(bad("the protocol must be tcp or udp")),
            None => (s, Protocol::Tcp),
        };
        let parts: Vec<&str> = rest.split(':').collect();
        let port = |p: &str, zero_ok: bool| -> Result<u16, String> {
            match p.parse::<u16>() {
                Ok(0) if !zero_ok => Err(bad("port 0 is not a port")),
                Ok(n) => Ok(n),
                Err(_) => Err(bad(&format!(
                    "{:?} is not a port number (1-65535)",
                    crate::text::echo(p)
                ))),
            }
        };
        let (host_ip, host_port, container) = match parts.as_slice() {
            [c] => (None, 0, *c),
            [h, c] => (None, port(h, true)?, *c),
            [ip, h, c] => {
                let ip: std::net::Ipv4Addr = ip.parse().map_err(|_| {
                    bad(&format!(
                        "{:?} is not an IPv4 address",
                        crate::text::echo(ip)
                    ))
                })?;
                let h = if h.is_empty() { 0 } else { port(h, true)? };
                ((!ip.is_unspecified()).then_some(ip), h, *c)
            }
            _ => return Err(bad("use [HOST_IP:][HOST_PORT:]CONTAINER_PORT[/tcp|udp]")),
        };
        Ok(PortBinding {
            host_ip,
            host_port,
            container_port: port(container, false)?,
            protocol,
        })
    }
}

/// How a container is attached to its network (while it runs).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, utoipa::ToSchema)]
pub struct NetworkSettings {
    pub network: String,
    #[schema(value_type = String)]
    pub ip_address: std::net::Ipv4Addr,
    pub prefix_len: u8,
    #[schema(value_type = String)]
    pub gateway: std::net::Ipv4Addr,
    pub mac_address: String,
    /// The host's TAP device.
    pub tap: String,
    /// The published ports, with the host ports they got.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortBinding>,
}

/// `POST /v1/networks`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkCreateRequest {
    pub name: String,
    /// `ADDRESS/PREFIX`; a free /16 is chosen when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    /// The host's address on it (the subnet's first when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// No traffic leaves the network (no NAT, no upstream DNS).
    #[serde(default, skip_serializing_if = "is_false")]
    pub internal: bool,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// A network, as the API shows it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, utoipa::ToSchema)]
pub struct NetworkView {
    /// 64 hex digits.
    pub id: String,
    pub name: String,
    /// Always `bridge`.
    pub driver: String,
    pub subnet: String,
    #[schema(value_type = String)]
    pub gateway: std::net::Ipv4Addr,
    /// The host's bridge device.
    pub bridge: String,
    pub internal: bool,
    /// The default network (`bridge`), which cannot be removed.
    #[serde(default)]
    pub builtin: bool,
    pub created_ms: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The containers attached now.
    #[serde(default)]
    pub containers: Vec<NetworkMember>,
}

/// A container on a network.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, utoipa::ToSchema)]
pub struct NetworkMember {
    pub id: String,
    pub name: String,
    #[schema(value_type = String)]
    pub ip_address: std::net::Ipv4Addr,
    pub mac_address: String,
}

/// The answer to a create.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct CreateResponse {
    /// 64 hex digits.
    pub id: String,
    pub name: String,
}

/// Where a container is in its life.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ContainerState {
    Created,
    Starting,
    Running,
    Exited,
    /// The VM could not boot, or ended without the agent's word.
    Dead,
}

impl ContainerState {
    /// Running or on its way: its VM may be up.
    pub fn is_active(self) -> bool {
        matches!(self, ContainerState::Starting | ContainerState::Running)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ContainerState::Created => "created",
            ContainerState::Starting => "starting",
            ContainerState::Running => "running",
            ContainerState::Exited => "exited",
            ContainerState::Dead => "dead",
        }
    }

    /// Parses the API's lower-case name.
    pub fn parse(s: &str) -> Option<ContainerState> {
        Some(match s {
            "created" => ContainerState::Created,
            "starting" => ContainerState::Starting,
            "running" => ContainerState::Running,
            "exited" => ContainerState::Exited,
            "dead" => ContainerState::Dead,
            _ => return None,
        })
    }
}

impl std::fmt::Display for ContainerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a VM runs its guest: hardware virtualization, or emulation.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Kvm,
    Tcg,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Kvm => "kvm",
            Backend::Tcg => "tcg",
        })
    }
}

/// One container, as `GET /v1/containers[/{id}]` shows it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, utoipa::ToSchema)]
pub struct ContainerRecord {
    pub id: String,
    pub name: String,
    pub image: String,
    /// The create body.
    pub config: CreateRequest,
    pub state: ContainerState,
    /// Shell convention: the code, or 128 + the signal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Unix time, milliseconds.
    pub created_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<Backend>,
    /// The VM's host processes (the VMM first), while it runs.
    #[serde(default)]
    pub pids: Vec<i32>,
    pub vcpus: u8,
    pub memory_mib: u32,
    /// The main process's pid in the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_pid: Option<i32>,
    /// Its network attachment, while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkSettings>,
}

/// The query of `GET /v1/containers` (flat, so that it works as an axum
/// `Query`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct ListOptions {
    /// Every container, not only running ones.
    #[serde(default)]
    pub all: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<ContainerState>,
    /// `k=v`, or `k` (the label is set, whatever its value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

/// Which output stream.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum StreamKind {
    Stdout,
    Stderr,
}

/// The query of `GET /v1/containers/{id}/logs` (flat, for an axum `Query`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct LogsOptions {
    /// Stay open, sending new output, until the container exits.
    #[serde(default)]
    pub follow: bool,
    /// Only the last N lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail: Option<u64>,
    /// Only output at or after this unix time (milliseconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
    #[serde(default = "yes")]
    pub stdout: bool,
    #[serde(default = "yes")]
    pub stderr: bool,
}

fn yes() -> bool {
    true
}

impl Default for LogsOptions {
    fn default() -> Self {
        LogsOptions {
            follow: false,
            tail: None,
            since: None,
            stdout: true,
            stderr: true,
        }
    }
}

/// One line of a logs stream.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    pub stream: StreamKind,
    /// Unix time, milliseconds.
    #[serde(default)]
    pub time_ms: u64,
    pub data: String,
}

/// The answer to a wait: how the container ended.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaitResponse {
    /// Shell convention: the code, or 128 + the signal.
    pub exit_code: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
}

fn sigkill() -> i32 {
    9
}

/// `POST /v1/containers/{id}/kill`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct KillRequest {
    #[serde(default = "sigkill")]
    pub signal: i32,
}

impl Default for KillRequest {
    fn default() -> Self {
        KillRequest { signal: sigkill() }
    }
}

fn ten() -> u64 {
    10
}

/// `POST /v1/containers/{id}/stop`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct StopRequest {
    /// Seconds between SIGTERM and powering the VM off.
    #[serde(default = "ten")]
    pub timeout: u64,
}

impl Default for StopRequest {
    fn default() -> Self {
        StopRequest { timeout: ten() }
    }
}

/// `POST /v1/containers/{id}/exec`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecRequest {
    pub cmd: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub tty: bool,
    /// Keep stdin open (only on an upgraded connection: see
    /// [`AttachFrame`]).
    #[serde(default, skip_serializing_if = "is_false")]
    pub stdin: bool,
    /// The terminal's size to start with (with `tty`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<WindowSize>,
}

/// `POST /v1/containers/{id}/attach` (on an upgraded connection).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct AttachRequest {
    /// The terminal's size, for a container with a TTY; a container
    /// attached before its start starts with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<WindowSize>,
}

pub use crate::agent::protocol::WindowSize;

/// The most bytes one attach frame carries.
pub const ATTACH_MAX_PAYLOAD: usize = 64 * 1024;
/// Bytes before an attach frame's payload: kind and length.
pub const ATTACH_HEADER: usize = 5;

/// One frame on an attached connection (`/attach`, or `/exec` with
/// `Connection: Upgrade`), after `101 Switching Protocols`:
/// `u8 kind`, `u32 LE payload length` (0 ..= [`ATTACH_MAX_PAYLOAD`]),
/// payload. The kinds are listed in `src/daemon/attach.rs` and in
/// `docs/agent-protocol.md`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttachFrame {
    /// Client to daemon: bytes for the process's stdin.
    Stdin(Vec<u8>),
    /// Daemon to client: the process's stdout (everything, with a TTY).
    Stdout(Vec<u8>),
    /// Daemon to client: the process's stderr.
    Stderr(Vec<u8>),
    /// Client to daemon: the end of stdin (EOF; ^D on a terminal).
    CloseStdin,
    /// Client to daemon: the terminal's new size.
    Resize(WindowSize),
    /// Client to daemon: a signal for the process.
    Signal(i32),
    /// Daemon to client, last: the exit code (128 + N after signal N).
    Exit(i32),
    /// Daemon to client, last: the session ended without an exit code.
    Error(String),
}

/// An attach frame that cannot be decoded: the connection is closed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AttachFrameError {
    #[error("unknown attach frame kind {0}")]
    Kind(u8),
    #[error("attach frame of {0} bytes is longer than {ATTACH_MAX_PAYLOAD}")]
    Length(usize),
    #[error("attach frame kind {kind} needs {want} bytes, not {got}")]
    Size { kind: u8, want: usize, got: usize },
}

impl AttachFrame {
    fn kind(&self) -> u8 {
        match self {
            AttachFrame::Stdin(_) => 0,
            AttachFrame::Stdout(_) => 1,
            AttachFrame::Stderr(_) => 2,
            AttachFrame::CloseStdin => 3,
            AttachFrame::Resize(_) => 4,
            AttachFrame::Signal(_) => 5,
            AttachFrame::Exit(_) => 6,
            AttachFrame::Error(_) => 7,
        }
    }

    /// Appends the frame to `out`. Data longer than
    /// [`ATTACH_MAX_PAYLOAD`] becomes several frames; an error message
    /// is cut to fit.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let kind = self.kind();
        let mut put = |payload: &[u8]| {
            out.push(kind);
            out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            out.extend_from_slice(payload);
        };
        match self {
            AttachFrame::Stdin(d) | AttachFrame::Stdout(d) | AttachFrame::Stderr(d) => {
                if d.is_empty() {
                    put(d);
                }
                for c in d.chunks(ATTACH_MAX_PAYLOAD) {
                    put(c);
                }
            }
            AttachFrame::CloseStdin => put(&[]),
            AttachFrame::Resize(w) => {
                let mut p = [0u8; 4];
                p[..2].copy_from_slice(&w.rows.to_le_bytes());
                p[2..].copy_from_slice(&w.cols.to_le_bytes());
                put(&p)
            }
            AttachFrame::Signal(n) | AttachFrame::Exit(n) => put(&n.to_le_bytes()),
            AttachFrame::Error(m) => {
                let mut end = m.len().min(ATTACH_MAX_PAYLOAD);
                while !m.is_char_boundary(end) {
                    end -= 1;
                }
                put(&m.as_bytes()[..end])
            }
        }
    }

    /// Decodes the frame at the start of `buf`: `Ok(None)` when more
    /// bytes are needed, else the frame and the bytes it took.
    pub fn decode(buf: &[u8]) -> Result<Option<(AttachFrame, usize)>, AttachFrameError> {
        let Some(&kind) = buf.first() else {
            return Ok(None);
        };
        if kind > 7 {
            return Err(AttachFrameError::Kind(kind));
        }
        let Some(len) = buf.get(1..ATTACH_HEADER) else {
            return Ok(None);
        };
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        if len > ATTACH_MAX_PAYLOAD {
            return Err(AttachFrameError::Length(len));
        }
        let Some(p) = buf.get(ATTACH_HEADER..ATTACH_HEADER + len) else {
            return Ok(None);
        };
        let fixed = |want: usize| {
            if p.len() == want {
                Ok(())
            } else {
                Err(AttachFrameError::Size {
                    kind,
                    want,
                    got: p.len(),
                })
            }
        };
        let int = || i32::from_le_bytes([p[0], p[1], p[2], p[3]]);
        let frame = match kind {
            0 => AttachFrame::Stdin(p.to_vec()),
            1 => AttachFrame::Stdout(p.to_vec()),
            2 => AttachFrame::Stderr(p.to_vec()),
            3 => {
                fixed(0)?;
                AttachFrame::CloseStdin
            }
            4 => {
                fixed(4)?;
                AttachFrame::Resize(WindowSize {
                    rows: u16::from_le_bytes([p[0], p[1]]),
                    cols: u16::from_le_bytes([p[2], p[3]]),
                })
            }
            5 => {
                fixed(4)?;
                AttachFrame::Signal(int())
            }
            6 => {
                fixed(4)?;
                AttachFrame::Exit(int())
            }
            _ => AttachFrame::Error(String::from_utf8_lossy(p).into_owned()),
        };
        Ok(Some((frame, ATTACH_HEADER + len)))
    }
}

/// One line of an exec stream: output, then the exit or an error last.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(untagged)]
pub enum ExecEvent {
    Output { stream: StreamKind, data: String },
    Exit { exit_code: i32 },
    Error { error: String },
}

/// One image, as `GET /v1/images` lists it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ImageSummary {
    /// Canonical reference, e.g. `docker.io/library/busybox:latest`.
    pub reference: String,
    /// The config digest, `sha256:...`.
    pub id: String,
    /// Bytes.
    pub size: u64,
    /// The manifest's digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
}

/// `POST /v1/images/pull`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct PullRequest {
    pub reference: String,
    /// Basic auth (or a token service's) for the registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// A bearer token presented as is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_token: Option<String>,
}

/// One line of a pull stream: progress, then `done` or an error last.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(untagged)]
pub enum PullEvent {
    Done {
        done: bool,
        reference: String,
    },
    Error {
        error: String,
    },
    Progress {
        status: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        layer: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        current: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        total: Option<u64>,
    },
}

/// `GET /v1/info`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Info {
    pub version: String,
    pub backend: Backend,
    /// Why the daemon fell back to emulation (TCG).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_reason: Option<String>,
    /// The guest kernel.
    pub kernel: String,
    /// What the host offers (e.g. "kvm (VT-x)", "pvm").
    pub virtualization: String,
    pub containers: u64,
    pub running: u64,
    pub images: u64,
    /// Where the daemon keeps images and containers.
    #[serde(default)]
    pub state_dir: String,
    /// The networks' names, or why container networking is off.
    #[serde(default)]
    pub networks: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub networking_off: Option<String>,
}

/// One line of `GET /v1/events`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub time_ms: u64,
    pub id: String,
    pub name: String,
    /// `create`, `start`, `die`, `destroy`, ...
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
}

/// The kind of an API error.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    NotFound,
    Conflict,
    BadRequest,
    /// The container's program is missing or cannot be executed.
    CannotRun,
    Internal,
    Unavailable,
}

impl ErrorCode {
    /// The HTTP status that goes with it.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::NotFound => 404,
            ErrorCode::Conflict => 409,
            ErrorCode::BadRequest | ErrorCode::CannotRun => 400,
            ErrorCode::Internal => 500,
            ErrorCode::Unavailable => 503,
        }
    }

    /// The kind for a status whose body said none.
    pub fn from_status(status: u16) -> ErrorCode {
        match status {
            404 => ErrorCode::NotFound,
            409 => ErrorCode::Conflict,
            400..=499 => ErrorCode::BadRequest,
            503 => ErrorCode::Unavailable,
            _ => ErrorCode::Internal,
        }
    }
}

/// The body of every non-2xx answer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ApiErrorBody {
    pub code: ErrorCode,
    pub message: String,
    /// With `cannot_run`: the code a shell gives (126 or 127).
    #[serde(default)]
    pub exit_code: Option<i32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn optional_fields_are_left_out() {
        let r = CreateRequest {
            image: "busybox".into(),
            ..Default::default()
        };
        assert_eq!(serde_json::to_string(&r).unwrap(), r#"{"image":"busybox"}"#);
        let back: CreateRequest = serde_json::from_str(r#"{"image":"busybox"}"#).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn record_round_trips() {
        let j = r#"{"id":"ab","name":"n","image":"busybox","config":{"image":"busybox","cmd":["true"]},
            "state":"exited","exit_code":137,"signal":9,"created_ms":1,"started_ms":2,"finished_ms":3,
            "backend":"tcg","pids":[],"vcpus":1,"memory_mib":128}"#;
        let r: ContainerRecord = serde_json::from_str(j).unwrap();
        assert_eq!(r.state, ContainerState::Exited);
        assert_eq!(r.backend, Some(Backend::Tcg));
        assert_eq!(r.config.cmd, Some(vec!["true".to_string()]));
        let again: ContainerRecord =
            serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(again, r);
    }

    #[test]
    fn exec_and_pull_lines() {
        let e: ExecEvent = serde_json::from_str(r#"{"stream":"stdout","data":"hi\n"}"#).unwrap();
        assert_eq!(
            e,
            ExecEvent::Output {
                stream: StreamKind::Stdout,
                data: "hi\n".into()
            }
        );
        let e: ExecEvent = serde_json::from_str(r#"{"exit_code":3}"#).unwrap();
        assert_eq!(e, ExecEvent::Exit { exit_code: 3 });
        let e: ExecEvent = serde_json::from_str(r#"{"error":"no such file"}"#).unwrap();
        assert_eq!(
            e,
            ExecEvent::Error {
                error: "no such file".into()
            }
        );
        assert_eq!(
            serde_json::to_string(&ExecEvent::Exit { exit_code: 0 }).unwrap(),
            r#"{"exit_code":0}"#
        );

        let p: PullEvent = serde_json::from_str(
            r#"{"status":"Downloading","layer":"sha256:aa","current":1,"total":2}"#,
        )
        .unwrap();
        assert!(matches!(
            p,
            PullEvent::Progress {
                current: Some(1),
                ..
            }
        ));
        let p: PullEvent = serde_json::from_str(r#"{"status":"Resolved"}"#).unwrap();
        assert!(matches!(p, PullEvent::Progress { layer: None, .. }));
        let p: PullEvent = serde_json::from_str(r#"{"done":true,"reference":"r"}"#).unwrap();
        assert!(matches!(p, PullEvent::Done { done: true, .. }));
        let p: PullEvent = serde_json::from_str(r#"{"error":"denied"}"#).unwrap();
        assert!(matches!(p, PullEvent::Error { .. }));
    }

    #[test]
    fn defaults_of_kill_and_stop() {
        let k: KillRequest = serde_json::from_str("{}").unwrap();
        assert_eq!(k.signal, 9);
        let s: StopRequest = serde_json::from_str("{}").unwrap();
        assert_eq!(s.timeout, 10);
        let l: LogsOptions = serde_json::from_str("{}").unwrap();
        assert!(l.stdout && l.stderr && !l.follow);
    }

    #[test]
    fn error_codes() {
        let b: ApiErrorBody =
            serde_json::from_str(r#"{"code":"not_found","message":"no such container: x"}"#)
                .unwrap();
        assert_eq!(b.code, ErrorCode::NotFound);
        assert_eq!(b.code.status(), 404);
        assert_eq!(ErrorCode::from_status(409), ErrorCode::Conflict);
        assert_eq!(ErrorCode::from_status(422), ErrorCode::BadRequest);
        assert_eq!(ErrorCode::from_status(502), ErrorCode::Internal);
    }

    #[test]
    fn attach_frames_round_trip() {
        let frames = [
            AttachFrame::Stdin(b"hi\n".to_vec()),
            AttachFrame::Stdout(vec![0xff, 0, 1]),
            AttachFrame::Stderr(Vec::new()),
            AttachFrame::CloseStdin,
            AttachFrame::Resize(WindowSize {
                rows: 50,
                cols: 132,
            }),
            AttachFrame::Signal(15),
            AttachFrame::Exit(-1),
            AttachFrame::Error("gone \u{e9}".into()),
        ];
        let mut wire = Vec::new();
        for f in &frames {
            f.encode(&mut wire);
        }
        assert_eq!(&wire[..5], &[0, 3, 0, 0, 0]);
        // Byte by byte: no frame is taken before it is whole.
        let mut got = Vec::new();
        let mut buf = Vec::new();
        for b in wire {
            buf.push(b);
            while let Some((f, n)) = AttachFrame::decode(&buf).unwrap() {
                buf.drain(..n);
                got.push(f);
            }
        }
        assert!(buf.is_empty());
        assert_eq!(got, frames);
    }

    #[test]
    fn long_data_is_split_and_bad_frames_are_refused() {
        let mut wire = Vec::new();
        AttachFrame::Stdout(vec![7; ATTACH_MAX_PAYLOAD + 1]).encode(&mut wire);
        let (f, n) = AttachFrame::decode(&wire).unwrap().unwrap();
        assert_eq!(f, AttachFrame::Stdout(vec![7; ATTACH_MAX_PAYLOAD]));
        let (f, _) = AttachFrame::decode(&wire[n..]).unwrap().unwrap();
        assert_eq!(f, AttachFrame::Stdout(vec![7]));

        assert_eq!(
            AttachFrame::decode(&[9, 0, 0, 0, 0]),
            Err(AttachFrameError::Kind(9))
        );
        assert_eq!(
            AttachFrame::decode(&[0, 1, 0, 1, 0]),
            Err(AttachFrameError::Length(65537))
        );
        assert_eq!(
            AttachFrame::decode(&[4, 1, 0, 0, 0, 9]),
            Err(AttachFrameError::Size {
                kind: 4,
                want: 4,
                got: 1
            })
        );
        assert_eq!(AttachFrame::decode(&[5, 4, 0]), Ok(None));
    }
}
