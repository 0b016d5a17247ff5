//! virtio-net: a TAP device on the host (`PUT /network-interfaces/{iface_id}`).

mod device;
mod event_handler;
mod persist;
pub mod tap;

pub use device::{
    tap_offloads, Net, NetError, NetOptions, RxState, MAX_FRAME_LEN, QUEUE_SIZE, RX_QUEUE, TX_QUEUE,
};
pub use persist::NetState;
pub use tap::{Tap, TapError, VNET_HDR_LEN};

#[cfg(test)]
mod tests;
