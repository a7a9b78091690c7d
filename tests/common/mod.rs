//! Helpers of the process-level tests: start a real `cohort serve` on free
//! loopback ports with its own data directory, talk to it over real gRPC,
//! kill it with SIGKILL.

#![allow(dead_code)]

pub mod cluster;
pub mod list_machine;
pub mod load;
pub mod sim_net;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cohort::proto::v1 as pb;
use tonic::transport::Channel;

/// A free loopback port for a node to listen on, never the same twice in
/// one test process. It is taken below the kernel's ephemeral range
/// (32768–60999 by default): a port the kernel handed out for `:0` and
/// that was released can be taken again at once as the source port of a
/// test's outgoing connection, and the node's bind then fails with
/// "address in use" (seen in CI). Each process starts at its own offset,
/// so that two test processes rarely try the same ports.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let offset = std::process::id().wrapping_mul(2_654_435_761) % SPAN;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(n < SPAN, "no free loopback port left in {LOW}..{}", LOW + SPAN);
        let port = (LOW + (offset + n) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A running server process; its gRPC client calls come from [`Client`].
pub struct Server {
    pub child: Child,
    pub client: Client,
    pub grpc: String,
    pub http: String,
    pub data_dir: PathBuf,
    pub shards: u32,
    pub extra: Vec<String>,
}

impl Server {
    /// Starts `cohort serve` on `data_dir` and waits until it serves.
    pub fn start(data_dir: &Path, shards: u32, extra: &[&str]) -> Server {
        Server::start_with_env(data_dir, shards, extra, &[])
    }

    /// Starts `cohort serve` on `data_dir` with these environment variables
    /// added, and waits until it serves.
    pub fn start_with_env(data_dir: &Path, shards: u32, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let grpc = format!("127.0.0.1:{}", free_port());
        let http = format!("127.0.0.1:{}", free_port());
        Server::start_at(data_dir, shards, &grpc, &http, extra, env)
    }

    /// Starts `cohort serve` on `data_dir` with its doors on `grpc` and
    /// `http`, and waits until it serves.
    pub fn start_at(
        data_dir: &Path,
        shards: u32,
        grpc: &str,
        http: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Server {
        let (grpc, http) = (grpc.to_string(), http.to_string());
        let mut child = Command::new(env!("CARGO_BIN_EXE_cohort"))
            .args(["serve", "--data-dir"])
            .arg(data_dir)
            .args(["--grpc-addr", &grpc, "--http-addr", &http, "--shards", &shards.to_string()])
            .args(extra)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn cohort serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("cohort ") {
                    let _ = tx.send(line.clone());
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(_) => {}
            Err(_) => {
                let _ = child.kill();
                panic!("cohort serve did not start within 60 s");
            }
        }
        Server {
            child,
            client: Client { grpc: grpc.clone() },
            grpc,
            http,
            data_dir: data_dir.to_path_buf(),
            shards,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// SIGTERM, and waits for the graceful stop (snapshots included).
    #[allow(dead_code)]
    pub fn terminate(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let _ = self.child.wait();
    }

    /// SIGKILL, no goodbye.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Kill -9 and start again on the same data directory.
    pub fn restart_after_kill(mut self) -> Server {
        self.kill9();
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        Server::start(&self.data_dir, self.shards, &extra)
    }
}

impl std::ops::Deref for Server {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

/// The gRPC calls the tests make to a node at `grpc` (`host:port`).
pub struct Client {
    pub grpc: String,
}

impl Client {
    pub async fn channel(&self) -> Channel {
        let started = Instant::now();
        loop {
            match Channel::from_shared(format!("http://{}", self.grpc)).unwrap().connect().await {
                Ok(c) => return c,
                Err(e) if started.elapsed() < Duration::from_secs(10) => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("cannot connect to {}: {e}", self.grpc),
            }
        }
    }

    pub async fn ingest(&self, messages: Vec<String>) -> Result<pb::IngestReply, tonic::Status> {
        let mut c = pb::ingest_client::IngestClient::new(self.channel().await);
        c.ingest_batch(pb::IngestBatchRequest { messages }).await.map(|r| r.into_inner())
    }

    pub async fn count(&self, exprs: &[&str]) -> Vec<u64> {
        self.try_count(exprs).await.unwrap_or_else(|e| panic!("count {exprs:?}: {e}"))
    }

    pub async fn try_count(&self, exprs: &[&str]) -> Result<Vec<u64>, tonic::Status> {
        let mut c = pb::query_client::QueryClient::new(self.channel().await);
        let r = c
            .count(pb::CountRequest {
                expressions: exprs.iter().map(|s| s.to_string()).collect(),
                now: "2026-11-01T00:00:00Z".into(),
                max_staleness_ms: 0,
                allow_partial: false,
            })
            .await?;
        Ok(r.into_inner().counts)
    }

    pub async fn universe(&self) -> u64 {
        let mut c = pb::query_client::QueryClient::new(self.channel().await);
        let r = c
            .count(pb::CountRequest {
                expressions: vec!["user_id EXISTS".into()],
                now: String::new(),
                max_staleness_ms: 0,
                allow_partial: false,
            })
            .await
            .unwrap();
        r.into_inner().universe
    }

    pub async fn check(&self, profile: &str, exprs: &[&str]) -> Result<pb::CheckReply, tonic::Status> {
        let mut c = pb::query_client::QueryClient::new(self.channel().await);
        c.check(pb::CheckRequest {
            profile: profile.into(),
            expressions: exprs.iter().map(|s| s.to_string()).collect(),
            now: "2026-11-01T00:00:00Z".into(),
        })
        .await
        .map(|r| r.into_inner())
    }

    pub async fn profile(&self, profile: &str) -> Result<pb::Profile, tonic::Status> {
        let mut c = pb::query_client::QueryClient::new(self.channel().await);
        c.get_profile(pb::GetProfileRequest { profile: profile.into(), recent_events: 100 })
            .await
            .map(|r| r.into_inner())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A trait of a profile as JSON text, if set.
pub fn trait_of(p: &pb::Profile, name: &str) -> Option<String> {
    p.traits.iter().find(|t| t.name == name).map(|t| t.value.clone())
}

/// Runs `cohort serve ARGS` with these environment variables added, which is
/// expected to refuse to start: waits up to 60 s for it to exit and returns
/// its exit status and standard error. A process still running then is
/// killed and reported as `None`.
pub fn serve_refused(args: &[&str], env: &[(&str, &str)]) -> (Option<std::process::ExitStatus>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cohort"))
        .arg("serve")
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cohort serve");
    let started = Instant::now();
    let status = loop {
        match child.try_wait().expect("wait for cohort serve") {
            Some(status) => break Some(status),
            None if started.elapsed() < Duration::from_secs(60) => {
                std::thread::sleep(Duration::from_millis(50))
            }
            None => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
    }
    (status, stderr)
}

/// One HTTP/1.1 request over `stream` (plain TCP or TLS): returns the
/// status code and the body, read as far as `Content-Length` says.
pub async fn http_exchange<S>(
    mut stream: S,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<(u16, String)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).await?;
    stream.flush().await?;
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&received[..end]).to_string();
            let length = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length").then(|| value.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if received.len() >= end + 4 + length {
                let status = head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {head}")))?;
                let body = String::from_utf8_lossy(&received[end + 4..end + 4 + length]).to_string();
                return Ok((status, body));
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, stream.read(&mut buf))
            .await
            .map_err(|_| std::io::Error::other("no complete HTTP response within 30 s"))??;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("connection closed after {} bytes, before a complete response", received.len()),
            ));
        }
        received.extend_from_slice(&buf[..n]);
    }
}

/// One HTTP/1.1 request to `addr` over plain TCP.
pub async fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<(u16, String)> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    http_exchange(stream, method, path, headers, body).await
}
