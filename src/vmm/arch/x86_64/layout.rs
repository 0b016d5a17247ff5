//! Guest-physical memory layout, after Firecracker's.
//!
//! ```text
//! 0x0000_0500  GDT                      0x0000_9000  PML4
//! 0x0000_0520  IDT (empty)              0x0000_a000  PDPT
//! 0x0000_6000  PVH start_info           0x0000_b000  4 page directories (4 GiB)
//! 0x0000_7000  zero page / PVH memmap   0x0002_0000  kernel command line
//! 0x0000_8ff0  boot stack               0x0009_fc00  EBDA: MP table
//! 0x0010_0000  kernel (HIMEM)           0xc000_0000  MMIO gap (1 GiB) to 4 GiB
//!                                       0xd000_0000  virtio-mmio windows, 4 KiB each
//! ```
//! Memory above the gap continues at 4 GiB.
//!
//! Memory that devices add to the guest-physical space sits far above
//! RAM, from [`DEVICE_MEMORY_START`] (512 GiB, where Firecracker puts
//! it): first virtio-mem's hotpluggable region, 128 MiB aligned, then
//! each virtio-pmem device's window, 2 MiB aligned, in attach order.
//! [`DeviceMemory`] hands these out; nothing else places them.

use vm_memory::GuestAddress;

pub const GDT_ADDR: u64 = 0x500;
pub const IDT_ADDR: u64 = 0x520;
pub const PVH_INFO_START: u64 = 0x6000;
pub const ZERO_PAGE_START: u64 = 0x7000;
/// The PVH memory map lives where the zero page would; the two protocols
/// never share a boot.
pub const PVH_MEMMAP_START: u64 = 0x7000;
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
/// Page directories mapped at boot: 4 × 1 GiB of 2 MiB pages, so the
/// identity map also covers the IOAPIC and LAPIC.
pub const PDE_COUNT: u64 = 4;
pub const CMDLINE_START: u64 = 0x20000;
/// Linux's x86 COMMAND_LINE_SIZE, including the terminating NUL.
pub const CMDLINE_MAX_SIZE: usize = 2048;
pub const EBDA_START: u64 = 0x9fc00;
pub const MPTABLE_START: u64 = EBDA_START;
pub const HIMEM_START: u64 = 0x10_0000;

pub const MMIO_GAP_START: u64 = 0xc000_0000;
pub const MMIO_GAP_END: u64 = 1 << 32;
/// virtio-mmio devices: one 4 KiB window each, from here up.
pub const MMIO_DEVICES_START: u64 = 0xd000_0000;
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;
pub const MMIO_DEVICES_END: u64 = 0xe000_0000;
/// Interrupt lines for virtio devices: the IOAPIC pins no legacy device
/// uses (COM1 is 4, the i8042 is 1).
pub const VIRTIO_GSI_FIRST: u32 = 5;
pub const VIRTIO_GSI_LAST: u32 = 23;
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
pub const APIC_ADDR: u32 = 0xfee0_0000;
/// Three pages KVM needs for the TSS on Intel hosts, just below the BIOS.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;

/// Where device memory (hotpluggable RAM, pmem windows) starts, unless
/// RAM reaches past it.
pub const DEVICE_MEMORY_START: u64 = 512 << 30;
/// Alignment of the hotpluggable region (Firecracker's default slot
/// size).
pub const HOTPLUG_ALIGN: u64 = 128 << 20;
/// Alignment of a pmem window, its start and its size (virtio-pmem
/// needs 2 MiB, as Firecracker aligns it).
pub const PMEM_ALIGN: u64 = 2 << 20;
/// The end of the device memory space (exclusive): 1 TiB, as
/// Firecracker's allocator for it ends there.
pub const DEVICE_MEMORY_END: u64 = 1 << 40;

/// Most vCPUs a guest may have: every MP table entry must fit in the EBDA.
pub const MAX_VCPUS: u8 = 32;

// The boot structures must not overlap; checked at compile time.
const _: () = {
    assert!(IDT_ADDR >= GDT_ADDR + 4 * 8);
    assert!(PVH_INFO_START + 0x1000 <= ZERO_PAGE_START);
    assert!(ZERO_PAGE_START + 0x1000 <= BOOT_STACK_POINTER);
    assert!(BOOT_STACK_POINTER < PML4_START);
    assert!(PDE_START + PDE_COUNT * 0x1000 <= CMDLINE_START);
    assert!(CMDLINE_START + CMDLINE_MAX_SIZE as u64 <= EBDA_START);
};

/// Guest RAM ranges for `mem_size` bytes, split around the MMIO gap.
pub fn memory_ranges(mem_size: u64) -> Vec<(GuestAddress, u64)> {
    if mem_size <= MMIO_GAP_START {
        vec![(GuestAddress(0), mem_size)]
    } else {
        vec![
            (GuestAddress(0), MMIO_GAP_START),
            (GuestAddress(MMIO_GAP_END), mem_size - MMIO_GAP_START),
        ]
    }
}

/// The end of RAM below the MMIO gap (exclusive).
pub fn low_memory_end(mem_size: u64) -> u64 {
    mem_size.min(MMIO_GAP_START)
}

/// Rounds `v` up to a multiple of `align` (a power of two); None on
/// overflow.
pub fn align_up(v: u64, align: u64) -> Option<u64> {
    Some(v.checked_add(align - 1)? & !(align - 1))
}

/// Hands out device memory windows above RAM, in order: the
/// hotpluggable region first (phase 1, before any device), then pmem
/// windows as the devices attach. A cold boot and a restore of the same
/// configuration get the same addresses.
#[derive(Clone, Debug)]
pub struct DeviceMemory {
    next: u64,
}

impl DeviceMemory {
    /// The space above `mem_size` bytes of RAM: from 512 GiB, or from
    /// the first GiB boundary past RAM on a guest larger than that.
    pub fn new(mem_size: u64) -> Self {
        let ram_end = memory_ranges(mem_size)
            .last()
            .map_or(0, |(a, len)| a.0 + len);
        let past_ram = align_up(ram_end, 1 << 30).unwrap_or(u64::MAX);
        DeviceMemory {
            next: DEVICE_MEMORY_START.max(past_ram),
        }
    }

    /// The next window of `size` bytes at `align`; None when it would
    /// pass [`DEVICE_MEMORY_END`].
    pub fn allocate(&mut self, size: u64, align: u64) -> Option<u64> {
        let start = align_up(self.next, align)?;
        let end = start.checked_add(size)?;
        if end > DEVICE_MEMORY_END {
            return None;
        }
        self.next = end;
        Some(start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_is_one_range() {
        assert_eq!(memory_ranges(128 << 20), vec![(GuestAddress(0), 128 << 20)]);
        assert_eq!(low_memory_end(128 << 20), 128 << 20);
    }

    #[test]
    fn large_guest_skips_mmio_gap() {
        let r = memory_ranges(4 << 30);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0], (GuestAddress(0), MMIO_GAP_START));
        assert_eq!(r[1], (GuestAddress(1 << 32), (4 << 30) - MMIO_GAP_START));
        assert_eq!(low_memory_end(4 << 30), MMIO_GAP_START);
    }

    #[test]
    fn device_memory_follows_ram_and_its_alignments() {
        let mut d = DeviceMemory::new(128 << 20);
        assert_eq!(d.allocate(256 << 20, HOTPLUG_ALIGN), Some(512 << 30));
        assert_eq!(
            d.allocate(3 << 20, PMEM_ALIGN),
            Some((512 << 30) + (256 << 20))
        );
        // The next window starts on the next 2 MiB boundary.
        assert_eq!(
            d.allocate(PMEM_ALIGN, PMEM_ALIGN),
            Some((512 << 30) + (260 << 20))
        );
        assert_eq!(d.allocate(1 << 40, PMEM_ALIGN), None);
        // A guest with more RAM than 512 GiB gets its devices above it.
        let mut big = DeviceMemory::new(600 << 30);
        let ram_end = (600 << 30) + (MMIO_GAP_END - MMIO_GAP_START);
        assert_eq!(
            big.allocate(1 << 20, PMEM_ALIGN),
            align_up(ram_end, 1 << 30)
        );
    }
}
