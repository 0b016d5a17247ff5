//! Snapshots: the state file ([`format`]), the [`Persist`] trait every
//! stateful part implements, guest memory files ([`memory`]), and the
//! userfaultfd hand-off to an external page server ([`uffd`]).

pub mod format;
pub mod memory;
pub mod persist;
pub mod uffd;

pub use persist::Persist;
