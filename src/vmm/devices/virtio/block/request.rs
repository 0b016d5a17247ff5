//! One virtio-blk request: parse the chain (header, data, status byte),
//! carry it out on the disk, and report the status. Everything the guest
//! sends is checked: the header's size, the data's length (whole sectors),
//! every sector range against the disk's size, and writes against a
//! read-only drive. A chain with no room for the status byte is answered
//! with nothing (used length 0).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use crate::vmm::kvm::memory::{ChainReader, ChainWriter, GuestMem};
use virtio_queue::{DescriptorChain, Reader, Writer};
use vm_memory::ByteValued;

pub const SECTOR_SIZE: u64 = 512;
pub const T_IN: u32 = 0;
pub const T_OUT: u32 = 1;
pub const T_FLUSH: u32 = 4;
pub const T_GET_ID: u32 = 8;
pub const T_DISCARD: u32 = 11;
pub const T_WRITE_ZEROES: u32 = 13;
pub const S_OK: u8 = 0;
pub const S_IOERR: u8 = 1;
pub const S_UNSUPP: u8 = 2;
/// Bytes of the GET_ID answer.
pub const ID_BYTES: usize = 20;
/// Segments one DISCARD or WRITE_ZEROES request may carry.
pub const MAX_SEGMENTS: usize = 1;
const WRITE_ZEROES_UNMAP: u32 = 1;
const CHUNK: usize = 64 * 1024;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestHeader {
    pub request_type: u32,
    pub reserved: u32,
    pub sector: u64,
}
// SAFETY: plain old data, every bit pattern valid.
unsafe impl ByteValued for RequestHeader {}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Segment {
    pub sector: u64,
    pub num_sectors: u32,
    pub flags: u32,
}
// SAFETY: plain old data, every bit pattern valid.
unsafe impl ByteValued for Segment {}

/// The backing file and how to use it.
pub struct Disk {
    pub file: File,
    /// Size in bytes, a whole number of sectors.
    pub size: u64,
    pub read_only: bool,
    /// FLUSH reaches the disk (`fdatasync`) only in Writeback mode.
    pub writeback: bool,
    pub id: [u8; ID_BYTES],
}

/// What a request did, for the used ring and the metrics.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Bytes written into the guest's buffers (data and status).
    pub used_len: u32,
    pub status: Option<u8>,
    pub read_bytes: u64,
    pub written_bytes: u64,
}

/// Carries out the request in `chain`.
pub fn execute<T>(mem: &GuestMem, chain: DescriptorChain<T>, disk: &Disk) -> Outcome
where
    T: std::ops::Deref<Target = GuestMem> + Clone,
{
    let (Ok(mut reader), Ok(mut writer)) =
        (Reader::new(mem, chain.clone()), Writer::new(mem, chain))
    else {
        // A buffer outside guest memory, or lengths that overflow.
        return Outcome::default();
    };
    let room = writer.available_bytes();
    if room == 0 {
        // No device-writable byte for the status: nothing can be said.
        return Outcome::default();
    }
    let Ok(mut status_w) = writer.split_at(room - 1) else {
        return Outcome::default();
    };
    let mut out = Outcome::default();
    let status = match reader.read_obj::<RequestHeader>() {
        Ok(h) => run(&h, &mut reader, &mut writer, disk, &mut out),
        Err(_) => S_IOERR,
    };
    let _ = status_w.write_all(&[status]);
    out.status = Some(status);
    out.used_len = (writer.bytes_written() + 1) as u32;
    out
}

fn run(
    h: &RequestHeader,
    reader: &mut ChainReader<'_>,
    writer: &mut ChainWriter<'_>,
    disk: &Disk,
    out: &mut Outcome,
) -> u8 {
    let result = match h.request_type {
        T_IN => read(h.sector, writer, disk, out),
        T_OUT => write(h.sector, reader, disk, out),
        T_FLUSH => flush(disk),
        T_GET_ID => {
            let n = ID_BYTES.min(writer.available_bytes());
            writer.write_all(&disk.id[..n]).map_err(|_| S_IOERR)
        }
        T_DISCARD | T_WRITE_ZEROES => segments(h.request_type, reader, disk),
        _ => Err(S_UNSUPP),
    };
    match result {
        Ok(()) => S_OK,
        Err(s) => s,
    }
}

/// The byte offset of `len` bytes from `sector`, if they lie on the disk
/// (whole sectors only).
pub(super) fn checked_range(sector: u64, len: u64, disk: &Disk) -> Result<u64, u8> {
    if !len.is_multiple_of(SECTOR_SIZE) {
        return Err(S_IOERR);
    }
    let start = sector.checked_mul(SECTOR_SIZE).ok_or(S_IOERR)?;
    let end = start.checked_add(len).ok_or(S_IOERR)?;
    if end > disk.size {
        return Err(S_IOERR);
    }
    Ok(start)
}

fn read(
    sector: u64,
    writer: &mut ChainWriter<'_>,
    disk: &Disk,
    out: &mut Outcome,
) -> Result<(), u8> {
    let len = writer.available_bytes() as u64;
    let mut at = checked_range(sector, len, disk)?;
    let mut buf = vec![0u8; CHUNK.min(len as usize)];
    let mut left = len as usize;
    while left > 0 {
        let n = left.min(buf.len());
        disk.file
            .read_exact_at(&mut buf[..n], at)
            .map_err(|_| S_IOERR)?;
        writer.write_all(&buf[..n]).map_err(|_| S_IOERR)?;
        at += n as u64;
        left -= n;
        out.read_bytes += n as u64;
    }
    Ok(())
}

fn write(
    sector: u64,
    reader: &mut ChainReader<'_>,
    disk: &Disk,
    out: &mut Outcome,
) -> Result<(), u8> {
    if disk.read_only {
        return Err(S_IOERR);
    }
    let len = reader.available_bytes() as u64;
    let mut at = checked_range(sector, len, disk)?;
    let mut buf = vec![0u8; CHUNK.min(len as usize)];
    let mut left = len as usize;
    while left > 0 {
        let n = left.min(buf.len());
        reader.read_exact(&mut buf[..n]).map_err(|_| S_IOERR)?;
        disk.file.write_all_at(&buf[..n], at).map_err(|_| S_IOERR)?;
        at += n as u64;
        left -= n;
        out.written_bytes += n as u64;
    }
    Ok(())
}

fn flush(disk: &Disk) -> Result<(), u8> {
    if disk.writeback && !disk.read_only {
        disk.file.sync_data().map_err(|_| S_IOERR)?;
    }
    Ok(())
}

fn segments(kind: u32, reader: &mut ChainReader<'_>, disk: &Disk) -> Result<(), u8> {
    if disk.read_only {
        return Err(S_IOERR);
    }
    let count = reader.available_bytes() / std::mem::size_of::<Segment>();
    if count == 0 || count > MAX_SEGMENTS {
        return Err(S_UNSUPP);
    }
    for _ in 0..count {
        let seg: Segment = reader.read_obj().map_err(|_| S_IOERR)?;
        let len = u64::from(seg.num_sectors) * SECTOR_SIZE;
        let start = checked_range(seg.sector, len, disk)?;
        if kind == T_DISCARD {
            // Discard is advisory: a file system that cannot punch holes
            // keeps the data, and the guest is still told OK.
            let _ = fallocate(disk, libc::FALLOC_FL_PUNCH_HOLE, start, len);
        } else {
            write_zeroes(disk, start, len, seg.flags & WRITE_ZEROES_UNMAP != 0)?;
        }
    }
    Ok(())
}

fn write_zeroes(disk: &Disk, start: u64, len: u64, unmap: bool) -> Result<(), u8> {
    let mode = if unmap {
        libc::FALLOC_FL_PUNCH_HOLE
    } else {
        libc::FALLOC_FL_ZERO_RANGE
    };
    if fallocate(disk, mode, start, len).is_ok() {
        return Ok(());
    }
    // No hole punching here: write the zeros.
    let zeros = vec![0u8; CHUNK];
    let mut at = start;
    let end = start + len;
    while at < end {
        let n = (end - at).min(CHUNK as u64) as usize;
        disk.file
            .write_all_at(&zeros[..n], at)
            .map_err(|_| S_IOERR)?;
        at += n as u64;
    }
    Ok(())
}

fn fallocate(disk: &Disk, mode: libc::c_int, start: u64, len: u64) -> std::io::Result<()> {
    let (Ok(off), Ok(len)) = (libc::off_t::try_from(start), libc::off_t::try_from(len)) else {
        return Err(std::io::ErrorKind::InvalidInput.into());
    };
    // SAFETY: fallocate on a file descriptor we own; no memory is passed.
    let r = unsafe {
        libc::fallocate(
            disk.file.as_raw_fd(),
            mode | libc::FALLOC_FL_KEEP_SIZE,
            off,
            len,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
