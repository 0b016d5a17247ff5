//! The microVM metadata service (MMDS), in Firecracker's shape.
//!
//! The host fills a JSON document through the API (`PUT`/`PATCH`/`GET
//! /mmds`, [`actions`]); guests read it over HTTP at a link-local address
//! (169.254.169.254 unless `PUT /mmds/config` says otherwise), through
//! the interfaces `PUT /mmds/config` names. Frames a guest sends there
//! never reach the TAP: virtio-net hands them to this interface's
//! [`stack::MmdsStack`] (its own ARP, smoltcp for IPv4 and TCP, [`http`]
//! for requests), and the stack's replies go into the guest's receive
//! queue ahead of TAP frames.
//!
//! - [`data_store`]: the document, its merge patches and size limit, and
//!   its JSON and IMDS renderings;
//! - [`token`]: V2 session tokens;
//! - [`Mmds`]: the document, tokens and version, shared by the API and
//!   every interface's stack, and the guest requests' answers.
//!
//! What survives a snapshot is the configuration (`mmds-config`, in the
//! saved VM configuration); the document, tokens and connections do not,
//! as in Firecracker: a clone gets its metadata anew.

pub mod actions;
pub mod data_store;
pub mod frame;
pub mod http;
pub mod stack;
pub mod token;

use std::sync::{Arc, Mutex};

use crate::vmm::config::MmdsVersion;
use crate::vmm::metrics::METRICS;
use data_store::{DataStore, DataStoreError, OutputFormat};
use http::{Request, Response};
use token::{TokenAuthority, TokenError};

/// The data store's size limit unless `--mmds-size-limit` says
/// otherwise: Firecracker's, the API's largest body.
pub const DEFAULT_SIZE_LIMIT: usize = 51_200;
/// Where a guest asks for a session token.
pub const TOKEN_PATH: &str = "/latest/api/token";
const TOKEN_HEADERS: [&str; 2] = ["X-metadata-token", "X-aws-ec2-metadata-token"];
const TTL_HEADERS: [&str; 2] = [
    "X-metadata-token-ttl-seconds",
    "X-aws-ec2-metadata-token-ttl-seconds",
];
/// A token request through a proxy is refused (as EC2 and Firecracker
/// do), so that a guest service cannot be tricked into fetching one.
const FORWARDED_HEADER: &str = "X-Forwarded-For";

#[derive(Debug, thiserror::Error)]
pub enum MmdsError {
    #[error(transparent)]
    DataStore(#[from] DataStoreError),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("cannot read metadata file {path}: {err}")]
    MetadataFile { path: String, err: String },
}

impl MmdsError {
    /// Whether the API answers 413 (an update over the size limit), as
    /// Firecracker does; everything else is a 400.
    pub fn is_too_large(&self) -> bool {
        matches!(self, MmdsError::DataStore(DataStoreError::TooLarge { .. }))
    }
}

/// The service's state, shared by the API and the network stacks.
#[derive(Debug)]
pub struct Mmds {
    store: DataStore,
    tokens: TokenAuthority,
    version: MmdsVersion,
    imds_compat: bool,
}

pub type SharedMmds = Arc<Mutex<Mmds>>;

impl Mmds {
    /// An empty store of at most `limit` bytes; V1 until configured.
    pub fn new(limit: usize) -> Result<Self, MmdsError> {
        Ok(Mmds {
            store: DataStore::new(limit),
            tokens: TokenAuthority::new()?,
            version: MmdsVersion::V1,
            imds_compat: false,
        })
    }

    pub fn store(&self) -> &DataStore {
        &self.store
    }

    pub fn store_mut(&mut self) -> &mut DataStore {
        &mut self.store
    }

    pub fn configure(&mut self, version: MmdsVersion, imds_compat: bool) {
        self.version = version;
        self.imds_compat = imds_compat;
    }

    pub fn version(&self) -> MmdsVersion {
        self.version
    }

    /// The answer to one guest request.
    pub fn respond(&mut self, req: &Request) -> Response {
        let Some(path) = request_path(&req.target) else {
            return Response::error(400, "Invalid URI.");
        };
        match req.method.as_str() {
            "GET" => self.get(req, &path),
            "PUT" => self.put_token(req, &path),
            _ => {
                let mut r = Response::error(405, "Not allowed HTTP method.");
                r.headers.push(("Allow", "GET, PUT".into()));
                r
            }
        }
    }

    fn get(&self, req: &Request, path: &str) -> Response {
        let token = req.first_header(&TOKEN_HEADERS).map(|(_, v)| v);
        let valid = token.is_some_and(|t| self.tokens.is_valid(t));
        match token {
            None => METRICS.mmds.rx_no_token.inc(),
            Some(_) if !valid => METRICS.mmds.rx_invalid_token.inc(),
            Some(_) => {}
        }
        // V1 answers whatever the token; V2 only with a valid one.
        if self.version == MmdsVersion::V2 && !valid {
            let msg = if token.is_none() {
                "No MMDS token provided. Use `X-metadata-token` or `X-aws-ec2-metadata-token` header to specify the session token."
            } else {
                "MMDS token not valid."
            };
            return Response::error(401, msg);
        }
        let format = if self.imds_compat {
            OutputFormat::Imds
        } else {
            match accepted_format(req.header("Accept")) {
                Ok(f) => f,
                Err(v) => {
                    return Response::error(
                        400,
                        format!(
                            "Invalid header. Reason: Invalid value. Key: Accept; Value: {}",
                            crate::text::echo(v)
                        ),
                    )
                }
            }
        };
        match self.store.get(path, format) {
            Ok(body) => {
                let ct = match format {
                    OutputFormat::Json => http::JSON,
                    OutputFormat::Imds => http::TEXT,
                };
                Response::new(200, ct, body)
            }
            Err(DataStoreError::NotFound) => Response::error(
                404,
                format!("Resource not found: {}.", crate::text::echo(path)),
            ),
            Err(e) => Response::error(501, e.to_string()),
        }
    }

    fn put_token(&mut self, req: &Request, path: &str) -> Response {
        if req.header(FORWARDED_HEADER).is_some() {
            return Response::error(
                400,
                format!("Invalid header. Reason: Unsupported header name. Key: {FORWARDED_HEADER}"),
            );
        }
        if path != TOKEN_PATH {
            return Response::error(
                404,
                format!("Resource not found: {}.", crate::text::echo(path)),
            );
        }
        let Some((name, value)) = req.first_header(&TTL_HEADERS) else {
            return Response::error(
                400,
                "Token time to live value not found. Use `X-metadata-token-ttl-seconds` or `X-aws-ec2-metadata-token-ttl-seconds` header to specify the token's lifetime.",
            );
        };
        let Ok(ttl) = value.parse::<u32>() else {
            return Response::error(
                400,
                format!(
                    "Invalid header. Reason: Invalid value. Key: {name}; Value: {}",
                    crate::text::echo(value)
                ),
            );
        };
        match self.tokens.generate(ttl) {
            Ok(token) => {
                let mut r = Response::new(200, http::TEXT, token);
                r.headers.push((name, ttl.to_string()));
                r
            }
            Err(e) => Response::error(400, e.to_string()),
        }
    }
}

/// The JSON pointer a request target names: the absolute form's scheme
/// and host dropped, the query dropped, runs of `/` made one. None when
/// there is no path.
fn request_path(target: &str) -> Option<String> {
    let target = match target.strip_prefix("http://") {
        Some(rest) => &rest[rest.find('/')?..],
        None => target,
    };
    let target = target.split(['?', '#']).next().unwrap_or("");
    if !target.starts_with('/') {
        return None;
    }
    let mut path = String::with_capacity(target.len());
    for c in target.chars() {
        if !(c == '/' && path.ends_with('/')) {
            path.push(c);
        }
    }
    Some(path)
}

/// The format an `Accept` header asks for: the first media type named
/// that MMDS knows (`application/json`; `text/plain` or `*/*` for IMDS);
/// no header, or an empty one, is IMDS. Err(value) when it names none.
fn accepted_format(accept: Option<&str>) -> Result<OutputFormat, &str> {
    let Some(v) = accept.filter(|v| !v.trim().is_empty()) else {
        return Ok(OutputFormat::Imds);
    };
    for item in v.split(',') {
        let media = item.split(';').next().unwrap_or("").trim();
        if media.eq_ignore_ascii_case("application/json") {
            return Ok(OutputFormat::Json);
        }
        if media.eq_ignore_ascii_case("text/plain") || media == "*/*" {
            return Ok(OutputFormat::Imds);
        }
    }
    Err(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn req(text: &str) -> Request {
        match http::parse(text.as_bytes()) {
            http::Parsed::Complete(r, _) => r,
            other => panic!("{other:?}"),
        }
    }

    fn mmds(version: MmdsVersion) -> Mmds {
        let mut m = Mmds::new(51200).unwrap();
        m.configure(version, false);
        m.store_mut()
            .put(json!({"latest": {"meta-data": {"id": "i-1", "n": 3}}}))
            .unwrap();
        m
    }

    fn token(m: &mut Mmds) -> String {
        let r = m.respond(&req(
            "PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 60\r\n\r\n",
        ));
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(
            r.headers,
            vec![("X-metadata-token-ttl-seconds", "60".into())]
        );
        r.body
    }

    #[test]
    fn v2_needs_a_valid_token() {
        let mut m = mmds(MmdsVersion::V2);
        let get = |m: &mut Mmds, extra: &str| {
            m.respond(&req(&format!(
                "GET /latest/meta-data/id HTTP/1.1\r\n{extra}\r\n"
            )))
        };
        let no_token = METRICS.mmds.rx_no_token.get();
        let r = get(&mut m, "");
        assert_eq!(r.status, 401);
        assert!(r.body.starts_with("No MMDS token provided"));
        assert!(METRICS.mmds.rx_no_token.get() > no_token);
        let r = get(&mut m, "X-metadata-token: forged\r\n");
        assert_eq!((r.status, r.body.as_str()), (401, "MMDS token not valid."));
        let t = token(&mut m);
        let r = get(&mut m, &format!("x-aws-ec2-metadata-token: {t}\r\n"));
        assert_eq!(
            (r.status, r.body.as_str(), r.content_type),
            (200, "i-1", http::TEXT)
        );
        let r = get(
            &mut m,
            &format!("X-metadata-token: {t}\r\nAccept: application/json\r\n"),
        );
        assert_eq!(
            (r.status, r.body.as_str(), r.content_type),
            (200, "\"i-1\"", http::JSON)
        );
    }

    #[test]
    fn v1_answers_without_a_token() {
        let mut m = mmds(MmdsVersion::V1);
        let r = m.respond(&req(
            "GET http://169.254.169.254//latest//meta-data HTTP/1.0\r\n\r\n",
        ));
        assert_eq!((r.status, r.body.as_str()), (200, "id\nn"));
        let r = m.respond(&req(
            "GET /latest/meta-data?x=1 HTTP/1.1\r\nX-metadata-token: bad\r\n\r\n",
        ));
        assert_eq!(r.status, 200);
        assert!(!token(&mut m).is_empty(), "V1 hands out tokens too");
    }

    #[test]
    fn errors_as_firecracker_answers_them() {
        let mut m = mmds(MmdsVersion::V1);
        let status = |m: &mut Mmds, text: &str| m.respond(&req(text));
        let r = status(&mut m, "GET /nope HTTP/1.1\r\n\r\n");
        assert_eq!(
            (r.status, r.body.as_str()),
            (404, "Resource not found: /nope.")
        );
        assert_eq!(
            status(&mut m, "GET /latest/meta-data/n HTTP/1.1\r\n\r\n").status,
            501
        );
        assert_eq!(
            status(
                &mut m,
                "GET /latest/meta-data/n HTTP/1.1\r\nAccept: application/json\r\n\r\n"
            )
            .body,
            "3"
        );
        assert_eq!(
            status(&mut m, "GET / HTTP/1.1\r\nAccept: image/png\r\n\r\n").status,
            400
        );
        let r = status(&mut m, "POST / HTTP/1.1\r\n\r\n");
        assert_eq!(r.status, 405);
        assert_eq!(r.headers, vec![("Allow", "GET, PUT".into())]);
        assert_eq!(
            status(&mut m, "GET http://169.254.169.254 HTTP/1.1\r\n\r\n").status,
            400
        );
        assert_eq!(status(&mut m, "GET * HTTP/1.1\r\n\r\n").status, 400);
        for (head, want) in [
            ("PUT /latest/api/token HTTP/1.1\r\n", 400),
            ("PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: x\r\n", 400),
            ("PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 0\r\n", 400),
            ("PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 21601\r\n", 400),
            ("PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 1\r\nx-forwarded-for: 1.2.3.4\r\n", 400),
            ("PUT /token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 1\r\n", 404),
        ] {
            assert_eq!(status(&mut m, &format!("{head}\r\n")).status, want, "{head}");
        }
    }

    #[test]
    fn imds_compat_ignores_accept() {
        let mut m = mmds(MmdsVersion::V1);
        m.configure(MmdsVersion::V1, true);
        let r = m.respond(&req(
            "GET /latest/meta-data/id HTTP/1.1\r\nAccept: application/json\r\n\r\n",
        ));
        assert_eq!((r.body.as_str(), r.content_type), ("i-1", http::TEXT));
    }
}
