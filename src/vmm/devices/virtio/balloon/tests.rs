//! The balloon behind the real transport, driven from the host.

use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, GuestAddress};

use super::device::{DEFLATE, INFLATE, STATS};
use super::*;
use crate::vmm::config::BalloonConfig;
use crate::vmm::devices::virtio::mmio::reg;
use crate::vmm::devices::virtio::test_utils::{Driver, BUFFERS, F_NEXT, F_WRITE, MEM_SIZE};
use crate::vmm::devices::virtio::VirtioDevice;
use crate::vmm::metrics::METRICS;
use crate::vmm::snapshot::Persist;

fn config(amount_mib: u32, oom: bool, stats: u16) -> BalloonConfig {
    BalloonConfig {
        amount_mib,
        deflate_on_oom: oom,
        stats_polling_interval_s: stats,
        ..Default::default()
    }
}

fn up(cfg: &BalloonConfig) -> (Arc<Mutex<Balloon>>, Driver) {
    let b = Arc::new(Mutex::new(Balloon::new(cfg, false).unwrap()));
    let mut d = Driver::new(b.clone());
    let features = b.lock().unwrap().avail_features();
    let queues = b.lock().unwrap().queue_max_sizes().len() as u16;
    d.up(features, queues, 16);
    (b, d)
}

#[test]
fn features_and_config_space_follow_the_configuration() {
    let b = Balloon::new(&config(2, true, 0), false).unwrap();
    let f = b.avail_features();
    assert_ne!(f & VIRTIO_BALLOON_F_DEFLATE_ON_OOM, 0);
    assert_eq!(f & VIRTIO_BALLOON_F_STATS_VQ, 0);
    assert_eq!(b.queue_max_sizes().len(), 2);
    let b = Balloon::new(&config(0, false, 3), false).unwrap();
    let f = b.avail_features();
    assert_eq!(f & VIRTIO_BALLOON_F_DEFLATE_ON_OOM, 0);
    assert_ne!(f & VIRTIO_BALLOON_F_STATS_VQ, 0);
    assert_eq!(b.queue_max_sizes().len(), 3);

    let (b, mut d) = up(&config(2, false, 0));
    assert_eq!(d.read_reg(reg::DEVICE_ID), 5);
    assert_eq!(d.read_reg(reg::CONFIG), 2 * PAGES_PER_MIB);
    // The driver writes actual; num_pages is the host's.
    d.write_reg(reg::CONFIG + 4, 7);
    d.write_reg(reg::CONFIG, 99);
    assert_eq!(d.read_reg(reg::CONFIG + 4), 7);
    assert_eq!(d.read_reg(reg::CONFIG), 2 * PAGES_PER_MIB);
    // A new target shows, and the transport raises a config interrupt.
    b.lock().unwrap().set_target_mib(3);
    d.transport.config_changed();
    assert_eq!(d.read_reg(reg::CONFIG), 3 * PAGES_PER_MIB);
    assert_ne!(d.read_reg(reg::INTERRUPT_STATUS) & 2, 0);
    let s = b.lock().unwrap().stats();
    assert_eq!((s.target_pages, s.actual_pages, s.target_mib), (768, 7, 3));
}

#[test]
fn inflated_pages_are_dropped_and_hostile_pfns_skipped() {
    let (b, d) = up(&config(1, false, 0));
    // Three pages of guest memory with something in them.
    let page = |n: u64| GuestAddress((8 << 20) + n * 4096);
    for n in 0..3 {
        d.mem.write_obj(0xabu8, page(n)).unwrap();
    }
    let first = (page(0).0 / 4096) as u32;
    let mem_pages = (MEM_SIZE / 4096) as u32;
    let pfns: Vec<u32> = vec![
        first,
        first + 1,
        first + 2,
        mem_pages,
        u32::MAX,
        mem_pages - 1,
    ];
    let bytes: Vec<u8> = pfns.iter().flat_map(|p| p.to_le_bytes()).collect();
    d.mem.write_slice(&bytes, GuestAddress(BUFFERS)).unwrap();
    let (bad, malformed, inflated) = (
        METRICS.balloon.bad_pfns.get(),
        METRICS.balloon.malformed.get(),
        METRICS.balloon.inflated_pages.get(),
    );
    // Chain 0: the PFNs then 2 stray bytes; chain 1: a device-writable
    // buffer; chain 2: a buffer outside guest memory.
    d.desc(0, 0, BUFFERS, bytes.len() as u32, F_NEXT, 1);
    d.desc(0, 1, BUFFERS, 2, 0, 0);
    d.desc(0, 2, BUFFERS, 8, F_WRITE, 0);
    d.desc(0, 3, MEM_SIZE as u64 - 4, 64, 0, 0);
    for head in [0, 2, 3] {
        d.make_available(0, head);
    }
    assert_eq!(b.lock().unwrap().process_inflate(), 3);
    assert_eq!(d.used_idx(0), 3);
    for n in 0..3 {
        assert_eq!(d.mem.read_obj::<u8>(page(n)).unwrap(), 0, "page {n}");
    }
    assert!(METRICS.balloon.bad_pfns.get() >= bad + 2);
    assert!(METRICS.balloon.malformed.get() >= malformed + 3);
    assert!(METRICS.balloon.inflated_pages.get() >= inflated + 4);
    // Deflating counts the good ones and touches nothing.
    d.desc(1, 0, BUFFERS, 12, 0, 0);
    d.make_available(1, 0);
    let deflated = METRICS.balloon.deflated_pages.get();
    assert_eq!(b.lock().unwrap().process_deflate(), 1);
    assert!(METRICS.balloon.deflated_pages.get() >= deflated + 3);
    assert_eq!(d.used_idx(1), 1);
    let _ = (INFLATE, DEFLATE);
}

#[test]
fn the_stats_buffer_is_kept_until_the_timer_asks_again() {
    let (b, d) = up(&config(1, true, 60));
    let stat = |tag: u16, val: u64| {
        let mut r = tag.to_le_bytes().to_vec();
        r.extend_from_slice(&val.to_le_bytes());
        r
    };
    let mut buf = stat(4, 1000);
    buf.extend(stat(5, 5000));
    buf.extend(stat(77, 1)); // unknown: ignored
    d.mem.write_slice(&buf, GuestAddress(BUFFERS)).unwrap();
    d.desc(STATS as u16, 0, BUFFERS, buf.len() as u32, 0, 0);
    d.make_available(STATS as u16, 0);
    b.lock().unwrap().process_stats();
    // Held, not used.
    assert_eq!(d.used_idx(STATS as u16), 0);
    let s = b.lock().unwrap().stats();
    assert_eq!(s.guest.free_memory, Some(1000));
    assert_eq!(s.guest.total_memory, Some(5000));
    assert_eq!(s.guest.swap_in, None);
    let v = s.to_json();
    assert_eq!(v["free_memory"], 1000);
    assert!(v.get("swap_in").is_none(), "{v}");
    assert_eq!(v["target_mib"], 1);
    // The snapshot carries the held buffer.
    let saved = Persist::save(&*b.lock().unwrap());
    assert_eq!(saved.stats_desc, Some(0));
    let mut other = Balloon::new(&config(1, true, 60), false).unwrap();
    Persist::restore(&mut other, &saved).unwrap();
    assert_eq!(Persist::save(&other), saved);
    let mut no_stats = Balloon::new(&config(1, true, 0), false).unwrap();
    assert!(Persist::restore(&mut no_stats, &saved).is_err());
    // The tick hands it back.
    b.lock().unwrap().request_stats();
    assert_eq!(d.used_idx(STATS as u16), 1);
    assert_eq!(d.used(STATS as u16, 0), (0, 0));
    // Nothing held: a tick does nothing.
    b.lock().unwrap().request_stats();
    assert_eq!(d.used_idx(STATS as u16), 1);
}

#[test]
fn reported_free_ranges_are_dropped() {
    let mut cfg = config(0, false, 0);
    cfg.free_page_reporting = true;
    let (b, d) = up(&cfg);
    let f = b.lock().unwrap().avail_features();
    assert_ne!(f & VIRTIO_BALLOON_F_PAGE_REPORTING, 0);
    assert_eq!(f & VIRTIO_BALLOON_F_STATS_VQ, 0);
    let at = GuestAddress(4 << 20);
    d.mem.write_obj(0x77u8, at).unwrap();
    d.mem.write_obj(0x77u8, GuestAddress(at.0 + 4096)).unwrap();
    let (reported, malformed) = (
        METRICS.balloon.reported_pages.get(),
        METRICS.balloon.malformed.get(),
    );
    // The reporting queue is index 2 without statistics: one good
    // range of two pages, one that is not page-aligned.
    d.desc(2, 0, at.0, 8192, F_WRITE, 0);
    d.desc(2, 1, at.0 + 100, 4096, F_WRITE, 0);
    d.make_available(2, 0);
    d.make_available(2, 1);
    assert_eq!(b.lock().unwrap().process_reporting(), 2);
    assert_eq!(d.used_idx(2), 2);
    assert_eq!(d.mem.read_obj::<u8>(at).unwrap(), 0);
    assert_eq!(d.mem.read_obj::<u8>(GuestAddress(at.0 + 4096)).unwrap(), 0);
    assert!(METRICS.balloon.reported_pages.get() >= reported + 2);
    assert!(METRICS.balloon.malformed.get() > malformed);
    // With statistics too, reporting is queue 3.
    cfg.stats_polling_interval_s = 5;
    let b = Balloon::new(&cfg, false).unwrap();
    assert_eq!(b.queue_max_sizes().len(), 4);
    assert_eq!((b.map.stats, b.map.report), (Some(2), Some(3)));
}

#[test]
fn hints_are_dropped_only_during_the_run_the_host_asked_for() {
    let mut cfg = config(0, false, 0);
    cfg.free_page_hinting = true;
    let (b, mut d) = up(&cfg);
    assert_ne!(
        b.lock().unwrap().avail_features() & VIRTIO_BALLOON_F_FREE_PAGE_HINT,
        0
    );
    let at = GuestAddress(4 << 20);
    let cmd = GuestAddress(1 << 20);
    d.mem.write_obj(0x77u8, at).unwrap();
    let stale = METRICS.balloon.stale_hints.get();
    // A hint before any run is returned untouched.
    d.desc(2, 0, at.0, 4096, F_WRITE, 0);
    d.make_available(2, 0);
    assert_eq!(b.lock().unwrap().process_hinting(), 1);
    assert_eq!(d.mem.read_obj::<u8>(at).unwrap(), 0x77);
    assert!(METRICS.balloon.stale_hints.get() > stale);
    // The host starts run 2; the driver sees it in the configuration.
    assert_eq!(b.lock().unwrap().start_hinting(false), Ok(2));
    assert_eq!(d.read_reg(reg::CONFIG + 8), 2);
    // The driver answers with the id, then hints: the page is dropped.
    d.mem.write_obj(2u32, cmd).unwrap();
    d.desc(2, 1, cmd.0, 4, 0, 0);
    d.desc(2, 2, at.0, 4096, F_WRITE, 0);
    d.make_available(2, 1);
    d.make_available(2, 2);
    assert_eq!(b.lock().unwrap().process_hinting(), 2);
    assert_eq!(d.mem.read_obj::<u8>(at).unwrap(), 0);
    // STOP without acknowledge_on_stop leaves the host's id as it was.
    d.mem.write_obj(0u32, cmd).unwrap();
    d.desc(2, 3, cmd.0, 4, 0, 0);
    d.make_available(2, 3);
    b.lock().unwrap().process_hinting();
    let s = b.lock().unwrap().hinting_status();
    assert_eq!((s.host_cmd, s.guest_cmd), (2, Some(0)));
    // A short command buffer is malformed, not a crash.
    let malformed = METRICS.balloon.malformed.get();
    d.desc(2, 4, cmd.0, 2, 0, 0);
    d.make_available(2, 4);
    b.lock().unwrap().process_hinting();
    assert!(METRICS.balloon.malformed.get() > malformed);
    // The state survives a snapshot; a balloon without hinting refuses it.
    // A hint that arrives after the host said DONE is not dropped.
    b.lock().unwrap().stop_hinting().unwrap();
    d.mem.write_obj(2u32, cmd).unwrap();
    d.mem.write_obj(0x78u8, at).unwrap();
    d.desc(2, 5, cmd.0, 4, 0, 0);
    d.desc(2, 6, at.0, 4096, F_WRITE, 0);
    d.make_available(2, 5);
    d.make_available(2, 6);
    b.lock().unwrap().process_hinting();
    assert_eq!(d.mem.read_obj::<u8>(at).unwrap(), 0x78);
    // A restored balloon keeps its ids but starts with no run, and the
    // guest's old id forgotten; a new run takes the next id.
    assert_eq!(b.lock().unwrap().start_hinting(true), Ok(3));
    let saved = Persist::save(&*b.lock().unwrap());
    let mut other = Balloon::new(&cfg, false).unwrap();
    Persist::restore(&mut other, &saved).unwrap();
    let st = other.hinting_status();
    assert_eq!((st.host_cmd, st.guest_cmd), (1, None));
    let mut forged = saved.clone();
    forged.hinting.host_cmd = 9;
    assert!(Persist::restore(&mut other, &forged).is_err());
    let mut plain = Balloon::new(&config(0, false, 0), false).unwrap();
    assert!(Persist::restore(&mut plain, &saved).is_err());
    // Queue order: statistics, hinting, reporting.
    cfg.stats_polling_interval_s = 1;
    cfg.free_page_reporting = true;
    let b = Balloon::new(&cfg, false).unwrap();
    assert_eq!(
        (b.map.stats, b.map.hint, b.map.report),
        (Some(2), Some(3), Some(4))
    );
    assert_eq!(b.queue_max_sizes().len(), 5);
}

#[test]
fn queues_are_numbered_by_the_features_the_driver_accepted() {
    // Offered: statistics, hinting and reporting. The driver takes only
    // reporting, so its queues are inflate, deflate and reporting (2).
    let mut cfg = config(0, false, 1);
    cfg.free_page_hinting = true;
    cfg.free_page_reporting = true;
    let b = Arc::new(Mutex::new(Balloon::new(&cfg, false).unwrap()));
    assert_eq!(b.lock().unwrap().queue_max_sizes().len(), 5);
    let mut d = Driver::new(b.clone());
    d.up(VIRTIO_BALLOON_F_PAGE_REPORTING, 3, 16);
    let map = b.lock().unwrap().map;
    assert_eq!(
        (map.stats, map.hint, map.report, map.count),
        (None, None, Some(2), 3)
    );
    let at = GuestAddress(4 << 20);
    d.mem.write_obj(0x55u8, at).unwrap();
    d.desc(2, 0, at.0, 4096, F_WRITE, 0);
    d.make_available(2, 0);
    assert_eq!(b.lock().unwrap().process_reporting(), 1);
    assert_eq!(d.mem.read_obj::<u8>(at).unwrap(), 0);
    // Hinting was offered but not accepted: the host cannot start a run.
    assert_eq!(
        b.lock().unwrap().start_hinting(true),
        Err(HintingError::NotNegotiated)
    );
    // Before the driver runs, neither.
    let idle = Balloon::new(&cfg, false).unwrap();
    let mut idle = idle;
    assert_eq!(idle.start_hinting(true), Err(HintingError::NotActive));
}

#[test]
fn a_huge_reported_range_costs_one_call_per_region() {
    let mut cfg = config(0, false, 0);
    cfg.free_page_reporting = true;
    let (b, d) = up(&cfg);
    let bad = METRICS.balloon.bad_pfns.get();
    // 4 GiB from address 0: the guest's memory is dropped, the rest is
    // counted as outside it, at once.
    d.mem.write_obj(0x66u8, GuestAddress(4 << 20)).unwrap();
    d.desc(2, 0, 0, 0xffff_f000u32, F_WRITE, 0);
    d.make_available(2, 0);
    assert_eq!(b.lock().unwrap().process_reporting(), 1);
    assert_eq!(d.mem.read_obj::<u8>(GuestAddress(4 << 20)).unwrap(), 0);
    let outside = (u64::from(0xffff_f000u32) - MEM_SIZE as u64) / 4096;
    assert!(METRICS.balloon.bad_pfns.get() >= bad + outside);
}
