//! The node as a real process over real gRPC: identity stories, crash
//! safety under kill -9 (during a load and during merges), bad input.

mod common;

use common::{trait_of, Server};
use serde_json::json;

fn m(v: serde_json::Value) -> String {
    v.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_stories() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), 4, &[]);
    let t = |d: u32| format!("2026-10-{d:02}T10:00:00Z");

    // Anonymous browsing, then identify: one profile with both ids.
    let r = s
        .ingest(vec![
            m(json!({"type":"page","anonymousId":"a1","name":"Home","timestamp":t(1),"properties":{"path":"/"}})),
            m(json!({"type":"track","anonymousId":"a1","event":"add_to_cart","timestamp":t(2),"properties":{"sku":"x"}})),
            m(json!({"type":"identify","anonymousId":"a1","userId":"u1","timestamp":t(3),"traits":{"plan":"pro"}})),
        ])
        .await
        .unwrap();
    assert_eq!((r.applied, r.rejections.len()), (3, 0), "{r:?}");
    let p = s.profile("u1").await.unwrap();
    assert!(p.identifiers.iter().any(|i| i.kind == "anonymous_id" && i.value == "a1"), "{p:?}");
    assert_eq!(p.event_count, 2);
    assert_eq!(
        s.check("anonymous_id:a1", &[r#"DID "add_to_cart""#, r#"plan = "pro""#]).await.unwrap().matches,
        vec![true, true]
    );

    // Alias: a separately browsing anonymous profile joins a known user.
    s.ingest(vec![
        m(json!({"type":"track","anonymousId":"a2","event":"add_to_cart","timestamp":t(1)})),
        m(json!({"type":"identify","userId":"u2","timestamp":t(2),"traits":{"plan":"free"}})),
    ])
    .await
    .unwrap();
    let before = s.universe().await;
    let r = s
        .ingest(vec![m(json!({"type":"alias","userId":"u2","previousId":"a2","timestamp":t(4)}))])
        .await
        .unwrap();
    assert_eq!(r.applied, 1);
    assert_eq!(s.universe().await, before - 1, "the alias merged two profiles");
    let c = s.check("u2", &[r#"DID "add_to_cart""#]).await.unwrap();
    assert_eq!(c.matches, vec![true]);
    assert_eq!(s.check("anonymous_id:a2", &["user_id EXISTS"]).await.unwrap().profile_id, c.profile_id);

    // Two known users on one device: the device stays with the first.
    s.ingest(vec![m(
        json!({"type":"identify","userId":"u3","anonymousId":"d1","timestamp":t(1),"traits":{"name":"Ann"}}),
    )])
    .await
    .unwrap();
    let r = s
        .ingest(vec![m(json!({"type":"identify","userId":"u4","anonymousId":"d1","timestamp":t(2),"traits":{"name":"Bob"}}))])
        .await
        .unwrap();
    assert_eq!(r.applied, 1);
    let u3 = s.profile("u3").await.unwrap();
    let u4 = s.profile("u4").await.unwrap();
    assert_ne!(u3.profile_id, u4.profile_id);
    assert_eq!(s.profile("anonymous_id:d1").await.unwrap().profile_id, u3.profile_id);
    assert_eq!(trait_of(&u4, "name").as_deref(), Some("\"Bob\""));
    assert!(!u4.identifiers.iter().any(|i| i.value == "d1"), "{u4:?}");

    // A late old identify does not overwrite a newer value.
    s.ingest(vec![m(json!({"type":"identify","userId":"u5","timestamp":t(10),"traits":{"plan":"pro"}}))])
        .await
        .unwrap();
    s.ingest(vec![m(
        json!({"type":"identify","userId":"u5","timestamp":t(5),"traits":{"plan":"free","seats":3}}),
    )])
    .await
    .unwrap();
    let u5 = s.profile("u5").await.unwrap();
    assert_eq!(trait_of(&u5, "plan").as_deref(), Some("\"pro\""));
    assert_eq!(trait_of(&u5, "seats").as_deref(), Some("3"), "an older message still sets what is unset");

    // Duplicate messageIds, in one batch and across batches.
    let dup = m(
        json!({"type":"track","userId":"u6","event":"purchase","messageId":"dup-1","timestamp":t(3),"properties":{"amount":10}}),
    );
    let r = s.ingest(vec![dup.clone(), dup.clone()]).await.unwrap();
    assert_eq!((r.applied, r.duplicates), (1, 1));
    let r = s.ingest(vec![dup]).await.unwrap();
    assert_eq!((r.applied, r.duplicates), (0, 1));
    assert_eq!(s.profile("u6").await.unwrap().event_count, 1);

    // null unsets; nested traits flatten; context.traits apply.
    s.ingest(vec![
        m(json!({"type":"identify","userId":"u7","timestamp":t(1),"traits":{"age":30,"address":{"city":"Lyon","zip":"69001"}}})),
        m(json!({"type":"identify","userId":"u7","timestamp":t(2),"traits":{"age":null}})),
        m(json!({"type":"track","userId":"u7","event":"login","timestamp":t(3),"context":{"traits":{"tier":"gold"}}})),
    ])
    .await
    .unwrap();
    let c = s
        .check("u7", &["age EXISTS", r#"address.city = "Lyon""#, r#"tier = "gold""#, r#"DID "login""#])
        .await
        .unwrap();
    assert_eq!(c.matches, vec![false, true, true, true]);

    // Group adds to the groups list.
    s.ingest(vec![m(
        json!({"type":"group","userId":"u7","groupId":"acme","timestamp":t(4),"traits":{"size":10}}),
    )])
    .await
    .unwrap();
    assert_eq!(s.check("u7", &[r#"groups CONTAINS "acme""#]).await.unwrap().matches, vec![true]);

    // Merges and rejections are listable.
    let mut admin = cohort::proto::v1::admin_client::AdminClient::new(s.channel().await);
    let merges =
        admin.list_merges(cohort::proto::v1::ListMergesRequest { limit: 10 }).await.unwrap().into_inner();
    assert!(merges.merges.iter().any(|r| r.linked_by == "anonymous_id:a2"), "{merges:?}");

    // Everything survives a kill -9.
    let s = s.restart_after_kill();
    let u5 = s.profile("u5").await.unwrap();
    assert_eq!(trait_of(&u5, "plan").as_deref(), Some("\"pro\""));
    assert_eq!(s.profile("anonymous_id:d1").await.unwrap().profile_id, u3.profile_id);
    assert_eq!(s.check("u7", &["age EXISTS", r#"tier = "gold""#]).await.unwrap().matches, vec![false, true]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_right_error_and_loses_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), 2, &[]);
    let r = s
        .ingest(vec![
            "{not json".into(),
            m(json!({"type":"identify","traits":{"a":1}})),
            m(json!({"type":"track","userId":"x"})),
            m(json!({"type":"identify","userId":"ok","traits":{"age":30}})),
            m(json!({"type":"identify","userId":"ok2","traits":{"age":"thirty","plan":"pro"}})),
            m(json!({"type":"fly","userId":"x"})),
        ])
        .await
        .unwrap();
    assert_eq!(r.applied, 2, "{r:?}");
    let by_pos: Vec<(u64, &str)> = r.rejections.iter().map(|x| (x.position, x.field.as_str())).collect();
    assert_eq!(by_pos, vec![(0, ""), (1, ""), (2, ""), (4, "traits.age"), (5, "")], "{r:?}");
    assert!(
        r.rejections[1].reason.contains("userId") || r.rejections[1].reason.contains("anonymousId"),
        "{:?}",
        r.rejections[1]
    );
    assert_eq!(
        s.check("ok2", &[r#"plan = "pro""#]).await.unwrap().matches,
        vec![true],
        "the other fields applied"
    );

    // A bad query names the position.
    let e = s.try_count(&[r#"country = "#]).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(
        e.message().contains("column") || e.message().contains("position") || e.message().contains("1:"),
        "{}",
        e.message()
    );
    let e = s.check("nobody", &["age > 1"]).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{}", e.message());
    let e = s.try_count(&[r#"IN SEGMENT "nope""#]).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{}", e.message());

    // The standard health service and server reflection answer.
    let channel = s.channel().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let h = health
        .check(tonic_health::pb::HealthCheckRequest { service: "cohort.v1.Query".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(h.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    {
        use tonic_reflection::pb::v1::{
            server_reflection_client::ServerReflectionClient, server_reflection_request::MessageRequest,
            server_reflection_response::MessageResponse, ServerReflectionRequest,
        };
        let mut reflection = ServerReflectionClient::new(channel);
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut replies =
            reflection.server_reflection_info(tokio_stream::iter(vec![request])).await.unwrap().into_inner();
        let reply = replies.message().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
            panic!("unexpected reflection reply {reply:?}")
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        for want in ["cohort.v1.Ingest", "cohort.v1.Query", "cohort.v1.Segments", "cohort.v1.Admin"] {
            assert!(names.iter().any(|n| n == want), "{want} missing from {names:?}");
        }
    }

    // Rejections are kept for operators.
    let mut admin = cohort::proto::v1::admin_client::AdminClient::new(s.channel().await);
    let rej = admin
        .list_rejected(cohort::proto::v1::ListRejectedRequest { limit: 100 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rej.total, 5);
    assert!(rej.rejections.iter().all(|r| r.source == "grpc"));
}

/// Waits until `reached` says the observed progress is there (it returns
/// whether it is and what it saw, or why it never will be), looking every
/// 10 ms for up to two minutes; panics naming `what` and the last
/// observation otherwise. A kill that follows lands at a known point.
async fn wait_for_progress(what: &str, mut reached: impl FnMut() -> Result<(bool, String), String>) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let seen = match reached() {
            Ok((true, _)) => return,
            Ok((false, seen)) => seen,
            Err(never) => panic!("{what} cannot be reached: {never}"),
        };
        assert!(std::time::Instant::now() < deadline, "{what} not reached within 120 s (last seen: {seen})");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// The groups whose snapshot the data directory's manifest records.
fn snapshotted_groups(data_dir: &std::path::Path) -> Vec<u64> {
    use cohort::replication::manifest::{ManifestState, MANIFEST_FILE};
    // The manifest is replaced by a rename: a read sees a whole one.
    let Ok(text) = std::fs::read_to_string(data_dir.join(MANIFEST_FILE)) else { return Vec::new() };
    let Ok(state) = serde_json::from_str::<ManifestState>(&text) else { return Vec::new() };
    state.groups.iter().filter(|(_, g)| g.snapshot.is_some()).map(|(id, _)| *id).collect()
}

/// Sends every batch in order to a running server; each must be
/// acknowledged without rejections.
async fn send_all(s: &Server, batches: &[Vec<String>]) {
    let channel = s.channel().await;
    for (i, b) in batches.iter().enumerate() {
        let mut c = cohort::proto::v1::ingest_client::IngestClient::new(channel.clone());
        let call = c.ingest_batch(cohort::proto::v1::IngestBatchRequest { messages: b.clone() });
        let reply = call.await.unwrap_or_else(|e| panic!("batch {i}: {e}"));
        assert_eq!(reply.into_inner().rejections.len(), 0, "batch {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_load_keeps_every_acknowledged_message_once() {
    let dir = tempfile::tempdir().unwrap();
    // Snapshots every few entries: the kill lands among snapshots, log
    // compactions and steps still in the catalog's outbox.
    let config = dir.path().join("cohort.toml");
    std::fs::write(&config, "snapshot_entries = 5\n").unwrap();
    let mut s = Server::start(&dir.path().join("data"), 4, &["--config", config.to_str().unwrap()]);
    let batches: Vec<Vec<String>> = (0..200)
        .map(|b| {
            (0..250)
                .map(|i| {
                    let k = b * 250 + i;
                    m(json!({"type":"track","userId":format!("u{k}"),"event":"e","messageId":format!("m{k}"),
                        "timestamp":"2026-10-01T00:00:00Z","properties":{"batch":b}}))
                })
                .collect()
        })
        .collect();
    // Load in the background and kill the server while it runs, once 20
    // batches are acknowledged and the catalog and a shard have written
    // snapshots (so their logs were compacted behind them).
    let channel = s.channel().await;
    let progress = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sender = {
        let (batches, progress) = (batches.clone(), progress.clone());
        tokio::spawn(async move {
            let mut acked = 0usize;
            for b in batches {
                let mut c = cohort::proto::v1::ingest_client::IngestClient::new(channel.clone());
                match c.ingest_batch(cohort::proto::v1::IngestBatchRequest { messages: b }).await {
                    Ok(_) => acked += 1,
                    Err(_) => break,
                }
                progress.store(acked, std::sync::atomic::Ordering::Release);
            }
            acked
        })
    };
    const KILL_AFTER_BATCHES: usize = 20;
    let data_dir = dir.path().join("data");
    wait_for_progress("20 acknowledged batches and snapshots of the catalog and a shard", || {
        let acked = progress.load(std::sync::atomic::Ordering::Acquire);
        let snapshotted = snapshotted_groups(&data_dir);
        if sender.is_finished() {
            return Err(format!("the whole load was acknowledged first (snapshots of {snapshotted:?})"));
        }
        let reached =
            acked >= KILL_AFTER_BATCHES && snapshotted.contains(&1) && snapshotted.iter().any(|&g| g >= 2);
        Ok((reached, format!("{acked} batches acknowledged, snapshots of groups {snapshotted:?}")))
    })
    .await;
    s.kill9();
    let acked = sender.await.unwrap();
    assert!(
        (KILL_AFTER_BATCHES..batches.len()).contains(&acked),
        "the kill lands mid-load, after {KILL_AFTER_BATCHES} batches (acked {acked})"
    );
    let s = s.restart_after_kill();
    // Every acknowledged batch is there, whole.
    for b in 0..acked {
        let n = s.count(&[&format!(r#"DID "e" WHERE batch = {b}"#)]).await[0];
        assert_eq!(n, 250, "acknowledged batch {b}");
    }
    // Resend everything: the acknowledged part is deduplicated, the rest
    // applies, and nobody has the event twice.
    send_all(&s, &batches).await;
    let c = s.count(&[r#"DID "e""#, r#"DID "e" AT LEAST 2 TIMES"#]).await;
    assert_eq!(c, vec![50_000, 0]);
    assert_eq!(s.universe().await, 50_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_merges_leaves_each_merge_before_or_after() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cohort.toml");
    std::fs::write(&config, "snapshot_entries = 20\n").unwrap();
    let mut s = Server::start(&dir.path().join("data"), 8, &["--config", config.to_str().unwrap()]);
    let n = 4_000;
    // n anonymous browsers and n known users, then n aliases joining them.
    let setup: Vec<String> = (0..n)
        .flat_map(|k| {
            [
                m(json!({"type":"track","anonymousId":format!("a{k}"),"event":"browse","timestamp":"2026-10-01T00:00:00Z"})),
                m(json!({"type":"identify","userId":format!("u{k}"),"timestamp":"2026-10-02T00:00:00Z","traits":{"k":k}})),
            ]
        })
        .collect();
    for chunk in setup.chunks(2_000) {
        s.ingest(chunk.to_vec()).await.unwrap();
    }
    assert_eq!(s.universe().await, 2 * n);
    let aliases: Vec<Vec<String>> = (0..n)
        .collect::<Vec<_>>()
        .chunks(100)
        .map(|ks| {
            ks.iter()
                .map(|k| m(json!({"type":"alias","userId":format!("u{k}"),"previousId":format!("a{k}"),"messageId":format!("al{k}")})))
                .collect()
        })
        .collect();
    // Merge in the background and kill the server once 5 batches of 100
    // aliases are acknowledged, with the next ones in flight.
    let channel = s.channel().await;
    let progress = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sender = {
        let (aliases, progress) = (aliases.clone(), progress.clone());
        tokio::spawn(async move {
            let mut acked = 0usize;
            for b in aliases {
                let mut c = cohort::proto::v1::ingest_client::IngestClient::new(channel.clone());
                match c.ingest_batch(cohort::proto::v1::IngestBatchRequest { messages: b }).await {
                    Ok(_) => acked += 1,
                    Err(_) => break,
                }
                progress.store(acked, std::sync::atomic::Ordering::Release);
            }
            acked
        })
    };
    const KILL_AFTER_BATCHES: usize = 5;
    wait_for_progress("5 acknowledged batches of aliases", || {
        if sender.is_finished() {
            return Err("every alias was acknowledged first".into());
        }
        let acked = progress.load(std::sync::atomic::Ordering::Acquire);
        Ok((acked >= KILL_AFTER_BATCHES, format!("{acked} batches acknowledged")))
    })
    .await;
    s.kill9();
    let acked = sender.await.unwrap();
    assert!(
        (KILL_AFTER_BATCHES..aliases.len()).contains(&acked),
        "the kill lands mid-merge, after {KILL_AFTER_BATCHES} batches (acked {acked})"
    );
    let acked = acked as u64;
    let s = s.restart_after_kill();
    // Each browse event is on exactly one profile; each pair is either
    // merged (one profile with both) or not (two profiles), never half.
    let c = s.count(&[r#"DID "browse""#, r#"user_id EXISTS AND DID "browse""#]).await;
    assert_eq!(c[0], n, "every browse event once");
    let merged = c[1];
    assert!(merged >= acked * 100, "acknowledged merges are there: {merged} < {}", acked * 100);
    assert_eq!(s.universe().await, 2 * n - merged, "merged-away profiles left the universe");
    for k in (0..n).step_by(97) {
        let a = s.check(&format!("anonymous_id:a{k}"), &[r#"DID "browse""#]).await.unwrap();
        let u = s.check(&format!("u{k}"), &[r#"DID "browse""#]).await.unwrap();
        assert_eq!(a.matches, vec![true]);
        if a.profile_id == u.profile_id {
            assert_eq!(u.matches, vec![true]);
        } else {
            assert_eq!(u.matches, vec![false], "u{k}: not merged yet has the browse event");
        }
    }
    // Finishing the aliases merges everyone.
    send_all(&s, &aliases).await;
    assert_eq!(s.universe().await, n);
    assert_eq!(s.count(&[r#"user_id EXISTS AND DID "browse""#]).await, vec![n]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_pages_cover_every_member_once_and_saved_segments_work() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), 4, &[]);
    let msgs: Vec<String> = (0..60)
        .map(|k| m(json!({"type":"identify","userId":format!("u{k}"),"traits":{"vip":k % 2 == 0,"k":k}})))
        .collect();
    s.ingest(msgs).await.unwrap();
    let channel = s.channel().await;
    let mut q = cohort::proto::v1::query_client::QueryClient::new(channel.clone());
    for (page_size, limit) in [(7u32, 0u64), (30, 30), (5, 12)] {
        let mut seen = Vec::new();
        let mut cursor = String::new();
        loop {
            let mut stream = q
                .members(cohort::proto::v1::MembersRequest {
                    expression: "vip = true".into(),
                    traits: vec!["k".into()],
                    page_size,
                    cursor: cursor.clone(),
                    limit,
                    now: String::new(),
                    max_staleness_ms: 0,
                })
                .await
                .unwrap()
                .into_inner();
            let mut last = String::new();
            while let Some(page) = stream.message().await.unwrap() {
                for mem in &page.members {
                    let k: u64 = mem.traits["k"].parse().unwrap();
                    assert_eq!(k % 2, 0);
                    seen.push(mem.user_id.clone());
                }
                last = page.cursor;
            }
            if limit == 0 || last.is_empty() || seen.len() >= 30 {
                assert!(limit != 0 || last.is_empty(), "no cursor after the last member");
                break;
            }
            cursor = last;
        }
        let mut unique = seen.clone();
        unique.sort();
        unique.dedup();
        assert_eq!((seen.len(), unique.len()), (30, 30), "page size {page_size}, limit {limit}");
    }
    // Saved segments: create, use, refuse a cycle and a delete in use.
    let mut seg = cohort::proto::v1::segments_client::SegmentsClient::new(channel);
    let req = |name: &str, e: &str| cohort::proto::v1::CreateSegmentRequest {
        name: name.into(),
        expression: e.into(),
        description: String::new(),
    };
    seg.create_segment(req("vips", "vip = true")).await.unwrap();
    seg.create_segment(req("big_vips", r#"IN SEGMENT "vips" AND k >= 30"#)).await.unwrap();
    assert_eq!(s.count(&["segment:vips", "segment:big_vips"]).await, vec![30, 15]);
    let e = seg.create_segment(req("vips", "k > 1")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::AlreadyExists);
    let e = seg
        .delete_segment(cohort::proto::v1::DeleteSegmentRequest { name: "vips".into() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert!(e.message().contains("big_vips"), "{}", e.message());
    let e = seg.create_segment(req("loop", r#"IN SEGMENT "loop""#)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let p = s.profile("u4").await.unwrap();
    assert_eq!(p.segments, vec!["vips".to_string()]);
    // Saved segments are durable.
    let s = s.restart_after_kill();
    assert_eq!(s.count(&["segment:big_vips"]).await, vec![15]);
}

/// One HTTP/1.1 request over a fresh connection; returns (status, body).
fn http_post(addr: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String) {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    conn.write_all(head.as_bytes()).unwrap();
    let _ = conn.write_all(body);
    let mut reply = Vec::new();
    let _ = conn.read_to_end(&mut reply);
    let text = String::from_utf8_lossy(&reply).to_string();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_door_refuses_bad_requests_and_keeps_good_ones() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cohort.toml");
    std::fs::write(&config, "write_keys = [\"good\"]\nmax_batch_bytes = 20000\n").unwrap();
    let s = Server::start(&dir.path().join("data"), 2, &["--config", config.to_str().unwrap()]);
    let key = [("X-Write-Key", "good")];
    let batch = json!({"batch":[{"type":"identify","userId":"h1","traits":{"plan":"pro"}}]}).to_string();
    assert_eq!(http_post(&s.http, "/v1/batch", &[("X-Write-Key", "bad")], batch.as_bytes()).0, 401);
    assert_eq!(http_post(&s.http, "/v1/batch", &[], batch.as_bytes()).0, 401);
    let (status, body) = http_post(&s.http, "/v1/batch", &key, b"{\"batch\": [");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("line 1"), "{body}");
    let (status, body) =
        http_post(&s.http, "/v1/batch", &[key[0], ("Content-Encoding", "gzip")], b"not gzip at all");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("gzip"), "{body}");
    let big: Vec<serde_json::Value> =
        (0..1000).map(|k| json!({"type":"track","userId":format!("big{k}"),"event":"e"})).collect();
    let (status, body) =
        http_post(&s.http, "/v1/batch", &key, json!({ "batch": big }).to_string().as_bytes());
    assert_eq!(status, 413, "{body}");
    // The good request, including gzip, goes in; nothing from the refused ones did.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, batch.as_bytes()).unwrap();
    let (status, body) =
        http_post(&s.http, "/v1/batch", &[key[0], ("Content-Encoding", "gzip")], &gz.finish().unwrap());
    assert_eq!(status, 200, "{body}");
    let (status, _) =
        http_post(&s.http, "/v1/track", &key, json!({"userId":"h1","event":"signup"}).to_string().as_bytes());
    assert_eq!(status, 200);
    assert_eq!(s.universe().await, 1);
    assert_eq!(
        s.check("h1", &[r#"plan = "pro""#, r#"DID "signup""#]).await.unwrap().matches,
        vec![true, true]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_rewrites_a_stopped_nodes_snapshots_and_refuses_a_running_one() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Snapshots every 2 entries, so the upgrade has files to rewrite.
    let config = dir.path().join("cohort.toml");
    std::fs::write(&config, "snapshot_entries = 2\n").unwrap();
    let config = config.to_str().unwrap().to_string();
    let s = Server::start(&data, 4, &["--config", &config]);
    for batch in 0..4 {
        let msgs: Vec<String> = (0..25)
            .map(|k| {
                let u = batch * 25 + k;
                m(json!({"type":"identify","userId":format!("u{u}"),"anonymousId":format!("a{u}"),"traits":{"k":u}}))
            })
            .collect();
        assert_eq!(s.ingest(msgs).await.unwrap().applied, 25);
    }
    let before = s.count(&["k >= 50", "user_id EXISTS"]).await;
    assert_eq!(before, vec![50, 100]);
    let upgrade = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_cohort"))
            .args(["upgrade", "--data-dir"])
            .arg(&data)
            .output()
            .unwrap()
    };
    // While the node holds the log, the upgrade refuses and says why.
    let out = upgrade();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is a node running on it"), "{err}");
    // Stopped (even by kill -9), its snapshots are rewritten...
    let mut s = s;
    s.kill9();
    let out = upgrade();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("rewrote the catalog and 4 shard snapshots"), "{text}");
    // ... and the node restarts with everything, and takes writes.
    let s = s.restart_after_kill();
    assert_eq!(s.count(&["k >= 50", "user_id EXISTS"]).await, before);
    assert_eq!(s.check("anonymous_id:a99", &["k = 99"]).await.unwrap().matches, vec![true]);
    let r = s.ingest(vec![m(json!({"type":"identify","userId":"u100","traits":{"k":100}}))]).await.unwrap();
    assert_eq!(r.applied, 1);
    assert_eq!(s.count(&["k >= 50"]).await, vec![51]);
}
