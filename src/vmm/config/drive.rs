//! `PUT`/`PATCH /drives/{drive_id}`: virtio-blk drives, in Firecracker's
//! two kinds: a file or block device husk serves (`path_on_host`, with
//! `is_read_only`, `io_engine` and `rate_limiter`), or a vhost-user-blk
//! backend listening on `socket`, which serves the requests itself and
//! takes none of those.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::ConfigError;
use crate::vmm::devices::rate_limiter::RateLimiterConfig;
use crate::vmm::devices::virtio::block::open_disk;

/// How writes reach the backing file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CacheType {
    /// FLUSH is acknowledged without syncing (fast; a host crash can lose
    /// writes the guest believes durable).
    #[default]
    Unsafe,
    /// FLUSH syncs the backing file (`fdatasync`).
    Writeback,
}

/// How husk carries out a file-backed drive's requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum IoEngine {
    /// On the VMM thread, one system call at a time.
    #[default]
    Sync,
    /// Through io_uring: requests are submitted as they come, and the
    /// used ring is updated as their completions arrive.
    Async,
}

/// `PUT /drives/{drive_id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriveConfig {
    pub drive_id: String,
    /// The backing file or block device (not with `socket`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_on_host: Option<String>,
    pub is_root_device: bool,
    /// Not with `socket`: a vhost-user backend says itself whether the
    /// drive is read-only. False when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_read_only: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partuuid: Option<String>,
    #[serde(default)]
    pub cache_type: CacheType,
    /// Not with `socket`. Sync when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_engine: Option<IoEngine>,
    /// Not with `socket`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiterConfig>,
    /// A vhost-user-blk backend's Unix socket (not with `path_on_host`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
}

/// `PATCH /drives/{drive_id}`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriveUpdate {
    pub drive_id: String,
    pub path_on_host: Option<String>,
    pub rate_limiter: Option<RateLimiterConfig>,
}

/// Drive ids go into paths, logs and the guest's GET_ID answer.
pub fn check_id(id: &str) -> Result<(), ConfigError> {
    if super::is_plain_id(id) {
        Ok(())
    } else {
        Err(ConfigError::DriveId(crate::text::echo(id).into_owned()))
    }
}

/// The backing file can be opened (read-write unless read-only) and is
/// a regular file or a block device.
pub fn check_backing(path: &str, read_only: bool) -> Result<(), ConfigError> {
    open_disk(Path::new(path), read_only)
        .map(|_| ())
        .map_err(|e| ConfigError::Drive(e.to_string()))
}

impl DriveConfig {
    /// Whether the guest may write: false for a vhost-user drive, whose
    /// backend decides (VIRTIO_BLK_F_RO).
    pub fn read_only(&self) -> bool {
        self.is_read_only.unwrap_or(false)
    }

    /// The I/O engine of a file-backed drive.
    pub fn engine(&self) -> IoEngine {
        self.io_engine.unwrap_or_default()
    }

    /// The backend's socket, for a vhost-user drive.
    pub fn vhost_user_socket(&self) -> Option<&str> {
        self.socket.as_deref()
    }

    /// Fills in what a file-backed drive left out (`is_read_only`), as
    /// GET /vm/config then shows it, Firecracker's way.
    pub fn normalized(mut self) -> Self {
        if self.socket.is_none() && self.is_read_only.is_none() {
            self.is_read_only = Some(false);
        }
        self
    }

    /// Firecracker's rules for the two kinds: `socket` and
    /// `path_on_host` exclude each other, one of them is required, and a
    /// vhost-user drive takes none of the fields of a file-backed one.
    fn check_kind(&self) -> Result<(), ConfigError> {
        let Some(socket) = &self.socket else {
            return match self.path_on_host {
                Some(_) => Ok(()),
                None => Err(ConfigError::Drive(
                    "give path_on_host (a file-backed drive) or socket (vhost-user-blk)".into(),
                )),
            };
        };
        let given: Vec<&str> = [
            ("path_on_host", self.path_on_host.is_some()),
            ("is_read_only", self.is_read_only.is_some()),
            ("io_engine", self.io_engine.is_some()),
            ("rate_limiter", self.rate_limiter.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect();
        if !given.is_empty() {
            return Err(ConfigError::Drive(format!(
                "a vhost-user drive (socket) cannot have {}: its backend serves the drive",
                given.join(", ")
            )));
        }
        if socket.is_empty() {
            return Err(ConfigError::Drive("socket must not be empty".into()));
        }
        Ok(())
    }

    /// Checks the fields; a file-backed drive's file must open. A
    /// vhost-user drive's socket is only connected to at InstanceStart.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_id(&self.drive_id)?;
        self.check_kind()?;
        if let Some(p) = &self.partuuid {
            let ok = !p.is_empty() && p.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
            if !ok || p.len() > 36 {
                return Err(ConfigError::PartUuid(crate::text::echo(p).into_owned()));
            }
        }
        if let Some(r) = &self.rate_limiter {
            r.validate()
                .map_err(|e| ConfigError::RateLimiter(e.to_string()))?;
        }
        match &self.path_on_host {
            Some(path) => check_backing(path, self.read_only()),
            None => Ok(()),
        }
    }

    /// The kernel arguments naming this drive as the root file system,
    /// mounted read-only when `read_only` (the configured flag, or what a
    /// vhost-user backend offered). It is attached first, so it is
    /// /dev/vda.
    pub fn root_args(&self, read_only: bool) -> String {
        let root = match &self.partuuid {
            Some(u) => format!("root=PARTUUID={u}"),
            None => "root=/dev/vda".to_string(),
        };
        let mode = if read_only { "ro" } else { "rw" };
        format!("{root} {mode}")
    }
}

/// Adds or replaces `d` in `drives`: one root device at most, listed
/// first (so it is /dev/vda), the others in the order they came.
pub fn insert_drive(drives: &mut Vec<DriveConfig>, d: DriveConfig) -> Result<(), ConfigError> {
    if d.is_root_device
        && drives
            .iter()
            .any(|o| o.is_root_device && o.drive_id != d.drive_id)
    {
        return Err(ConfigError::SecondRoot);
    }
    let d = d.normalized();
    match drives.iter().position(|o| o.drive_id == d.drive_id) {
        Some(i) => drives[i] = d,
        None => drives.push(d),
    }
    drives.sort_by_key(|d| !d.is_root_device);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drive(id: &str, root: bool) -> DriveConfig {
        DriveConfig {
            drive_id: id.into(),
            path_on_host: Some("/dev/null".into()),
            is_root_device: root,
            is_read_only: None,
            partuuid: None,
            cache_type: CacheType::Unsafe,
            io_engine: None,
            rate_limiter: None,
            socket: None,
        }
    }

    #[test]
    fn the_root_drive_comes_first_and_is_unique() {
        let mut v = vec![];
        insert_drive(&mut v, drive("data", false)).unwrap();
        insert_drive(&mut v, drive("root", true)).unwrap();
        assert_eq!(v[0].drive_id, "root");
        assert_eq!(
            insert_drive(&mut v, drive("other", true)),
            Err(ConfigError::SecondRoot)
        );
        // Replacing keeps one entry per id.
        insert_drive(&mut v, drive("data", false)).unwrap();
        assert_eq!(v.len(), 2);
    }

    #[test]
    fn root_arguments() {
        let mut d = drive("r", true);
        assert_eq!(d.root_args(false), "root=/dev/vda rw");
        d.partuuid = Some("0eaa91a0-01".into());
        assert_eq!(d.root_args(true), "root=PARTUUID=0eaa91a0-01 ro");
    }

    #[test]
    fn bad_drives_are_refused() {
        assert!(matches!(check_id("../x"), Err(ConfigError::DriveId(_))));
        let mut d = drive("a", false);
        d.path_on_host = Some("/nonexistent".into());
        assert!(matches!(d.validate(), Err(ConfigError::Drive(_))));
        let mut d = drive("a", false);
        d.path_on_host = Some("/".into());
        let e = d.validate().unwrap_err().to_string();
        assert!(
            e.contains("cannot open") || e.contains("not a regular file"),
            "{e}"
        );
    }

    #[test]
    fn engines_parse_as_firecracker_names_them() {
        let d: DriveConfig = serde_json::from_str(
            r#"{"drive_id": "a", "path_on_host": "/dev/null", "is_root_device": false,
                "io_engine": "Async"}"#,
        )
        .unwrap();
        assert_eq!(d.engine(), IoEngine::Async);
        assert_eq!(drive("a", false).engine(), IoEngine::Sync);
        let e = serde_json::from_str::<DriveConfig>(
            r#"{"drive_id": "a", "path_on_host": "/dev/null", "is_root_device": false,
                "io_engine": "Turbo"}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("Sync") && e.contains("Async"), "{e}");
    }

    #[test]
    fn a_vhost_user_drive_takes_a_socket_and_none_of_the_file_fields() {
        let mut d = drive("v", true);
        d.path_on_host = None;
        d.socket = Some("/run/blk.sock".into());
        d.validate().unwrap();
        assert_eq!(d.clone().normalized().is_read_only, None);
        for (field, set) in [
            (
                "path_on_host",
                (|d: &mut DriveConfig| d.path_on_host = Some("/dev/null".into()))
                    as fn(&mut DriveConfig),
            ),
            ("is_read_only", |d| d.is_read_only = Some(false)),
            ("io_engine", |d| d.io_engine = Some(IoEngine::Sync)),
            ("rate_limiter", |d| {
                d.rate_limiter = Some(Default::default())
            }),
        ] {
            let mut bad = d.clone();
            set(&mut bad);
            let e = bad.validate().unwrap_err().to_string();
            assert!(e.contains("vhost-user") && e.contains(field), "{e}");
        }
        let mut neither = d.clone();
        neither.socket = None;
        assert!(neither
            .validate()
            .unwrap_err()
            .to_string()
            .contains("socket"));
        let mut empty = d;
        empty.socket = Some(String::new());
        assert!(empty.validate().is_err());
        // A file-backed drive shows is_read_only once inserted.
        let mut v = vec![];
        insert_drive(&mut v, drive("f", false)).unwrap();
        assert_eq!(v[0].is_read_only, Some(false));
    }
}
