//! `husk image`: the image store from the command line.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use clap::Subcommand;
use oci_client::secrets::RegistryAuth;

use super::registry::{PullEvent, PullOptions};
use super::rootfs::RootfsOptions;
use super::store::Store;

#[derive(clap::Args, Debug)]
pub struct ImageArgs {
    /// Where images are kept (default: $HUSK_STATE_DIR, else /var/lib/husk
    /// for root, else ~/.local/share/husk).
    #[arg(long, global = true)]
    pub state_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: ImageCommand,
}

#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// Pull an image from a registry.
    Pull {
        /// The image to pull, e.g. `busybox`, `registry.example:5000/team/app:1.2`
        /// or `name@sha256:...`.
        reference: String,
        /// A registry (host:port) that may be reached over plain HTTP.
        #[arg(long = "insecure-registry")]
        insecure_registries: Vec<String>,
        /// User for basic auth (or a token service); the password comes
        /// from $HUSK_REGISTRY_PASSWORD or, with --password-stdin, stdin.
        #[arg(long)]
        username: Option<String>,
        /// Read the password for --username from stdin (one line).
        #[arg(long, requires = "username")]
        password_stdin: bool,
        /// A bearer token to present as is.
        #[arg(long, conflicts_with = "username")]
        registry_token: Option<String>,
    },
    /// Import a `docker save` archive or an OCI image layout (dir or tar).
    Import {
        /// A `docker save` tarball, an OCI image layout directory, or a
        /// tarball of one; plain, gzip or zstd.
        path: PathBuf,
        /// Name the imported image.
        #[arg(long)]
        tag: Option<String>,
    },
    /// Write an image out as an OCI image layout directory.
    Export {
        /// The image to export: a reference or a manifest digest.
        reference: String,
        /// The directory to write the layout in (created if missing).
        #[arg(long, short)]
        output: PathBuf,
    },
    /// List images.
    Ls {
        /// Print the image records as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove an image reference, then collect unreferenced blobs.
    Rm {
        /// The image reference to remove.
        reference: String,
    },
    /// Delete blobs and root filesystems no image refers to.
    Gc,
    /// Write the image's ext4 root filesystem (built once, then cached).
    Rootfs {
        /// The image to build from: a reference or a manifest digest.
        reference: String,
        /// Where to write the ext4 image (a private copy of the cached one).
        #[arg(long, short)]
        output: PathBuf,
        /// Grow the copy to this many MiB.
        #[arg(long)]
        size_mib: Option<u64>,
        /// Free space the cached filesystem keeps, as % of the content.
        #[arg(long, default_value_t = RootfsOptions::default().headroom_percent)]
        headroom_percent: u64,
    },
}

/// The default state directory.
pub fn default_state_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("HUSK_STATE_DIR") {
        return PathBuf::from(d);
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/lib/husk");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/tmp".into());
    home.join(".local/share/husk")
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn short(d: &str) -> &str {
    let hex = d.strip_prefix("sha256:").unwrap_or(d);
    &hex[..hex.len().min(12)]
}

/// Per layer: digest, bytes done, bytes total.
type LayerProgress = Vec<(String, u64, u64)>;

/// Draws pull progress on stderr: one redrawn line on a terminal, a line
/// per finished layer otherwise.
struct ProgressView {
    tty: bool,
    /// The layers, and how many are finished.
    state: Mutex<(LayerProgress, usize)>,
}

impl ProgressView {
    fn on(&self, e: &PullEvent) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (layers, finished) = &mut *s;
        match e {
            PullEvent::Resolved {
                reference,
                layers: l,
            } => {
                eprintln!("pulling {reference}: {} layers", l.len());
                *layers = l.iter().map(|(d, t)| (d.clone(), 0, *t)).collect();
            }
            PullEvent::Progress { digest, done, .. } => {
                if let Some(l) = layers.iter_mut().find(|l| &l.0 == digest) {
                    l.1 = *done;
                }
            }
            PullEvent::LayerDone { digest, cached } => {
                *finished += 1;
                if let Some(l) = layers.iter_mut().find(|l| &l.0 == digest) {
                    l.1 = l.2;
                }
                if !self.tty {
                    let how = if *cached { "already present" } else { "pulled" };
                    eprintln!("layer {} {how}", short(digest));
                }
            }
        }
        if self.tty {
            let done: u64 = layers.iter().map(|l| l.1).sum();
            let total: u64 = layers.iter().map(|l| l.2).sum();
            eprint!(
                "\r\x1b[K{}/{} layers  {} / {}",
                finished,
                layers.len(),
                human(done),
                human(total)
            );
            let _ = std::io::stderr().flush();
        }
    }
}

pub fn run(args: ImageArgs) -> i32 {
    let (state, command) = match super::via_daemon::running_daemon(args.state_dir.as_deref()) {
        Some(socket) => {
            let password = match &args.command {
                ImageCommand::Pull {
                    username: Some(_),
                    password_stdin,
                    ..
                } => match read_password(*password_stdin) {
                    Ok(p) => Some(p),
                    Err(e) => return finish(Err(e)),
                },
                _ => None,
            };
            match super::via_daemon::run(socket, args.command, password) {
                super::via_daemon::Outcome::Done(r) => return finish(r),
                super::via_daemon::Outcome::Direct { state_dir, command } => (state_dir, command),
            }
        }
        None => (
            args.state_dir.unwrap_or_else(default_state_dir),
            args.command,
        ),
    };
    finish(run_command(&state, command))
}

fn finish(r: Result<(), String>) -> i32 {
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("husk image: {e}");
            1
        }
    }
}

/// The password for `--username`: one line of stdin, or
/// $HUSK_REGISTRY_PASSWORD.
fn read_password(from_stdin: bool) -> Result<String, String> {
    if from_stdin {
        let mut p = String::new();
        std::io::stdin()
            .read_to_string(&mut p)
            .map_err(|e| format!("cannot read the password: {e}"))?;
        Ok(p.trim_end_matches(['\r', '\n']).to_string())
    } else {
        std::env::var("HUSK_REGISTRY_PASSWORD")
            .map_err(|_| "--username needs $HUSK_REGISTRY_PASSWORD or --password-stdin".to_string())
    }
}

fn run_command(state: &Path, cmd: ImageCommand) -> Result<(), String> {
    let store = Store::open(state).map_err(|e| e.to_string())?;
    match cmd {
        ImageCommand::Pull {
            reference,
            insecure_registries,
            username,
            password_stdin,
            registry_token,
        } => {
            let auth = match (username, registry_token) {
                (Some(user), _) => RegistryAuth::Basic(user, read_password(password_stdin)?),
                (None, Some(token)) => RegistryAuth::Bearer(token),
                (None, None) => RegistryAuth::Anonymous,
            };
            let opts = PullOptions {
                insecure_registries,
                auth,
                ..Default::default()
            };
            let view = ProgressView {
                tty: std::io::stderr().is_terminal(),
                state: Mutex::new((Vec::new(), 0)),
            };
            let r = super::registry::pull(&store, &reference, &opts, &|e| view.on(e));
            if view.tty {
                eprintln!();
            }
            let image = r.map_err(|e| e.to_string())?;
            println!("{} {}", image.reference, image.manifest);
        }
        ImageCommand::Import { path, tag } => {
            let images =
                super::archive::import(&store, &path, tag.as_deref()).map_err(|e| e.to_string())?;
            for i in images {
                println!("{} {}", i.reference, i.manifest);
            }
        }
        ImageCommand::Export { reference, output } => {
            let image = store.get(&reference).map_err(|e| e.to_string())?;
            super::archive::export_oci_layout(&store, &image, &output)
                .map_err(|e| e.to_string())?;
        }
        ImageCommand::Ls { json } => {
            let images = store.list().map_err(|e| e.to_string())?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&images).unwrap_or_default()
                );
            } else {
                println!("{:<60} {:<12} {:>10}", "REFERENCE", "IMAGE ID", "SIZE");
                for i in images {
                    println!(
                        "{:<60} {:<12} {:>10}",
                        i.reference,
                        short(i.config.as_str()),
                        human(i.size())
                    );
                }
            }
        }
        ImageCommand::Rm { reference } => {
            let image = store.remove(&reference).map_err(|e| e.to_string())?;
            let stats = store.gc().map_err(|e| e.to_string())?;
            println!(
                "removed {}; freed {} blobs, {} root filesystems, {}",
                image.reference,
                stats.blobs,
                stats.rootfs,
                human(stats.bytes)
            );
        }
        ImageCommand::Gc => {
            let stats = store.gc().map_err(|e| e.to_string())?;
            println!(
                "freed {} blobs, {} root filesystems, {}",
                stats.blobs,
                stats.rootfs,
                human(stats.bytes)
            );
        }
        ImageCommand::Rootfs {
            reference,
            output,
            size_mib,
            headroom_percent,
        } => {
            let image = store.get(&reference).map_err(|e| e.to_string())?;
            let opts = RootfsOptions {
                headroom_percent,
                ..Default::default()
            };
            super::rootfs::export(&store, &image, opts, &output, size_mib.map(|m| m << 20))
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}
