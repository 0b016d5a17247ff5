//! The API under load: 10,000 requests over one keep-alive connection and
//! 10,000 on a new connection each, first alone, then with 1,000 idle
//! connections held open. Latency percentiles, and the VMM's resident
//! memory before, after and at its peak.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use serde_json::json;

use super::{ms, rss_kib, Bench};
use crate::vmm::client::{self, Connection};

const REQUESTS: usize = 10_000;
const IDLE_CONNECTIONS: usize = 1_000;

/// p50 / p90 / p99 / max of a sample, in milliseconds.
fn percentiles(mut v: Vec<f64>) -> serde_json::Value {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return serde_json::Value::Null;
    }
    let at = |q: f64| {
        let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
        (v[i] * 1000.0).round() / 1000.0
    };
    json!({"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": at(1.0)})
}

fn keep_alive_run(sock: &Path) -> Result<Vec<f64>, String> {
    let mut conn = Connection::open(sock).map_err(|e| e.to_string())?;
    let mut lat = Vec::with_capacity(REQUESTS);
    for _ in 0..REQUESTS {
        let t = Instant::now();
        let r = conn.request("GET", "/", None).map_err(|e| e.to_string())?;
        if r.status != 200 {
            return Err(format!("GET /: {} {}", r.status, r.body));
        }
        lat.push(ms(t.elapsed()));
    }
    Ok(lat)
}

fn new_connection_run(sock: &Path) -> Result<Vec<f64>, String> {
    let mut lat = Vec::with_capacity(REQUESTS);
    for _ in 0..REQUESTS {
        let t = Instant::now();
        let r = client::request(sock, "GET", "/", None).map_err(|e| e.to_string())?;
        if r.status != 200 {
            return Err(format!("GET /: {} {}", r.status, r.body));
        }
        lat.push(ms(t.elapsed()));
    }
    Ok(lat)
}

fn both_runs(sock: &Path, pid: u32) -> Result<serde_json::Value, String> {
    let before = rss_kib(pid)?.0;
    let keep_alive = keep_alive_run(sock)?;
    let fresh = new_connection_run(sock)?;
    let (after, peak) = rss_kib(pid)?;
    Ok(json!({
        "keep_alive_latency_ms": percentiles(keep_alive),
        "new_connection_latency_ms": percentiles(fresh),
        "rss_before_kib": before,
        "rss_after_kib": after,
        "rss_peak_kib": peak,
    }))
}

impl Bench {
    /// The soak figures of one VMM with its API and no guest.
    pub(super) fn soak(&self) -> Result<serde_json::Value, String> {
        let sock = self.sock(0);
        let mut child: Child = self.spawn_api(&sock).map_err(|e| e.to_string())?;
        let pid = child.id();
        let result = (|| {
            Self::wait_for_socket(&sock, Duration::from_secs(5)).ok_or("no API socket")?;
            let (start_rss, _) = rss_kib(pid)?;
            let alone = both_runs(&sock, pid)?;
            let idle: Vec<UnixStream> = (0..IDLE_CONNECTIONS)
                .filter_map(|_| UnixStream::connect(&sock).ok())
                .collect();
            let held = idle.len();
            let crowded = both_runs(&sock, pid)?;
            drop(idle);
            let metrics = client::request(&sock, "GET", "/metrics", None)
                .map_err(|e| e.to_string())?
                .json();
            let (end_rss, peak) = rss_kib(pid)?;
            Ok(json!({
                "requests_per_run": REQUESTS,
                "rss_at_start_kib": start_rss,
                "without_idle_connections": alone,
                "idle_connections_held": held,
                "with_idle_connections": crowded,
                "rss_at_end_kib": end_rss,
                "rss_peak_kib": peak,
                "connections_evicted": metrics["api_server"]["evicted_connections"],
            }))
        })();
        let _ = child.kill();
        let _ = child.wait();
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_ranks() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let p = percentiles(v);
        assert_eq!(p["p50"], 50.0);
        assert_eq!(p["p99"], 99.0);
        assert_eq!(p["max"], 100.0);
    }
}
