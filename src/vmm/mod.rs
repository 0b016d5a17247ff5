//! One microVM per process: `husk vmm`.
//!
//! The VMM thread owns the [`Vmm`], which moves through
//! `NotStarted → Running ⇄ Paused → Exited`. It runs one event loop over the
//! API's event fd, the exit event fd, serial input and the metrics timer.

pub mod api;
pub mod arch;
pub mod builder;
pub mod client;
pub mod config;
pub mod devices;
pub mod exit;
pub mod kvm;
pub mod logger;
pub mod metrics;
pub mod sink;

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::timerfd::TimerFd;

use api::{ApiReceiver, VmmAction, VmmData};
use builder::{RunningVm, StartError};
use config::{
    BootSourceConfig, ConfigError, LoggerConfig, MachineConfig, MetricsConfig, SerialConfig,
    VmConfig,
};
use exit::{ExitNotifier, ExitReason};
use logger::{Logger, LoggerError};
use metrics::{MetricsError, MetricsSink, METRICS};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// How often metrics are written once a metrics file is configured.
pub const METRICS_PERIOD: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmState {
    NotStarted,
    Running,
    Paused,
    Exited,
}

impl VmState {
    /// The names Firecracker's `GET /` uses.
    pub fn as_str(&self) -> &'static str {
        match self {
            VmState::NotStarted => "Not started",
            VmState::Running => "Running",
            VmState::Paused => "Paused",
            VmState::Exited => "Exited",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VmmActionError {
    #[error("the requested operation is not supported after starting the microVM")]
    AfterStart,
    #[error("the microVM is not running (state: {0})")]
    NotRunning(&'static str),
    #[error("the microVM is not paused (state: {0})")]
    NotPaused(&'static str),
    #[error("cannot start the microVM without a kernel: PUT /boot-source first")]
    NoKernel,
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot start the microVM: {0}")]
    Start(#[from] StartError),
    #[error(transparent)]
    Logger(#[from] LoggerError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error("cannot send Ctrl-Alt-Del: {0}")]
    CtrlAltDel(devices::legacy::i8042::I8042Error),
    #[error("cannot pause or resume: {0}")]
    Vcpu(#[from] kvm::vcpu::VcpuError),
}

pub struct Vmm {
    id: String,
    config: VmConfig,
    state: VmState,
    running: Option<RunningVm>,
    exit: Arc<ExitNotifier>,
    exit_code: Option<i32>,
    exit_reason: Option<ExitReason>,
    logger: Logger,
    metrics: MetricsSink,
    metrics_timer: TimerFd,
    api: Option<ApiReceiver>,
    stdin: Option<File>,
    stdin_watched: bool,
    /// The KVM VM, being opened in the background since start-up.
    opening: Option<std::thread::JoinHandle<Result<kvm::Vm, kvm::VmError>>>,
}

impl Vmm {
    pub fn new(id: String, logger: Logger, api: Option<ApiReceiver>) -> std::io::Result<Self> {
        Ok(Vmm {
            id,
            config: VmConfig::default(),
            state: VmState::NotStarted,
            running: None,
            exit: Arc::new(ExitNotifier::new()?),
            exit_code: None,
            exit_reason: None,
            logger,
            metrics: MetricsSink::default(),
            metrics_timer: TimerFd::new()?,
            api,
            stdin: None,
            stdin_watched: false,
            opening: None,
        })
    }

    /// Opens KVM and creates the (empty) VM on another thread, so that is
    /// done by the time the configuration arrives.
    pub fn open_vm_early(&mut self) {
        self.opening = std::thread::Builder::new()
            .name("husk-kvm-open".into())
            .spawn(kvm::Vm::open)
            .ok();
    }

    fn take_vm(&mut self) -> Result<kvm::Vm, kvm::VmError> {
        match self.opening.take().map(|h| h.join()) {
            Some(Ok(opened)) => opened,
            // Not started early (or its thread died): open it now.
            _ => kvm::Vm::open(),
        }
    }

    /// The process exit status, once the guest has stopped.
    pub fn exit_code(&self) -> Option<i32> {
        self.exit_code
    }

    fn require_not_started(&self) -> Result<(), VmmActionError> {
        match self.state {
            VmState::NotStarted => Ok(()),
            _ => Err(VmmActionError::AfterStart),
        }
    }

    /// Applies a whole configuration (the `--config-file` path).
    pub fn apply_config(&mut self, cfg: VmConfig) -> Result<(), VmmActionError> {
        if let Some(l) = cfg.logger {
            self.set_logger(l)?;
        }
        if let Some(m) = cfg.metrics {
            self.set_metrics(m)?;
        }
        if let Some(s) = cfg.serial {
            self.set_serial(s)?;
        }
        self.set_machine_config(cfg.machine_config)?;
        if let Some(b) = cfg.boot_source {
            self.set_boot_source(b)?;
        }
        Ok(())
    }

    fn set_boot_source(&mut self, b: BootSourceConfig) -> Result<(), VmmActionError> {
        self.require_not_started()?;
        b.validate()?;
        self.config.boot_source = Some(b);
        Ok(())
    }

    fn set_machine_config(&mut self, m: MachineConfig) -> Result<(), VmmActionError> {
        self.require_not_started()?;
        m.validate()?;
        self.config.machine_config = m;
        Ok(())
    }

    fn set_serial(&mut self, s: SerialConfig) -> Result<(), VmmActionError> {
        self.require_not_started()?;
        self.config.serial = Some(s);
        Ok(())
    }

    fn set_logger(&mut self, l: LoggerConfig) -> Result<(), VmmActionError> {
        self.logger.configure(&l)?;
        self.config.logger = Some(l);
        Ok(())
    }

    fn set_metrics(&mut self, m: MetricsConfig) -> Result<(), VmmActionError> {
        self.metrics.configure(Path::new(&m.metrics_path))?;
        // A timer that cannot be armed only loses the periodic flushes.
        if let Err(e) = self
            .metrics_timer
            .reset(METRICS_PERIOD, Some(METRICS_PERIOD))
        {
            tracing::warn!("cannot arm the metrics timer: {e}");
        }
        self.config.metrics = Some(m);
        Ok(())
    }

    /// Builds and boots the configured microVM.
    pub fn start(&mut self) -> Result<(), VmmActionError> {
        self.require_not_started()?;
        let boot = self
            .config
            .boot_source
            .clone()
            .ok_or(VmmActionError::NoKernel)?;
        let opened = self.take_vm().map_err(StartError::from)?;
        let vm = builder::build_and_start(
            opened,
            &boot,
            &self.config.machine_config,
            self.config.serial.as_ref(),
            self.exit.clone(),
        )?;
        self.running = Some(vm);
        self.state = VmState::Running;
        METRICS.vmm.instance_starts.inc();
        tracing::info!(id = %self.id, "microVM started");
        Ok(())
    }

    fn running(&self) -> Result<&RunningVm, VmmActionError> {
        self.running
            .as_ref()
            .ok_or(VmmActionError::NotRunning(self.state.as_str()))
    }

    fn pause(&mut self) -> Result<(), VmmActionError> {
        if self.state != VmState::Running {
            return Err(VmmActionError::NotRunning(self.state.as_str()));
        }
        for v in &self.running()?.vcpus {
            v.pause()?;
        }
        self.state = VmState::Paused;
        Ok(())
    }

    fn resume(&mut self) -> Result<(), VmmActionError> {
        if self.state != VmState::Paused {
            return Err(VmmActionError::NotPaused(self.state.as_str()));
        }
        for v in &self.running()?.vcpus {
            v.resume()?;
        }
        self.state = VmState::Running;
        Ok(())
    }

    fn send_ctrl_alt_del(&mut self) -> Result<(), VmmActionError> {
        let vm = self.running()?;
        let mut i8042 = vm.i8042.lock().unwrap_or_else(|e| e.into_inner());
        i8042
            .trigger_ctrl_alt_del()
            .map_err(VmmActionError::CtrlAltDel)
    }

    fn info_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "state": self.state.as_str(),
            "vmm_version": VERSION,
            "app_name": "husk",
        })
    }

    /// Carries out one API action.
    pub fn handle(&mut self, action: VmmAction) -> Result<VmmData, VmmActionError> {
        let json = |v: serde_json::Value| Ok(VmmData::Json(v));
        let done = |r: Result<(), VmmActionError>| r.map(|_| VmmData::Empty);
        match action {
            VmmAction::GetVmInfo => json(self.info_json()),
            VmmAction::GetVersion => json(serde_json::json!({
                "firecracker_version": VERSION,
                "vmm_version": VERSION,
            })),
            VmmAction::GetMachineConfig => {
                json(serde_json::to_value(&self.config.machine_config).unwrap_or_default())
            }
            VmmAction::GetFullConfig => {
                json(serde_json::to_value(&self.config).unwrap_or_default())
            }
            VmmAction::PutBootSource(b) => done(self.set_boot_source(b)),
            VmmAction::PutMachineConfig(m) => done(self.set_machine_config(m)),
            VmmAction::PatchMachineConfig(u) => {
                let patched = self.config.machine_config.patched(u);
                done(self.set_machine_config(patched))
            }
            VmmAction::PutLogger(l) => done(self.set_logger(l)),
            VmmAction::PutMetrics(m) => done(self.set_metrics(m)),
            VmmAction::PutSerial(s) => done(self.set_serial(s)),
            VmmAction::InstanceStart => done(self.start()),
            VmmAction::SendCtrlAltDel => done(self.send_ctrl_alt_del()),
            VmmAction::FlushMetrics => done(self.metrics.flush().map_err(Into::into)),
            VmmAction::Pause => done(self.pause()),
            VmmAction::Resume => done(self.resume()),
        }
    }

    fn serve_api(&mut self) {
        let Some(api) = self.api.as_ref() else { return };
        let _ = api.evt.read();
        let requests: Vec<_> = api.rx.try_iter().collect();
        for req in requests {
            let answer = self.handle(req.action).map_err(|e| {
                tracing::warn!("API request failed: {e}");
                e.to_string()
            });
            // The client may have hung up; nothing to do then.
            let _ = req.reply.send(answer);
        }
    }

    fn on_exit(&mut self) {
        let _ = self.exit.event_fd().read();
        let Some(reason) = self.exit.reason() else {
            return;
        };
        tracing::debug!("guest stopped; stopping vCPUs");
        if let Some(mut vm) = self.running.take() {
            vm.stop_vcpus();
        }
        match &reason {
            ExitReason::VcpuError(msg) => tracing::error!(id = %self.id, "microVM failed: {msg}"),
            r => tracing::info!(id = %self.id, "microVM stopped: {r:?}"),
        }
        if self.metrics.is_configured() {
            if let Err(e) = self.metrics.flush() {
                tracing::warn!("{e}");
            }
        }
        self.state = VmState::Exited;
        self.exit_code = Some(reason.exit_code());
        self.exit_reason = Some(reason);
    }

    /// Why the guest stopped, once it has.
    pub fn exit_reason(&self) -> Option<&ExitReason> {
        self.exit_reason.as_ref()
    }

    /// Starts forwarding stdin to the serial port once the VM runs.
    fn watch_stdin(&mut self, ops: &mut EventOps) {
        if self.running.is_none() || self.stdin.is_some() {
            return;
        }
        let Ok(fd) = std::io::stdin().as_fd().try_clone_to_owned() else {
            return;
        };
        let stdin = File::from(fd);
        // Regular files and /dev/null cannot be polled: there is no
        // interactive input then.
        if ops.add(Events::new(&stdin, EventSet::IN)).is_err() {
            return;
        }
        if let Some(vm) = &self.running {
            let serial = vm.serial.lock().unwrap_or_else(|e| e.into_inner());
            let _ = ops.add(Events::new(serial.space_event(), EventSet::IN));
        }
        self.stdin = Some(stdin);
        self.stdin_watched = true;
    }

    fn on_stdin(&mut self, ops: &mut EventOps) {
        use std::io::Read;
        let (Some(vm), Some(stdin)) = (&self.running, &mut self.stdin) else {
            return;
        };
        let mut serial = vm.serial.lock().unwrap_or_else(|e| e.into_inner());
        let space = serial.input_space().min(4096);
        if space == 0 {
            // The guest is not reading; wait for the buffer to drain.
            let _ = ops.remove(Events::new(stdin, EventSet::IN));
            self.stdin_watched = false;
            return;
        }
        let mut buf = [0u8; 4096];
        match stdin.read(&mut buf[..space]) {
            Ok(0) | Err(_) => {
                let _ = ops.remove(Events::new(stdin, EventSet::IN));
                self.stdin_watched = false;
                self.stdin = None;
            }
            Ok(n) => {
                serial.push_input(&buf[..n]);
            }
        }
    }

    fn on_serial_space(&mut self, ops: &mut EventOps) {
        if let Some(vm) = &self.running {
            let serial = vm.serial.lock().unwrap_or_else(|e| e.into_inner());
            let _ = serial.space_event().read();
        }
        if let (Some(stdin), false) = (&self.stdin, self.stdin_watched) {
            if ops.add(Events::new(stdin, EventSet::IN)).is_ok() {
                self.stdin_watched = true;
            }
        }
    }
}

impl MutEventSubscriber for Vmm {
    fn init(&mut self, ops: &mut EventOps) {
        let mut add = |fd: &dyn AsRawFd| {
            if let Err(e) = ops.add(Events::new_raw(fd.as_raw_fd(), EventSet::IN)) {
                tracing::error!("cannot watch an event source: {e:?}");
            }
        };
        add(self.exit.event_fd());
        add(&self.metrics_timer);
        if let Some(api) = &self.api {
            add(&api.evt);
        }
        self.watch_stdin(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.exit.event_fd().as_raw_fd() {
            self.on_exit();
        } else if self.api.as_ref().is_some_and(|a| a.evt.as_raw_fd() == fd) {
            self.serve_api();
        } else if fd == self.metrics_timer.as_raw_fd() {
            let _ = self.metrics_timer.wait();
            if let Err(e) = self.metrics.flush() {
                tracing::warn!("{e}");
            }
        } else if self.stdin.as_ref().is_some_and(|s| s.as_raw_fd() == fd) {
            self.on_stdin(ops);
        } else {
            self.on_serial_space(ops);
        }
        self.watch_stdin(ops);
    }
}

/// `husk vmm` options.
#[derive(Debug, Clone)]
pub struct VmmOptions {
    pub api_sock: Option<PathBuf>,
    pub config_file: Option<PathBuf>,
    pub id: String,
    pub api_limits: api::server::Limits,
}

/// The command line of `husk vmm` and `husk-vmm`.
#[derive(clap::Args, Debug, Clone)]
pub struct VmmArgs {
    /// Unix socket to serve the per-VM API on.
    #[arg(long, required_unless_present = "no_api")]
    pub api_sock: Option<PathBuf>,
    /// Firecracker-style JSON config; the VM boots at once.
    #[arg(long)]
    pub config_file: Option<PathBuf>,
    /// Serve no API (needs --config-file).
    #[arg(long, requires = "config_file", conflicts_with = "api_sock")]
    pub no_api: bool,
    /// The microVM's id, reported by `GET /`: 1 to 64 letters, digits,
    /// '-' or '_'.
    #[arg(long, default_value = "anonymous-instance", value_parser = parse_id)]
    pub id: String,
    /// Milliseconds an API client has to send a request's head, from its
    /// first byte; the connection is closed after that.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub api_header_timeout_ms: u64,
    /// Milliseconds an API client has to send a request's body once its
    /// head has arrived; it gets a 408 after that.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub api_body_timeout_ms: u64,
    /// Milliseconds an API connection may stay open with no request.
    #[arg(long, default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub api_idle_timeout_ms: u64,
    /// Most API connections open at once (also kept under half the
    /// open-file limit); one more closes the one idle the longest.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u64).range(1..=65536))]
    pub api_max_connections: u64,
}

/// Instance ids end up in paths and logs, so they are kept plain.
pub fn parse_id(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(s.to_string())
    } else {
        Err("an id is 1 to 64 letters, digits, '-' or '_'".into())
    }
}

impl From<VmmArgs> for VmmOptions {
    fn from(a: VmmArgs) -> Self {
        VmmOptions {
            api_sock: a.api_sock,
            config_file: a.config_file,
            id: a.id,
            api_limits: api::server::Limits {
                header_timeout: Duration::from_millis(a.api_header_timeout_ms),
                body_timeout: Duration::from_millis(a.api_body_timeout_ms),
                idle_timeout: Duration::from_millis(a.api_idle_timeout_ms),
                max_connections: a.api_max_connections as usize,
            },
        }
    }
}

/// Runs one microVM until its guest stops. Returns the process exit status:
/// 0 after a guest reset or power-off, 1 when the VMM could not run the
/// VM, 3 after a guest triple fault, 4 after a vCPU error.
pub fn run(opts: VmmOptions) -> i32 {
    let logger = Logger::init();
    let mut api_sock = None;
    let api = match &opts.api_sock {
        Some(path) => {
            let started = api::bind(path).and_then(|listener| {
                let (sender, receiver) = api::channel_pair()?;
                api::spawn_server(listener, sender, opts.api_limits)?;
                Ok(receiver)
            });
            match started {
                Ok(r) => {
                    api_sock = Some(path.clone());
                    Some(r)
                }
                Err(e) => {
                    eprintln!(
                        "husk vmm: cannot serve the API on {}: {e}",
                        crate::text::echo_path(path)
                    );
                    return 1;
                }
            }
        }
        None => None,
    };
    tracing::debug!("husk vmm starting");
    let code = run_with(opts, logger, api);
    tracing::debug!("husk vmm exiting");
    if let Some(path) = api_sock {
        let _ = std::fs::remove_file(path);
    }
    code
}

fn run_with(opts: VmmOptions, logger: Logger, api: Option<ApiReceiver>) -> i32 {
    let mut vmm = match Vmm::new(opts.id.clone(), logger, api) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("husk vmm: {e}");
            return 1;
        }
    };
    vmm.open_vm_early();
    if let Some(path) = &opts.config_file {
        let started = VmConfig::from_file(path)
            .map_err(|e| e.to_string())
            .and_then(|cfg| vmm.apply_config(cfg).map_err(|e| e.to_string()))
            .and_then(|_| vmm.start().map_err(|e| e.to_string()));
        if let Err(e) = started {
            eprintln!("husk vmm: {e}");
            return 1;
        }
    }
    let vmm = Arc::new(Mutex::new(vmm));
    let mut events = match EventManager::<Arc<Mutex<Vmm>>>::new() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("husk vmm: cannot create the event loop: {e:?}");
            return 1;
        }
    };
    events.add_subscriber(vmm.clone());
    loop {
        if let Err(e) = events.run() {
            tracing::error!("event loop error: {e:?}");
        }
        let vmm = vmm.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(code) = vmm.exit_code() {
            if let Some(msg) = vmm.exit_reason().and_then(ExitReason::failure_message) {
                eprintln!("husk vmm: {msg} (exit status {code})");
            }
            return code;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids() {
        assert!(parse_id("vm-1_a").is_ok());
        assert!(parse_id(&"a".repeat(64)).is_ok());
        for bad in ["", "../x", "a b", "é", &"a".repeat(65)] {
            assert!(parse_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn state_names_match_firecracker() {
        assert_eq!(VmState::NotStarted.as_str(), "Not started");
        assert_eq!(VmState::Running.as_str(), "Running");
        assert_eq!(VmState::Paused.as_str(), "Paused");
    }
}
