//! The virtio-pmem model (virtio 1.x, section 5.19; device ID 27): a
//! host file the guest maps as persistent memory, and one request queue
//! on which the driver asks for FLUSH. The configuration space is the
//! window's guest-physical `start` and `size` (le64 each).
//!
//! A request is a device-readable le32 type (only FLUSH, 0, exists)
//! and a device-writable le32 status (0 for success). Every FLUSH in
//! one batch of notifications shares one `msync` of the file, as in
//! Firecracker; the rate limiter charges that sync one op and the
//! file's size in bytes. A request that is too short, of another type,
//! or outside guest memory gets a failure status when it has room for
//! one, and nothing (used length 0) when it has not.
//!
//! Requests are served on the VMM thread only: on DRIVER_OK (a vCPU
//! thread) the device signals its queue's event fd.

use std::path::Path;

use virtio_queue::{Reader, Writer};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::mapping::{MappingError, PmemMapping, PmemSlot};
use crate::vmm::config::PmemConfig;
use crate::vmm::devices::rate_limiter::{RateLimiter, RateLimiterConfig, RateLimiterError};
use crate::vmm::devices::virtio::persist::{DeviceState, VirtioPersistError};
use crate::vmm::devices::virtio::queue::ActiveQueue;
use crate::vmm::devices::virtio::{
    read_config_bytes, ActivateError, ActiveQueues, VirtioDevice, TYPE_PMEM, VIRTIO_F_VERSION_1,
};
use crate::vmm::kvm::memory::GuestMem;
use crate::vmm::kvm::MemSlots;
use crate::vmm::metrics::METRICS;
use crate::vmm::snapshot::Persist;

pub const QUEUE_SIZE: u16 = 256;
/// `start` and `size`, le64 each.
pub const CONFIG_LEN: usize = 16;
pub const REQ_TYPE_FLUSH: u32 = 0;
/// The status of a request that succeeded.
pub const STATUS_OK: u32 = 0;
/// The status of one that did not (any non-zero value is an error to
/// Linux's driver; Firecracker answers -1).
pub const STATUS_ERR: u32 = u32::MAX;

#[derive(Debug, thiserror::Error)]
pub enum PmemError {
    #[error("cannot create an event fd: {0}")]
    EventFd(std::io::Error),
    #[error(transparent)]
    Mapping(#[from] MappingError),
    #[error(transparent)]
    RateLimiter(#[from] RateLimiterError),
}

pub struct Pmem {
    pub(super) id: String,
    pub(super) queue_evts: [EventFd; 1],
    pub(super) active: Option<ActiveQueue>,
    pub(super) limiter: RateLimiter,
    /// The window's guest-physical start (0 until it is mapped).
    pub(super) start: u64,
    read_only: bool,
    // Field order is drop order: the KVM slot goes before the mapping it
    // points at.
    slot: Option<PmemSlot>,
    mapping: PmemMapping,
}

impl Pmem {
    /// Maps the configured backing file (not yet into the guest).
    pub fn new(cfg: &PmemConfig) -> Result<Self, PmemError> {
        let mapping = PmemMapping::new(Path::new(&cfg.path_on_host), cfg.read_only)?;
        Ok(Pmem {
            id: cfg.id.clone(),
            queue_evts: [EventFd::new(EFD_NONBLOCK).map_err(PmemError::EventFd)?],
            active: None,
            limiter: RateLimiter::new(&cfg.rate_limiter.unwrap_or_default())?,
            start: 0,
            read_only: cfg.read_only,
            slot: None,
            mapping,
        })
    }

    /// The window's size: the file's, rounded up to 2 MiB.
    pub fn size(&self) -> u64 {
        self.mapping.len()
    }

    pub fn start(&self) -> u64 {
        self.start
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Puts the window into the guest at `start` (from the layout's
    /// device memory) as KVM memory slot `slot`.
    pub fn map_into_guest(
        &mut self,
        slots: MemSlots,
        slot: u32,
        start: u64,
    ) -> Result<(), PmemError> {
        self.slot = Some(
            self.mapping
                .map_into_guest(slots, slot, start, self.read_only)?,
        );
        self.start = start;
        Ok(())
    }

    /// Replaces the rate limiter's buckets (PATCH /pmem); requests it
    /// held back are tried again.
    pub fn update_rate_limiter(&mut self, cfg: &RateLimiterConfig) -> Result<(), PmemError> {
        self.limiter.update(cfg)?;
        self.process_queue();
        Ok(())
    }

    /// Answers every request the driver made available; returns how many.
    pub fn process_queue(&mut self) -> usize {
        let Some(active) = self.active.as_mut() else {
            return 0;
        };
        let (limiter, mapping) = (&mut self.limiter, &self.mapping);
        // The status of this batch's sync, once it is done.
        let mut synced: Option<u32> = None;
        let served = active.serve(&METRICS.pmem.malformed, |mem, chain| {
            let mut sync = || {
                if let Some(s) = synced {
                    return Some(s);
                }
                if !limiter.is_unlimited() && !limiter.consume(mapping.file_len()) {
                    METRICS.pmem.rate_limited.inc();
                    return None;
                }
                METRICS.pmem.syncs.inc();
                let s = match mapping.sync() {
                    Ok(()) => STATUS_OK,
                    Err(e) => {
                        tracing::warn!("virtio-pmem: msync: {e}");
                        METRICS.pmem.sync_fails.inc();
                        STATUS_ERR
                    }
                };
                synced = Some(s);
                Some(s)
            };
            answer(mem, chain, &mut sync)
        });
        served
    }
}

/// Answers one request: `sync` carries out a FLUSH (None: not now, the
/// rate limiter said wait). Returns the used length, or None to leave
/// the chain for later.
fn answer(
    mem: &GuestMem,
    chain: virtio_queue::DescriptorChain<&GuestMem>,
    sync: &mut impl FnMut() -> Option<u32>,
) -> Option<u32> {
    let (Ok(mut reader), Ok(mut writer)) =
        (Reader::new(mem, chain.clone()), Writer::new(mem, chain))
    else {
        // A buffer outside guest memory, or lengths that overflow.
        METRICS.pmem.malformed.inc();
        return Some(0);
    };
    // The status is the chain's last 4 device-writable bytes.
    let room = writer.available_bytes();
    let Some(mut writer) = room.checked_sub(4).and_then(|at| writer.split_at(at).ok()) else {
        // No room for the status: nothing can be said.
        METRICS.pmem.malformed.inc();
        return Some(0);
    };
    let status = match reader.read_obj::<u32>() {
        Ok(t) if u32::from_le(t) == REQ_TYPE_FLUSH => {
            let s = sync()?;
            METRICS.pmem.flushes.inc();
            s
        }
        _ => {
            METRICS.pmem.malformed.inc();
            STATUS_ERR
        }
    };
    match writer.write_obj(status.to_le()) {
        Ok(()) => Some(4),
        Err(_) => {
            METRICS.pmem.malformed.inc();
            Some(0)
        }
    }
}

impl VirtioDevice for Pmem {
    fn device_type(&self) -> u32 {
        TYPE_PMEM
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut c = [0u8; CONFIG_LEN];
        c[..8].copy_from_slice(&self.start.to_le_bytes());
        c[8..].copy_from_slice(&self.size().to_le_bytes());
        read_config_bytes(&c, offset, data);
    }

    /// The configuration space is the device's: writes are ignored.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        tracing::debug!(
            offset,
            len = data.len(),
            "virtio-pmem: the driver wrote the read-only configuration space"
        );
    }

    fn activate(&mut self, active: ActiveQueues) -> Result<(), ActivateError> {
        self.activate_restored(active)?;
        METRICS.pmem.activations.inc();
        // Served on the VMM thread (msync), not here.
        let _ = self.queue_evts[0].write(1);
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
    }

    fn queue_states(&self) -> Vec<virtio_queue::QueueState> {
        self.active.iter().map(|a| a.queue.state()).collect()
    }

    fn save_state(&self) -> DeviceState {
        DeviceState::Pmem(Persist::save(self))
    }

    fn restore_state(&mut self, state: &DeviceState) -> Result<(), VirtioPersistError> {
        match state {
            DeviceState::Pmem(s) => Persist::restore(self, s),
            other => Err(other.wrong("virtio-pmem")),
        }
    }

    fn activate_restored(&mut self, active: ActiveQueues) -> Result<(), ActivateError> {
        let [queue] = active.split()?;
        self.active = Some(queue);
        Ok(())
    }
}
