//! Emulated devices and the buses vCPU exits are dispatched on.

pub mod bus;
pub mod interrupt;
pub mod legacy;
pub mod persist;
pub mod rate_limiter;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError};
pub use interrupt::IrqTrigger;
