//! The virtio-net TX path on a chain built from the input, into a socket
//! pair standing in for the TAP.

#![no_main]

use std::os::fd::FromRawFd;
use std::sync::{Arc, Mutex};

use husk::vmm::devices::virtio::net::{Net, NetOptions, Tap, TX_QUEUE};
use husk::vmm::devices::virtio::test_utils::Driver;
use husk_fuzz::chain_from_bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two descriptors into `fds`.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(r, 0);
    // SAFETY: both descriptors are fresh and owned here.
    let (ours, peer) = unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    };
    let tap = Tap::from_file(ours, "fuzz0");
    let net = Arc::new(Mutex::new(Net::with_tap(tap, NetOptions::default()).unwrap()));
    let mut drv = Driver::new(net.clone());
    drv.up(0, 2, 16);
    chain_from_bytes(&drv, TX_QUEUE as u16, data);
    net.lock().unwrap().process_tx();
    drop(peer);
});
