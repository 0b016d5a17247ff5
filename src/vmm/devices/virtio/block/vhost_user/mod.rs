//! vhost-user-blk: a drive served by an external backend process
//! (`socket` in `PUT /drives/{drive_id}`); see [`device`].
//!
//! Snapshots: like virtio-fs, it has none. The backend holds the ring's
//! progress and its own state, which husk cannot save, so
//! `PUT /snapshot/create` refuses a VM with a vhost-user drive before it
//! saves anything, as Firecracker does (its vhost-user-blk device does not
//! support snapshots). [`VhostUserBlockState`] exists only so the device
//! can answer the transport; a restore of it is always refused.

mod device;
mod event_handler;

use serde::{Deserialize, Serialize};

pub use device::{VhostUserBlock, VhostUserBlockError, CONFIG_LEN, SUPPORTED_FEATURES};

/// Why a vhost-user-blk device is never restored.
pub const NOT_RESTORABLE: &str =
    "a vhost-user-blk drive cannot be restored: its backend's state is not in snapshots";

/// Never written to a snapshot (see above).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VhostUserBlockState {
    pub drive_id: String,
}
