//! One interface's MMDS network stack: what virtio-net hands it (frames
//! the guest sent to the MMDS address) goes in, frames for the guest come
//! out.
//!
//! - ARP and Ethernet are handled here ([`super::frame`]);
//! - IPv4 and TCP are smoltcp's, on a [`Medium::Ip`] device whose queues
//!   are two in-memory lists; the interface owns the MMDS address with a
//!   /0 prefix, so it answers guests on any subnet;
//! - each TCP connection is a smoltcp socket on port 80 and the request
//!   bytes it has read; requests are answered one after another
//!   ([`super::http`], [`super::Mmds::respond`]).
//!
//! Everything a guest can make it hold is bounded: [`MAX_CONNECTIONS`]
//! sockets with fixed buffers, one request of at most
//! [`super::http::MAX_REQUEST`] bytes and one answer per connection,
//! [`MAX_QUEUED`] frames waiting for guest buffers. A connection attempt
//! when all are taken replaces a half-open connection, else the one idle
//! the longest (as Firecracker replaces one); a connection idle for
//! [`IDLE_TIMEOUT`], or whose peer stops acknowledging for
//! [`TCP_TIMEOUT`], is reset. Malformed frames are counted and dropped.
//! smoltcp's timers (retransmission, delayed work) and the idle timeout
//! run on a timer fd the device's event handler watches.

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::time::{Duration, Instant};

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::wire::{
    HardwareAddress, IpAddress, IpCidr, IpEndpoint, IpProtocol, Ipv4Packet, TcpPacket,
};
use vmm_sys_util::timerfd::TimerFd;

use super::frame::{self, ArpRequest, ETHERTYPE_ARP, ETHERTYPE_IPV4, ETH_HDR};
use super::http::{self, Parsed, Response, MAX_REQUEST};
use super::SharedMmds;
use crate::vmm::metrics::METRICS;

pub const MMDS_PORT: u16 = 80;
/// Connections open at once (Firecracker's number).
pub const MAX_CONNECTIONS: usize = 30;
/// Frames waiting for the guest's receive buffers.
pub const MAX_QUEUED: usize = 64;
/// A connection with no traffic this long is reset.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// A handshake not completed, or data not acknowledged, within this
/// long resets the connection (smoltcp's timeout).
pub const TCP_TIMEOUT: Duration = Duration::from_secs(10);
/// Each socket's receive buffer (the window it offers) and send buffer.
const SOCKET_RX: usize = 4096;
const SOCKET_TX: usize = 8192;
/// Rounds of smoltcp polling and serving per event; each moves data, so
/// this only bounds a pathological case.
const POLL_ROUNDS: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error("cannot create the MMDS timer: {0}")]
    Timer(std::io::Error),
    #[error("cannot draw a random seed for the MMDS stack")]
    Entropy,
}

/// smoltcp's device: packets in (at most one at a time, fed by
/// [`MmdsStack::detour`]) and packets out, waiting for the guest.
struct Queues {
    rx: Option<Vec<u8>>,
    tx: VecDeque<Vec<u8>>,
    mtu: usize,
}

struct RxTok(Vec<u8>);
struct TxTok<'a>(&'a mut VecDeque<Vec<u8>>);

impl phy::RxToken for RxTok {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for TxTok<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut p = vec![0u8; len];
        let r = f(&mut p);
        METRICS.mmds.tx_count.inc();
        // A reply to an incoming packet may come past the soft limit
        // transmit() keeps; a few, not without end.
        if self.0.len() < MAX_QUEUED * 2 {
            self.0.push_back(p);
        } else {
            METRICS.mmds.tx_errors.inc();
        }
        r
    }
}

impl Device for Queues {
    type RxToken<'a> = RxTok;
    type TxToken<'a> = TxTok<'a>;

    fn receive(&mut self, _: smoltcp::time::Instant) -> Option<(RxTok, TxTok<'_>)> {
        let p = self.rx.take()?;
        Some((RxTok(p), TxTok(&mut self.tx)))
    }

    fn transmit(&mut self, _: smoltcp::time::Instant) -> Option<TxTok<'_>> {
        (self.tx.len() < MAX_QUEUED).then_some(TxTok(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ip;
        c.max_transmission_unit = self.mtu;
        c
    }
}

/// One socket and its connection's HTTP state.
struct Conn {
    handle: SocketHandle,
    /// Request bytes read and not yet answered.
    req: Vec<u8>,
    /// The answer being sent, and how much of it smoltcp has taken.
    out: Vec<u8>,
    sent: usize,
    /// Close once `out` is sent.
    close_after: bool,
    /// Closed by us: what still arrives is dropped.
    closing: bool,
    /// Past LISTEN: a connection (counted in the metrics).
    live: bool,
    last_active: Instant,
}

impl Conn {
    fn new(handle: SocketHandle, now: Instant) -> Self {
        Conn {
            handle,
            req: Vec::new(),
            out: Vec::new(),
            sent: 0,
            close_after: false,
            closing: false,
            live: false,
            last_active: now,
        }
    }
}

pub struct MmdsStack {
    mmds: SharedMmds,
    ip: Ipv4Addr,
    /// Where replies go: the MAC the guest last sent from.
    guest_mac: [u8; 6],
    /// One ARP request to answer (a newer one replaces it).
    arp_reply: Option<ArpRequest>,
    iface: Interface,
    dev: Queues,
    sockets: SocketSet<'static>,
    conns: Vec<Conn>,
    epoch: Instant,
    timer: TimerFd,
    armed: Option<Instant>,
}

/// A non-blocking timer fd: reading it when it has not fired (or after a
/// re-arm cleared it) must not stall the event loop.
fn nonblocking_timer() -> Result<TimerFd, StackError> {
    // SAFETY: timerfd_create takes no pointers; the result is checked.
    let fd = unsafe {
        libc::timerfd_create(
            libc::CLOCK_MONOTONIC,
            libc::TFD_CLOEXEC | libc::TFD_NONBLOCK,
        )
    };
    if fd < 0 {
        return Err(StackError::Timer(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a timer fd just created and owned by nothing else.
    Ok(unsafe { TimerFd::from_raw_fd(fd) })
}

fn new_socket() -> tcp::Socket<'static> {
    let mut s = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; SOCKET_RX]),
        tcp::SocketBuffer::new(vec![0; SOCKET_TX]),
    );
    s.set_timeout(Some(TCP_TIMEOUT.into()));
    // Answers go out at once, with the ACK on them.
    s.set_ack_delay(None);
    s.set_nagle_enabled(false);
    s
}

impl MmdsStack {
    /// A stack answering at `ip` for frames of up to `mtu` bytes of IPv4.
    pub fn new(mmds: SharedMmds, ip: Ipv4Addr, mtu: usize) -> Result<Self, StackError> {
        use ring::rand::SecureRandom;
        let mut seed = [0u8; 8];
        ring::rand::SystemRandom::new()
            .fill(&mut seed)
            .map_err(|_| StackError::Entropy)?;
        let mut dev = Queues {
            rx: None,
            tx: VecDeque::new(),
            mtu,
        };
        let epoch = Instant::now();
        let mut config = Config::new(HardwareAddress::Ip);
        config.random_seed = u64::from_le_bytes(seed);
        let mut iface = Interface::new(config, &mut dev, smoltcp::time::Instant::ZERO);
        iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(IpAddress::Ipv4(ip), 0));
        });
        Ok(MmdsStack {
            mmds,
            ip,
            guest_mac: [0xff; 6],
            arp_reply: None,
            iface,
            dev,
            sockets: SocketSet::new(Vec::new()),
            conns: Vec::new(),
            epoch,
            timer: nonblocking_timer()?,
            armed: None,
        })
    }

    pub fn ipv4(&self) -> Ipv4Addr {
        self.ip
    }

    /// Whether the Ethernet `frame` is for MMDS (and so not for the TAP).
    pub fn is_mmds_frame(&self, frame: &[u8]) -> bool {
        frame::is_for(frame, self.ip)
    }

    /// Takes a frame [`Self::is_mmds_frame`] accepted, with the
    /// virtio-net header it came with.
    pub fn detour(&mut self, vnet_hdr: &[u8], frame: &mut [u8]) {
        METRICS.mmds.rx_accepted.inc();
        if frame.len() < ETH_HDR {
            METRICS.mmds.rx_bad_eth.inc();
            return;
        }
        match frame::ethertype(frame) {
            Some(ETHERTYPE_ARP) => match frame::arp_request(&frame[ETH_HDR..]) {
                Some(r) => {
                    self.guest_mac = r.sender_mac;
                    self.arp_reply = Some(r);
                }
                None => METRICS.mmds.rx_accepted_err.inc(),
            },
            Some(ETHERTYPE_IPV4) => self.take_ipv4(vnet_hdr, frame),
            _ => METRICS.mmds.rx_accepted_err.inc(),
        }
    }

    fn take_ipv4(&mut self, vnet_hdr: &[u8], frame: &mut [u8]) {
        let m = &METRICS.mmds;
        let total = frame
            .get(ETH_HDR + 2..ETH_HDR + 4)
            .map_or(0, |b| usize::from(u16::from_be_bytes([b[0], b[1]])));
        if frame::complete_checksum(vnet_hdr, frame, ETH_HDR + total).is_err() {
            m.rx_accepted_err.inc();
            return;
        }
        let ip = &frame[ETH_HDR..];
        let Ok(pkt) = Ipv4Packet::new_checked(ip) else {
            m.rx_accepted_err.inc();
            return;
        };
        if !pkt.verify_checksum() || pkt.more_frags() || pkt.frag_offset() != 0 {
            m.rx_accepted_err.inc();
            return;
        }
        if pkt.next_header() != IpProtocol::Tcp {
            m.rx_accepted_unusual.inc();
            return;
        }
        let (src, dst) = (pkt.src_addr(), pkt.dst_addr());
        let Ok(tcp) = TcpPacket::new_checked(pkt.payload()) else {
            m.rx_accepted_err.inc();
            return;
        };
        if !tcp.verify_checksum(&IpAddress::Ipv4(src), &IpAddress::Ipv4(dst)) {
            m.rx_accepted_err.inc();
            return;
        }
        m.rx_count.inc();
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&frame[6..12]);
        self.guest_mac = mac;
        let now = Instant::now();
        if tcp.syn() && !tcp.ack() && tcp.dst_port() == MMDS_PORT {
            self.make_room(IpEndpoint::new(IpAddress::Ipv4(src), tcp.src_port()), now);
        }
        self.dev.rx = Some(frame[ETH_HDR..ETH_HDR + total].to_vec());
        self.poll_at(now);
    }

    fn smol_now(&self, now: Instant) -> smoltcp::time::Instant {
        let us = now.saturating_duration_since(self.epoch).as_micros();
        smoltcp::time::Instant::from_micros(i64::try_from(us).unwrap_or(i64::MAX))
    }

    /// Before a SYN goes in: a socket listening for it, unless the SYN
    /// is a retransmission for a connection that has one.
    fn make_room(&mut self, from: IpEndpoint, now: Instant) {
        let info: Vec<(tcp::State, Option<IpEndpoint>)> = self
            .conns
            .iter()
            .map(|c| {
                let s = self.sockets.get::<tcp::Socket>(c.handle);
                (s.state(), s.remote_endpoint())
            })
            .collect();
        if info
            .iter()
            .any(|(st, peer)| *peer == Some(from) || *st == tcp::State::Listen)
        {
            return;
        }
        if self.conns.len() < MAX_CONNECTIONS {
            let mut s = new_socket();
            if s.listen(MMDS_PORT).is_ok() {
                let h = self.sockets.add(s);
                self.conns.push(Conn::new(h, now));
            }
            return;
        }
        // Full: reset a half-open connection, else the one idle longest.
        let Some(i) = (0..self.conns.len()).min_by_key(|&i| {
            (
                info[i].0 != tcp::State::SynReceived,
                self.conns[i].last_active,
            )
        }) else {
            return;
        };
        let h = self.conns[i].handle;
        self.sockets.get_mut::<tcp::Socket>(h).abort();
        // Its RST goes out before the socket forgets its peer.
        let ts = self.smol_now(now);
        self.iface.poll_egress(ts, &mut self.dev, &mut self.sockets);
        if self.conns[i].live {
            METRICS.mmds.connections_destroyed.inc();
        }
        self.conns[i] = Conn::new(h, now);
        let _ = self.sockets.get_mut::<tcp::Socket>(h).listen(MMDS_PORT);
    }

    /// Runs smoltcp and the connections until nothing moves.
    fn poll_at(&mut self, now: Instant) {
        for _ in 0..POLL_ROUNDS {
            let ts = self.smol_now(now);
            self.iface.poll(ts, &mut self.dev, &mut self.sockets);
            if !self.serve(now) {
                break;
            }
        }
        self.arm_timer(now);
    }

    /// Reads requests, writes answers, closes and forgets connections.
    /// Returns whether anything changed that smoltcp should act on.
    fn serve(&mut self, now: Instant) -> bool {
        let mut moved = false;
        let mut i = 0;
        while i < self.conns.len() {
            let c = &mut self.conns[i];
            let s = self.sockets.get_mut::<tcp::Socket>(c.handle);
            match s.state() {
                tcp::State::Listen => {
                    if c.live {
                        // A half-open connection reset by its peer.
                        METRICS.mmds.connections_destroyed.inc();
                        *c = Conn::new(c.handle, now);
                    }
                    i += 1;
                    continue;
                }
                tcp::State::Closed | tcp::State::TimeWait => {
                    if c.live {
                        METRICS.mmds.connections_destroyed.inc();
                    }
                    let h = c.handle;
                    self.sockets.remove(h);
                    self.conns.swap_remove(i);
                    continue;
                }
                _ => {}
            }
            if !c.live {
                c.live = true;
                c.last_active = now;
                METRICS.mmds.connections_created.inc();
            }
            if now.saturating_duration_since(c.last_active) >= IDLE_TIMEOUT {
                s.abort();
                moved = true;
                i += 1;
                continue;
            }
            moved |= Self::serve_one(c, s, &self.mmds, now);
            i += 1;
        }
        moved
    }

    fn serve_one(
        c: &mut Conn,
        s: &mut tcp::Socket<'static>,
        mmds: &SharedMmds,
        now: Instant,
    ) -> bool {
        let mut moved = false;
        let mut chunk = [0u8; 512];
        while s.can_recv() {
            let room = if c.closing {
                chunk.len()
            } else {
                chunk.len().min(MAX_REQUEST - c.req.len())
            };
            if room == 0 {
                break;
            }
            let n = s.recv_slice(&mut chunk[..room]).unwrap_or(0);
            if n == 0 {
                break;
            }
            if !c.closing {
                c.req.extend_from_slice(&chunk[..n]);
            }
            c.last_active = now;
            moved = true;
        }
        if c.out.is_empty() && !c.closing && !c.req.is_empty() {
            match http::parse(&c.req) {
                Parsed::Partial => {}
                Parsed::Complete(req, used) => {
                    let answer = mmds.lock().unwrap_or_else(|e| e.into_inner()).respond(&req);
                    c.close_after = !req.keep_alive();
                    c.out = answer.to_bytes(req.minor, c.close_after);
                    c.req.drain(..used);
                }
                Parsed::Bad(e) => {
                    c.close_after = true;
                    c.out = Response::error(e.status(), e.to_string()).to_bytes(1, true);
                    c.req.clear();
                }
            }
        }
        if c.sent < c.out.len() && s.can_send() {
            let n = s.send_slice(&c.out[c.sent..]).unwrap_or(0);
            if n > 0 {
                c.sent += n;
                c.last_active = now;
                moved = true;
            }
        }
        if !c.out.is_empty() && c.sent == c.out.len() {
            c.out.clear();
            c.sent = 0;
            // The next pipelined request, if any, on the next round.
            moved = true;
            if c.close_after {
                s.close();
                c.closing = true;
            }
        }
        // The peer is done sending and everything it asked is answered.
        if s.state() == tcp::State::CloseWait && c.out.is_empty() && !c.closing {
            s.close();
            c.closing = true;
            moved = true;
        }
        moved
    }

    /// Whether frames wait for the guest.
    pub fn has_output(&self) -> bool {
        self.arp_reply.is_some() || !self.dev.tx.is_empty()
    }

    /// Writes the next frame for the guest (Ethernet header included)
    /// into `buf`; returns its length, or None when there is none.
    pub fn next_frame(&mut self, buf: &mut [u8]) -> Option<usize> {
        let m = &METRICS.mmds;
        if let Some(r) = self.arp_reply.take() {
            m.tx_count.inc();
            match frame::write_arp_reply(buf, self.ip, r) {
                Some(n) => {
                    m.tx_frames.inc();
                    m.tx_bytes.add(n as u64);
                    return Some(n);
                }
                None => m.tx_errors.inc(),
            }
        }
        if self.dev.tx.is_empty() && !self.conns.is_empty() {
            // Room again: what smoltcp held back for want of it.
            self.poll_at(Instant::now());
        }
        while let Some(p) = self.dev.tx.pop_front() {
            let n = ETH_HDR + p.len();
            let Some(out) = buf.get_mut(..n) else {
                m.tx_errors.inc();
                continue;
            };
            frame::write_eth(out, self.guest_mac, frame::MMDS_MAC, ETHERTYPE_IPV4);
            out[ETH_HDR..].copy_from_slice(&p);
            m.tx_frames.inc();
            m.tx_bytes.add(n as u64);
            return Some(n);
        }
        None
    }

    /// The timer the event loop watches for [`Self::on_timer`].
    pub fn timer_fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }

    /// The timer fired: retransmissions, timeouts, idle connections.
    pub fn on_timer(&mut self) {
        // Non-blocking: nothing to read if a re-arm cleared it.
        let _ = self.timer.wait();
        self.armed = None;
        self.poll_at(Instant::now());
    }

    /// Arms the timer for smoltcp's next deadline or the next idle
    /// timeout, whichever is first.
    fn arm_timer(&mut self, now: Instant) {
        let smol = self
            .iface
            .poll_delay(self.smol_now(now), &self.sockets)
            .map(|d| now + Duration::from_micros(d.total_micros()));
        let idle = self
            .conns
            .iter()
            .filter(|c| c.live)
            .map(|c| c.last_active + IDLE_TIMEOUT)
            .min();
        let next = match (smol, idle) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if next == self.armed {
            return;
        }
        let r = match next {
            Some(at) => {
                let wait = at
                    .saturating_duration_since(now)
                    .max(Duration::from_millis(1));
                self.timer.reset(wait, None)
            }
            None => self.timer.clear(),
        };
        if let Err(e) = r {
            tracing::warn!("mmds: cannot arm the timer: {e}");
        }
        self.armed = next;
    }

    /// Open connections (listening sockets included).
    pub fn connections(&self) -> usize {
        self.conns.len()
    }
}

#[cfg(test)]
#[path = "stack_tests.rs"]
mod tests;
