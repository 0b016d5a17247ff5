//! The shim server's process: what containerd-shim's own bootstrap does,
//! with the task service registered under both names containerd uses
//! for it: `containerd.task.v2.Task` (containerd 1.6 and 1.7) and
//! `containerd.task.v3.Task` (2.x; the messages are the same), where
//! containerd-shim 0.12 registers only the second.

use std::sync::Arc;

use containerd_shim::protos::shim_async::{create_task, Task};
use containerd_shim::protos::ttrpc::r#async::{transport::Listener, Server};
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{ExitSignal, Flags};
use tokio::signal::unix::{signal, SignalKind};

use super::config::ShimConfig;
use super::task;

const V3: &str = "containerd.task.v3.Task";
const V2: &str = "containerd.task.v2.Task";

fn socket_path(address: &str) -> &str {
    address.strip_prefix("unix://").unwrap_or(address)
}

/// Serves the task API on `flags.socket` until `Shutdown` ends the pod.
pub async fn serve(flags: Flags) -> Result<(), String> {
    // SAFETY: prctl with integer arguments only. The shim reaps what its
    // VM's processes leave (a backend's helper outliving its VMM).
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
    if let Err(e) = containerd_shim::logger::init(flags.debug, "info", &flags.namespace, &flags.id)
    {
        eprintln!("{}: logger: {e}", super::RUNTIME);
    }
    let ttrpc = std::env::var("TTRPC_ADDRESS").map_err(|_| "TTRPC_ADDRESS is not set")?;
    let publisher = RemotePublisher::new(&ttrpc)
        .await
        .map_err(|e| e.to_string())?;
    let exit = Arc::new(ExitSignal::default());
    let cfg = ShimConfig::load(None).map_err(|e| e.to_string());
    let svc: Arc<dyn Task + Send + Sync> = Arc::new(task::Service::new(
        cfg,
        &flags.namespace,
        &flags.id,
        publisher,
        exit.clone(),
    ));
    let mut services = create_task(svc.clone());
    if let Some(v2) = create_task(svc).remove(V3) {
        services.insert(V2.to_string(), v2);
    }
    let path = socket_path(&flags.socket).to_string();
    if flags.socket.is_empty() {
        return Err("no -socket to serve on".into());
    }
    let _ = std::fs::remove_file(&path);
    let listener =
        std::os::unix::net::UnixListener::bind(&path).map_err(|e| format!("{path}: {e}"))?;
    let listener = Listener::try_from(listener).map_err(|e| format!("{path}: {e}"))?;
    let mut server = Server::new()
        .add_listener(listener)
        .register_service(services);
    server.start().await.map_err(|e| e.to_string())?;
    // `start` reads the server's stdout until it closes: it has started.
    // SAFETY: dup2 on the process's own standard descriptors.
    unsafe { libc::dup2(libc::STDERR_FILENO, libc::STDOUT_FILENO) };
    tokio::spawn(reap());
    log::info!("serving pod {} on {path}", flags.id);
    exit.wait().await;
    let _ = server.shutdown().await;
    let _ = std::fs::remove_file(&path);
    Ok(())
}

/// Reaps exited children; SIGTERM, SIGINT and SIGPIPE are ignored (the
/// pod ends through `Shutdown`).
async fn reap() {
    let (Ok(mut chld), Ok(mut term), Ok(mut int), Ok(mut pipe)) = (
        signal(SignalKind::child()),
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::pipe()),
    ) else {
        return;
    };
    loop {
        tokio::select! {
            _ = chld.recv() => loop {
                let mut status = 0;
                // SAFETY: waitpid writes the status into the local.
                if unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) } <= 0 {
                    break;
                }
            },
            _ = term.recv() => {}
            _ = int.recv() => {}
            _ = pipe.recv() => {}
        }
    }
}
