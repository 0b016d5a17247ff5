//! Snapshots of the legacy devices: the UART's registers, its FIFO and
//! the host input buffered behind it; the i8042's registers and output
//! buffer. What connects them to the host (the serial output sink, the
//! interrupt lines, the exit notifier) belongs to the restored VM, built
//! from its own configuration, and is kept.

use std::collections::VecDeque;
use std::io;

use serde::{Deserialize, Serialize};
use vm_superio::serial::SerialState as UartState;
use vm_superio::Serial;

use super::i8042::{BUF_SIZE, SB_OUT_DATA_AVAIL};
use super::serial::{SerialCounters, SerialOut, INPUT_BUFFER_SIZE};
use super::{I8042Device, SerialDevice};
use crate::vmm::devices::IrqTrigger;
use crate::vmm::snapshot::Persist;

/// The UART's receive FIFO, in bytes (vm-superio's).
pub const UART_FIFO_SIZE: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum LegacyPersistError {
    #[error("the saved UART FIFO holds {0} bytes, more than {UART_FIFO_SIZE}")]
    FifoTooLong(usize),
    #[error("the saved serial input holds {0} bytes, more than {INPUT_BUFFER_SIZE}")]
    InputTooLong(usize),
    #[error("the saved i8042 buffer holds {0} bytes, more than {BUF_SIZE}")]
    BufferTooLong(usize),
    #[error("cannot clone the serial interrupt line: {0}")]
    EventFd(io::Error),
    #[error("cannot restore the UART: {0}")]
    Uart(String),
}

/// COM1: the 8250's registers, its FIFO, and host input not yet in it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialState {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    /// Received bytes the guest has not read, oldest first.
    pub fifo: Vec<u8>,
    /// Host input waiting for room in the FIFO.
    pub pending: Vec<u8>,
}

impl Persist for SerialDevice {
    type State = SerialState;
    type Error = LegacyPersistError;

    fn save(&self) -> SerialState {
        let u = self.uart.state();
        SerialState {
            baud_divisor_low: u.baud_divisor_low,
            baud_divisor_high: u.baud_divisor_high,
            interrupt_enable: u.interrupt_enable,
            interrupt_identification: u.interrupt_identification,
            line_control: u.line_control,
            line_status: u.line_status,
            modem_control: u.modem_control,
            modem_status: u.modem_status,
            scratch: u.scratch,
            fifo: u.in_buffer,
            pending: self.pending.iter().copied().collect(),
        }
    }

    /// Rebuilds the UART from the saved registers around this device's
    /// own output and interrupt line. As vm-superio does, an interrupt the
    /// registers say is pending is raised again; the guest's driver takes
    /// one it already had as spurious.
    fn restore(&mut self, s: &SerialState) -> Result<(), LegacyPersistError> {
        if s.fifo.len() > UART_FIFO_SIZE {
            return Err(LegacyPersistError::FifoTooLong(s.fifo.len()));
        }
        if s.pending.len() > INPUT_BUFFER_SIZE {
            return Err(LegacyPersistError::InputTooLong(s.pending.len()));
        }
        let uart = UartState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.fifo.clone(),
        };
        let irq = &self.uart.interrupt_evt().0;
        let (irq, spare) = irq
            .try_clone()
            .and_then(|a| Ok((a, irq.try_clone()?)))
            .map_err(LegacyPersistError::EventFd)?;
        // The UART owns its output: take it out of the old one through a
        // stand-in, then build the restored UART around it.
        let sink: SerialOut = Box::new(io::sink());
        let stand_in = Serial::with_events(IrqTrigger(spare), SerialCounters, sink);
        let out = std::mem::replace(&mut self.uart, stand_in).into_writer();
        self.uart = Serial::from_state(&uart, IrqTrigger(irq), SerialCounters, out)
            .map_err(|e| LegacyPersistError::Uart(e.to_string()))?;
        self.pending = VecDeque::from(s.pending.clone());
        Ok(())
    }
}

/// The i8042's registers and output buffer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct I8042State {
    pub status: u8,
    pub control: u8,
    pub outp: u8,
    pub pending_cmd: Option<u8>,
    pub buf: Vec<u8>,
}

impl Persist for I8042Device {
    type State = I8042State;
    type Error = LegacyPersistError;

    fn save(&self) -> I8042State {
        I8042State {
            status: self.status,
            control: self.control,
            outp: self.outp,
            pending_cmd: self.pending_cmd,
            buf: self.buf.iter().copied().collect(),
        }
    }

    fn restore(&mut self, s: &I8042State) -> Result<(), LegacyPersistError> {
        if s.buf.len() > BUF_SIZE {
            return Err(LegacyPersistError::BufferTooLong(s.buf.len()));
        }
        self.buf.clear();
        self.buf.extend(&s.buf);
        // "Output available" says whether the buffer holds anything,
        // whatever the state claims.
        self.status = s.status & !SB_OUT_DATA_AVAIL;
        if !self.buf.is_empty() {
            self.status |= SB_OUT_DATA_AVAIL;
        }
        self.control = s.control;
        self.outp = s.outp;
        self.pending_cmd = s.pending_cmd;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    use super::*;
    use crate::vmm::devices::BusDevice;
    use crate::vmm::exit::ExitNotifier;

    #[derive(Clone, Default)]
    struct Out(Arc<Mutex<Vec<u8>>>);
    impl Write for Out {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn serial() -> (SerialDevice, Out) {
        let out = Out::default();
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        (SerialDevice::new(irq, Box::new(out.clone())).unwrap(), out)
    }

    fn inb(d: &mut dyn BusDevice, off: u64) -> u8 {
        let mut b = [0u8];
        d.read(off, &mut b);
        b[0]
    }

    fn round_trip<T: Serialize + serde::de::DeserializeOwned>(s: &T) -> T {
        postcard::from_bytes(&postcard::to_stdvec(s).unwrap()).unwrap()
    }

    #[test]
    fn the_uart_keeps_its_registers_and_unread_input_and_its_new_output() {
        let (mut a, _) = serial();
        a.write(7, &[0x5a]); // scratch
        a.write(3, &[0x03]); // LCR: 8 bits
        let input: Vec<u8> = (0..200u8).collect();
        assert_eq!(a.push_input(&input), 200);
        for _ in 0..10 {
            inb(&mut a, 0);
        }
        let s = round_trip(&a.save());
        assert_eq!(s.fifo.len(), UART_FIFO_SIZE);
        assert_eq!(s.fifo.len() + s.pending.len(), 190);
        let (mut b, out) = serial();
        b.restore(&s).unwrap();
        assert_eq!(b.save(), s);
        assert_eq!(inb(&mut b, 7), 0x5a);
        assert_eq!(inb(&mut b, 3), 0x03);
        let mut got = Vec::new();
        while inb(&mut b, 5) & 1 == 1 {
            got.push(inb(&mut b, 0));
        }
        assert_eq!(got, input[10..]);
        for c in b"after" {
            b.write(0, &[*c]);
        }
        assert_eq!(&*out.0.lock().unwrap(), b"after", "the new sink is kept");
    }

    #[test]
    fn an_oversized_serial_state_is_refused_and_the_device_still_works() {
        let (mut d, out) = serial();
        let mut s = d.save();
        s.fifo = vec![1; UART_FIFO_SIZE + 1];
        assert!(matches!(
            d.restore(&s),
            Err(LegacyPersistError::FifoTooLong(65))
        ));
        s.fifo.clear();
        s.pending = vec![1; INPUT_BUFFER_SIZE + 1];
        assert!(matches!(
            d.restore(&s),
            Err(LegacyPersistError::InputTooLong(_))
        ));
        d.write(0, b"x");
        assert_eq!(&*out.0.lock().unwrap(), b"x");
    }

    #[test]
    fn the_i8042_keeps_its_buffer_and_half_done_command() {
        let irq = || IrqTrigger(EventFd::new(EFD_NONBLOCK).unwrap());
        let exit = Arc::new(ExitNotifier::new().unwrap());
        let mut a = I8042Device::new(irq(), exit.clone());
        a.trigger_key(super::super::i8042::KEY_DEL).unwrap();
        a.write(4, &[0x60]); // write the control byte: data follows
        let s = round_trip(&a.save());
        let mut b = I8042Device::new(irq(), exit.clone());
        b.restore(&s).unwrap();
        b.write(0, &[0x00]);
        assert_eq!(b.control, 0x00, "the pending command took the data");
        assert_eq!(inb(&mut b, 4) & SB_OUT_DATA_AVAIL, 1);
        assert_eq!([inb(&mut b, 0), inb(&mut b, 0)], [0xe0, 0x71]);
        assert_eq!(inb(&mut b, 4) & SB_OUT_DATA_AVAIL, 0);
        // A buffer larger than the controller's is refused.
        let mut bad = s.clone();
        bad.buf = vec![0; BUF_SIZE + 1];
        assert!(matches!(
            b.restore(&bad),
            Err(LegacyPersistError::BufferTooLong(17))
        ));
        // "Output available" follows the buffer, not the saved bit.
        bad.buf.clear();
        bad.status |= SB_OUT_DATA_AVAIL;
        b.restore(&bad).unwrap();
        assert_eq!(inb(&mut b, 4) & SB_OUT_DATA_AVAIL, 0);
    }
}
