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
#[path = "common/tap.rs"]
mod tap;

use std::time::{Duration, Instant};

use common::{kvm_available, Vmm};
use serde_json::json;
use tap::{attach, Packets, TestTap, ETHERTYPE, GUEST_MAC};

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
    let Some(tap) = TestTap::create("a", None) else {
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
    let Some(tap) = TestTap::create("b", None) else {
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
    let Some(tap) = TestTap::create("c", None) else {
        return;
    };
    let Some(other) = TestTap::create("d", None) else {
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
    let Some(tap) = TestTap::create("e", None) else {
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
    let Some(tap) = TestTap::create("e", None) else {
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
