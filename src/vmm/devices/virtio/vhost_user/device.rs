//! The half every vhost-user device shares: the backend connection, one
//! kick and one call eventfd per queue, and the work the vCPU threads
//! queue for the VMM thread.
//!
//! The transport calls `activate` and `reset` on a vCPU thread. Talking
//! to the backend is the VMM thread's work (its seccomp filter allows the
//! socket calls; a vCPU's does not), so those only queue the work and
//! wake the VMM thread through an eventfd, as Firecracker's devices do
//! with their activation event; [`VhostUserDevice::process_work`] then
//! does it in order. The backend reads the guest's kicks straight from
//! the queues' ioeventfds and writes one call eventfd per queue, which
//! the VMM thread turns into a used-buffer interrupt (the guest's driver
//! reads InterruptStatus before it looks at a ring).

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;

use vhost::vhost_user::VhostUserProtocolFeatures;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::backend::{Backend, BackendError};
use crate::vmm::devices::virtio::{ActivateError, ActiveQueues, VirtioInterrupt, INT_USED_RING};
use crate::vmm::metrics::VhostUserMetrics;

#[derive(Debug, thiserror::Error)]
pub enum VhostUserError {
    #[error("cannot create an event fd: {0}")]
    EventFd(std::io::Error),
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// What the VMM thread owes the backend.
enum Work {
    /// Hand it the queues (DRIVER_OK).
    Start(ActiveQueues),
    /// Take them back (the driver reset the device).
    Stop,
}

/// A vhost-user device's connection and queues' eventfds.
pub struct VhostUserDevice {
    /// The device's kind and id as logs show them ("virtio-fs", the tag
    /// with control characters escaped).
    kind: &'static str,
    shown: String,
    metrics: &'static VhostUserMetrics,
    /// One per queue: the ioeventfd on QueueNotify, which is also the
    /// backend's kick. The VMM thread never reads them.
    pub(super) kicks: Vec<EventFd>,
    /// One per queue: signalled by the backend when it used buffers.
    pub(super) calls: Vec<EventFd>,
    /// Wakes the VMM thread for `pending`.
    pub(super) work_evt: EventFd,
    pending: VecDeque<Work>,
    /// None once the backend is gone (it hung up, or a request failed).
    pub(super) backend: Option<Backend>,
    /// A request failed: the event handler drops the backend.
    pub(super) broken: bool,
    /// Set while the backend has the queues: the interrupt its calls raise.
    interrupt: Option<Arc<VirtioInterrupt>>,
}

impl VhostUserDevice {
    /// Connects to the backend at `socket` for a device of `queues`
    /// queues that needs the protocol features `wanted`.
    pub fn connect(
        (kind, id): (&'static str, &str),
        socket: &Path,
        queues: usize,
        wanted: VhostUserProtocolFeatures,
        metrics: &'static VhostUserMetrics,
    ) -> Result<Self, VhostUserError> {
        let evts = || {
            (0..queues)
                .map(|_| EventFd::new(EFD_NONBLOCK))
                .collect::<Result<Vec<_>, _>>()
                .map_err(VhostUserError::EventFd)
        };
        let (kicks, calls) = (evts()?, evts()?);
        let backend = Backend::connect(socket, queues, wanted)?;
        Ok(VhostUserDevice {
            kind,
            shown: crate::text::echo(id).into_owned(),
            metrics,
            kicks,
            calls,
            work_evt: EventFd::new(EFD_NONBLOCK).map_err(VhostUserError::EventFd)?,
            pending: VecDeque::new(),
            backend: Some(backend),
            broken: false,
            interrupt: None,
        })
    }

    /// The backend's virtio features.
    pub fn backend_features(&self) -> u64 {
        self.backend.as_ref().map_or(0, Backend::features)
    }

    /// The backend, while it is there.
    pub fn backend_mut(&mut self) -> Result<&mut Backend, BackendError> {
        match self.backend.as_mut() {
            Some(b) if !self.broken => Ok(b),
            _ => Err(BackendError::Request("is gone".into())),
        }
    }

    /// The queues' ioeventfds, for the transport.
    pub fn kicks(&self) -> &[EventFd] {
        &self.kicks
    }

    /// Queues the start of the backend (DRIVER_OK, vCPU thread).
    pub fn activate(&mut self, active: ActiveQueues) -> Result<(), ActivateError> {
        if active.queues.len() != self.kicks.len() {
            return Err(ActivateError::QueueCount {
                expected: self.kicks.len(),
                got: active.queues.len(),
            });
        }
        if self.backend.is_none() || self.broken {
            return Err(ActivateError::Device(
                "the vhost-user backend is gone".into(),
            ));
        }
        self.queue(Work::Start(active));
        Ok(())
    }

    /// Queues taking the queues back (device reset, vCPU thread).
    pub fn reset(&mut self) {
        // A start not done yet is simply dropped.
        if matches!(self.pending.back(), Some(Work::Start(_))) {
            self.pending.pop_back();
        } else {
            self.queue(Work::Stop);
        }
    }

    /// Does what the vCPU threads queued, in order (VMM thread).
    pub fn process_work(&mut self) {
        let _ = self.work_evt.read();
        while let Some(work) = self.pending.pop_front() {
            match work {
                Work::Start(active) => self.start(active),
                Work::Stop => self.stop(),
            }
        }
    }

    fn start(&mut self, active: ActiveQueues) {
        self.stop();
        let Some(backend) = self.backend.as_mut().filter(|_| !self.broken) else {
            tracing::warn!(
                id = %self.shown,
                "{}: the backend is gone; the guest's requests go unanswered",
                self.kind
            );
            return;
        };
        let started = backend.start(
            &active.mem,
            &active.queues,
            &self.kicks,
            &self.calls,
            active.features,
        );
        match started {
            Ok(()) => {
                self.metrics.activations.inc();
                self.interrupt = Some(active.interrupt);
                tracing::debug!(id = %self.shown, "{}: the backend has the queues", self.kind);
            }
            Err(e) => self.fail(&e),
        }
    }

    /// Takes the queues back from the backend, if it has them.
    fn stop(&mut self) {
        if self.interrupt.take().is_none() {
            return;
        }
        let count = self.kicks.len();
        if let Some(backend) = self.backend.as_mut().filter(|_| !self.broken) {
            if let Err(e) = backend.stop(count) {
                self.fail(&e);
            }
        }
    }

    /// A request failed: count it, and leave the backend for the event
    /// handler to drop.
    pub fn fail(&mut self, e: &BackendError) {
        tracing::error!(
            id = %self.shown,
            "{}: {e}; the guest's requests go unanswered",
            self.kind
        );
        self.metrics.backend_errors.inc();
        self.broken = true;
    }

    /// The backend signalled queue `q`'s call eventfd (VMM thread).
    pub fn on_call(&mut self, q: usize) {
        if let Some(evt) = self.calls.get(q) {
            let _ = evt.read();
        }
        if let Some(interrupt) = &self.interrupt {
            self.metrics.interrupts.inc();
            interrupt.signal(INT_USED_RING);
        }
    }

    /// The backend's socket became readable or hung up while no request
    /// was waiting for it: it closed the connection, or spoke out of turn.
    pub fn on_backend_hangup(&mut self) {
        tracing::error!(
            id = %self.shown,
            "{}: the vhost-user backend closed the connection; \
             the guest's requests go unanswered",
            self.kind
        );
        self.metrics.backend_disconnects.inc();
        self.broken = true;
    }

    fn queue(&mut self, work: Work) {
        self.pending.push_back(work);
        if let Err(e) = self.work_evt.write(1) {
            tracing::error!("{}: cannot wake the VMM thread: {e}", self.kind);
        }
    }
}

impl Drop for VhostUserDevice {
    /// Stops the rings before the connection closes (the VMM exits), so
    /// the backend sees an orderly end.
    fn drop(&mut self) {
        self.pending.clear();
        self.stop();
    }
}
