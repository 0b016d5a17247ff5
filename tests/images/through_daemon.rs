//! The daemon's image endpoints with real images: pulled from a registry
//! on loopback (through the API, and by a create that finds the image
//! missing), uploaded as `docker save` archives by `husk load` and
//! `husk image import`, and run as containers in a real Linux guest
//! (software emulation here, as in tests/daemon.rs).

use std::process::{Command, Output, Stdio};

use oci_client::secrets::RegistryAuth;
use serde_json::json;

use super::check::tools_present;
use super::common::TempDir;
use super::daemon;
use super::layers::*;
use super::local_registry::*;

fn husk(d: &daemon::Daemon, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_husk"))
        .args(args)
        // The verbs and `husk image` find the daemon through HUSK_HOST.
        .env("HUSK_HOST", &d.sock)
        .env_remove("HUSK_STATE_DIR")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn the_daemon_pulls_imports_and_runs_images() {
    if !tools_present() {
        return;
    }
    let reg = Registry::start(None);
    let host = reg.host();
    let anon = RegistryAuth::Anonymous;
    push(
        &host,
        "test/app:1",
        &[base_layer(), top_layer()],
        "amd64",
        &anon,
    );
    push(
        &host,
        "test/other:2",
        &[base_layer(), top_layer()],
        "amd64",
        &anon,
    );
    let Some(d) = daemon::setup_in_host_net("images", &["--insecure-registry", &host]) else {
        return;
    };

    // A pull through the API streams progress and ends with `done`.
    let app = format!("{host}/test/app:1");
    let r = d.call("POST", "/v1/images/pull", Some(json!({ "reference": app })));
    assert_eq!(r.status, 200);
    let lines = r.lines();
    assert!(
        lines.iter().any(|l| l["status"] == "Pull complete"),
        "{lines:?}"
    );
    assert_eq!(lines.last().unwrap()["done"], true, "{lines:?}");
    let listed = d.call("GET", "/v1/images", None).json();
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["reference"] == app.as_str()),
        "{listed}"
    );

    // A tag the registry lacks: the stream's last line is the error; a
    // create of it is a 404.
    let lines = d
        .call(
            "POST",
            "/v1/images/pull",
            Some(json!({"reference": format!("{host}/test/app:nope")})),
        )
        .lines();
    assert!(
        lines.last().unwrap()["error"]
            .as_str()
            .unwrap()
            .contains("nope"),
        "{lines:?}"
    );
    let r = d.call(
        "POST",
        "/v1/containers",
        Some(json!({"image": format!("{host}/test/app:nope")})),
    );
    assert_eq!(
        (r.status, r.json()["code"].clone()),
        (404, json!("not_found"))
    );

    // A create finds the image missing and pulls it; the container runs
    // the layers as they were merged (whiteouts, opaque directories).
    let id = d.run(json!({
        "image": format!("{host}/test/other:2"),
        "cmd": ["sh", "-c", "cat /etc/motd; ls /opaque; test -e /etc/removed || echo removed"],
    }));
    assert_eq!(d.wait(&id)["exit_code"], 0);
    assert_eq!(d.logs(&id, ""), "hello from husk\nupper\nremoved\n");

    // `husk load` and `husk image import` upload archives to the daemon.
    let dir = TempDir::new();
    let archive = docker_save(&dir.path(""), false);
    let o = husk(&d, &["load", "-i", archive.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "Loaded image: docker.io/saved/app:v1\n");
    let o = husk(
        &d,
        &[
            "image",
            "import",
            archive.to_str().unwrap(),
            "--tag",
            "saved/again:v2",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).starts_with("docker.io/saved/again:v2 sha256:"),
        "{}",
        text(&o.stdout)
    );
    // A broken archive: a clear error naming the upload, not a scratch
    // path, and the daemon keeps serving.
    std::fs::create_dir_all(dir.path("bad")).unwrap();
    let bad = docker_save(&dir.path("bad"), true);
    let o = husk(&d, &["load", "-i", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(
        err.contains("the uploaded archive") && !err.contains("/tmp/"),
        "{err}"
    );
    let r = d.call("POST", "/v1/images/import", None);
    assert_eq!(
        (r.status, r.json()["code"].clone()),
        (400, json!("bad_request"))
    );

    // `husk image ls` goes through the daemon: all four are there.
    let o = husk(&d, &["image", "ls"]);
    let ls = text(&o.stdout);
    for name in [
        "test/app:1",
        "test/other:2",
        "saved/app:v1",
        "saved/again:v2",
    ] {
        assert!(ls.contains(name), "{name} missing from:\n{ls}");
    }
    let id = d.run(json!({"image": "saved/app:v1", "cmd": ["/bin/busybox", "sleep", "600"]}));
    let r = d.call("DELETE", "/v1/images/saved/app:v1", None);
    assert_eq!(
        r.status, 409,
        "an image in use by a running container stays"
    );
    d.call(
        "POST",
        &format!("/v1/containers/{id}/kill"),
        Some(json!({"signal": 9})),
    );
    d.wait(&id);
    let o = husk(&d, &["image", "rm", "saved/app:v1"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(
        d.call("DELETE", "/v1/images/saved/app:v1", None).status,
        404
    );
}
