//! The daemon's VM backends, launching real VMs:
//! - `kvm`: husk-vmm booting the probe guest from the config the backend
//!   wrote, checked through the per-VM API and the console; a VM that
//!   outlives the process that launched it is found and killed from its
//!   handle alone, as a restarted daemon does.
//! - `tcg`: QEMU with vhost-device-vsock booting the guest kernel, the
//!   agent's initramfs and a busybox rootfs; a container runs through the
//!   agent, and every process of the VM ends with the guest.
//!
//! Prints `skipped: <reason>` where /dev/kvm, QEMU, vhost-device-vsock or
//! the guest kernel is missing; HUSK_REQUIRE_QEMU turns a QEMU skip into a
//! failure.

#[path = "common/busybox_image.rs"]
mod busybox_image;
mod common;
#[path = "common/qemu.rs"]
mod qemu;
#[path = "common/tap.rs"]
mod tap;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::status_field;
use husk::agent::client::{AgentClient, ExitStatus};
use husk::agent::protocol::{ContainerSpec, ImageConfig};
use husk::daemon::backend::{self, BackendKind, VmHandle, VmSpec};
use husk::vmm::client;

const BOOT: Duration = Duration::from_secs(60);

struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let p = std::env::temp_dir().join(format!("husk-backend-{name}-{}", std::process::id()));
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

/// Kills the VM however the test ends.
struct Guard(VmHandle);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.cleanup();
    }
}

fn skip(reason: &str) {
    let _ = writeln!(std::io::stderr(), "skipped: {reason}");
}

/// Waits for a console line containing `text`; returns the line.
fn console_line(vm: &VmHandle, text: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let console = std::fs::read_to_string(&vm.console_log).unwrap_or_default();
        // Complete lines only: the last one may still be being written.
        let complete = &console[..console.rfind('\n').map_or(0, |i| i + 1)];
        if let Some(line) = complete.lines().find(|l| l.contains(text)) {
            return line.trim_end_matches('\r').to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no console line with {text:?}; console:\n{console}\nvmm.log:\n{}",
            vm.vmm_log_tail()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The probe guest's files in `dir`: the kernel, an "initramfs" the
/// probe reads the head of, and a 1 MiB disk.
fn probe_files(dir: &Path) -> VmSpec {
    let kernel = dir.join("probe.elf");
    husk::probe::write_probe(&kernel).unwrap();
    let initramfs = dir.join("initrd.img");
    std::fs::write(&initramfs, b"HUSK-INITRD-HEAD and the rest").unwrap();
    let rootfs = dir.join("rootfs.img");
    std::fs::write(&rootfs, vec![0u8; 1 << 20]).unwrap();
    VmSpec {
        dir: dir.join("c1"),
        kernel,
        initramfs,
        rootfs: Some(rootfs),
        vcpus: 1,
        memory_mib: 128,
        boot_args: "probe=cmdline,initrd,wait-cad".into(),
        jail: None,
        net: None,
        drives: vec![],
        shares: vec![],
    }
}

#[test]
fn kvm_boots_the_vm_it_was_asked_for() {
    if let Err(why) = backend::available(BackendKind::Kvm) {
        return skip(&why);
    }
    // The test binary finds the husk-vmm cargo built beside it.
    assert_eq!(
        backend::kvm::vmm_binary().unwrap().canonicalize().unwrap(),
        Path::new(env!("CARGO_BIN_EXE_husk-vmm"))
            .canonicalize()
            .unwrap()
    );
    let dir = Scratch::new("kvm");
    let spec = probe_files(&dir.0);
    let t = Instant::now();
    let vm = Guard(backend::launch(BackendKind::Kvm, &spec).unwrap());
    println!("kvm: launch took {:?}", t.elapsed());
    let vm = &vm.0;
    assert_eq!(vm.kind, BackendKind::Kvm);
    assert_eq!(vm.procs.len(), 1);
    let api = vm.api_sock.clone().unwrap();
    assert_eq!(api, spec.dir.join("vmm.sock"));
    assert_eq!(vm.vsock_uds, spec.dir.join("vsock.sock"));
    assert_eq!(vm.console_log, spec.dir.join("console.log"));
    assert!(vm.is_running());

    // What the VMM runs is what the backend was asked for.
    let cfg = client::request(&api, "GET", "/vm/config", None).unwrap();
    assert_eq!(cfg.status, 200, "{}", cfg.body);
    let cfg = cfg.json();
    let boot = &cfg["boot-source"];
    assert_eq!(boot["kernel_image_path"], spec.kernel.to_str().unwrap());
    assert_eq!(boot["initrd_path"], spec.initramfs.to_str().unwrap());
    let args = boot["boot_args"].as_str().unwrap();
    assert!(
        args.starts_with(
            "console=ttyS0 reboot=k panic=-1 quiet no_timer_check husk.root=/dev/vda "
        ) && args.ends_with(" probe=cmdline,initrd,wait-cad"),
        "{args}"
    );
    assert_eq!(cfg["machine-config"]["vcpu_count"], 1);
    assert_eq!(cfg["machine-config"]["mem_size_mib"], 128);
    let drives = cfg["drives"].as_array().unwrap();
    assert_eq!(drives.len(), 1, "{cfg}");
    assert_eq!(drives[0]["drive_id"], "rootfs");
    assert_eq!(
        drives[0]["path_on_host"],
        spec.rootfs.as_ref().unwrap().to_str().unwrap()
    );
    assert_eq!(drives[0]["is_root_device"], false);
    assert_eq!(drives[0]["is_read_only"], false);
    assert_eq!(cfg["vsock"]["guest_cid"], 3);
    assert_eq!(cfg["vsock"]["uds_path"], vm.vsock_uds.to_str().unwrap());
    let info = client::request(&api, "GET", "/", None).unwrap().json();
    assert_eq!(info["id"], "c1", "{info}");

    // The guest got them, and its console reaches console.log.
    console_line(vm, "PROBE BOOT", Duration::from_secs(10));
    let cmdline = console_line(vm, "PROBE cmdline", Duration::from_secs(10));
    assert!(cmdline.contains(args), "{cmdline}");
    assert!(
        cmdline.contains(" virtio_mmio.device="),
        "the drive, the vsock and the rng are on the bus: {cmdline}"
    );
    let initrd = console_line(vm, "PROBE initrd", Duration::from_secs(10));
    assert!(initrd.contains("head=HUSK-INITRD-HEA"), "{initrd}");

    vm.kill();
    assert!(!vm.is_running());
    assert!(
        !Path::new(&format!("/proc/{}", vm.procs[0].pid)).exists(),
        "reaped"
    );
    vm.cleanup();
    assert!(!api.exists() && !vm.vsock_uds.exists());

    // Launched again in the same directory, the guest ends its VM itself.
    let vm = Guard(backend::launch(BackendKind::Kvm, &spec).unwrap());
    let vm = &vm.0;
    console_line(vm, "PROBE initrd", Duration::from_secs(10));
    let api = vm.api_sock.clone().unwrap();
    let r = client::request(
        &api,
        "PUT",
        "/actions",
        Some(r#"{"action_type": "SendCtrlAltDel"}"#),
    )
    .unwrap();
    assert_eq!(r.status, 204, "{}", r.body);
    assert!(vm.wait_exit(Duration::from_secs(10)));
    assert!(!vm.is_running());
    console_line(vm, "PROBE wait-cad OK", Duration::from_secs(1));
}

#[test]
fn kvm_vms_are_jailed_each_as_its_own_uid_and_cleaned_up() {
    if let Err(why) = backend::available(BackendKind::Kvm) {
        return skip(&why);
    }
    // SAFETY: geteuid has no arguments and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return skip("jailing needs root");
    }
    let dir = Scratch::new("jail");
    let settings = backend::jail::JailSettings {
        base: dir.0.join("jail"),
        uids: (250_000, 250_009),
        claims: dir.0.join("uids"),
        jailer: PathBuf::from(env!("CARGO_BIN_EXE_husk-jailer")),
    };
    let mut spec = probe_files(&dir.0);
    spec.jail = Some(settings.clone());
    // Its TAP, made root's (as the daemon makes it): the launch hands it
    // to the VM's uid, and the VMM opens it as that uid.
    let Some(tap) = tap::TestTap::create("jn", None) else {
        return;
    };
    spec.net = Some(backend::VmNet {
        tap: tap.name.clone(),
        mac: "02:42:ac:14:00:02".into(),
        mtu: 1500,
    });
    let vm = Guard(backend::launch(BackendKind::Kvm, &spec).unwrap());
    let vm = &vm.0;
    let record = vm.jail.clone().expect("a jailed handle");
    assert_eq!(record.uid, 250_000);
    assert_eq!(vm.procs.len(), 2, "the jailer, then the VMM");
    let vmm = vm.procs[1].pid;
    let id_dir = record.id_dir.clone().expect("a jail directory");
    let root = id_dir.join("root");
    assert_eq!(
        vm.api_sock.as_deref(),
        Some(root.join("run/vmm.sock").as_path())
    );
    assert_eq!(vm.vsock_uds, root.join("run/vsock.sock"));
    assert_eq!(vm.console_log, spec.dir.join("console.log"));

    // The VMM: its own uid, no capabilities, filtered, in its chroot.
    assert_eq!(status_field(vmm, "Uid"), "250000\t250000\t250000\t250000");
    assert_eq!(status_field(vmm, "Gid"), "250000\t250000\t250000\t250000");
    for cap in ["CapEff", "CapPrm", "CapBnd"] {
        assert_eq!(status_field(vmm, cap), "0000000000000000", "{cap}");
    }
    assert_eq!(status_field(vmm, "NoNewPrivs"), "1");
    assert_eq!(status_field(vmm, "Seccomp"), "2");
    let seen: Vec<String> = std::fs::read_dir(format!("/proc/{vmm}/root"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !seen.iter().any(|n| n == "etc" || n == "tmp" || n == "home"),
        "{seen:?}"
    );
    for f in ["vmlinux", "initramfs", "rootfs", "vm.json", "husk-vmm"] {
        assert!(seen.iter().any(|n| n == f), "{f} not in {seen:?}");
    }
    // The rootfs is the VM's to write.
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(spec.rootfs.as_ref().unwrap())
            .unwrap()
            .uid(),
        250_000
    );

    // Its cgroup, with the limits for its shape.
    assert!(!record.cgroups.is_empty());
    let cgroups = std::fs::read_to_string(format!("/proc/{vmm}/cgroup")).unwrap();
    assert!(cgroups.contains("/husk/c1"), "{cgroups}");
    let limit = (128u64 + backend::jail::MEMORY_OVERHEAD_MIB) << 20;
    let mem = record
        .cgroups
        .iter()
        .find_map(|d| {
            ["memory.limit_in_bytes", "memory.max"]
                .iter()
                .find_map(|f| std::fs::read_to_string(d.join(f)).ok())
        })
        .expect("a memory cgroup");
    assert_eq!(mem.trim(), limit.to_string());

    // The VMM runs what it was given, by its paths in the jail.
    let api = vm.api_sock.clone().unwrap();
    let cfg = client::request(&api, "GET", "/vm/config", None)
        .unwrap()
        .json();
    assert_eq!(cfg["boot-source"]["kernel_image_path"], "/vmlinux");
    assert_eq!(cfg["boot-source"]["initrd_path"], "/initramfs");
    assert_eq!(cfg["drives"][0]["path_on_host"], "/rootfs");
    assert_eq!(cfg["vsock"]["uds_path"], "/run/vsock.sock");
    assert_eq!(
        cfg["network-interfaces"][0]["host_dev_name"],
        tap.name.as_str()
    );
    assert_eq!(
        cfg["network-interfaces"][0]["guest_mac"],
        "02:42:ac:14:00:02"
    );
    let owner = std::fs::read_to_string(format!("/sys/class/net/{}/owner", tap.name)).unwrap();
    assert_eq!(owner.trim(), "250000");
    let initrd = console_line(vm, "PROBE initrd", Duration::from_secs(10));
    assert!(initrd.contains("head=HUSK-INITRD-HEA"), "{initrd}");

    // A second VM gets the next uid.
    std::fs::create_dir_all(dir.0.join("two")).unwrap();
    let mut spec2 = probe_files(&dir.0.join("two"));
    spec2.dir = dir.0.join("c2");
    spec2.jail = Some(settings);
    let vm2 = Guard(backend::launch(BackendKind::Kvm, &spec2).unwrap());
    assert_eq!(vm2.0.jail.as_ref().unwrap().uid, 250_001);
    assert_eq!(
        status_field(vm2.0.procs[1].pid, "Uid").split('\t').next(),
        Some("250001")
    );

    // Cleaned up: processes, jail, cgroups, the uid's claim.
    vm.cleanup();
    assert!(!vm.is_running());
    assert!(!Path::new(&format!("/proc/{vmm}")).exists());
    assert!(!id_dir.exists());
    for d in &record.cgroups {
        assert!(!d.exists(), "{} left behind", d.display());
    }
    assert!(!record.claim.exists());
}

/// Launches `spec` on kvm; a failure shows the VMM's and virtiofsd's logs.
fn launch_or_explain(spec: &VmSpec) -> VmHandle {
    backend::launch(BackendKind::Kvm, spec).unwrap_or_else(|e| {
        let logs: Vec<String> = std::fs::read_dir(&spec.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|f| f.file_name().to_string_lossy().ends_with(".log"))
            .map(|f| {
                let text = std::fs::read_to_string(f.path()).unwrap_or_default();
                format!("{}:\n{text}", f.file_name().to_string_lossy())
            })
            .collect();
        panic!("launch: {e}\n{}", logs.join("\n"))
    })
}

/// A host directory for a bind mount, holding `hello.txt`.
fn shared_dir(parent: &Path, name: &str) -> PathBuf {
    let d = parent.join(name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("hello.txt"), "HUSK-KVM-SHARE").unwrap();
    d
}

#[test]
fn kvm_bind_mounts_reach_the_guest_through_virtiofsd_jailed_or_not() {
    if let Err(why) = backend::available(BackendKind::Kvm) {
        return skip(&why);
    }
    // SAFETY: geteuid has no arguments and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return skip("jailing (and virtiofsd's sandbox) needs root");
    }
    if let Err(e) = backend::virtiofs::virtiofsd() {
        return skip(&e.to_string());
    }
    let dir = Scratch::new("share");
    // Jailed, read-write: the socket is made by the daemon, owned by the
    // VM's uid, bound into the jail's /run; the probe's FUSE requests
    // read the host's file and create one.
    let rw = shared_dir(&dir.0, "rw");
    let mut spec = probe_files(&dir.0);
    // Its own instance id (and so cgroup), apart from the other jailed
    // test's `c1` running beside it.
    spec.dir = dir.0.join("fs1");
    spec.boot_args = "probe=fs,wait-cad".into();
    spec.shares = vec![backend::VmShare {
        tag: "fs0".into(),
        dir: rw.clone(),
        read_only: false,
    }];
    spec.jail = Some(backend::jail::JailSettings {
        base: dir.0.join("jail"),
        uids: (250_010, 250_019),
        claims: dir.0.join("uids"),
        jailer: PathBuf::from(env!("CARGO_BIN_EXE_husk-jailer")),
    });
    let vm = Guard(launch_or_explain(&spec));
    let vm = &vm.0;
    let line = console_line(vm, "PROBE fs ", BOOT);
    assert!(
        line.starts_with("PROBE fs OK tag=fs0 queues=1 init=7.")
            && line.ends_with(" read=HUSK-KVM-SHARE create=0 wrote=25"),
        "{line}"
    );
    assert_eq!(
        std::fs::read_to_string(rw.join("guest.txt")).unwrap(),
        "HUSK-VIRTIOFS-GUEST-WRITE"
    );
    let cfg = client::request(vm.api_sock.as_ref().unwrap(), "GET", "/vm/config", None)
        .unwrap()
        .json();
    assert_eq!(cfg["fs-devices"][0]["socket_path"], "/run/fs-fs0.sock");
    use std::os::unix::fs::MetadataExt;
    let sock = backend::virtiofs::socket_path(&spec.dir, "fs0");
    assert_eq!(std::fs::metadata(&sock).unwrap().uid(), 250_010);
    // virtiofsd is the VM's: cleaned up with it.
    assert_eq!(vm.procs.len(), 3, "the jailer, the VMM, virtiofsd");
    let fsd = vm.procs[2].pid;
    vm.cleanup();
    assert!(!Path::new(&format!("/proc/{fsd}")).exists());
    assert!(!vm.jail.as_ref().unwrap().claim.exists());

    // Not jailed, read-only: virtiofsd itself refuses the create.
    let ro = shared_dir(&dir.0, "ro");
    std::fs::create_dir_all(dir.0.join("two")).unwrap();
    let mut spec = probe_files(&dir.0.join("two"));
    spec.dir = dir.0.join("fs2");
    spec.boot_args = "probe=fs,wait-cad".into();
    spec.shares = vec![backend::VmShare {
        tag: "fs0".into(),
        dir: ro.clone(),
        read_only: true,
    }];
    let vm = Guard(launch_or_explain(&spec));
    let line = console_line(&vm.0, "PROBE fs ", BOOT);
    assert!(line.ends_with(" read=HUSK-KVM-SHARE create=-30"), "{line}");
    assert!(!ro.join("guest.txt").exists());
}

/// The environment variable that turns `launch_and_leave` into a helper.
const HELPER_ENV: &str = "HUSK_BACKEND_TEST_LAUNCH_IN";

/// Not a test by itself: run by `a_vm_outlives_its_launcher` in a child
/// process, it launches a VM, prints its handle and exits, leaving the
/// VM behind as a killed daemon does.
#[test]
fn launch_and_leave() {
    let Some(dir) = std::env::var_os(HELPER_ENV) else {
        return;
    };
    let spec = probe_files(Path::new(&dir));
    let vm = backend::launch(BackendKind::Kvm, &spec).unwrap();
    println!("HANDLE {}", serde_json::to_string(&vm).unwrap());
}

#[test]
fn a_vm_outlives_its_launcher() {
    if let Err(why) = backend::available(BackendKind::Kvm) {
        return skip(&why);
    }
    let dir = Scratch::new("orphan");
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "launch_and_leave",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HELPER_ENV, &dir.0)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The harness prints `test launch_and_leave ... ` before the handle.
    let json = stdout
        .lines()
        .find_map(|l| l.split_once("HANDLE ").map(|(_, h)| h))
        .unwrap_or_else(|| panic!("no handle in {stdout}"));
    // As a restarted daemon reads it from the container's record.
    let vm: VmHandle = serde_json::from_str(json).unwrap();
    let vm = Guard(vm);
    let vm = &vm.0;
    // Not our child: its liveness comes from /proc.
    assert!(vm.is_running());
    console_line(vm, "PROBE BOOT", Duration::from_secs(10));
    let api = vm.api_sock.clone().unwrap();
    let info = client::request(&api, "GET", "/", None).unwrap().json();
    assert_eq!(info["state"], "Running", "{info}");
    // A handle whose start time does not match is another process.
    let mut stale = vm.clone();
    stale.procs[0].start_time += 1;
    assert!(!stale.is_running());
    stale.kill();
    assert!(vm.is_running(), "a stale handle must not kill the VM");
    vm.kill();
    assert!(!vm.is_running());
}

struct Guest {
    kernel: PathBuf,
    initramfs: PathBuf,
    rootfs: PathBuf,
    dir: Scratch,
}

/// The guest kernel, the agent's initramfs and a busybox rootfs, or
/// `None` (after a skip) where QEMU's tools or the kernel are missing.
fn tcg_guest(name: &str) -> Option<Guest> {
    let kernel = match backend::available(BackendKind::Tcg).and_then(|()| qemu::guest_kernel()) {
        Ok(k) => k,
        Err(reason) => {
            qemu::skip(&reason);
            return None;
        }
    };
    let dir = Scratch::new(name);
    Some(Guest {
        kernel,
        initramfs: busybox_image::initramfs(&dir.0),
        rootfs: busybox_image::rootfs(&dir.0),
        dir,
    })
}

impl Guest {
    fn spec(&self) -> VmSpec {
        VmSpec {
            dir: self.dir.0.join("c1"),
            kernel: self.kernel.clone(),
            initramfs: self.initramfs.clone(),
            rootfs: Some(self.rootfs.clone()),
            vcpus: 1,
            memory_mib: 256,
            boot_args: String::new(),
            jail: None,
            net: None,
            drives: vec![],
            shares: vec![],
        }
    }
}

/// The busybox image running `args`.
fn with_cmd(args: &[&str]) -> ContainerSpec {
    ContainerSpec {
        image: busybox_image::image_config(),
        overrides: ImageConfig {
            cmd: Some(args.iter().map(|s| s.to_string()).collect()),
            ..Default::default()
        },
        hostname: Some("c1".into()),
        ..Default::default()
    }
}

#[tokio::test(flavor = "current_thread")]
async fn tcg_runs_a_container_and_ends_with_it() {
    let Some(g) = tcg_guest("tcg") else {
        return;
    };
    let mut spec = g.spec();
    // As the daemon runs it (as root): QEMU becomes a uid of its own.
    // SAFETY: geteuid has no arguments and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        spec.jail = Some(backend::jail::JailSettings {
            base: g.dir.0.join("jail"),
            uids: (251_000, 251_009),
            claims: g.dir.0.join("uids"),
            jailer: PathBuf::from(env!("CARGO_BIN_EXE_husk-jailer")),
        });
    }
    let t = Instant::now();
    let vm = Guard(backend::launch(BackendKind::Tcg, &spec).unwrap());
    let launched = t.elapsed();
    let vm = &vm.0;
    assert_eq!(vm.kind, BackendKind::Tcg);
    // QEMU's own seccomp sandbox is always on; it drops to its uid
    // (once its files are open) before the guest runs.
    let qemu = vm.procs[0].pid;
    let started = Instant::now();
    while status_field(qemu, "Seccomp") != "2" && started.elapsed() < BOOT {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(status_field(qemu, "Seccomp"), "2");
    // And nothing of its launcher's environment.
    let environ = std::fs::read(format!("/proc/{qemu}/environ")).unwrap();
    assert!(environ.is_empty(), "{}", String::from_utf8_lossy(&environ));
    if root {
        let claim = vm.jail.as_ref().expect("a uid of its own").claim.clone();
        assert!(claim.exists());
        while !status_field(qemu, "Uid").starts_with("251000") && started.elapsed() < BOOT {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(status_field(qemu, "Uid"), "251000\t251000\t251000\t251000");
        assert_eq!(status_field(qemu, "CapEff"), "0000000000000000");
        // Its vsock backend too: QEMU's death signal must reach it.
        let vhost = vm.procs[1].pid;
        assert_eq!(status_field(vhost, "Uid"), "251000\t251000\t251000\t251000");
        assert_eq!(status_field(vhost, "CapEff"), "0000000000000000");
    } else {
        skip("not root: QEMU keeps this user's uid");
    }
    assert_eq!(vm.procs.len(), 2, "qemu, then vhost-device-vsock");
    assert_eq!(vm.api_sock, None);
    if root {
        // The VM's uid owns only its sockets' directory; the run
        // directory, whose logs the daemon reads as root, stays root's.
        use std::os::unix::fs::MetadataExt;
        assert_eq!(vm.vsock_uds, spec.dir.join("vsock/vsock.sock"));
        assert_eq!(std::fs::metadata(&spec.dir).unwrap().uid(), 0);
        assert_eq!(
            std::fs::metadata(spec.dir.join("vsock")).unwrap().uid(),
            251_000
        );
    } else {
        assert_eq!(vm.vsock_uds, spec.dir.join("vsock.sock"));
    }
    let comm = |pid: i32| std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    assert_eq!(comm(vm.procs[0].pid).trim(), "qemu-system-x86");
    assert!(comm(vm.procs[1].pid).starts_with("vhost-device"));
    // SAFETY: getsid takes a pid.
    let (s0, s1) = unsafe { (libc::getsid(vm.procs[0].pid), libc::getsid(vm.procs[1].pid)) };
    assert_eq!(
        (s0, s1),
        (vm.procs[0].pid, vm.procs[0].pid),
        "one session, QEMU's"
    );
    assert!(vm.is_running());

    vm.agent_started(BOOT).await.unwrap();
    let client = match AgentClient::connect_vsock(&vm.vsock_uds, BOOT).await {
        Ok(c) => c,
        Err(e) => panic!(
            "{e}\nconsole:\n{}\nvmm.log:\n{}",
            std::fs::read_to_string(&vm.console_log).unwrap_or_default(),
            vm.vmm_log_tail()
        ),
    };
    let ready = t.elapsed();
    let out = client
        .start(with_cmd(&["echo", "hi"]))
        .await
        .unwrap()
        .output()
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
    assert_eq!(
        out.status,
        ExitStatus {
            code: Some(0),
            signal: None
        }
    );
    let output = t.elapsed();

    // The main process's exit ends the VM: QEMU exits as the guest
    // reboots, and vhost-device-vsock goes with it.
    assert!(vm.wait_exit(BOOT), "QEMU still runs");
    let ended = t.elapsed();
    assert!(!vm.is_running());
    for p in &vm.procs {
        assert!(!p.is_alive(), "{p:?} still runs");
    }
    println!(
        "tcg: launch {launched:?}, agent ready {ready:?}, `echo hi` done {output:?}, \
         VM gone {ended:?} (boot to /init {} ms as the agent measured)",
        client.ready().timings.boot_us / 1000
    );
    let console = std::fs::read_to_string(&vm.console_log).unwrap();
    assert!(console.contains("husk-agent: ready"), "{console}");
    vm.cleanup();
    for s in ["vsock.sock", "vhost.sock"] {
        assert!(!spec.dir.join(s).exists(), "{s} left behind");
    }
}

#[test]
fn tcg_vsock_backend_dies_with_qemu() {
    let Some(g) = tcg_guest("tcg-kill") else {
        return;
    };
    let spec = g.spec();
    let vm = Guard(backend::launch(BackendKind::Tcg, &spec).unwrap());
    let vm = &vm.0;
    assert!(vm.is_running());
    // QEMU dies alone (as if killed by someone else): its vsock backend
    // must not outlive it, even with no daemon to clean up.
    assert!(vm.procs[0].signal(libc::SIGKILL));
    assert!(vm.wait_exit(Duration::from_secs(10)));
    for p in &vm.procs {
        assert!(!p.is_alive(), "{p:?} outlived QEMU");
    }

    // And kill() stops both.
    let vm2 = Guard(backend::launch(BackendKind::Tcg, &spec).unwrap());
    let vm2 = &vm2.0;
    assert!(vm2.procs.iter().all(|p| p.is_alive()));
    vm2.kill();
    assert!(vm2.procs.iter().all(|p| !p.is_alive()));
}
