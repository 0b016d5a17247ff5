//! The microVM's configuration, in Firecracker's JSON shapes, and its
//! validation. Everything here is checked before any of it touches KVM.

use std::fs::File;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::vmm::arch::x86_64::layout::MAX_VCPUS;

mod balloon;
mod boot;
mod cpu_config;
mod drive;
mod entropy;
mod fs;
mod machine;
mod memory_hotplug;
mod mmds;
mod net;
mod output;
mod pmem;
mod snapshot;
mod vsock;

pub use balloon::{
    check_amount, check_stats_change, BalloonConfig, BalloonStartCmd, BalloonStatsUpdate,
    BalloonUpdate,
};
pub use boot::{BootSourceConfig, DEFAULT_BOOT_ARGS};
pub use cpu_config::{
    parse_capability, Bitmap, CpuConfig, CpuidLeafModifier, CpuidRegister, CpuidRegisterModifier,
    MsrModifier, StaticTemplate, CPU_TEMPLATE_NAMES,
};
pub use drive::{insert_drive, CacheType, DriveConfig, DriveUpdate, IoEngine};
pub use entropy::EntropyConfig;
pub use fs::{insert_fs, FsConfig, MAX_FS_QUEUES, MAX_FS_QUEUE_SIZE, MAX_TAG_LEN};
pub use machine::{
    HugePages, MachineConfig, MachineConfigUpdate, DEFAULT_MEM_SIZE_MIB, MIN_MEM_SIZE_MIB,
};
pub use memory_hotplug::{
    MemoryHotplugConfig, MemoryHotplugConfigError, MemoryHotplugSizeUpdate, MemoryHotplugStatus,
};
pub use mmds::{is_link_local_valid, MmdsConfig, MmdsVersion, DEFAULT_MMDS_IPV4};
pub use net::{
    check_unique_ids, check_update, insert_interface, put_interface, MacAddr,
    NetworkInterfaceConfig, NetworkInterfaceUpdate,
};
pub use output::{LoggerConfig, MetricsConfig, SerialConfig};
pub use pmem::{
    check_pmem_id, check_pmem_update, check_unique_pmem_ids, insert_pmem, PmemConfig,
    PmemConfigError, PmemUpdate,
};
pub use snapshot::{
    MemBackend, MemBackendType, NetworkOverride, SnapshotCreateParams, SnapshotLoadParams,
    SnapshotType, VsockOverride,
};
pub use vsock::VsockConfig;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("vcpu_count must be between 1 and {MAX_VCPUS}, not {0}")]
    VcpuCount(u8),
    #[error("with smt enabled, vcpu_count must be 1 or even, not {0}")]
    SmtVcpuCount(u8),
    #[error("mem_size_mib must be at least {MIN_MEM_SIZE_MIB}, not {0}")]
    MemoryTooSmall(u64),
    #[error(
        "mem_size_mib {mib} is not a multiple of {multiple}, as huge_pages {huge_pages:?} needs"
    )]
    MemoryNotMultiple {
        mib: u64,
        multiple: u64,
        huge_pages: &'static str,
    },
    #[error("cpu_template {0:?} is not one of {CPU_TEMPLATE_NAMES}")]
    CpuTemplate(String),
    #[error("invalid cpu-config: {0}")]
    CpuConfig(String),
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
    #[error("invalid snapshot request: {0}")]
    Snapshot(String),
    #[error("invalid drive_id {0:?}: 1 to 64 letters, digits, '-' or '_'")]
    DriveId(String),
    #[error("the drive_id in the body ({body}) differs from the one in the path ({path})")]
    DriveIdMismatch { body: String, path: String },
    #[error("invalid partuuid {0:?}")]
    PartUuid(String),
    #[error("invalid drive: {0}")]
    Drive(String),
    #[error("only one drive can be the root device")]
    SecondRoot,
    #[error("no drive {0:?} is configured")]
    NoSuchDrive(String),
    #[error("invalid rate_limiter: {0}")]
    RateLimiter(String),
    /// A network interface: the message names the field.
    #[error("{0}")]
    Net(String),
    #[error("invalid vsock: {0}")]
    Vsock(String),
    #[error("invalid fs device: {0}")]
    Fs(String),
    #[error("invalid fs tag {0:?}: 1 to 36 bytes, none of them NUL")]
    FsTag(String),
    #[error("the tag in the body ({body}) differs from the one in the path ({path})")]
    FsTagMismatch { body: String, path: String },
    #[error("invalid balloon: {0}")]
    Balloon(String),
    #[error("no balloon device is configured: PUT /balloon first")]
    NoBalloon,
    #[error("balloon statistics are not enabled: the balloon was configured with stats_polling_interval_s 0")]
    BalloonStatsDisabled,
    #[error(
        "free page hinting is not enabled: the balloon was configured without free_page_hinting"
    )]
    BalloonHintingDisabled,
    /// `PUT /mmds/config`: the message says what is wrong.
    #[error("invalid mmds-config: {0}")]
    Mmds(String),
    #[error("balloon statistics cannot be enabled or disabled after the microVM started (stats_polling_interval_s can only change between non-zero values)")]
    BalloonStatsChange,
    #[error(transparent)]
    Pmem(#[from] PmemConfigError),
    #[error(transparent)]
    MemoryHotplug(#[from] MemoryHotplugConfigError),
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
    /// A custom CPU template (`PUT /cpu-config`).
    #[serde(
        rename = "cpu-config",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub cpu_config: Option<CpuConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logger: Option<LoggerConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<SerialConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drives: Vec<DriveConfig>,
    #[serde(
        rename = "network-interfaces",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub network_interfaces: Vec<NetworkInterfaceConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entropy: Option<EntropyConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<VsockConfig>,
    /// virtio-fs devices on vhost-user backends (a husk extension).
    #[serde(rename = "fs-devices", default, skip_serializing_if = "Vec::is_empty")]
    pub fs_devices: Vec<FsConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balloon: Option<BalloonConfig>,
    /// virtio-pmem devices, the root one first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pmem: Vec<PmemConfig>,
    /// Hotpluggable memory (a virtio-mem device).
    #[serde(
        rename = "memory-hotplug",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub memory_hotplug: Option<MemoryHotplugConfig>,
    /// The metadata service (`PUT /mmds/config`); the data store itself
    /// is not configuration and is never saved with it.
    #[serde(
        rename = "mmds-config",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub mmds_config: Option<MmdsConfig>,
}

impl VmConfig {
    /// Whether a vhost-user backend (virtio-fs, a drive with `socket`)
    /// will map guest memory: it must be a shared memfd then.
    pub fn needs_shared_memory(&self) -> bool {
        !self.fs_devices.is_empty() || self.drives.iter().any(|d| d.socket.is_some())
    }

    /// The drive that is the root device, if one is.
    pub fn root_drive(&self) -> Option<&DriveConfig> {
        self.drives.iter().find(|d| d.is_root_device)
    }

    /// The pmem device that is the root device, if one is.
    pub fn root_pmem(&self) -> Option<&PmemConfig> {
        self.pmem.iter().find(|p| p.root_device)
    }

    /// MiB of hotpluggable memory (0 without it).
    pub fn hotplug_mib(&self) -> u64 {
        self.memory_hotplug.map_or(0, |h| h.total_size_mib)
    }
}

/// Ids (instance, drive, interface) end up in paths, logs and what the
/// guest sees, so they are kept plain: 1 to 64 letters, digits, '-' or
/// '_'.
/// `GET /vm/config` as Firecracker answers it: every section of its
/// schema shown, `null` or `[]` when unset (husk's own sections, such as
/// `fs-devices`, as they are).
pub fn shown_full_config(mut v: serde_json::Value) -> serde_json::Value {
    const NULLS: [&str; 10] = [
        "balloon",
        "boot-source",
        "cpu-config",
        "logger",
        "metrics",
        "mmds-config",
        "vsock",
        "entropy",
        "memory-hotplug",
        "serial",
    ];
    const LISTS: [&str; 3] = ["drives", "network-interfaces", "pmem"];
    if let Some(o) = v.as_object_mut() {
        for k in NULLS {
            o.entry(k).or_insert(serde_json::Value::Null);
        }
        for k in LISTS {
            o.entry(k).or_insert_with(|| serde_json::json!([]));
        }
    }
    v
}

pub fn is_plain_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
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
            .and_then(|_| cfg.cpu_config.as_ref().map_or(Ok(()), CpuConfig::validate))
            .and_then(|_| match &cfg.logger {
                Some(l) => l.level_directive().map(|_| ()),
                None => Ok(()),
            })
            .map_err(|e| ConfigFileError::Invalid(name, e))?;
        Ok(cfg)
    }
}

/// Why [`open_regular`] refused a path.
#[derive(Debug, thiserror::Error)]
pub enum OpenRegularError {
    #[error("not a regular file")]
    NotRegular,
    #[error("{0}")]
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

    #[test]
    fn firecracker_json_shapes() {
        let cfg: VmConfig = serde_json::from_str(
            r#"{"boot-source": {"kernel_image_path": "/k", "boot_args": "console=ttyS0"},
                "machine-config": {"vcpu_count": 2, "mem_size_mib": 256, "smt": false}}"#,
        )
        .unwrap();
        assert_eq!(cfg.machine_config.vcpu_count, 2);
        assert_eq!(cfg.boot_source.unwrap().boot_args(), "console=ttyS0");
        let err = serde_json::from_str::<VmConfig>(r#"{"mmds": {}}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `mmds`"), "{err}");
        let cfg: VmConfig = serde_json::from_str(
            r#"{"mmds-config": {"network_interfaces": ["eth0"], "version": "V2"}}"#,
        )
        .unwrap();
        assert_eq!(cfg.mmds_config.unwrap().version, MmdsVersion::V2);
        let cfg: VmConfig = serde_json::from_str(
            r#"{"balloon": {"amount_mib": 8, "deflate_on_oom": true, "stats_polling_interval_s": 1}}"#,
        )
        .unwrap();
        assert_eq!(cfg.balloon.unwrap().amount_mib, 8);
        let cfg: VmConfig = serde_json::from_str(
            r#"{"pmem": [{"id": "p", "path_on_host": "/f", "root_device": true}],
                "memory-hotplug": {"total_size_mib": 256}}"#,
        )
        .unwrap();
        assert!(cfg.root_pmem().is_some());
        assert_eq!(cfg.hotplug_mib(), 256);
        let shown = shown_full_config(serde_json::to_value(&cfg).unwrap());
        assert_eq!(shown["pmem"][0]["read_only"], false);
        assert_eq!(
            shown["memory-hotplug"],
            serde_json::json!({"total_size_mib": 256, "block_size_mib": 2, "slot_size_mib": 128})
        );
        let err = serde_json::from_str::<MachineConfig>(r#"{"vcpu_count": 1}"#).unwrap_err();
        assert!(err.to_string().contains("mem_size_mib"), "{err}");
    }
}
