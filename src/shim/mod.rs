//! `containerd-shim-husk-v2`: containerd's runtime v2 shim that runs each
//! pod in a husk microVM (docs/kubernetes.md).
//!
//! - `start` (containerd runs it in the container's bundle): starts the
//!   shim server, detached, and prints its ttrpc address. Containers of
//!   one pod (CRI's `io.kubernetes.cri.sandbox-id`) share one server, and
//!   so one VM: a later container's `start` finds the pod's server
//!   listening and answers with its address.
//! - the server ([`task`]): the task API; the pod's first container
//!   boots the VM ([`pod`]), every container runs in it through the guest
//!   agent, with its root filesystem from the bundle shared over virtio-fs.
//! - `delete`: the clean-up containerd runs after a shim died: the pod's
//!   VM is killed and its mounts undone, from what the pod's directory
//!   records.

pub mod config;
pub mod pod;
mod serve;
pub mod spec;
pub mod stdio;
pub mod task;

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::asynchronous::{spawn, ExitSignal, Shim};
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Config, DeleteResponse, Error, Flags, StartOpts};

use config::{Role, ShimConfig};

/// The runtime's name, as containerd's `--runtime` names it.
pub const RUNTIME: &str = "io.containerd.husk.v2";

/// The shim, as containerd's shim protocol drives it.
pub struct HuskShim {
    id: String,
    namespace: String,
    cfg: Result<ShimConfig, String>,
    exit: Arc<ExitSignal>,
}

/// The bundle's spec annotations (the bundle is the working directory of
/// `start` and `delete`).
fn bundle_annotations() -> std::collections::HashMap<String, String> {
    oci_spec::runtime::Spec::load("config.json")
        .map(|s| spec::annotations(&s))
        .unwrap_or_default()
}

/// `start`: the pod's server, started now or found running; a new one
/// reads the configuration file `config` names (the runtime options').
async fn start_server(
    cfg: &Result<ShimConfig, String>,
    mut opts: StartOpts,
    config: Option<&std::path::Path>,
) -> Result<String, Error> {
    let cfg = cfg.clone().map_err(Error::InvalidArgument)?;
    // A pod's later containers: its server runs already.
    // One server per pod: a pod's containers find their sandbox's.
    let grouping = match config::role(&bundle_annotations()) {
        Role::Container { sandbox } => sandbox,
        Role::Sandbox => opts.id.clone(),
    };
    // The servers' sockets live in husk's state directory, not in
    // containerd's.
    let sockets = cfg.state_dir.join("s");
    std::fs::create_dir_all(&sockets).map_err(|e| Error::IoError {
        context: format!("socket directory {}", sockets.display()),
        err: e,
    })?;
    opts.socket_dir = Some(sockets.to_string_lossy().into_owned());
    let address = opts.socket_address(&grouping);
    let path = address.strip_prefix("unix://").unwrap_or(&address);
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Ok(address);
    }
    let config = config.map(|p| p.to_string_lossy().into_owned());
    let vars = match &config {
        Some(p) => vec![(config::CONFIG_ENV, p.as_str())],
        None => Vec::new(),
    };
    spawn(opts, &grouping, vars).await
}

#[async_trait]
impl Shim for HuskShim {
    type T = task::Service;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        HuskShim {
            id: args.id.clone(),
            namespace: args.namespace.clone(),
            cfg: ShimConfig::load(None).map_err(|e| e.to_string()),
            exit: Arc::new(ExitSignal::default()),
        }
    }

    async fn start_shim(&mut self, opts: StartOpts) -> Result<String, Error> {
        start_server(&self.cfg, opts, None).await
    }

    async fn delete_shim(&mut self) -> Result<DeleteResponse, Error> {
        // After a shim died: what it ran is cleaned up from its records.
        if let Ok(dir) = std::fs::read_to_string(task::POD_FILE) {
            let dir = pod::PodDir(PathBuf::from(dir.trim()));
            let id = self.id.clone();
            let is_pod = dir.0.file_name().is_some_and(|n| n.to_string_lossy() == id);
            let _ = tokio::task::spawn_blocking(move || {
                if is_pod {
                    pod::tear_down(&dir);
                } else {
                    pod::remove_container(&dir, &id);
                }
            })
            .await;
        }
        let _ = &self.namespace;
        Ok(DeleteResponse {
            exit_status: 128 + libc::SIGKILL as u32,
            exited_at: Some(
                containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp::from(
                    std::time::SystemTime::now(),
                ),
            )
            .into(),
            ..Default::default()
        })
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        task::Service::new(
            self.cfg.clone(),
            &self.namespace,
            &self.id,
            publisher,
            self.exit.clone(),
        )
    }
}

/// `start` as containerd 1.6 expects it: the address alone on stdout
/// (containerd-shim 0.12 answers with JSON, which 1.6 cannot read; 1.7
/// and later read both).
async fn start_action() -> i32 {
    let args: Vec<_> = std::env::args_os().collect();
    let flags = match containerd_shim::parse(&args[1..]) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{RUNTIME}: {e}");
            return 1;
        }
    };
    let opts = StartOpts {
        id: flags.id.clone(),
        publish_binary: flags.publish_binary.clone(),
        address: flags.address.clone(),
        ttrpc_address: std::env::var("TTRPC_ADDRESS").unwrap_or_default(),
        namespace: flags.namespace.clone(),
        debug: flags.debug,
        ..Default::default()
    };
    // containerd writes the runtime's options (a protobuf `Any`) to
    // `start`'s stdin: their `ConfigPath` names the configuration file.
    let mut options = Vec::new();
    // SAFETY: isatty takes no pointers.
    if unsafe { libc::isatty(libc::STDIN_FILENO) } == 0 {
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut options);
    }
    let config = config::any_config_path(&options);
    let cfg = ShimConfig::load(config.as_deref()).map_err(|e| e.to_string());
    match start_server(&cfg, opts, config.as_deref()).await {
        Ok(address) => {
            use std::io::Write;
            // The bundle's `address`: how containerd finds the shim again
            // after it restarted (and how runc's shims leave it).
            if let Err(e) = std::fs::write("address", &address) {
                eprintln!("{RUNTIME}: the bundle's address file: {e}");
                return 1;
            }
            let mut out = std::io::stdout();
            let _ = out.write_all(address.as_bytes());
            let _ = out.flush();
            0
        }
        Err(e) => {
            eprintln!("{RUNTIME}: {e}");
            1
        }
    }
}

/// The command line's flags.
fn flags() -> Option<Flags> {
    let args: Vec<_> = std::env::args_os().collect();
    containerd_shim::parse(&args[1..]).ok()
}

/// The binary's entry.
pub fn main() {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{RUNTIME}: {e}");
            std::process::exit(1);
        }
    };
    let code = match flags() {
        Some(f) if f.action == "start" => rt.block_on(start_action()),
        Some(f) if f.action.is_empty() && !f.version && !f.info => {
            match rt.block_on(serve::serve(f)) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("{RUNTIME}: {e}");
                    1
                }
            }
        }
        _ => {
            rt.block_on(containerd_shim::asynchronous::run::<HuskShim>(
                RUNTIME, None,
            ));
            0
        }
    };
    // Threads blocked on a FIFO nobody will open must not hold the exit.
    rt.shutdown_background();
    std::process::exit(code);
}
