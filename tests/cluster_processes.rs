//! Three `cohort serve` processes as one cluster (`--node-id`, `--peer`):
//! every group replicated on the three over the Raft service, ingest
//! through whichever node leads, a kill -9 of the leader during the load,
//! and a restart of the killed node, which catches up. Every acknowledged
//! message is there once on every live node.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{free_port, Server};

const SHARDS: u32 = 4;

/// The addresses of one node.
#[derive(Clone)]
struct Addrs {
    grpc: String,
    http: String,
    raft: String,
}

fn start_node(id: u64, dir: &Path, all: &HashMap<u64, Addrs>) -> Server {
    let me = &all[&id];
    let mut args: Vec<String> =
        vec!["--node-id".into(), id.to_string(), "--raft-addr".into(), me.raft.clone()];
    for (peer, a) in all {
        args.push("--peer".into());
        args.push(format!("{peer}={},{}", a.raft, a.grpc));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start_at(dir, SHARDS, &me.grpc, &me.http, &args, &[])
}

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
    let addrs: HashMap<u64, Addrs> = (1..=3)
        .map(|id| {
            let port = || format!("127.0.0.1:{}", free_port());
            (id, Addrs { grpc: port(), http: port(), raft: port() })
        })
        .collect();
    let dir = |id: u64| root.path().join(format!("node-{id}"));
    // The three start together: each waits for a quorum before it serves.
    let starting: Vec<_> = (1..=3u64)
        .map(|id| {
            let (d, a) = (dir(id), addrs.clone());
            std::thread::spawn(move || (id, start_node(id, &d, &a)))
        })
        .collect();
    let mut nodes: HashMap<u64, Server> = starting.into_iter().map(|t| t.join().unwrap()).collect();

    let mut acknowledged = 0;
    let mut leader = 0;
    for _ in 0..10 {
        leader = ingest_anywhere(&nodes, batch(acknowledged, 50)).await;
        acknowledged += 50;
    }
    // Every node holds every acknowledged profile, followers included.
    all_count(&nodes, acknowledged).await;

    // kill -9 the leader; the two others elect one and take the rest.
    nodes.remove(&leader).unwrap().kill9();
    let killed = leader;
    for _ in 0..10 {
        leader = ingest_anywhere(&nodes, batch(acknowledged, 50)).await;
        acknowledged += 50;
    }
    assert_ne!(leader, killed);
    all_count(&nodes, acknowledged).await;

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
