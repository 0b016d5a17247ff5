//! Bind mounts: one `virtiofsd` per shared directory, the vhost-user
//! backend of a virtio-fs device (QEMU's `vhost-user-fs-device`, or
//! husk-vmm's `fs-devices`).
//!
//! virtiofsd runs as root in a sandbox of its own (`--sandbox
//! namespace`: new mount, PID and network namespaces with the shared
//! directory as their root, and a seccomp filter), so the guest reaches
//! nothing of the host but that directory. A read-only share is enforced
//! by virtiofsd (`--readonly`), not only by the guest's mount flags.
//!
//! The daemon makes each listening socket itself and hands it over as
//! `--fd`, so the socket exists (with the owner the VMM needs) before
//! virtiofsd even runs. virtiofsd serves one connection and exits when
//! the VMM closes it; it is also listed in the VM's handle, so the
//! VM's cleanup kills one whose VMM never connected.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::process::{detach, spawn, ProcId};
use super::{create_log, find_tool, io_err, BackendError, VmShare};

/// Finds `virtiofsd` (`$HUSK_VIRTIOFSD` overrides; `cargo install`
/// puts it in `~/.cargo/bin`, which is searched too).
pub fn virtiofsd() -> Result<PathBuf, BackendError> {
    find_tool("virtiofsd", Some("HUSK_VIRTIOFSD")).ok_or_else(|| {
        BackendError::Unavailable(
            "bind mounts need virtiofsd, which is not installed (cargo install virtiofsd, or set \
             HUSK_VIRTIOFSD)"
                .into(),
        )
    })
}

/// A running share.
pub struct Share {
    pub proc: ProcId,
    /// The vhost-user socket the VMM connects to.
    pub socket: PathBuf,
    pub tag: String,
}

/// The socket of share `tag` in `dir`.
pub fn socket_path(dir: &Path, tag: &str) -> PathBuf {
    dir.join(format!("fs-{tag}.sock"))
}

/// virtiofsd's arguments for `share`, its socket passed as fd 3.
pub fn args(share: &VmShare) -> Vec<std::ffi::OsString> {
    let mut a: Vec<std::ffi::OsString> = vec!["--fd=3".into(), "--shared-dir".into()];
    a.push(share.dir.clone().into());
    for s in [
        "--sandbox=namespace",
        "--cache=auto",
        "--inode-file-handles=never",
        "--log-level=error",
    ] {
        a.push(s.into());
    }
    if share.read_only {
        a.push("--readonly".into());
    }
    a
}

/// Starts one virtiofsd per share, its socket in `dir` owned by `owner`
/// (the VMM's uid) when given. On failure, the ones started are killed.
pub fn start(
    shares: &[VmShare],
    dir: &Path,
    owner: Option<u32>,
) -> Result<Vec<Share>, BackendError> {
    if shares.is_empty() {
        return Ok(Vec::new());
    }
    let prog = virtiofsd()?;
    let mut started: Vec<Share> = Vec::new();
    for share in shares {
        match start_one(&prog, share, dir, owner) {
            Ok(s) => started.push(s),
            Err(e) => {
                stop(&started);
                return Err(e);
            }
        }
    }
    Ok(started)
}

/// Adds what each share's virtiofsd logged to `log` (a VMM's log that
/// explains a failed start): a virtiofsd that died is why a VMM could
/// not connect to it.
pub fn explain(log: &mut String, shares: &[VmShare], dir: &Path) {
    for s in shares {
        let tail = super::log_tail(&dir.join(format!("virtiofsd-{}.log", s.tag)));
        if !tail.is_empty() {
            log.push_str(&format!("\nvirtiofsd ({}): {tail}", s.tag));
        }
    }
}

/// Kills the shares and removes their sockets.
pub fn stop(shares: &[Share]) {
    for s in shares {
        s.proc.signal(libc::SIGKILL);
        let _ = std::fs::remove_file(&s.socket);
    }
}

fn start_one(
    prog: &Path,
    share: &VmShare,
    dir: &Path,
    owner: Option<u32>,
) -> Result<Share, BackendError> {
    let socket = socket_path(dir, &share.tag);
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket).map_err(io_err("virtio-fs socket", &socket))?;
    let started = spawn_on(prog, share, dir, owner, &socket, listener);
    if started.is_err() {
        let _ = std::fs::remove_file(&socket);
    }
    started
}

/// Starts virtiofsd for `share` on the bound `listener` (at `socket`).
fn spawn_on(
    prog: &Path,
    share: &VmShare,
    dir: &Path,
    owner: Option<u32>,
    socket: &Path,
    listener: UnixListener,
) -> Result<Share, BackendError> {
    if let Some(uid) = owner {
        std::os::unix::fs::chown(socket, Some(uid), Some(uid))
            .map_err(io_err("virtio-fs socket (chown to the VM's uid)", socket))?;
    }
    // Above fd 3 (and close-on-exec here): the child's dup2 onto 3 then
    // never meets the socket already there, nor a descriptor the spawn
    // itself opened at 3 meanwhile.
    let fd = std::os::fd::AsFd::as_fd(&listener)
        .try_clone_to_owned()
        .and_then(|f| {
            // SAFETY: F_DUPFD_CLOEXEC on a descriptor we own; it returns a
            // new descriptor (at least 10) that nothing else owns.
            let dup = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
            if dup < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: `dup` is a new descriptor this function owns.
            Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(dup) })
        })
        .map_err(io_err("virtio-fs socket", socket))?;
    drop(listener);
    let log_path = dir.join(format!("virtiofsd-{}.log", share.tag));
    let log = create_log(&log_path)?;
    let mut cmd = Command::new(prog);
    cmd.env_clear()
        .args(args(share))
        .current_dir("/")
        .stdout(log.try_clone().map_err(io_err("log", &log_path))?)
        .stderr(log);
    detach(&mut cmd);
    let raw = fd.as_raw_fd();
    // SAFETY: dup2 is async-signal-safe; it gives the child the listening
    // socket as fd 3 without close-on-exec, the only fd it inherits
    // besides its standard streams (`raw` is at least 10, never 3).
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(raw, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let proc = spawn(&mut cmd).map_err(|err| BackendError::Spawn {
        prog: "virtiofsd",
        err,
    })?;
    drop(fd);
    Ok(Share {
        proc,
        socket: socket.to_path_buf(),
        tag: share.tag.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_start_tells_what_virtiofsd_said() {
        let dir = std::env::temp_dir().join(format!("husk-vfs-explain-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let share = |tag: &str| VmShare {
            tag: tag.into(),
            dir: "/srv".into(),
            read_only: false,
        };
        std::fs::write(dir.join("virtiofsd-fs0.log"), "Error: shared dir gone\n").unwrap();
        let mut log = "cannot connect".to_string();
        explain(&mut log, &[share("fs0"), share("fs1")], &dir);
        assert_eq!(
            log,
            "cannot connect\nvirtiofsd (fs0): Error: shared dir gone"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn read_only_shares_are_read_only_in_virtiofsd() {
        let mut s = VmShare {
            tag: "fs0".into(),
            dir: "/srv/data".into(),
            read_only: false,
        };
        let a = args(&s);
        assert!(a.iter().any(|x| x == "--sandbox=namespace"));
        assert!(!a.iter().any(|x| x == "--readonly"));
        s.read_only = true;
        assert!(args(&s).iter().any(|x| x == "--readonly"));
    }
}
