//! A real Linux guest under QEMU's software emulation (TCG), for tests of
//! the guest side: the guest kernel, the initramfs, the agent.
//!
//! A stock kernel cannot run under KVM on the PVM development and CI hosts
//! (docs/guest-kernel.md), but it runs under QEMU's `microvm` machine with
//! TCG. This module starts that machine the way design.md describes:
//! `vhost-device-vsock` as the vsock backend (it speaks husk's hybrid vsock
//! protocol on `vsock_uds()`), guest memory in a shared memfd for
//! vhost-user, `acpi=off` so QEMU names the virtio-mmio devices on the
//! kernel command line, and `-no-reboot` so QEMU exits when the guest
//! reboots (`reboot=t` on the command line: microvm has no i8042).
//!
//! Standalone (std and the crate's own dependencies only), so any test can
//! include it:
//!
//! ```ignore
//! #[path = "common/qemu.rs"]
//! mod qemu;
//!
//! let kernel = match qemu::tools_available().and_then(|()| qemu::guest_kernel()) {
//!     Ok(kernel) => kernel,
//!     Err(reason) => return qemu::skip(&reason),
//! };
//! let mut initramfs = qemu::Initramfs::new();
//! initramfs.dir("bin").file("init", b"#!/bin/sh\n...", 0o755);
//! ...
//! ```

#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Set (to anything but `0`) by scripts/test.sh: then a missing tool or
/// kernel fails the test instead of skipping it, so CI cannot pass a QEMU
/// test that never ran.
pub const REQUIRE_ENV: &str = "HUSK_REQUIRE_QEMU";

/// What to boot.
pub struct QemuSpec<'a> {
    /// An uncompressed `vmlinux` with a PVH entry note.
    pub kernel: &'a Path,
    /// A (gzip'd) initramfs.
    pub initrd: &'a Path,
    /// The kernel command line; QEMU appends the `virtio_mmio.device=`
    /// entries itself. Use `reboot=t` (microvm has no i8042).
    pub append: &'a str,
    /// Raw images as virtio-blk devices, in order: `vda`, `vdb`, ...
    pub drives: Vec<PathBuf>,
    /// A vhost-user vsock device with this guest CID (≥ 3).
    pub vsock_cid: Option<u32>,
    /// A virtio-rng device fed by the host's /dev/urandom.
    pub rng: bool,
    /// Guest memory.
    pub mem_mib: u32,
}

impl<'a> QemuSpec<'a> {
    /// 256 MiB, no drives, no vsock, no rng.
    pub fn new(kernel: &'a Path, initrd: &'a Path, append: &'a str) -> QemuSpec<'a> {
        QemuSpec {
            kernel,
            initrd,
            append,
            drives: Vec::new(),
            vsock_cid: None,
            rng: false,
            mem_mib: 256,
        }
    }
}

/// What the guest printed on its serial console, filled by a reader thread.
#[derive(Default)]
struct Serial {
    /// Complete lines (without `\r\n`), each with when it arrived, counted
    /// from QEMU's start.
    lines: Vec<(Duration, String)>,
    /// The line being printed.
    partial: String,
    /// QEMU closed its stdout (it exited).
    closed: bool,
}

type Shared<T> = Arc<(Mutex<T>, Condvar)>;

/// A running QEMU guest and its vsock backend; both are killed, and the
/// scratch directory removed, on drop.
pub struct QemuGuest {
    qemu: Child,
    stdin: Option<ChildStdin>,
    vhost: Option<Child>,
    dir: PathBuf,
    vsock_uds: PathBuf,
    started: Instant,
    serial: Shared<Serial>,
    stderr: Arc<Mutex<String>>,
    /// Lines before this index were already returned by `expect_line`.
    cursor: usize,
    exit: Option<ExitStatus>,
}

impl QemuGuest {
    /// Starts `vhost-device-vsock` (when the spec has a vsock), waits for
    /// its socket, then starts `qemu-system-x86_64`.
    pub fn start(spec: QemuSpec) -> Result<QemuGuest, String> {
        let qemu_bin = find_tool("qemu-system-x86_64")
            .ok_or("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)")?;
        let dir = scratch_dir()?;
        let vhost_sock = dir.join("vhost.sock");
        let vsock_uds = dir.join("vm.vsock");
        // From here on, a failure must still clean up: a guard owns what
        // exists so far until the QemuGuest does.
        let mut guard = StartGuard {
            dir: Some(dir.clone()),
            vhost: None,
        };

        if let Some(cid) = spec.vsock_cid {
            let bin = find_tool("vhost-device-vsock")
                .ok_or("vhost-device-vsock is not installed (cargo install vhost-device-vsock)")?;
            let log = File::create(dir.join("vhost.log")).map_err(|e| format!("vhost.log: {e}"))?;
            let log2 = log.try_clone().map_err(|e| format!("vhost.log: {e}"))?;
            let child = Command::new(bin)
                .arg("--vm")
                .arg(format!(
                    "guest-cid={cid},socket={},uds-path={}",
                    vhost_sock.display(),
                    vsock_uds.display()
                ))
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log2)
                .spawn()
                .map_err(|e| format!("cannot start vhost-device-vsock: {e}"))?;
            let vhost = guard.vhost.insert(child);
            let deadline = Instant::now() + Duration::from_secs(10);
            while !vhost_sock.exists() {
                if let Ok(Some(status)) = vhost.try_wait() {
                    let log = std::fs::read_to_string(dir.join("vhost.log")).unwrap_or_default();
                    return Err(format!("vhost-device-vsock exited ({status}): {log}"));
                }
                if Instant::now() > deadline {
                    return Err("vhost-device-vsock did not create its socket in 10 s".into());
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }

        let mem = spec.mem_mib;
        let mut cmd = Command::new(qemu_bin);
        cmd.args(["-machine", "microvm,acpi=off,memory-backend=mem"])
            .args(["-accel", "tcg"])
            .args(["-m", &format!("{mem}M")])
            .args([
                "-object",
                &format!("memory-backend-memfd,id=mem,size={mem}M,share=on"),
            ])
            .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
            .args(["-serial", "stdio"])
            .arg("-kernel")
            .arg(spec.kernel)
            .arg("-initrd")
            .arg(spec.initrd)
            .args(["-append", spec.append]);
        if spec.vsock_cid.is_some() {
            cmd.arg("-chardev")
                .arg(format!("socket,id=vsock0,path={}", vhost_sock.display()))
                .args(["-device", "vhost-user-vsock-device,chardev=vsock0"]);
        }
        for (i, drive) in spec.drives.iter().enumerate() {
            // Commas in a -drive value are doubled.
            let file = drive.to_str().ok_or("drive path is not UTF-8")?;
            cmd.arg("-drive")
                .arg(format!(
                    "id=drive{i},file={},format=raw,if=none",
                    file.replace(',', ",,")
                ))
                .arg("-device")
                .arg(format!("virtio-blk-device,drive=drive{i}"));
        }
        if spec.rng {
            cmd.args(["-object", "rng-random,id=rng0,filename=/dev/urandom"])
                .args(["-device", "virtio-rng-device,rng=rng0"]);
        }
        let started = Instant::now();
        let mut qemu = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start qemu-system-x86_64: {e}"))?;

        let serial: Shared<Serial> = Arc::default();
        let mut out = qemu.stdout.take().expect("piped stdout");
        let s = Arc::clone(&serial);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                let n = match out.read(&mut buf) {
                    Ok(0) | Err(_) => 0,
                    Ok(n) => n,
                };
                let (lock, cvar) = &*s;
                let mut serial = lock.lock().unwrap();
                if n == 0 {
                    serial.closed = true;
                    cvar.notify_all();
                    return;
                }
                let at = started.elapsed();
                for &b in &buf[..n] {
                    match b {
                        b'\n' => {
                            let line = std::mem::take(&mut serial.partial);
                            serial.lines.push((at, line));
                        }
                        b'\r' => {}
                        _ => serial.partial.push(b as char),
                    }
                }
                cvar.notify_all();
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err = qemu.stderr.take().expect("piped stderr");
        let e = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut buf = [0u8; 1024];
            while let Ok(n @ 1..) = err.read(&mut buf) {
                e.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });

        let stdin = qemu.stdin.take();
        Ok(QemuGuest {
            qemu,
            stdin,
            vhost: guard.vhost.take(),
            dir: guard.dir.take().expect("scratch dir"),
            vsock_uds,
            started,
            serial,
            stderr,
            cursor: 0,
            exit: None,
        })
    }

    /// The hybrid vsock socket: connect, send `CONNECT <port>\n`, read
    /// `OK <port>\n`. Before the guest listens, a connection is reset or
    /// answered with nothing: retry.
    pub fn vsock_uds(&self) -> &Path {
        &self.vsock_uds
    }

    /// Connects to guest vsock `port` through `vsock_uds()`: sends
    /// `CONNECT <port>\n` and reads the `OK <host port>\n` answer, retrying
    /// until `timeout` while the guest is not listening yet. The stream
    /// that comes back carries only the guest's bytes.
    pub fn vsock_connect(&mut self, port: u32, timeout: Duration) -> Result<UnixStream, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let err = match hybrid_connect(&self.vsock_uds, port) {
                Ok(stream) => return Ok(stream),
                Err(e) => e,
            };
            if Instant::now() >= deadline || !matches!(self.qemu.try_wait(), Ok(None)) {
                return Err(format!(
                    "vsock port {port} via {}: {err} (after {:?});{}",
                    self.vsock_uds.display(),
                    self.started.elapsed(),
                    self.transcript()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The scratch directory (removed on drop), for files a test makes.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Time since QEMU was started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The next console line containing `contains`, after the line the
    /// previous call returned.
    pub fn expect_line(&mut self, contains: &str, timeout: Duration) -> Result<String, String> {
        self.expect_line_timed(contains, timeout)
            .map(|(line, _)| line)
    }

    /// Like `expect_line`, with when the line arrived, counted from QEMU's
    /// start.
    pub fn expect_line_timed(
        &mut self,
        contains: &str,
        timeout: Duration,
    ) -> Result<(String, Duration), String> {
        let deadline = Instant::now() + timeout;
        let (lock, cvar) = &*self.serial;
        let mut serial = lock.lock().unwrap();
        loop {
            if let Some(i) = serial.lines[self.cursor..]
                .iter()
                .position(|(_, l)| l.contains(contains))
            {
                let i = self.cursor + i;
                self.cursor = i + 1;
                let (at, line) = &serial.lines[i];
                return Ok((line.clone(), *at));
            }
            let now = Instant::now();
            if serial.closed || now >= deadline {
                let why = if serial.closed {
                    "QEMU exited"
                } else {
                    "timed out"
                };
                drop(serial);
                return Err(format!(
                    "no console line containing {contains:?} ({why} after {:?});{}",
                    self.started.elapsed(),
                    self.transcript()
                ));
            }
            serial = cvar.wait_timeout(serial, deadline - now).unwrap().0;
        }
    }

    /// Everything the console printed so far.
    pub fn serial_so_far(&self) -> String {
        let serial = self.serial.0.lock().unwrap();
        let mut s = String::new();
        for (_, line) in &serial.lines {
            s.push_str(line);
            s.push('\n');
        }
        s.push_str(&serial.partial);
        s
    }

    /// What QEMU printed on stderr so far.
    pub fn qemu_stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Types into the serial console.
    pub fn write_serial(&mut self, bytes: &[u8]) -> Result<(), String> {
        let stdin = self.stdin.as_mut().ok_or("stdin is closed")?;
        stdin
            .write_all(bytes)
            .and_then(|()| stdin.flush())
            .map_err(|e| format!("serial input: {e}"))
    }

    /// Waits for QEMU to exit: with `-no-reboot` it does when the guest
    /// reboots or powers off. The console is complete after this returns.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus, String> {
        if let Some(status) = self.exit {
            return Ok(status);
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self.qemu.try_wait() {
                Ok(Some(status)) => {
                    self.exit = Some(status);
                    // Let the reader drain what QEMU wrote before exiting.
                    let (lock, cvar) = &*self.serial;
                    let serial = lock.lock().unwrap();
                    let _ = cvar
                        .wait_timeout_while(serial, Duration::from_secs(2), |s| !s.closed)
                        .unwrap();
                    return Ok(status);
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Ok(None) => {
                    return Err(format!(
                        "QEMU still running after {timeout:?};{}",
                        self.transcript()
                    ))
                }
                Err(e) => return Err(format!("waiting for QEMU: {e}")),
            }
        }
    }

    /// The console and QEMU's stderr, for error messages.
    fn transcript(&self) -> String {
        format!(
            "\n--- console ---\n{}\n--- qemu stderr ---\n{}",
            self.serial_so_far(),
            self.qemu_stderr()
        )
    }
}

impl Drop for QemuGuest {
    fn drop(&mut self) {
        self.stdin.take();
        if self.exit.is_none() {
            let _ = self.qemu.kill();
            let _ = self.qemu.wait();
        }
        if let Some(mut vhost) = self.vhost.take() {
            let _ = vhost.kill();
            let _ = vhost.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Cleans up after a `QemuGuest::start` that failed half-way.
struct StartGuard {
    dir: Option<PathBuf>,
    vhost: Option<Child>,
}

impl Drop for StartGuard {
    fn drop(&mut self) {
        if let Some(mut vhost) = self.vhost.take() {
            let _ = vhost.kill();
            let _ = vhost.wait();
        }
        if let Some(dir) = self.dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// One attempt at the hybrid vsock handshake.
fn hybrid_connect(uds: &Path, port: u32) -> Result<UnixStream, String> {
    let mut stream = UnixStream::connect(uds).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(|e| format!("CONNECT: {e}"))?;
    // Byte by byte: whatever follows the answer is the guest's.
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(0) => {
                return Err(format!(
                    "closed after {:?}",
                    String::from_utf8_lossy(&answer)
                ))
            }
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) if answer.len() < 64 => answer.push(byte[0]),
            Ok(_) => return Err("answer too long".into()),
            Err(e) => return Err(format!("reading the answer: {e}")),
        }
    }
    if !answer.starts_with(b"OK ") {
        return Err(format!("answer {:?}", String::from_utf8_lossy(&answer)));
    }
    stream.set_read_timeout(None).map_err(|e| e.to_string())?;
    Ok(stream)
}

fn scratch_dir() -> Result<PathBuf, String> {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "husk-qemu-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(dir)
}

/// A program on PATH, or (for what `cargo install` put there)
/// in `$CARGO_HOME/bin` or `~/.cargo/bin`: the daemon's own lookup.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    husk::daemon::backend::find_tool(name, None)
}

/// `Err(reason)` when `qemu-system-x86_64` or `vhost-device-vsock` is
/// missing (scripts/setup.sh test installs both).
pub fn tools_available() -> Result<(), String> {
    if find_tool("qemu-system-x86_64").is_none() {
        return Err("qemu-system-x86_64 is not installed (scripts/setup.sh test)".into());
    }
    if find_tool("vhost-device-vsock").is_none() {
        return Err("vhost-device-vsock is not installed (scripts/setup.sh test)".into());
    }
    Ok(())
}

/// The guest kernel: `$HUSK_GUEST_KERNEL`, else the default kernel that
/// resources/guest-kernel/build.sh keeps (`$HUSK_KERNEL_CACHE/vmlinux`,
/// else `$HUSK_STATE_DIR/kernels/vmlinux`, else
/// `/var/lib/husk/kernels/vmlinux`).
pub fn guest_kernel() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("HUSK_GUEST_KERNEL").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!(
                "HUSK_GUEST_KERNEL={} does not exist",
                path.display()
            ))
        };
    }
    let cache = match std::env::var_os("HUSK_KERNEL_CACHE").filter(|p| !p.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => std::env::var_os("HUSK_STATE_DIR")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/lib/husk"))
            .join("kernels"),
    };
    let path = cache.join("vmlinux");
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "no guest kernel: HUSK_GUEST_KERNEL is not set and {} does not exist \
             (build one with resources/guest-kernel/build.sh)",
            path.display()
        ))
    }
}

/// Prints `skipped: <reason>` past the test harness's capture, or panics
/// with the reason when `HUSK_REQUIRE_QEMU` is set (scripts/test.sh sets
/// it, so CI never skips these tests).
pub fn skip(reason: &str) {
    if std::env::var_os(REQUIRE_ENV).is_some_and(|v| !v.is_empty() && v != "0") {
        panic!("{REQUIRE_ENV} is set, but: {reason}");
    }
    let _ = writeln!(std::io::stderr(), "skipped: {reason}");
}

/// `Err(reason)` unless `path` is a statically linked x86-64 ELF program
/// (no PT_INTERP), which is what an initramfs without a libc needs.
pub fn check_static_elf(path: &Path) -> Result<(), String> {
    let elf = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    };
    if !elf.starts_with(b"\x7fELF\x02\x01") || u16_at(0x12) != Some(62) {
        return Err(format!("{} is not an x86-64 ELF file", path.display()));
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return Err(format!("{}: truncated ELF header", path.display()));
    };
    for i in 0..phnum as usize {
        let at = phoff as usize + i * phentsize as usize;
        match u32_at(at) {
            Some(3) => {
                return Err(format!(
                    "{} is dynamically linked (install busybox-static)",
                    path.display()
                ))
            }
            Some(_) => {}
            None => return Err(format!("{}: truncated program headers", path.display())),
        }
    }
    Ok(())
}

/// A gzip'd cpio (newc) archive, the format of a Linux initramfs, built in
/// memory: every entry is owned by root, whoever runs the test.
pub struct Initramfs {
    cpio: Vec<u8>,
    ino: u32,
}

impl Default for Initramfs {
    fn default() -> Self {
        Self::new()
    }
}

impl Initramfs {
    pub fn new() -> Initramfs {
        Initramfs {
            cpio: Vec::new(),
            ino: 1,
        }
    }

    /// A directory (parents are not implied: add them first).
    pub fn dir(&mut self, path: &str) -> &mut Self {
        self.entry(path, 0o040755, &[], 0, 0)
    }

    /// A regular file with `mode`'s permission bits.
    pub fn file(&mut self, path: &str, data: &[u8], mode: u32) -> &mut Self {
        self.entry(path, 0o100000 | (mode & 0o7777), data, 0, 0)
    }

    /// A symbolic link to `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.entry(path, 0o120777, target.as_bytes(), 0, 0)
    }

    /// A character device node, such as `dev/console` (5, 1).
    pub fn char_dev(&mut self, path: &str, mode: u32, major: u32, minor: u32) -> &mut Self {
        self.entry(path, 0o020000 | (mode & 0o7777), &[], major, minor)
    }

    fn entry(&mut self, path: &str, mode: u32, data: &[u8], rmajor: u32, rminor: u32) -> &mut Self {
        let name = path.trim_start_matches('/');
        let fields = [
            self.ino,
            mode,
            0, // uid
            0, // gid
            if mode & 0o170000 == 0o040000 { 2 } else { 1 },
            0, // mtime
            data.len() as u32,
            0, // dev major
            0, // dev minor
            rmajor,
            rminor,
            name.len() as u32 + 1,
            0, // check
        ];
        self.ino += 1;
        self.cpio.extend_from_slice(b"070701");
        for f in fields {
            self.cpio.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.cpio.extend_from_slice(name.as_bytes());
        self.cpio.push(0);
        self.pad();
        self.cpio.extend_from_slice(data);
        self.pad();
        self
    }

    fn pad(&mut self) {
        while !self.cpio.len().is_multiple_of(4) {
            self.cpio.push(0);
        }
    }

    /// Writes the archive, with its trailer, gzip'd to `out`.
    pub fn write_gz(&self, out: &Path) -> Result<(), String> {
        let mut archive = Initramfs {
            cpio: self.cpio.clone(),
            ino: self.ino,
        };
        archive.entry("TRAILER!!!", 0, &[], 0, 0);
        let file = File::create(out).map_err(|e| format!("{}: {e}", out.display()))?;
        let mut gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
        gz.write_all(&archive.cpio)
            .and_then(|()| gz.finish().map(drop))
            .map_err(|e| format!("{}: {e}", out.display()))
    }
}
