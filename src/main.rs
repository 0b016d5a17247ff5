//! The `husk` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "husk", version, about = "KVM microVM monitor")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one microVM, controlled through a Firecracker-compatible API.
    Vmm(husk::vmm::VmmArgs),
    /// Write the embedded probe guest out as a kernel (ELF vmlinux or bzImage).
    ProbeGuest {
        /// File to write the guest kernel to (replaced if it exists).
        #[arg(long, short)]
        output: PathBuf,
        /// Kernel format, which picks the VMM's boot path.
        #[arg(long, value_enum, default_value = "linux64")]
        boot: husk::probe::ProbeFormat,
    },
    /// Report what this host can run: the probe guest, a Linux guest, containers.
    ///
    /// Exits 0 when the VMM can run here (the probe guest runs), 1 otherwise.
    Doctor,
    /// Pull, import, list and remove images, and build root filesystems.
    Image(husk::image::cli::ImageArgs),
    /// Measure start-up, boot, memory, API-under-load and image figures; prints JSON.
    Bench(husk::bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Vmm(args) => husk::vmm::run(args.into()),
        Command::ProbeGuest { output, boot } => match husk::probe::write_probe_as(&output, boot) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("husk probe-guest: cannot write {}: {e}", output.display());
                1
            }
        },
        Command::Doctor => husk::doctor::run(),
        Command::Image(args) => husk::image::cli::run(args),
        Command::Bench(args) => husk::bench::run(args),
    };
    ExitCode::from(code.clamp(0, 255) as u8)
}
