//! `PUT /fs/{tag}`: a virtio-fs device served by an external vhost-user
//! backend (virtiofsd) listening on `socket_path`. A husk extension of
//! Firecracker's API; the config file's key is `"fs-devices"`.

use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// The longest tag: the configuration space holds 36 bytes for it.
pub const MAX_TAG_LEN: usize = 36;
/// The most request queues a device may have (besides the hiprio queue).
pub const MAX_FS_QUEUES: u16 = 8;
/// The largest queue.
pub const MAX_FS_QUEUE_SIZE: u16 = 1024;

fn default_num_queues() -> u16 {
    1
}

fn default_queue_size() -> u16 {
    MAX_FS_QUEUE_SIZE
}

/// `PUT /fs/{tag}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsConfig {
    /// What the guest mounts (`mount -t virtiofs TAG /mnt`).
    pub tag: String,
    /// The backend's vhost-user socket (inside the jail, under the jailer).
    pub socket_path: String,
    /// Request queues, 1 to [`MAX_FS_QUEUES`].
    #[serde(default = "default_num_queues")]
    pub num_queues: u16,
    /// Entries of each queue: a power of two up to [`MAX_FS_QUEUE_SIZE`].
    #[serde(default = "default_queue_size")]
    pub queue_size: u16,
}

impl FsConfig {
    /// The tag fits the configuration space, the queues are sane, and
    /// something is at `socket_path` that is a socket. It is not
    /// connected to here: virtiofsd serves one connection and exits when
    /// it closes, so the connection is made once, at InstanceStart.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Fs(m));
        check_tag(&self.tag)?;
        if !(1..=MAX_FS_QUEUES).contains(&self.num_queues) {
            return invalid(format!(
                "num_queues must be between 1 and {MAX_FS_QUEUES}, not {}",
                self.num_queues
            ));
        }
        if !self.queue_size.is_power_of_two() || self.queue_size > MAX_FS_QUEUE_SIZE {
            return invalid(format!(
                "queue_size must be a power of two up to {MAX_FS_QUEUE_SIZE}, not {}",
                self.queue_size
            ));
        }
        if self.socket_path.is_empty() {
            return invalid("socket_path is empty".into());
        }
        let shown = crate::text::echo(&self.socket_path).into_owned();
        match std::fs::metadata(Path::new(&self.socket_path)) {
            Ok(m) if m.file_type().is_socket() => Ok(()),
            Ok(_) => invalid(format!("socket_path {shown} is not a socket")),
            Err(e) => invalid(format!("socket_path {shown} cannot be reached: {e}")),
        }
    }
}

/// 1 to 36 bytes, none of them NUL (the guest reads a NUL-padded field).
pub fn check_tag(tag: &str) -> Result<(), ConfigError> {
    if tag.is_empty() || tag.len() > MAX_TAG_LEN || tag.contains('\0') {
        return Err(ConfigError::FsTag(crate::text::echo(tag).into_owned()));
    }
    Ok(())
}

/// Adds `d` to `devices`, or replaces the one with the same tag.
pub fn insert_fs(devices: &mut Vec<FsConfig>, d: FsConfig) {
    match devices.iter().position(|o| o.tag == d.tag) {
        Some(i) => devices[i] = d,
        None => devices.push(d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fs(tag: &str, socket: &str) -> FsConfig {
        FsConfig {
            tag: tag.into(),
            socket_path: socket.into(),
            num_queues: 1,
            queue_size: 1024,
        }
    }

    #[test]
    fn defaults_and_unknown_fields() {
        let f: FsConfig =
            serde_json::from_str(r#"{"tag": "share", "socket_path": "/tmp/fs.sock"}"#).unwrap();
        assert_eq!((f.num_queues, f.queue_size), (1, 1024));
        let err = serde_json::from_str::<FsConfig>(
            r#"{"tag": "share", "socket_path": "/s", "cache": "always"}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field `cache`"), "{err}");
        assert!(serde_json::from_str::<FsConfig>(r#"{"tag": "share"}"#).is_err());
    }

    #[test]
    fn bad_devices_are_refused() {
        let dir = std::env::temp_dir().join(format!("husk-fs-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("fs.sock");
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let sock = sock.to_str().unwrap();
        fs("share", sock).validate().unwrap();
        fs(&"x".repeat(36), sock).validate().unwrap();
        for tag in ["", "a\0b", &"x".repeat(37)] {
            let e = fs(tag, sock).validate().unwrap_err();
            assert!(matches!(e, ConfigError::FsTag(_)), "{tag:?}: {e}");
        }
        let mut f = fs("share", sock);
        for n in [0, 9] {
            f.num_queues = n;
            let e = f.validate().unwrap_err().to_string();
            assert!(e.contains("num_queues must be between 1 and 8"), "{e}");
        }
        f.num_queues = 2;
        for size in [0, 3, 2048] {
            f.queue_size = size;
            let e = f.validate().unwrap_err().to_string();
            assert!(e.contains("queue_size must be a power of two"), "{e}");
        }
        let e = fs("share", "/nonexistent/fs.sock").validate().unwrap_err();
        assert!(e.to_string().contains("cannot be reached"), "{e}");
        let e = fs("share", dir.to_str().unwrap()).validate().unwrap_err();
        assert!(e.to_string().contains("is not a socket"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_same_tag_replaces() {
        let mut v = vec![];
        insert_fs(&mut v, fs("a", "/1"));
        insert_fs(&mut v, fs("b", "/2"));
        insert_fs(&mut v, fs("a", "/3"));
        let got: Vec<_> = v
            .iter()
            .map(|f| (f.tag.as_str(), f.socket_path.as_str()))
            .collect();
        assert_eq!(got, [("a", "/3"), ("b", "/2")]);
    }
}
