//! `cohort-cluster-bench`: a single node beside a three-node cluster, in one
//! run, with real `cohort serve` processes on loopback.
//!
//! What it measures, in this order:
//!
//! 1. **Durable ingest.** The messages of `cohort-datagen` (profiles
//!    `0..--profiles` of seed `--seed`: an `identify` with nine traits, then
//!    10–20 `track`s per profile, 10 % of them by anonymous id only) are
//!    sent with `Ingest.IngestBatch` in batches of `--batch` by `--clients`
//!    concurrent clients, each on its own connection and each sending a
//!    contiguous share (so a profile's messages keep their order). The
//!    same messages go (a) into a fresh single node, (b) into a fresh
//!    cluster with the clients spread over the three nodes (client `c` to
//!    node `c mod 3 + 1`; followers forward to the catalog's leader), and
//!    (c) into another fresh cluster with every client on the catalog's
//!    leader. The rate is messages over the time from the first send to
//!    the last reply (a reply means a quorum has the batch in its fsynced
//!    Raft log). Also reported: the nodes' CPU seconds (`/proc/PID/stat`,
//!    summed over the nodes) and the time after the last reply until every
//!    replica has applied every group's log.
//! 2. **Bytes between nodes.** `raft_bytes_sent` and `snapshot_bytes_sent`
//!    of `Admin.Status`, summed over the three nodes, after minus before
//!    each cluster ingest, over the messages ingested.
//! 3. **Count latency.** A few `Query.Count` expressions at the dataset's
//!    fixed `now`, `--query-runs` sequential runs each (after 3 warm-up
//!    runs), against the single node, the cluster's catalog leader and a
//!    follower, once the nodes have fallen quiet after the ingest; every
//!    target must give the same answers.
//! 4. **Join, rebalance and removal of a fourth node** on the cluster of
//!    (c), unless `--no-join`. The same load in four windows: Counts of the
//!    latency queries back to back on a follower of the catalog, and a
//!    light writer (batches of `--failover-batch` identifies of new users,
//!    each batch with its own `jn_batch` value, `--join-write-interval-ms`
//!    apart) through the three members in turn. First `--join-secs` of
//!    steady state; then node 4 is started with `--join` (through the other
//!    follower's Raft address, an empty data directory): it becomes a
//!    learner of the catalog group and holds no shard group. Timed until
//!    its gRPC door answers Status, until the catalog's leader has it in
//!    the catalog group (learner or voter) and until its own Status has the
//!    catalog applied up to the leader's commit index. Then, under the same
//!    load, `Admin.Rebalance` on the catalog's leader, timed until every
//!    group is placed: the placement in the nodes' Status is the reply's,
//!    and each group's voters, as its leader reports them, are its
//!    placement and its learners none (the catalog's: the active nodes
//!    outside its placement), as `cohort cluster rebalance` judges; with
//!    the replica moves of the reply, the groups node 4 is a voter of at
//!    the end, and the snapshot bytes sent during the join and during the
//!    rebalance. The load stops, every replica must apply the groups it
//!    holds and node 4 must count what the members count; last, with the
//!    load again, `Admin.SetMember { remove: true }` of node 4 (its
//!    replicas move back to the others), timed until no group in any
//!    member's Status holds it and every group is placed again, then
//!    kill -9 of node 4 and one more second of load. Count latency, failed
//!    Counts and failed writes are reported per window; every acknowledged
//!    batch must be counted exactly on every node at the end.
//! 5. **Failover**, `--rounds` times on the cluster of (c): find the
//!    catalog's leader (`Admin.Status`), start a writer that sends batches
//!    of `--failover-batch` identifies to the two other nodes in turn (each
//!    call with a `--call-timeout-ms` timeout, a failed batch is sent again
//!    at once, to the other node, with the same messageIds, until it is
//!    acknowledged), one Count prober per surviving node and a watcher of
//!    the survivors' Status (every 20 ms), kill -9 the leader, and record
//!    the time from the kill to a new catalog leader (and a live leader for
//!    every group) in a survivor's Status, to the first acknowledged write
//!    call sent after it, to the first acknowledged batch first sent after
//!    it (the batch in flight at the kill can come back earlier, as
//!    duplicates) and to the first answered Count sent after it. Failed
//!    calls are counted by phase and by answer. The writer goes on for
//!    `--after-ack-ms` after that batch, then stops; the killed node
//!    is restarted on its data directory and the round ends once every node
//!    reports every group with the same leader and the applied index at
//!    the commit index. Every failover batch carries its own value of the
//!    trait `fo_batch`; at the end every node must count each acknowledged
//!    batch's profiles exactly, and the ingest's answers must be unchanged.
//!
//! The report (markdown) is printed and, with `--out-md`, appended to a
//! file. Everything it starts is killed when it ends, also on an error or a
//! panic (a guard holds the children) and if it is killed itself (the
//! children get `PR_SET_PDEATHSIG`). The data directories and node logs go
//! to a temporary directory, removed at the end unless `--keep-dir` or a
//! failure. See `bench/README.md` and `bench/cluster_bench.sh`.
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use cohort::cluster::placement::CATALOG_GROUP;
use cohort::proto::v1::admin_client::AdminClient;
use cohort::proto::v1::ingest_client::IngestClient;
use cohort::proto::v1::query_client::QueryClient;
use cohort::proto::v1::{
    ApplySchemaRequest, CountRequest, GroupStatus, IngestBatchRequest, PlacementReply, RebalanceRequest,
    ReplicaMove, SetMemberRequest, StatusReply, StatusRequest,
};
use cohort_bench::stats::percentile;
use cohort_bench::sysinfo;
use cohort_datagen::{format_rfc3339_ms, Config, DEFAULT_NOW_MS};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// The trait types of the generated dataset (as `cohort::demo::schema`
/// declares them), applied before each ingest.
const SCHEMA_JSON: &str = r#"{"traits": {"country": "keyword", "city": "keyword", "age": "number", "plan": "keyword", "signup_at": "timestamp", "ltv": "number", "email": "text", "tags": "list", "newsletter": "bool"}}"#;

/// The Count expressions timed against each target.
const QUERIES: [(&str, &str); 4] = [
    ("keyword trait", r#"plan = "pro""#),
    ("traits and a range", r#"country = "FR" AND age BETWEEN 25 AND 34"#),
    ("event window", r#"DID "purchase" IN LAST 30 DAYS"#),
    ("event frequency", r#"DID "page" WHERE path = "/pricing" AT LEAST 2 TIMES IN LAST 90 DAYS"#),
];

/// What the Count probers ask during a failover.
const PROBE_QUERY: &str = r#"plan = "pro""#;

/// A single node beside a three-node cluster: durable ingest, bytes
/// between nodes, Count latency on leader and follower, the join,
/// rebalance and removal of a fourth node, and failover.
#[derive(Parser, Debug)]
#[command(version, about, args_override_self = true)]
struct Args {
    /// The `cohort` binary (default: `cohort` beside this binary, i.e.
    /// `target/release/cohort`).
    #[arg(long, value_name = "PATH")]
    cohort: Option<PathBuf>,
    /// Profiles of the ingested dataset (about 16 messages each).
    #[arg(long, default_value_t = 25_000)]
    profiles: u64,
    /// Dataset seed.
    #[arg(long, default_value_t = cohort_datagen::DEFAULT_SEED)]
    seed: u64,
    /// Shards of every node.
    #[arg(long, default_value_t = 8)]
    shards: u32,
    /// Concurrent ingest clients.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Messages per `IngestBatch` call of the ingest.
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Recorded runs per Count query and target.
    #[arg(long, default_value_t = 300)]
    query_runs: usize,
    /// Failover rounds (0: none).
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    /// Messages (profiles) per batch of the failover writer.
    #[arg(long, default_value_t = 20)]
    failover_batch: usize,
    /// Timeout of each call of the failover writer and probers, ms.
    #[arg(long, default_value_t = 1000)]
    call_timeout_ms: u64,
    /// Pause after a failed call of the failover writer, ms (0: retry at once).
    #[arg(long, default_value_t = 0)]
    retry_pause_ms: u64,
    /// How long the writer goes on after the first acknowledgement
    /// following a kill, ms.
    #[arg(long, default_value_t = 1000)]
    after_ack_ms: u64,
    /// Writing before the kill, ms (the writes go through the leader).
    #[arg(long, default_value_t = 300)]
    before_kill_ms: u64,
    /// Give up on a round (no acknowledged write, no convergence) after
    /// this many seconds.
    #[arg(long, default_value_t = 60)]
    round_timeout_secs: u64,
    /// Skip the join, rebalance and removal of a fourth node.
    #[arg(long)]
    no_join: bool,
    /// Steady state before the join (Counts and writes, no change), s.
    #[arg(long, default_value_t = 10)]
    join_secs: u64,
    /// Pause after each acknowledged batch of the join phase's writer, ms.
    #[arg(long, default_value_t = 50)]
    join_write_interval_ms: u64,
    /// Give up on the join phase (a node not serving, not in the catalog,
    /// a group not placed, no convergence) after this many seconds.
    #[arg(long, default_value_t = 120)]
    join_timeout_secs: u64,
    /// Parent of the temporary directory of data and logs (default: the
    /// system's temporary directory).
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// Keep the temporary directory (it is always kept after a failure).
    #[arg(long)]
    keep_dir: bool,
    /// Append the markdown report to this file.
    #[arg(long, value_name = "PATH")]
    out_md: Option<PathBuf>,
}

// ---------------------------------------------------------------- processes

/// Addresses, data directory and log of one node.
#[derive(Clone, Debug)]
struct NodeSpec {
    id: u64,
    grpc: String,
    http: String,
    raft: String,
    dir: PathBuf,
    log: PathBuf,
}

/// Node `id` of deployment `name` under `root`, on `ports` (gRPC, HTTP,
/// Raft).
fn node_spec(root: &Path, name: &str, id: u64, ports: &[u16]) -> NodeSpec {
    NodeSpec {
        id,
        grpc: format!("127.0.0.1:{}", ports[0]),
        http: format!("127.0.0.1:{}", ports[1]),
        raft: format!("127.0.0.1:{}", ports[2]),
        dir: root.join(format!("{name}-node-{id}")),
        log: root.join(format!("{name}-node-{id}.log")),
    }
}

/// `count` free loopback ports, all bound at once so that they differ,
/// then released.
fn free_ports(count: usize) -> Result<Vec<u16>, String> {
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}")))
        .collect::<Result<_, _>>()?;
    listeners.iter().map(|l| l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())).collect()
}

/// CPU seconds (user + system) process `pid` has used, from
/// `/proc/PID/stat`; 0 when unreadable.
fn cpu_secs_of(pid: u32) -> f64 {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = text.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (ticks(11) + ticks(12)) as f64 / hz
}

/// The `cohort serve` processes of one deployment (a single node or a
/// cluster). Dropping it kills every child it still holds.
struct Fleet {
    name: String,
    cohort: PathBuf,
    root: PathBuf,
    shards: u32,
    /// The founding nodes, `specs[..founders]` (started with `--peer`);
    /// the specs after them are nodes that join (`--join`).
    founders: usize,
    specs: Vec<NodeSpec>,
    children: BTreeMap<u64, Child>,
}

impl Fleet {
    /// Plans `nodes` nodes (1: a single node without peers) under
    /// `root/name`, on fresh loopback ports; starts none.
    fn plan(cohort: &Path, root: &Path, name: &str, nodes: u64, shards: u32) -> Result<Fleet, String> {
        let ports = free_ports(3 * nodes as usize)?;
        let specs = (1..=nodes)
            .map(|id| {
                let i = 3 * (id - 1) as usize;
                node_spec(root, name, id, &ports[i..i + 3])
            })
            .collect();
        Ok(Fleet {
            name: name.to_string(),
            cohort: cohort.to_path_buf(),
            root: root.to_path_buf(),
            shards,
            founders: nodes as usize,
            specs,
            children: BTreeMap::new(),
        })
    }

    /// Plans the next node, which will join the running fleet (fresh
    /// loopback ports, a new data directory), and starts it with `--join
    /// via` (a member's Raft address); returns its id.
    fn spawn_joining(&mut self, via: &str) -> Result<u64, String> {
        let id = self.specs.len() as u64 + 1;
        let ports = free_ports(3)?;
        self.specs.push(node_spec(&self.root, &self.name, id, &ports));
        self.start(id, Some(via))?;
        Ok(id)
    }

    /// Forgets node `id`, the last joined one, once it is stopped (it was
    /// removed from the cluster): the fleet is its founders and the other
    /// joined nodes again.
    fn forget(&mut self, id: u64) -> Result<(), String> {
        if self.children.contains_key(&id) || self.specs.last().map(|s| s.id) != Some(id) {
            return Err(format!("node {id} is still running or not the last joined node"));
        }
        if (id as usize) <= self.founders {
            return Err(format!("node {id} is a founding node"));
        }
        self.specs.pop();
        Ok(())
    }

    fn spec(&self, id: u64) -> &NodeSpec {
        &self.specs[(id - 1) as usize]
    }

    fn ids(&self) -> Vec<u64> {
        self.specs.iter().map(|s| s.id).collect()
    }

    fn addr(&self, id: u64) -> String {
        self.spec(id).grpc.clone()
    }

    /// CPU seconds used so far by the live nodes, summed.
    fn cpu_secs(&self) -> f64 {
        self.children.values().map(|c| cpu_secs_of(c.id())).sum()
    }

    /// Spawns node `id` (on its data directory; its log is appended to).
    fn spawn(&mut self, id: u64) -> Result<(), String> {
        self.start(id, None)
    }

    /// Spawns node `id`: a founding node with every founder as `--peer`
    /// (none on a single node), or with `join` a node that joins through
    /// that Raft address.
    fn start(&mut self, id: u64, join: Option<&str>) -> Result<(), String> {
        let spec = self.spec(id).clone();
        let log = File::options()
            .create(true)
            .append(true)
            .open(&spec.log)
            .map_err(|e| format!("opening {}: {e}", spec.log.display()))?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = Command::new(&self.cohort);
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(&spec.dir)
            .args(["--grpc-addr", &spec.grpc, "--http-addr", &spec.http])
            .args(["--shards", &self.shards.to_string()]);
        if let Some(via) = join {
            cmd.args(["--node-id", &id.to_string(), "--raft-addr", &spec.raft, "--join", via]);
        } else if self.founders > 1 {
            cmd.args(["--node-id", &id.to_string(), "--raft-addr", &spec.raft]);
            for p in &self.specs[..self.founders] {
                cmd.arg("--peer").arg(format!("{}={},{}", p.id, p.raft, p.grpc));
            }
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::from(log)).stderr(Stdio::from(log2));
        // SAFETY: prctl is async-signal-safe and touches nothing of the
        // parent's state; it only asks the kernel to SIGKILL the child when
        // the thread that spawned it (always the main thread) ends.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| format!("spawning {}: {e}", self.cohort.display()))?;
        eprintln!("[{}] node {id} started, pid {} (gRPC {})", self.name, child.id(), spec.grpc);
        self.children.insert(id, child);
        Ok(())
    }

    /// kill -9 of node `id`, then waits for it to be gone.
    fn kill9(&mut self, id: u64) -> Result<(), String> {
        let mut child = self.children.remove(&id).ok_or(format!("node {id} is not running"))?;
        child.kill().map_err(|e| format!("kill -9 of node {id}: {e}"))?;
        child.wait().map_err(|e| format!("waiting for node {id}: {e}"))?;
        Ok(())
    }

    /// `Err` with the end of its log if node `id` has exited.
    fn check_alive(&mut self, id: u64) -> Result<(), String> {
        let Some(child) = self.children.get_mut(&id) else { return Err(format!("node {id} is not running")) };
        match child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!(
                "[{}] node {id} exited ({status}); end of {}:\n{}",
                self.name,
                self.spec(id).log.display(),
                self.log_tail(id, 30)
            )),
            Err(e) => Err(format!("waiting for node {id}: {e}")),
        }
    }

    /// The last `lines` lines of node `id`'s log.
    fn log_tail(&self, id: u64, lines: usize) -> String {
        let mut text = String::new();
        if let Ok(mut f) = File::open(&self.spec(id).log) {
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
            let _ = f.read_to_string(&mut text);
        }
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Kills every live node.
    fn kill_all(&mut self) {
        for (id, mut child) in std::mem::take(&mut self.children) {
            let _ = child.kill();
            let _ = child.wait();
            eprintln!("[{}] node {id} stopped", self.name);
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// The temporary directory; removed on drop unless kept.
struct TempRoot {
    path: PathBuf,
    keep: Arc<AtomicBool>,
}

impl Drop for TempRoot {
    fn drop(&mut self) {
        if self.keep.load(Ordering::SeqCst) {
            eprintln!("kept {} (data directories and node logs)", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

// ---------------------------------------------------------------- gRPC

fn endpoint(addr: &str, connect_timeout: Duration) -> Endpoint {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("a valid URI")
        .tcp_nodelay(true)
        .connect_timeout(connect_timeout)
}

async fn connect(addr: &str) -> Result<Channel, String> {
    endpoint(addr, Duration::from_secs(2)).connect().await.map_err(|e| format!("connecting to {addr}: {e}"))
}

/// `Admin.Status` of `addr`, within `timeout`.
async fn status(addr: &str, timeout: Duration) -> Result<StatusReply, String> {
    let call = async {
        let mut admin = AdminClient::new(endpoint(addr, timeout).connect().await.map_err(|e| e.to_string())?);
        admin.status(StatusRequest {}).await.map(|r| r.into_inner()).map_err(|s| s.to_string())
    };
    tokio::time::timeout(timeout, call).await.map_err(|_| "timed out".to_string())?
}

/// The Count of `expressions` at `now` on a connected client.
async fn count(q: &mut QueryClient<Channel>, expressions: &[&str], now: &str) -> Result<Vec<u64>, String> {
    let request = CountRequest {
        expressions: expressions.iter().map(|e| e.to_string()).collect(),
        now: now.into(),
        ..CountRequest::default()
    };
    Ok(q.count(request).await.map_err(|s| format!("Count: {s}"))?.into_inner().counts)
}

/// Waits until node `id` answers health SERVING for `cohort.v1.Query` and
/// a Count; returns the time waited.
async fn wait_serving(fleet: &mut Fleet, id: u64, timeout: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    let addr = fleet.addr(id);
    let mut last = String::from("not tried");
    loop {
        fleet.check_alive(id)?;
        if start.elapsed() > timeout {
            return Err(format!(
                "[{}] node {id} did not serve within {timeout:?} (last: {last}); end of its log:\n{}",
                fleet.name,
                fleet.log_tail(id, 30)
            ));
        }
        let probe = async {
            let channel =
                endpoint(&addr, Duration::from_millis(500)).connect().await.map_err(|e| e.to_string())?;
            let reply = HealthClient::new(channel.clone())
                .check(HealthCheckRequest { service: "cohort.v1.Query".into() })
                .await
                .map_err(|s| format!("health: {s}"))?
                .into_inner();
            if reply.status != ServingStatus::Serving as i32 {
                return Err(format!("health: status {}", reply.status));
            }
            count(&mut QueryClient::new(channel), &["user_id EXISTS"], "").await.map(|_| ())
        };
        match tokio::time::timeout(Duration::from_secs(1), probe).await {
            Ok(Ok(())) => return Ok(start.elapsed()),
            Ok(Err(e)) => last = e,
            Err(_) => last = "timed out".into(),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The catalog's leader and its term as `reply` sees it (0: none known).
fn catalog_leader_of(reply: &StatusReply) -> (u64, u64) {
    reply.groups.iter().find(|g| g.group_id == 1).map_or((0, 0), |g| (g.leader_id, g.term))
}

/// The catalog's leader as the live nodes see it: the one of the highest
/// term, once known.
async fn catalog_leader(fleet: &Fleet, timeout: Duration) -> Result<u64, String> {
    let start = Instant::now();
    loop {
        let mut best = (0u64, 0u64);
        for id in fleet.children.keys() {
            if let Ok(reply) = status(&fleet.addr(*id), Duration::from_secs(1)).await {
                let (leader, term) = catalog_leader_of(&reply);
                if leader != 0 && term >= best.1 {
                    best = (leader, term);
                }
            }
        }
        if best.0 != 0 {
            return Ok(best.0);
        }
        if start.elapsed() > timeout {
            return Err(format!("[{}] no catalog leader known within {timeout:?}", fleet.name));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The Status of every node of the fleet (all must answer).
async fn statuses(fleet: &Fleet) -> Result<BTreeMap<u64, StatusReply>, String> {
    let mut out = BTreeMap::new();
    for id in fleet.ids() {
        let reply =
            status(&fleet.addr(id), Duration::from_secs(2)).await.map_err(|e| format!("node {id}: {e}"))?;
        out.insert(id, reply);
    }
    Ok(out)
}

/// Whether every node reports every group with one leader and its
/// applied index at the highest commit index any node reports; `Err`
/// describes what is not yet so.
fn converged(all: &BTreeMap<u64, StatusReply>, groups: usize) -> Result<(), String> {
    let mut by_group: BTreeMap<u64, Vec<(u64, u64, u64, u64)>> = BTreeMap::new();
    for (id, reply) in all {
        if reply.groups.len() != groups {
            return Err(format!("node {id} reports {} groups, not {groups}", reply.groups.len()));
        }
        for g in &reply.groups {
            by_group.entry(g.group_id).or_default().push((*id, g.leader_id, g.commit_index, g.applied_index));
        }
    }
    for (gid, views) in by_group {
        let commit = views.iter().map(|v| v.2).max().unwrap_or(0);
        let leader = views[0].1;
        if leader == 0 || views.iter().any(|v| v.1 != leader || v.3 != commit) {
            return Err(format!("group {gid}: (node, leader, commit, applied) {views:?}"));
        }
    }
    Ok(())
}

/// Waits until [`converged`] holds on every node of the fleet; returns
/// the time waited.
async fn wait_converged(fleet: &mut Fleet, timeout: Duration) -> Result<Duration, String> {
    wait_for_fleet(fleet, timeout, "not caught up", converged).await
}

/// Polls every node's Status every 20 ms until `check` (given the
/// statuses and the number of groups) holds; fails with `what` and the
/// last reason after `timeout`, or at once when a node died.
async fn wait_for_fleet(
    fleet: &mut Fleet,
    timeout: Duration,
    what: &str,
    check: fn(&BTreeMap<u64, StatusReply>, usize) -> Result<(), String>,
) -> Result<Duration, String> {
    let start = Instant::now();
    let groups = fleet.shards as usize + 1;
    loop {
        for id in fleet.ids() {
            fleet.check_alive(id)?;
        }
        let last = match statuses(fleet).await {
            Ok(all) => match check(&all, groups) {
                Ok(()) => return Ok(start.elapsed()),
                Err(e) => e,
            },
            Err(e) => e,
        };
        if start.elapsed() > timeout {
            return Err(format!("[{}] {what} within {timeout:?}: {last}", fleet.name));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn apply_schema(addr: &str) -> Result<(), String> {
    let mut admin = AdminClient::new(connect(addr).await?);
    admin
        .apply_schema(ApplySchemaRequest { json: SCHEMA_JSON.into() })
        .await
        .map_err(|s| format!("ApplySchema on {addr}: {s}"))?;
    Ok(())
}

// ---------------------------------------------------------------- the dataset

/// The generated messages, in profile order.
struct Dataset {
    messages: Vec<String>,
    profiles: u64,
    identifies: u64,
    anonymous_tracks: u64,
    bytes: u64,
}

fn generate(cfg: &Config) -> Dataset {
    let mut buf = Vec::new();
    let mut anonymous_tracks = 0;
    for i in 0..cfg.profiles {
        let p = cohort_datagen::profile(cfg, i);
        anonymous_tracks += p.events.iter().filter(|e| e.anonymous_only).count() as u64;
        cohort_datagen::write_ndjson(&p, &mut buf);
    }
    let text = String::from_utf8(buf).expect("the generator writes UTF-8");
    let messages: Vec<String> = text.lines().filter(|l| !l.is_empty()).map(str::to_string).collect();
    let bytes = messages.iter().map(|m| m.len() as u64).sum();
    Dataset { messages, profiles: cfg.profiles, identifies: cfg.profiles, anonymous_tracks, bytes }
}

// ---------------------------------------------------------------- ingest

/// One ingest run.
#[derive(Default, Debug)]
struct IngestRun {
    label: String,
    targets: String,
    messages: u64,
    wall: Duration,
    applied: u64,
    duplicates: u64,
    rejections: u64,
    batch_ns: Vec<u64>,
    cpu_secs: f64,
    /// After the last reply, until every replica applied every group.
    settle: Option<Duration>,
    raft_messages: u64,
    raft_bytes: u64,
    snapshot_bytes: u64,
    dropped: u64,
    /// Groups led per node once the ingest is done.
    leaders: String,
}

impl IngestRun {
    fn rate(&self) -> f64 {
        self.messages as f64 / self.wall.as_secs_f64().max(1e-9)
    }
}

/// Sends `messages` in batches of `batch` with one client per entry of
/// `targets` (gRPC addresses), each a contiguous share.
async fn ingest(messages: &[String], batch: usize, targets: &[String]) -> Result<IngestRun, String> {
    let batches: Vec<Vec<String>> = messages.chunks(batch.max(1)).map(<[String]>::to_vec).collect();
    let n = batches.len();
    let clients = targets.len().max(1);
    let mut shares: Vec<Vec<Vec<String>>> = (0..clients).map(|_| Vec::new()).collect();
    for (i, b) in batches.into_iter().enumerate() {
        shares[i * clients / n.max(1)].push(b);
    }
    let mut conns = Vec::new();
    for addr in targets {
        conns.push(IngestClient::new(connect(addr).await?).max_encoding_message_size(usize::MAX));
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (mut client, share) in conns.into_iter().zip(shares) {
        tasks.push(tokio::spawn(async move {
            let mut r = IngestRun::default();
            for messages in share {
                let len = messages.len() as u64;
                let t0 = Instant::now();
                let reply = client
                    .ingest_batch(IngestBatchRequest { messages })
                    .await
                    .map_err(|s| {
                        format!("IngestBatch (after {} batches of this client): {s}", r.batch_ns.len())
                    })?
                    .into_inner();
                r.batch_ns.push(t0.elapsed().as_nanos() as u64);
                r.messages += len;
                r.applied += reply.applied;
                r.duplicates += reply.duplicates;
                r.rejections += reply.rejections.len() as u64;
            }
            Ok::<IngestRun, String>(r)
        }));
    }
    let mut total = IngestRun::default();
    let mut first_err = None;
    for t in tasks {
        match t.await {
            Ok(Ok(r)) => {
                total.messages += r.messages;
                total.applied += r.applied;
                total.duplicates += r.duplicates;
                total.rejections += r.rejections;
                total.batch_ns.extend(r.batch_ns);
            }
            Ok(Err(e)) => first_err = first_err.or(Some(e)),
            Err(e) => first_err = first_err.or(Some(format!("ingest task: {e}"))),
        }
    }
    total.wall = start.elapsed();
    match first_err {
        Some(e) => Err(e),
        None => Ok(total),
    }
}

/// Groups led by each node, as `all` reports them (`n1 9, n2 0, n3 0`):
/// a group's leader is the one of the highest term a node names (a node
/// that holds no replica of a group may name an old one).
fn leaders_of(all: &BTreeMap<u64, StatusReply>) -> String {
    let views = group_views(all);
    let leaders: Vec<u64> = views.values().map(|v| leader_conf(v).0).collect();
    all.keys()
        .map(|id| format!("n{id} {}", leaders.iter().filter(|l| *l == id).count()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Starts `fleet` (every node at once), waits until all serve, a catalog
/// leader is known and every group has converged, and applies the schema.
async fn bring_up(fleet: &mut Fleet) -> Result<Duration, String> {
    let start = Instant::now();
    for id in fleet.ids() {
        fleet.spawn(id)?;
    }
    for id in fleet.ids() {
        wait_serving(fleet, id, Duration::from_secs(60)).await?;
    }
    wait_converged(fleet, Duration::from_secs(60)).await?;
    let leader = catalog_leader(fleet, Duration::from_secs(30)).await?;
    apply_schema(&fleet.addr(leader)).await?;
    wait_converged(fleet, Duration::from_secs(60)).await?;
    Ok(start.elapsed())
}

/// One ingest of `data` into the running `fleet`, the clients on
/// `targets`, with the Status counters before and after.
async fn measured_ingest(
    fleet: &mut Fleet,
    data: &Dataset,
    batch: usize,
    label: &str,
    targets: Vec<u64>,
) -> Result<IngestRun, String> {
    let before = statuses(fleet).await?;
    let cpu0 = fleet.cpu_secs();
    let addrs: Vec<String> = targets.iter().map(|id| fleet.addr(*id)).collect();
    eprintln!(
        "[{}] ingest {label}: {} messages, clients on nodes {targets:?}",
        fleet.name,
        data.messages.len()
    );
    let mut run = ingest(&data.messages, batch, &addrs).await?;
    let settle = wait_converged(fleet, Duration::from_secs(120)).await?;
    run.cpu_secs = fleet.cpu_secs() - cpu0;
    if fleet.specs.len() > 1 {
        run.settle = Some(settle);
    }
    let after = statuses(fleet).await?;
    let sum = |m: &BTreeMap<u64, StatusReply>, f: fn(&StatusReply) -> u64| m.values().map(f).sum::<u64>();
    run.raft_messages = sum(&after, |s| s.raft_messages_sent) - sum(&before, |s| s.raft_messages_sent);
    run.raft_bytes = sum(&after, |s| s.raft_bytes_sent) - sum(&before, |s| s.raft_bytes_sent);
    run.snapshot_bytes = sum(&after, |s| s.snapshot_bytes_sent) - sum(&before, |s| s.snapshot_bytes_sent);
    run.dropped = sum(&after, |s| s.raft_messages_dropped) - sum(&before, |s| s.raft_messages_dropped);
    run.leaders = leaders_of(&after);
    run.label = label.to_string();
    run.targets = describe_targets(&targets);
    eprintln!(
        "[{}] ingest {label}: {:.0} msg/s ({} applied, {} duplicates, {} rejections), settled in {:?}",
        fleet.name,
        run.rate(),
        run.applied,
        run.duplicates,
        run.rejections,
        settle
    );
    if run.applied + run.duplicates != run.messages || run.duplicates != 0 {
        return Err(format!(
            "ingest {label}: {} messages sent, {} applied, {} duplicates",
            run.messages, run.applied, run.duplicates
        ));
    }
    Ok(run)
}

/// `client → node` as a short text (`4 → n1`, `n1, n2, n3, n1`).
fn describe_targets(targets: &[u64]) -> String {
    if targets.windows(2).all(|w| w[0] == w[1]) {
        format!("{} → n{}", targets.len(), targets.first().copied().unwrap_or(0))
    } else {
        targets.iter().map(|t| format!("n{t}")).collect::<Vec<_>>().join(", ")
    }
}

// ---------------------------------------------------------------- queries

/// Waits until the fleet's nodes together use less than a tenth of a core
/// over 250 ms (background work after an ingest: snapshots, compaction),
/// at most `max`; returns the time waited.
async fn quiesce(fleet: &Fleet, max: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let c0 = fleet.cpu_secs();
        tokio::time::sleep(Duration::from_millis(250)).await;
        if (fleet.cpu_secs() - c0) / 0.25 < 0.1 || start.elapsed() > max {
            return start.elapsed();
        }
    }
}

/// Latencies (ns) and the answer of each query of [`QUERIES`] on one target.
struct QueryRun {
    target: String,
    samples: Vec<Vec<u64>>,
    answers: Vec<u64>,
}

async fn query_latency(addr: &str, target: &str, runs: usize, now: &str) -> Result<QueryRun, String> {
    let mut q = QueryClient::new(connect(addr).await?);
    let mut samples = Vec::new();
    let mut answers = Vec::new();
    for (name, expr) in QUERIES {
        let first = count(&mut q, &[expr], now).await.map_err(|e| format!("{target}, {name}: {e}"))?[0];
        for _ in 0..2 {
            count(&mut q, &[expr], now).await?;
        }
        let mut ns = Vec::with_capacity(runs);
        for _ in 0..runs {
            let t0 = Instant::now();
            let got = count(&mut q, &[expr], now).await?[0];
            ns.push(t0.elapsed().as_nanos() as u64);
            if got != first {
                return Err(format!("{target}, {name}: the count changed from {first} to {got}"));
            }
        }
        samples.push(ns);
        answers.push(first);
    }
    Ok(QueryRun { target: target.to_string(), samples, answers })
}

// ---------------------------------------------------------------- failover

/// What the writer and the probers saw in a round.
#[derive(Default)]
struct RoundLog {
    /// Acknowledged batches: (batch number, call start, call end, node,
    /// duplicates in the reply, start of the batch's first call).
    acks: Vec<(u64, Instant, Instant, u64, u64, Instant)>,
    /// Failed write calls: (start, end, node, error).
    write_failures: Vec<(Instant, Instant, u64, String)>,
    /// Answered Counts: (node, start, end).
    counts: Vec<(u64, Instant, Instant)>,
    /// Failed Counts: (node, start, error).
    count_failures: Vec<(u64, Instant, String)>,
    /// Status of a survivor: (when answered, a catalog leader other than
    /// the killed node known, every group led by another node).
    views: Vec<(Instant, bool, bool)>,
}

type Shared = Arc<Mutex<RoundLog>>;

fn lock(log: &Shared) -> std::sync::MutexGuard<'_, RoundLog> {
    log.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A writer's messages of batch `b`: identifies of new users
/// `{prefix}{b}-{k}`, each with the batch's own `{prefix}_batch` value
/// (`fo` for the failover writer, [`JOIN_PREFIX`] for the join phase's).
fn writer_batch(prefix: &str, b: u64, size: usize, round: usize) -> Vec<String> {
    (0..size)
        .map(|k| {
            format!(
                r#"{{"type":"identify","messageId":"{prefix}-m{b}-{k}","userId":"{prefix}{b}-{k}","timestamp":"2026-10-31T12:00:00.000Z","traits":{{"{prefix}_batch":"b{b}","{prefix}_round":{round}}}}}"#
            )
        })
        .collect()
}

/// The failover writer's prefix of user ids, message ids and traits.
const FAILOVER_PREFIX: &str = "fo";

struct WriterCfg {
    /// Each call goes to the next of these, in turn.
    targets: Vec<(u64, IngestClient<Channel>)>,
    next_batch: Arc<AtomicU64>,
    /// See [`writer_batch`].
    prefix: &'static str,
    size: usize,
    round: usize,
    timeout: Duration,
    /// After a failed call.
    pause: Duration,
    /// After an acknowledged batch (0: the next one at once).
    interval: Duration,
    stop: Arc<AtomicBool>,
    abort: Arc<AtomicBool>,
    log: Shared,
}

/// Sends batches to the targets in turn until `stop`, each until it is
/// acknowledged (or `abort`).
async fn writer(mut w: WriterCfg) {
    let mut turn = 0usize;
    while !w.stop.load(Ordering::SeqCst) {
        let b = w.next_batch.fetch_add(1, Ordering::SeqCst);
        let messages = writer_batch(w.prefix, b, w.size, w.round);
        let first_sent = Instant::now();
        loop {
            if w.abort.load(Ordering::SeqCst) {
                return;
            }
            let slot = turn % w.targets.len();
            let (node, client) = &mut w.targets[slot];
            let node = *node;
            turn += 1;
            let start = Instant::now();
            let call = client.ingest_batch(IngestBatchRequest { messages: messages.clone() });
            let result = match tokio::time::timeout(w.timeout, call).await {
                Ok(Ok(reply)) => {
                    let r = reply.into_inner();
                    if r.rejections.is_empty() && r.applied + r.duplicates == w.size as u64 {
                        Ok(r.duplicates)
                    } else {
                        Err(format!("unexpected reply {r:?}"))
                    }
                }
                Ok(Err(s)) => Err(format!("{:?}: {}", s.code(), s.message())),
                Err(_) => Err("timed out".into()),
            };
            let end = Instant::now();
            match result {
                Ok(duplicates) => {
                    lock(&w.log).acks.push((b, start, end, node, duplicates, first_sent));
                    if !w.interval.is_zero() {
                        tokio::time::sleep(w.interval).await;
                    }
                    break;
                }
                Err(e) => {
                    lock(&w.log).write_failures.push((start, end, node, e));
                    if !w.pause.is_zero() {
                        tokio::time::sleep(w.pause).await;
                    }
                }
            }
        }
    }
}

/// Counts [`PROBE_QUERY`] on one node until `stop`, a new call at once
/// after a failure and 5 ms after an answer.
async fn prober(
    node: u64,
    mut q: QueryClient<Channel>,
    timeout: Duration,
    now: String,
    stop: Arc<AtomicBool>,
    log: Shared,
) {
    while !stop.load(Ordering::SeqCst) {
        let start = Instant::now();
        match tokio::time::timeout(timeout, count(&mut q, &[PROBE_QUERY], &now)).await {
            Ok(Ok(_)) => {
                lock(&log).counts.push((node, start, Instant::now()));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok(Err(e)) => lock(&log).count_failures.push((node, start, e)),
            Err(_) => lock(&log).count_failures.push((node, start, "timed out".into())),
        }
    }
}

/// Polls `Admin.Status` of the survivors every 20 ms until `stop`, noting
/// whether each sees the catalog, and every group, led by a node other
/// than `killed`.
async fn watcher(survivors: Vec<String>, killed: u64, stop: Arc<AtomicBool>, log: Shared) {
    while !stop.load(Ordering::SeqCst) {
        for addr in &survivors {
            if let Ok(reply) = status(addr, Duration::from_millis(500)).await {
                let led = |g: &cohort::proto::v1::GroupStatus| g.leader_id != 0 && g.leader_id != killed;
                let catalog = reply.groups.iter().any(|g| g.group_id == 1 && led(g));
                let all = !reply.groups.is_empty() && reply.groups.iter().all(led);
                lock(&log).views.push((Instant::now(), catalog, all));
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One failover round's figures.
#[derive(Debug)]
struct Round {
    killed: u64,
    new_leader: u64,
    /// From the kill until a survivor's Status names a new catalog leader,
    /// and until it names a live leader for every group.
    catalog_elected: Duration,
    all_elected: Duration,
    /// From the kill to the first acknowledged call sent after it (which
    /// may be the batch in flight at the kill, answered as duplicates).
    first_write: Duration,
    /// From the kill to the first acknowledged batch first sent after it.
    first_new: Duration,
    first_count: Duration,
    /// The slower survivor's first answered Count.
    both_count: Duration,
    failed_writes: usize,
    /// Failed write calls sent before the kill, between the kill and the
    /// first acknowledged new batch, and after it.
    failed_split: [usize; 3],
    /// Acknowledged batches sent before the kill and after it.
    acked_split: [usize; 2],
    /// The longest time between two acknowledgements from the first new
    /// batch's on.
    stall_after: Duration,
    failed_counts: usize,
    /// Retries whose reply says the batch was already there (an earlier
    /// failed call of it had been applied).
    duplicate_retries: u64,
    acked: usize,
    /// From the restart until the node serves, and until every group
    /// converged.
    restart_serving: Duration,
    restart_caught_up: Duration,
    /// Groups led per node once the round converged.
    leaders_after: String,
    /// Failed write calls by kind (code and message, digits as `N`).
    error_kinds: BTreeMap<String, usize>,
}

/// A failure's kind: its text with addresses and numbers folded.
fn error_kind(e: &str) -> String {
    let mut out = String::new();
    let mut last_digit = false;
    for c in e.chars().take(120) {
        if c.is_ascii_digit() {
            if !last_digit {
                out.push('N');
            }
            last_digit = true;
        } else if !(last_digit && (c == '.' || c == ':')) {
            out.push(c);
            last_digit = false;
        }
    }
    out
}

async fn failover_round(
    fleet: &mut Fleet,
    args: &Args,
    round: usize,
    next_batch: &Arc<AtomicU64>,
    acked: &mut Vec<u64>,
    now: &str,
) -> Result<Round, String> {
    let timeout = Duration::from_millis(args.call_timeout_ms);
    let give_up = Duration::from_secs(args.round_timeout_secs);
    let killed = catalog_leader(fleet, give_up).await?;
    let survivors: Vec<u64> = fleet.ids().into_iter().filter(|&id| id != killed).collect();
    let log: Shared = Arc::default();
    let (stop, abort, stop_probes) =
        (Arc::new(AtomicBool::new(false)), Arc::default(), Arc::new(AtomicBool::new(false)));
    let mut targets = Vec::new();
    let mut probes = Vec::new();
    for &id in &survivors {
        let channel = endpoint(&fleet.addr(id), timeout).connect_lazy();
        targets.push((id, IngestClient::new(channel.clone())));
        let q = QueryClient::new(channel);
        probes.push(tokio::spawn(prober(id, q, timeout, now.to_string(), stop_probes.clone(), log.clone())));
    }
    let w = WriterCfg {
        targets,
        next_batch: next_batch.clone(),
        prefix: FAILOVER_PREFIX,
        size: args.failover_batch,
        round,
        timeout,
        pause: Duration::from_millis(args.retry_pause_ms),
        interval: Duration::ZERO,
        stop: stop.clone(),
        abort: Arc::clone(&abort),
        log: log.clone(),
    };
    let writer_task = tokio::spawn(writer(w));
    let survivor_addrs: Vec<String> = survivors.iter().map(|id| fleet.addr(*id)).collect();
    let watch_task = tokio::spawn(watcher(survivor_addrs, killed, stop_probes.clone(), log.clone()));
    tokio::time::sleep(Duration::from_millis(args.before_kill_ms)).await;
    let before = lock(&log).acks.len();
    if before == 0 {
        eprintln!("round {round}: no write acknowledged in the {} ms before the kill", args.before_kill_ms);
    }

    fleet.kill9(killed)?;
    let t_kill = Instant::now();
    let kill_wall = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    // Until a new batch (first sent after the kill) is acknowledged and a
    // Count sent after the kill answered on each survivor, then
    // `after_ack_ms` more.
    let mut outcome: Result<(), String> = Ok(());
    let (mut first_write, mut first_new) = (None, None);
    loop {
        {
            let l = lock(&log);
            if first_write.is_none() {
                first_write = l.acks.iter().find(|a| a.1 >= t_kill).map(|a| a.2 - t_kill);
            }
            if first_new.is_none() {
                first_new = l.acks.iter().find(|a| a.5 >= t_kill).map(|a| a.2 - t_kill);
            }
            let counted = survivors.iter().all(|s| l.counts.iter().any(|c| c.0 == *s && c.1 >= t_kill));
            if let Some(fw) = first_new {
                if counted && t_kill.elapsed() >= fw + Duration::from_millis(args.after_ack_ms) {
                    break;
                }
            }
        }
        if t_kill.elapsed() > give_up {
            let l = lock(&log);
            outcome = Err(format!(
                "round {round}: after killing node {killed}, {} writes failed and {} acknowledged after the kill \
                 within {give_up:?}; last failure: {:?}",
                l.write_failures.iter().filter(|f| f.0 >= t_kill).count(),
                l.acks.iter().filter(|a| a.1 >= t_kill).count(),
                l.write_failures.last().map(|f| (f.2, f.3.clone()))
            ));
            abort.store(true, Ordering::SeqCst);
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let _ = writer_task.await;
    stop_probes.store(true, Ordering::SeqCst);
    for p in probes {
        let _ = p.await;
    }
    let _ = watch_task.await;
    let l = std::mem::take(&mut *lock(&log));
    acked.extend(l.acks.iter().map(|a| a.0));
    outcome?;

    let after = |s: u64| l.counts.iter().filter(|c| c.0 == s && c.1 >= t_kill).map(|c| c.2 - t_kill).min();
    let per_survivor: Vec<Duration> = survivors.iter().filter_map(|s| after(*s)).collect();
    let seen = |f: fn(&(Instant, bool, bool)) -> bool| {
        l.views.iter().filter(|v| v.0 >= t_kill && f(v)).map(|v| v.0 - t_kill).min().unwrap_or_default()
    };
    let mut error_kinds: BTreeMap<String, usize> = BTreeMap::new();
    for f in &l.write_failures {
        let when = if f.0 < t_kill { "in flight at the kill: " } else { "" };
        *error_kinds.entry(format!("{when}{}", error_kind(&f.3))).or_default() += 1;
    }
    let new_leader = catalog_leader(fleet, give_up).await?;

    // The killed node comes back on its data directory.
    fleet.spawn(killed)?;
    let t_restart = Instant::now();
    wait_serving(fleet, killed, give_up).await?;
    let restart_serving = t_restart.elapsed();
    wait_converged(fleet, give_up).await?;
    let restart_caught_up = t_restart.elapsed();
    let leaders_after = leaders_of(&statuses(fleet).await?);

    // A write that waited long after the recovery: the calls around it,
    // to read beside the node logs.
    let first_ack_at = t_kill + first_write.unwrap_or_default();
    let mut calls: Vec<(Instant, Instant, u64, String)> = l
        .acks
        .iter()
        .map(|a| (a.1, a.2, a.3, format!("acknowledged (duplicates {})", a.4)))
        .chain(l.write_failures.iter().cloned())
        .filter(|c| c.1 >= first_ack_at)
        .collect();
    calls.sort_by_key(|c| c.0);
    if calls.windows(2).any(|w| w[1].1 - w[0].1 > Duration::from_millis(800)) {
        eprintln!(
            "round {round}: a write waited over 800 ms after the first acknowledgement; kill at {}; calls since \
             (start..end ms after the kill, node, answer):",
            format_rfc3339_ms(kill_wall)
        );
        for (start, end, node, what) in calls.iter().take(12) {
            eprintln!("  {:.0}..{:.0} n{node} {what}", ms(*start - t_kill), ms(*end - t_kill));
        }
    }

    let r = Round {
        killed,
        new_leader,
        catalog_elected: seen(|v| v.1),
        all_elected: seen(|v| v.2),
        first_write: first_write.unwrap_or_default(),
        first_new: first_new.unwrap_or_default(),
        first_count: per_survivor.iter().min().copied().unwrap_or_default(),
        both_count: per_survivor.iter().max().copied().unwrap_or_default(),
        failed_writes: l.write_failures.len(),
        failed_split: {
            let first_ack = t_kill + first_new.unwrap_or_default();
            let before = l.write_failures.iter().filter(|f| f.0 < t_kill).count();
            let after = l.write_failures.iter().filter(|f| f.0 >= first_ack).count();
            [before, l.write_failures.len() - before - after, after]
        },
        stall_after: {
            let from = t_kill + first_new.unwrap_or_default();
            let ends: Vec<Instant> = l.acks.iter().filter(|a| a.2 >= from).map(|a| a.2).collect();
            ends.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default()
        },
        acked_split: {
            let before = l.acks.iter().filter(|a| a.1 < t_kill).count();
            [before, l.acks.len() - before]
        },
        failed_counts: l.count_failures.len(),
        duplicate_retries: l.acks.iter().map(|a| a.4).filter(|&d| d > 0).count() as u64,
        acked: l.acks.len(),
        restart_serving,
        restart_caught_up,
        leaders_after,
        error_kinds,
    };
    eprintln!(
        "round {round}: killed n{killed} → leader n{new_leader}; catalog led after {:.0} ms, every group {:.0} ms, \
         first write {:.0} ms, new batch {:.0} ms, first count {:.0} ms, {} failed writes, {} acked; restart \
         serving {:.2} s, caught up {:.2} s",
        ms(r.catalog_elected),
        ms(r.all_elected),
        ms(r.first_write),
        ms(r.first_new),
        ms(r.first_count),
        r.failed_writes,
        r.acked,
        r.restart_serving.as_secs_f64(),
        r.restart_caught_up.as_secs_f64()
    );
    Ok(r)
}

/// The final check of a writer's batches on one node: every acknowledged
/// batch counts `size` profiles, and `{prefix}_batch EXISTS` counts them
/// all.
async fn check_acknowledged(
    addr: &str,
    prefix: &str,
    acked: &[u64],
    size: usize,
    now: &str,
) -> Result<(u64, Vec<String>), String> {
    let mut q = QueryClient::new(connect(addr).await?);
    let mut problems = Vec::new();
    for chunk in acked.chunks(200) {
        let exprs: Vec<String> = chunk.iter().map(|b| format!(r#"{prefix}_batch = "b{b}""#)).collect();
        let refs: Vec<&str> = exprs.iter().map(String::as_str).collect();
        let counts = count(&mut q, &refs, now).await?;
        for (b, c) in chunk.iter().zip(counts) {
            if c != size as u64 {
                problems.push(format!("batch b{b}: {c} profiles, not {size}"));
            }
        }
    }
    let total = count(&mut q, &[&format!("{prefix}_batch EXISTS")], now).await?[0];
    Ok((total, problems))
}

// ---------------------------------------------------------------- join

/// The join phase writer's prefix of user ids, message ids and traits.
const JOIN_PREFIX: &str = "jn";

/// Counts the expressions of [`QUERIES`] in turn on node `node`, back to
/// back, until `stop`. An answer other than `expected` (the ingest's
/// counts: the writers' users have none of those traits) is logged as a
/// failed Count; after a failure the next call waits 5 ms.
async fn count_loop(
    node: u64,
    mut q: QueryClient<Channel>,
    timeout: Duration,
    now: String,
    expected: Vec<u64>,
    stop: Arc<AtomicBool>,
    log: Shared,
) {
    let mut k = 0usize;
    while !stop.load(Ordering::SeqCst) {
        let (name, expr) = QUERIES[k % QUERIES.len()];
        let want = expected[k % QUERIES.len()];
        k += 1;
        let start = Instant::now();
        let failure = match tokio::time::timeout(timeout, count(&mut q, &[expr], &now)).await {
            Ok(Ok(got)) if got.first() == Some(&want) => None,
            Ok(Ok(got)) => Some(format!("wrong answer to {name}: {got:?}, expected [{want}]")),
            Ok(Err(e)) => Some(e),
            Err(_) => Some("timed out".to_string()),
        };
        match failure {
            None => lock(&log).counts.push((node, start, Instant::now())),
            Some(e) => {
                lock(&log).count_failures.push((node, start, e));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
}

/// The load of the join phase: Counts back to back on one member
/// ([`count_loop`]) and a [`writer`] through the members in turn, both
/// logging into one [`RoundLog`].
struct Load {
    stop: Arc<AtomicBool>,
    abort: Arc<AtomicBool>,
    writer: tokio::task::JoinHandle<()>,
    counter: tokio::task::JoinHandle<()>,
    log: Shared,
}

impl Load {
    /// Starts the Count loop on `count_node` and the writer through
    /// `members`; the writer numbers its batches from `next_batch`.
    fn start(
        fleet: &Fleet,
        args: &Args,
        members: &[u64],
        count_node: u64,
        next_batch: &Arc<AtomicU64>,
        now: &str,
        expected: &[u64],
    ) -> Load {
        let timeout = Duration::from_millis(args.call_timeout_ms);
        let log: Shared = Arc::default();
        let (stop, abort) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let targets = members
            .iter()
            .map(|&id| (id, IngestClient::new(endpoint(&fleet.addr(id), timeout).connect_lazy())))
            .collect();
        let w = WriterCfg {
            targets,
            next_batch: next_batch.clone(),
            prefix: JOIN_PREFIX,
            size: args.failover_batch,
            round: 0,
            timeout,
            pause: Duration::from_millis(args.retry_pause_ms),
            interval: Duration::from_millis(args.join_write_interval_ms),
            stop: stop.clone(),
            abort: abort.clone(),
            log: log.clone(),
        };
        let writer = tokio::spawn(writer(w));
        let q = QueryClient::new(endpoint(&fleet.addr(count_node), timeout).connect_lazy());
        let counter = tokio::spawn(count_loop(
            count_node,
            q,
            timeout,
            now.to_string(),
            expected.to_vec(),
            stop.clone(),
            log.clone(),
        ));
        Load { stop, abort, writer, counter, log }
    }

    /// Stops the load and returns what it saw. The writer's batch in flight
    /// is sent until it is acknowledged, for at most `give_up`; a batch
    /// given up is logged as a failed write.
    async fn stop(self, give_up: Duration) -> RoundLog {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.counter.await;
        let mut writer = self.writer;
        if tokio::time::timeout(give_up, &mut writer).await.is_err() {
            self.abort.store(true, Ordering::SeqCst);
            let _ = writer.await;
            let now = Instant::now();
            lock(&self.log).write_failures.push((
                now,
                now,
                0,
                format!("the writer gave up on its last batch, unacknowledged after {give_up:?}"),
            ));
        }
        std::mem::take(&mut *lock(&self.log))
    }
}

/// The load's figures over one window of the join phase: the calls sent
/// from `from` to `to`.
struct LoadWindow {
    label: &'static str,
    length: Duration,
    /// Latency of each answered Count, ns.
    count_ns: Vec<u64>,
    /// Failed Counts and failed write calls, by kind ([`error_kind`]).
    failed_counts: BTreeMap<String, usize>,
    failed_writes: BTreeMap<String, usize>,
    /// Batches acknowledged (their last call sent in the window).
    acked_batches: usize,
}

impl LoadWindow {
    fn of(log: &RoundLog, label: &'static str, from: Instant, to: Instant) -> LoadWindow {
        let inside = |t: Instant| t >= from && t < to;
        let mut failed_counts: BTreeMap<String, usize> = BTreeMap::new();
        for f in log.count_failures.iter().filter(|f| inside(f.1)) {
            eprintln!("[join] {label}: failed Count on n{}: {}", f.0, f.2);
            *failed_counts.entry(error_kind(&f.2)).or_default() += 1;
        }
        let mut failed_writes: BTreeMap<String, usize> = BTreeMap::new();
        for f in log.write_failures.iter().filter(|f| inside(f.0)) {
            eprintln!("[join] {label}: failed write call to n{}: {}", f.2, f.3);
            *failed_writes.entry(error_kind(&f.3)).or_default() += 1;
        }
        LoadWindow {
            label,
            length: to - from,
            count_ns: log
                .counts
                .iter()
                .filter(|c| inside(c.1))
                .map(|c| (c.2 - c.1).as_nanos() as u64)
                .collect(),
            failed_counts,
            failed_writes,
            acked_batches: log.acks.iter().filter(|a| inside(a.1)).count(),
        }
    }

    fn failed_counts(&self) -> usize {
        self.failed_counts.values().sum()
    }

    fn failed_writes(&self) -> usize {
        self.failed_writes.values().sum()
    }
}

/// The join phase's figures.
struct JoinRun {
    /// The catalog's leader when the phase began, the follower the Counts
    /// went to, the follower node `joiner` joined through.
    leader: u64,
    count_node: u64,
    joined_through: u64,
    joiner: u64,
    /// `profiles` and `replication_factor` of the leader's Status before
    /// the join.
    profiles: u64,
    replication_factor: u32,
    /// Once the groups were placed and node `joiner` counted what the
    /// members count: (node, `profiles`, `memory_bytes`) of each node's
    /// Status.
    data: Vec<(u64, u64, u64)>,
    /// Steady state, the join, the rebalance, the removal, after it.
    windows: Vec<LoadWindow>,
    /// How far node `joiner` got, from its spawn.
    catalog_join: CatalogJoin,
    /// The member `Admin.Rebalance` was sent to and the replica moves of
    /// its reply.
    rebalanced_on: u64,
    moves: Vec<ReplicaMove>,
    /// From the `Rebalance` call until its reply, and until every group
    /// was placed ([`unplaced`]) as the reply's placement has it.
    rebalance_answered: Duration,
    placed: Duration,
    /// Once placed: the groups whose voters (as their leaders have them)
    /// include node `joiner`, and the voters per node over every group.
    joiner_voter_of: usize,
    voters_per_node: BTreeMap<u64, usize>,
    /// Sums over the nodes of `snapshot_bytes_sent` from before the spawn
    /// until node `joiner` caught up with the catalog, and from then until
    /// every group was placed; `raft_bytes_sent` over both.
    join_snapshot_bytes: u64,
    rebalance_snapshot_bytes: u64,
    raft_bytes: u64,
    /// After the load stopped, until every replica applied the groups it
    /// holds, then until the joiner counted what the members count.
    caught_up: Duration,
    same_counts: Duration,
    /// From `SetMember { remove }` until its reply, until no group in any
    /// member's Status holds the node, until every group was placed on
    /// the others again, and, after its kill and the load, until the three
    /// nodes converged.
    remove_answered: Duration,
    removed_everywhere: Duration,
    placed_without: Duration,
    converged_after: Duration,
    /// Groups led per node once placed (before the removal) and at the end.
    leaders_joined: String,
    leaders_after: String,
}

/// The Counts of the final check of the join phase: the latency queries,
/// the identified profiles and the join writer's users.
fn join_check_expressions() -> Vec<String> {
    let mut exprs: Vec<String> = QUERIES.iter().map(|q| q.1.to_string()).collect();
    exprs.push("user_id EXISTS".into());
    exprs.push(format!("{JOIN_PREFIX}_batch EXISTS"));
    exprs
}

/// The Status of each of `members`, if each answers with every group;
/// `Err` says which did not.
async fn member_groups(fleet: &Fleet, members: &[u64]) -> Result<Vec<(u64, StatusReply)>, String> {
    let groups = fleet.shards as usize + 1;
    let mut out = Vec::new();
    for &m in members {
        let reply = status(&fleet.addr(m), Duration::from_secs(1)).await.map_err(|e| format!("n{m}: {e}"))?;
        if reply.groups.len() != groups {
            return Err(format!("n{m} reports {} groups, not {groups}", reply.groups.len()));
        }
        out.push((m, reply));
    }
    Ok(out)
}

/// Whether every group in each of `replies` satisfies `holds`; `Err` names
/// the first that does not, with its voters and learners.
fn every_group(replies: &[(u64, StatusReply)], holds: impl Fn(&GroupStatus) -> bool) -> Result<(), String> {
    for (m, reply) in replies {
        if let Some(g) = reply.groups.iter().find(|g| !holds(g)) {
            return Err(format!("n{m} {}: voters {:?}, learners {:?}", g.name, g.voters, g.learners));
        }
    }
    Ok(())
}

/// The Status of every node of the fleet, each asked within 1 s; a node
/// of `optional` that does not answer is left out, any other fails it.
async fn live_statuses(fleet: &Fleet, optional: &[u64]) -> Result<BTreeMap<u64, StatusReply>, String> {
    let mut out = BTreeMap::new();
    for id in fleet.ids() {
        match status(&fleet.addr(id), Duration::from_secs(1)).await {
            Ok(reply) => {
                out.insert(id, reply);
            }
            Err(_) if optional.contains(&id) => {}
            Err(e) => return Err(format!("n{id}: {e}")),
        }
    }
    Ok(out)
}

/// Each group's views, by group id: (node, the group as that node's
/// Status has it).
type GroupViews = BTreeMap<u64, Vec<(u64, GroupStatus)>>;

fn group_views(all: &BTreeMap<u64, StatusReply>) -> GroupViews {
    let mut groups = GroupViews::new();
    for (id, reply) in all {
        for g in &reply.groups {
            groups.entry(g.group_id).or_default().push((*id, g.clone()));
        }
    }
    groups
}

/// A group's leader (0: none known) and its (voters, learners) as that
/// leader has them: the leader is the one of the highest term any view
/// names; without its view, the view of the highest commit index counts
/// (a node that holds no replica of a group has an empty or old
/// configuration of it), as `cohort cluster status` judges.
fn leader_conf(views: &[(u64, GroupStatus)]) -> (u64, Vec<u64>, Vec<u64>) {
    let leader = views
        .iter()
        .filter(|(_, g)| g.leader_id != 0)
        .max_by_key(|(_, g)| g.term)
        .map_or(0, |v| v.1.leader_id);
    let conf = views
        .iter()
        .find(|(id, _)| *id == leader)
        .or(views.iter().max_by_key(|(_, g)| g.commit_index))
        .map(|(_, g)| (sorted_ids(&g.voters), sorted_ids(&g.learners)))
        .unwrap_or_default();
    (leader, conf.0, conf.1)
}

fn sorted_ids(ids: &[u64]) -> Vec<u64> {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids
}

/// The placement (wanted voters by group id) and the active members, as
/// the node that applied the most of the catalog has them.
fn placement_of(all: &BTreeMap<u64, StatusReply>) -> (BTreeMap<u64, Vec<u64>>, Vec<u64>) {
    let catalog_applied = |r: &StatusReply| {
        r.groups.iter().find(|g| g.group_id == CATALOG_GROUP).map_or(0, |g| g.applied_index)
    };
    let Some(reference) = all.values().max_by_key(|r| catalog_applied(r)) else { return Default::default() };
    let placed = reference.groups.iter().map(|g| (g.group_id, sorted_ids(&g.placed))).collect();
    let active: Vec<u64> =
        reference.nodes.iter().filter(|n| n.state == "active").map(|n| n.node_id).collect();
    (placed, sorted_ids(&active))
}

/// The groups not placed yet, each with what its leader has and what the
/// placement wants (as `cohort cluster rebalance` judges): a group is
/// placed when its voters, as its leader has them, are its placement and
/// its learners none, or for the catalog the active members not among its
/// placement (they follow it as learners).
fn unplaced(all: &BTreeMap<u64, StatusReply>) -> Vec<String> {
    let (placement, active) = placement_of(all);
    let mut pending = Vec::new();
    for (gid, views) in group_views(all) {
        let Some(placed) = placement.get(&gid).filter(|p| !p.is_empty()) else {
            pending.push(format!("group {gid} has no placement"));
            continue;
        };
        let (_, voters, learners) = leader_conf(&views);
        let want_learners: Vec<u64> = if gid == CATALOG_GROUP {
            active.iter().copied().filter(|id| !placed.contains(id)).collect()
        } else {
            Vec::new()
        };
        if voters != *placed || learners != want_learners {
            pending
                .push(format!("group {gid} has {voters:?}+{learners:?}, wants {placed:?}+{want_learners:?}"));
        }
    }
    pending
}

/// Voters per node over every group, as the groups' leaders have them.
fn voters_per_node(all: &BTreeMap<u64, StatusReply>) -> BTreeMap<u64, usize> {
    let mut load: BTreeMap<u64, usize> = all.keys().map(|id| (*id, 0)).collect();
    for views in group_views(all).values() {
        for id in leader_conf(views).1 {
            *load.entry(id).or_default() += 1;
        }
    }
    load
}

/// Whether every replica of every group (its voters and learners as its
/// leader has them) reports that leader and its applied index at the
/// highest commit index the replicas report; `Err` describes what is not
/// yet so. Unlike [`converged`], a node's view of a group it holds no
/// replica of does not count.
fn settled(all: &BTreeMap<u64, StatusReply>, groups: usize) -> Result<(), String> {
    for (id, reply) in all {
        if reply.groups.len() != groups {
            return Err(format!("node {id} reports {} groups, not {groups}", reply.groups.len()));
        }
    }
    for (gid, views) in group_views(all) {
        let (leader, voters, learners) = leader_conf(&views);
        let replicas: Vec<&GroupStatus> = views
            .iter()
            .filter(|(id, _)| voters.contains(id) || learners.contains(id))
            .map(|(_, g)| g)
            .collect();
        let commit = replicas.iter().map(|g| g.commit_index).max().unwrap_or(0);
        if leader == 0
            || replicas.len() != voters.len() + learners.len()
            || replicas.iter().any(|g| g.leader_id != leader || g.applied_index != commit)
        {
            let seen: Vec<(u64, u64, u64)> = views
                .iter()
                .filter(|(id, _)| voters.contains(id) || learners.contains(id))
                .map(|(id, g)| (*id, g.leader_id, g.applied_index))
                .collect();
            return Err(format!(
                "group {gid}: leader n{leader}, replicas {voters:?}+{learners:?}, commit {commit}, (node, leader, \
                 applied) {seen:?}"
            ));
        }
    }
    Ok(())
}

/// Waits until [`settled`] holds on every node of the fleet; returns the
/// time waited.
async fn wait_settled(fleet: &mut Fleet, timeout: Duration) -> Result<Duration, String> {
    wait_for_fleet(fleet, timeout, "the replicas did not catch up", settled).await
}

/// How far a joining node got, each as the first time since its spawn it
/// was seen.
#[derive(Clone, Copy, Debug)]
struct CatalogJoin {
    /// Its gRPC door answers `Admin.Status`.
    serving: Duration,
    /// The catalog's leader has it in the catalog group, as a learner or a
    /// voter.
    in_catalog: Duration,
    /// Besides, its own Status has the catalog applied up to the commit
    /// index the leader reported a moment before (its snapshot is in).
    caught_up: Duration,
}

impl CatalogJoin {
    /// The end of the join: it serves and has caught up with the catalog.
    fn done(&self) -> Duration {
        self.serving.max(self.caught_up)
    }
}

/// Polls the Status of every node every 20 ms from `spawned` on until node
/// `joiner` serves, is in the catalog group and has caught up with it
/// (see [`CatalogJoin`]).
async fn wait_in_catalog(
    fleet: &mut Fleet,
    joiner: u64,
    spawned: Instant,
    give_up: Duration,
) -> Result<CatalogJoin, String> {
    let (mut serving, mut in_catalog, mut caught_up) = (None, None, None);
    loop {
        fleet.check_alive(joiner)?;
        // The members answer first (the joiner has the highest id), so the
        // leader's commit index is from before the joiner's applied index.
        let looked = live_statuses(fleet, &[joiner]).await;
        let at = spawned.elapsed();
        let pending = match looked {
            Ok(all) => {
                if serving.is_none() && all.contains_key(&joiner) {
                    serving = Some(at);
                }
                let views = group_views(&all);
                let catalog = views.get(&CATALOG_GROUP).map_or(&[][..], Vec::as_slice);
                let (leader, voters, learners) = leader_conf(catalog);
                let held = voters.contains(&joiner) || learners.contains(&joiner);
                if in_catalog.is_none() && held {
                    in_catalog = Some(at);
                }
                let of = |node: u64| catalog.iter().find(|(id, _)| *id == node).map(|(_, g)| g);
                let leader_commit = of(leader).map(|g| g.commit_index);
                let joiner_applied = of(joiner).map(|g| g.applied_index);
                if caught_up.is_none() && held && joiner_applied >= leader_commit && leader_commit.is_some() {
                    caught_up = Some(at);
                }
                if let (Some(serving), Some(in_catalog), Some(caught_up)) = (serving, in_catalog, caught_up) {
                    return Ok(CatalogJoin { serving, in_catalog, caught_up });
                }
                format!(
                    "n{joiner} {}; the catalog's leader n{leader} has voters {voters:?}, learners {learners:?}; \
                     n{joiner} applied {joiner_applied:?} of the leader's commit {leader_commit:?}",
                    if serving.is_some() { "serves" } else { "does not answer Status" }
                )
            }
            Err(e) => e,
        };
        if at > give_up {
            return Err(format!(
                "[{}] node {joiner} not in the catalog group within {give_up:?} (pending: {pending}); end of its \
                 log:\n{}",
                fleet.name,
                fleet.log_tail(joiner, 30)
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `Admin.Rebalance` on `addr`.
async fn rebalance(addr: &str, timeout: Duration) -> Result<PlacementReply, String> {
    let call = async {
        let mut admin = AdminClient::new(connect(addr).await?);
        admin
            .rebalance(RebalanceRequest {})
            .await
            .map(|r| r.into_inner())
            .map_err(|s| format!("Rebalance on {addr}: {s}"))
    };
    tokio::time::timeout(timeout, call).await.map_err(|_| format!("Rebalance on {addr}: timed out"))?
}

/// Polls the Status of every node every 20 ms until the placement the
/// nodes report is `wanted`'s and every group is placed ([`unplaced`]);
/// returns the time since `from`.
async fn wait_rebalanced(
    fleet: &mut Fleet,
    wanted: &PlacementReply,
    from: Instant,
    give_up: Duration,
) -> Result<Duration, String> {
    let wanted: BTreeMap<u64, Vec<u64>> =
        wanted.groups.iter().map(|g| (g.group_id, sorted_ids(&g.voters))).collect();
    loop {
        for id in fleet.ids() {
            fleet.check_alive(id)?;
        }
        let looked = live_statuses(fleet, &[]).await;
        let at = from.elapsed();
        let pending = match looked {
            Ok(all) => {
                let (placement, _) = placement_of(&all);
                let mut pending: Vec<String> = wanted
                    .iter()
                    .filter(|(gid, voters)| placement.get(gid) != Some(voters))
                    .map(|(gid, voters)| {
                        format!(
                            "group {gid}: the Status placement {:?}, the reply's {voters:?}",
                            placement.get(gid)
                        )
                    })
                    .collect();
                pending.extend(unplaced(&all));
                if pending.is_empty() {
                    return Ok(at);
                }
                pending.join("; ")
            }
            Err(e) => e,
        };
        if at > give_up {
            return Err(format!("[{}] not placed {give_up:?} after the rebalance: {pending}", fleet.name));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls every 20 ms until no group in any member's Status holds node
/// `removed` (as a voter or a learner) and every group is placed
/// ([`unplaced`], node `removed` neither active nor in the placement; its
/// Status is used while it answers); returns, each as the first time since
/// `from` it was seen, (no group holds it, every group placed).
async fn wait_removed(
    fleet: &Fleet,
    members: &[u64],
    removed: u64,
    from: Instant,
    give_up: Duration,
) -> Result<(Duration, Duration), String> {
    let (mut gone, mut placed) = (None, None);
    loop {
        let looked = member_groups(fleet, members).await;
        let at = from.elapsed();
        let holds_not = |g: &GroupStatus| !g.voters.contains(&removed) && !g.learners.contains(&removed);
        let held = looked.and_then(|replies| every_group(&replies, holds_not));
        if gone.is_none() && held.is_ok() {
            gone = Some(at);
        }
        let looked = live_statuses(fleet, &[removed]).await;
        let at_placed = from.elapsed();
        let unsettled = looked.map(|all| {
            let (placement, active) = placement_of(&all);
            let mut pending = unplaced(&all);
            if active.contains(&removed) {
                pending.push(format!("n{removed} is still active"));
            }
            pending.extend(
                placement
                    .iter()
                    .filter(|(_, voters)| voters.contains(&removed))
                    .map(|(gid, voters)| format!("group {gid} is placed on {voters:?}")),
            );
            pending
        });
        if placed.is_none() && unsettled.as_ref().is_ok_and(Vec::is_empty) {
            placed = Some(at_placed);
        }
        if let (Some(gone), Some(placed)) = (gone, placed) {
            return Ok((gone, placed));
        }
        if at_placed > give_up {
            return Err(format!(
                "[{}] {give_up:?} after the removal of node {removed}: {}; {}",
                fleet.name,
                held.err().unwrap_or_else(|| "no group holds it".into()),
                match unsettled {
                    Ok(pending) if pending.is_empty() => "every group placed".to_string(),
                    Ok(pending) => pending.join("; "),
                    Err(e) => e,
                }
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Counts [`join_check_expressions`] on every node of the fleet until all
/// give the answers of `reference`, at most `give_up`; returns the time
/// waited and the answers.
async fn wait_same_counts(
    fleet: &Fleet,
    reference: u64,
    now: &str,
    give_up: Duration,
) -> Result<(Duration, Vec<u64>), String> {
    let start = Instant::now();
    let exprs = join_check_expressions();
    let refs: Vec<&str> = exprs.iter().map(String::as_str).collect();
    loop {
        let mut answers = BTreeMap::new();
        for id in fleet.ids() {
            let mut q = QueryClient::new(connect(&fleet.addr(id)).await?);
            answers.insert(id, count(&mut q, &refs, now).await.map_err(|e| format!("node {id}: {e}"))?);
        }
        let want = answers[&reference].clone();
        if answers.values().all(|a| *a == want) {
            return Ok((start.elapsed(), want));
        }
        if start.elapsed() > give_up {
            return Err(format!(
                "[{}] the nodes still count differently after {give_up:?} ({exprs:?}): {answers:?}",
                fleet.name
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `Admin.SetMember { node_id, remove: true }` on `addr`.
async fn remove_member(addr: &str, node_id: u64, timeout: Duration) -> Result<(), String> {
    let call = async {
        let mut admin = AdminClient::new(connect(addr).await?);
        let request =
            SetMemberRequest { node_id, raft_addr: String::new(), grpc_addr: String::new(), remove: true };
        admin.set_member(request).await.map(|_| ()).map_err(|s| format!("SetMember on {addr}: {s}"))
    };
    tokio::time::timeout(timeout, call).await.map_err(|_| format!("SetMember on {addr}: timed out"))?
}

/// What [`join_and_rebalance`] saw.
struct JoinAndRebalance {
    joiner: u64,
    catalog_join: CatalogJoin,
    /// The Status of every node once the joiner caught up with the catalog
    /// (just before the rebalance), and once every group was placed.
    joined: BTreeMap<u64, StatusReply>,
    placed_statuses: BTreeMap<u64, StatusReply>,
    rebalanced_on: u64,
    /// When the `Rebalance` call was sent, its reply, and the times from
    /// then until the reply and until every group was placed.
    rebalancing: Instant,
    reply: PlacementReply,
    rebalance_answered: Duration,
    placed: Duration,
}

/// Starts a node that joins `fleet` through member `through`'s Raft
/// address, waits until it is in the catalog group ([`wait_in_catalog`]),
/// then sends `Admin.Rebalance` to the catalog's leader and waits until
/// every group is placed ([`wait_rebalanced`]). Times are from `spawned`,
/// and from the `Rebalance` call; `before` is every node's Status from
/// before the spawn (for the snapshot bytes the join sent).
async fn join_and_rebalance(
    fleet: &mut Fleet,
    through: u64,
    before: &BTreeMap<u64, StatusReply>,
    spawned: Instant,
    give_up: Duration,
) -> Result<JoinAndRebalance, String> {
    let via = fleet.spec(through).raft.clone();
    let joiner = fleet.spawn_joining(&via)?;
    eprintln!("[join] node {joiner} started with --join {via} (n{through}'s Raft address)");
    let catalog_join = wait_in_catalog(fleet, joiner, spawned, give_up).await?;
    let joined = statuses(fleet).await?;
    eprintln!(
        "[join] n{joiner} serving after {:.0} ms, in the catalog after {:.0} ms, caught up with it after {:.0} ms; \
         {:.1} MB of snapshots sent",
        ms(catalog_join.serving),
        ms(catalog_join.in_catalog),
        ms(catalog_join.caught_up),
        (snapshot_bytes_sent(&joined) - snapshot_bytes_sent(before)) as f64 / 1e6
    );
    let rebalanced_on = catalog_leader(fleet, give_up).await?;
    let rebalancing = Instant::now();
    let reply = rebalance(&fleet.addr(rebalanced_on), give_up).await?;
    let rebalance_answered = rebalancing.elapsed();
    eprintln!(
        "[join] Rebalance on n{rebalanced_on} answered after {:.0} ms: {} replica moves ({})",
        ms(rebalance_answered),
        reply.moves.len(),
        describe_moves(&reply.moves)
    );
    let placed = wait_rebalanced(fleet, &reply, rebalancing, give_up).await?;
    let placed_statuses = statuses(fleet).await?;
    Ok(JoinAndRebalance {
        joiner,
        catalog_join,
        joined,
        placed_statuses,
        rebalanced_on,
        rebalancing,
        reply,
        rebalance_answered,
        placed,
    })
}

/// `snapshot_bytes_sent` summed over the nodes of `all`.
fn snapshot_bytes_sent(all: &BTreeMap<u64, StatusReply>) -> u64 {
    all.values().map(|s| s.snapshot_bytes_sent).sum()
}

/// Replica moves as a short text (`group 2 n1 → n4, group 5 n3 → n4`).
fn describe_moves(moves: &[ReplicaMove]) -> String {
    if moves.is_empty() {
        return "none".into();
    }
    moves
        .iter()
        .map(|m| format!("group {} n{} → n{}", m.group_id, m.from_node, m.to_node))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Voters per node as a short text (`n1 7, n2 7, n3 7, n4 6`).
fn describe_voters(load: &BTreeMap<u64, usize>) -> String {
    load.iter().map(|(id, n)| format!("n{id} {n}")).collect::<Vec<_>>().join(", ")
}

/// The join, rebalance and removal of a fourth node on the running
/// three-node `fleet`, under load (see the module's documentation, 4).
/// `universe` holds the ingest's answers to [`QUERIES`]; what is checked
/// is added to `checks`, what is wrong to `failures`.
async fn join_phase(
    fleet: &mut Fleet,
    args: &Args,
    now: &str,
    universe: &[u64],
    checks: &mut Vec<String>,
    failures: &mut Vec<String>,
) -> Result<JoinRun, String> {
    let give_up = Duration::from_secs(args.join_timeout_secs);
    let warm_up = Duration::from_millis(200);
    let members = fleet.ids();
    let groups = args.shards as usize + 1;
    wait_converged(fleet, give_up).await?;
    let leader = catalog_leader(fleet, give_up).await?;
    let followers: Vec<u64> = members.iter().copied().filter(|&id| id != leader).collect();
    let (count_node, joined_through) = (followers[0], followers[followers.len() - 1]);
    let next_batch = Arc::new(AtomicU64::new(0));
    let mut acked: Vec<u64> = Vec::new();
    let mut windows = Vec::new();
    eprintln!(
        "[join] catalog leader n{leader}; Counts on n{count_node}; {} s of steady state",
        args.join_secs
    );

    // Steady state.
    let load = Load::start(fleet, args, &members, count_node, &next_batch, now, universe);
    tokio::time::sleep(warm_up).await;
    let from = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.join_secs)).await;
    let to = Instant::now();
    let log = load.stop(give_up).await;
    acked.extend(log.acks.iter().map(|a| a.0));
    windows.push(LoadWindow::of(&log, "steady state", from, to));

    // The join, then the rebalance, under one load.
    let before = statuses(fleet).await?;
    let (profiles, replication_factor) = (before[&leader].profiles, before[&leader].replication_factor);
    let load = Load::start(fleet, args, &members, count_node, &next_batch, now, universe);
    tokio::time::sleep(warm_up).await;
    let spawned = Instant::now();
    let outcome = join_and_rebalance(fleet, joined_through, &before, spawned, give_up).await;
    let log = load.stop(give_up).await;
    acked.extend(log.acks.iter().map(|a| a.0));
    let moved = outcome?;
    let joiner = moved.joiner;
    let joiner_addr = fleet.addr(joiner);
    let catalog_join = moved.catalog_join;
    windows.push(LoadWindow::of(&log, "during the join", spawned, spawned + catalog_join.done()));
    windows.push(LoadWindow::of(
        &log,
        "during the rebalance",
        moved.rebalancing,
        moved.rebalancing + moved.placed,
    ));
    let join_snapshot_bytes = snapshot_bytes_sent(&moved.joined) - snapshot_bytes_sent(&before);
    let rebalance_snapshot_bytes =
        snapshot_bytes_sent(&moved.placed_statuses) - snapshot_bytes_sent(&moved.joined);
    let raft_bytes_sent = |m: &BTreeMap<u64, StatusReply>| m.values().map(|s| s.raft_bytes_sent).sum::<u64>();
    let raft_bytes = raft_bytes_sent(&moved.placed_statuses) - raft_bytes_sent(&before);
    let load_placed = voters_per_node(&moved.placed_statuses);
    let joiner_voter_of = load_placed.get(&joiner).copied().unwrap_or(0);
    eprintln!(
        "[join] rebalance of {} replica moves placed after {:.0} ms; n{joiner} voter of {joiner_voter_of} of \
         {groups} groups (voters per node: {}); {:.1} MB of snapshots sent",
        moved.reply.moves.len(),
        ms(moved.placed),
        describe_voters(&load_placed),
        rebalance_snapshot_bytes as f64 / 1e6
    );

    // Every replica settles and node 4 counts what the members count.
    let caught_up = wait_settled(fleet, give_up).await?;
    let (same_counts, answers) = wait_same_counts(fleet, leader, now, give_up).await?;
    let joined = statuses(fleet).await?;
    let leaders_joined = leaders_of(&joined);
    // A node drops a replica moved away from it once it has applied its
    // removal, within its membership interval (300 ms): the data per node
    // is read a second later.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let data: Vec<(u64, u64, u64)> =
        statuses(fleet).await?.iter().map(|(id, s)| (*id, s.profiles, s.memory_bytes)).collect();
    let expected_users = (acked.len() * args.failover_batch) as u64;
    let (total, problems) =
        check_acknowledged(&joiner_addr, JOIN_PREFIX, &acked, args.failover_batch, now).await?;
    checks.push(format!(
        "Node n{joiner} once placed counts what the members count ({:?} for the latency queries, {} identified \
         profiles, {} join-writer users); {} of {} acknowledged batches count their {} profiles on it, \
         `{JOIN_PREFIX}_batch EXISTS` {} (expected {}).",
        &answers[..QUERIES.len()],
        thousands(answers[QUERIES.len()]),
        thousands(answers[QUERIES.len() + 1]),
        acked.len() - problems.len(),
        acked.len(),
        args.failover_batch,
        thousands(total),
        thousands(expected_users)
    ));
    if answers[..QUERIES.len()] != *universe || !problems.is_empty() || total != expected_users {
        failures.push(format!(
            "node n{joiner} after its join: latency queries {:?} (ingest {universe:?}); {} of {} batches wrong \
             (first: {:?}); {JOIN_PREFIX}_batch EXISTS {total}, expected {expected_users}",
            &answers[..QUERIES.len()],
            problems.len(),
            acked.len(),
            problems.iter().take(5).collect::<Vec<_>>()
        ));
    }
    if moved.reply.moves.is_empty() || joiner_voter_of == 0 {
        failures.push(format!(
            "the rebalance onto n{joiner} moved {} replicas; n{joiner} is a voter of {joiner_voter_of} groups",
            moved.reply.moves.len()
        ));
    }

    // The removal, then the kill of the removed node.
    let load = Load::start(fleet, args, &members, count_node, &next_batch, now, universe);
    tokio::time::sleep(warm_up).await;
    let asked = catalog_leader(fleet, give_up).await?;
    let asked = if members.contains(&asked) { asked } else { leader };
    let removing = Instant::now();
    let removed = remove_member(&fleet.addr(asked), joiner, give_up).await;
    let remove_answered = removing.elapsed();
    let waited = match removed {
        Ok(()) => wait_removed(fleet, &members, joiner, removing, give_up).await,
        Err(e) => Err(e),
    };
    let killed = fleet.kill9(joiner).and_then(|()| fleet.forget(joiner));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let end = Instant::now();
    let log = load.stop(give_up).await;
    acked.extend(log.acks.iter().map(|a| a.0));
    let (removed_everywhere, placed_without) = waited?;
    killed?;
    let removal_done = removing + removed_everywhere.max(placed_without);
    windows.push(LoadWindow::of(&log, "during the removal", removing, removal_done));
    windows.push(LoadWindow::of(&log, "then kill -9 of the removed node and 1 s", removal_done, end));
    eprintln!(
        "[join] SetMember(remove n{joiner}) on n{asked} answered after {:.0} ms, no group holds n{joiner} after \
         {:.0} ms, every group placed on the others after {:.0} ms",
        ms(remove_answered),
        ms(removed_everywhere),
        ms(placed_without)
    );
    let converged_after = wait_converged(fleet, give_up).await?;
    let leaders_after = leaders_of(&statuses(fleet).await?);

    // Every acknowledged batch of the phase on every member.
    let expected_users = (acked.len() * args.failover_batch) as u64;
    for id in fleet.ids() {
        let (total, problems) =
            check_acknowledged(&fleet.addr(id), JOIN_PREFIX, &acked, args.failover_batch, now).await?;
        let mut q = QueryClient::new(connect(&fleet.addr(id)).await?);
        let exprs: Vec<&str> = QUERIES.iter().map(|q| q.1).collect();
        let again = count(&mut q, &exprs, now).await?;
        checks.push(format!(
            "Node n{id} after the removal of n{joiner}: {} of {} acknowledged join-phase batches count their {} \
             profiles, `{JOIN_PREFIX}_batch EXISTS` counts {} (expected {}), the ingest's counts {}.",
            acked.len() - problems.len(),
            acked.len(),
            args.failover_batch,
            thousands(total),
            thousands(expected_users),
            if again == universe { "unchanged".to_string() } else { format!("now {again:?}, were {universe:?}") }
        ));
        if !problems.is_empty() || total != expected_users || again != universe {
            failures.push(format!(
                "node n{id} after the join phase: {} of {} batches wrong (first: {:?}); {JOIN_PREFIX}_batch \
                 EXISTS {total}, expected {expected_users}; ingest counts {again:?} vs {universe:?}",
                problems.len(),
                acked.len(),
                problems.iter().take(5).collect::<Vec<_>>()
            ));
        }
    }
    Ok(JoinRun {
        leader,
        count_node,
        joined_through,
        joiner,
        profiles,
        replication_factor,
        data,
        windows,
        catalog_join,
        rebalanced_on: moved.rebalanced_on,
        moves: moved.reply.moves,
        rebalance_answered: moved.rebalance_answered,
        placed: moved.placed,
        joiner_voter_of,
        voters_per_node: load_placed,
        join_snapshot_bytes,
        rebalance_snapshot_bytes,
        raft_bytes,
        caught_up,
        same_counts,
        remove_answered,
        removed_everywhere,
        placed_without,
        converged_after,
        leaders_joined,
        leaders_after,
    })
}

// ---------------------------------------------------------------- report

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn pct_ms(xs: &[Duration], p: f64) -> f64 {
    let ns: Vec<u64> = xs.iter().map(|d| d.as_nanos() as u64).collect();
    percentile(&ns, p) as f64 / 1e6
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

struct Report<'a> {
    args: &'a Args,
    command: String,
    build: String,
    date: String,
    load_before: String,
    load_after: String,
    /// Other `cohort` processes at the start and at the end.
    others: (usize, usize),
    data: &'a Dataset,
    ingests: Vec<IngestRun>,
    queries: Vec<QueryRun>,
    query_leader: u64,
    query_follower: u64,
    /// How long the single node, then the cluster, took to fall quiet
    /// before the Count latency.
    quiet: Vec<Duration>,
    /// The join, rebalance and removal of a fourth node (none with
    /// `--no-join`).
    join: Option<JoinRun>,
    rounds: Vec<Round>,
    acked_batches: usize,
    checks: Vec<String>,
    failures: Vec<String>,
    total_secs: f64,
}

/// A latency in ns as µs under a millisecond, else as ms.
fn latency(ns: u64) -> String {
    if ns < 1_000_000 {
        format!("{:.0} µs", ns as f64 / 1e3)
    } else {
        format!("{:.1} ms", ns as f64 / 1e6)
    }
}

/// The section of the join, rebalance and removal of a fourth node.
fn render_join(a: &Args, j: &JoinRun, w: &mut impl FnMut(String)) {
    w("### Join, rebalance and removal of a fourth node\n".into());
    w(format!(
        "On the cluster above ({factor} voters per group), after the Count latency, the catalog's leader n{leader}: \
         four windows of the same load. `Query.Count` back to back on the follower n{count} (one client; the \
         {queries} queries of the latency table in turn, one a call, each with a {timeout} ms timeout; an answer \
         other than the ingest's counts as failed) and a writer sending batches of {batch} identifies of new users \
         (their own `{p}_batch` value) to n1, n2, n3 in turn, {interval} ms after each acknowledged batch, a \
         failed call sent again at once to the next node (same `messageId`s). **Steady state:** {steady} s. \
         **Join:** node {joiner} is started with `cohort serve --join` and the Raft address of n{via} (an empty \
         data directory, {shards} shards); a joining node becomes a learner of the catalog group and holds no \
         shard group. The window ends when it serves and its own Status has the catalog applied up to the commit \
         index the catalog's leader reported (every node's Status polled every 20 ms). **Rebalance:** at once, \
         under the same load, `Admin.Rebalance` to the catalog's leader n{asked}; the window ends when every group \
         is placed: the placement in the nodes' Status is the reply's, and each group's voters, as its leader \
         reports them, are its placement, with no learners (the catalog: the active nodes outside its placement \
         as learners). Then the load stops, the bench waits until every replica applied the groups it holds, and \
         until n{joiner} counts what the members count. **Removal:** with the load again, \
         `Admin.SetMember {{ node_id: {joiner}, remove: true }}` to the catalog's leader, which moves n{joiner}'s \
         replicas back to the others; the window ends when no group in any member's Status holds n{joiner} as a \
         voter or a learner and every group is placed on the three others; then kill -9 of node {joiner} and 1 s \
         more of the load (last column). Times are from the spawn, the `Rebalance` call and the `SetMember` \
         call.\n",
        factor = j.replication_factor,
        leader = j.leader,
        count = j.count_node,
        queries = QUERIES.len(),
        timeout = a.call_timeout_ms,
        batch = a.failover_batch,
        p = JOIN_PREFIX,
        interval = a.join_write_interval_ms,
        steady = a.join_secs,
        joiner = j.joiner,
        via = j.joined_through,
        shards = a.shards,
        asked = j.rebalanced_on,
    ));
    let data = j
        .data
        .iter()
        .map(|(id, profiles, memory)| {
            format!("n{id} {} / {:.1} MB", thousands(*profiles), *memory as f64 / 1e6)
        })
        .collect::<Vec<_>>()
        .join(", ");
    let n = j.joiner;
    let groups = a.shards as usize + 1;
    w("| join, rebalance and removal of a fourth node | |".into());
    w("|---|---:|".into());
    let at = |d: Duration| format!("{:.0} ms", ms(d));
    let mb = |bytes: u64| format!("{:.1} MB", bytes as f64 / 1e6);
    let rows: Vec<(String, String)> = vec![
        (
            "profiles in the cluster (`profiles` of the leader's Status before the join)".into(),
            thousands(j.profiles),
        ),
        (
            format!(
                "data per node once placed and n{n} counts the same, 1 s later (Status: `profiles` of the shards it \
                 holds / `memory_bytes`; the replicas moved away are dropped while the nodes run)"
            ),
            data,
        ),
        (format!("join: node {n} started → its gRPC door answers `Admin.Status`"), at(j.catalog_join.serving)),
        (
            format!("join: → the catalog's leader has n{n} in the catalog group (learner or voter)"),
            format!("**{}**", at(j.catalog_join.in_catalog)),
        ),
        (
            format!("join: → n{n}'s Status has the catalog applied up to the leader's commit index"),
            at(j.catalog_join.caught_up),
        ),
        (
            "join: snapshot bytes sent (`snapshot_bytes_sent` summed over the nodes, from before the spawn)".into(),
            mb(j.join_snapshot_bytes),
        ),
        (format!("rebalance: `Admin.Rebalance` on n{} answered", j.rebalanced_on), at(j.rebalance_answered)),
        (
            "rebalance: replica moves in its reply".into(),
            format!("{}: {}", j.moves.len(), describe_moves(&j.moves)),
        ),
        ("rebalance: → every group placed".into(), format!("**{}**", at(j.placed))),
        (
            format!("once placed: groups with n{n} as a voter (as their leaders have them)"),
            format!("**{} of {groups}**", j.joiner_voter_of),
        ),
        ("once placed: voters per node".into(), describe_voters(&j.voters_per_node)),
        ("rebalance: snapshot bytes sent (from the end of the join until placed)".into(), mb(j.rebalance_snapshot_bytes)),
        (
            "join and rebalance: snapshot bytes sent".into(),
            mb(j.join_snapshot_bytes + j.rebalance_snapshot_bytes),
        ),
        (
            "join and rebalance: Raft bytes sent (`raft_bytes_sent`, the writer's traffic included)".into(),
            mb(j.raft_bytes),
        ),
        ("then, load stopped: every replica applied the groups it holds".into(), at(j.caught_up)),
        (
            format!(
                "then n{n} counts what the members count (latency queries, `user_id EXISTS`, \
                 `{JOIN_PREFIX}_batch EXISTS`)"
            ),
            at(j.same_counts),
        ),
        ("groups led once placed".into(), j.leaders_joined.clone()),
        (format!("removal: `SetMember {{ remove }}` of n{n} answered"), at(j.remove_answered)),
        (format!("removal: → no group in any member's Status holds n{n}"), at(j.removed_everywhere)),
        ("removal: → every group placed on the three others".into(), format!("**{}**", at(j.placed_without))),
        (format!("after the kill of n{n}: the three nodes converged (load stopped)"), at(j.converged_after)),
        ("groups led at the end".into(), j.leaders_after.clone()),
    ];
    for (what, figure) in rows {
        w(format!("| {what} | {figure} |"));
    }
    w(String::new());
    let mut header = format!("| load on n{} and the writer |", j.count_node);
    let mut rule = "|---|".to_string();
    for x in &j.windows {
        header.push_str(&format!(" {} |", x.label));
        rule.push_str("---:|");
    }
    w(header);
    w(rule);
    let row = |name: &str, cell: &dyn Fn(&LoadWindow) -> String| {
        let mut line = format!("| {name} |");
        for x in &j.windows {
            line.push_str(&format!(" {} |", cell(x)));
        }
        line
    };
    w(row("window", &|x| format!("{:.2} s", x.length.as_secs_f64())));
    w(row("answered Counts", &|x| thousands(x.count_ns.len() as u64)));
    w(row("Count p50", &|x| latency(percentile(&x.count_ns, 50.0))));
    w(row("Count p99", &|x| format!("**{}**", latency(percentile(&x.count_ns, 99.0)))));
    w(row("Count max", &|x| latency(x.count_ns.iter().max().copied().unwrap_or(0))));
    w(row("failed Counts", &|x| x.failed_counts().to_string()));
    w(row("acknowledged write batches", &|x| thousands(x.acked_batches as u64)));
    w(row("failed write calls", &|x| x.failed_writes().to_string()));
    w(String::new());
    let failed: Vec<(&str, &str, &String, &usize)> = j
        .windows
        .iter()
        .flat_map(|x| {
            let counts = x.failed_counts.iter().map(move |(k, n)| (x.label, "Count", k, n));
            counts.chain(x.failed_writes.iter().map(move |(k, n)| (x.label, "write", k, n)))
        })
        .collect();
    if failed.is_empty() {
        w("No Count and no write call failed in any window.\n".into());
    } else {
        w("| window | call | answer (numbers as N) | calls |".into());
        w("|---|---|---|---:|".into());
        for (label, call, kind, n) in failed {
            w(format!("| {label} | {call} | `{}` | {n} |", kind.replace('|', "\\|").replace('`', "'")));
        }
        w(String::new());
    }
}

fn render(r: &Report) -> String {
    let a = r.args;
    let mut md = String::new();
    let mut w = |s: String| {
        md.push_str(&s);
        md.push('\n');
    };
    w(format!(
        "## Three-node cluster beside a single node — {} profiles ({} messages), {} shards — {}\n",
        r.data.profiles,
        thousands(r.data.messages.len() as u64),
        a.shards,
        r.date
    ));
    w(format!(
        "- **Machine:** {}, {} CPUs, {:.0} GB RAM; load average {} before, {} after; other `cohort` processes on \
         the machine (not this run's): {} at the start, {} at the end; the whole run took {:.0} s. \
         The three nodes of the cluster and the bench client share the {} cores, so absolute figures say little \
         here: compare each with the single node measured in the same run on the same machine.",
        sysinfo::cpu_model(),
        sysinfo::cpus(),
        sysinfo::mem_total_bytes() as f64 / 1e9,
        r.load_before,
        r.load_after,
        r.others.0,
        r.others.1,
        r.total_secs,
        sysinfo::cpus()
    ));
    w(format!("- **Command:** `{}`; {}.", r.command, r.build));
    w(format!(
        "- **Data:** `cohort-datagen` (library) profiles 0..{} of seed {}, now 2026-11-01T00:00:00Z: {} messages, \
         {:.1} MB of JSON ({:.0} bytes a message): {} `identify` (distinct `userId` `u{{i}}` and `anonymousId`, \
         nine traits: country, city, age, plan, signup_at, ltv, email, tags, newsletter) and {} `track` \
         (page, app_open, add_to_cart, purchase, email_open, email_click with their properties; {} of them by \
         `anonymousId` only), every message with its own `messageId`, in profile order. The schema's trait \
         types are applied first (`Admin.ApplySchema`).",
        r.data.profiles,
        a.seed,
        thousands(r.data.messages.len() as u64),
        r.data.bytes as f64 / 1e6,
        r.data.bytes as f64 / r.data.messages.len().max(1) as f64,
        thousands(r.data.identifies),
        thousands(r.data.messages.len() as u64 - r.data.identifies),
        thousands(r.data.anonymous_tracks)
    ));
    w(String::new());
    w("### Durable ingest\n".into());
    w(format!(
        "{} concurrent clients, each on its own connection sending a contiguous share in `IngestBatch` calls of {} \
         messages; a reply means a quorum has the batch in its fsynced Raft log. Each setup is a fresh \
         deployment. \"Replicas applied\" is the time after the last reply until every node reports every group \
         applied up to its commit index. CPU is the nodes' user + system time from the first send until then, \
         summed over the nodes.\n",
        a.clients, a.batch
    ));
    w("| setup | clients → nodes | msg/s | × single node | batch p50 / p99 | replicas applied | node CPU (µs / msg) | groups led |".into());
    w("|---|---|---:|---:|---:|---:|---:|---|".into());
    let base = r.ingests.first().map_or(1.0, IngestRun::rate);
    for i in &r.ingests {
        w(format!(
            "| {} | {} | {} | {:.2} | {:.1} / {:.1} ms | {} | {:.1} s ({:.1}) | {} |",
            i.label,
            i.targets,
            thousands(i.rate().round() as u64),
            i.rate() / base,
            percentile(&i.batch_ns, 50.0) as f64 / 1e6,
            percentile(&i.batch_ns, 99.0) as f64 / 1e6,
            i.settle.map_or("—".to_string(), |d| format!("{:.0} ms", ms(d))),
            i.cpu_secs,
            i.cpu_secs * 1e6 / i.messages.max(1) as f64,
            if i.leaders.is_empty() { "—".into() } else { i.leaders.clone() }
        ));
    }
    w(String::new());
    w("### Between the nodes\n".into());
    w(format!(
        "`raft_bytes_sent` (Raft messages as raft-rs encodes them, gRPC framing apart) and `snapshot_bytes_sent` \
         of `Admin.Status`, summed over the three nodes, after minus before the ingest (Status before the first \
         send, after every replica applied), over the {} messages ingested ({:.0} bytes of JSON each).\n",
        thousands(r.data.messages.len() as u64),
        r.data.bytes as f64 / r.data.messages.len().max(1) as f64
    ));
    w("| setup | Raft messages | Raft bytes | snapshot bytes | bytes / message | × message JSON | dropped |"
        .into());
    w("|---|---:|---:|---:|---:|---:|---:|".into());
    let json_per_msg = r.data.bytes as f64 / r.data.messages.len().max(1) as f64;
    for i in r.ingests.iter().skip(1) {
        let per = (i.raft_bytes + i.snapshot_bytes) as f64 / i.messages.max(1) as f64;
        w(format!(
            "| {} | {} | {:.1} MB | {:.1} MB | {:.0} | {:.2} | {} |",
            i.label,
            thousands(i.raft_messages),
            i.raft_bytes as f64 / 1e6,
            i.snapshot_bytes as f64 / 1e6,
            per,
            per / json_per_msg,
            i.dropped
        ));
    }
    w(String::new());
    w("### Count latency\n".into());
    w(format!(
        "`Query.Count`, one expression per call at now = 2026-11-01T00:00:00Z, one client on its own connection, \
         3 warm-up runs then {} recorded runs per query and target, wall clock in the client. The single node is \
         the one of the ingest above; the cluster is the \"all to the leader\" one after its ingest, with the \
         catalog's leader n{} and the follower n{}. Before the runs, the bench waited until the nodes together \
         used under a tenth of a core (after-ingest snapshots and compaction): {}. Every target gave the same \
         counts.\n",
        a.query_runs,
        r.query_leader,
        r.query_follower,
        r.quiet
            .iter()
            .zip(["single node", "cluster"])
            .map(|(d, n)| format!("{n} {:.1} s", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let mut header = "| query | count |".to_string();
    let mut rule = "|---|---:|".to_string();
    for q in &r.queries {
        header.push_str(&format!(" {} p50 / p99 |", q.target));
        rule.push_str("---:|");
    }
    w(header);
    w(rule);
    for (k, (name, expr)) in QUERIES.iter().enumerate() {
        let mut row = format!("| {name}: `{expr}` | {} |", r.queries.first().map_or(0, |q| q.answers[k]));
        for q in &r.queries {
            let s = &q.samples[k];
            row.push_str(&format!(
                " {:.0} / {:.0} µs |",
                percentile(s, 50.0) as f64 / 1e3,
                percentile(s, 99.0) as f64 / 1e3
            ));
        }
        w(row);
    }
    w(String::new());
    if let Some(j) = &r.join {
        render_join(a, j, &mut w);
    }
    if !r.rounds.is_empty() {
        w("### Failover\n".into());
        w(format!(
            "{} rounds on the cluster above. Each round: find the catalog's leader (`Admin.Status`), start a writer \
             sending batches of {} identifies (new users, the batch's own `fo_batch` value) to the two other nodes \
             in turn, each call with a {} ms timeout and a failed batch sent again at once to the other node (same \
             `messageId`s), a Count prober (`{}`) per surviving node and a Status watcher (every 20 ms); write {} \
             ms, kill -9 the leader, and time from the kill to the first acknowledged write call and to the first \
             answered Count sent after the kill. The first acknowledged call can be the batch that was in flight at \
             the kill, answered as duplicates (it had been committed) before new writes go through, so the time to \
             the first acknowledged *new* batch (first sent after the kill) is shown too. The writer stops {} ms \
             after that; the killed node is restarted on its data directory and the round ends when every node \
             reports every group with one leader and applied up to the commit index.\n",
            r.rounds.len(),
            a.failover_batch,
            a.call_timeout_ms,
            PROBE_QUERY,
            a.before_kill_ms,
            a.after_ack_ms
        ));
        let col = |f: fn(&Round) -> Duration| r.rounds.iter().map(f).collect::<Vec<_>>();
        w("| from the kill (or restart) to | p50 | p99 | max |".into());
        w("|---|---:|---:|---:|".into());
        for (name, xs) in [
            ("a survivor's Status names a new catalog leader", col(|x| x.catalog_elected)),
            ("a survivor's Status names a live leader for every group", col(|x| x.all_elected)),
            ("first acknowledged write call (through a survivor)", col(|x| x.first_write)),
            ("first acknowledged new batch (first sent after the kill)", col(|x| x.first_new)),
            ("then, the longest wait between two acknowledged writes", col(|x| x.stall_after)),
            ("first answered Count on a survivor", col(|x| x.first_count)),
            ("answered Count on both survivors", col(|x| x.both_count)),
            ("restart: the killed node serves again", col(|x| x.restart_serving)),
            ("restart: every group caught up on every node", col(|x| x.restart_caught_up)),
        ] {
            w(format!(
                "| {name} | {:.0} ms | {:.0} ms | {:.0} ms |",
                pct_ms(&xs, 50.0),
                pct_ms(&xs, 99.0),
                pct_ms(&xs, 100.0)
            ));
        }
        let fw: Vec<u64> = r.rounds.iter().map(|x| x.failed_writes as u64).collect();
        let fc: u64 = r.rounds.iter().map(|x| x.failed_counts as u64).sum();
        let dups: u64 = r.rounds.iter().map(|x| x.duplicate_retries).sum();
        w(String::new());
        w(format!(
            "Failed write calls per round: p50 {}, max {}, {} in total (with {} acknowledged batches in all); {} \
             retried batches were answered as duplicates (an earlier, failed call of theirs had been applied); {} \
             Count calls failed in all.\n",
            percentile(&fw, 50.0),
            fw.iter().max().copied().unwrap_or(0),
            fw.iter().sum::<u64>(),
            r.acked_batches,
            dups,
            fc
        ));
        let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
        for x in &r.rounds {
            for (k, n) in &x.error_kinds {
                *kinds.entry(k).or_default() += n;
            }
        }
        let mut kinds: Vec<(&str, usize)> = kinds.into_iter().collect();
        kinds.sort_by_key(|k| std::cmp::Reverse(k.1));
        w("| failed write calls, by answer (numbers as N) | calls |".into());
        w("|---|---:|".into());
        for (k, n) in kinds.iter().take(8) {
            w(format!("| `{}` | {n} |", k.replace('|', "\\|").replace('`', "'")));
        }
        w(String::new());
        w("| round | killed | new catalog leader | catalog / all groups led | first write / new batch (then longest wait) | first Count (both survivors) | failed writes (before kill / until new batch / after) | acked batches (before / after kill) | restart → caught up | groups led after |".into());
        w("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|".into());
        for (i, x) in r.rounds.iter().enumerate() {
            w(format!(
                "| {} | n{} | n{} | {:.0} / {:.0} ms | {:.0} / {:.0} ({:.0}) ms | {:.0} ({:.0}) ms | {} ({} / {} / {}) | {} ({} / {}) | {:.2} s | {} |",
                i + 1,
                x.killed,
                x.new_leader,
                ms(x.catalog_elected),
                ms(x.all_elected),
                ms(x.first_write),
                ms(x.first_new),
                ms(x.stall_after),
                ms(x.first_count),
                ms(x.both_count),
                x.failed_writes,
                x.failed_split[0],
                x.failed_split[1],
                x.failed_split[2],
                x.acked,
                x.acked_split[0],
                x.acked_split[1],
                x.restart_caught_up.as_secs_f64(),
                x.leaders_after
            ));
        }
        w(String::new());
    }
    w("### Checks\n".into());
    for c in &r.checks {
        w(format!("- {c}"));
    }
    if r.failures.is_empty() {
        w("- No failure.".into());
    } else {
        for f in &r.failures {
            w(format!("- **FAILURE:** {}", f.replace('\n', " ")));
        }
    }
    md
}

// ---------------------------------------------------------------- the run

/// The commit of the current directory's git checkout, and the node's
/// source files (`src/`, `proto/`) with uncommitted changes.
fn build_description() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        None => "commit unknown".into(),
        Some(commit) => {
            let changed: Vec<String> = git(&["status", "--porcelain", "--", "src", "proto", "Cargo.lock"])
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.split_whitespace().last().map(|f| format!("`{f}`")))
                .collect();
            if changed.is_empty() {
                format!("commit {commit}")
            } else {
                format!("commit {commit} with uncommitted changes to {}", changed.join(", "))
            }
        }
    }
}

/// Processes named `cohort` on the machine (none of them ours when asked
/// before the first start or after the last stop).
fn other_cohort_processes() -> usize {
    let Ok(dir) = fs::read_dir("/proc") else { return 0 };
    dir.filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
        .filter(|e| fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == "cohort"))
        .count()
}

fn default_cohort() -> PathBuf {
    let beside = std::env::current_exe().ok().and_then(|p| p.parent().map(|d| d.join("cohort")));
    match beside {
        Some(p) if p.exists() => p,
        _ => PathBuf::from("target/release/cohort"),
    }
}

/// Everything but the report; `failures` collects what went wrong
/// without stopping the run (mismatches, lost writes).
async fn run(args: &Args, root: &Path, data: &Dataset, report: &mut Report<'_>) -> Result<(), String> {
    let cohort = args.cohort.clone().unwrap_or_else(default_cohort);
    if !cohort.exists() {
        return Err(format!("{} does not exist (build it, or pass --cohort)", cohort.display()));
    }
    let now = format_rfc3339_ms(DEFAULT_NOW_MS);
    let clients = args.clients.max(1);

    // (a) A single node: ingest, then the Count latency on it.
    let mut single = Fleet::plan(&cohort, root, "single", 1, args.shards)?;
    bring_up(&mut single).await?;
    let run_a = measured_ingest(&mut single, data, args.batch, "single node", vec![1; clients]).await?;
    report.ingests.push(run_a);
    report.quiet.push(quiesce(&single, Duration::from_secs(30)).await);
    let q_single = query_latency(&single.addr(1), "single node", args.query_runs, &now).await?;
    single.kill_all();
    let universe = q_single.answers.clone();
    report.queries.push(q_single);

    // (b) A cluster, the clients spread over the three nodes.
    let mut spread = Fleet::plan(&cohort, root, "spread", 3, args.shards)?;
    bring_up(&mut spread).await?;
    let targets: Vec<u64> = (0..clients as u64).map(|c| c % 3 + 1).collect();
    let run_b =
        measured_ingest(&mut spread, data, args.batch, "cluster, clients on all nodes", targets).await?;
    report.ingests.push(run_b);
    spread.kill_all();

    // (c) A cluster, every client on the catalog's leader.
    let mut cluster = Fleet::plan(&cohort, root, "cluster", 3, args.shards)?;
    bring_up(&mut cluster).await?;
    let leader = catalog_leader(&cluster, Duration::from_secs(30)).await?;
    let run_c =
        measured_ingest(&mut cluster, data, args.batch, "cluster, all to the leader", vec![leader; clients])
            .await?;
    report.ingests.push(run_c);

    let follower = cluster.ids().into_iter().find(|&id| id != leader).expect("three nodes");
    report.quiet.push(quiesce(&cluster, Duration::from_secs(30)).await);
    report.query_leader = leader;
    report.query_follower = follower;
    for (id, name) in [(leader, "cluster leader"), (follower, "cluster follower")] {
        let q = query_latency(&cluster.addr(id), name, args.query_runs, &now).await?;
        if q.answers != universe {
            report
                .failures
                .push(format!("{name} n{id} counts {:?}, the single node {:?}", q.answers, universe));
        }
        report.queries.push(q);
    }
    report.checks.push(format!(
        "Every Count of the latency table gave the same answer on the single node, the leader and the follower: {universe:?}."
    ));

    // The join, rebalance and removal of a fourth node.
    if !args.no_join {
        let (mut checks, mut failures) = (Vec::new(), Vec::new());
        let outcome = join_phase(&mut cluster, args, &now, &universe, &mut checks, &mut failures).await;
        report.checks.append(&mut checks);
        report.failures.append(&mut failures);
        match outcome {
            Ok(j) => report.join = Some(j),
            Err(e) => {
                report.failures.push(e.clone());
                return Err(e);
            }
        }
    }

    // Failover.
    let next_batch = Arc::new(AtomicU64::new(0));
    let mut acked: Vec<u64> = Vec::new();
    for round in 1..=args.rounds {
        match failover_round(&mut cluster, args, round, &next_batch, &mut acked, &now).await {
            Ok(r) => report.rounds.push(r),
            Err(e) => {
                report.failures.push(e.clone());
                return Err(e);
            }
        }
    }
    report.acked_batches = acked.len();
    if args.rounds > 0 {
        wait_converged(&mut cluster, Duration::from_secs(60)).await?;
        let expected = (acked.len() * args.failover_batch) as u64;
        let mut distinct = acked.clone();
        distinct.sort_unstable();
        distinct.dedup();
        if distinct.len() != acked.len() {
            report.failures.push(format!("{} batches acknowledged twice", acked.len() - distinct.len()));
        }
        for id in cluster.ids() {
            let (total, problems) =
                check_acknowledged(&cluster.addr(id), FAILOVER_PREFIX, &acked, args.failover_batch, &now)
                    .await?;
            let mut q = QueryClient::new(connect(&cluster.addr(id)).await?);
            let exprs: Vec<&str> = QUERIES.iter().map(|q| q.1).collect();
            let again = count(&mut q, &exprs, &now).await?;
            report.checks.push(format!(
                "Node n{id} after the failover: {} of {} acknowledged batches count their {} profiles, `fo_batch EXISTS` \
                 counts {} (expected {}), the ingest's counts {}.",
                acked.len() - problems.len(),
                acked.len(),
                args.failover_batch,
                thousands(total),
                thousands(expected),
                if again == universe { "unchanged".to_string() } else { format!("now {again:?}, were {universe:?}") }
            ));
            if !problems.is_empty() || total != expected || again != universe {
                report.failures.push(format!(
                    "node n{id}: acknowledged writes missing or wrong: {} of {} batches wrong (first: {:?}); \
                     fo_batch EXISTS {total}, expected {expected}; ingest counts {again:?} vs {universe:?}",
                    problems.len(),
                    acked.len(),
                    problems.iter().take(5).collect::<Vec<_>>()
                ));
            }
        }
    }
    cluster.kill_all();
    Ok(())
}

fn main() {
    let args = Args::parse();
    let command = std::env::var("COHORT_CLUSTER_BENCH_COMMAND")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| std::env::args().collect::<Vec<_>>().join(" "));
    let started = Instant::now();
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    let parent = args.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    let path = parent.join(format!("cohort-cluster-bench-{}-{stamp}", std::process::id()));
    if let Err(e) = fs::create_dir_all(&path) {
        eprintln!("error: creating {}: {e}", path.display());
        std::process::exit(2);
    }
    let root = TempRoot { path, keep: Arc::new(AtomicBool::new(args.keep_dir)) };
    eprintln!("cohort-cluster-bench: data and logs in {}", root.path.display());

    let cfg = Config { seed: args.seed, profiles: args.profiles, now_ms: DEFAULT_NOW_MS };
    let t0 = Instant::now();
    let data = generate(&cfg);
    eprintln!(
        "generated {} messages ({} profiles, {:.1} MB) in {:.1} s",
        data.messages.len(),
        data.profiles,
        data.bytes as f64 / 1e6,
        t0.elapsed().as_secs_f64()
    );

    let mut report = Report {
        args: &args,
        command,
        build: build_description(),
        date: format_rfc3339_ms(stamp),
        load_before: sysinfo::loadavg(),
        load_after: String::new(),
        others: (other_cohort_processes(), 0),
        data: &data,
        ingests: Vec::new(),
        queries: Vec::new(),
        query_leader: 0,
        query_follower: 0,
        quiet: Vec::new(),
        join: None,
        rounds: Vec::new(),
        acked_batches: 0,
        checks: Vec::new(),
        failures: Vec::new(),
        total_secs: 0.0,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let outcome = rt.block_on(run(&args, &root.path, &data, &mut report));
    if let Err(e) = &outcome {
        eprintln!("error: {e}");
        if !report.failures.contains(e) {
            report.failures.push(e.clone());
        }
    }
    report.load_after = sysinfo::loadavg();
    report.others.1 = other_cohort_processes();
    report.total_secs = started.elapsed().as_secs_f64();
    let md = render(&report);
    println!("{md}");
    if let Some(path) = &args.out_md {
        let written = File::options().create(true).append(true).open(path).and_then(|mut f| {
            f.write_all(b"\n")?;
            f.write_all(md.as_bytes())
        });
        match written {
            Ok(()) => eprintln!("appended to {}", path.display()),
            Err(e) => eprintln!("error: appending to {}: {e}", path.display()),
        }
    }
    if !report.failures.is_empty() {
        root.keep.store(true, Ordering::SeqCst);
        drop(root);
        std::process::exit(1);
    }
}
