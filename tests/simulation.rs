//! Randomized fault simulation of the replication driver and the
//! membership plan, checked against a model.
//!
//! Three drivers (the real ones: raft-rs, raft-engine logs in temporary
//! directories with fsync, appliers, snapshots every few dozen entries)
//! replicate one group of a list machine over an in-process network that
//! drops, duplicates, delays and so reorders messages, cuts links and
//! whole nodes off, while a seeded schedule crashes nodes (the driver
//! stops with no snapshot and starts again from its directory), a fourth
//! node joins the member table, the group's replica moves between nodes
//! through the placement and the membership plan (a learner from a
//! snapshot, then one joint configuration change that promotes it and
//! removes the old voter), and a node is removed (its replica moves to
//! the node without one). The group keeps 3 voters (the replication
//! factor). Writers propose unique values to the
//! leader (and sometimes to a follower); readers read a replica after a
//! ReadIndex barrier. After healing, the history is checked:
//!
//! - every acknowledged value is applied exactly once, no value twice, and
//!   no value refused as "not leader" at all;
//! - every replica the placement wants holds the same list, and the
//!   group's voters are those replicas;
//! - reads are linearizable: the list is the log, so each read must be a
//!   prefix of the final list, hold every value acknowledged before it
//!   started, and be no shorter than any read that ended before it
//!   started.
//!
//! The seed fixes the fault schedule and every random choice the
//! controller, writers and network make; the threads' interleaving is the
//! machine's, so a seed replays the same faults, not the same run. A
//! failure prints its seed; `COHORT_SIM_SEED=S` replays one seed,
//! `COHORT_SIM_SEEDS=N` (default 6) runs N seeds from
//! `COHORT_SIM_FIRST` (default 1); `tools/simulate.sh` runs hundreds.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cohort::cluster::membership::{plan, Member, MemberState, Members, Step, Wanted};
use cohort::cluster::placement::{Placement, ReplicaMove};
use cohort::replication::driver::{Driver, DriverConfig, GroupSpec, SnapshotPolicy};
use cohort::replication::storage::LogStore;
use cohort::replication::ReplicationError;
use common::list_machine::ListMachine;
use common::sim_net::{Port, Rng, SimNet};
use parking_lot::{Mutex, RwLock};

const GROUP: u64 = 1;

/// A node of the simulation: its directory (kept across crashes) and, while
/// it runs, its machine.
struct SimNode {
    dir: tempfile::TempDir,
    machine: Option<Arc<ListMachine>>,
}

/// How a proposal ended, for the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// Acknowledged between these instants.
    Acked(Instant, Instant),
    /// Refused before it was appended (not leader): must never apply.
    Refused,
    /// Failed after it may have been appended: applies once or never.
    Unknown,
}

/// A read: when it started and ended, and what it saw.
struct Read {
    node: u64,
    started: Instant,
    ended: Instant,
    values: Vec<u64>,
}

struct Sim {
    seed: u64,
    net: Arc<SimNet>,
    nodes: Mutex<BTreeMap<u64, SimNode>>,
    members: RwLock<Members>,
    /// Where the group's 3 voters should be.
    placement: RwLock<Placement>,
    outcomes: Mutex<HashMap<u64, Outcome>>,
    reads: Mutex<Vec<Read>>,
    log: Mutex<Vec<String>>,
}

fn member(id: u64, state: MemberState) -> Member {
    Member { id, raft_addr: format!("sim-{id}"), grpc_addr: format!("sim-{id}"), state }
}

impl Sim {
    fn new(seed: u64) -> Arc<Sim> {
        let sim = Arc::new(Sim {
            seed,
            net: SimNet::new(seed),
            nodes: Mutex::default(),
            members: RwLock::new((1..=3).map(|id| (id, member(id, MemberState::Active))).collect()),
            placement: RwLock::new({
                let mut p = Placement { replication_factor: 3, ..Placement::default() };
                p.fill(&[1, 2, 3], &[GROUP]);
                p
            }),
            outcomes: Mutex::default(),
            reads: Mutex::default(),
            log: Mutex::default(),
        });
        for id in 1..=3 {
            sim.nodes.lock().insert(id, SimNode { dir: tempfile::tempdir().unwrap(), machine: None });
        }
        sim
    }

    fn note(&self, what: String) {
        self.log.lock().push(what);
    }

    /// Starts node `id` from its directory (`voters`: the founders, or none
    /// for a node that joins).
    fn start(&self, id: u64, voters: &[u64]) {
        let mut nodes = self.nodes.lock();
        let node =
            nodes.entry(id).or_insert_with(|| SimNode { dir: tempfile::tempdir().unwrap(), machine: None });
        let machine = ListMachine::reopen(node.dir.path());
        let store = Arc::new(LogStore::open(&node.dir.path().join("raft")).unwrap());
        let config = DriverConfig {
            node_id: id,
            voters: voters.to_vec(),
            tick: Duration::from_millis(20),
            election_ticks: 10,
            heartbeat_ticks: 2,
            snapshot: SnapshotPolicy { entries: 40, bytes: u64::MAX },
            proposal_timeout: Duration::from_secs(2),
            ..DriverConfig::default()
        };
        let port = Arc::new(Port { net: self.net.clone(), from: id });
        let groups = vec![GroupSpec { id: GROUP, name: "list".into(), machine: machine.clone() }];
        let driver = Driver::start(store, groups, port, config)
            .unwrap_or_else(|e| panic!("seed {}: node {id} does not start again: {e}", self.seed));
        node.machine = Some(machine);
        self.net.drivers.write().insert(id, Arc::new(driver));
    }

    /// Stops node `id` as a crash would: no snapshot, nothing but what its
    /// log has on disk survives.
    fn crash(&self, id: u64) {
        let driver = self.net.drivers.write().remove(&id);
        if let Some(driver) = driver {
            driver.stop();
        }
        if let Some(node) = self.nodes.lock().get_mut(&id) {
            node.machine = None;
        }
    }

    fn up(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.net.drivers.read().keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    fn driver(&self, id: u64) -> Option<Arc<Driver>> {
        self.net.drivers.read().get(&id).cloned()
    }

    /// The node leading the group in the highest term, among those up.
    fn leader(&self) -> Option<u64> {
        self.up()
            .into_iter()
            .filter_map(|id| {
                let s = self.driver(id)?.status().into_iter().find(|g| g.id == GROUP)?;
                (s.role == "leader").then_some((s.term, id))
            })
            .max()
            .map(|(_, id)| id)
    }

    fn active(&self) -> Vec<u64> {
        self.members.read().values().filter(|m| m.state == MemberState::Active).map(|m| m.id).collect()
    }

    /// The group's wanted voters, in id order.
    fn wanted(&self) -> Vec<u64> {
        let mut wanted = self.placement.read().wanted(GROUP).map(<[u64]>::to_vec).unwrap_or_default();
        wanted.sort_unstable();
        wanted
    }

    /// Brings the placement to the member table (a removed node's replica
    /// goes to a node without one).
    fn place(&self) {
        let active = self.active();
        self.placement.write().fill(&active, &[GROUP]);
    }
}

/// Proposes values until `stop`: mostly to the leader, sometimes to any
/// node (which refuses unless it leads).
async fn writer(sim: Arc<Sim>, first: u64, stride: u64, seed: u64, stop: Arc<AtomicBool>) {
    let mut rng = Rng(seed);
    let mut value = first;
    while !stop.load(Ordering::Relaxed) {
        let up = sim.up();
        let target =
            if rng.chance(0.8) { sim.leader() } else { up.get(rng.below(up.len() as u64) as usize).copied() };
        let Some(driver) = target.and_then(|id| sim.driver(id)) else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let started = Instant::now();
        let answer = driver.propose(GROUP, value.to_le_bytes().to_vec()).await;
        let outcome = match answer {
            Ok(r) => {
                assert_eq!(*r.downcast::<u64>().unwrap(), value, "seed {}: another entry answered", sim.seed);
                Outcome::Acked(started, Instant::now())
            }
            Err(ReplicationError::NotLeader { .. }) => Outcome::Refused,
            Err(_) => Outcome::Unknown,
        };
        sim.outcomes.lock().insert(value, outcome);
        value += stride;
        if !matches!(outcome, Outcome::Acked(..)) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Reads a random replica after a ReadIndex barrier until `stop`.
async fn reader(sim: Arc<Sim>, seed: u64, stop: Arc<AtomicBool>) {
    let mut rng = Rng(seed);
    while !stop.load(Ordering::Relaxed) {
        let active = sim.active();
        let up: Vec<u64> = sim.up().into_iter().filter(|id| active.contains(id)).collect();
        let Some(&node) = up.get(rng.below(up.len() as u64) as usize) else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let Some(driver) = sim.driver(node) else { continue };
        let machine = sim.nodes.lock().get(&node).and_then(|n| n.machine.clone());
        let Some(machine) = machine else { continue };
        let started = Instant::now();
        // A read that cannot complete soon (a node cut off) is given up,
        // and nothing is recorded of it.
        let barrier = tokio::time::timeout(Duration::from_millis(300), driver.read_barrier(GROUP)).await;
        if matches!(barrier, Ok(Ok(()))) {
            let values = machine.values();
            sim.reads.lock().push(Read { node, started, ended: Instant::now(), values });
        }
        tokio::time::sleep(Duration::from_millis(rng.below(15))).await;
    }
}

/// Takes the membership plan's steps on the leader until `stop`.
async fn reconciler(sim: Arc<Sim>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let Some(leader) = sim.leader() else { continue };
        let Some(driver) = sim.driver(leader) else { continue };
        let Some(state) = driver.membership(GROUP).await else { continue };
        let members = sim.members.read().clone();
        let wanted = Wanted::of(sim.placement.read().wanted(GROUP), &members, false);
        match plan(leader, &state, &members, &wanted) {
            Some(Step::Compact) => driver.compact_for_join(GROUP),
            Some(Step::Change(cc)) => {
                let what = cohort::cluster::membership::describe(&cc);
                if driver.propose_conf_change(GROUP, cc).await.is_ok() {
                    sim.note(format!("{what} (on {leader})"));
                }
            }
            Some(Step::HandOver(to)) => driver.transfer_leader(GROUP, to),
            None => {}
        }
    }
}

/// The seeded fault schedule: about `steps` actions a few hundred
/// milliseconds apart.
async fn faults(sim: Arc<Sim>, steps: usize) {
    let mut rng = Rng(sim.seed);
    let mut crashed: Option<u64> = None;
    let (mut joined, mut removed) = (false, false);
    for step in 0..steps {
        tokio::time::sleep(Duration::from_millis(100 + rng.below(250))).await;
        let active = sim.active();
        match rng.below(8) {
            0 | 1 => {
                // Cut one node off both ways, or one link one way.
                let a = active[rng.below(active.len() as u64) as usize];
                if rng.chance(0.5) {
                    let mut cut = sim.net.cut.write();
                    for &b in &active {
                        cut.insert((a, b));
                        cut.insert((b, a));
                    }
                    drop(cut);
                    sim.note(format!("{step}: node {a} cut off"));
                } else {
                    let b = active[rng.below(active.len() as u64) as usize];
                    sim.net.cut.write().insert((a, b));
                    sim.note(format!("{step}: link {a}->{b} cut"));
                }
            }
            2 => {
                sim.net.cut.write().clear();
                sim.note(format!("{step}: healed"));
            }
            3 if crashed.is_none() => {
                let a = active[rng.below(active.len() as u64) as usize];
                sim.crash(a);
                crashed = Some(a);
                sim.note(format!("{step}: node {a} crashed"));
            }
            4 if crashed.is_some() => {
                let a = crashed.take().unwrap();
                sim.start(a, founders_of(a));
                sim.note(format!("{step}: node {a} restarted"));
            }
            5 if !joined => {
                sim.members.write().insert(4, member(4, MemberState::Active));
                sim.place();
                sim.start(4, &[]);
                joined = true;
                sim.note(format!("{step}: node 4 joins"));
            }
            6 if joined && !removed && crashed.is_none() => {
                let a = active[rng.below(active.len() as u64) as usize];
                sim.members.write().insert(a, member(a, MemberState::Removed));
                sim.place();
                removed = true;
                sim.note(format!("{step}: node {a} removed (voters to be {:?})", sim.wanted()));
            }
            7 => {
                // A replica moves to a node without one, if there is one.
                let wanted = sim.wanted();
                let spare: Vec<u64> = active.iter().copied().filter(|id| !wanted.contains(id)).collect();
                if !spare.is_empty() {
                    let from = wanted[rng.below(wanted.len() as u64) as usize];
                    let to = spare[rng.below(spare.len() as u64) as usize];
                    let moved =
                        sim.placement.write().move_replica(ReplicaMove { group: GROUP, from, to }, &active);
                    if moved.is_ok() {
                        sim.note(format!("{step}: replica moves from node {from} to node {to}"));
                    }
                }
            }
            _ => {}
        }
    }
    // Heal: links back, the crashed node back.
    sim.net.cut.write().clear();
    if let Some(a) = crashed {
        sim.start(a, founders_of(a));
        sim.note(format!("end: node {a} restarted"));
    }
}

/// The voters node `a` starts a brand-new group with: the founders for
/// a founder, none for the node that joins (its group waits for a leader
/// to add it, also when it crashed before it got anything).
fn founders_of(a: u64) -> &'static [u64] {
    if a <= 3 {
        &[1, 2, 3]
    } else {
        &[]
    }
}

/// Waits until the wanted replicas hold one list and the group's
/// configuration is the placement; returns the list.
async fn settle(sim: &Sim) -> Vec<u64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let active = sim.wanted();
        let lists: Vec<(u64, Vec<u64>)> = active
            .iter()
            .filter_map(|id| {
                let m = sim.nodes.lock().get(id).and_then(|n| n.machine.clone())?;
                Some((*id, m.values()))
            })
            .collect();
        let configured = match sim.leader().and_then(|l| sim.driver(l)) {
            Some(d) => d.membership(GROUP).await.is_some_and(|m| {
                let mut voters = m.voters.clone();
                voters.sort_unstable();
                voters == active && m.learners.is_empty()
            }),
            None => false,
        };
        if configured && lists.len() == active.len() && lists.windows(2).all(|w| w[0].1 == w[1].1) {
            return lists[0].1.clone();
        }
        assert!(
            Instant::now() < deadline,
            "seed {}: no agreement 30 s after healing: {:?}; events: {:?}",
            sim.seed,
            lists.iter().map(|(id, l)| (*id, l.len())).collect::<Vec<_>>(),
            sim.log.lock()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Checks the history against the model; `Err` says what broke.
fn check(sim: &Sim, list: &[u64]) -> Result<String, String> {
    let outcomes = sim.outcomes.lock();
    let mut seen = HashSet::new();
    for v in list {
        if !seen.insert(*v) {
            return Err(format!("value {v} applied twice"));
        }
        match outcomes.get(v) {
            Some(Outcome::Refused) => return Err(format!("value {v} was refused as not leader and applied")),
            None => return Err(format!("value {v} applied but never proposed")),
            _ => {}
        }
    }
    let acked: Vec<(u64, Instant)> = outcomes
        .iter()
        .filter_map(|(&v, o)| match o {
            Outcome::Acked(_, at) => Some((v, *at)),
            _ => None,
        })
        .collect();
    if let Some((v, _)) = acked.iter().find(|(v, _)| !seen.contains(v)) {
        return Err(format!("acknowledged value {v} is not in the final list"));
    }
    let reads = sim.reads.lock();
    for r in reads.iter() {
        if r.values.len() > list.len() || r.values[..] != list[..r.values.len()] {
            return Err(format!(
                "a read on node {} saw {} values that are not a prefix of the log",
                r.node,
                r.values.len()
            ));
        }
        let holds: HashSet<u64> = r.values.iter().copied().collect();
        if let Some((v, _)) = acked.iter().find(|(v, at)| *at < r.started && !holds.contains(v)) {
            return Err(format!(
                "a read on node {} missed value {v}, acknowledged before it started",
                r.node
            ));
        }
    }
    // Real-time order: a read that started after another ended is no
    // shorter than it.
    let mut by_end: Vec<&Read> = reads.iter().collect();
    by_end.sort_by_key(|r| r.ended);
    let mut longest_ended: Vec<(Instant, usize)> = Vec::new();
    let mut best = 0;
    for r in &by_end {
        best = best.max(r.values.len());
        longest_ended.push((r.ended, best));
    }
    for r in reads.iter() {
        let before = longest_ended.partition_point(|(ended, _)| *ended < r.started);
        if before > 0 && longest_ended[before - 1].1 > r.values.len() {
            return Err(format!(
                "a read on node {} saw {} values after a read that had ended saw {}",
                r.node,
                r.values.len(),
                longest_ended[before - 1].1
            ));
        }
    }
    let unknown = outcomes.values().filter(|o| **o == Outcome::Unknown).count();
    let refused = outcomes.values().filter(|o| **o == Outcome::Refused).count();
    Ok(format!(
        "{} applied, {} acknowledged, {unknown} unknown, {refused} refused, {} reads",
        list.len(),
        acked.len(),
        reads.len()
    ))
}

/// Runs one seed and checks it.
async fn run_seed(seed: u64) {
    let sim = Sim::new(seed);
    let starting: Vec<_> = (1..=3).collect();
    for id in &starting {
        sim.start(*id, &starting);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = vec![
        tokio::spawn(writer(sim.clone(), 0, 4, seed ^ 1, stop.clone())),
        tokio::spawn(writer(sim.clone(), 1, 4, seed ^ 2, stop.clone())),
        tokio::spawn(writer(sim.clone(), 2, 4, seed ^ 4, stop.clone())),
        tokio::spawn(writer(sim.clone(), 3, 4, seed ^ 5, stop.clone())),
        tokio::spawn(reader(sim.clone(), seed ^ 3, stop.clone())),
        tokio::spawn(reader(sim.clone(), seed ^ 6, stop.clone())),
        tokio::spawn(reconciler(sim.clone(), stop.clone())),
    ];
    faults(sim.clone(), 12).await;
    // The writers and the reader stop; the reconciler goes on until the
    // configuration is the table's.
    let list = settle(&sim).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    // What the stopped writers had in flight has settled too.
    let list = {
        let _ = list;
        tokio::time::sleep(Duration::from_millis(300)).await;
        settle(&sim).await
    };
    let verdict = check(&sim, &list);
    let events = sim.log.lock().join("; ");
    let network = sim.net.summary();
    for id in sim.up() {
        sim.crash(id);
    }
    sim.net.shut();
    common::sim_net::report("simulation", seed, verdict, &events, &network);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_faults_lose_nothing_acknowledged_and_reads_are_linearizable() {
    for seed in common::sim_net::seeds(6) {
        run_seed(seed).await;
    }
}
