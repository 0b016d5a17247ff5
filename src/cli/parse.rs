//! Parsers for the verbs' argument values, as Docker reads them: memory
//! sizes, env files, signal names, times, labels.

use std::collections::BTreeMap;
use std::path::Path;

/// A memory size in MiB: `512m`, `1g`, `1.5g`, `2048k`, `512MiB`, `1GB`;
/// a bare number is MiB. Rounded up to whole MiB.
pub fn memory_mib(s: &str) -> Result<u32, String> {
    let t = s.trim().to_ascii_lowercase();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit = unit.trim();
    let unit = unit
        .strip_suffix("ib")
        .or_else(|| unit.strip_suffix('b').filter(|u| !u.is_empty()))
        .unwrap_or(unit);
    let bytes_per: f64 = match unit {
        "b" => 1.0,
        "k" => 1024.0,
        "" | "m" => 1024.0 * 1024.0,
        "g" => 1024.0 * 1024.0 * 1024.0,
        "t" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => {
            return Err(format!(
                "invalid memory size {s:?}: unknown unit (use b, k, m, g or t)"
            ))
        }
    };
    let n: f64 = num.parse().map_err(|_| {
        format!("invalid memory size {s:?}: expected a number and a unit, e.g. 512m or 1g")
    })?;
    let mib = (n * bytes_per / (1024.0 * 1024.0)).ceil();
    if mib.is_nan() || mib < 1.0 {
        return Err(format!("invalid memory size {s:?}: must be at least 1 MiB"));
    }
    if mib > u32::MAX as f64 {
        return Err(format!("invalid memory size {s:?}: too large"));
    }
    Ok(mib as u32)
}

/// `--cpus`: a count of vCPUs; a fraction (Docker's `1.5`) is rounded up.
pub fn cpus(s: &str) -> Result<u8, String> {
    let n: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("invalid --cpus {s:?}: expected a number"))?;
    if n.is_nan() || n <= 0.0 {
        return Err(format!("invalid --cpus {s:?}: must be more than 0"));
    }
    let n = n.ceil();
    if n > u8::MAX as f64 {
        return Err(format!("invalid --cpus {s:?}: at most {}", u8::MAX));
    }
    Ok(n as u8)
}

/// One `-e` value: `K=V` as is; a bare `K` takes K's value from this
/// environment, and is left out when K is unset (Docker's rule).
pub fn env_entry(
    entry: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Option<String>, String> {
    if let Some((k, _)) = entry.split_once('=') {
        if k.is_empty() {
            return Err(format!(
                "invalid environment variable {entry:?}: the name is empty"
            ));
        }
        return Ok(Some(entry.to_string()));
    }
    let k = entry.trim();
    if k.is_empty() {
        return Err("invalid environment variable \"\": the name is empty".into());
    }
    Ok(lookup(k).map(|v| format!("{k}={v}")))
}

/// The lines of an env file: `K=V` per line, `#` comments and blank lines
/// skipped, a bare `K` taken from this environment (Docker's format: no
/// quoting, the value is everything after the first `=`).
pub fn env_file_lines(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.contains(char::is_whitespace) && !line.contains('=') {
            return Err(format!(
                "line {}: variable {:?} contains white space",
                n + 1,
                line.trim_end()
            ));
        }
        match env_entry(line, &lookup) {
            Ok(Some(e)) => out.push(e),
            Ok(None) => {}
            Err(e) => return Err(format!("line {}: {e}", n + 1)),
        }
    }
    Ok(out)
}

/// Reads an `--env-file`.
pub fn env_file(path: &Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read env file {}: {e}", crate::text::echo_path(path)))?;
    env_file_lines(&text, |k| std::env::var(k).ok())
        .map_err(|e| format!("env file {}: {e}", crate::text::echo_path(path)))
}

/// `-l k=v` (or `-l k`, an empty value) into a map.
pub fn labels(items: &[String]) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for l in items {
        let (k, v) = l.split_once('=').unwrap_or((l, ""));
        if k.is_empty() {
            return Err(format!("invalid label {l:?}: the key is empty"));
        }
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

const SIGNALS: &[(&str, i32)] = &[
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("ILL", libc::SIGILL),
    ("TRAP", libc::SIGTRAP),
    ("ABRT", libc::SIGABRT),
    ("IOT", libc::SIGIOT),
    ("BUS", libc::SIGBUS),
    ("FPE", libc::SIGFPE),
    ("KILL", libc::SIGKILL),
    ("USR1", libc::SIGUSR1),
    ("SEGV", libc::SIGSEGV),
    ("USR2", libc::SIGUSR2),
    ("PIPE", libc::SIGPIPE),
    ("ALRM", libc::SIGALRM),
    ("TERM", libc::SIGTERM),
    ("STKFLT", libc::SIGSTKFLT),
    ("CHLD", libc::SIGCHLD),
    ("CONT", libc::SIGCONT),
    ("STOP", libc::SIGSTOP),
    ("TSTP", libc::SIGTSTP),
    ("TTIN", libc::SIGTTIN),
    ("TTOU", libc::SIGTTOU),
    ("URG", libc::SIGURG),
    ("XCPU", libc::SIGXCPU),
    ("XFSZ", libc::SIGXFSZ),
    ("VTALRM", libc::SIGVTALRM),
    ("PROF", libc::SIGPROF),
    ("WINCH", libc::SIGWINCH),
    ("IO", libc::SIGIO),
    ("POLL", libc::SIGPOLL),
    ("PWR", libc::SIGPWR),
    ("SYS", libc::SIGSYS),
];

/// The highest real-time signal Linux has (`SIGRTMAX`).
const SIGRTMAX: i32 = 64;
const SIGRTMIN: i32 = 34;

/// A signal by number (`9`) or name (`KILL`, `SIGKILL`, `sigterm`,
/// `RTMIN+3`).
pub fn signal(s: &str) -> Result<i32, String> {
    let t = s.trim();
    if let Ok(n) = t.parse::<i32>() {
        if (1..=SIGRTMAX).contains(&n) {
            return Ok(n);
        }
        return Err(format!(
            "invalid signal {s:?}: numbers run from 1 to {SIGRTMAX}"
        ));
    }
    let up = t.to_ascii_uppercase();
    let name = up.strip_prefix("SIG").unwrap_or(&up);
    if let Some(&(_, n)) = SIGNALS.iter().find(|(k, _)| *k == name) {
        return Ok(n);
    }
    let rt = |base: i32, off: &str, sign: i32| -> Option<i32> {
        let k: i32 = if off.is_empty() { 0 } else { off.parse().ok()? };
        let n = base + sign * k;
        (SIGRTMIN..=SIGRTMAX).contains(&n).then_some(n)
    };
    let n = if let Some(off) = name.strip_prefix("RTMIN") {
        off.strip_prefix('+').map_or_else(
            || off.is_empty().then_some(SIGRTMIN),
            |o| rt(SIGRTMIN, o, 1),
        )
    } else if let Some(off) = name.strip_prefix("RTMAX") {
        off.strip_prefix('-').map_or_else(
            || off.is_empty().then_some(SIGRTMAX),
            |o| rt(SIGRTMAX, o, -1),
        )
    } else {
        None
    };
    n.ok_or_else(|| {
        format!("invalid signal {s:?}: not a signal name or number (e.g. KILL, SIGTERM, 15)")
    })
}

/// The name of a signal number, without `SIG` (for messages).
pub fn signal_name(n: i32) -> Option<&'static str> {
    SIGNALS
        .iter()
        .filter(|(k, _)| !matches!(*k, "IOT" | "POLL"))
        .find(|&&(_, v)| v == n)
        .map(|(k, _)| *k)
}

/// `--tail`: the last N lines, or all of them (`None`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tail(pub Option<u64>);

/// `--tail`: a count, or `all`.
pub fn tail(s: &str) -> Result<Tail, String> {
    if s.eq_ignore_ascii_case("all") {
        return Ok(Tail(None));
    }
    s.trim()
        .parse()
        .map(|n| Tail(Some(n)))
        .map_err(|_| format!("invalid --tail {s:?}: expected a number of lines or \"all\""))
}

/// A point in time for `--since`, as unix milliseconds, relative to
/// `now_ms`: a duration back from now (`10m`, `1h30m`, `90s`), a unix
/// timestamp in seconds (`1700000000`, `1700000000.5`), or an RFC 3339 time
/// (`2024-01-02T15:04:05Z`, `2024-01-02T15:04:05.5+01:00`, `2024-01-02`).
pub fn since(s: &str, now_ms: u64) -> Result<u64, String> {
    let t = s.trim();
    let bad = || {
        format!(
            "invalid time {s:?}: use a duration (10m, 1h30m), a unix timestamp or an RFC 3339 time"
        )
    };
    if let Some(d) = go_duration_ms(t) {
        return Ok(now_ms.saturating_sub(d));
    }
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let secs: f64 = t.parse().map_err(|_| bad())?;
        return Ok((secs * 1000.0) as u64);
    }
    rfc3339_ms(t).ok_or_else(bad)
}

/// A Go-style duration (`300ms`, `10s`, `1h30m`, `1.5h`) in ms.
pub fn go_duration_ms(s: &str) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        if num_end == 0 {
            return None;
        }
        let n: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let ms = match &rest[..unit_end] {
            "ms" => 1.0,
            "s" => 1000.0,
            "m" => 60_000.0,
            "h" => 3_600_000.0,
            _ => return None,
        };
        total += n * ms;
        rest = &rest[unit_end..];
    }
    Some(total as u64)
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01: (year, month, day).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// `YYYY-MM-DD[THH:MM[:SS[.frac]]][Z|±HH:MM]` (no zone: UTC) in unix ms.
pub fn rfc3339_ms(s: &str) -> Option<u64> {
    let num = |t: &str| -> Option<u32> {
        (!t.is_empty() && t.bytes().all(|b| b.is_ascii_digit())).then(|| t.parse().ok())?
    };
    let (date, time) = match s.find(['T', 't', ' ']) {
        Some(i) => (&s[..i], &s[i + 1..]),
        None => (s, ""),
    };
    let mut dp = date.split('-');
    let (y, mo, d) = (num(dp.next()?)?, num(dp.next()?)?, num(dp.next()?)?);
    if dp.next().is_some() || !(1..=12).contains(&mo) || !(1..=31).contains(&d) || date.len() != 10
    {
        return None;
    }
    // Split off the zone.
    let (clock, offset_min): (&str, i64) = if let Some(c) = time.strip_suffix(['Z', 'z']) {
        (c, 0)
    } else if let Some(i) = time.rfind(['+', '-']) {
        let (c, z) = time.split_at(i);
        let sign = if z.starts_with('-') { -1 } else { 1 };
        let (zh, zm) = z[1..].split_once(':').unwrap_or((&z[1..], "0"));
        (c, sign * (num(zh)? as i64 * 60 + num(zm)? as i64))
    } else {
        (time, 0)
    };
    let (mut h, mut mi, mut sec, mut frac_ms) = (0u32, 0u32, 0u32, 0u64);
    if !clock.is_empty() {
        let mut cp = clock.split(':');
        h = num(cp.next()?)?;
        mi = num(cp.next()?)?;
        if let Some(sp) = cp.next() {
            let (whole, frac) = sp.split_once('.').unwrap_or((sp, ""));
            sec = num(whole)?;
            if !frac.is_empty() {
                num(frac)?;
                let f3: String = frac.chars().chain("000".chars()).take(3).collect();
                frac_ms = f3.parse().ok()?;
            }
        }
        if cp.next().is_some() || h > 23 || mi > 59 || sec > 60 {
            return None;
        }
    }
    let days = days_from_civil(y as i64, mo, d);
    let secs = days * 86_400 + (h * 3600 + mi * 60 + sec) as i64 - offset_min * 60;
    u64::try_from(secs * 1000 + frac_ms as i64).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes() {
        assert_eq!(memory_mib("512m"), Ok(512));
        assert_eq!(memory_mib("512M"), Ok(512));
        assert_eq!(memory_mib("512"), Ok(512));
        assert_eq!(memory_mib("1g"), Ok(1024));
        assert_eq!(memory_mib("1.5g"), Ok(1536));
        assert_eq!(memory_mib("2GB"), Ok(2048));
        assert_eq!(memory_mib("256MiB"), Ok(256));
        assert_eq!(memory_mib("2048k"), Ok(2));
        assert_eq!(memory_mib("1500k"), Ok(2), "rounded up");
        assert_eq!(memory_mib("1048576b"), Ok(1));
        assert_eq!(memory_mib("1t"), Ok(1 << 20));
        assert!(memory_mib("0").is_err());
        assert!(memory_mib("").is_err());
        assert!(memory_mib("m").is_err());
        assert!(memory_mib("12q").is_err());
        assert!(memory_mib("-5m").is_err());
        assert!(memory_mib("9999999t").is_err());
    }

    #[test]
    fn cpu_counts() {
        assert_eq!(cpus("2"), Ok(2));
        assert_eq!(cpus("1.5"), Ok(2));
        assert_eq!(cpus("0.5"), Ok(1));
        assert!(cpus("0").is_err());
        assert!(cpus("x").is_err());
        assert!(cpus("300").is_err());
    }

    fn env(k: &str) -> Option<String> {
        (k == "HOME").then(|| "/root".to_string())
    }

    #[test]
    fn env_entries() {
        assert_eq!(env_entry("A=1", env), Ok(Some("A=1".into())));
        assert_eq!(env_entry("A=", env), Ok(Some("A=".into())));
        assert_eq!(env_entry("A=b=c", env), Ok(Some("A=b=c".into())));
        assert_eq!(env_entry("HOME", env), Ok(Some("HOME=/root".into())));
        assert_eq!(env_entry("UNSET", env), Ok(None));
        assert!(env_entry("=x", env).is_err());
    }

    #[test]
    fn env_files() {
        let text = "# a comment\n\nA=1\n  B=two words \nHOME\nUNSET\nC=\"quoted\"\n";
        assert_eq!(
            env_file_lines(text, env).unwrap(),
            ["A=1", "B=two words ", "HOME=/root", "C=\"quoted\""]
        );
        let e = env_file_lines("A=1\nBAD NAME\n", env).unwrap_err();
        assert!(e.starts_with("line 2:"), "{e}");
        assert!(env_file_lines("=1\n", env).is_err());

        let dir = std::env::temp_dir().join(format!("husk-envfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("env");
        std::fs::write(&f, "X=1\n").unwrap();
        assert_eq!(env_file(&f).unwrap(), ["X=1"]);
        assert!(env_file(&dir.join("missing"))
            .unwrap_err()
            .contains("cannot read env file"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn label_maps() {
        let m = labels(&["a=1".into(), "b".into(), "c=x=y".into()]).unwrap();
        assert_eq!(m["a"], "1");
        assert_eq!(m["b"], "");
        assert_eq!(m["c"], "x=y");
        assert!(labels(&["=v".into()]).is_err());
    }

    #[test]
    fn signals() {
        assert_eq!(signal("9"), Ok(9));
        assert_eq!(signal("KILL"), Ok(9));
        assert_eq!(signal("SIGKILL"), Ok(9));
        assert_eq!(signal("sigterm"), Ok(15));
        assert_eq!(signal("term"), Ok(15));
        assert_eq!(signal("INT"), Ok(2));
        assert_eq!(signal("USR1"), Ok(10));
        assert_eq!(signal("HUP"), Ok(1));
        assert_eq!(signal("WINCH"), Ok(28));
        assert_eq!(signal("RTMIN"), Ok(34));
        assert_eq!(signal("SIGRTMIN+3"), Ok(37));
        assert_eq!(signal("RTMAX-1"), Ok(63));
        assert_eq!(signal("RTMAX"), Ok(64));
        assert!(signal("0").is_err());
        assert!(signal("65").is_err());
        assert!(signal("NOPE").is_err());
        assert!(signal("RTMIN+40").is_err());
        assert!(signal("").is_err());
        assert_eq!(signal_name(9), Some("KILL"));
        assert_eq!(signal_name(6), Some("ABRT"));
        assert_eq!(signal_name(99), None);
    }

    #[test]
    fn tails() {
        assert_eq!(tail("all"), Ok(Tail(None)));
        assert_eq!(tail("10"), Ok(Tail(Some(10))));
        assert!(tail("-1").is_err());
    }

    #[test]
    fn durations_and_times() {
        assert_eq!(go_duration_ms("10s"), Some(10_000));
        assert_eq!(go_duration_ms("1h30m"), Some(5_400_000));
        assert_eq!(go_duration_ms("1.5h"), Some(5_400_000));
        assert_eq!(go_duration_ms("250ms"), Some(250));
        assert_eq!(go_duration_ms("10"), None);
        assert_eq!(go_duration_ms("s"), None);
        assert_eq!(go_duration_ms("5d"), None);

        let now = 1_700_000_000_000;
        assert_eq!(since("10m", now), Ok(now - 600_000));
        assert_eq!(since("1700000000", now), Ok(1_700_000_000_000));
        assert_eq!(since("1700000000.25", now), Ok(1_700_000_000_250));
        assert_eq!(since("2023-11-14T22:13:20Z", now), Ok(1_700_000_000_000));
        assert_eq!(
            since("2023-11-14T23:13:20.5+01:00", now),
            Ok(1_700_000_000_500)
        );
        assert_eq!(
            since("2023-11-14T22:13:20.123456789Z", now),
            Ok(1_700_000_000_123)
        );
        assert_eq!(
            since("2023-11-14T21:13:20-01:00", now),
            Ok(1_700_000_000_000)
        );
        assert_eq!(since("1970-01-02", now), Ok(86_400_000));
        assert!(since("yesterday", now).is_err());
        assert!(since("2023-13-01", now).is_err());
        assert!(since("2023-11-14T25:00:00Z", now).is_err());
    }

    #[test]
    fn civil_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        for d in [-1000, -1, 0, 59, 11_016, 11_017, 19_000, 50_000] {
            let (y, m, dd) = civil_from_days(d);
            assert_eq!(days_from_civil(y, m, dd), d);
        }
        assert_eq!(civil_from_days(19_675), (2023, 11, 14));
    }
}
