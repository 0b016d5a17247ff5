//! The drives' API actions: `PUT` and `PATCH /drives/{drive_id}` (the
//! devices are in `devices/virtio/block`).

use std::path::Path;

use super::builder::{AttachedDrive, DriveDevice};
use super::config::{self, ConfigError, DriveConfig, DriveUpdate};
use super::metrics::METRICS;
use super::rpc::VmmActionError;
use super::Vmm;

impl Vmm {
    pub(super) fn set_drive(
        &mut self,
        path_id: &str,
        d: DriveConfig,
    ) -> Result<(), VmmActionError> {
        self.require_not_started()?;
        same_id(&d.drive_id, path_id)?;
        d.validate()?;
        if let (true, Some(p)) = (d.is_root_device, self.config.root_pmem()) {
            return Err(
                ConfigError::from(config::PmemConfigError::SecondRoot(format!(
                    "pmem {:?}",
                    crate::text::echo(&p.id)
                )))
                .into(),
            );
        }
        config::insert_drive(&mut self.config.drives, d)?;
        Ok(())
    }

    /// Before start, changes the drive's configuration; after, swaps its
    /// backing file or rate limiter and tells the guest its configuration
    /// changed. A vhost-user drive takes neither (its backend serves the
    /// drive): a PATCH with only its id reads the backend's configuration
    /// space again, so the guest learns of a resized export, as in
    /// Firecracker.
    pub(super) fn patch_drive(
        &mut self,
        path_id: &str,
        u: DriveUpdate,
    ) -> Result<(), VmmActionError> {
        same_id(&u.drive_id, path_id)?;
        let no_such = || ConfigError::NoSuchDrive(crate::text::echo(path_id).into_owned());
        let i = self
            .config
            .drives
            .iter()
            .position(|d| d.drive_id == path_id)
            .ok_or_else(no_such)?;
        if self.config.drives[i].socket.is_some() {
            return self.patch_vhost_user_drive(path_id, &u);
        }
        if let Some(r) = &u.rate_limiter {
            r.validate()
                .map_err(|e| ConfigError::RateLimiter(e.to_string()))?;
        }
        let failed = |e: &dyn std::fmt::Display| VmmActionError::DriveUpdate {
            id: path_id.to_string(),
            err: e.to_string(),
        };
        if let (Some(r), Some(drive)) = (&u.rate_limiter, self.attached_drive(path_id)) {
            if let DriveDevice::Virtio(block) = &drive.device {
                let updated = block
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .update_rate_limiter(r);
                updated.map_err(|e| failed(&e))?;
            }
        }
        if u.rate_limiter.is_some() {
            self.config.drives[i].rate_limiter = u.rate_limiter;
        }
        let Some(path) = u.path_on_host else {
            return Ok(());
        };
        if let Some(drive) = self.attached_drive(path_id) {
            if let DriveDevice::Virtio(block) = &drive.device {
                let swapped = block
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .swap_backing(Path::new(&path));
                swapped.map_err(|e| failed(&e))?;
                config_changed(drive);
                METRICS.block.swaps.inc();
            }
        } else {
            let mut d = self.config.drives[i].clone();
            d.path_on_host = Some(path.clone());
            d.validate()?;
        }
        self.config.drives[i].path_on_host = Some(path);
        Ok(())
    }

    fn patch_vhost_user_drive(&self, path_id: &str, u: &DriveUpdate) -> Result<(), VmmActionError> {
        if u.path_on_host.is_some() || u.rate_limiter.is_some() {
            return Err(ConfigError::Drive(format!(
                "drive {} is a vhost-user drive: its backend serves it, so neither \
                 path_on_host nor rate_limiter can be changed (a PATCH with only the \
                 drive_id reloads its configuration from the backend)",
                crate::text::echo(path_id)
            ))
            .into());
        }
        let Some(drive) = self.attached_drive(path_id) else {
            // Not started: the backend is read at InstanceStart.
            return Ok(());
        };
        if let DriveDevice::VhostUser(block) = &drive.device {
            let reloaded = block
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .reload_config();
            reloaded.map_err(|e| VmmActionError::DriveUpdate {
                id: path_id.to_string(),
                err: e.to_string(),
            })?;
            config_changed(drive);
        }
        Ok(())
    }

    /// The running drive `id`, once the microVM started.
    fn attached_drive(&self, id: &str) -> Option<&AttachedDrive> {
        self.running.as_ref()?.drives.iter().find(|d| d.id == id)
    }
}

/// Raises the drive's configuration-change interrupt.
fn config_changed(drive: &AttachedDrive) {
    drive
        .transport
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .config_changed();
}

/// The drive id in a body must be the one in the path.
fn same_id(body: &str, path: &str) -> Result<(), ConfigError> {
    if body == path {
        Ok(())
    } else {
        Err(ConfigError::DriveIdMismatch {
            body: crate::text::echo(body).into_owned(),
            path: crate::text::echo(path).into_owned(),
        })
    }
}
