//! The vhost-user frontend the devices served by an external backend
//! process share (virtio-fs, vhost-user-blk): husk connects to the
//! backend's Unix socket at InstanceStart, negotiates features, and on
//! DRIVER_OK gives the backend guest memory (a shared memfd: see
//! [`crate::vmm::config::VmConfig::needs_shared_memory`]) and the queues;
//! the backend then reads and answers the guest's requests itself.

mod backend;
mod device;
mod event_handler;

pub use backend::{Backend, BackendError, REPLY_TIMEOUT};
pub use device::{VhostUserDevice, VhostUserError};
