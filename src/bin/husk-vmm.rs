//! `husk-vmm`: the microVM monitor alone, the same as `husk vmm`, in a
//! binary that links nothing else. Every VM is one VMM process, so the
//! VMM's resident size is paid per VM; this binary keeps it small (the
//! full `husk` binary also carries the image store's registry client).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Run one microVM, controlled through a Firecracker-compatible API.
#[derive(Parser)]
#[command(name = "husk-vmm", version)]
struct Args {
    /// Unix socket to serve the per-VM API on.
    #[arg(long, required_unless_present = "no_api")]
    api_sock: Option<PathBuf>,
    /// Firecracker-style JSON config; the VM boots at once.
    #[arg(long)]
    config_file: Option<PathBuf>,
    /// Serve no API (needs --config-file).
    #[arg(long, requires = "config_file", conflicts_with = "api_sock")]
    no_api: bool,
    /// The microVM's id, reported by `GET /`.
    #[arg(long, default_value = "anonymous-instance")]
    id: String,
}

fn main() -> ExitCode {
    let a = Args::parse();
    let code = husk::vmm::run(husk::vmm::VmmOptions {
        api_sock: a.api_sock,
        config_file: a.config_file,
        id: a.id,
    });
    ExitCode::from(code.clamp(0, 255) as u8)
}
