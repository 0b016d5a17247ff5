//! `POST /v1/images/import`: an archive streamed from a file (or stdin) as
//! the request body, never held in memory whole.

use std::path::Path;

use bytes::Bytes;
use futures_util::stream;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::{header, Method, Request};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::types::ImageSummary;
use super::{api_error, read_json, ClientError, DaemonClient};

/// Read size of one body chunk.
const CHUNK: usize = 256 << 10;

type Reader = Box<dyn AsyncRead + Unpin + Send + 'static>;

/// The body's next frame: up to [`CHUNK`] bytes of the archive.
async fn next_chunk(mut r: Reader) -> Option<(std::io::Result<Frame<Bytes>>, Reader)> {
    let mut buf = vec![0u8; CHUNK];
    match r.read(&mut buf).await {
        Ok(0) => None,
        Ok(n) => {
            buf.truncate(n);
            Some((Ok(Frame::data(Bytes::from(buf))), r))
        }
        Err(e) => Some((Err(e), r)),
    }
}

/// A request body streamed as it is produced.
pub(super) type StreamedBody = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;

impl DaemonClient {
    /// Sends a tar stream as a request's body, on a connection of its
    /// own; the answer, whatever its status.
    pub(super) async fn send_tar(
        &self,
        method: Method,
        uri: &str,
        body: StreamedBody,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        let (mut sender, conn) = self.open().await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::HOST, "localhost")
            .header(header::CONTENT_TYPE, "application/x-tar")
            .body(body)
            .map_err(|e| ClientError::Protocol(format!("cannot build the request: {e}")))?;
        sender
            .send_request(req)
            .await
            .map_err(|e| ClientError::Broken(e.to_string()))
    }

    /// Imports the `docker save` or OCI archive in `path` (`-` for stdin);
    /// `tag` names the image when the archive does not, or overrides it.
    pub async fn import(
        &self,
        path: &Path,
        tag: Option<&str>,
    ) -> Result<Vec<ImageSummary>, ClientError> {
        let reader: Reader = if path == Path::new("-") {
            Box::new(tokio::io::stdin())
        } else {
            let f = tokio::fs::File::open(path)
                .await
                .map_err(|e| ClientError::Local {
                    path: crate::text::echo_path(path),
                    err: e.to_string(),
                })?;
            Box::new(f)
        };
        let mut uri = "/v1/images/import".to_string();
        if let Some(t) = tag {
            uri.push_str("?tag=");
            uri.push_str(&super::encode_component(t));
        }
        // Boxed: the body's type then names no function (hyper's connection
        // task must be `Send` for any lifetime).
        let body = StreamBody::new(stream::unfold(reader, next_chunk)).boxed_unsync();
        let resp = self.send_tar(Method::POST, &uri, body).await?;
        if resp.status().is_success() {
            read_json(resp).await
        } else {
            Err(api_error(resp).await)
        }
    }
}
