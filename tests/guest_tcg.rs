//! The guest side for real: the kernel from `resources/guest-kernel`, an
//! initramfs holding `husk-agent` as `/init`, and an ext4 root filesystem
//! that `husk image rootfs` built from a busybox image, booted under
//! QEMU's software emulation with vsock through `vhost-device-vsock`
//! (design.md: no Linux guest runs under KVM on these hosts). The
//! host-side client drives the agent through the hybrid vsock socket.
//!
//! Prints `skipped: <reason>` where QEMU, vhost-device-vsock or the
//! kernel is missing; `scripts/test.sh` installs them and sets
//! HUSK_REQUIRE_QEMU, which turns a skip into a failure.

#[path = "common/qemu.rs"]
mod qemu;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use husk::agent::client::{AgentClient, ClientError, ExitStatus};
use husk::agent::protocol::{ContainerSpec, ImageConfig, ProcessSpec};
use qemu::{QemuGuest, QemuSpec};
use serde_json::json;

const BOOT: Duration = Duration::from_secs(60);

struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let p = std::env::temp_dir().join(format!("husk-tcg-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The image's config, which the test passes on as the daemon would.
fn image_config() -> ImageConfig {
    ImageConfig {
        entrypoint: None,
        cmd: Some(vec!["sh".into()]),
        env: vec![
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            "FROM_IMAGE=busybox".into(),
        ],
        working_dir: Some("/home/app".into()),
        user: None,
    }
}

/// A `docker save` archive of a one-layer busybox image.
fn busybox_archive(dir: &Path) -> PathBuf {
    let mut layer = tar::Builder::new(Vec::new());
    let mut add = |path: &str, data: &[u8], mode: u32, kind: tar::EntryType, link: Option<&str>| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        h.set_mtime(1_700_000_000);
        if let Some(l) = link {
            h.set_link_name(l).unwrap();
        }
        layer.append_data(&mut h, path, data).unwrap();
    };
    let dir_entry = tar::EntryType::Directory;
    for d in ["bin/", "etc/", "home/", "home/app/", "tmp/"] {
        add(d, b"", 0o755, dir_entry, None);
    }
    add(
        "bin/busybox",
        &std::fs::read("/bin/busybox").unwrap(),
        0o755,
        tar::EntryType::Regular,
        None,
    );
    let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            add(
                &format!("bin/{applet}"),
                b"",
                0o777,
                tar::EntryType::Symlink,
                Some("busybox"),
            );
        }
    }
    add(
        "etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
        0o644,
        tar::EntryType::Regular,
        None,
    );
    add(
        "etc/group",
        b"root:x:0:\napp:x:1000:\n",
        0o644,
        tar::EntryType::Regular,
        None,
    );
    let layer = layer.into_inner().unwrap();
    let diff_id = husk::image::Digest::of(&layer).to_string();
    let c = image_config();
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": c.cmd, "Env": c.env, "WorkingDir": c.working_dir},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    })
    .to_string();
    let config_name = format!(
        "{}.json",
        &husk::image::Digest::of(config.as_bytes()).to_string()[7..]
    );
    let manifest =
        json!([{"Config": config_name, "RepoTags": ["tcg/busybox:1"], "Layers": ["l/layer.tar"]}]);
    let mut out = tar::Builder::new(Vec::new());
    for (name, data) in [
        ("l/layer.tar", layer),
        (config_name.as_str(), config.into_bytes()),
        ("manifest.json", manifest.to_string().into_bytes()),
    ] {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        out.append_data(&mut h, name, &data[..]).unwrap();
    }
    let path = dir.join("busybox.tar");
    std::fs::write(&path, out.into_inner().unwrap()).unwrap();
    path
}

fn husk(state: &Path, args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_husk"))
        .args(args)
        .arg("--state-dir")
        .arg(state)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "husk {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The root filesystem, through the image store as the daemon builds it.
fn rootfs(dir: &Path) -> PathBuf {
    let state = dir.join("state");
    let archive = busybox_archive(dir);
    husk(&state, &["image", "import", archive.to_str().unwrap()]);
    let image = dir.join("rootfs.ext4");
    husk(
        &state,
        &[
            "image",
            "rootfs",
            "tcg/busybox:1",
            "-o",
            image.to_str().unwrap(),
        ],
    );
    image
}

/// The agent, stripped (a debug build carries 100 MB of debug info the
/// guest would unpack into RAM), in an initramfs written by husk.
fn initramfs(dir: &Path) -> PathBuf {
    let agent = dir.join("husk-agent");
    // $HUSK_AGENT picks another build (a release one, for its figures).
    let built = std::env::var_os("HUSK_AGENT")
        .map(PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_husk-agent").into());
    let status = Command::new("objcopy")
        .arg("--strip-all")
        .arg(&built)
        .arg(&agent)
        .status()
        .unwrap();
    assert!(status.success(), "objcopy --strip-all");
    let out = dir.join("initramfs.cpio.gz");
    let bytes = std::fs::read(&agent).unwrap();
    let file = std::fs::File::create(&out).unwrap();
    husk::agent::initramfs::write_initramfs(&bytes, file).unwrap();
    out
}

struct Setup {
    kernel: PathBuf,
    initrd: PathBuf,
    rootfs: PathBuf,
    _dir: Scratch,
}

fn setup(name: &str) -> Option<Setup> {
    let kernel = match qemu::tools_available().and_then(|()| qemu::guest_kernel()) {
        Ok(k) => k,
        Err(reason) => {
            qemu::skip(&reason);
            return None;
        }
    };
    let dir = Scratch::new(name);
    Some(Setup {
        kernel,
        initrd: initramfs(&dir.0),
        rootfs: rootfs(&dir.0),
        _dir: dir,
    })
}

const APPEND: &str = "console=ttyS0 reboot=t panic=-1 quiet husk.root=/dev/vda";

fn boot(s: &Setup, drives: Vec<PathBuf>) -> QemuGuest {
    let mut spec = QemuSpec::new(&s.kernel, &s.initrd, APPEND);
    spec.drives = drives;
    spec.vsock_cid = Some(3);
    spec.mem_mib = 256;
    QemuGuest::start(spec).unwrap()
}

fn exited(code: i32) -> ExitStatus {
    ExitStatus {
        code: Some(code),
        signal: None,
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn with_cmd(args: &[&str]) -> ContainerSpec {
    ContainerSpec {
        image: image_config(),
        overrides: ImageConfig {
            cmd: Some(args.iter().map(|s| s.to_string()).collect()),
            ..Default::default()
        },
        hostname: Some("tcg".into()),
        ..Default::default()
    }
}

fn exec(args: &[&str]) -> ProcessSpec {
    ProcessSpec {
        args: args.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_container_runs_in_a_real_linux_guest() {
    let Some(s) = setup("run") else {
        return;
    };

    // The main process's output and exit; then the VM ends.
    let mut guest = boot(&s, vec![s.rootfs.clone()]);
    let client = AgentClient::connect_vsock(guest.vsock_uds(), BOOT)
        .await
        .unwrap();
    let ready = client.ready();
    let out = client
        .start(with_cmd(&["echo", "hello"]))
        .await
        .unwrap()
        .output()
        .await
        .unwrap();
    assert_eq!(
        (text(&out.stdout), out.status),
        ("hello\n".into(), exited(0))
    );
    guest.wait_exit(BOOT).unwrap();
    println!(
        "kernel boot to /init {} ms, agent setup {} us (under TCG)",
        ready.timings.boot_us / 1000,
        ready.timings.setup_us
    );

    // A container that stays: exit codes, env and workdir, exec beside
    // the main process, and a kill.
    let mut guest = boot(&s, vec![s.rootfs.clone()]);
    let client = AgentClient::connect_vsock(guest.vsock_uds(), BOOT)
        .await
        .unwrap();
    let mut spec = with_cmd(&["sleep", "600"]);
    spec.overrides.env = vec!["FROM_RUN=yes".into()];
    let main = client.start(spec).await.unwrap();
    println!(
        "agent start to the main process's exec: {} us",
        main.spawn_us()
    );
    let out = client.exec(exec(&["sh", "-c", "exit 7"])).await.unwrap();
    assert_eq!(out.output().await.unwrap().status, exited(7));
    let probe =
        "echo $FROM_IMAGE $FROM_RUN; pwd; hostname; cat /proc/1/comm; mount | grep -c ' / '";
    let out = client.exec(exec(&["sh", "-c", probe])).await.unwrap();
    let out = out.output().await.unwrap();
    assert_eq!(
        text(&out.stdout),
        "busybox yes\n/home/app\ntcg\ninit\n1\n",
        "{}",
        text(&out.stderr)
    );
    main.signal(libc::SIGKILL).await.unwrap();
    let out = main.output().await.unwrap();
    assert_eq!(out.status.signal, Some(libc::SIGKILL));
    guest.wait_exit(BOOT).unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn a_guest_without_its_disk_fails_loudly_and_ends() {
    let Some(s) = setup("nodisk") else {
        return;
    };
    let mut guest = boot(&s, vec![]);
    let err = AgentClient::connect_vsock(guest.vsock_uds(), BOOT)
        .await
        .err()
        .expect("the agent cannot be ready without its disk");
    assert!(
        matches!(&err, ClientError::GuestSetup(m) if m.contains("/dev/vda")),
        "{err}"
    );
    guest.wait_exit(BOOT).unwrap();
    let serial = guest.serial_so_far();
    assert!(serial.contains("husk-agent: error:"), "{serial}");
}
