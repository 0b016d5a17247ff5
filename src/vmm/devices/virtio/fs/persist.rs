//! virtio-fs and snapshots: it has none. The backend (virtiofsd) holds
//! the file system's state (open files, inode numbers the guest knows)
//! and the rings' progress, none of which husk can save, so
//! `PUT /snapshot/create` refuses a VM with an fs device before it saves
//! anything. [`FsState`] exists only so the device can answer the
//! transport; a restore of it is always refused.

use serde::{Deserialize, Serialize};

/// Why a virtio-fs device is never restored.
pub const NOT_RESTORABLE: &str =
    "a virtio-fs device cannot be restored: its vhost-user backend's state is not in snapshots";

/// Never written to a snapshot (see the module's documentation).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsState {
    pub tag: String,
}
