//! The probe guest: a tiny freestanding guest built from `tests/guest/`
//! that boots like a vmlinux and reports on the VMM from inside.
//! `husk probe-guest --output FILE` writes it out.

use std::io;
use std::path::Path;

/// The probe guest ELF, built by `build.rs`.
pub const PROBE_ELF: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/probe.elf"));

/// Writes the probe guest to `path`.
pub fn write_probe(path: &Path) -> io::Result<()> {
    std::fs::write(path, PROBE_ELF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_is_a_x86_64_elf_loaded_at_1mib() {
        assert_eq!(&PROBE_ELF[..4], b"\x7fELF");
        assert_eq!(PROBE_ELF[4], 2, "64-bit");
        assert_eq!(
            u16::from_le_bytes([PROBE_ELF[18], PROBE_ELF[19]]),
            62,
            "x86_64"
        );
        let entry = u64::from_le_bytes(PROBE_ELF[24..32].try_into().unwrap());
        assert_eq!(entry, 0x10_0000);
    }
}
