//! The fixed query mix and the code that runs one query the way a node
//! would: compile the text against the schema with a fixed `now`, fan out
//! to every shard on the pool, merge.
//!
//! Query ids (`a1`, `d-b2`, ...) are shared with `duckdb_mix.py`, which holds
//! the SQL translation of each one; counts are cross-checked by id.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use cohort::model::Schema;
use cohort::segment::{compile, CheckContext, Cond, NoSegments};
use cohort::shard::eval::top_n;

use crate::dataset::shard_of;
use crate::pool::{Out, Pool};

/// The classes of the mix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Class {
    /// a) counts over traits only.
    Attribute,
    /// b) counts with behaviour in a 30-day window.
    Behaviour,
    /// c) counts with property-filtered frequency conditions.
    Frequency,
    /// d) one profile checked against a segment.
    Membership,
    /// e) counts per value of a trait among the members.
    Breakdown,
    /// f) the first page of members.
    Members,
}

impl Class {
    /// Every class, in report order.
    pub const ALL: [Class; 6] = [
        Class::Attribute,
        Class::Behaviour,
        Class::Frequency,
        Class::Membership,
        Class::Breakdown,
        Class::Members,
    ];

    /// One letter, as in the brief and the JSON lines.
    pub fn key(self) -> &'static str {
        match self {
            Class::Attribute => "a",
            Class::Behaviour => "b",
            Class::Frequency => "c",
            Class::Membership => "d",
            Class::Breakdown => "e",
            Class::Members => "f",
        }
    }

    /// The class named by its letter.
    pub fn from_key(key: &str) -> Option<Class> {
        Class::ALL.into_iter().find(|c| c.key() == key)
    }

    /// A short title.
    pub fn title(self) -> &'static str {
        match self {
            Class::Attribute => "attribute-only counts",
            Class::Behaviour => "30-day behaviour counts",
            Class::Frequency => "property-filtered frequency",
            Class::Membership => "membership check",
            Class::Breakdown => "breakdown (top 10)",
            Class::Members => "members page (100)",
        }
    }

    /// The in-process p50 target, in microseconds, if the contract sets one.
    pub fn target_p50_us(self) -> Option<f64> {
        match self {
            Class::Attribute => Some(300.0),
            Class::Behaviour => Some(1_000.0),
            Class::Frequency => Some(5_000.0),
            Class::Membership => Some(5.0),
            Class::Breakdown | Class::Members => None,
        }
    }
}

/// What a query computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// How many profiles match.
    Count,
    /// Whether one profile matches (a different random profile per run).
    Member,
    /// Counts per value of a trait among the members, top `top`.
    Breakdown {
        /// The trait broken down.
        by: &'static str,
        /// How many values to keep.
        top: usize,
    },
    /// The first `limit` members in (shard, row) order.
    Page {
        /// Page size.
        limit: usize,
    },
}

/// One query of the mix.
#[derive(Clone, Debug)]
pub struct Query {
    /// Stable id shared with `duckdb_mix.py`.
    pub id: String,
    /// Its class.
    pub class: Class,
    /// The segment text.
    pub text: &'static str,
    /// What is computed.
    pub kind: Kind,
}

/// Class a) segments, by id.
pub const ATTRIBUTE: [(&str, &str); 5] = [
    ("a1", r#"country = "FR""#),
    ("a2", r#"country IN ("FR", "BE", "CH") AND age BETWEEN 25 AND 34 AND plan != "free""#),
    ("a3", r#"tags CONTAINS "vip" OR ltv > 500"#),
    ("a4", r#"newsletter = true AND signup_at > NOW - 90 DAYS"#),
    ("a5", r#"NOT country = "US" AND age >= 65"#),
];

/// Class b) segments, by id.
pub const BEHAVIOUR: [(&str, &str); 3] = [
    ("b1", r#"DID "purchase" IN LAST 30 DAYS"#),
    ("b2", r#"DID "purchase" IN LAST 30 DAYS AND NOT DID "email_open" IN LAST 7 DAYS"#),
    ("b3", r#"DID "app_open" IN LAST 30 DAYS AND country = "DE""#),
];

/// Class c) segments, by id. `/pricing` is the second most visited path
/// (about 10 % of pages); at about 5 pages a profile a year, "3 times in 30
/// days" would match almost nobody, so c2 asks for 2 times in 90 days.
pub const FREQUENCY: [(&str, &str); 4] = [
    ("c1", r#"DID "purchase" WHERE amount > 100 AND category = "shoes" AT LEAST 2 TIMES IN LAST 90 DAYS"#),
    ("c2", r#"DID "page" WHERE path = "/pricing" AT LEAST 2 TIMES IN LAST 90 DAYS"#),
    ("c3", r#"DID "add_to_cart" WHERE price > 50 AT LEAST 1 TIMES IN LAST 14 DAYS"#),
    ("c4", r#"DID "page" WHERE referrer = "google.com" AT LEAST 2 TIMES IN LAST 90 DAYS"#),
];

/// The whole mix, in report order.
pub fn queries() -> Vec<Query> {
    let mut out = Vec::new();
    let count = |class, list: &[(&str, &'static str)], out: &mut Vec<Query>| {
        for (id, text) in list {
            out.push(Query { id: (*id).to_string(), class, text, kind: Kind::Count });
        }
    };
    count(Class::Attribute, &ATTRIBUTE, &mut out);
    count(Class::Behaviour, &BEHAVIOUR, &mut out);
    count(Class::Frequency, &FREQUENCY, &mut out);
    for (id, text) in ATTRIBUTE.iter().chain(BEHAVIOUR.iter()) {
        out.push(Query { id: format!("d-{id}"), class: Class::Membership, text, kind: Kind::Member });
    }
    out.push(Query {
        id: "e1".into(),
        class: Class::Breakdown,
        text: r#"DID "purchase" IN LAST 30 DAYS"#,
        kind: Kind::Breakdown { by: "country", top: 10 },
    });
    out.push(Query {
        id: "e2".into(),
        class: Class::Breakdown,
        text: r#"plan = "pro""#,
        kind: Kind::Breakdown { by: "tags", top: 10 },
    });
    out.push(Query {
        id: "f1".into(),
        class: Class::Members,
        text: r#"country = "FR" AND age > 30"#,
        kind: Kind::Page { limit: 100 },
    });
    out
}

/// The profile checked by membership run `k` (0-based) of a dataset of `n`
/// profiles: an LCG step of `k`, high bits, modulo `n`. `duckdb_mix.py`
/// computes the same ids.
pub fn member_id(k: u64, n: u64) -> u64 {
    (k.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407) >> 33) % n.max(1)
}

/// The outcome of one query over its runs.
#[derive(Clone, Debug)]
pub struct QueryResult {
    /// The query.
    pub query: Query,
    /// Counts: the count. Membership: how many of the checked profiles
    /// matched. Breakdown: the sum of the top counts. Page: its length.
    pub count: u64,
    /// Page: the sum of the profile ids on it; 0 otherwise.
    pub checksum: u64,
    /// Breakdown: `value=count,...` of the top values; empty otherwise.
    pub detail: String,
    /// Latency of each run (compile, fan-out and merge), nanoseconds.
    pub samples_ns: Vec<u64>,
    /// Compile time of each run, nanoseconds.
    pub compile_ns: Vec<u64>,
}

/// Runs `q` `warmup + runs` times (the warm-up runs are not recorded) and
/// checks that every run gives the same answer.
pub fn run_query(
    pool: &Pool,
    schema: &Schema,
    now_ms: i64,
    profiles: u64,
    q: &Query,
    warmup: usize,
    runs: usize,
) -> Result<QueryResult, String> {
    let ctx = CheckContext { schema, catalog: &NoSegments, now_ms };
    let shards = pool.shards();
    let n_shards = shards.len() as u32;
    let mut res = QueryResult {
        query: q.clone(),
        count: 0,
        checksum: 0,
        detail: String::new(),
        samples_ns: Vec::with_capacity(runs),
        compile_ns: Vec::with_capacity(runs),
    };
    let mut first: Option<(u64, u64, String)> = None;
    for it in 0..warmup + runs {
        let t0 = Instant::now();
        let cond: Cond = compile(q.text, &ctx).map_err(|e| format!("{}: {e}", q.id))?;
        let t1 = Instant::now();
        let (count, checksum, detail) = match q.kind {
            Kind::Count => {
                let cond = Arc::new(cond);
                let outs = pool.run(Arc::new(move |s| Out::Count(s.count(&cond))));
                let mut total = 0;
                for o in outs {
                    match o {
                        Out::Count(n) => total += n,
                        other => return Err(format!("{}: unexpected {other:?}", q.id)),
                    }
                }
                (total, 0, String::new())
            }
            Kind::Member => {
                // Runs are numbered from the first recorded one; warm-up
                // runs check the last ids again.
                let k = if it < warmup { (runs - 1 - it.min(runs - 1)) as u64 } else { (it - warmup) as u64 };
                let id = cohort::demo::profile_id(member_id(k, profiles));
                let shard = &shards[shard_of(id, n_shards) as usize];
                let hit = shard.row_of(id).is_some_and(|row| shard.row_matches(row, &cond));
                (u64::from(hit), 0, String::new())
            }
            Kind::Breakdown { by, top } => {
                let cond = Arc::new(cond);
                let outs = pool.run(Arc::new(move |s| match s.breakdown(&cond, by) {
                    Ok(b) => Out::Breakdown(b),
                    Err(e) => Out::Error(e.to_string()),
                }));
                let mut merged: HashMap<String, u64> = HashMap::new();
                for o in outs {
                    match o {
                        Out::Breakdown(b) => {
                            for (v, n) in b {
                                *merged.entry(v).or_default() += n;
                            }
                        }
                        other => return Err(format!("{}: {other:?}", q.id)),
                    }
                }
                let best = top_n(merged.into_iter().collect(), top);
                let sum = best.iter().map(|(_, n)| n).sum();
                let detail = best.iter().map(|(v, n)| format!("{v}={n}")).collect::<Vec<_>>().join(",");
                (sum, 0, detail)
            }
            Kind::Page { limit } => {
                let cond = Arc::new(cond);
                let outs = pool.run(Arc::new(move |s| Out::Rows(s.members(&cond, None, limit))));
                let mut page: Vec<u64> = Vec::with_capacity(limit);
                'merge: for (s, o) in outs.into_iter().enumerate() {
                    let Out::Rows(rows) = o else { return Err(format!("{}: {o:?}", q.id)) };
                    for row in rows {
                        if page.len() == limit {
                            break 'merge;
                        }
                        page.push(shards[s].profile_of(row));
                    }
                }
                (page.len() as u64, page.iter().sum(), String::new())
            }
        };
        let t2 = Instant::now();
        if it < warmup {
            continue;
        }
        res.samples_ns.push((t2 - t0).as_nanos() as u64);
        res.compile_ns.push((t1 - t0).as_nanos() as u64);
        if q.kind == Kind::Member {
            res.count += count;
            continue;
        }
        match &first {
            None => first = Some((count, checksum, detail)),
            Some(f) if *f != (count, checksum, detail.clone()) => {
                return Err(format!("{}: run {it} answered {count} but an earlier run {}", q.id, f.0));
            }
            Some(_) => {}
        }
    }
    if let Some((count, checksum, detail)) = first {
        res.count = count;
        res.checksum = checksum;
        res.detail = detail;
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::{build, schema};
    use cohort_datagen::{Config, DEFAULT_NOW_MS};

    #[test]
    fn every_query_compiles() {
        let s = schema();
        let ctx = CheckContext { schema: &s, catalog: &NoSegments, now_ms: DEFAULT_NOW_MS };
        for q in queries() {
            compile(q.text, &ctx).unwrap_or_else(|e| panic!("{}: {e}", q.id));
        }
    }

    #[test]
    fn member_ids_are_in_range_and_match_the_python_formula() {
        // duckdb_mix.py: ((k * 6364136223846793005 + 1442695040888963407) % 2**64 >> 33) % n
        assert_eq!(member_id(0, 1_000_000), (1_442_695_040_888_963_407u64 >> 33) % 1_000_000);
        assert!((0..1000).all(|k| member_id(k, 77) < 77));
    }

    #[test]
    fn parallel_counts_equal_a_scan_of_membership() {
        let cfg = Config { profiles: 3_000, ..Config::default() };
        let (shards, _) = build(&cfg, 4, 2, &|_| {});
        let pool = Pool::new(Arc::new(shards), 2);
        let s = schema();
        let ctx = CheckContext { schema: &s, catalog: &NoSegments, now_ms: DEFAULT_NOW_MS };
        for q in queries().into_iter().filter(|q| q.kind == Kind::Count) {
            let r = run_query(&pool, &s, DEFAULT_NOW_MS, cfg.profiles, &q, 0, 2).unwrap();
            let cond = compile(q.text, &ctx).unwrap();
            let scan: u64 = pool
                .shards()
                .iter()
                .map(|sh| sh.universe.iter().filter(|&row| sh.row_matches(row, &cond)).count() as u64)
                .sum();
            assert_eq!(r.count, scan, "{} {}", q.id, q.text);
        }
    }
}
