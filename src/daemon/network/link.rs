//! The host's side of container networks, over netlink (`rtnetlink`):
//! bridges with their gateway address, the TAP of each container on its
//! bridge, the host's routes (so a new subnet clashes with none), and the
//! two sysctls routing needs.
//!
//! A TAP cannot be made over netlink (the kernel's tun driver refuses
//! it), so it is made with `TUNSETIFF` on `/dev/net/tun`, marked
//! persistent and owned by the VM's uid, and then moved onto its bridge
//! and set up over netlink.

use std::fs::OpenOptions;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute};
use rtnetlink::{Handle, LinkBridge, LinkBridgePort, LinkUnspec, RouteMessageBuilder};

use super::ipam::Subnet;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot open a netlink socket: {0}")]
    Connect(io::Error),
    #[error("{what} {name}: {err}")]
    Netlink {
        what: &'static str,
        name: String,
        err: rtnetlink::Error,
    },
    #[error("{what} {name}: {err}")]
    Io {
        what: &'static str,
        name: String,
        err: io::Error,
    },
    #[error("{0} is not a valid interface name")]
    Name(String),
}

fn nl<'a>(what: &'static str, name: &'a str) -> impl FnOnce(rtnetlink::Error) -> LinkError + 'a {
    move |err| LinkError::Netlink {
        what,
        name: name.into(),
        err,
    }
}

/// A netlink connection, served by a task on the current tokio runtime.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

/// Whether a netlink error is "no such device" (or address: EADDRNOTAVAIL
/// when removing one already gone).
fn is_gone(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m)
        if m.code.is_some_and(|c| -c.get() == libc::ENODEV || -c.get() == libc::ENOENT))
}

fn is_exists(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m)
        if m.code.is_some_and(|c| -c.get() == libc::EEXIST))
}

impl Netlink {
    /// Must be called inside a tokio runtime.
    pub fn connect() -> Result<Netlink, LinkError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(LinkError::Connect)?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    /// The link called `name`, if there is one.
    pub async fn find(&self, name: &str) -> Result<Option<LinkMessage>, LinkError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match links.try_next().await {
            Ok(l) => Ok(l),
            Err(e) if is_gone(&e) => Ok(None),
            Err(e) => Err(nl("cannot look up link", name)(e)),
        }
    }

    async fn index(&self, name: &str) -> Result<u32, LinkError> {
        self.find(name)
            .await?
            .map(|l| l.header.index)
            .ok_or_else(|| LinkError::Io {
                what: "no such link",
                name: name.into(),
                err: io::Error::from_raw_os_error(libc::ENODEV),
            })
    }

    /// The names of every link.
    pub async fn names(&self) -> Result<Vec<String>, LinkError> {
        let mut links = self.handle.link().get().execute();
        let mut out = Vec::new();
        while let Some(l) = links
            .try_next()
            .await
            .map_err(nl("cannot list links", ""))?
        {
            out.extend(l.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n.clone()),
                _ => None,
            }));
        }
        Ok(out)
    }

    /// Makes the bridge `name` with `gateway/prefix` on it, up, with
    /// `mtu`; a bridge already there is kept (its address is added if
    /// missing).
    pub async fn ensure_bridge(
        &self,
        name: &str,
        gateway: Ipv4Addr,
        subnet: &Subnet,
        mtu: u16,
    ) -> Result<(), LinkError> {
        check_name(name)?;
        if self.find(name).await?.is_none() {
            let msg = LinkBridge::new(name).mtu(u32::from(mtu)).build();
            match self.handle.link().add(msg).execute().await {
                Ok(()) => {}
                Err(e) if is_exists(&e) => {}
                Err(e) => return Err(nl("cannot create bridge", name)(e)),
            }
        }
        let index = self.index(name).await?;
        let add = self
            .handle
            .address()
            .add(index, IpAddr::V4(gateway), subnet.prefix())
            .execute()
            .await;
        match add {
            Ok(()) => {}
            Err(e) if is_exists(&e) => {}
            Err(e) => return Err(nl("cannot add the gateway address to", name)(e)),
        }
        self.set_up(index, name).await
    }

    async fn set_up(&self, index: u32, name: &str) -> Result<(), LinkError> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(nl("cannot set up", name))
    }

    /// Removes the link `name`; one that is gone already is not an error.
    pub async fn delete(&self, name: &str) -> Result<(), LinkError> {
        let Some(l) = self.find(name).await? else {
            return Ok(());
        };
        match self.handle.link().del(l.header.index).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_gone(&e) => Ok(()),
            Err(e) => Err(nl("cannot delete link", name)(e)),
        }
    }

    /// Makes the persistent TAP `name`, owned by `owner` (any user when
    /// `None`: only root then opens it, as the kernel checks
    /// CAP_NET_ADMIN), attached to `bridge` with hairpin on (a container
    /// reaches its own published ports), up, with `mtu`.
    pub async fn create_tap(
        &self,
        name: &str,
        owner: Option<u32>,
        bridge: &str,
        mtu: u16,
    ) -> Result<(), LinkError> {
        check_name(name)?;
        let tap_err = |what| {
            move |err| LinkError::Io {
                what,
                name: name.into(),
                err,
            }
        };
        make_persistent_tap(name, owner).map_err(tap_err("cannot create TAP"))?;
        let attach = async {
            let index = self.index(name).await?;
            let master = self.index(bridge).await?;
            self.handle
                .link()
                .set(
                    LinkUnspec::new_with_index(index)
                        .mtu(u32::from(mtu))
                        .controller(master)
                        .build(),
                )
                .execute()
                .await
                .map_err(nl("cannot attach to its bridge", name))?;
            self.handle
                .link()
                .set_port(LinkBridgePort::new(index).hairpin(true).build())
                .execute()
                .await
                .map_err(nl("cannot set hairpin mode on", name))?;
            self.set_up(index, name).await
        };
        if let Err(e) = attach.await {
            let _ = self.delete(name).await;
            return Err(e);
        }
        Ok(())
    }

    /// The IPv4 subnets the host already uses: every route of every table
    /// but default routes, and every address's subnet.
    pub async fn host_subnets(&self) -> Result<Vec<Subnet>, LinkError> {
        let mut out = Vec::new();
        let mut routes = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        while let Some(r) = routes
            .try_next()
            .await
            .map_err(nl("cannot list routes", ""))?
        {
            let len = r.header.destination_prefix_length;
            let dst = r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(*ip),
                _ => None,
            });
            if let (Some(ip), true) = (dst, len > 0) {
                out.extend(network_of(ip, len));
            }
        }
        let mut addrs = self.handle.address().get().execute();
        while let Some(a) = addrs
            .try_next()
            .await
            .map_err(nl("cannot list addresses", ""))?
        {
            for attr in &a.attributes {
                if let AddressAttribute::Address(IpAddr::V4(ip)) = attr {
                    out.extend(network_of(*ip, a.header.prefix_len));
                }
            }
        }
        Ok(out)
    }

    /// The MTU of the interface the default route leaves by, if there is
    /// one: a network's MTU should not exceed the way out.
    pub async fn uplink_mtu(&self) -> Result<Option<u32>, LinkError> {
        let mut routes = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        let mut oif = None;
        while let Some(r) = routes
            .try_next()
            .await
            .map_err(nl("cannot list routes", ""))?
        {
            if r.header.destination_prefix_length == 0 && r.header.table == 254 {
                oif = r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Oif(i) => Some(*i),
                    _ => None,
                });
                break;
            }
        }
        let Some(oif) = oif else { return Ok(None) };
        let mut links = self.handle.link().get().match_index(oif).execute();
        let link = links
            .try_next()
            .await
            .map_err(nl("cannot look up the uplink", ""))?;
        Ok(link.and_then(|l| {
            l.attributes.iter().find_map(|a| match a {
                LinkAttribute::Mtu(m) => Some(*m),
                _ => None,
            })
        }))
    }
}

fn network_of(ip: Ipv4Addr, len: u8) -> Option<Subnet> {
    let len = len.min(32);
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    Subnet::new(Ipv4Addr::from(u32::from(ip) & mask), len).ok()
}

/// Interface names: 1 to 15 bytes, no '/', ':' or whitespace.
pub fn check_name(name: &str) -> Result<(), LinkError> {
    let ok = !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
    if ok {
        Ok(())
    } else {
        Err(LinkError::Name(crate::text::echo(name).into_owned()))
    }
}

/// Gives the existing TAP `name` to `uid` (and its group `uid`): a
/// jailed VMM opens it as that uid.
pub fn set_tap_owner(name: &str, uid: u32) -> io::Result<()> {
    make_persistent_tap(name, Some(uid))
}

/// TUNSETIFF (creating it if missing), TUNSETOWNER, TUNSETPERSIST.
fn make_persistent_tap(name: &str, owner: Option<u32>) -> io::Result<()> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    // SAFETY: ifreq is plain old data; all zeros is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    let cvt = |r: libc::c_int| {
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    // SAFETY: TUNSETIFF reads and writes an ifreq, which `ifr` is.
    cvt(unsafe { libc::ioctl(f.as_raw_fd(), libc::TUNSETIFF, &mut ifr) })?;
    if let Some(uid) = owner {
        // SAFETY: TUNSETOWNER and TUNSETGROUP take their argument by value.
        cvt(unsafe { libc::ioctl(f.as_raw_fd(), libc::TUNSETOWNER, libc::c_ulong::from(uid)) })?;
        // SAFETY: as above.
        cvt(unsafe { libc::ioctl(f.as_raw_fd(), libc::TUNSETGROUP, libc::c_ulong::from(uid)) })?;
    }
    // SAFETY: TUNSETPERSIST takes its argument by value.
    cvt(unsafe { libc::ioctl(f.as_raw_fd(), libc::TUNSETPERSIST, 1 as libc::c_ulong) })
}

/// Sets `net.ipv4.ip_forward` to 1 (containers' traffic is routed) and,
/// on `bridge`, `route_localnet` (so a published port answers on
/// 127.0.0.1 too).
pub fn routing_sysctls(bridge: &str) -> Result<(), LinkError> {
    let set = |path: String| {
        std::fs::write(&path, b"1").map_err(|err| LinkError::Io {
            what: "cannot set",
            name: path,
            err,
        })
    };
    set("/proc/sys/net/ipv4/ip_forward".into())?;
    check_name(bridge)?;
    set(format!("/proc/sys/net/ipv4/conf/{bridge}/route_localnet"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_are_checked() {
        for ok in ["husk0", "husk-1a2b3c4d", "htap0123456789a"] {
            check_name(ok).unwrap();
        }
        for bad in ["", "a/b", "a b", "0123456789abcdef", "eth0:1", "..\n"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn routes_become_subnets() {
        assert_eq!(
            network_of(Ipv4Addr::new(192, 0, 2, 7), 24)
                .unwrap()
                .to_string(),
            "192.0.2.0/24"
        );
        assert_eq!(
            network_of(Ipv4Addr::new(192, 0, 2, 7), 32)
                .unwrap()
                .to_string(),
            "192.0.2.7/32"
        );
    }
}
