//! Drives every raft-rs group of a node.
//!
//! One thread runs the ready loop of all groups: it takes proposals and peer
//! messages, ticks, then for every group with a `Ready` follows raft-rs's
//! order exactly: send the leader's immediate messages, install a received
//! snapshot, hand committed entries to the group's applier, append new
//! entries and the hard state to one raft-engine batch shared by all
//! groups, write that batch with one fsync (group commit), then send the
//! persisted messages, `advance_append`, and hand over what became
//! committed. A proposal is answered only after its entry is committed and
//! applied, so an acknowledged write is on disk.
//!
//! Applying is asynchronous (raft-rs's `advance_apply_to`): every group
//! has an applier thread that applies its committed entries in log order,
//! answers their proposers, and reports the applied index back to the
//! loop. So the log's fsync overlaps the state machines' work, and groups
//! apply in parallel. The applier also takes the group's snapshots when
//! the [`SnapshotPolicy`] says so; the loop then records each snapshot in
//! the log store and compacts the log behind it.

use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::channel::{self, Receiver, RecvTimeoutError, Sender};
use parking_lot::RwLock;
use raft::eraftpb::{ConfChange, ConfChangeV2, Entry, EntryType, Message, Snapshot};
use raft::{Config, RawNode, StateRole};
use raft_engine::LogBatch;
use thiserror::Error;
use tokio::sync::oneshot;

use super::manifest::Manifest;
use super::storage::{GroupStorage, LogStore};

/// How long an applier waits without entries before it calls
/// [`StateMachine::idle`].
pub const IDLE_AFTER: Duration = Duration::from_millis(50);

/// What a state machine returns for an applied entry, handed to the
/// proposer (downcast to the machine's own result type).
pub type ApplyResult = Box<dyn Any + Send>;

/// What a state machine answers for an entry it must not apply: one it
/// cannot decode, or one that would break an invariant. Skipping such an
/// entry would let replicas diverge silently, so the group stops there: the
/// entry stays unapplied, the node stops taking writes, and a start that
/// replays it fails with the group and index named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Halt(pub String);

/// A group's replicated state machine.
pub trait StateMachine: Send + Sync + 'static {
    /// Applies one committed entry. Deterministic: every replica computes the
    /// same state from the same entries.
    fn apply(&self, index: u64, data: &[u8]) -> ApplyResult;
    /// Applies an entry this node proposed with [`Driver::propose_with`],
    /// given what the proposer computed from it ahead of the log (say,
    /// parsed text). Must change the state exactly as [`apply`] would:
    /// replicas and replays only have the data.
    ///
    /// [`apply`]: StateMachine::apply
    fn apply_proposed(&self, index: u64, data: &[u8], local: Box<dyn Any + Send>) -> ApplyResult {
        let _ = local;
        self.apply(index, data)
    }
    /// Called on the group's applier thread when no entry has arrived for
    /// [`IDLE_AFTER`]: a moment to finish deferred work (a shard adds its
    /// staged event rows to its bitmaps). Must not change what readers see.
    fn idle(&self) {}
    /// The index of the last entry reflected in the state (restored from the
    /// snapshot the machine was opened from, then advanced by `apply`).
    fn applied_index(&self) -> u64;
    /// Writes a snapshot of the current state to [`snapshot_file`] and
    /// returns the index it covers. The driver calls it when its
    /// [`SnapshotPolicy`] says so, then compacts the log behind it.
    ///
    /// [`snapshot_file`]: StateMachine::snapshot_file
    fn snapshot(&self) -> Result<u64, String>;
    /// The file [`snapshot`](StateMachine::snapshot) writes.
    fn snapshot_file(&self) -> &std::path::Path;
    /// A fresh snapshot as bytes, to send to a follower that fell behind.
    fn snapshot_data(&self) -> Result<(u64, Vec<u8>), String> {
        let index = self.snapshot()?;
        let path = self.snapshot_file();
        let data = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok((index, data))
    }
    /// Replaces the state with a snapshot received from the leader.
    fn restore(&self, index: u64, data: &[u8]) -> Result<(), String>;
}

/// What a group's log holds beyond its last snapshot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Since {
    /// Entries applied since the snapshot.
    pub entries: u64,
    /// Bytes of entry data applied since the snapshot.
    pub bytes: u64,
}

/// When a group snapshots: after so many entries or so many bytes of log,
/// whichever comes first. The bytes bound what a restart replays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotPolicy {
    /// Entries between snapshots.
    pub entries: u64,
    /// Log bytes between snapshots.
    pub bytes: u64,
}

impl SnapshotPolicy {
    /// True when `since` calls for a snapshot.
    pub fn due(&self, since: Since) -> bool {
        since.entries >= self.entries || since.bytes >= self.bytes
    }
}

/// Replaying a byte of log (decoding, parsing, applying) costs about ten
/// times as much as writing a byte of snapshot: measured at 10 M profiles,
/// a 200,000-message tail replayed in 0.73 s while the 4.8 GB of snapshots
/// took 5.3 s to write.
const REPLAY_COST_PER_SNAPSHOT_BYTE: u64 = 10;

/// At a graceful stop, is a group's snapshot worth writing? Yes when its log
/// tail (`tail.bytes` of entry data beyond the last snapshot) would take
/// longer to replay at the next start than the snapshot takes to write,
/// judged by the size of its last snapshot file (0 when it has none).
pub fn worth_snapshot_at_stop(tail: Since, snapshot_bytes: u64) -> bool {
    tail.entries > 0 && tail.bytes.saturating_mul(REPLAY_COST_PER_SNAPSHOT_BYTE) >= snapshot_bytes
}

/// Writes `machine`'s snapshot and records it in the manifest, so that the
/// record is on disk before the log is compacted behind the snapshot.
fn take_snapshot(group: u64, machine: &dyn StateMachine, manifest: Option<&Manifest>) -> Result<u64, String> {
    let index = machine.snapshot()?;
    if let Some(manifest) = manifest {
        manifest.record_snapshot(group, machine.snapshot_file(), index).map_err(|e| e.to_string())?;
    }
    Ok(index)
}

/// Sends Raft messages to other nodes.
pub trait Transport: Send + Sync + 'static {
    /// Sends messages of `group`; delivery is best effort (Raft retries).
    fn send(&self, group: u64, messages: Vec<Message>);
}

/// The transport of a node that has no peers: a message for another node
/// means the configuration names a voter that does not exist here.
pub struct NoPeers;

impl Transport for NoPeers {
    fn send(&self, _group: u64, messages: Vec<Message>) {
        if !messages.is_empty() {
            eprintln!(
                "warning: {} raft message(s) for other nodes dropped: this node has no peers configured",
                messages.len()
            );
        }
    }
}

/// Why a proposal failed.
#[derive(Clone, Debug, Error, PartialEq)]
pub enum ProposeError {
    /// This node is not the group's leader (or the group has none yet).
    #[error("group {group} ({name}) has no leader on this node (leader: {leader})")]
    NotLeader {
        /// The group.
        group: u64,
        /// Its name.
        name: String,
        /// The leader, 0 when unknown.
        leader: u64,
    },
    /// The group is unknown.
    #[error("no raft group {0} on this node")]
    NoSuchGroup(u64),
    /// The log could not be written; the node stops taking writes.
    #[error("raft log write failed: {0}")]
    Storage(String),
    /// The driver stopped.
    #[error("the node is shutting down")]
    Stopped,
}

/// One group to drive.
pub struct GroupSpec {
    /// Raft group id (also the raft-engine region id).
    pub id: u64,
    /// A name for status and errors.
    pub name: String,
    /// The state machine.
    pub machine: Arc<dyn StateMachine>,
}

/// Driver settings.
#[derive(Clone, Debug)]
pub struct DriverConfig {
    /// This node's raft id.
    pub node_id: u64,
    /// The voters of a brand-new group.
    pub voters: Vec<u64>,
    /// Interval of a Raft tick.
    pub tick: Duration,
    /// Election timeout in ticks.
    pub election_ticks: usize,
    /// Heartbeat interval in ticks.
    pub heartbeat_ticks: usize,
    /// When a group snapshots.
    pub snapshot: SnapshotPolicy,
    /// The data directory's manifest: each snapshot is recorded in it
    /// before the log is compacted behind it, and applied indexes are noted
    /// for it (`None` in tests that need no data directory).
    pub manifest: Option<Arc<Manifest>>,
}

impl Default for DriverConfig {
    fn default() -> Self {
        DriverConfig {
            node_id: 1,
            voters: vec![1],
            tick: Duration::from_millis(100),
            election_ticks: 10,
            heartbeat_ticks: 3,
            snapshot: SnapshotPolicy { entries: 5_000, bytes: 128 << 20 },
            manifest: None,
        }
    }
}

/// A group's Raft state, for `Admin.Status`.
#[derive(Clone, Debug, Default)]
pub struct GroupStatus {
    /// Group id.
    pub id: u64,
    /// Name.
    pub name: String,
    /// Current term.
    pub term: u64,
    /// Commit index.
    pub commit: u64,
    /// Applied index.
    pub applied: u64,
    /// Leader id, 0 when unknown.
    pub leader: u64,
    /// `leader`, `follower`, `candidate`, `pre-candidate`.
    pub role: &'static str,
    /// Index covered by the latest snapshot.
    pub snapshot_index: u64,
    /// First index still in the log.
    pub first_index: u64,
    /// Last index in the log.
    pub last_index: u64,
}

enum Input {
    Propose {
        group: u64,
        data: Vec<u8>,
        local: Option<Box<dyn Any + Send>>,
        reply: oneshot::Sender<Result<ApplyResult, ProposeError>>,
    },
    Step {
        group: u64,
        message: Message,
    },
    /// An applier applied its group's entries up to `index`, and took a
    /// snapshot if `snapshot` is set.
    Applied {
        group: u64,
        index: u64,
        snapshot: Option<Result<u64, String>>,
    },
    /// An applier's machine refused entry `index` ([`Halt`]); the group
    /// applies nothing more.
    Halted {
        group: u64,
        index: u64,
        reason: String,
    },
    /// Stop; with a sender, snapshot every group first and report.
    Stop(Option<std::sync::mpsc::Sender<Checkpoint>>),
}

/// What the snapshots of a stop wrote.
#[derive(Debug, Default)]
pub struct Checkpoint {
    /// Groups snapshotted.
    pub written: usize,
    /// Groups whose short log tail is cheaper to replay at the next start
    /// than a snapshot is to write now.
    pub left_to_replay: usize,
    /// Groups whose snapshot failed, with why; their log still holds
    /// everything, so a restart replays it.
    pub failed: Vec<String>,
}

/// Work for a group's applier thread.
enum ApplyTask {
    /// Committed entries in log order, with the proposers waiting on some
    /// of them (by entry index, ascending).
    Entries { entries: Vec<Entry>, replies: Vec<(u64, Pending)> },
    /// Answered once every earlier task is done.
    Barrier(std::sync::mpsc::Sender<()>),
}

struct Group {
    id: u64,
    name: String,
    node: RawNode<GroupStorage>,
    machine: Arc<dyn StateMachine>,
    /// The applier's queue; `None` once stopped.
    applier: Option<Sender<ApplyTask>>,
    /// Returns, once stopped, what the group's log holds beyond its last
    /// snapshot.
    applier_thread: Option<std::thread::JoinHandle<Since>>,
}

/// The running driver. Dropping it stops the thread.
pub struct Driver {
    tx: Sender<Input>,
    status: Arc<RwLock<Vec<GroupStatus>>>,
    thread: parking_lot::Mutex<Option<std::thread::JoinHandle<()>>>,
}

fn role_name(role: StateRole) -> &'static str {
    match role {
        StateRole::Leader => "leader",
        StateRole::Follower => "follower",
        StateRole::Candidate => "candidate",
        StateRole::PreCandidate => "pre-candidate",
    }
}

impl Driver {
    /// Opens every group from `store` (initialising brand-new ones with
    /// `config.voters`), replays what each has committed but not applied,
    /// and starts the loop. Returns once every group has applied its whole
    /// committed log, so the state is current when serving starts.
    pub fn start(
        store: Arc<LogStore>,
        groups: Vec<GroupSpec>,
        transport: Arc<dyn Transport>,
        config: DriverConfig,
    ) -> Result<Driver, String> {
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let mut opened = Vec::with_capacity(groups.len());
        for spec in groups {
            let storage = store.group(spec.id).map_err(|e| e.to_string())?;
            if storage.is_empty() {
                storage.initialize(&store, &config.voters).map_err(|e| e.to_string())?;
            }
            let machine = spec.machine.clone();
            // A machine snapshots what it applied, and it applies only
            // committed entries; but the hard state that carries the commit
            // index is persisted with the next Ready. A kill between the two
            // leaves a snapshot ahead of the stored commit, which raft-rs
            // refuses on restart: raise the commit to what was applied.
            let applied = machine.applied_index();
            let mut hs = storage.hard_state();
            if hs.commit < applied {
                let last = raft::Storage::last_index(&storage).map_err(|e| e.to_string())?;
                if applied > last {
                    return Err(format!(
                        "group {} ({}): the state machine applied up to {applied} but the log ends at {last}",
                        spec.id, spec.name
                    ));
                }
                hs.commit = applied;
                let mut batch = LogBatch::default();
                storage.set_hard_state(&mut batch, &hs).map_err(|e| e.to_string())?;
                store.write(&mut batch, true).map_err(|e| e.to_string())?;
            }
            let snap_machine = spec.machine.clone();
            storage.set_snapshot_provider(Arc::new(move |_request_index, _to| {
                let (index, data) = snap_machine
                    .snapshot_data()
                    .map_err(|e| raft::Error::Store(raft::StorageError::Other(e.into())))?;
                let mut snap = Snapshot::default();
                snap.set_data(data.into());
                snap.mut_metadata().index = index;
                Ok(snap)
            }));
            let raft_config = Config {
                id: config.node_id,
                election_tick: config.election_ticks,
                heartbeat_tick: config.heartbeat_ticks,
                applied: machine.applied_index(),
                max_size_per_msg: 1 << 20,
                max_inflight_msgs: 256,
                pre_vote: true,
                check_quorum: true,
                ..Config::default()
            };
            raft_config.validate().map_err(|e| format!("group {}: {e}", spec.id))?;
            let node = RawNode::new(&raft_config, storage, &logger)
                .map_err(|e| format!("group {} ({}): cannot open raft node: {e}", spec.id, spec.name))?;
            opened.push(Group {
                id: spec.id,
                name: spec.name,
                node,
                machine,
                applier: None,
                applier_thread: None,
            });
        }
        // A lone voter need not wait for an election timeout.
        for g in &mut opened {
            let voters = g.node.raft.prs().conf().voters().ids().iter().collect::<Vec<_>>();
            if voters.len() == 1 && voters[0] == config.node_id {
                g.node.campaign().map_err(|e| format!("group {}: campaign: {e}", g.id))?;
            }
        }
        let (tx, rx) = channel::unbounded();
        for g in &mut opened {
            let (task_tx, task_rx) = channel::unbounded();
            let applier = Applier {
                group: g.id,
                machine: g.machine.clone(),
                policy: config.snapshot,
                manifest: config.manifest.clone(),
                halted: false,
                since: Since::default(),
                events: tx.clone(),
            };
            let thread = std::thread::Builder::new()
                .name(format!("apply-{}", g.id))
                .spawn(move || applier.run(task_rx))
                .map_err(|e| format!("cannot start the applier of group {}: {e}", g.id))?;
            g.applier = Some(task_tx);
            g.applier_thread = Some(thread);
        }
        let status = Arc::new(RwLock::new(Vec::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let loop_status = status.clone();
        let thread = std::thread::Builder::new()
            .name("raft-driver".into())
            .spawn(move || {
                let mut state = Loop {
                    store,
                    groups: opened,
                    transport,
                    config,
                    status: loop_status,
                    pending: HashMap::new(),
                    next_proposal: 1,
                    failed: None,
                };
                state.run(rx, ready_tx);
            })
            .map_err(|e| format!("cannot start the raft thread: {e}"))?;
        // Wait for the replay of committed entries.
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err("the raft thread stopped during recovery".into()),
        }
        Ok(Driver { tx, status, thread: parking_lot::Mutex::new(Some(thread)) })
    }

    /// Proposes `data` to `group`. The proposal is queued at once (so calls
    /// keep their order in the log); the returned future resolves once it
    /// is committed, durable and applied, with the state machine's result.
    pub fn propose(
        &self,
        group: u64,
        data: Vec<u8>,
    ) -> impl std::future::Future<Output = Result<ApplyResult, ProposeError>> + Send + 'static {
        self.propose_with(group, data, None)
    }

    /// Proposes `data` like [`propose`](Driver::propose), with `local`: what
    /// the caller already computed from it, handed to
    /// [`StateMachine::apply_proposed`] if this node applies the entry as
    /// proposed here (it never leaves the node).
    pub fn propose_with(
        &self,
        group: u64,
        data: Vec<u8>,
        local: Option<Box<dyn Any + Send>>,
    ) -> impl std::future::Future<Output = Result<ApplyResult, ProposeError>> + Send + 'static {
        let (reply, rx) = oneshot::channel();
        let sent = self.tx.send(Input::Propose { group, data, local, reply });
        async move {
            sent.map_err(|_| ProposeError::Stopped)?;
            rx.await.map_err(|_| ProposeError::Stopped)?
        }
    }

    /// Hands a message from a peer to its group.
    pub fn step(&self, group: u64, message: Message) {
        let _ = self.tx.send(Input::Step { group, message });
    }

    /// Every group's Raft state, as of the last loop turn.
    pub fn status(&self) -> Vec<GroupStatus> {
        self.status.read().clone()
    }

    /// Stops the loop and waits for it: pending proposals fail, the log is
    /// closed (every acknowledged write is already in it).
    pub fn stop(&self) {
        self.stop_loop(None);
    }

    /// Stops like [`stop`](Driver::stop), but first snapshots (and compacts
    /// the log of) every group whose log tail would take longer to replay
    /// than its snapshot takes to write ([`worth_snapshot_at_stop`]).
    pub fn stop_with_snapshots(&self) -> Checkpoint {
        let (tx, rx) = std::sync::mpsc::channel();
        self.stop_loop(Some(tx));
        // Sent before the loop returns; nothing when it had already stopped.
        rx.try_recv().unwrap_or_default()
    }

    fn stop_loop(&self, checkpoint: Option<std::sync::mpsc::Sender<Checkpoint>>) {
        let _ = self.tx.send(Input::Stop(checkpoint));
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Pending {
    group: u64,
    local: Option<Box<dyn Any + Send>>,
    reply: oneshot::Sender<Result<ApplyResult, ProposeError>>,
}

impl Group {
    /// Blocks until the applier has applied everything handed to it.
    fn wait_applier(&self) {
        let (tx, rx) = std::sync::mpsc::channel();
        if let Some(a) = &self.applier {
            if a.send(ApplyTask::Barrier(tx)).is_ok() {
                let _ = rx.recv();
            }
        }
    }
}

/// Applies one group's committed entries on its own thread.
struct Applier {
    group: u64,
    machine: Arc<dyn StateMachine>,
    policy: SnapshotPolicy,
    manifest: Option<Arc<Manifest>>,
    /// Set once the machine refused an entry: nothing more is applied.
    halted: bool,
    /// What the log holds beyond the machine's last snapshot.
    since: Since,
    /// The loop's input, for progress reports.
    events: Sender<Input>,
}

impl Applier {
    /// Applies until its queue closes; returns what the log holds beyond
    /// the last snapshot.
    fn run(mut self, tasks: Receiver<ApplyTask>) -> Since {
        // After the idle call, wait without a timeout until work comes.
        let mut idle_done = true;
        loop {
            let next = if idle_done {
                tasks.recv().map_err(|_| RecvTimeoutError::Disconnected)
            } else {
                tasks.recv_timeout(IDLE_AFTER)
            };
            let task = match next {
                Ok(task) => task,
                Err(RecvTimeoutError::Timeout) => {
                    self.machine.idle();
                    idle_done = true;
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return self.since,
            };
            idle_done = false;
            match task {
                ApplyTask::Barrier(done) => {
                    let _ = done.send(());
                }
                ApplyTask::Entries { entries, replies } => {
                    let Some(last) = entries.last().map(|e| e.index) else { continue };
                    if self.halted {
                        for (_, p) in replies {
                            let _ = p.reply.send(Err(ProposeError::Storage(format!(
                                "group {} stopped at an entry it cannot apply",
                                self.group
                            ))));
                        }
                        continue;
                    }
                    if let Some((index, reason)) = self.apply(entries, replies) {
                        self.halted = true;
                        let _ = self.events.send(Input::Halted { group: self.group, index, reason });
                        continue;
                    }
                    let snapshot = self.policy.due(self.since).then(|| {
                        self.since = Since::default();
                        take_snapshot(self.group, &*self.machine, self.manifest.as_deref())
                    });
                    let _ = self.events.send(Input::Applied { group: self.group, index: last, snapshot });
                }
            }
        }
    }

    /// Applies entries in log order and answers their proposers. Stops at
    /// an entry the machine refuses ([`Halt`]) and returns its index and
    /// why; it and every later entry stay unapplied, their proposers told.
    fn apply(&mut self, entries: Vec<Entry>, replies: Vec<(u64, Pending)>) -> Option<(u64, String)> {
        let mut replies = replies.into_iter().peekable();
        for e in &entries {
            let mut proposer = None;
            if replies.peek().is_some_and(|(index, _)| *index == e.index) {
                proposer = replies.next().map(|(_, p)| p);
            }
            let local = proposer.as_mut().and_then(|p| p.local.take());
            let result = match e.get_entry_type() {
                EntryType::EntryNormal if !e.data.is_empty() => Some(match local {
                    Some(local) => self.machine.apply_proposed(e.index, &e.data, local),
                    None => self.machine.apply(e.index, &e.data),
                }),
                _ => None,
            };
            if let Some(halt) = result.as_ref().and_then(|r| r.downcast_ref::<Halt>()) {
                let reason = halt.0.clone();
                let refused = || {
                    ProposeError::Storage(format!(
                        "group {} stopped at entry {}: {reason}",
                        self.group, e.index
                    ))
                };
                for p in proposer.into_iter().chain(replies.map(|(_, p)| p)) {
                    let _ = p.reply.send(Err(refused()));
                }
                return Some((e.index, reason));
            }
            self.since.entries += 1;
            self.since.bytes += e.data.len() as u64;
            if let Some(p) = proposer {
                let answer = result.ok_or_else(|| ProposeError::NotLeader {
                    group: p.group,
                    name: String::new(),
                    leader: 0,
                });
                let _ = p.reply.send(answer);
            }
        }
        None
    }
}

struct Loop {
    store: Arc<LogStore>,
    groups: Vec<Group>,
    transport: Arc<dyn Transport>,
    config: DriverConfig,
    status: Arc<RwLock<Vec<GroupStatus>>>,
    pending: HashMap<u64, Pending>,
    next_proposal: u64,
    /// Set once a log write failed: the node then refuses writes.
    failed: Option<String>,
}

impl Loop {
    fn run(&mut self, rx: Receiver<Input>, ready_tx: std::sync::mpsc::Sender<Result<(), String>>) {
        let mut last_tick = Instant::now();
        let mut recovering = Some(ready_tx);
        loop {
            // Replay: the committed log has been applied once every group
            // has applied up to its commit index.
            if let Some(tx) = &recovering {
                if self.groups.iter().all(|g| g.node.raft.raft_log.applied >= g.node.raft.raft_log.committed)
                    && self.groups.iter().all(|g| !g.node.has_ready())
                {
                    let _ = tx.send(Ok(()));
                    recovering = None;
                }
            }
            // Wait for input only when no group has work (a replay hands
            // over committed entries one bounded Ready at a time).
            let first = if self.groups.iter().any(|g| g.node.has_ready()) {
                rx.try_recv().ok()
            } else {
                match rx.recv_timeout(self.config.tick.saturating_sub(last_tick.elapsed())) {
                    Ok(input) => Some(input),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => {
                        let _ = self.stop_appliers();
                        return;
                    }
                }
            };
            let mut inputs: Vec<Input> = first.into_iter().collect();
            inputs.extend(rx.try_iter().take(100_000));
            for input in inputs {
                match input {
                    Input::Stop(checkpoint) => {
                        let tails = self.stop_appliers();
                        self.fail_all(ProposeError::Stopped);
                        if let Some(report) = checkpoint {
                            let _ = report.send(self.snapshot_all(&tails));
                        }
                        return;
                    }
                    Input::Step { group, message } => {
                        if let Some(g) = self.groups.iter_mut().find(|g| g.id == group) {
                            let _ = g.node.step(message);
                        }
                    }
                    Input::Propose { group, data, local, reply } => self.propose(group, data, local, reply),
                    Input::Halted { group, index, reason } => {
                        let name = self.groups.iter().find(|g| g.id == group).map_or("", |g| g.name.as_str());
                        let e = format!("group {group} ({name}) stopped at entry {index}: {reason}");
                        self.fail(e, &mut recovering);
                    }
                    Input::Applied { group, index, snapshot } => {
                        // A snapshot that could not be written (a full disk)
                        // costs only replay time: the log behind it stays,
                        // the last snapshot and its record stand, and the
                        // next one is due after another interval.
                        let snapshot = match snapshot {
                            Some(Err(e)) => {
                                let name = self
                                    .groups
                                    .iter()
                                    .find(|g| g.id == group)
                                    .map_or("", |g| g.name.as_str());
                                eprintln!(
                                    "warning: group {group} ({name}): snapshot at entry {index} not written: {e}; \
                                     the log keeps what it covers, and the next snapshot is tried later"
                                );
                                None
                            }
                            other => other,
                        };
                        if let Err(e) = self.applied(group, index, snapshot) {
                            self.fail(e, &mut recovering);
                        }
                    }
                }
            }
            if last_tick.elapsed() >= self.config.tick {
                for g in &mut self.groups {
                    g.node.tick();
                }
                last_tick = Instant::now();
            }
            if let Err(e) = self.handle_readies() {
                self.fail(e, &mut recovering);
            }
            self.publish_status();
        }
    }

    /// A log write or a snapshot failed: the node refuses writes from now on.
    fn fail(&mut self, e: String, recovering: &mut Option<std::sync::mpsc::Sender<Result<(), String>>>) {
        eprintln!("error: {e}; this node stops taking writes");
        if let Some(tx) = recovering.take() {
            let _ = tx.send(Err(e.clone()));
        }
        self.failed = Some(e.clone());
        self.fail_all(ProposeError::Storage(e));
    }

    /// Stops every applier once it has applied what it was handed (their
    /// proposers are answered) and waits for them; returns each group's log
    /// tail beyond its last snapshot.
    fn stop_appliers(&mut self) -> HashMap<u64, Since> {
        for g in &mut self.groups {
            g.applier = None;
        }
        let mut tails = HashMap::new();
        for g in &mut self.groups {
            if let Some(t) = g.applier_thread.take() {
                if let Ok(since) = t.join() {
                    tails.insert(g.id, since);
                }
            }
        }
        tails
    }

    /// Snapshots, two at a time (a snapshot encodes a whole shard), every
    /// group whose log tail would take longer to replay than a snapshot
    /// takes to write ([`worth_snapshot_at_stop`]), then records each in the
    /// log and compacts behind it. Appliers must be stopped.
    fn snapshot_all(&mut self, tails: &HashMap<u64, Since>) -> Checkpoint {
        let mut checkpoint = Checkpoint::default();
        let mut due: Vec<(u64, Arc<dyn StateMachine>)> = Vec::new();
        for g in &self.groups {
            if g.machine.applied_index() <= g.node.store().snapshot_meta().index {
                continue;
            }
            let tail = tails.get(&g.id).copied().unwrap_or_default();
            let snapshot_bytes = std::fs::metadata(g.machine.snapshot_file()).map_or(0, |m| m.len());
            if worth_snapshot_at_stop(tail, snapshot_bytes) {
                due.push((g.id, g.machine.clone()));
            } else {
                checkpoint.left_to_replay += 1;
            }
        }
        let next = std::sync::atomic::AtomicUsize::new(0);
        let manifest = self.config.manifest.as_deref();
        let taken: parking_lot::Mutex<Vec<(u64, Result<u64, String>)>> = parking_lot::Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for _ in 0..2 {
                scope.spawn(|| {
                    while let Some((id, machine)) =
                        due.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
                    {
                        let result = take_snapshot(*id, &**machine, manifest);
                        taken.lock().push((*id, result));
                    }
                });
            }
        });
        for (id, result) in taken.into_inner() {
            let index = result.as_ref().map_or(0, |i| *i);
            match self.applied(id, index, Some(result)) {
                Ok(()) => checkpoint.written += 1,
                Err(e) => checkpoint.failed.push(e),
            }
        }
        checkpoint
    }

    fn propose(
        &mut self,
        group: u64,
        data: Vec<u8>,
        local: Option<Box<dyn Any + Send>>,
        reply: oneshot::Sender<Result<ApplyResult, ProposeError>>,
    ) {
        if let Some(e) = &self.failed {
            let _ = reply.send(Err(ProposeError::Storage(e.clone())));
            return;
        }
        let Some(g) = self.groups.iter_mut().find(|g| g.id == group) else {
            let _ = reply.send(Err(ProposeError::NoSuchGroup(group)));
            return;
        };
        let id = self.next_proposal;
        self.next_proposal += 1;
        let (name, leader) = (g.name.clone(), g.node.raft.leader_id);
        let not_leader = || ProposeError::NotLeader { group, name: name.clone(), leader };
        if g.node.raft.state != StateRole::Leader {
            let _ = reply.send(Err(not_leader()));
            return;
        }
        match g.node.propose(id.to_le_bytes().to_vec(), data) {
            Ok(()) => {
                self.pending.insert(id, Pending { group, local, reply });
            }
            Err(_) => {
                let _ = reply.send(Err(not_leader()));
            }
        }
    }

    fn fail_all(&mut self, error: ProposeError) {
        for (_, p) in self.pending.drain() {
            let _ = p.reply.send(Err(error.clone()));
        }
    }

    /// One pass of the ready loop over every group.
    fn handle_readies(&mut self) -> Result<(), String> {
        let mut batch = LogBatch::default();
        let mut readies = Vec::new();
        for k in 0..self.groups.len() {
            if !self.groups[k].node.has_ready() {
                continue;
            }
            let mut ready = self.groups[k].node.ready();
            let g = &mut self.groups[k];
            if !ready.messages().is_empty() {
                self.transport.send(g.id, ready.take_messages());
            }
            let mut installed = None;
            if !ready.snapshot().is_empty() {
                // The snapshot replaces the state: whatever the applier
                // was handed before must be applied first.
                g.wait_applier();
                let snap = ready.snapshot().clone();
                let meta = snap.get_metadata();
                g.machine
                    .restore(meta.index, snap.get_data())
                    .map_err(|e| format!("group {} ({}): installing a snapshot: {e}", g.id, g.name))?;
                g.node.store().apply_snapshot(&mut batch, &snap).map_err(|e| e.to_string())?;
                installed = Some(meta.index);
            }
            let committed = ready.take_committed_entries();
            self.hand_over(k, committed)?;
            let g = &mut self.groups[k];
            if !ready.entries().is_empty() {
                g.node.store().append(&mut batch, ready.entries()).map_err(|e| e.to_string())?;
            }
            if let Some(hs) = ready.hs() {
                g.node.store().set_hard_state(&mut batch, hs).map_err(|e| e.to_string())?;
            }
            readies.push((k, ready, installed));
        }
        if !batch.is_empty() {
            self.store.write(&mut batch, true).map_err(|e| format!("writing the raft log: {e}"))?;
        }
        for (k, ready, installed) in readies {
            let g = &mut self.groups[k];
            if !ready.persisted_messages().is_empty() {
                self.transport.send(g.id, ready.persisted_messages().to_vec());
            }
            let mut light = g.node.advance_append(ready);
            if let Some(index) = installed {
                if index > g.node.raft.raft_log.applied {
                    g.node.advance_apply_to(index);
                }
            }
            if !light.messages().is_empty() {
                self.transport.send(g.id, light.take_messages());
            }
            let committed = light.take_committed_entries();
            self.hand_over(k, committed)?;
        }
        Ok(())
    }

    /// Hands committed entries of group `k` to its applier, with the
    /// proposers waiting on them. Configuration changes take effect here,
    /// in log order with the group's other configuration changes.
    fn hand_over(&mut self, k: usize, entries: Vec<Entry>) -> Result<(), String> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut replies = Vec::new();
        for entry in &entries {
            if matches!(entry.get_entry_type(), EntryType::EntryConfChange | EntryType::EntryConfChangeV2) {
                self.apply_conf_change(k, entry)?;
            }
            if entry.context.len() == 8 {
                let id = u64::from_le_bytes(entry.context[..8].try_into().unwrap_or([0; 8]));
                if let Some(p) = self.pending.remove(&id) {
                    if p.group == self.groups[k].id {
                        replies.push((entry.index, p));
                    } else {
                        let g = &self.groups[k];
                        let _ = p.reply.send(Err(ProposeError::NotLeader {
                            group: p.group,
                            name: g.name.clone(),
                            leader: g.node.raft.leader_id,
                        }));
                    }
                }
            }
        }
        let g = &self.groups[k];
        let sent = g.applier.as_ref().map(|a| a.send(ApplyTask::Entries { entries, replies }));
        match sent {
            Some(Ok(())) => Ok(()),
            _ => Err(format!("group {} ({}): its applier stopped", g.id, g.name)),
        }
    }

    /// An applier reports its progress: raft-rs learns the applied index,
    /// and a snapshot it took is recorded and the log compacted behind it.
    fn applied(
        &mut self,
        group: u64,
        index: u64,
        snapshot: Option<Result<u64, String>>,
    ) -> Result<(), String> {
        let Some(g) = self.groups.iter_mut().find(|g| g.id == group) else { return Ok(()) };
        // A snapshot installed since may have moved `applied` past this.
        if index > g.node.raft.raft_log.applied {
            g.node.advance_apply_to(index);
        }
        if let Some(manifest) = &self.config.manifest {
            manifest.record_applied(group, index);
        }
        let Some(snapshot) = snapshot else { return Ok(()) };
        let index = snapshot.map_err(|e| format!("group {} ({}): snapshot: {e}", g.id, g.name))?;
        let store = g.node.store().clone();
        if index <= store.snapshot_meta().index {
            return Ok(());
        }
        let term = raft::Storage::term(&store, index)
            .map_err(|e| format!("group {}: term of {index}: {e}", g.id))?;
        let mut meta = raft::eraftpb::SnapshotMetadata { index, term, ..Default::default() };
        meta.set_conf_state(g.node.raft.prs().conf().to_conf_state());
        let mut batch = LogBatch::default();
        store.set_snapshot_meta(&mut batch, &meta).map_err(|e| e.to_string())?;
        self.store.write(&mut batch, true).map_err(|e| e.to_string())?;
        store.compact_to(index + 1);
        self.store.purge().map_err(|e| e.to_string())?;
        Ok(())
    }

    fn apply_conf_change(&mut self, k: usize, entry: &Entry) -> Result<(), String> {
        use protobuf::Message as _;
        let g = &mut self.groups[k];
        let cs = if entry.get_entry_type() == EntryType::EntryConfChange {
            let mut cc = ConfChange::default();
            cc.merge_from_bytes(&entry.data).map_err(|e| format!("group {}: bad conf change: {e}", g.id))?;
            g.node.apply_conf_change(&cc)
        } else {
            let mut cc = ConfChangeV2::default();
            cc.merge_from_bytes(&entry.data).map_err(|e| format!("group {}: bad conf change: {e}", g.id))?;
            g.node.apply_conf_change(&cc)
        }
        .map_err(|e| format!("group {}: conf change: {e}", g.id))?;
        let mut batch = LogBatch::default();
        g.node.store().set_conf_state(&mut batch, &cs).map_err(|e| e.to_string())?;
        self.store.write(&mut batch, true).map_err(|e| e.to_string())?;
        Ok(())
    }

    fn publish_status(&self) {
        let status = self
            .groups
            .iter()
            .map(|g| {
                let r = &g.node.raft;
                let store = g.node.store();
                let snap = store.snapshot_meta();
                GroupStatus {
                    id: g.id,
                    name: g.name.clone(),
                    term: r.term,
                    commit: r.raft_log.committed,
                    applied: r.raft_log.applied,
                    leader: r.leader_id,
                    role: role_name(r.state),
                    snapshot_index: snap.index,
                    first_index: snap.index + 1,
                    last_index: r.raft_log.last_index(),
                }
            })
            .collect();
        *self.status.write() = status;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_snapshots_a_group_only_when_its_tail_is_slower_to_replay() {
        let tail = |entries, bytes| Since { entries, bytes };
        assert!(worth_snapshot_at_stop(tail(3, 100), 0), "a group without a snapshot gets one");
        assert!(!worth_snapshot_at_stop(tail(0, 0), 1 << 20), "nothing applied since the last one");
        // An ingest node: 100 MB of tail against a 30 MB snapshot.
        assert!(worth_snapshot_at_stop(tail(900, 100 << 20), 30 << 20));
        // A 10 M-profile shard after a short load: 2 MB of tail against
        // 270 MB of snapshot is replayed instead.
        assert!(!worth_snapshot_at_stop(tail(12, 2 << 20), 270 << 20));
    }
}
