//! Process-wide counters. They only ever grow; a flush writes them all as
//! one JSON line (with a timestamp) to the metrics file, and the API serves
//! them as JSON or Prometheus text.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Serialize, Serializer};

use crate::vmm::sink::OutputFile;

/// A monotonically increasing count.
#[derive(Debug)]
pub struct Counter(AtomicU64);

impl Counter {
    pub const fn new() -> Self {
        Counter(AtomicU64::new(0))
    }
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Default for Counter {
    fn default() -> Self {
        Self::new()
    }
}

impl Serialize for Counter {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.get())
    }
}

#[derive(Debug, Default, Serialize)]
pub struct ApiMetrics {
    pub requests: Counter,
    pub bad_requests: Counter,
    pub actions: Counter,
    pub connections: Counter,
    /// Connections closed to make room under the cap or the fd limit.
    pub evicted_connections: Counter,
    /// Connections closed for a late request head or body, or idleness.
    pub timed_out_connections: Counter,
    pub accept_errors: Counter,
}

#[derive(Debug, Default, Serialize)]
pub struct VcpuMetrics {
    pub exit_io_in: Counter,
    pub exit_io_out: Counter,
    pub exit_mmio_read: Counter,
    pub exit_mmio_write: Counter,
    pub unhandled_io: Counter,
    pub kicks: Counter,
    pub failures: Counter,
}

#[derive(Debug, Default, Serialize)]
pub struct SerialMetrics {
    pub out_bytes: Counter,
    pub in_bytes: Counter,
    pub missed_write: Counter,
    /// Output bytes the serial rate limiter dropped.
    pub rate_limiter_dropped_bytes: Counter,
}

#[derive(Debug, Default, Serialize)]
pub struct I8042Metrics {
    pub resets: Counter,
    pub ctrl_alt_del: Counter,
    pub missed_keys: Counter,
}

#[derive(Debug, Default, Serialize)]
pub struct BlockMetrics {
    pub requests: Counter,
    pub read_bytes: Counter,
    pub write_bytes: Counter,
    /// Requests answered with an error status, and broken chains.
    pub errors: Counter,
    /// Backing files swapped by PATCH /drives.
    pub swaps: Counter,
    /// Requests a rate limiter held back.
    pub rate_limited: Counter,
}

#[derive(Debug, Default, Serialize)]
pub struct RngMetrics {
    pub requests: Counter,
    pub bytes: Counter,
    /// Malformed requests: read-only buffers, addresses outside memory.
    pub errors: Counter,
    /// Requests a rate limiter held back.
    pub rate_limited: Counter,
}

/// virtio-net. `rx` is TAP to guest, `tx` guest to TAP; bytes are frame
/// bytes, without the virtio-net header.
#[derive(Debug, Default, Serialize)]
pub struct NetMetrics {
    pub rx_frames: Counter,
    pub rx_bytes: Counter,
    /// Frames read from the TAP that no buffer the guest offers can hold.
    pub rx_dropped: Counter,
    /// Malformed receive buffers (too short for the header, read-only,
    /// outside guest memory), broken queues, TAP read errors.
    pub rx_errors: Counter,
    /// Times the device stopped reading the TAP for want of guest buffers.
    pub rx_paused: Counter,
    /// Frames the receive rate limiter held back.
    pub rx_rate_limited: Counter,
    pub tx_frames: Counter,
    pub tx_bytes: Counter,
    /// Well-formed frames the TAP refused.
    pub tx_dropped: Counter,
    /// Malformed frames (shorter than the header, over 65562 bytes,
    /// outside guest memory), broken queues.
    pub tx_errors: Counter,
    /// Frames the transmit rate limiter held back.
    pub tx_rate_limited: Counter,
}

/// virtio-vsock. `tx` is guest to host, `rx` host to guest (the
/// device's queues).
#[derive(Debug, Default, Serialize)]
pub struct VsockMetrics {
    pub tx_packets: Counter,
    pub tx_bytes: Counter,
    pub rx_packets: Counter,
    pub rx_bytes: Counter,
    /// Host clients that sent `CONNECT <port>`.
    pub host_connections: Counter,
    /// Guest REQUESTs that reached a host listener.
    pub guest_connections: Counter,
    /// Guest REQUESTs with nothing listening at `<uds_path>_<port>`.
    pub connect_failures: Counter,
    /// REQUESTs the guest did not answer in time.
    pub connect_timeouts: Counter,
    /// Host clients closed before a connection: a bad or late `CONNECT`
    /// line, too many clients.
    pub refused_connections: Counter,
    pub closed_connections: Counter,
    pub resets_sent: Counter,
    /// Malformed packets or RX buffers, wrong source CID or type.
    pub bad_packets: Counter,
    /// Packets out of order for their connection (reset).
    pub protocol_errors: Counter,
    /// Data sent past the credit the device advertised (reset).
    pub credit_violations: Counter,
    /// RSTs dropped because the guest left no room for them.
    pub dropped_packets: Counter,
    /// Broken queues, failed accepts and registrations.
    pub errors: Counter,
}

/// A vhost-user device (virtio-fs, vhost-user-blk): the frontend (the
/// backend process serves the requests, so there are no request counts
/// here).
#[derive(Debug, Default, Serialize)]
pub struct VhostUserMetrics {
    /// Times the backend was given the queues (the driver's DRIVER_OK).
    pub activations: Counter,
    /// Used-buffer interrupts raised for the backend's calls.
    pub interrupts: Counter,
    /// Backends that closed the connection (or answered out of turn)
    /// while the VM ran; their guest requests go unanswered.
    pub backend_disconnects: Counter,
    /// vhost-user requests that failed (the connection is then dropped).
    pub backend_errors: Counter,
}

/// virtio-balloon.
#[derive(Debug, Default, Serialize)]
pub struct BalloonMetrics {
    /// Times the driver started the device (DRIVER_OK).
    pub activations: Counter,
    /// Pages given back to the host (inflate queue).
    pub inflated_pages: Counter,
    /// Pages the guest took back (deflate queue).
    pub deflated_pages: Counter,
    /// Free pages the guest reported (free page reporting), dropped.
    pub reported_pages: Counter,
    /// Free pages the guest hinted during a hinting run, dropped.
    pub hinted_pages: Counter,
    /// Hint buffers that arrived outside a run, returned untouched.
    pub stale_hints: Counter,
    /// Page frame numbers outside guest memory, skipped.
    pub bad_pfns: Counter,
    /// Inflated or reported pages of hugetlbfs guest memory, which stay
    /// backed: a 4 KiB page cannot be taken out of a 2 MiB huge page
    /// (Firecracker keeps them too).
    pub hugetlb_kept_pages: Counter,
    /// Malformed buffers: device-writable, not a whole number of PFNs,
    /// outside guest memory, an empty or extra statistics buffer;
    /// broken queues.
    pub malformed: Counter,
    /// Statistics buffers the guest filled.
    pub stats_updates: Counter,
    /// Targets changed by PATCH /balloon after start.
    pub target_updates: Counter,
}

/// virtio-pmem, every device together.
#[derive(Debug, Default, Serialize)]
pub struct PmemMetrics {
    /// Times a driver started a device (DRIVER_OK).
    pub activations: Counter,
    /// FLUSH requests answered.
    pub flushes: Counter,
    /// `msync` calls (one per batch of FLUSH requests).
    pub syncs: Counter,
    /// Syncs that failed: their requests were answered with an error.
    pub sync_fails: Counter,
    /// Malformed requests: no room for the status, a short or unknown
    /// request, buffers outside guest memory; broken queues.
    pub malformed: Counter,
    /// Requests a rate limiter held back.
    pub rate_limited: Counter,
    /// Guest writes to a read-only device, dropped.
    pub read_only_writes: Counter,
}

/// Hotpluggable memory (virtio-mem), in Firecracker's names where it has
/// them.
#[derive(Debug, Default, Serialize)]
pub struct MemoryHotplugMetrics {
    /// Times the driver started the device (DRIVER_OK).
    pub activations: Counter,
    /// Start attempts refused: the driver did not accept
    /// VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE.
    pub activate_fails: Counter,
    pub plug_count: Counter,
    pub plug_bytes: Counter,
    /// PLUG requests answered NACK, BUSY or ERROR.
    pub plug_fails: Counter,
    pub unplug_count: Counter,
    pub unplug_bytes: Counter,
    /// UNPLUG requests answered BUSY or ERROR.
    pub unplug_fails: Counter,
    /// Ranges that could not be given back to the host (madvise failed).
    pub unplug_discard_fails: Counter,
    /// Bytes unplugged from hugetlbfs memory, which keep their pages
    /// (reserved for the region at start; see `mem/region.rs`).
    pub hugetlb_kept_bytes: Counter,
    pub unplug_all_count: Counter,
    pub state_count: Counter,
    pub state_fails: Counter,
    /// Requests of an unknown type, or too short: answered ERROR.
    pub bad_requests: Counter,
    /// Chains with no room for a response, or outside guest memory;
    /// broken queues.
    pub malformed: Counter,
    /// Requested sizes set by PATCH /hotplug/memory.
    pub requested_size_updates: Counter,
    /// Guest accesses to the region outside any plugged slot (they
    /// exit to the VMM: reads see zeros, writes are dropped).
    pub unplugged_accesses: Counter,
}

/// The microVM metadata service, as Firecracker counts it: `rx` is what
/// guests send to MMDS, `tx` what MMDS sends back.
#[derive(Debug, Default, Serialize)]
pub struct MmdsMetrics {
    /// Frames addressed to MMDS and taken off the guest's interface.
    pub rx_accepted: Counter,
    /// Of those, malformed ones: bad lengths or checksums, fragments,
    /// ARP packets that are not requests.
    pub rx_accepted_err: Counter,
    /// Of those, IPv4 packets other than TCP (dropped).
    pub rx_accepted_unusual: Counter,
    /// Frames too short for an Ethernet header.
    pub rx_bad_eth: Counter,
    /// TCP segments the stack took in.
    pub rx_count: Counter,
    /// GETs with a token that is not valid (refused under V2).
    pub rx_invalid_token: Counter,
    /// GETs without a token (refused under V2).
    pub rx_no_token: Counter,
    /// Frames the stack produced (ARP replies and TCP segments).
    pub tx_count: Counter,
    /// Frames handed to the guest, and their bytes.
    pub tx_frames: Counter,
    pub tx_bytes: Counter,
    /// Frames lost on the way out (no room, too large for the buffer).
    pub tx_errors: Counter,
    pub connections_created: Counter,
    pub connections_destroyed: Counter,
}

#[derive(Debug, Default, Serialize)]
pub struct VmmMetrics {
    pub instance_starts: Counter,
    pub snapshots_created: Counter,
    pub snapshots_loaded: Counter,
    pub metrics_flushes: Counter,
    /// Metrics lines dropped because a FIFO's reader fell behind.
    pub missed_metrics_writes: Counter,
    /// Log lines dropped because a FIFO's reader fell behind.
    pub missed_log_lines: Counter,
}

#[derive(Debug, Default, Serialize)]
pub struct Metrics {
    pub api_server: ApiMetrics,
    pub vcpu: VcpuMetrics,
    pub serial: SerialMetrics,
    pub i8042: I8042Metrics,
    pub block: BlockMetrics,
    pub rng: RngMetrics,
    pub net: NetMetrics,
    pub vsock: VsockMetrics,
    pub fs: VhostUserMetrics,
    /// vhost-user-blk drives (`socket` in PUT /drives).
    pub vhost_user_block: VhostUserMetrics,
    pub balloon: BalloonMetrics,
    pub pmem: PmemMetrics,
    pub memory_hotplug: MemoryHotplugMetrics,
    pub mmds: MmdsMetrics,
    pub vmm: VmmMetrics,
}

macro_rules! zeroed {
    ($t:ident { $($f:ident),* }) => { $t { $($f: Counter::new()),* } };
}

/// The process's metrics.
pub static METRICS: Metrics = Metrics {
    api_server: zeroed!(ApiMetrics {
        requests,
        bad_requests,
        actions,
        connections,
        evicted_connections,
        timed_out_connections,
        accept_errors
    }),
    vcpu: zeroed!(VcpuMetrics {
        exit_io_in,
        exit_io_out,
        exit_mmio_read,
        exit_mmio_write,
        unhandled_io,
        kicks,
        failures
    }),
    serial: zeroed!(SerialMetrics {
        out_bytes,
        in_bytes,
        missed_write,
        rate_limiter_dropped_bytes
    }),
    i8042: zeroed!(I8042Metrics {
        resets,
        ctrl_alt_del,
        missed_keys
    }),
    block: zeroed!(BlockMetrics {
        requests,
        read_bytes,
        write_bytes,
        errors,
        swaps,
        rate_limited
    }),
    rng: zeroed!(RngMetrics {
        requests,
        bytes,
        errors,
        rate_limited
    }),
    net: zeroed!(NetMetrics {
        rx_frames,
        rx_bytes,
        rx_dropped,
        rx_errors,
        rx_paused,
        rx_rate_limited,
        tx_frames,
        tx_bytes,
        tx_dropped,
        tx_errors,
        tx_rate_limited
    }),
    vsock: zeroed!(VsockMetrics {
        tx_packets,
        tx_bytes,
        rx_packets,
        rx_bytes,
        host_connections,
        guest_connections,
        connect_failures,
        connect_timeouts,
        refused_connections,
        closed_connections,
        resets_sent,
        bad_packets,
        protocol_errors,
        credit_violations,
        dropped_packets,
        errors
    }),
    fs: zeroed!(VhostUserMetrics {
        activations,
        interrupts,
        backend_disconnects,
        backend_errors
    }),
    vhost_user_block: zeroed!(VhostUserMetrics {
        activations,
        interrupts,
        backend_disconnects,
        backend_errors
    }),
    balloon: zeroed!(BalloonMetrics {
        activations,
        inflated_pages,
        deflated_pages,
        reported_pages,
        hinted_pages,
        stale_hints,
        bad_pfns,
        hugetlb_kept_pages,
        malformed,
        stats_updates,
        target_updates
    }),
    pmem: zeroed!(PmemMetrics {
        activations,
        flushes,
        syncs,
        sync_fails,
        malformed,
        rate_limited,
        read_only_writes
    }),
    memory_hotplug: zeroed!(MemoryHotplugMetrics {
        activations,
        activate_fails,
        plug_count,
        plug_bytes,
        plug_fails,
        unplug_count,
        unplug_bytes,
        unplug_fails,
        unplug_discard_fails,
        hugetlb_kept_bytes,
        unplug_all_count,
        state_count,
        state_fails,
        bad_requests,
        malformed,
        requested_size_updates,
        unplugged_accesses
    }),
    mmds: zeroed!(MmdsMetrics {
        rx_accepted,
        rx_accepted_err,
        rx_accepted_unusual,
        rx_bad_eth,
        rx_count,
        rx_invalid_token,
        rx_no_token,
        tx_count,
        tx_frames,
        tx_bytes,
        tx_errors,
        connections_created,
        connections_destroyed
    }),
    vmm: zeroed!(VmmMetrics {
        instance_starts,
        snapshots_created,
        snapshots_loaded,
        metrics_flushes,
        missed_metrics_writes,
        missed_log_lines
    }),
};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The counters as a JSON object with a `utc_timestamp_ms` field.
pub fn snapshot_json(m: &Metrics) -> serde_json::Value {
    let mut v = serde_json::to_value(m).unwrap_or_default();
    if let Some(obj) = v.as_object_mut() {
        obj.insert("utc_timestamp_ms".into(), now_ms().into());
    }
    v
}

/// The counters in the Prometheus text exposition format.
pub fn prometheus_text(m: &Metrics) -> String {
    let mut out = String::new();
    let v = serde_json::to_value(m).unwrap_or_default();
    if let Some(groups) = v.as_object() {
        for (group, fields) in groups {
            for (name, value) in fields.as_object().into_iter().flatten() {
                let metric = format!("husk_{group}_{name}_total");
                out.push_str(&format!("# TYPE {metric} counter\n{metric} {value}\n"));
            }
        }
    }
    out
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics are already configured; they cannot be set up twice")]
    AlreadyConfigured,
    #[error("cannot open metrics file {path}: {err}")]
    Open { path: String, err: std::io::Error },
    #[error("metrics are not configured (PUT /metrics first)")]
    NotConfigured,
    #[error("cannot write metrics: {0}")]
    Write(std::io::Error),
}

/// Where flushed metrics go.
#[derive(Default)]
pub struct MetricsSink {
    file: Option<OutputFile>,
}

impl MetricsSink {
    pub fn configure(&mut self, path: &Path) -> Result<(), MetricsError> {
        if self.file.is_some() {
            return Err(MetricsError::AlreadyConfigured);
        }
        let file = OutputFile::open(path).map_err(|err| MetricsError::Open {
            path: crate::text::echo_path(path),
            err,
        })?;
        self.file = Some(file);
        Ok(())
    }

    pub fn is_configured(&self) -> bool {
        self.file.is_some()
    }

    /// Appends one JSON line with every counter.
    pub fn flush(&mut self) -> Result<(), MetricsError> {
        let file = self.file.as_mut().ok_or(MetricsError::NotConfigured)?;
        METRICS.vmm.metrics_flushes.inc();
        let mut line = snapshot_json(&METRICS).to_string();
        line.push('\n');
        if !file
            .write_record(line.as_bytes())
            .map_err(MetricsError::Write)?
        {
            METRICS.vmm.missed_metrics_writes.inc();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_serialize_as_numbers() {
        let m = Metrics::default();
        m.serial.out_bytes.add(5);
        m.vcpu.exit_io_out.inc();
        let v = snapshot_json(&m);
        assert_eq!(v["serial"]["out_bytes"], 5);
        assert_eq!(v["vcpu"]["exit_io_out"], 1);
        assert!(v["utc_timestamp_ms"].as_u64().unwrap() > 0);
    }

    #[test]
    fn prometheus_lines() {
        let m = Metrics::default();
        m.i8042.resets.inc();
        let t = prometheus_text(&m);
        assert!(t.contains("# TYPE husk_i8042_resets_total counter\nhusk_i8042_resets_total 1\n"));
    }

    #[test]
    fn sink_appends_json_lines_and_refuses_reconfiguration() {
        let dir = std::env::temp_dir().join(format!("husk-metrics-{}", std::process::id()));
        let mut sink = MetricsSink::default();
        assert!(matches!(sink.flush(), Err(MetricsError::NotConfigured)));
        sink.configure(&dir).unwrap();
        sink.flush().unwrap();
        sink.flush().unwrap();
        assert!(matches!(
            sink.configure(&dir),
            Err(MetricsError::AlreadyConfigured)
        ));
        let text = std::fs::read_to_string(&dir).unwrap();
        std::fs::remove_file(&dir).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        for l in lines {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert!(v["vcpu"]["exit_io_out"].is_u64());
        }
    }
}
