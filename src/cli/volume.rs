//! `husk volume create|ls|inspect|rm|prune|resize`, as `docker volume`
//! has them (plus resize: a volume is a disk with a size).

use clap::{Args, Subcommand};

use super::containers::pretty_json;
use super::format::Table;
use super::{answer, report};
use crate::client::types::VolumeCreateRequest;
use crate::client::volumes::parse_size;
use crate::client::DaemonClient;

#[derive(Args, Debug)]
pub struct VolumeArgs {
    #[command(subcommand)]
    pub command: VolumeCommand,
}

#[derive(Subcommand, Debug)]
pub enum VolumeCommand {
    /// Create a volume: an empty ext4 filesystem, mounted into containers
    /// with -v NAME:/path.
    Create(CreateArgs),
    /// List volumes.
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// Show volumes, with the containers that use them, as JSON.
    Inspect(NamesArgs),
    /// Remove one or more volumes (no container may use them).
    #[command(visible_alias = "remove")]
    Rm(NamesArgs),
    /// Remove every volume no container uses.
    Prune(PruneArgs),
    /// Grow a volume that no running container mounts.
    Resize(ResizeArgs),
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// The filesystem's size: 10g, 512m, ... (default 10g; the disk is
    /// sparse, so it takes only what is written).
    #[arg(long, value_parser = parse_size)]
    pub size: Option<u64>,
    /// Set metadata on the volume (key=value).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub label: Vec<String>,
    /// Only `local` is supported.
    #[arg(short, long, default_value = "local", value_parser = ["local"])]
    pub driver: String,
    /// Its name (default: 64 random hex digits).
    pub name: Option<String>,
}

#[derive(Args, Debug)]
pub struct LsArgs {
    /// Only show volume names.
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Args, Debug)]
pub struct NamesArgs {
    #[arg(required = true, value_name = "VOLUME")]
    pub volumes: Vec<String>,
}

#[derive(Args, Debug)]
pub struct PruneArgs {
    /// Do not ask for confirmation (prune never asks here; accepted for
    /// Docker's scripts).
    #[arg(short, long)]
    pub force: bool,
}

#[derive(Args, Debug)]
pub struct ResizeArgs {
    pub name: String,
    /// The new size: 20g, ...
    #[arg(value_parser = parse_size)]
    pub size: u64,
}

pub async fn volume(client: &DaemonClient, args: VolumeArgs) -> i32 {
    match args.command {
        VolumeCommand::Create(a) => create(client, a).await,
        VolumeCommand::Ls(a) => ls(client, a).await,
        VolumeCommand::Inspect(a) => inspect(client, a).await,
        VolumeCommand::Rm(a) => rm(client, a).await,
        VolumeCommand::Prune(_) => prune(client).await,
        VolumeCommand::Resize(a) => answer(client.resize_volume(&a.name, a.size).await, |v| {
            println!("{}", v.name)
        }),
    }
}

async fn create(client: &DaemonClient, a: CreateArgs) -> i32 {
    let labels = match super::parse::labels(&a.label) {
        Ok(l) => l,
        Err(e) => {
            report(e);
            return 1;
        }
    };
    let req = VolumeCreateRequest {
        name: a.name,
        size: a.size,
        labels,
    };
    answer(client.create_volume(&req).await, |v| println!("{}", v.name))
}

/// `10737418240` as `10GiB`.
fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if v.fract() == 0.0 || i == 0 {
        format!("{v:.0}{}", UNITS[i])
    } else {
        format!("{v:.1}{}", UNITS[i])
    }
}

async fn ls(client: &DaemonClient, a: LsArgs) -> i32 {
    let vols = match client.volumes().await {
        Ok(v) => v,
        Err(e) => {
            report(e);
            return 1;
        }
    };
    if a.quiet {
        for v in &vols {
            println!("{}", v.name);
        }
        return 0;
    }
    let mut t = Table::new(&["DRIVER", "VOLUME NAME", "SIZE", "USED", "CONTAINERS"]);
    for v in &vols {
        t.row(vec![
            v.driver.clone(),
            v.name.clone(),
            human(v.size),
            human(v.used),
            v.containers.len().to_string(),
        ]);
    }
    print!("{}", t.render());
    0
}

async fn inspect(client: &DaemonClient, a: NamesArgs) -> i32 {
    let mut found = Vec::new();
    let mut code = 0;
    for n in &a.volumes {
        match client.inspect_volume(n).await {
            Ok(v) => found.push(v),
            Err(e) => {
                report(e);
                code = 1;
            }
        }
    }
    println!("{}", pretty_json(&found));
    code
}

async fn rm(client: &DaemonClient, a: NamesArgs) -> i32 {
    let mut code = 0;
    for n in &a.volumes {
        match client.remove_volume(n).await {
            Ok(()) => println!("{n}"),
            Err(e) => {
                report(e);
                code = 1;
            }
        }
    }
    code
}

async fn prune(client: &DaemonClient) -> i32 {
    match client.prune_volumes().await {
        Ok(r) => {
            if !r.removed.is_empty() {
                println!("Deleted Volumes:");
                for n in &r.removed {
                    println!("{n}");
                }
                println!();
            }
            println!("Total reclaimed space: {}", human(r.reclaimed));
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
    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(super::human(10 << 30), "10GiB");
        assert_eq!(super::human(1536 << 20), "1.5GiB");
        assert_eq!(super::human(512), "512B");
    }
}
