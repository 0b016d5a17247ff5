//! virtio-vsock over guest memory built in the test, with the device on a
//! real event loop and real Unix sockets: the test plays a Linux guest
//! (through the shared in-process driver) and the host programs.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use vm_memory::{Bytes, GuestAddress};

use super::packet::*;
use super::{Vsock, CONN_BUF};
use crate::vmm::devices::virtio::mmio::reg;
use crate::vmm::devices::virtio::test_utils::{Driver, BUFFERS, F_NEXT, F_WRITE};
use crate::vmm::metrics::METRICS;

const CID: u64 = 3;
const QSIZE: u16 = 64;
const RX_BUFS: u16 = 16;
const RX_SIZE: u32 = 4096;
const TX_HDR: u64 = BUFFERS + 0x20_0000;
const TX_DATA: u64 = BUFFERS + 0x30_0000;
const TX_SLOT: u64 = 0x1_1000;
const RXQ: u16 = 0;
const TXQ: u16 = 1;

type Loop = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

type Packet = (Header, Vec<u8>);

struct Guest {
    drv: Driver,
    dev: Arc<Mutex<Vsock>>,
    events: Loop,
    dir: PathBuf,
    uds: PathBuf,
    rx_seen: u16,
    /// Post RX buffers back after reading them.
    repost: bool,
    /// Count received data as consumed (fwd_cnt) per guest port.
    consume: bool,
    buf_alloc: u32,
    fwd: HashMap<u32, u32>,
}

impl Guest {
    fn new(name: &str) -> Guest {
        let dir = std::env::temp_dir().join(format!("husk-vsock-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let uds = dir.join("v.sock");
        let dev = Arc::new(Mutex::new(Vsock::bind(CID, &uds).unwrap()));
        dev.lock().unwrap().muxer.timeout = Duration::from_millis(50);
        let mut events = Loop::new().unwrap();
        events.add_subscriber(dev.clone());
        let mut drv = Driver::new(dev.clone());
        drv.up(0, 3, QSIZE);
        let mut g = Guest {
            drv,
            dev,
            events,
            dir,
            uds,
            rx_seen: 0,
            repost: true,
            consume: true,
            buf_alloc: 1 << 20,
            fwd: HashMap::new(),
        };
        for i in 0..RX_BUFS {
            g.post_rx(i);
        }
        g.notify(RXQ);
        g
    }

    fn port_path(&self, port: u32) -> PathBuf {
        let mut p = self.uds.as_os_str().to_owned();
        p.push(format!("_{port}"));
        PathBuf::from(p)
    }

    fn post_rx(&mut self, i: u16) {
        let addr = BUFFERS + u64::from(i) * u64::from(RX_SIZE);
        self.drv.desc(RXQ, i, addr, RX_SIZE, F_WRITE, 0);
        self.drv.make_available(RXQ, i);
    }

    fn notify(&mut self, q: u16) {
        self.drv.write_reg(reg::QUEUE_NOTIFY, u32::from(q));
        self.pump();
    }

    /// Runs the event loop until it has nothing left to do.
    fn pump(&mut self) {
        for _ in 0..200 {
            if self.events.run_with_timeout(0).unwrap() == 0 {
                return;
            }
        }
        panic!("the event loop never went idle: something spins");
    }

    fn hdr(&self, op: u16, src_port: u32, dst_port: u32) -> Header {
        Header {
            src_cid: CID,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            type_: TYPE_STREAM,
            op,
            buf_alloc: self.buf_alloc,
            fwd_cnt: self.fwd.get(&src_port).copied().unwrap_or(0),
            ..Header::default()
        }
    }

    /// Sends packets in one batch (one notification).
    fn send_all(&mut self, pkts: &[(Header, &[u8])]) {
        assert!(pkts.len() <= 32);
        for (k, (h, data)) in pkts.iter().enumerate() {
            let (d0, d1) = (2 * k as u16, 2 * k as u16 + 1);
            let hdr_at = TX_HDR + k as u64 * 64;
            let data_at = TX_DATA + k as u64 * TX_SLOT;
            let mut h = *h;
            h.len = data.len() as u32;
            self.drv
                .mem
                .write_slice(&h.to_bytes(), GuestAddress(hdr_at))
                .unwrap();
            self.drv
                .mem
                .write_slice(data, GuestAddress(data_at))
                .unwrap();
            if data.is_empty() {
                self.drv.desc(TXQ, d0, hdr_at, HDR_LEN as u32, 0, 0);
            } else {
                self.drv.desc(TXQ, d0, hdr_at, HDR_LEN as u32, F_NEXT, d1);
                self.drv.desc(TXQ, d1, data_at, data.len() as u32, 0, 0);
            }
            self.drv.make_available(TXQ, d0);
        }
        self.notify(TXQ);
    }

    fn send(&mut self, h: Header, data: &[u8]) {
        self.send_all(&[(h, data)]);
    }

    /// Sends a chain of raw descriptors (addr, len, flags) as is.
    fn send_raw(&mut self, descs: &[(u64, u32, u16)]) {
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let next = if i + 1 < descs.len() { F_NEXT } else { 0 };
            self.drv
                .desc(TXQ, 40 + i as u16, addr, len, flags | next, 41 + i as u16);
        }
        self.drv.make_available(TXQ, 40);
        self.notify(TXQ);
    }

    /// Every packet the device has written since the last call.
    fn rx(&mut self) -> Vec<Packet> {
        let mut out = Vec::new();
        loop {
            self.pump();
            let idx = self.drv.used_idx(RXQ);
            if idx == self.rx_seen {
                return out;
            }
            while self.rx_seen != idx {
                let (id, len) = self.drv.used(RXQ, self.rx_seen);
                self.rx_seen = self.rx_seen.wrapping_add(1);
                let addr = BUFFERS + u64::from(id) * u64::from(RX_SIZE);
                let mut b = vec![0u8; len as usize];
                self.drv.mem.read_slice(&mut b, GuestAddress(addr)).unwrap();
                let (h, data) = parse(&b).expect("the device wrote a bad packet");
                assert_eq!(b.len(), HDR_LEN + data.len(), "used length");
                if self.consume && h.op == OP_RW {
                    *self.fwd.entry(h.dst_port).or_default() += data.len() as u32;
                }
                out.push((h, data.to_vec()));
                if self.repost {
                    self.post_rx(id as u16);
                }
            }
            if !self.repost {
                return out;
            }
            self.drv.write_reg(reg::QUEUE_NOTIFY, u32::from(RXQ));
        }
    }

    /// A host client asking for guest `port`; answers the REQUEST and
    /// returns (client, host port).
    fn open_from_host(&mut self, port: u32) -> (UnixStream, u32) {
        let mut c = UnixStream::connect(&self.uds).unwrap();
        c.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
        c.set_nonblocking(true).unwrap();
        self.pump();
        let p = self.rx();
        assert_eq!(p.len(), 1, "{p:?}");
        let (h, _) = p[0];
        assert_eq!(
            (h.op, h.dst_port, h.src_cid, h.dst_cid),
            (OP_REQUEST, port, HOST_CID, CID)
        );
        assert_eq!(h.buf_alloc, CONN_BUF);
        let local = h.src_port;
        self.send(self.hdr(OP_RESPONSE, port, local), &[]);
        assert_eq!(read_now(&mut c), format!("OK {local}\n").into_bytes());
        (c, local)
    }

    /// The guest connects from `port` to a host listener at `host_port`.
    fn open_from_guest(&mut self, l: &UnixListener, port: u32, host_port: u32) -> UnixStream {
        self.send(self.hdr(OP_REQUEST, port, host_port), &[]);
        let p = self.rx();
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!((p[0].0.op, p[0].0.dst_port), (OP_RESPONSE, port));
        let (h, _) = l.accept().unwrap();
        h.set_nonblocking(true).unwrap();
        h
    }

    fn vsock(&self) -> std::sync::MutexGuard<'_, Vsock> {
        self.dev.lock().unwrap()
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whatever a non-blocking stream has now.
fn read_now(s: &mut UnixStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut b = [0u8; 65536];
    loop {
        match s.read(&mut b) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&b[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return out,
            Err(e) => panic!("{e}"),
        }
    }
}

/// The stream's peer closed (EOF or reset), after `data`.
fn closed_after(s: &mut UnixStream, data: &[u8]) -> bool {
    let mut got = Vec::new();
    let mut b = [0u8; 4096];
    loop {
        match s.read(&mut b) {
            Ok(0) => return got == data,
            Ok(n) => got.extend_from_slice(&b[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(_) => return got == data,
        }
    }
}

fn ops(p: &[Packet]) -> Vec<u16> {
    p.iter().map(|(h, _)| h.op).collect()
}

#[test]
fn the_config_space_holds_the_guest_cid() {
    let mut g = Guest::new("config");
    let lo = g.drv.read_reg(reg::CONFIG);
    let hi = g.drv.read_reg(reg::CONFIG + 4);
    assert_eq!(u64::from(lo) | u64::from(hi) << 32, CID);
    assert_eq!(g.drv.read_reg(reg::DEVICE_ID), 19);
}

#[test]
fn a_host_initiated_stream_carries_data_both_ways_and_closes() {
    let mut g = Guest::new("host-init");
    let (mut c, local) = g.open_from_host(1234);
    assert!(local >= 1 << 30);
    c.write_all(b"ping").unwrap();
    let p = g.rx();
    assert_eq!(p.len(), 1);
    let (h, data) = &p[0];
    assert_eq!((h.op, h.src_port, h.dst_port), (OP_RW, local, 1234));
    assert_eq!(data, b"ping");
    g.send(g.hdr(OP_RW, 1234, local), b"pong");
    assert_eq!(read_now(&mut c), b"pong");
    // A full SHUTDOWN from the guest: the client sees EOF, the guest an RST.
    let mut sd = g.hdr(OP_SHUTDOWN, 1234, local);
    sd.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    g.send(sd, &[]);
    assert!(closed_after(&mut c, b""));
    assert_eq!(ops(&g.rx()), vec![OP_RST]);
    assert_eq!(g.vsock().connection_count(), 0);
    assert_eq!(g.vsock().muxer.watched(), 0, "every stream unregistered");
}

#[test]
fn data_sent_with_the_connect_line_is_not_lost() {
    let mut g = Guest::new("eager");
    let mut c = UnixStream::connect(&g.uds).unwrap();
    c.write_all(b"CONNECT 80\nGET /").unwrap();
    c.set_nonblocking(true).unwrap();
    let p = g.rx();
    let local = p[0].0.src_port;
    g.send(g.hdr(OP_RESPONSE, 80, local), &[]);
    let p = g.rx();
    assert_eq!(ops(&p), vec![OP_RW]);
    assert_eq!(p[0].1, b"GET /");
    assert_eq!(read_now(&mut c), format!("OK {local}\n").into_bytes());
}

#[test]
fn resets_timeouts_and_bad_handshakes_close_host_clients() {
    let mut g = Guest::new("refused");
    // The guest refuses.
    let mut a = UnixStream::connect(&g.uds).unwrap();
    a.write_all(b"CONNECT 1\n").unwrap();
    a.set_nonblocking(true).unwrap();
    let p = g.rx();
    g.send(g.hdr(OP_RST, 1, p[0].0.src_port), &[]);
    assert!(closed_after(&mut a, b""));
    // The guest never answers: the REQUEST times out, and the guest is
    // told to forget it.
    let mut b = UnixStream::connect(&g.uds).unwrap();
    b.write_all(b"CONNECT 2\n").unwrap();
    b.set_nonblocking(true).unwrap();
    assert_eq!(ops(&g.rx()), vec![OP_REQUEST]);
    // A client that never sends its line, and bad lines.
    let mut silent = UnixStream::connect(&g.uds).unwrap();
    silent.set_nonblocking(true).unwrap();
    let mut bad = Vec::new();
    for line in [&b"HELLO\n"[..], b"CONNECT x\n", &[b'7'; 40]] {
        let mut s = UnixStream::connect(&g.uds).unwrap();
        s.write_all(line).unwrap();
        s.set_nonblocking(true).unwrap();
        bad.push(s);
    }
    g.pump();
    for s in &mut bad {
        assert!(closed_after(s, b""));
    }
    std::thread::sleep(Duration::from_millis(80));
    let p = g.rx();
    assert_eq!(ops(&p), vec![OP_RST]);
    assert_eq!(p[0].0.dst_port, 2);
    assert!(closed_after(&mut b, b""));
    assert!(closed_after(&mut silent, b""));
    assert_eq!(g.vsock().connection_count(), 0);
    assert_eq!(g.vsock().muxer.watched(), 0);
}

#[test]
fn guest_initiated_streams_reach_host_listeners_or_get_an_rst() {
    let mut g = Guest::new("guest-init");
    let l = UnixListener::bind(g.port_path(5000)).unwrap();
    let mut h = g.open_from_guest(&l, 777, 5000);
    g.send(g.hdr(OP_RW, 777, 5000), b"abc");
    assert_eq!(read_now(&mut h), b"abc");
    h.write_all(b"xyz").unwrap();
    let p = g.rx();
    assert_eq!(ops(&p), vec![OP_RW]);
    assert_eq!((p[0].0.src_port, p[0].0.dst_port), (5000, 777));
    assert_eq!(p[0].1, b"xyz");
    // Nothing listens on 5001.
    g.send(g.hdr(OP_REQUEST, 778, 5001), &[]);
    let p = g.rx();
    assert_eq!(ops(&p), vec![OP_RST]);
    assert_eq!((p[0].0.src_port, p[0].0.dst_port), (5001, 778));
    // The host program closes: the guest hears SHUTDOWN (no more to
    // send); once the guest has sent all it will, the stream ends.
    drop(h);
    let p = g.rx();
    assert_eq!(ops(&p), vec![OP_SHUTDOWN]);
    assert_eq!(p[0].0.flags, SHUTDOWN_SEND);
    let mut sd = g.hdr(OP_SHUTDOWN, 777, 5000);
    sd.flags = SHUTDOWN_SEND;
    g.send(sd, &[]);
    assert_eq!(ops(&g.rx()), vec![OP_RST]);
    assert_eq!(g.vsock().connection_count(), 0);
}

#[test]
fn many_streams_at_once_keep_their_bytes_apart() {
    let mut g = Guest::new("many");
    let mut host_init = Vec::new();
    for port in 2000..2008 {
        host_init.push((port, g.open_from_host(port)));
    }
    let mut listeners = Vec::new();
    let mut guest_init = Vec::new();
    for (i, host_port) in (6000..6004).enumerate() {
        let l = UnixListener::bind(g.port_path(host_port)).unwrap();
        let h = g.open_from_guest(&l, 900 + i as u32, host_port);
        listeners.push(l);
        guest_init.push((900 + i as u32, host_port, h));
    }
    assert_eq!(g.vsock().connection_count(), 12);
    // Every host side writes at once; every guest stream answers in one
    // batch.
    for (port, (c, _)) in &mut host_init {
        c.write_all(format!("to guest {port}").as_bytes()).unwrap();
    }
    for (port, _, h) in &mut guest_init {
        h.write_all(format!("to guest {port}").as_bytes()).unwrap();
    }
    let got: HashMap<u32, Vec<u8>> = g
        .rx()
        .into_iter()
        .filter(|(h, _)| h.op == OP_RW)
        .map(|(h, d)| (h.dst_port, d))
        .collect();
    assert_eq!(got.len(), 12);
    for (port, d) in &got {
        assert_eq!(d, format!("to guest {port}").as_bytes());
    }
    let mut replies: Vec<(Header, Vec<u8>)> = Vec::new();
    for (port, (_, local)) in &host_init {
        replies.push((
            g.hdr(OP_RW, *port, *local),
            format!("from {port}").into_bytes(),
        ));
    }
    for (port, host_port, _) in &guest_init {
        replies.push((
            g.hdr(OP_RW, *port, *host_port),
            format!("from {port}").into_bytes(),
        ));
    }
    let batch: Vec<(Header, &[u8])> = replies.iter().map(|(h, d)| (*h, &d[..])).collect();
    g.send_all(&batch);
    for (port, (c, _)) in &mut host_init {
        assert_eq!(read_now(c), format!("from {port}").into_bytes());
    }
    for (port, _, h) in &mut guest_init {
        assert_eq!(read_now(h), format!("from {port}").into_bytes());
    }
}

#[test]
fn hostile_packets_get_an_rst_or_nothing_and_never_break_the_device() {
    let mut g = Guest::new("hostile");
    let bad = METRICS.vsock.bad_packets.get();
    // A chain too short for a header; one claiming more payload than it
    // has; one claiming more than any packet may; one outside memory.
    let at = TX_HDR + 0x8000;
    g.drv.mem.write_slice(&[0u8; 20], GuestAddress(at)).unwrap();
    g.send_raw(&[(at, 20, 0)]);
    let mut h = g.hdr(OP_RW, 1, 2);
    h.len = 100;
    g.drv
        .mem
        .write_slice(&h.to_bytes(), GuestAddress(at))
        .unwrap();
    g.send_raw(&[(at, HDR_LEN as u32 + 10, 0)]);
    h.len = u32::MAX;
    g.drv
        .mem
        .write_slice(&h.to_bytes(), GuestAddress(at))
        .unwrap();
    g.send_raw(&[(at, HDR_LEN as u32, 0), (at, u32::MAX, 0)]);
    g.send_raw(&[(0xffff_0000_0000, 64, 0)]);
    // A header split over two descriptors is fine (no reply: it is an
    // RST to nowhere).
    let mut rst = g.hdr(OP_RST, 1, 2);
    rst.len = 0;
    let b = rst.to_bytes();
    g.drv.mem.write_slice(&b, GuestAddress(at)).unwrap();
    g.send_raw(&[(at, 10, 0), (at + 10, 34, 0)]);
    assert!(g.rx().is_empty());
    assert!(METRICS.vsock.bad_packets.get() >= bad + 4);
    // Not from this guest's CID: dropped, never answered.
    let mut spoof = g.hdr(OP_REQUEST, 5, 6);
    spoof.src_cid = 42;
    g.send(spoof, &[]);
    assert!(g.rx().is_empty());
    // To another CID, another type, an unknown connection, an unknown op:
    // an RST from the address the guest used.
    let mut other_cid = g.hdr(OP_REQUEST, 5, 6);
    other_cid.dst_cid = 9;
    let mut seqpacket = g.hdr(OP_REQUEST, 5, 6);
    seqpacket.type_ = 2;
    g.send_all(&[
        (other_cid, &[]),
        (seqpacket, &[]),
        (g.hdr(OP_RW, 7, 8), b"data"),
        (g.hdr(99, 9, 10), &[]),
    ]);
    let p = g.rx();
    assert_eq!(ops(&p), vec![OP_RST; 4]);
    assert_eq!((p[0].0.src_cid, p[0].0.dst_cid), (9, CID));
    assert_eq!(p[1].0.type_, 2);
    assert_eq!((p[2].0.src_port, p[2].0.dst_port), (8, 7));
    // On a live stream: an unknown op, a second REQUEST, RW before
    // RESPONSE each reset it and close the host side.
    for bad_op in [99, OP_REQUEST] {
        let (mut c, local) = g.open_from_host(40);
        g.send(g.hdr(bad_op, 40, local), &[]);
        assert_eq!(ops(&g.rx()), vec![OP_RST]);
        assert!(closed_after(&mut c, b""));
    }
    let mut c = UnixStream::connect(&g.uds).unwrap();
    c.write_all(b"CONNECT 41\n").unwrap();
    c.set_nonblocking(true).unwrap();
    let local = g.rx()[0].0.src_port;
    g.send(g.hdr(OP_RW, 41, local), b"early");
    assert_eq!(ops(&g.rx()), vec![OP_RST]);
    assert!(closed_after(&mut c, b""));
    // The device still works.
    let (mut c, local) = g.open_from_host(43);
    g.send(g.hdr(OP_RW, 43, local), b"still here");
    assert_eq!(read_now(&mut c), b"still here");
}

#[test]
fn rx_buffers_too_short_or_read_only_are_used_empty() {
    let mut g = Guest::new("short-rx");
    g.repost = false;
    let unknown: Vec<(Header, &[u8])> = (0..RX_BUFS as u32)
        .map(|i| (g.hdr(OP_RW, i, 1), &b""[..]))
        .collect();
    g.send_all(&unknown);
    assert_eq!(g.rx().len(), RX_BUFS as usize);
    // Too short for a header, not writable, then a good one.
    g.drv.desc(RXQ, 50, BUFFERS, 20, F_WRITE, 0);
    g.drv.desc(RXQ, 51, BUFFERS, 64, 0, 0);
    g.drv.make_available(RXQ, 50);
    g.drv.make_available(RXQ, 51);
    g.post_rx(0);
    g.send(g.hdr(OP_RW, 11, 12), b"x");
    let start = g.rx_seen;
    let used: Vec<_> = (start..g.drv.used_idx(RXQ))
        .map(|n| g.drv.used(RXQ, n))
        .collect();
    assert_eq!(used.len(), 3, "{used:?}");
    assert_eq!(&used[..2], &[(50, 0), (51, 0)]);
    assert_eq!(
        used[2],
        (0, HDR_LEN as u32),
        "the RST waited for a good buffer"
    );
}

#[test]
fn rsts_for_a_guest_that_posts_no_buffers_are_bounded() {
    let mut g = Guest::new("rst-flood");
    g.repost = false;
    // Use up every RX buffer.
    let unknown: Vec<(Header, &[u8])> = (0..RX_BUFS as u32)
        .map(|i| (g.hdr(OP_RW, i, 1), &b""[..]))
        .collect();
    g.send_all(&unknown);
    assert_eq!(g.rx().len(), RX_BUFS as usize);
    let dropped = METRICS.vsock.dropped_packets.get();
    for round in 0..(super::muxer::MAX_RESETS as u32 / 32 + 2) {
        let batch: Vec<(Header, &[u8])> = (0..32)
            .map(|i| (g.hdr(OP_RW, round * 32 + i, 1), &b""[..]))
            .collect();
        g.send_all(&batch);
    }
    assert!(METRICS.vsock.dropped_packets.get() >= dropped + 64);
    // Buffers come back: the queued RSTs (at most MAX_RESETS) go out.
    g.repost = true;
    for i in 0..RX_BUFS {
        g.post_rx(i);
    }
    g.notify(RXQ);
    let p = g.rx();
    assert_eq!(p.len(), super::muxer::MAX_RESETS);
}

#[test]
fn a_host_peer_that_never_reads_holds_at_most_the_credit() {
    let mut g = Guest::new("host-stalls");
    let l = UnixListener::bind(g.port_path(7000)).unwrap();
    let _h = g.open_from_guest(&l, 1000, 7000);
    let chunk = vec![0x5au8; MAX_PAYLOAD];
    let violations = METRICS.vsock.credit_violations.get();
    // A guest that ignores its credit: the socket's own buffer fills,
    // then the device holds up to CONN_BUF bytes, then resets the stream.
    let mut reset = false;
    for _ in 0..64 {
        g.send(g.hdr(OP_RW, 1000, 7000), &chunk);
        assert!(g.vsock().buffered_bytes() <= CONN_BUF as usize);
        let p = g.rx();
        if ops(&p).contains(&OP_RST) {
            reset = true;
            break;
        }
    }
    assert!(reset, "the stream was never reset");
    assert!(METRICS.vsock.credit_violations.get() > violations);
    assert_eq!(g.vsock().buffered_bytes(), 0);
    assert_eq!(g.vsock().connection_count(), 0);
}

#[test]
fn a_guest_that_never_reads_stops_the_host_side() {
    let mut g = Guest::new("guest-stalls");
    g.consume = false;
    g.buf_alloc = 8192;
    let (mut c, local) = g.open_from_host(3000);
    // The host writes until its socket is full.
    let mut written = 0usize;
    let chunk = [0xa5u8; 65536];
    loop {
        match c.write(&chunk) {
            Ok(n) => written += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(written > 8192);
    let got: usize = g.rx().iter().map(|(_, d)| d.len()).sum();
    assert_eq!(got, 8192, "exactly the guest's credit");
    // Nothing more, however long the loop runs: the socket is not even
    // polled (no wake-ups, once the REQUEST's timer has gone off), and
    // nothing is buffered in the VMM.
    std::thread::sleep(Duration::from_millis(60));
    assert!(g.rx().is_empty());
    assert_eq!(g.events.run_with_timeout(20).unwrap(), 0);
    assert_eq!(g.vsock().buffered_bytes(), 0);
    // The guest consumes and says so: the next 8 KiB flow.
    let mut up = g.hdr(OP_CREDIT_UPDATE, 3000, local);
    up.fwd_cnt = 8192;
    g.send(up, &[]);
    let got: usize = g.rx().iter().map(|(_, d)| d.len()).sum();
    assert_eq!(got, 8192);
}

#[test]
fn credit_is_reported_as_the_host_reads() {
    let mut g = Guest::new("credit");
    let (mut c, local) = g.open_from_host(3100);
    // More than half the buffer, sent within credit: once the socket has
    // taken it, the device says so without being asked.
    g.send(g.hdr(OP_RW, 3100, local), &vec![1u8; 40_000]);
    let p = g.rx();
    assert_eq!(ops(&p), vec![OP_CREDIT_UPDATE]);
    assert_eq!(p[0].0.fwd_cnt, 40_000, "the socket took it all");
    assert_eq!(read_now(&mut c).len(), 40_000);
    // And when asked.
    g.send(g.hdr(OP_CREDIT_REQUEST, 3100, local), &[]);
    let p = g.rx();
    assert_eq!(ops(&p), vec![OP_CREDIT_UPDATE]);
    assert_eq!((p[0].0.buf_alloc, p[0].0.fwd_cnt), (CONN_BUF, 40_000));
}

#[test]
fn a_driver_reset_ends_every_stream() {
    let mut g = Guest::new("reset");
    let (mut a, _) = g.open_from_host(1);
    let l = UnixListener::bind(g.port_path(8000)).unwrap();
    let mut b = g.open_from_guest(&l, 2, 8000);
    g.drv.write_reg(reg::STATUS, 0);
    g.pump();
    assert!(closed_after(&mut a, b""));
    assert!(closed_after(&mut b, b""));
    assert_eq!(g.vsock().connection_count(), 0);
    assert_eq!(g.vsock().muxer.watched(), 0);
    // Up again, as new (rings cleared, as a fresh driver's would be).
    for q in 0..3 {
        let base = crate::vmm::devices::virtio::test_utils::rings(q).0;
        g.drv
            .mem
            .write_slice(&[0u8; 0x3000], GuestAddress(base))
            .unwrap();
    }
    g.drv.up(0, 3, QSIZE);
    g.rx_seen = 0;
    for i in 0..RX_BUFS {
        g.post_rx(i);
    }
    g.notify(RXQ);
    let (mut c, local) = g.open_from_host(3);
    g.send(g.hdr(OP_RW, 3, local), b"again");
    assert_eq!(read_now(&mut c), b"again");
}

#[test]
fn a_stale_socket_is_replaced_and_a_live_one_refused() {
    let dir = std::env::temp_dir().join(format!("husk-vsock-bind-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("s.sock");
    drop(UnixListener::bind(&p).unwrap());
    let v = Vsock::bind(CID, &p).unwrap();
    assert!(UnixStream::connect(&p).is_ok(), "the device listens now");
    let e = Vsock::bind(CID, &p).err().unwrap().to_string();
    assert!(e.contains("in use"), "{e}");
    drop(v);
    let _ = std::fs::remove_dir_all(Path::new(&dir));
}

#[path = "persist_tests.rs"]
mod persist_tests;
