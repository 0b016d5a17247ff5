//! Containers and their lifecycle: create (resolve the image and its
//! config), start (a private root filesystem, the VM, the agent, the main
//! process), the pump that keeps logs and notices the exit, kill, stop,
//! remove, and finding running VMs again after a daemon restart.
//!
//! Each container has its own locks, so many start at once; the map of
//! containers is locked only to add, find or remove one.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, watch};

use super::attach::AttachPoint;
use super::backend::{self, BackendKind, VmHandle, VmSpec};
use super::logs::{self, LogLine, LogWriter};
use super::network::{AttachRequest, NetOptions, NetworkManager};
use super::state::{now_ms, ContainerRecord, ContainerState, CreateRequest, Records};
use crate::agent::client::{AgentClient, ClientError, Event, ExitStatus, Process};
use crate::agent::protocol::{ContainerSpec, ImageConfig, ProcessSpec};

mod request;
mod vm;

pub use request::DEFAULT_ROOTFS_SIZE;
use request::{check_request, random_id, resolve_image};
use vm::BOOT_TIMEOUT;

/// What the API answers with when a request fails.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Internal(String),
    /// The process could not be started: its program is missing (127) or
    /// cannot be executed (126), the code `docker run` exits with.
    #[error("{message}")]
    CannotRun { message: String, exit_code: i32 },
}

/// Why a container's VM or process did not come up.
enum BootFailure {
    Other(String),
    /// The agent could not start the program.
    CannotRun {
        message: String,
        exit_code: i32,
    },
}

impl From<String> for BootFailure {
    fn from(s: String) -> Self {
        BootFailure::Other(s)
    }
}

/// The daemon's settings for new containers.
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    pub state_dir: PathBuf,
    /// VMs' sockets and consoles, one short directory each (a Unix
    /// socket's path must fit in 108 bytes).
    pub run_dir: PathBuf,
    pub kernel: PathBuf,
    /// The `husk-agent` binary (found beside husk when unset).
    pub agent: Option<PathBuf>,
    pub vcpus: u8,
    pub memory_mib: u32,
    pub backend: BackendKind,
    /// Why `auto` chose software emulation, if it did.
    pub fallback_reason: Option<String>,
    /// Registries pulls may reach over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// How kvm VMs are jailed; `None` (`--no-jail`) runs them unjailed.
    pub jail: Option<crate::daemon::backend::jail::JailSettings>,
    /// The default network, and where DNS goes.
    pub net: NetOptions,
}

/// One container in memory.
pub struct Container {
    pub record: Mutex<ContainerRecord>,
    live: broadcast::Sender<LogLine>,
    exited: watch::Sender<bool>,
    /// Held by a reattach until it is done, so a stop or kill that comes
    /// meanwhile waits for the agent instead of finding none.
    agent: Arc<tokio::sync::Mutex<Option<Arc<AgentClient>>>>,
    /// Start, stop and remove of one container happen one at a time.
    pub(super) lifecycle: Arc<tokio::sync::Mutex<()>>,
    /// Clients attached to the main process's stdio (`attach.rs`).
    pub(super) stdio: AttachPoint,
}

impl Container {
    fn new(record: ContainerRecord) -> Arc<Container> {
        let done = matches!(record.state, ContainerState::Exited | ContainerState::Dead);
        Arc::new(Container {
            record: Mutex::new(record),
            live: logs::live_channel(),
            exited: watch::channel(done).0,
            agent: Arc::new(tokio::sync::Mutex::new(None)),
            lifecycle: Arc::new(tokio::sync::Mutex::new(())),
            stdio: AttachPoint::default(),
        })
    }

    pub fn snapshot(&self) -> ContainerRecord {
        self.record
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn update(&self, f: impl FnOnce(&mut ContainerRecord)) -> ContainerRecord {
        let mut r = self.record.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut r);
        r.clone()
    }

    /// Live output from now on.
    pub fn follow(&self) -> broadcast::Receiver<LogLine> {
        self.live.subscribe()
    }

    /// Resolves once the container is no longer running.
    pub async fn wait_exit(&self) {
        let mut rx = self.exited.subscribe();
        let _ = rx.wait_for(|done| *done).await;
    }
}

pub struct Manager {
    pub cfg: DaemonConfig,
    pub net: Arc<NetworkManager>,
    pub volumes: Arc<super::volume::VolumeManager>,
    records: Records,
    containers: Mutex<BTreeMap<String, Arc<Container>>>,
    events: broadcast::Sender<serde_json::Value>,
}

impl Manager {
    /// Loads the records, and finds the VMs of running containers again.
    pub fn open(cfg: DaemonConfig) -> Result<Arc<Manager>, ApiError> {
        let records =
            Records::open(&cfg.state_dir).map_err(|e| ApiError::Internal(e.to_string()))?;
        let net = NetworkManager::open(&cfg.state_dir, cfg.net.clone())?;
        let volumes = super::volume::VolumeManager::open(&cfg.state_dir)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let m = Arc::new(Manager {
            net,
            volumes: Arc::new(volumes),
            cfg,
            containers: Mutex::new(BTreeMap::new()),
            events: broadcast::channel(256).0,
            records,
        });
        for r in m.records.load_all() {
            // The volumes of VMs that may still run stay theirs.
            if r.state.is_active() {
                if let Ok(plan) = super::mounts::plan(&m.volumes, &r.config.mounts) {
                    let _ = m.volumes.claim(&r.id, &plan.claims);
                }
            }
            let c = Container::new(r);
            let id = c.snapshot().id;
            m.containers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id, c);
        }
        Ok(m)
    }

    /// At start, before [`Manager::recover`]: sets up the networks, with
    /// the attachments of the containers whose VMs still run.
    pub async fn start_network(&self) {
        if let Some(why) = self.net.unavailable() {
            tracing::warn!("container networking is off ({why}): containers get no network");
            eprintln!("husk serve: warning: container networking is off ({why})");
            return;
        }
        let running = self
            .all()
            .iter()
            .map(|c| c.snapshot())
            // Only containers whose process ran: one still starting when
            // the daemon died is retired by `recover`, and its TAP goes.
            .filter(|r| r.state.is_active() && r.agent_id.is_some())
            .filter(|r| r.vm.as_ref().is_some_and(VmHandle::is_running))
            .filter_map(|r| Some((r.id.clone(), r.net?)))
            .collect();
        if let Err(e) = self.net.start(running).await {
            tracing::error!("cannot set up the networks: {e}");
            eprintln!("husk serve: error: cannot set up the networks: {e}");
        }
    }

    /// After a restart: reattach to the VMs that still run; record the
    /// ones that ended while the daemon was away.
    pub fn recover(self: &Arc<Self>) {
        for c in self.all() {
            let r = c.snapshot();
            if !r.state.is_active() {
                continue;
            }
            match (&r.vm, r.agent_id) {
                (Some(vm), Some(agent_id)) if vm.is_running() => {
                    let (m, vm) = (self.clone(), vm.clone());
                    // Taken here, before the API serves anything.
                    let slot = c
                        .agent
                        .clone()
                        .try_lock_owned()
                        .expect("no one holds a container's agent before the API starts");
                    tokio::spawn(async move { m.reattach(c, vm, agent_id, slot).await });
                }
                _ => {
                    if let Some(vm) = &r.vm {
                        self.retire(&r.id, vm);
                    }
                    self.settle(
                        &c,
                        None,
                        Some("the VM ended while the daemon was not running".into()),
                    );
                }
            }
        }
    }

    async fn reattach(
        self: Arc<Self>,
        c: Arc<Container>,
        vm: VmHandle,
        agent_id: u32,
        mut slot: tokio::sync::OwnedMutexGuard<Option<Arc<AgentClient>>>,
    ) {
        let attached = async {
            let client = AgentClient::connect_vsock(&vm.vsock_uds, BOOT_TIMEOUT).await?;
            let p = client.attach(agent_id).await?;
            Ok::<_, crate::agent::client::ClientError>((Arc::new(client), p))
        };
        match attached.await {
            Ok((client, p)) => {
                tracing::info!(id = %c.snapshot().id, "reattached to a running container");
                *slot = Some(client);
                drop(slot);
                c.stdio.started(p.input());
                self.pump(c, p).await;
            }
            Err(e) => {
                drop(slot);
                self.retire(&c.snapshot().id, &vm);
                self.net.detach(&c.snapshot().id).await;
                self.settle(
                    &c,
                    None,
                    Some(format!("cannot reach the container's agent again: {e}")),
                );
            }
        }
    }

    fn event(&self, r: &ContainerRecord, action: &str) {
        let mut e =
            serde_json::json!({"time_ms": now_ms(), "id": r.id, "name": r.name, "action": action});
        if let Some(code) = r.exit_code {
            e["exit_code"] = code.into();
        }
        let _ = self.events.send(e);
    }

    pub fn events(&self) -> broadcast::Receiver<serde_json::Value> {
        self.events.subscribe()
    }

    fn save(&self, r: &ContainerRecord) {
        if let Err(e) = self.records.save(r) {
            tracing::error!("{e}");
        }
    }

    pub fn all(&self) -> Vec<Arc<Container>> {
        self.containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// By full id, name, or a unique prefix of the id.
    pub fn find(&self, key: &str) -> Result<Arc<Container>, ApiError> {
        let map = self.containers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = map.get(key) {
            return Ok(c.clone());
        }
        if let Some(c) = map.values().find(|c| c.snapshot().name == key) {
            return Ok(c.clone());
        }
        let hits: Vec<_> = if key.is_empty() {
            Vec::new()
        } else {
            map.range(key.to_string()..)
                .take_while(|(id, _)| id.starts_with(key))
                .map(|(_, c)| c.clone())
                .collect()
        };
        match hits.len() {
            1 => Ok(hits[0].clone()),
            0 => Err(ApiError::NotFound(format!(
                "no such container: {}",
                crate::text::echo(key)
            ))),
            _ => Err(ApiError::BadRequest(format!(
                "{} matches more than one container",
                crate::text::echo(key)
            ))),
        }
    }

    /// Records a new container; the image must be in the store (or is
    /// pulled first).
    pub async fn create(
        self: &Arc<Self>,
        mut req: CreateRequest,
    ) -> Result<ContainerRecord, ApiError> {
        // 0.0.0.0 is every address, as no address is.
        for p in &mut req.publish {
            p.host_ip = p.host_ip.filter(|ip| !ip.is_unspecified());
        }
        check_request(&req)?;
        self.net
            .check_joinable(req.network.as_deref(), &req.publish)
            .await?;
        let state_dir = self.cfg.state_dir.clone();
        let image_ref = req.image.clone();
        let may_pull = req.pull.unwrap_or(true);
        let (reference, config, image_volumes) = {
            let m = self.clone();
            tokio::task::spawn_blocking(move || match resolve_image(&state_dir, &image_ref) {
                // Not in the store: pull it, as `docker run` would.
                Err(ApiError::NotFound(here)) if may_pull => {
                    match super::images::pull_blocking(
                        &m,
                        &image_ref,
                        oci_client::secrets::RegistryAuth::Anonymous,
                        &|_| {},
                    ) {
                        Ok(_) => resolve_image(&state_dir, &image_ref),
                        Err(ApiError::BadRequest(e)) => Err(ApiError::BadRequest(e)),
                        Err(e) => Err(ApiError::NotFound(format!(
                            "{here}, and pulling it failed: {e}"
                        ))),
                    }
                }
                r => r,
            })
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))??
        };
        // Volumes and bind sources: made and resolved now, so that the
        // container's config names them for good.
        let req = {
            let volumes = self.volumes.clone();
            tokio::task::spawn_blocking(move || {
                super::mounts::resolve(&volumes, &mut req.mounts, &image_volumes).map(|()| req)
            })
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?
            .map_err(mount_error)?
        };
        let id = random_id();
        let name = req
            .name
            .clone()
            .unwrap_or_else(|| format!("husk-{}", &id[..12]));
        let r = ContainerRecord {
            id: id.clone(),
            name: name.clone(),
            image: reference,
            image_config: config,
            state: ContainerState::Created,
            exit_code: None,
            signal: None,
            error: None,
            created_ms: now_ms(),
            started_ms: None,
            finished_ms: None,
            backend: None,
            vcpus: req.vcpus.unwrap_or(self.cfg.vcpus),
            memory_mib: req.memory_mib.unwrap_or(self.cfg.memory_mib),
            vm: None,
            agent_id: None,
            guest_pid: None,
            net: None,
            config: req,
        };
        {
            let mut map = self.containers.lock().unwrap_or_else(|e| e.into_inner());
            if map.values().any(|c| c.snapshot().name == name) {
                return Err(ApiError::Conflict(format!(
                    "the name {:?} is already in use",
                    crate::text::echo(&name)
                )));
            }
            map.insert(id, Container::new(r.clone()));
        }
        self.save(&r);
        self.event(&r, "create");
        Ok(r)
    }

    /// Boots the container's VM and starts its main process; returns once
    /// it runs.
    pub async fn start(self: &Arc<Self>, key: &str) -> Result<(), ApiError> {
        let c = self.find(key)?;
        let _turn = c.lifecycle.lock().await;
        // An exited container starts again as Docker's does: a new VM on
        // the same root filesystem, its logs going on where they ended;
        // once the end of its last run is wholly recorded (its claims
        // released, its waiters woken).
        if c.snapshot().state == ContainerState::Exited {
            c.wait_exit().await;
        }
        let r = c.snapshot();
        if r.state == ContainerState::Exited && r.config.auto_remove {
            return Err(ApiError::Conflict(format!(
                "container {} was run with auto-remove (--rm): it is removed once it exits, \
                 not started again",
                &r.id[..12]
            )));
        }
        if !matches!(r.state, ContainerState::Created | ContainerState::Exited) {
            return Err(ApiError::Conflict(format!(
                "container {} is {}; only a created or exited container can start",
                &r.id[..12],
                r.state.as_str()
            )));
        }
        // Its disks, volumes and network first: a refusal (a root
        // filesystem smaller than its image, a volume another container
        // writes, a host port in use, a full subnet) leaves the container
        // as it was, to start again later.
        self.prepare_rootfs(&r).await?;
        let plan = super::mounts::plan(&self.volumes, &r.config.mounts).map_err(mount_error)?;
        self.volumes
            .claim(&r.id, &plan.claims)
            .map_err(volume_error)?;
        let ep = self
            .net
            .attach(AttachRequest {
                container_id: &r.id,
                container_name: &r.name,
                network: r.config.network.as_deref(),
                ports: &r.config.publish,
            })
            .await
            .inspect_err(|_| self.volumes.release(&r.id))?;
        // Not ended any more before the state says Starting, so an attach
        // or a wait that sees Starting waits for this run.
        c.stdio.restarted();
        c.exited.send_replace(false);
        let r = c.update(|r| {
            r.state = ContainerState::Starting;
            r.net = ep;
            r.exit_code = None;
            r.signal = None;
            r.error = None;
            r.finished_ms = None;
            // The last run's process: a daemon that restarts while this
            // one boots must not take it for a process that ran.
            r.agent_id = None;
            r.guest_pid = None;
        });
        self.save(&r);
        match self.boot(&c).await {
            Ok((client, p)) => {
                let r = c.update(|r| {
                    r.state = ContainerState::Running;
                    r.started_ms = Some(now_ms());
                    r.agent_id = Some(p.id());
                    r.guest_pid = Some(p.pid());
                });
                self.save(&r);
                self.event(&r, "start");
                *c.agent.lock().await = Some(Arc::new(client));
                c.stdio.started(p.input());
                let (m, c) = (self.clone(), c.clone());
                tokio::spawn(async move { m.pump(c, p).await });
                Ok(())
            }
            Err(failure) => {
                if let Some(vm) = c.snapshot().vm {
                    self.retire(&c.snapshot().id, &vm);
                }
                self.net.detach(&r.id).await;
                match failure {
                    BootFailure::Other(msg) => {
                        self.settle(&c, None, Some(msg.clone()));
                        Err(ApiError::Internal(msg))
                    }
                    BootFailure::CannotRun { message, exit_code } => {
                        let status = ExitStatus {
                            code: Some(exit_code),
                            signal: None,
                        };
                        self.settle(&c, Some(status), Some(message.clone()));
                        Err(ApiError::CannotRun { message, exit_code })
                    }
                }
            }
        }
    }

    /// Ends a VM for good: its processes, its sockets and run directory;
    /// the guest's console is kept with the container's record.
    pub(super) fn retire(&self, id: &str, vm: &VmHandle) {
        vm.cleanup();
        let _ = std::fs::copy(&vm.console_log, self.records.dir(id).join("console.log"));
        let _ = std::fs::remove_dir_all(vm.dir());
    }

    /// Records how a container ended and wakes its waiters.
    fn settle(&self, c: &Arc<Container>, status: Option<ExitStatus>, error: Option<String>) {
        let r = c.update(|r| {
            r.state = match status {
                Some(_) => ContainerState::Exited,
                None => ContainerState::Dead,
            };
            if let Some(s) = status {
                r.exit_code = Some(s.shell_code());
                r.signal = s.signal;
            }
            r.error = error;
            r.finished_ms = Some(now_ms());
            r.vm = None;
            r.net = None;
        });
        self.volumes.release(&r.id);
        self.save(&r);
        self.event(&r, "die");
        if r.config.auto_remove {
            // Gone before its waiters wake, so none of them finds it again.
            self.forget(&r.id);
        }
        c.exited.send_replace(true);
        if r.config.auto_remove {
            // As `docker run --rm`: its anonymous volumes go with it.
            let (vols, names) = (self.volumes.clone(), self.orphaned_volumes(&r));
            if !names.is_empty() {
                std::thread::spawn(move || remove_volumes(&vols, names));
            }
        }
    }

    fn forget(&self, id: &str) {
        let removed = self
            .containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        if let Some(c) = removed {
            if let Err(e) = self.records.remove(id) {
                tracing::error!("{e}");
            }
            self.event(&c.snapshot(), "destroy");
        }
    }

    pub(super) async fn agent_of(
        &self,
        c: &Container,
    ) -> Result<(Arc<AgentClient>, u32), ApiError> {
        let r = c.snapshot();
        let not_running =
            || ApiError::Conflict(format!("container {} is not running", &r.id[..12]));
        if r.state != ContainerState::Running {
            return Err(not_running());
        }
        let client = c.agent.lock().await.clone().ok_or_else(not_running)?;
        Ok((client, r.agent_id.unwrap_or(1)))
    }

    pub async fn kill(&self, key: &str, signal: i32) -> Result<(), ApiError> {
        if !(1..=64).contains(&signal) {
            return Err(ApiError::BadRequest(format!("{signal} is not a signal")));
        }
        let c = self.find(key)?;
        let (client, id) = self.agent_of(&c).await?;
        client
            .signal(id, signal)
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))
    }

    /// SIGTERM, then after `timeout` the VM is powered off.
    pub async fn stop(&self, key: &str, timeout: Duration) -> Result<(), ApiError> {
        let c = self.find(key)?;
        if !c.snapshot().state.is_active() {
            return Ok(());
        }
        if let Ok((client, id)) = self.agent_of(&c).await {
            let _ = client.signal(id, libc::SIGTERM).await;
        }
        if tokio::time::timeout(timeout, c.wait_exit()).await.is_err() {
            if let Some(vm) = c.snapshot().vm {
                vm.kill();
            }
            c.wait_exit().await;
        }
        Ok(())
    }

    pub async fn remove(&self, key: &str, force: bool, volumes: bool) -> Result<(), ApiError> {
        let c = self.find(key)?;
        let _turn = c.lifecycle.lock().await;
        let r = c.snapshot();
        if r.state.is_active() {
            if !force {
                return Err(ApiError::Conflict(format!(
                    "container {} is running: stop it first, or remove it with force",
                    &r.id[..12]
                )));
            }
            if let Some(vm) = &r.vm {
                vm.kill();
            }
            c.wait_exit().await;
        }
        self.forget(&r.id);
        if volumes {
            self.remove_anonymous_volumes(&r).await;
        }
        Ok(())
    }

    /// The anonymous volumes of a removed container that no other
    /// container uses.
    fn orphaned_volumes(&self, r: &ContainerRecord) -> Vec<String> {
        let others: Vec<ContainerRecord> = self.all().iter().map(|c| c.snapshot()).collect();
        super::mounts::volume_names(&r.config.mounts)
            .filter(|n| self.volumes.get(n).is_ok_and(|v| v.anonymous))
            .filter(|n| {
                !others
                    .iter()
                    .any(|o| super::mounts::volume_names(&o.config.mounts).any(|x| x == *n))
            })
            .map(String::from)
            .collect()
    }

    async fn remove_anonymous_volumes(&self, r: &ContainerRecord) {
        let (vols, names) = (self.volumes.clone(), self.orphaned_volumes(r));
        let _ = tokio::task::spawn_blocking(move || remove_volumes(&vols, names)).await;
    }

    /// Another process in a running container.
    pub async fn exec(&self, key: &str, spec: ProcessSpec) -> Result<Process, ApiError> {
        if spec.args.is_empty() {
            return Err(ApiError::BadRequest("cmd is required".into()));
        }
        let c = self.find(key)?;
        let (client, _) = self.agent_of(&c).await?;
        client.exec(spec).await.map_err(|e| match e {
            ClientError::Refused(m) => ApiError::BadRequest(m),
            ClientError::CannotRun { message, exit_code } => {
                ApiError::CannotRun { message, exit_code }
            }
            e => ApiError::Internal(e.to_string()),
        })
    }

    pub fn log_dir(&self, id: &str) -> PathBuf {
        self.records.dir(id)
    }
}

fn remove_volumes(vols: &super::volume::VolumeManager, names: Vec<String>) {
    for n in names {
        if let Err(e) = vols.remove(&n, vec![]) {
            tracing::warn!("cannot remove an anonymous volume: {e}");
        }
    }
}

/// How a volume's refusal reads in the API.
fn volume_error(e: super::volume::VolumeError) -> ApiError {
    use super::volume::VolumeError as V;
    match e {
        V::NotFound(_) => ApiError::NotFound(e.to_string()),
        V::Exists(_) | V::InUse { .. } | V::Busy { .. } => ApiError::Conflict(e.to_string()),
        V::Name(_) | V::Size(_) | V::Shrink { .. } => ApiError::BadRequest(e.to_string()),
        V::Tool { .. } | V::Io { .. } => ApiError::Internal(e.to_string()),
    }
}

pub(super) fn mount_error(e: super::mounts::MountError) -> ApiError {
    use super::mounts::MountError as M;
    match e {
        M::Volume(v) => volume_error(v),
        M::BindSource { .. } | M::BindFile(_) => ApiError::BadRequest(e.to_string()),
        e => ApiError::BadRequest(e.to_string()),
    }
}
