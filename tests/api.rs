//! The per-VM API: state machine, Firecracker shapes, and bad input, which
//! must get a 400 with a useful message while the VMM keeps serving.

mod common;

use common::{kvm_available, Vmm};
use serde_json::json;

fn assert_still_serving(vmm: &Vmm) {
    let r = vmm.get("/");
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn info_version_and_config_shapes() {
    if !kvm_available() {
        return;
    }
    let vmm = Vmm::with_api();
    let info = vmm.get("/").json();
    assert_eq!(info["id"], "test-vm");
    assert_eq!(info["state"], "Not started");
    assert_eq!(info["vmm_version"], env!("CARGO_PKG_VERSION"));
    let v = vmm.get("/version");
    assert_eq!(v.status, 200);
    // The Firecracker API husk speaks, which Firecracker's SDKs check;
    // husk's own version beside it.
    assert_eq!(v.json()["firecracker_version"], "1.17.0");
    assert_eq!(v.json()["vmm_version"], env!("CARGO_PKG_VERSION"));

    let m = vmm.get("/machine-config").json();
    assert_eq!(m["vcpu_count"], 1);
    assert_eq!(m["mem_size_mib"], 128);
    assert_eq!(m["smt"], false);
    assert_eq!(m["track_dirty_pages"], false);

    vmm.configure("probe=cmdline", 2, 256);
    let r = vmm.patch("/machine-config", json!({"mem_size_mib": 512, "smt": true}));
    assert_eq!(r.status, 204, "{}", r.body);
    let cfg = vmm.get("/vm/config").json();
    assert_eq!(cfg["machine-config"]["vcpu_count"], 2);
    assert_eq!(cfg["machine-config"]["mem_size_mib"], 512);
    assert_eq!(cfg["machine-config"]["smt"], true);
    assert_eq!(cfg["boot-source"]["boot_args"], "probe=cmdline");
    assert_eq!(
        cfg["boot-source"]["kernel_image_path"],
        vmm.kernel.to_str().unwrap()
    );
}

#[test]
fn bad_machine_configs_are_refused() {
    if !kvm_available() {
        return;
    }
    let vmm = Vmm::with_api();
    let cases = [
        (
            json!({"vcpu_count": 0, "mem_size_mib": 128}),
            "vcpu_count must be between 1 and 32",
        ),
        (
            json!({"vcpu_count": 33, "mem_size_mib": 128}),
            "vcpu_count must be between 1 and 32",
        ),
        (
            json!({"vcpu_count": 300, "mem_size_mib": 128}),
            "vcpu_count",
        ),
        (
            json!({"vcpu_count": 1, "mem_size_mib": 0}),
            "mem_size_mib must be at least 1",
        ),
        (
            json!({"vcpu_count": 1, "mem_size_mib": 129, "huge_pages": "2M"}),
            "not a multiple of 2",
        ),
        (
            json!({"vcpu_count": 1, "mem_size_mib": 127, "huge_pages": "Transparent"}),
            "not a multiple of 2",
        ),
        (
            json!({"vcpu_count": 3, "mem_size_mib": 128, "smt": true}),
            "1 or even",
        ),
        (json!({"vcpu_count": 1}), "missing field `mem_size_mib`"),
        (
            json!({"vcpu_count": 1, "mem_size_mib": 128, "turbo": true}),
            "unknown field `turbo`",
        ),
        (
            json!({"vcpu_count": 1, "mem_size_mib": 128, "huge_pages": "1G"}),
            "unknown variant `1G`",
        ),
        (
            json!({"vcpu_count": 1, "mem_size_mib": 128, "huge_pages": "2m"}),
            "unknown variant `2m`",
        ),
    ];
    for (body, want) in cases {
        let msg = Vmm::fault(&vmm.put("/machine-config", body.clone()));
        assert!(msg.contains(want), "{body}: {msg}");
    }
    let msg = Vmm::fault(&vmm.patch("/machine-config", json!({"vcpu_count": 0})));
    assert!(msg.contains("vcpu_count"), "{msg}");
    // Nothing was applied.
    let m = vmm.get("/machine-config").json();
    assert_eq!(
        (m["vcpu_count"].as_u64(), m["mem_size_mib"].as_u64()),
        (Some(1), Some(128))
    );
    assert_still_serving(&vmm);
}

#[test]
fn bad_boot_sources_are_refused() {
    if !kvm_available() {
        return;
    }
    let vmm = Vmm::with_api();
    let missing = vmm.dir.path("no-such-vmlinux");
    let msg = Vmm::fault(&vmm.put("/boot-source", json!({"kernel_image_path": missing})));
    assert!(msg.contains("cannot open kernel image"), "{msg}");
    assert!(msg.contains("No such file"), "{msg}");
    let msg = Vmm::fault(&vmm.put(
        "/boot-source",
        json!({"kernel_image_path": vmm.kernel, "initrd_path": missing}),
    ));
    assert!(msg.contains("cannot open initrd"), "{msg}");
    let msg = Vmm::fault(&vmm.put(
        "/boot-source",
        json!({"kernel_image_path": vmm.kernel, "boot_args": "a".repeat(4000)}),
    ));
    assert!(msg.contains("too long"), "{msg}");
    let msg = Vmm::fault(&vmm.put(
        "/boot-source",
        json!({"kernel_image_path": vmm.kernel, "kernel": 1}),
    ));
    assert!(msg.contains("unknown field `kernel`"), "{msg}");
    // No kernel was accepted, so the VM cannot start.
    let msg = Vmm::fault(&vmm.action("InstanceStart"));
    assert!(msg.contains("PUT /boot-source first"), "{msg}");
    assert_eq!(vmm.get("/").json()["state"], "Not started");
    assert_still_serving(&vmm);
}

#[test]
fn malformed_requests_get_400s() {
    if !kvm_available() {
        return;
    }
    let vmm = Vmm::with_api();
    let msg = Vmm::fault(&vmm.request("PUT", "/machine-config", Some("{\"vcpu_count\": ")));
    assert!(msg.contains("invalid request body"), "{msg}");
    let msg = Vmm::fault(&vmm.request("PUT", "/machine-config", Some("[1, 2]")));
    assert!(msg.contains("invalid request body"), "{msg}");
    let msg = Vmm::fault(&vmm.request("PUT", "/boot-source", None));
    assert!(msg.contains("empty"), "{msg}");
    let huge = format!("{{\"kernel_image_path\": \"{}\"}}", "a".repeat(100_000));
    let msg = Vmm::fault(&vmm.request("PUT", "/boot-source", Some(&huge)));
    assert!(msg.contains("larger than the limit of 51200"), "{msg}");
    let msg = Vmm::fault(&vmm.put("/actions", json!({"action_type": "Explode"})));
    assert!(msg.contains("unknown variant `Explode`"), "{msg}");
    for (method, path) in [
        ("DELETE", "/boot-source"),
        ("GET", "/actions"),
        ("POST", "/"),
        ("PUT", "/version"),
        ("GET", "/no/such/path"),
    ] {
        let msg = Vmm::fault(&vmm.request(method, path, None));
        assert!(
            msg.contains(&format!(
                "Invalid request method and/or path: {method} {path}"
            )),
            "{method} {path}: {msg}"
        );
    }
    assert_still_serving(&vmm);
}

#[test]
fn actions_that_need_a_running_vm_are_refused_before_start() {
    if !kvm_available() {
        return;
    }
    let vmm = Vmm::with_api();
    let msg = Vmm::fault(&vmm.action("SendCtrlAltDel"));
    assert!(msg.contains("not running"), "{msg}");
    let msg = Vmm::fault(&vmm.patch("/vm", json!({"state": "Paused"})));
    assert!(msg.contains("not running"), "{msg}");
    let msg = Vmm::fault(&vmm.action("FlushMetrics"));
    assert!(msg.contains("before starting the microVM"), "{msg}");
    assert_still_serving(&vmm);
}

#[test]
fn a_kernel_that_is_not_a_kernel_fails_start_and_keeps_serving() {
    if !kvm_available() {
        return;
    }
    let vmm = Vmm::with_api();
    let junk = vmm.dir.path("junk.bin");
    std::fs::write(&junk, vec![0x5a; 8192]).unwrap();
    vmm.put_ok("/boot-source", json!({"kernel_image_path": junk}));
    let msg = Vmm::fault(&vmm.action("InstanceStart"));
    assert!(
        msg.contains("neither an ELF vmlinux nor a bzImage"),
        "{msg}"
    );
    assert_eq!(vmm.get("/").json()["state"], "Not started");
    // The mistake can be corrected and the VM started.
    vmm.configure("probe=count:1", 1, 128);
    let mut vmm = vmm;
    vmm.start();
    vmm.expect_line("PROBE count:1 OK");
    assert_eq!(vmm.wait().code(), Some(0));
}

#[test]
fn running_vm_refuses_reconfiguration_and_pauses() {
    if !kvm_available() {
        return;
    }
    let mut vmm = Vmm::with_api();
    vmm.configure("probe=wait-cad", 2, 128);
    vmm.start();
    vmm.expect_line("PROBE BOOT");
    assert_eq!(vmm.get("/").json()["state"], "Running");

    let msg = Vmm::fault(&vmm.put("/boot-source", json!({"kernel_image_path": vmm.kernel})));
    assert!(msg.contains("after starting the microVM"), "{msg}");
    let msg = Vmm::fault(&vmm.put(
        "/machine-config",
        json!({"vcpu_count": 1, "mem_size_mib": 128}),
    ));
    assert!(msg.contains("after starting the microVM"), "{msg}");
    let msg = Vmm::fault(&vmm.action("InstanceStart"));
    assert!(msg.contains("after starting the microVM"), "{msg}");
    assert_eq!(vmm.patch("/vm", json!({"state": "Paused"})).status, 204);
    assert_eq!(vmm.get("/").json()["state"], "Paused");
    // Keys sent while paused wait in the controller.
    assert_eq!(vmm.action("SendCtrlAltDel").status, 204);
    assert_eq!(vmm.patch("/vm", json!({"state": "Resumed"})).status, 204);
    vmm.expect_line("PROBE wait-cad OK");
    assert_eq!(vmm.wait().code(), Some(0));
}

#[test]
fn metrics_file_gets_real_counters() {
    if !kvm_available() {
        return;
    }
    let mut vmm = Vmm::with_api();
    let path = vmm.dir.path("metrics.json");
    assert_eq!(
        vmm.put("/metrics", json!({"metrics_path": path})).status,
        204
    );
    let msg = Vmm::fault(&vmm.put("/metrics", json!({"metrics_path": path})));
    assert!(msg.contains("already configured"), "{msg}");
    vmm.configure("probe=wait-cad", 1, 128);
    vmm.start();
    vmm.expect_line("PROBE BOOT");
    assert_eq!(vmm.action("FlushMetrics").status, 204);
    let text = std::fs::read_to_string(&path).unwrap();
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    // "PROBE BOOT" went out, one port write per byte. (The counter may
    // trail the byte the test saw by one: it is counted after the write.)
    assert!(
        first["serial"]["out_bytes"].as_u64().unwrap() >= 10,
        "{first}"
    );
    assert!(
        first["vcpu"]["exit_io_out"].as_u64().unwrap() >= 10,
        "{first}"
    );
    assert_eq!(first["vmm"]["instance_starts"], 1);
    assert!(first["api_server"]["requests"].as_u64().unwrap() >= 4);

    // The API serves the same counters, also as Prometheus text.
    let live = vmm.get("/metrics").json();
    assert!(live["serial"]["out_bytes"].as_u64().unwrap() >= 10);

    vmm.action("SendCtrlAltDel");
    assert_eq!(vmm.wait().code(), Some(0));
    // The VMM flushes once more on its way out.
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().count(), 2, "{text}");
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["i8042"]["ctrl_alt_del"], 1);
    assert_eq!(last["i8042"]["resets"], 1);
    let all = "PROBE BOOT\nPROBE wait-cad OK\nPROBE DONE\n".len() as u64;
    assert_eq!(last["serial"]["out_bytes"].as_u64(), Some(all), "{last}");
}

#[test]
fn logger_writes_to_its_file() {
    if !kvm_available() {
        return;
    }
    let mut vmm = Vmm::with_api();
    let log = vmm.dir.path("vmm.log");
    let msg = Vmm::fault(&vmm.put("/logger", json!({"log_path": log, "level": "Loud"})));
    assert!(msg.contains("invalid log level"), "{msg}");
    vmm.put_ok(
        "/logger",
        json!({"log_path": log, "level": "Info", "show_level": true}),
    );
    vmm.configure("probe=count:1", 1, 128);
    vmm.start();
    assert_eq!(vmm.wait().code(), Some(0));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("microVM started"), "{text}");
    assert!(text.contains("INFO"), "{text}");
}

/// `module` keeps the lines of that module path and drops the others.
#[test]
fn the_logger_module_filters_by_target() {
    if !kvm_available() {
        return;
    }
    let run = |module: &str| {
        let mut vmm = Vmm::with_api();
        let log = vmm.dir.path("vmm.log");
        let body =
            json!({"log_path": log, "level": "Info", "module": module, "show_log_origin": true});
        vmm.put_ok("/logger", body);
        vmm.configure("probe=count:1", 1, 128);
        vmm.start();
        assert_eq!(vmm.wait().code(), Some(0));
        std::fs::read_to_string(&log).unwrap()
    };
    let kept = run("husk::vmm");
    assert!(kept.contains("microVM started"), "{kept}");
    assert!(kept.contains("husk::vmm"), "{kept}");
    let other = run("husk::image");
    assert!(!other.contains("microVM started"), "{other}");
    let vmm = Vmm::with_api();
    let msg = Vmm::fault(&vmm.put("/logger", json!({"level": "Info", "module": "a b=c"})));
    assert!(msg.contains("module"), "{msg}");
}

#[test]
fn a_live_socket_is_not_stolen() {
    if !kvm_available() {
        return;
    }
    let vmm = Vmm::with_api();
    let out = std::process::Command::new(common::husk_bin())
        .args(["vmm", "--api-sock"])
        .arg(&vmm.sock)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by another process"), "{err}");
    assert_still_serving(&vmm);
}

#[test]
fn bad_config_files_exit_with_a_message() {
    let dir = common::TempDir::new();
    let cfg = dir.path("bad.json");
    for (body, want) in [
        ("{not json", "invalid config file"),
        (
            r#"{"machine-config": {"vcpu_count": 1, "mem_size_mib": 128}}"#,
            "has no boot-source",
        ),
        (
            r#"{"boot-source": {"kernel_image_path": "/no/such/kernel"}}"#,
            "cannot open kernel image /no/such/kernel",
        ),
        (r#"{"mmds": {}}"#, "unknown field `mmds`"),
        (
            r#"{"boot-source": {"kernel_image_path": "/k"}, "balloon": {"amount_mib": 1}}"#,
            "missing field `deflate_on_oom`",
        ),
    ] {
        std::fs::write(&cfg, body).unwrap();
        let out = std::process::Command::new(common::husk_bin())
            .args(["vmm", "--no-api", "--config-file"])
            .arg(&cfg)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{body}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{body}: {err}");
    }
}

#[test]
fn garbage_on_the_socket_does_not_stop_the_api() {
    if !kvm_available() {
        return;
    }
    use std::io::{Read, Write};
    let vmm = Vmm::with_api();
    for junk in [
        &b"\x00\x01\x02 not http at all\r\n\r\n"[..],
        b"PUT /actions HTTP/1.1\r\nContent-Length: 999999999999\r\n\r\n{",
        b"PUT /machine-config HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ] {
        let mut s = std::os::unix::net::UnixStream::connect(&vmm.sock).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        s.write_all(junk).unwrap();
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        let text = String::from_utf8_lossy(&answer);
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 4"),
            "unexpected answer to junk: {text}"
        );
    }
    assert_still_serving(&vmm);
    // Half-open connections do not block others either.
    let _idle = std::os::unix::net::UnixStream::connect(&vmm.sock).unwrap();
    assert_still_serving(&vmm);
}

#[test]
fn doctor_reports_kvm_and_the_virtualization_kind() {
    let out = std::process::Command::new(common::husk_bin())
        .arg("doctor")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    if !std::path::Path::new("/dev/kvm").exists() {
        assert!(text.contains("cannot open /dev/kvm"), "{text}");
        assert!(text.contains("probe guest: no ("), "{text}");
        assert_eq!(out.status.code(), Some(1));
        return;
    }
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("kvm: API version 12 (ok)"), "{text}");
    assert!(text.contains("ok      in-kernel IOAPIC/PIC"), "{text}");
    // One verdict per use, each on its own line.
    assert!(text.contains("\nprobe guest: yes\n"), "{text}");
    if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        assert!(text.contains("virtualization: PVM"), "{text}");
        assert!(
            text.contains("\nLinux guest: only a PVM-enabled kernel (this host is PVM"),
            "{text}"
        );
        assert!(
            text.contains("\ncontainers: only with a PVM-enabled guest kernel ("),
            "{text}"
        );
    } else {
        assert!(text.contains("\nLinux guest: "), "{text}");
        assert!(text.contains("\ncontainers: "), "{text}");
    }
    // No verdict contradicts another: no blanket "can run" line.
    assert!(!text.contains("verdict:"), "{text}");
}

/// Deterministic junk: every endpoint gets bodies of the wrong shape, the
/// wrong types and extreme values. Each answer is a 204 or a 400 with a
/// fault message, and the VMM stays up and unstarted.
#[test]
fn fuzzed_bodies_get_204_or_400() {
    if !kvm_available() {
        return;
    }
    let vmm = Vmm::with_api();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let values = [
        json!(null),
        json!(true),
        json!(-1),
        json!(0),
        json!(1),
        json!(255),
        json!(256),
        json!(u64::MAX),
        json!(1.5),
        json!(""),
        json!("None"),
        json!("\u{0}\u{ffff}é"),
        json!("a".repeat(5000)),
        json!([]),
        json!({}),
        json!({"nested": {"deeper": [1, 2, 3]}}),
        json!("/dev/null"),
        json!("Paused"),
        json!("InstanceStart"),
    ];
    let fields = [
        "kernel_image_path",
        "initrd_path",
        "boot_args",
        "vcpu_count",
        "mem_size_mib",
        "smt",
        "track_dirty_pages",
        "cpu_template",
        "huge_pages",
        "level",
        "show_level",
        "module",
        "state",
        "serial_out_path",
        "bogus",
    ];
    let targets = [
        ("PUT", "/boot-source"),
        ("PUT", "/machine-config"),
        ("PATCH", "/machine-config"),
        ("PATCH", "/vm"),
        ("PUT", "/serial"),
        ("PUT", "/logger"),
    ];
    for i in 0..300 {
        let (method, path) = targets[i % targets.len()];
        let mut body = serde_json::Map::new();
        for _ in 0..(next() % 4) {
            let f = fields[(next() % fields.len() as u64) as usize];
            let v = values[(next() % values.len() as u64) as usize].clone();
            body.insert(f.to_string(), v);
        }
        let text = match next() % 10 {
            0 => "[1,2".to_string(),
            1 => values[(next() % values.len() as u64) as usize].to_string(),
            _ => serde_json::Value::Object(body).to_string(),
        };
        let r = vmm.request(method, path, Some(&text));
        match r.status {
            204 => {}
            400 => {
                assert!(
                    r.json()["fault_message"].is_string(),
                    "{method} {path} {text}: {}",
                    r.body
                );
            }
            s => panic!("{method} {path} {text}: status {s}: {}", r.body),
        }
    }
    let info = vmm.get("/").json();
    assert_eq!(info["state"], "Not started");
}

/// Sends `raw` (a whole request) on `s` and reads one response: its
/// status and body. The connection stays open for the next.
fn exchange(s: &mut std::os::unix::net::UnixStream, raw: &[u8]) -> (u16, String) {
    use std::io::{Read, Write};
    s.write_all(raw).unwrap();
    let mut got = Vec::new();
    let mut b = [0u8; 4096];
    let head_end = loop {
        let n = s.read(&mut b).unwrap();
        assert!(
            n > 0,
            "the connection closed: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&b[..n]);
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&got[..head_end]).to_ascii_lowercase();
    let status = head[9..12].parse().unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    while got.len() < head_end + len {
        let n = s.read(&mut b).unwrap();
        assert!(n > 0, "the connection closed mid-body");
        got.extend_from_slice(&b[..n]);
    }
    (
        status,
        String::from_utf8_lossy(&got[head_end..head_end + len]).into(),
    )
}

fn put_raw(path: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "PUT {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// The routes husk shares with Firecracker answer with Firecracker's
/// status codes, found by sending each request to both.
#[test]
fn shared_routes_answer_as_firecracker_does() {
    if !kvm_available() {
        return;
    }
    let mut vmm = Vmm::with_api();
    // An empty PATCH changes nothing and is refused.
    assert_eq!(vmm.patch("/machine-config", json!({})).status, 400);
    // huge_pages is always shown; /vm/config shows every section.
    assert_eq!(vmm.get("/machine-config").json()["huge_pages"], "None");
    let cfg = vmm.get("/vm/config").json();
    for k in [
        "balloon",
        "logger",
        "metrics",
        "mmds-config",
        "vsock",
        "entropy",
    ] {
        assert_eq!(cfg[k], serde_json::Value::Null, "{k}: {cfg}");
    }
    for k in ["drives", "network-interfaces"] {
        assert_eq!(cfg[k], json!([]), "{k}: {cfg}");
    }
    assert_eq!(cfg["machine-config"]["huge_pages"], "None", "{cfg}");
    // Slashes around the path do not count; a query is part of it.
    assert_eq!(vmm.get("/machine-config/").status, 200);
    assert_eq!(vmm.get("//machine-config").status, 200);
    assert_eq!(vmm.get("/machine-config?x=1").status, 400);
    // Segments past the resource's name are ignored, except where the
    // next one names a sub-resource.
    assert_eq!(vmm.get("/machine-config/x/y").status, 200);
    assert_eq!(vmm.get("/version/x").status, 200);
    assert_eq!(vmm.get("/vm/config/x").status, 200);
    assert_eq!(vmm.get("/vm/x").status, 400);
    let img = vmm.dir.path("d0.img");
    std::fs::write(&img, vec![0u8; 4096]).unwrap();
    vmm.put_ok(
        "/drives/d0/ignored",
        json!({"drive_id": "d0", "path_on_host": img, "is_root_device": false}),
    );
    assert_eq!(vmm.get("/vm/config").json()["drives"][0]["drive_id"], "d0");
    // A GET carries no body.
    let mut s = std::os::unix::net::UnixStream::connect(&vmm.sock).unwrap();
    let (status, body) = exchange(
        &mut s,
        b"GET /machine-config HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\r\n{}",
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("cannot have a body"), "{body}");
    // Metrics cannot be flushed before start, even once configured.
    let metrics = vmm.dir.path("metrics.json");
    vmm.put_ok("/metrics", json!({"metrics_path": metrics}));
    assert_eq!(vmm.action("FlushMetrics").status, 400);

    // Bodies up to 51,200 bytes are read; a bigger one gets a 400, and a
    // client still writing it gets that answer on a connection that goes
    // on, as does a refused path with a body.
    let mut s = std::os::unix::net::UnixStream::connect(&vmm.sock).unwrap();
    let pad = |n: usize| {
        let head = br#"{"boot_args": ""#;
        let tail = br#"", "kernel_image_path": "/nonexistent"}"#;
        let mut b = head.to_vec();
        b.resize(n - tail.len(), b'x');
        b.extend_from_slice(tail);
        b
    };
    let (status, body) = exchange(&mut s, &put_raw("/boot-source", &pad(51_200)));
    assert_eq!(status, 400, "{body}");
    assert!(!body.contains("larger than the limit"), "{body}");
    let (status, body) = exchange(&mut s, &put_raw("/boot-source", &pad(51_201)));
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("larger than the limit of 51200"), "{body}");
    let (status, _) = exchange(&mut s, &put_raw("/no-such-thing", &pad(40_000)));
    assert_eq!(status, 400);
    let (status, _) = exchange(&mut s, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_eq!(status, 200);

    vmm.configure("probe=wait-cad", 1, 128);
    vmm.start();
    vmm.expect_line("PROBE BOOT");
    // The logger is set before start only.
    let log = vmm.dir.path("late.log");
    assert_eq!(vmm.put("/logger", json!({"log_path": log})).status, 400);
    assert_eq!(vmm.action("FlushMetrics").status, 204);
    // Resuming a running microVM and pausing a paused one change nothing.
    assert_eq!(vmm.patch("/vm", json!({"state": "Resumed"})).status, 204);
    assert_eq!(vmm.patch("/vm", json!({"state": "Paused"})).status, 204);
    assert_eq!(vmm.patch("/vm", json!({"state": "Paused"})).status, 204);
    assert_eq!(vmm.get("/").json()["state"], "Paused");
    assert_eq!(vmm.patch("/vm", json!({"state": "Resumed"})).status, 204);
    assert_eq!(vmm.action("SendCtrlAltDel").status, 204);
    vmm.expect_line("PROBE wait-cad OK");
    assert_eq!(vmm.wait().code(), Some(0));
}
