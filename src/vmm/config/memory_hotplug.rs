//! `PUT`/`PATCH`/`GET /hotplug/memory`: hotpluggable memory through a
//! virtio-mem device, in Firecracker's shapes (`MemoryHotplugConfig`,
//! `MemoryHotplugSizeUpdate`, `MemoryHotplugStatus`) and with its rules.

use serde::{Deserialize, Serialize};

/// The smallest block the guest (un)plugs, and the default.
pub const MIN_BLOCK_SIZE_MIB: u64 = 2;
/// The smallest slot the host maps at once, and the default.
pub const MIN_SLOT_SIZE_MIB: u64 = 128;
/// The most hotpluggable memory: the device memory space above RAM is
/// 512 GiB (layout.rs), and pmem windows share it.
pub const MAX_TOTAL_SIZE_MIB: u64 = 512 << 10;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum MemoryHotplugConfigError {
    #[error("block_size_mib must be at least {MIN_BLOCK_SIZE_MIB}, not {0}")]
    BlockSizeTooSmall(u64),
    #[error("block_size_mib must be a power of 2, not {0}")]
    BlockSizeNotPowerOfTwo(u64),
    #[error("slot_size_mib must be at least {MIN_SLOT_SIZE_MIB}, not {0}")]
    SlotSizeTooSmall(u64),
    #[error("slot_size_mib {slot} must be a multiple of block_size_mib {block}")]
    SlotSizeNotMultipleOfBlockSize { slot: u64, block: u64 },
    #[error("total_size_mib {total} must be at least slot_size_mib {slot}")]
    TotalSizeTooSmall { total: u64, slot: u64 },
    #[error("total_size_mib {total} must be a multiple of slot_size_mib {slot}")]
    TotalSizeNotMultipleOfSlotSize { total: u64, slot: u64 },
    #[error("total_size_mib {0} is more than the {MAX_TOTAL_SIZE_MIB} MiB husk can place")]
    TotalSizeTooLarge(u64),
    #[error("requested_size_mib {requested} must be a multiple of block_size_mib {block}")]
    RequestedNotMultipleOfBlockSize { requested: u64, block: u64 },
    #[error("requested_size_mib {requested} is more than total_size_mib {total}")]
    RequestedTooLarge { requested: u64, total: u64 },
    #[error("no hotpluggable memory is configured: PUT /hotplug/memory first")]
    NotConfigured,
}

fn default_block_size_mib() -> u64 {
    MIN_BLOCK_SIZE_MIB
}

fn default_slot_size_mib() -> u64 {
    MIN_SLOT_SIZE_MIB
}

/// `PUT /hotplug/memory`, and the `memory-hotplug` section of a config.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryHotplugConfig {
    /// The region's size: the most the guest can have plugged.
    pub total_size_mib: u64,
    /// What the guest plugs and unplugs at once.
    #[serde(default = "default_block_size_mib")]
    pub block_size_mib: u64,
    /// What the host maps into the guest at once (a KVM memory slot).
    #[serde(default = "default_slot_size_mib")]
    pub slot_size_mib: u64,
}

/// `PATCH /hotplug/memory`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryHotplugSizeUpdate {
    pub requested_size_mib: u64,
}

/// `GET /hotplug/memory`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct MemoryHotplugStatus {
    pub total_size_mib: u64,
    pub slot_size_mib: u64,
    pub block_size_mib: u64,
    pub plugged_size_mib: u64,
    pub requested_size_mib: u64,
}

impl MemoryHotplugConfig {
    /// Firecracker's rules: a block of at least 2 MiB and a power of
    /// two; a slot of at least 128 MiB and whole blocks; a total of at
    /// least one slot and whole slots.
    pub fn validate(&self) -> Result<(), MemoryHotplugConfigError> {
        use MemoryHotplugConfigError as E;
        let (total, block, slot) = (self.total_size_mib, self.block_size_mib, self.slot_size_mib);
        if block < MIN_BLOCK_SIZE_MIB {
            return Err(E::BlockSizeTooSmall(block));
        }
        if !block.is_power_of_two() {
            return Err(E::BlockSizeNotPowerOfTwo(block));
        }
        if slot < MIN_SLOT_SIZE_MIB {
            return Err(E::SlotSizeTooSmall(slot));
        }
        if !slot.is_multiple_of(block) {
            return Err(E::SlotSizeNotMultipleOfBlockSize { slot, block });
        }
        if total < slot {
            return Err(E::TotalSizeTooSmall { total, slot });
        }
        if !total.is_multiple_of(slot) {
            return Err(E::TotalSizeNotMultipleOfSlotSize { total, slot });
        }
        if total > MAX_TOTAL_SIZE_MIB {
            return Err(E::TotalSizeTooLarge(total));
        }
        Ok(())
    }

    /// A requested size the guest can reach: whole blocks, at most the
    /// total.
    pub fn check_requested(&self, requested: u64) -> Result<(), MemoryHotplugConfigError> {
        if !requested.is_multiple_of(self.block_size_mib) {
            return Err(MemoryHotplugConfigError::RequestedNotMultipleOfBlockSize {
                requested,
                block: self.block_size_mib,
            });
        }
        if requested > self.total_size_mib {
            return Err(MemoryHotplugConfigError::RequestedTooLarge {
                requested,
                total: self.total_size_mib,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(total: u64, block: u64, slot: u64) -> MemoryHotplugConfig {
        MemoryHotplugConfig {
            total_size_mib: total,
            block_size_mib: block,
            slot_size_mib: slot,
        }
    }

    #[test]
    fn defaults_and_shape() {
        let c: MemoryHotplugConfig = serde_json::from_str(r#"{"total_size_mib": 1024}"#).unwrap();
        assert_eq!(c, cfg(1024, 2, 128));
        c.validate().unwrap();
        let e =
            serde_json::from_str::<MemoryHotplugConfig>(r#"{"block_size_mib": 2}"#).unwrap_err();
        assert!(e.to_string().contains("total_size_mib"), "{e}");
        let e = serde_json::from_str::<MemoryHotplugSizeUpdate>(r#"{}"#).unwrap_err();
        assert!(e.to_string().contains("requested_size_mib"), "{e}");
    }

    #[test]
    fn firecracker_rules() {
        use MemoryHotplugConfigError as E;
        assert_eq!(cfg(1024, 1, 128).validate(), Err(E::BlockSizeTooSmall(1)));
        assert_eq!(
            cfg(1024, 3, 128).validate(),
            Err(E::BlockSizeNotPowerOfTwo(3))
        );
        assert_eq!(cfg(1024, 2, 64).validate(), Err(E::SlotSizeTooSmall(64)));
        assert!(matches!(
            cfg(1040, 4, 130).validate(),
            Err(E::SlotSizeNotMultipleOfBlockSize { .. })
        ));
        assert!(matches!(
            cfg(64, 2, 128).validate(),
            Err(E::TotalSizeTooSmall { .. })
        ));
        assert!(matches!(
            cfg(1000, 2, 128).validate(),
            Err(E::TotalSizeNotMultipleOfSlotSize { .. })
        ));
        assert_eq!(
            cfg(1 << 20, 2, 128).validate(),
            Err(E::TotalSizeTooLarge(1 << 20))
        );
        let c = cfg(256, 4, 128);
        c.check_requested(0).unwrap();
        c.check_requested(256).unwrap();
        assert!(matches!(
            c.check_requested(6),
            Err(E::RequestedNotMultipleOfBlockSize { .. })
        ));
        assert!(matches!(
            c.check_requested(260),
            Err(E::RequestedTooLarge { .. })
        ));
    }
}
