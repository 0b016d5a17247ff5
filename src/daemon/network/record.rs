//! What the network manager keeps on disk: a network's record (one file
//! each under `<state>/networks/`), and a container's attachment (kept in
//! the container's own record while it runs).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::ipam::Subnet;
use super::GUEST_IFACE;
use crate::client::types::{NetworkSettings, PortBinding};

/// A network, as kept on disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRecord {
    pub id: String,
    pub name: String,
    pub subnet: Subnet,
    pub gateway: Ipv4Addr,
    pub bridge: String,
    #[serde(default)]
    pub internal: bool,
    #[serde(default)]
    pub builtin: bool,
    pub mtu: u16,
    pub created_ms: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl NetworkRecord {
    /// An internal network's containers cannot publish ports.
    pub fn check_ports(&self, ports: &[PortBinding]) -> Result<(), super::NetError> {
        if self.internal && !ports.is_empty() {
            return Err(super::NetError::BadRequest(format!(
                "network {} is internal: its containers cannot publish ports",
                self.name
            )));
        }
        Ok(())
    }
}

/// A container's attachment: kept in its record while it runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub network: String,
    pub network_id: String,
    pub bridge: String,
    pub tap: String,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    pub mac: String,
    pub mtu: u16,
    /// With the host ports they got.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortBinding>,
    /// What the network's DNS answers with its address.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    pub container_name: String,
}

impl Endpoint {
    pub fn settings(&self) -> NetworkSettings {
        NetworkSettings {
            network: self.network.clone(),
            ip_address: self.ip,
            prefix_len: self.prefix_len,
            gateway: self.gateway,
            mac_address: self.mac.clone(),
            tap: self.tap.clone(),
            ports: self.ports.clone(),
        }
    }

    /// What the agent configures in the guest.
    pub fn guest(&self) -> crate::agent::protocol::GuestNetwork {
        crate::agent::protocol::GuestNetwork {
            mac: self.mac.clone(),
            name: GUEST_IFACE.into(),
            address: self.ip,
            prefix_len: self.prefix_len,
            gateway: Some(self.gateway),
            mtu: Some(self.mtu),
        }
    }
}

pub(crate) fn random_hex() -> String {
    let mut b = [0u8; 32];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .is_err()
    {
        let t = crate::daemon::state::now_ms().to_le_bytes();
        b[..8].copy_from_slice(&t);
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub(super) fn valid_name(n: &str) -> bool {
    let b = n.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(c))
}

pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}
