//! Named and anonymous volumes: each an ext4 disk in
//! `<state>/volumes/<name>/disk.ext4` with its record beside it
//! (`volume.json`), attached to a container's VM as an extra virtio-blk
//! disk and mounted by the agent.
//!
//! A volume outlives its containers. A block device cannot be shared
//! safely (two kernels caching one ext4 filesystem corrupt it), so the
//! manager keeps claims: a volume is mounted read-write by one running
//! VM at a time, or read-only by any number, never both.

mod disk;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::client::types::{VolumeCreateRequest, VolumeView};
use crate::text::echo;

pub use disk::{MAX_SIZE, MIN_SIZE};

/// A volume's size when none is asked for: the file is sparse, so this
/// is a limit, not space taken.
pub const DEFAULT_SIZE: u64 = 10 << 30;

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("no such volume: {0}")]
    NotFound(String),
    #[error("a volume named {0} already exists")]
    Exists(String),
    #[error(
        "invalid volume name {0:?}: 2 to 128 letters, digits, '_', '.' or '-', starting with a \
         letter or digit"
    )]
    Name(String),
    #[error("invalid volume size {0}: {MIN_SIZE} bytes (16 MiB) to {MAX_SIZE} bytes (16 TiB)")]
    Size(u64),
    #[error("volume {name} is {size} bytes; a volume can only grow")]
    Shrink { name: String, size: u64 },
    #[error("volume {name} is in use by container {}: remove the container first", .containers.join(", "))]
    InUse {
        name: String,
        containers: Vec<String>,
    },
    #[error(
        "volume {name} is mounted {how} by {holder}; a volume is a block device, so only one \
         running container may mount it read-write at a time (any number may mount it \
         read-only, with :ro, when none writes to it)"
    )]
    Busy {
        name: String,
        how: &'static str,
        holder: String,
    },
    #[error("{prog} failed: {detail}")]
    Tool { prog: &'static str, detail: String },
    #[error("{path}: {err}")]
    Io { path: String, err: std::io::Error },
}

/// A volume, as kept on disk.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VolumeRecord {
    pub name: String,
    pub size: u64,
    pub created_ms: u64,
    #[serde(default)]
    pub anonymous: bool,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// Whether `n` may name a volume (Docker's rule).
pub fn valid_name(n: &str) -> bool {
    let mut chars = n.chars();
    n.len() >= 2
        && n.len() <= 128
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// Who holds a volume, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Claim {
    holder: String,
    writable: bool,
}

pub struct VolumeManager {
    root: PathBuf,
    /// Creation and removal, one at a time.
    ops: Mutex<()>,
    claims: Mutex<BTreeMap<String, Vec<Claim>>>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> VolumeError + '_ {
    move |err| VolumeError::Io {
        path: path.display().to_string(),
        err,
    }
}

impl VolumeManager {
    pub fn open(state_dir: &Path) -> Result<VolumeManager, VolumeError> {
        let root = state_dir.join("volumes");
        std::fs::create_dir_all(&root).map_err(io(&root))?;
        Ok(VolumeManager {
            root,
            ops: Mutex::new(()),
            claims: Mutex::new(BTreeMap::new()),
        })
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// The volume's disk image.
    pub fn disk(&self, name: &str) -> PathBuf {
        self.dir(name).join("disk.ext4")
    }

    fn record_path(&self, name: &str) -> PathBuf {
        self.dir(name).join("volume.json")
    }

    /// Makes a volume (blocking: mkfs runs). `anonymous` volumes get a
    /// random name when the request has none.
    pub fn create(
        &self,
        req: &VolumeCreateRequest,
        anonymous: bool,
    ) -> Result<VolumeRecord, VolumeError> {
        let name = match &req.name {
            Some(n) => n.clone(),
            None => crate::daemon::network::record::random_hex(),
        };
        if !valid_name(&name) {
            return Err(VolumeError::Name(echo(&name).into_owned()));
        }
        let size = req.size.unwrap_or(DEFAULT_SIZE);
        if !(MIN_SIZE..=MAX_SIZE).contains(&size) {
            return Err(VolumeError::Size(size));
        }
        let _turn = self.ops.lock().unwrap_or_else(|e| e.into_inner());
        let dir = self.dir(&name);
        if self.record_path(&name).exists() {
            return Err(VolumeError::Exists(name));
        }
        // A directory without a record is a creation that died midway.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let record = VolumeRecord {
            name: name.clone(),
            size,
            created_ms: super::state::now_ms(),
            anonymous: anonymous && req.name.is_none(),
            labels: req.labels.clone(),
        };
        let made = disk::make(&self.disk(&name), size).and_then(|()| self.save(&record));
        if let Err(e) = made {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        tracing::info!(volume = %name, size, "volume created");
        Ok(record)
    }

    fn save(&self, r: &VolumeRecord) -> Result<(), VolumeError> {
        let path = self.record_path(&r.name);
        let json = serde_json::to_vec_pretty(r).expect("a volume record serializes");
        crate::daemon::network::record::write_atomic(&path, &json).map_err(io(&path))
    }

    pub fn get(&self, name: &str) -> Result<VolumeRecord, VolumeError> {
        let missing = || VolumeError::NotFound(echo(name).into_owned());
        if !valid_name(name) {
            return Err(missing());
        }
        let text = std::fs::read(self.record_path(name)).map_err(|_| missing())?;
        serde_json::from_slice(&text).map_err(|_| missing())
    }

    pub fn list(&self) -> Vec<VolumeRecord> {
        let Ok(dir) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut v: Vec<VolumeRecord> = dir
            .flatten()
            .filter_map(|e| self.get(e.file_name().to_str()?).ok())
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// The API's view; `containers` are the ones whose config names it.
    pub fn view(&self, r: &VolumeRecord, containers: Vec<String>) -> VolumeView {
        let disk = self.disk(&r.name);
        VolumeView {
            name: r.name.clone(),
            driver: "local".into(),
            used: disk::used(&disk),
            disk: disk.display().to_string(),
            size: r.size,
            created_ms: r.created_ms,
            anonymous: r.anonymous,
            labels: r.labels.clone(),
            containers,
        }
    }

    /// Removes a volume no container uses (`users`: the containers whose
    /// config names it) and no VM holds.
    pub fn remove(&self, name: &str, users: Vec<String>) -> Result<(), VolumeError> {
        let _turn = self.ops.lock().unwrap_or_else(|e| e.into_inner());
        self.get(name)?;
        if !users.is_empty() {
            return Err(VolumeError::InUse {
                name: name.into(),
                containers: users,
            });
        }
        if let Some(c) = self.holders(name).first() {
            return Err(VolumeError::Busy {
                name: name.into(),
                how: if c.writable {
                    "read-write"
                } else {
                    "read-only"
                },
                holder: c.holder.clone(),
            });
        }
        // The record goes first: a crash midway leaves a directory that
        // the next create of the name clears.
        let _ = std::fs::remove_file(self.record_path(name));
        std::fs::remove_dir_all(self.dir(name)).map_err(io(&self.dir(name)))?;
        tracing::info!(volume = %name, "volume removed");
        Ok(())
    }

    /// Grows a volume that no VM holds.
    pub fn resize(&self, name: &str, size: u64) -> Result<VolumeRecord, VolumeError> {
        let mut r = self.get(name)?;
        if !(MIN_SIZE..=MAX_SIZE).contains(&size) {
            return Err(VolumeError::Size(size));
        }
        if size < r.size {
            return Err(VolumeError::Shrink {
                name: name.into(),
                size: r.size,
            });
        }
        if size == r.size {
            return Ok(r);
        }
        let holder = format!("a resize of volume {name}");
        self.claim(&holder, &[(name.to_string(), true)])?;
        let grown = disk::grow(&self.disk(name), size).and_then(|()| {
            r.size = size;
            self.save(&r)
        });
        self.release(&holder);
        grown.map(|()| r)
    }

    fn holders(&self, name: &str) -> Vec<Claim> {
        let claims = self.claims.lock().unwrap_or_else(|e| e.into_inner());
        claims.get(name).cloned().unwrap_or_default()
    }

    /// Takes the volumes `wants` (name, read-write?) for `holder`, all or
    /// none: a read-write claim needs the volume free, a read-only one
    /// needs no writer.
    pub fn claim(&self, holder: &str, wants: &[(String, bool)]) -> Result<(), VolumeError> {
        let mut claims = self.claims.lock().unwrap_or_else(|e| e.into_inner());
        for (name, writable) in wants {
            let held = claims.get(name).map(Vec::as_slice).unwrap_or_default();
            let clash = held
                .iter()
                .find(|c| c.holder != holder && (*writable || c.writable));
            if let Some(c) = clash {
                return Err(VolumeError::Busy {
                    name: name.clone(),
                    how: if c.writable {
                        "read-write"
                    } else {
                        "read-only"
                    },
                    holder: c.holder.clone(),
                });
            }
        }
        for (name, writable) in wants {
            claims.entry(name.clone()).or_default().push(Claim {
                holder: holder.to_string(),
                writable: *writable,
            });
        }
        Ok(())
    }

    /// Gives back everything `holder` claimed.
    pub fn release(&self, holder: &str) {
        let mut claims = self.claims.lock().unwrap_or_else(|e| e.into_inner());
        for held in claims.values_mut() {
            held.retain(|c| c.holder != holder);
        }
        claims.retain(|_, held| !held.is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manager(tag: &str) -> (VolumeManager, PathBuf) {
        let dir = std::env::temp_dir().join(format!("husk-vol-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        (VolumeManager::open(&dir).unwrap(), dir)
    }

    #[test]
    fn one_writer_or_many_readers() {
        let (m, dir) = manager("claims");
        let v = |n: &str, w| (n.to_string(), w);
        m.claim("c1 (running)", &[v("data", true)]).unwrap();
        let e = m.claim("c2", &[v("data", false)]).unwrap_err();
        assert!(e.to_string().contains("read-write by c1"), "{e}");
        assert!(e.to_string().contains("only one running container"), "{e}");
        // All or nothing: "logs" was not taken by the refused claim.
        assert!(m.claim("c2", &[v("logs", true), v("data", true)]).is_err());
        m.claim("c3", &[v("logs", true)]).unwrap();
        m.release("c1 (running)");
        m.release("c3");
        m.claim("c2", &[v("data", false)]).unwrap();
        m.claim("c4", &[v("data", false)]).unwrap();
        assert!(m.claim("c5", &[v("data", true)]).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn names_follow_docker() {
        for ok in ["data", "my_vol.1", "a-b", &"f".repeat(64)] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "a", "-x", "../x", "a/b", "a b", &"f".repeat(129)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn volumes_are_made_grown_and_removed() {
        let (m, dir) = manager("disk");
        let req = VolumeCreateRequest {
            name: Some("data".into()),
            size: Some(32 << 20),
            ..Default::default()
        };
        let r = m.create(&req, false).unwrap();
        assert_eq!((r.size, r.anonymous), (32 << 20, false));
        assert!(matches!(m.create(&req, false), Err(VolumeError::Exists(_))));
        // A real ext4 filesystem, empty: no lost+found.
        let out = Command::new("debugfs")
            .args(["-R", "ls -l /"])
            .arg(m.disk("data"))
            .output()
            .unwrap();
        let ls = String::from_utf8_lossy(&out.stdout);
        assert!(ls.contains(" .") && !ls.contains("lost+found"), "{ls}");
        assert_eq!(std::fs::metadata(m.disk("data")).unwrap().len(), 32 << 20);
        assert!(disk::used(&m.disk("data")) < 16 << 20, "the disk is sparse");
        assert!(matches!(
            m.resize("data", 16 << 20),
            Err(VolumeError::Shrink { .. })
        ));
        m.claim("c1", &[("data".into(), false)]).unwrap();
        assert!(matches!(
            m.resize("data", 64 << 20),
            Err(VolumeError::Busy { .. })
        ));
        assert!(matches!(
            m.remove("data", vec![]),
            Err(VolumeError::Busy { .. })
        ));
        m.release("c1");
        assert_eq!(m.resize("data", 64 << 20).unwrap().size, 64 << 20);
        let e = m.remove("data", vec!["abc".into()]).unwrap_err();
        assert!(e.to_string().contains("in use by container abc"), "{e}");
        let anon = m.create(&VolumeCreateRequest::default(), true).unwrap();
        assert!(anon.anonymous && anon.name.len() == 64);
        assert_eq!(m.list().len(), 2);
        m.remove("data", vec![]).unwrap();
        assert!(matches!(m.get("data"), Err(VolumeError::NotFound(_))));
        assert!(!m.disk("data").exists());
        std::fs::remove_dir_all(dir).unwrap();
    }

    use std::process::Command;
}
