//! The virtio-fs model (virtio 1.x, section 5.11): one hiprio queue and
//! `num_queues` request queues, all served by an external vhost-user
//! backend; the configuration space is the tag (36 bytes, NUL padded)
//! and `num_request_queues` (le32).
//!
//! The backend connection, the queues' eventfds and the work the vCPU
//! threads queue for the VMM thread are [`VhostUserDevice`]'s, which
//! vhost-user-blk shares.

use std::path::Path;

use vhost::vhost_user::VhostUserProtocolFeatures;
use virtio_queue::QueueState;
use vmm_sys_util::eventfd::EventFd;

use crate::vmm::config::MAX_TAG_LEN;
use crate::vmm::devices::virtio::persist::{DeviceState, VirtioPersistError};
use crate::vmm::devices::virtio::vhost_user::{VhostUserDevice, VhostUserError};
use crate::vmm::devices::virtio::{
    read_config_bytes, ActivateError, ActiveQueues, VirtioDevice, TYPE_FS, VIRTIO_F_RING_EVENT_IDX,
    VIRTIO_F_RING_INDIRECT_DESC, VIRTIO_F_VERSION_1,
};
use crate::vmm::metrics::METRICS;

/// Tag, then le32 num_request_queues.
pub const CONFIG_LEN: usize = MAX_TAG_LEN + 4;
/// The features husk passes on from the backend; anything else it
/// offers (notification queues, DAX windows) needs VMM support husk
/// does not have.
pub const SUPPORTED_FEATURES: u64 =
    VIRTIO_F_VERSION_1 | VIRTIO_F_RING_INDIRECT_DESC | VIRTIO_F_RING_EVENT_IDX;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error(transparent)]
    VhostUser(#[from] VhostUserError),
}

pub struct Fs {
    pub(super) tag: String,
    config: [u8; CONFIG_LEN],
    queue_sizes: Vec<u16>,
    avail_features: u64,
    /// The backend connection and the queues' eventfds.
    pub(super) vu: VhostUserDevice,
}

impl Fs {
    /// Connects to the backend at `socket` for a device with `num_queues`
    /// request queues of `queue_size` entries.
    pub fn new(
        tag: &str,
        socket: &Path,
        num_queues: u16,
        queue_size: u16,
    ) -> Result<Self, FsError> {
        let count = usize::from(num_queues) + 1;
        let vu = VhostUserDevice::connect(
            ("virtio-fs", tag),
            socket,
            count,
            VhostUserProtocolFeatures::empty(),
            &METRICS.fs,
        )?;
        let mut config = [0u8; CONFIG_LEN];
        let n = tag.len().min(MAX_TAG_LEN);
        config[..n].copy_from_slice(&tag.as_bytes()[..n]);
        config[MAX_TAG_LEN..].copy_from_slice(&u32::from(num_queues).to_le_bytes());
        Ok(Fs {
            tag: tag.to_string(),
            config,
            queue_sizes: vec![queue_size; count],
            avail_features: vu.backend_features() & SUPPORTED_FEATURES,
            vu,
        })
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        TYPE_FS
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
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

    /// The backend owns the rings' progress: there is nothing here to save.
    fn queue_states(&self) -> Vec<QueueState> {
        Vec::new()
    }

    fn save_state(&self) -> DeviceState {
        DeviceState::Fs(super::persist::FsState {
            tag: self.tag.clone(),
        })
    }

    fn restore_state(&mut self, _state: &DeviceState) -> Result<(), VirtioPersistError> {
        Err(VirtioPersistError::Invalid(super::persist::NOT_RESTORABLE))
    }

    fn activate_restored(&mut self, _active: ActiveQueues) -> Result<(), ActivateError> {
        Err(ActivateError::Device(super::persist::NOT_RESTORABLE.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    fn dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("husk-fs-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_backend_that_hangs_up_at_once_is_a_clear_error() {
        let d = dir("hangup");
        let sock = d.join("fs.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let server = std::thread::spawn(move || drop(listener.accept().unwrap()));
        let e = Fs::new("share", &sock, 1, 128).err().unwrap().to_string();
        server.join().unwrap();
        assert!(
            e.contains("the vhost-user backend closed the connection"),
            "{e}"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn nothing_listening_is_a_clear_error() {
        let d = dir("refused");
        let sock = d.join("fs.sock");
        drop(UnixListener::bind(&sock).unwrap());
        let e = Fs::new("share", &sock, 1, 128).err().unwrap().to_string();
        assert!(
            e.starts_with("cannot connect to the vhost-user backend at"),
            "{e}"
        );
        assert!(e.contains("refused"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
