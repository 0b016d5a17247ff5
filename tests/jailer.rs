//! `husk jailer` for real: a jailed husk-vmm boots the probe guest from
//! files brought in with --mount, runs as an unprivileged uid with no
//! capabilities in its own root, namespaces and cgroups, is stopped by its
//! cgroup's memory limit, and leaves no cgroup behind. Needs root and
//! /dev/kvm (each test says `skipped:` otherwise).

mod common;
#[path = "common/jail.rs"]
mod jail;

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

use common::skip;
use husk::vmm::client;
use jail::*;

fn read(p: impl AsRef<std::path::Path>) -> String {
    let p = p.as_ref();
    std::fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
        .trim()
        .to_string()
}

/// How a jailer ends after SIGTERM. The VMM is PID 1 of its namespace
/// and has no SIGTERM handler, so the kernel drops the forwarded signal
/// and the jailer follows with SIGKILL (137); but while a thread of the
/// VMM blocks every signal (glibc's pthread_create does, for a moment)
/// the kernel queues the SIGTERM and it is fatal after all (143).
fn ended_by_sigterm(code: Option<i32>) -> bool {
    code == Some(128 + libc::SIGKILL) || code == Some(128 + libc::SIGTERM)
}

#[test]
fn jailed_vmm_boots_the_probe_from_mounted_files() {
    if !can_jail() {
        return;
    }
    let s = Scratch::new();
    let cfg = s.config("boot.json", "probe=count:3,cmdline", 128);
    let args = s
        .jail_args("boot")
        .cgroup_v1()
        .cgroup("memory.limit_in_bytes=256M")
        .config(&cfg, "/cfg/vm.json")
        .no_api();
    let mut j = Jailer::spawn(&args);
    for i in 1..=3 {
        assert_eq!(j.expect_line("COUNT"), format!("COUNT {i}"));
    }
    assert_eq!(
        j.expect_line("PROBE cmdline"),
        "PROBE cmdline OK probe=count:3,cmdline"
    );
    j.expect_line("PROBE DONE");
    assert_eq!(j.wait().code(), Some(0), "stderr: {}", j.stderr());
    // Cleaned up: no cgroup, no pid file; the jail itself stays, as
    // Firecracker's does, with the mount targets as empty files.
    let cg = s.cgroup_dir(Some("memory"), "boot");
    assert!(!cg.exists(), "{} is left behind", cg.display());
    let root = s.root("boot");
    assert!(!root.join("husk-vmm.pid").exists());
    assert_eq!(std::fs::metadata(root.join("kernel")).unwrap().len(), 0);
}

/// The VMM's process as the host sees it, while the probe waits for
/// Ctrl-Alt-Del; then the API socket in the jail's /run stops it.
#[test]
fn jailed_vmm_is_unprivileged_in_its_own_root_and_cgroups() {
    if !can_jail() {
        return;
    }
    let s = Scratch::new();
    let cfg = s.config("wait.json", "probe=wait-cad", 128);
    let marker = s.dir.path("outside-the-jail");
    std::fs::write(&marker, "host file").unwrap();
    let args = s
        .jail_args("unpriv")
        .cgroup_v1()
        .cgroup("memory.limit_in_bytes=200M")
        .cgroup("pids.max=32")
        .cgroup("cpu.cfs_quota_us=50000")
        .flags(&["--resource-limit", "no-file=512"])
        .flags(&["--resource-limit", "fsize=1048576"])
        .mount_ro(&cfg, "/vm.json")
        .vmm(&[
            "--api-sock",
            "/run/api.sock",
            "--config-file",
            "/vm.json",
            // Installing the VMM's own seccomp filters sets no_new_privs
            // too; without them, NoNewPrivs below is the jailer's doing.
            "--no-seccomp",
        ]);
    let mut j = Jailer::spawn(&args);
    let root = s.root("unpriv");
    let pid = wait_pid_file(&root);
    j.expect_line("PROBE BOOT");

    // Credentials: the given uid/gid, no groups, no capabilities at all.
    let u = format!("{UID}\t{UID}\t{UID}\t{UID}");
    let g = format!("{GID}\t{GID}\t{GID}\t{GID}");
    assert_eq!(status_field(pid, "Uid"), u);
    assert_eq!(status_field(pid, "Gid"), g);
    assert_eq!(status_field(pid, "Groups"), "");
    for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(status_field(pid, cap), "0000000000000000", "{cap}");
    }
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    // PID 1 of its own PID namespace; its own mount, IPC and UTS ones.
    assert!(status_field(pid, "NSpid").ends_with("\t1"));
    for ns in ["pid", "mnt", "ipc", "uts"] {
        let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        assert_ne!(theirs, ours, "{ns} namespace shared with the host");
    }
    // rlimits.
    let limits = read(format!("/proc/{pid}/limits"));
    let limit = |name: &str| {
        limits
            .lines()
            .find(|l| l.starts_with(name))
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .unwrap()
    };
    assert_eq!(&limit("Max open files")[3..5], ["512", "512"]);
    assert_eq!(&limit("Max file size")[3..5], ["1048576", "1048576"]);

    // Its root is the jail: exactly what the jailer put there, and a
    // host file outside it is not reachable.
    let proc_root = std::path::PathBuf::from(format!("/proc/{pid}/root"));
    let listed: BTreeSet<String> = std::fs::read_dir(&proc_root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let expected: BTreeSet<String> = [
        "dev",
        "husk-vmm",
        "husk-vmm.pid",
        "kernel",
        "proc",
        "run",
        "vm.json",
    ]
    .map(String::from)
    .into();
    assert_eq!(listed, expected);
    let through = proc_root.join(marker.strip_prefix("/").unwrap());
    assert!(
        !through.exists(),
        "{} is visible in the jail",
        marker.display()
    );
    assert!(!proc_root.join("etc/passwd").exists());
    // Its /dev holds the VMM's devices only, owned by it.
    let dev: BTreeSet<String> = std::fs::read_dir(proc_root.join("dev"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(dev.contains("kvm") && dev.contains("net"), "{dev:?}");
    assert!(dev.len() <= 3, "{dev:?}");
    let kvm = std::fs::metadata(proc_root.join("dev/kvm")).unwrap();
    assert_eq!(
        (kvm.uid(), kvm.gid(), kvm.mode() & 0o777),
        (UID, GID, 0o600)
    );
    // The mounted files are read-only there.
    let mounts = read(format!("/proc/{pid}/mountinfo"));
    let vm_json = mounts.lines().find(|l| l.contains(" /vm.json ")).unwrap();
    assert!(vm_json.contains(" ro,"), "{vm_json}");

    // Its cgroups hold it and the limits set.
    let cgroups = read(format!("/proc/{pid}/cgroup"));
    for c in ["memory", "pids", "cpu"] {
        let want = format!("/{}/unpriv", s.parent);
        assert!(
            cgroups
                .lines()
                .any(|l| l.split(':').nth(1).unwrap().split(',').any(|x| x == c)
                    && l.ends_with(&want)),
            "{c} cgroup is not {want}: {cgroups}"
        );
    }
    let mem = s.cgroup_dir(Some("memory"), "unpriv");
    assert_eq!(read(mem.join("memory.limit_in_bytes")), "209715200");
    assert!(read(mem.join("cgroup.procs"))
        .lines()
        .any(|l| l == pid.to_string()));
    assert_eq!(
        read(s.cgroup_dir(Some("pids"), "unpriv").join("pids.max")),
        "32"
    );
    assert_eq!(
        read(s.cgroup_dir(Some("cpu"), "unpriv").join("cpu.cfs_quota_us")),
        "50000"
    );

    // The API socket is in the jail's /run, reachable from the host.
    let sock = root.join("run/api.sock");
    wait_socket(&sock);
    let info = client::request(&sock, "GET", "/", None).unwrap();
    assert_eq!(info.json()["id"], "unpriv", "{}", info.body);
    let r = client::request(
        &sock,
        "PUT",
        "/actions",
        Some(r#"{"action_type":"SendCtrlAltDel"}"#),
    )
    .unwrap();
    assert_eq!(r.status, 204, "{}", r.body);
    j.expect_line("PROBE wait-cad OK");
    assert_eq!(j.wait().code(), Some(0), "stderr: {}", j.stderr());
    for c in ["memory", "pids", "cpu"] {
        let d = s.cgroup_dir(Some(c), "unpriv");
        assert!(!d.exists(), "{} is left behind", d.display());
    }
}

#[test]
fn a_guest_past_the_memory_limit_is_killed_by_its_cgroup() {
    if !can_jail() {
        return;
    }
    let s = Scratch::new();
    let run = |id: &str, pages: u32| {
        let cfg = s.config(&format!("{id}.json"), &format!("probe=dirty:{pages}"), 512);
        let args = s
            .jail_args(id)
            .cgroup_v1()
            .cgroup("memory.limit_in_bytes=96M")
            .config(&cfg, "/vm.json")
            .no_api();
        Jailer::spawn(&args)
    };
    // 20 MiB of guest pages fit under the limit...
    let mut fits = run("fits", 5_000);
    fits.expect_line("PROBE dirty:5000 OK");
    assert_eq!(fits.wait().code(), Some(0), "stderr: {}", fits.stderr());
    // ...240 MiB do not: the cgroup's OOM killer stops the VMM, and the
    // jailer, outside the cgroup, reports it and cleans up.
    let mut big = run("big", 60_000);
    big.expect_line("PROBE BOOT");
    let status = big.wait();
    let err = big.stderr();
    assert_eq!(status.code(), Some(128 + libc::SIGKILL), "stderr: {err}");
    assert!(
        big.seen.iter().all(|l| !l.starts_with("PROBE dirty")),
        "{:?}",
        big.seen
    );
    assert!(err.contains("the VMM was killed by SIGKILL"), "{err}");
    assert!(err.contains("OOM killer"), "{err}");
    assert!(err.contains("oom_kill 1"), "{err}");
    assert!(!s.cgroup_dir(Some("memory"), "big").exists());
    // The host is untouched: the jailer lived to report, and so did we.
    assert!(s.dir.0.exists());
}

#[test]
fn cgroup_v2_directory_is_made_joined_and_removed() {
    if !can_jail() {
        return;
    }
    let s = Scratch::new();
    if !hierarchy(None).exists() {
        skip("no cgroup2 hierarchy is mounted");
        return;
    }
    let cfg = s.config("wait.json", "probe=wait-cad", 128);
    let args = s
        .jail_args("v2")
        .cgroup("cgroup.max.descendants=2")
        .config(&cfg, "/vm.json")
        .api();
    let mut j = Jailer::spawn(&args);
    let root = s.root("v2");
    let pid = wait_pid_file(&root);
    let dir = s.cgroup_dir(None, "v2");
    let cgroups = read(format!("/proc/{pid}/cgroup"));
    let want = format!("0::/{}/v2", s.parent);
    assert!(cgroups.lines().any(|l| l == want), "{cgroups}");
    assert_eq!(read(dir.join("cgroup.max.descendants")), "2");
    assert_eq!(read(dir.join("cgroup.procs")), pid.to_string());
    wait_socket(&root.join("run/api.sock"));
    // SIGTERM to the jailer stops the VM.
    // SAFETY: kill has no memory effects.
    assert_eq!(unsafe { libc::kill(j.jailer_pid(), libc::SIGTERM) }, 0);
    let status = j.wait();
    assert!(ended_by_sigterm(status.code()), "{status:?} {}", j.stderr());
    assert!(!dir.exists(), "{} is left behind", dir.display());
    assert!(!root.join("husk-vmm.pid").exists());
}

#[test]
fn cgroup_v2_names_the_version_that_has_a_controller() {
    if !can_jail() {
        return;
    }
    let s = Scratch::new();
    let controllers =
        std::fs::read_to_string(hierarchy(None).join("cgroup.controllers")).unwrap_or_default();
    if controllers.split_whitespace().any(|c| c == "memory") {
        skip("the memory controller is available in cgroup v2 on this host");
        return;
    }
    let args = s.jail_args("nomem").cgroup("memory.max=96M").no_api();
    let (status, err) = run_jailer(&args);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("memory.max"), "{err}");
    assert!(err.contains("not available in cgroup v2"), "{err}");
    if hierarchy(Some("memory")).exists() {
        assert!(err.contains("--cgroup-version 1"), "{err}");
    }
    assert!(!s.base.exists(), "the jail was made");
    assert!(!s.cgroup_dir(None, "nomem").exists());
}

/// Each bad invocation fails with a message naming the problem, and
/// leaves no jail and no cgroup behind.
#[test]
fn bad_flags_fail_and_leave_nothing_behind() {
    if !can_jail() {
        return;
    }
    let s = Scratch::new();
    let secret = s.dir.path("secret.img");
    std::fs::write(&secret, "x").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let plain_file = s.dir.path("not-a-netns");
    std::fs::write(&plain_file, "").unwrap();
    let v = |flags: &[&str]| -> Vec<String> { flags.iter().map(|f| f.to_string()).collect() };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (v(&["--cgroup", "memorymax=1"]), "no dot"),
        (
            v(&["--cgroup-version", "1", "--cgroup", "bogus.max=1"]),
            "unknown cgroup controller",
        ),
        (
            v(&["--cgroup-version", "1", "--cgroup", "memory.bogus=1"]),
            "the kernel has no such setting",
        ),
        (
            v(&["--cgroup-version", "1", "--cgroup", "pids.max=-7"]),
            "cannot write",
        ),
        (v(&["--cgroup-version", "3"]), "--cgroup-version"),
        (
            v(&["--mount", &format!("{}:/../etc/x", secret.display())]),
            "'..'",
        ),
        (
            v(&["--mount", &format!("{}:relative", secret.display())]),
            "absolute",
        ),
        (
            v(&["--mount", &format!("{}:/secret.img:ro", secret.display())]),
            "chown it to",
        ),
        (v(&["--mount", "/nonexistent/file:/x"]), "/nonexistent/file"),
        (
            v(&["--mount", &format!("{}:/dev/kvm", secret.display())]),
            "/dev is the jail's own",
        ),
        (v(&["--resource-limit", "nofile=5"]), "unknown resource"),
        (v(&["--netns", "/nonexistent/netns"]), "--netns"),
        // This one fails inside the child, after the jail and the cgroup
        // were made: both must be taken away again.
        (
            v(&["--netns", &plain_file.display().to_string()]),
            "cannot join the network namespace",
        ),
        (v(&["--", "--id", "x"]), "passes --id itself"),
        (v(&["--parent-cgroup", "../up"]), "--parent-cgroup"),
    ];
    for (extra, want) in cases {
        let mut args = s.args("bad");
        // Put the case's flags before any '--' of its own.
        let split = extra.iter().position(|a| a == "--").unwrap_or(extra.len());
        args.extend(extra[..split].iter().cloned());
        args.extend(["--", "--no-api", "--config-file", "/none.json"].map(String::from));
        args.extend(extra[split..].iter().skip(1).cloned());
        let (status, err) = run_jailer(&args);
        assert!(!status.success(), "{extra:?} succeeded");
        assert!(err.contains(want), "{extra:?}: {err:?} lacks {want:?}");
        if err.starts_with("husk jailer:") {
            assert_eq!(
                err.trim().lines().count(),
                1,
                "{extra:?}: not one line: {err}"
            );
        }
        let jail = s.base.join("husk-vmm/bad");
        assert!(!jail.exists(), "{extra:?} left {}", jail.display());
        for c in [None, Some("memory"), Some("pids")] {
            let d = s.cgroup_dir(c, "bad");
            assert!(!d.exists(), "{extra:?} left {}", d.display());
        }
    }
    // Bad ids and exec files.
    for (flag, value, want) in [
        ("--id", "../x", "an id is"),
        ("--exec-file", "/nonexistent/husk-vmm", "--exec-file"),
        ("--exec-file", "/bin/sh", "dynamically linked"),
        ("--chroot-base-dir", "relative/jails", "absolute"),
        ("--uid", "4294967295", "unchanged"),
    ] {
        let mut args = s.args("bad");
        let i = args.iter().position(|a| a == flag).unwrap();
        args[i + 1] = value.into();
        let (status, err) = run_jailer(&args);
        assert!(!status.success(), "{flag} {value} succeeded");
        assert!(err.contains(want), "{flag} {value}: {err:?} lacks {want:?}");
    }
    assert!(!s.base.join("husk-vmm/bad").exists());
}

#[test]
fn a_jail_in_use_is_refused() {
    if !can_jail() {
        return;
    }
    let s = Scratch::new();
    let cfg = s.config("wait.json", "probe=wait-cad", 128);
    let args = s.jail_args("busy").config(&cfg, "/vm.json").no_api();
    let mut first = Jailer::spawn(&args);
    let pid = wait_pid_file(&s.root("busy"));
    first.expect_line("PROBE BOOT");
    let (status, err) = run_jailer(&args);
    assert_eq!(status.code(), Some(1));
    assert!(err.contains("in use by pid"), "{err}");
    // The first VM is untouched by the refused start.
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    assert_eq!(wait_pid_file(&s.root("busy")), pid);
    let status = first.terminate();
    assert!(ended_by_sigterm(status.code()), "{status:?}");
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    assert!(!s.cgroup_dir(None, "busy").exists());
}

#[test]
fn daemonized_jailer_returns_once_the_vmm_runs_and_still_cleans_up() {
    if !can_jail() {
        return;
    }
    let s = Scratch::new();
    let cfg = s.config("wait.json", "probe=wait-cad", 128);
    let args = s
        .jail_args("daemon")
        .flags(&["--daemonize", "--new-pid-ns"])
        .config(&cfg, "/vm.json")
        .api();
    let (status, err) = run_jailer(&args);
    assert!(status.success(), "{err}");
    let root = s.root("daemon");
    // The pid file is there as soon as the jailer returns.
    let pid: i32 = read(root.join("husk-vmm.pid")).parse().unwrap();
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/fd/1")).unwrap(),
        std::path::Path::new("/dev/null")
    );
    let sock = root.join("run/api.sock");
    wait_socket(&sock);
    let dir = s.cgroup_dir(None, "daemon");
    assert!(dir.exists());
    let r = client::request(
        &sock,
        "PUT",
        "/actions",
        Some(r#"{"action_type":"SendCtrlAltDel"}"#),
    )
    .unwrap();
    assert_eq!(r.status, 204, "{}", r.body);
    assert!(gone_within(&dir, Duration::from_secs(5)), "cgroup left");
    assert!(gone_within(
        &root.join("husk-vmm.pid"),
        Duration::from_secs(5)
    ));
}

#[test]
fn netns_is_joined() {
    if !can_jail() {
        return;
    }
    let name = format!("husk-jt-{}", std::process::id());
    let added = std::process::Command::new("ip")
        .args(["netns", "add", &name])
        .status();
    if !matches!(added, Ok(s) if s.success()) {
        skip("cannot make a network namespace with `ip netns add`");
        return;
    }
    struct Del(String);
    impl Drop for Del {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &self.0])
                .status();
        }
    }
    let _del = Del(name.clone());
    let ns = format!("/var/run/netns/{name}");
    let s = Scratch::new();
    let cfg = s.config("wait.json", "probe=wait-cad", 128);
    let args = s
        .jail_args("net")
        .flags(&["--netns", &ns])
        .config(&cfg, "/vm.json")
        .no_api();
    let mut j = Jailer::spawn(&args);
    let pid = wait_pid_file(&s.root("net"));
    j.expect_line("PROBE BOOT");
    let theirs = std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .unwrap()
        .ino();
    assert_eq!(theirs, std::fs::metadata(&ns).unwrap().ino());
    j.terminate();
    assert!(!s.cgroup_dir(None, "net").exists());
}

/// Inside the jail the VMM is PID 1 of its namespace, which ignores a
/// default-action signal it sends itself: a filter violation must still
/// end it, as SIGSYS.
#[test]
fn a_forbidden_call_kills_a_jailed_vmm_too() {
    if !can_jail() {
        return;
    }
    if !cfg!(feature = "test-hooks") {
        eprintln!("skipped: built without the test-hooks feature (scripts/test.sh turns it on)");
        return;
    }
    for kind in ["api", "vcpu"] {
        let s = Scratch::new();
        let cfg = s.config("long.json", "probe=count:100000000", 128);
        let id = format!("sys-{kind}");
        let args = s.jail_args(&id).cgroup_v1().config(&cfg, "/vm.json").api();
        let mut j = Jailer::spawn(&args);
        j.expect_line("COUNT");
        let sock = s.root(&id).join("run/api.sock");
        wait_socket(&sock);
        let body = format!(r#"{{"thread": "{kind}"}}"#);
        let answer = husk::vmm::client::request(&sock, "PUT", "/test/forbidden-call", Some(&body));
        assert!(
            answer.as_ref().is_err() || answer.as_ref().is_ok_and(|r| r.status >= 500),
            "{kind}: the VMM answered {:?}",
            answer.map(|r| r.body)
        );
        let status = j.wait();
        assert_eq!(
            status.code(),
            Some(128 + libc::SIGSYS),
            "{kind}: {}",
            j.stderr()
        );
        let err = j.stderr();
        assert!(
            err.contains(&format!("the {kind} thread made forbidden system call")),
            "{err}"
        );
        assert!(err.contains("SIGSYS"), "{err}");
    }
}

/// A `--mount` inside `/run` is seen by the VMM (it is made after the
/// jail's own `/run`, not hidden under it), and a file tooling placed in
/// the root and chowned to the uid stays writable, as with Firecracker.
#[test]
fn mounts_under_run_and_files_placed_in_the_root_reach_the_vmm() {
    if !can_jail() {
        return;
    }
    let s = Scratch::new();
    let cfg = s.config("wait.json", "probe=wait-cad", 128);
    let note = s.dir.path("note.txt");
    std::fs::write(&note, "HUSK-RUN-MOUNT").unwrap();
    let id = "runmount";
    // Placed by tooling before the start, owned by the VMM's uid.
    let root = s.root(id);
    std::fs::create_dir_all(&root).unwrap();
    let placed = root.join("placed.img");
    std::fs::write(&placed, "before").unwrap();
    std::os::unix::fs::chown(&placed, Some(UID), Some(GID)).unwrap();
    let args = s
        .jail_args(id)
        .cgroup_v1()
        .config(&cfg, "/vm.json")
        .mount_ro(&note, "/run/note.txt")
        .api();
    let mut j = Jailer::spawn(&args);
    j.expect_line("PROBE BOOT");
    let pid = wait_pid_file(&root);
    let inside = |p: &str| std::fs::read_to_string(format!("/proc/{pid}/root{p}"));
    assert_eq!(inside("/run/note.txt").unwrap(), "HUSK-RUN-MOUNT");
    assert_eq!(inside("/placed.img").unwrap(), "before");
    // The VMM's uid may write it (a rootfs tooling linked in): the root
    // is not read-only.
    let mount_ro = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .unwrap()
        .lines()
        .any(|l| {
            l.split(' ').nth(4) == Some("/")
                && l.split(' ').nth(5).is_some_and(|o| o.starts_with("ro"))
        });
    assert!(!mount_ro, "the jail's root is mounted read-only");
    let sock = root.join("run/api.sock");
    wait_socket(&sock);
    let r = client::request(
        &sock,
        "PUT",
        "/actions",
        Some(r#"{"action_type": "SendCtrlAltDel"}"#),
    )
    .unwrap();
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(j.wait().code(), Some(0), "{}", j.stderr());
}
