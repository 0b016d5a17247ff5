//! The snapshot actions of the [`Vmm`]: `PUT /snapshot/create` on a
//! paused microVM, and `PUT /snapshot/load` (or `--restore-from`) into a
//! fresh `husk vmm`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::format::{self, FormatError};
use super::memory::{self, MemoryFileError};
use super::uffd::{self, UffdError};
use super::MicrovmState;
use crate::vmm::builder::{self, DriveDevice, StartError};
use crate::vmm::config::{
    open_regular, ConfigError, MemBackendType, SnapshotCreateParams, SnapshotLoadParams,
    SnapshotType, VmConfig,
};
use crate::vmm::kvm::memory::{self as guest_memory, GuestMem, MemOptions, MemoryError};
use crate::vmm::kvm::persist::{check_saved_clock, save_vm, ClockRestore, KvmStateError};
use crate::vmm::kvm::vcpu::VcpuError;
use crate::vmm::kvm::VmError;
use crate::vmm::metrics::METRICS;
use crate::vmm::rpc::VmmActionError;
use crate::vmm::{EventLoop, VmState, Vmm};

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error(transparent)]
    MemoryFile(#[from] MemoryFileError),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Uffd(#[from] UffdError),
    #[error(transparent)]
    KvmState(#[from] KvmStateError),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error("diff snapshots need dirty page tracking: set track_dirty_pages in /machine-config (or on /snapshot/load)")]
    NoDirtyTracking,
    #[error("a snapshot loads only into a fresh husk vmm: {0} is already configured")]
    Configured(&'static str),
    #[error("snapshot {path} holds a configuration that does not parse: {err}")]
    Config { path: String, err: String },
    #[error("snapshot {path}: its memory layout does not match its {mib} MiB machine")]
    Layout { path: String, mib: u64 },
    #[error("memory file {path} is {len} bytes; the snapshot's guest has {expected}")]
    MemFileSize {
        path: String,
        len: u64,
        expected: u64,
    },
    #[error("cannot open memory file {path}: {err}")]
    MemFile { path: String, err: String },
    #[error("network_overrides names {0:?}, which the snapshot does not have")]
    NoSuchInterface(String),
    #[error("vsock_override given, but the snapshot has no vsock")]
    NoVsock,
    #[error("cannot write a snapshot to {path}: {why}")]
    Target { path: String, why: String },
    #[error("snapshot_path and mem_file_path name the same file")]
    SameFile,
    #[error(transparent)]
    Invalid(#[from] ConfigError),
    #[error(
        "snapshot {0} is of a microVM with huge_pages \"2M\": its hugetlbfs memory can only be \
         restored through a page server (mem_backend Uffd), not by mapping the memory file"
    )]
    HugetlbNeedsUffd(String),
    #[error("a microVM with a virtio-fs device cannot be snapshotted: fs device {0:?} is served by a vhost-user backend (virtiofsd) whose state husk cannot save")]
    ExternalBackend(String),
    #[error("a microVM with a vhost-user drive cannot be snapshotted: drive {0:?} is served by a vhost-user-blk backend whose state husk cannot save")]
    VhostUserDrive(String),
}

fn show(p: &str) -> String {
    crate::text::echo(p).into_owned()
}

impl Vmm {
    /// Writes the paused microVM's state and memory.
    pub(crate) fn create_snapshot(
        &mut self,
        p: SnapshotCreateParams,
    ) -> Result<(), VmmActionError> {
        p.validate()?;
        if let Some(f) = self.config.fs_devices.first() {
            return Err(SnapshotError::ExternalBackend(show(&f.tag)).into());
        }
        if let Some(d) = self.config.drives.iter().find(|d| d.socket.is_some()) {
            return Err(SnapshotError::VhostUserDrive(show(&d.drive_id)).into());
        }
        if self.state != VmState::Paused {
            return Err(VmmActionError::NotPaused(self.state.as_str()));
        }
        let track = self.config.machine_config.track_dirty_pages;
        if p.snapshot_type == SnapshotType::Diff && !track {
            return Err(SnapshotError::NoDirtyTracking.into());
        }
        let config_json = serde_json::to_string(&self.config).unwrap_or_default();
        let id = self.id.clone();
        let vm = self.running()?;
        // Requests an Async drive has in flight are finished and answered
        // first: the rings and the interrupt state saved below then owe
        // the guest nothing.
        for d in &vm.drives {
            if let DriveDevice::Virtio(block) = &d.device {
                block.lock().unwrap_or_else(|e| e.into_inner()).drain();
            }
        }
        let msrs = Arc::new(vm.vm.msr_list().to_vec());
        let mut vcpus = Vec::with_capacity(vm.vcpus.len());
        for v in &vm.vcpus {
            vcpus.push(v.save(msrs.clone()).map_err(SnapshotError::from)?);
        }
        let state = MicrovmState {
            husk_version: crate::vmm::VERSION.to_string(),
            config_json,
            memory: guest_memory::layout(&vm.mem),
            vm: save_vm(&vm.vm).map_err(SnapshotError::from)?,
            vcpus,
            devices: vm.devices.save(),
        };
        let (state_path, mem_path) = targets(&p.snapshot_path, &p.mem_file_path)?;
        let source = if self.uffd.is_some() {
            memory::Source::Remote
        } else {
            memory::Source::Local
        };
        // The pages written since the last snapshot; taken (and cleared)
        // now, and kept for the next snapshot if this one fails.
        let dirty = if track {
            let mut log = vm.vm.dirty_log(&vm.mem).map_err(SnapshotError::from)?;
            // The hotpluggable region (guest memory's last) keeps its own.
            if let Some(h) = &vm.mem_hotplug {
                let hot = h.mem.lock().unwrap_or_else(|e| e.into_inner()).dirty_log();
                log.push(hot.map_err(SnapshotError::from)?);
            }
            let mut dirty = memory::take_dirty(&vm.mem, &log);
            if let Some(carried) = self.dirty_carry.take() {
                merge(&mut dirty, &carried);
            }
            Some(dirty)
        } else {
            None
        };
        // Both files are written aside and renamed into place only when
        // both are complete: a failed create changes no file.
        let (mem_tmp, state_tmp) = (format::temp_name(&mem_path), format::temp_name(&state_path));
        let vm = self.running()?;
        let written = (|| {
            let written = match (p.snapshot_type, &dirty) {
                (SnapshotType::Diff, Some(d)) => memory::write_diff(&vm.mem, d, &mem_tmp)?,
                _ => memory::write_full(&vm.mem, &mem_tmp, source)?,
            };
            let state_len = format::write_file(&state_tmp, &state)?;
            let rename = |from: &Path, to: &Path| {
                std::fs::rename(from, to).map_err(|err| FormatError::Write {
                    path: crate::text::echo_path(to),
                    err,
                })
            };
            rename(&mem_tmp, &mem_path)?;
            rename(&state_tmp, &state_path)?;
            Ok::<_, SnapshotError>((written, state_len))
        })();
        let (written, state_len) = match written {
            Ok(w) => w,
            Err(e) => {
                let _ = std::fs::remove_file(&mem_tmp);
                let _ = std::fs::remove_file(&state_tmp);
                self.dirty_carry = dirty;
                return Err(e.into());
            }
        };
        METRICS.vmm.snapshots_created.inc();
        tracing::info!(
            id = %id,
            kind = ?p.snapshot_type,
            pages = written.pages,
            mem_allocated = written.allocated,
            state_bytes = state_len,
            "snapshot written"
        );
        Ok(())
    }

    /// Nothing but the logger and metrics may be set before a load.
    fn require_unconfigured(&self) -> Result<(), SnapshotError> {
        let c = &self.config;
        let set = if c.boot_source.is_some() {
            Some("boot-source")
        } else if !c.drives.is_empty() {
            Some("a drive")
        } else if !c.network_interfaces.is_empty() {
            Some("a network interface")
        } else if c.vsock.is_some() {
            Some("vsock")
        } else if c.entropy.is_some() {
            Some("entropy")
        } else if !c.fs_devices.is_empty() {
            Some("an fs device")
        } else if c.balloon.is_some() {
            Some("a balloon")
        } else if !c.pmem.is_empty() {
            Some("a pmem device")
        } else if c.memory_hotplug.is_some() {
            Some("memory-hotplug")
        } else if c.serial.is_some() {
            Some("serial")
        } else if c.machine_config != Default::default() {
            Some("machine-config")
        } else if c.cpu_config.is_some() {
            Some("cpu-config")
        } else if c.mmds_config.is_some() {
            Some("mmds-config")
        } else {
            None
        };
        set.map_or(Ok(()), |what| Err(SnapshotError::Configured(what)))
    }

    /// Restores a snapshot into this fresh VMM; its devices join
    /// `events`. The vCPUs run at once when `resume_vm` is set, else the
    /// microVM waits, paused, for `PATCH /vm`.
    pub fn load_snapshot(
        &mut self,
        p: SnapshotLoadParams,
        events: &mut EventLoop,
    ) -> Result<(), VmmActionError> {
        self.require_not_started()?;
        self.require_unconfigured()?;
        let backend = p.backend()?;
        let snapshot_path = Path::new(&p.snapshot_path);
        let state: MicrovmState = format::read_file(snapshot_path).map_err(SnapshotError::from)?;
        let clock = if p.clock_realtime {
            ClockRestore::Realtime
        } else {
            ClockRestore::Saved
        };
        check_saved_clock(&state.vm, clock).map_err(SnapshotError::from)?;
        let cfg = restored_config(&state, &p)?;
        // RAM, then the hotpluggable region when there is one.
        let (ranges, _) =
            guest_memory::guest_ranges(cfg.machine_config.mem_size_mib, cfg.hotplug_mib())
                .map_err(SnapshotError::from)?;
        let layout: Vec<(u64, u64)> = ranges.iter().map(|(a, l)| (a.0, *l as u64)).collect();
        if layout != state.memory {
            return Err(SnapshotError::Layout {
                path: show(&p.snapshot_path),
                mib: cfg.machine_config.mem_size_mib,
            }
            .into());
        }
        let machine = &cfg.machine_config;
        let opts = MemOptions::new(machine.track_dirty_pages, machine.huge_pages);
        let (mem, uffd) = match backend.backend_type {
            // As in Firecracker: a file mapping cannot give hugetlbfs pages.
            MemBackendType::File if machine.huge_pages.is_hugetlbfs() => {
                return Err(SnapshotError::HugetlbNeedsUffd(show(&p.snapshot_path)).into());
            }
            MemBackendType::File => (map_memory_file(&backend.backend_path, &ranges, opts)?, None),
            MemBackendType::Uffd => {
                let mem = guest_memory::create_guest_memory(&ranges, opts)
                    .map_err(SnapshotError::from)?;
                let regions = host_regions(&mem);
                let page_size = machine.huge_pages.page_size();
                let handle = uffd::attach(&regions, page_size, Path::new(&backend.backend_path))
                    .map_err(SnapshotError::from)?;
                (mem, Some(handle))
            }
        };
        let opened = self.take_vm().map_err(StartError::from)?;
        let mmds = self.mmds_for_start(cfg.mmds_config.as_ref())?;
        let how = builder::Launch {
            exit: self.exit.clone(),
            seccomp: &self.seccomp,
            paused: !p.resume_vm,
            mmds,
        };
        let running =
            builder::restore_and_start((opened, mem), &cfg, (&state, clock), events, &how)?;
        self.running = Some(running);
        self.uffd = uffd;
        // The logger and metrics are this process's, not the snapshot's.
        let (logger, metrics) = (self.config.logger.take(), self.config.metrics.take());
        self.config = VmConfig {
            logger,
            metrics,
            ..cfg
        };
        self.state = if p.resume_vm {
            VmState::Running
        } else {
            VmState::Paused
        };
        METRICS.vmm.snapshots_loaded.inc();
        tracing::info!(id = %self.id, "snapshot loaded from {}", show(&p.snapshot_path));
        Ok(())
    }
}

/// ORs `more` into `into`, bitmap by bitmap.
fn merge(into: &mut [Vec<u64>], more: &[Vec<u64>]) {
    for (a, b) in into.iter_mut().zip(more) {
        for (x, y) in a.iter_mut().zip(b) {
            *x |= y;
        }
    }
}

/// Where a snapshot's two files go: each in an existing directory, not
/// an existing file of another kind (a FIFO or a device would be
/// replaced), and not the same file under two names.
fn targets(state: &str, mem: &str) -> Result<(PathBuf, PathBuf), SnapshotError> {
    let target = |p: &str| -> Result<PathBuf, SnapshotError> {
        let path = Path::new(p);
        let bad = |why: &str| SnapshotError::Target {
            path: show(p),
            why: why.to_string(),
        };
        let name = path.file_name().ok_or_else(|| bad("not a file name"))?;
        let parent = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let dir = parent
            .canonicalize()
            .map_err(|e| bad(&format!("its directory: {e}")))?;
        if !dir.is_dir() {
            return Err(bad("its directory is not a directory"));
        }
        let full = dir.join(name);
        match std::fs::symlink_metadata(&full) {
            Ok(m) if !m.is_file() => Err(bad("exists and is not a regular file")),
            _ => Ok(full),
        }
    };
    let (s, m) = (target(state)?, target(mem)?);
    if s == m {
        return Err(SnapshotError::SameFile);
    }
    Ok((s, m))
}

/// The snapshot's configuration with the load's overrides applied.
fn restored_config(
    state: &MicrovmState,
    p: &SnapshotLoadParams,
) -> Result<VmConfig, SnapshotError> {
    let bad = |err: String| SnapshotError::Config {
        path: show(&p.snapshot_path),
        err,
    };
    let mut cfg: VmConfig =
        serde_json::from_str(&state.config_json).map_err(|e| bad(e.to_string()))?;
    cfg.machine_config
        .validate()
        .map_err(|e| bad(e.to_string()))?;
    for o in &p.network_overrides {
        let iface = cfg
            .network_interfaces
            .iter_mut()
            .find(|n| n.iface_id == o.iface_id)
            .ok_or_else(|| SnapshotError::NoSuchInterface(show(&o.iface_id)))?;
        iface.host_dev_name = o.host_dev_name.clone();
    }
    if let Some(o) = &p.vsock_override {
        let v = cfg.vsock.as_mut().ok_or(SnapshotError::NoVsock)?;
        v.uds_path = o.uds_path.clone();
        if let Some(cid) = o.guest_cid {
            v.guest_cid = cid;
        }
    }
    cfg.machine_config.track_dirty_pages = p.tracks_dirty_pages();
    config_files_valid(&cfg)?;
    Ok(cfg)
}

/// The checks a cold boot's configuration gets: drives and pmem files
/// exist, TAPs open, names are unique, the vsock, entropy and
/// hotplug settings hold. The kernel and initrd are not needed: they
/// are in guest memory already.
fn config_files_valid(cfg: &VmConfig) -> Result<(), ConfigError> {
    for d in &cfg.drives {
        d.validate()?;
    }
    crate::vmm::config::check_unique_ids(&cfg.network_interfaces)?;
    for n in &cfg.network_interfaces {
        n.validate()?;
    }
    if let Some(v) = &cfg.vsock {
        v.validate()?;
    }
    if let Some(e) = &cfg.entropy {
        e.validate()?;
    }
    // Each pmem device maps its file again: it must still be there.
    for p in &cfg.pmem {
        p.validate()?;
    }
    if let Some(h) = &cfg.memory_hotplug {
        h.validate()?;
    }
    if let Some(m) = &cfg.mmds_config {
        m.clone().validated(&cfg.network_interfaces)?;
    }
    Ok(())
}

/// Maps the memory file `MAP_PRIVATE`; it must be exactly the guest's
/// size (a shorter file would fault the VMM on access past its end).
fn map_memory_file(
    path: &str,
    ranges: &[(vm_memory::GuestAddress, usize)],
    opts: MemOptions,
) -> Result<GuestMem, SnapshotError> {
    let open_err = |err: String| SnapshotError::MemFile {
        path: show(path),
        err,
    };
    let file: File = open_regular(Path::new(path)).map_err(|e| open_err(e.to_string()))?;
    let len = file.metadata().map_err(|e| open_err(e.to_string()))?.len();
    let expected: u64 = ranges.iter().map(|r| r.1 as u64).sum();
    if len != expected {
        return Err(SnapshotError::MemFileSize {
            path: show(path),
            len,
            expected,
        });
    }
    Ok(guest_memory::from_file(&file, ranges, opts)?)
}

/// Where each region of `mem` lives in this process.
fn host_regions(mem: &GuestMem) -> Vec<(u64, u64)> {
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
    mem.iter().map(|r| (r.as_ptr() as u64, r.len())).collect()
}
