//! virtio-pmem in a snapshot: where its window was, and its rate
//! limiter's budgets. The file's contents are not in the snapshot: the
//! file is the device's memory, and a restore maps it again from
//! `path_on_host` (it must still be there, the same size). A request is
//! answered once popped, so none is in flight at a snapshot.

use serde::{Deserialize, Serialize};

use super::Pmem;
use crate::vmm::devices::rate_limiter::RateLimiterState;
use crate::vmm::devices::virtio::persist::VirtioPersistError;
use crate::vmm::snapshot::Persist;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PmemState {
    /// The window's guest-physical start and size.
    pub start: u64,
    pub size: u64,
    pub limiter: RateLimiterState,
}

impl Persist for Pmem {
    type State = PmemState;
    type Error = VirtioPersistError;

    fn save(&self) -> PmemState {
        PmemState {
            start: self.start,
            size: self.size(),
            limiter: Persist::save(&self.limiter),
        }
    }

    /// The device, mapped again from its file, must sit where it sat:
    /// a file that changed size would move the window the guest knows.
    fn restore(&mut self, s: &PmemState) -> Result<(), VirtioPersistError> {
        if (s.start, s.size) != (self.start, self.size()) {
            tracing::error!(
                id = %self.id,
                saved_start = s.start,
                saved_size = s.size,
                start = self.start,
                size = self.size(),
                "virtio-pmem: the backing file no longer fits the snapshot"
            );
            return Err(VirtioPersistError::Invalid(
                "the pmem backing file's size differs from the snapshot's (the window would move)",
            ));
        }
        let Ok(()) = Persist::restore(&mut self.limiter, &s.limiter);
        Ok(())
    }
}
