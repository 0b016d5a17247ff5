//! The virtio-rng model: one request queue of device-writable buffers,
//! each filled with random bytes from the host.

use crate::vmm::kvm::memory::GuestMem;
use virtio_queue::DescriptorChain;
use vm_memory::Bytes;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::vmm::devices::rate_limiter::{RateLimiter, RateLimiterConfig, RateLimiterError};
use crate::vmm::devices::virtio::persist::{DeviceState, VirtioPersistError};
use crate::vmm::devices::virtio::queue::ActiveQueue;
use crate::vmm::devices::virtio::{
    read_config_bytes, ActivateError, ActiveQueues, VirtioDevice, TYPE_RNG,
    VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_RING_INDIRECT_DESC, VIRTIO_F_VERSION_1,
};
use crate::vmm::metrics::METRICS;
use crate::vmm::snapshot::Persist;

pub const QUEUE_SIZE: u16 = 256;
/// The most bytes one request gets; a guest asking for more gets this
/// much (the driver asks again).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum RngError {
    #[error("cannot create an event fd: {0}")]
    EventFd(std::io::Error),
    #[error(transparent)]
    RateLimiter(#[from] RateLimiterError),
}

pub struct Rng {
    pub(super) queue_evts: [EventFd; 1],
    pub(super) active: Option<ActiveQueue>,
    pub(super) limiter: RateLimiter,
}

impl Rng {
    pub fn new(rate_limiter: &RateLimiterConfig) -> Result<Self, RngError> {
        Ok(Rng {
            queue_evts: [EventFd::new(EFD_NONBLOCK).map_err(RngError::EventFd)?],
            active: None,
            limiter: RateLimiter::new(rate_limiter)?,
        })
    }

    /// Fills every buffer the driver made available; returns how many
    /// requests were answered.
    pub fn process_queue(&mut self) -> usize {
        let Some(active) = self.active.as_mut() else {
            return 0;
        };
        let limiter = &mut self.limiter;
        let served = active.serve(&METRICS.rng.errors, |mem, chain| {
            let asked = || {
                chain
                    .clone()
                    .filter(|d| d.is_write_only())
                    .map(|d| u64::from(d.len()))
                    .sum::<u64>()
                    .min(MAX_REQUEST_BYTES as u64)
            };
            if !limiter.is_unlimited() && !limiter.consume(asked()) {
                METRICS.rng.rate_limited.inc();
                return None;
            }
            Some(fill_request(mem, chain))
        });
        METRICS.rng.requests.add(served as u64);
        served
    }
}

/// Fills a request's device-writable buffers with random bytes, up to
/// [`MAX_REQUEST_BYTES`]; returns how many were written.
fn fill_request(mem: &GuestMem, chain: DescriptorChain<&GuestMem>) -> u32 {
    let mut buf = [0u8; 4096];
    let mut written: u32 = 0;
    for desc in chain {
        if !desc.is_write_only() {
            // The spec has only device-writable buffers here.
            METRICS.rng.errors.inc();
            continue;
        }
        let room = MAX_REQUEST_BYTES.saturating_sub(written as usize);
        let want = (desc.len() as usize).min(room).min(buf.len());
        if want == 0 {
            break;
        }
        let n = fill_random(&mut buf[..want]);
        if mem.write_slice(&buf[..n], desc.addr()).is_err() {
            // Outside guest memory: the request gets no more.
            METRICS.rng.errors.inc();
            break;
        }
        written += n as u32;
    }
    METRICS.rng.bytes.add(u64::from(written));
    written
}

/// Fills `buf` from the host's entropy pool; returns how many bytes.
fn fill_random(buf: &mut [u8]) -> usize {
    // SAFETY: getrandom writes at most `buf.len()` bytes into `buf`.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    usize::try_from(n).unwrap_or(0)
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        TYPE_RNG
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_F_RING_EVENT_IDX | VIRTIO_F_RING_INDIRECT_DESC
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // virtio-rng has no configuration space.
        read_config_bytes(&[], offset, data);
    }

    fn activate(&mut self, active: ActiveQueues) -> Result<(), ActivateError> {
        self.activate_restored(active)?;
        // Buffers made available before DRIVER_OK are served now.
        self.process_queue();
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
    }

    fn queue_states(&self) -> Vec<virtio_queue::QueueState> {
        self.active.iter().map(|a| a.queue.state()).collect()
    }

    fn save_state(&self) -> DeviceState {
        DeviceState::Rng(Persist::save(self))
    }

    fn restore_state(&mut self, state: &DeviceState) -> Result<(), VirtioPersistError> {
        match state {
            DeviceState::Rng(s) => Persist::restore(self, s),
            other => Err(other.wrong("virtio-rng")),
        }
    }

    fn activate_restored(&mut self, active: ActiveQueues) -> Result<(), ActivateError> {
        let [queue] = active.split()?;
        self.active = Some(queue);
        Ok(())
    }
}
