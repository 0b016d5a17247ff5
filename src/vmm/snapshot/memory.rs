//! Guest memory files: writing a full or diff snapshot's memory, and
//! merging a diff onto its base (`husk snapshot rebase`).
//!
//! A memory file holds the guest's regions one after the other, at the
//! same offsets whatever its kind, and is sparse: a page never written is
//! a hole, and reads as zeros.
//! - A **full** file holds every page with data: the pages this process
//!   has touched (present or swapped, from `/proc/self/pagemap`, without
//!   reading a single guest page to find out) plus, after a restore, the
//!   data ranges of the file the memory was mapped from.
//! - A **diff** file holds only the pages written since the last
//!   snapshot: KVM's dirty log (the guest's writes) together with the
//!   bitmap of the pages the VMM's devices wrote.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use vm_memory::{
    Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, GuestRegionMmap, WriteVolatile,
};

use crate::vmm::kvm::memory::{GuestMem, PAGE_SIZE};

#[derive(Debug, thiserror::Error)]
pub enum MemoryFileError {
    #[error("cannot write memory file {path}: {err}")]
    Write { path: String, err: std::io::Error },
    #[error("cannot read {what}: {err}")]
    Read { what: String, err: std::io::Error },
    #[error("cannot read guest memory at {0:#x}")]
    Guest(u64),
    #[error("{diff} is {diff_len} bytes but its base {base} is {base_len}: not the same guest")]
    SizeMismatch {
        diff: String,
        diff_len: u64,
        base: String,
        base_len: u64,
    },
}

type Result<T> = std::result::Result<T, MemoryFileError>;
type Region = GuestRegionMmap<Option<vm_memory::bitmap::AtomicBitmap>>;

/// What a memory file holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Written {
    /// Pages written into the file.
    pub pages: u64,
    /// Its apparent size: the guest's memory size.
    pub size: u64,
    /// What it occupies on disk.
    pub allocated: u64,
}

fn show(p: &Path) -> String {
    crate::text::echo_path(p)
}

/// One bit per page of a region: which pages go into the file.
struct PageSet(Vec<u64>);

impl PageSet {
    fn empty(pages: usize) -> Self {
        PageSet(vec![0; pages.div_ceil(64)])
    }

    fn full(pages: usize) -> Self {
        let mut set = PageSet(vec![u64::MAX; pages.div_ceil(64)]);
        if !pages.is_multiple_of(64) {
            if let Some(last) = set.0.last_mut() {
                *last = (1u64 << (pages % 64)) - 1;
            }
        }
        set
    }

    fn set(&mut self, page: usize) {
        if let Some(w) = self.0.get_mut(page / 64) {
            *w |= 1 << (page % 64);
        }
    }

    fn get(&self, page: usize) -> bool {
        self.0
            .get(page / 64)
            .is_some_and(|w| w & (1 << (page % 64)) != 0)
    }

    fn or(&mut self, other: &[u64]) {
        for (w, o) in self.0.iter_mut().zip(other) {
            *w |= o;
        }
    }

    /// Runs of consecutive set pages, as (first page, count).
    fn runs(&self, pages: usize) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        let mut page = 0;
        while page < pages {
            if !self.get(page) {
                // Skip whole empty words quickly.
                if page % 64 == 0 && self.0.get(page / 64) == Some(&0) {
                    page += 64;
                } else {
                    page += 1;
                }
                continue;
            }
            let start = page;
            while page < pages && self.get(page) {
                page += 1;
            }
            out.push((start, page - start));
        }
        out
    }
}

/// Pages of `region` this process has touched: present in its page
/// tables or swapped out (bits 63 and 62 of each pagemap entry).
fn touched_pages(region: &Region) -> Result<PageSet> {
    let pages = region.len() as usize / PAGE_SIZE;
    let mut set = PageSet::empty(pages);
    let read_err = |err| MemoryFileError::Read {
        what: "/proc/self/pagemap".into(),
        err,
    };
    let pagemap = File::open("/proc/self/pagemap").map_err(read_err)?;
    let first = region.as_ptr() as u64 / PAGE_SIZE as u64;
    const CHUNK: usize = 64 * 1024;
    let mut buf = vec![0u8; CHUNK * 8];
    let mut page = 0;
    while page < pages {
        let n = CHUNK.min(pages - page);
        let bytes = &mut buf[..n * 8];
        pagemap
            .read_exact_at(bytes, (first + page as u64) * 8)
            .map_err(read_err)?;
        for (i, e) in bytes.chunks_exact(8).enumerate() {
            let mut w = [0u8; 8];
            w.copy_from_slice(e);
            if u64::from_le_bytes(w) & (3 << 62) != 0 {
                set.set(page + i);
            }
        }
        page += n;
    }
    Ok(set)
}

/// Pages of `region` backed by data in the file it maps (after a
/// restore): found with SEEK_DATA / SEEK_HOLE, so holes are skipped.
fn file_data_pages(region: &Region, set: &mut PageSet) -> Result<()> {
    let Some(fo) = region.file_offset() else {
        return Ok(());
    };
    let (start, end) = (fo.start(), fo.start() + region.len());
    let fd = std::os::fd::AsRawFd::as_raw_fd(fo.file());
    let mut at = start;
    while at < end {
        // SAFETY: lseek on a file descriptor this process owns, with no
        // memory involved.
        let data = unsafe { libc::lseek(fd, at as libc::off_t, libc::SEEK_DATA) };
        if data < 0 || data as u64 >= end {
            break; // ENXIO: no data after `at`.
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        let hole = if hole < 0 {
            end
        } else {
            (hole as u64).min(end)
        };
        let first = (data as u64 - start) as usize / PAGE_SIZE;
        let last = (hole - start).div_ceil(PAGE_SIZE as u64) as usize;
        for p in first..last {
            set.set(p);
        }
        at = hole;
    }
    Ok(())
}

/// Writes the pages in `sets` (one per region) of `mem` to a new file at
/// `path` (the caller writes aside and renames). With `skip_zero`, pages
/// that read as all zeros stay holes.
fn write_pages(mem: &GuestMem, sets: &[PageSet], path: &Path, skip_zero: bool) -> Result<Written> {
    let werr = |err| MemoryFileError::Write {
        path: show(path),
        err,
    };
    let mut file = File::create(path).map_err(werr)?;
    let size: u64 = mem.iter().map(|r| r.len()).sum();
    file.set_len(size).map_err(werr)?;
    let mut offset = 0u64;
    let mut pages = 0u64;
    let mut page = vec![0u8; PAGE_SIZE];
    for (region, set) in mem.iter().zip(sets) {
        let count = region.len() as usize / PAGE_SIZE;
        for (first, n) in set.runs(count) {
            let at = (first * PAGE_SIZE) as u64;
            let addr = region.start_addr().0 + at;
            if skip_zero {
                for i in 0..n as u64 {
                    let a = addr + i * PAGE_SIZE as u64;
                    mem.read_slice(&mut page, GuestAddress(a))
                        .map_err(|_| MemoryFileError::Guest(a))?;
                    if page.iter().any(|b| *b != 0) {
                        file.write_all_at(&page, offset + at + i * PAGE_SIZE as u64)
                            .map_err(werr)?;
                        pages += 1;
                    }
                }
                continue;
            }
            let len = n * PAGE_SIZE;
            let slice = mem
                .get_slice(GuestAddress(addr), len)
                .map_err(|_| MemoryFileError::Guest(addr))?;
            file.seek(SeekFrom::Start(offset + at)).map_err(werr)?;
            file.write_all_volatile(&slice)
                .map_err(|_| MemoryFileError::Guest(addr))?;
            pages += n as u64;
        }
        offset += region.len();
    }
    file.sync_all().map_err(werr)?;
    let allocated = file.metadata().map_err(werr)?.blocks() * 512;
    Ok(Written {
        pages,
        size,
        allocated,
    })
}

/// How a full snapshot finds the pages with data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Anonymous memory, or a mapped memory file: the pages this process
    /// touched plus the file's data ranges.
    Local,
    /// Memory a page server fills on demand: a page not yet served is
    /// not zero, just elsewhere. Every page is read (and so served), and
    /// only the ones that are all zeros stay holes.
    Remote,
}

/// A full snapshot of `mem` into `path`.
pub fn write_full(mem: &GuestMem, path: &Path, source: Source) -> Result<Written> {
    let mut sets = Vec::with_capacity(mem.num_regions());
    for region in mem.iter() {
        let pages = region.len() as usize / PAGE_SIZE;
        let set = match source {
            Source::Local => {
                let mut set = touched_pages(region)?;
                file_data_pages(region, &mut set)?;
                set
            }
            Source::Remote => PageSet::full(pages),
        };
        sets.push(set);
    }
    write_pages(mem, &sets, path, source == Source::Remote)
}

/// The pages written since the last snapshot, one bitmap per region:
/// `kvm_dirty` (KVM's dirty log) together with the regions' bitmaps of
/// device writes, which this clears. A snapshot that then fails must
/// hand them to the next one ([`write_diff`]'s `dirty`).
pub fn take_dirty(mem: &GuestMem, kvm_dirty: &[Vec<u64>]) -> Vec<Vec<u64>> {
    mem.iter()
        .enumerate()
        .map(|(i, region)| {
            let mut set = PageSet::empty(region.len() as usize / PAGE_SIZE);
            if let Some(log) = kvm_dirty.get(i) {
                set.or(log);
            }
            if let Some(bitmap) = device_bitmap(region) {
                set.or(&bitmap.get_and_reset());
            }
            set.0
        })
        .collect()
}

/// A diff snapshot: the pages in `dirty` (from [`take_dirty`]).
pub fn write_diff(mem: &GuestMem, dirty: &[Vec<u64>], path: &Path) -> Result<Written> {
    let sets: Vec<PageSet> = mem
        .iter()
        .enumerate()
        .map(|(i, region)| {
            let mut set = PageSet::empty(region.len() as usize / PAGE_SIZE);
            if let Some(d) = dirty.get(i) {
                set.or(d);
            }
            set
        })
        .collect();
    write_pages(mem, &sets, path, false)
}

/// The bitmap of pages the VMM's devices wrote in `region`, when dirty
/// pages are tracked.
fn device_bitmap(region: &Region) -> Option<&vm_memory::bitmap::AtomicBitmap> {
    vm_memory::mmap::MmapRegion::bitmap(region).as_ref()
}

/// Forgets the pages devices wrote so far (after a full snapshot, the
/// next diff starts from it).
pub fn clear_device_dirty(mem: &GuestMem) {
    for region in mem.iter() {
        if let Some(bitmap) = device_bitmap(region) {
            bitmap.reset();
        }
    }
}

/// Opens an existing regular file for writing without blocking on a FIFO
/// or a device, and refuses anything else.
fn open_regular_for_writing(path: &Path) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let werr = |err| MemoryFileError::Write {
        path: show(path),
        err,
    };
    let f = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(werr)?;
    if !f.metadata().map_err(werr)?.is_file() {
        return Err(werr(std::io::Error::other("not a regular file")));
    }
    Ok(f)
}

/// Copies every data range of the diff memory file onto `base`, which
/// then holds the memory as it was when the diff was taken. Returns the
/// bytes copied.
pub fn rebase(diff: &Path, base: &Path) -> Result<u64> {
    let rerr = |p: &Path| {
        let what = show(p);
        move |err| MemoryFileError::Read { what, err }
    };
    let d = crate::vmm::config::open_regular(diff).map_err(|e| MemoryFileError::Read {
        what: show(diff),
        err: std::io::Error::other(e.to_string()),
    })?;
    let b = open_regular_for_writing(base)?;
    let (dl, bl) = (
        d.metadata().map_err(rerr(diff))?.len(),
        b.metadata().map_err(rerr(base))?.len(),
    );
    if dl != bl {
        return Err(MemoryFileError::SizeMismatch {
            diff: show(diff),
            diff_len: dl,
            base: show(base),
            base_len: bl,
        });
    }
    let fd = std::os::fd::AsRawFd::as_raw_fd(&d);
    let mut buf = vec![0u8; 1 << 20];
    let (mut at, mut copied) = (0u64, 0u64);
    while at < dl {
        // SAFETY: lseek on a descriptor this function owns.
        let data = unsafe { libc::lseek(fd, at as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            break;
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        let hole = if hole < 0 { dl } else { hole as u64 };
        let mut pos = data as u64;
        while pos < hole {
            let n = buf.len().min((hole - pos) as usize);
            d.read_exact_at(&mut buf[..n], pos).map_err(rerr(diff))?;
            b.write_all_at(&buf[..n], pos)
                .map_err(|err| MemoryFileError::Write {
                    path: show(base),
                    err,
                })?;
            pos += n as u64;
            copied += n as u64;
        }
        at = hole;
    }
    b.sync_all().map_err(|err| MemoryFileError::Write {
        path: show(base),
        err,
    })?;
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::kvm::memory::{create_guest_memory, from_file, ram_ranges, MemOptions};

    fn tmp(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("husk-memfile-{}-{name}", std::process::id()))
    }

    #[test]
    fn a_full_file_holds_touched_pages_and_holes_elsewhere() {
        let mem = create_guest_memory(&ram_ranges(16).unwrap(), MemOptions::default()).unwrap();
        for page in [0u64, 5, 6, 1000] {
            mem.write_obj(page as u8 + 1, GuestAddress(page * PAGE_SIZE as u64))
                .unwrap();
        }
        let path = tmp("full");
        let w = write_full(&mem, &path, Source::Local).unwrap();
        assert_eq!(w.size, 16 << 20);
        assert_eq!(w.pages, 4);
        assert!(w.allocated < 1 << 20, "{w:?}");
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes[5 * PAGE_SIZE], 6);
        assert_eq!(bytes[1000 * PAGE_SIZE], 233);

        // Restored from it, then written again: the file's data and the
        // pages touched since are both kept.
        let f = File::open(&path).unwrap();
        let restored = from_file(&f, &ram_ranges(16).unwrap(), MemOptions::default()).unwrap();
        restored
            .write_obj(9u8, GuestAddress(7 * PAGE_SIZE as u64))
            .unwrap();
        // (Written aside, as create does: `path` is mapped.)
        let aside = tmp("full-again");
        let again = write_full(&restored, &aside, Source::Local).unwrap();
        std::fs::rename(&aside, &path).unwrap();
        assert_eq!(again.pages, 5);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes[1000 * PAGE_SIZE], 233);
        assert_eq!(bytes[7 * PAGE_SIZE], 9);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn a_diff_holds_dirty_pages_and_rebases_onto_its_base() {
        let opts = MemOptions::new(true, Default::default());
        let mem = create_guest_memory(&ram_ranges(16).unwrap(), opts).unwrap();
        mem.write_obj(1u8, GuestAddress(0)).unwrap();
        let base = tmp("base");
        write_full(&mem, &base, Source::Local).unwrap();
        clear_device_dirty(&mem);
        // A device writes page 3; KVM says the guest wrote page 9.
        mem.write_obj(3u8, GuestAddress(3 * PAGE_SIZE as u64))
            .unwrap();
        let mut guest = vec![vec![0u64; (16 << 20) / PAGE_SIZE / 64]];
        guest[0][0] = 1 << 9;
        mem.write_obj(0u8, GuestAddress(9 * PAGE_SIZE as u64))
            .unwrap();
        let diff = tmp("diff");
        let w = write_diff(&mem, &take_dirty(&mem, &guest), &diff).unwrap();
        assert_eq!(w.pages, 2);
        // The bitmap was cleared: a second diff is empty.
        let w2 = write_diff(&mem, &take_dirty(&mem, &[]), &tmp("diff2")).unwrap();
        assert_eq!(w2.pages, 0);
        let copied = rebase(&diff, &base).unwrap();
        assert!(copied >= 2 * PAGE_SIZE as u64);
        let bytes = std::fs::read(&base).unwrap();
        assert_eq!((bytes[0], bytes[3 * PAGE_SIZE]), (1, 3));
        // Remote memory: every page is read, only non-zero ones written.
        let remote = tmp("remote");
        let w3 = write_full(&mem, &remote, Source::Remote).unwrap();
        assert_eq!(w3.pages, 2, "{w3:?}");
        let _ = std::fs::remove_file(remote);
        let err = rebase(&diff, Path::new("/proc/self/status")).unwrap_err();
        assert!(
            err.to_string().contains("not the same guest") || err.to_string().contains("cannot")
        );
        for p in [base, diff, tmp("diff2")] {
            let _ = std::fs::remove_file(p);
        }
    }
}
