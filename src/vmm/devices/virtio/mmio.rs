//! The virtio-mmio transport (virtio 1.x, section 4.2.2: the modern
//! "version 2" register layout), shared by every device.
//!
//! It runs on the vCPU threads: feature negotiation, queue set-up and the
//! device status state machine. Status only moves forward (each write
//! keeps every bit already set) until the driver writes 0, which resets
//! the device. FEATURES_OK is refused (left clear) when the driver accepts
//! features the device does not offer or leaves out VIRTIO_F_VERSION_1.
//! On DRIVER_OK the device is activated; if its queues are invalid or it
//! cannot start, the transport sets DEVICE_NEEDS_RESET and raises a
//! configuration-change interrupt, as the spec asks.
//! Snapshots of the transport are in [`super::persist`].

use std::sync::{Arc, Mutex, MutexGuard};

use crate::vmm::kvm::memory::GuestMem;
use virtio_queue::{Queue, QueueT};

use super::{ActiveQueues, VirtioDevice, VirtioInterrupt, INT_CONFIG, VIRTIO_F_VERSION_1};
use crate::vmm::devices::BusDevice;

pub const MAGIC_VALUE: u32 = 0x7472_6976; // "virt"
pub const MMIO_VERSION: u32 = 2;
pub const VENDOR_ID: u32 = 0x4b53_5548; // "HUSK"

pub mod reg {
    pub const MAGIC: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    pub const FAILED: u32 = 0x80;
}

/// The transport of one device.
pub struct MmioTransport {
    pub(super) device: Arc<Mutex<dyn VirtioDevice>>,
    pub(super) mem: GuestMem,
    pub(super) interrupt: Arc<VirtioInterrupt>,
    pub(super) queues: Vec<Queue>,
    /// Queues the driver gave a size that is zero, too large or not a
    /// power of two: DRIVER_OK then fails.
    pub(super) bad_size: Vec<bool>,
    pub(super) status: u32,
    pub(super) device_features_sel: u32,
    pub(super) driver_features_sel: u32,
    pub(super) driver_features: u64,
    pub(super) queue_sel: u32,
    pub(super) activated: bool,
}

impl MmioTransport {
    pub fn new(
        device: Arc<Mutex<dyn VirtioDevice>>,
        mem: GuestMem,
        interrupt: Arc<VirtioInterrupt>,
    ) -> Self {
        let queues: Vec<Queue> = lock(&device)
            .queue_max_sizes()
            .iter()
            // A size of 0 or one that is not a power of two cannot be
            // built; such a device would be a bug here, not in the guest.
            .filter_map(|&max| Queue::new(max).ok())
            .collect();
        let bad_size = vec![false; queues.len()];
        MmioTransport {
            device,
            mem,
            interrupt,
            queues,
            bad_size,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            activated: false,
        }
    }

    pub(super) fn device(&self) -> MutexGuard<'_, dyn VirtioDevice + 'static> {
        lock(&self.device)
    }

    /// The driver's device status, as the guest reads it.
    pub fn status(&self) -> u32 {
        self.status
    }

    fn has(&self, bits: u32) -> bool {
        self.status & bits == bits
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// Queue registers may change only between FEATURES_OK and DRIVER_OK,
    /// while the selected queue is not ready.
    fn queue_writable(&self) -> bool {
        self.has(status::FEATURES_OK)
            && !self.has(status::DRIVER_OK)
            && !self.has(status::FAILED)
            && self
                .queues
                .get(self.queue_sel as usize)
                .is_some_and(|q| !q.ready())
    }

    fn read_register(&self, offset: u64) -> u32 {
        match offset {
            reg::MAGIC => MAGIC_VALUE,
            reg::VERSION => MMIO_VERSION,
            reg::DEVICE_ID => self.device().device_type(),
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => {
                let features = self.device().avail_features() | VIRTIO_F_VERSION_1;
                match self.device_features_sel {
                    0 => features as u32,
                    1 => (features >> 32) as u32,
                    _ => 0,
                }
            }
            reg::QUEUE_NUM_MAX => self
                .queues
                .get(self.queue_sel as usize)
                .map_or(0, |q| u32::from(q.max_size())),
            reg::QUEUE_READY => self
                .queues
                .get(self.queue_sel as usize)
                .map_or(0, |q| u32::from(q.ready())),
            reg::INTERRUPT_STATUS => self.interrupt.status(),
            reg::STATUS => self.status,
            reg::CONFIG_GENERATION => self.interrupt.generation(),
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, v: u32) {
        let features_open = self.has(status::DRIVER) && !self.has(status::FEATURES_OK);
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = v,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            reg::DRIVER_FEATURES if features_open => match self.driver_features_sel {
                0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v),
                1 => {
                    self.driver_features =
                        (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32)
                }
                _ => {}
            },
            reg::QUEUE_SEL => self.queue_sel = v,
            reg::QUEUE_NUM if self.queue_writable() => {
                let sel = self.queue_sel as usize;
                if let Some(q) = self.queues.get_mut(sel) {
                    // A size that is zero, too large or not a power of two
                    // is remembered, so that DRIVER_OK fails rather than
                    // the device using a size the driver did not ask for.
                    // (It is checked here, not by virtio-queue, which
                    // would log every such write: a guest could flood
                    // the log.)
                    let valid = v.is_power_of_two() && v <= u32::from(q.max_size());
                    if valid {
                        q.set_size(v as u16);
                    }
                    self.bad_size[sel] = !valid;
                }
            }
            reg::QUEUE_READY if self.queue_writable() || v == 0 => {
                if self.has(status::DRIVER_OK) {
                    return;
                }
                if let Some(q) = self.selected_queue() {
                    q.set_ready(v == 1);
                }
            }
            reg::QUEUE_NOTIFY => self.notify(v),
            reg::INTERRUPT_ACK => self.interrupt.ack(v),
            reg::STATUS => self.write_status(v),
            reg::QUEUE_DESC_LOW
            | reg::QUEUE_DESC_HIGH
            | reg::QUEUE_DRIVER_LOW
            | reg::QUEUE_DRIVER_HIGH
            | reg::QUEUE_DEVICE_LOW
            | reg::QUEUE_DEVICE_HIGH
                if self.queue_writable() =>
            {
                self.write_queue_address(offset, v)
            }
            _ => tracing::debug!(offset, value = v, "virtio: register write ignored"),
        }
    }

    fn write_queue_address(&mut self, offset: u64, v: u32) {
        let Some(q) = self.selected_queue() else {
            return;
        };
        let (low, high) = if offset & 4 == 0 {
            (Some(v), None)
        } else {
            (None, Some(v))
        };
        match offset & !4 {
            reg::QUEUE_DESC_LOW => q.set_desc_table_address(low, high),
            reg::QUEUE_DRIVER_LOW => q.set_avail_ring_address(low, high),
            reg::QUEUE_DEVICE_LOW => q.set_used_ring_address(low, high),
            _ => {}
        }
    }

    /// A QueueNotify that reached the transport (rather than an
    /// ioeventfd): signal the queue's event fd ourselves.
    fn notify(&self, queue: u32) {
        if let Some(evt) = self.device().queue_events().get(queue as usize) {
            let _ = evt.write(1);
        }
    }

    fn write_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        // Status bits are only ever added, in the order the spec gives.
        if v & self.status != self.status {
            tracing::debug!(
                old = self.status,
                new = v,
                "virtio: status cleared bits; ignored"
            );
            return;
        }
        let added = v & !self.status;
        let mut new = v;
        if added & status::FEATURES_OK != 0 && !self.features_acceptable() {
            new &= !status::FEATURES_OK;
        }
        if added & status::DRIVER_OK != 0 && !self.activate() {
            new &= !status::DRIVER_OK;
            new |= status::DEVICE_NEEDS_RESET;
            self.interrupt.signal(INT_CONFIG);
        }
        self.status = new;
    }

    /// The driver accepted only offered features, VERSION_1 among them.
    fn features_acceptable(&self) -> bool {
        let offered = self.device().avail_features() | VIRTIO_F_VERSION_1;
        self.has(status::DRIVER)
            && self.driver_features & !offered == 0
            && self.driver_features & VIRTIO_F_VERSION_1 != 0
    }

    /// Validates the queues and starts the device. Returns false when it
    /// cannot run.
    fn activate(&mut self) -> bool {
        if !self.has(status::FEATURES_OK) || self.activated {
            return false;
        }
        let event_idx = self.driver_features & super::VIRTIO_F_RING_EVENT_IDX != 0;
        let in_use = self.device().queues_in_use(self.driver_features);
        for (i, q) in self.queues.iter_mut().enumerate().take(in_use) {
            if !q.ready() || !q.is_valid(&self.mem) || self.bad_size[i] {
                tracing::warn!(queue = i, "virtio: a queue is not ready or not valid");
                return false;
            }
            q.set_event_idx(event_idx);
        }
        let active = ActiveQueues {
            mem: self.mem.clone(),
            // The device works on its own copies; the transport keeps
            // its view for the registers.
            queues: self
                .queues
                .iter()
                .take(in_use)
                .filter_map(|q| Queue::try_from(q.state()).ok())
                .collect(),
            interrupt: self.interrupt.clone(),
            features: self.driver_features,
        };
        let started = self.device().activate(active);
        match started {
            Ok(()) => {
                self.activated = true;
                true
            }
            Err(e) => {
                tracing::warn!("virtio: {e}");
                false
            }
        }
    }

    fn reset(&mut self) {
        if self.activated {
            self.device().reset();
        }
        self.activated = false;
        self.status = 0;
        self.driver_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        for q in &mut self.queues {
            q.reset();
        }
        self.bad_size.fill(false);
        self.interrupt.clear();
    }

    /// Tells the driver the configuration changed (a drive was resized or
    /// swapped).
    pub fn config_changed(&mut self) {
        if self.has(status::DRIVER_OK) {
            self.interrupt.config_changed();
        } else {
            self.interrupt.bump_generation();
        }
    }
}

fn lock(d: &Arc<Mutex<dyn VirtioDevice>>) -> MutexGuard<'_, dyn VirtioDevice + 'static> {
    d.lock().unwrap_or_else(|e| e.into_inner())
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= reg::CONFIG {
            self.device().read_config(offset - reg::CONFIG, data);
            return;
        }
        // Registers are 32 bits wide and aligned; anything else reads 0.
        if data.len() == 4 && offset.is_multiple_of(4) {
            data.copy_from_slice(&self.read_register(offset).to_le_bytes());
        } else {
            data.fill(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= reg::CONFIG {
            if self.has(status::DRIVER) {
                self.device().write_config(offset - reg::CONFIG, data);
            }
            return;
        }
        if let Ok(bytes) = <[u8; 4]>::try_from(data) {
            if offset.is_multiple_of(4) {
                self.write_register(offset, u32::from_le_bytes(bytes));
            }
        }
    }
}

#[cfg(test)]
#[path = "mmio_tests.rs"]
mod tests;
