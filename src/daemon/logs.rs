//! A container's output, kept on disk as JSON lines (`container.log`,
//! rotated once to `container.log.1` at [`MAX_LOG_BYTES`], so a chatty
//! container costs at most twice that), and passed live to followers.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::agent::protocol::Stream;

/// Size at which the log rotates.
pub const MAX_LOG_BYTES: u64 = 16 << 20;
/// Lines a live follower may fall behind before it misses some.
const LIVE_LINES: usize = 1024;

/// One chunk of output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub stream: Stream,
    pub time_ms: u64,
    /// The bytes as text (invalid UTF-8 replaced, as Docker's json-file
    /// driver does).
    pub data: String,
}

/// The writer side: the pump of one container.
pub struct LogWriter {
    path: PathBuf,
    file: Option<File>,
    size: u64,
    live: broadcast::Sender<LogLine>,
}

fn open_append(path: &Path) -> std::io::Result<(File, u64)> {
    let f = OpenOptions::new().create(true).append(true).open(path)?;
    let size = f.metadata()?.len();
    Ok((f, size))
}

impl LogWriter {
    pub fn new(dir: &Path, live: broadcast::Sender<LogLine>) -> LogWriter {
        let path = dir.join("container.log");
        let (file, size) = match open_append(&path) {
            Ok((f, s)) => (Some(f), s),
            Err(e) => {
                tracing::error!("{}: {e}; logs are not kept", path.display());
                (None, 0)
            }
        };
        LogWriter {
            path,
            file,
            size,
            live,
        }
    }

    pub fn write(&mut self, stream: Stream, bytes: &[u8]) {
        let line = LogLine {
            stream,
            time_ms: super::state::now_ms(),
            data: String::from_utf8_lossy(bytes).into_owned(),
        };
        let mut json = serde_json::to_vec(&line).expect("log lines serialize");
        json.push(b'\n');
        if self.size + json.len() as u64 > MAX_LOG_BYTES {
            self.rotate();
        }
        if let Some(f) = &mut self.file {
            if f.write_all(&json).is_ok() {
                self.size += json.len() as u64;
            }
        }
        // Nobody following is fine.
        let _ = self.live.send(line);
    }

    fn rotate(&mut self) {
        self.file = None;
        let old = self.path.with_extension("log.1");
        let _ = std::fs::rename(&self.path, &old);
        match open_append(&self.path) {
            Ok((f, s)) => {
                self.file = Some(f);
                self.size = s;
            }
            Err(e) => tracing::error!("{}: {e}", self.path.display()),
        }
    }
}

/// A live channel for a container's output.
pub fn live_channel() -> broadcast::Sender<LogLine> {
    broadcast::channel(LIVE_LINES).0
}

/// Which lines a reader wants.
#[derive(Clone, Copy, Debug, Default)]
pub struct LogFilter {
    pub stdout: bool,
    pub stderr: bool,
    pub since_ms: u64,
    /// The last N lines only.
    pub tail: Option<usize>,
}

impl LogFilter {
    pub fn wants(&self, l: &LogLine) -> bool {
        let stream = match l.stream {
            Stream::Stdout => self.stdout,
            Stream::Stderr => self.stderr,
            Stream::Stdin => false,
        };
        stream && l.time_ms >= self.since_ms
    }
}

/// What is on disk, oldest first, filtered.
pub fn read(dir: &Path, filter: &LogFilter) -> Vec<LogLine> {
    let mut lines = Vec::new();
    for name in ["container.log.1", "container.log"] {
        let Ok(f) = File::open(dir.join(name)) else {
            continue;
        };
        for l in BufReader::new(f).lines() {
            let Ok(l) = l else { break };
            if let Ok(line) = serde_json::from_str::<LogLine>(&l) {
                if filter.wants(&line) {
                    lines.push(line);
                }
            }
        }
    }
    if let Some(n) = filter.tail {
        let skip = lines.len().saturating_sub(n);
        lines.drain(..skip);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_kept_filtered_and_rotated() {
        let dir = std::env::temp_dir().join(format!("husk-logs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let live = live_channel();
        let mut rx = live.subscribe();
        let mut w = LogWriter::new(&dir, live);
        w.write(Stream::Stdout, b"out\n");
        w.write(Stream::Stderr, b"err \xff\n");
        assert_eq!(rx.try_recv().unwrap().data, "out\n");
        let all = LogFilter {
            stdout: true,
            stderr: true,
            ..Default::default()
        };
        let got = read(&dir, &all);
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].data, "err \u{fffd}\n");
        let only_err = LogFilter {
            stdout: false,
            ..all
        };
        assert_eq!(read(&dir, &only_err).len(), 1);
        let tail = LogFilter {
            tail: Some(1),
            ..all
        };
        assert_eq!(read(&dir, &tail)[0].stream, Stream::Stderr);
        // Past the limit, the log rotates once: the total stays bounded.
        let big = vec![b'x'; 1 << 20];
        for _ in 0..40 {
            w.write(Stream::Stdout, &big);
        }
        let size = |n: &str| std::fs::metadata(dir.join(n)).map_or(0, |m| m.len());
        assert!(size("container.log") <= MAX_LOG_BYTES);
        assert!(size("container.log.1") <= MAX_LOG_BYTES);
        assert!(size("container.log.1") > 0);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
