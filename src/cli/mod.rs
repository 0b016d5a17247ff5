//! The Docker-like verbs (`husk run`, `ps`, `logs`, ...): each one a
//! client of the daemon (`husk serve`), with Docker's flags, columns and
//! exit codes.
//!
//! Exit codes: 0 when all went well; 1 when the daemon or the API
//! refused a management verb; for `run` and `exec`, 125 when the
//! container's process could not be run (the daemon's error), else the
//! process's own exit code.

pub mod attach;
pub mod containers;
pub mod cp;
pub mod exec;
pub mod format;
pub mod images;
pub mod logs;
pub mod network;
pub mod parse;
pub mod ps;
pub mod run;
pub mod system;
pub mod volume;

use std::future::Future;
use std::path::Path;

use clap::Subcommand;

use crate::client::DaemonClient;

/// Exit code for an error of the daemon or of husk itself, before the
/// container's process ran (Docker's 125).
pub const EXIT_DAEMON: i32 = 125;

/// The container verbs, as top-level subcommands of `husk`.
#[derive(Subcommand, Debug)]
pub enum Verb {
    /// Create and start a container, then follow its output until it exits.
    Run(run::RunArgs),
    /// Create a container without starting it; prints its id.
    Create(run::CreateArgs),
    /// Start one or more created or exited containers.
    Start(containers::IdsArgs),
    /// Stop one or more containers if they run, then start them again.
    Restart(containers::StopArgs),
    /// List containers.
    Ps(ps::PsArgs),
    /// Show a container's output.
    Logs(logs::LogsArgs),
    /// Run a command in a running container.
    Exec(exec::ExecArgs),
    /// Stop one or more containers (SIGTERM, then power off after a timeout).
    Stop(containers::StopArgs),
    /// Send a signal to one or more containers.
    Kill(containers::KillArgs),
    /// Remove one or more containers.
    Rm(containers::RmArgs),
    /// Wait until containers exit, then print their exit codes.
    Wait(containers::IdsArgs),
    /// Show containers' records as JSON.
    Inspect(containers::IdsArgs),
    /// List images.
    Images(images::ImagesArgs),
    /// Pull an image from a registry.
    Pull(images::PullArgs),
    /// Load an image from a `docker save` or OCI archive (stdin or -i).
    Load(images::LoadArgs),
    /// Remove one or more images.
    Rmi(images::RmiArgs),
    /// Manage networks.
    Network(network::NetworkArgs),
    /// Manage volumes.
    Volume(volume::VolumeArgs),
    /// Copy files between a container and the host.
    Cp(cp::CpArgs),
    /// Show what the daemon runs on and how much it holds.
    Info(system::InfoArgs),
    /// Show the daemon's events as they happen.
    Events(system::EventsArgs),
}

/// Runs a verb against the daemon at `socket` (else `$HUSK_HOST`, else the
/// default socket); returns the exit code.
pub fn dispatch(socket: Option<&Path>, verb: Verb) -> i32 {
    let fail = match &verb {
        Verb::Run(_) | Verb::Exec(_) => EXIT_DAEMON,
        _ => 1,
    };
    let socket = match crate::client::resolve_socket(socket) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("husk: {e}");
            return fail;
        }
    };
    let client = DaemonClient::new(socket);
    block_on(async move {
        match verb {
            Verb::Run(a) => run::run(&client, a).await,
            Verb::Create(a) => run::create(&client, a).await,
            Verb::Start(a) => containers::start(&client, a).await,
            Verb::Restart(a) => containers::restart(&client, a).await,
            Verb::Ps(a) => ps::ps(&client, a).await,
            Verb::Logs(a) => logs::logs(&client, a).await,
            Verb::Exec(a) => exec::exec(&client, a).await,
            Verb::Stop(a) => containers::stop(&client, a).await,
            Verb::Kill(a) => containers::kill(&client, a).await,
            Verb::Rm(a) => containers::rm(&client, a).await,
            Verb::Wait(a) => containers::wait(&client, a).await,
            Verb::Inspect(a) => containers::inspect(&client, a).await,
            Verb::Images(a) => images::images(&client, a).await,
            Verb::Pull(a) => images::pull(&client, a).await,
            Verb::Load(a) => images::load(&client, a).await,
            Verb::Rmi(a) => images::rmi(&client, a).await,
            Verb::Network(a) => network::network(&client, a).await,
            Verb::Volume(a) => volume::volume(&client, a).await,
            Verb::Cp(a) => cp::cp(&client, a).await,
            Verb::Info(a) => system::info(&client, a).await,
            Verb::Events(a) => system::events(&client, a).await,
        }
    })
    .unwrap_or_else(|e| {
        eprintln!("husk: cannot start the async runtime: {e}");
        fail
    })
}

/// Runs `f` on a single-threaded runtime: a verb is one request or one
/// stream at a time, plus a signal or two.
fn block_on<F: Future<Output = i32>>(f: F) -> std::io::Result<i32> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(rt.block_on(f))
}

/// Prints an error the way every verb does.
fn report(e: impl std::fmt::Display) {
    eprintln!("husk: {e}");
}

/// A verb's exit code for one call: 0 after `show` prints its answer, 1
/// after the error is reported.
fn answer<T, E: std::fmt::Display>(r: Result<T, E>, show: impl FnOnce(T)) -> i32 {
    match r {
        Ok(v) => {
            show(v);
            0
        }
        Err(e) => {
            report(e);
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::path::PathBuf;

    #[derive(Parser, Debug)]
    struct Cli {
        #[arg(long, global = true)]
        socket: Option<PathBuf>,
        #[command(subcommand)]
        verb: Verb,
    }

    pub(crate) fn parse(args: &[&str]) -> Result<Verb, clap::Error> {
        Cli::try_parse_from(std::iter::once("husk").chain(args.iter().copied())).map(|c| c.verb)
    }

    #[test]
    fn the_command_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn unreachable_daemon_exits_by_verb() {
        let dir = std::env::temp_dir().join(format!("husk-cli-none-{}", std::process::id()));
        let sock = dir.join("husk.sock");
        assert_eq!(dispatch(Some(&sock), parse(&["ps"]).unwrap()), 1);
        assert_eq!(
            dispatch(Some(&sock), parse(&["run", "-d", "busybox"]).unwrap()),
            EXIT_DAEMON
        );
        assert_eq!(
            dispatch(Some(&sock), parse(&["exec", "c", "true"]).unwrap()),
            EXIT_DAEMON
        );
    }
}
