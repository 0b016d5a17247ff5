//! virtio-mem on the event loop: its queue's event fd.

use std::os::fd::AsRawFd;

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::VirtioMem;

impl MutEventSubscriber for VirtioMem {
    fn init(&mut self, ops: &mut EventOps) {
        let fd = self.queue_evts[0].as_raw_fd();
        if let Err(e) = ops.add(Events::new_raw(fd, EventSet::IN)) {
            tracing::error!("virtio-mem: cannot watch its queue: {e:?}");
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.fd() != self.queue_evts[0].as_raw_fd() {
            tracing::warn!(
                fd = events.fd(),
                "virtio-mem woken for an fd it does not own"
            );
            return;
        }
        let _ = self.queue_evts[0].read();
        self.process_queue();
    }
}
