//! The guest's filesystems and identity: the early mounts of PID 1, the
//! container's root from its block device, the switch into it, the
//! mounts a container expects inside it, the hostname and `/etc` files,
//! and the end of the VM.

use std::ffi::CString;
use std::io;
use std::path::Path;

use crate::agent::protocol::ContainerSpec;

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("mount {what} on {target}: {err}")]
    Mount {
        what: String,
        target: String,
        err: io::Error,
    },
    #[error("cannot create {path}: {err}")]
    Create { path: String, err: io::Error },
    #[error("the root device {0} did not appear (is the container's disk attached?)")]
    NoRootDevice(String),
    #[error("cannot switch into the container's root: {0}")]
    SwitchRoot(io::Error),
    #[error("cannot set the hostname: {0}")]
    Hostname(io::Error),
    #[error("a path or option holds a NUL byte")]
    Nul,
}

fn cstr(s: &str) -> Result<CString, SetupError> {
    CString::new(s).map_err(|_| SetupError::Nul)
}

/// mount(2), with the error naming what and where.
pub fn mount(
    source: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<(), SetupError> {
    let (s, t, f) = (cstr(source)?, cstr(target)?, cstr(fstype)?);
    let d = data.map(cstr).transpose()?;
    // SAFETY: every pointer is a valid NUL-terminated string (or null for
    // no data) that outlives the call.
    let r = unsafe {
        libc::mount(
            s.as_ptr(),
            t.as_ptr(),
            f.as_ptr(),
            flags,
            d.as_ref().map_or(std::ptr::null(), |d| d.as_ptr().cast()),
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(SetupError::Mount {
            what: format!("{fstype} ({source})"),
            target: target.into(),
            err: io::Error::last_os_error(),
        })
    }
}

fn mkdir(path: &str, mode: u32) -> Result<(), SetupError> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
    {
        Ok(()) => Ok(()),
        Err(err) => Err(SetupError::Create {
            path: path.into(),
            err,
        }),
    }
}

const NOSUID_NODEV_NOEXEC: libc::c_ulong = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;

/// PID 1's first mounts, in the initramfs: enough to find the root disk
/// and read the kernel command line.
pub fn early_mounts() -> Result<(), SetupError> {
    for d in ["/proc", "/sys", "/dev", "/newroot"] {
        mkdir(d, 0o755)?;
    }
    mount("proc", "/proc", "proc", NOSUID_NODEV_NOEXEC, None)?;
    mount("sysfs", "/sys", "sysfs", NOSUID_NODEV_NOEXEC, None)?;
    mount(
        "devtmpfs",
        "/dev",
        "devtmpfs",
        libc::MS_NOSUID,
        Some("mode=0755"),
    )
}

/// What the kernel command line tells the agent.
#[derive(Debug, PartialEq, Eq)]
pub struct BootArgs {
    pub root: String,
    pub rootfstype: String,
    pub read_only: bool,
}

/// `husk.root=` (default `/dev/vda`), `husk.rootfstype=` (default
/// `ext4`) and `husk.ro`.
pub fn boot_args(cmdline: &str) -> BootArgs {
    let mut a = BootArgs {
        root: "/dev/vda".into(),
        rootfstype: "ext4".into(),
        read_only: false,
    };
    for w in cmdline.split_whitespace() {
        if let Some(v) = w.strip_prefix("husk.root=") {
            a.root = v.into();
        } else if let Some(v) = w.strip_prefix("husk.rootfstype=") {
            a.rootfstype = v.into();
        } else if w == "husk.ro" {
            a.read_only = true;
        }
    }
    a
}

/// Mounts the container's disk on /newroot and makes it `/`.
pub fn mount_root_disk(args: &BootArgs) -> Result<(), SetupError> {
    // virtio-blk probes before init runs; a short wait covers a slow
    // udev-less devtmpfs all the same.
    let dev = Path::new(&args.root);
    for _ in 0..100 {
        if dev.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    if !dev.exists() {
        return Err(SetupError::NoRootDevice(args.root.clone()));
    }
    let flags = if args.read_only { libc::MS_RDONLY } else { 0 };
    mount(&args.root, "/newroot", &args.rootfstype, flags, None)?;
    // The early mounts are not needed in the new root; it gets its own.
    for m in ["/proc", "/sys", "/dev"] {
        let c = cstr(m)?;
        // SAFETY: a valid path string; a lazy unmount has no other input.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
    // The initramfs is the root mount and cannot be pivoted away: move
    // the new root over it and chroot (what switch_root does).
    std::env::set_current_dir("/newroot").map_err(SetupError::SwitchRoot)?;
    mount(".", "/", "", libc::MS_MOVE, None)?;
    enter(".")
}

/// chroot into `dir` and go to its `/`.
pub fn enter(dir: &str) -> Result<(), SetupError> {
    let c = cstr(dir)?;
    // SAFETY: a valid path string.
    if unsafe { libc::chroot(c.as_ptr()) } != 0 {
        return Err(SetupError::SwitchRoot(io::Error::last_os_error()));
    }
    std::env::set_current_dir("/").map_err(SetupError::SwitchRoot)
}

/// In a private mount namespace (host tests): bind `dir` onto itself and
/// chroot into it.
pub fn enter_directory(dir: &str) -> Result<(), SetupError> {
    mount("none", "/", "", libc::MS_REC | libc::MS_PRIVATE, None)?;
    mount(dir, dir, "", libc::MS_BIND | libc::MS_REC, None)?;
    enter(dir)
}

/// The mounts a container expects, inside its root.
pub fn container_mounts() -> Result<(), SetupError> {
    let mounts: [(&str, &str, &str, libc::c_ulong, Option<&str>); 8] = [
        ("proc", "/proc", "proc", NOSUID_NODEV_NOEXEC, None),
        ("sysfs", "/sys", "sysfs", NOSUID_NODEV_NOEXEC, None),
        (
            "cgroup2",
            "/sys/fs/cgroup",
            "cgroup2",
            NOSUID_NODEV_NOEXEC,
            None,
        ),
        (
            "devtmpfs",
            "/dev",
            "devtmpfs",
            libc::MS_NOSUID,
            Some("mode=0755"),
        ),
        (
            "devpts",
            "/dev/pts",
            "devpts",
            libc::MS_NOSUID | libc::MS_NOEXEC,
            Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
        ),
        (
            "shm",
            "/dev/shm",
            "tmpfs",
            NOSUID_NODEV_NOEXEC,
            Some("mode=1777"),
        ),
        (
            "tmpfs",
            "/run",
            "tmpfs",
            libc::MS_NOSUID | libc::MS_NODEV,
            Some("mode=0755"),
        ),
        (
            "tmpfs",
            "/tmp",
            "tmpfs",
            libc::MS_NOSUID | libc::MS_NODEV,
            Some("mode=1777"),
        ),
    ];
    for (source, target, fstype, flags, data) in mounts {
        mkdir(target, 0o755)?;
        match mount(source, target, fstype, flags, data) {
            Ok(()) => {}
            // A kernel without cgroup v2 still runs containers.
            Err(e) if fstype == "cgroup2" => eprintln!("husk-agent: warning: {e}"),
            Err(e) => return Err(e),
        }
    }
    for (link, to) in [
        ("/dev/ptmx", "pts/ptmx"),
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        let _ = std::fs::remove_file(link);
        let _ = std::os::unix::fs::symlink(to, link);
    }
    Ok(())
}

/// Writes `/etc/hosts` and, when nameservers are given,
/// `/etc/resolv.conf`, and sets the hostname.
pub fn identity(spec: &ContainerSpec) -> Result<(), SetupError> {
    let hostname = spec.hostname.as_deref().unwrap_or("localhost");
    // SAFETY: the pointer and length describe the hostname's bytes.
    if unsafe { libc::sethostname(hostname.as_ptr().cast(), hostname.len()) } != 0 {
        return Err(SetupError::Hostname(io::Error::last_os_error()));
    }
    mkdir("/etc", 0o755)?;
    let mut hosts =
        String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    if hostname != "localhost" {
        hosts.push_str(&format!("127.0.1.1\t{hostname}\n"));
    }
    for (addr, names) in &spec.hosts {
        hosts.push_str(&format!("{addr}\t{}\n", names.join(" ")));
    }
    write("/etc/hosts", &hosts)?;
    if !spec.nameservers.is_empty() {
        let mut r: String = spec
            .nameservers
            .iter()
            .map(|n| format!("nameserver {n}\n"))
            .collect();
        if !spec.search.is_empty() {
            r.push_str(&format!("search {}\n", spec.search.join(" ")));
        }
        write("/etc/resolv.conf", &r)?;
    }
    Ok(())
}

fn write(path: &str, text: &str) -> Result<(), SetupError> {
    // A symlink (some images link resolv.conf elsewhere) is replaced.
    let _ = std::fs::remove_file(path);
    std::fs::write(path, text).map_err(|err| SetupError::Create {
        path: path.into(),
        err,
    })
}

/// Ends the VM: every process is killed, the disk is synced and the
/// guest reboots, which husk (`reboot=k`) and QEMU (`reboot=t`,
/// `-no-reboot`) both take as the end.
pub fn end_vm() -> ! {
    // SAFETY: these calls take no pointers; kill(-1) spares PID 1 itself.
    unsafe {
        libc::kill(-1, libc::SIGKILL);
        libc::sync();
    }
    super::mounts::unmount_all();
    let _ = mount("none", "/", "", libc::MS_REMOUNT | libc::MS_RDONLY, None);
    // SAFETY: as above.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_AUTOBOOT);
    }
    // reboot only returns on failure (not PID 1 of the VM, no privilege).
    std::process::exit(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_args_name_the_root_disk() {
        assert_eq!(
            boot_args("console=ttyS0 reboot=k"),
            BootArgs {
                root: "/dev/vda".into(),
                rootfstype: "ext4".into(),
                read_only: false
            }
        );
        let a = boot_args("husk.root=/dev/vdb husk.rootfstype=xfs husk.ro quiet");
        assert_eq!(
            (a.root.as_str(), a.rootfstype.as_str(), a.read_only),
            ("/dev/vdb", "xfs", true)
        );
    }
}
