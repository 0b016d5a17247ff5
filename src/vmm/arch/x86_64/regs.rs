//! Initial vCPU state: general registers, segments and paging, FPU, MSRs
//! and the local APIC's LINT pins.

use crate::vmm::kvm::memory::GuestMem;
use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_sregs, Msrs};
use vm_memory::{Address, Bytes, GuestAddress};

use super::boot::BootProtocol;
use super::gdt::{
    gdt_entry, kvm_segment_from_gdt, CODE32_FLAGS, CODE64_FLAGS, DATA_FLAGS, TSS_FLAGS,
};
use super::layout::*;

#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    #[error("cannot write boot tables to guest memory: {0}")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
    #[error("cannot build the MSR list: {0}")]
    Msrs(vmm_sys_util::fam::Error),
}

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

const PTE_PRESENT_RW: u64 = 0x3;
const PDE_HUGE: u64 = 0x80;

/// General registers at the entry point.
pub fn boot_regs(entry: GuestAddress, protocol: BootProtocol) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: 0x2, // bit 1 is reserved-set; IF stays clear
        rip: entry.raw_value(),
        ..Default::default()
    };
    match protocol {
        BootProtocol::Linux64 => {
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = ZERO_PAGE_START;
        }
        BootProtocol::Pvh => {
            regs.rbx = PVH_INFO_START;
        }
    }
    regs
}

/// Writes the GDT, an empty IDT and (for 64-bit entry) identity page tables,
/// and fills `sregs` to match.
pub fn setup_sregs(
    mem: &GuestMem,
    sregs: &mut kvm_sregs,
    protocol: BootProtocol,
) -> Result<(), RegsError> {
    let code = match protocol {
        BootProtocol::Linux64 => CODE64_FLAGS,
        BootProtocol::Pvh => CODE32_FLAGS,
    };
    let gdt = [
        gdt_entry(0, 0, 0),
        gdt_entry(code, 0, 0xfffff),
        gdt_entry(DATA_FLAGS, 0, 0xfffff),
        gdt_entry(TSS_FLAGS, 0, 0xfffff),
    ];
    for (i, entry) in gdt.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(GDT_ADDR + (i as u64) * 8))?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_ADDR))?;

    let code_seg = kvm_segment_from_gdt(gdt[1], 1);
    let data_seg = kvm_segment_from_gdt(gdt[2], 2);
    let tss_seg = kvm_segment_from_gdt(gdt[3], 3);

    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (std::mem::size_of_val(&gdt) - 1) as u16;
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = 7;
    sregs.cs = code_seg;
    sregs.ds = data_seg;
    sregs.es = data_seg;
    sregs.fs = data_seg;
    sregs.gs = data_seg;
    sregs.ss = data_seg;
    sregs.tr = tss_seg;

    match protocol {
        BootProtocol::Linux64 => {
            write_identity_page_tables(mem)?;
            sregs.cr3 = PML4_START;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.cr0 |= X86_CR0_PE | X86_CR0_PG;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
        BootProtocol::Pvh => {
            // 32-bit protected mode, paging off.
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
    }
    Ok(())
}

/// Identity-maps the first `PDE_COUNT` GiB with 2 MiB pages. Emulated
/// guests on PVM hosts cannot use 1 GiB pages.
fn write_identity_page_tables(mem: &GuestMem) -> Result<(), RegsError> {
    mem.write_obj(PDPTE_START | PTE_PRESENT_RW, GuestAddress(PML4_START))?;
    let mut pd = [0u64; 512];
    for gib in 0..PDE_COUNT {
        let pd_addr = PDE_START + gib * 0x1000;
        mem.write_obj(
            pd_addr | PTE_PRESENT_RW,
            GuestAddress(PDPTE_START + gib * 8),
        )?;
        for (i, e) in pd.iter_mut().enumerate() {
            *e = ((gib << 30) + ((i as u64) << 21)) | PTE_PRESENT_RW | PDE_HUGE;
        }
        let bytes: Vec<u8> = pd.iter().flat_map(|e| e.to_le_bytes()).collect();
        mem.write_slice(&bytes, GuestAddress(pd_addr))?;
    }
    Ok(())
}

/// The FPU state Linux expects at boot.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_IA32_MISC_ENABLE_FAST_STRING: u64 = 0x1;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MTRR_ENABLE: u64 = 0x800;
const MTRR_MEM_TYPE_WB: u64 = 0x6;

/// The MSRs set on every vCPU at boot.
pub fn boot_msrs() -> Result<Msrs, RegsError> {
    let entry = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    Msrs::from_entries(&[
        entry(MSR_IA32_SYSENTER_CS, 0),
        entry(MSR_IA32_SYSENTER_ESP, 0),
        entry(MSR_IA32_SYSENTER_EIP, 0),
        entry(MSR_STAR, 0),
        entry(MSR_CSTAR, 0),
        entry(MSR_KERNEL_GS_BASE, 0),
        entry(MSR_SYSCALL_MASK, 0),
        entry(MSR_LSTAR, 0),
        entry(MSR_IA32_TSC, 0),
        entry(MSR_IA32_MISC_ENABLE, MSR_IA32_MISC_ENABLE_FAST_STRING),
        entry(MSR_MTRR_DEF_TYPE, MTRR_ENABLE | MTRR_MEM_TYPE_WB),
    ])
    .map_err(RegsError::Msrs)
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn lapic_reg(regs: &[std::os::raw::c_char], offset: usize) -> u32 {
    let b = |i: usize| regs[offset + i] as u8;
    u32::from_le_bytes([b(0), b(1), b(2), b(3)])
}

fn set_lapic_reg(regs: &mut [std::os::raw::c_char], offset: usize, value: u32) {
    for (i, b) in value.to_le_bytes().iter().enumerate() {
        regs[offset + i] = *b as std::os::raw::c_char;
    }
}

fn with_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// Routes LINT0 as ExtINT (the PIC) and LINT1 as NMI, as a BIOS would.
pub fn configure_lint(lapic: &mut kvm_bindings::kvm_lapic_state) {
    let lvt0 = lapic_reg(&lapic.regs, APIC_LVT0);
    set_lapic_reg(
        &mut lapic.regs,
        APIC_LVT0,
        with_delivery_mode(lvt0, APIC_MODE_EXTINT),
    );
    let lvt1 = lapic_reg(&lapic.regs, APIC_LVT1);
    set_lapic_reg(
        &mut lapic.regs,
        APIC_LVT1,
        with_delivery_mode(lvt1, APIC_MODE_NMI),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMem {
        crate::vmm::kvm::memory::anonymous(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    #[test]
    fn linux64_sregs_enable_long_mode() {
        let m = mem();
        let mut sregs = kvm_sregs::default();
        setup_sregs(&m, &mut sregs, BootProtocol::Linux64).unwrap();
        assert_eq!(sregs.cr3, PML4_START);
        assert_ne!(sregs.cr0 & X86_CR0_PG, 0);
        assert_ne!(sregs.cr4 & X86_CR4_PAE, 0);
        assert_eq!(sregs.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!(sregs.cs.l, 1);
        assert_eq!(sregs.cs.selector, 8);
        assert_eq!(sregs.ds.selector, 16);
        // The GDT is in guest memory where sregs says.
        let code: u64 = m.read_obj(GuestAddress(GDT_ADDR + 8)).unwrap();
        assert_eq!(code, gdt_entry(CODE64_FLAGS, 0, 0xfffff));
    }

    #[test]
    fn page_tables_identity_map_four_gib_with_2m_pages() {
        let m = mem();
        let mut sregs = kvm_sregs::default();
        setup_sregs(&m, &mut sregs, BootProtocol::Linux64).unwrap();
        let pml4: u64 = m.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4, PDPTE_START | 3);
        for gib in 0..4u64 {
            let pdpte: u64 = m.read_obj(GuestAddress(PDPTE_START + gib * 8)).unwrap();
            assert_eq!(pdpte & !0xfff, PDE_START + gib * 0x1000);
            assert_eq!(pdpte & 0x80, 0, "no 1 GiB pages");
        }
        // The LAPIC page at 0xfee00000 is mapped 1:1.
        let lapic = 0xfee0_0000u64;
        let pd = PDE_START + (lapic >> 30) * 0x1000;
        let pde: u64 = m
            .read_obj(GuestAddress(pd + ((lapic >> 21) & 511) * 8))
            .unwrap();
        assert_eq!(pde & !0x1f_ffff, lapic & !0x1f_ffff);
        assert_eq!(pde & 0x83, 0x83);
    }

    #[test]
    fn pvh_sregs_are_flat_protected_mode() {
        let m = mem();
        let mut sregs = kvm_sregs::default();
        setup_sregs(&m, &mut sregs, BootProtocol::Pvh).unwrap();
        assert_eq!(sregs.cr0, X86_CR0_PE | X86_CR0_ET);
        assert_eq!(sregs.efer, 0);
        assert_eq!(sregs.cs.l, 0);
        assert_eq!(sregs.cs.db, 1);
    }

    #[test]
    fn boot_regs_follow_protocol() {
        let r = boot_regs(GuestAddress(0x100_0000), BootProtocol::Linux64);
        assert_eq!(r.rip, 0x100_0000);
        assert_eq!(r.rsi, ZERO_PAGE_START);
        assert_eq!(r.rflags & 0x200, 0, "interrupts disabled");
        let r = boot_regs(GuestAddress(0x100_0000), BootProtocol::Pvh);
        assert_eq!(r.rbx, PVH_INFO_START);
    }

    #[test]
    fn lint_pins_routed() {
        let mut lapic = kvm_bindings::kvm_lapic_state::default();
        set_lapic_reg(&mut lapic.regs, APIC_LVT0, 0x0001_0000);
        configure_lint(&mut lapic);
        assert_eq!(lapic_reg(&lapic.regs, APIC_LVT0), 0x0001_0700);
        assert_eq!(lapic_reg(&lapic.regs, APIC_LVT1), 0x400);
    }

    #[test]
    fn msrs_enable_mtrr_write_back() {
        let msrs = boot_msrs().unwrap();
        let e = msrs
            .as_slice()
            .iter()
            .find(|e| e.index == MSR_MTRR_DEF_TYPE)
            .unwrap();
        assert_eq!(e.data, 0x806);
    }
}
