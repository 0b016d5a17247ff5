//! virtio-mem behind the real transport, driven from the host (no KVM:
//! the region records which slots would be in the guest).

use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::vmm::devices::virtio::mmio::{reg, status};
use crate::vmm::devices::virtio::test_utils::{Driver, BUFFERS, F_NEXT, F_WRITE};
use crate::vmm::devices::virtio::VIRTIO_F_VERSION_1;
use crate::vmm::snapshot::Persist;

const MIB: u64 = 1 << 20;
const BASE: u64 = 1 << 30;
const REQ: u64 = BUFFERS;
const RESP: u64 = BUFFERS + 0x100;

fn geometry() -> Geometry {
    Geometry {
        addr: BASE,
        region_size: 256 * MIB,
        block_size: 2 * MIB,
        slot_size: 128 * MIB,
    }
}

fn memory() -> crate::vmm::kvm::memory::GuestMem {
    crate::vmm::kvm::memory::anonymous(&[
        (GuestAddress(0), 16 << 20),
        (GuestAddress(BASE), 256 << 20),
    ])
    .unwrap()
}

fn device(mem: &crate::vmm::kvm::memory::GuestMem) -> VirtioMem {
    let region = HotplugRegion::new(mem, (BASE, 256 * MIB), 128 * MIB, None, false).unwrap();
    VirtioMem::new(geometry(), region).unwrap()
}

fn up() -> (Arc<Mutex<VirtioMem>>, Driver) {
    let mem = memory();
    let m = Arc::new(Mutex::new(device(&mem)));
    let mut d = Driver::with_mem(m.clone(), mem);
    d.up(VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE, 1, 16);
    (m, d)
}

/// Sends one request (through descriptors 0 and 1) and returns the
/// used length and the response.
fn send(
    m: &Arc<Mutex<VirtioMem>>,
    d: &Driver,
    req_type: u16,
    addr: u64,
    nb: u16,
) -> (u32, Response) {
    let req = Request {
        req_type,
        addr,
        nb_blocks: nb,
        ..Default::default()
    };
    d.mem.write_obj(req, GuestAddress(REQ)).unwrap();
    d.mem
        .write_obj(Response::new(0x77), GuestAddress(RESP))
        .unwrap();
    d.desc(0, 0, REQ, 24, F_NEXT, 1);
    d.desc(0, 1, RESP, 10, F_WRITE, 0);
    let before = d.used_idx(0);
    d.make_available(0, 0);
    assert_eq!(m.lock().unwrap().process_queue(), 1);
    let (_, len) = d.used(0, before);
    (len, d.mem.read_obj(GuestAddress(RESP)).unwrap())
}

fn resp(m: &Arc<Mutex<VirtioMem>>, d: &Driver, t: u16, addr: u64, nb: u16) -> u16 {
    send(m, d, t, addr, nb).1.resp_type
}

fn config64(d: &mut Driver, off: u64) -> u64 {
    u64::from(d.read_reg(reg::CONFIG + off)) | (u64::from(d.read_reg(reg::CONFIG + off + 4)) << 32)
}

#[test]
fn the_config_space_shows_the_region_and_a_new_request_grows_the_usable_part() {
    let (m, mut d) = up();
    assert_eq!(d.read_reg(reg::DEVICE_ID), 24);
    assert_eq!(config64(&mut d, 0), 2 * MIB);
    assert_eq!(config64(&mut d, 16), BASE);
    assert_eq!(config64(&mut d, 24), 256 * MIB);
    assert_eq!(config64(&mut d, 32), 0);
    m.lock().unwrap().set_requested_size(6 * MIB);
    assert_eq!(config64(&mut d, 32), 128 * MIB, "usable: whole slots");
    assert_eq!(config64(&mut d, 48), 6 * MIB);
    let s = m.lock().unwrap().status();
    assert_eq!(
        (
            s.total_size_mib,
            s.block_size_mib,
            s.slot_size_mib,
            s.requested_size_mib
        ),
        (256, 2, 128, 6)
    );
}

#[test]
fn plug_state_unplug_and_unplug_all() {
    let (m, d) = up();
    m.lock().unwrap().set_requested_size(6 * MIB);
    assert_eq!(
        send(&m, &d, REQ_PLUG, BASE, 2),
        (10, Response::new(RESP_ACK))
    );
    assert!(m.lock().unwrap().region.is_mapped(0));
    assert!(!m.lock().unwrap().region.is_mapped(1));
    // 4 + 4 MiB would pass the 6 MiB requested.
    assert_eq!(resp(&m, &d, REQ_PLUG, BASE + 4 * MIB, 2), RESP_NACK);
    assert_eq!(resp(&m, &d, REQ_PLUG, BASE + 4 * MIB, 1), RESP_ACK);
    // Already plugged.
    m.lock().unwrap().set_requested_size(20 * MIB);
    assert_eq!(resp(&m, &d, REQ_PLUG, BASE + 4 * MIB, 1), RESP_ERROR);
    assert_eq!(m.lock().unwrap().status().plugged_size_mib, 6);
    let state = |a, n| send(&m, &d, REQ_STATE, a, n).1;
    assert_eq!(state(BASE, 3), Response::with_state(STATE_PLUGGED));
    assert_eq!(state(BASE, 4), Response::with_state(STATE_MIXED));
    assert_eq!(
        state(BASE + 6 * MIB, 4),
        Response::with_state(STATE_UNPLUGGED)
    );
    // Unplugged memory goes back to the host: it reads as zeros.
    d.mem.write_obj(0xabu8, GuestAddress(BASE + 10)).unwrap();
    assert_eq!(resp(&m, &d, REQ_UNPLUG, BASE, 1), RESP_ACK);
    assert_eq!(d.mem.read_obj::<u8>(GuestAddress(BASE + 10)).unwrap(), 0);
    assert_eq!(
        resp(&m, &d, REQ_UNPLUG, BASE, 2),
        RESP_ERROR,
        "half unplugged"
    );
    assert!(
        m.lock().unwrap().region.is_mapped(0),
        "blocks 1 and 2 remain"
    );
    assert_eq!(resp(&m, &d, REQ_UNPLUG, BASE + 2 * MIB, 2), RESP_ACK);
    assert!(!m.lock().unwrap().region.is_mapped(0));
    assert_eq!(m.lock().unwrap().status().plugged_size_mib, 0);
    // A plug in the second slot, then everything goes.
    m.lock().unwrap().set_requested_size(256 * MIB);
    assert_eq!(resp(&m, &d, REQ_PLUG, BASE + 200 * MIB, 4), RESP_ACK);
    assert!(m.lock().unwrap().region.is_mapped(1));
    m.lock().unwrap().set_requested_size(2 * MIB);
    assert_eq!(resp(&m, &d, REQ_UNPLUG_ALL, 0, 0), RESP_ACK);
    let dev = m.lock().unwrap();
    assert!(!dev.region.is_mapped(1));
    assert_eq!((dev.plugged_size, dev.usable_region_size), (0, 128 * MIB));
}

#[test]
fn bad_ranges_and_hostile_chains_get_errors_never_a_crash() {
    let (m, d) = up();
    m.lock().unwrap().set_requested_size(128 * MIB);
    for (addr, nb) in [
        (BASE + 4096, 1),      // unaligned
        (BASE, 0),             // empty
        (BASE + 128 * MIB, 1), // past the usable region
        (BASE + 126 * MIB, 2), // across its end
        (BASE - 2 * MIB, 1),   // below the region
        (u64::MAX - 2 * MIB + 1, 1),
        (BASE, u16::MAX), // far too many blocks
    ] {
        for t in [REQ_PLUG, REQ_UNPLUG, REQ_STATE] {
            assert_eq!(resp(&m, &d, t, addr, nb), RESP_ERROR, "{t} {addr:#x} {nb}");
        }
    }
    assert_eq!(resp(&m, &d, 9, BASE, 1), RESP_ERROR, "an unknown type");
    // A 10-byte request.
    d.mem
        .write_obj(Response::new(0x77), GuestAddress(RESP))
        .unwrap();
    d.desc(0, 0, REQ, 10, F_NEXT, 1);
    d.desc(0, 1, RESP, 10, F_WRITE, 0);
    d.make_available(0, 0);
    // The request device-writable: nothing to read, an error in the
    // first writable bytes.
    d.desc(0, 2, REQ, 24, F_WRITE | F_NEXT, 3);
    d.desc(0, 3, RESP, 10, F_WRITE, 0);
    d.make_available(0, 2);
    // No writable room, a response buffer too short, outside memory.
    d.desc(0, 4, REQ, 24, F_NEXT, 5);
    d.desc(0, 5, RESP, 10, 0, 0);
    d.make_available(0, 4);
    d.desc(0, 6, REQ, 24, F_NEXT, 7);
    d.desc(0, 7, RESP, 4, F_WRITE, 0);
    d.make_available(0, 6);
    d.desc(0, 8, 1 << 40, 24, F_NEXT, 9);
    d.desc(0, 9, RESP, 10, F_WRITE, 0);
    d.make_available(0, 8);
    let before = d.used_idx(0);
    assert_eq!(m.lock().unwrap().process_queue(), 5);
    let lens: Vec<u32> = (0..5).map(|i| d.used(0, before + i).1).collect();
    assert_eq!(lens, [10, 10, 0, 0, 0]);
    let r: Response = d.mem.read_obj(GuestAddress(REQ)).unwrap();
    assert_eq!(r.resp_type, RESP_ERROR);
    assert_eq!(m.lock().unwrap().plugged_size, 0);
}

#[test]
fn a_driver_that_would_touch_unplugged_memory_is_refused() {
    let mem = memory();
    let m = Arc::new(Mutex::new(device(&mem)));
    let mut d = Driver::with_mem(m.clone(), mem);
    let s = d.negotiate(VIRTIO_F_VERSION_1);
    assert_ne!(s & status::FEATURES_OK, 0);
    d.setup_queue_at(0, 16, crate::vmm::devices::virtio::test_utils::rings(0).0);
    let s = d.driver_ok();
    assert_ne!(s & status::DEVICE_NEEDS_RESET, 0, "{s:#x}");
    assert!(m.lock().unwrap().active.is_none());
}

#[test]
fn plugged_blocks_survive_a_snapshot_and_bad_states_are_refused() {
    let (m, d) = up();
    // Past the first slot: the usable region must reach it.
    m.lock().unwrap().set_requested_size(136 * MIB);
    assert_eq!(resp(&m, &d, REQ_PLUG, BASE + 130 * MIB, 3), RESP_ACK);
    let s = Persist::save(&*m.lock().unwrap());
    let mem = memory();
    let mut b = device(&mem);
    Persist::restore(&mut b, &s).unwrap();
    assert!(b.region.is_mapped(1) && !b.region.is_mapped(0));
    assert_eq!(b.status().plugged_size_mib, 6);
    assert_eq!(b.status().requested_size_mib, 136);
    assert_eq!(b.usable_region_size, 256 * MIB);
    for (bad, what) in [
        (
            MemState {
                block_size: 4 * MIB,
                ..s.clone()
            },
            "differs",
        ),
        (
            MemState {
                plugged_size: 2 * MIB,
                ..s.clone()
            },
            "does not fit",
        ),
        (
            MemState {
                plugged: vec![0],
                ..s.clone()
            },
            "does not fit",
        ),
        (
            MemState {
                plugged: vec![0, 1 << 63],
                ..s.clone()
            },
            "does not fit",
        ),
        (
            MemState {
                requested_size: 3 * MIB,
                ..s.clone()
            },
            "does not fit",
        ),
    ] {
        let mut c = device(&mem);
        let e = Persist::restore(&mut c, &bad).unwrap_err().to_string();
        assert!(e.contains(what), "{e}");
    }
}

#[test]
fn an_unplugged_hugetlbfs_block_keeps_its_pages() {
    use crate::vmm::kvm::memory::GuestMem;
    use crate::vmm::metrics::METRICS;
    use vm_memory::mmap::MmapRegionBuilder;
    // Anonymous 4 KiB memory marked as hugetlbfs: MADV_DONTNEED would
    // zero it, so only the region's own rule keeps the data.
    let region = MmapRegionBuilder::new_with_bitmap(256 << 20, None)
        .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
        .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE)
        .with_hugetlbfs(true)
        .build()
        .unwrap();
    let region = vm_memory::GuestRegionMmap::new(region, GuestAddress(BASE)).unwrap();
    let mem = GuestMem::from_regions(vec![region]).unwrap();
    let r = HotplugRegion::new(&mem, (BASE, 256 * MIB), 128 * MIB, None, false).unwrap();
    mem.write_obj(0x5au8, GuestAddress(BASE + 2 * MIB)).unwrap();
    let kept = METRICS.memory_hotplug.hugetlb_kept_bytes.get();
    r.discard(2 * MIB, 2 * MIB).unwrap();
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress(BASE + 2 * MIB)).unwrap(),
        0x5a
    );
    assert!(METRICS.memory_hotplug.hugetlb_kept_bytes.get() >= kept + 2 * MIB);
    // Past the region is still refused.
    assert!(r.discard(255 * MIB, 2 * MIB).is_err());
}
