//! virtio-net on the event loop: its two queue event fds and its TAP.
//!
//! The TAP is watched (level-triggered) while the guest has receive
//! buffers. When it has none, the TAP's interest is switched off, so a
//! busy TAP cannot spin the loop, and a notification on the receive
//! queue (the driver added buffers) switches it back on. A TAP that
//! reports an error or hang-up (its interface was deleted) is dropped
//! from the loop for good. Each direction's rate limiter has a timer
//! here too: when it fires, what the limiter held back is tried again.
//! With MMDS on the interface, its stack's timer is watched as well, and
//! whatever the stack has for the guest (after a transmit or a timer) is
//! delivered through the receive path.

use std::os::fd::AsRawFd;

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::device::{Net, RxState, RX_QUEUE, TX_QUEUE};
use crate::vmm::metrics::METRICS;

impl Net {
    /// Switches the TAP's interest; `for_buffers` counts a pause for want
    /// of guest buffers.
    fn watch_tap(&mut self, ops: &mut EventOps, on: bool, for_buffers: bool) {
        if self.tap_dead || self.tap_watched == on {
            return;
        }
        let set = if on { EventSet::IN } else { EventSet::empty() };
        match ops.modify(Events::new(&self.tap, set)) {
            Ok(()) => {
                self.tap_watched = on;
                if for_buffers {
                    METRICS.net.rx_paused.inc();
                }
            }
            Err(e) => tracing::error!("virtio-net: cannot change the TAP's interest: {e:?}"),
        }
    }

    fn drop_tap(&mut self, ops: &mut EventOps) {
        tracing::error!(
            "virtio-net: TAP {} reported an error or hang-up; no more frames from it",
            self.tap.name()
        );
        METRICS.net.rx_errors.inc();
        let _ = ops.remove(Events::empty(&self.tap));
        self.tap_dead = true;
        self.tap_watched = false;
    }

    /// Receives, then watches the TAP or not, as the receive path says.
    fn receive(&mut self, ops: &mut EventOps) {
        let state = self.process_rx();
        self.watch_tap(ops, state == RxState::Watch, state == RxState::NeedBuffers);
    }

    /// Transmits, then delivers what MMDS answered to frames among them.
    fn transmit(&mut self, ops: &mut EventOps) {
        self.process_tx();
        if self.mmds_has_output() {
            self.receive(ops);
        }
    }

    /// After PATCH /network-interfaces: what the old limiters held back
    /// goes now if the new ones allow it.
    pub fn retry_after_update(&mut self) {
        // The queue events bring the device back through the loop, which
        // can change what it watches.
        for evt in &self.queue_evts {
            let _ = evt.write(1);
        }
    }
}

impl MutEventSubscriber for Net {
    fn init(&mut self, ops: &mut EventOps) {
        for evt in &self.queue_evts {
            if let Err(e) = ops.add(Events::new(evt, EventSet::IN)) {
                tracing::error!("virtio-net: cannot watch a queue: {e:?}");
            }
        }
        match ops.add(Events::new(&self.tap, EventSet::IN)) {
            Ok(()) => self.tap_watched = true,
            Err(e) => tracing::error!("virtio-net: cannot watch the TAP: {e:?}"),
        }
        for fd in [self.rx_limiter.timer_fd(), self.tx_limiter.timer_fd()] {
            if let Err(e) = ops.add(Events::new_raw(fd, EventSet::IN)) {
                tracing::error!("virtio-net: cannot watch a rate limiter: {e:?}");
            }
        }
        if let Some(fd) = self.mmds.as_ref().map(|m| m.timer_fd()) {
            if let Err(e) = ops.add(Events::new_raw(fd, EventSet::IN)) {
                tracing::error!("virtio-net: cannot watch the MMDS timer: {e:?}");
            }
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.queue_evts[RX_QUEUE].as_raw_fd() {
            let _ = self.queue_evts[RX_QUEUE].read();
            // The driver added receive buffers: a frame that waited can
            // go, and the TAP is worth reading again.
            self.receive(ops);
        } else if fd == self.queue_evts[TX_QUEUE].as_raw_fd() {
            let _ = self.queue_evts[TX_QUEUE].read();
            self.transmit(ops);
        } else if fd == self.tap.as_raw_fd() {
            if events
                .event_set()
                .intersects(EventSet::ERROR | EventSet::HANG_UP)
            {
                self.drop_tap(ops);
                return;
            }
            self.receive(ops);
        } else if fd == self.rx_limiter.timer_fd() {
            self.rx_limiter.on_timer();
            self.receive(ops);
        } else if fd == self.tx_limiter.timer_fd() {
            self.tx_limiter.on_timer();
            self.transmit(ops);
        } else if let Some(m) = self.mmds.as_mut().filter(|m| m.timer_fd() == fd) {
            m.on_timer();
            if self.mmds_has_output() {
                self.receive(ops);
            }
        } else {
            tracing::warn!(fd, "virtio-net woken for an fd it does not own");
        }
    }
}
