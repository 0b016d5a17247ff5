//! Logging through `tracing`: stderr at `HUSK_LOG` (default `warn`) until
//! `PUT /logger` (or the config file's `logger`) redirects it.

use std::fs::OpenOptions;
use std::sync::Mutex;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, reload, EnvFilter, Layer, Registry};

use crate::vmm::config::{ConfigError, LoggerConfig};

type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum LoggerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("invalid logger module filter {0:?}")]
    Module(String),
    #[error("cannot open log file {path}: {err}")]
    Open { path: String, err: std::io::Error },
    #[error("cannot install the new logger")]
    Reload,
}

/// Changes where and how much the process logs.
pub struct Logger {
    handle: Option<reload::Handle<BoxedLayer, Registry>>,
}

fn stderr_layer(filter: EnvFilter) -> BoxedLayer {
    fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_filter(filter)
        .boxed()
}

impl Logger {
    /// Installs the process-wide subscriber. A second call (tests run many
    /// VMMs in one process) leaves the first in place.
    pub fn init() -> Logger {
        let filter = EnvFilter::try_from_env("HUSK_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
        let (layer, handle) = reload::Layer::new(stderr_layer(filter));
        let installed = tracing_subscriber::registry()
            .with(layer)
            .try_init()
            .is_ok();
        Logger {
            handle: installed.then_some(handle),
        }
    }

    /// Applies a Firecracker-style logger configuration.
    pub fn configure(&self, cfg: &LoggerConfig) -> Result<(), LoggerError> {
        let level = cfg.level_directive()?;
        let directive = match &cfg.module {
            Some(m) => format!("{m}={level}"),
            None => level.to_string(),
        };
        let filter = EnvFilter::try_new(&directive)
            .map_err(|_| LoggerError::Module(cfg.module.clone().unwrap_or_default()))?;
        let origin = cfg.show_log_origin.unwrap_or(false);
        let show_level = cfg.show_level.unwrap_or(true);
        let layer: BoxedLayer = match &cfg.log_path {
            Some(path) => {
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|err| LoggerError::Open {
                        path: path.clone(),
                        err,
                    })?;
                fmt::layer()
                    .with_writer(Mutex::new(file))
                    .with_ansi(false)
                    .with_level(show_level)
                    .with_target(origin)
                    .with_file(origin)
                    .with_line_number(origin)
                    .with_filter(filter)
                    .boxed()
            }
            None => fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(false)
                .with_level(show_level)
                .with_target(origin)
                .with_file(origin)
                .with_line_number(origin)
                .with_filter(filter)
                .boxed(),
        };
        match &self.handle {
            Some(h) => h.reload(layer).map_err(|_| LoggerError::Reload),
            // Another logger owns this process (only in tests).
            None => Ok(()),
        }
    }
}
