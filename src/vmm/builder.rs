//! Turns a validated configuration into a running microVM.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::{Arc, Mutex};

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::vmm::arch::x86_64::boot::{self, BootError, BootInfo};
use crate::vmm::arch::x86_64::cpuid::Topology;
use crate::vmm::config::{
    open_regular, BootSourceConfig, MachineConfig, OpenRegularError, SerialConfig,
};
use crate::vmm::devices::legacy::{self, I8042Device, IrqTrigger, SerialDevice};
use crate::vmm::devices::{Bus, BusError};
use crate::vmm::exit::ExitNotifier;
use crate::vmm::kvm::memory::{create_guest_memory, MemoryError};
use crate::vmm::kvm::vcpu::{Vcpu, VcpuError, VcpuHandle};
use crate::vmm::kvm::{Vm, VmError};
use crate::vmm::sink::OutputFile;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
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
    Bus(#[from] BusError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
}

/// A microVM whose vCPUs are running.
pub struct RunningVm {
    // Field order is drop order: stop the vCPUs, then close the VM, then
    // unmap guest memory (so KVM does not have to zap its mappings first).
    pub vcpus: Vec<VcpuHandle>,
    pub serial: Arc<Mutex<SerialDevice>>,
    pub i8042: Arc<Mutex<I8042Device>>,
    pub vm: Vm,
    pub mem: GuestMemoryMmap,
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

fn irq_event(vm: &Vm, gsi: u32) -> Result<EventFd, StartError> {
    let evt = EventFd::new(EFD_NONBLOCK).map_err(StartError::EventFd)?;
    vm.register_irqfd(&evt, gsi)?;
    Ok(evt)
}

type Prepared = (Vec<Vcpu>, Arc<Mutex<SerialDevice>>, Arc<Mutex<I8042Device>>);

/// Loads the kernel, writes the boot information, wires the devices and
/// creates and configures the vCPUs, ready to start.
fn prepare(
    vm: &Vm,
    mem: &GuestMemoryMmap,
    boot_source: &BootSourceConfig,
    machine: &MachineConfig,
    serial_cfg: Option<&SerialConfig>,
    exit: &Arc<ExitNotifier>,
) -> Result<Prepared, StartError> {
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
    let cmdline_size = boot::load_command_line(mem, boot_source.boot_args())?;
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

    let serial = Arc::new(Mutex::new(
        SerialDevice::new(irq_event(vm, legacy::COM1_IRQ)?, serial_output(serial_cfg)?)
            .map_err(StartError::EventFd)?,
    ));
    let i8042 = Arc::new(Mutex::new(I8042Device::new(
        IrqTrigger(irq_event(vm, legacy::I8042_IRQ)?),
        exit.clone(),
    )));
    let mut io_bus = Bus::new();
    io_bus.insert(serial.clone(), legacy::COM1_BASE, legacy::COM1_LEN)?;
    io_bus.insert(i8042.clone(), legacy::I8042_BASE, legacy::I8042_LEN)?;
    let io_bus = Arc::new(io_bus);
    let mmio_bus = Arc::new(Bus::new());

    let topo = Topology::new(machine.vcpu_count, machine.smt);
    let mut vcpus = Vec::with_capacity(machine.vcpu_count as usize);
    for index in 0..machine.vcpu_count {
        let vcpu = Vcpu::new(vm, index, io_bus.clone(), mmio_bus.clone(), exit.clone())?;
        vcpu.configure(vm, mem, &entry, topo)?;
        vcpus.push(vcpu);
    }
    tracing::debug!("vCPUs configured");
    Ok((vcpus, serial, i8042))
}

/// Sets up `vm` (from `Vm::open`), loads the kernel, wires the devices
/// and starts the vCPUs.
pub fn build_and_start(
    vm: Vm,
    boot_source: &BootSourceConfig,
    machine: &MachineConfig,
    serial_cfg: Option<&SerialConfig>,
    exit: Arc<ExitNotifier>,
) -> Result<RunningVm, StartError> {
    let mem = create_guest_memory(machine.mem_size_mib)?;
    vm.set_up(&mem, machine.track_dirty_pages)?;
    tracing::debug!("KVM VM set up");
    let (vcpus, serial, i8042) = prepare(&vm, &mem, boot_source, machine, serial_cfg, &exit)?;
    let mut handles = Vec::with_capacity(vcpus.len());
    for vcpu in vcpus {
        handles.push(vcpu.start()?);
    }
    tracing::debug!("vCPUs started");
    Ok(RunningVm {
        vcpus: handles,
        serial,
        i8042,
        vm,
        mem,
    })
}
