//! Snapshots of the transport, with real devices behind it: driven to
//! DRIVER_OK, serving, saved, restored into a fresh transport and device
//! over the same guest memory (as a restored VM's), serving on from where
//! they stopped; and hostile states refused without a panic.

use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::vmm::devices::rate_limiter::{RateLimiterConfig, TokenBucketConfig};
use crate::vmm::devices::virtio::block::request::{RequestHeader, S_OK, T_IN, T_OUT};
use crate::vmm::devices::virtio::block::{Block, BlockOptions};
use crate::vmm::devices::virtio::mmio::reg;
use crate::vmm::devices::virtio::rng::Rng;
use crate::vmm::devices::virtio::test_utils::{Driver, BUFFERS, F_NEXT, F_WRITE};
use crate::vmm::devices::virtio::{VirtioDevice, INT_USED_RING};

const QSIZE: u16 = 16;

fn rng(limit: RateLimiterConfig) -> Arc<Mutex<Rng>> {
    Arc::new(Mutex::new(Rng::new(&limit).unwrap()))
}

/// Offers rng request `head` (one 16-byte buffer) and runs the device;
/// returns how many requests it served.
fn offer(d: &Driver, rng: &Mutex<Rng>, head: u16) -> usize {
    d.desc(0, head, BUFFERS + u64::from(head) * 0x100, 16, F_WRITE, 0);
    d.make_available(0, head);
    rng.lock().unwrap().process_queue()
}

fn round_trip(s: &MmioState) -> MmioState {
    postcard::from_bytes(&postcard::to_stdvec(s).unwrap()).unwrap()
}

/// An rng at DRIVER_OK (with EVENT_IDX) that served three requests.
fn running_rng() -> (Driver, Arc<Mutex<Rng>>) {
    let a = rng(Default::default());
    let mut d = Driver::new(a.clone());
    d.up(VIRTIO_F_RING_EVENT_IDX, 1, QSIZE);
    for head in 0..3 {
        assert_eq!(offer(&d, &a, head), 1);
    }
    (d, a)
}

#[test]
fn a_restored_device_carries_on_where_it_stopped() {
    let (mut d, _a) = running_rng();
    assert_eq!(d.read_reg(reg::INTERRUPT_STATUS), INT_USED_RING);
    while d.irq.read().is_ok() {}
    let state = round_trip(&Persist::save(&d.transport));
    assert!(state.activated);
    // The indices come from the device's copy; the transport's is stale.
    assert_eq!(
        (state.queues[0].next_avail, state.queues[0].next_used),
        (3, 3)
    );
    assert_eq!(d.transport.queues[0].next_used(), 0);

    let b = rng(Default::default());
    let mut e = d.restored(b.clone());
    e.transport.restore(&state).unwrap();
    assert_eq!(Persist::save(&e.transport), state);
    assert_ne!(e.read_reg(reg::STATUS) & status::DRIVER_OK, 0);
    assert_eq!(e.read_reg(reg::QUEUE_READY), 1);
    // The interrupt the guest had not acknowledged is still pending, and
    // the restore raised none of its own.
    assert_eq!(e.read_reg(reg::INTERRUPT_STATUS), INT_USED_RING);
    assert!(e.irq.read().is_err(), "no interrupt raised by the restore");
    // The queue was kicked, so the event loop looks at it.
    assert_eq!(b.lock().unwrap().queue_events()[0].read().unwrap(), 1);
    // The next request lands after the three before, not at the start.
    assert_eq!(offer(&e, &b, 3), 1);
    assert_eq!(e.used_idx(0), 4);
    assert_eq!(e.used(0, 0), (0, 16));
    assert_eq!(e.used(0, 3), (3, 16));
    let mut got = [0u8; 16];
    e.mem
        .read_slice(&mut got, GuestAddress(BUFFERS + 0x300))
        .unwrap();
    assert_ne!(got, [0; 16]);
}

#[test]
fn a_device_the_driver_had_not_started_is_restored_mid_negotiation() {
    let a = rng(Default::default());
    let mut d = Driver::new(a.clone());
    d.negotiate(VIRTIO_F_VERSION_1);
    d.setup_queue_at(0, 8, crate::vmm::devices::virtio::test_utils::rings(0).0);
    let state = round_trip(&Persist::save(&d.transport));
    assert!(!state.activated);
    assert_eq!(state.queues[0].size, 8);
    let b = rng(Default::default());
    let mut e = d.restored(b.clone());
    e.transport.restore(&state).unwrap();
    assert_eq!(e.read_reg(reg::STATUS), d.read_reg(reg::STATUS));
    assert_eq!(e.read_reg(reg::QUEUE_READY), 1);
    // Nothing runs until the driver says so.
    assert!(b.lock().unwrap().queue_events()[0].read().is_err());
    assert_eq!(offer(&e, &b, 0), 0);
    assert_ne!(e.driver_ok() & status::DRIVER_OK, 0);
    assert_eq!(e.used_idx(0), 1, "served on DRIVER_OK");
    assert_eq!(offer(&e, &b, 1), 1);
    assert_eq!(e.used(0, 1), (1, 16));
}

#[test]
fn a_request_the_rate_limiter_held_back_is_served_after_a_restore() {
    let one_op = RateLimiterConfig {
        ops: Some(TokenBucketConfig {
            size: 1,
            one_time_burst: None,
            refill_time: 100_000,
        }),
        bandwidth: None,
    };
    let a = rng(one_op);
    let mut d = Driver::new(a.clone());
    d.up(0, 1, QSIZE);
    assert_eq!(offer(&d, &a, 0), 1);
    assert_eq!(offer(&d, &a, 1), 0, "held back");
    let state = round_trip(&Persist::save(&d.transport));
    assert_eq!(state.queues[0].next_avail, 1);
    // Same limits: the budget is still spent.
    let b = rng(one_op);
    let mut e = d.restored(b.clone());
    e.transport.restore(&state).unwrap();
    assert_eq!(b.lock().unwrap().process_queue(), 0);
    assert_eq!(e.used_idx(0), 1);
    // Limits lifted on restore: the held request goes.
    let c = rng(Default::default());
    let mut f = d.restored(c.clone());
    f.transport.restore(&state).unwrap();
    assert_eq!(c.lock().unwrap().process_queue(), 1);
    assert_eq!(f.used_idx(0), 2);
    assert_eq!(f.used(0, 1), (1, 16));
}

#[test]
fn a_block_device_reads_back_what_was_written_before_the_snapshot() {
    const HDR: u64 = BUFFERS;
    const DATA: u64 = BUFFERS + 0x1000;
    const STATUS: u64 = BUFFERS + 0x2000;
    let path = std::env::temp_dir().join(format!("husk-blk-persist-{}", std::process::id()));
    std::fs::write(&path, vec![0u8; 16 * 512]).unwrap();
    let block = || {
        Arc::new(Mutex::new(
            Block::new("d", &path, BlockOptions::default()).unwrap(),
        ))
    };
    // Request `n` uses descriptors 3n..3n+2.
    let request = |d: &Driver, blk: &Mutex<Block>, n: u16, t: u32, sector: u64| {
        let hdr = RequestHeader {
            request_type: t,
            reserved: 0,
            sector,
        };
        d.mem.write_obj(hdr, GuestAddress(HDR)).unwrap();
        let data_flags = if t == T_IN { F_WRITE } else { 0 };
        d.desc(0, 3 * n, HDR, 16, F_NEXT, 3 * n + 1);
        d.desc(0, 3 * n + 1, DATA, 512, data_flags | F_NEXT, 3 * n + 2);
        d.desc(0, 3 * n + 2, STATUS, 1, F_WRITE, 0);
        d.make_available(0, 3 * n);
        blk.lock().unwrap().process_queue();
        d.mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap()
    };
    let a = block();
    let mut d = Driver::new(a.clone());
    d.up(0, 1, 64);
    d.mem.write_slice(&[0xab; 512], GuestAddress(DATA)).unwrap();
    assert_eq!(request(&d, &a, 0, T_OUT, 3), S_OK);
    let state = round_trip(&Persist::save(&d.transport));
    let DeviceState::Block(ref b_state) = state.device else {
        panic!("{:?}", state.device);
    };
    assert_eq!(b_state.capacity, 16);
    let b = block();
    let mut e = d.restored(b.clone());
    e.transport.restore(&state).unwrap();
    e.mem.write_slice(&[0; 512], GuestAddress(DATA)).unwrap();
    assert_eq!(request(&e, &b, 1, T_IN, 3), S_OK);
    assert_eq!(e.used_idx(0), 2);
    assert_eq!(e.used(0, 1), (3, 513));
    let mut got = [0u8; 512];
    e.mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert_eq!(got, [0xab; 512]);
    let _ = std::fs::remove_file(&path);
}

#[test]
fn hostile_states_are_refused_and_leave_the_device_untouched() {
    let (d, _a) = running_rng();
    let good = Persist::save(&d.transport);
    type Mutation = fn(&mut MmioState);
    let cases: &[(&str, Mutation, &str)] = &[
        ("size 0", |s| s.queues[0].size = 0, "size 0"),
        ("size over max", |s| s.queues[0].size = 512, "size 512"),
        (
            "size not a power of 2",
            |s| s.queues[0].size = 12,
            "size 12",
        ),
        (
            "one queue too many",
            |s| {
                s.queues.push(s.queues[0]);
                s.bad_size.push(false);
            },
            "2 queues",
        ),
        ("no queue", |s| s.queues.clear(), "0 queues"),
        ("bad_size count", |s| s.bad_size.clear(), "queues"),
        (
            "rings outside memory",
            |s| s.queues[0].desc_table = 0xffff_0000_0000,
            "not inside guest memory",
        ),
        (
            "used ring at the very end of the address space",
            |s| s.queues[0].used_ring = u64::MAX - 3,
            "not inside guest memory",
        ),
        (
            "misaligned rings",
            |s| s.queues[0].desc_table = 0x1001,
            "queue 0",
        ),
        (
            "queue not ready",
            |s| s.queues[0].ready = false,
            "not ready",
        ),
        ("bad size flagged", |s| s.bad_size[0] = true, "not ready"),
        (
            "running without DRIVER_OK",
            |s| s.activated = false,
            "status",
        ),
        (
            "DRIVER_OK without FEATURES_OK",
            |s| s.status &= !status::FEATURES_OK,
            "status",
        ),
        (
            "features not offered",
            |s| s.driver_features |= 1 << 40,
            "features",
        ),
        (
            "no VERSION_1",
            |s| s.driver_features &= !VIRTIO_F_VERSION_1,
            "features",
        ),
        (
            "EVENT_IDX disagrees",
            |s| s.queues[0].event_idx = false,
            "EVENT_IDX",
        ),
        (
            "another device's state",
            |s| s.device = DeviceState::Block(Default::default()),
            "virtio-blk",
        ),
    ];
    for (what, mutate, msg) in cases {
        let mut s = good.clone();
        mutate(&mut s);
        let b = rng(Default::default());
        let mut e = d.restored(b.clone());
        let err = e.transport.restore(&s).expect_err(what).to_string();
        assert!(err.contains(msg), "{what}: {err}");
        assert_eq!(e.read_reg(reg::STATUS), 0, "{what}");
        assert!(e.irq.read().is_err(), "{what}");
        assert_eq!(b.lock().unwrap().process_queue(), 0, "{what}: not started");
    }
    // A transport in use refuses a second restore.
    let mut e = d.restored(rng(Default::default()));
    e.transport.restore(&good).unwrap();
    let err = e.transport.restore(&good).unwrap_err().to_string();
    assert!(err.contains("in use"), "{err}");
}

#[test]
fn a_corrupted_state_file_never_panics() {
    let (d, _a) = running_rng();
    let good = postcard::to_stdvec(&Persist::save(&d.transport)).unwrap();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut restored = 0;
    for _ in 0..3000 {
        let mut bytes = good.clone();
        for _ in 0..1 + next() % 3 {
            let at = (next() % bytes.len() as u64) as usize;
            bytes[at] = next() as u8;
        }
        let Ok(state) = postcard::from_bytes::<MmioState>(&bytes) else {
            continue;
        };
        let b = rng(Default::default());
        let mut e = d.restored(b.clone());
        if e.transport.restore(&state).is_ok() {
            restored += 1;
            // Whatever was accepted can be served without harm.
            offer(&e, &b, 5);
        }
    }
    assert!(restored > 0, "some mutations are harmless");
}
