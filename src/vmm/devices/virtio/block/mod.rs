//! virtio-blk: a raw file or block device (`PUT /drives/{drive_id}`).

mod device;
mod event_handler;
mod persist;
pub mod request;

pub use device::{open_disk, Block, BlockError, BlockOptions};
pub use persist::BlockState;

#[cfg(test)]
mod tests;
