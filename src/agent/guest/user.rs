//! Who a process runs as: the image's `User` (`name`, `uid`,
//! `name:group`, `uid:gid`), resolved against the container's own
//! `/etc/passwd` and `/etc/group`, as Docker resolves it.

use std::path::Path;

/// The uid, gids and home of a process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups: the groups that list the user, and `gid`.
    pub groups: Vec<u32>,
    pub home: String,
}

impl Identity {
    pub fn root() -> Identity {
        Identity {
            uid: 0,
            gid: 0,
            groups: vec![0],
            home: "/root".into(),
        }
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    #[error("unable to find user {0}: no matching entries in passwd file")]
    NoUser(String),
    #[error("unable to find group {0}: no matching entries in group file")]
    NoGroup(String),
    #[error("invalid user {0:?}")]
    Invalid(String),
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

fn passwd_entries(text: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    text.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 7).then_some(())?;
        Some(PasswdEntry {
            name: f[0],
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: f[5],
        })
    })
}

/// (name, gid, members) of each line of /etc/group.
fn group_entries(text: &str) -> impl Iterator<Item = (&str, u32, Vec<&str>)> {
    text.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 4).then_some(())?;
        let members = f[3].split(',').filter(|m| !m.is_empty()).collect();
        Some((f[0], f[2].parse().ok()?, members))
    })
}

fn read(root: &Path, file: &str) -> String {
    // A missing or unreadable file is an empty one, as for Docker.
    std::fs::read_to_string(root.join(file)).unwrap_or_default()
}

/// Resolves `user` (None or empty: root) inside the filesystem at `root`.
pub fn resolve(user: Option<&str>, root: &Path) -> Result<Identity, UserError> {
    let spec = user.unwrap_or("").trim();
    if spec.is_empty() {
        return resolve(Some("0"), root);
    }
    if spec.chars().any(|c| c.is_control() || c == '/') || spec.len() > 256 {
        return Err(UserError::Invalid(crate::text::echo(spec).into_owned()));
    }
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let passwd = read(root, "etc/passwd");
    let groups_text = read(root, "etc/group");
    let entry = passwd_entries(&passwd).find(|e| e.name == u || u.parse() == Ok(e.uid));
    let (uid, mut gid, name, home) = match (entry, u.parse::<u32>()) {
        (Some(e), _) => (e.uid, e.gid, Some(e.name), e.home.to_string()),
        // A numeric uid need not be in the passwd file.
        (None, Ok(uid)) => {
            let home = if uid == 0 { "/root" } else { "/" };
            (uid, 0, None, home.to_string())
        }
        (None, Err(_)) => return Err(UserError::NoUser(crate::text::echo(u).into_owned())),
    };
    if let Some(g) = g {
        gid = match group_entries(&groups_text).find(|(n, id, _)| *n == g || g.parse() == Ok(*id)) {
            Some((_, id, _)) => id,
            None => g
                .parse()
                .map_err(|_| UserError::NoGroup(crate::text::echo(g).into_owned()))?,
        };
    }
    let mut groups = vec![gid];
    if let Some(name) = name {
        for (_, id, members) in group_entries(&groups_text) {
            if members.contains(&name) && !groups.contains(&id) {
                groups.push(id);
            }
        }
    }
    Ok(Identity {
        uid,
        gid,
        groups,
        home,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> (tempdir::Dir, std::path::PathBuf) {
        let d = tempdir::Dir::new();
        let etc = d.0.join("etc");
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(
            etc.join("passwd"),
            "root:x:0:0:root:/root:/bin/sh\nwww:x:33:33:www:/var/www:/bin/false\nbad line\n",
        )
        .unwrap();
        std::fs::write(
            etc.join("group"),
            "root:x:0:\nwww:x:33:\nstaff:x:50:www,other\nvideo:x:44:www\n",
        )
        .unwrap();
        let p = d.0.clone();
        (d, p)
    }

    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                use std::sync::atomic::{AtomicU32, Ordering};
                static N: AtomicU32 = AtomicU32::new(0);
                let p = std::env::temp_dir().join(format!(
                    "husk-user-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn names_and_numbers_resolve_with_their_groups() {
        let (_d, r) = root();
        let www = resolve(Some("www"), &r).unwrap();
        assert_eq!((www.uid, www.gid, www.home.as_str()), (33, 33, "/var/www"));
        assert_eq!(www.groups, vec![33, 50, 44]);
        assert_eq!(resolve(Some("33"), &r).unwrap(), www);
        let g = resolve(Some("www:staff"), &r).unwrap();
        assert_eq!((g.uid, g.gid), (33, 50));
        assert_eq!(resolve(Some("1000:1000"), &r).unwrap().gid, 1000);
        let anon = resolve(Some("1234"), &r).unwrap();
        assert_eq!((anon.uid, anon.gid, anon.home.as_str()), (1234, 0, "/"));
        assert_eq!(resolve(None, &r).unwrap().uid, 0);
    }

    #[test]
    fn unknown_names_are_errors() {
        let (_d, r) = root();
        assert_eq!(
            resolve(Some("nobody"), &r),
            Err(UserError::NoUser("nobody".into()))
        );
        assert_eq!(
            resolve(Some("www:wheel"), &r),
            Err(UserError::NoGroup("wheel".into()))
        );
        assert!(matches!(
            resolve(Some("a\nb"), &r),
            Err(UserError::Invalid(_))
        ));
        // No passwd file at all: root still works.
        let empty = std::env::temp_dir().join("husk-user-none");
        assert_eq!(resolve(None, &empty).unwrap(), Identity::root());
    }
}
