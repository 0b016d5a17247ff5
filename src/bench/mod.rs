//! `husk bench`: the figures users wait on, measured end to end against
//! real `husk vmm` processes booting the probe guest, and against a real
//! registry on loopback for images. Prints JSON.

mod containers;
mod daemon;
mod images;
mod jailed;
mod network;
mod snapshot;
mod soak;
mod volumes;

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::vmm::client;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Repetitions per figure; medians are reported.
    #[arg(long, default_value_t = 20)]
    pub runs: usize,
    /// The VMM to measure: a `husk-vmm` binary, or a `husk` binary whose
    /// `vmm` subcommand is run (default: the `husk-vmm` beside this
    /// binary, else this binary's `husk vmm`).
    #[arg(long)]
    pub vmm: Option<PathBuf>,
    /// Which figures: the microVM's, the image store's, the API under
    /// load (soak), containers run by a daemon of the bench's own,
    /// snapshots (create, load, restore, clones' memory), or all of them.
    #[arg(long, value_enum, default_value = "all")]
    pub suite: Suite,
    /// The guest kernel the containers suite boots (default:
    /// $HUSK_GUEST_KERNEL, else the daemon's default).
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// An extra argument for every VMM the bench starts (repeatable), to
    /// measure a setting's cost: `--vmm-arg=--no-seccomp`.
    #[arg(long = "vmm-arg", allow_hyphen_values = true)]
    pub vmm_args: Vec<String>,
    /// Run the vmm suite's VMMs under `husk jailer` as the daemon does
    /// (needs root and the static husk-vmm), to measure the jail's cost.
    #[arg(long)]
    pub jail: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Suite {
    Vmm,
    Images,
    Soak,
    Containers,
    Snapshot,
    Network,
    Volumes,
    All,
}

const GUEST_MEM_MIB: u64 = 128;

/// How to start a VMM: a program and the arguments before its own.
#[derive(Clone)]
struct VmmCommand {
    program: PathBuf,
    prefix: Vec<String>,
}

impl VmmCommand {
    fn for_binary(program: PathBuf) -> VmmCommand {
        let lean = program
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("husk-vmm"));
        let prefix = if lean { vec![] } else { vec!["vmm".into()] };
        VmmCommand { program, prefix }
    }

    fn with_args(mut self, extra: &[String]) -> VmmCommand {
        self.prefix.extend_from_slice(extra);
        self
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.program);
        c.args(&self.prefix);
        c
    }

    fn describe(&self) -> String {
        let mut s = self.program.display().to_string();
        for p in &self.prefix {
            s.push(' ');
            s.push_str(p);
        }
        s
    }
}

struct Bench {
    vmm: VmmCommand,
    dir: PathBuf,
    kernel: PathBuf,
    /// `--jail`: every VMM runs under `husk jailer`.
    jail: Option<jailed::Jail>,
}

/// min / median / max of a sample, in milliseconds.
fn summary(mut v: Vec<f64>) -> serde_json::Value {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return serde_json::Value::Null;
    }
    let round = |x: f64| (x * 1000.0).round() / 1000.0;
    json!({
        "median": round(v[v.len() / 2]),
        "min": round(v[0]),
        "max": round(v[v.len() - 1]),
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl Bench {
    fn sock(&self, n: usize) -> PathBuf {
        match &self.jail {
            Some(j) => j.sock(n),
            None => self.dir.join(format!("api-{n}.sock")),
        }
    }

    /// The kernel's path as the VMM sees it.
    fn kernel_seen(&self) -> PathBuf {
        match &self.jail {
            Some(_) => PathBuf::from(jailed::KERNEL),
            None => self.kernel.clone(),
        }
    }

    fn spawn_api(&self, sock: &Path) -> std::io::Result<Child> {
        let mut cmd = match &self.jail {
            Some(j) => j.api_command(sock),
            None => {
                let mut c = self.vmm.command();
                c.arg("--api-sock").arg(sock);
                c
            }
        };
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
    }

    fn wait_for_socket(sock: &Path, deadline: Duration) -> Option<Instant> {
        let start = Instant::now();
        while start.elapsed() < deadline {
            if UnixStream::connect(sock).is_ok() {
                return Some(Instant::now());
            }
            std::thread::sleep(Duration::from_micros(50));
        }
        None
    }

    /// Ends a VMM from `spawn_api` (a jailed one VMM first, so its
    /// jailer cleans up).
    fn stop(&self, child: &mut Child, sock: &Path) {
        match &self.jail {
            Some(j) => j.stop(child, sock),
            None => {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    fn configure(&self, sock: &Path, probe_args: &str) -> Result<(), String> {
        let boot = json!({
            "kernel_image_path": self.kernel_seen(),
            "boot_args": format!("console=ttyS0 {probe_args}"),
        })
        .to_string();
        let machine = json!({"vcpu_count": 1, "mem_size_mib": GUEST_MEM_MIB}).to_string();
        for (path, body) in [("/boot-source", boot), ("/machine-config", machine)] {
            let r = client::request(sock, "PUT", path, Some(&body)).map_err(|e| e.to_string())?;
            if r.status != 204 {
                return Err(format!("PUT {path}: {} {}", r.status, r.body));
            }
        }
        Ok(())
    }

    /// `husk vmm` exec → API socket accepting connections.
    fn api_ready(&self, n: usize) -> Result<f64, String> {
        let sock = self.sock(n);
        let start = Instant::now();
        let mut child = self.spawn_api(&sock).map_err(|e| e.to_string())?;
        let ready = Self::wait_for_socket(&sock, Duration::from_secs(5));
        self.stop(&mut child, &sock);
        let ready = ready.ok_or("the API socket never came up")?;
        Ok(ms(ready - start))
    }

    fn start_instance(sock: &Path) -> Result<(), String> {
        let r = client::request(
            sock,
            "PUT",
            "/actions",
            Some(r#"{"action_type": "InstanceStart"}"#),
        )
        .map_err(|e| e.to_string())?;
        if r.status != 204 {
            return Err(format!("InstanceStart: {} {}", r.status, r.body));
        }
        Ok(())
    }

    /// InstanceStart sent → first byte the guest writes to its serial port.
    fn first_serial_byte(&self, n: usize) -> Result<f64, String> {
        let sock = self.sock(n);
        let mut child = self.spawn_api(&sock).map_err(|e| e.to_string())?;
        let result = (|| {
            Self::wait_for_socket(&sock, Duration::from_secs(5)).ok_or("no API socket")?;
            self.configure(&sock, "")?;
            let mut out = child.stdout.take().ok_or("no stdout")?;
            let start = Instant::now();
            Self::start_instance(&sock)?;
            let mut byte = [0u8];
            out.read_exact(&mut byte).map_err(|e| e.to_string())?;
            Ok(ms(start.elapsed()))
        })();
        self.stop(&mut child, &sock);
        result
    }

    /// Resident memory of a running VMM, not counting guest RAM.
    fn rss_overhead_kib(&self) -> Result<serde_json::Value, String> {
        let sock = self.sock(0);
        let mut child = self.spawn_api(&sock).map_err(|e| e.to_string())?;
        let result = (|| {
            Self::wait_for_socket(&sock, Duration::from_secs(5)).ok_or("no API socket")?;
            // wait-cad keeps the guest alive, polling, after it booted.
            self.configure(&sock, "probe=wait-cad")?;
            let mut out = child.stdout.take().ok_or("no stdout")?;
            Self::start_instance(&sock)?;
            let mut line = [0u8; 11];
            out.read_exact(&mut line).map_err(|e| e.to_string())?; // "PROBE BOOT\n"
            let pid = match &self.jail {
                Some(j) => j.vmm_pid(&sock).ok_or("no VMM pid in the jail")?,
                None => child.id(),
            };
            let smaps =
                std::fs::read_to_string(format!("/proc/{pid}/smaps")).map_err(|e| e.to_string())?;
            let (total, guest) = rss_from_smaps(&smaps, GUEST_MEM_MIB << 20);
            // The jailer stays beside each VMM: its memory is the jail's.
            let jailer_kib = match &self.jail {
                Some(_) => json!(rss_kib(child.id())?.0),
                None => serde_json::Value::Null,
            };
            let _ = client::request(
                &sock,
                "PUT",
                "/actions",
                Some(r#"{"action_type": "SendCtrlAltDel"}"#),
            );
            Ok(json!({
                "vmm_rss_kib": total,
                "guest_rss_kib": guest,
                "vmm_rss_overhead_kib": total - guest,
                "jailer_rss_kib": jailer_kib,
            }))
        })();
        self.stop(&mut child, &sock);
        result
    }

    /// exec with --config-file → boot → guest reset → exit: wall and CPU.
    fn whole_cycle(&self, config: &Path) -> Result<(f64, f64), String> {
        let start = Instant::now();
        let (mut cmd, jail_id) = match &self.jail {
            Some(j) => {
                let (c, id) = j.cycle_command(config);
                (c, Some(id))
            }
            None => {
                let mut c = self.vmm.command();
                c.args(["--no-api", "--config-file"]).arg(config);
                (c, None)
            }
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        let (status, cpu) = wait_with_cpu(child.id() as libc::pid_t)?;
        let wall = ms(start.elapsed());
        if let (Some(j), Some(id)) = (&self.jail, jail_id) {
            j.remove(&id);
        }
        if status != 0 {
            return Err(format!("husk vmm exited with status {status}"));
        }
        Ok((wall, cpu))
    }

    /// Whole cycles run `parallel` at a time for about a second: how many
    /// microVMs boot, run and exit per second on this machine.
    fn vms_per_second(&self, config: &Path, parallel: usize) -> Result<f64, String> {
        let start = Instant::now();
        let done = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            let workers: Vec<_> = (0..parallel)
                .map(|_| {
                    s.spawn(|| {
                        while start.elapsed() < Duration::from_secs(1) {
                            self.whole_cycle(config)?;
                            done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        Ok::<_, String>(())
                    })
                })
                .collect();
            for w in workers {
                w.join()
                    .map_err(|_| "a bench worker panicked".to_string())??;
            }
            Ok::<_, String>(())
        })?;
        let n = done.load(std::sync::atomic::Ordering::Relaxed) as f64;
        Ok((n / start.elapsed().as_secs_f64()).round())
    }
}

/// Creating and destroying a KVM VM with husk's devices and one vCPU, in
/// this process: the part of every cycle spent in the kernel, mostly
/// waiting for SRCU grace periods, that no VMM can avoid.
fn kvm_floor() -> Result<(f64, f64), String> {
    use crate::vmm::kvm::memory::{create_guest_memory, ram_ranges};
    use crate::vmm::kvm::Vm;
    let cpu_start = thread_cpu_ms();
    let start = Instant::now();
    let ranges = ram_ranges(GUEST_MEM_MIB).map_err(|e| e.to_string())?;
    let mem = create_guest_memory(&ranges, Default::default()).map_err(|e| e.to_string())?;
    let vm = Vm::new(&mem, false).map_err(|e| e.to_string())?;
    let vcpu = vm.fd().create_vcpu(0).map_err(|e| e.to_string())?;
    drop(vcpu);
    drop(vm);
    drop(mem);
    Ok((ms(start.elapsed()), thread_cpu_ms() - cpu_start))
}

fn timeval_ms(t: libc::timeval) -> f64 {
    t.tv_sec as f64 * 1000.0 + t.tv_usec as f64 / 1000.0
}

/// CPU time (user + system) this thread has used, in ms.
fn thread_cpu_ms() -> f64 {
    // SAFETY: rusage is plain data that getrusage fills in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a live, writable rusage.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
    timeval_ms(usage.ru_utime) + timeval_ms(usage.ru_stime)
}

/// VmRSS and VmHWM of a process, in KiB.
pub(super) fn rss_kib(pid: u32) -> Result<(u64, u64), String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}

/// Total RSS, and the RSS of the guest RAM mapping (`guest_bytes` long),
/// in KiB, from /proc/PID/smaps.
pub fn rss_from_smaps(smaps: &str, guest_bytes: u64) -> (u64, u64) {
    let (mut total, mut guest) = (0, 0);
    let mut in_guest = false;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        if let Some((start, end)) = first.split_once('-') {
            if let (Ok(s), Ok(e)) = (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16)) {
                in_guest = e - s == guest_bytes;
                continue;
            }
        }
        if first == "Rss:" {
            let kib: u64 = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
            total += kib;
            if in_guest {
                guest += kib;
            }
        }
    }
    (total, guest)
}

/// Waits for `pid`; returns its exit status and user+system CPU in ms.
fn wait_with_cpu(pid: libc::pid_t) -> Result<(i32, f64), String> {
    let mut status = 0;
    // SAFETY: rusage is plain data that wait4 fills in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our own child, not yet reaped; both out-pointers
    // point at live locals.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    if r != pid {
        return Err(format!("wait4: {}", std::io::Error::last_os_error()));
    }
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    Ok((
        code,
        timeval_ms(usage.ru_utime) + timeval_ms(usage.ru_stime),
    ))
}

fn collect(
    runs: usize,
    mut f: impl FnMut(usize) -> Result<f64, String>,
) -> Result<Vec<f64>, String> {
    (0..runs).map(&mut f).collect()
}

pub fn run(args: BenchArgs) -> i32 {
    let result = (|| {
        let mut out = serde_json::Map::new();
        let wants = |s: Suite| args.suite == s || args.suite == Suite::All;
        if wants(Suite::Vmm) {
            out.insert("vmm".into(), measure(&args)?);
        }
        if wants(Suite::Soak) {
            let (bench, _) = setup(&args)?;
            let r = bench.soak();
            let _ = std::fs::remove_dir_all(&bench.dir);
            out.insert("api_soak".into(), r?);
        }
        if wants(Suite::Snapshot) {
            let (bench, _) = setup(&args)?;
            let r = snapshot::measure(&bench, args.runs);
            let _ = std::fs::remove_dir_all(&bench.dir);
            out.insert("snapshot".into(), r?);
        }
        if wants(Suite::Images) {
            let dir = std::env::temp_dir().join(format!("husk-bench-img-{}", std::process::id()));
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            let r = images::measure(&dir);
            let _ = std::fs::remove_dir_all(&dir);
            out.insert("images".into(), r?);
        }
        if wants(Suite::Containers) {
            let opts = containers::Options {
                runs: args.runs,
                kernel: args.kernel.as_deref(),
            };
            out.insert("containers".into(), containers::measure(opts)?);
        }
        if wants(Suite::Network) {
            out.insert(
                "network".into(),
                network::measure(args.runs.min(5), args.kernel.as_deref())?,
            );
        }
        if wants(Suite::Volumes) {
            out.insert(
                "volumes".into(),
                volumes::measure(args.runs.min(5), args.kernel.as_deref())?,
            );
        }
        Ok::<_, String>(serde_json::Value::Object(out))
    })();
    match result {
        Ok(v) => {
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            0
        }
        Err(e) => {
            eprintln!("husk bench: {e}");
            1
        }
    }
}

/// The VMM to measure (and the full `husk vmm`), in a scratch directory
/// with the probe guest written out.
fn setup(args: &BenchArgs) -> Result<(Bench, VmmCommand), String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let full = VmmCommand::for_binary(me.clone());
    let vmm = match &args.vmm {
        Some(p) => VmmCommand::for_binary(p.clone()),
        None => {
            let lean = me.with_file_name("husk-vmm");
            if lean.is_file() {
                VmmCommand::for_binary(lean)
            } else {
                full.clone()
            }
        }
    }
    .with_args(&args.vmm_args);
    let dir = std::env::temp_dir().join(format!("husk-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let kernel = dir.join("probe.elf");
    crate::probe::write_probe(&kernel).map_err(|e| e.to_string())?;
    let jail = match args.jail {
        true => Some(jailed::Jail::new(&me, vmm.program.clone(), &dir, &kernel)?),
        false => None,
    };
    Ok((
        Bench {
            vmm,
            dir,
            kernel,
            jail,
        },
        full,
    ))
}

fn measure(args: &BenchArgs) -> Result<serde_json::Value, String> {
    let (bench, full) = setup(args)?;
    let runs = args.runs.max(1);

    let config = bench.dir.join("cycle.json");
    let cfg = json!({
        "boot-source": {"kernel_image_path": bench.kernel_seen(), "boot_args": "console=ttyS0"},
        "machine-config": {"vcpu_count": 1, "mem_size_mib": GUEST_MEM_MIB},
    });
    std::fs::write(&config, cfg.to_string()).map_err(|e| e.to_string())?;

    let result = (|| {
        let api_ready = collect(runs, |n| bench.api_ready(n))?;
        let first_byte = collect(runs, |n| bench.first_serial_byte(n))?;
        let rss = bench.rss_overhead_kib()?;
        // The same figure for `husk vmm`, which carries the whole CLI.
        let rss_full = Bench {
            vmm: full.clone(),
            dir: bench.dir.clone(),
            kernel: bench.kernel.clone(),
            jail: None,
        }
        .rss_overhead_kib()?;
        let (mut floor_wall, mut floor_cpu) = (vec![], vec![]);
        for _ in 0..runs {
            let (w, c) = kvm_floor()?;
            floor_wall.push(w);
            floor_cpu.push(c);
        }
        let (mut wall, mut cpu) = (vec![], vec![]);
        for _ in 0..runs {
            let (w, c) = bench.whole_cycle(&config)?;
            wall.push(w);
            cpu.push(c);
        }
        let per_second = bench.vms_per_second(&config, 8)?;
        Ok(json!({
            "runs": runs,
            "vmm_command": bench.vmm.describe(),
            "jailed": bench.jail.is_some(),
            "guest_mem_mib": GUEST_MEM_MIB,
            "vms_per_second_8_parallel": per_second,
            "vmm_exec_to_api_ready_ms": summary(api_ready),
            "instance_start_to_first_serial_byte_ms": summary(first_byte),
            "memory": rss,
            "memory_husk_vmm_subcommand": rss_full,
            "whole_cycle_wall_ms": summary(wall),
            "whole_cycle_cpu_ms": summary(cpu),
            "kvm_vm_create_destroy_wall_ms": summary(floor_wall),
            "kvm_vm_create_destroy_cpu_ms": summary(floor_cpu),
            "budgets": {
                "vmm_exec_to_api_ready_ms": 5.0,
                "instance_start_to_first_serial_byte_ms": 5.0,
                "vmm_rss_overhead_kib": 3072,
                "whole_cycle_wall_ms": 4.8,
                "whole_cycle_cpu_ms": 1.8,
                "vms_per_second_8_parallel": 20,
            },
        }))
    })();
    let _ = std::fs::remove_dir_all(&bench.dir);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smaps_separates_guest_memory() {
        let smaps = "\
55d0c0000000-55d0c0100000 r-xp 00000000 00:00 0 /usr/bin/husk
Size:               1024 kB
Rss:                 700 kB
7f0000000000-7f0008000000 rw-p 00000000 00:00 0
Size:             131072 kB
Rss:                  64 kB
7fff00000000-7fff00021000 rw-p 00000000 00:00 0 [stack]
Rss:                  12 kB
";
        assert_eq!(rss_from_smaps(smaps, 128 << 20), (776, 64));
    }

    #[test]
    fn summary_takes_the_median() {
        let s = summary(vec![3.0, 1.0, 2.0]);
        assert_eq!(s["median"], 2.0);
        assert_eq!(s["min"], 1.0);
        assert_eq!(s["max"], 3.0);
    }
}
