//! Files the VMM writes to as it runs: the log, the metrics and the
//! guest's serial output. Each may be a regular file (appended to,
//! created when missing), a character device, or a named pipe.
//!
//! Nothing here may block the thread that writes: every open is
//! `O_NONBLOCK`, and a FIFO is opened read-write, which never waits for a
//! reader (the way Firecracker opens its log and metrics FIFOs). When the
//! reader falls behind and the pipe is full, a record is dropped whole
//! (never cut in half) and the caller counts it.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// An output opened so that writing to it never blocks.
#[derive(Debug)]
pub struct OutputFile {
    file: File,
    fifo: bool,
}

impl OutputFile {
    /// Opens `path` for appending without ever blocking, whatever it is.
    pub fn open(path: &Path) -> io::Result<OutputFile> {
        let is_fifo = |p: &Path| {
            std::fs::metadata(p)
                .map(|m| m.file_type().is_fifo())
                .unwrap_or(false)
        };
        if is_fifo(path) {
            return Self::open_fifo(path);
        }
        let opened = OpenOptions::new()
            .create(true)
            .append(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path);
        match opened {
            // A FIFO with no reader, put there since the check.
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) && is_fifo(path) => {
                Self::open_fifo(path)
            }
            Err(e) => Err(e),
            Ok(file) => {
                let fifo = file.metadata()?.file_type().is_fifo();
                Ok(OutputFile { file, fifo })
            }
        }
    }

    fn open_fifo(path: &Path) -> io::Result<OutputFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)?;
        Ok(OutputFile { file, fifo: true })
    }

    /// Whether this output is a named pipe.
    pub fn is_fifo(&self) -> bool {
        self.fifo
    }

    /// Writes `record` whole, or not at all when a pipe has no room for
    /// it. Returns whether it was written.
    pub fn write_record(&mut self, record: &[u8]) -> io::Result<bool> {
        if self.fifo && pipe_room(&self.file).is_some_and(|room| room < record.len()) {
            return Ok(false);
        }
        match self.file.write_all(record) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// Free space in a pipe: its capacity less what is queued in it.
fn pipe_room(f: &File) -> Option<usize> {
    let fd = f.as_raw_fd();
    // SAFETY: F_GETPIPE_SZ takes no argument and only returns a value.
    let size = unsafe { libc::fcntl(fd, libc::F_GETPIPE_SZ) };
    let mut queued: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int into `queued`, which we own.
    let r = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut queued) };
    if size < 0 || r < 0 {
        return None;
    }
    usize::try_from(size - queued).ok()
}

/// Byte-stream writes (the serial console): as much as fits now.
impl Write for OutputFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn fifo(dir: &Path) -> std::path::PathBuf {
        let p = dir.join("fifo");
        let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        p
    }

    fn scratch(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("husk-sink-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_fifo_without_a_reader_opens_and_never_blocks() {
        let d = scratch("noreader");
        let p = fifo(&d);
        let mut out = OutputFile::open(&p).unwrap();
        assert!(out.is_fifo());
        let record = vec![b'x'; 4000];
        let mut written = 0;
        // Fill the pipe: once full, records are dropped, not blocked on.
        for _ in 0..1000 {
            if out.write_record(&record).unwrap() {
                written += 1;
            }
        }
        assert!(written > 0 && written < 1000, "{written}");
        // A reader that comes later gets whole records only.
        let mut r = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&p)
            .unwrap();
        let mut got = Vec::new();
        let _ = r.read_to_end(&mut got);
        assert_eq!(got.len() % record.len(), 0);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn regular_files_are_created_and_appended() {
        let d = scratch("regular");
        let p = d.join("log");
        std::fs::write(&p, "a\n").unwrap();
        let mut out = OutputFile::open(&p).unwrap();
        assert!(!out.is_fifo());
        assert!(out.write_record(b"b\n").unwrap());
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "a\nb\n");
        assert!(OutputFile::open(&d).is_err(), "a directory is refused");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
