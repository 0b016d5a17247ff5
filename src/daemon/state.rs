//! The daemon's records on disk: one directory per container under
//! `<state>/containers/<id>/`, holding `record.json` (written atomically:
//! a temporary file, fsync, rename), the container's private root
//! filesystem, its VM's sockets and console, and its logs.
//!
//! A record is the truth about a container; the daemon holds them in
//! memory too, but after a `kill -9` and a restart it rebuilds everything
//! from these files.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::backend::{BackendKind, VmHandle};
use crate::agent::protocol::ImageConfig;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot write {path}: {err}")]
    Write { path: String, err: std::io::Error },
    #[error("cannot read {path}: {err}")]
    Read { path: String, err: std::io::Error },
}

/// What `POST /v1/containers` asks for (and `husk run` sends): one type
/// for the daemon, its records and the client.
pub use crate::client::types::CreateRequest;

/// Where a container is in its life (the API's type).
pub use crate::client::types::ContainerState;

/// One container, as kept on disk.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub name: String,
    /// The image's canonical reference.
    pub image: String,
    pub config: CreateRequest,
    /// What the image's config says to run (entrypoint, cmd, env, ...).
    pub image_config: ImageConfig,
    pub state: ContainerState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub created_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<BackendKind>,
    pub vcpus: u8,
    pub memory_mib: u32,
    /// The VM's processes and sockets, while it may run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<VmHandle>,
    /// The main process's id in the agent protocol, to attach again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<u32>,
    /// The main process's pid in the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_pid: Option<i32>,
    /// Its network attachment, while it may run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<super::network::Endpoint>,
}

/// A container as the API shows it (the client's type).
pub use crate::client::types::ContainerRecord as ContainerView;

impl ContainerRecord {
    /// The record as the API shows it.
    pub fn view(&self) -> ContainerView {
        ContainerView {
            id: self.id.clone(),
            name: self.name.clone(),
            image: self.image.clone(),
            config: self.config.clone(),
            state: self.state,
            created_ms: self.created_ms,
            vcpus: self.vcpus,
            memory_mib: self.memory_mib,
            pids: self
                .vm
                .as_ref()
                .map(|vm| vm.procs.iter().map(|p| p.pid).collect())
                .unwrap_or_default(),
            exit_code: self.exit_code,
            signal: self.signal,
            error: self.error.clone(),
            started_ms: self.started_ms,
            finished_ms: self.finished_ms,
            backend: self.backend.map(|b| match b {
                BackendKind::Kvm => crate::client::types::Backend::Kvm,
                BackendKind::Tcg => crate::client::types::Backend::Tcg,
            }),
            guest_pid: self.guest_pid,
            network: self.net.as_ref().map(|e| e.settings()),
        }
    }

    /// The record as the API shows it, as JSON.
    pub fn to_api(&self) -> serde_json::Value {
        serde_json::to_value(self.view()).expect("a container view serializes")
    }
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The containers' directories.
#[derive(Clone, Debug)]
pub struct Records {
    root: PathBuf,
}

fn write_err(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |err| StateError::Write {
        path: path.display().to_string(),
        err,
    }
}

impl Records {
    pub fn open(state_dir: &Path) -> Result<Records, StateError> {
        let root = state_dir.join("containers");
        std::fs::create_dir_all(&root).map_err(write_err(&root))?;
        Ok(Records { root })
    }

    pub fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// Writes `r` so that a crash leaves either the old record or the new
    /// one, never a mix.
    pub fn save(&self, r: &ContainerRecord) -> Result<(), StateError> {
        let dir = self.dir(&r.id);
        std::fs::create_dir_all(&dir).map_err(write_err(&dir))?;
        let path = dir.join("record.json");
        let tmp = dir.join(".record.json.tmp");
        let bytes = serde_json::to_vec_pretty(r).expect("records serialize");
        let mut f = std::fs::File::create(&tmp).map_err(write_err(&tmp))?;
        f.write_all(&bytes).map_err(write_err(&tmp))?;
        f.sync_all().map_err(write_err(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(write_err(&path))?;
        // The rename itself reaches the disk with the directory.
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Every readable record; a directory without one (a create that
    /// crashed half-way) is removed, and an unreadable one is reported
    /// and left alone.
    pub fn load_all(&self) -> Vec<ContainerRecord> {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in entries.flatten() {
            let path = e.path().join("record.json");
            match std::fs::read(&path) {
                Ok(bytes) => match serde_json::from_slice::<ContainerRecord>(&bytes) {
                    Ok(r) => out.push(r),
                    Err(err) => tracing::error!("{}: {err}; left alone", path.display()),
                },
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                    let _ = std::fs::remove_dir_all(e.path());
                }
                Err(err) => tracing::error!("{}: {err}", path.display()),
            }
        }
        out.sort_by_key(|r| r.created_ms);
        out
    }

    /// Removes a container's directory and everything in it.
    pub fn remove(&self, id: &str) -> Result<(), StateError> {
        let dir = self.dir(id);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(StateError::Write {
                path: dir.display().to_string(),
                err,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> ContainerRecord {
        ContainerRecord {
            id: id.into(),
            name: "n".into(),
            image: "docker.io/library/busybox:latest".into(),
            config: CreateRequest {
                image: "busybox".into(),
                ..Default::default()
            },
            image_config: ImageConfig::default(),
            state: ContainerState::Created,
            exit_code: None,
            signal: None,
            error: None,
            created_ms: 1,
            started_ms: None,
            finished_ms: None,
            backend: None,
            vcpus: 1,
            memory_mib: 256,
            vm: None,
            agent_id: None,
            guest_pid: None,
            net: None,
        }
    }

    #[test]
    fn records_survive_a_reload_and_half_written_ones_go() {
        let dir = std::env::temp_dir().join(format!("husk-records-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let recs = Records::open(&dir).unwrap();
        let mut r = record("abc");
        recs.save(&r).unwrap();
        r.state = ContainerState::Exited;
        r.exit_code = Some(3);
        recs.save(&r).unwrap();
        // A create that crashed before its first record.
        std::fs::create_dir_all(recs.dir("half")).unwrap();
        std::fs::write(recs.dir("bad").join("record.json"), b"{").unwrap_or_else(|_| {
            std::fs::create_dir_all(recs.dir("bad")).unwrap();
            std::fs::write(recs.dir("bad").join("record.json"), b"{").unwrap();
        });
        let all = recs.load_all();
        assert_eq!(all.len(), 1);
        assert_eq!(
            (all[0].state, all[0].exit_code),
            (ContainerState::Exited, Some(3))
        );
        assert!(!recs.dir("half").exists());
        assert!(
            recs.dir("bad").exists(),
            "an unreadable record is kept for a human"
        );
        let api = all[0].to_api();
        assert_eq!(api["state"], "exited");
        assert_eq!(api["exit_code"], 3);
        assert!(api.get("vm").is_none() && api.get("image_config").is_none());
        recs.remove("abc").unwrap();
        assert!(recs.load_all().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
