//! virtio-mem's wire format (virtio 1.x, section 5.15.6): requests,
//! responses and the configuration space, all little-endian.

use vm_memory::ByteValued;

pub const REQ_PLUG: u16 = 0;
pub const REQ_UNPLUG: u16 = 1;
pub const REQ_UNPLUG_ALL: u16 = 2;
pub const REQ_STATE: u16 = 3;

/// Done.
pub const RESP_ACK: u16 = 0;
/// Refused: plugging would pass the requested size.
pub const RESP_NACK: u16 = 1;
/// Not now: the host could not (un)map the memory; try again later.
pub const RESP_BUSY: u16 = 2;
/// A bad request: unaligned, outside the usable region, blocks in the
/// wrong state, an unknown type.
pub const RESP_ERROR: u16 = 3;

pub const STATE_PLUGGED: u16 = 0;
pub const STATE_UNPLUGGED: u16 = 1;
pub const STATE_MIXED: u16 = 2;

/// Unplugged memory must not be touched: the device may keep it out of
/// the guest (offered, and required, as Firecracker does).
pub const VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE: u64 = 1 << 1;

/// `struct virtio_mem_req`: a type, padding, then (for every type but
/// UNPLUG_ALL) the range.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Request {
    pub req_type: u16,
    pub padding: [u16; 3],
    pub addr: u64,
    pub nb_blocks: u16,
    pub padding2: [u16; 3],
}
// SAFETY: plain old data without padding, every bit pattern valid.
unsafe impl ByteValued for Request {}

/// `struct virtio_mem_resp`: a type, padding, and a STATE answer's
/// state.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Response {
    pub resp_type: u16,
    pub padding: [u16; 3],
    pub state: u16,
}
// SAFETY: plain old data without padding, every bit pattern valid.
unsafe impl ByteValued for Response {}

pub const REQUEST_LEN: usize = std::mem::size_of::<Request>();
pub const RESPONSE_LEN: usize = std::mem::size_of::<Response>();

impl Response {
    pub fn new(resp_type: u16) -> Self {
        Response {
            resp_type: resp_type.to_le(),
            ..Default::default()
        }
    }

    pub fn with_state(state: u16) -> Self {
        Response {
            resp_type: RESP_ACK.to_le(),
            state: state.to_le(),
            ..Default::default()
        }
    }
}

/// `struct virtio_mem_config`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    pub block_size: u64,
    pub node_id: u16,
    pub padding: [u8; 6],
    pub addr: u64,
    pub region_size: u64,
    pub usable_region_size: u64,
    pub plugged_size: u64,
    pub requested_size: u64,
}
// SAFETY: plain old data without padding, every bit pattern valid.
unsafe impl ByteValued for Config {}

impl Config {
    /// The bytes the driver reads.
    pub fn to_le_bytes(self) -> [u8; std::mem::size_of::<Config>()] {
        let le = Config {
            block_size: self.block_size.to_le(),
            node_id: self.node_id.to_le(),
            padding: [0; 6],
            addr: self.addr.to_le(),
            region_size: self.region_size.to_le(),
            usable_region_size: self.usable_region_size.to_le(),
            plugged_size: self.plugged_size.to_le(),
            requested_size: self.requested_size.to_le(),
        };
        let mut out = [0u8; std::mem::size_of::<Config>()];
        out.copy_from_slice(le.as_slice());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_linux() {
        assert_eq!(REQUEST_LEN, 24);
        assert_eq!(RESPONSE_LEN, 10);
        assert_eq!(std::mem::size_of::<Config>(), 56);
        let c = Config {
            block_size: 2 << 20,
            addr: 512 << 30,
            requested_size: 7,
            ..Default::default()
        };
        let b = c.to_le_bytes();
        assert_eq!(b[0..8], (2u64 << 20).to_le_bytes());
        assert_eq!(b[16..24], (512u64 << 30).to_le_bytes());
        assert_eq!(b[48..56], 7u64.to_le_bytes());
    }
}
