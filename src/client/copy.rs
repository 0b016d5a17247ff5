//! `/v1/containers/{id}/archive`: a path's stat, a tar stream out of a
//! container, and one into it (what `husk cp` uses). The tar work itself
//! is synchronous (`crate::archive`), so the streams cross to it through
//! bounded channels: neither side holds more than a few chunks.

use std::io::{Read, Write};
use std::sync::mpsc;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::{header, Method, Request};

use super::{api_error, container_path, query, ClientError, DaemonClient};
use crate::archive::PathStat;

/// The response header with the path's stat (base64 of its JSON).
pub const STAT_HEADER: &str = "x-husk-path-stat";

/// Chunks in flight between the HTTP body and the tar code.
const DEPTH: usize = 8;

/// A `Read` over chunks that an async task sends.
pub struct ChannelReader {
    rx: mpsc::Receiver<std::io::Result<Bytes>>,
    cur: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.recv() {
                Ok(Ok(b)) => self.cur = b,
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        self.cur = self.cur.slice(n..);
        Ok(n)
    }
}

/// A `Write` whose bytes become an async stream's chunks.
pub struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<Bytes>,
    buf: Vec<u8>,
}

const CHUNK: usize = 256 << 10;

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::take(&mut self.buf));
        self.tx
            .blocking_send(chunk)
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the upload ended"))
    }
}

impl Drop for ChannelWriter {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

fn archive_path(id: &str, path: &str) -> String {
    container_path(id, "/archive") + &query(&[("path", path.to_string())])
}

fn parse_stat(resp: &hyper::Response<hyper::body::Incoming>) -> Result<PathStat, ClientError> {
    let bad = |why: &str| ClientError::Protocol(format!("the path's stat header is {why}"));
    let v = resp
        .headers()
        .get(STAT_HEADER)
        .ok_or_else(|| bad("missing"))?;
    let json = base64::engine::general_purpose::STANDARD
        .decode(v.as_bytes())
        .map_err(|_| bad("not base64"))?;
    serde_json::from_slice(&json).map_err(|_| bad("not a stat"))
}

impl DaemonClient {
    /// `HEAD /v1/containers/{id}/archive`: what is at `path`.
    pub async fn archive_stat(&self, id: &str, path: &str) -> Result<PathStat, ClientError> {
        let (mut sender, conn) = self.open().await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = Request::builder()
            .method(Method::HEAD)
            .uri(archive_path(id, path))
            .header(header::HOST, "localhost")
            .body(http_body_util::Empty::<Bytes>::new())
            .map_err(|e| ClientError::Protocol(format!("cannot build the request: {e}")))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| ClientError::Broken(e.to_string()))?;
        if resp.status().is_success() {
            return parse_stat(&resp);
        }
        // A HEAD answer has no body: the message is in a header.
        let status = resp.status().as_u16();
        let message = resp
            .headers()
            .get("x-husk-error")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| resp.status().canonical_reason().unwrap_or("error"))
            .to_string();
        let code = match status {
            404 => super::types::ErrorCode::NotFound,
            409 => super::types::ErrorCode::Conflict,
            400 => super::types::ErrorCode::BadRequest,
            _ => super::types::ErrorCode::Internal,
        };
        Err(ClientError::Api {
            status,
            code,
            message,
            exit_code: None,
        })
    }

    /// `GET /v1/containers/{id}/archive`: the path's stat, and a reader
    /// of its tar stream (read it from a blocking thread).
    pub async fn archive_get(
        &self,
        id: &str,
        path: &str,
    ) -> Result<(PathStat, ChannelReader), ClientError> {
        let resp = self
            .send(Method::GET, &archive_path(id, path), None)
            .await?;
        let stat = parse_stat(&resp)?;
        let (tx, rx) = mpsc::sync_channel(DEPTH);
        let mut body = resp.into_body();
        tokio::spawn(async move {
            while let Some(frame) = body.frame().await {
                let item = match frame {
                    Ok(f) => match f.into_data() {
                        Ok(d) => Ok(d),
                        Err(_) => continue,
                    },
                    Err(e) => Err(std::io::Error::other(format!("the transfer broke: {e}"))),
                };
                let stop = item.is_err();
                // A blocking send on a runtime thread would stall it.
                let tx = tx.clone();
                if tokio::task::spawn_blocking(move || tx.send(item))
                    .await
                    .map_or(true, |r| r.is_err())
                    || stop
                {
                    return;
                }
            }
        });
        Ok((
            stat,
            ChannelReader {
                rx,
                cur: Bytes::new(),
            },
        ))
    }

    /// `PUT /v1/containers/{id}/archive`: `fill` writes a tar stream (on
    /// a blocking thread) that is unpacked into the directory `path`.
    pub async fn archive_put<F>(&self, id: &str, path: &str, fill: F) -> Result<(), ClientError>
    where
        F: FnOnce(&mut ChannelWriter) -> std::io::Result<()> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(DEPTH);
        let producer = tokio::task::spawn_blocking(move || {
            let mut w = ChannelWriter {
                tx,
                buf: Vec::new(),
            };
            fill(&mut w).and_then(|()| w.flush())
        });
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|b| (Ok::<_, std::io::Error>(Frame::data(b)), rx))
        });
        let body = StreamBody::new(stream).boxed_unsync();
        let resp = self
            .send_tar(Method::PUT, &archive_path(id, path), body)
            .await?;
        if !resp.status().is_success() {
            return Err(api_error(resp).await);
        }
        match producer.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ClientError::Local {
                path: "the archive".into(),
                err: e.to_string(),
            }),
            Err(e) => Err(ClientError::Broken(e.to_string())),
        }
    }
}
