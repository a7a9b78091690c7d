//! Randomized fault simulation of the ingest pipeline on three nodes,
//! checked against a model.
//!
//! Three nodes, each with the real parts of a node's write path: the
//! catalog machine and two shard machines, the replication driver
//! (raft-rs, raft-engine logs in temporary directories with fsync,
//! snapshots every few dozen entries) and the ingest pipeline, each node on
//! its own tokio runtime. Raft messages go over the in-process network of
//! `common::sim_net` (drops, duplicates, delays and so reorders; cut links
//! and nodes). The pipeline's calls to other nodes (a step proposed to a
//! shard group another node leads) go through [`SimPeers`], which honours
//! the same cuts, delays calls and sometimes loses a reply after the
//! proposal was made. Shard leaders are wherever elections put them, so
//! steps cross nodes all the time. A seeded schedule cuts nodes and links
//! off, heals, and crashes nodes (the driver stops, the runtime and every
//! task of the pipeline with it; the node comes back from its snapshots
//! and logs), the catalog's leader included, so the pipeline resumes on
//! the new leader from the catalog's log.
//!
//! Writers send batches of Segment messages for their own users and
//! anonymous ids: tracks by `userId` and by `anonymousId`, anonymous
//! identifies, identifies and aliases that link an anonymous id to a user
//! (so anonymous profiles merge into known ones, across the two shards
//! half of the time; a linked anonymous id linked again to another user
//! stays with the first), and resent duplicates of earlier messages. A
//! writer retries a failed batch (same `messageId`s) until it is
//! acknowledged, and sends its next batch only then. Readers read a user's
//! profile like `GetProfile` with read-your-writes: a ReadIndex on the
//! catalog, the directory's profile, a ReadIndex on its shard, the profile.
//! After healing, the history is checked:
//!
//! - every track message is applied exactly once on every node: each
//!   carries its number, which appears once across the shards (resends
//!   and retries included), and no number that was never sent;
//! - identities are those of the model (INGEST.md): an anonymous id is on
//!   the profile of the first user it was linked to, each event is on the
//!   profile its identifier resolves to, and the shards hold exactly one
//!   live profile per user and per anonymous id never linked (merged-away
//!   profiles left the universe);
//! - the replicas agree: every node's directory resolves every identifier
//!   to the same profile, and every live profile's image is the same on
//!   every node;
//! - per-profile reads are linearizable: a user's own events only grow
//!   (its profile survives every merge), so each read must hold every
//!   event acknowledged before it started, only events sent before it
//!   ended, and every event of any read of the same user that ended
//!   before it started.
//!
//! Membership changes are not part of this simulation (every node holds
//! every group); `tests/simulation.rs` moves replicas under the same
//! network with a list machine. The seed fixes the fault schedule and the
//! messages; the threads' interleaving is the machine's. A failure prints
//! its seed; `COHORT_SIM_SEED=S` replays one, `COHORT_SIM_SEEDS=N`
//! (default 3) runs N from `COHORT_SIM_FIRST` (default 1);
//! `tools/simulate.sh --pipeline` runs many.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use cohort::cluster::catalog::CatalogMachine;
use cohort::cluster::placement::{shard_group, shard_of, CATALOG_GROUP};
use cohort::ingest::pipeline::{Pipeline, ShardPeers};
use cohort::ingest::{BoxFuture, Source};
use cohort::replication::driver::{Driver, DriverConfig, SnapshotPolicy};
use cohort::replication::shard_machine::{ShardApplied, ShardMachine};
use cohort::replication::storage::LogStore;
use cohort::replication::ReplicationError;
use cohort::shard::{ProfileId, ProfileImage};
use common::sim_net::{Port, Rng, SimNet};
use parking_lot::{Mutex, RwLock};
use serde_json::json;

const SHARDS: u32 = 2;
const NODES: [u64; 3] = [1, 2, 3];
const WRITERS: u64 = 6;
/// Users of each writer.
const USERS: u64 = 5;
/// Anonymous ids a writer uses at a time; a new one replaces the oldest
/// now and then, so new anonymous profiles keep merging into known ones.
const ANONS_AT_ONCE: u64 = 4;
/// A pipeline call to another node loses its reply after the work was
/// done this often.
const LOST_REPLY: f64 = 0.03;

/// A node while it runs.
struct Running {
    driver: Arc<Driver>,
    catalog: Arc<CatalogMachine>,
    shards: Arc<Vec<Arc<ShardMachine>>>,
    pipeline: Pipeline,
    /// Its tasks (the pipeline's); shut down by a crash.
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
}

/// A track message, for the model.
struct Sent {
    /// `user_id:U` or `anonymous_id:A`.
    address: String,
    /// Whether it was sent by `userId` (its event is named `u`).
    by_user: bool,
    /// When its batch was first sent.
    invoked: Instant,
    /// When its batch was first acknowledged.
    acked: Option<Instant>,
}

/// A read of a user's own events.
struct Read {
    node: u64,
    user: String,
    started: Instant,
    ended: Instant,
    seen: BTreeSet<u64>,
}

struct Sim {
    seed: u64,
    net: Arc<SimNet>,
    dirs: BTreeMap<u64, tempfile::TempDir>,
    running: RwLock<BTreeMap<u64, Arc<Running>>>,
    /// Track messages by number.
    sent: Mutex<BTreeMap<u64, Sent>>,
    /// Each writer's acknowledged identity links, in order: (anonymous id,
    /// user id).
    links: Mutex<Vec<(String, String)>>,
    /// Identifiers that appeared in any acknowledged message.
    appeared: Mutex<BTreeSet<String>>,
    reads: Mutex<Vec<Read>>,
    /// Batch attempts that failed (and were retried).
    retries: AtomicU64,
    /// A problem a task found (a batch never acknowledged, a rejection).
    problems: Mutex<Vec<String>>,
    peer_rng: Mutex<Rng>,
    log: Mutex<Vec<String>>,
}

impl Sim {
    fn new(seed: u64) -> Arc<Sim> {
        Arc::new(Sim {
            seed,
            net: SimNet::new(seed),
            dirs: NODES.iter().map(|&id| (id, tempfile::tempdir().unwrap())).collect(),
            running: RwLock::default(),
            sent: Mutex::default(),
            links: Mutex::default(),
            appeared: Mutex::default(),
            reads: Mutex::default(),
            retries: AtomicU64::new(0),
            problems: Mutex::default(),
            peer_rng: Mutex::new(Rng(seed ^ 0xFEED)),
            log: Mutex::default(),
        })
    }

    fn note(&self, what: String) {
        self.log.lock().push(what);
    }

    /// Opens node `id`'s machines from its snapshots and starts its driver
    /// from its logs (the founders' configuration for a new one).
    fn boot(&self, id: u64) -> (Arc<Driver>, Arc<CatalogMachine>, Arc<Vec<Arc<ShardMachine>>>) {
        let dir = self.dirs[&id].path();
        let snapshots = dir.join("snapshots");
        std::fs::create_dir_all(&snapshots).unwrap();
        let fail = |what: &str, e: &dyn std::fmt::Display| -> ! {
            panic!("seed {}: node {id} does not open its {what}: {e}", self.seed)
        };
        let catalog =
            Arc::new(CatalogMachine::open(&snapshots, SHARDS, 24).unwrap_or_else(|e| fail("catalog", &e)));
        let shards: Arc<Vec<Arc<ShardMachine>>> = Arc::new(
            (0..SHARDS)
                .map(|s| Arc::new(ShardMachine::open(&snapshots, s).unwrap_or_else(|e| fail("shard", &e))))
                .collect(),
        );
        let groups = cohort::node::group_specs(&catalog, &shards);
        let store = Arc::new(LogStore::open(&dir.join("raft")).unwrap_or_else(|e| fail("log", &e)));
        let config = DriverConfig {
            node_id: id,
            voters: NODES.to_vec(),
            tick: Duration::from_millis(20),
            election_ticks: 10,
            heartbeat_ticks: 2,
            snapshot: SnapshotPolicy { entries: 30, bytes: u64::MAX },
            proposal_timeout: Duration::from_secs(2),
            ..DriverConfig::default()
        };
        let port = Arc::new(Port { net: self.net.clone(), from: id });
        let driver =
            Arc::new(Driver::start(store, groups, port, config).unwrap_or_else(|e| fail("raft driver", &e)));
        self.net.drivers.write().insert(id, driver.clone());
        (driver, catalog, shards)
    }

    /// Starts node `id`'s pipeline on a runtime of its own once its driver
    /// is up (the pipeline first drives what the catalog's log left).
    async fn serve(
        self: &Arc<Self>,
        id: u64,
        (driver, catalog, shards): (Arc<Driver>, Arc<CatalogMachine>, Arc<Vec<Arc<ShardMachine>>>),
    ) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(format!("sim-node-{id}"))
            .enable_all()
            .build()
            .unwrap();
        let peers: Arc<dyn ShardPeers> = Arc::new(SimPeers { sim: Arc::downgrade(self), from: id });
        let started =
            runtime.spawn(Pipeline::start(driver.clone(), Some(peers), catalog.clone(), shards.clone()));
        let pipeline = match started.await.unwrap() {
            Ok(pipeline) => pipeline,
            Err(e) => {
                runtime.shutdown_background();
                panic!("seed {}: node {id}'s pipeline does not start: {e}", self.seed)
            }
        };
        let running = Running { driver, catalog, shards, pipeline, runtime: Mutex::new(Some(runtime)) };
        self.running.write().insert(id, Arc::new(running));
    }

    async fn start(self: &Arc<Self>, id: u64) {
        let parts = self.boot(id);
        self.serve(id, parts).await;
    }

    /// Stops node `id` as a crash would: the driver with no snapshot, the
    /// pipeline's tasks wherever they are; only what the logs and
    /// snapshot files hold survives.
    fn crash(&self, id: u64) {
        self.net.drivers.write().remove(&id);
        let running = self.running.write().remove(&id);
        if let Some(running) = running {
            running.driver.stop();
            if let Some(runtime) = running.runtime.lock().take() {
                runtime.shutdown_background();
            }
        }
    }

    fn node(&self, id: u64) -> Option<Arc<Running>> {
        self.running.read().get(&id).cloned()
    }

    fn up(&self) -> Vec<u64> {
        self.running.read().keys().copied().collect()
    }

    /// The node leading the catalog in the highest term, among those up.
    fn catalog_leader(&self) -> Option<u64> {
        self.running
            .read()
            .iter()
            .filter_map(|(&id, r)| {
                let s = r.driver.status().into_iter().find(|g| g.id == CATALOG_GROUP)?;
                (s.role == "leader").then_some((s.term, id))
            })
            .max()
            .map(|(_, id)| id)
    }

    /// Whether a call from `from` to `to` gets there and back.
    fn linked(&self, from: u64, to: u64) -> bool {
        self.net.linked(from, to) && self.net.linked(to, from)
    }
}

/// The other nodes as the pipeline of node `from` sees them: calls reach
/// a node that is up over links that are not cut, after a short delay.
struct SimPeers {
    sim: Weak<Sim>,
    from: u64,
}

impl SimPeers {
    /// The node `node` once the call has travelled there, or why not.
    async fn reach(&self, node: u64) -> Result<(Arc<Sim>, Arc<Running>), String> {
        let sim = self.sim.upgrade().ok_or("the simulation ended")?;
        let delay = sim.peer_rng.lock().below(6);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        if !sim.linked(self.from, node) {
            return Err(format!("node {node} is unreachable from node {}", self.from));
        }
        let running = sim.node(node).ok_or(format!("node {node} is down"))?;
        Ok((sim, running))
    }

    /// Whether the reply of a call that was done gets back.
    fn reply_arrives(&self, sim: &Sim, node: u64) -> bool {
        !sim.peer_rng.lock().chance(LOST_REPLY) && sim.linked(self.from, node)
    }
}

impl ShardPeers for SimPeers {
    fn propose(
        &self,
        node: u64,
        group: u64,
        data: Vec<u8>,
        relay: bool,
    ) -> BoxFuture<'_, Result<(bool, bool), ReplicationError>> {
        Box::pin(async move {
            let unavailable = |message: String| ReplicationError::Remote {
                group,
                leader: node,
                code: tonic::Code::Unavailable as i32,
                message,
            };
            let (sim, mut running) = self.reach(node).await.map_err(unavailable)?;
            // A relay hands the step on to the leader it knows, once (as
            // `Node::propose_here` does).
            let leader = running.driver.leader_of(group).filter(|&l| l != node);
            if let (true, Some(leader)) = (relay, leader) {
                let hop = SimPeers { sim: self.sim.clone(), from: node };
                running = hop.reach(leader).await.map(|(_, r)| r).map_err(unavailable)?;
            }
            let applied = running.driver.propose(group, data).await?;
            if !self.reply_arrives(&sim, node) {
                return Err(unavailable("the reply was lost on the way back".into()));
            }
            Ok(applied.downcast::<ShardApplied>().map_or((false, false), |a| (a.skipped, a.gap)))
        })
    }

    /// Not called here (every node holds every shard, so a merge exports
    /// from its own replica); `tests/cluster_membership.rs` exports across
    /// real processes.
    fn export(
        &self,
        node: u64,
        shard: u32,
        profile: ProfileId,
    ) -> BoxFuture<'_, Result<Option<ProfileImage>, String>> {
        Box::pin(async move {
            let (sim, running) = self.reach(node).await?;
            tokio::time::timeout(Duration::from_secs(2), running.driver.read_barrier(shard_group(shard)))
                .await
                .map_err(|_| "no ReadIndex within 2 s".to_string())?
                .map_err(|e| e.to_string())?;
            let image = running.shards[shard as usize].read_state().shard.read_profile(profile);
            if !self.reply_arrives(&sim, node) {
                return Err("the reply was lost on the way back".into());
            }
            Ok(image)
        })
    }
}

fn user(w: u64, k: u64) -> String {
    format!("w{w}-user{k}")
}

fn anon(w: u64, j: u64) -> String {
    format!("w{w}-anon{j}")
}

/// One writer's messages: its users and its current anonymous ids.
struct Script {
    w: u64,
    rng: Rng,
    /// Next message number (numbers are unique across writers).
    next: u64,
    /// The oldest anonymous id in use.
    first_anon: u64,
    /// Track messages sent, to resend one now and then: (number, text).
    resendable: Vec<(u64, String)>,
}

/// A batch: its texts, its track messages' numbers (resends included), and
/// the links and identifiers it carries.
struct Batch {
    texts: Vec<String>,
    tracks: Vec<(u64, String, bool)>,
    links: Vec<(String, String)>,
    identifiers: Vec<String>,
}

impl Script {
    fn batch(&mut self) -> Batch {
        let mut b =
            Batch { texts: Vec::new(), tracks: Vec::new(), links: Vec::new(), identifiers: Vec::new() };
        for _ in 0..1 + self.rng.below(6) {
            if self.rng.chance(0.1) {
                self.first_anon += 1;
            }
            let u = user(self.w, self.rng.below(USERS));
            let a = anon(self.w, self.first_anon + self.rng.below(ANONS_AT_ONCE));
            let m = self.next;
            self.next += 1;
            let id = format!("w{}-m{m}", self.w);
            let pick = self.rng.below(100);
            let text = match pick {
                0..=34 => {
                    b.identifiers.push(format!("user_id:{u}"));
                    b.tracks.push((m, format!("user_id:{u}"), true));
                    json!({"type": "track", "event": "u", "userId": u, "messageId": id, "properties": {"m": m}})
                }
                35..=64 => {
                    b.identifiers.push(format!("anonymous_id:{a}"));
                    b.tracks.push((m, format!("anonymous_id:{a}"), false));
                    json!({"type": "track", "event": "a", "anonymousId": a, "messageId": id, "properties": {"m": m}})
                }
                65..=79 => {
                    b.identifiers.extend([format!("user_id:{u}"), format!("anonymous_id:{a}")]);
                    b.links.push((a.clone(), u.clone()));
                    json!({"type": "identify", "userId": u, "anonymousId": a, "messageId": id,
                           "traits": {"plan": format!("p{}", self.rng.below(3))}})
                }
                80..=89 => {
                    b.identifiers.extend([format!("user_id:{u}"), format!("anonymous_id:{a}")]);
                    b.links.push((a.clone(), u.clone()));
                    json!({"type": "alias", "previousId": a, "userId": u, "messageId": id})
                }
                _ => {
                    b.identifiers.push(format!("anonymous_id:{a}"));
                    json!({"type": "identify", "anonymousId": a, "messageId": id, "traits": {"visits": m}})
                }
            }
            .to_string();
            if pick < 65 {
                self.resendable.push((m, text.clone()));
            }
            b.texts.push(text);
            // A resent duplicate of an earlier track message (already
            // applied or not): applied once all the same.
            if self.rng.chance(0.05) && !self.resendable.is_empty() {
                let (m, text) =
                    self.resendable[self.rng.below(self.resendable.len() as u64) as usize].clone();
                b.texts.push(text);
                b.tracks.push((m, String::new(), false));
            }
        }
        b
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

/// Sends batches until `stop`, each until it is acknowledged: mostly to
/// the catalog's leader (as a node's forwarder would), sometimes to any
/// node (which refuses unless it leads).
async fn writer(sim: Arc<Sim>, w: u64, stop: Arc<AtomicBool>) {
    let mut script = Script {
        w,
        rng: Rng(sim.seed ^ ((w + 1) * 0x9E37)),
        next: w << 40,
        first_anon: 0,
        resendable: vec![],
    };
    let mut rng = Rng(sim.seed ^ ((w + 7) * 0x51ED));
    while !stop.load(Ordering::Relaxed) {
        let batch = script.batch();
        let invoked = Instant::now();
        {
            let mut sent = sim.sent.lock();
            for (m, address, by_user) in &batch.tracks {
                sent.entry(*m).or_insert(Sent {
                    address: address.clone(),
                    by_user: *by_user,
                    invoked,
                    acked: None,
                });
            }
        }
        let give_up = invoked + Duration::from_secs(60);
        loop {
            let up = sim.up();
            let target = if rng.chance(0.85) {
                sim.catalog_leader()
            } else {
                up.get(rng.below(up.len() as u64) as usize).copied()
            };
            let Some(node) = target.and_then(|id| sim.node(id)) else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let attempt = node.pipeline.ingest(batch.texts.clone(), now_ms(), Source::Grpc);
            match tokio::time::timeout(Duration::from_secs(3), attempt).await {
                Ok(Ok(report)) => {
                    if !report.rejections.is_empty() {
                        sim.problems
                            .lock()
                            .push(format!("writer {w}: messages refused: {:?}", report.rejections));
                    }
                    let acked = Instant::now();
                    let mut sent = sim.sent.lock();
                    for (m, _, _) in &batch.tracks {
                        let s = sent.get_mut(m).unwrap();
                        s.acked.get_or_insert(acked);
                    }
                    drop(sent);
                    sim.links.lock().extend(batch.links.iter().cloned());
                    sim.appeared.lock().extend(batch.identifiers.iter().cloned());
                    break;
                }
                _ => {
                    sim.retries.fetch_add(1, Ordering::Relaxed);
                    if Instant::now() > give_up {
                        sim.problems
                            .lock()
                            .push(format!("writer {w}: a batch was not acknowledged within 60 s"));
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(20 + rng.below(40))).await;
                }
            }
        }
    }
}

/// The event numbers named `event` on `image`.
fn numbers(image: &ProfileImage, event: &str) -> BTreeSet<u64> {
    image
        .events
        .iter()
        .filter(|e| e.name == event)
        .filter_map(|e| e.properties.iter().find(|(n, _)| n == "m").map(|(_, v)| v.clone()))
        .filter_map(|v| match v {
            cohort::model::Value::Number(m) => Some(m as u64),
            _ => None,
        })
        .collect()
}

/// Reads a random user's own events on a random node, with
/// read-your-writes (ReadIndex on the catalog, then on the profile's
/// shard), until `stop`.
async fn reader(sim: Arc<Sim>, seed: u64, stop: Arc<AtomicBool>) {
    let mut rng = Rng(seed);
    let barrier = |driver: Arc<Driver>, group: u64| async move {
        matches!(
            tokio::time::timeout(Duration::from_millis(300), driver.read_barrier(group)).await,
            Ok(Ok(()))
        )
    };
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(rng.below(15))).await;
        let up = sim.up();
        let Some(&id) = up.get(rng.below(up.len() as u64) as usize) else { continue };
        let Some(node) = sim.node(id) else { continue };
        let u = user(rng.below(WRITERS), rng.below(USERS));
        let started = Instant::now();
        // A read that cannot complete soon (a node cut off) is given up,
        // and nothing is recorded of it.
        if !barrier(node.driver.clone(), CATALOG_GROUP).await {
            continue;
        }
        let profile = node.catalog.state.read().lookup(&format!("user_id:{u}"));
        let seen = match profile {
            None => BTreeSet::new(),
            Some(profile) => {
                let shard = shard_of(profile, SHARDS);
                if !barrier(node.driver.clone(), shard_group(shard)).await {
                    continue;
                }
                let image = node.shards[shard as usize].read_state().shard.read_profile(profile);
                image.map(|i| numbers(&i, "u")).unwrap_or_default()
            }
        };
        sim.reads.lock().push(Read { node: id, user: u, started, ended: Instant::now(), seen });
    }
}

/// The seeded fault schedule: about `steps` actions a few hundred
/// milliseconds apart, then healing. A cut heals within a step or two, so
/// that writes keep going between faults.
async fn faults(sim: Arc<Sim>, steps: usize) {
    let mut rng = Rng(sim.seed);
    let mut crashed: Option<u64> = None;
    for step in 0..steps {
        tokio::time::sleep(Duration::from_millis(200 + rng.below(300))).await;
        if !sim.net.cut.read().is_empty() && rng.chance(0.6) {
            sim.net.cut.write().clear();
            sim.note(format!("{step}: healed"));
        }
        match rng.below(6) {
            0 | 1 => {
                let a = NODES[rng.below(3) as usize];
                if rng.chance(0.5) {
                    let mut cut = sim.net.cut.write();
                    for b in NODES {
                        cut.insert((a, b));
                        cut.insert((b, a));
                    }
                    drop(cut);
                    sim.note(format!("{step}: node {a} cut off"));
                } else {
                    let b = NODES.iter().copied().filter(|&b| b != a).nth(rng.below(2) as usize).unwrap();
                    sim.net.cut.write().insert((a, b));
                    sim.note(format!("{step}: link {a}->{b} cut"));
                }
            }
            2 | 3 if crashed.is_none() => {
                // The catalog's leader half of the time: the pipeline
                // resumes on the next one.
                let a = match sim.catalog_leader() {
                    Some(l) if rng.chance(0.5) => l,
                    _ => NODES[rng.below(3) as usize],
                };
                sim.crash(a);
                crashed = Some(a);
                sim.note(format!("{step}: node {a} crashed"));
            }
            4 if crashed.is_some() => {
                let a = crashed.take().unwrap();
                sim.start(a).await;
                sim.note(format!("{step}: node {a} restarted"));
            }
            _ => {}
        }
    }
    sim.net.cut.write().clear();
    if let Some(a) = crashed {
        sim.start(a).await;
        sim.note(format!("end: node {a} restarted"));
    }
}

/// Waits until every node has applied every group's committed entries,
/// the leader's outbox is empty, and nothing moved for a while.
async fn settle(sim: &Sim) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = None;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let nodes: Vec<Arc<Running>> = NODES.iter().filter_map(|&id| sim.node(id)).collect();
        let mut heights = Vec::new();
        for n in &nodes {
            let mut groups: Vec<(u64, u64, u64)> =
                n.driver.status().into_iter().map(|g| (g.id, g.commit, g.applied)).collect();
            groups.sort_unstable();
            heights.push(groups);
        }
        let leader_idle = sim
            .catalog_leader()
            .and_then(|l| sim.node(l))
            .is_some_and(|l| l.catalog.outbox.lock().is_empty());
        let agreed = nodes.len() == NODES.len()
            && heights.windows(2).all(|w| w[0] == w[1])
            && heights[0].iter().all(|(_, commit, applied)| commit == applied);
        if leader_idle && agreed && last.as_ref() == Some(&heights) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "seed {}: no agreement 60 s after healing: (group, commit, applied) by node {heights:?}; events: {:?}",
            sim.seed,
            sim.log.lock()
        );
        last = Some(heights);
    }
}

/// Checks the history against the model; `Err` says what broke.
fn check(sim: &Sim) -> Result<String, String> {
    if let Some(p) = sim.problems.lock().first() {
        return Err(p.clone());
    }
    let sent = sim.sent.lock();
    // The model's identities: an anonymous id belongs to the first user it
    // was linked to (each writer's links are in its order, and writers
    // share no identifier).
    let mut owner: HashMap<String, String> = HashMap::new();
    for (a, u) in sim.links.lock().iter() {
        owner.entry(format!("anonymous_id:{a}")).or_insert(format!("user_id:{u}"));
    }
    let appeared = sim.appeared.lock();
    let resolve = |address: &String| owner.get(address).unwrap_or(address).clone();
    let expected_profiles: BTreeSet<String> = appeared.iter().map(resolve).collect();
    let mut reference: Option<(BTreeMap<String, ProfileId>, BTreeMap<ProfileId, ProfileImage>)> = None;
    let mut merges = 0;
    for id in NODES {
        let node = sim.node(id).ok_or(format!("node {id} is down at the end"))?;
        let catalog = node.catalog.state.read();
        merges = catalog.totals.merges;
        // Every identifier resolves, and to its model owner's profile.
        let mut directory = BTreeMap::new();
        for address in appeared.iter() {
            let profile =
                catalog.lookup(address).ok_or(format!("node {id}: {address} resolves to no profile"))?;
            directory.insert(address.clone(), profile);
        }
        drop(catalog);
        for address in appeared.iter() {
            let (mine, owners) = (directory[address], directory[&resolve(address)]);
            if mine != owners {
                return Err(format!(
                    "node {id}: {address} is on profile {mine}, not on profile {owners} of {}",
                    resolve(address)
                ));
            }
        }
        // Every live profile, and every event number on it.
        let mut images = BTreeMap::new();
        for (s, shard) in node.shards.iter().enumerate() {
            let state = shard.read_state();
            for row in state.shard.universe.iter() {
                let profile = state.shard.profile_of(row);
                let image = state
                    .shard
                    .read_profile(profile)
                    .ok_or(format!("node {id}: shard {s} lost {profile}"))?;
                images.insert(profile, image);
            }
        }
        let live: BTreeSet<ProfileId> = images.keys().copied().collect();
        let wanted: BTreeSet<ProfileId> = expected_profiles.iter().map(|a| directory[a]).collect();
        if live != wanted {
            return Err(format!(
                "node {id}: live profiles {:?} are not the model's {:?} (one per user and per anonymous id never linked)",
                live.difference(&wanted).collect::<Vec<_>>(),
                wanted.difference(&live).collect::<Vec<_>>()
            ));
        }
        let mut found: BTreeMap<u64, ProfileId> = BTreeMap::new();
        for (profile, image) in &images {
            for event in ["u", "a"] {
                for m in numbers(image, event) {
                    if found.insert(m, *profile).is_some() {
                        return Err(format!("node {id}: message {m} applied twice"));
                    }
                }
            }
            let events = image.events.iter().filter(|e| e.name == "u" || e.name == "a").count();
            if events != numbers(image, "u").len() + numbers(image, "a").len() {
                return Err(format!("node {id}: profile {profile} holds one message's event twice"));
            }
        }
        for (m, s) in sent.iter() {
            let Some(&profile) = found.get(m) else {
                return Err(format!(
                    "node {id}: message {m} ({}) was acknowledged and is not applied",
                    s.address
                ));
            };
            if profile != directory[&s.address] {
                return Err(format!(
                    "node {id}: message {m} of {} is on profile {profile}, not on {}",
                    s.address, directory[&s.address]
                ));
            }
        }
        if let Some(m) = found.keys().find(|m| !sent.contains_key(m)) {
            return Err(format!("node {id}: message {m} is applied and was never sent"));
        }
        match &reference {
            None => reference = Some((directory, images)),
            Some((d, i)) => {
                if *d != directory {
                    return Err(format!("node {id}'s directory differs from node 1's"));
                }
                if let Some(p) = i.keys().find(|p| i[p] != images[p]) {
                    return Err(format!("node {id}'s profile {p} differs from node 1's"));
                }
            }
        }
    }
    // Reads of a user's own events.
    let reads = sim.reads.lock();
    let mut by_user: BTreeMap<&str, Vec<&Read>> = BTreeMap::new();
    for r in reads.iter() {
        by_user.entry(&r.user).or_default().push(r);
    }
    for (u, reads) in &by_user {
        let address = format!("user_id:{u}");
        let mine: Vec<(&u64, &Sent)> =
            sent.iter().filter(|(_, s)| s.by_user && s.address == address).collect();
        for r in reads {
            if let Some((m, _)) =
                mine.iter().find(|(m, s)| s.acked.is_some_and(|at| at < r.started) && !r.seen.contains(m))
            {
                return Err(format!(
                    "a read of {u} on node {} missed message {m}, acknowledged before it started",
                    r.node
                ));
            }
            if let Some(m) = r.seen.iter().find(|m| !mine.iter().any(|(n, s)| n == m && s.invoked < r.ended))
            {
                return Err(format!(
                    "a read of {u} on node {} saw message {m}, not sent before it ended",
                    r.node
                ));
            }
            for earlier in reads.iter().filter(|e| e.ended < r.started) {
                if let Some(m) = earlier.seen.difference(&r.seen).next() {
                    return Err(format!(
                        "a read of {u} on node {} lost message {m} that a read on node {} had seen before it started",
                        r.node, earlier.node
                    ));
                }
            }
        }
    }
    Ok(format!(
        "{} track messages applied once, {} profiles, {merges} merges, {} batch retries, {} reads",
        sent.len(),
        expected_profiles.len(),
        sim.retries.load(Ordering::Relaxed),
        reads.len()
    ))
}

async fn run_seed(seed: u64) {
    let sim = Sim::new(seed);
    let parts: Vec<_> = NODES.iter().map(|&id| (id, sim.boot(id))).collect();
    // The pipelines start together: each waits to learn the catalog's
    // leader before it serves.
    let serving: Vec<_> = parts
        .into_iter()
        .map(|(id, p)| {
            let sim = sim.clone();
            tokio::spawn(async move { sim.serve(id, p).await })
        })
        .collect();
    for s in serving {
        s.await.unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks: Vec<_> =
        (0..WRITERS).map(|w| tokio::spawn(writer(sim.clone(), w, stop.clone()))).collect();
    tasks.push(tokio::spawn(reader(sim.clone(), seed ^ 3, stop.clone())));
    tasks.push(tokio::spawn(reader(sim.clone(), seed ^ 6, stop.clone())));
    faults(sim.clone(), 16).await;
    // The writers finish the batch they are on (until it is acknowledged).
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    settle(&sim).await;
    let verdict = check(&sim);
    let events = sim.log.lock().join("; ");
    let network = sim.net.summary();
    for id in sim.up() {
        sim.crash(id);
    }
    sim.net.shut();
    common::sim_net::report("pipeline_simulation", seed, verdict, &events, &network);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_faults_apply_every_message_once_with_merges_across_shards() {
    for seed in common::sim_net::seeds(3) {
        run_seed(seed).await;
    }
}
