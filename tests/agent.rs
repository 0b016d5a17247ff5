//! `husk-agent` on the host, without a VM: it runs against a busybox root
//! directory in its own mount, PID, UTS and IPC namespaces, and the
//! host-side client drives it through the protocol over a Unix socket.
//! Needs root (namespaces, mounts) and busybox; skipped, visibly, without.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use husk::agent::client::{AgentClient, Event, ExitStatus, Process};
use husk::agent::protocol::{ContainerSpec, ImageConfig, ProcessSpec, Stream, WindowSize};

const TIMEOUT: Duration = Duration::from_secs(20);

fn skip(why: &str) -> bool {
    println!("skipped: {why}");
    true
}

fn cannot_run() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return skip("the agent's host tests need root for namespaces and mounts");
    }
    if !Path::new("/bin/busybox").exists() {
        return skip("/bin/busybox is missing (Debian's busybox-static)");
    }
    false
}

/// A root directory like a busybox image's: busybox, its applets, and
/// passwd and group files.
struct Rootfs(PathBuf);

impl Rootfs {
    fn new() -> Rootfs {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "husk-agent-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let root = dir.join("root");
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
        let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            if applet != "busybox" {
                let _ = symlink("busybox", root.join("bin").join(applet));
            }
        }
        std::fs::write(
            root.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nwww:x:33:33:www:/var/www:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            root.join("etc/group"),
            "root:x:0:\nwww:x:33:\nstaff:x:50:www\n",
        )
        .unwrap();
        Rootfs(dir)
    }

    fn root(&self) -> PathBuf {
        self.0.join("root")
    }
}

impl Drop for Rootfs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct HostAgent {
    child: Child,
    sock: PathBuf,
    _fs: Rootfs,
}

impl HostAgent {
    fn start() -> HostAgent {
        let fs = Rootfs::new();
        let sock = fs.0.join("agent.sock");
        let child = Command::new(env!("CARGO_BIN_EXE_husk-agent"))
            .arg("--rootfs")
            .arg(fs.root())
            .arg("--listen")
            .arg(&sock)
            .spawn()
            .unwrap();
        HostAgent {
            child,
            sock,
            _fs: fs,
        }
    }

    async fn client(&self) -> AgentClient {
        AgentClient::connect_unix(&self.sock, TIMEOUT)
            .await
            .unwrap()
    }

    /// The agent exits once the main process has (without keep_running).
    fn wait(&mut self) -> i32 {
        let deadline = std::time::Instant::now() + TIMEOUT;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code().unwrap_or(-1);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the agent never exited"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The serving process (PID 1 of the namespaces), a child of ours.
    fn server_pid(&self) -> u32 {
        let pid = self.child.id();
        let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
        children.split_whitespace().next().unwrap().parse().unwrap()
    }
}

impl Drop for HostAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn cmd(args: &[&str]) -> ContainerSpec {
    ContainerSpec {
        overrides: ImageConfig {
            cmd: Some(strings(args)),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn exec(args: &[&str]) -> ProcessSpec {
    ProcessSpec {
        args: strings(args),
        ..Default::default()
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn code(c: i32) -> ExitStatus {
    ExitStatus {
        code: Some(c),
        signal: None,
    }
}

/// Runs `spec` as the main process of a fresh agent and collects it.
async fn run_main(spec: ContainerSpec) -> husk::agent::client::Output {
    let mut agent = HostAgent::start();
    let client = agent.client().await;
    let out = client.start(spec).await.unwrap().output().await.unwrap();
    assert_eq!(agent.wait(), 0, "the agent exits after its main process");
    out
}

#[tokio::test(flavor = "current_thread")]
async fn a_command_gives_its_output_and_exit_code() {
    if cannot_run() {
        return;
    }
    let out = run_main(cmd(&["echo", "hello"])).await;
    assert_eq!((text(&out.stdout), out.status), ("hello\n".into(), code(0)));
    let out = run_main(cmd(&["sh", "-c", "echo oops >&2; exit 7"])).await;
    assert_eq!((text(&out.stderr), out.status), ("oops\n".into(), code(7)));
}

#[tokio::test(flavor = "current_thread")]
async fn the_image_config_and_overrides_apply_as_docker_applies_them() {
    if cannot_run() {
        return;
    }
    let script = "echo $A $B; pwd; id -u; id -G; echo $HOME; hostname; grep box /etc/hosts";
    let spec = ContainerSpec {
        image: ImageConfig {
            entrypoint: Some(strings(&["sh", "-c"])),
            cmd: Some(strings(&["echo never"])),
            env: strings(&["A=1", "B=image"]),
            working_dir: Some("/srv/app".into()),
            user: Some("www".into()),
        },
        overrides: ImageConfig {
            cmd: Some(strings(&[script])),
            env: strings(&["B=2"]),
            ..Default::default()
        },
        hostname: Some("box".into()),
        ..Default::default()
    };
    let out = run_main(spec).await;
    assert_eq!(
        text(&out.stdout),
        "1 2\n/srv/app\n33\n33 50\n/var/www\nbox\n127.0.1.1\tbox\n",
        "{}",
        text(&out.stderr)
    );
    // An overriding entrypoint drops the image's cmd.
    let spec = ContainerSpec {
        image: ImageConfig {
            entrypoint: Some(strings(&["echo", "ep"])),
            cmd: Some(strings(&["c1"])),
            ..Default::default()
        },
        ..Default::default()
    };
    assert_eq!(text(&run_main(spec.clone()).await.stdout), "ep c1\n");
    let mut over = spec;
    over.overrides.entrypoint = Some(strings(&["echo", "other"]));
    assert_eq!(text(&run_main(over).await.stdout), "other\n");
}

#[tokio::test(flavor = "current_thread")]
async fn bad_commands_and_users_are_refused_clearly() {
    if cannot_run() {
        return;
    }
    let agent = HostAgent::start();
    let client = agent.client().await;
    let err = client.start(cmd(&["no-such-binary"])).await.unwrap_err();
    assert!(err.to_string().contains("no-such-binary"), "{err}");
    let mut spec = cmd(&["true"]);
    spec.overrides.user = Some("nobody2".into());
    let err = client.start(spec).await.unwrap_err();
    assert!(
        err.to_string().contains("unable to find user nobody2"),
        "{err}"
    );
    let err = client.start(ContainerSpec::default()).await.unwrap_err();
    assert!(err.to_string().contains("no command specified"), "{err}");
    let err = client.exec(exec(&["true"])).await.unwrap_err();
    assert!(
        err.to_string().contains("no container was started"),
        "{err}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn exec_runs_beside_the_main_process_and_signals_reach_it() {
    if cannot_run() {
        return;
    }
    let mut agent = HostAgent::start();
    let client = agent.client().await;
    let mut spec = cmd(&["sleep", "100"]);
    spec.image.env = strings(&["FROM=image"]);
    let main = client.start(spec).await.unwrap();
    let out = client
        .exec(exec(&["sh", "-c", "echo exec $FROM; exit 3"]))
        .await
        .unwrap()
        .output()
        .await
        .unwrap();
    assert_eq!(
        (text(&out.stdout), out.status),
        ("exec image\n".into(), code(3))
    );
    // The main process is PID 1's child: in the namespace, its pid is small.
    assert!(main.pid() > 1);
    main.signal(libc::SIGKILL).await.unwrap();
    let out = main.output().await.unwrap();
    assert_eq!(out.status.signal, Some(libc::SIGKILL));
    assert_eq!(out.status.shell_code(), 137);
    assert_eq!(agent.wait(), 0);
}

#[tokio::test(flavor = "current_thread")]
async fn orphans_are_reaped() {
    if cannot_run() {
        return;
    }
    let agent = HostAgent::start();
    let client = agent.client().await;
    // Each `sleep 0` is orphaned (its subshell exits first) and becomes
    // the agent's child.
    let spec = cmd(&[
        "sh",
        "-c",
        "for i in 1 2 3 4 5; do (sleep 0 &); done; sleep 100",
    ]);
    let _main = client.start(spec).await.unwrap();
    let count = "grep -l '^State:.*Z' /proc/[0-9]*/status 2>/dev/null | wc -l";
    let mut zombies = String::new();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let out = client.exec(exec(&["sh", "-c", count])).await.unwrap();
        zombies = text(&out.output().await.unwrap().stdout);
        if zombies.trim() == "0" {
            break;
        }
    }
    assert_eq!(zombies.trim(), "0");
}

#[tokio::test(flavor = "current_thread")]
async fn stdin_reaches_the_process_and_its_end_closes_it() {
    if cannot_run() {
        return;
    }
    let mut agent = HostAgent::start();
    let client = agent.client().await;
    let p = client.start(cmd(&["wc", "-c"])).await.unwrap();
    // Four windows' worth: the agent's credit paces the sender.
    let data = vec![b'x'; 1 << 20];
    p.write_stdin(&data).await.unwrap();
    p.close_stdin().await.unwrap();
    let out = p.output().await.unwrap();
    assert_eq!(text(&out.stdout).trim(), "1048576");
    assert_eq!(agent.wait(), 0);
}

#[tokio::test(flavor = "current_thread")]
async fn a_terminal_has_its_size_and_follows_resizes() {
    if cannot_run() {
        return;
    }
    let agent = HostAgent::start();
    let client = agent.client().await;
    let _main = client.start(cmd(&["sleep", "100"])).await.unwrap();
    let spec = ProcessSpec {
        args: strings(&["sh", "-c", "tty; stty size; read x; stty size"]),
        tty: true,
        window: Some(WindowSize {
            rows: 30,
            cols: 100,
        }),
        ..Default::default()
    };
    let mut p = client.exec(spec).await.unwrap();
    let mut seen = String::new();
    while !seen.contains("30 100") {
        match p.next().await.unwrap() {
            Some(Event::Output(Stream::Stdout, d)) => seen.push_str(&text(&d)),
            other => panic!("{other:?} after {seen:?}"),
        }
    }
    assert!(seen.starts_with("/dev/pts/"), "{seen:?}");
    p.resize(WindowSize {
        rows: 40,
        cols: 120,
    })
    .await
    .unwrap();
    p.write_stdin(b"go\n").await.unwrap();
    let out = p.output().await.unwrap();
    assert!(
        text(&out.stdout).contains("40 120"),
        "{:?}",
        text(&out.stdout)
    );
    assert_eq!(out.status, code(0));
}

/// The agent's peak resident memory, in KiB.
fn peak_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_host_that_never_reads_costs_the_agent_one_window() {
    use husk::agent::protocol::{encode_message, FrameReader, Message};
    use std::io::{Read, Write};
    if cannot_run() {
        return;
    }
    let agent = HostAgent::start();
    let mut s = loop {
        match std::os::unix::net::UnixStream::connect(&agent.sock) {
            Ok(s) => break s,
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    let mut r = FrameReader::default();
    let mut buf = [0u8; 4096];
    while r.next_frame().unwrap().is_none() {
        let n = s.read(&mut buf).unwrap();
        r.push(&buf[..n]);
    }
    let mut start = Vec::new();
    let spec = cmd(&["head", "-c", "104857600", "/dev/zero"]);
    encode_message(
        &Message::Start {
            id: 1,
            spec: Box::new(spec),
        },
        &mut start,
    );
    s.write_all(&start).unwrap();
    // The process writes as fast as it can; the host reads nothing.
    std::thread::sleep(Duration::from_millis(700));
    let hwm = peak_kib(agent.server_pid());
    assert!(hwm < 16 * 1024, "agent peak RSS {hwm} kB");
}

#[tokio::test(flavor = "current_thread")]
async fn a_hundred_mib_of_output_flows_in_bounded_memory() {
    if cannot_run() {
        return;
    }
    let mut agent = HostAgent::start();
    let client = agent.client().await;
    let mut p: Process = client
        .start(cmd(&["head", "-c", "104857600", "/dev/zero"]))
        .await
        .unwrap();
    let server = agent.server_pid();
    let peak = || peak_kib(server);
    let mut hwm = 0;
    let mut total = 0usize;
    let mut paused = false;
    loop {
        match p.next().await.unwrap() {
            Some(Event::Output(_, d)) => {
                total += d.len();
                // The last MiB is still owed credit: the agent is alive.
                if hwm == 0 && total >= 99 << 20 {
                    hwm = peak();
                }
            }
            Some(Event::Exit(s)) => {
                assert_eq!(s, code(0));
                break;
            }
            None => panic!("no exit"),
        }
        if !paused && total > 10 << 20 {
            // A host that stops reading stops the process, not the agent's
            // memory.
            paused = true;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    assert_eq!(total, 100 << 20);
    assert!(hwm < 16 * 1024, "agent peak RSS {hwm} kB");
    assert_eq!(agent.wait(), 0);
}

#[tokio::test(flavor = "current_thread")]
async fn hostile_frames_get_errors_and_the_agent_keeps_serving() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if cannot_run() {
        return;
    }
    let agent = HostAgent::start();
    let _ = agent.client().await;
    let raw = |bytes: Vec<u8>| {
        let sock = agent.sock.clone();
        async move {
            let mut s = tokio::net::UnixStream::connect(&sock).await.unwrap();
            s.write_all(&bytes).await.unwrap();
            let mut got = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut got)).await;
            text(&got)
        }
    };
    // Bad JSON, an unknown message, data for no process, a message only
    // the agent sends: each an Error.
    let mut frames = Vec::new();
    for body in [
        &b"{nope"[..],
        br#"{"type":"format_disk"}"#,
        br#"{"type":"ready","version":1,"timings":{"boot_us":0,"setup_us":0}}"#,
    ] {
        frames.extend_from_slice(&((body.len() + 1) as u32).to_le_bytes());
        frames.push(1);
        frames.extend_from_slice(body);
    }
    husk::agent::protocol::encode_data(9, Stream::Stdin, b"x", &mut frames);
    // Then a length no frame may have: the connection ends.
    frames.extend_from_slice(&u32::MAX.to_le_bytes());
    let got = raw(frames).await;
    assert!(got.contains("bad control message"), "{got}");
    assert!(got.contains("not a message for the agent"), "{got}");
    assert!(got.contains("no process 9"), "{got}");
    assert!(got.contains("outside 1..="), "{got}");
    // And the agent still serves.
    let client = agent.client().await;
    let out = client.start(cmd(&["echo", "still"])).await.unwrap();
    assert_eq!(text(&out.output().await.unwrap().stdout), "still\n");
}

#[tokio::test(flavor = "current_thread")]
async fn signals_to_pid_1_reach_the_main_process() {
    if cannot_run() {
        return;
    }
    let mut agent = HostAgent::start();
    let client = agent.client().await;
    let main = client.start(cmd(&["sleep", "100"])).await.unwrap();
    // What a VMM's shutdown request looks like to the guest's PID 1.
    let server = agent.server_pid();
    // SAFETY: kill takes no pointers.
    assert_eq!(unsafe { libc::kill(server as i32, libc::SIGTERM) }, 0);
    let out = main.output().await.unwrap();
    assert_eq!(out.status.signal, Some(libc::SIGTERM));
    assert_eq!(agent.wait(), 0);
}

#[tokio::test(flavor = "current_thread")]
async fn keep_running_outlives_the_main_process_until_shutdown() {
    if cannot_run() {
        return;
    }
    let mut agent = HostAgent::start();
    let client = agent.client().await;
    let mut spec = cmd(&["true"]);
    spec.keep_running = true;
    let out = client.start(spec).await.unwrap().output().await.unwrap();
    assert_eq!(out.status, code(0));
    let out = client.exec(exec(&["echo", "still here"])).await.unwrap();
    assert_eq!(text(&out.output().await.unwrap().stdout), "still here\n");
    assert!(agent.child.try_wait().unwrap().is_none());
    client.shutdown().await.unwrap();
    assert_eq!(agent.wait(), 0);
}

#[tokio::test(flavor = "current_thread")]
async fn a_new_host_attaches_and_loses_nothing() {
    if cannot_run() {
        return;
    }
    let mut agent = HostAgent::start();
    let first = agent.client().await;
    // "two" and the exit come once the host has gone. (Output already on
    // its way to a host when it goes is lost with the connection.)
    let script = "echo one; sleep 0.5; echo two; exit 4";
    let mut main = first.start(cmd(&["sh", "-c", script])).await.unwrap();
    assert_eq!(
        main.next().await.unwrap(),
        Some(Event::Output(Stream::Stdout, b"one\n".to_vec()))
    );
    let id = main.id();
    // The host goes away (a daemon restart) while "two" and the exit
    // happen.
    drop(main);
    drop(first);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let second = agent.client().await;
    let out = second.attach(id).await.unwrap().output().await.unwrap();
    assert_eq!((text(&out.stdout), out.status), ("two\n".into(), code(4)));
    assert_eq!(agent.wait(), 0);
    let err = {
        let again = HostAgent::start();
        let c = again.client().await;
        c.attach(77).await.unwrap_err()
    };
    assert!(err.to_string().contains("no process 77"), "{err}");
}
