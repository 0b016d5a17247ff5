//! The microVM metadata service: the host's API (`/mmds`, `/mmds/config`,
//! `mmds-config` in config files, `--mmds-size-limit`, `--metadata`), and
//! the guest's side, driven by the probe guest's own small TCP client
//! over virtio-net: ARP, a V2 token, GETs with and without it, hostile
//! frames, and a snapshot restore. Frames for MMDS never reach the TAP.

mod common;
#[path = "common/tap.rs"]
mod tap;

use std::time::{Duration, Instant};

use common::{kvm_available, TempDir, Vmm};
use serde_json::json;
use tap::{Packets, TestTap, GUEST_MAC};

const VALUE: &str = "husk-mmds-value-42";

fn iface(tap: &TestTap) -> serde_json::Value {
    json!({"iface_id": "eth0", "host_dev_name": tap.name, "guest_mac": "06:00:AC:10:00:02"})
}

fn metadata() -> serde_json::Value {
    json!({"latest": {"meta-data": {"probe": VALUE, "n": 1}}})
}

fn mmds_metrics(vmm: &Vmm) -> serde_json::Value {
    vmm.get("/metrics").json()["mmds"].clone()
}

#[test]
fn put_patch_and_get_round_trip_with_merge_patch_semantics() {
    let vmm = Vmm::with_api();
    // Before any PUT: `{}`, and a PATCH has nothing to patch.
    let r = vmm.get("/mmds");
    assert_eq!((r.status, r.json()), (200, json!({})));
    let msg = Vmm::fault(&vmm.patch("/mmds", json!({"a": 1})));
    assert!(msg.contains("not initialized"), "{msg}");
    vmm.put_ok(
        "/mmds",
        json!({"latest": {"meta-data": {"ami-id": "ami-1", "reservation-id": "r-1"}}, "drop": 1}),
    );
    let r = vmm.patch(
        "/mmds",
        json!({"latest": {"meta-data": {"ami-id": "ami-2", "reservation-id": null, "new": [1, 2]}}, "drop": null}),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(
        vmm.get("/mmds").json(),
        json!({"latest": {"meta-data": {"ami-id": "ami-2", "new": [1, 2]}}})
    );
    // PUT replaces the whole document (any JSON).
    vmm.put_ok("/mmds", json!(["a", "b"]));
    assert_eq!(vmm.get("/mmds").json(), json!(["a", "b"]));
    // Not JSON, no body, a route that does not exist.
    let r = vmm.request("PUT", "/mmds", Some("{nope"));
    assert!(Vmm::fault(&r).contains("invalid request body"));
    let r = vmm.request("PUT", "/mmds", Some(""));
    assert!(Vmm::fault(&r).contains("empty"));
    let r = vmm.request("PUT", "/mmds/other", Some("{}"));
    assert_eq!(r.status, 400, "{}", r.body);
    let r = vmm.request("DELETE", "/mmds", None);
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(vmm.get("/mmds").json(), json!(["a", "b"]));
}

#[test]
fn the_size_limit_refuses_updates_with_413_and_keeps_the_store() {
    let vmm = Vmm::with_api_args(&["--mmds-size-limit", "100"], None);
    let fits = json!({"k": "x".repeat(80)});
    vmm.put_ok("/mmds", fits.clone());
    for r in [
        vmm.put("/mmds", json!({"k": "x".repeat(120)})),
        vmm.patch("/mmds", json!({"more": "y".repeat(30)})),
    ] {
        assert_eq!(r.status, 413, "{}", r.body);
        assert!(r.json()["fault_message"]
            .as_str()
            .unwrap()
            .contains("over its limit of 100 bytes"));
    }
    assert_eq!(vmm.get("/mmds").json(), fits);
    // With the default limit (the API's 51200-byte bodies), a larger
    // document cannot even be sent: the body is refused first (400).
    let big = Vmm::with_api();
    let r = big.put("/mmds", json!({"k": "x".repeat(60_000)}));
    assert_eq!(r.status, 400, "{}", r.body);
    big.put_ok("/mmds", json!({"k": "x".repeat(50_000)}));
}

#[test]
fn mmds_config_is_checked_and_shown() {
    let Some(tap) = TestTap::create("m", None) else {
        return;
    };
    let vmm = Vmm::with_api();
    assert!(vmm.get("/vm/config").json()["mmds-config"].is_null());
    // No interface yet.
    let msg = Vmm::fault(&vmm.put("/mmds/config", json!({"network_interfaces": ["eth0"]})));
    assert!(
        msg.contains("does not correspond to any configured network interface"),
        "{msg}"
    );
    vmm.put_ok("/network-interfaces/eth0", iface(&tap));
    for (body, want) in [
        (json!({"network_interfaces": []}), "is empty"),
        (json!({"network_interfaces": ["eth1"]}), "\"eth1\""),
        (
            json!({"network_interfaces": ["eth0"], "ipv4_address": "10.0.0.1"}),
            "not link local",
        ),
        (
            json!({"network_interfaces": ["eth0"], "ipv4_address": "169.254.0.9"}),
            "not link local",
        ),
        (
            json!({"network_interfaces": ["eth0"], "version": "V3"}),
            "unknown variant",
        ),
        (
            json!({"version": "V2"}),
            "missing field `network_interfaces`",
        ),
        (
            json!({"network_interfaces": ["eth0"], "x": 1}),
            "unknown field `x`",
        ),
    ] {
        let msg = Vmm::fault(&vmm.put("/mmds/config", body.clone()));
        assert!(msg.contains(want), "{body}: {msg}");
    }
    assert!(vmm.get("/vm/config").json()["mmds-config"].is_null());
    vmm.put_ok(
        "/mmds/config",
        json!({"network_interfaces": ["eth0"], "version": "V2"}),
    );
    assert_eq!(
        vmm.get("/vm/config").json()["mmds-config"],
        json!({"version": "V2", "imds_compat": false, "network_interfaces": ["eth0"],
               "ipv4_address": "169.254.169.254"})
    );
    vmm.put_ok(
        "/mmds/config",
        json!({"network_interfaces": ["eth0"], "ipv4_address": "169.254.170.2", "imds_compat": true}),
    );
    assert_eq!(
        vmm.get("/vm/config").json()["mmds-config"]["ipv4_address"],
        "169.254.170.2"
    );
    if !kvm_available() {
        return;
    }
    vmm.configure("probe=boot,wait-cad", 1, 128);
    vmm.start();
    let msg = Vmm::fault(&vmm.put("/mmds/config", json!({"network_interfaces": ["eth0"]})));
    assert!(msg.contains("not supported after starting"), "{msg}");
    // The data store stays writable.
    vmm.put_ok("/mmds", metadata());
}

#[test]
fn a_guest_gets_a_value_with_a_v2_token_and_a_401_without() {
    if !kvm_available() {
        return;
    }
    let Some(tap) = TestTap::create("n", None) else {
        return;
    };
    let mut vmm = Vmm::with_api();
    vmm.put_ok("/network-interfaces/eth0", iface(&tap));
    vmm.put_ok(
        "/mmds/config",
        json!({"network_interfaces": ["eth0"], "version": "V2"}),
    );
    vmm.put_ok("/mmds", metadata());
    let packets = Packets::open(&tap);
    // After MMDS, the plain `net` check: its frame must still reach the
    // TAP, and be the only one that did.
    vmm.configure("probe=mmds,mmds-notoken,net,wait-cad", 1, 128);
    vmm.start();
    vmm.expect_line("PROBE BOOT");
    let t0 = Instant::now();
    let rss_before = common::status_field(vmm.pid() as i32, "VmRSS");
    let line = vmm.expect_line("PROBE mmds ");
    let t_mmds = t0.elapsed();
    let rss_after = common::status_field(vmm.pid() as i32, "VmRSS");
    assert_eq!(
        line,
        format!("PROBE mmds OK arp=06:01:23:45:67:01 token=64 status=200 value={VALUE}")
    );
    let line = vmm.expect_line("PROBE mmds-notoken");
    let t_notoken = t0.elapsed() - t_mmds;
    assert_eq!(line, "PROBE mmds-notoken OK status=401");
    assert!(
        packets.recv(Duration::from_secs(10)).is_some(),
        "no net frame on the TAP"
    );
    packets.send(GUEST_MAC, b"HUSK-AFTER-MMDS");
    assert_eq!(
        vmm.expect_line("PROBE net"),
        "PROBE net OK sent=1 got=HUSK-AFTER-MMDS"
    );
    common::assert_filtered(vmm.pid());
    let net = vmm.get("/metrics").json()["net"].clone();
    assert_eq!(
        net["tx_frames"], 1,
        "only the net check's frame went to the TAP: {net}"
    );
    let m = mmds_metrics(&vmm);
    assert!(m["rx_accepted"].as_u64().unwrap() >= 20, "{m}");
    assert_eq!(m["rx_accepted_err"], 0, "{m}");
    assert_eq!(m["connections_created"], 3, "{m}");
    assert_eq!(m["connections_destroyed"], 3, "{m}");
    assert_eq!(m["rx_no_token"], 1, "{m}");
    assert_eq!(m["tx_frames"], m["tx_count"], "{m}");
    eprintln!(
        "device set-up + ARP + token + GET: {t_mmds:?}; set-up + ARP + a GET refused: \
         {t_notoken:?}; VmRSS {rss_before} -> {rss_after}; metrics {m}"
    );
    // A new value is seen at once.
    let r = vmm.patch(
        "/mmds",
        json!({"latest": {"meta-data": {"probe": "changed"}}}),
    );
    assert_eq!(r.status, 204);
    vmm.action("SendCtrlAltDel");
    assert_eq!(vmm.wait().code(), Some(0));
}

#[test]
fn hostile_frames_leave_the_vmm_answering_and_mmds_working() {
    if !kvm_available() {
        return;
    }
    let Some(tap) = TestTap::create("h", None) else {
        return;
    };
    let mut vmm = Vmm::with_api();
    vmm.put_ok("/network-interfaces/eth0", iface(&tap));
    vmm.put_ok(
        "/mmds/config",
        json!({"network_interfaces": ["eth0"], "version": "V2"}),
    );
    vmm.put_ok("/mmds", metadata());
    vmm.configure("probe=mmds-hostile,wait-cad", 1, 128);
    vmm.start();
    assert_eq!(
        vmm.expect_line("PROBE mmds-hostile"),
        format!("PROBE mmds-hostile OK garbage=400 huge=413 status=200 value={VALUE}")
    );
    assert!(vmm.is_running());
    assert_eq!(vmm.get("/mmds").json(), metadata());
    let m = mmds_metrics(&vmm);
    // Bad IPv4 and TCP checksums, a length past the frame, a fragment,
    // an ARP reply; UDP.
    assert!(m["rx_accepted_err"].as_u64().unwrap() >= 5, "{m}");
    assert!(m["rx_accepted_unusual"].as_u64().unwrap() >= 1, "{m}");
    // The flood filled every slot and was replaced from.
    assert!(m["connections_created"].as_u64().unwrap() >= 40, "{m}");
    vmm.action("SendCtrlAltDel");
    assert_eq!(vmm.wait().code(), Some(0));
}

#[test]
fn a_config_file_and_metadata_file_serve_v1_without_tokens() {
    if !kvm_available() {
        return;
    }
    let Some(tap) = TestTap::create("f", None) else {
        return;
    };
    let mut vmm = Vmm::with_args(|dir: &TempDir| {
        let kernel = dir.path("probe.elf");
        let cfg = dir.path("config.json");
        let meta = dir.path("meta.json");
        std::fs::write(&meta, metadata().to_string()).unwrap();
        std::fs::write(
            &cfg,
            json!({
                "boot-source": {"kernel_image_path": kernel, "boot_args": "probe=mmds-notoken,mmds,wait-cad"},
                "network-interfaces": [iface(&tap)],
                "mmds-config": {"network_interfaces": ["eth0"], "version": "V1"}
            })
            .to_string(),
        )
        .unwrap();
        let sock = dir.path("api.sock");
        [
            "vmm",
            "--api-sock",
            sock.to_str().unwrap(),
            "--config-file",
            cfg.to_str().unwrap(),
            "--metadata",
            meta.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec()
    });
    assert_eq!(
        vmm.expect_line("PROBE mmds-notoken"),
        "PROBE mmds-notoken OK status=200"
    );
    assert!(vmm
        .expect_line("PROBE mmds ")
        .ends_with(&format!("status=200 value={VALUE}")));
    assert_eq!(
        vmm.get("/vm/config").json()["mmds-config"],
        json!({"version": "V1", "imds_compat": false, "network_interfaces": ["eth0"],
               "ipv4_address": "169.254.169.254"})
    );
    vmm.action("SendCtrlAltDel");
    assert_eq!(vmm.wait().code(), Some(0));
}

#[test]
fn the_configuration_survives_a_snapshot_and_the_store_does_not() {
    if !kvm_available() {
        return;
    }
    let Some(tap) = TestTap::create("s", None) else {
        return;
    };
    let dir = TempDir::new();
    let (state, mem) = (dir.path("state"), dir.path("mem"));
    let mut a = Vmm::with_api();
    a.put_ok("/network-interfaces/eth0", iface(&tap));
    a.put_ok(
        "/mmds/config",
        json!({"network_interfaces": ["eth0"], "version": "V2"}),
    );
    a.put_ok("/mmds", json!({"secret": "of the first VM"}));
    a.configure("probe=boot,wait-cad,mmds-notoken,mmds,wait-cad", 1, 128);
    a.start();
    a.expect_line("PROBE boot");
    let r = a.patch("/vm", json!({"state": "Paused"}));
    assert_eq!(r.status, 204, "{}", r.body);
    let r = a.put(
        "/snapshot/create",
        json!({"snapshot_type": "Full", "snapshot_path": state, "mem_file_path": mem}),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    drop(a);

    let mut b = Vmm::with_api();
    let r = b.put(
        "/snapshot/load",
        json!({"snapshot_path": state, "mem_backend": {"backend_type": "File", "backend_path": mem},
               "resume_vm": true}),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(
        b.get("/vm/config").json()["mmds-config"],
        json!({"version": "V2", "imds_compat": false, "network_interfaces": ["eth0"],
               "ipv4_address": "169.254.169.254"})
    );
    // The first VM's data did not come along.
    assert_eq!(b.get("/mmds").json(), json!({}));
    b.put_ok("/mmds", metadata());
    assert_eq!(b.action("SendCtrlAltDel").status, 204);
    // Still V2: refused without a token, served with one.
    assert_eq!(
        b.expect_line("PROBE mmds-notoken"),
        "PROBE mmds-notoken OK status=401"
    );
    assert!(b
        .expect_line("PROBE mmds ")
        .ends_with(&format!("status=200 value={VALUE}")));
    common::assert_filtered(b.pid());
    assert_eq!(b.action("SendCtrlAltDel").status, 204);
    assert_eq!(b.wait().code(), Some(0));
}

#[test]
fn a_metadata_file_that_is_not_json_or_too_large_stops_the_vmm() {
    let dir = TempDir::new();
    let bad = dir.path("bad.json");
    std::fs::write(&bad, "{\"a\": ").unwrap();
    let big = dir.path("big.json");
    std::fs::write(&big, json!({"k": "x".repeat(200)}).to_string()).unwrap();
    for (file, extra, want) in [
        (&bad, None, "cannot read metadata file"),
        (&big, Some("100"), "over its limit of 100 bytes"),
    ] {
        let sock = dir.path("api.sock");
        let mut cmd = std::process::Command::new(common::husk_bin());
        cmd.args(["vmm", "--api-sock"])
            .arg(&sock)
            .arg("--metadata")
            .arg(file);
        if let Some(limit) = extra {
            cmd.args(["--mmds-size-limit", limit]);
        }
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{err}");
    }
}
