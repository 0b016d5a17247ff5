//! The [`Vmm`]'s actions on the devices that add memory to the guest:
//! `PUT`/`PATCH /pmem/{id}` and `PUT`/`PATCH`/`GET /hotplug/memory` (the
//! balloon's are in `vmm/balloon.rs`).

use crate::vmm::config::{
    self, ConfigError, MemoryHotplugConfig, MemoryHotplugConfigError, MemoryHotplugSizeUpdate,
    MemoryHotplugStatus, PmemConfig, PmemUpdate,
};
use crate::vmm::metrics::METRICS;
use crate::vmm::rpc::VmmActionError;
use crate::vmm::Vmm;

impl Vmm {
    /// Adds or replaces a pmem device (before start). One root device at
    /// most, drive or pmem.
    pub(crate) fn set_pmem(&mut self, path_id: &str, p: PmemConfig) -> Result<(), VmmActionError> {
        self.require_not_started()?;
        config::check_pmem_id(&p.id, path_id).map_err(ConfigError::from)?;
        p.validate().map_err(ConfigError::from)?;
        let drive_root = self.config.root_drive().map(|d| d.drive_id.clone());
        config::insert_pmem(&mut self.config.pmem, p, drive_root.as_deref())
            .map_err(ConfigError::from)?;
        Ok(())
    }

    /// A new rate limiter for a pmem device: the configuration's before
    /// start, the running device's too after.
    pub(crate) fn patch_pmem(
        &mut self,
        path_id: &str,
        u: PmemUpdate,
    ) -> Result<(), VmmActionError> {
        let i =
            config::check_pmem_update(&self.config.pmem, path_id, &u).map_err(ConfigError::from)?;
        let Some(limiter) = u.rate_limiter else {
            return Ok(());
        };
        if let Some(vm) = &self.running {
            let dev = vm.pmem.iter().find(|p| p.id == path_id).ok_or_else(|| {
                VmmActionError::PmemUpdate {
                    id: crate::text::echo(path_id).into_owned(),
                    err: "the device is not attached".into(),
                }
            })?;
            dev.pmem
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .update_rate_limiter(&limiter)
                .map_err(|e| VmmActionError::PmemUpdate {
                    id: crate::text::echo(path_id).into_owned(),
                    err: e.to_string(),
                })?;
        }
        self.config.pmem[i].rate_limiter = Some(limiter);
        Ok(())
    }

    /// Configures hotpluggable memory (before start; a second PUT
    /// replaces the first).
    pub(crate) fn set_memory_hotplug(
        &mut self,
        h: MemoryHotplugConfig,
    ) -> Result<(), VmmActionError> {
        self.require_not_started()?;
        h.validate().map_err(ConfigError::from)?;
        self.config.memory_hotplug = Some(h);
        Ok(())
    }

    fn hotplug_config(&self) -> Result<MemoryHotplugConfig, ConfigError> {
        self.config.memory_hotplug.ok_or(ConfigError::MemoryHotplug(
            MemoryHotplugConfigError::NotConfigured,
        ))
    }

    /// A new requested size (after start): the driver sees it with a
    /// configuration-change interrupt and plugs or unplugs towards it.
    pub(crate) fn patch_memory_hotplug(
        &mut self,
        u: MemoryHotplugSizeUpdate,
    ) -> Result<(), VmmActionError> {
        let h = self.hotplug_config()?;
        let vm = self.running.as_ref().ok_or(VmmActionError::BeforeStart)?;
        h.check_requested(u.requested_size_mib)
            .map_err(ConfigError::from)?;
        let attached = vm
            .mem_hotplug
            .as_ref()
            .ok_or(VmmActionError::MemoryHotplugUpdate(
                "the device is not attached".into(),
            ))?;
        attached
            .mem
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .set_requested_size(u.requested_size_mib << 20);
        attached
            .transport
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .config_changed();
        METRICS.memory_hotplug.requested_size_updates.inc();
        Ok(())
    }

    /// `GET /hotplug/memory` (after start: the device's figures).
    pub(crate) fn memory_hotplug_status(&self) -> Result<MemoryHotplugStatus, VmmActionError> {
        self.hotplug_config()?;
        let vm = self.running.as_ref().ok_or(VmmActionError::BeforeStart)?;
        let attached = vm
            .mem_hotplug
            .as_ref()
            .ok_or(VmmActionError::MemoryHotplugUpdate(
                "the device is not attached".into(),
            ))?;
        let status = attached
            .mem
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .status();
        Ok(status)
    }
}
