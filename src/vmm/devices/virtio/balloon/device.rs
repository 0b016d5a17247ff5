//! The virtio-balloon model (virtio 1.x, section 5.5): an inflate queue
//! and a deflate queue of page frame numbers (le32, 4 KiB pages), and a
//! statistics queue when statistics are on. The configuration space is
//! `num_pages` (the target the host sets, le32) and `actual` (what the
//! driver holds, le32, written by the driver).
//!
//! Inflated pages are given back to the host with `MADV_DONTNEED` on the
//! guest memory mapping (`MADV_REMOVE` when guest memory is a shared
//! memfd, as with virtio-fs: there DONTNEED would only unmap the pages); a page frame number outside guest memory is
//! skipped and counted (`bad_pfns`), never trusted. Hugetlbfs guest
//! memory (`huge_pages: "2M"`) keeps its pages: the balloon still holds
//! them away from the guest, but madvise on part of a 2 MiB page would
//! fail, or on older kernels drop the whole huge page with the guest's
//! data in its other 511 pages; they are counted (`hugetlb_kept_pages`).
//! Firecracker documents the same: the balloon restricts the guest but
//! cannot lower the RSS of hugetlbfs memory. Deflated pages need
//! nothing: the guest's next touch faults a zero page back in.
//!
//! With free page reporting (VIRTIO_BALLOON_F_PAGE_REPORTING) the driver
//! also sends ranges of free guest memory on a reporting queue; each
//! buffer's own address and length name the range, which is dropped like
//! inflated pages and the buffer returned.
//!
//! With free page hinting (VIRTIO_BALLOON_F_FREE_PAGE_HINT) the host asks
//! for runs of hints on a hinting queue; see `hinting.rs`.
//!
//! Statistics follow the spec's protocol: the driver offers one buffer of
//! `{le16 tag; le64 val}` records; the device reads it and keeps it, and
//! every polling interval (a timerfd) hands it back as used, which asks
//! the driver for fresh figures.
//!
//! The queues are served on the VMM thread only: on DRIVER_OK (a vCPU
//! thread) the device signals its queues' event fds rather than serving
//! them there.

use std::time::Duration;

use virtio_queue::{DescriptorChain, QueueT};
use vm_memory::bitmap::Bitmap;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::timerfd::TimerFd;

use crate::vmm::config::BalloonConfig;
use crate::vmm::devices::virtio::persist::{DeviceState, VirtioPersistError};
use crate::vmm::devices::virtio::queue::ActiveQueue;
use crate::vmm::devices::virtio::{
    read_config_bytes, ActivateError, ActiveQueues, VirtioDevice, INT_USED_RING, TYPE_BALLOON,
    VIRTIO_F_VERSION_1,
};
use crate::vmm::kvm::memory::GuestMem;
use crate::vmm::metrics::METRICS;
use crate::vmm::snapshot::Persist;

use super::hinting::{Hinting, VIRTIO_BALLOON_F_FREE_PAGE_HINT};

pub const QUEUE_SIZE: u16 = 256;
/// The balloon's page size, whatever the host's (spec 5.5.6).
pub const BALLOON_PAGE_SIZE: u64 = 4096;
/// num_pages, actual, free_page_hint_cmd_id and poison_val, le32 each.
pub const CONFIG_LEN: usize = 16;
/// Pages per MiB.
pub const PAGES_PER_MIB: u32 = (1 << 20) / BALLOON_PAGE_SIZE as u32;

pub const VIRTIO_BALLOON_F_STATS_VQ: u64 = 1 << 1;
pub const VIRTIO_BALLOON_F_DEFLATE_ON_OOM: u64 = 1 << 2;
pub const VIRTIO_BALLOON_F_PAGE_REPORTING: u64 = 1 << 5;

pub const INFLATE: usize = 0;
pub const DEFLATE: usize = 1;
/// The statistics queue's index, when there is one.
pub const STATS: usize = 2;

/// Which queue serves what, for a set of features: the inflate and
/// deflate queues, then statistics, hinting and reporting, each taking
/// the next index only when its feature is in `features`. The driver
/// numbers its queues by the features it accepted (Linux's virtio-mmio
/// skips the others), so after negotiation this is built from the
/// accepted features, not the offered ones.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueMap {
    pub stats: Option<usize>,
    pub hint: Option<usize>,
    pub report: Option<usize>,
    pub count: usize,
}

impl QueueMap {
    pub fn of(features: u64) -> QueueMap {
        let mut m = QueueMap {
            count: STATS,
            ..Default::default()
        };
        let mut next = |bit: u64| {
            (features & bit != 0).then(|| {
                m.count += 1;
                m.count - 1
            })
        };
        let stats = next(VIRTIO_BALLOON_F_STATS_VQ);
        let hint = next(VIRTIO_BALLOON_F_FREE_PAGE_HINT);
        let report = next(VIRTIO_BALLOON_F_PAGE_REPORTING);
        QueueMap {
            stats,
            hint,
            report,
            ..m
        }
    }
}

/// One statistics record: le16 tag, le64 value, packed.
const STAT_LEN: usize = 10;
/// The most records one statistics buffer is read for.
const MAX_STATS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum BalloonError {
    #[error("cannot create an event fd: {0}")]
    EventFd(std::io::Error),
    #[error("cannot create or arm the statistics timer: {0}")]
    Timer(vmm_sys_util::errno::Error),
}

/// The figures the guest last reported, by the spec's tags, in
/// Firecracker's names. (Snapshots hold it too, in a format that is not
/// self-describing: no field is ever skipped here; the API leaves out
/// the ones the guest never sent, in [`BalloonStats::to_json`].)
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GuestStats {
    pub swap_in: Option<u64>,
    pub swap_out: Option<u64>,
    pub major_faults: Option<u64>,
    pub minor_faults: Option<u64>,
    pub free_memory: Option<u64>,
    pub total_memory: Option<u64>,
    pub available_memory: Option<u64>,
    pub disk_caches: Option<u64>,
    pub hugetlb_allocations: Option<u64>,
    pub hugetlb_failures: Option<u64>,
    pub oom_kill: Option<u64>,
    pub alloc_stall: Option<u64>,
    pub async_scan: Option<u64>,
    pub direct_scan: Option<u64>,
    pub async_reclaim: Option<u64>,
    pub direct_reclaim: Option<u64>,
}

impl GuestStats {
    /// Records one tag; unknown tags are ignored (newer drivers send more).
    fn set(&mut self, tag: u16, val: u64) {
        let slot = match tag {
            0 => &mut self.swap_in,
            1 => &mut self.swap_out,
            2 => &mut self.major_faults,
            3 => &mut self.minor_faults,
            4 => &mut self.free_memory,
            5 => &mut self.total_memory,
            6 => &mut self.available_memory,
            7 => &mut self.disk_caches,
            8 => &mut self.hugetlb_allocations,
            9 => &mut self.hugetlb_failures,
            10 => &mut self.oom_kill,
            11 => &mut self.alloc_stall,
            12 => &mut self.async_scan,
            13 => &mut self.direct_scan,
            14 => &mut self.async_reclaim,
            15 => &mut self.direct_reclaim,
            _ => return,
        };
        *slot = Some(val);
    }
}

/// `GET /balloon/statistics`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct BalloonStats {
    pub target_pages: u32,
    pub actual_pages: u32,
    pub target_mib: u32,
    pub actual_mib: u32,
    #[serde(flatten)]
    pub guest: GuestStats,
}

impl BalloonStats {
    /// The answer's body: the figures the guest never reported are left
    /// out, as Firecracker does.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let Some(obj) = v.as_object_mut() {
            obj.retain(|_, v| !v.is_null());
        }
        v
    }
}

pub struct Balloon {
    pub(super) queue_evts: Vec<EventFd>,
    queue_sizes: Vec<u16>,
    pub(super) stats_timer: TimerFd,
    pub(super) stats_interval_s: u16,
    deflate_on_oom: bool,
    /// The madvise advice that frees a page of guest memory.
    pub(super) advice: libc::c_int,
    pub(super) target_pages: u32,
    pub(super) actual_pages: u32,
    /// The queues, once the driver set DRIVER_OK.
    pub(super) active: Vec<ActiveQueue>,
    /// The statistics buffer the device holds (its head index).
    pub(super) stats_desc: Option<u16>,
    pub(super) stats: GuestStats,
    /// The optional features offered (statistics, hinting, reporting).
    pub(super) offered: u64,
    /// The queues' roles: from the offered features until the driver
    /// accepts some, then from those.
    pub(super) map: QueueMap,
    pub(super) hinting: Hinting,
}

impl Balloon {
    /// A balloon for guest memory that is a shared memfd (`shared`) or
    /// private memory.
    pub fn new(cfg: &BalloonConfig, shared: bool) -> Result<Self, BalloonError> {
        let offered = [
            (cfg.stats_enabled(), VIRTIO_BALLOON_F_STATS_VQ),
            (cfg.free_page_hinting, VIRTIO_BALLOON_F_FREE_PAGE_HINT),
            (cfg.free_page_reporting, VIRTIO_BALLOON_F_PAGE_REPORTING),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .fold(0, |f, (_, bit)| f | bit);
        let map = QueueMap::of(offered);
        let count = map.count;
        let queue_evts = (0..count)
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<Result<Vec<_>, _>>()
            .map_err(BalloonError::EventFd)?;
        let mut b = Balloon {
            queue_evts,
            queue_sizes: vec![QUEUE_SIZE; count],
            stats_timer: TimerFd::new().map_err(BalloonError::Timer)?,
            stats_interval_s: 0,
            deflate_on_oom: cfg.deflate_on_oom,
            advice: if shared {
                libc::MADV_REMOVE
            } else {
                libc::MADV_DONTNEED
            },
            target_pages: mib_to_pages(cfg.amount_mib),
            actual_pages: 0,
            active: Vec::new(),
            stats_desc: None,
            stats: GuestStats::default(),
            offered,
            map,
            hinting: Hinting::default(),
        };
        b.set_stats_interval(cfg.stats_polling_interval_s)?;
        Ok(b)
    }

    /// Sets the target the driver sees in `num_pages`; the caller tells
    /// the driver through the transport (a configuration change).
    pub fn set_target_mib(&mut self, mib: u32) {
        self.target_pages = mib_to_pages(mib);
    }

    /// Changes the statistics polling interval and re-arms the timer
    /// (VMM thread: the vCPU threads may not arm timers).
    pub fn set_stats_interval(&mut self, secs: u16) -> Result<(), BalloonError> {
        self.stats_interval_s = secs;
        let every = Duration::from_secs(u64::from(secs.max(1)));
        if secs == 0 || self.offered & VIRTIO_BALLOON_F_STATS_VQ == 0 {
            return Ok(());
        }
        self.stats_timer
            .reset(every, Some(every))
            .map_err(BalloonError::Timer)
    }

    /// What `GET /balloon/statistics` answers.
    pub fn stats(&self) -> BalloonStats {
        BalloonStats {
            target_pages: self.target_pages,
            actual_pages: self.actual_pages,
            target_mib: self.target_pages / PAGES_PER_MIB,
            actual_mib: self.actual_pages / PAGES_PER_MIB,
            guest: self.stats,
        }
    }

    pub fn target_pages(&self) -> u32 {
        self.target_pages
    }

    pub fn actual_pages(&self) -> u32 {
        self.actual_pages
    }

    fn config_bytes(&self) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        c[..4].copy_from_slice(&self.target_pages.to_le_bytes());
        c[4..8].copy_from_slice(&self.actual_pages.to_le_bytes());
        c[8..12].copy_from_slice(&self.hinting.host_cmd.to_le_bytes());
        // poison_val (12..16) stays 0: VIRTIO_BALLOON_F_PAGE_POISON is not
        // offered.
        c
    }

    /// Serves the inflate queue: every page named is given back to the
    /// host. Returns how many chains were served.
    pub fn process_inflate(&mut self) -> usize {
        let Some(q) = self.active.get_mut(INFLATE) else {
            return 0;
        };
        let advice = self.advice;
        q.serve(&METRICS.balloon.malformed, |mem, chain| {
            let pages = for_each_pfn(mem, chain, |mem, pfns| discard(mem, pfns, advice));
            METRICS.balloon.inflated_pages.add(pages);
            Some(0)
        })
    }

    /// Serves the deflate queue: the pages are the guest's again, which
    /// costs the host nothing until the guest touches them.
    pub fn process_deflate(&mut self) -> usize {
        let Some(q) = self.active.get_mut(DEFLATE) else {
            return 0;
        };
        q.serve(&METRICS.balloon.malformed, |mem, chain| {
            let pages = for_each_pfn(mem, chain, |mem, pfns| {
                let good = pfns.iter().filter(|&&p| page_of(mem, p).is_some()).count();
                METRICS.balloon.bad_pfns.add((pfns.len() - good) as u64);
                good as u64
            });
            METRICS.balloon.deflated_pages.add(pages);
            Some(0)
        })
    }

    /// The driver offered a statistics buffer: read it and keep it until
    /// the next tick.
    pub fn process_stats(&mut self) {
        let Some(q) = self.map.stats.and_then(|i| self.active.get_mut(i)) else {
            return;
        };
        let mut returned = false;
        while let Some(chain) = q.queue.pop_descriptor_chain(&q.mem) {
            let head = chain.head_index();
            if let Some(old) = self.stats_desc.replace(head) {
                // A driver that follows the protocol never has two out;
                // give the old one back rather than leak it.
                METRICS.balloon.malformed.inc();
                if q.queue.add_used(&q.mem, old, 0).is_err() {
                    METRICS.balloon.malformed.inc();
                }
                returned = true;
            }
            match read_stats(&q.mem, chain) {
                Some(s) => {
                    self.stats = s;
                    METRICS.balloon.stats_updates.inc();
                }
                None => METRICS.balloon.malformed.inc(),
            }
        }
        if returned {
            q.interrupt.signal(INT_USED_RING);
        }
    }

    /// The polling interval passed: hand the buffer back, which asks the
    /// driver for fresh figures.
    pub fn on_stats_timer(&mut self) {
        let _ = self.stats_timer.wait();
        self.request_stats();
    }

    /// Hands the statistics buffer back (if the device holds one).
    pub fn request_stats(&mut self) {
        let Some(q) = self.map.stats.and_then(|i| self.active.get_mut(i)) else {
            return;
        };
        let Some(head) = self.stats_desc.take() else {
            return;
        };
        if let Err(e) = q.queue.add_used(&q.mem, head, 0) {
            tracing::warn!("virtio-balloon: cannot return the statistics buffer: {e}");
            METRICS.balloon.malformed.inc();
            return;
        }
        q.interrupt.signal(INT_USED_RING);
    }
}

impl Balloon {
    /// Serves the reporting queue: each buffer names a range of free
    /// guest memory, which the host drops. Returns how many chains were
    /// served.
    pub fn process_reporting(&mut self) -> usize {
        let advice = self.advice;
        let Some(q) = self.map.report.and_then(|i| self.active.get_mut(i)) else {
            return 0;
        };
        q.serve(&METRICS.balloon.malformed, |mem, chain| {
            for desc in chain {
                let pages = discard_range(mem, desc.addr().0, desc.len(), advice);
                METRICS.balloon.reported_pages.add(pages);
            }
            Some(0)
        })
    }
}

/// Drops the whole balloon pages in `[addr, addr + len)`; a range that
/// is not page-aligned or not inside guest memory is malformed, and
/// pages outside guest memory are counted as bad.
pub(super) fn discard_range(mem: &GuestMem, addr: u64, len: u32, advice: libc::c_int) -> u64 {
    if !addr.is_multiple_of(BALLOON_PAGE_SIZE) || !u64::from(len).is_multiple_of(BALLOON_PAGE_SIZE)
    {
        METRICS.balloon.malformed.inc();
        return 0;
    }
    let Some(end) = addr.checked_add(u64::from(len)) else {
        METRICS.balloon.malformed.inc();
        return 0;
    };
    // Each region's part of the range in one call: a range of 4 GiB costs
    // as little as one of a page, whatever the guest sends.
    let (mut done, mut covered) = (0, 0);
    for r in mem.iter() {
        let start = r.start_addr().0;
        let (from, to) = (addr.max(start), end.min(start + r.len()));
        if from >= to {
            continue;
        }
        let (off, bytes) = ((from - start) as usize, (to - from) as usize);
        let pages = (to - from) / BALLOON_PAGE_SIZE;
        covered += pages;
        if r.is_hugetlbfs() == Some(true) {
            METRICS.balloon.hugetlb_kept_pages.add(pages);
            continue;
        }
        // The pages read as zeros from now on: a diff snapshot must
        // write them.
        r.bitmap().mark_dirty(off, bytes);
        // The part is inside the region, so the pointer is inside the
        // mapping.
        drop_pages(r.as_ptr().wrapping_add(off), bytes, advice);
        done += pages;
    }
    METRICS
        .balloon
        .bad_pfns
        .add(u64::from(len) / BALLOON_PAGE_SIZE - covered);
    done
}

/// Gives `len` bytes of guest memory at `ptr` back to the host.
fn drop_pages(ptr: *mut u8, len: usize, advice: libc::c_int) {
    // SAFETY: callers pass a range inside one guest memory mapping owned
    // by the device's `GuestMem` (checked against the region's bounds).
    // MADV_DONTNEED (and MADV_REMOVE on a shared memfd) only drops the
    // pages' contents: the mapping stays valid, and the next access (by
    // the guest or the VMM) finds zeros (the file's contents, for a
    // private file mapping); the spec leaves them undefined.
    let r = unsafe { libc::madvise(ptr.cast(), len, advice) };
    if r != 0 {
        tracing::warn!(
            advice,
            "virtio-balloon: madvise: {}",
            std::io::Error::last_os_error()
        );
    }
}

pub fn mib_to_pages(mib: u32) -> u32 {
    mib.saturating_mul(PAGES_PER_MIB)
}

/// Reads every le32 page frame number in `chain`'s readable buffers and
/// hands them to `f` buffer by buffer; returns the sum of what `f`
/// returned. Write-only buffers and trailing bytes that are not a whole
/// PFN are counted as malformed.
fn for_each_pfn(
    mem: &GuestMem,
    chain: DescriptorChain<&GuestMem>,
    mut f: impl FnMut(&GuestMem, &[u32]) -> u64,
) -> u64 {
    let mut total = 0;
    let mut raw = [0u8; 1024];
    let mut pfns = [0u32; 256];
    for desc in chain {
        if desc.is_write_only() || desc.len() % 4 != 0 {
            METRICS.balloon.malformed.inc();
        }
        if desc.is_write_only() {
            continue;
        }
        let whole = u64::from(desc.len() / 4 * 4);
        let mut at = 0u64;
        while at < whole {
            let n = ((whole - at) as usize).min(raw.len());
            let Some(addr) = desc.addr().0.checked_add(at) else {
                METRICS.balloon.malformed.inc();
                break;
            };
            if mem.read_slice(&mut raw[..n], GuestAddress(addr)).is_err() {
                // The buffer is not in guest memory.
                METRICS.balloon.malformed.inc();
                break;
            }
            for (i, b) in raw[..n].chunks_exact(4).enumerate() {
                pfns[i] = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
            total += f(mem, &pfns[..n / 4]);
            at += n as u64;
        }
    }
    total
}

/// The region holding page `pfn` whole, and the page's offset in it.
fn page_of(
    mem: &GuestMem,
    pfn: u32,
) -> Option<(
    &vm_memory::GuestRegionMmap<Option<vm_memory::bitmap::AtomicBitmap>>,
    u64,
)> {
    let addr = u64::from(pfn) * BALLOON_PAGE_SIZE;
    mem.iter().find_map(|r| {
        let start = r.start_addr().0;
        let off = addr.checked_sub(start)?;
        (off + BALLOON_PAGE_SIZE <= r.len()).then_some((r, off))
    })
}

/// Gives the pages named back to the host, runs of neighbours in one
/// call. Returns how many were; PFNs outside guest memory are counted in
/// `bad_pfns` and skipped.
fn discard(mem: &GuestMem, pfns: &[u32], advice: libc::c_int) -> u64 {
    let mut done = 0;
    let mut run: Option<(*mut u8, usize)> = None;
    // Every page of a run was checked by page_of to lie in one region.
    let flush = |run: &mut Option<(*mut u8, usize)>| {
        if let Some((ptr, len)) = run.take() {
            drop_pages(ptr, len, advice);
        }
    };
    for &pfn in pfns {
        let Some((region, off)) = page_of(mem, pfn) else {
            METRICS.balloon.bad_pfns.inc();
            continue;
        };
        if region.is_hugetlbfs() == Some(true) {
            METRICS.balloon.hugetlb_kept_pages.inc();
            continue;
        }
        // The page reads as zeros from now on: a diff snapshot must
        // write it.
        region
            .bitmap()
            .mark_dirty(off as usize, BALLOON_PAGE_SIZE as usize);
        // The offset is inside the region (page_of), so the pointer is
        // inside the mapping.
        let ptr = region.as_ptr().wrapping_add(off as usize);
        match &mut run {
            Some((p, len)) if p.wrapping_add(*len) == ptr => *len += BALLOON_PAGE_SIZE as usize,
            _ => {
                flush(&mut run);
                run = Some((ptr, BALLOON_PAGE_SIZE as usize));
            }
        }
        done += 1;
    }
    flush(&mut run);
    done
}

/// Parses a statistics buffer (its readable part); None when it holds no
/// whole record or is not in guest memory.
fn read_stats(mem: &GuestMem, chain: DescriptorChain<&GuestMem>) -> Option<GuestStats> {
    let mut stats = GuestStats::default();
    let mut seen = 0;
    for desc in chain.filter(|d| !d.is_write_only()) {
        let records = (desc.len() as usize / STAT_LEN).min(MAX_STATS - seen);
        let mut buf = [0u8; STAT_LEN * MAX_STATS];
        let bytes = &mut buf[..records * STAT_LEN];
        mem.read_slice(bytes, desc.addr()).ok()?;
        for r in bytes.chunks_exact(STAT_LEN) {
            let tag = u16::from_le_bytes([r[0], r[1]]);
            let mut v = [0u8; 8];
            v.copy_from_slice(&r[2..]);
            stats.set(tag, u64::from_le_bytes(v));
        }
        seen += records;
    }
    (seen > 0).then_some(stats)
}

impl VirtioDevice for Balloon {
    fn device_type(&self) -> u32 {
        TYPE_BALLOON
    }

    fn avail_features(&self) -> u64 {
        let mut f = VIRTIO_F_VERSION_1;
        if self.deflate_on_oom {
            f |= VIRTIO_BALLOON_F_DEFLATE_ON_OOM;
        }
        f | self.offered
    }

    fn queues_in_use(&self, features: u64) -> usize {
        QueueMap::of(features & self.offered).count
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_bytes(), offset, data);
    }

    /// Only `actual` (bytes 4 to 7) is the driver's to write.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let mut c = self.config_bytes();
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        let Some(end) = start.checked_add(data.len()).filter(|&e| e <= 8) else {
            return;
        };
        if start < 4 {
            return;
        }
        c[start..end].copy_from_slice(data);
        self.actual_pages = u32::from_le_bytes([c[4], c[5], c[6], c[7]]);
    }

    fn activate(&mut self, active: ActiveQueues) -> Result<(), ActivateError> {
        self.activate_restored(active)?;
        METRICS.balloon.activations.inc();
        // Served on the VMM thread (madvise, timers), not here.
        for evt in &self.queue_evts {
            let _ = evt.write(1);
        }
        Ok(())
    }

    /// A reset ends any hinting run: a driver loaded afresh starts with
    /// DONE and no id of its own.
    fn reset(&mut self) {
        self.active.clear();
        self.stats_desc = None;
        self.map = QueueMap::of(self.offered);
        self.hinting.reset();
    }

    fn queue_states(&self) -> Vec<virtio_queue::QueueState> {
        self.active.iter().map(|a| a.queue.state()).collect()
    }

    fn save_state(&self) -> DeviceState {
        DeviceState::Balloon(Persist::save(self))
    }

    fn restore_state(&mut self, state: &DeviceState) -> Result<(), VirtioPersistError> {
        match state {
            DeviceState::Balloon(s) => Persist::restore(self, s),
            other => Err(other.wrong("virtio-balloon")),
        }
    }

    fn activate_restored(&mut self, active: ActiveQueues) -> Result<(), ActivateError> {
        let map = QueueMap::of(active.features & self.offered);
        self.active = active.split_n(map.count)?;
        self.map = map;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_memory_needs_madv_remove_to_drop_a_page() {
        let mem = crate::vmm::kvm::memory::create_shared_guest_memory(
            &crate::vmm::kvm::memory::ram_ranges(16).unwrap(),
            Default::default(),
        )
        .unwrap();
        let at = GuestAddress(1 << 20);
        let pfn = (at.0 / BALLOON_PAGE_SIZE) as u32;
        mem.write_obj(0x5au8, at).unwrap();
        // DONTNEED only unmaps a shared page: the memfd still has it.
        assert_eq!(discard(&mem, &[pfn], libc::MADV_DONTNEED), 1);
        assert_eq!(mem.read_obj::<u8>(at).unwrap(), 0x5a);
        assert_eq!(discard(&mem, &[pfn], libc::MADV_REMOVE), 1);
        assert_eq!(mem.read_obj::<u8>(at).unwrap(), 0);
    }

    #[test]
    fn hugetlbfs_pages_are_kept_whole() {
        use vm_memory::mmap::MmapRegionBuilder;
        // Anonymous 4 KiB memory marked as hugetlbfs: madvise would work
        // on it, so only the balloon's own check keeps the page.
        let region = MmapRegionBuilder::new_with_bitmap(4 << 20, None)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_ANONYMOUS)
            .with_hugetlbfs(true)
            .build()
            .unwrap();
        let region = vm_memory::GuestRegionMmap::new(region, GuestAddress(0)).unwrap();
        let mem = GuestMem::from_regions(vec![region]).unwrap();
        let at = GuestAddress(2 << 20);
        mem.write_obj(0x5au8, at).unwrap();
        let kept = METRICS.balloon.hugetlb_kept_pages.get();
        let pfns: Vec<u32> = (0..512)
            .map(|i| (at.0 / BALLOON_PAGE_SIZE) as u32 + i)
            .collect();
        assert_eq!(discard(&mem, &pfns, libc::MADV_DONTNEED), 0);
        assert_eq!(discard_range(&mem, at.0, 4096, libc::MADV_DONTNEED), 0);
        assert_eq!(mem.read_obj::<u8>(at).unwrap(), 0x5a);
        assert!(METRICS.balloon.hugetlb_kept_pages.get() >= kept + 513);
    }
}
