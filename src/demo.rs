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

/// The shard of a profile: a multiplicative hash of its id, so that
/// consecutive ids spread evenly.
pub fn shard_of(profile: ProfileId, shards: usize) -> usize {
    ((profile.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) % shards as u64) as usize
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
    let id = p.index;
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

/// Builds `shards` shards holding the first `cfg.profiles` profiles of the
/// dataset, on `threads` threads. Thread `t` generates the profiles whose
/// shard number is congruent to `t` modulo `threads`, so each shard is built
/// by exactly one thread, in profile order: the result does not depend on
/// the thread count.
pub fn build(cfg: &Config, shards: usize, threads: usize) -> Vec<Shard> {
    let schema = schema();
    let threads = threads.clamp(1, shards.max(1));
    let slots: Vec<Mutex<Option<Shard>>> = (0..shards).map(|_| Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for t in 0..threads {
            let (schema, slots) = (&schema, &slots);
            scope.spawn(move || {
                let mine: Vec<usize> = (0..shards).filter(|s| s % threads == t).collect();
                let mut built: Vec<Shard> = mine.iter().map(|&s| Shard::new(s as u32)).collect();
                let mut pending: Vec<Vec<Command>> = vec![Vec::new(); mine.len()];
                for i in 0..cfg.profiles {
                    let s = shard_of(i, shards);
                    if s % threads != t {
                        continue;
                    }
                    let k = s / threads;
                    pending[k].extend(profile_commands(schema, &cohort_datagen::profile(cfg, i)));
                    if pending[k].len() >= BUILD_BATCH {
                        built[k].apply(&pending[k]);
                        pending[k].clear();
                    }
                }
                for (k, batch) in pending.iter().enumerate() {
                    built[k].apply(batch);
                }
                for (k, shard) in built.into_iter().enumerate() {
                    // A poisoned slot means another builder panicked; the
                    // scope re-raises that panic, so the value is moot.
                    if let Ok(mut slot) = slots[mine[k]].lock() {
                        *slot = Some(shard);
                    }
                }
            });
        }
    });
    slots
        .into_iter()
        .enumerate()
        .map(|(i, m)| m.into_inner().ok().flatten().unwrap_or_else(|| Shard::new(i as u32)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::{compile, CheckContext, NoSegments};

    #[test]
    fn build_is_independent_of_threads_and_loads_everything() {
        let cfg = Config { seed: 3, profiles: 2_000, now_ms: cohort_datagen::DEFAULT_NOW_MS };
        let a = build(&cfg, 4, 1);
        let b = build(&cfg, 4, 3);
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
