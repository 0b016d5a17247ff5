//! What the container, volume and network suites share: the runtime
//! with its interruption (SIGINT or SIGTERM stops the bench, which then
//! cleans up), and a `husk serve` of the bench's own whose containers,
//! VMs and self end when it is dropped, whatever happened.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinSet;

use super::ms;
use crate::client::types::ListOptions;
use crate::client::DaemonClient;
use crate::daemon::backend::BackendKind;

/// The longest any one step (a start, a wait, a burst) may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the daemon is given to remove the containers at the end; then
/// it and whatever runs in the bench's directory is killed. (A start that
/// was cut short, by an interrupt or an error, leaves its container
/// `starting` for good, and its removal never ends.)
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(20);

// --- interruption, and the runtime ---

/// What every measurement shares.
pub(super) struct Ctx {
    pub(super) rt: tokio::runtime::Runtime,
    /// Turns true on SIGINT or SIGTERM: the bench stops and cleans up.
    pub(super) interrupted: watch::Receiver<bool>,
    pub(super) husk: PathBuf,
    pub(super) kernel: PathBuf,
    pub(super) agent: PathBuf,
    pub(super) runs: usize,
}

impl Ctx {
    /// A two-worker runtime that listens for SIGINT and SIGTERM.
    pub(super) fn new(kernel: PathBuf, agent: PathBuf, runs: usize) -> Result<Ctx, String> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let interrupted = listen_for_signals(&rt)?;
        Ok(Ctx {
            rt,
            interrupted,
            husk: std::env::current_exe().map_err(|e| e.to_string())?,
            kernel,
            agent,
            runs,
        })
    }

    /// Runs `f` to completion, unless the bench is interrupted or it
    /// takes longer than [`STEP_TIMEOUT`].
    pub(super) fn block<T>(
        &self,
        what: &str,
        f: impl std::future::Future<Output = Result<T, String>>,
    ) -> Result<T, String> {
        let mut stop = self.interrupted.clone();
        self.rt
            .block_on(async move {
                tokio::select! {
                    r = tokio::time::timeout(STEP_TIMEOUT, f) => r.unwrap_or_else(|_| {
                        Err(format!("{what}: no answer within {} s", STEP_TIMEOUT.as_secs()))
                    }),
                    _ = stop.wait_for(|v| *v) => Err("interrupted".into()),
                }
            })
            .map_err(|e| format!("{what}: {e}"))
    }

    pub(super) fn check(&self) -> Result<(), String> {
        if *self.interrupted.borrow() {
            return Err("interrupted".into());
        }
        Ok(())
    }
}

fn listen_for_signals(rt: &tokio::runtime::Runtime) -> Result<watch::Receiver<bool>, String> {
    use tokio::signal::unix::{signal, SignalKind};
    let (tx, rx) = watch::channel(false);
    let _guard = rt.enter();
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    rt.spawn(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        eprintln!("husk bench: interrupted; removing the containers");
        let _ = tx.send(true);
    });
    Ok(rx)
}

/// SIGKILLs every process but this one whose command line names `root`
/// (the VMs a daemon left behind live in there), and waits until they
/// are gone.
pub(super) fn kill_strays(root: &Path) {
    let mut needle = root.as_os_str().as_encoded_bytes().to_vec();
    needle.push(b'/');
    let me = std::process::id();
    let strays = || -> Vec<i32> {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return vec![];
        };
        dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|&pid| pid != me)
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| c.windows(needle.len()).any(|w| w == needle))
            })
            .map(|pid| pid as i32)
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = strays();
        if left.is_empty() || Instant::now() > deadline {
            return;
        }
        for pid in left {
            // SAFETY: kill has no memory effects; pid names a process
            // whose command line holds our scratch directory.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// --- the daemon ---

/// A `husk serve` of ours: its containers, its VMs and itself end when
/// this is dropped, whatever happened.
pub(super) struct Daemon<'a> {
    pub(super) ctx: &'a Ctx,
    pub(super) child: Child,
    pub(super) root: PathBuf,
    pub(super) state: PathBuf,
    pub(super) sock: PathBuf,
    pub(super) client: DaemonClient,
}

impl<'a> Daemon<'a> {
    /// Starts `husk serve` in `root` (its state directory already holds
    /// the image); returns it with the time from exec to its socket
    /// accepting connections, and to its first API answer.
    pub(super) fn start(
        ctx: &'a Ctx,
        root: &Path,
        kind: BackendKind,
    ) -> Result<(Self, f64, f64), String> {
        let state = root.join("state");
        let sock = root.join("husk.sock");
        let log_path = root.join("daemon.log");
        let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let begin = Instant::now();
        let child = Command::new(&ctx.husk)
            .arg("serve")
            .arg("--socket")
            .arg(&sock)
            .arg("--state-dir")
            .arg(&state)
            .arg("--kernel")
            .arg(&ctx.kernel)
            .arg("--agent")
            .arg(&ctx.agent)
            .arg("--vm-backend")
            .arg(kind.as_str())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("cannot start husk serve: {e}"))?;
        let mut d = Daemon {
            ctx,
            child,
            root: root.to_path_buf(),
            client: DaemonClient::new(&sock),
            state,
            sock,
        };
        let deadline = begin + Duration::from_secs(20);
        let mut socket_ms = None;
        loop {
            ctx.check()?;
            if socket_ms.is_none() && UnixStream::connect(&d.sock).is_ok() {
                socket_ms = Some(ms(begin.elapsed()));
            }
            if socket_ms.is_some() && ctx.rt.block_on(d.client.info()).is_ok() {
                break;
            }
            if let Ok(Some(status)) = d.child.try_wait() {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                return Err(format!("husk serve exited ({status}): {}", log.trim()));
            }
            if Instant::now() > deadline {
                return Err("husk serve did not answer within 20 s".into());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let api_ms = ms(begin.elapsed());
        Ok((d, socket_ms.unwrap_or(api_ms), api_ms))
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Removes every container (their VMs end with them).
    pub(super) async fn remove_all(client: DaemonClient) -> Result<usize, String> {
        let all = ListOptions {
            all: true,
            ..Default::default()
        };
        let list = client.list(&all).await.map_err(|e| e.to_string())?;
        let n = list.len();
        let mut set = JoinSet::new();
        for r in list {
            let c = client.clone();
            set.spawn(async move { c.remove(&r.id, true).await });
        }
        while let Some(r) = set.join_next().await {
            r.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
        }
        Ok(n)
    }

    /// The console the daemon kept of an exited container.
    pub(super) fn console(&self, id: &str) -> String {
        let p = self.state.join("containers").join(id).join("console.log");
        std::fs::read_to_string(p).unwrap_or_default()
    }
}

impl Drop for Daemon<'_> {
    fn drop(&mut self) {
        let client = self.client.clone();
        let _ = self.ctx.rt.block_on(async move {
            tokio::time::timeout(CLEANUP_TIMEOUT, Self::remove_all(client)).await
        });
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Whatever the daemon did not end (it was wedged, or died).
        kill_strays(&self.root);
    }
}
