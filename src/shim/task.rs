//! containerd's task service (runtime v2, `containerd.task.v2.Task`) for
//! the containers of one pod: each container's init process and execs
//! run in the pod's VM through the guest agent; their states, exits and
//! events are kept here.
//!
//! A container's process starts at `Start`: `Create` prepares everything
//! the start needs (the pod's VM, booted by the pod's first container,
//! the root filesystem mounted in the pod's share, the stdio FIFOs named)
//! so that what can fail, fails there.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use containerd_shim::api;
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::protos::shim_async::Task;
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc::{self, r#async::TtrpcContext};
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Context, ExitSignal, TtrpcResult};
use tokio::sync::{watch, Mutex};

use super::config::{self, Role, ShimConfig};
use super::pod::{self, PodDir, PodVm};
use super::spec;
use super::stdio::{self, StdioPaths};
use crate::agent::client::ProcessInput;
use crate::agent::protocol::{CgroupStats, PodContainer, ProcessSpec, WindowSize};
use containerd_shim::protos::cgroups_v2::metrics::Metrics;

/// A process's exit: its code (128+N after signal N) and when.
type Exit = Option<(u32, Timestamp)>;

struct Proc {
    io: StdioPaths,
    /// Its pid in the guest, once started.
    pid: u32,
    started: bool,
    input: Option<ProcessInput>,
    exit: watch::Sender<Exit>,
    /// An exec's process, until it starts.
    exec_spec: Option<ProcessSpec>,
}

impl Proc {
    fn new(io: StdioPaths) -> Proc {
        Proc {
            io,
            pid: 0,
            started: false,
            input: None,
            exit: watch::channel(None).0,
            exec_spec: None,
        }
    }

    fn exited(&self) -> Exit {
        self.exit.borrow().clone()
    }

    fn status(&self) -> api::Status {
        match (self.started, self.exited().is_some()) {
            (_, true) => api::Status::STOPPED,
            (true, false) => api::Status::RUNNING,
            (false, false) => api::Status::CREATED,
        }
    }
}

struct Ctr {
    bundle: String,
    init: Proc,
    /// The container as the agent will start it.
    pending: Option<PodContainer>,
    execs: HashMap<String, Proc>,
}

#[derive(Default)]
struct State {
    pod: Option<Arc<PodVm>>,
    containers: HashMap<String, Ctr>,
}

/// The task service of one shim (one pod).
#[derive(Clone)]
pub struct Service {
    cfg: Arc<Result<ShimConfig, String>>,
    /// The configuration file named (`$HUSK_SHIM_CONFIG`, which `start`
    /// sets from the runtime options' `ConfigPath`).
    cfg_path: Option<PathBuf>,
    namespace: String,
    /// The pod: the shim's id (its first container, the sandbox).
    pod_id: String,
    publisher: Arc<RemotePublisher>,
    exit: Arc<ExitSignal>,
    state: Arc<Mutex<State>>,
}

fn status(code: ttrpc::Code, msg: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg.into()))
}

fn not_found(what: &str) -> ttrpc::Error {
    status(ttrpc::Code::NOT_FOUND, format!("{what} not found"))
}

fn internal(e: impl std::fmt::Display) -> ttrpc::Error {
    status(ttrpc::Code::INTERNAL, e.to_string())
}

fn now() -> Timestamp {
    Timestamp::from(SystemTime::now())
}

impl State {
    fn ctr(&mut self, id: &str) -> TtrpcResult<&mut Ctr> {
        self.containers
            .get_mut(id)
            .ok_or_else(|| not_found(&format!("container {id}")))
    }

    fn proc(&mut self, id: &str, exec_id: &str) -> TtrpcResult<&mut Proc> {
        let c = self.ctr(id)?;
        if exec_id.is_empty() {
            Ok(&mut c.init)
        } else {
            c.execs
                .get_mut(exec_id)
                .ok_or_else(|| not_found(&format!("exec {exec_id} of {id}")))
        }
    }
}

impl Service {
    pub fn new(
        cfg: Result<ShimConfig, String>,
        namespace: &str,
        pod_id: &str,
        publisher: RemotePublisher,
        exit: Arc<ExitSignal>,
    ) -> Service {
        Service {
            cfg: Arc::new(cfg),
            cfg_path: std::env::var_os(config::CONFIG_ENV)
                .filter(|p| !p.is_empty())
                .map(PathBuf::from),
            namespace: namespace.to_string(),
            pod_id: pod_id.to_string(),
            publisher: Arc::new(publisher),
            exit,
            state: Arc::new(Mutex::new(State::default())),
        }
    }

    fn cfg(&self) -> TtrpcResult<&ShimConfig> {
        self.cfg
            .as_ref()
            .as_ref()
            .map_err(|e| status(ttrpc::Code::FAILED_PRECONDITION, e.clone()))
    }

    fn pod_dir(&self) -> TtrpcResult<PodDir> {
        Ok(PodDir::new(self.cfg()?, &self.namespace, &self.pod_id))
    }

    async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        let r = self
            .publisher
            .publish(Context::default(), topic, &self.namespace, event)
            .await;
        if let Err(e) = r {
            log::warn!("publish {topic}: {e}");
        }
    }

    /// The pod's VM, booted on the first call (sized by `ann`).
    async fn pod(
        &self,
        state: &mut State,
        ann: &HashMap<String, String>,
    ) -> TtrpcResult<Arc<PodVm>> {
        if let Some(p) = &state.pod {
            return Ok(p.clone());
        }
        let cfg = self.cfg()?;
        let (vcpus, mem) = cfg
            .pod_size(ann)
            .map_err(|e| status(ttrpc::Code::INVALID_ARGUMENT, e.to_string()))?;
        let vm = PodVm::start(cfg, self.pod_dir()?, vcpus, mem)
            .await
            .map_err(internal)?;
        log::info!(
            "pod {} VM up on {} in {} ms",
            self.pod_id,
            vm.backend,
            vm.boot.as_millis()
        );
        let vm = Arc::new(vm);
        state.pod = Some(vm.clone());
        Ok(vm)
    }

    /// Follows a started process: its stdio, then its exit, published.
    fn follow(
        &self,
        id: String,
        exec_id: String,
        p: crate::agent::client::Process,
        io: StdioPaths,
        exit: watch::Sender<Exit>,
    ) {
        let svc = self.clone();
        let pid = p.pid() as u32;
        tokio::spawn(async move {
            let code = match stdio::relay(p, io).await {
                Ok(s) => s.shell_code() as u32,
                Err(e) => {
                    log::warn!("{id} {exec_id}: {e}");
                    128 + libc::SIGKILL as u32
                }
            };
            let at = now();
            exit.send_replace(Some((code, at.clone())));
            let ev = TaskExit {
                container_id: id.clone(),
                id: if exec_id.is_empty() { id } else { exec_id },
                pid,
                exit_status: code,
                exited_at: Some(at).into(),
                ..Default::default()
            };
            svc.publish(topics::TASK_EXIT_EVENT_TOPIC, Box::new(ev))
                .await;
        });
    }

    /// Ends the pod once it has no containers left.
    async fn end_pod_if_empty(&self, state: &mut State) {
        if !state.containers.is_empty() {
            return;
        }
        if let Some(pod) = state.pod.take() {
            let _ = pod.agent.shutdown().await;
            let dir = pod.dir.clone();
            let _ = tokio::task::spawn_blocking(move || {
                let _ = pod.vm.wait_exit(std::time::Duration::from_secs(2));
                pod::tear_down(&dir)
            })
            .await;
        }
    }
}

fn stdio_of(stdin: &str, stdout: &str, stderr: &str, terminal: bool) -> StdioPaths {
    StdioPaths {
        stdin: stdin.into(),
        stdout: stdout.into(),
        stderr: stderr.into(),
        terminal,
    }
}

#[async_trait]
impl Task for Service {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        let bundle = PathBuf::from(&req.bundle);
        let spec = oci_spec::runtime::Spec::load(bundle.join("config.json"))
            .map_err(|e| status(ttrpc::Code::INVALID_ARGUMENT, e.to_string()))?;
        let ann = spec::annotations(&spec);
        // `start` made this server with the configuration file the
        // runtime options name; a container naming another cannot use it.
        let named = req
            .options
            .as_ref()
            .and_then(|o| config::options_config_path(&o.type_url, &o.value));
        if let Some(p) = named.filter(|p| Some(p) != self.cfg_path.as_ref()) {
            return Err(status(
                ttrpc::Code::FAILED_PRECONDITION,
                format!(
                    "the runtime options name {}, but this pod's shim runs with {}",
                    p.display(),
                    self.cfg_path
                        .as_ref()
                        .map_or_else(|| config::DEFAULT_PATH.into(), |c| c.display().to_string())
                ),
            ));
        }
        let mut state = self.state.lock().await;
        if state.containers.contains_key(&req.id) {
            return Err(status(
                ttrpc::Code::ALREADY_EXISTS,
                format!("container {} exists", req.id),
            ));
        }
        let join = match config::role(&ann) {
            Role::Sandbox => None,
            Role::Container { sandbox } if sandbox == self.pod_id => Some(sandbox),
            Role::Container { sandbox } => {
                return Err(status(
                    ttrpc::Code::FAILED_PRECONDITION,
                    format!("this shim runs pod {}, not {sandbox}", self.pod_id),
                ))
            }
        };
        let pod = self.pod(&mut state, &ann).await?;
        // `delete` finds the pod from the bundle after a shim was killed.
        let _ = std::fs::write(
            bundle.join(POD_FILE),
            pod.dir.0.as_os_str().as_encoded_bytes(),
        );
        let dir = pod.dir.clone();
        let id = req.id.clone();
        let rootfs = req.rootfs.clone();
        let prepared = tokio::task::spawn_blocking(move || {
            pod::mount_rootfs(&dir, &id, &rootfs, &bundle).map_err(|e| e.to_string())?;
            spec::container(&id, &spec, &dir.share(), join, |src, dst| {
                pod::bind(src, dst).map_err(|e| e.to_string())
            })
            .map_err(|e| e.to_string())
        })
        .await
        .map_err(internal)?;
        let container = match prepared {
            Ok(c) => c,
            Err(e) => {
                pod::remove_container(&pod.dir, &req.id);
                self.end_pod_if_empty(&mut state).await;
                return Err(status(ttrpc::Code::INVALID_ARGUMENT, e));
            }
        };
        let io = stdio_of(&req.stdin, &req.stdout, &req.stderr, req.terminal);
        state.containers.insert(
            req.id.clone(),
            Ctr {
                bundle: req.bundle.clone(),
                init: Proc::new(io),
                pending: Some(container),
                execs: HashMap::new(),
            },
        );
        drop(state);
        let ev = TaskCreate {
            container_id: req.id.clone(),
            bundle: req.bundle.clone(),
            rootfs: req.rootfs.clone(),
            io: Some(TaskIO {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        self.publish(topics::TASK_CREATE_EVENT_TOPIC, Box::new(ev))
            .await;
        Ok(api::CreateTaskResponse {
            pid: std::process::id(),
            ..Default::default()
        })
    }

    async fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        let mut state = self.state.lock().await;
        let pod = state.pod.clone().ok_or_else(|| not_found("pod"))?;
        let started = if req.exec_id.is_empty() {
            let c = state.ctr(&req.id)?;
            let spec = c.pending.take().ok_or_else(|| {
                status(
                    ttrpc::Code::FAILED_PRECONDITION,
                    "the container was started",
                )
            })?;
            pod.agent.create(spec).await
        } else {
            let p = state.proc(&req.id, &req.exec_id)?;
            let spec = p
                .exec_spec
                .take()
                .ok_or_else(|| status(ttrpc::Code::FAILED_PRECONDITION, "the exec was started"))?;
            pod.agent.exec_in(&req.id, spec).await
        };
        let p = state.proc(&req.id, &req.exec_id)?;
        let process = match started {
            Ok(process) => process,
            Err(e) => {
                // As runc: a process that cannot run exits with the shell's code.
                let code = match &e {
                    crate::agent::client::ClientError::CannotRun { exit_code, .. } => *exit_code,
                    _ => 128 + libc::SIGKILL,
                };
                p.started = true;
                p.exit.send_replace(Some((code as u32, now())));
                return Err(status(ttrpc::Code::FAILED_PRECONDITION, e.to_string()));
            }
        };
        p.pid = process.pid() as u32;
        p.started = true;
        p.input = Some(process.input());
        let (pid, io, exit) = (p.pid, p.io.clone(), p.exit.clone());
        drop(state);
        self.follow(req.id.clone(), req.exec_id.clone(), process, io, exit);
        if req.exec_id.is_empty() {
            let ev = TaskStart {
                container_id: req.id.clone(),
                pid,
                ..Default::default()
            };
            self.publish(topics::TASK_START_EVENT_TOPIC, Box::new(ev))
                .await;
        } else {
            let ev = TaskExecStarted {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                pid,
                ..Default::default()
            };
            self.publish(topics::TASK_EXEC_STARTED_EVENT_TOPIC, Box::new(ev))
                .await;
        }
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    async fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        let mut state = self.state.lock().await;
        let bundle = state.ctr(&req.id)?.bundle.clone();
        let p = state.proc(&req.id, &req.exec_id)?;
        let exit = p.exited();
        Ok(api::StateResponse {
            id: req.id.clone(),
            bundle,
            pid: p.pid,
            status: p.status().into(),
            stdin: p.io.stdin.clone(),
            stdout: p.io.stdout.clone(),
            stderr: p.io.stderr.clone(),
            terminal: p.io.terminal,
            exit_status: exit.as_ref().map_or(0, |e| e.0),
            exited_at: exit.map(|e| e.1).into(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        })
    }

    async fn pids(
        &self,
        _ctx: &TtrpcContext,
        req: api::PidsRequest,
    ) -> TtrpcResult<api::PidsResponse> {
        let mut state = self.state.lock().await;
        let c = state.ctr(&req.id)?;
        let processes = std::iter::once(&c.init)
            .chain(c.execs.values())
            .filter(|p| p.started && p.exited().is_none())
            .map(|p| containerd_shim::protos::types::task::ProcessInfo {
                pid: p.pid,
                ..Default::default()
            })
            .collect();
        Ok(api::PidsResponse {
            processes,
            ..Default::default()
        })
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        let mut state = self.state.lock().await;
        let signal = req.signal as i32;
        let targets: Vec<ProcessInput> = {
            let c = state.ctr(&req.id)?;
            let mut procs = vec![];
            if req.exec_id.is_empty() {
                procs.push(&mut c.init);
                if req.all {
                    procs.extend(c.execs.values_mut());
                }
            } else {
                procs.push(
                    c.execs
                        .get_mut(&req.exec_id)
                        .ok_or_else(|| not_found(&format!("exec {}", req.exec_id)))?,
                );
            }
            let mut inputs = vec![];
            for p in procs {
                if p.exited().is_some() {
                    continue;
                }
                match &p.input {
                    Some(i) => inputs.push(i.clone()),
                    // Created, never started: it ends here.
                    None => {
                        p.exit
                            .send_replace(Some((128 + signal.max(0) as u32, now())));
                    }
                }
            }
            if inputs.is_empty() && !req.all && c.init.exited().is_some() && req.exec_id.is_empty()
            {
                return Err(not_found("process (it has exited)"));
            }
            inputs
        };
        drop(state);
        for i in targets {
            i.signal(signal).await.map_err(internal)?;
        }
        Ok(api::Empty::default())
    }

    async fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        let mut state = self.state.lock().await;
        let p = state.proc(&req.id, &req.exec_id)?;
        if p.started && p.exited().is_none() {
            return Err(status(
                ttrpc::Code::FAILED_PRECONDITION,
                format!("{} is still running", req.id),
            ));
        }
        let (pid, exit) = (p.pid, p.exited());
        if req.exec_id.is_empty() {
            state.containers.remove(&req.id);
            let dir = self.pod_dir()?;
            let id = req.id.clone();
            let _ = tokio::task::spawn_blocking(move || pod::remove_container(&dir, &id)).await;
            self.end_pod_if_empty(&mut state).await;
        } else {
            state.ctr(&req.id)?.execs.remove(&req.exec_id);
        }
        drop(state);
        let (code, at) = exit.unwrap_or((128 + libc::SIGKILL as u32, now()));
        if req.exec_id.is_empty() {
            let ev = TaskDelete {
                container_id: req.id.clone(),
                id: req.id.clone(),
                pid,
                exit_status: code,
                exited_at: Some(at.clone()).into(),
                ..Default::default()
            };
            self.publish(topics::TASK_DELETE_EVENT_TOPIC, Box::new(ev))
                .await;
        }
        Ok(api::DeleteResponse {
            pid,
            exit_status: code,
            exited_at: Some(at).into(),
            ..Default::default()
        })
    }

    async fn exec(
        &self,
        _ctx: &TtrpcContext,
        req: api::ExecProcessRequest,
    ) -> TtrpcResult<api::Empty> {
        let process: oci_spec::runtime::Process = serde_json::from_slice(&req.spec.value)
            .map_err(|e| status(ttrpc::Code::INVALID_ARGUMENT, format!("exec spec: {e}")))?;
        let mut state = self.state.lock().await;
        let c = state.ctr(&req.id)?;
        if c.execs.contains_key(&req.exec_id) {
            return Err(status(
                ttrpc::Code::ALREADY_EXISTS,
                format!("exec {} exists", req.exec_id),
            ));
        }
        let mut p = Proc::new(stdio_of(&req.stdin, &req.stdout, &req.stderr, req.terminal));
        let mut spec = spec::process(&process);
        spec.tty = req.terminal;
        p.exec_spec = Some(spec);
        c.execs.insert(req.exec_id.clone(), p);
        drop(state);
        let ev = TaskExecAdded {
            container_id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        };
        self.publish(topics::TASK_EXEC_ADDED_EVENT_TOPIC, Box::new(ev))
            .await;
        Ok(api::Empty::default())
    }

    async fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        let mut state = self.state.lock().await;
        let p = state.proc(&req.id, &req.exec_id)?;
        let window = WindowSize {
            rows: req.height.min(u16::MAX as u32) as u16,
            cols: req.width.min(u16::MAX as u32) as u16,
        };
        match &mut p.exec_spec {
            // Not started yet: it starts with this size.
            Some(s) => s.window = Some(window),
            None => {
                if let Some(i) = p.input.clone() {
                    drop(state);
                    i.resize(window).await.map_err(internal)?;
                }
            }
        }
        Ok(api::Empty::default())
    }

    async fn close_io(
        &self,
        _ctx: &TtrpcContext,
        req: api::CloseIORequest,
    ) -> TtrpcResult<api::Empty> {
        let mut state = self.state.lock().await;
        let p = state.proc(&req.id, &req.exec_id)?;
        if let (true, Some(i)) = (req.stdin, p.input.clone()) {
            drop(state);
            let _ = i.close_stdin().await;
        }
        Ok(api::Empty::default())
    }

    async fn update(
        &self,
        _ctx: &TtrpcContext,
        req: api::UpdateTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        // containerd (CRI's UpdateContainerResources) sends the OCI
        // `LinuxResources` as JSON, as runc's shim reads it.
        let value = req.resources.as_ref().map_or(&[][..], |a| &a.value[..]);
        let r: oci_spec::runtime::LinuxResources = serde_json::from_slice(value)
            .map_err(|e| status(ttrpc::Code::INVALID_ARGUMENT, format!("resources: {e}")))?;
        let resources = spec::resources(&r);
        let mut state = self.state.lock().await;
        let pod = state.pod.clone().ok_or_else(|| not_found("pod"))?;
        let c = state.ctr(&req.id)?;
        if let Some(pending) = &mut c.pending {
            // Not started: it starts with these limits.
            let p = &mut pending.resources;
            let r = resources;
            p.memory_max = r.memory_max.or(p.memory_max);
            p.cpu_quota = r.cpu_quota.or(p.cpu_quota);
            p.cpu_period = r.cpu_period.or(p.cpu_period);
            p.cpu_shares = r.cpu_shares.or(p.cpu_shares);
            p.pids_max = r.pids_max.or(p.pids_max);
            return Ok(api::Empty::default());
        }
        if c.init.exited().is_some() {
            return Err(status(
                ttrpc::Code::FAILED_PRECONDITION,
                format!("container {} has exited", req.id),
            ));
        }
        drop(state);
        pod.agent
            .update(&req.id, resources)
            .await
            .map_err(|e| status(ttrpc::Code::FAILED_PRECONDITION, e.to_string()))?;
        Ok(api::Empty::default())
    }

    async fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        let pod = {
            let mut state = self.state.lock().await;
            let pod = state.pod.clone().ok_or_else(|| not_found("pod"))?;
            let c = state.ctr(&req.id)?;
            if c.pending.is_some() || c.init.exited().is_some() {
                return Err(status(
                    ttrpc::Code::FAILED_PRECONDITION,
                    format!("container {} is not running", req.id),
                ));
            }
            pod
        };
        let stats = pod
            .agent
            .stats(&req.id)
            .await
            .map_err(|e| status(ttrpc::Code::FAILED_PRECONDITION, e.to_string()))?;
        let any =
            containerd_shim::util::convert_to_any(Box::new(metrics(&stats))).map_err(internal)?;
        Ok(api::StatsResponse {
            stats: Some(any).into(),
            ..Default::default()
        })
    }

    async fn wait(
        &self,
        _ctx: &TtrpcContext,
        req: api::WaitRequest,
    ) -> TtrpcResult<api::WaitResponse> {
        let mut rx = {
            let mut state = self.state.lock().await;
            state.proc(&req.id, &req.exec_id)?.exit.subscribe()
        };
        let exit = rx
            .wait_for(Option::is_some)
            .await
            .map_err(internal)?
            .clone()
            .unwrap_or((0, now()));
        Ok(api::WaitResponse {
            exit_status: exit.0,
            exited_at: Some(exit.1).into(),
            ..Default::default()
        })
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let mut state = self.state.lock().await;
        let pid = state.ctr(&req.id).map(|c| c.init.pid).unwrap_or(0);
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: pid,
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        })
    }

    async fn shutdown(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ShutdownRequest,
    ) -> TtrpcResult<api::Empty> {
        let mut state = self.state.lock().await;
        if !state.containers.is_empty() {
            return Ok(api::Empty::default());
        }
        self.end_pod_if_empty(&mut state).await;
        self.exit.signal();
        Ok(api::Empty::default())
    }
}

/// A container's cgroup figures in the shape containerd (`ctr task
/// metrics`, CRI's stats) reads from a shim on cgroup v2: limits that
/// are `max` as cgroups' Go library gives them (memory: `u64::MAX`,
/// pids: 0).
pub fn metrics(s: &CgroupStats) -> Metrics {
    use containerd_shim::protos::cgroups_v2::metrics::{
        CPUStat, MemoryEvents, MemoryStat, PidsStat,
    };
    let m = |k: &str| s.memory_stat.get(k).copied().unwrap_or(0);
    let c = |k: &str| s.cpu_stat.get(k).copied().unwrap_or(0);
    let e = |k: &str| s.memory_events.get(k).copied().unwrap_or(0);
    let memory = MemoryStat {
        anon: m("anon"),
        file: m("file"),
        kernel_stack: m("kernel_stack"),
        slab: m("slab"),
        sock: m("sock"),
        shmem: m("shmem"),
        file_mapped: m("file_mapped"),
        file_dirty: m("file_dirty"),
        file_writeback: m("file_writeback"),
        anon_thp: m("anon_thp"),
        inactive_anon: m("inactive_anon"),
        active_anon: m("active_anon"),
        inactive_file: m("inactive_file"),
        active_file: m("active_file"),
        unevictable: m("unevictable"),
        slab_reclaimable: m("slab_reclaimable"),
        slab_unreclaimable: m("slab_unreclaimable"),
        pgfault: m("pgfault"),
        pgmajfault: m("pgmajfault"),
        workingset_refault: m("workingset_refault"),
        workingset_activate: m("workingset_activate"),
        workingset_nodereclaim: m("workingset_nodereclaim"),
        pgrefill: m("pgrefill"),
        pgscan: m("pgscan"),
        pgsteal: m("pgsteal"),
        pgactivate: m("pgactivate"),
        pgdeactivate: m("pgdeactivate"),
        pglazyfree: m("pglazyfree"),
        pglazyfreed: m("pglazyfreed"),
        thp_fault_alloc: m("thp_fault_alloc"),
        thp_collapse_alloc: m("thp_collapse_alloc"),
        usage: s.memory_current,
        usage_limit: s.memory_max.unwrap_or(u64::MAX),
        swap_usage: s.swap_current,
        ..Default::default()
    };
    let cpu = CPUStat {
        usage_usec: c("usage_usec"),
        user_usec: c("user_usec"),
        system_usec: c("system_usec"),
        nr_periods: c("nr_periods"),
        nr_throttled: c("nr_throttled"),
        throttled_usec: c("throttled_usec"),
        ..Default::default()
    };
    let pids = PidsStat {
        current: s.pids_current,
        limit: s.pids_max.unwrap_or(0),
        ..Default::default()
    };
    let memory_events = MemoryEvents {
        low: e("low"),
        high: e("high"),
        max: e("max"),
        oom: e("oom"),
        oom_kill: e("oom_kill"),
        ..Default::default()
    };
    Metrics {
        pids: Some(pids).into(),
        cpu: Some(cpu).into(),
        memory: Some(memory).into(),
        memory_events: Some(memory_events).into(),
        ..Default::default()
    }
}

/// The file in a container's bundle that names its pod's directory.
pub const POD_FILE: &str = "husk-pod";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_figures_become_containerds_metrics() {
        let mut s = CgroupStats {
            memory_current: 5 << 20,
            memory_max: Some(64 << 20),
            pids_current: 3,
            ..Default::default()
        };
        s.memory_stat.insert("anon".into(), 4 << 20);
        s.cpu_stat.insert("usage_usec".into(), 1234);
        let m = metrics(&s);
        assert_eq!(m.memory.usage, 5 << 20);
        assert_eq!(m.memory.usage_limit, 64 << 20);
        assert_eq!(m.memory.anon, 4 << 20);
        assert_eq!(m.cpu.usage_usec, 1234);
        assert_eq!((m.pids.current, m.pids.limit), (3, 0));
        s.memory_max = None;
        assert_eq!(metrics(&s).memory.usage_limit, u64::MAX);
    }
}
