//! The host side of the hotpluggable region: guest memory's last region
//! (mapped with the rest of guest memory, so devices can use plugged
//! memory like any other), cut into slots of `slot_size` bytes, each its
//! own KVM memory slot.
//!
//! A slot is in the guest's address space only while some block in it
//! is plugged, as Firecracker does it: the guest cannot touch (and so
//! cannot make the host back) memory it was not given beyond the slot
//! it plugged into, and an access there exits to the VMM. An unplugged
//! range is given back to the host at once (`MADV_DONTNEED`, or
//! `MADV_REMOVE` when guest memory is a shared memfd), and marked dirty
//! for the next diff snapshot (it reads as zeros now).
//!
//! Hugetlbfs memory (`huge_pages: "2M"`) is the exception: its pages were
//! reserved from the host's pool for the whole region at start, and an
//! unplugged block keeps them. Giving them back would free nothing for
//! anyone else (a private mapping's pages return to this VM's reservation)
//! or, for a shared memfd, would drop the reservation (`MADV_REMOVE`
//! punches a hole), so that a later plug could fault on an empty pool.
//! Such blocks are counted (`hugetlb_kept_bytes`); the guest cannot reach
//! them but through a slot it has a plugged block in, as with any block.
//!
//! One KVM slot per block would enforce "unplugged is inaccessible" block
//! by block, but a 2 MiB block size makes thousands of slots (KVM offers
//! 509 on older hosts) and every slot change costs an SRCU grace period
//! (milliseconds); one slot for the whole region would enforce nothing.

use vm_memory::bitmap::Bitmap;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::vmm::devices::BusDevice;
use crate::vmm::kvm::memory::{GuestMem, PAGE_SIZE};
use crate::vmm::kvm::{MemSlots, VmError};
use crate::vmm::metrics::METRICS;

#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    #[error("guest memory has no hotpluggable region of {size:#x} bytes at {gpa:#x}")]
    NotInMemory { gpa: u64, size: u64 },
    #[error(transparent)]
    Slot(#[from] VmError),
}

/// How the region's slots reach KVM (None in tests: slot changes are
/// only recorded).
pub struct KvmSlots {
    pub slots: MemSlots,
    /// The first of the region's KVM slot numbers.
    pub first: u32,
    /// KVM_MEM_LOG_DIRTY_PAGES when dirty pages are tracked.
    pub flags: u32,
}

pub struct HotplugRegion {
    gpa: u64,
    size: u64,
    slot_size: u64,
    /// Where the region is mapped in this process.
    host: u64,
    kvm: Option<KvmSlots>,
    /// Which slots are in the guest's address space now.
    mapped: Vec<bool>,
    /// The madvise advice that gives a range back to the host; None
    /// for hugetlbfs memory, whose pages stay (see the module's
    /// documentation).
    advice: Option<libc::c_int>,
    /// Guest memory, which holds the region's mapping: kept here so the
    /// mapping outlives every KVM slot that points into it.
    mem: GuestMem,
}

impl HotplugRegion {
    /// The region of `mem` at `gpa`, `size` bytes, cut into slots of
    /// `slot_size`; none is mapped into the guest yet. `shared`: guest
    /// memory is a shared memfd.
    pub fn new(
        mem: &GuestMem,
        (gpa, size): (u64, u64),
        slot_size: u64,
        kvm: Option<KvmSlots>,
        shared: bool,
    ) -> Result<Self, RegionError> {
        let region = mem
            .iter()
            .find(|r| r.start_addr().0 == gpa && r.len() == size)
            .ok_or(RegionError::NotInMemory { gpa, size })?;
        let count = size.div_ceil(slot_size.max(1)) as usize;
        Ok(HotplugRegion {
            gpa,
            size,
            slot_size,
            host: region.as_ptr() as u64,
            kvm,
            mapped: vec![false; count],
            advice: match (region.is_hugetlbfs() == Some(true), shared) {
                (true, _) => None,
                (false, true) => Some(libc::MADV_REMOVE),
                (false, false) => Some(libc::MADV_DONTNEED),
            },
            mem: mem.clone(),
        })
    }

    pub fn slot_count(&self) -> usize {
        self.mapped.len()
    }

    pub fn is_mapped(&self, slot: usize) -> bool {
        self.mapped.get(slot).copied().unwrap_or(false)
    }

    /// Maps slot `slot` into the guest (`on`) or takes it out; nothing
    /// happens when it is that way already.
    pub fn set_slot(&mut self, slot: usize, on: bool) -> Result<(), RegionError> {
        if slot >= self.mapped.len() || self.mapped[slot] == on {
            return Ok(());
        }
        if let Some(k) = &self.kvm {
            let n = k.first + slot as u32;
            let off = slot as u64 * self.slot_size;
            let len = self.slot_size.min(self.size - off);
            if on {
                // SAFETY: [host + off, host + off + len) lies in guest
                // memory's mapping of the region, which `self.mem` keeps
                // alive; the slot is removed when `self` is dropped.
                unsafe {
                    k.slots
                        .set(n, self.gpa + off, len, self.host + off, k.flags)
                }?;
            } else {
                k.slots.remove(n)?;
            }
        }
        self.mapped[slot] = on;
        Ok(())
    }

    /// Gives `[offset, offset + len)` of the region back to the host; it
    /// reads as zeros (or as the memory file has it, after a restore)
    /// from now on, and is marked dirty for the next diff snapshot.
    /// Hugetlbfs memory keeps its pages and contents.
    pub fn discard(&self, offset: u64, len: u64) -> std::io::Result<()> {
        if offset.checked_add(len).is_none_or(|end| end > self.size) {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        }
        let Some(advice) = self.advice else {
            METRICS.memory_hotplug.hugetlb_kept_bytes.add(len);
            return Ok(());
        };
        if let Some(r) = self.mem.find_region(GuestAddress(self.gpa)) {
            r.bitmap().mark_dirty(offset as usize, len as usize);
        }
        // SAFETY: the range lies inside the region's mapping (checked
        // above), which `self.mem` keeps alive. MADV_DONTNEED (and
        // MADV_REMOVE) only drop the pages' contents; the mapping stays
        // valid and a later access finds zero pages.
        let r = unsafe {
            libc::madvise(
                (self.host + offset) as *mut libc::c_void,
                len as usize,
                advice,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    /// The pages the guest wrote in the region since the last call, one
    /// bit per page, slot after slot; a slot not in the guest's address
    /// space wrote nothing (its pages were marked dirty when they were
    /// discarded).
    pub fn dirty_log(&self) -> Result<Vec<u64>, VmError> {
        let words = |len: u64| (len as usize / PAGE_SIZE).div_ceil(64);
        let mut out = Vec::with_capacity(words(self.size));
        for (i, &on) in self.mapped.iter().enumerate() {
            let off = i as u64 * self.slot_size;
            let len = self.slot_size.min(self.size - off);
            match (&self.kvm, on) {
                (Some(k), true) => out.extend(k.slots.dirty_log(k.first + i as u32, len)?),
                _ => out.extend(std::iter::repeat_n(0u64, words(len))),
            }
        }
        Ok(out)
    }
}

impl Drop for HotplugRegion {
    /// Takes every slot out of the guest before the mapping can go.
    fn drop(&mut self) {
        for i in 0..self.mapped.len() {
            if let Err(e) = self.set_slot(i, false) {
                tracing::debug!("virtio-mem: {e}");
            }
        }
    }
}

/// What the guest meets when it touches the region outside any slot in
/// its address space: an exit to the VMM, where reads see zeros and
/// writes are dropped, and both are counted.
pub struct UnpluggedWindow;

impl BusDevice for UnpluggedWindow {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        METRICS.memory_hotplug.unplugged_accesses.inc();
        data.fill(0);
    }

    fn write(&mut self, _offset: u64, _data: &[u8]) {
        METRICS.memory_hotplug.unplugged_accesses.inc();
    }
}
