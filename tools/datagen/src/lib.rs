//! Deterministic synthetic data for Cohort: customer profiles with traits and
//! a year of behavioural events, as Segment Spec NDJSON or as CSV for DuckDB.
//!
//! Profile `i` of a dataset depends only on the seed, `i` and the fixed
//! instant `now` of the [`Config`]: profiles can be generated in parallel and
//! out of order, and the output is byte-identical whatever the thread count.
//! Benchmarks and tests build profiles in-process with [`profile`] and never
//! go through JSON; the `cohort-datagen` binary writes files.
//!
//! # Layout
//!
//! - [`rng`]: the in-crate PRNG (SplitMix64 seeding xoshiro256**), so the
//!   data never changes with a dependency upgrade.
//! - [`vocab`]: countries, cities, paths, SKUs, ... and their skewed weights.
//! - [`time`]: RFC 3339 formatting and parsing of epoch milliseconds.
//! - [`json`]: the NDJSON writer (one `identify`, then one `track` per event)
//!   and its string escaper.
//! - [`csv`]: the `profiles.csv` / `events.csv` writer.
//! - [`pipeline`]: ordered parallel generation in chunks, used by the binary.
//! - this file: the data model ([`Profile`], [`Event`], [`Value`]) and the
//!   generator of one profile ([`profile`]).

pub mod csv;
pub mod json;
pub mod pipeline;
pub mod rng;
pub mod time;
pub mod vocab;

use std::borrow::Cow;

pub use csv::{write_csv_rows, EVENTS_CSV_HEADER, PROFILES_CSV_HEADER};
pub use json::write_ndjson;
pub use rng::Rng;
pub use time::{format_rfc3339_ms, parse_rfc3339_ms, DAY_MS};

use vocab::{pick, round2, tables};

/// `now` used when none is given: 2026-11-01T00:00:00Z, in epoch milliseconds.
pub const DEFAULT_NOW_MS: i64 = 1_793_491_200_000;
/// Seed used when none is given.
pub const DEFAULT_SEED: u64 = 42;
/// Signups are spread over this window before `now` (3 × 365 days).
pub const SIGNUP_WINDOW_MS: i64 = 3 * 365 * DAY_MS;
/// Events are spread over this window before `now` (365 days).
pub const EVENT_WINDOW_MS: i64 = 365 * DAY_MS;
/// Fewest events of a profile.
pub const MIN_EVENTS: usize = 10;
/// Most events of a profile.
pub const MAX_EVENTS: usize = 20;
/// Share of track messages that carry only the anonymous id.
pub const ANONYMOUS_TRACK_SHARE: f64 = 0.10;

/// What defines a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Seed of every random choice.
    pub seed: u64,
    /// Number of profiles, indexed `0..profiles`.
    pub profiles: u64,
    /// The fixed instant the data is generated "as of", in epoch
    /// milliseconds; every timestamp is before it. Never the wall clock.
    pub now_ms: i64,
}

impl Default for Config {
    fn default() -> Self {
        Self { seed: DEFAULT_SEED, profiles: 100_000, now_ms: DEFAULT_NOW_MS }
    }
}

/// A trait or property value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A string; borrowed from the static vocabularies where possible.
    Str(Cow<'static, str>),
    /// A number (integers such as `age`, or 2-decimal amounts).
    Num(f64),
    /// A boolean.
    Bool(bool),
    /// A list of strings (no duplicates).
    List(Vec<Cow<'static, str>>),
    /// An instant in epoch milliseconds, written as an RFC 3339 string in
    /// JSON and as the integer in CSV.
    Time(i64),
}

impl Value {
    /// The string, if this is a [`Value::Str`].
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The number, if this is a [`Value::Num`].
    pub fn as_num(&self) -> Option<f64> {
        match self {
            Value::Num(n) => Some(*n),
            _ => None,
        }
    }
}

/// One behavioural event of a profile (a `track` message).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Event name: `page`, `app_open`, `add_to_cart`, `purchase`,
    /// `email_open` or `email_click`.
    pub name: &'static str,
    /// When it happened, epoch milliseconds, in `[now - 365 days, now)`.
    pub ts_ms: i64,
    /// Properties, in a fixed order per event name.
    pub properties: Vec<(&'static str, Value)>,
    /// Whether the message carries only the profile's anonymous id (no
    /// `userId`), to exercise identity resolution.
    pub anonymous_only: bool,
}

/// One generated profile: identifiers, traits and events (sorted by time).
///
/// Its messages have the ids `m{index}-0` (the identify) and `m{index}-{k+1}`
/// for `events[k]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    /// Position in the dataset, `0..profiles`.
    pub index: u64,
    /// `u{index}`.
    pub user_id: String,
    /// 16 lowercase hex digits.
    pub anonymous_id: String,
    /// Traits in the order of [`TRAIT_NAMES`], every one present.
    pub traits: Vec<(&'static str, Value)>,
    /// Events sorted by `ts_ms` (ties keep generation order).
    pub events: Vec<Event>,
    /// Time of the identify message: the signup time, so `<= now`.
    pub identify_ts_ms: i64,
}

impl Profile {
    /// The trait named `name`.
    pub fn trait_value(&self, name: &str) -> Option<&Value> {
        self.traits.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// Number of messages of this profile: one identify and one track per
    /// event.
    pub fn message_count(&self) -> usize {
        1 + self.events.len()
    }
}

/// Every trait of a profile, in order.
pub const TRAIT_NAMES: [&str; 9] =
    ["country", "city", "age", "plan", "signup_at", "ltv", "email", "tags", "newsletter"];

/// Types the main crate should declare in its schema for the traits whose
/// type cannot be inferred from the first value (`text`, `timestamp`); the
/// others infer as `keyword` (strings), `number`, `list` and `bool`.
pub fn schema() -> Vec<(&'static str, &'static str)> {
    vec![("email", "text"), ("signup_at", "timestamp")]
}

/// Generates profile `index` of the dataset `cfg`. Depends only on
/// `cfg.seed`, `cfg.now_ms` and `index` (not on `cfg.profiles`).
pub fn profile(cfg: &Config, index: u64) -> Profile {
    let t = tables();
    let mut rng = Rng::for_item(cfg.seed, index);
    let now = cfg.now_ms;

    let anonymous_id = format!("{:016x}", rng.next_u64());

    let country = rng.weighted(&t.country_cumulative);
    let cities = &t.cities[country];
    let city = cities[rng.zipf(cities.len() as u64) as usize].as_str();

    // A bell centred on 37 years, sd 12, redrawn (not clamped) outside 18..=80
    // so the bounds carry no spike.
    let age = loop {
        let a = (37.0 + 12.0 * rng.normal()).round();
        if (18.0..=80.0).contains(&a) {
            break a;
        }
    };

    let plan = pick(&mut rng, &vocab::PLANS);
    let signup_at = now - 1 - rng.below(SIGNUP_WINDOW_MS as u64) as i64;

    // Heavy-tailed lifetime value: 30 % of free users never paid; the others
    // are log-normal with a median that grows with the plan.
    let ltv_median = match plan {
        "free" => 30.0,
        "basic" => 60.0,
        "pro" => 150.0,
        _ => 400.0,
    };
    let ltv = if plan == "free" && rng.chance(0.30) {
        0.0
    } else {
        round2(rng.log_normal(ltv_median, 0.9).min(5000.0))
    };

    let domain = vocab::EMAIL_DOMAINS[rng.weighted(&t.domain_cumulative)].0;
    let email = format!("u{index}@{domain}");

    let tag_count = pick(&mut rng, &[(0usize, 0.40), (1, 0.70), (2, 0.90), (3, 1.0)]);
    let mut tags: Vec<Cow<'static, str>> = Vec::with_capacity(tag_count);
    while tags.len() < tag_count {
        let tag = vocab::TAGS[rng.zipf(vocab::TAGS.len() as u64) as usize];
        if !tags.iter().any(|t| t == tag) {
            tags.push(Cow::Borrowed(tag));
        }
    }

    let newsletter = rng.chance(0.40);

    let traits = vec![
        ("country", Value::Str(Cow::Borrowed(vocab::COUNTRIES[country]))),
        ("city", Value::Str(Cow::Borrowed(city))),
        ("age", Value::Num(age)),
        ("plan", Value::Str(Cow::Borrowed(plan))),
        ("signup_at", Value::Time(signup_at)),
        ("ltv", Value::Num(ltv)),
        ("email", Value::Str(Cow::Owned(email))),
        ("tags", Value::List(tags)),
        ("newsletter", Value::Bool(newsletter)),
    ];

    let euro = t.country_is_euro[country];
    let n_events = rng.range_inclusive(MIN_EVENTS as u64, MAX_EVENTS as u64) as usize;
    let mut events: Vec<Event> = (0..n_events).map(|_| event(&mut rng, now, euro)).collect();
    // Stable: equal timestamps keep generation order, so the result is fixed.
    events.sort_by_key(|e| e.ts_ms);

    Profile { index, user_id: format!("u{index}"), anonymous_id, traits, events, identify_ts_ms: signup_at }
}

fn s(v: &'static str) -> Value {
    Value::Str(Cow::Borrowed(v))
}

/// One random event in the year before `now`.
fn event(rng: &mut Rng, now: i64, euro: bool) -> Event {
    let t = tables();
    let ts_ms = now - 1 - rng.below(EVENT_WINDOW_MS as u64) as i64;
    let name = pick(rng, &vocab::EVENTS);
    let properties = match name {
        "page" => vec![
            ("path", s(&t.paths[rng.zipf(t.paths.len() as u64) as usize])),
            ("referrer", s(vocab::REFERRERS[rng.zipf(vocab::REFERRERS.len() as u64) as usize])),
        ],
        "app_open" => vec![("platform", s(pick(rng, &vocab::PLATFORMS)))],
        "add_to_cart" => {
            let k = rng.zipf(t.skus.len() as u64) as usize;
            vec![("sku", s(&t.skus[k])), ("price", Value::Num(t.sku_prices[k]))]
        }
        "purchase" => {
            let amount = round2(rng.log_normal(60.0, 0.8).clamp(1.0, 5000.0));
            let category = vocab::CATEGORIES[rng.zipf(vocab::CATEGORIES.len() as u64) as usize];
            // Mostly the local currency; some cross-border shoppers.
            let euro = if rng.chance(0.9) { euro } else { !euro };
            vec![
                ("amount", Value::Num(amount)),
                ("category", s(category)),
                ("currency", s(if euro { "EUR" } else { "USD" })),
            ]
        }
        "email_open" => {
            vec![("campaign", s(&t.campaigns[rng.zipf(t.campaigns.len() as u64) as usize]))]
        }
        _ => vec![
            ("campaign", s(&t.campaigns[rng.zipf(t.campaigns.len() as u64) as usize])),
            ("link", s(&t.links[rng.zipf(t.links.len() as u64) as usize])),
        ],
    };
    let anonymous_only = rng.chance(ANONYMOUS_TRACK_SHARE);
    Event { name, ts_ms, properties, anonymous_only }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg() -> Config {
        Config { seed: 7, profiles: 5_000, now_ms: DEFAULT_NOW_MS }
    }

    #[test]
    fn profiles_are_deterministic_and_seed_dependent() {
        let c = cfg();
        assert_eq!(profile(&c, 123), profile(&c, 123));
        let other = Config { seed: 8, ..c };
        assert_ne!(profile(&c, 123), profile(&other, 123));
        // The dataset size does not change a profile.
        assert_eq!(profile(&c, 123), profile(&Config { profiles: 1, ..c }, 123));
    }

    #[test]
    fn events_and_timestamps_are_in_bounds() {
        let c = cfg();
        let mut anonymous = 0usize;
        let mut tracks = 0usize;
        for i in 0..c.profiles {
            let p = profile(&c, i);
            assert!((MIN_EVENTS..=MAX_EVENTS).contains(&p.events.len()));
            assert!(p.identify_ts_ms < c.now_ms);
            assert!(p.identify_ts_ms >= c.now_ms - SIGNUP_WINDOW_MS);
            assert_eq!(p.traits.len(), TRAIT_NAMES.len());
            for ((n, _), expected) in p.traits.iter().zip(TRAIT_NAMES) {
                assert_eq!(*n, expected);
            }
            assert!(p.events.windows(2).all(|w| w[0].ts_ms <= w[1].ts_ms));
            for e in &p.events {
                assert!(e.ts_ms < c.now_ms && e.ts_ms >= c.now_ms - EVENT_WINDOW_MS);
                assert!(!e.properties.is_empty());
            }
            tracks += p.events.len();
            anonymous += p.events.iter().filter(|e| e.anonymous_only).count();
            let Some(Value::Num(age)) = p.trait_value("age") else { panic!("age") };
            assert!((18.0..=80.0).contains(age));
            let Some(Value::Num(ltv)) = p.trait_value("ltv") else { panic!("ltv") };
            assert!(*ltv >= 0.0 && *ltv <= 5000.0 && round2(*ltv) == *ltv);
            let Some(Value::List(tags)) = p.trait_value("tags") else { panic!("tags") };
            assert!(tags.len() <= 3);
            assert_eq!(p.anonymous_id.len(), 16);
            assert!(p.anonymous_id.bytes().all(|b| b.is_ascii_hexdigit()));
        }
        let share = anonymous as f64 / tracks as f64;
        assert!((0.08..0.12).contains(&share), "anonymous share {share}");
    }

    #[test]
    fn distributions_are_plausible() {
        let c = Config { profiles: 20_000, ..cfg() };
        let mut countries: HashMap<String, usize> = HashMap::new();
        let mut cities: HashMap<String, usize> = HashMap::new();
        let mut plans: HashMap<String, usize> = HashMap::new();
        let mut events: HashMap<&str, usize> = HashMap::new();
        let mut ltvs = Vec::new();
        let mut amounts = Vec::new();
        let mut newsletter = 0usize;
        let mut n_events = 0usize;
        for i in 0..c.profiles {
            let p = profile(&c, i);
            let get = |n| p.trait_value(n).and_then(Value::as_str).unwrap_or_default().to_owned();
            *countries.entry(get("country")).or_default() += 1;
            *cities.entry(get("city")).or_default() += 1;
            *plans.entry(get("plan")).or_default() += 1;
            newsletter += usize::from(p.trait_value("newsletter") == Some(&Value::Bool(true)));
            ltvs.push(p.trait_value("ltv").and_then(Value::as_num).unwrap_or(-1.0));
            for e in &p.events {
                *events.entry(e.name).or_default() += 1;
                n_events += 1;
                if e.name == "purchase" {
                    amounts.push(e.properties[0].1.as_num().unwrap_or(-1.0));
                }
            }
        }
        let n = c.profiles as f64;
        assert!(countries.len() >= 45 && countries.len() <= 50, "{}", countries.len());
        let top = countries.iter().max_by_key(|(_, v)| **v).map(|(k, _)| k.as_str());
        assert_eq!(top, Some("US"));
        let us = countries["US"] as f64 / n;
        assert!((0.17..0.24).contains(&us), "US share {us}");
        assert!(cities.len() > 2000, "{} cities", cities.len());
        let free = plans["free"] as f64 / n;
        assert!((0.57..0.63).contains(&free), "free {free}");
        let ent = plans["enterprise"] as f64 / n;
        assert!((0.02..0.04).contains(&ent), "enterprise {ent}");
        let nl = newsletter as f64 / n;
        assert!((0.37..0.43).contains(&nl), "newsletter {nl}");
        let page = events["page"] as f64 / n_events as f64;
        assert!((0.33..0.37).contains(&page), "page {page}");
        let purchase = events["purchase"] as f64 / n_events as f64;
        assert!((0.05..0.07).contains(&purchase), "purchase {purchase}");
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let m = median(&mut amounts);
        assert!((50.0..70.0).contains(&m), "purchase median {m}");
        let zero = ltvs.iter().filter(|&&x| x == 0.0).count() as f64 / n;
        assert!((0.15..0.21).contains(&zero), "ltv zero share {zero}");
        let mut paid: Vec<f64> = ltvs.into_iter().filter(|&x| x > 0.0).collect();
        let m = median(&mut paid);
        assert!((35.0..70.0).contains(&m), "ltv median {m}");
    }
}
