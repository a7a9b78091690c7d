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

use super::snapshot_file::{self, SnapshotFile};
use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::channel::{self, Receiver, RecvTimeoutError, Sender};
use parking_lot::RwLock;
use raft::eraftpb::{ConfChange, ConfChangeV2, Entry, EntryType, Message, Snapshot};
use raft::{Config, RawNode, StateRole};
use raft_engine::LogBatch;
use tokio::sync::oneshot;

use super::error::{MachineError, ReplicationError, SharedError};
use super::manifest::Manifest;
use super::raft_logger::TracingDrain;
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
/// replays it fails with the group and index named
/// ([`ReplicationError::Halted`]).
#[derive(Debug, Clone)]
pub struct Halt(pub SharedError);

impl Halt {
    /// A halt for `reason`, the machine's own error.
    pub fn new(reason: impl std::error::Error + Send + Sync + 'static) -> Halt {
        Halt(std::sync::Arc::new(reason))
    }
}

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
    /// An entry with nothing for the machine (a leader's empty entry, a
    /// configuration change) was applied at `index`: raise the applied
    /// index to it without changing the state, so that a snapshot taken
    /// next covers it (a snapshot for a new learner must be taken after
    /// the change that added it, or the learner refuses it).
    fn pass(&self, index: u64);
    /// The index of the last entry reflected in the state (restored from the
    /// snapshot the machine was opened from, then advanced by `apply` and
    /// `pass`).
    fn applied_index(&self) -> u64;
    /// Writes a snapshot of the current state to [`snapshot_file`] and
    /// returns the index it covers. The driver calls it when its
    /// [`SnapshotPolicy`] says so, then compacts the log behind it.
    ///
    /// The new file must replace the old one by a rename (write a
    /// temporary file, then rename it over), never by rewriting it in
    /// place: a snapshot on its way to a follower is a hard link to the
    /// old file ([`crate::replication::snapshot_file`]), and a rewrite in
    /// place would change the bytes under it.
    ///
    /// [`snapshot_file`]: StateMachine::snapshot_file
    fn snapshot(&self) -> Result<u64, MachineError>;
    /// The file [`snapshot`](StateMachine::snapshot) writes.
    fn snapshot_file(&self) -> &std::path::Path;
    /// Replaces the state with a snapshot received from the leader.
    fn restore(&self, index: u64, data: &[u8]) -> Result<(), MachineError>;
    /// Drops the whole state, as a machine that never applied anything
    /// (this node's replica of the group moved to other nodes): removes
    /// its snapshot file (durably) and frees its memory. By default it
    /// cannot.
    fn clear(&self) -> Result<(), MachineError> {
        Err("this state machine cannot drop its state".into())
    }
    /// Replaces the state with a snapshot received from the leader into
    /// the file `path` (synced), which the machine may take as its own
    /// snapshot file (and move); by default it is read and passed to
    /// [`restore`](StateMachine::restore).
    fn restore_file(&self, index: u64, path: &std::path::Path) -> Result<(), MachineError> {
        let data = std::fs::read(path)?;
        self.restore(index, &data)
    }
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
fn take_snapshot(
    group: u64,
    name: &str,
    machine: &dyn StateMachine,
    manifest: Option<&Manifest>,
) -> Result<u64, ReplicationError> {
    let index = machine.snapshot().map_err(|source| ReplicationError::Snapshot {
        group,
        name: name.to_string(),
        source: source.into(),
    })?;
    if let Some(manifest) = manifest {
        manifest.record_snapshot(group, machine.snapshot_file(), index).map_err(|source| {
            ReplicationError::Manifest { group, index, source: std::sync::Arc::new(source) }
        })?;
    }
    Ok(index)
}

/// A group's snapshot for followers that fell behind the log. The loop
/// never builds one itself: raft-rs asks the storage's provider, which
/// answers "temporarily unavailable" and has a builder thread write a fresh
/// snapshot (recorded in the manifest like any other) and read it back;
/// raft-rs asks again at its next heartbeat and gets it.
#[derive(Default)]
struct Outgoing {
    /// Held while the machine writes its snapshot file (the applier's
    /// snapshots, a builder's, a snapshot installed from the leader) and
    /// while a builder reads it back, so that a read never mixes two.
    file: parking_lot::Mutex<()>,
    slot: parking_lot::Mutex<OutgoingSlot>,
}

#[derive(Default)]
struct OutgoingSlot {
    /// The last snapshot built, with its term and conf state; dropped once
    /// the log is compacted past it (a follower could not go on from it).
    ready: Option<Snapshot>,
    /// A builder is at work.
    building: bool,
}

/// Writes a snapshot of `machine` for a follower (recorded in the
/// manifest, so the log may be compacted behind it) and reads it back.
fn build_outgoing(
    group: u64,
    name: &str,
    machine: &dyn StateMachine,
    outgoing: &Outgoing,
    manifest: Option<&Manifest>,
) -> Result<(u64, Vec<u8>), ReplicationError> {
    let _file = outgoing.file.lock();
    let index = take_snapshot(group, name, machine, manifest)?;
    let path = machine.snapshot_file();
    // A reference to a link of the file, not its bytes: the transport
    // streams it (`snapshot_file`).
    let file = snapshot_file::outgoing(path, group, index).map_err(|source| {
        ReplicationError::SnapshotFile { path: path.display().to_string(), source: Arc::new(source) }
    })?;
    Ok((index, file.to_data()))
}

/// A group's [`Membership`] as its raft node has it.
fn membership_of(g: &Group) -> Membership {
    let raft = &g.node.raft;
    let conf = raft.prs().conf().to_conf_state();
    let leading = raft.state == StateRole::Leader;
    let sorted = |ids: &[u64]| {
        let mut ids = ids.to_vec();
        ids.sort_unstable();
        ids
    };
    Membership {
        leading,
        voters: sorted(&conf.voters),
        learners: sorted(&conf.learners),
        voters_outgoing: sorted(&conf.voters_outgoing),
        change_pending: raft.pending_conf_index > raft.raft_log.applied,
        commit: raft.raft_log.committed,
        snapshot_index: g.node.store().snapshot_meta().index,
        progress: if leading {
            raft.prs()
                .iter()
                .map(|(&node, p)| ReplicaProgress {
                    node,
                    matched: p.matched,
                    replicating: p.state == raft::ProgressState::Replicate,
                    recent_active: p.recent_active,
                })
                .collect()
        } else {
            Vec::new()
        },
    }
}

/// The context of this node's ReadIndex request number `n`: the node id
/// and the number. A leader keeps its pending reads by context and takes a
/// second request with a context it holds as the same request, so the
/// contexts of different nodes must differ (a counter alone collided
/// across nodes, and the later request was never answered).
fn read_context(node: u64, n: u64) -> Vec<u8> {
    let mut ctx = Vec::with_capacity(16);
    ctx.extend_from_slice(&node.to_be_bytes());
    ctx.extend_from_slice(&n.to_be_bytes());
    ctx
}

/// The request number of a ReadIndex context of node `me`'s
/// ([`read_context`]); `None` for another node's or a malformed one.
fn read_context_of(me: u64, ctx: &[u8]) -> Option<u64> {
    let (node, n) = ctx.split_at_checked(8)?;
    let node = u64::from_be_bytes(node.try_into().ok()?);
    let n = u64::from_be_bytes(n.try_into().ok()?);
    (node == me).then_some(n)
}

/// Whether `node` is a voter or a learner of `conf` (either side of a
/// joint configuration).
fn conf_holds(conf: &raft::eraftpb::ConfState, node: u64) -> bool {
    [&conf.voters, &conf.learners, &conf.voters_outgoing, &conf.learners_next]
        .iter()
        .any(|ids| ids.contains(&node))
}

/// How a snapshot sent to a follower ended, as the transport reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotReport {
    /// The follower received it whole.
    Finished,
    /// It could not be delivered; raft-rs sends another later.
    Failed,
}

/// Sends Raft messages to other nodes.
pub trait Transport: Send + Sync + 'static {
    /// Sends messages of `group`; delivery is best effort (Raft retries).
    fn send(&self, group: u64, messages: Vec<Message>);

    /// What it has sent so far (nothing, for a transport that sends
    /// nothing).
    fn traffic(&self) -> Traffic {
        Traffic::default()
    }

    /// Whether node `node` answered the last time it was tried (a
    /// transport with no peers knows no better than yes).
    fn reachable(&self, _node: u64) -> bool {
        true
    }

    /// Where node `node`'s Raft service is from now on (a node that
    /// joined, or one that moved); a transport that sends nothing ignores
    /// it.
    fn set_peer(&self, _node: u64, _raft_addr: &str) {}
}

/// Counters of what a transport sent to other nodes since the node
/// started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Raft messages handed to a peer's stream (snapshots apart).
    pub messages: u64,
    /// Their bytes as raft-rs encodes them (gRPC framing and TLS apart).
    pub bytes: u64,
    /// Messages dropped because a peer's queue was full or it was down
    /// (Raft sends again).
    pub dropped: u64,
    /// Snapshot data bytes delivered to peers.
    pub snapshot_bytes: u64,
}

/// The transport of a node that has no peers: a message for another node
/// means the configuration names a voter that does not exist here.
pub struct NoPeers;

impl Transport for NoPeers {
    fn send(&self, group: u64, messages: Vec<Message>) {
        if !messages.is_empty() {
            tracing::warn!(
                group,
                dropped = messages.len(),
                "raft messages for other nodes dropped: this node has no peers configured"
            );
        }
    }
}

/// The client (gRPC) address of each node by Raft id, shared with the
/// node, which adds those of nodes that join.
pub type Addresses = Arc<RwLock<HashMap<u64, String>>>;

/// A group's configuration as this node has it, and, when this node
/// leads the group, how far each replica has its log.
#[derive(Clone, Debug, Default)]
pub struct Membership {
    /// Whether this node leads the group.
    pub leading: bool,
    /// Voters (of the incoming side of a joint configuration).
    pub voters: Vec<u64>,
    /// Learners.
    pub learners: Vec<u64>,
    /// Voters of the outgoing side while a joint configuration is in
    /// effect (empty otherwise).
    pub voters_outgoing: Vec<u64>,
    /// Whether a configuration change was proposed and is not applied
    /// yet (raft-rs takes one at a time).
    pub change_pending: bool,
    /// The commit index.
    pub commit: u64,
    /// The index of this node's latest snapshot (0: the log starts at 1).
    pub snapshot_index: u64,
    /// On the leader: each replica's progress.
    pub progress: Vec<ReplicaProgress>,
}

/// How far one replica has the leader's log.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReplicaProgress {
    /// Its node.
    pub node: u64,
    /// The highest index known to be in its log.
    pub matched: u64,
    /// Whether entries stream to it (neither probing nor waiting for a
    /// snapshot).
    pub replicating: bool,
    /// Whether it answered within the last election timeout.
    pub recent_active: bool,
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
    /// The voters of a brand-new group (none on a node that joins a
    /// running cluster: its groups wait for a leader to add them).
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
    /// The client (gRPC) address of each node by Raft id, so that a "not
    /// leader" error can say where the leader is. Empty on a single node,
    /// which knows no other; a node learns those of nodes that join.
    pub addresses: Addresses,
    /// How long a proposal may wait for its entry to commit before it
    /// fails with [`ReplicationError::ProposalTimeout`].
    pub proposal_timeout: Duration,
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
            addresses: Addresses::default(),
            proposal_timeout: Duration::from_secs(10),
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
    /// Voters of the group's configuration as this node has it.
    pub voters: Vec<u64>,
    /// Its learners.
    pub learners: Vec<u64>,
}

enum Input {
    Propose {
        group: u64,
        data: Vec<u8>,
        local: Option<Box<dyn Any + Send>>,
        reply: oneshot::Sender<Result<ApplyResult, ReplicationError>>,
    },
    Step {
        group: u64,
        message: Message,
    },
    /// A configuration change to propose, answered like a proposal.
    ProposeConfChange {
        group: u64,
        change: ConfChangeV2,
        reply: oneshot::Sender<Result<ApplyResult, ReplicationError>>,
    },
    /// Answer with the group's configuration and its replicas' progress.
    Membership {
        group: u64,
        reply: oneshot::Sender<Option<Membership>>,
    },
    /// Take a snapshot of `group` and compact its log behind it, unless
    /// the log already starts after index 1 (a node that joins must get a
    /// snapshot, not the log from its start).
    CompactForJoin {
        group: u64,
    },
    /// Hand the leadership of `group` to node `to`.
    TransferLeader {
        group: u64,
        to: u64,
    },
    /// Learn the group's commit index from its leader (raft-rs ReadIndex)
    /// and answer once this node has applied that far.
    ReadIndex {
        group: u64,
        reply: oneshot::Sender<Result<(), ReplicationError>>,
    },
    /// Hand the group's leadership, if this node holds it, to the voter
    /// whose log is furthest along among those recently active.
    HandOff {
        group: u64,
        /// Whether a transfer started (false: no voter to hand it to, or
        /// this node does not lead the group).
        reply: oneshot::Sender<bool>,
    },
    /// The transport could not reach node `to` for `group`.
    Unreachable {
        group: u64,
        to: u64,
    },
    /// The transport delivered (or failed to deliver) a snapshot to `to`.
    SnapshotSent {
        group: u64,
        to: u64,
        report: SnapshotReport,
    },
    /// raft-rs asked for a snapshot of `group` for a follower: build one.
    BuildSnapshot {
        group: u64,
        /// The group's [`Group::epoch`] when it asked.
        epoch: u64,
    },
    /// A builder finished the snapshot of `group`.
    SnapshotBuilt {
        group: u64,
        epoch: u64,
        built: Result<(u64, Vec<u8>), ReplicationError>,
    },
    /// An applier applied its group's entries up to `index`, and took a
    /// snapshot if `snapshot` is set.
    Applied {
        group: u64,
        /// The applier's [`Group::epoch`].
        epoch: u64,
        index: u64,
        snapshot: Option<Result<u64, ReplicationError>>,
    },
    /// An applier's machine refused an entry ([`Halt`]); the group applies
    /// nothing more.
    Halted(ReplicationError),
    /// Drop this node's replica of `group`, which the group's
    /// configuration no longer holds, and open the group again empty.
    DropReplica {
        group: u64,
        reply: oneshot::Sender<Result<bool, ReplicationError>>,
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
    pub failed: Vec<ReplicationError>,
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
    /// How many times this node's replica of the group was dropped and the
    /// group opened again ([`Driver::drop_replica`]): what its applier and
    /// snapshot builders report carries it, and a report of an earlier
    /// opening is ignored.
    epoch: u64,
    node: RawNode<GroupStorage>,
    machine: Arc<dyn StateMachine>,
    /// Proposals of this node waiting for their entries, by ascending
    /// index. An entry answers a proposal only when both its index and its
    /// term match: another leader's entry at the same index is not it.
    proposals: VecDeque<Proposal>,
    /// ReadIndex requests of this node waiting for their read state, then
    /// for this node to apply that far, by their context (a number unique
    /// on this node).
    reads: HashMap<u64, PendingRead>,
    /// The conf state in effect from each index on (a configuration change's
    /// entry, or a snapshot), from the one covering the last snapshot: a
    /// snapshot carries the conf state at its own index.
    confs: std::collections::BTreeMap<u64, raft::eraftpb::ConfState>,
    /// Snapshots for followers.
    outgoing: Arc<Outgoing>,
    /// The file of the received snapshot raft-rs holds to install, if
    /// any: one that a newer snapshot replaces before it is installed is
    /// removed.
    received: Option<std::path::PathBuf>,
    /// The applier's queue; `None` once stopped.
    applier: Option<Sender<ApplyTask>>,
    /// Returns, once stopped, what the group's log holds beyond its last
    /// snapshot.
    applier_thread: Option<std::thread::JoinHandle<Since>>,
}

/// The running driver. Dropping it stops the thread.
pub struct Driver {
    node_id: u64,
    tx: Sender<Input>,
    status: Arc<RwLock<Vec<GroupStatus>>>,
    thread: parking_lot::Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Set by [`Driver::refuse_leadership`].
    refusing: std::sync::atomic::AtomicBool,
}

/// The "not leader" answer of group `g`, naming the leader it knows and,
/// from `addresses`, where that leader serves.
fn not_leader(g: &Group, addresses: &HashMap<u64, String>) -> ReplicationError {
    let leader = Some(g.node.raft.leader_id).filter(|&id| id != raft::INVALID_ID);
    ReplicationError::NotLeader {
        group: g.id,
        name: g.name.clone(),
        leader,
        leader_addr: leader.and_then(|id| addresses.get(&id).cloned()),
    }
}

/// Opens group `spec` from `store`: its storage (whose snapshot provider
/// asks the loop, through `events`, to build a snapshot), the commit
/// raised to what the machine applied, and its raft node.
fn open_group(
    store: &LogStore,
    spec: GroupSpec,
    config: &DriverConfig,
    events: &Sender<Input>,
    logger: &slog::Logger,
    epoch: u64,
) -> Result<Group, ReplicationError> {
    let raft_error = |action: &str, source: raft::Error| ReplicationError::Raft {
        group: spec.id,
        name: spec.name.clone(),
        action: action.to_string(),
        source: Arc::new(source),
    };
    let storage = store.group(spec.id)?;
    storage.check_readable()?;
    let machine = spec.machine.clone();
    // A machine snapshots what it applied, and it applies only
    // committed entries; but the hard state that carries the commit
    // index is persisted with the next Ready. A kill between the two
    // leaves a snapshot ahead of the stored commit, which raft-rs
    // refuses on restart: raise the commit to what was applied.
    let applied = machine.applied_index();
    let mut hs = storage.hard_state();
    if hs.commit < applied {
        let last = raft::Storage::last_index(&storage)
            .map_err(|e| raft_error("reading the last index of its log", e))?;
        if applied > last {
            return Err(ReplicationError::AheadOfLog {
                group: spec.id,
                name: spec.name.clone(),
                applied,
                last,
            });
        }
        hs.commit = applied;
        let mut batch = LogBatch::default();
        storage.set_hard_state(&mut batch, &hs)?;
        store.write(&mut batch, true)?;
    }
    let outgoing = Arc::new(Outgoing::default());
    let (provider_outgoing, events, group) = (outgoing.clone(), events.clone(), spec.id);
    storage.set_snapshot_provider(Arc::new(move |request_index, to| {
        let mut slot = provider_outgoing.slot.lock();
        // A snapshot from before `to` joined the configuration would
        // be refused by it (raft-rs restores only a snapshot whose
        // conf state holds the node): build a newer one.
        if let Some(snap) = slot.ready.as_ref().filter(|s| {
            s.get_metadata().index >= request_index && conf_holds(s.get_metadata().get_conf_state(), to)
        }) {
            return Ok(snap.clone());
        }
        if !slot.building {
            slot.building = true;
            let _ = events.send(Input::BuildSnapshot { group, epoch });
        }
        Err(raft::Error::Store(raft::StorageError::SnapshotTemporarilyUnavailable))
    }));
    let confs = std::iter::once((storage.conf_index(), storage.conf_state())).collect();
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
    raft_config.validate().map_err(|e| raft_error("checking its raft configuration", e))?;
    let node = RawNode::new(&raft_config, storage, &logger.new(slog::o!("group" => spec.id)))
        .map_err(|e| raft_error("cannot open the raft node", e))?;
    Ok(Group {
        id: spec.id,
        name: spec.name,
        epoch,
        node,
        machine,
        proposals: VecDeque::new(),
        reads: HashMap::new(),
        confs,
        outgoing,
        received: None,
        applier: None,
        applier_thread: None,
    })
}

/// Starts group `g`'s applier thread.
fn start_applier(
    g: &mut Group,
    config: &DriverConfig,
    events: &Sender<Input>,
) -> Result<(), ReplicationError> {
    let (task_tx, task_rx) = channel::unbounded();
    let applier = Applier {
        group: g.id,
        epoch: g.epoch,
        name: g.name.clone(),
        machine: g.machine.clone(),
        policy: config.snapshot,
        manifest: config.manifest.clone(),
        outgoing: g.outgoing.clone(),
        halted: None,
        since: Since::default(),
        events: events.clone(),
    };
    let thread = std::thread::Builder::new()
        .name(format!("apply-{}", g.id))
        .spawn(move || applier.run(task_rx))
        .map_err(|source| ReplicationError::Thread {
            thread: format!("the applier of group {}", g.id),
            source: Arc::new(source),
        })?;
    g.applier = Some(task_tx);
    g.applier_thread = Some(thread);
    Ok(())
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
    /// Opens every group from `store` (on a founder's first start, bootstrapping them with
    /// `config.voters`), replays what each has committed but not applied,
    /// and starts the loop. Returns once every group has applied its whole
    /// committed log, so the state is current when serving starts.
    pub fn start(
        store: Arc<LogStore>,
        groups: Vec<GroupSpec>,
        transport: Arc<dyn Transport>,
        config: DriverConfig,
    ) -> Result<Driver, ReplicationError> {
        // raft-rs's own records go to `tracing`, each naming its group.
        let logger = slog::Logger::root(TracingDrain, slog::o!());
        let (tx, rx) = channel::unbounded();
        let mut opened = Vec::with_capacity(groups.len());
        // A founder bootstraps its groups with the founding voters once: on
        // its first start, while the first group (the catalog) is empty.
        // That one is initialized last, so a crash in the middle finishes
        // the bootstrap at the next start. A group emptied later (its
        // replica moved to other nodes, `LogStore::clean_group`) starts
        // with no configuration, as a joining node's groups do: bootstrapped
        // again, it would be a replica of its own that this node believed it
        // held. A node that joins a running cluster has no founding voters:
        // it is nobody's voter until a leader adds it and sends it a
        // snapshot.
        if let Some(first) = groups.first().filter(|_| !config.voters.is_empty()) {
            if store.group(first.id)?.is_empty() {
                for spec in groups.iter().rev() {
                    let storage = store.group(spec.id)?;
                    if storage.is_empty() {
                        storage.initialize(&store, &config.voters)?;
                    }
                }
            }
        }
        for spec in groups {
            opened.push(open_group(&store, spec, &config, &tx, &logger, 0)?);
        }
        // A lone voter need not wait for an election timeout.
        for g in &mut opened {
            let voters = g.node.raft.prs().conf().voters().ids().iter().collect::<Vec<_>>();
            if voters.len() == 1 && voters[0] == config.node_id {
                g.node.campaign().map_err(|source| ReplicationError::Raft {
                    group: g.id,
                    name: g.name.clone(),
                    action: "campaigning".into(),
                    source: Arc::new(source),
                })?;
            }
        }
        for g in &mut opened {
            start_applier(g, &config, &tx)?;
        }
        let status = Arc::new(RwLock::new(Vec::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let loop_status = status.clone();
        let events = tx.clone();
        let node_id = config.node_id;
        let thread = std::thread::Builder::new()
            .name("raft-driver".into())
            .spawn(move || {
                let mut state = Loop {
                    store,
                    groups: opened,
                    transport,
                    config,
                    status: loop_status,
                    events,
                    builders: Vec::new(),
                    failed: None,
                    next_read: 0,
                };
                state.run(rx, ready_tx);
            })
            .map_err(|source| ReplicationError::Thread {
                thread: "the raft thread".into(),
                source: Arc::new(source),
            })?;
        // Wait for the replay of committed entries.
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(ReplicationError::RecoveryStopped),
        }
        Ok(Driver {
            node_id,
            tx,
            status,
            thread: parking_lot::Mutex::new(Some(thread)),
            refusing: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Proposes `data` to `group`. The proposal is queued at once (so calls
    /// keep their order in the log); the returned future resolves once it
    /// is committed, durable and applied, with the state machine's result.
    pub fn propose(
        &self,
        group: u64,
        data: Vec<u8>,
    ) -> impl std::future::Future<Output = Result<ApplyResult, ReplicationError>> + Send + 'static {
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
    ) -> impl std::future::Future<Output = Result<ApplyResult, ReplicationError>> + Send + 'static {
        let (reply, rx) = oneshot::channel();
        let sent = self.tx.send(Input::Propose { group, data, local, reply });
        async move {
            sent.map_err(|_| ReplicationError::ShuttingDown)?;
            rx.await.map_err(|_| ReplicationError::ShuttingDown)?
        }
    }

    /// Hands a message from a peer to its group (but a leader transfer's
    /// "campaign now" once this node refuses leaderships).
    pub fn step(&self, group: u64, message: Message) {
        if message.get_msg_type() == raft::eraftpb::MessageType::MsgTimeoutNow
            && self.refusing.load(std::sync::atomic::Ordering::Relaxed)
        {
            return;
        }
        let _ = self.tx.send(Input::Step { group, message });
    }

    /// From now on this node does not take leaderships handed to it (a
    /// graceful stop: the others' leader transfers to it time out). It can
    /// still win an election.
    pub fn refuse_leadership(&self) {
        self.refusing.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Proposes a configuration change to `group` (joint consensus when it
    /// changes several voters at once); resolves once it is committed and
    /// in effect on this node.
    pub fn propose_conf_change(
        &self,
        group: u64,
        change: ConfChangeV2,
    ) -> impl std::future::Future<Output = Result<(), ReplicationError>> + Send + 'static {
        let (reply, rx) = oneshot::channel();
        let sent = self.tx.send(Input::ProposeConfChange { group, change, reply });
        async move {
            sent.map_err(|_| ReplicationError::ShuttingDown)?;
            rx.await.map_err(|_| ReplicationError::ShuttingDown)?.map(|_| ())
        }
    }

    /// The configuration of `group` as this node has it, with its
    /// replicas' progress when this node leads it (`None`: no such group,
    /// or the driver stopped).
    pub fn membership(
        &self,
        group: u64,
    ) -> impl std::future::Future<Output = Option<Membership>> + Send + 'static {
        let (reply, rx) = oneshot::channel();
        let sent = self.tx.send(Input::Membership { group, reply }).is_ok();
        async move {
            if sent {
                rx.await.ok().flatten()
            } else {
                None
            }
        }
    }

    /// Has `group` take a snapshot and compact its log behind it if its
    /// log still starts at index 1, so that a node added to it gets a
    /// snapshot (with the configuration) rather than the log from its
    /// start; [`Membership::snapshot_index`] says when it is done.
    pub fn compact_for_join(&self, group: u64) {
        let _ = self.tx.send(Input::CompactForJoin { group });
    }

    /// Asks this node, if it leads `group`, to hand the leadership to node
    /// `to` (raft-rs's leader transfer: `to` campaigns once its log is
    /// current; proposals meanwhile are refused as "not leader").
    pub fn transfer_leader(&self, group: u64, to: u64) {
        let _ = self.tx.send(Input::TransferLeader { group, to });
    }

    /// Resolves once this node has applied `group` far enough for a read
    /// here to see every write acknowledged before the call (raft-rs
    /// ReadIndex: the leader confirms with a quorum's heartbeats that it
    /// still leads and answers its commit index; the loop answers once
    /// this node's applied index reaches it). Fails when no leader answers,
    /// or this node has not applied that far, within the proposal timeout.
    pub fn read_barrier(
        &self,
        group: u64,
    ) -> impl std::future::Future<Output = Result<(), ReplicationError>> + Send + 'static {
        let (reply, rx) = oneshot::channel();
        let sent = self.tx.send(Input::ReadIndex { group, reply });
        async move {
            sent.map_err(|_| ReplicationError::ShuttingDown)?;
            rx.await.map_err(|_| ReplicationError::ShuttingDown)?
        }
    }

    /// Asks this node, if it leads `group`, to hand the leadership to the
    /// voter whose log is furthest along among those recently active (a
    /// graceful stop calls it, so that no election timeout passes with no
    /// leader).
    /// Resolves to whether a transfer started.
    pub fn hand_off(&self, group: u64) -> impl std::future::Future<Output = bool> + Send + 'static {
        let (reply, rx) = oneshot::channel();
        let sent = self.tx.send(Input::HandOff { group, reply }).is_ok();
        async move { sent && rx.await.unwrap_or(false) }
    }

    /// Drops this node's replica of `group` while the node runs, once the
    /// group's configuration as this node applied it holds this node
    /// neither as voter nor as learner (its replica moved to other nodes):
    /// the group's applier stops, its machine drops its state and snapshot
    /// file ([`StateMachine::clear`]), its log and raft state go
    /// (raft-engine's `Command::Clean`), the manifest forgets it, and the
    /// group opens again with no configuration, as on a node that never
    /// held it (a later move back starts from a snapshot). What a restart
    /// does for such a group (`drop_moved_away_replicas` in `node.rs`),
    /// without the restart. Resolves to whether there was a replica to
    /// drop (false: the group has no configuration here); fails with
    /// [`ReplicationError::DropReplica`] when the configuration still
    /// holds this node.
    pub fn drop_replica(
        &self,
        group: u64,
    ) -> impl std::future::Future<Output = Result<bool, ReplicationError>> + Send + 'static {
        let (reply, rx) = oneshot::channel();
        let sent = self.tx.send(Input::DropReplica { group, reply }).is_ok();
        async move {
            if !sent {
                return Err(ReplicationError::ShuttingDown);
            }
            rx.await.unwrap_or(Err(ReplicationError::ShuttingDown))
        }
    }

    /// The leader of `group` as this node knows it, as of the last loop
    /// turn.
    pub fn leader_of(&self, group: u64) -> Option<u64> {
        self.status
            .read()
            .iter()
            .find(|g| g.id == group)
            .map(|g| g.leader)
            .filter(|&id| id != raft::INVALID_ID)
    }

    /// Whether this node is a voter or a learner of `group`, as of the
    /// last loop turn (a node the placement puts elsewhere has the group
    /// open but empty, with no configuration).
    pub fn holds(&self, group: u64) -> bool {
        self.status
            .read()
            .iter()
            .find(|g| g.id == group)
            .is_some_and(|g| g.voters.contains(&self.node_id) || g.learners.contains(&self.node_id))
    }

    /// The voters and learners of `group` as this node has them.
    pub fn replicas_of(&self, group: u64) -> Vec<u64> {
        self.status
            .read()
            .iter()
            .find(|g| g.id == group)
            .map(|g| g.voters.iter().chain(&g.learners).copied().collect())
            .unwrap_or_default()
    }

    /// This node's Raft id.
    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// The transport could not reach node `to` with a message of `group`:
    /// raft-rs stops streaming entries to it until it answers again.
    pub fn report_unreachable(&self, group: u64, to: u64) {
        let _ = self.tx.send(Input::Unreachable { group, to });
    }

    /// The transport delivered, or gave up on, a snapshot of `group` to
    /// node `to`.
    pub fn report_snapshot(&self, group: u64, to: u64, report: SnapshotReport) {
        let _ = self.tx.send(Input::SnapshotSent { group, to, report });
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
    local: Option<Box<dyn Any + Send>>,
    reply: oneshot::Sender<Result<ApplyResult, ReplicationError>>,
}

/// A proposal appended to the leader's log at (`index`, `term`).
struct Proposal {
    index: u64,
    term: u64,
    /// When it was proposed, for the proposal timeout.
    at: Instant,
    pending: Pending,
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

/// A ReadIndex request waiting for its read state (`index` unset), then
/// for this node to apply through `index`.
struct PendingRead {
    at: Instant,
    index: Option<u64>,
    reply: oneshot::Sender<Result<(), ReplicationError>>,
}

/// Applies one group's committed entries on its own thread.
struct Applier {
    group: u64,
    epoch: u64,
    name: String,
    machine: Arc<dyn StateMachine>,
    policy: SnapshotPolicy,
    manifest: Option<Arc<Manifest>>,
    outgoing: Arc<Outgoing>,
    /// Set once the machine refused an entry: nothing more is applied, and
    /// every later proposal is refused with it.
    halted: Option<ReplicationError>,
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
                    if let Some(halted) = &self.halted {
                        for (_, p) in replies {
                            let _ = p.reply.send(Err(halted.clone()));
                        }
                        continue;
                    }
                    if let Some(halted) = self.apply(entries, replies) {
                        self.halted = Some(halted.clone());
                        let _ = self.events.send(Input::Halted(halted));
                        continue;
                    }
                    let snapshot = self.policy.due(self.since).then(|| {
                        self.since = Since::default();
                        let _file = self.outgoing.file.lock();
                        take_snapshot(self.group, &self.name, &*self.machine, self.manifest.as_deref())
                    });
                    let _ = self.events.send(Input::Applied {
                        group: self.group,
                        epoch: self.epoch,
                        index: last,
                        snapshot,
                    });
                }
            }
        }
    }

    /// Applies entries in log order and answers their proposers. Stops at
    /// an entry the machine refuses ([`Halt`]) and returns why, naming the
    /// entry; it and every later entry stay unapplied, their proposers told.
    fn apply(&mut self, entries: Vec<Entry>, replies: Vec<(u64, Pending)>) -> Option<ReplicationError> {
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
                _ => {
                    self.machine.pass(e.index);
                    None
                }
            };
            if let Some(halt) = result.as_ref().and_then(|r| r.downcast_ref::<Halt>()) {
                let halted = ReplicationError::Halted {
                    group: self.group,
                    name: self.name.clone(),
                    index: e.index,
                    reason: halt.0.clone(),
                };
                for p in proposer.into_iter().chain(replies.map(|(_, p)| p)) {
                    let _ = p.reply.send(Err(halted.clone()));
                }
                return Some(halted);
            }
            self.since.entries += 1;
            self.since.bytes += e.data.len() as u64;
            if let Some(p) = proposer {
                // A proposal matched by index and term is this very entry;
                // an empty one (nothing to apply) is answered with `()`.
                let answer: ApplyResult = result.unwrap_or_else(|| Box::new(()));
                let _ = p.reply.send(Ok(answer));
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
    /// The loop's own input, for the snapshot builders.
    events: Sender<Input>,
    /// Snapshot builder threads; joined at stop.
    builders: Vec<std::thread::JoinHandle<()>>,
    /// Set once a log write, a snapshot or an entry failed: the node then
    /// refuses writes, with this as the cause.
    failed: Option<Arc<ReplicationError>>,
    /// The context of the last ReadIndex request.
    next_read: u64,
}

/// Where the loop reports the end of the replay (or the failure that
/// stopped it) to [`Driver::start`].
type Recovery = std::sync::mpsc::Sender<Result<(), ReplicationError>>;

impl Loop {
    fn run(&mut self, rx: Receiver<Input>, ready_tx: Recovery) {
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
                        for builder in self.builders.drain(..) {
                            let _ = builder.join();
                        }
                        let tails = self.stop_appliers();
                        self.fail_all(ReplicationError::ShuttingDown);
                        if let Some(report) = checkpoint {
                            let _ = report.send(self.snapshot_all(&tails));
                        }
                        return;
                    }
                    Input::Step { group, message } => {
                        if let Some(g) = self.groups.iter_mut().find(|g| g.id == group) {
                            // A group this node joins holds no configuration
                            // with it until a snapshot brings one: entries from the
                            // log's start would build it from the changes
                            // alone, without the founding voters (the node
                            // could then elect itself). The leader sends a
                            // snapshot once its log is compacted (the
                            // membership reconciler sees to that).
                            if message.get_msg_type() == raft::eraftpb::MessageType::MsgAppend
                                && message.index == 0
                                && !message.entries.is_empty()
                                && !conf_holds(&g.node.raft.prs().conf().to_conf_state(), g.node.raft.id)
                            {
                                tracing::debug!(
                                    group,
                                    from = message.from,
                                    "log from its start refused before a snapshot"
                                );
                                continue;
                            }
                            // A snapshot received into a file that raft-rs
                            // does not take (one it has already, a
                            // duplicate) is no longer needed.
                            let received = (message.get_msg_type()
                                == raft::eraftpb::MessageType::MsgSnapshot)
                                .then(|| SnapshotFile::from_data(message.get_snapshot().get_data()))
                                .flatten();
                            let _ = g.node.step(message);
                            if let Some(received) = received {
                                let unstable = &g.node.raft.raft_log.unstable.snapshot;
                                let taken = unstable.as_ref().is_some_and(|s| {
                                    SnapshotFile::from_data(s.get_data())
                                        .is_some_and(|f| f.path == received.path)
                                });
                                if !taken {
                                    let _ = std::fs::remove_file(&received.path);
                                } else if let Some(older) = g.received.replace(received.path) {
                                    let _ = std::fs::remove_file(older);
                                }
                            }
                        }
                    }
                    Input::Propose { group, data, local, reply } => self.propose(group, data, local, reply),
                    Input::ProposeConfChange { group, change, reply } => {
                        self.propose_conf_change(group, change, reply)
                    }
                    Input::TransferLeader { group, to } => {
                        if let Some(g) = self.groups.iter_mut().find(|g| g.id == group) {
                            // Only to a voter that answered recently: a
                            // transfer to a node that is down stalls the
                            // group's proposals until it times out.
                            let active = g.node.raft.prs().get(to).is_some_and(|p| p.recent_active);
                            if g.node.raft.state == StateRole::Leader && to != g.node.raft.id && active {
                                g.node.transfer_leader(to);
                            }
                        }
                    }
                    Input::ReadIndex { group, reply } => self.read_index(group, reply),
                    Input::Membership { group, reply } => {
                        let _ = reply.send(self.groups.iter().find(|g| g.id == group).map(membership_of));
                    }
                    Input::CompactForJoin { group } => {
                        if let Some(g) = self.groups.iter().find(|g| g.id == group) {
                            let start = g.node.store().snapshot_meta().index == 0;
                            let mut slot = g.outgoing.slot.lock();
                            if start && !slot.building && g.node.raft.raft_log.applied > 0 {
                                slot.building = true;
                                drop(slot);
                                let epoch = g.epoch;
                                self.build_snapshot(group, epoch);
                            }
                        }
                    }
                    Input::HandOff { group, reply } => {
                        let mut started = false;
                        if let Some(g) = self.groups.iter_mut().find(|g| g.id == group) {
                            let raft = &g.node.raft;
                            if raft.state == StateRole::Leader {
                                let me = raft.id;
                                let voters = raft.prs().conf().voters().ids();
                                let best = raft
                                    .prs()
                                    .iter()
                                    .filter(|(&id, p)| id != me && p.recent_active && voters.contains(id))
                                    .max_by_key(|(_, p)| p.matched)
                                    .map(|(&id, _)| id);
                                if let Some(to) = best {
                                    g.node.transfer_leader(to);
                                    started = true;
                                }
                            }
                        }
                        let _ = reply.send(started);
                    }
                    Input::Unreachable { group, to } => {
                        if let Some(g) = self.groups.iter_mut().find(|g| g.id == group) {
                            g.node.report_unreachable(to);
                        }
                    }
                    Input::SnapshotSent { group, to, report } => {
                        if let Some(g) = self.groups.iter_mut().find(|g| g.id == group) {
                            let status = match report {
                                SnapshotReport::Finished => raft::SnapshotStatus::Finish,
                                SnapshotReport::Failed => raft::SnapshotStatus::Failure,
                            };
                            g.node.report_snapshot(to, status);
                        }
                    }
                    Input::BuildSnapshot { group, epoch } => self.build_snapshot(group, epoch),
                    Input::SnapshotBuilt { group, epoch, .. } if !self.current(group, epoch) => {}
                    Input::SnapshotBuilt { group, built, .. } => {
                        if let Err(e) = self.snapshot_built(group, built) {
                            self.fail(e, &mut recovering);
                        }
                    }
                    Input::Halted(e) => self.fail(e, &mut recovering),
                    Input::DropReplica { group, reply } => {
                        let _ = reply.send(self.drop_replica(group));
                    }
                    Input::Applied { group, epoch, .. } if !self.current(group, epoch) => {}
                    Input::Applied { group, index, snapshot, .. } => {
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
                                tracing::warn!(
                                    group,
                                    name,
                                    index,
                                    error = %e,
                                    "snapshot not written; the log keeps what it covers, and the next snapshot is tried later"
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
            self.settle_reads();
            self.expire_proposals();
            self.publish_status();
        }
    }

    /// A log write, a snapshot or an entry failed: the node refuses writes
    /// from now on. During the replay, the failure is what
    /// [`Driver::start`] returns.
    fn fail(&mut self, e: ReplicationError, recovering: &mut Option<Recovery>) {
        tracing::error!(group = e.group(), error = %e, "this node stops taking writes");
        if let Some(tx) = recovering.take() {
            let _ = tx.send(Err(e.clone()));
        }
        let cause = Arc::new(e);
        self.failed = Some(cause.clone());
        self.fail_all(ReplicationError::WritesStopped { cause });
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
        /// A group to snapshot: id, name, machine, snapshot-file lock.
        type Due = (u64, String, Arc<dyn StateMachine>, Arc<Outgoing>);
        let mut due: Vec<Due> = Vec::new();
        for g in &self.groups {
            if g.machine.applied_index() <= g.node.store().snapshot_meta().index {
                continue;
            }
            let tail = tails.get(&g.id).copied().unwrap_or_default();
            let snapshot_bytes = std::fs::metadata(g.machine.snapshot_file()).map_or(0, |m| m.len());
            if worth_snapshot_at_stop(tail, snapshot_bytes) {
                due.push((g.id, g.name.clone(), g.machine.clone(), g.outgoing.clone()));
            } else {
                checkpoint.left_to_replay += 1;
            }
        }
        let next = std::sync::atomic::AtomicUsize::new(0);
        let manifest = self.config.manifest.as_deref();
        let taken: parking_lot::Mutex<Vec<(u64, Result<u64, ReplicationError>)>> =
            parking_lot::Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for _ in 0..2 {
                scope.spawn(|| {
                    while let Some((id, name, machine, outgoing)) =
                        due.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
                    {
                        let result = {
                            let _file = outgoing.file.lock();
                            take_snapshot(*id, name, &**machine, manifest)
                        };
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
        reply: oneshot::Sender<Result<ApplyResult, ReplicationError>>,
    ) {
        if let Some(cause) = &self.failed {
            let _ = reply.send(Err(ReplicationError::WritesStopped { cause: cause.clone() }));
            return;
        }
        let Some(g) = self.groups.iter_mut().find(|g| g.id == group) else {
            let _ = reply.send(Err(ReplicationError::NoSuchGroup { group }));
            return;
        };
        if g.node.raft.state != StateRole::Leader {
            let _ = reply.send(Err(not_leader(g, &self.config.addresses.read())));
            return;
        }
        // A leader appends an accepted proposal to its log at once, in its
        // current term: that (index, term) is what must commit.
        match g.node.propose(Vec::new(), data) {
            Ok(()) => {
                let (index, term) = (g.node.raft.raft_log.last_index(), g.node.raft.term);
                g.proposals.push_back(Proposal {
                    index,
                    term,
                    at: Instant::now(),
                    pending: Pending { local, reply },
                });
            }
            Err(_) => {
                let _ = reply.send(Err(not_leader(g, &self.config.addresses.read())));
            }
        }
    }

    fn propose_conf_change(
        &mut self,
        group: u64,
        change: ConfChangeV2,
        reply: oneshot::Sender<Result<ApplyResult, ReplicationError>>,
    ) {
        if let Some(cause) = &self.failed {
            let _ = reply.send(Err(ReplicationError::WritesStopped { cause: cause.clone() }));
            return;
        }
        let Some(g) = self.groups.iter_mut().find(|g| g.id == group) else {
            let _ = reply.send(Err(ReplicationError::NoSuchGroup { group }));
            return;
        };
        if g.node.raft.state != StateRole::Leader {
            let _ = reply.send(Err(not_leader(g, &self.config.addresses.read())));
            return;
        }
        match g.node.propose_conf_change(Vec::new(), change) {
            Ok(()) => {
                let (index, term) = (g.node.raft.raft_log.last_index(), g.node.raft.term);
                let pending = Pending { local: None, reply };
                g.proposals.push_back(Proposal { index, term, at: Instant::now(), pending });
            }
            Err(source) => {
                // raft-rs refuses a change while another is pending.
                let _ = reply.send(Err(ReplicationError::Raft {
                    group,
                    name: g.name.clone(),
                    action: "proposing a configuration change".into(),
                    source: Arc::new(source),
                }));
            }
        }
    }

    /// Starts a builder thread for a snapshot of `group` to send.
    fn build_snapshot(&mut self, group: u64, epoch: u64) {
        let Some(g) = self.groups.iter().find(|g| g.id == group && g.epoch == epoch) else { return };
        let (machine, outgoing, name) = (g.machine.clone(), g.outgoing.clone(), g.name.clone());
        let (manifest, events) = (self.config.manifest.clone(), self.events.clone());
        self.builders.retain(|b| !b.is_finished());
        let spawned = std::thread::Builder::new().name(format!("snapshot-{group}")).spawn(move || {
            let built = build_outgoing(group, &name, &*machine, &outgoing, manifest.as_deref());
            let _ = events.send(Input::SnapshotBuilt { group, epoch, built });
        });
        match spawned {
            Ok(thread) => self.builders.push(thread),
            Err(e) => {
                tracing::warn!(group, error = %e, "cannot start a snapshot builder; raft-rs will ask again");
                g.outgoing.slot.lock().building = false;
            }
        }
    }

    /// A builder's snapshot is written and recorded: the log is compacted
    /// behind it like behind any snapshot, and it is ready for raft-rs to
    /// send, with its term and the conf state at its index.
    fn snapshot_built(
        &mut self,
        group: u64,
        built: Result<(u64, Vec<u8>), ReplicationError>,
    ) -> Result<(), ReplicationError> {
        let Some(k) = self.groups.iter().position(|g| g.id == group) else { return Ok(()) };
        let (index, data) = match built {
            Ok(built) => built,
            Err(e) => {
                tracing::warn!(group, error = %e, "snapshot for a follower not built; raft-rs will ask again");
                self.groups[k].outgoing.slot.lock().building = false;
                return Ok(());
            }
        };
        let meta = self.snapshot_meta_at(k, index)?;
        self.record_snapshot(k, index)?;
        let g = &self.groups[k];
        let mut slot = g.outgoing.slot.lock();
        slot.building = false;
        match meta {
            Some(meta) => {
                let mut snap = Snapshot::default();
                snap.set_data(data.into());
                snap.set_metadata(meta);
                slot.ready = Some(snap);
            }
            // Taken before the conf change the log starts with took
            // effect (right after a restart): the next one will do.
            None => tracing::debug!(group, index, "snapshot predates the known conf state; building another"),
        }
        Ok(())
    }

    /// The metadata of a snapshot of group `k` at `index`: the term of its
    /// entry and the conf state in effect there (`None` when the index
    /// lies before the oldest conf state this node knows).
    fn snapshot_meta_at(
        &self,
        k: usize,
        index: u64,
    ) -> Result<Option<raft::eraftpb::SnapshotMetadata>, ReplicationError> {
        let g = &self.groups[k];
        let Some((_, conf)) = g.confs.range(..=index).next_back() else { return Ok(None) };
        let term = raft::Storage::term(g.node.store(), index).map_err(|source| ReplicationError::Raft {
            group: g.id,
            name: g.name.clone(),
            action: format!("reading the term of entry {index}"),
            source: Arc::new(source),
        })?;
        let mut meta = raft::eraftpb::SnapshotMetadata { index, term, ..Default::default() };
        meta.set_conf_state(conf.clone());
        Ok(Some(meta))
    }

    /// Whether `epoch` is group `group`'s current opening.
    fn current(&self, group: u64, epoch: u64) -> bool {
        self.groups.iter().any(|g| g.id == group && g.epoch == epoch)
    }

    /// See [`Driver::drop_replica`].
    fn drop_replica(&mut self, group: u64) -> Result<bool, ReplicationError> {
        let Some(at) = self.groups.iter().position(|g| g.id == group) else {
            return Err(ReplicationError::NoSuchGroup { group });
        };
        let me = self.config.node_id;
        let g = &mut self.groups[at];
        let conf = g.node.raft.prs().conf().to_conf_state();
        if conf.voters.is_empty() && conf.learners.is_empty() {
            return Ok(false);
        }
        let name = g.name.clone();
        let problem = |problem: String| ReplicationError::DropReplica { group, name: name.clone(), problem };
        if [&conf.voters, &conf.learners, &conf.voters_outgoing, &conf.learners_next]
            .iter()
            .any(|ids| ids.contains(&me))
        {
            return Err(problem(format!(
                "its configuration still holds this node (voters {:?}, learners {:?}, outgoing {:?})",
                conf.voters, conf.learners, conf.voters_outgoing
            )));
        }
        // Nothing of this node waits on it any more: it is in no
        // configuration, so nothing it proposed can commit here.
        let gone = ReplicationError::NoReplica {
            group,
            name: g.name.clone(),
            node: me,
            replicas: conf.voters.clone(),
        };
        for p in g.proposals.drain(..) {
            let _ = p.pending.reply.send(Err(gone.clone()));
        }
        for (_, r) in g.reads.drain() {
            let _ = r.reply.send(Err(gone.clone()));
        }
        // The applier finishes what it was given (a group out of its
        // configuration gets no new entries), then stops.
        g.applier = None;
        if let Some(thread) = g.applier_thread.take() {
            let _ = thread.join();
        }
        // The snapshot file first, then the log, as at a start: a crash in
        // between leaves a log that says the replica moved away.
        g.machine.clear().map_err(|e| problem(format!("its state machine: {e}")))?;
        self.store.clean_group(group)?;
        if let Some(manifest) = &self.config.manifest {
            manifest.forget(group).map_err(|e| problem(format!("the manifest: {e}")))?;
        }
        if let Some(received) = g.received.take() {
            let _ = std::fs::remove_file(received);
        }
        let spec = GroupSpec { id: group, name: g.name.clone(), machine: g.machine.clone() };
        let logger = slog::Logger::root(TracingDrain, slog::o!());
        let mut fresh = open_group(&self.store, spec, &self.config, &self.events, &logger, g.epoch + 1)?;
        start_applier(&mut fresh, &self.config, &self.events)?;
        tracing::info!(group, name = %fresh.name, voters = ?conf.voters, "this node's replica moved to other nodes: its data is dropped");
        self.groups[at] = fresh;
        Ok(true)
    }

    fn fail_all(&mut self, error: ReplicationError) {
        for g in &mut self.groups {
            for p in g.proposals.drain(..) {
                let _ = p.pending.reply.send(Err(error.clone()));
            }
            for (_, r) in g.reads.drain() {
                let _ = r.reply.send(Err(error.clone()));
            }
        }
    }

    /// Starts a ReadIndex request of `group`; its read state comes back in
    /// a ready ([`Loop::answer_reads`]).
    fn read_index(&mut self, group: u64, reply: oneshot::Sender<Result<(), ReplicationError>>) {
        let Some(g) = self.groups.iter_mut().find(|g| g.id == group) else {
            let _ = reply.send(Err(ReplicationError::NoSuchGroup { group }));
            return;
        };
        self.next_read += 1;
        let ctx = self.next_read;
        g.node.read_index(read_context(self.config.node_id, ctx));
        g.reads.insert(ctx, PendingRead { at: Instant::now(), index: None, reply });
    }

    /// Notes the read indexes of the ReadIndex requests whose read states
    /// came back.
    fn answer_reads(g: &mut Group, me: u64, states: &[raft::ReadState]) {
        for state in states {
            let Some(ctx) = read_context_of(me, &state.request_ctx) else { continue };
            if let Some(r) = g.reads.get_mut(&ctx) {
                r.index = Some(state.index);
            }
        }
    }

    /// Answers the ReadIndex requests whose read index this node has
    /// applied.
    fn settle_reads(&mut self) {
        for g in &mut self.groups {
            if g.reads.is_empty() {
                continue;
            }
            let applied = g.node.raft.raft_log.applied;
            let done: Vec<u64> = g
                .reads
                .iter()
                .filter(|(_, r)| r.index.is_some_and(|i| i <= applied))
                .map(|(&c, _)| c)
                .collect();
            for ctx in done {
                if let Some(r) = g.reads.remove(&ctx) {
                    let _ = r.reply.send(Ok(()));
                }
            }
        }
    }

    /// Fails the proposals whose outcome this node can no longer learn as
    /// their leader: every one of a group that is no longer leader in the
    /// term they were proposed in, and those older than the proposal
    /// timeout. Both answers say the entry may still apply.
    fn expire_proposals(&mut self) {
        let timeout = self.config.proposal_timeout;
        for g in &mut self.groups {
            // raft-rs drops a read request it cannot serve (no leader
            // known), and this node may lag: either fails here, after the
            // timeout.
            if !g.reads.is_empty() {
                let expired: Vec<u64> =
                    g.reads.iter().filter(|(_, r)| r.at.elapsed() >= timeout).map(|(&ctx, _)| ctx).collect();
                for ctx in expired {
                    let Some(r) = g.reads.remove(&ctx) else { continue };
                    let error = match r.index {
                        Some(index) => ReplicationError::ReadBehind {
                            group: g.id,
                            name: g.name.clone(),
                            index,
                            applied: g.node.raft.raft_log.applied,
                        },
                        None => {
                            let leader = Some(g.node.raft.leader_id).filter(|&id| id != raft::INVALID_ID);
                            ReplicationError::NotLeader {
                                group: g.id,
                                name: g.name.clone(),
                                leader,
                                leader_addr: leader
                                    .and_then(|id| self.config.addresses.read().get(&id).cloned()),
                            }
                        }
                    };
                    let _ = r.reply.send(Err(error));
                }
            }
            let Some(first) = g.proposals.front() else { continue };
            let (state, term) = (g.node.raft.state, g.node.raft.term);
            if state != StateRole::Leader || term != first.term {
                let leader = Some(g.node.raft.leader_id).filter(|&id| id != raft::INVALID_ID);
                let leader_addr = leader.and_then(|id| self.config.addresses.read().get(&id).cloned());
                for p in g.proposals.drain(..) {
                    let _ = p.pending.reply.send(Err(ReplicationError::LeadershipLost {
                        group: g.id,
                        name: g.name.clone(),
                        index: p.index,
                        term: p.term,
                        leader,
                        leader_addr: leader_addr.clone(),
                    }));
                }
                continue;
            }
            while g.proposals.front().is_some_and(|p| p.at.elapsed() >= timeout) {
                let Some(p) = g.proposals.pop_front() else { break };
                let _ = p.pending.reply.send(Err(ReplicationError::ProposalTimeout {
                    group: g.id,
                    name: g.name.clone(),
                    index: p.index,
                    waited_ms: p.at.elapsed().as_millis() as u64,
                }));
            }
        }
    }

    /// One pass of the ready loop over every group.
    fn handle_readies(&mut self) -> Result<(), ReplicationError> {
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
            if !ready.read_states().is_empty() {
                Loop::answer_reads(g, self.config.node_id, &ready.take_read_states());
            }
            let mut installed = None;
            if !ready.snapshot().is_empty() {
                // The snapshot replaces the state: whatever the applier
                // was handed before must be applied first.
                g.wait_applier();
                let snap = ready.snapshot().clone();
                let meta = snap.get_metadata();
                let file = g.outgoing.file.lock();
                let restored = match SnapshotFile::from_data(snap.get_data()) {
                    Some(received) => {
                        let restored = g.machine.restore_file(meta.index, &received.path);
                        // Moved into place, or no longer needed.
                        let _ = std::fs::remove_file(&received.path);
                        if g.received.as_ref() == Some(&received.path) {
                            g.received = None;
                        }
                        restored
                    }
                    None => g.machine.restore(meta.index, snap.get_data()),
                };
                restored.map_err(|source| ReplicationError::InstallSnapshot {
                    group: g.id,
                    name: g.name.clone(),
                    index: meta.index,
                    source: source.into(),
                })?;
                // The machine wrote the snapshot as its own file: the
                // manifest must know it before the log record says so.
                if let Some(manifest) = &self.config.manifest {
                    manifest.record_snapshot(g.id, g.machine.snapshot_file(), meta.index).map_err(
                        |source| ReplicationError::Manifest {
                            group: g.id,
                            index: meta.index,
                            source: Arc::new(source),
                        },
                    )?;
                }
                drop(file);
                g.node.store().apply_snapshot(&mut batch, &snap)?;
                g.confs = std::iter::once((meta.index, meta.get_conf_state().clone())).collect();
                g.outgoing.slot.lock().ready = None;
                installed = Some(meta.index);
            }
            let committed = ready.take_committed_entries();
            self.hand_over(k, committed)?;
            let g = &mut self.groups[k];
            if !ready.entries().is_empty() {
                g.node.store().append(&mut batch, ready.entries())?;
            }
            if let Some(hs) = ready.hs() {
                g.node.store().set_hard_state(&mut batch, hs)?;
            }
            readies.push((k, ready, installed));
        }
        if !batch.is_empty() {
            self.store.write(&mut batch, true)?;
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
    fn hand_over(&mut self, k: usize, entries: Vec<Entry>) -> Result<(), ReplicationError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut replies = Vec::new();
        for entry in &entries {
            if matches!(entry.get_entry_type(), EntryType::EntryConfChange | EntryType::EntryConfChangeV2) {
                self.apply_conf_change(k, entry)?;
            }
            let g = &mut self.groups[k];
            // Committed entries come in index order: a proposal at or below
            // this index is answered now, by this entry if the terms match;
            // otherwise another leader's entry replaced it.
            while g.proposals.front().is_some_and(|p| p.index <= entry.index) {
                let Some(p) = g.proposals.pop_front() else { break };
                if p.index == entry.index && p.term == entry.term {
                    replies.push((entry.index, p.pending));
                } else {
                    let leader = Some(g.node.raft.leader_id).filter(|&id| id != raft::INVALID_ID);
                    let _ = p.pending.reply.send(Err(ReplicationError::LeadershipLost {
                        group: g.id,
                        name: g.name.clone(),
                        index: p.index,
                        term: p.term,
                        leader,
                        leader_addr: leader.and_then(|id| self.config.addresses.read().get(&id).cloned()),
                    }));
                }
            }
        }
        let g = &self.groups[k];
        let sent = g.applier.as_ref().map(|a| a.send(ApplyTask::Entries { entries, replies }));
        match sent {
            Some(Ok(())) => Ok(()),
            _ => Err(ReplicationError::ApplierStopped { group: g.id, name: g.name.clone() }),
        }
    }

    /// An applier reports its progress: raft-rs learns the applied index,
    /// and a snapshot it took is recorded and the log compacted behind it.
    fn applied(
        &mut self,
        group: u64,
        index: u64,
        snapshot: Option<Result<u64, ReplicationError>>,
    ) -> Result<(), ReplicationError> {
        let Some(g) = self.groups.iter_mut().find(|g| g.id == group) else { return Ok(()) };
        // A snapshot installed since may have moved `applied` past this.
        if index > g.node.raft.raft_log.applied {
            g.node.advance_apply_to(index);
        }
        if let Some(manifest) = &self.config.manifest {
            manifest.record_applied(group, index);
        }
        let Some(snapshot) = snapshot else { return Ok(()) };
        let index = snapshot?;
        match self.groups.iter().position(|g| g.id == group) {
            Some(k) => self.record_snapshot(k, index),
            None => Ok(()),
        }
    }

    /// A snapshot of group `k` at `index` is written and in the manifest:
    /// the log store records it and compacts its log behind it.
    fn record_snapshot(&mut self, k: usize, index: u64) -> Result<(), ReplicationError> {
        let store = self.groups[k].node.store().clone();
        if index <= store.snapshot_meta().index {
            return Ok(());
        }
        // The stored metadata's conf state is informational (a restart
        // reads the current conf state): before the oldest known one, the
        // current one stands in.
        let meta = match self.snapshot_meta_at(k, index)? {
            Some(meta) => meta,
            None => {
                let g = &self.groups[k];
                let term = raft::Storage::term(&store, index).map_err(|source| ReplicationError::Raft {
                    group: g.id,
                    name: g.name.clone(),
                    action: format!("reading the term of entry {index}"),
                    source: Arc::new(source),
                })?;
                let mut meta = raft::eraftpb::SnapshotMetadata { index, term, ..Default::default() };
                meta.set_conf_state(g.node.raft.prs().conf().to_conf_state());
                meta
            }
        };
        let mut batch = LogBatch::default();
        store.set_snapshot_meta(&mut batch, &meta)?;
        self.store.write(&mut batch, true)?;
        store.compact_to(index + 1);
        self.store.purge()?;
        let g = &mut self.groups[k];
        // Conf states before the one in effect at the snapshot are history.
        if let Some((&keep, _)) = g.confs.range(..=index).next_back() {
            g.confs = g.confs.split_off(&keep);
        }
        // A follower could not go on from an older outgoing snapshot: the
        // log after it is gone.
        let mut slot = g.outgoing.slot.lock();
        if slot.ready.as_ref().is_some_and(|s| s.get_metadata().index < index) {
            slot.ready = None;
        }
        Ok(())
    }

    fn apply_conf_change(&mut self, k: usize, entry: &Entry) -> Result<(), ReplicationError> {
        use protobuf::Message as _;
        let g = &mut self.groups[k];
        // A replay hands over changes already in the stored conf state.
        if entry.index <= g.node.store().conf_index() {
            return Ok(());
        }
        let bad = |source| ReplicationError::BadConfChange {
            group: g.id,
            index: entry.index,
            source: Arc::new(source),
        };
        let cs = if entry.get_entry_type() == EntryType::EntryConfChange {
            let mut cc = ConfChange::default();
            cc.merge_from_bytes(&entry.data).map_err(bad)?;
            g.node.apply_conf_change(&cc)
        } else {
            let mut cc = ConfChangeV2::default();
            cc.merge_from_bytes(&entry.data).map_err(bad)?;
            g.node.apply_conf_change(&cc)
        }
        .map_err(|source| ReplicationError::Raft {
            group: g.id,
            name: g.name.clone(),
            action: format!("applying the configuration change of entry {}", entry.index),
            source: Arc::new(source),
        })?;
        let mut batch = LogBatch::default();
        g.node.store().set_conf_state(&mut batch, &cs, entry.index)?;
        self.store.write(&mut batch, true)?;
        g.confs.insert(entry.index, cs);
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
                // The configuration in effect: the newest one kept.
                let conf = g.confs.values().next_back();
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
                    voters: conf.map(|c| c.voters.clone()).unwrap_or_default(),
                    learners: conf.map(|c| c.learners.clone()).unwrap_or_default(),
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
    fn read_contexts_of_different_nodes_differ_and_come_back_to_their_node() {
        assert_ne!(read_context(1, 7), read_context(2, 7));
        assert_eq!(read_context_of(1, &read_context(1, 7)), Some(7));
        assert_eq!(read_context_of(2, &read_context(1, 7)), None);
        assert_eq!(read_context_of(1, &7u64.to_be_bytes()), None);
    }

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
