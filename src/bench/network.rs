//! Network figures (`husk bench --suite network`), in a network namespace
//! of the bench's own, so the host's network is not touched:
//!
//! - the network manager in process: the default network's first set-up
//!   (bridge, DNS, rules), a container's attachment with one published
//!   port (address, TAP on the bridge, rules: what stands between a
//!   container's start and its network being ready) and its detachment,
//!   and a user network's create and remove;
//! - through a real guest on the `tcg` backend (the one that boots Linux
//!   here), over a published port on 127.0.0.1, so through the DNAT, the
//!   bridge and the TAP: TCP throughput host to guest and guest to host,
//!   and HTTP connections per second.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::containers::{busybox_archive, guest_kernel, husk_cli, stats, stripped_agent, IMAGE};
use super::daemon::{kill_strays, Ctx, Daemon};
use super::ms;
use crate::client::types::{CreateRequest, PortBinding};
use crate::client::DaemonClient;
use crate::daemon::backend::BackendKind;
use crate::daemon::network::{AttachRequest, NetOptions, NetworkManager};

/// Bytes each throughput run moves.
const BULK: usize = 32 << 20;
/// How long connections per second are counted.
const CONN_WINDOW: Duration = Duration::from_secs(3);

pub fn measure(runs: usize, kernel: Option<&Path>) -> Result<Value, String> {
    // SAFETY: geteuid has no arguments.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(json!({"skipped": "networks need root"}));
    }
    let kernel = kernel.map(Path::to_path_buf);
    // Namespaces are per thread: this one, and all it starts, live in a
    // network namespace of their own.
    std::thread::spawn(move || {
        // SAFETY: unshare takes no pointers; it affects this thread.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(format!(
                "cannot make a network namespace: {}",
                std::io::Error::last_os_error()
            ));
        }
        let _ = Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status();
        let dir = std::env::temp_dir().join(format!("husk-bench-net-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let manager = manager_figures(&dir.join("manager"), runs.max(1));
        let guest = guest_figures(&dir.join("guest"), runs.max(1), kernel.as_deref())
            .unwrap_or_else(|e| json!({"error": e}));
        let _ = std::fs::remove_dir_all(&dir);
        Ok(json!({"manager": manager?, "tcg_guest": guest}))
    })
    .join()
    .map_err(|_| "the network bench's thread panicked".to_string())?
}

fn manager_figures(state: &Path, runs: usize) -> Result<Value, String> {
    std::fs::create_dir_all(state).map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let net = NetworkManager::open(state, NetOptions::default()).map_err(|e| e.to_string())?;
        if let Some(why) = net.unavailable() {
            return Ok(json!({"skipped": why}));
        }
        let t = Instant::now();
        net.start(Vec::new()).await.map_err(|e| e.to_string())?;
        let first_setup = ms(t.elapsed());
        let (mut attach, mut detach, mut create, mut remove) = (vec![], vec![], vec![], vec![]);
        let port: PortBinding = "127.0.0.1::80".parse().map_err(|e: String| e)?;
        for n in 0..runs {
            let id = format!("{n:064x}");
            let t = Instant::now();
            net.attach(AttachRequest {
                container_id: &id,
                container_name: "bench",
                network: None,
                ports: std::slice::from_ref(&port),
            })
            .await
            .map_err(|e| e.to_string())?;
            attach.push(ms(t.elapsed()));
            let t = Instant::now();
            net.detach(&id).await;
            detach.push(ms(t.elapsed()));
            let t = Instant::now();
            let req = crate::client::types::NetworkCreateRequest {
                name: format!("bench{n}"),
                ..Default::default()
            };
            net.create(req).await.map_err(|e| e.to_string())?;
            create.push(ms(t.elapsed()));
            let t = Instant::now();
            net.remove(&format!("bench{n}"))
                .await
                .map_err(|e| e.to_string())?;
            remove.push(ms(t.elapsed()));
        }
        Ok::<_, String>(json!({
            "default_network_first_setup_ms": first_setup,
            "container_attach_ms": stats(attach),
            "container_detach_ms": stats(detach),
            "network_create_ms": stats(create),
            "network_remove_ms": stats(remove),
        }))
    })
}

fn guest_figures(dir: &Path, runs: usize, kernel: Option<&Path>) -> Result<Value, String> {
    if let Err(why) = crate::daemon::backend::available(crate::daemon::backend::BackendKind::Tcg) {
        return Ok(json!({"skipped": why}));
    }
    let kernel = match guest_kernel(kernel) {
        Ok(k) => k,
        Err(why) => return Ok(json!({"skipped": why})),
    };
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let husk = std::env::current_exe().map_err(|e| e.to_string())?;
    let archive = busybox_archive(dir)?;
    husk_cli(
        &husk,
        &dir.join("state"),
        &["image", "import", &archive.to_string_lossy()],
    )?;
    let (_, agent, _) = stripped_agent(dir)?;
    let ctx = Ctx::new(kernel, agent, runs)?;
    let (daemon, _, _) = Daemon::start(&ctx, dir, BackendKind::Tcg)?;
    let result = guest_figures_with(&ctx, &daemon.client);
    drop(daemon);
    kill_strays(dir);
    result
}

fn guest_figures_with(ctx: &Ctx, client: &DaemonClient) -> Result<Value, String> {
    let (rt, runs) = (&ctx.rt, ctx.runs);
    // A web server with a big and a small file, and a sink that takes
    // connection after connection.
    let script = format!(
        "mkdir -p /tmp/www && dd if=/dev/zero of=/tmp/www/big bs=1M count={} 2>/dev/null && echo ok > /tmp/www/small && \
         (while true; do nc -l -p 5001 > /dev/null; done &) && exec httpd -f -p 80 -h /tmp/www",
        BULK >> 20
    );
    let req = CreateRequest {
        image: IMAGE.into(),
        cmd: Some(vec!["sh".into(), "-c".into(), script]),
        publish: vec![
            "127.0.0.1::80".parse().map_err(|e: String| e)?,
            "127.0.0.1::5001".parse().map_err(|e: String| e)?,
        ],
        ..Default::default()
    };
    let id = rt
        .block_on(async {
            let c = client.create(&req).await?;
            client.start(&c.id).await?;
            Ok::<_, crate::client::ClientError>(c.id)
        })
        .map_err(|e| e.to_string())?;
    let rec = rt
        .block_on(client.inspect(&id))
        .map_err(|e| e.to_string())?;
    let ports = rec.network.map(|n| n.ports).unwrap_or_default();
    let (web, sink) = match ports.as_slice() {
        [w, s] => (w.host_port, s.host_port),
        _ => return Err("the container published no ports".into()),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(web, "/small").map(|b| b.len()).unwrap_or(0) < 3 {
        ctx.check()?;
        if Instant::now() > deadline {
            return Err("the guest's server did not answer within 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (mut up, mut down, mut conns) = (vec![], vec![], vec![]);
    for _ in 0..runs {
        // Ctrl-C stops the suite between measurements; the daemon's drop
        // then removes the container.
        ctx.check()?;
        up.push(send(sink, BULK)?);
        let t = Instant::now();
        let body = get(web, "/big")?;
        if body.len() < BULK {
            return Err(format!("GET /big gave {} bytes", body.len()));
        }
        down.push(mib_per_s(BULK, t.elapsed()));
        let t = Instant::now();
        let mut n = 0u32;
        while t.elapsed() < CONN_WINDOW {
            get(web, "/small")?;
            n += 1;
        }
        conns.push(f64::from(n) / t.elapsed().as_secs_f64());
    }
    let _ = rt.block_on(client.remove(&id, true));
    Ok(json!({
        "path": "127.0.0.1:<published port> -> DNAT -> bridge -> TAP -> QEMU virtio-net (TCG)",
        "bytes_per_run": BULK,
        "host_to_guest_mib_per_s": stats(up),
        "guest_to_host_mib_per_s": stats(down),
        "http_connections_per_s": stats(conns),
    }))
}

fn mib_per_s(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

/// Writes `bytes` to the sink and waits for it to close; MiB/s.
fn send(port: u16, bytes: usize) -> Result<f64, String> {
    let t = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    let chunk = vec![0u8; 64 << 10];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len());
        s.write_all(&chunk[..n]).map_err(|e| e.to_string())?;
        left -= n;
    }
    s.shutdown(std::net::Shutdown::Write)
        .map_err(|e| e.to_string())?;
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    Ok(mib_per_s(bytes, t.elapsed()))
}

/// An HTTP/1.0 GET on 127.0.0.1; the body.
fn get(port: u16, path: &str) -> Result<Vec<u8>, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.0\r\n\r\n").map_err(|e| e.to_string())?;
    let mut all = Vec::new();
    s.read_to_end(&mut all).map_err(|e| e.to_string())?;
    let body = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(Vec::new(), |i| all[i + 4..].to_vec());
    Ok(body)
}
