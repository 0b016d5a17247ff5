//! Address management: IPv4 subnets, choosing one that clashes with
//! nothing on the host, handing out addresses in it, and the MAC that
//! goes with an address.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An IPv4 subnet: a network address and a prefix length (the address
/// has no host bits set).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Subnet {
    addr: Ipv4Addr,
    prefix: u8,
}

impl Subnet {
    /// The subnet `addr/prefix`; host bits must be clear.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Subnet, String> {
        if prefix > 32 {
            return Err(format!("prefix length {prefix} is more than 32"));
        }
        let s = Subnet { addr, prefix };
        if u32::from(addr) & !s.mask() != 0 {
            return Err(format!(
                "{addr}/{prefix} has host bits set (the network is {}/{prefix})",
                Ipv4Addr::from(u32::from(addr) & s.mask())
            ));
        }
        Ok(s)
    }

    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix)
        }
    }

    /// How many addresses it spans.
    fn size(&self) -> u64 {
        1u64 << (32 - self.prefix)
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr)
    }

    pub fn overlaps(&self, other: &Subnet) -> bool {
        self.contains(other.addr) || other.contains(self.addr)
    }

    /// The `n`th address of the subnet (0 is the network address).
    pub fn nth(&self, n: u64) -> Option<Ipv4Addr> {
        (n < self.size()).then(|| Ipv4Addr::from(u32::from(self.addr) + n as u32))
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !self.mask())
    }

    /// Whether `ip` can be a host's address here: inside, and neither the
    /// network nor the broadcast address.
    pub fn is_host(&self, ip: Ipv4Addr) -> bool {
        self.contains(ip) && ip != self.addr && ip != self.broadcast()
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Subnet {
    type Err = String;

    fn from_str(s: &str) -> Result<Subnet, String> {
        let (a, p) = s.split_once('/').ok_or_else(|| {
            format!("{s:?} is not a subnet: use ADDRESS/PREFIX, e.g. 10.90.0.0/16")
        })?;
        let addr: Ipv4Addr = a
            .parse()
            .map_err(|_| format!("{a:?} is not an IPv4 address"))?;
        let prefix: u8 = p
            .parse()
            .map_err(|_| format!("{p:?} is not a prefix length"))?;
        Subnet::new(addr, prefix)
    }
}

impl Serialize for Subnet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Subnet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Subnet, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The smallest and largest subnets a network may have: room for the
/// gateway and at least two containers; no bigger than a /8.
pub const MIN_PREFIX: u8 = 8;
pub const MAX_PREFIX: u8 = 29;

/// Checks a subnet asked for by a user.
pub fn check_subnet(s: &Subnet) -> Result<(), String> {
    if !(MIN_PREFIX..=MAX_PREFIX).contains(&s.prefix) {
        return Err(format!(
            "subnet {s}: the prefix length must be {MIN_PREFIX} to {MAX_PREFIX}"
        ));
    }
    let a = s.addr.octets();
    if s.addr.is_loopback() || s.addr.is_multicast() || a[0] == 0 || a[0] >= 224 {
        return Err(format!("subnet {s} is not a unicast range"));
    }
    if s.addr.is_link_local() {
        return Err(format!("subnet {s} is link-local"));
    }
    // Only private ranges (RFC 1918, and the shared space of RFC 6598): a
    // network over public addresses would take them from the host.
    let private = [
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
    ];
    if !private
        .iter()
        .filter_map(|p| p.parse::<Subnet>().ok())
        .any(|p| p.contains(s.addr) && p.contains(s.broadcast()))
    {
        return Err(format!(
            "subnet {s} is not a private range (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16 or \
             100.64.0.0/10)"
        ));
    }
    Ok(())
}

/// Where subnets for new networks come from, in order: 172.20-31.0.0/16,
/// then 10.200-254.0.0/16 (172.17-19 are often Docker's).
fn candidates() -> impl Iterator<Item = Subnet> {
    let a = (20u8..=31).map(|b| Ipv4Addr::new(172, b, 0, 0));
    let b = (200u8..=254).map(|b| Ipv4Addr::new(10, b, 0, 0));
    a.chain(b).map(|addr| Subnet { addr, prefix: 16 })
}

/// The first candidate subnet that overlaps none of `taken` (the host's
/// routes and addresses, and other networks'); `None` when all are.
pub fn pick_subnet(taken: &[Subnet]) -> Option<Subnet> {
    candidates().find(|c| !taken.iter().any(|t| t.overlaps(c)))
}

/// The gateway a subnet gets when none is asked for: its first address.
pub fn default_gateway(s: &Subnet) -> Ipv4Addr {
    s.nth(1)
        .expect("a subnet of /29 or larger has a first host")
}

/// The first host address of `subnet` after `last` (from the start when
/// `None`, wrapping around) that is not `gateway` and not in `used`.
pub fn allocate(
    subnet: &Subnet,
    gateway: Ipv4Addr,
    used: &[Ipv4Addr],
    last: Option<Ipv4Addr>,
) -> Option<Ipv4Addr> {
    let size = subnet.size();
    let start = last
        .filter(|l| subnet.contains(*l))
        .map_or(1, |l| u64::from(u32::from(l) - u32::from(subnet.addr)) + 1);
    (0..size)
        .filter_map(|i| subnet.nth((start + i) % size))
        .find(|ip| subnet.is_host(*ip) && *ip != gateway && !used.contains(ip))
}

/// The MAC address of the container with address `ip`: locally
/// administered and unicast (0x02), then 0x42, then the address, as
/// Docker does. Unique while addresses are (networks never overlap).
pub fn mac_for(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x02, 0x42, o[0], o[1], o[2], o[3]]
}

pub fn mac_string(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t: &str) -> Subnet {
        t.parse().unwrap()
    }

    #[test]
    fn subnets_parse_and_refuse_host_bits() {
        assert_eq!(s("10.90.0.0/16").to_string(), "10.90.0.0/16");
        let e = "10.90.0.1/16".parse::<Subnet>().unwrap_err();
        assert!(e.contains("host bits") && e.contains("10.90.0.0/16"), "{e}");
        assert!("10.90.0.0".parse::<Subnet>().is_err());
        assert!("10.90.0.0/33".parse::<Subnet>().is_err());
        assert!("nonsense/8".parse::<Subnet>().is_err());
        assert_eq!(
            serde_json::from_str::<Subnet>("\"172.20.0.0/16\"").unwrap(),
            s("172.20.0.0/16")
        );
    }

    #[test]
    fn user_subnets_must_be_usable_unicast_ranges() {
        check_subnet(&s("10.90.0.0/24")).unwrap();
        for bad in [
            "127.0.0.0/8",
            "224.0.0.0/8",
            "169.254.0.0/16",
            "10.0.0.0/30",
            "0.0.0.0/8",
            "8.8.8.0/24",
            "11.0.0.0/8",
            "172.0.0.0/8",
        ] {
            assert!(check_subnet(&s(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn containment_and_overlap() {
        let n = s("172.20.0.0/16");
        assert!(n.contains("172.20.255.255".parse().unwrap()));
        assert!(!n.contains("172.21.0.0".parse().unwrap()));
        assert!(n.overlaps(&s("172.20.5.0/24")));
        assert!(s("172.0.0.0/8").overlaps(&n));
        assert!(!n.overlaps(&s("172.21.0.0/16")));
        assert_eq!(n.broadcast(), Ipv4Addr::new(172, 20, 255, 255));
        assert!(!n.is_host(n.addr()) && !n.is_host(n.broadcast()));
    }

    #[test]
    fn a_new_subnet_avoids_what_is_taken() {
        assert_eq!(pick_subnet(&[]), Some(s("172.20.0.0/16")));
        // The host has a route into 172.20/16, and another network 172.21.
        let taken = [s("172.20.4.0/24"), s("172.21.0.0/16")];
        assert_eq!(pick_subnet(&taken), Some(s("172.22.0.0/16")));
        // A host route over all of 172.16/12 sends it to 10.200.
        assert_eq!(pick_subnet(&[s("172.16.0.0/12")]), Some(s("10.200.0.0/16")));
        // Everything taken.
        assert_eq!(pick_subnet(&[s("0.0.0.0/0")]), None);
    }

    #[test]
    fn addresses_are_handed_out_lowest_first() {
        let n = s("10.90.0.0/29");
        let gw = default_gateway(&n);
        assert_eq!(gw, Ipv4Addr::new(10, 90, 0, 1));
        let ip = |i| Ipv4Addr::new(10, 90, 0, i);
        let a = allocate(&n, gw, &[], None).unwrap();
        assert_eq!(a, ip(2));
        let used: Vec<Ipv4Addr> = (2..=5).map(ip).collect();
        assert_eq!(allocate(&n, gw, &used, None), Some(ip(6)));
        // .7 is the broadcast address: the /29 is full.
        let used: Vec<Ipv4Addr> = (2..=6).map(ip).collect();
        assert_eq!(allocate(&n, gw, &used, None), None);
        // A gateway elsewhere in the range frees .1.
        assert_eq!(allocate(&n, ip(6), &[], None), Some(ip(1)));
        // After the last one handed out, not the lowest free: .3 was just
        // given back, .5 is next; past the end it wraps around.
        assert_eq!(allocate(&n, gw, &[ip(2)], Some(ip(4))), Some(ip(5)));
        assert_eq!(allocate(&n, gw, &[ip(2)], Some(ip(6))), Some(ip(3)));
    }

    #[test]
    fn macs_follow_addresses() {
        let mac = mac_for(Ipv4Addr::new(172, 20, 0, 2));
        assert_eq!(mac_string(mac), "02:42:ac:14:00:02");
        // Locally administered, unicast.
        assert_eq!(mac[0] & 0x03, 0x02);
    }
}
