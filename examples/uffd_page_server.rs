//! A page server for husk's `Uffd` memory backend (Firecracker's protocol).
//!
//!     uffd_page_server SOCKET MEMFILE
//!
//! Listens on the Unix stream socket SOCKET for one VMM. The VMM sends one
//! message: a JSON array of `GuestRegionUffdMapping` (where each guest
//! memory region is in the VMM and where its contents are in the memory
//! file) with its userfaultfd attached as SCM_RIGHTS ancillary data. From
//! then on every first touch of a guest page stops in the kernel until the
//! page server fills the page: with UFFDIO_COPY from MEMFILE, or with
//! UFFDIO_ZEROPAGE where the file has nothing (past its end) or the balloon
//! gave the page back (a `remove` event). When the VMM closes the
//! connection, the page server prints how many pages it served and exits.
//!
//! A region mapped with 2 MiB hugetlbfs pages (`page_size` 2097152, from
//! `huge_pages: "2M"`) is filled a whole huge page at a time, and with a
//! copy of zeros where a 4 KiB region would get a zero page (hugetlbfs has
//! no UFFDIO_ZEROPAGE).
//!
//! Build it with `cargo build --examples`.

use std::collections::HashSet;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::ExitCode;

use husk::vmm::snapshot::uffd::{GuestRegionUffdMapping, PAGE_SIZE};

/// The hugetlbfs page size a region may be mapped with.
const HUGE_PAGE_SIZE: u64 = 2 << 20;
use userfaultfd::{Error as UffdError, Event, EventBuffer, Uffd};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let [_, socket, memfile] = args.as_slice() else {
        eprintln!("usage: uffd_page_server SOCKET MEMFILE");
        return ExitCode::from(2);
    };
    match run(socket, memfile) {
        Ok(served) => {
            eprintln!("uffd_page_server: the VMM has gone; {served} pages served");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("uffd_page_server: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(socket: &str, memfile: &str) -> Result<u64, String> {
    let file = MemFile::open(memfile)?;
    let listener = UnixListener::bind(socket).map_err(|e| format!("cannot bind {socket}: {e}"))?;
    let (stream, _) = listener
        .accept()
        .map_err(|e| format!("cannot accept on {socket}: {e}"))?;
    // One VMM per page server: nobody else needs to find the socket.
    let _ = std::fs::remove_file(socket);
    let (uffd, regions) = receive(&stream)?;
    eprintln!(
        "uffd_page_server: serving {} regions from {memfile} ({} bytes)",
        regions.len(),
        file.len
    );
    serve(&uffd, &stream, &regions, &file)
}

/// Receives the memory layout and the userfaultfd.
fn receive(mut stream: &UnixStream) -> Result<(Uffd, Vec<GuestRegionUffdMapping>), String> {
    let mut buf = vec![0u8; 4096];
    let (n, fd) = stream
        .recv_with_fd(&mut buf)
        .map_err(|e| format!("cannot receive from the VMM: {e}"))?;
    if n == 0 {
        return Err("the VMM closed the connection without a word".into());
    }
    let fd = fd.ok_or("the VMM sent no userfaultfd")?;
    // SAFETY: the received fd is ours alone; if it is not a userfaultfd,
    // the ioctls on it fail and we report that.
    let uffd = unsafe { Uffd::from_raw_fd(fd.into_raw_fd()) };
    // A stream socket may deliver a long message in parts: read until the
    // JSON is complete.
    let mut body = buf[..n].to_vec();
    let regions: Vec<GuestRegionUffdMapping> = loop {
        match serde_json::from_slice(&body) {
            Ok(regions) => break regions,
            Err(e) if e.is_eof() => {
                let n = stream
                    .read(&mut buf)
                    .map_err(|e| format!("cannot receive from the VMM: {e}"))?;
                if n == 0 {
                    return Err("the VMM closed the connection mid-message".into());
                }
                body.extend_from_slice(&buf[..n]);
            }
            Err(e) => return Err(format!("bad memory layout from the VMM: {e}")),
        }
    };
    for r in &regions {
        let aligned = [r.base_host_virt_addr, r.size, r.offset]
            .iter()
            .all(|x| x % PAGE_SIZE == 0);
        let fits = r.base_host_virt_addr.checked_add(r.size).is_some()
            && r.offset.checked_add(r.size).is_some();
        let page_ok = r.page_size == PAGE_SIZE || r.page_size == HUGE_PAGE_SIZE;
        let huge_aligned = [r.base_host_virt_addr, r.size]
            .iter()
            .all(|x| x % r.page_size.max(1) == 0);
        if !page_ok || !aligned || !huge_aligned || !fits {
            return Err(format!("unsupported guest memory region {r:?}"));
        }
    }
    Ok((uffd, regions))
}

/// Serves page faults until the VMM closes the connection. Returns the
/// number of pages served.
fn serve(
    uffd: &Uffd,
    stream: &UnixStream,
    regions: &[GuestRegionUffdMapping],
    file: &MemFile,
) -> Result<u64, String> {
    let mut events = EventBuffer::new(64);
    // Pages the balloon gave back: their file contents are stale.
    let mut removed = HashSet::new();
    // Faults to retry: UFFDIO_COPY fails with EAGAIN while the VMM's
    // memory map is changing (a `remove` event not yet read or finished).
    let mut pending: Vec<u64> = Vec::new();
    let mut served = 0;
    loop {
        let mut fds = [uffd.as_raw_fd(), stream.as_raw_fd()].map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        });
        let timeout_ms = if pending.is_empty() { -1 } else { 1 };
        // SAFETY: `fds` is a valid array of two pollfd for the call.
        if unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout_ms) } < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("poll: {err}"));
        }

        let hangup = libc::POLLHUP | libc::POLLRDHUP | libc::POLLERR | libc::POLLNVAL;
        if fds[0].revents & hangup != 0 {
            return Err("the userfaultfd reports an error (is it non-blocking?)".into());
        }
        if fds[0].revents & libc::POLLIN != 0
            && !read_events(uffd, regions, &mut events, &mut pending, &mut removed)?
        {
            return Ok(served);
        }

        let mut failed = None;
        pending.retain(|&addr| match fill(uffd, regions, file, &removed, addr) {
            Ok(Fill::Done) => {
                served += 1;
                false
            }
            Ok(Fill::Gone) => false,
            Ok(Fill::Retry) => true,
            Err(e) => {
                failed.get_or_insert(e);
                false
            }
        });
        if let Some(e) = failed {
            return Err(e);
        }

        if fds[1].revents & hangup != 0 {
            return Ok(served);
        }
        if fds[1].revents & libc::POLLIN != 0 {
            // Nothing more is expected from the VMM; an end of file means
            // it has gone.
            let mut scratch = [0u8; 64];
            if matches!((&*stream).read(&mut scratch), Ok(0) | Err(_)) {
                return Ok(served);
            }
        }
    }
}

/// Reads every queued event: faults join `pending`, removed pages join
/// `removed`. Returns false if the userfaultfd has reached its end.
fn read_events(
    uffd: &Uffd,
    regions: &[GuestRegionUffdMapping],
    events: &mut EventBuffer,
    pending: &mut Vec<u64>,
    removed: &mut HashSet<u64>,
) -> Result<bool, String> {
    loop {
        // Non-blocking: an empty batch once the queue is empty.
        let batch = match uffd.read_events(events) {
            Ok(batch) => batch,
            Err(UffdError::ReadEof) => return Ok(false),
            Err(e) => return Err(format!("cannot read the userfaultfd: {e}")),
        };
        let mut count = 0;
        for event in batch {
            count += 1;
            match event.map_err(|e| format!("bad userfaultfd event: {e}"))? {
                Event::Pagefault { addr, .. } => {
                    let addr = addr as u64;
                    // The page holding it, in the region's page size.
                    let page = regions
                        .iter()
                        .find(|r| r.contains(addr))
                        .map_or(PAGE_SIZE, |r| r.page_size);
                    pending.push(addr & !(page - 1));
                }
                Event::Remove { start, end } => {
                    removed.extend((start as u64..end as u64).step_by(PAGE_SIZE as usize))
                }
                // Not asked for when the VMM created the userfaultfd.
                other => eprintln!("uffd_page_server: ignoring {other:?}"),
            }
        }
        if count == 0 {
            return Ok(true);
        }
    }
}

enum Fill {
    /// The page is in place and the faulting thread woken.
    Done,
    /// The page is no longer mapped, or the VMM has gone: nothing to do.
    Gone,
    /// The VMM's memory map is changing: try again shortly.
    Retry,
}

/// Fills the page at `addr` (in the VMM) from the file, or with zeros.
fn fill(
    uffd: &Uffd,
    regions: &[GuestRegionUffdMapping],
    file: &MemFile,
    removed: &HashSet<u64>,
    addr: u64,
) -> Result<Fill, String> {
    let region = regions
        .iter()
        .find(|r| r.contains(addr))
        .ok_or_else(|| format!("page fault at {addr:#x}, outside guest memory"))?;
    let file_offset = region.offset + (addr - region.base_host_virt_addr);
    let dst = addr as *mut libc::c_void;
    let len = region.page_size as usize;
    let huge = region.page_size != PAGE_SIZE;
    let result = match file.page(file_offset, len) {
        Some(src) if !removed.contains(&addr) => {
            // SAFETY: `src` is `len` readable bytes (our mapping of the
            // file, or a copy of its tail); `dst` is a page the kernel
            // checks belongs to memory registered with this userfaultfd in
            // the VMM.
            unsafe { uffd.copy(src.as_ptr(), dst, len, true) }.map(|_| ())
        }
        // Hugetlbfs has no zero page: copy zeros.
        // SAFETY: as above, from a buffer of `len` zeros.
        _ if huge => unsafe { uffd.copy(file.zeros().cast(), dst, len, true) }.map(|_| ()),
        // SAFETY: as above; the kernel checks `dst`.
        _ => unsafe { uffd.zeropage(dst, len, true) }.map(|_| ()),
    };
    let errno = match result {
        Ok(()) => return Ok(Fill::Done),
        // The crate reports EAGAIN from UFFDIO_COPY as a partial copy.
        Err(UffdError::PartiallyCopied(_)) => return Ok(Fill::Retry),
        Err(UffdError::CopyFailed(errno) | UffdError::ZeropageFailed(errno)) => errno as i32,
        Err(e) => return Err(format!("cannot fill the page at {addr:#x}: {e}")),
    };
    match errno {
        libc::EAGAIN => Ok(Fill::Retry),
        // Another fault on the same page was served first: make sure
        // nobody still waits on it.
        libc::EEXIST => uffd
            .wake(dst, len)
            .map(|()| Fill::Done)
            .map_err(|e| format!("cannot wake the page at {addr:#x}: {e}")),
        // The page was unmapped, or the VMM's memory has gone with it.
        libc::ENOENT | libc::ESRCH => Ok(Fill::Gone),
        _ => Err(format!(
            "cannot fill the page at {addr:#x}: {}",
            std::io::Error::from_raw_os_error(errno)
        )),
    }
}

/// The memory file, mapped read-only.
struct MemFile {
    ptr: *const u8,
    len: u64,
    /// Zeros, for huge pages with nothing in the file.
    zeros: std::cell::OnceCell<Vec<u8>>,
}

/// Where a page's contents are: in the file's mapping, or copied out of
/// its last page (the mapping past the end of the file's last page
/// would fault this process).
enum Src {
    Mapped(*const libc::c_void),
    Copied(Vec<u8>),
}

impl Src {
    fn as_ptr(&self) -> *const libc::c_void {
        match self {
            Src::Mapped(p) => *p,
            Src::Copied(v) => v.as_ptr().cast(),
        }
    }
}

impl MemFile {
    fn open(path: &str) -> Result<MemFile, String> {
        let file = File::open(path).map_err(|e| format!("cannot open {path}: {e}"))?;
        let len = file
            .metadata()
            .map_err(|e| format!("cannot read {path}: {e}"))?
            .len();
        if len == 0 {
            // Nothing to map: every page is a zero page.
            return Ok(MemFile {
                ptr: std::ptr::null(),
                len,
                zeros: Default::default(),
            });
        }
        let map_len = usize::try_from(len).map_err(|_| format!("{path} is too large"))?;
        // SAFETY: a new read-only private mapping of a file we opened; the
        // kernel chooses the address, and the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            let err = std::io::Error::last_os_error();
            return Err(format!("cannot map {path}: {err}"));
        }
        Ok(MemFile {
            ptr: ptr as *const u8,
            len,
            zeros: Default::default(),
        })
    }

    /// The `len` bytes at `offset` in the file, if the file has any of
    /// them; zeros past its end.
    fn page(&self, offset: u64, len: usize) -> Option<Src> {
        if offset >= self.len {
            return None;
        }
        // The mapping reads zeros up to the end of the file's last 4 KiB
        // page, and faults past it.
        let mapped = self.len.div_ceil(PAGE_SIZE) * PAGE_SIZE;
        if offset + len as u64 <= mapped {
            // SAFETY: `offset` is inside the mapping, `len` bytes with it.
            return Some(Src::Mapped(unsafe { self.ptr.add(offset as usize) }.cast()));
        }
        let have = (self.len - offset) as usize;
        let mut buf = vec![0u8; len];
        // SAFETY: the `have` bytes from `offset` are inside the mapping.
        let from = unsafe { std::slice::from_raw_parts(self.ptr.add(offset as usize), have) };
        buf[..have].copy_from_slice(from);
        Some(Src::Copied(buf))
    }

    /// A huge page of zeros.
    fn zeros(&self) -> *const u8 {
        self.zeros
            .get_or_init(|| vec![0u8; HUGE_PAGE_SIZE as usize])
            .as_ptr()
    }
}

impl Drop for MemFile {
    fn drop(&mut self) {
        if !self.ptr.is_null() {
            // SAFETY: unmaps exactly the mapping made in `open`.
            unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len as usize) };
        }
    }
}
