//! A TAP device, opened by name through `/dev/net/tun`: single queue,
//! non-blocking, frames without packet information but with a 12-byte
//! virtio-net header (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`,
//! `TUNSETVNETHDRSZ` 12), the layout a virtio 1.x driver uses, so frames
//! pass between the guest and the TAP unchanged.
//!
//! Only an existing TAP is opened, as Firecracker does: `TUNSETIFF` on a
//! name that does not exist would create a new interface, connected to
//! nothing. So the name is looked up first, and a TAP that turns out to
//! have been created by the open (it is not persistent) is closed again.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

/// Bytes of `virtio_net_hdr_v1` (with `num_buffers`), before every frame.
pub const VNET_HDR_LEN: usize = 12;
/// Longest interface name (IFNAMSIZ less the NUL).
pub const MAX_NAME_LEN: usize = libc::IFNAMSIZ - 1;

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("invalid host_dev_name {0:?}: 1 to {MAX_NAME_LEN} bytes, no '/', ':' or white space")]
    Name(String),
    #[error(
        "host_dev_name {0:?}: no such network interface on this host; \
         create the TAP first (ip tuntap add dev {0} mode tap)"
    )]
    NoSuchInterface(String),
    #[error("host_dev_name {0:?} is not a single-queue TAP device")]
    NotTap(String),
    #[error("TAP {0:?} is in use by another process")]
    Busy(String),
    #[error("cannot open /dev/net/tun: {0}")]
    OpenTun(io::Error),
    #[error("cannot attach to TAP {name:?}: {err}")]
    Attach { name: String, err: io::Error },
    #[error("cannot set up TAP {name:?}: {err}")]
    Setup { name: String, err: io::Error },
}

/// An open TAP queue.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

/// Checks `name` the way the kernel's `dev_valid_name` does.
pub fn check_name(name: &str) -> Result<(), TapError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0);
    if ok {
        Ok(())
    } else {
        Err(TapError::Name(crate::text::echo(name).into_owned()))
    }
}

/// Whether a network interface called `name` exists in this process's
/// network namespace.
pub fn interface_exists(name: &str) -> bool {
    let Ok(c) = std::ffi::CString::new(name) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated string; the call reads it only.
    unsafe { libc::if_nametoindex(c.as_ptr()) != 0 }
}

fn ifreq(name: &str, flags: libc::c_int) -> libc::ifreq {
    // SAFETY: ifreq is plain old data; all zeros is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_flags = flags as libc::c_short;
    ifr
}

impl Tap {
    /// Opens the existing TAP `name`.
    pub fn open(name: &str) -> Result<Tap, TapError> {
        check_name(name)?;
        let shown = || crate::text::echo(name).into_owned();
        if !interface_exists(name) {
            return Err(TapError::NoSuchInterface(shown()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::OpenTun)?;
        let mut ifr = ifreq(name, libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR);
        // SAFETY: TUNSETIFF reads and writes an ifreq, which `ifr` is.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut ifr) };
        if r < 0 {
            let err = io::Error::last_os_error();
            return Err(match err.raw_os_error() {
                Some(libc::EINVAL) => TapError::NotTap(shown()),
                Some(libc::EBUSY) => TapError::Busy(shown()),
                _ => TapError::Attach { name: shown(), err },
            });
        }
        // The interface went away between the look-up and TUNSETIFF, so
        // the open created a new one: closing it removes it again.
        // SAFETY: TUNGETIFF writes an ifreq, which `ifr` is.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNGETIFF, &mut ifr) };
        // SAFETY: TUNGETIFF filled in the flags member of the union.
        let flags = libc::c_int::from(unsafe { ifr.ifr_ifru.ifru_flags });
        if r == 0 && flags & libc::IFF_PERSIST == 0 {
            return Err(TapError::NoSuchInterface(shown()));
        }
        let hdr_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int, which `hdr_len` is.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr_len) };
        if r < 0 {
            return Err(TapError::Setup {
                name: shown(),
                err: io::Error::last_os_error(),
            });
        }
        Ok(Tap {
            file,
            name: name.to_string(),
        })
    }

    /// A TAP stand-in over any datagram file (a socket pair in tests).
    pub fn from_file(file: File, name: &str) -> Tap {
        Tap {
            file,
            name: name.to_string(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// TUNSETOFFLOAD: which offloads the kernel may leave to the reader
    /// (`TUN_F_*`): partial checksums, TSO, UFO.
    pub fn set_offload(&self, flags: u32) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory
        // is passed.
        let r = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Reads one frame (header first); `WouldBlock` when there is none.
    pub fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Whether a read would find a frame now (a poll that does not wait).
    pub fn readable(&self) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.file.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd, valid for the call; no wait.
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        n > 0 && pfd.revents & libc::POLLIN != 0
    }

    /// Writes one frame (header first).
    pub fn write_frame(&self, buf: &[u8]) -> io::Result<usize> {
        (&self.file).write(buf)
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_like_the_kernel_does() {
        for ok in ["tap0", "a", "fc-tap_1.2", "123456789012345"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a:b",
            "a b",
            "1234567890123456",
            "x\0",
        ] {
            assert!(matches!(check_name(bad), Err(TapError::Name(_))), "{bad:?}");
        }
    }

    #[test]
    fn missing_and_non_tap_interfaces_are_refused() {
        let e = Tap::open("husk-none0").unwrap_err();
        assert!(matches!(e, TapError::NoSuchInterface(_)), "{e}");
        assert!(
            e.to_string().contains("ip tuntap add dev husk-none0"),
            "{e}"
        );
        assert!(!interface_exists("husk-none0"));
        // The loopback exists everywhere and is no TAP. Without the right
        // to open /dev/net/tun the open fails earlier, which is fine too.
        match Tap::open("lo") {
            Err(TapError::NotTap(_)) | Err(TapError::OpenTun(_)) => {}
            other => panic!("lo: {other:?}"),
        }
    }
}
