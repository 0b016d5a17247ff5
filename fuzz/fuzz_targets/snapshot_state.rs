//! Reads the input as a snapshot state file, twice: as it is (the header,
//! length and CRC checks), and framed with a valid header and CRC, so the
//! body decoder sees arbitrary bytes too. Neither may panic.

#![no_main]

use std::path::Path;

use husk::vmm::snapshot::{format, MicrovmState};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let p = Path::new("fuzz.snap");
    let _ = format::decode::<MicrovmState>(data, p);
    let _ = format::decode::<MicrovmState>(&format::frame(data), p);
});
