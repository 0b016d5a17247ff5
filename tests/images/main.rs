//! Image store end to end, with no internet: a real registry
//! (Debian's docker-registry) on loopback, images built here from
//! busybox-static, pulled and turned into ext4 images that debugfs (not
//! our own reader) checks.

#[path = "../common/busybox_image.rs"]
mod busybox_image;
mod check;
#[path = "../common/mod.rs"]
mod common;
#[path = "../common/daemon.rs"]
mod daemon;
mod import;
mod layers;
mod local_registry;
#[path = "../common/qemu.rs"]
mod qemu;
mod through_daemon;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;

use check::*;
use common::TempDir;
use husk::image::registry::{self, PullError, PullOptions};
use husk::image::rootfs::{self, RootfsOptions};
use husk::image::{archive, Store};
use layers::*;
use local_registry::*;
use oci_client::manifest::{ImageIndexEntry, OciImageIndex, OciManifest, Platform};
use oci_client::secrets::RegistryAuth;
use oci_client::Reference;
use serde_json::json;
use tar::{EntryType, Header};

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
