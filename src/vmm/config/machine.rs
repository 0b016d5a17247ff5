//! `PUT`/`PATCH`/`GET /machine-config`: vCPUs and memory.

use serde::{Deserialize, Serialize};

use super::{ConfigError, StaticTemplate};
use crate::vmm::arch::x86_64::layout::MAX_VCPUS;

/// The smallest guest husk boots.
pub const MIN_MEM_SIZE_MIB: u64 = 128;
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub huge_pages: Option<String>,
}

impl Default for MachineConfig {
    fn default() -> Self {
        MachineConfig {
            vcpu_count: 1,
            mem_size_mib: MIN_MEM_SIZE_MIB,
            smt: false,
            track_dirty_pages: false,
            cpu_template: None,
            huge_pages: None,
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
    pub huge_pages: Option<String>,
}

impl MachineConfigUpdate {
    /// Whether it names no field at all.
    pub fn is_empty(&self) -> bool {
        *self == MachineConfigUpdate::default()
    }
}

/// Physical memory of this host, in MiB.
pub fn host_memory_mib() -> u64 {
    // SAFETY: sysinfo only writes into the struct we pass.
    let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a valid, writable sysinfo struct.
    if unsafe { libc::sysinfo(&mut info) } != 0 {
        return u64::MAX;
    }
    (info.totalram as u64).saturating_mul(u64::from(info.mem_unit)) >> 20
}

impl MachineConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.vcpu_count == 0 || self.vcpu_count > MAX_VCPUS {
            return Err(ConfigError::VcpuCount(self.vcpu_count));
        }
        if self.smt && self.vcpu_count > 1 && self.vcpu_count % 2 == 1 {
            return Err(ConfigError::SmtVcpuCount(self.vcpu_count));
        }
        if self.mem_size_mib < MIN_MEM_SIZE_MIB {
            return Err(ConfigError::MemoryTooSmall(self.mem_size_mib));
        }
        let host = host_memory_mib();
        if self.mem_size_mib > host {
            return Err(ConfigError::MemoryTooLarge(self.mem_size_mib, host));
        }
        self.static_template()?;
        match self.huge_pages.as_deref() {
            None | Some("None") => {}
            Some(t) => return Err(ConfigError::HugePages(t.into())),
        }
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
            huge_pages: update.huge_pages.or_else(|| self.huge_pages.clone()),
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
        assert_eq!(
            machine(1, 127).validate(),
            Err(ConfigError::MemoryTooSmall(127))
        );
        assert!(matches!(
            machine(1, u64::MAX >> 20).validate(),
            Err(ConfigError::MemoryTooLarge(..))
        ));
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
        m.huge_pages = Some("2M".into());
        assert!(matches!(m.validate(), Err(ConfigError::HugePages(_))));
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
