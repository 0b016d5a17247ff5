//! virtio-pmem on the event loop: its queue's event fd and its rate
//! limiter's timer.

use event_manager::{EventOps, Events, MutEventSubscriber};

use super::Pmem;
use crate::vmm::devices::rate_limiter::RateLimiter;
use crate::vmm::devices::virtio::queue::{process_one_queue, subscribe_one_queue, OneQueueDevice};

impl OneQueueDevice for Pmem {
    const NAME: &'static str = "virtio-pmem";
    fn queue_event(&self) -> &vmm_sys_util::eventfd::EventFd {
        &self.queue_evts[0]
    }
    fn limiter_mut(&mut self) -> &mut RateLimiter {
        &mut self.limiter
    }
    fn limiter_fd(&self) -> std::os::fd::RawFd {
        self.limiter.timer_fd()
    }
    fn process_queue(&mut self) -> usize {
        Pmem::process_queue(self)
    }
}

impl MutEventSubscriber for Pmem {
    fn init(&mut self, ops: &mut EventOps) {
        subscribe_one_queue(self, ops);
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        process_one_queue(self, events);
    }
}
