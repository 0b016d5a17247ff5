//! Image store end to end, with no internet: a real registry
//! (Debian's docker-registry) on loopback, images built here from
//! busybox-static, pulled and turned into ext4 images that debugfs (not
//! our own reader) checks.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::TempDir;
use husk::image::registry::{self, PullError, PullOptions};
use husk::image::rootfs::{self, RootfsOptions};
use husk::image::{archive, Store};
use oci_client::client::{Config, ImageLayer};
use oci_client::manifest::{ImageIndexEntry, OciImageIndex, OciManifest, Platform};
use oci_client::secrets::RegistryAuth;
use oci_client::Reference;
use serde_json::json;
use tar::{EntryType, Header};

const REGISTRY: &str = "/usr/bin/docker-registry";
const BUSYBOX: &str = "/bin/busybox";

/// Prints why and returns false when a tool these tests need is missing.
fn tools_present() -> bool {
    for tool in [
        REGISTRY,
        BUSYBOX,
        "/usr/sbin/debugfs",
        "/usr/sbin/mkfs.ext4",
    ] {
        if !Path::new(tool).exists() {
            println!("skipped: {tool} is not installed (scripts/setup.sh installs it)");
            return false;
        }
    }
    true
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A docker-registry process on loopback, removed on drop.
struct Registry {
    child: Child,
    port: u16,
    dir: TempDir,
}

/// How the test registry checks callers.
enum Auth<'a> {
    Anonymous,
    /// htpasswd: HTTP basic auth.
    Basic(&'a str, &'a str),
    /// A token service at this realm URL, trusting this certificate.
    Token {
        realm: String,
        cert: PathBuf,
    },
}

impl Registry {
    fn start(htpasswd: Option<(&str, &str)>) -> Registry {
        match htpasswd {
            Some((u, p)) => Self::start_with(Auth::Basic(u, p)),
            None => Self::start_with(Auth::Anonymous),
        }
    }

    fn start_with(auth: Auth) -> Registry {
        let dir = TempDir::new();
        let port = free_port();
        let auth = match auth {
            Auth::Basic(user, password) => {
                let hash = bcrypt::hash(password, 4).unwrap();
                let file = dir.path("htpasswd");
                std::fs::write(&file, format!("{user}:{hash}\n")).unwrap();
                format!(
                    "auth:\n  htpasswd:\n    realm: husk-test\n    path: {}\n",
                    file.display()
                )
            }
            Auth::Token { realm, cert } => format!(
                "auth:\n  token:\n    realm: {realm}\n    service: husk-test-registry\n    \
                 issuer: husk-test-issuer\n    rootcertbundle: {}\n",
                cert.display()
            ),
            Auth::Anonymous => String::new(),
        };
        let config = dir.path("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n{auth}\
                 http:\n  addr: 127.0.0.1:{port}\n",
                dir.path("data").display()
            ),
        )
        .unwrap();
        let child = Command::new(REGISTRY)
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "registry did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Registry { child, port, dir }
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The file the registry keeps a blob's bytes in.
    fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.dir
            .path("data")
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One tar entry of a test layer.
enum E<'a> {
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

fn tar_layer(entries: &[E]) -> Vec<u8> {
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

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

fn busybox() -> Vec<u8> {
    std::fs::read(BUSYBOX).unwrap()
}

/// The base layer: busybox, links, a device node, owners, an xattr, and
/// things the next layer deletes.
fn base_layer() -> Vec<u8> {
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

fn top_layer() -> Vec<u8> {
    tar_layer(&[
        E::Dir("etc/"),
        E::File("etc/.wh.removed", b""),
        E::Dir("opaque/"),
        E::File("opaque/.wh..wh..opq", b""),
        E::File("opaque/upper", b"from layer 2\n"),
        E::File("etc/motd", b"hello from husk\n"),
    ])
}

fn config_json(diff_ids: &[String], arch: &str) -> Vec<u8> {
    json!({
        "architecture": arch,
        "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    })
    .to_string()
    .into_bytes()
}

fn sha(data: &[u8]) -> String {
    husk::image::Digest::of(data).to_string()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn test_client(host: &str) -> oci_client::Client {
    registry::client(&PullOptions {
        insecure_registries: vec![host.to_string()],
        ..Default::default()
    })
}

/// Pushes a gzip-layered image; returns its manifest's digest and size.
fn push(
    host: &str,
    repo_tag: &str,
    layers: &[Vec<u8>],
    arch: &str,
    auth: &RegistryAuth,
) -> (String, i64) {
    let client = test_client(host);
    let reference: Reference = format!("{host}/{repo_tag}").parse().unwrap();
    let diff_ids: Vec<String> = layers.iter().map(|l| sha(l)).collect();
    let image_layers: Vec<ImageLayer> = layers
        .iter()
        .map(|l| {
            ImageLayer::new(
                gzip(l),
                "application/vnd.oci.image.layer.v1.tar+gzip".into(),
                None,
            )
        })
        .collect();
    let config = Config::oci_v1(config_json(&diff_ids, arch), None);
    runtime().block_on(async {
        client
            .push(&reference, &image_layers, config, auth, None)
            .await
            .unwrap();
        let (raw, digest) = client
            .pull_manifest_raw(
                &reference,
                auth,
                &["application/vnd.oci.image.manifest.v1+json"],
            )
            .await
            .unwrap();
        (digest, raw.len() as i64)
    })
}

fn husk(state: &Path, args: &[&str]) -> std::process::Output {
    Command::new(common::husk_bin())
        .arg("image")
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .env("HUSK_LOG", "error")
        .output()
        .unwrap()
}

fn husk_ok(state: &Path, args: &[&str]) -> String {
    let out = husk(state, args);
    assert!(
        out.status.success(),
        "husk image {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a debugfs request against an ext4 image; returns what it printed.
fn debugfs_bytes(image: &Path, request: &str) -> Vec<u8> {
    Command::new("/usr/sbin/debugfs")
        .args(["-R", request])
        .arg(image)
        .output()
        .unwrap()
        .stdout
}

fn debugfs(image: &Path, request: &str) -> String {
    String::from_utf8_lossy(&debugfs_bytes(image, request)).into_owned()
}

fn inode_of(image: &Path, path: &str) -> String {
    debugfs(image, &format!("stat {path}"))
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .to_string()
}

/// Checks an ext4 built from base_layer + top_layer, through debugfs.
fn check_rootfs(image: &Path) {
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

#[test]
fn pull_unpack_and_build_rootfs_with_whiteouts() {
    if !tools_present() {
        return;
    }
    let reg = Registry::start(None);
    push(
        &reg.host(),
        "test/app:1",
        &[base_layer(), top_layer()],
        "amd64",
        &RegistryAuth::Anonymous,
    );
    let state = TempDir::new();
    let reference = format!("{}/test/app:1", reg.host());
    let out = husk_ok(
        &state.0,
        &["pull", &reference, "--insecure-registry", &reg.host()],
    );
    assert!(out.starts_with(&reference), "{out}");
    let ls = husk_ok(&state.0, &["ls"]);
    assert!(ls.contains(&reference), "{ls}");

    let image = state.path("rootfs.ext4");
    husk_ok(
        &state.0,
        &["rootfs", &reference, "-o", image.to_str().unwrap()],
    );
    check_rootfs(&image);

    // A second build is a cache hit: the cached filesystem is untouched.
    let store = Store::open(&state.0).unwrap();
    let record = store.get(&reference).unwrap();
    let cached = store.rootfs_path(&record.config);
    let before = std::fs::metadata(&cached).unwrap().modified().unwrap();
    let again = state.path("again.ext4");
    husk_ok(
        &state.0,
        &["rootfs", &reference, "-o", again.to_str().unwrap()],
    );
    let after = std::fs::metadata(&cached).unwrap().modified().unwrap();
    assert_eq!(before, after);
    check_rootfs(&again);

    // Each copy is private: writing one leaves the other alone.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&again)
        .unwrap()
        .write_all(&[0xff; 4096])
        .unwrap();
    check_rootfs(&image);

    // A bigger copy on request.
    let big = state.path("big.ext4");
    husk_ok(
        &state.0,
        &[
            "rootfs",
            &reference,
            "-o",
            big.to_str().unwrap(),
            "--size-mib",
            "256",
        ],
    );
    assert_eq!(std::fs::metadata(&big).unwrap().len(), 256 << 20);
    check_rootfs(&big);

    // A second pull finds every blob in place.
    let out = husk(
        &state.0,
        &["pull", &reference, "--insecure-registry", &reg.host()],
    );
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already present"));
}

#[test]
fn concurrent_pulls_of_one_image_agree() {
    if !tools_present() {
        return;
    }
    let reg = Registry::start(None);
    let anon = RegistryAuth::Anonymous;
    push(
        &reg.host(),
        "c/app:1",
        &[base_layer(), top_layer()],
        "amd64",
        &anon,
    );
    let state = TempDir::new();
    let reference = format!("{}/c/app:1", reg.host());
    let pulls: Vec<_> = (0..4)
        .map(|_| {
            Command::new(common::husk_bin())
                .args(["image", "--state-dir"])
                .arg(&state.0)
                .args(["pull", &reference, "--insecure-registry", &reg.host()])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for p in pulls {
        let out = p.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let store = Store::open(&state.0).unwrap();
    assert_eq!(store.list().unwrap().len(), 1);
    // Every blob reads back with the right digest.
    let record = store.get(&reference).unwrap();
    for l in &record.layers {
        let mut f = store.open_blob(&l.digest).unwrap();
        let mut data = Vec::new();
        f.read_to_end(&mut data).unwrap();
        assert_eq!(husk::image::Digest::of(&data), l.digest);
    }
    assert_eq!(
        std::fs::read_dir(store.root().join("tmp")).unwrap().count(),
        0
    );
    // And concurrent rootfs builds share one cached filesystem.
    let outs: Vec<_> = (0..3)
        .map(|i| {
            let out = state.path(&format!("fs{i}.ext4"));
            let child = Command::new(common::husk_bin())
                .args(["image", "--state-dir"])
                .arg(&state.0)
                .args(["rootfs", &reference, "-o", out.to_str().unwrap()])
                .spawn()
                .unwrap();
            (child, out)
        })
        .collect();
    for (mut child, out) in outs {
        assert!(child.wait().unwrap().success());
        check_rootfs(&out);
    }
}

#[test]
fn pull_progress_is_reported_per_layer() {
    if !tools_present() {
        return;
    }
    let reg = Registry::start(None);
    let big: Vec<u8> = (0..300_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let layers = [tar_layer(&[E::File("a", &big)]), top_layer()];
    push(
        &reg.host(),
        "prog/app:1",
        &layers,
        "amd64",
        &RegistryAuth::Anonymous,
    );
    let state = TempDir::new();
    let store = Store::open(&state.0).unwrap();
    let events = std::sync::Mutex::new(Vec::new());
    let opts = PullOptions {
        insecure_registries: vec![reg.host()],
        ..Default::default()
    };
    let reference = format!("{}/prog/app:1", reg.host());
    registry::pull(&store, &reference, &opts, &|e| {
        events.lock().unwrap().push(e.clone())
    })
    .unwrap();
    let events = events.into_inner().unwrap();
    let registry::PullEvent::Resolved {
        layers: resolved, ..
    } = &events[0]
    else {
        panic!("first event: {:?}", events[0]);
    };
    assert_eq!(resolved.len(), 2);
    for (digest, total) in resolved {
        let last = events
            .iter()
            .rev()
            .find_map(|e| match e {
                registry::PullEvent::Progress {
                    digest: d,
                    done,
                    total: t,
                } if d == digest => Some((*done, *t)),
                _ => None,
            })
            .unwrap();
        assert_eq!(last, (*total, *total));
        assert!(events.iter().any(|e| matches!(e,
            registry::PullEvent::LayerDone { digest: d, cached: false } if d == digest)));
    }
    let json = serde_json::to_value(&events[1]).unwrap();
    assert_eq!(json["event"], "progress");
}

/// Pushes a Docker Registry v2 (schema 2) image whose layers are gzip,
/// zstd and plain tar, built by hand: blobs first, then the manifest.
fn push_docker_v2(host: &str, repo_tag: &str, layers: &[Vec<u8>]) {
    let client = test_client(host);
    let reference: Reference = format!("{host}/{repo_tag}").parse().unwrap();
    let encoded: Vec<(Vec<u8>, &str)> = layers
        .iter()
        .enumerate()
        .map(|(i, l)| match i % 3 {
            0 => (gzip(l), "application/vnd.docker.image.rootfs.diff.tar.gzip"),
            1 => (
                zstd::encode_all(&l[..], 3).unwrap(),
                "application/vnd.oci.image.layer.v1.tar+zstd",
            ),
            _ => (l.clone(), "application/vnd.oci.image.layer.v1.tar"),
        })
        .collect();
    let diff_ids: Vec<String> = layers.iter().map(|l| sha(l)).collect();
    let config = config_json(&diff_ids, "amd64");
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "size": config.len(),
            "digest": sha(&config),
        },
        "layers": encoded.iter().map(|(data, media)| json!({
            "mediaType": media, "size": data.len(), "digest": sha(data),
        })).collect::<Vec<_>>(),
    });
    runtime().block_on(async {
        client
            .push_blob(&reference, config.clone(), &sha(&config))
            .await
            .unwrap();
        for (data, _) in &encoded {
            client
                .push_blob(&reference, data.clone(), &sha(data))
                .await
                .unwrap();
        }
        client
            .push_manifest_raw(
                &reference,
                manifest.to_string().into_bytes(),
                axum::http::HeaderValue::from_static(
                    "application/vnd.docker.distribution.manifest.v2+json",
                ),
            )
            .await
            .unwrap();
    });
}

#[test]
fn docker_v2_manifests_and_every_layer_compression() {
    if !tools_present() {
        return;
    }
    let reg = Registry::start(None);
    let host = reg.host();
    push_docker_v2(
        &host,
        "docker/app:v2",
        &[
            base_layer(),
            tar_layer(&[E::File("etc/zstd", b"zstd layer\n")]),
            top_layer(),
        ],
    );
    let state = TempDir::new();
    let reference = format!("{host}/docker/app:v2");
    husk_ok(
        &state.0,
        &["pull", &reference, "--insecure-registry", &host],
    );
    let image = state.path("fs.ext4");
    husk_ok(
        &state.0,
        &["rootfs", &reference, "-o", image.to_str().unwrap()],
    );
    check_rootfs(&image);
    assert_eq!(debugfs(&image, "cat /etc/zstd"), "zstd layer\n");
    // It exports as an OCI layout and imports back.
    let layout = state.path("layout");
    husk_ok(
        &state.0,
        &["export", &reference, "-o", layout.to_str().unwrap()],
    );
    let other = TempDir::new();
    husk_ok(&other.0, &["import", layout.to_str().unwrap()]);
    let again = other.path("fs.ext4");
    husk_ok(
        &other.0,
        &["rootfs", &reference, "-o", again.to_str().unwrap()],
    );
    check_rootfs(&again);
}

#[test]
fn multi_arch_index_resolves_to_linux_amd64() {
    if !tools_present() {
        return;
    }
    let reg = Registry::start(None);
    let host = reg.host();
    let arch_layer = |arch: &str| {
        tar_layer(&[
            E::Dir("etc/"),
            E::File("etc/arch", format!("{arch}\n").as_bytes()),
        ])
    };
    let anon = RegistryAuth::Anonymous;
    let amd = push(
        &host,
        "multi/app:amd64",
        &[arch_layer("amd64")],
        "amd64",
        &anon,
    );
    let arm = push(
        &host,
        "multi/app:arm64",
        &[arch_layer("arm64")],
        "arm64",
        &anon,
    );
    let entry = |(digest, size): (String, i64), arch: &str| ImageIndexEntry {
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        digest,
        size,
        artifact_type: None,
        platform: Some(Platform {
            architecture: arch.into(),
            os: "linux".into(),
            os_version: None,
            os_features: None,
            variant: None,
            features: None,
        }),
        annotations: None,
    };
    let index = OciImageIndex {
        schema_version: 2,
        media_type: Some("application/vnd.oci.image.index.v1+json".into()),
        manifests: vec![entry(arm, "arm64"), entry(amd, "amd64")],
        artifact_type: None,
        annotations: None,
    };
    let reference: Reference = format!("{host}/multi/app:latest").parse().unwrap();
    runtime()
        .block_on(test_client(&host).push_manifest(&reference, &OciManifest::ImageIndex(index)))
        .unwrap();

    let state = TempDir::new();
    let r = format!("{host}/multi/app:latest");
    husk_ok(&state.0, &["pull", &r, "--insecure-registry", &host]);
    let image = state.path("fs.ext4");
    husk_ok(&state.0, &["rootfs", &r, "-o", image.to_str().unwrap()]);
    assert_eq!(debugfs(&image, "cat /etc/arch"), "amd64\n");
}

#[test]
fn plain_http_needs_the_registry_named_insecure() {
    if !tools_present() {
        return;
    }
    let reg = Registry::start(None);
    push(
        &reg.host(),
        "p/app:1",
        &[top_layer()],
        "amd64",
        &RegistryAuth::Anonymous,
    );
    let state = TempDir::new();
    let out = husk(&state.0, &["pull", &format!("{}/p/app:1", reg.host())]);
    assert!(
        !out.status.success(),
        "pulled over plain HTTP without consent"
    );
    assert!(
        husk_ok(&state.0, &["ls"]).lines().count() == 1,
        "nothing recorded"
    );
}

#[test]
fn basic_auth() {
    if !tools_present() {
        return;
    }
    let reg = Registry::start(Some(("alice", "s3cret")));
    let host = reg.host();
    let alice = RegistryAuth::Basic("alice".into(), "s3cret".into());
    push(&host, "private/app:1", &[top_layer()], "amd64", &alice);
    let state = TempDir::new();
    let reference = format!("{host}/private/app:1");
    let out = husk(
        &state.0,
        &["pull", &reference, "--insecure-registry", &host],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(err.contains("authoriz") || err.contains("401"), "{err}");

    let out = Command::new(common::husk_bin())
        .args(["image", "--state-dir"])
        .arg(&state.0)
        .args([
            "pull",
            &reference,
            "--insecure-registry",
            &host,
            "--username",
            "alice",
        ])
        .env("HUSK_REGISTRY_PASSWORD", "s3cret")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A token service for the registry's bearer-token auth: it hands signed
/// JWTs (ES256, with the signing certificate in `x5c`) to `user:password`
/// and refuses everyone else.
struct TokenServer {
    port: u16,
    cert: PathBuf,
    issued: Arc<AtomicUsize>,
}

impl TokenServer {
    fn start(dir: &TempDir, user: &'static str, password: &'static str) -> TokenServer {
        use base64::Engine;
        let key_pem = dir.path("token-key.pem");
        let cert = dir.path("token-cert.pem");
        let ok = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
            ])
            .args(["-nodes", "-days", "1", "-subj", "/CN=husk-test-token"])
            .arg("-keyout")
            .arg(&key_pem)
            .arg("-out")
            .arg(&cert)
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(ok.success());
        let der = |args: &[&str], input: &Path| {
            Command::new("openssl")
                .args(args)
                .arg("-in")
                .arg(input)
                .output()
                .unwrap()
                .stdout
        };
        let key_der = der(
            &["pkcs8", "-topk8", "-nocrypt", "-outform", "DER"],
            &key_pem,
        );
        let cert_der = der(&["x509", "-outform", "DER"], &cert);
        let rng = ring::rand::SystemRandom::new();
        let key = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &key_der,
            &rng,
        )
        .unwrap();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let x5c = base64::engine::general_purpose::STANDARD.encode(&cert_der);
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        );
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let issued = Arc::new(AtomicUsize::new(0));
        let count = issued.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { break };
                let mut buf = vec![0u8; 16384];
                let n = conn.read(&mut buf).unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).into_owned();
                let authorized = req.lines().any(|l| {
                    l.to_ascii_lowercase().starts_with("authorization:")
                        && l[14..].trim() == expected
                });
                let response = if authorized {
                    let scope = req
                        .split_whitespace()
                        .nth(1)
                        .and_then(|path| path.split("scope=").nth(1))
                        .and_then(|s| s.split('&').next())
                        .unwrap_or("")
                        .replace("%3A", ":")
                        .replace("%2F", "/")
                        .replace("%2C", ",");
                    let parts: Vec<&str> = scope.split(':').collect();
                    let (name, actions) = (
                        parts.get(1).copied().unwrap_or(""),
                        parts.get(2).copied().unwrap_or(""),
                    );
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_secs();
                    let header = json!({"alg": "ES256", "typ": "JWT", "x5c": [x5c]});
                    let claims = json!({
                        "iss": "husk-test-issuer", "sub": user, "aud": "husk-test-registry",
                        "exp": now + 300, "nbf": now - 10, "iat": now, "jti": format!("{now}-{n}"),
                        "access": [{"type": "repository", "name": name,
                                    "actions": actions.split(',').collect::<Vec<_>>()}],
                    });
                    let signing_input = format!(
                        "{}.{}",
                        b64.encode(header.to_string()),
                        b64.encode(claims.to_string())
                    );
                    let sig = key.sign(&rng, signing_input.as_bytes()).unwrap();
                    let token = format!("{signing_input}.{}", b64.encode(sig.as_ref()));
                    count.fetch_add(1, Ordering::SeqCst);
                    let body = json!({"token": token, "access_token": token, "expires_in": 300})
                        .to_string();
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                         Connection: close\r\n\r\n{body}",
                        body.len()
                    )
                } else {
                    "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        .into()
                };
                let _ = conn.write_all(response.as_bytes());
            }
        });
        TokenServer { port, cert, issued }
    }
}

#[test]
fn bearer_token_auth() {
    if !tools_present() {
        return;
    }
    let dir = TempDir::new();
    let tokens = TokenServer::start(&dir, "alice", "s3cret");
    let reg = Registry::start_with(Auth::Token {
        realm: format!("http://127.0.0.1:{}/token", tokens.port),
        cert: tokens.cert.clone(),
    });
    let host = reg.host();
    let alice = RegistryAuth::Basic("alice".into(), "s3cret".into());
    push(&host, "private/app:1", &[top_layer()], "amd64", &alice);
    let before = tokens.issued.load(Ordering::SeqCst);
    assert!(before >= 1, "the push went through the token service");

    let state = TempDir::new();
    let reference = format!("{host}/private/app:1");
    // Anonymous: the token service refuses, and so the registry does.
    let out = husk(
        &state.0,
        &["pull", &reference, "--insecure-registry", &host],
    );
    assert!(!out.status.success());
    // With credentials: a token is issued and the pull succeeds.
    let out = Command::new(common::husk_bin())
        .args(["image", "--state-dir"])
        .arg(&state.0)
        .args([
            "pull",
            &reference,
            "--insecure-registry",
            &host,
            "--username",
            "alice",
        ])
        .args(["--password-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(b"s3cret\n")?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(tokens.issued.load(Ordering::SeqCst) > before);
    let image = state.path("fs.ext4");
    husk_ok(
        &state.0,
        &["rootfs", &reference, "-o", image.to_str().unwrap()],
    );
    assert_eq!(debugfs(&image, "cat /etc/motd"), "hello from husk\n");
}

#[test]
fn a_corrupt_blob_in_the_registry_is_refused() {
    if !tools_present() {
        return;
    }
    let reg = Registry::start(None);
    let layer = tar_layer(&[E::File("f", &[1u8; 50_000])]);
    push(
        &reg.host(),
        "bad/app:1",
        std::slice::from_ref(&layer),
        "amd64",
        &RegistryAuth::Anonymous,
    );
    // Flip a byte of the stored layer blob, keeping its length.
    let digest = sha(&gzip(&layer));
    let file = reg.blob_file(&digest);
    let mut data = std::fs::read(&file).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0xff;
    std::fs::write(&file, &data).unwrap();

    let state = TempDir::new();
    let store = Store::open(&state.0).unwrap();
    let err = registry::pull(
        &store,
        &format!("{}/bad/app:1", reg.host()),
        &PullOptions {
            insecure_registries: vec![reg.host()],
            attempts: 2,
            ..Default::default()
        },
        &|_| {},
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("digest"), "{msg}");
    assert!(!store.has_blob(&husk::image::Digest::parse(&digest).unwrap()));
    assert!(store.list().unwrap().is_empty());
}

/// A TCP proxy to the registry that cuts the first `cuts` blob downloads
/// short after `after` bytes of response.
struct Flaky {
    port: u16,
    /// Requests that asked for a byte range (resumed downloads).
    ranged: Arc<AtomicUsize>,
}

impl Flaky {
    fn start(upstream: u16, cuts: usize, after: usize) -> Flaky {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let left = Arc::new(AtomicUsize::new(cuts));
        let ranged = Arc::new(AtomicUsize::new(0));
        let seen = ranged.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(mut client) = client else { break };
                let left = left.clone();
                let seen = seen.clone();
                std::thread::spawn(move || {
                    let mut server = TcpStream::connect(("127.0.0.1", upstream)).unwrap();
                    let mut req = vec![0u8; 8192];
                    let n = client.read(&mut req).unwrap_or(0);
                    let head = String::from_utf8_lossy(&req[..n]).into_owned();
                    let is_blob = head.contains("/blobs/sha256:");
                    if head.to_ascii_lowercase().contains("\r\nrange: bytes=") {
                        seen.fetch_add(1, Ordering::SeqCst);
                    }
                    // One request per connection, so every request is seen.
                    let head = head.replacen("\r\n", "\r\nConnection: close\r\n", 1);
                    server.write_all(head.as_bytes()).unwrap();
                    let mut up = server.try_clone().unwrap();
                    let mut down = client.try_clone().unwrap();
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut down, &mut up);
                    });
                    let cut = is_blob
                        && left
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |l| l.checked_sub(1))
                            .is_ok();
                    if cut {
                        let mut buf = vec![0u8; after];
                        let mut got = 0;
                        while got < after {
                            match server.read(&mut buf[got..]) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => got += n,
                            }
                        }
                        let _ = client.write_all(&buf[..got]);
                        let _ = client.shutdown(std::net::Shutdown::Both);
                    } else {
                        let _ = std::io::copy(&mut server, &mut client);
                    }
                });
            }
        });
        Flaky { port, ranged }
    }
}

#[test]
fn a_dropped_connection_resumes_and_a_dead_one_gives_up() {
    if !tools_present() {
        return;
    }
    let reg = Registry::start(None);
    let big: Vec<u8> = (0..400_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let layer = tar_layer(&[E::File("big", &big)]);
    push(
        &reg.host(),
        "flaky/app:1",
        &[layer],
        "amd64",
        &RegistryAuth::Anonymous,
    );

    // Two cuts halfway through: the pull resumes and still verifies.
    let proxy = Flaky::start(reg.port, 2, 40_000);
    let host = format!("127.0.0.1:{}", proxy.port);
    let state = TempDir::new();
    let store = Store::open(&state.0).unwrap();
    let opts = PullOptions {
        insecure_registries: vec![host.clone()],
        attempts: 5,
        ..Default::default()
    };
    let record = registry::pull(&store, &format!("{host}/flaky/app:1"), &opts, &|_| {}).unwrap();
    assert!(
        proxy.ranged.load(Ordering::SeqCst) >= 1,
        "the pull did not resume"
    );
    let out = state.path("fs.ext4");
    rootfs::export(&store, &record, RootfsOptions::default(), &out, None).unwrap();
    assert!(
        debugfs_bytes(&out, "cat /big") == big,
        "the resumed layer differs"
    );

    // A connection that always drops: a clear error, nothing half-kept.
    let proxy = Flaky::start(reg.port, usize::MAX, 10_000);
    let host = format!("127.0.0.1:{}", proxy.port);
    let state = TempDir::new();
    let store = Store::open(&state.0).unwrap();
    let opts = PullOptions {
        insecure_registries: vec![host.clone()],
        attempts: 3,
        ..Default::default()
    };
    let err = registry::pull(&store, &format!("{host}/flaky/app:1"), &opts, &|_| {}).unwrap_err();
    assert!(
        matches!(err, PullError::Retries { attempts: 3, .. }),
        "{err}"
    );
    assert!(store.list().unwrap().is_empty());
    drop(store);
    // The next open finds no temporary leftovers either.
    let store = Store::open(&state.0).unwrap();
    assert_eq!(
        std::fs::read_dir(store.root().join("tmp")).unwrap().count(),
        0
    );
}

#[test]
fn hostile_layers_are_refused_and_write_nothing_outside() {
    if !tools_present() {
        return;
    }
    let reg = Registry::start(None);
    let escape = tar_layer(&[E::Raw("../../escaped-by-layer", b"pwned")]);
    push(
        &reg.host(),
        "evil/app:1",
        &[escape],
        "amd64",
        &RegistryAuth::Anonymous,
    );
    let state = TempDir::new();
    let reference = format!("{}/evil/app:1", reg.host());
    husk_ok(
        &state.0,
        &["pull", &reference, "--insecure-registry", &reg.host()],
    );
    let out = husk(
        &state.0,
        &[
            "rootfs",
            &reference,
            "-o",
            state.path("x.ext4").to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("would escape the root filesystem"), "{err}");
    assert!(!state.0.join("images/escaped-by-layer").exists());
    assert!(!state.0.join("escaped-by-layer").exists());
    assert!(!state.path("x.ext4").exists());
}

/// A `docker save` archive of base_layer + top_layer, as a tarball.
fn docker_save(dir: &Path, corrupt_diff_id: bool) -> PathBuf {
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

#[test]
fn docker_save_import_and_oci_layout_round_trip() {
    if !tools_present() {
        return;
    }
    let work = TempDir::new();
    let saved = docker_save(&work.0, false);
    let state = TempDir::new();
    let out = husk_ok(&state.0, &["import", saved.to_str().unwrap()]);
    assert!(out.starts_with("docker.io/saved/app:v1 sha256:"), "{out}");
    let image = state.path("fs.ext4");
    husk_ok(
        &state.0,
        &["rootfs", "saved/app:v1", "-o", image.to_str().unwrap()],
    );
    check_rootfs(&image);

    // Export as an OCI layout, import it into a fresh store.
    let layout = work.path("layout");
    husk_ok(
        &state.0,
        &["export", "saved/app:v1", "-o", layout.to_str().unwrap()],
    );
    assert!(layout.join("oci-layout").is_file());
    let other = TempDir::new();
    let out = husk_ok(&other.0, &["import", layout.to_str().unwrap()]);
    assert!(out.starts_with("docker.io/saved/app:v1 "), "{out}");
    let a = Store::open(&state.0).unwrap().get("saved/app:v1").unwrap();
    let b = Store::open(&other.0).unwrap().get("saved/app:v1").unwrap();
    assert_eq!(
        (a.config.clone(), a.layers.clone()),
        (b.config.clone(), b.layers.clone())
    );

    // The layout as a tarball imports too, under a new name.
    let tarball = work.path("layout.tar");
    let status = Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(&tarball)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
    let third = TempDir::new();
    let out = husk_ok(
        &third.0,
        &[
            "import",
            tarball.to_str().unwrap(),
            "--tag",
            "localhost/renamed:2",
        ],
    );
    assert!(out.starts_with("localhost/renamed:2 "), "{out}");

    // rm drops the reference and collects its blobs.
    let out = husk_ok(&state.0, &["rm", "saved/app:v1"]);
    assert!(out.contains("freed"), "{out}");
    let store = Store::open(&state.0).unwrap();
    assert!(store.list().unwrap().is_empty());
    assert_eq!(
        std::fs::read_dir(store.root().join("blobs/sha256"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn broken_archives_are_refused() {
    if !tools_present() {
        return;
    }
    let work = TempDir::new();
    let state = TempDir::new();
    let saved = docker_save(&work.0, true);
    let out = husk(&state.0, &["import", saved.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not match the config's diff_id"), "{err}");

    // Truncated tarball.
    let data = std::fs::read(docker_save(&work.0, false)).unwrap();
    let cut = work.path("cut.tar");
    std::fs::write(&cut, &data[..data.len() / 3]).unwrap();
    let out = husk(&state.0, &["import", cut.to_str().unwrap()]);
    assert!(!out.status.success());

    // A tarball whose entries climb out of the scratch directory.
    let evil = work.path("evil.tar");
    std::fs::write(
        &evil,
        tar_layer(&[E::Raw("../../../../tmp/husk-evil", b"x")]),
    )
    .unwrap();
    let out = husk(&state.0, &["import", evil.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("escape"));

    // A layer that is a symlink out of the archive to a real layer tar on
    // this host: resolved inside the archive, where it does not exist.
    let outside_layer = work.path("outside-layer.tar");
    let real = tar_layer(&[E::File("secret", b"host file")]);
    std::fs::write(&outside_layer, &real).unwrap();
    let config = config_json(&[sha(&real)], "amd64");
    let mut b = tar::Builder::new(Vec::new());
    let mut h = Header::new_ustar();
    let manifest =
        json!([{"Config": "c.json", "RepoTags": ["sneaky/app:1"], "Layers": ["l1/layer.tar"]}])
            .to_string();
    h.set_size(manifest.len() as u64);
    h.set_mode(0o644);
    b.append_data(&mut h, "manifest.json", manifest.as_bytes())
        .unwrap();
    let mut h = Header::new_ustar();
    h.set_size(config.len() as u64);
    h.set_mode(0o644);
    b.append_data(&mut h, "c.json", &config[..]).unwrap();
    let mut h = Header::new_ustar();
    h.set_entry_type(EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, "l1/layer.tar", &outside_layer)
        .unwrap();
    let sneaky = work.path("sneaky.tar");
    std::fs::write(&sneaky, b.into_inner().unwrap()).unwrap();
    let out = husk(&state.0, &["import", sneaky.to_str().unwrap()]);
    assert!(
        !out.status.success(),
        "followed a symlink out of the archive"
    );
    assert!(Store::open(&state.0).unwrap().get("sneaky/app:1").is_err());

    // Not an image at all.
    let junk = work.path("junk.tar");
    std::fs::write(&junk, tar_layer(&[E::File("hello", b"world")])).unwrap();
    let out = husk(&state.0, &["import", junk.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("neither a docker save archive"));
    assert!(Store::open(&state.0).unwrap().list().unwrap().is_empty());

    // An OCI layout whose blob does not match its digest.
    let layout = work.path("layout");
    let good = TempDir::new();
    husk_ok(
        &good.0,
        &["import", docker_save(&work.0, false).to_str().unwrap()],
    );
    husk_ok(
        &good.0,
        &["export", "saved/app:v1", "-o", layout.to_str().unwrap()],
    );
    let record = Store::open(&good.0).unwrap().get("saved/app:v1").unwrap();
    let blob = layout
        .join("blobs/sha256")
        .join(record.layers[0].digest.hex());
    let mut bytes = std::fs::read(&blob).unwrap();
    std::fs::remove_file(&blob).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&blob, bytes).unwrap();
    // (A fresh store: one that already holds the blob need not read it.)
    let fresh = TempDir::new();
    let out = husk(&fresh.0, &["import", layout.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("digest mismatch"));
    let _ = archive::MEDIA_OCI_MANIFEST;
}
