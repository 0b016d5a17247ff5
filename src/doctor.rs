//! `husk doctor`: can this host run husk, and how well?

use std::fmt::Write as _;
use std::path::Path;

use kvm_ioctls::{Cap, Kvm};

use crate::vmm::kvm::vm::{KVM_API_VERSION, REQUIRED_CAPS};

/// How the host provides virtualization to KVM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostVirt {
    VtX,
    AmdV,
    /// KVM's PVM backend: no hardware virtualization; only PVM-enabled
    /// guest kernels run natively.
    Pvm,
    Unknown,
}

impl HostVirt {
    pub fn describe(&self) -> &'static str {
        match self {
            HostVirt::VtX => "Intel VT-x (kvm_intel)",
            HostVirt::AmdV => "AMD-V (kvm_amd)",
            HostVirt::Pvm => "PVM (kvm_pvm; no VT-x or AMD-V)",
            HostVirt::Unknown => "unknown (no kvm_intel, kvm_amd or kvm_pvm module)",
        }
    }
}

/// Decides the virtualization kind from the loaded KVM vendor modules and
/// the CPU flags line of /proc/cpuinfo.
pub fn classify(loaded: &dyn Fn(&str) -> bool, cpu_flags: &str) -> HostVirt {
    if loaded("kvm_pvm") {
        return HostVirt::Pvm;
    }
    if loaded("kvm_intel") {
        return HostVirt::VtX;
    }
    if loaded("kvm_amd") {
        return HostVirt::AmdV;
    }
    let has = |f: &str| cpu_flags.split_whitespace().any(|x| x == f);
    if has("vmx") {
        HostVirt::VtX
    } else if has("svm") {
        HostVirt::AmdV
    } else {
        HostVirt::Unknown
    }
}

fn host_virt() -> HostVirt {
    let flags = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("flags")).map(String::from))
        .unwrap_or_default();
    classify(&|m| Path::new("/sys/module").join(m).exists(), &flags)
}

/// Useful but optional capabilities.
const OPTIONAL_CAPS: &[(Cap, &str)] = &[
    (Cap::TscDeadlineTimer, "TSC deadline timer"),
    (
        Cap::AdjustClock,
        "kvmclock save/restore (KVM_CAP_ADJUST_CLOCK)",
    ),
    (Cap::SignalMsi, "MSI injection (KVM_CAP_SIGNAL_MSI)"),
    (Cap::Xsave, "XSAVE state (KVM_CAP_XSAVE)"),
];

/// Prints the report; returns the process exit status (0 when husk can run).
pub fn run() -> i32 {
    let (report, ok) = report();
    print!("{report}");
    if ok {
        0
    } else {
        1
    }
}

/// The doctor's report, and whether husk can run here.
pub fn report() -> (String, bool) {
    let mut out = String::new();
    let mut ok = true;
    let virt = host_virt();
    let _ = writeln!(out, "virtualization: {}", virt.describe());
    match Kvm::new() {
        Err(e) => {
            let _ = writeln!(out, "kvm: cannot open /dev/kvm: {e}");
            ok = false;
        }
        Ok(kvm) => {
            let version = kvm.get_api_version();
            let verdict = if version == KVM_API_VERSION {
                "ok"
            } else {
                "UNSUPPORTED"
            };
            let _ = writeln!(out, "kvm: API version {version} ({verdict})");
            ok &= version == KVM_API_VERSION;
            let _ = writeln!(
                out,
                "kvm: up to {} vCPUs per VM ({} recommended)",
                kvm.get_max_vcpus(),
                kvm.get_nr_vcpus()
            );
            let _ = writeln!(out, "required capabilities:");
            for (cap, name) in REQUIRED_CAPS {
                let has = kvm.check_extension(*cap);
                ok &= has;
                let _ = writeln!(out, "  {} {name}", if has { "ok     " } else { "MISSING" });
            }
            let _ = writeln!(out, "optional capabilities:");
            for (cap, name) in OPTIONAL_CAPS {
                let has = kvm.check_extension(*cap);
                let _ = writeln!(out, "  {} {name}", if has { "ok     " } else { "missing" });
            }
        }
    }
    if virt == HostVirt::Pvm {
        let _ = writeln!(
            out,
            "warning: this host virtualizes with PVM. Only PVM-enabled guest kernels run \
             natively; any other guest code runs in KVM's instruction emulator (about 2 million \
             instructions/s), and a stock Linux kernel stops early in boot."
        );
    }
    let _ = writeln!(
        out,
        "verdict: {}",
        if ok {
            "husk can run here"
        } else {
            "husk cannot run here"
        }
    );
    (out, ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvm_wins_over_cpu_flags() {
        let loaded = |m: &str| m == "kvm_pvm" || m == "kvm_amd";
        assert_eq!(classify(&loaded, "flags : svm"), HostVirt::Pvm);
    }

    #[test]
    fn vendor_modules_and_flags() {
        assert_eq!(classify(&|m| m == "kvm_intel", ""), HostVirt::VtX);
        assert_eq!(classify(&|m| m == "kvm_amd", ""), HostVirt::AmdV);
        assert_eq!(classify(&|_| false, "flags : fpu vmx sse"), HostVirt::VtX);
        assert_eq!(classify(&|_| false, "flags : fpu svm"), HostVirt::AmdV);
        assert_eq!(classify(&|_| false, "flags : fpu svmx"), HostVirt::Unknown);
    }
}
