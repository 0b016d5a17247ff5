//! Free page hinting (VIRTIO_BALLOON_F_FREE_PAGE_HINT, virtio 1.2 section
//! 5.5.6.7), as Firecracker's `/balloon/hinting/*` drives it:
//!
//! - the host starts a run by putting a new command id (2 or more) in the
//!   configuration's `free_page_hint_cmd_id` and raising a
//!   configuration-change interrupt (`PATCH /balloon/hinting/start`);
//! - the driver answers on the hinting queue with a readable buffer
//!   holding that id (le32), then gives device-writable buffers, each
//!   over a block of free guest memory, which the host drops as it does
//!   inflated pages; it ends its run with a buffer holding STOP (0);
//! - the driver gives the hinted pages back to its allocator when the
//!   host puts DONE (1) in the configuration (`PATCH
//!   /balloon/hinting/stop`, or at once when the guest's STOP arrives and
//!   the run was started with `acknowledge_on_stop`).
//!
//! A hint outside a run (the guest's last id is not the host's) is
//! returned untouched: the guest may already be using those pages again.
//!
//! As in Firecracker, a hint is dropped when the VMM serves its buffer.
//! Linux's driver may take hinted pages back early, under memory
//! pressure (its shrinker), before the host said DONE; a page it takes
//! back and writes before the VMM served the hint would then read as
//! zeros. The window is the time a buffer waits in the queue, but it is
//! not closed: where that matters, free page reporting has no such
//! window (a reported page is the host's until the buffer is returned).
//!
//! The host's id starts at STOP (0), as Firecracker's does; a restore or
//! a device reset ends any run (DONE), so a clone never drops hints that
//! were in flight when the snapshot was taken.

use serde::{Deserialize, Serialize};
use vm_memory::{Bytes, GuestAddress};

use super::device::{discard_range, Balloon};
use crate::vmm::metrics::METRICS;

pub const VIRTIO_BALLOON_F_FREE_PAGE_HINT: u64 = 1 << 3;
/// The guest's id that ends its run; also the host's "stop reporting".
pub const CMD_ID_STOP: u32 = 0;
/// The host is done with the hints: the guest may use the pages again.
pub const CMD_ID_DONE: u32 = 1;
/// The first id a run may have.
const FIRST_RUN_ID: u32 = 2;

/// The hinting exchange's state (kept in snapshots).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hinting {
    /// What the configuration's `free_page_hint_cmd_id` holds.
    pub host_cmd: u32,
    /// The last id the guest sent, if any.
    pub guest_cmd: Option<u32>,
    /// Put DONE in the configuration when the guest's STOP arrives.
    pub acknowledge_on_stop: bool,
    /// The id of the last run started.
    pub last_run: u32,
}

impl Default for Hinting {
    fn default() -> Self {
        Hinting {
            host_cmd: CMD_ID_STOP,
            guest_cmd: None,
            acknowledge_on_stop: true,
            last_run: CMD_ID_DONE,
        }
    }
}

/// `GET /balloon/hinting/status` (`guest_cmd` is null before the guest
/// sent one, as in Firecracker).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct HintingStatus {
    pub host_cmd: u32,
    pub guest_cmd: Option<u32>,
}

/// Why a hinting command cannot be given now.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HintingError {
    #[error("the guest's balloon driver is not running (the device is not activated)")]
    NotActive,
    #[error("the guest's balloon driver did not accept free page hinting")]
    NotNegotiated,
}

impl Hinting {
    /// A new run's id: the next one, wrapping past the reserved ids.
    fn next_run(&mut self) -> u32 {
        let next = self.last_run.wrapping_add(1).max(FIRST_RUN_ID);
        self.last_run = next;
        next
    }

    /// Whether hints belong to the run the host asked for.
    fn in_run(&self) -> bool {
        self.host_cmd >= FIRST_RUN_ID && self.guest_cmd == Some(self.host_cmd)
    }

    /// Ends any run and forgets the guest's id (a reset or a restore).
    pub fn reset(&mut self) {
        if self.host_cmd >= FIRST_RUN_ID {
            self.host_cmd = CMD_ID_DONE;
        }
        self.guest_cmd = None;
    }

    /// Whether a snapshot's state can be one husk wrote: the host's id is
    /// STOP, DONE, or a run id it handed out.
    pub fn is_consistent(&self) -> bool {
        self.host_cmd <= CMD_ID_DONE
            || (self.host_cmd <= self.last_run && self.last_run >= FIRST_RUN_ID)
    }
}

impl Balloon {
    /// Whether the device offers free page hinting.
    pub fn hinting_enabled(&self) -> bool {
        self.offered & VIRTIO_BALLOON_F_FREE_PAGE_HINT != 0
    }

    /// The driver runs and accepted hinting.
    fn hinting_ready(&self) -> Result<(), HintingError> {
        if self.active.is_empty() {
            return Err(HintingError::NotActive);
        }
        if self.map.hint.is_none() {
            return Err(HintingError::NotNegotiated);
        }
        Ok(())
    }

    /// Starts a run; the caller tells the driver (a configuration
    /// change). Returns the run's id.
    pub fn start_hinting(&mut self, acknowledge_on_stop: bool) -> Result<u32, HintingError> {
        self.hinting_ready()?;
        let id = self.hinting.next_run();
        self.hinting.host_cmd = id;
        self.hinting.acknowledge_on_stop = acknowledge_on_stop;
        Ok(id)
    }

    /// Tells the driver the host is done with the hints; the caller tells
    /// the driver (a configuration change).
    pub fn stop_hinting(&mut self) -> Result<(), HintingError> {
        self.hinting_ready()?;
        self.hinting.host_cmd = CMD_ID_DONE;
        Ok(())
    }

    pub fn hinting_status(&self) -> HintingStatus {
        HintingStatus {
            host_cmd: self.hinting.host_cmd,
            guest_cmd: self.hinting.guest_cmd,
        }
    }

    /// Serves the hinting queue: command ids from the guest, and blocks
    /// of free memory, dropped while a run is on. Returns how many chains
    /// were served.
    pub fn process_hinting(&mut self) -> usize {
        let advice = self.advice;
        let Some(q) = self.map.hint.and_then(|i| self.active.get_mut(i)) else {
            return 0;
        };
        let hinting = &mut self.hinting;
        let mut acked = false;
        let served = q.serve(&METRICS.balloon.malformed, |mem, chain| {
            for desc in chain {
                if !desc.is_write_only() {
                    let mut id = [0u8; 4];
                    if desc.len() < 4
                        || mem
                            .read_slice(&mut id, GuestAddress(desc.addr().0))
                            .is_err()
                    {
                        METRICS.balloon.malformed.inc();
                        continue;
                    }
                    let id = u32::from_le_bytes(id);
                    hinting.guest_cmd = Some(id);
                    if id == CMD_ID_STOP
                        && hinting.acknowledge_on_stop
                        && hinting.host_cmd >= FIRST_RUN_ID
                    {
                        hinting.host_cmd = CMD_ID_DONE;
                        acked = true;
                    }
                } else if hinting.in_run() {
                    let pages = discard_range(mem, desc.addr().0, desc.len(), advice);
                    METRICS.balloon.hinted_pages.add(pages);
                } else {
                    METRICS.balloon.stale_hints.inc();
                }
            }
            Some(0)
        });
        if acked {
            q.interrupt.config_changed();
        }
        served
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_skip_the_reserved_ones_when_they_wrap() {
        let mut h = Hinting::default();
        assert_eq!(h.next_run(), 2);
        assert_eq!(h.next_run(), 3);
        h.last_run = u32::MAX;
        assert_eq!(h.next_run(), 2);
        h.host_cmd = 2;
        assert!(!h.in_run());
        h.guest_cmd = Some(2);
        assert!(h.in_run());
        h.host_cmd = CMD_ID_DONE;
        h.guest_cmd = Some(CMD_ID_DONE);
        assert!(!h.in_run());
        // A reset ends a run and forgets the guest's id.
        h.host_cmd = 2;
        h.reset();
        assert_eq!((h.host_cmd, h.guest_cmd), (CMD_ID_DONE, None));
        // Only ids husk handed out are consistent.
        assert!(Hinting::default().is_consistent());
        let h = Hinting {
            host_cmd: 7,
            last_run: 5,
            ..Hinting::default()
        };
        assert!(!h.is_consistent());
        let h = Hinting {
            host_cmd: 5,
            last_run: 5,
            ..Hinting::default()
        };
        assert!(h.is_consistent());
    }
}
