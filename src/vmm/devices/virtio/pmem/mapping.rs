//! A pmem device's memory: its backing file mapped into this process,
//! rounded up to 2 MiB (the spec's alignment, and Firecracker's), and
//! the KVM memory slot that puts the mapping into the guest's physical
//! address space. A read-only device's slot is `KVM_MEM_READONLY`: the
//! guest's writes exit to the VMM, where [`ReadOnlyWindow`] counts and
//! drops them.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use kvm_bindings::KVM_MEM_READONLY;

use crate::vmm::arch::x86_64::layout::{align_up, PMEM_ALIGN};
use crate::vmm::devices::BusDevice;
use crate::vmm::kvm::{MemSlots, VmError};
use crate::vmm::metrics::METRICS;

#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    #[error("cannot open {path}: {err}")]
    Open { path: String, err: std::io::Error },
    #[error("{0} is not a regular file")]
    NotRegular(String),
    #[error("{0} is empty: a pmem device needs a backing file of at least one byte")]
    Empty(String),
    #[error("{path} is {len} bytes, more than this host can map")]
    TooLarge { path: String, len: u64 },
    #[error("cannot map {path}: {err}")]
    Map { path: String, err: std::io::Error },
    #[error(transparent)]
    Slot(#[from] VmError),
}

/// Opens a pmem backing file (read-write unless `read_only`, never
/// blocking on a FIFO): a regular file that is not empty. Returns it
/// with its size.
pub fn open_backing(path: &Path, read_only: bool) -> Result<(File, u64), MappingError> {
    use std::os::unix::fs::OpenOptionsExt;
    let show = || crate::text::echo_path(path);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(!read_only)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|err| MappingError::Open { path: show(), err })?;
    let meta = f
        .metadata()
        .map_err(|err| MappingError::Open { path: show(), err })?;
    if !meta.is_file() {
        return Err(MappingError::NotRegular(show()));
    }
    if meta.len() == 0 {
        return Err(MappingError::Empty(show()));
    }
    Ok((f, meta.len()))
}

/// The backing file mapped `MAP_SHARED` (so the guest's writes are the
/// file's), followed by anonymous memory up to the next 2 MiB; unmapped
/// when dropped.
pub struct PmemMapping {
    /// The file, kept open for as long as it is mapped.
    _file: File,
    /// Where the mapping starts in this process.
    addr: usize,
    /// The file's size.
    file_len: u64,
    /// The mapping's size: `file_len` rounded up to 2 MiB.
    len: u64,
}

impl PmemMapping {
    pub fn new(path: &Path, read_only: bool) -> Result<Self, MappingError> {
        let show = || crate::text::echo_path(path);
        let (file, file_len) = open_backing(path, read_only)?;
        let too_large = || MappingError::TooLarge {
            path: show(),
            len: file_len,
        };
        let len = align_up(file_len, PMEM_ALIGN).ok_or_else(too_large)?;
        let (len_us, file_us) = (
            usize::try_from(len).map_err(|_| too_large())?,
            usize::try_from(file_len).map_err(|_| too_large())?,
        );
        let prot = if read_only {
            libc::PROT_READ
        } else {
            libc::PROT_READ | libc::PROT_WRITE
        };
        let map_err = |err| MappingError::Map { path: show(), err };
        // SAFETY: a new anonymous mapping at an address the kernel
        // chooses; nothing else is touched. It reserves the whole 2 MiB
        // aligned window, and the file goes over its start next.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len_us,
                prot,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(map_err(std::io::Error::last_os_error()));
        }
        // SAFETY: MAP_FIXED over the first `file_us` bytes of the
        // mapping just made, which this function owns and nothing uses
        // yet; the file is open with the access `prot` asks for.
        let r = unsafe {
            libc::mmap(
                base,
                file_us,
                prot,
                libc::MAP_SHARED | libc::MAP_NORESERVE | libc::MAP_FIXED,
                file.as_raw_fd(),
                0,
            )
        };
        if r == libc::MAP_FAILED {
            let err = std::io::Error::last_os_error();
            // SAFETY: unmaps exactly the mapping made above, unused.
            unsafe { libc::munmap(base, len_us) };
            return Err(map_err(err));
        }
        // Keep the file's pages out of core dumps, like guest RAM.
        // SAFETY: the range is the mapping made above; MADV_DONTDUMP
        // changes no contents.
        unsafe { libc::madvise(base, len_us, libc::MADV_DONTDUMP) };
        Ok(PmemMapping {
            _file: file,
            addr: base as usize,
            file_len,
            len,
        })
    }

    /// The mapping's size, a multiple of 2 MiB: the guest window's size.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Never true: an empty file is refused.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// Writes the file's dirty pages back and waits for them (a FLUSH
    /// request): `msync(MS_SYNC)` over the file's part of the mapping.
    pub fn sync(&self) -> std::io::Result<()> {
        // SAFETY: [addr, addr + file_len) is the file's mapping, owned by
        // `self`; msync reads no memory of ours, it writes pages back.
        let r = unsafe {
            libc::msync(
                self.addr as *mut libc::c_void,
                self.file_len as usize,
                libc::MS_SYNC,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    /// Maps the whole window into the guest at `gpa` as KVM memory slot
    /// `slot`, read-only if asked; the slot is removed when the returned
    /// handle is dropped (before this mapping must be).
    pub fn map_into_guest(
        &self,
        slots: MemSlots,
        slot: u32,
        gpa: u64,
        read_only: bool,
    ) -> Result<PmemSlot, MappingError> {
        let flags = if read_only { KVM_MEM_READONLY } else { 0 };
        // SAFETY: the mapping lives until `self` is dropped; the device
        // that owns both drops the slot first (field order), and the VM
        // fd closing also ends KVM's use of it.
        unsafe { slots.set(slot, gpa, self.len, self.addr as u64, flags) }?;
        Ok(PmemSlot { slots, slot })
    }

    /// The mapping's bytes at `offset` (tests: what the guest sees).
    #[cfg(test)]
    pub fn read(&self, offset: usize, buf: &mut [u8]) {
        assert!(offset + buf.len() <= self.len as usize);
        // SAFETY: the range is inside the mapping, checked above; the
        // mapping is readable.
        let src =
            unsafe { std::slice::from_raw_parts((self.addr + offset) as *const u8, buf.len()) };
        buf.copy_from_slice(src);
    }
}

impl Drop for PmemMapping {
    fn drop(&mut self) {
        // SAFETY: unmaps the mapping `new` made, whole; nothing refers to
        // it any more (its KVM slot is removed first).
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len as usize) };
    }
}

/// A pmem window's KVM memory slot, removed on drop.
pub struct PmemSlot {
    slots: MemSlots,
    slot: u32,
}

impl Drop for PmemSlot {
    fn drop(&mut self) {
        if let Err(e) = self.slots.remove(self.slot) {
            tracing::debug!("virtio-pmem: {e}");
        }
    }
}

/// What the guest meets when it writes to a read-only pmem window (its
/// KVM slot is read-only, so each write exits to the VMM): the write is
/// dropped and counted, as Firecracker drops it, and the guest goes on.
pub struct ReadOnlyWindow {
    id: String,
    warned: AtomicBool,
}

impl ReadOnlyWindow {
    pub fn new(id: &str) -> Self {
        ReadOnlyWindow {
            id: id.to_string(),
            warned: AtomicBool::new(false),
        }
    }
}

impl BusDevice for ReadOnlyWindow {
    /// Reads never exit (the slot maps them); one that does reads zeros.
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, _data: &[u8]) {
        METRICS.pmem.read_only_writes.inc();
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                id = %self.id,
                offset,
                "virtio-pmem: the guest wrote to a read-only device; its writes are dropped"
            );
        }
    }
}
