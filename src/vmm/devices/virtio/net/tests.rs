//! virtio-net over guest memory built in the test, behind the real
//! transport, with a datagram socket pair standing in for the TAP (one
//! datagram is one frame, header first, as on a TAP): both directions,
//! the pause when the guest has no buffers, every malformed buffer a
//! guest can post, and the rate limiters.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex, MutexGuard};

use vm_memory::{Bytes, GuestAddress};

use super::device::{F_GUEST_CSUM, F_GUEST_TSO4, F_GUEST_UFO, F_MAC, F_MRG_RXBUF, F_MTU};
use super::{tap_offloads, Net, NetOptions, RxState, Tap};
use crate::vmm::devices::virtio::mmio::reg;
use crate::vmm::devices::virtio::test_utils::{Driver, BUFFERS, F_NEXT, F_WRITE};
use crate::vmm::devices::virtio::VirtioDevice;
use crate::vmm::metrics::{Counter, METRICS};

const SIZE: u16 = 16;
const RX: u16 = 0;
const TX: u16 = 1;
/// Outside the test's 16 MiB of guest memory.
const NOWHERE: u64 = 0xffff_0000;

/// The net counters are process-wide: the tests here take turns, so each
/// can check exact differences.
static TURN: Mutex<()> = Mutex::new(());

fn turn() -> MutexGuard<'static, ()> {
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}

/// The value of a counter now, to compare with later.
fn at(c: &'static Counter) -> impl Fn() -> u64 {
    let base = c.get();
    move || c.get() - base
}

struct Nic {
    drv: Driver,
    net: Arc<Mutex<Net>>,
    /// The host's end of the "TAP".
    peer: UnixDatagram,
    /// Next free descriptor of each queue.
    next: [u16; 2],
}

impl Nic {
    fn new(features: u64, options: NetOptions) -> Nic {
        let (dev_end, peer) = UnixDatagram::pair().unwrap();
        dev_end.set_nonblocking(true).unwrap();
        peer.set_nonblocking(true).unwrap();
        let tap = Tap::from_file(File::from(OwnedFd::from(dev_end)), "test0");
        let net = Arc::new(Mutex::new(Net::with_tap(tap, options).unwrap()));
        let mut drv = Driver::new(net.clone());
        drv.up(features, 2, SIZE);
        Nic {
            drv,
            net,
            peer,
            next: [0, 0],
        }
    }

    fn net(&self) -> MutexGuard<'_, Net> {
        self.net.lock().unwrap()
    }

    /// Posts a chain of (addr, len, flags) on queue `q`; returns its head.
    fn post(&mut self, q: u16, descs: &[(u64, u32, u16)]) -> u16 {
        let head = self.next[q as usize];
        for (k, (addr, len, flags)) in descs.iter().enumerate() {
            let i = (head + k as u16) % SIZE;
            let last = k + 1 == descs.len();
            let flags = if last { *flags } else { flags | F_NEXT };
            self.drv.desc(q, i, *addr, *len, flags, (i + 1) % SIZE);
        }
        self.next[q as usize] = (head + descs.len() as u16) % SIZE;
        self.drv.make_available(q, head);
        head
    }

    /// Posts `n` one-descriptor receive buffers of `len` bytes, from
    /// `BUFFERS + 0x1000 * k`.
    fn post_rx(&mut self, n: u16, len: u32) -> Vec<u16> {
        (0..n)
            .map(|k| self.post(RX, &[(rx_buf(k), len, F_WRITE)]))
            .collect()
    }

    fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.drv.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    /// What the device wrote to the "TAP", if anything.
    fn sent(&self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 70000];
        let n = self.peer.recv(&mut buf).ok()?;
        buf.truncate(n);
        Some(buf)
    }
}

fn rx_buf(k: u16) -> u64 {
    BUFFERS + 0x10_0000 + 0x1000 * u64::from(k)
}

/// A header (flags 1, gso_type 0, a num_buffers the device must replace)
/// and an Ethernet frame of `len` bytes.
fn frame(len: usize) -> Vec<u8> {
    let mut f = vec![1u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xee, 0xee];
    f.extend((0..len).map(|i| (i % 251) as u8));
    f
}

#[test]
fn a_frame_in_three_descriptors_reaches_the_tap_whole() {
    let _t = turn();
    let (frames, bytes, errors) = (
        at(&METRICS.net.tx_frames),
        at(&METRICS.net.tx_bytes),
        at(&METRICS.net.tx_errors),
    );
    let mut n = Nic::new(F_MRG_RXBUF, NetOptions::default());
    let f = frame(60);
    n.drv
        .mem
        .write_slice(&f[..12], GuestAddress(BUFFERS))
        .unwrap();
    let eth = GuestAddress(BUFFERS + 0x100);
    n.drv.mem.write_slice(&f[12..26], eth).unwrap();
    let body = GuestAddress(BUFFERS + 0x200);
    n.drv.mem.write_slice(&f[26..], body).unwrap();
    let head = n.post(TX, &[(BUFFERS, 12, 0), (eth.0, 14, 0), (body.0, 46, 0)]);
    assert_eq!(n.net().process_tx(), 1);
    assert_eq!(n.sent().unwrap(), f, "header and frame, unchanged");
    assert_eq!(n.drv.used(TX, 0), (u32::from(head), 0));
    assert_eq!((frames(), bytes(), errors()), (1, 60, 0));
}

#[test]
fn malformed_transmit_chains_are_answered_counted_and_never_sent() {
    let _t = turn();
    let (frames, errors) = (at(&METRICS.net.tx_frames), at(&METRICS.net.tx_errors));
    let mut n = Nic::new(0, NetOptions::default());
    // Shorter than the header; outside guest memory; over 65562 bytes
    // (two descriptors of 40000); only device-writable buffers.
    n.post(TX, &[(BUFFERS, 8, 0)]);
    n.post(TX, &[(NOWHERE, 100, 0)]);
    n.post(TX, &[(BUFFERS, 40000, 0), (BUFFERS + 0x10000, 40000, 0)]);
    n.post(TX, &[(BUFFERS, 64, F_WRITE)]);
    assert_eq!(n.net().process_tx(), 4);
    assert_eq!(n.drv.used_idx(TX), 4, "every chain answered");
    assert_eq!(n.sent(), None, "nothing reached the TAP");
    assert_eq!((frames(), errors()), (0, 4));
    // The queue still works.
    n.drv
        .mem
        .write_slice(&frame(20), GuestAddress(BUFFERS))
        .unwrap();
    n.post(TX, &[(BUFFERS, 32, 0)]);
    n.net().process_tx();
    assert_eq!(n.sent().unwrap().len(), 32);
    assert_eq!((frames(), errors()), (1, 4));
}

#[test]
fn a_frame_spans_merged_buffers_and_says_how_many() {
    let _t = turn();
    let (frames, bytes) = (at(&METRICS.net.rx_frames), at(&METRICS.net.rx_bytes));
    let mut n = Nic::new(F_MRG_RXBUF, NetOptions::default());
    let heads = n.post_rx(3, 48);
    let f = frame(100); // 112 bytes with the header: 48 + 48 + 16
    n.peer.send(&f).unwrap();
    assert_eq!(n.net().process_rx(), RxState::Watch);
    assert_eq!(n.drv.used_idx(RX), 3);
    let lens: Vec<_> = (0..3).map(|i| n.drv.used(RX, i)).collect();
    assert_eq!(
        lens,
        vec![
            (u32::from(heads[0]), 48),
            (u32::from(heads[1]), 48),
            (u32::from(heads[2]), 16)
        ]
    );
    let mut got = n.read(rx_buf(0), 48);
    got.extend(n.read(rx_buf(1), 48));
    got.extend(n.read(rx_buf(2), 16));
    assert_eq!(&got[10..12], &3u16.to_le_bytes(), "num_buffers");
    assert_eq!(&got[..10], &f[..10], "the TAP's header, passed through");
    assert_eq!(&got[12..], &f[12..]);
    assert_eq!((frames(), bytes()), (1, 100));
    assert!(n.drv.irq.read().is_ok(), "the guest was interrupted");
}

#[test]
fn without_merged_buffers_one_chain_holds_one_frame() {
    let _t = turn();
    let dropped = at(&METRICS.net.rx_dropped);
    let mut n = Nic::new(0, NetOptions::default());
    // Too small for the first frame, which is dropped; the chain stays
    // for the next one.
    n.post_rx(1, 64);
    n.peer.send(&frame(100)).unwrap();
    n.peer.send(&frame(40)).unwrap();
    assert_eq!(n.net().process_rx(), RxState::Watch);
    assert_eq!(dropped(), 1);
    assert_eq!(n.drv.used_idx(RX), 1);
    assert_eq!(n.drv.used(RX, 0).1, 52);
    let got = n.read(rx_buf(0), 52);
    assert_eq!(&got[10..12], &1u16.to_le_bytes(), "num_buffers is 1");
    assert_eq!(&got[12..], &frame(40)[12..]);
}

#[test]
fn with_no_buffers_the_tap_is_left_alone_until_the_guest_adds_some() {
    let _t = turn();
    let frames = at(&METRICS.net.rx_frames);
    let mut n = Nic::new(F_MRG_RXBUF, NetOptions::default());
    // Nothing waiting and no buffers: keep watching.
    assert_eq!(n.net().process_rx(), RxState::Watch);
    n.peer.send(&frame(100)).unwrap();
    assert_eq!(n.net().process_rx(), RxState::NeedBuffers);
    assert!(!n.net().has_pending_frame(), "nothing read");
    assert!(n.net().tap.readable(), "the frame waits in the TAP");
    // One 16-byte buffer is not enough for 112 bytes: the frame is read
    // and kept, the buffer stays the driver's.
    n.post_rx(1, 16);
    assert_eq!(n.net().process_rx(), RxState::NeedBuffers);
    assert!(n.net().has_pending_frame());
    assert_eq!(n.drv.used_idx(RX), 0);
    // Six more make seven: 7 * 16 = 112.
    n.post_rx(6, 16);
    assert_eq!(n.net().process_rx(), RxState::Watch);
    assert!(!n.net().has_pending_frame());
    assert_eq!(n.drv.used_idx(RX), 7);
    assert_eq!(&n.read(rx_buf(0), 12)[10..12], &7u16.to_le_bytes());
    assert_eq!(frames(), 1);
}

#[test]
fn malformed_receive_buffers_are_answered_and_counted() {
    let _t = turn();
    let (errors, frames) = (at(&METRICS.net.rx_errors), at(&METRICS.net.rx_frames));
    let mut n = Nic::new(F_MRG_RXBUF, NetOptions::default());
    // Too short for the header; read-only; outside guest memory; then a
    // good one.
    let short = n.post(RX, &[(rx_buf(0), 4, F_WRITE)]);
    let ro = n.post(RX, &[(rx_buf(1), 64, 0)]);
    let out = n.post(RX, &[(NOWHERE, 64, F_WRITE)]);
    let good = n.post(RX, &[(rx_buf(3), 256, F_WRITE)]);
    n.peer.send(&frame(50)).unwrap();
    assert_eq!(n.net().process_rx(), RxState::Watch);
    let used: Vec<_> = (0..4).map(|i| n.drv.used(RX, i)).collect();
    assert_eq!(
        used,
        vec![
            (u32::from(short), 0),
            (u32::from(ro), 0),
            (u32::from(out), 0),
            (u32::from(good), 62)
        ]
    );
    assert_eq!(&n.read(rx_buf(3), 12)[10..12], &1u16.to_le_bytes());
    assert_eq!(n.read(rx_buf(1), 64), vec![0u8; 64], "read-only untouched");
    assert_eq!((errors(), frames()), (3, 1));
}

#[test]
fn a_frame_no_ring_could_hold_is_dropped_not_kept() {
    let _t = turn();
    let (dropped, frames) = (at(&METRICS.net.rx_dropped), at(&METRICS.net.rx_frames));
    let mut n = Nic::new(F_MRG_RXBUF, NetOptions::default());
    // A full ring of 12-byte buffers holds 192 bytes; the frame is 512.
    n.post_rx(SIZE, 12);
    n.peer.send(&frame(500)).unwrap();
    n.peer.send(&frame(30)).unwrap();
    assert_eq!(n.net().process_rx(), RxState::Watch);
    assert!(!n.net().has_pending_frame());
    assert_eq!(dropped(), 1);
    // The small one took 4 of the buffers (42 bytes).
    assert_eq!((frames(), n.drv.used_idx(RX)), (1, 4));
}

#[test]
fn config_space_features_and_offloads_follow_the_options() {
    let _t = turn();
    let mac = [0x06, 0, 0xac, 0x10, 0, 2];
    let options = NetOptions {
        guest_mac: Some(mac),
        mtu: Some(1400),
        ..NetOptions::default()
    };
    let n = Nic::new(F_MAC | F_MTU | F_GUEST_CSUM | F_GUEST_TSO4, options);
    let f = n.net().avail_features();
    assert_eq!(f & (F_MAC | F_MTU), F_MAC | F_MTU);
    let mut cfg = [0u8; 12];
    n.net().read_config(0, &mut cfg);
    assert_eq!(&cfg[..6], &mac);
    assert_eq!(u16::from_le_bytes([cfg[10], cfg[11]]), 1400);
    assert_eq!(
        n.net().offloads(),
        Some(libc::TUN_F_CSUM | libc::TUN_F_TSO4)
    );
    let plain = Nic::new(0, NetOptions::default());
    assert_eq!(plain.net().avail_features() & (F_MAC | F_MTU), 0);
    assert_eq!(plain.net().offloads(), Some(0));
    // TSO or UFO without checksum offload means nothing to the TAP.
    assert_eq!(tap_offloads(F_GUEST_TSO4 | F_GUEST_UFO), 0);
    assert_eq!(
        tap_offloads(F_GUEST_CSUM | F_GUEST_UFO),
        libc::TUN_F_CSUM | libc::TUN_F_UFO
    );
}

#[test]
fn a_reset_drops_the_frame_that_waited_and_counts_it() {
    let _t = turn();
    let dropped = at(&METRICS.net.rx_dropped);
    let mut n = Nic::new(F_MRG_RXBUF, NetOptions::default());
    n.post_rx(1, 16);
    n.peer.send(&frame(100)).unwrap();
    assert_eq!(n.net().process_rx(), RxState::NeedBuffers);
    assert!(n.net().has_pending_frame());
    n.drv.write_reg(reg::STATUS, 0);
    assert!(!n.net().has_pending_frame());
    assert_eq!(dropped(), 1);
    // No queues now: a frame waits in the TAP.
    assert_eq!(n.net().process_rx(), RxState::Watch);
    n.peer.send(&frame(10)).unwrap();
    assert_eq!(n.net().process_rx(), RxState::NeedBuffers);
    assert!(n.net().tap.readable());
}

#[test]
fn on_the_event_loop_a_paused_tap_is_not_watched_and_comes_back() {
    use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
    let _t = turn();
    let (paused, frames) = (at(&METRICS.net.rx_paused), at(&METRICS.net.rx_frames));
    let mut n = Nic::new(F_MRG_RXBUF, NetOptions::default());
    let mut events: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
        EventManager::new().unwrap();
    events.add_subscriber(n.net.clone());
    // The activation's own notifications: nothing to do yet.
    events.run_with_timeout(0).unwrap();
    assert!(n.net().tap_watched);
    // A frame and no buffers: the TAP is switched off, and stays quiet.
    n.peer.send(&frame(100)).unwrap();
    assert_eq!(events.run_with_timeout(100).unwrap(), 1);
    assert!(!n.net().tap_watched);
    assert_eq!(paused(), 1);
    assert_eq!(events.run_with_timeout(20).unwrap(), 0, "no busy loop");
    // The driver adds buffers and notifies: the frame goes, the TAP is
    // watched again.
    n.post_rx(4, 64);
    n.drv.write_reg(reg::QUEUE_NOTIFY, u32::from(RX));
    assert_eq!(events.run_with_timeout(100).unwrap(), 1);
    assert!(n.net().tap_watched);
    assert_eq!((frames(), n.drv.used_idx(RX)), (1, 2));
    // Transmit through the loop too.
    n.drv
        .mem
        .write_slice(&frame(20), GuestAddress(BUFFERS))
        .unwrap();
    n.post(TX, &[(BUFFERS, 32, 0)]);
    n.drv.write_reg(reg::QUEUE_NOTIFY, u32::from(TX));
    events.run_with_timeout(100).unwrap();
    assert_eq!(n.sent().unwrap(), frame(20));
    assert_eq!(paused(), 1);
}

#[test]
fn a_tap_that_hangs_up_leaves_the_loop_for_good() {
    use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
    use std::os::fd::AsRawFd;
    let _t = turn();
    let errors = at(&METRICS.net.rx_errors);
    let n = Nic::new(F_MRG_RXBUF, NetOptions::default());
    let mut events: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
        EventManager::new().unwrap();
    events.add_subscriber(n.net.clone());
    events.run_with_timeout(0).unwrap();
    // What a deleted interface looks like to epoll: a hang-up.
    let fd = n.net().tap.as_raw_fd();
    // SAFETY: shutdown on a socket the device owns; no memory is passed.
    assert_eq!(unsafe { libc::shutdown(fd, libc::SHUT_RDWR) }, 0);
    assert_eq!(events.run_with_timeout(100).unwrap(), 1);
    assert!(n.net().tap_dead);
    assert_eq!(errors(), 1);
    assert_eq!(events.run_with_timeout(20).unwrap(), 0, "no busy loop");
}

type Loop = event_manager::EventManager<Arc<Mutex<dyn event_manager::MutEventSubscriber + Send>>>;

/// An event loop with the device on it, past the activation's own
/// notifications.
fn on_a_loop(n: &Nic) -> Loop {
    use event_manager::SubscriberOps;
    let mut events = Loop::new().unwrap();
    events.add_subscriber(n.net.clone());
    events.run_with_timeout(0).unwrap();
    events
}

fn limiter(json: &str) -> crate::vmm::devices::rate_limiter::RateLimiterConfig {
    serde_json::from_str(json).unwrap()
}

/// Runs the loop until `done` or five seconds have passed.
fn run_until(events: &mut Loop, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "never happened");
        events.run_with_timeout(100).unwrap();
    }
}

#[test]
fn the_transmit_limiter_holds_a_chain_in_the_ring_until_its_timer_fires() {
    let _t = turn();
    let (limited, frames) = (at(&METRICS.net.tx_rate_limited), at(&METRICS.net.tx_frames));
    let options = NetOptions {
        tx_rate_limiter: limiter(r#"{"ops": {"size": 1, "refill_time": 50}}"#),
        ..NetOptions::default()
    };
    let mut n = Nic::new(F_MRG_RXBUF, options);
    let mut events = on_a_loop(&n);
    for k in 0..2u64 {
        let at = GuestAddress(BUFFERS + 0x1000 * k);
        n.drv.mem.write_slice(&frame(20), at).unwrap();
        n.post(TX, &[(at.0, 32, 0)]);
    }
    n.drv.write_reg(reg::QUEUE_NOTIFY, u32::from(TX));
    events.run_with_timeout(100).unwrap();
    assert_eq!(n.drv.used_idx(TX), 1, "the second frame waits");
    assert!(n.sent().is_some() && n.sent().is_none());
    assert_eq!(limited(), 1);
    // The timer fires within the refill time and the frame goes.
    run_until(&mut events, || n.drv.used_idx(TX) == 2);
    assert_eq!(n.sent().unwrap(), frame(20));
    assert_eq!(frames(), 2);
}

#[test]
fn the_receive_limiter_keeps_one_frame_and_leaves_the_rest_in_the_tap() {
    let _t = turn();
    let (limited, frames, paused) = (
        at(&METRICS.net.rx_rate_limited),
        at(&METRICS.net.rx_frames),
        at(&METRICS.net.rx_paused),
    );
    // 100 bytes per 50 ms: one frame of 100 bytes at a time.
    let options = NetOptions {
        rx_rate_limiter: limiter(r#"{"bandwidth": {"size": 100, "refill_time": 50}}"#),
        ..NetOptions::default()
    };
    let mut n = Nic::new(F_MRG_RXBUF, options);
    n.post_rx(SIZE, 256);
    let mut events = on_a_loop(&n);
    for _ in 0..3 {
        n.peer.send(&frame(100)).unwrap();
    }
    events.run_with_timeout(100).unwrap();
    assert_eq!(n.drv.used_idx(RX), 1);
    assert!(n.net().has_pending_frame(), "the second frame is kept");
    assert!(n.net().tap.readable(), "the third waits in the TAP");
    assert!(!n.net().tap_watched, "the TAP is not read meanwhile");
    assert_eq!(limited(), 1);
    assert_eq!(events.run_with_timeout(10).unwrap(), 0, "no busy loop");
    // A notification from the driver does not get past the limiter.
    n.drv.write_reg(reg::QUEUE_NOTIFY, u32::from(RX));
    events.run_with_timeout(10).unwrap();
    assert_eq!(n.drv.used_idx(RX), 1);
    // The timer lets the others through, one per refill.
    run_until(&mut events, || n.drv.used_idx(RX) == 3);
    assert_eq!(frames(), 3);
    assert_eq!(&n.read(rx_buf(2), 112)[12..], &frame(100)[12..]);
    assert_eq!(paused(), 0, "throttling is not a want of buffers");
    run_until(&mut events, || n.net().tap_watched);
}

#[test]
fn a_new_limit_applies_at_once_to_what_the_old_one_held() {
    let _t = turn();
    let options = NetOptions {
        rx_rate_limiter: limiter(r#"{"ops": {"size": 1, "refill_time": 60000}}"#),
        tx_rate_limiter: limiter(r#"{"ops": {"size": 1, "refill_time": 60000}}"#),
        ..NetOptions::default()
    };
    let mut n = Nic::new(F_MRG_RXBUF, options);
    n.post_rx(4, 256);
    let mut events = on_a_loop(&n);
    n.peer.send(&frame(10)).unwrap();
    n.peer.send(&frame(10)).unwrap();
    for k in 0..2u64 {
        let at = GuestAddress(BUFFERS + 0x1000 * k);
        n.drv.mem.write_slice(&frame(20), at).unwrap();
        n.post(TX, &[(at.0, 32, 0)]);
    }
    n.drv.write_reg(reg::QUEUE_NOTIFY, u32::from(TX));
    events.run_with_timeout(100).unwrap();
    events.run_with_timeout(100).unwrap();
    assert_eq!((n.drv.used_idx(RX), n.drv.used_idx(TX)), (1, 1));
    // A bad limit changes nothing.
    let bad = limiter(r#"{"ops": {"size": 1, "refill_time": 0}}"#);
    assert!(n.net().update_rate_limiters(None, Some(&bad)).is_err());
    let none = limiter("{}");
    {
        let mut net = n.net();
        net.update_rate_limiters(Some(&none), Some(&none)).unwrap();
        net.retry_after_update();
    }
    run_until(&mut events, || {
        n.drv.used_idx(RX) == 2 && n.drv.used_idx(TX) == 2
    });
    assert!(n.net().tap_watched);
}

#[path = "persist_tests.rs"]
mod persist_tests;
