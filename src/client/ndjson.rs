//! NDJSON response bodies (one JSON value a line) read one value at a
//! time, as the daemon streams logs, exec output, pull progress and events.

use std::marker::PhantomData;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::de::DeserializeOwned;

use super::ClientError;

/// The longest line accepted: a line longer than this is a broken stream,
/// not something to buffer without end.
pub const MAX_LINE: usize = 16 << 20;

/// Splits bytes that arrive in any chunks into lines.
#[derive(Default, Debug)]
pub struct LineSplitter {
    buf: Vec<u8>,
    /// Where to look for the next newline (everything before is known to
    /// hold none).
    scanned: usize,
}

impl LineSplitter {
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next whole line (without its `\n`), if one is in.
    pub fn next_line(&mut self) -> Option<Vec<u8>> {
        let at = self.buf[self.scanned..].iter().position(|&b| b == b'\n')?;
        let end = self.scanned + at;
        let mut line: Vec<u8> = self.buf.drain(..=end).collect();
        line.pop();
        self.scanned = 0;
        Some(line)
    }

    /// After the last chunk: what is left, if anything.
    pub fn finish(&mut self) -> Option<Vec<u8>> {
        self.scanned = 0;
        if self.buf.is_empty() {
            None
        } else {
            Some(std::mem::take(&mut self.buf))
        }
    }

    /// Bytes waiting for their newline.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    fn mark_scanned(&mut self) {
        self.scanned = self.buf.len();
    }
}

/// Parses one line; blank lines (keep-alives) give `None`.
pub fn parse_line<T: DeserializeOwned>(line: &[u8]) -> Result<Option<T>, ClientError> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(line).map(Some).map_err(|e| {
        ClientError::Protocol(format!(
            "bad stream line {}: {e}",
            crate::text::echo_bytes(line)
        ))
    })
}

/// A stream of `T`, one per line of a response body.
pub struct NdjsonStream<T> {
    body: Option<Incoming>,
    lines: LineSplitter,
    _t: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> NdjsonStream<T> {
    pub(super) fn new(body: Incoming) -> Self {
        NdjsonStream {
            body: Some(body),
            lines: LineSplitter::default(),
            _t: PhantomData,
        }
    }

    /// The next value, or `None` once the daemon has ended the stream.
    pub async fn next(&mut self) -> Result<Option<T>, ClientError> {
        loop {
            while let Some(line) = self.lines.next_line() {
                if let Some(v) = parse_line(&line)? {
                    return Ok(Some(v));
                }
            }
            self.lines.mark_scanned();
            let Some(body) = self.body.as_mut() else {
                return match self.lines.finish() {
                    Some(rest) => parse_line(&rest),
                    None => Ok(None),
                };
            };
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.lines.push(&data);
                        if self.lines.pending() > MAX_LINE {
                            self.body = None;
                            return Err(ClientError::Protocol(format!(
                                "a stream line is longer than {MAX_LINE} bytes"
                            )));
                        }
                    }
                }
                Some(Err(e)) => {
                    self.body = None;
                    return Err(ClientError::Broken(e.to_string()));
                }
                None => self.body = None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::types::{LogLine, StreamKind};

    #[test]
    fn lines_across_chunks() {
        let mut s = LineSplitter::default();
        s.push(b"{\"a\":");
        assert_eq!(s.next_line(), None);
        s.mark_scanned();
        s.push(b"1}\n{\"a\":2}\n\n{\"a\"");
        assert_eq!(s.next_line().unwrap(), b"{\"a\":1}");
        assert_eq!(s.next_line().unwrap(), b"{\"a\":2}");
        assert_eq!(s.next_line().unwrap(), b"");
        assert_eq!(s.next_line(), None);
        s.mark_scanned();
        s.push(b":3}");
        assert_eq!(s.next_line(), None);
        assert_eq!(s.finish().unwrap(), b"{\"a\":3}");
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn parse_lines() {
        let l: Option<LogLine> =
            parse_line(br#"{"stream":"stderr","time_ms":5,"data":"oops\n"}"#).unwrap();
        let l = l.unwrap();
        assert_eq!(l.stream, StreamKind::Stderr);
        assert_eq!(l.data, "oops\n");
        assert_eq!(parse_line::<LogLine>(b"  \r").unwrap(), None);
        let e = parse_line::<LogLine>(b"{\"stream\":").unwrap_err();
        assert!(matches!(e, ClientError::Protocol(_)), "{e}");
        // A CRLF line still parses: JSON allows the trailing white space.
        assert!(
            parse_line::<LogLine>(b"{\"stream\":\"stdout\",\"data\":\"\"}\r")
                .unwrap()
                .is_some()
        );
    }
}
