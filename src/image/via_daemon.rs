//! `husk image` when a daemon runs: pulls, imports, listings and removals
//! go through its API, so that it sees them (a running container's image
//! is not removed under it) and registry credentials reach the one
//! process that pulls. Export, gc and rootfs work on the daemon's store
//! directly; the store's locks keep both sides safe.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use super::cli::ImageCommand;
use crate::client::types::PullRequest;
use crate::client::DaemonClient;

/// The socket of a daemon that answers, unless the caller named a store.
pub fn running_daemon(state_dir: Option<&Path>) -> Option<PathBuf> {
    if state_dir.is_some() {
        return None;
    }
    let socket = crate::client::resolve_socket(None).ok()?;
    std::os::unix::net::UnixStream::connect(&socket).ok()?;
    Some(socket)
}

/// What the daemon did, or a direct command to run on its store.
pub enum Outcome {
    Done(Result<(), String>),
    Direct {
        state_dir: PathBuf,
        command: ImageCommand,
    },
}

pub fn run(socket: PathBuf, cmd: ImageCommand, password: Option<String>) -> Outcome {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return Outcome::Done(Err(format!("cannot start the async runtime: {e}"))),
    };
    let client = DaemonClient::new(socket);
    rt.block_on(async move {
        let r = match cmd {
            ImageCommand::Pull {
                reference,
                insecure_registries,
                username,
                registry_token,
                ..
            } => {
                if !insecure_registries.is_empty() {
                    return Outcome::Done(Err(
                        "the daemon pulls: give --insecure-registry to `husk serve`, or pull with --state-dir".into(),
                    ));
                }
                let req = PullRequest {
                    reference,
                    username,
                    password,
                    registry_token,
                };
                pull(&client, &req).await
            }
            ImageCommand::Import { path, tag } => client
                .import(&path, tag.as_deref())
                .await
                .map(|images| {
                    for i in images {
                        println!("{} {}", i.reference, i.manifest.unwrap_or_default());
                    }
                })
                .map_err(|e| e.to_string()),
            ImageCommand::Ls { json } => list(&client, json).await,
            ImageCommand::Rm { reference } => client
                .remove_image(&reference)
                .await
                .map(|()| println!("removed {reference}"))
                .map_err(|e| e.to_string()),
            command => {
                return match client.info().await {
                    Ok(info) => Outcome::Direct {
                        state_dir: PathBuf::from(info.state_dir),
                        command,
                    },
                    Err(e) => Outcome::Done(Err(e.to_string())),
                }
            }
        };
        Outcome::Done(r)
    })
}

async fn pull(client: &DaemonClient, req: &PullRequest) -> Result<(), String> {
    use crate::client::types::PullEvent;
    let mut stream = client.pull_with(req).await.map_err(|e| e.to_string())?;
    let tty = std::io::stderr().is_terminal();
    let mut view = crate::cli::images::PullView::new(tty);
    loop {
        match stream.next().await.map_err(|e| e.to_string())? {
            Some(PullEvent::Done { reference, .. }) => {
                let manifest = client
                    .images()
                    .await
                    .ok()
                    .and_then(|l| l.into_iter().find(|i| i.reference == reference))
                    .and_then(|i| i.manifest)
                    .unwrap_or_default();
                println!("{reference} {manifest}");
                return Ok(());
            }
            Some(PullEvent::Error { error }) => return Err(crate::text::echo(&error).into_owned()),
            Some(PullEvent::Progress {
                status,
                layer,
                current,
                total,
            }) => eprint!("{}", view.update(&status, layer.as_deref(), current, total)),
            None => return Err("the pull stream ended before the pull did".into()),
        }
    }
}

async fn list(client: &DaemonClient, json: bool) -> Result<(), String> {
    let images = client.images().await.map_err(|e| e.to_string())?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&images).unwrap_or_default()
        );
        return Ok(());
    }
    println!("{:<60} {:<12} {:>10}", "REFERENCE", "IMAGE ID", "SIZE");
    for i in images {
        let id = i.id.strip_prefix("sha256:").unwrap_or(&i.id);
        println!(
            "{:<60} {:<12} {:>10}",
            i.reference,
            &id[..id.len().min(12)],
            crate::cli::format::human_size(i.size)
        );
    }
    Ok(())
}
