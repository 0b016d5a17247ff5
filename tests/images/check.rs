//! Running `husk image` and reading ext4 images with debugfs.

#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

use super::common;
use super::layers::busybox;
use super::layers::BUSYBOX;

pub const REGISTRY: &str = "/usr/bin/docker-registry";

/// Prints why and returns false when a tool these tests need is missing.
pub fn tools_present() -> bool {
    for tool in [
        REGISTRY,
        BUSYBOX,
        "/usr/sbin/debugfs",
        "/usr/sbin/mkfs.ext4",
    ] {
        if !Path::new(tool).exists() {
            common::skip(&format!(
                "{tool} is not installed (scripts/setup.sh installs it)"
            ));
            return false;
        }
    }
    true
}

pub fn husk(state: &Path, args: &[&str]) -> std::process::Output {
    Command::new(common::husk_bin())
        .arg("image")
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .env("HUSK_LOG", "error")
        .output()
        .unwrap()
}

pub fn husk_ok(state: &Path, args: &[&str]) -> String {
    let out = husk(state, args);
    assert!(
        out.status.success(),
        "husk image {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a debugfs request against an ext4 image; returns what it printed.
pub fn debugfs_bytes(image: &Path, request: &str) -> Vec<u8> {
    Command::new("/usr/sbin/debugfs")
        .args(["-R", request])
        .arg(image)
        .output()
        .unwrap()
        .stdout
}

pub fn debugfs(image: &Path, request: &str) -> String {
    String::from_utf8_lossy(&debugfs_bytes(image, request)).into_owned()
}

pub fn inode_of(image: &Path, path: &str) -> String {
    debugfs(image, &format!("stat {path}"))
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .to_string()
}

/// Checks an ext4 built from base_layer + top_layer, through debugfs.
pub fn check_rootfs(image: &Path) {
    assert_eq!(debugfs(image, "cat /etc/hosts"), "127.0.0.1 localhost\n");
    assert_eq!(debugfs(image, "cat /etc/motd"), "hello from husk\n");
    assert!(
        debugfs_bytes(image, "cat /bin/busybox") == busybox(),
        "busybox differs"
    );
    // Whiteouts and opaque directories.
    let etc = debugfs(image, "ls /etc");
    assert!(!etc.contains("removed"), "{etc}");
    assert!(!etc.contains(".wh."), "{etc}");
    let opaque = debugfs(image, "ls /opaque");
    assert!(
        opaque.contains("upper") && !opaque.contains("lower"),
        "{opaque}"
    );
    assert!(!opaque.contains(".wh"), "{opaque}");
    // A symlink and a hard link.
    let sh = debugfs(image, "stat /bin/sh");
    assert!(sh.contains("Type: symlink"), "{sh}");
    assert!(sh.contains("Fast link dest: \"busybox\""), "{sh}");
    assert_eq!(inode_of(image, "/bin/ls"), inode_of(image, "/bin/busybox"));
    // Owner, mode with set-uid, device node, xattr.
    let owned = debugfs(image, "stat /etc/owned");
    assert!(
        owned.contains("User:  1234") && owned.contains("Group:  5678"),
        "{owned}"
    );
    assert!(owned.contains("Mode:  04750"), "{owned}");
    let null = debugfs(image, "stat /dev/null");
    assert!(null.contains("Type: character special"), "{null}");
    assert!(null.contains("Device major/minor number: 01:03"), "{null}");
    let xattr = debugfs(image, "ea_get /etc/tagged user.husk");
    assert!(xattr.contains("kept"), "{xattr}");
    let exe = debugfs(image, "stat /bin/busybox");
    assert!(exe.contains("Mode:  0755"), "{exe}");
}
