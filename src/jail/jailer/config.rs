//! The jailer's command line and its validation: every flag is checked
//! here, before anything is created on the host.

use std::ffi::OsStr;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

use super::{JailPaths, JailerError, Result};
use crate::text::echo_path;

/// Firecracker's default open-file limit for the jailed process.
pub const DEFAULT_NO_FILE: u64 = 2048;

/// The command line of `husk jailer`. The flag names are Firecracker's
/// jailer's wherever it has the flag.
#[derive(clap::Args, Debug, Clone)]
pub struct JailerArgs {
    /// The microVM's id: 1 to 64 letters, digits, '-' or '_'. Names the
    /// jail, the cgroup and the UTS hostname, and is passed on as `--id`.
    #[arg(long, value_parser = crate::vmm::run::parse_id)]
    pub id: String,
    /// The VMM binary; copied into the jail as `/<its file name>` and run
    /// from there. It must be statically linked (the jail holds no shared
    /// libraries) unless its loader is brought in with --mount.
    #[arg(long, value_name = "PATH")]
    pub exec_file: PathBuf,
    /// The uid the VMM runs as.
    #[arg(long, value_parser = parse_id_number)]
    pub uid: u32,
    /// The gid the VMM runs as (it keeps no supplementary groups).
    #[arg(long, value_parser = parse_id_number)]
    pub gid: u32,
    /// A cgroup file to write, `FILE=VALUE` (e.g. `memory.max=256M` with
    /// v2, `memory.limit_in_bytes=256M` with v1); the controller is the
    /// part before the first dot. Repeatable.
    #[arg(long = "cgroup", value_name = "FILE=VALUE", value_parser = parse_cgroup)]
    pub cgroups: Vec<CgroupSetting>,
    /// The cgroup hierarchy: 2 (the unified one) or 1 (one per controller,
    /// found in /proc/mounts).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=2))]
    pub cgroup_version: u8,
    /// The cgroup, relative to each hierarchy's root, that the VM's cgroup
    /// `<id>` is made in (default: the exec file's name).
    #[arg(long, value_name = "RELATIVE_PATH")]
    pub parent_cgroup: Option<String>,
    /// A network namespace to join (e.g. /var/run/netns/NAME).
    #[arg(long, value_name = "PATH")]
    pub netns: Option<PathBuf>,
    /// Where jails are made: `<DIR>/<exec file name>/<id>/root`.
    #[arg(long, value_name = "DIR", default_value = "/srv/jailer")]
    pub chroot_base_dir: PathBuf,
    /// An rlimit, `fsize=BYTES`, `no-file=N` or `memlock=BYTES`
    /// (repeatable); no-file is 2048 unless given.
    #[arg(long = "resource-limit", value_name = "RESOURCE=VALUE", value_parser = parse_resource_limit)]
    pub resource_limits: Vec<ResourceLimit>,
    /// Accepted for Firecracker compatibility: the VMM always gets a new
    /// PID namespace, and its host pid is written to
    /// `<root>/<exec file name>.pid`.
    #[arg(long)]
    pub new_pid_ns: bool,
    /// Detach: the jailer returns once the VMM has exec'd (or prints why it
    /// could not), and a detached jailer, its stdio on /dev/null, waits for
    /// the VMM and cleans up.
    #[arg(long)]
    pub daemonize: bool,
    /// Bind a host file or directory into the jail at JAIL (an absolute
    /// path inside the jail), read-only with `:ro`. Repeatable.
    #[arg(long = "mount", value_name = "HOST:JAIL[:ro]", value_parser = parse_mount)]
    pub mounts: Vec<MountSpec>,
    /// The VMM's own arguments, after `--`; paths in them are paths inside
    /// the jail.
    #[arg(last = true, value_name = "VMM-ARGS")]
    pub vmm_args: Vec<String>,
}

/// One `--cgroup FILE=VALUE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupSetting {
    pub file: String,
    pub value: String,
}

impl CgroupSetting {
    /// The part of the file name before the first dot.
    pub fn controller(&self) -> &str {
        self.file.split('.').next().unwrap_or_default()
    }
}

/// Files the jailer itself uses to place the VMM; setting them by hand
/// would undo the jail.
const RESERVED_CGROUP_FILES: &[&str] = &[
    "cgroup.procs",
    "cgroup.threads",
    "cgroup.subtree_control",
    "cgroup.kill",
    "cgroup.type",
];

pub fn parse_cgroup(s: &str) -> std::result::Result<CgroupSetting, String> {
    let Some((file, value)) = s.split_once('=') else {
        return Err("expected FILE=VALUE, e.g. memory.max=256M".into());
    };
    let plain = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.';
    if file.is_empty() || !file.chars().all(plain) {
        return Err(format!(
            "{file:?} is not a cgroup file name (letters, digits, '.', '_', '-')"
        ));
    }
    let Some((controller, rest)) = file.split_once('.') else {
        return Err(format!(
            "{file:?} has no dot: a cgroup file is CONTROLLER.SETTING, e.g. memory.max"
        ));
    };
    if controller.is_empty() || rest.is_empty() || rest.starts_with('.') {
        return Err(format!("{file:?} is not CONTROLLER.SETTING"));
    }
    if RESERVED_CGROUP_FILES.contains(&file) {
        return Err(format!("{file} is the jailer's to write, not a setting"));
    }
    if value.is_empty() || value.contains(['\n', '\0']) {
        return Err(format!("{file}: the value must be one non-empty line"));
    }
    Ok(CgroupSetting {
        file: file.into(),
        value: value.into(),
    })
}

/// The rlimits `--resource-limit` can set, by Firecracker's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// `fsize`: the largest file the VMM may write, in bytes.
    FileSize,
    /// `no-file`: one more than the highest fd number it may open.
    NoFile,
    /// `memlock`: bytes it may lock in memory.
    MemLock,
}

impl Resource {
    pub fn rlimit(self) -> libc::__rlimit_resource_t {
        match self {
            Resource::FileSize => libc::RLIMIT_FSIZE,
            Resource::NoFile => libc::RLIMIT_NOFILE,
            Resource::MemLock => libc::RLIMIT_MEMLOCK,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Resource::FileSize => "fsize",
            Resource::NoFile => "no-file",
            Resource::MemLock => "memlock",
        }
    }
}

/// One `--resource-limit RESOURCE=VALUE`: soft and hard limit both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceLimit {
    pub resource: Resource,
    pub value: u64,
}

pub fn parse_resource_limit(s: &str) -> std::result::Result<ResourceLimit, String> {
    let (name, value) = s
        .split_once('=')
        .ok_or("expected RESOURCE=VALUE, e.g. no-file=1024")?;
    let resource = match name {
        "fsize" => Resource::FileSize,
        "no-file" => Resource::NoFile,
        "memlock" => Resource::MemLock,
        _ => {
            return Err(format!(
                "unknown resource {name:?} (fsize, no-file, memlock)"
            ))
        }
    };
    let value = value
        .parse::<u64>()
        .map_err(|_| format!("{name}: {value:?} is not a whole number"))?;
    if resource == Resource::NoFile && value < 8 {
        return Err("no-file below 8 leaves the VMM no room to run".into());
    }
    Ok(ResourceLimit { resource, value })
}

/// One `--mount HOST:JAIL[:ro]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    pub host: PathBuf,
    /// Absolute and normalized: no `.`, `..` or empty components.
    pub jail: PathBuf,
    pub read_only: bool,
}

pub fn parse_mount(s: &str) -> std::result::Result<MountSpec, String> {
    let (rest, read_only) = if let Some(r) = s.strip_suffix(":ro") {
        (r, true)
    } else if let Some(r) = s.strip_suffix(":rw") {
        (r, false)
    } else {
        (s, false)
    };
    let (host, jail) = rest
        .rsplit_once(':')
        .ok_or("expected HOST:JAIL or HOST:JAIL:ro")?;
    if host.is_empty() {
        return Err("the host path is empty".into());
    }
    Ok(MountSpec {
        host: host.into(),
        jail: jail_path(jail)?,
        read_only,
    })
}

/// Checks a path inside the jail: absolute, no `..`, not `/`.
pub fn jail_path(p: &str) -> std::result::Result<PathBuf, String> {
    if !p.starts_with('/') {
        return Err(format!(
            "{p:?} is not an absolute path inside the jail (e.g. /kernel)"
        ));
    }
    let mut out = PathBuf::from("/");
    for c in Path::new(p).components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(format!("{p:?} climbs with '..': jail paths cannot escape"))
            }
        }
    }
    if out == Path::new("/") {
        return Err("a mount cannot cover the jail's root".into());
    }
    Ok(out)
}

/// uid and gid: any number but -1, which the set*id calls read as "leave
/// unchanged" and so would keep root.
fn parse_id_number(s: &str) -> std::result::Result<u32, String> {
    match s.parse::<u32>() {
        Ok(u32::MAX) => Err("4294967295 means \"unchanged\" to the kernel".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{s:?} is not a number")),
    }
}

/// What a `--mount` source is; decides how its target is made and which
/// permission bits it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    Dir,
    File,
    Socket,
    /// A character or block device (a drive on a block device): bound
    /// without `nodev`.
    Device,
    /// A FIFO.
    Fifo,
}

/// A checked `--mount`.
#[derive(Debug, Clone)]
pub struct CheckedMount {
    pub spec: MountSpec,
    /// The host path with symlinks resolved.
    pub host: PathBuf,
    pub kind: SourceKind,
}

/// The jailer's validated plan: everything `husk jailer` was told, with
/// paths resolved and checked.
#[derive(Debug, Clone)]
pub struct Plan {
    pub id: String,
    pub exec_file: PathBuf,
    pub paths: JailPaths,
    pub uid: u32,
    pub gid: u32,
    pub cgroup_version: u8,
    pub parent_cgroup: PathBuf,
    pub cgroups: Vec<CgroupSetting>,
    pub netns: Option<PathBuf>,
    /// Every rlimit to set, no-file always among them.
    pub rlimits: Vec<ResourceLimit>,
    pub daemonize: bool,
    pub mounts: Vec<CheckedMount>,
    pub vmm_args: Vec<String>,
}

impl Plan {
    /// Checks every flag; creates nothing.
    pub fn new(args: JailerArgs) -> Result<Plan> {
        let invalid = |m: String| Err(JailerError::Invalid(m));
        if !crate::vmm::config::is_plain_id(&args.id) {
            return invalid(format!(
                "--id {:?}: an id is 1 to 64 letters, digits, '-' or '_'",
                args.id
            ));
        }
        let exec_meta = std::fs::metadata(&args.exec_file)
            .map_err(|e| JailerError::io("use --exec-file", &args.exec_file, e))?;
        if !exec_meta.is_file() {
            return invalid(format!(
                "--exec-file {} is not a regular file",
                echo_path(&args.exec_file)
            ));
        }
        let exec_name = exec_name(&args.exec_file)?;
        let base = &args.chroot_base_dir;
        if !base.is_absolute() || base.components().any(|c| c == Component::ParentDir) {
            return invalid(format!(
                "--chroot-base-dir {} must be an absolute path without '..'",
                echo_path(base)
            ));
        }
        if base.exists() && !base.is_dir() {
            return invalid(format!(
                "--chroot-base-dir {} is not a directory",
                echo_path(base)
            ));
        }
        let parent_cgroup = match &args.parent_cgroup {
            Some(p) => relative_cgroup(p)?,
            None => PathBuf::from(&exec_name),
        };
        let mut seen = std::collections::HashSet::new();
        for c in &args.cgroups {
            if !seen.insert(&c.file) {
                return invalid(format!("--cgroup {} is given twice", c.file));
            }
        }
        if let Some(ns) = &args.netns {
            let m = std::fs::metadata(ns).map_err(|e| JailerError::io("use --netns", ns, e))?;
            if m.is_dir() {
                return invalid(format!(
                    "--netns {} is a directory, not a namespace file",
                    echo_path(ns)
                ));
            }
        }
        if let Some(a) = args
            .vmm_args
            .iter()
            .find(|a| *a == "--id" || a.starts_with("--id="))
        {
            return invalid(format!(
                "{a:?} after '--': the jailer passes --id itself (use the jailer's --id)"
            ));
        }
        let paths = JailPaths::new(base, &exec_name, &args.id);
        let mounts = check_mounts(&args.mounts, &exec_name, args.uid, args.gid)?;
        check_loader(&args.exec_file, &mounts)?;
        let mut rlimits = Vec::new();
        for l in &args.resource_limits {
            rlimits.retain(|r: &ResourceLimit| r.resource != l.resource);
            rlimits.push(*l);
        }
        if !rlimits.iter().any(|r| r.resource == Resource::NoFile) {
            rlimits.push(ResourceLimit {
                resource: Resource::NoFile,
                value: DEFAULT_NO_FILE,
            });
        }
        Ok(Plan {
            id: args.id,
            // Absolute, so a detached jailer can leave its working directory.
            exec_file: std::fs::canonicalize(&args.exec_file)
                .map_err(|e| JailerError::io("resolve --exec-file", &args.exec_file, e))?,
            paths,
            uid: args.uid,
            gid: args.gid,
            cgroup_version: args.cgroup_version,
            parent_cgroup,
            cgroups: args.cgroups,
            netns: match args.netns {
                Some(ns) => Some(
                    std::fs::canonicalize(&ns)
                        .map_err(|e| JailerError::io("resolve --netns", &ns, e))?,
                ),
                None => None,
            },
            rlimits,
            daemonize: args.daemonize,
            mounts,
            vmm_args: args.vmm_args,
        })
    }
}

/// The exec file's name: it becomes a path component and a cgroup name.
fn exec_name(exec: &Path) -> Result<String> {
    let name = exec.file_name().and_then(OsStr::to_str).unwrap_or_default();
    let plain = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.';
    if name.is_empty() || name.starts_with('.') || !name.chars().all(plain) || name.len() > 64 {
        return Err(JailerError::Invalid(format!(
            "--exec-file {}: its file name must be 1 to 64 letters, digits, '.', '_' or '-', \
             not starting with '.'",
            echo_path(exec)
        )));
    }
    Ok(name.to_string())
}

/// `--parent-cgroup`: a relative path of plain components.
fn relative_cgroup(p: &str) -> Result<PathBuf> {
    let ok = !p.is_empty()
        && !p.starts_with('/')
        && p.split('/').all(|c| {
            !c.is_empty()
                && c != "."
                && c != ".."
                && c.chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "-_.:@".contains(ch))
        });
    if !ok {
        return Err(JailerError::Invalid(format!(
            "--parent-cgroup {p:?} must be a relative path of plain names (e.g. vms/tenant-a)"
        )));
    }
    Ok(PathBuf::from(p))
}

/// Whether uid/gid (with no supplementary groups) get `want` (a mask of
/// 4 = read, 2 = write, 1 = execute/search) on a file with `mode`,
/// owned by `owner`:`group`. Root gets everything, as the kernel allows it
/// (it keeps no capabilities, but uid 0 still owns what it owns; the
/// check is for the usual unprivileged case).
pub fn may_access(mode: u32, owner: u32, group: u32, uid: u32, gid: u32, want: u32) -> bool {
    if uid == 0 {
        return true;
    }
    let bits = if uid == owner {
        (mode >> 6) & 7
    } else if gid == group {
        (mode >> 3) & 7
    } else {
        mode & 7
    };
    bits & want == want
}

/// Targets the jail reserves for itself.
fn reserved_target(jail: &Path, exec_name: &str) -> Option<&'static str> {
    let under = |p: &str| jail == Path::new(p) || jail.starts_with(p);
    if under("/dev") {
        Some("/dev is the jail's own (kvm, net/tun, userfaultfd)")
    } else if under("/proc") {
        Some("/proc is the jail's own proc")
    } else if jail == Path::new("/run") {
        Some("/run is the VMM's writable directory; mount into it, not over it")
    } else if jail == Path::new("/").join(exec_name)
        || jail == Path::new("/").join(format!("{exec_name}.pid"))
    {
        Some("that is the exec file's copy or its pid file")
    } else {
        None
    }
}

fn check_mounts(
    specs: &[MountSpec],
    exec_name: &str,
    uid: u32,
    gid: u32,
) -> Result<Vec<CheckedMount>> {
    let mut out: Vec<CheckedMount> = Vec::new();
    for spec in specs {
        let shown = echo_path(&spec.host);
        if let Some(why) = reserved_target(&spec.jail, exec_name) {
            return Err(JailerError::Invalid(format!(
                "--mount {shown}:{}: {why}",
                echo_path(&spec.jail)
            )));
        }
        for other in &out {
            let (a, b) = (&other.spec.jail, &spec.jail);
            if a == b {
                return Err(JailerError::Invalid(format!(
                    "--mount: two mounts target {}",
                    echo_path(a)
                )));
            }
            if a.starts_with(b) || b.starts_with(a) {
                return Err(JailerError::Invalid(format!(
                    "--mount: {} and {} nest; mount targets cannot lie inside one another",
                    echo_path(a),
                    echo_path(b)
                )));
            }
        }
        let host = std::fs::canonicalize(&spec.host)
            .map_err(|e| JailerError::io("use --mount source", &spec.host, e))?;
        let meta = std::fs::metadata(&host)
            .map_err(|e| JailerError::io("use --mount source", &host, e))?;
        let ft = meta.file_type();
        let kind = if ft.is_dir() {
            SourceKind::Dir
        } else if ft.is_file() {
            SourceKind::File
        } else if ft.is_socket() {
            SourceKind::Socket
        } else if ft.is_char_device() || ft.is_block_device() {
            SourceKind::Device
        } else {
            SourceKind::Fifo
        };
        // Read for everything; write for read-write mounts and always for
        // sockets (connecting needs it, even on a read-only mount); search
        // for directories.
        let mut want = 4;
        if !spec.read_only || kind == SourceKind::Socket {
            want |= 2;
        }
        if kind == SourceKind::Dir {
            want |= 1;
        }
        if !may_access(meta.mode(), meta.uid(), meta.gid(), uid, gid, want) {
            let need = match (want & 2 != 0, want & 1 != 0) {
                (true, true) => "read, write and enter",
                (true, false) => "read and write",
                (false, true) => "read and enter",
                (false, false) => "read",
            };
            return Err(JailerError::Access {
                path: shown,
                uid,
                gid,
                need,
                mode: meta.mode() & 0o7777,
                owner: meta.uid(),
                group: meta.gid(),
            });
        }
        out.push(CheckedMount {
            spec: spec.clone(),
            host,
            kind,
        });
    }
    Ok(out)
}

/// The jail holds no shared libraries: a dynamically linked exec file
/// would fail to exec with a bare ENOENT, so say why now, unless its
/// loader is brought in with --mount.
fn check_loader(exec: &Path, mounts: &[CheckedMount]) -> Result<()> {
    use std::io::Read;
    // The program headers and the loader's name sit at the front.
    let mut bytes = Vec::new();
    std::fs::File::open(exec)
        .and_then(|f| f.take(64 << 10).read_to_end(&mut bytes))
        .map_err(|e| JailerError::io("read", exec, e))?;
    let Some(interp) = elf_interpreter(&bytes) else {
        return Ok(());
    };
    if mounts.iter().any(|m| m.spec.jail == Path::new(&interp)) {
        return Ok(());
    }
    Err(JailerError::Invalid(format!(
        "--exec-file {} is dynamically linked (loader {interp}); the jail holds no shared \
         libraries: build it statically or --mount the loader and libraries",
        echo_path(exec)
    )))
}

/// The PT_INTERP path of a 64-bit little-endian ELF file, if it has one.
pub fn elf_interpreter(b: &[u8]) -> Option<String> {
    let u16_at = |o: usize| b.get(o..o + 2).map(|s| u16::from_le_bytes([s[0], s[1]]));
    let u64_at = |o: usize| {
        b.get(o..o + 8)
            .and_then(|s| s.try_into().ok())
            .map(u64::from_le_bytes)
    };
    if b.get(..5)? != b"\x7fELF\x02" || *b.get(5)? != 1 {
        return None;
    }
    let phoff = usize::try_from(u64_at(0x20)?).ok()?;
    let phentsize = usize::from(u16_at(0x36)?);
    let phnum = usize::from(u16_at(0x38)?);
    for i in 0..phnum {
        let ph = phoff.checked_add(i.checked_mul(phentsize)?)?;
        if u32::from(u16_at(ph)?) | (u32::from(u16_at(ph + 2)?) << 16) != 3 {
            continue; // not PT_INTERP
        }
        let off = usize::try_from(u64_at(ph + 8)?).ok()?;
        let size = usize::try_from(u64_at(ph + 32)?).ok()?;
        let raw = b.get(off..off.checked_add(size)?)?;
        let s = raw.split(|&c| c == 0).next()?;
        return Some(String::from_utf8_lossy(s).into_owned());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_settings() {
        let c = parse_cgroup("memory.max=256M").unwrap();
        assert_eq!((c.controller(), c.value.as_str()), ("memory", "256M"));
        assert_eq!(
            parse_cgroup("cpu.max=50000 100000").unwrap().value,
            "50000 100000"
        );
        assert_eq!(
            parse_cgroup("cpuset.cpus=0-1").unwrap().controller(),
            "cpuset"
        );
        for bad in [
            "memory",
            "memorymax=1",
            ".max=1",
            "memory.=1",
            "memory.max=",
            "../memory.max=1",
            "memory/x.max=1",
            "cgroup.procs=1",
            "memory.max=1\n2",
        ] {
            assert!(parse_cgroup(bad).is_err(), "{bad}");
        }
        assert!(parse_cgroup("memorymax=1").unwrap_err().contains("no dot"));
    }

    #[test]
    fn resource_limits() {
        assert_eq!(
            parse_resource_limit("fsize=250000000").unwrap(),
            ResourceLimit {
                resource: Resource::FileSize,
                value: 250_000_000
            }
        );
        assert_eq!(
            parse_resource_limit("no-file=1024").unwrap().resource,
            Resource::NoFile
        );
        for bad in ["nofile=1", "no-file", "fsize=-1", "fsize=1k", "no-file=2"] {
            assert!(parse_resource_limit(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn mounts() {
        let m = parse_mount("/a:b/c:/kernel:ro").unwrap();
        assert_eq!(m.host, Path::new("/a:b/c"));
        assert_eq!(m.jail, Path::new("/kernel"));
        assert!(m.read_only);
        let m = parse_mount("disk.img:/drives//./root.img").unwrap();
        assert_eq!(m.jail, Path::new("/drives/root.img"));
        assert!(!m.read_only);
        assert!(!parse_mount("/x:/y:rw").unwrap().read_only);
        for bad in ["/x", "/x:y", "/x:/", "/x:/../etc", "/x:/a/../../b", ":/y"] {
            assert!(parse_mount(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn reserved_targets() {
        for p in [
            "/dev",
            "/dev/kvm",
            "/proc/self",
            "/run",
            "/husk-vmm",
            "/husk-vmm.pid",
        ] {
            assert!(reserved_target(Path::new(p), "husk-vmm").is_some(), "{p}");
        }
        for p in ["/run/api.sock", "/kernel", "/devices"] {
            assert!(reserved_target(Path::new(p), "husk-vmm").is_none(), "{p}");
        }
    }

    #[test]
    fn access_from_mode_bits() {
        // owner bits
        assert!(may_access(0o600, 10, 20, 10, 99, 6));
        assert!(!may_access(0o400, 10, 20, 10, 99, 6));
        // group bits, not other
        assert!(may_access(0o640, 1, 20, 10, 20, 4));
        assert!(!may_access(0o604, 1, 20, 10, 20, 4));
        // other bits
        assert!(may_access(0o644, 1, 2, 10, 20, 4));
        assert!(!may_access(0o644, 1, 2, 10, 20, 2));
        assert!(!may_access(0o644, 1, 2, 10, 20, 5));
        // owner bits win even when other bits would allow
        assert!(!may_access(0o007, 10, 2, 10, 20, 4));
        assert!(may_access(0o000, 1, 2, 0, 0, 7));
    }

    #[test]
    fn parent_cgroups() {
        assert_eq!(relative_cgroup("vms/a-1").unwrap(), Path::new("vms/a-1"));
        for bad in ["", "/vms", "vms/../x", "vms//x", "./x", "a b"] {
            assert!(relative_cgroup(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn exec_names() {
        assert_eq!(
            exec_name(Path::new("/usr/bin/husk-vmm")).unwrap(),
            "husk-vmm"
        );
        assert_eq!(
            exec_name(Path::new("firecracker-v1.7.0")).unwrap(),
            "firecracker-v1.7.0"
        );
        for bad in ["/", "/x/.hidden", "/x/a b"] {
            assert!(exec_name(Path::new(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn elf_interpreters() {
        let me = std::fs::read("/proc/self/exe").unwrap();
        // Whatever this test binary is, reading it must not panic.
        let _ = elf_interpreter(&me);
        // A minimal ELF with one PT_INTERP header.
        let mut b = vec![0u8; 0x100];
        b[..6].copy_from_slice(b"\x7fELF\x02\x01");
        b[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes());
        b[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        b[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        b[0x40..0x44].copy_from_slice(&3u32.to_le_bytes());
        b[0x48..0x50].copy_from_slice(&0xc0u64.to_le_bytes());
        b[0x60..0x68].copy_from_slice(&8u64.to_le_bytes());
        b[0xc0..0xc8].copy_from_slice(b"/ld.so\0\0");
        assert_eq!(elf_interpreter(&b).as_deref(), Some("/ld.so"));
        // Truncated or garbage input is no ELF, not a panic.
        assert_eq!(elf_interpreter(&b[..0x50]), None);
        assert_eq!(elf_interpreter(b"\x7fELF"), None);
        b[0x20..0x28].copy_from_slice(&(u64::MAX - 8).to_le_bytes());
        b[0x38..0x3a].copy_from_slice(&u16::MAX.to_le_bytes());
        assert_eq!(elf_interpreter(&b), None);
    }
}
