//! `husk-agent`: PID 1 of a container's microVM.
//!
//! In a VM (no arguments): mount what the kernel left out, mount the
//! container's disk (`husk.root=`, default `/dev/vda`) and switch into
//! it, set up the container's mounts, listen on vsock port
//! [`AGENT_PORT`](crate::agent::protocol::AGENT_PORT), and serve the host
//! until the main process ends; then end the VM.
//!
//! On a host (`--rootfs DIR --listen SOCKET`, for tests): the same, in
//! new mount, PID, UTS and IPC namespaces, with `DIR` as the root and a
//! Unix socket for the host; the agent exits instead of ending a VM. It
//! keeps the host's network namespace there, so it leaves `lo` alone and
//! configures an interface only when `Start` names one.

pub mod archive;
pub mod mounts;
pub mod net;
pub mod pod;
mod procs;
pub mod server;
pub mod setup;
pub mod spawn;
pub mod user;

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Instant;

use crate::agent::protocol::{Timings, AGENT_PORT};
use server::{Agent, Ending};

const USAGE: &str = "usage: husk-agent                              (PID 1 of a husk microVM)
       husk-agent --rootfs DIR --listen SOCKET    (on a host, for tests)";

/// The process entry; returns the exit code.
pub fn main(args: &[String]) -> i32 {
    let t0 = Instant::now();
    match args {
        [] => vm(t0),
        [a, dir, b, sock] if a == "--rootfs" && b == "--listen" => directory(t0, dir, sock),
        _ => {
            eprintln!("{USAGE}");
            2
        }
    }
}

fn boot_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the local timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

fn vm(t0: Instant) -> i32 {
    let boot = boot_us();
    let mut pod = false;
    let mut setup = || -> Result<(), setup::SetupError> {
        setup::early_mounts()?;
        let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
        if let Some(tag) = pod::pod_tag(&cmdline) {
            // A pod: no root disk, the containers' roots are in the share.
            pod = true;
            return pod::setup(&tag);
        }
        setup::mount_root_disk(&setup::boot_args(&cmdline))?;
        setup::container_mounts()
    };
    let error = setup().err().map(|e| {
        eprintln!("husk-agent: error: {e}");
        e.to_string()
    });
    // Programs reach themselves on 127.0.0.1 whether or not the container
    // has a network; without lo they just lose that.
    if let Err(e) = net::loopback_up() {
        eprintln!("husk-agent: warning: {e}");
    }
    let listener = match vsock_listener() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("husk-agent: error: cannot listen on vsock port {AGENT_PORT}: {e}");
            setup::end_vm();
        }
    };
    let timings = Timings {
        boot_us: boot,
        setup_us: t0.elapsed().as_micros() as u64,
    };
    if error.is_none() {
        eprintln!(
            "husk-agent: ready: kernel {} ms, agent {} us",
            timings.boot_us / 1000,
            timings.setup_us
        );
    }
    serve(listener, timings, t0, Ending::EndVm, error, pod)
}

fn serve(
    listener: OwnedFd,
    timings: Timings,
    t0: Instant,
    ending: Ending,
    error: Option<String>,
    pod: bool,
) -> i32 {
    let agent = Agent::new(listener, timings, t0, ending, error).and_then(|mut a| {
        if pod {
            a.pod = Some(pod::Pod::new()?);
        }
        Ok(a)
    });
    match agent {
        Ok(agent) => agent.run(),
        Err(e) => {
            eprintln!("husk-agent: error: {e}");
            if ending == Ending::EndVm {
                setup::end_vm();
            }
            1
        }
    }
}

fn vsock_listener() -> io::Result<OwnedFd> {
    // SAFETY: socket takes no pointers; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_VSOCK,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_vm is plain data; all-zero is a valid start.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = libc::VMADDR_CID_ANY;
    addr.svm_port = AGENT_PORT;
    let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    // SAFETY: the address is a valid sockaddr_vm of `len` bytes.
    let r = unsafe {
        libc::bind(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            (&addr as *const libc::sockaddr_vm).cast(),
            len,
        )
    };
    // SAFETY: listen takes no pointers.
    if r != 0 || unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&fd), 16) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Host mode: new namespaces, then a child that is PID 1 in them.
fn directory(t0: Instant, dir: &str, sock: &str) -> i32 {
    let flags = libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC;
    // SAFETY: unshare takes no pointers.
    if unsafe { libc::unshare(flags) } != 0 {
        eprintln!(
            "husk-agent: cannot create namespaces: {}",
            io::Error::last_os_error()
        );
        return 1;
    }
    // SAFETY: the process is single-threaded here, so the child may go on
    // running Rust code after fork.
    match unsafe { libc::fork() } {
        -1 => {
            eprintln!("husk-agent: fork: {}", io::Error::last_os_error());
            1
        }
        0 => {
            // The namespaces' PID 1 (and with it every process in them)
            // goes when the agent that made them does.
            // SAFETY: prctl with integer arguments only.
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
            directory_child(t0, dir, sock)
        }
        child => {
            let mut status = 0;
            // SAFETY: waitpid writes into the local.
            while unsafe { libc::waitpid(child, &mut status, 0) } < 0 {
                if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                    return 1;
                }
            }
            if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                1
            }
        }
    }
}

fn directory_child(t0: Instant, dir: &str, sock: &str) -> i32 {
    // The socket lives outside the root: bind it before the switch.
    let _ = std::fs::remove_file(sock);
    let listener = match std::os::unix::net::UnixListener::bind(sock) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("husk-agent: cannot listen on {sock}: {e}");
            return 1;
        }
    };
    if let Err(e) = listener.set_nonblocking(true) {
        eprintln!("husk-agent: {e}");
        return 1;
    }
    let error = setup::enter_directory(dir)
        .and_then(|()| setup::container_mounts())
        .err()
        .map(|e| {
            eprintln!("husk-agent: error: {e}");
            e.to_string()
        });
    let timings = Timings {
        boot_us: 0,
        setup_us: t0.elapsed().as_micros() as u64,
    };
    serve(
        OwnedFd::from(listener),
        timings,
        t0,
        Ending::Exit,
        error,
        false,
    )
}
