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

#[path = "common/busybox_image.rs"]
mod busybox_image;
#[path = "common/qemu.rs"]
mod qemu;

use std::path::PathBuf;
use std::time::Duration;

use busybox_image::{image_config, initramfs, rootfs};
use husk::agent::client::{AgentClient, ClientError, ExitStatus};
use husk::agent::protocol::{ContainerSpec, ImageConfig, ProcessSpec};
use qemu::{QemuGuest, QemuSpec};

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

const APPEND: &str = "console=ttyS0 reboot=t panic=-1 quiet no_timer_check husk.root=/dev/vda";

fn boot(s: &Setup, drives: Vec<PathBuf>) -> QemuGuest {
    let mut spec = QemuSpec::new(&s.kernel, &s.initrd, APPEND);
    spec.drives = drives;
    spec.vsock_cid = Some(3);
    spec.mem_mib = 256;
    let mut guest = QemuGuest::start(spec).unwrap();
    // The first CONNECT waits for the agent's line, as the daemon's does
    // (one racing the guest's vsock driver start can wedge the backend).
    guest.expect_line("husk-agent: ", BOOT).unwrap();
    guest
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

/// Output that a fast writer produces arrives whole: the guest makes a
/// vsock packet of each write the agent makes, and vhost-device-vsock
/// drops a packet whose payload spans descriptors (before the agent kept
/// its writes to a page, 60 KB of output lost whole chunks in about half
/// the runs, and 3 MB almost always).
#[tokio::test(flavor = "current_thread")]
async fn a_large_fast_output_arrives_whole() {
    let Some(s) = setup("large") else {
        return;
    };
    let mut guest = boot(&s, vec![s.rootfs.clone()]);
    let client = AgentClient::connect_vsock(guest.vsock_uds(), BOOT)
        .await
        .unwrap();
    let p = client
        .start(with_cmd(&[
            "sh",
            "-c",
            "head -c 3000000 /dev/zero | tr '\\0' a",
        ]))
        .await
        .unwrap();
    // Lost output is never credited back, so the writer would wait on
    // its pipe forever: a deadline turns that into a failure.
    let out = tokio::time::timeout(BOOT, p.output())
        .await
        .expect("the output stalled: part of it never arrived")
        .unwrap();
    assert_eq!(out.status, exited(0));
    assert_eq!(out.stdout.len(), 3_000_000);
    assert!(out.stdout.iter().all(|&b| b == b'a'));
    guest.wait_exit(BOOT).unwrap();
}
