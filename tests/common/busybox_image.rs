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
    use husk::image::local::{busybox_layer, docker_save, BusyboxLayer};
    let layer = busybox_layer(
        Path::new("/bin/busybox"),
        &BusyboxLayer {
            dirs: &["home/", "home/app/", "tmp/"],
            passwd: "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
            group: "root:x:0:\napp:x:1000:\n",
        },
    )
    .unwrap();
    let c = image_config();
    let config = json!({"Cmd": c.cmd, "Env": c.env, "WorkingDir": c.working_dir});
    let path = dir.join("busybox.tar");
    std::fs::write(&path, docker_save(layer, config, IMAGE).unwrap()).unwrap();
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
