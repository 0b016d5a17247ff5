//! A container's mounts, from its request to its VM: checked when the
//! container is created (volumes made, bind sources resolved, the
//! image's `VOLUME`s given anonymous volumes), and turned into the VM's
//! extra disks, its virtio-fs shares and the agent's mount list when it
//! boots.

use std::path::{Component, Path};

use super::backend::{VmDrive, VmShare};
use super::volume::{VolumeError, VolumeManager};
use crate::agent::protocol::{GuestMount, MountSource};
use crate::client::types::{Mount, MountKind, VolumeCreateRequest};
use crate::client::volumes::TMPFS_FLAGS;
use crate::text::echo;

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("invalid mount target {0:?}: an absolute path in the container, without '..', and not /, /proc or /sys")]
    Target(String),
    #[error("two mounts have the target {0}")]
    Duplicate(String),
    #[error("{0}")]
    Invalid(String),
    #[error("the bind mount's source {path} cannot be used: {err}")]
    BindSource { path: String, err: std::io::Error },
    #[error("the bind mount's source {0} is a file; bind mounts share directories (virtio-fs), so mount its directory instead")]
    BindFile(String),
    #[error(transparent)]
    Volume(#[from] VolumeError),
}

/// Checks what can be checked without touching anything.
pub fn check(mounts: &[Mount]) -> Result<(), MountError> {
    let mut seen = std::collections::BTreeSet::new();
    for m in mounts {
        check_target(&m.target)?;
        let norm = Path::new(&m.target)
            .components()
            .collect::<std::path::PathBuf>();
        if !seen.insert(norm) {
            return Err(MountError::Duplicate(echo(&m.target).into_owned()));
        }
        let invalid = |s: String| Err(MountError::Invalid(s));
        match m.kind {
            MountKind::Volume => {
                if let Some(n) = &m.source {
                    if !super::volume::valid_name(n) {
                        return Err(VolumeError::Name(echo(n).into_owned()).into());
                    }
                }
            }
            MountKind::Bind => match &m.source {
                Some(s) if s.starts_with('/') && !s.contains('\0') => {}
                _ => return invalid("a bind mount's source must be an absolute host path".into()),
            },
            MountKind::Tmpfs => {
                if m.source.is_some() {
                    return invalid("a tmpfs mount takes no source".into());
                }
                if m.tmpfs_mode.is_some_and(|x| x > 0o7777) {
                    return invalid("tmpfs_mode must be at most 7777 (octal)".into());
                }
                if let Some(o) = m
                    .tmpfs_options
                    .iter()
                    .find(|o| !TMPFS_FLAGS.contains(&o.as_str()))
                {
                    return invalid(format!(
                        "unknown tmpfs option {:?}: use noexec, nosuid, nodev (or exec, suid, dev)",
                        echo(o)
                    ));
                }
            }
        }
        if m.kind != MountKind::Tmpfs
            && (m.tmpfs_size.is_some() || m.tmpfs_mode.is_some() || !m.tmpfs_options.is_empty())
        {
            return invalid("tmpfs settings are for tmpfs mounts".into());
        }
    }
    Ok(())
}

fn check_target(t: &str) -> Result<(), MountError> {
    crate::agent::guest::mounts::check_target(t)
        .map_err(|_| MountError::Target(echo(t).into_owned()))
}

/// At create (blocking): named volumes that do not exist yet are made,
/// anonymous ones get a new volume each, bind sources become canonical
/// directories, and each of the image's `VOLUME`s that no mount covers
/// gets an anonymous volume. On failure, the volumes made here go again.
pub fn resolve(
    volumes: &VolumeManager,
    mounts: &mut Vec<Mount>,
    image_volumes: &[String],
) -> Result<(), MountError> {
    for target in image_volumes {
        let norm = |t: &str| Path::new(t).components().collect::<std::path::PathBuf>();
        if check_target(target).is_ok() && !mounts.iter().any(|m| norm(&m.target) == norm(target)) {
            mounts.push(Mount {
                kind: MountKind::Volume,
                source: None,
                target: target.clone(),
                read_only: false,
                tmpfs_size: None,
                tmpfs_mode: None,
                tmpfs_options: Vec::new(),
            });
        }
    }
    let mut made: Vec<String> = Vec::new();
    let result = (|| {
        for m in mounts.iter_mut() {
            match m.kind {
                MountKind::Volume => {
                    let exists = m.source.as_ref().is_some_and(|n| volumes.get(n).is_ok());
                    if !exists {
                        let req = VolumeCreateRequest {
                            name: m.source.clone(),
                            ..Default::default()
                        };
                        let v = volumes.create(&req, true)?;
                        made.push(v.name.clone());
                        m.source = Some(v.name);
                    }
                }
                MountKind::Bind => {
                    let src = m.source.clone().unwrap_or_default();
                    let err = |err| MountError::BindSource {
                        path: echo(&src).into_owned(),
                        err,
                    };
                    let canon = std::fs::canonicalize(&src).map_err(err)?;
                    if !canon.is_dir() {
                        return Err(MountError::BindFile(echo(&src).into_owned()));
                    }
                    m.source = Some(canon.to_string_lossy().into_owned());
                }
                MountKind::Tmpfs => {}
            }
        }
        Ok(())
    })();
    if result.is_err() {
        for name in made {
            let _ = volumes.remove(&name, vec![]);
        }
    }
    result
}

/// What a container's VM gets for its mounts.
#[derive(Debug, Default)]
pub struct Plan {
    pub drives: Vec<VmDrive>,
    pub shares: Vec<VmShare>,
    /// In mount order: shallower targets first.
    pub guest: Vec<GuestMount>,
    /// Volumes to claim: (name, read-write?).
    pub claims: Vec<(String, bool)>,
}

/// The VM's side of `mounts` (resolved at create).
pub fn plan(volumes: &VolumeManager, mounts: &[Mount]) -> Result<Plan, MountError> {
    let mut p = Plan::default();
    let mut order: Vec<&Mount> = mounts.iter().collect();
    order.sort_by_key(|m| {
        Path::new(&m.target)
            .components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .count()
    });
    for m in order {
        let source = match m.kind {
            MountKind::Volume => {
                let name = m.source.clone().unwrap_or_default();
                volumes.get(&name)?;
                let id = format!("vol{}", p.drives.len());
                p.drives.push(VmDrive {
                    id: id.clone(),
                    path: volumes.disk(&name),
                    read_only: m.read_only,
                });
                p.claims.push((name, !m.read_only));
                MountSource::Block { serial: id }
            }
            MountKind::Bind => {
                let tag = format!("fs{}", p.shares.len());
                p.shares.push(VmShare {
                    tag: tag.clone(),
                    dir: m.source.clone().unwrap_or_default().into(),
                    read_only: m.read_only,
                });
                MountSource::VirtioFs { tag }
            }
            MountKind::Tmpfs => {
                let has = |f: &str| m.tmpfs_options.iter().any(|o| o == f);
                MountSource::Tmpfs {
                    size: m.tmpfs_size,
                    mode: m.tmpfs_mode,
                    noexec: has("noexec"),
                    nosuid: has("nosuid"),
                    nodev: has("nodev"),
                }
            }
        };
        p.guest.push(GuestMount {
            target: m.target.clone(),
            source,
            read_only: m.read_only,
        });
    }
    Ok(p)
}

/// The volumes a container's config names.
pub fn volume_names(mounts: &[Mount]) -> impl Iterator<Item = &str> {
    mounts
        .iter()
        .filter(|m| m.kind == MountKind::Volume)
        .filter_map(|m| m.source.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(kind: MountKind, source: Option<&str>, target: &str) -> Mount {
        Mount {
            kind,
            source: source.map(String::from),
            target: target.into(),
            read_only: false,
            tmpfs_size: None,
            tmpfs_mode: None,
            tmpfs_options: vec![],
        }
    }

    #[test]
    fn bad_mounts_are_refused_before_anything_is_made() {
        let ok = [
            mount(MountKind::Volume, Some("data"), "/data"),
            mount(MountKind::Bind, Some("/srv"), "/srv"),
            mount(MountKind::Tmpfs, None, "/scratch"),
        ];
        check(&ok).unwrap();
        for (bad, why) in [
            (
                vec![mount(MountKind::Volume, Some("data"), "data")],
                "target",
            ),
            (vec![mount(MountKind::Volume, Some("data"), "/")], "target"),
            (
                vec![mount(MountKind::Volume, Some("data"), "/a/../b")],
                "target",
            ),
            (
                vec![mount(MountKind::Bind, Some("rel"), "/x")],
                "absolute host path",
            ),
            (vec![mount(MountKind::Tmpfs, Some("x"), "/x")], "no source"),
            (
                vec![mount(MountKind::Volume, Some("../x"), "/x")],
                "invalid volume name",
            ),
            (
                vec![
                    mount(MountKind::Tmpfs, None, "/x"),
                    mount(MountKind::Tmpfs, None, "/x/"),
                ],
                "two mounts",
            ),
        ] {
            let e = check(&bad).unwrap_err().to_string();
            assert!(e.contains(why), "{e} (wanted {why})");
        }
    }

    #[test]
    fn the_plan_mounts_parents_first_and_claims_volumes() {
        let dir = std::env::temp_dir().join(format!("husk-plan-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let vols = VolumeManager::open(&dir).unwrap();
        let mut ms = vec![
            mount(MountKind::Tmpfs, None, "/data/tmp"),
            mount(MountKind::Volume, Some("data"), "/data"),
            mount(MountKind::Bind, Some(dir.to_str().unwrap()), "/host"),
        ];
        ms[1].read_only = true;
        resolve(&vols, &mut ms, &["/var/cache".into(), "/data".into()]).unwrap();
        assert_eq!(
            ms.len(),
            4,
            "one anonymous volume for the image's /var/cache"
        );
        let anon = ms[3].source.clone().unwrap();
        assert!(vols.get(&anon).unwrap().anonymous);
        assert!(!vols.get("data").unwrap().anonymous);
        let p = plan(&vols, &ms).unwrap();
        let targets: Vec<_> = p.guest.iter().map(|g| g.target.as_str()).collect();
        // Shallower first; among equals, as given.
        assert_eq!(targets, ["/data", "/host", "/data/tmp", "/var/cache"]);
        assert_eq!(p.claims, vec![("data".into(), false), (anon, true)]);
        assert_eq!(p.drives[0].id, "vol0");
        assert!(p.drives[0].read_only);
        assert_eq!(p.shares[0].tag, "fs0");
        // A missing bind source: nothing made stays behind.
        let before = vols.list().len();
        let mut bad = vec![
            mount(MountKind::Volume, None, "/v"),
            mount(MountKind::Bind, Some("/nonexistent/husk"), "/b"),
        ];
        assert!(resolve(&vols, &mut bad, &[]).is_err());
        assert_eq!(vols.list().len(), before);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
