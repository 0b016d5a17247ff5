//! A pod's microVM, from the host: its directory, the share that carries
//! its containers' root filesystems into the guest, the VM (the daemon's
//! backends, called as a library), the agent connection, and the record
//! that lets `containerd-shim-husk-v2 delete` clean up after a shim that
//! was killed.
//!
//! Layout of `<state_dir>/<namespace>/<pod id>/`:
//!
//! | path | what |
//! |---|---|
//! | `pod.json` | [`PodRecord`]: the VM's processes, written once it runs |
//! | `vm/` | the VM's run directory (console, logs, sockets) |
//! | `share/` | shared with the guest over virtio-fs as tag `pod`, mounted at `/pod` there; `share/<container>/rootfs` is the container's OCI rootfs, mounted here by the shim |
//!
//! `share/` is a bind mount of itself made `shared`, so the root
//! filesystems mounted under it after virtiofsd started (in a mount
//! namespace of its own, a slave of this one) reach virtiofsd too.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::config::ShimConfig;
use crate::agent::client::AgentClient;
use crate::daemon::backend::{self, BackendKind, VmHandle, VmShare, VmSpec};

/// The share's virtio-fs tag.
pub const SHARE_TAG: &str = "pod";
/// How long a pod VM may take from launch to the agent's `Ready`
/// (software emulation on a loaded host).
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error("{what} {path}: {err}")]
    Io {
        what: &'static str,
        path: String,
        err: std::io::Error,
    },
    #[error("mount {0}: {1}")]
    Mount(String, String),
    #[error("the guest agent: {0}")]
    Agent(String),
    #[error("cannot start the pod's VM: {0}")]
    Backend(String),
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> PodError + 'a {
    move |err| PodError::Io {
        what,
        path: path.display().to_string(),
        err,
    }
}

/// What `delete` needs to clean up a pod whose shim is gone.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PodRecord {
    pub vm: VmHandle,
    pub backend: BackendKind,
}

/// A pod's paths.
#[derive(Clone, Debug)]
pub struct PodDir(pub PathBuf);

impl PodDir {
    pub fn new(cfg: &ShimConfig, namespace: &str, pod: &str) -> PodDir {
        PodDir(cfg.state_dir.join(namespace).join(pod))
    }
    pub fn record(&self) -> PathBuf {
        self.0.join("pod.json")
    }
    pub fn vm_dir(&self) -> PathBuf {
        self.0.join("vm")
    }
    pub fn share(&self) -> PathBuf {
        self.0.join("share")
    }
    /// Container `id`'s directory in the share (its rootfs is `rootfs/`).
    pub fn container(&self, id: &str) -> PathBuf {
        self.share().join(id)
    }
}

/// A running pod VM.
pub struct PodVm {
    pub dir: PodDir,
    pub vm: VmHandle,
    pub agent: AgentClient,
    pub backend: BackendKind,
    /// Launch to the agent's `Ready`.
    pub boot: Duration,
}

/// mount(2), with the error in words.
fn mount(src: &Path, target: &Path, flags: libc::c_ulong) -> Result<(), PodError> {
    fn path(p: &Path) -> Result<&str, PodError> {
        p.to_str()
            .ok_or_else(|| PodError::Mount(p.display().to_string(), "not UTF-8".into()))
    }
    crate::agent::guest::setup::mount(path(src)?, path(target)?, "", flags, None)
        .map_err(|e| PodError::Mount(target.display().to_string(), e.to_string()))
}

/// Binds `src` onto `target` (a directory), recursively.
pub fn bind(src: &Path, target: &Path) -> Result<(), PodError> {
    mount(src, target, libc::MS_BIND | libc::MS_REC)
}

impl PodVm {
    /// Makes the pod's directory and share, and boots its VM up to the
    /// agent's `Ready`.
    pub async fn start(
        cfg: &ShimConfig,
        dir: PodDir,
        vcpus: u8,
        memory_mib: u32,
    ) -> Result<PodVm, PodError> {
        let share = dir.share();
        std::fs::create_dir_all(&share).map_err(io_err("pod directory", &share))?;
        bind(&share, &share)?;
        mount(Path::new("none"), &share, libc::MS_SHARED)?;
        let agent = match &cfg.agent {
            Some(a) => a.clone(),
            None => crate::agent::initramfs::find_agent()
                .map_err(|e| PodError::Backend(e.to_string()))?,
        };
        let initramfs = crate::agent::initramfs::cached_initramfs(&agent, &cfg.state_dir)
            .map_err(|e| PodError::Backend(e.to_string()))?;
        let (kind, why) = cfg.backend();
        if let Some(why) = why {
            log::info!("backend {kind}: {why}");
        }
        let jail = if cfg.jail {
            let exe = std::env::current_exe().map_err(io_err("the shim itself", Path::new("")))?;
            Some(backend::jail::JailSettings {
                base: cfg.state_dir.join("jail"),
                uids: backend::jail::DEFAULT_UIDS,
                claims: PathBuf::from(backend::jail::HOST_CLAIMS),
                jailer: backend::jail::find_jailer(&exe),
            })
        } else {
            None
        };
        let spec = VmSpec {
            dir: dir.vm_dir(),
            kernel: cfg.kernel.clone(),
            initramfs,
            rootfs: None,
            vcpus,
            memory_mib,
            boot_args: format!("husk.pod={SHARE_TAG}"),
            jail,
            net: None,
            drives: vec![],
            shares: vec![VmShare {
                tag: SHARE_TAG.into(),
                dir: share,
                read_only: false,
            }],
        };
        let t0 = std::time::Instant::now();
        let vm = tokio::task::spawn_blocking(move || backend::launch(kind, &spec))
            .await
            .map_err(|e| PodError::Backend(e.to_string()))?
            .map_err(|e| PodError::Backend(e.to_string()))?;
        let record = PodRecord {
            vm: vm.clone(),
            backend: kind,
        };
        let written = serde_json::to_vec(&record)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(dir.record(), b));
        if let Err(e) = written {
            vm.cleanup();
            return Err(io_err("pod record", &dir.record())(e));
        }
        let connected = async {
            vm.agent_started(BOOT_TIMEOUT)
                .await
                .map_err(|e| e.to_string())?;
            AgentClient::connect_vsock(&vm.vsock_uds, BOOT_TIMEOUT)
                .await
                .map_err(|e| e.to_string())
        };
        match connected.await {
            Ok(agent) => Ok(PodVm {
                dir,
                vm,
                agent,
                backend: kind,
                boot: t0.elapsed(),
            }),
            Err(e) => {
                let console = console_tail(&vm);
                let v = vm.clone();
                let _ = tokio::task::spawn_blocking(move || v.cleanup()).await;
                Err(PodError::Agent(format!("{e}{console}")))
            }
        }
    }
}

/// The last lines of the guest's console, for an error.
fn console_tail(vm: &VmHandle) -> String {
    let text = std::fs::read_to_string(&vm.console_log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(5).collect();
    if lines.is_empty() {
        return String::new();
    }
    let tail: Vec<&str> = lines.into_iter().rev().collect();
    format!(
        "; the guest's console ended with: {}",
        crate::text::echo(&tail.join(" | "))
    )
}

/// Mounts container `id`'s root filesystem (containerd's mounts, or the
/// bundle's `rootfs` when there are none) at `share/<id>/rootfs`.
pub fn mount_rootfs(
    dir: &PodDir,
    id: &str,
    mounts: &[containerd_shim::protos::api::Mount],
    bundle: &Path,
) -> Result<PathBuf, PodError> {
    let target = dir.container(id).join("rootfs");
    std::fs::create_dir_all(&target).map_err(io_err("rootfs directory", &target))?;
    if mounts.is_empty() {
        return bind(&bundle.join("rootfs"), &target).map(|()| target);
    }
    for m in mounts {
        let fs = (!m.type_.is_empty()).then_some(m.type_.as_str());
        let src = (!m.source.is_empty()).then_some(m.source.as_str());
        containerd_shim::mount::mount_rootfs(fs, src, &m.options, &target)
            .map_err(|e| PodError::Mount(target.display().to_string(), e.to_string()))?;
    }
    Ok(target)
}

/// Unmounts everything under `path` (deepest first) and removes it.
pub fn unmount_tree(path: &Path) {
    if let Some(p) = path.to_str() {
        if let Err(e) = containerd_shim::mount::umount_recursive(Some(p), libc::MNT_DETACH) {
            log::warn!("unmount {p}: {e}");
        }
    }
    let _ = std::fs::remove_dir_all(path);
}

/// Removes container `id` from the pod's share.
pub fn remove_container(dir: &PodDir, id: &str) {
    unmount_tree(&dir.container(id));
}

/// Ends the pod: its VM killed, its mounts undone, its directory gone.
/// Works from the record alone (after a shim was killed).
pub fn tear_down(dir: &PodDir) {
    if let Ok(bytes) = std::fs::read(dir.record()) {
        match serde_json::from_slice::<PodRecord>(&bytes) {
            Ok(r) => r.vm.cleanup(),
            Err(e) => log::warn!("{}: {e}", dir.record().display()),
        }
    }
    unmount_tree(&dir.share());
    let _ = std::fs::remove_dir_all(&dir.0);
}
