//! A vhost-user device on the event loop: the work eventfd (activations
//! and resets the vCPU threads queued), one call eventfd per queue, and
//! the backend's socket, which is only ever read inside a request: any
//! event on it in between means the backend hung up (or spoke out of
//! turn), and the connection is dropped. The queues' kick eventfds are
//! the backend's to read, never the event loop's. The devices built on
//! [`VhostUserDevice`] subscribe through these two calls.

use std::os::fd::AsRawFd;

use event_manager::{EventOps, Events};
use vmm_sys_util::epoll::EventSet;

use super::VhostUserDevice;

impl VhostUserDevice {
    /// Watches the device's fds.
    pub fn init_events(&self, ops: &mut EventOps) {
        let fds = self
            .calls
            .iter()
            .map(AsRawFd::as_raw_fd)
            .chain([self.work_evt.as_raw_fd()])
            .chain(self.backend.as_ref().map(AsRawFd::as_raw_fd));
        for fd in fds {
            if let Err(e) = ops.add(Events::new_raw(fd, EventSet::IN)) {
                tracing::error!("vhost-user: cannot watch an fd: {e:?}");
            }
        }
    }

    /// Handles readiness of one of the device's fds.
    pub fn process_event(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.work_evt.as_raw_fd() {
            self.process_work();
        } else if let Some(q) = self.calls.iter().position(|c| c.as_raw_fd() == fd) {
            self.on_call(q);
        } else if self.backend.as_ref().is_some_and(|b| b.as_raw_fd() == fd) {
            self.on_backend_hangup();
        } else {
            tracing::warn!(fd, "vhost-user device woken for an fd it does not own");
            return;
        }
        if self.broken {
            // Out of the loop first, then closed (the guest's kicks keep
            // landing in their eventfds, and nobody answers them).
            if let Some(backend) = self.backend.take() {
                let _ = ops.remove(Events::new_raw(backend.as_raw_fd(), EventSet::IN));
            }
        }
    }
}
