//! `husk image import`: archive bombs are refused before anything is
//! unpacked, every supported archive shape still imports, and errors are
//! short, printable and name the user's file.

use std::ffi::CString;
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use husk::image::Store;
use serde_json::json;
use tar::{EntryType, Header};

use super::check::*;
use super::common::{self, TempDir};
use super::layers::*;

const BOMB: u64 = 2 << 30;

/// How a test archive is written: plain (with the bomb's zeros as a hole,
/// so it takes no disk), or as gzip members / zstd frames, each chunk
/// compressed once and repeated.
#[derive(Clone, Copy, Debug)]
enum Packing {
    Plain,
    Gzip,
    Zstd,
}

/// 16 MiB of zeros, compressed once per packing.
fn zero_chunk(p: Packing) -> &'static [u8] {
    static GZ: OnceLock<Vec<u8>> = OnceLock::new();
    static ZST: OnceLock<Vec<u8>> = OnceLock::new();
    let zeros = || vec![0u8; 16 << 20];
    match p {
        Packing::Gzip => GZ.get_or_init(|| gzip(&zeros())),
        Packing::Zstd => ZST.get_or_init(|| zstd::encode_all(&zeros()[..], 3).unwrap()),
        Packing::Plain => unreachable!(),
    }
}

/// A tar stream written entry by entry, without holding it in memory.
struct TarOut {
    file: File,
    packing: Packing,
}

impl TarOut {
    fn create(path: &Path, packing: Packing) -> TarOut {
        TarOut {
            file: File::create(path).unwrap(),
            packing,
        }
    }

    fn bytes(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let packed = match self.packing {
            Packing::Plain => data.to_vec(),
            Packing::Gzip => gzip(data),
            Packing::Zstd => zstd::encode_all(data, 3).unwrap(),
        };
        self.file.write_all(&packed).unwrap();
    }

    fn zeros(&mut self, n: u64) {
        let chunk = 16u64 << 20;
        assert_eq!(n % chunk, 0);
        match self.packing {
            Packing::Plain => {
                self.file.seek(SeekFrom::Current(n as i64)).unwrap();
            }
            p => {
                for _ in 0..n / chunk {
                    self.file.write_all(zero_chunk(p)).unwrap();
                }
            }
        }
    }

    fn header(&mut self, name: &str, kind: EntryType, size: u64) {
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(0o644);
        h.set_path(name).unwrap();
        h.set_cksum();
        self.bytes(h.as_bytes());
    }

    fn entry(&mut self, name: &str, data: &[u8]) {
        self.header(name, EntryType::Regular, data.len() as u64);
        let mut padded = data.to_vec();
        padded.resize(data.len().div_ceil(512) * 512, 0);
        self.bytes(&padded);
    }

    fn symlink(&mut self, name: &str, target: &str) {
        let mut h = Header::new_gnu();
        h.set_entry_type(EntryType::Symlink);
        h.set_size(0);
        h.set_path(name).unwrap();
        h.set_link_name(target).unwrap();
        h.set_cksum();
        self.bytes(h.as_bytes());
    }

    /// A file of `n` zero bytes (`n` a multiple of 16 MiB).
    fn zero_entry(&mut self, name: &str, n: u64) {
        self.header(name, EntryType::Regular, n);
        self.zeros(n);
    }

    fn finish(mut self) {
        self.bytes(&[0u8; 1024]);
        self.file.flush().unwrap();
    }
}

/// The entries of a `docker save` of base_layer + top_layer.
fn docker_save_entries() -> Vec<(String, Vec<u8>)> {
    let layers = [base_layer(), top_layer()];
    let diff_ids: Vec<String> = layers.iter().map(|l| sha(l)).collect();
    let config = config_json(&diff_ids, "amd64");
    let config_name = format!("{}.json", &sha(&config)[7..]);
    let manifest = json!([{
        "Config": config_name,
        "RepoTags": ["saved/app:v1"],
        "Layers": ["l1/layer.tar", "l2/layer.tar"],
    }]);
    vec![
        ("l1/VERSION".into(), b"1.0".to_vec()),
        ("l1/json".into(), b"{}".to_vec()),
        ("l1/layer.tar".into(), layers[0].clone()),
        ("l2/layer.tar".into(), layers[1].clone()),
        (config_name, config),
        ("manifest.json".into(), manifest.to_string().into_bytes()),
        ("repositories".into(), b"{}".to_vec()),
    ]
}

/// The blobs of an OCI image of base_layer + top_layer (gzip layers),
/// and the layout's index.json naming it `oci/app:v1`.
fn oci_layout_entries() -> (Vec<(String, Vec<u8>)>, Vec<u8>) {
    let layers = [gzip(&base_layer()), gzip(&top_layer())];
    let diff_ids = [sha(&base_layer()), sha(&top_layer())];
    let config = config_json(&diff_ids, "amd64");
    let desc = |media: &str, data: &[u8]| json!({"mediaType": media, "digest": sha(data), "size": data.len()});
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": desc("application/vnd.oci.image.config.v1+json", &config),
        "layers": layers.iter()
            .map(|l| desc("application/vnd.oci.image.layer.v1.tar+gzip", l))
            .collect::<Vec<_>>(),
    })
    .to_string()
    .into_bytes();
    let mut top = desc("application/vnd.oci.image.manifest.v1+json", &manifest);
    top["annotations"] = json!({"org.opencontainers.image.ref.name": "docker.io/oci/app:v1"});
    let index = json!({"schemaVersion": 2, "manifests": [top]})
        .to_string()
        .into_bytes();
    let blob = |data: &[u8]| (format!("blobs/sha256/{}", &sha(data)[7..]), data.to_vec());
    let blobs = vec![
        blob(&layers[0]),
        blob(&layers[1]),
        blob(&config),
        blob(&manifest),
    ];
    (blobs, index)
}

fn layout_tail(out: &mut TarOut, index: &[u8]) {
    out.entry("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    out.entry("index.json", index);
}

/// A private filesystem for a state directory: a small tmpfs where we may
/// mount one (so that a broken import cannot fill the disk, and space
/// held by deleted files still shows), a plain directory otherwise.
struct StateFs {
    dir: TempDir,
    mounted: bool,
}

impl StateFs {
    fn new() -> StateFs {
        let dir = TempDir::new();
        let target = CString::new(dir.0.to_str().unwrap()).unwrap();
        // SAFETY: valid NUL-terminated strings for the call.
        let mounted = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                c"size=256m".as_ptr().cast(),
            )
        } == 0;
        StateFs { dir, mounted }
    }

    /// Bytes in use under the state directory.
    fn used(&self) -> u64 {
        if self.mounted {
            // SAFETY: statvfs fills the struct we pass.
            let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
            let p = CString::new(self.dir.0.to_str().unwrap()).unwrap();
            // SAFETY: as above.
            if unsafe { libc::statvfs(p.as_ptr(), &mut st) } == 0 {
                return (st.f_blocks - st.f_bfree) * st.f_frsize;
            }
        }
        du(&self.dir.0)
    }
}

impl Drop for StateFs {
    fn drop(&mut self) {
        if self.mounted {
            let p = CString::new(self.dir.0.to_str().unwrap()).unwrap();
            // SAFETY: unmounts the tmpfs this fixture mounted.
            unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

fn du(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(m) = std::fs::symlink_metadata(p) else {
        return 0;
    };
    let mut total = m.blocks() * 512;
    if m.is_dir() {
        for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
            total += du(&e.path());
        }
    }
    total
}

/// Runs `husk image import` while watching the state directory's disk
/// use; returns the output and the most it used at any moment.
fn import_watched(state: &StateFs, archive: &Path) -> (Output, u64) {
    let child = Command::new(common::husk_bin())
        .arg("image")
        .arg("--state-dir")
        .arg(&state.dir.0)
        .arg("import")
        .arg(archive)
        .env("HUSK_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let out = std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::SeqCst) {
                peak.fetch_max(state.used(), Ordering::SeqCst);
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        });
        let out = child.wait_with_output().unwrap();
        peak.fetch_max(state.used(), Ordering::SeqCst);
        done.store(true, Ordering::SeqCst);
        out
    });
    (out, peak.load(Ordering::SeqCst))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The import failed, saying `why`, without writing anything close to the
/// bomb's size, and left nothing behind.
fn assert_refused(state: &StateFs, archive: &Path, why: &str) {
    let (out, peak) = import_watched(state, archive);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{archive:?}: {err}");
    assert!(err.contains(why), "{archive:?}: {err}");
    assert!(err.contains(archive.to_str().unwrap()), "{err}");
    assert!(
        peak < 16 << 20,
        "{archive:?}: the state directory grew to {peak} bytes while refusing it"
    );
    let store = Store::open(&state.dir.0).unwrap();
    assert!(store.list().unwrap().is_empty());
    let tmp = std::fs::read_dir(store.root().join("tmp")).unwrap().count();
    let blobs = std::fs::read_dir(store.root().join("blobs/sha256"))
        .unwrap()
        .count();
    assert_eq!((tmp, blobs), (0, 0), "{archive:?}: left files behind");
}

#[test]
fn an_archive_bomb_in_an_unreferenced_entry_is_refused_unread() {
    if !tools_present() {
        return;
    }
    let work = TempDir::new();
    let state = StateFs::new();
    for packing in [Packing::Plain, Packing::Gzip, Packing::Zstd] {
        // A good `docker save`, with 2 GiB of zeros ahead of everything
        // (the worst place: nothing is known yet when it passes).
        let path = work.path(&format!("bomb-{packing:?}.tar"));
        let mut out = TarOut::create(&path, packing);
        out.zero_entry("padding/zeros", BOMB);
        for (name, data) in docker_save_entries() {
            out.entry(&name, &data);
        }
        out.finish();
        let on_disk = du(&path);
        assert!(on_disk < 64 << 20, "{packing:?}: {on_disk}");
        assert_refused(
            &state,
            &path,
            "that neither its manifest nor its index declares",
        );
    }
    // The same archive without the bomb imports, compressed or not.
    for packing in [Packing::Plain, Packing::Gzip, Packing::Zstd] {
        let path = work.path(&format!("good-{packing:?}.tar"));
        let mut out = TarOut::create(&path, packing);
        for (name, data) in docker_save_entries() {
            out.entry(&name, &data);
        }
        out.finish();
        let state = TempDir::new();
        let out = husk_ok(&state.0, &["import", path.to_str().unwrap()]);
        assert!(out.starts_with("docker.io/saved/app:v1 sha256:"), "{out}");
        let image = state.path("fs.ext4");
        husk_ok(
            &state.0,
            &["rootfs", "saved/app:v1", "-o", image.to_str().unwrap()],
        );
        check_rootfs(&image);
    }
}

#[test]
fn a_blob_larger_than_its_descriptor_is_refused_unread() {
    if !tools_present() {
        return;
    }
    let work = TempDir::new();
    let state = StateFs::new();
    let (blobs, index) = oci_layout_entries();
    for packing in [Packing::Plain, Packing::Zstd] {
        // The first layer's blob, under its own name, holds 2 GiB of
        // zeros; the manifest declares its real size.
        let path = work.path(&format!("oversize-{packing:?}.tar"));
        let mut out = TarOut::create(&path, packing);
        out.zero_entry(&blobs[0].0, BOMB);
        for (name, data) in &blobs[1..] {
            out.entry(name, data);
        }
        layout_tail(&mut out, &index);
        out.finish();
        assert_refused(&state, &path, "its descriptor declares");
    }
    // Declared right, the layout imports as a tarball, plain or gzip,
    // with `./` names as `tar -C dir .` writes them.
    for packing in [Packing::Plain, Packing::Gzip] {
        let path = work.path(&format!("layout-{packing:?}.tar"));
        let mut out = TarOut::create(&path, packing);
        for (name, data) in &blobs {
            out.entry(&format!("./{name}"), data);
        }
        layout_tail(&mut out, &index);
        out.finish();
        let state = TempDir::new();
        let out = husk_ok(&state.0, &["import", path.to_str().unwrap()]);
        assert!(out.starts_with("docker.io/oci/app:v1 sha256:"), "{out}");
        let image = state.path("fs.ext4");
        husk_ok(
            &state.0,
            &["rootfs", "oci/app:v1", "-o", image.to_str().unwrap()],
        );
        check_rootfs(&image);
    }
}

#[test]
fn other_platforms_count_as_declared_but_are_not_read() {
    if !tools_present() {
        return;
    }
    // A multi-arch layout: a nested index names an arm64 image, whose
    // 48 MiB layer (more than the undeclared slack) is in the archive
    // too, and the amd64 image of oci_layout_entries.
    let (blobs, index) = oci_layout_entries();
    let amd64: serde_json::Value = serde_json::from_slice(&index).unwrap();
    let mut amd64 = amd64["manifests"][0].clone();
    amd64["platform"] = json!({"os": "linux", "architecture": "amd64"});
    let arm_layer = 48u64 << 20;
    let arm_layer_digest = sha(&vec![0u8; arm_layer as usize]);
    let arm_config = config_json(std::slice::from_ref(&arm_layer_digest), "arm64");
    let arm_manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha(&arm_config), "size": arm_config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": arm_layer_digest, "size": arm_layer}],
    })
    .to_string()
    .into_bytes();
    let nested = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json",
             "digest": sha(&arm_manifest), "size": arm_manifest.len(),
             "platform": {"os": "linux", "architecture": "arm64"}},
            amd64,
        ],
    })
    .to_string()
    .into_bytes();
    let top = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": sha(&nested), "size": nested.len(),
            "annotations": {"org.opencontainers.image.ref.name": "docker.io/multi/app:1"},
        }],
    })
    .to_string()
    .into_bytes();
    let name = |digest: &str| format!("blobs/sha256/{}", &digest[7..]);
    let work = TempDir::new();
    let path = work.path("multi.tar.gz");
    let mut out = TarOut::create(&path, Packing::Gzip);
    out.zero_entry(&name(&arm_layer_digest), arm_layer);
    for data in [&arm_config, &arm_manifest, &nested] {
        out.entry(&name(&sha(data)), data);
    }
    for (n, data) in &blobs {
        out.entry(n, data);
    }
    layout_tail(&mut out, &top);
    out.finish();
    let state = StateFs::new();
    let (out, peak) = import_watched(&state, &path);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("docker.io/multi/app:1 "));
    // The arm64 layer was skipped, never written.
    assert!(peak < 32 << 20, "{peak}");
    let store = Store::open(&state.dir.0).unwrap();
    let record = store.get("multi/app:1").unwrap();
    assert_eq!(record.layers.len(), 2);
    let arm = husk::image::Digest::parse(&arm_layer_digest).unwrap();
    assert!(!store.has_blob(&arm));
    let image = work.path("fs.ext4");
    husk_ok(
        &state.dir.0,
        &["rootfs", "multi/app:1", "-o", image.to_str().unwrap()],
    );
    check_rootfs(&image);
}

#[test]
fn newer_docker_save_shapes_and_pipes_import() {
    if !tools_present() {
        return;
    }
    let work = TempDir::new();
    // Docker 25+: an OCI layout whose manifest.json names blobs.
    let (blobs, index) = oci_layout_entries();
    let names: Vec<&str> = blobs.iter().map(|(n, _)| n.as_str()).collect();
    let config = &blobs[2].1;
    let diff_ids = [sha(&base_layer()), sha(&top_layer())];
    assert_eq!(config, &config_json(&diff_ids, "amd64"));
    let manifest = json!([{
        "Config": names[2],
        "RepoTags": ["newer/app:1"],
        "Layers": [names[0], names[1]],
    }]);
    let path = work.path("newer.tar");
    let mut out = TarOut::create(&path, Packing::Plain);
    for (name, data) in &blobs {
        out.entry(name, data);
    }
    layout_tail(&mut out, &index);
    out.entry("manifest.json", manifest.to_string().as_bytes());
    out.finish();
    let state = TempDir::new();
    let out = husk_ok(&state.0, &["import", path.to_str().unwrap()]);
    assert!(out.starts_with("docker.io/newer/app:1 "), "{out}");

    // Legacy `docker save` links a repeated layer to its first copy.
    let base = base_layer();
    let config = config_json(&[sha(&base), sha(&base)], "amd64");
    let manifest = json!([{
        "Config": "c.json",
        "RepoTags": ["linked/app:1"],
        "Layers": ["l1/layer.tar", "l2/layer.tar"],
    }]);
    let path = work.path("linked.tar.gz");
    let mut out = TarOut::create(&path, Packing::Gzip);
    out.entry("l1/layer.tar", &base);
    out.symlink("l2/layer.tar", "../l1/layer.tar");
    out.entry("c.json", &config);
    out.entry("manifest.json", manifest.to_string().as_bytes());
    out.finish();
    husk_ok(&state.0, &["import", path.to_str().unwrap()]);
    let record = Store::open(&state.0).unwrap().get("linked/app:1").unwrap();
    assert_eq!(record.layers.len(), 2);
    assert_eq!(record.layers[0], record.layers[1]);

    // From a pipe, compressed.
    let saved = std::fs::read(docker_save(&work.0, false)).unwrap();
    let other = TempDir::new();
    let mut child = Command::new(common::husk_bin())
        .arg("image")
        .arg("--state-dir")
        .arg(&other.0)
        .args(["import", "/dev/stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let gz = gzip(&saved);
    let feeder = std::thread::spawn(move || stdin.write_all(&gz));
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("docker.io/saved/app:v1 "));
    let store = Store::open(&other.0).unwrap();
    assert_eq!(
        std::fs::read_dir(store.root().join("tmp")).unwrap().count(),
        0
    );
}

/// Pseudo-random bytes, control characters and all.
fn junk(n: usize, mut seed: u64) -> Vec<u8> {
    (0..n)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect()
}

/// One printable line.
fn assert_printable(err: &str) {
    let line = err.strip_suffix('\n').unwrap_or(err);
    assert!(
        !line.contains('\n') && line.chars().all(|c| !c.is_control()),
        "not one printable line: {err:?}"
    );
}

#[test]
fn errors_name_the_users_file_briefly_and_printably() {
    let work = TempDir::new();
    let state = TempDir::new();
    let neither = "is neither a docker save archive nor an OCI image layout";

    // A binary that is no archive, and gzip-compressed junk.
    let mut elf = b"\x7fELF\x02\x01\x01\0".to_vec();
    elf.extend(junk(64 * 1024, 7));
    let bin = work.path("a.out");
    std::fs::write(&bin, &elf).unwrap();
    let gz = work.path("junk.gz");
    std::fs::write(&gz, gzip(&junk(10_000, 9))).unwrap();
    let mut files = vec![
        (bin, "it is not a tar archive"),
        (gz, "it is not a gzip-compressed tar archive"),
        (PathBuf::from("/dev/urandom"), "it is not a tar archive"),
    ];
    if Path::new("/bin/ls").exists() {
        files.push((PathBuf::from("/bin/ls"), "it is not a tar archive"));
    }
    for (file, why) in &files {
        let out = husk(&state.0, &["import", file.to_str().unwrap()]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert_eq!(
            err,
            format!("husk image: {} {neither}: {why}\n", file.display())
        );
    }

    // Junk that starts like a gzip file.
    let fake = work.path("fake.tar.gz");
    let mut bytes = b"\x1f\x8b\x08\0".to_vec();
    bytes.extend(junk(10_000, 11));
    std::fs::write(&fake, bytes).unwrap();
    let out = husk(&state.0, &["import", fake.to_str().unwrap()]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_printable(&err);
    assert!(
        err.starts_with(&format!(
            "husk image: {} {neither}: it is not a gzip-compressed tar archive (",
            fake.display()
        )),
        "{err}"
    );

    // A name with an escape sequence in it is echoed escaped.
    let sneaky = work.path("x\x1b[2J\x07.tar");
    std::fs::write(&sneaky, junk(2048, 3)).unwrap();
    let out = husk(&state.0, &["import", sneaky.to_str().unwrap()]);
    let err = stderr(&out);
    assert_printable(&err);
    assert!(err.contains("x\\u{1b}[2J\\u{7}.tar"), "{err}");

    // A 4,000-character path that does not exist: cut short.
    let long = format!(
        "/nonexistent-husk/{}/end.tar",
        vec!["d".repeat(99); 40].join("/")
    );
    assert!(long.len() > 4000);
    let out = husk(&state.0, &["import", &long]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_printable(&err);
    assert!(err.len() < 400, "{} bytes: {err}", err.len());
    assert!(
        err.starts_with("husk image: cannot read /nonexistent-husk/ddd"),
        "{err}"
    );
    assert!(err.contains('…') && err.contains("/end.tar"), "{err}");

    // Inside an archive: the user's path, never a scratch path.
    if !tools_present() {
        return;
    }
    let saved = docker_save(&work.0, true);
    let out = husk(&state.0, &["import", saved.to_str().unwrap()]);
    let err = stderr(&out);
    assert_printable(&err);
    assert!(
        err.starts_with(&format!("husk image: cannot import {}: ", saved.display())),
        "{err}"
    );
    assert!(err.contains("does not match the config's diff_id"), "{err}");
    assert!(!err.contains("images/tmp"), "{err}");

    // A bad --tag is echoed briefly too.
    let good = docker_save(&work.0, false);
    let tag = format!("Bad\x1b{}", "x".repeat(3000));
    let out = husk(&state.0, &["import", good.to_str().unwrap(), "--tag", &tag]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_printable(&err);
    assert!(err.len() < 600, "{} bytes: {err}", err.len());
}

#[test]
fn every_image_argument_has_help() {
    for cmd in ["pull", "import", "export", "ls", "rm", "rootfs"] {
        let out = Command::new(common::husk_bin())
            .args(["image", cmd, "--help"])
            .output()
            .unwrap();
        assert!(out.status.success());
        let help = String::from_utf8_lossy(&out.stdout);
        // clap lists an argument's help after it on its line, or on the
        // next line, indented further; without help, the line is bare.
        let lines: Vec<&str> = help.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let t = line.trim_start();
            let indent = line.len() - t.len();
            if !(2..=6).contains(&indent) || !(t.starts_with('<') || t.starts_with('-')) {
                continue;
            }
            let same_line = t.trim_end().contains("  ");
            let next_line = lines.get(i + 1).is_some_and(|n| {
                let nt = n.trim_start();
                n.len() - nt.len() >= 10 && !nt.is_empty()
            });
            assert!(
                same_line || next_line,
                "`husk image {cmd}`: {t:?} has no help\n{help}"
            );
        }
    }
}
