//! `husk-jailer`: the jailer alone, the same as `husk jailer`, in a
//! binary that links nothing else. A jailer stays beside every VMM it
//! starts (it waits, forwards signals and cleans up), so its start-up
//! time and resident size are paid per VM; this binary keeps both small.

use std::process::ExitCode;

use clap::Parser;

/// Run a VMM jailed, as Firecracker's jailer does: chroot, namespaces, a
/// cgroup, rlimits, an unprivileged uid and no capabilities.
#[derive(Parser)]
#[command(name = "husk-jailer", version)]
struct Cli {
    #[command(flatten)]
    args: husk::jail::jailer::JailerArgs,
}

fn main() -> ExitCode {
    let code = husk::jail::jailer::run(Cli::parse().args);
    ExitCode::from(code.clamp(0, 255) as u8)
}
