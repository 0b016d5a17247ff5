//! virtio-blk on the event loop: its queue's event fd, its rate limiter's
//! timer and, with the Async engine, the eventfd io_uring signals for
//! each completion.

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::Block;
use crate::vmm::devices::rate_limiter::RateLimiter;
use crate::vmm::devices::virtio::queue::{process_one_queue, subscribe_one_queue, OneQueueDevice};

impl OneQueueDevice for Block {
    const NAME: &'static str = "virtio-blk";
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
        Block::process_queue(self)
    }
}

impl MutEventSubscriber for Block {
    fn init(&mut self, ops: &mut EventOps) {
        subscribe_one_queue(self, ops);
        if let Some(io) = &self.io {
            if let Err(e) = ops.add(Events::new_raw(io.completion_fd(), EventSet::IN)) {
                tracing::error!("virtio-blk: cannot watch the io_uring completions: {e:?}");
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if self
            .io
            .as_ref()
            .is_some_and(|io| io.completion_fd() == events.fd())
        {
            self.process_completions();
        } else {
            process_one_queue(self, events);
        }
    }
}
