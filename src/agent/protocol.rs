//! The host <-> agent protocol, shared by `husk-agent` (in the guest) and
//! the host-side client. Documented in `docs/agent-protocol.md`.
//!
//! One stream connection (vsock port [`AGENT_PORT`] in a VM, a Unix socket
//! in host tests) carries frames both ways:
//! ```text
//! u32 LE  length of what follows (1 ..= MAX_FRAME)
//! u8      kind: 1 control, 2 data
//! ...     control: one JSON `Message`
//!         data: u32 LE process id, u8 stream (0 stdin, 1 stdout, 2 stderr),
//!               then 0 ..= MAX_DATA bytes
//! ```
//! Streams have credit-based flow control: a sender may have at most the
//! credit its peer granted outstanding, [`WINDOW`] bytes to begin with,
//! and the reader grants more (`Credit`) as it consumes. So a process
//! that writes faster than the host reads is stopped by its pipe, and no
//! buffer on either side grows past the window.
//!
//! A frame whose length or kind is wrong ends the connection (the byte
//! stream cannot be trusted after it); a well-framed message that makes
//! no sense gets an `Error` reply and the connection goes on.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Protocol version; the agent sends it in `Ready`, and a host refuses an
/// agent of another version.
pub const VERSION: u32 = 1;
/// The vsock port the agent listens on.
pub const AGENT_PORT: u32 = 1024;
/// The largest frame body (a control message's JSON).
pub const MAX_FRAME: usize = 1 << 20;
/// The most bytes in one data frame.
pub const MAX_DATA: usize = 64 * 1024;
/// Credit each side starts with, per stream of each process.
pub const WINDOW: u32 = 256 * 1024;
/// Bytes before a data frame's payload: length, kind, id, stream.
pub const DATA_HEADER: usize = 4 + 1 + 4 + 1;

const KIND_CONTROL: u8 = 1;
const KIND_DATA: u8 = 2;

/// The connection is broken: close it.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("frame length {0} is outside 1..={MAX_FRAME}")]
    Length(usize),
    #[error("unknown frame kind {0}")]
    Kind(u8),
}

/// One frame that makes no sense; the next one may.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("bad control message: {0}")]
    Json(String),
    #[error("data frame of {0} bytes is too short for its header")]
    ShortData(usize),
    #[error("data frame carries {0} bytes, more than {MAX_DATA}")]
    LongData(usize),
    #[error("unknown stream {0}")]
    Stream(u8),
}

/// A process's standard streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    Stdin,
    Stdout,
    Stderr,
}

impl Stream {
    fn from_byte(b: u8) -> Result<Stream, MessageError> {
        match b {
            0 => Ok(Stream::Stdin),
            1 => Ok(Stream::Stdout),
            2 => Ok(Stream::Stderr),
            b => Err(MessageError::Stream(b)),
        }
    }

    fn byte(self) -> u8 {
        match self {
            Stream::Stdin => 0,
            Stream::Stdout => 1,
            Stream::Stderr => 2,
        }
    }
}

/// A terminal's size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowSize {
    pub rows: u16,
    pub cols: u16,
}

/// What the image says to run (OCI image config, `config` object).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// `KEY=value` entries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// `user`, `uid`, `user:group` or `uid:gid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// The main process of a container: the image's config, what the caller
/// overrides (as `docker run` would), and the guest's identity.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    #[serde(default)]
    pub image: ImageConfig,
    /// An entrypoint here replaces the image's and drops its cmd; env
    /// entries replace the image's of the same name.
    #[serde(default)]
    pub overrides: ImageConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Extra `/etc/hosts` lines: (address, names).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<(String, Vec<String>)>,
    /// `/etc/resolv.conf` nameservers; left alone when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default)]
    pub tty: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<WindowSize>,
    /// Keep the VM (and the agent) running after the main process exits.
    #[serde(default)]
    pub keep_running: bool,
    /// The guest's network interface, set up before the main process
    /// starts; `None` leaves the guest with loopback only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<GuestNetwork>,
    /// Filesystems mounted in the container before the main process
    /// starts (volumes, bind mounts, tmpfs), in this order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<GuestMount>,
}

/// A filesystem the agent mounts in the container (see
/// `agent::guest::mounts`, which validates it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestMount {
    /// An absolute path in the container; created when missing.
    pub target: String,
    pub source: MountSource,
    #[serde(default)]
    pub read_only: bool,
}

/// What a [`GuestMount`] mounts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum MountSource {
    /// A virtio-blk disk holding an ext4 filesystem, found by its serial
    /// (the host's drive id).
    Block { serial: String },
    /// A virtio-fs share, by its tag.
    VirtioFs { tag: String },
    /// A new tmpfs.
    Tmpfs {
        /// Bytes; the kernel's default (half the RAM) when unset.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        size: Option<u64>,
        /// The root's permission bits (default 1777).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<u32>,
        #[serde(default)]
        noexec: bool,
        #[serde(default)]
        nosuid: bool,
        #[serde(default)]
        nodev: bool,
    },
}

/// A tar stream in or out of the container (`husk cp`), run by the agent
/// in a child process whose stdin or stdout carries the stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ArchiveOp {
    /// stdout: a tar of `path` (not following its last component when
    /// it is a symlink), whose entries are named `name` then the path
    /// below; `name` "." packs a directory's contents.
    Read { path: String, name: String },
    /// stdin: a tar unpacked into the directory `path`.
    Write { path: String },
    /// stdout: the JSON `archive::PathStat` of `path`.
    Stat { path: String },
}

/// Exit codes of an archive child: the path is missing, or the request
/// (or the archive) is refused; any other failure exits 1.
pub const ARCHIVE_NOT_FOUND: i32 = 2;
pub const ARCHIVE_REFUSED: i32 = 3;

/// The guest's side of a container's network: one virtio-net interface,
/// found by its MAC address, with one IPv4 address and an optional
/// default route. The agent validates it and refuses a start with an
/// invalid one (see `agent::guest::net`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestNetwork {
    /// The NIC's MAC address ("02:42:0a:58:00:02"), which picks it among the guest's interfaces.
    pub mac: String,
    /// The interface's name in the guest (renamed to it when it differs; "eth0").
    pub name: String,
    pub address: std::net::Ipv4Addr,
    pub prefix_len: u8,
    /// The default route's next hop; `None`: no default route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<std::net::Ipv4Addr>,
    /// 68..=65535; `None` leaves the kernel's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
}

/// An extra process in a running container (`exec`). Unset fields take
/// the main process's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessSpec {
    pub args: Vec<String>,
    /// Added to (and replacing entries of) the container's environment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default)]
    pub tty: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<WindowSize>,
}

/// A container of a pod (`husk.pod=` on the kernel command line: the
/// agent serves several containers, each with its root in the pod's
/// shared directory). What the OCI runtime spec says of it, as the
/// agent applies it inside the guest.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodContainer {
    /// 1 to 64 of `[A-Za-z0-9_.-]`: its directory in the pod share holds
    /// its root filesystem as `rootfs/` and files for its mounts.
    pub name: String,
    /// The main process: a full environment, `user` as `uid:gid`.
    pub process: ProcessSpec,
    /// Supplementary groups of the main process (and its execs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default)]
    pub readonly_root: bool,
    /// OCI `mounts`, in order; a `bind` source is a path in the guest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<OciMount>,
    #[serde(default)]
    pub resources: Resources,
    /// The container (the pod's sandbox) whose UTS and IPC namespaces
    /// this one joins; `None`: new ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join: Option<String>,
}

/// One OCI mount.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OciMount {
    pub destination: String,
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub source: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// `linux.resources`, as cgroup v2 applies them in the guest.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// Bytes (`memory.max`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_max: Option<i64>,
    /// `cpu.max`: quota and period in microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_quota: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_period: Option<u64>,
    /// OCI cpu shares (2..=262144), turned into `cpu.weight`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_shares: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids_max: Option<i64>,
}

/// A pod container's cgroup v2 figures (pod mode's `Stats`, and the
/// answer to `Update`), as the guest's cgroup files give them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupStats {
    /// `memory.current`, bytes.
    #[serde(default)]
    pub memory_current: u64,
    /// `memory.max`, bytes; `None`: `max`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_max: Option<u64>,
    /// `memory.swap.current`, bytes.
    #[serde(default)]
    pub swap_current: u64,
    /// `memory.stat`: `anon`, `file`, `pgfault`, ... (bytes or counts).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub memory_stat: BTreeMap<String, u64>,
    /// `memory.events`: `low`, `high`, `max`, `oom`, `oom_kill`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub memory_events: BTreeMap<String, u64>,
    /// `cpu.stat`: `usage_usec`, `user_usec`, `system_usec`, and with the
    /// cpu controller `nr_periods`, `nr_throttled`, `throttled_usec`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub cpu_stat: BTreeMap<String, u64>,
    /// `cpu.max` as written: quota (`None`: `max`) and period, µs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_max: Option<(Option<u64>, u64)>,
    /// `cpu.weight`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_weight: Option<u64>,
    /// `pids.current`.
    #[serde(default)]
    pub pids_current: u64,
    /// `pids.max`; `None`: `max`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids_max: Option<u64>,
}

/// The agent's own start-up, measured by the agent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timings {
    /// CLOCK_BOOTTIME at the agent's first instruction: the kernel's boot
    /// time to `/init`.
    pub boot_us: u64,
    /// From the agent's first instruction to listening for the host
    /// (mounts and the switch into the container's root included).
    pub setup_us: u64,
}

/// Control messages, both ways. Process ids are chosen by the host,
/// unique per connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    // Host to agent.
    /// Start the container's main process (once).
    Start {
        id: u32,
        spec: Box<ContainerSpec>,
    },
    /// Start another process in the container (in a pod: in the
    /// container named, see [`PodContainer`]).
    Exec {
        id: u32,
        spec: ProcessSpec,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        container: Option<String>,
    },
    /// Pod mode only: create and start a container of the pod, its main
    /// process as `id`. Several may run at once.
    Create {
        id: u32,
        container: Box<PodContainer>,
    },
    Signal {
        id: u32,
        signal: i32,
    },
    Resize {
        id: u32,
        window: WindowSize,
    },
    CloseStdin {
        id: u32,
    },
    /// Follow a process started over an earlier connection (a host that
    /// restarted): the agent answers `Started` and sends its output and
    /// exit from here on.
    Attach {
        id: u32,
    },
    /// Mount filesystems in the container's root without starting it
    /// (for copying files of a stopped container); answered as a process
    /// that exits 0 at once, or with `Error`.
    Mount {
        id: u32,
        mounts: Vec<GuestMount>,
    },
    /// Run an archive operation as process `id`.
    Archive {
        id: u32,
        op: ArchiveOp,
    },
    /// Pod mode only: apply `resources` to the running container's
    /// cgroup (only the limits given change); answered with
    /// `CgroupStats` (the figures after the change) or `Error`.
    Update {
        id: u32,
        container: String,
        resources: Resources,
    },
    /// Pod mode only: the container's cgroup figures; answered with
    /// `CgroupStats` or `Error`.
    Stats {
        id: u32,
        container: String,
    },
    /// Stop everything and end the VM.
    Shutdown,
    // Either way.
    /// The receiver of a stream lets the sender send `bytes` more.
    Credit {
        id: u32,
        stream: Stream,
        bytes: u32,
    },
    // Agent to host.
    /// Sent first on every connection. `error` is set when the guest
    /// could not be set up; the agent then ends the VM.
    Ready {
        version: u32,
        timings: Timings,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// The process runs; `spawn_us` is from the agent's first instruction
    /// to the process's start.
    Started {
        id: u32,
        pid: i32,
        spawn_us: u64,
    },
    /// The answer to `Update` or `Stats` `id`.
    CgroupStats {
        id: u32,
        stats: Box<CgroupStats>,
    },
    /// The process ended, after all its output was sent.
    Exit {
        id: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<i32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signal: Option<i32>,
    },
    /// A request failed; `id` names the process it was about.
    Error {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u32>,
        message: String,
        /// For a process that could not be started, the code a shell
        /// would give: 127 when the program does not exist, 126 when it
        /// cannot be executed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exit_code: Option<i32>,
    },
}

/// One decoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    Control(Message),
    Data {
        id: u32,
        stream: Stream,
        data: Vec<u8>,
    },
}

/// A decoded frame, or why this one made no sense.
pub type Decoded = Result<Frame, MessageError>;

/// Decodes the frame at the start of `buf`: `Ok(None)` when more bytes
/// are needed; otherwise the frame (or its error) and the bytes it took.
pub fn decode(buf: &[u8]) -> Result<Option<(Decoded, usize)>, FramingError> {
    let Some(len) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
    if len == 0 || len > MAX_FRAME {
        return Err(FramingError::Length(len));
    }
    let kind = match buf.get(4) {
        Some(&k) if k == KIND_CONTROL || k == KIND_DATA => k,
        Some(&k) => return Err(FramingError::Kind(k)),
        None => return Ok(None),
    };
    let Some(body) = buf.get(5..4 + len) else {
        return Ok(None);
    };
    let frame = if kind == KIND_CONTROL {
        serde_json::from_slice(body)
            .map(Frame::Control)
            .map_err(|e| MessageError::Json(crate::text::echo(&e.to_string()).into_owned()))
    } else {
        decode_data(body)
    };
    Ok(Some((frame, 4 + len)))
}

fn decode_data(body: &[u8]) -> Decoded {
    if body.len() < 5 {
        return Err(MessageError::ShortData(body.len()));
    }
    let id = u32::from_le_bytes([body[0], body[1], body[2], body[3]]);
    let stream = Stream::from_byte(body[4])?;
    let data = &body[5..];
    if data.len() > MAX_DATA {
        return Err(MessageError::LongData(data.len()));
    }
    Ok(Frame::Data {
        id,
        stream,
        data: data.to_vec(),
    })
}

/// Appends a control frame to `out`.
pub fn encode_message(msg: &Message, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0, 0, 0, 0, KIND_CONTROL]);
    // Serializing these types cannot fail (no maps with non-string keys).
    serde_json::to_writer(&mut *out, msg).expect("control messages serialize");
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

/// Appends a data frame to `out`; `data` is at most [`MAX_DATA`] bytes.
pub fn encode_data(id: u32, stream: Stream, data: &[u8], out: &mut Vec<u8>) {
    assert!(data.len() <= MAX_DATA, "data frames carry at most MAX_DATA");
    let len = (1 + 4 + 1 + data.len()) as u32;
    out.extend_from_slice(&len.to_le_bytes());
    out.push(KIND_DATA);
    out.extend_from_slice(&id.to_le_bytes());
    out.push(stream.byte());
    out.extend_from_slice(data);
}

/// Frames from a byte stream: bytes go in as they arrive, frames come out.
#[derive(Default)]
pub struct FrameReader {
    buf: Vec<u8>,
    start: usize,
}

impl FrameReader {
    /// The bytes not yet decoded (at most one frame's worth, plus what
    /// the last read brought).
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame, if there is one.
    pub fn next_frame(&mut self) -> Result<Option<Decoded>, FramingError> {
        match decode(&self.buf[self.start..])? {
            Some((frame, used)) => {
                self.start += used;
                if self.start > MAX_FRAME {
                    self.buf.drain(..self.start);
                    self.start = 0;
                }
                Ok(Some(frame))
            }
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(msg: Message) {
        let mut out = Vec::new();
        encode_message(&msg, &mut out);
        let (frame, used) = decode(&out).unwrap().unwrap();
        assert_eq!(used, out.len());
        assert_eq!(frame, Ok(Frame::Control(msg)));
    }

    #[test]
    fn messages_and_data_survive_the_wire() {
        round_trip(Message::Start {
            id: 0,
            spec: Box::new(ContainerSpec {
                image: ImageConfig {
                    cmd: Some(vec!["sh".into()]),
                    env: vec!["A=1".into()],
                    ..Default::default()
                },
                tty: true,
                window: Some(WindowSize { rows: 24, cols: 80 }),
                network: Some(GuestNetwork {
                    mac: "02:42:0a:58:00:02".into(),
                    name: "eth0".into(),
                    address: std::net::Ipv4Addr::new(10, 88, 0, 2),
                    prefix_len: 16,
                    gateway: Some(std::net::Ipv4Addr::new(10, 88, 0, 1)),
                    mtu: None,
                }),
                ..Default::default()
            }),
        });
        round_trip(Message::Exit {
            id: 3,
            code: None,
            signal: Some(9),
        });
        round_trip(Message::Shutdown);
        round_trip(Message::Update {
            id: 4,
            container: "c1".into(),
            resources: Resources {
                memory_max: Some(64 << 20),
                ..Default::default()
            },
        });
        let mut stats = CgroupStats {
            memory_current: 1 << 20,
            cpu_max: Some((None, 100_000)),
            ..Default::default()
        };
        stats.cpu_stat.insert("usage_usec".into(), 7);
        round_trip(Message::CgroupStats {
            id: 4,
            stats: Box::new(stats),
        });
        let mut out = Vec::new();
        encode_data(7, Stream::Stderr, b"oops", &mut out);
        assert_eq!(out.len(), DATA_HEADER + 4);
        assert_eq!(
            decode(&out).unwrap().unwrap().0,
            Ok(Frame::Data {
                id: 7,
                stream: Stream::Stderr,
                data: b"oops".to_vec()
            })
        );
    }

    #[test]
    fn the_guest_network_is_optional_json() {
        let spec: ContainerSpec = serde_json::from_str("{}").unwrap();
        assert_eq!(spec.network, None);
        assert!(!serde_json::to_string(&spec).unwrap().contains("network"));
        let json = r#"{"network":{"mac":"02:42:0a:58:00:02","name":"eth0",
            "address":"10.88.0.2","prefix_len":16}}"#;
        let spec: ContainerSpec = serde_json::from_str(json).unwrap();
        let net = spec.network.unwrap();
        assert_eq!(net.address, std::net::Ipv4Addr::new(10, 88, 0, 2));
        assert_eq!((net.prefix_len, net.gateway, net.mtu), (16, None, None));
        let back = serde_json::to_value(&net).unwrap();
        assert_eq!(back["address"], "10.88.0.2");
        assert!(back.get("gateway").is_none() && back.get("mtu").is_none());
    }

    #[test]
    fn a_reader_takes_frames_split_anywhere() {
        let mut out = Vec::new();
        encode_message(&Message::CloseStdin { id: 1 }, &mut out);
        encode_data(1, Stream::Stdout, b"hello", &mut out);
        for split in 0..out.len() {
            let mut r = FrameReader::default();
            let mut got = Vec::new();
            r.push(&out[..split]);
            while let Some(f) = r.next_frame().unwrap() {
                got.push(f);
            }
            r.push(&out[split..]);
            while let Some(f) = r.next_frame().unwrap() {
                got.push(f);
            }
            assert_eq!(got.len(), 2, "split at {split}");
            assert_eq!(r.pending(), 0);
        }
    }

    #[test]
    fn hostile_frames_are_errors_not_panics() {
        assert_eq!(decode(&[0, 0, 0, 0, 1]), Err(FramingError::Length(0)));
        let huge = ((MAX_FRAME + 1) as u32).to_le_bytes();
        assert_eq!(
            decode(&[huge[0], huge[1], huge[2], huge[3]]),
            Err(FramingError::Length(MAX_FRAME + 1))
        );
        assert_eq!(decode(&[1, 0, 0, 0, 9]), Err(FramingError::Kind(9)));
        // Well framed, but nonsense inside: the next frame still decodes.
        let (bad, _) = decode(&[3, 0, 0, 0, 1, b'{', b'}']).unwrap().unwrap();
        assert!(matches!(bad, Err(MessageError::Json(_))));
        let (bad, _) = decode(&[3, 0, 0, 0, 2, 1, 2]).unwrap().unwrap();
        assert_eq!(bad, Err(MessageError::ShortData(2)));
        let (bad, _) = decode(&[6, 0, 0, 0, 2, 0, 0, 0, 0, 7]).unwrap().unwrap();
        assert_eq!(bad, Err(MessageError::Stream(7)));
        let mut long = Vec::new();
        let len = (1 + 5 + MAX_DATA + 1) as u32;
        long.extend_from_slice(&len.to_le_bytes());
        long.extend_from_slice(&[2, 0, 0, 0, 0, 1]);
        long.resize(4 + len as usize, b'x');
        let (bad, _) = decode(&long).unwrap().unwrap();
        assert_eq!(bad, Err(MessageError::LongData(MAX_DATA + 1)));
        let unknown = br#"{"type":"format_disk"}"#;
        let mut f = ((unknown.len() + 1) as u32).to_le_bytes().to_vec();
        f.push(1);
        f.extend_from_slice(unknown);
        assert!(matches!(
            decode(&f).unwrap().unwrap().0,
            Err(MessageError::Json(_))
        ));
    }
}
