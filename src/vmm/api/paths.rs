//! How Firecracker's API server reads a request's path, so that husk
//! routes the same requests to the same resources:
//!
//! - leading slashes do not count, and the path is split on `/` with a
//!   trailing slash ignored (`/machine-config/` is `/machine-config`);
//! - a query string is part of the path, so it names no resource
//!   (`/machine-config?x=1` is refused);
//! - segments past the ones a resource is named by are ignored
//!   (`GET /machine-config/x` is `GET /machine-config`,
//!   `PUT /drives/rootfs/x` is `PUT /drives/rootfs`), except where
//!   Firecracker reads the next segment as a sub-resource and refuses an
//!   unknown one (`GET /balloon/x`, `PUT /mmds/x`);
//! - `PATCH /balloon/<anything but statistics or hinting>` is
//!   `PATCH /balloon`.
//!
//! [`canonical`] gives the path the router should see, when it differs
//! from the one sent.

use axum::http::{Method, Uri};

/// Resources named by their first segment alone, by method.
const SINGLE: &[(&str, &[&str])] = &[
    ("GET", &["version", "machine-config", "mmds", "metrics"]),
    (
        "PUT",
        &[
            "actions",
            "balloon",
            "boot-source",
            "cpu-config",
            "logger",
            "serial",
            "machine-config",
            "metrics",
            "vsock",
            "entropy",
        ],
    ),
    ("PATCH", &["machine-config", "mmds", "vm"]),
];

/// Resources named by their first segment and an id, by method.
const WITH_ID: &[(&str, &[&str])] = &[
    ("PUT", &["drives", "pmem", "network-interfaces", "fs"]),
    ("PATCH", &["drives", "pmem", "network-interfaces"]),
];

/// The path the router should see for `method` and `uri`, when it is not
/// the one sent (see the module's documentation).
pub fn canonical(method: &Method, uri: &Uri) -> Option<String> {
    let sent = uri.path();
    let whole = match uri.query() {
        Some(q) => format!("{sent}?{q}"),
        None => sent.to_string(),
    };
    let tokens: Vec<&str> = whole
        .trim_start_matches('/')
        .split_terminator('/')
        .collect();
    let keep = kept_segments(method.as_str(), &tokens).unwrap_or(tokens.len());
    let mut p = String::with_capacity(whole.len() + 8);
    for t in &tokens[..keep] {
        p.push('/');
        // The path's own part stays as sent (its escapes are decoded by
        // the router); the query's part is not a query any more, so the
        // characters a path cannot hold are escaped.
        let start = t.as_ptr() as usize - whole.as_ptr() as usize;
        let in_path = sent.len().saturating_sub(start).min(t.len());
        p.push_str(&t[..in_path]);
        p.push_str(&t[in_path..].replace('%', "%25").replace('?', "%3F"));
    }
    if p.is_empty() {
        p.push('/');
    }
    (p != sent || uri.query().is_some()).then_some(p)
}

/// How many leading segments name the resource, when Firecracker would
/// ignore the rest; None keeps the path whole (it is routed, or refused,
/// as sent).
fn kept_segments(method: &str, t: &[&str]) -> Option<usize> {
    let first = *t.first()?;
    let next = t.get(1).copied();
    let listed = |table: &[(&str, &[&str])]| {
        table
            .iter()
            .any(|(m, names)| *m == method && names.contains(&first))
    };
    if listed(SINGLE) {
        return Some(1);
    }
    if listed(WITH_ID) {
        return (t.len() >= 2).then_some(2);
    }
    match (method, first, next) {
        (_, "hotplug", Some("memory")) => Some(2),
        ("GET", "vm", Some("config")) => Some(2),
        ("GET", "balloon", None) => Some(1),
        ("GET", "balloon", Some("statistics")) => Some(2),
        ("GET", "balloon", Some("hinting")) => (t.get(2) == Some(&"status")).then_some(3),
        ("PUT", "mmds", None) => Some(1),
        ("PUT", "mmds", Some("config")) => Some(2),
        ("PUT", "snapshot", Some("create" | "load")) => Some(2),
        ("PATCH", "balloon", Some("statistics")) => Some(2),
        ("PATCH", "balloon", Some("hinting")) => {
            matches!(t.get(2), Some(&"start" | &"stop")).then_some(3)
        }
        ("PATCH", "balloon", _) => Some(1),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(method: &str, path: &str) -> String {
        let uri: Uri = path.parse().unwrap();
        let m: Method = method.parse().unwrap();
        canonical(&m, &uri).unwrap_or_else(|| uri.path().to_string())
    }

    #[test]
    fn paths_are_read_as_firecracker_reads_them() {
        for (method, sent, routed) in [
            ("GET", "/", "/"),
            ("GET", "//", "/"),
            ("GET", "/machine-config", "/machine-config"),
            ("GET", "/machine-config/", "/machine-config"),
            ("GET", "//machine-config//", "/machine-config"),
            ("GET", "/machine-config/x/y", "/machine-config"),
            ("GET", "/machine-config?x=1", "/machine-config%3Fx=1"),
            ("GET", "/machine-config/x?y", "/machine-config"),
            ("GET", "/vm/config/x", "/vm/config"),
            ("GET", "/vm/x", "/vm/x"),
            ("GET", "/balloon/x", "/balloon/x"),
            ("GET", "/balloon/statistics/x", "/balloon/statistics"),
            (
                "GET",
                "/balloon/hinting/status/x",
                "/balloon/hinting/status",
            ),
            ("GET", "/balloon/hinting/x", "/balloon/hinting/x"),
            ("GET", "/hotplug/memory/x", "/hotplug/memory"),
            ("PUT", "/drives/rootfs/x", "/drives/rootfs"),
            ("PUT", "/drives", "/drives"),
            ("PUT", "/drives//x", "/drives/"),
            ("PUT", "/drives/a?b", "/drives/a%3Fb"),
            ("PUT", "/fs/a%00b", "/fs/a%00b"),
            ("PUT", "/fs/a%00b?c%d/e", "/fs/a%00b%3Fc%25d"),
            ("PUT", "/actions/x", "/actions"),
            ("PUT", "/mmds/config/x", "/mmds/config"),
            ("PUT", "/mmds/x", "/mmds/x"),
            ("PUT", "/snapshot/create/x", "/snapshot/create"),
            ("PUT", "/snapshot/x", "/snapshot/x"),
            ("PATCH", "/balloon/x", "/balloon"),
            ("PATCH", "/balloon/statistics/x", "/balloon/statistics"),
            (
                "PATCH",
                "/balloon/hinting/start/x",
                "/balloon/hinting/start",
            ),
            ("PATCH", "/balloon/hinting/x", "/balloon/hinting/x"),
            ("PATCH", "/vm/x", "/vm"),
            (
                "PATCH",
                "/network-interfaces/eth0/x",
                "/network-interfaces/eth0",
            ),
            ("DELETE", "/machine-config/x", "/machine-config/x"),
            ("GET", "/no/such", "/no/such"),
        ] {
            assert_eq!(seen(method, sent), routed, "{method} {sent}");
        }
    }
}
