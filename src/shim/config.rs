//! The shim's configuration: `/etc/husk/shim.toml` (or the file
//! `$HUSK_SHIM_CONFIG` or the runtime options' `ConfigPath` name), and
//! the pod annotations that size one pod's VM.
//!
//! ```toml
//! kernel = "/var/lib/husk/kernels/vmlinux"
//! backend = "auto"        # kvm, tcg or auto
//! vcpus = 1
//! memory_mib = 256
//! jail = false            # run the VMM under husk's jail (a uid of its own)
//! state_dir = "/run/husk/shim"
//! agent = "/usr/local/bin/husk-agent"   # default: beside the shim
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::daemon::backend::BackendKind;

/// Where the configuration is read from when nothing names another file.
pub const DEFAULT_PATH: &str = "/etc/husk/shim.toml";
/// Names another configuration file (containerd passes its environment
/// on to the shims it starts).
pub const CONFIG_ENV: &str = "HUSK_SHIM_CONFIG";
/// Pod annotations: the pod VM's vCPUs and memory (MiB).
pub const ANNOTATION_VCPUS: &str = "io.husk.vcpus";
pub const ANNOTATION_MEMORY: &str = "io.husk.memory_mib";
/// CRI's annotations that group a pod's containers.
pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {err}")]
    Read { path: String, err: std::io::Error },
    #[error("{path}: {err}")]
    Parse { path: String, err: String },
    #[error("annotation {name}: {why}")]
    Annotation { name: &'static str, why: String },
}

/// Which backend runs the pods' VMs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    Kvm,
    Tcg,
    #[default]
    Auto,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShimConfig {
    pub kernel: PathBuf,
    pub backend: BackendChoice,
    pub vcpus: u8,
    pub memory_mib: u32,
    /// Jail the VMM (kvm: `husk jailer`; tcg: QEMU and its helpers as a
    /// uid of their own).
    pub jail: bool,
    /// Pods' run directories, shares and the shims' sockets.
    pub state_dir: PathBuf,
    /// The `husk-agent` binary put in the guest's initramfs; default: the
    /// one beside the shim.
    pub agent: Option<PathBuf>,
}

impl Default for ShimConfig {
    fn default() -> Self {
        ShimConfig {
            kernel: PathBuf::from("/var/lib/husk/kernels/vmlinux"),
            backend: BackendChoice::Auto,
            vcpus: 1,
            memory_mib: 256,
            jail: false,
            state_dir: PathBuf::from("/run/husk/shim"),
            agent: None,
        }
    }
}

impl ShimConfig {
    /// `path`, or `$HUSK_SHIM_CONFIG`, or [`DEFAULT_PATH`]; a missing
    /// default file means the defaults, a missing named one is an error.
    pub fn load(path: Option<&Path>) -> Result<ShimConfig, ConfigError> {
        let named = path
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os(CONFIG_ENV).map(PathBuf::from))
            .filter(|p| !p.as_os_str().is_empty());
        let path = named.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_PATH));
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && named.is_none() => {
                return Ok(ShimConfig::default())
            }
            Err(err) => {
                return Err(ConfigError::Read {
                    path: path.display().to_string(),
                    err,
                })
            }
        };
        Self::parse(&text).map_err(|err| ConfigError::Parse {
            path: path.display().to_string(),
            err,
        })
    }

    pub fn parse(text: &str) -> Result<ShimConfig, String> {
        let c: ShimConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        if c.vcpus == 0 || c.memory_mib < 64 {
            return Err("vcpus must be at least 1 and memory_mib at least 64".into());
        }
        Ok(c)
    }

    /// The backend to run: as configured, `auto` decided for this host.
    pub fn backend(&self) -> (BackendKind, Option<String>) {
        match self.backend {
            BackendChoice::Kvm => (BackendKind::Kvm, None),
            BackendChoice::Tcg => (BackendKind::Tcg, None),
            BackendChoice::Auto => crate::daemon::backend::auto(&self.kernel),
        }
    }

    /// A pod's vCPUs and memory: the annotations', else the defaults.
    pub fn pod_size(&self, ann: &HashMap<String, String>) -> Result<(u8, u32), ConfigError> {
        fn get<T: std::str::FromStr>(
            ann: &HashMap<String, String>,
            name: &'static str,
            ok: impl Fn(&T) -> bool,
        ) -> Result<Option<T>, ConfigError> {
            let Some(v) = ann.get(name) else {
                return Ok(None);
            };
            match v.trim().parse::<T>() {
                Ok(n) if ok(&n) => Ok(Some(n)),
                _ => Err(ConfigError::Annotation {
                    name,
                    why: format!("{:?} is not a valid value", crate::text::echo(v)),
                }),
            }
        }
        let vcpus = get::<u8>(ann, ANNOTATION_VCPUS, |n| (1..=32).contains(n))?;
        let mem = get::<u32>(ann, ANNOTATION_MEMORY, |n| (64..=65536).contains(n))?;
        Ok((vcpus.unwrap_or(self.vcpus), mem.unwrap_or(self.memory_mib)))
    }
}

/// A protobuf varint at `b[*i..]`.
fn varint(b: &[u8], i: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let x = *b.get(*i)?;
        *i += 1;
        v |= u64::from(x & 0x7f) << shift;
        if x & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// The length-delimited fields of a protobuf message, as (number,
/// bytes); `None` when it does not parse.
fn delimited_fields(b: &[u8]) -> Option<Vec<(u64, &[u8])>> {
    let mut i = 0;
    let mut out = Vec::new();
    while i < b.len() {
        let tag = varint(b, &mut i)?;
        match tag & 7 {
            0 => {
                varint(b, &mut i)?;
            }
            1 => i += 8,
            5 => i += 4,
            2 => {
                let n = usize::try_from(varint(b, &mut i)?).ok()?;
                let end = i.checked_add(n)?;
                out.push((tag >> 3, b.get(i..end)?));
                i = end;
            }
            _ => return None,
        }
    }
    (i == b.len()).then_some(out)
}

/// The protobuf type of the runtime options containerd passes to a
/// runtime that is not runc's (Kata's `ConfigPath`): `type_url` = 1,
/// `config_path` = 2.
pub const RUNTIME_OPTIONS: &str = "runtimeoptions.v1.Options";

/// The `ConfigPath` of runtime options (an `Any`'s type URL and value):
/// containerd's `[...containerd.runtimes.husk.options] ConfigPath = ...`,
/// or `ctr run --runtime-config-path`.
pub fn options_config_path(type_url: &str, value: &[u8]) -> Option<PathBuf> {
    if type_url.rsplit('/').next() != Some(RUNTIME_OPTIONS) {
        return None;
    }
    let (_, path) = delimited_fields(value)?
        .into_iter()
        .find(|(n, _)| *n == 2)?;
    let path = std::str::from_utf8(path).ok()?;
    (!path.is_empty()).then(|| PathBuf::from(path))
}

/// The same, from a serialized `Any` (what containerd writes to the
/// shim's stdin for `start`).
pub fn any_config_path(any: &[u8]) -> Option<PathBuf> {
    let fields = delimited_fields(any)?;
    let field = |n| fields.iter().find(|(f, _)| *f == n).map(|(_, v)| *v);
    let type_url = std::str::from_utf8(field(1)?).ok()?;
    options_config_path(type_url, field(2).unwrap_or_default())
}

/// How a container belongs to a pod, from its CRI annotations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// Starts the pod's VM: CRI's sandbox (pause) container, or a
    /// container without CRI annotations (`ctr run`), a pod of its own.
    Sandbox,
    /// Runs in the VM of the sandbox named.
    Container { sandbox: String },
}

pub fn role(ann: &HashMap<String, String>) -> Role {
    match (
        ann.get(CONTAINER_TYPE).map(String::as_str),
        ann.get(SANDBOX_ID),
    ) {
        (Some("container"), Some(sandbox)) if !sandbox.is_empty() => Role::Container {
            sandbox: sandbox.clone(),
        },
        _ => Role::Sandbox,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_file_sets_what_it_names() {
        let c = ShimConfig::parse(
            "kernel = \"/k\"\nbackend = \"tcg\"\nvcpus = 2\nmemory_mib = 512\njail = true\n",
        )
        .unwrap();
        assert_eq!(c.kernel, PathBuf::from("/k"));
        assert_eq!(c.backend, BackendChoice::Tcg);
        assert_eq!((c.vcpus, c.memory_mib, c.jail), (2, 512, true));
        assert_eq!(c.state_dir, ShimConfig::default().state_dir);
        assert!(ShimConfig::parse("vcpu = 2").is_err(), "unknown keys");
        assert!(ShimConfig::parse("backend = \"xen\"").is_err());
        assert!(ShimConfig::parse("vcpus = 0").is_err());
        assert_eq!(ShimConfig::parse("").unwrap(), ShimConfig::default());
    }

    #[test]
    fn a_named_file_must_exist() {
        let e = ShimConfig::load(Some(Path::new("/nonexistent/shim.toml"))).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/shim.toml"), "{e}");
    }

    #[test]
    fn the_runtime_options_name_the_config_file() {
        // runtimeoptions.v1.Options{config_path: "/etc/husk/b.toml"},
        // as Go's proto.Marshal writes it.
        let mut value = vec![0x12, 16];
        value.extend_from_slice(b"/etc/husk/b.toml");
        assert_eq!(
            options_config_path(RUNTIME_OPTIONS, &value),
            Some(PathBuf::from("/etc/husk/b.toml"))
        );
        // Another type (runc's options), or no path: none.
        assert_eq!(
            options_config_path("containerd.runc.v1.Options", &value),
            None
        );
        assert_eq!(options_config_path(RUNTIME_OPTIONS, &[0x0a, 1, b'x']), None);
        assert_eq!(
            options_config_path(RUNTIME_OPTIONS, &[0x12, 40, b'x']),
            None
        );
        // The Any around it.
        let mut any = vec![0x0a, RUNTIME_OPTIONS.len() as u8];
        any.extend_from_slice(RUNTIME_OPTIONS.as_bytes());
        any.extend_from_slice(&[0x12, value.len() as u8]);
        any.extend_from_slice(&value);
        assert_eq!(
            any_config_path(&any),
            Some(PathBuf::from("/etc/husk/b.toml"))
        );
        assert_eq!(any_config_path(b""), None);
    }

    #[test]
    fn annotations_size_the_pod() {
        let c = ShimConfig::default();
        let mut ann = HashMap::new();
        assert_eq!(c.pod_size(&ann).unwrap(), (1, 256));
        ann.insert(ANNOTATION_VCPUS.into(), "2".into());
        ann.insert(ANNOTATION_MEMORY.into(), "384".into());
        assert_eq!(c.pod_size(&ann).unwrap(), (2, 384));
        ann.insert(ANNOTATION_MEMORY.into(), "lots".into());
        assert!(c.pod_size(&ann).is_err());
        ann.insert(ANNOTATION_MEMORY.into(), "16".into());
        assert!(c.pod_size(&ann).is_err());
    }

    #[test]
    fn cri_annotations_group_containers() {
        let mut ann = HashMap::new();
        assert_eq!(role(&ann), Role::Sandbox);
        ann.insert(CONTAINER_TYPE.into(), "sandbox".into());
        ann.insert(SANDBOX_ID.into(), "p1".into());
        assert_eq!(role(&ann), Role::Sandbox);
        ann.insert(CONTAINER_TYPE.into(), "container".into());
        assert_eq!(
            role(&ann),
            Role::Container {
                sandbox: "p1".into()
            }
        );
    }
}
