//! Starting a container's processes: the command line, environment,
//! working directory and user that Docker would give them, each in its
//! own session, with pipes or a pseudo-terminal for its streams.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use super::user::{self, Identity, UserError};
use crate::agent::protocol::{ContainerSpec, ProcessSpec, WindowSize};

/// PATH when the image sets none (Docker's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const DEFAULT_WINDOW: WindowSize = WindowSize { rows: 24, cols: 80 };

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("no command specified: the image has no Entrypoint or Cmd and none was given")]
    NoCommand,
    #[error("an argument, variable or path holds a NUL byte")]
    Nul,
    #[error(transparent)]
    User(#[from] UserError),
    #[error("cannot create working directory {path}: {err}")]
    Workdir { path: String, err: std::io::Error },
    #[error("cannot allocate a pseudo-terminal: {0}")]
    Pty(std::io::Error),
    #[error("exec {cmd:?}: {err}")]
    Exec { cmd: String, err: std::io::Error },
}

impl SpawnError {
    /// The code a shell gives for a command it cannot run: 127 when the
    /// program is not there, 126 when it is but cannot be executed.
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            SpawnError::Exec { err, .. } => Some(match err.raw_os_error() {
                Some(libc::ENOENT) | Some(libc::ENOTDIR) => 127,
                _ => 126,
            }),
            _ => None,
        }
    }
}

/// Everything about a process but its command, shared by the container's
/// processes.
#[derive(Clone, Debug)]
pub struct Context {
    pub env: Vec<String>,
    pub cwd: String,
    pub user: Option<String>,
}

/// A process ready to start.
#[derive(Clone, Debug)]
pub struct Launch {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub identity: Identity,
    pub tty: Option<WindowSize>,
    /// Pod mode: the container the process enters in the child, before
    /// it drops to its user (see `pod::Enter`).
    pub enter: Option<std::sync::Arc<super::pod::Enter>>,
}

/// A started process and the host's ends of its streams (non-blocking).
/// With a terminal, stdin and stdout are both the terminal's master and
/// there is no stderr.
pub struct Spawned {
    pub pid: i32,
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: Option<OwnedFd>,
}

fn key(entry: &str) -> &str {
    entry.split_once('=').map_or(entry, |(k, _)| k)
}

/// `base` with `over` applied: an entry replaces the one of the same
/// name, a new one is appended.
pub fn merge_env(base: &[String], over: &[String]) -> Vec<String> {
    let mut env = base.to_vec();
    for e in over {
        match env.iter().position(|b| key(b) == key(e)) {
            Some(i) => env[i] = e.clone(),
            None => env.push(e.clone()),
        }
    }
    env
}

fn set_default(env: &mut Vec<String>, name: &str, value: &str) {
    if !env.iter().any(|e| key(e) == name) {
        env.push(format!("{name}={value}"));
    }
}

/// The main process of `spec`, as `docker run` would run it: an
/// overriding entrypoint drops the image's cmd; env entries override by
/// name; the working directory is created if missing.
pub fn container_launch(
    spec: &ContainerSpec,
    root: &Path,
) -> Result<(Launch, Context), SpawnError> {
    let (image, over) = (&spec.image, &spec.overrides);
    let (entrypoint, cmd) = match &over.entrypoint {
        Some(ep) => (ep.clone(), over.cmd.clone().unwrap_or_default()),
        None => (
            image.entrypoint.clone().unwrap_or_default(),
            over.cmd
                .clone()
                .or_else(|| image.cmd.clone())
                .unwrap_or_default(),
        ),
    };
    let args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if args.is_empty() {
        return Err(SpawnError::NoCommand);
    }
    let mut env = merge_env(&image.env, &over.env);
    set_default(&mut env, "PATH", DEFAULT_PATH);
    if let Some(h) = &spec.hostname {
        set_default(&mut env, "HOSTNAME", h);
    }
    let ctx = Context {
        env,
        cwd: over
            .working_dir
            .clone()
            .or_else(|| image.working_dir.clone())
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| "/".into()),
        user: over.user.clone().or_else(|| image.user.clone()),
    };
    let launch = launch(
        args,
        &[],
        None,
        None,
        spec.tty.then(|| spec.window.unwrap_or(DEFAULT_WINDOW)),
        &ctx,
        root,
    )?;
    Ok((launch, ctx))
}

/// An extra process in the container of `ctx`.
pub fn exec_launch(spec: &ProcessSpec, ctx: &Context, root: &Path) -> Result<Launch, SpawnError> {
    if spec.args.is_empty() {
        return Err(SpawnError::NoCommand);
    }
    launch(
        spec.args.clone(),
        &spec.env,
        spec.working_dir.as_deref(),
        spec.user.as_deref(),
        spec.tty.then(|| spec.window.unwrap_or(DEFAULT_WINDOW)),
        ctx,
        root,
    )
}

fn launch(
    args: Vec<String>,
    env: &[String],
    cwd: Option<&str>,
    user: Option<&str>,
    tty: Option<WindowSize>,
    ctx: &Context,
    root: &Path,
) -> Result<Launch, SpawnError> {
    let identity = user::resolve(user.or(ctx.user.as_deref()), root)?;
    let mut env = merge_env(&ctx.env, env);
    set_default(&mut env, "HOME", &identity.home);
    if tty.is_some() {
        set_default(&mut env, "TERM", "xterm");
    }
    let cwd = cwd
        .filter(|d| !d.is_empty())
        .unwrap_or(&ctx.cwd)
        .to_string();
    Ok(Launch {
        args,
        env,
        cwd,
        identity,
        tty,
        enter: None,
    })
}

fn nonblocking(fd: &OwnedFd) {
    // SAFETY: F_GETFL/F_SETFL on a descriptor we own; no memory is passed.
    unsafe {
        let fl = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
}

/// A pseudo-terminal: (master, slave), the master close-on-exec.
fn open_pty(size: WindowSize) -> Result<(OwnedFd, OwnedFd), SpawnError> {
    let (mut master, mut slave): (RawFd, RawFd) = (-1, -1);
    let ws = libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty writes two descriptors into the locals; the name
    // and termios pointers may be null, the winsize is valid.
    let r = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &ws,
        )
    };
    if r != 0 {
        return Err(SpawnError::Pty(std::io::Error::last_os_error()));
    }
    // SAFETY: openpty succeeded, so both are open descriptors we own now.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    // SAFETY: F_SETFD on the descriptor we own.
    unsafe { libc::fcntl(master.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    Ok((master, slave))
}

/// Creates `cwd` (and its parents) when missing, as Docker does for a
/// WORKDIR.
fn ensure_dir(cwd: &str) -> Result<(), SpawnError> {
    let p = Path::new(cwd);
    if p.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(p).map_err(|err| SpawnError::Workdir {
        path: crate::text::echo(cwd).into_owned(),
        err,
    })
}

/// Starts `l` in its own session, as its user, in its directory.
pub fn spawn(l: &Launch) -> Result<Spawned, SpawnError> {
    match &l.enter {
        // The working directory is the container's, made in its root.
        Some(e) => ensure_dir(&format!(
            "{}/{}",
            e.root_path(),
            l.cwd.trim_start_matches('/')
        ))?,
        None => ensure_dir(&l.cwd)?,
    }
    let cwd = CString::new(l.cwd.as_str()).map_err(|_| SpawnError::Nul)?;
    if l.args.iter().chain(&l.env).any(|s| s.contains('\0')) {
        return Err(SpawnError::Nul);
    }
    let mut cmd = Command::new(&l.args[0]);
    cmd.args(&l.args[1..]).env_clear();
    for e in &l.env {
        match e.split_once('=') {
            Some((k, v)) if !k.is_empty() => cmd.env(k, v),
            _ => continue,
        };
    }
    let pty = match l.tty {
        Some(size) => Some(open_pty(size)?),
        None => None,
    };
    match &pty {
        Some((_, slave)) => {
            let io = |fd: &OwnedFd| fd.try_clone().map(Stdio::from).map_err(SpawnError::Pty);
            cmd.stdin(io(slave)?).stdout(io(slave)?).stderr(io(slave)?);
        }
        None => {
            cmd.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
        }
    }
    let id = l.identity.clone();
    let tty = pty.is_some();
    let enter = l.enter.clone();
    // The agent blocks the signals it reads through its signalfd; the
    // process starts with none blocked.
    // SAFETY: sigemptyset initialises the set it is given.
    let unblocked = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        set
    };
    // SAFETY: the closure runs in the child between fork and exec: it only
    // makes system calls on values prepared before the fork (no locks; a
    // pod's `Enter` allocates, which is sound here: the agent is
    // single-threaded, so no lock can be held by another thread).
    unsafe {
        cmd.pre_exec(move || {
            if libc::pthread_sigmask(libc::SIG_SETMASK, &unblocked, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if tty && libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(e) = &enter {
                e.run()?;
            }
            if libc::setgroups(id.groups.len(), id.groups.as_ptr()) < 0
                || libc::setgid(id.gid) < 0
                || libc::setuid(id.uid) < 0
            {
                return Err(std::io::Error::last_os_error());
            }
            if libc::chdir(cwd.as_ptr()) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|err| SpawnError::Exec {
        cmd: crate::text::echo(&l.args[0]).into_owned(),
        err,
    })?;
    let pid = child.id() as i32;
    let spawned = match pty {
        Some((master, _slave)) => {
            nonblocking(&master);
            let stdin = master.try_clone().map_err(SpawnError::Pty)?;
            Spawned {
                pid,
                stdin,
                stdout: master,
                stderr: None,
            }
        }
        None => {
            let take = |fd: Option<OwnedFd>| fd.expect("piped streams exist");
            let stdin = take(child.stdin.take().map(OwnedFd::from));
            let stdout = take(child.stdout.take().map(OwnedFd::from));
            let stderr = take(child.stderr.take().map(OwnedFd::from));
            for fd in [&stdin, &stdout, &stderr] {
                nonblocking(fd);
            }
            Spawned {
                pid,
                stdin,
                stdout,
                stderr: Some(stderr),
            }
        }
    };
    // The agent reaps every child itself (waitpid(-1)); the Child is not
    // waited on.
    drop(child);
    Ok(spawned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::protocol::ImageConfig;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn docker_rules_for_entrypoint_cmd_env_and_workdir() {
        let root = Path::new("/nonexistent");
        let image = ImageConfig {
            entrypoint: Some(strings(&["/ep"])),
            cmd: Some(strings(&["a", "b"])),
            env: strings(&["PATH=/bin", "A=1"]),
            working_dir: Some("/work".into()),
            user: None,
        };
        let spec = |over: ImageConfig| ContainerSpec {
            image: image.clone(),
            overrides: over,
            hostname: Some("box".into()),
            ..Default::default()
        };
        let (l, ctx) = container_launch(&spec(ImageConfig::default()), root).unwrap();
        assert_eq!(l.args, strings(&["/ep", "a", "b"]));
        assert_eq!(
            l.env,
            strings(&["PATH=/bin", "A=1", "HOSTNAME=box", "HOME=/root"])
        );
        assert_eq!((l.cwd.as_str(), ctx.cwd.as_str()), ("/work", "/work"));
        // A cmd replaces the image's; an entrypoint drops it.
        let over = ImageConfig {
            cmd: Some(strings(&["c"])),
            env: strings(&["A=2", "B=3"]),
            ..Default::default()
        };
        let (l, _) = container_launch(&spec(over), root).unwrap();
        assert_eq!(l.args, strings(&["/ep", "c"]));
        assert_eq!(&l.env[..3], &strings(&["PATH=/bin", "A=2", "B=3"]));
        let over = ImageConfig {
            entrypoint: Some(strings(&["sh"])),
            ..Default::default()
        };
        assert_eq!(
            container_launch(&spec(over), root).unwrap().0.args,
            strings(&["sh"])
        );
        let none = ContainerSpec::default();
        assert!(matches!(
            container_launch(&none, root),
            Err(SpawnError::NoCommand)
        ));
        let (l, _) = container_launch(
            &ContainerSpec {
                overrides: ImageConfig {
                    cmd: Some(strings(&["x"])),
                    ..Default::default()
                },
                ..Default::default()
            },
            root,
        )
        .unwrap();
        assert_eq!(l.env[0], format!("PATH={DEFAULT_PATH}"));
        assert_eq!(l.cwd, "/");
    }

    #[test]
    fn exec_adds_its_env_and_keeps_the_containers_defaults() {
        let ctx = Context {
            env: strings(&["PATH=/bin", "A=1"]),
            cwd: "/w".into(),
            user: None,
        };
        let spec = ProcessSpec {
            args: strings(&["env"]),
            env: strings(&["A=9"]),
            tty: true,
            ..Default::default()
        };
        let l = exec_launch(&spec, &ctx, Path::new("/nonexistent")).unwrap();
        assert_eq!(
            l.env,
            strings(&["PATH=/bin", "A=9", "HOME=/root", "TERM=xterm"])
        );
        assert_eq!(l.cwd, "/w");
        assert_eq!(l.tty, Some(DEFAULT_WINDOW));
        let empty = ProcessSpec::default();
        assert!(exec_launch(&empty, &ctx, Path::new("/")).is_err());
    }
}
