//! How a running VM ends. The first reason reported wins; the VMM thread
//! wakes on the event fd and tears the VM down.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Why the guest stopped running.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest asked for a reset (i8042 `0xfe`, or a KVM reset event).
    Reset,
    /// The guest powered off (KVM shutdown system event).
    PowerOff,
    /// The guest triple-faulted (`KVM_EXIT_SHUTDOWN`).
    TripleFault,
    /// A vCPU failed in a way the VMM cannot recover from.
    VcpuError(String),
}

impl ExitReason {
    /// The `husk vmm` process exit status for this reason.
    pub fn exit_code(&self) -> i32 {
        match self {
            ExitReason::Reset | ExitReason::PowerOff => 0,
            ExitReason::TripleFault => 3,
            ExitReason::VcpuError(_) => 4,
        }
    }

    /// What to tell the user when the guest did not stop cleanly.
    pub fn failure_message(&self) -> Option<String> {
        match self {
            ExitReason::Reset | ExitReason::PowerOff => None,
            ExitReason::TripleFault => Some(
                "the guest triple-faulted (KVM_EXIT_SHUTDOWN): it hit an exception it could \
                 not handle, usually a kernel that cannot run on this vCPU or a broken boot"
                    .into(),
            ),
            ExitReason::VcpuError(e) => Some(format!("a vCPU failed: {e}")),
        }
    }
}

pub struct ExitNotifier {
    stopping: AtomicBool,
    reason: Mutex<Option<ExitReason>>,
    evt: EventFd,
}

impl ExitNotifier {
    pub fn new() -> std::io::Result<Self> {
        Ok(ExitNotifier {
            stopping: AtomicBool::new(false),
            reason: Mutex::new(None),
            evt: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// Records `reason` unless one is recorded already, and wakes the VMM.
    pub fn notify(&self, reason: ExitReason) {
        let mut slot = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(reason);
        }
        drop(slot);
        self.stopping.store(true, Ordering::Release);
        // Only fails if the counter would overflow, which cannot happen
        // with one write per reason.
        let _ = self.evt.write(1);
    }

    /// Whether the VM is on its way down; vCPUs stop running guest code.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    pub fn reason(&self) -> Option<ExitReason> {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn event_fd(&self) -> &EventFd {
        &self.evt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins_and_wakes() {
        let n = ExitNotifier::new().unwrap();
        assert_eq!(n.reason(), None);
        assert!(!n.is_stopping());
        n.notify(ExitReason::Reset);
        n.notify(ExitReason::TripleFault);
        assert_eq!(n.reason(), Some(ExitReason::Reset));
        assert!(n.is_stopping());
        assert_eq!(n.event_fd().read().unwrap(), 2);
    }

    #[test]
    fn exit_codes() {
        assert_eq!(ExitReason::Reset.exit_code(), 0);
        assert_eq!(ExitReason::TripleFault.exit_code(), 3);
        assert_eq!(ExitReason::VcpuError("x".into()).exit_code(), 4);
        assert_eq!(ExitReason::Reset.failure_message(), None);
        assert!(ExitReason::TripleFault
            .failure_message()
            .unwrap()
            .contains("triple-faulted"));
    }
}
