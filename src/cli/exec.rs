//! `husk exec`: run a command in a running container and exit with its
//! exit code. Its output comes as NDJSON; with `-i` or `-t`, the session
//! is interactive (`attach.rs`): stdin goes to the process, `-t` gives it
//! a terminal.

use clap::Args;

use super::logs::OutputWriter;
use super::{parse, report, EXIT_DAEMON};
use crate::client::types::{ExecEvent, ExecRequest, StreamKind};
use crate::client::DaemonClient;
use crate::client::{ClientError, NdjsonStream};

#[derive(Args, Debug)]
pub struct ExecArgs {
    /// Set environment variables (KEY=VALUE, or KEY to pass this one's).
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Working directory inside the container.
    #[arg(short, long)]
    pub workdir: Option<String>,
    /// User (name|uid[:group|gid]) to run as.
    #[arg(short, long)]
    pub user: Option<String>,
    /// Keep STDIN open and send this one's to the process.
    #[arg(short, long)]
    pub interactive: bool,
    /// Allocate a pseudo-TTY.
    #[arg(short, long)]
    pub tty: bool,
    /// The container: id, id prefix or name.
    pub container: String,
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

impl ExecArgs {
    pub fn request(&self) -> Result<ExecRequest, String> {
        let mut env = Vec::new();
        for e in &self.env {
            env.extend(parse::env_entry(e, |k| std::env::var(k).ok())?);
        }
        Ok(ExecRequest {
            cmd: self.command.clone(),
            env,
            workdir: self.workdir.clone(),
            user: self.user.clone(),
            tty: self.tty,
            stdin: self.interactive,
            window: None,
        })
    }
}

pub async fn exec(client: &DaemonClient, args: ExecArgs) -> i32 {
    let req = match args.request() {
        Ok(r) => r,
        Err(e) => {
            report(e);
            return EXIT_DAEMON;
        }
    };
    if args.interactive || args.tty {
        return super::attach::exec(client, &args.container, req).await;
    }
    let stream = match client.exec(&args.container, &req).await {
        Ok(s) => s,
        Err(e) => {
            report(&e);
            return e.exit_code().unwrap_or(EXIT_DAEMON);
        }
    };
    let mut w = OutputWriter::stdio(false);
    follow(stream, &mut |s, d| {
        let _ = w.write(s, 0, d);
    })
    .await
}

/// Copies an exec stream's output to `out`; returns the exit code: the
/// process's, or 125 when the daemon reported an error or the stream
/// ended without an exit.
pub async fn follow(
    mut stream: NdjsonStream<ExecEvent>,
    out: &mut dyn FnMut(StreamKind, &str),
) -> i32 {
    loop {
        match stream.next().await {
            Ok(Some(ExecEvent::Output { stream, data })) => out(stream, &data),
            Ok(Some(ExecEvent::Exit { exit_code })) => return exit_code,
            Ok(Some(ExecEvent::Error { error })) => {
                report(format!(
                    "Error response from daemon: {}",
                    crate::text::echo(&error)
                ));
                return EXIT_DAEMON;
            }
            Ok(None) => {
                report(ClientError::Protocol(
                    "the exec stream ended without the process's exit".into(),
                ));
                return EXIT_DAEMON;
            }
            Err(e) => {
                report(e);
                return EXIT_DAEMON;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::tests::parse as parse_args;
    use crate::cli::Verb;

    #[test]
    fn arguments() {
        match parse_args(&["exec", "-e", "A=1", "-w", "/tmp", "web", "ls", "-la", "/"]).unwrap() {
            Verb::Exec(a) => {
                let r = a.request().unwrap();
                assert_eq!(a.container, "web");
                assert_eq!(r.cmd, ["ls", "-la", "/"]);
                assert_eq!(r.env, ["A=1"]);
                assert_eq!(r.workdir.as_deref(), Some("/tmp"));
            }
            other => panic!("{other:?}"),
        }
        assert!(
            parse_args(&["exec", "web"]).is_err(),
            "a command is required"
        );
    }

    #[test]
    fn interactive_asks_for_stdin_and_a_terminal() {
        match parse_args(&["exec", "-it", "web", "sh"]).unwrap() {
            Verb::Exec(a) => {
                let r = a.request().unwrap();
                assert!(r.stdin && r.tty);
            }
            other => panic!("{other:?}"),
        }
        match parse_args(&["exec", "-i", "web", "cat"]).unwrap() {
            Verb::Exec(a) => {
                let r = a.request().unwrap();
                assert!(r.stdin && !r.tty);
            }
            other => panic!("{other:?}"),
        }
        // An unreachable daemon is still the daemon's error.
        let v = parse_args(&["exec", "-it", "web", "sh"]).unwrap();
        let code = crate::cli::dispatch(Some(std::path::Path::new("/nonexistent/h.sock")), v);
        assert_eq!(code, EXIT_DAEMON);
    }
}
