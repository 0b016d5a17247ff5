//! virtio-mem (`PUT`/`PATCH`/`GET /hotplug/memory`): a region of
//! hotpluggable memory above RAM that the guest plugs and unplugs in
//! blocks, towards the size the host requests. The region is guest
//! memory's last region; its KVM slots come and go with what is plugged
//! (`region.rs`).

mod device;
mod event_handler;
mod persist;
mod region;
mod request;

#[cfg(test)]
mod tests;

pub use device::{Geometry, MemError, VirtioMem, QUEUE_SIZE};
pub use persist::MemState;
pub use region::{HotplugRegion, KvmSlots, RegionError, UnpluggedWindow};
pub use request::{
    Config, Request, Response, REQ_PLUG, REQ_STATE, REQ_UNPLUG, REQ_UNPLUG_ALL, RESP_ACK,
    RESP_BUSY, RESP_ERROR, RESP_NACK, STATE_MIXED, STATE_PLUGGED, STATE_UNPLUGGED,
    VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE,
};
