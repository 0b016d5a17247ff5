//! virtio-blk: a raw file or block device (`PUT /drives/{drive_id}`),
//! or a vhost-user-blk backend ([`vhost_user`]).

mod async_io;
pub(crate) mod device;
mod event_handler;
mod persist;
pub mod request;
pub mod vhost_user;

pub use async_io::{AsyncIoError, MAX_BOUNCE};
pub use device::{open_disk, Block, BlockError, BlockOptions};
pub use persist::BlockState;

#[cfg(test)]
mod tests;
