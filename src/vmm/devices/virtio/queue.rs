//! A queue in use by a device: pops the chains the driver made available,
//! hands each to the device, returns it on the used ring, and raises the
//! interrupt once per batch (when EVENT_IDX says the driver wants it).

use std::sync::Arc;

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;

use super::{VirtioInterrupt, INT_USED_RING};
use crate::vmm::metrics::Counter;

pub struct ActiveQueue {
    pub mem: GuestMemoryMmap,
    pub queue: Queue,
    pub interrupt: Arc<VirtioInterrupt>,
}

impl ActiveQueue {
    /// Serves every chain the driver made available: `handle` returns the
    /// used length of each. Returns how many chains were served. Queue
    /// errors (a broken ring) are counted in `errors` and end the batch.
    pub fn serve(
        &mut self,
        errors: &Counter,
        mut handle: impl FnMut(&GuestMemoryMmap, DescriptorChain<&GuestMemoryMmap>) -> u32,
    ) -> usize {
        let mut served = 0;
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
            for chain in chains {
                let head = chain.head_index();
                let len = handle(&self.mem, chain);
                if let Err(e) = self.queue.add_used(&self.mem, head, len) {
                    tracing::warn!("virtio: cannot return a buffer: {e}");
                    errors.inc();
                }
                served += 1;
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
