//! A persistent TAP device for the tests, and the host's end of it: an
//! AF_PACKET socket bound to the TAP, through which the host reads and
//! writes frames as any host program on that interface would.
//!
//! Included by path (`#[path = "common/tap.rs"] mod tap;`) next to
//! `mod common;`, so only the tests that use a TAP carry it.

#![allow(dead_code)]

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::common::skip;

/// The probe guest's ethertype.
pub const ETHERTYPE: u16 = 0x88b5;
pub const GUEST_MAC: [u8; 6] = [0x06, 0x00, 0xac, 0x10, 0x00, 0x02];
pub const HOST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x99];

pub fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain old data; all zeros is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    ifr
}

pub fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Attaches a new file to the TAP `name` (creating it if needed).
pub fn attach(name: &str) -> io::Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    let mut ifr = ifreq(name);
    ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes an ifreq, which `ifr` is.
    cvt(unsafe { libc::ioctl(f.as_raw_fd(), libc::TUNSETIFF, &mut ifr) })?;
    Ok(f)
}

/// A persistent TAP, up, IPv6 off so the host sends nothing of its own;
/// deleted on drop.
pub struct TestTap {
    pub name: String,
    pub index: libc::c_int,
}

impl TestTap {
    /// Creates `hk<tag><pid>`, owned by `owner` if given (TUNSETOWNER:
    /// only that uid, or a process with CAP_NET_ADMIN, may attach to it).
    /// None, after saying `skipped:`, when this host will not make one.
    pub fn create(tag: &str, owner: Option<u32>) -> Option<TestTap> {
        let name = format!("hk{tag}{}", std::process::id() % 1_000_000);
        let made = attach(&name).and_then(|f| {
            if let Some(uid) = owner {
                // SAFETY: TUNSETOWNER takes its argument by value.
                cvt(unsafe {
                    libc::ioctl(f.as_raw_fd(), libc::TUNSETOWNER, libc::c_ulong::from(uid))
                })?;
            }
            // SAFETY: TUNSETPERSIST takes its argument by value.
            cvt(unsafe { libc::ioctl(f.as_raw_fd(), libc::TUNSETPERSIST, 1 as libc::c_ulong) })
        });
        if let Err(e) = made {
            skip(&format!("cannot create a TAP device: {e}"));
            return None;
        }
        let mut tap = TestTap {
            index: 0,
            name: name.clone(),
        };
        // No router solicitations or MLD reports of the host's own.
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
        // SAFETY: a plain socket call; the fd is owned at once.
        let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        assert!(sock >= 0, "socket: {}", io::Error::last_os_error());
        // SAFETY: `sock` is a fresh descriptor nothing else owns.
        let sock = unsafe { OwnedFd::from_raw_fd(sock) };
        let mut ifr = ifreq(&name);
        // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write an ifreq.
        unsafe {
            cvt(libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr)).unwrap();
            ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            cvt(libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr)).unwrap();
        }
        let c = CString::new(name).unwrap();
        // SAFETY: `c` is a valid NUL-terminated string.
        tap.index = unsafe { libc::if_nametoindex(c.as_ptr()) } as libc::c_int;
        assert!(tap.index > 0);
        Some(tap)
    }
}

impl Drop for TestTap {
    fn drop(&mut self) {
        let cleared = attach(&self.name).and_then(|f| {
            // SAFETY: TUNSETPERSIST takes its argument by value.
            cvt(unsafe { libc::ioctl(f.as_raw_fd(), libc::TUNSETPERSIST, 0 as libc::c_ulong) })
        });
        if cleared.is_err() {
            let _ = std::process::Command::new("ip")
                .args(["link", "del", &self.name])
                .status();
        }
    }
}

/// An AF_PACKET socket on the TAP for frames of ETHERTYPE.
pub struct Packets(OwnedFd);

impl Packets {
    pub fn open(tap: &TestTap) -> Packets {
        let proto = ETHERTYPE.to_be();
        // SAFETY: a plain socket call; the fd is owned at once.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::c_int::from(proto),
            )
        };
        assert!(fd >= 0, "AF_PACKET: {}", io::Error::last_os_error());
        // SAFETY: `fd` is a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_ll is plain old data.
        let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sa.sll_family = libc::AF_PACKET as u16;
        sa.sll_protocol = proto;
        sa.sll_ifindex = tap.index;
        // SAFETY: `sa` is a sockaddr_ll of the length given.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        cvt(r).unwrap();
        Packets(fd)
    }

    /// The next frame coming in from the TAP (the guest's side), within
    /// `timeout`.
    pub fn recv(&self, timeout: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let mut pfd = libc::pollfd {
                fd: self.0.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one pollfd, valid for the call.
            if unsafe { libc::poll(&mut pfd, 1, left.as_millis() as i32) } <= 0 {
                continue;
            }
            let mut buf = vec![0u8; 2048];
            // SAFETY: sockaddr_ll is plain old data.
            let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            // SAFETY: the buffer and address are valid for their lengths.
            let n = unsafe {
                libc::recvfrom(
                    self.0.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&mut sa as *mut libc::sockaddr_ll).cast(),
                    &mut len,
                )
            };
            if n < 0 {
                continue;
            }
            // Our own frames going out show here too.
            if sa.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            buf.truncate(n as usize);
            return Some(buf);
        }
    }

    /// Sends an Ethernet frame of the probe's ethertype out of the TAP
    /// (towards the guest).
    pub fn send(&self, dst: [u8; 6], payload: &[u8]) {
        self.send_typed(dst, ETHERTYPE, payload)
    }

    pub fn send_typed(&self, dst: [u8; 6], ethertype: u16, payload: &[u8]) {
        let mut f = dst.to_vec();
        f.extend_from_slice(&HOST_MAC);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(payload);
        // SAFETY: the buffer is valid for its length.
        let n = unsafe { libc::send(self.0.as_raw_fd(), f.as_ptr().cast(), f.len(), 0) };
        assert_eq!(n, f.len() as isize, "{}", io::Error::last_os_error());
    }
}
