//! virtio-rng in a snapshot: only its rate limiter's budgets. A request
//! is filled synchronously once popped, so none is in flight at a
//! snapshot; one the limiter held back is still available in the ring.

use serde::{Deserialize, Serialize};

use super::Rng;
use crate::vmm::devices::rate_limiter::RateLimiterState;
use crate::vmm::devices::virtio::persist::VirtioPersistError;
use crate::vmm::snapshot::Persist;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    pub limiter: RateLimiterState,
}

impl Persist for Rng {
    type State = RngState;
    type Error = VirtioPersistError;

    fn save(&self) -> RngState {
        RngState {
            limiter: Persist::save(&self.limiter),
        }
    }

    fn restore(&mut self, s: &RngState) -> Result<(), VirtioPersistError> {
        let Ok(()) = Persist::restore(&mut self.limiter, &s.limiter);
        Ok(())
    }
}
