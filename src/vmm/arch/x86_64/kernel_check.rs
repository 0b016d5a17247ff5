//! Bounds on what a kernel image may ask of the loader, checked before
//! linux-loader reads it, and the reader that holds linux-loader to what
//! was checked.
//!
//! Every size and count in a kernel image is the caller's to choose, and
//! linux-loader trusts them: a PT_NOTE segment of 64 GiB keeps it reading
//! 12-byte note headers for minutes. So the headers are read here first,
//! with reads of a fixed size, and each size and count is bounded before
//! any work proportional to it begins. linux-loader then reads through
//! [`CheckedImage`], which serves the headers from the checked copy and
//! ends the file where it ended when checked, so a file changed in the
//! meantime cannot undo the checks.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;

use crate::vmm::kvm::memory::GuestMem;
use linux_loader::loader::bootparam::setup_header;
use vm_memory::bitmap::BitmapSlice;
use vm_memory::{
    GuestAddress, GuestMemoryBackend, GuestMemoryRegion, ReadVolatile, VolatileMemoryError,
    VolatileSlice,
};

use super::layout::HIMEM_START;

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const ELF_HEADER_SIZE: u64 = 64;
const ELF_PHDR_SIZE: u16 = 56;
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const EM_X86_64: u16 = 62;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
/// Most program headers a kernel may have. A vmlinux has about six.
pub const MAX_PROGRAM_HEADERS: u16 = 64;
/// Most bytes of PT_NOTE segments a kernel may have, in all. linux-loader
/// walks every note looking for the PVH entry point; a vmlinux's notes
/// take a few hundred bytes.
pub const MAX_NOTE_BYTES: u64 = 64 << 10;

/// Where the bzImage setup header starts, and its "HdrS" magic.
const SETUP_HEADER_START: u64 = 0x1f1;
const SETUP_HEADER_LEN: usize = std::mem::size_of::<setup_header>();
const HDRS_MAGIC: &[u8; 4] = b"HdrS";
/// The setup sectors a bzImage has when its header says 0.
const DEFAULT_SETUP_SECTS: u8 = 4;
const SECTOR_SIZE: u64 = 512;
const LOADFLAGS_LOADED_HIGH: u8 = 0x1;

// Offsets into the setup header, from Documentation/arch/x86/boot.rst
// less SETUP_HEADER_START.
const SETUP_SECTS_AT: usize = 0;
const HDRS_AT: usize = 0x202 - 0x1f1;
const VERSION_AT: usize = 0x206 - 0x1f1;
const LOADFLAGS_AT: usize = 0x211 - 0x1f1;
const CODE32_START_AT: usize = 0x214 - 0x1f1;
const INIT_SIZE_AT: usize = 0x260 - 0x1f1;

// The setup header must reach every field read from it.
const _: () = assert!(INIT_SIZE_AT + 4 <= SETUP_HEADER_LEN);

#[derive(Debug, thiserror::Error)]
pub enum KernelImageError {
    #[error("cannot read the kernel image: {0}")]
    Read(#[source] io::Error),
    #[error("the kernel image is neither an ELF vmlinux nor a bzImage: it is only {size} bytes")]
    TooShort { size: u64 },
    #[error(
        "the kernel image is neither an ELF vmlinux nor a bzImage: \
         it has no ELF magic and no \"HdrS\" at 0x202"
    )]
    UnknownFormat,
    #[error("the kernel ELF has class {0}; only ELF64 (2) is supported")]
    ElfClass(u8),
    #[error("the kernel ELF has data encoding {0}; only little-endian (1) is supported")]
    ElfEndianness(u8),
    #[error("the kernel ELF is for machine {0}; only x86_64 (62) is supported")]
    ElfMachine(u16),
    #[error("the kernel's program headers are {0} bytes each; ELF64's are 56")]
    ProgramHeaderSize(u16),
    #[error("the kernel has {count} program headers; at most {max} are allowed")]
    ProgramHeaderCount { count: u16, max: u16 },
    #[error(
        "the kernel's {count} program headers at offset {offset:#x} do not fit \
         between its ELF header and the end of its {size}-byte file"
    )]
    ProgramHeaderTable { offset: u64, count: u16, size: u64 },
    #[error("the kernel's PT_NOTE segment is {size} bytes; at most {max} are allowed")]
    NoteTooBig { size: u64, max: u64 },
    #[error("the kernel's PT_NOTE segments are {total} bytes in all; at most {max} are allowed")]
    NotesTooBig { total: u64, max: u64 },
    #[error(
        "the kernel's segment {index} ({filesz} bytes at offset {offset:#x}) \
         runs past the end of its {size}-byte file"
    )]
    SegmentPastEnd {
        index: usize,
        offset: u64,
        filesz: u64,
        size: u64,
    },
    #[error(
        "the kernel's segment {index} has {filesz} bytes in the file \
         but only {memsz} in memory"
    )]
    SegmentFileSize {
        index: usize,
        filesz: u64,
        memsz: u64,
    },
    #[error(
        "the kernel's segment {index} ({memsz} bytes at {addr:#x}) is not inside \
         guest memory, which ends at {mem_end:#x}"
    )]
    SegmentOutsideMemory {
        index: usize,
        addr: u64,
        memsz: u64,
        mem_end: u64,
    },
    #[error(
        "the kernel's segments hold {total} bytes in all, more than the guest's \
         {mem} bytes of memory"
    )]
    SegmentsTooBig { total: u64, mem: u64 },
    #[error("the kernel ELF has no PT_LOAD segment with anything to load")]
    NoLoadSegment,
    #[error("the bzImage is {size} bytes, more than the guest's {mem} bytes of memory")]
    BzImageTooBig { size: u64, mem: u64 },
    #[error(
        "the bzImage uses boot protocol {}.{:02} with loadflags {loadflags:#x}; \
         only protocol 2.00 or later, loaded high, is supported",
        version >> 8,
        version & 0xff
    )]
    BzImageProtocol { version: u16, loadflags: u8 },
    #[error(
        "the bzImage's setup ({setup_sects} sectors and the boot sector) \
         leaves no kernel in its {size}-byte file"
    )]
    BzImageNoKernel { setup_sects: u8, size: u64 },
    #[error("the bzImage loads at {addr:#x}, below 1 MiB")]
    BzImageLoadAddress { addr: u32 },
    #[error(
        "the bzImage's kernel ({size} bytes, {init_size} once decompressed) \
         does not fit in guest memory at {addr:#x}; memory ends at {mem_end:#x}"
    )]
    BzImageOutsideMemory {
        addr: u32,
        size: u64,
        init_size: u32,
        mem_end: u64,
    },
}

type Result<T> = std::result::Result<T, KernelImageError>;

/// The kernel image formats linux-loader is given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageFormat {
    /// ELF vmlinux, with or without the PVH note.
    Elf,
    /// bzImage, entered through the 64-bit Linux boot protocol.
    BzImage,
}

/// Checks the kernel image in `file` against `mem` and returns its format
/// and a reader for linux-loader that sees the file as it was checked.
pub fn check_kernel<'f>(
    mem: &GuestMem,
    file: &'f mut File,
) -> Result<(ImageFormat, CheckedImage<'f>)> {
    let len = file
        .seek(SeekFrom::End(0))
        .map_err(KernelImageError::Read)?;
    let mut magic = [0u8; 4];
    if len < magic.len() as u64 {
        return Err(KernelImageError::TooShort { size: len });
    }
    read_at(file, 0, &mut magic)?;
    let (format, held) = if &magic == ELF_MAGIC {
        (ImageFormat::Elf, check_elf(mem, file, len)?)
    } else {
        (ImageFormat::BzImage, check_bzimage(mem, file, len)?)
    };
    let mut image = CheckedImage::new(file, len);
    image.held = held;
    Ok((format, image))
}

fn read_at(file: &File, offset: u64, buf: &mut [u8]) -> Result<()> {
    file.read_exact_at(buf, offset)
        .map_err(KernelImageError::Read)
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    let mut v = [0u8; 2];
    if let Some(s) = b.get(at..at + 2) {
        v.copy_from_slice(s);
    }
    u16::from_le_bytes(v)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut v = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        v.copy_from_slice(s);
    }
    u32::from_le_bytes(v)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        v.copy_from_slice(s);
    }
    u64::from_le_bytes(v)
}

/// The guest's RAM in bytes, all regions together.
fn ram_size(mem: &GuestMem) -> u64 {
    mem.iter().map(|r| r.len()).fold(0, u64::saturating_add)
}

/// The first address past the guest's RAM.
fn ram_end(mem: &GuestMem) -> u64 {
    mem.iter()
        .map(|r| r.last_addr().0.saturating_add(1))
        .max()
        .unwrap_or(0)
}

/// Whether `[addr, addr + len)` is all guest RAM.
fn in_ram(mem: &GuestMem, addr: u64, len: u64) -> bool {
    match (addr.checked_add(len), usize::try_from(len)) {
        (Some(_), Ok(len)) => mem.check_range(GuestAddress(addr), len),
        _ => false,
    }
}

/// Checks an ELF vmlinux; returns the headers read, for linux-loader.
fn check_elf(mem: &GuestMem, file: &File, len: u64) -> Result<Vec<Held>> {
    if len < ELF_HEADER_SIZE {
        return Err(KernelImageError::TooShort { size: len });
    }
    let mut ehdr = vec![0u8; ELF_HEADER_SIZE as usize];
    read_at(file, 0, &mut ehdr)?;
    if ehdr[4] != ELFCLASS64 {
        return Err(KernelImageError::ElfClass(ehdr[4]));
    }
    if ehdr[5] != ELFDATA2LSB {
        return Err(KernelImageError::ElfEndianness(ehdr[5]));
    }
    let machine = u16_at(&ehdr, 0x12);
    if machine != EM_X86_64 {
        return Err(KernelImageError::ElfMachine(machine));
    }
    let phoff = u64_at(&ehdr, 0x20);
    let phentsize = u16_at(&ehdr, 0x36);
    let phnum = u16_at(&ehdr, 0x38);
    if phentsize != ELF_PHDR_SIZE {
        return Err(KernelImageError::ProgramHeaderSize(phentsize));
    }
    if phnum > MAX_PROGRAM_HEADERS {
        return Err(KernelImageError::ProgramHeaderCount {
            count: phnum,
            max: MAX_PROGRAM_HEADERS,
        });
    }
    // At most 64 × 56 bytes, so neither the product nor the cast can
    // overflow.
    let table_len = u64::from(phnum) * u64::from(ELF_PHDR_SIZE);
    if phoff < ELF_HEADER_SIZE || phoff.checked_add(table_len).is_none_or(|end| end > len) {
        return Err(KernelImageError::ProgramHeaderTable {
            offset: phoff,
            count: phnum,
            size: len,
        });
    }
    let mut table = vec![0u8; table_len as usize];
    read_at(file, phoff, &mut table)?;

    let mem_size = ram_size(mem);
    let mut notes = 0u64;
    let mut loads = 0u64;
    let mut loads_something = false;
    for (index, ph) in table.chunks_exact(usize::from(ELF_PHDR_SIZE)).enumerate() {
        let p_type = u32_at(ph, 0);
        let offset = u64_at(ph, 0x08);
        let addr = u64_at(ph, 0x18);
        let filesz = u64_at(ph, 0x20);
        let memsz = u64_at(ph, 0x28);
        if p_type == PT_NOTE {
            if filesz > MAX_NOTE_BYTES {
                return Err(KernelImageError::NoteTooBig {
                    size: filesz,
                    max: MAX_NOTE_BYTES,
                });
            }
            // Both at most MAX_NOTE_BYTES × 64: no overflow.
            notes += filesz;
            if notes > MAX_NOTE_BYTES {
                return Err(KernelImageError::NotesTooBig {
                    total: notes,
                    max: MAX_NOTE_BYTES,
                });
            }
        }
        if offset.checked_add(filesz).is_none_or(|end| end > len) {
            return Err(KernelImageError::SegmentPastEnd {
                index,
                offset,
                filesz,
                size: len,
            });
        }
        if p_type != PT_LOAD {
            continue;
        }
        if filesz > memsz {
            return Err(KernelImageError::SegmentFileSize {
                index,
                filesz,
                memsz,
            });
        }
        if memsz > 0 && !in_ram(mem, addr, memsz) {
            return Err(KernelImageError::SegmentOutsideMemory {
                index,
                addr,
                memsz,
                mem_end: ram_end(mem),
            });
        }
        // Each segment fits in guest memory; together they may copy no
        // more than it holds either.
        loads = loads.saturating_add(filesz);
        if loads > mem_size {
            return Err(KernelImageError::SegmentsTooBig {
                total: loads,
                mem: mem_size,
            });
        }
        loads_something |= filesz > 0;
    }
    if !loads_something {
        return Err(KernelImageError::NoLoadSegment);
    }
    Ok(vec![
        Held { at: 0, bytes: ehdr },
        Held {
            at: phoff,
            bytes: table,
        },
    ])
}

/// Checks a bzImage; returns its setup header, for linux-loader.
fn check_bzimage(mem: &GuestMem, file: &File, len: u64) -> Result<Vec<Held>> {
    if len < SETUP_HEADER_START + SETUP_HEADER_LEN as u64 {
        return Err(KernelImageError::TooShort { size: len });
    }
    let mut hdr = vec![0u8; SETUP_HEADER_LEN];
    read_at(file, SETUP_HEADER_START, &mut hdr)?;
    if hdr.get(HDRS_AT..HDRS_AT + 4) != Some(HDRS_MAGIC.as_slice()) {
        return Err(KernelImageError::UnknownFormat);
    }
    let mem_size = ram_size(mem);
    if len > mem_size {
        return Err(KernelImageError::BzImageTooBig {
            size: len,
            mem: mem_size,
        });
    }
    let version = u16_at(&hdr, VERSION_AT);
    let loadflags = hdr[LOADFLAGS_AT];
    if version < 0x0200 || loadflags & LOADFLAGS_LOADED_HIGH == 0 {
        return Err(KernelImageError::BzImageProtocol { version, loadflags });
    }
    let setup_sects = hdr[SETUP_SECTS_AT];
    let sects = match setup_sects {
        0 => DEFAULT_SETUP_SECTS,
        n => n,
    };
    // At most 256 sectors: no overflow.
    let setup_size = (u64::from(sects) + 1) * SECTOR_SIZE;
    if setup_size >= len {
        return Err(KernelImageError::BzImageNoKernel {
            setup_sects,
            size: len,
        });
    }
    let addr = u32_at(&hdr, CODE32_START_AT);
    if u64::from(addr) < HIMEM_START {
        return Err(KernelImageError::BzImageLoadAddress { addr });
    }
    let size = len - setup_size;
    let init_size = u32_at(&hdr, INIT_SIZE_AT);
    if !in_ram(mem, u64::from(addr), size.max(u64::from(init_size))) {
        return Err(KernelImageError::BzImageOutsideMemory {
            addr,
            size,
            init_size,
            mem_end: ram_end(mem),
        });
    }
    Ok(vec![Held {
        at: SETUP_HEADER_START,
        bytes: hdr,
    }])
}

/// File bytes read by the checks, served from this copy afterwards.
struct Held {
    at: u64,
    bytes: Vec<u8>,
}

/// Where the next read comes from.
enum Piece<'a> {
    /// Bytes the checks read.
    Held(&'a [u8]),
    /// This many bytes of the file.
    File(usize),
    /// The end of the file as checked.
    End,
}

/// The kernel image as checked: linux-loader reads it through this. The
/// bytes the checks read come from their copy, and the file ends where it
/// ended when checked, whatever happens to the file meanwhile.
pub struct CheckedImage<'f> {
    file: &'f mut File,
    len: u64,
    pos: u64,
    /// Disjoint, each inside `[0, len)`.
    held: Vec<Held>,
}

impl<'f> CheckedImage<'f> {
    /// The first `len` bytes of `file`, with nothing held: a reader that
    /// stops at `len` and fills guest memory regions whole.
    pub fn new(file: &'f mut File, len: u64) -> Self {
        CheckedImage {
            file,
            len,
            pos: 0,
            held: Vec::new(),
        }
    }

    /// The next piece of at most `max` bytes from the current position.
    fn piece(&self, max: usize) -> Piece<'_> {
        let left = self.len.saturating_sub(self.pos);
        let mut n = usize::try_from(left).unwrap_or(usize::MAX).min(max);
        if n == 0 {
            return Piece::End;
        }
        for h in &self.held {
            // Inside the file, so no overflow.
            let end = h.at + h.bytes.len() as u64;
            if (h.at..end).contains(&self.pos) {
                let from = (self.pos - h.at) as usize;
                let take = n.min(h.bytes.len() - from);
                return Piece::Held(&h.bytes[from..from + take]);
            }
            if h.at > self.pos {
                n = n.min(usize::try_from(h.at - self.pos).unwrap_or(usize::MAX));
            }
        }
        Piece::File(n)
    }
}

impl Read for CheckedImage<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match self.piece(buf.len()) {
            Piece::End => 0,
            Piece::Held(bytes) => {
                buf[..bytes.len()].copy_from_slice(bytes);
                bytes.len()
            }
            Piece::File(n) => self.file.read_at(&mut buf[..n], self.pos)?,
        };
        self.pos += n as u64;
        Ok(n)
    }
}

impl ReadVolatile for CheckedImage<'_> {
    /// Fills as much of `buf` as the file holds: vm-memory reads each
    /// guest memory region with one call and takes a short read as an
    /// error.
    fn read_volatile<B: BitmapSlice>(
        &mut self,
        buf: &mut VolatileSlice<B>,
    ) -> std::result::Result<usize, VolatileMemoryError> {
        let mut done = 0;
        while done < buf.len() {
            let n = match self.piece(buf.len() - done) {
                Piece::End => break,
                Piece::Held(bytes) => {
                    buf.subslice(done, bytes.len())?.copy_from(bytes);
                    bytes.len()
                }
                Piece::File(n) => {
                    self.file
                        .seek(SeekFrom::Start(self.pos))
                        .map_err(VolatileMemoryError::IOError)?;
                    match self.file.read_volatile(&mut buf.subslice(done, n)?) {
                        Ok(n) => n,
                        Err(VolatileMemoryError::IOError(e))
                            if e.kind() == io::ErrorKind::Interrupted =>
                        {
                            continue
                        }
                        Err(e) => return Err(e),
                    }
                }
            };
            if n == 0 {
                // The file shrank since it was checked.
                break;
            }
            done += n;
            self.pos += n as u64;
        }
        Ok(done)
    }
}

impl Seek for CheckedImage<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = pos.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek outside the kernel image's offsets",
            )
        })?;
        Ok(self.pos)
    }
}

#[cfg(test)]
#[path = "kernel_check_tests.rs"]
mod tests;
