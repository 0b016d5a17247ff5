//! husk: a KVM microVM monitor.

pub mod agent;
pub mod archive;
pub mod bench;
pub mod cli;
pub mod client;
pub mod daemon;
pub mod doctor;
pub mod image;
pub mod jail;
pub mod probe;
pub mod shim;
pub mod text;
pub mod vmm;
