//! The virtio-rng model: one request queue of device-writable buffers,
//! each filled with random bytes from the host.

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::vmm::devices::virtio::{
    read_config_bytes, ActivateError, ActiveQueues, VirtioDevice, INT_USED_RING, TYPE_RNG,
    VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_RING_INDIRECT_DESC, VIRTIO_F_VERSION_1,
};
use crate::vmm::metrics::METRICS;

pub const QUEUE_SIZE: u16 = 256;
/// The most bytes one request gets; a guest asking for more gets this
/// much (the driver asks again).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum RngError {
    #[error("cannot create an event fd: {0}")]
    EventFd(std::io::Error),
}

pub(super) struct Active {
    pub mem: GuestMemoryMmap,
    pub queue: Queue,
    pub interrupt: std::sync::Arc<crate::vmm::devices::virtio::VirtioInterrupt>,
}

pub struct Rng {
    pub(super) queue_evts: [EventFd; 1],
    pub(super) active: Option<Active>,
}

impl Rng {
    pub fn new() -> Result<Self, RngError> {
        Ok(Rng {
            queue_evts: [EventFd::new(EFD_NONBLOCK).map_err(RngError::EventFd)?],
            active: None,
        })
    }

    /// Fills every buffer the driver made available; returns how many
    /// requests were answered.
    pub fn process_queue(&mut self) -> usize {
        let Some(active) = self.active.as_mut() else {
            return 0;
        };
        let mut served = 0;
        let mut buf = vec![0u8; 4096];
        loop {
            let chains: Vec<_> = match active.queue.iter(&active.mem) {
                Ok(iter) => iter.collect(),
                Err(e) => {
                    tracing::warn!("virtio-rng: broken queue: {e}");
                    METRICS.rng.errors.inc();
                    return served;
                }
            };
            if chains.is_empty() {
                break;
            }
            for chain in chains {
                let head = chain.head_index();
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
                    if active.mem.write_slice(&buf[..n], desc.addr()).is_err() {
                        // Outside guest memory: the request gets nothing.
                        METRICS.rng.errors.inc();
                        break;
                    }
                    written += n as u32;
                }
                METRICS.rng.bytes.add(u64::from(written));
                if let Err(e) = active.queue.add_used(&active.mem, head, written) {
                    tracing::warn!("virtio-rng: cannot return a buffer: {e}");
                    METRICS.rng.errors.inc();
                }
                served += 1;
            }
            // With EVENT_IDX, re-check after enabling notifications so no
            // buffer added in between is missed.
            match active.queue.enable_notification(&active.mem) {
                Ok(true) => continue,
                _ => break,
            }
        }
        if served > 0 {
            METRICS.rng.requests.add(served as u64);
            if active.queue.needs_notification(&active.mem).unwrap_or(true) {
                active.interrupt.signal(INT_USED_RING);
            }
        }
        served
    }
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
        let got = active.queues.len();
        let queue = active
            .queues
            .into_iter()
            .next()
            .filter(|_| got == 1)
            .ok_or(ActivateError::QueueCount { expected: 1, got })?;
        self.active = Some(Active {
            mem: active.mem,
            queue,
            interrupt: active.interrupt,
        });
        // Buffers made available before DRIVER_OK are served now.
        self.process_queue();
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
    }
}
