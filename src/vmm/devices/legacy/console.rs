//! The serial console's host side: an event-loop subscriber that forwards
//! stdin to the UART, pausing while the guest is not reading (the UART's
//! input buffer is full) and resuming when it has drained.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::SerialDevice;

pub struct Console {
    serial: Arc<Mutex<SerialDevice>>,
    stdin: Option<File>,
    /// Whether stdin is in the epoll set right now.
    watched: bool,
}

impl Console {
    /// A console reading the process's stdin.
    pub fn new(serial: Arc<Mutex<SerialDevice>>) -> Self {
        let stdin = std::io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .ok()
            .map(File::from);
        Console {
            serial,
            stdin,
            watched: false,
        }
    }

    fn serial(&self) -> std::sync::MutexGuard<'_, SerialDevice> {
        self.serial.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn unwatch(&mut self, ops: &mut EventOps) {
        if let (Some(stdin), true) = (&self.stdin, self.watched) {
            let _ = ops.remove(Events::new(stdin, EventSet::IN));
        }
        self.watched = false;
    }

    fn on_stdin(&mut self, ops: &mut EventOps) {
        let space = self.serial().input_space().min(4096);
        if space == 0 {
            // The guest is not reading; wait for the buffer to drain.
            self.unwatch(ops);
            return;
        }
        let mut buf = [0u8; 4096];
        let Some(stdin) = self.stdin.as_mut() else {
            return;
        };
        match stdin.read(&mut buf[..space]) {
            Ok(0) | Err(_) => {
                self.unwatch(ops);
                self.stdin = None;
            }
            Ok(n) => {
                self.serial().push_input(&buf[..n]);
            }
        }
    }

    fn on_space(&mut self, ops: &mut EventOps) {
        let _ = self.serial().space_event().read();
        if let (Some(stdin), false) = (&self.stdin, self.watched) {
            self.watched = ops.add(Events::new(stdin, EventSet::IN)).is_ok();
        }
    }
}

impl MutEventSubscriber for Console {
    fn init(&mut self, ops: &mut EventOps) {
        let Some(stdin) = &self.stdin else { return };
        // Regular files and /dev/null cannot be polled: there is no
        // interactive input then.
        if ops.add(Events::new(stdin, EventSet::IN)).is_err() {
            self.stdin = None;
            return;
        }
        self.watched = true;
        let serial = self.serial.clone();
        let serial = serial.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = ops.add(Events::new(serial.space_event(), EventSet::IN)) {
            tracing::warn!("cannot watch the serial input buffer: {e:?}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if self.stdin.as_ref().is_some_and(|s| s.as_raw_fd() == fd) {
            self.on_stdin(ops);
        } else if fd == self.serial().space_event().as_raw_fd() {
            self.on_space(ops);
        } else {
            tracing::warn!(fd, "console woken for an fd it does not own");
        }
    }
}
