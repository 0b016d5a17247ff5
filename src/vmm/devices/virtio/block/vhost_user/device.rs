//! vhost-user-blk: a drive whose requests an external backend process
//! serves (`socket` in `PUT /drives`), qemu-storage-daemon's
//! `vhost-user-blk` export for one. To the guest it is virtio-blk (device
//! type 2, one request queue); husk is the frontend only. At
//! InstanceStart it connects, takes the backend's features and its
//! configuration space (GET_CONFIG, which needs the CONFIG protocol
//! feature: the capacity, block size and limits are the backend's), and
//! offers the guest the features both husk and the backend support. On
//! DRIVER_OK the backend gets guest memory and the queue, as a virtio-fs
//! backend does ([`VhostUserDevice`]).
//!
//! A read-only export says so with VIRTIO_BLK_F_RO; FLUSH is offered only
//! with `cache_type` Writeback, as Firecracker does (Unsafe drives never
//! see a flush). `PATCH /drives` with only the drive id reads the
//! configuration space again and tells the guest it changed (a resized
//! export).

use std::path::Path;

use vhost::vhost_user::VhostUserProtocolFeatures;
use virtio_queue::QueueState;
use vmm_sys_util::eventfd::EventFd;

use crate::vmm::devices::virtio::block::device::{
    QUEUE_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_WRITE_ZEROES,
};
use crate::vmm::devices::virtio::persist::{DeviceState, VirtioPersistError};
use crate::vmm::devices::virtio::vhost_user::{BackendError, VhostUserDevice, VhostUserError};
use crate::vmm::devices::virtio::{
    read_config_bytes, ActivateError, ActiveQueues, VirtioDevice, TYPE_BLOCK,
    VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_RING_INDIRECT_DESC, VIRTIO_F_VERSION_1,
};
use crate::vmm::metrics::METRICS;

/// virtio_blk_config up to the write-zeroes fields, as Firecracker asks.
pub const CONFIG_LEN: usize = 60;
pub const VIRTIO_BLK_F_SIZE_MAX: u64 = 1 << 1;
pub const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
pub const VIRTIO_BLK_F_BLK_SIZE: u64 = 1 << 6;
pub const VIRTIO_BLK_F_TOPOLOGY: u64 = 1 << 10;
/// The features husk passes on from the backend (FLUSH only for a
/// Writeback drive). Left out: MQ (one queue here), CONFIG_WCE (the
/// guest may not change the cache mode), and anything husk's transport
/// does not know.
pub const SUPPORTED_FEATURES: u64 = VIRTIO_F_VERSION_1
    | VIRTIO_F_RING_INDIRECT_DESC
    | VIRTIO_F_RING_EVENT_IDX
    | VIRTIO_BLK_F_SIZE_MAX
    | VIRTIO_BLK_F_SEG_MAX
    | VIRTIO_BLK_F_RO
    | VIRTIO_BLK_F_BLK_SIZE
    | VIRTIO_BLK_F_TOPOLOGY
    | VIRTIO_BLK_F_DISCARD
    | VIRTIO_BLK_F_WRITE_ZEROES;

#[derive(Debug, thiserror::Error)]
pub enum VhostUserBlockError {
    #[error(transparent)]
    VhostUser(#[from] VhostUserError),
    #[error("cannot read its configuration space: {0}")]
    Config(#[from] BackendError),
}

pub struct VhostUserBlock {
    id: String,
    config: Vec<u8>,
    avail_features: u64,
    /// The backend connection and the queue's eventfds.
    pub(super) vu: VhostUserDevice,
}

impl VhostUserBlock {
    /// Connects to the backend at `socket`; `writeback` offers FLUSH.
    pub fn new(id: &str, socket: &Path, writeback: bool) -> Result<Self, VhostUserBlockError> {
        let mut vu = VhostUserDevice::connect(
            ("vhost-user-blk", id),
            socket,
            1,
            VhostUserProtocolFeatures::CONFIG,
            &METRICS.vhost_user_block,
        )?;
        let config = vu.backend_mut()?.get_config(CONFIG_LEN)?;
        let mut supported = SUPPORTED_FEATURES;
        if writeback {
            supported |= VIRTIO_BLK_F_FLUSH;
        }
        Ok(VhostUserBlock {
            id: id.to_string(),
            config,
            avail_features: vu.backend_features() & supported,
            vu,
        })
    }

    /// Whether the backend serves the drive read-only.
    pub fn read_only(&self) -> bool {
        self.avail_features & VIRTIO_BLK_F_RO != 0
    }

    /// Capacity in sectors, as the backend last said.
    pub fn capacity(&self) -> u64 {
        let mut c = [0u8; 8];
        c.copy_from_slice(&self.config[..8]);
        u64::from_le_bytes(c)
    }

    /// Reads the configuration space again (PATCH /drives); the caller
    /// raises the configuration-change interrupt.
    pub fn reload_config(&mut self) -> Result<(), VhostUserBlockError> {
        let read = self.vu.backend_mut().and_then(|b| b.get_config(CONFIG_LEN));
        match read {
            Ok(config) => {
                self.config = config;
                Ok(())
            }
            Err(e) => {
                self.vu.fail(&e);
                Err(e.into())
            }
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }
}

impl VirtioDevice for VhostUserBlock {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn queue_events(&self) -> &[EventFd] {
        self.vu.kicks()
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, active: ActiveQueues) -> Result<(), ActivateError> {
        self.vu.activate(active)
    }

    fn reset(&mut self) {
        self.vu.reset();
    }

    /// The backend owns the ring's progress: there is nothing here to save.
    fn queue_states(&self) -> Vec<QueueState> {
        Vec::new()
    }

    fn save_state(&self) -> DeviceState {
        DeviceState::VhostUserBlock(super::VhostUserBlockState {
            drive_id: self.id.clone(),
        })
    }

    fn restore_state(&mut self, _state: &DeviceState) -> Result<(), VirtioPersistError> {
        Err(VirtioPersistError::Invalid(super::NOT_RESTORABLE))
    }

    fn activate_restored(&mut self, _active: ActiveQueues) -> Result<(), ActivateError> {
        Err(ActivateError::Device(super::NOT_RESTORABLE.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn a_backend_that_is_not_there_or_hangs_up_is_a_clear_error() {
        let d = std::env::temp_dir().join(format!("husk-vub-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let sock = d.join("blk.sock");
        let e = VhostUserBlock::new("d", &sock, false)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.starts_with("cannot connect to the vhost-user backend at"),
            "{e}"
        );
        let listener = UnixListener::bind(&sock).unwrap();
        let server = std::thread::spawn(move || drop(listener.accept().unwrap()));
        let e = VhostUserBlock::new("d", &sock, false)
            .err()
            .unwrap()
            .to_string();
        server.join().unwrap();
        assert!(e.contains("closed the connection"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
