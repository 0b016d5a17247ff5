//! The balloon's API actions: `PUT`/`GET`/`PATCH /balloon`,
//! `/balloon/statistics` and `/balloon/hinting/*` (the device is in
//! `devices/virtio/balloon`).

use super::builder::{AttachedBalloon, RunningVm};
use super::config::{self, ConfigError};
use super::metrics::METRICS;
use super::rpc::VmmActionError;
use super::Vmm;

impl Vmm {
    /// One balloon per VM: a second PUT replaces the first.
    pub(super) fn set_balloon(&mut self, b: config::BalloonConfig) -> Result<(), VmmActionError> {
        self.require_not_started()?;
        b.validate(self.config.machine_config.mem_size_mib)?;
        self.config.balloon = Some(b);
        Ok(())
    }

    pub(super) fn balloon_config(&self) -> Result<&config::BalloonConfig, ConfigError> {
        self.config.balloon.as_ref().ok_or(ConfigError::NoBalloon)
    }

    /// A new target: before start it is the configuration's; after, the
    /// driver sees it in `num_pages`, with a configuration-change
    /// interrupt.
    pub(super) fn patch_balloon(&mut self, u: config::BalloonUpdate) -> Result<(), VmmActionError> {
        self.balloon_config()?;
        config::check_amount(u.amount_mib, self.config.machine_config.mem_size_mib)?;
        if let Some(vm) = &self.running {
            let b = attached_balloon(vm)?;
            b.balloon
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .set_target_mib(u.amount_mib);
            b.transport
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .config_changed();
            METRICS.balloon.target_updates.inc();
        }
        if let Some(b) = self.config.balloon.as_mut() {
            b.amount_mib = u.amount_mib;
        }
        Ok(())
    }

    /// A new statistics interval. After start statistics cannot be turned
    /// on or off (that would add or remove a queue), as in Firecracker.
    pub(super) fn patch_balloon_stats(
        &mut self,
        u: config::BalloonStatsUpdate,
    ) -> Result<(), VmmActionError> {
        let old = self.balloon_config()?.stats_polling_interval_s;
        let new = u.stats_polling_interval_s;
        if let Some(vm) = &self.running {
            config::check_stats_change(old, new)?;
            let b = attached_balloon(vm)?;
            b.balloon
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .set_stats_interval(new)
                .map_err(|e| VmmActionError::BalloonUpdate(e.to_string()))?;
        }
        if let Some(b) = self.config.balloon.as_mut() {
            b.stats_polling_interval_s = new;
        }
        Ok(())
    }

    /// `GET /balloon/statistics`: after start, with statistics on.
    pub(super) fn balloon_stats(&self) -> Result<serde_json::Value, VmmActionError> {
        if !self.balloon_config()?.stats_enabled() {
            return Err(ConfigError::BalloonStatsDisabled.into());
        }
        let Some(vm) = &self.running else {
            return Err(VmmActionError::BeforeStart);
        };
        let b = attached_balloon(vm)?;
        let stats = b.balloon.lock().unwrap_or_else(|e| e.into_inner()).stats();
        Ok(stats.to_json())
    }

    /// `PATCH /balloon/hinting/start`: a new hinting run; the guest sees
    /// its id after a configuration-change interrupt.
    pub(super) fn start_balloon_hinting(
        &mut self,
        cmd: config::BalloonStartCmd,
    ) -> Result<(), VmmActionError> {
        let b = self.hinting_balloon()?;
        b.balloon
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .start_hinting(cmd.acknowledge_on_stop)
            .map_err(|e| VmmActionError::BalloonUpdate(e.to_string()))?;
        b.transport
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .config_changed();
        Ok(())
    }

    /// `PATCH /balloon/hinting/stop`: the host is done with the hints.
    pub(super) fn stop_balloon_hinting(&mut self) -> Result<(), VmmActionError> {
        let b = self.hinting_balloon()?;
        b.balloon
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .stop_hinting()
            .map_err(|e| VmmActionError::BalloonUpdate(e.to_string()))?;
        b.transport
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .config_changed();
        Ok(())
    }

    /// `GET /balloon/hinting/status`.
    pub(super) fn balloon_hinting_status(&self) -> Result<serde_json::Value, VmmActionError> {
        let b = self.hinting_balloon()?;
        let status = b
            .balloon
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .hinting_status();
        Ok(serde_json::to_value(status).unwrap_or_default())
    }

    /// The running balloon, when it was configured with free page hinting.
    fn hinting_balloon(&self) -> Result<&AttachedBalloon, VmmActionError> {
        if !self.balloon_config()?.free_page_hinting {
            return Err(ConfigError::BalloonHintingDisabled.into());
        }
        let Some(vm) = &self.running else {
            return Err(VmmActionError::BeforeStart);
        };
        attached_balloon(vm)
    }
}

/// The running microVM's balloon device (configured ones are attached at
/// start).
fn attached_balloon(vm: &RunningVm) -> Result<&AttachedBalloon, VmmActionError> {
    vm.balloon.as_ref().ok_or(VmmActionError::BalloonUpdate(
        "the device is not attached".into(),
    ))
}
