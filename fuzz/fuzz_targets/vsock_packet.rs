//! The vsock packet parser on any bytes.

#![no_main]

use husk::vmm::devices::virtio::vsock::packet;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((hdr, payload)) = packet::parse(data) {
        // What parses must describe a payload inside the input.
        assert!(payload.len() <= data.len());
        let _ = hdr.to_bytes();
    }
});
