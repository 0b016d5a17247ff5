//! Snapshots: the state file ([`format`]), the [`Persist`] trait every
//! stateful part implements, guest memory files ([`memory`]), and the
//! userfaultfd hand-off to an external page server ([`uffd`]).
//!
//! A snapshot is two files: the state file (this module's
//! [`MicrovmState`], small) and the memory file (the guest's RAM, sparse).
//! `docs/snapshot-format.md` describes both.

pub mod actions;
pub mod cli;
pub mod format;
pub mod memory;
pub mod persist;
pub mod uffd;

pub use persist::Persist;

use serde::{Deserialize, Serialize};

use crate::vmm::device_manager::DevicesState;
use crate::vmm::kvm::persist::{VcpuState, VmState};

/// Everything a state file holds.
#[derive(Serialize, Deserialize)]
pub struct MicrovmState {
    /// The husk version that wrote it (informative; the format version
    /// in the header is what is checked).
    pub husk_version: String,
    /// The microVM's configuration, as JSON (`GET /vm/config`): a restore
    /// rebuilds the same machine from it.
    pub config_json: String,
    /// Guest memory regions: (guest-physical start, length), laid out one
    /// after the other in the memory file.
    pub memory: Vec<(u64, u64)>,
    pub vm: VmState,
    pub vcpus: Vec<VcpuState>,
    pub devices: DevicesState,
}
