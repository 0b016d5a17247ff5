//! Image references, parsed the way Docker does: `busybox` means
//! `docker.io/library/busybox:latest`; a registry host is recognised by a
//! dot, a port or `localhost`; a reference may carry a tag, a digest, or
//! both.

use std::fmt;
use std::str::FromStr;

use oci_client::Reference;

#[derive(Debug, thiserror::Error)]
#[error(
    "invalid image reference \"{}\": {}",
    crate::text::echo(.input),
    crate::text::echo(.reason)
)]
pub struct ReferenceError {
    input: String,
    reason: String,
}

/// One path component of a repository name, per the distribution grammar:
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// A parsed, normalised image reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef(Reference);

impl ImageRef {
    pub fn parse(input: &str) -> Result<ImageRef, ReferenceError> {
        let err = |reason: String| ReferenceError {
            input: input.to_string(),
            reason,
        };
        if input.is_empty() {
            return Err(err("it is empty".into()));
        }
        if input.trim() != input || input.contains(char::is_whitespace) {
            return Err(err("it contains white space".into()));
        }
        let r = Reference::from_str(input).map_err(|e| err(e.to_string()))?;
        if let Some(bad) = r.repository().split('/').find(|c| !valid_component(c)) {
            return Err(err(format!(
                "repository component {bad:?} must be lowercase letters and digits, \
                 joined by single '.', '_' or '__', or runs of '-'"
            )));
        }
        let r = if r.tag().is_none() && r.digest().is_none() {
            Reference::with_tag(
                r.registry().to_string(),
                r.repository().to_string(),
                "latest".to_string(),
            )
        } else {
            r
        };
        Ok(ImageRef(r))
    }

    pub fn registry(&self) -> &str {
        self.0.registry()
    }

    pub fn repository(&self) -> &str {
        self.0.repository()
    }

    pub fn tag(&self) -> Option<&str> {
        self.0.tag()
    }

    pub fn digest(&self) -> Option<&str> {
        self.0.digest()
    }

    /// The underlying distribution reference.
    pub fn inner(&self) -> &Reference {
        &self.0
    }

    /// `registry/repository[:tag][@digest]`, fully qualified.
    pub fn canonical(&self) -> String {
        let mut s = format!("{}/{}", self.registry(), self.repository());
        if let Some(t) = self.tag() {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = self.digest() {
            s.push('@');
            s.push_str(d);
        }
        s
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.canonical())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(s: &str) -> String {
        ImageRef::parse(s).unwrap().canonical()
    }

    #[test]
    fn docker_hub_defaults() {
        assert_eq!(canon("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(canon("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(canon("someone/app"), "docker.io/someone/app:latest");
        assert_eq!(
            canon("docker.io/library/alpine:3"),
            "docker.io/library/alpine:3"
        );
    }

    #[test]
    fn registry_hosts_and_ports() {
        assert_eq!(
            canon("registry.example:5000/app:1.2"),
            "registry.example:5000/app:1.2"
        );
        assert_eq!(canon("localhost/app"), "localhost/app:latest");
        assert_eq!(canon("127.0.0.1:5000/a/b/c:v"), "127.0.0.1:5000/a/b/c:v");
        let r = ImageRef::parse("registry.example:5000/team/app:1.2").unwrap();
        assert_eq!(r.registry(), "registry.example:5000");
        assert_eq!(r.repository(), "team/app");
        assert_eq!(r.tag(), Some("1.2"));
    }

    #[test]
    fn repository_components() {
        for ok in ["a", "a0", "a.b", "a_b", "a__b", "a---b", "a-b.c_d"] {
            assert!(valid_component(ok), "{ok}");
        }
        for bad in ["", "A", "-a", "a-", "a..b", "a___b", "a.-b", "a_"] {
            assert!(!valid_component(bad), "{bad}");
        }
    }

    #[test]
    fn digests() {
        let d = format!("sha256:{}", "a".repeat(64));
        let r = ImageRef::parse(&format!("busybox@{d}")).unwrap();
        assert_eq!(r.digest(), Some(d.as_str()));
        assert_eq!(r.tag(), None);
        assert_eq!(r.canonical(), format!("docker.io/library/busybox@{d}"));
        let r = ImageRef::parse(&format!("localhost:5000/app:v1@{d}")).unwrap();
        assert_eq!((r.tag(), r.digest()), (Some("v1"), Some(d.as_str())));
    }

    #[test]
    fn malformed_references_are_refused_clearly() {
        for bad in [
            "",
            "UPPER/case",
            "app:",
            "app@sha256:short",
            "app@md5:0123",
            ":tag",
            "a b",
            "app:bad/tag",
            "-leading/dash",
        ] {
            let e = ImageRef::parse(bad).unwrap_err().to_string();
            assert!(e.starts_with("invalid image reference"), "{bad:?}: {e}");
        }
    }
}
