//! Issue 12, the bounds on names, over real gRPC against a `cohort serve`
//! process: the schema's caps (a small configured cap refuses a new name
//! with the cap's name and value, and a change of caps between restarts
//! applies from its place in the log), `GetSchema` in pages (and `cohort
//! schema show` paging through them), and names: every name accepted at
//! ingest can be written in a query, the others (the empty name) are
//! refused with why, values lost to flattening are reported, and every way
//! of giving a message's time is held to one range.

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use cohort::proto::v1 as pb;
use common::Server;
use serde_json::json;

fn m(v: serde_json::Value) -> String {
    v.to_string()
}

/// A config file with the given caps.
fn config_with(dir: &std::path::Path, caps: &str) -> String {
    let path = dir.join("cohort.toml");
    std::fs::write(&path, caps).unwrap();
    path.to_str().unwrap().to_string()
}

async fn schema_page(s: &Server, limit: u32, page_token: String, prefix: &str) -> pb::SchemaReply {
    let mut c = pb::admin_client::AdminClient::new(s.channel().await);
    c.get_schema(pb::GetSchemaRequest { limit, page_token, prefix: prefix.into() })
        .await
        .unwrap()
        .into_inner()
}

/// Every page of the schema; returns the trait names, the events with
/// their property names (continued events joined) and the pages' sizes.
async fn read_schema(
    s: &Server,
    limit: u32,
    prefix: &str,
) -> (Vec<String>, Vec<(String, Vec<String>)>, Vec<usize>) {
    let (mut traits, mut events, mut sizes) = (Vec::new(), Vec::<(String, Vec<String>)>::new(), Vec::new());
    let mut token = String::new();
    for _ in 0..10_000 {
        let page = schema_page(s, limit, token, prefix).await;
        sizes.push(prost::Message::encoded_len(&page));
        traits.extend(page.traits.iter().map(|f| f.name.clone()));
        for e in page.events {
            let props: Vec<String> = e.properties.iter().map(|p| p.name.clone()).collect();
            match events.last_mut() {
                Some((last, have)) if *last == e.name => have.extend(props),
                _ => events.push((e.name, props)),
            }
        }
        if page.next_page_token.is_empty() {
            return (traits, events, sizes);
        }
        token = page.next_page_token;
    }
    panic!("GetSchema never gave its last page");
}

async fn rejected_total(s: &Server) -> u64 {
    let mut c = pb::admin_client::AdminClient::new(s.channel().await);
    c.list_rejected(pb::ListRejectedRequest { limit: 1 }).await.unwrap().into_inner().total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_caps_refuse_new_names_and_the_schema_comes_in_pages() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = config_with(dir.path(), "max_traits = 2500\nmax_events = 3\nmax_properties_per_event = 4\n");
    let s = Server::start(&data, 2, &["--config", &config]);

    // 2,500 traits fill the cap; the next new one is refused, a known one is not.
    let mut batch: Vec<String> = (0..25)
        .map(|b| {
            let traits: serde_json::Map<String, serde_json::Value> =
                (0..100).map(|i| (format!("trait_{:04}", b * 100 + i), json!(i))).collect();
            m(json!({"type": "identify", "userId": format!("u{b}"), "traits": traits}))
        })
        .collect();
    batch
        .push(m(json!({"type": "identify", "userId": "u0", "traits": {"one_too_many": 1, "trait_0001": 7}})));
    let r = s.ingest(batch).await.unwrap();
    assert_eq!(r.applied, 26);
    assert_eq!(r.rejections.len(), 1, "{:?}", r.rejections);
    assert_eq!((r.rejections[0].position, r.rejections[0].field.as_str()), (25, "traits.one_too_many"));
    assert!(r.rejections[0].reason.contains("`max_traits` is 2500"), "{}", r.rejections[0].reason);
    assert_eq!(s.count(&["trait_0001 = 7"]).await, vec![1]);

    // Three events fill `max_events`; a fourth refuses its message.
    let events: Vec<String> = ["e1", "e2", "e3", "e4"]
        .iter()
        .map(|e| {
            m(json!({"type": "track", "userId": "u1", "event": e, "messageId": format!("m-{e}"),
            "properties": {"p1": 1, "p2": 2, "p3": 3, "p4": 4, "p5": 5}}))
        })
        .collect();
    let r = s.ingest(events.clone()).await.unwrap();
    assert_eq!(r.applied, 3);
    let got: Vec<(u64, &str)> = r.rejections.iter().map(|x| (x.position, x.field.as_str())).collect();
    assert_eq!(got, vec![(0, "properties.p5"), (1, "properties.p5"), (2, "properties.p5"), (3, "event")]);
    assert!(r.rejections[0].reason.contains("`max_properties_per_event` is 4"), "{:?}", r.rejections[0]);
    assert!(r.rejections[3].reason.contains("new event `e4`"), "{:?}", r.rejections[3]);
    assert!(r.rejections[3].reason.contains("`max_events` is 3"), "{:?}", r.rejections[3]);
    assert!(s.try_count(&["DID \"e4\""]).await.is_err(), "e4 is unknown");

    // The schema in pages: the default page is 1,000 entries.
    let (traits, evs, sizes) = read_schema(&s, 0, "").await;
    let want: Vec<String> = (0..2500).map(|i| format!("trait_{i:04}")).collect();
    assert_eq!(traits, want);
    let want_events: Vec<(String, Vec<String>)> = ["e1", "e2", "e3"]
        .iter()
        .map(|e| (e.to_string(), (1..=4).map(|p| format!("p{p}")).collect()))
        .collect();
    assert_eq!(evs, want_events);
    assert_eq!(sizes.len(), 3, "{sizes:?}");
    assert!(sizes.iter().all(|b| *b < 4 << 20), "{sizes:?}");
    // Small pages, and pages that end inside an event, cover it the same.
    let (t, e, sizes) = read_schema(&s, 7, "").await;
    assert_eq!((t, e), (want.clone(), want_events.clone()));
    assert_eq!(sizes.len(), (2500 + 3 + 12usize).div_ceil(7));
    let (t, e, _) = read_schema(&s, 2, "e").await;
    assert_eq!((t.len(), e), (0, want_events.clone()));
    let (t, _, _) = read_schema(&s, 0, "trait_24").await;
    assert_eq!(t.len(), 100);
    // The reply says the sizes and the caps.
    let first = schema_page(&s, 0, String::new(), "").await;
    assert_eq!((first.trait_count, first.event_count, first.property_count), (2500, 3, 12));
    let caps = first.caps.unwrap();
    assert_eq!((caps.max_traits, caps.max_events, caps.max_properties_per_event), (2500, 3, 4));
    // A made-up token is refused.
    let mut c = pb::admin_client::AdminClient::new(s.channel().await);
    let e = c
        .get_schema(pb::GetSchemaRequest { limit: 0, page_token: "nope".into(), prefix: String::new() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");

    // `cohort schema show` pages through the whole schema.
    let out = Command::new(env!("CARGO_BIN_EXE_cohort"))
        .args(["--addr", &format!("http://{}", s.grpc), "--json", "schema", "show", "--page-size", "100"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["traits"].as_array().unwrap().len(), 2500);
    assert_eq!(shown["events"].as_array().unwrap().len(), 3);
    assert_eq!(shown["caps"]["max_events"], json!(3));

    // A restart after kill -9 replays the log under the caps of its time:
    // the same rejections, the same schema.
    let before = rejected_total(&s).await;
    let s = s.restart_after_kill();
    assert_eq!(rejected_total(&s).await, before);
    assert_eq!(read_schema(&s, 0, "").await.0.len(), 2500);

    // Raised in the configuration, the cap applies from the restart on:
    // the refused event's message, sent again, is applied (it was not
    // remembered as a duplicate), and a replay keeps both decisions.
    drop(s);
    let config = config_with(dir.path(), "max_traits = 2500\nmax_events = 4\nmax_properties_per_event = 4\n");
    let s = Server::start(&data, 2, &["--config", &config]);
    let r = s.ingest(vec![events[3].clone()]).await.unwrap();
    assert_eq!((r.applied, r.duplicates), (1, 0), "{:?}", r.rejections);
    assert_eq!(s.count(&["DID \"e4\""]).await, vec![1]);
    let total = rejected_total(&s).await;
    let s = s.restart_after_kill();
    assert_eq!(rejected_total(&s).await, total);
    assert_eq!(s.count(&["DID \"e4\"", "DID \"e1\""]).await, vec![1, 1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_name_can_be_queried_and_the_rest_are_refused_with_why() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), 2, &[]);
    let r = s
        .ingest(vec![
            m(json!({"type": "identify", "userId": "ada", "traits": {
                "a`b": "x", "``": "two", "sp ace": 2, "and": true, "": 1, "a": {"b": 1}, "a.b": 2, "nest": {"": 3}}})),
            m(json!({"type": "track", "userId": "ada", "event": "ev`ent \"q\"",
                "properties": {"p`q": 5, "": 1, "x": {"y": 1}, "x.y": 2}})),
            m(json!({"type": "track", "userId": "ada", "event": ""})),
            m(json!({"type": "track", "anonymousId": "t1", "event": "e",
                "sentAt": "9999-12-31T23:59:59Z", "originalTimestamp": "0000-01-01T00:00:00Z"})),
            m(json!({"type": "track", "anonymousId": "t2", "event": "e",
                "sentAt": "0000-01-01T00:00:00Z", "originalTimestamp": "9999-12-31T23:59:59Z"})),
        ])
        .await
        .unwrap();
    assert_eq!(r.applied, 2, "{:?}", r.rejections);
    let got: BTreeSet<(u64, String)> = r.rejections.iter().map(|x| (x.position, x.field.clone())).collect();
    let want: BTreeSet<(u64, String)> = [
        (0, "traits."),
        (0, "traits.a.b"),
        (1, "properties."),
        (1, "properties.x.y"),
        (2, ""),
        (3, ""),
        (4, ""),
    ]
    .into_iter()
    .map(|(p, f)| (p, f.to_string()))
    .collect();
    assert_eq!(got, want, "{:#?}", r.rejections);
    for x in &r.rejections {
        let why = &x.reason;
        match (x.position, x.field.as_str()) {
            (_, "traits." | "properties.") => assert!(why.contains("empty"), "{why}"),
            (0, "traits.a.b") => assert!(why.contains("this value, 1, is dropped and 2 is kept"), "{why}"),
            (1, "properties.x.y") => assert!(why.contains("this value, 1, is dropped"), "{why}"),
            (2, _) => assert!(why.contains("`event`"), "{why}"),
            (3 | 4, _) => assert!(
                why.contains("receivedAt - (sentAt - originalTimestamp)")
                    && why.contains("9999-12-31T23:59:59.999Z"),
                "{why}"
            ),
            other => panic!("unexpected rejection {other:?}: {why}"),
        }
    }
    // Every stored name can be written: a backtick inside backticks twice,
    // an event name in a string with its escapes.
    let counts = s
        .count(&[
            "`a``b` = \"x\"",
            "`````` = \"two\"",
            "`sp ace` = 2",
            "`and` = true",
            "a.b = 2",
            "a.b = 1",
            "`nest.` = 3",
            r#"DID "ev`ent \"q\"" WHERE `p``q` = 5"#,
            r#"DID "ev`ent \"q\"" WHERE x.y = 2"#,
        ])
        .await;
    assert_eq!(counts, vec![1, 1, 1, 1, 1, 0, 1, 1, 1]);
    // Nothing out of range was stored: the two messages made no profile.
    assert_eq!(s.count(&["anonymous_id IN (\"t1\", \"t2\")"]).await, vec![0]);
}
