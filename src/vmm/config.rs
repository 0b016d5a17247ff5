//! The microVM's configuration, in Firecracker's JSON shapes, and its
//! validation. Everything here is checked before any of it touches KVM.

use std::fs::File;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::vmm::arch::x86_64::boot::kernel_cmdline;
use crate::vmm::arch::x86_64::layout::MAX_VCPUS;

/// The smallest guest husk boots.
pub const MIN_MEM_SIZE_MIB: u64 = 128;
/// Kernel arguments used when `boot_args` is not given.
pub const DEFAULT_BOOT_ARGS: &str =
    "console=ttyS0 reboot=k panic=1 pci=off nomodule i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd";

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("vcpu_count must be between 1 and {MAX_VCPUS}, not {0}")]
    VcpuCount(u8),
    #[error("with smt enabled, vcpu_count must be 1 or even, not {0}")]
    SmtVcpuCount(u8),
    #[error("mem_size_mib must be at least {MIN_MEM_SIZE_MIB}, not {0}")]
    MemoryTooSmall(u64),
    #[error("mem_size_mib {0} is more than this host's {1} MiB of memory")]
    MemoryTooLarge(u64, u64),
    #[error("cpu_template {0:?} is not supported; use \"None\"")]
    CpuTemplate(String),
    #[error("huge_pages {0:?} is not supported; use \"None\"")]
    HugePages(String),
    #[error("cannot open {what} {path}: {err}")]
    File {
        what: &'static str,
        path: String,
        err: String,
    },
    #[error("invalid boot_args: {0}")]
    BootArgs(String),
    #[error("invalid log level {0:?}; use Error, Warning, Info, Debug, Trace or Off")]
    LogLevel(String),
}

/// `PUT /boot-source`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSourceConfig {
    pub kernel_image_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
}

fn check_readable(what: &'static str, path: &str) -> Result<(), ConfigError> {
    let err = |err: String| ConfigError::File {
        what,
        path: crate::text::echo(path).into_owned(),
        err,
    };
    match open_regular(Path::new(path)) {
        Ok(_) => Ok(()),
        Err(OpenRegularError::NotRegular) => Err(err("not a regular file".into())),
        Err(OpenRegularError::Io(e)) => Err(err(e.to_string())),
    }
}

impl BootSourceConfig {
    pub fn boot_args(&self) -> &str {
        self.boot_args.as_deref().unwrap_or(DEFAULT_BOOT_ARGS)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        check_readable("kernel image", &self.kernel_image_path)?;
        if let Some(initrd) = &self.initrd_path {
            check_readable("initrd", initrd)?;
        }
        kernel_cmdline(self.boot_args()).map_err(|e| ConfigError::BootArgs(e.to_string()))?;
        Ok(())
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
        match self.cpu_template.as_deref() {
            None | Some("None") => {}
            Some(t) => return Err(ConfigError::CpuTemplate(t.into())),
        }
        match self.huge_pages.as_deref() {
            None | Some("None") => {}
            Some(t) => return Err(ConfigError::HugePages(t.into())),
        }
        Ok(())
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

/// `PUT /logger`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggerConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_level: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_log_origin: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
}

impl LoggerConfig {
    /// The level as a tracing filter directive ("warn", "off", ...).
    pub fn level_directive(&self) -> Result<&'static str, ConfigError> {
        let level = self.level.as_deref().unwrap_or("Info");
        Ok(match level.to_ascii_lowercase().as_str() {
            "error" => "error",
            "warning" | "warn" => "warn",
            "info" => "info",
            "debug" => "debug",
            "trace" => "trace",
            "off" => "off",
            _ => return Err(ConfigError::LogLevel(level.into())),
        })
    }
}

/// `PUT /metrics`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    pub metrics_path: String,
}

/// `PUT /serial`: where the guest console goes (stdout when unset).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_out_path: Option<String>,
}

/// A whole VM: the `--config-file` format and `GET /vm/config`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    #[serde(
        rename = "boot-source",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub boot_source: Option<BootSourceConfig>,
    #[serde(rename = "machine-config", default)]
    pub machine_config: MachineConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logger: Option<LoggerConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<SerialConfig>,
}

/// No configuration comes close to this; anything larger is refused
/// before it is read.
pub const MAX_CONFIG_FILE_SIZE: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("cannot read config file {0}: {1}")]
    Read(String, std::io::Error),
    #[error("config file {0} is not a regular file")]
    NotRegular(String),
    #[error("config file {0} is larger than {MAX_CONFIG_FILE_SIZE} bytes")]
    TooLarge(String),
    #[error("invalid config file {0}: {1}")]
    Parse(String, serde_json::Error),
    #[error("invalid config file {0}: {1}")]
    Invalid(String, ConfigError),
    #[error("config file {0} has no boot-source")]
    NoBootSource(String),
}

impl VmConfig {
    /// Reads and validates a config file that must be able to boot. Only
    /// a regular file of at most [`MAX_CONFIG_FILE_SIZE`] bytes is read:
    /// a FIFO or a device (`/dev/zero`) is refused without blocking.
    pub fn from_file(path: &Path) -> Result<VmConfig, ConfigFileError> {
        use std::io::Read;
        let name = crate::text::echo_path(path);
        let f = open_regular(path).map_err(|e| match e {
            OpenRegularError::NotRegular => ConfigFileError::NotRegular(name.clone()),
            OpenRegularError::Io(e) => ConfigFileError::Read(name.clone(), e),
        })?;
        let mut text = Vec::new();
        f.take(MAX_CONFIG_FILE_SIZE + 1)
            .read_to_end(&mut text)
            .map_err(|e| ConfigFileError::Read(name.clone(), e))?;
        if text.len() as u64 > MAX_CONFIG_FILE_SIZE {
            return Err(ConfigFileError::TooLarge(name));
        }
        Self::from_slice(&name, &text)
    }

    /// Parses and validates a config file's contents; `name` is what
    /// errors call the file.
    pub fn from_slice(name: &str, text: &[u8]) -> Result<VmConfig, ConfigFileError> {
        let name = name.to_string();
        let cfg: VmConfig =
            serde_json::from_slice(text).map_err(|e| ConfigFileError::Parse(name.clone(), e))?;
        let boot = cfg
            .boot_source
            .as_ref()
            .ok_or_else(|| ConfigFileError::NoBootSource(name.clone()))?;
        boot.validate()
            .and_then(|_| cfg.machine_config.validate())
            .and_then(|_| match &cfg.logger {
                Some(l) => l.level_directive().map(|_| ()),
                None => Ok(()),
            })
            .map_err(|e| ConfigFileError::Invalid(name, e))?;
        Ok(cfg)
    }
}

/// Why [`open_regular`] refused a path.
#[derive(Debug)]
pub enum OpenRegularError {
    NotRegular,
    Io(std::io::Error),
}

/// Opens `path` for reading only if it is a regular file. The open itself
/// never blocks (O_NONBLOCK, so a FIFO with no writer cannot stall the
/// caller), and the type is checked on the opened file, so a path swapped
/// after a check cannot slip through. The returned file is blocking again.
pub fn open_regular(path: &Path) -> Result<File, OpenRegularError> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(OpenRegularError::Io)?;
    let meta = f.metadata().map_err(OpenRegularError::Io)?;
    if !meta.is_file() {
        return Err(OpenRegularError::NotRegular);
    }
    // SAFETY: F_GETFL/F_SETFL on a file descriptor we own; no memory is
    // passed to the kernel.
    unsafe {
        let flags = libc::fcntl(f.as_raw_fd(), libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(f.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK);
        }
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::arch::x86_64::layout::CMDLINE_MAX_SIZE;

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

    #[test]
    fn firecracker_json_shapes() {
        let cfg: VmConfig = serde_json::from_str(
            r#"{"boot-source": {"kernel_image_path": "/k", "boot_args": "console=ttyS0"},
                "machine-config": {"vcpu_count": 2, "mem_size_mib": 256, "smt": false}}"#,
        )
        .unwrap();
        assert_eq!(cfg.machine_config.vcpu_count, 2);
        assert_eq!(cfg.boot_source.unwrap().boot_args(), "console=ttyS0");
        let err = serde_json::from_str::<VmConfig>(r#"{"drives": []}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `drives`"), "{err}");
        let err = serde_json::from_str::<MachineConfig>(r#"{"vcpu_count": 1}"#).unwrap_err();
        assert!(err.to_string().contains("mem_size_mib"), "{err}");
    }

    #[test]
    fn boot_source_checks_files_and_args() {
        let missing = BootSourceConfig {
            kernel_image_path: "/nonexistent/vmlinux".into(),
            ..Default::default()
        };
        let e = missing.validate().unwrap_err().to_string();
        assert!(e.contains("kernel image /nonexistent/vmlinux"), "{e}");
        let dir = BootSourceConfig {
            kernel_image_path: "/".into(),
            ..Default::default()
        };
        assert!(dir
            .validate()
            .unwrap_err()
            .to_string()
            .contains("regular file"));
        let me = std::env::current_exe().unwrap().display().to_string();
        let bad_args = BootSourceConfig {
            kernel_image_path: me.clone(),
            boot_args: Some("console=ttyS0\u{1}".into()),
            ..Default::default()
        };
        assert!(matches!(bad_args.validate(), Err(ConfigError::BootArgs(_))));
        let long_args = BootSourceConfig {
            kernel_image_path: me,
            boot_args: Some("a".repeat(CMDLINE_MAX_SIZE)),
            ..Default::default()
        };
        assert!(matches!(
            long_args.validate(),
            Err(ConfigError::BootArgs(_))
        ));
    }

    #[test]
    fn log_levels() {
        let l = |s: &str| LoggerConfig {
            level: Some(s.into()),
            ..Default::default()
        };
        assert_eq!(l("Warning").level_directive(), Ok("warn"));
        assert_eq!(l("debug").level_directive(), Ok("debug"));
        assert_eq!(l("Off").level_directive(), Ok("off"));
        assert!(l("loud").level_directive().is_err());
    }
}
