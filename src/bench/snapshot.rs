//! `husk bench --suite snapshot`: snapshots measured end to end against
//! real `husk vmm` processes running the probe guest.
//!
//! - For 128 MiB, 1 GiB and 4 GiB guests: `PUT /snapshot/load` (File
//!   backend, `resume_vm`) into a fresh VMM → the restored guest's first
//!   serial byte, and the load request's own round trip; exec with
//!   `--restore-from` → first serial byte; and, to compare, InstanceStart
//!   → first serial byte of a cold boot of the same guest. The guest is
//!   counting on its serial port when it is snapshotted, so it writes
//!   again the moment its vCPU runs.
//! - `PUT /snapshot/create`: a full snapshot after the guest dirtied
//!   16384 pages, then a diff after it dirtied 1024 more: how long each
//!   takes, and what its memory file occupies.
//! - Memory: the PSS of 10 clones restored from one snapshot of a guest
//!   that dirtied 64 MiB, against 10 cold-booted VMs that each dirtied the
//!   same 64 MiB.
//!
//! Every VMM started here is killed and reaped when its handle drops, on
//! error paths too.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{ms, summary, Bench};
use crate::vmm::client;

/// Guest sizes of the load, restore and cold-boot figures.
const SIZES_MIB: [u64; 3] = [128, 1024, 4096];
/// The guest of the create and memory figures: `dirty:N` writes from
/// 64 MiB up, and 16384 + 1024 pages must fit.
const DIRTY_GUEST_MIB: u64 = 256;
/// Pages dirtied before the full snapshot (64 MiB), and before the diff.
const FULL_DIRTY_PAGES: u64 = 16384;
const DIFF_DIRTY_PAGES: u64 = 1024;
/// Clones, and cold-booted VMs, in the memory figure.
const VMS: usize = 10;
/// Runs of the create figures at most (each writes and syncs 64 MiB).
const CREATE_RUNS: usize = 5;
/// A count that never ends during the bench.
const LONG_COUNT: &str = "count:1000000000";
/// How long any one step may take before the bench gives up.
const DEADLINE: Duration = Duration::from_secs(20);

const BUDGET_LOAD_MS: f64 = 2.0;
const BUDGET_RESTORE_EXEC_MS: f64 = 5.0;
const BUDGET_CLONES_PSS_RATIO: f64 = 1.5;
/// The boot figure's budget (as the vmm suite prints it).
const BUDGET_COLD_BOOT_MS: f64 = 5.0;

/// A VMM process of this bench: killed and reaped when dropped.
struct Vmm {
    child: Child,
    out: Option<ChildStdout>,
    /// Where its stderr goes, for error messages.
    err_path: PathBuf,
    /// Just before it was spawned.
    spawned_at: Instant,
}

impl Vmm {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn take_out(&mut self) -> Result<ChildStdout, String> {
        self.out.take().ok_or_else(|| "no stdout".to_string())
    }

    /// An error about this VMM, with how it exited (if it did) and the
    /// end of its stderr.
    fn failed(&mut self, what: impl std::fmt::Display) -> String {
        // A VMM that just closed its stdout may still be exiting.
        let deadline = Instant::now() + Duration::from_millis(200);
        let mut status = None;
        while status.is_none() && Instant::now() < deadline {
            status = self.child.try_wait().ok().flatten();
            if status.is_none() {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let status = status.map(|s| format!(" ({s})")).unwrap_or_default();
        let err = std::fs::read_to_string(&self.err_path).unwrap_or_default();
        let err = err.trim();
        let mut from = err.len().saturating_sub(600);
        while !err.is_char_boundary(from) {
            from += 1;
        }
        let tail = &err[from..];
        if tail.is_empty() {
            format!("{what}{status}")
        } else {
            format!("{what}{status}; its stderr ends: {tail}")
        }
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until one of `fds` (negative ones are skipped) can be read (or
/// is closed), or `deadline` passes; says which can.
fn poll_readable<const N: usize>(fds: [RawFd; N], deadline: Instant) -> Result<[bool; N], String> {
    let mut pfds = fds.map(|fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    });
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("nothing after {} s", DEADLINE.as_secs()));
        }
        let timeout = left.as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: `pfds` is a live, writable array of `N` pollfds.
        let r = unsafe { libc::poll(pfds.as_mut_ptr(), N as libc::nfds_t, timeout) };
        if r > 0 {
            return Ok(pfds.map(|p| p.revents != 0));
        }
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(format!("poll: {e}"));
            }
        }
    }
}

/// A whole HTTP response in `raw`: its head and Content-Length bytes of
/// body.
fn response_complete(raw: &[u8]) -> bool {
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&raw[..split]);
    let len: usize = head
        .split("\r\n")
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())
                .flatten()
        })
        .unwrap_or(0);
    raw.len() >= split + 4 + len
}

/// Bytes a counting probe guest writes.
fn is_count_output(bytes: &[u8]) -> bool {
    bytes.iter().all(|b| b"COUNT 0123456789\n".contains(b))
}

/// Sends one request to `sock` and waits both for its answer and for the
/// first bytes on `out` (the guest's serial port), which may come first;
/// with `restored`, they must continue a count. Returns (ms to the first
/// serial byte, ms to the whole answer), both from just before
/// connecting.
fn request_and_first_byte(
    vmm: &mut Vmm,
    restored: bool,
    sock: &Path,
    out: &mut ChildStdout,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(f64, f64), String> {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let start = Instant::now();
    let mut conn = UnixStream::connect(sock).map_err(|e| vmm.failed(format!("connect: {e}")))?;
    conn.write_all(req.as_bytes())
        .map_err(|e| vmm.failed(format!("{method} {path}: {e}")))?;
    let deadline = start + DEADLINE;
    let (mut first_byte, mut answered) = (None, None);
    let mut resp = Vec::new();
    while first_byte.is_none() || answered.is_none() {
        let fds = [
            if first_byte.is_none() {
                out.as_raw_fd()
            } else {
                -1
            },
            if answered.is_none() {
                conn.as_raw_fd()
            } else {
                -1
            },
        ];
        let ready = poll_readable(fds, deadline).map_err(|e| {
            let what = if answered.is_none() {
                "the answer"
            } else {
                "the guest's first serial byte"
            };
            vmm.failed(format!("{method} {path}: waiting for {what}: {e}"))
        })?;
        let now = Instant::now();
        if ready[0] {
            let mut buf = [0u8; 64];
            let n = out.read(&mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                return Err(vmm.failed("the VMM's output ended before the guest wrote"));
            }
            if restored && !is_count_output(&buf[..n]) {
                return Err(format!(
                    "unexpected output from a restored guest {:?}",
                    String::from_utf8_lossy(&buf[..n])
                ));
            }
            first_byte = Some(now);
        }
        if ready[1] {
            let mut chunk = [0u8; 1024];
            let n = conn.read(&mut chunk).map_err(|e| e.to_string())?;
            resp.extend_from_slice(&chunk[..n]);
            if n == 0 || response_complete(&resp) {
                answered = Some(now);
                let r = client::parse_response(&resp).map_err(|e| e.to_string())?;
                if r.status != 204 {
                    return Err(vmm.failed(format!("{method} {path}: {} {}", r.status, r.body)));
                }
            }
        }
    }
    let since = |t: Option<Instant>| t.map_or(0.0, |t| ms(t - start));
    Ok((since(first_byte), since(answered)))
}

/// Reads the first bytes on `out` by `deadline`: how long after `start`
/// they came.
fn first_byte_after(vmm: &mut Vmm, out: &mut ChildStdout, start: Instant) -> Result<f64, String> {
    poll_readable([out.as_raw_fd()], start + DEADLINE)
        .map_err(|e| vmm.failed(format!("waiting for the guest's first serial byte: {e}")))?;
    let at = Instant::now();
    let mut buf = [0u8; 64];
    let n = out.read(&mut buf).map_err(|e| e.to_string())?;
    if n == 0 {
        return Err(vmm.failed("the VMM's output ended before the guest wrote"));
    }
    if !is_count_output(&buf[..n]) {
        return Err(format!(
            "unexpected output from a restored guest {:?}",
            String::from_utf8_lossy(&buf[..n])
        ));
    }
    Ok(ms(at - start))
}

/// Lines of a VMM's stdout read on demand, each with a deadline. Output
/// nobody reads fills the pipe and then stops the guest's vCPU, which is
/// what the memory figure wants from its 20 VMs.
struct Lines {
    out: ChildStdout,
    buf: Vec<u8>,
}

impl Lines {
    fn next(&mut self, vmm: &mut Vmm, deadline: Instant) -> Result<String, String> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return Ok(String::from_utf8_lossy(&line[..i]).into_owned());
            }
            poll_readable([self.out.as_raw_fd()], deadline)
                .map_err(|e| vmm.failed(format!("waiting for the guest: {e}")))?;
            let mut chunk = [0u8; 4096];
            let n = self.out.read(&mut chunk).map_err(|e| e.to_string())?;
            if n == 0 {
                return Err(vmm.failed("the VMM's output ended"));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Skips to the line that starts with `prefix`; a check that fails
    /// is an error.
    fn expect(&mut self, vmm: &mut Vmm, prefix: &str) -> Result<String, String> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let line = self.next(vmm, deadline)?;
            if line.starts_with(prefix) {
                return Ok(line);
            }
            if line.starts_with("PROBE ") && line.contains(" FAIL") {
                return Err(vmm.failed(format!("the guest says {line:?}")));
            }
        }
    }
}

/// A VMM with an API socket whose guest's output a thread of its own
/// reads all the time (so that the guest never blocks on a full pipe and
/// can always be paused): it keeps the last `COUNT` and passes on the
/// other lines.
struct Source {
    vmm: Vmm,
    sock: PathBuf,
    count: Arc<AtomicU64>,
    lines: mpsc::Receiver<String>,
}

fn drain(out: ChildStdout, count: &AtomicU64, tx: &mpsc::Sender<String>) {
    let mut r = BufReader::new(out);
    let mut line = Vec::new();
    loop {
        line.clear();
        match r.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end();
        match text.strip_prefix("COUNT ").and_then(|n| n.parse().ok()) {
            Some(n) => count.store(n, Ordering::Relaxed),
            // With nobody listening any more, go on draining.
            None => drop(tx.send(text.to_string())),
        }
    }
}

impl Source {
    fn request(&mut self, method: &str, path: &str, body: &Value) -> Result<f64, String> {
        let body = body.to_string();
        let start = Instant::now();
        let r = client::request(&self.sock, method, path, Some(&body))
            .map_err(|e| self.vmm.failed(format!("{method} {path}: {e}")))?;
        let took = ms(start.elapsed());
        if r.status != 204 {
            return Err(self
                .vmm
                .failed(format!("{method} {path}: {} {}", r.status, r.body)));
        }
        Ok(took)
    }

    fn action(&mut self, action: &str) -> Result<(), String> {
        self.request("PUT", "/actions", &json!({ "action_type": action }))
            .map(drop)
    }

    fn set_state(&mut self, state: &str) -> Result<(), String> {
        self.request("PATCH", "/vm", &json!({ "state": state }))
            .map(drop)
    }

    /// Writes a snapshot; returns how long the request took, in ms.
    fn create(&mut self, kind: &str, state: &Path, mem: &Path) -> Result<f64, String> {
        let body = json!({"snapshot_type": kind, "snapshot_path": state, "mem_file_path": mem});
        self.request("PUT", "/snapshot/create", &body)
    }

    fn expect_line(&mut self, prefix: &str) -> Result<String, String> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match self.lines.recv_timeout(left) {
                Ok(l) => l,
                Err(_) => return Err(self.vmm.failed(format!("no line {prefix:?}"))),
            };
            if line.starts_with(prefix) {
                return Ok(line);
            }
            if line.starts_with("PROBE ") && line.contains(" FAIL") {
                return Err(self.vmm.failed(format!("the guest says {line:?}")));
            }
        }
    }

    fn wait_count(&mut self, at_least: u64) -> Result<(), String> {
        let deadline = Instant::now() + DEADLINE;
        while self.count.load(Ordering::Relaxed) < at_least {
            if Instant::now() > deadline {
                return Err(self
                    .vmm
                    .failed(format!("the guest never counted to {at_least}")));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }
}

/// The PSS of a process, and its anonymous and file-backed parts, in
/// KiB, from /proc/PID/smaps_rollup.
fn pss_kib(pid: u32) -> Result<[u64; 3], String> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .map_err(|e| format!("/proc/{pid}/smaps_rollup: {e}"))?;
    let field = |name: &str| {
        rollup
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok([field("Pss:"), field("Pss_Anon:"), field("Pss_File:")])
}

/// How much of `path` is in the page cache, in KiB (mincore on a
/// mapping of it).
fn page_cache_kib(path: &Path) -> Result<u64, String> {
    let f = File::open(path).map_err(|e| e.to_string())?;
    let len = f.metadata().map_err(|e| e.to_string())?.len() as usize;
    if len == 0 {
        return Ok(0);
    }
    // SAFETY: a new read-only shared mapping of an open file, read by
    // nothing and unmapped below.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(format!("mmap: {}", std::io::Error::last_os_error()));
    }
    let mut vec = vec![0u8; len.div_ceil(4096)];
    // SAFETY: `p` maps `len` bytes; `vec` has a byte for each of its pages.
    let r = unsafe { libc::mincore(p, len, vec.as_mut_ptr()) };
    let err = std::io::Error::last_os_error();
    // SAFETY: `p` is the mapping of `len` bytes made above.
    unsafe { libc::munmap(p, len) };
    if r != 0 {
        return Err(format!("mincore: {err}"));
    }
    Ok(vec.iter().filter(|&&b| b & 1 != 0).count() as u64 * 4)
}

fn file_sizes(path: &Path) -> Result<Value, String> {
    let m = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(json!({"apparent_bytes": m.len(), "allocated_bytes": m.blocks() * 512}))
}

fn median_u64(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

fn boot_args(checks: &str) -> String {
    format!("console=ttyS0 probe={checks}")
}

impl Bench {
    /// Starts the VMM with `args`; its stdout is a pipe, its stderr a
    /// file named after `label`. Unless `timed` (where the spawn itself
    /// is measured, and a plain spawn is cheaper than the fork a pre-exec
    /// step needs), the VMM also dies with this thread, so that not even
    /// an abort of the bench leaves guests running.
    fn spawn_vmm<I, S>(&self, label: &str, timed: bool, args: I) -> Result<Vmm, String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        use std::os::unix::process::CommandExt;
        let err_path = self.dir.join(format!("{label}.err"));
        let err = File::create(&err_path).map_err(|e| e.to_string())?;
        let mut cmd = self.vmm.command();
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err));
        if !timed {
            // SAFETY: prctl is async-signal-safe and touches no memory of
            // the parent's.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let spawned_at = Instant::now();
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("{}: {e}", self.vmm.describe()))?;
        let out = child.stdout.take();
        Ok(Vmm {
            child,
            out,
            err_path,
            spawned_at,
        })
    }

    /// A VMM serving its API at `<dir>/<label>.sock`, ready.
    fn spawn_with_api(&self, label: &str) -> Result<(Vmm, PathBuf), String> {
        let sock = self.dir.join(format!("{label}.sock"));
        let _ = std::fs::remove_file(&sock);
        let mut vmm = self.spawn_vmm(label, false, [OsStr::new("--api-sock"), sock.as_os_str()])?;
        if Self::wait_for_socket(&sock, Duration::from_secs(5)).is_none() {
            return Err(vmm.failed("the API socket never came up"));
        }
        Ok((vmm, sock))
    }

    /// Boots the probe guest with `checks` in a VMM whose output a thread
    /// drains.
    fn boot_source(
        &self,
        label: &str,
        mem_mib: u64,
        checks: &str,
        track_dirty_pages: bool,
    ) -> Result<Source, String> {
        let (mut vmm, sock) = self.spawn_with_api(label)?;
        let out = vmm.take_out()?;
        let count = Arc::new(AtomicU64::new(0));
        let (tx, lines) = mpsc::channel();
        let c = count.clone();
        std::thread::spawn(move || drain(out, &c, &tx));
        let mut src = Source {
            vmm,
            sock,
            count,
            lines,
        };
        let boot = json!({"kernel_image_path": self.kernel, "boot_args": boot_args(checks)});
        src.request("PUT", "/boot-source", &boot)?;
        let machine = json!({
            "vcpu_count": 1,
            "mem_size_mib": mem_mib,
            "track_dirty_pages": track_dirty_pages,
        });
        src.request("PUT", "/machine-config", &machine)?;
        src.action("InstanceStart")?;
        Ok(src)
    }

    /// A full snapshot of a guest of `mem_mib` counting on its serial
    /// port, paused mid-count: (state file, memory file).
    fn counting_snapshot(&self, mem_mib: u64) -> Result<(PathBuf, PathBuf), String> {
        let label = format!("count-{mem_mib}");
        let mut src = self.boot_source(&label, mem_mib, LONG_COUNT, false)?;
        src.wait_count(200)?;
        src.set_state("Paused")?;
        let state = self.dir.join(format!("{label}.state"));
        let mem = self.dir.join(format!("{label}.mem"));
        src.create("Full", &state, &mem)?;
        Ok((state, mem))
    }

    /// `PUT /snapshot/load` into a fresh VMM → the guest's first serial
    /// byte; and the load request's round trip.
    fn load_to_running(&self, state: &Path, mem: &Path) -> Result<(f64, f64), String> {
        let (mut vmm, sock) = self.spawn_with_api("load")?;
        let mut out = vmm.take_out()?;
        let body = json!({
            "snapshot_path": state,
            "mem_backend": {"backend_type": "File", "backend_path": mem},
            "resume_vm": true,
        })
        .to_string();
        request_and_first_byte(
            &mut vmm,
            true,
            &sock,
            &mut out,
            "PUT",
            "/snapshot/load",
            &body,
        )
    }

    /// exec `husk vmm --no-api --restore-from` → the guest's first serial
    /// byte.
    fn restore_from_exec(&self, state: &Path, mem: &Path) -> Result<f64, String> {
        let args = [
            OsStr::new("--no-api"),
            OsStr::new("--restore-from"),
            state.as_os_str(),
            OsStr::new("--mem-file"),
            mem.as_os_str(),
        ];
        let mut vmm = self.spawn_vmm("restore", true, args)?;
        let mut out = vmm.take_out()?;
        let start = vmm.spawned_at;
        first_byte_after(&mut vmm, &mut out, start)
    }

    /// InstanceStart → the first serial byte of a cold boot of the same
    /// counting guest.
    fn cold_boot(&self, mem_mib: u64) -> Result<f64, String> {
        let (mut vmm, sock) = self.spawn_with_api("cold")?;
        let mut out = vmm.take_out()?;
        let boot = json!({"kernel_image_path": self.kernel, "boot_args": boot_args(LONG_COUNT)});
        let machine = json!({"vcpu_count": 1, "mem_size_mib": mem_mib});
        for (path, body) in [("/boot-source", boot), ("/machine-config", machine)] {
            let r = client::request(&sock, "PUT", path, Some(&body.to_string()))
                .map_err(|e| vmm.failed(format!("PUT {path}: {e}")))?;
            if r.status != 204 {
                return Err(vmm.failed(format!("PUT {path}: {} {}", r.status, r.body)));
            }
        }
        let body = r#"{"action_type": "InstanceStart"}"#;
        let (first, _) =
            request_and_first_byte(&mut vmm, false, &sock, &mut out, "PUT", "/actions", body)?;
        Ok(first)
    }

    /// The load, restore and cold-boot figures for one guest size.
    fn restore_figures(&self, mem_mib: u64, runs: usize) -> Result<[Value; 4], String> {
        let (state, mem) = self.counting_snapshot(mem_mib)?;
        let (mut load, mut request, mut exec, mut cold) = (vec![], vec![], vec![], vec![]);
        // Interleaved, so that the machine's noise spreads over all three.
        for _ in 0..runs {
            let (running, answered) = self.load_to_running(&state, &mem)?;
            load.push(running);
            request.push(answered);
            exec.push(self.restore_from_exec(&state, &mem)?);
            cold.push(self.cold_boot(mem_mib)?);
        }
        let _ = std::fs::remove_file(&state);
        let _ = std::fs::remove_file(&mem);
        Ok([
            summary(load),
            summary(request),
            summary(exec),
            summary(cold),
        ])
    }

    /// One full snapshot after the guest dirtied FULL_DIRTY_PAGES, then a
    /// diff after it dirtied DIFF_DIRTY_PAGES more: (full ms, diff ms,
    /// the four files).
    fn create_once(&self) -> Result<(f64, f64, [PathBuf; 4]), String> {
        let checks = format!("dirty:{FULL_DIRTY_PAGES},wait-cad,dirty:{DIFF_DIRTY_PAGES},wait-cad");
        let mut src = self.boot_source("create", DIRTY_GUEST_MIB, &checks, true)?;
        src.expect_line(&format!("PROBE dirty:{FULL_DIRTY_PAGES} OK"))?;
        let files = ["full.state", "full.mem", "diff.state", "diff.mem"].map(|n| self.dir.join(n));
        src.set_state("Paused")?;
        let full = src.create("Full", &files[0], &files[1])?;
        src.set_state("Resumed")?;
        src.action("SendCtrlAltDel")?;
        src.expect_line(&format!("PROBE dirty:{DIFF_DIRTY_PAGES} OK"))?;
        src.set_state("Paused")?;
        let diff = src.create("Diff", &files[2], &files[3])?;
        Ok((full, diff, files))
    }

    fn create_figures(&self, runs: usize) -> Result<Value, String> {
        let (mut full, mut diff) = (vec![], vec![]);
        let mut sizes = Value::Null;
        for _ in 0..runs {
            let (f, d, files) = self.create_once()?;
            full.push(f);
            diff.push(d);
            sizes = json!({
                "full_mem_file": file_sizes(&files[1])?,
                "diff_mem_file": file_sizes(&files[3])?,
                "full_state_file_bytes": file_sizes(&files[0])?["apparent_bytes"],
                "diff_state_file_bytes": file_sizes(&files[2])?["apparent_bytes"],
            });
            for f in &files {
                let _ = std::fs::remove_file(f);
            }
        }
        Ok(json!({
            "runs": runs,
            "guest_mem_mib": DIRTY_GUEST_MIB,
            "pages_dirtied_before_full": FULL_DIRTY_PAGES,
            "pages_dirtied_before_diff": DIFF_DIRTY_PAGES,
            "create_full_ms": summary(full),
            "create_diff_ms": summary(diff),
            "files": sizes,
        }))
    }

    /// PSS of VMS clones of one snapshot of a guest that dirtied 64 MiB,
    /// against VMS cold-booted VMs that each dirtied the same.
    fn memory_figures(&self) -> Result<Value, String> {
        let checks = format!("dirty:{FULL_DIRTY_PAGES},{LONG_COUNT}");
        let (state, mem) = (self.dir.join("pss.state"), self.dir.join("pss.mem"));
        {
            let mut src = self.boot_source("pss-source", DIRTY_GUEST_MIB, &checks, false)?;
            src.expect_line(&format!("PROBE dirty:{FULL_DIRTY_PAGES} OK"))?;
            src.wait_count(100)?;
            src.set_state("Paused")?;
            src.create("Full", &state, &mem)?;
        }

        // The clones, all running at once.
        let restore = [
            OsStr::new("--no-api"),
            OsStr::new("--restore-from"),
            state.as_os_str(),
            OsStr::new("--mem-file"),
            mem.as_os_str(),
        ];
        let mut clones = Vec::with_capacity(VMS);
        for i in 0..VMS {
            let mut vmm = self.spawn_vmm(&format!("clone-{i}"), false, restore)?;
            let out = vmm.take_out()?;
            clones.push((vmm, Lines { out, buf: vec![] }));
        }
        for (vmm, lines) in &mut clones {
            // The first line may be the tail of one the snapshot cut.
            lines.expect(vmm, "COUNT ")?;
            lines.expect(vmm, "COUNT ")?;
        }
        let clone_pss = clones
            .iter()
            .map(|(v, _)| pss_kib(v.pid()))
            .collect::<Result<Vec<_>, _>>()?;
        let cached = page_cache_kib(&mem)?;
        drop(clones);

        // The cold VMs: one alone first, then nine more beside it.
        let config = self.dir.join("pss-cold.json");
        let cfg = json!({
            "boot-source": {"kernel_image_path": self.kernel, "boot_args": boot_args(&checks)},
            "machine-config": {"vcpu_count": 1, "mem_size_mib": DIRTY_GUEST_MIB},
        });
        std::fs::write(&config, cfg.to_string()).map_err(|e| e.to_string())?;
        let cold_args = [
            OsStr::new("--no-api"),
            OsStr::new("--config-file"),
            config.as_os_str(),
        ];
        let dirtied = format!("PROBE dirty:{FULL_DIRTY_PAGES} OK");
        let mut cold = Vec::with_capacity(VMS);
        let mut alone = [0; 3];
        for i in 0..VMS {
            let mut vmm = self.spawn_vmm(&format!("cold-{i}"), false, cold_args)?;
            let out = vmm.take_out()?;
            let mut lines = Lines { out, buf: vec![] };
            if i == 0 {
                lines.expect(&mut vmm, &dirtied)?;
                alone = pss_kib(vmm.pid())?;
            }
            cold.push((vmm, lines));
        }
        for (vmm, lines) in cold.iter_mut().skip(1) {
            lines.expect(vmm, &dirtied)?;
        }
        let cold_pss = cold
            .iter()
            .map(|(v, _)| pss_kib(v.pid()))
            .collect::<Result<Vec<_>, _>>()?;
        drop(cold);
        let _ = std::fs::remove_file(&state);
        let _ = std::fs::remove_file(&mem);

        let total = |v: &[[u64; 3]], i: usize| v.iter().map(|p| p[i]).sum::<u64>();
        let one_cold = median_u64(cold_pss.iter().map(|p| p[0]).collect());
        let ratio = total(&clone_pss, 0) as f64 / one_cold.max(1) as f64;
        Ok(json!({
            "vms": VMS,
            "guest_mem_mib": DIRTY_GUEST_MIB,
            "dirtied_mib": FULL_DIRTY_PAGES * 4 / 1024,
            "clones_total_pss_kib": total(&clone_pss, 0),
            "clones_total_pss_anon_kib": total(&clone_pss, 1),
            "clones_total_pss_file_kib": total(&clone_pss, 2),
            "clone_pss_kib": median_u64(clone_pss.iter().map(|p| p[0]).collect()),
            "cold_total_pss_kib": total(&cold_pss, 0),
            "cold_total_pss_anon_kib": total(&cold_pss, 1),
            "cold_total_pss_file_kib": total(&cold_pss, 2),
            "cold_vm_pss_kib": one_cold,
            "cold_vm_alone_pss_kib": alone[0],
            "clones_pss_ratio": (ratio * 1000.0).round() / 1000.0,
            "snapshot_mem_file_page_cache_kib": cached,
        }))
    }
}

pub(super) fn measure(bench: &Bench, runs: usize) -> Result<Value, String> {
    let runs = runs.max(1);
    let (mut load, mut request, mut exec, mut cold) = (
        serde_json::Map::new(),
        serde_json::Map::new(),
        serde_json::Map::new(),
        serde_json::Map::new(),
    );
    for mib in SIZES_MIB {
        let [l, r, e, c] = bench.restore_figures(mib, runs)?;
        let key = format!("{mib}_mib");
        load.insert(key.clone(), l);
        request.insert(key.clone(), r);
        exec.insert(key.clone(), e);
        cold.insert(key, c);
    }
    let create = bench.create_figures(runs.min(CREATE_RUNS))?;
    let memory = bench.memory_figures()?;
    Ok(json!({
        "runs": runs,
        "vmm_command": bench.vmm.describe(),
        "load_to_running_ms": load,
        "load_request_ms": request,
        "restore_from_exec_to_running_ms": exec,
        "cold_boot_to_first_byte_ms": cold,
        "create": create,
        "memory": memory,
        "budgets": {
            "load_to_running_ms": BUDGET_LOAD_MS,
            "restore_from_exec_to_running_ms": BUDGET_RESTORE_EXEC_MS,
            "clones_pss_ratio": BUDGET_CLONES_PSS_RATIO,
            "cold_boot_to_first_byte_ms": BUDGET_COLD_BOOT_MS,
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_is_complete_with_its_body() {
        assert!(!response_complete(b"HTTP/1.1 204 No Content\r\n"));
        assert!(response_complete(b"HTTP/1.1 204 No Content\r\n\r\n"));
        let head = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 5\r\n\r\n";
        assert!(!response_complete(&[&head[..], b"abc"].concat()));
        assert!(response_complete(&[&head[..], b"abcde"].concat()));
    }

    #[test]
    fn count_output_is_recognised() {
        assert!(is_count_output(b"COUNT 12\nCOU"));
        assert!(!is_count_output(b"PROBE BOOT\n"));
    }
}
