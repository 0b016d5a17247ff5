//! The packet filter rules of container networks, as one nftables
//! ruleset in two tables of husk's own (`ip husk` and `bridge husk`),
//! written through nftables' JSON API.
//!
//! The rules are a pure function of the networks and the attached
//! containers: every change replaces both tables in one atomic
//! transaction (add, delete, and fill again), so there is never a
//! half-updated ruleset and nothing stale survives a restart. Other
//! tables on the host are never touched.
//!
//! `ip husk`:
//! - `prerouting`/`output` (nat): traffic to a local address goes through
//!   `publish`, which DNATs each published port to its container (from
//!   outside, and from the host itself, 127.0.0.1 included).
//! - `postrouting` (nat): a network's traffic leaving by another
//!   interface is masqueraded (not for internal networks); so is
//!   published-port traffic from the host's loopback and from containers
//!   on the same bridge (hairpin), so replies come back the same way.
//! - `forward` (filter): traffic within one network passes; published
//!   ports pass; nothing else crosses between networks or comes in from
//!   outside except replies; internal networks send nothing out.
//! - `input` (filter): from a network, the host answers only DNS on its
//!   gateway address and replies to its own connections.
//!
//! `bridge husk`, `prerouting`: what a container's TAP sends must carry
//! its own MAC and IPv4 address, and be IPv4 or ARP, or it is dropped
//! (no spoofing another container, or the gateway).

use std::net::Ipv4Addr;

use serde_json::{json, Value};

use super::ipam::Subnet;
use crate::client::types::PortBinding;

pub const TABLE: &str = "husk";

#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("the nft program is not installed (apt-get install nftables)")]
    NoNft,
    #[error("the ruleset does not fit nftables' schema: {0}")]
    Schema(String),
    #[error("nft refused the ruleset: {0}")]
    Nft(String),
}

/// One network, as its rules need it.
#[derive(Clone, Debug)]
pub struct NetRules {
    pub bridge: String,
    pub subnet: Subnet,
    pub gateway: Ipv4Addr,
    pub internal: bool,
}

/// One attached container.
#[derive(Clone, Debug)]
pub struct EndpointRules {
    pub tap: String,
    pub bridge: String,
    pub ip: Ipv4Addr,
    pub mac: String,
    /// With their host ports chosen.
    pub ports: Vec<PortBinding>,
}

fn meta(key: &str) -> Value {
    json!({"meta": {"key": key}})
}

fn payload(protocol: &str, field: &str) -> Value {
    json!({"payload": {"protocol": protocol, "field": field}})
}

fn m(op: &str, left: Value, right: Value) -> Value {
    json!({"match": {"op": op, "left": left, "right": right}})
}

fn eq(left: Value, right: Value) -> Value {
    m("==", left, right)
}

fn prefix(s: &Subnet) -> Value {
    json!({"prefix": {"addr": s.addr().to_string(), "len": s.prefix()}})
}

fn set(items: &[&str]) -> Value {
    json!({"set": items})
}

fn ct_state_reply() -> Value {
    m(
        "in",
        json!({"ct": {"key": "state"}}),
        json!(["established", "related"]),
    )
}

fn ct_dnat() -> Value {
    m("in", json!({"ct": {"key": "status"}}), json!("dnat"))
}

fn verdict(v: &str) -> Value {
    json!({ v: null })
}

struct Table {
    family: &'static str,
    cmds: Vec<Value>,
}

impl Table {
    fn new(family: &'static str) -> Table {
        let t = json!({"table": {"family": family, "name": TABLE}});
        // Add first, so that the delete cannot fail on a missing table:
        // together they empty it, in the same transaction as the rest.
        Table {
            family,
            cmds: vec![
                json!({"add": t.clone()}),
                json!({"delete": t.clone()}),
                json!({"add": t}),
            ],
        }
    }

    fn base_chain(&mut self, name: &str, kind: &str, hook: &str, prio: i32) {
        self.cmds.push(json!({"add": {"chain": {
            "family": self.family, "table": TABLE, "name": name,
            "type": kind, "hook": hook, "prio": prio, "policy": "accept"}}}));
    }

    fn chain(&mut self, name: &str) {
        self.cmds.push(json!({"add": {"chain": {
            "family": self.family, "table": TABLE, "name": name}}}));
    }

    fn rule(&mut self, chain: &str, expr: Vec<Value>) {
        self.cmds.push(json!({"add": {"rule": {
            "family": self.family, "table": TABLE, "chain": chain, "expr": expr}}}));
    }
}

/// The whole ruleset, as one nftables JSON document of commands.
///
/// `strict_forward`: husk turned IPv4 forwarding on, so forwarding that
/// involves no husk bridge is dropped (the host does not become a router
/// for anyone else).
pub fn ruleset(nets: &[NetRules], eps: &[EndpointRules], strict_forward: bool) -> Value {
    let mut cmds = ip_table(nets, eps, strict_forward).cmds;
    cmds.extend(bridge_table(eps).cmds);
    json!({ "nftables": cmds })
}

/// Commands that remove husk's tables (when no network is left).
pub fn removal() -> Value {
    let mut cmds = Vec::new();
    for family in ["ip", "bridge"] {
        let t = json!({"table": {"family": family, "name": TABLE}});
        cmds.push(json!({"add": t.clone()}));
        cmds.push(json!({"delete": t}));
    }
    json!({ "nftables": cmds })
}

fn ip_table(nets: &[NetRules], eps: &[EndpointRules], strict_forward: bool) -> Table {
    let mut t = Table::new("ip");
    let bridges: Vec<&str> = nets.iter().map(|n| n.bridge.as_str()).collect();
    let all = || set(&bridges);
    let local = || {
        eq(
            json!({"fib": {"result": "type", "flags": ["daddr"]}}),
            json!("local"),
        )
    };

    // Before conntrack and NAT: nothing from outside the host may reach a
    // loopback address (route_localnet would let a DNAT to a published
    // 127.0.0.1 port through; the fix kube-proxy made for CVE-2020-8558).
    t.base_chain("raw_prerouting", "filter", "prerouting", -300);
    t.rule(
        "raw_prerouting",
        vec![
            m("!=", meta("iifname"), json!("lo")),
            eq(
                payload("ip", "daddr"),
                json!({"prefix": {"addr": "127.0.0.0", "len": 8}}),
            ),
            verdict("drop"),
        ],
    );
    t.base_chain("prerouting", "nat", "prerouting", -100);
    t.base_chain("output", "nat", "output", -100);
    t.base_chain("postrouting", "nat", "postrouting", 100);
    t.base_chain("forward", "filter", "forward", 0);
    t.base_chain("input", "filter", "input", 0);
    t.chain("publish");
    for chain in ["prerouting", "output"] {
        t.rule(chain, vec![local(), json!({"jump": {"target": "publish"}})]);
    }

    for ep in eps {
        for p in &ep.ports {
            let proto = p.protocol.as_str();
            let mut expr = Vec::new();
            if let Some(ip) = p.host_ip {
                expr.push(eq(payload("ip", "daddr"), json!(ip.to_string())));
            }
            expr.push(eq(payload(proto, "dport"), json!(p.host_port)));
            expr.push(json!({"dnat": {"addr": ep.ip.to_string(), "port": p.container_port}}));
            t.rule("publish", expr);
        }
    }

    for n in nets {
        let br = json!(n.bridge);
        if !n.internal {
            t.rule(
                "postrouting",
                vec![
                    eq(payload("ip", "saddr"), prefix(&n.subnet)),
                    m("!=", meta("oifname"), br.clone()),
                    verdict("masquerade"),
                ],
            );
        }
        // Hairpin: a container reaching a published port of its own
        // network through a host address.
        t.rule(
            "postrouting",
            vec![
                eq(meta("oifname"), br.clone()),
                ct_dnat(),
                eq(payload("ip", "saddr"), prefix(&n.subnet)),
                verdict("masquerade"),
            ],
        );
        // The host reaching a published port on 127.0.0.1.
        t.rule(
            "postrouting",
            vec![
                eq(meta("oifname"), br.clone()),
                eq(
                    payload("ip", "saddr"),
                    json!({"prefix": {"addr": "127.0.0.0", "len": 8}}),
                ),
                verdict("masquerade"),
            ],
        );
    }

    if !bridges.is_empty() {
        // An internal network's traffic goes nowhere but itself, not even
        // to a published port of another network.
        for n in nets.iter().filter(|n| n.internal) {
            let br = json!(n.bridge);
            t.rule(
                "forward",
                vec![
                    eq(meta("iifname"), br.clone()),
                    m("!=", meta("oifname"), br),
                    verdict("drop"),
                ],
            );
        }
        for n in nets {
            let br = json!(n.bridge);
            t.rule(
                "forward",
                vec![
                    eq(meta("iifname"), br.clone()),
                    eq(meta("oifname"), br),
                    verdict("accept"),
                ],
            );
        }
        t.rule(
            "forward",
            vec![eq(meta("oifname"), all()), ct_dnat(), verdict("accept")],
        );
        t.rule(
            "forward",
            vec![
                eq(meta("iifname"), all()),
                eq(meta("oifname"), all()),
                verdict("drop"),
            ],
        );
        t.rule(
            "forward",
            vec![
                eq(meta("oifname"), all()),
                ct_state_reply(),
                verdict("accept"),
            ],
        );
        t.rule("forward", vec![eq(meta("oifname"), all()), verdict("drop")]);
        // No link-local destinations out there (a cloud's metadata
        // service at 169.254.169.254 is the host's, not its tenants').
        t.rule(
            "forward",
            vec![
                eq(meta("iifname"), all()),
                eq(
                    payload("ip", "daddr"),
                    json!({"prefix": {"addr": "169.254.0.0", "len": 16}}),
                ),
                verdict("drop"),
            ],
        );
        if strict_forward {
            t.rule(
                "forward",
                vec![m("!=", meta("iifname"), all()), verdict("drop")],
            );
        }
        // A network's gateway address answers only on its own bridge (and
        // to the host itself): not a DNS server for the host's LAN.
        for n in nets {
            t.rule(
                "input",
                vec![
                    eq(payload("ip", "daddr"), json!(n.gateway.to_string())),
                    m("!=", meta("iifname"), set(&["lo", &n.bridge])),
                    verdict("drop"),
                ],
            );
        }

        t.rule(
            "input",
            vec![
                eq(meta("iifname"), all()),
                ct_state_reply(),
                verdict("accept"),
            ],
        );
        for n in nets {
            for proto in ["udp", "tcp"] {
                t.rule(
                    "input",
                    vec![
                        eq(meta("iifname"), json!(n.bridge)),
                        eq(payload("ip", "daddr"), json!(n.gateway.to_string())),
                        eq(payload(proto, "dport"), json!(53)),
                        verdict("accept"),
                    ],
                );
            }
        }
        t.rule("input", vec![eq(meta("iifname"), all()), verdict("drop")]);
    }
    t
}

fn bridge_table(eps: &[EndpointRules]) -> Table {
    let mut t = Table::new("bridge");
    t.base_chain("prerouting", "filter", "prerouting", -200);
    for ep in eps {
        let tap = || eq(meta("iifname"), json!(ep.tap));
        let (ip, mac) = (json!(ep.ip.to_string()), json!(ep.mac));
        t.rule(
            "prerouting",
            vec![
                tap(),
                m("!=", payload("ether", "saddr"), mac.clone()),
                verdict("drop"),
            ],
        );
        t.rule(
            "prerouting",
            vec![
                tap(),
                m("!=", payload("ether", "type"), set(&["ip", "arp"])),
                verdict("drop"),
            ],
        );
        t.rule(
            "prerouting",
            vec![
                tap(),
                m("!=", payload("ip", "saddr"), ip.clone()),
                verdict("drop"),
            ],
        );
        t.rule(
            "prerouting",
            vec![
                tap(),
                m("!=", payload("arp", "saddr ip"), ip),
                verdict("drop"),
            ],
        );
        t.rule(
            "prerouting",
            vec![
                tap(),
                m("!=", payload("arp", "saddr ether"), mac),
                verdict("drop"),
            ],
        );
    }
    t
}

/// `nft`: `$HUSK_NFT`, else on PATH, else in /usr/sbin or /sbin (not
/// always on a daemon's PATH).
pub fn nft_program() -> Option<std::path::PathBuf> {
    crate::daemon::backend::find_tool("nft", Some("HUSK_NFT")).or_else(|| {
        ["/usr/sbin/nft", "/sbin/nft"]
            .iter()
            .map(std::path::PathBuf::from)
            .find(|p| p.exists())
    })
}

/// Hands `doc` to nft as one transaction. Blocking: call it from
/// `spawn_blocking`.
pub fn apply(doc: &Value) -> Result<(), RulesError> {
    let nft = nft_program().ok_or(RulesError::NoNft)?;
    let typed: nftables::schema::Nftables =
        serde_json::from_value(doc.clone()).map_err(|e| RulesError::Schema(e.to_string()))?;
    nftables::helper::apply_ruleset_with_args(&typed, Some(&nft), nftables::helper::DEFAULT_ARGS)
        .map_err(|e| match e {
            nftables::helper::NftablesError::NftFailed { stderr, .. } => {
                RulesError::Nft(stderr.trim().to_string())
            }
            e => RulesError::Nft(e.to_string()),
        })
}

/// Whether a protocol's port `p` of `ep` would clash with `q`: the same
/// protocol and host port, and host addresses that overlap.
pub fn clashes(p: &PortBinding, q: &PortBinding) -> bool {
    p.protocol == q.protocol
        && p.host_port == q.host_port
        && (p.host_ip.is_none() || q.host_ip.is_none() || p.host_ip == q.host_ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(bridge: &str, subnet: &str, internal: bool) -> NetRules {
        let subnet: Subnet = subnet.parse().unwrap();
        NetRules {
            bridge: bridge.into(),
            gateway: subnet.nth(1).unwrap(),
            subnet,
            internal,
        }
    }

    fn rules_of(doc: &Value, family: &str, chain: &str) -> Vec<String> {
        doc["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c["add"]["rule"].as_object())
            .filter(|r| r["family"] == family && r["chain"] == chain)
            .map(|r| r["expr"].to_string())
            .collect()
    }

    #[test]
    fn the_ruleset_fits_the_nftables_schema() {
        let nets = [
            net("husk0", "172.20.0.0/16", false),
            net("husk-1", "172.21.0.0/16", true),
        ];
        let eps = [EndpointRules {
            tap: "htap0123456789a".into(),
            bridge: "husk0".into(),
            ip: Ipv4Addr::new(172, 20, 0, 2),
            mac: "02:42:ac:14:00:02".into(),
            ports: vec![
                "127.0.0.1:8080:80".parse().unwrap(),
                "53:53/udp".parse().unwrap(),
            ],
        }];
        let doc = ruleset(&nets, &eps, true);
        let typed: nftables::schema::Nftables = serde_json::from_value(doc.clone()).unwrap();
        // The typed form says the same as the document.
        assert_eq!(
            serde_json::to_value(&typed).unwrap()["nftables"]
                .as_array()
                .unwrap()
                .len(),
            doc["nftables"].as_array().unwrap().len()
        );
        serde_json::from_value::<nftables::schema::Nftables>(removal()).unwrap();

        let publish = rules_of(&doc, "ip", "publish");
        assert_eq!(publish.len(), 2);
        assert!(publish[0].contains("\"127.0.0.1\"") && publish[0].contains("8080"));
        assert!(
            publish[0].contains(r#"{"dnat":{"addr":"172.20.0.2","port":80}}"#),
            "{}",
            publish[0]
        );
        assert!(publish[1].contains("\"udp\"") && !publish[1].contains("daddr"));
        // Only the non-internal network is masqueraded on its way out.
        let post = rules_of(&doc, "ip", "postrouting");
        let egress: Vec<_> = post.iter().filter(|r| r.contains("\"!=\"")).collect();
        assert_eq!(egress.len(), 1);
        assert!(egress[0].contains("172.20.0.0"));
        // The internal network's traffic goes nowhere but itself, first of all.
        let fwd = rules_of(&doc, "ip", "forward");
        assert!(fwd[0].contains("husk-1") && fwd[0].contains("!=") && fwd[0].contains("drop"));
        // Strict forwarding: nothing that does not come from a bridge.
        assert!(fwd.last().unwrap().contains("\"!=\"") && fwd.last().unwrap().contains("drop"));
        assert!(fwd
            .iter()
            .any(|r| r.contains("169.254.0.0") && r.contains("drop")));
        let lax = ruleset(&nets, &eps, false);
        assert_eq!(rules_of(&lax, "ip", "forward").len(), fwd.len() - 1);
        // Loopback addresses only from lo.
        let raw = rules_of(&doc, "ip", "raw_prerouting");
        assert!(
            raw[0].contains("127.0.0.0") && raw[0].contains("\"lo\""),
            "{raw:?}"
        );
        // Gateways answer only on their bridges.
        let input = rules_of(&doc, "ip", "input");
        assert!(input
            .iter()
            .any(|r| r.contains("172.21.0.1") && r.contains("husk-1") && r.contains("\"lo\"")));
        // Anti-spoofing for the one TAP.
        let br = rules_of(&doc, "bridge", "prerouting");
        assert_eq!(br.len(), 5);
        assert!(br.iter().all(|r| r.contains("htap0123456789a")));
    }

    #[test]
    fn no_networks_means_empty_tables() {
        let doc = ruleset(&[], &[], false);
        assert!(rules_of(&doc, "ip", "forward").is_empty());
        assert!(rules_of(&doc, "ip", "input").is_empty());
    }

    #[test]
    fn port_clashes() {
        let p = |s: &str| s.parse::<PortBinding>().unwrap();
        assert!(clashes(&p("8080:80"), &p("8080:81")));
        assert!(clashes(&p("8080:80"), &p("127.0.0.1:8080:80")));
        assert!(!clashes(&p("127.0.0.2:8080:80"), &p("127.0.0.1:8080:80")));
        assert!(!clashes(&p("8080:80"), &p("8080:80/udp")));
        assert!(!clashes(&p("8080:80"), &p("8081:80")));
    }
}
