//! `husk agent initramfs`: the archive the real binary writes, read back
//! with the system's `gunzip` and `cpio`.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{skip, TempDir};

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

fn husk(args: &[&str], state: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_husk"))
        .args(args)
        .arg("--state-dir")
        .arg(state)
        .env_remove("HUSK_AGENT")
        .output()
        .unwrap()
}

/// Runs `cpio` with `args` on the gunzipped `archive`; returns stdout and
/// stderr (where `cpio -t` also reports its block count).
fn cpio(archive: &Path, args: &str) -> (Vec<u8>, String) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("gunzip -c \"$1\" | cpio --quiet {args}"))
        .arg("sh")
        .arg(archive)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "cpio {args}: {stderr}");
    (out.stdout, stderr)
}

#[test]
fn husk_agent_initramfs_writes_a_cpio_the_system_reads() {
    if !have("cpio") {
        skip("cpio is not installed");
        return;
    }
    let dir = TempDir::new();
    let agent = dir.path("fake-agent");
    // 1 MiB + 3: an odd size, so the entry needs padding.
    let bytes: Vec<u8> = (0..(1 << 20) + 3u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&agent, &bytes).unwrap();
    let out = dir.path("initrd.cpio.gz");
    let state = dir.path("state");

    let run = husk(
        &[
            "agent",
            "initramfs",
            "-o",
            out.to_str().unwrap(),
            "--agent",
            agent.to_str().unwrap(),
        ],
        &state,
    );
    assert!(
        run.status.success(),
        "husk agent initramfs failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        run.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );

    // The listing.
    let (list, _) = cpio(&out, "-t");
    let names: Vec<String> = String::from_utf8(list)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(
        names,
        ["dev", "dev/console", "newroot", "proc", "sys", "init"]
    );

    // Modes, owners and the console's device numbers.
    let (long, _) = cpio(&out, "-tv --numeric-uid-gid");
    let long = String::from_utf8(long).unwrap();
    let line = |name: &str| -> Vec<String> {
        long.lines()
            .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
            .find(|f| f.last().map(String::as_str) == Some(name))
            .unwrap_or_else(|| panic!("no {name} in\n{long}"))
    };
    let init = line("init");
    assert_eq!(init[0], "-rwxr-xr-x", "{long}");
    assert_eq!((init[2].as_str(), init[3].as_str()), ("0", "0"), "{long}");
    assert_eq!(init[4], bytes.len().to_string(), "{long}");
    let console = line("dev/console");
    assert_eq!(console[0], "crw-------", "{long}");
    // GNU cpio prints a device's size column as "major, minor".
    assert_eq!(
        (console[4].as_str(), console[5].as_str()),
        ("5,", "1"),
        "{long}"
    );
    for d in ["dev", "newroot", "proc", "sys"] {
        assert_eq!(line(d)[0], "drwxr-xr-x", "{long}");
    }

    // The agent comes back byte for byte.
    let (init, _) = cpio(&out, "-i --to-stdout init");
    assert!(
        init == bytes,
        "init differs from the agent ({} bytes)",
        init.len()
    );

    // The cache holds the same archive under the agent's digest.
    let cached: Vec<_> = std::fs::read_dir(state.join("initramfs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(cached.len(), 1, "{cached:?}");
    assert!(cached[0].to_str().unwrap().ends_with(".cpio.gz"));
    assert_eq!(
        std::fs::read(&cached[0]).unwrap(),
        std::fs::read(&out).unwrap()
    );
}

#[test]
fn husk_agent_initramfs_reports_a_missing_agent() {
    let dir = TempDir::new();
    let missing = dir.path("no-such-agent");
    let run = husk(
        &[
            "agent",
            "initramfs",
            "-o",
            dir.path("out").to_str().unwrap(),
            "--agent",
            missing.to_str().unwrap(),
        ],
        &dir.path("state"),
    );
    assert_eq!(run.status.code(), Some(1));
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        err.starts_with("husk agent initramfs: cannot read the agent binary ")
            && err.contains("no-such-agent"),
        "{err}"
    );
    assert!(!dir.path("out").exists());
}
