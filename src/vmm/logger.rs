//! Logging through `tracing`: stderr at `HUSK_LOG` (default `warn`) until
//! `PUT /logger` (or the config file's `logger`) redirects it.
//!
//! The filter and the formatter are each behind a reload handle; the
//! formatter writes through a shared, swappable sink. The filter takes
//! `target=level` directives (`Targets`), which is all Firecracker's
//! `module` field needs; it keeps a regex engine out of every VMM.

use std::io::{self, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::format::{DefaultFields, Format};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Layered, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, reload, Registry};

use crate::vmm::config::{ConfigError, LoggerConfig};
use crate::vmm::metrics::METRICS;
use crate::vmm::sink::OutputFile;

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

/// Where log lines go: stderr until a log file is configured.
#[derive(Clone)]
pub struct LogSink(Arc<Mutex<Box<dyn Write + Send>>>);

impl Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).flush()
    }
}

impl<'a> MakeWriter<'a> for LogSink {
    type Writer = LogSink;
    fn make_writer(&'a self) -> LogSink {
        self.clone()
    }
}

/// A log file or FIFO: each line is written whole or, when a FIFO's
/// reader has fallen behind, dropped and counted.
struct LogFile(OutputFile);

impl Write for LogFile {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        if !self.0.write_record(line)? {
            METRICS.vmm.missed_log_lines.inc();
        }
        Ok(line.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

type FilterLayer = reload::Layer<Targets, Registry>;
type FmtLayer = fmt::Layer<Layered<FilterLayer, Registry>, DefaultFields, Format, LogSink>;

struct Handles {
    filter: reload::Handle<Targets, Registry>,
    format: reload::Handle<FmtLayer, Layered<FilterLayer, Registry>>,
}

/// Changes where and how much the process logs.
pub struct Logger {
    sink: LogSink,
    handles: Option<Handles>,
}

fn fmt_layer(sink: LogSink, show_level: bool, origin: bool) -> FmtLayer {
    fmt::layer()
        .with_writer(sink)
        .with_ansi(false)
        .with_level(show_level)
        .with_target(origin)
        .with_file(origin)
        .with_line_number(origin)
}

impl Logger {
    /// Installs the process-wide subscriber. A second call (tests run many
    /// VMMs in one process) leaves the first in place.
    pub fn init() -> Logger {
        let sink = LogSink(Arc::new(Mutex::new(Box::new(io::stderr()))));
        let filter = std::env::var("HUSK_LOG")
            .ok()
            .and_then(|v| v.parse::<Targets>().ok())
            .unwrap_or_else(|| Targets::new().with_default(tracing::Level::WARN));
        let (filter, filter_handle) = reload::Layer::new(filter);
        let (format, format_handle) = reload::Layer::new(fmt_layer(sink.clone(), true, false));
        let installed = tracing_subscriber::registry()
            .with(filter)
            .with(format)
            .try_init()
            .is_ok();
        Logger {
            sink,
            handles: installed.then_some(Handles {
                filter: filter_handle,
                format: format_handle,
            }),
        }
    }

    /// Applies a Firecracker-style logger configuration.
    pub fn configure(&self, cfg: &LoggerConfig) -> Result<(), LoggerError> {
        let level = cfg.level_directive()?;
        let directive = match &cfg.module {
            Some(m) => format!("{m}={level}"),
            None => level.to_string(),
        };
        let filter = directive
            .parse::<Targets>()
            .map_err(|_| LoggerError::Module(cfg.module.clone().unwrap_or_default()))?;
        let out: Box<dyn Write + Send> = match &cfg.log_path {
            Some(path) => Box::new(LogFile(OutputFile::open(Path::new(path)).map_err(
                |err| LoggerError::Open {
                    path: crate::text::echo(path).into_owned(),
                    err,
                },
            )?)),
            None => Box::new(io::stderr()),
        };
        let Some(h) = &self.handles else {
            // Another logger owns this process (only in tests).
            return Ok(());
        };
        let layer = fmt_layer(
            self.sink.clone(),
            cfg.show_level.unwrap_or(true),
            cfg.show_log_origin.unwrap_or(false),
        );
        h.format.reload(layer).map_err(|_| LoggerError::Reload)?;
        h.filter.reload(filter).map_err(|_| LoggerError::Reload)?;
        *self.sink.0.lock().unwrap_or_else(|e| e.into_inner()) = out;
        Ok(())
    }
}
