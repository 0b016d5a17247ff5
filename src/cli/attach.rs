//! Interactive sessions, which `husk run -i/-t` and `husk exec -i/-t`
//! share: a connection upgraded by the daemon (framed as
//! `src/daemon/attach.rs` describes), this process's stdin sent to the
//! container's process, its output written here, and its exit code
//! returned.
//!
//! With `-t -i` and a terminal on stdin, that terminal is put in raw mode
//! (keys, Ctrl-C included, go to the container's terminal as they are
//! typed). It is restored on every way out: the exit, an error, a
//! detach, and a panic. Its size goes with the request, and again on
//! every SIGWINCH. SIGINT, SIGTERM, SIGHUP and SIGQUIT are passed to the
//! process; a second one detaches (exit 130).

use std::future::Future;
use std::io::{IsTerminal, Read, Write};
use std::os::fd::RawFd;
use std::pin::Pin;
use std::sync::Mutex;

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc;

use super::{report, EXIT_DAEMON};
use crate::client::types::{AttachFrame, AttachRequest, ExecRequest, WindowSize};
use crate::client::{AttachStream, AttachWriter, ClientError, DaemonClient};

/// How a session ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// The process exited with this code.
    Exited(i32),
    /// The user detached (a second signal); the process runs on.
    Detached,
    /// husk or the daemon failed (reported), with this exit code.
    Failed(i32),
}

impl Ended {
    pub fn exit_code(&self) -> i32 {
        match self {
            Ended::Exited(c) | Ended::Failed(c) => *c,
            Ended::Detached => 130,
        }
    }
}

/// What the session carries.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Send this process's stdin.
    pub stdin: bool,
    /// The process has a terminal.
    pub tty: bool,
}

/// `husk run -i/-t`: attaches to a created container, then starts it,
/// so that none of its output is missed.
pub async fn run(client: &DaemonClient, id: &str, opts: Options) -> i32 {
    let req = AttachRequest {
        window: opts.tty.then(window_size).flatten(),
    };
    let stream = match client.attach(id, &req).await {
        Ok(s) => s,
        Err(e) => {
            report(e);
            return EXIT_DAEMON;
        }
    };
    let end = session(stream, opts, Some(Box::pin(client.start(id)))).await;
    if end == Ended::Detached {
        eprintln!(
            "husk: detached from {}; the container keeps running",
            super::format::short_id(id)
        );
    }
    end.exit_code()
}

/// `husk exec -i/-t`: the process starts with the upgrade.
pub async fn exec(client: &DaemonClient, container: &str, mut req: ExecRequest) -> i32 {
    if req.tty {
        req.window = window_size();
    }
    let opts = Options {
        stdin: req.stdin,
        tty: req.tty,
    };
    let stream = match client.exec_attached(container, &req).await {
        Ok(s) => s,
        Err(e) => {
            report(&e);
            return e.exit_code().unwrap_or(EXIT_DAEMON);
        }
    };
    let end = session(stream, opts, None).await;
    if end == Ended::Detached {
        eprintln!("husk: detached; the process's stdin is closed");
    }
    end.exit_code()
}

type Start<'a> = Pin<Box<dyn Future<Output = Result<(), ClientError>> + 'a>>;

/// Runs a session until the process exits, the user detaches, or
/// something fails. `start` (a container's start) runs alongside.
pub async fn session(stream: AttachStream, opts: Options, start: Option<Start<'_>>) -> Ended {
    let _raw = if opts.tty && opts.stdin && std::io::stdin().is_terminal() {
        match RawTerminal::enable(libc::STDIN_FILENO) {
            Ok(r) => Some(r),
            Err(e) => {
                report(format!("cannot put the terminal in raw mode: {e}"));
                return Ended::Failed(EXIT_DAEMON);
            }
        }
    } else {
        None
    };
    let signals = match Signals::new(opts.tty) {
        Ok(s) => s,
        Err(e) => {
            report(format!("cannot catch signals: {e}"));
            return Ended::Failed(EXIT_DAEMON);
        }
    };
    let AttachStream { mut reader, writer } = stream;
    let stdin = opts.stdin.then(read_stdin);
    let input = send_input(writer, stdin, signals);
    tokio::pin!(input);
    let mut start = start;
    let mut out = std::io::stdout();
    let mut err = std::io::stderr();
    loop {
        tokio::select! {
            r = async { start.as_mut().expect("a pending start").await }, if start.is_some() => {
                start = None;
                if let Err(e) = r {
                    report(&e);
                    return Ended::Failed(e.exit_code().unwrap_or(EXIT_DAEMON));
                }
            }
            end = &mut input => return end,
            f = reader.recv() => {
                let end = match f {
                    // A closed stdout is no reason to stop: the exit code
                    // still matters.
                    Ok(Some(AttachFrame::Stdout(d))) => {
                        let _ = out.write_all(&d).and_then(|()| out.flush());
                        continue;
                    }
                    Ok(Some(AttachFrame::Stderr(d))) => {
                        let _ = err.write_all(&d).and_then(|()| err.flush());
                        continue;
                    }
                    Ok(Some(AttachFrame::Exit(code))) => Ended::Exited(code),
                    Ok(Some(AttachFrame::Error(m))) => {
                        report(format!("Error response from daemon: {}", crate::text::echo(&m)));
                        Ended::Failed(EXIT_DAEMON)
                    }
                    Ok(Some(other)) => {
                        report(ClientError::Protocol(format!("the daemon sent {other:?}")));
                        Ended::Failed(EXIT_DAEMON)
                    }
                    Ok(None) => {
                        report(ClientError::Protocol(
                            "the session ended without the process's exit".into(),
                        ));
                        Ended::Failed(EXIT_DAEMON)
                    }
                    Err(e) => {
                        report(e);
                        Ended::Failed(EXIT_DAEMON)
                    }
                };
                // A start that failed says why better than the session.
                if let Some(s) = start.take() {
                    if let Err(e) = s.await {
                        report(&e);
                        return Ended::Failed(e.exit_code().unwrap_or(EXIT_DAEMON));
                    }
                }
                return end;
            }
        }
    }
}

/// The signals a session handles.
struct Signals {
    winch: Option<Signal>,
    int: Signal,
    term: Signal,
    hup: Signal,
    quit: Signal,
}

impl Signals {
    fn new(tty: bool) -> std::io::Result<Signals> {
        Ok(Signals {
            winch: if tty {
                Some(signal(SignalKind::window_change())?)
            } else {
                None
            },
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
            quit: signal(SignalKind::quit())?,
        })
    }
}

async fn recv_opt(rx: &mut Option<mpsc::Receiver<Vec<u8>>>) -> Option<Vec<u8>> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn winch(s: &mut Option<Signal>) {
    match s {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

/// Stdin, window sizes and signals to the daemon. Runs beside the output
/// (a process that is sent more than it has read must still be read
/// from); returns only to detach.
async fn send_input<W: tokio::io::AsyncWrite + Unpin>(
    mut writer: AttachWriter<W>,
    mut stdin: Option<mpsc::Receiver<Vec<u8>>>,
    mut sig: Signals,
) -> Ended {
    let mut signalled = false;
    let mut broken = false;
    loop {
        let frame = tokio::select! {
            d = recv_opt(&mut stdin) => match d {
                Some(d) => AttachFrame::Stdin(d),
                None => {
                    stdin = None;
                    AttachFrame::CloseStdin
                }
            },
            _ = winch(&mut sig.winch) => match window_size() {
                Some(w) => AttachFrame::Resize(w),
                None => continue,
            },
            _ = sig.int.recv() => AttachFrame::Signal(libc::SIGINT),
            _ = sig.term.recv() => AttachFrame::Signal(libc::SIGTERM),
            _ = sig.hup.recv() => AttachFrame::Signal(libc::SIGHUP),
            _ = sig.quit.recv() => AttachFrame::Signal(libc::SIGQUIT),
        };
        if let AttachFrame::Signal(_) = frame {
            if signalled {
                return Ended::Detached;
            }
            signalled = true;
        }
        // A broken connection shows on the reading side, which reports it.
        if !broken && writer.send(&frame).await.is_err() {
            broken = true;
            stdin = None;
        }
    }
}

/// This process's stdin, read by a thread of its own (a read blocked on a
/// terminal cannot be cancelled; the thread ends with the process). The
/// channel is bounded: stdin is read no faster than the daemon takes it.
/// It closes at the end of stdin.
fn read_stdin() -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel(4);
    let spawned = std::thread::Builder::new()
        .name("husk-stdin".into())
        .spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => {
                        if tx.blocking_send(buf[..n].to_vec()).is_err() {
                            return;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => return,
                }
            }
        });
    if let Err(e) = spawned {
        report(format!("cannot read stdin: {e}"));
    }
    rx
}

/// The local terminal's size (of stdout, else stdin, else stderr).
pub fn window_size() -> Option<WindowSize> {
    [libc::STDOUT_FILENO, libc::STDIN_FILENO, libc::STDERR_FILENO]
        .into_iter()
        .find_map(|fd| {
            // SAFETY: winsize is plain data; TIOCGWINSZ writes one into it
            // and nothing else.
            let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
            // SAFETY: the pointer is to a live winsize, as TIOCGWINSZ wants.
            let r = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
            (r == 0 && ws.ws_row > 0 && ws.ws_col > 0).then_some(WindowSize {
                rows: ws.ws_row,
                cols: ws.ws_col,
            })
        })
}

/// The terminal settings to put back, for the panic hook.
static SAVED: Mutex<Option<(RawFd, libc::termios)>> = Mutex::new(None);

fn restore_saved() {
    if let Some((fd, t)) = SAVED.lock().unwrap_or_else(|e| e.into_inner()).take() {
        // SAFETY: `t` is a termios tcgetattr filled for this fd.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &t) };
    }
}

/// A terminal in raw mode; its settings come back when this is dropped
/// (or on a panic).
struct RawTerminal;

impl RawTerminal {
    fn enable(fd: RawFd) -> std::io::Result<RawTerminal> {
        // SAFETY: termios is plain data, filled by tcgetattr.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: a valid pointer to a termios.
        if unsafe { libc::tcgetattr(fd, &mut t) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        *SAVED.lock().unwrap_or_else(|e| e.into_inner()) = Some((fd, t));
        static HOOK: std::sync::Once = std::sync::Once::new();
        HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                restore_saved();
                previous(info);
            }));
        });
        let mut raw = t;
        // SAFETY: cfmakeraw only edits the termios it is given.
        unsafe { libc::cfmakeraw(&mut raw) };
        // SAFETY: a valid termios for this fd.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            let e = std::io::Error::last_os_error();
            restore_saved();
            return Err(e);
        }
        Ok(RawTerminal)
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        restore_saved();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        assert_eq!(Ended::Exited(7).exit_code(), 7);
        assert_eq!(Ended::Detached.exit_code(), 130);
        assert_eq!(Ended::Failed(125).exit_code(), 125);
    }

    #[test]
    fn raw_mode_is_undone_on_drop() {
        // A pseudo-terminal of our own, so the test needs no terminal.
        let (mut master, mut slave) = (0, 0);
        // SAFETY: openpty writes two fds; the name, termios and winsize
        // pointers may be null.
        let r = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(r, 0);
        let lflag = |fd| {
            // SAFETY: as in `enable`.
            let mut t: libc::termios = unsafe { std::mem::zeroed() };
            // SAFETY: a valid pointer to a termios.
            assert_eq!(unsafe { libc::tcgetattr(fd, &mut t) }, 0);
            t.c_lflag
        };
        let before = lflag(slave);
        assert_ne!(before & libc::ICANON, 0);
        {
            let _raw = RawTerminal::enable(slave).unwrap();
            assert_eq!(lflag(slave) & (libc::ICANON | libc::ECHO | libc::ISIG), 0);
        }
        assert_eq!(lflag(slave), before);
        // SAFETY: both fds are ours and closed once.
        unsafe {
            libc::close(master);
            libc::close(slave);
        }
    }
}
