//! Guest memory served by an external page server over userfaultfd, in
//! Firecracker's protocol.
//!
//! On a restore with the `Uffd` memory backend the guest memory is
//! anonymous private memory with nothing in it. [`attach`] registers every
//! region with a new userfaultfd (missing-page mode), connects to the page
//! server's Unix stream socket and sends it one message: a JSON array of
//! [`GuestRegionUffdMapping`], with the userfaultfd attached as `SCM_RIGHTS`
//! ancillary data. From then on the page server resolves every first touch
//! of a guest page (by a vCPU, by KVM or by a device) with `UFFDIO_COPY` or
//! `UFFDIO_ZEROPAGE`, and learns of pages the balloon gives back through
//! `remove` events.
//!
//! Each mapping names the page size the region is mapped with: 4 KiB, or
//! 2 MiB for hugetlbfs memory (`huge_pages: "2M"`), which the page server
//! must fill a whole huge page at a time (UFFDIO_COPY of 2 MiB; hugetlbfs
//! has no UFFDIO_ZEROPAGE).
//!
//! The page server holds its own copy of the userfaultfd, so closing ours
//! is not something it can see. The connection therefore stays open for
//! the life of the [`UffdBackend`]: when the VMM drops the backend, or
//! exits, the page server sees the socket hang up and can exit.
//! `examples/uffd_page_server.rs` is a small page server.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use userfaultfd::{FeatureFlags, Uffd, UffdBuilder};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// The base page size of guest memory served through userfaultfd.
pub const PAGE_SIZE: u64 = crate::vmm::kvm::memory::PAGE_SIZE as u64;

/// One guest memory region as the page server sees it: where it is in the
/// VMM's address space and where its contents are in the memory file.
/// Same fields and meaning as Firecracker's `GuestRegionUffdMapping`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestRegionUffdMapping {
    /// Start of the region in the VMM's address space.
    pub base_host_virt_addr: u64,
    /// Length of the region in bytes.
    pub size: u64,
    /// Offset of the region's contents in the memory file. The regions are
    /// laid out one after the other, in order.
    pub offset: u64,
    /// Page size of the region in bytes.
    pub page_size: u64,
    /// The same page size in KiB; deprecated in Firecracker, still sent.
    pub page_size_kib: u64,
}

impl GuestRegionUffdMapping {
    /// Whether `addr` (in the VMM's address space) is in this region.
    pub fn contains(&self, addr: u64) -> bool {
        addr >= self.base_host_virt_addr && addr - self.base_host_virt_addr < self.size
    }
}

/// Why guest memory cannot be handed to a page server.
#[derive(Debug, thiserror::Error)]
pub enum UffdError {
    #[error(
        "guest memory region at {addr:#x} ({len:#x} bytes) is empty or not aligned to its \
         {page_size:#x}-byte pages"
    )]
    BadRegion { addr: u64, len: u64, page_size: u64 },
    #[error("userfaultfd is unavailable: {0}")]
    Create(std::io::Error),
    #[error("cannot register guest memory at {addr:#x} ({len:#x} bytes) with userfaultfd: {err}")]
    Register {
        addr: u64,
        len: u64,
        err: std::io::Error,
    },
    #[error("cannot connect to the page server at {}: {err}", path.display())]
    Connect { path: PathBuf, err: std::io::Error },
    #[error("cannot send guest memory to the page server at {}: {err}", path.display())]
    Send { path: PathBuf, err: std::io::Error },
}

/// Guest memory handed to a page server. Keep it for the life of the VM:
/// dropping it closes the userfaultfd and the connection, which tells the
/// page server to stop.
#[derive(Debug)]
pub struct UffdBackend {
    uffd: Uffd,
    /// Open for as long as the page server must serve this VM.
    _stream: UnixStream,
    mappings: Vec<GuestRegionUffdMapping>,
}

impl UffdBackend {
    /// The userfaultfd the guest memory is registered with.
    pub fn uffd(&self) -> &Uffd {
        &self.uffd
    }

    /// What was sent to the page server.
    pub fn mappings(&self) -> &[GuestRegionUffdMapping] {
        &self.mappings
    }
}

/// Registers the guest memory `regions` (host address, length; in memory
/// file order), mapped with pages of `page_size` bytes, with a new
/// userfaultfd and hands it to the page server listening on `socket`.
pub fn attach(
    regions: &[(u64, u64)],
    page_size: u64,
    socket: &Path,
) -> Result<UffdBackend, UffdError> {
    let mappings = mappings(regions, page_size)?;
    let uffd = create()?;
    for m in &mappings {
        let (addr, len) = (m.base_host_virt_addr, m.size);
        let reg_err = |err| UffdError::Register { addr, len, err };
        let len_usize = usize::try_from(len).map_err(|_| reg_err(einval()))?;
        uffd.register(addr as *mut libc::c_void, len_usize)
            .map_err(|e| reg_err(io_error(e)))?;
    }

    let connect_err = |err| UffdError::Connect {
        path: socket.to_path_buf(),
        err,
    };
    let send_err = |err| UffdError::Send {
        path: socket.to_path_buf(),
        err,
    };
    let mut stream = UnixStream::connect(socket).map_err(connect_err)?;
    // Serialising plain integers cannot fail.
    let body = serde_json::to_vec(&mappings).unwrap_or_default();
    let sent = stream
        .send_with_fd(body.as_slice(), uffd.as_raw_fd())
        .map_err(|e| send_err(e.into()))?;
    // A stream socket may take less than all of it; the fd went with the
    // first byte.
    stream.write_all(&body[sent..]).map_err(send_err)?;
    tracing::info!(
        socket = %socket.display(),
        regions = mappings.len(),
        "guest memory handed to the page server"
    );
    Ok(UffdBackend {
        uffd,
        _stream: stream,
        mappings,
    })
}

/// The mappings of `regions`, laid out one after the other in the file.
fn mappings(
    regions: &[(u64, u64)],
    page_size: u64,
) -> Result<Vec<GuestRegionUffdMapping>, UffdError> {
    let mut offset = 0u64;
    regions
        .iter()
        .map(|&(addr, len)| {
            let bad = || UffdError::BadRegion {
                addr,
                len,
                page_size,
            };
            let aligned = |x: u64| x.is_multiple_of(page_size);
            if len == 0 || !page_size.is_power_of_two() || page_size < PAGE_SIZE {
                return Err(bad());
            }
            if !aligned(addr) || !aligned(len) {
                return Err(bad());
            }
            addr.checked_add(len).ok_or_else(bad)?;
            let m = GuestRegionUffdMapping {
                base_host_virt_addr: addr,
                size: len,
                offset,
                page_size,
                page_size_kib: page_size / 1024,
            };
            offset = offset.checked_add(len).ok_or_else(bad)?;
            Ok(m)
        })
        .collect()
}

/// A userfaultfd that also reports kernel-mode faults, because KVM and the
/// devices touch guest memory from the kernel too, and that reports pages
/// the balloon removes when the kernel can.
fn create() -> Result<Uffd, UffdError> {
    let build = |features| {
        UffdBuilder::new()
            .close_on_exec(true)
            .non_blocking(true)
            .user_mode_only(false)
            .require_features(features)
            .create()
    };
    build(FeatureFlags::EVENT_REMOVE)
        .or_else(|_| build(FeatureFlags::empty()))
        .map_err(|e| UffdError::Create(io_error(e)))
}

/// The crate's errors print no errno; these do.
fn io_error(e: userfaultfd::Error) -> std::io::Error {
    match e {
        userfaultfd::Error::SystemError(errno) => std::io::Error::from(errno),
        userfaultfd::Error::OpenDevUserfaultfd(err) => err,
        other => std::io::Error::other(other.to_string()),
    }
}

fn einval() -> std::io::Error {
    std::io::Error::from_raw_os_error(libc::EINVAL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mappings_lay_regions_out_one_after_the_other() {
        let m = mappings(&[(0x10000, 0x3000), (0x40000, 0x2000)], PAGE_SIZE).unwrap();
        assert_eq!(m[0].offset, 0);
        assert_eq!(m[1].offset, 0x3000);
        assert_eq!(m[1].base_host_virt_addr, 0x40000);
        assert!(m[1].contains(0x41fff) && !m[1].contains(0x42000));
    }

    #[test]
    fn mappings_refuse_unaligned_or_empty_regions() {
        for r in [(0x10001, 0x1000), (0x10000, 0x1001), (0x10000, 0)] {
            assert!(matches!(
                mappings(&[r], PAGE_SIZE),
                Err(UffdError::BadRegion { .. })
            ));
        }
        let wraps = (u64::MAX - 0xfff, 0x2000);
        assert!(matches!(
            mappings(&[wraps], PAGE_SIZE),
            Err(UffdError::BadRegion { .. })
        ));
        // Huge pages: regions aligned to 2 MiB, whole 2 MiB pages.
        let huge = 2 << 20;
        assert!(mappings(&[(0x20_0000, 0x40_0000)], huge).is_ok());
        for r in [(0x10_0000, 0x40_0000), (0x20_0000, 0x30_0000)] {
            assert!(matches!(
                mappings(&[r], huge),
                Err(UffdError::BadRegion { .. })
            ));
        }
        assert!(mappings(&[(0x20_0000, 0x40_0000)], 3 << 20).is_err());
    }

    #[test]
    fn mapping_json_matches_firecracker() {
        let m = mappings(&[(0x7000_0000, 0x2000)], PAGE_SIZE).unwrap();
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(
            json,
            r#"[{"base_host_virt_addr":1879048192,"size":8192,"offset":0,"page_size":4096,"page_size_kib":4}]"#
        );
        let m = mappings(&[(0x7000_0000, 0x40_0000)], 2 << 20).unwrap();
        let json = serde_json::to_string(&m).unwrap();
        assert!(
            json.ends_with(r#""page_size":2097152,"page_size_kib":2048}]"#),
            "{json}"
        );
    }
}
