//! The catalog: the node's metadata Raft group and the sequencer of ingest.
//!
//! Its state is the identity directory, the schema (declared and inferred
//! types), saved segments, the `messageId` deduplication window, and the
//! latest rejections and merges. Every ingest batch is first a catalog log
//! entry (the messages' JSON text, their receive time and door). Applying
//! it, identically on every replica, reads and types each message, resolves
//! its identity, and turns the batch into [`Step`]s of shard commands. The
//! ingest pipeline then proposes those steps to the shard groups in order.
//!
//! Because the steps are a pure function of the catalog log, a crash between
//! the catalog entry and its shard steps is repaired on restart: replaying
//! the catalog log regenerates the steps and shards skip the ones they
//! already applied (see `replication::shard_machine`). The catalog snapshots
//! itself only when every step it produced is committed, so the replay
//! always starts early enough.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use super::membership::{check_change, Member, MemberState, Members};
use super::placement::{all_groups, shard_of, Placement, ReplicaMove};
use crate::identity::{Directory, MergeStep};
use crate::ingest::{IngestReport, RejectionRecord, Source};
use crate::model::message::Message;
use crate::model::{parse_rfc3339_ms, IdentifierKind, Schema, SchemaLimits, TraitType, RESERVED_NAMES};
use crate::replication::codec;
use crate::replication::driver::{ApplyResult, Halt, StateMachine};
use crate::replication::error::MachineError;
use crate::replication::shard_machine::Tag;
use crate::replication::ReplicationError;
use crate::segment::{check_save, parse, references, Catalog, CheckContext};
use crate::shard::{Command, EventWrite, ProfileId, ProfileWrite};

/// Rejections and merges kept for operators (the newest).
pub const KEEP_RECORDS: usize = 10_000;

/// One door's batch inside a catalog entry.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IngestJob {
    /// The messages as JSON text.
    pub messages: Vec<String>,
    /// When the node received them, ms since the epoch.
    pub received_ms: i64,
    /// The door.
    pub source: Source,
}

/// A message as parsing leaves it: the message and its `messageId` as
/// written, or why it was refused and its `messageId` if it had one.
pub type ParsedMessage = Result<(Message, Option<String>), (String, Option<String>)>;

/// Parses one message of an ingest job. Pure: the same text and receipt
/// time give the same result on every replica, so the proposer may parse
/// ahead of the log (see [`ParsedIngest`]).
pub fn parse_message(text: &str, received_ms: i64) -> ParsedMessage {
    match Message::parse(text, received_ms) {
        (Ok(m), message_id) => Ok((m, message_id)),
        (Err(e), message_id) => Err((e, message_id)),
    }
}

/// One job of an ingest entry, parsed.
pub struct ParsedJob {
    /// When the node received it.
    pub received_ms: i64,
    /// The door.
    pub source: Source,
    /// Its messages, parsed, in order.
    pub messages: Vec<ParsedMessage>,
}

impl ParsedJob {
    /// Parses every message of `job`.
    pub fn parse(job: &IngestJob) -> ParsedJob {
        ParsedJob {
            received_ms: job.received_ms,
            source: job.source,
            messages: job.messages.iter().map(|t| parse_message(t, job.received_ms)).collect(),
        }
    }
}

/// What the proposer of an ingest entry parsed from it, handed to the
/// catalog with the entry when this node applies its own proposal
/// ([`StateMachine::apply_proposed`]). Parsing is most of the catalog's
/// work and needs no state, so the doors do it in parallel; the catalog
/// then only resolves identities, in log order. An entry from the log
/// alone (a restart, another node's proposal) is parsed when applied, with
/// the same result.
pub struct ParsedIngest(pub Vec<ParsedJob>);

/// A catalog log entry.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum CatalogCommand {
    /// Batches of messages, in order.
    Ingest(Vec<IngestJob>),
    /// Declares trait types: `{"traits": {"name": "type"}}`.
    ApplySchema(String),
    /// Saves a segment.
    CreateSegment {
        /// Its name.
        name: String,
        /// Its expression.
        expression: String,
        /// A description.
        description: String,
        /// When it was created (also the `now` of its check).
        now_ms: i64,
    },
    /// Deletes a saved segment.
    DeleteSegment(String),
    /// Sets the caps on the schema's growth, from the next entry on. A
    /// node proposes it when it opens with caps in its configuration that
    /// differ from those in force, so that the caps are part of the log
    /// and every replay decides as the first application did.
    SetLimits(SchemaLimits),
    /// Adds a node to the member table, changes its addresses, or marks it
    /// removed ([`crate::cluster::membership`]: each group's leader then
    /// brings the group's configuration to the table).
    SetMember(Member),
    /// Sets the replication factor and places every group on it
    /// ([`Placement::fill`]); proposed by a cluster's first leader from
    /// its configuration (`replication_factor`).
    SetReplicationFactor(u32),
    /// Moves one group's replica from one node to another
    /// (`cohort cluster move-replica`).
    MoveReplica(ReplicaMove),
    /// Evens the replicas over the active members (`cohort cluster
    /// rebalance`, [`Placement::rebalance`]).
    Rebalance,
    /// The catalog's leader has committed the shard steps of every entry
    /// up to this index: the other replicas drop them from their outbox
    /// (they cannot see it from their own shards when they hold no
    /// replica of some of them).
    Stepped(u64),
    /// Labels a node with its zone (empty: no zone), which placement
    /// spreads each group over; a node proposes its own from its
    /// configuration (`zone`).
    SetZone {
        /// The node.
        node: u64,
        /// Its zone.
        zone: String,
    },
}

impl CatalogCommand {
    /// Encodes for the log.
    pub fn encode(&self) -> Vec<u8> {
        bincode::serde::encode_to_vec(self, bincode::config::standard()).unwrap_or_default()
    }
}

/// Shard commands produced by one catalog entry, in the order they must be
/// applied.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Step {
    /// Commands per shard, independent across shards.
    Writes {
        /// The step's tag.
        tag: Tag,
        /// Commands by shard.
        by_shard: BTreeMap<u32, Vec<Command>>,
    },
    /// A merge across shards: copy `from` (read from its shard as it is
    /// now) into `into` on the survivor's shard, then remove `from`.
    Move {
        /// Tag of the import on `into_shard`.
        import_tag: Tag,
        /// Tag of the removal on `from_shard`.
        remove_tag: Tag,
        /// Merged away.
        from: ProfileId,
        /// Its shard.
        from_shard: u32,
        /// Survivor.
        into: ProfileId,
        /// Its shard.
        into_shard: u32,
    },
}

/// The steps of one applied ingest entry.
#[derive(Clone, Debug)]
pub struct Outbox {
    /// The catalog index.
    pub index: u64,
    /// Steps in order (shared with the stepper while it drives them).
    pub steps: Arc<Vec<Step>>,
}

/// A saved segment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SavedSegment {
    /// Name.
    pub name: String,
    /// Expression text.
    pub expression: String,
    /// Description.
    pub description: String,
    /// Creation time, ms.
    pub created_ms: i64,
}

/// A merge, as operators see it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MergeRecord {
    /// Survivor.
    pub into: ProfileId,
    /// Merged away.
    pub from: ProfileId,
    /// The causing message's `messageId`.
    pub message_id: Option<String>,
    /// The identifier that linked them, `kind:value`.
    pub linked_by: String,
    /// The causing message's receive time, ms.
    pub at_ms: i64,
    /// Shard of `from`.
    pub from_shard: u32,
    /// Shard of `into`.
    pub into_shard: u32,
}

/// Results of catalog commands, returned to proposers.
#[derive(Debug)]
pub enum CatalogResult {
    /// An ingest entry: one report per job.
    Ingested {
        /// The entry's catalog index (its steps' outbox entry).
        index: u64,
        /// A report per job, in order.
        reports: Vec<IngestReport>,
    },
    /// A schema, segment or other administrative change.
    Done(Result<(), AdminError>),
}

/// A refused administrative change.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum AdminError {
    /// Bad input (the message says what and where).
    #[error("{0}")]
    Invalid(String),
    /// Not found.
    #[error("{0}")]
    NotFound(String),
    /// In use.
    #[error("{0}")]
    InUse(String),
    /// Already exists.
    #[error("{0}")]
    Exists(String),
    /// The data directory's disk is nearly full (nothing was written).
    #[error("disk full: {0}")]
    DiskFull(String),
}

/// Errors of the catalog: its snapshot file, its log entries, and the
/// administrative changes proposed to it (refused by the catalog, or never
/// committed).
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The snapshot file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The snapshot file is damaged.
    #[error("{path}: corrupt at byte {offset}: {problem}")]
    Corrupt {
        /// The file.
        path: String,
        /// Where the damage was found.
        offset: usize,
        /// What is wrong.
        problem: String,
    },
    /// The snapshot was written for another number of shards.
    #[error(
        "{path}: the data directory was created with {found} shards, the configuration says {configured}"
    )]
    ShardCount {
        /// The file.
        path: String,
        /// The shards it holds.
        found: u32,
        /// The shards configured.
        configured: u32,
    },
    /// The state could not be encoded for a snapshot.
    #[error("encoding the catalog at index {index}: {source}")]
    Encode {
        /// The applied index being written.
        index: u64,
        /// The encoder's error.
        #[source]
        source: bincode::error::EncodeError,
    },
    /// A log entry this build cannot decode.
    #[error("the catalog cannot decode entry {index}: {source}")]
    Undecodable {
        /// The entry's log index.
        index: u64,
        /// The decoder's error.
        #[source]
        source: bincode::error::DecodeError,
    },
    /// A request's time is not RFC 3339.
    #[error("{field}: {text:?} is not an RFC 3339 time")]
    BadTime {
        /// The request field (`now`).
        field: &'static str,
        /// What it held.
        text: String,
    },
    /// The catalog refused the change when it applied it.
    #[error(transparent)]
    Refused(#[from] AdminError),
    /// The change was not committed.
    #[error(transparent)]
    Replication(#[from] ReplicationError),
    /// The catalog answered entry `index` with a result of another kind
    /// than the command's (a bug).
    #[error("the catalog answered entry {index} with an unexpected result")]
    UnexpectedResult {
        /// The entry's log index (0 when unknown).
        index: u64,
    },
    /// The change was forwarded to the catalog's leader, which (or whose
    /// connection) answered with a failure: `code` is its gRPC code.
    #[error("forwarded to node {leader}, which leads the catalog: {message}")]
    Forwarded {
        /// The leader it went to.
        leader: u64,
        /// The gRPC code of the answer.
        code: i32,
        /// Its message.
        message: String,
    },
}

/// Hashes a key that is already a 128-bit hash by taking its low 64
/// bits: SipHash over it again was a visible share of ingest.
#[derive(Clone, Copy, Debug, Default)]
struct HashedKey(u64);

impl std::hash::Hasher for HashedKey {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u128 keys are hashed; this fallback keeps other use correct.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u128(&mut self, key: u128) {
        self.0 = key as u64;
    }
}

/// Deduplication of `messageId`s: 128-bit hashes by hour of receipt.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Dedup {
    window_hours: i64,
    /// Hour → hashes received in it.
    hours: BTreeMap<i64, Vec<u128>>,
    #[serde(skip)]
    index: HashMap<u128, i64, std::hash::BuildHasherDefault<HashedKey>>,
}

impl Dedup {
    fn hour(ms: i64) -> i64 {
        ms.div_euclid(3_600_000)
    }

    /// True if seen; else records it.
    fn seen(&mut self, id: &str, received_ms: i64) -> bool {
        let key = xxhash_rust::xxh3::xxh3_128(id.as_bytes());
        let hour = Self::hour(received_ms);
        // One probe of the (large, cold) index for the test and the insert.
        match self.index.entry(key) {
            std::collections::hash_map::Entry::Occupied(_) => return true,
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(hour);
            }
        }
        self.hours.entry(hour).or_default().push(key);
        // Drop hours that left the window (by the time in the log, so every
        // replica drops the same ones).
        let oldest = hour - self.window_hours;
        while let Some((&h, _)) = self.hours.first_key_value() {
            if h >= oldest {
                break;
            }
            if let Some((_, keys)) = self.hours.pop_first() {
                for k in keys {
                    if self.index.get(&k) == Some(&h) {
                        self.index.remove(&k);
                    }
                }
            }
        }
        false
    }

    fn rebuild_index(&mut self) {
        self.index = self.hours.iter().flat_map(|(&h, keys)| keys.iter().map(move |&k| (k, h))).collect();
    }

    fn len(&self) -> usize {
        self.index.len()
    }
}

/// Counters since the data began.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Totals {
    /// Messages applied.
    pub applied: u64,
    /// Duplicates acknowledged.
    pub duplicates: u64,
    /// Rejections (messages and fields).
    pub rejections: u64,
    /// Merges.
    pub merges: u64,
}

/// The catalog's replicated state.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct CatalogState {
    /// Shards of the node.
    pub shards: u32,
    /// Types of traits and properties.
    pub schema: Schema,
    /// Trait names declared by an operator (the rest were inferred).
    pub declared: BTreeSet<String>,
    /// Saved segments by name.
    pub segments: BTreeMap<String, SavedSegment>,
    /// Latest rejections.
    pub rejections: VecDeque<RejectionRecord>,
    /// Latest merges.
    pub merges: VecDeque<MergeRecord>,
    /// Counters.
    pub totals: Totals,
    dedup: Dedup,
    /// Raft index of the last applied entry.
    pub applied_index: u64,
    #[serde(skip)]
    /// Identifier → profile.
    pub directory: Directory,
    /// The caps on the schema in force (set through the log by
    /// [`CatalogCommand::SetLimits`]; the defaults until the first). Kept
    /// in the snapshot beside the state rather than in it, so that
    /// snapshots written before the caps existed still decode.
    #[serde(skip)]
    pub limits: SchemaLimits,
    /// The cluster's nodes (empty on a single node and until a cluster's
    /// first leader records its founders). Kept in the snapshot beside
    /// the state, like `limits`.
    #[serde(skip)]
    pub members: Members,
    /// Where every group's replicas should be (empty until a cluster's
    /// first leader records its founders). Kept beside the state, like
    /// `members`.
    #[serde(skip)]
    pub placement: Placement,
}

impl Catalog for CatalogState {
    fn segment_text(&self, name: &str) -> Option<String> {
        self.segments.get(name).map(|s| s.expression.clone())
    }
}

impl CatalogState {
    /// The ids of the active members, in order.
    pub fn active_members(&self) -> Vec<u64> {
        self.members.values().filter(|m| m.state == MemberState::Active).map(|m| m.id).collect()
    }

    /// The nodes that should vote in `group`: the placement's, or every
    /// active member when the placement has no entry for it.
    pub fn placed_voters(&self, group: u64) -> Vec<u64> {
        match self.placement.wanted(group) {
            Some(wanted) => wanted.to_vec(),
            None => self.active_members(),
        }
    }

    /// Brings the placement to the member table and the replication
    /// factor (nothing on a node with no member table).
    fn place(&mut self) {
        let active = self.active_members();
        if !active.is_empty() {
            self.placement.fill(&active, &all_groups(self.shards));
        }
    }

    /// The profile an address (`user_id:V`, `anonymous_id:V`, or a bare
    /// user id) names.
    pub fn lookup(&self, address: &str) -> Option<ProfileId> {
        let (kind, value) = parse_address(address);
        self.directory.lookup(kind, value)
    }

    /// Heap bytes of the directory and the deduplication window.
    pub fn heap_bytes(&self) -> usize {
        self.directory.heap_bytes() + self.dedup.len() * 40
    }

    fn reject(&mut self, r: RejectionRecord, report: &mut IngestReport) {
        self.totals.rejections += 1;
        if self.rejections.len() == KEEP_RECORDS {
            self.rejections.pop_front();
        }
        self.rejections.push_back(r.clone());
        report.rejections.push(r);
    }

    fn apply_ingest(&mut self, index: u64, jobs: Vec<ParsedJob>) -> (Vec<IngestReport>, Vec<Step>) {
        let mut plan = Planner::new(index);
        let mut reports = Vec::with_capacity(jobs.len());
        let mut position_in_entry = 0u64;
        for job in jobs {
            let mut report = IngestReport::default();
            for (pos, parsed) in job.messages.into_iter().enumerate() {
                let seq = (index << 20) | position_in_entry.min((1 << 20) - 1);
                position_in_entry += 1;
                let record = |field: &str, reason: String, message_id: Option<String>| RejectionRecord {
                    position: pos as u64,
                    field: field.to_string(),
                    reason,
                    message_id,
                    received_ms: job.received_ms,
                    source: job.source,
                };
                let (message, message_id) = match parsed {
                    Ok(m) => m,
                    Err((reason, message_id)) => {
                        self.reject(record("", reason, message_id), &mut report);
                        continue;
                    }
                };
                // An event the schema has no room for refuses the message
                // before anything of it is applied or remembered, so that
                // it can be sent again once the cap is raised.
                if let Err(e) = message.admit_event(&self.schema, &self.limits) {
                    self.reject(record("event", e.to_string(), message_id), &mut report);
                    continue;
                }
                if let Some(id) = &message.message_id {
                    if self.dedup.seen(id, job.received_ms) {
                        report.duplicates += 1;
                        self.totals.duplicates += 1;
                        continue;
                    }
                }
                let mut ids = Vec::with_capacity(2);
                if let Some(u) = &message.user_id {
                    ids.push((IdentifierKind::UserId, u.clone()));
                }
                if let Some(a) = &message.anonymous_id {
                    ids.push((IdentifierKind::AnonymousId, a.clone()));
                }
                let resolution = match self.directory.resolve(&ids) {
                    Ok(r) => r,
                    Err(e) => {
                        self.reject(record("", e.to_string(), message_id), &mut report);
                        continue;
                    }
                };
                for m in &resolution.merged {
                    self.record_merge(m, &message_id, job.received_ms);
                    plan.merge(m, self.shards);
                }
                let typed = message.typed(&mut self.schema, &self.limits);
                for fe in &typed.field_errors {
                    self.reject(record(&fe.field, fe.reason.clone(), message_id.clone()), &mut report);
                }
                let write = ProfileWrite {
                    profile: resolution.profile,
                    time_ms: message.time_ms,
                    seq,
                    identifiers: resolution.gained.clone(),
                    traits: typed.traits,
                    add_to_lists: typed.add_to_lists,
                    event: typed.event.map(|(name, properties)| EventWrite { name, properties }),
                };
                plan.write(shard_of(resolution.profile, self.shards), Command::Write(write));
                report.applied += 1;
                self.totals.applied += 1;
            }
            reports.push(report);
        }
        (reports, plan.finish())
    }

    fn record_merge(&mut self, m: &MergeStep, message_id: &Option<String>, at_ms: i64) {
        self.totals.merges += 1;
        if self.merges.len() == KEEP_RECORDS {
            self.merges.pop_front();
        }
        self.merges.push_back(MergeRecord {
            into: m.into,
            from: m.from,
            message_id: message_id.clone(),
            linked_by: format!("{}:{}", m.linked_by.0.name(), m.linked_by.1),
            at_ms,
            from_shard: shard_of(m.from, self.shards),
            into_shard: shard_of(m.into, self.shards),
        });
    }

    fn apply_schema(&mut self, json: &str) -> Result<(), AdminError> {
        let parsed: Json = serde_json::from_str(json)
            .map_err(|e| AdminError::Invalid(format!("schema is not JSON: {e}")))?;
        let Some(traits) = parsed.get("traits").and_then(Json::as_object) else {
            return Err(AdminError::Invalid(
                "schema must be an object with a \"traits\" object: {\"traits\": {\"name\": \"type\"}}"
                    .into(),
            ));
        };
        if let Some(other) = parsed.as_object().and_then(|o| o.keys().find(|k| *k != "traits")) {
            return Err(AdminError::Invalid(format!("schema: unknown key {other:?} (only \"traits\")")));
        }
        // Check everything first so that a refused schema changes nothing.
        let mut next = self.schema.clone();
        let mut declared = Vec::new();
        for (name, ty) in traits {
            let Some(ty_name) = ty.as_str() else {
                return Err(AdminError::Invalid(format!(
                    "schema: trait {name:?}: the type must be a string"
                )));
            };
            let Some(ty) = TraitType::parse(ty_name) else {
                return Err(AdminError::Invalid(format!(
                    "schema: trait {name:?}: unknown type {ty_name:?} (keyword, number, bool, list, timestamp, text)"
                )));
            };
            if RESERVED_NAMES.contains(&name.as_str()) {
                return Err(AdminError::Invalid(format!(
                    "schema: {name:?} is maintained by the database and cannot be declared"
                )));
            }
            if name.is_empty() {
                return Err(AdminError::Invalid(
                    "schema: a trait needs a name (no query can name an empty one)".to_string(),
                ));
            }
            next.admit_trait(name, &self.limits).map_err(|e| AdminError::Invalid(format!("schema: {e}")))?;
            next.declare_trait(name, ty).map_err(|e| AdminError::Invalid(format!("schema: {e}")))?;
            declared.push(name.clone());
        }
        self.schema = next;
        self.declared.extend(declared);
        Ok(())
    }

    fn create_segment(
        &mut self,
        name: &str,
        expression: &str,
        description: &str,
        now_ms: i64,
    ) -> Result<(), AdminError> {
        if name.is_empty() || name.len() > 200 || name.chars().any(|c| c.is_control() || c == '"') {
            return Err(AdminError::Invalid(format!(
                "segment name {name:?}: use 1 to 200 characters, no quotes or control characters"
            )));
        }
        let ctx = CheckContext { schema: &self.schema, catalog: self, now_ms };
        check_save(name, expression, &ctx)
            .map_err(|e| AdminError::Invalid(format!("segment {name:?}: {e}")))?;
        self.segments.insert(
            name.to_string(),
            SavedSegment {
                name: name.to_string(),
                expression: expression.to_string(),
                description: description.to_string(),
                created_ms: now_ms,
            },
        );
        Ok(())
    }

    fn delete_segment(&mut self, name: &str) -> Result<(), AdminError> {
        if !self.segments.contains_key(name) {
            return Err(AdminError::NotFound(format!("no saved segment {name:?}")));
        }
        let users: Vec<&str> = self
            .segments
            .values()
            .filter(|s| s.name != name)
            .filter(|s| parse(&s.expression).map(|e| references(&e).contains(name)).unwrap_or(false))
            .map(|s| s.name.as_str())
            .collect();
        if !users.is_empty() {
            return Err(AdminError::InUse(format!(
                "segment {name:?} is used by {}; delete or change those first",
                users.iter().map(|u| format!("{u:?}")).collect::<Vec<_>>().join(", ")
            )));
        }
        self.segments.remove(name);
        Ok(())
    }
}

/// Splits `kind:value`; a bare value is a user id.
pub fn parse_address(address: &str) -> (IdentifierKind, &str) {
    if let Some(v) = address.strip_prefix("user_id:") {
        (IdentifierKind::UserId, v)
    } else if let Some(v) = address.strip_prefix("anonymous_id:") {
        (IdentifierKind::AnonymousId, v)
    } else {
        (IdentifierKind::UserId, address)
    }
}

/// Builds the steps of one entry: writes gather per shard; a merge across
/// shards ends the current step (the image must include every write
/// before it) and becomes a move.
struct Planner {
    index: u64,
    next_step: u32,
    current: BTreeMap<u32, Vec<Command>>,
    steps: Vec<Step>,
}

impl Planner {
    fn new(index: u64) -> Self {
        Planner { index, next_step: 0, current: BTreeMap::new(), steps: Vec::new() }
    }

    fn tag(&mut self) -> Tag {
        self.next_step += 1;
        (self.index, self.next_step)
    }

    fn write(&mut self, shard: u32, command: Command) {
        self.current.entry(shard).or_default().push(command);
    }

    fn flush(&mut self) {
        if !self.current.is_empty() {
            let by_shard = std::mem::take(&mut self.current);
            let tag = self.tag();
            self.steps.push(Step::Writes { tag, by_shard });
        }
    }

    fn merge(&mut self, m: &MergeStep, shards: u32) {
        let (from_shard, into_shard) = (shard_of(m.from, shards), shard_of(m.into, shards));
        if from_shard == into_shard {
            self.write(into_shard, Command::Merge { into: m.into, from: m.from });
        } else {
            self.flush();
            let import_tag = self.tag();
            let remove_tag = self.tag();
            self.steps.push(Step::Move {
                import_tag,
                remove_tag,
                from: m.from,
                from_shard,
                into: m.into,
                into_shard,
            });
        }
    }

    fn finish(mut self) -> Vec<Step> {
        self.flush();
        self.steps
    }
}

/// The catalog group's state machine.
pub struct CatalogMachine {
    /// The state; queries take the read lock.
    pub state: RwLock<CatalogState>,
    path: PathBuf,
    applied: AtomicU64,
    /// Steps of applied entries, in log order, for the pipeline. The
    /// pipeline drives the front entry and pops it only once every step is
    /// committed. The outbox is part of the catalog's snapshot, so the log
    /// behind a snapshot can go even while steps are in flight: a restart
    /// drives them again (shards skip what they applied).
    pub outbox: Mutex<VecDeque<Outbox>>,
    /// Signalled when the outbox gains an entry.
    pub outbox_ready: Arc<tokio::sync::Notify>,
    /// Steps of entries the pipeline is done with, freed on this machine's
    /// applier thread (see [`CatalogMachine::retire`]).
    retired: Mutex<Vec<Arc<Vec<Step>>>>,
    /// Held while the snapshot file is written or replaced (the applier's
    /// snapshots, a follower's request, a snapshot received): one at a
    /// time, so that an older file never lands over a newer one.
    snapshot_file: Mutex<()>,
    /// The highest index a [`CatalogCommand::Stepped`] applied here named.
    pub stepped: AtomicU64,
}

const MAGIC: &[u8; 8] = b"COHORTCT";

impl CatalogMachine {
    /// Opens the catalog from `dir/catalog.snap`, or a fresh one for
    /// `shards` shards. A corrupt file is an error naming it.
    pub fn open(dir: &Path, shards: u32, dedup_window_hours: i64) -> Result<Self, CatalogError> {
        let path = dir.join("catalog.snap");
        let mut pending = Vec::new();
        let state = if path.exists() {
            let (state, steps) = read_snapshot(&path)?;
            pending = steps;
            if state.shards != shards {
                return Err(CatalogError::ShardCount {
                    path: path.display().to_string(),
                    found: state.shards,
                    configured: shards,
                });
            }
            state
        } else {
            CatalogState {
                shards,
                dedup: Dedup { window_hours: dedup_window_hours, ..Dedup::default() },
                ..CatalogState::default()
            }
        };
        let applied = state.applied_index;
        Ok(CatalogMachine {
            state: RwLock::new(state),
            path,
            applied: AtomicU64::new(applied),
            outbox: Mutex::new(
                pending.into_iter().map(|(index, steps)| Outbox { index, steps: Arc::new(steps) }).collect(),
            ),
            outbox_ready: Arc::new(tokio::sync::Notify::new()),
            retired: Mutex::new(Vec::new()),
            snapshot_file: Mutex::new(()),
            stepped: AtomicU64::new(0),
        })
    }

    fn write_snapshot(&self) -> Result<u64, CatalogError> {
        let _file = self.snapshot_file.lock();
        // Encoded under the locks (readers go on; the applier waits), then
        // written and synced without them: the applier, and so ingest, is
        // held up by the encoding only, not by the write and the fsync (a
        // 100 MB catalog, 300,000 profiles, took over a second of both on
        // this machine while a joining node waited for it).
        let (encoded, index) = {
            let state = self.state.read();
            let outbox = self.outbox.lock();
            let pending: Vec<(u64, &[Step])> = outbox.iter().map(|o| (o.index, o.steps.as_slice())).collect();
            (encode_snapshot(&state, &pending)?, state.applied_index)
        };
        write_encoded(&self.path, &encoded)?;
        Ok(index)
    }

    /// Writes the catalog of a bulk-built dataset into `dir` (a new data
    /// directory): `schema` and `directory` as they are, nothing applied
    /// from the log yet. The demo uses it to start from generated shards.
    pub fn install(
        dir: &Path,
        shards: u32,
        schema: Schema,
        directory: Directory,
        dedup_window_hours: i64,
    ) -> Result<(), CatalogError> {
        let state = CatalogState {
            shards,
            schema,
            directory,
            dedup: Dedup { window_hours: dedup_window_hours, ..Dedup::default() },
            ..CatalogState::default()
        };
        write_snapshot(&dir.join("catalog.snap"), &state, &[])
    }
}

/// The body of a catalog snapshot: the state, the outbox's steps and the
/// schema's caps.
#[derive(Serialize)]
struct SnapshotBody<'a> {
    state: &'a CatalogState,
    pending: &'a [(u64, &'a [Step])],
    limits: &'a SchemaLimits,
    members: &'a Members,
    placement: &'a Placement,
}

/// [`SnapshotBody`] as read back (the same encoding).
#[derive(Deserialize)]
struct SnapshotBodyOwned {
    state: CatalogState,
    pending: Pending,
    limits: SchemaLimits,
    members: Members,
    placement: Placement,
}

/// The body of a snapshot written before placement existed.
#[derive(Deserialize)]
struct SnapshotBodyBeforePlacement {
    state: CatalogState,
    pending: Pending,
    limits: SchemaLimits,
    members: Members,
}

/// The body of a snapshot written before the member table existed.
#[derive(Deserialize)]
struct SnapshotBodyBeforeMembers {
    state: CatalogState,
    pending: Pending,
    limits: SchemaLimits,
}

/// The body of a snapshot written before the caps existed: the state and
/// the outbox (its caps are the defaults, as they were then: none).
#[derive(Deserialize)]
struct SnapshotBodyBeforeLimits {
    state: CatalogState,
    pending: Pending,
}

/// Writes the catalog's snapshot atomically (a temporary file, fsync,
/// rename, fsync of the directory); a write that fails removes its
/// temporary file, so that it holds no space on a full disk.
fn write_snapshot(path: &Path, state: &CatalogState, pending: &[(u64, &[Step])]) -> Result<(), CatalogError> {
    write_encoded(path, &encode_snapshot(state, pending)?)
}

/// A catalog snapshot's bytes: header, body, directory.
struct EncodedSnapshot {
    header: Vec<u8>,
    body: Vec<u8>,
    dir: Vec<u8>,
}

/// Writes an encoded snapshot to `path` through a temporary file, synced
/// and renamed over (the folder synced too).
fn write_encoded(path: &Path, encoded: &EncodedSnapshot) -> Result<(), CatalogError> {
    let tmp = path.with_extension("tmp");
    let written = write_snapshot_file(path, &tmp, encoded);
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

fn encode_snapshot(
    state: &CatalogState,
    pending: &[(u64, &[Step])],
) -> Result<EncodedSnapshot, CatalogError> {
    let body = bincode::serde::encode_to_vec(
        SnapshotBody {
            state,
            pending,
            limits: &state.limits,
            members: &state.members,
            placement: &state.placement,
        },
        bincode::config::standard(),
    )
    .map_err(|source| CatalogError::Encode { index: state.applied_index, source })?;
    let dir = state.directory.encode();
    let mut header = Vec::new();
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&(body.len() as u64).to_le_bytes());
    header.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    header.extend_from_slice(&(dir.len() as u64).to_le_bytes());
    header.extend_from_slice(&crc32fast::hash(&dir).to_le_bytes());
    Ok(EncodedSnapshot { header, body, dir })
}

fn write_snapshot_file(path: &Path, tmp: &Path, encoded: &EncodedSnapshot) -> Result<(), CatalogError> {
    let io = |source: std::io::Error| CatalogError::Io { path: path.display().to_string(), source };
    let mut f = std::io::BufWriter::new(File::create(tmp).map_err(io)?);
    f.write_all(&encoded.header).map_err(io)?;
    f.write_all(&encoded.body).map_err(io)?;
    f.write_all(&encoded.dir).map_err(io)?;
    let f = f.into_inner().map_err(|e| io(e.into_error()))?;
    f.sync_all().map_err(io)?;
    std::fs::rename(tmp, path).map_err(io)?;
    if let Some(parent) = path.parent() {
        File::open(parent).and_then(|d| d.sync_all()).map_err(io)?;
    }
    Ok(())
}

/// Steps of outbox entries, by catalog index, as a snapshot keeps them.
type Pending = Vec<(u64, Vec<Step>)>;

fn read_snapshot(path: &Path) -> Result<(CatalogState, Pending), CatalogError> {
    let shown = path.display().to_string();
    let data = std::fs::read(path).map_err(|source| CatalogError::Io { path: shown.clone(), source })?;
    let corrupt = |offset: usize, what: &str| CatalogError::Corrupt {
        path: shown.clone(),
        offset,
        problem: what.to_string(),
    };
    if data.len() < 32 || &data[..8] != MAGIC {
        return Err(corrupt(0, "not a Cohort catalog snapshot"));
    }
    let u64_at = |at: usize| u64::from_le_bytes(data[at..at + 8].try_into().unwrap_or([0; 8])) as usize;
    let u32_at = |at: usize| u32::from_le_bytes(data[at..at + 4].try_into().unwrap_or([0; 4]));
    let (body_len, body_crc, dir_len, dir_crc) = (u64_at(8), u32_at(16), u64_at(20), u32_at(28));
    if data.len() != 32usize.saturating_add(body_len).saturating_add(dir_len) {
        return Err(corrupt(data.len(), "truncated or extended file"));
    }
    let body = &data[32..32 + body_len];
    let dir = &data[32 + body_len..];
    if crc32fast::hash(body) != body_crc {
        return Err(corrupt(32, "checksum mismatch in the catalog state"));
    }
    if crc32fast::hash(dir) != dir_crc {
        return Err(corrupt(32 + body_len, "checksum mismatch in the identity directory"));
    }
    let decoded = match codec::decode::<SnapshotBodyOwned>(body) {
        Ok((b, used)) if used == body.len() => {
            let mut state = b.state;
            state.limits = b.limits;
            state.members = b.members;
            state.placement = b.placement;
            Ok((state, b.pending))
        }
        first => match codec::decode::<SnapshotBodyBeforePlacement>(body) {
            // Snapshots written before placement existed: every group
            // wants every active member until the next change of the
            // member table places them.
            Ok((b, used)) if used == body.len() => {
                let mut state = b.state;
                state.limits = b.limits;
                state.members = b.members;
                Ok((state, b.pending))
            }
            _ => match codec::decode::<SnapshotBodyBeforeMembers>(body) {
                // Snapshots written before the member table existed: no
                // members recorded (a single node, or founders not recorded
                // yet).
                Ok((b, used)) if used == body.len() => {
                    let mut state = b.state;
                    state.limits = b.limits;
                    Ok((state, b.pending))
                }
                _ => match codec::decode::<SnapshotBodyBeforeLimits>(body) {
                    // Snapshots written before the caps existed hold the state and
                    // the outbox; the caps stay the defaults until the node's
                    // configuration sets them through the log.
                    Ok((b, used)) if used == body.len() => Ok((b.state, b.pending)),
                    // Snapshots written before the outbox was kept hold the state
                    // alone (their outbox was empty by construction).
                    _ => match codec::decode::<CatalogState>(body) {
                        Ok((state, used)) if used == body.len() => Ok((state, Vec::new())),
                        _ => Err(match first {
                            Err(e) => corrupt(32, &format!("catalog state: {e}")),
                            Ok(_) => corrupt(32, "catalog state: bytes left after the state"),
                        }),
                    },
                },
            },
        },
    };
    let (mut state, pending) = decoded?;
    state.directory = Directory::decode(dir).map_err(|e| corrupt(32 + body_len, &e.to_string()))?;
    state.dedup.rebuild_index();
    Ok((state, pending))
}

impl CatalogMachine {
    /// The state, locked for applying entry `index`.
    fn state_at(&self, index: u64) -> parking_lot::RwLockWriteGuard<'_, CatalogState> {
        let mut state = self.state.write();
        state.applied_index = index;
        self.applied.store(index, Ordering::Release);
        state
    }

    /// Hands back the steps of an entry the pipeline is done with. Their
    /// commands were allocated on this machine's applier thread, which
    /// frees them at its next entry or when idle: a free on the allocating
    /// thread is several times cheaper than one from another thread (whose
    /// freed blocks the owner must then collect), and an entry holds tens
    /// of thousands of commands.
    pub fn retire(&self, steps: Arc<Vec<Step>>) {
        self.retired.lock().push(steps);
    }

    fn free_retired(&self) {
        let retired = std::mem::take(&mut *self.retired.lock());
        drop(retired);
    }

    fn apply_ingest(&self, index: u64, jobs: Vec<ParsedJob>) -> CatalogResult {
        self.free_retired();
        let (reports, steps) = self.state_at(index).apply_ingest(index, jobs);
        self.outbox.lock().push_back(Outbox { index, steps: Arc::new(steps) });
        self.outbox_ready.notify_one();
        CatalogResult::Ingested { index, reports }
    }
}

impl StateMachine for CatalogMachine {
    fn apply_proposed(&self, index: u64, data: &[u8], local: Box<dyn std::any::Any + Send>) -> ApplyResult {
        match local.downcast::<ParsedIngest>() {
            Ok(parsed) => Box::new(self.apply_ingest(index, parsed.0)),
            Err(_) => self.apply(index, data),
        }
    }

    fn apply(&self, index: u64, data: &[u8]) -> ApplyResult {
        let command: Result<(CatalogCommand, usize), _> = codec::decode(data);
        let result = match command {
            Err(e) => {
                // Skipped, the entry's messages would be lost on this replica
                // only: the group stops at it instead (see `Halt`).
                return Box::new(Halt::new(CatalogError::Undecodable { index, source: e }));
            }
            Ok((CatalogCommand::Ingest(jobs), _)) => {
                self.apply_ingest(index, jobs.iter().map(ParsedJob::parse).collect())
            }
            Ok((CatalogCommand::ApplySchema(json), _)) => {
                CatalogResult::Done(self.state_at(index).apply_schema(&json))
            }
            Ok((CatalogCommand::CreateSegment { name, expression, description, now_ms }, _)) => {
                CatalogResult::Done(self.state_at(index).create_segment(
                    &name,
                    &expression,
                    &description,
                    now_ms,
                ))
            }
            Ok((CatalogCommand::DeleteSegment(name), _)) => {
                CatalogResult::Done(self.state_at(index).delete_segment(&name))
            }
            Ok((CatalogCommand::SetLimits(limits), _)) => {
                self.state_at(index).limits = limits;
                CatalogResult::Done(Ok(()))
            }
            Ok((CatalogCommand::SetMember(member), _)) => {
                let mut state = self.state_at(index);
                CatalogResult::Done(match check_change(&state.members, &member) {
                    Ok(()) => {
                        state.members.insert(member.id, member);
                        state.place();
                        Ok(())
                    }
                    Err(why) => Err(AdminError::Invalid(why)),
                })
            }
            Ok((CatalogCommand::SetReplicationFactor(factor), _)) => {
                let mut state = self.state_at(index);
                CatalogResult::Done(if factor == 0 {
                    Err(AdminError::Invalid("a replication factor is at least 1".into()))
                } else {
                    state.placement.replication_factor = factor;
                    state.place();
                    Ok(())
                })
            }
            Ok((CatalogCommand::MoveReplica(mv), _)) => {
                let mut state = self.state_at(index);
                let active = state.active_members();
                CatalogResult::Done(state.placement.move_replica(mv, &active).map_err(AdminError::Invalid))
            }
            Ok((CatalogCommand::Stepped(through), _)) => {
                drop(self.state_at(index));
                self.stepped.fetch_max(through, Ordering::AcqRel);
                let mut outbox = self.outbox.lock();
                while outbox.front().is_some_and(|e| e.index <= through) {
                    if let Some(done) = outbox.pop_front() {
                        self.retired.lock().push(done.steps);
                    }
                }
                drop(outbox);
                self.outbox_ready.notify_one();
                CatalogResult::Done(Ok(()))
            }
            Ok((CatalogCommand::SetZone { node, zone }, _)) => {
                let mut state = self.state_at(index);
                if zone.is_empty() {
                    state.placement.zones.remove(&node);
                } else {
                    state.placement.zones.insert(node, zone);
                }
                CatalogResult::Done(Ok(()))
            }
            Ok((CatalogCommand::Rebalance, _)) => {
                let mut state = self.state_at(index);
                let (active, groups) = (state.active_members(), all_groups(state.shards));
                let moves = state.placement.rebalance(&active, &groups);
                if !moves.is_empty() {
                    tracing::info!(moves = moves.len(), "placement rebalanced");
                }
                CatalogResult::Done(Ok(()))
            }
        };
        Box::new(result)
    }

    fn idle(&self) {
        self.free_retired();
    }

    fn pass(&self, index: u64) {
        drop(self.state_at(index));
    }

    fn applied_index(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    fn snapshot(&self) -> Result<u64, MachineError> {
        Ok(self.write_snapshot()?)
    }

    fn snapshot_file(&self) -> &Path {
        &self.path
    }

    fn restore(&self, index: u64, data: &[u8]) -> Result<(), MachineError> {
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| CatalogError::Io { path, source }
        };
        let _file = self.snapshot_file.lock();
        let tmp = self.path.with_extension("received");
        std::fs::write(&tmp, data).map_err(io(&tmp))?;
        let (mut state, pending) = read_snapshot(&tmp)?;
        state.applied_index = index;
        *self.state.write() = state;
        self.applied.store(index, Ordering::Release);
        *self.outbox.lock() =
            pending.into_iter().map(|(index, steps)| Outbox { index, steps: Arc::new(steps) }).collect();
        std::fs::rename(&tmp, &self.path).map_err(io(&self.path))?;
        Ok(())
    }

    fn restore_file(&self, index: u64, path: &Path) -> Result<(), MachineError> {
        let _file = self.snapshot_file.lock();
        let (mut state, pending) = read_snapshot(path)?;
        state.applied_index = index;
        *self.state.write() = state;
        self.applied.store(index, Ordering::Release);
        *self.outbox.lock() =
            pending.into_iter().map(|(index, steps)| Outbox { index, steps: Arc::new(steps) }).collect();
        crate::replication::snapshot_file::move_into_place(path, &self.path)
            .map_err(|source| CatalogError::Io { path: self.path.display().to_string(), source })?;
        Ok(())
    }
}

/// Parses a `now` argument: empty → `default_ms`, else RFC 3339.
pub fn parse_now(text: &str, default_ms: i64) -> Result<i64, CatalogError> {
    if text.is_empty() {
        Ok(default_ms)
    } else {
        parse_rfc3339_ms(text).ok_or_else(|| CatalogError::BadTime { field: "now", text: text.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ingest(state: &mut CatalogState, index: u64, messages: &[&str]) -> (IngestReport, Vec<Step>) {
        let job = IngestJob {
            messages: messages.iter().map(|s| s.to_string()).collect(),
            received_ms: 1_700_000_000_000,
            source: Source::Grpc,
        };
        let (mut reports, steps) = state.apply_ingest(index, vec![ParsedJob::parse(&job)]);
        (reports.remove(0), steps)
    }

    fn fresh(shards: u32) -> CatalogState {
        CatalogState {
            shards,
            dedup: Dedup { window_hours: 24, ..Dedup::default() },
            ..CatalogState::default()
        }
    }

    #[test]
    fn duplicates_bad_messages_and_field_errors_are_reported_by_position() {
        let mut s = fresh(4);
        let (r, steps) = ingest(
            &mut s,
            5,
            &[
                r#"{"type":"identify","userId":"u1","messageId":"m1","traits":{"age":30}}"#,
                r#"{"type":"identify","userId":"u1","messageId":"m1","traits":{"age":31}}"#,
                r#"not json"#,
                r#"{"type":"track","userId":"u1"}"#,
                r#"{"type":"identify","userId":"u1","traits":{"age":"old"}}"#,
            ],
        );
        assert_eq!((r.applied, r.duplicates), (2, 1));
        let where_: Vec<(u64, &str)> = r.rejections.iter().map(|x| (x.position, x.field.as_str())).collect();
        assert_eq!(where_, vec![(2, ""), (3, ""), (4, "traits.age")]);
        assert!(r.rejections[1].reason.contains("event"), "{}", r.rejections[1].reason);
        assert_eq!(steps.len(), 1);
        assert_eq!(s.totals.rejections, 3);
    }

    #[test]
    fn a_cross_shard_merge_splits_the_steps() {
        let mut s = fresh(64);
        // Two anonymous profiles, then a message that links them.
        let mut msgs = vec![];
        for a in ["a1", "a2"] {
            msgs.push(format!(r#"{{"type":"track","anonymousId":"{a}","event":"page_view"}}"#));
        }
        let (_, _) = ingest(&mut s, 1, &msgs.iter().map(String::as_str).collect::<Vec<_>>());
        let p1 = s.lookup("anonymous_id:a1").unwrap();
        let p2 = s.lookup("anonymous_id:a2").unwrap();
        let (r, steps) = ingest(
            &mut s,
            2,
            &[
                r#"{"type":"identify","userId":"u","anonymousId":"a2","traits":{"plan":"pro"}}"#,
                r#"{"type":"alias","userId":"u","previousId":"a1"}"#,
            ],
        );
        assert_eq!(r.applied, 2);
        assert_eq!(s.lookup("u"), Some(p2), "the profile that got the user id survives");
        assert_eq!(s.lookup("anonymous_id:a1"), Some(p2));
        let moved =
            steps.iter().any(|st| matches!(st, Step::Move { from, into, .. } if *from == p1 && *into == p2));
        let merged_in_place = steps.iter().any(|st| match st {
            Step::Writes { by_shard, .. } => by_shard
                .values()
                .flatten()
                .any(|c| matches!(c, Command::Merge { into, from } if *into == p2 && *from == p1)),
            _ => false,
        });
        assert!(moved ^ merged_in_place, "{steps:?}");
        // Tags strictly increase.
        let tags: Vec<Tag> = steps
            .iter()
            .flat_map(|st| match st {
                Step::Writes { tag, .. } => vec![*tag],
                Step::Move { import_tag, remove_tag, .. } => vec![*import_tag, *remove_tag],
            })
            .collect();
        assert!(tags.windows(2).all(|w| w[0] < w[1]), "{tags:?}");
        assert_eq!(s.merges.len(), 1);
        assert_eq!(s.merges[0].linked_by, "anonymous_id:a1");
    }

    #[test]
    fn schema_and_segments_are_checked() {
        let mut s = fresh(1);
        assert!(s.apply_schema(r#"{"traits":{"email":"text","signup":"timestamp"}}"#).is_ok());
        assert!(s.apply_schema(r#"{"traits":{"email":"number"}}"#).is_err());
        assert!(s.apply_schema(r#"{"traits":{"first_seen":"number"}}"#).is_err());
        assert!(s
            .apply_schema(r#"{"traits":{"x":"float"}}"#)
            .unwrap_err()
            .to_string()
            .contains("unknown type"));
        assert!(s.apply_schema("[1]").is_err());
        ingest(&mut s, 1, &[r#"{"type":"identify","userId":"u","traits":{"country":"FR"}}"#]);
        s.create_segment("fr", r#"country = "FR""#, "", 0).unwrap();
        s.create_segment("fr2", r#"IN SEGMENT "fr""#, "", 0).unwrap();
        let e = s.create_segment("fr", r#"IN SEGMENT "fr2""#, "", 0).unwrap_err();
        assert!(e.to_string().contains("fr"), "{e}");
        let e = s.delete_segment("fr").unwrap_err();
        assert!(matches!(e, AdminError::InUse(ref m) if m.contains("fr2")), "{e}");
        assert!(s.create_segment("bad", "country = ", "", 0).is_err());
        s.delete_segment("fr2").unwrap();
        s.delete_segment("fr").unwrap();
        assert!(matches!(s.delete_segment("fr"), Err(AdminError::NotFound(_))));
    }

    #[test]
    fn an_entry_applied_with_its_proposers_parse_equals_one_applied_from_the_log() {
        let job = IngestJob {
            messages: [
                r#"{"type":"identify","anonymousId":"a1","messageId":"m1","traits":{"plan":"pro","age":31}}"#,
                r#"{"type":"track","anonymousId":"a1","event":"buy","properties":{"amount":12.5}}"#,
                r#"{"type":"identify","userId":"u1","anonymousId":"a1","messageId":"m3"}"#,
                r#"{"type":"identify","userId":"u2","anonymousId":"a2","traits":{"age":"old"}}"#,
                r#"{"type":"alias","userId":"u1","previousId":"u2"}"#,
                r#"{"type":"track","event":"no ids"}"#,
                r#"{"type":"identify","userId":"u1","messageId":"m1"}"#,
                r#"not json"#,
            ]
            .iter()
            .map(|t| t.to_string())
            .collect(),
            received_ms: 1_700_000_000_000,
            source: Source::Grpc,
        };
        let data = CatalogCommand::Ingest(vec![job.clone()]).encode();
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let from_log = CatalogMachine::open(d1.path(), 4, 24).unwrap();
        let proposed = CatalogMachine::open(d2.path(), 4, 24).unwrap();
        let a = from_log.apply(1, &data);
        let b = proposed.apply_proposed(1, &data, Box::new(ParsedIngest(vec![ParsedJob::parse(&job)])));
        let (CatalogResult::Ingested { reports: a, .. }, CatalogResult::Ingested { reports: b, .. }) =
            (*a.downcast::<CatalogResult>().unwrap(), *b.downcast::<CatalogResult>().unwrap())
        else {
            panic!("not ingest results")
        };
        assert_eq!(a, b);
        assert_eq!((a[0].applied, a[0].duplicates, a[0].rejections.len()), (5, 1, 3), "{a:?}");
        assert_eq!(from_log.outbox.lock()[0].steps, proposed.outbox.lock()[0].steps);
        // The whole state, as its snapshot writes it, is the same.
        from_log.snapshot().unwrap();
        proposed.snapshot().unwrap();
        let snap = |d: &tempfile::TempDir| std::fs::read(d.path().join("catalog.snap")).unwrap();
        assert_eq!(snap(&d1), snap(&d2));
    }

    #[test]
    fn snapshot_round_trip_keeps_everything() {
        let dir = tempfile::tempdir().unwrap();
        let m = CatalogMachine::open(dir.path(), 4, 24).unwrap();
        let cmd = CatalogCommand::Ingest(vec![IngestJob {
            messages: vec![r#"{"type":"identify","userId":"u","messageId":"x","traits":{"a":1}}"#.into()],
            received_ms: 1_700_000_000_000,
            source: Source::Http,
        }]);
        m.apply(1, &cmd.encode());
        // The steps still to drive are part of the snapshot.
        assert_eq!(m.snapshot().unwrap(), 1);
        let back = CatalogMachine::open(dir.path(), 4, 24).unwrap();
        {
            let (a, b) = (m.outbox.lock(), back.outbox.lock());
            assert_eq!(b.len(), 1);
            assert_eq!((a[0].index, &a[0].steps), (b[0].index, &b[0].steps));
        }
        let st = back.state.read();
        assert_eq!(st.applied_index, 1);
        assert!(st.lookup("u").is_some());
        assert_eq!(st.schema.trait_type("a"), Some(TraitType::Number));
        drop(st);
        // The dedup window survived: the same messageId is a duplicate.
        let out = back.apply(2, &cmd.encode());
        let CatalogResult::Ingested { reports: r, .. } = *out.downcast::<CatalogResult>().unwrap() else {
            panic!()
        };
        assert_eq!(r[0].duplicates, 1);
        // Corruption is named.
        let path = dir.path().join("catalog.snap");
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 3] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let e = CatalogMachine::open(dir.path(), 4, 24).err().unwrap().to_string();
        assert!(e.contains("catalog.snap") && e.contains("checksum"), "{e}");
        assert!(CatalogMachine::open(dir.path(), 8, 24).is_err());
    }

    fn reports_of(out: ApplyResult) -> Vec<IngestReport> {
        match *out.downcast::<CatalogResult>().unwrap() {
            CatalogResult::Ingested { reports, .. } => reports,
            other => panic!("not an ingest result: {other:?}"),
        }
    }

    fn ingest_entry(messages: &[String]) -> Vec<u8> {
        CatalogCommand::Ingest(vec![IngestJob {
            messages: messages.to_vec(),
            received_ms: 1_700_000_000_000,
            source: Source::Grpc,
        }])
        .encode()
    }

    /// Issue 12: nothing bounded the distinct names. With small caps set
    /// through the log, a new name past a cap is rejected with the cap's
    /// name and value (a trait or property as a field, an event as the
    /// whole message, before it is applied or deduplicated); the caps are
    /// in the snapshot, and a replay of the same log from nothing decides
    /// every message as the first application did, across a change of caps.
    #[test]
    fn caps_set_in_the_log_reject_new_names_alike_on_every_replay() {
        let small = SchemaLimits {
            max_traits: 2,
            max_events: 1,
            max_properties_per_event: 1,
            max_properties: 10,
            max_name_bytes: 16,
        };
        let m = |v: serde_json::Value| v.to_string();
        let log: Vec<Vec<u8>> = vec![
            CatalogCommand::SetLimits(small).encode(),
            ingest_entry(&[
                m(serde_json::json!({"type": "identify", "userId": "u", "traits": {"a": 1, "b": 2, "c": 3}})),
                m(
                    serde_json::json!({"type": "track", "userId": "u", "event": "buy", "properties": {"p": 1, "q": 2}}),
                ),
                m(serde_json::json!({"type": "track", "userId": "u", "event": "view", "messageId": "v1"})),
                m(
                    serde_json::json!({"type": "identify", "userId": "u", "traits": {"a": 5, "much_too_long_name": 1}}),
                ),
            ]),
            CatalogCommand::SetLimits(SchemaLimits { max_events: 2, ..small }).encode(),
            ingest_entry(&[m(
                serde_json::json!({"type": "track", "userId": "u", "event": "view", "messageId": "v1"}),
            )]),
        ];
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let first = CatalogMachine::open(d1.path(), 4, 24).unwrap();
        let mut reports = Vec::new();
        for (i, entry) in log.iter().enumerate() {
            let out = first.apply(i as u64 + 1, entry);
            if !matches!(out.downcast_ref::<CatalogResult>(), Some(CatalogResult::Done(Ok(())))) {
                reports.push(reports_of(out));
            }
        }
        let r = &reports[0][0];
        let got: Vec<(u64, &str, &str)> =
            r.rejections.iter().map(|x| (x.position, x.field.as_str(), x.reason.as_str())).collect();
        assert_eq!(got.len(), 4, "{got:#?}");
        assert_eq!((got[0].0, got[0].1), (0, "traits.c"));
        assert!(got[0].2.contains("`max_traits` is 2"), "{}", got[0].2);
        assert_eq!((got[1].0, got[1].1), (1, "properties.q"));
        assert!(got[1].2.contains("`max_properties_per_event` is 1"), "{}", got[1].2);
        assert_eq!((got[2].0, got[2].1), (2, "event"));
        assert!(
            got[2].2.contains("new event `view`") && got[2].2.contains("`max_events` is 1"),
            "{}",
            got[2].2
        );
        assert_eq!((got[3].0, got[3].1), (3, "traits.much_too_long_name"));
        assert!(got[3].2.contains("`max_name_bytes` is 16"), "{}", got[3].2);
        assert_eq!(r.applied, 3, "the refused event's message is not applied");
        // Raised, the cap lets the event in; the refused message was not
        // remembered as a duplicate, so sending it again applies it.
        assert_eq!((reports[1][0].applied, reports[1][0].duplicates), (1, 0), "{:?}", reports[1]);
        {
            let st = first.state.read();
            assert_eq!(st.limits.max_events, 2);
            assert!(st.schema.has_event("view") && st.schema.trait_type("c").is_none());
        }
        // The snapshot keeps the caps in force.
        first.snapshot().unwrap();
        assert_eq!(CatalogMachine::open(d1.path(), 4, 24).unwrap().state.read().limits.max_events, 2);
        // Replaying the same log into a fresh catalog gives the same state.
        let again = CatalogMachine::open(d2.path(), 4, 24).unwrap();
        for (i, entry) in log.iter().enumerate() {
            again.apply(i as u64 + 1, entry);
        }
        again.snapshot().unwrap();
        let snap = |d: &tempfile::TempDir| std::fs::read(d.path().join("catalog.snap")).unwrap();
        assert_eq!(snap(&d1), snap(&d2));
        // An operator's declaration is held to the caps too.
        let e = again.state.write().apply_schema(r#"{"traits":{"x":"number"}}"#).unwrap_err();
        assert!(e.to_string().contains("`max_traits` is 2"), "{e}");
        let e = again.state.write().apply_schema(r#"{"traits":{"":"number"}}"#).unwrap_err();
        assert!(e.to_string().contains("needs a name"), "{e}");
    }

    /// A snapshot written before the caps existed (state and outbox only)
    /// still opens, with the default caps.
    #[test]
    fn a_snapshot_from_before_the_caps_opens_with_the_defaults() {
        #[derive(Serialize)]
        struct Old<'a> {
            state: &'a CatalogState,
            pending: &'a [(u64, &'a [Step])],
        }
        let dir = tempfile::tempdir().unwrap();
        let mut state = fresh(4);
        ingest(&mut state, 1, &[r#"{"type":"identify","userId":"u","traits":{"a":1}}"#]);
        state.applied_index = 1;
        let body =
            bincode::serde::encode_to_vec(Old { state: &state, pending: &[] }, bincode::config::standard())
                .unwrap();
        let dir_bytes = state.directory.encode();
        let mut file = Vec::new();
        file.extend_from_slice(MAGIC);
        file.extend_from_slice(&(body.len() as u64).to_le_bytes());
        file.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        file.extend_from_slice(&(dir_bytes.len() as u64).to_le_bytes());
        file.extend_from_slice(&crc32fast::hash(&dir_bytes).to_le_bytes());
        file.extend_from_slice(&body);
        file.extend_from_slice(&dir_bytes);
        std::fs::write(dir.path().join("catalog.snap"), file).unwrap();
        let back = CatalogMachine::open(dir.path(), 4, 24).unwrap();
        let st = back.state.read();
        assert_eq!((st.applied_index, st.limits), (1, SchemaLimits::default()));
        assert_eq!(st.schema.trait_type("a"), Some(TraitType::Number));
    }
}
