//! virtio-net end to end, on a real TAP device: the probe guest sends a
//! frame the host reads from the TAP, and prints a frame the host sends
//! into it; the API refuses interfaces it cannot give the guest.
//!
//! Each test creates its own persistent TAP (TUNSETIFF + TUNSETPERSIST,
//! IPv6 off so the host sends nothing of its own, link up) and deletes it
//! afterwards. The host side reads and writes frames through an
//! AF_PACKET socket bound to the TAP, as any host program on that
//! interface would. Without the right to create a TAP, the tests print
//! `skipped: ...`.

mod common;

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use common::{kvm_available, skip, Vmm};
use serde_json::json;

const ETHERTYPE: u16 = 0x88b5;
const GUEST_MAC: [u8; 6] = [0x06, 0x00, 0xac, 0x10, 0x00, 0x02];
const HOST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x99];

fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain old data; all zeros is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    ifr
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Attaches a new file to the TAP `name` (creating it if needed).
fn attach(name: &str) -> io::Result<File> {
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

/// A persistent TAP, deleted on drop.
struct TestTap {
    name: String,
    index: libc::c_int,
}

impl TestTap {
    fn create(tag: &str) -> Option<TestTap> {
        let name = format!("hk{tag}{}", std::process::id() % 1_000_000);
        let made = attach(&name).and_then(|f| {
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
struct Packets(OwnedFd);

impl Packets {
    fn open(tap: &TestTap) -> Packets {
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
    fn recv(&self, timeout: Duration) -> Option<Vec<u8>> {
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
    fn send(&self, dst: [u8; 6], payload: &[u8]) {
        self.send_typed(dst, ETHERTYPE, payload)
    }

    fn send_typed(&self, dst: [u8; 6], ethertype: u16, payload: &[u8]) {
        let mut f = dst.to_vec();
        f.extend_from_slice(&HOST_MAC);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(payload);
        // SAFETY: the buffer is valid for its length.
        let n = unsafe { libc::send(self.0.as_raw_fd(), f.as_ptr().cast(), f.len(), 0) };
        assert_eq!(n, f.len() as isize, "{}", io::Error::last_os_error());
    }
}

fn iface(id: &str, tap: &str) -> serde_json::Value {
    json!({"iface_id": id, "host_dev_name": tap, "guest_mac": "06:00:AC:10:00:02"})
}

/// The guest's broadcast, checked field by field.
fn check_guest_frame(f: &[u8]) {
    assert_eq!(&f[0..6], &[0xff; 6], "broadcast: {f:02x?}");
    assert_eq!(&f[6..12], &GUEST_MAC, "from the guest_mac: {f:02x?}");
    assert_eq!(&f[12..14], &ETHERTYPE.to_be_bytes());
    assert_eq!(&f[14..], b"HUSK-PROBE-NET");
}

fn metrics(vmm: &Vmm) -> serde_json::Value {
    vmm.get("/metrics").json()["net"].clone()
}

#[test]
fn frames_cross_a_real_tap_both_ways() {
    if !kvm_available() {
        return;
    }
    let Some(tap) = TestTap::create("a") else {
        return;
    };
    let mut vmm = Vmm::with_api();
    let mut body = iface("eth0", &tap.name);
    body["mtu"] = json!(1500);
    vmm.put_ok("/network-interfaces/eth0", body);
    let cfg = vmm.get("/vm/config").json();
    assert_eq!(
        cfg["network-interfaces"],
        json!([{"iface_id": "eth0", "host_dev_name": tap.name,
                "guest_mac": "06:00:ac:10:00:02", "mtu": 1500}])
    );
    let packets = Packets::open(&tap);
    vmm.configure("probe=net,wait-cad", 1, 128);
    vmm.start();
    let f = packets
        .recv(Duration::from_secs(10))
        .expect("no frame from the guest on the TAP");
    check_guest_frame(&f);
    // 30 bytes of payload: with the headers, 56 bytes in the guest's
    // 32-byte buffers, so the frame spans two of them.
    packets.send(GUEST_MAC, b"HUSK-HOST-NET-0123456789ABCDEF");
    assert_eq!(
        vmm.expect_line("PROBE net"),
        "PROBE net OK sent=1 got=HUSK-HOST-NET-0123456789ABCDEF"
    );
    common::assert_filtered(vmm.pid());
    let m = metrics(&vmm);
    assert_eq!(m["tx_frames"], 1, "{m}");
    assert_eq!(m["tx_bytes"], 28, "{m}");
    assert_eq!(m["rx_frames"], 1, "{m}");
    assert_eq!(m["rx_bytes"], 44, "{m}");
    assert_eq!(m["tx_errors"], 0, "{m}");
    assert_eq!(m["rx_errors"], 0, "{m}");
    // After start: no new interface; a PATCH without limiters changes
    // nothing.
    let msg = Vmm::fault(&vmm.put("/network-interfaces/eth1", iface("eth1", "tapx")));
    assert!(msg.contains("not supported after starting"), "{msg}");
    let r = vmm.patch("/network-interfaces/eth0", json!({"iface_id": "eth0"}));
    assert_eq!(r.status, 204, "{}", r.body);
    vmm.action("SendCtrlAltDel");
    assert_eq!(vmm.wait().code(), Some(0));
}

#[test]
fn a_frame_waits_in_the_tap_until_the_guest_has_buffers() {
    if !kvm_available() {
        return;
    }
    let Some(tap) = TestTap::create("b") else {
        return;
    };
    let mut vmm = Vmm::with_api();
    vmm.put_ok("/network-interfaces/eth0", iface("eth0", &tap.name));
    let packets = Packets::open(&tap);
    // The guest waits before it even sets the device up.
    vmm.configure("probe=wait-cad,net,wait-cad", 1, 128);
    vmm.start();
    vmm.expect_line("PROBE BOOT");
    packets.send(GUEST_MAC, b"HUSK-EARLY");
    let deadline = Instant::now() + Duration::from_secs(5);
    while metrics(&vmm)["rx_paused"] == 0 {
        assert!(Instant::now() < deadline, "the device never paused");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(metrics(&vmm)["rx_frames"], 0);
    vmm.action("SendCtrlAltDel");
    assert_eq!(
        vmm.expect_line("PROBE net"),
        "PROBE net OK sent=1 got=HUSK-EARLY"
    );
    check_guest_frame(&packets.recv(Duration::from_secs(5)).unwrap());
    let m = metrics(&vmm);
    assert_eq!(
        (m["rx_frames"].clone(), m["rx_dropped"].clone()),
        (json!(1), json!(0))
    );
    vmm.action("SendCtrlAltDel");
    assert_eq!(vmm.wait().code(), Some(0));
}

#[test]
fn bad_interfaces_get_clear_400s() {
    if !kvm_available() {
        return;
    }
    let Some(tap) = TestTap::create("c") else {
        return;
    };
    let Some(other) = TestTap::create("d") else {
        return;
    };
    let vmm = Vmm::with_api();
    vmm.put_ok("/network-interfaces/eth0", iface("eth0", &tap.name));
    // Replacing an interface by its id is fine, on the same TAP.
    vmm.put_ok("/network-interfaces/eth0", iface("eth0", &tap.name));
    let mut mtu = iface("eth1", &other.name);
    mtu["mtu"] = json!(10);
    let mut limited = iface("eth1", &other.name);
    limited["rx_rate_limiter"] = json!({"bandwidth": {"size": 1000, "refill_time": 0}});
    let cases = [
        (
            "/network-interfaces/eth1",
            iface("eth1", "hk-nonexistent"),
            "\"hk-nonexistent\": no such network interface on this host",
        ),
        (
            "/network-interfaces/eth1",
            iface("eth1", "lo"),
            "\"lo\" is not a single-queue TAP device",
        ),
        (
            "/network-interfaces/eth1",
            iface("eth2", &other.name),
            "differs from the one in the path",
        ),
        (
            "/network-interfaces/..",
            iface("..", &other.name),
            "invalid iface_id",
        ),
        (
            "/network-interfaces/eth1",
            iface("eth1", &tap.name),
            "is already used by interface eth0",
        ),
        (
            "/network-interfaces/eth1",
            iface("eth1", &other.name),
            "guest_mac 06:00:ac:10:00:02 is already used by interface eth0",
        ),
        (
            "/network-interfaces/eth1",
            json!({"iface_id": "eth1", "host_dev_name": other.name, "guest_mac": "06:00"}),
            "invalid guest_mac",
        ),
        ("/network-interfaces/eth1", mtu, "mtu must be between 68"),
        (
            "/network-interfaces/eth1",
            limited,
            "rx_rate_limiter: a rate limiter's refill_time must be more than 0 ms",
        ),
        (
            "/network-interfaces/eth1",
            json!({"iface_id": "eth1", "host_dev_name": other.name, "allow_mmds_requests": true}),
            "unknown field `allow_mmds_requests`",
        ),
    ];
    for (path, body, want) in cases {
        let msg = Vmm::fault(&vmm.put(path, body.clone()));
        assert!(msg.contains(want), "{path} {body}: {msg}");
    }
    // A TAP another process holds.
    let _held = attach(&other.name).unwrap();
    let msg = Vmm::fault(&vmm.put(
        "/network-interfaces/eth1",
        json!({"iface_id": "eth1", "host_dev_name": other.name}),
    ));
    assert!(msg.contains("in use by another process"), "{msg}");
    let r = vmm.patch("/network-interfaces/nope", json!({"iface_id": "nope"}));
    assert!(Vmm::fault(&r).contains("no network interface \"nope\""));
    let r = vmm.patch(
        "/network-interfaces/eth0",
        json!({"iface_id": "eth0", "tx_rate_limiter": {"ops": {"size": 1u64 << 60, "refill_time": 100}}}),
    );
    assert!(Vmm::fault(&r).contains("tx_rate_limiter: a rate limiter's size is at most"));
    assert_eq!(
        vmm.get("/vm/config").json()["network-interfaces"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn a_config_file_naming_an_interface_twice_is_refused() {
    if !kvm_available() {
        return;
    }
    let Some(tap) = TestTap::create("e") else {
        return;
    };
    let mut vmm = Vmm::with_config(|kernel| {
        json!({
            "boot-source": {"kernel_image_path": kernel, "boot_args": "probe=boot"},
            "network-interfaces": [
                {"iface_id": "eth0", "host_dev_name": tap.name},
                {"iface_id": "eth0", "host_dev_name": tap.name}
            ]
        })
    });
    assert_eq!(vmm.wait().code(), Some(1));
}

#[test]
fn a_receive_limit_holds_a_frame_until_a_patch_lifts_it() {
    if !kvm_available() {
        return;
    }
    let Some(tap) = TestTap::create("e") else {
        return;
    };
    let mut vmm = Vmm::with_api();
    let mut body = iface("eth0", &tap.name);
    // One frame a minute: the second waits far longer than the guest.
    body["rx_rate_limiter"] = json!({"ops": {"size": 1, "refill_time": 60000}});
    vmm.put_ok("/network-interfaces/eth0", body);
    let packets = Packets::open(&tap);
    vmm.configure("probe=net,wait-cad", 1, 128);
    vmm.start();
    check_guest_frame(&packets.recv(Duration::from_secs(10)).unwrap());
    // The guest skips the first (another ethertype) and waits for the
    // second, which the limiter holds.
    packets.send_typed(GUEST_MAC, 0x88b6, b"HUSK-OTHER");
    packets.send(GUEST_MAC, b"HUSK-HELD");
    let deadline = Instant::now() + Duration::from_secs(5);
    while metrics(&vmm)["rx_rate_limited"] == 0 {
        assert!(Instant::now() < deadline, "the limiter never held a frame");
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(metrics(&vmm)["rx_frames"], 1);
    let r = vmm.patch(
        "/network-interfaces/eth0",
        json!({"iface_id": "eth0", "rx_rate_limiter": {"ops": {"size": 0, "refill_time": 0}}}),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(
        vmm.expect_line("PROBE net"),
        "PROBE net OK sent=1 got=HUSK-HELD"
    );
    assert_eq!(metrics(&vmm)["rx_frames"], 2);
    assert_eq!(
        vmm.get("/vm/config").json()["network-interfaces"][0]["rx_rate_limiter"],
        json!({"ops": {"size": 0, "refill_time": 0}})
    );
    vmm.action("SendCtrlAltDel");
    assert_eq!(vmm.wait().code(), Some(0));
}
