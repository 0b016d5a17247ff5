//! The `tcg` backend: QEMU's software emulation, for hosts where a stock
//! Linux guest cannot run under KVM (design.md, "What these machines can
//! and cannot run").
//!
//! Two processes: `qemu-system-x86_64` (the `microvm` machine with TCG)
//! and `vhost-device-vsock`, its vsock device, which speaks husk's hybrid
//! vsock protocol on `<dir>/vsock.sock`. This is the command line of
//! `tests/common/qemu.rs` and docs/guest-kernel.md: `acpi=off` so QEMU
//! names the virtio-mmio devices on the kernel command line, guest memory
//! in a shared memfd for vhost-user, `reboot=t` and `-no-reboot` so QEMU
//! exits when the guest reboots (microvm has no i8042).
//!
//! `vhost-device-vsock` does not end when QEMU disconnects (it waits for
//! the next frontend), and the daemon may be dead when QEMU ends. So QEMU
//! is its parent: the process that becomes QEMU forks it, with
//! `PR_SET_PDEATHSIG` = SIGKILL, waits for its socket, then execs QEMU.
//! When QEMU ends, however it ends, the kernel kills its vsock backend.

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::process::{cloexec_pipe, detach, spawn, ProcId};
use super::{
    base_cmdline, create_log, find_tool, free_socket, log_tail, with_extra, BackendError,
    BackendKind, VmHandle, VmSpec, CONSOLE_LOG, GUEST_CID, START_TIMEOUT, VMM_LOG, VSOCK_SOCK,
};

/// The vhost-user socket between QEMU and vhost-device-vsock.
pub const VHOST_SOCK: &str = "vhost.sock";
/// Under a jail uid: the directory, owned by that uid, where
/// vhost-device-vsock makes its sockets.
pub const SOCK_DIR: &str = "vsock";
/// vhost-device-vsock's output.
pub const VHOST_LOG: &str = "vhost.log";

/// The programs this backend runs.
#[derive(Clone, Debug)]
pub struct Tools {
    pub qemu: PathBuf,
    pub vhost: PathBuf,
}

/// Finds `qemu-system-x86_64` (`$HUSK_QEMU` overrides) and
/// `vhost-device-vsock` (`$HUSK_VHOST_VSOCK` overrides; `cargo install`
/// puts it in `~/.cargo/bin`, which is searched too).
pub fn tools() -> Result<Tools, String> {
    let qemu = find_tool("qemu-system-x86_64", Some("HUSK_QEMU")).ok_or(
        "qemu-system-x86_64 is not installed (apt-get install qemu-system-x86, or set HUSK_QEMU)",
    )?;
    let vhost = find_tool("vhost-device-vsock", Some("HUSK_VHOST_VSOCK")).ok_or(
        "vhost-device-vsock is not installed (cargo install vhost-device-vsock, or set \
         HUSK_VHOST_VSOCK)",
    )?;
    Ok(Tools { qemu, vhost })
}

/// The kernel command line for `spec` under QEMU.
pub fn cmdline(spec: &VmSpec) -> String {
    with_extra(base_cmdline("t"), &spec.boot_args)
}

/// `key=<path>` for a QEMU option list, where a comma is written `,,`.
fn opt_path(key: &str, path: &Path) -> OsString {
    let mut v = format!("{key}=").into_bytes();
    for &b in path.as_os_str().as_bytes() {
        v.push(b);
        if b == b',' {
            v.push(b',');
        }
    }
    OsString::from_vec(v)
}

/// QEMU's own seccomp sandbox, always on: no obsolete system calls, no
/// spawning processes, no changing scheduling or resource limits.
const SANDBOX: &str = "on,obsolete=deny,spawn=deny,resourcecontrol=deny";

/// QEMU's arguments (after the program name) for `spec`, with its
/// vhost-user socket and serial console file. With `runas`, QEMU opens
/// its files as root and then, before the guest runs, becomes that uid
/// (and gid) with no capabilities; unprivileged from the start, its
/// sandbox also refuses any attempt to gain privileges.
pub fn qemu_args(
    spec: &VmSpec,
    vhost_sock: &Path,
    console: &Path,
    runas: Option<u32>,
) -> Vec<OsString> {
    let mem = spec.memory_mib;
    let mut args: Vec<OsString> = Vec::new();
    let mut push = |parts: &[&OsStr]| args.extend(parts.iter().map(|p| p.to_os_string()));
    let s = |s: &'static str| OsStr::new(s);
    let mem_backend = format!("memory-backend-memfd,id=mem,size={mem}M,share=on");
    let mem_size = format!("{mem}M");
    let smp = spec.vcpus.to_string();
    let append = cmdline(spec);
    let mut console_dev = OsString::from("file,id=console,");
    console_dev.push(opt_path("path", console));
    let mut vhost_dev = OsString::from("socket,id=vsock,");
    vhost_dev.push(opt_path("path", vhost_sock));
    push(&[s("-machine"), s("microvm,acpi=off,memory-backend=mem")]);
    push(&[s("-accel"), s("tcg")]);
    push(&[s("-m"), mem_size.as_ref(), s("-smp"), smp.as_ref()]);
    push(&[s("-object"), mem_backend.as_ref()]);
    push(&[
        s("-nodefaults"),
        s("-no-user-config"),
        s("-nographic"),
        s("-no-reboot"),
    ]);
    push(&[
        s("-chardev"),
        &console_dev,
        s("-serial"),
        s("chardev:console"),
    ]);
    push(&[s("-kernel"), spec.kernel.as_os_str()]);
    push(&[s("-initrd"), spec.initramfs.as_os_str()]);
    push(&[s("-append"), append.as_ref()]);
    push(&[s("-chardev"), &vhost_dev]);
    push(&[s("-device"), s("vhost-user-vsock-device,chardev=vsock")]);
    if let Some(rootfs) = &spec.rootfs {
        let mut drive = OsString::from("id=rootfs,");
        drive.push(opt_path("file", rootfs));
        drive.push(",format=raw,if=none");
        push(&[s("-drive"), &drive]);
        push(&[s("-device"), s("virtio-blk-device,drive=rootfs")]);
    }
    for d in &spec.drives {
        let mut drive = OsString::from(format!("id={},", d.id));
        drive.push(opt_path("file", &d.path));
        drive.push(",format=raw,if=none");
        if d.read_only {
            drive.push(",readonly=on");
        }
        let device = format!("virtio-blk-device,drive={0},serial={0}", d.id);
        push(&[s("-drive"), &drive, s("-device"), device.as_ref()]);
    }
    for (i, share) in spec.shares.iter().enumerate() {
        let mut chardev = OsString::from(format!("socket,id=fs{i},"));
        chardev.push(opt_path(
            "path",
            &super::virtiofs::socket_path(&spec.dir, &share.tag),
        ));
        let device = format!("vhost-user-fs-device,chardev=fs{i},tag={}", share.tag);
        push(&[s("-chardev"), &chardev, s("-device"), device.as_ref()]);
    }
    push(&[s("-object"), s("rng-random,id=rng,filename=/dev/urandom")]);
    push(&[s("-device"), s("virtio-rng-device,rng=rng")]);
    if let Some(n) = &spec.net {
        // QEMU opens the TAP (made by the daemon) as root, before it
        // drops to `runas`; no scripts run.
        let netdev = format!("tap,id=net0,ifname={},script=no,downscript=no", n.tap);
        let device = format!(
            "virtio-net-device,netdev=net0,mac={},host_mtu={}",
            n.mac, n.mtu
        );
        push(&[s("-netdev"), netdev.as_ref(), s("-device"), device.as_ref()]);
    }
    match runas {
        // The uid change comes after the sandbox is on, so the sandbox
        // must let it through; once done, there is nothing to regain.
        Some(uid) => {
            let who = format!("{uid}:{uid}");
            push(&[s("-sandbox"), s(SANDBOX), s("-runas"), who.as_ref()]);
        }
        None => {
            let sandbox = format!("{SANDBOX},elevateprivileges=deny");
            push(&[s("-sandbox"), sandbox.as_ref()]);
        }
    }
    args
}

/// vhost-device-vsock's arguments (after the program name).
pub fn vhost_args(vhost_sock: &Path, vsock_uds: &Path) -> Vec<OsString> {
    vec![
        "--guest-cid".into(),
        GUEST_CID.to_string().into(),
        "--socket".into(),
        vhost_sock.into(),
        "--uds-path".into(),
        vsock_uds.into(),
    ]
}

/// How many 2 ms polls the vhost socket gets (10 s).
const VHOST_POLLS: u32 = (START_TIMEOUT.as_millis() / 2) as u32;

/// Starts vhost-device-vsock from inside the process that is about to
/// exec QEMU (see the module's comment). Everything is prepared before
/// the fork; `run` makes only async-signal-safe system calls and does
/// not allocate.
struct VhostStart {
    prog: CString,
    /// The program name, then `vhost_args`.
    argv: Vec<CString>,
    sock: CString,
    log: File,
    /// Where the new pid is written (4 bytes, native order).
    pid_out: RawFd,
    /// The uid (and gid) it runs as, QEMU's: a parent's death signal
    /// reaches only a child the parent may signal.
    uid: Option<u32>,
}

/// argv entries `run` can pass, the program name and a NULL included.
const MAX_ARGV: usize = 16;

impl VhostStart {
    fn new(
        prog: &Path,
        args: &[OsString],
        sock: &Path,
        log: File,
        pid_out: RawFd,
        uid: Option<u32>,
    ) -> io::Result<Self> {
        let c = |s: &OsStr| {
            CString::new(s.as_bytes()).map_err(|_| io::Error::other("a path holds a NUL byte"))
        };
        let mut argv = vec![c(prog.as_os_str())?];
        for a in args {
            argv.push(c(a)?);
        }
        assert!(argv.len() < MAX_ARGV);
        Ok(VhostStart {
            prog: c(prog.as_os_str())?,
            argv,
            sock: c(sock.as_os_str())?,
            log,
            pid_out,
            uid,
        })
    }

    /// Forks vhost-device-vsock as a child of this process (which becomes
    /// QEMU), reports its pid, and waits for its socket. Fails with
    /// ECHILD when it exits first, ETIMEDOUT when the socket does not
    /// come.
    fn run(&self) -> io::Result<()> {
        let mut argv: [*const libc::c_char; MAX_ARGV] = [std::ptr::null(); MAX_ARGV];
        for (slot, a) in argv.iter_mut().zip(&self.argv) {
            *slot = a.as_ptr();
        }
        // SAFETY: getpid has no arguments.
        let parent = unsafe { libc::getpid() };
        // SAFETY: fork in a single-threaded process (the child of the
        // daemon's fork); the new child only makes async-signal-safe
        // system calls before it execs or exits.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        if pid == 0 {
            // SAFETY: open, setgroups, setresgid, setresuid, prctl,
            // getppid, dup2, execv, execveat and _exit with valid
            // arguments: `argv` and `NO_ENV` are NULL-terminated and point
            // into CStrings that live in this (copied) address space.
            unsafe {
                // Opened while still root: the program may sit in a
                // directory the VM's uid cannot search (~/.cargo/bin).
                // Not close-on-exec, so that a script (run through
                // /dev/fd/N) works too.
                let prog = libc::open(self.prog.as_ptr(), libc::O_PATH);
                if let Some(uid) = self.uid {
                    if libc::setgroups(0, std::ptr::null()) != 0
                        || libc::setresgid(uid, uid, uid) != 0
                        || libc::setresuid(uid, uid, uid) != 0
                    {
                        libc::_exit(126);
                    }
                }
                // After the uid change, which clears it.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
                if libc::getppid() != parent {
                    // QEMU-to-be is already gone.
                    libc::_exit(1);
                }
                let log = self.log.as_raw_fd();
                libc::dup2(log, 1);
                libc::dup2(log, 2);
                if self.uid.is_some() && prog >= 0 {
                    // As the VM's uid: no environment of the daemon's.
                    const NO_ENV: [*const libc::c_char; 1] = [std::ptr::null()];
                    libc::syscall(
                        libc::SYS_execveat,
                        prog,
                        c"".as_ptr(),
                        argv.as_ptr(),
                        NO_ENV.as_ptr(),
                        libc::AT_EMPTY_PATH,
                    );
                } else {
                    libc::execv(self.prog.as_ptr(), argv.as_ptr());
                }
                libc::_exit(127);
            }
        }
        let bytes = pid.to_ne_bytes();
        // SAFETY: writes 4 bytes from a live local buffer to a pipe.
        unsafe { libc::write(self.pid_out, bytes.as_ptr().cast(), bytes.len()) };
        let pause = libc::timespec {
            tv_sec: 0,
            tv_nsec: 2_000_000,
        };
        for _ in 0..VHOST_POLLS {
            // SAFETY: an all-zero `stat` is a valid value to be
            // overwritten.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            // SAFETY: `sock` is a NUL-terminated path and `st` a valid,
            // writable stat buffer.
            if unsafe { libc::stat(self.sock.as_ptr(), &mut st) } == 0
                && st.st_mode & libc::S_IFMT == libc::S_IFSOCK
            {
                return Ok(());
            }
            let mut status = 0;
            // SAFETY: waitpid on our own child with a valid status
            // pointer; WNOHANG does not block.
            if unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == pid {
                return Err(io::Error::from_raw_os_error(libc::ECHILD));
            }
            // SAFETY: a valid timespec; the remainder is not wanted.
            unsafe { libc::nanosleep(&pause, std::ptr::null_mut()) };
        }
        // SAFETY: kill our own child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        Err(io::Error::from_raw_os_error(libc::ETIMEDOUT))
    }
}

pub(super) fn launch(spec: &VmSpec) -> Result<VmHandle, BackendError> {
    let tools = tools().map_err(BackendError::Unavailable)?;
    // Each VM its own uid, when the daemon jails VMs (and runs as root).
    let jail = match &spec.jail {
        Some(settings) => {
            let (uid, claim) = super::jail::claim_uid(settings, &spec.dir)?;
            Some(super::jail::JailRecord {
                uid,
                claim,
                id_dir: None,
                cgroups: vec![],
            })
        }
        None => None,
    };
    // The shares' daemons first: QEMU connects to them as it starts.
    let shares = match super::virtiofs::start(&spec.shares, &spec.dir, None) {
        Ok(s) => s,
        Err(e) => {
            if let Some(j) = &jail {
                super::jail::clean_up(j);
            }
            return Err(e);
        }
    };
    let launched = launch_as(spec, &tools, jail.clone());
    match launched {
        Ok(mut handle) => {
            handle.procs.extend(shares.iter().map(|s| s.proc));
            Ok(handle)
        }
        Err(mut e) => {
            if let BackendError::Exited { log, .. } | BackendError::Timeout { log, .. } = &mut e {
                super::virtiofs::explain(log, &spec.shares, &spec.dir);
            }
            // Nothing of the VM runs: its uid and shares go back.
            super::virtiofs::stop(&shares);
            if let Some(j) = &jail {
                super::jail::clean_up(j);
            }
            Err(e)
        }
    }
}

fn launch_as(
    spec: &VmSpec,
    tools: &Tools,
    jail: Option<super::jail::JailRecord>,
) -> Result<VmHandle, BackendError> {
    let dir = &spec.dir;
    // vhost-device-vsock makes its sockets as the VM's uid, in a directory
    // of their own: the run directory, whose logs the daemon reads as
    // root, stays root's.
    let sock_dir = match &jail {
        Some(j) => {
            let d = dir.join(SOCK_DIR);
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir(&d).map_err(super::io_err("socket directory", &d))?;
            std::os::unix::fs::chown(&d, Some(j.uid), Some(j.uid)).map_err(super::io_err(
                "socket directory (chown to the VM's uid)",
                &d,
            ))?;
            std::fs::set_permissions(&d, std::os::unix::fs::PermissionsExt::from_mode(0o700))
                .map_err(super::io_err("socket directory", &d))?;
            d
        }
        None => dir.clone(),
    };
    let vhost_sock = sock_dir.join(VHOST_SOCK);
    let vsock = sock_dir.join(VSOCK_SOCK);
    let console = dir.join(CONSOLE_LOG);
    let log_path = dir.join(VMM_LOG);
    let vhost_log_path = dir.join(VHOST_LOG);
    free_socket(&vhost_sock)?;
    free_socket(&vsock)?;
    // QEMU empties it again as it opens it; created here so that it
    // exists as soon as launch returns.
    create_log(&console)?;
    let log = create_log(&log_path)?;
    let log2 = log.try_clone().map_err(super::io_err("log", &log_path))?;
    let vhost_log = create_log(&vhost_log_path)?;

    let (mut pid_in, pid_out) = cloexec_pipe().map_err(|err| BackendError::Spawn {
        prog: "vhost-device-vsock",
        err,
    })?;
    let start = VhostStart::new(
        &tools.vhost,
        &vhost_args(&vhost_sock, &vsock),
        &vhost_sock,
        vhost_log,
        pid_out.as_raw_fd(),
        jail.as_ref().map(|j| j.uid),
    )
    .map_err(|err| BackendError::Spawn {
        prog: "vhost-device-vsock",
        err,
    })?;
    let mut cmd = Command::new(&tools.qemu);
    // Nothing of the daemon's environment: QEMU needs none of it.
    cmd.env_clear()
        .args(qemu_args(
            spec,
            &vhost_sock,
            &console,
            jail.as_ref().map(|j| j.uid),
        ))
        .current_dir(dir)
        .stdout(log)
        .stderr(log2);
    detach(&mut cmd);
    // SAFETY: `VhostStart::run` makes only async-signal-safe system
    // calls and does not allocate (see its comment); it runs after
    // `detach`'s setsid, so vhost-device-vsock shares QEMU's new session.
    unsafe { cmd.pre_exec(move || start.run()) };
    let spawned = spawn(&mut cmd);
    // Closes the parent's write end (and the closure's copy of the log),
    // so reading the pid below ends at EOF.
    drop(cmd);
    drop(pid_out);
    let mut buf = Vec::new();
    let _ = pid_in.read_to_end(&mut buf);
    let vhost_pid = <[u8; 4]>::try_from(buf.as_slice())
        .ok()
        .map(i32::from_ne_bytes);

    let main = match spawned {
        Ok(main) => main,
        Err(err) => {
            // The half-started vhost-device-vsock died with its parent.
            let _ = std::fs::remove_file(&vhost_sock);
            let _ = std::fs::remove_file(&vsock);
            let log = log_tail(&vhost_log_path);
            return Err(match (vhost_pid, err.raw_os_error()) {
                (Some(_), Some(libc::ECHILD)) => BackendError::Exited {
                    prog: "vhost-device-vsock",
                    log,
                },
                (Some(_), Some(libc::ETIMEDOUT)) => BackendError::Timeout {
                    prog: "vhost-device-vsock",
                    what: "create its socket",
                    secs: START_TIMEOUT.as_secs(),
                    log,
                },
                _ => BackendError::Spawn {
                    prog: "qemu-system-x86_64",
                    err,
                },
            });
        }
    };
    let Some(vhost) = vhost_pid.and_then(ProcId::of) else {
        let handle = VmHandle {
            kind: BackendKind::Tcg,
            procs: vec![main],
            vsock_uds: vsock,
            api_sock: None,
            console_log: console,
            jail,
        };
        handle.cleanup();
        return Err(BackendError::Exited {
            prog: "vhost-device-vsock",
            log: log_tail(&vhost_log_path),
        });
    };
    Ok(VmHandle {
        kind: BackendKind::Tcg,
        procs: vec![main, vhost],
        vsock_uds: vsock,
        api_sock: None,
        console_log: console,
        jail,
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::{spec, Scratch};
    use super::*;

    fn strings(args: &[OsString]) -> Vec<String> {
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    /// The value after `flag`, for each time `flag` appears.
    fn values<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn qemu_gets_the_microvm_chain() {
        let dir = Scratch::new("tcg-args");
        let s = spec(&dir.0);
        let vhost = s.dir.join(VHOST_SOCK);
        let console = s.dir.join(CONSOLE_LOG);
        let args = strings(&qemu_args(&s, &vhost, &console, None));
        assert_eq!(
            values(&args, "-sandbox"),
            ["on,obsolete=deny,spawn=deny,resourcecontrol=deny,elevateprivileges=deny"]
        );
        assert!(values(&args, "-runas").is_empty());
        let jailed = strings(&qemu_args(&s, &vhost, &console, Some(250_000)));
        assert_eq!(values(&jailed, "-runas"), ["250000:250000"]);
        assert_eq!(
            values(&jailed, "-sandbox"),
            ["on,obsolete=deny,spawn=deny,resourcecontrol=deny"]
        );
        assert_eq!(
            values(&args, "-machine"),
            ["microvm,acpi=off,memory-backend=mem"]
        );
        assert_eq!(values(&args, "-accel"), ["tcg"]);
        assert_eq!(values(&args, "-m"), ["256M"]);
        assert_eq!(values(&args, "-smp"), ["2"]);
        assert_eq!(
            values(&args, "-object"),
            [
                "memory-backend-memfd,id=mem,size=256M,share=on",
                "rng-random,id=rng,filename=/dev/urandom"
            ]
        );
        for flag in ["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"] {
            assert!(args.iter().any(|a| a == flag), "{flag}");
        }
        assert_eq!(values(&args, "-kernel"), [s.kernel.to_str().unwrap()]);
        assert_eq!(values(&args, "-initrd"), [s.initramfs.to_str().unwrap()]);
        assert_eq!(
            values(&args, "-append"),
            ["console=ttyS0 reboot=t panic=-1 quiet no_timer_check husk.root=/dev/vda probe=x"]
        );
        assert_eq!(
            values(&args, "-chardev"),
            [
                format!("file,id=console,path={}", console.display()),
                format!("socket,id=vsock,path={}", vhost.display()),
            ]
        );
        assert_eq!(values(&args, "-serial"), ["chardev:console"]);
        assert_eq!(
            values(&args, "-drive"),
            [format!(
                "id=rootfs,file={},format=raw,if=none",
                s.rootfs.as_ref().unwrap().display()
            )]
        );
        assert_eq!(
            values(&args, "-device"),
            [
                "vhost-user-vsock-device,chardev=vsock",
                "virtio-blk-device,drive=rootfs",
                "virtio-rng-device,rng=rng"
            ]
        );
        assert!(values(&args, "-netdev").is_empty());
        // With a network: the daemon's TAP, no scripts, the guest's MAC.
        let net = VmSpec {
            net: Some(super::super::VmNet {
                tap: "htap0123456789a".into(),
                mac: "02:42:ac:14:00:02".into(),
                mtu: 1400,
            }),
            ..s.clone()
        };
        let args = strings(&qemu_args(&net, &vhost, &console, None));
        assert_eq!(
            values(&args, "-netdev"),
            ["tap,id=net0,ifname=htap0123456789a,script=no,downscript=no"]
        );
        assert_eq!(
            values(&args, "-device").last().unwrap(),
            &"virtio-net-device,netdev=net0,mac=02:42:ac:14:00:02,host_mtu=1400"
        );
    }

    #[test]
    fn commas_in_paths_are_doubled_for_qemu() {
        let dir = Scratch::new("tcg-commas");
        let mut s = spec(&dir.0);
        s.rootfs = Some("/a,b/root,fs.ext4".into());
        let args = strings(&qemu_args(
            &s,
            Path::new("/r,1/vhost.sock"),
            Path::new("/c"),
            None,
        ));
        assert_eq!(
            values(&args, "-drive"),
            ["id=rootfs,file=/a,,b/root,,fs.ext4,format=raw,if=none"]
        );
        assert_eq!(
            values(&args, "-chardev")[1],
            "socket,id=vsock,path=/r,,1/vhost.sock"
        );
        // vhost-device-vsock takes each path as an argument of its own.
        let v = strings(&vhost_args(
            Path::new("/r,1/vhost.sock"),
            Path::new("/r,1/vsock.sock"),
        ));
        assert_eq!(
            v,
            [
                "--guest-cid",
                "3",
                "--socket",
                "/r,1/vhost.sock",
                "--uds-path",
                "/r,1/vsock.sock"
            ]
        );
    }

    /// A fake vhost-device-vsock that dies at once: the launch fails with
    /// its output, and nothing is left running.
    #[test]
    fn a_vsock_backend_that_dies_fails_the_launch() {
        let dir = Scratch::new("tcg-dies");
        let s = spec(&dir.0);
        std::fs::create_dir_all(&s.dir).unwrap();
        let fake = dir.0.join("fake-vhost");
        std::fs::write(&fake, "#!/bin/sh\necho 'no such guest cid' >&2\nexit 3\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let (mut r, w) = cloexec_pipe().unwrap();
        let start = VhostStart::new(
            &fake,
            &vhost_args(&s.dir.join(VHOST_SOCK), &s.dir.join(VSOCK_SOCK)),
            &s.dir.join(VHOST_SOCK),
            File::create(s.dir.join(VHOST_LOG)).unwrap(),
            w.as_raw_fd(),
            None,
        )
        .unwrap();
        // `true` stands in for QEMU: the pre-exec step must fail first.
        let mut cmd = Command::new("true");
        detach(&mut cmd);
        // SAFETY: as in `launch`.
        unsafe { cmd.pre_exec(move || start.run()) };
        let err = spawn(&mut cmd).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ECHILD), "{err}");
        drop((cmd, w));
        let mut pid = Vec::new();
        r.read_to_end(&mut pid).unwrap();
        assert_eq!(pid.len(), 4, "the backend's pid is reported");
        let log = std::fs::read_to_string(s.dir.join(VHOST_LOG)).unwrap();
        assert_eq!(log, "no such guest cid\n");
    }
}
