//! Images made on this machine, with no registry: a one-layer image of the
//! host's static busybox and its applets, written as the `docker save`
//! archive that `husk image import` and `husk load` read. `husk bench`
//! and the tests build theirs with it.

use std::path::Path;
use std::process::Command;

use serde_json::json;

use super::Digest;

/// Besides busybox: the layer's directories and its `/etc/passwd` and
/// `/etc/group`.
pub struct BusyboxLayer<'a> {
    pub dirs: &'a [&'a str],
    pub passwd: &'a str,
    pub group: &'a str,
}

/// A tar layer: `bin/busybox` (copied from `busybox`), a symlink per
/// applet it lists, and what `spec` adds.
pub fn busybox_layer(busybox: &Path, spec: &BusyboxLayer) -> Result<Vec<u8>, String> {
    let binary = std::fs::read(busybox).map_err(|e| format!("{}: {e}", busybox.display()))?;
    let list = Command::new(busybox)
        .arg("--list")
        .output()
        .map_err(|e| format!("{} --list: {e}", busybox.display()))?;
    let err = |e: std::io::Error| e.to_string();
    let mut layer = tar::Builder::new(Vec::new());
    let mut add = |path: &str, data: &[u8], mode: u32, kind: tar::EntryType, link: Option<&str>| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        h.set_mtime(1_700_000_000);
        if let Some(l) = link {
            h.set_link_name(l).map_err(err)?;
        }
        layer.append_data(&mut h, path, data).map_err(err)
    };
    for d in ["bin/", "etc/"].iter().chain(spec.dirs) {
        add(d, b"", 0o755, tar::EntryType::Directory, None)?;
    }
    add("bin/busybox", &binary, 0o755, tar::EntryType::Regular, None)?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim();
        if !applet.is_empty() && applet != "busybox" && !applet.contains('/') {
            let path = format!("bin/{applet}");
            add(&path, b"", 0o777, tar::EntryType::Symlink, Some("busybox"))?;
        }
    }
    add(
        "etc/passwd",
        spec.passwd.as_bytes(),
        0o644,
        tar::EntryType::Regular,
        None,
    )?;
    add(
        "etc/group",
        spec.group.as_bytes(),
        0o644,
        tar::EntryType::Regular,
        None,
    )?;
    layer.into_inner().map_err(err)
}

/// A `docker save` archive of a one-layer amd64 image named `tag`, whose
/// image config's `config` section (Cmd, Env, WorkingDir, ...) is
/// `config`.
pub fn docker_save(
    layer: Vec<u8>,
    config: serde_json::Value,
    tag: &str,
) -> Result<Vec<u8>, String> {
    let err = |e: std::io::Error| e.to_string();
    let diff_id = Digest::of(&layer).to_string();
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    })
    .to_string();
    let config_name = format!("{}.json", Digest::of(config.as_bytes()).hex());
    let manifest = json!([{"Config": config_name, "RepoTags": [tag], "Layers": ["l/layer.tar"]}]);
    let mut out = tar::Builder::new(Vec::new());
    for (name, data) in [
        ("l/layer.tar", layer),
        (config_name.as_str(), config.into_bytes()),
        ("manifest.json", manifest.to_string().into_bytes()),
    ] {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        out.append_data(&mut h, name, &data[..]).map_err(err)?;
    }
    out.into_inner().map_err(err)
}
