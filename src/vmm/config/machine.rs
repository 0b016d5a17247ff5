//! `PUT`/`PATCH`/`GET /machine-config`: vCPUs and memory.

use serde::{Deserialize, Serialize};

use super::{ConfigError, StaticTemplate};
use crate::vmm::arch::x86_64::layout::MAX_VCPUS;

/// The memory a machine gets when `PUT /machine-config` is never sent
/// (Firecracker's default).
pub const DEFAULT_MEM_SIZE_MIB: u64 = 128;
/// The smallest `mem_size_mib` configuration accepts, as in Firecracker:
/// anything but 0. Whether a kernel fits is found when it is loaded, at
/// InstanceStart (it loads at 1 MiB, above the boot structures, so no
/// guest boots in less than 2 MiB; see `arch::x86_64::layout`).
pub const MIN_MEM_SIZE_MIB: u64 = 1;

/// What backs guest memory: `huge_pages` in Firecracker's
/// `/machine-config`, with its values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum HugePages {
    /// 4 KiB pages.
    #[default]
    None,
    /// 4 KiB pages the kernel may back with transparent huge pages
    /// (`madvise(MADV_HUGEPAGE)`).
    Transparent,
    /// 2 MiB hugetlbfs pages from the host's pool, reserved when guest
    /// memory is mapped.
    #[serde(rename = "2M")]
    Hugetlbfs2M,
}

impl HugePages {
    /// The size of a hugetlbfs page, in bytes.
    pub const HUGETLB_2M: u64 = 2 << 20;

    /// `mem_size_mib` must be a multiple of this (Firecracker's rule:
    /// both huge page settings work in whole 2 MiB pages).
    pub fn mem_multiple_mib(self) -> u64 {
        match self {
            HugePages::None => 1,
            HugePages::Transparent | HugePages::Hugetlbfs2M => 2,
        }
    }

    /// Whether guest memory comes from the hugetlbfs pool.
    pub fn is_hugetlbfs(self) -> bool {
        self == HugePages::Hugetlbfs2M
    }

    /// The page size guest memory is mapped with, in bytes.
    pub fn page_size(self) -> u64 {
        match self {
            HugePages::Hugetlbfs2M => Self::HUGETLB_2M,
            HugePages::None | HugePages::Transparent => 4096,
        }
    }

    /// The name the API uses.
    pub fn as_str(self) -> &'static str {
        match self {
            HugePages::None => "None",
            HugePages::Transparent => "Transparent",
            HugePages::Hugetlbfs2M => "2M",
        }
    }
}
/// Reads a vCPU count, refusing values that cannot be one with the same
/// message validation gives.
fn vcpu_count<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
    let v = u64::deserialize(d)?;
    u8::try_from(v).map_err(|_| {
        serde::de::Error::custom(format!(
            "vcpu_count must be between 1 and {MAX_VCPUS}, not {v}"
        ))
    })
}

fn opt_vcpu_count<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u8>, D::Error> {
    vcpu_count(d).map(Some)
}

/// `PUT`/`GET /machine-config`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    #[serde(deserialize_with = "vcpu_count")]
    pub vcpu_count: u8,
    pub mem_size_mib: u64,
    #[serde(default)]
    pub smt: bool,
    #[serde(default)]
    pub track_dirty_pages: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<String>,
    #[serde(default)]
    pub huge_pages: HugePages,
}

impl Default for MachineConfig {
    fn default() -> Self {
        MachineConfig {
            vcpu_count: 1,
            mem_size_mib: DEFAULT_MEM_SIZE_MIB,
            smt: false,
            track_dirty_pages: false,
            cpu_template: None,
            huge_pages: HugePages::None,
        }
    }
}

/// `PATCH /machine-config`: every field optional.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfigUpdate {
    #[serde(default, deserialize_with = "opt_vcpu_count")]
    pub vcpu_count: Option<u8>,
    pub mem_size_mib: Option<u64>,
    pub smt: Option<bool>,
    pub track_dirty_pages: Option<bool>,
    pub cpu_template: Option<String>,
    pub huge_pages: Option<HugePages>,
}

impl MachineConfigUpdate {
    /// Whether it names no field at all.
    pub fn is_empty(&self) -> bool {
        *self == MachineConfigUpdate::default()
    }
}

impl MachineConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.vcpu_count == 0 || self.vcpu_count > MAX_VCPUS {
            return Err(ConfigError::VcpuCount(self.vcpu_count));
        }
        if self.smt && self.vcpu_count > 1 && self.vcpu_count % 2 == 1 {
            return Err(ConfigError::SmtVcpuCount(self.vcpu_count));
        }
        // As in Firecracker, no upper bound here: what the host can map
        // is found when guest memory is mapped, at InstanceStart.
        if self.mem_size_mib < MIN_MEM_SIZE_MIB {
            return Err(ConfigError::MemoryTooSmall(self.mem_size_mib));
        }
        let multiple = self.huge_pages.mem_multiple_mib();
        if !self.mem_size_mib.is_multiple_of(multiple) {
            return Err(ConfigError::MemoryNotMultiple {
                mib: self.mem_size_mib,
                multiple,
                huge_pages: self.huge_pages.as_str(),
            });
        }
        self.static_template()?;
        Ok(())
    }

    /// The static CPU template named, if any ("None" names none).
    pub fn static_template(&self) -> Result<Option<StaticTemplate>, ConfigError> {
        self.cpu_template
            .as_deref()
            .map_or(Ok(None), StaticTemplate::parse)
    }

    /// This config with `update` applied (not yet validated).
    pub fn patched(&self, update: MachineConfigUpdate) -> MachineConfig {
        MachineConfig {
            vcpu_count: update.vcpu_count.unwrap_or(self.vcpu_count),
            mem_size_mib: update.mem_size_mib.unwrap_or(self.mem_size_mib),
            smt: update.smt.unwrap_or(self.smt),
            track_dirty_pages: update.track_dirty_pages.unwrap_or(self.track_dirty_pages),
            cpu_template: update.cpu_template.or_else(|| self.cpu_template.clone()),
            huge_pages: update.huge_pages.unwrap_or(self.huge_pages),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(vcpus: u8, mem: u64) -> MachineConfig {
        MachineConfig {
            vcpu_count: vcpus,
            mem_size_mib: mem,
            ..Default::default()
        }
    }

    #[test]
    fn machine_limits() {
        assert!(machine(1, 128).validate().is_ok());
        assert!(machine(32, 256).validate().is_ok());
        assert_eq!(machine(0, 128).validate(), Err(ConfigError::VcpuCount(0)));
        assert_eq!(machine(33, 128).validate(), Err(ConfigError::VcpuCount(33)));
        // Any size but 0, as in Firecracker: what fits is found at start.
        assert_eq!(
            machine(1, 0).validate(),
            Err(ConfigError::MemoryTooSmall(0))
        );
        assert!(machine(1, 1).validate().is_ok());
        assert!(machine(1, 127).validate().is_ok());
        assert!(machine(1, 64 << 20).validate().is_ok());
        assert!(machine(1, u64::MAX).validate().is_ok());
        let mut m = machine(3, 128);
        m.smt = true;
        assert_eq!(m.validate(), Err(ConfigError::SmtVcpuCount(3)));
        m.vcpu_count = 4;
        assert!(m.validate().is_ok());
        m.cpu_template = Some("T2A".into());
        assert!(m.validate().is_ok());
        m.cpu_template = Some("T3".into());
        assert!(matches!(m.validate(), Err(ConfigError::CpuTemplate(_))));
        m.cpu_template = None;
    }

    #[test]
    fn huge_pages_take_firecrackers_values_and_whole_2mib_pages() {
        for (json, value) in [
            ("None", HugePages::None),
            ("Transparent", HugePages::Transparent),
            ("2M", HugePages::Hugetlbfs2M),
        ] {
            let m: MachineConfig = serde_json::from_str(&format!(
                r#"{{"vcpu_count": 1, "mem_size_mib": 128, "huge_pages": "{json}"}}"#
            ))
            .unwrap();
            assert_eq!(m.huge_pages, value);
            assert!(m.validate().is_ok());
            // Always shown, as GET /machine-config answers it.
            assert_eq!(serde_json::to_value(&m).unwrap()["huge_pages"], json);
            let mut odd = m.clone();
            odd.mem_size_mib = 129;
            assert_eq!(odd.validate().is_ok(), value == HugePages::None);
        }
        for bad in ["\"1G\"", "\"2m\"", "\"\"", "null", "2"] {
            let r: Result<MachineConfig, _> = serde_json::from_str(&format!(
                r#"{{"vcpu_count": 1, "mem_size_mib": 128, "huge_pages": {bad}}}"#
            ));
            assert!(r.is_err(), "{bad}");
        }
        let m: MachineConfig =
            serde_json::from_str(r#"{"vcpu_count": 1, "mem_size_mib": 3}"#).unwrap();
        assert_eq!(m.huge_pages, HugePages::None);
        let err = m
            .patched(MachineConfigUpdate {
                huge_pages: Some(HugePages::Hugetlbfs2M),
                ..Default::default()
            })
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("multiple of 2"), "{err}");
    }

    #[test]
    fn patch_keeps_unset_fields() {
        let m = machine(2, 256).patched(MachineConfigUpdate {
            mem_size_mib: Some(512),
            ..Default::default()
        });
        assert_eq!((m.vcpu_count, m.mem_size_mib), (2, 512));
    }
}
