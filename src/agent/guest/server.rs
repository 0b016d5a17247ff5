//! The agent's loop: one host connection at a time, the container's
//! processes and their streams, and the signals PID 1 receives, all on
//! one thread with poll(2).
//!
//! Memory stays bounded whatever either side does:
//! - output is read from a process only while the host has granted
//!   credit for it, so a slow host stops the process at its pipe;
//! - stdin from the host is buffered up to the credit the agent granted,
//!   and more credit is granted only as the pipe takes it;
//! - a frame from the host is decoded as it arrives, at most one frame
//!   (1 MiB) buffered.
//!
//! Each process belongs to the connection that started it, or that
//! attached to it since (`Attach`, after a host restarts). A process no
//! connection holds keeps running, but its output stays in its pipe and
//! its exit is kept until a host attaches: nothing is lost while the host
//! is away, and a process that writes a lot waits for it.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::procs::{errno, read_fd, signal_fd, would_block, write_fd, Proc, EXIT_GRACE};
use super::spawn::{self, Context};
use crate::agent::protocol::{
    encode_message, Frame, FrameReader, Message, Stream, Timings, MAX_DATA, VERSION, WINDOW,
};

/// How long the agent tries to deliver its last frames before the VM ends.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);
/// The most one write to the host's connection carries: a page. The guest
/// kernel makes a vsock packet of each write, and a packet whose payload
/// spans more than one descriptor is dropped whole by vhost-device-vsock
/// 0.3.0 (`DescriptorLengthTooSmall`), silently losing output.
const MAX_WRITE: usize = 4096;
/// Signals PID 1 passes on to the main process.
pub(super) const FORWARDED: [i32; 6] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

/// How the agent ends when the container does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Reboot the VM (PID 1 of a guest).
    EndVm,
    /// Exit the process (host tests, in a PID namespace).
    Exit,
}

pub(super) struct Conn {
    pub(super) fd: OwnedFd,
    pub(super) reader: FrameReader,
    pub(super) out: Vec<u8>,
}

/// The agent once the guest is set up.
pub struct Agent {
    pub(super) listener: OwnedFd,
    pub(super) conn: Option<Conn>,
    pub(super) procs: BTreeMap<u32, Proc>,
    /// The main process's id, once started, and its container's context.
    pub(super) main: Option<(u32, bool)>,
    pub(super) context: Option<Context>,
    pub(super) signals: OwnedFd,
    pub(super) timings: Timings,
    pub(super) t0: Instant,
    pub(super) ending: Ending,
    pub(super) setup_error: Option<String>,
    /// The container root, for user lookups (`/` once switched).
    pub(super) root: PathBuf,
    /// The main process ended and the agent is on its way out.
    pub(super) finished: bool,
    /// The container's extra filesystems are mounted.
    pub(super) mounted: bool,
    /// Pod mode: the pod's containers (see `pod`).
    pub(super) pod: Option<super::pod::Pod>,
}

/// What one entry of the poll set stands for.
#[derive(Clone, Copy)]
enum Slot {
    Listener,
    Conn,
    Signals,
    Out(u32, usize),
    In(u32),
}

impl Agent {
    pub fn new(
        listener: OwnedFd,
        timings: Timings,
        t0: Instant,
        ending: Ending,
        setup_error: Option<String>,
    ) -> io::Result<Agent> {
        // SAFETY: ignoring SIGPIPE takes no pointers; a closed pipe then
        // shows as EPIPE on write.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
        Ok(Agent {
            listener,
            conn: None,
            procs: BTreeMap::new(),
            main: None,
            context: None,
            signals: signal_fd()?,
            timings,
            t0,
            ending,
            setup_error,
            root: PathBuf::from("/"),
            finished: false,
            mounted: false,
            pod: None,
        })
    }

    pub(super) fn send(&mut self, msg: &Message) {
        if let Some(c) = &mut self.conn {
            encode_message(msg, &mut c.out);
        }
    }

    fn error(&mut self, id: Option<u32>, message: String) {
        self.send(&Message::Error {
            id,
            message,
            exit_code: None,
        });
    }

    /// Serves until the container ends; never returns with `EndVm`.
    pub fn run(mut self) -> i32 {
        let mut buf = vec![0u8; MAX_DATA];
        loop {
            let (mut fds, slots) = self.poll_set();
            let timeout = self.timeout_ms();
            // SAFETY: fds is a valid array of pollfd of the given length.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
            if n < 0 && !would_block(&errno()) {
                eprintln!("husk-agent: poll: {}", errno());
            }
            for (pfd, slot) in fds.iter().zip(slots) {
                if pfd.revents == 0 {
                    continue;
                }
                match slot {
                    Slot::Listener => self.accept(),
                    Slot::Conn => self.on_conn(pfd.revents, &mut buf),
                    Slot::Signals => self.on_signals(),
                    Slot::Out(id, i) => self.on_output(id, i, &mut buf),
                    Slot::In(id) => self.on_stdin(id),
                }
            }
            self.report_exits();
            if self.finished || self.setup_failed_and_told() {
                return self.finish();
            }
        }
    }

    /// With a failed setup, the first host is told, then the VM ends;
    /// without a host, it ends after a while all the same.
    fn setup_failed_and_told(&self) -> bool {
        if self.setup_error.is_none() {
            return false;
        }
        let told = self.conn.as_ref().is_some_and(|c| c.out.is_empty());
        told || self.t0.elapsed() > Duration::from_secs(10)
    }

    fn poll_set(&self) -> (Vec<libc::pollfd>, Vec<Slot>) {
        let mut fds = Vec::with_capacity(4 + 3 * self.procs.len());
        let mut slots = Vec::with_capacity(fds.capacity());
        let mut add = |fd: RawFd, events: i16, slot: Slot| {
            fds.push(libc::pollfd {
                fd,
                events,
                revents: 0,
            });
            slots.push(slot);
        };
        add(self.signals.as_raw_fd(), libc::POLLIN, Slot::Signals);
        match &self.conn {
            None => add(self.listener.as_raw_fd(), libc::POLLIN, Slot::Listener),
            Some(c) => {
                let mut ev = libc::POLLIN;
                if !c.out.is_empty() {
                    ev |= libc::POLLOUT;
                }
                add(c.fd.as_raw_fd(), ev, Slot::Conn);
            }
        }
        let attached = self.conn.is_some();
        for (&id, p) in &self.procs {
            for (i, o) in p.out.iter().enumerate() {
                if let Some(o) = o {
                    if attached && p.attached && !o.eof && o.credit > 0 {
                        add(o.fd.as_raw_fd(), libc::POLLIN, Slot::Out(id, i));
                    }
                }
            }
            if let Some(fd) = &p.stdin {
                if !p.stdin_buf.is_empty() || p.stdin_closing {
                    add(fd.as_raw_fd(), libc::POLLOUT, Slot::In(id));
                }
            }
        }
        (fds, slots)
    }

    /// Until the next exit grace runs out, or forever.
    fn timeout_ms(&self) -> i32 {
        let mut next: Option<Duration> = None;
        for p in self.procs.values() {
            if let Some(at) = p.exited_at {
                let left = EXIT_GRACE.saturating_sub(at.elapsed());
                next = Some(next.map_or(left, |n| n.min(left)));
            }
        }
        if self.setup_error.is_some() {
            next = Some(
                next.unwrap_or(Duration::from_secs(1))
                    .min(Duration::from_secs(1)),
            );
        }
        next.map_or(-1, |d| d.as_millis().min(i32::MAX as u128) as i32 + 1)
    }

    fn accept(&mut self) {
        // SAFETY: accept4 with null address pointers is valid.
        let fd = unsafe {
            libc::accept4(
                self.listener.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            )
        };
        if fd < 0 {
            return;
        }
        // SAFETY: accept4 returned a new descriptor that we now own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        self.conn = Some(Conn {
            fd,
            reader: FrameReader::default(),
            out: Vec::new(),
        });
        // A new host follows a process once it attaches to it, with fresh
        // credit.
        for p in self.procs.values_mut() {
            p.attached = false;
            for o in p.out.iter_mut().flatten() {
                o.credit = WINDOW;
            }
        }
        let ready = Message::Ready {
            version: VERSION,
            timings: self.timings,
            error: self.setup_error.clone(),
        };
        self.send(&ready);
    }

    fn drop_conn(&mut self) {
        self.conn = None;
        for p in self.procs.values_mut() {
            p.attached = false;
        }
    }

    fn on_conn(&mut self, revents: i16, buf: &mut [u8]) {
        if revents & libc::POLLOUT != 0 {
            self.flush();
        }
        if revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) == 0 {
            return;
        }
        let Some(c) = &mut self.conn else {
            return;
        };
        match read_fd(c.fd.as_raw_fd(), buf) {
            Ok(0) => return self.drop_conn(),
            Ok(n) => c.reader.push(&buf[..n]),
            Err(e) if would_block(&e) => return,
            Err(_) => return self.drop_conn(),
        }
        loop {
            let Some(c) = &mut self.conn else {
                return;
            };
            match c.reader.next_frame() {
                Ok(None) => return,
                Ok(Some(Ok(frame))) => self.on_frame(frame),
                Ok(Some(Err(e))) => self.error(None, e.to_string()),
                Err(e) => {
                    // The stream cannot be followed any more.
                    self.error(None, e.to_string());
                    self.flush();
                    return self.drop_conn();
                }
            }
        }
    }

    /// Writes what the connection will take now.
    pub(super) fn flush(&mut self) {
        let Some(c) = &mut self.conn else {
            return;
        };
        while !c.out.is_empty() {
            let n = c.out.len().min(MAX_WRITE);
            match write_fd(c.fd.as_raw_fd(), &c.out[..n]) {
                Ok(n) => {
                    c.out.drain(..n);
                }
                Err(e) if would_block(&e) => return,
                Err(_) => return self.drop_conn(),
            }
        }
    }

    fn on_frame(&mut self, frame: Frame) {
        match frame {
            Frame::Data {
                id,
                stream: Stream::Stdin,
                data,
            } => self.stdin_data(id, data),
            Frame::Data { id, .. } => {
                self.error(Some(id), "the host sends only stdin".into());
            }
            Frame::Control(msg) => self.on_message(msg),
        }
    }

    fn stdin_data(&mut self, id: u32, data: Vec<u8>) {
        let Some(p) = self.procs.get_mut(&id) else {
            return self.error(Some(id), format!("no process {id}"));
        };
        if p.stdin.is_none() || p.stdin_closing {
            return self.error(Some(id), "stdin is closed".into());
        }
        if p.stdin_buf.len() + data.len() > WINDOW as usize {
            return self.error(Some(id), "stdin sent beyond its credit".into());
        }
        p.stdin_buf.extend_from_slice(&data);
    }

    fn on_message(&mut self, msg: Message) {
        match msg {
            Message::Start { id, spec } => self.start(id, *spec),
            Message::Exec {
                id,
                spec,
                container: Some(name),
            } => self.exec_in(id, &name, spec),
            Message::Exec { id, spec, .. } => self.exec(id, spec),
            Message::Create { id, container } => self.create(id, *container),
            Message::Signal { id, signal } => self.signal(id, signal),
            Message::Resize { id, window } => {
                let r = self.procs.get(&id).filter(|p| p.tty).map(|p| {
                    let ws = libc::winsize {
                        ws_row: window.rows,
                        ws_col: window.cols,
                        ws_xpixel: 0,
                        ws_ypixel: 0,
                    };
                    let fd = p.out[0].as_ref().map_or(-1, |o| o.fd.as_raw_fd());
                    // SAFETY: TIOCSWINSZ reads the winsize we pass.
                    unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) }
                });
                if r != Some(0) {
                    self.error(Some(id), format!("process {id} has no terminal to resize"));
                }
            }
            Message::CloseStdin { id } => match self.procs.get_mut(&id) {
                Some(p) => {
                    if p.tty {
                        // End of input on a terminal is ^D.
                        p.stdin_buf.push(4);
                    } else {
                        p.stdin_closing = true;
                    }
                }
                None => self.error(Some(id), format!("no process {id}")),
            },
            Message::Credit { id, stream, bytes } => {
                let i = match stream {
                    Stream::Stdout => 0,
                    Stream::Stderr => 1,
                    Stream::Stdin => {
                        return self.error(Some(id), "stdin credit is the agent's to give".into())
                    }
                };
                if let Some(o) = self.procs.get_mut(&id).and_then(|p| p.out[i].as_mut()) {
                    // Never more than a window outstanding, whatever the host says.
                    o.credit = o.credit.saturating_add(bytes).min(WINDOW);
                }
            }
            Message::Shutdown => self.finished = true,
            Message::Update {
                id,
                container,
                resources,
            } => self.cgroup_request(id, &container, Some(resources)),
            Message::Stats { id, container } => self.cgroup_request(id, &container, None),
            Message::Mount { id, mounts } => self.mount(id, &mounts),
            Message::Archive { id, op } => {
                if self.procs.contains_key(&id) || self.main.is_some_and(|(m, _)| m == id) {
                    return self.error(Some(id), format!("process id {id} is in use"));
                }
                let spawned = super::archive::spawn(&op).map_err(|e| e.to_string());
                self.register(id, spawned, false);
            }
            Message::Attach { id } => match self.procs.get_mut(&id) {
                Some(p) => {
                    p.attached = true;
                    let (pid, spawn_us) = (p.pid, p.spawn_us);
                    self.send(&Message::Started { id, pid, spawn_us });
                }
                None => self.error(Some(id), format!("no process {id}")),
            },
            other => {
                let name = format!("{other:?}");
                let name = name.split([' ', '{']).next().unwrap_or("");
                self.error(None, format!("{name} is not a message for the agent"));
            }
        }
    }

    fn start(&mut self, id: u32, spec: crate::agent::protocol::ContainerSpec) {
        if self.pod.is_some() {
            return self.error(Some(id), "a pod's containers start with Create".into());
        }
        if self.main.is_some() {
            return self.error(Some(id), "the container was already started".into());
        }
        if self.procs.contains_key(&id) {
            return self.error(Some(id), format!("process id {id} is in use"));
        }
        // The filesystems and the network are ready before anything of
        // the container runs.
        if !spec.mounts.is_empty() {
            if self.mounted {
                return self.error(Some(id), "the container's mounts are already set up".into());
            }
            if let Err(e) = super::mounts::apply(&spec.mounts) {
                return self.error(Some(id), e.to_string());
            }
            self.mounted = true;
        }
        if let Some(net) = &spec.network {
            if let Err(e) = super::net::configure(net) {
                return self.error(Some(id), e.to_string());
            }
        }
        if let Err(e) = super::setup::identity(&spec) {
            return self.error(Some(id), e.to_string());
        }
        let (launch, ctx) = match spawn::container_launch(&spec, &self.root) {
            Ok(l) => l,
            Err(e) => return self.error(Some(id), e.to_string()),
        };
        if self.launch(id, &launch) {
            self.main = Some((id, spec.keep_running));
            self.context = Some(ctx);
        }
    }

    fn exec(&mut self, id: u32, spec: crate::agent::protocol::ProcessSpec) {
        if self.procs.contains_key(&id) || self.main.is_some_and(|(m, _)| m == id) {
            return self.error(Some(id), format!("process id {id} is in use"));
        }
        let Some(ctx) = &self.context else {
            return self.error(Some(id), "no container was started".into());
        };
        match spawn::exec_launch(&spec, ctx, &self.root) {
            Ok(l) => {
                self.launch(id, &l);
            }
            Err(e) => self.error(Some(id), e.to_string()),
        }
    }

    pub(super) fn launch(&mut self, id: u32, l: &spawn::Launch) -> bool {
        let spawned = spawn::spawn(l).map_err(|e| (e.to_string(), e.exit_code()));
        match spawned {
            Ok(s) => self.register(id, Ok(s), l.tty.is_some()),
            Err((message, exit_code)) => {
                self.send(&Message::Error {
                    id: Some(id),
                    message,
                    exit_code,
                });
                false
            }
        }
    }

    /// Follows a started process as `id`, or reports why it did not start.
    fn register(&mut self, id: u32, spawned: Result<spawn::Spawned, String>, tty: bool) -> bool {
        match spawned {
            Ok(s) => {
                let pid = s.pid;
                let spawn_us = self.t0.elapsed().as_micros() as u64;
                let mut p = Proc::new(s, tty);
                p.spawn_us = spawn_us;
                self.procs.insert(id, p);
                self.send(&Message::Started { id, pid, spawn_us });
                true
            }
            Err(message) => {
                self.error(Some(id), message);
                false
            }
        }
    }

    /// Mounts filesystems without starting the container; answered as a
    /// process that ends at once.
    fn mount(&mut self, id: u32, mounts: &[crate::agent::protocol::GuestMount]) {
        if self.mounted || self.main.is_some() {
            return self.error(Some(id), "the container's mounts are already set up".into());
        }
        if let Err(e) = super::mounts::apply(mounts) {
            return self.error(Some(id), e.to_string());
        }
        self.mounted = true;
        let spawn_us = self.t0.elapsed().as_micros() as u64;
        self.send(&Message::Started {
            id,
            pid: 0,
            spawn_us,
        });
        self.send(&Message::Exit {
            id,
            code: Some(0),
            signal: None,
        });
    }

    fn signal(&mut self, id: u32, signal: i32) {
        if !(1..=64).contains(&signal) {
            return self.error(Some(id), format!("{signal} is not a signal"));
        }
        match self.procs.get(&id) {
            Some(p) if p.status.is_none() => {
                // SAFETY: kill takes no pointers.
                if unsafe { libc::kill(p.pid, signal) } != 0 {
                    let e = errno();
                    self.error(Some(id), format!("kill: {e}"));
                }
            }
            _ => self.error(Some(id), format!("no running process {id}")),
        }
    }

    /// Delivers what is queued for the host (bounded in time), then ends.
    fn finish(mut self) -> i32 {
        let deadline = Instant::now() + FLUSH_TIMEOUT;
        while self.conn.as_ref().is_some_and(|c| !c.out.is_empty()) && Instant::now() < deadline {
            self.flush();
            if let Some(c) = &self.conn {
                let mut pfd = libc::pollfd {
                    fd: c.fd.as_raw_fd(),
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(&mut pfd, 1, 50) };
            }
        }
        if let Some(msg) = &self.setup_error {
            eprintln!("husk-agent: ending the VM after the error above: {msg}");
        }
        match self.ending {
            Ending::EndVm => super::setup::end_vm(),
            Ending::Exit => {
                // SAFETY: getpid and kill take no pointers. Only as PID 1
                // of its own PID namespace does kill(-1) stay inside it.
                unsafe {
                    if libc::getpid() == 1 {
                        libc::kill(-1, libc::SIGKILL);
                    }
                }
                i32::from(self.setup_error.is_some())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::protocol::{ContainerSpec, GuestNetwork};

    #[test]
    fn a_network_that_cannot_be_set_up_fails_the_start_and_the_agent_goes_on() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut agent = Agent::new(
            a.into(),
            Timings::default(),
            Instant::now(),
            Ending::Exit,
            None,
        );
        let agent = agent.as_mut().unwrap();
        let (fd, reader, out) = (b.into(), FrameReader::default(), Vec::new());
        agent.conn = Some(Conn { fd, reader, out });
        let network = Some(GuestNetwork {
            mac: "02:42:0a:58:00:02".into(),
            name: "eth0".into(),
            address: std::net::Ipv4Addr::new(10, 88, 0, 2),
            prefix_len: 33,
            gateway: None,
            mtu: None,
        });
        // Should the network be skipped, a hostname the kernel refuses
        // stops the start before it touches the host running the test.
        let spec = ContainerSpec {
            network,
            hostname: Some("h".repeat(100)),
            ..Default::default()
        };
        // Twice: a failed start starts nothing, so it may be retried.
        agent.start(1, spec.clone());
        agent.start(1, spec);
        assert!(agent.main.is_none() && agent.procs.is_empty());
        let mut r = FrameReader::default();
        r.push(&agent.conn.as_ref().unwrap().out);
        for _ in 0..2 {
            match r.next_frame() {
                Ok(Some(Ok(Frame::Control(Message::Error { id, message, .. })))) => {
                    assert_eq!(id, Some(1));
                    assert!(message.contains("prefix length 33"), "{message}");
                }
                other => panic!("{other:?}"),
            }
        }
    }
}
