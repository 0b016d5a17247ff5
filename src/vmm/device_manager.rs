//! The device manager: it owns the port-I/O and MMIO buses, hands out MMIO
//! windows and interrupt lines (GSIs), wires irqfds, keeps the list of
//! devices (for `GET /vm/config`, metrics and snapshots) and writes the
//! `virtio_mmio.device=` entries a kernel needs to find each virtio-mmio
//! device. It saves and restores every device's state
//! ([`save`](DeviceManager::save), [`restore`](DeviceManager::restore);
//! the states and their matching are in `devices/persist.rs`).
//!
//! Devices are attached while the VM is built, before any vCPU exists;
//! then the buses are frozen and shared with the vCPU threads.

use std::sync::{Arc, Mutex};

use crate::vmm::kvm::memory::GuestMem;
use event_manager::{MutEventSubscriber, SubscriberId, SubscriberOps};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::vmm::arch::x86_64::layout::{
    MMIO_DEVICES_END, MMIO_DEVICES_START, MMIO_WINDOW_SIZE, VIRTIO_GSI_FIRST, VIRTIO_GSI_LAST,
};
use crate::vmm::devices::bus::SharedDevice;
use crate::vmm::devices::legacy::{I8042Device, SerialDevice};
use crate::vmm::devices::persist::{self, LegacyHandles, VirtioHandle};
pub use crate::vmm::devices::persist::{DevicePersistError, DevicesState};
use crate::vmm::devices::virtio::mmio::{reg, MmioTransport};
use crate::vmm::devices::virtio::{VirtioDevice, VirtioInterrupt};
use crate::vmm::devices::{Bus, BusError, IrqTrigger};
use crate::vmm::kvm::{Vm, VmError};
use crate::vmm::EventLoop;

#[derive(Debug, thiserror::Error)]
pub enum DeviceManagerError {
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error("cannot create an event fd: {0}")]
    EventFd(std::io::Error),
    #[error("no MMIO window is left for device {0:?}")]
    NoMmioWindow(String),
    #[error("no interrupt line is left for device {0:?}")]
    NoGsi(String),
    #[error("devices cannot be attached once the vCPUs exist")]
    Frozen,
    #[error("KVM_IOEVENTFD failed for device {id:?} queue {queue}: {err}")]
    Ioeventfd {
        id: String,
        queue: u32,
        err: kvm_ioctls::Error,
    },
}

type Result<T> = std::result::Result<T, DeviceManagerError>;

/// Where a device sits and how it interrupts the guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// What it is ("serial", "i8042", "virtio-blk", ...).
    pub kind: &'static str,
    /// Its id in the configuration (drive_id, iface_id; the kind for
    /// singletons).
    pub id: String,
    pub bus: BusKind,
    pub base: u64,
    pub len: u64,
    pub gsi: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BusKind {
    Io,
    Mmio,
}

/// The buses and what is on them.
pub struct DeviceManager {
    io_bus: Arc<Bus>,
    mmio_bus: Arc<Bus>,
    next_mmio: u64,
    next_gsi: u32,
    devices: Vec<DeviceInfo>,
    /// The devices a snapshot saves, virtio ones in attach order.
    legacy: Option<LegacyHandles>,
    virtio: Vec<VirtioHandle>,
    /// What the devices subscribed to the event loop, so a build that
    /// fails half way can take it all out again.
    subscribers: Vec<SubscriberId>,
}

impl Default for DeviceManager {
    fn default() -> Self {
        Self::new()
    }
}

impl DeviceManager {
    pub fn new() -> Self {
        DeviceManager {
            io_bus: Arc::new(Bus::new()),
            mmio_bus: Arc::new(Bus::new()),
            next_mmio: MMIO_DEVICES_START,
            next_gsi: VIRTIO_GSI_FIRST,
            devices: Vec::new(),
            legacy: None,
            virtio: Vec::new(),
            subscribers: Vec::new(),
        }
    }

    /// An eventfd wired to `gsi` of the in-kernel irqchip.
    pub fn irq_line(vm: &Vm, gsi: u32) -> Result<IrqTrigger> {
        let evt = EventFd::new(EFD_NONBLOCK).map_err(DeviceManagerError::EventFd)?;
        vm.register_irqfd(&evt, gsi)?;
        Ok(IrqTrigger(evt))
    }

    /// Puts a legacy device at a fixed port range.
    pub fn attach_io(
        &mut self,
        kind: &'static str,
        device: SharedDevice,
        base: u64,
        len: u64,
        gsi: Option<u32>,
    ) -> Result<()> {
        Arc::get_mut(&mut self.io_bus)
            .ok_or(DeviceManagerError::Frozen)?
            .insert(device, base, len)?;
        self.devices.push(DeviceInfo {
            kind,
            id: kind.to_string(),
            bus: BusKind::Io,
            base,
            len,
            gsi,
        });
        Ok(())
    }

    /// The next free MMIO window and interrupt line, for device `id`.
    pub fn allocate_mmio(&mut self, id: &str) -> Result<(u64, u32)> {
        let base = self.next_mmio;
        if base + MMIO_WINDOW_SIZE > MMIO_DEVICES_END {
            return Err(DeviceManagerError::NoMmioWindow(id.into()));
        }
        let gsi = self.next_gsi;
        if gsi > VIRTIO_GSI_LAST {
            return Err(DeviceManagerError::NoGsi(id.into()));
        }
        self.next_mmio += MMIO_WINDOW_SIZE;
        self.next_gsi += 1;
        Ok((base, gsi))
    }

    /// Puts a device in an MMIO window from [`allocate_mmio`](Self::allocate_mmio).
    pub fn attach_mmio(
        &mut self,
        kind: &'static str,
        id: &str,
        device: SharedDevice,
        (base, gsi): (u64, u32),
    ) -> Result<()> {
        Arc::get_mut(&mut self.mmio_bus)
            .ok_or(DeviceManagerError::Frozen)?
            .insert(device, base, MMIO_WINDOW_SIZE)?;
        self.devices.push(DeviceInfo {
            kind,
            id: id.to_string(),
            bus: BusKind::Mmio,
            base,
            len: MMIO_WINDOW_SIZE,
            gsi: Some(gsi),
        });
        Ok(())
    }

    /// Puts `device` on the MMIO bus over `[base, base + len)`, a range
    /// of guest-physical memory whose accesses exit to the VMM (a
    /// read-only pmem window's writes, unplugged hotpluggable memory).
    /// It is not a virtio-mmio window: no command-line entry, no GSI.
    pub fn attach_memory_window(
        &mut self,
        device: SharedDevice,
        base: u64,
        len: u64,
    ) -> Result<()> {
        Arc::get_mut(&mut self.mmio_bus)
            .ok_or(DeviceManagerError::Frozen)?
            .insert(device, base, len)?;
        Ok(())
    }

    /// Makes guest writes of `queue` to `addr` signal `evt` in the kernel,
    /// without a vCPU exit (a virtio queue notification).
    pub fn register_notify(vm: &Vm, id: &str, evt: &EventFd, addr: u64, queue: u32) -> Result<()> {
        vm.fd()
            .register_ioevent(evt, &kvm_ioctls::IoEventAddress::Mmio(addr), queue)
            .map_err(|err| DeviceManagerError::Ioeventfd {
                id: id.into(),
                queue,
                err,
            })
    }

    /// Attaches a virtio device: an MMIO window and interrupt line, the
    /// shared transport, one ioeventfd per queue on QueueNotify, and the
    /// device itself as a subscriber of the event loop.
    pub fn attach_virtio<D>(
        &mut self,
        vm: &Vm,
        mem: &GuestMem,
        events: &mut EventLoop,
        kind: &'static str,
        id: &str,
        device: Arc<Mutex<D>>,
    ) -> Result<Arc<Mutex<MmioTransport>>>
    where
        D: VirtioDevice + MutEventSubscriber + 'static,
    {
        let window = self.allocate_mmio(id)?;
        let (base, gsi) = window;
        let interrupt = Arc::new(VirtioInterrupt::new(Self::irq_line(vm, gsi)?));
        {
            let dev = device.lock().unwrap_or_else(|e| e.into_inner());
            for (queue, evt) in dev.queue_events().iter().enumerate() {
                Self::register_notify(vm, id, evt, base + reg::QUEUE_NOTIFY, queue as u32)?;
            }
        }
        let transport = Arc::new(Mutex::new(MmioTransport::new(
            device.clone(),
            mem.clone(),
            interrupt,
        )));
        self.attach_mmio(kind, id, transport.clone(), window)?;
        self.track_virtio(kind, id, window, transport.clone());
        self.subscribe(events, device);
        Ok(transport)
    }

    /// Subscribes a device's fds to the event loop, remembering it.
    pub fn subscribe(
        &mut self,
        events: &mut EventLoop,
        subscriber: Arc<Mutex<dyn MutEventSubscriber + Send>>,
    ) {
        self.subscribers.push(events.add_subscriber(subscriber));
    }

    /// Takes every device this manager subscribed out of the event loop
    /// (a start or restore that failed): their fds close, their sockets
    /// are released, and a later attempt starts clean.
    pub fn unsubscribe_all(&mut self, events: &mut EventLoop) {
        for id in self.subscribers.drain(..) {
            if let Err(e) = events.remove_subscriber(id) {
                tracing::warn!("cannot unsubscribe a device: {e:?}");
            }
        }
    }

    /// Keeps the serial port and the i8042 for snapshots (once attached).
    pub fn track_legacy(
        &mut self,
        serial: Arc<Mutex<SerialDevice>>,
        i8042: Arc<Mutex<I8042Device>>,
    ) {
        self.legacy = Some((serial, i8042));
    }

    /// Keeps a virtio transport for snapshots, with what identifies it.
    fn track_virtio(
        &mut self,
        kind: &'static str,
        id: &str,
        (base, gsi): (u64, u32),
        transport: Arc<Mutex<MmioTransport>>,
    ) {
        self.virtio.push(VirtioHandle {
            kind,
            id: id.to_string(),
            base,
            gsi,
            transport,
        });
    }

    /// Every device's state. Call with every vCPU paused, on the thread
    /// that runs the devices' event loop.
    pub fn save(&self) -> DevicesState {
        persist::save(self.legacy.as_ref(), &self.virtio)
    }

    /// Applies a saved state to the devices of a VM built from the saved
    /// configuration, before any vCPU runs. Refused (and nothing changed)
    /// when the devices differ from the saved ones; a state that does not
    /// fit one device stops the restore there.
    pub fn restore(&self, state: &DevicesState) -> std::result::Result<(), DevicePersistError> {
        persist::restore(self.legacy.as_ref(), &self.virtio, state)
    }

    /// The buses, shared with the vCPUs from now on.
    pub fn buses(&self) -> (Arc<Bus>, Arc<Bus>) {
        (self.io_bus.clone(), self.mmio_bus.clone())
    }

    pub fn devices(&self) -> &[DeviceInfo] {
        &self.devices
    }

    /// `virtio_mmio.device=<size>@<base>:<irq>` for every MMIO device, in
    /// the order they were attached (so they probe as vda, vdb, ...).
    pub fn cmdline_entries(&self) -> Vec<String> {
        self.devices
            .iter()
            .filter(|d| d.bus == BusKind::Mmio)
            .map(|d| {
                format!(
                    "virtio_mmio.device={}K@{:#x}:{}",
                    d.len >> 10,
                    d.base,
                    d.gsi.unwrap_or(0)
                )
            })
            .collect()
    }
}

/// A device shared between the bus and its event-loop subscriber.
pub type Shared<T> = Arc<Mutex<T>>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::devices::BusDevice;

    struct Dummy;
    impl BusDevice for Dummy {
        fn read(&mut self, _: u64, data: &mut [u8]) {
            data.fill(0x42);
        }
        fn write(&mut self, _: u64, _: &[u8]) {}
    }

    #[test]
    fn windows_and_lines_are_handed_out_in_order_until_none_are_left() {
        let mut dm = DeviceManager::new();
        let a = dm.allocate_mmio("a").unwrap();
        let b = dm.allocate_mmio("b").unwrap();
        assert_eq!(a, (MMIO_DEVICES_START, VIRTIO_GSI_FIRST));
        assert_eq!(
            b,
            (MMIO_DEVICES_START + MMIO_WINDOW_SIZE, VIRTIO_GSI_FIRST + 1)
        );
        dm.attach_mmio("virtio-blk", "rootfs", Arc::new(Mutex::new(Dummy)), a)
            .unwrap();
        dm.attach_mmio("virtio-net", "eth0", Arc::new(Mutex::new(Dummy)), b)
            .unwrap();
        assert_eq!(
            dm.cmdline_entries(),
            vec![
                format!("virtio_mmio.device=4K@{:#x}:{}", a.0, a.1),
                format!("virtio_mmio.device=4K@{:#x}:{}", b.0, b.1),
            ]
        );
        let mut data = [0u8; 4];
        assert!(dm.buses().1.read(b.0 + 0x10, &mut data));
        assert_eq!(data, [0x42; 4]);
        let mut n = 2;
        while dm.allocate_mmio("x").is_ok() {
            n += 1;
        }
        assert_eq!(n, (VIRTIO_GSI_LAST - VIRTIO_GSI_FIRST + 1) as usize);
    }

    #[test]
    fn a_snapshot_covers_the_tracked_devices_in_attach_order() {
        use crate::vmm::devices::virtio::rng::Rng;
        let mem =
            crate::vmm::kvm::memory::anonymous(&[(vm_memory::GuestAddress(0), 1 << 20)]).unwrap();
        let evt = || EventFd::new(EFD_NONBLOCK).unwrap();
        let build = || {
            let mut dm = DeviceManager::new();
            let serial = SerialDevice::new(evt(), Box::new(std::io::sink())).unwrap();
            let exit = Arc::new(crate::vmm::exit::ExitNotifier::new().unwrap());
            let i8042 = I8042Device::new(IrqTrigger(evt()), exit);
            dm.track_legacy(Arc::new(Mutex::new(serial)), Arc::new(Mutex::new(i8042)));
            for id in ["a", "b"] {
                let w = dm.allocate_mmio(id).unwrap();
                let rng = Arc::new(Mutex::new(Rng::new(&Default::default()).unwrap()));
                let irq = Arc::new(VirtioInterrupt::new(IrqTrigger(evt())));
                let t = Arc::new(Mutex::new(MmioTransport::new(rng, mem.clone(), irq)));
                dm.attach_mmio("virtio-rng", id, t.clone(), w).unwrap();
                dm.track_virtio("virtio-rng", id, w, t);
            }
            dm
        };
        let s = build().save();
        assert!(s.legacy.is_some());
        let order: Vec<_> = s.virtio.iter().map(|v| (v.id.as_str(), v.base)).collect();
        assert_eq!(
            order,
            [
                ("a", MMIO_DEVICES_START),
                ("b", MMIO_DEVICES_START + MMIO_WINDOW_SIZE)
            ]
        );
        build().restore(&s).unwrap();
        let mut fewer = s.clone();
        fewer.virtio.pop();
        let err = build().restore(&fewer).unwrap_err().to_string();
        assert!(err.contains("\"b\""), "{err}");
    }

    #[test]
    fn nothing_is_attached_once_the_buses_are_shared() {
        let mut dm = DeviceManager::new();
        let _vcpu_view = dm.buses();
        let w = dm.allocate_mmio("late").unwrap();
        let err = dm
            .attach_mmio("virtio-rng", "rng", Arc::new(Mutex::new(Dummy)), w)
            .unwrap_err();
        assert!(matches!(err, DeviceManagerError::Frozen));
    }
}
