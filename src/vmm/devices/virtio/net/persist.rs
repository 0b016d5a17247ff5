//! virtio-net in a snapshot: both rate limiters' budgets, and the one
//! frame the device read from the TAP but had not delivered yet (waiting
//! for guest buffers or for the receive limiter), so that it is not lost.
//!
//! What is not kept: frames still in the TAP's own queue when the VMM
//! stops. The TAP is opened again by name from the restored
//! configuration; if it is a new device (the old process's TAP went with
//! it), whatever the old one held is gone, as on a real network. Transmit
//! chains are written to the TAP as soon as they are popped, so none is in
//! flight; one the transmit limiter held back is still available in the
//! ring and is sent after the restore. The accepted features (and with them
//! the TAP's offloads) come back with the transport, which starts the
//! device again as on DRIVER_OK.

use serde::{Deserialize, Serialize};

use super::device::{Net, MAX_FRAME_LEN};
use super::tap::VNET_HDR_LEN;
use crate::vmm::devices::rate_limiter::RateLimiterState;
use crate::vmm::devices::virtio::persist::VirtioPersistError;
use crate::vmm::snapshot::Persist;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetState {
    pub rx_limiter: RateLimiterState,
    pub tx_limiter: RateLimiterState,
    /// The frame (virtio-net header included) read from the TAP and not
    /// yet delivered; empty for none.
    pub rx_frame: Vec<u8>,
    /// Whether the receive limiter already let that frame through.
    pub rx_admitted: bool,
}

impl Persist for Net {
    type State = NetState;
    type Error = VirtioPersistError;

    fn save(&self) -> NetState {
        NetState {
            rx_limiter: Persist::save(&self.rx_limiter),
            tx_limiter: Persist::save(&self.tx_limiter),
            rx_frame: self.rx_frame[..self.rx_pending].to_vec(),
            rx_admitted: self.rx_pending > 0 && self.rx_admitted,
        }
    }

    fn restore(&mut self, s: &NetState) -> Result<(), VirtioPersistError> {
        let n = s.rx_frame.len();
        if n != 0 && !(VNET_HDR_LEN..=MAX_FRAME_LEN).contains(&n) {
            return Err(VirtioPersistError::Invalid(
                "a held frame has an impossible length",
            ));
        }
        let Ok(()) = Persist::restore(&mut self.rx_limiter, &s.rx_limiter);
        let Ok(()) = Persist::restore(&mut self.tx_limiter, &s.tx_limiter);
        if self.rx_frame.len() < MAX_FRAME_LEN {
            self.rx_frame.resize(MAX_FRAME_LEN, 0);
        }
        self.rx_frame[..n].copy_from_slice(&s.rx_frame);
        self.rx_pending = n;
        self.rx_admitted = n > 0 && (s.rx_admitted || self.rx_limiter.is_unlimited());
        Ok(())
    }
}
