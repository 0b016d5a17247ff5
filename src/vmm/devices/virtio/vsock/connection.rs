//! One vsock stream: a guest port paired with a host Unix stream, its
//! state, and the credit of both directions.
//!
//! Guest to host, bytes go straight to the Unix socket; what it does not
//! take waits in `tx_buf`, which never holds more than the [`CONN_BUF`]
//! bytes of credit the device advertised (a guest sending past its credit
//! is reset). Host to guest, bytes are read from the socket only into an
//! RX buffer the guest posted, and only as many as the guest's credit
//! allows, so nothing is buffered on that side at all: when the guest has
//! no room, the socket is simply not read (and not polled) until it has.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use vmm_sys_util::epoll::EventSet;

use super::packet::{
    Header, RxBuffer, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW,
    OP_SHUTDOWN, SHUTDOWN_RCV, SHUTDOWN_SEND,
};
use crate::vmm::metrics::METRICS;

/// The buffer the device advertises per connection (`buf_alloc`): the
/// most guest bytes it holds for a host peer that does not read.
pub const CONN_BUF: u32 = 64 * 1024;
/// A CREDIT_UPDATE goes out once the guest believes less than this is
/// free and more has been freed since it last heard.
const CREDIT_THRESHOLD: u32 = CONN_BUF / 2;
/// An empty `tx_buf` keeps at most this much capacity.
const KEEP_CAPACITY: usize = 4096;

// Control packets waiting for an RX buffer.
const P_REQUEST: u8 = 1;
const P_RESPONSE: u8 = 2;
const P_SHUTDOWN: u8 = 4;
const P_CREDIT_UPDATE: u8 = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Host-initiated: REQUEST queued or sent, waiting for RESPONSE.
    Connecting,
    Established,
}

/// What the muxer does with a connection after using it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Alive,
    /// Close the Unix stream; tell the guest with an RST when `rst`.
    Close {
        rst: bool,
    },
}

pub struct Connection {
    pub(super) stream: UnixStream,
    pub(super) state: State,
    /// The host port: allocated for host-initiated connections, the
    /// guest's destination port otherwise.
    pub(super) local_port: u32,
    /// Whether `local_port` was allocated by the muxer.
    pub(super) allocated: bool,
    /// When a host-initiated connection gives up waiting for RESPONSE.
    pub(super) deadline: Option<Instant>,
    pub(super) in_rxq: bool,
    pending: u8,
    request_sent: bool,
    /// The socket reported data (or EOF) not read yet.
    readable: bool,
    /// The host peer sent EOF.
    local_eof: bool,
    /// The guest will send no more / receive no more.
    peer_shut_send: bool,
    peer_shut_rcv: bool,
    /// The socket's write side is shut (the guest's SEND shutdown passed on).
    write_shut: bool,
    closing: Option<bool>,
    /// Guest bytes the socket has not taken yet.
    tx_buf: VecDeque<u8>,
    /// Bytes received from the guest, and forwarded to the socket.
    rx_cnt: u32,
    fwd_cnt: u32,
    /// The `fwd_cnt` the guest last heard.
    last_fwd_sent: u32,
    /// The guest's receive buffer and what it has consumed of it.
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// Bytes sent to the guest.
    tx_cnt: u32,
}

impl Connection {
    fn new(stream: UnixStream, state: State, local_port: u32) -> Self {
        Connection {
            stream,
            state,
            local_port,
            allocated: false,
            deadline: None,
            in_rxq: false,
            pending: 0,
            request_sent: false,
            readable: false,
            local_eof: false,
            peer_shut_send: false,
            peer_shut_rcv: false,
            write_shut: false,
            closing: None,
            tx_buf: VecDeque::new(),
            rx_cnt: 0,
            fwd_cnt: 0,
            last_fwd_sent: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            tx_cnt: 0,
        }
    }

    /// A host client asked for a guest port: REQUEST goes out first.
    pub fn outgoing(stream: UnixStream, local_port: u32, deadline: Instant) -> Self {
        let mut c = Connection::new(stream, State::Connecting, local_port);
        c.allocated = true;
        c.deadline = Some(deadline);
        c.pending = P_REQUEST;
        c
    }

    /// The guest's REQUEST reached a host listener: RESPONSE goes out.
    pub fn incoming(stream: UnixStream, local_port: u32, request: &Header) -> Self {
        let mut c = Connection::new(stream, State::Established, local_port);
        c.peer_buf_alloc = request.buf_alloc;
        c.peer_fwd_cnt = request.fwd_cnt;
        c.pending = P_RESPONSE;
        c
    }

    pub fn status(&self) -> Status {
        match self.closing {
            Some(rst) => Status::Close { rst },
            None => Status::Alive,
        }
    }

    /// Guest bytes held for the host peer.
    pub fn buffered(&self) -> usize {
        self.tx_buf.len()
    }

    fn close(&mut self, rst: bool) {
        if self.closing.is_none() {
            self.closing = Some(rst);
        }
    }

    /// The deadline passed: a REQUEST the guest never answered.
    pub fn expire(&mut self) {
        self.deadline = None;
        if self.state == State::Connecting {
            METRICS.vsock.connect_timeouts.inc();
            // The guest only needs to forget a REQUEST it saw.
            self.close(self.request_sent);
        }
    }

    fn can_read(&self) -> bool {
        self.state == State::Established
            && self.closing.is_none()
            && !self.local_eof
            && !self.peer_shut_rcv
    }

    /// The guest's free receive space. A guest claiming to have consumed
    /// more than it was sent gets none.
    fn peer_free(&self) -> u32 {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Whether the connection has a packet for the guest now.
    pub fn wants_rx(&self) -> bool {
        self.closing.is_none()
            && (self.pending != 0 || (self.readable && self.can_read() && self.peer_free() > 0))
    }

    /// What to poll the socket for: data only when the guest has credit
    /// and nothing read is waiting, writability only while guest bytes
    /// wait. Empty: the socket is not polled at all.
    pub fn interest(&self) -> EventSet {
        let mut set = EventSet::empty();
        if self.closing.is_some() {
            return set;
        }
        if self.can_read() && !self.readable && self.peer_free() > 0 {
            set |= EventSet::IN;
        }
        if !self.tx_buf.is_empty() {
            set |= EventSet::OUT;
        }
        set
    }

    /// A packet from the guest for this connection.
    pub fn on_packet(&mut self, hdr: &Header, payload: &[u8]) {
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = hdr.fwd_cnt;
        match (hdr.op, self.state) {
            (OP_RST, _) => self.close(false),
            (OP_RESPONSE, State::Connecting) if self.request_sent => self.established(),
            (OP_RW, State::Established) if !self.peer_shut_send => self.guest_data(payload),
            (OP_CREDIT_UPDATE, _) => {}
            (OP_CREDIT_REQUEST, _) => self.pending |= P_CREDIT_UPDATE,
            (OP_SHUTDOWN, State::Established) => {
                self.peer_shut_rcv |= hdr.flags & SHUTDOWN_RCV != 0;
                self.peer_shut_send |= hdr.flags & SHUTDOWN_SEND != 0;
            }
            _ => {
                // REQUEST on a live connection, RW before RESPONSE or
                // after SHUTDOWN, an unknown op: a protocol error.
                METRICS.vsock.protocol_errors.inc();
                self.close(true);
            }
        }
        self.check_done();
    }

    /// RESPONSE: the host client hears `OK <host port>`.
    fn established(&mut self) {
        self.state = State::Established;
        self.deadline = None;
        let line = format!("OK {}\n", self.local_port);
        // The socket is fresh and empty: a short write means its peer is
        // gone.
        match self.stream.write(line.as_bytes()) {
            Ok(n) if n == line.len() => {}
            _ => self.close(true),
        }
    }

    /// RW: bytes for the host peer, within the credit advertised.
    fn guest_data(&mut self, payload: &[u8]) {
        if self.tx_buf.len() + payload.len() > CONN_BUF as usize {
            METRICS.vsock.credit_violations.inc();
            self.close(true);
            return;
        }
        self.rx_cnt = self.rx_cnt.wrapping_add(payload.len() as u32);
        METRICS.vsock.tx_bytes.add(payload.len() as u64);
        let mut rest = payload;
        if self.tx_buf.is_empty() {
            match self.stream.write(payload) {
                Ok(n) => {
                    self.forwarded(n);
                    rest = &payload[n..];
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return self.close(true),
            }
        }
        self.tx_buf.extend(rest);
    }

    fn forwarded(&mut self, n: usize) {
        self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
        let seen_free = CONN_BUF.saturating_sub(self.rx_cnt.wrapping_sub(self.last_fwd_sent));
        if self.fwd_cnt != self.last_fwd_sent && seen_free < CREDIT_THRESHOLD {
            self.pending |= P_CREDIT_UPDATE;
        }
    }

    /// Writes what waits in `tx_buf` to the socket.
    fn flush(&mut self) {
        while !self.tx_buf.is_empty() {
            let (front, _) = self.tx_buf.as_slices();
            match self.stream.write(front) {
                Ok(0) => return self.close(true),
                Ok(n) => {
                    self.tx_buf.drain(..n);
                    self.forwarded(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.close(true),
            }
        }
        if self.tx_buf.is_empty() && self.tx_buf.capacity() > KEEP_CAPACITY {
            self.tx_buf = VecDeque::new();
        }
    }

    /// Readiness of the socket.
    pub fn on_event(&mut self, set: EventSet) {
        let broken = set.intersects(EventSet::HANG_UP | EventSet::ERROR);
        if set.contains(EventSet::OUT) || broken {
            self.flush();
        }
        if (set.contains(EventSet::IN) || broken) && self.can_read() {
            self.readable = true;
        }
        self.check_done();
    }

    /// Passes the guest's SEND shutdown on once its bytes are out, and
    /// ends the connection once neither side has more to say: the guest
    /// then gets an RST, which it waits for after a full SHUTDOWN.
    fn check_done(&mut self) {
        if self.closing.is_some() || !self.peer_shut_send || !self.tx_buf.is_empty() {
            return;
        }
        if !self.write_shut {
            let _ = self.stream.shutdown(Shutdown::Write);
            self.write_shut = true;
        }
        if self.state == State::Established && (self.peer_shut_rcv || self.local_eof) {
            self.close(true);
        }
    }

    /// Writes the connection's next packet for the guest into `buf`, with
    /// addresses from `base`; returns the used length, or None when it
    /// has nothing to send now.
    pub fn fill(&mut self, buf: &mut RxBuffer, base: Header, scratch: &mut Vec<u8>) -> Option<u32> {
        if self.closing.is_some() {
            return None;
        }
        let sent = self.next_packet(buf, base, scratch);
        if sent.is_some() {
            // Every packet carries the credit; no separate update needed.
            self.last_fwd_sent = self.fwd_cnt;
            self.pending &= !P_CREDIT_UPDATE;
        }
        self.check_done();
        sent
    }

    fn next_packet(
        &mut self,
        buf: &mut RxBuffer,
        base: Header,
        scratch: &mut Vec<u8>,
    ) -> Option<u32> {
        let hdr = Header {
            buf_alloc: CONN_BUF,
            fwd_cnt: self.fwd_cnt,
            ..base
        };
        if self.pending & P_REQUEST != 0 {
            self.request_sent = true;
            return Some(self.control(buf, hdr, P_REQUEST, OP_REQUEST, 0));
        }
        if self.pending & P_RESPONSE != 0 {
            return Some(self.control(buf, hdr, P_RESPONSE, OP_RESPONSE, 0));
        }
        if let Some(n) = self.read_data(buf.payload_room(), scratch) {
            self.tx_cnt = self.tx_cnt.wrapping_add(n as u32);
            METRICS.vsock.rx_bytes.add(n as u64);
            let hdr = Header { op: OP_RW, ..hdr };
            return Some(write(buf, &hdr, &scratch[..n]));
        }
        if self.pending & P_SHUTDOWN != 0 {
            return Some(self.control(buf, hdr, P_SHUTDOWN, OP_SHUTDOWN, SHUTDOWN_SEND));
        }
        if self.pending & P_CREDIT_UPDATE != 0 {
            return Some(self.control(buf, hdr, P_CREDIT_UPDATE, OP_CREDIT_UPDATE, 0));
        }
        None
    }

    fn control(&mut self, buf: &mut RxBuffer, hdr: Header, bit: u8, op: u16, flags: u32) -> u32 {
        self.pending &= !bit;
        write(buf, &Header { op, flags, ..hdr }, &[])
    }

    /// Reads what the socket has, up to the room and the guest's credit.
    /// EOF queues a SHUTDOWN for the guest.
    fn read_data(&mut self, room: usize, scratch: &mut Vec<u8>) -> Option<usize> {
        if !(self.readable && self.can_read()) {
            return None;
        }
        let want = room.min(self.peer_free() as usize);
        if want == 0 {
            return None;
        }
        if scratch.len() < want {
            scratch.resize(want, 0);
        }
        match self.stream.read(&mut scratch[..want]) {
            Ok(0) => {
                self.readable = false;
                self.local_eof = true;
                self.pending |= P_SHUTDOWN;
                None
            }
            Ok(n) => Some(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.readable = false;
                None
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => None,
            Err(_) => {
                self.close(true);
                None
            }
        }
    }
}

/// Writes one packet; a buffer that cannot take it is used with nothing.
fn write(buf: &mut RxBuffer, hdr: &Header, payload: &[u8]) -> u32 {
    buf.write(hdr, payload).unwrap_or_else(|_| {
        METRICS.vsock.bad_packets.inc();
        0
    })
}
