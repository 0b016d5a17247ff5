//! A busybox image built on this machine from busybox-static, imported
//! into a state directory by the real `husk image import`, and the agent
//! stripped for an initramfs: what the guest-side tests boot.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use husk::agent::protocol::ImageConfig;
use serde_json::json;

/// The image's reference once imported.
pub const IMAGE: &str = "tcg/busybox:1";

/// The image's config, which the test passes on as the daemon would.
pub fn image_config() -> ImageConfig {
    ImageConfig {
        entrypoint: None,
        cmd: Some(vec!["sh".into()]),
        env: vec![
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            "FROM_IMAGE=busybox".into(),
        ],
        working_dir: Some("/home/app".into()),
        user: None,
    }
}

/// A `docker save` archive of a one-layer busybox image.
pub fn busybox_archive(dir: &Path) -> PathBuf {
    let mut layer = tar::Builder::new(Vec::new());
    let mut add = |path: &str, data: &[u8], mode: u32, kind: tar::EntryType, link: Option<&str>| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        h.set_mtime(1_700_000_000);
        if let Some(l) = link {
            h.set_link_name(l).unwrap();
        }
        layer.append_data(&mut h, path, data).unwrap();
    };
    let dir_entry = tar::EntryType::Directory;
    for d in ["bin/", "etc/", "home/", "home/app/", "tmp/"] {
        add(d, b"", 0o755, dir_entry, None);
    }
    add(
        "bin/busybox",
        &std::fs::read("/bin/busybox").unwrap(),
        0o755,
        tar::EntryType::Regular,
        None,
    );
    let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            add(
                &format!("bin/{applet}"),
                b"",
                0o777,
                tar::EntryType::Symlink,
                Some("busybox"),
            );
        }
    }
    add(
        "etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
        0o644,
        tar::EntryType::Regular,
        None,
    );
    add(
        "etc/group",
        b"root:x:0:\napp:x:1000:\n",
        0o644,
        tar::EntryType::Regular,
        None,
    );
    let layer = layer.into_inner().unwrap();
    let diff_id = husk::image::Digest::of(&layer).to_string();
    let c = image_config();
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": c.cmd, "Env": c.env, "WorkingDir": c.working_dir},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    })
    .to_string();
    let config_name = format!(
        "{}.json",
        &husk::image::Digest::of(config.as_bytes()).to_string()[7..]
    );
    let manifest = json!([{"Config": config_name, "RepoTags": [IMAGE], "Layers": ["l/layer.tar"]}]);
    let mut out = tar::Builder::new(Vec::new());
    for (name, data) in [
        ("l/layer.tar", layer),
        (config_name.as_str(), config.into_bytes()),
        ("manifest.json", manifest.to_string().into_bytes()),
    ] {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        out.append_data(&mut h, name, &data[..]).unwrap();
    }
    let path = dir.join("busybox.tar");
    std::fs::write(&path, out.into_inner().unwrap()).unwrap();
    path
}

pub fn husk(state: &Path, args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_husk"))
        .args(args)
        .arg("--state-dir")
        .arg(state)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "husk {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The root filesystem, through the image store as the daemon builds it.
pub fn rootfs(dir: &Path) -> PathBuf {
    let state = dir.join("state");
    let archive = busybox_archive(dir);
    husk(&state, &["image", "import", archive.to_str().unwrap()]);
    let image = dir.join("rootfs.ext4");
    husk(
        &state,
        &[
            "image",
            "rootfs",
            "tcg/busybox:1",
            "-o",
            image.to_str().unwrap(),
        ],
    );
    image
}

/// The agent, stripped (a debug build carries 100 MB of debug info the
/// guest would unpack into RAM), in an initramfs written by husk.
pub fn initramfs(dir: &Path) -> PathBuf {
    let agent = stripped_agent(dir);
    let out = dir.join("initramfs.cpio.gz");
    let bytes = std::fs::read(&agent).unwrap();
    let file = std::fs::File::create(&out).unwrap();
    husk::agent::initramfs::write_initramfs(&bytes, file).unwrap();
    out
}

/// Imports the busybox image into `state` (without building a rootfs).
pub fn import(dir: &Path, state: &Path) {
    let archive = busybox_archive(dir);
    husk(state, &["image", "import", archive.to_str().unwrap()]);
}

/// The agent binary, stripped (a debug build carries 100 MB of debug
/// info the guest would unpack into RAM), at `dir/husk-agent`. $HUSK_AGENT
/// picks another build (a release one, for its figures).
pub fn stripped_agent(dir: &Path) -> PathBuf {
    let agent = dir.join("husk-agent");
    let built = std::env::var_os("HUSK_AGENT")
        .map(PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_husk-agent").into());
    let status = Command::new("objcopy")
        .arg("--strip-all")
        .arg(&built)
        .arg(&agent)
        .status()
        .unwrap();
    assert!(status.success(), "objcopy --strip-all");
    agent
}
