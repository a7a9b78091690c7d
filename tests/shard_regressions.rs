//! Named regression tests: the failures that the property tests of
//! `shard_props.rs` found, minimised by hand to a few commands and a query.
//!
//! Each test states what `shared/SEGMENTS.md` and `shared/INGEST.md` (and the
//! oracle of `oracle/mod.rs`, which follows them) expect. A test stays here
//! once the shard passes it, so that the failure cannot come back.

mod oracle;

use std::collections::BTreeMap;

use cohort::model::{TraitType, Value};
use cohort::segment::{compile, parse, CheckContext};
use cohort::shard::{Command, EventWrite, ProfileWrite, Shard};
use oracle::{canonical_events, test_schema, Model};

/// The query's `now`: 2026-03-15T12:00:00Z.
const NOW: i64 = 1_773_576_000_000;
const DAY: i64 = 86_400_000;

/// A write of traits to one profile at one message time.
fn traits(profile: u64, time_ms: i64, traits: &[(&str, Option<Value>)]) -> Command {
    Command::Write(ProfileWrite {
        profile,
        time_ms,
        traits: traits.iter().map(|(n, v)| (n.to_string(), v.clone())).collect(),
        ..ProfileWrite::default()
    })
}

/// An event recorded for one profile at `time_ms`.
fn event(profile: u64, time_ms: i64, name: &str, properties: &[(&str, Value)]) -> Command {
    Command::Write(ProfileWrite {
        profile,
        time_ms,
        event: Some(EventWrite {
            name: name.to_string(),
            properties: properties.iter().map(|(n, v)| (n.to_string(), v.clone())).collect(),
        }),
        ..ProfileWrite::default()
    })
}

/// A keyword value.
fn keyword(s: &str) -> Value {
    Value::Keyword(s.to_string())
}

/// Applies the commands to a new shard and to the oracle, one batch each,
/// and checks that the shard refused nothing.
fn build(commands: &[Command]) -> (Shard, Model) {
    let mut shard = Shard::new(0);
    let mut model = Model::new(1);
    for cmd in commands {
        let mut cmd = cmd.clone();
        model.stamp(&mut cmd);
        let out = shard.apply(std::slice::from_ref(&cmd));
        assert!(out.rejections.is_empty(), "the shard rejected {cmd:?}: {:?}", out.rejections);
        model.apply(&cmd);
    }
    (shard, model)
}

/// The shard's count for `text` and the oracle's, in that order.
fn counts(shard: &Shard, model: &Model, text: &str) -> (u64, u64) {
    let schema = test_schema();
    let catalog = BTreeMap::new();
    let ctx = CheckContext { schema: &schema, catalog: &catalog, now_ms: NOW };
    let cond = compile(text, &ctx).unwrap_or_else(|e| panic!("{text:?}: {e}"));
    let expr = parse(text).expect("it compiled");
    (shard.count(&cond), model.count(0, &expr, NOW, &schema, &catalog))
}

/// A property that first appears on a later-written event of an older day
/// must not leave the partitions written before it without a column for it.
///
/// Found by `profiles_read_back`. The first `purchase` (today, no property)
/// creates today's partition with no property column; the second (yesterday,
/// with `category`) adds the property to the table but pads only its own
/// partition. `Shard::validate` reported "day 20527: 0 columns for 1
/// properties", and every reader that indexed `part.props[i]` panicked.
/// Fixed by reading a missing column as "absent from every event" (no
/// padding, so optional properties cost nothing where they are not sent).
#[test]
fn event_property_added_later_pads_older_partitions() {
    let (shard, model) = build(&[
        event(0, NOW, "purchase", &[]),
        event(0, NOW - DAY, "purchase", &[("category", keyword("shoes"))]),
    ]);
    assert_eq!(shard.validate(), Ok(()));
    let mut got = shard.read_profile(0).expect("profile 0 is live");
    canonical_events(&mut got.events);
    assert_eq!(Some(got), model.expected_image(0));
}

/// The same two events, queried: an event without the property fails a test
/// on it and passes `NOT EXISTS`; it must not crash the evaluator.
///
/// Found by `queries_agree_with_oracle`; same cause and fix as
/// `event_property_added_later_pads_older_partitions`.
#[test]
fn event_filter_on_a_property_added_later() {
    let (shard, model) = build(&[
        event(0, NOW, "purchase", &[]),
        event(0, NOW - DAY, "purchase", &[("category", keyword("shoes"))]),
    ]);
    for (text, expected) in [
        (r#"DID "purchase" WHERE category NOT EXISTS"#, 1),
        (r#"DID "purchase" WHERE category = "shoes" AT LEAST 2 TIMES"#, 0),
        (r#"DID "purchase" WHERE NOT category = "shoes" IN LAST 1 HOURS"#, 1),
    ] {
        let (got, want) = counts(&shard, &model, text);
        assert_eq!(want, expected, "the oracle on {text:?}");
        assert_eq!(got, want, "count of {text:?}");
    }
}

/// INGEST.md: last write wins by message time, per trait; "on a tie, the
/// message applied later wins". A merge resolves each trait "by
/// last-write-wins on the original message times", so when both profiles
/// wrote the trait at the same time, the value of the message applied later
/// must survive, whichever profile it went to.
///
/// Found by `profiles_read_back` and `queries_agree_with_oracle` (with the
/// oracle's `MergeTies::LaterApplied`). Profile 1 got `country = "FR"` at
/// time T, then profile 2 got `country = "DE"` at the same T; merging 1 into
/// 2 kept "FR": `Shard::import` replayed the merged-away profile's traits
/// through `Stamps::admit`, where a tie always admitted the incoming value,
/// because the order of ingestion was not kept. Fixed by stamping every
/// write with (time, seq), `seq` being its position in ingestion order.
#[test]
fn merge_tie_goes_to_the_later_applied_write() {
    let t = NOW - DAY;
    let (shard, model) = build(&[
        traits(1, t, &[("country", Some(keyword("FR")))]),
        traits(2, t, &[("country", Some(keyword("DE")))]),
        Command::Merge { into: 2, from: 1 },
    ]);
    let image = shard.read_profile(2).expect("profile 2 is live");
    assert_eq!(
        model.expected_image(2).map(|i| i.traits),
        Some(vec![("country".into(), Some(keyword("DE")), (t, 2))])
    );
    assert_eq!(image.traits, vec![("country".to_string(), Some(keyword("DE")), (t, 2))]);
    assert_eq!(counts(&shard, &model, r#"country = "DE""#), (1, 1));
}

/// The same tie with `null`: profile 1's value was unset at T, then profile 2
/// got a value at T. The later write (the value) must survive the merge.
#[test]
fn merge_tie_with_an_older_unset() {
    let t = NOW - DAY;
    let (shard, model) = build(&[
        traits(1, t, &[("country", None)]),
        traits(2, t, &[("country", Some(keyword("FR")))]),
        Command::Merge { into: 2, from: 1 },
    ]);
    let (got, want) = counts(&shard, &model, r#"country EXISTS"#);
    assert_eq!(want, 1, "the oracle");
    assert_eq!(got, want, "count of country EXISTS");
}

/// INGEST.md: a trait's type is declared or inferred from its first *value*;
/// `null` has no type. A shard that has only seen `age: null` must not report
/// `age` as a keyword trait in `Shard::schema`, or a planner that merges the
/// shards' schemas with the declared ones (as `Schema::merge_from` does) hits
/// a conflict ("`age` is already number; cannot declare it keyword"), and one
/// that trusts the shard types `age > 3` as a query error.
///
/// `Shard::set_trait` kept the tombstone of a trait it had never seen in a
/// keyword column, which `Shard::schema` reported. Fixed by keeping such
/// tombstones in `Shard::unset_only` until the first value gives the type.
#[test]
fn null_before_any_value_does_not_type_the_trait() {
    let (shard, _) = build(&[traits(0, NOW, &[("age", None)])]);
    assert_eq!(shard.schema().trait_type("age"), None);
    let mut schema = test_schema();
    assert_eq!(schema.trait_type("age"), Some(TraitType::Number));
    assert_eq!(schema.merge_from(&shard.schema()), Ok(()));
}

/// SEGMENTS.md: `DID` on an event name is a query error only when the schema
/// does not know the event; once a shard has recorded an event, removing the
/// last profile that did it must not make the event unknown (the answer to
/// `DID "page"` is then empty, not an error).
///
/// `Shard::take` dropped an event table that had no events and no
/// properties left, so `Shard::schema` forgot the event. Fixed: event
/// tables stay once created.
#[test]
fn removing_the_last_event_keeps_the_event_known() {
    let (shard, _) = build(&[event(0, NOW, "page", &[]), Command::Remove { profile: 0 }]);
    assert!(shard.schema().has_event("page"), "the shard forgot the event \"page\"");
}

/// SEGMENTS.md: `AT LEAST n TIMES` counts every matching event, however
/// many. Frequencies up to 255 are counted in one byte per row and larger
/// ones in two or four; every width must agree with the oracle around its
/// edges (profiles with 70,000, 300, 255 and 3 matching events).
#[test]
fn frequencies_past_one_byte_are_counted_exactly() {
    let mut commands = Vec::new();
    for (profile, times) in [(0u64, 300i64), (1, 255), (2, 3), (3, 70_000)] {
        for k in 0..times {
            commands.push(event(profile, NOW - DAY - k * 20_000, "page", &[("path", keyword("/p"))]));
        }
    }
    let (shard, model) = build(&commands);
    for (text, want) in [
        (r#"DID "page" WHERE path = "/p" AT LEAST 300 TIMES IN LAST 30 DAYS"#, 2),
        (r#"DID "page" WHERE path = "/p" AT LEAST 301 TIMES IN LAST 30 DAYS"#, 1),
        (r#"DID "page" AT LEAST 255 TIMES IN LAST 30 DAYS"#, 3),
        (r#"DID "page" AT LEAST 256 TIMES IN LAST 30 DAYS"#, 2),
        (r#"DID "page" AT MOST 254 TIMES IN LAST 30 DAYS"#, 1),
        (r#"DID "page" AT MOST 299 TIMES IN LAST 30 DAYS"#, 2),
        (r#"DID "page" WHERE path = "/p" AT LEAST 3 TIMES IN LAST 30 DAYS"#, 4),
        (r#"DID "page" AT LEAST 65536 TIMES IN LAST 30 DAYS"#, 1),
        (r#"DID "page" AT MOST 65535 TIMES IN LAST 30 DAYS"#, 3),
        (r#"DID "page" AT MOST 69999 TIMES IN LAST 30 DAYS"#, 3),
        (r#"DID "page" AT MOST 70000 TIMES IN LAST 30 DAYS"#, 4),
    ] {
        assert_eq!(counts(&shard, &model, text), (want, want), "{text}");
    }
}
