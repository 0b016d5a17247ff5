//! The guest side of a container, and the host's way to it.
//!
//! - `protocol`: the frames and messages between the host and the agent
//!   (shared by both sides; `docs/agent-protocol.md`).
//! - `guest/`: `husk-agent` itself, PID 1 in the guest: it mounts the
//!   container's root, runs and relays its processes, and ends the VM.
//! - `client`: the host side, async, as the daemon uses it.
//! - `initramfs`: the initramfs that carries the agent as `/init`.

pub mod client;
pub mod guest;
pub mod initramfs;
pub mod protocol;
