//! The KVM VM: in-kernel irqchip and PIT, guest memory slots, irqfds.
//!
//! Memory slots: guest RAM takes the first ones (one per region), in
//! [`Vm::set_up`]; devices that add memory of their own (virtio-mem's
//! hotpluggable region, pmem windows) reserve theirs afterwards, in
//! build order, and set or remove them through a [`MemSlots`] handle.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use crate::vmm::kvm::memory::GuestMem;
use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, CpuId, KVM_MAX_CPUID_ENTRIES,
    KVM_MEM_LOG_DIRTY_PAGES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::vmm::arch::x86_64::layout::KVM_TSS_ADDRESS;

/// The only KVM API version there has ever been.
pub const KVM_API_VERSION: i32 = 12;

/// Capabilities husk cannot run without.
pub const REQUIRED_CAPS: &[(Cap, &str)] = &[
    (Cap::Irqchip, "in-kernel IOAPIC/PIC (KVM_CAP_IRQCHIP)"),
    (Cap::Pit2, "in-kernel PIT (KVM_CAP_PIT2)"),
    (Cap::UserMemory, "user memory regions (KVM_CAP_USER_MEMORY)"),
    (Cap::SetTssAddr, "TSS address (KVM_CAP_SET_TSS_ADDR)"),
    (Cap::Irqfd, "irqfd (KVM_CAP_IRQFD)"),
    (Cap::Ioeventfd, "ioeventfd (KVM_CAP_IOEVENTFD)"),
    (Cap::ExtCpuid, "KVM_GET_SUPPORTED_CPUID (KVM_CAP_EXT_CPUID)"),
    (Cap::ImmediateExit, "vCPU kick (KVM_CAP_IMMEDIATE_EXIT)"),
    (Cap::MpState, "vCPU MP state (KVM_CAP_MP_STATE)"),
];

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("cannot open /dev/kvm: {0}")]
    OpenKvm(kvm_ioctls::Error),
    #[error("KVM API version {0} is not the expected {KVM_API_VERSION}")]
    ApiVersion(i32),
    #[error("KVM lacks a capability husk needs: {0}")]
    MissingCap(&'static str),
    #[error("KVM_CREATE_VM failed: {0}")]
    CreateVm(kvm_ioctls::Error),
    #[error("KVM_SET_TSS_ADDR failed: {0}")]
    SetTss(kvm_ioctls::Error),
    #[error("KVM_CREATE_IRQCHIP failed: {0}")]
    CreateIrqchip(kvm_ioctls::Error),
    #[error("KVM_CREATE_PIT2 failed: {0}")]
    CreatePit(kvm_ioctls::Error),
    #[error("KVM_GET_SUPPORTED_CPUID failed: {0}")]
    SupportedCpuid(kvm_ioctls::Error),
    #[error(
        "KVM refuses guest memory slot {slot} ({size_mib} MiB at guest address {addr:#x}): \
         KVM_SET_USER_MEMORY_REGION: {err}"
    )]
    SetMemory {
        slot: u32,
        addr: u64,
        size_mib: u64,
        err: kvm_ioctls::Error,
    },
    #[error("KVM cannot remove guest memory slot {slot}: KVM_SET_USER_MEMORY_REGION: {err}")]
    RemoveMemory { slot: u32, err: kvm_ioctls::Error },
    #[error("KVM_GET_MSR_INDEX_LIST failed: {0}")]
    MsrList(kvm_ioctls::Error),
    #[error("KVM_GET_DIRTY_LOG failed for slot {slot}: {err}")]
    DirtyLog { slot: u32, err: kvm_ioctls::Error },
    #[error("KVM_IRQFD failed for GSI {gsi}: {err}")]
    Irqfd { gsi: u32, err: kvm_ioctls::Error },
    #[error("KVM has {max} memory slots; this microVM needs {wanted}")]
    NoMemSlots { max: u32, wanted: u64 },
}

pub struct Vm {
    fd: Arc<VmFd>,
    supported_cpuid: CpuId,
    /// Every MSR KVM can save and restore (`KVM_GET_MSR_INDEX_LIST`).
    msr_list: Vec<u32>,
    /// KVM's number of memory slots (`KVM_CAP_NR_MEMSLOTS`).
    max_slots: u32,
    /// The next memory slot not taken.
    next_slot: AtomicU32,
    /// How many slots guest RAM has (the first ones).
    ram_slots: AtomicU32,
}

/// What a device needs to change its memory slots while the VM runs: a
/// handle on the VM's fd, shared with the [`Vm`].
#[derive(Clone)]
pub struct MemSlots {
    fd: Arc<VmFd>,
}

impl MemSlots {
    /// Maps `size` bytes of this process at `host` into the guest at
    /// `gpa` as memory slot `slot` (replacing what the slot held).
    ///
    /// # Safety
    ///
    /// `[host, host + size)` must be a mapping of this process that stays
    /// mapped until the slot is removed ([`remove`](Self::remove)) or the
    /// VM is closed: KVM reads and writes it on the guest's behalf.
    pub unsafe fn set(
        &self,
        slot: u32,
        gpa: u64,
        size: u64,
        host: u64,
        flags: u32,
    ) -> Result<(), VmError> {
        let region = kvm_userspace_memory_region {
            slot,
            flags,
            guest_phys_addr: gpa,
            memory_size: size,
            userspace_addr: host,
        };
        // SAFETY: the caller keeps the mapping alive as this function's
        // contract says.
        unsafe { self.fd.set_user_memory_region(region) }.map_err(|err| VmError::SetMemory {
            slot,
            addr: gpa,
            size_mib: size >> 20,
            err,
        })
    }

    /// Removes memory slot `slot`: the guest's accesses there exit to
    /// the VMM from now on.
    pub fn remove(&self, slot: u32) -> Result<(), VmError> {
        let region = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: 0,
            userspace_addr: 0,
        };
        // SAFETY: a size of 0 deletes the slot; KVM then holds no
        // mapping of this process's memory for it.
        unsafe { self.fd.set_user_memory_region(region) }
            .map_err(|err| VmError::RemoveMemory { slot, err })
    }

    /// The pages the guest wrote in slot `slot` (of `size` bytes) since
    /// the last call, one bit per 4 KiB page.
    pub fn dirty_log(&self, slot: u32, size: u64) -> Result<Vec<u64>, VmError> {
        self.fd
            .get_dirty_log(slot, size as usize)
            .map_err(|err| VmError::DirtyLog { slot, err })
    }
}

impl Vm {
    /// Opens KVM, checks it can run husk's guests, and creates an empty
    /// VM. None of this depends on the VM's configuration, so a VMM can do
    /// it while it waits for one.
    pub fn open() -> Result<Vm, VmError> {
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        let version = kvm.get_api_version();
        if version != KVM_API_VERSION {
            return Err(VmError::ApiVersion(version));
        }
        for (cap, name) in REQUIRED_CAPS {
            if !kvm.check_extension(*cap) {
                return Err(VmError::MissingCap(name));
            }
        }
        let fd = kvm.create_vm().map_err(VmError::CreateVm)?;
        let supported_cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(VmError::SupportedCpuid)?;
        let msr_list = kvm
            .get_msr_index_list()
            .map_err(VmError::MsrList)?
            .as_slice()
            .to_vec();
        let max_slots = u32::try_from(kvm.get_nr_memslots()).unwrap_or(u32::MAX);
        Ok(Vm {
            fd: Arc::new(fd),
            supported_cpuid,
            msr_list,
            max_slots,
            next_slot: AtomicU32::new(0),
            ram_slots: AtomicU32::new(0),
        })
    }

    /// Gives an opened VM the first `ram` regions of `mem` as its RAM
    /// (the rest, the hotpluggable region, is virtio-mem's to map), then
    /// its in-kernel irqchip and PIT.
    ///
    /// Order matters for start-up latency: KVM makes every memory-slot
    /// change after the irqchip exists wait for an SRCU grace period
    /// (milliseconds); a slot installed first costs microseconds.
    pub fn set_up(
        &self,
        mem: &GuestMem,
        ram: usize,
        track_dirty_pages: bool,
    ) -> Result<(), VmError> {
        self.register_memory(mem, ram, track_dirty_pages)?;
        self.fd
            .set_tss_address(KVM_TSS_ADDRESS as usize)
            .map_err(VmError::SetTss)?;
        self.fd.create_irq_chip().map_err(VmError::CreateIrqchip)?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        self.fd.create_pit2(pit).map_err(VmError::CreatePit)?;
        Ok(())
    }

    /// `open` then `set_up`.
    pub fn new(mem: &GuestMem, track_dirty_pages: bool) -> Result<Self, VmError> {
        let vm = Vm::open()?;
        vm.set_up(mem, mem.num_regions(), track_dirty_pages)?;
        Ok(vm)
    }

    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    pub fn supported_cpuid(&self) -> &CpuId {
        &self.supported_cpuid
    }

    pub fn msr_list(&self) -> &[u32] {
        &self.msr_list
    }

    /// The pages the guest wrote in each RAM region since the last call
    /// (KVM clears its log as it reports it): one bit per 4 KiB page.
    /// Needs the slots registered with dirty logging. (The hotpluggable
    /// region's log is virtio-mem's to gather.)
    pub fn dirty_log(&self, mem: &GuestMem) -> Result<Vec<Vec<u64>>, VmError> {
        let ram = self.ram_slots.load(Ordering::Acquire) as usize;
        mem.iter()
            .take(ram)
            .enumerate()
            .map(|(slot, region)| self.mem_slots().dirty_log(slot as u32, region.len()))
            .collect()
    }

    /// A handle for devices that set memory slots of their own.
    pub fn mem_slots(&self) -> MemSlots {
        MemSlots {
            fd: self.fd.clone(),
        }
    }

    /// Takes the next `n` memory slots; returns the first.
    pub fn reserve_slots(&self, n: u64) -> Result<u32, VmError> {
        let first = self.next_slot.load(Ordering::Acquire);
        let end = u64::from(first) + n;
        if end > u64::from(self.max_slots) {
            return Err(VmError::NoMemSlots {
                max: self.max_slots,
                wanted: end,
            });
        }
        self.next_slot.store(end as u32, Ordering::Release);
        Ok(first)
    }

    /// Whether KVM maps memory read-only for the guest
    /// (`KVM_CAP_READONLY_MEM`): writes then exit to the VMM.
    pub fn has_readonly_memory(&self) -> bool {
        self.fd.check_extension(Cap::ReadonlyMem)
    }

    /// Hands the first `ram` regions of `mem` to KVM, one slot each.
    fn register_memory(
        &self,
        mem: &GuestMem,
        ram: usize,
        track_dirty_pages: bool,
    ) -> Result<(), VmError> {
        let flags = if track_dirty_pages {
            KVM_MEM_LOG_DIRTY_PAGES
        } else {
            0
        };
        let first = self.reserve_slots(ram as u64)?;
        let slots = self.mem_slots();
        for (i, region) in mem.iter().take(ram).enumerate() {
            // SAFETY: the mapping belongs to `mem`, which the VMM keeps alive
            // for as long as the VM exists, and each slot gets its own region.
            unsafe {
                slots.set(
                    first + i as u32,
                    region.start_addr().0,
                    region.len(),
                    region.as_ptr() as u64,
                    flags,
                )
            }?;
        }
        self.ram_slots.store(ram as u32, Ordering::Release);
        Ok(())
    }

    /// Routes writes to `evt` into GSI `gsi` of the in-kernel irqchip.
    pub fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), VmError> {
        self.fd
            .register_irqfd(evt, gsi)
            .map_err(|err| VmError::Irqfd { gsi, err })
    }
}
