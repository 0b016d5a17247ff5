//! Container figures, against a real `husk serve` that the bench starts
//! (and tears down) itself, for each VM backend that can run a Linux
//! guest here:
//!
//! - `husk run` to the container's process started, to its first output
//!   and to its exit, through the daemon's API as the CLI does it (the
//!   typed client), and the whole `husk run IMAGE true` as a process;
//! - the daemon's resident memory with no container and with
//!   [`BURST`] running ones, and [`BURST`] containers started together:
//!   the wall time until all run (`sleep 600`), and until all have exited
//!   (`true`);
//! - for a backend that cannot boot the guest here (KVM on a PVM host with
//!   a stock guest kernel), what can be measured (the daemon's VM launch)
//!   and why the rest cannot.
//!
//! The image is built on this machine from the host's static busybox and
//! imported with `husk image import`, as the tests do: no registry.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::daemon::{kill_strays, Ctx, Daemon};
use super::{ms, rss_kib};
use crate::client::types::{CreateRequest, ListOptions};
use crate::daemon::backend::{self, BackendKind, VmHandle, VmSpec};

/// The image the bench builds and imports.
pub(super) const IMAGE: &str = "husk-bench/busybox:1";
/// Containers in the memory figure and in each burst.
const BURST: usize = 20;
/// How many of a burst's containers boot at once: all of them. Under
/// software emulation (tcg) each booting guest keeps a host CPU busy, but
/// on a 2-CPU host 20 boots together still finish in 10 to 15 s, well
/// within the daemon's 60 s boot timeout, and the burst's time is bound
/// by the boots' total CPU whatever the concurrency. A smaller number
/// frees a slot as soon as its container's process runs.
const BURST_PARALLEL: usize = BURST;
/// How long a KVM guest is watched after its launch for the agent's line.
const KVM_WATCH: Duration = Duration::from_secs(3);
/// How long the CPU use of idle running containers is sampled.
const IDLE_CPU_WINDOW: Duration = Duration::from_secs(2);
/// The line the agent prints on the console once it listens.
const AGENT_READY: &str = "husk-agent: ready: kernel ";

/// What the suite needs from the command line.
pub struct Options<'a> {
    pub runs: usize,
    /// The guest kernel (else $HUSK_GUEST_KERNEL, else the daemon's default).
    pub kernel: Option<&'a Path>,
}

/// n, median, p90, min and max of a sample, in ms.
pub(super) fn stats(mut v: Vec<f64>) -> Value {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return Value::Null;
    }
    let at = |q: f64| {
        let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
        round(v[i])
    };
    json!({
        "n": v.len(),
        "median": at(0.5),
        "p90": at(0.9),
        "min": round(v[0]),
        "max": round(v[v.len() - 1]),
    })
}

fn round(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// The kernel's boot time (ms) and the agent's own start-up (µs), from
/// the line the agent prints on the guest console.
fn agent_timings(console: &str) -> Option<(u64, u64)> {
    let rest = &console[console.find(AGENT_READY)? + AGENT_READY.len()..];
    let (kernel, rest) = rest.split_once(" ms, agent ")?;
    let (agent, _) = rest.split_once(" us")?;
    Some((kernel.trim().parse().ok()?, agent.trim().parse().ok()?))
}

/// Whether `elf` is an x86-64 ELF program without an interpreter (a
/// static one, which an image without a libc needs).
fn is_static_x86_64(elf: &[u8]) -> bool {
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8).map(|b| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            u64::from_le_bytes(a)
        })
    };
    if !elf.starts_with(b"\x7fELF\x02\x01") || u16_at(0x12) != Some(62) {
        return false;
    }
    let (Some(phoff), Some(size), Some(count)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38)) else {
        return false;
    };
    (0..count as usize).all(|i| {
        let at = phoff as usize + i * size as usize;
        // PT_INTERP is 3.
        u32_at(at).is_some_and(|t| t != 3)
    })
}

// --- the image, the kernel, the agent ---

/// A `docker save` archive of a one-layer image: the host's static
/// busybox and its applets as symlinks (what tests/common/busybox_image.rs
/// builds).
pub(super) fn busybox_archive(dir: &Path) -> Result<PathBuf, String> {
    const BUSYBOX: &str = "/bin/busybox";
    let busybox = std::fs::read(BUSYBOX).map_err(|e| format!("{BUSYBOX}: {e}"))?;
    if !is_static_x86_64(&busybox) {
        return Err(format!(
            "{BUSYBOX} is not a static x86-64 program (install busybox-static)"
        ));
    }
    use crate::image::local::{busybox_layer, docker_save, BusyboxLayer};
    let layer = busybox_layer(
        Path::new(BUSYBOX),
        &BusyboxLayer {
            dirs: &["home/", "tmp/"],
            passwd: "root:x:0:0:root:/root:/bin/sh\n",
            group: "root:x:0:\n",
        },
    )?;
    let archive = docker_save(
        layer,
        json!({
            "Cmd": ["sh"],
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        }),
        IMAGE,
    )?;
    let path = dir.join("busybox.tar");
    std::fs::write(&path, archive).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

/// Runs `husk ARGS --state-dir STATE` to completion.
pub(super) fn husk_cli(husk: &Path, state: &Path, args: &[&str]) -> Result<(), String> {
    let out = Command::new(husk)
        .args(args)
        .arg("--state-dir")
        .arg(state)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("husk {}: {e}", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!(
            "husk {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// The guest kernel: `flag`, else $HUSK_GUEST_KERNEL, else the daemon's
/// default (`<state dir>/kernels/vmlinux`), else /var/lib/husk's.
pub(super) fn guest_kernel(flag: Option<&Path>) -> Result<PathBuf, String> {
    let given = flag.map(Path::to_path_buf).or_else(|| {
        std::env::var_os("HUSK_GUEST_KERNEL")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    });
    if let Some(k) = given {
        return if k.is_file() {
            Ok(k)
        } else {
            Err(format!("no guest kernel at {}", k.display()))
        };
    }
    let candidates = [
        crate::image::cli::default_state_dir().join("kernels/vmlinux"),
        PathBuf::from("/var/lib/husk/kernels/vmlinux"),
    ];
    if let Some(k) = candidates.iter().find(|k| k.is_file()) {
        return Ok(k.clone());
    }
    Err(format!(
        "no guest kernel at {}: pass --kernel or set HUSK_GUEST_KERNEL (build one with \
         resources/guest-kernel/build.sh)",
        candidates[0].display()
    ))
}

/// The agent ($HUSK_AGENT, else beside husk), stripped into `dir` as the
/// tests do (a debug build carries 100 MB the guest would unpack); a
/// plain copy when objcopy is missing. Returns it and whether it was
/// stripped.
pub(super) fn stripped_agent(dir: &Path) -> Result<(PathBuf, PathBuf, bool), String> {
    let built = crate::agent::initramfs::find_agent().map_err(|e| e.to_string())?;
    let agent = dir.join("husk-agent");
    let stripped = Command::new("objcopy")
        .arg("--strip-all")
        .arg(&built)
        .arg(&agent)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !stripped {
        std::fs::copy(&built, &agent).map_err(|e| format!("{}: {e}", built.display()))?;
    }
    Ok((built, agent, stripped))
}

// --- the figures ---

fn request(cmd: &[&str]) -> CreateRequest {
    CreateRequest {
        image: IMAGE.into(),
        cmd: Some(cmd.iter().map(|s| s.to_string()).collect()),
        ..Default::default()
    }
}

/// One container run through the API the way `husk run -d` then
/// `husk wait` do it: create, start (returns once the process runs),
/// wait.
struct ApiRun {
    /// Request sent → process running (the start's answer).
    started: f64,
    /// Request sent → exit seen (the wait's answer).
    exited: f64,
    /// The daemon's record: created_ms → started_ms, started_ms →
    /// finished_ms (ms resolution, the daemon's clock).
    record_created_to_started: Option<f64>,
    record_started_to_finished: Option<f64>,
    /// From the agent's console line: the guest kernel's boot to /init
    /// (ms), and the agent's own start-up (µs).
    agent: Option<(u64, u64)>,
}

fn api_run(d: &Daemon, cmd: &[&str]) -> Result<ApiRun, String> {
    let client = d.client.clone();
    let req = request(cmd);
    let (id, started, exited, code) = d.ctx.block("run through the API", async move {
        let begin = Instant::now();
        let c = client.create(&req).await.map_err(|e| e.to_string())?;
        client.start(&c.id).await.map_err(|e| e.to_string())?;
        let started = ms(begin.elapsed());
        let w = client.wait(&c.id).await.map_err(|e| e.to_string())?;
        Ok((c.id, started, ms(begin.elapsed()), w.exit_code))
    })?;
    let client = d.client.clone();
    let rid = id.clone();
    let record = d.ctx.block("inspect", async move {
        client.inspect(&rid).await.map_err(|e| e.to_string())
    })?;
    let agent = agent_timings(&d.console(&id));
    let client = d.client.clone();
    let rid = id.clone();
    d.ctx.block("remove", async move {
        client.remove(&rid, true).await.map_err(|e| e.to_string())
    })?;
    if code != 0 {
        return Err(format!(
            "{cmd:?} exited with {code}{}",
            record.error.map(|e| format!(": {e}")).unwrap_or_default()
        ));
    }
    let diff = |a: Option<u64>, b: Option<u64>| Some(b?.checked_sub(a?)? as f64);
    Ok(ApiRun {
        started,
        exited,
        record_created_to_started: diff(Some(record.created_ms), record.started_ms),
        record_started_to_finished: diff(record.started_ms, record.finished_ms),
        agent,
    })
}

/// `echo hello` the way `husk run` (attached) does it, with the CLI's own
/// attach loop: logs followed and the wait sent before the start. Returns
/// request sent → first output, and → exit.
fn api_attached_echo(d: &Daemon) -> Result<(f64, f64), String> {
    let client = d.client.clone();
    let req = request(&["echo", "hello"]);
    let (id, first, exited, end, out) = d.ctx.block("husk run (attached)", async move {
        let begin = Instant::now();
        let c = client.create(&req).await.map_err(|e| e.to_string())?;
        let mut first = None;
        let mut out = String::new();
        let end = crate::cli::run::attach_with(&client, &c.id, &mut |_, _, data| {
            first.get_or_insert_with(|| ms(begin.elapsed()));
            out.push_str(data);
        })
        .await;
        Ok((c.id, first, ms(begin.elapsed()), end, out))
    })?;
    let client = d.client.clone();
    d.ctx.block("remove", async move {
        client.remove(&id, true).await.map_err(|e| e.to_string())
    })?;
    match (end, first) {
        (crate::cli::run::Attached::Exited(0), Some(first)) if out == "hello\n" => {
            Ok((first, exited))
        }
        (end, _) => Err(format!("echo hello ended {end:?} with output {out:?}")),
    }
}

/// The whole `husk run IMAGE true` as a process: exec → exit.
fn cli_run(d: &Daemon, n: usize) -> Result<f64, String> {
    d.ctx.check()?;
    let name = format!("bench-cli-{n}");
    let begin = Instant::now();
    let out = Command::new(&d.ctx.husk)
        .arg("--socket")
        .arg(&d.sock)
        .args(["run", "--name", &name, IMAGE, "true"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("husk run: {e}"))?;
    let wall = ms(begin.elapsed());
    let client = d.client.clone();
    d.ctx.block("remove", async move {
        client.remove(&name, true).await.map_err(|e| e.to_string())
    })?;
    if !out.status.success() {
        return Err(format!(
            "husk run {IMAGE} true: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(wall)
}

/// What a burst measured.
struct Burst {
    ids: Vec<String>,
    /// First request → every container running.
    all_running: f64,
    /// First request → every container exited (when waited for).
    all_exited: Option<f64>,
    /// Each container's create → running.
    each_start: Vec<f64>,
}

/// [`BURST`] containers of `cmd`, created and started with at most
/// `parallel` booting at once; with `wait`, also waited for.
fn burst(d: &Daemon, cmd: &[&str], parallel: usize, wait: bool) -> Result<Burst, String> {
    let client = d.client.clone();
    let req = request(cmd);
    let (mut done, all_exited) = d.ctx.block("burst", async move {
        let slots = Arc::new(Semaphore::new(parallel));
        let begin = Instant::now();
        let mut set = JoinSet::new();
        for _ in 0..BURST {
            let (client, req, slots) = (client.clone(), req.clone(), slots.clone());
            set.spawn(async move {
                let slot = slots.acquire_owned().await.map_err(|e| e.to_string())?;
                let t = Instant::now();
                let c = client.create(&req).await.map_err(|e| e.to_string())?;
                client.start(&c.id).await.map_err(|e| e.to_string())?;
                let (each, running) = (ms(t.elapsed()), ms(begin.elapsed()));
                drop(slot);
                if wait {
                    let w = client.wait(&c.id).await.map_err(|e| e.to_string())?;
                    if w.exit_code != 0 {
                        return Err(format!("a container exited with {}", w.exit_code));
                    }
                }
                Ok::<_, String>((c.id, each, running))
            });
        }
        let mut done = Vec::new();
        while let Some(r) = set.join_next().await {
            done.push(r.map_err(|e| e.to_string())??);
        }
        Ok((done, ms(begin.elapsed())))
    })?;
    done.sort_by(|a, b| a.2.total_cmp(&b.2));
    Ok(Burst {
        all_running: done.last().map_or(0.0, |x| x.2),
        all_exited: wait.then_some(all_exited),
        each_start: done.iter().map(|x| x.1).collect(),
        ids: done.into_iter().map(|x| x.0).collect(),
    })
}

/// The VM processes of the containers `ids`, and their resident memory
/// (KiB) summed.
fn vm_processes(d: &Daemon, ids: &[String]) -> Result<(Vec<u32>, u64), String> {
    let (mut pids, mut total) = (vec![], 0);
    for id in ids {
        let client = d.client.clone();
        let id = id.clone();
        let r = d.ctx.block("inspect", async move {
            client.inspect(&id).await.map_err(|e| e.to_string())
        })?;
        for pid in r.pids {
            if let Ok((rss, _)) = rss_kib(pid as u32) {
                total += rss;
                pids.push(pid as u32);
            }
        }
    }
    Ok((pids, total))
}

/// The CPU the processes `pids` use over `window`, in % of one CPU.
fn cpu_percent(pids: &[u32], window: Duration) -> f64 {
    let used = || pids.iter().filter_map(|&p| proc_cpu_ms(p)).sum::<f64>();
    let before = used();
    std::thread::sleep(window);
    round((used() - before) / ms(window) * 100.0)
}

fn progress(kind: BackendKind, what: &str) {
    eprintln!("husk bench: containers ({kind}): {what}");
}

/// Every figure of one backend, against a daemon of our own in `root`.
fn daemon_figures(ctx: &Ctx, root: &Path, kind: BackendKind) -> Result<Value, String> {
    let (d, socket_ms, api_ms) = Daemon::start(ctx, root, kind)?;
    let client = d.client.clone();
    let info = ctx.block("info", async move {
        client.info().await.map_err(|e| e.to_string())
    })?;
    if info.backend.to_string() != kind.as_str() {
        return Err(format!("the daemon runs {} VMs, not {kind}", info.backend));
    }
    let (rss_idle, _) = rss_kib(d.pid())?;

    // The first run builds the image's ext4 and the agent's initramfs.
    progress(kind, "first (cold) run");
    let cold = api_run(&d, &["true"])?;

    let (mut started, mut exited, mut rec_start, mut rec_run) = (vec![], vec![], vec![], vec![]);
    let (mut kernel_ms, mut agent_us) = (vec![], vec![]);
    let (mut echo_first, mut echo_exit, mut cli) = (vec![], vec![], vec![]);
    for n in 0..ctx.runs {
        progress(kind, &format!("run {}/{}", n + 1, ctx.runs));
        let r = api_run(&d, &["true"])?;
        started.push(r.started);
        exited.push(r.exited);
        rec_start.extend(r.record_created_to_started);
        rec_run.extend(r.record_started_to_finished);
        if let Some((k, a)) = r.agent {
            kernel_ms.push(k as f64);
            agent_us.push(a as f64);
        }
        let (first, exit) = api_attached_echo(&d)?;
        echo_first.push(first);
        echo_exit.push(exit);
        cli.push(cli_run(&d, n)?);
    }
    let (rss_after_runs, _) = rss_kib(d.pid())?;

    let parallel = BURST_PARALLEL;
    progress(kind, &format!("{BURST} x sleep 600, {parallel} at a time"));
    let sleepers = burst(&d, &["sleep", "600"], parallel, false)?;
    // Let the last ones settle after their start.
    std::thread::sleep(Duration::from_secs(1));
    let client = d.client.clone();
    let running = ctx.block("list", async move {
        let opts = ListOptions::default();
        client.list(&opts).await.map_err(|e| e.to_string())
    })?;
    let (rss_running, _) = rss_kib(d.pid())?;
    let (vm_pids, vm_rss) = vm_processes(&d, &sleepers.ids)?;
    let idle_cpu = cpu_percent(&vm_pids, IDLE_CPU_WINDOW);
    let client = d.client.clone();
    let begin = Instant::now();
    let removed = ctx.block("remove all", Daemon::remove_all(client))?;
    let remove_all_ms = ms(begin.elapsed());
    let (rss_after_remove, _) = rss_kib(d.pid())?;

    progress(kind, &format!("{BURST} x true, {parallel} at a time"));
    let quick = burst(&d, &["true"], parallel, true)?;
    let client = d.client.clone();
    ctx.block("remove all", Daemon::remove_all(client))?;
    let (rss_end, rss_peak) = rss_kib(d.pid())?;
    drop(d);

    Ok(json!({
        "daemon": {
            "exec_to_socket_ms": round(socket_ms),
            "exec_to_first_api_answer_ms": round(api_ms),
            "info_backend": info.backend.to_string(),
        },
        "first_run_cold": {
            "note": "the first container of a fresh state directory: the image's ext4 and the agent's initramfs are built",
            "run_to_process_started_ms": round(cold.started),
            "run_to_exit_ms": round(cold.exited),
        },
        "run_true_api": {
            "how": "DaemonClient: create, start (answers once the process runs), wait",
            "run_to_process_started_ms": stats(started),
            "run_to_exit_ms": stats(exited),
            "daemon_record_created_to_started_ms": stats(rec_start),
            "daemon_record_started_to_finished_ms": stats(rec_run),
            "guest_kernel_boot_to_init_ms": stats(kernel_ms),
            "agent_startup_us": stats(agent_us),
        },
        "run_echo_attached_api": {
            "how": "create, then the CLI's attach loop (logs followed and wait sent before start)",
            "run_to_first_output_ms": stats(echo_first),
            "run_to_exit_ms": stats(echo_exit),
        },
        "husk_run_true_cli": {
            "how": "`husk run IMAGE true` as a process, exec to exit",
            "wall_ms": stats(cli),
        },
        "memory": {
            "daemon_rss_kib_0_containers_fresh": rss_idle,
            "daemon_rss_kib_0_containers_after_runs": rss_after_runs,
            "daemon_rss_kib_with_running": rss_running,
            "running_containers": running.len(),
            "daemon_rss_kib_after_removing_them": rss_after_remove,
            "daemon_rss_kib_at_end": rss_end,
            "daemon_rss_peak_kib": rss_peak,
            "vm_processes_rss_kib_total": vm_rss,
            "vm_processes": vm_pids.len(),
            "vm_processes_rss_kib_per_container": vm_rss / (sleepers.ids.len().max(1) as u64),
        },
        "burst": {
            "containers": BURST,
            "parallel": parallel,
            "parallel_why": "all at once: the burst's time is bound by the boots' total CPU, not by the concurrency, as long as each start reaches its process within the daemon's 60 s boot timeout (see the each_create_to_running maxima)",
            "sleep_600_all_running_ms": round(sleepers.all_running),
            "sleep_600_each_create_to_running_ms": stats(sleepers.each_start),
            "sleep_600_idle_vm_processes_cpu_percent_of_one_cpu": idle_cpu,
            "remove_all_running_ms": round(remove_all_ms),
            "removed": removed,
            "true_all_exited_ms": quick.all_exited.map(round),
            "true_all_running_ms": round(quick.all_running),
            "true_each_create_to_running_ms": stats(quick.each_start),
        },
    }))
}

/// A VM launched by this process, killed when dropped.
struct Launched(VmHandle);

impl Drop for Launched {
    fn drop(&mut self) {
        self.0.cleanup();
    }
}

/// The kvm backend where a Linux guest cannot boot: the daemon's VM
/// launch (`backend::launch`, as the daemon's start calls it: husk-vmm
/// spawned with the container's config until its API answers, i.e. the
/// vCPUs run), what the guest does then, and why the rest cannot be
/// measured.
fn kvm_launch_figures(ctx: &Ctx, root: &Path, why: &str) -> Result<Value, String> {
    let state = root.join("state");
    let rootfs = root.join("rootfs.ext4");
    husk_cli(
        &ctx.husk,
        &state,
        &["image", "rootfs", IMAGE, "-o", &rootfs.to_string_lossy()],
    )?;
    let initramfs =
        crate::agent::initramfs::cached_initramfs(&ctx.agent, &state).map_err(|e| e.to_string())?;
    let spec = |n: usize| VmSpec {
        dir: root.join("vms").join(n.to_string()),
        kernel: ctx.kernel.clone(),
        initramfs: initramfs.clone(),
        rootfs: Some(rootfs.clone()),
        vcpus: 1,
        memory_mib: 256,
        boot_args: String::new(),
        jail: None,
        net: None,
        drives: vec![],
        shares: vec![],
    };
    let mut launch = vec![];
    let mut after = Value::Null;
    for n in 0..ctx.runs {
        ctx.check()?;
        let s = spec(n);
        let begin = Instant::now();
        let vm = Launched(backend::launch(BackendKind::Kvm, &s).map_err(|e| e.to_string())?);
        launch.push(ms(begin.elapsed()));
        if n == 0 {
            let pid = vm.0.procs.first().map_or(0, |p| p.pid as u32);
            let (vmm_rss, _) = rss_kib(pid).unwrap_or((0, 0));
            let watch = Instant::now();
            let mut console = String::new();
            while watch.elapsed() < KVM_WATCH && vm.0.is_running() {
                console = std::fs::read_to_string(&vm.0.console_log).unwrap_or_default();
                if console.contains(AGENT_READY) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let cpu = proc_cpu_ms(pid);
            let tail: String = console
                .lines()
                .rev()
                .take(3)
                .collect::<Vec<_>>()
                .join(" | ");
            after = json!({
                "watched_ms": round(ms(watch.elapsed())),
                "husk_vmm_rss_kib": vmm_rss,
                "husk_vmm_still_running": vm.0.is_running(),
                "husk_vmm_cpu_ms": cpu.map(round),
                "guest_console_bytes": console.len(),
                "guest_console_tail": crate::text::echo(&tail),
                "agent_started": console.contains(AGENT_READY),
            });
        }
        drop(vm);
    }
    Ok(json!({
        "backend_launch_ms": stats(launch),
        "backend_launch_how": "backend::launch(kvm) in this process, the call the daemon's start makes: vm.json written, husk-vmm spawned, until its API answers GET / (the VM is built and its vCPUs run)",
        "vm_after_launch": after,
        "not_measurable_here": {
            "figures": [
                "run_true_api",
                "run_echo_attached_api",
                "husk_run_true_cli",
                "memory (with running containers)",
                "burst",
            ],
            "reason": why,
        },
    }))
}

/// User + system CPU time of a process so far, in ms.
fn proc_cpu_ms(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // utime and stime: fields 14 and 15, counted from 1 with the pid.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| ticks as f64 * 1000.0 / hz as f64)
}

/// One backend: skipped (with why), the launch-only figures of a kvm that
/// cannot boot the guest, or every figure.
fn backend_figures(ctx: &Ctx, root: &Path, archive: &Path, kind: BackendKind) -> Value {
    if let Err(why) = backend::available(kind) {
        return json!({"skipped": why});
    }
    let guest_boots = match kind {
        BackendKind::Tcg => Ok(()),
        BackendKind::Kvm => match backend::auto(&ctx.kernel) {
            (BackendKind::Kvm, _) => Ok(()),
            (BackendKind::Tcg, why) => Err(why.unwrap_or_default()),
        },
    };
    let result = (|| {
        std::fs::create_dir_all(root).map_err(|e| format!("{}: {e}", root.display()))?;
        let archive = archive.to_string_lossy();
        husk_cli(
            &ctx.husk,
            &root.join("state"),
            &["image", "import", &archive],
        )?;
        match &guest_boots {
            Ok(()) => daemon_figures(ctx, root, kind),
            Err(why) => {
                progress(kind, "the guest cannot boot here: launch figures only");
                let linux = crate::doctor::verdicts(None, crate::doctor::host_virt())[1]
                    .1
                    .clone();
                let why = format!("a Linux guest cannot boot under KVM here: {linux}; {why}");
                kvm_launch_figures(ctx, root, &why)
            }
        }
    })();
    kill_strays(root);
    result.unwrap_or_else(|e| {
        eprintln!("husk bench: containers ({kind}): {e}");
        json!({"error": e})
    })
}

/// The whole suite, in scratch directory `dir` (removed after).
pub fn measure(opts: Options) -> Result<Value, String> {
    let kernel = match guest_kernel(opts.kernel) {
        Ok(k) => k,
        Err(why) => return Ok(json!({"skipped": why})),
    };
    let dir = std::env::temp_dir().join(format!("husk-bench-ctr-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let result = measure_in(&dir, kernel, opts.runs.max(1));
    kill_strays(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn measure_in(dir: &Path, kernel: PathBuf, runs: usize) -> Result<Value, String> {
    let archive = match busybox_archive(dir) {
        Ok(a) => a,
        Err(why) => return Ok(json!({"skipped": why})),
    };
    let (built, agent, stripped) = match stripped_agent(dir) {
        Ok(a) => a,
        Err(why) => return Ok(json!({"skipped": why})),
    };
    let ctx = Ctx::new(kernel, agent, runs)?;
    let (auto, auto_why) = backend::auto(&ctx.kernel);
    let mut backends = serde_json::Map::new();
    for kind in [BackendKind::Kvm, BackendKind::Tcg] {
        ctx.check()?;
        let root = dir.join(kind.as_str());
        backends.insert(
            kind.as_str().into(),
            backend_figures(&ctx, &root, &archive, kind),
        );
    }
    ctx.check()?;
    Ok(json!({
        "runs": runs,
        "image": IMAGE,
        "kernel": ctx.kernel,
        "agent": built,
        "agent_stripped": stripped,
        "host": {
            "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "virtualization": crate::doctor::host_virt().describe(),
            "auto_backend": auto.as_str(),
            "auto_reason": auto_why,
        },
        "container_shape": {"vcpus": 1, "memory_mib": 256},
        "backends": backends,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_take_nearest_ranks() {
        let s = stats((1..=10).rev().map(f64::from).collect());
        assert_eq!(s["n"], 10);
        assert_eq!(s["median"], 5.0);
        assert_eq!(s["p90"], 9.0);
        assert_eq!(s["min"], 1.0);
        assert_eq!(s["max"], 10.0);
        assert_eq!(stats(vec![]), Value::Null);
        assert_eq!(stats(vec![2.345])["p90"], 2.3);
    }

    #[test]
    fn the_agent_line_gives_its_timings() {
        let console = "[    0.1] x\nhusk-agent: ready: kernel 812 ms, agent 3456 us\nmore";
        assert_eq!(agent_timings(console), Some((812, 3456)));
        assert_eq!(agent_timings("husk-agent: error: no root"), None);
    }

    #[test]
    fn only_static_x86_64_programs_pass() {
        let mut elf = vec![0u8; 0x40 + 56];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[0x12] = 62;
        elf[0x20] = 0x40; // phoff
        elf[0x36] = 56; // phentsize
        elf[0x38] = 1; // phnum
        elf[0x40] = 1; // PT_LOAD
        assert!(is_static_x86_64(&elf));
        elf[0x40] = 3; // PT_INTERP
        assert!(!is_static_x86_64(&elf));
        assert!(!is_static_x86_64(b"#!/bin/sh\n"));
    }
}
