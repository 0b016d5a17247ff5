//! Parses and validates the input as a `husk vmm --config-file` file.

#![no_main]

use husk::vmm::config::VmConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = VmConfig::from_slice("fuzz", data);
});
