//! Seccomp filters, one per thread kind of `husk vmm`: the VMM thread
//! (event loop, devices, API actions), the API thread (HTTP server) and
//! each vCPU thread. Each is an allow list compiled at start-up into BPF
//! with `seccompiler`; anything else kills the process with SIGSYS, after
//! a line on stderr naming the call and the thread (or, at
//! [`Level::Log`], is allowed and logged by the kernel's audit log).
//!
//! When each filter goes on (see `docs/security.md`):
//! - the API thread's, before it accepts its first connection;
//! - each vCPU thread's, before it first enters KVM_RUN;
//! - the VMM thread's, after the VM is built and its vCPU threads exist
//!   but before any of them runs guest code.

mod ioctls;
pub mod rules;

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use rules::Cond;

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("cannot build the {0} thread's seccomp filter: {1}")]
    Build(ThreadKind, seccompiler::BackendError),
    #[error("cannot build the {0} thread's seccomp filter: {1}")]
    Compile(ThreadKind, String),
    #[error("cannot install the {0} thread's seccomp filter: {1}")]
    Install(ThreadKind, seccompiler::Error),
    #[error("cannot install the SIGSYS handler: {0}")]
    Handler(std::io::Error),
}

/// The thread kinds, each with its own filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ThreadKind {
    Vmm,
    Api,
    Vcpu,
}

impl ThreadKind {
    pub const ALL: [ThreadKind; 3] = [ThreadKind::Vmm, ThreadKind::Api, ThreadKind::Vcpu];

    pub fn as_str(self) -> &'static str {
        match self {
            ThreadKind::Vmm => "vmm",
            ThreadKind::Api => "api",
            ThreadKind::Vcpu => "vcpu",
        }
    }
}

impl std::fmt::Display for ThreadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a call outside the allow list does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Level {
    /// The process is killed by SIGSYS (after a line on stderr).
    Kill,
    /// The call goes ahead and the kernel logs it (audit, type=1326).
    Log,
}

/// The signal the VMM thread kicks vCPUs with (their filters let the
/// VMM's send it).
pub fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

/// One thread kind's filters: its allow list, and the refusals that go
/// on before it (empty when it has none).
type Programs = (BpfProgram, BpfProgram);

struct Filters {
    level: Level,
    /// Compiled on first use, or ahead of it by [`Policy::prepare`] on a
    /// thread that is not waiting for anything.
    compiled: [OnceLock<Result<Programs, String>>; 3],
}

/// The filters of one process, or none (`--no-seccomp`). Cloning shares
/// them.
#[derive(Clone, Default)]
pub struct Policy(Option<Arc<Filters>>);

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(filters) => write!(f, "Policy({:?})", filters.level),
            None => f.write_str("Policy(off)"),
        }
    }
}

impl Policy {
    /// No filters.
    pub fn off() -> Self {
        Policy(None)
    }

    /// Filters at `level`, compiled when first needed; at [`Level::Kill`]
    /// this installs the SIGSYS handler that names a forbidden call
    /// before the process dies.
    pub fn new(level: Level) -> Result<Self, SeccompError> {
        if level == Level::Kill {
            install_sigsys_handler()?;
        }
        Ok(Policy(Some(Arc::new(Filters {
            level,
            compiled: Default::default(),
        }))))
    }

    /// Compiles `kind`'s filters now (they are kept), so that installing
    /// them later costs only the system call. Compiling takes a fraction
    /// of a millisecond per kind: the VMM does it off its critical path.
    pub fn prepare(&self, kind: ThreadKind) {
        let _ = self.compiled(kind);
    }

    fn compiled(&self, kind: ThreadKind) -> Option<Result<&Programs, SeccompError>> {
        let f = self.0.as_ref()?;
        let slot = &f.compiled[kind as usize];
        let built = slot.get_or_init(|| {
            Ok((
                program(kind, f.level).map_err(|e| e.to_string())?,
                refusals(kind).map_err(|e| e.to_string())?,
            ))
        });
        Some(
            built
                .as_ref()
                .map_err(|e| SeccompError::Compile(kind, e.clone())),
        )
    }

    /// Installs `kind`'s filter on the calling thread. From here on the
    /// thread (and any it starts) can make only the calls it allows.
    pub fn apply(&self, kind: ThreadKind) -> Result<(), SeccompError> {
        let Some(compiled) = self.compiled(kind) else {
            return Ok(());
        };
        let (allow, refuse) = compiled?;
        THREAD_KIND.with(|k| k.set(kind as u8 + 1));
        // The refusals go on first: a call both filters see gets the
        // stricter answer, so an allowed openat still fails with EACCES.
        if !refuse.is_empty() {
            seccompiler::apply_filter(refuse).map_err(|e| SeccompError::Install(kind, e))?;
        }
        seccompiler::apply_filter(allow).map_err(|e| SeccompError::Install(kind, e))
    }
}

fn condition(c: Cond) -> Result<SeccompCondition, seccompiler::BackendError> {
    let (arg, len, op, value) = match c {
        Cond::Eq(arg, v) => (arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, v),
        Cond::Eq64(arg, v) => (arg, SeccompCmpArgLen::Qword, SeccompCmpOp::Eq, v),
        Cond::Clear(arg, mask) => (
            arg,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::MaskedEq(mask),
            0,
        ),
    };
    SeccompCondition::new(arg, len, op, value)
}

/// `kind`'s allow list as one BPF program.
fn program(kind: ThreadKind, level: Level) -> Result<BpfProgram, SeccompError> {
    let build = |e| SeccompError::Build(kind, e);
    let mut map: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let mut unconditional = std::collections::BTreeSet::new();
    for a in rules::allowed(kind) {
        if a.when.is_empty() {
            unconditional.insert(a.nr);
            map.insert(a.nr, vec![]);
            continue;
        }
        if unconditional.contains(&a.nr) {
            continue;
        }
        let entry = map.entry(a.nr).or_default();
        for set in a.when {
            let conds = set
                .into_iter()
                .map(condition)
                .collect::<Result<Vec<_>, _>>()
                .map_err(build)?;
            entry.push(SeccompRule::new(conds).map_err(build)?);
        }
    }
    // Calls the refusal filter answers with EACCES must pass this one,
    // or its kill would take precedence over that answer.
    for (_, nr) in rules::refused(kind) {
        map.entry(*nr).or_default();
    }
    let mismatch = match level {
        Level::Kill => SeccompAction::Trap,
        Level::Log => SeccompAction::Log,
    };
    let filter = SeccompFilter::new(map, mismatch, SeccompAction::Allow, TargetArch::x86_64)
        .map_err(build)?;
    BpfProgram::try_from(filter).map_err(build)
}

/// The calls `kind` gets EACCES from, as a filter allowing all else.
fn refusals(kind: ThreadKind) -> Result<BpfProgram, SeccompError> {
    let list = rules::refused(kind);
    if list.is_empty() {
        return Ok(vec![]);
    }
    let build = |e| SeccompError::Build(kind, e);
    let map = list.iter().map(|(_, nr)| (*nr, vec![])).collect();
    let filter = SeccompFilter::new(
        map,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EACCES as u32),
        TargetArch::x86_64,
    )
    .map_err(build)?;
    BpfProgram::try_from(filter).map_err(build)
}

/// How many distinct system calls `kind` may make (for the docs' and the
/// closing figures' comparison with Firecracker's filters).
pub fn allowed_count(kind: ThreadKind) -> usize {
    let mut names: Vec<_> = rules::allowed(kind).into_iter().map(|a| a.nr).collect();
    names.sort_unstable();
    names.dedup();
    names.len()
}

thread_local! {
    // A plain const-initialised cell: safe to read in a signal handler.
    static THREAD_KIND: Cell<u8> = const { Cell::new(0) };
}

/// A system call number no kernel has and so no filter allows.
const NO_SUCH_CALL: libc::c_long = 1023;

fn install_sigsys_handler() -> Result<(), SeccompError> {
    // SAFETY: a zeroed sigaction is valid; we fill the handler and flags
    // and pass pointers to locals that outlive the call.
    unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = on_sigsys
            as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void)
            as usize;
        // Reset to the default action on entry, so the handler's own
        // forbidden call (see `on_sigsys`) ends the process.
        act.sa_flags = libc::SA_SIGINFO | libc::SA_RESETHAND;
        libc::sigemptyset(&mut act.sa_mask);
        if libc::sigaction(libc::SIGSYS, &act, std::ptr::null_mut()) != 0 {
            return Err(SeccompError::Handler(std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// The layout of `siginfo_t` for SIGSYS (`_sigsys` in the kernel's
/// union, after signo, errno, code and padding).
#[repr(C)]
struct SigsysInfo {
    signo: i32,
    errno: i32,
    code: i32,
    _pad: i32,
    call_addr: usize,
    syscall: i32,
    arch: u32,
}

/// Writes "husk vmm: seccomp: the <kind> thread made forbidden system
/// call <nr>; killing the process" with only a stack buffer and write(2),
/// then makes a call the filter traps again: with the handler reset, the
/// kernel's forced SIGSYS kills the process even where it is PID 1 of a
/// namespace (the jail), which a SIGSYS it sent itself would not.
extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t for an SA_SIGINFO
    // handler, and SIGSYS from seccomp fills its `_sigsys` member.
    let nr = unsafe { (*(info as *const SigsysInfo)).syscall };
    let kind = THREAD_KIND.with(|k| k.get());
    let name = match kind {
        1 => "vmm",
        2 => "api",
        3 => "vcpu",
        _ => "unfiltered",
    };
    let mut buf = [0u8; 160];
    let mut len = 0;
    for part in [
        "husk vmm: seccomp: the ".as_bytes(),
        name.as_bytes(),
        b" thread made forbidden system call ",
    ] {
        len += copy_into(&mut buf[len..], part);
    }
    len += write_decimal(&mut buf[len..], nr);
    len += copy_into(&mut buf[len..], b"; killing the process with SIGSYS\n");
    // SAFETY: write(2) is async-signal-safe; the buffer is a local array
    // and `len` is within it. The second call takes no arguments and
    // does not return (the kernel kills the process), or fails ENOSYS.
    unsafe {
        libc::write(2, buf.as_ptr().cast(), len);
        libc::syscall(NO_SUCH_CALL);
        // Not filtered after all (cannot happen): end as SIGSYS would.
        libc::_exit(128 + libc::SIGSYS);
    }
}

fn copy_into(dst: &mut [u8], src: &[u8]) -> usize {
    let n = src.len().min(dst.len());
    dst[..n].copy_from_slice(&src[..n]);
    n
}

fn write_decimal(dst: &mut [u8], v: i32) -> usize {
    let mut digits = [0u8; 12];
    let mut n = 0;
    let mut v = i64::from(v);
    if v < 0 {
        v = -v;
    }
    loop {
        digits[n] = b'0' + (v % 10) as u8;
        n += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    let mut out = 0;
    while n > 0 && out < dst.len() {
        n -= 1;
        dst[out] = digits[n];
        out += 1;
    }
    out
}

/// Makes a system call no thread's filter allows (a TCP socket), as the
/// tests' hook for proving a thread is filtered. Returns whether the
/// call went through (it does at [`Level::Log`] or with no filter).
#[cfg(feature = "test-hooks")]
pub fn forbidden_call() -> bool {
    // SAFETY: socket(2) takes no pointers; a descriptor it returns is
    // closed at once.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        if fd >= 0 {
            libc::close(fd);
        }
        fd >= 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_filter_compiles_at_both_levels() {
        for level in [Level::Kill, Level::Log] {
            for kind in ThreadKind::ALL {
                let p = program(kind, level).unwrap();
                assert!(!p.is_empty());
            }
        }
    }

    #[test]
    fn no_thread_may_start_processes_or_threads_or_reach_the_network() {
        for kind in ThreadKind::ALL {
            let list = rules::allowed(kind);
            for forbidden in [
                libc::SYS_execve,
                libc::SYS_execveat,
                libc::SYS_fork,
                libc::SYS_vfork,
                libc::SYS_clone,
                libc::SYS_clone3,
                libc::SYS_ptrace,
                libc::SYS_mount,
                libc::SYS_setuid,
                libc::SYS_bind,
                libc::SYS_listen,
                libc::SYS_kill,
            ] {
                assert!(
                    list.iter().all(|a| a.nr != forbidden),
                    "{kind} allows {forbidden}"
                );
            }
            // Sockets only ever of the Unix family.
            for a in list.iter().filter(|a| a.nr == libc::SYS_socket) {
                assert!(!a.when.is_empty(), "{kind} allows any socket");
            }
        }
    }

    #[test]
    fn the_handler_message_is_built_without_allocating() {
        let mut buf = [0u8; 8];
        let n = write_decimal(&mut buf, 41);
        assert_eq!(&buf[..n], b"41");
        let n = write_decimal(&mut buf, 0);
        assert_eq!(&buf[..n], b"0");
    }

    #[test]
    fn counts_are_what_the_docs_say() {
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/security.md"))
            .unwrap();
        for kind in ThreadKind::ALL {
            let line = format!("| {kind} | {} |", allowed_count(kind));
            assert!(doc.contains(&line), "docs/security.md lacks `{line}`");
            for (name, _) in ioctls::named() {
                assert!(
                    doc.contains(&format!("`{name}`")),
                    "docs/security.md lacks `{name}`"
                );
            }
            for a in rules::allowed(kind) {
                assert!(
                    doc.contains(&format!("`{}`", a.name)),
                    "docs/security.md does not explain `{}`",
                    a.name
                );
            }
        }
    }
}
