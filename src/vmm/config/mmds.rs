//! `PUT /mmds/config`: which interfaces reach the microVM metadata
//! service, at which address, and how guests talk to it (Firecracker's
//! `MmdsConfig`).

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::{ConfigError, NetworkInterfaceConfig};

/// The address guests reach MMDS at when `ipv4_address` is left out.
pub const DEFAULT_MMDS_IPV4: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

/// How guests talk to MMDS: V1 answers any GET; V2 answers GETs that
/// carry a session token from `PUT /latest/api/token`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum MmdsVersion {
    #[default]
    V1,
    V2,
}

/// `PUT /mmds/config`, and `mmds-config` in a config file and in
/// `GET /vm/config`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MmdsConfig {
    #[serde(default)]
    pub version: MmdsVersion,
    /// Answer in IMDS (plain text) form whatever the guest's `Accept`.
    #[serde(default)]
    pub imds_compat: bool,
    /// The interfaces whose guest frames to `ipv4_address` MMDS answers;
    /// each must already be configured.
    pub network_interfaces: Vec<String>,
    /// A link-local address (169.254.1.0 to 169.254.254.255, RFC 3927);
    /// 169.254.169.254 when left out. Always set once validated.
    #[serde(default)]
    pub ipv4_address: Option<Ipv4Addr>,
}

/// RFC 3927's usable link-local addresses, as Firecracker checks them:
/// 169.254.0.0/16 without its first and last /24.
pub fn is_link_local_valid(a: Ipv4Addr) -> bool {
    matches!(a.octets(), [169, 254, b, _] if b != 0 && b != 255)
}

fn mmds_error(msg: impl Into<String>) -> ConfigError {
    ConfigError::Mmds(msg.into())
}

impl MmdsConfig {
    /// Checks the configuration against the configured interfaces and
    /// returns it with its address filled in.
    pub fn validated(mut self, ifaces: &[NetworkInterfaceConfig]) -> Result<Self, ConfigError> {
        let ip = self.ipv4_address.unwrap_or(DEFAULT_MMDS_IPV4);
        if !is_link_local_valid(ip) {
            return Err(mmds_error(format!(
                "the MMDS IPv4 address {ip} is not link local (169.254.1.0 to 169.254.254.255)"
            )));
        }
        if self.network_interfaces.is_empty() {
            return Err(mmds_error(
                "the list of network interface IDs that allow forwarding MMDS requests is empty",
            ));
        }
        if let Some(id) = self
            .network_interfaces
            .iter()
            .find(|id| !ifaces.iter().any(|n| &n.iface_id == *id))
        {
            return Err(mmds_error(format!(
                "network_interfaces names {:?}, which does not correspond to any configured network interface (PUT /network-interfaces first)",
                crate::text::echo(id)
            )));
        }
        self.ipv4_address = Some(ip);
        Ok(self)
    }

    /// The address MMDS answers at.
    pub fn ipv4(&self) -> Ipv4Addr {
        self.ipv4_address.unwrap_or(DEFAULT_MMDS_IPV4)
    }

    /// Whether MMDS answers on interface `id`.
    pub fn serves(&self, id: &str) -> bool {
        self.network_interfaces.iter().any(|n| n == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(id: &str) -> NetworkInterfaceConfig {
        serde_json::from_value(serde_json::json!({"iface_id": id, "host_dev_name": "t"})).unwrap()
    }

    #[test]
    fn firecracker_shapes_and_defaults() {
        let c: MmdsConfig = serde_json::from_str(r#"{"network_interfaces": ["eth0"]}"#).unwrap();
        assert_eq!(c.version, MmdsVersion::V1);
        assert!(!c.imds_compat);
        let c = c.validated(&[iface("eth0")]).unwrap();
        assert_eq!(c.ipv4_address, Some(DEFAULT_MMDS_IPV4));
        assert_eq!(
            serde_json::to_value(&c).unwrap(),
            serde_json::json!({"version": "V1", "imds_compat": false,
                "network_interfaces": ["eth0"], "ipv4_address": "169.254.169.254"})
        );
        for bad in [
            r#"{"network_interfaces": ["eth0"], "version": "V3"}"#,
            r#"{"version": "V2"}"#,
            r#"{"network_interfaces": ["eth0"], "ipv4_address": ""}"#,
            r#"{"network_interfaces": ["eth0"], "extra": 1}"#,
        ] {
            assert!(serde_json::from_str::<MmdsConfig>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn validation() {
        let ifaces = [iface("eth0"), iface("eth1")];
        let cfg = |ids: &[&str], ip: Option<&str>| MmdsConfig {
            version: MmdsVersion::V2,
            imds_compat: false,
            network_interfaces: ids.iter().map(|s| s.to_string()).collect(),
            ipv4_address: ip.map(|s| s.parse().unwrap()),
        };
        assert!(cfg(&["eth0", "eth1"], Some("169.254.170.2"))
            .validated(&ifaces)
            .is_ok());
        let msg = |c: MmdsConfig| c.validated(&ifaces).unwrap_err().to_string();
        assert!(msg(cfg(&[], None)).contains("is empty"));
        assert!(msg(cfg(&["eth9"], None)).contains("\"eth9\""));
        for ip in ["10.0.0.1", "169.254.0.1", "169.254.255.1", "169.255.1.1"] {
            assert!(
                msg(cfg(&["eth0"], Some(ip))).contains("not link local"),
                "{ip}"
            );
        }
    }
}
