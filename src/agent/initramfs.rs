//! The initramfs that carries `husk-agent` as `/init`.
//!
//! A gzip'd cpio "newc" archive, the format the kernel unpacks into its
//! rootfs before it runs `/init`. It holds only what the agent needs at
//! the first instruction of PID 1:
//!
//! | entry         | kind                       | mode |
//! |---------------|----------------------------|------|
//! | `dev`         | directory                  | 0755 |
//! | `dev/console` | character device 5:1       | 0600 |
//! | `newroot`     | directory                  | 0755 |
//! | `proc`        | directory                  | 0755 |
//! | `sys`         | directory                  | 0755 |
//! | `init`        | the agent binary           | 0755 |
//!
//! `/dev/console` is there so the kernel can open the console for PID 1
//! before devtmpfs is mounted over `/dev`. Everything is owned by 0:0 and
//! dated 0, so the archive depends on the agent's bytes alone: it is built
//! once per agent binary and cached under its SHA-256
//! ([`cached_initramfs`]).
//!
//! The kernel unpacks the archive into guest RAM, where `/init` stays for
//! the life of the VM: give it a stripped agent (a debug build with its
//! debug info is ~100 MB; stripped, ~3 MB, ~1.3 MB gzip'd).

use std::ffi::OsString;
use std::fs;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use cpio::newc;
use flate2::write::GzEncoder;
use flate2::Compression;
use sha2::{Digest as _, Sha256};

/// The agent's file name, beside `husk`.
pub const AGENT_BIN: &str = "husk-agent";
/// The environment variable that names the agent binary, overriding the
/// search beside the running executable.
pub const AGENT_ENV: &str = "HUSK_AGENT";
/// The cache's subdirectory of the state directory.
pub const CACHE_SUBDIR: &str = "initramfs";

/// What went wrong building, caching or finding the initramfs.
#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    #[error("cannot read the agent binary {path}: {source}")]
    ReadAgent { path: PathBuf, source: io::Error },
    #[error("the agent binary {path} is empty")]
    EmptyAgent { path: PathBuf },
    #[error("the agent binary {path} is {size} bytes; a cpio newc entry holds at most 4 GiB - 1")]
    AgentTooLarge { path: PathBuf, size: usize },
    #[error("${AGENT_ENV} names {path}, which is not a file")]
    AgentEnvNotAFile { path: PathBuf },
    #[error("cannot find {AGENT_BIN}: looked for {}; build it or set ${AGENT_ENV} to its path", list(.looked))]
    AgentNotFound { looked: Vec<PathBuf> },
    #[error("cannot find {AGENT_BIN}: cannot locate the running executable: {0}")]
    CurrentExe(io::Error),
    #[error("cannot create the initramfs cache directory {path}: {source}")]
    CacheDir { path: PathBuf, source: io::Error },
    #[error("cannot write the initramfs {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot copy the initramfs {from} to {to}: {source}")]
    Copy {
        from: PathBuf,
        to: PathBuf,
        source: io::Error,
    },
}

fn list(paths: &[PathBuf]) -> String {
    let v: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    v.join(" and ")
}

const S_IFDIR: u32 = 0o040000;
const S_IFCHR: u32 = 0o020000;
const S_IFREG: u32 = 0o100000;

/// One archive entry's kind.
enum Node<'a> {
    Dir,
    CharDev { major: u32, minor: u32 },
    File(&'a [u8]),
}

/// Writes the initramfs (gzip'd cpio newc) holding `agent` as `/init` to
/// `out`, and returns `out` once the gzip stream is finished.
pub fn write_initramfs<W: Write>(agent: &[u8], out: W) -> io::Result<W> {
    let gz = GzEncoder::new(out, Compression::default());
    write_cpio(agent, gz)?.finish()
}

/// The uncompressed newc archive of [`write_initramfs`].
pub fn write_cpio<W: Write>(agent: &[u8], mut out: W) -> io::Result<W> {
    // A parent comes before its children.
    let entries = [
        ("dev", 0o755, Node::Dir),
        ("dev/console", 0o600, Node::CharDev { major: 5, minor: 1 }),
        ("newroot", 0o755, Node::Dir),
        ("proc", 0o755, Node::Dir),
        ("sys", 0o755, Node::Dir),
        ("init", 0o755, Node::File(agent)),
    ];
    for (ino, (name, perm, node)) in (1..).zip(entries) {
        let b = newc::Builder::new(name).ino(ino).uid(0).gid(0).mtime(0);
        out = match node {
            Node::Dir => b.mode(S_IFDIR | perm).nlink(2).write(out, 0).finish()?,
            Node::CharDev { major, minor } => b
                .mode(S_IFCHR | perm)
                .rdev_major(major)
                .rdev_minor(minor)
                .write(out, 0)
                .finish()?,
            Node::File(data) => {
                let len = u32::try_from(data.len()).map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("{name} is too large for a cpio newc entry"),
                    )
                })?;
                let mut w = b.mode(S_IFREG | perm).write(out, len);
                w.write_all(data)?;
                w.finish()?
            }
        };
    }
    newc::trailer(out)
}

/// The initramfs for the agent binary at `agent`, built on first use and
/// kept as `<cache_dir>/initramfs/<sha256 of the agent>.cpio.gz`.
///
/// A cache miss writes a temporary file in the same directory and renames
/// it into place, so a reader never sees a partial archive and two
/// processes that race both end up with the same complete file. A hit
/// returns the path without touching the file.
pub fn cached_initramfs(agent: &Path, cache_dir: &Path) -> Result<PathBuf, InitramfsError> {
    let dir = cache_dir.join(CACHE_SUBDIR);
    let cached = |hex: &str| {
        let path = dir.join(format!("{hex}.cpio.gz"));
        fs::metadata(&path)
            .is_ok_and(|m| m.is_file())
            .then_some(path)
    };
    // The same agent file as last time (same inode, size and mtime): its
    // digest is known, and a hit costs a stat, not a read and a hash of
    // megabytes on every container start.
    let key = AgentKey::of(agent);
    if let Some(path) = key
        .as_ref()
        .and_then(|k| k.digest())
        .and_then(|h| cached(&h))
    {
        return Ok(path);
    }
    // One build at a time in this process: starts that come together wait
    // for the first one's archive instead of each building their own.
    static BUILDING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
    let bytes = read_agent(agent)?;
    let hex = format!("{:x}", Sha256::digest(&bytes));
    if let Some(k) = key {
        k.remember(&hex);
    }
    let path = dir.join(format!("{hex}.cpio.gz"));
    if let Some(path) = cached(&hex) {
        return Ok(path);
    }
    fs::create_dir_all(&dir).map_err(|source| InitramfsError::CacheDir {
        path: dir.clone(),
        source,
    })?;

    static N: AtomicU64 = AtomicU64::new(0);
    let tmp = dir.join(format!(
        ".{hex}.{}.{}.tmp",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let written = (|| {
        let f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        let f = write_initramfs(&bytes, BufWriter::new(f))?
            .into_inner()
            .map_err(io::IntoInnerError::into_error)?;
        // A crash must not leave a short file under the final name, which
        // every later boot would pick up as a hit.
        f.sync_all()?;
        fs::rename(&tmp, &path)
    })();
    if let Err(source) = written {
        let _ = fs::remove_file(&tmp);
        return Err(InitramfsError::Write { path, source });
    }
    Ok(path)
}

/// Writes the initramfs for `agent` to `output` (replacing it), by way of
/// the cache in `cache_dir`; returns the cached file's path.
pub fn export(agent: &Path, cache_dir: &Path, output: &Path) -> Result<PathBuf, InitramfsError> {
    let cached = cached_initramfs(agent, cache_dir)?;
    // Copying a file onto itself would truncate the cached archive.
    let same = match (fs::canonicalize(&cached), fs::canonicalize(output)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if !same {
        fs::copy(&cached, output).map_err(|source| InitramfsError::Copy {
            from: cached.clone(),
            to: output.to_path_buf(),
            source,
        })?;
    }
    Ok(cached)
}

/// What identifies an agent binary's contents without reading it: a
/// rebuilt agent is a new file or has a new modification time.
#[derive(Clone, PartialEq, Eq, Hash)]
struct AgentKey {
    path: PathBuf,
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

/// Digests of the agent binaries seen, by [`AgentKey`].
static DIGESTS: std::sync::Mutex<Vec<(AgentKey, String)>> = std::sync::Mutex::new(Vec::new());

impl AgentKey {
    fn of(agent: &Path) -> Option<AgentKey> {
        use std::os::unix::fs::MetadataExt;
        let m = fs::metadata(agent).ok()?;
        Some(AgentKey {
            path: agent.to_path_buf(),
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        })
    }

    fn digest(&self) -> Option<String> {
        let known = DIGESTS.lock().unwrap_or_else(|e| e.into_inner());
        known
            .iter()
            .find(|(k, _)| k == self)
            .map(|(_, h)| h.clone())
    }

    fn remember(self, hex: &str) {
        let mut known = DIGESTS.lock().unwrap_or_else(|e| e.into_inner());
        known.retain(|(k, _)| k.path != self.path);
        // A daemon uses one agent; tests and tools a few.
        if known.len() >= 16 {
            known.remove(0);
        }
        known.push((self, hex.to_string()));
    }
}

fn read_agent(agent: &Path) -> Result<Vec<u8>, InitramfsError> {
    let bytes = fs::read(agent).map_err(|source| InitramfsError::ReadAgent {
        path: agent.to_path_buf(),
        source,
    })?;
    if bytes.is_empty() {
        return Err(InitramfsError::EmptyAgent {
            path: agent.to_path_buf(),
        });
    }
    if u32::try_from(bytes.len()).is_err() {
        return Err(InitramfsError::AgentTooLarge {
            path: agent.to_path_buf(),
            size: bytes.len(),
        });
    }
    Ok(bytes)
}

/// The `husk-agent` binary: `$HUSK_AGENT` if set, else `husk-agent` beside
/// the running executable, else one directory up (cargo runs tests from
/// `target/<profile>/deps/`, with the binaries in `target/<profile>/`).
pub fn find_agent() -> Result<PathBuf, InitramfsError> {
    find_agent_with(std::env::var_os(AGENT_ENV), std::env::current_exe)
}

fn find_agent_with(
    env: Option<OsString>,
    current_exe: impl FnOnce() -> io::Result<PathBuf>,
) -> Result<PathBuf, InitramfsError> {
    if let Some(p) = env.filter(|p| !p.is_empty()) {
        let path = PathBuf::from(p);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(InitramfsError::AgentEnvNotAFile { path })
        };
    }
    let exe = current_exe().map_err(InitramfsError::CurrentExe)?;
    let beside = exe.parent();
    let mut looked = Vec::new();
    for dir in [beside, beside.and_then(Path::parent)]
        .into_iter()
        .flatten()
    {
        let candidate = dir.join(AGENT_BIN);
        if candidate.is_file() {
            return Ok(candidate);
        }
        looked.push(candidate);
    }
    Err(InitramfsError::AgentNotFound { looked })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let d =
                std::env::temp_dir().join(format!("husk-initramfs-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&d);
            fs::create_dir_all(&d).unwrap();
            Scratch(d)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[derive(Debug, PartialEq)]
    struct Entry {
        name: String,
        mode: u32,
        uid: u32,
        gid: u32,
        rdev: (u32, u32),
        data: Vec<u8>,
    }

    fn read_back(gz: &[u8]) -> Vec<Entry> {
        let mut cpio = Vec::new();
        flate2::read::GzDecoder::new(gz)
            .read_to_end(&mut cpio)
            .unwrap();
        assert_eq!(cpio.len() % 4, 0, "newc entries are 4-byte aligned");
        let mut rest: &[u8] = &cpio;
        let mut entries = Vec::new();
        loop {
            let mut r = newc::Reader::new(rest).unwrap();
            if r.entry().is_trailer() {
                break;
            }
            let e = r.entry().clone();
            let mut data = Vec::new();
            r.read_to_end(&mut data).unwrap();
            entries.push(Entry {
                name: e.name().to_string(),
                mode: e.mode(),
                uid: e.uid(),
                gid: e.gid(),
                rdev: (e.rdev_major(), e.rdev_minor()),
                data,
            });
            rest = r.finish().unwrap();
        }
        entries
    }

    fn fake_agent() -> Vec<u8> {
        // An odd length, so the data needs padding.
        (0..4099u32).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn archive_holds_the_agent_as_init_and_the_boot_nodes() {
        let agent = fake_agent();
        let gz = write_initramfs(&agent, Vec::new()).unwrap();
        assert_eq!(&gz[..2], &[0x1f, 0x8b], "gzip magic");
        let entries = read_back(&gz);
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            ["dev", "dev/console", "newroot", "proc", "sys", "init"]
        );
        for e in &entries {
            assert_eq!((e.uid, e.gid), (0, 0), "{}", e.name);
            match e.name.as_str() {
                "init" => {
                    assert_eq!(e.mode, 0o100755);
                    assert_eq!(e.data, agent);
                }
                "dev/console" => {
                    assert_eq!(e.mode, 0o020600);
                    assert_eq!(e.rdev, (5, 1));
                    assert!(e.data.is_empty());
                }
                _ => {
                    assert_eq!(e.mode, 0o040755, "{}", e.name);
                    assert!(e.data.is_empty());
                }
            }
        }
    }

    #[test]
    fn archive_is_reproducible() {
        let agent = fake_agent();
        let a = write_initramfs(&agent, Vec::new()).unwrap();
        let b = write_initramfs(&agent, Vec::new()).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn cache_hit_does_not_rewrite() {
        let dir = Scratch::new("cache");
        let agent = dir.0.join("husk-agent");
        fs::write(&agent, fake_agent()).unwrap();
        let cache = dir.0.join("state");

        let first = cached_initramfs(&agent, &cache).unwrap();
        let hex = format!("{:x}", Sha256::digest(fake_agent()));
        assert_eq!(
            first,
            cache.join("initramfs").join(format!("{hex}.cpio.gz"))
        );
        assert_eq!(read_back(&fs::read(&first).unwrap()).len(), 6);

        // Mark the cached file: a hit must hand it back untouched.
        fs::write(&first, b"marker").unwrap();
        let second = cached_initramfs(&agent, &cache).unwrap();
        assert_eq!(second, first);
        assert_eq!(fs::read(&second).unwrap(), b"marker");

        // No temporary files are left behind.
        let files: Vec<_> = fs::read_dir(cache.join("initramfs"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(files.len(), 1, "{files:?}");

        // A different agent is a different entry.
        fs::write(&agent, b"another agent").unwrap();
        let third = cached_initramfs(&agent, &cache).unwrap();
        assert_ne!(third, first);
        assert_eq!(
            read_back(&fs::read(&third).unwrap())[5].data,
            b"another agent"
        );
        // Rewritten in place with the same length: the new modification
        // time tells it apart from the digest remembered for the path.
        fs::write(&agent, b"a third agent").unwrap();
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
        fs::File::options()
            .write(true)
            .open(&agent)
            .unwrap()
            .set_modified(later)
            .unwrap();
        let fourth = cached_initramfs(&agent, &cache).unwrap();
        assert_ne!(fourth, third);
        assert_eq!(
            read_back(&fs::read(&fourth).unwrap())[5].data,
            b"a third agent"
        );
    }

    #[test]
    fn racing_builders_agree() {
        let dir = Scratch::new("race");
        let agent = dir.0.join("husk-agent");
        fs::write(&agent, fake_agent()).unwrap();
        let cache = dir.0.join("state");
        let paths: Vec<PathBuf> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| s.spawn(|| cached_initramfs(&agent, &cache).unwrap()))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(paths.windows(2).all(|w| w[0] == w[1]));
        let expected = write_initramfs(&fake_agent(), Vec::new()).unwrap();
        assert_eq!(fs::read(&paths[0]).unwrap(), expected);
        assert_eq!(fs::read_dir(cache.join("initramfs")).unwrap().count(), 1);
    }

    #[test]
    fn export_copies_the_cached_archive() {
        let dir = Scratch::new("export");
        let agent = dir.0.join("husk-agent");
        fs::write(&agent, fake_agent()).unwrap();
        let out = dir.0.join("initrd.gz");
        fs::write(&out, b"old contents, replaced").unwrap();
        let cached = export(&agent, &dir.0.join("state"), &out).unwrap();
        assert_eq!(fs::read(&out).unwrap(), fs::read(&cached).unwrap());
        // Onto the cached file itself: left whole.
        export(&agent, &dir.0.join("state"), &cached).unwrap();
        assert_eq!(fs::read(&out).unwrap(), fs::read(&cached).unwrap());
    }

    #[test]
    fn missing_or_empty_agent_is_a_clear_error() {
        let dir = Scratch::new("missing");
        let agent = dir.0.join("no-such-agent");
        let e = cached_initramfs(&agent, &dir.0).unwrap_err();
        assert!(matches!(e, InitramfsError::ReadAgent { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.starts_with("cannot read the agent binary ") && msg.contains("no-such-agent"),
            "{msg}"
        );
        assert!(!dir.0.join(CACHE_SUBDIR).exists(), "nothing cached");

        fs::write(&agent, b"").unwrap();
        let e = cached_initramfs(&agent, &dir.0).unwrap_err();
        assert!(e.to_string().contains("is empty"), "{e}");
    }

    #[test]
    fn find_agent_prefers_the_environment() {
        let dir = Scratch::new("find-env");
        let agent = dir.0.join("my-agent");
        fs::write(&agent, b"x").unwrap();
        let exe = || -> io::Result<PathBuf> { panic!("not consulted when $HUSK_AGENT is set") };
        assert_eq!(
            find_agent_with(Some(agent.clone().into()), exe).unwrap(),
            agent
        );

        let missing = dir.0.join("nope");
        let e = find_agent_with(Some(missing.into()), exe).unwrap_err();
        assert!(e.to_string().contains("$HUSK_AGENT names"), "{e}");
        assert!(e.to_string().contains("nope"), "{e}");
    }

    #[test]
    fn find_agent_looks_beside_the_executable_then_one_up() {
        let dir = Scratch::new("find-exe");
        let deps = dir.0.join("debug/deps");
        fs::create_dir_all(&deps).unwrap();
        let exe = deps.join("initramfs-0123");
        let beside = deps.join(AGENT_BIN);
        let above = dir.0.join("debug").join(AGENT_BIN);

        let e = find_agent_with(None, || Ok(exe.clone())).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(&beside.display().to_string()), "{msg}");
        assert!(msg.contains(&above.display().to_string()), "{msg}");
        assert!(msg.contains("HUSK_AGENT"), "{msg}");

        fs::write(&above, b"x").unwrap();
        assert_eq!(find_agent_with(None, || Ok(exe.clone())).unwrap(), above);
        fs::write(&beside, b"x").unwrap();
        assert_eq!(find_agent_with(None, || Ok(exe.clone())).unwrap(), beside);
        // An empty $HUSK_AGENT counts as unset.
        assert_eq!(
            find_agent_with(Some(OsString::new()), || Ok(exe.clone())).unwrap(),
            beside
        );
    }
}
