//! virtio-vsock in a snapshot. As in Firecracker, connections do not
//! survive: their host ends were sockets of the process that took the
//! snapshot, gone by the time it is restored. The restored device starts
//! with a muxer that has no connection, listening at the (possibly new)
//! `uds_path` of the restored configuration, and once the transport has
//! started it again it puts VIRTIO_VSOCK_EVENT_TRANSPORT_RESET in the
//! guest's event queue (queue 2) and raises the interrupt, so that the
//! guest's driver resets every socket it had connected. Its listening
//! sockets stay, so host clients (`CONNECT <port>`) and new guest
//! connections work as before.
//!
//! Nothing else is saved: the queues are the transport's, and the CID is
//! the restored configuration's (the guest reads it again on
//! TRANSPORT_RESET). The saved CID is kept to tell when it changed.

use serde::{Deserialize, Serialize};

use super::Vsock;
use crate::vmm::devices::virtio::persist::VirtioPersistError;
use crate::vmm::snapshot::Persist;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockState {
    pub guest_cid: u64,
}

impl Persist for Vsock {
    type State = VsockState;
    type Error = VirtioPersistError;

    fn save(&self) -> VsockState {
        VsockState {
            guest_cid: self.guest_cid(),
        }
    }

    fn restore(&mut self, s: &VsockState) -> Result<(), VirtioPersistError> {
        if s.guest_cid != self.guest_cid() {
            tracing::info!(
                saved = s.guest_cid,
                now = self.guest_cid(),
                "virtio-vsock: the guest CID changed since the snapshot"
            );
        }
        Ok(())
    }
}
