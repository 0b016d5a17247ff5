//! Phase 2 for the devices that add memory to the guest: virtio-pmem
//! windows and virtio-mem's hotpluggable region, both placed above RAM
//! by the layout's device memory (`arch/x86_64/layout.rs`), each in KVM
//! memory slots of its own.

use std::sync::{Arc, Mutex};

use super::StartError;
use crate::vmm::config::VmConfig;
use crate::vmm::device_manager::DeviceManager;
use crate::vmm::devices::virtio::mmio::MmioTransport;
use crate::vmm::kvm::memory::{guest_ranges, GuestMem};
use crate::vmm::kvm::Vm;
use crate::vmm::EventLoop;

/// A virtio-pmem device as it runs, for PATCH /pmem (rate limiter).
pub struct AttachedPmem {
    pub id: String,
    pub pmem: Arc<Mutex<crate::vmm::devices::virtio::pmem::Pmem>>,
    pub transport: Arc<Mutex<MmioTransport>>,
}

/// The virtio-mem device as it runs, for PATCH and GET /hotplug/memory
/// and the hotpluggable region's dirty log.
pub struct AttachedMemHotplug {
    pub mem: Arc<Mutex<crate::vmm::devices::virtio::mem::VirtioMem>>,
    pub transport: Arc<Mutex<MmioTransport>>,
}

/// Phase 2: each pmem device, the root one first (so it is
/// /dev/pmem0): its file mapped, its window placed above RAM (after the
/// hotpluggable region) in a KVM slot of its own, read-only if asked,
/// with a bus device that drops the guest's writes to a read-only one.
pub(super) fn attach_pmem_devices(
    vm: &Vm,
    mem: &GuestMem,
    dm: &mut DeviceManager,
    events: &mut EventLoop,
    cfg: &VmConfig,
) -> Result<Vec<AttachedPmem>, StartError> {
    use crate::vmm::arch::x86_64::layout::PMEM_ALIGN;
    use crate::vmm::devices::virtio::pmem::{Pmem, ReadOnlyWindow};
    let (_, mut space) = guest_ranges(cfg.machine_config.mem_size_mib, cfg.hotplug_mib())?;
    let mut out = Vec::with_capacity(cfg.pmem.len());
    for p in &cfg.pmem {
        let fail = |e: String| {
            let id = crate::text::echo(&p.id);
            StartError::Device("virtio-pmem", format!("{id:?}: {e}"))
        };
        if p.read_only && !vm.has_readonly_memory() {
            return Err(fail(
                "KVM cannot map memory read-only on this host (no KVM_CAP_READONLY_MEM)".into(),
            ));
        }
        let mut pmem = Pmem::new(p).map_err(|e| fail(e.to_string()))?;
        let size = pmem.size();
        let start = space
            .allocate(size, PMEM_ALIGN)
            .ok_or_else(|| fail("no room left above RAM for its window".into()))?;
        let slot = vm.reserve_slots(1)?;
        pmem.map_into_guest(vm.mem_slots(), slot, start)
            .map_err(|e| fail(e.to_string()))?;
        let pmem = Arc::new(Mutex::new(pmem));
        let transport = dm.attach_virtio(vm, mem, events, "virtio-pmem", &p.id, pmem.clone())?;
        if p.read_only {
            let window = Arc::new(Mutex::new(ReadOnlyWindow::new(&p.id)));
            dm.attach_memory_window(window, start, size)?;
        }
        out.push(AttachedPmem {
            id: p.id.clone(),
            pmem,
            transport,
        });
    }
    Ok(out)
}

/// Phase 2: the virtio-mem device over the hotpluggable region (guest
/// memory's last region, from phase 1), with KVM slots reserved for it
/// and a bus device for the guest's accesses outside its plugged slots.
pub(super) fn attach_memory_hotplug(
    vm: &Vm,
    mem: &GuestMem,
    dm: &mut DeviceManager,
    events: &mut EventLoop,
    cfg: &VmConfig,
) -> Result<Option<AttachedMemHotplug>, StartError> {
    use crate::vmm::devices::virtio::mem::{
        Geometry, HotplugRegion, KvmSlots, UnpluggedWindow, VirtioMem,
    };
    let Some(h) = cfg.memory_hotplug else {
        return Ok(None);
    };
    let fail = |e: String| StartError::Device("virtio-mem", e);
    h.validate().map_err(|e| fail(e.to_string()))?;
    let (ranges, _) = guest_ranges(cfg.machine_config.mem_size_mib, h.total_size_mib)?;
    let (addr, len) = ranges
        .last()
        .map(|(a, l)| (a.0, *l as u64))
        .ok_or_else(|| fail("no hotpluggable region".into()))?;
    let geo = Geometry {
        addr,
        region_size: len,
        block_size: h.block_size_mib << 20,
        slot_size: h.slot_size_mib << 20,
    };
    let kvm = KvmSlots {
        slots: vm.mem_slots(),
        first: vm.reserve_slots(len / geo.slot_size)?,
        flags: if cfg.machine_config.track_dirty_pages {
            kvm_bindings::KVM_MEM_LOG_DIRTY_PAGES
        } else {
            0
        },
    };
    let shared = !cfg.fs_devices.is_empty();
    let region = HotplugRegion::new(mem, (addr, len), geo.slot_size, Some(kvm), shared)
        .map_err(|e| fail(e.to_string()))?;
    let dev = Arc::new(Mutex::new(
        VirtioMem::new(geo, region).map_err(|e| fail(e.to_string()))?,
    ));
    let transport = dm.attach_virtio(vm, mem, events, "virtio-mem", "mem", dev.clone())?;
    dm.attach_memory_window(Arc::new(Mutex::new(UnpluggedWindow)), addr, len)?;
    Ok(Some(AttachedMemHotplug {
        mem: dev,
        transport,
    }))
}
