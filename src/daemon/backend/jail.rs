//! Jailing the kvm backend's VMMs: every `husk-vmm` the daemon starts
//! runs under `husk jailer` (docs/jailer.md), each VM as its own uid from
//! a configurable range, in its own chroot, namespaces and cgroup, with
//! its seccomp filters on (they are `husk-vmm`'s default).
//!
//! The jail holds only the VM's files, bind-mounted in; the VM's config
//! names them by their paths inside the jail:
//!
//! | in the jail | on the host |
//! |---|---|
//! | `/vmlinux`, `/initramfs` (read-only) | the daemon's kernel and the agent's initramfs |
//! | `/rootfs` | the container's private root filesystem, owned by the VM's uid |
//! | `/vm.json` (read-only) | `<run dir>/vm.json` |
//! | `/run/vmm.sock`, `/run/vsock.sock` | `<jail root>/run/...`: the API and vsock sockets |
//! | `/run/fs-<tag>.sock` | `<run dir>/fs-<tag>.sock`: a bind mount's virtiofsd, owned by the VM's uid |
//! | `/drive-<id>` | a volume's disk, owned by the VM's uid when read-write |
//!
//! A uid is taken by creating `/run/husk/jail-uids/<uid>` exclusively
//! (one directory for the host, so two daemons never share a uid; the
//! file names the VM's directory), and given back when the VM is cleaned
//! up; a file whose VM directory is gone (a daemon that crashed) is taken
//! over.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::BackendError;
use crate::jail::jailer::cgroup::HostCgroups;
use crate::jail::jailer::JailPaths;
use crate::text::echo_path;

/// The VMM's file name in the jail (and the jailer's middle directory).
pub const EXEC_NAME: &str = "husk-vmm";
/// The cgroup every VM's own cgroup sits under.
pub const PARENT_CGROUP: &str = "husk";
pub const KERNEL: &str = "/vmlinux";
pub const INITRAMFS: &str = "/initramfs";
pub const ROOTFS: &str = "/rootfs";

/// Where an extra disk (a volume) is in the jail.
pub fn drive_path(id: &str) -> PathBuf {
    PathBuf::from(format!("/drive-{id}"))
}
pub const CONFIG: &str = "/vm.json";
/// The VMM's own writable directory in the jail, where its sockets are.
pub const RUN_DIR: &str = "/run";
pub const API_SOCK: &str = "/run/vmm.sock";
pub const VSOCK_SOCK: &str = "/run/vsock.sock";

/// Memory a VM's cgroup allows beyond its guest's RAM: the VMM's own
/// (about 3 MiB resident), KVM's page tables and per-VM structures, and
/// the page cache of the rootfs's writes.
pub const MEMORY_OVERHEAD_MIB: u64 = 64;

/// The uids jailed VMs run as unless `--jail-uids` says otherwise.
pub const DEFAULT_UIDS: (u32, u32) = (200_000, 299_999);

/// The host's uid claims, shared by every daemon (on tmpfs: a reboot
/// frees them all).
pub const HOST_CLAIMS: &str = "/run/husk/jail-uids";

/// The daemon's jail settings (`husk serve`: `--no-jail` turns them off).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JailSettings {
    /// Where jails are made (`--chroot-base-dir`).
    pub base: PathBuf,
    /// The uids (each used as the gid too) VMs run as, first to last.
    pub uids: (u32, u32),
    /// Where uids are claimed: one directory for the whole host
    /// ([`HOST_CLAIMS`]), so two daemons never hand out one uid.
    pub claims: PathBuf,
    /// The jailer: `husk-jailer`, or a `husk` binary (its `jailer`
    /// subcommand).
    pub jailer: PathBuf,
}

/// A command running `jailer` (`husk-jailer`, or `husk jailer`).
pub fn jailer_command(jailer: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(jailer);
    let lean = jailer
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("husk-jailer"));
    if !lean {
        cmd.arg("jailer");
    }
    cmd
}

/// The jailer the daemon runs: `husk-jailer` beside `husk` (a small
/// static binary: it stays beside every VM), else `husk` itself.
pub fn find_jailer(husk: &Path) -> PathBuf {
    super::beside(husk, "husk-jailer").unwrap_or_else(|| husk.to_path_buf())
}

/// What a jailed VM's handle records, so a restarted daemon can clean
/// up after it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JailRecord {
    pub uid: u32,
    /// The uid's claim file.
    pub claim: PathBuf,
    /// kvm: `<base>/husk-vmm/<id>`, the jail, removed with the VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_dir: Option<PathBuf>,
    /// kvm: the VM's cgroup directories, removed with the VM when the
    /// jailer could not (it was killed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cgroups: Vec<PathBuf>,
}

/// Parses `FIRST-LAST` (uids, FIRST ≥ 1, LAST ≥ FIRST, and never
/// 4294967295, which the set*id calls read as "unchanged").
pub fn parse_uid_range(s: &str) -> Result<(u32, u32), String> {
    let bad = || {
        format!("{s:?}: expected FIRST-LAST, two uids from 1 to 4294967294 (e.g. 200000-299999)")
    };
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let (a, b): (u32, u32) = (
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    );
    if a == 0 || b < a || b == u32::MAX {
        return Err(bad());
    }
    Ok((a, b))
}

/// Claims a free uid from `settings` for the VM whose directory (its
/// jail, or its run directory) is `owner`: the claim holds while that
/// directory exists.
pub fn claim_uid(settings: &JailSettings, owner: &Path) -> Result<(u32, PathBuf), BackendError> {
    let dir = &settings.claims;
    std::fs::create_dir_all(dir).map_err(super::io_err("jail uid directory", dir))?;
    // One claimer at a time, so two cannot take over one stale claim.
    let lock = std::fs::File::open(dir).map_err(super::io_err("jail uid directory", dir))?;
    crate::jail::jailer::lock_exclusive(&lock)
        .map_err(super::io_err("jail uid directory (lock)", dir))?;
    let owner_text = owner.to_string_lossy();
    let (first, last) = settings.uids;
    for uid in first..=last {
        let claim = dir.join(uid.to_string());
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&claim)
        {
            Ok(mut f) => {
                f.write_all(owner_text.as_bytes())
                    .map_err(super::io_err("jail uid claim", &claim))?;
                return Ok((uid, claim));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                // Taken over when its VM's directory is gone (a crashed
                // daemon's VM) or is this very VM's (started again).
                let held = std::fs::read_to_string(&claim).unwrap_or_default();
                if held == owner_text || (!held.is_empty() && !Path::new(&held).exists()) {
                    std::fs::write(&claim, owner_text.as_bytes())
                        .map_err(super::io_err("jail uid claim", &claim))?;
                    return Ok((uid, claim));
                }
            }
            Err(e) => return Err(super::io_err("jail uid claim", &claim)(e)),
        }
    }
    Err(BackendError::Unavailable(format!(
        "every jail uid from {first} to {last} is in use: widen --jail-uids"
    )))
}

/// The cgroup version and `--cgroup` settings for a VM of `vcpus` vCPUs
/// and `memory_mib` of RAM: memory (guest RAM plus
/// [`MEMORY_OVERHEAD_MIB`]), pids and CPU time (one CPU per vCPU, and one
/// for the VMM's own threads). cgroup v2 when this host has all three
/// controllers there; else v1 with those it has.
pub fn cgroup_settings(host: &HostCgroups, vcpus: u8, memory_mib: u32) -> (u8, Vec<String>) {
    let memory = (u64::from(memory_mib) + MEMORY_OVERHEAD_MIB) << 20;
    let pids = u32::from(vcpus) + 16;
    let quota = (u64::from(vcpus) + 1) * 100_000;
    let wanted = ["memory", "pids", "cpu"];
    let v2_has = |c: &str| {
        host.v2_controllers
            .as_ref()
            .is_some_and(|cs| cs.iter().any(|x| x == c))
    };
    if wanted.iter().all(|c| v2_has(c)) {
        return (
            2,
            vec![
                format!("memory.max={memory}"),
                format!("pids.max={pids}"),
                format!("cpu.max={quota} 100000"),
            ],
        );
    }
    let v1_has = |c: &str| {
        host.mounts
            .iter()
            .any(|m| m.fstype == "cgroup" && m.options.iter().any(|o| o == c))
    };
    let mut settings = vec![];
    if v1_has("memory") {
        settings.push(format!("memory.limit_in_bytes={memory}"));
    }
    if v1_has("pids") {
        settings.push(format!("pids.max={pids}"));
    }
    if v1_has("cpu") {
        settings.push(format!("cpu.cfs_quota_us={quota}"));
    }
    for c in wanted {
        if !v1_has(c) {
            tracing::warn!("this host has no {c} cgroup controller: VMs run without that limit");
        }
    }
    (1, settings)
}

/// The cgroup directories the jailer makes for jail `id` (one per v1
/// hierarchy a setting names, or the one v2 directory).
fn cgroup_dirs(host: &HostCgroups, version: u8, settings: &[String], id: &str) -> Vec<PathBuf> {
    let under = |mount: &Path| mount.join(PARENT_CGROUP).join(id);
    if version == 2 {
        return host
            .mounts
            .iter()
            .find(|m| m.fstype == "cgroup2")
            .map(|m| vec![under(&m.path)])
            .unwrap_or_default();
    }
    let mut dirs: Vec<PathBuf> = settings
        .iter()
        .filter_map(|s| s.split('.').next())
        .filter_map(|c| {
            host.mounts
                .iter()
                .find(|m| m.fstype == "cgroup" && m.options.iter().any(|o| o == c))
        })
        .map(|m| under(&m.path))
        .collect();
    dirs.dedup();
    dirs
}

/// A jailed launch's command and what its handle records. `husk_vmm` is
/// the VMM binary (copied into the jail), `config` the VM config on the
/// host (written by the caller with the jail's paths).
pub struct JailedLaunch {
    pub command: std::process::Command,
    pub paths: JailPaths,
    pub record: JailRecord,
}

/// Prepares the jailed launch of VM `id` described by `spec`.
pub fn prepare(
    settings: &JailSettings,
    spec: &super::VmSpec,
    id: &str,
    husk_vmm: &Path,
    config: &Path,
) -> Result<JailedLaunch, BackendError> {
    let paths = JailPaths::new(&settings.base, EXEC_NAME, id);
    // A jail left by this VM's last run (its jailer was killed) goes
    // first; a live one refuses below, in the jailer.
    if paths.id_dir.exists() && !pid_file_alive(&paths) {
        remove_jail_dir(&paths.id_dir);
    }
    // The jail's directory exists before its uid is claimed, so no other
    // launch takes the claim over as a dead jail's.
    std::fs::create_dir_all(&paths.id_dir).map_err(super::io_err("jail", &paths.id_dir))?;
    let (uid, claim) = claim_uid(settings, &paths.id_dir)?;
    // The VM writes its rootfs as its own uid; the file is the
    // container's private copy.
    // So does a volume it mounts read-write (one VM at a time); one
    // mounted read-only is opened read-only.
    let writable = spec
        .rootfs
        .iter()
        .chain(spec.drives.iter().filter(|d| !d.read_only).map(|d| &d.path));
    let ready = writable
        .into_iter()
        .try_for_each(|p| {
            std::os::unix::fs::chown(p, Some(uid), Some(uid))
                .map_err(super::io_err("disk (chown to the VM's uid)", p))
        })
        .and_then(|()| HostCgroups::read().map_err(|e| BackendError::Unavailable(e.to_string())));
    let host = match ready {
        Ok(h) => h,
        Err(e) => {
            // Nothing started: the uid and the jail go back.
            let _ = std::fs::remove_file(&claim);
            remove_jail_dir(&paths.id_dir);
            return Err(e);
        }
    };
    let (version, limits) = cgroup_settings(&host, spec.vcpus, spec.memory_mib);
    let mut cmd = jailer_command(&settings.jailer);
    cmd.args(["--id", id])
        .arg("--exec-file")
        .arg(husk_vmm)
        .args(["--uid", &uid.to_string(), "--gid", &uid.to_string()])
        .arg("--chroot-base-dir")
        .arg(&settings.base)
        .args(["--cgroup-version", &version.to_string()])
        .args(["--parent-cgroup", PARENT_CGROUP]);
    for l in &limits {
        cmd.args(["--cgroup", l]);
    }
    let mount = |host: &Path, jail: &str, ro: bool| {
        let mut s = host.as_os_str().to_owned();
        s.push(format!(":{jail}{}", if ro { ":ro" } else { "" }));
        s
    };
    cmd.arg("--mount").arg(mount(&spec.kernel, KERNEL, true));
    cmd.arg("--mount")
        .arg(mount(&spec.initramfs, INITRAMFS, true));
    if let Some(rootfs) = &spec.rootfs {
        cmd.arg("--mount").arg(mount(rootfs, ROOTFS, false));
    }
    for d in &spec.drives {
        let inside = drive_path(&d.id);
        cmd.arg("--mount")
            .arg(mount(&d.path, &inside.to_string_lossy(), d.read_only));
    }
    cmd.arg("--mount").arg(mount(config, CONFIG, true));
    // Each share's virtiofsd socket (made by the daemon, owned by the
    // VM's uid), where the VM's config names it.
    for share in &spec.shares {
        let inside = super::virtiofs::socket_path(Path::new(RUN_DIR), &share.tag);
        cmd.arg("--mount").arg(mount(
            &super::virtiofs::socket_path(&spec.dir, &share.tag),
            &inside.to_string_lossy(),
            false,
        ));
    }
    cmd.args(["--", "--api-sock", API_SOCK, "--config-file", CONFIG]);
    let record = JailRecord {
        uid,
        claim,
        id_dir: Some(paths.id_dir.clone()),
        cgroups: cgroup_dirs(&host, version, &limits, id),
    };
    Ok(JailedLaunch {
        command: cmd,
        paths,
        record,
    })
}

fn pid_file_alive(paths: &JailPaths) -> bool {
    std::fs::read_to_string(paths.pid_file())
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .is_some_and(|pid| pid > 0 && Path::new(&format!("/proc/{pid}")).exists())
}

/// Removes a jail directory from the host's view. The jail's bind mounts
/// live only in its own mount namespace, gone with its process, so this
/// removes the empty files they covered, never the VM's real files.
fn remove_jail_dir(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!("cannot remove the jail {}: {e}", echo_path(dir));
        }
    }
}

/// After the VM's processes are gone: its cgroups (when the jailer did
/// not get to remove them), its jail and its uid claim.
pub fn clean_up(record: &JailRecord) {
    for dir in &record.cgroups {
        // Only an empty cgroup can go; a failure here is a VMM that lives.
        match std::fs::remove_dir(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!("cannot remove cgroup {}: {e}", echo_path(dir)),
        }
    }
    if let Some(dir) = &record.id_dir {
        remove_jail_dir(dir);
    }
    let _ = std::fs::remove_file(&record.claim);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jail::jailer::cgroup::parse_mounts;

    const HYBRID: &str = "\
tmpfs /sys/fs/cgroup tmpfs rw 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup /sys/fs/cgroup/pids cgroup rw,relatime,pids 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
";

    #[test]
    fn limits_follow_the_machine_shape_and_the_hosts_cgroups() {
        let mut host = HostCgroups {
            mounts: parse_mounts(HYBRID),
            known: vec![],
            v2_controllers: Some(vec!["hugetlb".into()]),
        };
        let (v, s) = cgroup_settings(&host, 2, 512);
        assert_eq!(v, 1);
        assert_eq!(
            s,
            [
                "memory.limit_in_bytes=603979776",
                "pids.max=18",
                "cpu.cfs_quota_us=300000"
            ]
        );
        assert_eq!(
            cgroup_dirs(&host, v, &s, "abc"),
            [
                PathBuf::from("/sys/fs/cgroup/memory/husk/abc"),
                PathBuf::from("/sys/fs/cgroup/pids/husk/abc"),
                PathBuf::from("/sys/fs/cgroup/cpu/husk/abc"),
            ]
        );
        host.v2_controllers = Some(vec!["cpu".into(), "memory".into(), "pids".into()]);
        let (v, s) = cgroup_settings(&host, 1, 128);
        assert_eq!(v, 2);
        assert_eq!(
            s,
            [
                "memory.max=201326592",
                "pids.max=17",
                "cpu.max=200000 100000"
            ]
        );
        assert_eq!(
            cgroup_dirs(&host, v, &s, "abc"),
            [PathBuf::from("/sys/fs/cgroup/unified/husk/abc")]
        );
    }

    #[test]
    fn uid_ranges() {
        assert_eq!(parse_uid_range("200000-299999"), Ok((200000, 299999)));
        assert_eq!(parse_uid_range("5-5"), Ok((5, 5)));
        for bad in [
            "",
            "5",
            "0-9",
            "9-5",
            "a-b",
            "-5",
            "4294967295-4294967295",
            "1-4294967295",
        ] {
            assert!(parse_uid_range(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn uids_are_claimed_once_and_taken_over_when_their_jail_is_gone() {
        let base = std::env::temp_dir().join(format!("husk-jail-uids-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let s = JailSettings {
            base: base.clone(),
            uids: (1000, 1001),
            claims: base.join("uids"),
            jailer: PathBuf::from("/bin/false"),
        };
        // Two live jails take both uids.
        let jail = |id: &str| JailPaths::new(&base, EXEC_NAME, id).id_dir;
        for id in ["a", "b"] {
            std::fs::create_dir_all(jail(id)).unwrap();
        }
        assert_eq!(claim_uid(&s, &jail("a")).unwrap().0, 1000);
        assert_eq!(claim_uid(&s, &jail("b")).unwrap().0, 1001);
        assert!(matches!(
            claim_uid(&s, &jail("c")),
            Err(BackendError::Unavailable(_))
        ));
        // The same VM started again keeps its uid.
        assert_eq!(claim_uid(&s, &jail("b")).unwrap().0, 1001);
        // "a"'s jail went away without giving its uid back.
        std::fs::remove_dir_all(jail("a")).unwrap();
        let (uid, claim) = claim_uid(&s, &jail("c")).unwrap();
        assert_eq!(uid, 1000);
        assert_eq!(
            std::fs::read_to_string(claim).unwrap(),
            jail("c").to_string_lossy()
        );
        let _ = std::fs::remove_dir_all(&base);
    }
}
