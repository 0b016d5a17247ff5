//! virtio-rng: entropy from the host's `getrandom` (`PUT /entropy`).

mod device;
mod event_handler;
mod persist;

pub use device::{Rng, RngError, MAX_REQUEST_BYTES};
pub use persist::RngState;
