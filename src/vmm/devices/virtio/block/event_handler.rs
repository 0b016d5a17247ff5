//! virtio-blk on the event loop: its queue's event fd.

use std::os::fd::AsRawFd;

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::Block;

impl MutEventSubscriber for Block {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.queue_evts[0], EventSet::IN)) {
            tracing::error!("virtio-blk: cannot watch its queue: {e:?}");
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.fd() != self.queue_evts[0].as_raw_fd() {
            tracing::warn!(
                fd = events.fd(),
                "virtio-blk woken for an fd it does not own"
            );
            return;
        }
        let _ = self.queue_evts[0].read();
        // Notifications before DRIVER_OK find no queue: nothing to do.
        self.process_queue();
    }
}
