//! Turns a validated configuration into a running microVM, in phases that
//! a restore will share:
//! 1. the KVM VM and guest memory;
//! 2. devices, through the [`DeviceManager`], each subscribing its own fds
//!    to the event loop;
//! 3. vCPUs, which get the frozen buses;
//! 4. boot set-up: kernel, initrd, then the command line (written after the
//!    devices exist, so it names them), boot information and registers.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::vmm::kvm::memory::GuestMem;

use crate::jail::seccomp::{Policy, SeccompError, ThreadKind};
use crate::vmm::arch::x86_64::boot::{self, BootError, BootInfo, KernelEntry};
use crate::vmm::arch::x86_64::cpu_template::{self, TemplateError};
use crate::vmm::arch::x86_64::cpuid::Topology;
use crate::vmm::config::{
    open_regular, CacheType, CpuConfig, OpenRegularError, SerialConfig, VmConfig,
};
use crate::vmm::device_manager::{DeviceManager, DeviceManagerError};
use crate::vmm::devices::legacy::{self, Console, I8042Device, SerialDevice};
use crate::vmm::devices::rate_limiter::TokenBucket;
use crate::vmm::devices::virtio::block::vhost_user::VhostUserBlock;
use crate::vmm::devices::virtio::block::{Block, BlockOptions};
use crate::vmm::devices::virtio::mmio::MmioTransport;
use crate::vmm::devices::virtio::rng::Rng;
use crate::vmm::exit::ExitNotifier;
use crate::vmm::kvm::memory::{
    create_guest_memory, create_shared_guest_memory, guest_ranges, ram_ranges, MemOptions,
    MemoryError,
};
use crate::vmm::kvm::persist::{
    check_clock_restore, check_cpu, native_cpuid, restore_vm, ClockRestore, KvmStateError,
};
use crate::vmm::kvm::vcpu::{Vcpu, VcpuError, VcpuHandle};
use crate::vmm::kvm::{Vm, VmError};
use crate::vmm::sink::OutputFile;
use crate::vmm::snapshot::MicrovmState;
use crate::vmm::EventLoop;

mod memory_devices;

use memory_devices::{attach_memory_hotplug, attach_pmem_devices};
pub use memory_devices::{AttachedMemHotplug, AttachedPmem};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot start the microVM without a kernel: PUT /boot-source first")]
    NoKernel,
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error("cannot open {what} {path}: {err}")]
    Open {
        what: &'static str,
        path: String,
        err: std::io::Error,
    },
    #[error("{what} {path} is not a regular file")]
    NotRegular { what: &'static str, path: String },
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error("cannot open serial output {path}: {err}")]
    SerialOut { path: String, err: std::io::Error },
    #[error("cannot create an event fd: {0}")]
    EventFd(std::io::Error),
    #[error(transparent)]
    Devices(#[from] DeviceManagerError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error("cannot create the {0} device: {1}")]
    Device(&'static str, String),
    #[error(transparent)]
    KvmState(#[from] KvmStateError),
    #[error("cannot restore the snapshot: {0}")]
    Restore(String),
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    #[error(transparent)]
    CpuTemplate(#[from] TemplateError),
}

/// A drive's device: husk's own virtio-blk, or a vhost-user-blk frontend.
pub enum DriveDevice {
    Virtio(Arc<Mutex<Block>>),
    VhostUser(Arc<Mutex<VhostUserBlock>>),
}

/// A drive as it runs, for PATCH /drives.
pub struct AttachedDrive {
    pub id: String,
    pub device: DriveDevice,
    pub transport: Arc<Mutex<MmioTransport>>,
    /// Whether the guest sees it read-only (a vhost-user backend decides).
    pub read_only: bool,
}

/// A virtio-net device as it runs, for PATCH /network-interfaces (rate
/// limiters).
pub struct AttachedNet {
    pub id: String,
    pub net: Arc<Mutex<crate::vmm::devices::virtio::net::Net>>,
    pub transport: Arc<Mutex<MmioTransport>>,
}

/// The virtio-balloon device as it runs, for PATCH /balloon and its
/// statistics.
pub struct AttachedBalloon {
    pub balloon: Arc<Mutex<crate::vmm::devices::virtio::balloon::Balloon>>,
    pub transport: Arc<Mutex<MmioTransport>>,
}

/// A microVM whose vCPUs are running.
pub struct RunningVm {
    // Field order is drop order: stop the vCPUs, then close the VM, then
    // unmap guest memory (so KVM does not have to zap its mappings first).
    pub vcpus: Vec<VcpuHandle>,
    pub serial: Arc<Mutex<SerialDevice>>,
    pub i8042: Arc<Mutex<I8042Device>>,
    pub devices: DeviceManager,
    pub drives: Vec<AttachedDrive>,
    pub nets: Vec<AttachedNet>,
    pub balloon: Option<AttachedBalloon>,
    pub pmem: Vec<AttachedPmem>,
    pub mem_hotplug: Option<AttachedMemHotplug>,
    pub vm: Vm,
    pub mem: GuestMem,
}

impl RunningVm {
    /// Stops every vCPU thread and waits for them.
    pub fn stop_vcpus(&mut self) {
        for v in &mut self.vcpus {
            v.stop();
        }
        tracing::debug!("vCPUs joined");
    }
}

fn serial_output(cfg: Option<&SerialConfig>) -> Result<Box<dyn std::io::Write + Send>, StartError> {
    let out = serial_sink(cfg)?;
    let limit = cfg.and_then(|c| c.rate_limiter.as_ref());
    Ok(
        match limit.and_then(|b| TokenBucket::new(b, std::time::Instant::now())) {
            Some(bucket) => Box::new(crate::vmm::devices::legacy::RateLimited::new(out, bucket)),
            None => out,
        },
    )
}

/// Where the guest console goes: `serial_out_path`, else stdout.
fn serial_sink(cfg: Option<&SerialConfig>) -> Result<Box<dyn std::io::Write + Send>, StartError> {
    match cfg.and_then(|c| c.serial_out_path.as_deref()) {
        Some(path) => {
            let f = OutputFile::open(Path::new(path)).map_err(|err| StartError::SerialOut {
                path: crate::text::echo(path).into_owned(),
                err,
            })?;
            Ok(Box::new(f))
        }
        None => {
            // An unbuffered handle on fd 1, so every byte the guest
            // writes shows at once (std's Stdout is line buffered).
            let fd = std::io::stdout()
                .as_fd()
                .try_clone_to_owned()
                .map_err(|err| StartError::SerialOut {
                    path: "stdout".into(),
                    err,
                })?;
            Ok(Box::new(File::from(fd)))
        }
    }
}

/// Opens a kernel or initrd: a regular file, opened without blocking
/// (the path may have changed since it was validated).
fn open_input(what: &'static str, path: &str) -> Result<File, StartError> {
    open_regular(Path::new(path)).map_err(|e| {
        let path = crate::text::echo(path).into_owned();
        match e {
            OpenRegularError::NotRegular => StartError::NotRegular { what, path },
            OpenRegularError::Io(err) => StartError::Open { what, path, err },
        }
    })
}

/// COM1 and the i8042, which the VMM thread reaches directly.
type LegacyDevices = (Arc<Mutex<SerialDevice>>, Arc<Mutex<I8042Device>>);

/// Phase 2: the legacy devices (COM1 with its console, the i8042).
fn attach_legacy_devices(
    vm: &Vm,
    dm: &mut DeviceManager,
    events: &mut EventLoop,
    serial_cfg: Option<&SerialConfig>,
    exit: &Arc<ExitNotifier>,
) -> Result<LegacyDevices, StartError> {
    let com1 = DeviceManager::irq_line(vm, legacy::COM1_IRQ)?;
    let serial = Arc::new(Mutex::new(
        SerialDevice::new(com1.0, serial_output(serial_cfg)?).map_err(StartError::EventFd)?,
    ));
    dm.attach_io(
        "serial",
        serial.clone(),
        legacy::COM1_BASE,
        legacy::COM1_LEN,
        Some(legacy::COM1_IRQ),
    )?;
    dm.subscribe(events, Arc::new(Mutex::new(Console::new(serial.clone()))));
    let i8042 = Arc::new(Mutex::new(I8042Device::new(
        DeviceManager::irq_line(vm, legacy::I8042_IRQ)?,
        exit.clone(),
    )));
    dm.attach_io(
        "i8042",
        i8042.clone(),
        legacy::I8042_BASE,
        legacy::I8042_LEN,
        Some(legacy::I8042_IRQ),
    )?;
    Ok((serial, i8042))
}

/// Phase 2: the virtio devices, in the order the kernel will probe them.
fn attach_virtio_devices(
    vm: &Vm,
    mem: &GuestMem,
    dm: &mut DeviceManager,
    events: &mut EventLoop,
    cfg: &VmConfig,
) -> Result<Vec<AttachedDrive>, StartError> {
    // Drives first, the root device leading: they probe as vda, vdb, ...
    let mut drives = Vec::with_capacity(cfg.drives.len());
    for d in &cfg.drives {
        drives.push(attach_drive(vm, mem, dm, events, d)?);
    }
    if let Some(e) = &cfg.entropy {
        let rng = Rng::new(&e.rate_limiter.unwrap_or_default())
            .map_err(|e| StartError::Device("virtio-rng", e.to_string()))?;
        dm.attach_virtio(
            vm,
            mem,
            events,
            "virtio-rng",
            "rng",
            Arc::new(Mutex::new(rng)),
        )?;
    }
    if let Some(v) = &cfg.vsock {
        // Binds uds_path now: a socket taken since PUT /vsock fails the start.
        let vsock = crate::vmm::devices::virtio::vsock::Vsock::bind(
            u64::from(v.guest_cid),
            Path::new(&v.uds_path),
        )
        .map_err(|e| StartError::Device("virtio-vsock", e.to_string()))?;
        let vsock = Arc::new(Mutex::new(vsock));
        dm.attach_virtio(vm, mem, events, "virtio-vsock", "vsock", vsock)?;
    }
    Ok(drives)
}

/// Phase 2: one drive, file-backed or on its vhost-user backend
/// (connected now: a backend that cannot be reached fails the start).
fn attach_drive(
    vm: &Vm,
    mem: &GuestMem,
    dm: &mut DeviceManager,
    events: &mut EventLoop,
    d: &crate::vmm::config::DriveConfig,
) -> Result<AttachedDrive, StartError> {
    let writeback = d.cache_type == CacheType::Writeback;
    let id = &d.drive_id;
    let (device, transport, read_only) = match (d.vhost_user_socket(), &d.path_on_host) {
        (Some(socket), _) => {
            let block = VhostUserBlock::new(id, Path::new(socket), writeback)
                .map_err(|e| StartError::Device("vhost-user-blk", format!("drive {id}: {e}")))?;
            let read_only = block.read_only();
            let block = Arc::new(Mutex::new(block));
            let transport = dm.attach_virtio(vm, mem, events, "virtio-blk", id, block.clone())?;
            (DriveDevice::VhostUser(block), transport, read_only)
        }
        (None, Some(path)) => {
            let options = BlockOptions {
                read_only: d.read_only(),
                writeback,
                rate_limiter: d.rate_limiter.unwrap_or_default(),
                engine: d.engine(),
            };
            let block = Block::new(id, Path::new(path), options)
                .map_err(|e| StartError::Device("virtio-blk", e.to_string()))?;
            let block = Arc::new(Mutex::new(block));
            let transport = dm.attach_virtio(vm, mem, events, "virtio-blk", id, block.clone())?;
            (DriveDevice::Virtio(block), transport, d.read_only())
        }
        (None, None) => {
            return Err(StartError::Device(
                "virtio-blk",
                format!("drive {id} has neither path_on_host nor socket"),
            ))
        }
    };
    Ok(AttachedDrive {
        id: id.clone(),
        device,
        transport,
        read_only,
    })
}

/// Phase 2: one virtio-net device per interface, each on its TAP (opened
/// now: a TAP removed since PUT /network-interfaces fails the start),
/// with an MMDS network stack on the interfaces `mmds-config` names.
fn attach_net_devices(
    vm: &Vm,
    mem: &GuestMem,
    dm: &mut DeviceManager,
    events: &mut EventLoop,
    cfg: &VmConfig,
    mmds: Option<&crate::vmm::mmds::SharedMmds>,
) -> Result<Vec<AttachedNet>, StartError> {
    use crate::vmm::devices::virtio::net::{Net, NetOptions};
    use crate::vmm::mmds::stack::MmdsStack;
    let mut nets = Vec::with_capacity(cfg.network_interfaces.len());
    for n in &cfg.network_interfaces {
        let options = NetOptions {
            guest_mac: n.guest_mac.map(|m| m.0),
            mtu: n.mtu,
            rx_rate_limiter: n.rx_rate_limiter.unwrap_or_default(),
            tx_rate_limiter: n.tx_rate_limiter.unwrap_or_default(),
        };
        let mut net = Net::new(&n.host_dev_name, options)
            .map_err(|e| StartError::Device("virtio-net", e.to_string()))?;
        let served = cfg.mmds_config.as_ref().filter(|c| c.serves(&n.iface_id));
        if let (Some(c), Some(mmds)) = (served, mmds) {
            let mtu = n.mtu.map_or(1500, usize::from);
            let stack = MmdsStack::new(mmds.clone(), c.ipv4(), mtu)
                .map_err(|e| StartError::Device("virtio-net", e.to_string()))?;
            net.set_mmds(stack);
        }
        let net = Arc::new(Mutex::new(net));
        let transport =
            dm.attach_virtio(vm, mem, events, "virtio-net", &n.iface_id, net.clone())?;
        nets.push(AttachedNet {
            id: n.iface_id.clone(),
            net,
            transport,
        });
    }
    Ok(nets)
}

/// Phase 2: one virtio-fs device per `fs-devices` entry, each connected
/// now to its vhost-user backend (a backend that cannot be reached, or
/// that hangs up, fails the start).
fn attach_fs_devices(
    vm: &Vm,
    mem: &GuestMem,
    dm: &mut DeviceManager,
    events: &mut EventLoop,
    cfg: &VmConfig,
) -> Result<(), StartError> {
    use crate::vmm::devices::virtio::fs::Fs;
    for f in &cfg.fs_devices {
        let fs = Fs::new(
            &f.tag,
            Path::new(&f.socket_path),
            f.num_queues,
            f.queue_size,
        )
        .map_err(|e| {
            let tag = crate::text::echo(&f.tag);
            StartError::Device("virtio-fs", format!("tag {tag:?}: {e}"))
        })?;
        dm.attach_virtio(
            vm,
            mem,
            events,
            "virtio-fs",
            &f.tag,
            Arc::new(Mutex::new(fs)),
        )?;
    }
    Ok(())
}

/// Phase 2: the balloon, when configured (last: adding it moves no
/// other device's window).
fn attach_balloon(
    vm: &Vm,
    mem: &GuestMem,
    dm: &mut DeviceManager,
    events: &mut EventLoop,
    cfg: &VmConfig,
) -> Result<Option<AttachedBalloon>, StartError> {
    use crate::vmm::devices::virtio::balloon::Balloon;
    let Some(b) = &cfg.balloon else {
        return Ok(None);
    };
    b.validate(cfg.machine_config.mem_size_mib)
        .map_err(|e| StartError::Device("virtio-balloon", e.to_string()))?;
    // With a vhost-user device guest memory is a shared memfd.
    let shared = cfg.needs_shared_memory();
    if cfg.machine_config.huge_pages.is_hugetlbfs() {
        tracing::info!(
            "virtio-balloon: guest memory is hugetlbfs, so inflated pages stay backed \
             (the guest cannot use them, but the VMM's RSS does not fall)"
        );
    }
    let balloon =
        Balloon::new(b, shared).map_err(|e| StartError::Device("virtio-balloon", e.to_string()))?;
    let balloon = Arc::new(Mutex::new(balloon));
    let transport = dm.attach_virtio(
        vm,
        mem,
        events,
        "virtio-balloon",
        "balloon",
        balloon.clone(),
    )?;
    Ok(Some(AttachedBalloon { balloon, transport }))
}

/// Phase 3: the vCPUs, sharing the (now frozen) buses.
fn create_vcpus(
    vm: &Vm,
    dm: &DeviceManager,
    count: u8,
    exit: &Arc<ExitNotifier>,
) -> Result<Vec<Vcpu>, StartError> {
    let (io_bus, mmio_bus) = dm.buses();
    (0..count)
        .map(|index| Vcpu::new(vm, index, io_bus.clone(), mmio_bus.clone(), exit.clone()))
        .collect::<Result<_, _>>()
        .map_err(Into::into)
}

/// The kernel command line: the user's arguments, the root device's (a
/// drive's read only as `drives` say: a vhost-user backend decides; or a
/// pmem device's), then one entry per virtio-mmio device.
pub fn full_cmdline(
    cfg: &VmConfig,
    boot_args: &str,
    dm: &DeviceManager,
    drives: &[AttachedDrive],
) -> String {
    let mut cmdline = boot_args.to_string();
    if let Some(root) = cfg.root_drive() {
        let read_only = drives
            .iter()
            .find(|a| a.id == root.drive_id)
            .map_or(root.read_only(), |a| a.read_only);
        cmdline.push(' ');
        cmdline.push_str(&root.root_args(read_only));
    } else if let Some(root) = cfg.root_pmem() {
        cmdline.push(' ');
        cmdline.push_str(&root.root_args());
    }
    for entry in dm.cmdline_entries() {
        cmdline.push(' ');
        cmdline.push_str(&entry);
    }
    cmdline
}

/// Phase 4 for a cold boot: kernel, initrd, command line, boot
/// information, then each vCPU's registers.
fn load_and_configure(
    vm: &Vm,
    mem: &GuestMem,
    cfg: &VmConfig,
    (dm, drives): (&DeviceManager, &[AttachedDrive]),
    vcpus: &[Vcpu],
    template: Option<&CpuConfig>,
) -> Result<KernelEntry, StartError> {
    let boot_source = cfg.boot_source.as_ref().ok_or(StartError::NoKernel)?;
    let machine = &cfg.machine_config;
    let mem_size = machine.mem_size_mib << 20;
    let mut kernel = open_input("kernel image", &boot_source.kernel_image_path)?;
    let entry = boot::load_kernel(mem, &mut kernel)?;
    let initrd = match &boot_source.initrd_path {
        Some(path) => {
            let mut f = open_input("initrd", path)?;
            Some(boot::load_initrd(mem, mem_size, entry.kernel_end, &mut f)?)
        }
        None => None,
    };
    let cmdline = full_cmdline(cfg, boot_source.boot_args(), dm, drives);
    let cmdline_size = boot::load_command_line(mem, &cmdline)?;
    tracing::debug!(?entry.protocol, "kernel loaded");
    boot::configure_system(
        mem,
        &BootInfo {
            entry: &entry,
            mem_size,
            cmdline_size,
            initrd,
            num_cpus: machine.vcpu_count,
        },
    )?;
    let topo = Topology::new(machine.vcpu_count, machine.smt);
    for vcpu in vcpus {
        vcpu.configure(vm, mem, &entry, topo, template)?;
    }
    tracing::debug!("vCPUs configured");
    Ok(entry)
}

/// Everything phases 2 and 3 build besides the device manager.
struct Parts {
    attached: Attached,
    vcpus: Vec<Vcpu>,
}

/// Phase 2, shared by a cold boot and a restore: every device, in the
/// same order, so each gets the same window and interrupt line.
fn attach_devices(
    vm: &Vm,
    mem: &GuestMem,
    cfg: &VmConfig,
    events: &mut EventLoop,
    how: &Launch,
    dm: &mut DeviceManager,
) -> Result<Attached, StartError> {
    let (serial, i8042) = attach_legacy_devices(vm, dm, events, cfg.serial.as_ref(), &how.exit)?;
    dm.track_legacy(serial.clone(), i8042.clone());
    let drives = attach_virtio_devices(vm, mem, dm, events, cfg)?;
    let nets = attach_net_devices(vm, mem, dm, events, cfg, how.mmds.as_ref())?;
    attach_fs_devices(vm, mem, dm, events, cfg)?;
    let balloon = attach_balloon(vm, mem, dm, events, cfg)?;
    let pmem = attach_pmem_devices(vm, mem, dm, events, cfg)?;
    let mem_hotplug = attach_memory_hotplug(vm, mem, dm, events, cfg)?;
    Ok(Attached {
        serial,
        i8042,
        drives,
        nets,
        balloon,
        pmem,
        mem_hotplug,
    })
}

/// What [`attach_devices`] gives back: the devices the VMM reaches
/// directly.
struct Attached {
    serial: Arc<Mutex<SerialDevice>>,
    i8042: Arc<Mutex<I8042Device>>,
    drives: Vec<AttachedDrive>,
    nets: Vec<AttachedNet>,
    balloon: Option<AttachedBalloon>,
    pmem: Vec<AttachedPmem>,
    mem_hotplug: Option<AttachedMemHotplug>,
}

/// What phase 4 does: load a kernel (and give the vCPUs a CPU
/// template), or apply a snapshot's state.
enum Boot<'a> {
    Cold(Option<&'a CpuConfig>),
    Restore(&'a MicrovmState, ClockRestore),
}

/// Phases 2 to 4, the same for a cold boot and a restore but for what
/// phase 4 does. A restore applies the saved device states right after
/// the devices exist, then the VM's interrupt controllers and clock, then
/// each vCPU's state.
fn build(
    vm: &Vm,
    mem: &GuestMem,
    cfg: &VmConfig,
    boot: Boot<'_>,
    events: &mut EventLoop,
    how: &Launch,
    dm: &mut DeviceManager,
) -> Result<Parts, StartError> {
    let attached = attach_devices(vm, mem, cfg, events, how, dm)?;
    if let Boot::Restore(state, _) = boot {
        dm.restore(&state.devices)
            .map_err(|e| StartError::Restore(e.to_string()))?;
    }
    let vcpus = create_vcpus(vm, dm, cfg.machine_config.vcpu_count, &how.exit)?;
    match boot {
        Boot::Cold(template) => {
            load_and_configure(vm, mem, cfg, (dm, &attached.drives), &vcpus, template)?;
        }
        Boot::Restore(state, clock) => {
            restore_vm(vm, &state.vm, clock)?;
            for (vcpu, s) in vcpus.iter().zip(&state.vcpus) {
                vcpu.restore(s)?;
            }
            tracing::debug!("state restored");
        }
    }
    Ok(Parts { attached, vcpus })
}

/// Starts the vCPUs of what was built. When building or starting failed,
/// the devices leave the event loop again, so nothing of the attempt
/// stays behind (a bound vsock socket, an open TAP).
fn start(
    built: Result<Parts, StartError>,
    mut dm: DeviceManager,
    events: &mut EventLoop,
    (vm, mem): (Vm, GuestMem),
    how: &Launch,
) -> Result<RunningVm, StartError> {
    let (paused, seccomp) = (how.paused, how.seccomp);
    let parts = match built {
        Ok(p) => p,
        Err(e) => {
            dm.unsubscribe_all(events);
            return Err(e);
        }
    };
    let mut handles = Vec::with_capacity(parts.vcpus.len());
    for vcpu in parts.vcpus {
        match vcpu.start(paused, seccomp) {
            Ok(h) => handles.push(h),
            Err(e) => {
                drop(handles);
                dm.unsubscribe_all(events);
                return Err(e.into());
            }
        }
    }
    // Every vCPU thread has its filter on; then the VMM thread's goes on
    // (last: a start that fails before it leaves the VMM able to try
    // again), while no guest code has run, and only then do the vCPUs go.
    let filtered = handles
        .iter()
        .try_for_each(|h| h.wait_filtered())
        .map_err(StartError::from)
        .and_then(|()| Ok(seccomp.apply(ThreadKind::Vmm)?));
    if let Err(e) = filtered {
        drop(handles);
        dm.unsubscribe_all(events);
        return Err(e);
    }
    for h in &handles {
        h.go();
    }
    tracing::debug!(paused, "vCPUs started");
    let a = parts.attached;
    Ok(RunningVm {
        vcpus: handles,
        serial: a.serial,
        i8042: a.i8042,
        devices: dm,
        drives: a.drives,
        nets: a.nets,
        balloon: a.balloon,
        pmem: a.pmem,
        mem_hotplug: a.mem_hotplug,
        vm,
        mem,
    })
}

/// What the VM's threads start with.
pub struct Launch<'a> {
    /// Where a vCPU or device reports that the guest stopped.
    pub exit: Arc<ExitNotifier>,
    /// The filters the VMM and vCPU threads take on before guest code runs.
    pub seccomp: &'a Policy,
    /// The vCPUs wait for a resume (a snapshot loaded without `resume_vm`).
    pub paused: bool,
    /// The metadata service the interfaces in `mmds-config` answer from.
    pub mmds: Option<crate::vmm::mmds::SharedMmds>,
}

/// Builds the microVM described by `cfg` on `vm` (from `Vm::open`),
/// subscribing its devices to `events`, and starts its vCPUs.
pub fn build_and_start(
    vm: Vm,
    cfg: &VmConfig,
    events: &mut EventLoop,
    how: &Launch,
) -> Result<RunningVm, StartError> {
    let machine = &cfg.machine_config;
    // The CPU template first: a host it does not fit is refused before
    // anything is built.
    let template = cpu_template::resolve(cfg, native_cpuid)?;
    if let Some(t) = &template {
        cpu_template::check_capabilities(t, |n| {
            vm.fd().check_extension_raw(libc::c_ulong::from(n)) > 0
        })?;
    }
    // Phase 1: RAM, and the hotpluggable region after it (KVM gets the
    // RAM; virtio-mem maps the region's slots as they are plugged), both
    // of the configured page size. A vhost-user backend maps guest memory
    // too: it must be a shared memfd then.
    let (ranges, _) = guest_ranges(machine.mem_size_mib, cfg.hotplug_mib())?;
    let opts = MemOptions::new(machine.track_dirty_pages, machine.huge_pages);
    let mem = if !cfg.needs_shared_memory() {
        create_guest_memory(&ranges, opts)?
    } else {
        create_shared_guest_memory(&ranges, opts)?
    };
    let ram = ram_ranges(machine.mem_size_mib)?.len();
    vm.set_up(&mem, ram, machine.track_dirty_pages)?;
    tracing::debug!("KVM VM set up");
    // Phases 2 to 4.
    let mut dm = DeviceManager::new();
    let built = build(
        &vm,
        &mem,
        cfg,
        Boot::Cold(template.as_ref()),
        events,
        how,
        &mut dm,
    );
    start(built, dm, events, (vm, mem), how)
}

/// Rebuilds a snapshotted microVM on `vm`: `mem` is its memory (mapped
/// from the memory file, or served by a page server), `cfg` its saved
/// configuration with any overrides applied. The same phases as a cold
/// boot, with the saved state in place of the kernel and registers;
/// `clock` says how kvmclock resumes.
pub fn restore_and_start(
    (vm, mem): (Vm, GuestMem),
    cfg: &VmConfig,
    (state, clock): (&MicrovmState, ClockRestore),
    events: &mut EventLoop,
    how: &Launch,
) -> Result<RunningVm, StartError> {
    let machine = &cfg.machine_config;
    // No snapshot has a vhost-user device (creating it is refused); a
    // state file that says otherwise was not written by husk.
    if !cfg.fs_devices.is_empty() {
        return Err(StartError::Restore(
            crate::vmm::devices::virtio::fs::NOT_RESTORABLE.into(),
        ));
    }
    if cfg.drives.iter().any(|d| d.socket.is_some()) {
        return Err(StartError::Restore(
            crate::vmm::devices::virtio::block::vhost_user::NOT_RESTORABLE.into(),
        ));
    }
    if state.vcpus.len() != usize::from(machine.vcpu_count) {
        return Err(StartError::Restore(format!(
            "the snapshot has {} vCPU states for {} vCPUs",
            state.vcpus.len(),
            machine.vcpu_count
        )));
    }
    for v in &state.vcpus {
        check_cpu(&v.cpuid, vm.supported_cpuid())?;
    }
    check_clock_restore(&vm, &state.vm, clock)?;
    // Phase 1.
    let ram = ram_ranges(machine.mem_size_mib)?.len();
    vm.set_up(&mem, ram, machine.track_dirty_pages)?;
    // Phases 2 to 4.
    let mut dm = DeviceManager::new();
    let built = build(
        &vm,
        &mem,
        cfg,
        Boot::Restore(state, clock),
        events,
        how,
        &mut dm,
    );
    start(built, dm, events, (vm, mem), how)
}
