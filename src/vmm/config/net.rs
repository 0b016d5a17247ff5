//! `PUT`/`PATCH /network-interfaces/{iface_id}`: virtio-net interfaces,
//! each on a TAP device that already exists on the host.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::ConfigError;
use crate::vmm::devices::rate_limiter::RateLimiterConfig;
use crate::vmm::devices::virtio::net::Tap;

/// Smallest MTU the virtio spec lets a device advertise (IPv4's minimum).
pub const MIN_MTU: u16 = 68;

/// A MAC address, written `06:00:ac:10:00:02` (either case).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl std::str::FromStr for MacAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "invalid guest_mac {:?}: six hex bytes separated by ':' (06:00:ac:10:00:02)",
                crate::text::echo(s)
            )
        };
        let mut mac = [0u8; 6];
        let mut parts = s.split(':');
        for b in &mut mac {
            let p = parts.next().ok_or_else(bad)?;
            if p.len() != 2 {
                return Err(bad());
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddr(mac))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `PUT /network-interfaces/{iface_id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterfaceConfig {
    pub iface_id: String,
    /// The TAP device on the host; it must exist.
    pub host_dev_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<MacAddr>,
    /// Advertised to the guest (VIRTIO_NET_F_MTU), 68 to 65535.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
    /// Rate limiters, in Firecracker's shape: `rx` is TAP to guest, `tx`
    /// guest to TAP; bandwidth counts frame bytes, ops count frames.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiterConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiterConfig>,
}

/// `PATCH /network-interfaces/{iface_id}`: only the rate limiters change.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterfaceUpdate {
    pub iface_id: String,
    #[serde(default)]
    pub rx_rate_limiter: Option<RateLimiterConfig>,
    #[serde(default)]
    pub tx_rate_limiter: Option<RateLimiterConfig>,
}

fn net_error(msg: String) -> ConfigError {
    ConfigError::Net(msg)
}

fn echo(s: &str) -> String {
    crate::text::echo(s).into_owned()
}

/// Interface ids follow the drive-id rules: they go into paths and logs.
pub fn check_iface_id(id: &str) -> Result<(), ConfigError> {
    if super::is_plain_id(id) {
        Ok(())
    } else {
        Err(net_error(format!(
            "invalid iface_id {:?}: 1 to 64 letters, digits, '-' or '_'",
            echo(id)
        )))
    }
}

/// The iface_id in a body must be the one in the path.
pub fn same_iface_id(body: &str, path: &str) -> Result<(), ConfigError> {
    if body == path {
        Ok(())
    } else {
        Err(net_error(format!(
            "the iface_id in the body ({}) differs from the one in the path ({})",
            echo(body),
            echo(path)
        )))
    }
}

/// Both limiters' buckets are within bounds.
fn check_rate_limiters(
    rx: &Option<RateLimiterConfig>,
    tx: &Option<RateLimiterConfig>,
) -> Result<(), ConfigError> {
    for (name, r) in [("rx_rate_limiter", rx), ("tx_rate_limiter", tx)] {
        if let Some(r) = r {
            r.validate()
                .map_err(|e| ConfigError::RateLimiter(format!("{name}: {e}")))?;
        }
    }
    Ok(())
}

impl NetworkInterfaceConfig {
    /// Checks the fields, then that the TAP exists and can be opened
    /// (it is closed again; the device opens it at InstanceStart).
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_iface_id(&self.iface_id)?;
        if let Some(mac) = self.guest_mac {
            if mac.0[0] & 1 != 0 || mac.0 == [0; 6] {
                return Err(net_error(format!(
                    "guest_mac {mac} is a multicast or zero address; use a unicast one"
                )));
            }
        }
        if let Some(mtu) = self.mtu {
            if mtu < MIN_MTU {
                return Err(net_error(format!(
                    "mtu must be between {MIN_MTU} and 65535, not {mtu}"
                )));
            }
        }
        check_rate_limiters(&self.rx_rate_limiter, &self.tx_rate_limiter)?;
        Tap::open(&self.host_dev_name)
            .map(drop)
            .map_err(|e| net_error(e.to_string()))
    }
}

/// Adds `n` to `list`, or replaces the interface with its id. Two
/// interfaces cannot share a TAP or a MAC address.
pub fn insert_interface(
    list: &mut Vec<NetworkInterfaceConfig>,
    n: NetworkInterfaceConfig,
) -> Result<(), ConfigError> {
    for other in list.iter().filter(|o| o.iface_id != n.iface_id) {
        if other.host_dev_name == n.host_dev_name {
            return Err(net_error(format!(
                "host_dev_name {:?} is already used by interface {}",
                echo(&n.host_dev_name),
                echo(&other.iface_id)
            )));
        }
        if let (Some(a), Some(b)) = (other.guest_mac, n.guest_mac) {
            if a == b {
                return Err(net_error(format!(
                    "guest_mac {a} is already used by interface {}",
                    echo(&other.iface_id)
                )));
            }
        }
    }
    match list.iter().position(|o| o.iface_id == n.iface_id) {
        Some(i) => list[i] = n,
        None => list.push(n),
    }
    Ok(())
}

/// PUT: the ids agree, the interface is valid, and it can join `list`.
pub fn put_interface(
    list: &mut Vec<NetworkInterfaceConfig>,
    path_id: &str,
    n: NetworkInterfaceConfig,
) -> Result<(), ConfigError> {
    same_iface_id(&n.iface_id, path_id)?;
    n.validate()?;
    insert_interface(list, n)
}

/// A config file names each interface once.
pub fn check_unique_ids(list: &[NetworkInterfaceConfig]) -> Result<(), ConfigError> {
    for (i, n) in list.iter().enumerate() {
        if list[..i].iter().any(|o| o.iface_id == n.iface_id) {
            return Err(net_error(format!(
                "iface_id {} is listed twice",
                echo(&n.iface_id)
            )));
        }
    }
    Ok(())
}

/// PATCH: the interface must exist and only rate limiters change.
/// Returns the interface's place in `list`.
pub fn check_update(
    list: &[NetworkInterfaceConfig],
    path_id: &str,
    u: &NetworkInterfaceUpdate,
) -> Result<usize, ConfigError> {
    same_iface_id(&u.iface_id, path_id)?;
    let Some(i) = list.iter().position(|n| n.iface_id == path_id) else {
        return Err(net_error(format!(
            "no network interface {:?} is configured",
            echo(path_id)
        )));
    };
    check_rate_limiters(&u.rx_rate_limiter, &u.tx_rate_limiter)?;
    Ok(i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(id: &str, tap: &str, mac: Option<&str>) -> NetworkInterfaceConfig {
        NetworkInterfaceConfig {
            iface_id: id.into(),
            host_dev_name: tap.into(),
            guest_mac: mac.map(|m| m.parse().unwrap()),
            mtu: None,
            rx_rate_limiter: None,
            tx_rate_limiter: None,
        }
    }

    #[test]
    fn firecracker_json_shape() {
        let n: NetworkInterfaceConfig = serde_json::from_str(
            r#"{"iface_id": "eth0", "host_dev_name": "tap0",
                "guest_mac": "06:00:AC:10:00:02", "mtu": 1400}"#,
        )
        .unwrap();
        assert_eq!(n.guest_mac, Some(MacAddr([6, 0, 0xac, 0x10, 0, 2])));
        let v = serde_json::to_value(&n).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"iface_id": "eth0", "host_dev_name": "tap0",
                               "guest_mac": "06:00:ac:10:00:02", "mtu": 1400})
        );
        for bad in [
            r#"{"iface_id": "a", "host_dev_name": "t", "guest_mac": "06:00:ac:10:00"}"#,
            r#"{"iface_id": "a", "host_dev_name": "t", "guest_mac": "06:00:ac:10:00:02:03"}"#,
            r#"{"iface_id": "a", "host_dev_name": "t", "guest_mac": "0g:00:ac:10:00:02"}"#,
            r#"{"iface_id": "a", "host_dev_name": "t", "mtu": 70000}"#,
            r#"{"iface_id": "a", "host_dev_name": "t", "allow_mmds_requests": true}"#,
        ] {
            assert!(
                serde_json::from_str::<NetworkInterfaceConfig>(bad).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn taps_and_macs_are_not_shared_and_ids_replace() {
        let mut v = vec![];
        insert_interface(&mut v, iface("a", "tap0", Some("06:00:00:00:00:01"))).unwrap();
        let e = insert_interface(&mut v, iface("b", "tap0", None)).unwrap_err();
        assert!(e.to_string().contains("already used by interface a"), "{e}");
        let e =
            insert_interface(&mut v, iface("b", "tap1", Some("06:00:00:00:00:01"))).unwrap_err();
        assert!(e.to_string().contains("guest_mac 06:00:00:00:00:01"), "{e}");
        insert_interface(&mut v, iface("b", "tap1", None)).unwrap();
        // The same id replaces, even on the same TAP.
        insert_interface(&mut v, iface("a", "tap0", None)).unwrap();
        assert_eq!(v.len(), 2);
        assert!(check_unique_ids(&v).is_ok());
        v.push(iface("a", "tap9", None));
        assert!(check_unique_ids(&v).is_err());
    }

    #[test]
    fn bad_fields_are_refused_before_the_tap_is_looked_at() {
        let msg = |n: NetworkInterfaceConfig| n.validate().unwrap_err().to_string();
        assert!(msg(iface("..", "tap0", None)).contains("invalid iface_id"));
        assert!(msg(iface("a", "tap0", Some("01:00:5e:00:00:01"))).contains("multicast"));
        let mut n = iface("a", "tap0", None);
        n.mtu = Some(10);
        assert!(msg(n).contains("mtu must be between 68"));
        let mut n = iface("a", "tap0", None);
        n.tx_rate_limiter =
            Some(serde_json::from_str(r#"{"ops": {"size": 5, "refill_time": 0}}"#).unwrap());
        assert!(
            msg(n).contains("tx_rate_limiter: a rate limiter's refill_time must be more than 0")
        );
        assert!(msg(iface("a", "husk-none0", None)).contains("no such network interface"));
        assert!(msg(iface("a", "a/b", None)).contains("invalid host_dev_name"));
    }

    #[test]
    fn updates_name_a_configured_interface() {
        let list = vec![iface("a", "tap0", None)];
        let u = |id: &str| NetworkInterfaceUpdate {
            iface_id: id.into(),
            rx_rate_limiter: None,
            tx_rate_limiter: None,
        };
        assert!(check_update(&list, "a", &u("a")).is_ok());
        let e = check_update(&list, "b", &u("b")).unwrap_err().to_string();
        assert!(e.contains("no network interface \"b\""), "{e}");
        let e = check_update(&list, "a", &u("b")).unwrap_err().to_string();
        assert!(e.contains("differs from the one in the path"), "{e}");
    }
}
