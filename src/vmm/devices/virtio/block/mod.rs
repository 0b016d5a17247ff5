//! virtio-blk: a raw file or block device (`PUT /drives/{drive_id}`).

mod device;
mod event_handler;
pub mod request;

pub use device::{open_disk, Block, BlockError, BlockOptions};

#[cfg(test)]
mod tests;
