//! The virtio-mem model (virtio 1.x, section 5.15; device ID 24): a
//! region of hotpluggable memory above RAM, in blocks the driver plugs
//! and unplugs on one request queue, towards the `requested_size` the
//! host sets (`PATCH /hotplug/memory`, a configuration-change interrupt).
//!
//! Requests and their answers:
//! - PLUG of whole blocks inside the usable region, all unplugged: ACK,
//!   and their slots enter the guest's address space; NACK when the
//!   plugged size would pass the requested size; ERROR for a range that
//!   is unaligned, empty, outside the usable region, or not all
//!   unplugged; BUSY when KVM would not map a slot.
//! - UNPLUG of plugged blocks: ACK, the memory goes back to the host and
//!   slots left with no plugged block leave the guest; ERROR as for
//!   PLUG (or blocks not all plugged); BUSY when KVM would not unmap.
//! - UNPLUG_ALL: every block unplugged, and the usable region shrinks
//!   to what the requested size needs (as QEMU does): ACK, or BUSY.
//! - STATE of a range: ACK with PLUGGED, UNPLUGGED or MIXED; ERROR for a
//!   bad range.
//! - anything else, or a request shorter than its 24 bytes: ERROR.
//!
//! A chain without 10 device-writable bytes for the answer, or outside
//! guest memory, is returned unanswered (used length 0) and counted.
//! Requests are served on the VMM thread only (madvise, KVM slot
//! changes): on DRIVER_OK the device signals its queue's event fd.

use virtio_queue::{Reader, Writer};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::region::HotplugRegion;
use super::request::*;
use crate::vmm::config::MemoryHotplugStatus;
use crate::vmm::devices::virtio::persist::{DeviceState, VirtioPersistError};
use crate::vmm::devices::virtio::queue::ActiveQueue;
use crate::vmm::devices::virtio::{
    read_config_bytes, ActivateError, ActiveQueues, VirtioDevice, TYPE_MEM, VIRTIO_F_VERSION_1,
};
use crate::vmm::kvm::memory::GuestMem;
use crate::vmm::metrics::METRICS;
use crate::vmm::snapshot::Persist;

pub const QUEUE_SIZE: u16 = 128;
const MIB: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum MemError {
    #[error("cannot create an event fd: {0}")]
    EventFd(std::io::Error),
    #[error("the region's geometry is invalid: {0}")]
    Geometry(&'static str),
}

/// The device's geometry: where the region is and how it is cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub addr: u64,
    pub region_size: u64,
    pub block_size: u64,
    pub slot_size: u64,
}

pub struct VirtioMem {
    pub(super) queue_evts: [EventFd; 1],
    pub(super) active: Option<ActiveQueue>,
    pub(super) geo: Geometry,
    pub(super) usable_region_size: u64,
    pub(super) plugged_size: u64,
    pub(super) requested_size: u64,
    /// One bit per block: plugged.
    pub(super) plugged: Vec<u64>,
    pub(super) region: HotplugRegion,
}

impl VirtioMem {
    pub fn new(geo: Geometry, region: HotplugRegion) -> Result<Self, MemError> {
        let ok = geo.block_size.is_power_of_two()
            && geo.slot_size.is_multiple_of(geo.block_size)
            && geo.region_size.is_multiple_of(geo.slot_size)
            && geo.addr.is_multiple_of(geo.block_size)
            && geo.region_size > 0;
        if !ok {
            return Err(MemError::Geometry(
                "blocks must be a power of two, and cut slots and the region exactly",
            ));
        }
        let blocks = (geo.region_size / geo.block_size) as usize;
        Ok(VirtioMem {
            queue_evts: [EventFd::new(EFD_NONBLOCK).map_err(MemError::EventFd)?],
            active: None,
            geo,
            usable_region_size: 0,
            plugged_size: 0,
            requested_size: 0,
            plugged: vec![0; blocks.div_ceil(64)],
            region,
        })
    }

    /// `GET /hotplug/memory`.
    pub fn status(&self) -> MemoryHotplugStatus {
        MemoryHotplugStatus {
            total_size_mib: self.geo.region_size / MIB,
            slot_size_mib: self.geo.slot_size / MIB,
            block_size_mib: self.geo.block_size / MIB,
            plugged_size_mib: self.plugged_size / MIB,
            requested_size_mib: self.requested_size / MIB,
        }
    }

    /// A new target for the driver (checked by the caller: whole blocks,
    /// at most the region). The usable region grows to cover it, in
    /// whole slots; the caller raises the configuration change.
    pub fn set_requested_size(&mut self, bytes: u64) {
        self.requested_size = bytes.min(self.geo.region_size);
        self.grow_usable();
    }

    fn grow_usable(&mut self) {
        let want = self
            .requested_size
            .div_ceil(self.geo.slot_size)
            .saturating_mul(self.geo.slot_size)
            .min(self.geo.region_size);
        self.usable_region_size = self.usable_region_size.max(want);
    }

    /// The pages the guest wrote in the region since the last call.
    pub fn dirty_log(&self) -> Result<Vec<u64>, crate::vmm::kvm::VmError> {
        self.region.dirty_log()
    }

    pub(super) fn config(&self) -> Config {
        Config {
            block_size: self.geo.block_size,
            node_id: 0,
            padding: [0; 6],
            addr: self.geo.addr,
            region_size: self.geo.region_size,
            usable_region_size: self.usable_region_size,
            plugged_size: self.plugged_size,
            requested_size: self.requested_size,
        }
    }

    fn is_plugged(&self, block: usize) -> bool {
        self.plugged
            .get(block / 64)
            .is_some_and(|w| w & (1 << (block % 64)) != 0)
    }

    fn set_block(&mut self, block: usize, on: bool) {
        if let Some(w) = self.plugged.get_mut(block / 64) {
            if on {
                *w |= 1 << (block % 64);
            } else {
                *w &= !(1 << (block % 64));
            }
        }
    }

    /// How many blocks of `[first, first + n)` are plugged.
    fn count_plugged(&self, first: usize, n: usize) -> usize {
        (first..first + n).filter(|&b| self.is_plugged(b)).count()
    }

    /// The blocks a request's range names, when it is whole blocks
    /// inside the usable region.
    fn blocks_of(&self, addr: u64, nb_blocks: u16) -> Option<(usize, usize)> {
        let g = &self.geo;
        if nb_blocks == 0 || !addr.is_multiple_of(g.block_size) {
            return None;
        }
        let off = addr.checked_sub(g.addr)?;
        let end = off.checked_add(u64::from(nb_blocks) * g.block_size)?;
        if end > self.usable_region_size {
            return None;
        }
        Some(((off / g.block_size) as usize, usize::from(nb_blocks)))
    }

    /// Maps into the guest every slot of `[first, first + n)` that has a
    /// plugged block, and takes out the ones that have none. On failure
    /// the slots already changed are left as they are (the blocks say
    /// which should be mapped; the next change mends them).
    fn sync_slots(&mut self, first: usize, n: usize) -> Result<(), super::region::RegionError> {
        let per_slot = (self.geo.slot_size / self.geo.block_size) as usize;
        let (from, to) = (first / per_slot, (first + n).div_ceil(per_slot));
        for slot in from..to {
            let any = self.count_plugged(slot * per_slot, per_slot) > 0;
            self.region.set_slot(slot, any)?;
        }
        Ok(())
    }

    fn plug(&mut self, addr: u64, nb_blocks: u16) -> u16 {
        let Some((first, n)) = self.blocks_of(addr, nb_blocks) else {
            return RESP_ERROR;
        };
        let len = n as u64 * self.geo.block_size;
        if self.plugged_size + len > self.requested_size {
            return RESP_NACK;
        }
        if self.count_plugged(first, n) != 0 {
            return RESP_ERROR;
        }
        (first..first + n).for_each(|b| self.set_block(b, true));
        if let Err(e) = self.sync_slots(first, n) {
            tracing::warn!("virtio-mem: cannot map plugged memory: {e}");
            (first..first + n).for_each(|b| self.set_block(b, false));
            let _ = self.sync_slots(first, n);
            return RESP_BUSY;
        }
        self.plugged_size += len;
        METRICS.memory_hotplug.plug_bytes.add(len);
        RESP_ACK
    }

    fn unplug(&mut self, addr: u64, nb_blocks: u16) -> u16 {
        let Some((first, n)) = self.blocks_of(addr, nb_blocks) else {
            return RESP_ERROR;
        };
        if self.count_plugged(first, n) != n {
            return RESP_ERROR;
        }
        (first..first + n).for_each(|b| self.set_block(b, false));
        if let Err(e) = self.sync_slots(first, n) {
            tracing::warn!("virtio-mem: cannot unmap unplugged memory: {e}");
            (first..first + n).for_each(|b| self.set_block(b, true));
            let _ = self.sync_slots(first, n);
            return RESP_BUSY;
        }
        let len = n as u64 * self.geo.block_size;
        self.plugged_size -= len;
        self.discard(first, n);
        METRICS.memory_hotplug.unplug_bytes.add(len);
        RESP_ACK
    }

    fn unplug_all(&mut self) -> u16 {
        let blocks = (self.geo.region_size / self.geo.block_size) as usize;
        let was: Vec<usize> = (0..blocks).filter(|&b| self.is_plugged(b)).collect();
        was.iter().for_each(|&b| self.set_block(b, false));
        if let Err(e) = self.sync_slots(0, blocks) {
            tracing::warn!("virtio-mem: cannot unmap unplugged memory: {e}");
            was.iter().for_each(|&b| self.set_block(b, true));
            let _ = self.sync_slots(0, blocks);
            return RESP_BUSY;
        }
        for &b in &was {
            self.discard(b, 1);
        }
        METRICS.memory_hotplug.unplug_bytes.add(self.plugged_size);
        self.plugged_size = 0;
        self.usable_region_size = 0;
        self.grow_usable();
        RESP_ACK
    }

    fn state(&self, addr: u64, nb_blocks: u16) -> Response {
        let Some((first, n)) = self.blocks_of(addr, nb_blocks) else {
            METRICS.memory_hotplug.state_fails.inc();
            return Response::new(RESP_ERROR);
        };
        Response::with_state(match self.count_plugged(first, n) {
            0 => STATE_UNPLUGGED,
            c if c == n => STATE_PLUGGED,
            _ => STATE_MIXED,
        })
    }

    /// Gives blocks `[first, first + n)` back to the host.
    fn discard(&self, first: usize, n: usize) {
        let bs = self.geo.block_size;
        if let Err(e) = self.region.discard(first as u64 * bs, n as u64 * bs) {
            tracing::warn!("virtio-mem: cannot give unplugged memory back: {e}");
            METRICS.memory_hotplug.unplug_discard_fails.inc();
        }
    }

    /// Carries out one request.
    pub(super) fn handle(&mut self, req: &Request) -> Response {
        let m = &METRICS.memory_hotplug;
        let (addr, nb) = (u64::from_le(req.addr), u16::from_le(req.nb_blocks));
        match u16::from_le(req.req_type) {
            REQ_PLUG => {
                m.plug_count.inc();
                let r = self.plug(addr, nb);
                if r != RESP_ACK {
                    m.plug_fails.inc();
                }
                Response::new(r)
            }
            REQ_UNPLUG => {
                m.unplug_count.inc();
                let r = self.unplug(addr, nb);
                if r != RESP_ACK {
                    m.unplug_fails.inc();
                }
                Response::new(r)
            }
            REQ_UNPLUG_ALL => {
                m.unplug_all_count.inc();
                Response::new(self.unplug_all())
            }
            REQ_STATE => {
                m.state_count.inc();
                self.state(addr, nb)
            }
            _ => {
                m.bad_requests.inc();
                Response::new(RESP_ERROR)
            }
        }
    }

    /// Answers every request the driver made available; returns how many.
    pub fn process_queue(&mut self) -> usize {
        let Some(mut q) = self.active.take() else {
            return 0;
        };
        let served = q.serve(&METRICS.memory_hotplug.malformed, |mem, chain| {
            Some(self.answer(mem, chain))
        });
        self.active = Some(q);
        served
    }

    /// Answers one chain; returns the used length.
    fn answer(&mut self, mem: &GuestMem, chain: virtio_queue::DescriptorChain<&GuestMem>) -> u32 {
        let (Ok(mut reader), Ok(mut writer)) =
            (Reader::new(mem, chain.clone()), Writer::new(mem, chain))
        else {
            METRICS.memory_hotplug.malformed.inc();
            return 0;
        };
        if writer.available_bytes() < RESPONSE_LEN {
            METRICS.memory_hotplug.malformed.inc();
            return 0;
        }
        let resp = if reader.available_bytes() < REQUEST_LEN {
            METRICS.memory_hotplug.bad_requests.inc();
            Response::new(RESP_ERROR)
        } else {
            match reader.read_obj::<Request>() {
                Ok(req) => self.handle(&req),
                Err(_) => {
                    METRICS.memory_hotplug.bad_requests.inc();
                    Response::new(RESP_ERROR)
                }
            }
        };
        match writer.write_obj(resp) {
            Ok(()) => RESPONSE_LEN as u32,
            Err(_) => {
                METRICS.memory_hotplug.malformed.inc();
                0
            }
        }
    }

    /// After a restore: puts every slot with a plugged block back into
    /// the guest.
    pub(super) fn map_plugged(&mut self) -> Result<(), super::region::RegionError> {
        let blocks = (self.geo.region_size / self.geo.block_size) as usize;
        self.sync_slots(0, blocks)
    }
}

impl VirtioDevice for VirtioMem {
    fn device_type(&self) -> u32 {
        TYPE_MEM
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config().to_le_bytes(), offset, data);
    }

    /// Every field is the device's: writes are ignored.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        tracing::debug!(
            offset,
            len = data.len(),
            "virtio-mem: the driver wrote the read-only configuration space"
        );
    }

    /// A driver that would touch unplugged memory is refused, as in
    /// Firecracker: here unplugged memory outside a mapped slot is not
    /// there.
    fn activate(&mut self, active: ActiveQueues) -> Result<(), ActivateError> {
        if active.features & VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE == 0 {
            METRICS.memory_hotplug.activate_fails.inc();
            return Err(ActivateError::Device(
                "the driver did not accept VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE".into(),
            ));
        }
        self.activate_restored(active)?;
        METRICS.memory_hotplug.activations.inc();
        // Served on the VMM thread (madvise, KVM slots), not here.
        let _ = self.queue_evts[0].write(1);
        Ok(())
    }

    /// The driver starts over; plugged memory stays plugged (Linux's
    /// driver asks for UNPLUG_ALL when it finds some).
    fn reset(&mut self) {
        self.active = None;
    }

    fn queue_states(&self) -> Vec<virtio_queue::QueueState> {
        self.active.iter().map(|a| a.queue.state()).collect()
    }

    fn save_state(&self) -> DeviceState {
        DeviceState::Mem(Persist::save(self))
    }

    fn restore_state(&mut self, state: &DeviceState) -> Result<(), VirtioPersistError> {
        match state {
            DeviceState::Mem(s) => Persist::restore(self, s),
            other => Err(other.wrong("virtio-mem")),
        }
    }

    fn activate_restored(&mut self, active: ActiveQueues) -> Result<(), ActivateError> {
        let [queue] = active.split()?;
        self.active = Some(queue);
        Ok(())
    }
}
