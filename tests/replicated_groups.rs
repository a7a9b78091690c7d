//! Raft groups replicated on three drivers in one process, over an
//! in-process network that can cut a node off: proposals are answered by
//! their own entries only (matched by index and term) across a leader
//! change, a proposal whose leader lost its quorum fails instead of
//! waiting forever, and a follower that fell behind a compacted log
//! catches up from a snapshot that carries its term and conf state; a
//! fourth node joins with no configuration, as a learner fed by a
//! snapshot, is promoted and votes, and a removed leader hands over and
//! leaves (the membership plan of `cluster::membership` driving the
//! configuration changes).
//!
//! The network here is threads and channels, not yet the seeded,
//! deterministic simulation the cluster issue asks for; the drivers, logs
//! (raft-engine in temporary directories, with fsync) and raft-rs are the
//! real ones.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cohort::replication::driver::{
    Driver, DriverConfig, GroupSpec, SnapshotPolicy, SnapshotReport, Transport,
};
use cohort::replication::storage::LogStore;
use cohort::replication::ReplicationError;
use common::list_machine::ListMachine;
use parking_lot::RwLock;
use raft::eraftpb::{Message, MessageType};

const GROUP: u64 = 1;

/// Delivers messages between the drivers of one process; a cut-off node
/// neither sends nor receives.
#[derive(Default)]
struct Net {
    drivers: RwLock<HashMap<u64, Arc<Driver>>>,
    cut: RwLock<HashSet<u64>>,
    snapshots_sent: AtomicU64,
    /// Snapshot messages the drivers handed over with their bytes inline
    /// rather than a reference to a file (none should be).
    snapshots_inline: AtomicU64,
    /// Report a delivered snapshot this late (the gRPC transport reports
    /// once its call returns, often after the receiver's answer arrived).
    snapshot_report_delay: RwLock<Option<Duration>>,
}

/// One node's end of the network.
struct Port {
    net: Arc<Net>,
    from: u64,
}

impl Transport for Port {
    fn send(&self, group: u64, messages: Vec<Message>) {
        let drivers = self.net.drivers.read();
        let cut = self.net.cut.read();
        for mut m in messages {
            let is_snapshot = m.get_msg_type() == MessageType::MsgSnapshot;
            if is_snapshot
                && cohort::replication::snapshot_file::SnapshotFile::from_data(m.get_snapshot().get_data())
                    .is_none()
            {
                self.net.snapshots_inline.fetch_add(1, Ordering::Relaxed);
            }
            // In memory: the snapshot's bytes, not a file the sender's next
            // snapshot would replace.
            cohort::replication::snapshot_file::inline(&mut m).expect("read the snapshot to send");
            let to = m.to;
            let delivered = !cut.contains(&self.from) && !cut.contains(&to) && drivers.contains_key(&to);
            if delivered {
                drivers[&to].step(group, m);
            } else if let Some(me) = drivers.get(&self.from) {
                me.report_unreachable(group, to);
            }
            if is_snapshot {
                self.net.snapshots_sent.fetch_add(u64::from(delivered), Ordering::Relaxed);
                if let Some(me) = drivers.get(&self.from) {
                    let report = if delivered { SnapshotReport::Finished } else { SnapshotReport::Failed };
                    match *self.net.snapshot_report_delay.read() {
                        Some(delay) => {
                            let me = me.clone();
                            std::thread::spawn(move || {
                                std::thread::sleep(delay);
                                me.report_snapshot(group, to, report);
                            });
                        }
                        None => me.report_snapshot(group, to, report),
                    }
                }
            }
        }
    }
}

struct Cluster {
    net: Arc<Net>,
    machines: HashMap<u64, Arc<ListMachine>>,
    _dirs: Vec<tempfile::TempDir>,
}

impl Cluster {
    /// Starts node `id` as a node that joins: its group has no
    /// configuration until a leader adds it.
    fn start_joiner(&mut self, id: u64, snapshot_every: u64) {
        let dir = tempfile::tempdir().unwrap();
        let machine = ListMachine::new(dir.path());
        self.machines.insert(id, machine.clone());
        let store = Arc::new(LogStore::open(&dir.path().join("raft")).unwrap());
        let config = DriverConfig {
            node_id: id,
            voters: Vec::new(),
            tick: Duration::from_millis(20),
            election_ticks: 10,
            heartbeat_ticks: 2,
            snapshot: SnapshotPolicy { entries: snapshot_every, bytes: u64::MAX },
            proposal_timeout: Duration::from_secs(3),
            ..DriverConfig::default()
        };
        let port = Arc::new(Port { net: self.net.clone(), from: id });
        let groups = vec![GroupSpec { id: GROUP, name: "list".into(), machine }];
        let driver = Driver::start(store, groups, port, config).unwrap();
        self.net.drivers.write().insert(id, Arc::new(driver));
        self._dirs.push(dir);
    }

    fn start(snapshot_every: u64) -> Cluster {
        let net = Arc::new(Net::default());
        let mut machines = HashMap::new();
        let mut dirs = Vec::new();
        let mut starting = Vec::new();
        for id in 1..=3u64 {
            let dir = tempfile::tempdir().unwrap();
            let machine = ListMachine::new(dir.path());
            machines.insert(id, machine.clone());
            let store = Arc::new(LogStore::open(&dir.path().join("raft")).unwrap());
            let config = DriverConfig {
                node_id: id,
                voters: vec![1, 2, 3],
                tick: Duration::from_millis(20),
                election_ticks: 10,
                heartbeat_ticks: 2,
                snapshot: SnapshotPolicy { entries: snapshot_every, bytes: u64::MAX },
                proposal_timeout: Duration::from_secs(3),
                ..DriverConfig::default()
            };
            let port = Arc::new(Port { net: net.clone(), from: id });
            let groups = vec![GroupSpec { id: GROUP, name: "list".into(), machine }];
            let net = net.clone();
            starting.push(std::thread::spawn(move || {
                let driver = Driver::start(store, groups, port, config).unwrap();
                net.drivers.write().insert(id, Arc::new(driver));
            }));
            dirs.push(dir);
        }
        for t in starting {
            t.join().unwrap();
        }
        Cluster { net, machines, _dirs: dirs }
    }

    fn driver(&self, id: u64) -> Arc<Driver> {
        self.net.drivers.read()[&id].clone()
    }

    /// The node that leads the group in the highest term among the nodes
    /// not cut off, once one does.
    fn leader(&self, within: Duration) -> u64 {
        let deadline = Instant::now() + within;
        loop {
            let cut = self.net.cut.read().clone();
            let ids: Vec<u64> = self.net.drivers.read().keys().copied().collect();
            let leader = ids
                .into_iter()
                .filter(|id| !cut.contains(id))
                .filter_map(|id| {
                    let s = self.driver(id).status().into_iter().find(|g| g.id == GROUP)?;
                    (s.role == "leader").then_some((s.term, id))
                })
                .max();
            if let Some((_, id)) = leader {
                return id;
            }
            assert!(Instant::now() < deadline, "no leader within {within:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the three founders' machines hold the same values, and
    /// returns them.
    fn converged(&self, within: Duration) -> Vec<u64> {
        converged_on(self, &[1, 2, 3], within)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // The drivers hold the network that holds them: stop them here.
        let drivers = std::mem::take(&mut *self.net.drivers.write());
        for driver in drivers.values() {
            driver.stop();
        }
    }
}

fn propose(driver: &Driver, value: u64) -> impl std::future::Future<Output = Result<u64, ReplicationError>> {
    let answer = driver.propose(GROUP, value.to_le_bytes().to_vec());
    async move { answer.await.map(|r| *r.downcast::<u64>().expect("the machine's u64")) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proposals_are_answered_by_their_own_entries_across_a_leader_change() {
    let cluster = Cluster::start(1_000_000);
    let first = cluster.leader(Duration::from_secs(10));
    let mut acknowledged = Vec::new();
    for v in 0..40u64 {
        assert_eq!(propose(&cluster.driver(first), v).await.unwrap(), v);
        acknowledged.push(v);
    }
    // Cut the leader off, and propose to it: nothing can commit there.
    cluster.net.cut.write().insert(first);
    let stranded: Vec<_> = (1000..1005u64).map(|v| propose(&cluster.driver(first), v)).collect();
    // The others elect a leader and take more writes.
    let second = cluster.leader(Duration::from_secs(10));
    assert_ne!(second, first);
    for v in 40..80u64 {
        assert_eq!(propose(&cluster.driver(second), v).await.unwrap(), v);
        acknowledged.push(v);
    }
    // The stranded proposals fail (leadership lost, or timed out) instead
    // of waiting forever, and none is answered by another leader's entry.
    for (v, answer) in (1000..).zip(stranded) {
        let answer = tokio::time::timeout(Duration::from_secs(10), answer)
            .await
            .unwrap_or_else(|_| panic!("the proposal of {v} to a cut-off leader was never answered"));
        match answer {
            Err(ReplicationError::LeadershipLost { .. } | ReplicationError::ProposalTimeout { .. }) => {}
            other => panic!("the proposal of {v} to a cut-off leader was answered with {other:?}"),
        }
    }
    // Healed, the old leader follows: its unreplicated entries are
    // replaced, and every replica holds every acknowledged value once.
    cluster.net.cut.write().clear();
    for v in 80..90u64 {
        let leader = cluster.leader(Duration::from_secs(10));
        assert_eq!(propose(&cluster.driver(leader), v).await.unwrap(), v);
        acknowledged.push(v);
    }
    let values = cluster.converged(Duration::from_secs(10));
    assert_eq!(values, acknowledged, "every acknowledged value once, in order, and nothing else");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_a_compacted_log_catches_up_from_a_snapshot() {
    let cluster = Cluster::start(10);
    let leader = cluster.leader(Duration::from_secs(10));
    let behind = (1..=3).find(|&id| id != leader).unwrap();
    cluster.net.cut.write().insert(behind);
    let mut acknowledged = Vec::new();
    for v in 0..60u64 {
        let leader = cluster.leader(Duration::from_secs(10));
        assert_eq!(propose(&cluster.driver(leader), v).await.unwrap(), v);
        acknowledged.push(v);
    }
    // The leader snapshotted and compacted its log past what the cut-off
    // follower has: only a snapshot can bring it back.
    let leader = cluster.leader(Duration::from_secs(10));
    let status = cluster.driver(leader).status().into_iter().find(|g| g.id == GROUP).unwrap();
    assert!(status.first_index > 1, "the leader's log was compacted: {status:?}");
    cluster.net.cut.write().clear();
    let values = cluster.converged(Duration::from_secs(20));
    assert_eq!(values, acknowledged);
    assert!(
        cluster.machines[&behind].restores.load(Ordering::Relaxed) >= 1,
        "the follower installed a snapshot"
    );
    assert!(cluster.net.snapshots_sent.load(Ordering::Relaxed) >= 1);
    // The driver handed each snapshot over as a reference to its file,
    // for the transport to stream: not its bytes in the message.
    assert_eq!(cluster.net.snapshots_inline.load(Ordering::Relaxed), 0);
    // It takes part again: a write commits on it too.
    let leader = cluster.leader(Duration::from_secs(10));
    assert_eq!(propose(&cluster.driver(leader), 99).await.unwrap(), 99);
    acknowledged.push(99);
    assert_eq!(cluster.converged(Duration::from_secs(10)), acknowledged);
}

/// A node of the gRPC cluster: its driver, machine and Raft server task.
struct GrpcNode {
    driver: Arc<Driver>,
    machine: Arc<ListMachine>,
    server: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

/// Starts node `id` of three, with its Raft service on `listener` and
/// peers at `addresses`.
async fn start_grpc_node(
    id: u64,
    listener: tokio::net::TcpListener,
    addresses: &HashMap<u64, String>,
    snapshot_every: u64,
) -> GrpcNode {
    use cohort::replication::transport::{GrpcTransport, RaftService};
    let dir = tempfile::tempdir().unwrap();
    // 12 MiB of snapshot: over the largest gRPC message either end takes,
    // so it only arrives in chunks.
    let machine = ListMachine::with_ballast(dir.path(), 12 << 20);
    let store = Arc::new(LogStore::open(&dir.path().join("raft")).unwrap());
    let slot: cohort::replication::transport::DriverSlot = Arc::default();
    let server = {
        let service = RaftService::new(id, slot.clone(), dir.path().join(format!("transfer-{id}"))).server();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        tokio::spawn(async move {
            let _ =
                tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming).await;
        })
    };
    let transport = Arc::new(GrpcTransport::new(
        id,
        addresses.clone(),
        slot.clone(),
        tokio::runtime::Handle::current(),
        None,
    ));
    let config = DriverConfig {
        node_id: id,
        voters: vec![1, 2, 3],
        tick: Duration::from_millis(20),
        election_ticks: 10,
        heartbeat_ticks: 2,
        snapshot: SnapshotPolicy { entries: snapshot_every, bytes: u64::MAX },
        proposal_timeout: Duration::from_secs(3),
        ..DriverConfig::default()
    };
    let groups = vec![GroupSpec { id: GROUP, name: "list".into(), machine: machine.clone() }];
    let driver = tokio::task::spawn_blocking(move || Driver::start(store, groups, transport, config))
        .await
        .unwrap()
        .unwrap();
    let driver = Arc::new(driver);
    slot.set(Arc::downgrade(&driver)).unwrap();
    GrpcNode { driver, machine, server, _dir: dir }
}

impl GrpcNode {
    fn role(&self) -> Option<(u64, &'static str)> {
        self.driver.status().into_iter().find(|g| g.id == GROUP).map(|g| (g.term, g.role))
    }

    /// Stops the node: its driver, then its Raft server.
    fn kill(self) {
        self.driver.stop();
        self.server.abort();
    }
}

async fn grpc_leader(nodes: &HashMap<u64, GrpcNode>, within: Duration) -> u64 {
    let deadline = Instant::now() + within;
    loop {
        let leader = nodes
            .iter()
            .filter_map(|(&id, n)| n.role().filter(|r| r.1 == "leader").map(|(term, _)| (term, id)))
            .max();
        if let Some((_, id)) = leader {
            return id;
        }
        assert!(Instant::now() < deadline, "no leader within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn grpc_converged(nodes: &HashMap<u64, GrpcNode>, within: Duration) -> Vec<u64> {
    let deadline = Instant::now() + within;
    loop {
        let lists: Vec<Vec<u64>> = nodes.values().map(|n| n.machine.values()).collect();
        if lists.windows(2).all(|w| w[0] == w[1]) {
            return lists[0].clone();
        }
        assert!(
            Instant::now() < deadline,
            "replicas differ after {within:?}: {:?}",
            lists.iter().map(Vec::len).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Proposes `value` to the current leader, again on another leader when
/// the first answers that it is not (or no longer) one.
async fn grpc_propose(nodes: &HashMap<u64, GrpcNode>, value: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let leader = grpc_leader(nodes, Duration::from_secs(10)).await;
        match propose(&nodes[&leader].driver, value).await {
            Ok(v) => return v,
            Err(ReplicationError::NotLeader { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("proposing {value}: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_over_grpc_replicate_catch_up_from_a_chunked_snapshot_and_fail_over() {
    let mut listeners = Vec::new();
    let mut addresses = HashMap::new();
    for id in 1..=3u64 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        addresses.insert(id, listener.local_addr().unwrap().to_string());
        listeners.push((id, listener));
    }
    // Nodes 1 and 2 start; node 3 is down (its port refuses connections),
    // so their transports keep reconnecting to it.
    let (_, third) = listeners.pop().unwrap();
    let third_addr = third.local_addr().unwrap();
    drop(third);
    let mut nodes = HashMap::new();
    for (id, listener) in listeners {
        nodes.insert(id, start_grpc_node(id, listener, &addresses, 10).await);
    }
    let mut acknowledged = Vec::new();
    // Snapshots every 10 entries compact the log past what node 3 could
    // replay.
    for v in 0..60u64 {
        assert_eq!(grpc_propose(&nodes, v).await, v);
        acknowledged.push(v);
    }
    let leader = grpc_leader(&nodes, Duration::from_secs(10)).await;
    let status = nodes[&leader].driver.status().into_iter().find(|g| g.id == GROUP).unwrap();
    assert!(status.first_index > 1, "the leader's log was compacted: {status:?}");
    // Node 3 comes up on its address and catches up from a snapshot sent
    // over the Snapshot stream (12 MiB: in 1 MiB chunks).
    let listener = tokio::net::TcpListener::bind(third_addr).await.unwrap();
    nodes.insert(3, start_grpc_node(3, listener, &addresses, 10).await);
    assert_eq!(grpc_converged(&nodes, Duration::from_secs(20)).await, acknowledged);
    assert!(nodes[&3].machine.restores.load(Ordering::Relaxed) >= 1, "node 3 installed a snapshot");
    // It came in as a file, streamed a chunk at a time, that the restore
    // took: nothing is left in transfer.
    let transfer = nodes[&3]._dir.path().join("transfer-3");
    assert!(transfer.is_dir(), "node 3 received into {}", transfer.display());
    // (A second copy raft-rs sent meanwhile may still be on its way in:
    // it is removed once stepped.)
    let emptied = Instant::now();
    loop {
        let left: Vec<_> = std::fs::read_dir(&transfer).unwrap().flatten().map(|e| e.path()).collect();
        if left.is_empty() {
            break;
        }
        assert!(emptied.elapsed() < Duration::from_secs(5), "left in transfer: {left:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The leader dies: the two others elect one and go on.
    let leader = grpc_leader(&nodes, Duration::from_secs(10)).await;
    nodes.remove(&leader).unwrap().kill();
    for v in 60..80u64 {
        assert_eq!(grpc_propose(&nodes, v).await, v);
        acknowledged.push(v);
    }
    assert_eq!(grpc_converged(&nodes, Duration::from_secs(20)).await, acknowledged);
    for (_, node) in nodes.drain() {
        node.kill();
    }
}

/// Takes the membership plan's next step for the group on its leader
/// until `done` holds for the leader's view of the group, proposing a
/// value between steps (the group keeps taking writes throughout) unless
/// `next` is `None` (a quiet group).
async fn reconcile_until(
    cluster: &Cluster,
    members: &cohort::cluster::membership::Members,
    acknowledged: &mut Vec<u64>,
    next: Option<&mut u64>,
    done: impl Fn(&cohort::replication::driver::Membership) -> bool,
) {
    let mut next = next;
    use cohort::cluster::membership::{plan, Step, Wanted};
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let leader = cluster.leader(Duration::from_secs(10));
        let driver = cluster.driver(leader);
        let state = driver.membership(GROUP).await.unwrap();
        if state.leading && done(&state) {
            return;
        }
        assert!(Instant::now() < deadline, "the configuration did not get there: {state:?}");
        match plan(leader, &state, members, &Wanted::of(None, members, false)) {
            Some(Step::Compact) => driver.compact_for_join(GROUP),
            Some(Step::Change(cc)) => {
                let _ = driver.propose_conf_change(GROUP, cc).await;
            }
            Some(Step::HandOver(to)) => driver.transfer_leader(GROUP, to),
            None => {}
        }
        if let Some(next) = next.as_deref_mut() {
            if let Ok(v) = propose(&driver, *next).await {
                assert_eq!(v, *next);
                acknowledged.push(v);
                *next += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the machines of `ids` hold the same values, and returns
/// them.
fn converged_on(cluster: &Cluster, ids: &[u64], within: Duration) -> Vec<u64> {
    let deadline = Instant::now() + within;
    loop {
        let lists: Vec<Vec<u64>> = ids.iter().map(|id| cluster.machines[id].values()).collect();
        if lists.windows(2).all(|w| w[0] == w[1]) {
            return lists[0].clone();
        }
        assert!(
            Instant::now() < deadline,
            "replicas {ids:?} differ after {within:?}: {:?}",
            lists.iter().map(Vec::len).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_as_a_learner_from_a_snapshot_votes_once_promoted_and_a_removed_leader_leaves() {
    use cohort::cluster::membership::{Member, MemberState, Members};
    // No snapshot by policy: the log starts at index 1, and the join must
    // compact it first so that the new node gets a snapshot.
    let mut cluster = Cluster::start(1_000_000);
    let mut acknowledged = Vec::new();
    let mut next = 0u64;
    for _ in 0..30 {
        let leader = cluster.leader(Duration::from_secs(10));
        acknowledged.push(propose(&cluster.driver(leader), next).await.unwrap());
        next += 1;
    }
    cluster.start_joiner(4, 1_000_000);
    let member =
        |id: u64, state| Member { id, raft_addr: format!("n{id}"), grpc_addr: format!("g{id}"), state };
    let mut members: Members = (1..=4).map(|id| (id, member(id, MemberState::Active))).collect();
    reconcile_until(&cluster, &members, &mut acknowledged, Some(&mut next), |m| m.voters == [1, 2, 3, 4])
        .await;
    assert!(cluster.machines[&4].restores.load(Ordering::Relaxed) >= 1, "node 4 started from a snapshot");
    assert_eq!(converged_on(&cluster, &[1, 2, 3, 4], Duration::from_secs(10)), acknowledged);

    // The leader is removed: it hands over, then leaves every quorum.
    let removed = cluster.leader(Duration::from_secs(10));
    members.insert(removed, member(removed, MemberState::Removed));
    let remaining: Vec<u64> = (1..=4).filter(|&id| id != removed).collect();
    reconcile_until(&cluster, &members, &mut acknowledged, Some(&mut next), |m| m.voters == remaining).await;
    assert_ne!(cluster.leader(Duration::from_secs(10)), removed);
    // Node 4 votes: with the removed node and one more cut off, two of the
    // three voters left (node 4 among them) still commit.
    let other =
        *remaining.iter().find(|&&id| id != 4 && id != cluster.leader(Duration::from_secs(10))).unwrap();
    cluster.net.cut.write().extend([removed, other]);
    let leader = cluster.leader(Duration::from_secs(10));
    acknowledged.push(propose(&cluster.driver(leader), next).await.unwrap());
    cluster.net.cut.write().clear();
    assert_eq!(converged_on(&cluster, &remaining, Duration::from_secs(10)), acknowledged);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_a_quiet_group_and_is_promoted_without_waiting_for_a_write() {
    use cohort::cluster::membership::{Member, MemberState, Members};
    let mut cluster = Cluster::start(1_000_000);
    let mut acknowledged = Vec::new();
    for v in 0..5u64 {
        let leader = cluster.leader(Duration::from_secs(10));
        acknowledged.push(propose(&cluster.driver(leader), v).await.unwrap());
    }
    // Reported after the learner's answer, as over gRPC: raft-rs then
    // leaves the learner probing.
    *cluster.net.snapshot_report_delay.write() = Some(Duration::from_millis(100));
    cluster.start_joiner(4, 1_000_000);
    let member = |id: u64| Member {
        id,
        raft_addr: format!("n{id}"),
        grpc_addr: format!("g{id}"),
        state: MemberState::Active,
    };
    let members: Members = (1..=4).map(|id| (id, member(id))).collect();
    // No write while it joins: after its snapshot, raft-rs only probes the
    // learner, and the plan must see that it has the whole log.
    reconcile_until(&cluster, &members, &mut acknowledged, None, |m| m.voters == [1, 2, 3, 4]).await;
    assert_eq!(converged_on(&cluster, &[1, 2, 3, 4], Duration::from_secs(10)), acknowledged);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_moved_away_is_dropped_while_its_node_runs_and_can_come_back() {
    use cohort::cluster::membership::{Member, MemberState, Members};
    let mut cluster = Cluster::start(1_000_000);
    let mut acknowledged = Vec::new();
    let mut next = 0u64;
    for _ in 0..20 {
        let leader = cluster.leader(Duration::from_secs(10));
        acknowledged.push(propose(&cluster.driver(leader), next).await.unwrap());
        next += 1;
    }
    // Node 4 joins and node 3's replica moves to it.
    cluster.start_joiner(4, 1_000_000);
    let member =
        |id: u64, state| Member { id, raft_addr: format!("n{id}"), grpc_addr: format!("g{id}"), state };
    let mut members: Members = (1..=4).map(|id| (id, member(id, MemberState::Active))).collect();
    members.insert(3, member(3, MemberState::Removed));
    reconcile_until(&cluster, &members, &mut acknowledged, Some(&mut next), |m| m.voters == [1, 2, 4]).await;
    // A member's replica is never dropped.
    let refused = cluster.driver(1).drop_replica(GROUP).await;
    assert!(matches!(refused, Err(ReplicationError::DropReplica { .. })), "{refused:?}");
    // Node 3 drops its replica once it has applied its removal: state,
    // snapshot file and log; the group opens again with no configuration.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match cluster.driver(3).drop_replica(GROUP).await {
            Ok(true) => break,
            other => assert!(Instant::now() < deadline, "node 3 does not drop its replica: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(cluster.machines[&3].values().is_empty(), "node 3 still holds its values");
    let status = cluster.driver(3).status().into_iter().find(|g| g.id == GROUP).unwrap();
    assert!(status.voters.is_empty() && status.learners.is_empty(), "{status:?}");
    assert!(!cluster.driver(3).drop_replica(GROUP).await.unwrap(), "nothing left to drop");
    // Writes go on without it, and it comes back: a learner from a
    // snapshot, then a voter with the whole list again.
    for _ in 0..5 {
        let leader = cluster.leader(Duration::from_secs(10));
        acknowledged.push(propose(&cluster.driver(leader), next).await.unwrap());
        next += 1;
    }
    members.insert(3, member(3, MemberState::Active));
    reconcile_until(&cluster, &members, &mut acknowledged, Some(&mut next), |m| m.voters == [1, 2, 3, 4])
        .await;
    assert!(cluster.machines[&3].restores.load(Ordering::Relaxed) >= 1, "node 3 came back from a snapshot");
    assert_eq!(converged_on(&cluster, &[1, 2, 3, 4], Duration::from_secs(10)), acknowledged);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_index_requests_of_different_followers_are_each_answered() {
    let cluster = Cluster::start(1_000_000);
    let leader = cluster.leader(Duration::from_secs(10));
    assert_eq!(propose(&cluster.driver(leader), 1).await.unwrap(), 1);
    let followers: Vec<u64> = (1..=3).filter(|&id| id != leader).collect();
    // Rounds of reads sent at once from both followers: each node numbers
    // its requests from 1, and the leader holds pending reads by context.
    for round in 0..20 {
        let reads: Vec<_> = followers.iter().map(|&id| cluster.driver(id).read_barrier(GROUP)).collect();
        for (id, read) in followers.iter().zip(reads) {
            tokio::time::timeout(Duration::from_secs(2), read)
                .await
                .unwrap_or_else(|_| panic!("round {round}: the read of node {id} was never answered"))
                .unwrap_or_else(|e| panic!("round {round}: the read of node {id} failed: {e}"));
        }
    }
}

/// The groups of a one-node store, each with its list machine in a folder
/// of its own under `dir`.
fn list_groups(dir: &std::path::Path, ids: &[u64]) -> Vec<GroupSpec> {
    ids.iter()
        .map(|&id| {
            let folder = dir.join(format!("group-{id}"));
            std::fs::create_dir_all(&folder).unwrap();
            GroupSpec { id, name: format!("list {id}"), machine: ListMachine::reopen(&folder) }
        })
        .collect()
}

fn one_node(voters: &[u64]) -> DriverConfig {
    DriverConfig { node_id: 1, voters: voters.to_vec(), ..DriverConfig::default() }
}

fn voters_of(driver: &Driver, group: u64) -> Vec<u64> {
    driver.status().into_iter().find(|g| g.id == group).map(|g| g.voters).unwrap_or_default()
}

#[test]
fn founders_bootstrap_once_and_a_group_emptied_later_starts_with_no_configuration() {
    use cohort::replication::driver::NoPeers;
    let dir = tempfile::tempdir().unwrap();
    let raft = dir.path().join("raft");
    // A first start that crashed in the middle of the bootstrap: group 2
    // was initialized, group 1 (the first, initialized last) was not. The
    // next start finishes it.
    {
        let store = LogStore::open(&raft).unwrap();
        store.group(2).unwrap().initialize(&store, &[1]).unwrap();
    }
    let store = Arc::new(LogStore::open(&raft).unwrap());
    let driver =
        Driver::start(store.clone(), list_groups(dir.path(), &[1, 2, 3]), Arc::new(NoPeers), one_node(&[1]))
            .unwrap();
    for group in [1, 2, 3] {
        assert_eq!(voters_of(&driver, group), vec![1], "group {group} after the first start");
    }
    driver.stop();
    drop(driver);
    // Group 3's replica moves away: its log is cleaned. Restarted with the
    // same founders, the node does not bootstrap it again.
    store.clean_group(3).unwrap();
    let driver =
        Driver::start(store.clone(), list_groups(dir.path(), &[1, 2, 3]), Arc::new(NoPeers), one_node(&[1]))
            .unwrap();
    assert_eq!(voters_of(&driver, 1), vec![1]);
    assert_eq!(voters_of(&driver, 2), vec![1]);
    assert_eq!(voters_of(&driver, 3), Vec::<u64>::new(), "the emptied group was bootstrapped again");
    driver.stop();
}
