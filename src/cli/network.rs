//! `husk network create|ls|rm|inspect`, as `docker network` has them.

use clap::{Args, Subcommand};

use super::containers::pretty_json;
use super::format::{self, Table};
use super::{answer, report};
use crate::client::types::NetworkCreateRequest;
use crate::client::DaemonClient;

#[derive(Args, Debug)]
pub struct NetworkArgs {
    #[command(subcommand)]
    pub command: NetworkCommand,
}

#[derive(Subcommand, Debug)]
pub enum NetworkCommand {
    /// Create a network: a bridge with its own subnet, NAT out, and DNS
    /// by container name.
    Create(CreateArgs),
    /// List networks.
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// Remove one or more networks (none may have containers attached).
    #[command(visible_alias = "remove")]
    Rm(NamesArgs),
    /// Show networks, with their containers, as JSON.
    Inspect(NamesArgs),
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Subnet in CIDR form (default: a free /16).
    #[arg(long)]
    pub subnet: Option<String>,
    /// The host's address on the network (default: the subnet's first).
    #[arg(long)]
    pub gateway: Option<String>,
    /// No traffic leaves the network: no NAT, no outside DNS, no ports.
    #[arg(long)]
    pub internal: bool,
    /// Set metadata on the network (key=value).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub label: Vec<String>,
    /// Only `bridge` is supported.
    #[arg(short, long, default_value = "bridge", value_parser = ["bridge"])]
    pub driver: String,
    pub name: String,
}

#[derive(Args, Debug)]
pub struct LsArgs {
    /// Only show network IDs.
    #[arg(short, long)]
    pub quiet: bool,
    /// Don't truncate the IDs.
    #[arg(long)]
    pub no_trunc: bool,
}

#[derive(Args, Debug)]
pub struct NamesArgs {
    /// Networks: names, ids or unique id prefixes.
    #[arg(required = true, value_name = "NETWORK")]
    pub networks: Vec<String>,
}

pub async fn network(client: &DaemonClient, args: NetworkArgs) -> i32 {
    match args.command {
        NetworkCommand::Create(a) => create(client, a).await,
        NetworkCommand::Ls(a) => ls(client, a).await,
        NetworkCommand::Rm(a) => rm(client, a).await,
        NetworkCommand::Inspect(a) => inspect(client, a).await,
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
    let req = NetworkCreateRequest {
        name: a.name,
        subnet: a.subnet,
        gateway: a.gateway,
        internal: a.internal,
        labels,
    };
    answer(client.create_network(&req).await, |n| println!("{}", n.id))
}

async fn ls(client: &DaemonClient, a: LsArgs) -> i32 {
    let nets = match client.networks().await {
        Ok(n) => n,
        Err(e) => {
            report(e);
            return 1;
        }
    };
    let id = |full: &str| {
        if a.no_trunc {
            full.to_string()
        } else {
            format::short_id(full).to_string()
        }
    };
    if a.quiet {
        for n in &nets {
            println!("{}", id(&n.id));
        }
        return 0;
    }
    let mut t = Table::new(&[
        "NETWORK ID",
        "NAME",
        "DRIVER",
        "SUBNET",
        "INTERNAL",
        "CONTAINERS",
    ]);
    for n in &nets {
        t.row(vec![
            id(&n.id),
            n.name.clone(),
            n.driver.clone(),
            n.subnet.clone(),
            n.internal.to_string(),
            n.containers.len().to_string(),
        ]);
    }
    print!("{}", t.render());
    0
}

async fn rm(client: &DaemonClient, a: NamesArgs) -> i32 {
    let mut code = 0;
    for n in &a.networks {
        match client.remove_network(n).await {
            Ok(()) => println!("{n}"),
            Err(e) => {
                report(e);
                code = 1;
            }
        }
    }
    code
}

async fn inspect(client: &DaemonClient, a: NamesArgs) -> i32 {
    let mut found = Vec::new();
    let mut code = 0;
    for n in &a.networks {
        match client.inspect_network(n).await {
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
