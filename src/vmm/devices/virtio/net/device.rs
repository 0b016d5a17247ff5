//! The virtio-net model: a receive queue (0) and a transmit queue (1) over
//! a TAP device.
//!
//! Every frame on either queue starts with the 12-byte
//! `virtio_net_hdr_v1`, which is also the TAP's header (`IFF_VNET_HDR`,
//! size 12), so frames pass through unchanged, offload fields included:
//! - transmit: the readable bytes of a chain (header and frame, in as many
//!   descriptors as the driver likes) are one write to the TAP;
//! - receive: one read from the TAP is one frame, written into the
//!   driver's buffers. With VIRTIO_NET_F_MRG_RXBUF a frame may fill several
//!   chains, and the header's `num_buffers` says how many; without it, one
//!   chain holds one frame and `num_buffers` is 1.
//!
//! When the driver has no receive buffers the device stops reading the
//! TAP (the event handler drops the TAP from the event loop's interest)
//! and keeps at most one frame it already read; a notification on the
//! receive queue resumes it. Frames wait in the TAP's own bounded queue
//! meanwhile, so nothing here grows with the traffic.
//!
//! Each direction may have a rate limiter (`rx_rate_limiter`,
//! `tx_rate_limiter`). A transmit chain the limiter holds back stays in
//! the ring until its timer fires. A received frame the limiter holds
//! back is the one frame kept; the TAP is not read meanwhile, so the
//! rest wait in the TAP's queue, as they do when the guest has no
//! buffers.
//!
//! With MMDS on the interface (`PUT /mmds/config`), transmitted frames
//! addressed to the MMDS address (ARP for it, IPv4 to it) go to the
//! interface's [`MmdsStack`] instead of the TAP, outside the transmit
//! limiter, and the stack's replies are delivered ahead of TAP frames,
//! outside the receive limiter (as in Firecracker).
//!
//! A guest cannot make the device misbehave: chains too short for the
//! header, read-only receive buffers, addresses outside guest memory and
//! frames over [`MAX_FRAME_LEN`] are answered (used length 0) and counted
//! in the `net` metrics.

use crate::vmm::kvm::memory::GuestMem;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT, Reader, Writer};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::tap::{Tap, TapError, VNET_HDR_LEN};
use crate::vmm::devices::rate_limiter::{RateLimiter, RateLimiterConfig, RateLimiterError};
use crate::vmm::devices::virtio::persist::{DeviceState, VirtioPersistError};
use crate::vmm::devices::virtio::queue::ActiveQueue;
use crate::vmm::devices::virtio::{
    read_config_bytes, ActivateError, ActiveQueues, VirtioDevice, INT_USED_RING, TYPE_NET,
    VIRTIO_F_RING_INDIRECT_DESC, VIRTIO_F_VERSION_1,
};
use crate::vmm::metrics::METRICS;
use crate::vmm::mmds::stack::MmdsStack;
use crate::vmm::snapshot::Persist;

pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
pub const QUEUE_SIZE: u16 = 256;
/// The largest header and frame, either way (65550 bytes of frame and the
/// 12-byte header, as Firecracker allows).
pub const MAX_FRAME_LEN: usize = 65562;
/// Frames moved per wake-up, so one busy interface cannot starve the loop
/// (the TAP stays readable and the loop comes back).
pub const RX_BATCH: usize = 64;

// Feature bits (virtio 1.x, section 5.1.3).
pub const F_CSUM: u64 = 1 << 0;
pub const F_GUEST_CSUM: u64 = 1 << 1;
pub const F_MTU: u64 = 1 << 3;
pub const F_MAC: u64 = 1 << 5;
pub const F_GUEST_TSO4: u64 = 1 << 7;
pub const F_GUEST_TSO6: u64 = 1 << 8;
pub const F_GUEST_UFO: u64 = 1 << 10;
pub const F_HOST_TSO4: u64 = 1 << 11;
pub const F_HOST_TSO6: u64 = 1 << 12;
pub const F_HOST_UFO: u64 = 1 << 14;
pub const F_MRG_RXBUF: u64 = 1 << 15;

/// virtio_net_config: mac (6), status (2), max_virtqueue_pairs (2), mtu (2).
const CONFIG_LEN: usize = 12;
/// Offset of `num_buffers` in the header.
const NUM_BUFFERS: usize = 10;

/// Options of one interface.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetOptions {
    /// Offered as VIRTIO_NET_F_MAC when set.
    pub guest_mac: Option<[u8; 6]>,
    /// Offered as VIRTIO_NET_F_MTU when set.
    pub mtu: Option<u16>,
    /// TAP to guest.
    pub rx_rate_limiter: RateLimiterConfig,
    /// Guest to TAP.
    pub tx_rate_limiter: RateLimiterConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(transparent)]
    Tap(#[from] TapError),
    #[error("cannot create an event fd: {0}")]
    EventFd(std::io::Error),
    #[error(transparent)]
    RateLimiter(#[from] RateLimiterError),
}

/// What the receive path needs from the event loop afterwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxState {
    /// The TAP has nothing more to read, or there is more after this
    /// batch: keep watching it.
    Watch,
    /// No room in the guest's buffers: stop reading the TAP until the
    /// driver adds buffers.
    NeedBuffers,
    /// The receive rate limiter holds a frame back: stop reading the TAP
    /// until its timer fires.
    Throttled,
}

/// How one frame went into the receive queue.
#[derive(Debug, PartialEq, Eq)]
enum Delivery {
    Delivered,
    /// The buffers the driver offers now are not enough; try again later.
    NoRoom,
    /// No buffers the driver could offer would hold it: gone.
    Dropped,
}

pub struct Net {
    pub(super) tap: Tap,
    pub(super) queue_evts: [EventFd; 2],
    options: NetOptions,
    config: [u8; CONFIG_LEN],
    pub(super) rx: Option<ActiveQueue>,
    pub(super) tx: Option<ActiveQueue>,
    /// The features the driver accepted.
    acked: u64,
    /// One frame from the TAP (and its length, 0 for none) that waits for
    /// room in the guest's buffers.
    pub(super) rx_frame: Vec<u8>,
    pub(super) rx_pending: usize,
    /// Whether the receive limiter let the pending frame through.
    pub(super) rx_admitted: bool,
    pub(super) rx_limiter: RateLimiter,
    pub(super) tx_limiter: RateLimiter,
    /// (head, length) of the chains one frame fills.
    rx_used: Vec<(u16, u32)>,
    tx_frame: Vec<u8>,
    /// Whether the event loop watches the TAP (the event handler keeps it).
    pub(super) tap_watched: bool,
    /// The TAP reported an error or hang-up and is no longer watched.
    pub(super) tap_dead: bool,
    /// TUNSETOFFLOAD flags last given to the TAP.
    offloads: Option<u32>,
    /// The metadata service's stack, on an interface `mmds-config` names.
    pub(super) mmds: Option<MmdsStack>,
}

/// `TUN_F_*` offloads for the TAP from the features the driver accepted:
/// what the guest can take in (partial checksums, TSO, UFO). TSO and UFO
/// need checksum offload, as in the spec and in the TAP driver.
pub fn tap_offloads(acked: u64) -> u32 {
    if acked & F_GUEST_CSUM == 0 {
        return 0;
    }
    let mut f = libc::TUN_F_CSUM;
    for (feature, flag) in [
        (F_GUEST_TSO4, libc::TUN_F_TSO4),
        (F_GUEST_TSO6, libc::TUN_F_TSO6),
        (F_GUEST_UFO, libc::TUN_F_UFO),
    ] {
        if acked & feature != 0 {
            f |= flag;
        }
    }
    f
}

impl Net {
    /// Opens the TAP `host_dev_name` for a new interface.
    pub fn new(host_dev_name: &str, options: NetOptions) -> Result<Net, NetError> {
        Self::with_tap(Tap::open(host_dev_name)?, options)
    }

    /// An interface over an open TAP (or a stand-in, in tests).
    pub fn with_tap(tap: Tap, options: NetOptions) -> Result<Net, NetError> {
        let evt = || EventFd::new(EFD_NONBLOCK).map_err(NetError::EventFd);
        let mut config = [0u8; CONFIG_LEN];
        if let Some(mac) = options.guest_mac {
            config[0..6].copy_from_slice(&mac);
        }
        config[8..10].copy_from_slice(&1u16.to_le_bytes());
        if let Some(mtu) = options.mtu {
            config[10..12].copy_from_slice(&mtu.to_le_bytes());
        }
        Ok(Net {
            tap,
            queue_evts: [evt()?, evt()?],
            rx_limiter: RateLimiter::new(&options.rx_rate_limiter)?,
            tx_limiter: RateLimiter::new(&options.tx_rate_limiter)?,
            options,
            config,
            rx: None,
            tx: None,
            acked: 0,
            rx_frame: Vec::new(),
            rx_pending: 0,
            rx_admitted: false,
            rx_used: Vec::new(),
            tx_frame: Vec::new(),
            tap_watched: false,
            tap_dead: false,
            offloads: None,
            mmds: None,
        })
    }

    /// Puts MMDS on this interface (before it joins the event loop, which
    /// then watches the stack's timer too).
    pub fn set_mmds(&mut self, stack: MmdsStack) {
        self.mmds = Some(stack);
    }

    /// The MMDS stack on this interface, if any.
    pub fn mmds(&self) -> Option<&MmdsStack> {
        self.mmds.as_ref()
    }

    /// Whether MMDS has frames waiting for the guest's buffers.
    pub fn mmds_has_output(&self) -> bool {
        self.mmds.as_ref().is_some_and(MmdsStack::has_output)
    }

    /// The TUNSETOFFLOAD flags given to the TAP at the last activation.
    pub fn offloads(&self) -> Option<u32> {
        self.offloads
    }

    /// Whether a frame read from the TAP waits for guest buffers or for
    /// the receive rate limiter.
    pub fn has_pending_frame(&self) -> bool {
        self.rx_pending > 0
    }

    /// Replaces either direction's rate limiter (PATCH
    /// /network-interfaces); what they held back is tried at once by the
    /// caller.
    pub fn update_rate_limiters(
        &mut self,
        rx: Option<&RateLimiterConfig>,
        tx: Option<&RateLimiterConfig>,
    ) -> Result<(), NetError> {
        // Both are checked before either changes.
        for cfg in [rx, tx].into_iter().flatten() {
            cfg.validate()?;
        }
        if let Some(cfg) = rx {
            self.rx_limiter.update(cfg)?;
            self.options.rx_rate_limiter = *cfg;
            if self.rx_limiter.is_unlimited() {
                self.rx_admitted = true;
            }
        }
        if let Some(cfg) = tx {
            self.tx_limiter.update(cfg)?;
            self.options.tx_rate_limiter = *cfg;
        }
        Ok(())
    }

    /// Sends every frame the driver made available on the transmit queue
    /// (to the TAP, or to MMDS); returns how many chains were used.
    pub fn process_tx(&mut self) -> usize {
        let Some(tx) = self.tx.as_mut() else {
            return 0;
        };
        if self.tx_frame.len() < MAX_FRAME_LEN {
            self.tx_frame.resize(MAX_FRAME_LEN, 0);
        }
        let (tap, buf, limiter, mmds) = (
            &self.tap,
            &mut self.tx_frame,
            &mut self.tx_limiter,
            &mut self.mmds,
        );
        tx.serve(&METRICS.net.tx_errors, |mem, chain| {
            let Some(len) = read_frame(mem, chain, buf) else {
                // The device writes nothing into transmit buffers.
                return Some(0);
            };
            let (hdr, frame) = buf[..len].split_at_mut(VNET_HDR_LEN);
            if let Some(stack) = mmds.as_mut().filter(|s| s.is_mmds_frame(frame)) {
                stack.detour(hdr, frame);
                return Some(0);
            }
            if !limiter.is_unlimited() && !limiter.consume((len - VNET_HDR_LEN) as u64) {
                // Left in the ring (read again when the timer fires).
                METRICS.net.tx_rate_limited.inc();
                return None;
            }
            write_frame(tap, &buf[..len]);
            Some(0)
        })
    }

    /// Moves frames from the TAP into the receive queue, at most
    /// [`RX_BATCH`] of them, and says whether the TAP should stay watched.
    pub fn process_rx(&mut self) -> RxState {
        if self.rx.is_none() {
            // Before DRIVER_OK or after a reset: nowhere to put a frame.
            return if self.tap.readable() {
                RxState::NeedBuffers
            } else {
                RxState::Watch
            };
        }
        if self.rx_frame.len() < MAX_FRAME_LEN {
            self.rx_frame.resize(MAX_FRAME_LEN, 0);
        }
        let mrg = self.acked & F_MRG_RXBUF != 0;
        let used_before = self.rx.as_ref().map_or(0, |rx| rx.queue.next_used());
        let mut state = RxState::Watch;
        for _ in 0..RX_BATCH {
            let Some(rx) = self.rx.as_mut() else {
                break;
            };
            if self.rx_pending == 0 {
                // MMDS's replies first, outside the receive limiter.
                let frame = &mut self.rx_frame[VNET_HDR_LEN..];
                if let Some(n) = self.mmds.as_mut().and_then(|m| m.next_frame(frame)) {
                    self.rx_frame[..VNET_HDR_LEN].fill(0);
                    self.rx_pending = VNET_HDR_LEN + n;
                    self.rx_admitted = true;
                }
            }
            if self.rx_pending == 0 {
                if self.rx_limiter.is_blocked() {
                    state = RxState::Throttled;
                    break;
                }
                if !has_available(rx) {
                    // Nothing to put a frame in: leave it in the TAP, and
                    // stop watching the TAP if something is waiting there.
                    if self.tap.readable() {
                        state = RxState::NeedBuffers;
                    }
                    break;
                }
                match self.tap.read_frame(&mut self.rx_frame) {
                    Ok(n) if n >= VNET_HDR_LEN => {
                        self.rx_pending = n;
                        self.rx_admitted = self.rx_limiter.is_unlimited();
                    }
                    Ok(_) => {
                        METRICS.net.rx_errors.inc();
                        continue;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        // A frame too large for the buffer is lost in the
                        // read (EFAULT), and so on: count and go on.
                        tracing::debug!("virtio-net: TAP read: {e}");
                        METRICS.net.rx_errors.inc();
                        break;
                    }
                }
            }
            if !self.rx_admitted {
                let bytes = (self.rx_pending - VNET_HDR_LEN) as u64;
                if !self.rx_limiter.consume(bytes) {
                    METRICS.net.rx_rate_limited.inc();
                    state = RxState::Throttled;
                    break;
                }
                self.rx_admitted = true;
            }
            let frame = &mut self.rx_frame[..self.rx_pending];
            match deliver(&mut rx.queue, &rx.mem, frame, mrg, &mut self.rx_used) {
                Delivery::Delivered => {
                    METRICS.net.rx_frames.inc();
                    METRICS
                        .net
                        .rx_bytes
                        .add((self.rx_pending - VNET_HDR_LEN) as u64);
                    self.rx_pending = 0;
                }
                Delivery::Dropped => {
                    METRICS.net.rx_dropped.inc();
                    self.rx_pending = 0;
                }
                Delivery::NoRoom => {
                    state = RxState::NeedBuffers;
                    break;
                }
            }
        }
        // Chains went back to the driver (frames, or malformed buffers
        // answered on their own): one interrupt for the batch.
        if let Some(rx) = self.rx.as_mut() {
            let moved = rx.queue.next_used() != used_before;
            if moved && rx.queue.needs_notification(&rx.mem).unwrap_or(true) {
                rx.interrupt.signal(INT_USED_RING);
            }
        }
        state
    }
}

/// Whether the driver has made a chain available that the device has not
/// taken yet.
fn has_available(q: &ActiveQueue) -> bool {
    q.queue
        .avail_idx(&q.mem, std::sync::atomic::Ordering::Acquire)
        .map(|idx| idx.0 != q.queue.next_avail())
        .unwrap_or(false)
}

/// Reads one transmit chain (header and frame) into `buf`; its length,
/// or None (counted) when the chain is malformed.
fn read_frame(mem: &GuestMem, chain: DescriptorChain<&GuestMem>, buf: &mut [u8]) -> Option<usize> {
    let m = &METRICS.net;
    let Ok(mut reader) = Reader::new(mem, chain) else {
        // A buffer outside guest memory, or lengths that overflow.
        m.tx_errors.inc();
        return None;
    };
    let len = reader.available_bytes();
    if !(VNET_HDR_LEN..=MAX_FRAME_LEN).contains(&len) || len > buf.len() {
        m.tx_errors.inc();
        return None;
    }
    if std::io::Read::read_exact(&mut reader, &mut buf[..len]).is_err() {
        m.tx_errors.inc();
        return None;
    }
    Some(len)
}

/// Writes one frame (header included) to the TAP.
fn write_frame(tap: &Tap, frame: &[u8]) {
    let m = &METRICS.net;
    let len = frame.len();
    match tap.write_frame(frame) {
        Ok(n) if n == len => {
            m.tx_frames.inc();
            m.tx_bytes.add((len - VNET_HDR_LEN) as u64);
        }
        Ok(_) => m.tx_dropped.inc(),
        Err(e) => {
            // The TAP is down, out of memory, or refused a header that
            // makes no sense to it: that frame is lost.
            tracing::debug!("virtio-net: TAP write: {e}");
            m.tx_dropped.inc();
        }
    }
}

/// Takes the next available chain: Ok(None) when there is none, Err when
/// the ring is broken (counted).
fn pop<'m>(
    queue: &mut Queue,
    mem: &'m GuestMem,
) -> Result<Option<DescriptorChain<&'m GuestMem>>, ()> {
    match queue.iter(mem) {
        Ok(mut chains) => Ok(chains.next()),
        Err(e) => {
            tracing::debug!("virtio-net: broken receive queue: {e}");
            METRICS.net.rx_errors.inc();
            Err(())
        }
    }
}

type Chain<'m> = DescriptorChain<&'m GuestMem>;

/// Room for frame bytes in a receive chain, or None when it is unusable
/// (outside guest memory, no writable bytes, or too short for the header
/// when it would carry one).
fn room(mem: &GuestMem, chain: &Chain<'_>, first: bool) -> Option<usize> {
    let w = Writer::new(mem, chain.clone()).ok()?;
    let n = w.available_bytes();
    let least = if first { VNET_HDR_LEN } else { 1 };
    (n >= least).then_some(n)
}

fn write_chain(mem: &GuestMem, chain: Chain<'_>, bytes: &[u8]) -> bool {
    match Writer::new(mem, chain) {
        Ok(mut w) => std::io::Write::write_all(&mut w, bytes).is_ok(),
        Err(_) => false,
    }
}

/// Puts one frame (header included) into the receive queue. Chains are
/// returned to the driver only once the whole frame is placed; until
/// then they can be given back to the ring (`next_avail` moved back), so
/// a frame that does not fit yet leaves the ring as it was.
fn deliver(
    queue: &mut Queue,
    mem: &GuestMem,
    frame: &mut [u8],
    mrg: bool,
    used: &mut Vec<(u16, u32)>,
) -> Delivery {
    used.clear();
    let mut start = queue.next_avail();
    let mut first: Option<Chain<'_>> = None;
    let mut off = 0;
    if !mrg {
        frame[NUM_BUFFERS..VNET_HDR_LEN].copy_from_slice(&1u16.to_le_bytes());
    }
    // A ring's worth of chains per frame at most, however fast a guest
    // adds more: the work and `used` stay bounded.
    let mut pops = 0;
    while off < frame.len() {
        let popped = if pops < queue.size() {
            pops += 1;
            pop(queue, mem)
        } else {
            Ok(None)
        };
        let chain = match popped {
            Ok(Some(c)) => c,
            Ok(None) | Err(()) => {
                let taken = queue.next_avail().wrapping_sub(start);
                queue.set_next_avail(start);
                // Every chain the ring can hold was not enough: no buffers
                // the driver could post would be.
                if taken >= queue.size() {
                    return Delivery::Dropped;
                }
                return Delivery::NoRoom;
            }
        };
        let head = chain.head_index();
        let Some(n) = room(mem, &chain, first.is_none()) else {
            METRICS.net.rx_errors.inc();
            if first.is_none() {
                // Nothing of the frame is in it yet: answer it on its own.
                add_used(queue, mem, head, 0);
                start = queue.next_avail();
            } else {
                used.push((head, 0));
            }
            continue;
        };
        if !mrg && n < frame.len() {
            // One chain per frame, and this one is too small: the frame
            // is dropped, the chain left for the next one.
            queue.set_next_avail(start);
            return Delivery::Dropped;
        }
        let len = n.min(frame.len() - off);
        if !write_chain(mem, chain.clone(), &frame[off..off + len]) {
            METRICS.net.rx_errors.inc();
            used.push((head, 0));
            continue;
        }
        off += len;
        used.push((head, len as u32));
        if first.is_none() {
            first = Some(chain);
        }
    }
    if mrg {
        let count = u16::try_from(used.len()).unwrap_or(u16::MAX);
        frame[NUM_BUFFERS..VNET_HDR_LEN].copy_from_slice(&count.to_le_bytes());
        if let Some(chain) = first {
            // The header went out before the count was known.
            write_chain(mem, chain, &frame[..VNET_HDR_LEN]);
        }
    }
    for &(head, len) in used.iter() {
        add_used(queue, mem, head, len);
    }
    Delivery::Delivered
}

fn add_used(queue: &mut Queue, mem: &GuestMem, head: u16, len: u32) {
    if let Err(e) = queue.add_used(mem, head, len) {
        tracing::debug!("virtio-net: cannot return a buffer: {e}");
        METRICS.net.rx_errors.inc();
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn avail_features(&self) -> u64 {
        let mut f = VIRTIO_F_VERSION_1
            | VIRTIO_F_RING_INDIRECT_DESC
            | F_CSUM
            | F_GUEST_CSUM
            | F_GUEST_TSO4
            | F_GUEST_TSO6
            | F_GUEST_UFO
            | F_HOST_TSO4
            | F_HOST_TSO6
            | F_HOST_UFO
            | F_MRG_RXBUF;
        if self.options.guest_mac.is_some() {
            f |= F_MAC;
        }
        if self.options.mtu.is_some() {
            f |= F_MTU;
        }
        f
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, active: ActiveQueues) -> Result<(), ActivateError> {
        let got = active.queues.len();
        let mut queues = active.queues.into_iter();
        let (Some(rx), Some(tx), None) = (queues.next(), queues.next(), queues.next()) else {
            return Err(ActivateError::QueueCount { expected: 2, got });
        };
        let wrap = |queue: Queue| ActiveQueue {
            mem: active.mem.clone(),
            queue,
            interrupt: active.interrupt.clone(),
        };
        self.rx = Some(wrap(rx));
        self.tx = Some(wrap(tx));
        self.acked = active.features;
        let offloads = tap_offloads(self.acked);
        if let Err(e) = self.tap.set_offload(offloads) {
            // The TAP keeps what it had: no offloads on a fresh open, so
            // the guest gets whole frames it can always take.
            tracing::warn!(
                "virtio-net: cannot set offloads on {}: {e}",
                self.tap.name()
            );
        }
        self.offloads = Some(offloads);
        // Buffers the driver made available before DRIVER_OK, and frames
        // already waiting: the event loop (which can change what it
        // watches) takes both from here.
        for evt in &self.queue_evts {
            let _ = evt.write(1);
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.rx = None;
        self.tx = None;
        self.acked = 0;
        if self.rx_pending > 0 {
            METRICS.net.rx_dropped.inc();
            self.rx_pending = 0;
            self.rx_admitted = false;
        }
    }

    fn queue_states(&self) -> Vec<virtio_queue::QueueState> {
        [&self.rx, &self.tx]
            .into_iter()
            .flatten()
            .map(|a| a.queue.state())
            .collect()
    }

    fn save_state(&self) -> DeviceState {
        DeviceState::Net(Persist::save(self))
    }

    fn restore_state(&mut self, state: &DeviceState) -> Result<(), VirtioPersistError> {
        match state {
            DeviceState::Net(s) => Persist::restore(self, s),
            other => Err(other.wrong("virtio-net")),
        }
    }

    fn activate_restored(&mut self, active: ActiveQueues) -> Result<(), ActivateError> {
        // Activation serves nothing here: it sets the TAP's offloads and
        // leaves the rest to the event loop.
        self.activate(active)
    }
}
