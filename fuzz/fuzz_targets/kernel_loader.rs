//! Loads the input as a kernel image into a small guest.
//!
//! The first byte of the input is a hole, in 16 MiB units, appended to the
//! rest as a sparse tail: it lets a small input describe a large file, as
//! a crafted kernel would (a 4 GiB file whose PT_NOTE spans it all). The
//! rest is the kernel image: seeds are the probe guest in its three
//! formats after a 0 byte (see README.md).

#![no_main]

use std::cell::RefCell;
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::fd::FromRawFd;

use husk::vmm::arch::x86_64::boot::load_kernel;
use libfuzzer_sys::fuzz_target;
use husk::vmm::kvm::memory::GuestMem;
use vm_memory::GuestAddress;

const MEM_SIZE: u64 = 128 << 20;
const HOLE_UNIT: u64 = 16 << 20;

struct State {
    mem: GuestMem,
    file: File,
}

fn state() -> State {
    let mem = husk::vmm::kvm::memory::anonymous(&[(GuestAddress(0), MEM_SIZE as usize)])
        .expect("cannot create guest memory");
    // SAFETY: memfd_create reads only the NUL-terminated name and returns
    // a new file descriptor or -1; it touches no memory of ours.
    let fd = unsafe { libc::memfd_create(c"husk-fuzz-kernel".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` was just created and nothing else owns it.
    let file = unsafe { File::from_raw_fd(fd) };
    State { mem, file }
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(state());
}

fuzz_target!(|data: &[u8]| {
    let Some((&hole, image)) = data.split_first() else {
        return;
    };
    STATE.with_borrow_mut(|s| {
        s.file.set_len(0).unwrap();
        s.file.seek(SeekFrom::Start(0)).unwrap();
        s.file.write_all(image).unwrap();
        s.file
            .set_len(image.len() as u64 + u64::from(hole) * HOLE_UNIT)
            .unwrap();
        if let Ok(entry) = load_kernel(&s.mem, &mut s.file) {
            // What the checks promise: the kernel ends inside guest memory.
            assert!(
                entry.kernel_end <= MEM_SIZE,
                "kernel_end {:#x} is past guest memory",
                entry.kernel_end
            );
        }
    });
});
