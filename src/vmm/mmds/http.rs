//! HTTP/1.x as guests speak it to MMDS: requests parsed with `httparse`
//! out of a connection's bytes, responses written whole.
//!
//! A request (head and body) is at most [`MAX_REQUEST`] bytes, as in
//! Firecracker; a longer one is answered 413 and the connection closed.
//! Bodies are read (by `Content-Length`) and ignored; chunked bodies are
//! not supported (501).

/// The largest request, head and body, in bytes.
pub const MAX_REQUEST: usize = 2500;
/// Headers one request may carry.
const MAX_HEADERS: usize = 32;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("Request too large: more than {MAX_REQUEST} bytes.")]
    TooLarge,
    #[error("Invalid request: {0}.")]
    Malformed(String),
    #[error("Unsupported HTTP version.")]
    Version,
    #[error("Unsupported transfer encoding: only requests with a Content-Length are read.")]
    Chunked,
}

impl HttpError {
    /// The status the error is answered with.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::TooLarge => 413,
            HttpError::Malformed(_) => 400,
            HttpError::Version | HttpError::Chunked => 501,
        }
    }
}

/// One parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The request target as sent (origin or absolute form).
    pub target: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    pub headers: Vec<(String, String)>,
}

impl Request {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The first of `names` present, with its value.
    pub fn first_header<'n>(&self, names: &[&'n str]) -> Option<(&'n str, &str)> {
        names.iter().find_map(|n| self.header(n).map(|v| (*n, v)))
    }

    /// Whether the connection stays open after the answer: HTTP/1.1
    /// unless `Connection: close`, HTTP/1.0 only with `keep-alive`.
    pub fn keep_alive(&self) -> bool {
        let conn = self.header("Connection").map(|v| v.to_ascii_lowercase());
        match (self.minor, conn.as_deref()) {
            (_, Some(v)) if v.contains("close") => false,
            (0, Some(v)) => v.contains("keep-alive"),
            (0, None) => false,
            _ => true,
        }
    }
}

/// What the bytes received so far hold.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Not a whole request yet.
    Partial,
    /// A request, and how many bytes it took.
    Complete(Request, usize),
    /// Bytes that cannot become a request: answer and close.
    Bad(HttpError),
}

/// Parses the first request in `buf`.
pub fn parse(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_REQUEST => {
            return Parsed::Bad(HttpError::TooLarge)
        }
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(httparse::Error::Version) => return Parsed::Bad(HttpError::Version),
        Err(e) => return Parsed::Bad(HttpError::Malformed(e.to_string())),
    };
    let (Some(method), Some(path), Some(minor)) = (req.method, req.path, req.version) else {
        return Parsed::Partial;
    };
    let mut out = Request {
        method: method.to_string(),
        target: path.to_string(),
        minor,
        headers: Vec::with_capacity(req.headers.len()),
    };
    for h in req.headers.iter() {
        let Ok(value) = std::str::from_utf8(h.value) else {
            return Parsed::Bad(HttpError::Malformed(format!(
                "the value of header {} is not UTF-8",
                h.name
            )));
        };
        out.headers
            .push((h.name.to_string(), value.trim().to_string()));
    }
    if out.header("Transfer-Encoding").is_some() {
        return Parsed::Bad(HttpError::Chunked);
    }
    let body = match out.header("Content-Length") {
        None => 0,
        Some(v) => match v.parse::<usize>() {
            Ok(n) => n,
            Err(_) => {
                return Parsed::Bad(HttpError::Malformed(format!(
                    "Content-Length {:?} is not a number",
                    crate::text::echo(v)
                )))
            }
        },
    };
    let total = match head.checked_add(body) {
        Some(t) if t <= MAX_REQUEST => t,
        _ => return Parsed::Bad(HttpError::TooLarge),
    };
    if buf.len() < total {
        return Parsed::Partial;
    }
    Parsed::Complete(out, total)
}

/// One answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

pub const TEXT: &str = "text/plain";
pub const JSON: &str = "application/json";

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        501 => "Not Implemented",
        _ => "",
    }
}

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<String>) -> Self {
        Response {
            status,
            content_type,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// A plain-text error.
    pub fn error(status: u16, msg: impl Into<String>) -> Self {
        Self::new(status, TEXT, msg)
    }

    /// The answer's bytes, in HTTP/1.`minor`; `close` says the server
    /// closes the connection after it.
    pub fn to_bytes(&self, minor: u8, close: bool) -> Vec<u8> {
        let mut head = format!(
            "HTTP/1.{minor} {} {}\r\nServer: husk MMDS\r\nConnection: {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
            self.status,
            reason(self.status),
            if close { "close" } else { "keep-alive" },
            self.content_type,
            self.body.len()
        );
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(self.body.as_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_in_pieces_and_pipelined() {
        let one = b"GET /latest/meta-data HTTP/1.1\r\nHost: 169.254.169.254\r\nAccept: application/json\r\n\r\n";
        for cut in [0, 5, 20, one.len() - 1] {
            assert_eq!(parse(&one[..cut]), Parsed::Partial, "{cut}");
        }
        let mut two = one.to_vec();
        two.extend_from_slice(b"PUT /latest/api/token HTTP/1.0\r\nX-metadata-token-ttl-seconds: 5\r\nContent-Length: 3\r\n\r\nabc");
        let Parsed::Complete(r, n) = parse(&two) else {
            panic!("no request")
        };
        assert_eq!(
            (r.method.as_str(), r.target.as_str(), r.minor),
            ("GET", "/latest/meta-data", 1)
        );
        assert_eq!(r.header("accept"), Some("application/json"));
        assert!(r.keep_alive());
        assert_eq!(n, one.len());
        let Parsed::Complete(r, m) = parse(&two[n..]) else {
            panic!("no second request")
        };
        assert_eq!(m, two.len() - n, "the body is taken too");
        assert_eq!(
            r.first_header(&[
                "X-aws-ec2-metadata-token-ttl-seconds",
                "X-metadata-token-ttl-seconds"
            ]),
            Some(("X-metadata-token-ttl-seconds", "5"))
        );
        assert!(!r.keep_alive());
        assert_eq!(parse(&two[n..two.len() - 1]), Parsed::Partial);
    }

    #[test]
    fn bad_requests() {
        let bad = |b: &[u8]| match parse(b) {
            Parsed::Bad(e) => e.status(),
            other => panic!("{other:?} for {:?}", String::from_utf8_lossy(b)),
        };
        assert_eq!(bad(b"GET / HTTP/2.0\r\n\r\n"), 501);
        assert_eq!(
            bad(b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            501
        );
        assert_eq!(bad(b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n"), 400);
        assert_eq!(
            bad(b"GET / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n"),
            400
        );
        assert_eq!(bad(b"GET / HTTP/1.1\r\nContent-Length: 3000\r\n\r\n"), 413);
        assert_eq!(bad(b"\x00\x01\x02 garbage\r\n\r\n"), 400);
        assert_eq!(bad(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n"), 400);
        assert_eq!(bad(b"GET / HTTP/1.1\r\nX: \xff\r\n\r\n"), 400);
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..40 {
            many.extend_from_slice(format!("H{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(bad(&many), 400);
        // A head that never ends is cut at the limit.
        let long = vec![b'A'; MAX_REQUEST];
        let mut head = b"GET /".to_vec();
        head.extend_from_slice(&long);
        assert_eq!(bad(&head), 413);
    }

    #[test]
    fn responses() {
        let mut r = Response::new(200, TEXT, "tok");
        r.headers
            .push(("X-metadata-token-ttl-seconds", "60".into()));
        assert_eq!(
            String::from_utf8(r.to_bytes(1, false)).unwrap(),
            "HTTP/1.1 200 OK\r\nServer: husk MMDS\r\nConnection: keep-alive\r\nContent-Type: text/plain\r\n\
             Content-Length: 3\r\nX-metadata-token-ttl-seconds: 60\r\n\r\ntok"
        );
        let e = Response::error(404, "x").to_bytes(0, true);
        assert!(e.starts_with(b"HTTP/1.0 404 Not Found\r\n"));
        assert!(e.windows(17).any(|w| w == b"Connection: close"));
    }
}
