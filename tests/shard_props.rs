//! Property tests of the shard engine against the brute-force oracle of
//! `oracle/mod.rs`.
//!
//! Random batches of commands (writes with last-write-wins ties and late
//! older writes, `null` unsets, grow-only groups, events around a fixed
//! `now`, merges, removals and cross-shard moves) are applied to two shards
//! and to the oracle. Random segment *texts* from the whole grammar are then
//! compiled and evaluated both ways: count, membership of every live
//! profile, members in row order with paging, and breakdowns must agree.
//! Profiles read back from the shards must equal the oracle's.
//!
//! Failures found here are minimised by hand into `shard_regressions.rs`.

mod oracle;

use std::collections::BTreeMap;

use chrono::{DateTime, FixedOffset, SecondsFormat};
use cohort::model::{format_rfc3339_ms, num_key, IdentifierKind, Schema, TraitType, Value};
use cohort::segment::{check_save, compile, compile_many, is_normal, parse, CheckContext, Cond};
use cohort::shard::{snapshot, Command, EventWrite, ProfileWrite, RangeColumn, Shard};
use oracle::{canonical_events, test_schema, MergeTies, Model};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::{select, subsequence};
use proptest::strategy::Union;
use proptest::test_runner::TestCaseError;
use roaring::RoaringBitmap;

// ----- time ------------------------------------------------------------------

/// The query's `now`: 2026-03-15T12:00:00Z.
const NOW: i64 = 1_773_576_000_000;
const MINUTE: i64 = 60_000;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;
const WEEK: i64 = 7 * DAY;
/// Midnight (UTC) of the day of `NOW`.
const TODAY: i64 = NOW - NOW % DAY;
/// 2026-01-01T00:00:00Z.
const JAN1: i64 = 1_767_225_600_000;
/// 2026-03-31T23:59:59Z.
const MAR31_END: i64 = 1_775_001_599_000;

/// Times at the edges of windows and days, where off-by-one errors live.
const EDGE_TIMES: [i64; 22] = [
    NOW,
    NOW - 1,
    NOW + 1,
    NOW - MINUTE,
    NOW - HOUR,
    NOW - DAY,
    NOW - DAY - 1,
    NOW - DAY + 1,
    TODAY,
    TODAY - 1,
    TODAY + DAY,
    NOW - WEEK,
    NOW - WEEK - 1,
    NOW - 30 * DAY,
    NOW - 30 * DAY - 1,
    NOW - 90 * DAY,
    NOW + HOUR,
    NOW + 2 * DAY,
    JAN1,
    JAN1 - 1,
    // Before and at the epoch: negative days.
    -1,
    0,
];

/// Message times of trait writes: few, so that ties and late older writes
/// are frequent.
const TRAIT_TIMES: [i64; 5] = [NOW - 2 * DAY, NOW - DAY, NOW - HOUR, NOW, NOW + HOUR];

/// Values of the `signup_at` timestamp trait.
const SIGNUPS: [i64; 7] = [JAN1, JAN1 + 1, JAN1 - 1, MAR31_END, NOW - DAY, NOW, NOW + DAY];

// ----- value domains -----------------------------------------------------------

const COUNTRIES: &[&str] = &["FR", "BE", "DE", "l'île", "Zu\"rich"];
const COUNTRY_LITS: &[&str] = &["FR", "BE", "DE", "l'île", "Zu\"rich", "US", "fr"];
const CITIES: &[&str] = &["Lyon", "Paris"];
const CITY_LITS: &[&str] = &["Lyon", "Paris", "Nice"];
const PLANS: &[&str] = &["free", "pro"];
const PLAN_LITS: &[&str] = &["free", "pro", "team"];
const EMAILS: &[&str] = &["ann@x.io", "bob@x.io", "Ann@x.io"];
const EMAIL_LITS: &[&str] = &["ann@x.io", "bob@x.io", "Ann@x.io", "zed@x.io"];
const AGES: &[f64] = &[-1.0, -0.5, 0.0, -0.0, 1.0, 2.0, 2.5, 3.0, 4.0, 5.0];
const AGE_LITS: &[&str] = &[
    "-1", "-0.5", "0", "-0", "-0.0", "1", "2", "2.5", "2.50", "3", "4.0", "5", "30.5", "1e1", "1E0", "-100",
];
const LTVS: &[f64] = &[0.0, 9.99, 100.0, 500.5, 1e6, -3.25];
const LTV_LITS: &[&str] = &["0", "9.99", "10", "100", "500.5", "500", "1e6", "-3.25", "1000000.5"];
const TAGS: &[&str] = &["vip", "new", "churn"];
const TAG_LITS: &[&str] = &["vip", "new", "churn", "gold"];
const GROUP_IDS: &[&str] = &["g1", "g2", "g3"];
const GROUP_LITS: &[&str] = &["g1", "g2", "g3", "g9"];
const USER_IDS: &[&str] = &["u0", "u1", "u2", "u3", "u4"];
const USER_ID_LITS: &[&str] = &["u0", "u1", "u2", "u3", "u4", "u9"];
const ANON_IDS: &[&str] = &["a0", "a1", "a2", "a3", "a4", "a5"];
const ANON_ID_LITS: &[&str] = &["a0", "a1", "a2", "a3", "a4", "a5", "a9"];
const AMOUNTS: &[f64] = &[5.0, 50.0, 100.0, 100.5, 250.0];
const AMOUNT_LITS: &[&str] = &["5", "50", "99.99", "100", "100.5", "250", "0", "-1"];
const CATEGORIES: &[&str] = &["shoes", "hats", "bags"];
const CATEGORY_LITS: &[&str] = &["shoes", "hats", "bags", "socks"];
const PATHS: &[&str] = &["/", "/home", "/cart"];
const PATH_LITS: &[&str] = &["/", "/home", "/cart", "/none"];
const ITEMS: &[&str] = &["sock", "hat", "bag"];
const ITEM_LITS: &[&str] = &["sock", "hat", "bag", "shoe"];
const REFERRERS: &[&str] = &["google", "mail"];
const REFERRER_LITS: &[&str] = &["google", "mail", "ads"];

/// `NOW ± n unit` literals, in the spellings the grammar allows.
const NOW_FORMS: &[&str] = &[
    "NOW",
    "NOW - 1 DAY",
    "NOW - 1 DAYS",
    "NOW + 1 HOUR",
    "NOW -7 DAYS",
    "now - 30 days",
    "NOW - 60 MINUTES",
    "NOW - 1 MINUTE",
    "NOW - 2 WEEKS",
    "NOW + 0 MINUTES",
    "NOW + 1 DAY",
    "NOW - 90 DAYS",
    "NOW - 74 DAYS",
    "NOW-1 DAY",
    "NOW+1 HOUR",
];

/// Saved segments, some referring to others.
const SEGMENTS: &[(&str, &str)] = &[
    ("fr", r#"country = "FR""#),
    ("recent_buyers", r#"DID "purchase" IN LAST 30 DAYS"#),
    ("vip_fr", r#"IN SEGMENT "fr" AND tags CONTAINS "vip""#),
    ("not_buyers", r#"NOT IN SEGMENT "recent_buyers" OR age < 2"#),
    ("big_spenders", r#"DID "purchase" WHERE amount >= 100 AT LEAST 2 TIMES"#),
];

/// Traits the shard breaks down.
const BREAKDOWNS: &[&str] = &["country", "tags", "newsletter", "groups", "address.city", "plan type", "sku"];

/// The saved segments, by name.
fn catalog() -> BTreeMap<String, String> {
    SEGMENTS.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

// ----- commands ----------------------------------------------------------------

/// One step of a test: resolved against the live profiles when it runs.
#[derive(Clone, Debug)]
enum Op {
    /// A write to its profile's shard, or to `shard` when the profile is new.
    Write { shard: usize, write: ProfileWrite },
    /// Merge the `b`-th other profile of the `a`-th live profile's shard into it.
    Merge { a: usize, b: usize },
    /// Remove the `a`-th live profile.
    Remove { a: usize },
    /// Merge the `a`-th live profile into a profile id never used before.
    Rename { a: usize },
    /// Move the `a`-th live profile to the other shard, merging it there.
    Move { a: usize, into: MoveInto },
}

/// Which profile a moved profile is merged into on the other shard.
#[derive(Clone, Debug)]
enum MoveInto {
    /// The same profile id, new on that shard.
    Same,
    /// The `i`-th live profile of that shard (the same id when it has none).
    Existing(usize),
    /// A profile id never used before.
    Fresh,
}

/// A value, or `null` one time in six.
fn nullable(values: BoxedStrategy<Value>) -> BoxedStrategy<Option<Value>> {
    prop_oneof![1 => Just(None), 5 => values.prop_map(Some)].boxed()
}

/// A keyword value from `values`.
fn keyword(values: &'static [&'static str]) -> BoxedStrategy<Value> {
    select(values).prop_map(|s| Value::Keyword(s.to_string())).boxed()
}

/// A number value from `values`.
fn number(values: &'static [f64]) -> BoxedStrategy<Value> {
    select(values).prop_map(|x| Value::number(x).expect("test numbers are not NaN")).boxed()
}

/// One trait of a write: every type, with `null` one time in six.
fn trait_write() -> BoxedStrategy<(String, Option<Value>)> {
    let one = |name: &'static str, values: BoxedStrategy<Value>| {
        nullable(values).prop_map(move |v| (name.to_string(), v)).boxed()
    };
    Union::new(vec![
        one("country", keyword(COUNTRIES)),
        one("address.city", keyword(CITIES)),
        one("plan type", keyword(PLANS)),
        one("email", select(EMAILS).prop_map(|s| Value::Text(s.to_string())).boxed()),
        one("age", number(AGES)),
        one("ltv", number(LTVS)),
        one("newsletter", any::<bool>().prop_map(Value::Bool).boxed()),
        one("signup_at", select(&SIGNUPS[..]).prop_map(Value::Timestamp).boxed()),
        one(
            "tags",
            subsequence(TAGS, 0..=3).prop_map(|v| Value::list(v.into_iter().map(String::from))).boxed(),
        ),
    ])
    .boxed()
}

/// A user id or an anonymous id from small pools, so that profiles share them.
fn identifier() -> BoxedStrategy<(IdentifierKind, String)> {
    prop_oneof![
        select(USER_IDS).prop_map(|v| (IdentifierKind::UserId, v.to_string())),
        select(ANON_IDS).prop_map(|v| (IdentifierKind::AnonymousId, v.to_string())),
    ]
    .boxed()
}

/// Events with properties of every type, each property present or not.
fn event() -> BoxedStrategy<EventWrite> {
    let purchase = (
        option::weighted(0.8, select(AMOUNTS).prop_map(Value::Number)),
        option::weighted(0.8, keyword(CATEGORIES)),
        option::weighted(0.5, any::<bool>().prop_map(Value::Bool)),
        option::weighted(
            0.5,
            subsequence(ITEMS, 0..=2).prop_map(|v| Value::list(v.into_iter().map(String::from))),
        ),
        option::weighted(0.4, select(&EDGE_TIMES[..]).prop_map(Value::Timestamp)),
    )
        .prop_map(|(amount, category, gift, items, delivered_at)| {
            let properties = [("amount", amount), ("category", category), ("gift", gift), ("items", items)]
                .into_iter()
                .chain([("delivered_at", delivered_at)])
                .filter_map(|(name, v)| v.map(|v| (name.to_string(), v)))
                .collect();
            EventWrite { name: "purchase".to_string(), properties }
        });
    let page = (
        option::weighted(0.8, keyword(PATHS)),
        option::weighted(0.5, select(REFERRERS).prop_map(|r| Value::Text(r.to_string()))),
    )
        .prop_map(|(path, referrer)| EventWrite {
            name: "page".to_string(),
            properties: [("path", path), ("referrer", referrer)]
                .into_iter()
                .filter_map(|(name, v)| v.map(|v| (name.to_string(), v)))
                .collect(),
        });
    prop_oneof![3 => purchase, 2 => page].boxed()
}

/// Event times: window and day edges, or anywhere in the last 130 days and
/// the next 3.
fn event_time() -> BoxedStrategy<i64> {
    prop_oneof![3 => select(&EDGE_TIMES[..]), 2 => (NOW - 130 * DAY)..=(NOW + 3 * DAY)].boxed()
}

/// A write to one of `profiles` profiles: identifiers, traits, groups and an
/// event, at a trait time (few, so that ties happen) or an event time.
fn write(profiles: u64) -> BoxedStrategy<Op> {
    (
        0..profiles,
        prop_oneof![3 => Just(0usize), 2 => Just(1usize)],
        vec(identifier(), 0..=2),
        vec(trait_write(), 0..=3),
        option::weighted(0.2, subsequence(GROUP_IDS, 1..=2)),
        option::weighted(0.45, event()),
        select(&TRAIT_TIMES[..]),
        event_time(),
        prop::bool::weighted(0.2),
    )
        .prop_map(|(profile, shard, identifiers, traits, groups, event, trait_time, event_time, at_event)| {
            // One message sets each trait once: keep the last of duplicates.
            let mut by_name: BTreeMap<String, Option<Value>> = BTreeMap::new();
            for (name, value) in traits {
                by_name.insert(name, value);
            }
            let time_ms = if event.is_some() || at_event { event_time } else { trait_time };
            let write = ProfileWrite {
                profile,
                time_ms,
                // Given by `Model::stamp` when the write is applied.
                seq: 0,
                identifiers,
                traits: by_name.into_iter().collect(),
                add_to_lists: groups
                    .map(|g| vec![("groups".to_string(), g.into_iter().map(String::from).collect())])
                    .unwrap_or_default(),
                event,
            };
            Op::Write { shard, write }
        })
        .boxed()
}

/// One step: mostly writes, sometimes a merge, removal, rename or move.
fn op(profiles: u64) -> BoxedStrategy<Op> {
    let into = prop_oneof![
        Just(MoveInto::Same),
        any::<prop::sample::Index>().prop_map(|i| MoveInto::Existing(i.index(1 << 16))),
        Just(MoveInto::Fresh),
    ];
    prop_oneof![
        16 => write(profiles),
        2 => (any::<u16>(), any::<u16>()).prop_map(|(a, b)| Op::Merge { a: a.into(), b: b.into() }),
        1 => any::<u16>().prop_map(|a| Op::Remove { a: a.into() }),
        1 => any::<u16>().prop_map(|a| Op::Rename { a: a.into() }),
        2 => (any::<u16>(), into).prop_map(|(a, into)| Op::Move { a: a.into(), into }),
    ]
    .boxed()
}

/// Batches of steps over 40 profile ids.
fn batches() -> BoxedStrategy<Vec<Vec<Op>>> {
    vec(vec(op(40), 1..=12), 4..=14).boxed()
}

// ----- the two shards and the oracle --------------------------------------------

/// Two shards and the oracle that mirrors them.
struct World {
    shards: Vec<Shard>,
    model: Model,
    /// The last profile id handed out for a move into a fresh profile.
    fresh: u64,
}

/// When true, every shard starts by recording one event of each name with
/// every property (on a profile removed at once). Kept as a switch: with it
/// off (the default), properties first appear after older partitions exist,
/// which is the harder case.
const DECLARE_PROPERTIES_FIRST: bool = false;

/// The oracle breaks ties of time in merges as INGEST.md says: the write
/// ingested later wins, whichever profile it was applied to.
const MERGE_TIES: MergeTies = MergeTies::LaterApplied;

/// A value of type `ty`.
fn sample(ty: TraitType) -> Value {
    match ty {
        TraitType::Keyword => Value::Keyword("x".to_string()),
        TraitType::Text => Value::Text("x".to_string()),
        TraitType::Number => Value::Number(1.0),
        TraitType::Bool => Value::Bool(true),
        TraitType::Timestamp => Value::Timestamp(NOW),
        TraitType::List => Value::list(["x".to_string()]),
    }
}

/// The profile that declares the event properties; never used otherwise.
const DECLARING_PROFILE: u64 = 999_999;

impl World {
    /// Two empty shards and an empty oracle (but for the declared events).
    fn new() -> Self {
        let mut world =
            World { shards: vec![Shard::new(0), Shard::new(1)], model: Model::new(2), fresh: 1000 };
        world.model.merge_ties = MERGE_TIES;
        if DECLARE_PROPERTIES_FIRST {
            for s in 0..2 {
                let events = test_schema()
                    .events()
                    .map(|(name, props)| EventWrite {
                        name: name.to_string(),
                        properties: props.iter().map(|(p, ty)| (p.clone(), sample(*ty))).collect(),
                    })
                    .collect::<Vec<_>>();
                let mut cmds: Vec<Command> = events
                    .into_iter()
                    .map(|e| {
                        Command::Write(ProfileWrite {
                            profile: DECLARING_PROFILE,
                            time_ms: NOW,
                            event: Some(e),
                            ..ProfileWrite::default()
                        })
                    })
                    .collect();
                cmds.push(Command::Remove { profile: DECLARING_PROFILE });
                for cmd in &mut cmds {
                    world.model.stamp(cmd);
                    world.model.apply_on(s, cmd);
                }
                let out = world.shards[s].apply(&cmds);
                assert!(out.rejections.is_empty(), "declaring events: {:?}", out.rejections);
            }
        }
        world
    }

    /// Runs the batches on the shards and the oracle, then checks rows.
    fn run(&mut self, batches: &[Vec<Op>]) -> Result<(), TestCaseError> {
        for batch in batches {
            let mut pending: [Vec<Command>; 2] = Default::default();
            for op in batch {
                self.step(op, &mut pending)?;
            }
            self.flush(&mut pending)?;
        }
        self.check_rows()
    }

    /// The oracle's live profiles of `shard`, in row order.
    fn live_on(&self, shard: usize) -> Vec<u64> {
        self.model.live_on(shard).into_iter().map(|(id, _)| id).collect()
    }

    /// Resolves one step against the live profiles, applies it to the oracle
    /// and queues its command for its shard (a move is applied at once).
    fn step(&mut self, op: &Op, pending: &mut [Vec<Command>; 2]) -> Result<(), TestCaseError> {
        let live: Vec<u64> = self.model.profiles.keys().copied().collect();
        match op {
            Op::Write { shard, write } => {
                let s = self.model.profiles.get(&write.profile).map_or(*shard, |p| p.shard);
                let mut cmd = Command::Write(write.clone());
                self.model.stamp(&mut cmd);
                self.model.apply_on(s, &cmd);
                pending[s].push(cmd);
            }
            Op::Merge { a, b } => {
                if live.is_empty() {
                    return Ok(());
                }
                let into = live[a % live.len()];
                let s = self.model.profiles[&into].shard;
                let others: Vec<u64> = self.live_on(s).into_iter().filter(|&p| p != into).collect();
                if others.is_empty() {
                    return Ok(());
                }
                let cmd = Command::Merge { into, from: others[b % others.len()] };
                self.model.apply_on(s, &cmd);
                pending[s].push(cmd);
            }
            Op::Remove { a } => {
                if live.is_empty() {
                    return Ok(());
                }
                let profile = live[a % live.len()];
                let s = self.model.profiles[&profile].shard;
                let cmd = Command::Remove { profile };
                self.model.apply_on(s, &cmd);
                pending[s].push(cmd);
            }
            Op::Rename { a } => {
                if live.is_empty() {
                    return Ok(());
                }
                let from = live[a % live.len()];
                let s = self.model.profiles[&from].shard;
                self.fresh += 1;
                let cmd = Command::Merge { into: self.fresh, from };
                self.model.apply_on(s, &cmd);
                pending[s].push(cmd);
            }
            Op::Move { a, into } => {
                if live.is_empty() {
                    return Ok(());
                }
                self.flush(pending)?;
                let profile = live[a % live.len()];
                let from = self.model.profiles[&profile].shard;
                let to = 1 - from;
                let into = match into {
                    MoveInto::Same => profile,
                    MoveInto::Existing(i) => {
                        let there = self.live_on(to);
                        if there.is_empty() {
                            profile
                        } else {
                            there[i % there.len()]
                        }
                    }
                    MoveInto::Fresh => {
                        self.fresh += 1;
                        self.fresh
                    }
                };
                // A cross-shard merge: read on one shard, remove there,
                // import on the other.
                let mut image = self.shards[from].read_profile(profile).expect("the profile is live");
                let mut got = image.clone();
                canonical_events(&mut got.events);
                let expected = self.model.expected_image(profile);
                prop_assert_eq!(
                    Some(got),
                    expected,
                    "profile {} read from shard {} to move it",
                    profile,
                    from
                );
                image.profile = into;
                let mut one = [vec![Command::Remove { profile }], vec![]];
                if from == 1 {
                    one.swap(0, 1);
                }
                self.flush(&mut one)?;
                let mut other = [vec![], vec![Command::Import(image)]];
                if to == 0 {
                    other.swap(0, 1);
                }
                self.flush(&mut other)?;
                prop_assert!(self.model.transfer(profile, to, into));
            }
        }
        Ok(())
    }

    /// Applies the pending batches, checks that nothing was rejected, and
    /// validates every shard that changed.
    fn flush(&mut self, pending: &mut [Vec<Command>; 2]) -> Result<(), TestCaseError> {
        for (s, cmds) in pending.iter_mut().enumerate() {
            if cmds.is_empty() {
                continue;
            }
            let out = self.shards[s].apply(cmds);
            prop_assert!(
                out.rejections.is_empty(),
                "shard {} rejected {:?} of {:?}",
                s,
                out.rejections,
                cmds
            );
            prop_assert_eq!(out.applied, cmds.len());
            if let Err(e) = self.shards[s].validate() {
                prop_assert!(false, "shard {} invalid after a batch: {}", s, e);
            }
            cmds.clear();
        }
        Ok(())
    }

    /// Every shard holds exactly the oracle's live profiles, at its rows.
    fn check_rows(&self) -> Result<(), TestCaseError> {
        for (s, shard) in self.shards.iter().enumerate() {
            let live = self.model.live_on(s);
            prop_assert_eq!(shard.len(), live.len() as u64, "live profiles on shard {}", s);
            for (id, p) in live {
                prop_assert_eq!(shard.row_of(id), Some(p.row), "row of profile {} on shard {}", id, s);
            }
        }
        Ok(())
    }

    /// Every live profile reads back as the oracle has it.
    fn check_read_back(&self) -> Result<(), TestCaseError> {
        for (s, shard) in self.shards.iter().enumerate() {
            for (id, _) in self.model.live_on(s) {
                let mut got = shard.read_profile(id);
                if let Some(image) = got.as_mut() {
                    canonical_events(&mut image.events);
                }
                prop_assert_eq!(got, self.model.expected_image(id), "profile {} on shard {}", id, s);
            }
        }
        Ok(())
    }

    /// Compiles `text`, checks that `full` (the same expression with every
    /// node in parentheses) compiles to the same condition, and compares
    /// every way of reading the shards with the oracle. Pages of members
    /// are read `page_sizes` at a time.
    fn check_query(&self, text: &str, full: &str, page_sizes: &[usize]) -> Result<(), TestCaseError> {
        self.check_query_in(text, full, page_sizes, &catalog())
    }

    /// [`Self::check_query`] over the saved segments of `catalog`.
    fn check_query_in(
        &self,
        text: &str,
        full: &str,
        page_sizes: &[usize],
        catalog: &BTreeMap<String, String>,
    ) -> Result<(), TestCaseError> {
        let schema = test_schema();
        let ctx = CheckContext { schema: &schema, catalog, now_ms: NOW };
        let cond = match compile(text, &ctx) {
            Ok(c) => c,
            Err(e) => return Err(TestCaseError::fail(format!("check refused {text:?}: {e}"))),
        };
        match compile(full, &ctx) {
            Ok(c) => prop_assert_eq!(&c, &cond, "{:?} and {:?} compile differently", full, text),
            Err(e) => return Err(TestCaseError::fail(format!("check refused {full:?}: {e}"))),
        }
        prop_assert!(is_normal(&cond), "not normal: {:?} from {:?}", cond, text);
        let expr = parse(text).expect("it compiled");
        for (s, shard) in self.shards.iter().enumerate() {
            self.check_on(s, shard, text, &cond, &expr, &schema, catalog, page_sizes)?;
        }
        Ok(())
    }

    /// Compiles `texts` together, as the planner compiles the expressions
    /// of one request (the saved segments they share become one node for
    /// all of them), and compares the counts and the memberships of every
    /// live profile, each computed for all the texts at once, with the
    /// oracle's.
    fn check_together(
        &self,
        texts: &[String],
        catalog: &BTreeMap<String, String>,
    ) -> Result<(), TestCaseError> {
        let schema = test_schema();
        let ctx = CheckContext { schema: &schema, catalog, now_ms: NOW };
        let conds = compile_many(texts, &ctx)
            .map_err(|(i, e)| TestCaseError::fail(format!("check refused {:?}: {e}", texts[i])))?;
        for c in &conds {
            prop_assert!(is_normal(c), "not normal: {:?}", c);
        }
        let exprs: Vec<_> = texts.iter().map(|t| parse(t).expect("it compiled")).collect();
        for (s, shard) in self.shards.iter().enumerate() {
            let expected: Vec<Vec<u64>> =
                exprs.iter().map(|e| self.model.members(s, e, NOW, &schema, catalog)).collect();
            let counts: Vec<u64> = expected.iter().map(|m| m.len() as u64).collect();
            prop_assert_eq!(shard.count_all(&conds), counts, "counts on shard {} of {:?}", s, texts);
            for (id, p) in self.model.live_on(s) {
                let want: Vec<bool> = expected.iter().map(|m| m.contains(&id)).collect();
                prop_assert_eq!(
                    shard.row_matches_all(p.row, &conds),
                    want,
                    "memberships of profile {} on shard {} in {:?}",
                    id,
                    s,
                    texts
                );
            }
        }
        Ok(())
    }

    /// Compares one shard's answers for `cond` with the oracle's for `expr`.
    #[allow(clippy::too_many_arguments)]
    fn check_on(
        &self,
        s: usize,
        shard: &Shard,
        text: &str,
        cond: &Cond,
        expr: &cohort::segment::ast::Expr,
        schema: &Schema,
        catalog: &BTreeMap<String, String>,
        page_sizes: &[usize],
    ) -> Result<(), TestCaseError> {
        let expected = self.model.members(s, expr, NOW, schema, catalog);
        let expected_set: std::collections::BTreeSet<u64> = expected.iter().copied().collect();
        for (id, p) in self.model.live_on(s) {
            let want = expected_set.contains(&id);
            prop_assert_eq!(
                shard.row_matches(p.row, cond),
                want,
                "row_matches of profile {} (row {}) on shard {} for {:?}",
                id,
                p.row,
                s,
                text
            );
        }
        prop_assert_eq!(shard.count(cond), expected.len() as u64, "count on shard {} for {:?}", s, text);
        prop_assert_eq!(shard.eval(cond).len(), expected.len() as u64, "eval on shard {} for {:?}", s, text);
        let rows = shard.members(cond, None, usize::MAX);
        prop_assert!(rows.windows(2).all(|w| w[0] < w[1]), "members not in row order: {:?}", rows);
        let ids: Vec<u64> = rows.iter().map(|&r| shard.profile_of(r)).collect();
        prop_assert_eq!(&ids, &expected, "members on shard {} for {:?}", s, text);
        for &k in page_sizes {
            let mut paged = Vec::new();
            let mut after = None;
            loop {
                let page = shard.members(cond, after, k);
                prop_assert!(page.len() <= k, "a page of {} holds {} rows", k, page.len());
                match page.last() {
                    Some(&last) => after = Some(last),
                    None => break,
                }
                paged.extend(page);
                prop_assert!(paged.len() <= rows.len(), "paging by {} does not end", k);
            }
            prop_assert_eq!(&paged, &rows, "members by pages of {} on shard {} for {:?}", k, s, text);
        }
        for name in BREAKDOWNS {
            let mut got = match shard.breakdown(cond, name) {
                Ok(b) => b,
                Err(e) => return Err(TestCaseError::fail(format!("breakdown of {name}: {e}"))),
            };
            got.sort();
            let want = self.model.breakdown_of(&expected, name);
            prop_assert_eq!(got, want, "breakdown of {} on shard {} for {:?}", name, s, text);
        }
        Ok(())
    }
}

// ----- expressions --------------------------------------------------------------

/// A segment expression as generated, rendered to text in two ways: with as
/// few parentheses as the grammar needs, and with every node in
/// parentheses. Both must compile to the same condition.
#[derive(Clone, Debug)]
enum G {
    /// A predicate, `ALL` or `IN SEGMENT`, as text.
    Atom(String),
    /// A behaviour.
    Did(Box<DidG>),
    /// `NOT`.
    Not(Box<G>),
    /// `AND` of two or more.
    And(Vec<G>),
    /// `OR` of two or more.
    Or(Vec<G>),
}

/// `DID "event" [WHERE filter] [frequency] [window]`.
#[derive(Clone, Debug)]
struct DidG {
    event: &'static str,
    filter: Option<G>,
    frequency: String,
    window: String,
}

impl DidG {
    /// True when the `WHERE` clause would swallow a following `AND`/`OR`.
    fn is_open(&self) -> bool {
        self.filter.is_some() && self.frequency.is_empty() && self.window.is_empty()
    }

    /// The behaviour's text; with `full`, its filter fully parenthesised.
    fn render(&self, full: bool) -> String {
        let mut parts = vec![format!("DID {}", dq(self.event))];
        if let Some(f) = &self.filter {
            parts.push(format!("WHERE {}", if full { f.full() } else { f.minimal() }));
        }
        parts.extend([self.frequency.clone(), self.window.clone()].into_iter().filter(|s| !s.is_empty()));
        parts.join(" ")
    }
}

impl G {
    /// How tightly the node binds: `OR` 1, `AND` 2, `NOT` 3, atoms 4.
    fn precedence(&self) -> u8 {
        match self {
            G::Or(_) => 1,
            G::And(_) => 2,
            G::Not(_) => 3,
            G::Atom(_) | G::Did(_) => 4,
        }
    }

    /// The text with only the parentheses the grammar needs.
    fn minimal(&self) -> String {
        self.min(0, true)
    }

    /// `need` is the least precedence that stands here without parentheses;
    /// `last` is true when nothing but `)` or the end follows.
    fn min(&self, need: u8, last: bool) -> String {
        let open = matches!(self, G::Did(d) if d.is_open());
        let wrap = self.precedence() < need || (open && !last);
        let inner_last = wrap || last;
        let join = |items: &[G], need: u8, sep: &str| {
            let n = items.len();
            items
                .iter()
                .enumerate()
                .map(|(i, g)| g.min(need, inner_last && i + 1 == n))
                .collect::<Vec<_>>()
                .join(sep)
        };
        let text = match self {
            G::Atom(s) => s.clone(),
            G::Did(d) => d.render(false),
            G::Not(x) => format!("NOT {}", x.min(3, inner_last)),
            G::And(items) => join(items, 2, " AND "),
            G::Or(items) => join(items, 1, " OR "),
        };
        if wrap {
            format!("({text})")
        } else {
            text
        }
    }

    /// The text with every node in parentheses and keywords in lower case.
    fn full(&self) -> String {
        let join = |items: &[G], sep: &str| items.iter().map(G::full).collect::<Vec<_>>().join(sep);
        match self {
            G::Atom(s) => format!("({s})"),
            G::Did(d) => format!("({})", d.render(true)),
            G::Not(x) => format!("(not {})", x.full()),
            G::And(items) => format!("({})", join(items, " and ")),
            G::Or(items) => format!("({})", join(items, " or ")),
        }
    }
}

/// `s` in double quotes, escaped.
fn dq(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// `s` in single quotes, escaped.
fn sq(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// A string literal, in double or single quotes.
fn string_lit(values: &'static [&'static str]) -> BoxedStrategy<String> {
    (select(values), any::<bool>()).prop_map(|(v, single)| if single { sq(v) } else { dq(v) }).boxed()
}

/// A timestamp literal: RFC 3339 in UTC or with an offset, or `NOW ± n unit`.
fn time_lit() -> BoxedStrategy<String> {
    let points: Vec<i64> = EDGE_TIMES.iter().chain(SIGNUPS.iter()).copied().collect();
    let rfc = (select(points), 0..3u8).prop_map(|(ms, form)| match form {
        0 => dq(&format_rfc3339_ms(ms)),
        1 => {
            let t = DateTime::from_timestamp_millis(ms).expect("test times are in range");
            let east = FixedOffset::east_opt(3600).expect("one hour is a valid offset");
            dq(&t.with_timezone(&east).to_rfc3339_opts(SecondsFormat::AutoSi, false))
        }
        _ => sq(&format_rfc3339_ms(ms)),
    });
    prop_oneof![3 => rfc, 2 => select(NOW_FORMS).prop_map(String::from)].boxed()
}

/// A number literal as written in `values`.
fn number_lit(values: &'static [&'static str]) -> BoxedStrategy<String> {
    select(values).prop_map(String::from).boxed()
}

/// A name, sometimes in backticks; always in backticks when it is not a
/// bare name of the grammar.
fn field(name: &'static str) -> BoxedStrategy<String> {
    let bare = name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
    if bare {
        prop_oneof![4 => Just(name.to_string()), 1 => Just(format!("`{name}`"))].boxed()
    } else {
        Just(format!("`{name}`")).boxed()
    }
}

/// One to three literals separated by commas, for `IN (...)`.
fn list_of(lits: BoxedStrategy<String>) -> BoxedStrategy<String> {
    vec(lits, 1..=3).prop_map(|v| v.join(", ")).boxed()
}

/// `name` followed by one of `tests`.
fn pred(name: &'static str, tests: BoxedStrategy<String>) -> BoxedStrategy<String> {
    (field(name), tests).prop_map(|(n, t)| format!("{n} {t}")).boxed()
}

/// `EXISTS` or `NOT EXISTS`, in either case.
fn exists() -> BoxedStrategy<String> {
    prop_oneof![Just("EXISTS".to_string()), Just("NOT EXISTS".to_string()), Just("exists".to_string())]
        .boxed()
}

/// Keyword and text: `=`, `!=`, `IN`, `NOT IN`, `EXISTS`, `NOT EXISTS`.
fn string_pred(name: &'static str, values: &'static [&'static str]) -> BoxedStrategy<String> {
    string_pred_of(name, string_lit(values))
}

/// Keyword and text predicates with literals from `lit`.
fn string_pred_of(name: &'static str, lit: BoxedStrategy<String>) -> BoxedStrategy<String> {
    pred(
        name,
        prop_oneof![
            lit.clone().prop_map(|l| format!("= {l}")),
            lit.clone().prop_map(|l| format!("!= {l}")),
            list_of(lit.clone()).prop_map(|l| format!("IN ({l})")),
            list_of(lit).prop_map(|l| format!("NOT IN ({l})")),
            exists(),
        ]
        .boxed(),
    )
}

/// Numbers and timestamps: every operator.
fn ordered_pred(name: &'static str, lit: BoxedStrategy<String>) -> BoxedStrategy<String> {
    let cmp =
        (select(&["=", "!=", "<", "<=", ">", ">="][..]), lit.clone()).prop_map(|(op, l)| format!("{op} {l}"));
    pred(
        name,
        prop_oneof![
            4 => cmp,
            1 => list_of(lit.clone()).prop_map(|l| format!("IN ({l})")),
            1 => list_of(lit.clone()).prop_map(|l| format!("NOT IN ({l})")),
            2 => (lit.clone(), lit).prop_map(|(a, b)| format!("BETWEEN {a} AND {b}")),
            1 => exists(),
        ]
        .boxed(),
    )
}

/// Bools: `=`, `!=`, `EXISTS`, `NOT EXISTS`.
fn bool_pred(name: &'static str) -> BoxedStrategy<String> {
    let lit = select(&["TRUE", "FALSE", "true", "False"][..]);
    pred(
        name,
        prop_oneof![(select(&["=", "!="][..]), lit).prop_map(|(op, l)| format!("{op} {l}")), exists(),]
            .boxed(),
    )
}

/// Lists: `CONTAINS`, `EXISTS`, `NOT EXISTS`.
fn list_pred(name: &'static str, values: &'static [&'static str]) -> BoxedStrategy<String> {
    let lit = string_lit(values);
    pred(name, prop_oneof![3 => lit.prop_map(|l| format!("CONTAINS {l}")), 1 => exists()].boxed())
}

/// Identifiers: `=`, `IN`, `EXISTS`, `NOT EXISTS`.
fn id_pred(name: &'static str, values: &'static [&'static str]) -> BoxedStrategy<String> {
    let lit = string_lit(values);
    pred(
        name,
        prop_oneof![
            lit.clone().prop_map(|l| format!("= {l}")),
            list_of(lit).prop_map(|l| format!("IN ({l})")),
            exists(),
        ]
        .boxed(),
    )
}

/// `NOT`, `AND` and `OR` over `leaf`, up to `depth` levels.
fn tree(leaf: BoxedStrategy<G>, depth: u32) -> BoxedStrategy<G> {
    leaf.prop_recursive(depth, 12, 3, |inner| {
        prop_oneof![
            inner.clone().prop_map(|g| G::Not(Box::new(g))),
            vec(inner.clone(), 2..=3).prop_map(G::And),
            vec(inner, 2..=3).prop_map(G::Or),
        ]
    })
    .boxed()
}

/// Every frequency form with counts 0 to 3, or none.
fn frequency() -> BoxedStrategy<String> {
    prop_oneof![
        3 => Just(String::new()),
        1 => (0..=3u32).prop_map(|n| format!("AT LEAST {n} TIMES")),
        1 => (0..=3u32).prop_map(|n| format!("AT MOST {n} TIMES")),
        1 => (0..=3u32).prop_map(|n| format!("EXACTLY {n} TIMES")),
        1 => (0..=3u32).prop_map(|n| format!("at least {n} time")),
    ]
    .boxed()
}

/// Every window form (`IN LAST`, `SINCE`, `BETWEEN`), or none.
fn window() -> BoxedStrategy<String> {
    let last = (
        select(&[0u32, 1, 2, 7, 30, 90, 100][..]),
        select(&["MINUTE", "MINUTES", "HOUR", "HOURS", "DAY", "DAYS", "WEEK", "WEEKS", "days"][..]),
    )
        .prop_map(|(n, unit)| format!("IN LAST {n} {unit}"));
    prop_oneof![
        2 => Just(String::new()),
        3 => last,
        1 => time_lit().prop_map(|t| format!("SINCE {t}")),
        1 => (time_lit(), time_lit()).prop_map(|(a, b)| format!("BETWEEN {a} AND {b}")),
    ]
    .boxed()
}

/// A behaviour on `purchase` or `page`, with or without `WHERE`.
fn did() -> BoxedStrategy<G> {
    let purchase_leaf = prop_oneof![
        3 => ordered_pred("amount", number_lit(AMOUNT_LITS)),
        3 => string_pred("category", CATEGORY_LITS),
        1 => bool_pred("gift"),
        1 => list_pred("items", ITEM_LITS),
        1 => ordered_pred("delivered_at", time_lit()),
    ]
    .prop_map(G::Atom)
    .boxed();
    let page_leaf =
        prop_oneof![2 => string_pred("path", PATH_LITS), 1 => string_pred("referrer", REFERRER_LITS)]
            .prop_map(G::Atom)
            .boxed();
    let one = |event: &'static str, filter: BoxedStrategy<G>| {
        (option::weighted(0.5, tree(filter, 2)), frequency(), window()).prop_map(
            move |(filter, frequency, window)| G::Did(Box::new(DidG { event, filter, frequency, window })),
        )
    };
    prop_oneof![3 => one("purchase", purchase_leaf), 2 => one("page", page_leaf)].boxed()
}

/// A predicate on any trait or identifier, `ALL`, `IN SEGMENT` or a behaviour.
fn profile_atom() -> BoxedStrategy<G> {
    let names: Vec<&'static str> = SEGMENTS.iter().map(|(n, _)| *n).collect();
    let atoms = Union::new_weighted(vec![
        (2, string_pred("country", COUNTRY_LITS)),
        (1, string_pred("email", EMAIL_LITS)),
        (1, string_pred("address.city", CITY_LITS)),
        (1, string_pred("plan type", PLAN_LITS)),
        (2, ordered_pred("age", number_lit(AGE_LITS))),
        (1, ordered_pred("ltv", number_lit(LTV_LITS))),
        (1, bool_pred("newsletter")),
        (1, ordered_pred("signup_at", time_lit())),
        (1, list_pred("tags", TAG_LITS)),
        (1, list_pred("groups", GROUP_LITS)),
        (1, id_pred("user_id", USER_ID_LITS)),
        (1, id_pred("anonymous_id", ANON_ID_LITS)),
        (1, ordered_pred("first_seen", time_lit())),
        (1, ordered_pred("last_seen", time_lit())),
        (1, prop_oneof![Just("ALL".to_string()), Just("all".to_string())].boxed()),
        (1, select(names).prop_map(|n| format!("IN SEGMENT {}", dq(n))).boxed()),
    ]);
    prop_oneof![3 => atoms.prop_map(G::Atom), 2 => did()].boxed()
}

/// A segment from the whole grammar.
fn expression() -> BoxedStrategy<G> {
    tree(profile_atom(), 3)
}

// ----- generated saved segments --------------------------------------------------

/// A reference to a saved segment, resolved by [`resolve`] once the case's
/// catalog is known.
fn seg_ref(i: u16) -> G {
    G::Atom(format!("@SEG{i}@"))
}

/// A profile atom or a reference to a saved segment.
fn atom_or_ref() -> BoxedStrategy<G> {
    prop_oneof![2 => profile_atom(), 1 => any::<u16>().prop_map(seg_ref)].boxed()
}

/// The body of a generated saved segment: a random expression over atoms
/// and saved segments, or a shape that uses one saved segment several
/// times (`s OR s`, `(s AND x) OR (s AND y)`, `NOT s AND (s OR x)`), so that
/// the compiled condition shares it.
fn segment_body() -> BoxedStrategy<G> {
    prop_oneof![
        3 => tree(atom_or_ref(), 2),
        1 => any::<u16>().prop_map(|i| G::Or(vec![seg_ref(i), seg_ref(i)])),
        2 => (any::<u16>(), profile_atom(), profile_atom())
            .prop_map(|(i, x, y)| G::Or(vec![G::And(vec![seg_ref(i), x]), G::And(vec![seg_ref(i), y])])),
        1 => (any::<u16>(), atom_or_ref())
            .prop_map(|(i, x)| G::And(vec![G::Not(Box::new(seg_ref(i))), G::Or(vec![seg_ref(i), x])])),
    ]
    .boxed()
}

/// `text` with every `@SEGi@` replaced by `IN SEGMENT` of one of `names`:
/// the last one (the most nested) for even `i`, else any.
fn resolve(text: &str, names: &[String]) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("@SEG") {
        out.push_str(&rest[..at]);
        let tail = &rest[at + 4..];
        let end = tail.find('@').expect("a marker ends with @");
        let i: usize = tail[..end].parse().expect("a marker holds a number");
        let name = if i % 2 == 0 { &names[names.len() - 1] } else { &names[i % names.len()] };
        out.push_str(&format!("IN SEGMENT {}", dq(name)));
        rest = &tail[end + 1..];
    }
    out.push_str(rest);
    out
}

/// The fixed saved segments and `gen0`, `gen1`, ... whose bodies are
/// `bodies`, each over the segments before it, every one saved in order
/// with [`check_save`] as CreateSegment saves it.
fn generated_catalog(bodies: &[G]) -> Result<BTreeMap<String, String>, TestCaseError> {
    let schema = test_schema();
    let mut catalog = catalog();
    let mut names: Vec<String> = SEGMENTS.iter().map(|(n, _)| n.to_string()).collect();
    for (k, body) in bodies.iter().enumerate() {
        let name = format!("gen{k}");
        let text = resolve(&body.minimal(), &names);
        let ctx = CheckContext { schema: &schema, catalog: &catalog, now_ms: NOW };
        check_save(&name, &text, &ctx)
            .map_err(|e| TestCaseError::fail(format!("saving {name} {text:?}: {e}")))?;
        catalog.insert(name.clone(), text);
        names.push(name);
    }
    Ok(catalog)
}

// ----- the properties -----------------------------------------------------------

/// `cases` cases, or as many as `PROPTEST_CASES` says (for longer runs).
fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(cases);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(config(96))]

    /// Count, membership, members (whole and paged), eval and breakdowns of
    /// random segments agree with the oracle on both shards.
    #[test]
    fn queries_agree_with_oracle(batches in batches(), exprs in vec(expression(), 1..=6)) {
        let mut world = World::new();
        world.run(&batches)?;
        for g in &exprs {
            world.check_query(&g.minimal(), &g.full(), &[1, 2, 3])?;
        }
    }

    /// Saved segments generated for the case, nested and using one another
    /// several times (shared nodes of the compiled DAG), agree with the
    /// oracle, one query at a time and compiled together.
    #[test]
    fn saved_segments_agree_with_oracle(
        batches in batches(),
        bodies in vec(segment_body(), 1..=7),
        exprs in vec(tree(atom_or_ref(), 2), 1..=4),
    ) {
        let mut world = World::new();
        world.run(&batches)?;
        let catalog = generated_catalog(&bodies)?;
        let names: Vec<String> = catalog.keys().filter(|n| n.starts_with("gen")).cloned().collect();
        // The most nested generated segment last, so that even markers
        // refer to it.
        let mut names = names;
        names.sort_by_key(|n| n[3..].parse::<usize>().unwrap_or(0));
        let mut texts = Vec::new();
        for g in &exprs {
            let (text, full) = (resolve(&g.minimal(), &names), resolve(&g.full(), &names));
            world.check_query_in(&text, &full, &[2], &catalog)?;
            texts.push(text);
        }
        // Every generated segment on its own and negated, as GetProfile
        // and Check use them, compiled together.
        for n in &names {
            texts.push(format!("IN SEGMENT {}", dq(n)));
            texts.push(format!("NOT IN SEGMENT {}", dq(n)));
        }
        world.check_together(&texts, &catalog)?;
    }

    /// Every live profile reads back from its shard as the oracle has it:
    /// traits with their times, identifiers, first and last seen, events.
    #[test]
    fn profiles_read_back(batches in batches()) {
        let mut world = World::new();
        world.run(&batches)?;
        world.check_read_back()?;
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// Every expression of the grammar that the generator builds checks,
    /// compiles to the normal form, and means the same with every node in
    /// parentheses.
    #[test]
    fn normal_form_is_normal(g in expression()) {
        let schema = test_schema();
        let catalog = catalog();
        let ctx = CheckContext { schema: &schema, catalog: &catalog, now_ms: NOW };
        let text = g.minimal();
        let cond = compile(&text, &ctx).map_err(|e| TestCaseError::fail(format!("{text:?}: {e}")))?;
        prop_assert!(is_normal(&cond), "not normal: {:?} from {:?}", cond, text);
        let full = compile(&g.full(), &ctx).map_err(|e| TestCaseError::fail(format!("{:?}: {e}", g.full())))?;
        prop_assert_eq!(full, cond);
    }
}

// ----- many rows: the range index ----------------------------------------------

/// Writes of numbers and timestamps to many profiles, so that the range
/// index splits and merges its bins.
fn bulk_writes(profiles: u64, ops: std::ops::Range<usize>) -> BoxedStrategy<Vec<Op>> {
    let value = prop_oneof![
        1 => Just(("age".to_string(), None)),
        6 => (0..=80i32, 0..4u8).prop_map(|(n, f)| {
            ("age".to_string(), Value::number(f64::from(n) + f64::from(f) * 0.25))
        }),
        6 => (-1000i64..=1_000_000).prop_map(|n| ("ltv".to_string(), Value::number(n as f64 / 100.0))),
        3 => (0i64..2000).prop_map(|n| ("signup_at".to_string(), Some(Value::Timestamp(JAN1 + n * HOUR)))),
    ];
    let w =
        (0..profiles, vec(value, 1..=3), select(&TRAIT_TIMES[..])).prop_map(|(profile, traits, time_ms)| {
            Op::Write {
                shard: 0,
                write: ProfileWrite { profile, time_ms, traits, ..ProfileWrite::default() },
            }
        });
    vec(prop_oneof![30 => w, 1 => any::<u16>().prop_map(|a| Op::Remove { a: a.into() })], ops).boxed()
}

/// Ranges on numbers and timestamps, combined one level deep.
fn bulk_expression() -> BoxedStrategy<G> {
    let age_lits = (0..=84i32, 0..4u8).prop_map(|(n, f)| format!("{}", f64::from(n) + f64::from(f) * 0.25));
    let ltv_lits = (-1000i64..=1_000_000).prop_map(|n| format!("{}", n as f64 / 100.0));
    let atom = prop_oneof![
        ordered_pred("age", age_lits.boxed()),
        ordered_pred("ltv", ltv_lits.boxed()),
        ordered_pred("signup_at", time_lit()),
        ordered_pred("first_seen", time_lit()),
    ]
    .prop_map(G::Atom)
    .boxed();
    tree(atom, 1)
}

proptest! {
    #![proptest_config(config(16))]

    /// Ranges over hundreds of rows agree with the oracle.
    #[test]
    fn ranges_over_many_rows(ops in bulk_writes(900, 300..1500), exprs in vec(bulk_expression(), 1..=8)) {
        let mut world = World::new();
        world.run(&ops.chunks(64).map(<[Op]>::to_vec).collect::<Vec<_>>())?;
        for g in &exprs {
            world.check_query(&g.minimal(), &g.full(), &[97])?;
        }
    }
}

// ----- the range index alone ----------------------------------------------------

/// Keys with many duplicates (so that bins become pure) and keys spread
/// over the whole line.
fn range_key() -> BoxedStrategy<u64> {
    prop_oneof![
        3 => (0..=60i32).prop_map(|n| num_key(f64::from(n))),
        3 => (-1e6f64..1e6).prop_map(num_key),
        1 => Just(0u64),
        1 => Just(u64::MAX),
        1 => any::<u64>(),
    ]
    .boxed()
}

proptest! {
    #![proptest_config(config(6))]

    /// A range column with enough rows to reach its most bins (and merge
    /// them) answers ranges, range counts and estimates as a sorted map does.
    #[test]
    fn range_index_agrees_with_a_map(
        mut puts in vec((0u32..20_000, option::weighted(0.95, range_key())), 20_000..30_000),
        ranges in vec((range_key(), range_key()), 60),
        ascending in any::<bool>(),
    ) {
        if ascending {
            // Keys arriving in increasing order, as times do, keep splitting
            // the last bin and leave the most bins behind.
            puts.sort_by_key(|(_, k)| k.unwrap_or(u64::MAX));
        }
        let mut col = RangeColumn::default();
        let mut model: BTreeMap<u32, u64> = BTreeMap::new();
        for (i, (row, key)) in puts.iter().enumerate() {
            col.put(*row, *key);
            match key {
                Some(k) => model.insert(*row, *k),
                None => model.remove(row),
            };
            if i % 5000 == 4999 {
                if let Err(e) = col.validate() {
                    prop_assert!(false, "invalid after {} puts: {}", i + 1, e);
                }
            }
        }
        if let Err(e) = col.validate() {
            prop_assert!(false, "invalid at the end: {}", e);
        }
        for (row, key) in &model {
            prop_assert_eq!(col.get(*row), Some(*key));
        }
        prop_assert_eq!(col.present.len(), model.len() as u64);
        for (a, b) in ranges {
            for (lo, hi) in [(a.min(b), a.max(b)), (a, a), (a, b)] {
                let want: RoaringBitmap =
                    model.iter().filter(|(_, k)| lo <= **k && **k <= hi).map(|(r, _)| *r).collect();
                prop_assert_eq!(col.range(lo, hi), want.clone(), "range {}..={}", lo, hi);
                prop_assert_eq!(col.range_len(lo, hi), want.len(), "range_len {}..={}", lo, hi);
                prop_assert!(col.estimate(lo, hi) >= want.len(), "estimate {}..={} below the count", lo, hi);
            }
        }
    }
}

// ----- wide dictionaries and long texts ------------------------------------------

/// Distinct `sku` values: more than a one-byte dictionary code holds.
const SKUS: u32 = 700;
/// Distinct long `email` values: overwriting them makes garbage in the text
/// arena quickly, so that it is compacted.
const LONG_EMAILS: usize = 40;

/// The `i`-th value of `sku`.
fn sku(i: u32) -> String {
    format!("s{i}")
}

/// The `i`-th long email, a few kilobytes.
fn long_email(i: usize) -> String {
    format!("{}{i}@x.io", "e".repeat(2500 + i * 7))
}

/// Writes of a keyword trait and an event property with hundreds of values,
/// and of long texts.
fn wide_writes(profiles: u64, ops: std::ops::Range<usize>) -> BoxedStrategy<Vec<Op>> {
    let w = (
        0..profiles,
        option::of(0..SKUS),
        option::of(option::weighted(0.9, 0..LONG_EMAILS)),
        option::of((0..SKUS, event_time())),
        select(&TRAIT_TIMES[..]),
    )
        .prop_map(|(profile, sku_value, email, view, trait_time)| {
            let mut traits = Vec::new();
            if let Some(i) = sku_value {
                traits.push(("sku".to_string(), Some(Value::Keyword(sku(i)))));
            }
            if let Some(e) = email {
                traits.push(("email".to_string(), e.map(|i| Value::Text(long_email(i)))));
            }
            let (time_ms, event) = match view {
                Some((i, t)) => (
                    t,
                    Some(EventWrite {
                        name: "view".to_string(),
                        properties: vec![("sku".to_string(), Value::Keyword(sku(i)))],
                    }),
                ),
                None => (trait_time, None),
            };
            Op::Write {
                shard: 0,
                write: ProfileWrite { profile, time_ms, traits, event, ..ProfileWrite::default() },
            }
        });
    vec(prop_oneof![40 => w, 1 => any::<u16>().prop_map(|a| Op::Remove { a: a.into() })], ops).boxed()
}

/// Predicates on `sku` and the long emails, and behaviours filtering on `sku`.
fn wide_expression() -> BoxedStrategy<G> {
    let sku_lit = || (0..SKUS + 20).prop_map(|i| dq(&sku(i))).boxed();
    let email_lit = (0..LONG_EMAILS + 2).prop_map(|i| dq(&long_email(i))).boxed();
    let view =
        (string_pred_of("sku", sku_lit()), frequency(), window()).prop_map(|(filter, frequency, window)| {
            G::Did(Box::new(DidG { event: "view", filter: Some(G::Atom(filter)), frequency, window }))
        });
    let atom = prop_oneof![
        2 => string_pred_of("sku", sku_lit()).prop_map(G::Atom),
        1 => string_pred_of("email", email_lit).prop_map(G::Atom),
        2 => view,
    ]
    .boxed();
    tree(atom, 1)
}

proptest! {
    #![proptest_config(config(24))]

    /// Keyword traits and event properties with two-byte dictionary codes,
    /// and text traits whose arena is compacted, agree with the oracle.
    #[test]
    fn wide_values_agree_with_oracle(ops in wide_writes(300, 500..1500), exprs in vec(wide_expression(), 1..=6)) {
        let mut world = World::new();
        world.run(&ops.chunks(64).map(<[Op]>::to_vec).collect::<Vec<_>>())?;
        world.check_read_back()?;
        for g in &exprs {
            world.check_query(&g.minimal(), &g.full(), &[7])?;
        }
    }
}

/// A keyword trait and an event property with more values than two-byte
/// codes hold: the columns widen to four bytes and keep their answers.
#[test]
fn dictionary_codes_widen_to_four_bytes() -> Result<(), TestCaseError> {
    let n = 66_000u32;
    let mut world = World::new();
    let writes: Vec<Op> = (0..n)
        .map(|i| {
            let profile = u64::from(i % 1000);
            let event = (i % 7 == 0).then(|| EventWrite {
                name: "view".to_string(),
                properties: vec![("sku".to_string(), Value::Keyword(sku(i)))],
            });
            let traits = vec![("sku".to_string(), Some(Value::Keyword(sku(i))))];
            let write = ProfileWrite {
                profile,
                time_ms: NOW - i64::from(i),
                traits,
                event,
                ..ProfileWrite::default()
            };
            Op::Write { shard: 0, write }
        })
        .collect();
    world.run(&writes.chunks(4096).map(<[Op]>::to_vec).collect::<Vec<_>>())?;
    for text in [
        format!("sku = {}", dq(&sku(0))),
        format!("sku IN ({}, {}, {})", dq(&sku(254)), dq(&sku(65_534)), dq(&sku(65_535))),
        format!("sku NOT IN ({}, {})", dq(&sku(1)), dq(&sku(2))),
        format!(r#"DID "view" WHERE sku = {} OR sku = {}"#, dq(&sku(65_534)), dq(&sku(65_541))),
        format!(r#"DID "view" WHERE sku != {} AT LEAST 60 TIMES"#, dq(&sku(7))),
    ] {
        world.check_query(&text, &format!("({text})"), &[400])?;
    }
    Ok(())
}

// ----- snapshots ---------------------------------------------------------------------

proptest! {
    #![proptest_config(config(32))]

    /// A shard written to a snapshot and read back answers as before, reads
    /// back the same profiles, and goes on applying batches exactly as the
    /// original would have.
    #[test]
    fn snapshots_round_trip(first in batches(), then in batches(), exprs in vec(expression(), 1..=4)) {
        let mut world = World::new();
        world.run(&first)?;
        let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
        for s in 0..2 {
            let path = dir.path().join(format!("shard-{s}.snap"));
            snapshot::write(&world.shards[s], &path).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let back = snapshot::read(&path).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(back.id, world.shards[s].id);
            if let Err(e) = back.validate() {
                prop_assert!(false, "shard {} invalid after a snapshot round trip: {}", s, e);
            }
            world.shards[s] = back;
        }
        world.check_rows()?;
        world.check_read_back()?;
        for g in &exprs {
            world.check_query(&g.minimal(), &g.full(), &[2])?;
        }
        world.run(&then)?;
        world.check_read_back()?;
        for g in &exprs {
            world.check_query(&g.minimal(), &g.full(), &[2])?;
        }
    }
}
