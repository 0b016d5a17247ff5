//! Volumes and mounts, as the API and the CLI speak of them: a
//! container's [`Mount`]s (`-v`, `--mount`, `--tmpfs`, parsed here as
//! `docker run` parses them), and the volumes of `/v1/volumes`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

fn is_false(b: &bool) -> bool {
    !*b
}

/// What a mount mounts.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MountKind {
    /// A named or anonymous volume: an ext4 disk of the daemon's.
    Volume,
    /// A host directory, shared over virtio-fs.
    Bind,
    /// A new tmpfs in the guest's memory.
    Tmpfs,
}

impl MountKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            MountKind::Volume => "volume",
            MountKind::Bind => "bind",
            MountKind::Tmpfs => "tmpfs",
        }
    }
}

/// One of a container's mounts.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Mount {
    #[serde(rename = "type")]
    pub kind: MountKind,
    /// volume: its name (unset: a new anonymous volume; a missing named
    /// one is created); bind: an absolute host directory; tmpfs: unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// An absolute path in the container.
    pub target: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub read_only: bool,
    /// tmpfs: its size in bytes (the kernel's default, half the VM's
    /// memory, when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmpfs_size: Option<u64>,
    /// tmpfs: its root's permission bits (default 1777).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmpfs_mode: Option<u32>,
    /// tmpfs: mount flags among `noexec`, `nosuid`, `nodev` (and their
    /// opposites, which are the default).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tmpfs_options: Vec<String>,
}

impl Mount {
    pub fn new(kind: MountKind, source: Option<String>, target: &str) -> Mount {
        Mount {
            kind,
            source,
            target: target.to_string(),
            read_only: false,
            tmpfs_size: None,
            tmpfs_mode: None,
            tmpfs_options: Vec::new(),
        }
    }

    /// `-v SOURCE:TARGET[:OPTIONS]` or `-v TARGET` (an anonymous volume).
    /// A source that starts with `/`, `./` or `../` (or is `.`) is a host
    /// directory, made absolute against `cwd`; any other is a volume name.
    /// Options: `ro`, `rw`, and `z`/`Z` (accepted, meaningless here).
    pub fn parse_volume_flag(s: &str, cwd: &std::path::Path) -> Result<Mount, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let (source, target, opts) = match parts.as_slice() {
            [t] => (None, *t, None),
            [s, t] => (Some(*s), *t, None),
            [s, t, o] => (Some(*s), *t, Some(*o)),
            _ => return Err(format!("invalid volume {s:?}: use [SOURCE:]TARGET[:ro]")),
        };
        let kind = match source {
            Some(src) if is_host_path(src) => MountKind::Bind,
            _ => MountKind::Volume,
        };
        let source = source.map(|src| match kind {
            MountKind::Bind => absolute(src, cwd),
            _ => src.to_string(),
        });
        if source.as_deref() == Some("") {
            return Err(format!("invalid volume {s:?}: the source is empty"));
        }
        let mut m = Mount::new(kind, source, target);
        for o in opts.into_iter().flat_map(|o| o.split(',')) {
            match o {
                "ro" | "readonly" => m.read_only = true,
                "rw" | "z" | "Z" => {}
                other => return Err(format!("invalid volume option {other:?}: use ro or rw")),
            }
        }
        Ok(m)
    }

    /// `--mount type=volume|bind|tmpfs,source=...,target=...,readonly,
    /// tmpfs-size=...,tmpfs-mode=...`.
    pub fn parse_mount_flag(s: &str, cwd: &std::path::Path) -> Result<Mount, String> {
        let mut kind = MountKind::Volume;
        let (mut source, mut target) = (None, None);
        let mut m = Mount::new(kind, None, "");
        for field in s.split(',') {
            let (k, v) = field.split_once('=').unwrap_or((field, ""));
            match k {
                "type" => {
                    kind = match v {
                        "volume" => MountKind::Volume,
                        "bind" => MountKind::Bind,
                        "tmpfs" => MountKind::Tmpfs,
                        _ => {
                            return Err(format!("invalid mount type {v:?}: volume, bind or tmpfs"))
                        }
                    }
                }
                "source" | "src" => source = Some(v.to_string()),
                "target" | "destination" | "dst" => target = Some(v.to_string()),
                "readonly" | "ro" => {
                    m.read_only = matches!(v, "" | "true" | "1");
                }
                "tmpfs-size" => m.tmpfs_size = Some(parse_size(v)?),
                "tmpfs-mode" => m.tmpfs_mode = Some(parse_mode(v)?),
                _ => return Err(format!("invalid mount field {k:?}")),
            }
        }
        m.kind = kind;
        m.target = target.ok_or_else(|| format!("invalid mount {s:?}: target= is required"))?;
        m.source = match (kind, source) {
            (MountKind::Bind, Some(src)) => Some(absolute(&src, cwd)),
            (MountKind::Bind, None) => return Err("a bind mount needs source=".into()),
            (MountKind::Tmpfs, Some(_)) => return Err("a tmpfs mount takes no source".into()),
            (_, src) => src.filter(|s| !s.is_empty()),
        };
        if kind != MountKind::Tmpfs && (m.tmpfs_size.is_some() || m.tmpfs_mode.is_some()) {
            return Err("tmpfs-size and tmpfs-mode are for type=tmpfs".into());
        }
        Ok(m)
    }

    /// `--tmpfs TARGET[:OPTIONS]`, options as mount(8) writes them:
    /// `size=64m`, `mode=1777`, `ro`, `rw`, `noexec`, `exec`, `nosuid`,
    /// `suid`, `nodev`, `dev`.
    pub fn parse_tmpfs_flag(s: &str) -> Result<Mount, String> {
        let (target, opts) = s.split_once(':').unwrap_or((s, ""));
        let mut m = Mount::new(MountKind::Tmpfs, None, target);
        for o in opts.split(',').filter(|o| !o.is_empty()) {
            match o.split_once('=') {
                Some(("size", v)) => m.tmpfs_size = Some(parse_size(v)?),
                Some(("mode", v)) => m.tmpfs_mode = Some(parse_mode(v)?),
                None if o == "ro" => m.read_only = true,
                None if o == "rw" => m.read_only = false,
                None if TMPFS_FLAGS.contains(&o) => m.tmpfs_options.push(o.to_string()),
                _ => return Err(format!("invalid tmpfs option {o:?}")),
            }
        }
        Ok(m)
    }
}

/// The tmpfs flags a mount may name.
pub const TMPFS_FLAGS: [&str; 6] = ["noexec", "exec", "nosuid", "suid", "nodev", "dev"];

fn is_host_path(s: &str) -> bool {
    s.starts_with('/') || s.starts_with("./") || s.starts_with("../") || s == "." || s == ".."
}

fn absolute(s: &str, cwd: &std::path::Path) -> String {
    if s.starts_with('/') {
        s.to_string()
    } else {
        cwd.join(s).to_string_lossy().into_owned()
    }
}

/// `1024`, `64k`, `512m`, `10g` (powers of 1024; a trailing `b` or `ib`
/// is allowed).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    let t = t
        .strip_suffix("ib")
        .or_else(|| t.strip_suffix('b'))
        .unwrap_or(&t);
    let (num, shift) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 10),
        Some('m') => (&t[..t.len() - 1], 20),
        Some('g') => (&t[..t.len() - 1], 30),
        Some('t') => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1u64 << shift))
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("invalid size {s:?}: a number, optionally with k, m, g or t"))
}

fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8)
        .ok()
        .filter(|&m| m <= 0o7777)
        .ok_or_else(|| format!("invalid mode {s:?}: octal, at most 7777"))
}

/// `POST /v1/volumes`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeCreateRequest {
    /// A new anonymous volume's 64 hex digits when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The filesystem's size in bytes (default 10 GiB; the disk file is
    /// sparse, so only what is written takes host space).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// `POST /v1/volumes/{name}/resize`: grow a volume no running container
/// uses.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeResizeRequest {
    pub size: u64,
}

/// A volume, as the API shows it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, utoipa::ToSchema)]
pub struct VolumeView {
    pub name: String,
    /// Always `local`: an ext4 disk image in the daemon's state directory.
    pub driver: String,
    /// The disk image on the host.
    pub disk: String,
    /// The filesystem's size in bytes.
    pub size: u64,
    /// Bytes the disk image takes on the host.
    pub used: u64,
    pub created_ms: u64,
    /// Made for a container (`-v /path`, an image's VOLUME), not named.
    #[serde(default, skip_serializing_if = "is_false")]
    pub anonymous: bool,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Containers that mount it, running or not (ids).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<String>,
}

/// `POST /v1/volumes/prune`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, utoipa::ToSchema)]
pub struct VolumePruneReport {
    pub removed: Vec<String>,
    pub reclaimed: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn volume_flags_read_as_docker_reads_them() {
        let cwd = Path::new("/home/u/proj");
        let m = Mount::parse_volume_flag("data:/data", cwd).unwrap();
        assert_eq!(
            (m.kind, m.source.as_deref(), m.target.as_str(), m.read_only),
            (MountKind::Volume, Some("data"), "/data", false)
        );
        let m = Mount::parse_volume_flag("./src:/src:ro", cwd).unwrap();
        assert_eq!(m.kind, MountKind::Bind);
        assert_eq!(m.source.as_deref(), Some("/home/u/proj/./src"));
        assert!(m.read_only);
        let m = Mount::parse_volume_flag("/cache", cwd).unwrap();
        assert_eq!((m.kind, m.source), (MountKind::Volume, None));
        for bad in ["a:b:c:d", "data:/d:rx", ":/d"] {
            assert!(Mount::parse_volume_flag(bad, cwd).is_err(), "{bad}");
        }
    }

    #[test]
    fn mount_and_tmpfs_flags() {
        let cwd = Path::new("/w");
        let m = Mount::parse_mount_flag("type=bind,source=/srv,target=/s,readonly", cwd).unwrap();
        assert_eq!((m.kind, m.read_only), (MountKind::Bind, true));
        let m = Mount::parse_mount_flag("type=tmpfs,target=/t,tmpfs-size=64m,tmpfs-mode=700", cwd)
            .unwrap();
        assert_eq!((m.tmpfs_size, m.tmpfs_mode), (Some(64 << 20), Some(0o700)));
        assert!(Mount::parse_mount_flag("type=bind,target=/s", cwd).is_err());
        assert!(Mount::parse_mount_flag("type=volume,source=v", cwd).is_err());
        let m = Mount::parse_tmpfs_flag("/run/x:size=1g,mode=1777,noexec,ro").unwrap();
        assert_eq!(m.tmpfs_size, Some(1 << 30));
        assert_eq!(m.tmpfs_options, vec!["noexec"]);
        assert!(m.read_only);
        assert!(Mount::parse_tmpfs_flag("/t:size=lots").is_err());
        assert_eq!(parse_size("10G").unwrap(), 10 << 30);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert!(parse_size("0").is_err());
        assert!(parse_size("99999999999t").is_err());
    }
}
