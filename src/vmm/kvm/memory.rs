//! Guest memory: anonymous private mappings with MAP_NORESERVE, so pages
//! cost nothing until the guest touches them.

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::vmm::arch::x86_64::layout::memory_ranges;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot map {size_mib} MiB of guest memory: {err}")]
    Map {
        size_mib: u64,
        err: vm_memory::mmap::FromRangesError,
    },
    #[error("guest memory of {0} bytes does not fit this host's address space")]
    TooLarge(u64),
}

/// Maps `size_mib` MiB of guest RAM, split around the MMIO gap.
pub fn create_guest_memory(size_mib: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let size = size_mib
        .checked_mul(1 << 20)
        .ok_or(MemoryError::TooLarge(u64::MAX))?;
    let ranges: Vec<(GuestAddress, usize)> = memory_ranges(size)
        .into_iter()
        .map(|(a, len)| usize::try_from(len).map(|l| (a, l)))
        .collect::<Result<_, _>>()
        .map_err(|_| MemoryError::TooLarge(size))?;
    let mem =
        GuestMemoryMmap::from_ranges(&ranges).map_err(|err| MemoryError::Map { size_mib, err })?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_follow_the_layout() {
        let m = create_guest_memory(128).unwrap();
        assert_eq!(m.num_regions(), 1);
        assert_eq!(m.iter().next().unwrap().len(), 128 << 20);
        // 4 GiB of address space costs nothing until touched.
        let m = create_guest_memory(4096).unwrap();
        assert_eq!(m.num_regions(), 2);
        let starts: Vec<u64> = m.iter().map(|r| r.start_addr().0).collect();
        assert_eq!(starts, vec![0, 1 << 32]);
    }
}
