//! virtio-fs (`PUT /fs/{tag}`): a file system shared with the guest,
//! served by an external vhost-user backend such as virtiofsd. husk is
//! the frontend only: it connects to the backend's socket at
//! InstanceStart, offers the guest the backend's features (masked to
//! what husk supports), and on DRIVER_OK gives the backend guest memory
//! (a shared memfd) and the queues; the backend then reads and answers
//! the guest's FUSE requests itself.

mod device;
mod event_handler;
mod persist;

pub use crate::vmm::devices::virtio::vhost_user::{BackendError, REPLY_TIMEOUT};
pub use device::{Fs, FsError, CONFIG_LEN, SUPPORTED_FEATURES};
pub use persist::{FsState, NOT_RESTORABLE};
