//! `husk snapshot`: work on snapshot files without a VMM.

use std::path::{Path, PathBuf};

use super::{format, memory, MicrovmState};

#[derive(clap::Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Merge a diff snapshot's memory file onto its base memory file,
    /// which then holds the memory as it was at the diff. Load the diff's
    /// state file with the rebased memory file.
    Rebase {
        /// The diff snapshot's memory file.
        diff: PathBuf,
        /// The base memory file (a full snapshot's, or an earlier
        /// rebase), changed in place.
        #[arg(long)]
        base: PathBuf,
    },
    /// Check a state file and print what it holds, as JSON.
    Inspect {
        /// The state file (`snapshot_path`).
        state: PathBuf,
    },
}

pub fn run(cmd: SnapshotCommand) -> i32 {
    let result = match cmd {
        SnapshotCommand::Rebase { diff, base } => rebase(&diff, &base),
        SnapshotCommand::Inspect { state } => inspect(&state),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("husk snapshot: {e}");
            1
        }
    }
}

fn rebase(diff: &Path, base: &Path) -> Result<(), String> {
    let copied = memory::rebase(diff, base).map_err(|e| e.to_string())?;
    eprintln!(
        "{} bytes of {} merged into {}",
        copied,
        crate::text::echo_path(diff),
        crate::text::echo_path(base)
    );
    Ok(())
}

fn inspect(path: &Path) -> Result<(), String> {
    let state: MicrovmState = format::read_file(path).map_err(|e| e.to_string())?;
    let config: serde_json::Value =
        serde_json::from_str(&state.config_json).map_err(|e| format!("its configuration: {e}"))?;
    let summary = serde_json::json!({
        "format_version": format::FORMAT_VERSION,
        "husk_version": state.husk_version,
        "vcpus": state.vcpus.len(),
        "memory_regions": state
            .memory
            .iter()
            .map(|(start, len)| serde_json::json!({"guest_phys_addr": start, "size": len}))
            .collect::<Vec<_>>(),
        "config": config,
    });
    println!(
        "{}",
        serde_json::to_string_pretty(&summary).unwrap_or_default()
    );
    Ok(())
}
