//! What each thread kind may call, and why. Every entry is a system call
//! the thread was seen making (strace over the whole VMM test suite) or
//! one a path it runs can make (a panic's abort, glibc's allocator); the
//! reasons here are the ones `docs/security.md` gives.
//!
//! A call listed with conditions is allowed only when one of its
//! condition sets holds; every condition of a set compares one argument
//! (its low 32 bits, where flags, commands and ioctl numbers all fit; a
//! pointer, whole).

use super::ioctls as io;
use super::ThreadKind;

/// One comparison of a system call argument.
#[derive(Clone, Copy, Debug)]
pub enum Cond {
    /// Argument `.0`'s low 32 bits equal `.1`.
    Eq(u8, u64),
    /// Argument `.0`, all 64 bits, equals `.1` (a pointer that must be
    /// NULL).
    Eq64(u8, u64),
    /// Argument `.0` has none of the bits in `.1`.
    Clear(u8, u64),
}

/// A system call a thread may make.
#[derive(Clone, Debug)]
pub struct Allowed {
    pub name: &'static str,
    pub nr: i64,
    pub why: &'static str,
    /// Empty: any arguments. Otherwise allowed when any set holds.
    pub when: Vec<Vec<Cond>>,
}

#[derive(Default)]
struct List(Vec<Allowed>);

impl List {
    fn any(&mut self, name: &'static str, nr: i64, why: &'static str) -> &mut Self {
        self.0.push(Allowed {
            name,
            nr,
            why,
            when: vec![],
        });
        self
    }

    /// Allowed when argument `arg` is one of `values`.
    fn one_of(
        &mut self,
        name: &'static str,
        nr: i64,
        arg: u8,
        values: &[u64],
        why: &'static str,
    ) -> &mut Self {
        self.when(
            name,
            nr,
            values.iter().map(|v| vec![Cond::Eq(arg, *v)]).collect(),
            why,
        )
    }

    fn when(
        &mut self,
        name: &'static str,
        nr: i64,
        when: Vec<Vec<Cond>>,
        why: &'static str,
    ) -> &mut Self {
        self.0.push(Allowed {
            name,
            nr,
            why,
            when,
        });
        self
    }
}

const MAP_ANON_PRIVATE: u64 = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
const FUTEX_PRIVATE: u64 = libc::FUTEX_PRIVATE_FLAG as u64;
const FUTEX_REALTIME: u64 = libc::FUTEX_CLOCK_REALTIME as u64;

/// What every thread kind needs from the Rust runtime and glibc.
fn runtime(l: &mut List) {
    use libc::*;
    let futex_ops: Vec<u64> = [FUTEX_WAIT, FUTEX_WAKE, FUTEX_WAIT_BITSET, FUTEX_WAKE_BITSET]
        .into_iter()
        .flat_map(|op| {
            let op = op as u64;
            [
                op,
                op | FUTEX_PRIVATE,
                op | FUTEX_REALTIME,
                op | FUTEX_PRIVATE | FUTEX_REALTIME,
            ]
        })
        .collect();
    l.one_of(
        "futex",
        SYS_futex,
        1,
        &futex_ops,
        "locks, condition variables and channels between threads",
    )
    .any(
        "sched_yield",
        SYS_sched_yield,
        "std's channels spin with it",
    )
    .any("brk", SYS_brk, "the allocator grows the main heap")
    .when(
        "mmap",
        SYS_mmap,
        [0, MAP_NORESERVE, MAP_STACK]
            .into_iter()
            .map(|extra| {
                vec![
                    Cond::Eq(3, MAP_ANON_PRIVATE | extra as u64),
                    Cond::Clear(2, PROT_EXEC as u64),
                ]
            })
            .collect(),
        "the allocator's large blocks and arenas: private, anonymous, never executable",
    )
    .when(
        "mprotect",
        SYS_mprotect,
        vec![vec![Cond::Clear(2, PROT_EXEC as u64)]],
        "the allocator grows a thread's arena; never to make memory executable",
    )
    .any("munmap", SYS_munmap, "the allocator frees large blocks")
    .any(
        "mremap",
        SYS_mremap,
        "the allocator grows large blocks in place",
    )
    .one_of(
        "madvise",
        SYS_madvise,
        2,
        &[MADV_DONTNEED as u64],
        "the allocator returns freed memory",
    )
    .any(
        "rt_sigprocmask",
        SYS_rt_sigprocmask,
        "signalling a thread blocks signals around the call; thread exit",
    )
    .any(
        "rt_sigreturn",
        SYS_rt_sigreturn,
        "returning from a signal handler (the vCPU kick)",
    )
    .any(
        "sigaltstack",
        SYS_sigaltstack,
        "a thread removes its signal stack as it ends",
    )
    .any(
        "getpid",
        SYS_getpid,
        "glibc's pthread_kill and raise ask for it",
    )
    .any("gettid", SYS_gettid, "glibc's raise asks for it")
    .one_of(
        "tgkill",
        SYS_tgkill,
        2,
        &[SIGABRT as u64],
        "a panic aborts with SIGABRT",
    )
    .any(
        "clock_gettime",
        SYS_clock_gettime,
        "time stamps, where the clock source has no vDSO path",
    )
    .any(
        "gettimeofday",
        SYS_gettimeofday,
        "time stamps, where the clock source has no vDSO path",
    )
    .one_of(
        "rt_sigaction",
        SYS_rt_sigaction,
        0,
        &[SIGABRT as u64],
        "abort() resets SIGABRT to its default action",
    )
    .any("write", SYS_write, "logs, the serial console, eventfds")
    .any("close", SYS_close, "dropping files and sockets")
    .any("exit", SYS_exit, "a thread ends")
    .any("exit_group", SYS_exit_group, "the process ends");
}

/// The VMM thread, from the moment the vCPUs are about to run the guest:
/// the event loop, the devices' I/O, the API's actions, snapshots.
fn vmm(l: &mut List) {
    use libc::*;
    l.any("epoll_wait", SYS_epoll_wait, "the event loop")
        .any(
            "epoll_ctl",
            SYS_epoll_ctl,
            "devices and connections join and leave the event loop",
        )
        .any(
            "read",
            SYS_read,
            "eventfds, timerfds, the TAP, drives, the console, vsock sockets",
        )
        .any("pread64", SYS_pread64, "drives and snapshot files")
        .any("pwrite64", SYS_pwrite64, "drives and snapshot files")
        .any("lseek", SYS_lseek, "drives; SEEK_DATA over a memory file")
        .any(
            "fsync",
            SYS_fsync,
            "a FLUSH request; a finished snapshot file",
        )
        .any("fdatasync", SYS_fdatasync, "a FLUSH request")
        .any(
            "msync",
            SYS_msync,
            "virtio-pmem: a FLUSH request syncs the mapped backing file",
        )
        .any(
            "io_uring_enter",
            SYS_io_uring_enter,
            "virtio-blk io_engine Async: submitting requests, waiting for them (snapshots, exit)",
        )
        .any(
            "ftruncate",
            SYS_ftruncate,
            "sizing a snapshot's memory file",
        )
        .one_of(
            "fallocate",
            SYS_fallocate,
            1,
            &[
                (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE) as u64,
                FALLOC_FL_ZERO_RANGE as u64,
                (FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE) as u64,
            ],
            "virtio-blk DISCARD and WRITE_ZEROES",
        )
        .any(
            "openat",
            SYS_openat,
            "snapshot files, /proc/self/pagemap, a drive's new backing file",
        )
        .any("statx", SYS_statx, "sizing drives and snapshot files")
        .any("readlink", SYS_readlink, "resolving snapshot target paths")
        .any("rename", SYS_rename, "a finished snapshot file into place")
        .any(
            "unlink",
            SYS_unlink,
            "a failed snapshot's files; the API socket at exit",
        )
        .when(
            "socket",
            SYS_socket,
            vec![vec![Cond::Eq(0, AF_UNIX as u64)]],
            "vsock: connecting to a host listener (Unix sockets only)",
        )
        .any(
            "connect",
            SYS_connect,
            "vsock: connecting to a host listener",
        )
        .any("accept4", SYS_accept4, "vsock: a host connection")
        .any("recvfrom", SYS_recvfrom, "vsock sockets")
        .any("sendto", SYS_sendto, "vsock sockets")
        .any("shutdown", SYS_shutdown, "vsock: a closed connection")
        .one_of(
            "sendmsg",
            SYS_sendmsg,
            2,
            &[MSG_NOSIGNAL as u64],
            "virtio-fs: vhost-user requests, eventfds and the guest memfd passed with SCM_RIGHTS",
        )
        .one_of(
            "recvmsg",
            SYS_recvmsg,
            2,
            &[0],
            "virtio-fs: vhost-user replies",
        )
        .any("poll", SYS_poll, "is a frame waiting on the TAP")
        .any("getrandom", SYS_getrandom, "virtio-rng")
        .one_of(
            "madvise",
            SYS_madvise,
            2,
            &[MADV_REMOVE as u64],
            "virtio-balloon: inflated pages of shared (memfd) guest memory",
        )
        .one_of(
            "timerfd_settime",
            SYS_timerfd_settime,
            1,
            &[0],
            "rate limiters and the metrics timer",
        )
        .one_of(
            "fcntl",
            SYS_fcntl,
            1,
            &[
                F_GETFD as u64,
                F_SETFD as u64,
                F_GETFL as u64,
                F_SETFL as u64,
                F_DUPFD_CLOEXEC as u64,
                F_GETPIPE_SZ as u64,
            ],
            "non-blocking vsock sockets; room in a console pipe; cloning files",
        )
        .one_of(
            "ioctl",
            SYS_ioctl,
            1,
            &[
                io::KVM_GET_DIRTY_LOG(),
                io::KVM_GET_IRQCHIP(),
                io::KVM_GET_CLOCK(),
                io::KVM_GET_PIT2(),
                io::KVM_SET_USER_MEMORY_REGION(),
                libc::FIONBIO,
                libc::FIONREAD,
            ],
            "snapshots read the VM's state and dirty log; virtio-mem maps and unmaps hotplugged memory slots; sockets and pipes",
        )
        .one_of(
            "tgkill",
            SYS_tgkill,
            2,
            &[super::kick_signal() as u64],
            "kicking a vCPU out of KVM_RUN",
        );
}

/// The API thread: the HTTP server on the per-VM socket.
fn api(l: &mut List) {
    use libc::*;
    l.any("epoll_wait", SYS_epoll_wait, "tokio's reactor")
        .any(
            "epoll_ctl",
            SYS_epoll_ctl,
            "connections join and leave the reactor",
        )
        .one_of(
            "accept4",
            SYS_accept4,
            3,
            &[(SOCK_CLOEXEC | SOCK_NONBLOCK) as u64, SOCK_CLOEXEC as u64],
            "a client connects",
        )
        .any("read", SYS_read, "requests; tokio's wake-up eventfd")
        .any("recvfrom", SYS_recvfrom, "requests")
        .any("sendto", SYS_sendto, "responses")
        .any("shutdown", SYS_shutdown, "a finished connection")
        .one_of(
            "fcntl",
            SYS_fcntl,
            1,
            &[F_GETFD as u64, F_GETFL as u64, F_DUPFD_CLOEXEC as u64],
            "tokio registers accepted sockets",
        )
        .when(
            "prlimit64",
            SYS_prlimit64,
            vec![vec![Cond::Eq(0, 0), Cond::Eq64(2, 0)]],
            "reading (never setting) the open-file limit the connection cap follows",
        );
}

/// A vCPU thread: KVM_RUN and the exits it dispatches to devices.
fn vcpu(l: &mut List) {
    use libc::*;
    l.one_of(
        "ioctl",
        SYS_ioctl,
        1,
        &[
            io::KVM_RUN(),
            io::KVM_GET_REGS(),
            io::KVM_GET_SREGS(),
            io::KVM_GET_MSRS(),
            io::KVM_GET_LAPIC(),
            io::KVM_GET_CPUID2(),
            io::KVM_GET_MP_STATE(),
            io::KVM_GET_VCPU_EVENTS(),
            io::KVM_GET_DEBUGREGS(),
            io::KVM_GET_XSAVE(),
            io::KVM_GET_XCRS(),
            io::KVM_GET_TSC_KHZ(),
            TUNSETOFFLOAD,
            FIONREAD,
        ],
        "running the guest; saving its state for a snapshot; a virtio-net \
         activation sets the TAP's offloads; room in a console pipe",
    )
    .one_of(
        "fcntl",
        SYS_fcntl,
        1,
        &[F_GETPIPE_SZ as u64, F_GETFD as u64],
        "room in a console pipe",
    );
}

/// The allow list of `kind`, one entry per (system call, reason).
pub fn allowed(kind: ThreadKind) -> Vec<Allowed> {
    let mut l = List::default();
    runtime(&mut l);
    match kind {
        ThreadKind::Vmm => vmm(&mut l),
        ThreadKind::Api => api(&mut l),
        ThreadKind::Vcpu => vcpu(&mut l),
    }
    l.0
}

/// System calls a thread kind gets an error from instead of a kill:
/// glibc's allocator reads /proc/sys/vm/overcommit_memory once, from
/// whichever thread first shrinks a heap, and copes with a failure.
pub fn refused(kind: ThreadKind) -> &'static [(&'static str, i64)] {
    match kind {
        ThreadKind::Vmm => &[],
        ThreadKind::Api | ThreadKind::Vcpu => &[("openat", libc::SYS_openat)],
    }
}
