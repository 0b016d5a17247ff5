//! The KVM VM: in-kernel irqchip and PIT, guest memory slots, irqfds.

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
    #[error("KVM_GET_MSR_INDEX_LIST failed: {0}")]
    MsrList(kvm_ioctls::Error),
    #[error("KVM_GET_DIRTY_LOG failed for slot {slot}: {err}")]
    DirtyLog { slot: u32, err: kvm_ioctls::Error },
    #[error("KVM_IRQFD failed for GSI {gsi}: {err}")]
    Irqfd { gsi: u32, err: kvm_ioctls::Error },
}

pub struct Vm {
    fd: VmFd,
    supported_cpuid: CpuId,
    /// Every MSR KVM can save and restore (`KVM_GET_MSR_INDEX_LIST`).
    msr_list: Vec<u32>,
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
        Ok(Vm {
            fd,
            supported_cpuid,
            msr_list,
        })
    }

    /// Gives an opened VM `mem` as its RAM, then its in-kernel irqchip and
    /// PIT.
    ///
    /// Order matters for start-up latency: KVM makes every memory-slot
    /// change after the irqchip exists wait for an SRCU grace period
    /// (milliseconds); a slot installed first costs microseconds.
    pub fn set_up(&self, mem: &GuestMem, track_dirty_pages: bool) -> Result<(), VmError> {
        self.register_memory(mem, track_dirty_pages)?;
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
        vm.set_up(mem, track_dirty_pages)?;
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

    /// The pages the guest wrote in each memory slot since the last call
    /// (KVM clears its log as it reports it): one bit per 4 KiB page.
    /// Needs the slots registered with dirty logging.
    pub fn dirty_log(&self, mem: &GuestMem) -> Result<Vec<Vec<u64>>, VmError> {
        mem.iter()
            .enumerate()
            .map(|(slot, region)| {
                let slot = slot as u32;
                self.fd
                    .get_dirty_log(slot, region.len() as usize)
                    .map_err(|err| VmError::DirtyLog { slot, err })
            })
            .collect()
    }

    /// Hands every region of `mem` to KVM, one slot each.
    fn register_memory(&self, mem: &GuestMem, track_dirty_pages: bool) -> Result<(), VmError> {
        let flags = if track_dirty_pages {
            KVM_MEM_LOG_DIRTY_PAGES
        } else {
            0
        };
        for (slot, region) in mem.iter().enumerate() {
            let slot = slot as u32;
            let region_desc = kvm_userspace_memory_region {
                slot,
                flags,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
            };
            // SAFETY: the mapping belongs to `mem`, which the VMM keeps alive
            // for as long as the VM exists, and each slot gets its own region.
            unsafe { self.fd.set_user_memory_region(region_desc) }.map_err(|err| {
                VmError::SetMemory {
                    slot,
                    addr: region_desc.guest_phys_addr,
                    size_mib: region_desc.memory_size >> 20,
                    err,
                }
            })?;
        }
        Ok(())
    }

    /// Routes writes to `evt` into GSI `gsi` of the in-kernel irqchip.
    pub fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), VmError> {
        self.fd
            .register_irqfd(evt, gsi)
            .map_err(|err| VmError::Irqfd { gsi, err })
    }
}
