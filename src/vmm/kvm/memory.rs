//! Guest memory: mappings with MAP_NORESERVE, so pages cost nothing
//! until the guest touches them. A cold boot maps anonymous memory; a
//! restore maps the snapshot's memory file `MAP_PRIVATE`, so pages load
//! on first touch and writes stay in this process. A VM with a vhost-user
//! device (virtio-fs) maps a memfd `MAP_SHARED` instead, so the backend
//! process can map the same pages (it gets the memfd with SET_MEM_TABLE).
//!
//! With dirty-page tracking each region carries a bitmap of the pages the
//! VMM's devices wrote (KVM's dirty log only sees the guest's writes).

use std::fs::File;
use std::num::NonZeroUsize;

use vm_memory::bitmap::AtomicBitmap;
use vm_memory::mmap::{MmapRegionBuilder, MmapRegionError};
use vm_memory::{
    FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap,
};

use crate::vmm::arch::x86_64::layout::{memory_ranges, DeviceMemory, HOTPLUG_ALIGN};

/// Guest memory as every part of the VMM sees it: regions with an
/// optional bitmap of pages written through vm-memory.
pub type GuestMem = GuestMemoryMmap<Option<AtomicBitmap>>;

/// The bitmap slice of a [`GuestMem`] access.
pub type MemSlice<'a> = vm_memory::bitmap::MS<'a, GuestMem>;
/// A descriptor chain's readable buffers in [`GuestMem`].
pub type ChainReader<'a> = virtio_queue::Reader<'a, MemSlice<'a>>;
/// A descriptor chain's writable buffers in [`GuestMem`].
pub type ChainWriter<'a> = virtio_queue::Writer<'a, MemSlice<'a>>;

/// The page size dirty tracking works in.
pub const PAGE_SIZE: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot map {size_mib} MiB of guest memory: {err}")]
    Map { size_mib: u64, err: MmapRegionError },
    #[error("guest memory of {0} bytes does not fit this host's address space")]
    TooLarge(u64),
    #[error("guest memory regions overlap or are out of order")]
    Layout,
    #[error("cannot use the memory file: {0}")]
    File(std::io::Error),
    #[error("cannot create shared guest memory (memfd): {0}")]
    Memfd(std::io::Error),
    #[error("{0} MiB of hotpluggable memory do not fit the guest's physical address space")]
    HotplugTooLarge(u64),
}

/// The guest-physical ranges of `size_mib` MiB of RAM, split around the
/// MMIO gap.
pub fn ram_ranges(size_mib: u64) -> Result<Vec<(GuestAddress, usize)>, MemoryError> {
    let size = size_mib
        .checked_mul(1 << 20)
        .ok_or(MemoryError::TooLarge(u64::MAX))?;
    memory_ranges(size)
        .into_iter()
        .map(|(a, len)| usize::try_from(len).map(|l| (a, l)))
        .collect::<Result<_, _>>()
        .map_err(|_| MemoryError::TooLarge(size))
}

/// Every guest memory region of a machine with `size_mib` MiB of RAM and
/// `hotplug_mib` MiB of hotpluggable memory: the RAM ranges, then (when
/// `hotplug_mib` is not 0) the hotpluggable region, placed by the
/// layout's [`DeviceMemory`], which is returned to place pmem windows
/// after it.
pub fn guest_ranges(
    size_mib: u64,
    hotplug_mib: u64,
) -> Result<(Vec<(GuestAddress, usize)>, DeviceMemory), MemoryError> {
    let mut ranges = ram_ranges(size_mib)?;
    let mut devices = DeviceMemory::new(size_mib << 20);
    if hotplug_mib > 0 {
        let too_large = MemoryError::HotplugTooLarge(hotplug_mib);
        let size = hotplug_mib.checked_mul(1 << 20).ok_or(too_large)?;
        let start = devices
            .allocate(size, HOTPLUG_ALIGN)
            .ok_or(MemoryError::HotplugTooLarge(hotplug_mib))?;
        let len = usize::try_from(size).map_err(|_| MemoryError::TooLarge(size))?;
        ranges.push((GuestAddress(start), len));
    }
    Ok((ranges, devices))
}

/// Maps anonymous guest memory over `ranges` (from [`guest_ranges`]),
/// with a bitmap of device writes when `track_dirty` is set.
pub fn create_guest_memory(
    ranges: &[(GuestAddress, usize)],
    track_dirty: bool,
) -> Result<GuestMem, MemoryError> {
    build(ranges, Backing::Anonymous, track_dirty)
}

/// Like [`create_guest_memory`], but the memory is one memfd mapped
/// `MAP_SHARED`, each region at its offset in it: a vhost-user backend
/// maps the same pages. Each region keeps a handle on the memfd
/// (`GuestRegionMmap::file_offset`), which is what SET_MEM_TABLE sends.
pub fn create_shared_guest_memory(
    ranges: &[(GuestAddress, usize)],
    track_dirty: bool,
) -> Result<GuestMem, MemoryError> {
    let total: u64 = ranges.iter().map(|r| r.1 as u64).sum();
    let memfd = sealed_memfd("husk-guest-ram", total).map_err(MemoryError::Memfd)?;
    build(ranges, Backing::Shared(&memfd), track_dirty)
}

/// A new memfd of `size` bytes, closed on exec, whose size is then
/// sealed: the backend that gets it cannot shrink it under the VMM's
/// mappings (a later access there would be a SIGBUS in this process).
fn sealed_memfd(name: &str, size: u64) -> std::io::Result<File> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let name = std::ffi::CString::new(name).map_err(std::io::Error::other)?;
    // SAFETY: `name` is a valid NUL-terminated string that outlives the
    // call; memfd_create takes no other pointer.
    let fd =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: memfd_create returned a new descriptor that nothing else owns.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(size)?;
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
    // SAFETY: F_ADD_SEALS on a descriptor we own; no memory is passed.
    if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(f)
}

/// Anonymous memory over `ranges`, without dirty tracking (tests and
/// tools).
pub fn anonymous(ranges: &[(GuestAddress, usize)]) -> Result<GuestMem, MemoryError> {
    build(ranges, Backing::Anonymous, false)
}

/// Maps `file` `MAP_PRIVATE` over `ranges`, the regions one after the
/// other in the file (the layout of a snapshot's memory file).
pub fn from_file(
    file: &File,
    ranges: &[(GuestAddress, usize)],
    track_dirty: bool,
) -> Result<GuestMem, MemoryError> {
    build(ranges, Backing::Private(file), track_dirty)
}

/// What guest RAM is mapped from.
enum Backing<'a> {
    Anonymous,
    /// A file mapped copy-on-write (a snapshot's memory file).
    Private(&'a File),
    /// A memfd every writer shares (a vhost-user backend maps it too).
    Shared(&'a File),
}

fn build(
    ranges: &[(GuestAddress, usize)],
    backing: Backing<'_>,
    track_dirty: bool,
) -> Result<GuestMem, MemoryError> {
    let size_mib = ranges.iter().map(|r| r.1 as u64).sum::<u64>() >> 20;
    let page = NonZeroUsize::new(PAGE_SIZE).unwrap_or(NonZeroUsize::MIN);
    let mut regions = Vec::with_capacity(ranges.len());
    let mut offset = 0u64;
    for &(addr, len) in ranges {
        let bitmap = track_dirty.then(|| AtomicBitmap::new(len, page));
        let mut builder = MmapRegionBuilder::new_with_bitmap(len, bitmap)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE);
        let file_at = |f: &File| {
            f.try_clone()
                .map(|f| FileOffset::new(f, offset))
                .map_err(MemoryError::File)
        };
        builder = match backing {
            Backing::Private(f) => builder
                .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
                .with_file_offset(file_at(f)?),
            Backing::Shared(f) => builder
                .with_mmap_flags(libc::MAP_SHARED | libc::MAP_NORESERVE)
                .with_file_offset(file_at(f)?),
            Backing::Anonymous => builder
                .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE),
        };
        let region = builder
            .build()
            .map_err(|err| MemoryError::Map { size_mib, err })?;
        regions.push(GuestRegionMmap::new(region, addr).ok_or(MemoryError::Layout)?);
        offset += len as u64;
    }
    let mem = GuestMem::from_regions(regions).map_err(|_| MemoryError::Layout)?;
    for region in mem.iter() {
        // Keep guest RAM out of VMM core dumps. This also gives the mapping
        // its own VMA, so /proc/PID/smaps shows guest pages on their own.
        // SAFETY: the range is exactly one mapping owned by `mem`; madvise
        // with MADV_DONTDUMP changes no memory contents.
        let r = unsafe {
            libc::madvise(
                region.as_ptr().cast(),
                region.len() as usize,
                libc::MADV_DONTDUMP,
            )
        };
        if r != 0 {
            tracing::debug!(
                "madvise(MADV_DONTDUMP): {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(mem)
}

/// The guest-physical layout of `mem`: (start, length) of each region.
pub fn layout(mem: &GuestMem) -> Vec<(u64, u64)> {
    mem.iter().map(|r| (r.start_addr().0, r.len())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn regions_follow_the_layout() {
        let m = create_guest_memory(&ram_ranges(128).unwrap(), false).unwrap();
        assert_eq!(m.num_regions(), 1);
        assert_eq!(m.iter().next().unwrap().len(), 128 << 20);
        // 4 GiB of address space costs nothing until touched.
        let m = create_guest_memory(&ram_ranges(4096).unwrap(), true).unwrap();
        assert_eq!(m.num_regions(), 2);
        let starts: Vec<u64> = m.iter().map(|r| r.start_addr().0).collect();
        assert_eq!(starts, vec![0, 1 << 32]);
    }

    #[test]
    fn the_hotpluggable_region_comes_last_above_ram() {
        let (r, mut devices) = guest_ranges(128, 256).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[1], (GuestAddress(512 << 30), 256 << 20));
        // pmem windows go after it.
        assert_eq!(
            devices.allocate(2 << 20, 2 << 20),
            Some((512 << 30) + (256 << 20))
        );
        let (r, _) = guest_ranges(128, 0).unwrap();
        assert_eq!(r, ram_ranges(128).unwrap());
        assert!(matches!(
            guest_ranges(128, 1 << 30),
            Err(MemoryError::HotplugTooLarge(_))
        ));
    }

    #[test]
    fn device_writes_mark_pages_dirty() {
        let m = create_guest_memory(&ram_ranges(16).unwrap(), true).unwrap();
        m.write_obj(7u32, GuestAddress(3 * PAGE_SIZE as u64 + 8))
            .unwrap();
        use vm_memory::bitmap::Bitmap;
        let bitmap = m.iter().next().unwrap().bitmap();
        assert!(bitmap.dirty_at(3 * PAGE_SIZE));
        assert!(!bitmap.dirty_at(2 * PAGE_SIZE) && !bitmap.dirty_at(4 * PAGE_SIZE));
    }

    #[test]
    fn a_file_mapping_is_private() {
        let path = std::env::temp_dir().join(format!("husk-mem-{}", std::process::id()));
        std::fs::write(&path, vec![5u8; 2 * PAGE_SIZE]).unwrap();
        let f = File::open(&path).unwrap();
        let m = from_file(&f, &[(GuestAddress(0), 2 * PAGE_SIZE)], false).unwrap();
        assert_eq!(m.read_obj::<u8>(GuestAddress(10)).unwrap(), 5);
        m.write_obj(9u8, GuestAddress(10)).unwrap();
        assert_eq!(m.read_obj::<u8>(GuestAddress(10)).unwrap(), 9);
        assert_eq!(std::fs::read(&path).unwrap()[10], 5);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn shared_memory_is_one_memfd_every_region_maps() {
        use std::os::unix::fs::FileExt;
        let m = create_shared_guest_memory(&ram_ranges(4096).unwrap(), false).unwrap();
        let regions: Vec<_> = m.iter().collect();
        assert_eq!(regions.len(), 2);
        let offsets: Vec<u64> = regions
            .iter()
            .map(|r| r.file_offset().unwrap().start())
            .collect();
        assert_eq!(offsets, vec![0, regions[0].len()]);
        // A write through the mapping shows in the file: it is shared.
        m.write_obj(0x5au8, GuestAddress(1 << 32)).unwrap();
        let f = regions[1].file_offset().unwrap().file();
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, regions[0].len()).unwrap();
        assert_eq!(b[0], 0x5a);
        // Its size is sealed: whoever else holds it cannot pull pages
        // from under this process's mappings.
        let e = f.set_len(4096).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");
    }
}
