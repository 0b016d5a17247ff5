//! `PUT /entropy`: a virtio-rng device fed by the host's `getrandom`.

use serde::{Deserialize, Serialize};

use super::ConfigError;
use crate::vmm::devices::rate_limiter::RateLimiterConfig;

/// `PUT /entropy`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntropyConfig {
    /// Bandwidth is counted in bytes of entropy handed to the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiterConfig>,
}

impl EntropyConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        match &self.rate_limiter {
            Some(r) => r
                .validate()
                .map_err(|e| ConfigError::RateLimiter(e.to_string())),
            None => Ok(()),
        }
    }
}
