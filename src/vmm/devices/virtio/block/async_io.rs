//! The `Async` I/O engine: virtio-blk requests through io_uring.
//!
//! READ, WRITE and (on a Writeback drive) FLUSH are submitted to the ring
//! as the driver makes them available and answered when their
//! completions arrive: the ring signals an eventfd the device watches on
//! the event loop, and each completion puts its chain on the used ring
//! then (in any order, as virtio allows). Everything else (GET_ID,
//! DISCARD, WRITE_ZEROES, malformed requests, and the rare request
//! larger than [`MAX_BOUNCE`]) is carried out at once by the `Sync` code.
//!
//! The kernel reads and writes bounce buffers this engine owns, never
//! guest memory: the data is copied between them and the guest's buffers
//! through vm-memory (checked against guest memory), and a buffer lives
//! until its completion has been reaped, whatever the driver does in
//! between. A device reset leaves requests in flight to finish on their
//! own; their completions are then dropped (`generation`). Before a
//! snapshot, and when the device goes away, every request in flight is
//! waited for ([`AsyncIo::drain`]), so the saved rings hold no request
//! the snapshot would lose.

use std::os::fd::{AsRawFd, RawFd};

use io_uring::{opcode, types, IoUring, Probe};
use virtio_queue::{DescriptorChain, Reader};
use vm_memory::{Address, Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::request::{
    checked_range, execute, Disk, Outcome, RequestHeader, S_IOERR, S_OK, T_FLUSH, T_IN, T_OUT,
};
use crate::vmm::kvm::memory::GuestMem;

/// The largest request (data bytes) that goes through the ring; larger
/// ones are served by the Sync code rather than given a buffer that size.
pub const MAX_BOUNCE: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum AsyncIoError {
    #[error(
        "io_engine Async: this host refuses io_uring ({0}); io_uring needs Linux 5.10.51 or \
         later, kernel.io_uring_disabled = 0, and no seccomp filter or container policy that \
         blocks io_uring_setup"
    )]
    Setup(std::io::Error),
    #[error("io_engine Async: this host's io_uring lacks the {0} operation (Linux 5.10.51 or later has it)")]
    Unsupported(&'static str),
    #[error("io_engine Async: cannot set up the completion eventfd: {0}")]
    EventFd(std::io::Error),
}

/// What a request in flight must do when it completes.
struct Pending {
    head: u16,
    /// The device reset since it was submitted: drop its completion.
    generation: u64,
    kind: Kind,
    /// The bounce buffer the kernel reads or writes (kept alive until the
    /// completion is reaped).
    buf: Vec<u8>,
}

enum Kind {
    /// The data goes to these device-writable guest ranges.
    Read(Writable),
    Write {
        status: GuestAddress,
    },
    Flush {
        status: GuestAddress,
    },
}

/// A chain's device-writable bytes: the data ranges, then the status
/// byte (the last writable byte).
struct Writable {
    data: Vec<(GuestAddress, usize)>,
    status: GuestAddress,
}

/// A finished request, for the used ring and the metrics.
pub struct Completed {
    pub head: u16,
    pub outcome: Outcome,
}

/// How a chain was taken.
pub enum Submitted {
    /// Answered at once, with this outcome.
    Done(Outcome),
    /// In the ring; its completion comes later.
    InFlight,
}

pub struct AsyncIo {
    ring: IoUring,
    /// Signalled by the ring for each completion.
    completion_evt: EventFd,
    slots: Vec<Option<Pending>>,
    free: Vec<usize>,
    in_flight: usize,
    /// Pushed to the ring but not yet given to the kernel.
    unsubmitted: usize,
    generation: u64,
}

impl AsyncIo {
    /// A ring of `entries` for a queue of that many entries.
    pub fn new(entries: u32) -> Result<Self, AsyncIoError> {
        let ring = IoUring::new(entries).map_err(AsyncIoError::Setup)?;
        let mut probe = Probe::new();
        ring.submitter()
            .register_probe(&mut probe)
            .map_err(AsyncIoError::Setup)?;
        for (code, name) in [
            (opcode::Read::CODE, "READ"),
            (opcode::Write::CODE, "WRITE"),
            (opcode::Fsync::CODE, "FSYNC"),
        ] {
            if !probe.is_supported(code) {
                return Err(AsyncIoError::Unsupported(name));
            }
        }
        let completion_evt = EventFd::new(EFD_NONBLOCK).map_err(AsyncIoError::EventFd)?;
        ring.submitter()
            .register_eventfd(completion_evt.as_raw_fd())
            .map_err(AsyncIoError::EventFd)?;
        Ok(AsyncIo {
            ring,
            completion_evt,
            slots: Vec::new(),
            free: Vec::new(),
            in_flight: 0,
            unsubmitted: 0,
            generation: 0,
        })
    }

    pub fn completion_fd(&self) -> RawFd {
        self.completion_evt.as_raw_fd()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// The device was reset: what is in flight finishes unseen.
    pub fn reset(&mut self) {
        self.generation += 1;
    }

    /// Takes `chain`: READ, WRITE and a syncing FLUSH go to the ring,
    /// anything else is carried out now.
    pub fn submit(
        &mut self,
        mem: &GuestMem,
        chain: DescriptorChain<&GuestMem>,
        disk: &Disk,
    ) -> Submitted {
        match self.prepare(mem, &chain, disk) {
            Some((kind, buf, op)) => match self.push(chain.head_index(), kind, buf, op) {
                Ok(()) => Submitted::InFlight,
                // Not in the ring after all: answered as failed.
                Err(kind) => Submitted::Done(answer(mem, status_of(&kind), S_IOERR, 0)),
            },
            None => Submitted::Done(execute(mem, chain, disk)),
        }
    }

    /// What goes to the ring for `chain`, or None for the Sync code.
    fn prepare(
        &self,
        mem: &GuestMem,
        chain: &DescriptorChain<&GuestMem>,
        disk: &Disk,
    ) -> Option<(Kind, Vec<u8>, Op)> {
        let writable = writable(chain)?;
        let mut reader = Reader::new(mem, chain.clone()).ok()?;
        let header: RequestHeader = reader.read_obj().ok()?;
        let fd = disk.file.as_raw_fd();
        match header.request_type {
            T_IN => {
                let len: usize = writable.data.iter().map(|r| r.1).sum();
                let at = checked_range(header.sector, len as u64, disk).ok()?;
                if len > MAX_BOUNCE {
                    return None;
                }
                Some((Kind::Read(writable), vec![0; len], Op::Read { fd, at }))
            }
            T_OUT if !disk.read_only => {
                let len = reader.available_bytes();
                let at = checked_range(header.sector, len as u64, disk).ok()?;
                if len > MAX_BOUNCE {
                    return None;
                }
                let mut buf = vec![0; len];
                std::io::Read::read_exact(&mut reader, &mut buf).ok()?;
                let status = writable.status;
                Some((Kind::Write { status }, buf, Op::Write { fd, at }))
            }
            T_FLUSH if disk.writeback && !disk.read_only => {
                let status = writable.status;
                Some((Kind::Flush { status }, Vec::new(), Op::Fsync { fd }))
            }
            _ => None,
        }
    }

    /// Puts the request in the ring; gives its kind back if it cannot.
    fn push(&mut self, head: u16, kind: Kind, mut buf: Vec<u8>, op: Op) -> Result<(), Kind> {
        let slot = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        // The buffer's heap storage does not move when the Vec does: the
        // pointer stays valid while the Pending (owning it) is in `slots`.
        let (ptr, len) = (buf.as_mut_ptr(), buf.len() as u32);
        let sqe = match op {
            Op::Read { fd, at } => opcode::Read::new(types::Fd(fd), ptr, len)
                .offset(at)
                .build(),
            Op::Write { fd, at } => opcode::Write::new(types::Fd(fd), ptr, len)
                .offset(at)
                .build(),
            Op::Fsync { fd } => opcode::Fsync::new(types::Fd(fd))
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
        }
        .user_data(slot as u64);
        self.slots[slot] = Some(Pending {
            head,
            generation: self.generation,
            kind,
            buf,
        });
        // The ring has as many entries as the queue and is submitted after
        // every batch, so it has room; should it not, submit and retry.
        for _ in 0..2 {
            // SAFETY: the entry's buffer (if any) is owned by `slots[slot]`
            // and stays there, unmoved, until this entry's completion is
            // reaped in `reap` (drain waits for it before the ring or the
            // buffers go away); the file descriptor is the disk's, open
            // for as long as the device.
            if unsafe { self.ring.submission().push(&sqe) }.is_ok() {
                self.in_flight += 1;
                self.unsubmitted += 1;
                return Ok(());
            }
            self.flush_submissions();
        }
        self.free.push(slot);
        match self.slots[slot].take() {
            Some(p) => Err(p.kind),
            None => unreachable!("the slot was filled above"),
        }
    }

    /// Gives the kernel what was pushed (after each batch).
    pub fn flush_submissions(&mut self) {
        if self.unsubmitted == 0 {
            return;
        }
        match self.ring.submit() {
            Ok(_) => self.unsubmitted = 0,
            Err(e) => tracing::error!("virtio-blk: io_uring submission failed: {e}"),
        }
    }

    /// Every completion the ring holds, finished into guest memory;
    /// completions of requests from before a reset are dropped, and so
    /// is everything while the device is reset (`mem` None).
    pub fn reap(&mut self, mem: Option<&GuestMem>) -> Vec<Completed> {
        let _ = self.completion_evt.read();
        let cqes: Vec<(u64, i32)> = self
            .ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        let mut done = Vec::with_capacity(cqes.len());
        for (key, res) in cqes {
            let Some(p) = self.slots.get_mut(key as usize).and_then(Option::take) else {
                tracing::warn!(key, "virtio-blk: a completion for no request");
                continue;
            };
            self.free.push(key as usize);
            self.in_flight -= 1;
            if let Some(mem) = mem.filter(|_| p.generation == self.generation) {
                done.push(Completed {
                    head: p.head,
                    outcome: finish(mem, p, res),
                });
            }
        }
        done
    }

    /// Waits until nothing is in flight and returns every completion.
    pub fn drain(&mut self, mem: &GuestMem) -> Vec<Completed> {
        self.flush_submissions();
        let mut done = Vec::new();
        while self.in_flight > 0 {
            if let Err(e) = self.ring.submit_and_wait(1) {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    tracing::error!("virtio-blk: waiting for io_uring failed: {e}");
                    break;
                }
            }
            done.extend(self.reap(Some(mem)));
        }
        done
    }
}

impl Drop for AsyncIo {
    /// The kernel may not write a buffer that is gone: wait for it.
    fn drop(&mut self) {
        self.generation += 1;
        while self.in_flight > 0 {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
            let reaped: Vec<u64> = self.ring.completion().map(|c| c.user_data()).collect();
            for key in reaped {
                if let Some(slot) = self.slots.get_mut(key as usize) {
                    if slot.take().is_some() {
                        self.in_flight -= 1;
                    }
                }
            }
        }
    }
}

/// An operation for the ring.
enum Op {
    Read { fd: RawFd, at: u64 },
    Write { fd: RawFd, at: u64 },
    Fsync { fd: RawFd },
}

/// The chain's device-writable ranges, None when it has no byte for the
/// status (the Sync code then answers it with nothing).
fn writable(chain: &DescriptorChain<&GuestMem>) -> Option<Writable> {
    let mut ranges: Vec<(GuestAddress, usize)> = chain
        .clone()
        .filter(|d| d.is_write_only() && d.len() > 0)
        .map(|d| (d.addr(), d.len() as usize))
        .collect();
    let last = ranges.last_mut()?;
    let status = last.0.checked_add(last.1 as u64 - 1)?;
    last.1 -= 1;
    if last.1 == 0 {
        ranges.pop();
    }
    Some(Writable {
        data: ranges,
        status,
    })
}

/// Writes the status byte; the outcome of a request that wrote
/// `data_len` bytes into the guest's buffers before it.
fn answer(mem: &GuestMem, status_at: GuestAddress, status: u8, data_len: usize) -> Outcome {
    if mem.write_obj(status, status_at).is_err() {
        return Outcome::default();
    }
    Outcome {
        used_len: data_len as u32 + 1,
        status: Some(status),
        ..Outcome::default()
    }
}

/// Where a request's status byte goes.
fn status_of(kind: &Kind) -> GuestAddress {
    match kind {
        Kind::Read(w) => w.status,
        Kind::Write { status } | Kind::Flush { status } => *status,
    }
}

/// Copies a finished READ into the guest and writes every status byte.
fn finish(mem: &GuestMem, p: Pending, res: i32) -> Outcome {
    let whole = res >= 0 && res as usize == p.buf.len();
    match p.kind {
        Kind::Read(w) => {
            if !whole {
                return answer(mem, w.status, S_IOERR, 0);
            }
            let mut at = 0;
            for (addr, len) in &w.data {
                if mem.write_slice(&p.buf[at..at + len], *addr).is_err() {
                    return answer(mem, w.status, S_IOERR, at);
                }
                at += len;
            }
            Outcome {
                read_bytes: at as u64,
                ..answer(mem, w.status, S_OK, at)
            }
        }
        Kind::Write { status } if whole => Outcome {
            written_bytes: p.buf.len() as u64,
            ..answer(mem, status, S_OK, 0)
        },
        Kind::Flush { status } if res >= 0 => answer(mem, status, S_OK, 0),
        Kind::Write { status } | Kind::Flush { status } => answer(mem, status, S_IOERR, 0),
    }
}
