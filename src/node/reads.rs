//! Counts, breakdowns and member pages on a node of a cluster: each shard
//! read from this node's replica when it is within the staleness bound,
//! else from a replica on another node (`Forward.Read`,
//! [`query::remote`](crate::query::remote)), and the answers merged.
//!
//! When this node's catalog (schema and saved segments) is within the
//! bound, the query is compiled once, here, and the compiled conditions go
//! to the other replicas as they are. A shard whose replica here is stale
//! is asked of the other nodes that hold it, hedged; meanwhile this node
//! asks its leader to confirm its own replica (ReadIndex), and a shard no
//! other node answered is read here once that confirmation comes, within
//! the bound. A shard that neither gives fails the query, named, or is
//! listed as missing when the call accepts partial results.
//!
//! When this node's catalog is past the bound (it is cut off from the
//! catalog's leader), the expressions go as text to another node, which
//! confirms its own catalog and replicas, compiles and answers every
//! shard. One person's reads (`Check`, `GetProfile`) go to another member
//! when this node's ReadIndex has not passed within [`LOCAL_FIRST`]. A
//! node its member table says was removed answers none of these.
//!
//! On a single node every group is its own leader: everything is read
//! here, at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Node;
use crate::cluster::placement::{shard_group, CATALOG_GROUP};
use crate::ingest::BoxFuture;
use crate::query::remote::{gather, Gathered, ReadReply, ReadRequest, Replicas, ShardAnswer, ShardQuery};
use crate::query::{merge_breakdown, merge_counts, BreakdownAnswer, MembersPage, QueryError};
use crate::replication::ReplicationError;
use crate::segment::wire::decode_conds;
use crate::segment::Cond;
use crate::server::status::ServerError;

/// A count's answer on a node.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Counted {
    /// One count per expression.
    pub counts: Vec<u64>,
    /// Profiles in the universe (of the shards answered).
    pub universe: u64,
    /// The staleness met, milliseconds.
    pub staleness_ms: u64,
    /// (shard, why) of the shards left out of a partial answer.
    pub missing: Vec<(u32, String)>,
}

/// A breakdown's answer on a node.
#[derive(Clone, Debug, PartialEq)]
pub struct BrokenDown {
    /// The breakdown of the shards answered.
    pub answer: BreakdownAnswer,
    /// The staleness met, milliseconds.
    pub staleness_ms: u64,
    /// (shard, why) of the shards left out of a partial answer.
    pub missing: Vec<(u32, String)>,
}

/// The replicas on the other nodes, as this node knows them.
struct PeerReplicas {
    node: Arc<Node>,
}

impl Replicas for PeerReplicas {
    fn candidates(&self, shard: u32) -> Vec<u64> {
        let group = shard_group(shard);
        let me = self.node.config.node_id;
        let active = |id: u64| {
            self.node
                .catalog
                .state
                .read()
                .members
                .get(&id)
                .is_none_or(|m| m.state == crate::cluster::membership::MemberState::Active)
        };
        let mut nodes = self.node.replicas_of(group);
        nodes.retain(|&n| n != me && active(n));
        nodes
    }

    fn read(
        &self,
        node: u64,
        request: ReadRequest,
        deadline: Option<Instant>,
    ) -> BoxFuture<'static, Result<ReadReply, String>> {
        let forwarder = self.node.forwarder.clone();
        Box::pin(async move {
            let forwarder = forwarder.ok_or("this node forwards nothing: it is not in a cluster")?;
            let bytes = forwarder.read(node, request.encode(), deadline).await?;
            ReadReply::decode(&bytes)
        })
    }
}

/// A shard's local confirmation, asked when the read began.
/// It runs as its own task, so that it is recorded when it comes even if
/// the read was answered elsewhere and never waits for it.
type Confirmation = (u32, tokio::task::JoinHandle<Result<(), ReplicationError>>);

impl Node {
    /// Refuses a read on a node that its member table says was removed:
    /// no group counts it, and answering from the other nodes would hide
    /// from its clients that they talk to a node that is gone.
    pub(crate) fn refuse_if_removed(&self) -> Result<(), ReplicationError> {
        let me = self.config.node_id;
        let removed = self
            .catalog
            .state
            .read()
            .members
            .get(&me)
            .is_some_and(|m| m.state == crate::cluster::membership::MemberState::Removed);
        if removed {
            return Err(ReplicationError::Removed { node: me });
        }
        Ok(())
    }

    /// The staleness bound of a call that asks for `requested_ms` (0: the
    /// node's `read_staleness_ms`).
    fn bound_of(&self, requested_ms: u64) -> u64 {
        if requested_ms == 0 {
            self.config.read_staleness_ms
        } else {
            requested_ms
        }
    }

    /// The shards whose replica here was confirmed within `bound`, the
    /// others, and the largest age among the first.
    fn split_by_freshness(&self, bound: u64) -> (Vec<u32>, Vec<u32>, u64) {
        let now = self.freshness.now_ms();
        let (mut fresh, mut stale, mut met) = (Vec::new(), Vec::new(), 0);
        for shard in 0..self.config.shards {
            let age = self.freshness.age_ms(shard_group(shard), now).filter(|_| self.holds_shard(shard));
            match age {
                Some(age) if age <= bound => {
                    fresh.push(shard);
                    met = met.max(age);
                }
                _ => stale.push(shard),
            }
        }
        (fresh, stale, met)
    }

    /// Whether this node holds a replica of `shard` (always on a single
    /// node).
    pub(crate) fn holds_shard(&self, shard: u32) -> bool {
        self.forwarder.is_none() || self.driver.holds(shard_group(shard))
    }

    /// The nodes that hold `group`, as this node knows: the group's
    /// configuration here (current when this node is in it) and the
    /// placement's wanted voters (every active member when it has no entry
    /// for the group).
    pub(crate) fn replicas_of(&self, group: u64) -> Vec<u64> {
        let mut nodes = self.driver.replicas_of(group);
        nodes.extend(self.catalog.state.read().placed_voters(group));
        nodes.sort_unstable();
        nodes.dedup();
        nodes
    }

    /// The refusal of a read of `shard`, which this node holds no replica
    /// of, naming the nodes that do.
    pub(crate) fn no_replica(&self, shard: u32) -> ReplicationError {
        let group = shard_group(shard);
        ReplicationError::NoReplica {
            group,
            name: format!("shard {shard}"),
            node: self.config.node_id,
            replicas: self.replicas_of(group),
        }
    }

    /// Asks the leaders of `shards` to confirm this node's replicas
    /// (ReadIndex); each future resolves once confirmed, and records it.
    /// Shards this node holds no replica of are left out.
    fn ask_confirmations(self: &Arc<Self>, shards: &[u32]) -> Vec<Confirmation> {
        let now = self.freshness.now_ms();
        shards
            .iter()
            .filter(|&&shard| self.holds_shard(shard))
            .map(|&shard| {
                let barrier = self.driver.read_barrier(shard_group(shard));
                let node = Arc::downgrade(self);
                let confirmed = tokio::spawn(async move {
                    barrier.await?;
                    if let Some(node) = node.upgrade() {
                        node.freshness.confirmed(shard_group(shard), now);
                    }
                    Ok(())
                });
                (shard, confirmed)
            })
            .collect()
    }

    /// Waits for `confirmations` (until `bound` after `asked_at`, and a
    /// little before `deadline`): the shards confirmed, and the others
    /// with the reason.
    async fn await_confirmations(
        &self,
        confirmations: Vec<Confirmation>,
        bound: u64,
        asked_at: Instant,
        deadline: Option<Instant>,
    ) -> (Vec<u32>, Vec<(u32, String)>) {
        let until = wait_until(asked_at, bound, deadline);
        let (mut confirmed, mut failed) = (Vec::new(), Vec::new());
        for (shard, confirmation) in confirmations {
            match tokio::time::timeout_at(until, confirmation).await {
                Ok(Ok(Ok(()))) => confirmed.push(shard),
                Ok(Ok(Err(e))) => failed.push((shard, e.to_string())),
                Ok(Err(e)) => failed.push((shard, format!("the confirmation's task failed: {e}"))),
                Err(_) => failed.push((
                    shard,
                    format!("no leader confirmed it within {} ms", (Instant::now() - asked_at).as_millis()),
                )),
            }
        }
        (confirmed, failed)
    }

    /// Reads `query` over `conds` from every shard: here for those within
    /// the bound, elsewhere for the others (falling back on this node's
    /// replica once its leader confirms it). Returns the answers, the
    /// staleness met and the shards no replica answered.
    ///
    /// `split` is (the shards to read here, the others, the staleness the
    /// first met): [`split_by_freshness`](Node::split_by_freshness).
    async fn read_shards(
        self: &Arc<Self>,
        split: (Vec<u32>, Vec<u32>, u64),
        query: ShardQuery,
        conds: &Arc<Vec<Cond>>,
        bound: u64,
        deadline: Option<Instant>,
    ) -> Result<(Vec<(u32, ShardAnswer)>, u64, Vec<(u32, String)>), QueryError> {
        let (fresh, stale, mut met) = split;
        let asked_at = Instant::now();
        let confirmations = self.ask_confirmations(&stale);
        let elsewhere = (!stale.is_empty()).then(|| {
            let replicas: Arc<dyn Replicas> = Arc::new(PeerReplicas { node: self.clone() });
            let template = ReadRequest::compiled(query.clone(), conds, bound);
            let (latencies, stale) = (self.latencies.clone(), stale.clone());
            // The other replicas are asked for no more than the bound.
            let within = wait_until(asked_at, bound, deadline).into_std();
            tokio::spawn(gather(replicas, latencies, stale, template, Some(within)))
        });
        let query = Arc::new(query);
        let mut answers = self.planner.answer_local(&fresh, &query, conds, deadline)?;
        let Some(elsewhere) = elsewhere else { return Ok((answers, met, Vec::new())) };
        let gathered: Gathered = elsewhere.await.unwrap_or_else(|e| Gathered {
            missing: stale.iter().map(|&s| (s, format!("the read task failed: {e}"))).collect(),
            ..Gathered::default()
        });
        met = met.max(gathered.staleness_ms);
        answers.extend(gathered.answers);
        if gathered.missing.is_empty() {
            return Ok((answers, met, Vec::new()));
        }
        // What no other replica answered, from here once confirmed.
        let wanted: Vec<u32> = gathered.missing.iter().map(|(s, _)| *s).collect();
        let confirmations = confirmations.into_iter().filter(|(s, _)| wanted.contains(s)).collect();
        let (confirmed, failed) = self.await_confirmations(confirmations, bound, asked_at, deadline).await;
        if !confirmed.is_empty() {
            met = met.max(asked_at.elapsed().as_millis() as u64);
            answers.extend(self.planner.answer_local(&confirmed, &query, conds, deadline)?);
        }
        let missing = gathered
            .missing
            .into_iter()
            .filter(|(s, _)| !confirmed.contains(s))
            .map(|(s, elsewhere)| {
                if !self.holds_shard(s) {
                    return (s, format!("shard {s}: this node holds no replica of it; elsewhere: {elsewhere}"));
                }
                let here = failed.iter().find(|(f, _)| *f == s).map_or("not confirmed", |(_, why)| why.as_str());
                let age = self
                    .freshness
                    .age_ms(shard_group(s), self.freshness.now_ms())
                    .map_or("never".to_string(), |a| format!("{a} ms ago"));
                (
                    s,
                    format!(
                        "shard {s}: this node's replica was last confirmed current {age}, past the staleness bound of {bound} ms ({here}); elsewhere: {elsewhere}"
                    ),
                )
            })
            .collect();
        answers.sort_by_key(|(s, _)| *s);
        Ok((answers, met, missing))
    }

    /// When this node's catalog is past the bound (a node cut off from the
    /// catalog's leader, which by default leads every shard too): asks
    /// the other nodes to compile `texts` against their catalogs, which
    /// they confirm within the bound, and to answer `query` for every
    /// shard. `None` when the catalog here is within the bound or some
    /// shard went unanswered (the caller then waits for this node's own
    /// catalog); an error for a syntax error.
    async fn read_with_catalog_elsewhere(
        self: &Arc<Self>,
        query: ShardQuery,
        texts: &[String],
        now_ms: i64,
        bound: u64,
        deadline: Option<Instant>,
    ) -> Result<Option<(Vec<(u32, ShardAnswer)>, u64)>, QueryError> {
        let age = self.freshness.age_ms(CATALOG_GROUP, self.freshness.now_ms());
        if age.is_some_and(|a| a <= bound) {
            return Ok(None);
        }
        // A syntax error is the caller's whatever the catalog; a name this
        // catalog does not know yet may be known to a current one.
        self.planner.check_syntax(texts)?;
        let asked_at = Instant::now();
        let template = ReadRequest::texts(query, texts.to_vec(), now_ms, bound);
        let replicas: Arc<dyn Replicas> = Arc::new(PeerReplicas { node: self.clone() });
        let within = wait_until(asked_at, bound, deadline).into_std();
        let every: Vec<u32> = (0..self.config.shards).collect();
        let gathered = gather(replicas, self.latencies.clone(), every, template, Some(within)).await;
        if !gathered.missing.is_empty() {
            tracing::debug!(
                missing = ?gathered.missing,
                "with this node's catalog stale, no other node answered every shard"
            );
            return Ok(None);
        }
        Ok(Some((gathered.answers, gathered.staleness_ms)))
    }

    /// Reads `query` over `texts` from every shard of the cluster, within
    /// the bound `max_staleness_ms` (0: the node's): compiled here and
    /// read here or elsewhere ([`read_shards`](Node::read_shards)) when
    /// this node's catalog is within the bound (`check` then looks at it
    /// first), else compiled and answered by another node. Returns every
    /// shard's answer, the staleness met and, with `partial`, the shards
    /// left out (without it, a missing shard fails the read).
    #[allow(clippy::too_many_arguments)]
    async fn read_everywhere(
        self: &Arc<Self>,
        query: ShardQuery,
        texts: &[String],
        now_ms: i64,
        max_staleness_ms: u64,
        partial: bool,
        deadline: Option<Instant>,
        check: impl FnOnce(&crate::cluster::catalog::CatalogState) -> Result<(), QueryError>,
    ) -> Result<(Vec<(u32, ShardAnswer)>, u64, Vec<(u32, String)>), ServerError> {
        self.refuse_if_removed()?;
        let bound = self.bound_of(max_staleness_ms);
        if let Some((answers, met)) =
            self.read_with_catalog_elsewhere(query.clone(), texts, now_ms, bound, deadline).await?
        {
            return Ok((answers, met, Vec::new()));
        }
        let catalog_met = self.confirm_groups(&[CATALOG_GROUP], bound, deadline).await?;
        check(&self.catalog.state.read())?;
        let conds = Arc::new(self.planner.compile(texts, now_ms)?);
        let split = self.split_by_freshness(bound);
        let (answers, met, missing) = self.read_shards(split, query, &conds, bound, deadline).await?;
        refuse_missing(&missing, partial)?;
        Ok((answers, met.max(catalog_met), missing))
    }

    /// Counts of each expression on the cluster, and the universe, within
    /// the staleness bound (`max_staleness_ms`, 0: the node's); with
    /// `partial`, a shard that no replica answers is left out and listed
    /// rather than failing the call.
    pub async fn count(
        self: &Arc<Self>,
        texts: &[String],
        now_ms: i64,
        max_staleness_ms: u64,
        partial: bool,
        deadline: Option<Instant>,
    ) -> Result<Counted, ServerError> {
        if self.forwarder.is_none() {
            let (counts, universe) = self.planner.count(texts, now_ms, deadline)?;
            return Ok(Counted { counts, universe, ..Counted::default() });
        }
        let (answers, staleness_ms, missing) = self
            .read_everywhere(
                ShardQuery::Count,
                texts,
                now_ms,
                max_staleness_ms,
                partial,
                deadline,
                |_| Ok(()),
            )
            .await?;
        let (counts, universe) = merge_counts(texts.len(), answers.into_iter().map(|(_, a)| a))?;
        Ok(Counted { counts, universe, staleness_ms, missing })
    }

    /// Counts per value of `name` among the members of `text`, top `top`,
    /// as [`count`](Node::count) reads them.
    #[allow(clippy::too_many_arguments)]
    pub async fn breakdown(
        self: &Arc<Self>,
        name: &str,
        text: &str,
        top: usize,
        now_ms: i64,
        max_staleness_ms: u64,
        partial: bool,
        deadline: Option<Instant>,
    ) -> Result<BrokenDown, ServerError> {
        if self.forwarder.is_none() {
            let answer = self.planner.breakdown(name, text, top, now_ms, deadline)?;
            return Ok(BrokenDown { answer, staleness_ms: 0, missing: Vec::new() });
        }
        let query = ShardQuery::Breakdown { trait_name: name.to_string() };
        let known = |state: &crate::cluster::catalog::CatalogState| match state.schema.trait_type(name) {
            Some(_) => Ok(()),
            None => Err(QueryError::NotFound(format!("no trait {:?}", crate::segment::error::shorten(name)))),
        };
        let texts = [text.to_string()];
        let (answers, staleness_ms, missing) =
            self.read_everywhere(query, &texts, now_ms, max_staleness_ms, partial, deadline, known).await?;
        let answer = merge_breakdown(answers, top)?;
        Ok(BrokenDown { answer, staleness_ms, missing })
    }

    /// Before a members stream: the catalog within the bound (or, when it
    /// is not, other members to read the pages from); returns the
    /// staleness it met.
    pub async fn members_start(
        &self,
        max_staleness_ms: u64,
        deadline: Option<Instant>,
    ) -> Result<u64, ServerError> {
        if self.forwarder.is_none() {
            return Ok(0);
        }
        self.refuse_if_removed()?;
        let bound = self.bound_of(max_staleness_ms);
        if !self.catalog_within(bound) && self.has_other_members() {
            // The pages are compiled and read elsewhere
            // ([`members_page`](Node::members_page)).
            return Ok(0);
        }
        Ok(self.confirm_groups(&[CATALOG_GROUP], bound, deadline).await?)
    }

    /// True when this node's catalog was confirmed within `bound`.
    fn catalog_within(&self, bound: u64) -> bool {
        self.freshness.age_ms(CATALOG_GROUP, self.freshness.now_ms()).is_some_and(|a| a <= bound)
    }

    /// True when another node can answer for this one.
    fn has_other_members(&self) -> bool {
        !self.other_members().is_empty()
    }

    /// The other nodes that can answer reads: the active members of the
    /// member table, and the catalog group's other replicas (the founders
    /// are in the group before the table lists them); never one the
    /// table says was removed.
    fn other_members(&self) -> Vec<u64> {
        use crate::cluster::membership::MemberState;
        let me = self.config.node_id;
        let state = self.catalog.state.read();
        let mut nodes: Vec<u64> =
            state.members.values().filter(|m| m.state == MemberState::Active).map(|m| m.id).collect();
        if let Some(g) = self.driver.status().into_iter().find(|g| g.id == CATALOG_GROUP) {
            nodes.extend(g.voters.iter().chain(&g.learners));
        }
        nodes.retain(|&n| n != me && state.members.get(&n).is_none_or(|m| m.state == MemberState::Active));
        nodes.sort_unstable();
        nodes.dedup();
        nodes
    }

    /// One page of members after `cursor`, each shard read as
    /// [`count`](Node::count) reads it (never partial: a page with a hole
    /// would resume past members it never gave). Blocks: call it from a
    /// blocking thread of the runtime `runtime`.
    #[allow(clippy::too_many_arguments)]
    pub fn members_page(
        self: &Arc<Self>,
        runtime: &tokio::runtime::Handle,
        text: &str,
        traits: &[String],
        cursor: Option<&str>,
        limit: usize,
        now_ms: i64,
        max_staleness_ms: u64,
        deadline: Option<Instant>,
    ) -> Result<(MembersPage, u64), ServerError> {
        if self.forwarder.is_none() {
            return Ok((self.planner.members(text, traits, cursor, limit, now_ms, deadline)?, 0));
        }
        let bound = self.bound_of(max_staleness_ms);
        let conds = Arc::new(self.planner.compile(&[text.to_string()], now_ms)?);
        // With this node's catalog past the bound, every shard's rows come
        // from another node, which compiles the text against its own.
        let catalog_elsewhere = !self.catalog_within(bound) && self.has_other_members();
        let mut met = 0;
        let page = self.planner.members_with(cursor, limit, deadline, |shard, after, want| {
            let query = ShardQuery::Members { after, limit: want as u32, traits: traits.to_vec() };
            let now = self.freshness.now_ms();
            if catalog_elsewhere {
                let template = ReadRequest::texts(query, vec![text.to_string()], now_ms, bound);
                let replicas: Arc<dyn Replicas> = Arc::new(PeerReplicas { node: self.clone() });
                let within = wait_until(Instant::now(), bound, deadline).into_std();
                let gathered = runtime.block_on(gather(
                    replicas,
                    self.latencies.clone(),
                    vec![shard],
                    template,
                    Some(within),
                ));
                met = met.max(gathered.staleness_ms);
                let missing: Vec<(u32, String)> = gathered
                    .missing
                    .into_iter()
                    .map(|(s, why)| (s, format!("shard {s}, this node's catalog past the bound: {why}")))
                    .collect();
                refuse_missing(&missing, false)?;
                return gathered
                    .answers
                    .into_iter()
                    .next()
                    .map(|(_, a)| a)
                    .ok_or_else(|| QueryError::Unavailable(format!("shard {shard} gave no answer")));
            }
            match self.freshness.age_ms(shard_group(shard), now).filter(|_| self.holds_shard(shard)) {
                Some(age) if age <= bound => {
                    met = met.max(age);
                    let mut answers =
                        self.planner.answer_local(&[shard], &Arc::new(query), &conds, deadline)?;
                    Ok(answers.remove(0).1)
                }
                _ => {
                    let node = self.clone();
                    let conds = conds.clone();
                    let (answers, shard_met, missing) = runtime.block_on(async move {
                        node.read_shards((Vec::new(), vec![shard], 0), query, &conds, bound, deadline).await
                    })?;
                    met = met.max(shard_met);
                    refuse_missing(&missing, false)?;
                    answers
                        .into_iter()
                        .next()
                        .map(|(_, a)| a)
                        .ok_or_else(|| QueryError::Unavailable(format!("shard {shard} gave no answer")))
                }
            }
        })?;
        Ok((page, met))
    }

    /// Answers another node's read of shards held here (`Forward.Read`):
    /// this node's replicas of them confirmed within the request's bound
    /// (never asked of a third node), then evaluated.
    pub(crate) async fn read_here(
        &self,
        bytes: Vec<u8>,
        deadline: Option<Instant>,
    ) -> Result<Vec<u8>, ServerError> {
        self.refuse_if_removed()?;
        let request = ReadRequest::decode(&bytes).map_err(QueryError::Invalid)?;
        if let ShardQuery::Check { .. } | ShardQuery::Profile { .. } = request.query {
            let answer = self.person_here(&request.query).await?;
            return Ok(ReadReply { answers: vec![(0, answer)], staleness_ms: 0 }.encode());
        }
        if let Some(&bad) = request.shards.iter().find(|&&s| s >= self.config.shards) {
            return Err(QueryError::NotFound(format!(
                "no shard {bad}: this node has {} shards",
                self.config.shards
            ))
            .into());
        }
        if let Some(&absent) = request.shards.iter().find(|&&s| !self.holds_shard(s)) {
            return Err(self.no_replica(absent).into());
        }
        if let ShardQuery::Export { .. } = request.query {
            // After every write committed before the call: a fresh
            // ReadIndex, never a recent confirmation.
            for &shard in &request.shards {
                self.driver.read_barrier(shard_group(shard)).await?;
            }
            let answers = self.planner.answer_local(
                &request.shards,
                &Arc::new(request.query),
                &Arc::new(Vec::new()),
                deadline,
            )?;
            return Ok(ReadReply { answers, staleness_ms: 0 }.encode());
        }
        let bound = self.bound_of(request.max_staleness_ms);
        let mut groups: Vec<u64> = request.shards.iter().map(|&s| shard_group(s)).collect();
        if request.texts.is_some() {
            // Compiled here: against this node's catalog, within the bound.
            groups.insert(0, CATALOG_GROUP);
        }
        let staleness_ms = self.confirm_groups(&groups, bound, deadline).await?;
        let conds = match &request.texts {
            Some((texts, now_ms)) => self.planner.compile(texts, *now_ms)?,
            None => decode_conds(&request.conds).map_err(QueryError::Invalid)?,
        };
        let answers = self.planner.answer_local(
            &request.shards,
            &Arc::new(request.query),
            &Arc::new(conds),
            deadline,
        )?;
        Ok(ReadReply { answers, staleness_ms }.encode())
    }

    /// A person's read (`ShardQuery::Check` or `Profile`) here, after this
    /// node's ReadIndex: the caller's errors (a bad expression, an unknown
    /// profile) come back as [`ShardAnswer::Refused`].
    async fn person_here(&self, query: &ShardQuery) -> Result<ShardAnswer, ServerError> {
        let answer = match query {
            ShardQuery::Check { address, texts, now_ms } => {
                self.read_barrier(address).await?;
                self.planner
                    .check(address, texts, *now_ms)
                    .map(|(profile, matches)| ShardAnswer::Check { profile, matches })
            }
            ShardQuery::Profile { address, recent, now_ms } => {
                self.read_barrier(address).await?;
                self.planner
                    .profile(address, *recent as usize, *now_ms)
                    .map(|v| ShardAnswer::Profile(Box::new(v)))
            }
            _ => return Err(QueryError::Invalid("not a person's read".into()).into()),
        };
        Ok(match answer {
            Ok(a) => a,
            Err(QueryError::NotFound(message)) => ShardAnswer::Refused { not_found: true, message },
            Err(QueryError::Invalid(message)) => ShardAnswer::Refused { not_found: false, message },
            Err(e) => return Err(e.into()),
        })
    }

    /// One person's read on a node of a cluster, reading its writes: here
    /// once this node's ReadIndex passes (`None`: read here); when it has
    /// not passed within [`LOCAL_FIRST`], another member is asked too
    /// (hedged across the members) and the first to answer wins. A node
    /// cut off from the catalog's leader, whose ReadIndex cannot pass,
    /// thus answers from a member that can.
    async fn person_elsewhere_if_slow(
        self: &Arc<Self>,
        address: &str,
        query: ShardQuery,
        deadline: Option<Instant>,
    ) -> Result<Option<ShardAnswer>, ServerError> {
        self.refuse_if_removed()?;
        let here = self.read_barrier(address);
        tokio::pin!(here);
        // Set when this node holds no replica of the person's shard: then
        // only another node can answer.
        let mut not_here = None;
        tokio::select! {
            passed = &mut here => match passed {
                Err(e @ ReplicationError::NoReplica { .. }) => not_here = Some(e),
                passed => return passed.map(|()| None).map_err(Into::into),
            },
            _ = tokio::time::sleep(LOCAL_FIRST) => {}
        }
        let mut members = self.other_members();
        if members.is_empty() {
            return match not_here {
                Some(e) => Err(e.into()),
                None => here.await.map(|()| None).map_err(Into::into),
            };
        }
        self.latencies.order(&mut members);
        // The nodes that hold the person's shard first (the others fail
        // at once, and the hedge moves on).
        if let Ok((_, shard)) = self.planner.locate(address) {
            let holders = self.replicas_of(shard_group(shard));
            members.sort_by_key(|n| !holders.contains(n));
        }
        let replicas = PeerReplicas { node: self.clone() };
        let request = ReadRequest::compiled(query, &[], 0);
        let elsewhere = crate::query::remote::hedged(&members, &self.latencies, |node| {
            replicas.read(node, request.clone(), deadline)
        });
        tokio::pin!(elsewhere);
        if let Some(e) = not_here {
            return match elsewhere.await {
                Ok((_, reply)) => Ok(reply.answers.into_iter().next().map(|(_, a)| a)),
                Err(failures) => {
                    tracing::debug!(?failures, "no other member answered a person's read");
                    Err(e.into())
                }
            };
        }
        tokio::select! {
            passed = &mut here => match passed {
                Ok(()) => Ok(None),
                Err(e) => match elsewhere.await {
                    Ok((_, reply)) => Ok(reply.answers.into_iter().next().map(|(_, a)| a)),
                    Err(_) => Err(e.into()),
                },
            },
            answered = &mut elsewhere => match answered {
                Ok((_, reply)) => Ok(reply.answers.into_iter().next().map(|(_, a)| a)),
                Err(failures) => {
                    tracing::debug!(?failures, "no other member answered a person's read");
                    here.await.map(|()| None).map_err(Into::into)
                }
            },
        }
    }

    /// `Check`: one profile's membership in each expression, reading its
    /// writes (here, or through another member when this node cannot
    /// confirm its replicas).
    pub async fn check(
        self: &Arc<Self>,
        address: &str,
        texts: &[String],
        now_ms: i64,
        deadline: Option<Instant>,
    ) -> Result<(u64, Vec<bool>), ServerError> {
        if self.forwarder.is_some() {
            let query = ShardQuery::Check { address: address.to_string(), texts: texts.to_vec(), now_ms };
            match self.person_elsewhere_if_slow(address, query, deadline).await? {
                None => {}
                Some(ShardAnswer::Check { profile, matches }) => return Ok((profile, matches)),
                Some(other) => return Err(refused(other)),
            }
        }
        Ok(self.planner.check(address, texts, now_ms)?)
    }

    /// `GetProfile`: everything about one profile, read as
    /// [`check`](Node::check) reads it.
    pub async fn profile(
        self: &Arc<Self>,
        address: &str,
        recent: usize,
        now_ms: i64,
        deadline: Option<Instant>,
    ) -> Result<crate::query::ProfileView, ServerError> {
        if self.forwarder.is_some() {
            let query = ShardQuery::Profile { address: address.to_string(), recent: recent as u32, now_ms };
            match self.person_elsewhere_if_slow(address, query, deadline).await? {
                None => {}
                Some(ShardAnswer::Profile(view)) => return Ok(*view),
                Some(other) => return Err(refused(other)),
            }
        }
        Ok(self.planner.profile(address, recent, now_ms)?)
    }

    /// Makes sure this node's replicas of `groups` were confirmed current
    /// by their leaders within `bound` ms, waiting (at most the bound, and
    /// no later than `deadline`) for a fresh confirmation of those that
    /// were not; returns the staleness met. A group no leader confirms in
    /// time fails, named ([`ReplicationError::TooStale`]).
    pub(crate) async fn confirm_groups(
        &self,
        groups: &[u64],
        bound: u64,
        deadline: Option<Instant>,
    ) -> Result<u64, ReplicationError> {
        let now = self.freshness.now_ms();
        let asked_at = Instant::now();
        let mut met = 0;
        let mut stale = Vec::new();
        for &group in groups {
            match self.freshness.age_ms(group, now) {
                Some(age) if age <= bound => met = met.max(age),
                age => stale.push((group, age, self.driver.read_barrier(group))),
            }
        }
        let until = wait_until(asked_at, bound, deadline);
        for (group, age, barrier) in stale {
            let cause = match tokio::time::timeout_at(until, barrier).await {
                Ok(Ok(())) => {
                    self.freshness.confirmed(group, now);
                    met = met.max(self.freshness.now_ms().saturating_sub(now));
                    continue;
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {} ms", (Instant::now() - asked_at).as_millis()),
            };
            let name =
                if group == CATALOG_GROUP { "catalog".to_string() } else { format!("shard {}", group - 2) };
            return Err(ReplicationError::TooStale {
                group,
                name,
                bound_ms: bound,
                age: age.map_or("never".into(), |a| format!("{a} ms")),
                cause,
            });
        }
        Ok(met)
    }
}

/// How long a person's read waits for this node's own ReadIndex before it
/// asks another member too (a ReadIndex is one heartbeat round: a few
/// milliseconds when the leader is reachable).
pub const LOCAL_FIRST: Duration = Duration::from_millis(50);

/// The error a person's read elsewhere answered with (or a wrong answer).
fn refused(answer: ShardAnswer) -> ServerError {
    match answer {
        ShardAnswer::Refused { not_found: true, message } => QueryError::NotFound(message).into(),
        ShardAnswer::Refused { not_found: false, message } => QueryError::Invalid(message).into(),
        _ => QueryError::Unavailable("another member answered a person's read with another answer".into())
            .into(),
    }
}

/// When a wait that began at `asked_at` ends: with the bound, or a little
/// before the caller's deadline, so that the caller hears why.
fn wait_until(asked_at: Instant, bound: u64, deadline: Option<Instant>) -> tokio::time::Instant {
    let mut until = asked_at + Duration::from_millis(bound);
    if let Some(d) = deadline {
        until = until.min(d.checked_sub(Duration::from_millis(20)).unwrap_or(d));
    }
    tokio::time::Instant::from_std(until)
}

/// Fails a read that misses shards, naming them, unless it accepts a
/// partial answer.
fn refuse_missing(missing: &[(u32, String)], partial: bool) -> Result<(), QueryError> {
    if missing.is_empty() || partial {
        return Ok(());
    }
    let names: Vec<String> = missing.iter().map(|(s, _)| s.to_string()).collect();
    let why: Vec<&str> = missing.iter().map(|(_, w)| w.as_str()).collect();
    Err(QueryError::Unavailable(format!(
        "no replica of shard(s) {} answered within the staleness bound (ask for partial results to count the others): {}",
        names.join(", "),
        why.join(" | ")
    )))
}
