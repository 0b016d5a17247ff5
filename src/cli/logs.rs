//! `husk logs`: a container's output; and the writer that puts a
//! container's output on this process's stdout and stderr, which `run`
//! and `exec` share.

use std::io::Write;

use clap::Args;

use super::format;
use crate::client::types::{LogsOptions, StreamKind};
use crate::client::DaemonClient;

#[derive(Args, Debug)]
pub struct LogsArgs {
    /// Follow log output (until the container exits).
    #[arg(short, long)]
    pub follow: bool,
    /// Number of lines to show from the end of the logs, or "all".
    #[arg(short = 'n', long, default_value = "all", value_parser = super::parse::tail)]
    pub tail: super::parse::Tail,
    /// Show logs since a timestamp (e.g. 2024-01-02T13:23:37Z, or a unix
    /// timestamp) or a relative time (e.g. 42m for 42 minutes).
    #[arg(long)]
    pub since: Option<String>,
    /// Show timestamps.
    #[arg(short, long)]
    pub timestamps: bool,
    /// The container: id, id prefix or name.
    pub container: String,
}

/// Writes output chunks to stdout or stderr, optionally with a timestamp
/// at the start of each line.
pub struct OutputWriter<O: Write, E: Write> {
    out: O,
    err: E,
    timestamps: bool,
    /// Whether each stream is at the start of a line.
    at_line_start: [bool; 2],
}

impl OutputWriter<std::io::Stdout, std::io::Stderr> {
    pub fn stdio(timestamps: bool) -> Self {
        OutputWriter::new(std::io::stdout(), std::io::stderr(), timestamps)
    }
}

impl<O: Write, E: Write> OutputWriter<O, E> {
    pub fn new(out: O, err: E, timestamps: bool) -> Self {
        OutputWriter {
            out,
            err,
            timestamps,
            at_line_start: [true; 2],
        }
    }

    /// Writes one chunk and flushes it (the reader may be a terminal
    /// waiting on a prompt without a newline).
    pub fn write(&mut self, stream: StreamKind, time_ms: u64, data: &str) -> std::io::Result<()> {
        let (w, start): (&mut dyn Write, &mut bool) = match stream {
            StreamKind::Stdout => (&mut self.out, &mut self.at_line_start[0]),
            StreamKind::Stderr => (&mut self.err, &mut self.at_line_start[1]),
        };
        if !self.timestamps {
            w.write_all(data.as_bytes())?;
            return w.flush();
        }
        let stamp = format::rfc3339_nanos(time_ms);
        for piece in data.split_inclusive('\n') {
            if *start {
                write!(w, "{stamp} ")?;
            }
            w.write_all(piece.as_bytes())?;
            *start = piece.ends_with('\n');
        }
        w.flush()
    }

    pub fn into_inner(self) -> (O, E) {
        (self.out, self.err)
    }
}

pub async fn logs(client: &DaemonClient, args: LogsArgs) -> i32 {
    let since = match args.since.as_deref() {
        Some(s) => match super::parse::since(s, format::now_ms()) {
            Ok(t) => Some(t),
            Err(e) => {
                super::report(e);
                return 1;
            }
        },
        None => None,
    };
    let opts = LogsOptions {
        follow: args.follow,
        tail: args.tail.0,
        since,
        ..Default::default()
    };
    let mut stream = match client.logs(&args.container, &opts).await {
        Ok(s) => s,
        Err(e) => {
            super::report(e);
            return 1;
        }
    };
    let mut w = OutputWriter::stdio(args.timestamps);
    loop {
        match stream.next().await {
            Ok(Some(l)) => {
                if w.write(l.stream, l.time_ms, &l.data).is_err() {
                    // The reader went away (a closed pipe): stop quietly.
                    return 0;
                }
            }
            Ok(None) => return 0,
            Err(e) => {
                super::report(e);
                return 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::tests::parse;
    use crate::cli::Verb;

    #[test]
    fn writes_to_the_right_stream() {
        let mut w = OutputWriter::new(Vec::new(), Vec::new(), false);
        w.write(StreamKind::Stdout, 0, "a\nb").unwrap();
        w.write(StreamKind::Stderr, 0, "e\n").unwrap();
        w.write(StreamKind::Stdout, 0, "c\n").unwrap();
        let (o, e) = w.into_inner();
        assert_eq!(o, b"a\nbc\n");
        assert_eq!(e, b"e\n");
    }

    #[test]
    fn timestamps_start_each_line() {
        let mut w = OutputWriter::new(Vec::new(), Vec::new(), true);
        w.write(StreamKind::Stdout, 1_000, "a\nb").unwrap();
        w.write(StreamKind::Stdout, 2_000, "c\nd\n").unwrap();
        w.write(StreamKind::Stderr, 3_000, "e\n").unwrap();
        let (o, e) = w.into_inner();
        assert_eq!(
            String::from_utf8(o).unwrap(),
            "1970-01-01T00:00:01.000000000Z a\n\
             1970-01-01T00:00:01.000000000Z bc\n\
             1970-01-01T00:00:02.000000000Z d\n"
        );
        assert_eq!(
            String::from_utf8(e).unwrap(),
            "1970-01-01T00:00:03.000000000Z e\n"
        );
    }

    #[test]
    fn arguments() {
        match parse(&["logs", "-f", "--tail", "5", "--since", "10m", "-t", "web"]).unwrap() {
            Verb::Logs(a) => {
                assert!(a.follow && a.timestamps);
                assert_eq!(a.tail.0, Some(5));
                assert_eq!(a.since.as_deref(), Some("10m"));
                assert_eq!(a.container, "web");
            }
            other => panic!("{other:?}"),
        }
        match parse(&["logs", "web"]).unwrap() {
            Verb::Logs(a) => assert_eq!(a.tail.0, None),
            other => panic!("{other:?}"),
        }
        assert!(parse(&["logs", "--tail", "x", "web"]).is_err());
    }
}
