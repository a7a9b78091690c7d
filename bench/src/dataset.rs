//! The benchmark dataset inside Cohort: schema, conversion of generated
//! profiles into shard commands, placement, and the parallel build.

use std::time::Instant;

use cohort::model::{IdentifierKind, Schema, TraitType, Value};
use cohort::shard::{Command, EventWrite, ProfileWrite, Shard};
use cohort_datagen::{profile, Config, Profile, Value as GenValue};

/// Commands per `Shard::apply` batch.
pub const BATCH: usize = 4096;

/// The shard of a profile id, "the way a node would": a multiplicative
/// (Fibonacci) hash of the id, bits 32..64, modulo the shard count.
/// `duckdb_mix.py` computes the same expression to order members pages.
pub fn shard_of(profile: u64, shards: u32) -> u32 {
    ((profile.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) % u64::from(shards.max(1))) as u32
}

/// The declared type of every trait of the dataset.
pub const TRAIT_TYPES: [(&str, TraitType); 9] = [
    ("country", TraitType::Keyword),
    ("city", TraitType::Keyword),
    ("age", TraitType::Number),
    ("plan", TraitType::Keyword),
    ("signup_at", TraitType::Timestamp),
    ("ltv", TraitType::Number),
    ("email", TraitType::Text),
    ("tags", TraitType::List),
    ("newsletter", TraitType::Bool),
];

/// Every event of the dataset and the types of its properties (strings are
/// keywords, numbers are numbers).
pub const EVENT_PROPERTIES: [(&str, &[(&str, TraitType)]); 6] = [
    ("page", &[("path", TraitType::Keyword), ("referrer", TraitType::Keyword)]),
    ("app_open", &[("platform", TraitType::Keyword)]),
    ("add_to_cart", &[("sku", TraitType::Keyword), ("price", TraitType::Number)]),
    (
        "purchase",
        &[("amount", TraitType::Number), ("category", TraitType::Keyword), ("currency", TraitType::Keyword)],
    ),
    ("email_open", &[("campaign", TraitType::Keyword)]),
    ("email_click", &[("campaign", TraitType::Keyword), ("link", TraitType::Keyword)]),
];

/// The declared schema: every trait with its type, every event with its
/// properties.
pub fn schema() -> Schema {
    let mut s = Schema::new();
    for (name, ty) in TRAIT_TYPES {
        s.declare_trait(name, ty).unwrap_or_else(|e| panic!("declaring {name}: {e}"));
    }
    for (event, props) in EVENT_PROPERTIES {
        s.declare_event(event);
        for (name, ty) in props {
            s.declare_property(event, name, *ty).unwrap_or_else(|e| panic!("declaring {event}.{name}: {e}"));
        }
    }
    s
}

fn declared_trait_type(name: &str) -> Option<TraitType> {
    TRAIT_TYPES.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// A generated trait value typed per the declared schema (`None` for a
/// value that does not fit, which the dataset never has).
pub fn convert_trait(name: &str, value: &GenValue) -> Option<Value> {
    let ty = declared_trait_type(name)?;
    match (ty, value) {
        (TraitType::Keyword, GenValue::Str(s)) => Some(Value::Keyword(s.to_string())),
        (TraitType::Text, GenValue::Str(s)) => Some(Value::Text(s.to_string())),
        (TraitType::Number, GenValue::Num(x)) => Value::number(*x),
        (TraitType::Bool, GenValue::Bool(b)) => Some(Value::Bool(*b)),
        (TraitType::Timestamp, GenValue::Time(ms)) => Some(Value::Timestamp(*ms)),
        (TraitType::List, GenValue::List(items)) => Some(Value::list(items.iter().map(|s| s.to_string()))),
        _ => None,
    }
}

/// A generated event property typed: strings are keywords, numbers numbers.
pub fn convert_property(value: &GenValue) -> Option<Value> {
    match value {
        GenValue::Str(s) => Some(Value::Keyword(s.to_string())),
        GenValue::Num(x) => Value::number(*x),
        GenValue::Bool(b) => Some(Value::Bool(*b)),
        GenValue::Time(ms) => Some(Value::Timestamp(*ms)),
        GenValue::List(items) => Some(Value::list(items.iter().map(|s| s.to_string()))),
    }
}

/// Appends the commands of one profile: one write with both identifiers and
/// every trait at the identify time, then one write per event at its time.
/// The profile id is the profile's index. Returns the number of events.
pub fn commands(p: &Profile, out: &mut Vec<Command>) -> usize {
    let traits = p
        .traits
        .iter()
        .map(|(name, v)| {
            let value = convert_trait(name, v);
            assert!(value.is_some(), "trait {name} = {v:?} does not fit the declared schema");
            ((*name).to_string(), value)
        })
        .collect();
    out.push(Command::Write(ProfileWrite {
        profile: p.index,
        time_ms: p.identify_ts_ms,
        identifiers: vec![
            (IdentifierKind::UserId, p.user_id.clone()),
            (IdentifierKind::AnonymousId, p.anonymous_id.clone()),
        ],
        traits,
        // `seq` (ingest order) stays 0: "the write applied later wins".
        ..ProfileWrite::default()
    }));
    for e in &p.events {
        let properties = e
            .properties
            .iter()
            .filter_map(|(name, v)| convert_property(v).map(|v| ((*name).to_string(), v)))
            .collect();
        out.push(Command::Write(ProfileWrite {
            profile: p.index,
            time_ms: e.ts_ms,
            event: Some(EventWrite { name: e.name.to_string(), properties }),
            ..ProfileWrite::default()
        }));
    }
    p.events.len()
}

/// What a build did.
#[derive(Clone, Debug, Default)]
pub struct BuildStats {
    /// Profiles written.
    pub profiles: u64,
    /// Events written.
    pub events: u64,
    /// Commands applied (profiles + events).
    pub commands: u64,
    /// Fields or commands the shards rejected (must be 0).
    pub rejections: u64,
    /// Wall-clock seconds, generation and apply together.
    pub secs: f64,
}

/// Builds `shards` shards holding profiles `0..cfg.profiles` on `threads`
/// threads. Thread `t` owns the shards `s` with `s % threads == t`: it
/// generates exactly the profiles placed on them (in increasing index, so a
/// shard's rows are in profile order), converts them into commands and
/// applies them in batches of [`BATCH`]. Generation and apply share the
/// thread, and the time is wall clock. `progress` is called from thread 0
/// with the fraction done.
pub fn build(
    cfg: &Config,
    shards: u32,
    threads: usize,
    progress: &(dyn Fn(f64) + Sync),
) -> (Vec<Shard>, BuildStats) {
    let shards = shards.max(1);
    let threads = threads.clamp(1, shards as usize);
    let start = Instant::now();
    let results: Vec<(Vec<Shard>, BuildStats)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    let owned: Vec<u32> = (0..shards).filter(|s| *s as usize % threads == t).collect();
                    let mut slot = vec![usize::MAX; shards as usize];
                    for (k, s) in owned.iter().enumerate() {
                        slot[*s as usize] = k;
                    }
                    let mut mine: Vec<Shard> = owned.iter().map(|s| Shard::new(*s)).collect();
                    let mut buffers: Vec<Vec<Command>> =
                        owned.iter().map(|_| Vec::with_capacity(BATCH + 32)).collect();
                    let mut stats = BuildStats::default();
                    let step = (cfg.profiles / 20).max(1);
                    let apply = |shard: &mut Shard, buf: &mut Vec<Command>, stats: &mut BuildStats| {
                        let outcome = shard.apply(buf);
                        stats.commands += outcome.applied as u64;
                        stats.rejections += outcome.rejections.len() as u64;
                        if let Some(r) = outcome.rejections.first() {
                            eprintln!("shard {}: rejected {}: {}", shard.id, r.field, r.reason);
                        }
                        buf.clear();
                    };
                    for i in 0..cfg.profiles {
                        if t == 0 && i % step == 0 && i > 0 {
                            progress(i as f64 / cfg.profiles as f64);
                        }
                        let s = shard_of(i, shards) as usize;
                        if s % threads != t {
                            continue;
                        }
                        let k = slot[s];
                        let p = profile(cfg, i);
                        stats.profiles += 1;
                        stats.events += commands(&p, &mut buffers[k]) as u64;
                        if buffers[k].len() >= BATCH {
                            apply(&mut mine[k], &mut buffers[k], &mut stats);
                        }
                    }
                    for (shard, buf) in mine.iter_mut().zip(buffers.iter_mut()) {
                        if !buf.is_empty() {
                            apply(shard, buf, &mut stats);
                        }
                    }
                    (mine, stats)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("build thread panicked")).collect()
    });
    let mut all: Vec<Shard> = Vec::with_capacity(shards as usize);
    let mut total = BuildStats::default();
    for (mine, stats) in results {
        all.extend(mine);
        total.profiles += stats.profiles;
        total.events += stats.events;
        total.commands += stats.commands;
        total.rejections += stats.rejections;
    }
    all.sort_by_key(|s| s.id);
    total.secs = start.elapsed().as_secs_f64();
    (all, total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_types_agree_with_the_generator() {
        for (name, ty) in cohort_datagen::schema() {
            let declared = declared_trait_type(name).map(TraitType::name);
            assert_eq!(declared, Some(ty), "{name}");
        }
        let p = profile(&Config::default(), 3);
        for (name, v) in &p.traits {
            assert!(convert_trait(name, v).is_some(), "{name}");
        }
    }

    #[test]
    fn small_build_places_every_profile_once() {
        let cfg = Config { profiles: 2_000, ..Config::default() };
        let (shards, stats) = build(&cfg, 4, 2, &|_| {});
        assert_eq!(stats.rejections, 0);
        assert_eq!(stats.profiles, 2_000);
        assert_eq!(shards.iter().map(Shard::len).sum::<u64>(), 2_000);
        for i in [0u64, 1, 999, 1_999] {
            let s = &shards[shard_of(i, 4) as usize];
            assert!(s.row_of(i).is_some(), "profile {i}");
        }
        let mut merged = schema();
        for s in &shards {
            merged.merge_from(&s.schema()).expect("shard schema agrees with the declared one");
        }
        assert_eq!(merged, schema());
    }
}
