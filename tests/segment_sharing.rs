//! Saved segments that refer to other saved segments more than once are
//! compiled and evaluated once each (a DAG, not a tree), and a definition
//! or query past the compiled-size bounds is refused with an error that
//! names the bound.
//!
//! The reproduction of issue 12 (section 3): 23 saved segments, each
//! `IN SEGMENT "prev" OR IN SEGMENT "prev"` over the one before. Inlined in
//! full, every level doubles the work (2^23 copies of the first segment),
//! and Count, Check and GetProfile ran for many seconds per call while the
//! catalog lock kept every other query waiting.

mod common;

use std::collections::BTreeMap;

use cohort::model::{IdentifierKind, Schema, TraitType, Value};
use cohort::proto::v1 as pb;
use cohort::segment::{
    check_save, compile, distinct_nodes, CheckContext, SegmentError, MAX_COMPILED_DEPTH, MAX_COMPILED_NODES,
};
use cohort::shard::{Command, ProfileWrite, Shard};
use common::Server;
use serde_json::json;

/// The query's `now`: 2026-11-01T00:00:00Z.
const NOW: i64 = 1_793_491_200_000;

/// Levels of nesting above the first saved segment, as in the issue.
const LEVELS: usize = 23;

/// The name of the saved segment at `level`.
fn name(level: usize) -> String {
    format!("s{level}")
}

/// `s0` is `country = "FR"`; every level above is `IN SEGMENT "prev" OR IN
/// SEGMENT "prev"` over the one below (`shape` 0), or `(prev AND plan =
/// "pro") OR (prev AND plan = "free")`, which deduplicating `X OR X` would
/// not share (`shape` 1).
fn nested(shape: u8) -> Vec<(String, String)> {
    let mut out = vec![(name(0), r#"country = "FR""#.to_string())];
    for level in 1..=LEVELS {
        let prev = name(level - 1);
        let text = match shape {
            0 => format!(r#"IN SEGMENT "{prev}" OR IN SEGMENT "{prev}""#),
            _ => format!(
                r#"(IN SEGMENT "{prev}" AND plan = "pro") OR (IN SEGMENT "{prev}" AND plan = "free")"#
            ),
        };
        out.push((name(level), text));
    }
    out
}

fn schema() -> Schema {
    let mut s = Schema::new();
    s.declare_trait("country", TraitType::Keyword).unwrap();
    s.declare_trait("plan", TraitType::Keyword).unwrap();
    s.declare_trait("age", TraitType::Number).unwrap();
    s
}

/// A shard of 90 profiles: every third in FR, plans cycling through pro,
/// free and none.
fn shard() -> Shard {
    let mut shard = Shard::new(0);
    let commands: Vec<Command> = (0..90u64)
        .map(|p| {
            let country = if p % 3 == 0 { "FR" } else { "DE" };
            let mut traits = vec![("country".to_string(), Some(Value::Keyword(country.to_string())))];
            match p % 5 {
                0 | 1 => traits.push(("plan".to_string(), Some(Value::Keyword("pro".to_string())))),
                2 => traits.push(("plan".to_string(), Some(Value::Keyword("free".to_string())))),
                _ => {}
            }
            Command::Write(ProfileWrite {
                profile: p,
                time_ms: NOW,
                seq: p + 1,
                identifiers: vec![(IdentifierKind::UserId, format!("u{p}"))],
                traits,
                ..ProfileWrite::default()
            })
        })
        .collect();
    let out = shard.apply(&commands);
    assert!(out.rejections.is_empty(), "{:?}", out.rejections);
    shard
}

/// Saves every definition in order, as CreateSegment does, each checked
/// against the ones saved before it.
fn save_all(schema: &Schema, defs: &[(String, String)]) -> BTreeMap<String, String> {
    let mut catalog = BTreeMap::new();
    for (n, text) in defs {
        let ctx = CheckContext { schema, catalog: &catalog, now_ms: NOW };
        check_save(n, text, &ctx).unwrap_or_else(|e| panic!("saving {n}: {e}"));
        catalog.insert(n.clone(), text.clone());
    }
    catalog
}

/// The reproduction, on one shard without a server: every level means the
/// same as `s0` (shape 0) or as `s0 AND plan IN ("pro", "free")` (shape 1),
/// and count, eval, members, membership of every row and breakdown say so.
#[test]
fn nested_shared_segments_are_evaluated_once() {
    let schema = schema();
    let shard = shard();
    for (shape, same_as) in [(0u8, r#"country = "FR""#), (1, r#"country = "FR" AND plan IN ("pro", "free")"#)]
    {
        let catalog = save_all(&schema, &nested(shape));
        let ctx = CheckContext { schema: &schema, catalog: &catalog, now_ms: NOW };
        let want = compile(same_as, &ctx).unwrap();
        let want_rows = shard.members(&want, None, usize::MAX);
        assert!(!want_rows.is_empty());
        for text in
            [format!(r#"IN SEGMENT "{}""#, name(LEVELS)), format!(r#"NOT IN SEGMENT "{}""#, name(LEVELS))]
        {
            let cond = compile(&text, &ctx).unwrap_or_else(|e| panic!("{text}: {e}"));
            // A DAG: a few nodes per level, not 2^23 leaves.
            let nodes = distinct_nodes(&[&cond]);
            assert!(nodes <= 8 * LEVELS, "{text} compiles to {nodes} nodes");
            let negated = text.starts_with("NOT");
            let expected: Vec<u32> = if negated {
                (0..90).filter(|r| !want_rows.contains(r)).collect()
            } else {
                want_rows.clone()
            };
            assert_eq!(shard.count(&cond), expected.len() as u64, "count of {text}, shape {shape}");
            assert_eq!(shard.eval(&cond).len(), expected.len() as u64, "eval of {text}, shape {shape}");
            assert_eq!(shard.members(&cond, None, usize::MAX), expected, "members of {text}, shape {shape}");
            for row in 0..90u32 {
                assert_eq!(shard.row_matches(row, &cond), expected.contains(&row), "row {row} in {text}");
            }
            let mut got = shard.breakdown(&cond, "plan").unwrap();
            got.sort();
            let mut b = shard
                .breakdown(
                    &if negated { compile(&format!("NOT ({same_as})"), &ctx).unwrap() } else { want.clone() },
                    "plan",
                )
                .unwrap();
            b.sort();
            assert_eq!(got, b, "breakdown of {text}");
            // And next to other operands, where the planner orders them.
            let both = compile(&format!(r#"{text} AND age NOT EXISTS AND IN SEGMENT "s7""#), &ctx).unwrap();
            let s7 = compile(r#"IN SEGMENT "s7""#, &ctx).unwrap();
            let and_count = (0..90u32).filter(|r| expected.contains(r) && shard.row_matches(*r, &s7)).count();
            assert_eq!(shard.count(&both), and_count as u64, "{text} AND s7");
        }
    }
}

/// A definition or a query past either bound is refused, naming the bound;
/// one at the bound is accepted.
#[test]
fn compiled_size_and_depth_are_bounded() {
    let schema = schema();
    // Distinct leaves: `age = 1 OR age = 2 OR ...` has one node per
    // leaf and one for the OR.
    let ors = |from: usize, n: usize| {
        (from..from + n).map(|i| format!("age = {i}")).collect::<Vec<_>>().join(" OR ")
    };
    let ctx = CheckContext { schema: &schema, catalog: &BTreeMap::new(), now_ms: NOW };
    assert!(compile(&ors(0, MAX_COMPILED_NODES - 1), &ctx).is_ok(), "at the bound");
    let e = compile(&ors(0, MAX_COMPILED_NODES), &ctx).unwrap_err();
    assert!(matches!(e, SegmentError::TooLarge { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains(&MAX_COMPILED_NODES.to_string()), "{msg}");
    assert!(msg.contains("distinct condition nodes"), "{msg}");

    // Through saved segments: each is small, together they are too many
    // distinct nodes, and the definition that joins them is refused.
    let quarter = MAX_COMPILED_NODES / 4;
    let mut defs: Vec<(String, String)> =
        (0..4).map(|i| (format!("part{i}"), ors(i * quarter, quarter))).collect();
    let catalog = save_all(&schema, &defs);
    let all4 = "IN SEGMENT \"part0\" OR IN SEGMENT \"part1\" OR IN SEGMENT \"part2\" OR IN SEGMENT \"part3\"";
    let ctx = CheckContext { schema: &schema, catalog: &catalog, now_ms: NOW };
    let e = check_save("all4", all4, &ctx).unwrap_err();
    assert!(matches!(e, SegmentError::TooLarge { .. }), "{e:?}");
    // The same segment used many times counts once.
    let twice =
        "IN SEGMENT \"part0\" OR IN SEGMENT \"part1\" OR IN SEGMENT \"part0\" OR IN SEGMENT \"part1\"";
    assert!(check_save("twice", twice, &ctx).is_ok());

    // Depth: saved segments nested past the bound.
    defs.clear();
    defs.push((name(0), r#"country = "FR""#.to_string()));
    let mut level = 1;
    let e = loop {
        let prev = name(level - 1);
        let text = format!(r#"IN SEGMENT "{prev}" AND (plan = "pro" OR NOT IN SEGMENT "{prev}")"#);
        let catalog: BTreeMap<String, String> = defs.iter().cloned().collect();
        let ctx = CheckContext { schema: &schema, catalog: &catalog, now_ms: NOW };
        match check_save(&name(level), &text, &ctx) {
            Ok(_) => defs.push((name(level), text)),
            Err(e) => break e,
        }
        level += 1;
        assert!(level < 4 * MAX_COMPILED_DEPTH, "no depth bound");
    };
    assert!(matches!(e, SegmentError::TooDeep { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains(&MAX_COMPILED_DEPTH.to_string()), "{msg}");
    assert!(level > 10, "refused too early, at level {level}: {msg}");
    // A query over the deepest saved segment is accepted; one more level
    // in the query itself is refused.
    let catalog: BTreeMap<String, String> = defs.iter().cloned().collect();
    let ctx = CheckContext { schema: &schema, catalog: &catalog, now_ms: NOW };
    let top = name(level - 1);
    let deepest = compile(&format!(r#"IN SEGMENT "{top}""#), &ctx).unwrap();
    // The deepest condition accepted evaluates without exhausting the stack.
    let shard = shard();
    let fr_pro = compile(r#"country = "FR" AND plan = "pro""#, &ctx).unwrap();
    assert_eq!(shard.count(&deepest), shard.count(&fr_pro));
    assert_eq!(shard.members(&deepest, None, usize::MAX), shard.members(&fr_pro, None, usize::MAX));
    assert!((0..90).all(|r| shard.row_matches(r, &deepest) == shard.row_matches(r, &fr_pro)));
    let deeper = format!(r#"IN SEGMENT "{top}" AND (plan = "pro" OR NOT IN SEGMENT "{top}")"#);
    assert!(matches!(compile(&deeper, &ctx), Err(SegmentError::TooDeep { .. })));
}

/// Count, Check, Members, Breakdown and GetProfile over the reproduction,
/// on a real server: the right answers, and a Count of `ALL` is not held up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_served_node_answers_over_nested_shared_segments() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), 4, &[]);
    let msgs: Vec<String> = (0..60)
        .map(|k| {
            let country = if k % 3 == 0 { "FR" } else { "DE" };
            json!({"type":"identify","userId":format!("u{k}"),"traits":{"country":country,"plan":"pro"}})
                .to_string()
        })
        .collect();
    s.ingest(msgs).await.unwrap();
    let channel = s.channel().await;
    let mut seg = pb::segments_client::SegmentsClient::new(channel.clone());
    for (n, text) in nested(0) {
        let r = pb::CreateSegmentRequest { name: n.clone(), expression: text, description: String::new() };
        seg.create_segment(r).await.unwrap_or_else(|e| panic!("create {n}: {e}"));
    }
    let top = format!("segment:{}", name(LEVELS));
    assert_eq!(s.count(&[&top, "ALL", r#"NOT IN SEGMENT "s23""#]).await, vec![20, 60, 40]);
    let check = s.check("u3", &[&top, r#"NOT IN SEGMENT "s9""#]).await.unwrap();
    assert_eq!(check.matches, vec![true, false]);
    let check = s.check("u4", &[&top]).await.unwrap();
    assert_eq!(check.matches, vec![false]);
    let p = s.profile("u3").await.unwrap();
    let mut want: Vec<String> = (0..=LEVELS).map(name).collect();
    want.sort();
    let mut got = p.segments.clone();
    got.sort();
    assert_eq!(got, want);
    assert!(s.profile("u4").await.unwrap().segments.is_empty());
    let mut q = pb::query_client::QueryClient::new(channel.clone());
    let b = q
        .breakdown(pb::BreakdownRequest {
            trait_name: "country".into(),
            expression: top.clone(),
            top: 5,
            now: String::new(),
            max_staleness_ms: 0,
            allow_partial: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(b.total, 20);
    let mut stream = q
        .members(pb::MembersRequest {
            expression: top.clone(),
            traits: vec![],
            page_size: 100,
            cursor: String::new(),
            limit: 0,
            now: String::new(),
            max_staleness_ms: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut members = 0;
    while let Some(page) = stream.message().await.unwrap() {
        members += page.members.len();
    }
    assert_eq!(members, 20);
    // A definition past the bound is refused by the server and names it.
    let huge =
        (0..MAX_COMPILED_NODES).map(|i| format!("country = \"c{i}\"")).collect::<Vec<_>>().join(" OR ");
    let r = pb::CreateSegmentRequest { name: "huge".into(), expression: huge, description: String::new() };
    let e = seg.create_segment(r).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains(&MAX_COMPILED_NODES.to_string()), "{}", e.message());
}
