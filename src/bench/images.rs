//! Image figures: pull throughput from a registry on loopback, the ext4
//! build, and the cache hit that follows.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use oci_client::client::{Config, ImageLayer};
use oci_client::secrets::RegistryAuth;
use serde_json::json;

use crate::image::registry::{self, PullOptions};
use crate::image::rootfs::{self, RootfsOptions};
use crate::image::Store;

const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
const LAYERS: usize = 4;
const FILES_PER_LAYER: usize = 25;
const FILE_SIZE: usize = 1 << 20;

struct RegistryProcess(Child);

impl Drop for RegistryProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_registry(dir: &Path) -> Result<(RegistryProcess, u16), String> {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let config = dir.join("registry.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.join("registry").display()
        ),
    )
    .map_err(|e| e.to_string())?;
    let child = Command::new(REGISTRY_BIN)
        .arg("serve")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {REGISTRY_BIN}: {e}"))?;
    let reg = RegistryProcess(child);
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if start.elapsed() > Duration::from_secs(10) {
            return Err("the registry did not start".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok((reg, port))
}

/// Incompressible file contents from a xorshift generator.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Builds and pushes a multi-layer image of about 100 MiB; returns the
/// uncompressed size.
fn push_image(host: &str) -> Result<u64, String> {
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    let mut raw_total = 0u64;
    for l in 0..LAYERS {
        let mut b = tar::Builder::new(Vec::new());
        for f in 0..FILES_PER_LAYER {
            let data = noise((l * 1000 + f) as u64 + 1, FILE_SIZE);
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, format!("layer{l}/file{f}"), &data[..])
                .map_err(|e| e.to_string())?;
        }
        let tar = b.into_inner().map_err(|e| e.to_string())?;
        raw_total += tar.len() as u64;
        diff_ids.push(crate::image::Digest::of(&tar).to_string());
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).map_err(|e| e.to_string())?;
        let gz = gz.finish().map_err(|e| e.to_string())?;
        layers.push(ImageLayer::new(
            gz,
            "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            None,
        ));
    }
    let config = json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let client = registry::client(&PullOptions {
        insecure_registries: vec![host.to_string()],
        ..Default::default()
    });
    let reference: oci_client::Reference = format!("{host}/bench/image:1")
        .parse()
        .map_err(|e: oci_client::ParseError| e.to_string())?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?
        .block_on(client.push(
            &reference,
            &layers,
            Config::oci_v1(config.to_string().into_bytes(), None),
            &RegistryAuth::Anonymous,
            None,
        ))
        .map_err(|e| e.to_string())?;
    Ok(raw_total)
}

fn mib_per_s(bytes: u64, d: Duration) -> f64 {
    ((bytes as f64 / (1 << 20) as f64) / d.as_secs_f64() * 10.0).round() / 10.0
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// Runs the image figures in `dir`.
pub fn measure(dir: &Path) -> Result<serde_json::Value, String> {
    if !Path::new(REGISTRY_BIN).exists() {
        return Ok(json!({"skipped": format!("{REGISTRY_BIN} is not installed")}));
    }
    let (_registry, port) = start_registry(dir)?;
    let host = format!("127.0.0.1:{port}");
    let raw = push_image(&host)?;

    let store = Store::open(&dir.join("state")).map_err(|e| e.to_string())?;
    let opts = PullOptions {
        insecure_registries: vec![host.clone()],
        ..Default::default()
    };
    let start = Instant::now();
    let image = registry::pull(&store, &format!("{host}/bench/image:1"), &opts, &|_| {})
        .map_err(|e| e.to_string())?;
    let pull = start.elapsed();
    let compressed = image.size();

    let start = Instant::now();
    let cached =
        rootfs::build(&store, &image, RootfsOptions::default()).map_err(|e| e.to_string())?;
    let build = start.elapsed();
    let start = Instant::now();
    rootfs::build(&store, &image, RootfsOptions::default()).map_err(|e| e.to_string())?;
    let hit = start.elapsed();
    let start = Instant::now();
    rootfs::copy_sparse(&cached, &dir.join("copy.ext4")).map_err(|e| e.to_string())?;
    let copy = start.elapsed();
    let ext4_size = std::fs::metadata(&cached).map(|m| m.len()).unwrap_or(0);

    Ok(json!({
        "image_layers": LAYERS,
        "image_compressed_mib": (compressed as f64 / (1 << 20) as f64 * 10.0).round() / 10.0,
        "image_uncompressed_mib": (raw as f64 / (1 << 20) as f64 * 10.0).round() / 10.0,
        "pull_ms": ms(pull),
        "pull_mib_per_s": mib_per_s(compressed, pull),
        "rootfs_build_ms": ms(build),
        "rootfs_build_uncompressed_mib_per_s": mib_per_s(raw, build),
        "rootfs_cache_hit_ms": ms(hit),
        "rootfs_copy_ms": ms(copy),
        "rootfs_ext4_mib": ext4_size >> 20,
    }))
}
