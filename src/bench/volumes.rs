//! Storage figures (`husk bench --suite volumes`), through a real guest
//! on the `tcg` backend (the one that boots Linux here), for the three
//! places a container keeps files:
//!
//! - `/vol`, a named volume: an ext4 disk image on a second virtio-blk
//!   drive;
//! - `/share`, a bind mount: a host directory through virtio-fs and
//!   virtiofsd;
//! - `/bench`, in the container's root filesystem (the first virtio-blk
//!   drive).
//!
//! In each: sequential write ([`BULK_MIB`] MiB with `dd ... conv=fsync`),
//! sequential read of the same file once the guest dropped its page
//! cache (the host's stays warm), and small-file creates
//! ([`SMALL_FILES`] files of a few bytes, then `sync`). Each run is a
//! new container with the same volume and share. The guest times itself with
//! /proc/uptime (10 ms ticks; each figure takes well over a second) and
//! writes what it measured into the share, where the bench reads it.

use std::path::Path;

use serde_json::{json, Value};

use super::containers::{busybox_archive, guest_kernel, husk_cli, stats, stripped_agent, IMAGE};
use super::daemon::{kill_strays, Ctx, Daemon};
use crate::client::types::{CreateRequest, LogsOptions, VolumeCreateRequest};
use crate::client::volumes::{Mount, MountKind};
use crate::daemon::backend::BackendKind;

/// Each sequential figure's file size.
const BULK_MIB: u64 = 128;
/// Files in each small-file figure.
const SMALL_FILES: u64 = 1000;
/// Where the guest leaves its figures, in the share.
const FIGURES: &str = ".husk-bench-figures";
/// The places measured, as the guest sees them.
const PLACES: [(&str, &str); 3] = [
    ("volume", "/vol"),
    ("virtio_fs", "/share"),
    ("rootfs", "/bench"),
];

pub fn measure(runs: usize, kernel: Option<&Path>) -> Result<Value, String> {
    if let Err(why) = crate::daemon::backend::available(BackendKind::Tcg) {
        return Ok(json!({"skipped": why}));
    }
    if let Err(e) = crate::daemon::backend::virtiofs::virtiofsd() {
        return Ok(json!({"skipped": e.to_string()}));
    }
    let kernel = match guest_kernel(kernel) {
        Ok(k) => k,
        Err(why) => return Ok(json!({"skipped": why})),
    };
    let dir = std::env::temp_dir().join(format!("husk-bench-vol-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let result = (|| {
        let archive = busybox_archive(&dir)?;
        let root = dir.join("tcg");
        husk_cli(
            &std::env::current_exe().map_err(|e| e.to_string())?,
            &root.join("state"),
            &["image", "import", &archive.to_string_lossy()],
        )?;
        let (_, agent, _) = stripped_agent(&dir)?;
        let ctx = Ctx::new(kernel, agent, runs.max(1))?;
        let (daemon, _, _) = Daemon::start(&ctx, &root, BackendKind::Tcg)?;
        figures(&ctx, &daemon, &dir.join("share"))
    })();
    kill_strays(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// The guest's script. Each figure is a line `PLACE OP CENTISECONDS`.
/// The reads come after the guest dropped its page cache, so they reach
/// the device (the host's cache is warm, as it is for data written a
/// moment ago).
fn script() -> String {
    let places: Vec<&str> = PLACES.iter().map(|p| p.1).collect();
    let places = places.join(" ");
    format!(
        r#"set -e
now() {{ read u _ < /proc/uptime; T=$(( ${{u%.*}} * 100 + 1${{u#*.}} - 100 )); }}
out=/share/{FIGURES}
mkdir -p /bench
for d in {places}; do
  now; t0=$T; dd if=/dev/zero of=$d/big bs=1M count={BULK_MIB} conv=fsync 2>/dev/null; now
  echo "$d write $((T - t0))" >> $out
  mkdir $d/small; now; t0=$T; i=0
  while [ $i -lt {SMALL_FILES} ]; do echo $i > $d/small/f$i; i=$((i + 1)); done
  sync; now
  echo "$d create $((T - t0))" >> $out
done
sync; echo 3 > /proc/sys/vm/drop_caches
for d in {places}; do
  now; t0=$T; dd if=$d/big of=/dev/null bs=1M 2>/dev/null; now
  echo "$d read $((T - t0))" >> $out
done
for d in {places}; do rm -rf $d/big $d/small; done
sync
"#
    )
}

fn figures(ctx: &Ctx, d: &Daemon, share: &Path) -> Result<Value, String> {
    std::fs::create_dir_all(share).map_err(|e| e.to_string())?;
    let volume = VolumeCreateRequest {
        name: Some("husk-bench".into()),
        size: Some(1 << 30),
        ..Default::default()
    };
    ctx.block("volume create", async {
        d.client
            .create_volume(&volume)
            .await
            .map_err(|e| e.to_string())
    })?;
    let mount = |kind, source: &str, target: &str| Mount::new(kind, Some(source.into()), target);
    let req = CreateRequest {
        image: IMAGE.into(),
        cmd: Some(vec!["sh".into(), "-c".into(), script()]),
        network: Some("none".into()),
        mounts: vec![
            mount(MountKind::Volume, "husk-bench", "/vol"),
            mount(MountKind::Bind, &share.to_string_lossy(), "/share"),
        ],
        ..Default::default()
    };
    let out = share.join(FIGURES);
    for run in 0..ctx.runs {
        ctx.check()?;
        eprintln!("husk bench: volumes (tcg): run {} of {}", run + 1, ctx.runs);
        let id = ctx.block("create", async {
            d.client
                .create(&req)
                .await
                .map(|c| c.id)
                .map_err(|e| e.to_string())
        })?;
        let code = ctx.block("run", async {
            d.client.start(&id).await.map_err(|e| e.to_string())?;
            let w = d.client.wait(&id).await.map_err(|e| e.to_string())?;
            Ok(w.exit_code)
        })?;
        if code != 0 {
            let output = ctx.block("logs", output(d, &id)).unwrap_or_default();
            return Err(format!(
                "the guest's script exited {code}; its output:\n{output}\nconsole:\n{}",
                d.console(&id)
            ));
        }
        ctx.block("remove", async {
            d.client.remove(&id, true).await.map_err(|e| e.to_string())
        })?;
    }
    let lines = std::fs::read_to_string(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    Ok(json!({
        "backend": "tcg",
        "paths": {
            "volume": "ext4 on a sparse disk image -> QEMU virtio-blk (virtio-mmio)",
            "virtio_fs": "host directory -> virtiofsd (--cache=auto) -> QEMU vhost-user-fs-device",
            "rootfs": "the container's ext4 root image -> QEMU virtio-blk (virtio-mmio)",
        },
        "bulk_mib": BULK_MIB,
        "small_files": SMALL_FILES,
        "places": parse(&lines)?,
    }))
}

/// Everything container `id` wrote, stdout and stderr.
async fn output(d: &Daemon<'_>, id: &str) -> Result<String, String> {
    let opts = LogsOptions {
        follow: false,
        tail: Some(60),
        since: None,
        stdout: true,
        stderr: true,
    };
    let mut logs = d.client.logs(id, &opts).await.map_err(|e| e.to_string())?;
    let mut all = String::new();
    while let Some(l) = logs.next().await.map_err(|e| e.to_string())? {
        all.push_str(&l.data);
    }
    Ok(all)
}

/// The guest's lines, as MiB/s and files/s per place.
fn parse(lines: &str) -> Result<Value, String> {
    let mut out = serde_json::Map::new();
    for (name, path) in PLACES {
        let take = |op: &str| -> Vec<f64> {
            lines
                .lines()
                .filter_map(|l| {
                    let mut w = l.split_whitespace();
                    let (p, o, cs) = (w.next()?, w.next()?, w.next()?.parse::<u64>().ok()?);
                    (p == path && o == op).then_some(cs.max(1) as f64 / 100.0)
                })
                .collect()
        };
        let rate =
            |secs: Vec<f64>, per: f64| -> Vec<f64> { secs.iter().map(|s| per / s).collect() };
        let (w, r, c) = (take("write"), take("read"), take("create"));
        if w.is_empty() || r.is_empty() || c.is_empty() {
            return Err(format!("the guest measured nothing in {path}: {lines:?}"));
        }
        out.insert(
            name.into(),
            json!({
                "write_mib_per_s": stats(rate(w, BULK_MIB as f64)),
                "read_mib_per_s": stats(rate(r, BULK_MIB as f64)),
                "creates_per_s": stats(rate(c, SMALL_FILES as f64)),
            }),
        );
    }
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guests_centiseconds_become_rates() {
        let lines = "/vol write 200\n/vol create 50\n/share write 200\n/share create 400\n\
                     /bench write 50\n/bench create 25\n/vol read 50\n/share read 100\n/bench read 10\n";
        let v = parse(lines).unwrap();
        assert_eq!(v["volume"]["write_mib_per_s"]["median"], 64.0);
        assert_eq!(v["volume"]["read_mib_per_s"]["median"], 256.0);
        assert_eq!(v["virtio_fs"]["creates_per_s"]["median"], 250.0);
        assert_eq!(v["rootfs"]["read_mib_per_s"]["median"], 1280.0);
        assert!(parse("/vol write 200\n").is_err());
    }

    #[test]
    fn the_script_measures_every_place() {
        let s = script();
        for (_, p) in PLACES {
            assert!(s.contains(p), "{p}");
        }
        assert!(s.contains("conv=fsync"));
    }
}
