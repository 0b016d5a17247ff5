//! virtio-mem in a snapshot: the region's geometry (checked against the
//! device the configuration rebuilds), the sizes the driver sees, and
//! which blocks are plugged. Plugged memory itself is in the memory file
//! (the region is guest memory's last region); unplugged blocks are
//! holes there. A restore maps every slot holding a plugged block back
//! into the guest before any vCPU runs.

use serde::{Deserialize, Serialize};

use super::VirtioMem;
use crate::vmm::devices::virtio::persist::VirtioPersistError;
use crate::vmm::snapshot::Persist;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemState {
    pub addr: u64,
    pub region_size: u64,
    pub block_size: u64,
    pub slot_size: u64,
    pub usable_region_size: u64,
    pub plugged_size: u64,
    pub requested_size: u64,
    /// One bit per block.
    pub plugged: Vec<u64>,
}

impl Persist for VirtioMem {
    type State = MemState;
    type Error = VirtioPersistError;

    fn save(&self) -> MemState {
        let g = self.geo;
        MemState {
            addr: g.addr,
            region_size: g.region_size,
            block_size: g.block_size,
            slot_size: g.slot_size,
            usable_region_size: self.usable_region_size,
            plugged_size: self.plugged_size,
            requested_size: self.requested_size,
            plugged: self.plugged.clone(),
        }
    }

    fn restore(&mut self, s: &MemState) -> Result<(), VirtioPersistError> {
        let g = self.geo;
        if (s.addr, s.region_size, s.block_size, s.slot_size)
            != (g.addr, g.region_size, g.block_size, g.slot_size)
        {
            return Err(VirtioPersistError::Invalid(
                "the hotpluggable region differs from the snapshot's",
            ));
        }
        if s.plugged.len() != self.plugged.len() {
            return Err(VirtioPersistError::Invalid(
                "the plugged-block map does not fit the region",
            ));
        }
        let blocks = (g.region_size / g.block_size) as usize;
        let counted: u64 = s
            .plugged
            .iter()
            .enumerate()
            .map(|(i, w)| {
                // Bits past the last block must be clear.
                let valid = blocks.saturating_sub(i * 64).min(64);
                let mask = if valid == 64 {
                    u64::MAX
                } else {
                    (1u64 << valid) - 1
                };
                if w & !mask != 0 {
                    u64::MAX / 2
                } else {
                    u64::from(w.count_ones())
                }
            })
            .sum();
        let sizes_fit = s.usable_region_size <= g.region_size
            && s.requested_size <= g.region_size
            && s.requested_size.is_multiple_of(g.block_size)
            && counted.checked_mul(g.block_size) == Some(s.plugged_size);
        if !sizes_fit {
            return Err(VirtioPersistError::Invalid(
                "the plugged, requested or usable size does not fit the region",
            ));
        }
        self.usable_region_size = s.usable_region_size;
        self.plugged_size = s.plugged_size;
        self.requested_size = s.requested_size;
        self.plugged.clone_from(&s.plugged);
        self.map_plugged().map_err(|e| {
            tracing::error!("virtio-mem: {e}");
            VirtioPersistError::Invalid("cannot map plugged memory into the guest again")
        })
    }
}
