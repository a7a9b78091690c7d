//! The ingest pipeline: from a door's batch to durable shard state.
//!
//! Two tasks. The *sequencer* gathers waiting batches into one catalog
//! entry (up to [`MAX_ENTRY_MESSAGES`] messages) and proposes it; applying
//! it resolves identities and yields the entry's shard steps in the
//! catalog's outbox. The *stepper* drives the outbox in log order. The
//! writes of up to [`IN_FLIGHT_ENTRIES`] entries are proposed to their
//! shard groups before the first is committed: each group's log keeps them
//! in order, and writes to different shards do not depend on each other.
//! A cross-shard merge (a `Move` step) is the exception: it reads the
//! absorbed profile after every earlier write to it, so an entry with one
//! waits until everything before it is committed, and its steps go one by
//! one. Each shard proposal names the previous one sent to that shard, so a
//! shard never applies a step past one that was lost on the way (see
//! [`ShardProposal`]).
//!
//! A batch is acknowledged once every step of its entry is committed, so an
//! acknowledged message is in fsynced logs; entries are acknowledged one by
//! one as their steps commit, so a door's next batch joins the pipeline
//! while the entries before it are still being stepped, and the fsyncs of
//! catalog and shard groups are shared (group commit).
//!
//! On start the stepper first drives whatever the catalog replay left in
//! the outbox: the steps of entries that a crash interrupted. Shards skip
//! steps at or below their watermark, so nothing is applied twice.
//!
//! On a node with peers, only the catalog's leader steps. Every replica's
//! catalog fills its outbox as it applies; a node that does not lead pops
//! the entries its own shards have applied (their watermarks show it), and
//! one that becomes leader drives the rest from the front, skipping what
//! the old leader already committed.

use std::any::Any;
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, Notify, Semaphore};

use super::{BoxFuture, IngestError, IngestReport, Source};
use crate::cluster::catalog::{
    parse_message, CatalogCommand, CatalogMachine, CatalogResult, IngestJob, Outbox, ParsedIngest, ParsedJob,
    ParsedMessage, Step,
};
use crate::cluster::placement::{shard_group, CATALOG_GROUP};
use crate::replication::driver::{ApplyResult, Driver};
use crate::replication::shard_machine::{
    CommandSource, ProposedCommands, ShardApplied, ShardMachine, ShardProposal, Tag,
};
use crate::replication::ReplicationError;
use crate::shard::{Command, ProfileId, ProfileImage};

/// Messages gathered into one catalog entry at most.
pub const MAX_ENTRY_MESSAGES: usize = 20_000;
/// Catalog entries proposed but not yet fully stepped, at most; also the
/// entries whose shard writes the stepper proposes ahead.
pub const IN_FLIGHT_ENTRIES: usize = 4;

type Reply = oneshot::Sender<Result<IngestReport, IngestError>>;

struct Job {
    messages: Vec<String>,
    /// The messages parsed by the door's task (see [`ParsedIngest`]).
    parsed: Vec<ParsedMessage>,
    received_ms: i64,
    source: Source,
    reply: Reply,
}

/// Handle to the pipeline.
#[derive(Clone)]
pub struct Pipeline {
    jobs: mpsc::Sender<Job>,
    board: Arc<ReplyBoard>,
    catalog: Arc<CatalogMachine>,
    /// Set while this node drains before handing the catalog over: when
    /// the drain began, and when it was last asked for.
    draining: Arc<Mutex<Option<(Instant, Instant)>>>,
}

/// Longest a catalog leader drains before it hands the catalog over
/// anyway.
const DRAIN_PATIENCE: Duration = Duration::from_secs(5);

/// How long after the last [`Pipeline::drained_for_hand_over`] new
/// batches are still turned away (the hand-over is asked again every few
/// hundred milliseconds while it is due).
const DRAIN_HOLD: Duration = Duration::from_secs(2);

impl Pipeline {
    /// Starts the pipeline; it first finishes the steps left by a crash.
    /// Must be called inside a tokio runtime.
    pub async fn start(
        driver: Arc<Driver>,
        peers: Option<Arc<dyn ShardPeers>>,
        catalog: Arc<CatalogMachine>,
        shards: Arc<Vec<Arc<ShardMachine>>>,
    ) -> Result<Pipeline, IngestError> {
        let ready = catalog.outbox_ready.clone();
        let board = Arc::new(ReplyBoard {
            board: Mutex::new(Board::default()),
            slots: Arc::new(Semaphore::new(IN_FLIGHT_ENTRIES)),
        });
        let node_id = driver.node_id();
        let leader_of = driver.clone();
        let leads: Leads = Arc::new(move || leader_of.leader_of(CATALOG_GROUP) == Some(node_id));
        let log = Arc::new(RoutedLog {
            driver: driver.clone(),
            peers: peers.clone(),
            catalog: catalog.clone(),
            shards: shards.clone(),
            hints: Arc::default(),
            failed: Arc::default(),
        });
        let stepper = Stepper { log, catalog: catalog.clone(), shards, ready, board, leads };
        // Recovery: the steps the replay regenerated, driven before serving
        // when this node leads the catalog (a single node does at once).
        // Once another node is known to lead it, that node drives them: a
        // follower that restarts or joins serves without waiting more.
        let deadline = tokio::time::Instant::now() + LEADER_AT_START;
        while !(stepper.leads)()
            && driver.leader_of(CATALOG_GROUP).is_none()
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if (stepper.leads)() {
            match stepper.drain().await {
                Ok(()) => {}
                // In a cluster a step fails for a while when a shard's
                // leader is elected, moves or cannot be reached: the node
                // serves, and the stepper's task drives the rest as it
                // does after any failure. (What was acknowledged is in
                // the shards' logs already; only unanswered batches wait.)
                Err(e) if peers.is_some() => {
                    tracing::warn!(error = %e, "the steps left in the catalog's outbox are not all applied yet; the stepper retries them while the node serves")
                }
                // A single node: its own logs failed.
                Err(e) => return Err(e),
            }
        }
        let (jobs_tx, jobs_rx) = mpsc::channel::<Job>(1024);
        if peers.is_some() {
            tokio::spawn(record_stepped(driver.clone(), stepper.board.clone(), stepper.leads.clone()));
        }
        tokio::spawn(sequence(driver, jobs_rx, stepper.board.clone()));
        let stepper_board = stepper.board.clone();
        let catalog = stepper.catalog.clone();
        tokio::spawn(stepper.run());
        Ok(Pipeline { jobs: jobs_tx, board: stepper_board, catalog, draining: Arc::default() })
    }

    /// Ingests messages (JSON text) and returns once they are durable.
    pub async fn ingest(
        &self,
        messages: Vec<String>,
        received_ms: i64,
        source: Source,
    ) -> Result<IngestReport, IngestError> {
        if messages.is_empty() {
            return Ok(IngestReport::default());
        }
        if self.draining.lock().is_some_and(|(_, last)| last.elapsed() < DRAIN_HOLD) {
            // Turned away before anything is appended: the caller (or the
            // node that forwarded it) sends it to the next leader.
            return Err(IngestError::Replication(ReplicationError::NotLeader {
                group: CATALOG_GROUP,
                name: "catalog".into(),
                leader: None,
                leader_addr: None,
            }));
        }
        // Parsing needs no state: it runs here, in parallel across the
        // doors' requests and off the async workers, rather than in the
        // catalog's log order.
        let (messages, parsed) = tokio::task::spawn_blocking(move || {
            let parsed = messages.iter().map(|t| parse_message(t, received_ms)).collect();
            (messages, parsed)
        })
        .await
        .map_err(|e| IngestError::ParseTask { reason: e.to_string() })?;
        let (reply, rx) = oneshot::channel();
        self.jobs
            .send(Job { messages, parsed, received_ms, source, reply })
            .await
            .map_err(|_| IngestError::ShuttingDown)?;
        rx.await.map_err(|_| IngestError::ShuttingDown)?
    }
}

impl Pipeline {
    /// Before this node hands the catalog's leadership over (it leaves the
    /// group): turns new batches away and reports whether every batch it
    /// took is answered, its entry stepped. A former leader removed from
    /// the catalog would otherwise never hear that the new leader stepped
    /// the entries it had committed, and its callers would wait in vain.
    /// True as well once the drain has lasted [`DRAIN_PATIENCE`].
    pub fn drained_for_hand_over(&self) -> bool {
        let since = {
            let mut draining = self.draining.lock();
            let now = Instant::now();
            let since = match *draining {
                Some((since, last)) if last.elapsed() < DRAIN_HOLD => since,
                _ => now,
            };
            *draining = Some((since, now));
            since
        };
        let idle = self.board.slots.available_permits() == IN_FLIGHT_ENTRIES
            && self.jobs.capacity() == self.jobs.max_capacity()
            && self.board.board.lock().waiting.is_empty()
            && self.catalog.outbox.lock().is_empty();
        idle || since.elapsed() >= DRAIN_PATIENCE
    }
}

/// Gathers jobs into catalog entries and proposes them.
async fn sequence(driver: Arc<Driver>, mut jobs: mpsc::Receiver<Job>, board: Arc<ReplyBoard>) {
    while let Some(first) = jobs.recv().await {
        let mut batch = vec![first];
        let mut count = batch[0].messages.len();
        while count < MAX_ENTRY_MESSAGES {
            match jobs.try_recv() {
                Ok(job) => {
                    count += job.messages.len();
                    batch.push(job);
                }
                Err(_) => break,
            }
        }
        let Ok(permit) = board.slots.clone().acquire_owned().await else { return };
        let mut inputs = Vec::with_capacity(batch.len());
        let mut parsed = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        for j in batch {
            inputs.push(IngestJob { messages: j.messages, received_ms: j.received_ms, source: j.source });
            parsed.push(ParsedJob { received_ms: j.received_ms, source: j.source, messages: j.parsed });
            replies.push(j.reply);
        }
        let data = CatalogCommand::Ingest(inputs).encode();
        let board = board.clone();
        // The proposal runs on its own so the next entry can be proposed
        // while this one is being fsynced; the driver keeps log order.
        let proposal = driver.propose_with(CATALOG_GROUP, data, Some(Box::new(ParsedIngest(parsed))));
        tokio::spawn(async move {
            match proposal.await {
                Ok(result) => match result.downcast::<CatalogResult>().map(|r| *r) {
                    Ok(CatalogResult::Ingested { index, reports }) if reports.len() == replies.len() => {
                        // The board replies once the entry's steps are
                        // committed, and releases the slot.
                        permit.forget();
                        board.post(index, replies.into_iter().zip(reports).collect());
                    }
                    _ => {
                        for r in replies {
                            let _ = r.send(Err(IngestError::UnexpectedResult));
                        }
                    }
                },
                Err(e) => {
                    let e = IngestError::from(e);
                    for r in replies {
                        let _ = r.send(Err(e.clone()));
                    }
                }
            }
        });
    }
}

/// How often the catalog's leader records how far it has stepped.
const STEPPED_INTERVAL: Duration = Duration::from_secs(1);

/// On the catalog's leader of a cluster: records in the catalog's log,
/// once a second when it moved, the highest entry whose steps are all
/// committed ([`CatalogCommand::Stepped`]), so that every replica drops
/// those entries from its outbox, including a node that holds no replica
/// of some of their shards and so cannot tell from its own.
async fn record_stepped(driver: Arc<Driver>, board: Arc<ReplyBoard>, leads: Leads) {
    let mut recorded = 0;
    loop {
        tokio::time::sleep(STEPPED_INTERVAL).await;
        if Arc::strong_count(&board) == 1 {
            return;
        }
        let done = board.board.lock().done;
        if !leads() || done <= recorded {
            continue;
        }
        match driver.propose(CATALOG_GROUP, CatalogCommand::Stepped(done).encode()).await {
            Ok(_) => recorded = done,
            Err(e) => tracing::debug!(error = %e, "the stepped index is not recorded yet"),
        }
    }
}

/// Replies to ingest calls whose entries are applied, waiting for the
/// entries' steps to be committed. Each entry holds one of the sequencer's
/// slots until it is answered.
struct ReplyBoard {
    board: Mutex<Board>,
    slots: Arc<Semaphore>,
}

#[derive(Default)]
struct Board {
    /// Highest catalog index whose steps are all committed.
    done: u64,
    /// Replies by their entry's catalog index, with when they were posted.
    waiting: BTreeMap<u64, (Instant, Vec<(Reply, IngestReport)>)>,
}

impl ReplyBoard {
    /// Answers the replies of entry `index` once its steps are committed
    /// (at once if they already are).
    fn post(&self, index: u64, replies: Vec<(Reply, IngestReport)>) {
        let mut board = self.board.lock();
        if index > board.done {
            board.waiting.insert(index, (Instant::now(), replies));
            return;
        }
        drop(board);
        self.answer(vec![replies], Ok);
    }

    /// Every entry up to `index` has its steps committed.
    fn done(&self, index: u64) {
        let mut board = self.board.lock();
        board.done = board.done.max(index);
        let later = board.waiting.split_off(&(index + 1));
        let ready = std::mem::replace(&mut board.waiting, later);
        drop(board);
        self.answer(ready.into_values().map(|(_, replies)| replies).collect(), Ok);
    }

    /// Answers the calls whose entries are committed in the catalog but
    /// whose steps are not all applied, when they have waited `patience`
    /// or more (every one, for `None`), with [`IngestError::StepsPending`]:
    /// their messages are durable and the catalog's leader applies them,
    /// but this call cannot say when.
    fn give_up(&self, patience: Option<Duration>, reason: &str) {
        let now = Instant::now();
        let expired: Vec<u64> = {
            let board = self.board.lock();
            board
                .waiting
                .iter()
                .filter(|(_, (posted, _))| patience.is_none_or(|p| now.duration_since(*posted) >= p))
                .map(|(&index, _)| index)
                .collect()
        };
        for index in expired {
            let Some((_, replies)) = self.board.lock().waiting.remove(&index) else { continue };
            let e = IngestError::StepsPending { index, reason: reason.to_string() };
            self.answer(vec![replies], |_| Err(e.clone()));
        }
    }

    fn answer(
        &self,
        entries: Vec<Vec<(Reply, IngestReport)>>,
        outcome: impl Fn(IngestReport) -> Result<IngestReport, IngestError>,
    ) {
        let n = entries.len();
        for (reply, report) in entries.into_iter().flatten() {
            let _ = reply.send(outcome(report));
        }
        self.slots.add_permits(n);
    }
}

/// The committed answers of one entry's shard proposals.
type Committed = Pin<Box<dyn Future<Output = Result<(), IngestError>> + Send>>;

/// Where the stepper's shard proposals go: the driver, or the shard
/// group's leader on another node. (A test wraps it to lose proposals on
/// the way.)
trait ShardLog: Send + Sync {
    fn propose(&self, group: u64, data: Vec<u8>, local: Option<Box<dyn Any + Send>>) -> Answer;

    /// The image of `profile` on `shard` after every write committed to
    /// the shard before the call (a merge's export): read from this
    /// node's replica once it has caught up, or from a node that holds one
    /// after its ReadIndex. `None` when the shard does not hold it.
    fn export(&self, shard: u32, profile: ProfileId) -> Exported;
}

/// The answer to [`ShardLog::export`].
type Exported = Pin<Box<dyn Future<Output = Result<Option<ProfileImage>, ReplicationError>> + Send>>;

/// The answer to one proposal: what applying it returned.
type Answer = Pin<Box<dyn Future<Output = Result<ApplyResult, ReplicationError>> + Send>>;

/// What the pipeline of a node in a cluster asks of the other nodes: the
/// gRPC [`Forwarder`](crate::cluster::forward::Forwarder) between
/// processes, an in-process network in the simulation.
pub trait ShardPeers: Send + Sync {
    /// Proposes a step to shard group `group` at node `node`, which leads
    /// it (else it refuses before appending; with `relay`, it hands the
    /// step on once to the leader it knows); returns (skipped, gap) as
    /// the applier answered.
    fn propose(
        &self,
        node: u64,
        group: u64,
        data: Vec<u8>,
        relay: bool,
    ) -> BoxFuture<'_, Result<(bool, bool), ReplicationError>>;

    /// The image of `profile` on `shard` as node `node`'s replica holds it
    /// after a ReadIndex (a merge's export, [`ShardQuery::Export`]); `None`
    /// when the shard does not hold it. `Err` says what went wrong there.
    ///
    /// [`ShardQuery::Export`]: crate::query::remote::ShardQuery::Export
    fn export(
        &self,
        node: u64,
        shard: u32,
        profile: ProfileId,
    ) -> BoxFuture<'_, Result<Option<ProfileImage>, String>>;
}

/// The shard log of a node: proposals to the groups it leads go to its
/// driver; proposals to a group led by another node go to that node's
/// Forward service (no parsed commands travel: the leader decodes the
/// entry). When that leader does not take it (it cannot be reached: a cut
/// link; or it no longer leads), or no leader is known here, the proposal
/// goes to the group's other replicas in turn, each asked to relay it to
/// the leader it knows: a step reaches a leader that only another node can
/// reach. A leader that failed is tried after the relays for
/// [`UNREACHABLE_FOR`]. For a group this node holds no replica of (the
/// placement puts it elsewhere), the leader is not known here: the
/// proposal goes to the node that last took one, else to each of the
/// group's wanted replicas in turn, again with relaying.
struct RoutedLog {
    driver: Arc<Driver>,
    peers: Option<Arc<dyn ShardPeers>>,
    catalog: Arc<CatalogMachine>,
    shards: Arc<Vec<Arc<ShardMachine>>>,
    /// The node that last took a proposal of a group not held here.
    hints: Arc<Mutex<BTreeMap<u64, u64>>>,
    /// Leaders whose last proposal from here failed, and when.
    failed: Arc<Mutex<BTreeMap<u64, Instant>>>,
}

/// How long a shard leader that failed a proposal is tried only after the
/// relays (a call to a node behind a cut link fails only after the
/// connection's keepalive, about 3 s).
const UNREACHABLE_FOR: Duration = Duration::from_secs(10);

impl RoutedLog {
    /// The nodes to try for a group this node holds no replica of: the
    /// last one that took a proposal, then the placement's.
    fn candidates(&self, group: u64) -> Vec<u64> {
        let me = self.driver.node_id();
        let hint = self.hints.lock().get(&group).copied();
        let mut nodes: Vec<u64> = hint.into_iter().collect();
        for node in self.catalog.state.read().placed_voters(group) {
            if node != me && !nodes.contains(&node) {
                nodes.push(node);
            }
        }
        nodes
    }
}

/// What [`RoutedLog::propose`] returns for a step another node applied.
fn applied_elsewhere((skipped, gap): (bool, bool)) -> ApplyResult {
    Box::new(ShardApplied { skipped, gap, ..Default::default() })
}

impl ShardLog for RoutedLog {
    fn propose(&self, group: u64, data: Vec<u8>, local: Option<Box<dyn Any + Send>>) -> Answer {
        let me = self.driver.node_id();
        let Some(peers) = self.peers.clone() else {
            return Box::pin(self.driver.propose_with(group, data, local));
        };
        let leader = self.driver.leader_of(group);
        if leader == Some(me) {
            return Box::pin(self.driver.propose_with(group, data, local));
        }
        let recently_failed: Vec<u64> = {
            let failed = self.failed.lock();
            failed.iter().filter(|(_, at)| at.elapsed() < UNREACHABLE_FOR).map(|(&n, _)| n).collect()
        };
        let leader = leader.filter(|l| !recently_failed.contains(l));
        let held = self.driver.holds(group);
        let mut relays: Vec<u64> = if held { self.driver.replicas_of(group) } else { self.candidates(group) };
        relays.retain(|&n| n != me && Some(n) != leader);
        // Stable: the hint (or id order) among the nodes that did not fail.
        relays.sort_by_key(|n| recently_failed.contains(n));
        let (hints, failed) = (self.hints.clone(), self.failed.clone());
        let mut data = data;
        Box::pin(async move {
            let mut last = ReplicationError::NoReplica {
                group,
                name: format!("shard {}", group - 2),
                node: me,
                replicas: relays.clone(),
            };
            if let Some(leader) = leader {
                // The entry is copied only when a relay may need it too.
                let direct = if relays.is_empty() { std::mem::take(&mut data) } else { data.clone() };
                match peers.propose(leader, group, direct, false).await {
                    Ok(answer) => return Ok(applied_elsewhere(answer)),
                    Err(e) => {
                        failed.lock().insert(leader, Instant::now());
                        last = e;
                    }
                }
            }
            for node in relays {
                match peers.propose(node, group, data.clone(), true).await {
                    Ok(answer) => {
                        if !held {
                            hints.lock().insert(group, node);
                        }
                        return Ok(applied_elsewhere(answer));
                    }
                    Err(e) => last = e,
                }
            }
            hints.lock().remove(&group);
            Err(last)
        })
    }

    fn export(&self, shard: u32, profile: ProfileId) -> Exported {
        let group = shard_group(shard);
        let local = self.shards.get(shard as usize).cloned();
        let Some(peers) = self.peers.clone().filter(|_| !self.driver.holds(group)) else {
            // This node's replica, once it has applied every step its
            // leader committed (it may be another node).
            let caught_up = caught_up(self.driver.clone(), group);
            return Box::pin(async move {
                caught_up.await?;
                Ok(local.and_then(|m| m.read_state().shard.read_profile(profile)))
            });
        };
        let candidates = self.candidates(group);
        Box::pin(async move {
            let mut failures = Vec::new();
            for node in candidates {
                match peers.export(node, shard, profile).await {
                    Ok(image) => return Ok(image),
                    Err(e) => failures.push(format!("node {node}: {e}")),
                }
            }
            Err(ReplicationError::Remote {
                group,
                leader: 0,
                code: tonic::Code::Unavailable as i32,
                message: format!(
                    "no replica of shard {shard} exported profile {profile}: {}",
                    failures.join("; ")
                ),
            })
        })
    }
}

/// Resolves once `driver`'s replica of `group` has applied what the group
/// had committed when called (ReadIndex), at once when it leads the group.
fn caught_up(
    driver: Arc<Driver>,
    group: u64,
) -> Pin<Box<dyn Future<Output = Result<(), ReplicationError>> + Send>> {
    Box::pin(async move {
        if driver.leader_of(group) == Some(driver.node_id()) {
            return Ok(());
        }
        driver.read_barrier(group).await
    })
}

/// How long a call whose batch is committed waits for its steps while
/// they fail (a shard group without a leader) before it is answered with
/// [`IngestError::StepsPending`].
const STEP_PATIENCE: Duration = Duration::from_secs(5);

/// Whether this node leads the catalog group now.
type Leads = Arc<dyn Fn() -> bool + Send + Sync>;

/// How long a start waits to learn that this node leads the catalog before
/// it serves (and leaves the recovery steps to the stepper's task).
const LEADER_AT_START: Duration = Duration::from_secs(2);

/// How often a stepper that does not lead looks again.
const FOLLOWER_POLL: Duration = Duration::from_millis(100);

struct Stepper {
    log: Arc<dyn ShardLog>,
    /// Steps only while this says so.
    leads: Leads,
    catalog: Arc<CatalogMachine>,
    shards: Arc<Vec<Arc<ShardMachine>>>,
    /// Signalled when the outbox gains an entry.
    ready: Arc<Notify>,
    board: Arc<ReplyBoard>,
}

impl Stepper {
    async fn run(self) {
        loop {
            if !(self.leads)() {
                // Calls whose entries are committed wait for the new
                // leader to drive their steps: each is answered once this
                // node's shards have applied them (its report is what the
                // catalog computed here, as everywhere), or after the
                // same patience as on the leader.
                let stepped = self.catalog.stepped.load(std::sync::atomic::Ordering::Acquire);
                if let Some(index) =
                    self.pop_applied().into_iter().chain((stepped > 0).then_some(stepped)).max()
                {
                    self.board.done(index);
                }
                self.board.give_up(
                    Some(STEP_PATIENCE),
                    "this node no longer leads the catalog, and the new leader's steps for the batch have not reached this node yet",
                );
                let _ = tokio::time::timeout(FOLLOWER_POLL, self.ready.notified()).await;
                continue;
            }
            if let Err(e) = self.drain().await {
                tracing::warn!(error = %e, "ingest steps failed; retrying in 500 ms");
                // A step fails while a shard group elects or moves its
                // leader: the entries stay in the outbox and their calls
                // keep waiting, for a while.
                self.board.give_up(Some(STEP_PATIENCE), &e.to_string());
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            let _ = tokio::time::timeout(FOLLOWER_POLL, self.ready.notified()).await;
        }
    }

    /// On a node that does not lead the catalog: pops the outbox entries
    /// whose every step this node's shards have applied.
    /// Returns the catalog index of the last entry popped.
    fn pop_applied(&self) -> Option<u64> {
        let mut last = None;
        loop {
            let applied = {
                let outbox = self.catalog.outbox.lock();
                outbox.front().is_some_and(|entry| self.applied_here(&entry.steps))
            };
            if !applied {
                return last;
            }
            if let Some(done) = self.catalog.outbox.lock().pop_front() {
                last = Some(done.index);
                self.catalog.retire(done.steps);
            }
        }
    }

    /// Whether every step is at or below its shards' watermarks here.
    fn applied_here(&self, steps: &[Step]) -> bool {
        let at = |shard: u32, tag: Tag| self.shards.get(shard as usize).is_some_and(|s| s.watermark() >= tag);
        steps.iter().all(|step| match step {
            Step::Writes { tag, by_shard } => by_shard.keys().all(|&shard| at(shard, *tag)),
            Step::Move { import_tag, remove_tag, from_shard, into_shard, .. } => {
                at(*into_shard, *import_tag) && at(*from_shard, *remove_tag)
            }
        })
    }

    /// Drives the outbox until it is empty, popping each entry once its
    /// steps are committed; returns at the first failure, once nothing it
    /// proposed is still in flight (so a retry starts from what the shards
    /// hold).
    async fn drain(&self) -> Result<(), IngestError> {
        // The tag each shard's next proposal follows.
        let mut chain: Vec<Tag> = self.shards.iter().map(|s| s.watermark()).collect();
        // Entries at the outbox's front whose writes are proposed.
        let mut in_flight: VecDeque<(u64, Committed)> = VecDeque::new();
        // The index of the last entry taken (entries are found by index:
        // a `Stepped` entry the old leader wrote may pop the front while
        // this runs).
        let mut taken = 0;
        loop {
            while in_flight.len() < IN_FLIGHT_ENTRIES {
                let next = self.catalog.outbox.lock().iter().find(|e| e.index > taken).cloned();
                let Some(entry) = next else { break };
                if !entry.steps.iter().any(|s| matches!(s, Step::Move { .. })) {
                    taken = entry.index;
                    in_flight.push_back((entry.index, self.propose_writes(&entry.steps, &mut chain)));
                } else if in_flight.is_empty() {
                    taken = entry.index;
                    self.drive_in_order(&entry, &mut chain).await?;
                    self.finish(entry.index);
                } else {
                    // A merge waits for every earlier write.
                    break;
                }
            }
            let Some((index, committed)) = in_flight.front_mut() else { return Ok(()) };
            tokio::select! {
                biased;
                result = committed => {
                    let index = *index;
                    in_flight.pop_front();
                    if let Err(e) = result {
                        for (_, rest) in in_flight {
                            let _ = rest.await;
                        }
                        return Err(e);
                    }
                    self.finish(index);
                }
                // A new entry: propose its writes too.
                _ = self.ready.notified() => {}
            }
        }
    }

    /// Entry `index`, the outbox's front, is committed (it and anything
    /// before it leave the outbox).
    fn finish(&self, index: u64) {
        let mut outbox = self.catalog.outbox.lock();
        while outbox.front().is_some_and(|o| o.index <= index) {
            if let Some(done) = outbox.pop_front() {
                self.catalog.retire(done.steps);
            }
        }
        drop(outbox);
        self.board.done(index);
    }

    /// Proposes every write of an entry without a merge, all at once.
    fn propose_writes(&self, steps: &Arc<Vec<Step>>, chain: &mut [Tag]) -> Committed {
        let mut proposals = Vec::new();
        for (index, step) in steps.iter().enumerate() {
            if let Step::Writes { tag, by_shard } = step {
                for (&shard, commands) in by_shard {
                    // The applier takes the commands from here rather than
                    // decoding the entry again.
                    let source = StepCommands { steps: steps.clone(), step: index, shard };
                    if let Some(p) = self.propose_step(shard, *tag, commands, Some(Box::new(source)), chain) {
                        proposals.push(p);
                    }
                }
            }
        }
        Box::pin(await_all(proposals))
    }

    /// Drives an entry with a merge step by step.
    async fn drive_in_order(&self, entry: &Outbox, chain: &mut [Tag]) -> Result<(), IngestError> {
        for step in entry.steps.iter() {
            match step {
                Step::Writes { tag, by_shard } => {
                    let proposals: Vec<_> = by_shard
                        .iter()
                        .filter_map(|(&shard, commands)| {
                            self.propose_step(shard, *tag, commands, None, chain)
                        })
                        .collect();
                    await_all(proposals).await?;
                }
                Step::Move { import_tag, remove_tag, from, from_shard, into, into_shard } => {
                    let image = if *import_tag > chain[*into_shard as usize] {
                        // The absorbed profile as its shard holds it after
                        // every earlier step (nothing else writes to it
                        // meanwhile: the stepper waits for this merge).
                        self.log.export(*from_shard, *from).await?
                    } else {
                        None
                    };
                    let import = match image {
                        Some(mut image) => {
                            image.profile = *into;
                            vec![Command::Import(image)]
                        }
                        // Already gone: nothing to carry (the tag still
                        // advances the watermark).
                        None => vec![],
                    };
                    if let Some(p) = self.propose_step(*into_shard, *import_tag, &import, None, chain) {
                        p.await?;
                    }
                    let remove = [Command::Remove { profile: *from }];
                    if let Some(p) = self.propose_step(*from_shard, *remove_tag, &remove, None, chain) {
                        p.await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Proposes one step's commands to `shard`, after the previous step sent
    /// to it; `None` when the shard already applied the step.
    fn propose_step(
        &self,
        shard: u32,
        tag: Tag,
        commands: &[Command],
        held: Option<Box<dyn CommandSource>>,
        chain: &mut [Tag],
    ) -> Option<Committed> {
        let after = chain[shard as usize];
        if tag <= after {
            return None;
        }
        chain[shard as usize] = tag;
        let data = ShardProposal::encode_parts(after, tag, commands);
        let local =
            held.map(|source| Box::new(ProposedCommands { after, tag, source }) as Box<dyn Any + Send>);
        let answer = self.log.propose(shard_group(shard), data, local);
        Some(Box::pin(async move {
            let applied = answer.await?;
            match applied.downcast::<ShardApplied>() {
                Ok(a) if a.gap => Err(IngestError::Gap { shard, tag }),
                _ => Ok(()),
            }
        }))
    }
}

/// Awaits every answer, then returns the first failure: nothing is left in
/// flight when a failure is reported, so a retry starts from what the
/// shards hold.
async fn await_all(proposals: Vec<Committed>) -> Result<(), IngestError> {
    let mut first = Ok(());
    for p in proposals {
        first = first.and(p.await);
    }
    first
}

/// The commands of one shard in one step of an outbox entry, shared with
/// the outbox rather than copied.
struct StepCommands {
    steps: Arc<Vec<Step>>,
    step: usize,
    shard: u32,
}

impl CommandSource for StepCommands {
    fn commands(&self) -> &[Command] {
        match &self.steps[self.step] {
            Step::Writes { by_shard, .. } => by_shard.get(&self.shard).map_or(&[], Vec::as_slice),
            Step::Move { .. } => &[],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::Source;
    use crate::replication::driver::{DriverConfig, GroupSpec, NoPeers};
    use crate::replication::storage::LogStore;

    /// The driver, except that the next proposal to group `lose` never
    /// reaches the log (as a leader change may drop it).
    struct Losing {
        driver: Arc<Driver>,
        shards: Arc<Vec<Arc<ShardMachine>>>,
        lose: Mutex<Option<u64>>,
    }

    impl ShardLog for Losing {
        fn propose(&self, group: u64, data: Vec<u8>, local: Option<Box<dyn Any + Send>>) -> Answer {
            if self.lose.lock().take_if(|g| *g == group).is_some() {
                let lost = ReplicationError::NotLeader {
                    group,
                    name: "lost on the way".into(),
                    leader: None,
                    leader_addr: None,
                };
                return Box::pin(async move { Err(lost) });
            }
            Box::pin(self.driver.propose_with(group, data, local))
        }

        fn export(&self, shard: u32, profile: ProfileId) -> Exported {
            let image = self.shards[shard as usize].read_state().shard.read_profile(profile);
            Box::pin(async move { Ok(image) })
        }
    }

    #[tokio::test]
    async fn a_lost_shard_proposal_is_retried_and_nothing_is_applied_twice_or_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(LogStore::open(&dir.path().join("raft")).unwrap());
        let catalog = Arc::new(CatalogMachine::open(dir.path(), 2, 24).unwrap());
        let shards: Arc<Vec<Arc<ShardMachine>>> =
            Arc::new((0..2).map(|s| Arc::new(ShardMachine::open(dir.path(), s).unwrap())).collect());
        let mut groups =
            vec![GroupSpec { id: CATALOG_GROUP, name: "catalog".into(), machine: catalog.clone() }];
        for (s, m) in shards.iter().enumerate() {
            groups.push(GroupSpec {
                id: shard_group(s as u32),
                name: format!("shard {s}"),
                machine: m.clone(),
            });
        }
        let driver = tokio::task::spawn_blocking(move || {
            Driver::start(store, groups, Arc::new(NoPeers), DriverConfig::default())
        })
        .await
        .unwrap()
        .unwrap();
        let driver = Arc::new(driver);

        // Two catalog entries, both in the outbox before the stepper runs:
        // 40 identifies, then an event for each of the same users.
        let users: Vec<String> = (0..40).map(|i| format!("u{i}")).collect();
        let identify = users
            .iter()
            .map(|u| format!(r#"{{"type":"identify","userId":"{u}","traits":{{"plan":"pro"}}}}"#))
            .collect();
        let track =
            users.iter().map(|u| format!(r#"{{"type":"track","userId":"{u}","event":"buy"}}"#)).collect();
        for messages in [identify, track] {
            let job = IngestJob { messages, received_ms: 1_800_000_000_000, source: Source::Grpc };
            let data = CatalogCommand::Ingest(vec![job]).encode();
            // The single voter may not have won its election yet.
            let mut tries = 0;
            while let Err(e) = driver.propose(CATALOG_GROUP, data.clone()).await {
                tries += 1;
                assert!(tries < 250, "the catalog group has no leader: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        assert_eq!(catalog.outbox.lock().len(), 2);
        let on_shard = |s: usize| {
            let state = shards[s].read_state();
            (state.shard.len(), state.shard.events.values().map(|t| t.total).sum::<u64>(), state.watermark)
        };

        let stepper = Stepper {
            log: Arc::new(Losing {
                driver: driver.clone(),
                shards: shards.clone(),
                lose: Mutex::new(Some(shard_group(0))),
            }),
            leads: Arc::new(|| true),
            catalog: catalog.clone(),
            shards: shards.clone(),
            ready: catalog.outbox_ready.clone(),
            board: Arc::new(ReplyBoard {
                board: Mutex::new(Board::default()),
                slots: Arc::new(Semaphore::new(IN_FLIGHT_ENTRIES)),
            }),
        };
        // Both entries' writes go out at once. Shard 0 loses the first
        // entry's and refuses the second's as a gap; shard 1 applies both.
        let e = stepper.drain().await.unwrap_err();
        assert!(e.to_string().contains("lost on the way"), "{e}");
        assert_eq!(catalog.outbox.lock().len(), 2, "no entry is done");
        let (profiles_0, events_0, watermark_0) = on_shard(0);
        assert_eq!((profiles_0, events_0, watermark_0), (0, 0, (0, 0)), "shard 0 applied past the lost step");
        let (profiles_1, events_1, _) = on_shard(1);
        assert!(profiles_1 > 0 && profiles_1 < 40, "the users are spread over both shards");
        assert_eq!(events_1, profiles_1);

        // The retry drives both entries again: shard 0 gets both, shard 1
        // skips what it has.
        stepper.drain().await.unwrap();
        assert!(catalog.outbox.lock().is_empty());
        let (profiles_0, events_0, watermark_0) = on_shard(0);
        assert_eq!(on_shard(1), (profiles_1, events_1, watermark_0), "shard 1 applied something twice");
        assert_eq!(profiles_0 + profiles_1, 40);
        assert_eq!(events_0 + events_1, 40, "each event once");
        // Every profile has its trait (the first entry) and its one event
        // (the second).
        for profile in 1..=40 {
            let image = (0..2)
                .find_map(|s| shards[s].read_state().shard.read_profile(profile))
                .unwrap_or_else(|| panic!("profile {profile} is on no shard"));
            assert!(
                image.traits.iter().any(|(name, value, _)| name == "plan" && value.is_some()),
                "{image:?}"
            );
            assert_eq!(image.events.len(), 1, "{image:?}");
        }
        driver.stop();
    }
}
