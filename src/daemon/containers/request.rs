//! A create request, checked before anything happens, and the image it
//! names: its config and its `VOLUME`s, read from the store.

use super::ApiError;
use crate::agent::protocol::ImageConfig;
use crate::client::types::CreateRequest;
use crate::daemon::state::now_ms;

/// A container's root filesystem unless it asks otherwise (or its image
/// needs more): a sparse file, so the size costs nothing until written.
pub const DEFAULT_ROOTFS_SIZE: u64 = 10 << 30;
const MIN_ROOTFS_SIZE: u64 = 64 << 20;
const MAX_ROOTFS_SIZE: u64 = 16 << 40;

pub(super) fn random_id() -> String {
    use std::io::Read;
    let mut b = [0u8; 32];
    let ok = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    if ok.is_err() {
        // Unique enough without the kernel's randomness: time and pid.
        let seed = format!("{}-{}", now_ms(), std::process::id());
        let d = crate::image::Digest::of(seed.as_bytes()).to_string();
        return d[7..].to_string();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub(super) fn valid_name(n: &str) -> bool {
    let mut chars = n.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && n.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// The image config's fields the agent applies.
fn image_config(blob: &[u8]) -> ImageConfig {
    let v: serde_json::Value = serde_json::from_slice(blob).unwrap_or_default();
    let c = &v["config"];
    let strings = |k: &str| -> Option<Vec<String>> {
        c[k].as_array().map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
    };
    let text = |k: &str| c[k].as_str().filter(|s| !s.is_empty()).map(String::from);
    ImageConfig {
        entrypoint: strings("Entrypoint"),
        cmd: strings("Cmd"),
        env: strings("Env").unwrap_or_default(),
        working_dir: text("WorkingDir"),
        user: text("User"),
    }
}

pub(super) fn check_request(req: &CreateRequest) -> Result<(), ApiError> {
    let bad = |m: String| Err(ApiError::BadRequest(m));
    if req.image.trim().is_empty() {
        return bad("image is required".into());
    }
    if let Some(n) = &req.name {
        if !valid_name(n) {
            return bad(format!(
                "invalid name {:?}: letters, digits, '_', '.' and '-', starting with a letter or digit",
                crate::text::echo(n)
            ));
        }
    }
    if let Some(e) = req
        .env
        .iter()
        .find(|e| !e.contains('=') || e.starts_with('='))
    {
        return bad(format!(
            "invalid env entry {:?}: KEY=value",
            crate::text::echo(e)
        ));
    }
    if req.vcpus.is_some_and(|v| v == 0 || v > 32) {
        return bad("vcpus must be 1 to 32".into());
    }
    if req.memory_mib.is_some_and(|m| !(64..=65536).contains(&m)) {
        return bad("memory_mib must be 64 to 65536".into());
    }
    if req
        .rootfs_size
        .is_some_and(|s| !(MIN_ROOTFS_SIZE..=MAX_ROOTFS_SIZE).contains(&s))
    {
        return bad(format!(
            "rootfs_size must be {} MiB to {} TiB",
            MIN_ROOTFS_SIZE >> 20,
            MAX_ROOTFS_SIZE >> 40
        ));
    }
    crate::daemon::network::check_request(req.network.as_deref(), &req.publish)
        .map_err(ApiError::BadRequest)?;
    crate::daemon::mounts::check(&req.mounts).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    for list in [&req.cmd, &req.entrypoint].into_iter().flatten() {
        if list.iter().any(|a| a.contains('\0')) {
            return bad("arguments cannot hold NUL bytes".into());
        }
    }
    Ok(())
}

/// The image's canonical reference and config, from the store.
pub(super) fn resolve_image(
    state_dir: &std::path::Path,
    reference: &str,
) -> Result<(String, ImageConfig, Vec<String>), ApiError> {
    use crate::image::store::Store;
    let store = Store::open(state_dir).map_err(|e| ApiError::Internal(e.to_string()))?;
    let record = store.get(reference).map_err(|e| {
        ApiError::NotFound(format!(
            "{e}; pull or import it first (husk pull, husk image import)"
        ))
    })?;
    let blob = store
        .read_blob(&record.config)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok((record.reference, image_config(&blob), image_volumes(&blob)))
}

/// The image's `VOLUME`s: the keys of its config's `Volumes` object.
fn image_volumes(blob: &[u8]) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_slice(blob).unwrap_or_default();
    v["config"]["Volumes"]
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_checked_before_anything_happens() {
        let ok = CreateRequest {
            image: "busybox".into(),
            ..Default::default()
        };
        assert!(check_request(&ok).is_ok());
        for (bad, why) in [
            (
                CreateRequest {
                    image: " ".into(),
                    ..ok.clone()
                },
                "image is required",
            ),
            (
                CreateRequest {
                    name: Some("-x".into()),
                    ..ok.clone()
                },
                "invalid name",
            ),
            (
                CreateRequest {
                    env: vec!["NOEQ".into()],
                    ..ok.clone()
                },
                "invalid env",
            ),
            (
                CreateRequest {
                    vcpus: Some(0),
                    ..ok.clone()
                },
                "vcpus",
            ),
            (
                CreateRequest {
                    memory_mib: Some(1),
                    ..ok.clone()
                },
                "memory_mib",
            ),
        ] {
            let e = check_request(&bad).unwrap_err();
            assert!(
                matches!(e, ApiError::BadRequest(_)) && e.to_string().contains(why),
                "{e}"
            );
        }
    }

    #[test]
    fn the_image_config_is_read_leniently() {
        let c = image_config(
            br#"{"config": {"Entrypoint": ["/ep"], "Cmd": null, "Env": ["A=1"], "WorkingDir": "", "User": "app"}}"#,
        );
        assert_eq!(c.entrypoint, Some(vec!["/ep".to_string()]));
        assert_eq!((c.cmd, c.working_dir), (None, None));
        assert_eq!(
            (c.env, c.user),
            (vec!["A=1".to_string()], Some("app".into()))
        );
        assert_eq!(image_config(b"not json"), ImageConfig::default());
    }
}
