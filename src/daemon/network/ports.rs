//! Published ports' host side: each host port is held by a socket of the
//! daemon's, bound (never listening) for as long as the container runs.
//! So a port in use by a host program is refused up front, a host
//! program cannot take a published port later, and `-p 80` (no host
//! port) gets a free one from the kernel. The traffic itself never
//! reaches these sockets: the DNAT rules send it to the container first.

use std::net::{Ipv4Addr, SocketAddrV4};

use crate::client::types::{PortBinding, Protocol};

/// A held host port.
#[derive(Debug)]
pub enum Reservation {
    Tcp(tokio::net::TcpSocket),
    Udp(std::net::UdpSocket),
}

/// Binds the host side of `p`; returns the binding with its host port
/// filled in, and the socket that holds it.
pub fn reserve(p: &PortBinding) -> Result<(PortBinding, Reservation), String> {
    let ip = p.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
    let addr = SocketAddrV4::new(ip, p.host_port);
    let taken = |e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            format!(
                "cannot publish {}: host port {addr} ({}) is already in use",
                p,
                p.protocol.as_str()
            )
        } else {
            format!("cannot publish {p}: cannot bind {addr}: {e}")
        }
    };
    let (port, r) = match p.protocol {
        Protocol::Tcp => {
            let s = tokio::net::TcpSocket::new_v4().map_err(taken)?;
            s.bind(addr.into()).map_err(taken)?;
            let port = s.local_addr().map_err(taken)?.port();
            (port, Reservation::Tcp(s))
        }
        Protocol::Udp => {
            let s = std::net::UdpSocket::bind(addr).map_err(taken)?;
            let port = s.local_addr().map_err(taken)?.port();
            (port, Reservation::Udp(s))
        }
    };
    Ok((
        PortBinding {
            host_port: port,
            ..p.clone()
        },
        r,
    ))
}

/// Reserves every port of `ports`, or none (the first failure gives the
/// others back).
pub fn reserve_all(ports: &[PortBinding]) -> Result<(Vec<PortBinding>, Vec<Reservation>), String> {
    let mut bound = Vec::new();
    let mut held = Vec::new();
    for p in ports {
        let (b, r) = reserve(p)?;
        bound.push(b);
        held.push(r);
    }
    Ok((bound, held))
}

/// Checks what a caller asks to publish: at most 64 ports, no host port
/// twice.
pub fn check(ports: &[PortBinding]) -> Result<(), String> {
    if ports.len() > 64 {
        return Err(format!("{} published ports: at most 64", ports.len()));
    }
    for (i, p) in ports.iter().enumerate() {
        if p.container_port == 0 {
            return Err(format!("cannot publish {p}: container port 0"));
        }
        if p.host_ip
            .is_some_and(|ip| ip.is_multicast() || ip.is_broadcast())
        {
            return Err(format!("cannot publish {p}: not a host address"));
        }
        if p.host_port != 0 && ports[..i].iter().any(|q| super::rules::clashes(p, q)) {
            return Err(format!(
                "host port {} ({}) is published twice",
                p.host_port,
                p.protocol.as_str()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PortBinding {
        s.parse().unwrap()
    }

    #[test]
    fn port_specs_parse_as_docker_takes_them() {
        assert_eq!(
            p("8080:80"),
            PortBinding {
                host_ip: None,
                host_port: 8080,
                container_port: 80,
                protocol: Protocol::Tcp
            }
        );
        assert_eq!(p("80").host_port, 0);
        let b = p("127.0.0.1:5353:53/udp");
        assert_eq!(b.host_ip, Some(Ipv4Addr::LOCALHOST));
        assert_eq!(
            (b.host_port, b.container_port, b.protocol),
            (5353, 53, Protocol::Udp)
        );
        assert_eq!(p("127.0.0.1::80").host_port, 0);
        assert_eq!(p("0.0.0.0:80:80").host_ip, None);
        assert_eq!(p("127.0.0.1:8080:80").to_string(), "127.0.0.1:8080->80/tcp");
        for bad in [
            "",
            "80/sctp",
            "a:80",
            "8080:0",
            "70000:80",
            "1:2:3:4",
            "::1:80:80",
            "80:",
        ] {
            assert!(bad.parse::<PortBinding>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_port_in_use_is_refused_and_a_free_one_held() {
        let (b, r) = reserve(&p("127.0.0.1::80")).unwrap();
        assert_ne!(b.host_port, 0);
        // Held: the same port again is refused, with a clear message.
        let again = PortBinding { ..b.clone() };
        let e = reserve(&again).unwrap_err();
        assert!(e.contains("already in use"), "{e}");
        drop(r);
        let (_b2, _r2) = reserve(&again).unwrap();
        // UDP is its own space.
        let (_u, _ur) = reserve(&PortBinding {
            protocol: Protocol::Udp,
            ..b
        })
        .unwrap();
    }

    #[test]
    fn all_or_nothing() {
        let (b, _held) = reserve(&p("127.0.0.1::80")).unwrap();
        let free = reserve(&p("127.0.0.1::81")).map(|(b, _)| b).unwrap();
        // The second is taken: the first is given back.
        let e = reserve_all(&[free.clone(), b.clone()]).unwrap_err();
        assert!(e.contains("already in use"), "{e}");
        reserve(&free).unwrap();
    }

    #[test]
    fn requests_are_checked() {
        check(&[p("8080:80"), p("8081:80"), p("80"), p("80")]).unwrap();
        assert!(check(&[p("8080:80"), p("8080:81")])
            .unwrap_err()
            .contains("twice"));
        let many: Vec<_> = (0..65).map(|i| p(&format!("{}:80", 10000 + i))).collect();
        assert!(check(&many).is_err());
    }
}
