//! A brute-force oracle for the shard engine, written straight from
//! `shared/SEGMENTS.md` and `shared/INGEST.md`.
//!
//! The [`Model`] keeps every profile as plain Rust structures (no bitmaps,
//! no dictionaries, no code shared with `src/shard`) and applies the same
//! [`Command`]s as a shard. Its evaluator walks the *parsed* syntax tree
//! ([`Expr`]), not the checked and normalised condition, so that the checker,
//! the normal form and the bitmap evaluator are all tested against it.
//!
//! One model can stand for several shards at once: every profile records the
//! shard it lives on and the row that shard gave it (rows are assigned in
//! order of creation and never reused), so that members can be compared in
//! row order and a profile can move from one shard to another with
//! [`Model::transfer`].

// Each test crate that includes this module uses a different part of it.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};

use cohort::model::{parse_rfc3339_ms, FieldType, IdentifierKind, Schema, TraitType, Value};
use cohort::segment::ast::{CmpOp, Expr, Frequency, LitValue, Literal, Predicate, Test, TimeRef, Window};
use cohort::segment::parse;
use cohort::shard::{Command, EventRecord, ProfileImage, ProfileWrite};

/// The grow-only list trait of `group` messages (INGEST.md): a merge unions it.
pub const GROUPS: &str = "groups";

/// Which value wins when a merge meets two writes of one trait with the same
/// message time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MergeTies {
    /// INGEST.md read literally: the message that was applied later wins,
    /// whichever profile it was applied to.
    LaterApplied,
    /// The merged-away (incoming) profile's value wins, whatever the order
    /// in which the two messages were applied.
    Incoming,
}

/// One trait of one profile: its value (`None` once unset by `null`), the
/// time of the message that wrote it, and the position of that message in
/// the order of ingestion (for ties).
#[derive(Clone, Debug, PartialEq)]
pub struct TraitEntry {
    /// The value, or `None` when the latest write was `null`.
    pub value: Option<Value>,
    /// The message time of the write.
    pub time: i64,
    /// The order in which the write was applied: larger is later.
    pub seq: u64,
}

/// One event of one profile.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelEvent {
    /// The event name.
    pub name: String,
    /// Its timestamp, in milliseconds since the epoch.
    pub ts_ms: i64,
    /// Its properties by name.
    pub properties: BTreeMap<String, Value>,
}

/// Everything the oracle knows of one live profile.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelProfile {
    /// The shard the profile lives on.
    pub shard: usize,
    /// The row that shard gave it.
    pub row: u32,
    /// Identifiers, by kind then value.
    pub identifiers: BTreeSet<(IdentifierKind, String)>,
    /// The earliest message time applied.
    pub first_seen: Option<i64>,
    /// The latest message time applied.
    pub last_seen: Option<i64>,
    /// Every trait ever written, unset ones included.
    pub traits: BTreeMap<String, TraitEntry>,
    /// Every event, in the order it was recorded.
    pub events: Vec<ModelEvent>,
}

impl ModelProfile {
    /// A profile with nothing yet, at `row` of `shard`.
    fn new(shard: usize, row: u32) -> Self {
        ModelProfile {
            shard,
            row,
            identifiers: BTreeSet::new(),
            first_seen: None,
            last_seen: None,
            traits: BTreeMap::new(),
            events: Vec::new(),
        }
    }

    /// Records that a message at `time` was applied to the profile.
    fn seen(&mut self, time: i64) {
        self.first_seen = Some(self.first_seen.map_or(time, |t| t.min(time)));
        self.last_seen = Some(self.last_seen.map_or(time, |t| t.max(time)));
    }

    /// Offers a write of a trait: it replaces the current one when its
    /// message time is later, or equal and the write was applied later.
    fn offer(&mut self, name: &str, entry: TraitEntry) {
        match self.traits.get(name) {
            Some(old) if (old.time, old.seq) > (entry.time, entry.seq) => {}
            _ => {
                self.traits.insert(name.to_string(), entry);
            }
        }
    }

    /// Adds elements to a grow-only list trait: the set only grows, and its
    /// time is the latest of the writes that grew it.
    fn grow(&mut self, name: &str, items: &[String], time: i64, seq: u64) {
        let (mut all, time, seq) = match self.traits.get(name) {
            Some(old) => {
                let items = match &old.value {
                    Some(Value::List(v)) => v.clone(),
                    _ => Vec::new(),
                };
                let (t, q) = (old.time, old.seq).max((time, seq));
                (items, t, q)
            }
            None => (Vec::new(), time, seq),
        };
        all.extend(items.iter().cloned());
        all.sort();
        all.dedup();
        self.traits.insert(name.to_string(), TraitEntry { value: Some(Value::List(all)), time, seq });
    }

    /// The user ids or anonymous ids of the profile.
    fn ids(&self, kind: IdentifierKind) -> Vec<&str> {
        self.identifiers.iter().filter(|(k, _)| *k == kind).map(|(_, v)| v.as_str()).collect()
    }
}

/// The oracle: every live profile of one or more shards.
#[derive(Clone, Debug)]
pub struct Model {
    /// Live profiles by profile id.
    pub profiles: BTreeMap<u64, ModelProfile>,
    /// The next row each shard will give a new profile.
    next_rows: Vec<u32>,
    /// The number of writes applied so far (the order of ingestion).
    seq: u64,
    /// How merges break ties between writes of the same time.
    pub merge_ties: MergeTies,
}

impl Model {
    /// An empty model of `shards` shards, with merges breaking ties as
    /// INGEST.md says (the later-applied message wins).
    pub fn new(shards: usize) -> Self {
        Model {
            profiles: BTreeMap::new(),
            next_rows: vec![0; shards],
            seq: 0,
            merge_ties: MergeTies::LaterApplied,
        }
    }

    /// Applies a command to shard 0.
    pub fn apply(&mut self, cmd: &Command) {
        self.apply_on(0, cmd);
    }

    /// Applies a command to `shard`. Commands that a shard refuses (a merge
    /// of a profile into itself, a merge or removal of a profile that is not
    /// on the shard) change nothing, as on a shard.
    pub fn apply_on(&mut self, shard: usize, cmd: &Command) {
        match cmd {
            Command::Write(w) => self.write(shard, w),
            Command::Merge { into, from } => {
                if into == from {
                    return;
                }
                if let Some(p) = self.take_on(shard, *from) {
                    self.merge_into(shard, *into, p);
                }
            }
            Command::Import(image) => {
                let incoming = self.profile_of_image(image);
                self.merge_into(shard, image.profile, incoming);
            }
            Command::Remove { profile } => {
                self.take_on(shard, *profile);
            }
        }
    }

    /// Moves `profile` from its shard to shard `to`, merging it into `into`
    /// there (created if new): a cross-shard merge. The writes keep their
    /// original order of ingestion. Returns false when `profile` is not live.
    pub fn transfer(&mut self, profile: u64, to: usize, into: u64) -> bool {
        match self.profiles.remove(&profile) {
            Some(p) => {
                self.merge_into(to, into, p);
                true
            }
            None => false,
        }
    }

    /// Gives a write its position in the order of ingestion (`seq`), as the
    /// ingest layer does: call it on every command, in the order the
    /// commands are applied, before applying it to the oracle and the shard.
    pub fn stamp(&mut self, cmd: &mut Command) {
        if let Command::Write(w) = cmd {
            self.seq += 1;
            w.seq = self.seq;
        }
    }

    /// The live profile `id` on `shard`, created with the shard's next row
    /// when new.
    fn profile_on(&mut self, shard: usize, id: u64) -> &mut ModelProfile {
        if !self.profiles.contains_key(&id) {
            let row = self.next_rows[shard];
            self.next_rows[shard] += 1;
            self.profiles.insert(id, ModelProfile::new(shard, row));
        }
        let p = self.profiles.get_mut(&id).expect("the profile was just created");
        assert_eq!(p.shard, shard, "the test sent profile {id} to a shard it does not live on");
        p
    }

    /// Removes profile `id` if it lives on `shard`, and returns it.
    fn take_on(&mut self, shard: usize, id: u64) -> Option<ModelProfile> {
        match self.profiles.get(&id) {
            Some(p) if p.shard == shard => self.profiles.remove(&id),
            _ => None,
        }
    }

    /// One message: first/last seen, identifiers, traits by last-write-wins,
    /// grow-only lists and an event at the message time.
    fn write(&mut self, shard: usize, w: &ProfileWrite) {
        let seq = w.seq;
        let p = self.profile_on(shard, w.profile);
        p.seen(w.time_ms);
        for (kind, id) in &w.identifiers {
            p.identifiers.insert((*kind, id.clone()));
        }
        for (name, value) in &w.traits {
            p.offer(name, TraitEntry { value: value.clone(), time: w.time_ms, seq });
        }
        for (name, items) in &w.add_to_lists {
            p.grow(name, items, w.time_ms, seq);
        }
        if let Some(e) = &w.event {
            p.events.push(ModelEvent {
                name: e.name.clone(),
                ts_ms: w.time_ms,
                properties: e.properties.iter().cloned().collect(),
            });
        }
    }

    /// A profile image from outside, as a model profile whose writes keep
    /// their stamps (message time and ingestion order).
    fn profile_of_image(&mut self, image: &ProfileImage) -> ModelProfile {
        ModelProfile {
            shard: usize::MAX,
            row: u32::MAX,
            identifiers: image.identifiers.iter().cloned().collect(),
            first_seen: image.first_seen,
            last_seen: image.last_seen,
            traits: image
                .traits
                .iter()
                .map(|(name, value, (time, seq))| {
                    (name.clone(), TraitEntry { value: value.clone(), time: *time, seq: *seq })
                })
                .collect(),
            events: image
                .events
                .iter()
                .map(|e| ModelEvent {
                    name: e.name.clone(),
                    ts_ms: e.ts_ms,
                    properties: e.properties.iter().cloned().collect(),
                })
                .collect(),
        }
    }

    /// INGEST.md step 6: identifiers and events unioned, earliest first
    /// seen, latest last seen, each trait by last-write-wins on the original
    /// message times, `groups` unioned.
    fn merge_into(&mut self, shard: usize, into: u64, incoming: ModelProfile) {
        let ties = self.merge_ties;
        let p = self.profile_on(shard, into);
        for t in [incoming.first_seen, incoming.last_seen].into_iter().flatten() {
            p.seen(t);
        }
        p.identifiers.extend(incoming.identifiers);
        for (name, entry) in incoming.traits {
            match (&entry.value, name.as_str()) {
                (Some(Value::List(items)), GROUPS) => p.grow(&name, items, entry.time, entry.seq),
                _ => match ties {
                    MergeTies::LaterApplied => p.offer(&name, entry),
                    MergeTies::Incoming => match p.traits.get(&name) {
                        Some(old) if old.time > entry.time => {}
                        _ => {
                            p.traits.insert(name, entry);
                        }
                    },
                },
            }
        }
        p.events.extend(incoming.events);
    }

    /// The live profiles of `shard`, in row order.
    pub fn live_on(&self, shard: usize) -> Vec<(u64, &ModelProfile)> {
        let mut v: Vec<(u64, &ModelProfile)> =
            self.profiles.iter().filter(|(_, p)| p.shard == shard).map(|(id, p)| (*id, p)).collect();
        v.sort_by_key(|(_, p)| p.row);
        v
    }

    /// What a shard should return for `read_profile(id)`, with events in the
    /// canonical order of [`canonical_events`].
    pub fn expected_image(&self, id: u64) -> Option<ProfileImage> {
        let p = self.profiles.get(&id)?;
        let mut events: Vec<EventRecord> = p
            .events
            .iter()
            .map(|e| EventRecord {
                name: e.name.clone(),
                ts_ms: e.ts_ms,
                properties: e.properties.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            })
            .collect();
        canonical_events(&mut events);
        Some(ProfileImage {
            profile: id,
            identifiers: p.identifiers.iter().cloned().collect(),
            first_seen: p.first_seen,
            last_seen: p.last_seen,
            traits: p.traits.iter().map(|(k, e)| (k.clone(), e.value.clone(), (e.time, e.seq))).collect(),
            events,
        })
    }

    /// True when the live profile `id` satisfies `expr` at time `now_ms`.
    pub fn matches(
        &self,
        id: u64,
        expr: &Expr,
        now_ms: i64,
        schema: &Schema,
        catalog: &BTreeMap<String, String>,
    ) -> bool {
        match self.profiles.get(&id) {
            Some(p) => Evaluator::new(now_ms, schema, catalog).expr(p, expr, 0),
            None => false,
        }
    }

    /// The live profiles of `shard` that satisfy `expr`, in row order.
    pub fn members(
        &self,
        shard: usize,
        expr: &Expr,
        now_ms: i64,
        schema: &Schema,
        catalog: &BTreeMap<String, String>,
    ) -> Vec<u64> {
        let eval = Evaluator::new(now_ms, schema, catalog);
        self.live_on(shard).into_iter().filter(|(_, p)| eval.expr(p, expr, 0)).map(|(id, _)| id).collect()
    }

    /// How many live profiles of `shard` satisfy `expr`.
    pub fn count(
        &self,
        shard: usize,
        expr: &Expr,
        now_ms: i64,
        schema: &Schema,
        catalog: &BTreeMap<String, String>,
    ) -> u64 {
        self.members(shard, expr, now_ms, schema, catalog).len() as u64
    }

    /// Counts per value of a keyword, list or bool trait among the live
    /// profiles of `shard` that satisfy `expr`, sorted by value, without
    /// zero counts. Bools count as `"true"` and `"false"`.
    pub fn breakdown(
        &self,
        shard: usize,
        expr: &Expr,
        name: &str,
        now_ms: i64,
        schema: &Schema,
        catalog: &BTreeMap<String, String>,
    ) -> Vec<(String, u64)> {
        self.breakdown_of(&self.members(shard, expr, now_ms, schema, catalog), name)
    }

    /// Counts per value of a keyword, list or bool trait among the given
    /// live profiles, as [`Model::breakdown`] returns them.
    pub fn breakdown_of(&self, members: &[u64], name: &str) -> Vec<(String, u64)> {
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        for id in members {
            let p = &self.profiles[id];
            let values: Vec<String> = match p.traits.get(name).and_then(|e| e.value.as_ref()) {
                None => Vec::new(),
                Some(Value::Keyword(s)) => vec![s.clone()],
                Some(Value::List(items)) => items.clone(),
                Some(Value::Bool(b)) => vec![b.to_string()],
                Some(other) => panic!("the oracle cannot break down `{name}`: {other:?}"),
            };
            for v in values {
                *counts.entry(v).or_default() += 1;
            }
        }
        counts.into_iter().collect()
    }
}

/// Sorts events into a canonical order (time, name, properties) so that two
/// lists of events can be compared as multisets.
pub fn canonical_events(events: &mut [EventRecord]) {
    events.sort_by(|a, b| {
        (a.ts_ms, &a.name, format!("{:?}", a.properties)).cmp(&(
            b.ts_ms,
            &b.name,
            format!("{:?}", b.properties),
        ))
    });
}

/// How a predicate sees the field it tests.
enum Subject<'a> {
    /// The profile or event does not have the field.
    Missing,
    /// A trait, property, `first_seen` or `last_seen` value.
    Value(Value),
    /// The identifiers of one kind (possibly none).
    Ids(Vec<&'a str>),
}

/// Evaluates a parsed expression on one profile, following SEGMENTS.md.
struct Evaluator<'a> {
    now: i64,
    schema: &'a Schema,
    catalog: &'a BTreeMap<String, String>,
    /// Whether a profile (by shard and row) is in a saved segment, once
    /// worked out: a saved segment is a name bound to an expression, so its
    /// answer for one profile is the same wherever it is used. Without this,
    /// segments that use one another several times cost exponential time.
    segments: std::cell::RefCell<BTreeMap<(usize, u32, String), bool>>,
}

/// Saved segments nest at most this deep; deeper means a cycle, which the
/// checker should have refused.
const MAX_SEGMENT_DEPTH: usize = 32;

impl<'a> Evaluator<'a> {
    fn new(now: i64, schema: &'a Schema, catalog: &'a BTreeMap<String, String>) -> Self {
        Evaluator { now, schema, catalog, segments: Default::default() }
    }

    /// A segment over one profile; `depth` counts saved segments inlined.
    fn expr(&self, p: &ModelProfile, e: &Expr, depth: usize) -> bool {
        match e {
            // ALL is the universe: every live profile.
            Expr::All(_) => true,
            // NOT is the complement within the universe (two-valued logic).
            Expr::Not(x, _) => !self.expr(p, x, depth),
            Expr::And(v) => v.iter().all(|x| self.expr(p, x, depth)),
            Expr::Or(v) => v.iter().any(|x| self.expr(p, x, depth)),
            Expr::Predicate(pred) => self.profile_predicate(p, pred),
            Expr::Did(b) => {
                let in_window = |ts: i64| -> bool {
                    match b.window {
                        Window::AllTime => true,
                        Window::Last(len) => self.now.saturating_sub(len) <= ts && ts <= self.now,
                        Window::Since(t) => self.at(t) <= ts && ts <= self.now,
                        Window::Between(a, z) => self.at(a) <= ts && ts < self.at(z),
                    }
                };
                let count = p
                    .events
                    .iter()
                    .filter(|ev| ev.name == b.event && in_window(ev.ts_ms))
                    .filter(|ev| b.filter.as_deref().is_none_or(|f| self.event_filter(&b.event, ev, f)))
                    .count() as u64;
                match b.frequency {
                    Frequency::AtLeast(n) => count >= u64::from(n),
                    Frequency::AtMost(n) => count <= u64::from(n),
                    Frequency::Exactly(n) => count == u64::from(n),
                }
            }
            Expr::InSegment { name, .. } => {
                assert!(depth < MAX_SEGMENT_DEPTH, "saved segments nest too deeply at {name:?}");
                let key = (p.shard, p.row, name.clone());
                if let Some(&known) = self.segments.borrow().get(&key) {
                    return known;
                }
                let text = self.catalog.get(name).unwrap_or_else(|| panic!("no saved segment {name:?}"));
                let inner = parse(text).unwrap_or_else(|e| panic!("saved segment {name:?}: {e}"));
                let hit = self.expr(p, &inner, depth + 1);
                self.segments.borrow_mut().insert(key, hit);
                hit
            }
        }
    }

    /// A `WHERE` clause over one event's properties.
    fn event_filter(&self, event: &str, ev: &ModelEvent, e: &Expr) -> bool {
        match e {
            Expr::Not(x, _) => !self.event_filter(event, ev, x),
            Expr::And(v) => v.iter().all(|x| self.event_filter(event, ev, x)),
            Expr::Or(v) => v.iter().any(|x| self.event_filter(event, ev, x)),
            Expr::Predicate(pred) => {
                let declared = self
                    .schema
                    .property_type(event, &pred.name.text)
                    .unwrap_or_else(|| panic!("check accepted unknown property {:?}", pred.name.text));
                let subject = match ev.properties.get(&pred.name.text) {
                    Some(v) => {
                        assert_eq!(
                            v.trait_type(),
                            declared,
                            "property {:?} has another type",
                            pred.name.text
                        );
                        Subject::Value(v.clone())
                    }
                    None => Subject::Missing,
                };
                self.test(&subject, &pred.test)
            }
            other => panic!("the parser accepted {other:?} inside WHERE"),
        }
    }

    /// A predicate on a trait, an identifier, `first_seen` or `last_seen`.
    fn profile_predicate(&self, p: &ModelProfile, pred: &Predicate) -> bool {
        let name = pred.name.text.as_str();
        let field =
            self.schema.field(name).unwrap_or_else(|| panic!("check accepted the unknown name {name:?}"));
        let subject = match (field, name) {
            (FieldType::Identifier(kind), _) => Subject::Ids(p.ids(kind)),
            (_, "first_seen") => {
                p.first_seen.map_or(Subject::Missing, |t| Subject::Value(Value::Timestamp(t)))
            }
            (_, "last_seen") => p.last_seen.map_or(Subject::Missing, |t| Subject::Value(Value::Timestamp(t))),
            (FieldType::Trait(ty), _) => match p.traits.get(name).and_then(|e| e.value.clone()) {
                Some(v) => {
                    assert_eq!(v.trait_type(), ty, "trait {name:?} holds a value of another type");
                    Subject::Value(v)
                }
                None => Subject::Missing,
            },
        };
        self.test(&subject, &pred.test)
    }

    /// One test on one field. Every test but `NOT EXISTS` is false when the
    /// field is missing.
    fn test(&self, subject: &Subject<'_>, test: &Test) -> bool {
        match (subject, test) {
            (Subject::Ids(ids), Test::Exists { negated }) => ids.is_empty() == *negated,
            (Subject::Missing, Test::Exists { negated }) => *negated,
            (Subject::Value(_), Test::Exists { negated }) => !*negated,
            (Subject::Missing, _) => false,
            (Subject::Ids(ids), Test::Compare { op: CmpOp::Eq, value }) => {
                ids.iter().any(|id| *id == self.string(value))
            }
            (Subject::Ids(ids), Test::In { negated: false, values }) => {
                ids.iter().any(|id| values.iter().any(|v| *id == self.string(v)))
            }
            (Subject::Ids(_), other) => panic!("check accepted {other:?} on an identifier"),
            (Subject::Value(v), Test::Compare { op, value }) => match op {
                CmpOp::Eq => self.equals(v, value),
                CmpOp::Ne => !self.equals(v, value),
                CmpOp::Lt => self.order(v, value).is_lt(),
                CmpOp::Le => self.order(v, value).is_le(),
                CmpOp::Gt => self.order(v, value).is_gt(),
                CmpOp::Ge => self.order(v, value).is_ge(),
            },
            (Subject::Value(v), Test::In { negated, values }) => {
                values.iter().any(|x| self.equals(v, x)) != *negated
            }
            (Subject::Value(v), Test::Between { low, high }) => {
                self.order(v, low).is_ge() && self.order(v, high).is_le()
            }
            (Subject::Value(Value::List(items)), Test::Contains { value }) => {
                let want = self.string(value);
                items.iter().any(|x| x == want)
            }
            (Subject::Value(v), Test::Contains { .. }) => panic!("check accepted CONTAINS on {v:?}"),
        }
    }

    /// The text of a string literal.
    fn string<'l>(&self, lit: &'l Literal) -> &'l str {
        match &lit.value {
            LitValue::Str(s) => s,
            other => panic!("check accepted {other:?} where a string belongs"),
        }
    }

    /// The time of a timestamp literal: RFC 3339 or `NOW ± n unit`.
    fn time(&self, lit: &Literal) -> i64 {
        match &lit.value {
            LitValue::Str(s) => {
                parse_rfc3339_ms(s).unwrap_or_else(|| panic!("check accepted the time {s:?}"))
            }
            LitValue::Now { offset_ms } => self.now.saturating_add(*offset_ms),
            other => panic!("check accepted {other:?} as a time"),
        }
    }

    /// A time of a window clause.
    fn at(&self, t: TimeRef) -> i64 {
        match t {
            TimeRef::At(ms) => ms,
            TimeRef::Now(offset) => self.now.saturating_add(offset),
        }
    }

    /// Equality of a value and a literal: numbers as `f64`, timestamps in
    /// milliseconds, strings and bools exactly.
    fn equals(&self, v: &Value, lit: &Literal) -> bool {
        match (v, &lit.value) {
            (Value::Keyword(s) | Value::Text(s), LitValue::Str(l)) => s == l,
            (Value::Number(x), LitValue::Num(y)) => x == y,
            (Value::Bool(b), LitValue::Bool(l)) => b == l,
            (Value::Timestamp(t), _) => *t == self.time(lit),
            (v, l) => panic!("check accepted comparing {v:?} with {l:?}"),
        }
    }

    /// The order of a number or timestamp value against a literal.
    fn order(&self, v: &Value, lit: &Literal) -> std::cmp::Ordering {
        match (v, &lit.value) {
            (Value::Number(x), LitValue::Num(y)) => x.partial_cmp(y).expect("numbers are never NaN"),
            (Value::Timestamp(t), _) => t.cmp(&self.time(lit)),
            (v, l) => panic!("check accepted ordering {v:?} against {l:?}"),
        }
    }
}

/// The declared type of every trait, event and property the tests use.
pub fn test_schema() -> Schema {
    let mut s = Schema::new();
    for (name, ty) in [
        ("country", TraitType::Keyword),
        ("address.city", TraitType::Keyword),
        ("plan type", TraitType::Keyword),
        ("sku", TraitType::Keyword),
        ("email", TraitType::Text),
        ("age", TraitType::Number),
        ("ltv", TraitType::Number),
        ("newsletter", TraitType::Bool),
        ("signup_at", TraitType::Timestamp),
        ("tags", TraitType::List),
        (GROUPS, TraitType::List),
    ] {
        s.declare_trait(name, ty).expect("the test schema is consistent");
    }
    for (event, prop, ty) in [
        ("purchase", "amount", TraitType::Number),
        ("purchase", "category", TraitType::Keyword),
        ("purchase", "gift", TraitType::Bool),
        ("purchase", "items", TraitType::List),
        ("purchase", "delivered_at", TraitType::Timestamp),
        ("page", "path", TraitType::Keyword),
        ("page", "referrer", TraitType::Text),
        ("view", "sku", TraitType::Keyword),
    ] {
        s.declare_property(event, prop, ty).expect("the test schema is consistent");
    }
    s
}
