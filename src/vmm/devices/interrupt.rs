//! Interrupt lines into the guest: an eventfd that KVM turns into an
//! interrupt on a GSI of the in-kernel irqchip (an irqfd).

use std::io;

use vm_superio::Trigger;
use vmm_sys_util::eventfd::EventFd;

/// An interrupt line backed by an irqfd.
pub struct IrqTrigger(pub EventFd);

impl IrqTrigger {
    /// Raises the interrupt.
    pub fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

impl Trigger for IrqTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}
