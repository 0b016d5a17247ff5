//! The guest's network: the loopback interface, and the container's
//! interface as the host describes it in `Start` ([`GuestNetwork`]).
//!
//! Everything goes through the classic `SIOC*` ioctls on an `AF_INET`
//! datagram socket, which act in the calling thread's network namespace.
//! The interface is found through `/sys/class/net/*/address`, which shows
//! the namespace of whoever mounted that sysfs: in the guest there is one
//! namespace and one sysfs, so the two agree.

use std::ffi::CString;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::agent::protocol::GuestNetwork;

/// Where the kernel lists network interfaces.
const SYS_CLASS_NET: &str = "/sys/class/net";
/// How long `configure` waits for the interface to appear: virtio-net
/// may finish probing after the agent starts.
const APPEAR_TIMEOUT: Duration = Duration::from_secs(1);
const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// The smallest MTU IPv4 allows (RFC 791).
const MIN_MTU: u16 = 68;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("invalid guest network: {0:?} is not a unicast MAC address like 02:42:0a:58:00:02")]
    Mac(String),
    #[error(
        "invalid guest network: {0:?} is not an interface name \
         (1 to 15 bytes, no '/', ':', whitespace or NUL, not . or ..)"
    )]
    Name(String),
    #[error("invalid guest network: prefix length {0} is over 32")]
    PrefixLen(u8),
    #[error("invalid guest network: MTU {0} is below {MIN_MTU}")]
    Mtu(u16),
    #[error("invalid guest network: {0} is not a unicast address an interface can have")]
    Address(Ipv4Addr),
    #[error(
        "invalid guest network: {address}/{prefix_len} is the network or broadcast address of its subnet"
    )]
    NotAHost { address: Ipv4Addr, prefix_len: u8 },
    #[error(
        "invalid guest network: the gateway {gateway} is not a host of the subnet of {address}/{prefix_len}, other than the address itself"
    )]
    Gateway {
        gateway: Ipv4Addr,
        address: Ipv4Addr,
        prefix_len: u8,
    },
    #[error(
        "no network interface with MAC {mac} appeared in {SYS_CLASS_NET} within {} ms \
         (is the VM's network device attached?)",
        .waited.as_millis()
    )]
    NotFound { mac: String, waited: Duration },
    #[error("cannot open a socket to configure the network: {0}")]
    Socket(io::Error),
    #[error("{iface}: cannot {step}: {err}")]
    Step {
        iface: String,
        step: String,
        err: io::Error,
    },
}

/// Brings the loopback interface `lo` up; the kernel then gives it
/// 127.0.0.1/8 and ::1.
pub fn loopback_up() -> Result<(), NetError> {
    let sock = socket()?;
    set_up(&sock, "lo")
}

/// Configures the container's interface: finds it by its MAC, renames it,
/// sets its MTU, address, netmask and broadcast address, brings it up and
/// adds the default route. Invalid settings are refused before anything
/// is touched.
pub fn configure(net: &GuestNetwork) -> Result<(), NetError> {
    configure_within(net, APPEAR_TIMEOUT)
}

fn configure_within(net: &GuestNetwork, timeout: Duration) -> Result<(), NetError> {
    let mac = validate(net)?;
    let current = find_by_mac(Path::new(SYS_CLASS_NET), &mac, timeout)?.ok_or_else(|| {
        NetError::NotFound {
            mac: net.mac.clone(),
            waited: timeout,
        }
    })?;
    let sock = socket()?;
    let name = net.name.as_str();
    if current != name {
        // A name changes only while the interface is down.
        let flags = get_flags(&sock, &current)?;
        if flags & IFF_UP != 0 {
            set_flags(&sock, &current, flags & !IFF_UP, "bring it down")?;
        }
        let mut req = ifreq(&current)?;
        req.ifr_ifru.ifru_newname = ifname(name)?;
        ifreq_ioctl(
            &sock,
            libc::SIOCSIFNAME,
            &mut req,
            &current,
            &format!("rename it to {name}"),
        )?;
    }
    if let Some(mtu) = net.mtu {
        let mut req = ifreq(name)?;
        req.ifr_ifru.ifru_mtu = libc::c_int::from(mtu);
        ifreq_ioctl(
            &sock,
            libc::SIOCSIFMTU,
            &mut req,
            name,
            &format!("set the MTU to {mtu}"),
        )?;
    }
    let mask = netmask(net.prefix_len);
    let steps = [
        (libc::SIOCSIFADDR, net.address, "set the address"),
        (libc::SIOCSIFNETMASK, mask, "set the netmask"),
        // No broadcast address on /31 and /32 (RFC 3021).
        (
            libc::SIOCSIFBRDADDR,
            broadcast(net.address, net.prefix_len).unwrap_or(Ipv4Addr::UNSPECIFIED),
            "set the broadcast address",
        ),
    ];
    for (request, addr, what) in steps {
        let mut req = ifreq(name)?;
        req.ifr_ifru.ifru_addr = sockaddr(addr);
        ifreq_ioctl(&sock, request, &mut req, name, &format!("{what} {addr}"))?;
    }
    set_up(&sock, name)?;
    if let Some(gateway) = net.gateway {
        add_default_route(&sock, name, gateway)?;
    }
    Ok(())
}

/// Checks a network before anything is touched; returns the MAC's bytes.
pub fn validate(net: &GuestNetwork) -> Result<[u8; 6], NetError> {
    let mac = parse_mac(&net.mac)
        .filter(|m| m != &[0; 6] && m[0] & 1 == 0)
        .ok_or_else(|| NetError::Mac(net.mac.clone()))?;
    let n = &net.name;
    if n.is_empty()
        || n.len() >= libc::IFNAMSIZ
        || n == "."
        || n == ".."
        || n.chars()
            .any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace())
    {
        return Err(NetError::Name(n.clone()));
    }
    if net.prefix_len > 32 {
        return Err(NetError::PrefixLen(net.prefix_len));
    }
    if let Some(mtu) = net.mtu.filter(|&m| m < MIN_MTU) {
        return Err(NetError::Mtu(mtu));
    }
    let a = net.address;
    if a.is_unspecified() || a.is_loopback() || a.is_multicast() || a.is_broadcast() {
        return Err(NetError::Address(a));
    }
    let (address, prefix_len) = (a, net.prefix_len);
    let is_host = |ip: Ipv4Addr| match broadcast(ip, prefix_len) {
        Some(b) => ip != network(ip, prefix_len) && ip != b,
        None => true,
    };
    if !is_host(address) {
        return Err(NetError::NotAHost {
            address,
            prefix_len,
        });
    }
    if let Some(gateway) = net.gateway {
        if gateway == address
            || network(gateway, prefix_len) != network(address, prefix_len)
            || !is_host(gateway)
        {
            return Err(NetError::Gateway {
                gateway,
                address,
                prefix_len,
            });
        }
    }
    Ok(mac)
}

/// "02:42:0A:58:00:02" (either case) to its six bytes.
fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.trim().split(':');
    for b in &mut out {
        let p = parts.next()?;
        if p.len() != 2 || !p.bytes().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

fn netmask(prefix_len: u8) -> Ipv4Addr {
    Ipv4Addr::from(
        u32::MAX
            .checked_shl(32 - u32::from(prefix_len))
            .unwrap_or(0),
    )
}

fn network(ip: Ipv4Addr, prefix_len: u8) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(ip) & u32::from(netmask(prefix_len)))
}

/// The subnet's broadcast address; none for /31 and /32.
fn broadcast(ip: Ipv4Addr, prefix_len: u8) -> Option<Ipv4Addr> {
    (prefix_len < 31).then(|| Ipv4Addr::from(u32::from(ip) | !u32::from(netmask(prefix_len))))
}

/// Polls `dir` (a `/sys/class/net`) for the interface with this MAC until
/// it appears or `timeout` passes.
fn find_by_mac(dir: &Path, mac: &[u8; 6], timeout: Duration) -> Result<Option<String>, NetError> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        let found = names.into_iter().find(|n| {
            std::fs::read_to_string(dir.join(n).join("address"))
                .ok()
                .and_then(|a| parse_mac(&a))
                .is_some_and(|a| &a == mac)
        });
        if found.is_some() || Instant::now() >= deadline {
            return Ok(found);
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

const IFF_UP: libc::c_short = libc::IFF_UP as libc::c_short;

fn socket() -> Result<OwnedFd, NetError> {
    // SAFETY: socket takes no pointers; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(NetError::Socket(io::Error::last_os_error()));
    }
    // SAFETY: a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// An interface name as the kernel takes it: NUL-padded, at most 15 bytes.
fn ifname(name: &str) -> Result<[libc::c_char; libc::IFNAMSIZ], NetError> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(NetError::Name(name.into()));
    }
    let mut out = [0 as libc::c_char; libc::IFNAMSIZ];
    for (o, b) in out.iter_mut().zip(name.bytes()) {
        *o = b as libc::c_char;
    }
    Ok(out)
}

fn ifreq(name: &str) -> Result<libc::ifreq, NetError> {
    // SAFETY: ifreq is plain data (a name and a union of integers,
    // addresses and a pointer); all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    req.ifr_name = ifname(name)?;
    Ok(req)
}

fn sockaddr(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(addr.octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr are both 16 bytes of plain data
    // (transmute checks the sizes); sockaddr_in is how AF_INET fills it.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

/// One `SIOC*IF*` request, each of which takes an `ifreq`; the error
/// names the interface and the step.
fn ifreq_ioctl(
    sock: &OwnedFd,
    request: libc::c_ulong,
    req: &mut libc::ifreq,
    iface: &str,
    step: &str,
) -> Result<(), NetError> {
    // SAFETY: every request passed here (SIOCGIFFLAGS, SIOCSIFFLAGS,
    // SIOCSIFNAME, SIOCSIFMTU, SIOCSIFADDR, SIOCSIFNETMASK,
    // SIOCSIFBRDADDR) reads and writes one `struct ifreq`, which `req`
    // is, valid and exclusively borrowed for the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), request, req as *mut libc::ifreq) } != 0 {
        return Err(NetError::Step {
            iface: iface.into(),
            step: step.into(),
            err: io::Error::last_os_error(),
        });
    }
    Ok(())
}

fn get_flags(sock: &OwnedFd, name: &str) -> Result<libc::c_short, NetError> {
    let mut req = ifreq(name)?;
    ifreq_ioctl(sock, libc::SIOCGIFFLAGS, &mut req, name, "read its flags")?;
    // SAFETY: SIOCGIFFLAGS filled the union's flags.
    Ok(unsafe { req.ifr_ifru.ifru_flags })
}

fn set_flags(sock: &OwnedFd, name: &str, flags: libc::c_short, step: &str) -> Result<(), NetError> {
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_flags = flags;
    ifreq_ioctl(sock, libc::SIOCSIFFLAGS, &mut req, name, step)
}

fn set_up(sock: &OwnedFd, name: &str) -> Result<(), NetError> {
    let flags = get_flags(sock, name)?;
    if flags & IFF_UP == 0 {
        set_flags(sock, name, flags | IFF_UP, "bring it up")?;
    }
    Ok(())
}

fn add_default_route(sock: &OwnedFd, name: &str, gateway: Ipv4Addr) -> Result<(), NetError> {
    let dev = CString::new(name).map_err(|_| NetError::Name(name.into()))?;
    // SAFETY: rtentry is plain data (addresses, integers and a pointer);
    // all zeroes is a valid value: no device, destination 0.0.0.0/0 once
    // the families are set.
    let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
    rt.rt_dst = sockaddr(Ipv4Addr::UNSPECIFIED);
    rt.rt_genmask = sockaddr(Ipv4Addr::UNSPECIFIED);
    rt.rt_gateway = sockaddr(gateway);
    rt.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
    // The kernel only reads the device's name.
    rt.rt_dev = dev.as_ptr().cast_mut();
    // SAFETY: SIOCADDRT reads one `struct rtentry`, valid for the call,
    // whose `rt_dev` points to a NUL-terminated name that outlives it.
    let r = unsafe {
        libc::ioctl(
            sock.as_raw_fd(),
            libc::SIOCADDRT,
            &mut rt as *mut libc::rtentry,
        )
    };
    if r != 0 {
        return Err(NetError::Step {
            iface: name.into(),
            step: format!("add the default route via {gateway}"),
            err: io::Error::last_os_error(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn net() -> GuestNetwork {
        GuestNetwork {
            mac: "02:42:0a:58:00:02".into(),
            name: "eth0".into(),
            address: Ipv4Addr::new(10, 88, 0, 2),
            prefix_len: 16,
            gateway: Some(Ipv4Addr::new(10, 88, 0, 1)),
            mtu: Some(1500),
        }
    }

    fn with(f: impl FnOnce(&mut GuestNetwork)) -> Result<[u8; 6], NetError> {
        let mut n = net();
        f(&mut n);
        validate(&n)
    }

    #[test]
    fn macs_parse_in_either_case_and_must_be_unicast() {
        assert_eq!(
            parse_mac("02:42:0A:58:00:ff\n"),
            Some([2, 0x42, 0x0a, 0x58, 0, 0xff])
        );
        for bad in [
            "",
            "02:42:0a:58:00",
            "02:42:0a:58:00:02:03",
            "02-42-0a-58-00-02",
            "2:42:a:58:0:2",
            "02:42:0a:58:00:zz",
            "02:42:0a:58:00:+1",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad:?}");
        }
        assert_eq!(
            with(|n| n.mac = "02:42:0A:58:00:02".into()).unwrap(),
            [2, 0x42, 0x0a, 0x58, 0, 2]
        );
        for bad in [
            "00:00:00:00:00:00",
            "01:00:5e:00:00:01",
            "ff:ff:ff:ff:ff:ff",
        ] {
            assert!(
                matches!(with(|n| n.mac = bad.into()), Err(NetError::Mac(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn names_are_checked() {
        for good in ["eth0", "e", "a234567890abcde"] {
            assert!(with(|n| n.name = good.into()).is_ok(), "{good}");
        }
        for bad in [
            "",
            "a234567890abcdef",
            "a/b",
            "a b",
            "a\tb",
            "a\0b",
            "eth0:1",
            ".",
            "..",
        ] {
            assert!(
                matches!(with(|n| n.name = bad.into()), Err(NetError::Name(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn prefix_and_mtu_are_checked() {
        assert!(matches!(
            with(|n| n.prefix_len = 33),
            Err(NetError::PrefixLen(33))
        ));
        assert!(matches!(with(|n| n.mtu = Some(67)), Err(NetError::Mtu(67))));
        assert!(with(|n| n.mtu = Some(68)).is_ok());
        assert!(with(|n| n.mtu = Some(65535)).is_ok());
        assert!(with(|n| n.mtu = None).is_ok());
    }

    #[test]
    fn the_address_must_be_a_host_of_its_subnet() {
        let set = |a: [u8; 4], p: u8| {
            with(|n| {
                n.address = Ipv4Addr::from(a);
                n.prefix_len = p;
                n.gateway = None;
            })
        };
        assert!(set([10, 9, 0, 2], 24).is_ok());
        for (a, p) in [
            ([10, 9, 0, 0], 24),
            ([10, 9, 0, 255], 24),
            ([10, 0, 0, 0], 8),
        ] {
            assert!(
                matches!(set(a, p), Err(NetError::NotAHost { .. })),
                "{a:?}/{p}"
            );
        }
        // /31 and /32 have no network or broadcast address.
        assert!(set([10, 9, 0, 0], 31).is_ok());
        assert!(set([10, 9, 0, 1], 31).is_ok());
        assert!(set([10, 9, 0, 255], 32).is_ok());
        for a in [[0, 0, 0, 0], [127, 0, 0, 1], [224, 0, 0, 1], [255; 4]] {
            assert!(matches!(set(a, 24), Err(NetError::Address(_))), "{a:?}");
        }
    }

    #[test]
    fn the_gateway_must_be_another_host_of_the_subnet() {
        let gw = |g: [u8; 4], p: u8| {
            with(|n| {
                n.address = Ipv4Addr::new(10, 9, 0, 2);
                n.prefix_len = p;
                n.gateway = Some(Ipv4Addr::from(g));
            })
        };
        assert!(gw([10, 9, 0, 1], 24).is_ok());
        assert!(gw([10, 9, 0, 254], 24).is_ok());
        assert!(gw([10, 9, 0, 3], 31).is_ok());
        for (g, p) in [
            ([10, 9, 1, 1], 24),
            ([192, 168, 0, 1], 24),
            ([10, 9, 0, 2], 24),
            ([10, 9, 0, 0], 24),
            ([10, 9, 0, 255], 24),
            ([10, 9, 0, 1], 32),
        ] {
            let e = gw(g, p).unwrap_err();
            assert!(matches!(e, NetError::Gateway { .. }), "{g:?}/{p}: {e}");
        }
    }

    #[test]
    fn masks_and_broadcasts() {
        assert_eq!(netmask(0), Ipv4Addr::UNSPECIFIED);
        assert_eq!(netmask(24), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(netmask(32), Ipv4Addr::BROADCAST);
        let a = Ipv4Addr::new(10, 9, 0, 2);
        assert_eq!(broadcast(a, 24), Some(Ipv4Addr::new(10, 9, 0, 255)));
        assert_eq!(broadcast(a, 0), Some(Ipv4Addr::BROADCAST));
        assert_eq!(broadcast(a, 31), None);
        assert_eq!(network(a, 20), Ipv4Addr::new(10, 9, 0, 0));
    }

    #[test]
    fn an_invalid_network_fails_before_looking_for_the_interface() {
        let mut n = net();
        n.prefix_len = 40;
        let started = Instant::now();
        let e = configure(&n).unwrap_err();
        assert!(matches!(e, NetError::PrefixLen(40)), "{e}");
        assert!(started.elapsed() < Duration::from_millis(500));
    }

    #[test]
    fn the_interface_is_looked_up_by_mac_in_sysfs() {
        let dir = std::env::temp_dir().join(format!("husk-net-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (name, mac) in [
            ("lo", "00:00:00:00:00:00"),
            ("dummy0", "02:42:0a:58:01:02"),
            ("enp0s1", "02:42:0a:58:00:02"),
        ] {
            std::fs::create_dir_all(dir.join(name)).unwrap();
            std::fs::write(dir.join(name).join("address"), format!("{mac}\n")).unwrap();
        }
        let mac = parse_mac("02:42:0A:58:00:02").unwrap();
        let found = find_by_mac(&dir, &mac, Duration::ZERO).unwrap();
        assert_eq!(found.as_deref(), Some("enp0s1"));
        let other = parse_mac("02:42:0a:58:00:03").unwrap();
        let started = Instant::now();
        let found = find_by_mac(&dir, &other, Duration::from_millis(100)).unwrap();
        assert_eq!(found, None);
        assert!(started.elapsed() >= Duration::from_millis(100));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Runs `f` on a thread of its own in a new network namespace (and a
    /// new mount namespace with that namespace's sysfs on /sys); `None`,
    /// after printing why, when that cannot be had here.
    fn in_new_netns<T: Send + 'static>(
        f: impl FnOnce() -> Option<T> + Send + 'static,
    ) -> Option<T> {
        std::thread::spawn(move || {
            // SAFETY: geteuid takes no arguments.
            if unsafe { libc::geteuid() } != 0 {
                println!("skipped: not root");
                return None;
            }
            // SAFETY: unshare takes no pointers. Namespaces are per
            // thread: the rest of the test process keeps its own.
            if unsafe { libc::unshare(libc::CLONE_NEWNET | libc::CLONE_NEWNS) } != 0 {
                println!("skipped: unshare: {}", io::Error::last_os_error());
                return None;
            }
            // sysfs lists the interfaces of the namespace that mounts it:
            // mount a fresh one, as the guest has, without it propagating.
            let private = crate::agent::guest::setup::mount(
                "none",
                "/",
                "",
                libc::MS_REC | libc::MS_PRIVATE,
                None,
            );
            let sysfs = private.and_then(|()| {
                crate::agent::guest::setup::mount("sysfs", "/sys", "sysfs", 0, None)
            });
            if let Err(e) = sysfs {
                println!("skipped: {e}");
                return None;
            }
            f()
        })
        .join()
        .unwrap()
    }

    fn ip_json(args: &[&str]) -> serde_json::Value {
        let out = Command::new("ip").arg("-j").args(args).output().unwrap();
        assert!(out.status.success(), "ip {args:?}: {out:?}");
        serde_json::from_slice(&out.stdout).unwrap()
    }

    #[test]
    fn loopback_comes_up_in_a_fresh_namespace() {
        in_new_netns(|| {
            // A new namespace's lo is down: 127.0.0.1 is unreachable.
            let reach = || {
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                std::net::TcpStream::connect(l.local_addr().unwrap())
            };
            assert!(reach().is_err(), "lo is down in a new namespace");
            loopback_up().unwrap();
            reach().unwrap();
            // Twice is fine.
            loopback_up().unwrap();
            Some(())
        });
    }

    #[test]
    fn an_interface_is_configured_as_asked() {
        in_new_netns(|| {
            let mac = "02:00:00:00:00:07";
            let add = |kind: &[&str]| {
                Command::new("ip")
                    .args(["link", "add", "tmp0", "address", mac, "type"])
                    .args(kind)
                    .output()
                    .is_ok_and(|o| o.status.success())
            };
            // Some kernels lack dummy interfaces; a veth pair does as well.
            if !add(&["dummy"]) && !add(&["veth", "peer", "name", "tmp1"]) {
                println!("skipped: cannot create a dummy or veth interface with ip");
                return None;
            }
            let net = GuestNetwork {
                mac: mac.into(),
                name: "eth0".into(),
                address: Ipv4Addr::new(10, 9, 0, 2),
                prefix_len: 24,
                gateway: Some(Ipv4Addr::new(10, 9, 0, 1)),
                mtu: Some(1400),
            };
            configure(&net).unwrap();
            let links = ip_json(&["addr", "show", "eth0"]);
            let link = &links[0];
            assert_eq!(link["ifname"], "eth0");
            assert_eq!(link["address"], mac);
            assert_eq!(link["mtu"], 1400);
            let flags = link["flags"].as_array().unwrap();
            assert!(flags.iter().any(|f| f == "UP"), "{link}");
            let inet: Vec<_> = link["addr_info"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|a| a["family"] == "inet")
                .map(|a| {
                    (
                        a["local"].as_str().unwrap().to_string(),
                        a["prefixlen"].as_u64().unwrap(),
                        a["broadcast"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect();
            assert_eq!(
                inet,
                [("10.9.0.2".to_string(), 24, "10.9.0.255".to_string())]
            );
            let routes = ip_json(&["route"]);
            let defaults: Vec<_> = routes
                .as_array()
                .unwrap()
                .iter()
                .filter(|r| r["dst"] == "default")
                .map(|r| (r["gateway"].clone(), r["dev"].clone()))
                .collect();
            assert_eq!(defaults, [("10.9.0.1".into(), "eth0".into())]);
            assert!(
                ip_json(&["link"])
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|l| l["ifname"] != "tmp0"),
                "renamed, not copied"
            );

            // A MAC that no interface has: an error that says so, in time.
            let mut missing = net.clone();
            missing.mac = "02:00:00:00:00:08".into();
            let e = configure_within(&missing, Duration::from_millis(50)).unwrap_err();
            assert!(matches!(e, NetError::NotFound { .. }), "{e}");
            assert!(e.to_string().contains("02:00:00:00:00:08"), "{e}");
            // A step that fails names the interface and the step: the
            // default route is there already.
            let e = configure(&net).unwrap_err();
            let text = e.to_string();
            assert!(
                text.starts_with("eth0: cannot add the default route via 10.9.0.1"),
                "{text}"
            );
            Some(())
        });
    }
}
