//! Shared by the device fuzz targets: turns fuzz input into a descriptor
//! chain in a test driver's guest memory.

use husk::vmm::devices::virtio::test_utils::{Driver, BUFFERS, MEM_SIZE};
use vm_memory::{Bytes, GuestAddress};

/// Bytes of one descriptor in the input: offset (u32), length (u16),
/// flags (u8), next (u8).
const DESC_BYTES: usize = 8;

/// Writes up to 8 descriptors of queue `q` described by the input's
/// first bytes, fills the buffer area with the rest, and makes the chain
/// at descriptor 0 available. Offsets with the top bit set are taken as
/// raw guest addresses (possibly outside memory); others are relative to
/// the buffer area.
pub fn chain_from_bytes(drv: &Driver, q: u16, data: &[u8]) {
    let Some((&count, rest)) = data.split_first() else {
        return;
    };
    let count = usize::from(count % 8) + 1;
    let (descs, payload) = rest.split_at(rest.len().min(count * DESC_BYTES));
    let room = MEM_SIZE as u64 - BUFFERS;
    let _ = drv
        .mem
        .write_slice(&payload[..payload.len().min(room as usize)], GuestAddress(BUFFERS));
    for (i, d) in descs.chunks_exact(DESC_BYTES).enumerate() {
        let off = u32::from_le_bytes([d[0], d[1], d[2], d[3]]);
        let addr = if off & 0x8000_0000 != 0 {
            u64::from(off) << 4
        } else {
            BUFFERS + u64::from(off) % room
        };
        let len = u32::from(u16::from_le_bytes([d[4], d[5]]));
        drv.desc(q, i as u16, addr, len, u16::from(d[6] & 0x7), u16::from(d[7]));
    }
    drv.make_available(q, 0);
}
