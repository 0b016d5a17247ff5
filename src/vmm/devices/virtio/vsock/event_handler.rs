//! virtio-vsock on the event loop: its three queue event fds, the
//! listener at `uds_path`, the muxer's timer, and one registration per
//! host stream, added and removed as connections come and go.

use std::os::fd::AsRawFd;

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::device::{Vsock, EVQ, RXQ, TXQ};

impl MutEventSubscriber for Vsock {
    fn init(&mut self, ops: &mut EventOps) {
        let fds = self
            .queue_evts
            .iter()
            .map(AsRawFd::as_raw_fd)
            .chain([self.muxer.timer_fd()]);
        for fd in fds {
            if let Err(e) = ops.add(Events::new_raw(fd, EventSet::IN)) {
                tracing::error!("virtio-vsock: cannot watch an fd: {e:?}");
            }
        }
        // The listener, through the muxer's own bookkeeping.
        self.muxer.sync(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if let Some(q) = [RXQ, TXQ, EVQ]
            .into_iter()
            .find(|&q| self.queue_evts[q].as_raw_fd() == fd)
        {
            let _ = self.queue_evts[q].read();
        } else if fd == self.muxer.listener_fd() {
            self.muxer.on_listener();
        } else if fd == self.muxer.timer_fd() {
            self.muxer.on_timer();
        } else if self.muxer.owns(fd) {
            self.muxer.on_socket(fd, events.event_set());
        } else {
            tracing::warn!(fd, "virtio-vsock woken for an fd it does not own");
            return;
        }
        self.run_queues();
        self.muxer.sync(ops);
    }
}
