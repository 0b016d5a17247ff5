//! The `husk vmm` process: its command line, the API thread, and the VMM
//! thread's loops. Until the microVM starts, the VMM thread serves the
//! API channel directly (starting needs the event loop, which a subscriber
//! cannot borrow); from InstanceStart on, everything runs on the event
//! loop.

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_manager::{EventManager, SubscriberOps};

use super::api;
use super::config::{NetworkOverride, SnapshotLoadParams, VmConfig, VsockOverride};
use super::exit::ExitReason;
use super::logger::Logger;
use super::rpc::{self, ApiAdapter, ApiReceiver, VmmAction, VmmData};
use super::{EventLoop, Vmm};
use crate::jail::seccomp::{Level, Policy};

/// `husk vmm` options.
#[derive(Debug, Clone)]
pub struct VmmOptions {
    pub api_sock: Option<PathBuf>,
    pub config_file: Option<PathBuf>,
    /// `--restore-from` and what goes with it.
    pub restore: Option<SnapshotLoadParams>,
    pub id: String,
    pub api_limits: api::server::Limits,
    /// What a forbidden system call does; `None`: no filters at all.
    pub seccomp: Option<Level>,
    /// The MMDS data store's limit in bytes.
    pub mmds_size_limit: usize,
    /// A JSON file the MMDS data store starts with.
    pub metadata: Option<PathBuf>,
}

/// The command line of `husk vmm` and `husk-vmm`.
#[derive(clap::Args, Debug, Clone)]
pub struct VmmArgs {
    /// Unix socket to serve the per-VM API on.
    #[arg(long, required_unless_present = "no_api")]
    pub api_sock: Option<PathBuf>,
    /// Firecracker-style JSON config; the VM boots at once.
    #[arg(long, group = "vm_source")]
    pub config_file: Option<PathBuf>,
    /// Serve no API (needs --config-file or --restore-from).
    #[arg(long, conflicts_with = "api_sock", requires = "vm_source")]
    pub no_api: bool,
    /// Restore this snapshot state file at once and run it (the clone
    /// fast path); needs --mem-file.
    #[arg(long, group = "vm_source", requires = "mem_file")]
    pub restore_from: Option<PathBuf>,
    /// The snapshot's memory file, mapped copy-on-write.
    #[arg(long, requires = "restore_from")]
    pub mem_file: Option<PathBuf>,
    /// With --restore-from: the vsock's Unix socket for this clone.
    #[arg(long, requires = "restore_from")]
    pub vsock_uds: Option<PathBuf>,
    /// With --restore-from: a new guest CID for this clone (needs
    /// --vsock-uds).
    #[arg(long, requires = "vsock_uds")]
    pub vsock_cid: Option<u32>,
    /// With --restore-from: IFACE=TAP puts interface IFACE on another TAP
    /// (repeatable).
    #[arg(long = "net-override", requires = "restore_from", value_parser = parse_net_override)]
    pub net_overrides: Vec<NetworkOverride>,
    /// With --restore-from: track dirty pages, for diff snapshots later.
    #[arg(long, requires = "restore_from")]
    pub track_dirty_pages: bool,
    /// With --restore-from: advance the guest's kvmclock by the wall-clock
    /// time since the snapshot (`clock_realtime` of PUT /snapshot/load).
    #[arg(long, requires = "restore_from")]
    pub clock_realtime: bool,
    /// The microVM's id, reported by `GET /`: 1 to 64 letters, digits,
    /// '-' or '_'.
    #[arg(long, default_value = "anonymous-instance", value_parser = parse_id)]
    pub id: String,
    /// Milliseconds an API client has to send a request's head, from its
    /// first byte; the connection is closed after that.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub api_header_timeout_ms: u64,
    /// Milliseconds an API client has to send a request's body once its
    /// head has arrived; it gets a 408 after that.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub api_body_timeout_ms: u64,
    /// Milliseconds an API connection may stay open with no request.
    #[arg(long, default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub api_idle_timeout_ms: u64,
    /// Most API connections open at once (also kept under half the
    /// open-file limit); one more closes the one idle the longest.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u64).range(1..=65536))]
    pub api_max_connections: u64,
    /// The largest API request body, in bytes (Firecracker's option and
    /// default).
    #[arg(long, default_value_t = 51_200, value_parser = clap::value_parser!(u64).range(1..=16 << 20))]
    pub http_api_max_payload_size: u64,
    /// The largest MMDS data store, in bytes (serialized JSON); the
    /// default is --http-api-max-payload-size, as in Firecracker.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=64 << 20))]
    pub mmds_size_limit: Option<u64>,
    /// A JSON file whose contents the MMDS data store starts with (as a
    /// PUT /mmds would set them).
    #[arg(long)]
    pub metadata: Option<PathBuf>,
    /// What a system call outside a thread's seccomp filter does: `kill`
    /// ends the process with SIGSYS after naming the call on stderr;
    /// `log` lets it through and the kernel's audit log records it.
    #[arg(long, value_enum, default_value_t = Level::Kill)]
    pub seccomp_level: Level,
    /// Run with no seccomp filters at all. For debugging only: a guest
    /// that escapes into this process could then make any system call.
    #[arg(long, conflicts_with = "seccomp_level")]
    pub no_seccomp: bool,
}

/// `IFACE=TAP`.
fn parse_net_override(s: &str) -> Result<NetworkOverride, String> {
    match s.split_once('=') {
        Some((iface, tap)) if !iface.is_empty() && !tap.is_empty() => Ok(NetworkOverride {
            iface_id: iface.into(),
            host_dev_name: tap.into(),
        }),
        _ => Err("expected IFACE=TAP".into()),
    }
}

/// Instance ids end up in paths and logs, so they are kept plain.
pub fn parse_id(s: &str) -> Result<String, String> {
    if super::config::is_plain_id(s) {
        Ok(s.to_string())
    } else {
        Err("an id is 1 to 64 letters, digits, '-' or '_'".into())
    }
}

impl From<VmmArgs> for VmmOptions {
    fn from(a: VmmArgs) -> Self {
        let path = |p: PathBuf| p.to_string_lossy().into_owned();
        let restore = a.restore_from.map(|state| SnapshotLoadParams {
            snapshot_path: path(state),
            mem_file_path: a.mem_file.map(path),
            mem_backend: None,
            track_dirty_pages: a.track_dirty_pages,
            enable_diff_snapshots: false,
            resume_vm: true,
            network_overrides: a.net_overrides,
            vsock_override: a.vsock_uds.map(|uds| VsockOverride {
                uds_path: path(uds),
                guest_cid: a.vsock_cid,
            }),
            clock_realtime: a.clock_realtime,
        });
        VmmOptions {
            api_sock: a.api_sock,
            config_file: a.config_file,
            restore,
            id: a.id,
            seccomp: (!a.no_seccomp).then_some(a.seccomp_level),
            mmds_size_limit: a.mmds_size_limit.unwrap_or(a.http_api_max_payload_size) as usize,
            metadata: a.metadata,
            api_limits: api::server::Limits {
                header_timeout: Duration::from_millis(a.api_header_timeout_ms),
                body_timeout: Duration::from_millis(a.api_body_timeout_ms),
                idle_timeout: Duration::from_millis(a.api_idle_timeout_ms),
                max_connections: a.api_max_connections as usize,
                max_payload: a.http_api_max_payload_size as usize,
            },
        }
    }
}

/// Runs one microVM until its guest stops. Returns the process exit status:
/// 0 after a guest reset or power-off, 1 when the VMM could not run the
/// VM, 3 after a guest triple fault, 4 after a vCPU error.
pub fn run(opts: VmmOptions) -> i32 {
    let logger = Logger::init();
    let seccomp = match opts.seccomp {
        Some(level) => match Policy::new(level) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("husk vmm: {e}");
                return 1;
            }
        },
        None => {
            eprintln!(
                "husk vmm: WARNING: --no-seccomp: this VMM runs with NO seccomp filters; \
                 a guest that escapes into it can make any system call. Debugging only."
            );
            tracing::warn!("seccomp filters are off (--no-seccomp)");
            Policy::off()
        }
    };
    let mut api_sock = None;
    let api = match &opts.api_sock {
        Some(path) => {
            let started = api::bind(path).and_then(|listener| {
                let (sender, receiver) = rpc::channel_pair()?;
                api::spawn_server(listener, sender, opts.api_limits, seccomp.clone())?;
                Ok(receiver)
            });
            match started {
                Ok(r) => {
                    api_sock = Some(path.clone());
                    Some(r)
                }
                Err(e) => {
                    eprintln!(
                        "husk vmm: cannot serve the API on {}: {e}",
                        crate::text::echo_path(path)
                    );
                    return 1;
                }
            }
        }
        None => None,
    };
    tracing::debug!("husk vmm starting");
    let code = run_with(opts, logger, api, seccomp);
    tracing::debug!("husk vmm exiting");
    if let Some(path) = api_sock {
        let _ = std::fs::remove_file(path);
    }
    code
}

fn run_with(opts: VmmOptions, logger: Logger, api: Option<ApiReceiver>, seccomp: Policy) -> i32 {
    let mut vmm = match Vmm::new(opts.id.clone(), logger) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("husk vmm: {e}");
            return 1;
        }
    };
    vmm.set_seccomp(seccomp);
    vmm.set_mmds_size_limit(opts.mmds_size_limit);
    vmm.open_vm_early();
    if let Some(path) = &opts.metadata {
        if let Err(e) = vmm.load_metadata(path) {
            eprintln!("husk vmm: {e}");
            return 1;
        }
    }
    let mut events: EventLoop = match EventManager::new() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("husk vmm: cannot create the event loop: {e:?}");
            return 1;
        }
    };
    if let Some(path) = &opts.config_file {
        let started = VmConfig::from_file(path)
            .map_err(|e| e.to_string())
            .and_then(|cfg| vmm.apply_config(cfg).map_err(|e| e.to_string()))
            .and_then(|_| vmm.start(&mut events).map_err(|e| e.to_string()));
        if let Err(e) = started {
            eprintln!("husk vmm: {e}");
            return 1;
        }
    }
    if let Some(params) = opts.restore.clone() {
        if let Err(e) = vmm.load_snapshot(params, &mut events) {
            eprintln!("husk vmm: {e}");
            return 1;
        }
    }
    if let Some(api) = &api {
        serve_until_started(&mut vmm, api, &mut events);
    }
    let vmm = Arc::new(Mutex::new(vmm));
    events.add_subscriber(vmm.clone());
    if let Some(api) = api {
        events.add_subscriber(Arc::new(Mutex::new(ApiAdapter::new(api, vmm.clone()))));
    }
    loop {
        if let Err(e) = events.run() {
            tracing::error!("event loop error: {e:?}");
        }
        let vmm = vmm.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(code) = vmm.exit_code() {
            if let Some(msg) = vmm.exit_reason().and_then(ExitReason::failure_message) {
                eprintln!("husk vmm: {msg} (exit status {code})");
            }
            return code;
        }
    }
}

/// Serves API requests (and the metrics timer) until InstanceStart
/// succeeds.
fn serve_until_started(vmm: &mut Vmm, api: &ApiReceiver, events: &mut EventLoop) {
    while !vmm.is_started() {
        let mut fds = [
            libc::pollfd {
                fd: api.evt.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: vmm.metrics_timer().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfds that outlives the
        // call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            // EINTR: a signal (the vCPU kick is never sent before start).
            continue;
        }
        if fds[1].revents & libc::POLLIN != 0 {
            vmm.on_metrics_timer();
        }
        for req in api.pending() {
            req.serve(|action| match action {
                VmmAction::InstanceStart => vmm.start(events).map(|_| VmmData::Empty),
                VmmAction::LoadSnapshot(p) => vmm.load_snapshot(p, events).map(|_| VmmData::Empty),
                other => vmm.handle(other),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids() {
        assert!(parse_id("vm-1_a").is_ok());
        assert!(parse_id(&"a".repeat(64)).is_ok());
        for bad in ["", "../x", "a b", "é", &"a".repeat(65)] {
            assert!(parse_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn limits_come_from_the_command_line() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: VmmArgs,
        }
        let cli = Cli::parse_from(["vmm", "--api-sock", "s", "--api-idle-timeout-ms", "1500"]);
        let opts = VmmOptions::from(cli.args);
        assert_eq!(opts.api_limits.idle_timeout, Duration::from_millis(1500));
        assert_eq!(opts.api_limits.header_timeout, Duration::from_secs(10));
        assert_eq!(opts.mmds_size_limit, 51_200);
        let cli = Cli::parse_from([
            "vmm",
            "--api-sock",
            "s",
            "--http-api-max-payload-size",
            "1000",
        ]);
        assert_eq!(VmmOptions::from(cli.args).mmds_size_limit, 1000);
        let cli = Cli::parse_from(["vmm", "--api-sock", "s", "--mmds-size-limit", "512"]);
        assert_eq!(VmmOptions::from(cli.args).mmds_size_limit, 512);
        assert!(
            Cli::try_parse_from(["vmm", "--api-sock", "s", "--api-max-connections", "0"]).is_err()
        );
    }
}
