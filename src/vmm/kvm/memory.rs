//! Guest memory: mappings with MAP_NORESERVE, so pages cost nothing
//! until the guest touches them. A cold boot maps anonymous memory; a
//! restore maps the snapshot's memory file `MAP_PRIVATE`, so pages load
//! on first touch and writes stay in this process. A VM with a vhost-user
//! device (virtio-fs) maps a memfd `MAP_SHARED` instead, so the backend
//! process can map the same pages (it gets the memfd with SET_MEM_TABLE).
//!
//! With dirty-page tracking each region carries a bitmap of the pages the
//! VMM's devices wrote (KVM's dirty log only sees the guest's writes).
//!
//! `huge_pages` changes the mappings:
//! - `"2M"`: anonymous memory is mapped `MAP_HUGETLB | MAP_HUGE_2MB`, a
//!   shared memfd is made `MFD_HUGETLB | MFD_HUGE_2MB`, and neither with
//!   `MAP_NORESERVE`: the kernel reserves every huge page of guest memory
//!   from the host's pool when it is mapped, so a pool too small fails the
//!   start with the figures ([`MemoryError::HugePagesShort`]) rather than
//!   with a SIGBUS when the guest first touches a page nobody can back.
//!   (Firecracker maps with `MAP_NORESERVE` and takes that SIGBUS.)
//! - `"Transparent"`: the mappings get `madvise(MADV_HUGEPAGE)`, so the
//!   kernel backs them with transparent huge pages where it can
//!   (anonymous memory; shmem only when
//!   `/sys/kernel/mm/transparent_hugepage/shmem_enabled` allows it).
//!
//! The page size is the same for every region, virtio-mem's hotpluggable
//! one included (as in Firecracker, whose block size is at least 2 MiB for
//! that reason). With `"2M"` that region's pages are reserved at start
//! like RAM's, so a plug can never fault on an empty pool: the pool must
//! hold RAM and the whole region, and an unplugged block keeps its pages
//! (see `devices/virtio/mem/region.rs`).

use std::fs::File;
use std::num::NonZeroUsize;

use vm_memory::bitmap::AtomicBitmap;
use vm_memory::mmap::{MmapRegionBuilder, MmapRegionError};
use vm_memory::{
    FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap,
};

use crate::vmm::arch::x86_64::layout::{memory_ranges, DeviceMemory, HOTPLUG_ALIGN};
use crate::vmm::config::HugePages;

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
    #[error(
        "guest memory of {size_mib} MiB needs a region of {region_mib} MiB at {addr:#x}, more than \
         the {MAX_REGION_MIB} MiB a KVM memory slot can hold"
    )]
    RegionTooLarge {
        size_mib: u64,
        region_mib: u64,
        addr: u64,
    },
    #[error("guest memory regions overlap or are out of order")]
    Layout,
    #[error("cannot use the memory file: {0}")]
    File(std::io::Error),
    #[error("cannot create shared guest memory (memfd): {0}")]
    Memfd(std::io::Error),
    #[error("{0} MiB of hotpluggable memory do not fit the guest's physical address space")]
    HotplugTooLarge(u64),
    #[error(
        "guest memory ({size_mib} MiB) needs {needed} free 2 MiB huge pages, but {have}: raise \
         /proc/sys/vm/nr_hugepages, or use huge_pages \"None\" or \"Transparent\""
    )]
    HugePagesShort {
        size_mib: u64,
        needed: u64,
        /// What the pool has, as far as this process can see it.
        have: String,
    },
    #[error("cannot ask for transparent huge pages (madvise MADV_HUGEPAGE): {0}")]
    Transparent(std::io::Error),
    #[error("a memory file cannot back hugetlbfs guest memory")]
    HugetlbFile,
}

/// The most pages one KVM memory slot takes (`KVM_MEM_MAX_NR_PAGES` in
/// the kernel's `include/linux/kvm_host.h`, unchanged since Linux 3.9);
/// KVM_SET_USER_MEMORY_REGION refuses a larger slot with EINVAL.
const KVM_MAX_SLOT_PAGES: u64 = (1 << 31) - 1;
/// The largest region (one slot each), in whole MiB.
pub const MAX_REGION_MIB: u64 = (KVM_MAX_SLOT_PAGES * PAGE_SIZE as u64) >> 20;

/// The guest-physical ranges of `size_mib` MiB of RAM, split around the
/// MMIO gap. A range no KVM slot can hold is refused here, before its
/// dirty bitmap (1 bit a page) or its mapping is made.
pub fn ram_ranges(size_mib: u64) -> Result<Vec<(GuestAddress, usize)>, MemoryError> {
    let size = size_mib
        .checked_mul(1 << 20)
        .ok_or(MemoryError::TooLarge(u64::MAX))?;
    let ranges = memory_ranges(size);
    if let Some(&(addr, len)) = ranges
        .iter()
        .find(|r| r.1 / PAGE_SIZE as u64 > KVM_MAX_SLOT_PAGES)
    {
        return Err(MemoryError::RegionTooLarge {
            size_mib,
            region_mib: len >> 20,
            addr: addr.0,
        });
    }
    ranges
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

/// How guest memory is mapped besides where from: a bitmap of device
/// writes or not, and the page size. The page size applies to every
/// region, the hotpluggable one included (see the module's
/// documentation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemOptions {
    pub track_dirty: bool,
    pub huge_pages: HugePages,
}

impl MemOptions {
    pub fn new(track_dirty: bool, huge_pages: HugePages) -> Self {
        MemOptions {
            track_dirty,
            huge_pages,
        }
    }
}

/// Maps anonymous guest memory over `ranges` (from [`guest_ranges`]).
pub fn create_guest_memory(
    ranges: &[(GuestAddress, usize)],
    opts: MemOptions,
) -> Result<GuestMem, MemoryError> {
    build(ranges, Backing::Anonymous, opts)
}

/// Like [`create_guest_memory`], but the memory is one memfd mapped
/// `MAP_SHARED`, each region at its offset in it: a vhost-user backend
/// maps the same pages. Each region keeps a handle on the memfd
/// (`GuestRegionMmap::file_offset`), which is what SET_MEM_TABLE sends.
pub fn create_shared_guest_memory(
    ranges: &[(GuestAddress, usize)],
    opts: MemOptions,
) -> Result<GuestMem, MemoryError> {
    let total: u64 = ranges.iter().map(|r| r.1 as u64).sum();
    let memfd = sealed_memfd("husk-guest-ram", total, opts.huge_pages.is_hugetlbfs())
        .map_err(MemoryError::Memfd)?;
    build(ranges, Backing::Shared(&memfd), opts)
}

/// A new memfd of `size` bytes (of 2 MiB hugetlbfs pages with
/// `hugetlb`), closed on exec, whose size is then sealed: the backend
/// that gets it cannot shrink it under the VMM's mappings (a later access
/// there would be a SIGBUS in this process).
fn sealed_memfd(name: &str, size: u64, hugetlb: bool) -> std::io::Result<File> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let name = std::ffi::CString::new(name).map_err(std::io::Error::other)?;
    let mut flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    if hugetlb {
        flags |= libc::MFD_HUGETLB | libc::MFD_HUGE_2MB;
    }
    // SAFETY: `name` is a valid NUL-terminated string that outlives the
    // call; memfd_create takes no other pointer.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), flags) };
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
    build(ranges, Backing::Anonymous, MemOptions::default())
}

/// Maps `file` `MAP_PRIVATE` over `ranges`, the regions one after the
/// other in the file (the layout of a snapshot's memory file). A file
/// cannot give hugetlbfs pages: such memory is restored through a page
/// server instead.
pub fn from_file(
    file: &File,
    ranges: &[(GuestAddress, usize)],
    opts: MemOptions,
) -> Result<GuestMem, MemoryError> {
    if opts.huge_pages.is_hugetlbfs() {
        return Err(MemoryError::HugetlbFile);
    }
    build(ranges, Backing::Private(file), opts)
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
    opts: MemOptions,
) -> Result<GuestMem, MemoryError> {
    let size_mib = ranges.iter().map(|r| r.1 as u64).sum::<u64>() >> 20;
    let hugetlb = opts.huge_pages.is_hugetlbfs();
    // Hugetlbfs memory is reserved when it is mapped (no MAP_NORESERVE):
    // see the module's documentation.
    let noreserve = if hugetlb { 0 } else { libc::MAP_NORESERVE };
    let page = NonZeroUsize::new(PAGE_SIZE).unwrap_or(NonZeroUsize::MIN);
    let mut regions = Vec::with_capacity(ranges.len());
    let mut offset = 0u64;
    for &(addr, len) in ranges {
        let bitmap = opts.track_dirty.then(|| AtomicBitmap::new(len, page));
        let mut builder = MmapRegionBuilder::new_with_bitmap(len, bitmap)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_hugetlbfs(hugetlb);
        let file_at = |f: &File| {
            f.try_clone()
                .map(|f| FileOffset::new(f, offset))
                .map_err(MemoryError::File)
        };
        builder = match backing {
            Backing::Private(f) => builder
                .with_mmap_flags(libc::MAP_PRIVATE | noreserve)
                .with_file_offset(file_at(f)?),
            Backing::Shared(f) => builder
                .with_mmap_flags(libc::MAP_SHARED | noreserve)
                .with_file_offset(file_at(f)?),
            Backing::Anonymous if hugetlb => builder.with_mmap_flags(
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_HUGETLB | libc::MAP_HUGE_2MB,
            ),
            Backing::Anonymous => builder
                .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE),
        };
        let region = match builder.build() {
            Ok(r) => r,
            Err(err) => {
                // Give back what the regions mapped so far reserved
                // before counting what the host has left.
                drop(regions);
                return Err(map_error(size_mib, hugetlb, err));
            }
        };
        regions.push(GuestRegionMmap::new(region, addr).ok_or(MemoryError::Layout)?);
        offset += len as u64;
    }
    let mem = GuestMem::from_regions(regions).map_err(|_| MemoryError::Layout)?;
    for region in mem.iter() {
        let (ptr, len) = (region.as_ptr(), region.len() as usize);
        // Keep guest RAM out of VMM core dumps. This also gives the mapping
        // its own VMA, so /proc/PID/smaps shows guest pages on their own.
        // SAFETY: the range is exactly one mapping owned by `mem`; madvise
        // with MADV_DONTDUMP changes no memory contents.
        if unsafe { libc::madvise(ptr.cast(), len, libc::MADV_DONTDUMP) } != 0 {
            tracing::debug!(
                "madvise(MADV_DONTDUMP): {}",
                std::io::Error::last_os_error()
            );
        }
        if opts.huge_pages == HugePages::Transparent {
            // SAFETY: as above; MADV_HUGEPAGE only marks the mapping as
            // one the kernel may back with huge pages, which keeps its
            // contents.
            if unsafe { libc::madvise(ptr.cast(), len, libc::MADV_HUGEPAGE) } != 0 {
                return Err(MemoryError::Transparent(std::io::Error::last_os_error()));
            }
        }
    }
    Ok(mem)
}

/// Why mapping `size_mib` MiB failed: for hugetlbfs memory the kernel's
/// ENOMEM means the pool (or a hugetlb cgroup limit) has too few free
/// pages, said with the pool's figures where this process can read them
/// (not in a jail without /sys).
fn map_error(size_mib: u64, hugetlb: bool, err: MmapRegionError) -> MemoryError {
    if let (true, MmapRegionError::Mmap(e)) = (hugetlb, &err) {
        if e.raw_os_error() == Some(libc::ENOMEM) {
            let needed = (size_mib << 20).div_ceil(HugePages::HUGETLB_2M);
            let have = match HugePool::read() {
                Some(pool) if pool.available() >= needed => {
                    format!(
                        "the host's pool has {} (HugePages_Free {}, HugePages_Rsvd {}): \
                         a hugetlb cgroup limit may be what refused them",
                        pool.available(),
                        pool.free,
                        pool.reserved
                    )
                }
                Some(pool) => format!(
                    "the host has {} (HugePages_Free {}, HugePages_Rsvd {})",
                    pool.available(),
                    pool.free,
                    pool.reserved
                ),
                None => format!(
                    "the kernel could not reserve them (the pool's figures in {} cannot be read \
                     here)",
                    HugePool::SYSFS
                ),
            };
            return MemoryError::HugePagesShort {
                size_mib,
                needed,
                have,
            };
        }
    }
    MemoryError::Map { size_mib, err }
}

/// The host's pool of 2 MiB hugetlbfs pages, as
/// `/sys/kernel/mm/hugepages/hugepages-2048kB` counts it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HugePool {
    /// `free_hugepages` (HugePages_Free): not yet faulted in, reserved or not.
    pub free: u64,
    /// `resv_hugepages` (HugePages_Rsvd): promised to mappings already.
    pub reserved: u64,
}

impl HugePool {
    pub const SYSFS: &'static str = "/sys/kernel/mm/hugepages/hugepages-2048kB";

    /// The pool now; None where it cannot be read (no 2 MiB pool, or
    /// no /sys in a jail).
    pub fn read() -> Option<Self> {
        let count = |name: &str| -> Option<u64> {
            std::fs::read_to_string(format!("{}/{name}", Self::SYSFS))
                .ok()?
                .trim()
                .parse()
                .ok()
        };
        Some(HugePool {
            free: count("free_hugepages")?,
            reserved: count("resv_hugepages")?,
        })
    }

    /// Pages a new mapping can still reserve.
    pub fn available(&self) -> u64 {
        self.free.saturating_sub(self.reserved)
    }
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
        let m = create_guest_memory(&ram_ranges(128).unwrap(), MemOptions::default()).unwrap();
        assert_eq!(m.num_regions(), 1);
        assert_eq!(m.iter().next().unwrap().len(), 128 << 20);
        // 4 GiB of address space costs nothing until touched.
        let opts = MemOptions::new(true, HugePages::None);
        let m = create_guest_memory(&ram_ranges(4096).unwrap(), opts).unwrap();
        assert_eq!(m.num_regions(), 2);
        let starts: Vec<u64> = m.iter().map(|r| r.start_addr().0).collect();
        assert_eq!(starts, vec![0, 1 << 32]);
        // Up to what one KVM slot holds above the gap, not past it.
        let low = 3 << 10;
        assert!(ram_ranges(low + MAX_REGION_MIB).is_ok());
        let err = ram_ranges(low + MAX_REGION_MIB + 1).unwrap_err();
        assert!(
            matches!(
                err,
                MemoryError::RegionTooLarge {
                    addr: 0x1_0000_0000,
                    ..
                }
            ),
            "{err}"
        );
        assert!(matches!(
            ram_ranges(u64::MAX),
            Err(MemoryError::TooLarge(_))
        ));
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
        let opts = MemOptions::new(true, HugePages::None);
        let m = create_guest_memory(&ram_ranges(16).unwrap(), opts).unwrap();
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
        let m = from_file(
            &f,
            &[(GuestAddress(0), 2 * PAGE_SIZE)],
            MemOptions::default(),
        )
        .unwrap();
        assert_eq!(m.read_obj::<u8>(GuestAddress(10)).unwrap(), 5);
        m.write_obj(9u8, GuestAddress(10)).unwrap();
        assert_eq!(m.read_obj::<u8>(GuestAddress(10)).unwrap(), 9);
        assert_eq!(std::fs::read(&path).unwrap()[10], 5);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn shared_memory_is_one_memfd_every_region_maps() {
        use std::os::unix::fs::FileExt;
        let m =
            create_shared_guest_memory(&ram_ranges(4096).unwrap(), MemOptions::default()).unwrap();
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

    #[test]
    fn a_hugetlb_pool_too_small_is_refused_with_its_figures() {
        // 1 TiB of 2 MiB pages: no test host has a pool that large, so
        // the reservation fails whatever other tests hold.
        let opts = MemOptions::new(false, HugePages::Hugetlbfs2M);
        for shared in [false, true] {
            let err = if shared {
                create_shared_guest_memory(&ram_ranges(1 << 20).unwrap(), opts)
            } else {
                create_guest_memory(&ram_ranges(1 << 20).unwrap(), opts)
            }
            .unwrap_err();
            let MemoryError::HugePagesShort { needed, .. } = err else {
                panic!("shared {shared}: {err}");
            };
            assert_eq!(needed, 512 * 1024);
            let msg = err.to_string();
            assert!(msg.contains("needs 524288 free 2 MiB huge pages"), "{msg}");
            assert!(msg.contains("HugePages_Free"), "{msg}");
            assert!(msg.contains("/proc/sys/vm/nr_hugepages"), "{msg}");
        }
        let f = File::open("/dev/null").unwrap();
        let r = from_file(&f, &ram_ranges(2).unwrap(), opts);
        assert!(matches!(r, Err(MemoryError::HugetlbFile)));
    }

    #[test]
    fn transparent_memory_is_advised() {
        let opts = MemOptions::new(false, HugePages::Transparent);
        // Shared memory (shmem) takes the advice too; whether the kernel
        // acts on it is /sys/kernel/mm/transparent_hugepage/shmem_enabled.
        create_shared_guest_memory(&ram_ranges(64).unwrap(), opts).unwrap();
        let m = create_guest_memory(&ram_ranges(64).unwrap(), opts).unwrap();
        let start = m.iter().next().unwrap().as_ptr() as u64;
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let flags = smaps
            .lines()
            .skip_while(|l| !l.starts_with(&format!("{start:x}-")))
            .find(|l| l.starts_with("VmFlags:"))
            .expect("the guest memory mapping in smaps");
        assert!(flags.split_whitespace().any(|f| f == "hg"), "{flags}");
    }
}
