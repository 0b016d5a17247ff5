//! A virtio-blk request built from the input (descriptors, header, data)
//! served against a small backing file: any answer is fine, a panic or a
//! hang is not.

#![no_main]

use std::sync::{Arc, Mutex};

use husk::vmm::devices::virtio::block::{Block, BlockOptions};
use husk::vmm::devices::virtio::test_utils::Driver;
use husk_fuzz::chain_from_bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("husk-fuzz-blk-{}", std::process::id()));
    if !path.exists() {
        std::fs::write(&path, vec![0u8; 64 * 1024]).unwrap();
    }
    let read_only = data.first().is_some_and(|b| b & 0x80 != 0);
    let options = BlockOptions {
        read_only,
        ..Default::default()
    };
    let blk = Arc::new(Mutex::new(Block::new("fuzz", &path, options).unwrap()));
    let mut drv = Driver::new(blk.clone());
    drv.up(0, 1, 16);
    chain_from_bytes(&drv, 0, data);
    blk.lock().unwrap().process_queue();
});
