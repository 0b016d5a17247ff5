//! virtio-vsock across a snapshot: the connections end (the guest hears
//! TRANSPORT_RESET on its event queue), and new ones, both ways, work on
//! the restored device at its new `uds_path`.

use super::*;
use crate::vmm::devices::virtio::persist::MmioState;
use crate::vmm::devices::virtio::INT_USED_RING;
use crate::vmm::snapshot::Persist;

const EVQ: u16 = 2;
const EVENT_BUF: u64 = BUFFERS + 0x40_0000;

impl Guest {
    /// This guest after a snapshot and restore: the saved transport state
    /// (through its file encoding) applied to a new device, bound at a new
    /// `uds_path` and run by a new event loop, over the same guest memory.
    fn snapshot_and_restore(&self, name: &str) -> Guest {
        let bytes = postcard::to_stdvec(&Persist::save(&self.drv.transport)).unwrap();
        let state: MmioState = postcard::from_bytes(&bytes).unwrap();
        let dir = std::env::temp_dir().join(format!("husk-vsock-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let uds = dir.join("v.sock");
        let dev = Arc::new(Mutex::new(Vsock::bind(CID, &uds).unwrap()));
        dev.lock().unwrap().muxer.timeout = Duration::from_millis(50);
        let mut events = Loop::new().unwrap();
        events.add_subscriber(dev.clone());
        let mut drv = self.drv.restored(dev.clone());
        drv.transport.restore(&state).unwrap();
        Guest {
            drv,
            dev,
            events,
            dir,
            uds,
            rx_seen: self.rx_seen,
            repost: self.repost,
            consume: self.consume,
            buf_alloc: self.buf_alloc,
            fwd: HashMap::new(),
        }
    }

    /// Posts event buffer `i` (8 bytes, filled with 0xff) on the event queue.
    fn post_event(&mut self, i: u16) {
        let addr = EVENT_BUF + u64::from(i) * 8;
        self.drv
            .mem
            .write_slice(&[0xff; 8], GuestAddress(addr))
            .unwrap();
        self.drv.desc(EVQ, i, addr, 8, F_WRITE, 0);
        self.drv.make_available(EVQ, i);
    }

    /// The events the device put on the event queue: (buffer, length, id).
    fn events(&self) -> Vec<(u32, u32, u32)> {
        (0..self.drv.used_idx(EVQ))
            .map(|n| {
                let (id, len) = self.drv.used(EVQ, n);
                let addr = EVENT_BUF + u64::from(id) * 8;
                let event: u32 = self.drv.mem.read_obj(GuestAddress(addr)).unwrap();
                (id, len, event)
            })
            .collect()
    }
}

#[test]
fn connections_end_with_a_transport_reset_and_new_ones_work_after_a_restore() {
    let mut g = Guest::new("snap-a");
    g.post_event(0);
    g.post_event(1);
    g.notify(EVQ);
    assert!(g.events().is_empty(), "no event before a restore");
    let (mut c, local) = g.open_from_host(1234);
    c.write_all(b"before").unwrap();
    assert_eq!(g.rx()[0].1, b"before");
    let l = UnixListener::bind(g.port_path(5000)).unwrap();
    let _h = g.open_from_guest(&l, 777, 5000);
    while g.drv.irq.read().is_ok() {}

    let mut r = g.snapshot_and_restore("snap-b");
    assert_eq!(r.vsock().connection_count(), 0);
    assert!(r.drv.irq.read().is_err(), "nothing raised by the restore");
    r.pump();
    assert_eq!(
        r.events(),
        vec![(0, 4, super::super::device::EVENT_TRANSPORT_RESET)]
    );
    assert!(r.drv.irq.read().is_ok(), "the guest is interrupted");
    assert_ne!(r.drv.read_reg(reg::INTERRUPT_STATUS) & INT_USED_RING, 0);
    // Once only.
    r.notify(EVQ);
    assert_eq!(r.events().len(), 1);
    // A packet for a connection from before gets an RST.
    r.send(r.hdr(OP_RW, 1234, local), b"late");
    assert_eq!(ops(&r.rx()), vec![OP_RST]);
    // New streams both ways, at the new paths, on the rings as they were.
    let (mut c2, local2) = r.open_from_host(1234);
    r.send(r.hdr(OP_RW, 1234, local2), b"after");
    assert_eq!(read_now(&mut c2), b"after");
    let l2 = UnixListener::bind(r.port_path(5000)).unwrap();
    let mut h2 = r.open_from_guest(&l2, 778, 5000);
    h2.write_all(b"hello again").unwrap();
    let p = r.rx();
    assert_eq!(ops(&p), vec![OP_RW]);
    assert_eq!(p[0].1, b"hello again");
    assert_eq!(r.vsock().connection_count(), 2);
}

#[test]
fn the_transport_reset_waits_for_an_event_buffer() {
    let g = Guest::new("snap-c");
    let mut r = g.snapshot_and_restore("snap-d");
    r.pump();
    assert!(r.events().is_empty());
    r.post_event(0);
    r.notify(EVQ);
    assert_eq!(r.events(), vec![(0, 4, 0)]);
}
