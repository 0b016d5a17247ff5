//! virtio data paths on in-process guest memory: queue bookkeeping per
//! descriptor chain, and block requests against a page-cached file.
//! Budgets (docs/architecture.md): a 3-descriptor chain popped and
//! returned in ≤ 150 ns; ≥ 250k random 4 KiB block reads per second on
//! one core (with each I/O engine, one request at a time and 32 at
//! once); ≥ 200k 64-byte frames per second into a TAP on one core.

use std::sync::{Arc, Mutex};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use husk::vmm::config::IoEngine;
use husk::vmm::devices::virtio::block::request::{RequestHeader, T_IN};
use husk::vmm::devices::virtio::block::{Block, BlockOptions};
use husk::vmm::devices::virtio::net::{Net, NetOptions, TX_QUEUE, VNET_HDR_LEN};
use husk::vmm::devices::virtio::test_utils::{rings, Driver, BUFFERS, F_NEXT, F_WRITE};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

const QSIZE: u16 = 256;

fn queue_bookkeeping(c: &mut Criterion) {
    let mem = husk::vmm::kvm::memory::anonymous(&[(GuestAddress(0), 16 << 20)]).unwrap();
    let (desc, avail, used) = rings(0);
    let mut q = Queue::new(QSIZE).unwrap();
    q.set_size(QSIZE);
    q.set_desc_table_address(Some(desc as u32), Some(0));
    q.set_avail_ring_address(Some(avail as u32), Some(0));
    q.set_used_ring_address(Some(used as u32), Some(0));
    q.set_ready(true);
    for (i, (addr, len, flags, next)) in [
        (BUFFERS, 16u32, 1u16, 1u16),
        (BUFFERS + 0x1000, 4096, 3, 2),
        (BUFFERS + 0x3000, 1, 2, 0),
    ]
    .into_iter()
    .enumerate()
    {
        let at = desc + i as u64 * 16;
        mem.write_obj(addr, GuestAddress(at)).unwrap();
        mem.write_obj(len, GuestAddress(at + 8)).unwrap();
        mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
        mem.write_obj(next, GuestAddress(at + 14)).unwrap();
    }
    // Every avail slot already names chain 0 (the ring starts zeroed), so
    // publishing is one index write, done outside the timed part.
    let mut idx: u16 = 0;
    let mut g = c.benchmark_group("queue");
    g.throughput(Throughput::Elements(1));
    g.bench_function("pop_3_descriptor_chain_and_add_used", |b| {
        b.iter_custom(|iters| {
            let mut total = std::time::Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let n = left.min(u64::from(QSIZE)) as u16;
                idx = idx.wrapping_add(n);
                mem.write_obj(idx, GuestAddress(avail + 2)).unwrap();
                let start = std::time::Instant::now();
                for _ in 0..n {
                    let chain = q.pop_descriptor_chain(&mem).unwrap();
                    let head = chain.head_index();
                    let len: u32 = chain.map(|d| d.len()).sum();
                    q.add_used(&mem, head, len).unwrap();
                }
                total += start.elapsed();
                left -= u64::from(n);
            }
            total
        })
    });
    g.finish();
}

/// xorshift: a random 4 KiB-aligned sector of a `disk`-byte disk.
fn random_sector(x: &mut u64, disk: u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    (*x % (disk / 4096)) * 8
}

/// Random 4 KiB reads from a page-cached file, one request at a time
/// (`depth` 1) or `depth` chains made available at once, with each I/O
/// engine: the Async figures include waiting for io_uring's completions.
fn block_random_reads(c: &mut Criterion) {
    const DISK: u64 = 64 << 20;
    let path = std::env::temp_dir().join(format!("husk-bench-blk-{}", std::process::id()));
    std::fs::write(&path, vec![0x5au8; DISK as usize]).unwrap();
    let mut g = c.benchmark_group("block");
    for engine in [IoEngine::Sync, IoEngine::Async] {
        let options = BlockOptions {
            engine,
            ..Default::default()
        };
        let blk = Arc::new(Mutex::new(Block::new("bench", &path, options).unwrap()));
        let mut drv = Driver::new(blk.clone());
        drv.up(0, 1, QSIZE);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for depth in [1u16, 32] {
            // Chain i: descriptors 3i..3i+3, its own header, data and status.
            for i in 0..depth {
                let base = BUFFERS + u64::from(i) * 0x2000;
                drv.desc(0, 3 * i, base, 16, F_NEXT, 3 * i + 1);
                drv.desc(
                    0,
                    3 * i + 1,
                    base + 0x1000,
                    4096,
                    F_NEXT | F_WRITE,
                    3 * i + 2,
                );
                drv.desc(0, 3 * i + 2, base + 0x10, 1, F_WRITE, 0);
            }
            g.throughput(Throughput::Elements(u64::from(depth)));
            let name = format!("random_4k_read_page_cached_{engine:?}_depth{depth}");
            g.bench_function(name.to_lowercase(), |b| {
                b.iter(|| {
                    for i in 0..depth {
                        let hdr = RequestHeader {
                            request_type: T_IN,
                            reserved: 0,
                            sector: random_sector(&mut x, DISK),
                        };
                        let base = BUFFERS + u64::from(i) * 0x2000;
                        drv.mem.write_obj(hdr, GuestAddress(base)).unwrap();
                        drv.make_available(0, 3 * i);
                    }
                    let mut blk = blk.lock().unwrap();
                    blk.process_queue();
                    blk.drain();
                })
            });
        }
    }
    g.finish();
    let _ = std::fs::remove_file(&path);
}

/// A persistent TAP for the benchmark, removed on drop.
struct BenchTap(String);

impl BenchTap {
    fn create() -> Option<BenchTap> {
        let name = format!("hkbench{}", std::process::id() % 100_000);
        let ip = |args: &[&str]| {
            std::process::Command::new("ip")
                .args(args)
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if !ip(&["tuntap", "add", "mode", "tap", "name", &name]) {
            eprintln!("skipped: net_tx needs root and `ip` to create a TAP");
            return None;
        }
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
        ip(&["link", "set", &name, "up"]);
        Some(BenchTap(name))
    }
}

impl Drop for BenchTap {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.0])
            .status();
    }
}

fn net_tx_into_tap(c: &mut Criterion) {
    let Some(tap) = BenchTap::create() else {
        return;
    };
    let net = Arc::new(Mutex::new(Net::new(&tap.0, NetOptions::default()).unwrap()));
    let mut drv = Driver::new(net.clone());
    drv.up(0, 2, QSIZE);
    // One descriptor: the 12-byte virtio-net header, then a 64-byte frame.
    let mut frame = [0u8; VNET_HDR_LEN + 64];
    frame[VNET_HDR_LEN..VNET_HDR_LEN + 6].fill(0xff);
    frame[VNET_HDR_LEN + 12..VNET_HDR_LEN + 14].copy_from_slice(&[0x88, 0xb5]);
    drv.mem.write_slice(&frame, GuestAddress(BUFFERS)).unwrap();
    drv.desc(TX_QUEUE as u16, 0, BUFFERS, frame.len() as u32, 0, 0);
    let mut g = c.benchmark_group("net");
    g.throughput(Throughput::Elements(1));
    g.bench_function("tx_64_byte_frame_into_tap", |b| {
        b.iter(|| {
            drv.make_available(TX_QUEUE as u16, 0);
            let sent = net.lock().unwrap().process_tx();
            assert_eq!(sent, 1);
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    queue_bookkeeping,
    block_random_reads,
    net_tx_into_tap
);
criterion_main!(benches);
