//! A minimal i8042 keyboard controller: enough for Linux's i8042 driver to
//! probe it, for the guest to reset the machine (command `0xfe`), and for
//! the host to send Ctrl-Alt-Del as set-2 scancodes with IRQ 1.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::vmm::devices::BusDevice;
use crate::vmm::devices::IrqTrigger;
use crate::vmm::exit::{ExitNotifier, ExitReason};
use crate::vmm::metrics::METRICS;

const OFS_DATA: u64 = 0;
const OFS_STATUS: u64 = 4;

pub(super) const SB_OUT_DATA_AVAIL: u8 = 0x01;
const SB_SYSTEM_FLAG: u8 = 0x04;
const SB_LAST_WAS_CMD: u8 = 0x08;
const SB_KBD_ENABLED: u8 = 0x10;

const CB_KBD_INT: u8 = 0x01;
const CB_POST_OK: u8 = 0x04;

const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_AUX_DISABLE: u8 = 0xa7;
const CMD_AUX_ENABLE: u8 = 0xa8;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_KBD_DISABLE: u8 = 0xad;
const CMD_KBD_ENABLE: u8 = 0xae;
const CMD_READ_OUTP: u8 = 0xd0;
const CMD_WRITE_OUTP: u8 = 0xd1;
const CMD_RESET_CPU: u8 = 0xfe;

const SELF_TEST_OK: u8 = 0x55;
const KBD_ACK: u8 = 0xfa;

/// Set-2 scancodes, a prefix byte in the high half where there is one.
pub const KEY_CTRL: u16 = 0x0014;
pub const KEY_ALT: u16 = 0x0011;
pub const KEY_DEL: u16 = 0xe071;

/// The controller's output buffer, in bytes.
pub(super) const BUF_SIZE: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum I8042Error {
    #[error("the i8042 output buffer is full; the guest is not reading its keyboard")]
    BufferFull,
    #[error("cannot raise the keyboard interrupt: {0}")]
    Interrupt(std::io::Error),
}

pub struct I8042Device {
    pub(super) status: u8,
    pub(super) control: u8,
    pub(super) outp: u8,
    /// The command whose data byte is expected next on the data port.
    pub(super) pending_cmd: Option<u8>,
    pub(super) buf: VecDeque<u8>,
    kbd_irq: IrqTrigger,
    exit: Arc<ExitNotifier>,
}

impl I8042Device {
    pub fn new(kbd_irq: IrqTrigger, exit: Arc<ExitNotifier>) -> Self {
        I8042Device {
            status: SB_SYSTEM_FLAG | SB_KBD_ENABLED,
            control: CB_POST_OK | CB_KBD_INT,
            outp: 0,
            pending_cmd: None,
            buf: VecDeque::with_capacity(BUF_SIZE),
            kbd_irq,
            exit,
        }
    }

    fn push(&mut self, byte: u8) -> Result<(), I8042Error> {
        if self.buf.len() >= BUF_SIZE {
            return Err(I8042Error::BufferFull);
        }
        self.buf.push_back(byte);
        self.status |= SB_OUT_DATA_AVAIL;
        Ok(())
    }

    fn pop(&mut self) -> u8 {
        let byte = self.buf.pop_front().unwrap_or(0);
        if self.buf.is_empty() {
            self.status &= !SB_OUT_DATA_AVAIL;
        }
        byte
    }

    /// Queues a key press and raises IRQ 1 if the guest enabled it.
    pub fn trigger_key(&mut self, key: u16) -> Result<(), I8042Error> {
        let bytes = key.to_be_bytes();
        let bytes: &[u8] = if bytes[0] == 0 { &bytes[1..] } else { &bytes };
        if BUF_SIZE - self.buf.len() < bytes.len() {
            METRICS.i8042.missed_keys.inc();
            return Err(I8042Error::BufferFull);
        }
        for b in bytes {
            self.push(*b)?;
        }
        if self.control & CB_KBD_INT != 0 {
            self.kbd_irq.trigger().map_err(I8042Error::Interrupt)?;
        }
        Ok(())
    }

    /// Sends Ctrl-Alt-Del, which Linux turns into a reboot.
    pub fn trigger_ctrl_alt_del(&mut self) -> Result<(), I8042Error> {
        if BUF_SIZE - self.buf.len() < 4 {
            METRICS.i8042.missed_keys.inc();
            return Err(I8042Error::BufferFull);
        }
        METRICS.i8042.ctrl_alt_del.inc();
        self.trigger_key(KEY_CTRL)?;
        self.trigger_key(KEY_ALT)?;
        self.trigger_key(KEY_DEL)
    }

    fn command(&mut self, cmd: u8) {
        self.status |= SB_LAST_WAS_CMD;
        // A full buffer drops the reply, as a real controller would.
        let _ = match cmd {
            CMD_READ_CTR => self.push(self.control),
            CMD_WRITE_CTR | CMD_WRITE_OUTP => {
                self.pending_cmd = Some(cmd);
                Ok(())
            }
            CMD_READ_OUTP => self.push(self.outp),
            CMD_SELF_TEST => self.push(SELF_TEST_OK),
            CMD_KBD_TEST => self.push(0x00),
            CMD_KBD_DISABLE => {
                self.control |= 0x10;
                Ok(())
            }
            CMD_KBD_ENABLE => {
                self.control &= !0x10;
                Ok(())
            }
            CMD_AUX_DISABLE | CMD_AUX_ENABLE => Ok(()),
            CMD_RESET_CPU => {
                METRICS.i8042.resets.inc();
                self.exit.notify(ExitReason::Reset);
                Ok(())
            }
            _ => Ok(()),
        };
    }

    fn data(&mut self, value: u8) {
        self.status &= !SB_LAST_WAS_CMD;
        match self.pending_cmd.take() {
            Some(CMD_WRITE_CTR) => self.control = value,
            Some(CMD_WRITE_OUTP) => self.outp = value,
            // Anything else is a command for the keyboard itself, which
            // acknowledges it.
            _ => {
                let _ = self.push(KBD_ACK);
            }
        }
    }
}

impl BusDevice for I8042Device {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() != 1 {
            data.fill(0xff);
            return;
        }
        data[0] = match offset {
            OFS_DATA => self.pop(),
            OFS_STATUS => self.status,
            _ => 0xff,
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() != 1 {
            return;
        }
        match offset {
            OFS_STATUS => self.command(data[0]),
            OFS_DATA => self.data(data[0]),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    fn device() -> (I8042Device, EventFd, Arc<ExitNotifier>) {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let exit = Arc::new(ExitNotifier::new().unwrap());
        let dev = I8042Device::new(IrqTrigger(irq.try_clone().unwrap()), exit.clone());
        (dev, irq, exit)
    }

    fn inb(dev: &mut I8042Device, off: u64) -> u8 {
        let mut d = [0];
        dev.read(off, &mut d);
        d[0]
    }

    #[test]
    fn reset_command_ends_the_vm() {
        let (mut dev, _, exit) = device();
        dev.write(OFS_STATUS, &[CMD_RESET_CPU]);
        assert_eq!(exit.reason(), Some(ExitReason::Reset));
    }

    #[test]
    fn ctrl_alt_del_arrives_as_set2_scancodes_with_irq() {
        let (mut dev, irq, exit) = device();
        dev.trigger_ctrl_alt_del().unwrap();
        assert!(irq.read().unwrap() >= 1);
        let mut got = vec![];
        while inb(&mut dev, OFS_STATUS) & SB_OUT_DATA_AVAIL != 0 {
            got.push(inb(&mut dev, OFS_DATA));
        }
        assert_eq!(got, vec![0x14, 0x11, 0xe0, 0x71]);
        assert_eq!(exit.reason(), None);
    }

    #[test]
    fn full_buffer_refuses_keys() {
        let (mut dev, _, _) = device();
        for _ in 0..4 {
            dev.trigger_ctrl_alt_del().unwrap();
        }
        assert!(matches!(
            dev.trigger_ctrl_alt_del(),
            Err(I8042Error::BufferFull)
        ));
        assert_eq!(dev.buf.len(), BUF_SIZE);
    }

    #[test]
    fn control_byte_round_trip_and_self_test() {
        let (mut dev, irq, _) = device();
        dev.write(OFS_STATUS, &[CMD_WRITE_CTR]);
        dev.write(OFS_DATA, &[0x00]); // interrupts off
        dev.write(OFS_STATUS, &[CMD_READ_CTR]);
        assert_eq!(inb(&mut dev, OFS_DATA), 0x00);
        dev.write(OFS_STATUS, &[CMD_SELF_TEST]);
        assert_eq!(inb(&mut dev, OFS_DATA), SELF_TEST_OK);
        // With the interrupt disabled, keys queue without an IRQ.
        dev.trigger_key(KEY_CTRL).unwrap();
        assert!(irq.read().is_err());
        // Keyboard commands get an ACK.
        dev.pop();
        dev.write(OFS_DATA, &[0xf4]);
        assert_eq!(inb(&mut dev, OFS_DATA), KBD_ACK);
        assert_eq!(inb(&mut dev, OFS_STATUS) & SB_OUT_DATA_AVAIL, 0);
    }
}
