//! Every device of a microVM in a snapshot ([`DevicesState`]), and the
//! matching of saved states to the devices of a restored VM.
//!
//! A restore builds the devices from the saved configuration, in the same
//! order, so each one sits in the same MMIO window with the same interrupt
//! line. Virtio devices are matched by (kind, id), and their window and
//! line must be the saved ones too (the guest found them there). The whole
//! set is checked before any device is touched: a device missing, one too
//! many, or one moved is refused, with the first difference in the error.

use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use super::legacy::persist::{I8042State, LegacyPersistError, SerialState};
use super::legacy::{I8042Device, SerialDevice};
use super::virtio::mmio::MmioTransport;
use super::virtio::persist::{MmioState, VirtioPersistError};
use crate::vmm::snapshot::Persist;

#[derive(Debug, thiserror::Error)]
pub enum DevicePersistError {
    #[error("the snapshot has {0}, the restored VM does not")]
    Missing(String),
    #[error("the restored VM has {0}, the snapshot does not")]
    Extra(String),
    #[error("{what} is at {now:#x} (line {now_gsi}) but was at {saved:#x} (line {saved_gsi})")]
    Moved {
        what: String,
        saved: u64,
        saved_gsi: u32,
        now: u64,
        now_gsi: u32,
    },
    #[error("{what}: {err}")]
    Virtio {
        what: String,
        err: VirtioPersistError,
    },
    #[error(transparent)]
    Legacy(#[from] LegacyPersistError),
}

/// The UART and the i8042, always together.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegacyState {
    pub serial: SerialState,
    pub i8042: I8042State,
}

/// One virtio device: where it was, and its transport's and own state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtioEntryState {
    /// "virtio-blk", "virtio-net", ...
    pub kind: String,
    /// drive_id, iface_id, or the kind for singletons.
    pub id: String,
    pub base: u64,
    pub gsi: u32,
    pub state: MmioState,
}

/// Every device of a microVM, virtio devices in the order they were
/// attached.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevicesState {
    pub legacy: Option<LegacyState>,
    pub virtio: Vec<VirtioEntryState>,
}

/// The legacy devices, as the device manager keeps them.
pub type LegacyHandles = (Arc<Mutex<SerialDevice>>, Arc<Mutex<I8042Device>>);

/// A virtio transport, as the device manager keeps it.
pub struct VirtioHandle {
    pub kind: &'static str,
    pub id: String,
    pub base: u64,
    pub gsi: u32,
    pub transport: Arc<Mutex<MmioTransport>>,
}

impl VirtioHandle {
    fn name(&self) -> String {
        format!("{} {:?}", self.kind, self.id)
    }
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Saves every device. Call with every vCPU paused, from the thread that
/// runs the devices' event loop (so no event is half handled).
pub fn save(legacy: Option<&LegacyHandles>, virtio: &[VirtioHandle]) -> DevicesState {
    DevicesState {
        legacy: legacy.map(|(serial, i8042)| LegacyState {
            serial: lock(serial).save(),
            i8042: lock(i8042).save(),
        }),
        virtio: virtio
            .iter()
            .map(|h| VirtioEntryState {
                kind: h.kind.to_string(),
                id: h.id.clone(),
                base: h.base,
                gsi: h.gsi,
                state: lock(&h.transport).save(),
            })
            .collect(),
    }
}

/// Applies `state` to freshly built devices, before any vCPU runs; each
/// saved virtio device goes to the one of the same kind and id.
pub fn restore(
    legacy: Option<&LegacyHandles>,
    virtio: &[VirtioHandle],
    state: &DevicesState,
) -> Result<(), DevicePersistError> {
    let pairs = match_virtio(virtio, &state.virtio)?;
    let legacy = match (legacy, &state.legacy) {
        (Some(h), Some(s)) => Some((h, s)),
        (None, None) => None,
        (None, Some(_)) => return Err(DevicePersistError::Missing("legacy devices".into())),
        (Some(_), None) => return Err(DevicePersistError::Extra("legacy devices".into())),
    };
    if let Some(((serial, i8042), s)) = legacy {
        lock(serial).restore(&s.serial)?;
        lock(i8042).restore(&s.i8042)?;
    }
    for (h, s) in pairs {
        lock(&h.transport)
            .restore(&s.state)
            .map_err(|err| DevicePersistError::Virtio {
                what: h.name(),
                err,
            })?;
    }
    Ok(())
}

/// Pairs every device with its saved state, or says what differs.
fn match_virtio<'a>(
    devices: &'a [VirtioHandle],
    saved: &'a [VirtioEntryState],
) -> Result<Vec<(&'a VirtioHandle, &'a VirtioEntryState)>, DevicePersistError> {
    let mut pairs = Vec::with_capacity(devices.len());
    for (i, s) in saved.iter().enumerate() {
        let what = || format!("{} {:?}", s.kind, s.id);
        if saved[..i].iter().any(|o| o.kind == s.kind && o.id == s.id) {
            return Err(DevicePersistError::Virtio {
                what: what(),
                err: VirtioPersistError::Invalid("saved twice"),
            });
        }
        let h = devices
            .iter()
            .find(|h| h.kind == s.kind && h.id == s.id)
            .ok_or_else(|| DevicePersistError::Missing(what()))?;
        if (h.base, h.gsi) != (s.base, s.gsi) {
            return Err(DevicePersistError::Moved {
                what: what(),
                saved: s.base,
                saved_gsi: s.gsi,
                now: h.base,
                now_gsi: h.gsi,
            });
        }
        pairs.push((h, s));
    }
    if let Some(extra) = devices
        .iter()
        .find(|h| !pairs.iter().any(|(p, _)| std::ptr::eq(*p, *h)))
    {
        return Err(DevicePersistError::Extra(extra.name()));
    }
    Ok(pairs)
}

#[cfg(test)]
#[path = "persist_tests.rs"]
mod tests;
