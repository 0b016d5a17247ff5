//! Pod mode: one VM, several containers (`containerd-shim-husk-v2`).
//!
//! With `husk.pod=<tag>` on the kernel command line the agent mounts no
//! root disk: it stays in its initramfs, mounts the virtio-fs share
//! `<tag>` on [`POD_DIR`], and runs each container `Create` names with
//! its root at `/pod/<name>/rootfs` (the host mounted the container's
//! OCI rootfs there), in its own mount, PID, UTS, IPC and cgroup
//! namespaces (UTS and IPC joined from the sandbox container when the
//! host says so), in its own cgroup v2 group with the OCI
//! `linux.resources` applied, with the OCI `mounts` made inside its
//! root. `Exec` with a container name enters those namespaces. A
//! container's end does not end the VM; the host's `Shutdown` does.
//!
//! The initramfs is the guest's root mount and cannot be pivoted away, so
//! a container enters its root with chroot inside its own mount
//! namespace. The VM is the isolation boundary between pods; the
//! containers of one pod trust each other as a Kubernetes pod's do.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;

use super::server::Agent;
use super::setup::{mount, SetupError};
use super::spawn::{self, Context, Launch};
use crate::agent::protocol::{
    CgroupStats, Message, OciMount, PodContainer, ProcessSpec, Resources,
};

/// Where the pod's share is mounted in the guest.
pub const POD_DIR: &str = "/pod";
/// The cgroup v2 hierarchy in the guest.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// `husk.pod=<tag>`: the virtio-fs tag of the pod's share.
pub fn pod_tag(cmdline: &str) -> Option<String> {
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("husk.pod="))
        .filter(|t| !t.is_empty())
        .map(str::to_string)
}

/// The guest's side of a pod, after the early mounts: the share,
/// devpts (the agent allocates TTY processes' terminals here, before
/// they enter their container), and cgroup v2 with the controllers
/// containers are limited by.
pub fn setup(tag: &str) -> Result<(), SetupError> {
    for dir in [POD_DIR, "/dev/pts"] {
        std::fs::create_dir_all(dir).map_err(|err| SetupError::Create {
            path: dir.into(),
            err,
        })?;
    }
    // devtmpfs's /dev/ptmx opens the instance mounted at /dev/pts.
    mount(
        "devpts",
        "/dev/pts",
        "devpts",
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some("ptmxmode=0666,mode=0620,gid=5"),
    )?;
    mount(
        tag,
        POD_DIR,
        "virtiofs",
        libc::MS_NOSUID | libc::MS_NODEV,
        None,
    )?;
    mount(
        "cgroup2",
        CGROUP_ROOT,
        "cgroup2",
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        None,
    )?;
    for c in ["+cpu", "+memory", "+pids"] {
        // A kernel without one of them still runs containers, unlimited.
        if let Err(e) = std::fs::write(format!("{CGROUP_ROOT}/cgroup.subtree_control"), c) {
            eprintln!("husk-agent: warning: cgroup controller {c}: {e}");
        }
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error("invalid container name {0:?}")]
    Name(String),
    #[error("container {0} exists already")]
    Exists(String),
    #[error("no container {0} in this pod")]
    NoContainer(String),
    #[error("the container's root {0} is not a directory (did the host mount it?)")]
    NoRoot(String),
    #[error("cgroup {path}: {err}")]
    Cgroup { path: String, err: io::Error },
    #[error("namespaces: {0}")]
    Namespace(io::Error),
    #[error("this agent does not run a pod")]
    NotPod,
}

/// A running container of the pod.
struct PodCtr {
    root: String,
    main_id: u32,
    main_pid: i32,
    cgroup: String,
    context: Context,
}

/// The pod's containers.
pub struct Pod {
    containers: BTreeMap<String, PodCtr>,
    /// The agent's own PID namespace, to return to after starting a
    /// process in a container's.
    own_pidns: OwnedFd,
}

impl Pod {
    pub fn new() -> io::Result<Pod> {
        Ok(Pod {
            containers: BTreeMap::new(),
            own_pidns: open_ns("/proc/self/ns/pid")?,
        })
    }
}

fn open_ns(path: &str) -> io::Result<OwnedFd> {
    let c = CString::new(path).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: a valid path string; the result is checked.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn setns(fd: &OwnedFd, kind: libc::c_int) -> io::Result<()> {
    // SAFETY: setns on a namespace descriptor we hold; no pointers.
    if unsafe { libc::setns(fd.as_raw_fd(), kind) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n != "."
        && n != ".."
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// What a child does to enter its container, between fork and exec,
/// before it drops to its user.
#[derive(Debug, Default)]
pub struct Enter {
    /// The group's `cgroup.procs`.
    cgroup_procs: Option<CString>,
    /// Namespaces joined first.
    join: Vec<(OwnedFd, libc::c_int)>,
    /// Then new namespaces (`CLONE_*`).
    unshare: libc::c_int,
    /// A new container: its mounts (in its new mount namespace).
    mounts: Vec<OciMount>,
    readonly_root: bool,
    hostname: Option<CString>,
    root: String,
}

fn err() -> io::Error {
    io::Error::last_os_error()
}

impl Enter {
    pub fn root_path(&self) -> &str {
        &self.root
    }

    /// Runs in the child. Allocation is fine here: the agent is
    /// single-threaded, so no other thread can hold a lock at the fork.
    pub fn run(&self) -> io::Result<()> {
        if let Some(procs) = &self.cgroup_procs {
            // SAFETY: a valid path; "0" is the writing process.
            unsafe {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(err());
                }
                libc::close(fd);
            }
        }
        for (fd, kind) in &self.join {
            setns(fd, *kind)?;
        }
        // SAFETY: unshare takes no pointers.
        if self.unshare != 0 && unsafe { libc::unshare(self.unshare) } != 0 {
            return Err(err());
        }
        if self.unshare & libc::CLONE_NEWNS != 0 {
            self.make_root()?;
        }
        if let Some(h) = &self.hostname {
            // SAFETY: the pointer and length describe the name's bytes.
            if unsafe { libc::sethostname(h.as_ptr(), h.as_bytes().len()) } != 0 {
                return Err(err());
            }
        }
        let root = CString::new(self.root.as_str())?;
        // SAFETY: valid path strings.
        unsafe {
            if libc::chroot(root.as_ptr()) != 0 || libc::chdir(c"/".as_ptr()) != 0 {
                return Err(err());
            }
        }
        Ok(())
    }

    /// In a new mount namespace: the root bound onto itself, the OCI
    /// mounts inside it, then read-only when asked.
    fn make_root(&self) -> io::Result<()> {
        let m = |src: &str, dst: &str, fs: &str, flags, data: Option<&str>| {
            mount(src, dst, fs, flags, data).map_err(|e| io::Error::other(e.to_string()))
        };
        m("none", "/", "", libc::MS_REC | libc::MS_PRIVATE, None)?;
        m(
            &self.root,
            &self.root,
            "",
            libc::MS_BIND | libc::MS_REC,
            None,
        )?;
        for om in &self.mounts {
            mount_one(&self.root, om)?;
        }
        if self.readonly_root {
            m(
                &self.root,
                &self.root,
                "",
                libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY,
                None,
            )?;
        }
        Ok(())
    }
}

/// Mount flags and the filesystem data of OCI mount options.
pub fn mount_options(options: &[String]) -> (libc::c_ulong, String) {
    let mut flags: libc::c_ulong = 0;
    let mut data: Vec<&str> = Vec::new();
    for o in options {
        match o.as_str() {
            "ro" => flags |= libc::MS_RDONLY,
            "rw" | "defaults" | "private" | "rprivate" | "slave" | "rslave" | "shared"
            | "rshared" | "unbindable" | "runbindable" => {}
            "nosuid" => flags |= libc::MS_NOSUID,
            "nodev" => flags |= libc::MS_NODEV,
            "noexec" => flags |= libc::MS_NOEXEC,
            "relatime" => flags |= libc::MS_RELATIME,
            "strictatime" => flags |= libc::MS_STRICTATIME,
            "noatime" => flags |= libc::MS_NOATIME,
            "sync" => flags |= libc::MS_SYNCHRONOUS,
            "bind" => flags |= libc::MS_BIND,
            "rbind" => flags |= libc::MS_BIND | libc::MS_REC,
            "suid" | "dev" | "exec" | "atime" | "async" => {}
            other => data.push(other),
        }
    }
    (flags, data.join(","))
}

/// Devices a container's `/dev` tmpfs gets from the guest's.
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

fn mount_one(root: &str, om: &OciMount) -> io::Result<()> {
    let dest = om.destination.trim_start_matches('/');
    if dest.split('/').any(|s| s == "..") || om.destination.contains('\0') {
        return Err(io::Error::other(format!(
            "invalid mount destination {:?}",
            om.destination
        )));
    }
    let target = format!("{root}/{dest}");
    let (mut flags, data) = mount_options(&om.options);
    let bind = om.kind == "bind" || flags & libc::MS_BIND != 0;
    let m = |src: &str, fs: &str, flags, data: Option<&str>| {
        mount(src, &target, fs, flags, data).map_err(|e| io::Error::other(e.to_string()))
    };
    if bind {
        let src = Path::new(&om.source);
        if src.is_dir() {
            std::fs::create_dir_all(&target)?;
        } else {
            if let Some(p) = Path::new(&target).parent() {
                std::fs::create_dir_all(p)?;
            }
            if !Path::new(&target).exists() {
                std::fs::write(&target, b"")?;
            }
        }
        flags |= libc::MS_BIND;
        m(&om.source, "", flags & (libc::MS_BIND | libc::MS_REC), None)?;
        if flags & !(libc::MS_BIND | libc::MS_REC) != 0 {
            m(&om.source, "", flags | libc::MS_REMOUNT, None)?;
        }
        return Ok(());
    }
    std::fs::create_dir_all(&target)?;
    let (source, fstype) = match om.kind.as_str() {
        "cgroup" | "cgroup2" => ("cgroup2", "cgroup2"),
        k => (om.source.as_str(), k),
    };
    let data = (!data.is_empty() && fstype != "cgroup2").then_some(data.as_str());
    m(source, fstype, flags, data)?;
    if om.destination == "/dev" {
        for d in DEVICES {
            let t = format!("{target}/{d}");
            std::fs::write(&t, b"")?;
            mount(&format!("/dev/{d}"), &t, "", libc::MS_BIND, None)
                .map_err(|e| io::Error::other(e.to_string()))?;
        }
        for (link, to) in [
            ("ptmx", "pts/ptmx"),
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
        ] {
            let _ = std::os::unix::fs::symlink(to, format!("{target}/{link}"));
        }
    }
    Ok(())
}

/// Creates the container's cgroup and applies its limits.
fn make_cgroup(name: &str, r: &Resources) -> Result<String, PodError> {
    let dir = format!("{CGROUP_ROOT}/{name}");
    if !Path::new(&dir).exists() {
        std::fs::create_dir(&dir).map_err(|err| PodError::Cgroup {
            path: dir.clone(),
            err,
        })?;
    }
    apply_resources(&dir, r)?;
    Ok(dir)
}

/// Writes the limits `r` gives into cgroup `dir`; the others stay.
fn apply_resources(dir: &str, r: &Resources) -> Result<(), PodError> {
    let mut writes: Vec<(&str, String)> = Vec::new();
    if let Some(m) = r.memory_max.filter(|m| *m > 0) {
        writes.push(("memory.max", m.to_string()));
    }
    if r.cpu_quota.is_some() || r.cpu_period.is_some() {
        let quota = match r.cpu_quota {
            Some(q) if q > 0 => q.to_string(),
            _ => "max".into(),
        };
        writes.push((
            "cpu.max",
            format!("{quota} {}", r.cpu_period.unwrap_or(100_000)),
        ));
    }
    if let Some(s) = r.cpu_shares.filter(|s| *s > 0) {
        writes.push(("cpu.weight", cpu_weight(s).to_string()));
    }
    if let Some(p) = r.pids_max.filter(|p| *p > 0) {
        writes.push(("pids.max", p.to_string()));
    }
    for (file, value) in writes {
        let path = format!("{dir}/{file}");
        std::fs::write(&path, value).map_err(|err| PodError::Cgroup { path, err })?;
    }
    Ok(())
}

/// runc's conversion of OCI cpu shares to cgroup v2 `cpu.weight`.
fn cpu_weight(shares: u64) -> u64 {
    let s = shares.clamp(2, 262_144);
    1 + ((s - 2) * 9999) / 262_142
}

/// `max` or a number.
fn limit(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// `key value` lines (`memory.stat`, `cpu.stat`, `memory.events`).
fn flat_keyed(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// The figures of cgroup `dir`; a file the kernel lacks (no swap, no cpu
/// controller) reads as zero or unset.
fn read_stats(dir: &str) -> CgroupStats {
    let read = |f: &str| std::fs::read_to_string(format!("{dir}/{f}")).unwrap_or_default();
    let cpu_max = read("cpu.max");
    let mut cpu_max = cpu_max.split_whitespace();
    let cpu_max = match (cpu_max.next(), cpu_max.next().and_then(limit)) {
        (Some(q), Some(period)) => Some((limit(q), period)),
        _ => None,
    };
    CgroupStats {
        memory_current: limit(&read("memory.current")).unwrap_or(0),
        memory_max: limit(&read("memory.max")),
        swap_current: limit(&read("memory.swap.current")).unwrap_or(0),
        memory_stat: flat_keyed(&read("memory.stat")),
        memory_events: flat_keyed(&read("memory.events")),
        cpu_stat: flat_keyed(&read("cpu.stat")),
        cpu_max,
        cpu_weight: limit(&read("cpu.weight")),
        pids_current: limit(&read("pids.current")).unwrap_or(0),
        pids_max: limit(&read("pids.max")),
    }
}

impl Agent {
    fn pod_mut(&mut self) -> Result<&mut Pod, PodError> {
        self.pod.as_mut().ok_or(PodError::NotPod)
    }

    /// `Create`: a new container of the pod, its main process as `id`.
    pub(super) fn create(&mut self, id: u32, c: PodContainer) {
        if let Err(e) = self.try_create(id, c) {
            self.send(&Message::Error {
                id: Some(id),
                message: e.to_string(),
                exit_code: None,
            });
        }
    }

    fn try_create(&mut self, id: u32, c: PodContainer) -> Result<(), PodError> {
        if !valid_name(&c.name) {
            return Err(PodError::Name(crate::text::echo(&c.name).into_owned()));
        }
        if self.procs.contains_key(&id) {
            return Err(PodError::Exists(format!("process {id}")));
        }
        let pod = self.pod_mut()?;
        if pod.containers.contains_key(&c.name) {
            return Err(PodError::Exists(c.name));
        }
        let root = format!("{POD_DIR}/{}/rootfs", c.name);
        if !Path::new(&root).is_dir() {
            return Err(PodError::NoRoot(root));
        }
        let mut join = Vec::new();
        let mut unshare = libc::CLONE_NEWNS | libc::CLONE_NEWCGROUP;
        match c.join.as_deref().and_then(|j| pod.containers.get(j)) {
            Some(sandbox) => {
                for (ns, kind) in [("uts", libc::CLONE_NEWUTS), ("ipc", libc::CLONE_NEWIPC)] {
                    let fd = open_ns(&format!("/proc/{}/ns/{ns}", sandbox.main_pid))
                        .map_err(PodError::Namespace)?;
                    join.push((fd, kind));
                }
            }
            None => unshare |= libc::CLONE_NEWUTS | libc::CLONE_NEWIPC,
        }
        let cgroup = make_cgroup(&c.name, &c.resources)?;
        let hostname = match (&c.hostname, c.join.is_some()) {
            (Some(h), false) => Some(
                CString::new(h.as_str())
                    .map_err(|_| PodError::Name(format!("hostname {}", crate::text::echo(h))))?,
            ),
            _ => None,
        };
        let enter = Enter {
            cgroup_procs: CString::new(format!("{cgroup}/cgroup.procs")).ok(),
            join,
            unshare,
            mounts: c.mounts.clone(),
            readonly_root: c.readonly_root,
            hostname,
            root: root.clone(),
        };
        let context = Context {
            env: c.process.env.clone(),
            cwd: c.process.working_dir.clone().unwrap_or_else(|| "/".into()),
            user: c.process.user.clone(),
        };
        let spec = ProcessSpec {
            env: Vec::new(),
            ..c.process.clone()
        };
        let launch = self.pod_launch(&spec, &context, &root, &c.groups, enter);
        let launch = match launch {
            Ok(l) => l,
            Err(e) => {
                let _ = std::fs::remove_dir(&cgroup);
                return Err(e);
            }
        };
        // The main process is PID 1 of a new PID namespace.
        // SAFETY: unshare takes no pointers; it only changes the namespace
        // of this process's next children.
        if unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
            return Err(PodError::Namespace(err()));
        }
        let started = self.launch(id, &launch);
        self.back_to_own_pidns();
        if !started {
            let _ = std::fs::remove_dir(&cgroup);
            return Ok(());
        }
        let main_pid = self.procs.get(&id).map_or(0, |p| p.pid);
        let pod = self.pod_mut()?;
        pod.containers.insert(
            c.name,
            PodCtr {
                root,
                main_id: id,
                main_pid,
                cgroup,
                context,
            },
        );
        Ok(())
    }

    fn back_to_own_pidns(&mut self) {
        if let Some(pod) = &self.pod {
            if let Err(e) = setns(&pod.own_pidns, libc::CLONE_NEWPID) {
                eprintln!("husk-agent: cannot return to its PID namespace: {e}");
            }
        }
    }

    fn pod_launch(
        &self,
        spec: &ProcessSpec,
        ctx: &Context,
        root: &str,
        groups: &[u32],
        enter: Enter,
    ) -> Result<Launch, PodError> {
        let mut l = spawn::exec_launch(spec, ctx, Path::new(root))
            .map_err(|e| PodError::Namespace(io::Error::other(e.to_string())))?;
        for g in groups {
            if !l.identity.groups.contains(g) {
                l.identity.groups.push(*g);
            }
        }
        l.enter = Some(Arc::new(enter));
        Ok(l)
    }

    /// `Exec` in the pod's container `name`.
    pub(super) fn exec_in(&mut self, id: u32, name: &str, spec: ProcessSpec) {
        if let Err(e) = self.try_exec_in(id, name, spec) {
            self.send(&Message::Error {
                id: Some(id),
                message: e.to_string(),
                exit_code: None,
            });
        }
    }

    fn try_exec_in(&mut self, id: u32, name: &str, spec: ProcessSpec) -> Result<(), PodError> {
        if self.procs.contains_key(&id) {
            return Err(PodError::Exists(format!("process {id}")));
        }
        let pod = self.pod_mut()?;
        let c = pod
            .containers
            .get(name)
            .ok_or_else(|| PodError::NoContainer(crate::text::echo(name).into_owned()))?;
        let mut join = Vec::new();
        for (ns, kind) in [
            ("cgroup", libc::CLONE_NEWCGROUP),
            ("ipc", libc::CLONE_NEWIPC),
            ("uts", libc::CLONE_NEWUTS),
            ("mnt", libc::CLONE_NEWNS),
        ] {
            let fd = open_ns(&format!("/proc/{}/ns/{ns}", c.main_pid))
                .map_err(|_| PodError::NoContainer(format!("{name} (it has ended)")))?;
            join.push((fd, kind));
        }
        let pidns = open_ns(&format!("/proc/{}/ns/pid", c.main_pid))
            .map_err(|_| PodError::NoContainer(format!("{name} (it has ended)")))?;
        let enter = Enter {
            cgroup_procs: CString::new(format!("{}/cgroup.procs", c.cgroup)).ok(),
            join,
            root: c.root.clone(),
            ..Default::default()
        };
        let (ctx, root) = (c.context.clone(), c.root.clone());
        let launch = self.pod_launch(&spec, &ctx, &root, &[], enter)?;
        setns(&pidns, libc::CLONE_NEWPID).map_err(PodError::Namespace)?;
        self.launch(id, &launch);
        self.back_to_own_pidns();
        Ok(())
    }

    /// `Update` (`resources` given) or `Stats` of the pod's container
    /// `name`: answered with its cgroup's figures.
    pub(super) fn cgroup_request(&mut self, id: u32, name: &str, resources: Option<Resources>) {
        let answer = self.pod_mut().and_then(|pod| {
            let c = pod
                .containers
                .get(name)
                .ok_or_else(|| PodError::NoContainer(crate::text::echo(name).into_owned()))?;
            if let Some(r) = &resources {
                apply_resources(&c.cgroup, r)?;
            }
            Ok(read_stats(&c.cgroup))
        });
        match answer {
            Ok(stats) => self.send(&Message::CgroupStats {
                id,
                stats: Box::new(stats),
            }),
            Err(e) => self.send(&Message::Error {
                id: Some(id),
                message: e.to_string(),
                exit_code: None,
            }),
        }
    }

    /// After process `id` was reported: a container whose main process
    /// it was is gone (its PID namespace took the rest with it), and so
    /// is its cgroup.
    pub(super) fn pod_exited(&mut self, id: u32) {
        let Some(pod) = self.pod.as_mut() else {
            return;
        };
        let Some(name) = pod
            .containers
            .iter()
            .find(|(_, c)| c.main_id == id)
            .map(|(n, _)| n.clone())
        else {
            return;
        };
        if let Some(c) = pod.containers.remove(&name) {
            // Emptied as the PID namespace's last processes are reaped;
            // a group still busy stays (the VM goes with the pod).
            let _ = std::fs::remove_dir(&c.cgroup);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pod_tag_comes_from_the_command_line() {
        assert_eq!(pod_tag("quiet husk.pod=pod x"), Some("pod".into()));
        assert_eq!(pod_tag("quiet husk.pod= x"), None);
        assert_eq!(pod_tag("husk.root=/dev/vda"), None);
    }

    #[test]
    fn container_names_are_plain() {
        for ok in ["abc", "a-b_c.1", &"x".repeat(64)] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "a b", &"x".repeat(65)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn cgroup_files_are_read_as_the_kernel_writes_them() {
        let m = flat_keyed("anon 4096\nfile 8192\npgfault 7\nbad\n");
        assert_eq!(m["anon"], 4096);
        assert_eq!(m["pgfault"], 7);
        assert_eq!(m.len(), 3);
        assert_eq!(limit("max\n"), None);
        assert_eq!(limit("67108864\n"), Some(64 << 20));
        assert_eq!(cpu_weight(1024), 39);
        assert_eq!(cpu_weight(2), 1);
        assert_eq!(cpu_weight(262_144), 10_000);
    }

    #[test]
    fn oci_options_become_flags_and_data() {
        let o = |v: &[&str]| mount_options(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let (f, d) = o(&["nosuid", "strictatime", "mode=755", "size=65536k"]);
        assert_eq!(f, libc::MS_NOSUID | libc::MS_STRICTATIME);
        assert_eq!(d, "mode=755,size=65536k");
        let (f, d) = o(&["rbind", "ro", "rprivate"]);
        assert_eq!(f, libc::MS_BIND | libc::MS_REC | libc::MS_RDONLY);
        assert_eq!(d, "");
    }
}
