//! Three `cohort serve` processes as one cluster (`--node-id`, `--peer`):
//! every group replicated on the three over the Raft service, ingest
//! through any node (a follower forwards it to the catalog's leader), a
//! kill -9 of the leader during the load, and a restart of the killed
//! node, which catches up. Every acknowledged message is there once on
//! every live node.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use cohort::proto::v1 as pb;
use common::cluster::{
    catalog_leader, cluster_status, loopback_addrs, start_node, start_three, start_three_with,
    wait_for_leaders, SHARDS,
};
use common::{http_request, Server};

fn batch(from: u64, n: u64) -> Vec<String> {
    (from..from + n)
        .map(|i| {
            format!(
                r#"{{"type":"identify","userId":"u{i}","messageId":"m{i}","timestamp":"2026-10-01T00:00:00Z","traits":{{"plan":"pro"}}}}"#
            )
        })
        .collect()
}

/// Ingests `messages` through whichever live node takes them (the
/// catalog's leader; the others answer UNAVAILABLE), retrying the same
/// batch until one acknowledges it; returns that node.
async fn ingest_anywhere(nodes: &HashMap<u64, Server>, messages: Vec<String>) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    while Instant::now() < deadline {
        for (&id, node) in nodes {
            match node.ingest(messages.clone()).await {
                Ok(reply) => {
                    assert!(reply.rejections.is_empty(), "{reply:?}");
                    return id;
                }
                Err(status) => last = format!("node {id}: {status}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no node acknowledged the batch within 60 s; last answer: {last}");
}

/// Waits until every live node counts `want` profiles.
async fn all_count(nodes: &HashMap<u64, Server>, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut counts = Vec::new();
        for (&id, node) in nodes {
            counts.push((id, node.universe().await));
        }
        if counts.iter().all(|&(_, c)| c == want) {
            return;
        }
        assert!(Instant::now() < deadline, "after 30 s the nodes count {counts:?}, not {want}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_replicate_survive_a_killed_leader_and_catch_up_a_restarted_node() {
    let root = tempfile::tempdir().unwrap();
    let addrs = loopback_addrs();
    let dir = |id: u64| root.path().join(format!("node-{id}"));
    let mut nodes = start_three(root.path(), &addrs);

    let mut acknowledged = 0;
    for _ in 0..10 {
        ingest_anywhere(&nodes, batch(acknowledged, 50)).await;
        acknowledged += 50;
    }
    // Every node holds every acknowledged profile, followers included.
    all_count(&nodes, acknowledged).await;

    // kill -9 the catalog's leader; the two others elect one and take
    // the rest.
    let killed = catalog_leader(&nodes[&1]).await;
    assert_ne!(killed, 0, "no catalog leader known");
    nodes.remove(&killed).unwrap().kill9();
    for _ in 0..10 {
        ingest_anywhere(&nodes, batch(acknowledged, 50)).await;
        acknowledged += 50;
    }
    for node in nodes.values() {
        let leader = catalog_leader(node).await;
        assert!(leader != killed && leader != 0, "the catalog's leader is {leader}");
    }
    all_count(&nodes, acknowledged).await;
    // `cohort cluster status` through a live node: the killed node is
    // unreachable, the others up, and every group led by a live node.
    let status = cluster_status(nodes.values().next().unwrap());
    for n in status["nodes"].as_array().unwrap() {
        let up = n["node_id"].as_u64() != Some(killed);
        assert_eq!(n["reachable"].as_bool(), Some(up), "{status:#}");
    }
    let groups = status["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 1 + SHARDS as usize, "{status:#}");
    for g in groups {
        let leader = g["leader_id"].as_u64().unwrap();
        assert!(leader != 0 && leader != killed, "{status:#}");
        assert_eq!(g["replicas"].as_array().unwrap().len(), 2, "{status:#}");
    }

    // The killed node comes back on its data directory and catches up.
    let back = start_node(killed, &dir(killed), &addrs);
    nodes.insert(killed, back);
    all_count(&nodes, acknowledged).await;
    // And every acknowledged message is there once: a profile per user.
    for node in nodes.values() {
        let counts = node.count(&["plan = \"pro\""]).await;
        assert_eq!(counts, vec![acknowledged]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_takes_writes_and_a_follower_forwards_them_to_the_catalog_leader() {
    let root = tempfile::tempdir().unwrap();
    let addrs = loopback_addrs();
    let nodes = start_three_with(root.path(), &addrs, &["--shard-leaders", "spread"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let leader = loop {
        let leader = catalog_leader(&nodes[&1]).await;
        if leader != 0 {
            break leader;
        }
        assert!(Instant::now() < deadline, "no catalog leader within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // gRPC to each node, the two followers included: every write is
    // acknowledged, with the leader's report (a rejected field keeps its
    // position in the caller's batch).
    // (Message 3 of each batch names nobody: it is refused.)
    let (mut written, mut profiles) = (0, 0);
    for id in [1u64, 2, 3] {
        let mut messages = batch(written, 20);
        messages[3] = r#"{"type":"identify","messageId":"nobody","traits":{"plan":"pro"}}"#.into();
        let reply = nodes[&id].ingest(messages).await.unwrap_or_else(|status| {
            panic!("node {id} (the catalog's leader is {leader}) refused a write: {status}")
        });
        assert_eq!(reply.applied, 19, "node {id}: {reply:?}");
        assert_eq!(reply.rejections.len(), 1, "node {id}: {reply:?}");
        assert_eq!(reply.rejections[0].position, 3, "node {id}: {reply:?}");
        written += 20;
        profiles += 19;
    }
    // The Segment HTTP door of a follower forwards too.
    let follower = [1u64, 2, 3].into_iter().find(|&id| id != leader).unwrap();
    let body = format!(
        r#"{{"batch":[{{"type":"identify","userId":"u{written}","messageId":"m{written}","traits":{{"plan":"pro"}}}}]}}"#
    );
    let (status, reply) =
        http_request(&addrs[&follower].http, "POST", "/v1/batch", &[], &body).await.unwrap();
    assert_eq!(status, 200, "HTTP on follower {follower}: {reply}");
    profiles += 1;
    all_count(&nodes, profiles).await;
    for node in nodes.values() {
        assert_eq!(node.count(&["plan = \"pro\""]).await, vec![profiles]);
    }

    // With `--shard-leaders spread` the shard groups' leaders spread over
    // the three nodes (shard s prefers the s mod 3-th node), and the
    // writes above went through the stepper's proposals to remote shard
    // leaders.
    wait_for_leaders(&nodes[&1], "the shard leaders are not spread", |l| l[1..] == [1, 2, 3, 1]).await;

    // `cohort cluster status` sees the three nodes up and the catalog's
    // leader as Status does.
    let status = cluster_status(&nodes[&follower]);
    let up: Vec<bool> =
        status["nodes"].as_array().unwrap().iter().map(|n| n["reachable"].as_bool().unwrap()).collect();
    assert_eq!(up, vec![true; 3], "{status:#}");
    assert_eq!(status["groups"][0]["name"], "catalog", "{status:#}");
    assert_eq!(status["groups"][0]["leader_id"].as_u64(), Some(leader), "{status:#}");
    assert_eq!(status["groups"][0]["replicas"].as_array().unwrap().len(), 3, "{status:#}");
    // The leader counts what it sent the others.
    let mut admin = pb::admin_client::AdminClient::new(nodes[&leader].channel().await);
    let sent = admin.status(pb::StatusRequest {}).await.unwrap().into_inner();
    assert!(sent.raft_messages_sent > 0 && sent.raft_bytes_sent > sent.raft_messages_sent, "{sent:?}");

    // Schema and segment changes through a follower go to the leader too,
    // which also refuses a second segment of the same name.
    let channel = nodes[&follower].channel().await;
    let mut admin = pb::admin_client::AdminClient::new(channel.clone());
    admin
        .apply_schema(pb::ApplySchemaRequest { json: r#"{"traits":{"age":"number"}}"#.into() })
        .await
        .unwrap_or_else(|status| panic!("ApplySchema on follower {follower}: {status}"));
    let mut segments = pb::segments_client::SegmentsClient::new(channel);
    let create = || pb::CreateSegmentRequest {
        name: "pros".into(),
        expression: "plan = \"pro\"".into(),
        description: String::new(),
    };
    segments
        .create_segment(create())
        .await
        .unwrap_or_else(|status| panic!("CreateSegment on follower {follower}: {status}"));
    let again = segments.create_segment(create()).await.unwrap_err();
    assert_eq!(again.code(), tonic::Code::AlreadyExists, "{again}");
    for (id, node) in &nodes {
        let deadline = Instant::now() + Duration::from_secs(10);
        while node.try_count(&["IN SEGMENT \"pros\""]).await.ok() != Some(vec![profiles]) {
            assert!(Instant::now() < deadline, "node {id} does not count the saved segment");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_written_through_one_node_is_read_at_once_on_another() {
    let root = tempfile::tempdir().unwrap();
    let addrs = loopback_addrs();
    let nodes = start_three(root.path(), &addrs);
    // Warm up: the cluster has a leader and takes writes.
    let deadline = Instant::now() + Duration::from_secs(30);
    while nodes[&1].ingest(batch(1_000_000, 1)).await.is_err() {
        assert!(Instant::now() < deadline, "no write taken within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // By default the shard groups' leaders join the catalog's leader.
    wait_for_leaders(&nodes[&1], "not with the catalog's", |l| l[0] != 0 && l.iter().all(|&x| x == l[0]))
        .await;
    // Each write goes to one node and is read back at once on the next,
    // by GetProfile and Check: ReadIndex makes the reader wait until it
    // has applied what the leader committed.
    for i in 0..60u64 {
        let (writer, reader) = (i % 3 + 1, (i + 1) % 3 + 1);
        let message =
            format!(r#"{{"type":"identify","userId":"r{i}","messageId":"r{i}","traits":{{"plan":"p{i}"}}}}"#);
        let reply = nodes[&writer].ingest(vec![message]).await.unwrap();
        assert_eq!(reply.applied, 1, "{reply:?}");
        let profile = nodes[&reader]
            .profile(&format!("r{i}"))
            .await
            .unwrap_or_else(|s| panic!("write {i} through node {writer}, GetProfile on node {reader}: {s}"));
        assert_eq!(common::trait_of(&profile, "plan").as_deref(), Some(format!("\"p{i}\"").as_str()));
        let check = nodes[&reader].check(&format!("r{i}"), &[&format!("plan = \"p{i}\"")]).await.unwrap();
        assert_eq!(check.matches, vec![true], "write {i} through node {writer}, Check on node {reader}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_profiles_merge_into_known_ones_across_shards_led_by_different_nodes() {
    let root = tempfile::tempdir().unwrap();
    let addrs = loopback_addrs();
    let nodes = start_three_with(root.path(), &addrs, &["--shard-leaders", "spread"]);
    // Wait for the shard leaders to spread, so that merges move profiles
    // between shards whose leaders are on different nodes.
    wait_for_leaders(&nodes[&1], "the shard leaders do not spread", |l| l[1..] == [1, 2, 3, 1]).await;
    // 60 visitors browse anonymously (two events each), then sign up: the
    // identify links the anonymous id to a user id that lands on its own
    // shard, so most merges move a profile to another shard, through
    // whichever node takes the batch.
    let t = |s: u32| format!("2026-10-01T00:00:{s:02}Z");
    let mut browsing = Vec::new();
    let mut signing_up = Vec::new();
    for i in 0..60 {
        for (k, event) in ["viewed", "added_to_cart"].iter().enumerate() {
            browsing.push(format!(
                r#"{{"type":"track","anonymousId":"anon-{i}","messageId":"e{i}-{k}","event":"{event}","timestamp":"{}"}}"#,
                t(k as u32)
            ));
        }
        signing_up.push(format!(
            r#"{{"type":"identify","anonymousId":"anon-{i}","userId":"user-{i}","messageId":"s{i}","timestamp":"{}","traits":{{"plan":"pro"}}}}"#,
            t(10)
        ));
    }
    for (n, chunk) in browsing.chunks(30).enumerate() {
        let reply = nodes[&(n as u64 % 3 + 1)].ingest(chunk.to_vec()).await.unwrap();
        assert!(reply.rejections.is_empty(), "{reply:?}");
    }
    for (n, chunk) in signing_up.chunks(10).enumerate() {
        let reply = nodes[&(n as u64 % 3 + 1)].ingest(chunk.to_vec()).await.unwrap();
        assert!(reply.rejections.is_empty(), "{reply:?}");
    }
    // Every node: one profile per person, each with its trait and both of
    // its anonymous events, found by either identifier.
    for (id, node) in &nodes {
        for i in [0, 17, 59] {
            let profile = node.profile(&format!("user-{i}")).await.unwrap();
            let by_anon = node.profile(&format!("anonymous_id:anon-{i}")).await.unwrap();
            assert_eq!(profile.profile_id, by_anon.profile_id, "node {id}: person {i} is two profiles");
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        let want = vec![60, 60, 60];
        loop {
            let counts = node
                .count(&["plan = \"pro\"", "DID \"viewed\" AND DID \"added_to_cart\"", "user_id EXISTS"])
                .await;
            if counts == want && node.universe().await == 60 {
                break;
            }
            assert!(Instant::now() < deadline, "node {id} counts {counts:?} (want {want:?})");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_count_meets_the_staleness_bound_or_fails_naming_the_group() {
    let root = tempfile::tempdir().unwrap();
    let addrs = loopback_addrs();
    let nodes = start_three(root.path(), &addrs);
    ingest_anywhere(&nodes, batch(0, 50)).await;
    all_count(&nodes, 50).await;
    // A follower's count says how stale its replicas were: within the
    // default bound of 1 s.
    let leader = catalog_leader(&nodes[&1]).await;
    let follower = (1..=3u64).find(|&id| id != leader).unwrap();
    let mut q = pb::query_client::QueryClient::new(nodes[&follower].channel().await);
    let count = |q: &mut pb::query_client::QueryClient<tonic::transport::Channel>| {
        let mut q = q.clone();
        async move {
            q.count(pb::CountRequest {
                expressions: vec!["plan = \"pro\"".into()],
                now: String::new(),
                max_staleness_ms: 0,
                allow_partial: false,
            })
            .await
        }
    };
    let reply = count(&mut q).await.unwrap().into_inner();
    assert_eq!(reply.counts, vec![50]);
    assert!(reply.staleness_ms <= 1000, "{reply:?}");
    // The two others stop: nobody confirms the follower's replicas any
    // more, and past the bound its counts fail, naming a group, instead
    // of answering from data of unknown age.
    let others: Vec<u64> = (1..=3).filter(|&id| id != follower).collect();
    let pids: Vec<String> = others.iter().map(|id| nodes[id].child.id().to_string()).collect();
    for pid in &pids {
        assert!(std::process::Command::new("kill").args(["-STOP", pid]).status().unwrap().success());
    }
    let stopped = Instant::now();
    let refused = loop {
        match count(&mut q).await {
            Err(status) => break status,
            Ok(reply) => assert!(reply.into_inner().staleness_ms <= 1000),
        }
        assert!(stopped.elapsed() < Duration::from_secs(10), "a cut-off follower still counts after 10 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // A call that accepts older data still gets its answer, and says how
    // old.
    let relaxed = q
        .clone()
        .count(pb::CountRequest {
            expressions: vec!["plan = \"pro\"".into()],
            now: String::new(),
            max_staleness_ms: 600_000,
            allow_partial: false,
        })
        .await
        .expect("a count that accepts 10 minutes of staleness")
        .into_inner();
    assert_eq!(relaxed.counts, vec![50]);
    assert!(relaxed.staleness_ms > 1000, "{relaxed:?}");
    for pid in &pids {
        assert!(std::process::Command::new("kill").args(["-CONT", pid]).status().unwrap().success());
    }
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains("staleness bound of 1000 ms") && refused.message().contains("group "),
        "{refused:?}"
    );
    eprintln!(
        "cluster_processes: a cut-off follower refused counts {:.1} s after the others stopped: {}",
        stopped.elapsed().as_secs_f64(),
        refused.message()
    );
    // Back together, it counts again within the bound.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(reply) = count(&mut q).await {
            assert!(reply.into_inner().staleness_ms <= 1000);
            break;
        }
        assert!(Instant::now() < deadline, "the follower does not count again after the others resumed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
