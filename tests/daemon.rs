//! `husk serve` end to end: a real daemon on a Unix socket, a busybox
//! image imported into its store, and containers that run in real Linux
//! guests. On these hosts no Linux guest runs under KVM, so the daemon
//! uses its software-emulation backend (`--vm-backend tcg`); the kernel,
//! initramfs and agent are the real ones.
//!
//! Prints `skipped: <reason>` where QEMU, vhost-device-vsock or the guest
//! kernel is missing (a failure under HUSK_REQUIRE_QEMU).

#[path = "common/busybox_image.rs"]
mod busybox_image;
#[path = "common/daemon.rs"]
mod daemon;
#[path = "common/qemu.rs"]
mod qemu;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use daemon::{request, setup};
use serde_json::json;

const IMAGE: &str = busybox_image::IMAGE;

#[test]
fn containers_run_to_their_exit_codes_with_their_config() {
    let Some(d) = setup("run") else {
        return;
    };
    let info = d.call("GET", "/v1/info", None).json();
    assert_eq!(info["backend"], "tcg");

    let id = d.run(json!({"image": IMAGE, "cmd": ["echo", "hello"]}));
    let w = d.wait(&id);
    let rec = d.call("GET", &format!("/v1/containers/{id}"), None).json();
    assert_eq!(w["exit_code"], 0, "{w} {rec}");
    assert_eq!(d.logs(&id, ""), "hello\n");
    let r = d
        .call("GET", &format!("/v1/containers/{}", &id[..12]), None)
        .json();
    assert_eq!(
        (r["state"].clone(), r["backend"].clone()),
        (json!("exited"), json!("tcg"))
    );
    assert!(r["finished_ms"].as_u64() >= r["started_ms"].as_u64());

    let id = d.run(json!({"image": IMAGE, "cmd": ["sh", "-c", "echo out; echo err >&2; exit 3"], "name": "three"}));
    assert_eq!(d.wait("three")["exit_code"], 3);
    assert_eq!(d.logs(&id, "stdout=false"), "err\n");
    assert_eq!(d.logs(&id, "tail=1"), "err\n");

    let id = d.run(json!({
        "image": IMAGE,
        "cmd": ["sh", "-c", "echo $FOO $FROM_IMAGE; pwd; id -u; hostname"],
        "env": ["FOO=bar"], "workdir": "/tmp/w", "user": "1000", "hostname": "box",
    }));
    assert_eq!(d.wait(&id)["exit_code"], 0);
    assert_eq!(d.logs(&id, ""), "bar busybox\n/tmp/w\n1000\nbox\n");

    // --rm: the record goes once the container ends.
    let id = d.run(json!({"image": IMAGE, "cmd": ["true"], "auto_remove": true}));
    d.wait(&id);
    let deadline = Instant::now() + Duration::from_secs(10);
    while d.call("GET", &format!("/v1/containers/{id}"), None).status != 404 {
        assert!(
            Instant::now() < deadline,
            "the auto_remove container stayed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let all = d.call("GET", "/v1/containers?all=true", None).json();
    assert_eq!(all.as_array().unwrap().len(), 3);
}

#[test]
fn exec_logs_follow_kill_and_stop() {
    let Some(d) = setup("exec") else {
        return;
    };
    let id = d.run(json!({"image": IMAGE, "cmd": ["sh", "-c", "echo start; sleep 600"]}));
    let r = d.call(
        "POST",
        &format!("/v1/containers/{id}/exec"),
        Some(json!({"cmd": ["sh", "-c", "echo in-exec; exit 5"]})),
    );
    let lines = r.lines();
    assert_eq!(lines[0]["data"], "in-exec\n");
    assert_eq!(lines.last().unwrap()["exit_code"], 5);
    let running = d.call("GET", "/v1/containers", None).json();
    assert_eq!(running.as_array().unwrap().len(), 1);
    // Conflicts: a second start, a remove without force.
    assert_eq!(
        d.call("POST", &format!("/v1/containers/{id}/start"), None)
            .status,
        409
    );
    let r = d.call("DELETE", &format!("/v1/containers/{id}"), None);
    assert_eq!(
        (r.status, r.json()["code"].clone()),
        (409, json!("conflict"))
    );
    // logs -f follows until the container ends.
    let follow = {
        let sock = d.sock.clone();
        let id = id.clone();
        std::thread::spawn(move || {
            request(
                &sock,
                "GET",
                &format!("/v1/containers/{id}/logs?follow=true"),
                None,
            )
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let r = d.call(
        "POST",
        &format!("/v1/containers/{id}/kill"),
        Some(json!({"signal": 9})),
    );
    assert_eq!(r.status, 204);
    assert_eq!(d.wait(&id)["exit_code"], 137);
    let followed = follow.join().unwrap();
    assert_eq!(followed.lines()[0]["data"], "start\n");

    // stop: SIGTERM reaches the process (sh ignores nothing here).
    let id = d.run(json!({"image": IMAGE, "cmd": ["sleep", "600"]}));
    let r = d.call(
        "POST",
        &format!("/v1/containers/{id}/stop"),
        Some(json!({"timeout": 20})),
    );
    assert_eq!(r.status, 204);
    assert_eq!(d.wait(&id)["exit_code"], 143);
    assert_eq!(
        d.call("DELETE", &format!("/v1/containers/{id}"), None)
            .status,
        204
    );
    assert_eq!(
        d.call("GET", &format!("/v1/containers/{id}"), None).status,
        404
    );
}

#[test]
fn a_vm_that_dies_is_noticed_and_recorded() {
    let Some(d) = setup("vmdies") else {
        return;
    };
    let id = d.run(json!({"image": IMAGE, "cmd": ["sleep", "600"]}));
    let r = d.call("GET", &format!("/v1/containers/{id}"), None).json();
    let vmm = r["pids"][0].as_i64().unwrap() as i32;
    // SAFETY: kill takes no pointers; the pid is the VM's main process.
    assert_eq!(unsafe { libc::kill(vmm, libc::SIGKILL) }, 0);
    let w = d.wait(&id);
    assert_eq!(w["exit_code"], 137, "{w}");
    let r = d.call("GET", &format!("/v1/containers/{id}"), None).json();
    assert_eq!(r["state"], "exited", "{r}");
    let error = r["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&format!("QEMU pid {vmm}) ended under the container")),
        "{r}"
    );
    assert_eq!(r["pids"], json!([]), "{r}");
    // Its helper (vhost-device-vsock) went too.
    // (The VMs' directories are under <socket dir>/vms.)
    let vms = d.dir.join("vms");
    let leftovers = std::process::Command::new("pgrep")
        .arg("-f")
        .arg(vms.to_str().unwrap())
        .output()
        .unwrap();
    assert!(
        leftovers.stdout.is_empty(),
        "left running: {}",
        String::from_utf8_lossy(&leftovers.stdout)
    );
}

#[test]
fn kvm_backend_runs_containers() {
    let Some(d) = daemon::setup_kvm("kvm") else {
        return;
    };
    assert_eq!(d.call("GET", "/v1/info", None).json()["backend"], "kvm");
    let id = d.run(json!({"image": IMAGE, "cmd": ["sh", "-c", "echo hello; exit 3"]}));
    assert_eq!(d.wait(&id)["exit_code"], 3);
    assert_eq!(d.logs(&id, ""), "hello\n");
    let r = d.call("GET", &format!("/v1/containers/{id}"), None).json();
    assert_eq!(r["backend"], "kvm");
    let id = d.run(json!({"image": IMAGE, "cmd": ["sleep", "600"]}));
    let r = d.call(
        "POST",
        &format!("/v1/containers/{id}/exec"),
        Some(json!({"cmd": ["echo", "in-exec"]})),
    );
    assert_eq!(r.lines()[0]["data"], "in-exec\n");
    let r = d.call(
        "POST",
        &format!("/v1/containers/{id}/stop"),
        Some(json!({"timeout": 20})),
    );
    assert_eq!(r.status, 204);
    assert_eq!(d.wait(&id)["exit_code"], 143);
}

#[test]
fn the_daemon_survives_kill_9_and_finds_its_containers_again() {
    let Some(mut d) = setup("restart") else {
        return;
    };
    let id = d.run(json!({"image": IMAGE, "cmd": ["sh", "-c", "echo before; read x; echo after; sleep 600"], "name": "keep"}));
    let deadline = Instant::now() + Duration::from_secs(20);
    while d.logs(&id, "") != "before\n" {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(50));
    }
    d.crash_and_restart();
    let r = d.call("GET", "/v1/containers/keep", None).json();
    assert_eq!(r["state"], "running", "{r}");
    // The new daemon reattached: signals reach the process, its logs
    // and exit are recorded.
    let r = d.call(
        "POST",
        "/v1/containers/keep/stop",
        Some(json!({"timeout": 20})),
    );
    assert_eq!(r.status, 204);
    assert_eq!(d.wait("keep")["exit_code"], 143);
    assert_eq!(d.logs("keep", ""), "before\n");
    assert!(d
        .state
        .join("containers")
        .join(&id)
        .join("record.json")
        .exists());
}

#[test]
fn bad_requests_get_clear_errors() {
    let Some(d) = setup("bad") else {
        return;
    };
    for (method, path, body, status, code) in [
        ("GET", "/v1/containers/nope", None, 404, "not_found"),
        ("POST", "/v1/containers/nope/start", None, 404, "not_found"),
        (
            "POST",
            "/v1/containers",
            // Not in the store, and its registry (a closed port) cannot give it.
            Some(json!({"image": "127.0.0.1:1/no/such:image"})),
            404,
            "not_found",
        ),
        (
            "POST",
            "/v1/containers",
            Some(json!({"image": IMAGE, "bogus": 1})),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/v1/containers",
            Some(json!({"image": IMAGE, "env": ["NOEQ"]})),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/v1/containers",
            Some(json!({"image": IMAGE, "memory_mib": 1})),
            400,
            "bad_request",
        ),
        ("GET", "/v1/nothing", None, 404, "not_found"),
    ] {
        let r = d.call(method, path, body.clone());
        assert_eq!(r.status, status, "{method} {path} {body:?}");
        assert_eq!(r.json()["code"], code, "{method} {path}");
    }
    let r = d.call(
        "POST",
        "/v1/containers",
        Some(json!({"image": IMAGE, "name": "dup"})),
    );
    assert_eq!(r.status, 201);
    let r = d.call(
        "POST",
        "/v1/containers",
        Some(json!({"image": IMAGE, "name": "dup"})),
    );
    assert_eq!(r.status, 409);
    // Not JSON at all.
    let mut s = UnixStream::connect(&d.sock).unwrap();
    s.write_all(b"POST /v1/containers HTTP/1.1\r\nHost: h\r\nConnection: close\r\nContent-Length: 5\r\n\r\n{{{{{").unwrap();
    let mut got = String::new();
    s.read_to_string(&mut got).unwrap();
    assert!(got.starts_with("HTTP/1.1 400"), "{got}");
    // And the daemon still serves.
    assert_eq!(d.call("GET", "/v1/info", None).status, 200);

    // A client that hangs up right after asking for a start does not
    // leave the container half started: the start goes on without it,
    // and a forced remove ends it.
    let r = d.call(
        "POST",
        "/v1/containers",
        Some(json!({"image": IMAGE, "name": "hangup", "cmd": ["sleep", "600"]})),
    );
    assert_eq!(r.status, 201);
    let mut s = UnixStream::connect(&d.sock).unwrap();
    s.write_all(
        b"POST /v1/containers/hangup/start HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    drop(s);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let state = d.call("GET", "/v1/containers/hangup", None).json()["state"].clone();
        if state == "running" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the start without its client ended {state}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        d.call("DELETE", "/v1/containers/hangup?force=true", None)
            .status,
        204
    );

    // Its OpenAPI document names every route and the types' fields.
    let doc = d.call("GET", "/v1/openapi.json", None).json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
    for (path, method) in [
        ("/v1/containers", "post"),
        ("/v1/containers", "get"),
        ("/v1/containers/{id}", "delete"),
        ("/v1/containers/{id}/start", "post"),
        ("/v1/containers/{id}/exec", "post"),
        ("/v1/containers/{id}/logs", "get"),
        ("/v1/images/pull", "post"),
        ("/v1/images/import", "post"),
        ("/v1/events", "get"),
    ] {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} missing"
        );
    }
    let create = &doc["components"]["schemas"]["CreateRequest"]["properties"];
    for field in ["image", "cmd", "env", "auto_remove", "pull", "labels"] {
        assert!(
            create[field].is_object(),
            "CreateRequest.{field} missing: {create}"
        );
    }
}

/// One request over TCP, with an optional bearer token: the status.
fn tcp_status(addr: &str, path: &str, token: Option<&str>) -> u16 {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: husk\r\nConnection: close\r\n{auth}\r\n"
    )
    .unwrap();
    let mut got = String::new();
    s.read_to_string(&mut got).unwrap();
    got.split(' ').nth(1).unwrap().parse().unwrap()
}

#[test]
fn the_tcp_listener_wants_the_token() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let dir = std::env::temp_dir().join(format!("husk-daemon-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("token");
    std::fs::write(&token_file, "s3cret-token-of-some-length\n").unwrap();
    let Some(d) = daemon::setup_in_host_net(
        "tcp",
        &[
            "--listen",
            &addr,
            "--token-file",
            token_file.to_str().unwrap(),
        ],
    ) else {
        return;
    };
    // The socket needs no token; TCP does.
    assert_eq!(d.call("GET", "/v1/info", None).status, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(Instant::now() < deadline, "the TCP listener never came up");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(tcp_status(&addr, "/v1/info", None), 401);
    assert_eq!(
        tcp_status(&addr, "/v1/info", Some("wrong-token-of-some-length")),
        401
    );
    assert_eq!(
        tcp_status(&addr, "/v1/containers", Some("s3cret-token-of-some-length")),
        200
    );
    let _ = std::fs::remove_dir_all(&dir);
}
