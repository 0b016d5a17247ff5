//! virtio-balloon in a snapshot: the target and the driver's `actual`,
//! the statistics interval, the last figures the guest reported, and the
//! statistics buffer the device holds (popped from its queue, so it is
//! in no ring: without it the driver would never report again).
//! The free page hinting exchange's ids are kept too.
//! Inflated pages need nothing: they are absent from the memory file as
//! from memory, and read as zeros after a restore as before it.

use serde::{Deserialize, Serialize};

use super::device::GuestStats;
use super::hinting::Hinting;
use super::Balloon;
use crate::vmm::devices::virtio::persist::VirtioPersistError;
use crate::vmm::snapshot::Persist;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonState {
    pub target_pages: u32,
    pub actual_pages: u32,
    pub stats_polling_interval_s: u16,
    pub stats_desc: Option<u16>,
    pub stats: GuestStats,
    pub hinting: Hinting,
}

impl Persist for Balloon {
    type State = BalloonState;
    type Error = VirtioPersistError;

    fn save(&self) -> BalloonState {
        BalloonState {
            target_pages: self.target_pages,
            actual_pages: self.actual_pages,
            stats_polling_interval_s: self.stats_interval_s,
            stats_desc: self.stats_desc,
            stats: self.stats,
            hinting: self.hinting,
        }
    }

    fn restore(&mut self, s: &BalloonState) -> Result<(), VirtioPersistError> {
        let has_stats = self.offered & super::VIRTIO_BALLOON_F_STATS_VQ != 0;
        if has_stats != (s.stats_polling_interval_s > 0) {
            return Err(VirtioPersistError::Invalid(
                "the balloon's statistics setting differs from the snapshot's",
            ));
        }
        if s.stats_desc.is_some() && !has_stats {
            return Err(VirtioPersistError::Invalid(
                "a statistics buffer for a balloon without statistics",
            ));
        }
        if s.stats_desc.is_some_and(|d| d >= super::device::QUEUE_SIZE) {
            return Err(VirtioPersistError::Invalid(
                "the statistics buffer is outside the queue",
            ));
        }
        if !self.hinting_enabled() && s.hinting != Hinting::default() {
            return Err(VirtioPersistError::Invalid(
                "free page hinting state for a balloon without hinting",
            ));
        }
        if !s.hinting.is_consistent() {
            return Err(VirtioPersistError::Invalid(
                "the free page hinting ids are not ones the device hands out",
            ));
        }
        self.target_pages = s.target_pages;
        self.actual_pages = s.actual_pages;
        self.stats_desc = s.stats_desc;
        self.stats = s.stats;
        // A restored VM (a clone, perhaps) starts with no run: hints in
        // flight at the snapshot are not dropped.
        self.hinting = s.hinting;
        self.hinting.reset();
        if s.stats_polling_interval_s != self.stats_interval_s {
            self.set_stats_interval(s.stats_polling_interval_s)
                .map_err(|_| VirtioPersistError::Invalid("cannot arm the statistics timer"))?;
        }
        Ok(())
    }
}
