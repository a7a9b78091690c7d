//! Reads of shards whose replica on this node cannot answer, from replicas
//! on other nodes (`Forward.Read`): what a shard is asked and answers, the
//! choice of replica, hedging, and the gathering of the answers.
//!
//! The planner compiles a query once, here. A shard whose replica on this
//! node is within the staleness bound is read here; any other is asked of
//! a replica on another node, which checks its own replica against the
//! same bound and evaluates the conditions this node compiled (sent as
//! bytes, [`wire`](crate::segment::wire)), so that every shard evaluates
//! one compilation. Each shard answers with a [`ShardAnswer`], computed by
//! [`answer`] whether the shard is local or not, and the planner merges
//! them the same way in both cases.
//!
//! **Choice and hedging** ("The Tail at Scale", Dean and Barroso 2013).
//! The replicas of a shard are tried least loaded first (fewest reads in
//! flight, then no recent failure, then the lowest median latency). A
//! call that fails moves to the next replica at once; one that has not
//! answered after a delay near the replica's 95th percentile latency
//! ([`Latencies::hedge_delay`]) is hedged: the next replica is asked too,
//! and the first answer wins (the other call is cancelled). A shard that
//! no replica answers is missing: the query fails naming it and every
//! replica's reason, unless the caller asked for partial results.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::MemberRow;
use crate::ingest::BoxFuture;
use crate::replication::codec;
use crate::segment::Cond;
use crate::shard::{Row, Shard};

/// What one shard is asked, over the query's conditions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ShardQuery {
    /// How many rows match each condition, and how many rows there are.
    Count,
    /// Counts per value of a trait among the rows matching the first
    /// condition, and how many match.
    Breakdown {
        /// The trait.
        trait_name: String,
    },
    /// Up to `limit` rows matching the first condition after row `after`,
    /// with these traits, and whether more follow.
    Members {
        /// Resume after this row (`None`: from the shard's start).
        after: Option<Row>,
        /// Most rows.
        limit: u32,
        /// The traits to return.
        traits: Vec<String>,
    },
    /// Not a shard's: one person's membership in each expression, read
    /// by the node asked after its own ReadIndex (read-your-writes), for
    /// a node that cannot confirm its replicas. Sent with no shards.
    Check {
        /// The profile's address.
        address: String,
        /// The expressions.
        texts: Vec<String>,
        /// The query time.
        now_ms: i64,
    },
    /// Likewise, everything about one person.
    Profile {
        /// The profile's address.
        address: String,
        /// How many of the latest events.
        recent: u32,
        /// The time its saved segments are evaluated at.
        now_ms: i64,
    },
    /// For the ingest pipeline's cross-shard merge: everything the one
    /// shard asked holds of a profile, after a fresh ReadIndex of that
    /// shard there (every write the pipeline committed before is in it).
    Export {
        /// The profile.
        profile: crate::shard::ProfileId,
    },
}

/// What one shard answers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ShardAnswer {
    /// [`ShardQuery::Count`].
    Count {
        /// One count per condition.
        counts: Vec<u64>,
        /// Rows in the shard.
        universe: u64,
    },
    /// [`ShardQuery::Breakdown`]: (value, count) rows and the members in
    /// all, or why the shard could not break them down.
    Breakdown(Result<(Vec<(String, u64)>, u64), String>),
    /// [`ShardQuery::Members`].
    Members {
        /// The rows, in order, with what was asked of each.
        rows: Vec<(Row, MemberRow)>,
        /// More rows match after the last one.
        more: bool,
    },
    /// [`ShardQuery::Check`]: the profile and one answer per expression.
    Check {
        /// The profile.
        profile: u64,
        /// Its membership in each expression.
        matches: Vec<bool>,
    },
    /// [`ShardQuery::Profile`].
    Profile(Box<super::ProfileView>),
    /// [`ShardQuery::Export`]: the profile's image (`None`: not on the
    /// shard).
    Image(Option<Box<crate::shard::ProfileImage>>),
    /// A person's read the node asked answered with the caller's error (a
    /// bad expression, an unknown profile): what the caller answers too,
    /// rather than a reason to ask another node.
    Refused {
        /// Whether it is an unknown profile, trait or segment (else a bad
        /// expression).
        not_found: bool,
        /// The message.
        message: String,
    },
}

/// Answers `query` over `conds` on `shard`: the same code for a replica on
/// this node and for one asked by another node.
pub fn answer(shard: &Shard, query: &ShardQuery, conds: &[Cond]) -> ShardAnswer {
    let first = || conds.first().unwrap_or(&Cond::Empty);
    match query {
        ShardQuery::Count => ShardAnswer::Count { counts: shard.count_all(conds), universe: shard.len() },
        ShardQuery::Breakdown { trait_name } => {
            ShardAnswer::Breakdown(shard.breakdown_with_total(first(), trait_name).map_err(|e| e.to_string()))
        }
        ShardQuery::Members { after, limit, traits } => {
            let limit = *limit as usize;
            let rows = shard.members(first(), *after, limit + 1);
            let more = rows.len() > limit;
            let rows = rows.into_iter().take(limit).map(|r| (r, super::member(shard, r, traits))).collect();
            ShardAnswer::Members { rows, more }
        }
        ShardQuery::Export { profile } => ShardAnswer::Image(shard.read_profile(*profile).map(Box::new)),
        ShardQuery::Check { .. } | ShardQuery::Profile { .. } => ShardAnswer::Refused {
            not_found: false,
            message: "a person's read is answered by the planner, not by one shard".into(),
        },
    }
}

/// A read sent to another node: these shards, this query, the conditions
/// as [`encode_conds`](crate::segment::wire::encode_conds) wrote them, and
/// the staleness bound the replicas there must meet.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReadRequest {
    /// The shards (not groups).
    pub shards: Vec<u32>,
    /// What each is asked.
    pub query: ShardQuery,
    /// The compiled conditions (empty when `texts` is set).
    pub conds: Vec<u8>,
    /// The bound, milliseconds (0: the answering node's own).
    pub max_staleness_ms: u64,
    /// Set by a node whose own catalog is past the bound: the expressions
    /// and the query time, for the node asked to compile against its
    /// catalog (which it confirms within the bound first) instead of
    /// taking `conds`.
    pub texts: Option<(Vec<String>, i64)>,
}

/// The answer to a [`ReadRequest`]: one per shard asked, and the staleness
/// the answering node's replicas met.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReadReply {
    /// (shard, its answer), for every shard asked.
    pub answers: Vec<(u32, ShardAnswer)>,
    /// Milliseconds since the answering replicas were last confirmed.
    pub staleness_ms: u64,
}

impl ReadRequest {
    /// A read of `query` over compiled `conds` within `bound` ms, with no
    /// shards yet ([`gather`] fills them in).
    pub fn compiled(query: ShardQuery, conds: &[Cond], bound: u64) -> ReadRequest {
        let conds = crate::segment::wire::encode_conds(conds);
        ReadRequest { shards: Vec::new(), query, conds, max_staleness_ms: bound, texts: None }
    }

    /// A read of `query` over `texts` at `now_ms` for the node asked to
    /// compile, within `bound` ms, with no shards yet.
    pub fn texts(query: ShardQuery, texts: Vec<String>, now_ms: i64, bound: u64) -> ReadRequest {
        ReadRequest {
            shards: Vec::new(),
            query,
            conds: Vec::new(),
            max_staleness_ms: bound,
            texts: Some((texts, now_ms)),
        }
    }

    /// Its bytes.
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self).expect("bincode encodes a read into a Vec")
    }

    /// A request from its bytes.
    pub fn decode(bytes: &[u8]) -> Result<ReadRequest, String> {
        decode_whole(bytes, "read request")
    }
}

impl ReadReply {
    /// Its bytes.
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self).expect("bincode encodes an answer into a Vec")
    }

    /// A reply from its bytes.
    pub fn decode(bytes: &[u8]) -> Result<ReadReply, String> {
        decode_whole(bytes, "read reply")
    }
}

fn decode_whole<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, String> {
    let (value, used) = codec::decode(bytes).map_err(|e| format!("the {what} does not decode: {e}"))?;
    if used != bytes.len() {
        return Err(format!("{} bytes follow the {what}", bytes.len() - used));
    }
    Ok(value)
}

/// The replicas on other nodes, as the gathering sees them.
pub trait Replicas: Send + Sync + 'static {
    /// The other nodes that hold a replica of `shard`, in any order.
    fn candidates(&self, shard: u32) -> Vec<u64>;

    /// Sends `request` to node `node`; its reply, or what went wrong (the
    /// node's words when it answered).
    fn read(
        &self,
        node: u64,
        request: ReadRequest,
        deadline: Option<Instant>,
    ) -> BoxFuture<'static, Result<ReadReply, String>>;
}

/// Calls kept per node for its percentiles.
const SAMPLES: usize = 64;
/// Fewest samples before a node's own percentile is trusted.
const MIN_SAMPLES: usize = 8;
/// The hedge delay of a node with too few samples.
pub const DEFAULT_HEDGE_DELAY: Duration = Duration::from_millis(20);
/// The hedge delay is held between these.
const HEDGE_FLOOR: Duration = Duration::from_millis(1);
const HEDGE_CEILING: Duration = Duration::from_millis(500);
/// A node that failed within this long is tried after those that did not.
const FAILURE_MEMORY: Duration = Duration::from_secs(5);

#[derive(Default)]
struct NodeLatency {
    /// Latest successful calls, microseconds.
    recent: VecDeque<u64>,
    in_flight: u32,
    failed_at: Option<Instant>,
}

/// Per node: latest latencies, calls in flight, the latest failure (or
/// call that lost to a hedge).
#[derive(Default)]
pub struct Latencies {
    nodes: Mutex<HashMap<u64, NodeLatency>>,
}

impl Latencies {
    /// Node `node`'s latency at `percentile` (0–100) over its latest calls
    /// (`None` before [`MIN_SAMPLES`] calls).
    fn percentile(&self, node: u64, percentile: usize) -> Option<Duration> {
        let nodes = self.nodes.lock();
        let recent = &nodes.get(&node)?.recent;
        if recent.len() < MIN_SAMPLES {
            return None;
        }
        let mut sorted: Vec<u64> = recent.iter().copied().collect();
        sorted.sort_unstable();
        let at = (sorted.len() * percentile).div_ceil(100).clamp(1, sorted.len()) - 1;
        Some(Duration::from_micros(sorted[at]))
    }

    /// How long a call to `node` may go unanswered before it is hedged:
    /// its 95th percentile, within 1–500 ms ([`DEFAULT_HEDGE_DELAY`]
    /// before it has a history).
    pub fn hedge_delay(&self, node: u64) -> Duration {
        self.percentile(node, 95).map_or(DEFAULT_HEDGE_DELAY, |p| p.clamp(HEDGE_FLOOR, HEDGE_CEILING))
    }

    /// Orders `nodes` best first: fewest calls in flight, then no recent
    /// failure, then the lowest median.
    pub fn order(&self, nodes: &mut [u64]) {
        let keys: HashMap<u64, (u32, bool, Duration)> = nodes
            .iter()
            .map(|&n| {
                let (in_flight, failed) = {
                    let all = self.nodes.lock();
                    let l = all.get(&n);
                    (
                        l.map_or(0, |l| l.in_flight),
                        l.and_then(|l| l.failed_at).is_some_and(|t| t.elapsed() < FAILURE_MEMORY),
                    )
                };
                (n, (in_flight, failed, self.percentile(n, 50).unwrap_or(Duration::ZERO)))
            })
            .collect();
        nodes.sort_by_key(|n| (keys[n], *n));
    }

    fn begin(self: &Arc<Self>, node: u64) -> InFlight {
        self.nodes.lock().entry(node).or_default().in_flight += 1;
        InFlight {
            latencies: self.clone(),
            node,
            started: tokio::time::Instant::now(),
            done: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

/// A call in flight to a node; dropped (finished or cancelled), it is no
/// longer counted. One cancelled before it finished lost to a hedge: it
/// counts as a failure, so that the slow node goes last for a while.
struct InFlight {
    latencies: Arc<Latencies>,
    node: u64,
    /// Tokio's clock, which the tests pause.
    started: tokio::time::Instant,
    done: std::sync::atomic::AtomicBool,
}

impl InFlight {
    fn finished(&self, ok: bool) {
        self.done.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut nodes = self.latencies.nodes.lock();
        let l = nodes.entry(self.node).or_default();
        if ok {
            if l.recent.len() == SAMPLES {
                l.recent.pop_front();
            }
            l.recent.push_back(self.started.elapsed().as_micros() as u64);
        } else {
            l.failed_at = Some(Instant::now());
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let lost = !self.done.load(std::sync::atomic::Ordering::Relaxed);
        if let Some(l) = self.latencies.nodes.lock().get_mut(&self.node) {
            l.in_flight = l.in_flight.saturating_sub(1);
            if lost {
                l.failed_at = Some(Instant::now());
            }
        }
    }
}

/// Calls `call` on `candidates` in order until one succeeds: the next is
/// called at once when one fails, and also when the latest one called has
/// not answered within its hedge delay. Returns the first success (with
/// the node that gave it), or every node's failure.
pub async fn hedged<T: Send + 'static>(
    candidates: &[u64],
    latencies: &Arc<Latencies>,
    call: impl Fn(u64) -> BoxFuture<'static, Result<T, String>>,
) -> Result<(u64, T), Vec<(u64, String)>> {
    let mut calls = tokio::task::JoinSet::new();
    let mut failures = Vec::new();
    let mut next = 0;
    let launch = |calls: &mut tokio::task::JoinSet<_>, next: &mut usize| {
        let node = candidates[*next];
        *next += 1;
        let in_flight = latencies.begin(node);
        let reply = call(node);
        calls.spawn(async move {
            let result = reply.await;
            in_flight.finished(result.is_ok());
            (node, result)
        });
        tokio::time::Instant::now() + latencies.hedge_delay(node)
    };
    if candidates.is_empty() {
        return Err(failures);
    }
    let mut hedge_at = launch(&mut calls, &mut next);
    loop {
        tokio::select! {
            joined = calls.join_next() => match joined {
                Some(Ok((node, Ok(value)))) => return Ok((node, value)),
                Some(Ok((node, Err(why)))) => {
                    failures.push((node, why));
                    if next < candidates.len() {
                        hedge_at = launch(&mut calls, &mut next);
                    } else if calls.is_empty() {
                        return Err(failures);
                    }
                }
                Some(Err(e)) => {
                    failures.push((0, format!("the call's task failed: {e}")));
                    if next < candidates.len() {
                        hedge_at = launch(&mut calls, &mut next);
                    } else if calls.is_empty() {
                        return Err(failures);
                    }
                }
                None => return Err(failures),
            },
            _ = tokio::time::sleep_until(hedge_at), if next < candidates.len() => {
                hedge_at = launch(&mut calls, &mut next);
            }
        }
    }
}

/// What the gathering of remote shards gave.
#[derive(Debug, Default)]
pub struct Gathered {
    /// (shard, answer) of every shard some replica answered.
    pub answers: Vec<(u32, ShardAnswer)>,
    /// The largest staleness the answering replicas met, milliseconds.
    pub staleness_ms: u64,
    /// (shard, why) of every shard no replica answered.
    pub missing: Vec<(u32, String)>,
    /// (shard, node) of every shard answered by a replica other than the
    /// first one tried (a hedge, or after a failure).
    pub hedged: Vec<(u32, u64)>,
}

/// Asks replicas on other nodes for `shards`: the shards whose replicas
/// are on the same nodes go in one call, hedged across those nodes.
/// `template` is the request with no shards.
pub async fn gather(
    replicas: Arc<dyn Replicas>,
    latencies: Arc<Latencies>,
    shards: Vec<u32>,
    template: ReadRequest,
    deadline: Option<Instant>,
) -> Gathered {
    // Shards by the nodes that hold them, best first.
    let asked = shards.clone();
    let mut by_nodes: BTreeMap<Vec<u64>, Vec<u32>> = BTreeMap::new();
    for shard in shards {
        let mut nodes = replicas.candidates(shard);
        nodes.sort_unstable();
        nodes.dedup();
        by_nodes.entry(nodes).or_default().push(shard);
    }
    let mut calls = tokio::task::JoinSet::new();
    let mut gathered = Gathered::default();
    for (mut nodes, shards) in by_nodes {
        if nodes.is_empty() {
            for s in shards {
                gathered.missing.push((s, "no other node holds a replica of it".into()));
            }
            continue;
        }
        latencies.order(&mut nodes);
        let request = ReadRequest { shards: shards.clone(), ..template.clone() };
        let replicas = replicas.clone();
        let latencies = latencies.clone();
        calls.spawn(async move {
            let first = nodes[0];
            let call = |node: u64| replicas.read(node, request.clone(), deadline);
            let outcome = match deadline {
                Some(d) => {
                    match tokio::time::timeout_at(
                        tokio::time::Instant::from_std(d),
                        hedged(&nodes, &latencies, call),
                    )
                    .await
                    {
                        Ok(outcome) => outcome,
                        Err(_) => Err(vec![(0, "no replica answered before the deadline".to_string())]),
                    }
                }
                None => hedged(&nodes, &latencies, call).await,
            };
            (shards, first, outcome)
        });
    }
    while let Some(joined) = calls.join_next().await {
        let Ok((shards, first, outcome)) = joined else { continue };
        match outcome {
            Ok((node, reply)) => {
                let mut answered: HashMap<u32, ShardAnswer> = reply.answers.into_iter().collect();
                gathered.staleness_ms = gathered.staleness_ms.max(reply.staleness_ms);
                for s in shards {
                    match answered.remove(&s) {
                        Some(a) => {
                            gathered.answers.push((s, a));
                            if node != first {
                                gathered.hedged.push((s, node));
                            }
                        }
                        None => gathered.missing.push((s, format!("node {node} answered without it"))),
                    }
                }
            }
            Err(failures) => {
                let why: Vec<String> = failures
                    .iter()
                    .map(|(node, why)| if *node == 0 { why.clone() } else { format!("node {node}: {why}") })
                    .collect();
                for s in shards {
                    gathered.missing.push((s, why.join("; ")));
                }
            }
        }
    }
    // A call whose task failed (it panicked) answered nothing: its shards
    // are missing, never silently left out of the merge.
    for s in asked {
        if !gathered.answers.iter().any(|(a, _)| *a == s) && !gathered.missing.iter().any(|(m, _)| *m == s) {
            gathered.missing.push((s, "the read of it failed on this node (its task stopped)".into()));
        }
    }
    gathered.missing.sort_by_key(|(s, _)| *s);
    gathered
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn boxed<T: Send + 'static>(
        f: impl std::future::Future<Output = Result<T, String>> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, String>> {
        Box::pin(f)
    }

    #[test]
    fn requests_and_replies_survive_the_trip_and_damage_is_an_error() {
        let request = ReadRequest {
            shards: vec![1, 3],
            query: ShardQuery::Members { after: Some(7), limit: 10, traits: vec!["plan".into()] },
            conds: vec![1, 2, 3],
            max_staleness_ms: 1000,
            texts: Some((vec!["ALL".into()], 17)),
        };
        assert_eq!(ReadRequest::decode(&request.encode()).unwrap(), request);
        let reply = ReadReply {
            answers: vec![
                (1, ShardAnswer::Count { counts: vec![3, 4], universe: 9 }),
                (3, ShardAnswer::Breakdown(Err("no trait".into()))),
                (
                    4,
                    ShardAnswer::Members {
                        rows: vec![(
                            2,
                            MemberRow {
                                profile: 5,
                                user_id: Some("u".into()),
                                anonymous_ids: vec!["a".into()],
                                traits: vec![("plan".into(), crate::model::Value::Keyword("pro".into()))],
                            },
                        )],
                        more: true,
                    },
                ),
            ],
            staleness_ms: 12,
        };
        let bytes = reply.encode();
        assert_eq!(ReadReply::decode(&bytes).unwrap(), reply);
        for cut in 0..bytes.len() {
            assert!(ReadReply::decode(&bytes[..cut]).is_err());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_replica_is_hedged_after_its_delay_and_the_first_answer_wins() {
        let latencies = Arc::new(Latencies::default());
        let called = Arc::new(Mutex::new(Vec::new()));
        let log = called.clone();
        let started = tokio::time::Instant::now();
        let (node, value) = hedged(&[1, 2], &latencies, move |node| {
            log.lock().push((node, started.elapsed()));
            boxed(async move {
                // Node 1 is stuck; node 2 answers in 3 ms.
                let wait = if node == 1 { Duration::from_secs(60) } else { Duration::from_millis(3) };
                tokio::time::sleep(wait).await;
                Ok(node * 10)
            })
        })
        .await
        .unwrap();
        assert_eq!((node, value), (2, 20));
        let called = called.lock().clone();
        assert_eq!(called.len(), 2);
        // Hedged after the default delay: node 1 has no history yet.
        assert_eq!(called[1], (2, DEFAULT_HEDGE_DELAY));
        assert_eq!(started.elapsed(), DEFAULT_HEDGE_DELAY + Duration::from_millis(3));
        // The cancelled call is no longer in flight, and the node that lost
        // to the hedge goes last for a while.
        tokio::task::yield_now().await;
        assert_eq!(latencies.nodes.lock()[&1].in_flight, 0);
        let mut order = vec![1, 2];
        latencies.order(&mut order);
        assert_eq!(order, vec![2, 1]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_hedge_delay_follows_the_replicas_95th_percentile() {
        let latencies = Arc::new(Latencies::default());
        for i in 0..40u64 {
            // 37 calls of 2 ms and three of 9 ms: p95 is 9 ms.
            let ms = if i % 13 == 7 { 9 } else { 2 };
            hedged(&[1], &latencies, move |_| {
                boxed(async move {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    Ok(())
                })
            })
            .await
            .unwrap();
        }
        assert_eq!(latencies.hedge_delay(1), Duration::from_millis(9));
        assert_eq!(latencies.hedge_delay(2), DEFAULT_HEDGE_DELAY);
        // A fast answer is never hedged.
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        hedged(&[1, 2], &latencies, move |_| {
            counted.fetch_add(1, Ordering::SeqCst);
            boxed(async {
                tokio::time::sleep(Duration::from_millis(2)).await;
                Ok(())
            })
        })
        .await
        .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_moves_on_at_once_and_all_failures_are_reported() {
        let latencies = Arc::new(Latencies::default());
        let started = tokio::time::Instant::now();
        let (node, _) = hedged(&[1, 2, 3], &latencies, |node| {
            boxed(async move {
                if node < 3 {
                    Err(format!("node {node} is stale"))
                } else {
                    Ok(())
                }
            })
        })
        .await
        .unwrap();
        assert_eq!(node, 3);
        assert_eq!(started.elapsed(), Duration::ZERO, "no hedge delay after a failure");
        let failures =
            hedged::<()>(&[1, 2], &latencies, |node| boxed(async move { Err(format!("down {node}")) }))
                .await
                .unwrap_err();
        assert_eq!(failures, vec![(1, "down 1".to_string()), (2, "down 2".to_string())]);
        // Recent failures go last.
        let mut order = vec![1, 2, 3];
        latencies.order(&mut order);
        assert_eq!(order, vec![3, 1, 2]);
    }

    /// Replicas that answer from a table: shard → (nodes holding it), and
    /// per node an optional delay and whether it fails.
    struct Table {
        holders: HashMap<u32, Vec<u64>>,
        down: Vec<u64>,
        calls: Mutex<Vec<(u64, Vec<u32>)>>,
    }

    impl Replicas for Table {
        fn candidates(&self, shard: u32) -> Vec<u64> {
            self.holders.get(&shard).cloned().unwrap_or_default()
        }

        fn read(
            &self,
            node: u64,
            request: ReadRequest,
            _deadline: Option<Instant>,
        ) -> BoxFuture<'static, Result<ReadReply, String>> {
            self.calls.lock().push((node, request.shards.clone()));
            let down = self.down.contains(&node);
            boxed(async move {
                if down {
                    return Err("unreachable".into());
                }
                let answers = request
                    .shards
                    .iter()
                    .map(|&s| (s, ShardAnswer::Count { counts: vec![u64::from(s)], universe: 10 }))
                    .collect();
                Ok(ReadReply { answers, staleness_ms: node * 100 })
            })
        }
    }

    /// Replicas whose every read panics: in the call itself (`at_once`),
    /// or in the future it returns.
    struct Panicking {
        at_once: bool,
    }

    impl Replicas for Panicking {
        fn candidates(&self, _shard: u32) -> Vec<u64> {
            vec![2]
        }

        fn read(
            &self,
            _node: u64,
            _request: ReadRequest,
            _deadline: Option<Instant>,
        ) -> BoxFuture<'static, Result<ReadReply, String>> {
            assert!(!self.at_once, "a read that panics at once");
            boxed(async { panic!("a read that panics later") })
        }
    }

    #[tokio::test]
    async fn a_read_whose_task_fails_leaves_its_shards_missing_not_left_out() {
        for at_once in [true, false] {
            let template = ReadRequest::compiled(ShardQuery::Count, &[], 0);
            let replicas = Arc::new(Panicking { at_once });
            let g = gather(replicas, Arc::new(Latencies::default()), vec![1, 2], template, None).await;
            assert!(g.answers.is_empty());
            let missing: Vec<u32> = g.missing.iter().map(|(s, _)| *s).collect();
            assert_eq!(missing, vec![1, 2], "at once: {at_once}: {:?}", g.missing);
        }
    }

    #[tokio::test]
    async fn gathering_groups_shards_by_holders_and_names_what_is_missing() {
        let table = Arc::new(Table {
            holders: HashMap::from([(0, vec![2, 3]), (1, vec![3, 2]), (2, vec![4]), (3, vec![])]),
            down: vec![4],
            calls: Mutex::default(),
        });
        let latencies = Arc::new(Latencies::default());
        let template = ReadRequest::compiled(ShardQuery::Count, &[], 0);
        let g = gather(table.clone(), latencies, vec![0, 1, 2, 3], template, None).await;
        let mut answered: Vec<u32> = g.answers.iter().map(|(s, _)| *s).collect();
        answered.sort_unstable();
        assert_eq!(answered, vec![0, 1]);
        assert_eq!(g.missing.len(), 2);
        assert_eq!(g.missing[0].0, 2);
        assert!(g.missing[0].1.contains("node 4: unreachable"), "{:?}", g.missing);
        assert_eq!(g.missing[1].0, 3);
        assert!(g.missing[1].1.contains("no other node"), "{:?}", g.missing);
        // Shards 0 and 1 have the same holders: one call for both.
        let calls = table.calls.lock().clone();
        assert_eq!(calls.iter().filter(|(_, s)| s == &vec![0, 1]).count(), 1, "{calls:?}");
        assert_eq!(g.staleness_ms, 200);
    }
}
