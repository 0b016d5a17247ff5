//! Port-I/O and MMIO buses: a sorted map of non-overlapping address ranges,
//! each owned by one device.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// A device reachable through guest port I/O or MMIO. `offset` is relative
/// to the base the device was inserted at.
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    #[error("bus range {base:#x}+{len:#x} overlaps a device already there")]
    Overlap { base: u64, len: u64 },
    #[error("bus range {base:#x}+{len:#x} is empty or wraps around")]
    InvalidRange { base: u64, len: u64 },
}

pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

#[derive(Default)]
pub struct Bus {
    /// base -> (length, device)
    devices: BTreeMap<u64, (u64, SharedDevice)>,
}

/// Locks a device, shrugging off poisoning: a device's state stays usable
/// even if another thread panicked while holding it.
pub fn lock(dev: &SharedDevice) -> MutexGuard<'_, dyn BusDevice + 'static> {
    dev.lock().unwrap_or_else(|e| e.into_inner())
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `device` at `[base, base + len)`. Refuses empty, wrapping or
    /// overlapping ranges.
    pub fn insert(&mut self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::InvalidRange { base, len })?;
        let before = self.devices.range(..end).next_back();
        if let Some((b, (l, _))) = before {
            if b + l > base {
                return Err(BusError::Overlap { base, len });
            }
        }
        self.devices.insert(base, (len, device));
        Ok(())
    }

    /// The device covering `addr`, and `addr`'s offset into it.
    fn resolve(&self, addr: u64, len: usize) -> Option<(&SharedDevice, u64)> {
        let (base, (dev_len, dev)) = self.devices.range(..=addr).next_back()?;
        let offset = addr - base;
        // The whole access must fall inside the device.
        (offset.checked_add(len as u64)? <= *dev_len).then_some((dev, offset))
    }

    /// Reads from the device at `addr`. Returns false, leaving `data`
    /// alone, when no device covers the access.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((dev, offset)) => {
                lock(dev).read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Writes to the device at `addr`. Returns false when no device covers
    /// the access.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((dev, offset)) => {
                lock(dev).write(offset, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records the offsets it sees and answers reads with its tag.
    struct Probe {
        tag: u8,
        writes: Vec<(u64, Vec<u8>)>,
    }

    impl BusDevice for Probe {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(self.tag.wrapping_add(offset as u8));
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    fn probe(tag: u8) -> Arc<Mutex<Probe>> {
        Arc::new(Mutex::new(Probe {
            tag,
            writes: vec![],
        }))
    }

    #[test]
    fn dispatches_by_range_with_offsets() {
        let mut bus = Bus::new();
        let a = probe(0x10);
        let b = probe(0x80);
        bus.insert(a.clone(), 0x3f8, 8).unwrap();
        bus.insert(b.clone(), 0x60, 5).unwrap();

        let mut d = [0u8; 1];
        assert!(bus.read(0x3fd, &mut d));
        assert_eq!(d[0], 0x15);
        assert!(bus.read(0x64, &mut d));
        assert_eq!(d[0], 0x84);
        assert!(bus.write(0x3f8, b"x"));
        assert!(bus.write(0x64, &[0xfe]));
        assert_eq!(a.lock().unwrap().writes, vec![(0, vec![b'x'])]);
        assert_eq!(b.lock().unwrap().writes, vec![(4, vec![0xfe])]);
    }

    #[test]
    fn unclaimed_addresses_are_not_dispatched() {
        let mut bus = Bus::new();
        bus.insert(probe(0), 0x100, 0x10).unwrap();
        let mut d = [0xaau8; 4];
        assert!(!bus.read(0xff, &mut d));
        assert!(!bus.read(0x110, &mut d));
        assert_eq!(d, [0xaa; 4]);
        // An access that starts inside but runs past the end is refused.
        assert!(!bus.read(0x10e, &mut d));
        assert!(!bus.write(u64::MAX, &[0]));
    }

    #[test]
    fn refuses_overlaps_and_bad_ranges() {
        let mut bus = Bus::new();
        bus.insert(probe(0), 0x100, 0x10).unwrap();
        for (base, len) in [(0x100, 1), (0xf8, 0x10), (0x10f, 4), (0x80, 0x100)] {
            assert_eq!(
                bus.insert(probe(0), base, len),
                Err(BusError::Overlap { base, len })
            );
        }
        assert!(matches!(
            bus.insert(probe(0), 0x200, 0),
            Err(BusError::InvalidRange { .. })
        ));
        assert!(matches!(
            bus.insert(probe(0), u64::MAX, 2),
            Err(BusError::InvalidRange { .. })
        ));
        // Adjacent ranges are fine.
        bus.insert(probe(0), 0xf0, 0x10).unwrap();
        bus.insert(probe(0), 0x110, 0x10).unwrap();
    }
}
