//! Container networking end to end: a real daemon, containers in real
//! Linux guests (QEMU's software emulation here), a TAP per guest on the
//! network's bridge, and the nftables rules the daemon writes.
//!
//! Each daemon runs in a network namespace of its own, which stands in
//! for its host; a second namespace, joined to it by a veth pair, stands
//! in for the outside world (198.51.100.2, with a web server and a DNS
//! server). The daemon's namespace routes to it by default, as a host
//! routes to the internet.
//!
//! Prints `skipped: <reason>` where QEMU, vhost-device-vsock or the guest
//! kernel is missing (a failure under HUSK_REQUIRE_QEMU).

#[path = "common/busybox_image.rs"]
mod busybox_image;
#[path = "common/daemon.rs"]
mod daemon;
#[path = "common/qemu.rs"]
mod qemu;

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use daemon::{setup, setup_with, Daemon, NetNs};
use serde_json::{json, Value};

const IMAGE: &str = busybox_image::IMAGE;
const OUTSIDE: &str = "198.51.100.2";
const HOST_UPLINK: &str = "198.51.100.1";

/// The outside world: a namespace with a web server and a DNS server.
struct Outside {
    ns: NetNs,
    kids: Vec<Child>,
    dir: PathBuf,
    stop: Arc<AtomicBool>,
    dns: Option<std::thread::JoinHandle<()>>,
}

/// The outside's DNS server, on a thread that enters its namespace:
/// `outside.test` is 198.51.100.9, anything else NXDOMAIN.
fn upstream_dns(ns: &str, stop: &AtomicBool, bound: std::sync::mpsc::Sender<Result<(), String>>) {
    use simple_dns::rdata::{RData, A};
    use simple_dns::{Packet, PacketFlag, ResourceRecord, CLASS, RCODE};
    use std::os::fd::AsRawFd;
    let sock = (|| {
        let f = std::fs::File::open(format!("/run/netns/{ns}")).map_err(|e| e.to_string())?;
        // SAFETY: setns on this thread alone, with a descriptor we hold.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(format!("setns: {}", std::io::Error::last_os_error()));
        }
        let sock = std::net::UdpSocket::bind((OUTSIDE, 53)).map_err(|e| format!("bind: {e}"))?;
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .map_err(|e| e.to_string())?;
        Ok(sock)
    })();
    let sock = match sock {
        Ok(s) => {
            let _ = bound.send(Ok(()));
            s
        }
        Err(e) => {
            let _ = bound.send(Err(e));
            return;
        }
    };
    let mut buf = [0u8; 512];
    while !stop.load(Ordering::Relaxed) {
        let Ok((n, from)) = sock.recv_from(&mut buf) else {
            continue;
        };
        let Ok(query) = Packet::parse(&buf[..n]) else {
            continue;
        };
        let mut reply = Packet::new_reply(query.id());
        reply.set_flags(PacketFlag::RECURSION_AVAILABLE);
        if let Some(q) = query.questions.first() {
            if q.qname.to_string() == "outside.test" {
                if matches!(q.qtype, simple_dns::QTYPE::TYPE(simple_dns::TYPE::A)) {
                    reply.answers.push(ResourceRecord::new(
                        q.qname.clone(),
                        CLASS::IN,
                        60,
                        RData::A(A::from(std::net::Ipv4Addr::new(198, 51, 100, 9))),
                    ));
                }
            } else {
                *reply.rcode_mut() = RCODE::NameError;
            }
            reply.questions.push(q.clone());
        }
        let _ = sock.send_to(&reply.build_bytes_vec().unwrap(), from);
    }
}

impl Outside {
    fn new(d: &Daemon) -> Outside {
        let ns = NetNs::new("o");
        let dir = d.dir.join("outside");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("index.html"), "outside world\n").unwrap();
        let host = &d.ns().name;
        daemon::ip(&[
            "link", "add", "up0", "netns", host, "type", "veth", "peer", "name", "wan0", "netns",
            &ns.name,
        ]);
        d.ns()
            .ip(&["addr", "add", &format!("{HOST_UPLINK}/24"), "dev", "up0"]);
        d.ns().ip(&["link", "set", "up0", "up"]);
        d.ns().ip(&["route", "add", "default", "via", OUTSIDE]);
        ns.ip(&["addr", "add", &format!("{OUTSIDE}/24"), "dev", "wan0"]);
        ns.ip(&["link", "set", "wan0", "up"]);
        let log = std::fs::File::create(dir.join("httpd.log")).unwrap();
        let httpd = ns
            .command("busybox")
            .args(["httpd", "-f", "-vv", "-p", "80", "-h"])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (bound_tx, bound) = std::sync::mpsc::channel();
        let dns = {
            let (ns, stop) = (ns.name.clone(), stop.clone());
            std::thread::spawn(move || upstream_dns(&ns, &stop, bound_tx))
        };
        // It listens before anyone asks it.
        bound
            .recv_timeout(Duration::from_secs(10))
            .expect("the outside's DNS server did not start")
            .unwrap_or_else(|e| panic!("the outside's DNS server: {e}"));
        Outside {
            ns,
            kids: vec![httpd],
            dir,
            stop,
            dns: Some(dns),
        }
    }

    fn httpd_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("httpd.log")).unwrap_or_default()
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.dns.take() {
            let _ = t.join();
        }
        for k in &mut self.kids {
            let _ = k.kill();
            let _ = k.wait();
        }
    }
}

/// An HTTP GET from inside `ns` with busybox nc; the body's last line,
/// or "" when nothing answers within 3 s.
fn http(ns: &NetNs, addr: &str, port: u16) -> String {
    ns.sh(&format!(
        "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 3 {addr} {port} | tail -n 1"
    ))
}

/// Polls `http` until it answers `want` (the guest's server takes a moment
/// to start); panics after 30 s with the last answer.
fn http_until(ns: &NetNs, addr: &str, port: u16, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = http(ns, addr, port);
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{addr}:{port} answered {got:?}, not {want:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The same GET as a shell line for a guest: prints `<tag>:<last line>`.
fn guest_get(tag: &str, addr: &str, port: u16) -> String {
    format!(
        "echo \"{tag}:$(printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {addr} {port} | tail -n 1)\"; "
    )
}

/// Runs `script` in a container with `extra` create fields; returns its
/// output once it has exited 0.
fn run_script(d: &Daemon, script: &str, extra: Value) -> String {
    let mut body = json!({"image": IMAGE, "cmd": ["sh", "-c", script]});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let id = d.run(body);
    let w = d.wait(&id);
    let out = d.logs(&id, "");
    assert_eq!(w["exit_code"], 0, "{w}: {out}");
    out
}

/// A web server in a container, serving `served by <hostname>`.
fn server(d: &Daemon, name: &str, extra: Value) -> String {
    let mut body = json!({
        "image": IMAGE, "name": name, "hostname": name,
        "cmd": ["sh", "-c", "mkdir -p /www && echo served by $(hostname) > /www/index.html && exec httpd -f -p 80 -h /www"],
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    d.run(body)
}

fn inspect(d: &Daemon, id: &str) -> Value {
    let r = d.call("GET", &format!("/v1/containers/{id}"), None);
    assert_eq!(r.status, 200);
    r.json()
}

/// The names of the TAPs in the daemon's namespace.
fn taps(d: &Daemon) -> Vec<String> {
    d.ns()
        .sh("ip -o link show | cut -d: -f2")
        .lines()
        .map(|l| l.trim().split('@').next().unwrap().to_string())
        .filter(|l| l.starts_with("htap"))
        .collect()
}

fn publish_rules(d: &Daemon) -> String {
    d.ns().sh("nft list chain ip husk publish")
}

fn line_of<'a>(out: &'a str, tag: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{tag}:")))
        .unwrap_or_else(|| panic!("no {tag}: line in {out:?}"))
}

#[test]
fn published_ports_outbound_nat_and_dns() {
    let Some(d) = setup_with("netpub", &["--dns", OUTSIDE]) else {
        return;
    };
    let out = Outside::new(&d);
    let bridge = d.call("GET", "/v1/networks/bridge", None).json();
    assert_eq!(bridge["bridge"], "husk0", "{bridge}");
    let info = d.call("GET", "/v1/info", None).json();
    assert_eq!(info["networks"], json!(["bridge"]), "{info}");
    let gateway = bridge["gateway"].as_str().unwrap().to_string();

    // -p 8080:80 reaches the guest's server from the host itself (its
    // loopback and its address on the network) and from outside.
    let web = server(
        &d,
        "web1",
        json!({"publish": [{"host_port": 8080, "container_port": 80}]}),
    );
    let r = inspect(&d, &web);
    let net = &r["network"];
    assert_eq!(net["network"], "bridge", "{r}");
    assert_eq!(net["ports"][0]["host_port"], 8080);
    assert_eq!(net["gateway"], gateway.as_str());
    http_until(d.ns(), "127.0.0.1", 8080, "served by web1");
    assert_eq!(http(d.ns(), &gateway, 8080), "served by web1");
    assert_eq!(http(&out.ns, HOST_UPLINK, 8080), "served by web1");
    // The host port is held: no host program can take it meanwhile.
    let bind = d
        .ns()
        .sh("timeout 2 busybox nc -l -p 8080 2>&1; echo rc=$?");
    assert!(bind.contains("rc=1"), "{bind}");
    // A free host port when none is asked for.
    let any = server(&d, "web2", json!({"publish": [{"container_port": 80}]}));
    let port = inspect(&d, &any)["network"]["ports"][0]["host_port"]
        .as_u64()
        .unwrap();
    assert_ne!(port, 0);
    http_until(d.ns(), "127.0.0.1", port as u16, "served by web2");

    // From a guest: the outside's server through NAT, a name through the
    // network's DNS (forwarded to the outside's server), and a neighbour
    // on the default network by address (Docker's default network has
    // no names).
    let web_ip = r["network"]["ip_address"].as_str().unwrap().to_string();
    let script = guest_get("out", OUTSIDE, 80)
        + &guest_get("neighbour", &web_ip, 80)
        + "for i in 1 2 3; do n=$(nslookup outside.test 2>&1 | grep -c 198.51.100.9); \
             [ $n = 1 ] && break; done; echo \"dns:$n\"; \
           echo \"resolv:$(grep nameserver /etc/resolv.conf)\"; \
           echo \"hosts:$(grep -c \"$(hostname)\" /etc/hosts)\"; \
           echo \"route:$(ip route | grep default)\"";
    let got = run_script(&d, &script, json!({}));
    assert_eq!(line_of(&got, "out"), "outside world", "{got}");
    assert_eq!(line_of(&got, "neighbour"), "served by web1", "{got}");
    assert_eq!(line_of(&got, "dns"), "1", "{got}");
    assert_eq!(line_of(&got, "resolv"), format!("nameserver {gateway}"));
    assert_eq!(line_of(&got, "hosts"), "2", "{got}");
    assert!(
        line_of(&got, "route").starts_with(&format!("default via {gateway}")),
        "{got}"
    );
    // The network's DNS serves its containers only: not the host's LAN,
    // even one that routes the network's subnet to the host.
    let subnet = bridge["subnet"].as_str().unwrap();
    out.ns.ip(&["route", "add", subnet, "via", HOST_UPLINK]);
    let lan = out.ns.sh(&format!(
        "timeout 5 busybox nslookup outside.test {gateway} 2>&1 | grep -c 198.51.100.9"
    ));
    assert_eq!(lan, "0");
    // The outside saw the host's address, not the guest's.
    let log = out.httpd_log();
    assert!(log.contains(HOST_UPLINK), "{log}");
    assert!(
        !log.contains(&web_ip[..web_ip.rfind('.').unwrap()]),
        "{log}"
    );

    // Stopped, a container leaves nothing: its TAP, its rules and its
    // host port go.
    assert_eq!(taps(&d).len(), 2);
    for id in [&web, &any] {
        let r = d.call(
            "POST",
            &format!("/v1/containers/{id}/stop"),
            Some(json!({"timeout": 1})),
        );
        assert_eq!(r.status, 204);
    }
    assert_eq!(taps(&d), Vec::<String>::new());
    assert!(!publish_rules(&d).contains("dnat"), "{}", publish_rules(&d));
    assert_eq!(http(d.ns(), "127.0.0.1", 8080), "");
    assert!(inspect(&d, &web).get("network").is_none());
}

#[test]
fn names_isolation_and_spoofing() {
    let Some(d) = setup("netiso") else {
        return;
    };
    let create = |body: Value| d.call("POST", "/v1/networks", Some(body));
    let r = create(json!({"name": "front"}));
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let front = r.json();
    let r = create(json!({"name": "back", "internal": true, "subnet": "10.201.0.0/24"}));
    assert_eq!(r.status, 201);
    assert_eq!(r.json()["gateway"], "10.201.0.1");
    // Refusals: a taken name, an overlapping or malformed subnet, a
    // reserved name.
    assert_eq!(create(json!({"name": "front"})).status, 409);
    assert_eq!(
        create(json!({"name": "x", "subnet": "10.201.0.128/25"})).status,
        409
    );
    assert_eq!(
        create(json!({"name": "x", "subnet": "10.201.0.1/24"})).status,
        400
    );
    assert_eq!(create(json!({"name": "none"})).status, 409);
    assert_eq!(create(json!({"name": "../x"})).status, 400);
    assert_eq!(
        create(json!({"name": "x", "subnet": "10.202.0.0/24", "gateway": "10.9.9.9"})).status,
        400
    );
    let list = d.call("GET", "/v1/networks", None).json();
    assert_eq!(list.as_array().unwrap().len(), 3, "{list}");

    // A service of the host's own, on every address of its namespace.
    let www = d.dir.join("hostsvc");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), "host service\n").unwrap();
    let mut host_svc = d
        .ns()
        .command("busybox")
        .args(["httpd", "-f", "-p", "9999", "-h"])
        .arg(&www)
        .spawn()
        .unwrap();

    let srv = server(
        &d,
        "srv",
        json!({"network": "front", "publish": [{"host_port": 8085, "container_port": 80}]}),
    );
    let srv_ip = inspect(&d, &srv)["network"]["ip_address"]
        .as_str()
        .unwrap()
        .to_string();
    let front_gw = front["gateway"].as_str().unwrap();
    let members = d.call("GET", "/v1/networks/front", None).json()["containers"].clone();
    assert_eq!(members[0]["name"], "srv", "{members}");

    // On the same network: by name; not the host's service; and once
    // the guest takes another address, nothing it sends gets through.
    let script = format!(
        "{}{}ip addr flush dev eth0; ip addr add {spoof}/16 dev eth0; ip route add default via {front_gw}; {}",
        guest_get("name", "srv", 80),
        guest_get("hostsvc", front_gw, 9999),
        guest_get("spoofed", &srv_ip, 80),
        spoof = spoofed_address(&srv_ip),
    );
    let got = run_script(&d, &script, json!({"network": "front"}));
    assert_eq!(line_of(&got, "name"), "served by srv", "{got}");
    assert_eq!(line_of(&got, "hostsvc"), "", "{got}");
    assert_eq!(line_of(&got, "spoofed"), "", "{got}");

    // From other networks, srv cannot be reached, nor its name resolved;
    // an internal network's DNS answers no outside name.
    let script = guest_get("cross", &srv_ip, 80)
        + &guest_get("published", "10.201.0.1", 8085)
        + &format!("echo \"name:$(nslookup srv 2>&1 | grep -c {srv_ip})\"; ")
        + "echo \"outside:$(nslookup example.com 2>&1 | grep -q REFUSED && echo refused)\"";
    let got = run_script(&d, &script, json!({"network": "back"}));
    assert_eq!(line_of(&got, "cross"), "", "{got}");
    assert_eq!(line_of(&got, "outside"), "refused", "{got}");
    assert_eq!(line_of(&got, "name"), "0", "{got}");
    // An internal network has no way out, not even to a published port.
    assert_eq!(line_of(&got, "published"), "", "{got}");
    // From the default network: not srv's address, but its published
    // port, as from anywhere.
    let bridge_gw = d.call("GET", "/v1/networks/bridge", None).json()["gateway"]
        .as_str()
        .unwrap()
        .to_string();
    let script = guest_get("cross", &srv_ip, 80) + &guest_get("published", &bridge_gw, 8085);
    let got = run_script(&d, &script, json!({}));
    assert_eq!(line_of(&got, "cross"), "", "{got}");
    assert_eq!(line_of(&got, "published"), "served by srv", "{got}");
    // Control: the same request from srv's own network gets through.
    let got = run_script(
        &d,
        &guest_get("same", &srv_ip, 80),
        json!({"network": "front"}),
    );
    assert_eq!(line_of(&got, "same"), "served by srv", "{got}");

    // A network with a container attached stays; then it goes, bridge
    // and all.
    let bridge = front["bridge"].as_str().unwrap();
    assert_eq!(d.call("DELETE", "/v1/networks/front", None).status, 409);
    assert_eq!(d.call("DELETE", "/v1/networks/bridge", None).status, 409);
    assert_eq!(
        d.call("DELETE", &format!("/v1/containers/{srv}?force=true"), None)
            .status,
        204
    );
    assert_eq!(d.call("DELETE", "/v1/networks/front", None).status, 204);
    assert_eq!(d.call("GET", "/v1/networks/front", None).status, 404);
    assert!(!d.ns().sh("ip -o link show").contains(bridge));
    assert!(!d.ns().sh("nft list table ip husk").contains(bridge));
    let _ = host_svc.kill();
    let _ = host_svc.wait();
}

/// Another address in the same /16 as `ip`.
fn spoofed_address(ip: &str) -> String {
    let (net, _) = ip.rsplit_once('.').unwrap();
    format!("{net}.77")
}

#[test]
fn nothing_outlives_its_container_or_a_restart() {
    let Some(mut d) = setup("netrestart") else {
        return;
    };
    let keep = server(
        &d,
        "keep",
        json!({"publish": [{"host_port": 8081, "container_port": 80}]}),
    );
    let gone = server(
        &d,
        "gone",
        json!({"publish": [{"host_port": 8082, "container_port": 80}]}),
    );
    http_until(d.ns(), "127.0.0.1", 8081, "served by keep");
    let r = d.call("POST", "/v1/networks", Some(json!({"name": "lasting"})));
    assert_eq!(r.status, 201);
    let lasting = r.json();
    let gone_pids: Vec<i64> = inspect(&d, &gone)["pids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_i64().unwrap())
        .collect();
    let gone_tap = inspect(&d, &gone)["network"]["tap"]
        .as_str()
        .unwrap()
        .to_string();

    // The daemon dies; while it is away, one VM dies too.
    d.crash();
    for p in gone_pids {
        // SAFETY: kill takes no pointers.
        unsafe { libc::kill(p as i32, libc::SIGKILL) };
    }
    std::thread::sleep(Duration::from_millis(500));
    d.restart();

    // The survivor is still served; the dead one's TAP, rules and port
    // are gone; the user network came back as it was.
    http_until(d.ns(), "127.0.0.1", 8081, "served by keep");
    assert_eq!(inspect(&d, &gone)["state"], "dead");
    assert!(!taps(&d).contains(&gone_tap), "{:?}", taps(&d));
    let rules = publish_rules(&d);
    assert!(rules.contains("8081") && !rules.contains("8082"), "{rules}");
    let again = d.call("GET", "/v1/networks/lasting", None).json();
    assert_eq!(
        (&again["id"], &again["subnet"]),
        (&lasting["id"], &lasting["subnet"])
    );
    // The port freed by the dead container can be published again.
    let next = server(
        &d,
        "next",
        json!({"publish": [{"host_port": 8082, "container_port": 80}]}),
    );
    http_until(d.ns(), "127.0.0.1", 8082, "served by next");

    for id in [&keep, &next] {
        assert_eq!(
            d.call("DELETE", &format!("/v1/containers/{id}?force=true"), None)
                .status,
            204
        );
    }
    assert_eq!(d.call("DELETE", "/v1/networks/lasting", None).status, 204);
    assert_eq!(taps(&d), Vec::<String>::new());
    assert!(!publish_rules(&d).contains("dnat"));
    let links = d.ns().sh("ip -o link show");
    assert!(
        !links.contains(lasting["bridge"].as_str().unwrap()),
        "{links}"
    );
}

#[test]
fn no_network_clashing_ports_and_bad_requests() {
    let Some(d) = setup("netbad") else {
        return;
    };
    // --network none: loopback only, and it works.
    let got = run_script(
        &d,
        "echo \"links:$(ls /sys/class/net | tr '\\n' ' ')\"; echo \"lo:$(ping -c 1 -W 2 127.0.0.1 >/dev/null && echo up)\"",
        json!({"network": "none"}),
    );
    assert_eq!(line_of(&got, "links"), "lo ", "{got}");
    assert_eq!(line_of(&got, "lo"), "up", "{got}");

    let create = |body: Value| d.call("POST", "/v1/containers", Some(body));
    let r = create(json!({"image": IMAGE, "network": "nosuch"}));
    assert_eq!(r.status, 404, "{}", String::from_utf8_lossy(&r.body));
    for bad in [
        json!({"image": IMAGE, "network": "none", "publish": [{"container_port": 80}]}),
        json!({"image": IMAGE, "publish": [{"container_port": 0}]}),
        json!({"image": IMAGE, "publish": [{"container_port": 80, "protocol": "sctp"}]}),
        json!({"image": IMAGE, "publish": [{"host_port": 9000, "container_port": 80}, {"host_port": 9000, "container_port": 81}]}),
        json!({"image": IMAGE, "network": "a b"}),
    ] {
        let r = create(bad.clone());
        assert_eq!(r.status, 400, "{bad}: {}", String::from_utf8_lossy(&r.body));
    }

    // Two containers cannot publish the same host port: the second start
    // is refused and leaves it created, to start once the port is free.
    let first = server(
        &d,
        "first",
        json!({"publish": [{"host_port": 8090, "container_port": 80}]}),
    );
    let r = create(json!({"image": IMAGE, "name": "second", "cmd": ["true"],
        "publish": [{"host_port": 8090, "container_port": 80}]}));
    assert_eq!(r.status, 201);
    let r = d.call("POST", "/v1/containers/second/start", None);
    assert_eq!(r.status, 409, "{}", String::from_utf8_lossy(&r.body));
    assert!(String::from_utf8_lossy(&r.body).contains("8090"));
    assert_eq!(inspect(&d, "second")["state"], "created");
    assert_eq!(
        d.call(
            "POST",
            &format!("/v1/containers/{first}/stop"),
            Some(json!({"timeout": 1}))
        )
        .status,
        204
    );
    assert_eq!(
        d.call("POST", "/v1/containers/second/start", None).status,
        204
    );
    assert_eq!(d.wait("second")["exit_code"], 0);
}
