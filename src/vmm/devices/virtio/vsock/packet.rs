//! The virtio-vsock packet: a 44-byte `virtio_vsock_hdr` (virtio 1.2,
//! section 5.10.6), then `len` bytes of payload.
//!
//! [`parse`] is a pure function over the bytes a driver sent, so it can
//! be fuzzed alone; [`read_tx`] gathers those bytes from a TX chain and
//! [`RxBuffer`] writes a packet into an RX chain. Every length the guest
//! gives is checked against the chain and capped at [`MAX_PAYLOAD`].

use std::io::{Read, Write};

use crate::vmm::kvm::memory::{ChainWriter, GuestMem};
use virtio_queue::{DescriptorChain, Reader, Writer};

/// Bytes of `virtio_vsock_hdr`.
pub const HDR_LEN: usize = 44;
/// The largest payload a packet may carry (Linux's
/// VIRTIO_VSOCK_MAX_PKT_BUF_SIZE).
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// The host's context id.
pub const HOST_CID: u64 = 2;
/// The only socket type offered (VIRTIO_VSOCK_F_SEQPACKET is not).
pub const TYPE_STREAM: u16 = 1;

pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;

/// SHUTDOWN flags: the sender will receive no more, send no more.
pub const SHUTDOWN_RCV: u32 = 1;
pub const SHUTDOWN_SEND: u32 = 2;

/// `virtio_vsock_hdr`, all fields little-endian on the wire.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

fn u16_at(b: &[u8; HDR_LEN], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8; HDR_LEN], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8; HDR_LEN], at: usize) -> u64 {
    u64::from(u32_at(b, at)) | u64::from(u32_at(b, at + 4)) << 32
}

impl Header {
    pub fn from_bytes(b: &[u8; HDR_LEN]) -> Header {
        Header {
            src_cid: u64_at(b, 0),
            dst_cid: u64_at(b, 8),
            src_port: u32_at(b, 16),
            dst_port: u32_at(b, 20),
            len: u32_at(b, 24),
            type_: u16_at(b, 28),
            op: u16_at(b, 30),
            flags: u32_at(b, 32),
            buf_alloc: u32_at(b, 36),
            fwd_cnt: u32_at(b, 40),
        }
    }

    pub fn to_bytes(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("{0} bytes cannot hold a vsock header")]
    ShortHeader(usize),
    #[error("payload length {0} is more than the {MAX_PAYLOAD} bytes allowed")]
    TooLarge(u32),
    #[error("payload length {len} is beyond the {avail} bytes the chain holds")]
    BeyondChain { len: u32, avail: usize },
    #[error("a descriptor is outside guest memory")]
    Memory,
}

/// Parses a packet from the bytes of a TX chain: the header, then exactly
/// `len` bytes of payload (anything after them is ignored, as Linux does).
pub fn parse(bytes: &[u8]) -> Result<(Header, &[u8]), PacketError> {
    let head: &[u8; HDR_LEN] = bytes
        .get(..HDR_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or(PacketError::ShortHeader(bytes.len()))?;
    let hdr = Header::from_bytes(head);
    let len = hdr.len as usize;
    if len > MAX_PAYLOAD {
        return Err(PacketError::TooLarge(hdr.len));
    }
    let rest = &bytes[HDR_LEN..];
    let payload = rest.get(..len).ok_or(PacketError::BeyondChain {
        len: hdr.len,
        avail: rest.len(),
    })?;
    Ok((hdr, payload))
}

/// Gathers a TX packet from the device-readable part of `chain` into
/// `buf` (at most a header and [`MAX_PAYLOAD`] bytes are copied, whatever
/// the chain claims) and parses it.
pub fn read_tx<'b>(
    mem: &GuestMem,
    chain: DescriptorChain<&GuestMem>,
    buf: &'b mut Vec<u8>,
) -> Result<(Header, &'b [u8]), PacketError> {
    let mut reader = Reader::new(mem, chain).map_err(|_| PacketError::Memory)?;
    buf.clear();
    let avail = reader.available_bytes();
    if avail < HDR_LEN {
        return Err(PacketError::ShortHeader(avail));
    }
    let mut head = [0u8; HDR_LEN];
    reader
        .read_exact(&mut head)
        .map_err(|_| PacketError::Memory)?;
    buf.extend_from_slice(&head);
    // One byte past the limit is enough to tell "too large" from "fits".
    let want = (Header::from_bytes(&head).len as usize)
        .min(MAX_PAYLOAD + 1)
        .min(avail - HDR_LEN);
    buf.resize(HDR_LEN + want, 0);
    reader
        .read_exact(&mut buf[HDR_LEN..])
        .map_err(|_| PacketError::Memory)?;
    parse(buf)
}

/// An RX chain the device fills with one packet.
pub struct RxBuffer<'a> {
    writer: ChainWriter<'a>,
}

impl<'a> RxBuffer<'a> {
    /// Fails when the chain's writable part is outside guest memory or
    /// too short for a header.
    pub fn new(
        mem: &'a GuestMem,
        chain: DescriptorChain<&'a GuestMem>,
    ) -> Result<Self, PacketError> {
        let writer = Writer::new(mem, chain).map_err(|_| PacketError::Memory)?;
        let room = writer.available_bytes();
        if room < HDR_LEN {
            return Err(PacketError::ShortHeader(room));
        }
        Ok(RxBuffer { writer })
    }

    /// How many payload bytes fit after the header.
    pub fn payload_room(&self) -> usize {
        (self.writer.available_bytes() - HDR_LEN).min(MAX_PAYLOAD)
    }

    /// Writes `hdr` (its `len` set to the payload's) and `payload`, which
    /// must fit; returns the used length.
    pub fn write(&mut self, hdr: &Header, payload: &[u8]) -> Result<u32, PacketError> {
        let payload = &payload[..payload.len().min(self.payload_room())];
        let mut hdr = *hdr;
        hdr.len = payload.len() as u32;
        self.writer
            .write_all(&hdr.to_bytes())
            .and_then(|_| self.writer.write_all(payload))
            .map_err(|_| PacketError::Memory)?;
        Ok((HDR_LEN + payload.len()) as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(len_field: u32, payload: &[u8]) -> Vec<u8> {
        let h = Header {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 1000,
            dst_port: 5678,
            len: len_field,
            type_: TYPE_STREAM,
            op: OP_RW,
            flags: 0,
            buf_alloc: 4096,
            fwd_cnt: 7,
        };
        let mut v = h.to_bytes().to_vec();
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn the_header_round_trips_in_the_wire_layout() {
        let b = packet(5, b"hello");
        assert_eq!(&b[0..8], &3u64.to_le_bytes());
        assert_eq!(&b[24..28], &5u32.to_le_bytes());
        assert_eq!(&b[30..32], &OP_RW.to_le_bytes());
        let (h, p) = parse(&b).unwrap();
        assert_eq!(h.to_bytes().to_vec(), b[..HDR_LEN].to_vec());
        assert_eq!((h.src_port, h.dst_port, h.fwd_cnt), (1000, 5678, 7));
        assert_eq!(p, b"hello");
    }

    #[test]
    fn hostile_lengths_are_refused() {
        assert_eq!(parse(&[0u8; 43]), Err(PacketError::ShortHeader(43)));
        assert_eq!(parse(&[]), Err(PacketError::ShortHeader(0)));
        assert_eq!(
            parse(&packet(6, b"hello")),
            Err(PacketError::BeyondChain { len: 6, avail: 5 })
        );
        assert_eq!(
            parse(&packet(u32::MAX, b"x")),
            Err(PacketError::TooLarge(u32::MAX))
        );
        let big = vec![0u8; MAX_PAYLOAD + 1];
        assert_eq!(
            parse(&packet(big.len() as u32, &big)),
            Err(PacketError::TooLarge(big.len() as u32))
        );
        // Bytes past `len` are not part of the payload.
        let b = packet(2, b"hello");
        assert_eq!(parse(&b).unwrap().1, b"he");
    }
}
