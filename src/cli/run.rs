//! `husk run` and `husk create`.
//!
//! `run` creates the container, opens its log stream and a wait on it,
//! starts it, copies its output to this process's stdout and stderr until
//! it exits, and exits with its exit code. With `-d` it prints the id once
//! the container runs. The first Ctrl-C sends SIGINT to the container, a
//! second one detaches (exit 130; the container keeps running).
//! With `-i` or `-t` it attaches to the container's stdio instead, before
//! the start (`attach.rs`): stdin goes to the container, `-t` gives it a
//! terminal.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use tokio::signal::unix::{signal, SignalKind};

use super::logs::OutputWriter;
use super::{parse, report, EXIT_DAEMON};
use crate::client::types::{CreateRequest, CreateResponse, LogsOptions};
use crate::client::{ClientError, DaemonClient};

/// What `run` and `create` share: the container's configuration.
#[derive(Args, Debug)]
pub struct ContainerOpts {
    /// Assign a name to the container.
    #[arg(long)]
    pub name: Option<String>,
    /// Set environment variables (KEY=VALUE, or KEY to pass this one's).
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Read in a file of environment variables.
    #[arg(long = "env-file", value_name = "FILE")]
    pub env_file: Vec<PathBuf>,
    /// Working directory inside the container.
    #[arg(short, long)]
    pub workdir: Option<String>,
    /// User (name|uid[:group|gid]) to run as.
    #[arg(short, long)]
    pub user: Option<String>,
    /// Overwrite the image's entrypoint ("" clears it).
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// Number of vCPUs (a fraction is rounded up).
    #[arg(long, value_parser = parse::cpus)]
    pub cpus: Option<u8>,
    /// Memory (e.g. 512m, 1g; a bare number is MiB).
    #[arg(short, long, value_parser = parse::memory_mib)]
    pub memory: Option<u32>,
    /// Container host name.
    #[arg(long)]
    pub hostname: Option<String>,
    /// Set metadata on the container (key=value).
    #[arg(short, long = "label", value_name = "KEY=VALUE")]
    pub label: Vec<String>,
    /// Connect the container to a network: "bridge" (the default),
    /// "none", or one made with `husk network create`.
    #[arg(long, visible_alias = "net", value_name = "NETWORK")]
    pub network: Option<String>,
    /// Publish a container's port to the host:
    /// [HOST_IP:][HOST_PORT:]CONTAINER_PORT[/tcp|udp].
    #[arg(short, long = "publish", value_name = "PORT")]
    pub publish: Vec<crate::client::types::PortBinding>,
    /// Mount a volume or a host directory: [SOURCE:]TARGET[:ro]. A
    /// SOURCE that starts with / or . is a host directory (shared over
    /// virtio-fs), any other a named volume (made if missing); none
    /// makes an anonymous volume.
    #[arg(short = 'v', long = "volume", value_name = "[SOURCE:]TARGET[:ro]")]
    pub volume: Vec<String>,
    /// Mount a volume, host directory or tmpfs:
    /// type=volume|bind|tmpfs,source=...,target=...[,readonly][,tmpfs-size=...][,tmpfs-mode=...].
    #[arg(long, value_name = "SPEC")]
    pub mount: Vec<String>,
    /// Mount a tmpfs: TARGET[:size=64m,mode=1777,noexec,...].
    #[arg(long, value_name = "TARGET[:OPTIONS]")]
    pub tmpfs: Vec<String>,
    /// Storage driver options: size=SIZE, the root filesystem's size
    /// (e.g. 20g; default 10g, sparse on the host).
    #[arg(long = "storage-opt", value_name = "size=SIZE")]
    pub storage_opt: Vec<String>,
    /// Keep STDIN open and send this one's to the container.
    #[arg(short, long)]
    pub interactive: bool,
    /// Allocate a pseudo-TTY.
    #[arg(short, long)]
    pub tty: bool,
    /// Pull the image before creating: "missing" (when the daemon does
    /// not have it), "always" or "never".
    #[arg(long, value_enum, default_value = "missing")]
    pub pull: PullPolicy,
    /// The image to run.
    pub image: String,
    /// The command and its arguments (default: the image's).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PullPolicy {
    Missing,
    Always,
    Never,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Run the container in the background and print its id.
    #[arg(short, long)]
    pub detach: bool,
    /// Remove the container when it exits (the daemon does it).
    #[arg(long)]
    pub rm: bool,
    #[command(flatten)]
    pub opts: ContainerOpts,
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Remove the container when it exits (the daemon does it).
    #[arg(long)]
    pub rm: bool,
    #[command(flatten)]
    pub opts: ContainerOpts,
}

impl ContainerOpts {
    /// The create body, with env files read and `-e KEY` resolved here.
    pub fn request(&self, auto_remove: bool) -> Result<CreateRequest, String> {
        let mut env = Vec::new();
        for f in &self.env_file {
            env.extend(parse::env_file(f)?);
        }
        for e in &self.env {
            env.extend(parse::env_entry(e, |k| std::env::var(k).ok())?);
        }
        Ok(CreateRequest {
            image: self.image.clone(),
            name: self.name.clone(),
            cmd: (!self.command.is_empty()).then(|| self.command.clone()),
            entrypoint: self.entrypoint.as_ref().map(|e| {
                if e.is_empty() {
                    Vec::new()
                } else {
                    vec![e.clone()]
                }
            }),
            env,
            workdir: self.workdir.clone(),
            user: self.user.clone(),
            hostname: self.hostname.clone(),
            vcpus: self.cpus,
            memory_mib: self.memory,
            tty: self.tty,
            stdin: self.interactive,
            auto_remove,
            labels: parse::labels(&self.label)?,
            // `--pull` is done here, with progress on stderr.
            pull: Some(false),
            network: self.network.clone(),
            publish: self.publish.clone(),
            mounts: self.mounts()?,
            rootfs_size: self.rootfs_size()?,
        })
    }

    /// `--storage-opt size=SIZE` (the one option there is; the last wins).
    fn rootfs_size(&self) -> Result<Option<u64>, String> {
        let mut size = None;
        for o in &self.storage_opt {
            match o.split_once('=') {
                Some(("size", v)) => size = Some(crate::client::volumes::parse_size(v)?),
                _ => {
                    return Err(format!(
                        "invalid --storage-opt {:?}: the only option is size=SIZE",
                        crate::text::echo(o)
                    ))
                }
            }
        }
        Ok(size)
    }

    /// `-v`, `--mount` and `--tmpfs`, in that order.
    fn mounts(&self) -> Result<Vec<crate::client::types::Mount>, String> {
        use crate::client::types::Mount;
        let cwd = std::env::current_dir().map_err(|e| format!("the current directory: {e}"))?;
        let mut out = Vec::new();
        for v in &self.volume {
            out.push(Mount::parse_volume_flag(v, &cwd)?);
        }
        for v in &self.mount {
            out.push(Mount::parse_mount_flag(v, &cwd)?);
        }
        for v in &self.tmpfs {
            out.push(Mount::parse_tmpfs_flag(v)?);
        }
        Ok(out)
    }
}

/// Creates the container, pulling the image first as `--pull` says
/// (progress on stderr). Errors are reported here.
async fn create_container(
    client: &DaemonClient,
    opts: &ContainerOpts,
    auto_remove: bool,
) -> Option<CreateResponse> {
    let req = match opts.request(auto_remove) {
        Ok(r) => r,
        Err(e) => {
            report(e);
            return None;
        }
    };
    if opts.pull == PullPolicy::Always && !pull(client, &req.image).await {
        return None;
    }
    match client.create(&req).await {
        Ok(c) => Some(c),
        // On create, "not found" is the image.
        Err(e) if e.is_not_found() && opts.pull == PullPolicy::Missing => {
            eprintln!("Unable to find image '{}' locally", req.image);
            if !pull(client, &req.image).await {
                return None;
            }
            client.create(&req).await.map_err(report).ok()
        }
        Err(e) => {
            report(e);
            None
        }
    }
}

async fn pull(client: &DaemonClient, image: &str) -> bool {
    let mut err = std::io::stderr();
    let tty = err.is_terminal();
    match super::images::pull_with_progress(client, image, &mut err, tty).await {
        Ok(_) => true,
        Err(e) => {
            report(e);
            false
        }
    }
}

pub async fn create(client: &DaemonClient, args: CreateArgs) -> i32 {
    match create_container(client, &args.opts, args.rm).await {
        Some(c) => {
            println!("{}", c.id);
            0
        }
        None => 1,
    }
}

pub async fn run(client: &DaemonClient, args: RunArgs) -> i32 {
    let Some(created) = create_container(client, &args.opts, args.rm).await else {
        return EXIT_DAEMON;
    };
    if args.detach {
        return match client.start(&created.id).await {
            Ok(()) => {
                println!("{}", created.id);
                0
            }
            Err(e) => {
                report(&e);
                e.exit_code().unwrap_or(EXIT_DAEMON)
            }
        };
    }
    if args.opts.interactive || args.opts.tty {
        let opts = super::attach::Options {
            stdin: args.opts.interactive,
            tty: args.opts.tty,
        };
        return super::attach::run(client, &created.id, opts).await;
    }
    attach(client, &created.id).await
}

/// How an attached run ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Attached {
    /// The container exited with this code.
    Exited(i32),
    /// The user detached (a second Ctrl-C).
    Detached,
    /// husk or the daemon failed.
    Failed,
}

impl Attached {
    pub fn exit_code(&self) -> i32 {
        match self {
            Attached::Exited(c) => *c,
            Attached::Detached => 130,
            Attached::Failed => EXIT_DAEMON,
        }
    }
}

/// Starts a created container and follows it until it exits.
async fn attach(client: &DaemonClient, id: &str) -> i32 {
    let mut w = OutputWriter::stdio(false);
    let end = attach_with(client, id, &mut |s, t, d| {
        // A closed stdout is no reason to stop following: the exit code
        // still matters.
        let _ = w.write(s, t, d);
    })
    .await;
    if end == Attached::Detached {
        eprintln!(
            "husk: detached from {}; the container keeps running",
            super::format::short_id(id)
        );
    }
    end.exit_code()
}

/// The attach loop, with the output going to `out`.
pub async fn attach_with(
    client: &DaemonClient,
    id: &str,
    out: &mut dyn FnMut(crate::client::types::StreamKind, u64, &str),
) -> Attached {
    let mut sigint = match signal(SignalKind::interrupt()) {
        Ok(s) => s,
        Err(e) => {
            report(format!("cannot catch SIGINT: {e}"));
            return Attached::Failed;
        }
    };
    // The log stream and the wait go in before the start, so that no
    // output is missed and an auto-removed container's exit is still seen.
    let follow = LogsOptions {
        follow: true,
        ..Default::default()
    };
    let mut logs = match client.logs(id, &follow).await {
        Ok(l) => l,
        Err(e) => {
            report(e);
            return Attached::Failed;
        }
    };
    let waiter = {
        let (client, id) = (client.clone(), id.to_string());
        tokio::spawn(async move { client.wait(&id).await })
    };
    // Let the wait's request reach the daemon before the start's.
    for _ in 0..8 {
        tokio::task::yield_now().await;
    }

    let start = client.start(id);
    tokio::pin!(start);
    let (mut started, mut logs_open) = (false, true);
    let mut interrupts = 0u32;
    let mut kill_pending = false;
    while !started || logs_open {
        tokio::select! {
            r = &mut start, if !started => {
                started = true;
                if let Err(e) = r {
                    report(&e);
                    return e.exit_code().map_or(Attached::Failed, Attached::Exited);
                }
                if kill_pending {
                    interrupt(client, id).await;
                }
            }
            line = logs.next(), if logs_open => match line {
                Ok(Some(l)) => out(l.stream, l.time_ms, &l.data),
                Ok(None) => logs_open = false,
                Err(e) => {
                    report(e);
                    return Attached::Failed;
                }
            },
            _ = sigint.recv() => {
                interrupts += 1;
                if interrupts > 1 {
                    return Attached::Detached;
                }
                if started {
                    interrupt(client, id).await;
                } else {
                    kill_pending = true;
                }
            }
        }
    }
    let waited = tokio::select! {
        w = waiter => w,
        _ = sigint.recv() => return Attached::Detached,
    };
    match waited {
        Ok(Ok(w)) => Attached::Exited(w.exit_code),
        Ok(Err(e)) => {
            report(format!("cannot get the container's exit status: {e}"));
            Attached::Failed
        }
        Err(e) => {
            report(format!("cannot get the container's exit status: {e}"));
            Attached::Failed
        }
    }
}

/// Forwards a Ctrl-C; "not running" means it is exiting anyway.
async fn interrupt(client: &DaemonClient, id: &str) {
    match client.kill(id, libc::SIGINT).await {
        Ok(()) => {}
        Err(ClientError::Api { status: 409, .. }) => {}
        Err(e) => report(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::tests::parse as parse_args;
    use crate::cli::Verb;

    fn run_args(a: &[&str]) -> RunArgs {
        let mut v = vec!["run"];
        v.extend_from_slice(a);
        match parse_args(&v).unwrap() {
            Verb::Run(r) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn flags_then_image_then_command() {
        let r = run_args(&[
            "-d",
            "--rm",
            "--name",
            "web",
            "-e",
            "A=1",
            "--env",
            "B=2",
            "-w",
            "/srv",
            "-u",
            "1000:1000",
            "--cpus",
            "1.5",
            "-m",
            "1g",
            "--hostname",
            "box",
            "-l",
            "team=a",
            "--entrypoint",
            "/bin/sh",
            "busybox",
            "-c",
            "echo hi -d --rm",
        ]);
        assert!(r.detach && r.rm);
        let req = r.opts.request(r.rm).unwrap();
        assert_eq!(req.image, "busybox");
        assert_eq!(req.name.as_deref(), Some("web"));
        assert_eq!(req.env, ["A=1", "B=2"]);
        assert_eq!(req.workdir.as_deref(), Some("/srv"));
        assert_eq!(req.user.as_deref(), Some("1000:1000"));
        assert_eq!(req.vcpus, Some(2));
        assert_eq!(req.memory_mib, Some(1024));
        assert_eq!(req.hostname.as_deref(), Some("box"));
        assert_eq!(req.labels["team"], "a");
        assert_eq!(req.entrypoint, Some(vec!["/bin/sh".to_string()]));
        assert_eq!(
            req.cmd,
            Some(vec!["-c".to_string(), "echo hi -d --rm".to_string()])
        );
        assert!(req.auto_remove && !req.tty && !req.stdin);
    }

    #[test]
    fn defaults() {
        let r = run_args(&["busybox"]);
        assert!(!r.detach && !r.rm);
        assert_eq!(r.opts.pull, PullPolicy::Missing);
        let req = r.opts.request(false).unwrap();
        assert_eq!(
            req,
            CreateRequest {
                image: "busybox".into(),
                // The CLI pulls, with progress; the daemon must not.
                pull: Some(false),
                ..Default::default()
            }
        );
        let r = run_args(&["--entrypoint", "", "busybox", "ls", "-la"]);
        let req = r.opts.request(false).unwrap();
        assert_eq!(req.entrypoint, Some(vec![]));
        assert_eq!(req.cmd, Some(vec!["ls".to_string(), "-la".to_string()]));
        let r = run_args(&["-it", "busybox", "sh"]);
        assert!(r.opts.interactive && r.opts.tty);
    }

    #[test]
    fn network_and_published_ports() {
        let r = run_args(&[
            "--network",
            "front",
            "-p",
            "8080:80",
            "--publish",
            "127.0.0.1:53:53/udp",
            "-p",
            "9000",
            "busybox",
        ]);
        let req = r.opts.request(false).unwrap();
        assert_eq!(req.network.as_deref(), Some("front"));
        let shown: Vec<String> = req.publish.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            shown,
            [
                "0.0.0.0:8080->80/tcp",
                "127.0.0.1:53->53/udp",
                "0.0.0.0:0->9000/tcp"
            ]
        );
        assert_eq!(
            run_args(&["--net", "none", "busybox"])
                .opts
                .network
                .as_deref(),
            Some("none")
        );
        assert!(parse_args(&["run", "-p", "80/sctp", "busybox"]).is_err());
        assert!(parse_args(&["run", "-p", "x:80", "busybox"]).is_err());
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(parse_args(&["run", "-m", "lots", "busybox"]).is_err());
        assert!(parse_args(&["run", "--cpus", "0", "busybox"]).is_err());
        assert!(parse_args(&["run"]).is_err());
        let r = run_args(&["-l", "=x", "busybox"]);
        assert!(r.opts.request(false).is_err());
        let r = run_args(&["--env-file", "/nonexistent/husk.env", "busybox"]);
        assert!(r.opts.request(false).unwrap_err().contains("env file"));
    }

    #[test]
    fn storage_opt_size_sets_the_rootfs_size() {
        let r = run_args(&["--storage-opt", "size=20g", "busybox"]);
        assert_eq!(r.opts.request(false).unwrap().rootfs_size, Some(20 << 30));
        for bad in ["size=lots", "dm.basesize=1g", "size"] {
            let r = run_args(&["--storage-opt", bad, "busybox"]);
            assert!(r.opts.request(false).is_err(), "{bad}");
        }
    }

    #[test]
    fn create_args() {
        match parse_args(&["create", "--rm", "--name", "x", "busybox", "true"]).unwrap() {
            Verb::Create(c) => {
                let req = c.opts.request(c.rm).unwrap();
                assert!(req.auto_remove);
                assert_eq!(req.cmd, Some(vec!["true".to_string()]));
            }
            other => panic!("{other:?}"),
        }
    }
}
