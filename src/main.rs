//! The `husk` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "husk", version, about = "KVM microVM monitor")]
struct Cli {
    /// The daemon's socket, for the container verbs (default: $HUSK_HOST,
    /// else /run/husk/husk.sock for root, else
    /// $XDG_RUNTIME_DIR/husk/husk.sock, else /tmp/husk-$UID/husk.sock).
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon that the container verbs talk to.
    Serve(husk::daemon::ServeArgs),
    #[command(flatten)]
    Container(husk::cli::Verb),
    /// Run one microVM, controlled through a Firecracker-compatible API.
    Vmm(husk::vmm::VmmArgs),
    /// Run a VMM jailed, as Firecracker's jailer does: chroot, namespaces,
    /// a cgroup, rlimits, an unprivileged uid and no capabilities.
    Jailer(husk::jail::jailer::JailerArgs),
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
    /// Work on snapshot files: merge a diff onto its base, inspect a state file.
    Snapshot {
        #[command(subcommand)]
        command: husk::vmm::snapshot::cli::SnapshotCommand,
    },
    /// Pull, import, list and remove images, and build root filesystems.
    Image(husk::image::cli::ImageArgs),
    /// Measure start-up, boot, memory, API-under-load and image figures; prints JSON.
    Bench(husk::bench::BenchArgs),
    /// The guest agent (husk-agent): build what carries it into a guest.
    Agent {
        #[command(subcommand)]
        command: AgentCommand,
    },
}

#[derive(Subcommand)]
enum AgentCommand {
    /// Write the initramfs that carries husk-agent as /init (gzip'd cpio;
    /// built once per agent binary, then cached in the state directory).
    Initramfs {
        /// File to write the initramfs to (replaced if it exists).
        #[arg(long, short)]
        output: PathBuf,
        /// The husk-agent binary (default: $HUSK_AGENT, else husk-agent
        /// beside husk, else one directory up).
        #[arg(long)]
        agent: Option<PathBuf>,
        /// Where the cache is kept (default: $HUSK_STATE_DIR, else
        /// /var/lib/husk for root, else ~/.local/share/husk).
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Vmm(args) => husk::vmm::run(args.into()),
        Command::Jailer(args) => husk::jail::jailer::run(args),
        Command::ProbeGuest { output, boot } => match husk::probe::write_probe_as(&output, boot) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("husk probe-guest: cannot write {}: {e}", output.display());
                1
            }
        },
        Command::Doctor => husk::doctor::run(),
        Command::Image(args) => husk::image::cli::run(args),
        Command::Snapshot { command } => husk::vmm::snapshot::cli::run(command),
        Command::Bench(args) => husk::bench::run(args),
        Command::Agent { command } => agent(command),
        Command::Container(verb) => husk::cli::dispatch(cli.socket.as_deref(), verb),
        Command::Serve(args) => husk::daemon::serve(args),
    };
    ExitCode::from(code.clamp(0, 255) as u8)
}

fn agent(command: AgentCommand) -> i32 {
    use husk::agent::initramfs;
    match command {
        AgentCommand::Initramfs {
            output,
            agent,
            state_dir,
        } => {
            let state = state_dir.unwrap_or_else(husk::image::cli::default_state_dir);
            let written = match agent {
                Some(a) => Ok(a),
                None => initramfs::find_agent(),
            }
            .and_then(|a| initramfs::export(&a, &state, &output));
            match written {
                Ok(_) => 0,
                Err(e) => {
                    eprintln!("husk agent initramfs: {e}");
                    1
                }
            }
        }
    }
}
