//! virtio-balloon on the event loop: its queues' event fds and the
//! statistics timer.

use std::os::fd::AsRawFd;

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::device::{DEFLATE, INFLATE};
use super::Balloon;

impl MutEventSubscriber for Balloon {
    fn init(&mut self, ops: &mut EventOps) {
        let fds = self
            .queue_evts
            .iter()
            .map(AsRawFd::as_raw_fd)
            .chain([self.stats_timer.as_raw_fd()]);
        for fd in fds {
            if let Err(e) = ops.add(Events::new_raw(fd, EventSet::IN)) {
                tracing::error!("virtio-balloon: cannot watch an fd: {e:?}");
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.stats_timer.as_raw_fd() {
            self.on_stats_timer();
            return;
        }
        let Some(q) = self.queue_evts.iter().position(|e| e.as_raw_fd() == fd) else {
            tracing::warn!(fd, "virtio-balloon woken for an fd it does not own");
            return;
        };
        let _ = self.queue_evts[q].read();
        match q {
            INFLATE => {
                self.process_inflate();
            }
            DEFLATE => {
                self.process_deflate();
            }
            q if Some(q) == self.map.stats => self.process_stats(),
            q if Some(q) == self.map.hint => {
                self.process_hinting();
            }
            q if Some(q) == self.map.report => {
                self.process_reporting();
            }
            _ => {}
        }
    }
}
