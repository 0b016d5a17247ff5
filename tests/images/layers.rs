//! Test image content: tar layers built here, from busybox-static.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::json;
use tar::{EntryType, Header};

pub const BUSYBOX: &str = "/bin/busybox";

/// One tar entry of a test layer.
pub enum E<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8]),
    Owned(&'a str, &'a [u8], u64, u64, u32),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    CharDev(&'a str, u32, u32),
    Xattr(&'a str, &'a [u8], &'a str, &'a [u8]),
    /// A raw name, written without the builder's path checks.
    Raw(&'a str, &'a [u8]),
}

pub fn tar_layer(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = Header::new_ustar();
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mode(0o644);
        match e {
            E::Dir(p) => {
                h.set_entry_type(EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, p, &[][..]).unwrap();
            }
            E::File(p, data) => {
                h.set_size(data.len() as u64);
                h.set_mode(if p.starts_with("bin/") { 0o755 } else { 0o644 });
                b.append_data(&mut h, p, *data).unwrap();
            }
            E::Owned(p, data, uid, gid, mode) => {
                h.set_size(data.len() as u64);
                h.set_uid(*uid);
                h.set_gid(*gid);
                h.set_mode(*mode);
                b.append_data(&mut h, p, *data).unwrap();
            }
            E::Symlink(p, target) => {
                h.set_entry_type(EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, p, target).unwrap();
            }
            E::Hardlink(p, target) => {
                h.set_entry_type(EntryType::Link);
                h.set_size(0);
                b.append_link(&mut h, p, target).unwrap();
            }
            E::CharDev(p, major, minor) => {
                h.set_entry_type(EntryType::Char);
                h.set_size(0);
                h.set_mode(0o666);
                h.set_device_major(*major).unwrap();
                h.set_device_minor(*minor).unwrap();
                b.append_data(&mut h, p, &[][..]).unwrap();
            }
            E::Xattr(p, data, name, value) => {
                let key = format!("SCHILY.xattr.{name}");
                b.append_pax_extensions([(key.as_str(), *value)]).unwrap();
                h.set_size(data.len() as u64);
                b.append_data(&mut h, p, *data).unwrap();
            }
            E::Raw(name, data) => {
                h.set_size(data.len() as u64);
                let n = name.as_bytes();
                h.as_old_mut().name[..n.len()].copy_from_slice(n);
                h.set_cksum();
                b.append(&h, *data).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

pub fn busybox() -> Vec<u8> {
    std::fs::read(BUSYBOX).unwrap()
}

/// The base layer: busybox, links, a device node, owners, an xattr, and
/// things the next layer deletes.
pub fn base_layer() -> Vec<u8> {
    let bb = busybox();
    tar_layer(&[
        E::Dir("bin/"),
        E::File("bin/busybox", &bb),
        E::Symlink("bin/sh", "busybox"),
        E::Hardlink("bin/ls", "bin/busybox"),
        E::Dir("etc/"),
        E::File("etc/hosts", b"127.0.0.1 localhost\n"),
        E::File("etc/removed", b"gone in layer 2\n"),
        E::Owned("etc/owned", b"x", 1234, 5678, 0o4750),
        E::Xattr("etc/tagged", b"t", "user.husk", b"kept"),
        E::Dir("dev/"),
        E::CharDev("dev/null", 1, 3),
        E::Dir("opaque/"),
        E::File("opaque/lower", b"hidden by layer 2\n"),
    ])
}

pub fn top_layer() -> Vec<u8> {
    tar_layer(&[
        E::Dir("etc/"),
        E::File("etc/.wh.removed", b""),
        E::Dir("opaque/"),
        E::File("opaque/.wh..wh..opq", b""),
        E::File("opaque/upper", b"from layer 2\n"),
        E::File("etc/motd", b"hello from husk\n"),
    ])
}

pub fn config_json(diff_ids: &[String], arch: &str) -> Vec<u8> {
    json!({
        "architecture": arch,
        "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    })
    .to_string()
    .into_bytes()
}

pub fn sha(data: &[u8]) -> String {
    husk::image::Digest::of(data).to_string()
}

/// A `docker save` archive of base_layer + top_layer, as a tarball.
pub fn docker_save(dir: &Path, corrupt_diff_id: bool) -> PathBuf {
    let layers = [base_layer(), top_layer()];
    let mut diff_ids: Vec<String> = layers.iter().map(|l| sha(l)).collect();
    if corrupt_diff_id {
        diff_ids[1] = sha(b"something else");
    }
    let config = config_json(&diff_ids, "amd64");
    let config_name = format!("{}.json", &sha(&config)[7..]);
    let manifest = json!([{
        "Config": config_name,
        "RepoTags": ["saved/app:v1"],
        "Layers": ["l1/layer.tar", "l2/layer.tar"],
    }]);
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, data).unwrap();
    };
    add("manifest.json", manifest.to_string().as_bytes());
    add(&config_name, &config);
    add("l1/layer.tar", &layers[0]);
    add("l2/layer.tar", &layers[1]);
    let path = dir.join("saved.tar");
    std::fs::write(&path, b.into_inner().unwrap()).unwrap();
    path
}
