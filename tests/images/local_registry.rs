//! A real registry on loopback (Debian's docker-registry), a token
//! service for its bearer auth, a proxy that drops connections, and ways
//! to push test images to it.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use husk::image::registry::{self, PullOptions};
use oci_client::client::{Config, ImageLayer};
use oci_client::secrets::RegistryAuth;
use oci_client::Reference;
use serde_json::json;

use super::check::REGISTRY;
use super::common::TempDir;
use super::layers::{config_json, gzip, sha};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A docker-registry process on loopback, removed on drop.
pub struct Registry {
    pub child: Child,
    pub port: u16,
    pub dir: TempDir,
}

/// How the test registry checks callers.
pub enum Auth<'a> {
    Anonymous,
    /// htpasswd: HTTP basic auth.
    Basic(&'a str, &'a str),
    /// A token service at this realm URL, trusting this certificate.
    Token {
        realm: String,
        cert: PathBuf,
    },
}

impl Registry {
    pub fn start(htpasswd: Option<(&str, &str)>) -> Registry {
        match htpasswd {
            Some((u, p)) => Self::start_with(Auth::Basic(u, p)),
            None => Self::start_with(Auth::Anonymous),
        }
    }

    pub fn start_with(auth: Auth) -> Registry {
        let dir = TempDir::new();
        let port = free_port();
        let auth = match auth {
            Auth::Basic(user, password) => {
                let hash = bcrypt::hash(password, 4).unwrap();
                let file = dir.path("htpasswd");
                std::fs::write(&file, format!("{user}:{hash}\n")).unwrap();
                format!(
                    "auth:\n  htpasswd:\n    realm: husk-test\n    path: {}\n",
                    file.display()
                )
            }
            Auth::Token { realm, cert } => format!(
                "auth:\n  token:\n    realm: {realm}\n    service: husk-test-registry\n    \
                 issuer: husk-test-issuer\n    rootcertbundle: {}\n",
                cert.display()
            ),
            Auth::Anonymous => String::new(),
        };
        let config = dir.path("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n{auth}\
                 http:\n  addr: 127.0.0.1:{port}\n",
                dir.path("data").display()
            ),
        )
        .unwrap();
        let child = Command::new(REGISTRY)
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "registry did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Registry { child, port, dir }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The file the registry keeps a blob's bytes in.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.dir
            .path("data")
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

pub fn test_client(host: &str) -> oci_client::Client {
    registry::client(&PullOptions {
        insecure_registries: vec![host.to_string()],
        ..Default::default()
    })
}

/// Pushes a gzip-layered image; returns its manifest's digest and size.
pub fn push(
    host: &str,
    repo_tag: &str,
    layers: &[Vec<u8>],
    arch: &str,
    auth: &RegistryAuth,
) -> (String, i64) {
    let client = test_client(host);
    let reference: Reference = format!("{host}/{repo_tag}").parse().unwrap();
    let diff_ids: Vec<String> = layers.iter().map(|l| sha(l)).collect();
    let image_layers: Vec<ImageLayer> = layers
        .iter()
        .map(|l| {
            ImageLayer::new(
                gzip(l),
                "application/vnd.oci.image.layer.v1.tar+gzip".into(),
                None,
            )
        })
        .collect();
    let config = Config::oci_v1(config_json(&diff_ids, arch), None);
    runtime().block_on(async {
        client
            .push(&reference, &image_layers, config, auth, None)
            .await
            .unwrap();
        let (raw, digest) = client
            .pull_manifest_raw(
                &reference,
                auth,
                &["application/vnd.oci.image.manifest.v1+json"],
            )
            .await
            .unwrap();
        (digest, raw.len() as i64)
    })
}

/// Pushes a Docker Registry v2 (schema 2) image whose layers are gzip,
/// zstd and plain tar, built by hand: blobs first, then the manifest.
pub fn push_docker_v2(host: &str, repo_tag: &str, layers: &[Vec<u8>]) {
    let client = test_client(host);
    let reference: Reference = format!("{host}/{repo_tag}").parse().unwrap();
    let encoded: Vec<(Vec<u8>, &str)> = layers
        .iter()
        .enumerate()
        .map(|(i, l)| match i % 3 {
            0 => (gzip(l), "application/vnd.docker.image.rootfs.diff.tar.gzip"),
            1 => (
                zstd::encode_all(&l[..], 3).unwrap(),
                "application/vnd.oci.image.layer.v1.tar+zstd",
            ),
            _ => (l.clone(), "application/vnd.oci.image.layer.v1.tar"),
        })
        .collect();
    let diff_ids: Vec<String> = layers.iter().map(|l| sha(l)).collect();
    let config = config_json(&diff_ids, "amd64");
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "size": config.len(),
            "digest": sha(&config),
        },
        "layers": encoded.iter().map(|(data, media)| json!({
            "mediaType": media, "size": data.len(), "digest": sha(data),
        })).collect::<Vec<_>>(),
    });
    runtime().block_on(async {
        client
            .push_blob(&reference, config.clone(), &sha(&config))
            .await
            .unwrap();
        for (data, _) in &encoded {
            client
                .push_blob(&reference, data.clone(), &sha(data))
                .await
                .unwrap();
        }
        client
            .push_manifest_raw(
                &reference,
                manifest.to_string().into_bytes(),
                axum::http::HeaderValue::from_static(
                    "application/vnd.docker.distribution.manifest.v2+json",
                ),
            )
            .await
            .unwrap();
    });
}

/// A token service for the registry's bearer-token auth: it hands signed
/// JWTs (ES256, with the signing certificate in `x5c`) to `user:password`
/// and refuses everyone else.
pub struct TokenServer {
    pub port: u16,
    pub cert: PathBuf,
    pub issued: Arc<AtomicUsize>,
}

impl TokenServer {
    pub fn start(dir: &TempDir, user: &'static str, password: &'static str) -> TokenServer {
        use base64::Engine;
        let key_pem = dir.path("token-key.pem");
        let cert = dir.path("token-cert.pem");
        let ok = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
            ])
            .args(["-nodes", "-days", "1", "-subj", "/CN=husk-test-token"])
            .arg("-keyout")
            .arg(&key_pem)
            .arg("-out")
            .arg(&cert)
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(ok.success());
        let der = |args: &[&str], input: &Path| {
            Command::new("openssl")
                .args(args)
                .arg("-in")
                .arg(input)
                .output()
                .unwrap()
                .stdout
        };
        let key_der = der(
            &["pkcs8", "-topk8", "-nocrypt", "-outform", "DER"],
            &key_pem,
        );
        let cert_der = der(&["x509", "-outform", "DER"], &cert);
        let rng = ring::rand::SystemRandom::new();
        let key = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &key_der,
            &rng,
        )
        .unwrap();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let x5c = base64::engine::general_purpose::STANDARD.encode(&cert_der);
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        );
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let issued = Arc::new(AtomicUsize::new(0));
        let count = issued.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { break };
                let mut buf = vec![0u8; 16384];
                let n = conn.read(&mut buf).unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).into_owned();
                let authorized = req.lines().any(|l| {
                    l.to_ascii_lowercase().starts_with("authorization:")
                        && l[14..].trim() == expected
                });
                let response = if authorized {
                    let scope = req
                        .split_whitespace()
                        .nth(1)
                        .and_then(|path| path.split("scope=").nth(1))
                        .and_then(|s| s.split('&').next())
                        .unwrap_or("")
                        .replace("%3A", ":")
                        .replace("%2F", "/")
                        .replace("%2C", ",");
                    let parts: Vec<&str> = scope.split(':').collect();
                    let (name, actions) = (
                        parts.get(1).copied().unwrap_or(""),
                        parts.get(2).copied().unwrap_or(""),
                    );
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_secs();
                    let header = json!({"alg": "ES256", "typ": "JWT", "x5c": [x5c]});
                    let claims = json!({
                        "iss": "husk-test-issuer", "sub": user, "aud": "husk-test-registry",
                        "exp": now + 300, "nbf": now - 10, "iat": now, "jti": format!("{now}-{n}"),
                        "access": [{"type": "repository", "name": name,
                                    "actions": actions.split(',').collect::<Vec<_>>()}],
                    });
                    let signing_input = format!(
                        "{}.{}",
                        b64.encode(header.to_string()),
                        b64.encode(claims.to_string())
                    );
                    let sig = key.sign(&rng, signing_input.as_bytes()).unwrap();
                    let token = format!("{signing_input}.{}", b64.encode(sig.as_ref()));
                    count.fetch_add(1, Ordering::SeqCst);
                    let body = json!({"token": token, "access_token": token, "expires_in": 300})
                        .to_string();
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                         Connection: close\r\n\r\n{body}",
                        body.len()
                    )
                } else {
                    "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        .into()
                };
                let _ = conn.write_all(response.as_bytes());
            }
        });
        TokenServer { port, cert, issued }
    }
}

/// A TCP proxy to the registry that cuts the first `cuts` blob downloads
/// short after `after` bytes of response.
pub struct Flaky {
    pub port: u16,
    /// Requests that asked for a byte range (resumed downloads).
    pub ranged: Arc<AtomicUsize>,
}

impl Flaky {
    pub fn start(upstream: u16, cuts: usize, after: usize) -> Flaky {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let left = Arc::new(AtomicUsize::new(cuts));
        let ranged = Arc::new(AtomicUsize::new(0));
        let seen = ranged.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(mut client) = client else { break };
                let left = left.clone();
                let seen = seen.clone();
                std::thread::spawn(move || {
                    let mut server = TcpStream::connect(("127.0.0.1", upstream)).unwrap();
                    let mut req = vec![0u8; 8192];
                    let n = client.read(&mut req).unwrap_or(0);
                    let head = String::from_utf8_lossy(&req[..n]).into_owned();
                    let is_blob = head.contains("/blobs/sha256:");
                    if head.to_ascii_lowercase().contains("\r\nrange: bytes=") {
                        seen.fetch_add(1, Ordering::SeqCst);
                    }
                    // One request per connection, so every request is seen.
                    let head = head.replacen("\r\n", "\r\nConnection: close\r\n", 1);
                    server.write_all(head.as_bytes()).unwrap();
                    let mut up = server.try_clone().unwrap();
                    let mut down = client.try_clone().unwrap();
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut down, &mut up);
                    });
                    let cut = is_blob
                        && left
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |l| l.checked_sub(1))
                            .is_ok();
                    if cut {
                        let mut buf = vec![0u8; after];
                        let mut got = 0;
                        while got < after {
                            match server.read(&mut buf[got..]) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => got += n,
                            }
                        }
                        let _ = client.write_all(&buf[..got]);
                        let _ = client.shutdown(std::net::Shutdown::Both);
                    } else {
                        let _ = std::io::copy(&mut server, &mut client);
                    }
                });
            }
        });
        Flaky { port, ranged }
    }
}
