//! virtio-balloon (`PUT /balloon`): the host asks the guest for memory
//! back (a target in `PATCH /balloon`), the guest's driver hands over
//! pages, and the host drops them from its memory. Optional statistics
//! (`GET /balloon/statistics`) report the guest's memory figures.

mod device;
mod event_handler;
mod hinting;
mod persist;

#[cfg(test)]
mod tests;

pub use device::{
    mib_to_pages, Balloon, BalloonError, BalloonStats, GuestStats, BALLOON_PAGE_SIZE,
    PAGES_PER_MIB, QUEUE_SIZE, VIRTIO_BALLOON_F_DEFLATE_ON_OOM, VIRTIO_BALLOON_F_PAGE_REPORTING,
    VIRTIO_BALLOON_F_STATS_VQ,
};
pub use hinting::{Hinting, HintingError, HintingStatus, VIRTIO_BALLOON_F_FREE_PAGE_HINT};
pub use persist::BalloonState;
