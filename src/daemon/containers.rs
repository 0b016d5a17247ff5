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

/// How long a VM may take from launch to the agent's `Ready`.
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
/// A container's root filesystem unless it asks otherwise (or its image
/// needs more): a sparse file, so the size costs nothing until written.
pub const DEFAULT_ROOTFS_SIZE: u64 = 10 << 30;
const MIN_ROOTFS_SIZE: u64 = 64 << 20;
const MAX_ROOTFS_SIZE: u64 = 16 << 40;

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

fn random_id() -> String {
    use std::io::Read;
    let mut b = [0u8; 32];
    let ok = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    if ok.is_err() {
        // Unique enough without the kernel's randomness: time and pid.
        let seed = format!("{}-{}", now_ms(), std::process::id());
        let d = crate::image::Digest::of(seed.as_bytes()).to_string();
        return d[7..].to_string();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn valid_name(n: &str) -> bool {
    let mut chars = n.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && n.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// The image config's fields the agent applies.
fn image_config(blob: &[u8]) -> ImageConfig {
    let v: serde_json::Value = serde_json::from_slice(blob).unwrap_or_default();
    let c = &v["config"];
    let strings = |k: &str| -> Option<Vec<String>> {
        c[k].as_array().map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
    };
    let text = |k: &str| c[k].as_str().filter(|s| !s.is_empty()).map(String::from);
    ImageConfig {
        entrypoint: strings("Entrypoint"),
        cmd: strings("Cmd"),
        env: strings("Env").unwrap_or_default(),
        working_dir: text("WorkingDir"),
        user: text("User"),
    }
}

fn check_request(req: &CreateRequest) -> Result<(), ApiError> {
    let bad = |m: String| Err(ApiError::BadRequest(m));
    if req.image.trim().is_empty() {
        return bad("image is required".into());
    }
    if let Some(n) = &req.name {
        if !valid_name(n) {
            return bad(format!(
                "invalid name {:?}: letters, digits, '_', '.' and '-', starting with a letter or digit",
                crate::text::echo(n)
            ));
        }
    }
    if let Some(e) = req
        .env
        .iter()
        .find(|e| !e.contains('=') || e.starts_with('='))
    {
        return bad(format!(
            "invalid env entry {:?}: KEY=value",
            crate::text::echo(e)
        ));
    }
    if req.vcpus.is_some_and(|v| v == 0 || v > 32) {
        return bad("vcpus must be 1 to 32".into());
    }
    if req.memory_mib.is_some_and(|m| !(64..=65536).contains(&m)) {
        return bad("memory_mib must be 64 to 65536".into());
    }
    if req
        .rootfs_size
        .is_some_and(|s| !(MIN_ROOTFS_SIZE..=MAX_ROOTFS_SIZE).contains(&s))
    {
        return bad(format!(
            "rootfs_size must be {} MiB to {} TiB",
            MIN_ROOTFS_SIZE >> 20,
            MAX_ROOTFS_SIZE >> 40
        ));
    }
    super::network::check_request(req.network.as_deref(), &req.publish)
        .map_err(ApiError::BadRequest)?;
    super::mounts::check(&req.mounts).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    for list in [&req.cmd, &req.entrypoint].into_iter().flatten() {
        if list.iter().any(|a| a.contains('\0')) {
            return bad("arguments cannot hold NUL bytes".into());
        }
    }
    Ok(())
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
        let r = c.snapshot();
        // An exited container starts again as Docker's does: a new VM on
        // the same root filesystem, its logs going on where they ended.
        if !matches!(r.state, ContainerState::Created | ContainerState::Exited) {
            return Err(ApiError::Conflict(format!(
                "container {} is {}; only a created or exited container can start",
                &r.id[..12],
                r.state.as_str()
            )));
        }
        // Volumes and the network first: a refusal (a volume another
        // container writes, a host port in use, a full subnet) leaves the
        // container created, to start again later.
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
        let r = c.update(|r| {
            r.state = ContainerState::Starting;
            r.net = ep;
            r.exit_code = None;
            r.signal = None;
            r.error = None;
            r.finished_ms = None;
        });
        self.save(&r);
        c.stdio.restarted();
        c.exited.send_replace(false);
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

    /// The container's disk (made from its image the first time) and the
    /// agent's initramfs.
    pub(super) async fn prepare_disks(
        &self,
        r: &ContainerRecord,
    ) -> Result<(PathBuf, PathBuf), String> {
        let (state_dir, image, agent) = (
            self.cfg.state_dir.clone(),
            r.image.clone(),
            self.cfg.agent.clone(),
        );
        let rootfs = self.records.dir(&r.id).join("rootfs.ext4");
        let size = r.config.rootfs_size;
        tokio::task::spawn_blocking(move || -> Result<_, String> {
            use crate::image::{rootfs as fs, store::Store};
            // Made once: files copied into a created container (husk cp)
            // are in it already.
            if !rootfs.exists() {
                let store = Store::open(&state_dir).map_err(|e| e.to_string())?;
                let record = store.get(&image).map_err(|e| e.to_string())?;
                let tmp = rootfs.with_extension("new");
                fs::export(&store, &record, fs::RootfsOptions::default(), &tmp, None)
                    .map_err(|e| format!("cannot build the root filesystem: {e}"))?;
                // Room for what the container writes, as Docker gives it.
                let want = match size {
                    Some(s) => s,
                    None => {
                        let have = std::fs::metadata(&tmp).map_err(|e| e.to_string())?.len();
                        have.max(DEFAULT_ROOTFS_SIZE)
                    }
                };
                fs::grow(&tmp, want)
                    .map_err(|e| format!("cannot size the root filesystem: {e}"))?;
                std::fs::rename(&tmp, &rootfs).map_err(|e| e.to_string())?;
            }
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
    pub(super) async fn vm_spec(
        &self,
        r: &ContainerRecord,
        name: &str,
        plan: &super::mounts::Plan,
        ep: Option<&super::network::Endpoint>,
    ) -> Result<VmSpec, String> {
        let (rootfs, initramfs) = self.prepare_disks(r).await?;
        let dir = self.cfg.run_dir.join(name);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(VmSpec {
            dir,
            kernel: self.cfg.kernel.clone(),
            initramfs,
            rootfs,
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

    async fn boot(&self, c: &Arc<Container>) -> Result<(AgentClient, Process), BootFailure> {
        let r = c.snapshot();
        let hostname = hostname_of(&r);
        let ep = r.net.clone();
        let plan =
            super::mounts::plan(&self.volumes, &r.config.mounts).map_err(|e| e.to_string())?;
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
    async fn pump(self: Arc<Self>, c: Arc<Container>, mut p: Process) {
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
        c.exited.send_replace(true);
        if r.config.auto_remove {
            self.forget(&r.id);
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

/// The image's canonical reference and config, from the store.
fn resolve_image(
    state_dir: &std::path::Path,
    reference: &str,
) -> Result<(String, ImageConfig, Vec<String>), ApiError> {
    use crate::image::store::Store;
    let store = Store::open(state_dir).map_err(|e| ApiError::Internal(e.to_string()))?;
    let record = store.get(reference).map_err(|e| {
        ApiError::NotFound(format!(
            "{e}; pull or import it first (husk pull, husk image import)"
        ))
    })?;
    let blob = store
        .read_blob(&record.config)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok((record.reference, image_config(&blob), image_volumes(&blob)))
}

fn remove_volumes(vols: &super::volume::VolumeManager, names: Vec<String>) {
    for n in names {
        if let Err(e) = vols.remove(&n, vec![]) {
            tracing::warn!("cannot remove an anonymous volume: {e}");
        }
    }
}

/// The image's `VOLUME`s: the keys of its config's `Volumes` object.
fn image_volumes(blob: &[u8]) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_slice(blob).unwrap_or_default();
    v["config"]["Volumes"]
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_checked_before_anything_happens() {
        let ok = CreateRequest {
            image: "busybox".into(),
            ..Default::default()
        };
        assert!(check_request(&ok).is_ok());
        for (bad, why) in [
            (
                CreateRequest {
                    image: " ".into(),
                    ..ok.clone()
                },
                "image is required",
            ),
            (
                CreateRequest {
                    name: Some("-x".into()),
                    ..ok.clone()
                },
                "invalid name",
            ),
            (
                CreateRequest {
                    env: vec!["NOEQ".into()],
                    ..ok.clone()
                },
                "invalid env",
            ),
            (
                CreateRequest {
                    vcpus: Some(0),
                    ..ok.clone()
                },
                "vcpus",
            ),
            (
                CreateRequest {
                    memory_mib: Some(1),
                    ..ok.clone()
                },
                "memory_mib",
            ),
        ] {
            let e = check_request(&bad).unwrap_err();
            assert!(
                matches!(e, ApiError::BadRequest(_)) && e.to_string().contains(why),
                "{e}"
            );
        }
    }

    #[test]
    fn the_image_config_is_read_leniently() {
        let c = image_config(
            br#"{"config": {"Entrypoint": ["/ep"], "Cmd": null, "Env": ["A=1"], "WorkingDir": "", "User": "app"}}"#,
        );
        assert_eq!(c.entrypoint, Some(vec!["/ep".to_string()]));
        assert_eq!((c.cmd, c.working_dir), (None, None));
        assert_eq!(
            (c.env, c.user),
            (vec!["A=1".to_string()], Some("app".into()))
        );
        assert_eq!(image_config(b"not json"), ImageConfig::default());
    }
}
