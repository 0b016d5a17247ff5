//! A guest process's stdio, relayed to containerd's FIFOs: what the
//! process writes goes to the stdout and stderr FIFOs (a terminal's
//! output to stdout), what containerd writes into the stdin FIFO goes to
//! the process, and its end closes the process's stdin.
//!
//! containerd opens the output FIFOs for reading before it sends
//! `Create`, so the shim's writer opens at once. The stdin FIFO is opened
//! on a thread of its own, which blocks until containerd's writer
//! appears (or for good, when none ever does: a detached thread that does
//! not hold the shim back when it exits).

use std::path::PathBuf;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;

use crate::agent::client::{Event, ExitStatus, Process, ProcessInput};
use crate::agent::protocol::Stream;

/// The FIFOs containerd named for a process; empty: none.
#[derive(Clone, Debug, Default)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

fn open_sender(path: &str) -> Option<pipe::Sender> {
    if path.is_empty() {
        return None;
    }
    match pipe::OpenOptions::new().open_sender(PathBuf::from(path)) {
        Ok(s) => Some(s),
        Err(e) => {
            log::warn!("cannot open {path}: {e}");
            None
        }
    }
}

/// Feeds the stdin FIFO to the process until its writer closes it.
fn feed_stdin(path: String, input: ProcessInput) {
    if path.is_empty() {
        return;
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    let opener = path.clone();
    std::thread::spawn(move || {
        let _ = tx.send(std::fs::File::open(&opener));
    });
    tokio::spawn(async move {
        let file = match rx.await {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => return log::warn!("cannot open {path}: {e}"),
            Err(_) => return,
        };
        let mut r = match pipe::Receiver::from_file(file) {
            Ok(r) => r,
            Err(e) => return log::warn!("{path}: {e}"),
        };
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if input.write_stdin(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = input.close_stdin().await;
    });
}

/// Relays process `p` until it exits; returns how it ended (an error
/// when the connection to the agent broke first). The output FIFOs are
/// closed before this returns, so containerd has all the output once
/// the exit is known.
pub async fn relay(mut p: Process, io: StdioPaths) -> Result<ExitStatus, String> {
    let mut out = open_sender(&io.stdout);
    let mut err = if io.terminal {
        None
    } else {
        open_sender(&io.stderr)
    };
    feed_stdin(io.stdin.clone(), p.input());
    loop {
        match p.next().await {
            Ok(Some(Event::Output(stream, data))) => {
                let w = match stream {
                    Stream::Stderr if !io.terminal => &mut err,
                    _ => &mut out,
                };
                if let Some(s) = w {
                    // A reader that went away loses the rest; the process
                    // goes on.
                    if s.write_all(&data).await.is_err() {
                        *w = None;
                    }
                }
            }
            Ok(Some(Event::Exit(status))) => return Ok(status),
            Ok(None) => return Err("the agent sent no exit status".into()),
            Err(e) => return Err(e.to_string()),
        }
    }
}
