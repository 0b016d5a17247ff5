//! Emulated devices and the buses vCPU exits are dispatched on.

pub mod bus;
pub mod legacy;

pub use bus::{Bus, BusDevice, BusError};
