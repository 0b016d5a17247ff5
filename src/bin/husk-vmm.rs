//! `husk-vmm`: the microVM monitor alone, the same as `husk vmm`, in a
//! binary that links nothing else. Every VM is one VMM process, so the
//! VMM's resident size is paid per VM; this binary keeps it small (the
//! full `husk` binary also carries the image store's registry client).

use std::process::ExitCode;

use clap::Parser;

/// Run one microVM, controlled through a Firecracker-compatible API.
#[derive(Parser)]
#[command(name = "husk-vmm", version)]
struct Cli {
    #[command(flatten)]
    args: husk::vmm::VmmArgs,
}

fn main() -> ExitCode {
    let code = husk::vmm::run(Cli::parse().args.into());
    ExitCode::from(code.clamp(0, 255) as u8)
}
