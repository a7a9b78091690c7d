//! Helpers of the process-level tests: start a real `cohort serve` on free
//! loopback ports with its own data directory, talk to it over real gRPC,
//! kill it with SIGKILL.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cohort::proto::v1 as pb;
use tonic::transport::Channel;

/// A free loopback port (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A running server process.
pub struct Server {
    pub child: Child,
    pub grpc: String,
    pub http: String,
    pub data_dir: PathBuf,
    pub shards: u32,
    pub extra: Vec<String>,
}

impl Server {
    /// Starts `cohort serve` on `data_dir` and waits until it serves.
    pub fn start(data_dir: &Path, shards: u32, extra: &[&str]) -> Server {
        let grpc = format!("127.0.0.1:{}", free_port());
        let http = format!("127.0.0.1:{}", free_port());
        let mut child = Command::new(env!("CARGO_BIN_EXE_cohort"))
            .args(["serve", "--data-dir"])
            .arg(data_dir)
            .args(["--grpc-addr", &grpc, "--http-addr", &http, "--shards", &shards.to_string()])
            .args(extra)
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
            grpc,
            http,
            data_dir: data_dir.to_path_buf(),
            shards,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        }
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
            })
            .await?;
        Ok(r.into_inner().counts)
    }

    pub async fn universe(&self) -> u64 {
        let mut c = pb::query_client::QueryClient::new(self.channel().await);
        let r = c
            .count(pb::CountRequest { expressions: vec!["user_id EXISTS".into()], now: String::new() })
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
