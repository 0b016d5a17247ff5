//! The virtio-fs model (virtio 1.x, section 5.11): one hiprio queue and
//! `num_queues` request queues, all served by an external vhost-user
//! backend; the configuration space is the tag (36 bytes, NUL padded)
//! and `num_request_queues` (le32).
//!
//! The transport calls [`activate`](VirtioDevice::activate) and
//! [`reset`](VirtioDevice::reset) on a vCPU thread. Talking to the
//! backend is the VMM thread's work (its seccomp filter allows the
//! socket calls; a vCPU's does not), so those only queue the work and
//! wake the VMM thread through an eventfd, as Firecracker's devices do
//! with their activation event; [`Fs::process_work`] then does it in
//! order. The backend reads the guest's kicks straight from the queues'
//! ioeventfds and writes one call eventfd per queue, which the VMM
//! thread turns into a used-buffer interrupt (the guest's driver reads
//! InterruptStatus before it looks at a ring).

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;

use virtio_queue::QueueState;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::backend::{Backend, BackendError};
use crate::vmm::config::MAX_TAG_LEN;
use crate::vmm::devices::virtio::persist::{DeviceState, VirtioPersistError};
use crate::vmm::devices::virtio::{
    read_config_bytes, ActivateError, ActiveQueues, VirtioDevice, VirtioInterrupt, INT_USED_RING,
    TYPE_FS, VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_RING_INDIRECT_DESC, VIRTIO_F_VERSION_1,
};
use crate::vmm::metrics::METRICS;

/// Tag, then le32 num_request_queues.
pub const CONFIG_LEN: usize = MAX_TAG_LEN + 4;
/// The features husk passes on from the backend; anything else it
/// offers (notification queues, DAX windows) needs VMM support husk
/// does not have.
pub const SUPPORTED_FEATURES: u64 =
    VIRTIO_F_VERSION_1 | VIRTIO_F_RING_INDIRECT_DESC | VIRTIO_F_RING_EVENT_IDX;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
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

pub struct Fs {
    pub(super) tag: String,
    /// The tag as logs show it (control characters escaped).
    shown: String,
    config: [u8; CONFIG_LEN],
    queue_sizes: Vec<u16>,
    /// One per queue: the ioeventfd on QueueNotify, which is also the
    /// backend's kick. The VMM thread never reads them.
    pub(super) kicks: Vec<EventFd>,
    /// One per queue: signalled by the backend when it used buffers.
    pub(super) calls: Vec<EventFd>,
    /// Wakes the VMM thread for `pending`.
    pub(super) work_evt: EventFd,
    pending: VecDeque<Work>,
    avail_features: u64,
    /// None once the backend is gone (it hung up, or a request failed).
    pub(super) backend: Option<Backend>,
    /// A request failed: the event handler drops the backend.
    pub(super) broken: bool,
    /// Set while the backend has the queues: the interrupt its calls raise.
    interrupt: Option<Arc<VirtioInterrupt>>,
}

impl Fs {
    /// Connects to the backend at `socket` for a device with `num_queues`
    /// request queues of `queue_size` entries.
    pub fn new(
        tag: &str,
        socket: &Path,
        num_queues: u16,
        queue_size: u16,
    ) -> Result<Self, FsError> {
        let count = usize::from(num_queues) + 1;
        let evts = || {
            (0..count)
                .map(|_| EventFd::new(EFD_NONBLOCK))
                .collect::<Result<Vec<_>, _>>()
                .map_err(FsError::EventFd)
        };
        let (kicks, calls) = (evts()?, evts()?);
        let backend = Backend::connect(socket, count)?;
        let mut config = [0u8; CONFIG_LEN];
        let n = tag.len().min(MAX_TAG_LEN);
        config[..n].copy_from_slice(&tag.as_bytes()[..n]);
        config[MAX_TAG_LEN..].copy_from_slice(&u32::from(num_queues).to_le_bytes());
        Ok(Fs {
            tag: tag.to_string(),
            shown: crate::text::echo(tag).into_owned(),
            config,
            queue_sizes: vec![queue_size; count],
            kicks,
            calls,
            work_evt: EventFd::new(EFD_NONBLOCK).map_err(FsError::EventFd)?,
            pending: VecDeque::new(),
            avail_features: backend.features() & SUPPORTED_FEATURES,
            backend: Some(backend),
            broken: false,
            interrupt: None,
        })
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
                tag = %self.shown,
                "virtio-fs: the backend is gone; the guest's requests go unanswered"
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
                METRICS.fs.activations.inc();
                self.interrupt = Some(active.interrupt);
                tracing::debug!(tag = %self.shown, "virtio-fs: the backend has the queues");
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
    fn fail(&mut self, e: &BackendError) {
        tracing::error!(
            tag = %self.shown,
            "virtio-fs: {e}; the guest's requests go unanswered"
        );
        METRICS.fs.backend_errors.inc();
        self.broken = true;
    }

    /// The backend signalled queue `q`'s call eventfd (VMM thread).
    pub fn on_call(&mut self, q: usize) {
        if let Some(evt) = self.calls.get(q) {
            let _ = evt.read();
        }
        if let Some(interrupt) = &self.interrupt {
            METRICS.fs.interrupts.inc();
            interrupt.signal(INT_USED_RING);
        }
    }

    /// The backend's socket became readable or hung up while no request
    /// was waiting for it: it closed the connection, or spoke out of turn.
    pub fn on_backend_hangup(&mut self) {
        tracing::error!(
            tag = %self.shown,
            "virtio-fs: the vhost-user backend closed the connection; \
             the guest's requests go unanswered"
        );
        METRICS.fs.backend_disconnects.inc();
        self.broken = true;
    }

    fn queue(&mut self, work: Work) {
        self.pending.push_back(work);
        if let Err(e) = self.work_evt.write(1) {
            tracing::error!("virtio-fs: cannot wake the VMM thread: {e}");
        }
    }
}

impl Drop for Fs {
    /// Stops the rings before the connection closes (the VMM exits), so
    /// the backend sees an orderly end.
    fn drop(&mut self) {
        self.pending.clear();
        self.stop();
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        TYPE_FS
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.kicks
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, active: ActiveQueues) -> Result<(), ActivateError> {
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

    fn reset(&mut self) {
        // A start not done yet is simply dropped.
        if matches!(self.pending.back(), Some(Work::Start(_))) {
            self.pending.pop_back();
        } else {
            self.queue(Work::Stop);
        }
    }

    /// The backend owns the rings' progress: there is nothing here to save.
    fn queue_states(&self) -> Vec<QueueState> {
        Vec::new()
    }

    fn save_state(&self) -> DeviceState {
        DeviceState::Fs(super::persist::FsState {
            tag: self.tag.clone(),
        })
    }

    fn restore_state(&mut self, _state: &DeviceState) -> Result<(), VirtioPersistError> {
        Err(VirtioPersistError::Invalid(super::persist::NOT_RESTORABLE))
    }

    fn activate_restored(&mut self, _active: ActiveQueues) -> Result<(), ActivateError> {
        Err(ActivateError::Device(super::persist::NOT_RESTORABLE.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    fn dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("husk-fs-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_backend_that_hangs_up_at_once_is_a_clear_error() {
        let d = dir("hangup");
        let sock = d.join("fs.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let server = std::thread::spawn(move || drop(listener.accept().unwrap()));
        let e = Fs::new("share", &sock, 1, 128).err().unwrap().to_string();
        server.join().unwrap();
        assert!(
            e.contains("the vhost-user backend closed the connection"),
            "{e}"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn nothing_listening_is_a_clear_error() {
        let d = dir("refused");
        let sock = d.join("fs.sock");
        drop(UnixListener::bind(&sock).unwrap());
        let e = Fs::new("share", &sock, 1, 128).err().unwrap().to_string();
        assert!(
            e.starts_with("cannot connect to the vhost-user backend at"),
            "{e}"
        );
        assert!(e.contains("refused"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
