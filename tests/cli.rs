//! The Docker-like CLI end to end: `husk run`, `ps`, `logs`, `exec`,
//! `stop`, `rm` and friends, as real processes against a real `husk serve`
//! whose containers run in real Linux guests (software emulation here, as
//! in `tests/daemon.rs`). What is checked is what a user sees: stdout,
//! stderr and exit codes.
//!
//! Prints `skipped: <reason>` where QEMU, vhost-device-vsock or the guest
//! kernel is missing (a failure under HUSK_REQUIRE_QEMU).

#[path = "common/busybox_image.rs"]
mod busybox_image;
#[path = "common/daemon.rs"]
mod daemon;
#[path = "common/qemu.rs"]
mod qemu;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use daemon::{setup, Daemon};

const IMAGE: &str = busybox_image::IMAGE;

/// `husk --socket <daemon's> ARGS...`
fn husk(d: &Daemon, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_husk"))
        .arg("--socket")
        .arg(&d.sock)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn husk_run_gives_back_output_and_exit_code() {
    let Some(d) = setup("cli-run") else {
        return;
    };
    let o = husk(&d, &["run", IMAGE, "echo", "hello"]);
    assert_eq!(
        (stdout(&o), o.status.code()),
        ("hello\n".into(), Some(0)),
        "{}",
        stderr(&o)
    );

    // The process's exit code is husk's; stderr stays stderr.
    let o = husk(
        &d,
        &[
            "run",
            "--rm",
            IMAGE,
            "sh",
            "-c",
            "echo out; echo err >&2; exit 7",
        ],
    );
    assert_eq!(o.status.code(), Some(7), "{}", stderr(&o));
    assert_eq!(stdout(&o), "out\n");
    assert!(stderr(&o).contains("err\n"), "{}", stderr(&o));

    // Flags reach the process.
    let o = husk(
        &d,
        &[
            "run",
            "-e",
            "FOO=bar",
            "-w",
            "/tmp/w",
            "-u",
            "1000",
            "--hostname",
            "box",
            "--name",
            "flags",
            IMAGE,
            "sh",
            "-c",
            "echo $FOO; pwd; id -u; hostname",
        ],
    );
    assert_eq!(stdout(&o), "bar\n/tmp/w\n1000\nbox\n", "{}", stderr(&o));

    // ps -a lists the kept ones (not the --rm one), by name.
    let o = husk(&d, &["ps", "-a"]);
    let ps = stdout(&o);
    assert!(ps.lines().next().unwrap().contains("CONTAINER ID"), "{ps}");
    assert_eq!(ps.lines().count(), 3, "{ps}");
    assert!(ps.contains("flags") && ps.contains("Exited (0)"), "{ps}");
    // ps without -a: nothing runs.
    assert_eq!(stdout(&husk(&d, &["ps", "-q"])), "");

    // Errors: an unknown image, a command that does not exist.
    let o = husk(
        &d,
        &[
            "run",
            "--pull",
            "never",
            "127.0.0.1:1/no/such:image",
            "true",
        ],
    );
    assert_eq!(o.status.code(), Some(125), "{}", stderr(&o));
    assert!(stderr(&o).contains("no/such"), "{}", stderr(&o));
    let o = husk(&d, &["run", "--name", "missing", IMAGE, "/no/such/program"]);
    assert_eq!(o.status.code(), Some(127), "{} {}", stdout(&o), stderr(&o));
    assert!(stderr(&o).contains("/no/such/program"), "{}", stderr(&o));
    let o = husk(&d, &["inspect", "missing"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (v[0]["state"].as_str(), v[0]["exit_code"].as_i64()),
        (Some("exited"), Some(127)),
        "{v}"
    );
}

#[test]
fn detached_containers_are_managed_by_name() {
    let Some(d) = setup("cli-detach") else {
        return;
    };
    let o = husk(
        &d,
        &[
            "run",
            "-d",
            "--name",
            "web",
            IMAGE,
            "sh",
            "-c",
            "echo up; exec sleep 600",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let id = stdout(&o).trim().to_string();
    assert_eq!(id.len(), 64, "{id}");

    let deadline = Instant::now() + Duration::from_secs(20);
    while stdout(&husk(&d, &["logs", "web"])) != "up\n" {
        assert!(
            Instant::now() < deadline,
            "no output from the detached container"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let o = husk(&d, &["ps", "-q"]);
    assert_eq!(stdout(&o).trim(), &id[..12]);

    let o = husk(
        &d,
        &[
            "exec",
            "web",
            "sh",
            "-c",
            "echo from-exec > /kept; echo in-exec; exit 4",
        ],
    );
    assert_eq!(
        (stdout(&o), o.status.code()),
        ("in-exec\n".into(), Some(4)),
        "{}",
        stderr(&o)
    );
    let o = husk(&d, &["exec", "web", "/no/such/program"]);
    assert_eq!(o.status.code(), Some(127), "{}", stderr(&o));
    let o = husk(&d, &["exec", "web", "/etc/passwd"]);
    assert_eq!(o.status.code(), Some(126), "{}", stderr(&o));

    // A running container is not removed without -f.
    let o = husk(&d, &["rm", "web"]);
    assert_ne!(o.status.code(), Some(0));
    assert!(
        stderr(&o).contains("running") || stderr(&o).contains("stop"),
        "{}",
        stderr(&o)
    );

    let o = husk(&d, &["stop", "-t", "20", "web"]);
    assert_eq!(
        (stdout(&o), o.status.code()),
        ("web\n".into(), Some(0)),
        "{}",
        stderr(&o)
    );
    let o = husk(&d, &["wait", "web"]);
    assert_eq!(stdout(&o), "143\n", "{}", stderr(&o));
    let o = husk(&d, &["inspect", "web"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["state"], "exited", "{v}");
    assert_eq!(v[0]["exit_code"], 143, "{v}");

    // An exited container starts again, on the root filesystem it left
    // (the file made by the exec is there), its logs going on; restart
    // stops a running one first.
    let o = husk(&d, &["start", "web"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = husk(&d, &["exec", "web", "cat", "/kept"]);
    assert_eq!(stdout(&o), "from-exec\n", "{}", stderr(&o));
    let o = husk(&d, &["inspect", "web"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["state"], "running", "{v}");
    assert!(v[0].get("exit_code").is_none(), "{v}");
    let o = husk(&d, &["restart", "-t", "1", "web"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let deadline = Instant::now() + Duration::from_secs(20);
    while stdout(&husk(&d, &["logs", "web"])) != "up\nup\nup\n" {
        assert!(
            Instant::now() < deadline,
            "no output from the restarted container"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let o = husk(&d, &["stop", "-t", "1", "web"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));

    let o = husk(&d, &["rm", "web"]);
    assert_eq!(
        (stdout(&o), o.status.code()),
        ("web\n".into(), Some(0)),
        "{}",
        stderr(&o)
    );
    assert_eq!(stdout(&husk(&d, &["ps", "-aq"])), "");
    let o = husk(&d, &["logs", "web"]);
    assert_ne!(o.status.code(), Some(0));
    assert!(stderr(&o).contains("web"), "{}", stderr(&o));
}

#[test]
fn husk_network_and_published_ports() {
    let Some(d) = setup("cli-net") else {
        return;
    };
    let o = husk(
        &d,
        &["network", "create", "--subnet", "10.210.0.0/24", "front"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let id = stdout(&o).trim().to_string();
    assert_eq!(id.len(), 64);
    let ls = stdout(&husk(&d, &["network", "ls"]));
    let row = ls
        .lines()
        .find(|l| l.contains("front"))
        .unwrap_or_else(|| panic!("{ls}"));
    assert!(
        row.starts_with(&id[..12]) && row.contains("10.210.0.0/24"),
        "{ls}"
    );
    assert!(ls.lines().any(|l| l.contains(" bridge ")), "{ls}");
    let o = husk(&d, &["network", "create", "front"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("already exists"), "{}", stderr(&o));

    // A published port shows in ps and answers on the host.
    let o = husk(
        &d,
        &[
            "run",
            "-d",
            "--name",
            "web",
            "--network",
            "front",
            "-p",
            "127.0.0.1:8088:80",
            IMAGE,
            "sh",
            "-c",
            "echo hi > /tmp/index.html; exec httpd -f -p 80 -h /tmp",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let ps = stdout(&husk(&d, &["ps"]));
    assert!(
        ps.contains("PORTS") && ps.contains("127.0.0.1:8088->80/tcp"),
        "{ps}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = d
            .ns()
            .sh("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 3 127.0.0.1 8088 | tail -n 1");
        if got == "hi" {
            break;
        }
        assert!(Instant::now() < deadline, "{got:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let inspect = stdout(&husk(&d, &["network", "inspect", "front"]));
    let v: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(v[0]["containers"][0]["name"], "web", "{v}");
    // In use: refused; then removed.
    let o = husk(&d, &["network", "rm", "front"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("web"), "{}", stderr(&o));
    assert_eq!(husk(&d, &["rm", "-f", "web"]).status.code(), Some(0));
    let o = husk(&d, &["network", "rm", "front"]);
    assert_eq!((stdout(&o), o.status.code()), ("front\n".into(), Some(0)));
    assert!(!stdout(&husk(&d, &["network", "ls"])).contains("front"));
}
