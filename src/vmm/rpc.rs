//! What the API thread asks of the VMM thread, and the typed answers.
//!
//! The API thread sends a [`VmmAction`] over a channel, writes an event
//! fd to wake the VMM thread, and awaits a [`VmmReply`] on a oneshot. On
//! the VMM thread, [`ApiAdapter`] is the event-loop subscriber of that
//! event fd once the microVM runs; before that, `run.rs` serves the same
//! channel while it waits for InstanceStart.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::vmm::builder::StartError;
use crate::vmm::config::{
    BootSourceConfig, ConfigError, DriveConfig, DriveUpdate, EntropyConfig, LoggerConfig,
    MachineConfig, MachineConfigUpdate, MetricsConfig, SerialConfig,
};
use crate::vmm::devices::legacy::i8042::I8042Error;
use crate::vmm::kvm::vcpu::VcpuError;
use crate::vmm::logger::LoggerError;
use crate::vmm::metrics::MetricsError;
use crate::vmm::Vmm;

/// What the API asks of the VMM thread.
#[derive(Debug)]
pub enum VmmAction {
    GetVmInfo,
    GetVersion,
    GetMachineConfig,
    GetFullConfig,
    PutBootSource(BootSourceConfig),
    PutMachineConfig(MachineConfig),
    PatchMachineConfig(MachineConfigUpdate),
    PutCpuConfig(crate::vmm::config::CpuConfig),
    PutLogger(LoggerConfig),
    PutMetrics(MetricsConfig),
    PutSerial(SerialConfig),
    PutEntropy(EntropyConfig),
    PutVsock(crate::vmm::config::VsockConfig),
    /// The drive id from the path, and the body.
    PutDrive(String, DriveConfig),
    PatchDrive(String, DriveUpdate),
    /// The iface id from the path, and the body.
    PutNetworkInterface(String, crate::vmm::config::NetworkInterfaceConfig),
    PatchNetworkInterface(String, crate::vmm::config::NetworkInterfaceUpdate),
    /// The tag from the path, and the body.
    PutFs(String, crate::vmm::config::FsConfig),
    PutBalloon(crate::vmm::config::BalloonConfig),
    GetBalloon,
    PatchBalloon(crate::vmm::config::BalloonUpdate),
    GetBalloonStats,
    PatchBalloonStats(crate::vmm::config::BalloonStatsUpdate),
    StartBalloonHinting(crate::vmm::config::BalloonStartCmd),
    GetBalloonHinting,
    StopBalloonHinting,
    /// The id from the path, and the body.
    PutPmem(String, crate::vmm::config::PmemConfig),
    PatchPmem(String, crate::vmm::config::PmemUpdate),
    PutMemoryHotplug(crate::vmm::config::MemoryHotplugConfig),
    PatchMemoryHotplug(crate::vmm::config::MemoryHotplugSizeUpdate),
    GetMemoryHotplug,
    /// The metadata service: the whole document, a merge patch, a read,
    /// and its configuration.
    PutMmds(serde_json::Value),
    PatchMmds(serde_json::Value),
    GetMmds,
    PutMmdsConfig(crate::vmm::config::MmdsConfig),
    InstanceStart,
    SendCtrlAltDel,
    FlushMetrics,
    Pause,
    Resume,
    CreateSnapshot(crate::vmm::config::SnapshotCreateParams),
    LoadSnapshot(crate::vmm::config::SnapshotLoadParams),
    /// The tests' hook: make a system call that thread's filter forbids.
    #[cfg(feature = "test-hooks")]
    ForbiddenCall(crate::jail::seccomp::ThreadKind),
}

/// A successful answer.
#[derive(Debug, PartialEq)]
pub enum VmmData {
    Empty,
    Json(serde_json::Value),
}

/// Why an action failed.
#[derive(Debug, thiserror::Error)]
pub enum VmmActionError {
    #[error("the requested operation is not supported after starting the microVM")]
    AfterStart,
    #[error("the requested operation is not supported before starting the microVM")]
    BeforeStart,
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
    CtrlAltDel(I8042Error),
    #[error("cannot pause or resume: {0}")]
    Vcpu(#[from] VcpuError),
    #[error("the microVM is shutting down")]
    ShuttingDown,
    #[error("cannot update drive {id}: {err}")]
    DriveUpdate { id: String, err: String },
    #[error("cannot update network interface {id}: {err}")]
    NetUpdate { id: String, err: String },
    #[error("cannot update the balloon: {0}")]
    BalloonUpdate(String),
    #[error("cannot update pmem device {id}: {err}")]
    PmemUpdate { id: String, err: String },
    #[error("cannot update the hotpluggable memory: {0}")]
    MemoryHotplugUpdate(String),
    #[error(transparent)]
    Snapshot(#[from] crate::vmm::snapshot::actions::SnapshotError),
    #[error(transparent)]
    Mmds(#[from] crate::vmm::mmds::MmdsError),
}

pub type VmmReply = Result<VmmData, VmmActionError>;

pub struct ApiRequest {
    pub action: VmmAction,
    pub reply: tokio::sync::oneshot::Sender<VmmReply>,
}

/// The API thread's end of the channel.
#[derive(Clone)]
pub struct ApiSender {
    tx: Sender<ApiRequest>,
    evt: Arc<EventFd>,
}

/// The VMM thread's end of the channel.
pub struct ApiReceiver {
    pub rx: Receiver<ApiRequest>,
    pub evt: EventFd,
}

pub fn channel_pair() -> io::Result<(ApiSender, ApiReceiver)> {
    let evt = EventFd::new(EFD_NONBLOCK)?;
    let (tx, rx) = channel();
    Ok((
        ApiSender {
            tx,
            evt: Arc::new(evt.try_clone()?),
        },
        ApiReceiver { rx, evt },
    ))
}

impl ApiSender {
    /// Sends `action` to the VMM thread and waits for its answer.
    pub async fn call(&self, action: VmmAction) -> VmmReply {
        let (reply, answer) = tokio::sync::oneshot::channel();
        if self.tx.send(ApiRequest { action, reply }).is_err() {
            return Err(VmmActionError::ShuttingDown);
        }
        if self.evt.write(1).is_err() {
            return Err(VmmActionError::ShuttingDown);
        }
        answer.await.unwrap_or(Err(VmmActionError::ShuttingDown))
    }
}

impl ApiReceiver {
    /// Every request waiting now; clears the wake-up.
    pub fn pending(&self) -> Vec<ApiRequest> {
        let _ = self.evt.read();
        self.rx.try_iter().collect()
    }
}

impl ApiRequest {
    /// Carries out the request with `handle` and sends the answer; the
    /// client may have hung up, which is fine.
    pub fn serve(self, handle: impl FnOnce(VmmAction) -> VmmReply) {
        let reply = handle(self.action);
        if let Err(e) = &reply {
            tracing::warn!("API request failed: {e}");
        }
        let _ = self.reply.send(reply);
    }
}

/// Serves the API channel on the event loop once the microVM runs.
pub struct ApiAdapter {
    api: ApiReceiver,
    vmm: Arc<Mutex<Vmm>>,
}

impl ApiAdapter {
    pub fn new(api: ApiReceiver, vmm: Arc<Mutex<Vmm>>) -> Self {
        ApiAdapter { api, vmm }
    }
}

impl MutEventSubscriber for ApiAdapter {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.api.evt, EventSet::IN)) {
            tracing::error!("cannot watch the API channel: {e:?}");
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.fd() != self.api.evt.as_raw_fd() {
            return;
        }
        for req in self.api.pending() {
            req.serve(|action| {
                self.vmm
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .handle(action)
            });
        }
    }
}
