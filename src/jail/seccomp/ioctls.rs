//! The ioctl request numbers the filters allow, computed from each
//! request's direction, type, number and argument size the way the
//! kernel's `_IO*` macros do (kvm-ioctls keeps its own copies private).
#![allow(non_snake_case)]

use kvm_bindings::{
    kvm_clock_data, kvm_cpuid2, kvm_debugregs, kvm_dirty_log, kvm_irqchip, kvm_lapic_state,
    kvm_mp_state, kvm_msrs, kvm_pit_state2, kvm_regs, kvm_sregs, kvm_userspace_memory_region,
    kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};
use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iow_nr, ioctl_iowr_nr};

const KVMIO: u32 = 0xAE;

// vCPU: running the guest, and reading its state for a snapshot.
ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_regs);
ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_sregs);
ioctl_iowr_nr!(KVM_GET_MSRS, KVMIO, 0x88, kvm_msrs);
ioctl_ior_nr!(KVM_GET_LAPIC, KVMIO, 0x8e, kvm_lapic_state);
ioctl_iowr_nr!(KVM_GET_CPUID2, KVMIO, 0x91, kvm_cpuid2);
ioctl_ior_nr!(KVM_GET_MP_STATE, KVMIO, 0x98, kvm_mp_state);
ioctl_ior_nr!(KVM_GET_VCPU_EVENTS, KVMIO, 0x9f, kvm_vcpu_events);
ioctl_ior_nr!(KVM_GET_DEBUGREGS, KVMIO, 0xa1, kvm_debugregs);
ioctl_ior_nr!(KVM_GET_XSAVE, KVMIO, 0xa4, kvm_xsave);
ioctl_ior_nr!(KVM_GET_XCRS, KVMIO, 0xa6, kvm_xcrs);
ioctl_io_nr!(KVM_GET_TSC_KHZ, KVMIO, 0xa3);

// VM: the state a snapshot saves, and the dirty log of a diff snapshot.
ioctl_iow_nr!(KVM_GET_DIRTY_LOG, KVMIO, 0x42, kvm_dirty_log);
ioctl_iowr_nr!(KVM_GET_IRQCHIP, KVMIO, 0x62, kvm_irqchip);
ioctl_ior_nr!(KVM_GET_CLOCK, KVMIO, 0x7c, kvm_clock_data);
ioctl_ior_nr!(KVM_GET_PIT2, KVMIO, 0x9f, kvm_pit_state2);
// VM: virtio-mem maps a hotplugged slot of guest memory in and out.
ioctl_iow_nr!(
    KVM_SET_USER_MEMORY_REGION,
    KVMIO,
    0x46,
    kvm_userspace_memory_region
);

/// Every ioctl named here, for the test that the docs name them all.
#[cfg(test)]
pub fn named() -> Vec<(&'static str, u64)> {
    vec![
        ("KVM_RUN", KVM_RUN()),
        ("KVM_GET_REGS", KVM_GET_REGS()),
        ("KVM_GET_SREGS", KVM_GET_SREGS()),
        ("KVM_GET_MSRS", KVM_GET_MSRS()),
        ("KVM_GET_LAPIC", KVM_GET_LAPIC()),
        ("KVM_GET_CPUID2", KVM_GET_CPUID2()),
        ("KVM_GET_MP_STATE", KVM_GET_MP_STATE()),
        ("KVM_GET_VCPU_EVENTS", KVM_GET_VCPU_EVENTS()),
        ("KVM_GET_DEBUGREGS", KVM_GET_DEBUGREGS()),
        ("KVM_GET_XSAVE", KVM_GET_XSAVE()),
        ("KVM_GET_XCRS", KVM_GET_XCRS()),
        ("KVM_GET_TSC_KHZ", KVM_GET_TSC_KHZ()),
        ("KVM_GET_DIRTY_LOG", KVM_GET_DIRTY_LOG()),
        ("KVM_GET_IRQCHIP", KVM_GET_IRQCHIP()),
        ("KVM_GET_CLOCK", KVM_GET_CLOCK()),
        ("KVM_GET_PIT2", KVM_GET_PIT2()),
        ("KVM_SET_USER_MEMORY_REGION", KVM_SET_USER_MEMORY_REGION()),
        ("TUNSETOFFLOAD", libc::TUNSETOFFLOAD),
        ("FIONBIO", libc::FIONBIO),
        ("FIONREAD", libc::FIONREAD),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_match_the_kernel_headers() {
        // Values from linux/kvm.h as the kernel computes them (they are
        // also what strace decodes).
        assert_eq!(KVM_RUN(), 0xae80);
        assert_eq!(KVM_GET_REGS(), 0x8090_ae81);
        assert_eq!(KVM_GET_SREGS(), 0x8138_ae83);
        assert_eq!(KVM_GET_MSRS(), 0xc008_ae88);
        assert_eq!(KVM_GET_LAPIC(), 0x8400_ae8e);
        assert_eq!(KVM_GET_DIRTY_LOG(), 0x4010_ae42);
        assert_eq!(KVM_GET_IRQCHIP(), 0xc208_ae62);
        assert_eq!(KVM_GET_CLOCK(), 0x8030_ae7c);
        assert_eq!(KVM_GET_PIT2(), 0x8070_ae9f);
        assert_eq!(KVM_GET_TSC_KHZ(), 0xaea3);
        assert_eq!(KVM_GET_XSAVE(), 0x9000_aea4);
    }
}
