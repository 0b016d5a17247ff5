//! The userfaultfd memory backend end to end, without KVM: this process
//! plays the VMM, handing two regions of its own memory to the example page
//! server (`examples/uffd_page_server.rs`), which fills them from a memory
//! file.

mod common;

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, RecvTimeoutError};
use std::time::{Duration, Instant};

use common::{skip, TempDir, TIMEOUT};
use husk::vmm::snapshot::uffd::{attach, UffdBackend, UffdError};

const PAGE: usize = 4096;

/// The memory file: page `i` is filled with byte `i + 1` (so no page of
/// the file reads as a zero page), and the file ends half way through its
/// last page.
const FILE_PAGES: usize = 5;
const FILE_LEN: usize = FILE_PAGES * PAGE - PAGE / 2;

fn file_byte(offset: usize) -> u8 {
    if offset < FILE_LEN {
        (offset / PAGE + 1) as u8
    } else {
        0
    }
}

/// The example page server, built by `cargo test` next to this test's
/// binary: target/<triple>/debug/deps/uffd-<hash> and
/// target/<triple>/debug/examples/uffd_page_server.
fn server_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|debug| debug.join("examples").join("uffd_page_server"));
    match bin {
        Some(bin) if bin.is_file() => bin,
        _ => panic!(
            "the example page server is not built next to {}; run `cargo test` without \
             target filters, or `cargo build --examples` first",
            exe.display()
        ),
    }
}

/// The page server process, killed if the test ends before it exits.
struct Server(Child);

impl Server {
    /// Starts the page server and waits until it listens on `socket`.
    fn start(socket: &Path, memfile: &Path) -> Server {
        let child = Command::new(server_bin())
            .arg(socket)
            .arg(memfile)
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start the page server");
        let mut server = Server(child);
        let start = Instant::now();
        while !socket.exists() {
            if let Some(status) = server.0.try_wait().unwrap() {
                panic!("the page server exited ({status}): {}", server.stderr());
            }
            assert!(start.elapsed() < TIMEOUT, "the page server never listened");
            std::thread::sleep(Duration::from_millis(10));
        }
        server
    }

    fn wait(&mut self) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            assert!(
                start.elapsed() < TIMEOUT,
                "the page server did not exit when the VMM went"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// What the page server printed (after it has exited).
    fn stderr(&mut self) -> String {
        let mut out = String::new();
        if let Some(mut stderr) = self.0.stderr.take() {
            let _ = stderr.read_to_string(&mut out);
        }
        out
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Anonymous private memory, as the VMM maps guest memory for a restore.
/// Never unmapped: a reader stuck on a page nobody serves must not then
/// fault on unmapped memory.
#[derive(Clone, Copy)]
struct Region {
    addr: usize,
    len: usize,
}

impl Region {
    fn new(pages: usize) -> Region {
        let len = pages * PAGE;
        // SAFETY: a new anonymous mapping at an address the kernel chooses;
        // the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED, "mmap failed");
        Region {
            addr: ptr as usize,
            len,
        }
    }

    fn page(&self, i: usize) -> *mut u8 {
        assert!(i * PAGE < self.len);
        (self.addr + i * PAGE) as *mut u8
    }

    /// Copies page `i` out (a user-mode read fault if it is missing).
    fn read(&self, i: usize) -> Vec<u8> {
        let mut out = vec![0u8; PAGE];
        // SAFETY: the page is inside this live mapping.
        unsafe { std::ptr::copy_nonoverlapping(self.page(i), out.as_mut_ptr(), PAGE) };
        out
    }
}

/// Runs `f` on another thread, since a page nobody serves blocks it for
/// ever, and fails the test if it takes longer than `TIMEOUT`.
fn within_timeout<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(TIMEOUT) {
        Ok(v) => v,
        Err(RecvTimeoutError::Timeout) => panic!("{what}: no page served within {TIMEOUT:?}"),
        Err(RecvTimeoutError::Disconnected) => panic!("{what}: the thread panicked"),
    }
}

/// Attaches, or returns None (after printing why) when this host has no
/// usable userfaultfd.
fn attach_or_skip(regions: &[Region], socket: &Path) -> Option<Result<UffdBackend, UffdError>> {
    let ranges: Vec<(u64, u64)> = regions
        .iter()
        .map(|r| (r.addr as u64, r.len as u64))
        .collect();
    match attach(&ranges, PAGE as u64, socket) {
        Err(UffdError::Create(e)) => {
            skip(&format!("userfaultfd is unavailable: {e}"));
            None
        }
        result => Some(result),
    }
}

/// What the VMM side saw of its memory.
struct Seen {
    /// The page copied into a pipe by the kernel (a kernel-mode fault, as
    /// KVM makes).
    through_kernel: Vec<u8>,
    /// Every page of each region, after a write to the first byte of the
    /// second region.
    pages: Vec<Vec<Vec<u8>>>,
    /// The first page of the first region, after the balloon took it back.
    after_remove: Vec<u8>,
}

fn touch(a: Region, b: Region) -> Seen {
    // The kernel reads the first region's last page to fill the pipe.
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two fds pipe() returns.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe failed");
    // SAFETY: the fds are new and ours alone.
    let (rx, tx) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: the page is inside the live mapping `a`.
    let n = unsafe { libc::write(tx.as_raw_fd(), a.page(2).cast(), PAGE) };
    assert_eq!(n, PAGE as isize, "{}", std::io::Error::last_os_error());
    let mut through_kernel = vec![0u8; PAGE];
    std::fs::File::from(rx)
        .read_exact(&mut through_kernel)
        .unwrap();

    // A write to a missing page sees the page's contents first.
    // SAFETY: the byte is inside the live mapping `b`.
    unsafe { b.page(0).write_volatile(0xee) };

    let pages = [a, b]
        .iter()
        .map(|r| (0..r.len / PAGE).map(|i| r.read(i)).collect())
        .collect();

    // A balloon gives the page back: its contents are gone for good.
    // SAFETY: the page is inside the live mapping `a`.
    let rc = unsafe { libc::madvise(a.page(0).cast(), PAGE, libc::MADV_DONTNEED) };
    assert_eq!(rc, 0, "madvise: {}", std::io::Error::last_os_error());
    let after_remove = a.read(0);

    Seen {
        through_kernel,
        pages,
        after_remove,
    }
}

#[test]
fn page_server_fills_guest_memory_from_the_file() {
    let dir = TempDir::new();
    let socket = dir.path("uffd.sock");
    let memfile = dir.path("mem");
    let contents: Vec<u8> = (0..FILE_LEN).map(file_byte).collect();
    std::fs::write(&memfile, contents).unwrap();
    let mut server = Server::start(&socket, &memfile);

    // Two regions, to check the offsets: the second one starts at file
    // page 3, its second page holds the file's half page and its last two
    // pages are past the file's end.
    let (a, b) = (Region::new(3), Region::new(4));
    let Some(backend) = attach_or_skip(&[a, b], &socket) else {
        return;
    };
    let backend = backend.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(backend.mappings()[1].offset, 3 * PAGE as u64);

    let seen = within_timeout("touching guest memory", move || touch(a, b));

    assert!(
        seen.through_kernel.iter().all(|&x| x == 3),
        "a kernel-mode fault did not get the file's page 2"
    );
    for (r, region) in seen.pages.iter().enumerate() {
        for (i, page) in region.iter().enumerate() {
            let offset = (r * 3 + i) * PAGE;
            let mut want: Vec<u8> = (offset..offset + PAGE).map(file_byte).collect();
            if (r, i) == (1, 0) {
                want[0] = 0xee;
            }
            assert!(
                page == &want,
                "region {r} page {i} (file offset {offset:#x}) does not match the file: \
                 starts {:?}, ends {:?}",
                &page[..8],
                &page[PAGE - 8..]
            );
        }
    }
    assert!(
        seen.after_remove.iter().all(|&x| x == 0),
        "a page the balloon gave back did not read as zeros"
    );

    drop(backend);
    let status = server.wait();
    let stderr = server.stderr();
    assert!(
        status.success(),
        "the page server failed ({status}): {stderr}"
    );
    // 3 + 4 pages, and the removed page once more.
    assert!(stderr.contains(" 8 pages served"), "{stderr}");
}

#[test]
fn attach_names_a_socket_it_cannot_reach() {
    let dir = TempDir::new();
    let region = Region::new(1);

    let missing = dir.path("missing.sock");
    let Some(result) = attach_or_skip(&[region], &missing) else {
        return;
    };
    let err = result
        .expect_err("attached to a missing socket")
        .to_string();
    assert!(err.contains(&*missing.to_string_lossy()), "{err}");

    // A socket file nobody listens on any more.
    let stale = dir.path("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let err = attach(
        &[(region.addr as u64, region.len as u64)],
        PAGE as u64,
        &stale,
    )
    .expect_err("attached to a socket nobody listens on")
    .to_string();
    assert!(err.contains(&*stale.to_string_lossy()), "{err}");

    // The memory is its own again once no page server has it.
    assert!(
        within_timeout("reading after a failed attach", move || region.read(0))
            .iter()
            .all(|&x| x == 0)
    );
}
