//! `PUT`/`PATCH /pmem/{id}`: virtio-pmem devices, in Firecracker's
//! shapes (its `Pmem` and `PartialPmem` schemas).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::vmm::devices::rate_limiter::RateLimiterConfig;
use crate::vmm::devices::virtio::pmem::open_backing;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PmemConfigError {
    #[error("invalid pmem id {0:?}: 1 to 64 letters, digits, '-' or '_'")]
    Id(String),
    #[error("the id in the body ({body}) differs from the one in the path ({path})")]
    IdMismatch { body: String, path: String },
    #[error("invalid pmem device: {0}")]
    Backing(String),
    #[error("a root device is configured already ({0}): only one drive or pmem device can be the root device")]
    SecondRoot(String),
    #[error("pmem id {0:?} is given twice")]
    Duplicate(String),
    #[error("no pmem device {0:?} is configured")]
    NoSuch(String),
    #[error("invalid rate_limiter: {0}")]
    RateLimiter(String),
}

/// `PUT /pmem/{id}`: a host file the guest sees as persistent memory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PmemConfig {
    pub id: String,
    /// The backing file, mapped into the guest's physical memory.
    pub path_on_host: String,
    /// Boot from it: `root=/dev/pmem0` (it is attached first).
    #[serde(default)]
    pub root_device: bool,
    /// Map the file read-only: the guest's writes are dropped.
    #[serde(default)]
    pub read_only: bool,
    /// Limits FLUSH requests: one op and the file's size in bytes each.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiterConfig>,
}

/// `PATCH /pmem/{id}`: a new rate limiter.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PmemUpdate {
    pub id: String,
    pub rate_limiter: Option<RateLimiterConfig>,
}

impl PmemConfig {
    /// A plain id, a valid rate limiter, and a backing file that opens
    /// (read-write unless read-only), is a regular file and is not empty.
    pub fn validate(&self) -> Result<(), PmemConfigError> {
        check_id(&self.id)?;
        if let Some(r) = &self.rate_limiter {
            r.validate()
                .map_err(|e| PmemConfigError::RateLimiter(e.to_string()))?;
        }
        open_backing(Path::new(&self.path_on_host), self.read_only)
            .map(|_| ())
            .map_err(|e| PmemConfigError::Backing(e.to_string()))
    }

    /// The kernel arguments naming this device as the root file system,
    /// as Firecracker gives them.
    pub fn root_args(&self) -> String {
        let mode = if self.read_only { "ro" } else { "rw" };
        format!("root=/dev/pmem0 {mode}")
    }
}

fn check_id(id: &str) -> Result<(), PmemConfigError> {
    if super::is_plain_id(id) {
        Ok(())
    } else {
        Err(PmemConfigError::Id(crate::text::echo(id).into_owned()))
    }
}

/// The id in a body must be the one in the path.
pub fn check_pmem_id(body: &str, path: &str) -> Result<(), PmemConfigError> {
    if body == path {
        return Ok(());
    }
    Err(PmemConfigError::IdMismatch {
        body: crate::text::echo(body).into_owned(),
        path: crate::text::echo(path).into_owned(),
    })
}

/// Adds or replaces `p` in `list`. One root device at most, whether a
/// drive (`drive_root` names one) or a pmem device; the root pmem device
/// is listed first, so it probes as /dev/pmem0.
pub fn insert_pmem(
    list: &mut Vec<PmemConfig>,
    p: PmemConfig,
    drive_root: Option<&str>,
) -> Result<(), PmemConfigError> {
    if p.root_device {
        if let Some(d) = drive_root {
            return Err(PmemConfigError::SecondRoot(format!(
                "drive {:?}",
                crate::text::echo(d)
            )));
        }
        if let Some(o) = list.iter().find(|o| o.root_device && o.id != p.id) {
            return Err(PmemConfigError::SecondRoot(format!(
                "pmem {:?}",
                crate::text::echo(&o.id)
            )));
        }
    }
    match list.iter().position(|o| o.id == p.id) {
        Some(i) => list[i] = p,
        None => list.push(p),
    }
    list.sort_by_key(|p| !p.root_device);
    Ok(())
}

/// A configuration file's list: no id twice.
pub fn check_unique_pmem_ids(list: &[PmemConfig]) -> Result<(), PmemConfigError> {
    for (i, p) in list.iter().enumerate() {
        if list[..i].iter().any(|o| o.id == p.id) {
            return Err(PmemConfigError::Duplicate(
                crate::text::echo(&p.id).into_owned(),
            ));
        }
    }
    Ok(())
}

/// The index of device `id` in `list`, after checking `u` can apply.
pub fn check_pmem_update(
    list: &[PmemConfig],
    path_id: &str,
    u: &PmemUpdate,
) -> Result<usize, PmemConfigError> {
    check_pmem_id(&u.id, path_id)?;
    let i = list
        .iter()
        .position(|p| p.id == path_id)
        .ok_or_else(|| PmemConfigError::NoSuch(crate::text::echo(path_id).into_owned()))?;
    if let Some(r) = &u.rate_limiter {
        r.validate()
            .map_err(|e| PmemConfigError::RateLimiter(e.to_string()))?;
    }
    Ok(i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pmem(id: &str, root: bool) -> PmemConfig {
        PmemConfig {
            id: id.into(),
            path_on_host: "/nonexistent".into(),
            root_device: root,
            read_only: false,
            rate_limiter: None,
        }
    }

    #[test]
    fn firecracker_shape_with_defaults() {
        let p: PmemConfig =
            serde_json::from_str(r#"{"id": "p0", "path_on_host": "/img"}"#).unwrap();
        assert!(!p.root_device && !p.read_only && p.rate_limiter.is_none());
        assert_eq!(
            serde_json::to_value(&p).unwrap(),
            serde_json::json!({"id": "p0", "path_on_host": "/img", "root_device": false, "read_only": false})
        );
        let e = serde_json::from_str::<PmemConfig>(r#"{"id": "p0"}"#).unwrap_err();
        assert!(e.to_string().contains("path_on_host"), "{e}");
        let e = serde_json::from_str::<PmemUpdate>(r#"{"id": "p0", "path_on_host": "/x"}"#)
            .unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
    }

    #[test]
    fn one_root_device_listed_first() {
        let mut v = vec![];
        insert_pmem(&mut v, pmem("data", false), None).unwrap();
        insert_pmem(&mut v, pmem("root", true), None).unwrap();
        assert_eq!(v[0].id, "root");
        assert!(matches!(
            insert_pmem(&mut v, pmem("other", true), None),
            Err(PmemConfigError::SecondRoot(_))
        ));
        // Replacing the root with itself is fine.
        insert_pmem(&mut v, pmem("root", true), None).unwrap();
        assert_eq!(v.len(), 2);
        let mut w = vec![];
        let e = insert_pmem(&mut w, pmem("r", true), Some("rootfs")).unwrap_err();
        assert!(e.to_string().contains("drive \"rootfs\""), "{e}");
        assert_eq!(pmem("r", true).root_args(), "root=/dev/pmem0 rw");
    }

    #[test]
    fn bad_devices_are_refused() {
        let mut p = pmem("../x", false);
        assert!(matches!(p.validate(), Err(PmemConfigError::Id(_))));
        p.id = "ok".into();
        let e = p.validate().unwrap_err().to_string();
        assert!(e.contains("/nonexistent"), "{e}");
        p.path_on_host = "/dev/null".into();
        let e = p.validate().unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        let empty = std::env::temp_dir().join(format!("husk-pmem-cfg-{}", std::process::id()));
        std::fs::write(&empty, b"").unwrap();
        p.path_on_host = empty.to_str().unwrap().into();
        let e = p.validate().unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
        std::fs::remove_file(empty).unwrap();
        assert!(matches!(
            check_unique_pmem_ids(&[pmem("a", false), pmem("a", false)]),
            Err(PmemConfigError::Duplicate(_))
        ));
        let u = PmemUpdate {
            id: "b".into(),
            rate_limiter: None,
        };
        assert!(matches!(
            check_pmem_update(&[pmem("a", false)], "a", &u),
            Err(PmemConfigError::IdMismatch { .. })
        ));
        assert!(matches!(
            check_pmem_update(&[pmem("a", false)], "b", &u),
            Err(PmemConfigError::NoSuch(_))
        ));
    }
}
