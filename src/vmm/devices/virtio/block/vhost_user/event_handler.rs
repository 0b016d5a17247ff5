//! vhost-user-blk on the event loop: the fds of its vhost-user connection
//! (see [`VhostUserDevice`](crate::vmm::devices::virtio::vhost_user::VhostUserDevice)).

use event_manager::{EventOps, Events, MutEventSubscriber};

use super::VhostUserBlock;

impl MutEventSubscriber for VhostUserBlock {
    fn init(&mut self, ops: &mut EventOps) {
        self.vu.init_events(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        self.vu.process_event(events, ops);
    }
}
