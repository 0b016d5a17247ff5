//! Container images: references, a content-addressed store, pulling from
//! registries, importing and exporting archives, and turning an image into
//! a bootable ext4 root filesystem.

pub mod archive;
pub mod cli;
pub mod digest;
pub mod local;
pub mod reference;
pub mod registry;
pub mod rootfs;
pub mod store;
pub mod tarscan;
pub mod unpack;
pub mod via_daemon;

pub use digest::Digest;
pub use reference::ImageRef;
pub use store::{ImageRecord, LayerRecord, Store};
