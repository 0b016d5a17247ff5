//! Saving and restoring what KVM holds: each vCPU's registers and
//! in-kernel state, and the VM's interrupt controllers, PIT and clock.
//!
//! The orders below are KVM's, not ours: `KVM_GET_MP_STATE` first (it
//! makes the LAPIC accept pending INIT/SIPI events, changing the state
//! read after it) and `KVM_GET_VCPU_EVENTS` last; on restore, CPUID
//! before everything (it decides which MSRs and XSAVE features exist),
//! then the TSC frequency, registers, LAPIC, MSRs and finally the pending
//! events.

use kvm_bindings::{
    kvm_clock_data, kvm_cpuid_entry2, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state,
    kvm_msr_entry, kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
    CpuId, Msrs, KVM_CLOCK_REALTIME, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::VcpuFd;
use serde::{Deserialize, Serialize};

use super::vm::Vm;

#[derive(Debug, thiserror::Error)]
pub enum KvmStateError {
    #[error("cannot save vCPU {index} ({what}): {err}")]
    SaveVcpu {
        index: u8,
        what: &'static str,
        err: kvm_ioctls::Error,
    },
    #[error("cannot restore vCPU {index} ({what}): {err}")]
    RestoreVcpu {
        index: u8,
        what: &'static str,
        err: kvm_ioctls::Error,
    },
    #[error("vCPU {index}: KVM took {set} of {total} MSRs; MSR {msr:#x} was refused")]
    Msrs {
        index: u8,
        set: usize,
        total: usize,
        msr: u32,
    },
    #[error("the snapshot has {0} CPUID or MSR entries, more than KVM takes")]
    TooManyEntries(usize),
    #[error("cannot {what} the VM's {part}: {err}")]
    Vm {
        what: &'static str,
        part: &'static str,
        err: kvm_ioctls::Error,
    },
    #[error(
        "clock_realtime: the snapshot's host did not report the wall-clock time with its \
         kvmclock (KVM_GET_CLOCK flags {0:#x} lack KVM_CLOCK_REALTIME: its clock source \
         is not a stable TSC, or its kernel is older than 5.16), so the time since the \
         snapshot is unknown"
    )]
    NoSavedRealtime(u32),
    #[error(
        "clock_realtime: this host's KVM cannot advance kvmclock by the wall-clock time \
         (KVM_CAP_ADJUST_CLOCK is {0:#x}, without KVM_CLOCK_REALTIME; Linux 5.16 or later \
         has it)"
    )]
    NoRealtimeSupport(u32),
    #[error("the snapshot was taken on a {saved} CPU; this host is {host}")]
    Vendor { saved: String, host: String },
    #[error(
        "the snapshot's vCPU uses CPU features this host's KVM cannot offer: \
         leaf {leaf:#x} subleaf {subleaf} {reg} bits {bits:#010x}"
    )]
    Features {
        leaf: u32,
        subleaf: u32,
        reg: &'static str,
        bits: u32,
    },
}

type Result<T> = std::result::Result<T, KvmStateError>;

/// One vCPU, as KVM holds it.
#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    pub cpuid: Vec<kvm_cpuid_entry2>,
    pub msrs: Vec<kvm_msr_entry>,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub xsave: kvm_xsave,
    pub xcrs: kvm_xcrs,
    pub debugregs: kvm_debugregs,
    pub lapic: kvm_lapic_state,
    pub mp_state: kvm_mp_state,
    pub vcpu_events: kvm_vcpu_events,
    /// The guest's TSC frequency, when KVM reports it.
    pub tsc_khz: Option<u32>,
}

/// The VM-wide devices KVM emulates, and its clock.
#[derive(Serialize, Deserialize)]
pub struct VmState {
    pub pic_master: kvm_irqchip,
    pub pic_slave: kvm_irqchip,
    pub ioapic: kvm_irqchip,
    pub pit: kvm_pit_state2,
    pub clock: kvm_clock_data,
}

/// Reads every MSR in `list` that KVM will give; an MSR it refuses (it
/// reports them all, but some depend on features this guest lacks) is
/// left out rather than failing the snapshot.
fn read_msrs(fd: &VcpuFd, index: u8, list: &[u32]) -> Result<Vec<kvm_msr_entry>> {
    let mut out = Vec::with_capacity(list.len());
    let mut rest = list;
    while !rest.is_empty() {
        let entries: Vec<kvm_msr_entry> = rest
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries)
            .map_err(|_| KvmStateError::TooManyEntries(entries.len()))?;
        let n = fd
            .get_msrs(&mut msrs)
            .map_err(|err| KvmStateError::SaveVcpu {
                index,
                what: "MSRs",
                err,
            })?;
        out.extend_from_slice(&msrs.as_slice()[..n.min(rest.len())]);
        // KVM stops at the first MSR it cannot read: skip that one.
        rest = rest.get(n + 1..).unwrap_or(&[]);
    }
    Ok(out)
}

/// Saves vCPU `index`. Its thread must be out of `KVM_RUN`, with any
/// port or MMIO access it exited for completed.
pub fn save_vcpu(fd: &VcpuFd, index: u8, msr_list: &[u32]) -> Result<VcpuState> {
    let e = |what: &'static str| move |err| KvmStateError::SaveVcpu { index, what, err };
    let mp_state = fd.get_mp_state().map_err(e("MP state"))?;
    let regs = fd.get_regs().map_err(e("registers"))?;
    let sregs = fd.get_sregs().map_err(e("sregs"))?;
    let xsave = fd.get_xsave().map_err(e("XSAVE"))?;
    let xcrs = fd.get_xcrs().map_err(e("XCRs"))?;
    let debugregs = fd.get_debug_regs().map_err(e("debug registers"))?;
    let lapic = fd.get_lapic().map_err(e("LAPIC"))?;
    let tsc_khz = fd.get_tsc_khz().ok();
    let cpuid = fd
        .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
        .map_err(e("CPUID"))?
        .as_slice()
        .to_vec();
    let msrs = read_msrs(fd, index, msr_list)?;
    let vcpu_events = fd.get_vcpu_events().map_err(e("events"))?;
    Ok(VcpuState {
        cpuid,
        msrs,
        regs,
        sregs,
        xsave,
        xcrs,
        debugregs,
        lapic,
        mp_state,
        vcpu_events,
        tsc_khz,
    })
}

/// Restores vCPU `index` before its thread first runs.
pub fn restore_vcpu(fd: &VcpuFd, index: u8, s: &VcpuState) -> Result<()> {
    let e = |what: &'static str| move |err| KvmStateError::RestoreVcpu { index, what, err };
    let cpuid =
        CpuId::from_entries(&s.cpuid).map_err(|_| KvmStateError::TooManyEntries(s.cpuid.len()))?;
    fd.set_cpuid2(&cpuid).map_err(e("CPUID"))?;
    if let Some(khz) = s.tsc_khz {
        set_tsc_khz(fd, index, khz);
    }
    fd.set_mp_state(s.mp_state).map_err(e("MP state"))?;
    fd.set_regs(&s.regs).map_err(e("registers"))?;
    fd.set_sregs(&s.sregs).map_err(e("sregs"))?;
    // SAFETY: `s.xsave` is a whole `kvm_xsave` (4 KiB region), the size
    // KVM_SET_XSAVE reads; snapshots never carry the larger XSAVE2 layout.
    unsafe { fd.set_xsave(&s.xsave) }.map_err(e("XSAVE"))?;
    fd.set_xcrs(&s.xcrs).map_err(e("XCRs"))?;
    fd.set_debug_regs(&s.debugregs)
        .map_err(e("debug registers"))?;
    fd.set_lapic(&s.lapic).map_err(e("LAPIC"))?;
    let msrs =
        Msrs::from_entries(&s.msrs).map_err(|_| KvmStateError::TooManyEntries(s.msrs.len()))?;
    let set = fd.set_msrs(&msrs).map_err(e("MSRs"))?;
    if set != s.msrs.len() {
        return Err(KvmStateError::Msrs {
            index,
            set,
            total: s.msrs.len(),
            msr: s.msrs.get(set).map_or(0, |m| m.index),
        });
    }
    fd.set_vcpu_events(&s.vcpu_events).map_err(e("events"))?;
    Ok(())
}

/// Gives the guest the TSC frequency it had: KVM scales the TSC when the
/// host's differs and the CPU can (TSC scaling). Where it cannot, the
/// guest runs on, its clock drifting; that is logged, not fatal.
fn set_tsc_khz(fd: &VcpuFd, index: u8, khz: u32) {
    match fd.get_tsc_khz() {
        Ok(now) if now == khz => {}
        _ => {
            if let Err(e) = fd.set_tsc_khz(khz) {
                tracing::warn!(vcpu = index, "cannot set the TSC to {khz} kHz: {e}");
            }
        }
    }
}

fn irqchip(vm: &Vm, chip_id: u32) -> Result<kvm_irqchip> {
    let mut chip = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    vm.fd()
        .get_irqchip(&mut chip)
        .map_err(|err| KvmStateError::Vm {
            what: "save",
            part: "irqchip",
            err,
        })?;
    Ok(chip)
}

pub fn save_vm(vm: &Vm) -> Result<VmState> {
    let e = |part| {
        move |err| KvmStateError::Vm {
            what: "save",
            part,
            err,
        }
    };
    Ok(VmState {
        pic_master: irqchip(vm, KVM_IRQCHIP_PIC_MASTER)?,
        pic_slave: irqchip(vm, KVM_IRQCHIP_PIC_SLAVE)?,
        ioapic: irqchip(vm, KVM_IRQCHIP_IOAPIC)?,
        pit: vm.fd().get_pit2().map_err(e("PIT"))?,
        clock: vm.fd().get_clock().map_err(e("clock"))?,
    })
}

/// How kvmclock resumes after a restore.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClockRestore {
    /// From the value it had when the snapshot was taken.
    #[default]
    Saved,
    /// Advanced by the wall-clock time since then (`clock_realtime`).
    Realtime,
}

/// KVM_CAP_ADJUST_CLOCK: the KVM_CLOCK_* flags KVM_GET_CLOCK and
/// KVM_SET_CLOCK know.
const KVM_CAP_ADJUST_CLOCK: libc::c_ulong = 39;

/// Refuses `clock_realtime` where it cannot work: the snapshot holds no
/// wall-clock time for its kvmclock reading (its host's KVM_GET_CLOCK did
/// not report one), or this host's KVM_SET_CLOCK cannot take one. Checked
/// before anything is built.
pub fn check_clock_restore(vm: &Vm, s: &VmState, how: ClockRestore) -> Result<()> {
    check_saved_clock(s, how)?;
    if how == ClockRestore::Saved {
        return Ok(());
    }
    let flags = vm.fd().check_extension_raw(KVM_CAP_ADJUST_CLOCK);
    if flags < 0 || flags as u32 & KVM_CLOCK_REALTIME == 0 {
        return Err(KvmStateError::NoRealtimeSupport(flags.max(0) as u32));
    }
    Ok(())
}

/// The part of [`check_clock_restore`] that needs no VM: the snapshot
/// has the wall-clock time `how` needs.
pub fn check_saved_clock(s: &VmState, how: ClockRestore) -> Result<()> {
    if how == ClockRestore::Realtime && s.clock.flags & KVM_CLOCK_REALTIME == 0 {
        return Err(KvmStateError::NoSavedRealtime(s.clock.flags));
    }
    Ok(())
}

/// The KVM_SET_CLOCK argument for a saved clock: only its value, the
/// flags KVM reported (TSC stable, host TSC) describing the old host;
/// with [`ClockRestore::Realtime`] also the wall-clock time it was read
/// at, so KVM adds the time since.
fn clock_to_set(saved: &kvm_clock_data, how: ClockRestore) -> kvm_clock_data {
    match how {
        ClockRestore::Saved => kvm_clock_data {
            clock: saved.clock,
            ..Default::default()
        },
        ClockRestore::Realtime => kvm_clock_data {
            clock: saved.clock,
            flags: KVM_CLOCK_REALTIME,
            realtime: saved.realtime,
            ..Default::default()
        },
    }
}

pub fn restore_vm(vm: &Vm, s: &VmState, how: ClockRestore) -> Result<()> {
    let e = |part| {
        move |err| KvmStateError::Vm {
            what: "restore",
            part,
            err,
        }
    };
    vm.fd().set_pit2(&s.pit).map_err(e("PIT"))?;
    check_clock_restore(vm, s, how)?;
    vm.fd()
        .set_clock(&clock_to_set(&s.clock, how))
        .map_err(e("clock"))?;
    for (chip, id) in [
        (&s.pic_master, KVM_IRQCHIP_PIC_MASTER),
        (&s.pic_slave, KVM_IRQCHIP_PIC_SLAVE),
        (&s.ioapic, KVM_IRQCHIP_IOAPIC),
    ] {
        let mut chip = *chip;
        // The id says which controller this is, whatever the file says.
        chip.chip_id = id;
        vm.fd().set_irqchip(&chip).map_err(e("irqchip"))?;
    }
    Ok(())
}

/// Feature registers a snapshot's CPUID may only use where the host has
/// them too: (leaf, subleaf, register index (eax=0..edx=3), name, bits
/// KVM or the guest change at run time and so are not compared).
const FEATURE_REGS: &[(u32, u32, usize, &str, u32)] = &[
    // OSXSAVE (27) follows the guest's CR4; the hypervisor bit (31) is ours.
    (0x1, 0, 2, "ecx", (1 << 27) | (1 << 31)),
    // APIC (9) follows the guest's APIC base MSR.
    (0x1, 0, 3, "edx", 1 << 9),
    (0x7, 0, 1, "ebx", 0),
    // OSPKE (4) follows the guest's CR4.
    (0x7, 0, 2, "ecx", 1 << 4),
    (0x7, 0, 3, "edx", 0),
    (0xd, 1, 0, "eax", 0),
    (0x8000_0001, 0, 2, "ecx", 0),
    (0x8000_0001, 0, 3, "edx", 0),
];

fn find(entries: &[kvm_cpuid_entry2], leaf: u32, subleaf: u32) -> Option<&kvm_cpuid_entry2> {
    entries
        .iter()
        .find(|e| e.function == leaf && (e.index == subleaf || subleaf == 0 && e.index == 0))
}

fn reg(e: &kvm_cpuid_entry2, i: usize) -> u32 {
    [e.eax, e.ebx, e.ecx, e.edx][i]
}

fn vendor(entries: &[kvm_cpuid_entry2]) -> String {
    find(entries, 0, 0).map_or_else(String::new, |e| {
        let bytes: Vec<u8> = [e.ebx, e.edx, e.ecx]
            .iter()
            .flat_map(|r| r.to_le_bytes())
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// This CPU's own CPUID registers for `leaf`.`subleaf`.
pub fn native_cpuid(leaf: u32, subleaf: u32) -> [u32; 4] {
    let r = std::arch::x86_64::__cpuid_count(leaf, subleaf);
    [r.eax, r.ebx, r.ecx, r.edx]
}

/// Refuses a snapshot whose vCPU needs a CPU this host cannot give:
/// another vendor, or a feature bit neither this CPU has nor KVM
/// emulates (`host` is KVM_GET_SUPPORTED_CPUID). The CPU's own bits
/// count too: some KVMs (PVM among them) report fewer features than the
/// vCPUs they run then see.
pub fn check_cpu(saved: &[kvm_cpuid_entry2], host: &CpuId) -> Result<()> {
    check_cpu_with(saved, host, native_cpuid)
}

fn check_cpu_with(
    saved: &[kvm_cpuid_entry2],
    host: &CpuId,
    native: impl Fn(u32, u32) -> [u32; 4],
) -> Result<()> {
    let host = host.as_slice();
    let (s, h) = (vendor(saved), vendor(host));
    if s != h {
        let show = |v: &str| match v {
            "" => "(no vendor)".to_string(),
            v => crate::text::echo(v).into_owned(),
        };
        return Err(KvmStateError::Vendor {
            saved: show(&s),
            host: show(&h),
        });
    }
    for &(leaf, subleaf, r, name, dynamic) in FEATURE_REGS {
        let Some(saved) = find(saved, leaf, subleaf) else {
            continue;
        };
        let have = find(host, leaf, subleaf).map_or(0, |e| reg(e, r)) | native(leaf, subleaf)[r];
        let missing = reg(saved, r) & !have & !dynamic;
        if missing != 0 {
            return Err(KvmStateError::Features {
                leaf,
                subleaf,
                reg: name,
                bits: missing,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
            ..Default::default()
        }
    }

    fn host() -> CpuId {
        CpuId::from_entries(&[
            // "GenuineIntel"
            entry(0, 0, [0xd, 0x756e_6547, 0x6c65_746e, 0x4965_6e69]),
            entry(7, 0, [0, 0b1010, 0, 0]),
        ])
        .unwrap()
    }

    #[test]
    fn the_clock_is_set_from_its_value_or_from_real_time() {
        let saved = kvm_clock_data {
            clock: 1_000,
            flags: KVM_CLOCK_REALTIME | kvm_bindings::KVM_CLOCK_TSC_STABLE,
            realtime: 5_000,
            host_tsc: 77,
            ..Default::default()
        };
        let plain = clock_to_set(&saved, ClockRestore::Saved);
        assert_eq!((plain.clock, plain.flags, plain.realtime), (1_000, 0, 0));
        let real = clock_to_set(&saved, ClockRestore::Realtime);
        assert_eq!(
            (real.clock, real.flags, real.realtime, real.host_tsc),
            (1_000, KVM_CLOCK_REALTIME, 5_000, 0)
        );
    }

    #[test]
    fn a_cpu_with_the_same_features_or_fewer_passes() {
        let h = host();
        check_cpu_with(h.as_slice(), &h, |_, _| [0; 4]).unwrap();
        let mut fewer = h.as_slice().to_vec();
        fewer[1].ebx = 0b0010;
        check_cpu_with(&fewer, &h, |_, _| [0; 4]).unwrap();
        // A bit the CPU itself has passes even where KVM does not list it.
        let mut native = h.as_slice().to_vec();
        native[1].ebx = 0b1_1010;
        check_cpu_with(&native, &h, |_, _| [0, 0b1_0000, 0, 0]).unwrap();
    }

    #[test]
    fn a_missing_feature_or_another_vendor_is_refused() {
        let h = host();
        let mut more = h.as_slice().to_vec();
        more[1].ebx = 0b1110;
        let err = check_cpu_with(&more, &h, |_, _| [0; 4])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("leaf 0x7") && err.contains("0x00000004"),
            "{err}"
        );
        let mut amd = h.as_slice().to_vec();
        amd[0].ebx = 0x6874_7541; // "Auth"
        let err = check_cpu_with(&amd, &h, |_, _| [0; 4])
            .unwrap_err()
            .to_string();
        assert!(err.contains("GenuineIntel"), "{err}");
    }
}
