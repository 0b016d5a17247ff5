//! `husk exec`: run a command in a running container, non-interactively,
//! and exit with its exit code.

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
    /// Keep STDIN open (needs the daemon's attach endpoint: refused for now).
    #[arg(short, long)]
    pub interactive: bool,
    /// Allocate a pseudo-TTY (needs the daemon's attach endpoint: refused for now).
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
        })
    }
}

pub async fn exec(client: &DaemonClient, args: ExecArgs) -> i32 {
    if args.interactive || args.tty {
        report(super::run::ATTACH_REFUSED);
        return EXIT_DAEMON;
    }
    let req = match args.request() {
        Ok(r) => r,
        Err(e) => {
            report(e);
            return EXIT_DAEMON;
        }
    };
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
    fn interactive_is_refused() {
        // Refused before the daemon is asked: no socket needed.
        let v = parse_args(&["exec", "-it", "web", "sh"]).unwrap();
        let code = crate::cli::dispatch(Some(std::path::Path::new("/nonexistent/h.sock")), v);
        assert_eq!(code, EXIT_DAEMON);
    }
}
