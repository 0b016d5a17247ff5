//! The host side of the hybrid vsock: connecting to a guest port through
//! the device's Unix socket, and accepting the guest's connections on
//! `<uds>_<port>`.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(10);

/// Where the guest's connections to host `port` arrive.
pub fn port_path(uds: &Path, port: u32) -> PathBuf {
    let mut p = uds.as_os_str().to_owned();
    p.push(format!("_{port}"));
    PathBuf::from(p)
}

/// Connects to `uds` and asks for guest `port`; returns the stream and
/// the host port from `OK <port>`. A client the device closes (the guest
/// was not ready) tries again.
pub fn connect(uds: &Path, port: u32) -> (BufReader<UnixStream>, u32) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        assert!(Instant::now() < deadline, "no OK from the device");
        let Ok(mut s) = UnixStream::connect(uds) else {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        s.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
        let mut r = BufReader::new(s);
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        let local = line
            .strip_prefix("OK ")
            .and_then(|p| p.trim_end().parse().ok())
            .unwrap_or_else(|| panic!("not an OK line: {line:?}"));
        assert!(line.ends_with('\n'), "{line:?}");
        return (r, local);
    }
}

/// The guest's connection to a host listener, or a failure (not a hang)
/// when none comes.
pub fn accept(l: &UnixListener) -> UnixStream {
    l.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(TIMEOUT)).unwrap();
                return s;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "the guest never connected");
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => panic!("{e}"),
        }
    }
}

/// The host's half of the probe's vsock check through the socket at
/// `uds` (a host path): a line on guest port 1234 is echoed, then the
/// guest's own connection to host port 5678, taken on `to_host`, brings
/// what it sent, which is returned.
pub fn probe_exchange(uds: &Path, to_host: &UnixListener, line: &str) -> String {
    use std::io::Read;
    let (mut s, _) = connect(uds, 1234);
    s.get_mut().write_all(line.as_bytes()).unwrap();
    let mut echo = String::new();
    s.read_line(&mut echo).unwrap();
    assert_eq!(echo, line);
    let mut got = String::new();
    accept(to_host).read_to_string(&mut got).unwrap();
    got
}
