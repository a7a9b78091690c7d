//! The embedded default's data: builds shards in-process from the synthetic
//! dataset of `tools/datagen`, the way a node places profiles on shards.
//!
//! This is a shortcut around ingestion for the demo, the benchmarks and the
//! tests: each generated profile becomes one `identify`-like write (its
//! identifiers and traits) and one write per event, already resolved to the
//! profile's id. Real messages go through identity resolution instead
//! (issue "The node").

use std::sync::Mutex;

use cohort_datagen::{Config, Profile, Value as GenValue};

use crate::model::{IdentifierKind, Schema, TraitType, Value};
use crate::shard::{Command, EventWrite, ProfileId, ProfileWrite, Shard};

/// Commands applied to a shard per batch while building.
pub const BUILD_BATCH: usize = 4096;

/// The shard of a profile, as the node places it
/// ([`crate::cluster::placement::shard_of`]).
pub fn shard_of(profile: ProfileId, shards: usize) -> usize {
    crate::cluster::placement::shard_of(profile, shards as u32) as usize
}

/// The profile id of the dataset's profile `index`: the identity directory
/// numbers profiles from 1, in the order it first sees them, and the
/// dataset's files hold profile after profile.
pub fn profile_id(index: u64) -> ProfileId {
    index + 1
}

/// The schema of the generated dataset: declared types for what cannot be
/// inferred (`email` is text, `signup_at` a timestamp), inferred ones for the
/// rest, and every event with its properties.
pub fn schema() -> Schema {
    let mut s = Schema::new();
    let traits = [
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
    for (name, ty) in traits {
        // The names are fixed and none is reserved.
        let _ = s.declare_trait(name, ty);
    }
    let events: [(&str, &[(&str, TraitType)]); 6] = [
        ("page", &[("path", TraitType::Keyword), ("referrer", TraitType::Keyword)]),
        ("app_open", &[("platform", TraitType::Keyword)]),
        ("add_to_cart", &[("sku", TraitType::Keyword), ("price", TraitType::Number)]),
        (
            "purchase",
            &[
                ("amount", TraitType::Number),
                ("category", TraitType::Keyword),
                ("currency", TraitType::Keyword),
            ],
        ),
        ("email_open", &[("campaign", TraitType::Keyword)]),
        ("email_click", &[("campaign", TraitType::Keyword), ("link", TraitType::Keyword)]),
    ];
    for (event, props) in events {
        s.declare_event(event);
        for (name, ty) in props {
            let _ = s.declare_property(event, name, *ty);
        }
    }
    s
}

/// Converts a generated value to the type the schema gives its name.
fn typed(ty: Option<TraitType>, v: &GenValue) -> Option<Value> {
    Some(match (ty, v) {
        (Some(TraitType::Text), GenValue::Str(s)) => Value::Text(s.to_string()),
        (_, GenValue::Str(s)) => Value::Keyword(s.to_string()),
        (_, GenValue::Num(x)) => Value::number(*x)?,
        (_, GenValue::Bool(b)) => Value::Bool(*b),
        (_, GenValue::List(items)) => Value::list(items.iter().map(|s| s.to_string())),
        (_, GenValue::Time(ms)) => Value::Timestamp(*ms),
    })
}

/// The commands that load one generated profile: one write with its
/// identifiers and traits at its identify time, then one per event.
pub fn profile_commands(schema: &Schema, p: &Profile) -> Vec<Command> {
    let id = profile_id(p.index);
    let mut out = Vec::with_capacity(1 + p.events.len());
    // Ingestion order: the dataset's file order, one identify then the
    // events, profile after profile (a profile has at most 21 messages).
    let seq = |k: u64| id * 32 + k;
    out.push(Command::Write(ProfileWrite {
        profile: id,
        time_ms: p.identify_ts_ms,
        seq: seq(0),
        identifiers: vec![
            (IdentifierKind::UserId, p.user_id.clone()),
            (IdentifierKind::AnonymousId, p.anonymous_id.clone()),
        ],
        traits: p
            .traits
            .iter()
            .map(|(name, v)| (name.to_string(), typed(schema.trait_type(name), v)))
            .collect(),
        add_to_lists: Vec::new(),
        event: None,
    }));
    for (k, e) in p.events.iter().enumerate() {
        out.push(Command::Write(ProfileWrite {
            profile: id,
            time_ms: e.ts_ms,
            seq: seq(k as u64 + 1),
            event: Some(EventWrite {
                name: e.name.to_string(),
                properties: e
                    .properties
                    .iter()
                    .filter_map(|(k, v)| Some((k.to_string(), typed(schema.property_type(e.name, k), v)?)))
                    .collect(),
            }),
            ..ProfileWrite::default()
        }));
    }
    out
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
    /// Fields or commands the shards rejected (0 for the generated data).
    pub rejections: u64,
    /// The first rejection, for the operator.
    pub first_rejection: Option<String>,
    /// Wall-clock seconds, generation and apply together.
    pub secs: f64,
}

/// Builds `shards` shards holding the first `cfg.profiles` profiles of the
/// dataset, on `threads` threads. Thread `t` owns the shards `s` with
/// `s % threads == t` and generates exactly the profiles placed on them, in
/// increasing index, applying them in batches of [`BUILD_BATCH`]: the result
/// does not depend on the thread count. Each shard ends with
/// [`Shard::shrink_to_fit`], as a bulk load should. `progress` is called
/// from thread 0 with the fraction done.
pub fn build(
    cfg: &Config,
    shards: usize,
    threads: usize,
    progress: &(dyn Fn(f64) + Sync),
) -> (Vec<Shard>, BuildStats) {
    let schema = schema();
    let shards = shards.max(1);
    let threads = threads.clamp(1, shards);
    let started = std::time::Instant::now();
    let slots: Vec<Mutex<Option<(Shard, BuildStats)>>> = (0..shards).map(|_| Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for t in 0..threads {
            let (schema, slots) = (&schema, &slots);
            scope.spawn(move || {
                let mine: Vec<usize> = (0..shards).filter(|s| s % threads == t).collect();
                let mut built: Vec<(Shard, BuildStats)> =
                    mine.iter().map(|&s| (Shard::new(s as u32), BuildStats::default())).collect();
                let mut pending: Vec<Vec<Command>> = vec![Vec::with_capacity(BUILD_BATCH + 32); mine.len()];
                let apply = |(shard, stats): &mut (Shard, BuildStats), batch: &mut Vec<Command>| {
                    let outcome = shard.apply(batch);
                    stats.commands += outcome.applied as u64;
                    stats.rejections += outcome.rejections.len() as u64;
                    if let (None, Some(r)) = (&stats.first_rejection, outcome.rejections.first()) {
                        stats.first_rejection =
                            Some(format!("shard {}: {}: {}", shard.id, r.field, r.reason));
                    }
                    batch.clear();
                };
                let step = (cfg.profiles / 20).max(1);
                for i in 0..cfg.profiles {
                    if t == 0 && i > 0 && i % step == 0 {
                        progress(i as f64 / cfg.profiles as f64);
                    }
                    let s = shard_of(profile_id(i), shards);
                    if s % threads != t {
                        continue;
                    }
                    let k = s / threads;
                    let p = cohort_datagen::profile(cfg, i);
                    built[k].1.profiles += 1;
                    built[k].1.events += p.events.len() as u64;
                    pending[k].extend(profile_commands(schema, &p));
                    if pending[k].len() >= BUILD_BATCH {
                        apply(&mut built[k], &mut pending[k]);
                    }
                }
                for (k, batch) in pending.iter_mut().enumerate() {
                    apply(&mut built[k], batch);
                    // A bulk load ends by giving back the growth slack.
                    built[k].0.shrink_to_fit();
                }
                for (k, result) in built.into_iter().enumerate() {
                    // A poisoned slot means another builder panicked; the
                    // scope re-raises that panic, so the value is moot.
                    if let Ok(mut slot) = slots[mine[k]].lock() {
                        *slot = Some(result);
                    }
                }
            });
        }
    });
    let mut total = BuildStats::default();
    let mut out = Vec::with_capacity(shards);
    for (i, slot) in slots.into_iter().enumerate() {
        let (shard, stats) =
            slot.into_inner().ok().flatten().unwrap_or_else(|| (Shard::new(i as u32), BuildStats::default()));
        total.profiles += stats.profiles;
        total.events += stats.events;
        total.commands += stats.commands;
        total.rejections += stats.rejections;
        if total.first_rejection.is_none() {
            total.first_rejection = stats.first_rejection;
        }
        out.push(shard);
    }
    total.secs = started.elapsed().as_secs_f64();
    (out, total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::{compile, CheckContext, NoSegments};

    #[test]
    fn build_is_independent_of_threads_and_loads_everything() {
        let cfg = Config { seed: 3, profiles: 2_000, now_ms: cohort_datagen::DEFAULT_NOW_MS };
        let (a, stats) = build(&cfg, 4, 1, &|_| {});
        let (b, _) = build(&cfg, 4, 3, &|_| {});
        assert_eq!((stats.profiles, stats.rejections), (2_000, 0));
        let total: u64 = a.iter().map(Shard::len).sum();
        assert_eq!(total, 2_000);
        let schema = schema();
        let ctx = CheckContext { schema: &schema, catalog: &NoSegments, now_ms: cfg.now_ms };
        for q in
            ["country = \"US\"", "DID \"purchase\" IN LAST 30 DAYS", "tags CONTAINS \"vip\" OR ltv > 500"]
        {
            let cond = compile(q, &ctx).unwrap();
            let ca: u64 = a.iter().map(|s| s.count(&cond)).sum();
            let cb: u64 = b.iter().map(|s| s.count(&cond)).sum();
            assert_eq!(ca, cb, "{q}");
            assert!(ca > 0, "{q} matched nobody");
        }
        for s in &a {
            s.validate().unwrap();
        }
        // Every generated trait arrived with the schema's type.
        assert_eq!(a[0].schema().trait_type("email"), Some(TraitType::Text));
        assert_eq!(a[0].schema().trait_type("signup_at"), Some(TraitType::Timestamp));
    }
}
