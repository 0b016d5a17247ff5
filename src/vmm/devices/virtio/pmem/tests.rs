//! virtio-pmem behind the real transport, driven from the host (no KVM:
//! the window is not mapped into a guest here).

use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::vmm::config::PmemConfig;
use crate::vmm::devices::rate_limiter::{RateLimiterConfig, TokenBucketConfig};
use crate::vmm::devices::virtio::mmio::reg;
use crate::vmm::devices::virtio::test_utils::{Driver, BUFFERS, F_NEXT, F_WRITE};
use crate::vmm::devices::virtio::VirtioDevice;
use crate::vmm::snapshot::Persist;

struct File(std::path::PathBuf);

impl File {
    fn new(name: &str, bytes: &[u8]) -> File {
        let p = std::env::temp_dir().join(format!("husk-pmem-{}-{name}", std::process::id()));
        std::fs::write(&p, bytes).unwrap();
        File(p)
    }
}

impl Drop for File {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn config(f: &File, read_only: bool) -> PmemConfig {
    PmemConfig {
        id: "p0".into(),
        path_on_host: f.0.to_str().unwrap().into(),
        root_device: false,
        read_only,
        rate_limiter: None,
    }
}

fn up(cfg: &PmemConfig) -> (Arc<Mutex<Pmem>>, Driver) {
    let p = Arc::new(Mutex::new(Pmem::new(cfg).unwrap()));
    let mut d = Driver::new(p.clone());
    d.up(0, 1, 16);
    (p, d)
}

const REQ: u64 = BUFFERS;
const STATUS: u64 = BUFFERS + 0x100;

/// Puts chain `head` (descriptors `head`, `head + 1`, ...) of `bufs`
/// (address, length, device-writable) on the queue.
fn chain(d: &Driver, head: u16, bufs: &[(u64, u32, bool)]) {
    for (i, &(addr, len, w)) in bufs.iter().enumerate() {
        let i = i as u16;
        let next = if usize::from(i) + 1 < bufs.len() {
            F_NEXT
        } else {
            0
        };
        let flags = next | if w { F_WRITE } else { 0 };
        d.desc(0, head + i, addr, len, flags, head + i + 1);
    }
    d.make_available(0, head);
}

fn flush_request(d: &Driver, head: u16, status_at: u64) {
    d.mem.write_obj(REQ_TYPE_FLUSH, GuestAddress(REQ)).unwrap();
    d.mem
        .write_obj(0x5a5a_5a5au32, GuestAddress(status_at))
        .unwrap();
    chain(d, head, &[(REQ, 4, false), (status_at, 4, true)]);
}

#[test]
fn the_window_is_the_file_rounded_up_to_2_mib_and_the_config_space_shows_it() {
    let f = File::new("cfg", &vec![7u8; (3 << 20) + 5]);
    let (p, mut d) = up(&config(&f, false));
    assert_eq!(d.read_reg(reg::DEVICE_ID), 27);
    assert_eq!(p.lock().unwrap().size(), 4 << 20);
    p.lock().unwrap().start = 512 << 30;
    let lo = d.read_reg(reg::CONFIG);
    let hi = d.read_reg(reg::CONFIG + 4);
    assert_eq!(u64::from(lo) | (u64::from(hi) << 32), 512 << 30);
    assert_eq!(d.read_reg(reg::CONFIG + 8), 4 << 20);
    assert_eq!(d.read_reg(reg::CONFIG + 12), 0);
    // Writes change nothing.
    d.write_reg(reg::CONFIG + 8, 1);
    assert_eq!(d.read_reg(reg::CONFIG + 8), 4 << 20);
    let m = PmemMapping::new(&f.0, true).unwrap();
    let mut b = [0u8; 8];
    m.read((3 << 20) + 1, &mut b);
    assert_eq!(b, [7, 7, 7, 7, 0, 0, 0, 0]);
    assert_eq!((m.file_len(), m.len()), ((3 << 20) + 5, 4 << 20));
}

#[test]
fn flush_requests_in_one_batch_share_one_sync_and_get_ok() {
    let f = File::new("flush", &[1u8; 4096]);
    let (p, d) = up(&config(&f, false));
    flush_request(&d, 0, STATUS);
    flush_request(&d, 2, STATUS + 4);
    assert_eq!(p.lock().unwrap().process_queue(), 2);
    assert_eq!(d.used_idx(0), 2);
    assert_eq!(d.used(0, 0), (0, 4));
    assert_eq!(d.used(0, 1), (2, 4));
    for at in [STATUS, STATUS + 4] {
        assert_eq!(d.mem.read_obj::<u32>(GuestAddress(at)).unwrap(), STATUS_OK);
    }
}

#[test]
fn hostile_chains_get_an_error_status_or_nothing() {
    let f = File::new("hostile", &[1u8; 4096]);
    let (p, d) = up(&config(&f, false));
    let status = |n: u64| STATUS + n * 8;
    for n in 0..6 {
        d.mem
            .write_obj(0x5a5a_5a5au32, GuestAddress(status(n)))
            .unwrap();
    }
    // 0: an unknown request type.
    d.mem.write_obj(7u32, GuestAddress(REQ)).unwrap();
    chain(&d, 0, &[(REQ, 4, false), (status(0), 4, true)]);
    // 2: the request device-writable (nothing to read): an error status.
    chain(&d, 2, &[(REQ + 8, 4, true), (status(1), 4, true)]);
    // 4: a 2-byte request.
    chain(&d, 4, &[(REQ, 2, false), (status(2), 4, true)]);
    // 6: a read-only status: no room to answer.
    chain(&d, 6, &[(REQ + 16, 4, false), (status(3), 4, false)]);
    // 8: a 2-byte status.
    chain(&d, 8, &[(REQ + 16, 4, false), (status(4), 2, true)]);
    // 10: a request outside guest memory.
    chain(&d, 10, &[(1 << 40, 4, false), (status(5), 4, true)]);
    d.mem
        .write_obj(REQ_TYPE_FLUSH, GuestAddress(REQ + 16))
        .unwrap();
    assert_eq!(p.lock().unwrap().process_queue(), 6);
    let lens: Vec<u32> = (0..6).map(|n| d.used(0, n).1).collect();
    assert_eq!(lens, [4, 4, 4, 0, 0, 0]);
    for n in 0..3 {
        assert_eq!(
            d.mem.read_obj::<u32>(GuestAddress(status(n))).unwrap(),
            STATUS_ERR,
            "chain {n}"
        );
    }
    for n in 3..6 {
        assert_eq!(
            d.mem.read_obj::<u32>(GuestAddress(status(n))).unwrap(),
            0x5a5a_5a5a,
            "chain {n}"
        );
    }
}

#[test]
fn the_rate_limiter_holds_a_sync_back_until_patched() {
    let f = File::new("limit", &[1u8; 4096]);
    let mut cfg = config(&f, false);
    let bucket = TokenBucketConfig {
        size: 1,
        one_time_burst: None,
        refill_time: 3_600_000,
    };
    cfg.rate_limiter = Some(RateLimiterConfig {
        bandwidth: None,
        ops: Some(bucket),
    });
    let (p, d) = up(&cfg);
    flush_request(&d, 0, STATUS);
    assert_eq!(p.lock().unwrap().process_queue(), 1);
    flush_request(&d, 2, STATUS + 4);
    // The one op is spent: the second batch waits.
    assert_eq!(p.lock().unwrap().process_queue(), 0);
    assert_eq!(d.used_idx(0), 1);
    // A new limiter (none) lets it go.
    p.lock()
        .unwrap()
        .update_rate_limiter(&RateLimiterConfig::default())
        .unwrap();
    assert_eq!(d.used_idx(0), 2);
    assert_eq!(
        d.mem.read_obj::<u32>(GuestAddress(STATUS + 4)).unwrap(),
        STATUS_OK
    );
}

#[test]
fn a_restore_refuses_a_window_that_moved() {
    let f = File::new("restore", &[1u8; 4096]);
    let mut a = Pmem::new(&config(&f, false)).unwrap();
    a.start = 512 << 30;
    let s = Persist::save(&a);
    assert_eq!((s.start, s.size), (512 << 30, 2 << 20));
    let mut b = Pmem::new(&config(&f, false)).unwrap();
    b.start = 512 << 30;
    Persist::restore(&mut b, &s).unwrap();
    // The file grew past 2 MiB: its window would be 4 MiB now.
    std::fs::write(&f.0, vec![0u8; (2 << 20) + 1]).unwrap();
    let mut c = Pmem::new(&config(&f, false)).unwrap();
    c.start = 512 << 30;
    let e = Persist::restore(&mut c, &s).unwrap_err().to_string();
    assert!(e.contains("size differs"), "{e}");
    assert!(c
        .restore_state(&crate::vmm::devices::virtio::persist::DeviceState::Rng(
            Default::default()
        ))
        .is_err());
}

#[test]
fn a_read_only_file_maps_without_write_access() {
    let f = File::new("ro", &[3u8; 100]);
    let mut perms = std::fs::metadata(&f.0).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o444);
    std::fs::set_permissions(&f.0, perms).unwrap();
    let p = Pmem::new(&config(&f, true)).unwrap();
    assert!(p.read_only());
    assert_eq!(p.size(), 2 << 20);
    // Tests run as root here, which opens anything: check the mode the
    // device asks for instead, through a bad path.
    let e = Pmem::new(&config(&File::new("x", b""), false))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("empty"), "{e}");
}
