//! vCPUs: configuration, the `KVM_RUN` loop, and the pause/kick protocol.
//!
//! Each vCPU runs on its own thread. The VMM talks to it with requests on a
//! channel; after sending one it kicks the thread with a real-time signal,
//! whose handler sets `immediate_exit` in the thread's `kvm_run`, so
//! `KVM_RUN` returns `EINTR` and the loop reads the request.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Once};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::vmm::kvm::memory::GuestMem;
use kvm_bindings::{
    kvm_msr_entry, kvm_run, Msrs, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET,
    KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::{register_signal_handler, Killable};

use super::persist::{self, KvmStateError, VcpuState};
use super::vm::Vm;
use crate::jail::seccomp::{Policy, ThreadKind};
use crate::vmm::arch::x86_64::boot::KernelEntry;
use crate::vmm::arch::x86_64::cpu_template::{self, TemplateError};
use crate::vmm::arch::x86_64::cpuid::{self, Topology};
use crate::vmm::arch::x86_64::regs::{self, RegsError};
use crate::vmm::config::CpuConfig;
use crate::vmm::devices::Bus;
use crate::vmm::exit::{ExitNotifier, ExitReason};
use crate::vmm::metrics::METRICS;

#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("cannot create vCPU {index}: {err}")]
    Create { index: u8, err: kvm_ioctls::Error },
    #[error("cannot configure vCPU {index} ({what}): {err}")]
    Configure {
        index: u8,
        what: &'static str,
        err: kvm_ioctls::Error,
    },
    #[error(transparent)]
    Regs(#[from] RegsError),
    #[error("cannot register the vCPU kick signal handler: {0}")]
    Signal(vmm_sys_util::errno::Error),
    #[error("cannot spawn the vCPU thread: {0}")]
    Spawn(std::io::Error),
    #[error("vCPU {0} did not answer in time")]
    Unresponsive(u8),
    #[error("vCPU {0} has stopped")]
    Gone(u8),
    #[error("vCPU {0} is not paused")]
    NotPaused(u8),
    #[error("vCPU {0}: {1}")]
    Seccomp(u8, String),
    #[error(transparent)]
    State(#[from] KvmStateError),
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error("vCPU {index}: KVM refused the starting value of MSR {msr:#x}")]
    MsrRefused { index: u8, msr: u32 },
}

/// What the vCPU loop does after an exit.
#[derive(Debug, PartialEq, Eq)]
pub enum VcpuFlow {
    Continue,
    Stop(ExitReason),
}

/// Dispatches one `KVM_RUN` exit to the buses. Pure apart from the devices
/// it touches, so tests can drive it without `/dev/kvm`.
pub fn handle_exit(io: &Bus, mmio: &Bus, exit: VcpuExit) -> VcpuFlow {
    match exit {
        VcpuExit::IoIn(port, data) => {
            METRICS.vcpu.exit_io_in.inc();
            if !io.read(u64::from(port), data) {
                METRICS.vcpu.unhandled_io.inc();
                data.fill(0xff);
            }
            VcpuFlow::Continue
        }
        VcpuExit::IoOut(port, data) => {
            METRICS.vcpu.exit_io_out.inc();
            if !io.write(u64::from(port), data) {
                METRICS.vcpu.unhandled_io.inc();
            }
            VcpuFlow::Continue
        }
        VcpuExit::MmioRead(addr, data) => {
            METRICS.vcpu.exit_mmio_read.inc();
            if !mmio.read(addr, data) {
                METRICS.vcpu.unhandled_io.inc();
                data.fill(0);
            }
            VcpuFlow::Continue
        }
        VcpuExit::MmioWrite(addr, data) => {
            METRICS.vcpu.exit_mmio_write.inc();
            if !mmio.write(addr, data) {
                METRICS.vcpu.unhandled_io.inc();
            }
            VcpuFlow::Continue
        }
        VcpuExit::Intr => VcpuFlow::Continue,
        VcpuExit::Shutdown => VcpuFlow::Stop(ExitReason::TripleFault),
        VcpuExit::Hlt => VcpuFlow::Stop(ExitReason::PowerOff),
        VcpuExit::SystemEvent(kind, _) => match kind {
            KVM_SYSTEM_EVENT_SHUTDOWN => VcpuFlow::Stop(ExitReason::PowerOff),
            KVM_SYSTEM_EVENT_RESET => VcpuFlow::Stop(ExitReason::Reset),
            KVM_SYSTEM_EVENT_CRASH => {
                VcpuFlow::Stop(ExitReason::VcpuError("the guest reported a crash".into()))
            }
            other => VcpuFlow::Stop(ExitReason::VcpuError(format!(
                "unknown KVM system event {other}"
            ))),
        },
        VcpuExit::FailEntry(reason, cpu) => VcpuFlow::Stop(ExitReason::VcpuError(format!(
            "KVM entry failed: hardware reason {reason:#x} on cpu {cpu}"
        ))),
        VcpuExit::InternalError => VcpuFlow::Stop(ExitReason::VcpuError(
            "KVM internal error (the instruction emulator gave up)".into(),
        )),
        other => VcpuFlow::Stop(ExitReason::VcpuError(format!(
            "unexpected KVM exit: {other:?}"
        ))),
    }
}

thread_local! {
    /// This thread's `kvm_run`, for the kick signal handler.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn handle_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    KVM_RUN.with(|run| {
        let run = run.get();
        if !run.is_null() {
            // SAFETY: the pointer is set by this very thread to its own
            // vCPU's kvm_run mapping, and cleared before that vCPU is
            // dropped; a single-byte volatile store is signal safe.
            unsafe { std::ptr::write_volatile(&mut (*run).immediate_exit, 1) };
        }
    });
}

fn kick_signal() -> libc::c_int {
    crate::jail::seccomp::kick_signal()
}

/// Installs the kick handler once per process.
pub fn register_kick_handler() -> Result<(), VcpuError> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = register_signal_handler(kick_signal(), handle_kick).map_err(VcpuError::Signal);
    });
    result
}

pub struct Vcpu {
    index: u8,
    fd: VcpuFd,
    io_bus: Arc<Bus>,
    mmio_bus: Arc<Bus>,
    exit: Arc<ExitNotifier>,
}

impl Vcpu {
    pub fn new(
        vm: &Vm,
        index: u8,
        io_bus: Arc<Bus>,
        mmio_bus: Arc<Bus>,
        exit: Arc<ExitNotifier>,
    ) -> Result<Self, VcpuError> {
        let fd = vm
            .fd()
            .create_vcpu(u64::from(index))
            .map_err(|err| VcpuError::Create { index, err })?;
        Ok(Vcpu {
            index,
            fd,
            io_bus,
            mmio_bus,
            exit,
        })
    }

    /// Sets CPUID, MSRs, registers, FPU and LAPIC for boot. Only vCPU 0
    /// runs from `entry`; the others wait for INIT/SIPI in the kernel.
    pub fn configure(
        &self,
        vm: &Vm,
        mem: &GuestMem,
        entry: &KernelEntry,
        topo: Topology,
        template: Option<&CpuConfig>,
    ) -> Result<(), VcpuError> {
        let index = self.index;
        let err = |what: &'static str| move |err| VcpuError::Configure { index, what, err };

        // The template first; husk's normalization (APIC IDs, topology)
        // then wins where both touch a bit.
        let mut cpuid = vm.supported_cpuid().clone();
        if let Some(t) = template {
            cpuid::ensure_topology_levels(&mut cpuid);
            cpu_template::apply_cpuid(&mut cpuid, t)?;
        }
        cpuid::normalize(&mut cpuid, index, topo);
        self.fd.set_cpuid2(&cpuid).map_err(err("CPUID"))?;

        let mut msrs = regs::boot_msrs()?;
        if let Some(t) = template {
            let mut entries = msrs.as_slice().to_vec();
            cpu_template::apply_msrs(&mut entries, t, |addr| self.read_msr(addr))?;
            msrs = Msrs::from_entries(&entries).map_err(RegsError::Msrs)?;
        }
        let set = self.fd.set_msrs(&msrs).map_err(err("MSRs"))?;
        if set != msrs.as_slice().len() {
            let msr = msrs.as_slice().get(set).map_or(0, |m| m.index);
            return Err(VcpuError::MsrRefused { index, msr });
        }

        self.fd
            .set_regs(&regs::boot_regs(entry.addr, entry.protocol))
            .map_err(err("registers"))?;
        let mut sregs = self.fd.get_sregs().map_err(err("get sregs"))?;
        regs::setup_sregs(mem, &mut sregs, entry.protocol)?;
        self.fd.set_sregs(&sregs).map_err(err("sregs"))?;
        self.fd.set_fpu(&regs::boot_fpu()).map_err(err("FPU"))?;

        let mut lapic = self.fd.get_lapic().map_err(err("get LAPIC"))?;
        regs::configure_lint(&mut lapic);
        self.fd.set_lapic(&lapic).map_err(err("LAPIC"))?;
        Ok(())
    }

    /// One MSR's current value, or None when KVM does not offer it.
    fn read_msr(&self, addr: u32) -> Option<u64> {
        let mut msrs = Msrs::from_entries(&[kvm_msr_entry {
            index: addr,
            ..Default::default()
        }])
        .ok()?;
        match self.fd.get_msrs(&mut msrs) {
            Ok(1) => Some(msrs.as_slice()[0].data),
            _ => None,
        }
    }

    /// Restores the state a snapshot saved, before the thread starts.
    pub fn restore(&self, state: &VcpuState) -> Result<(), KvmStateError> {
        persist::restore_vcpu(&self.fd, self.index, state)
    }

    /// Starts the vCPU thread: it runs the guest at once, or waits for a
    /// resume when `paused` (a snapshot loaded without `resume_vm`).
    ///
    /// The thread first installs the vCPU seccomp filter and reports it
    /// ([`VcpuHandle::wait_filtered`]), then waits for
    /// [`VcpuHandle::go`]: the VMM thread installs its own filter in
    /// between, so no guest code runs before every filter is on.
    pub fn start(self, paused: bool, seccomp: &Policy) -> Result<VcpuHandle, VcpuError> {
        register_kick_handler()?;
        let index = self.index;
        let (req_tx, req_rx) = channel();
        let (resp_tx, resp_rx) = channel();
        let seccomp = seccomp.clone();
        let thread = std::thread::Builder::new()
            .name(format!("husk-vcpu{index}"))
            .spawn(move || {
                let filtered = seccomp.apply(ThreadKind::Vcpu).map_err(|e| e.to_string());
                let ok = filtered.is_ok();
                let _ = resp_tx.send((0, VcpuResponse::Filtered(filtered)));
                // Nothing but the go-ahead (or the end) comes before it.
                if ok && matches!(req_rx.recv(), Ok((_, VcpuRequest::Go))) {
                    self.run(req_rx, resp_tx, paused);
                } else {
                    let _ = resp_tx.send((0, VcpuResponse::Exited));
                }
            })
            .map_err(VcpuError::Spawn)?;
        Ok(VcpuHandle {
            index,
            requests: req_tx,
            responses: resp_rx,
            next: AtomicU64::new(1),
            thread: Some(thread),
        })
    }

    /// Lets KVM finish the port or MMIO access the vCPU last exited for
    /// (an IN's data lands in RAX, the instruction retires) without
    /// running guest code: with `immediate_exit` set, KVM_RUN completes
    /// it and returns EINTR. A state saved before this would replay the
    /// access on restore.
    fn complete_pending_io(&mut self) {
        self.fd.set_kvm_immediate_exit(1);
        // An access split in pieces may exit once more per piece.
        for _ in 0..4 {
            match self.fd.run() {
                Ok(exit) => {
                    if let VcpuFlow::Stop(reason) = handle_exit(&self.io_bus, &self.mmio_bus, exit)
                    {
                        self.exit.notify(reason);
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        self.fd.set_kvm_immediate_exit(0);
    }

    fn run(
        mut self,
        requests: Receiver<(u64, VcpuRequest)>,
        responses: Sender<(u64, VcpuResponse)>,
        paused: bool,
    ) {
        KVM_RUN.with(|run| run.set(self.fd.get_kvm_run() as *mut kvm_run));
        let mut paused = paused;
        'outer: loop {
            // Serve requests; block while paused.
            loop {
                let req = if paused {
                    requests.recv().ok()
                } else {
                    requests.try_recv().ok()
                };
                match req {
                    Some((seq, VcpuRequest::Pause)) => {
                        if !paused {
                            self.complete_pending_io();
                        }
                        paused = true;
                        let _ = responses.send((seq, VcpuResponse::Paused));
                    }
                    Some((seq, VcpuRequest::Resume)) => {
                        paused = false;
                        let _ = responses.send((seq, VcpuResponse::Resumed));
                    }
                    Some((seq, VcpuRequest::Save(msrs))) => {
                        let saved = if paused {
                            persist::save_vcpu(&self.fd, self.index, &msrs).map_err(Into::into)
                        } else {
                            Err(VcpuError::NotPaused(self.index))
                        };
                        let _ = responses.send((seq, VcpuResponse::Saved(Box::new(saved))));
                    }
                    #[cfg(feature = "test-hooks")]
                    Some((seq, VcpuRequest::ForbiddenCall)) => {
                        let went = crate::jail::seccomp::forbidden_call();
                        let _ = responses.send((seq, VcpuResponse::Called(went)));
                    }
                    // Only ever the first request; see `start`.
                    Some((_, VcpuRequest::Go)) => {}
                    Some((_, VcpuRequest::Exit)) => break 'outer,
                    // Channel closed while paused: the VMM is gone.
                    None if paused => break 'outer,
                    None => break,
                }
            }
            let flow = match self.fd.run() {
                Ok(exit) => handle_exit(&self.io_bus, &self.mmio_bus, exit),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    self.fd.set_kvm_immediate_exit(0);
                    METRICS.vcpu.kicks.inc();
                    VcpuFlow::Continue
                }
                Err(e) => VcpuFlow::Stop(ExitReason::VcpuError(format!(
                    "KVM_RUN failed on vCPU {}: {e}",
                    self.index
                ))),
            };
            if let VcpuFlow::Stop(reason) = flow {
                if let ExitReason::VcpuError(msg) = &reason {
                    METRICS.vcpu.failures.inc();
                    tracing::error!(vcpu = self.index, "{msg}");
                }
                self.exit.notify(reason);
                break;
            }
            // A device (the i8042 reset) may have ended the VM: stop
            // running guest code straight away.
            if self.exit.is_stopping() {
                break;
            }
        }
        KVM_RUN.with(|run| run.set(std::ptr::null_mut()));
        let _ = responses.send((0, VcpuResponse::Exited));
    }
}

enum VcpuRequest {
    /// Start running (the first request, after the filters are on).
    Go,
    Pause,
    Resume,
    /// Save the state; carries the MSRs to read.
    Save(Arc<Vec<u32>>),
    /// Make a system call no filter allows (the tests' hook).
    #[cfg(feature = "test-hooks")]
    ForbiddenCall,
    Exit,
}

enum VcpuResponse {
    /// Whether the thread's seccomp filter is on.
    Filtered(Result<(), String>),
    Paused,
    Resumed,
    Saved(Box<Result<VcpuState, VcpuError>>),
    #[cfg(feature = "test-hooks")]
    Called(bool),
    Exited,
}

const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Names one request, so that its answer is told apart from the late
/// answer to an earlier one that timed out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ticket(u64);

/// The VMM's side of a running vCPU thread.
pub struct VcpuHandle {
    index: u8,
    requests: Sender<(u64, VcpuRequest)>,
    responses: Receiver<(u64, VcpuResponse)>,
    next: AtomicU64,
    thread: Option<JoinHandle<()>>,
}

impl VcpuHandle {
    fn kick(&self) {
        if let Some(t) = &self.thread {
            // Fails only if the thread has already finished, which is fine.
            let _ = t.kill(kick_signal());
        }
    }

    /// Sends a request and kicks the thread out of KVM_RUN to read it.
    fn send(&self, req: VcpuRequest) -> Result<Ticket, VcpuError> {
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        self.requests
            .send((seq, req))
            .map_err(|_| VcpuError::Gone(self.index))?;
        self.kick();
        Ok(Ticket(seq))
    }

    /// Waits for the answer to `ticket` that `pick` accepts; answers to
    /// earlier requests (which timed out) are dropped.
    fn wait<T>(
        &self,
        ticket: Ticket,
        mut pick: impl FnMut(VcpuResponse) -> Option<T>,
    ) -> Result<T, VcpuError> {
        loop {
            match self.responses.recv_timeout(RESPONSE_TIMEOUT) {
                Ok((_, VcpuResponse::Exited)) => return Err(VcpuError::Gone(self.index)),
                Ok((seq, r)) if seq == ticket.0 => {
                    if let Some(v) = pick(r) {
                        return Ok(v);
                    }
                }
                Ok(_) => continue,
                Err(RecvTimeoutError::Timeout) => return Err(VcpuError::Unresponsive(self.index)),
                Err(RecvTimeoutError::Disconnected) => return Err(VcpuError::Gone(self.index)),
            }
        }
    }

    /// Asks the vCPU to pause; [`wait_paused`](Self::wait_paused) gets
    /// the answer, so that every vCPU can be asked before any is waited
    /// for.
    pub fn request_pause(&self) -> Result<Ticket, VcpuError> {
        self.send(VcpuRequest::Pause)
    }

    pub fn wait_paused(&self, ticket: Ticket) -> Result<(), VcpuError> {
        self.wait(ticket, |r| matches!(r, VcpuResponse::Paused).then_some(()))
    }

    pub fn request_resume(&self) -> Result<Ticket, VcpuError> {
        self.send(VcpuRequest::Resume)
    }

    pub fn wait_resumed(&self, ticket: Ticket) -> Result<(), VcpuError> {
        self.wait(ticket, |r| matches!(r, VcpuResponse::Resumed).then_some(()))
    }

    pub fn pause(&self) -> Result<(), VcpuError> {
        let t = self.request_pause()?;
        self.wait_paused(t)
    }

    pub fn resume(&self) -> Result<(), VcpuError> {
        let t = self.request_resume()?;
        self.wait_resumed(t)
    }

    /// Saves a paused vCPU's state on its own thread.
    pub fn save(&self, msr_list: Arc<Vec<u32>>) -> Result<VcpuState, VcpuError> {
        let t = self.send(VcpuRequest::Save(msr_list))?;
        self.wait(t, |r| match r {
            VcpuResponse::Saved(s) => Some(*s),
            _ => None,
        })?
    }

    /// Waits for the thread's report on its seccomp filter.
    pub fn wait_filtered(&self) -> Result<(), VcpuError> {
        self.wait(Ticket(0), |r| match r {
            VcpuResponse::Filtered(f) => Some(f),
            _ => None,
        })?
        .map_err(|e| VcpuError::Seccomp(self.index, e))
    }

    /// Lets the thread run: every filter is on.
    pub fn go(&self) {
        let _ = self.requests.send((0, VcpuRequest::Go));
    }

    /// Has the thread make a system call no filter allows; whether it
    /// went through (the process dies first when the filter kills).
    #[cfg(feature = "test-hooks")]
    pub fn forbidden_call(&self) -> Result<bool, VcpuError> {
        let t = self.send(VcpuRequest::ForbiddenCall)?;
        self.wait(t, |r| match r {
            VcpuResponse::Called(went) => Some(went),
            _ => None,
        })
    }

    /// Stops the thread and waits for it.
    pub fn stop(&mut self) {
        let _ = self.requests.send((0, VcpuRequest::Exit));
        self.kick();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for VcpuHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    use crate::vmm::devices::BusDevice;

    struct Echo(Vec<u8>);
    impl BusDevice for Echo {
        fn read(&mut self, _offset: u64, data: &mut [u8]) {
            data.fill(0x42);
        }
        fn write(&mut self, _offset: u64, data: &[u8]) {
            self.0.extend_from_slice(data);
        }
    }

    fn buses() -> (Bus, Bus, Arc<Mutex<Echo>>) {
        let dev = Arc::new(Mutex::new(Echo(vec![])));
        let mut io = Bus::new();
        io.insert(dev.clone(), 0x3f8, 8).unwrap();
        let mut mmio = Bus::new();
        mmio.insert(dev.clone(), 0xd000_0000, 0x1000).unwrap();
        (io, mmio, dev)
    }

    #[test]
    fn port_io_reaches_the_device() {
        let (io, mmio, dev) = buses();
        assert_eq!(
            handle_exit(&io, &mmio, VcpuExit::IoOut(0x3f8, b"a")),
            VcpuFlow::Continue
        );
        let mut d = [0u8];
        handle_exit(&io, &mmio, VcpuExit::IoIn(0x3fd, &mut d));
        assert_eq!(d, [0x42]);
        assert_eq!(dev.lock().unwrap().0, b"a");
    }

    #[test]
    fn unclaimed_accesses_read_as_open_bus() {
        let (io, mmio, _) = buses();
        let mut d = [0u8; 2];
        handle_exit(&io, &mmio, VcpuExit::IoIn(0x80, &mut d));
        assert_eq!(d, [0xff, 0xff]);
        let mut d = [1u8; 4];
        handle_exit(&io, &mmio, VcpuExit::MmioRead(0x1000, &mut d));
        assert_eq!(d, [0; 4]);
        assert_eq!(
            handle_exit(&io, &mmio, VcpuExit::MmioWrite(0x1000, &[1])),
            VcpuFlow::Continue
        );
    }

    #[test]
    fn mmio_reaches_the_device() {
        let (io, mmio, dev) = buses();
        handle_exit(&io, &mmio, VcpuExit::MmioWrite(0xd000_0010, &[1, 2, 3, 4]));
        assert_eq!(dev.lock().unwrap().0, [1, 2, 3, 4]);
    }

    #[test]
    fn guest_ends_are_mapped_to_reasons() {
        let (io, mmio, _) = buses();
        assert_eq!(
            handle_exit(&io, &mmio, VcpuExit::Shutdown),
            VcpuFlow::Stop(ExitReason::TripleFault)
        );
        assert_eq!(
            handle_exit(
                &io,
                &mmio,
                VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_RESET, &[])
            ),
            VcpuFlow::Stop(ExitReason::Reset)
        );
        assert_eq!(
            handle_exit(
                &io,
                &mmio,
                VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_SHUTDOWN, &[])
            ),
            VcpuFlow::Stop(ExitReason::PowerOff)
        );
        assert!(matches!(
            handle_exit(&io, &mmio, VcpuExit::InternalError),
            VcpuFlow::Stop(ExitReason::VcpuError(_))
        ));
        assert_eq!(handle_exit(&io, &mmio, VcpuExit::Intr), VcpuFlow::Continue);
    }
}
