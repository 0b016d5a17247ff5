//! `husk doctor`: can this host run husk, and what can it run?
//!
//! The report lists what the host offers (virtualization kind, KVM API
//! version, capabilities), then gives one verdict per use: the probe
//! guest, a Linux guest, and containers.

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

pub fn host_virt() -> HostVirt {
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

/// One verdict per use of husk, as `(use, answer)` lines.
///
/// `kvm_problem` is why KVM cannot run the VMM here (no `/dev/kvm`, a
/// wrong API version, a missing capability), or `None` when it can.
/// The probe guest only needs a working KVM; a Linux guest also needs
/// the CPU to run its code natively; a container runs in a Linux guest.
pub fn verdicts(kvm_problem: Option<&str>, virt: HostVirt) -> [(&'static str, String); 3] {
    const CONTAINER: &str = "each container runs in a Linux guest";
    let (probe, linux, containers) = match (kvm_problem, virt) {
        (Some(why), _) => (
            format!("no ({why})"),
            "no (KVM is not usable)".to_string(),
            format!("no ({CONTAINER})"),
        ),
        (None, HostVirt::VtX) => (
            "yes".to_string(),
            "yes (VT-x)".to_string(),
            format!("yes ({CONTAINER})"),
        ),
        (None, HostVirt::AmdV) => (
            "yes".to_string(),
            "yes (AMD-V)".to_string(),
            format!("yes ({CONTAINER})"),
        ),
        (None, HostVirt::Pvm) => (
            "yes".to_string(),
            "only a PVM-enabled kernel (this host is PVM: any other guest code runs in \
             KVM's instruction emulator, at about 2 million instructions/s, and a stock \
             Linux kernel stops early in boot)"
                .to_string(),
            format!("only with a PVM-enabled guest kernel ({CONTAINER})"),
        ),
        (None, HostVirt::Unknown) => (
            "yes".to_string(),
            "unknown (KVM works, but the host shows no VT-x, AMD-V or PVM)".to_string(),
            format!("unknown ({CONTAINER})"),
        ),
    };
    [
        ("probe guest", probe),
        ("Linux guest", linux),
        ("containers", containers),
    ]
}

/// Prints the report; returns the process exit status: 0 when the VMM
/// can run here (the probe guest runs), 1 otherwise.
pub fn run() -> i32 {
    let (report, ok) = report();
    print!("{report}");
    if ok {
        0
    } else {
        1
    }
}

/// The doctor's report, and whether the VMM can run here.
pub fn report() -> (String, bool) {
    let mut out = String::new();
    // The first reason KVM cannot run the VMM, if any.
    let mut problem: Option<String> = None;
    let virt = host_virt();
    let _ = writeln!(out, "virtualization: {}", virt.describe());
    match Kvm::new() {
        Err(e) => {
            let _ = writeln!(out, "kvm: cannot open /dev/kvm: {e}");
            problem = Some(format!("cannot open /dev/kvm: {e}"));
        }
        Ok(kvm) => {
            let version = kvm.get_api_version();
            let supported = version == KVM_API_VERSION;
            let verdict = if supported { "ok" } else { "UNSUPPORTED" };
            let _ = writeln!(out, "kvm: API version {version} ({verdict})");
            if !supported {
                problem = Some(format!(
                    "KVM API version {version}, husk needs {KVM_API_VERSION}"
                ));
            }
            let _ = writeln!(
                out,
                "kvm: up to {} vCPUs per VM ({} recommended)",
                kvm.get_max_vcpus(),
                kvm.get_nr_vcpus()
            );
            let _ = writeln!(out, "required capabilities:");
            for (cap, name) in REQUIRED_CAPS {
                let has = kvm.check_extension(*cap);
                if !has && problem.is_none() {
                    problem = Some(format!("KVM lacks {name}"));
                }
                let _ = writeln!(out, "  {} {name}", if has { "ok     " } else { "MISSING" });
            }
            let _ = writeln!(out, "optional capabilities:");
            for (cap, name) in OPTIONAL_CAPS {
                let has = kvm.check_extension(*cap);
                let _ = writeln!(out, "  {} {name}", if has { "ok     " } else { "missing" });
            }
        }
    }
    for (what, answer) in verdicts(problem.as_deref(), virt) {
        let _ = writeln!(out, "{what}: {answer}");
    }
    (out, problem.is_none())
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

    fn lines(kvm_problem: Option<&str>, virt: HostVirt) -> Vec<String> {
        verdicts(kvm_problem, virt)
            .iter()
            .map(|(what, answer)| format!("{what}: {answer}"))
            .collect()
    }

    #[test]
    fn hardware_virtualization_runs_everything() {
        for virt in [HostVirt::VtX, HostVirt::AmdV] {
            let l = lines(None, virt);
            assert_eq!(l[0], "probe guest: yes");
            assert!(l[1].starts_with("Linux guest: yes ("), "{}", l[1]);
            assert!(l[2].starts_with("containers: yes ("), "{}", l[2]);
        }
    }

    #[test]
    fn pvm_runs_the_probe_and_only_pvm_kernels() {
        let l = lines(None, HostVirt::Pvm);
        assert_eq!(l[0], "probe guest: yes");
        assert!(
            l[1].starts_with("Linux guest: only a PVM-enabled kernel (this host is PVM"),
            "{}",
            l[1]
        );
        assert!(
            l[2].starts_with("containers: only with a PVM-enabled guest kernel ("),
            "{}",
            l[2]
        );
    }

    #[test]
    fn no_kvm_runs_nothing() {
        for virt in [HostVirt::VtX, HostVirt::Pvm, HostVirt::Unknown] {
            let l = lines(Some("cannot open /dev/kvm: No such file"), virt);
            assert_eq!(l[0], "probe guest: no (cannot open /dev/kvm: No such file)");
            assert!(l[1].starts_with("Linux guest: no ("), "{}", l[1]);
            assert!(l[2].starts_with("containers: no ("), "{}", l[2]);
        }
    }

    #[test]
    fn unknown_virtualization_still_runs_the_probe() {
        let l = lines(None, HostVirt::Unknown);
        assert_eq!(l[0], "probe guest: yes");
        assert!(l[1].starts_with("Linux guest: unknown ("), "{}", l[1]);
        assert!(l[2].starts_with("containers: unknown ("), "{}", l[2]);
    }
}
