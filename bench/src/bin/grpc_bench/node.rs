//! A `cohort serve` child process: spawn, wait until it serves, read its
//! memory, stop it.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cohort::proto::v1::query_client::QueryClient;
use cohort::proto::v1::CountRequest;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// A free TCP port on the loopback interface (bound, then released).
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Reads `VmRSS` and `VmHWM` (bytes) of process `pid`.
pub fn rss_of(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |key: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l[key.len()..].trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// CPU seconds (user + system) process `pid` has used so far, from
/// `/proc/PID/stat`; 0 when unreadable.
pub fn cpu_secs_of(pid: u32) -> f64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold
    // spaces: state is field 3, utime 14, stime 15.
    let rest = text.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (ticks(11) + ticks(12)) as f64 / hz
}

/// A running `cohort serve`.
pub struct Node {
    child: Option<Child>,
    /// Its process id.
    pub pid: u32,
    /// `127.0.0.1:PORT` of its gRPC door.
    pub grpc_addr: String,
    /// When it was spawned.
    pub spawned: Instant,
    /// The line starting with `cohort ` it printed once serving, and when.
    pub ready_line: Arc<Mutex<Option<(Instant, String)>>>,
    /// Where its standard output and error go.
    pub log: PathBuf,
}

impl Node {
    /// Spawns `cohort serve` on `data_dir` with fresh loopback ports. Its
    /// output goes to `log`.
    pub fn spawn(cohort: &Path, data_dir: &Path, shards: u32, log: &Path) -> Result<Node, String> {
        let grpc_port = free_port().map_err(|e| format!("no free port: {e}"))?;
        let mut http_port = free_port().map_err(|e| format!("no free port: {e}"))?;
        while http_port == grpc_port {
            http_port = free_port().map_err(|e| format!("no free port: {e}"))?;
        }
        let grpc_addr = format!("127.0.0.1:{grpc_port}");
        let err = File::create(log).map_err(|e| format!("creating {}: {e}", log.display()))?;
        let mut out_log = err.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = Command::new(cohort);
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--shards")
            .arg(shards.to_string())
            .arg("--grpc-addr")
            .arg(&grpc_addr)
            .arg("--http-addr")
            .arg(format!("127.0.0.1:{http_port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err));
        eprintln!("node: {cmd:?}");
        let spawned = Instant::now();
        let mut child = cmd.spawn().map_err(|e| format!("spawning {}: {e}", cohort.display()))?;
        let pid = child.id();
        let ready_line = Arc::new(Mutex::new(None));
        if let Some(stdout) = child.stdout.take() {
            let ready = ready_line.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let at = Instant::now();
                    let _ = writeln!(out_log, "{line}");
                    if line.starts_with("cohort ") {
                        eprintln!("node: {line}");
                        let mut r = ready.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                        if r.is_none() {
                            *r = Some((at, line));
                        }
                    }
                }
            });
        }
        Ok(Node { child: Some(child), pid, grpc_addr, spawned, ready_line, log: log.to_path_buf() })
    }

    /// `Err` with the exit status and the end of the log if the process has
    /// exited.
    pub fn check_alive(&mut self) -> Result<(), String> {
        let Some(child) = self.child.as_mut() else { return Err("node already stopped".into()) };
        match child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!(
                "cohort serve exited ({status}); end of {}:\n{}",
                self.log.display(),
                self.log_tail(40)
            )),
            Err(e) => Err(format!("waiting for cohort serve: {e}")),
        }
    }

    /// The last `lines` lines of the node's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let mut text = String::new();
        if let Ok(mut f) = File::open(&self.log) {
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
            let _ = f.read_to_string(&mut text);
        }
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Resident set size and its peak, bytes.
    pub fn rss(&self) -> (u64, u64) {
        rss_of(self.pid)
    }

    /// CPU seconds the node has used so far.
    pub fn cpu_secs(&self) -> f64 {
        cpu_secs_of(self.pid)
    }

    /// Waits until the health service answers SERVING for `cohort.v1.Query`
    /// and a Count at `now` succeeds; returns the time since the spawn.
    pub async fn wait_serving(&mut self, now: &str, timeout: Duration) -> Result<Duration, String> {
        let give_up = self.spawned + timeout;
        let mut last_err = String::from("not tried");
        loop {
            self.check_alive()?;
            if Instant::now() > give_up {
                return Err(format!(
                    "cohort serve did not serve within {timeout:?} (last: {last_err}); end of {}:\n{}",
                    self.log.display(),
                    self.log_tail(40)
                ));
            }
            match probe(&self.grpc_addr, now).await {
                Ok(()) => return Ok(self.spawned.elapsed()),
                Err(e) => last_err = e,
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops the node with SIGTERM and waits for it (SIGKILL after
    /// `grace`); returns how it ended.
    pub fn stop(&mut self, grace: Duration) -> String {
        let Some(mut child) = self.child.take() else { return "already stopped".into() };
        if let Ok(Some(status)) = child.try_wait() {
            return format!("had already exited: {status}");
        }
        let _ = Command::new("kill").arg("-TERM").arg(self.pid.to_string()).status();
        let until = Instant::now() + grace;
        while Instant::now() < until {
            if let Ok(Some(status)) = child.try_wait() {
                return format!("stopped by SIGTERM: {status}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let status = child.wait().map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
        format!("did not stop within {grace:?} of SIGTERM; killed: {status}")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// An endpoint for `addr` (`host:port`), with Nagle off.
pub fn endpoint(addr: &str) -> Endpoint {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("a valid URI")
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(2))
}

/// Connects a channel of its own to `addr`.
pub async fn connect(addr: &str) -> Result<Channel, String> {
    endpoint(addr).connect().await.map_err(|e| format!("connecting to {addr}: {e}"))
}

/// One readiness probe: health SERVING, then a Count of an expression that
/// compiles on any node, even an empty one (`country = "FR"` does not
/// before the first message names `country`).
async fn probe(addr: &str, now: &str) -> Result<(), String> {
    let channel = endpoint(addr).connect().await.map_err(|e| format!("connect: {e}"))?;
    let mut health = HealthClient::new(channel.clone());
    let status = health
        .check(HealthCheckRequest { service: "cohort.v1.Query".into() })
        .await
        .map_err(|s| format!("health: {s}"))?
        .into_inner()
        .status;
    if status != ServingStatus::Serving as i32 {
        return Err(format!("health: status {status}"));
    }
    let mut query = QueryClient::new(channel);
    query
        .count(CountRequest {
            expressions: vec!["user_id EXISTS".into()],
            now: now.into(),
            max_staleness_ms: 0,
            allow_partial: false,
        })
        .await
        .map_err(|s| format!("count: {s}"))?;
    Ok(())
}
