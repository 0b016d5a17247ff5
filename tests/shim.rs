//! `containerd-shim-husk-v2` against a real containerd (Debian's 1.6),
//! started by each test with its own root, state directory, socket and
//! configuration (no CRI plugin), the shim on its PATH and its
//! configuration in `$HUSK_SHIM_CONFIG`. The image is the busybox image
//! built here, imported with `ctr image import`. Pods run on the `tcg`
//! backend (a real Linux guest under QEMU's software emulation).
//!
//! Prints `skipped: <reason>` where containerd, QEMU or the kernel is
//! missing (a failure under HUSK_REQUIRE_QEMU, as scripts/test.sh sets).

#[path = "common/busybox_image.rs"]
mod busybox_image;
#[path = "common/qemu.rs"]
mod qemu;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const RUNTIME: &str = "io.containerd.husk.v2";
const NS: &str = "husk-test";
const IMAGE: &str = "docker.io/tcg/busybox:1";

struct Containerd {
    dir: PathBuf,
    child: Child,
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Whatever a failed test left: its shims and VMs go too.
        kill_all_under(&self.dir);
        let _ = self.child.kill();
        let _ = self.child.wait();
        kill_all_under(&self.dir);
        unmount_all_under(&self.dir);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The pids of processes whose command line names `dir`.
fn procs_under(dir: &Path) -> Vec<(i32, String)> {
    let needle = dir.to_string_lossy().into_owned();
    let me = std::process::id() as i32;
    let mut found = vec![];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        // containerd itself (its --config names the directory) is not a leftover.
        let containerd = cmd
            .split(' ')
            .next()
            .is_some_and(|p| p.ends_with("/containerd"));
        if pid != me && cmd.contains(&needle) && !containerd {
            found.push((pid, cmd));
        }
    }
    found
}

fn kill_all_under(dir: &Path) {
    for (pid, _) in procs_under(dir) {
        // SAFETY: kill takes no pointers.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

fn unmount_all_under(dir: &Path) {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .filter(|p| p.starts_with(&*dir.to_string_lossy()))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = Command::new("umount").arg("-l").arg(p).status();
    }
}

fn mounts_under(dir: &Path) -> Vec<String> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .filter(|p| p.starts_with(&*dir.join("shim").to_string_lossy()))
        .map(str::to_string)
        .collect()
}

fn tool(name: &str) -> Option<PathBuf> {
    ["/usr/bin", "/usr/sbin", "/usr/local/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// A containerd of the test's own, the husk image imported; `None`
/// (after printing why) where something is missing.
fn containerd(name: &str) -> Option<Containerd> {
    let missing = ["containerd", "ctr"]
        .iter()
        .find(|t| tool(t).is_none())
        .map(|t| format!("{t} is not installed (apt-get install containerd)"));
    let kernel = match missing
        .map_or(Ok(()), Err)
        .and_then(|()| qemu::tools_available())
        .and_then(|()| qemu::guest_kernel())
    {
        Ok(k) => k,
        Err(reason) => {
            qemu::skip(&reason);
            return None;
        }
    };
    // Short: the shims' socket paths hold a 64-character hash.
    let dir = PathBuf::from(format!("/tmp/hs-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::os::unix::fs::symlink(
        env!("CARGO_BIN_EXE_containerd-shim-husk-v2"),
        dir.join("bin/containerd-shim-husk-v2"),
    )
    .unwrap();
    let agent = busybox_image::stripped_agent(&dir);
    std::fs::write(
        dir.join("shim.toml"),
        format!(
            "kernel = {:?}\nbackend = \"tcg\"\nmemory_mib = 256\nstate_dir = {:?}\nagent = {:?}\n",
            kernel,
            dir.join("shim"),
            agent
        ),
    )
    .unwrap();
    let sock = dir.join("containerd.sock");
    std::fs::write(
        dir.join("config.toml"),
        format!(
            "version = 2\nroot = {:?}\nstate = {:?}\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\", \"io.containerd.snapshotter.v1.btrfs\", \
             \"io.containerd.snapshotter.v1.zfs\", \"io.containerd.snapshotter.v1.aufs\", \
             \"io.containerd.snapshotter.v1.devmapper\", \"io.containerd.tracing.processor.v1.otlp\"]\n\
             [grpc]\n  address = {:?}\n",
            dir.join("root"),
            dir.join("state"),
            sock
        ),
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        dir.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
    let child = Command::new(tool("containerd").unwrap())
        .arg("--config")
        .arg(dir.join("config.toml"))
        .env("PATH", path)
        .env("HUSK_SHIM_CONFIG", dir.join("shim.toml"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let c = Containerd { dir, child };
    let deadline = Instant::now() + Duration::from_secs(20);
    while c.ctr(&["version"]).status.code() != Some(0) {
        assert!(
            Instant::now() < deadline,
            "containerd did not start: {}",
            c.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let archive = busybox_image::busybox_archive(&c.dir);
    let out = c.ctr(&["image", "import", archive.to_str().unwrap()]);
    assert!(out.status.success(), "import: {}", text(&out));
    Some(c)
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

impl Containerd {
    fn ctr(&self, args: &[&str]) -> Output {
        Command::new(tool("ctr").unwrap())
            .arg("--address")
            .arg(self.dir.join("containerd.sock"))
            .args(["--namespace", NS])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// The pod's directory under the shim's state directory.
    fn pod_dir(&self, pod: &str) -> PathBuf {
        self.dir.join("shim").join(NS).join(pod)
    }

    /// Waits until no shim, VMM or virtiofsd of this test runs, no mount
    /// of the shim's is left, and `pod`'s directory is gone.
    fn assert_all_gone(&self, pod: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let procs: Vec<(i32, String)> = procs_under(&self.dir)
                .into_iter()
                .filter(|(_, c)| !c.contains("ctr "))
                .collect();
            let mounts = mounts_under(&self.dir);
            let dir = self.pod_dir(pod);
            if procs.is_empty() && mounts.is_empty() && !dir.exists() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "left behind: processes {procs:?}, mounts {mounts:?}, {} exists: {}",
                dir.display(),
                dir.exists()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until `ctr task ls` shows `id` with `status`.
    fn wait_task(&self, id: &str, status: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = self.ctr(&["task", "ls"]);
            let ls = String::from_utf8_lossy(&out.stdout).into_owned();
            if ls
                .lines()
                .any(|l| l.split_whitespace().next() == Some(id) && l.contains(status))
            {
                return;
            }
            assert!(Instant::now() < deadline, "{id} not {status}: {ls}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The shim server of pod `pod` (its `-id` is the pod's first container).
    fn shim_pid(&self, pod: &str) -> Option<i32> {
        let me = std::process::id() as i32;
        std::fs::read_dir("/proc").unwrap().flatten().find_map(|e| {
            let pid = e.file_name().to_string_lossy().parse::<i32>().ok()?;
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            (pid != me
                && cmd.contains("containerd-shim-husk-v2")
                && cmd.contains(&format!("-id {pod} "))
                && cmd.contains(&*self.dir.to_string_lossy()))
            .then_some(pid)
        })
    }
}

/// `ctr run --rm` prints the container's output and returns its exit
/// code; the shim, the VM and the pod's mounts are gone afterwards.
#[test]
fn ctr_run_prints_the_output_and_returns_the_exit_code() {
    let Some(c) = containerd("run") else {
        return;
    };
    let t0 = Instant::now();
    let out = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        IMAGE,
        "r1",
        "sh",
        "-c",
        "echo hello from $(cat /proc/1/cmdline | tr '\\0' ' '); echo oops >&2; exit 3",
    ]);
    println!(
        "ctr run, pod start to exit: {} ms",
        t0.elapsed().as_millis()
    );
    assert_eq!(out.status.code(), Some(3), "{}\n{}", text(&out), c.log());
    let stdout = String::from_utf8_lossy(&out.stdout);
    // The main process is PID 1 of the container's own PID namespace.
    assert!(stdout.contains("hello from sh -c"), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("oops"));
    c.assert_all_gone("r1");
}

/// `ctr task exec` runs in the container (its PID namespace, its root),
/// with its own output and exit code; `ctr task kill` ends the
/// container; `ctr task delete` takes the shim and the VM with it.
#[test]
fn exec_kill_and_delete() {
    let Some(c) = containerd("exec") else {
        return;
    };
    let out = c.ctr(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        IMAGE,
        "x1",
        "sh",
        "-c",
        "echo made-by-main > /tmp/mark; exec sleep 1000",
    ]);
    assert!(out.status.success(), "{}\n{}", text(&out), c.log());
    c.wait_task("x1", "RUNNING");
    let deadline = Instant::now() + Duration::from_secs(30);
    let out = loop {
        let out = c.ctr(&[
            "task",
            "exec",
            "--exec-id",
            "e1",
            "x1",
            "sh",
            "-c",
            "cat /tmp/mark; cat /proc/1/cmdline | tr '\\0' ' '; echo; exit 5",
        ]);
        // The main process may not have written its mark yet.
        if String::from_utf8_lossy(&out.stdout).contains("made-by-main")
            || Instant::now() > deadline
        {
            break out;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("made-by-main"), "{}", text(&out));
    assert!(stdout.contains("sleep 1000"), "{}", text(&out));
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));

    // A TTY exec: its terminal takes the size of ctr's console
    // (ResizePty), and its output comes through the stdout FIFO. ctr
    // needs a terminal of its own: script(1) gives it one, 33x77.
    let script = c.dir.join("tty.sh");
    std::fs::write(
        &script,
        format!(
            "stty rows 33 cols 77\nexec {} --address {} --namespace {NS} task exec -t --exec-id t1 x1 \
             sh -c 'i=0; while [ $i -lt 100 ]; do s=$(stty size); [ \"$s\" = \"33 77\" ] && break; \
             i=$((i+1)); sleep 0.1; done; [ -t 0 ] && t=yes; echo size=$s tty=$t; exit 4'\n",
            tool("ctr").unwrap().display(),
            c.dir.join("containerd.sock").display()
        ),
    )
    .unwrap();
    let out = Command::new("script")
        .args(["-qec", &format!("sh {}", script.display()), "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("size=33 77 tty=yes"), "{}", text(&out));
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));

    let out = c.ctr(&["task", "kill", "-s", "SIGKILL", "x1"]);
    assert!(out.status.success(), "{}", text(&out));
    c.wait_task("x1", "STOPPED");
    assert!(c.shim_pid("x1").is_some(), "the shim runs until the delete");
    let out = c.ctr(&["task", "delete", "x1"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = c.ctr(&["container", "delete", "x1"]);
    assert!(out.status.success(), "{}", text(&out));
    c.assert_all_gone("x1");
}

/// A shim killed with SIGKILL leaves its VM running; containerd's
/// clean-up (`containerd-shim-husk-v2 delete`) takes it down.
#[test]
fn a_killed_shim_leaves_nothing_containerd_cannot_clean_up() {
    let Some(c) = containerd("kill9") else {
        return;
    };
    let out = c.ctr(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        IMAGE,
        "k1",
        "sleep",
        "1000",
    ]);
    assert!(out.status.success(), "{}\n{}", text(&out), c.log());
    c.wait_task("k1", "RUNNING");
    let shim = c.shim_pid("k1").expect("the shim runs");
    // SAFETY: kill takes no pointers.
    unsafe { libc::kill(shim, libc::SIGKILL) };
    // containerd notices the dead shim and cleans up after it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let _ = c.ctr(&["task", "delete", "k1"]);
        let ls = c.ctr(&["task", "ls"]);
        if !String::from_utf8_lossy(&ls.stdout).contains("k1") {
            break;
        }
        assert!(Instant::now() < deadline, "{}", text(&ls));
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = c.ctr(&["container", "delete", "k1"]);
    assert!(out.status.success(), "{}", text(&out));
    c.assert_all_gone("k1");
}

/// Two containers of one sandbox (the CRI annotations) share one shim
/// and one VM, each with its own root, PID namespace and exit status,
/// and the sandbox's hostname (its UTS namespace).
#[test]
fn two_containers_of_a_sandbox_share_one_vm() {
    let Some(c) = containerd("pod") else {
        return;
    };
    let ann = |kind: &str| {
        [
            "--annotation".to_string(),
            format!("io.kubernetes.cri.container-type={kind}"),
            "--annotation".to_string(),
            "io.kubernetes.cri.sandbox-id=p1".to_string(),
        ]
    };
    let mut args: Vec<String> = ["run", "-d", "--runtime", RUNTIME]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(ann("sandbox"));
    args.extend(
        [
            IMAGE,
            "p1",
            "sh",
            "-c",
            "hostname pod-host; echo sandbox > /tmp/who; exec sleep 1000",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = c.ctr(&refs);
    assert!(out.status.success(), "{}\n{}", text(&out), c.log());
    c.wait_task("p1", "RUNNING");
    let shim = c.shim_pid("p1").expect("the pod's shim");
    let qemus = |c: &Containerd| {
        procs_under(&c.dir)
            .into_iter()
            .filter(|(_, cmd)| cmd.contains("qemu-system"))
            .count()
    };
    assert_eq!(qemus(&c), 1);
    std::thread::sleep(Duration::from_millis(500));

    let mut args: Vec<String> = ["run", "--rm", "--runtime", RUNTIME]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(ann("container"));
    args.extend(
        [
            IMAGE,
            "c1",
            "sh",
            "-c",
            "echo host=$(hostname) who=$(cat /tmp/who 2>&1) pid1=$(cat /proc/1/cmdline | tr '\\0' ' '); exit 7",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = c.ctr(&refs);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(7), "{}\n{}", text(&out), c.log());
    // The sandbox's UTS namespace, its own root (no /tmp/who) and PID
    // namespace.
    assert!(stdout.contains("host=pod-host"), "{}", text(&out));
    assert!(stdout.contains("who=cat: can't open"), "{}", text(&out));
    assert!(stdout.contains("pid1=sh -c"), "{}", text(&out));
    // Still one shim and one VM.
    assert_eq!(c.shim_pid("p1"), Some(shim));
    assert!(c.shim_pid("c1").is_none());
    assert_eq!(qemus(&c), 1);

    let _ = c.ctr(&["task", "kill", "-s", "SIGKILL", "p1"]);
    c.wait_task("p1", "STOPPED");
    assert!(c.ctr(&["task", "delete", "p1"]).status.success());
    assert!(c.ctr(&["container", "delete", "p1"]).status.success());
    c.assert_all_gone("p1");
}

impl Containerd {
    /// A ttrpc client of the shim that runs `id` (its address, as
    /// containerd keeps it), for the calls `ctr` 1.6 cannot make.
    fn shim_client(&self, id: &str) -> containerd_shim_protos::TaskClient {
        let file = self
            .dir
            .join("state/io.containerd.runtime.v2.task")
            .join(NS)
            .join(id)
            .join("address");
        let address = std::fs::read_to_string(&file).unwrap();
        let client = containerd_shim_protos::Client::connect(address.trim()).unwrap();
        containerd_shim_protos::TaskClient::new(client)
    }

    /// `ctr task exec` of `sh -c script` in `id`: its stdout.
    fn exec_sh(&self, id: &str, exec_id: &str, script: &str) -> String {
        let out = self.ctr(&["task", "exec", "--exec-id", exec_id, id, "sh", "-c", script]);
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// Starts `id` (`sleep 1000`, the guest's cgroup v2 mounted at
/// /sys/fs/cgroup as CRI mounts it) with `args` before the image.
fn run_sleeper(c: &Containerd, id: &str, args: &[&str]) {
    let mut all = vec![
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--mount",
        "type=cgroup,src=cgroup,dst=/sys/fs/cgroup,options=ro:nosuid:nodev:noexec",
    ];
    all.extend_from_slice(args);
    all.extend_from_slice(&[IMAGE, id, "sleep", "1000"]);
    let out = c.ctr(&all);
    assert!(out.status.success(), "{}\n{}", text(&out), c.log());
    c.wait_task(id, "RUNNING");
}

fn kill_and_delete(c: &Containerd, id: &str) {
    let _ = c.ctr(&["task", "kill", "-s", "SIGKILL", id]);
    c.wait_task(id, "STOPPED");
    assert!(c.ctr(&["task", "delete", id]).status.success());
    assert!(c.ctr(&["container", "delete", id]).status.success());
    c.assert_all_gone(id);
}

/// `Update` (CRI's UpdateContainerResources; `ctr` 1.6 has no `task
/// update`, so the test makes containerd's call to the shim) changes the
/// running container's cgroup in the guest: the limits it names, and
/// only those.
#[test]
fn update_changes_a_running_containers_cgroup() {
    let Some(c) = containerd("upd") else {
        return;
    };
    run_sleeper(&c, "u1", &["--memory-limit", "67108864"]);
    let cat = "cd /sys/fs/cgroup && echo mem=$(cat memory.max) cpu=$(cat cpu.max) \
               weight=$(cat cpu.weight) pids=$(cat pids.max)";
    let before = c.exec_sh("u1", "e1", cat);
    assert!(before.contains("mem=67108864 "), "{before}");
    assert!(before.contains("pids=max"), "{before}");

    let resources = r#"{"memory":{"limit":50331648},"cpu":{"quota":20000,"period":100000},"pids":{"limit":42}}"#;
    let req = containerd_shim_protos::api::UpdateTaskRequest {
        id: "u1".into(),
        resources: Some(
            containerd_shim_protos::protobuf::well_known_types::any::Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into(),
                value: resources.as_bytes().to_vec(),
                ..Default::default()
            },
        )
        .into(),
        ..Default::default()
    };
    let client = c.shim_client("u1");
    let ctx = containerd_shim_protos::ttrpc::context::with_timeout(30_000_000_000);
    client.update(ctx, &req).expect("update");
    let after = c.exec_sh("u1", "e2", cat);
    assert!(after.contains("mem=50331648 "), "{after}");
    assert!(after.contains("cpu=20000 100000 "), "{after}");
    assert!(after.contains("pids=42"), "{after}");
    // ctr's default shares (1024), set at the start, stay.
    assert!(after.contains("weight=39 "), "{before}\n{after}");
    kill_and_delete(&c, "u1");
}

/// `ctr task metrics` shows the container's cgroup v2 figures from the
/// guest: the memory a process of it holds, its limit, its pids.
#[test]
fn metrics_are_the_containers_cgroup_in_the_guest() {
    let Some(c) = containerd("met") else {
        return;
    };
    run_sleeper(&c, "m1", &["--memory-limit", "134217728"]);
    // 24 MiB in the container's /dev/shm (a tmpfs): charged to its
    // cgroup for as long as the file is there.
    c.exec_sh("m1", "hog", "head -c 25165824 /dev/zero > /dev/shm/hog");
    let out = c.ctr(&["task", "metrics", "--format", "json", "m1"]);
    assert!(out.status.success(), "{}\n{}", text(&out), c.log());
    let m: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    let usage = m["memory"]["usage"].as_u64().unwrap_or(0);
    assert!(usage > 24 << 20, "{m}");
    assert_eq!(m["memory"]["usage_limit"].as_u64(), Some(128 << 20), "{m}");
    assert!(
        m["memory"]["shmem"].as_u64().unwrap_or(0) >= 24 << 20,
        "{m}"
    );
    assert!(m["cpu"]["usage_usec"].as_u64().unwrap_or(0) > 0, "{m}");
    assert!(m["pids"]["current"].as_u64().unwrap_or(0) >= 1, "{m}");
    let table = c.ctr(&["task", "metrics", "m1"]);
    println!("{}", String::from_utf8_lossy(&table.stdout));
    kill_and_delete(&c, "m1");
}

/// The runtime options' `ConfigPath` (`ctr run --runtime-config-path`,
/// or `ConfigPath` in the options of containerd's runtime entry) names
/// the shim's configuration, over `$HUSK_SHIM_CONFIG`: here a VM of
/// 384 MiB where the usual file says 256.
#[test]
fn the_runtime_config_path_names_the_shims_configuration() {
    let Some(c) = containerd("cfg") else {
        return;
    };
    let usual = std::fs::read_to_string(c.dir.join("shim.toml")).unwrap();
    assert!(usual.contains("memory_mib = 256"), "{usual}");
    let other = c.dir.join("other.toml");
    std::fs::write(
        &other,
        usual.replace("memory_mib = 256", "memory_mib = 384"),
    )
    .unwrap();
    let out = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--runtime-config-path",
        other.to_str().unwrap(),
        IMAGE,
        "g1",
        "grep",
        "MemTotal",
        "/proc/meminfo",
    ]);
    assert!(out.status.success(), "{}\n{}", text(&out), c.log());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let kib: u64 = stdout
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{}", text(&out)));
    assert!(kib > 300 * 1024 && kib <= 384 * 1024, "{stdout}");
    c.assert_all_gone("g1");
}

/// The figures of docs/kubernetes.md, printed (no assertion on them):
/// `cargo test --test shim figures -- --ignored --nocapture`.
/// - pod start: from `ctr run` to the container's first line of output
///   (a new pod each time), a first run, then five;
/// - the shim's own resident memory (VmRSS, RssAnon of the shim server,
///   not its VMM or virtiofsd) with one container in the pod, then two.
#[test]
#[ignore = "prints figures; run by hand"]
fn figures() {
    use std::io::BufRead;
    let Some(c) = containerd("fig") else {
        return;
    };
    let mut first = vec![];
    // Run 0 builds the initramfs (and caches it); runs 1-5 find it.
    for n in 0..6 {
        let id = format!("f{n}");
        let t0 = Instant::now();
        let mut child = Command::new(tool("ctr").unwrap())
            .arg("--address")
            .arg(c.dir.join("containerd.sock"))
            .args([
                "--namespace",
                NS,
                "run",
                "--rm",
                "--runtime",
                RUNTIME,
                IMAGE,
            ])
            .args([id.as_str(), "sh", "-c", "echo first; exit 0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let ms = t0.elapsed().as_millis();
        assert_eq!(line.trim(), "first");
        let done = child.wait().unwrap();
        assert!(done.success());
        println!(
            "run {n}: first output after {ms} ms, exit after {} ms",
            t0.elapsed().as_millis()
        );
        if n > 0 {
            first.push(ms);
        }
        c.assert_all_gone(&id);
    }
    first.sort();
    println!(
        "pod start to first output, initramfs cached: median {} ms of {first:?}",
        first[2]
    );

    let rss = |pid: i32| {
        let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        s.lines()
            .filter(|l| l.starts_with("VmRSS") || l.starts_with("RssAnon"))
            .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let ann = |kind: &str| {
        vec![
            "--annotation".to_string(),
            format!("io.kubernetes.cri.container-type={kind}"),
            "--annotation".to_string(),
            "io.kubernetes.cri.sandbox-id=p1".to_string(),
        ]
    };
    let run = |kind: &str, id: &str| {
        let mut args: Vec<String> = ["run", "-d", "--runtime", RUNTIME]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(ann(kind));
        args.extend([IMAGE, id, "sleep", "1000"].iter().map(|s| s.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = c.ctr(&refs);
        assert!(out.status.success(), "{}", text(&out));
        c.wait_task(id, "RUNNING");
    };
    run("sandbox", "p1");
    std::thread::sleep(Duration::from_secs(2));
    let shim = c.shim_pid("p1").unwrap();
    println!("shim, pod of one container: {}", rss(shim));
    run("container", "p2");
    std::thread::sleep(Duration::from_secs(2));
    println!("shim, pod of two containers: {}", rss(shim));
    let _ = c.ctr(&["task", "metrics", "p2"]);
    println!("shim, after a metrics call: {}", rss(shim));
    for (_, cmd) in procs_under(&c.dir) {
        println!(
            "  (also running: {})",
            cmd.chars().take(80).collect::<String>()
        );
    }
    for id in ["p2", "p1"] {
        let _ = c.ctr(&["task", "kill", "-s", "SIGKILL", id]);
        c.wait_task(id, "STOPPED");
        assert!(c.ctr(&["task", "delete", id]).status.success());
        assert!(c.ctr(&["container", "delete", id]).status.success());
    }
    c.assert_all_gone("p1");
}
