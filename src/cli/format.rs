//! Text the verbs print, in Docker's shapes: tables, "5 seconds ago",
//! "Up 3 seconds", "4.26MB", RFC 3339 times.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::client::types::{ContainerRecord, ContainerState};

/// Now, in unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A duration the way Docker says it (go-units `HumanDuration`):
/// "Less than a second", "1 second", "5 seconds", "About a minute",
/// "3 minutes", "About an hour", "5 hours", "3 days", "2 weeks",
/// "4 months", "2 years".
pub fn human_duration(ms: u64) -> String {
    let seconds = ms / 1000;
    let minutes = seconds / 60;
    // Hours are rounded, as Go's math.Round(d.Hours()).
    let hours = (ms as f64 / 3_600_000.0).round() as u64;
    if seconds < 1 {
        "Less than a second".into()
    } else if seconds == 1 {
        "1 second".into()
    } else if seconds < 60 {
        format!("{seconds} seconds")
    } else if minutes == 1 {
        "About a minute".into()
    } else if minutes < 60 {
        format!("{minutes} minutes")
    } else if hours == 1 {
        "About an hour".into()
    } else if hours < 48 {
        format!("{hours} hours")
    } else if hours < 24 * 7 * 2 {
        format!("{} days", hours / 24)
    } else if hours < 24 * 30 * 2 {
        format!("{} weeks", hours / 24 / 7)
    } else if hours < 24 * 365 * 2 {
        format!("{} months", hours / 24 / 30)
    } else {
        format!("{} years", ms / 3_600_000 / 24 / 365)
    }
}

/// "5 seconds ago", for something that happened at `then_ms`.
pub fn ago(then_ms: u64, now_ms: u64) -> String {
    format!("{} ago", human_duration(now_ms.saturating_sub(then_ms)))
}

/// The STATUS column of `ps`: "Up 3 seconds", "Exited (0) 2 minutes ago",
/// "Created", ...
pub fn status(r: &ContainerRecord, now_ms: u64) -> String {
    match r.state {
        ContainerState::Created => "Created".into(),
        ContainerState::Starting => "Starting".into(),
        ContainerState::Running => match r.started_ms {
            Some(t) => format!("Up {}", human_duration(now_ms.saturating_sub(t))),
            None => "Up".into(),
        },
        ContainerState::Exited => {
            let code = r.exit_code.unwrap_or(0);
            match r.finished_ms {
                Some(t) => format!("Exited ({code}) {}", ago(t, now_ms)),
                None => format!("Exited ({code})"),
            }
        }
        ContainerState::Dead => "Dead".into(),
    }
}

/// The command a container runs: entrypoint then cmd, space-joined.
pub fn command_line(r: &ContainerRecord) -> String {
    let c = &r.config;
    c.entrypoint
        .iter()
        .flatten()
        .chain(c.cmd.iter().flatten())
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(" ")
}

/// At most `max` characters: longer text keeps `max - 1` and gets "…"
/// (Docker's `Ellipsis`).
pub fn ellipsis(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    if max == 0 {
        return String::new();
    }
    let mut out: String = s.chars().take(max - 1).collect();
    out.push('…');
    out
}

/// Double-quoted, with `"`, `\` and control characters escaped (Go's
/// `strconv.Quote`, near enough).
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The first 12 hex digits of an id (after any `sha256:`).
pub fn short_id(id: &str) -> &str {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    match hex.char_indices().nth(12) {
        Some((i, _)) => &hex[..i],
        None => hex,
    }
}

/// A byte count in decimal units with 3 significant digits (go-units
/// `HumanSize`): "0B", "999B", "12.3kB", "4.26MB", "1GB".
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 9] = ["B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1000.0 && i < UNITS.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    format!("{}{}", significant(v, 3), UNITS[i])
}

/// `v` with `digits` significant digits, trailing zeros dropped (`%g`).
fn significant(v: f64, digits: i32) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let magnitude = v.abs().log10().floor() as i32 + 1;
    let decimals = (digits - magnitude).max(0) as usize;
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// Unix ms as RFC 3339 UTC with nanoseconds, as Docker prints times
/// (`2024-01-02T15:04:05.123000000Z`).
pub fn rfc3339_nanos(ms: u64) -> String {
    let secs = (ms / 1000) as i64;
    let (y, mo, d) = super::parse::civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{:09}Z",
        s / 3600,
        s % 3600 / 60,
        s % 60,
        (ms % 1000) * 1_000_000
    )
}

/// A table as Docker's tabwriter lays it out: each column as wide as its
/// widest cell plus 3 spaces (at least 10), the last one unpadded.
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Table {
            rows: vec![header.iter().map(|s| s.to_string()).collect()],
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let cols = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut width = vec![0usize; cols];
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                width[i] = width[i].max(c.chars().count());
            }
        }
        let mut out = String::new();
        for r in &self.rows {
            let mut line = String::new();
            for (i, c) in r.iter().enumerate() {
                line.push_str(c);
                if i + 1 < r.len() {
                    let w = (width[i] + 3).max(10);
                    line.extend(std::iter::repeat_n(' ', w - c.chars().count()));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::types::CreateRequest;

    const S: u64 = 1000;
    const H: u64 = 3600 * S;

    #[test]
    fn durations_like_docker() {
        assert_eq!(human_duration(0), "Less than a second");
        assert_eq!(human_duration(999), "Less than a second");
        assert_eq!(human_duration(S), "1 second");
        assert_eq!(human_duration(5 * S), "5 seconds");
        assert_eq!(human_duration(59 * S), "59 seconds");
        assert_eq!(human_duration(60 * S), "About a minute");
        assert_eq!(human_duration(119 * S), "About a minute");
        assert_eq!(human_duration(2 * 60 * S), "2 minutes");
        assert_eq!(human_duration(59 * 60 * S), "59 minutes");
        assert_eq!(human_duration(H), "About an hour");
        assert_eq!(human_duration(H + H / 3), "About an hour");
        assert_eq!(human_duration(H + H / 2), "2 hours");
        assert_eq!(human_duration(47 * H), "47 hours");
        assert_eq!(human_duration(48 * H), "2 days");
        assert_eq!(human_duration(14 * 24 * H), "2 weeks");
        assert_eq!(human_duration(60 * 24 * H), "2 months");
        assert_eq!(human_duration(2 * 365 * 24 * H), "2 years");
        assert_eq!(ago(1000, 6000), "5 seconds ago");
        assert_eq!(ago(9000, 6000), "Less than a second ago");
    }

    fn rec(state: ContainerState) -> ContainerRecord {
        ContainerRecord {
            id: "0123456789abcdef".repeat(4),
            name: "web".into(),
            image: "busybox".into(),
            config: CreateRequest {
                image: "busybox".into(),
                entrypoint: Some(vec!["sh".into(), "-c".into()]),
                cmd: Some(vec!["echo \"hi\" && sleep 100".into()]),
                ..Default::default()
            },
            state,
            exit_code: None,
            signal: None,
            error: None,
            created_ms: 0,
            started_ms: None,
            finished_ms: None,
            backend: None,
            pids: vec![],
            vcpus: 1,
            memory_mib: 256,
            guest_pid: None,
            network: None,
        }
    }

    #[test]
    fn statuses() {
        let now = 1_000_000;
        let mut r = rec(ContainerState::Created);
        assert_eq!(status(&r, now), "Created");
        r.state = ContainerState::Running;
        r.started_ms = Some(now - 3 * S);
        assert_eq!(status(&r, now), "Up 3 seconds");
        r.state = ContainerState::Exited;
        r.exit_code = Some(137);
        r.finished_ms = Some(now - 2 * 60 * S);
        assert_eq!(status(&r, now), "Exited (137) 2 minutes ago");
        r.state = ContainerState::Dead;
        assert_eq!(status(&r, now), "Dead");
    }

    #[test]
    fn commands() {
        let r = rec(ContainerState::Running);
        assert_eq!(command_line(&r), "sh -c echo \"hi\" && sleep 100");
        assert_eq!(
            quote(&ellipsis(&command_line(&r), 20)),
            "\"sh -c echo \\\"hi\\\" && …\""
        );
        assert_eq!(ellipsis("short", 20), "short");
        assert_eq!(ellipsis("exactly twenty chars", 20), "exactly twenty chars");
        assert_eq!(quote("a\tb\u{1}"), "\"a\\tb\\x01\"");
    }

    #[test]
    fn ids_and_sizes() {
        assert_eq!(short_id(&"ab".repeat(32)), "abababababab");
        assert_eq!(short_id("sha256:0123456789abcdef"), "0123456789ab");
        assert_eq!(short_id("abc"), "abc");
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(12_345), "12.3kB");
        assert_eq!(human_size(4_261_000), "4.26MB");
        assert_eq!(human_size(1_000_000_000), "1GB");
        assert_eq!(human_size(100_500_000), "100MB");
    }

    #[test]
    fn times() {
        assert_eq!(rfc3339_nanos(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            rfc3339_nanos(1_700_000_000_123),
            "2023-11-14T22:13:20.123000000Z"
        );
    }

    #[test]
    fn tables() {
        let mut t = Table::new(&["CONTAINER ID", "IMAGE", "NAMES"]);
        t.row(vec!["abc".into(), "busybox:latest".into(), "web".into()]);
        t.row(vec!["def".into(), "x".into(), "a_long_name".into()]);
        assert_eq!(
            t.render(),
            "CONTAINER ID   IMAGE            NAMES\n\
             abc            busybox:latest   web\n\
             def            x                a_long_name\n"
        );
        let mut t = Table::new(&["A", "B"]);
        t.row(vec!["x".into(), "".into()]);
        assert_eq!(t.render(), "A         B\nx\n");
    }
}
