//! Container networks: Linux bridges with a subnet each, a TAP per
//! container on its network's bridge, NAT out, published ports in, a DNS
//! responder per network, and isolation between networks.
//!
//! - `bridge` is the default network (bridge `husk0`), made when the
//!   daemon first starts with a subnet that clashes with nothing on the
//!   host; `husk network create` makes others (`husk-<id>`), where
//!   containers also find each other by name. `none` is no network.
//! - Networks are records in `<state>/networks/` and outlive the daemon;
//!   a container's attachment ([`Endpoint`]) is kept in its own record,
//!   so a restarted daemon knows every address in use.
//! - The packet filter is one ruleset rebuilt from that state on every
//!   change ([`rules`]); links are made and removed over netlink
//!   ([`link`]). At start the daemon removes every TAP of its own that no
//!   running container owns, so nothing outlives its container.
//!
//! Everything here needs root (CAP_NET_ADMIN) and the `nft` program.
//! Without them the daemon runs, and says why networking is off;
//! containers that ask for no network in particular then get none.

pub mod dns;
pub mod ipam;
pub mod link;
pub mod ports;
pub(crate) mod record;
pub mod rules;

use record::{random_hex, valid_name, write_atomic};
pub use record::{Endpoint, NetworkRecord};

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::client::types::{NetworkCreateRequest, NetworkMember, NetworkView, PortBinding};
use dns::{DnsConfig, DnsServer, Names};
use ipam::Subnet;
use link::Netlink;

/// The default network's name, and its bridge.
pub const DEFAULT_NETWORK: &str = "bridge";
pub const DEFAULT_BRIDGE: &str = "husk0";
/// The network name that means no network.
pub const NONE: &str = "none";
/// A container's TAP: this, then 11 hex digits of its id (15 bytes).
pub const TAP_PREFIX: &str = "htap";
/// The interface's name in the guest.
pub const GUEST_IFACE: &str = "eth0";

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("container networking is unavailable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl From<link::LinkError> for NetError {
    fn from(e: link::LinkError) -> Self {
        NetError::Internal(e.to_string())
    }
}

impl From<rules::RulesError> for NetError {
    fn from(e: rules::RulesError) -> Self {
        NetError::Internal(e.to_string())
    }
}

/// What a container asks of the network when it starts.
pub struct AttachRequest<'a> {
    pub container_id: &'a str,
    pub container_name: &'a str,
    /// `None`: the default network (or none, where networking is off).
    pub network: Option<&'a str>,
    pub ports: &'a [PortBinding],
}

/// Checks what a create request asks of the network, before anything
/// is made.
pub fn check_request(network: Option<&str>, publish: &[PortBinding]) -> Result<(), String> {
    if let Some(n) = network {
        if !valid_name(n) {
            return Err(format!("invalid network name {:?}", crate::text::echo(n)));
        }
        if n == NONE && !publish.is_empty() {
            return Err("a container with --network none cannot publish ports".into());
        }
    }
    ports::check(publish)
}

impl From<NetError> for crate::daemon::containers::ApiError {
    fn from(e: NetError) -> Self {
        use crate::daemon::containers::ApiError;
        match e {
            NetError::NotFound(m) => ApiError::NotFound(m),
            NetError::Conflict(m) => ApiError::Conflict(m),
            NetError::BadRequest(m) => ApiError::BadRequest(m),
            e @ NetError::Unavailable(_) => ApiError::Conflict(e.to_string()),
            NetError::Internal(m) => ApiError::Internal(m),
        }
    }
}

/// The daemon's network settings (`husk serve` flags).
#[derive(Clone, Debug, Default)]
pub struct NetOptions {
    /// `--bridge none`: no default network; containers get none unless
    /// they name a network.
    pub no_default: bool,
    /// `--bip`: the default network's subnet when it is first made.
    pub default_subnet: Option<Subnet>,
    /// `--dns`: where the networks' DNS sends other names (default: the
    /// host's /etc/resolv.conf).
    pub dns: Vec<SocketAddr>,
}

struct Net {
    record: NetworkRecord,
    names: Names,
    _dns: Option<DnsServer>,
}

impl Net {
    fn new(record: NetworkRecord) -> Net {
        Net {
            record,
            names: Names::default(),
            _dns: None,
        }
    }
}

struct Attached {
    ep: Endpoint,
    _held: Vec<ports::Reservation>,
}

#[derive(Default)]
struct Inner {
    /// By name.
    nets: BTreeMap<String, Net>,
    /// By container id.
    eps: BTreeMap<String, Attached>,
    /// By network id: the address handed out last (the next one goes
    /// after it, so an address is not reused at once: conntrack entries
    /// of the container that had it may live on for a while).
    last: BTreeMap<String, Ipv4Addr>,
    /// husk turned IPv4 forwarding on: forward only for its bridges.
    strict_forward: bool,
    /// The lock that makes this daemon the one that manages the networks
    /// of its network namespace.
    _lock: Option<std::fs::File>,
}

pub struct NetworkManager {
    dir: PathBuf,
    opts: NetOptions,
    upstreams: Vec<SocketAddr>,
    /// `None` with the reason when networking cannot work here.
    nl: Result<Netlink, String>,
    /// Why the set-up at start failed, if it did: networking is off then.
    failed: std::sync::Mutex<Option<String>>,
    inner: tokio::sync::Mutex<Inner>,
}

impl NetworkManager {
    /// Loads the network records and checks that networking can work
    /// here (root, netlink, nft); does not touch the host yet
    /// ([`NetworkManager::start`] does). Inside a tokio runtime.
    pub fn open(state_dir: &Path, opts: NetOptions) -> Result<Arc<NetworkManager>, NetError> {
        let dir = state_dir.join("networks");
        std::fs::create_dir_all(&dir)
            .map_err(|e| NetError::Internal(format!("{}: {e}", dir.display())))?;
        let nl = Self::usable().and_then(|()| Netlink::connect().map_err(|e| e.to_string()));
        let upstreams = if opts.dns.is_empty() {
            let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
            dns::upstreams_from_resolv_conf(&text)
        } else {
            opts.dns.clone()
        };
        let mut inner = Inner::default();
        for entry in std::fs::read_dir(&dir)
            .map_err(|e| NetError::Internal(format!("{}: {e}", dir.display())))?
            .flatten()
        {
            let p = entry.path();
            if p.extension().is_none_or(|e| e != "json") {
                continue;
            }
            match std::fs::read(&p).map_err(|e| e.to_string()).and_then(|b| {
                serde_json::from_slice::<NetworkRecord>(&b).map_err(|e| e.to_string())
            }) {
                Ok(record) => {
                    inner.nets.insert(record.name.clone(), Net::new(record));
                }
                Err(e) => tracing::error!("skipping network record {}: {e}", p.display()),
            }
        }
        Ok(Arc::new(NetworkManager {
            dir,
            opts,
            upstreams,
            nl,
            failed: std::sync::Mutex::new(None),
            inner: tokio::sync::Mutex::new(inner),
        }))
    }

    fn usable() -> Result<(), String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("the daemon is not running as root".into());
        }
        if rules::nft_program().is_none() {
            return Err(rules::RulesError::NoNft.to_string());
        }
        if !Path::new("/dev/net/tun").exists() {
            return Err("/dev/net/tun is missing".into());
        }
        Ok(())
    }

    /// Why networking is off, if it is.
    pub fn unavailable(&self) -> Option<String> {
        match &self.nl {
            Err(e) => Some(e.clone()),
            Ok(_) => self
                .failed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }

    fn netlink(&self) -> Result<&Netlink, NetError> {
        match (&self.nl, self.unavailable()) {
            (Ok(nl), None) => Ok(nl),
            (_, why) => Err(NetError::Unavailable(why.unwrap_or_default())),
        }
    }

    /// At daemon start, once the containers' records are loaded: makes
    /// the default network if it is missing, sets up every network's
    /// bridge and DNS, takes back the attachments of containers that
    /// still run (`running`), removes every TAP of ours that none of them
    /// owns, and writes the rules.
    pub async fn start(&self, running: Vec<(String, Endpoint)>) -> Result<(), NetError> {
        let r = self.start_inner(running).await;
        if let Err(e) = &r {
            *self.failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
        }
        r
    }

    async fn start_inner(&self, running: Vec<(String, Endpoint)>) -> Result<(), NetError> {
        let nl = self.netlink()?.clone();
        let mut inner = self.inner.lock().await;
        inner._lock = Some(lock_namespace()?);
        // Forwarding: when husk turns it on (and the marker says it did,
        // across restarts), only its own bridges' traffic is forwarded.
        let marker = self.dir.join("ip_forward-set-by-husk");
        let forward = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap_or_default();
        if forward.trim() == "0" {
            let _ = std::fs::write(&marker, b"");
        }
        inner.strict_forward = marker.exists();
        if !self.opts.no_default && !inner.nets.contains_key(DEFAULT_NETWORK) {
            let req = NetworkCreateRequest {
                name: DEFAULT_NETWORK.into(),
                subnet: self.opts.default_subnet.map(|s| s.to_string()),
                ..Default::default()
            };
            let record = self
                .new_record(&nl, &inner, &req, Some(DEFAULT_BRIDGE.into()), true)
                .await?;
            self.save(&record)?;
            inner.nets.insert(record.name.clone(), Net::new(record));
        }
        let names: Vec<String> = inner.nets.keys().cloned().collect();
        for name in names {
            let net = inner.nets.get_mut(&name).expect("listed just now");
            if let Err(e) = self.bring_up(&nl, net).await {
                tracing::error!("network {name}: {e}");
            }
        }
        for (id, ep) in running {
            let table = inner
                .nets
                .get(&ep.network)
                .filter(|n| n.record.id == ep.network_id)
                .map(|n| n.names.clone());
            match table {
                Some(table) => {
                    for n in &ep.names {
                        table.set(n, ep.ip);
                    }
                    // The host ports were held by the daemon that died;
                    // hold them again (a clash now is only logged: the
                    // rules still forward them).
                    let held = match ports::reserve_all(&ep.ports) {
                        Ok((_, held)) => held,
                        Err(e) => {
                            tracing::warn!("container {id}: {e}");
                            Vec::new()
                        }
                    };
                    inner.eps.insert(id, Attached { ep, _held: held });
                }
                _ => tracing::warn!("container {id}: its network {} is gone", ep.network),
            }
        }
        let owned: Vec<String> = inner.eps.values().map(|a| a.ep.tap.clone()).collect();
        for name in nl.names().await? {
            if is_our_tap(&name) && !owned.contains(&name) {
                tracing::info!("removing {name}, a TAP no running container owns");
                nl.delete(&name).await?;
            }
        }
        self.write_rules(&inner).await
    }

    /// The bridge, its sysctls and its DNS responder.
    async fn bring_up(&self, nl: &Netlink, net: &mut Net) -> Result<(), NetError> {
        let r = &net.record;
        nl.ensure_bridge(&r.bridge, r.gateway, &r.subnet, r.mtu)
            .await?;
        link::routing_sysctls(&r.bridge)?;
        if net._dns.is_none() {
            let cfg = DnsConfig {
                listen: r.gateway,
                port: dns::DNS_PORT,
                names: net.names.clone(),
                upstreams: self.upstreams.clone(),
                forward: !r.internal,
            };
            net._dns = Some(
                DnsServer::start(cfg)
                    .await
                    .map_err(|e| NetError::Internal(e.to_string()))?,
            );
        }
        Ok(())
    }

    async fn new_record(
        &self,
        nl: &Netlink,
        inner: &Inner,
        req: &NetworkCreateRequest,
        bridge: Option<String>,
        builtin: bool,
    ) -> Result<NetworkRecord, NetError> {
        let bad = NetError::BadRequest;
        let ours: Vec<Subnet> = inner.nets.values().map(|n| n.record.subnet).collect();
        let host = nl.host_subnets().await?;
        let subnet = match &req.subnet {
            Some(s) => {
                let s: Subnet = s.parse().map_err(bad)?;
                ipam::check_subnet(&s).map_err(bad)?;
                if let Some(n) = inner.nets.values().find(|n| n.record.subnet.overlaps(&s)) {
                    return Err(NetError::Conflict(format!(
                        "subnet {s} overlaps network {}'s {}",
                        n.record.name, n.record.subnet
                    )));
                }
                if let Some(u) = self.upstreams.iter().find(|u| match u.ip() {
                    std::net::IpAddr::V4(ip) => s.contains(ip),
                    std::net::IpAddr::V6(_) => false,
                }) {
                    return Err(NetError::Conflict(format!(
                        "subnet {s} holds {}, the host's DNS server",
                        u.ip()
                    )));
                }
                if let Some(h) = host.iter().find(|h| h.overlaps(&s)) {
                    return Err(NetError::Conflict(format!(
                        "subnet {s} overlaps {h}, which the host already routes"
                    )));
                }
                s
            }
            None => {
                let taken: Vec<Subnet> = ours.into_iter().chain(host).collect();
                ipam::pick_subnet(&taken).ok_or_else(|| {
                    NetError::Conflict("no free subnet is left: give one with --subnet".into())
                })?
            }
        };
        let gateway = match &req.gateway {
            Some(g) => {
                let g: Ipv4Addr = g.parse().map_err(|_| {
                    bad(format!("{:?} is not an IPv4 address", crate::text::echo(g)))
                })?;
                if !subnet.is_host(g) {
                    return Err(bad(format!(
                        "gateway {g} is not a host address of {subnet}"
                    )));
                }
                g
            }
            None => ipam::default_gateway(&subnet),
        };
        let id = random_hex();
        let mtu = match nl.uplink_mtu().await? {
            Some(m) => m.clamp(1280, 1500) as u16,
            None => 1500,
        };
        Ok(NetworkRecord {
            bridge: bridge.unwrap_or_else(|| format!("husk-{}", &id[..8])),
            id,
            name: req.name.clone(),
            subnet,
            gateway,
            internal: req.internal,
            builtin,
            mtu,
            created_ms: crate::daemon::state::now_ms(),
            labels: req.labels.clone(),
        })
    }

    fn save(&self, r: &NetworkRecord) -> Result<(), NetError> {
        let path = self.dir.join(format!("{}.json", r.id));
        let bytes = serde_json::to_vec_pretty(r).expect("a network record serializes");
        write_atomic(&path, &bytes)
            .map_err(|e| NetError::Internal(format!("{}: {e}", path.display())))
    }

    async fn write_rules(&self, inner: &Inner) -> Result<(), NetError> {
        let nets: Vec<rules::NetRules> = inner
            .nets
            .values()
            .map(|n| rules::NetRules {
                bridge: n.record.bridge.clone(),
                subnet: n.record.subnet,
                gateway: n.record.gateway,
                internal: n.record.internal,
            })
            .collect();
        let eps: Vec<rules::EndpointRules> = inner
            .eps
            .values()
            .map(|a| rules::EndpointRules {
                tap: a.ep.tap.clone(),
                bridge: a.ep.bridge.clone(),
                ip: a.ep.ip,
                mac: a.ep.mac.clone(),
                ports: a.ep.ports.clone(),
            })
            .collect();
        let doc = if nets.is_empty() {
            rules::removal()
        } else {
            rules::ruleset(&nets, &eps, inner.strict_forward)
        };
        tokio::task::spawn_blocking(move || rules::apply(&doc))
            .await
            .map_err(|e| NetError::Internal(e.to_string()))??;
        Ok(())
    }

    /// `POST /v1/networks`.
    pub async fn create(&self, req: NetworkCreateRequest) -> Result<NetworkView, NetError> {
        if !valid_name(&req.name) {
            return Err(NetError::BadRequest(format!(
                "invalid network name {:?}: letters, digits, '_', '.' and '-', starting with a letter or digit",
                crate::text::echo(&req.name)
            )));
        }
        if [DEFAULT_NETWORK, NONE, "host"].contains(&req.name.as_str()) {
            return Err(NetError::Conflict(format!(
                "{} is a reserved network name",
                req.name
            )));
        }
        let nl = self.netlink()?.clone();
        let mut inner = self.inner.lock().await;
        if inner.nets.contains_key(&req.name) {
            return Err(NetError::Conflict(format!(
                "network {} already exists",
                req.name
            )));
        }
        let record = self.new_record(&nl, &inner, &req, None, false).await?;
        let mut net = Net::new(record);
        if let Err(e) = self.bring_up(&nl, &mut net).await {
            let _ = nl.delete(&net.record.bridge).await;
            return Err(e);
        }
        self.save(&net.record)?;
        let name = net.record.name.clone();
        inner.nets.insert(name.clone(), net);
        if let Err(e) = self.write_rules(&inner).await {
            let net = inner.nets.remove(&name).expect("inserted just now");
            let _ = std::fs::remove_file(self.dir.join(format!("{}.json", net.record.id)));
            let _ = nl.delete(&net.record.bridge).await;
            return Err(e);
        }
        Ok(view(&inner, &inner.nets[&name]))
    }

    fn find<'a>(inner: &'a Inner, key: &str) -> Result<&'a Net, NetError> {
        if let Some(n) = inner.nets.get(key) {
            return Ok(n);
        }
        let hits: Vec<&Net> = inner
            .nets
            .values()
            .filter(|n| !key.is_empty() && n.record.id.starts_with(key))
            .collect();
        match hits.as_slice() {
            [n] => Ok(n),
            [] => Err(NetError::NotFound(format!(
                "no such network: {}",
                crate::text::echo(key)
            ))),
            _ => Err(NetError::BadRequest(format!(
                "{} matches more than one network",
                crate::text::echo(key)
            ))),
        }
    }

    pub async fn list(&self) -> Vec<NetworkView> {
        let inner = self.inner.lock().await;
        inner.nets.values().map(|n| view(&inner, n)).collect()
    }

    pub async fn inspect(&self, key: &str) -> Result<NetworkView, NetError> {
        let inner = self.inner.lock().await;
        Self::find(&inner, key).map(|n| view(&inner, n))
    }

    /// `DELETE /v1/networks/{id}`: not the default one, and not while a
    /// container is attached. Its bridge, DNS and rules go with it.
    pub async fn remove(&self, key: &str) -> Result<(), NetError> {
        let mut inner = self.inner.lock().await;
        let net = Self::find(&inner, key)?;
        let name = net.record.name.clone();
        if net.record.builtin {
            return Err(NetError::Conflict(format!(
                "{name} is the default network; it cannot be removed"
            )));
        }
        let users: Vec<&str> = inner
            .eps
            .values()
            .filter(|a| a.ep.network == name)
            .map(|a| a.ep.container_name.as_str())
            .collect();
        if !users.is_empty() {
            return Err(NetError::Conflict(format!(
                "network {name} has containers attached: {}",
                users.join(", ")
            )));
        }
        let net = inner.nets.remove(&name).expect("found just now");
        let path = self.dir.join(format!("{}.json", net.record.id));
        std::fs::remove_file(&path)
            .map_err(|e| NetError::Internal(format!("{}: {e}", path.display())))?;
        drop(net._dns);
        if let Ok(nl) = self.netlink() {
            nl.delete(&net.record.bridge).await?;
        }
        self.write_rules(&inner).await
    }

    /// At create: the network a container names exists and can take it
    /// (a start checks again).
    pub async fn check_joinable(
        &self,
        network: Option<&str>,
        ports: &[PortBinding],
    ) -> Result<(), NetError> {
        let name = match network {
            Some(NONE) => return Ok(()),
            Some(n) => n,
            None if self.opts.no_default || self.unavailable().is_some() => {
                if ports.is_empty() {
                    return Ok(());
                }
                return Err(NetError::BadRequest(match self.unavailable() {
                    Some(why) => format!("cannot publish ports: container networking is off ({why})"),
                    None => "cannot publish ports: there is no default network (--bridge none); name one with --network".into(),
                }));
            }
            None => DEFAULT_NETWORK,
        };
        self.netlink()?;
        let inner = self.inner.lock().await;
        let net = Self::find(&inner, name)?;
        net.record.check_ports(ports)
    }

    /// Attaches a starting container: an address, a TAP on the bridge,
    /// its published ports and names; `None` for no network.
    pub async fn attach(&self, req: AttachRequest<'_>) -> Result<Option<Endpoint>, NetError> {
        let name = match req.network {
            Some(NONE) => return Ok(None),
            Some(n) => n,
            None if self.opts.no_default => return Ok(None),
            None => match self.unavailable() {
                Some(why) => {
                    tracing::debug!("no network for {}: {why}", req.container_name);
                    return Ok(None);
                }
                None => DEFAULT_NETWORK,
            },
        };
        ports::check(req.ports).map_err(NetError::BadRequest)?;
        let nl = self.netlink()?.clone();
        let mut inner = self.inner.lock().await;
        let net = Self::find(&inner, name)?;
        let (r, table) = (net.record.clone(), net.names.clone());
        r.check_ports(req.ports)?;
        for p in req.ports.iter().filter(|p| p.host_port != 0) {
            if let Some(other) = inner
                .eps
                .values()
                .find(|a| a.ep.ports.iter().any(|q| rules::clashes(p, q)))
            {
                return Err(NetError::Conflict(format!(
                    "cannot publish {p}: container {} publishes host port {} already",
                    other.ep.container_name, p.host_port
                )));
            }
        }
        let (bound, held) = ports::reserve_all(req.ports).map_err(NetError::Conflict)?;
        let used: Vec<Ipv4Addr> = inner
            .eps
            .values()
            .filter(|a| a.ep.network_id == r.id)
            .map(|a| a.ep.ip)
            .collect();
        let ip = ipam::allocate(&r.subnet, r.gateway, &used, inner.last.get(&r.id).copied())
            .ok_or_else(|| {
                NetError::Conflict(format!("network {} has no free address left", r.name))
            })?;
        let tap = format!("{TAP_PREFIX}{}", &req.container_id[..11]);
        if let Err(e) = nl.create_tap(&tap, None, &r.bridge, r.mtu).await {
            return Err(e.into());
        }
        // Names only on user-defined networks, as Docker does: the
        // container's name and short id (both unique in the daemon; a
        // host name is the caller's to choose, so it is not one). A name
        // already answered (the same name in another case) stays its
        // first owner's.
        let names: Vec<String> = if r.builtin {
            Vec::new()
        } else {
            [
                req.container_name.to_lowercase(),
                req.container_id[..12].to_string(),
            ]
            .into_iter()
            .filter(|n| table.lookup(n).is_none())
            .collect()
        };
        let ep = Endpoint {
            network: r.name.clone(),
            network_id: r.id.clone(),
            bridge: r.bridge.clone(),
            tap: tap.clone(),
            ip,
            prefix_len: r.subnet.prefix(),
            gateway: r.gateway,
            mac: ipam::mac_string(ipam::mac_for(ip)),
            mtu: r.mtu,
            ports: bound,
            names,
            container_name: req.container_name.into(),
        };
        inner.eps.insert(
            req.container_id.into(),
            Attached {
                ep: ep.clone(),
                _held: held,
            },
        );
        inner.last.insert(r.id.clone(), ip);
        if let Err(e) = self.write_rules(&inner).await {
            inner.eps.remove(req.container_id);
            let _ = nl.delete(&tap).await;
            return Err(e);
        }
        for n in &ep.names {
            table.set(n, ip);
        }
        Ok(Some(ep))
    }

    /// Detaches a container that ended (or never started): its TAP, its
    /// rules, its names and host ports go. Harmless when not attached.
    pub async fn detach(&self, container_id: &str) {
        let mut inner = self.inner.lock().await;
        let Some(a) = inner.eps.remove(container_id) else {
            return;
        };
        if let Some(net) = inner.nets.get(&a.ep.network) {
            for n in &a.ep.names {
                if net.names.lookup(n) == Some(a.ep.ip) {
                    net.names.remove(n);
                }
            }
        }
        if let Ok(nl) = self.netlink() {
            if let Err(e) = nl.delete(&a.ep.tap).await {
                tracing::error!("{e}");
            }
        }
        if let Err(e) = self.write_rules(&inner).await {
            tracing::error!("cannot update the network rules: {e}");
        }
    }
}

/// Takes the lock that makes this daemon the one managing the networks of
/// its network namespace (`/run/husk/net-<namespace inode>.lock`): two
/// would share `husk0`, the TAPs' names and the `husk` tables.
fn lock_namespace() -> Result<std::fs::File, NetError> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata("/proc/thread-self/ns/net")
        .map_err(|e| NetError::Internal(format!("/proc/thread-self/ns/net: {e}")))?
        .ino();
    let dir = Path::new("/run/husk");
    std::fs::create_dir_all(dir)
        .map_err(|e| NetError::Internal(format!("{}: {e}", dir.display())))?;
    let path = dir.join(format!("net-{ino}.lock"));
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| NetError::Internal(format!("{}: {e}", path.display())))?;
    // SAFETY: flock on a descriptor we own; no pointers.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(NetError::Unavailable(format!(
            "another husk daemon manages the networks of this network namespace ({} is locked)",
            path.display()
        )));
    }
    Ok(f)
}

/// Whether `name` is one of our TAPs' names.
fn is_our_tap(name: &str) -> bool {
    name.strip_prefix(TAP_PREFIX)
        .is_some_and(|h| h.len() == 11 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn view(inner: &Inner, n: &Net) -> NetworkView {
    let r = &n.record;
    NetworkView {
        id: r.id.clone(),
        name: r.name.clone(),
        driver: "bridge".into(),
        subnet: r.subnet.to_string(),
        gateway: r.gateway,
        bridge: r.bridge.clone(),
        internal: r.internal,
        builtin: r.builtin,
        created_ms: r.created_ms,
        labels: r.labels.clone(),
        containers: inner
            .eps
            .iter()
            .filter(|(_, a)| a.ep.network_id == r.id)
            .map(|(id, a)| NetworkMember {
                id: id.clone(),
                name: a.ep.container_name.clone(),
                ip_address: a.ep.ip,
                mac_address: a.ep.mac.clone(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_taps_are_told_apart() {
        assert!(is_our_tap("htap0123456789a"));
        assert!(!is_our_tap("htap0123456789"));
        assert!(!is_our_tap("hktap1234"));
        assert!(!is_our_tap("htap0123456789z"));
    }

    #[test]
    fn network_names() {
        assert!(valid_name("front-end_1.x"));
        for bad in ["", "-a", "a b", "a/b", &"x".repeat(65)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }
}
