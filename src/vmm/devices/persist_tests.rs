//! Saving every device and matching the states to a restored VM's
//! devices: by kind and id, in any order, at the same windows; any other
//! set of devices is refused before a device is touched.

use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::*;
use crate::vmm::devices::virtio::mmio::{reg, status};
use crate::vmm::devices::virtio::rng::Rng;
use crate::vmm::devices::virtio::test_utils::{Driver, BUFFERS, F_WRITE};
use crate::vmm::devices::virtio::VirtioInterrupt;
use crate::vmm::devices::{BusDevice, IrqTrigger};
use crate::vmm::exit::ExitNotifier;
use crate::vmm::kvm::memory::GuestMem;

const BASE: u64 = 0xd000_0000;

fn evt() -> EventFd {
    EventFd::new(EFD_NONBLOCK).unwrap()
}

fn rng() -> Arc<Mutex<Rng>> {
    Arc::new(Mutex::new(Rng::new(&Default::default()).unwrap()))
}

fn legacy() -> LegacyHandles {
    let serial = SerialDevice::new(evt(), Box::new(std::io::sink())).unwrap();
    let exit = Arc::new(ExitNotifier::new().unwrap());
    let i8042 = I8042Device::new(IrqTrigger(evt()), exit);
    (Arc::new(Mutex::new(serial)), Arc::new(Mutex::new(i8042)))
}

fn transport(mem: &GuestMem, dev: Arc<Mutex<Rng>>) -> MmioTransport {
    let interrupt = Arc::new(VirtioInterrupt::new(IrqTrigger(evt())));
    MmioTransport::new(dev, mem.clone(), interrupt)
}

fn handle(id: &str, slot: u64, t: MmioTransport) -> VirtioHandle {
    VirtioHandle {
        kind: "virtio-rng",
        id: id.into(),
        base: BASE + slot * 0x1000,
        gsi: 5 + slot as u32,
        transport: Arc::new(Mutex::new(t)),
    }
}

fn scratch(serial: &Mutex<SerialDevice>) -> u8 {
    let mut b = [0u8];
    serial.lock().unwrap().read(7, &mut b);
    b[0]
}

fn status_of(h: &VirtioHandle) -> u32 {
    let mut b = [0u8; 4];
    h.transport.lock().unwrap().read(reg::STATUS, &mut b);
    u32::from_le_bytes(b)
}

/// A VM with the legacy devices (the UART's scratch register set) and two
/// rngs: "rng", which served two requests, and "idle", never started.
/// Returns its saved state and the driver of "rng" (for guest memory).
fn saved_vm() -> (DevicesState, Driver) {
    let (serial, i8042) = legacy();
    serial.lock().unwrap().write(7, &[0x42]);
    let a = rng();
    let mut d = Driver::new(a.clone());
    d.up(0, 1, 16);
    for head in 0..2 {
        d.desc(0, head, BUFFERS, 8, F_WRITE, 0);
        d.make_available(0, head);
        a.lock().unwrap().process_queue();
    }
    let running = std::mem::replace(&mut d.transport, transport(&d.mem, rng()));
    let handles = [
        handle("rng", 0, running),
        handle("idle", 1, transport(&d.mem, rng())),
    ];
    let state = save(Some(&(serial, i8042)), &handles);
    let bytes = postcard::to_stdvec(&state).unwrap();
    (postcard::from_bytes(&bytes).unwrap(), d)
}

#[test]
fn every_device_comes_back_by_kind_and_id() {
    let (state, d) = saved_vm();
    assert_eq!(state.virtio.len(), 2);
    let (serial, i8042) = legacy();
    let fresh = rng();
    // Listed in another order than saved: matching is by kind and id.
    let handles = [
        handle("idle", 1, transport(&d.mem, rng())),
        handle("rng", 0, transport(&d.mem, fresh.clone())),
    ];
    let legacy = (serial.clone(), i8042);
    restore(Some(&legacy), &handles, &state).unwrap();
    assert_eq!(scratch(&serial), 0x42);
    assert_ne!(status_of(&handles[1]) & status::DRIVER_OK, 0);
    assert_eq!(status_of(&handles[0]), 0);
    // The restored rng carries on: its third request is used third.
    d.desc(0, 2, BUFFERS, 8, F_WRITE, 0);
    d.make_available(0, 2);
    assert_eq!(fresh.lock().unwrap().process_queue(), 1);
    assert_eq!(d.used_idx(0), 3);
    assert_eq!(d.used(0, 2), (2, 8));
}

#[test]
fn another_set_of_devices_is_refused_before_anything_changes() {
    let (state, d) = saved_vm();
    let mem = &d.mem;
    type Build = fn(&GuestMem) -> Vec<VirtioHandle>;
    let cases: &[(&str, Build, &str)] = &[
        (
            "one missing",
            |m| vec![handle("rng", 0, transport(m, rng()))],
            "virtio-rng \"idle\", the restored VM does not",
        ),
        (
            "one more",
            |m| {
                vec![
                    handle("rng", 0, transport(m, rng())),
                    handle("idle", 1, transport(m, rng())),
                    handle("new", 2, transport(m, rng())),
                ]
            },
            "has virtio-rng \"new\", the snapshot does not",
        ),
        (
            "one renamed",
            |m| {
                vec![
                    handle("rng", 0, transport(m, rng())),
                    handle("idle2", 1, transport(m, rng())),
                ]
            },
            "\"idle\", the restored VM does not",
        ),
        (
            "two swapped",
            |m| {
                vec![
                    handle("rng", 1, transport(m, rng())),
                    handle("idle", 0, transport(m, rng())),
                ]
            },
            "virtio-rng \"rng\" is at 0xd0001000 (line 6) but was at 0xd0000000 (line 5)",
        ),
        (
            "one twice",
            |m| {
                vec![
                    handle("rng", 0, transport(m, rng())),
                    handle("idle", 1, transport(m, rng())),
                    handle("idle", 1, transport(m, rng())),
                ]
            },
            "has virtio-rng \"idle\", the snapshot does not",
        ),
    ];
    for (what, build, msg) in cases {
        let (serial, i8042) = legacy();
        let handles = build(mem);
        let err = restore(Some(&(serial.clone(), i8042)), &handles, &state)
            .expect_err(what)
            .to_string();
        assert!(err.contains(msg), "{what}: {err}");
        assert_eq!(scratch(&serial), 0, "{what}: the UART was not touched");
        assert!(handles.iter().all(|h| status_of(h) == 0), "{what}");
    }
    // Legacy devices the snapshot has and the VM lacks, and a state that
    // lists one device twice.
    let ok = || {
        vec![
            handle("rng", 0, transport(mem, rng())),
            handle("idle", 1, transport(mem, rng())),
        ]
    };
    let err = restore(None, &ok(), &state).unwrap_err().to_string();
    assert!(err.contains("legacy devices"), "{err}");
    let mut twice = state.clone();
    twice.virtio.push(twice.virtio[1].clone());
    let err = restore(Some(&legacy()), &ok(), &twice)
        .unwrap_err()
        .to_string();
    assert!(err.contains("saved twice"), "{err}");
    // A state that does not fit its device names the device.
    let mut wrong = state.clone();
    wrong.virtio[0].state.queues[0].size = 0;
    let err = restore(Some(&legacy()), &ok(), &wrong)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("virtio-rng \"rng\": queue 0: size 0"),
        "{err}"
    );
}
