//! virtio devices over one virtio-mmio transport ([`mmio`]).
//!
//! A device implements [`VirtioDevice`] (its type, features, queues and
//! configuration space) and subscribes its own queue event fds to the
//! event loop. The transport, on the vCPU threads, runs the register
//! interface and the status state machine; on DRIVER_OK it hands the
//! device its queues, guest memory and interrupt ([`ActiveQueues`]).
//! Snapshots of the transport and of each device are in [`persist`].

pub mod balloon;
pub mod block;
pub mod fs;
pub mod mem;
pub mod mmio;
pub mod net;
pub mod persist;
pub mod pmem;
pub mod queue;
pub mod rng;
pub mod test_utils;
pub mod vhost_user;
pub mod vsock;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use crate::vmm::kvm::memory::GuestMem;
use virtio_queue::{Queue, QueueState};
use vmm_sys_util::eventfd::EventFd;

use crate::vmm::devices::IrqTrigger;
use persist::{DeviceState, VirtioPersistError};

/// Feature bits every device offers.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
pub const VIRTIO_F_RING_INDIRECT_DESC: u64 = 1 << 28;
pub const VIRTIO_F_RING_EVENT_IDX: u64 = 1 << 29;

/// Device IDs (virtio 1.x, section 5).
pub const TYPE_NET: u32 = 1;
pub const TYPE_BLOCK: u32 = 2;
pub const TYPE_RNG: u32 = 4;
pub const TYPE_BALLOON: u32 = 5;
pub const TYPE_VSOCK: u32 = 19;
pub const TYPE_MEM: u32 = 24;
pub const TYPE_FS: u32 = 26;
pub const TYPE_PMEM: u32 = 27;

/// InterruptStatus bits.
pub const INT_USED_RING: u32 = 1;
pub const INT_CONFIG: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("the device needs {expected} queues, the driver set up {got}")]
    QueueCount { expected: usize, got: usize },
    #[error("cannot activate the device: {0}")]
    Device(String),
}

/// The device's interrupt: InterruptStatus, shared by the transport (which
/// the driver reads and acknowledges) and the device (which raises it).
pub struct VirtioInterrupt {
    status: AtomicU32,
    /// ConfigGeneration: bumped on every change of the configuration
    /// space, by the host (through the transport) or by the device.
    generation: AtomicU32,
    irq: IrqTrigger,
}

impl VirtioInterrupt {
    pub fn new(irq: IrqTrigger) -> Self {
        VirtioInterrupt {
            status: AtomicU32::new(0),
            generation: AtomicU32::new(0),
            irq,
        }
    }

    /// Sets `bits` in InterruptStatus and raises the interrupt.
    pub fn signal(&self, bits: u32) {
        self.status.fetch_or(bits, Ordering::AcqRel);
        if let Err(e) = self.irq.trigger() {
            tracing::warn!("cannot raise a virtio interrupt: {e}");
        }
    }

    /// The device changed its configuration space: a new generation and
    /// a configuration-change interrupt.
    pub fn config_changed(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.signal(INT_CONFIG);
    }

    pub fn generation(&self) -> u32 {
        self.generation.load(Ordering::Acquire)
    }

    /// Counts a configuration change the driver is not told of by an
    /// interrupt (the driver is not running yet).
    pub fn bump_generation(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    pub fn restore_generation(&self, g: u32) {
        self.generation.store(g, Ordering::Release);
    }

    pub fn status(&self) -> u32 {
        self.status.load(Ordering::Acquire)
    }

    /// InterruptACK: clears the acknowledged bits.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::AcqRel);
    }

    pub fn clear(&self) {
        self.status.store(0, Ordering::Release);
    }

    /// Sets InterruptStatus from a snapshot, without raising the
    /// interrupt: one the guest had not taken yet is pending in the
    /// restored interrupt controller already.
    pub fn restore(&self, bits: u32) {
        self.status
            .store(bits & (INT_USED_RING | INT_CONFIG), Ordering::Release);
    }
}

/// What a device gets when the driver sets DRIVER_OK.
pub struct ActiveQueues {
    pub mem: GuestMem,
    pub queues: Vec<Queue>,
    pub interrupt: Arc<VirtioInterrupt>,
    /// The features the driver accepted.
    pub features: u64,
}

impl ActiveQueues {
    /// Exactly `N` queues, each with the memory and interrupt it needs;
    /// any other count is refused.
    pub fn split<const N: usize>(self) -> Result<[queue::ActiveQueue; N], ActivateError> {
        let got = self.queues.len();
        let (mem, interrupt) = (self.mem, self.interrupt);
        let queues: Vec<queue::ActiveQueue> = self
            .queues
            .into_iter()
            .map(|queue| queue::ActiveQueue {
                mem: mem.clone(),
                queue,
                interrupt: interrupt.clone(),
            })
            .collect();
        queues
            .try_into()
            .map_err(|_| ActivateError::QueueCount { expected: N, got })
    }

    /// The queues, each with the memory and interrupt it needs, when
    /// there are exactly `n`; any other count is refused.
    pub fn split_n(self, n: usize) -> Result<Vec<queue::ActiveQueue>, ActivateError> {
        let got = self.queues.len();
        if got != n {
            return Err(ActivateError::QueueCount { expected: n, got });
        }
        let (mem, interrupt) = (self.mem, self.interrupt);
        Ok(self
            .queues
            .into_iter()
            .map(|queue| queue::ActiveQueue {
                mem: mem.clone(),
                queue,
                interrupt: interrupt.clone(),
            })
            .collect())
    }
}

/// A virtio device model, driven by the transport.
pub trait VirtioDevice: Send {
    /// The virtio device ID.
    fn device_type(&self) -> u32;
    /// Feature bits offered to the driver.
    fn avail_features(&self) -> u64;
    /// The largest size of each queue.
    fn queue_max_sizes(&self) -> &[u16];
    /// How many of the queues the driver sets up when it accepted
    /// `features`: all of them, unless some queues exist only with a
    /// feature (the balloon's). The transport starts the device with
    /// those first queues.
    fn queues_in_use(&self, _features: u64) -> usize {
        self.queue_max_sizes().len()
    }
    /// One event fd per queue, signalled on the driver's notifications
    /// (through an ioeventfd on QueueNotify).
    fn queue_events(&self) -> &[EventFd];
    /// Reads the device configuration space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device configuration space; most devices ignore it.
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Starts the device with the driver's queues.
    fn activate(&mut self, active: ActiveQueues) -> Result<(), ActivateError>;
    /// Stops the device and forgets its queues (driver wrote status 0).
    fn reset(&mut self);

    /// The device's own copies of its queues, whose indices are current
    /// (the transport's are not, once the device runs); empty when the
    /// device is not active.
    fn queue_states(&self) -> Vec<QueueState>;
    /// The device's own state for a snapshot (the transport saves the
    /// rest: status, features, queues, interrupt status).
    fn save_state(&self) -> DeviceState;
    /// Applies a saved state to the device, freshly built from the same
    /// configuration and not active yet.
    fn restore_state(&mut self, state: &DeviceState) -> Result<(), VirtioPersistError>;
    /// Starts the device on queues restored from a snapshot, as
    /// [`activate`](Self::activate) does, but serves nothing and raises no
    /// interrupt here: the transport then signals every queue's event fd,
    /// and the event loop serves what waits, once the VM is whole again.
    fn activate_restored(&mut self, active: ActiveQueues) -> Result<(), ActivateError>;
}

/// Reads `data.len()` bytes at `offset` of a configuration space;
/// anything outside it reads as zero.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(src) = config.get(start..) {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}
