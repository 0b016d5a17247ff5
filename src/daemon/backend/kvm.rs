//! The `kvm` backend: one `husk-vmm` process per VM.
//!
//! The VM is described in `<dir>/vm.json` (the Firecracker-style config
//! file of `husk-vmm --config-file`), and `husk-vmm` boots it at once
//! while it serves its per-VM API on `<dir>/vmm.sock`. The guest's serial
//! console is the VMM's stdout (`console.log`), its own messages go to
//! stderr (`vmm.log`).

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::process::{detach, spawn, ProcId};
use super::{
    base_cmdline, create_log, free_socket, io_err, jail, wait_started, with_extra, BackendError,
    BackendKind, VmDrive, VmHandle, VmSpec, CONSOLE_LOG, GUEST_CID, VMM_LOG, VSOCK_SOCK,
};
use crate::text::echo_path;
use crate::vmm::config::{
    BootSourceConfig, CacheType, ConfigFileError, DriveConfig, EntropyConfig, FsConfig,
    MachineConfig, NetworkInterfaceConfig, VmConfig, VsockConfig, MAX_FS_QUEUE_SIZE,
};

/// The per-VM API socket.
pub const API_SOCK: &str = "vmm.sock";
/// The config file the VM boots from.
pub const CONFIG_FILE: &str = "vm.json";
/// The rootfs drive's id.
pub const ROOTFS_DRIVE: &str = "rootfs";
/// The network interface's id.
pub const NET_IFACE: &str = "eth0";

/// husk's own i8042 and bus flags (its `DEFAULT_BOOT_ARGS`): nothing to
/// probe that is not there, so a faster boot. `reboot=k` ends the VM.
const HUSK_ARGS: &str = "pci=off nomodule i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd";

/// The kernel command line for `spec` under husk-vmm.
pub fn cmdline(spec: &VmSpec) -> String {
    with_extra(
        format!("{} {HUSK_ARGS}", base_cmdline("k")),
        &spec.boot_args,
    )
}

fn path_string(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// The VM config for `spec`, as the VMM sees it: its vsock and
/// virtio-fs sockets in `sockets` (the run directory, or the jail's
/// `/run`).
pub fn config(spec: &VmSpec, sockets: &Path) -> VmConfig {
    VmConfig {
        boot_source: Some(BootSourceConfig {
            kernel_image_path: path_string(&spec.kernel),
            initrd_path: Some(path_string(&spec.initramfs)),
            boot_args: Some(cmdline(spec)),
        }),
        machine_config: MachineConfig {
            vcpu_count: spec.vcpus,
            mem_size_mib: u64::from(spec.memory_mib),
            ..MachineConfig::default()
        },
        // The agent mounts /dev/vda itself (husk.root=): the kernel must
        // not take it as its root, so it is not the root device.
        drives: spec
            .rootfs
            .iter()
            .map(|rootfs| DriveConfig {
                drive_id: ROOTFS_DRIVE.into(),
                path_on_host: Some(path_string(rootfs)),
                is_root_device: false,
                is_read_only: Some(false),
                partuuid: None,
                cache_type: CacheType::Unsafe,
                io_engine: None,
                rate_limiter: None,
                socket: None,
            })
            // Volumes outlive the VM: their writes are flushed when the guest
            // asks (Writeback), not left to chance.
            .chain(spec.drives.iter().map(|d| DriveConfig {
                drive_id: d.id.clone(),
                path_on_host: Some(path_string(&d.path)),
                is_root_device: false,
                is_read_only: Some(d.read_only),
                partuuid: None,
                cache_type: CacheType::Writeback,
                io_engine: None,
                rate_limiter: None,
                socket: None,
            }))
            .collect(),
        network_interfaces: spec
            .net
            .iter()
            .map(|n| NetworkInterfaceConfig {
                iface_id: NET_IFACE.into(),
                host_dev_name: n.tap.clone(),
                guest_mac: n.mac.parse().ok(),
                mtu: Some(n.mtu),
                rx_rate_limiter: None,
                tx_rate_limiter: None,
            })
            .collect(),
        entropy: Some(EntropyConfig::default()),
        vsock: Some(VsockConfig {
            guest_cid: GUEST_CID,
            uds_path: path_string(&sockets.join(VSOCK_SOCK)),
            vsock_id: None,
        }),
        // Each share's virtiofsd, one request queue (what QEMU's
        // vhost-user-fs-device gives the tcg backend too).
        fs_devices: spec
            .shares
            .iter()
            .map(|s| FsConfig {
                tag: s.tag.clone(),
                socket_path: path_string(&super::virtiofs::socket_path(sockets, &s.tag)),
                num_queues: 1,
                queue_size: MAX_FS_QUEUE_SIZE,
            })
            .collect(),
        ..VmConfig::default()
    }
}

/// `husk-vmm`: `$HUSK_VMM`, else the one beside the running program (or
/// beside the directory of a test binary in `target/*/deps/`), else the
/// one on PATH.
pub fn vmm_binary() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("HUSK_VMM").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return if super::is_executable(&p) {
            Ok(p)
        } else {
            Err(format!(
                "HUSK_VMM={} is not an executable file",
                echo_path(&p)
            ))
        };
    }
    if let Some(p) = std::env::current_exe()
        .ok()
        .and_then(|me| super::beside(&me, "husk-vmm"))
    {
        return Ok(p);
    }
    super::find_tool("husk-vmm", Some("HUSK_VMM")).ok_or_else(|| {
        "husk-vmm is not installed beside husk (or set HUSK_VMM to its path)".to_string()
    })
}

/// `Ok` when /dev/kvm opens and offers what husk-vmm needs.
pub fn kvm_usable() -> Result<(), String> {
    use crate::vmm::kvm::vm::{KVM_API_VERSION, REQUIRED_CAPS};
    let kvm = kvm_ioctls::Kvm::new().map_err(|e| format!("cannot open /dev/kvm: {e}"))?;
    let version = kvm.get_api_version();
    if version != KVM_API_VERSION {
        return Err(format!(
            "KVM API version {version}, husk needs {KVM_API_VERSION}"
        ));
    }
    for (cap, name) in REQUIRED_CAPS {
        if !kvm.check_extension(*cap) {
            return Err(format!("KVM lacks {name}"));
        }
    }
    Ok(())
}

/// The VMM's instance id: the run directory's name when it is a plain
/// id (so `ps` and `GET /` tell VMs apart).
fn instance_id(dir: &Path) -> Option<&str> {
    dir.file_name()
        .and_then(|n| n.to_str())
        .filter(|n| crate::vmm::config::is_plain_id(n))
}

pub(super) fn launch(spec: &VmSpec) -> Result<VmHandle, BackendError> {
    let dir = &spec.dir;
    let cfg_path = dir.join(CONFIG_FILE);
    let id = instance_id(dir);
    check(spec, &cfg_path)?;
    let bin = vmm_binary().map_err(BackendError::Unavailable)?;
    let jailed = match (&spec.jail, id) {
        (Some(settings), Some(id)) => Some(jail::prepare(settings, spec, id, &bin, &cfg_path)?),
        (Some(_), None) => {
            return Err(BackendError::Config(format!(
                "a jailed VM's run directory must be named by a plain id, not {}",
                echo_path(dir)
            )))
        }
        (None, _) => None,
    };
    let record = jailed.as_ref().map(|j| j.record.clone());
    // The shares' daemons first: their sockets are checked, bound into
    // the jail, and connected to as the VM starts. A jailed VMM connects
    // as the VM's uid.
    let owner = record.as_ref().map(|r| r.uid);
    let mut launched = super::virtiofs::start(&spec.shares, dir, owner).and_then(|shares| {
        match launch_vmm(spec, &bin, &cfg_path, id, jailed) {
            Ok(mut handle) => {
                handle.procs.extend(shares.iter().map(|s| s.proc));
                Ok(handle)
            }
            Err(e) => {
                super::virtiofs::stop(&shares);
                Err(e)
            }
        }
    });
    if let Err(BackendError::Exited { log, .. } | BackendError::Timeout { log, .. }) = &mut launched
    {
        super::virtiofs::explain(log, &spec.shares, dir);
    }
    if launched.is_err() {
        // Nothing of the VM runs: its jail and uid go back.
        if let Some(r) = &record {
            jail::clean_up(r);
        }
    }
    launched
}

/// Checks `spec`'s VM config (files, machine shape, command line) so
/// that a bad spec fails the launch with a clear error before anything
/// starts, not a VMM that exits; by the host's paths, which a jail's
/// stand for. The shares' sockets do not exist yet: the daemon makes
/// them next.
fn check(spec: &VmSpec, cfg_path: &Path) -> Result<(), BackendError> {
    let cfg = VmConfig {
        fs_devices: Vec::new(),
        ..config(spec, &spec.dir)
    };
    let checked = serde_json::to_vec(&cfg).map_err(|e| BackendError::Config(e.to_string()))?;
    VmConfig::from_slice(&echo_path(cfg_path), &checked).map_err(|e| match e {
        ConfigFileError::Invalid(_, e) => BackendError::Config(e.to_string()),
        e => BackendError::Config(e.to_string()),
    })?;
    Ok(())
}

/// Writes the VM's config and starts its VMM (under the jailer when
/// `jailed`); the caller gives the jail back on failure.
fn launch_vmm(
    spec: &VmSpec,
    bin: &Path,
    cfg_path: &Path,
    id: Option<&str>,
    jailed: Option<jail::JailedLaunch>,
) -> Result<VmHandle, BackendError> {
    let dir = &spec.dir;
    let log_path = dir.join(VMM_LOG);
    // What the VMM sees: the host's paths, or the jail's.
    let seen = match jailed {
        Some(_) => VmSpec {
            kernel: PathBuf::from(jail::KERNEL),
            initramfs: PathBuf::from(jail::INITRAMFS),
            rootfs: spec.rootfs.as_ref().map(|_| PathBuf::from(jail::ROOTFS)),
            drives: spec
                .drives
                .iter()
                .map(|d| VmDrive {
                    path: jail::drive_path(&d.id),
                    ..d.clone()
                })
                .collect(),
            ..spec.clone()
        },
        None => spec.clone(),
    };
    let sockets_seen = match jailed {
        Some(_) => Path::new(jail::RUN_DIR),
        None => dir.as_path(),
    };

    let text = serde_json::to_vec_pretty(&config(&seen, sockets_seen))
        .map_err(|e| BackendError::Config(e.to_string()))?;
    std::fs::write(cfg_path, &text).map_err(io_err("VM config", cfg_path))?;

    let (mut cmd, api, vsock, record, pid_file) = match jailed {
        Some(j) => {
            // The VMM opens its TAP as the VM's uid.
            if let Some(net) = &spec.net {
                crate::daemon::network::link::set_tap_owner(&net.tap, j.record.uid).map_err(
                    |err| BackendError::Io {
                        what: "cannot hand the TAP to the VM's uid:",
                        path: net.tap.clone(),
                        err,
                    },
                )?;
            }
            let on_host = |p: &str| j.paths.root.join(p.trim_start_matches('/'));
            (
                j.command,
                on_host(jail::API_SOCK),
                on_host(jail::VSOCK_SOCK),
                Some(j.record),
                Some(j.paths.pid_file()),
            )
        }
        None => {
            let api = dir.join(API_SOCK);
            let mut cmd = Command::new(bin);
            cmd.arg("--api-sock")
                .arg(&api)
                .arg("--config-file")
                .arg(cfg_path);
            if let Some(id) = id {
                cmd.args(["--id", id]);
            }
            (cmd, api, dir.join(VSOCK_SOCK), None, None)
        }
    };
    let prog = launcher(&record);
    free_socket(&api)?;
    free_socket(&vsock)?;
    let console = create_log(&dir.join(CONSOLE_LOG))?;
    let log = create_log(&log_path)?;
    cmd.current_dir(dir).stdout(console).stderr(log);
    detach(&mut cmd);
    let main = spawn(&mut cmd).map_err(|err| BackendError::Spawn { prog, err })?;
    let mut handle = VmHandle {
        kind: BackendKind::Kvm,
        procs: vec![main],
        vsock_uds: vsock,
        api_sock: Some(api),
        console_log: dir.join(CONSOLE_LOG),
        // The caller gives the jail back if the start fails.
        jail: None,
    };
    if let Err(e) = wait_for_vmm(&mut handle, &log_path, prog, pid_file.as_deref()) {
        handle.cleanup();
        return Err(e);
    }
    handle.jail = record;
    Ok(handle)
}

/// What a launch runs first: the jailer, or the VMM itself.
fn launcher(record: &Option<jail::JailRecord>) -> &'static str {
    if record.is_some() {
        "husk jailer"
    } else {
        "husk-vmm"
    }
}

/// Waits until the VMM answers its API, which it does once the VM runs
/// (or exits when the config fails); a jailed VMM's pid joins the
/// handle's processes.
fn wait_for_vmm(
    handle: &mut VmHandle,
    log_path: &Path,
    prog: &'static str,
    pid_file: Option<&Path>,
) -> Result<(), BackendError> {
    let main = handle.procs[0];
    let api = handle.api_sock.clone().unwrap_or_default();
    let api = api.as_path();
    // Connected, not only present: the socket file exists between the
    // VMM's bind and its listen.
    wait_started(prog, "serve its API", &main, log_path, || {
        UnixStream::connect(api).is_ok()
    })?;
    if let Some(pid_file) = pid_file {
        let vmm = std::fs::read_to_string(pid_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .and_then(ProcId::of)
            .ok_or_else(|| {
                BackendError::Config(format!("no live VMM named in {}", echo_path(pid_file)))
            })?;
        handle.procs.push(vmm);
    }
    let answer = crate::vmm::client::request(api, "GET", "/", None);
    match answer {
        Ok(r) if r.status == 200 => Ok(()),
        _ if !main.is_alive() => Err(BackendError::Exited {
            prog,
            log: super::log_tail(log_path),
        }),
        Ok(r) => Err(BackendError::Config(format!(
            "GET / answered {}: {}",
            r.status, r.body
        ))),
        Err(e) => Err(BackendError::Config(format!("GET /: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{spec, Scratch};
    use super::*;

    #[test]
    fn the_config_names_the_spec_files_and_a_non_root_drive() {
        let dir = Scratch::new("kvm-config");
        let s = spec(&dir.0);
        let vsock = s.dir.join(VSOCK_SOCK);
        let json = serde_json::to_value(config(&s, &s.dir)).unwrap();
        let boot = &json["boot-source"];
        assert_eq!(boot["kernel_image_path"], s.kernel.to_str().unwrap());
        assert_eq!(boot["initrd_path"], s.initramfs.to_str().unwrap());
        assert_eq!(
            boot["boot_args"],
            "console=ttyS0 reboot=k panic=-1 quiet no_timer_check husk.root=/dev/vda pci=off nomodule \
             i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd probe=x"
        );
        assert_eq!(json["machine-config"]["vcpu_count"], 2);
        assert_eq!(json["machine-config"]["mem_size_mib"], 256);
        let drives = json["drives"].as_array().unwrap();
        assert_eq!(drives.len(), 1);
        assert_eq!(drives[0]["drive_id"], "rootfs");
        assert_eq!(
            drives[0]["path_on_host"],
            s.rootfs.as_ref().unwrap().to_str().unwrap()
        );
        assert_eq!(drives[0]["is_root_device"], false);
        assert_eq!(drives[0]["is_read_only"], false);
        assert_eq!(json["vsock"]["guest_cid"], 3);
        assert_eq!(json["vsock"]["uds_path"], vsock.to_str().unwrap());
        assert!(json["entropy"].is_object());
        assert!(json
            .get("network-interfaces")
            .is_none_or(|n| n == &serde_json::json!([])));
        // What husk-vmm reads back is what was written.
        let text = serde_json::to_vec(&json).unwrap();
        let back = VmConfig::from_slice("vm.json", &text).unwrap();
        assert_eq!(back, config(&s, &s.dir));

        // With a network: the daemon's TAP as eth0, the guest's MAC and MTU.
        let s = VmSpec {
            net: Some(super::super::VmNet {
                tap: "htap0123456789a".into(),
                mac: "02:42:ac:14:00:02".into(),
                mtu: 1400,
            }),
            ..s
        };
        let json = serde_json::to_value(config(&s, &s.dir)).unwrap();
        let nics = json["network-interfaces"].as_array().unwrap();
        assert_eq!(nics.len(), 1, "{json}");
        assert_eq!(nics[0]["iface_id"], "eth0");
        assert_eq!(nics[0]["host_dev_name"], "htap0123456789a");
        assert_eq!(nics[0]["guest_mac"], "02:42:ac:14:00:02");
        assert_eq!(nics[0]["mtu"], 1400);
        let text = serde_json::to_vec(&json).unwrap();
        assert_eq!(
            VmConfig::from_slice("vm.json", &text).unwrap(),
            config(&s, &s.dir)
        );
    }

    #[test]
    fn each_share_is_an_fs_device_on_its_virtiofsd_socket() {
        let dir = Scratch::new("kvm-fs");
        let mut s = spec(&dir.0);
        s.shares = vec![
            super::super::VmShare {
                tag: "fs0".into(),
                dir: "/srv/a".into(),
                read_only: false,
            },
            super::super::VmShare {
                tag: "fs1".into(),
                dir: "/srv/b".into(),
                read_only: true,
            },
        ];
        let json = serde_json::to_value(config(&s, &s.dir)).unwrap();
        let fs = json["fs-devices"].as_array().unwrap();
        assert_eq!(fs.len(), 2, "{json}");
        assert_eq!(fs[0]["tag"], "fs0");
        assert_eq!(
            fs[0]["socket_path"],
            s.dir.join("fs-fs0.sock").to_str().unwrap()
        );
        assert_eq!(fs[1]["tag"], "fs1");
        // In a jail, the sockets are in the VMM's /run.
        let json = serde_json::to_value(config(&s, Path::new(jail::RUN_DIR))).unwrap();
        assert_eq!(json["fs-devices"][1]["socket_path"], "/run/fs-fs1.sock");
        assert_eq!(json["vsock"]["uds_path"], jail::VSOCK_SOCK);
    }

    #[test]
    fn no_extra_arguments_leave_the_command_line_clean() {
        let dir = Scratch::new("kvm-cmdline");
        let mut s = spec(&dir.0);
        s.boot_args = "  ".into();
        assert!(cmdline(&s).ends_with("i8042.dumbkbd"));
    }

    #[test]
    fn a_bad_machine_shape_fails_before_any_process_starts() {
        let dir = Scratch::new("kvm-bad");
        let mut s = spec(&dir.0);
        s.vcpus = 0;
        let e = super::super::launch(BackendKind::Kvm, &s).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid VM config: vcpu_count must be between 1 and 32, not 0"
        );
        assert!(!s.dir.join(CONFIG_FILE).exists());
    }

    #[test]
    fn instance_ids_come_from_plain_directory_names() {
        assert_eq!(instance_id(Path::new("/run/husk/c-1f2e")), Some("c-1f2e"));
        assert_eq!(instance_id(Path::new("/run/husk/a b")), None);
        assert_eq!(instance_id(Path::new("/")), None);
    }
}
