//! virtio-vsock (`PUT /vsock`): Firecracker's hybrid vsock, guest streams
//! carried over host Unix sockets.
//!
//! - `device.rs`: the virtio device (queues, configuration space);
//! - `packet.rs`: the 44-byte header and payload, parsed and bounded;
//! - `connection.rs`: one stream, its state and credit;
//! - `muxer.rs`: the listener, the `CONNECT` handshake, every connection,
//!   and what waits for the guest's RX buffers;
//! - `unix.rs`: binding `uds_path`, connecting to `<uds_path>_<port>`;
//! - `persist.rs`: what a snapshot keeps (no connections);
//! - `event_handler.rs`: the fds on the event loop.

mod connection;
mod device;
mod event_handler;
mod muxer;
pub mod packet;
mod persist;
pub mod unix;

pub use connection::CONN_BUF;
pub use device::{Vsock, VsockError, QUEUE_SIZE};
pub use muxer::{parse_connect, ConnKey, CONNECT_TIMEOUT, MAX_CONNECTIONS};
pub use persist::VsockState;

#[cfg(test)]
mod tests;
