//! virtio-blk over guest memory built in the test, against a real backing
//! file: the bytes that land, and every malformed request a guest can
//! send.

use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, GuestAddress};

use super::request::{RequestHeader, S_IOERR, S_OK, S_UNSUPP, T_FLUSH, T_GET_ID, T_IN, T_OUT};
use super::{Block, BlockOptions};
use crate::vmm::config::IoEngine;
use crate::vmm::devices::virtio::test_utils::{Driver, BUFFERS, F_NEXT, F_WRITE};

const HDR: u64 = BUFFERS;
const DATA: u64 = BUFFERS + 0x1000;
const STATUS: u64 = BUFFERS + 0x20000;

struct Disk {
    path: std::path::PathBuf,
    drv: Driver,
    blk: Arc<Mutex<Block>>,
    head: u16,
}

/// Both engines: every test runs on each.
const ENGINES: [IoEngine; 2] = [IoEngine::Sync, IoEngine::Async];

impl Disk {
    fn new(name: &str, read_only: bool, engine: IoEngine) -> Disk {
        let path =
            std::env::temp_dir().join(format!("husk-blk-{name}-{engine:?}-{}", std::process::id()));
        let mut content = vec![0u8; 64 * 512];
        content[..16].copy_from_slice(b"HUSK-SECTOR-ZERO");
        std::fs::write(&path, content).unwrap();
        let options = BlockOptions {
            read_only,
            engine,
            writeback: true,
            ..Default::default()
        };
        let blk = Arc::new(Mutex::new(Block::new("disk-id", &path, options).unwrap()));
        let mut drv = Driver::new(blk.clone());
        drv.up(0, 1, 64);
        Disk {
            path,
            drv,
            blk,
            head: 0,
        }
    }

    /// Sends a request of descriptors (addr, len, flags) built after a
    /// header; returns (status byte, used length).
    fn request(&mut self, t: u32, sector: u64, data: &[(u64, u32, u16)]) -> (u8, u32) {
        let hdr = RequestHeader {
            request_type: t,
            reserved: 0,
            sector,
        };
        self.drv.mem.write_obj(hdr, GuestAddress(HDR)).unwrap();
        self.drv
            .mem
            .write_obj(0xffu8, GuestAddress(STATUS))
            .unwrap();
        let mut descs = vec![(HDR, 16, 0)];
        descs.extend_from_slice(data);
        descs.push((STATUS, 1, F_WRITE));
        self.chain(&descs)
    }

    /// Sends a raw chain; returns (status byte, used length).
    fn chain(&mut self, descs: &[(u64, u32, u16)]) -> (u8, u32) {
        let base = self.head;
        for (i, (addr, len, flags)) in descs.iter().enumerate() {
            let i = base + i as u16;
            let last = i + 1 == base + descs.len() as u16;
            let flags = if last { *flags } else { flags | F_NEXT };
            self.drv.desc(0, i % 64, *addr, *len, flags, (i + 1) % 64);
        }
        self.head = (base + descs.len() as u16) % 64;
        self.drv.make_available(0, base % 64);
        let before = self.drv.used_idx(0);
        let mut blk = self.blk.lock().unwrap();
        blk.process_queue();
        // An Async request is answered when its completion arrives.
        blk.drain();
        assert_eq!(blk.in_flight(), 0);
        drop(blk);
        assert_eq!(self.drv.used_idx(0), before.wrapping_add(1), "answered");
        let (id, len) = self.drv.used(0, before);
        assert_eq!(id, u32::from(base % 64));
        let status: u8 = self.drv.mem.read_obj(GuestAddress(STATUS)).unwrap();
        (status, len)
    }

    fn file(&self) -> Vec<u8> {
        std::fs::read(&self.path).unwrap()
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[test]
fn reads_writes_flushes_and_ids_reach_the_file() {
    for engine in ENGINES {
        reads_writes_flushes_and_ids(engine);
    }
}

fn reads_writes_flushes_and_ids(engine: IoEngine) {
    let mut d = Disk::new("rw", false, engine);
    assert_eq!(d.blk.lock().unwrap().capacity(), 64);
    assert_eq!(d.request(T_IN, 0, &[(DATA, 512, F_WRITE)]), (S_OK, 513));
    let mut got = [0u8; 16];
    d.drv.mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert_eq!(&got, b"HUSK-SECTOR-ZERO");
    // A write in two descriptors lands in the file.
    d.drv
        .mem
        .write_slice(&[0xab; 1024], GuestAddress(DATA))
        .unwrap();
    let split = [(DATA, 600, 0), (DATA + 600, 424, 0)];
    assert_eq!(d.request(T_OUT, 2, &split), (S_OK, 1));
    assert!(d.file()[1024..2048].iter().all(|b| *b == 0xab));
    assert_eq!(d.request(T_FLUSH, 0, &[]), (S_OK, 1));
    assert_eq!(d.request(T_GET_ID, 0, &[(DATA, 20, F_WRITE)]).0, S_OK);
    let mut id = [0u8; 7];
    d.drv.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id, b"disk-id");
}

#[test]
fn out_of_range_misaligned_and_unknown_requests_fail_cleanly() {
    for engine in ENGINES {
        bad_requests_fail_cleanly(engine);
    }
}

fn bad_requests_fail_cleanly(engine: IoEngine) {
    let mut d = Disk::new("bad", false, engine);
    let read = |d: &mut Disk, sector| d.request(T_IN, sector, &[(DATA, 512, F_WRITE)]).0;
    assert_eq!(read(&mut d, 64), S_IOERR, "past the end");
    assert_eq!(read(&mut d, u64::MAX), S_IOERR, "sector overflow");
    assert_eq!(
        d.request(T_IN, 0, &[(DATA, 100, F_WRITE)]).0,
        S_IOERR,
        "not whole sectors"
    );
    assert_eq!(d.request(99, 0, &[]).0, S_UNSUPP);
    // A header cut short.
    d.drv.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    assert_eq!(d.chain(&[(HDR, 8, 0), (STATUS, 1, F_WRITE)]).0, S_IOERR);
    // Data outside guest memory: nothing is answered but the used entry.
    assert_eq!(
        d.chain(&[
            (HDR, 16, 0),
            (0xffff_0000, 512, F_WRITE),
            (STATUS, 1, F_WRITE)
        ])
        .1,
        0
    );
    // No writable status byte at all (a read-only "status").
    assert_eq!(d.chain(&[(HDR, 16, 0), (STATUS, 1, 0)]).1, 0);
    // The file is untouched by all of it, and good requests still work.
    assert_eq!(&d.file()[..16], b"HUSK-SECTOR-ZERO");
    assert_eq!(read(&mut d, 63), S_OK);
}

#[test]
fn a_read_only_drive_refuses_writes_and_keeps_its_file() {
    for engine in ENGINES {
        read_only_refuses_writes(engine);
    }
}

fn read_only_refuses_writes(engine: IoEngine) {
    let mut d = Disk::new("ro", true, engine);
    let before = d.file();
    d.drv
        .mem
        .write_slice(&[0x55; 512], GuestAddress(DATA))
        .unwrap();
    assert_eq!(d.request(T_OUT, 0, &[(DATA, 512, 0)]).0, S_IOERR);
    assert_eq!(
        d.request(super::request::T_DISCARD, 0, &[(DATA, 16, 0)]).0,
        S_IOERR
    );
    assert_eq!(d.request(T_IN, 0, &[(DATA, 512, F_WRITE)]).0, S_OK);
    assert_eq!(d.file(), before);
}

#[test]
fn write_zeroes_and_discard_clear_the_range() {
    for engine in ENGINES {
        write_zeroes_clears(engine);
    }
}

fn write_zeroes_clears(engine: IoEngine) {
    let mut d = Disk::new("zero", false, engine);
    std::fs::write(&d.path, vec![0x77u8; 64 * 512]).unwrap();
    // Segment: sector 4, 2 sectors, flags 0.
    let seg: [u8; 16] = [4, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0];
    d.drv.mem.write_slice(&seg, GuestAddress(DATA)).unwrap();
    let t = super::request::T_WRITE_ZEROES;
    assert_eq!(d.request(t, 0, &[(DATA, 16, 0)]).0, S_OK);
    let f = d.file();
    assert!(f[4 * 512..6 * 512].iter().all(|b| *b == 0));
    assert!(f[6 * 512..7 * 512].iter().all(|b| *b == 0x77));
    // A segment past the end is refused.
    let seg: [u8; 16] = [63, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0];
    d.drv.mem.write_slice(&seg, GuestAddress(DATA)).unwrap();
    assert_eq!(d.request(t, 0, &[(DATA, 16, 0)]).0, S_IOERR);
}

#[test]
fn async_requests_are_answered_when_their_completions_are_reaped() {
    let d = Disk::new("inflight", false, IoEngine::Async);
    // A read of sector 0, submitted but not yet reaped.
    let hdr = RequestHeader {
        request_type: T_IN,
        reserved: 0,
        sector: 0,
    };
    d.drv.mem.write_obj(hdr, GuestAddress(HDR)).unwrap();
    d.drv.desc(0, 0, HDR, 16, F_NEXT, 1);
    d.drv.desc(0, 1, DATA, 512, F_WRITE | F_NEXT, 2);
    d.drv.desc(0, 2, STATUS, 1, F_WRITE, 0);
    d.drv.make_available(0, 0);
    let before = d.drv.used_idx(0);
    let mut blk = d.blk.lock().unwrap();
    blk.process_queue();
    assert_eq!(blk.in_flight(), 1);
    assert_eq!(
        d.drv.used_idx(0),
        before,
        "not answered before its completion"
    );
    blk.drain();
    assert_eq!(d.drv.used_idx(0), before.wrapping_add(1));
    let mut got = [0u8; 16];
    d.drv.mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert_eq!(&got, b"HUSK-SECTOR-ZERO");
    // After a reset, what was in flight finishes unseen.
    d.drv.make_available(0, 0);
    blk.process_queue();
    assert_eq!(blk.in_flight(), 1);
    crate::vmm::devices::virtio::VirtioDevice::reset(&mut *blk);
    let io = blk.io.as_mut().unwrap();
    let late = io.drain(&d.drv.mem);
    assert!(late.is_empty());
    assert_eq!(blk.in_flight(), 0);
    assert_eq!(d.drv.used_idx(0), before.wrapping_add(1));
}
