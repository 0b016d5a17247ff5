//! The VM's cgroup(s): `<hierarchy>/<parent cgroup>/<id>`, made before the
//! VMM's process runs, joined by it before it execs, removed after it
//! ends.
//!
//! With cgroup v2 there is one directory in the unified hierarchy, and
//! each controller a setting needs is enabled in `cgroup.subtree_control`
//! from the hierarchy's root down to the parent. With v1 each controller
//! has a hierarchy of its own (found in /proc/mounts, where the mount
//! options name the controllers, `cpu,cpuacct` or `memory`), and the VM
//! gets a directory in each hierarchy one of its settings names.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::config::CgroupSetting;
use super::{JailerError, Result};
use crate::text::echo_path;

/// One line of /proc/mounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub path: PathBuf,
    pub fstype: String,
    pub options: Vec<String>,
}

/// Parses /proc/mounts (octal escapes such as `\040` undone).
pub fn parse_mounts(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let _source = f.next()?;
            let path = unescape(f.next()?);
            let fstype = f.next()?.to_string();
            let options = f.next()?.split(',').map(str::to_string).collect();
            Some(MountEntry {
                path: PathBuf::from(path),
                fstype,
                options,
            })
        })
        .collect()
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The controller names in /proc/cgroups (for error messages).
pub fn parse_known_controllers(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// One directory the VM gets, in one hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmCgroup {
    /// Where the hierarchy is mounted.
    pub hierarchy: PathBuf,
    /// `<hierarchy>/<parent>/<id>`.
    pub dir: PathBuf,
    /// Controllers to enable on the way down (v2) or that this hierarchy
    /// was picked for (v1).
    pub controllers: Vec<String>,
    /// The settings written in this directory.
    pub settings: Vec<CgroupSetting>,
}

/// What the jailer will make: the version and its directories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupPlan {
    pub version: u8,
    pub parent: PathBuf,
    pub cgroups: Vec<VmCgroup>,
}

/// Facts about this host's cgroups that a plan depends on.
#[derive(Debug, Clone, Default)]
pub struct HostCgroups {
    pub mounts: Vec<MountEntry>,
    /// From /proc/cgroups.
    pub known: Vec<String>,
    /// `cgroup.controllers` of the cgroup2 mount, if one is mounted.
    pub v2_controllers: Option<Vec<String>>,
}

impl HostCgroups {
    /// Reads /proc/mounts, /proc/cgroups and the cgroup2 root's
    /// `cgroup.controllers`.
    pub fn read() -> Result<HostCgroups> {
        let read = |p: &str| {
            std::fs::read_to_string(p).map_err(|e| JailerError::io("read", Path::new(p), e))
        };
        let mounts = parse_mounts(&read("/proc/mounts")?);
        let known = std::fs::read_to_string("/proc/cgroups")
            .map(|t| parse_known_controllers(&t))
            .unwrap_or_default();
        let v2_controllers = match v2_mount(&mounts) {
            Some(m) => {
                let p = m.join("cgroup.controllers");
                let t = std::fs::read_to_string(&p).map_err(|e| JailerError::io("read", &p, e))?;
                Some(t.split_whitespace().map(str::to_string).collect())
            }
            None => None,
        };
        Ok(HostCgroups {
            mounts,
            known,
            v2_controllers,
        })
    }

    fn v1_mount_of(&self, controller: &str) -> Option<&Path> {
        self.mounts
            .iter()
            .find(|m| m.fstype == "cgroup" && m.options.iter().any(|o| o == controller))
            .map(|m| m.path.as_path())
    }
}

fn v2_mount(mounts: &[MountEntry]) -> Option<&Path> {
    mounts
        .iter()
        .find(|m| m.fstype == "cgroup2")
        .map(|m| m.path.as_path())
}

/// Decides which directories the VM gets and checks that every setting's
/// controller exists in the chosen version. Creates nothing.
pub fn plan(
    version: u8,
    parent: &Path,
    id: &str,
    settings: &[CgroupSetting],
    host: &HostCgroups,
) -> Result<CgroupPlan> {
    let err = |m: String| Err(JailerError::Cgroup(m));
    let known = |c: &str| host.known.iter().any(|k| k == c);
    let known_list = || {
        if host.known.is_empty() {
            "none listed in /proc/cgroups".to_string()
        } else {
            host.known.join(", ")
        }
    };
    let mut cgroups = Vec::new();
    if version == 2 {
        let Some(mount) = v2_mount(&host.mounts) else {
            return err(
                "no cgroup2 file system is mounted (/proc/mounts): use --cgroup-version 1".into(),
            );
        };
        let available = host.v2_controllers.clone().unwrap_or_default();
        let mut controllers: Vec<String> = Vec::new();
        for s in settings {
            let c = s.controller();
            if c == "cgroup" || controllers.iter().any(|x| x == c) {
                continue;
            }
            if !available.iter().any(|a| a == c) {
                let have = format!(
                    "{}/cgroup.controllers: {}",
                    echo_path(mount),
                    if available.is_empty() {
                        "(none)".to_string()
                    } else {
                        available.join(" ")
                    }
                );
                return match host.v1_mount_of(c) {
                    Some(v1) => err(format!(
                        "{}: controller {c} is not available in cgroup v2 on this host ({have}); \
                         it is mounted as cgroup v1 at {}: use --cgroup-version 1 with v1 file names",
                        s.file,
                        echo_path(v1)
                    )),
                    None if known(c) => err(format!(
                        "{}: controller {c} is not available in cgroup v2 on this host ({have})",
                        s.file
                    )),
                    None => err(format!(
                        "{}: unknown cgroup controller {c:?} (this kernel has: {})",
                        s.file,
                        known_list()
                    )),
                };
            }
            controllers.push(c.to_string());
        }
        cgroups.push(VmCgroup {
            hierarchy: mount.to_path_buf(),
            dir: mount.join(parent).join(id),
            controllers,
            settings: settings.to_vec(),
        });
    } else {
        let mut by_mount: BTreeMap<PathBuf, VmCgroup> = BTreeMap::new();
        for s in settings {
            let c = s.controller();
            if c == "cgroup" {
                return err(format!(
                    "{}: cgroup.* files exist in every v1 hierarchy, so the jailer cannot tell \
                     which one is meant",
                    s.file
                ));
            }
            let Some(mount) = host.v1_mount_of(c) else {
                let in_v2 = host
                    .v2_controllers
                    .as_ref()
                    .is_some_and(|v| v.iter().any(|a| a == c));
                return if in_v2 {
                    err(format!(
                        "{}: controller {c} is only available in cgroup v2 on this host: \
                         use --cgroup-version 2",
                        s.file
                    ))
                } else if known(c) {
                    err(format!(
                        "{}: controller {c} is not mounted as cgroup v1 (/proc/mounts)",
                        s.file
                    ))
                } else {
                    err(format!(
                        "{}: unknown cgroup controller {c:?} (this kernel has: {})",
                        s.file,
                        known_list()
                    ))
                };
            };
            let g = by_mount
                .entry(mount.to_path_buf())
                .or_insert_with(|| VmCgroup {
                    hierarchy: mount.to_path_buf(),
                    dir: mount.join(parent).join(id),
                    controllers: vec![],
                    settings: vec![],
                });
            if !g.controllers.iter().any(|x| x == c) {
                g.controllers.push(c.to_string());
            }
            g.settings.push(s.clone());
        }
        cgroups.extend(by_mount.into_values());
    }
    Ok(CgroupPlan {
        version,
        parent: parent.to_path_buf(),
        cgroups,
    })
}

/// The directories made for one VM; [`Created::remove`] takes them away.
#[derive(Debug, Default)]
pub struct Created {
    pub version: u8,
    pub cgroups: Vec<VmCgroup>,
}

fn write_file(path: &Path, value: &str) -> io::Result<()> {
    let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
    f.write_all(value.as_bytes())
}

fn mkdir(path: &Path) -> Result<bool> {
    match std::fs::create_dir(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(JailerError::io("create cgroup", path, e)),
    }
}

/// Makes the plan's directories and writes its settings. On failure,
/// whatever VM directory it made is removed again.
pub fn create(plan: &CgroupPlan) -> Result<Created> {
    let mut created = Created {
        version: plan.version,
        cgroups: vec![],
    };
    for g in &plan.cgroups {
        if let Err(e) = create_one(plan, g, &mut created) {
            created.remove();
            return Err(e);
        }
    }
    Ok(created)
}

fn create_one(plan: &CgroupPlan, g: &VmCgroup, created: &mut Created) -> Result<()> {
    // The hierarchy root, then each component of the parent, then the VM.
    let mut levels = vec![g.hierarchy.clone()];
    let mut p = g.hierarchy.clone();
    for c in plan.parent.components() {
        p.push(c);
        levels.push(p.clone());
    }
    for (i, dir) in levels.iter().enumerate() {
        if i > 0 {
            mkdir(dir)?;
        }
        if plan.version == 2 {
            enable_controllers(dir, &g.controllers)?;
        } else if i > 0 && g.controllers.iter().any(|c| c == "cpuset") {
            inherit_cpuset(dir)?;
        }
    }
    let fresh = mkdir(&g.dir)?;
    if !fresh {
        // A directory left by a jailer that was killed: reuse it, unless
        // something still runs in it.
        let procs = g.dir.join("cgroup.procs");
        let text =
            std::fs::read_to_string(&procs).map_err(|e| JailerError::io("read", &procs, e))?;
        if let Some(pid) = text.split_whitespace().next() {
            return Err(JailerError::Cgroup(format!(
                "{} exists and pid {pid} runs in it: is another VM using id {}?",
                echo_path(&g.dir),
                g.dir.file_name().unwrap_or_default().to_string_lossy()
            )));
        }
    }
    created.cgroups.push(g.clone());
    if plan.version == 1 && g.controllers.iter().any(|c| c == "cpuset") {
        inherit_cpuset(&g.dir)?;
    }
    for s in &g.settings {
        let path = g.dir.join(&s.file);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() => {}
            _ => {
                return Err(JailerError::Cgroup(format!(
                    "{} has no file {}: the kernel has no such setting in cgroup v{}",
                    echo_path(&g.dir),
                    s.file,
                    plan.version
                )))
            }
        }
        write_file(&path, &s.value).map_err(|e| {
            JailerError::Cgroup(format!(
                "cannot write {:?} to {}: {e}",
                s.value,
                echo_path(&path)
            ))
        })?;
    }
    Ok(())
}

/// v2: `+controller` in `cgroup.subtree_control` of `dir`, for each one
/// not already enabled there.
fn enable_controllers(dir: &Path, controllers: &[String]) -> Result<()> {
    if controllers.is_empty() {
        return Ok(());
    }
    let path = dir.join("cgroup.subtree_control");
    let on = std::fs::read_to_string(&path).map_err(|e| JailerError::io("read", &path, e))?;
    let missing: Vec<String> = controllers
        .iter()
        .filter(|c| !on.split_whitespace().any(|o| o == c.as_str()))
        .map(|c| format!("+{c}"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    write_file(&path, &missing.join(" ")).map_err(|e| {
        JailerError::Cgroup(format!(
            "cannot enable {} in {}: {e}{}",
            missing.join(" "),
            echo_path(&path),
            if e.raw_os_error() == Some(libc::EBUSY) {
                " (a cgroup with processes in it cannot pass controllers down)"
            } else {
                ""
            }
        ))
    })
}

/// v1 cpuset: a new cpuset cgroup starts with no CPUs and no memory
/// nodes, and no task may join it; copy both from its parent, as
/// Firecracker's jailer does.
fn inherit_cpuset(dir: &Path) -> Result<()> {
    let Some(parent) = dir.parent() else {
        return Ok(());
    };
    for f in ["cpuset.cpus", "cpuset.mems"] {
        let mine = dir.join(f);
        let current =
            std::fs::read_to_string(&mine).map_err(|e| JailerError::io("read", &mine, e))?;
        if !current.trim().is_empty() {
            continue;
        }
        let theirs = parent.join(f);
        let value =
            std::fs::read_to_string(&theirs).map_err(|e| JailerError::io("read", &theirs, e))?;
        write_file(&mine, value.trim()).map_err(|e| JailerError::io("write", &mine, e))?;
    }
    Ok(())
}

impl Created {
    /// Moves `pid` (a host pid) into every directory.
    pub fn join(&self, pid: i32) -> Result<()> {
        for g in &self.cgroups {
            let procs = g.dir.join("cgroup.procs");
            write_file(&procs, &pid.to_string()).map_err(|e| {
                JailerError::Cgroup(format!(
                    "cannot move pid {pid} into {}: {e}",
                    echo_path(&g.dir)
                ))
            })?;
        }
        Ok(())
    }

    /// Whether the memory controller's OOM killer killed something in the
    /// VM's cgroup, as a line for the user.
    pub fn oom_report(&self) -> Option<String> {
        for g in &self.cgroups {
            let (file, extra) = if self.version == 2 {
                ("memory.events", None)
            } else if g.controllers.iter().any(|c| c == "memory") {
                ("memory.oom_control", Some("memory.failcnt"))
            } else {
                continue;
            };
            let Ok(text) = std::fs::read_to_string(g.dir.join(file)) else {
                continue;
            };
            let kills = text.lines().find_map(|l| {
                l.strip_prefix("oom_kill ")
                    .and_then(|n| n.trim().parse::<u64>().ok())
            });
            if let Some(n) = kills.filter(|&n| n > 0) {
                let mut line = format!(
                    "the cgroup's OOM killer killed the VMM at its memory limit ({} oom_kill {n}",
                    echo_path(&g.dir.join(file))
                );
                if let Some(extra) = extra {
                    if let Ok(v) = std::fs::read_to_string(g.dir.join(extra)) {
                        line.push_str(&format!(", {extra} {}", v.trim()));
                    }
                }
                line.push(')');
                return Some(line);
            }
        }
        None
    }

    /// Removes the VM's directories (not the shared parents). A cgroup
    /// stays busy for a moment after its last task died, so each rmdir is
    /// retried for up to two seconds. Returns what could not be removed.
    pub fn remove(&mut self) -> Vec<String> {
        let mut failed = Vec::new();
        for g in self.cgroups.drain(..) {
            let deadline = Instant::now() + Duration::from_secs(2);
            loop {
                match std::fs::remove_dir(&g.dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e)
                        if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline =>
                    {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => {
                        failed.push(format!("cannot remove cgroup {}: {e}", echo_path(&g.dir)));
                        break;
                    }
                }
            }
        }
        failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jail::jailer::config::parse_cgroup;

    const HYBRID: &str = "\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,relatime,cpu,cpuacct 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup /sys/fs/cgroup/pids cgroup rw,relatime,pids 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,name=systemd 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
";

    fn host() -> HostCgroups {
        HostCgroups {
            mounts: parse_mounts(HYBRID),
            known: ["cpuset", "cpu", "cpuacct", "memory", "pids", "hugetlb"]
                .map(String::from)
                .to_vec(),
            v2_controllers: Some(vec!["hugetlb".into()]),
        }
    }

    fn settings(s: &[&str]) -> Vec<CgroupSetting> {
        s.iter().map(|s| parse_cgroup(s).unwrap()).collect()
    }

    #[test]
    fn mounts_parse_with_escapes() {
        let m = parse_mounts("none /a\\040b cgroup rw,memory 0 0\nshort line\n");
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].path, Path::new("/a b"));
        assert_eq!(m[0].options, ["rw", "memory"]);
        assert_eq!(unescape("x\\"), "x\\");
        assert_eq!(unescape("\\04"), "\\04");
    }

    #[test]
    fn v1_groups_settings_by_hierarchy() {
        let s = settings(&[
            "cpu.cfs_quota_us=50000",
            "cpuacct.usage=0",
            "memory.limit_in_bytes=96M",
        ]);
        let p = plan(1, Path::new("husk-vmm"), "vm1", &s, &host()).unwrap();
        assert_eq!(p.cgroups.len(), 2);
        let cpu = &p.cgroups[0];
        assert_eq!(
            cpu.dir,
            Path::new("/sys/fs/cgroup/cpu,cpuacct/husk-vmm/vm1")
        );
        assert_eq!(cpu.controllers, ["cpu", "cpuacct"]);
        assert_eq!(cpu.settings.len(), 2);
        assert_eq!(
            p.cgroups[1].dir,
            Path::new("/sys/fs/cgroup/memory/husk-vmm/vm1")
        );
        // No settings, no v1 cgroups.
        assert!(plan(1, Path::new("p"), "vm1", &[], &host())
            .unwrap()
            .cgroups
            .is_empty());
    }

    #[test]
    fn v2_is_one_directory_always() {
        let p = plan(2, Path::new("a/b"), "vm1", &[], &host()).unwrap();
        assert_eq!(p.cgroups.len(), 1);
        assert_eq!(
            p.cgroups[0].dir,
            Path::new("/sys/fs/cgroup/unified/a/b/vm1")
        );
        let s = settings(&["hugetlb.2MB.max=0", "cgroup.max.descendants=0"]);
        let p = plan(2, Path::new("x"), "vm1", &s, &host()).unwrap();
        assert_eq!(p.cgroups[0].controllers, ["hugetlb"]);
    }

    #[test]
    fn errors_say_which_version_has_the_controller() {
        let e = plan(
            2,
            Path::new("x"),
            "v",
            &settings(&["memory.max=1G"]),
            &host(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("not available in cgroup v2"), "{e}");
        assert!(e.contains("/sys/fs/cgroup/memory"), "{e}");
        assert!(e.contains("--cgroup-version 1"), "{e}");
        let e = plan(
            1,
            Path::new("x"),
            "v",
            &settings(&["hugetlb.2MB.limit_in_bytes=0"]),
            &host(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("only available in cgroup v2"), "{e}");
        let e = plan(1, Path::new("x"), "v", &settings(&["bogus.max=1"]), &host())
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown cgroup controller \"bogus\""), "{e}");
        assert!(e.contains("memory"), "{e}");
        let e = plan(
            2,
            Path::new("x"),
            "v",
            &settings(&["cpuset.cpus=0"]),
            &host(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("not available in cgroup v2"), "{e}");
        let mut no_v2 = host();
        no_v2.mounts.retain(|m| m.fstype != "cgroup2");
        let e = plan(2, Path::new("x"), "v", &[], &no_v2)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no cgroup2"), "{e}");
    }
}
