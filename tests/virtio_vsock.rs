//! virtio-vsock end to end: the probe guest (`probe=vsock`) answers a
//! host-initiated stream on port 1234 with an echo and opens one to host
//! port 5678; the test plays both host programs over the Unix sockets.

mod common;
#[path = "common/vsock.rs"]
mod vsock;

use std::io::{BufRead, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};

use common::{kvm_available, Vmm, TIMEOUT};
use serde_json::json;
use vsock::{accept, connect, port_path};

#[test]
fn the_probe_echoes_a_host_stream_and_opens_one_to_the_host() {
    if !kvm_available() {
        return;
    }
    let mut vmm = Vmm::with_api();
    let uds = vmm.dir.path("v.sock");
    let to_host = UnixListener::bind(port_path(&uds, 5678)).unwrap();
    vmm.put_ok("/vsock", json!({"guest_cid": 3, "uds_path": uds}));
    assert_eq!(
        vmm.get("/vm/config").json()["vsock"],
        json!({"guest_cid": 3, "uds_path": uds})
    );
    // The guest waits for Ctrl-Alt-Del after its check, so the metrics
    // below are read from a running VMM.
    vmm.configure("probe=vsock,wait-cad", 1, 128);
    vmm.start();
    // Right away: the device holds the REQUEST until the guest listens.
    let (mut s, local) = connect(&uds, 1234);
    assert!(local >= 1 << 30, "{local}");
    s.get_mut().write_all(b"hello vsock\n").unwrap();
    let mut echo = String::new();
    s.read_line(&mut echo).unwrap();
    assert_eq!(echo, "hello vsock\n");
    // The guest shut the stream down: EOF follows.
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "{rest:?}");

    let mut g = accept(&to_host);
    let mut got = String::new();
    g.read_to_string(&mut got).unwrap();
    assert_eq!(got, "HUSK-PROBE-VSOCK");
    assert_eq!(
        vmm.expect_line("PROBE vsock"),
        "PROBE vsock OK echoed=12 sent=16"
    );
    common::assert_filtered(vmm.pid());
    let m = vmm.get("/metrics").json();
    assert_eq!(m["vsock"]["host_connections"], 1, "{m}");
    assert_eq!(m["vsock"]["guest_connections"], 1, "{m}");
    assert_eq!(m["vsock"]["tx_bytes"], 12 + 16, "{m}");
    assert_eq!(m["vsock"]["rx_bytes"], 12, "{m}");
    for k in [
        "bad_packets",
        "protocol_errors",
        "credit_violations",
        "errors",
    ] {
        assert_eq!(m["vsock"][k], 0, "{k}: {m}");
    }
    vmm.action("SendCtrlAltDel");
    assert_eq!(vmm.wait().code(), Some(0));
}

#[test]
fn a_config_file_vsock_closes_clients_the_guest_refuses() {
    if !kvm_available() {
        return;
    }
    let dir = common::TempDir::new();
    let kernel = common::probe_kernel(&dir);
    let uds = dir.path("cfg.sock");
    let cfg = dir.path("vm.json");
    let vsock = json!({"guest_cid": 7, "uds_path": uds, "vsock_id": "vsock0"});
    let body = json!({
        "boot-source": {"kernel_image_path": kernel, "boot_args": "probe=vsock"},
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
        "vsock": vsock,
    });
    std::fs::write(&cfg, body.to_string()).unwrap();
    let mut vmm = Vmm::with_api_args(&["--config-file", cfg.to_str().unwrap()], None);
    assert_eq!(vmm.get("/vm/config").json()["vsock"], vsock);
    // The guest listens on 1234 only: its RST for port 99 closes the
    // client at once (not the device's REQUEST timeout).
    let mut s = UnixStream::connect(&uds).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.write_all(b"CONNECT 99\n").unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    assert!(buf.is_empty(), "{:?}", String::from_utf8_lossy(&buf));
    let m = vmm.get("/metrics").json();
    assert_eq!(m["vsock"]["host_connections"], 1, "{m}");
    assert_eq!(m["vsock"]["closed_connections"], 1, "{m}");
    assert_eq!(m["vsock"]["connect_timeouts"], 0, "{m}");
    // It never got a stream on 1234, and says so.
    let line = vmm.expect_line("PROBE vsock");
    assert!(line.starts_with("PROBE vsock FAIL"), "{line}");
    assert_eq!(vmm.wait().code(), Some(0));
}

#[test]
fn bad_vsock_configs_get_400s() {
    if !kvm_available() {
        return;
    }
    let vmm = Vmm::with_api();
    let live = vmm.dir.path("live.sock");
    let _listener = UnixListener::bind(&live).unwrap();
    let file = vmm.dir.path("file");
    std::fs::write(&file, b"not a socket").unwrap();
    let cases = [
        (
            json!({"guest_cid": 2, "uds_path": vmm.dir.path("a.sock")}),
            "guest_cid must be at least 3",
        ),
        (
            json!({"guest_cid": 0, "uds_path": vmm.dir.path("a.sock")}),
            "guest_cid must be at least 3",
        ),
        (json!({"guest_cid": 3, "uds_path": live}), "in use"),
        (json!({"guest_cid": 3, "uds_path": file}), "not a socket"),
        (
            json!({"guest_cid": 3, "uds_path": "/nonexistent/dir/v.sock"}),
            "does not exist",
        ),
        (json!({"guest_cid": 3}), "missing field `uds_path`"),
        (
            json!({"guest_cid": 3, "uds_path": "/tmp/x", "cid": 4}),
            "unknown field `cid`",
        ),
    ];
    for (body, want) in cases {
        let msg = Vmm::fault(&vmm.put("/vsock", body.clone()));
        assert!(msg.contains(want), "{body}: {msg}");
    }
    // A stale socket (its owner is gone) is fine, and replaced at start.
    let stale = vmm.dir.path("stale.sock");
    drop(UnixListener::bind(&stale).unwrap());
    vmm.put_ok("/vsock", json!({"guest_cid": 3, "uds_path": stale}));
    assert!(!vmm.get("/vm/config").json()["vsock"].is_null());
}

#[test]
fn a_socket_taken_after_the_put_fails_the_start_with_a_400() {
    if !kvm_available() {
        return;
    }
    let vmm = Vmm::with_api();
    let uds = vmm.dir.path("late.sock");
    vmm.put_ok("/vsock", json!({"guest_cid": 3, "uds_path": uds}));
    let _thief = UnixListener::bind(&uds).unwrap();
    vmm.configure("probe=vsock", 1, 128);
    let msg = Vmm::fault(&vmm.action("InstanceStart"));
    assert!(
        msg.contains("virtio-vsock") && msg.contains("in use"),
        "{msg}"
    );
    assert_eq!(vmm.get("/").json()["state"], "Not started");
}
