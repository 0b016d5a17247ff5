//! Where the VMM writes: `PUT /logger`, `PUT /metrics` and `PUT /serial`.

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// `PUT /logger`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggerConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_level: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_log_origin: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
}

impl LoggerConfig {
    /// The level as a tracing filter directive ("warn", "off", ...).
    pub fn level_directive(&self) -> Result<&'static str, ConfigError> {
        let level = self.level.as_deref().unwrap_or("Info");
        Ok(match level.to_ascii_lowercase().as_str() {
            "error" => "error",
            "warning" | "warn" => "warn",
            "info" => "info",
            "debug" => "debug",
            "trace" => "trace",
            "off" => "off",
            _ => return Err(ConfigError::LogLevel(level.into())),
        })
    }
}

/// `PUT /metrics`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    pub metrics_path: String,
}

/// `PUT /serial`: where the guest console goes (stdout when unset), and
/// how many bytes of it per period (Firecracker's `rate_limiter`: one
/// token bucket of bytes; what the guest writes beyond it is dropped and
/// counted, so a guest cannot fill the host's disk or log).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_out_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<crate::vmm::devices::rate_limiter::TokenBucketConfig>,
}

impl SerialConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        match &self.rate_limiter {
            Some(b) => b
                .validate()
                .map_err(|e| ConfigError::RateLimiter(e.to_string())),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_levels() {
        let l = |s: &str| LoggerConfig {
            level: Some(s.into()),
            ..Default::default()
        };
        assert_eq!(l("Warning").level_directive(), Ok("warn"));
        assert_eq!(l("debug").level_directive(), Ok("debug"));
        assert_eq!(l("Off").level_directive(), Ok("off"));
        assert!(l("loud").level_directive().is_err());
    }
}
