//! A container's VM: its disks (the root filesystem, made from the image
//! the first time, and the agent's initramfs), its spec, the boot up to
//! the agent's main process, and the pump that keeps the process's output
//! and notices its end.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::*;

/// How long a VM may take from launch to the agent's `Ready`.
pub(super) const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

impl Manager {
    /// The container's root filesystem, made from its image the first
    /// time (files copied into a created container by `husk cp` are in it
    /// already). A size asked smaller than the image is a 400; nothing
    /// half-made is left.
    pub(in crate::daemon) async fn prepare_rootfs(
        &self,
        r: &ContainerRecord,
    ) -> Result<PathBuf, ApiError> {
        let (state_dir, image, size) = (
            self.cfg.state_dir.clone(),
            r.image.clone(),
            r.config.rootfs_size,
        );
        let rootfs = self.records.dir(&r.id).join("rootfs.ext4");
        tokio::task::spawn_blocking(move || -> Result<_, ApiError> {
            if !rootfs.exists() {
                let tmp = rootfs.with_extension("new");
                let made = build_rootfs(&state_dir, &image, size, &tmp).and_then(|()| {
                    std::fs::rename(&tmp, &rootfs).map_err(|e| ApiError::Internal(e.to_string()))
                });
                if made.is_err() {
                    let _ = std::fs::remove_file(&tmp);
                }
                made?;
            }
            Ok(rootfs)
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
    }

    /// The container's root filesystem and the agent's initramfs.
    pub(in crate::daemon) async fn prepare_disks(
        &self,
        r: &ContainerRecord,
    ) -> Result<(PathBuf, PathBuf), String> {
        let rootfs = self.prepare_rootfs(r).await.map_err(|e| e.to_string())?;
        let (state_dir, agent) = (self.cfg.state_dir.clone(), self.cfg.agent.clone());
        tokio::task::spawn_blocking(move || -> Result<_, String> {
            let agent = match agent {
                Some(a) => a,
                None => crate::agent::initramfs::find_agent().map_err(|e| e.to_string())?,
            };
            let initramfs = crate::agent::initramfs::cached_initramfs(&agent, &state_dir)
                .map_err(|e| e.to_string())?;
            Ok((rootfs, initramfs))
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// The VM for container `r` in run directory `name`, with the disks
    /// and shares of `plan` and network endpoint `ep`.
    pub(in crate::daemon) async fn vm_spec(
        &self,
        r: &ContainerRecord,
        name: &str,
        plan: &crate::daemon::mounts::Plan,
        ep: Option<&crate::daemon::network::Endpoint>,
    ) -> Result<VmSpec, String> {
        let (rootfs, initramfs) = self.prepare_disks(r).await?;
        let dir = self.cfg.run_dir.join(name);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(VmSpec {
            dir,
            kernel: self.cfg.kernel.clone(),
            initramfs,
            rootfs: Some(rootfs),
            vcpus: r.vcpus,
            memory_mib: r.memory_mib,
            boot_args: String::new(),
            jail: self.cfg.jail.clone(),
            net: ep.map(|e| backend::VmNet {
                tap: e.tap.clone(),
                mac: e.mac.clone(),
                mtu: e.mtu,
            }),
            drives: plan.drives.clone(),
            shares: plan.shares.clone(),
        })
    }

    pub(super) async fn boot(
        &self,
        c: &Arc<Container>,
    ) -> Result<(AgentClient, Process), BootFailure> {
        let r = c.snapshot();
        let hostname = hostname_of(&r);
        let ep = r.net.clone();
        let plan = crate::daemon::mounts::plan(&self.volumes, &r.config.mounts)
            .map_err(|e| e.to_string())?;
        let spec = self.vm_spec(&r, &r.id[..12], &plan, ep.as_ref()).await?;
        let kind = self.cfg.backend;
        let vm = tokio::task::spawn_blocking(move || backend::launch(kind, &spec))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("cannot start the VM: {e}"))?;
        let rec = c.update(|r| {
            r.vm = Some(vm.clone());
            r.backend = Some(kind);
        });
        self.save(&rec);
        vm.agent_started(BOOT_TIMEOUT)
            .await
            .map_err(|e| format!("{e}{}", console_tail(&vm)))?;
        let client = AgentClient::connect_vsock(&vm.vsock_uds, BOOT_TIMEOUT)
            .await
            .map_err(|e| format!("{e}{}", console_tail(&vm)))?;
        let cfg = &r.config;
        let spec = ContainerSpec {
            image: r.image_config.clone(),
            overrides: ImageConfig {
                entrypoint: cfg.entrypoint.clone(),
                cmd: cfg.cmd.clone().filter(|c| !c.is_empty()),
                env: cfg.env.clone(),
                working_dir: cfg.workdir.clone(),
                user: cfg.user.clone(),
            },
            hostname: Some(hostname.clone()),
            network: ep.as_ref().map(|e| e.guest()),
            nameservers: ep.iter().map(|e| e.gateway.to_string()).collect(),
            hosts: ep
                .iter()
                .map(|e| (e.ip.to_string(), vec![hostname.clone()]))
                .collect(),
            tty: cfg.tty,
            // The size of a terminal attached before the start.
            window: c.stdio.window().filter(|_| cfg.tty),
            mounts: plan.guest.clone(),
            ..Default::default()
        };
        let p = client.start(spec).await.map_err(|e| match e {
            ClientError::CannotRun { message, exit_code } => {
                BootFailure::CannotRun { message, exit_code }
            }
            e => BootFailure::Other(e.to_string()),
        })?;
        Ok((client, p))
    }

    /// Keeps the logs and waits for the main process's exit.
    pub(super) async fn pump(self: Arc<Self>, c: Arc<Container>, mut p: Process) {
        let dir = self.records.dir(&c.snapshot().id);
        let mut log = LogWriter::new(&dir, c.live.clone());
        let status = loop {
            match p.next().await {
                Ok(Some(Event::Output(stream, data))) => {
                    log.write(stream, &data);
                    c.stdio.output(stream, &data).await;
                }
                Ok(Some(Event::Exit(s))) => break Ok(s),
                Ok(None) => break Err("the agent sent no exit status".to_string()),
                Err(e) => break Err(e.to_string()),
            }
        };
        c.stdio.ended();
        let vm = c.snapshot().vm;
        // The connection broke: say whether the VM went with it (its VMM
        // process died or was killed) or the agent alone.
        let status = match (status, &vm) {
            (Err(e), Some(vm)) => {
                // A VMM that is killed closes its files (so the
                // connection breaks) a moment before it is gone.
                let vm2 = vm.clone();
                let alive =
                    tokio::task::spawn_blocking(move || !vm2.wait_exit(Duration::from_secs(1)))
                        .await
                        .unwrap_or(false);
                Err(if alive {
                    e
                } else {
                    format!(
                        "the VM's process ({} pid {}) ended under the container: {e}",
                        match vm.kind {
                            BackendKind::Kvm => "husk-vmm",
                            BackendKind::Tcg => "QEMU",
                        },
                        vm.procs.first().map_or(0, |p| p.pid)
                    )
                })
            }
            (s, _) => s,
        };
        if let Some(vm) = vm {
            // The agent ends the VM after the exit; give it a moment.
            let vm2 = vm.clone();
            let ended = tokio::task::spawn_blocking(move || vm2.wait_exit(Duration::from_secs(10)))
                .await
                .unwrap_or(false);
            if !ended {
                tracing::warn!("the VM did not end by itself; killing it");
            }
            self.retire(&c.snapshot().id, &vm);
        }
        self.net.detach(&c.snapshot().id).await;
        *c.agent.lock().await = None;
        match status {
            Ok(s) => self.settle(&c, Some(s), None),
            // The VM went away under the process (a stop that powered it
            // off, or a crash): as killed.
            Err(e) => self.settle(
                &c,
                Some(ExitStatus {
                    code: None,
                    signal: Some(libc::SIGKILL),
                }),
                Some(e),
            ),
        }
    }
}

/// Builds a container's root filesystem at `tmp` from `image`: its size
/// `size` when given, else [`DEFAULT_ROOTFS_SIZE`] or the image's own
/// when that is more, as Docker gives a container room to write.
fn build_rootfs(
    state_dir: &std::path::Path,
    image: &str,
    size: Option<u64>,
    tmp: &std::path::Path,
) -> Result<(), ApiError> {
    use crate::image::rootfs::{self as fs, RootfsError};
    use crate::image::store::Store;
    let internal = |e: String| ApiError::Internal(e);
    let store = Store::open(state_dir).map_err(|e| internal(e.to_string()))?;
    let record = store.get(image).map_err(|e| internal(e.to_string()))?;
    fs::export(&store, &record, fs::RootfsOptions::default(), tmp, None)
        .map_err(|e| internal(format!("cannot build the root filesystem: {e}")))?;
    let have = std::fs::metadata(tmp)
        .map_err(|e| internal(e.to_string()))?
        .len();
    let want = size.unwrap_or(have.max(DEFAULT_ROOTFS_SIZE));
    fs::grow(tmp, want).map_err(|e| match e {
        RootfsError::TooSmall { want, have } => ApiError::BadRequest(format!(
            "rootfs_size ({} MiB) is smaller than the image's root filesystem ({} MiB)",
            want >> 20,
            have.div_ceil(1 << 20)
        )),
        e => internal(format!("cannot size the root filesystem: {e}")),
    })
}

/// The container's host name: as asked, else its short id.
fn hostname_of(r: &ContainerRecord) -> String {
    r.config
        .hostname
        .clone()
        .unwrap_or_else(|| r.id[..12].to_string())
}

/// The last lines the guest printed, for a boot that failed.
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
