//! The transport driven as Linux's driver drives it, over guest memory
//! built in the test, with a real device (virtio-rng) behind it.

use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::vmm::devices::virtio::rng::Rng;
use crate::vmm::devices::virtio::test_utils::{self as tu, F_NEXT, F_WRITE};
use crate::vmm::devices::virtio::{INT_USED_RING, TYPE_RNG};

const BUF: u64 = tu::BUFFERS;
const QSIZE: u16 = 16;
const DESC: u64 = 0x1000;

/// The shared test driver, with the rng device it drives.
struct Driver {
    d: tu::Driver,
    rng: Arc<Mutex<Rng>>,
}

impl Driver {
    fn new() -> Driver {
        let rng = Arc::new(Mutex::new(Rng::new(&Default::default()).unwrap()));
        Driver {
            d: tu::Driver::new(rng.clone()),
            rng,
        }
    }
    fn r(&mut self, off: u64) -> u32 {
        self.d.read_reg(off)
    }
    fn w(&mut self, off: u64, v: u32) {
        self.d.write_reg(off, v)
    }
    fn negotiate(&mut self, f: u64) -> u32 {
        self.d.negotiate(f)
    }
    fn setup_queue(&mut self, size: u32, desc: u64) {
        self.d.setup_queue_at(0, size, desc)
    }
    fn driver_ok(&mut self) -> u32 {
        self.d.driver_ok()
    }
    fn up(&mut self) {
        self.d.up(0, 1, QSIZE)
    }
    fn desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        self.d.desc(0, i, addr, len, flags, next)
    }
    fn offer(&mut self, head: u16) {
        self.d.make_available(0, head);
        self.w(reg::QUEUE_NOTIFY, 0);
        self.rng.lock().unwrap().process_queue();
    }
    fn used_idx(&self) -> u16 {
        self.d.used_idx(0)
    }
    fn used(&self, n: u16) -> (u32, u32) {
        self.d.used(0, n)
    }
}

#[test]
fn identity_registers() {
    let mut d = Driver::new();
    assert_eq!(d.r(reg::MAGIC), MAGIC_VALUE);
    assert_eq!(d.r(reg::VERSION), 2);
    assert_eq!(d.r(reg::DEVICE_ID), TYPE_RNG);
    d.w(reg::DEVICE_FEATURES_SEL, 1);
    assert_eq!(d.r(reg::DEVICE_FEATURES) & 1, 1, "VERSION_1 offered");
    // Narrow or unaligned register reads get zeros.
    let mut b = [0xffu8; 2];
    d.d.transport.read(reg::MAGIC, &mut b);
    assert_eq!(b, [0, 0]);
    assert_eq!(d.r(reg::MAGIC + 1), 0);
}

#[test]
fn a_request_is_filled_with_random_bytes_and_interrupts() {
    let mut d = Driver::new();
    d.up();
    d.desc(0, BUF, 32, F_WRITE, 0);
    d.offer(0);
    assert_eq!(d.used_idx(), 1);
    assert_eq!(d.used(0), (0, 32));
    let mut got = [0u8; 32];
    d.d.mem.read_slice(&mut got, GuestAddress(BUF)).unwrap();
    assert_ne!(got, [0u8; 32]);
    assert_eq!(d.r(reg::INTERRUPT_STATUS), INT_USED_RING);
    assert_eq!(d.d.irq.read().unwrap(), 1, "the irqfd fired");
    d.w(reg::INTERRUPT_ACK, INT_USED_RING);
    assert_eq!(d.r(reg::INTERRUPT_STATUS), 0);
}

#[test]
fn features_the_device_does_not_offer_or_no_version_1_are_refused() {
    let mut d = Driver::new();
    assert_eq!(
        d.negotiate(VIRTIO_F_VERSION_1 | 1 << 40) & status::FEATURES_OK,
        0
    );
    assert_eq!(d.negotiate(0) & status::FEATURES_OK, 0);
    assert_ne!(d.negotiate(VIRTIO_F_VERSION_1) & status::FEATURES_OK, 0);
}

#[test]
fn status_only_grows_until_a_reset() {
    let mut d = Driver::new();
    d.up();
    d.w(reg::STATUS, status::ACKNOWLEDGE);
    assert_ne!(
        d.r(reg::STATUS) & status::DRIVER_OK,
        0,
        "bits cannot be cleared"
    );
    d.w(reg::STATUS, 0);
    assert_eq!(d.r(reg::STATUS), 0);
    assert_eq!(d.r(reg::QUEUE_READY), 0, "queues reset too");
    // After a reset the device works again from scratch.
    d.up();
    d.desc(0, BUF, 8, F_WRITE, 0);
    d.offer(0);
    assert_eq!(d.used(0), (0, 8));
}

#[test]
fn bad_queues_make_driver_ok_fail_with_needs_reset() {
    // A size that is not a power of two.
    let mut d = Driver::new();
    d.negotiate(VIRTIO_F_VERSION_1);
    d.setup_queue(10, DESC);
    let s = d.driver_ok();
    assert_eq!(s & status::DRIVER_OK, 0);
    assert_ne!(s & status::DEVICE_NEEDS_RESET, 0);
    assert_ne!(d.r(reg::INTERRUPT_STATUS) & super::super::INT_CONFIG, 0);
    // A descriptor table outside guest memory.
    let mut d = Driver::new();
    d.negotiate(VIRTIO_F_VERSION_1);
    d.setup_queue(u32::from(QSIZE), 0xffff_0000_0000);
    assert_ne!(d.driver_ok() & status::DEVICE_NEEDS_RESET, 0);
    // Queue registers are read-only before FEATURES_OK.
    let mut d = Driver::new();
    d.setup_queue(u32::from(QSIZE), DESC);
    assert_eq!(d.r(reg::QUEUE_READY), 0);
}

#[test]
fn hostile_descriptors_get_nothing_and_never_hang() {
    let before = crate::vmm::metrics::METRICS.rng.errors.get();
    let mut d = Driver::new();
    d.up();
    // A buffer outside guest memory.
    d.desc(0, 0xffff_0000, 32, F_WRITE, 0);
    d.offer(0);
    assert_eq!(d.used(0), (0, 0));
    // A chain that loops on itself ends after at most the queue size.
    d.desc(1, BUF, 8, F_WRITE | F_NEXT, 1);
    d.offer(1);
    assert_eq!(d.used_idx(), 2);
    let (id, len) = d.used(1);
    assert_eq!(id, 1);
    assert!(len <= 8 * u32::from(QSIZE), "{len}");
    // A device-readable buffer is not written.
    d.d.mem
        .write_slice(&[0u8; 16], GuestAddress(BUF + 0x100))
        .unwrap();
    d.desc(2, BUF + 0x100, 16, 0, 0);
    d.offer(2);
    assert_eq!(d.used(2), (2, 0));
    // A head index past the queue.
    d.offer(QSIZE + 3);
    assert!(crate::vmm::metrics::METRICS.rng.errors.get() >= before + 2);
    // The device still serves a good request after all that.
    d.desc(4, BUF, 4, F_WRITE, 0);
    d.offer(4);
    let n = d.used_idx();
    assert_eq!(d.used(n - 1), (4, 4));
}

#[test]
fn a_guest_notifying_in_a_tight_loop_costs_nothing_extra() {
    let mut d = Driver::new();
    d.up();
    for _ in 0..10_000 {
        d.w(reg::QUEUE_NOTIFY, 0);
        d.w(reg::QUEUE_NOTIFY, 7);
    }
    // Event fds count, they do not queue: one read drains them all.
    let rng = d.rng.lock().unwrap();
    assert_eq!(rng.queue_events()[0].read().unwrap(), 10_000);
}
