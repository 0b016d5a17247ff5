//! Per-vCPU CPUID, derived from `KVM_GET_SUPPORTED_CPUID`.
//!
//! KVM reports what the host can offer; each vCPU then gets its own APIC ID
//! and a topology that matches the MP table: `vcpu_count` logical
//! processors in one package, two threads per core when SMT is on.

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_V2_EXT_TOPOLOGY: u32 = 0x1f;
pub const LEAF_HYPERVISOR: u32 = 0x4000_0000;
const LEAF_AMD_ADDR_SIZES: u32 = 0x8000_0008;
const LEAF_AMD_TOPOLOGY_EXT: u32 = 0x8000_001e;

const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;

const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

/// The shape of the virtual package.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Topology {
    pub cpu_count: u8,
    pub threads_per_core: u8,
}

impl Topology {
    pub fn new(cpu_count: u8, smt: bool) -> Self {
        let threads_per_core = if smt && cpu_count > 1 { 2 } else { 1 };
        Topology {
            cpu_count,
            threads_per_core,
        }
    }

    fn cores(&self) -> u32 {
        u32::from(self.cpu_count / self.threads_per_core).max(1)
    }

    /// Bits of the APIC ID that select a thread within a core.
    fn smt_shift(&self) -> u32 {
        bits_for(u32::from(self.threads_per_core))
    }

    /// Bits of the APIC ID that select a thread within the package.
    fn package_shift(&self) -> u32 {
        bits_for(u32::from(self.cpu_count))
    }
}

/// The number of bits needed to number `n` items.
fn bits_for(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// Makes sure the extended topology leaves the guest can reach have the
/// SMT (0) and core (1) levels and a terminating level (2): hosts report
/// only what they have, and the guest must see our topology.
pub fn ensure_topology_levels(cpuid: &mut CpuId) {
    let max_basic = cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == 0)
        .map_or(0, |e| e.eax);
    for leaf in [LEAF_EXT_TOPOLOGY, LEAF_V2_EXT_TOPOLOGY] {
        if max_basic < leaf {
            continue;
        }
        // Leaf 0x1f only where the host offers it; 0xb always.
        let present = cpuid.as_slice().iter().any(|e| e.function == leaf);
        if !present && leaf == LEAF_V2_EXT_TOPOLOGY {
            continue;
        }
        for index in 0..3 {
            let has = cpuid
                .as_slice()
                .iter()
                .any(|e| e.function == leaf && e.index == index);
            if !has {
                // Full only past KVM_MAX_CPUID_ENTRIES; the level is then
                // left as the host reported it.
                let _ = cpuid.push(kvm_cpuid_entry2 {
                    function: leaf,
                    index,
                    flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
                    ..Default::default()
                });
            }
        }
    }
}

/// Rewrites the host-supported CPUID for vCPU `cpu_index`.
pub fn normalize(cpuid: &mut CpuId, cpu_index: u8, topo: Topology) {
    ensure_topology_levels(cpuid);
    let apic_id = u32::from(cpu_index);
    for entry in cpuid.as_mut_slice().iter_mut() {
        normalize_entry(entry, apic_id, topo);
    }
}

fn normalize_entry(entry: &mut kvm_cpuid_entry2, apic_id: u32, topo: Topology) {
    match entry.function {
        LEAF_FEATURES => {
            // EBX: [31:24] initial APIC ID, [23:16] logical processors,
            // [15:8] CLFLUSH line size in 8-byte units.
            entry.ebx =
                (apic_id << 24) | (u32::from(topo.cpu_count) << 16) | (8 << 8) | (entry.ebx & 0xff);
            entry.ecx |= ECX_HYPERVISOR;
            if topo.cpu_count > 1 {
                entry.edx |= EDX_HTT;
            } else {
                entry.edx &= !EDX_HTT;
            }
        }
        LEAF_CACHE_PARAMS => {
            let level = (entry.eax >> 5) & 0x7;
            let sharing = if level >= 3 {
                u32::from(topo.cpu_count)
            } else {
                u32::from(topo.threads_per_core)
            };
            entry.eax &= 0x3fff; // keep type, level and the rest of the low bits
            entry.eax |= ((topo.cores() - 1) << 26) | ((sharing - 1) << 14);
        }
        LEAF_EXT_TOPOLOGY | LEAF_V2_EXT_TOPOLOGY => {
            entry.edx = apic_id;
            match entry.index {
                0 => {
                    entry.eax = topo.smt_shift();
                    entry.ebx = u32::from(topo.threads_per_core);
                    entry.ecx = LEVEL_TYPE_SMT << 8;
                }
                1 => {
                    entry.eax = topo.package_shift();
                    entry.ebx = u32::from(topo.cpu_count);
                    entry.ecx = (LEVEL_TYPE_CORE << 8) | 1;
                }
                i => {
                    entry.eax = 0;
                    entry.ebx = 0;
                    entry.ecx = i;
                }
            }
        }
        LEAF_AMD_ADDR_SIZES => {
            // ECX: [15:12] APIC ID size, [7:0] threads in package - 1.
            entry.ecx = (topo.package_shift() << 12) | (u32::from(topo.cpu_count) - 1);
        }
        LEAF_AMD_TOPOLOGY_EXT => {
            let core_id = apic_id >> topo.smt_shift();
            entry.eax = apic_id;
            entry.ebx = ((u32::from(topo.threads_per_core) - 1) << 8) | (core_id & 0xff);
            entry.ecx = 0; // one node
            entry.edx = 0;
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: 0x0000_0121, // a level-1 cache descriptor for leaf 4
            ebx: 0xffff_ffff,
            ecx: 0,
            edx: 0,
            ..Default::default()
        }
    }

    fn host_like() -> CpuId {
        CpuId::from_entries(&[
            kvm_cpuid_entry2 {
                eax: 0x10, // highest basic leaf
                ..entry(0x0, 0)
            },
            entry(LEAF_FEATURES, 0),
            entry(LEAF_CACHE_PARAMS, 0),
            entry(LEAF_EXT_TOPOLOGY, 0),
            entry(LEAF_EXT_TOPOLOGY, 1),
            entry(LEAF_EXT_TOPOLOGY, 2),
            kvm_cpuid_entry2 {
                function: LEAF_HYPERVISOR,
                eax: 0x4000_0001,
                ebx: 0x4b4d_564b, // "KVMK"
                ecx: 0x564b_4d56,
                edx: 0x4d,
                ..Default::default()
            },
            entry(LEAF_AMD_ADDR_SIZES, 0),
            entry(LEAF_AMD_TOPOLOGY_EXT, 0),
        ])
        .unwrap()
    }

    fn find(c: &CpuId, f: u32, i: u32) -> kvm_cpuid_entry2 {
        *c.as_slice()
            .iter()
            .find(|e| e.function == f && e.index == i)
            .unwrap()
    }

    #[test]
    fn each_vcpu_gets_its_apic_id() {
        for idx in 0..4u8 {
            let mut c = host_like();
            normalize(&mut c, idx, Topology::new(4, false));
            let l1 = find(&c, LEAF_FEATURES, 0);
            assert_eq!(l1.ebx >> 24, u32::from(idx));
            assert_eq!((l1.ebx >> 16) & 0xff, 4);
            assert_ne!(l1.ecx & ECX_HYPERVISOR, 0);
            assert_ne!(l1.edx & EDX_HTT, 0);
            assert_eq!(find(&c, LEAF_EXT_TOPOLOGY, 1).edx, u32::from(idx));
            assert_eq!(find(&c, LEAF_AMD_TOPOLOGY_EXT, 0).eax, u32::from(idx));
        }
    }

    #[test]
    fn topology_leaves_without_smt() {
        let mut c = host_like();
        normalize(&mut c, 0, Topology::new(4, false));
        let smt = find(&c, LEAF_EXT_TOPOLOGY, 0);
        assert_eq!((smt.eax, smt.ebx, smt.ecx), (0, 1, 0x100));
        let core = find(&c, LEAF_EXT_TOPOLOGY, 1);
        assert_eq!((core.eax, core.ebx, core.ecx), (2, 4, 0x201));
        let other = find(&c, LEAF_EXT_TOPOLOGY, 2);
        assert_eq!((other.eax, other.ebx, other.ecx), (0, 0, 2));
        let l4 = find(&c, LEAF_CACHE_PARAMS, 0);
        assert_eq!(l4.eax >> 26, 3, "four cores");
        assert_eq!((l4.eax >> 14) & 0xfff, 0, "L1 not shared");
        assert_eq!(find(&c, LEAF_AMD_ADDR_SIZES, 0).ecx, (2 << 12) | 3);
    }

    #[test]
    fn topology_leaves_with_smt() {
        let mut c = host_like();
        normalize(&mut c, 3, Topology::new(4, true));
        let smt = find(&c, LEAF_EXT_TOPOLOGY, 0);
        assert_eq!((smt.eax, smt.ebx), (1, 2));
        let l4 = find(&c, LEAF_CACHE_PARAMS, 0);
        assert_eq!(l4.eax >> 26, 1, "two cores");
        assert_eq!((l4.eax >> 14) & 0xfff, 1, "L1 shared by two threads");
        let amd = find(&c, LEAF_AMD_TOPOLOGY_EXT, 0);
        assert_eq!(amd.ebx, (1 << 8) | 1, "thread 3 is on core 1");
    }

    #[test]
    fn single_vcpu_has_no_htt() {
        let mut c = host_like();
        normalize(&mut c, 0, Topology::new(1, true));
        assert_eq!(find(&c, LEAF_FEATURES, 0).edx & EDX_HTT, 0);
        assert_eq!(Topology::new(1, true).threads_per_core, 1);
    }

    #[test]
    fn hypervisor_leaf_is_kept() {
        let mut c = host_like();
        let before = find(&c, LEAF_HYPERVISOR, 0);
        normalize(&mut c, 1, Topology::new(2, false));
        let after = find(&c, LEAF_HYPERVISOR, 0);
        assert_eq!(
            (before.ebx, before.ecx, before.edx),
            (after.ebx, after.ecx, after.edx)
        );
    }

    #[test]
    fn missing_topology_levels_are_added() {
        let mut c = CpuId::from_entries(&[
            kvm_cpuid_entry2 {
                eax: 0xd,
                ..entry(0x0, 0)
            },
            entry(LEAF_FEATURES, 0),
            entry(LEAF_EXT_TOPOLOGY, 0),
        ])
        .unwrap();
        normalize(&mut c, 1, Topology::new(2, false));
        let core = find(&c, LEAF_EXT_TOPOLOGY, 1);
        assert_eq!((core.ebx, core.edx), (2, 1));
        assert_eq!(core.flags, KVM_CPUID_FLAG_SIGNIFCANT_INDEX);
        assert_eq!(find(&c, LEAF_EXT_TOPOLOGY, 2).ecx, 2);
        // No 0x1f leaf appears where the host has none.
        assert!(!c
            .as_slice()
            .iter()
            .any(|e| e.function == LEAF_V2_EXT_TOPOLOGY));
    }

    #[test]
    fn bits_for_counts() {
        assert_eq!(bits_for(1), 0);
        assert_eq!(bits_for(2), 1);
        assert_eq!(bits_for(3), 2);
        assert_eq!(bits_for(4), 2);
        assert_eq!(bits_for(5), 3);
        assert_eq!(bits_for(32), 5);
    }
}
