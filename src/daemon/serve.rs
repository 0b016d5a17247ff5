//! `husk serve`: settings (flags, then a config file, then embedded
//! defaults), the listeners, and the start-up that finds running VMs
//! again. The daemon can be killed at any moment: containers' VMs run on
//! in their own processes, and the next `husk serve` picks them up.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::backend::{self, BackendKind};
use super::containers::{DaemonConfig, Manager};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// KVM when this host can run the guest kernel, else software emulation.
    Auto,
    Kvm,
    Tcg,
}

/// Run the husk daemon: containers in microVMs, behind an HTTP/JSON API.
#[derive(clap::Args, Debug, Default)]
pub struct ServeArgs {
    /// The API's Unix socket (default: /run/husk/husk.sock for root, else
    /// $XDG_RUNTIME_DIR/husk/husk.sock, else /tmp/husk-$UID/husk.sock).
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Also listen on TCP (e.g. 127.0.0.1:2375); needs --token-file.
    #[arg(long)]
    pub listen: Option<String>,
    /// A file holding the bearer token TCP clients must send.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Where images and containers are kept.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// The guest kernel (default: <state-dir>/kernels/vmlinux, which
    /// resources/guest-kernel/build.sh maintains).
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// The husk-agent binary (default: beside husk).
    #[arg(long)]
    pub agent: Option<PathBuf>,
    /// vCPUs of a container that asks for none.
    #[arg(long)]
    pub vcpus: Option<u8>,
    /// Memory (MiB) of a container that asks for none.
    #[arg(long)]
    pub memory_mib: Option<u32>,
    #[arg(long, value_enum)]
    pub vm_backend: Option<BackendChoice>,
    /// A registry (host:port) that pulls may reach over plain HTTP
    /// (repeatable).
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    pub insecure_registries: Vec<String>,
    /// Run kvm VMs without the jailer (chroot, namespaces, cgroup, a uid
    /// of their own); their VMMs keep their seccomp filters. Debugging
    /// only.
    #[arg(long)]
    pub no_jail: bool,
    /// The uids jailed VMs run as, one VM each (default 200000-299999);
    /// they need no /etc/passwd entries.
    #[arg(long, value_name = "FIRST-LAST", value_parser = backend::jail::parse_uid_range)]
    pub jail_uids: Option<(u32, u32)>,
    /// `none`: no default network; containers get no network unless they
    /// name one (`husk network create`).
    #[arg(long, value_name = "none", value_parser = parse_bridge)]
    pub bridge: Option<String>,
    /// The default network's subnet when the daemon first makes it (a
    /// free /16 is chosen otherwise), e.g. 10.90.0.0/16.
    #[arg(long, value_name = "CIDR")]
    pub bip: Option<String>,
    /// A DNS server the networks' resolvers forward other names to
    /// (repeatable; default: the host's /etc/resolv.conf).
    #[arg(long = "dns", value_name = "IP")]
    pub dns: Vec<std::net::IpAddr>,
    /// A JSON file with any of the settings above (flags win).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// The config file's shape: the flags' names with underscores.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    socket: Option<PathBuf>,
    listen: Option<String>,
    token_file: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    kernel: Option<PathBuf>,
    agent: Option<PathBuf>,
    vcpus: Option<u8>,
    memory_mib: Option<u32>,
    vm_backend: Option<BackendChoice>,
    #[serde(default)]
    insecure_registries: Vec<String>,
    no_jail: Option<bool>,
    jail_uids: Option<String>,
    bridge: Option<String>,
    bip: Option<String>,
    #[serde(default)]
    dns: Vec<std::net::IpAddr>,
}

fn parse_bridge(s: &str) -> Result<String, String> {
    if s == "none" {
        Ok(s.into())
    } else {
        Err(format!(
            "{:?}: only `none` (no default network) is accepted",
            crate::text::echo(s)
        ))
    }
}

fn net_options(
    bridge: Option<String>,
    bip: Option<String>,
    dns: Vec<std::net::IpAddr>,
) -> Result<super::network::NetOptions, String> {
    if let Some(b) = &bridge {
        parse_bridge(b)?;
    }
    let default_subnet = match bip {
        Some(s) => {
            let s: super::network::ipam::Subnet = s.parse().map_err(|e| format!("--bip: {e}"))?;
            super::network::ipam::check_subnet(&s).map_err(|e| format!("--bip: {e}"))?;
            Some(s)
        }
        None => None,
    };
    Ok(super::network::NetOptions {
        no_default: bridge.is_some(),
        default_subnet,
        dns: dns
            .into_iter()
            .map(|ip| std::net::SocketAddr::new(ip, 53))
            .collect(),
    })
}

/// Where the daemon listens by default (the CLI looks there too).
pub fn default_socket() -> PathBuf {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    if uid == 0 {
        return PathBuf::from("/run/husk/husk.sock");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) => PathBuf::from(d).join("husk/husk.sock"),
        None => PathBuf::from(format!("/tmp/husk-{uid}/husk.sock")),
    }
}

struct Settings {
    socket: PathBuf,
    listen: Option<(String, String)>,
    config: DaemonConfig,
}

fn settings(args: ServeArgs) -> Result<Settings, String> {
    let file: FileConfig = match &args.config {
        Some(p) => {
            let bytes = std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?;
            serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", p.display()))?
        }
        None => FileConfig::default(),
    };
    let state_dir = args
        .state_dir
        .or(file.state_dir)
        .unwrap_or_else(crate::image::cli::default_state_dir);
    let kernel = args
        .kernel
        .or(file.kernel)
        .unwrap_or_else(|| state_dir.join("kernels/vmlinux"));
    if !kernel.exists() {
        return Err(format!(
            "no guest kernel at {}: build it with resources/guest-kernel/build.sh, or pass --kernel",
            kernel.display()
        ));
    }
    let listen = match (
        args.listen.or(file.listen),
        args.token_file.or(file.token_file),
    ) {
        (None, _) => None,
        (Some(_), None) => {
            return Err("--listen needs --token-file: the TCP API is never open".into())
        }
        (Some(addr), Some(tf)) => {
            let token =
                std::fs::read_to_string(&tf).map_err(|e| format!("{}: {e}", tf.display()))?;
            let token = token.trim().to_string();
            if token.len() < 16 {
                return Err(format!(
                    "the token in {} is shorter than 16 characters",
                    tf.display()
                ));
            }
            Some((addr, token))
        }
    };
    let choice = args
        .vm_backend
        .or(file.vm_backend)
        .unwrap_or(BackendChoice::Auto);
    let (backend, fallback_reason) = match choice {
        BackendChoice::Kvm => (BackendKind::Kvm, None),
        BackendChoice::Tcg => (BackendKind::Tcg, None),
        BackendChoice::Auto => backend::auto(&kernel),
    };
    backend::available(backend)
        .map_err(|e| format!("the {backend:?} backend cannot run here: {e}"))?;
    let net = net_options(
        args.bridge.or(file.bridge),
        args.bip.or(file.bip),
        if args.dns.is_empty() {
            file.dns
        } else {
            args.dns
        },
    )?;
    let socket = args.socket.or(file.socket).unwrap_or_else(default_socket);
    let run_dir = socket.parent().unwrap_or(Path::new("/")).join("vms");
    let jail = jail_settings(
        backend,
        args.no_jail || file.no_jail == Some(true),
        match (args.jail_uids, file.jail_uids) {
            (Some(r), _) => Some(r),
            (None, Some(s)) => Some(backend::jail::parse_uid_range(&s)?),
            (None, None) => None,
        },
        &state_dir,
    )?;
    Ok(Settings {
        socket,
        listen,
        config: DaemonConfig {
            run_dir,
            state_dir,
            kernel,
            agent: args.agent.or(file.agent),
            vcpus: args.vcpus.or(file.vcpus).unwrap_or(1),
            memory_mib: args.memory_mib.or(file.memory_mib).unwrap_or(256),
            backend,
            fallback_reason,
            insecure_registries: if args.insecure_registries.is_empty() {
                file.insecure_registries
            } else {
                args.insecure_registries
            },
            jail,
            net,
        },
    })
}

/// How the daemon jails kvm VMs: on by default, which needs root.
fn jail_settings(
    backend: BackendKind,
    off: bool,
    uids: Option<(u32, u32)>,
    state_dir: &Path,
) -> Result<Option<backend::jail::JailSettings>, String> {
    if off {
        tracing::warn!(
            "--no-jail: kvm VMs run without the jailer (no chroot, namespaces, cgroup or uid of \
             their own); debugging only"
        );
        return Ok(None);
    }
    // SAFETY: geteuid has no arguments and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        if backend == BackendKind::Tcg {
            // QEMU still runs in its own seccomp sandbox, as this user.
            tracing::warn!("not root: QEMU VMs run as this user, not a uid of their own");
            return Ok(None);
        }
        return Err(
            "jailing VMs needs root: run husk serve as root, or pass --no-jail (debugging only)"
                .into(),
        );
    }
    let husk = std::env::current_exe().map_err(|e| format!("cannot find husk itself: {e}"))?;
    Ok(Some(backend::jail::JailSettings {
        base: state_dir.join("jail"),
        uids: uids.unwrap_or(backend::jail::DEFAULT_UIDS),
        claims: PathBuf::from(backend::jail::HOST_CLAIMS),
        jailer: backend::jail::find_jailer(&husk),
    }))
}

/// A socket path that no live daemon holds: a stale one is removed.
fn claim_socket(path: &Path) -> Result<tokio::net::UnixListener, String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(format!(
            "{} is in use: another husk daemon runs",
            path.display()
        ));
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => {
            let _ = std::fs::remove_file(path);
        }
        Ok(_) => return Err(format!("{} exists and is not a socket", path.display())),
        Err(_) => {}
    }
    let l = tokio::net::UnixListener::bind(path).map_err(|e| format!("{}: {e}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660));
    Ok(l)
}

/// Marks every descriptor the daemon inherited (beyond stdio) close-on-exec,
/// so no VM process it starts gets one (its own are close-on-exec
/// already).
fn close_inherited_on_exec() {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<i32> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: F_GETFD and F_SETFD take an int and no pointers; an fd
        // that is already gone (the directory's own) gives EBADF.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
}

/// The process entry; returns the exit code.
pub fn serve(args: ServeArgs) -> i32 {
    crate::vmm::logger::Logger::init();
    close_inherited_on_exec();
    let s = match settings(args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("husk serve: {e}");
            return 1;
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("husk serve: {e}");
            return 1;
        }
    };
    match rt.block_on(run(s)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("husk serve: {e}");
            1
        }
    }
}

async fn run(s: Settings) -> Result<(), String> {
    if let Some(why) = &s.config.fallback_reason {
        tracing::warn!("{why}");
        eprintln!("husk serve: warning: {why}");
    }
    let unix = claim_socket(&s.socket)?;
    let manager = Manager::open(s.config).map_err(|e| e.to_string())?;
    manager.start_network().await;
    manager.recover();
    let app = super::api::router(manager.clone(), None);
    eprintln!("husk serve: listening on {}", s.socket.display());
    let mut tasks = Vec::new();
    if let Some((addr, token)) = s.listen {
        let tcp = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|e| format!("{addr}: {e}"))?;
        let app = super::api::router(manager.clone(), Some(token));
        eprintln!("husk serve: listening on {addr} (bearer token required)");
        tasks.push(tokio::spawn(async move {
            let _ = axum::serve(tcp, app).await;
        }));
    }
    let unix_app = tokio::spawn(async move { axum::serve(unix, app).await });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| e.to_string())?;
    tokio::select! {
        r = unix_app => r.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?,
        _ = term.recv() => eprintln!("husk serve: stopping; containers keep running"),
        _ = tokio::signal::ctrl_c() => eprintln!("husk serve: stopping; containers keep running"),
    }
    let _ = std::fs::remove_file(&s.socket);
    Ok(())
}
