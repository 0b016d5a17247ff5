//! COM1: a vm-superio 8250 UART on the port bus, raising IRQ 4 through an
//! irqfd. Output goes to any writer (stdout or a file); input the host
//! sends is buffered here and fed to the UART's 64-byte FIFO as the guest
//! drains it. Snapshots are in `persist.rs`.

use std::collections::VecDeque;
use std::io::{self, Write};

use vm_superio::serial::SerialEvents;
use vm_superio::Serial;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::vmm::devices::rate_limiter::TokenBucket;
use crate::vmm::devices::{BusDevice, IrqTrigger};
use crate::vmm::metrics::METRICS;

/// Bytes of host input held back while the guest's FIFO is full.
pub const INPUT_BUFFER_SIZE: usize = 64 * 1024;

/// Counts UART events into the process metrics.
pub struct SerialCounters;

impl SerialEvents for SerialCounters {
    fn buffer_read(&self) {}
    fn out_byte(&self) {
        METRICS.serial.out_bytes.inc();
    }
    fn tx_lost_byte(&self) {
        METRICS.serial.missed_write.inc();
    }
    fn in_buffer_empty(&self) {}
}

pub type SerialOut = Box<dyn Write + Send>;

/// The console's output under `PUT /serial`'s `rate_limiter`: bytes the
/// bucket has tokens for go out; the rest are dropped and counted
/// (`rate_limiter_dropped_bytes`), never waited for, so the vCPU writing
/// them is never held.
pub struct RateLimited {
    inner: SerialOut,
    bucket: TokenBucket,
}

impl RateLimited {
    pub fn new(inner: SerialOut, bucket: TokenBucket) -> Self {
        RateLimited { inner, bucket }
    }
}

impl Write for RateLimited {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self
            .bucket
            .take(buf.len() as u64, std::time::Instant::now())
        {
            self.inner.write_all(buf)?;
        } else {
            METRICS
                .serial
                .rate_limiter_dropped_bytes
                .add(buf.len() as u64);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

pub struct SerialDevice {
    pub(super) uart: Serial<IrqTrigger, SerialCounters, SerialOut>,
    pub(super) pending: VecDeque<u8>,
    /// Signalled when `pending` empties, so the host reads more input.
    space_evt: EventFd,
}

impl SerialDevice {
    pub fn new(irq: EventFd, out: SerialOut) -> io::Result<Self> {
        Ok(SerialDevice {
            uart: Serial::with_events(IrqTrigger(irq), SerialCounters, out),
            pending: VecDeque::new(),
            space_evt: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// How many more input bytes `push_input` will take.
    pub fn input_space(&self) -> usize {
        INPUT_BUFFER_SIZE - self.pending.len()
    }

    /// Queues host input for the guest. Returns how many bytes were taken.
    pub fn push_input(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(self.input_space());
        self.pending.extend(&bytes[..n]);
        METRICS.serial.in_bytes.add(n as u64);
        self.refill();
        n
    }

    /// Fired when buffered input has all reached the UART.
    pub fn space_event(&self) -> &EventFd {
        &self.space_evt
    }

    fn refill(&mut self) {
        let room = self.uart.fifo_capacity().min(self.pending.len());
        if room == 0 {
            return;
        }
        let chunk: Vec<u8> = self.pending.drain(..room).collect();
        // The FIFO had room for all of it; an error here means the
        // interrupt could not be raised, and the guest still sees LSR.DR.
        let _ = self.uart.enqueue_raw_bytes(&chunk);
        if self.pending.is_empty() {
            let _ = self.space_evt.write(1);
        }
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() != 1 || offset >= super::COM1_LEN {
            data.fill(0xff);
            return;
        }
        data[0] = self.uart.read(offset as u8);
        if offset == 0 {
            self.refill();
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() != 1 || offset >= super::COM1_LEN {
            return;
        }
        if self.uart.write(offset as u8, data[0]).is_err() {
            METRICS.serial.missed_write.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A writer the test can read back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    const LSR: u64 = 5;

    fn device() -> (SerialDevice, Shared, EventFd) {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let out = Shared::default();
        let dev = SerialDevice::new(irq.try_clone().unwrap(), Box::new(out.clone())).unwrap();
        (dev, out, irq)
    }

    fn inb(dev: &mut SerialDevice, off: u64) -> u8 {
        let mut d = [0u8];
        dev.read(off, &mut d);
        d[0]
    }

    #[test]
    fn guest_output_reaches_the_writer() {
        let (mut dev, out, _) = device();
        for b in b"hi\n" {
            dev.write(0, &[*b]);
        }
        assert_eq!(&*out.0.lock().unwrap(), b"hi\n");
    }

    #[test]
    fn input_larger_than_the_fifo_arrives_in_order() {
        let (mut dev, _, _) = device();
        let input: Vec<u8> = (0..200u8).collect();
        assert_eq!(dev.push_input(&input), 200);
        let mut got = vec![];
        while inb(&mut dev, LSR) & 1 == 1 {
            got.push(inb(&mut dev, 0));
        }
        assert_eq!(got, input);
        // Drained: the host is told to send more.
        assert_eq!(dev.space_event().read().unwrap(), 1);
    }

    #[test]
    fn input_buffer_is_bounded() {
        let (mut dev, _, _) = device();
        let big = vec![b'a'; INPUT_BUFFER_SIZE + 1000];
        assert_eq!(dev.push_input(&big), INPUT_BUFFER_SIZE);
        // The FIFO took 64 bytes straight away, making room for 64 more.
        assert_eq!(dev.input_space(), 64);
        assert_eq!(dev.push_input(&big), 64);
        assert_eq!(dev.input_space(), 0);
        assert_eq!(dev.push_input(b"more"), 0);
    }

    #[test]
    fn odd_sized_accesses_are_ignored() {
        let (mut dev, out, _) = device();
        let mut d = [0u8; 2];
        dev.read(0, &mut d);
        assert_eq!(d, [0xff, 0xff]);
        dev.write(0, &[1, 2]);
        dev.write(9, &[1]);
        assert!(out.0.lock().unwrap().is_empty());
    }

    #[test]
    fn received_data_raises_the_irq_when_enabled() {
        let (mut dev, _, irq) = device();
        dev.write(1, &[0x01]); // IER: received data available
        dev.push_input(b"x");
        assert!(irq.read().unwrap() >= 1);
    }
}
