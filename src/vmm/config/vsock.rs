//! `PUT /vsock`: a virtio-vsock device, Firecracker's hybrid vsock over
//! Unix sockets at `uds_path` (host-initiated) and `<uds_path>_<port>`
//! (guest-initiated).

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::ConfigError;
use crate::vmm::devices::virtio::vsock::unix::check_path;

/// The lowest CID a guest may have (0, 1 and 2 are the hypervisor, the
/// local loopback and the host).
pub const MIN_GUEST_CID: u32 = 3;

/// `PUT /vsock`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    pub guest_cid: u32,
    pub uds_path: String,
    /// Deprecated by Firecracker; accepted and kept, never used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_id: Option<String>,
}

impl VsockConfig {
    /// The CID is a guest's, and `uds_path` can be bound: free, or a
    /// stale socket nobody accepts on (replaced at start). The socket
    /// itself is bound at InstanceStart.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Vsock(m));
        if self.guest_cid < MIN_GUEST_CID {
            return invalid(format!(
                "guest_cid must be at least {MIN_GUEST_CID}, not {}",
                self.guest_cid
            ));
        }
        if self.guest_cid == u32::MAX {
            return invalid("guest_cid 4294967295 is VMADDR_CID_ANY".into());
        }
        if self.uds_path.is_empty() {
            return invalid("uds_path is empty".into());
        }
        check_path(Path::new(&self.uds_path))
            .map(|_| ())
            .map_err(|e| ConfigError::Vsock(format!("uds_path {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vsock(cid: u32, path: &str) -> VsockConfig {
        VsockConfig {
            guest_cid: cid,
            uds_path: path.into(),
            vsock_id: None,
        }
    }

    #[test]
    fn firecracker_fields_and_the_deprecated_id() {
        let v: VsockConfig = serde_json::from_str(
            r#"{"guest_cid": 3, "uds_path": "/tmp/v.sock", "vsock_id": "vsock0"}"#,
        )
        .unwrap();
        assert_eq!(v.vsock_id.as_deref(), Some("vsock0"));
        let v: VsockConfig =
            serde_json::from_str(r#"{"guest_cid": 3, "uds_path": "/tmp/v.sock"}"#).unwrap();
        assert_eq!(
            serde_json::to_value(&v).unwrap(),
            serde_json::json!({"guest_cid": 3, "uds_path": "/tmp/v.sock"})
        );
        for bad in [
            r#"{"uds_path": "/tmp/v.sock"}"#,
            r#"{"guest_cid": -3, "uds_path": "/tmp/v.sock"}"#,
            r#"{"guest_cid": 3, "uds_path": "/tmp/v.sock", "cid": 4}"#,
        ] {
            assert!(serde_json::from_str::<VsockConfig>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_cids_and_paths_are_refused() {
        let dir = std::env::temp_dir().join(format!("husk-vsock-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let free = dir.join("free.sock");
        let free = free.to_str().unwrap();
        for cid in [0, 1, 2] {
            let e = vsock(cid, free).validate().unwrap_err().to_string();
            assert!(e.contains("guest_cid must be at least 3"), "{e}");
        }
        assert!(vsock(u32::MAX, free).validate().is_err());
        vsock(3, free).validate().unwrap();
        let live = dir.join("live.sock");
        let _l = std::os::unix::net::UnixListener::bind(&live).unwrap();
        let e = vsock(3, live.to_str().unwrap()).validate().unwrap_err();
        assert!(e.to_string().contains("in use"), "{e}");
        let e = vsock(3, "").validate().unwrap_err();
        assert!(e.to_string().contains("empty"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
