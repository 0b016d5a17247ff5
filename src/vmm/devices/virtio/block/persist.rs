//! virtio-blk in a snapshot: its rate limiter's budgets, and the capacity
//! the guest was told.
//!
//! No request is in flight at a snapshot, so none is saved: a request is
//! carried out synchronously on the event-loop thread, from the moment
//! [`Block::process_queue`] pops its chain to the moment `execute` has
//! read or written the file and the chain is on the used ring, and a
//! snapshot is taken between two events. A request the rate limiter held
//! back was never taken (`next_avail` went back), so it is still available
//! in the ring, and the restored device serves it. Writes have reached the
//! backing file (the host's page cache) by then; keeping that file as it
//! was at the snapshot is the caller's business.
//!
//! The backing file is opened again from the restored configuration. If
//! its size differs from the capacity the guest was told, a warning is
//! logged: the guest keeps the old capacity until it re-reads its
//! configuration, and requests past the new end fail with an I/O error.

use serde::{Deserialize, Serialize};

use super::Block;
use crate::vmm::devices::rate_limiter::RateLimiterState;
use crate::vmm::devices::virtio::persist::VirtioPersistError;
use crate::vmm::snapshot::Persist;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockState {
    /// Sectors, as the guest last read them.
    pub capacity: u64,
    pub limiter: RateLimiterState,
}

impl Persist for Block {
    type State = BlockState;
    type Error = VirtioPersistError;

    fn save(&self) -> BlockState {
        BlockState {
            capacity: self.capacity(),
            limiter: Persist::save(&self.limiter),
        }
    }

    fn restore(&mut self, s: &BlockState) -> Result<(), VirtioPersistError> {
        if s.capacity != self.capacity() {
            tracing::warn!(
                saved = s.capacity,
                now = self.capacity(),
                "virtio-blk: the backing file's size changed since the snapshot (sectors)"
            );
        }
        let Ok(()) = Persist::restore(&mut self.limiter, &s.limiter);
        Ok(())
    }
}
