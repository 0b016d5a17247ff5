//! The DNS responder of one container network.
//!
//! Containers get their network's gateway as their only nameserver. The
//! daemon listens on `<gateway>:53` (UDP and TCP), answers the names of
//! the containers on that network itself ([`Names`]), and forwards every
//! other query, byte for byte, to the host's resolvers
//! ([`upstreams_from_resolv_conf`]). An internal network (no egress) gets
//! REFUSED for any other name, so nothing leaks out of it.
//!
//! The input is hostile: a container may send anything. Malformed
//! queries get FORMERR when a header can be read and are dropped
//! otherwise; responses are dropped; forwards in flight and TCP
//! connections are bounded; nothing here panics on input.

use std::collections::HashMap;
use std::ffi::CString;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use simple_dns::rdata::{RData, A};
use simple_dns::{
    Label, Name, Packet, PacketFlag, Question, ResourceRecord, CLASS, QCLASS, QTYPE, RCODE, TYPE,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::timeout;
use tracing::debug;

/// The port the responder listens on unless [`DnsConfig::port`] says otherwise.
pub const DNS_PORT: u16 = 53;
/// The largest answer sent over UDP (RFC 1035; the responder does not speak EDNS).
const MAX_UDP_ANSWER: usize = 512;
/// The largest message that fits the 2-byte length of DNS over TCP.
const MAX_TCP_MESSAGE: usize = u16::MAX as usize;
/// Queries forwarded at the same time (UDP and TCP together).
const MAX_FORWARDS: usize = 256;
/// TCP connections open at the same time.
const MAX_TCP_CONNECTIONS: usize = 64;
/// How long a TCP connection may stay silent (or take to send one message).
const TCP_IDLE: Duration = Duration::from_secs(10);
/// How long one upstream gets to answer before the next one is tried.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// Nameservers libc uses from resolv.conf (`MAXNS`).
const MAX_NAMESERVERS: usize = 3;
/// Tries at binding UDP and TCP on one free port when the port is 0.
const BIND_ATTEMPTS: usize = 8;
/// Pause after a failed `recv`/`accept`, so a persistent error cannot spin.
const ERROR_PAUSE: Duration = Duration::from_millis(10);

// Header flag bits (RFC 1035 4.1.1), for reading raw messages.
const FLAG_QR: u16 = 0x8000;
const FLAG_OPCODE: u16 = 0x7800;
const FLAG_RD: u16 = 0x0100;
const HEADER_LEN: usize = 12;
/// Class IN, and the class and type "ANY".
const CLASS_IN: u16 = 1;
const QANY: u16 = 255;
const TYPE_A: u16 = 1;

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("cannot bind the DNS responder's UDP socket on {addr}: {source}")]
    BindUdp {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot bind the DNS responder's TCP socket on {addr}: {source}")]
    BindTcp {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot read the address of the DNS responder's socket: {0}")]
    LocalAddr(#[source] io::Error),
}

/// The names one network's containers answer to: lower-case name (no
/// trailing dot) → address. Clones share the same table, so the network
/// manager keeps one and the responder reads it.
#[derive(Clone, Default, Debug)]
pub struct Names(Arc<RwLock<HashMap<String, Ipv4Addr>>>);

impl Names {
    /// Makes `name` (any case, trailing dot or not) resolve to `addr`.
    pub fn set(&self, name: &str, addr: Ipv4Addr) {
        let key = normalize(name);
        if key.is_empty() {
            return;
        }
        self.write().insert(key, addr);
    }

    pub fn remove(&self, name: &str) {
        self.write().remove(&normalize(name));
    }

    /// The address of `name` (any case, trailing dot or not); only exact
    /// names match, never `name.<suffix>`.
    pub fn lookup(&self, name: &str) -> Option<Ipv4Addr> {
        self.read().get(&normalize(name)).copied()
    }

    // A writer that panicked cannot leave the map half-updated (every
    // update is a single insert or remove), so a poisoned lock is usable.
    fn read(&self) -> RwLockReadGuard<'_, HashMap<String, Ipv4Addr>> {
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, HashMap<String, Ipv4Addr>> {
        self.0.write().unwrap_or_else(|e| e.into_inner())
    }
}

fn normalize(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// What one network's responder serves.
#[derive(Clone, Debug)]
pub struct DnsConfig {
    /// The gateway address; the responder listens on it.
    pub listen: Ipv4Addr,
    /// [`DNS_PORT`] in production; 0 picks a free port (tests).
    pub port: u16,
    pub names: Names,
    /// Where other queries go; empty: they get SERVFAIL.
    pub upstreams: Vec<SocketAddr>,
    /// False on internal networks: REFUSED for any name not in `names`.
    pub forward: bool,
}

/// Bounds on what clients may cost (constants in production; tests shrink them).
#[derive(Clone, Copy, Debug)]
struct Limits {
    max_forwards: usize,
    max_tcp_connections: usize,
    tcp_idle: Duration,
    upstream_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_forwards: MAX_FORWARDS,
            max_tcp_connections: MAX_TCP_CONNECTIONS,
            tcp_idle: TCP_IDLE,
            upstream_timeout: UPSTREAM_TIMEOUT,
        }
    }
}

/// A running responder. Its tasks (and the forwards and connections they
/// own) are aborted when it is dropped.
#[derive(Debug)]
pub struct DnsServer {
    local: SocketAddr,
    tasks: Vec<AbortHandle>,
}

impl DnsServer {
    /// Binds UDP and TCP on `cfg.listen:cfg.port` (the same port for both,
    /// also when `cfg.port` is 0) and starts serving. Must be called inside
    /// a tokio runtime.
    pub async fn start(cfg: DnsConfig) -> Result<DnsServer, DnsError> {
        Self::start_with(cfg, Limits::default()).await
    }

    async fn start_with(cfg: DnsConfig, limits: Limits) -> Result<DnsServer, DnsError> {
        let (udp, tcp) = bind_pair(cfg.listen, cfg.port).await?;
        let local = udp.local_addr().map_err(DnsError::LocalAddr)?;
        // A host whose resolv.conf names this very responder would loop.
        let upstreams: Vec<SocketAddr> =
            cfg.upstreams.into_iter().filter(|u| *u != local).collect();
        let responder = Arc::new(Responder {
            names: cfg.names,
            recursion: cfg.forward && !upstreams.is_empty(),
            upstreams,
            forward: cfg.forward,
            forwards: Arc::new(Semaphore::new(limits.max_forwards)),
            limits,
        });
        debug!(%local, forward = cfg.forward, upstreams = ?responder.upstreams, "dns responder started");
        let udp_task = tokio::spawn(serve_udp(Arc::new(udp), responder.clone()));
        let tcp_task = tokio::spawn(serve_tcp(tcp, responder));
        Ok(DnsServer {
            local,
            tasks: vec![udp_task.abort_handle(), tcp_task.abort_handle()],
        })
    }

    /// The UDP socket's address (the TCP listener has the same one).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Binds UDP, then TCP on the port UDP got. With port 0 the TCP side of
/// that port may be taken; then it tries again with a new port.
async fn bind_pair(listen: Ipv4Addr, port: u16) -> Result<(UdpSocket, TcpListener), DnsError> {
    let mut attempt = 1;
    loop {
        let want = SocketAddr::from((listen, port));
        let udp = UdpSocket::bind(want)
            .await
            .map_err(|source| DnsError::BindUdp { addr: want, source })?;
        let got = udp.local_addr().map_err(DnsError::LocalAddr)?;
        match TcpListener::bind(got).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(source)
                if port == 0
                    && source.kind() == io::ErrorKind::AddrInUse
                    && attempt < BIND_ATTEMPTS =>
            {
                debug!(addr = %got, "tcp port taken, binding the dns responder again");
                attempt += 1;
            }
            Err(source) => return Err(DnsError::BindTcp { addr: got, source }),
        }
    }
}

/// What to do with one message from a client.
#[derive(Debug, PartialEq, Eq)]
enum Action {
    /// Not worth an answer (no header, or not a query).
    Drop,
    Reply(Vec<u8>),
    /// Not ours: send the raw message upstream.
    Forward,
}

/// The 12-byte header of a raw message, as far as the responder needs it.
#[derive(Clone, Copy, Debug)]
struct Header {
    id: u16,
    flags: u16,
    questions: u16,
}

impl Header {
    fn read(msg: &[u8]) -> Option<Header> {
        let word = |i: usize| Some(u16::from_be_bytes([*msg.get(i)?, *msg.get(i + 1)?]));
        if msg.len() < HEADER_LEN {
            return None;
        }
        Some(Header {
            id: word(0)?,
            flags: word(2)?,
            questions: word(4)?,
        })
    }

    fn opcode(&self) -> u16 {
        (self.flags & FLAG_OPCODE) >> 11
    }
}

/// The one question of a query, read leniently (any type, any class) but
/// strictly as to form: plain labels of 1..=63 bytes, at most 255 bytes in
/// all, no compression pointers (nothing precedes a question to point to).
#[derive(Debug)]
struct RawQuestion<'a> {
    labels: Vec<&'a [u8]>,
    qtype: u16,
    qclass: u16,
}

impl<'a> RawQuestion<'a> {
    fn read(msg: &'a [u8]) -> Option<RawQuestion<'a>> {
        let mut pos = HEADER_LEN;
        let mut labels = Vec::new();
        let mut wire_len = 1;
        loop {
            let len = usize::from(*msg.get(pos)?);
            pos += 1;
            if len == 0 {
                break;
            }
            if len > 63 {
                return None; // a pointer or an extended label type
            }
            wire_len += len + 1;
            if wire_len > 255 {
                return None;
            }
            labels.push(msg.get(pos..pos + len)?);
            pos += len;
        }
        let word = |i: usize| Some(u16::from_be_bytes([*msg.get(i)?, *msg.get(i + 1)?]));
        Some(RawQuestion {
            labels,
            qtype: word(pos)?,
            qclass: word(pos + 2)?,
        })
    }

    /// The name as text for [`Names::lookup`] (which ignores case), if it
    /// can be one: ASCII, and no label holding a dot (which would fake a
    /// longer name).
    fn key(&self) -> Option<String> {
        if self.labels.is_empty() {
            return None;
        }
        let mut key = String::new();
        for label in &self.labels {
            if label.contains(&b'.') || !label.is_ascii() {
                return None;
            }
            if !key.is_empty() {
                key.push('.');
            }
            key.extend(label.iter().map(|&b| char::from(b)));
        }
        Some(key)
    }

    /// The question for a reply; `None` for a class simple-dns cannot
    /// spell (the reply then carries no question).
    fn to_question(&self) -> Option<Question<'a>> {
        let labels: Vec<Label<'a>> = self
            .labels
            .iter()
            .map(|l| Label::new_unchecked(*l))
            .collect();
        let qtype = QTYPE::try_from(self.qtype).unwrap_or(QTYPE::TYPE(TYPE::Unknown(self.qtype)));
        let qclass = QCLASS::try_from(self.qclass).ok()?;
        Some(Question::new(
            Name::new_with_labels(&labels),
            qtype,
            qclass,
            false,
        ))
    }
}

/// Builds a reply to `header`'s message: RD copied, opcode copied, the
/// question echoed when given, an A record when given. If it comes out
/// larger than `limit`, the answers are left out and TC is set.
fn build_reply(
    header: &Header,
    question: Option<Question<'_>>,
    rcode: RCODE,
    answer: Option<Ipv4Addr>,
    flags: PacketFlag,
    limit: usize,
) -> Option<Vec<u8>> {
    let mut packet = Packet::new_reply(header.id);
    *packet.rcode_mut() = rcode;
    packet.set_flags(flags);
    if header.flags & FLAG_RD != 0 {
        packet.set_flags(PacketFlag::RECURSION_DESIRED);
    }
    if let Some(question) = question {
        if let Some(addr) = answer {
            packet.answers.push(ResourceRecord::new(
                question.qname.clone(),
                CLASS::IN,
                0,
                RData::A(A::from(addr)),
            ));
        }
        packet.questions.push(question);
    }
    let mut bytes = match packet.build_bytes_vec_compressed() {
        Ok(bytes) => bytes,
        Err(e) => {
            debug!(error = %e, "cannot build a dns reply");
            return None;
        }
    };
    if bytes.len() > limit && !packet.answers.is_empty() {
        packet.answers.clear();
        packet.set_flags(PacketFlag::TRUNCATION);
        bytes = packet.build_bytes_vec_compressed().ok()?;
    }
    // simple-dns cannot spell unassigned opcodes: copy the query's bits.
    if let Some(b) = bytes.get_mut(2) {
        *b = (*b & !0x78) | ((header.flags >> 8) as u8 & 0x78);
    }
    Some(bytes)
}

/// The state shared by the UDP loop, the TCP connections and the forwards.
struct Responder {
    names: Names,
    upstreams: Vec<SocketAddr>,
    forward: bool,
    /// RA: whether other names get resolved (forwarding to somewhere).
    recursion: bool,
    forwards: Arc<Semaphore>,
    limits: Limits,
}

impl Responder {
    fn flags(&self) -> PacketFlag {
        if self.recursion {
            PacketFlag::RECURSION_AVAILABLE
        } else {
            PacketFlag::empty()
        }
    }

    /// Decides what to do with one message; `limit` is the largest reply
    /// the transport takes.
    fn respond(&self, msg: &[u8], limit: usize) -> Action {
        let Some(header) = Header::read(msg) else {
            debug!(len = msg.len(), "dropping a dns message without a header");
            return Action::Drop;
        };
        if header.flags & FLAG_QR != 0 {
            debug!(id = header.id, "dropping a dns response sent as a query");
            return Action::Drop;
        }
        let reply = |question, rcode, answer, flags| {
            build_reply(&header, question, rcode, answer, flags, limit)
                .map_or(Action::Drop, Action::Reply)
        };
        if header.opcode() != 0 {
            debug!(opcode = header.opcode(), "dns opcode not implemented");
            return reply(None, RCODE::NotImplemented, None, self.flags());
        }
        if header.questions != 1 {
            debug!(
                count = header.questions,
                "dns query without exactly one question"
            );
            return reply(None, RCODE::FormatError, None, self.flags());
        }
        let Some(raw) = RawQuestion::read(msg) else {
            debug!(id = header.id, "malformed dns question");
            return reply(None, RCODE::FormatError, None, self.flags());
        };
        if let Some(addr) = raw.key().and_then(|k| self.names.lookup(&k)) {
            // A container's name: answered here in every case, so it
            // never reaches upstream. Only an A question in class IN (or
            // ANY) has data; anything else is an empty NOERROR.
            let class_in = raw.qclass == CLASS_IN || raw.qclass == QANY;
            let type_a = raw.qtype == TYPE_A || raw.qtype == QANY;
            let answer = (class_in && type_a).then_some(addr);
            let flags = self.flags() | PacketFlag::AUTHORITATIVE_ANSWER;
            return reply(raw.to_question(), RCODE::NoError, answer, flags);
        }
        if !self.forward {
            return reply(raw.to_question(), RCODE::Refused, None, self.flags());
        }
        if self.upstreams.is_empty() {
            return reply(raw.to_question(), RCODE::ServerFailure, None, self.flags());
        }
        Action::Forward
    }

    /// SERVFAIL for a message that was to be forwarded.
    fn servfail(&self, msg: &[u8]) -> Option<Vec<u8>> {
        let header = Header::read(msg)?;
        let question = RawQuestion::read(msg).and_then(|q| q.to_question());
        build_reply(
            &header,
            question,
            RCODE::ServerFailure,
            None,
            self.flags(),
            MAX_UDP_ANSWER,
        )
    }

    /// Asks the upstreams in turn over UDP; the first valid answer, raw.
    async fn forward_udp(&self, query: &[u8]) -> Option<Vec<u8>> {
        let header = Header::read(query)?;
        for &upstream in &self.upstreams {
            match timeout(
                self.limits.upstream_timeout,
                udp_exchange(upstream, query, header.id),
            )
            .await
            {
                Ok(Ok(answer)) => return Some(answer),
                Ok(Err(e)) => debug!(%upstream, error = %e, "dns upstream failed (udp)"),
                Err(_) => debug!(%upstream, "dns upstream timed out (udp)"),
            }
        }
        None
    }

    /// Asks the upstreams in turn over TCP; the first valid answer, raw.
    async fn forward_tcp(&self, query: &[u8]) -> Option<Vec<u8>> {
        let header = Header::read(query)?;
        for &upstream in &self.upstreams {
            match timeout(
                self.limits.upstream_timeout,
                tcp_exchange(upstream, query, header.id),
            )
            .await
            {
                Ok(Ok(answer)) => return Some(answer),
                Ok(Err(e)) => debug!(%upstream, error = %e, "dns upstream failed (tcp)"),
                Err(_) => debug!(%upstream, "dns upstream timed out (tcp)"),
            }
        }
        None
    }

    /// Serves one TCP connection: length-framed queries, one at a time,
    /// until the client goes quiet, closes, or sends something unanswerable.
    async fn serve_connection(&self, mut stream: TcpStream, peer: SocketAddr) {
        let idle = self.limits.tcp_idle;
        loop {
            let mut len = [0u8; 2];
            if !matches!(timeout(idle, stream.read_exact(&mut len)).await, Ok(Ok(_))) {
                debug!(%peer, "dns tcp connection closed or idle");
                return;
            }
            let len = usize::from(u16::from_be_bytes(len));
            if len == 0 {
                debug!(%peer, "dns tcp message of length 0, closing");
                return;
            }
            let mut msg = vec![0u8; len];
            if !matches!(timeout(idle, stream.read_exact(&mut msg)).await, Ok(Ok(_))) {
                debug!(%peer, "dns tcp message incomplete, closing");
                return;
            }
            let reply = match self.respond(&msg, MAX_TCP_MESSAGE) {
                Action::Drop => {
                    debug!(%peer, "unanswerable dns tcp message, closing");
                    return;
                }
                Action::Reply(reply) => Some(reply),
                Action::Forward => match self.forwards.clone().try_acquire_owned() {
                    Ok(_permit) => match self.forward_tcp(&msg).await {
                        Some(answer) => Some(answer),
                        None => self.servfail(&msg),
                    },
                    Err(_) => {
                        debug!(%peer, "too many dns forwards in flight");
                        self.servfail(&msg)
                    }
                },
            };
            let Some(reply) = reply else { return };
            let Some(framed) = frame(&reply) else { return };
            if !matches!(timeout(idle, stream.write_all(&framed)).await, Ok(Ok(_))) {
                debug!(%peer, "cannot write a dns tcp reply, closing");
                return;
            }
        }
    }
}

/// `msg` with its 2-byte length in front (DNS over TCP); `None` if too long.
fn frame(msg: &[u8]) -> Option<Vec<u8>> {
    let len = u16::try_from(msg.len()).ok()?;
    let mut framed = Vec::with_capacity(msg.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(msg);
    Some(framed)
}

/// Whether `answer` is an answer to query `id`.
fn answers(answer: &[u8], id: u16) -> bool {
    Header::read(answer).is_some_and(|h| h.id == id && h.flags & FLAG_QR != 0)
}

/// One UDP exchange with `upstream` from a fresh ephemeral socket.
/// Datagrams from elsewhere or with another ID are ignored (the caller's
/// timeout bounds the wait).
async fn udp_exchange(upstream: SocketAddr, query: &[u8], id: u16) -> io::Result<Vec<u8>> {
    let any: SocketAddr = match upstream {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(any).await?;
    // Connected: the kernel drops datagrams from any other address, and
    // an ICMP "port unreachable" ends the wait at once.
    socket.connect(upstream).await?;
    socket.send(query).await?;
    let mut buf = vec![0u8; 65535];
    loop {
        let (len, from) = socket.recv_from(&mut buf).await?;
        let answer = &buf[..len];
        if from.ip() != upstream.ip() || from.port() != upstream.port() {
            debug!(%from, %upstream, "dns answer from the wrong address, ignored");
        } else if !answers(answer, id) {
            debug!(%upstream, "dns answer with the wrong id, ignored");
        } else {
            return Ok(answer.to_vec());
        }
    }
}

/// One TCP exchange with `upstream` (2-byte length framing).
async fn tcp_exchange(upstream: SocketAddr, query: &[u8], id: u16) -> io::Result<Vec<u8>> {
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    let framed = frame(query).ok_or_else(|| invalid("query too long"))?;
    let mut stream = TcpStream::connect(upstream).await?;
    stream.write_all(&framed).await?;
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await?;
    let mut answer = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut answer).await?;
    if !answers(&answer, id) {
        return Err(invalid("answer does not match the query"));
    }
    Ok(answer)
}

/// The UDP side: answers in place, forwards in tasks it owns (aborted with it).
async fn serve_udp(socket: Arc<UdpSocket>, responder: Arc<Responder>) {
    let mut buf = vec![0u8; 65535];
    let mut forwards = JoinSet::new();
    loop {
        let (len, peer) = match socket.recv_from(&mut buf).await {
            Ok(got) => got,
            Err(e) => {
                debug!(error = %e, "dns udp receive failed");
                tokio::time::sleep(ERROR_PAUSE).await;
                continue;
            }
        };
        let msg = &buf[..len];
        let reply = match responder.respond(msg, MAX_UDP_ANSWER) {
            Action::Drop => None,
            Action::Reply(reply) => Some(reply),
            Action::Forward => match responder.forwards.clone().try_acquire_owned() {
                Ok(permit) => {
                    while forwards.try_join_next().is_some() {}
                    let query = msg.to_vec();
                    let socket = socket.clone();
                    let responder = responder.clone();
                    forwards.spawn(async move {
                        let _permit = permit;
                        let reply = match responder.forward_udp(&query).await {
                            Some(answer) => Some(answer),
                            None => responder.servfail(&query),
                        };
                        if let Some(reply) = reply {
                            if let Err(e) = socket.send_to(&reply, peer).await {
                                debug!(%peer, error = %e, "cannot send a dns answer");
                            }
                        }
                    });
                    None
                }
                Err(_) => {
                    debug!(%peer, "too many dns forwards in flight");
                    responder.servfail(msg)
                }
            },
        };
        if let Some(reply) = reply {
            if let Err(e) = socket.send_to(&reply, peer).await {
                debug!(%peer, error = %e, "cannot send a dns reply");
            }
        }
    }
}

/// The TCP side: one task per connection, at most `max_tcp_connections`;
/// beyond that new connections are closed at once.
async fn serve_tcp(listener: TcpListener, responder: Arc<Responder>) {
    let mut connections = JoinSet::new();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(got) => got,
            Err(e) => {
                debug!(error = %e, "dns tcp accept failed");
                tokio::time::sleep(ERROR_PAUSE).await;
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        if connections.len() >= responder.limits.max_tcp_connections {
            debug!(%peer, "too many dns tcp connections, closing the new one");
            continue;
        }
        let responder = responder.clone();
        connections.spawn(async move { responder.serve_connection(stream, peer).await });
    }
}

/// The nameservers of a resolv.conf text, as port-53 socket addresses
/// (IPv4 and IPv6, with `%scope` for link-local ones); comments and other
/// lines are ignored; at most 3, as libc uses.
pub fn upstreams_from_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            if words.next()? != "nameserver" {
                return None;
            }
            nameserver(words.next()?)
        })
        .take(MAX_NAMESERVERS)
        .collect()
}

fn nameserver(word: &str) -> Option<SocketAddr> {
    if let Ok(ip) = word.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, DNS_PORT));
    }
    let (ip, scope) = word.split_once('%')?;
    let ip: Ipv6Addr = ip.parse().ok()?;
    let scope_id = match scope.parse::<u32>() {
        Ok(index) => index,
        Err(_) => interface_index(scope)?,
    };
    Some(SocketAddr::V6(SocketAddrV6::new(ip, DNS_PORT, 0, scope_id)))
}

fn interface_index(name: &str) -> Option<u32> {
    let name = CString::new(name).ok()?;
    // SAFETY: `name` is a valid NUL-terminated string that outlives the
    // call; if_nametoindex only reads it and returns 0 when unknown.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

#[cfg(test)]
mod tests {
    use super::*;
    use simple_dns::OPCODE;
    use tokio::sync::mpsc;

    const LOCALHOST: Ipv4Addr = Ipv4Addr::LOCALHOST;
    const WEB: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 2);
    const FAR: Ipv4Addr = Ipv4Addr::new(93, 184, 216, 34);
    const WAIT: Duration = Duration::from_secs(3);
    const QUIET: Duration = Duration::from_millis(300);

    fn names() -> Names {
        let names = Names::default();
        names.set("web", WEB);
        names
    }

    fn config(upstreams: Vec<SocketAddr>, forward: bool) -> DnsConfig {
        DnsConfig {
            listen: LOCALHOST,
            port: 0,
            names: names(),
            upstreams,
            forward,
        }
    }

    async fn server(upstreams: Vec<SocketAddr>, forward: bool) -> DnsServer {
        DnsServer::start(config(upstreams, forward)).await.unwrap()
    }

    fn query_class(id: u16, name: &str, qtype: TYPE, class: CLASS) -> Vec<u8> {
        let mut packet = Packet::new_query(id);
        packet.set_flags(PacketFlag::RECURSION_DESIRED);
        packet.questions.push(Question::new(
            Name::new_unchecked(name),
            QTYPE::TYPE(qtype),
            QCLASS::CLASS(class),
            false,
        ));
        packet.build_bytes_vec().unwrap()
    }

    fn query(id: u16, name: &str, qtype: TYPE) -> Vec<u8> {
        query_class(id, name, qtype, CLASS::IN)
    }

    /// Sends `msg` from a fresh socket; the reply, if one comes within `wait`.
    async fn ask_udp_within(server: SocketAddr, msg: &[u8], wait: Duration) -> Option<Vec<u8>> {
        let socket = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
        socket.send_to(msg, server).await.unwrap();
        let mut buf = vec![0u8; 65535];
        let (len, from) = timeout(wait, socket.recv_from(&mut buf))
            .await
            .ok()?
            .unwrap();
        assert_eq!(from, server);
        Some(buf[..len].to_vec())
    }

    async fn ask_udp(server: SocketAddr, msg: &[u8]) -> Vec<u8> {
        ask_udp_within(server, msg, WAIT).await.expect("no reply")
    }

    async fn ask_tcp(stream: &mut TcpStream, msg: &[u8]) -> Option<Vec<u8>> {
        stream.write_all(&frame(msg).unwrap()).await.ok()?;
        read_frame(stream).await
    }

    async fn read_frame(stream: &mut TcpStream) -> Option<Vec<u8>> {
        let mut len = [0u8; 2];
        timeout(WAIT, stream.read_exact(&mut len))
            .await
            .ok()?
            .ok()?;
        let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
        timeout(WAIT, stream.read_exact(&mut msg))
            .await
            .ok()?
            .ok()?;
        Some(msg)
    }

    /// Whether the server closed `stream` (EOF or reset) within `WAIT`.
    async fn closed(stream: &mut TcpStream) -> bool {
        let mut buf = [0u8; 64];
        matches!(
            timeout(WAIT, stream.read(&mut buf)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }

    fn the_address(reply: &[u8]) -> Ipv4Addr {
        let packet = Packet::parse(reply).unwrap();
        assert_eq!(packet.answers.len(), 1, "{packet:?}");
        match &packet.answers[0].rdata {
            RData::A(a) => Ipv4Addr::from(a.address),
            other => panic!("not an A record: {other:?}"),
        }
    }

    /// A fake upstream resolver on UDP and TCP (same port): answers every
    /// A question with `FAR`, TTL 300, and reports what it got and sent.
    struct Upstream {
        addr: SocketAddr,
        seen: mpsc::UnboundedReceiver<(Vec<u8>, Vec<u8>)>,
        _tasks: JoinSet<()>,
    }

    /// What the fake upstream does with a query over UDP.
    #[derive(Clone, Copy, PartialEq)]
    enum Behaviour {
        Answer,
        Silent,
        /// A forged answer first (wrong ID, then from another socket), then the real one.
        ForgeFirst,
    }

    fn upstream_answer(query: &[u8]) -> Vec<u8> {
        let query = Packet::parse(query).unwrap();
        let mut reply = Packet::new_reply(query.id());
        reply.set_flags(PacketFlag::RECURSION_AVAILABLE | PacketFlag::RECURSION_DESIRED);
        let question = query.questions[0].clone();
        reply.answers.push(ResourceRecord::new(
            question.qname.clone(),
            CLASS::IN,
            300,
            RData::A(A::from(FAR)),
        ));
        reply.questions.push(question);
        // Uncompressed, so that a re-encoding relay would show.
        reply.build_bytes_vec().unwrap()
    }

    impl Upstream {
        /// The next (query, answer) it handled; fails the test after `WAIT`.
        async fn next(&mut self) -> (Vec<u8>, Vec<u8>) {
            timeout(WAIT, self.seen.recv())
                .await
                .expect("the upstream got nothing")
                .expect("the upstream stopped")
        }

        async fn start(behaviour: Behaviour) -> Upstream {
            let (udp, tcp) = bind_pair(LOCALHOST, 0).await.unwrap();
            let addr = udp.local_addr().unwrap();
            let (tx, seen) = mpsc::unbounded_channel();
            let mut tasks = JoinSet::new();
            let tx_udp = tx.clone();
            tasks.spawn(async move {
                let mut buf = vec![0u8; 65535];
                loop {
                    let (len, peer) = udp.recv_from(&mut buf).await.unwrap();
                    let query = buf[..len].to_vec();
                    let answer = upstream_answer(&query);
                    if behaviour == Behaviour::ForgeFirst {
                        let mut wrong_id = answer.clone();
                        wrong_id[0] ^= 0xff;
                        udp.send_to(&wrong_id, peer).await.unwrap();
                        let elsewhere = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
                        let mut forged = answer.clone();
                        let last = forged.len() - 1;
                        forged[last] ^= 0xff;
                        elsewhere.send_to(&forged, peer).await.unwrap();
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    if behaviour != Behaviour::Silent {
                        udp.send_to(&answer, peer).await.unwrap();
                    }
                    let _ = tx_udp.send((query, answer));
                }
            });
            tasks.spawn(async move {
                loop {
                    let (mut stream, _) = tcp.accept().await.unwrap();
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        let query = read_frame(&mut stream).await.unwrap();
                        let answer = upstream_answer(&query);
                        stream.write_all(&frame(&answer).unwrap()).await.unwrap();
                        let _ = tx.send((query, answer));
                    });
                }
            });
            Upstream {
                addr,
                seen,
                _tasks: tasks,
            }
        }
    }

    #[test]
    fn names_are_case_insensitive_and_exact() {
        let names = Names::default();
        names.set("Web.", WEB);
        assert_eq!(names.lookup("web"), Some(WEB));
        assert_eq!(names.lookup("WEB."), Some(WEB));
        assert_eq!(names.lookup("web.example.com"), None);
        assert_eq!(names.lookup("we"), None);
        names.remove("WEB");
        assert_eq!(names.lookup("web"), None);
    }

    #[tokio::test]
    async fn known_name_gets_its_a_record() {
        let dns = server(vec![], true).await;
        let reply = ask_udp(dns.local_addr(), &query(7, "web", TYPE::A)).await;
        let packet = Packet::parse(&reply).unwrap();
        assert_eq!(packet.id(), 7);
        assert!(packet.has_flags(PacketFlag::RESPONSE));
        assert!(packet.has_flags(PacketFlag::AUTHORITATIVE_ANSWER));
        assert!(packet.has_flags(PacketFlag::RECURSION_DESIRED));
        assert_eq!(packet.rcode(), RCODE::NoError);
        assert_eq!(packet.questions.len(), 1);
        assert_eq!(packet.answers[0].ttl, 0);
        assert_eq!(packet.answers[0].class, CLASS::IN);
        assert_eq!(the_address(&reply), WEB);
    }

    #[tokio::test]
    async fn known_name_matches_any_case_and_a_trailing_dot() {
        let dns = server(vec![], false).await;
        for name in ["WeB", "web.", "WEB."] {
            let reply = ask_udp(dns.local_addr(), &query(1, name, TYPE::A)).await;
            assert_eq!(the_address(&reply), WEB, "{name}");
            // The question comes back as it was asked.
            let packet = Packet::parse(&reply).unwrap();
            let asked = name.trim_end_matches('.');
            assert_eq!(packet.questions[0].qname.to_string(), asked);
        }
    }

    #[tokio::test]
    async fn search_suffix_and_prefix_do_not_match() {
        let dns = server(vec![], false).await;
        for name in ["web.example.com", "www.web", "we"] {
            let reply = ask_udp(dns.local_addr(), &query(1, name, TYPE::A)).await;
            let packet = Packet::parse(&reply).unwrap();
            assert_eq!(packet.rcode(), RCODE::Refused, "{name}");
            assert!(packet.answers.is_empty());
        }
    }

    #[tokio::test]
    async fn label_with_a_dot_does_not_fake_a_name() {
        let names = Names::default();
        names.set("a.b", WEB);
        let dns = DnsServer::start(DnsConfig {
            names,
            ..config(vec![], false)
        })
        .await
        .unwrap();
        let mut packet = Packet::new_query(3);
        let label = Label::new_unchecked(&b"a.b"[..]);
        packet.questions.push(Question::new(
            Name::new_with_labels(&[label]),
            QTYPE::TYPE(TYPE::A),
            QCLASS::CLASS(CLASS::IN),
            false,
        ));
        let reply = ask_udp(dns.local_addr(), &packet.build_bytes_vec().unwrap()).await;
        assert_eq!(Packet::parse(&reply).unwrap().rcode(), RCODE::Refused);
        let reply = ask_udp(dns.local_addr(), &query(4, "a.b", TYPE::A)).await;
        assert_eq!(the_address(&reply), WEB);
    }

    #[tokio::test]
    async fn other_types_for_a_known_name_are_empty_and_never_forwarded() {
        let mut upstream = Upstream::start(Behaviour::Answer).await;
        let dns = server(vec![upstream.addr], true).await;
        for qtype in [TYPE::AAAA, TYPE::MX, TYPE::TXT, TYPE::Unknown(4242)] {
            let reply = ask_udp(dns.local_addr(), &query(9, "web", qtype)).await;
            // Raw header fields: simple-dns cannot parse a type it does not know.
            assert_eq!(reply[3] & 0x0f, RCODE::NoError as u8, "{qtype:?}");
            assert_eq!(reply[2] & 0x04, 0x04, "AA, {qtype:?}");
            assert_eq!(
                &reply[4..8],
                &[0, 1, 0, 0],
                "1 question, 0 answers, {qtype:?}"
            );
        }
        // Another class: no data either, and still not upstream's business.
        let reply = ask_udp(dns.local_addr(), &query_class(9, "web", TYPE::A, CLASS::CH)).await;
        let packet = Packet::parse(&reply).unwrap();
        assert_eq!(packet.rcode(), RCODE::NoError);
        assert!(packet.answers.is_empty());
        assert!(upstream.seen.try_recv().is_err());
    }

    #[tokio::test]
    async fn unknown_name_is_forwarded_and_relayed_unchanged() {
        let mut upstream = Upstream::start(Behaviour::Answer).await;
        let dns = server(vec![upstream.addr], true).await;
        let asked = query(0x1234, "example.com", TYPE::A);
        let reply = ask_udp(dns.local_addr(), &asked).await;
        let (seen, sent) = upstream.next().await;
        assert_eq!(seen, asked);
        assert_eq!(reply, sent);
        assert_eq!(the_address(&reply), FAR);
    }

    #[tokio::test]
    async fn next_upstream_is_tried_after_a_timeout() {
        let mut silent = Upstream::start(Behaviour::Silent).await;
        let mut good = Upstream::start(Behaviour::Answer).await;
        let limits = Limits {
            upstream_timeout: Duration::from_millis(200),
            ..Limits::default()
        };
        let dns = DnsServer::start_with(config(vec![silent.addr, good.addr], true), limits)
            .await
            .unwrap();
        let reply = ask_udp(dns.local_addr(), &query(5, "example.com", TYPE::A)).await;
        silent.next().await;
        let (_, sent) = good.next().await;
        assert_eq!(reply, sent);
    }

    #[tokio::test]
    async fn silent_upstreams_give_servfail() {
        let silent = Upstream::start(Behaviour::Silent).await;
        let limits = Limits {
            upstream_timeout: Duration::from_millis(100),
            ..Limits::default()
        };
        let dns = DnsServer::start_with(config(vec![silent.addr], true), limits)
            .await
            .unwrap();
        let reply = ask_udp(dns.local_addr(), &query(5, "example.com", TYPE::A)).await;
        let packet = Packet::parse(&reply).unwrap();
        assert_eq!(packet.id(), 5);
        assert_eq!(packet.rcode(), RCODE::ServerFailure);
    }

    #[tokio::test]
    async fn forged_upstream_answers_are_ignored() {
        let mut upstream = Upstream::start(Behaviour::ForgeFirst).await;
        let dns = server(vec![upstream.addr], true).await;
        let reply = ask_udp(dns.local_addr(), &query(77, "example.com", TYPE::A)).await;
        let (_, sent) = upstream.next().await;
        assert_eq!(reply, sent);
    }

    #[tokio::test]
    async fn forwards_beyond_the_limit_get_servfail() {
        let silent = Upstream::start(Behaviour::Silent).await;
        let limits = Limits {
            max_forwards: 1,
            ..Limits::default()
        };
        let dns = DnsServer::start_with(config(vec![silent.addr], true), limits)
            .await
            .unwrap();
        // The first one stays in flight (the upstream never answers) ...
        let first = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
        let pending = query(1, "one.example", TYPE::A);
        first.send_to(&pending, dns.local_addr()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        // ... so the second is refused a slot at once.
        let reply = ask_udp_within(dns.local_addr(), &query(2, "two.example", TYPE::A), QUIET)
            .await
            .expect("no quick servfail");
        let packet = Packet::parse(&reply).unwrap();
        assert_eq!(packet.id(), 2);
        assert_eq!(packet.rcode(), RCODE::ServerFailure);
        // Known names do not need a slot.
        let reply = ask_udp(dns.local_addr(), &query(3, "web", TYPE::A)).await;
        assert_eq!(the_address(&reply), WEB);
    }

    #[tokio::test]
    async fn internal_network_refuses_and_upstream_sees_nothing() {
        let mut upstream = Upstream::start(Behaviour::Answer).await;
        let dns = server(vec![upstream.addr], false).await;
        let reply = ask_udp(dns.local_addr(), &query(8, "example.com", TYPE::A)).await;
        let packet = Packet::parse(&reply).unwrap();
        assert_eq!(packet.id(), 8);
        assert_eq!(packet.rcode(), RCODE::Refused);
        assert!(!packet.has_flags(PacketFlag::RECURSION_AVAILABLE));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(upstream.seen.try_recv().is_err());
        // Its own names still resolve.
        let reply = ask_udp(dns.local_addr(), &query(9, "web", TYPE::A)).await;
        assert_eq!(the_address(&reply), WEB);
    }

    #[tokio::test]
    async fn no_upstreams_gives_servfail() {
        let dns = server(vec![], true).await;
        let reply = ask_udp(dns.local_addr(), &query(8, "example.com", TYPE::A)).await;
        let packet = Packet::parse(&reply).unwrap();
        assert_eq!(packet.rcode(), RCODE::ServerFailure);
        assert_eq!(packet.questions[0].qname.to_string(), "example.com");
    }

    #[tokio::test]
    async fn hostile_packets_get_formerr_or_nothing() {
        let mut upstream = Upstream::start(Behaviour::Answer).await;
        let dns = server(vec![upstream.addr], true).await;
        let addr = dns.local_addr();

        // Too short for a header: nothing.
        assert_eq!(ask_udp_within(addr, &[0x12, 0x34, 0x01], QUIET).await, None);
        assert_eq!(ask_udp_within(addr, &[], QUIET).await, None);

        // A header, then garbage: FORMERR with the same ID.
        let mut garbage = vec![0xab, 0xcd, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0];
        garbage.extend_from_slice(&[0xc0, 0x0c, 0xff, 0xff, 0x3f]);
        let reply = ask_udp(addr, &garbage).await;
        let packet = Packet::parse(&reply).unwrap();
        assert_eq!(packet.id(), 0xabcd);
        assert_eq!(packet.rcode(), RCODE::FormatError);
        assert!(packet.questions.is_empty());

        // A question cut short.
        let good = query(0x4242, "example.com", TYPE::A);
        let reply = ask_udp(addr, &good[..good.len() - 3]).await;
        assert_eq!(Packet::parse(&reply).unwrap().rcode(), RCODE::FormatError);

        // Random bytes (with QR clear so they are read as a query).
        let mut random: Vec<u8> = (0u32..300).map(|i| (i * 37 + 11) as u8).collect();
        random[2] &= 0x07; // QR = 0, OPCODE = QUERY
        let reply = ask_udp_within(addr, &random, QUIET).await;
        if let Some(reply) = reply {
            assert_eq!(&reply[..2], &random[..2]);
            assert_eq!(reply[3] & 0x0f, RCODE::FormatError as u8);
        }

        // A response: nothing.
        let mut response = query(5, "example.com", TYPE::A);
        response[2] |= 0x80;
        assert_eq!(ask_udp_within(addr, &response, QUIET).await, None);

        // Two questions: FORMERR.
        let mut two = Packet::new_query(6);
        for name in ["web", "example.com"] {
            two.questions.push(Question::new(
                Name::new_unchecked(name),
                QTYPE::TYPE(TYPE::A),
                QCLASS::CLASS(CLASS::IN),
                false,
            ));
        }
        let reply = ask_udp(addr, &two.build_bytes_vec().unwrap()).await;
        let packet = Packet::parse(&reply).unwrap();
        assert_eq!(packet.rcode(), RCODE::FormatError);
        assert!(packet.answers.is_empty());

        // No question at all: FORMERR.
        let none = Packet::new_query(10).build_bytes_vec().unwrap();
        let reply = ask_udp(addr, &none).await;
        assert_eq!(Packet::parse(&reply).unwrap().rcode(), RCODE::FormatError);

        // None of it went upstream, and the server still answers.
        assert!(upstream.seen.try_recv().is_err());
        let reply = ask_udp(addr, &query(11, "web", TYPE::A)).await;
        assert_eq!(the_address(&reply), WEB);
    }

    #[tokio::test]
    async fn other_opcodes_get_notimp() {
        let dns = server(vec![], true).await;
        let mut msg = query(12, "web", TYPE::A);
        msg[2] |= (OPCODE::Update as u8) << 3;
        let reply = ask_udp(dns.local_addr(), &msg).await;
        let packet = Packet::parse(&reply).unwrap();
        assert_eq!(packet.rcode(), RCODE::NotImplemented);
        assert_eq!(packet.opcode(), OPCODE::Update);
        assert!(packet.answers.is_empty());
    }

    #[test]
    fn udp_answers_over_the_limit_are_truncated() {
        let responder = Responder {
            names: names(),
            upstreams: vec![],
            forward: false,
            recursion: false,
            forwards: Arc::new(Semaphore::new(1)),
            limits: Limits::default(),
        };
        let msg = query(13, "web", TYPE::A);
        let Action::Reply(full) = responder.respond(&msg, MAX_UDP_ANSWER) else {
            panic!("no reply");
        };
        assert_eq!(the_address(&full), WEB);
        let Action::Reply(cut) = responder.respond(&msg, full.len() - 1) else {
            panic!("no reply");
        };
        let packet = Packet::parse(&cut).unwrap();
        assert!(packet.has_flags(PacketFlag::TRUNCATION));
        assert!(packet.answers.is_empty());
        assert_eq!(packet.questions.len(), 1);
        // The longest name possible still fits 512 bytes, by compression.
        let label = "a".repeat(63);
        let long = [label.as_str(); 3].join(".") + "." + &"b".repeat(61);
        responder.names.set(&long, WEB);
        let Action::Reply(reply) = responder.respond(&query(14, &long, TYPE::A), MAX_UDP_ANSWER)
        else {
            panic!("no reply");
        };
        assert!(reply.len() <= MAX_UDP_ANSWER);
        assert_eq!(the_address(&reply), WEB);
    }

    #[tokio::test]
    async fn tcp_known_name_and_several_queries_per_connection() {
        let dns = server(vec![], false).await;
        let mut stream = TcpStream::connect(dns.local_addr()).await.unwrap();
        for id in [1, 2] {
            let reply = ask_tcp(&mut stream, &query(id, "WEB", TYPE::A))
                .await
                .unwrap();
            assert_eq!(Packet::parse(&reply).unwrap().id(), id);
            assert_eq!(the_address(&reply), WEB);
        }
        let reply = ask_tcp(&mut stream, &query(3, "example.com", TYPE::A))
            .await
            .unwrap();
        assert_eq!(Packet::parse(&reply).unwrap().rcode(), RCODE::Refused);
    }

    #[tokio::test]
    async fn tcp_unknown_name_is_forwarded_over_tcp() {
        let mut upstream = Upstream::start(Behaviour::Silent).await;
        let dns = server(vec![upstream.addr], true).await;
        let mut stream = TcpStream::connect(dns.local_addr()).await.unwrap();
        let asked = query(0x5151, "example.com", TYPE::A);
        // The UDP side of this upstream never answers: only TCP can.
        let reply = ask_tcp(&mut stream, &asked).await.unwrap();
        let (seen, sent) = upstream.next().await;
        assert_eq!(seen, asked);
        assert_eq!(reply, sent);
    }

    #[tokio::test]
    async fn tcp_garbage_closes_only_that_connection() {
        let dns = server(vec![], false).await;
        let mut good = TcpStream::connect(dns.local_addr()).await.unwrap();
        assert!(ask_tcp(&mut good, &query(1, "web", TYPE::A))
            .await
            .is_some());

        // Too short for a header.
        let mut bad = TcpStream::connect(dns.local_addr()).await.unwrap();
        bad.write_all(&[0, 5, 1, 2, 3, 4, 5]).await.unwrap();
        assert!(closed(&mut bad).await);
        // Length 0.
        let mut zero = TcpStream::connect(dns.local_addr()).await.unwrap();
        zero.write_all(&[0, 0]).await.unwrap();
        assert!(closed(&mut zero).await);
        // A response.
        let mut response = TcpStream::connect(dns.local_addr()).await.unwrap();
        let mut msg = query(2, "web", TYPE::A);
        msg[2] |= 0x80;
        response.write_all(&frame(&msg).unwrap()).await.unwrap();
        assert!(closed(&mut response).await);
        // A header then garbage: FORMERR, and the connection stays usable.
        let mut formerr = TcpStream::connect(dns.local_addr()).await.unwrap();
        let garbage = [0, 9, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xff, 0xff];
        let reply = ask_tcp(&mut formerr, &garbage).await.unwrap();
        assert_eq!(Packet::parse(&reply).unwrap().rcode(), RCODE::FormatError);
        assert!(ask_tcp(&mut formerr, &query(3, "web", TYPE::A))
            .await
            .is_some());

        let reply = ask_tcp(&mut good, &query(4, "web", TYPE::A)).await.unwrap();
        assert_eq!(the_address(&reply), WEB);
    }

    #[tokio::test]
    async fn tcp_idle_connections_are_closed() {
        let limits = Limits {
            tcp_idle: Duration::from_millis(200),
            ..Limits::default()
        };
        let dns = DnsServer::start_with(config(vec![], false), limits)
            .await
            .unwrap();
        let mut silent = TcpStream::connect(dns.local_addr()).await.unwrap();
        assert!(closed(&mut silent).await);
        // Half a message counts as idle too.
        let mut slow = TcpStream::connect(dns.local_addr()).await.unwrap();
        slow.write_all(&[0, 40, 1, 2]).await.unwrap();
        assert!(closed(&mut slow).await);
    }

    #[tokio::test]
    async fn tcp_connections_beyond_the_limit_are_closed() {
        let limits = Limits {
            max_tcp_connections: 2,
            ..Limits::default()
        };
        let dns = DnsServer::start_with(config(vec![], false), limits)
            .await
            .unwrap();
        let mut first = TcpStream::connect(dns.local_addr()).await.unwrap();
        let mut second = TcpStream::connect(dns.local_addr()).await.unwrap();
        assert!(ask_tcp(&mut first, &query(1, "web", TYPE::A))
            .await
            .is_some());
        assert!(ask_tcp(&mut second, &query(2, "web", TYPE::A))
            .await
            .is_some());
        let mut third = TcpStream::connect(dns.local_addr()).await.unwrap();
        assert!(closed(&mut third).await);
        // Once one goes, there is room again.
        drop(first);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut fourth = TcpStream::connect(dns.local_addr()).await.unwrap();
        assert!(ask_tcp(&mut fourth, &query(3, "web", TYPE::A))
            .await
            .is_some());
    }

    #[tokio::test]
    async fn names_changes_are_seen_at_once() {
        let cfg = config(vec![], false);
        let names = cfg.names.clone();
        let dns = DnsServer::start(cfg).await.unwrap();
        names.set("db", Ipv4Addr::new(10, 88, 0, 3));
        let reply = ask_udp(dns.local_addr(), &query(1, "db", TYPE::A)).await;
        assert_eq!(the_address(&reply), Ipv4Addr::new(10, 88, 0, 3));
        names.remove("db");
        let reply = ask_udp(dns.local_addr(), &query(2, "db", TYPE::A)).await;
        assert_eq!(Packet::parse(&reply).unwrap().rcode(), RCODE::Refused);
    }

    #[tokio::test]
    async fn dropping_the_server_stops_it() {
        let dns = server(vec![], false).await;
        let addr = dns.local_addr();
        assert!(ask_udp_within(addr, &query(1, "web", TYPE::A), WAIT)
            .await
            .is_some());
        drop(dns);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            ask_udp_within(addr, &query(2, "web", TYPE::A), QUIET).await,
            None
        );
        assert!(TcpStream::connect(addr).await.is_err());
    }

    #[tokio::test]
    async fn bind_failure_names_the_address() {
        let dns = server(vec![], false).await;
        let taken = dns.local_addr();
        let err = DnsServer::start(DnsConfig {
            port: taken.port(),
            ..config(vec![], false)
        })
        .await
        .unwrap_err();
        assert!(matches!(err, DnsError::BindUdp { addr, .. } if addr == taken));
        assert!(err.to_string().contains(&taken.to_string()), "{err}");
    }

    #[test]
    fn resolv_conf_nameservers() {
        let text = "\
# Generated by NetworkManager
search example.com
nameserver 192.168.1.1
;nameserver 10.0.0.1
# nameserver 10.0.0.2
options edns0 trust-ad
  nameserver\t2001:4860:4860::8888   # trailing comment
nameserver fe80::1%1
nameserver not-an-address
nameserver 8.8.8.8
nameserver 9.9.9.9
";
        assert_eq!(
            upstreams_from_resolv_conf(text),
            vec![
                "192.168.1.1:53".parse::<SocketAddr>().unwrap(),
                "[2001:4860:4860::8888]:53".parse().unwrap(),
                SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 53, 0, 1)),
            ]
        );
        assert_eq!(
            upstreams_from_resolv_conf("nameserver 127.0.0.53\noptions edns0\n"),
            vec!["127.0.0.53:53".parse::<SocketAddr>().unwrap()]
        );
        assert!(upstreams_from_resolv_conf("").is_empty());
        assert!(
            upstreams_from_resolv_conf("nameserver\nnameserver fe80::1%nosuchif0\n").is_empty()
        );
    }
}
