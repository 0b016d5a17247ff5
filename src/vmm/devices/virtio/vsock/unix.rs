//! The host side's Unix sockets: binding `uds_path` (a stale socket left
//! by a dead process is replaced, a live one is refused) and connecting
//! to `<uds_path>_<port>` without ever blocking the VMM thread.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

/// The longest path a socket address holds (`sun_path` less its NUL).
pub const MAX_PATH: usize = 107;

#[derive(Debug, thiserror::Error)]
pub enum UdsError {
    #[error("{0} is in use by another process")]
    InUse(String),
    #[error("{0} exists and is not a socket")]
    NotSocket(String),
    #[error("{0} is longer than the {MAX_PATH} bytes a socket path may have")]
    TooLong(String),
    #[error("the directory of {0} does not exist")]
    NoDirectory(String),
    #[error("cannot bind {path}: {err}")]
    Bind { path: String, err: io::Error },
}

/// Checks that `path` can be bound without touching it. Returns true
/// when a stale socket (nobody accepts on it) is there, to be replaced.
pub fn check_path(path: &Path) -> Result<bool, UdsError> {
    let name = || crate::text::echo_path(path);
    if path.as_os_str().len() > MAX_PATH {
        return Err(UdsError::TooLong(name()));
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => match connect(path) {
            Ok(_) => Err(UdsError::InUse(name())),
            // A full backlog: someone listens there.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(UdsError::InUse(name())),
            Err(_) => Ok(true),
        },
        Ok(_) => Err(UdsError::NotSocket(name())),
        Err(_) => {
            let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
            match dir {
                Some(d) if !d.is_dir() => Err(UdsError::NoDirectory(name())),
                _ => Ok(false),
            }
        }
    }
}

/// Binds `path` as a non-blocking listener, replacing a stale socket.
pub fn bind(path: &Path) -> Result<UnixListener, UdsError> {
    let bind_err = |err| UdsError::Bind {
        path: crate::text::echo_path(path),
        err,
    };
    if check_path(path)? {
        std::fs::remove_file(path).map_err(bind_err)?;
    }
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    listener.set_nonblocking(true).map_err(bind_err)?;
    Ok(listener)
}

/// Connects to the stream socket at `path` without blocking: a listener
/// whose backlog is full answers `WouldBlock` rather than stalling the
/// caller, as a blocking connect would. The stream is non-blocking.
pub fn connect(path: &Path) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain old data; all zeros is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a usable socket path",
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: socket() takes no pointers; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a socket just created and owned by nobody else; the
    // stream closes it, on the error paths too.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    let len = std::mem::offset_of!(libc::sockaddr_un, sun_path) + bytes.len() + 1;
    // SAFETY: `addr` is a valid sockaddr_un, and `len` is within it.
    let r = unsafe {
        libc::connect(
            stream.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("husk-uds-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn live_sockets_are_refused_and_stale_ones_replaced() {
        let d = dir("live");
        let p = d.join("v.sock");
        assert!(!check_path(&p).unwrap(), "a free path");
        let live = bind(&p).unwrap();
        let e = bind(&p).unwrap_err();
        assert!(
            e.to_string().contains("is in use by another process"),
            "{e}"
        );
        drop(live);
        // The file stays behind; nobody accepts on it now.
        assert!(check_path(&p).unwrap(), "a stale socket");
        let _again = bind(&p).unwrap();
        let file = d.join("file");
        std::fs::write(&file, b"x").unwrap();
        assert!(matches!(check_path(&file), Err(UdsError::NotSocket(_))));
        assert!(matches!(
            check_path(&d.join("no/such/dir.sock")),
            Err(UdsError::NoDirectory(_))
        ));
        let long = d.join("x".repeat(120));
        assert!(matches!(check_path(&long), Err(UdsError::TooLong(_))));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn connecting_never_blocks() {
        let d = dir("connect");
        let p = d.join("l.sock");
        assert!(connect(&p).is_err(), "nobody listens");
        let l = UnixListener::bind(&p).unwrap();
        let s = connect(&p).unwrap();
        // SAFETY: F_GETFL on a file descriptor the stream owns.
        let flags = unsafe { libc::fcntl(s.as_raw_fd(), libc::F_GETFL) };
        assert_ne!(flags & libc::O_NONBLOCK, 0, "a non-blocking stream");
        let (mut a, _) = l.accept().unwrap();
        use std::io::{Read, Write};
        (&s).write_all(b"hi").unwrap();
        let mut b = [0u8; 2];
        a.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"hi");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
