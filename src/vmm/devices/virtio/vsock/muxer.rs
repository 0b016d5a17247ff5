//! The vsock muxer: Firecracker's hybrid vsock over Unix sockets.
//!
//! - Host-initiated: a client connects to the listener at `uds_path` and
//!   sends `CONNECT <port>\n` (a [`Handshake`] until then). The muxer picks
//!   a host port, sends the guest a REQUEST, and on RESPONSE writes
//!   `OK <host port>\n` to the client. An RST, or no answer within
//!   [`CONNECT_TIMEOUT`], closes the client.
//! - Guest-initiated: a REQUEST to host port P connects to the Unix
//!   socket `<uds_path>_P`; if nothing listens there the guest gets an RST.
//!
//! Packets for the guest wait in two bounded queues: `rxq` (connections
//! with something to send, each at most once) and `resets` (RSTs for
//! connections that no longer exist). The muxer never touches the event
//! loop directly: it records which fds changed (`dirty`), and [`sync`]
//! (run at the end of every event) adds, modifies or removes each
//! socket's registration, and only then closes the streams that ended, so
//! an fd number is never reused while the event loop still knows it.
//!
//! [`sync`]: Muxer::sync

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::vmm::kvm::memory::GuestMem;
use event_manager::{EventOps, Events};
use virtio_queue::DescriptorChain;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::timerfd::TimerFd;

use super::connection::{Connection, Status};
use super::packet::{Header, RxBuffer, HOST_CID, OP_REQUEST, OP_RST, TYPE_STREAM};
use crate::vmm::metrics::METRICS;

/// Connections at once (each holds a host fd and up to `CONN_BUF` bytes).
pub const MAX_CONNECTIONS: usize = 1024;
/// Host clients that have not finished their `CONNECT` line; one more
/// closes the oldest.
pub const MAX_HANDSHAKES: usize = 64;
/// RSTs waiting for an RX buffer; beyond this they are dropped (counted).
pub const MAX_RESETS: usize = 256;
/// How long the guest has to answer a REQUEST, and a client to send its
/// `CONNECT` line.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// `CONNECT 4294967295` with room to spare.
const MAX_LINE: usize = 32;
/// Host ports handed to host-initiated connections start here.
const FIRST_LOCAL_PORT: u32 = 1 << 30;
const ACCEPTS_PER_EVENT: usize = 32;

/// A connection's ports: the host's, and the guest's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub local: u32,
    pub peer: u32,
}

/// A host client before its `CONNECT <port>\n` line is complete.
struct Handshake {
    stream: UnixStream,
    line: [u8; MAX_LINE],
    len: usize,
    deadline: Instant,
}

/// An RST for a connection that does not exist (any more).
#[derive(Clone, Copy, Debug)]
struct Reset {
    src_cid: u64,
    type_: u16,
    local: u32,
    peer: u32,
}

pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    listener_watched: bool,
    /// Accepting failed (no fds left): the listener is not polled until
    /// some stream closes.
    listener_paused: bool,
    timer: TimerFd,
    timer_at: Option<Instant>,
    conns: HashMap<ConnKey, Connection>,
    by_fd: HashMap<RawFd, ConnKey>,
    handshakes: HashMap<RawFd, Handshake>,
    rxq: VecDeque<ConnKey>,
    resets: VecDeque<Reset>,
    dirty: Vec<RawFd>,
    watched: HashMap<RawFd, EventSet>,
    closing: Vec<UnixStream>,
    local_ports: HashSet<u32>,
    next_port: u32,
    scratch: Vec<u8>,
    /// [`CONNECT_TIMEOUT`]; shorter in tests.
    pub(super) timeout: Duration,
}

impl Muxer {
    /// A muxer on a bound, non-blocking `listener` at `uds_path`.
    pub fn new(guest_cid: u64, uds_path: &Path, listener: UnixListener) -> io::Result<Self> {
        let timer = TimerFd::new()?;
        // SAFETY: F_GETFL/F_SETFL on a file descriptor we own; no memory
        // is passed. Non-blocking, so reading an expiry that a re-arm in
        // the same event batch cleared cannot stall the VMM thread.
        unsafe {
            let fd = timer.as_raw_fd();
            let flags = libc::fcntl(fd, libc::F_GETFL);
            if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(Muxer {
            guest_cid,
            uds_path: uds_path.to_path_buf(),
            listener,
            listener_watched: false,
            listener_paused: false,
            timer,
            timer_at: None,
            conns: HashMap::new(),
            by_fd: HashMap::new(),
            handshakes: HashMap::new(),
            rxq: VecDeque::new(),
            resets: VecDeque::new(),
            dirty: Vec::new(),
            watched: HashMap::new(),
            closing: Vec::new(),
            local_ports: HashSet::new(),
            next_port: FIRST_LOCAL_PORT,
            scratch: Vec::new(),
            timeout: CONNECT_TIMEOUT,
        })
    }

    pub fn listener_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    pub fn timer_fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }

    /// Whether `fd` is one of the muxer's streams.
    pub fn owns(&self, fd: RawFd) -> bool {
        self.by_fd.contains_key(&fd) || self.handshakes.contains_key(&fd)
    }

    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Guest bytes held for host peers, over every connection.
    pub fn buffered(&self) -> usize {
        self.conns.values().map(Connection::buffered).sum()
    }

    /// Streams registered with the event loop.
    #[cfg(test)]
    pub(super) fn watched(&self) -> usize {
        self.watched.len()
    }

    /// Whether anything waits for an RX buffer.
    pub fn has_rx(&self) -> bool {
        !self.resets.is_empty() || !self.rxq.is_empty()
    }

    fn host_header(&self, key: ConnKey) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: key.local,
            dst_port: key.peer,
            type_: TYPE_STREAM,
            ..Header::default()
        }
    }

    fn queue_reset(&mut self, r: Reset) {
        if self.resets.len() >= MAX_RESETS {
            METRICS.vsock.dropped_packets.inc();
            return;
        }
        self.resets.push_back(r);
    }

    fn reset_for(&self, key: ConnKey) -> Reset {
        Reset {
            src_cid: HOST_CID,
            type_: TYPE_STREAM,
            local: key.local,
            peer: key.peer,
        }
    }

    /// After a connection was used: end it, or queue it for the guest,
    /// and note that its registration may have changed.
    fn after(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let fd = conn.stream.as_raw_fd();
        self.dirty.push(fd);
        match conn.status() {
            Status::Alive => {
                if conn.wants_rx() && !conn.in_rxq {
                    conn.in_rxq = true;
                    self.rxq.push_back(key);
                }
            }
            Status::Close { rst } => {
                if let Some(conn) = self.conns.remove(&key) {
                    self.by_fd.remove(&fd);
                    if conn.allocated {
                        self.local_ports.remove(&key.local);
                    }
                    self.closing.push(conn.stream);
                }
                METRICS.vsock.closed_connections.inc();
                if rst {
                    METRICS.vsock.resets_sent.inc();
                    let r = self.reset_for(key);
                    self.queue_reset(r);
                }
            }
        }
    }

    /// A packet from the guest (already parsed and bounded).
    pub fn on_guest_packet(&mut self, hdr: &Header, payload: &[u8]) {
        METRICS.vsock.tx_packets.inc();
        if hdr.src_cid != self.guest_cid {
            // Not from this guest's address: nothing can be answered.
            METRICS.vsock.bad_packets.inc();
            return;
        }
        let key = ConnKey {
            local: hdr.dst_port,
            peer: hdr.src_port,
        };
        if hdr.dst_cid != HOST_CID || hdr.type_ != TYPE_STREAM {
            METRICS.vsock.bad_packets.inc();
            if hdr.op != OP_RST {
                METRICS.vsock.resets_sent.inc();
                self.queue_reset(Reset {
                    src_cid: hdr.dst_cid,
                    type_: hdr.type_,
                    local: hdr.dst_port,
                    peer: hdr.src_port,
                });
            }
            return;
        }
        if let Some(conn) = self.conns.get_mut(&key) {
            conn.on_packet(hdr, payload);
            self.after(key);
            return;
        }
        match hdr.op {
            OP_REQUEST => self.guest_connect(key, hdr),
            OP_RST => {}
            _ => {
                METRICS.vsock.resets_sent.inc();
                let r = self.reset_for(key);
                self.queue_reset(r);
            }
        }
    }

    /// The guest's REQUEST to host port `key.local`: connect to
    /// `<uds_path>_<port>`.
    fn guest_connect(&mut self, key: ConnKey, hdr: &Header) {
        let mut path = self.uds_path.clone().into_os_string();
        path.push(format!("_{}", key.local));
        let stream = if self.conns.len() >= MAX_CONNECTIONS {
            Err(io::Error::other("too many connections"))
        } else {
            super::unix::connect(Path::new(&path))
        };
        match stream {
            Ok(stream) => {
                METRICS.vsock.guest_connections.inc();
                self.by_fd.insert(stream.as_raw_fd(), key);
                self.conns
                    .insert(key, Connection::incoming(stream, key.local, hdr));
                self.after(key);
            }
            Err(e) => {
                tracing::debug!(port = key.local, "vsock: guest connect failed: {e}");
                METRICS.vsock.connect_failures.inc();
                METRICS.vsock.resets_sent.inc();
                let r = self.reset_for(key);
                self.queue_reset(r);
            }
        }
    }

    /// The listener is readable: accept host clients.
    pub fn on_listener(&mut self) {
        for _ in 0..ACCEPTS_PER_EVENT {
            match self.listener.accept() {
                Ok((stream, _)) => self.new_handshake(stream),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // Out of fds: stop polling until a stream closes,
                    // rather than spin on a listener that stays readable.
                    tracing::warn!("vsock: cannot accept: {e}");
                    METRICS.vsock.errors.inc();
                    self.listener_paused = true;
                    return;
                }
            }
        }
    }

    fn new_handshake(&mut self, stream: UnixStream) {
        if stream.set_nonblocking(true).is_err() || self.conns.len() >= MAX_CONNECTIONS {
            METRICS.vsock.refused_connections.inc();
            return;
        }
        if self.handshakes.len() >= MAX_HANDSHAKES {
            let oldest = self
                .handshakes
                .iter()
                .min_by_key(|(_, h)| h.deadline)
                .map(|(fd, _)| *fd);
            if let Some(fd) = oldest {
                METRICS.vsock.refused_connections.inc();
                self.drop_handshake(fd);
            }
        }
        let fd = stream.as_raw_fd();
        let deadline = Instant::now() + self.timeout;
        self.handshakes.insert(
            fd,
            Handshake {
                stream,
                line: [0; MAX_LINE],
                len: 0,
                deadline,
            },
        );
        self.dirty.push(fd);
        self.schedule(deadline);
    }

    fn drop_handshake(&mut self, fd: RawFd) {
        if let Some(h) = self.handshakes.remove(&fd) {
            self.closing.push(h.stream);
            self.dirty.push(fd);
        }
    }

    /// Readiness of one of the muxer's streams.
    pub fn on_socket(&mut self, fd: RawFd, set: EventSet) {
        if let Some(key) = self.by_fd.get(&fd).copied() {
            if let Some(conn) = self.conns.get_mut(&key) {
                conn.on_event(set);
            }
            self.after(key);
        } else if self.handshakes.contains_key(&fd) {
            self.read_handshake(fd);
        }
    }

    /// Reads the `CONNECT` line a byte at a time, so that nothing after
    /// its newline (the client's first data) is taken from the stream.
    fn read_handshake(&mut self, fd: RawFd) {
        let Some(h) = self.handshakes.get_mut(&fd) else {
            return;
        };
        loop {
            let mut b = [0u8; 1];
            match h.stream.read(&mut b) {
                Ok(1) if b[0] == b'\n' => break,
                Ok(1) if h.len < MAX_LINE => {
                    h.line[h.len] = b[0];
                    h.len += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // EOF, an error, or a line too long.
                _ => {
                    METRICS.vsock.refused_connections.inc();
                    return self.drop_handshake(fd);
                }
            }
        }
        let Some(h) = self.handshakes.remove(&fd) else {
            return;
        };
        self.dirty.push(fd);
        match parse_connect(&h.line[..h.len]) {
            Some(port) => self.host_connect(h.stream, port),
            None => {
                METRICS.vsock.refused_connections.inc();
                self.closing.push(h.stream);
            }
        }
    }

    /// A complete `CONNECT <port>`: a REQUEST for the guest.
    fn host_connect(&mut self, stream: UnixStream, port: u32) {
        if self.conns.len() >= MAX_CONNECTIONS {
            METRICS.vsock.refused_connections.inc();
            self.closing.push(stream);
            return;
        }
        let local = self.alloc_port(port);
        let key = ConnKey { local, peer: port };
        let deadline = Instant::now() + self.timeout;
        self.local_ports.insert(local);
        self.by_fd.insert(stream.as_raw_fd(), key);
        self.conns
            .insert(key, Connection::outgoing(stream, local, deadline));
        METRICS.vsock.host_connections.inc();
        self.after(key);
        self.schedule(deadline);
    }

    /// A host port no live connection uses (there are fewer connections
    /// than ports, so this ends).
    fn alloc_port(&mut self, peer: u32) -> u32 {
        loop {
            let p = self.next_port;
            self.next_port = p.checked_add(1).unwrap_or(FIRST_LOCAL_PORT);
            let key = ConnKey { local: p, peer };
            if !self.local_ports.contains(&p) && !self.conns.contains_key(&key) {
                return p;
            }
        }
    }

    /// Arms the timer for `at` unless it fires sooner already.
    fn schedule(&mut self, at: Instant) {
        if self.timer_at.is_some_and(|t| t <= at) {
            return;
        }
        let wait = at
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        match self.timer.reset(wait, None) {
            Ok(()) => self.timer_at = Some(at),
            Err(e) => tracing::warn!("vsock: cannot arm the timer: {e}"),
        }
    }

    /// The timer fired: give up on REQUESTs and `CONNECT` lines that took
    /// too long.
    pub fn on_timer(&mut self) {
        let mut expiries = [0u8; 8];
        // SAFETY: reads at most 8 bytes into `expiries`, from the timer fd
        // we own (non-blocking: at worst EAGAIN).
        unsafe {
            libc::read(self.timer.as_raw_fd(), expiries.as_mut_ptr().cast(), 8);
        }
        self.timer_at = None;
        let now = Instant::now();
        let late: Vec<ConnKey> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline.is_some_and(|d| d <= now))
            .map(|(k, _)| *k)
            .collect();
        for key in late {
            if let Some(c) = self.conns.get_mut(&key) {
                c.expire();
            }
            self.after(key);
        }
        let late: Vec<RawFd> = self
            .handshakes
            .iter()
            .filter(|(_, h)| h.deadline <= now)
            .map(|(fd, _)| *fd)
            .collect();
        for fd in late {
            METRICS.vsock.refused_connections.inc();
            self.drop_handshake(fd);
        }
        let next = self
            .conns
            .values()
            .filter_map(|c| c.deadline)
            .chain(self.handshakes.values().map(|h| h.deadline))
            .min();
        if let Some(at) = next {
            self.schedule(at);
        }
    }

    /// Writes the next packet for the guest into an RX chain; returns its
    /// used length, or None (the chain stays available) when there is
    /// nothing to send.
    pub fn fill_rx(&mut self, mem: &GuestMem, chain: DescriptorChain<&GuestMem>) -> Option<u32> {
        if !self.has_rx() {
            return None;
        }
        let mut buf = match RxBuffer::new(mem, chain) {
            Ok(b) => b,
            Err(e) => {
                // Used with nothing; the packet waits for the next one.
                tracing::debug!("vsock: bad RX buffer: {e}");
                METRICS.vsock.bad_packets.inc();
                return Some(0);
            }
        };
        if let Some(r) = self.resets.pop_front() {
            let hdr = Header {
                src_cid: r.src_cid,
                dst_cid: self.guest_cid,
                src_port: r.local,
                dst_port: r.peer,
                type_: r.type_,
                op: OP_RST,
                ..Header::default()
            };
            METRICS.vsock.rx_packets.inc();
            return Some(buf.write(&hdr, &[]).unwrap_or(0));
        }
        // Each queued connection is tried once: one with data but no room
        // in this buffer goes back to the end.
        for _ in 0..self.rxq.len() {
            let Some(key) = self.rxq.pop_front() else {
                break;
            };
            let base = self.host_header(key);
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            conn.in_rxq = false;
            let sent = conn.fill(&mut buf, base, &mut self.scratch);
            self.after(key);
            if let Some(len) = sent {
                METRICS.vsock.rx_packets.inc();
                return Some(len);
            }
        }
        None
    }

    /// The driver reset the device: every connection ends, without RSTs
    /// (the guest's sockets went with its driver). Host clients still in
    /// their handshake stay.
    pub fn kill_all(&mut self) {
        for (_, conn) in self.conns.drain() {
            let fd = conn.stream.as_raw_fd();
            self.by_fd.remove(&fd);
            self.dirty.push(fd);
            self.closing.push(conn.stream);
            METRICS.vsock.closed_connections.inc();
        }
        self.local_ports.clear();
        self.rxq.clear();
        self.resets.clear();
    }

    fn desired(&self, fd: RawFd) -> EventSet {
        if let Some(key) = self.by_fd.get(&fd) {
            return self
                .conns
                .get(key)
                .map_or(EventSet::empty(), Connection::interest);
        }
        if self.handshakes.contains_key(&fd) {
            return EventSet::IN;
        }
        EventSet::empty()
    }

    /// Brings the event loop's view in line: every changed stream is
    /// added, modified or removed; then ended streams are closed.
    pub fn sync(&mut self, ops: &mut EventOps) {
        for fd in std::mem::take(&mut self.dirty) {
            let want = self.desired(fd);
            let have = self.watched.get(&fd).copied();
            let done = match (have, want.is_empty()) {
                (None, false) => ops.add(Events::new_raw(fd, want)),
                (Some(h), false) if h != want => ops.modify(Events::new_raw(fd, want)),
                (Some(h), true) => ops.remove(Events::new_raw(fd, h)),
                _ => continue,
            };
            match done {
                Ok(()) if want.is_empty() => {
                    self.watched.remove(&fd);
                }
                Ok(()) => {
                    self.watched.insert(fd, want);
                }
                Err(e) => {
                    tracing::error!(fd, "vsock: cannot update a stream's registration: {e:?}");
                    METRICS.vsock.errors.inc();
                }
            }
        }
        if !self.closing.is_empty() {
            self.closing.clear();
            self.listener_paused = false;
        }
        let want = !self.listener_paused;
        if want != self.listener_watched {
            let ev = Events::new_raw(self.listener.as_raw_fd(), EventSet::IN);
            let done = if want { ops.add(ev) } else { ops.remove(ev) };
            match done {
                Ok(()) => self.listener_watched = want,
                Err(e) => tracing::error!("vsock: cannot watch the listener: {e:?}"),
            }
        }
    }
}

/// `CONNECT <port>` (a trailing `\r` allowed) → the port.
pub fn parse_connect(line: &[u8]) -> Option<u32> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let digits = line.strip_prefix(b"CONNECT ")?;
    if digits.is_empty() || digits.len() > 10 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines() {
        assert_eq!(parse_connect(b"CONNECT 1234"), Some(1234));
        assert_eq!(parse_connect(b"CONNECT 52\r"), Some(52));
        assert_eq!(parse_connect(b"CONNECT 4294967295"), Some(u32::MAX));
        for bad in [
            &b"CONNECT 4294967296"[..],
            b"CONNECT",
            b"CONNECT ",
            b"CONNECT -1",
            b"CONNECT 12 ",
            b"connect 12",
            b"HELLO",
            b"",
        ] {
            assert_eq!(parse_connect(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }
}
