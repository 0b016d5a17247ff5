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
    /// Write the embedded probe guest out as an ELF kernel.
    ProbeGuest {
        #[arg(long, short)]
        output: PathBuf,
        /// Kernel format, which picks the VMM's boot path.
        #[arg(long, value_enum, default_value = "linux64")]
        boot: husk::probe::ProbeFormat,
    },
    /// Check that this host can run husk.
    Doctor,
    /// Pull, import, list and remove images, and build root filesystems.
    Image(husk::image::cli::ImageArgs),
    /// Measure start-up, boot and memory figures; prints JSON.
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
