//! The query planner: parse and check a segment once against the catalog
//! (schema and saved segments), fan the checked condition out to every
//! shard in parallel, merge the answers, and honour the request's deadline.
//!
//! Today every shard is local (in-process, read under the shard's read
//! lock); the fan-out goes through [`ShardReader`] so that remote replicas
//! can join it over internal gRPC.

pub mod fanout;
pub mod remote;

use std::sync::Arc;
use std::time::Instant;

use thiserror::Error;

use self::fanout::{FanOut, FanOutError};
use self::remote::{ShardAnswer, ShardQuery};

use crate::cluster::catalog::{parse_address, CatalogMachine, SavedSegment};
use crate::cluster::placement::shard_of;
use crate::model::{IdentifierKind, Value};
use crate::replication::shard_machine::ShardMachine;
use crate::segment::error::{excerpt, shorten};
use crate::segment::{compile_many, CheckContext, Cond, SegmentError};
use crate::shard::eval::top_n;
use crate::shard::{EventRecord, ProfileId, Row, Shard, Stamp};

/// Why a query failed.
#[derive(Clone, Debug, Error, PartialEq)]
pub enum QueryError {
    /// The expression is wrong (the message names the position).
    #[error("{0}")]
    Invalid(String),
    /// An unknown profile, trait or saved segment.
    #[error("{0}")]
    NotFound(String),
    /// The deadline passed before every shard answered.
    #[error("deadline exceeded: {0}")]
    DeadlineExceeded(String),
    /// A shard that no replica could answer (this node's, within the
    /// staleness bound, or another node's), named with each one's reason.
    #[error("{0}")]
    Unavailable(String),
}

/// A shard as the planner reads it.
pub trait ShardReader: Send + Sync + 'static {
    /// Runs `f` on the shard's current state.
    fn read<R>(&self, f: impl FnOnce(&Shard) -> R) -> R;
}

impl ShardReader for ShardMachine {
    fn read<R>(&self, f: impl FnOnce(&Shard) -> R) -> R {
        f(&self.read_state().shard)
    }
}

/// A member in a page.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MemberRow {
    /// Profile id.
    pub profile: ProfileId,
    /// Its user id.
    pub user_id: Option<String>,
    /// Its anonymous ids.
    pub anonymous_ids: Vec<String>,
    /// Requested traits that are set.
    pub traits: Vec<(String, Value)>,
}

/// A page of members.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MembersPage {
    /// Members, by shard then row.
    pub members: Vec<MemberRow>,
    /// Where to resume; `None` after the last member.
    pub cursor: Option<String>,
}

/// Everything about one profile.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ProfileView {
    /// Profile id.
    pub profile: ProfileId,
    /// Its shard.
    pub shard: u32,
    /// Identifiers.
    pub identifiers: Vec<(IdentifierKind, String)>,
    /// First and last message times.
    pub first_seen: Option<i64>,
    /// Last message time.
    pub last_seen: Option<i64>,
    /// Traits with their stamps.
    pub traits: Vec<(String, Option<Value>, Stamp)>,
    /// The latest events, newest first.
    pub recent_events: Vec<EventRecord>,
    /// Events in all.
    pub event_count: u64,
    /// Saved segments it is in.
    pub segments: Vec<String>,
}

/// A breakdown's answer.
#[derive(Clone, Debug, PartialEq)]
pub struct BreakdownAnswer {
    /// (value, count), largest first.
    pub rows: Vec<(String, u64)>,
    /// Members without a value.
    pub missing: u64,
    /// Members in all.
    pub total: u64,
}

/// The query planner of a node.
pub struct Planner {
    catalog: Arc<CatalogMachine>,
    shards: Arc<Vec<Arc<ShardMachine>>>,
    pool: FanOut,
}

/// A query error about `text`: a bounded excerpt of it around the position
/// the error names (the whole text when short), then the error.
fn invalid(text: &str, e: SegmentError) -> QueryError {
    QueryError::Invalid(format!("in {}: {e}", excerpt(text, e.position())))
}

/// `segment:NAME` is shorthand for `IN SEGMENT "NAME"`.
fn expand(text: &str) -> String {
    match text.strip_prefix("segment:") {
        Some(name) => format!("IN SEGMENT \"{}\"", name.replace('"', "\\\"")),
        None => text.to_string(),
    }
}

impl Planner {
    /// A planner over `shards`; a fan-out runs on `threads` threads, the
    /// calling one included.
    pub fn new(catalog: Arc<CatalogMachine>, shards: Arc<Vec<Arc<ShardMachine>>>, threads: usize) -> Planner {
        Planner { catalog, shards, pool: FanOut::new(threads) }
    }

    /// Checks the expressions of one query against the catalog at `now_ms`,
    /// together: a saved segment that several of them use (or that one uses
    /// through several others) is compiled once and shared.
    pub fn compile(&self, texts: &[String], now_ms: i64) -> Result<Vec<Cond>, QueryError> {
        let state = self.catalog.state.read();
        let ctx = CheckContext { schema: &state.schema, catalog: &*state, now_ms };
        let expanded: Vec<String> = texts.iter().map(|t| expand(t)).collect();
        compile_many(&expanded, &ctx).map_err(|(i, e)| {
            let t = texts.get(i).map_or("", String::as_str);
            match e {
                SegmentError::UnknownSegment { position, .. } => {
                    QueryError::NotFound(format!("in {}: {e}", excerpt(t, Some(position))))
                }
                _ => invalid(t, e),
            }
        })
    }

    /// Parses the expressions without checking them against the catalog:
    /// a syntax error, which no catalog can make right.
    pub fn check_syntax(&self, texts: &[String]) -> Result<(), QueryError> {
        for t in texts {
            crate::segment::parse(&expand(t)).map_err(|e| invalid(t, e))?;
        }
        Ok(())
    }

    /// The number of shards.
    pub fn shard_count(&self) -> u32 {
        self.shards.len() as u32
    }

    /// Answers `query` over `conds` on this node's replicas of `shards`,
    /// in parallel, failing past the deadline (naming the shards that had
    /// not answered).
    pub fn answer_local(
        &self,
        shards: &[u32],
        query: &Arc<ShardQuery>,
        conds: &Arc<Vec<Cond>>,
        deadline: Option<Instant>,
    ) -> Result<Vec<(u32, ShardAnswer)>, QueryError> {
        let list: Arc<Vec<u32>> = Arc::new(shards.to_vec());
        let (all, asked, query, conds) = (self.shards.clone(), list.clone(), query.clone(), conds.clone());
        let answers = self
            .pool
            .run(list.len(), deadline, move |i| {
                all[asked[i] as usize].read(|s| remote::answer(s, &query, &conds))
            })
            .map_err(|e| match e {
                FanOutError::Deadline(missing) => {
                    let missing: Vec<String> = missing.iter().map(|&i| list[i].to_string()).collect();
                    QueryError::DeadlineExceeded(format!(
                        "shard(s) {} did not answer in time",
                        missing.join(", ")
                    ))
                }
            })?;
        Ok(list.iter().copied().zip(answers).collect())
    }

    /// Every shard, in order.
    fn every_shard(&self) -> Vec<u32> {
        (0..self.shard_count()).collect()
    }

    /// Counts of each expression, and the universe.
    pub fn count(
        &self,
        texts: &[String],
        now_ms: i64,
        deadline: Option<Instant>,
    ) -> Result<(Vec<u64>, u64), QueryError> {
        let conds = Arc::new(self.compile(texts, now_ms)?);
        let answers =
            self.answer_local(&self.every_shard(), &Arc::new(ShardQuery::Count), &conds, deadline)?;
        merge_counts(texts.len(), answers.into_iter().map(|(_, a)| a))
    }

    /// The profile an address names, and its shard.
    pub fn locate(&self, address: &str) -> Result<(ProfileId, u32), QueryError> {
        let state = self.catalog.state.read();
        let profile = state.lookup(address).ok_or_else(|| {
            let (kind, value) = parse_address(address);
            QueryError::NotFound(format!("no profile has {}:{}", kind.name(), shorten(value)))
        })?;
        Ok((profile, shard_of(profile, state.shards)))
    }

    /// Membership of one profile in each expression.
    pub fn check(
        &self,
        address: &str,
        texts: &[String],
        now_ms: i64,
    ) -> Result<(ProfileId, Vec<bool>), QueryError> {
        let conds = self.compile(texts, now_ms)?;
        let (profile, shard) = self.locate(address)?;
        let matches = self.shards[shard as usize].read(|s| match s.row_of(profile) {
            Some(row) => Ok(s.row_matches_all(row, &conds)),
            None => Err(QueryError::NotFound(format!("profile {profile} is not on shard {shard}"))),
        })?;
        Ok((profile, matches))
    }

    /// One page of members after `cursor` (`shard:row`), from this
    /// node's replicas.
    pub fn members(
        &self,
        text: &str,
        traits: &[String],
        cursor: Option<&str>,
        limit: usize,
        now_ms: i64,
        deadline: Option<Instant>,
    ) -> Result<MembersPage, QueryError> {
        let cond = Arc::new(self.compile(&[text.to_string()], now_ms)?);
        self.members_with(cursor, limit, deadline, |shard, after, want| {
            let query = ShardQuery::Members { after, limit: want as u32, traits: traits.to_vec() };
            Ok(self.shards[shard as usize].read(|s| remote::answer(s, &query, &cond)))
        })
    }

    /// One page of members after `cursor` (`shard:row`), each shard's rows
    /// from `fetch(shard, after, want)`, which answers
    /// [`ShardQuery::Members`] for it (from this node's replica or
    /// another's).
    pub fn members_with(
        &self,
        cursor: Option<&str>,
        limit: usize,
        deadline: Option<Instant>,
        mut fetch: impl FnMut(u32, Option<Row>, usize) -> Result<ShardAnswer, QueryError>,
    ) -> Result<MembersPage, QueryError> {
        // A cursor is `shard:row` (resume after that row) or `shard:`
        // (start of that shard).
        let (mut shard, mut after) = match cursor.filter(|c| !c.is_empty()) {
            None => (0usize, None),
            Some(c) => {
                let bad =
                    || QueryError::Invalid(format!("cursor {:?} is not one this server gave", shorten(c)));
                let (s, r) = c.split_once(':').ok_or_else(bad)?;
                let after = if r.is_empty() { None } else { Some(r.parse::<Row>().map_err(|_| bad())?) };
                (s.parse().map_err(|_| bad())?, after)
            }
        };
        let mut page = MembersPage::default();
        // Each shard is asked for one row more than the page still needs
        // (`more`), so a cursor is returned only when members remain.
        while shard < self.shards.len() {
            if deadline.is_some_and(|d| Instant::now() > d) {
                return Err(QueryError::DeadlineExceeded(format!("members: stopped at shard {shard}")));
            }
            let want = limit - page.members.len();
            let ShardAnswer::Members { rows, more } = fetch(shard as u32, after, want)? else {
                return Err(unexpected(shard as u32, "members"));
            };
            if more {
                page.cursor = Some(match rows.last() {
                    Some((r, _)) => format!("{shard}:{r}"),
                    // The page was already full: resume at this shard.
                    None => format!("{shard}:"),
                });
                page.members.extend(rows.into_iter().map(|(_, m)| m));
                return Ok(page);
            }
            page.members.extend(rows.into_iter().map(|(_, m)| m));
            shard += 1;
            after = None;
        }
        Ok(page)
    }

    /// Counts per value of `name` among the members, top `top`.
    pub fn breakdown(
        &self,
        name: &str,
        text: &str,
        top: usize,
        now_ms: i64,
        deadline: Option<Instant>,
    ) -> Result<BreakdownAnswer, QueryError> {
        {
            let state = self.catalog.state.read();
            if state.schema.trait_type(name).is_none() {
                return Err(QueryError::NotFound(format!("no trait {:?}", shorten(name))));
            }
        }
        let conds = Arc::new(self.compile(&[text.to_string()], now_ms)?);
        let query = Arc::new(ShardQuery::Breakdown { trait_name: name.to_string() });
        let answers = self.answer_local(&self.every_shard(), &query, &conds, deadline)?;
        merge_breakdown(answers, top)
    }

    /// Everything about one profile, with its saved segments (compiled
    /// together, so that segments built on each other share their nodes,
    /// and checked on the profile's row with one memo).
    pub fn profile(&self, address: &str, recent: usize, now_ms: i64) -> Result<ProfileView, QueryError> {
        let (profile, shard) = self.locate(address)?;
        let saved: Vec<SavedSegment> = self.catalog.state.read().segments.values().cloned().collect();
        let texts: Vec<String> = saved.iter().map(|s| s.expression.clone()).collect();
        let conds = self.compile(&texts, now_ms)?;
        self.shards[shard as usize].read(|s| {
            let image = s
                .read_profile(profile)
                .ok_or_else(|| QueryError::NotFound(format!("profile {profile} is not on shard {shard}")))?;
            let row = s.row_of(profile).unwrap_or_default();
            let segments = saved
                .iter()
                .zip(s.row_matches_all(row, &conds))
                .filter(|(_, hit)| *hit)
                .map(|(seg, _)| seg.name.clone())
                .collect();
            let event_count = image.events.len() as u64;
            let recent_events = image.events.iter().rev().take(recent).cloned().collect();
            Ok(ProfileView {
                profile,
                shard,
                identifiers: image.identifiers,
                first_seen: image.first_seen,
                last_seen: image.last_seen,
                traits: image.traits,
                recent_events,
                event_count,
                segments,
            })
        })
    }
}

/// The error of a shard that answered another query than it was asked.
fn unexpected(shard: u32, asked: &str) -> QueryError {
    QueryError::Unavailable(format!("shard {shard} answered another query than the {asked} it was asked"))
}

/// The counts of `n` expressions, and the universe, from every shard's
/// [`ShardAnswer::Count`].
pub fn merge_counts(
    n: usize,
    answers: impl IntoIterator<Item = ShardAnswer>,
) -> Result<(Vec<u64>, u64), QueryError> {
    let mut totals = vec![0u64; n];
    let mut universe = 0;
    for answer in answers {
        let ShardAnswer::Count { counts, universe: len } = answer else {
            return Err(QueryError::Unavailable(
                "a shard answered another query than the count it was asked".into(),
            ));
        };
        universe += len;
        for (t, c) in totals.iter_mut().zip(counts) {
            *t += c;
        }
    }
    Ok((totals, universe))
}

/// The top `top` values and the totals of a breakdown from every shard's
/// [`ShardAnswer::Breakdown`].
pub fn merge_breakdown(
    answers: impl IntoIterator<Item = (u32, ShardAnswer)>,
    top: usize,
) -> Result<BreakdownAnswer, QueryError> {
    let mut merged: std::collections::BTreeMap<String, u64> = Default::default();
    let mut total = 0;
    for (shard, answer) in answers {
        let ShardAnswer::Breakdown(answer) = answer else { return Err(unexpected(shard, "breakdown")) };
        let (rows, n) = answer.map_err(QueryError::Invalid)?;
        total += n;
        for (v, c) in rows {
            *merged.entry(v).or_default() += c;
        }
    }
    let with_value: u64 = merged.values().sum();
    let rows = top_n(merged.into_iter().collect(), top);
    // List traits count a member once per element, so "missing" is
    // only meaningful for single-valued traits.
    Ok(BreakdownAnswer { rows, missing: total.saturating_sub(with_value), total })
}

fn member(s: &Shard, row: Row, traits: &[String]) -> MemberRow {
    MemberRow {
        profile: s.profile_of(row),
        user_id: s.ids.user_ids.first(row).map(str::to_string),
        anonymous_ids: s.ids.anonymous_ids.values(row).into_iter().map(str::to_string).collect(),
        traits: traits
            .iter()
            .filter_map(|t| s.traits.get(t.as_str()).and_then(|c| c.get(row)).map(|v| (t.clone(), v)))
            .collect(),
    }
}
