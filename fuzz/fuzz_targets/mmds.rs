//! The metadata service on any bytes: the first byte picks what the rest
//! is. Even: frames a guest sends (each a 2-byte length then its bytes,
//! the first 12 taken as the virtio-net header) into an interface's MMDS
//! stack, whose output is drained after each. Odd: HTTP requests on one
//! connection, parsed and answered as MMDS answers them. Nothing may
//! panic, and what the stack holds stays bounded.

#![no_main]

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use husk::vmm::config::MmdsVersion;
use husk::vmm::mmds::http::{self, Parsed};
use husk::vmm::mmds::stack::{MmdsStack, MAX_CONNECTIONS};
use husk::vmm::mmds::Mmds;
use libfuzzer_sys::fuzz_target;

fn mmds(version: MmdsVersion) -> Mmds {
    let mut m = Mmds::new(4096).unwrap();
    m.configure(version, false);
    let _ = m
        .store_mut()
        .put(serde_json::json!({"latest": {"meta-data": {"id": "i-1", "n": 1}}}));
    m
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, mut rest)) = data.split_first() else {
        return;
    };
    let version = if mode & 2 == 0 { MmdsVersion::V1 } else { MmdsVersion::V2 };
    if mode & 1 == 1 {
        let mut m = mmds(version);
        while !rest.is_empty() {
            match http::parse(rest) {
                Parsed::Complete(req, used) => {
                    assert!(used > 0 && used <= rest.len());
                    let _ = m.respond(&req).to_bytes(req.minor, !req.keep_alive());
                    rest = &rest[used..];
                }
                Parsed::Partial | Parsed::Bad(_) => break,
            }
        }
        return;
    }
    let shared = Arc::new(Mutex::new(mmds(version)));
    let Ok(mut stack) = MmdsStack::new(shared, Ipv4Addr::new(169, 254, 169, 254), 1500) else {
        return;
    };
    let mut out = vec![0u8; 2048];
    while rest.len() >= 2 {
        let len = usize::from(u16::from_le_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        let mut f = rest[2..2 + len].to_vec();
        rest = &rest[2 + len..];
        let hdr_len = f.len().min(12);
        let (hdr, frame) = f.split_at_mut(hdr_len);
        if stack.is_mmds_frame(frame) {
            stack.detour(hdr, frame);
        }
        while let Some(n) = stack.next_frame(&mut out) {
            assert!(n <= out.len());
        }
        assert!(stack.connections() <= MAX_CONNECTIONS);
    }
});
