//! The [`Vmm`]'s MMDS actions: `PUT`/`PATCH`/`GET /mmds`,
//! `PUT /mmds/config`, `--metadata`, and the store handed to the
//! interfaces at start.
//!
//! The store is made on first use, so a VM without MMDS carries none.
//! `PUT`, `PATCH` and `GET /mmds` work before and after start (guests see
//! changes at once); `PUT /mmds/config` only before, after the
//! interfaces it names, as in Firecracker.

use std::path::Path;

use serde_json::Value;

use super::{Mmds, MmdsError, SharedMmds};
use crate::vmm::config::{open_regular, MmdsConfig};
use crate::vmm::rpc::VmmActionError;
use crate::vmm::Vmm;

impl Vmm {
    /// `--mmds-size-limit`: the largest document, in bytes.
    pub fn set_mmds_size_limit(&mut self, limit: usize) {
        self.mmds_size_limit = limit;
    }

    /// The store, made (empty, V1) on first use.
    fn mmds_store(&mut self) -> Result<&SharedMmds, MmdsError> {
        if self.mmds.is_none() {
            let mut m = Mmds::new(self.mmds_size_limit)?;
            if let Some(c) = &self.config.mmds_config {
                m.configure(c.version, c.imds_compat);
            }
            self.mmds = Some(std::sync::Arc::new(std::sync::Mutex::new(m)));
        }
        Ok(self.mmds.as_ref().expect("made above"))
    }

    fn with_mmds<T>(&mut self, f: impl FnOnce(&mut Mmds) -> T) -> Result<T, MmdsError> {
        let m = self.mmds_store()?;
        let mut m = m.lock().unwrap_or_else(|e| e.into_inner());
        Ok(f(&mut m))
    }

    /// `PUT /mmds`: replaces the document.
    pub(crate) fn put_mmds(&mut self, v: Value) -> Result<(), VmmActionError> {
        self.with_mmds(|m| m.store_mut().put(v))?
            .map_err(MmdsError::from)?;
        Ok(())
    }

    /// `PATCH /mmds`: a JSON merge patch (RFC 7396).
    pub(crate) fn patch_mmds(&mut self, patch: &Value) -> Result<(), VmmActionError> {
        self.with_mmds(|m| m.store_mut().patch(patch))?
            .map_err(MmdsError::from)?;
        Ok(())
    }

    /// `GET /mmds`: the document; `{}` before the first PUT, as
    /// Firecracker answers.
    pub(crate) fn get_mmds(&mut self) -> Result<Value, VmmActionError> {
        let v = self.with_mmds(|m| m.store().value().clone())?;
        Ok(match v {
            Value::Null => Value::Object(Default::default()),
            v => v,
        })
    }

    /// `PUT /mmds/config`, before start, naming configured interfaces.
    pub(crate) fn set_mmds_config(&mut self, c: MmdsConfig) -> Result<(), VmmActionError> {
        self.require_not_started()?;
        let c = c.validated(&self.config.network_interfaces)?;
        let (version, compat) = (c.version, c.imds_compat);
        self.with_mmds(|m| m.configure(version, compat))?;
        self.config.mmds_config = Some(c);
        Ok(())
    }

    /// `--metadata FILE`: the document's first contents.
    pub fn load_metadata(&mut self, path: &Path) -> Result<(), MmdsError> {
        use std::io::Read;
        let show = crate::text::echo_path(path);
        let err = |e: String| MmdsError::MetadataFile {
            path: show.clone(),
            err: e,
        };
        // Room for the document with generous formatting; more is not
        // metadata this store could hold.
        let cap = (self.mmds_size_limit as u64).saturating_mul(4).max(1 << 20);
        let mut text = Vec::new();
        open_regular(path)
            .map_err(|e| err(e.to_string()))?
            .take(cap + 1)
            .read_to_end(&mut text)
            .map_err(|e| err(e.to_string()))?;
        if text.len() as u64 > cap {
            return Err(err(format!("larger than {cap} bytes")));
        }
        let v: Value = serde_json::from_slice(&text).map_err(|e| err(e.to_string()))?;
        self.with_mmds(|m| m.store_mut().put(v))??;
        Ok(())
    }

    /// What the interfaces answer from, when `mmds-config` names any;
    /// the store's version follows the configuration (a restored one
    /// included).
    pub(crate) fn mmds_for_start(
        &mut self,
        config: Option<&MmdsConfig>,
    ) -> Result<Option<SharedMmds>, VmmActionError> {
        let Some(c) = config.cloned() else {
            return Ok(None);
        };
        self.with_mmds(|m| m.configure(c.version, c.imds_compat))?;
        Ok(self.mmds.clone())
    }
}
