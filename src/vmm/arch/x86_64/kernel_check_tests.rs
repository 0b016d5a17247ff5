//! Tests for `kernel_check`: crafted kernels are refused before
//! linux-loader reads them, and well-formed ones still load.

use std::path::PathBuf;

use linux_loader::loader::{Elf, KernelLoader};
use vm_memory::Bytes;

use super::super::boot::{load_kernel, BootError, BootProtocol, KernelEntry};
use super::*;
use crate::probe;

const MEM: u64 = 128 << 20;

fn memory() -> GuestMem {
    crate::vmm::kvm::memory::anonymous(&[(GuestAddress(0), MEM as usize)]).unwrap()
}

/// A kernel file in the temp dir, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    /// `bytes`, then a hole to `len` bytes if that is longer.
    fn new(name: &str, bytes: &[u8], len: u64) -> Scratch {
        let path =
            std::env::temp_dir().join(format!("husk-kernel-check-{}-{name}", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        if len > bytes.len() as u64 {
            File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_len(len)
                .unwrap();
        }
        Scratch(path)
    }

    fn open(&self) -> File {
        File::open(&self.0).unwrap()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn load_padded(name: &str, bytes: &[u8], len: u64) -> std::result::Result<KernelEntry, BootError> {
    let f = Scratch::new(name, bytes, len);
    load_kernel(&memory(), &mut f.open())
}

fn load(name: &str, bytes: &[u8]) -> std::result::Result<KernelEntry, BootError> {
    load_padded(name, bytes, 0)
}

/// The check's error for a kernel that must be refused.
fn refused(name: &str, bytes: &[u8], len: u64) -> KernelImageError {
    match load_padded(name, bytes, len) {
        Err(BootError::KernelImage(e)) => e,
        other => panic!("{name}: expected a kernel image error, got {other:?}"),
    }
}

#[derive(Clone, Copy)]
struct Ph {
    p_type: u32,
    offset: u64,
    addr: u64,
    filesz: u64,
    memsz: u64,
}

const LOAD: Ph = Ph {
    p_type: PT_LOAD,
    offset: 0x1000,
    addr: 0x10_0000,
    filesz: 0x20,
    memsz: 0x1000,
};

fn note(offset: u64, filesz: u64) -> Ph {
    Ph {
        p_type: PT_NOTE,
        offset,
        addr: 0,
        filesz,
        memsz: filesz,
    }
}

fn put(b: &mut [u8], at: usize, v: &[u8]) {
    b[at..at + v.len()].copy_from_slice(v);
}

/// An x86_64 ELF with `phs` after its header, `len` bytes long, with
/// `hlt` at 0x1000 (where LOAD's bytes are).
fn elf(phs: &[Ph], len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len.max(64 + phs.len() * 56)];
    put(&mut b, 0, b"\x7fELF\x02\x01\x01");
    put(&mut b, 0x10, &2u16.to_le_bytes()); // ET_EXEC
    put(&mut b, 0x12, &EM_X86_64.to_le_bytes());
    put(&mut b, 0x14, &1u32.to_le_bytes());
    put(&mut b, 0x18, &0x10_0000u64.to_le_bytes()); // e_entry
    put(&mut b, 0x20, &64u64.to_le_bytes()); // e_phoff
    put(&mut b, 0x34, &64u16.to_le_bytes());
    put(&mut b, 0x36, &56u16.to_le_bytes());
    put(&mut b, 0x38, &(phs.len() as u16).to_le_bytes());
    for (i, ph) in phs.iter().enumerate() {
        let at = 64 + i * 56;
        put(&mut b, at, &ph.p_type.to_le_bytes());
        put(&mut b, at + 0x04, &7u32.to_le_bytes());
        put(&mut b, at + 0x08, &ph.offset.to_le_bytes());
        put(&mut b, at + 0x10, &ph.addr.to_le_bytes());
        put(&mut b, at + 0x18, &ph.addr.to_le_bytes());
        put(&mut b, at + 0x20, &ph.filesz.to_le_bytes());
        put(&mut b, at + 0x28, &ph.memsz.to_le_bytes());
        put(&mut b, at + 0x30, &0x1000u64.to_le_bytes());
    }
    if b.len() > 0x1000 {
        b[0x1000] = 0xf4;
    }
    b
}

fn tiny_elf() -> Vec<u8> {
    elf(&[LOAD], 0x1020)
}

#[test]
fn well_formed_kernels_load() {
    let m = memory();
    let f = Scratch::new("tiny", &tiny_elf(), 0);
    let e = load_kernel(&m, &mut f.open()).unwrap();
    assert_eq!(e.addr, GuestAddress(0x10_0000));
    assert_eq!(e.protocol, BootProtocol::Linux64);
    assert_eq!(e.kernel_end, 0x10_1000);
    assert_eq!(m.read_obj::<u8>(GuestAddress(0x10_0000)).unwrap(), 0xf4);

    let e = load("probe", probe::PROBE_ELF).unwrap();
    assert_eq!(
        (e.addr, e.protocol),
        (GuestAddress(0x10_0200), BootProtocol::Linux64)
    );
    let e = load("probe-pvh", probe::PROBE_PVH_ELF).unwrap();
    assert_eq!(
        (e.addr, e.protocol),
        (GuestAddress(0x10_0000), BootProtocol::Pvh)
    );
    let bz = probe::bzimage(probe::PROBE_ELF).unwrap();
    let e = load("probe-bz", &bz).unwrap();
    assert_eq!(
        (e.addr, e.protocol),
        (GuestAddress(0x10_0200), BootProtocol::Linux64)
    );
    assert_eq!(e.kernel_end, 0x20_0000, "init_size from 1 MiB");
    assert!(e.setup_header.is_some());
}

#[test]
fn huge_note_is_refused_before_linux_loader_walks_it() {
    // linux-loader would read 12-byte note headers through all 4 GiB.
    let e = refused(
        "huge-note",
        &elf(&[LOAD, note(0x2000, 0xf_ffff_fff0)], 0x1020),
        4 << 30,
    );
    assert!(
        matches!(
            e,
            KernelImageError::NoteTooBig {
                size: 0xf_ffff_fff0,
                max: 65536
            }
        ),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        "the kernel's PT_NOTE segment is 68719476720 bytes; at most 65536 are allowed"
    );
}

#[test]
fn large_notes_inside_the_file_are_refused() {
    let e = refused(
        "big-note",
        &elf(&[LOAD, note(0x2000, 1 << 20)], 0x1020),
        3 << 20,
    );
    assert!(
        matches!(
            e,
            KernelImageError::NoteTooBig {
                size: 0x10_0000,
                ..
            }
        ),
        "{e:?}"
    );
    let e = refused(
        "two-notes",
        &elf(
            &[LOAD, note(0x2000, 40 << 10), note(0x2000, 40 << 10)],
            0x1020,
        ),
        1 << 20,
    );
    assert!(
        matches!(e, KernelImageError::NotesTooBig { total: 81920, .. }),
        "{e:?}"
    );
}

#[test]
fn program_header_count_and_table_are_bounded() {
    let mut b = tiny_elf();
    put(&mut b, 0x38, &0xffffu16.to_le_bytes());
    let e = refused("phnum-max", &b, 0);
    assert!(
        matches!(
            e,
            KernelImageError::ProgramHeaderCount {
                count: 0xffff,
                max: 64
            }
        ),
        "{e:?}"
    );
    // Within the cap, but the table runs past the end of the file.
    let mut b = tiny_elf();
    put(&mut b, 0x38, &60u16.to_le_bytes());
    let e = refused("phnum-past-end", &b[..0x400], 0);
    assert!(
        matches!(e, KernelImageError::ProgramHeaderTable { count: 60, .. }),
        "{e:?}"
    );
    for phoff in [u64::MAX - 8, 0x10] {
        let mut b = tiny_elf();
        put(&mut b, 0x20, &phoff.to_le_bytes());
        let e = refused("phoff", &b, 0);
        assert!(
            matches!(e, KernelImageError::ProgramHeaderTable { .. }),
            "{e:?}"
        );
    }
    let mut b = tiny_elf();
    put(&mut b, 0x36, &32u16.to_le_bytes());
    let e = refused("phentsize", &b, 0);
    assert!(
        matches!(e, KernelImageError::ProgramHeaderSize(32)),
        "{e:?}"
    );
}

#[test]
fn segment_past_the_end_of_the_file_is_refused() {
    let past = Ph {
        filesz: 0x10_0000,
        memsz: 0x10_0000,
        ..LOAD
    };
    let e = refused("past-end", &elf(&[past], 0x2000), 0);
    assert!(
        matches!(
            e,
            KernelImageError::SegmentPastEnd {
                index: 0,
                filesz: 0x10_0000,
                size: 0x2000,
                ..
            }
        ),
        "{e:?}"
    );
    let wraps = Ph {
        offset: u64::MAX - 8,
        ..LOAD
    };
    let e = refused("wraps", &elf(&[LOAD, wraps], 0x1020), 0);
    assert!(
        matches!(e, KernelImageError::SegmentPastEnd { index: 1, .. }),
        "{e:?}"
    );
}

#[test]
fn load_segment_outside_guest_memory_is_refused() {
    for (name, addr, memsz) in [
        ("above", 0x1000_0000, 0x1000),
        ("straddles", MEM - 0x1000, 0x2000),
        ("wraps", u64::MAX - 0x10, 0x1000),
    ] {
        let ph = Ph {
            addr,
            memsz,
            ..LOAD
        };
        let e = refused(name, &elf(&[ph], 0x1020), 0);
        assert!(
            matches!(
                e,
                KernelImageError::SegmentOutsideMemory {
                    index: 0,
                    mem_end: MEM,
                    ..
                }
            ),
            "{name}: {e:?}"
        );
    }
}

#[test]
fn segment_sizes_are_consistent_and_bounded() {
    let ph = Ph {
        memsz: 0x10,
        ..LOAD
    };
    let e = refused("filesz", &elf(&[ph], 0x1020), 0);
    assert!(
        matches!(
            e,
            KernelImageError::SegmentFileSize {
                filesz: 0x20,
                memsz: 0x10,
                ..
            }
        ),
        "{e:?}"
    );
    // Each fits in guest memory, but all three copy 1.5 times it.
    let ph = Ph {
        filesz: MEM / 2,
        memsz: MEM / 2,
        ..LOAD
    };
    let e = refused("segments", &elf(&[ph, ph, ph], 0x1020), 0x1000 + MEM / 2);
    assert!(
        matches!(e, KernelImageError::SegmentsTooBig { mem: MEM, .. }),
        "{e:?}"
    );
    let empty = Ph { filesz: 0, ..LOAD };
    let e = refused("no-load", &elf(&[empty, note(0x1000, 0)], 0x1020), 0);
    assert!(matches!(e, KernelImageError::NoLoadSegment), "{e:?}");
}

#[test]
fn elf_identity_is_checked() {
    for (at, v, name) in [(4, 1u8, "class"), (5, 2, "endian"), (0x12, 3, "machine")] {
        let mut b = tiny_elf();
        b[at] = v;
        let e = refused(name, &b, 0);
        assert!(
            matches!(
                e,
                KernelImageError::ElfClass(1)
                    | KernelImageError::ElfEndianness(2)
                    | KernelImageError::ElfMachine(3)
            ),
            "{name}: {e:?}"
        );
    }
    let e = refused("short-elf", &tiny_elf()[..40], 0);
    assert!(
        matches!(e, KernelImageError::TooShort { size: 40 }),
        "{e:?}"
    );
    let e = refused("short", b"\x7fE", 0);
    assert!(matches!(e, KernelImageError::TooShort { size: 2 }), "{e:?}");
}

fn probe_bzimage() -> Vec<u8> {
    probe::bzimage(probe::PROBE_ELF).unwrap()
}

#[test]
fn oversized_bzimage_is_refused() {
    let e = refused("bz-huge", &probe_bzimage(), 4 << 30);
    assert!(
        matches!(
            e,
            KernelImageError::BzImageTooBig {
                size: 0x1_0000_0000,
                mem: MEM
            }
        ),
        "{e:?}"
    );
}

#[test]
fn bzimage_header_is_checked() {
    let edit = |at: usize, v: &[u8]| {
        let mut b = probe_bzimage();
        put(&mut b, at, v);
        b
    };
    let e = refused("bz-magic", &edit(0x202, b"HdrX"), 0);
    assert!(matches!(e, KernelImageError::UnknownFormat), "{e:?}");
    assert!(e
        .to_string()
        .contains("neither an ELF vmlinux nor a bzImage"));
    let e = refused("bz-short", &probe_bzimage()[..0x200], 0);
    assert!(
        matches!(e, KernelImageError::TooShort { size: 0x200 }),
        "{e:?}"
    );
    let e = refused("bz-version", &edit(0x206, &0x0105u16.to_le_bytes()), 0);
    assert!(
        matches!(e, KernelImageError::BzImageProtocol { version: 0x105, .. }),
        "{e:?}"
    );
    let e = refused("bz-setup", &edit(0x1f1, &[0xff]), 0);
    assert!(
        matches!(
            e,
            KernelImageError::BzImageNoKernel {
                setup_sects: 0xff,
                ..
            }
        ),
        "{e:?}"
    );
    let e = refused("bz-low", &edit(0x214, &0x1000u32.to_le_bytes()), 0);
    assert!(
        matches!(e, KernelImageError::BzImageLoadAddress { addr: 0x1000 }),
        "{e:?}"
    );
    for (name, at, v) in [
        ("bz-end", 0x214, (MEM as u32 - 0x1000).to_le_bytes()),
        ("bz-high", 0x214, 0xffff_f000u32.to_le_bytes()),
        ("bz-init-size", 0x260, u32::MAX.to_le_bytes()),
    ] {
        let e = refused(name, &edit(at, &v), 0);
        assert!(
            matches!(
                e,
                KernelImageError::BzImageOutsideMemory { mem_end: MEM, .. }
            ),
            "{name}: {e:?}"
        );
    }
}

#[test]
fn linux_loader_sees_the_headers_as_checked() {
    let m = memory();
    let f = Scratch::new("changed", &elf(&[LOAD, note(0x1000, 0)], 0x1020), 0);
    let mut file = f.open();
    let (format, mut image) = check_kernel(&m, &mut file).unwrap();
    assert_eq!(format, ImageFormat::Elf);
    // After the checks, the segment grows in memory and the file to
    // 4 GiB: linux-loader sees neither.
    let w = File::options().write(true).open(&f.0).unwrap();
    w.write_all_at(&0x2000u64.to_le_bytes(), 64 + 0x28).unwrap();
    w.set_len(4 << 30).unwrap();
    let r = Elf::load(&m, None, &mut image, Some(GuestAddress(HIMEM_START))).unwrap();
    assert_eq!(r.kernel_end, 0x10_1000);
    assert_eq!(image.seek(SeekFrom::End(0)).unwrap(), 0x1020);
}

#[test]
fn checked_image_reads_held_bytes_and_stops_at_its_length() {
    let bytes: Vec<u8> = (0..=255u8).cycle().take(0x3000).collect();
    let f = Scratch::new("reader", &bytes, 0);
    let mut file = f.open();
    let mut image = CheckedImage::new(&mut file, 0x2800);
    image.held = vec![Held {
        at: 0x100,
        bytes: vec![0xaa; 0x10],
    }];
    let mut expect = bytes[..0x2800].to_vec();
    expect[0x100..0x110].fill(0xaa);
    let mut all = Vec::new();
    image.read_to_end(&mut all).unwrap();
    assert_eq!(all, expect);

    // One volatile read fills the region across the held bytes.
    let m = memory();
    image.seek(SeekFrom::Start(0x80)).unwrap();
    let n = m
        .read_volatile_from(GuestAddress(0x1000), &mut image, 0x1000)
        .unwrap();
    assert_eq!(n, 0x1000);
    let mut got = vec![0u8; 0x1000];
    m.read_slice(&mut got, GuestAddress(0x1000)).unwrap();
    assert_eq!(got, expect[0x80..0x1080]);

    image.seek(SeekFrom::End(-0x10)).unwrap();
    let n = m
        .read_volatile_from(GuestAddress(0x1000), &mut image, 0x1000)
        .unwrap();
    assert_eq!(n, 0x10, "stops at the checked length");
    assert!(image.seek(SeekFrom::Current(-0x10_0000)).is_err());
}
