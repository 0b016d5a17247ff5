//! Thin wrappers over kvm-ioctls and vm-memory.

pub mod memory;
pub mod persist;
pub mod vcpu;
pub mod vm;

pub use vm::{MemSlots, Vm, VmError};
