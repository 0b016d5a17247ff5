//! A hostile or careless caller cannot crash, hang or bloat `husk vmm`:
//! open-file exhaustion, FIFOs where files are expected, oversized or
//! endless config files, and connections that never finish or never end.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{kvm_available, TempDir, Vmm};
use serde_json::json;

fn mkfifo(p: &Path) {
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

fn assert_still_serving(vmm: &Vmm) {
    let r = vmm.get("/");
    assert_eq!(r.status, 200, "{}", r.body);
}

/// Reads until the server closes the connection; returns what it sent.
/// Panics if it is still open after `within`.
fn read_until_closed(s: &mut UnixStream, within: Duration) -> String {
    s.set_read_timeout(Some(within)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return String::from_utf8_lossy(&got).into_owned(),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return String::from_utf8_lossy(&got).into_owned()
            }
            Err(e) => panic!(
                "connection still open after {within:?} ({e}); got {:?}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
}

/// Opens 200 connections, half of them partway through a request, and
/// checks that the VMM and its guest live through it and that the API
/// answers both while they are held and after.
fn hold_many_connections(vmm: &mut Vmm) {
    let mut held = Vec::new();
    for i in 0..200 {
        match UnixStream::connect(&vmm.sock) {
            Ok(mut s) => {
                if i % 2 == 0 {
                    let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n");
                }
                held.push(s);
            }
            // The backlog may be full while the VMM makes room.
            Err(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
    assert!(vmm.is_running(), "the VMM died under fd exhaustion");
    // The quietest connections make room: the API answers even now.
    assert_still_serving(vmm);
    drop(held);
    assert_still_serving(vmm);
    let m = vmm.get("/metrics").json();
    assert!(
        m["api_server"]["evicted_connections"].as_u64().unwrap() > 0,
        "{m}"
    );
    // And the guest was running all along.
    assert_eq!(vmm.action("SendCtrlAltDel").status, 204);
    assert_eq!(vmm.expect_line("PROBE wait-cad"), "PROBE wait-cad OK");
    assert_eq!(vmm.wait().code(), Some(0));
}

fn running_guest(nofile: Option<u64>) -> Option<Vmm> {
    if !kvm_available() {
        return None;
    }
    let mut vmm = Vmm::with_api_args(&[], nofile);
    vmm.configure("probe=cmdline,wait-cad", 1, 128);
    vmm.start();
    vmm.expect_line("PROBE cmdline");
    Some(vmm)
}

#[test]
fn a_low_file_limit_neither_kills_the_guest_nor_the_api() {
    // Under `ulimit -n 64`, 80 clients holding connections used to crash
    // the VMM (a timer-less runtime panicking in accept's back-off).
    if let Some(mut vmm) = running_guest(Some(64)) {
        hold_many_connections(&mut vmm);
    }
}

#[test]
fn accept_failing_with_emfile_closes_the_quietest_connection() {
    let Some(mut vmm) = running_guest(None) else {
        return;
    };
    // Lower the limit under the running VMM, below what its connection
    // cap was sized for, so that accept itself fails with EMFILE.
    let lim = libc::rlimit {
        rlim_cur: 40,
        rlim_max: 40,
    };
    // SAFETY: prlimit reads `lim` and writes nothing (old limit: null).
    let r = unsafe {
        libc::prlimit(
            vmm.pid() as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &lim,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
    hold_many_connections(&mut vmm);
}

#[test]
fn fifos_never_block_the_vmm_thread() {
    if !kvm_available() {
        return;
    }
    let mut vmm = Vmm::with_api();
    // Kernels and initrds must be regular files: refused at once.
    let kfifo = vmm.dir.path("kernel.fifo");
    mkfifo(&kfifo);
    let msg = Vmm::fault(&vmm.put("/boot-source", json!({"kernel_image_path": kfifo})));
    assert!(msg.contains("not a regular file"), "{msg}");
    let msg = Vmm::fault(&vmm.put(
        "/boot-source",
        json!({"kernel_image_path": vmm.kernel, "initrd_path": kfifo}),
    ));
    assert!(
        msg.contains("initrd") && msg.contains("not a regular file"),
        "{msg}"
    );
    assert_still_serving(&vmm);

    // Log, metrics and serial output work as FIFOs with no reader yet.
    let (log, metrics, serial) = (
        vmm.dir.path("log.fifo"),
        vmm.dir.path("metrics.fifo"),
        vmm.dir.path("serial.fifo"),
    );
    for p in [&log, &metrics, &serial] {
        mkfifo(p);
    }
    vmm.put_ok("/logger", json!({"log_path": log, "level": "Info"}));
    vmm.put_ok("/metrics", json!({"metrics_path": metrics}));
    vmm.put_ok("/serial", json!({"serial_out_path": serial}));
    assert_still_serving(&vmm);
    // Readers that come after the writer opened find whole lines. (They
    // must open before the VMM exits: a pipe's contents go with its last
    // open end.)
    let reader = |p: &Path| {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(p)
            .unwrap()
    };
    let (mut log_r, mut metrics_r) = (reader(&log), reader(&metrics));
    vmm.configure("probe=cmdline", 1, 128);
    vmm.start();
    let mut serial_r = reader(&serial);
    assert_eq!(vmm.wait().code(), Some(0));
    let drain = |f: &mut std::fs::File| {
        let mut text = Vec::new();
        let _ = f.read_to_end(&mut text);
        String::from_utf8(text).unwrap()
    };
    let console = drain(&mut serial_r);
    assert!(console.contains("PROBE cmdline OK"), "{console}");
    let logged = drain(&mut log_r);
    assert!(logged.contains("microVM started"), "{logged}");
    let flushed = drain(&mut metrics_r);
    let last: serde_json::Value = serde_json::from_str(flushed.lines().last().unwrap()).unwrap();
    assert_eq!(last["vmm"]["instance_starts"], 1);
}

#[test]
fn config_files_must_be_small_regular_files() {
    let dir = TempDir::new();
    let fifo = dir.path("config.fifo");
    mkfifo(&fifo);
    let big = dir.path("big.json");
    std::fs::write(&big, vec![b' '; 2 << 20]).unwrap();
    for (path, want) in [
        (Path::new("/dev/zero"), "not a regular file"),
        (fifo.as_path(), "not a regular file"),
        (big.as_path(), "larger than 1048576 bytes"),
    ] {
        // Used to grow without bound (/dev/zero) or block (a FIFO).
        let out = Command::new(common::husk_bin())
            .args(["vmm", "--no-api", "--config-file"])
            .arg(path)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{}", path.display());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{}: {err}", path.display());
    }
}

#[test]
fn long_paths_are_shortened_in_messages() {
    if !kvm_available() {
        return;
    }
    let vmm = Vmm::with_api();
    let long = format!("/nonexistent/{}/vmlinux", "x".repeat(4000));
    let msg = Vmm::fault(&vmm.put("/boot-source", json!({"kernel_image_path": long})));
    assert!(msg.len() < 400, "{} bytes echoed", msg.len());
    assert!(
        msg.contains("/nonexistent/xxx") && msg.contains("/vmlinux"),
        "{msg}"
    );
}

#[test]
fn a_triple_fault_is_explained_on_stderr() {
    if !kvm_available() {
        return;
    }
    let dir = TempDir::new();
    let kernel = common::probe_kernel(&dir);
    let cfg = dir.path("vm.json");
    let body =
        json!({"boot-source": {"kernel_image_path": kernel, "boot_args": "probe=triple-fault"}});
    std::fs::write(&cfg, body.to_string()).unwrap();
    let out = Command::new(common::husk_bin())
        .args(["vmm", "--no-api", "--config-file"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("triple-faulted") && err.contains("exit status 3"),
        "{err}"
    );
}

/// A VMM with short limits, so the tests wait little.
fn short_limits(max_connections: &str) -> Vmm {
    Vmm::with_api_args(
        &[
            "--api-header-timeout-ms",
            "300",
            "--api-body-timeout-ms",
            "300",
            "--api-idle-timeout-ms",
            "500",
            "--api-max-connections",
            max_connections,
        ],
        None,
    )
}

const GENEROUS: Duration = Duration::from_secs(8);

#[test]
fn slow_and_idle_connections_are_closed() {
    if !kvm_available() {
        return;
    }
    let vmm = short_limits("64");
    // A request head that never ends.
    let mut partial = UnixStream::connect(&vmm.sock).unwrap();
    partial.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
    let got = read_until_closed(&mut partial, GENEROUS);
    assert!(got.is_empty(), "{got}");

    // A body that never arrives gets a 408 and the connection closes.
    let mut s = UnixStream::connect(&vmm.sock).unwrap();
    s.write_all(b"PUT /machine-config HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"vcpu")
        .unwrap();
    let got = read_until_closed(&mut s, GENEROUS);
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    assert!(got.contains("did not arrive within 300 ms"), "{got}");

    // An endless chunked body: trickled in, it never completes in time.
    let mut s = UnixStream::connect(&vmm.sock).unwrap();
    s.write_all(b"PUT /machine-config HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    let mut writer = s.try_clone().unwrap();
    let trickle = std::thread::spawn(move || {
        let start = Instant::now();
        while start.elapsed() < GENEROUS {
            if writer.write_all(b"1\r\n \r\n").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let got = read_until_closed(&mut s, GENEROUS);
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    trickle.join().unwrap();

    // An idle keep-alive connection is closed after its answer.
    let mut s = UnixStream::connect(&vmm.sock).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let got = read_until_closed(&mut s, GENEROUS);
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");

    let m = vmm.get("/metrics").json();
    assert!(
        m["api_server"]["timed_out_connections"].as_u64().unwrap() >= 4,
        "{m}"
    );
    assert_still_serving(&vmm);
}

#[test]
fn the_connection_cap_evicts_the_quietest_and_keeps_answering() {
    if !kvm_available() {
        return;
    }
    let vmm = short_limits("8");
    let mut held: Vec<UnixStream> = (0..40)
        .map(|_| UnixStream::connect(&vmm.sock).unwrap())
        .collect();
    // Every new client is served, however many are held open.
    assert_still_serving(&vmm);
    let m = vmm.get("/metrics").json();
    assert!(
        m["api_server"]["evicted_connections"].as_u64().unwrap() >= 32,
        "{m}"
    );
    // The oldest ones were closed by the VMM.
    let got = read_until_closed(&mut held[0], GENEROUS);
    assert!(got.is_empty(), "{got}");
    held.clear();
    assert_still_serving(&vmm);
}
