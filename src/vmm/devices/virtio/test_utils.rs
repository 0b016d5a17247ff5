//! A virtio driver in the host process, for unit tests, benchmarks and
//! fuzz targets: guest memory built in place, a device behind the real
//! transport, queues set up the way Linux's driver does.
//!
//! Layout of the test's guest memory: queue `q`'s descriptor table at
//! `0x1000 + q * 0x4000`, its avail ring 0x1000 after that and its used
//! ring 0x2000 after; buffers from [`BUFFERS`] up.

use std::sync::{Arc, Mutex};

use crate::vmm::kvm::memory::GuestMem;
use vm_memory::{Address, Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::mmio::{reg, status, MmioTransport};
use super::{VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1};
use crate::vmm::devices::{BusDevice, IrqTrigger};

/// Where tests put their buffers.
pub const BUFFERS: u64 = 0x10_0000;
/// Guest memory the driver builds.
pub const MEM_SIZE: usize = 16 << 20;
pub const F_NEXT: u16 = 1;
pub const F_WRITE: u16 = 2;

/// Guest addresses of queue `q`'s rings.
pub fn rings(q: u16) -> (u64, u64, u64) {
    let base = 0x1000 + u64::from(q) * 0x4000;
    (base, base + 0x1000, base + 0x2000)
}

pub struct Driver {
    pub transport: MmioTransport,
    pub mem: GuestMem,
    /// The device's irqfd, as KVM would see it.
    pub irq: EventFd,
    sizes: Vec<u16>,
}

impl Driver {
    /// A driver for `device`, not yet initialised.
    pub fn new(device: Arc<Mutex<dyn VirtioDevice>>) -> Driver {
        let mem = crate::vmm::kvm::memory::anonymous(&[(GuestAddress(0), MEM_SIZE)])
            .expect("test guest memory");
        Self::with_mem(device, mem)
    }

    /// The same driver, as it finds itself after a snapshot restore: the
    /// same guest memory and queues, in front of `device` and a fresh
    /// transport (to which the test then applies the saved state).
    pub fn restored(&self, device: Arc<Mutex<dyn VirtioDevice>>) -> Driver {
        let mut d = Self::with_mem(device, self.mem.clone());
        d.sizes.clone_from(&self.sizes);
        d
    }

    /// A driver for `device` on guest memory of the test's making.
    pub fn with_mem(device: Arc<Mutex<dyn VirtioDevice>>, mem: GuestMem) -> Driver {
        let irq = EventFd::new(EFD_NONBLOCK).expect("event fd");
        let trigger = IrqTrigger(irq.try_clone().expect("event fd"));
        let transport =
            MmioTransport::new(device, mem.clone(), Arc::new(VirtioInterrupt::new(trigger)));
        Driver {
            transport,
            mem,
            irq,
            sizes: Vec::new(),
        }
    }

    pub fn read_reg(&mut self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.transport.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    pub fn write_reg(&mut self, off: u64, v: u32) {
        self.transport.write(off, &v.to_le_bytes());
    }

    /// Reset, ACKNOWLEDGE, DRIVER, features, FEATURES_OK; returns the
    /// status read back.
    pub fn negotiate(&mut self, features: u64) -> u32 {
        self.write_reg(reg::STATUS, 0);
        self.write_reg(reg::STATUS, status::ACKNOWLEDGE);
        self.write_reg(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        self.write_reg(reg::DRIVER_FEATURES_SEL, 0);
        self.write_reg(reg::DRIVER_FEATURES, features as u32);
        self.write_reg(reg::DRIVER_FEATURES_SEL, 1);
        self.write_reg(reg::DRIVER_FEATURES, (features >> 32) as u32);
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        self.write_reg(reg::STATUS, s);
        self.read_reg(reg::STATUS)
    }

    /// Sets up queue `q` with `size` entries and its rings at `desc`
    /// (and the default avail and used rings).
    pub fn setup_queue_at(&mut self, q: u16, size: u32, desc: u64) {
        let (_, avail, used) = rings(q);
        self.write_reg(reg::QUEUE_SEL, u32::from(q));
        self.write_reg(reg::QUEUE_NUM, size);
        for (low, addr) in [
            (reg::QUEUE_DESC_LOW, desc),
            (reg::QUEUE_DRIVER_LOW, avail),
            (reg::QUEUE_DEVICE_LOW, used),
        ] {
            self.write_reg(low, addr as u32);
            self.write_reg(low + 4, (addr >> 32) as u32);
        }
        self.write_reg(reg::QUEUE_READY, 1);
        let i = usize::from(q);
        if self.sizes.len() <= i {
            self.sizes.resize(i + 1, 0);
        }
        self.sizes[i] = size as u16;
    }

    /// Sets DRIVER_OK; returns the status read back.
    pub fn driver_ok(&mut self) -> u32 {
        let s = self.read_reg(reg::STATUS);
        self.write_reg(reg::STATUS, s | status::DRIVER_OK);
        self.read_reg(reg::STATUS)
    }

    /// The whole bring-up with `queues` queues of `size` entries; panics
    /// if the device refuses.
    pub fn up(&mut self, features: u64, queues: u16, size: u16) {
        let s = self.negotiate(features | VIRTIO_F_VERSION_1);
        assert_ne!(s & status::FEATURES_OK, 0, "FEATURES_OK refused");
        for q in 0..queues {
            self.setup_queue_at(q, u32::from(size), rings(q).0);
        }
        assert_ne!(self.driver_ok() & status::DRIVER_OK, 0, "DRIVER_OK refused");
    }

    /// Writes descriptor `i` of queue `q`.
    pub fn desc(&self, q: u16, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = GuestAddress(rings(q).0 + u64::from(i) * 16);
        let m = &self.mem;
        m.write_obj(addr, at).expect("descriptor");
        m.write_obj(len, at.unchecked_add(8)).expect("descriptor");
        m.write_obj(flags, at.unchecked_add(12))
            .expect("descriptor");
        m.write_obj(next, at.unchecked_add(14)).expect("descriptor");
    }

    /// Makes chain `head` of queue `q` available (without notifying).
    pub fn make_available(&self, q: u16, head: u16) {
        let (_, avail, _) = rings(q);
        let size = self.sizes.get(usize::from(q)).copied().unwrap_or(1).max(1);
        let idx: u16 = self.mem.read_obj(GuestAddress(avail + 2)).expect("avail");
        let slot = avail + 4 + u64::from(idx % size) * 2;
        self.mem.write_obj(head, GuestAddress(slot)).expect("avail");
        self.mem
            .write_obj(idx.wrapping_add(1), GuestAddress(avail + 2))
            .expect("avail");
    }

    /// The used ring's index of queue `q`.
    pub fn used_idx(&self, q: u16) -> u16 {
        self.mem
            .read_obj(GuestAddress(rings(q).2 + 2))
            .expect("used")
    }

    /// (id, len) of used entry `n` of queue `q`.
    pub fn used(&self, q: u16, n: u16) -> (u32, u32) {
        let size = self.sizes.get(usize::from(q)).copied().unwrap_or(1).max(1);
        let at = rings(q).2 + 4 + u64::from(n % size) * 8;
        (
            self.mem.read_obj(GuestAddress(at)).expect("used"),
            self.mem.read_obj(GuestAddress(at + 4)).expect("used"),
        )
    }
}
