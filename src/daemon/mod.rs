//! `husk serve`: the daemon that runs containers, each in its own
//! microVM, behind an HTTP/JSON API (`api`). Records live on disk
//! (`state`), logs too (`logs`); `containers` holds the lifecycle and
//! `backend` starts the VMs (husk-vmm on KVM, or QEMU's software
//! emulation where the host cannot run the guest kernel).

pub mod api;
pub mod archive;
pub mod attach;
pub mod backend;
pub mod containers;
pub mod images;
pub mod logs;
pub mod mounts;
pub mod network;
pub mod networks;
pub mod openapi;
pub mod serve;
pub mod state;
pub mod volume;
pub mod volumes;

pub use serve::{serve, ServeArgs};
