//! The virtio-vsock model (device ID 19): three queues (RX 0, TX 1,
//! EVENT 2) and a configuration space holding the guest's CID. The
//! connections behind it are the [`Muxer`]'s.
//!
//! The event queue carries one event: TRANSPORT_RESET, after a snapshot
//! restore, so that the guest drops the connections that did not survive
//! (see `persist.rs`).

use std::io::Write;
use std::os::unix::net::UnixListener;
use std::path::Path;

use virtio_queue::Writer;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::muxer::Muxer;
use super::packet::read_tx;
use super::unix::{self, UdsError};
use crate::vmm::devices::virtio::persist::{DeviceState, VirtioPersistError};
use crate::vmm::devices::virtio::queue::ActiveQueue;
use crate::vmm::devices::virtio::{
    read_config_bytes, ActivateError, ActiveQueues, VirtioDevice, TYPE_VSOCK,
    VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_RING_INDIRECT_DESC, VIRTIO_F_VERSION_1,
};
use crate::vmm::metrics::METRICS;
use crate::vmm::snapshot::Persist;

pub const QUEUE_SIZE: u16 = 256;
pub const RXQ: usize = 0;
pub const TXQ: usize = 1;
pub const EVQ: usize = 2;
/// `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET`: the guest drops every connection.
pub const EVENT_TRANSPORT_RESET: u32 = 0;

#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("cannot create an event fd: {0}")]
    EventFd(std::io::Error),
    #[error("cannot create the vsock timer: {0}")]
    Timer(std::io::Error),
    #[error(transparent)]
    Bind(#[from] UdsError),
}

/// The queues once the driver set DRIVER_OK.
pub(super) struct Queues {
    pub rx: ActiveQueue,
    pub tx: ActiveQueue,
    /// Only TRANSPORT_RESET goes there, after a snapshot restore.
    pub event: ActiveQueue,
}

pub struct Vsock {
    pub(super) queue_evts: [EventFd; 3],
    pub(super) queues: Option<Queues>,
    pub(super) muxer: Muxer,
    /// The driver reset the device: the event loop ends every
    /// connection (it needs the loop to unregister their fds).
    pub(super) reset_pending: bool,
    /// Restored from a snapshot: the guest must hear TRANSPORT_RESET, in
    /// the first buffer it posts on the event queue.
    pub(super) transport_reset: bool,
    config: [u8; 8],
    tx_scratch: Vec<u8>,
}

impl Vsock {
    /// A device for `guest_cid`, serving host clients on `listener` (bound
    /// at `uds_path`, see [`super::unix::bind`]).
    pub fn new(
        guest_cid: u64,
        uds_path: &Path,
        listener: UnixListener,
    ) -> Result<Self, VsockError> {
        let evt = || EventFd::new(EFD_NONBLOCK).map_err(VsockError::EventFd);
        Ok(Vsock {
            queue_evts: [evt()?, evt()?, evt()?],
            queues: None,
            muxer: Muxer::new(guest_cid, uds_path, listener).map_err(VsockError::Timer)?,
            reset_pending: false,
            transport_reset: false,
            config: guest_cid.to_le_bytes(),
            tx_scratch: Vec::new(),
        })
    }

    /// Binds `uds_path` (replacing a stale socket, refusing a live one)
    /// and creates the device on it.
    pub fn bind(guest_cid: u64, uds_path: &Path) -> Result<Self, VsockError> {
        let listener = unix::bind(uds_path)?;
        Self::new(guest_cid, uds_path, listener)
    }

    /// Open connections.
    pub fn connection_count(&self) -> usize {
        self.muxer.connection_count()
    }

    /// The CID the guest is told.
    pub fn guest_cid(&self) -> u64 {
        u64::from_le_bytes(self.config)
    }

    /// Guest bytes held for host peers that have not read them yet.
    pub fn buffered_bytes(&self) -> usize {
        self.muxer.buffered()
    }

    /// Hands every packet the guest sent to the muxer; TX buffers are
    /// always consumed (a packet past its credit resets its connection
    /// rather than wait). Returns how many.
    pub fn process_tx(&mut self) -> usize {
        let Some(q) = self.queues.as_mut() else {
            return 0;
        };
        let muxer = &mut self.muxer;
        let scratch = &mut self.tx_scratch;
        q.tx.serve(&METRICS.vsock.errors, |mem, chain| {
            match read_tx(mem, chain, scratch) {
                Ok((hdr, payload)) => muxer.on_guest_packet(&hdr, payload),
                Err(e) => {
                    tracing::debug!("vsock: bad TX packet: {e}");
                    METRICS.vsock.bad_packets.inc();
                }
            }
            Some(0)
        })
    }

    /// Fills RX buffers while the muxer has packets for the guest;
    /// returns how many.
    pub fn process_rx(&mut self) -> usize {
        let Some(q) = self.queues.as_mut() else {
            return 0;
        };
        if !self.muxer.has_rx() {
            return 0;
        }
        let muxer = &mut self.muxer;
        q.rx.serve(&METRICS.vsock.errors, |mem, chain| {
            muxer.fill_rx(mem, chain)
        })
    }

    /// Everything that may follow an event: a reset's clean-up, the
    /// guest's packets, then the packets for it.
    pub(super) fn run_queues(&mut self) {
        if self.reset_pending {
            self.reset_pending = false;
            self.muxer.kill_all();
        }
        self.send_transport_reset();
        self.process_tx();
        self.process_rx();
    }

    /// After a restore, puts TRANSPORT_RESET in the first good buffer of
    /// the event queue and raises the interrupt; with no buffer there,
    /// it waits for the guest to post one (and notify).
    fn send_transport_reset(&mut self) {
        if !self.transport_reset {
            return;
        }
        let Some(q) = self.queues.as_mut() else {
            return;
        };
        let mut sent = false;
        q.event.serve(&METRICS.vsock.errors, |mem, chain| {
            if sent {
                return None;
            }
            // virtio_vsock_event: le32 id.
            let event = EVENT_TRANSPORT_RESET.to_le_bytes();
            let written = Writer::new(mem, chain)
                .ok()
                .filter(|w| w.available_bytes() >= event.len())
                .is_some_and(|mut w| w.write_all(&event).is_ok());
            if !written {
                // Used empty; the event waits for the next buffer.
                METRICS.vsock.bad_packets.inc();
                return Some(0);
            }
            sent = true;
            Some(event.len() as u32)
        });
        if sent {
            self.transport_reset = false;
        }
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_F_RING_EVENT_IDX | VIRTIO_F_RING_INDIRECT_DESC
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 3]
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // virtio_vsock_config: le64 guest_cid.
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, active: ActiveQueues) -> Result<(), ActivateError> {
        let got = active.queues.len();
        if got != 3 {
            return Err(ActivateError::QueueCount { expected: 3, got });
        }
        let mut it = active.queues.into_iter().map(|queue| ActiveQueue {
            mem: active.mem.clone(),
            queue,
            interrupt: active.interrupt.clone(),
        });
        let (Some(rx), Some(tx), Some(event)) = (it.next(), it.next(), it.next()) else {
            return Err(ActivateError::QueueCount { expected: 3, got });
        };
        self.queues = Some(Queues { rx, tx, event });
        // This runs on a vCPU thread; the event loop serves what the
        // driver already queued (and what waits for it) on its own.
        let _ = self.queue_evts[RXQ].write(1);
        Ok(())
    }

    fn reset(&mut self) {
        self.queues = None;
        self.reset_pending = true;
        self.transport_reset = false;
        let _ = self.queue_evts[RXQ].write(1);
    }

    fn queue_states(&self) -> Vec<virtio_queue::QueueState> {
        self.queues
            .iter()
            .flat_map(|q| [&q.rx, &q.tx, &q.event])
            .map(|a| a.queue.state())
            .collect()
    }

    fn save_state(&self) -> DeviceState {
        DeviceState::Vsock(Persist::save(self))
    }

    fn restore_state(&mut self, state: &DeviceState) -> Result<(), VirtioPersistError> {
        match state {
            DeviceState::Vsock(s) => Persist::restore(self, s),
            other => Err(other.wrong("virtio-vsock")),
        }
    }

    fn activate_restored(&mut self, active: ActiveQueues) -> Result<(), ActivateError> {
        self.activate(active)?;
        // The connections the guest knew did not survive.
        self.transport_reset = true;
        Ok(())
    }
}
