//! The virtio-blk model: one request queue over a raw file or block
//! device, served on the VMM thread by the Sync engine (`request.rs`) or
//! through io_uring by the Async one (`async_io.rs`).

use crate::vmm::kvm::memory::GuestMem;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;
use virtio_queue::DescriptorChain;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::vmm::devices::rate_limiter::{RateLimiter, RateLimiterConfig, RateLimiterError};

use super::async_io::{AsyncIo, AsyncIoError, Submitted};
use super::request::{execute, Disk, ID_BYTES, MAX_SEGMENTS, SECTOR_SIZE};
use crate::vmm::config::IoEngine;
use crate::vmm::devices::virtio::persist::{DeviceState, VirtioPersistError};
use crate::vmm::devices::virtio::queue::{ActiveQueue, Served};
use crate::vmm::devices::virtio::{
    read_config_bytes, ActivateError, ActiveQueues, VirtioDevice, TYPE_BLOCK,
    VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_RING_INDIRECT_DESC, VIRTIO_F_VERSION_1,
};
use crate::vmm::metrics::METRICS;
use crate::vmm::snapshot::Persist;

pub const QUEUE_SIZE: u16 = 256;
pub const VIRTIO_BLK_F_RO: u64 = 1 << 5;
pub const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
pub const VIRTIO_BLK_F_DISCARD: u64 = 1 << 13;
pub const VIRTIO_BLK_F_WRITE_ZEROES: u64 = 1 << 14;
/// Largest DISCARD / WRITE_ZEROES in sectors (4 GiB - 512).
const MAX_ZERO_SECTORS: u32 = u32::MAX >> 9;
const CONFIG_LEN: usize = 60;

#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("cannot open {path}: {err}")]
    Open { path: String, err: std::io::Error },
    #[error("{0} is not a regular file or a block device")]
    NotDisk(String),
    #[error("cannot size {path}: {err}")]
    Size { path: String, err: std::io::Error },
    #[error("cannot create an event fd: {0}")]
    EventFd(std::io::Error),
    #[error(transparent)]
    RateLimiter(#[from] RateLimiterError),
    #[error(transparent)]
    AsyncIo(#[from] AsyncIoError),
}

/// How the drive is backed and limited.
#[derive(Clone, Debug, Default)]
pub struct BlockOptions {
    pub read_only: bool,
    pub writeback: bool,
    pub rate_limiter: RateLimiterConfig,
    pub engine: IoEngine,
}

pub struct Block {
    pub(super) queue_evts: [EventFd; 1],
    pub(super) active: Option<ActiveQueue>,
    disk: Disk,
    options: BlockOptions,
    config: [u8; CONFIG_LEN],
    pub(super) limiter: RateLimiter,
    /// The io_uring engine (`io_engine` Async); None for Sync.
    pub(super) io: Option<AsyncIo>,
}

/// Opens a backing file without blocking (a FIFO is refused) and
/// measures it.
pub fn open_disk(path: &Path, read_only: bool) -> Result<(File, u64), BlockError> {
    use std::io::{Seek, SeekFrom};
    let name = crate::text::echo_path(path);
    let mut file = OpenOptions::new()
        .read(true)
        .write(!read_only)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|err| BlockError::Open {
            path: name.clone(),
            err,
        })?;
    let kind = file
        .metadata()
        .map_err(|err| BlockError::Open {
            path: name.clone(),
            err,
        })?
        .file_type();
    if !(kind.is_file() || kind.is_block_device()) {
        return Err(BlockError::NotDisk(name));
    }
    let size = file
        .seek(SeekFrom::End(0))
        .map_err(|err| BlockError::Size { path: name, err })?;
    Ok((file, size - size % SECTOR_SIZE))
}

impl Block {
    pub fn new(id: &str, path: &Path, options: BlockOptions) -> Result<Self, BlockError> {
        let (file, size) = open_disk(path, options.read_only)?;
        let mut disk_id = [0u8; ID_BYTES];
        let n = id.len().min(ID_BYTES);
        disk_id[..n].copy_from_slice(&id.as_bytes()[..n]);
        let mut b = Block {
            queue_evts: [EventFd::new(EFD_NONBLOCK).map_err(BlockError::EventFd)?],
            active: None,
            disk: Disk {
                file,
                size,
                read_only: options.read_only,
                writeback: options.writeback,
                id: disk_id,
            },
            limiter: RateLimiter::new(&options.rate_limiter)?,
            io: match options.engine {
                IoEngine::Sync => None,
                IoEngine::Async => Some(AsyncIo::new(u32::from(QUEUE_SIZE))?),
            },
            options,
            config: [0; CONFIG_LEN],
        };
        b.write_config_space();
        Ok(b)
    }

    /// virtio_blk_config: capacity, then the discard and write-zeroes
    /// limits.
    fn write_config_space(&mut self) {
        let c = &mut self.config;
        c[0..8].copy_from_slice(&(self.disk.size / SECTOR_SIZE).to_le_bytes());
        c[36..40].copy_from_slice(&MAX_ZERO_SECTORS.to_le_bytes());
        c[40..44].copy_from_slice(&(MAX_SEGMENTS as u32).to_le_bytes());
        c[44..48].copy_from_slice(&1u32.to_le_bytes());
        c[48..52].copy_from_slice(&MAX_ZERO_SECTORS.to_le_bytes());
        c[52..56].copy_from_slice(&(MAX_SEGMENTS as u32).to_le_bytes());
        c[56] = 1;
    }

    /// Capacity in sectors.
    pub fn capacity(&self) -> u64 {
        self.disk.size / SECTOR_SIZE
    }

    /// Swaps the backing file (PATCH /drives after boot). The caller
    /// raises the configuration-change interrupt.
    pub fn swap_backing(&mut self, path: &Path) -> Result<(), BlockError> {
        let (file, size) = open_disk(path, self.options.read_only)?;
        self.disk.file = file;
        self.disk.size = size;
        self.write_config_space();
        Ok(())
    }

    /// Serves every request the driver made available; returns how many
    /// were answered or, with the Async engine, submitted.
    pub fn process_queue(&mut self) -> usize {
        let Some(active) = self.active.as_mut() else {
            return 0;
        };
        let disk = &self.disk;
        let limiter = &mut self.limiter;
        let mut io = self.io.as_mut();
        let served = active.serve_requests(&METRICS.block.errors, |mem, chain| {
            if !limiter.is_unlimited() && !limiter.consume(data_bytes(&chain)) {
                METRICS.block.rate_limited.inc();
                return Served::Hold;
            }
            let out = match io.as_deref_mut() {
                Some(io) => match io.submit(mem, chain, disk) {
                    Submitted::Done(out) => out,
                    Submitted::InFlight => return Served::InFlight,
                },
                None => execute(mem, chain, disk),
            };
            count(&out);
            Served::Used(out.used_len)
        });
        if let Some(io) = self.io.as_mut() {
            io.flush_submissions();
        }
        served
    }

    /// The Async engine's completions arrived: their chains go on the
    /// used ring.
    pub fn process_completions(&mut self) {
        let Some(io) = self.io.as_mut() else {
            return;
        };
        match self.active.as_mut() {
            Some(active) => {
                let done = io.reap(Some(&active.mem));
                complete(active, done);
            }
            // Reset meanwhile: what finishes is dropped.
            None => {
                io.reap(None);
            }
        }
    }

    /// Waits for every request in flight and answers them (before a
    /// snapshot: the saved ring must not owe the guest anything).
    pub fn drain(&mut self) {
        let (Some(io), Some(active)) = (self.io.as_mut(), self.active.as_mut()) else {
            return;
        };
        let done = io.drain(&active.mem);
        complete(active, done);
    }

    /// Requests the Async engine has in flight.
    pub fn in_flight(&self) -> usize {
        self.io.as_ref().map_or(0, AsyncIo::in_flight)
    }

    /// Replaces the rate limiter's buckets (PATCH /drives).
    pub fn update_rate_limiter(&mut self, cfg: &RateLimiterConfig) -> Result<(), BlockError> {
        self.limiter.update(cfg)?;
        self.options.rate_limiter = *cfg;
        // Requests held back may go now.
        self.process_queue();
        Ok(())
    }
}

/// A request's data bytes: everything but the 16-byte header and the
/// status byte.
fn data_bytes(chain: &DescriptorChain<&GuestMem>) -> u64 {
    chain
        .clone()
        .map(|d| u64::from(d.len()))
        .sum::<u64>()
        .saturating_sub(17)
}

/// Returns finished Async requests to the guest.
fn complete(active: &mut ActiveQueue, done: Vec<super::async_io::Completed>) {
    for c in &done {
        count(&c.outcome);
    }
    active.complete(
        &METRICS.block.errors,
        done.iter().map(|c| (c.head, c.outcome.used_len)),
    );
}

fn count(out: &super::request::Outcome) {
    let m = &METRICS.block;
    m.requests.inc();
    m.read_bytes.add(out.read_bytes);
    m.write_bytes.add(out.written_bytes);
    if out.status != Some(super::request::S_OK) {
        m.errors.inc();
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn avail_features(&self) -> u64 {
        let mut f = VIRTIO_F_VERSION_1
            | VIRTIO_F_RING_EVENT_IDX
            | VIRTIO_F_RING_INDIRECT_DESC
            | VIRTIO_BLK_F_FLUSH;
        if self.options.read_only {
            f |= VIRTIO_BLK_F_RO;
        } else {
            f |= VIRTIO_BLK_F_DISCARD | VIRTIO_BLK_F_WRITE_ZEROES;
        }
        f
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, active: ActiveQueues) -> Result<(), ActivateError> {
        self.activate_restored(active)?;
        // Buffers made available before DRIVER_OK are served now.
        self.process_queue();
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        if let Some(io) = self.io.as_mut() {
            io.reset();
        }
    }

    fn queue_states(&self) -> Vec<virtio_queue::QueueState> {
        self.active.iter().map(|a| a.queue.state()).collect()
    }

    fn save_state(&self) -> DeviceState {
        DeviceState::Block(Persist::save(self))
    }

    fn restore_state(&mut self, state: &DeviceState) -> Result<(), VirtioPersistError> {
        match state {
            DeviceState::Block(s) => Persist::restore(self, s),
            other => Err(other.wrong("virtio-blk")),
        }
    }

    fn activate_restored(&mut self, active: ActiveQueues) -> Result<(), ActivateError> {
        let [queue] = active.split()?;
        self.active = Some(queue);
        Ok(())
    }
}
