//! `PUT`/`PATCH /drives/{drive_id}`: virtio-blk drives.

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

/// `PUT /drives/{drive_id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriveConfig {
    pub drive_id: String,
    pub path_on_host: String,
    pub is_root_device: bool,
    #[serde(default)]
    pub is_read_only: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partuuid: Option<String>,
    #[serde(default)]
    pub cache_type: CacheType,
    /// Only "Sync" (requests are served on the VMM thread).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_engine: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiterConfig>,
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
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_id(&self.drive_id)?;
        if let Some(engine) = self.io_engine.as_deref() {
            if engine != "Sync" {
                return Err(ConfigError::IoEngine(
                    crate::text::echo(engine).into_owned(),
                ));
            }
        }
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
        check_backing(&self.path_on_host, self.is_read_only)
    }

    /// The kernel arguments naming this drive as the root file system.
    /// It is attached first, so it is /dev/vda.
    pub fn root_args(&self) -> String {
        let root = match &self.partuuid {
            Some(u) => format!("root=PARTUUID={u}"),
            None => "root=/dev/vda".to_string(),
        };
        let mode = if self.is_read_only { "ro" } else { "rw" };
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
            path_on_host: "/dev/null".into(),
            is_root_device: root,
            is_read_only: false,
            partuuid: None,
            cache_type: CacheType::Unsafe,
            io_engine: None,
            rate_limiter: None,
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
        assert_eq!(d.root_args(), "root=/dev/vda rw");
        d.is_read_only = true;
        d.partuuid = Some("0eaa91a0-01".into());
        assert_eq!(d.root_args(), "root=PARTUUID=0eaa91a0-01 ro");
    }

    #[test]
    fn bad_drives_are_refused() {
        assert!(matches!(check_id("../x"), Err(ConfigError::DriveId(_))));
        let mut d = drive("a", false);
        d.io_engine = Some("Async".into());
        assert!(matches!(d.validate(), Err(ConfigError::IoEngine(_))));
        let mut d = drive("a", false);
        d.path_on_host = "/nonexistent".into();
        assert!(matches!(d.validate(), Err(ConfigError::Drive(_))));
        let mut d = drive("a", false);
        d.path_on_host = "/".into();
        let e = d.validate().unwrap_err().to_string();
        assert!(
            e.contains("cannot open") || e.contains("not a regular file"),
            "{e}"
        );
    }
}
