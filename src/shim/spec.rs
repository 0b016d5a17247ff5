//! The OCI runtime spec (the bundle's `config.json`) as the guest agent
//! runs it: a `PodContainer` for a container, a `ProcessSpec` for an
//! exec. Host paths the guest cannot see (bind mounts' sources) are put
//! into the pod's share first: a file is copied, a directory is bound.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxResources, Process, Spec};

use crate::agent::guest::pod::POD_DIR;
use crate::agent::protocol::{OciMount, PodContainer, ProcessSpec, Resources, WindowSize};

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("the spec has no process")]
    NoProcess,
    #[error("bind mount {dest}: {err}")]
    Bind { dest: String, err: String },
}

/// The spec's annotations.
pub fn annotations(spec: &Spec) -> HashMap<String, String> {
    spec.annotations().clone().unwrap_or_default()
}

/// A process of the spec for the agent: its full environment, and its
/// user as `uid:gid`.
pub fn process(p: &Process) -> ProcessSpec {
    let user = p.user();
    ProcessSpec {
        args: p.args().clone().unwrap_or_default(),
        env: p.env().clone().unwrap_or_default(),
        working_dir: Some(p.cwd().to_string_lossy().into_owned()).filter(|c| !c.is_empty()),
        user: Some(format!("{}:{}", user.uid(), user.gid())),
        tty: p.terminal().unwrap_or(false),
        window: p.console_size().map(|b| WindowSize {
            rows: b.height().min(u16::MAX as u64) as u16,
            cols: b.width().min(u16::MAX as u64) as u16,
        }),
    }
}

/// Container `name` of the pod whose share is `share` (the host's side
/// of [`POD_DIR`]). Bind mount sources are staged under
/// `share/<name>/mnt/<n>`; `bind_dir` binds a host directory there.
pub fn container(
    name: &str,
    spec: &Spec,
    share: &Path,
    join: Option<String>,
    bind_dir: impl Fn(&Path, &Path) -> Result<(), String>,
) -> Result<PodContainer, SpecError> {
    let p = spec.process().as_ref().ok_or(SpecError::NoProcess)?;
    let mut mounts = Vec::new();
    for (n, m) in spec.mounts().iter().flatten().enumerate() {
        let dest = m.destination().to_string_lossy().into_owned();
        let options = m.options().clone().unwrap_or_default();
        let kind = m.typ().clone().unwrap_or_default();
        let source = m
            .source()
            .as_ref()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let bind = kind == "bind" || options.iter().any(|o| o == "bind" || o == "rbind");
        let source = if bind {
            stage(name, n, Path::new(&source), share, &bind_dir).map_err(|err| SpecError::Bind {
                dest: dest.clone(),
                err,
            })?
        } else {
            source
        };
        mounts.push(OciMount {
            destination: dest,
            kind,
            source,
            options,
        });
    }
    let resources = spec
        .linux()
        .as_ref()
        .and_then(|l| l.resources().as_ref())
        .map(resources)
        .unwrap_or_default();
    Ok(PodContainer {
        name: name.to_string(),
        process: process(p),
        groups: p.user().additional_gids().clone().unwrap_or_default(),
        hostname: spec.hostname().clone().filter(|h| !h.is_empty()),
        readonly_root: spec
            .root()
            .as_ref()
            .and_then(|r| r.readonly())
            .unwrap_or(false),
        mounts,
        resources,
        join,
    })
}

/// OCI `linux.resources` as the agent applies them (memory limit, CPU
/// quota, period and shares, pids limit; the rest is not applied).
pub fn resources(r: &LinuxResources) -> Resources {
    let mut resources = Resources::default();
    if let Some(m) = r.memory() {
        resources.memory_max = m.limit();
    }
    if let Some(c) = r.cpu() {
        resources.cpu_quota = c.quota();
        resources.cpu_period = c.period();
        resources.cpu_shares = c.shares();
    }
    if let Some(pids) = r.pids() {
        resources.pids_max = Some(pids.limit());
    }
    resources
}

/// Puts the source of bind mount `n` where the guest sees it: a file
/// copied, a directory bound; returns its path in the guest.
fn stage(
    name: &str,
    n: usize,
    source: &Path,
    share: &Path,
    bind_dir: &impl Fn(&Path, &Path) -> Result<(), String>,
) -> Result<String, String> {
    let rel = PathBuf::from(name).join("mnt").join(n.to_string());
    let host = share.join(&rel);
    let meta = std::fs::metadata(source).map_err(|e| format!("{}: {e}", source.display()))?;
    if let Some(parent) = host.parent() {
        std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
    }
    if meta.is_dir() {
        std::fs::create_dir_all(&host).map_err(|e| e.to_string())?;
        bind_dir(source, &host)?;
    } else {
        std::fs::copy(source, &host).map_err(|e| format!("{}: {e}", source.display()))?;
    }
    Ok(format!("{POD_DIR}/{}", rel.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = r#"{
        "ociVersion": "1.0.2",
        "process": {"terminal": false, "user": {"uid": 1000, "gid": 100, "additionalGids": [5]},
                    "args": ["sh", "-c", "echo hi"], "env": ["PATH=/bin", "A=1"], "cwd": "/w"},
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "box",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/etc/hostname", "type": "bind", "source": "HOSTFILE", "options": ["rbind", "ro"]}
        ],
        "annotations": {"io.kubernetes.cri.container-type": "container"},
        "linux": {"resources": {"memory": {"limit": 67108864}, "cpu": {"quota": 50000, "period": 100000, "shares": 512}, "pids": {"limit": 64}}}
    }"#;

    #[test]
    fn a_spec_becomes_a_pod_container() {
        let dir = std::env::temp_dir().join(format!("husk-shim-spec-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("share")).unwrap();
        let file = dir.join("hostname");
        std::fs::write(&file, "box\n").unwrap();
        let text = SPEC.replace("HOSTFILE", file.to_str().unwrap());
        let spec: Spec = serde_json::from_str(&text).unwrap();
        assert_eq!(
            annotations(&spec)["io.kubernetes.cri.container-type"],
            "container"
        );
        let c = container("c1", &spec, &dir.join("share"), Some("p".into()), |_, _| {
            Err("no directories here".into())
        })
        .unwrap();
        assert_eq!(c.process.args, ["sh", "-c", "echo hi"]);
        assert_eq!(c.process.user.as_deref(), Some("1000:100"));
        assert_eq!(c.process.working_dir.as_deref(), Some("/w"));
        assert_eq!(c.groups, [5]);
        assert_eq!(c.hostname.as_deref(), Some("box"));
        assert!(c.readonly_root);
        assert_eq!(c.join.as_deref(), Some("p"));
        assert_eq!(c.mounts[0].kind, "proc");
        assert_eq!(c.mounts[1].source, "/pod/c1/mnt/1");
        assert_eq!(
            std::fs::read_to_string(dir.join("share/c1/mnt/1")).unwrap(),
            "box\n"
        );
        assert_eq!(c.resources.memory_max, Some(64 << 20));
        assert_eq!(c.resources.cpu_quota, Some(50000));
        assert_eq!(c.resources.cpu_shares, Some(512));
        assert_eq!(c.resources.pids_max, Some(64));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
