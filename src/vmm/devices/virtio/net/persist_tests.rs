//! virtio-net across a snapshot: the frame the device held for want of
//! buffers is delivered by the restored device, on the rings as they
//! were, and a held frame of impossible length is refused.

use super::*;
use crate::vmm::devices::virtio::persist::{DeviceState, MmioState, VirtioPersistError};
use crate::vmm::snapshot::Persist;

/// `n` after a snapshot and restore, with a new "TAP".
fn restored(n: &Nic, state: &MmioState) -> Result<Nic, VirtioPersistError> {
    let (dev_end, peer) = UnixDatagram::pair().unwrap();
    dev_end.set_nonblocking(true).unwrap();
    peer.set_nonblocking(true).unwrap();
    let tap = Tap::from_file(File::from(OwnedFd::from(dev_end)), "test1");
    let net = Arc::new(Mutex::new(
        Net::with_tap(tap, NetOptions::default()).unwrap(),
    ));
    let mut drv = n.drv.restored(net.clone());
    drv.transport.restore(state)?;
    Ok(Nic {
        drv,
        net,
        peer,
        next: n.next,
    })
}

fn saved(n: &Nic) -> MmioState {
    let bytes = postcard::to_stdvec(&Persist::save(&n.drv.transport)).unwrap();
    postcard::from_bytes(&bytes).unwrap()
}

#[test]
fn a_frame_waiting_for_buffers_is_delivered_after_a_restore() {
    let _t = turn();
    let mut n = Nic::new(F_MRG_RXBUF | F_GUEST_CSUM, NetOptions::default());
    n.post_rx(1, 16);
    n.peer.send(&frame(100)).unwrap();
    assert_eq!(n.net().process_rx(), RxState::NeedBuffers);
    let state = saved(&n);
    let DeviceState::Net(ref s) = state.device else {
        panic!("{:?}", state.device);
    };
    assert_eq!(s.rx_frame.len(), 112);
    let mut m = restored(&n, &state).unwrap();
    assert!(m.net().has_pending_frame());
    assert_eq!(
        m.net().offloads(),
        Some(tap_offloads(F_MRG_RXBUF | F_GUEST_CSUM)),
        "the TAP is set up as on DRIVER_OK"
    );
    m.post_rx(6, 16);
    assert_eq!(m.net().process_rx(), RxState::Watch);
    assert!(!m.net().has_pending_frame());
    assert_eq!(m.drv.used_idx(RX), 7);
    assert_eq!(&m.read(rx_buf(0), 12)[10..12], &7u16.to_le_bytes());
    // Transmit goes to the new TAP.
    let f = frame(20);
    m.drv.mem.write_slice(&f, GuestAddress(BUFFERS)).unwrap();
    m.post(TX, &[(BUFFERS, f.len() as u32, 0)]);
    assert_eq!(m.net().process_tx(), 1);
    assert_eq!(m.sent().unwrap(), f);
}

#[test]
fn a_held_frame_of_impossible_length_is_refused() {
    let _t = turn();
    let n = Nic::new(0, NetOptions::default());
    let mut state = saved(&n);
    for len in [5, super::super::MAX_FRAME_LEN + 1] {
        state.device = DeviceState::Net(super::super::NetState {
            rx_frame: vec![0; len],
            ..Default::default()
        });
        let err = restored(&n, &state).err().unwrap().to_string();
        assert!(err.contains("impossible length"), "{err}");
    }
}
