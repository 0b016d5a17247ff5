//! One microVM per process: `husk vmm`.
//!
//! The VMM thread owns the [`Vmm`], which moves through
//! `NotStarted → Running ⇄ Paused → Exited`, and one event loop
//! ([`EventLoop`]) with a subscriber per owner of file descriptors: the
//! API adapter, the console, each device, and the `Vmm` itself (exit event
//! and metrics timer). `run.rs` is the process entry.

pub mod api;
pub mod arch;
mod balloon;
pub mod builder;
pub mod client;
pub mod config;
pub mod device_actions;
pub mod device_manager;
pub mod devices;
mod drive;
pub mod exit;
pub mod kvm;
pub mod logger;
pub mod metrics;
pub mod mmds;
pub mod rpc;
pub mod run;
pub mod sink;
pub mod snapshot;

pub use run::{parse_id, run, VmmArgs, VmmOptions};

use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::timerfd::TimerFd;

use crate::jail::seccomp::{Policy, ThreadKind};
use builder::{RunningVm, StartError};
use config::{
    BootSourceConfig, ConfigError, EntropyConfig, LoggerConfig, MachineConfig, MetricsConfig,
    SerialConfig, VmConfig,
};
use exit::{ExitNotifier, ExitReason};
use logger::Logger;
use metrics::{MetricsSink, METRICS};
use rpc::{VmmAction, VmmActionError, VmmData};

/// The VMM thread's event loop: every owner of file descriptors subscribes
/// itself.
pub type EventLoop = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The Firecracker release whose API husk serves: `GET /version` answers
/// it as `firecracker_version`, which Firecracker's SDKs check.
pub const FIRECRACKER_API_VERSION: &str = "1.17.0";
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

pub struct Vmm {
    id: String,
    config: VmConfig,
    state: VmState,
    running: Option<RunningVm>,
    /// The page server's userfaultfd, after a `Uffd` restore; dropped
    /// after the memory it serves.
    uffd: Option<snapshot::uffd::UffdBackend>,
    /// Pages written since the last snapshot that a failed snapshot took
    /// from the dirty logs: the next one writes them too.
    dirty_carry: Option<Vec<Vec<u64>>>,
    exit: Arc<ExitNotifier>,
    exit_code: Option<i32>,
    exit_reason: Option<ExitReason>,
    logger: Logger,
    metrics: MetricsSink,
    metrics_timer: TimerFd,
    /// The KVM VM, being opened in the background since start-up.
    opening: Option<std::thread::JoinHandle<Result<kvm::Vm, kvm::VmError>>>,
    /// The seccomp filters the VMM and vCPU threads take on at start.
    seccomp: Policy,
    /// The metadata service's document and tokens, made on first use.
    mmds: Option<mmds::SharedMmds>,
    /// Its size limit (`--mmds-size-limit`).
    mmds_size_limit: usize,
}

impl Vmm {
    pub fn new(id: String, logger: Logger) -> std::io::Result<Self> {
        Ok(Vmm {
            id,
            config: VmConfig::default(),
            state: VmState::NotStarted,
            running: None,
            uffd: None,
            dirty_carry: None,
            exit: Arc::new(ExitNotifier::new()?),
            exit_code: None,
            exit_reason: None,
            logger,
            metrics: MetricsSink::default(),
            metrics_timer: TimerFd::new()?,
            opening: None,
            seccomp: Policy::off(),
            mmds: None,
            mmds_size_limit: mmds::DEFAULT_SIZE_LIMIT,
        })
    }

    /// The filters this VMM's threads install when the VM starts.
    pub fn set_seccomp(&mut self, policy: Policy) {
        self.seccomp = policy;
    }

    /// Opens KVM and creates the (empty) VM on another thread, so that is
    /// done by the time the configuration arrives.
    /// The VMM and vCPU seccomp filters are compiled there too, off the
    /// path of every request.
    pub fn open_vm_early(&mut self) {
        let seccomp = self.seccomp.clone();
        self.opening = std::thread::Builder::new()
            .name("husk-kvm-open".into())
            .spawn(move || {
                let vm = kvm::Vm::open();
                seccomp.prepare(ThreadKind::Vcpu);
                seccomp.prepare(ThreadKind::Vmm);
                vm
            })
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

    pub(crate) fn require_not_started(&self) -> Result<(), VmmActionError> {
        match self.state {
            VmState::NotStarted => Ok(()),
            _ => Err(VmmActionError::AfterStart),
        }
    }

    fn require_started(&self) -> Result<(), VmmActionError> {
        match self.state {
            VmState::NotStarted => Err(VmmActionError::BeforeStart),
            _ => Ok(()),
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
        // After the machine config: a custom template wins over a static
        // one, as it does in Firecracker's config files.
        if let Some(c) = cfg.cpu_config {
            self.set_cpu_config(c)?;
        }
        if let Some(b) = cfg.boot_source {
            self.set_boot_source(b)?;
        }
        for d in cfg.drives {
            let id = d.drive_id.clone();
            self.set_drive(&id, d)?;
        }
        config::check_unique_ids(&cfg.network_interfaces)?;
        for n in cfg.network_interfaces {
            let id = n.iface_id.clone();
            self.set_network_interface(&id, n)?;
        }
        if let Some(e) = cfg.entropy {
            self.set_entropy(e)?;
        }
        if let Some(v) = cfg.vsock {
            self.set_vsock(v)?;
        }
        for f in cfg.fs_devices {
            let tag = f.tag.clone();
            self.set_fs(&tag, f)?;
        }
        if let Some(b) = cfg.balloon {
            self.set_balloon(b)?;
        }
        config::check_unique_pmem_ids(&cfg.pmem).map_err(ConfigError::from)?;
        for p in cfg.pmem {
            let id = p.id.clone();
            self.set_pmem(&id, p)?;
        }
        if let Some(h) = cfg.memory_hotplug {
            self.set_memory_hotplug(h)?;
        }
        // After the interfaces it names.
        if let Some(m) = cfg.mmds_config {
            self.set_mmds_config(m)?;
        }
        Ok(())
    }

    fn set_boot_source(&mut self, b: BootSourceConfig) -> Result<(), VmmActionError> {
        self.require_not_started()?;
        b.validate()?;
        self.config.boot_source = Some(b);
        Ok(())
    }

    /// A `cpu_template` named here (even "None") replaces a custom CPU
    /// template: the last one configured is the one applied.
    fn set_machine_config(&mut self, m: MachineConfig) -> Result<(), VmmActionError> {
        self.require_not_started()?;
        m.validate()?;
        if m.cpu_template.is_some() {
            self.config.cpu_config = None;
        }
        self.config.machine_config = m;
        Ok(())
    }

    /// A custom CPU template replaces the static one, if any.
    fn set_cpu_config(&mut self, c: config::CpuConfig) -> Result<(), VmmActionError> {
        self.require_not_started()?;
        c.validate()?;
        self.config.machine_config.cpu_template = None;
        self.config.cpu_config = Some(c);
        Ok(())
    }

    fn set_serial(&mut self, s: SerialConfig) -> Result<(), VmmActionError> {
        self.require_not_started()?;
        s.validate()?;
        self.config.serial = Some(s);
        Ok(())
    }

    /// Adds or replaces an interface; its TAP must exist.
    fn set_network_interface(
        &mut self,
        path_id: &str,
        n: config::NetworkInterfaceConfig,
    ) -> Result<(), VmmActionError> {
        self.require_not_started()?;
        config::put_interface(&mut self.config.network_interfaces, path_id, n)?;
        Ok(())
    }

    /// Before or after start: the rate limiters change, on the running
    /// device too, and a limiter left out keeps what it had.
    fn patch_network_interface(
        &mut self,
        path_id: &str,
        u: config::NetworkInterfaceUpdate,
    ) -> Result<(), VmmActionError> {
        let i = config::check_update(&self.config.network_interfaces, path_id, &u)?;
        if let Some(vm) = &self.running {
            if let Some(n) = vm.nets.iter().find(|n| n.id == path_id) {
                let mut net = n.net.lock().unwrap_or_else(|e| e.into_inner());
                net.update_rate_limiters(u.rx_rate_limiter.as_ref(), u.tx_rate_limiter.as_ref())
                    .map_err(|e| VmmActionError::NetUpdate {
                        id: path_id.to_string(),
                        err: e.to_string(),
                    })?;
                net.retry_after_update();
            }
        }
        let iface = &mut self.config.network_interfaces[i];
        if u.rx_rate_limiter.is_some() {
            iface.rx_rate_limiter = u.rx_rate_limiter;
        }
        if u.tx_rate_limiter.is_some() {
            iface.tx_rate_limiter = u.tx_rate_limiter;
        }
        Ok(())
    }

    fn set_entropy(&mut self, e: EntropyConfig) -> Result<(), VmmActionError> {
        self.require_not_started()?;
        e.validate()?;
        self.config.entropy = Some(e);
        Ok(())
    }

    /// One vsock per VM: a second PUT replaces the first.
    fn set_vsock(&mut self, v: config::VsockConfig) -> Result<(), VmmActionError> {
        self.require_not_started()?;
        v.validate()?;
        self.config.vsock = Some(v);
        Ok(())
    }

    /// Adds a virtio-fs device, or replaces the one with the same tag.
    fn set_fs(&mut self, path_tag: &str, f: config::FsConfig) -> Result<(), VmmActionError> {
        self.require_not_started()?;
        if f.tag != path_tag {
            return Err(ConfigError::FsTagMismatch {
                body: crate::text::echo(&f.tag).into_owned(),
                path: crate::text::echo(path_tag).into_owned(),
            }
            .into());
        }
        f.validate()?;
        config::insert_fs(&mut self.config.fs_devices, f);
        Ok(())
    }

    /// The logger is configured before start only, as in Firecracker.
    fn set_logger(&mut self, l: LoggerConfig) -> Result<(), VmmActionError> {
        self.require_not_started()?;
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

    /// Builds and boots the configured microVM; its devices join `events`.
    pub fn start(&mut self, events: &mut EventLoop) -> Result<(), VmmActionError> {
        self.require_not_started()?;
        if self.config.boot_source.is_none() {
            return Err(VmmActionError::NoKernel);
        }
        let opened = self.take_vm().map_err(StartError::from)?;
        let mmds_config = self.config.mmds_config.clone();
        let mmds = self.mmds_for_start(mmds_config.as_ref())?;
        let how = builder::Launch {
            exit: self.exit.clone(),
            seccomp: &self.seccomp,
            paused: false,
            mmds,
        };
        let vm = builder::build_and_start(opened, &self.config, events, &how)?;
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

    /// Pauses every vCPU or none: each is asked before any answer is
    /// awaited, and if one fails the ones that paused run again.
    fn pause(&mut self) -> Result<(), VmmActionError> {
        // Pausing a paused microVM changes nothing, as in Firecracker.
        if self.state == VmState::Paused {
            return Ok(());
        }
        if self.state != VmState::Running {
            return Err(VmmActionError::NotRunning(self.state.as_str()));
        }
        let vcpus = &self.running()?.vcpus;
        all_or_nothing(
            vcpus,
            |v| v.request_pause(),
            |v, t| v.wait_paused(t),
            |v| v.request_resume(),
        )?;
        self.state = VmState::Paused;
        Ok(())
    }

    /// Resumes every vCPU or none (the ones that resumed pause again).
    fn resume(&mut self) -> Result<(), VmmActionError> {
        // Nor does resuming a running one.
        if self.state == VmState::Running {
            return Ok(());
        }
        if self.state != VmState::Paused {
            return Err(VmmActionError::NotPaused(self.state.as_str()));
        }
        let vcpus = &self.running()?.vcpus;
        all_or_nothing(
            vcpus,
            |v| v.request_resume(),
            |v, t| v.wait_resumed(t),
            |v| v.request_pause(),
        )?;
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
                "firecracker_version": FIRECRACKER_API_VERSION,
                "vmm_version": VERSION,
            })),
            // `huge_pages` is always there (Firecracker shows it too).
            VmmAction::GetMachineConfig => {
                json(serde_json::to_value(&self.config.machine_config).unwrap_or_default())
            }
            VmmAction::GetFullConfig => json(config::shown_full_config(
                serde_json::to_value(&self.config).unwrap_or_default(),
            )),
            VmmAction::PutBootSource(b) => done(self.set_boot_source(b)),
            VmmAction::PutMachineConfig(m) => done(self.set_machine_config(m)),
            VmmAction::PatchMachineConfig(u) => {
                let patched = self.config.machine_config.patched(u);
                done(self.set_machine_config(patched))
            }
            VmmAction::PutCpuConfig(c) => done(self.set_cpu_config(c)),
            VmmAction::PutLogger(l) => done(self.set_logger(l)),
            VmmAction::PutMetrics(m) => done(self.set_metrics(m)),
            VmmAction::PutSerial(s) => done(self.set_serial(s)),
            VmmAction::PutEntropy(e) => done(self.set_entropy(e)),
            VmmAction::PutVsock(v) => done(self.set_vsock(v)),
            VmmAction::PutDrive(id, d) => done(self.set_drive(&id, d)),
            VmmAction::PatchDrive(id, u) => done(self.patch_drive(&id, u)),
            VmmAction::PutNetworkInterface(id, n) => done(self.set_network_interface(&id, n)),
            VmmAction::PatchNetworkInterface(id, u) => done(self.patch_network_interface(&id, u)),
            VmmAction::PutFs(tag, f) => done(self.set_fs(&tag, f)),
            VmmAction::PutBalloon(b) => done(self.set_balloon(b)),
            VmmAction::GetBalloon => {
                json(serde_json::to_value(self.balloon_config()?).unwrap_or_default())
            }
            VmmAction::PatchBalloon(u) => done(self.patch_balloon(u)),
            VmmAction::GetBalloonStats => self.balloon_stats().map(VmmData::Json),
            VmmAction::PatchBalloonStats(u) => done(self.patch_balloon_stats(u)),
            VmmAction::StartBalloonHinting(c) => done(self.start_balloon_hinting(c)),
            VmmAction::StopBalloonHinting => done(self.stop_balloon_hinting()),
            VmmAction::GetBalloonHinting => self.balloon_hinting_status().map(VmmData::Json),
            VmmAction::PutPmem(id, p) => done(self.set_pmem(&id, p)),
            VmmAction::PatchPmem(id, u) => done(self.patch_pmem(&id, u)),
            VmmAction::PutMemoryHotplug(h) => done(self.set_memory_hotplug(h)),
            VmmAction::PatchMemoryHotplug(u) => done(self.patch_memory_hotplug(u)),
            VmmAction::GetMemoryHotplug => {
                json(serde_json::to_value(self.memory_hotplug_status()?).unwrap_or_default())
            }
            VmmAction::PutMmds(v) => done(self.put_mmds(v)),
            VmmAction::PatchMmds(v) => done(self.patch_mmds(&v)),
            VmmAction::GetMmds => self.get_mmds().map(VmmData::Json),
            VmmAction::PutMmdsConfig(c) => done(self.set_mmds_config(c)),
            // Starting needs the event loop; `run.rs` handles it before
            // the microVM runs. Here it can only be too late.
            VmmAction::InstanceStart => done(
                self.require_not_started()
                    .and(Err(VmmActionError::AfterStart)),
            ),
            VmmAction::SendCtrlAltDel => done(self.send_ctrl_alt_del()),
            // Before start there is nothing to flush (Firecracker refuses it too).
            VmmAction::FlushMetrics => done(
                self.require_started()
                    .and_then(|()| self.metrics.flush().map_err(Into::into)),
            ),
            VmmAction::Pause => done(self.pause()),
            VmmAction::Resume => done(self.resume()),
            VmmAction::CreateSnapshot(p) => done(self.create_snapshot(p)),
            // Loading needs the event loop, like InstanceStart.
            VmmAction::LoadSnapshot(_) => done(
                self.require_not_started()
                    .and(Err(VmmActionError::AfterStart)),
            ),
            #[cfg(feature = "test-hooks")]
            VmmAction::ForbiddenCall(kind) => {
                use crate::jail::seccomp::{forbidden_call, ThreadKind};
                let went = match kind {
                    ThreadKind::Vcpu => self
                        .running()?
                        .vcpus
                        .first()
                        .ok_or(VmmActionError::NotRunning("no vCPU"))?
                        .forbidden_call()
                        .map_err(|e| VmmActionError::Start(e.into()))?,
                    _ => forbidden_call(),
                };
                json(serde_json::json!({ "went_through": went }))
            }
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

    /// Whether InstanceStart has happened.
    pub fn is_started(&self) -> bool {
        self.state != VmState::NotStarted
    }

    /// The metrics timer, for the loop that runs before the VM starts.
    pub fn metrics_timer(&self) -> &TimerFd {
        &self.metrics_timer
    }

    /// Flushes metrics when the periodic timer fires.
    pub fn on_metrics_timer(&mut self) {
        let _ = self.metrics_timer.wait();
        if let Err(e) = self.metrics.flush() {
            tracing::warn!("{e}");
        }
    }
}

/// Asks every vCPU (`ask`), then waits for every answer (`wait`). When
/// any fails, every vCPU asked is sent back (`undo`): the ones that
/// answered, and the ones that did not answer in time, which will read
/// the undo after the request they are late with. The first error is
/// returned.
fn all_or_nothing(
    vcpus: &[kvm::vcpu::VcpuHandle],
    ask: impl Fn(&kvm::vcpu::VcpuHandle) -> Result<kvm::vcpu::Ticket, kvm::vcpu::VcpuError>,
    wait: impl Fn(&kvm::vcpu::VcpuHandle, kvm::vcpu::Ticket) -> Result<(), kvm::vcpu::VcpuError>,
    undo: impl Fn(&kvm::vcpu::VcpuHandle) -> Result<kvm::vcpu::Ticket, kvm::vcpu::VcpuError>,
) -> Result<(), kvm::vcpu::VcpuError> {
    let mut first_err = None;
    let mut asked = Vec::with_capacity(vcpus.len());
    for v in vcpus {
        match ask(v) {
            Ok(t) => asked.push((v, t)),
            Err(e) => {
                first_err = Some(e);
                break;
            }
        }
    }
    for (v, t) in &asked {
        if let Err(e) = wait(v, *t) {
            first_err.get_or_insert(e);
        }
    }
    match first_err {
        None => Ok(()),
        Some(e) => {
            for (v, _) in asked {
                // Not waited for: a vCPU that is late now could block the
                // API; the request is in its queue either way.
                if let Err(u) = undo(v) {
                    tracing::error!("cannot undo a vCPU state change: {u}");
                }
            }
            Err(e)
        }
    }
}

/// The `Vmm` subscribes the exit event and the metrics timer.
impl MutEventSubscriber for Vmm {
    fn init(&mut self, ops: &mut EventOps) {
        for fd in [
            self.exit.event_fd().as_raw_fd(),
            self.metrics_timer.as_raw_fd(),
        ] {
            if let Err(e) = ops.add(Events::new_raw(fd, EventSet::IN)) {
                tracing::error!("cannot watch an event source: {e:?}");
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.exit.event_fd().as_raw_fd() {
            self.on_exit();
        } else if fd == self.metrics_timer.as_raw_fd() {
            self.on_metrics_timer();
        } else {
            tracing::warn!(fd, "VMM woken for an fd it does not own");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_names_match_firecracker() {
        assert_eq!(VmState::NotStarted.as_str(), "Not started");
        assert_eq!(VmState::Running.as_str(), "Running");
        assert_eq!(VmState::Paused.as_str(), "Paused");
    }
}
