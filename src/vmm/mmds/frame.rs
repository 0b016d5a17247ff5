//! The Ethernet and ARP layer of the MMDS network stack, written by hand
//! because it is tiny and because MMDS answers the way Firecracker's does:
//! an ARP request for the MMDS address is answered from MMDS's own MAC,
//! and IPv4 replies go back to the MAC the guest last sent from, whatever
//! subnet the guest is on (no ARP request of MMDS's own, no neighbour
//! table for a guest to fill). Above this, smoltcp sees bare IPv4
//! packets.

use std::net::Ipv4Addr;

/// MMDS's own MAC address (Firecracker's).
pub const MMDS_MAC: [u8; 6] = [0x06, 0x01, 0x23, 0x45, 0x67, 0x01];
pub const ETH_HDR: usize = 14;
pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// An ARP packet for IPv4 over Ethernet.
pub const ARP_LEN: usize = 28;
/// virtio_net_hdr flag: the checksum from `csum_start` is left to the
/// device.
const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("the virtio-net header's checksum offsets point outside the frame")]
    ChecksumOffsets,
}

/// The ethertype of an Ethernet frame (no VLAN tags: MMDS answers
/// untagged frames only).
pub fn ethertype(frame: &[u8]) -> Option<u16> {
    frame.get(12..14).map(|b| u16::from_be_bytes([b[0], b[1]]))
}

/// Whether `frame` is addressed to MMDS at `ip`: an ARP packet whose
/// target address is `ip`, or an IPv4 packet whose destination is. Only
/// the fields needed are read; the frame may be malformed otherwise.
pub fn is_for(frame: &[u8], ip: Ipv4Addr) -> bool {
    let at = |off: usize| frame.get(off..off + 4).map(|b| b == ip.octets());
    match ethertype(frame) {
        Some(ETHERTYPE_ARP) => at(ETH_HDR + 24) == Some(true),
        Some(ETHERTYPE_IPV4) => at(ETH_HDR + 16) == Some(true),
        _ => false,
    }
}

/// The fields of an ARP request MMDS answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArpRequest {
    pub sender_mac: [u8; 6],
    pub sender_ip: [u8; 4],
}

/// An ARP request (IPv4 over Ethernet, operation 1), from its payload.
pub fn arp_request(p: &[u8]) -> Option<ArpRequest> {
    if p.len() < ARP_LEN || p[0..8] != [0, 1, 0x08, 0x00, 6, 4, 0, 1] {
        return None;
    }
    let mut r = ArpRequest {
        sender_mac: [0; 6],
        sender_ip: [0; 4],
    };
    r.sender_mac.copy_from_slice(&p[8..14]);
    r.sender_ip.copy_from_slice(&p[14..18]);
    Some(r)
}

/// Writes an Ethernet header.
pub fn write_eth(buf: &mut [u8], dst: [u8; 6], src: [u8; 6], ethertype: u16) {
    buf[0..6].copy_from_slice(&dst);
    buf[6..12].copy_from_slice(&src);
    buf[12..14].copy_from_slice(&ethertype.to_be_bytes());
}

/// Writes the ARP reply to `to` (MMDS at `ip` is at [`MMDS_MAC`]) into
/// `buf`; returns its length, or None when `buf` is too small.
pub fn write_arp_reply(buf: &mut [u8], ip: Ipv4Addr, to: ArpRequest) -> Option<usize> {
    let len = ETH_HDR + ARP_LEN;
    let buf = buf.get_mut(..len)?;
    write_eth(buf, to.sender_mac, MMDS_MAC, ETHERTYPE_ARP);
    let arp = &mut buf[ETH_HDR..];
    arp[0..8].copy_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 2]);
    arp[8..14].copy_from_slice(&MMDS_MAC);
    arp[14..18].copy_from_slice(&ip.octets());
    arp[18..24].copy_from_slice(&to.sender_mac);
    arp[24..28].copy_from_slice(&to.sender_ip);
    Some(len)
}

/// The Internet checksum's ones'-complement sum of `data`, folded.
fn ones_sum(data: &[u8], mut sum: u32) -> u16 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [b] = chunks.remainder() {
        sum += u32::from(*b) << 8;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Completes a checksum the guest left to the device (the virtio-net
/// header's NEEDS_CSUM: the field at `csum_start + csum_offset` holds the
/// pseudo-header sum, the rest is to be summed from `csum_start` to
/// `end`). A frame without the flag is left as it is.
pub fn complete_checksum(vnet_hdr: &[u8], frame: &mut [u8], end: usize) -> Result<(), FrameError> {
    if vnet_hdr
        .first()
        .is_none_or(|f| f & VIRTIO_NET_HDR_F_NEEDS_CSUM == 0)
    {
        return Ok(());
    }
    let word = |at: usize| {
        vnet_hdr
            .get(at..at + 2)
            .map(|b| usize::from(u16::from_le_bytes([b[0], b[1]])))
            .ok_or(FrameError::ChecksumOffsets)
    };
    let (start, offset) = (word(6)?, word(8)?);
    let end = end.min(frame.len());
    let field = start
        .checked_add(offset)
        .ok_or(FrameError::ChecksumOffsets)?;
    if start >= end || field + 2 > end {
        return Err(FrameError::ChecksumOffsets);
    }
    let sum = !ones_sum(&frame[start..end], 0);
    frame[field..field + 2].copy_from_slice(&sum.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

    fn arp_frame(tpa: [u8; 4]) -> Vec<u8> {
        let mut f = vec![0u8; ETH_HDR + ARP_LEN];
        write_eth(&mut f, [0xff; 6], [2, 0, 0, 0, 0, 1], ETHERTYPE_ARP);
        f[ETH_HDR..ETH_HDR + 8].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        f[ETH_HDR + 8..ETH_HDR + 14].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        f[ETH_HDR + 14..ETH_HDR + 18].copy_from_slice(&[10, 0, 0, 2]);
        f[ETH_HDR + 24..ETH_HDR + 28].copy_from_slice(&tpa);
        f
    }

    #[test]
    fn arp_for_mmds_is_answered_from_its_mac() {
        let f = arp_frame(IP.octets());
        assert!(is_for(&f, IP));
        assert!(!is_for(&arp_frame([10, 0, 0, 1]), IP));
        assert!(!is_for(&f[..30], IP));
        let req = arp_request(&f[ETH_HDR..]).unwrap();
        let mut buf = [0u8; 64];
        let n = write_arp_reply(&mut buf, IP, req).unwrap();
        assert_eq!(n, 42);
        assert_eq!(&buf[0..6], &[2, 0, 0, 0, 0, 1]);
        assert_eq!(&buf[6..12], &MMDS_MAC);
        assert_eq!(&buf[ETH_HDR + 6..ETH_HDR + 8], &[0, 2]);
        assert_eq!(&buf[ETH_HDR + 14..ETH_HDR + 18], &IP.octets());
        assert_eq!(&buf[ETH_HDR + 24..ETH_HDR + 28], &[10, 0, 0, 2]);
        // A reply, or another protocol, is not a request.
        let mut reply = f.clone();
        reply[ETH_HDR + 7] = 2;
        assert_eq!(arp_request(&reply[ETH_HDR..]), None);
        assert!(write_arp_reply(&mut [0u8; 41], IP, req).is_none());
    }

    #[test]
    fn partial_checksums_are_completed() {
        // A UDP-like payload: the field at 4..6 holds a seed sum.
        let data = [0x12u8, 0x34, 0x56, 0x78, 0x00, 0x10, 0x9a];
        let mut frame = data.to_vec();
        let mut hdr = [0u8; 12];
        hdr[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM;
        hdr[6..8].copy_from_slice(&0u16.to_le_bytes());
        hdr[8..10].copy_from_slice(&4u16.to_le_bytes());
        complete_checksum(&hdr, &mut frame, data.len()).unwrap();
        // With the seed (the pseudo-header's sum, which the guest put in
        // the field) the sum over the data and its checksum is 0xffff.
        assert_eq!(ones_sum(&frame, 0x0010), 0xffff);
        hdr[8..10].copy_from_slice(&6u16.to_le_bytes());
        assert!(complete_checksum(&hdr, &mut frame, data.len()).is_err());
        // No flag: untouched.
        let mut frame2 = data.to_vec();
        complete_checksum(&[0u8; 12], &mut frame2, 7).unwrap();
        assert_eq!(frame2, data);
    }
}
