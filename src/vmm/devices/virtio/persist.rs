//! Snapshots of the virtio-mmio transport and of the device behind it.
//!
//! The transport saves its registers (status, feature selectors, accepted
//! features, queue selector, configuration generation), whether the device
//! runs, the interrupt status, and every queue; the device adds its own
//! state ([`DeviceState`]). Once a device runs it works on its own copies
//! of the queues, so their indices (`next_avail`, `next_used`) are taken
//! from the device, not from the transport's stale copies.
//!
//! A restore applies the state to a transport and device freshly built
//! from the same configuration. Everything is checked first (queue count,
//! sizes, alignment, and for a running device that every queue lies in
//! guest memory), so a hostile state file gets an error, never a panic.
//! A device that ran is started again as on DRIVER_OK, without raising an
//! interrupt; then every queue's event fd is signalled, so that the event
//! loop serves what the guest made available before the snapshot (requests
//! a rate limiter held back, frames waiting for buffers).

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueState, QueueT};

use super::balloon::BalloonState;
use super::block::BlockState;
use super::fs::FsState;
use super::mem::MemState;
use super::mmio::{status, MmioTransport};
use super::net::NetState;
use super::pmem::PmemState;
use super::rng::RngState;
use super::vsock::VsockState;
use super::{ActivateError, ActiveQueues, VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_VERSION_1};
use crate::vmm::snapshot::Persist;

#[derive(Debug, thiserror::Error)]
pub enum VirtioPersistError {
    #[error("the state is for a {saved} device, not a {this} one")]
    WrongDevice {
        saved: &'static str,
        this: &'static str,
    },
    #[error("the state has {saved} queues, the device {this}")]
    QueueCount { saved: usize, this: usize },
    #[error("queue {queue}: size {size} is not a power of two up to {max}")]
    QueueSize { queue: usize, size: u16, max: u16 },
    #[error("queue {queue}: {err}")]
    Queue {
        queue: usize,
        err: virtio_queue::Error,
    },
    #[error("queue {0} is not ready or not inside guest memory")]
    QueueInvalid(usize),
    #[error("status {status:#x} does not fit a device that is {}", if *.activated { "running" } else { "stopped" })]
    Status { status: u32, activated: bool },
    #[error("accepted features {0:#x} are not ones the device offers")]
    Features(u64),
    #[error("invalid state: {0}")]
    Invalid(&'static str),
    #[error("cannot start the device again: {0}")]
    Activate(#[from] ActivateError),
}

/// One queue, as the driver set it up and as far as the device got.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSnapshot {
    pub size: u16,
    pub ready: bool,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
    pub next_avail: u16,
    pub next_used: u16,
    pub event_idx: bool,
}

impl From<QueueState> for QueueSnapshot {
    fn from(q: QueueState) -> Self {
        QueueSnapshot {
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx: q.event_idx_enabled,
        }
    }
}

impl QueueSnapshot {
    /// Queue `index` of a device whose queue holds at most `max`
    /// entries; sizes and ring alignment are checked.
    pub fn to_queue(&self, index: usize, max: u16) -> Result<Queue, VirtioPersistError> {
        if !self.size.is_power_of_two() || self.size > max {
            return Err(VirtioPersistError::QueueSize {
                queue: index,
                size: self.size,
                max,
            });
        }
        Queue::try_from(QueueState {
            max_size: max,
            next_avail: self.next_avail,
            next_used: self.next_used,
            event_idx_enabled: self.event_idx,
            size: self.size,
            ready: self.ready,
            desc_table: self.desc_table,
            avail_ring: self.avail_ring,
            used_ring: self.used_ring,
        })
        .map_err(|err| VirtioPersistError::Queue { queue: index, err })
    }
}

/// What each device saves beyond its transport.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceState {
    Block(BlockState),
    Net(NetState),
    Rng(RngState),
    Vsock(VsockState),
    /// Never in a snapshot: a VM with a virtio-fs device cannot be
    /// snapshotted (see `fs/persist.rs`).
    Fs(FsState),
    Balloon(BalloonState),
    Pmem(PmemState),
    Mem(MemState),
    /// Never in a snapshot either: a VM with a vhost-user drive cannot be
    /// snapshotted (see `block/vhost_user/mod.rs`).
    VhostUserBlock(super::block::vhost_user::VhostUserBlockState),
}

impl DeviceState {
    pub fn name(&self) -> &'static str {
        match self {
            DeviceState::Block(_) => "virtio-blk",
            DeviceState::Net(_) => "virtio-net",
            DeviceState::Rng(_) => "virtio-rng",
            DeviceState::Vsock(_) => "virtio-vsock",
            DeviceState::Fs(_) => "virtio-fs",
            DeviceState::Balloon(_) => "virtio-balloon",
            DeviceState::Pmem(_) => "virtio-pmem",
            DeviceState::Mem(_) => "virtio-mem",
            DeviceState::VhostUserBlock(_) => "vhost-user-blk",
        }
    }

    /// The error for a state given to a device of kind `this`.
    pub fn wrong(&self, this: &'static str) -> VirtioPersistError {
        VirtioPersistError::WrongDevice {
            saved: self.name(),
            this,
        }
    }
}

/// A transport and its device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmioState {
    pub status: u32,
    pub device_features_sel: u32,
    pub driver_features_sel: u32,
    pub driver_features: u64,
    pub queue_sel: u32,
    pub config_generation: u32,
    pub activated: bool,
    pub interrupt_status: u32,
    pub bad_size: Vec<bool>,
    pub queues: Vec<QueueSnapshot>,
    pub device: DeviceState,
}

impl Persist for MmioTransport {
    type State = MmioState;
    type Error = VirtioPersistError;

    fn save(&self) -> MmioState {
        let device = self.device();
        let running = if self.activated {
            device.queue_states()
        } else {
            Vec::new()
        };
        let queues = if running.len() == self.queues.len() {
            running.into_iter().map(QueueSnapshot::from).collect()
        } else {
            self.queues
                .iter()
                .map(|q| QueueSnapshot::from(q.state()))
                .collect()
        };
        MmioState {
            status: self.status,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            driver_features: self.driver_features,
            queue_sel: self.queue_sel,
            config_generation: self.interrupt.generation(),
            activated: self.activated,
            interrupt_status: self.interrupt.status(),
            bad_size: self.bad_size.clone(),
            queues,
            device: device.save_state(),
        }
    }

    fn restore(&mut self, s: &MmioState) -> Result<(), VirtioPersistError> {
        if self.activated || self.status != 0 {
            return Err(VirtioPersistError::Invalid("the device is in use already"));
        }
        let this = self.queues.len();
        if s.queues.len() != this || s.bad_size.len() != this {
            return Err(VirtioPersistError::QueueCount {
                saved: s.queues.len(),
                this,
            });
        }
        let build = || {
            s.queues
                .iter()
                .zip(&self.queues)
                .enumerate()
                .map(|(i, (saved, q))| saved.to_queue(i, q.max_size()))
                .collect::<Result<Vec<_>, _>>()
        };
        let queues = build()?;
        self.check_status(s)?;
        let in_use = self.device().queues_in_use(s.driver_features);
        if s.activated {
            for (i, q) in queues.iter().enumerate().take(in_use) {
                if !q.ready() || s.bad_size[i] || !q.is_valid(&self.mem) {
                    return Err(VirtioPersistError::QueueInvalid(i));
                }
            }
        }
        // The device's own state first: it may bear on how it starts.
        self.device().restore_state(&s.device)?;
        if s.activated {
            let active = ActiveQueues {
                mem: self.mem.clone(),
                // The device's own copies, as on DRIVER_OK.
                queues: build()?.into_iter().take(in_use).collect(),
                interrupt: self.interrupt.clone(),
                features: s.driver_features,
            };
            self.device().activate_restored(active)?;
        }
        self.queues = queues;
        self.bad_size.clone_from(&s.bad_size);
        self.status = s.status;
        self.device_features_sel = s.device_features_sel;
        self.driver_features_sel = s.driver_features_sel;
        self.driver_features = s.driver_features;
        self.queue_sel = s.queue_sel;
        self.interrupt.restore_generation(s.config_generation);
        self.activated = s.activated;
        self.interrupt.restore(s.interrupt_status);
        if s.activated {
            // What the guest made available before the snapshot (and any
            // request held back then) is served by the event loop.
            for evt in self.device().queue_events() {
                let _ = evt.write(1);
            }
        }
        Ok(())
    }
}

impl MmioTransport {
    /// The saved status and features could have been reached by a
    /// driver: the device runs exactly when DRIVER_OK is set, and then
    /// only after FEATURES_OK with features the device offers.
    fn check_status(&self, s: &MmioState) -> Result<(), VirtioPersistError> {
        let has = |bits: u32| s.status & bits == bits;
        let bad = || VirtioPersistError::Status {
            status: s.status,
            activated: s.activated,
        };
        if has(status::DRIVER_OK) != s.activated {
            return Err(bad());
        }
        if s.activated && !has(status::FEATURES_OK | status::DRIVER) {
            return Err(bad());
        }
        if has(status::FEATURES_OK) {
            let offered = self.device().avail_features() | VIRTIO_F_VERSION_1;
            if s.driver_features & !offered != 0 || s.driver_features & VIRTIO_F_VERSION_1 == 0 {
                return Err(VirtioPersistError::Features(s.driver_features));
            }
        }
        let event_idx = s.driver_features & VIRTIO_F_RING_EVENT_IDX != 0;
        if s.activated && s.queues.iter().any(|q| q.event_idx != event_idx) {
            return Err(VirtioPersistError::Invalid(
                "a queue's EVENT_IDX does not match the features",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "persist_tests.rs"]
mod tests;
