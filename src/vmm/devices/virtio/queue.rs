//! A queue in use by a device: pops the chains the driver made available,
//! hands each to the device, returns it on the used ring, and raises the
//! interrupt once per batch (when EVENT_IDX says the driver wants it).

use std::sync::Arc;

use crate::vmm::kvm::memory::GuestMem;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};

use super::{VirtioInterrupt, INT_USED_RING};
use crate::vmm::metrics::Counter;

/// What a device did with a chain.
pub enum Served {
    /// Done: return it with this used length.
    Used(u32),
    /// Taken; the device returns it later ([`ActiveQueue::complete`]).
    InFlight,
    /// Leave it, and the ones after it, for later (a rate limiter said
    /// wait).
    Hold,
}

pub struct ActiveQueue {
    pub mem: GuestMem,
    pub queue: Queue,
    pub interrupt: Arc<VirtioInterrupt>,
}

impl ActiveQueue {
    /// Serves every chain the driver made available: `handle` returns the
    /// used length of each, or None to leave it (and the ones after it)
    /// for later (a rate limiter said wait). Returns how many chains were
    /// served. Queue errors (a broken ring) are counted in `errors` and
    /// end the batch.
    pub fn serve(
        &mut self,
        errors: &Counter,
        mut handle: impl FnMut(&GuestMem, DescriptorChain<&GuestMem>) -> Option<u32>,
    ) -> usize {
        self.serve_requests(errors, |mem, chain| match handle(mem, chain) {
            Some(len) => Served::Used(len),
            None => Served::Hold,
        })
    }

    /// [`serve`](Self::serve) for a device that may answer later: a chain
    /// `handle` takes in flight is not returned now, nor counted.
    pub fn serve_requests(
        &mut self,
        errors: &Counter,
        mut handle: impl FnMut(&GuestMem, DescriptorChain<&GuestMem>) -> Served,
    ) -> usize {
        let mut served = 0;
        let mut held = false;
        loop {
            let chains: Vec<_> = match self.queue.iter(&self.mem) {
                Ok(iter) => iter.collect(),
                Err(e) => {
                    tracing::warn!("virtio: broken queue: {e}");
                    errors.inc();
                    break;
                }
            };
            if chains.is_empty() {
                break;
            }
            let total = chains.len();
            for (i, chain) in chains.into_iter().enumerate() {
                let head = chain.head_index();
                let len = match handle(&self.mem, chain) {
                    Served::Used(len) => len,
                    Served::InFlight => continue,
                    Served::Hold => {
                        // Put this chain and the rest back, in order.
                        let left = (total - i) as u16;
                        let next = self.queue.next_avail().wrapping_sub(left);
                        self.queue.set_next_avail(next);
                        held = true;
                        break;
                    }
                };
                if let Err(e) = self.queue.add_used(&self.mem, head, len) {
                    tracing::warn!("virtio: cannot return a buffer: {e}");
                    errors.inc();
                }
                served += 1;
            }
            if held {
                break;
            }
            // With EVENT_IDX, look again after re-enabling notifications
            // so that nothing added in between waits for a kick.
            match self.queue.enable_notification(&self.mem) {
                Ok(true) => continue,
                _ => break,
            }
        }
        if served > 0 && self.queue.needs_notification(&self.mem).unwrap_or(true) {
            self.interrupt.signal(INT_USED_RING);
        }
        served
    }
}

impl ActiveQueue {
    /// Returns chains a device took in flight, `(head, used length)`
    /// each, and raises the interrupt once if the driver wants it.
    pub fn complete(&mut self, errors: &Counter, done: impl IntoIterator<Item = (u16, u32)>) {
        let mut any = false;
        for (head, len) in done {
            if let Err(e) = self.queue.add_used(&self.mem, head, len) {
                tracing::warn!("virtio: cannot return a buffer: {e}");
                errors.inc();
            }
            any = true;
        }
        if any && self.queue.needs_notification(&self.mem).unwrap_or(true) {
            self.interrupt.signal(INT_USED_RING);
        }
    }
}

/// A device with one request queue and a rate limiter (blk, rng): its
/// event-loop subscription is the same, so it is written once.
pub trait OneQueueDevice {
    const NAME: &'static str;
    fn queue_event(&self) -> &vmm_sys_util::eventfd::EventFd;
    fn limiter_mut(&mut self) -> &mut crate::vmm::devices::rate_limiter::RateLimiter;
    fn limiter_fd(&self) -> std::os::fd::RawFd;
    fn process_queue(&mut self) -> usize;
}

/// `MutEventSubscriber::init` for a [`OneQueueDevice`].
pub fn subscribe_one_queue<D: OneQueueDevice>(d: &D, ops: &mut event_manager::EventOps) {
    use event_manager::Events;
    use vmm_sys_util::epoll::EventSet;
    for fd in [
        std::os::fd::AsRawFd::as_raw_fd(d.queue_event()),
        d.limiter_fd(),
    ] {
        if let Err(e) = ops.add(Events::new_raw(fd, EventSet::IN)) {
            tracing::error!("{}: cannot watch an fd: {e:?}", D::NAME);
        }
    }
}

/// `MutEventSubscriber::process` for a [`OneQueueDevice`]: a queue
/// notification or the rate limiter's timer both mean "serve the queue".
pub fn process_one_queue<D: OneQueueDevice>(d: &mut D, events: event_manager::Events) {
    let fd = events.fd();
    if fd == std::os::fd::AsRawFd::as_raw_fd(d.queue_event()) {
        let _ = d.queue_event().read();
    } else if fd == d.limiter_fd() {
        d.limiter_mut().on_timer();
    } else {
        tracing::warn!(fd, "{} woken for an fd it does not own", D::NAME);
        return;
    }
    // Before DRIVER_OK there is no queue, and nothing to do.
    d.process_queue();
}
