//! virtio-pmem (`PUT /pmem/{id}`): a host file mapped into the guest's
//! physical memory as persistent memory, with FLUSH requests that sync
//! it. The window sits above RAM (layout.rs's device memory), in a KVM
//! memory slot of its own, read-only when the device is.

mod device;
mod event_handler;
mod mapping;
mod persist;

#[cfg(test)]
mod tests;

pub use device::{Pmem, PmemError, CONFIG_LEN, QUEUE_SIZE, REQ_TYPE_FLUSH, STATUS_ERR, STATUS_OK};
pub use mapping::{open_backing, MappingError, PmemMapping, ReadOnlyWindow};
pub use persist::PmemState;
