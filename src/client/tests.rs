//! The client against a small fake daemon (an axum router on a Unix
//! socket with canned answers): HTTP, error bodies, NDJSON streams.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use axum::body::Body;
use axum::extract::Path as UrlPath;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};

use super::*;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A socket path of its own for each test.
fn sock_path() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "husk-client-test-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("husk.sock")
}

fn record(id: &str) -> serde_json::Value {
    serde_json::json!({
        "id": id, "name": "web", "image": "busybox",
        "config": {"image": "busybox", "cmd": ["sleep", "9"]},
        "state": "running", "created_ms": 1000, "started_ms": 2000,
        "backend": "kvm", "pids": [42], "vcpus": 1, "memory_mib": 256
    })
}

pub(crate) fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(serde_json::json!({"code": code, "message": message})),
    )
        .into_response()
}

/// A body sent in the given chunks (which may split lines anywhere).
pub(crate) fn chunked(chunks: &[&'static str]) -> Response {
    let parts: Vec<Result<Bytes, Infallible>> = chunks
        .iter()
        .map(|c| Ok(Bytes::from_static(c.as_bytes())))
        .collect();
    Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(Body::from_stream(futures_util::stream::iter(parts)))
        .unwrap()
}

fn router() -> Router {
    Router::new()
        .route(
            "/v1/containers",
            post(|Json(req): Json<CreateRequest>| async move {
                let name = req.name.unwrap_or_else(|| "happy_turing".into());
                (
                    StatusCode::CREATED,
                    Json(serde_json::json!({"id": "ab".repeat(32), "name": name})),
                )
            })
            .get(|uri: Uri| async move {
                // Echo the query back in the name, for the test to check.
                let mut r = record(&"cd".repeat(32));
                r["name"] = uri.query().unwrap_or("").into();
                Json(serde_json::json!([r]))
            }),
        )
        .route(
            "/v1/containers/{id}",
            get(|UrlPath(id): UrlPath<String>| async move {
                if id == "missing" {
                    error(
                        StatusCode::NOT_FOUND,
                        "not_found",
                        "No such container: missing",
                    )
                } else {
                    Json(record(&id)).into_response()
                }
            })
            .delete(|| async { StatusCode::NO_CONTENT }),
        )
        .route(
            "/v1/containers/{id}/start",
            post(|| async { StatusCode::NO_CONTENT }),
        )
        .route(
            "/v1/containers/{id}/kill",
            post(|| async {
                error(
                    StatusCode::CONFLICT,
                    "conflict",
                    "container web is not running",
                )
            }),
        )
        .route(
            "/v1/containers/{id}/wait",
            post(|| async { Json(serde_json::json!({"exit_code": 137, "signal": 9})) }),
        )
        .route(
            "/v1/containers/{id}/logs",
            get(|uri: Uri| async move {
                assert_eq!(
                    uri.query(),
                    Some("follow=true&stdout=true&stderr=false&tail=10&since=1234")
                );
                chunked(&[
                    "{\"stream\":\"stdout\",\"time_ms\":1,\"da",
                    "ta\":\"hello\\n\"}\n\n{\"stream\":\"stderr\",",
                    "\"time_ms\":2,\"data\":\"w\u{e9}rld\\n\"}\n",
                    "{\"stream\":\"stdout\",\"time_ms\":3,\"data\":\"no newline at the end\"}",
                ])
            }),
        )
        .route(
            "/v1/containers/{id}/exec",
            post(|Json(req): Json<ExecRequest>| async move {
                assert_eq!(req.cmd, ["sh", "-c", "exit 3"]);
                chunked(&[
                    "{\"stream\":\"stdout\",\"data\":\"a\"}\n{\"exit_code\"",
                    ":3}\n",
                ])
            }),
        )
        .route(
            "/v1/images/{reference}",
            delete(|UrlPath(r): UrlPath<String>| async move {
                if r == "docker.io/library/busybox:latest" {
                    StatusCode::NO_CONTENT.into_response()
                } else {
                    error(StatusCode::NOT_FOUND, "not_found", &format!("no image {r}"))
                }
            }),
        )
        .route(
            "/v1/images/pull",
            post(|| async { chunked(&["{\"status\":\"Resolved\"}\n{\"error\":\"denied\"}\n"]) }),
        )
        .route(
            "/v1/info",
            get(|| async { (StatusCode::BAD_GATEWAY, "upstream <b>exploded</b>").into_response() }),
        )
        .route(
            "/v1/events",
            get(|| async { Json(serde_json::json!({"not": "a list"})) }),
        )
}

/// Serves `router` on a fresh socket; the returned client talks to it.
/// (The CLI's tests use it too.)
pub(crate) async fn serve_fake(router: Router) -> DaemonClient {
    let path = sock_path();
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    DaemonClient::new(path)
}

async fn fake_daemon() -> DaemonClient {
    serve_fake(router()).await
}

#[tokio::test]
async fn containers() {
    let c = fake_daemon().await;
    let created = c
        .create(&CreateRequest {
            image: "busybox".into(),
            name: Some("web".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(created.id.len(), 64);
    assert_eq!(created.name, "web");
    c.start("web").await.unwrap();

    let r = c.inspect("cafe").await.unwrap();
    assert_eq!(r.id, "cafe");
    assert_eq!(r.state, ContainerState::Running);
    assert_eq!(r.pids, [42]);

    let list = c
        .list(&ListOptions {
            all: true,
            state: Some(ContainerState::Exited),
            label: Some("team=a b".into()),
        })
        .await
        .unwrap();
    assert_eq!(list[0].name, "all=true&state=exited&label=team%3Da%20b");

    let w = c.wait("web").await.unwrap();
    assert_eq!((w.exit_code, w.code, w.signal), (137, None, Some(9)));
    c.remove("web", true).await.unwrap();
}

#[tokio::test]
async fn api_errors() {
    let c = fake_daemon().await;
    let e = c.inspect("missing").await.unwrap_err();
    assert!(e.is_not_found());
    match &e {
        ClientError::Api {
            status,
            code,
            message,
            ..
        } => {
            assert_eq!(*status, 404);
            assert_eq!(*code, ErrorCode::NotFound);
            assert_eq!(message, "No such container: missing");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        e.to_string(),
        "Error response from daemon: No such container: missing"
    );

    let e = c.kill("web", 15).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Conflict));

    // An error without the API's body: the status and the text.
    match c.info().await.unwrap_err() {
        ClientError::Api {
            status,
            code,
            message,
            ..
        } => {
            assert_eq!(status, 502);
            assert_eq!(code, ErrorCode::Internal);
            assert_eq!(message, "502 Bad Gateway: upstream <b>exploded</b>");
        }
        other => panic!("{other:?}"),
    }

    // A 2xx body of the wrong shape.
    let mut events = c.events().await.unwrap();
    let e = events.next().await.unwrap_err();
    assert!(matches!(e, ClientError::Protocol(_)), "{e}");

    // The image reference travels as one path segment.
    c.remove_image("docker.io/library/busybox:latest")
        .await
        .unwrap();
    assert!(c.remove_image("busybox").await.unwrap_err().is_not_found());
}

#[tokio::test]
async fn streams() {
    let c = fake_daemon().await;
    let opts = LogsOptions {
        follow: true,
        tail: Some(10),
        since: Some(1234),
        stdout: true,
        stderr: false,
    };
    let mut logs = c.logs("web", &opts).await.unwrap();
    let mut got = Vec::new();
    while let Some(l) = logs.next().await.unwrap() {
        got.push((l.stream, l.time_ms, l.data));
    }
    assert_eq!(
        got,
        [
            (StreamKind::Stdout, 1, "hello\n".to_string()),
            (StreamKind::Stderr, 2, "w\u{e9}rld\n".to_string()),
            (StreamKind::Stdout, 3, "no newline at the end".to_string()),
        ]
    );
    // Past the end it stays ended.
    assert!(logs.next().await.unwrap().is_none());

    let mut exec = c
        .exec(
            "web",
            &ExecRequest {
                cmd: vec!["sh".into(), "-c".into(), "exit 3".into()],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        exec.next().await.unwrap(),
        Some(ExecEvent::Output {
            stream: StreamKind::Stdout,
            data: "a".into()
        })
    );
    assert_eq!(
        exec.next().await.unwrap(),
        Some(ExecEvent::Exit { exit_code: 3 })
    );
    assert_eq!(exec.next().await.unwrap(), None);

    let mut pull = c.pull("busybox").await.unwrap();
    assert!(matches!(
        pull.next().await.unwrap(),
        Some(PullEvent::Progress { .. })
    ));
    assert_eq!(
        pull.next().await.unwrap(),
        Some(PullEvent::Error {
            error: "denied".into()
        })
    );
}

#[tokio::test]
async fn unreachable_daemon() {
    let path = sock_path();
    let c = DaemonClient::new(&path);
    let e = c.info().await.unwrap_err();
    assert!(matches!(e, ClientError::Unreachable { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.starts_with(&format!(
            "cannot reach the husk daemon at {}: ",
            path.display()
        )),
        "{msg}"
    );
    assert!(msg.ends_with("; is `husk serve` running?"), "{msg}");
}

#[test]
fn socket_paths() {
    assert_eq!(
        default_socket_for(0, Some(Path::new("/run/user/0"))),
        PathBuf::from("/run/husk/husk.sock")
    );
    assert_eq!(
        default_socket_for(1000, Some(Path::new("/run/user/1000"))),
        PathBuf::from("/run/user/1000/husk/husk.sock")
    );
    assert_eq!(
        default_socket_for(1000, None),
        PathBuf::from("/tmp/husk-1000/husk.sock")
    );
    assert_eq!(parse_host("/a/b.sock").unwrap(), PathBuf::from("/a/b.sock"));
    assert_eq!(
        parse_host("unix:///a/b.sock").unwrap(),
        PathBuf::from("/a/b.sock")
    );
    assert!(parse_host("unix://").is_err());
    assert!(parse_host("tcp://1.2.3.4:2375").is_err());
    assert_eq!(
        resolve_socket(Some(Path::new("unix:///x.sock"))).unwrap(),
        PathBuf::from("/x.sock")
    );
}

#[test]
fn encoding() {
    assert_eq!(encode_component("abc-1.2_~"), "abc-1.2_~");
    assert_eq!(
        encode_component("docker.io/library/busybox:latest"),
        "docker.io%2Flibrary%2Fbusybox%3Alatest"
    );
    assert_eq!(encode_component("é"), "%C3%A9");
    assert_eq!(query(&[]), "");
    assert_eq!(
        query(&[("a", "1".into()), ("b", "x y".into())]),
        "?a=1&b=x%20y"
    );
}
