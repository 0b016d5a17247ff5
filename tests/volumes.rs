//! Data in and out of containers, end to end: named and anonymous
//! volumes, bind mounts over virtio-fs (virtiofsd), tmpfs mounts and
//! `husk cp`, through the CLI against a real `husk serve` whose
//! containers run in real Linux guests (software emulation here).
//!
//! Prints `skipped: <reason>` where QEMU, vhost-device-vsock, the guest
//! kernel or (for bind mounts) virtiofsd is missing (a failure under
//! HUSK_REQUIRE_QEMU).

#[path = "common/busybox_image.rs"]
mod busybox_image;
#[path = "common/daemon.rs"]
mod daemon;
#[path = "common/qemu.rs"]
mod qemu;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use daemon::{setup_with, Daemon};

const IMAGE: &str = busybox_image::IMAGE;

fn husk(d: &Daemon, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_husk"))
        .arg("--socket")
        .arg(&d.sock)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs `husk ARGS` and expects exit 0; returns stdout.
fn ok(d: &Daemon, args: &[&str]) -> String {
    let o = husk(d, args);
    assert_eq!(o.status.code(), Some(0), "husk {args:?}: {}", err(&o));
    out(&o)
}

/// Containers without a network: these tests need none.
fn setup(name: &str) -> Option<Daemon> {
    setup_with(name, &["--bridge", "none"])
}

#[test]
fn a_named_volume_outlives_its_containers_and_has_one_writer() {
    let Some(d) = setup("vol-named") else {
        return;
    };
    assert_eq!(
        ok(&d, &["volume", "create", "--size", "64m", "data"]),
        "data\n"
    );
    let ls = ok(&d, &["volume", "ls"]);
    assert!(ls.contains("data") && ls.contains("64MiB"), "{ls}");

    // Written by one container, removed with it; read by the next.
    ok(
        &d,
        &[
            "run",
            "--name",
            "w",
            "-v",
            "data:/data",
            IMAGE,
            "sh",
            "-c",
            "echo kept > /data/f; ls -a /data",
        ],
    );
    ok(&d, &["rm", "w"]);
    let got = ok(
        &d,
        &[
            "run",
            "--rm",
            "-v",
            "data:/data:ro",
            IMAGE,
            "cat",
            "/data/f",
        ],
    );
    assert_eq!(got, "kept\n");
    // Read-only means read-only.
    let o = husk(
        &d,
        &[
            "run",
            "--rm",
            "-v",
            "data:/data:ro",
            IMAGE,
            "sh",
            "-c",
            "echo x > /data/g",
        ],
    );
    assert_ne!(o.status.code(), Some(0));
    assert!(
        out(&o).contains("Read-only") || err(&o).contains("Read-only"),
        "{}{}",
        out(&o),
        err(&o)
    );

    // One writer at a time, and no removal while it is used.
    ok(
        &d,
        &[
            "run",
            "-d",
            "--name",
            "holder",
            "-v",
            "data:/data",
            IMAGE,
            "sleep",
            "600",
        ],
    );
    let o = husk(
        &d,
        &[
            "run",
            "--name",
            "refused1",
            "-v",
            "data:/data",
            IMAGE,
            "true",
        ],
    );
    assert_ne!(o.status.code(), Some(0));
    assert!(
        err(&o).contains("only one running container"),
        "{}",
        err(&o)
    );
    let o = husk(
        &d,
        &[
            "run",
            "--name",
            "refused2",
            "-v",
            "data:/data:ro",
            IMAGE,
            "true",
        ],
    );
    assert!(err(&o).contains("read-write by"), "{}", err(&o));
    let o = husk(&d, &["volume", "rm", "data"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains("in use by container"), "{}", err(&o));
    // A refused start leaves the container created, and it still
    // names the volume.
    ok(&d, &["rm", "-f", "holder", "refused1", "refused2"]);
    ok(&d, &["volume", "rm", "data"]);
    assert!(!ok(&d, &["volume", "ls", "-q"]).contains("data"));

    // Anonymous volumes: made for `-v /path`, gone with `rm -v`.
    ok(
        &d,
        &[
            "run",
            "--name",
            "anon",
            "-v",
            "/cache",
            IMAGE,
            "sh",
            "-c",
            "echo a > /cache/a",
        ],
    );
    let vols = ok(&d, &["volume", "ls", "-q"]);
    let anon: Vec<&str> = vols.lines().filter(|l| l.len() == 64).collect();
    assert_eq!(anon.len(), 1, "{vols}");
    ok(&d, &["rm", "-v", "anon"]);
    assert_eq!(ok(&d, &["volume", "ls", "-q"]), "");

    // tmpfs, with its size.
    let mounts = ok(
        &d,
        &[
            "run",
            "--rm",
            "--tmpfs",
            "/scratch:size=1m,noexec",
            IMAGE,
            "grep",
            " /scratch ",
            "/proc/mounts",
        ],
    );
    assert!(
        mounts.starts_with("tmpfs /scratch tmpfs")
            && mounts.contains("noexec")
            && mounts.contains("size=1024k"),
        "{mounts}"
    );
}

/// Whether virtiofsd is installed where the daemon looks (PATH, or
/// cargo's bin directory); says why not when it is not.
fn virtiofsd() -> Option<()> {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    let in_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("virtiofsd").is_file()))
        .unwrap_or(false);
    if in_path || home.is_some_and(|h| h.join("bin/virtiofsd").is_file()) {
        return Some(());
    }
    qemu::skip("virtiofsd is not installed (scripts/setup.sh container)");
    None
}

#[test]
fn a_bind_mount_shares_a_host_directory_both_ways() {
    if virtiofsd().is_none() {
        return;
    }
    let Some(d) = setup("vol-bind") else {
        return;
    };
    let src = d.dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("in.txt"), "from the host\n").unwrap();
    let bind = format!("{}:/src", src.display());
    let got = ok(
        &d,
        &[
            "run",
            "--rm",
            "-v",
            &bind,
            IMAGE,
            "sh",
            "-c",
            "cat /src/in.txt; echo from the guest > /src/out.txt",
        ],
    );
    assert_eq!(got, "from the host\n");
    assert_eq!(
        std::fs::read_to_string(src.join("out.txt")).unwrap(),
        "from the guest\n"
    );

    // Read-only is enforced by virtiofsd: even root in the guest, who
    // may remount the share read-write, cannot write.
    let ro = format!("{}:/src:ro", src.display());
    let o = husk(
        &d,
        &[
            "run",
            "--rm",
            "-v",
            &ro,
            IMAGE,
            "sh",
            "-c",
            "echo x > /src/a 2>&1; mount -o remount,rw /src && echo remounted; echo y > /src/b",
        ],
    );
    assert_ne!(o.status.code(), Some(0), "{}", out(&o));
    assert!(
        out(&o).contains("remounted"),
        "the guest remounts: {}{}",
        out(&o),
        err(&o)
    );
    assert!(err(&o).contains("Read-only file system"), "{}", err(&o));
    assert!(!src.join("a").exists() && !src.join("b").exists());

    // A file cannot be bind-mounted (virtio-fs shares directories).
    let file = format!("{}:/f", src.join("in.txt").display());
    let o = husk(&d, &["run", "--rm", "-v", &file, IMAGE, "true"]);
    assert_ne!(o.status.code(), Some(0));
    assert!(err(&o).contains("is a file"), "{}", err(&o));
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

#[test]
fn husk_cp_round_trips_a_tree_with_running_and_stopped_containers() {
    let Some(d) = setup("vol-cp") else {
        return;
    };
    // A tree with modes, a symlink and an empty directory.
    let tree = d.dir.join("tree");
    std::fs::create_dir_all(tree.join("sub/empty")).unwrap();
    std::fs::write(tree.join("run.sh"), "#!/bin/sh\necho ran\n").unwrap();
    std::fs::set_permissions(tree.join("run.sh"), std::fs::Permissions::from_mode(0o750)).unwrap();
    std::fs::write(tree.join("sub/secret"), "s3cret").unwrap();
    std::fs::set_permissions(
        tree.join("sub/secret"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::os::unix::fs::symlink("sub/secret", tree.join("link")).unwrap();
    std::os::unix::fs::chown(tree.join("sub/secret"), Some(1234), Some(4321)).unwrap();

    // Into a running container, and used there.
    ok(&d, &["run", "-d", "--name", "box", IMAGE, "sleep", "600"]);
    ok(&d, &["cp", tree.to_str().unwrap(), "box:/tmp/"]);
    let seen = ok(
        &d,
        &[
            "exec",
            "box",
            "sh",
            "-c",
            "/tmp/tree/run.sh; stat -c '%a %u %g' /tmp/tree/sub/secret; readlink /tmp/tree/link",
        ],
    );
    assert_eq!(seen, "ran\n600 1234 4321\nsub/secret\n");

    // Back out under a new name.
    let back = d.dir.join("back");
    ok(&d, &["cp", "box:/tmp/tree", back.to_str().unwrap()]);
    assert_eq!(
        std::fs::read_to_string(back.join("sub/secret")).unwrap(),
        "s3cret"
    );
    assert_eq!(mode(&back.join("run.sh")), 0o750);
    assert_eq!(mode(&back.join("sub/secret")), 0o600);
    let meta = std::fs::metadata(back.join("sub/secret")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (1234, 4321));
    assert_eq!(
        std::fs::read_link(back.join("link")).unwrap(),
        Path::new("sub/secret")
    );
    assert!(back.join("sub/empty").is_dir());

    // A stopped container's files: copied in, and out again.
    ok(&d, &["rm", "-f", "box"]);
    ok(
        &d,
        &["create", "--name", "later", IMAGE, "cat", "/home/app/note"],
    );
    let note = d.dir.join("note");
    std::fs::write(&note, "written before the start\n").unwrap();
    ok(&d, &["cp", note.to_str().unwrap(), "later:/home/app/note"]);
    let copied = d.dir.join("copied");
    ok(
        &d,
        &["cp", "later:/home/app/note", copied.to_str().unwrap()],
    );
    assert_eq!(
        std::fs::read_to_string(&copied).unwrap(),
        "written before the start\n"
    );
    ok(&d, &["start", "later"]);
    assert_eq!(ok(&d, &["wait", "later"]), "0\n");
    assert_eq!(ok(&d, &["logs", "later"]), "written before the start\n");

    // A path that is not there.
    let o = husk(
        &d,
        &["cp", "later:/nope", d.dir.join("x").to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(1), "{}{}", out(&o), err(&o));
    assert!(err(&o).contains("no such file"), "{}", err(&o));
}

/// A tar with one entry, its header written by hand so that any name
/// (even `../x`) goes in as given.
fn tar_entry(out: &mut Vec<u8>, name: &str, kind: u8, link: &str, data: &[u8]) {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..107].copy_from_slice(b"0000644");
    h[108..115].copy_from_slice(b"0000000");
    h[116..123].copy_from_slice(b"0000000");
    h[124..135].copy_from_slice(format!("{:011o}", data.len()).as_bytes());
    h[136..147].copy_from_slice(b"00000000000");
    h[156] = kind;
    h[157..157 + link.len()].copy_from_slice(link.as_bytes());
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

/// `PUT /v1/containers/{id}/archive?path=...` with a raw tar body.
fn put_archive(d: &Daemon, id: &str, path: &str, tar: &[u8]) -> (u16, String) {
    let tar_path = d.dir.join("body.tar");
    std::fs::write(&tar_path, tar).unwrap();
    let o = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/stderr",
            "-w",
            "%{http_code}",
            "--unix-socket",
        ])
        .arg(&d.sock)
        .args(["-X", "PUT", "--data-binary"])
        .arg(format!("@{}", tar_path.display()))
        .arg(format!(
            "http://localhost/v1/containers/{id}/archive?path={path}"
        ))
        .output()
        .unwrap();
    (out(&o).trim().parse().unwrap_or(0), err(&o))
}

#[test]
fn archives_that_escape_are_refused() {
    if Command::new("curl").arg("--version").output().is_err() {
        qemu::skip("curl is not installed");
        return;
    }
    let Some(d) = setup("vol-escape") else {
        return;
    };
    ok(&d, &["run", "-d", "--name", "box", IMAGE, "sleep", "600"]);
    ok(&d, &["exec", "box", "mkdir", "-p", "/srv/in"]);
    let check = |tar: Vec<u8>, why: &str| {
        let (code, body) = put_archive(&d, "box", "/srv/in", &tar);
        assert_eq!(code, 400, "{why}: {body}");
        let outside = ok(
            &d,
            &[
                "exec",
                "box",
                "sh",
                "-c",
                "ls /srv /etc | grep -c pwned || true",
            ],
        );
        assert_eq!(outside.trim(), "0", "{why}: something was written outside");
    };
    let mut t = Vec::new();
    tar_entry(&mut t, "../pwned", b'0', "", b"x");
    t.extend_from_slice(&[0; 1024]);
    check(t, "a .. entry");
    let mut t = Vec::new();
    tar_entry(&mut t, "/etc/pwned", b'0', "", b"x");
    t.extend_from_slice(&[0; 1024]);
    check(t, "an absolute entry");
    let mut t = Vec::new();
    tar_entry(&mut t, "evil", b'2', "/etc", b"");
    tar_entry(&mut t, "evil/pwned", b'0', "", b"x");
    t.extend_from_slice(&[0; 1024]);
    check(t, "a path through an absolute symlink");
    let mut t = Vec::new();
    tar_entry(&mut t, "up", b'2', "../..", b"");
    tar_entry(&mut t, "up/srv/pwned", b'0', "", b"x");
    t.extend_from_slice(&[0; 1024]);
    check(t, "a path through a relative symlink");
    // A good one still lands.
    let mut t = Vec::new();
    tar_entry(&mut t, "fine", b'0', "", b"ok");
    t.extend_from_slice(&[0; 1024]);
    let (code, body) = put_archive(&d, "box", "/srv/in", &t);
    assert_eq!(code, 200, "{body}");
    assert_eq!(ok(&d, &["exec", "box", "cat", "/srv/in/fine"]), "ok");
}

#[test]
fn the_root_filesystem_has_room_to_write_and_can_be_sized() {
    let Some(d) = setup("vol-rootfs") else {
        return;
    };
    // 10 GiB by default (sparse on the host): far more than the image,
    // so a container can write what it needs, as under Docker.
    let df = ok(&d, &["run", "--rm", IMAGE, "df", "-k", "/"]);
    let total = |df: &str| -> u64 {
        let line = df.lines().nth(1).unwrap_or_default();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    let kib = total(&df);
    assert!((9 << 20..=10 << 20).contains(&kib), "{df}");
    // A write bigger than the image's own headroom, and the host file
    // stays sparse: it holds what was written, not the whole size.
    ok(
        &d,
        &[
            "run",
            "--name",
            "big",
            IMAGE,
            "sh",
            "-c",
            "dd if=/dev/zero of=/big bs=1M count=48 && sync",
        ],
    );
    let view: serde_json::Value = serde_json::from_str(&ok(&d, &["inspect", "big"])).unwrap();
    let id = view[0]["id"].as_str().unwrap().to_string();
    let disk = d.state.join("containers").join(id).join("rootfs.ext4");
    let meta = std::fs::metadata(&disk).unwrap();
    assert_eq!(meta.len(), 10 << 30);
    let used = meta.blocks() * 512;
    assert!((48 << 20..1 << 30).contains(&used), "{used} bytes used");
    ok(&d, &["rm", "big"]);

    // --storage-opt size= sets it.
    let df = ok(
        &d,
        &[
            "run",
            "--rm",
            "--storage-opt",
            "size=256m",
            IMAGE,
            "df",
            "-k",
            "/",
        ],
    );
    let kib = total(&df);
    assert!((200 << 10..=256 << 10).contains(&kib), "{df}");
    let o = husk(
        &d,
        &["run", "--rm", "--storage-opt", "size=1m", IMAGE, "true"],
    );
    assert_eq!(o.status.code(), Some(125), "{}", err(&o));
    assert!(err(&o).contains("rootfs_size must be"), "{}", err(&o));
}
