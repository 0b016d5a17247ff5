//! The probe guest: a tiny freestanding guest built from `tests/guest/`
//! that boots like a vmlinux and reports on the VMM from inside.
//! `husk probe-guest --output FILE [--boot linux64|pvh|bzimage]` writes it
//! out in the form that exercises each of the VMM's boot paths.

use std::io;
use std::path::Path;

/// The probe guest ELF, entered through the 64-bit Linux boot protocol.
pub const PROBE_ELF: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/probe.elf"));
/// The same guest with a PVH note, entered in 32-bit protected mode.
pub const PROBE_PVH_ELF: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/probe-pvh.elf"));

/// Which kernel format, and so which boot path, the probe is written as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ProbeFormat {
    /// ELF vmlinux, 64-bit Linux boot protocol.
    Linux64,
    /// ELF vmlinux with the PVH note.
    Pvh,
    /// bzImage: a setup header followed by the image, entered at +0x200.
    Bzimage,
}

/// Writes the probe guest to `path`.
pub fn write_probe(path: &Path) -> io::Result<()> {
    write_probe_as(path, ProbeFormat::Linux64)
}

/// Writes the probe guest to `path` in `format`.
pub fn write_probe_as(path: &Path, format: ProbeFormat) -> io::Result<()> {
    let bytes = match format {
        ProbeFormat::Linux64 => PROBE_ELF.to_vec(),
        ProbeFormat::Pvh => PROBE_PVH_ELF.to_vec(),
        ProbeFormat::Bzimage => bzimage(PROBE_ELF)?,
    };
    std::fs::write(path, bytes)
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

fn le_u64(b: &[u8], at: usize) -> io::Result<u64> {
    b.get(at..at + 8)
        .map(|s| u64::from_le_bytes(s.try_into().unwrap_or_default()))
        .ok_or_else(|| invalid("truncated ELF"))
}

fn le_u16(b: &[u8], at: usize) -> io::Result<u16> {
    b.get(at..at + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .ok_or_else(|| invalid("truncated ELF"))
}

/// The load address and file bytes of an ELF's single PT_LOAD segment.
fn load_segment(elf: &[u8]) -> io::Result<(u64, &[u8])> {
    const PT_LOAD: u32 = 1;
    let phoff = le_u64(elf, 0x20)? as usize;
    let phentsize = le_u16(elf, 0x36)? as usize;
    let phnum = le_u16(elf, 0x38)? as usize;
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        let p_type = elf
            .get(ph..ph + 4)
            .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
            .ok_or_else(|| invalid("truncated ELF"))?;
        if p_type == PT_LOAD {
            let offset = le_u64(elf, ph + 0x08)? as usize;
            let paddr = le_u64(elf, ph + 0x18)?;
            let filesz = le_u64(elf, ph + 0x20)? as usize;
            let bytes = elf
                .get(offset..offset + filesz)
                .ok_or_else(|| invalid("segment past the end of the ELF"))?;
            return Ok((paddr, bytes));
        }
    }
    Err(invalid("no PT_LOAD segment"))
}

/// Wraps the probe's image in a bzImage (boot protocol 2.15) whose
/// protected-mode code is loaded at its link address, 1 MiB.
pub fn bzimage(elf: &[u8]) -> io::Result<Vec<u8>> {
    const SETUP_SECTS: u8 = 4;
    let (paddr, image) = load_segment(elf)?;
    let code32_start = u32::try_from(paddr).map_err(|_| invalid("image above 4 GiB"))?;
    let mut out = vec![0u8; (usize::from(SETUP_SECTS) + 1) * 512];
    let mut put = |at: usize, bytes: &[u8]| out[at..at + bytes.len()].copy_from_slice(bytes);
    put(0x1f1, &[SETUP_SECTS]);
    put(0x1fe, &0xaa55u16.to_le_bytes()); // boot_flag
    put(0x202, b"HdrS");
    put(0x206, &0x020fu16.to_le_bytes()); // protocol version
    put(0x211, &[0x01]); // loadflags: LOADED_HIGH
    put(0x214, &code32_start.to_le_bytes());
    put(0x230, &0x0020_0000u32.to_le_bytes()); // kernel_alignment
    put(0x236, &0x0001u16.to_le_bytes()); // xloadflags: XLF_KERNEL_64
    put(0x238, &2047u32.to_le_bytes()); // cmdline_size
                                        // init_size: the image plus its bss, stack and page tables.
    put(0x260, &0x0010_0000u32.to_le_bytes());
    out.extend_from_slice(image);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(elf: &[u8]) -> u64 {
        le_u64(elf, 24).unwrap()
    }

    #[test]
    fn probe_is_a_x86_64_elf_entered_at_1mib_plus_0x200() {
        for elf in [PROBE_ELF, PROBE_PVH_ELF] {
            assert_eq!(&elf[..4], b"\x7fELF");
            assert_eq!(elf[4], 2, "64-bit");
            assert_eq!(le_u16(elf, 18).unwrap(), 62, "x86_64");
            assert_eq!(entry(elf), 0x10_0200);
            assert_eq!(load_segment(elf).unwrap().0, 0x10_0000);
        }
    }

    #[test]
    fn bzimage_header_and_payload() {
        let bz = bzimage(PROBE_ELF).unwrap();
        assert_eq!(&bz[0x202..0x206], b"HdrS");
        assert_eq!(bz[0x1f1], 4);
        let (_, image) = load_segment(PROBE_ELF).unwrap();
        assert_eq!(&bz[5 * 512..], image);
        assert!(bzimage(&PROBE_ELF[..40]).is_err());
    }
}
