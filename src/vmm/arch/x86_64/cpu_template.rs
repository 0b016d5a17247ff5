//! Applying CPU templates to a vCPU's CPUID and MSRs.
//!
//! A static template (`cpu_template` in `/machine-config`) is expressed
//! as the same modifiers a custom one (`PUT /cpu-config`) has, so one
//! code path applies both. As in Firecracker: a template only modifies
//! CPUID entries KVM offers (one naming any other is refused at start),
//! takes the entry's KVM flags from the template, and its MSR modifiers
//! change the value the MSR starts with (husk's boot value, or KVM's
//! when husk sets none). The templates are applied before husk's own
//! CPUID normalization (APIC IDs, topology, the hypervisor bit), which
//! wins where both touch a bit.

use kvm_bindings::{kvm_cpuid_entry2, kvm_msr_entry, CpuId};

use crate::vmm::config::{
    parse_capability, Bitmap, CpuConfig, CpuidLeafModifier, CpuidRegister, CpuidRegisterModifier,
    MsrModifier, StaticTemplate, VmConfig,
};

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("CPU template {template} is for {wanted} CPUs; this host's CPU is {host:?}")]
    Vendor {
        template: &'static str,
        wanted: &'static str,
        host: String,
    },
    #[error("CPU template T2CL needs an Intel Cascade Lake or newer CPU; this host's is family {family:#x} model {model:#x} stepping {stepping}")]
    Model {
        family: u32,
        model: u32,
        stepping: u32,
    },
    #[error("the CPU template modifies CPUID leaf {leaf:#x} subleaf {subleaf:#x}, which KVM does not offer on this host")]
    CpuidNotSupported { leaf: u32, subleaf: u32 },
    #[error("the CPU template modifies MSR {0:#x}, which KVM does not offer on this host")]
    MsrNotSupported(u32),
    #[error("the CPU template needs KVM capability {0}, which this host's KVM lacks")]
    Capability(u32),
    #[error("the CPU template's kvm_capabilities: {0}")]
    BadCapability(String),
}

pub const VENDOR_INTEL: &str = "GenuineIntel";
pub const VENDOR_AMD: &str = "AuthenticAMD";

/// One register's modifier in a static template's table:
/// (leaf, subleaf, register, bits forced, their values).
type Row = (u32, u32, CpuidRegister, u32, u32);

use CpuidRegister::{Eax, Ebx, Ecx, Edx};

/// Leaf 1 in every T2 template: the signature of a family 6 model 0x3f
/// stepping 2 CPU, and the Intel-only or host-specific features off
/// (DTES64, MONITOR, DS-CPL, VMX, SMX, EIST, TM2, CNXT-ID, SDBG, xTPR,
/// PDCM, DCA; PSN, DS, ACPI, SS, TM, IA64, PBE), MCE and MTRR on.
const T2_LEAF1: [Row; 3] = [
    (0x1, 0, Eax, 0x0fff_3fff, 0x0003_06f2),
    (0x1, 0, Ecx, 0x0004_cdfc, 0),
    (0x1, 0, Edx, 0xe864_1080, 0x0000_1080),
];

/// Leaf 7 ECX/EDX and the XSAVE leaves in every T2 template: AVX-512,
/// MPX, SGX, PKU, UMIP, LA57, RDPID and friends off; XSAVEC, XGETBV
/// and XSAVES off.
const T2_EXTENDED: [Row; 4] = [
    (0x7, 0, Ecx, 0x4041_5f5e, 0),
    (0x7, 0, Edx, 0x0000_011c, 0),
    (0xd, 0, Eax, 0x0000_02f8, 0),
    (0xd, 1, Eax, 0x0000_000e, 0),
];

/// Leaf 7 EBX of T2S, T2CL and T2A: ERMS on, and SGX, HLE, RTM, RDT,
/// MPX, AVX-512, RDSEED, ADX, RDPID (AMD), CLFLUSHOPT, CLWB, PT, SHA
/// off. T2 also clears bits 6 and 13 (the FPU data pointer and CS/DS
/// deprecation flags).
const T2S_LEAF7_EBX: Row = (0x7, 0, Ebx, 0xffef_da14, 0x0000_0200);
const T2_LEAF7_EBX: Row = (0x7, 0, Ebx, 0xffef_fa54, 0x0000_0200);

/// IA32_ARCH_CAPABILITIES.
const MSR_ARCH_CAPABILITIES: u32 = 0x10a;

/// A static template's rows, plus its MSR modifiers.
fn static_rows(t: StaticTemplate) -> (Vec<Row>, Vec<(u32, Bitmap)>) {
    let mut rows = Vec::with_capacity(12);
    let mut msrs = Vec::new();
    match t {
        StaticTemplate::C3 => rows.extend([
            (0x1, 0, Eax, 0x0fff_3fff, 0x0003_06e4),
            (0x1, 0, Ecx, 0x0040_dd3c, 0),
            (0x1, 0, Edx, 0xa864_1080, 0x0000_1080),
            (0x7, 0, Ebx, 0xffaf_dd3c, 0),
            (0x7, 0, Ecx, 0x4041_481e, 0),
            (0x7, 0, Edx, 0x0000_000c, 0),
            (0xd, 0, Eax, 0x0000_02f8, 0),
            (0xd, 1, Eax, 0x0000_000e, 0),
            (0x8000_0001, 0, Ecx, 0x0000_0120, 0),
            (0x8000_0001, 0, Edx, 0x0400_0000, 0),
        ]),
        StaticTemplate::T2 | StaticTemplate::T2S => {
            rows.extend(T2_LEAF1);
            rows.push(if t == StaticTemplate::T2 {
                T2_LEAF7_EBX
            } else {
                T2S_LEAF7_EBX
            });
            rows.extend(T2_EXTENDED);
            rows.extend([
                (0x8000_0001, 0, Ecx, 0x2000_0100, 0),
                (0x8000_0001, 0, Edx, 0x0400_0000, 0),
                (0x8000_0008, 0, Ebx, 0x0000_0200, 0),
            ]);
            if t == StaticTemplate::T2S {
                // Every bit forced: only the mitigations all supported
                // Intel CPUs have are claimed.
                msrs.push((MSR_ARCH_CAPABILITIES, Bitmap::new(u64::MAX, 0xc4c)));
            }
        }
        StaticTemplate::T2CL | StaticTemplate::T2A => {
            rows.extend(T2_LEAF1);
            rows.push(T2S_LEAF7_EBX);
            rows.extend(T2_EXTENDED);
            // SSE4A, MisAlignSse, PREFETCHW, MONITORX; MmxExt, MMX,
            // FXSR_OPT, FFXSR and 1 GiB pages off.
            rows.extend([
                (0x8000_0001, 0, Ecx, 0x2000_01c0, 0),
                (0x8000_0001, 0, Edx, 0x07c0_0000, 0),
            ]);
            if t == StaticTemplate::T2A {
                // CLZERO, RstrFpErrPtrs, WBNOINVD off; IBRS preferred
                // and same-mode on.
                rows.push((0x8000_0008, 0, Ebx, 0x000c_0205, 0x000c_0000));
            } else {
                rows.push((0x8000_0008, 0, Ebx, 0x0000_0200, 0));
                // The model-specific controls off; the mitigation bits
                // KVM passes through are kept.
                msrs.push((MSR_ARCH_CAPABILITIES, Bitmap::new(!0x0d0a_e1ff, 0)));
            }
        }
    }
    (rows, msrs)
}

/// A static template in the custom templates' form.
pub fn static_template(t: StaticTemplate) -> CpuConfig {
    let (rows, msrs) = static_rows(t);
    let mut leaves: Vec<CpuidLeafModifier> = Vec::new();
    for (leaf, subleaf, register, mask, value) in rows {
        let modifier = CpuidRegisterModifier {
            register,
            bitmap: Bitmap::new(u64::from(mask), u64::from(value)),
        };
        match leaves
            .iter_mut()
            .find(|l| (l.leaf, l.subleaf) == (leaf, subleaf))
        {
            Some(l) => l.modifiers.push(modifier),
            None => leaves.push(CpuidLeafModifier {
                leaf,
                subleaf,
                // Leaves 7 and 0xd have subleaves.
                flags: u32::from(leaf == 0x7 || leaf == 0xd),
                modifiers: vec![modifier],
            }),
        }
    }
    CpuConfig {
        cpuid_modifiers: leaves,
        msr_modifiers: msrs
            .into_iter()
            .map(|(addr, bitmap)| MsrModifier { addr, bitmap })
            .collect(),
        ..Default::default()
    }
}

/// The CPU vendor string of `cpuid` leaf 0 (EBX, EDX, ECX).
pub fn vendor_of(regs: [u32; 4]) -> String {
    let bytes: Vec<u8> = [regs[1], regs[3], regs[2]]
        .iter()
        .flat_map(|r| r.to_le_bytes())
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Family, model and stepping from CPUID leaf 1 EAX.
fn signature(eax: u32) -> (u32, u32, u32) {
    let base_family = (eax >> 8) & 0xf;
    let family = if base_family == 0xf {
        base_family + ((eax >> 20) & 0xff)
    } else {
        base_family
    };
    let model = if base_family == 0x6 || base_family == 0xf {
        (((eax >> 16) & 0xf) << 4) | ((eax >> 4) & 0xf)
    } else {
        (eax >> 4) & 0xf
    };
    (family, model, eax & 0xf)
}

/// Intel server models from Cascade Lake on: Cascade Lake is model 0x55
/// stepping 7 or later (0x55 before it is Skylake-SP); then Ice Lake
/// (0x6a, 0x6c), Sapphire Rapids (0x8f), Emerald Rapids (0xcf), Granite
/// Rapids (0xad, 0xae).
fn at_least_cascade_lake(family: u32, model: u32, stepping: u32) -> bool {
    family == 6
        && (model == 0x55 && stepping >= 7 || [0x6a, 0x6c, 0x8f, 0xcf, 0xad, 0xae].contains(&model))
}

/// The template a VM's configuration asks for, checked against this
/// host's CPU (`native(leaf, subleaf)` is its CPUID): a static one only
/// runs on the vendor (and for T2CL, the models) it was made for.
pub fn resolve(
    cfg: &VmConfig,
    native: impl Fn(u32, u32) -> [u32; 4],
) -> Result<Option<CpuConfig>, TemplateError> {
    if let Some(custom) = &cfg.cpu_config {
        return Ok(Some(custom.clone()));
    }
    // Validated when it was configured.
    let Ok(Some(t)) = cfg.machine_config.static_template() else {
        return Ok(None);
    };
    let host = vendor_of(native(0, 0));
    let wanted = match t {
        StaticTemplate::T2A => VENDOR_AMD,
        _ => VENDOR_INTEL,
    };
    if host != wanted {
        return Err(TemplateError::Vendor {
            template: t.name(),
            wanted: if wanted == VENDOR_AMD { "AMD" } else { "Intel" },
            host: crate::text::echo(&host).into_owned(),
        });
    }
    if t == StaticTemplate::T2CL {
        let (family, model, stepping) = signature(native(1, 0)[0]);
        if !at_least_cascade_lake(family, model, stepping) {
            return Err(TemplateError::Model {
                family,
                model,
                stepping,
            });
        }
    }
    Ok(Some(static_template(t)))
}

/// Checks the KVM capabilities a template requires (`has(n)`: whether
/// KVM has capability n). A removed check ("!N") changes nothing: husk
/// checks the capabilities it needs when it opens KVM, before any
/// configuration.
pub fn check_capabilities(t: &CpuConfig, has: impl Fn(u32) -> bool) -> Result<(), TemplateError> {
    for c in &t.kvm_capabilities {
        let (required, n) =
            parse_capability(c).map_err(|e| TemplateError::BadCapability(e.to_string()))?;
        if required && !has(n) {
            return Err(TemplateError::Capability(n));
        }
    }
    Ok(())
}

fn register(e: &mut kvm_cpuid_entry2, r: CpuidRegister) -> &mut u32 {
    match r {
        Eax => &mut e.eax,
        Ebx => &mut e.ebx,
        Ecx => &mut e.ecx,
        Edx => &mut e.edx,
    }
}

/// Applies a template's CPUID modifiers to the vCPU's entries.
pub fn apply_cpuid(cpuid: &mut CpuId, t: &CpuConfig) -> Result<(), TemplateError> {
    for l in &t.cpuid_modifiers {
        let entry = cpuid
            .as_mut_slice()
            .iter_mut()
            .find(|e| e.function == l.leaf && e.index == l.subleaf)
            .ok_or(TemplateError::CpuidNotSupported {
                leaf: l.leaf,
                subleaf: l.subleaf,
            })?;
        entry.flags = l.flags;
        for m in &l.modifiers {
            let reg = register(entry, m.register);
            *reg = m.bitmap.apply32(*reg);
        }
    }
    Ok(())
}

/// Applies a template's MSR modifiers to the MSRs a vCPU starts with:
/// an MSR in `msrs` is modified there; any other is read with `read`
/// (None when KVM does not offer it) and added.
pub fn apply_msrs(
    msrs: &mut Vec<kvm_msr_entry>,
    t: &CpuConfig,
    mut read: impl FnMut(u32) -> Option<u64>,
) -> Result<(), TemplateError> {
    for m in &t.msr_modifiers {
        if let Some(e) = msrs.iter_mut().find(|e| e.index == m.addr) {
            e.data = m.bitmap.apply(e.data);
            continue;
        }
        let now = read(m.addr).ok_or(TemplateError::MsrNotSupported(m.addr))?;
        msrs.push(kvm_msr_entry {
            index: m.addr,
            data: m.bitmap.apply(now),
            ..Default::default()
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::config::MachineConfig;

    fn entry(function: u32, index: u32, v: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: v,
            ebx: v,
            ecx: v,
            edx: v,
            ..Default::default()
        }
    }

    fn cpu(vendor: &'static str, eax1: u32) -> impl Fn(u32, u32) -> [u32; 4] {
        move |leaf, _| {
            let b = vendor.as_bytes();
            let w = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
            match leaf {
                0 => [0xd, w(0), w(8), w(4)],
                _ => [eax1, 0, 0, 0],
            }
        }
    }

    fn with_template(name: &str) -> VmConfig {
        VmConfig {
            machine_config: MachineConfig {
                cpu_template: Some(name.into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn vendors_are_checked() {
        let amd = cpu(VENDOR_AMD, 0x00a0_0f11);
        let intel = cpu(VENDOR_INTEL, 0x0005_0657); // Cascade Lake
        let skylake = cpu(VENDOR_INTEL, 0x0005_0654);
        assert!(resolve(&with_template("T2A"), &amd).unwrap().is_some());
        for t in ["C3", "T2", "T2S", "T2CL"] {
            let e = resolve(&with_template(t), &amd).unwrap_err();
            assert!(e.to_string().contains("Intel CPUs"), "{e}");
            assert!(resolve(&with_template(t), &intel).unwrap().is_some());
        }
        assert!(matches!(
            resolve(&with_template("T2A"), &intel),
            Err(TemplateError::Vendor { .. })
        ));
        assert!(matches!(
            resolve(&with_template("T2CL"), &skylake),
            Err(TemplateError::Model { model: 0x55, .. })
        ));
        assert_eq!(resolve(&with_template("None"), &amd).unwrap(), None);
        assert_eq!(resolve(&VmConfig::default(), &amd).unwrap(), None);
    }

    #[test]
    fn a_custom_template_wins_over_the_static_one() {
        let mut cfg = with_template("T2A");
        cfg.cpu_config = Some(CpuConfig::default());
        let intel = cpu(VENDOR_INTEL, 0x0005_0657);
        assert_eq!(resolve(&cfg, intel).unwrap(), Some(CpuConfig::default()));
    }

    #[test]
    fn static_templates_have_their_documented_masks() {
        let t2a = static_template(StaticTemplate::T2A);
        let leaf7 = t2a
            .cpuid_modifiers
            .iter()
            .find(|l| l.leaf == 7)
            .expect("leaf 7");
        assert_eq!(leaf7.flags, 1);
        let ebx = leaf7.modifiers.iter().find(|m| m.register == Ebx).unwrap();
        // SHA (29) and ADX (19) off, ERMS (9) on.
        assert_eq!(ebx.bitmap.apply32(u32::MAX) & (1 << 29 | 1 << 19), 0);
        assert_ne!(ebx.bitmap.apply32(0) & (1 << 9), 0);
        assert!(t2a.msr_modifiers.is_empty());
        let t2s = static_template(StaticTemplate::T2S);
        assert_eq!(t2s.msr_modifiers[0].addr, MSR_ARCH_CAPABILITIES);
        assert_eq!(t2s.msr_modifiers[0].bitmap.apply(u64::MAX), 0xc4c);
        let c3 = static_template(StaticTemplate::C3);
        assert!(!c3.cpuid_modifiers.iter().any(|l| l.leaf == 0x8000_0008));
        for t in [
            StaticTemplate::C3,
            StaticTemplate::T2,
            StaticTemplate::T2S,
            StaticTemplate::T2CL,
            StaticTemplate::T2A,
        ] {
            static_template(t).validate().unwrap();
        }
    }

    #[test]
    fn cpuid_modifiers_force_and_keep_bits() {
        let mut c = CpuId::from_entries(&[entry(1, 0, 0x0f0f_0f0f), entry(7, 0, 0)]).unwrap();
        let t: CpuConfig = serde_json::from_str(
            r#"{"cpuid_modifiers": [{"leaf": "0x1", "subleaf": "0x0", "flags": 0,
                "modifiers": [{"register": "ecx", "bitmap": "0b10x0"}]}]}"#,
        )
        .unwrap();
        apply_cpuid(&mut c, &t).unwrap();
        let e = c.as_slice()[0];
        assert_eq!(e.ecx, 0x0f0f_0f0a);
        assert_eq!(
            (e.eax, e.ebx, e.edx),
            (0x0f0f_0f0f, 0x0f0f_0f0f, 0x0f0f_0f0f)
        );
        let mut missing = t.clone();
        missing.cpuid_modifiers[0].subleaf = 3;
        assert_eq!(
            apply_cpuid(&mut c, &missing),
            Err(TemplateError::CpuidNotSupported {
                leaf: 1,
                subleaf: 3
            })
        );
    }

    #[test]
    fn msr_modifiers_change_the_starting_values() {
        let mut msrs = vec![kvm_msr_entry {
            index: 0x174,
            data: 0xff00,
            ..Default::default()
        }];
        let t: CpuConfig = serde_json::from_str(
            r#"{"msr_modifiers": [{"addr": "0x174", "bitmap": "0b1x0x"},
                                   {"addr": "0x10a", "bitmap": "0b01"}]}"#,
        )
        .unwrap();
        apply_msrs(&mut msrs, &t, |i| (i == 0x10a).then_some(0b10)).unwrap();
        assert_eq!(msrs[0].data, 0xff08);
        assert_eq!((msrs[1].index, msrs[1].data), (0x10a, 0b01));
        let mut msrs = Vec::new();
        assert_eq!(
            apply_msrs(&mut msrs, &t, |_| None),
            Err(TemplateError::MsrNotSupported(0x174))
        );
    }

    #[test]
    fn capabilities() {
        let t = CpuConfig {
            kvm_capabilities: vec!["!56".into(), "7".into()],
            ..Default::default()
        };
        assert!(check_capabilities(&t, |n| n == 7).is_ok());
        assert_eq!(
            check_capabilities(&t, |_| false),
            Err(TemplateError::Capability(7))
        );
    }
}
