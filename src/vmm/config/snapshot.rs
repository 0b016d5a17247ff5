//! `PUT /snapshot/create` and `PUT /snapshot/load` bodies, in
//! Firecracker's shapes and field names.

use serde::{Deserialize, Serialize};

use super::ConfigError;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotType {
    /// All of guest memory.
    #[default]
    Full,
    /// Only the pages written since the last snapshot (needs
    /// `track_dirty_pages`).
    Diff,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCreateParams {
    #[serde(default)]
    pub snapshot_type: SnapshotType,
    pub snapshot_path: String,
    pub mem_file_path: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemBackendType {
    /// Map the memory file `MAP_PRIVATE`: pages load on first touch.
    File,
    /// Hand a userfaultfd to a page server listening at `backend_path`.
    Uffd,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemBackend {
    pub backend_type: MemBackendType,
    pub backend_path: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkOverride {
    pub iface_id: String,
    pub host_dev_name: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockOverride {
    pub uds_path: String,
    /// A new CID for the guest (husk's extension): how a clone learns it
    /// is a clone. The guest reads it again on the transport reset every
    /// restore sends.
    #[serde(default)]
    pub guest_cid: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotLoadParams {
    pub snapshot_path: String,
    /// Firecracker's older spelling of a `File` backend.
    #[serde(default)]
    pub mem_file_path: Option<String>,
    #[serde(default)]
    pub mem_backend: Option<MemBackend>,
    #[serde(default)]
    pub track_dirty_pages: bool,
    /// Firecracker's older name for `track_dirty_pages`.
    #[serde(default)]
    pub enable_diff_snapshots: bool,
    #[serde(default)]
    pub resume_vm: bool,
    #[serde(default)]
    pub network_overrides: Vec<NetworkOverride>,
    #[serde(default)]
    pub vsock_override: Option<VsockOverride>,
    /// Advance kvmclock by the wall-clock time since the snapshot was
    /// taken (KVM_SET_CLOCK with KVM_CLOCK_REALTIME); by default it goes
    /// on from where it stopped.
    #[serde(default)]
    pub clock_realtime: bool,
}

fn nonempty(field: &str, v: &str) -> Result<(), ConfigError> {
    if v.is_empty() {
        return Err(ConfigError::Snapshot(format!("{field} must not be empty")));
    }
    Ok(())
}

impl SnapshotCreateParams {
    pub fn validate(&self) -> Result<(), ConfigError> {
        nonempty("snapshot_path", &self.snapshot_path)?;
        nonempty("mem_file_path", &self.mem_file_path)?;
        if self.snapshot_path == self.mem_file_path {
            return Err(ConfigError::Snapshot(
                "snapshot_path and mem_file_path must be different files".into(),
            ));
        }
        Ok(())
    }
}

impl SnapshotLoadParams {
    /// The memory backend: `mem_backend`, or `mem_file_path` as a `File`
    /// backend; exactly one of them.
    pub fn backend(&self) -> Result<MemBackend, ConfigError> {
        nonempty("snapshot_path", &self.snapshot_path)?;
        let backend = match (&self.mem_backend, &self.mem_file_path) {
            (Some(b), None) => b.clone(),
            (None, Some(path)) => MemBackend {
                backend_type: MemBackendType::File,
                backend_path: path.clone(),
            },
            _ => {
                return Err(ConfigError::Snapshot(
                    "give exactly one of mem_backend and mem_file_path".into(),
                ))
            }
        };
        nonempty("backend_path", &backend.backend_path)?;
        Ok(backend)
    }

    pub fn tracks_dirty_pages(&self) -> bool {
        self.track_dirty_pages || self.enable_diff_snapshots
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firecracker_bodies_parse() {
        let c: SnapshotCreateParams = serde_json::from_str(
            r#"{"snapshot_type": "Diff", "snapshot_path": "s", "mem_file_path": "m"}"#,
        )
        .unwrap();
        assert_eq!(c.snapshot_type, SnapshotType::Diff);
        c.validate().unwrap();
        let l: SnapshotLoadParams = serde_json::from_str(
            r#"{"snapshot_path": "s", "mem_backend": {"backend_type": "Uffd", "backend_path": "u"},
                "track_dirty_pages": true, "resume_vm": true,
                "network_overrides": [{"iface_id": "eth0", "host_dev_name": "tap1"}],
                "vsock_override": {"uds_path": "v"}, "clock_realtime": true}"#,
        )
        .unwrap();
        assert_eq!(l.backend().unwrap().backend_type, MemBackendType::Uffd);
        assert!(l.clock_realtime);
        assert!(l.tracks_dirty_pages());
        let old: SnapshotLoadParams =
            serde_json::from_str(r#"{"snapshot_path": "s", "mem_file_path": "m"}"#).unwrap();
        assert_eq!(old.backend().unwrap().backend_path, "m");
        assert!(!old.clock_realtime);
    }

    #[test]
    fn ambiguous_or_empty_requests_are_refused() {
        let both: SnapshotLoadParams = serde_json::from_str(
            r#"{"snapshot_path": "s", "mem_file_path": "m",
                "mem_backend": {"backend_type": "File", "backend_path": "m"}}"#,
        )
        .unwrap();
        assert!(both.backend().is_err());
        let none: SnapshotLoadParams = serde_json::from_str(r#"{"snapshot_path": "s"}"#).unwrap();
        assert!(none.backend().is_err());
        let same = SnapshotCreateParams {
            snapshot_type: SnapshotType::Full,
            snapshot_path: "a".into(),
            mem_file_path: "a".into(),
        };
        assert!(same.validate().is_err());
        assert!(serde_json::from_str::<SnapshotCreateParams>(
            r#"{"snapshot_path": "s", "mem_file_path": "m", "extra": 1}"#
        )
        .is_err());
    }
}
