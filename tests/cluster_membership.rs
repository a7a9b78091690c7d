//! Membership under load, with real `cohort serve` processes: a fourth
//! node joins a three-node cluster (`--join`) while a writer and a reader
//! keep going, every group adds it as a learner from a snapshot and
//! promotes it, and it answers what the others answer, also after a
//! restart on its data (a join with another shard count or a taken id
//! is refused and writes nothing); then the catalog's
//! leader is removed (`cohort cluster remove-node`): it hands its groups
//! over, leaves every group, stops answering counts once past the
//! staleness bound, is stopped, and the three left keep taking
//! writes; last, a fifth node joins a quiet cluster. Not one write or read
//! sent to a member fails during any move, and every acknowledged batch is
//! on every node once.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::{catalog_leader, cluster_status, loopback_addrs, start_three, Addrs, SHARDS};
use common::load::{progress, settled, start_writer_from, Outcomes, BATCH};
use common::{free_port, Server};
use parking_lot::Mutex;

/// Counts on the nodes of `addrs` in turn until `stop`; returns how many
/// answered and how many failed.
fn start_reader(addrs: Vec<String>, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<(u64, Vec<String>)> {
    tokio::spawn(async move {
        let (mut answered, mut failed) = (0u64, Vec::new());
        let mut at = 0usize;
        // At least 10 counts a phase, however short its writes were.
        while !stop.load(Ordering::Relaxed) || answered + (failed.len() as u64) < 10 {
            let client = common::Client { grpc: addrs[at % addrs.len()].clone() };
            match tokio::time::timeout(Duration::from_secs(3), client.try_count(&["plan = \"pro\""])).await {
                Ok(Ok(_)) => answered += 1,
                Ok(Err(s)) => failed.push(format!("{}: {}", client.grpc, s.message())),
                Err(_) => failed.push(format!("{}: no answer within 3 s", client.grpc)),
            }
            at += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (answered, failed)
    })
}

/// The voters and learners of every group as `cohort cluster status`
/// through `node` shows them.
fn configurations(node: &Server) -> Vec<(Vec<u64>, Vec<u64>)> {
    let ids = |v: &serde_json::Value| -> Vec<u64> {
        v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect()
    };
    cluster_status(node)["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| (ids(&g["voters"]), ids(&g["learners"])))
        .collect()
}

/// Runs `cohort` with `args` against `node`; returns its standard output.
fn cohort(node: &Server, args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cohort"))
        .args(["--addr", &format!("http://{}", node.grpc)])
        .args(args)
        .output()
        .expect("run cohort");
    assert!(
        out.status.success(),
        "cohort {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One move under load: a writer through `writers` and a reader through
/// `readers` run while `change` does its work; both must see no failure.
async fn under_load<F: std::future::Future<Output = ()>>(
    what: &str,
    first_batch: u64,
    writers: Vec<String>,
    readers: Vec<String>,
    seen: Arc<Mutex<Outcomes>>,
    change: F,
) -> u64 {
    let stop = Arc::new(AtomicBool::new(false));
    let writer = start_writer_from(first_batch, writers, stop.clone(), seen.clone());
    let reader = start_reader(readers, stop.clone());
    progress(&seen, 10, &format!("before {what}")).await;
    let started = Instant::now();
    change.await;
    eprintln!("cluster_membership: {what} took {:.2} s", started.elapsed().as_secs_f64());
    progress(&seen, 10, &format!("after {what}")).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let (answered, failed) = reader.await.unwrap();
    let unknown = seen.lock().unknown.clone();
    assert!(unknown.is_empty(), "{what}: writes failed (batches {unknown:?})");
    assert!(
        failed.is_empty(),
        "{what}: {} of {} counts failed: {failed:?}",
        failed.len(),
        answered + failed.len() as u64
    );
    assert!(answered >= 10, "{what}: only {answered} counts");
    eprintln!("cluster_membership: {what}: {answered} counts and every write answered");
    seen.lock().acknowledged.iter().max().map_or(first_batch, |k| k + 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_node_joins_and_the_catalog_leader_is_removed_under_load_with_no_failed_request() {
    let root = tempfile::tempdir().unwrap();
    let addrs = loopback_addrs();
    let mut nodes = start_three(root.path(), &addrs);
    let seen = Arc::new(Mutex::new(Outcomes::default()));
    let grpc = |ids: &[u64], addrs: &HashMap<u64, Addrs>| {
        ids.iter().map(|id| addrs[id].grpc.clone()).collect::<Vec<_>>()
    };

    // A first batch, applied everywhere, so that every node knows the
    // traits the reader counts.
    let first = common::load::ingest_once(&addrs[&1].grpc, common::load::batch(0)).await.unwrap();
    assert_eq!(first.applied, BATCH);
    seen.lock().acknowledged.push(0);
    settled(&nodes).await;

    // Node 4 joins through node 2's Raft address while writes and counts
    // go to the three members.
    let mut all = addrs.clone();
    let port = || format!("127.0.0.1:{}", free_port());
    all.insert(4, Addrs { grpc: port(), http: port(), raft: port() });
    let joined = Arc::new(Mutex::new(None));
    let (root_path, four, join_at, slot) =
        (root.path().to_path_buf(), all[&4].clone(), addrs[&2].raft.clone(), joined.clone());
    let observer = nodes.remove(&1).unwrap();
    let next = under_load(
        "the join of node 4",
        1,
        grpc(&[1, 2, 3], &all),
        grpc(&[1, 2, 3], &all),
        seen.clone(),
        async {
            let started = tokio::task::spawn_blocking(move || {
                Server::start_at(
                    &root_path.join("node-4"),
                    SHARDS,
                    &four.grpc,
                    &four.http,
                    &["--node-id", "4", "--raft-addr", &four.raft, "--join", &join_at],
                    &[],
                )
            })
            .await
            .unwrap();
            *slot.lock() = Some(started);
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let confs = tokio::task::block_in_place(|| configurations(&observer));
                if confs.iter().all(|(voters, learners)| voters == &[1, 2, 3, 4] && learners.is_empty()) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "node 4 is not a voter of every group after 60 s: {confs:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        },
    )
    .await;
    nodes.insert(1, observer);
    nodes.insert(4, joined.lock().take().unwrap());
    let status = cluster_status(&nodes[&4]);
    let members: Vec<(u64, String)> = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["node_id"].as_u64().unwrap(), n["member"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(members, (1..=4).map(|id| (id, "active".to_string())).collect::<Vec<_>>());
    let total = settled(&nodes).await;
    assert_eq!(total, seen.lock().acknowledged.len() as u64 * BATCH, "node 4 counts what the others count");

    // Node 4 restarts on its data (`--join` is not asked again) and is a
    // voter of every group again.
    let mut four = nodes.remove(&4).unwrap();
    four.terminate();
    let a = &all[&4];
    let four = Server::start_at(
        &root.path().join("node-4"),
        SHARDS,
        &a.grpc,
        &a.http,
        &["--node-id", "4", "--raft-addr", &a.raft, "--join", &addrs[&2].raft],
        &[],
    );
    nodes.insert(4, four);
    assert_eq!(settled(&nodes).await, total, "node 4 restarted on its data");
    let confs = configurations(&nodes[&4]);
    assert!(confs.iter().all(|(voters, _)| voters == &[1, 2, 3, 4]), "{confs:?}");

    // A join the cluster cannot take is refused, saying why, and leaves
    // no data directory behind.
    let refused = |id: &str, shards: &str, what: &str| {
        let dir = root.path().join(format!("refused-{id}-{shards}"));
        let port = || format!("127.0.0.1:{}", free_port());
        let (raft, grpc_addr, http) = (port(), port(), port());
        let (status, stderr) = common::serve_refused(
            &[
                "--data-dir",
                dir.to_str().unwrap(),
                "--shards",
                shards,
                "--node-id",
                id,
                "--raft-addr",
                &raft,
                "--grpc-addr",
                &grpc_addr,
                "--http-addr",
                &http,
                "--join",
                &addrs[&1].raft,
            ],
            &[],
        );
        assert!(status.is_some_and(|s| !s.success()), "{what}: the join was taken: {stderr}");
        assert!(stderr.contains("joining the cluster through"), "{what}: {stderr}");
        assert!(!dir.exists(), "{what}: a refused join left {} behind", dir.display());
        stderr
    };
    let e = refused("5", "8", "another shard count");
    assert!(e.contains("node 5 has 8 shards and this cluster 4"), "{e}");
    let e = refused("2", &SHARDS.to_string(), "a taken id");
    assert!(e.contains("node 2 is a member at"), "{e}");

    // The catalog's leader is removed through another node, under load
    // through the three that stay.
    let removed = catalog_leader(&nodes[&4]).await;
    assert_ne!(removed, 0);
    let staying: Vec<u64> = (1..=4).filter(|&id| id != removed).collect();
    let asked = nodes.remove(&staying[0]).unwrap();
    let removed_text = removed.to_string();
    let _ = under_load(
        "the removal of the catalog leader",
        next,
        grpc(&staying, &all),
        grpc(&staying, &all),
        seen.clone(),
        async {
            let out =
                tokio::task::block_in_place(|| cohort(&asked, &["cluster", "remove-node", &removed_text]));
            assert!(out.contains(&format!("node {removed} removed from all {} groups", SHARDS + 1)), "{out}");
        },
    )
    .await;
    nodes.insert(staying[0], asked);
    let confs = configurations(&nodes[&staying[0]]);
    assert!(confs.iter().all(|(voters, learners)| voters == &staying && learners.is_empty()), "{confs:?}");
    let mut gone = nodes.remove(&removed).unwrap();
    // The removed node knows it: its counts fail (rather than answer from
    // what it last had, or from the members' replicas), and so do its
    // writes.
    let deadline = Instant::now() + Duration::from_secs(10);
    let refusal = loop {
        match gone.try_count(&["plan = \"pro\""]).await {
            Err(status) => break status,
            Ok(_) => assert!(Instant::now() < deadline, "the removed node still counts after 10 s"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        refusal.message().contains(&format!("node {removed} was removed from the cluster")),
        "{refusal:?}"
    );
    let refused = gone
        .ingest(vec![
            r#"{"type":"identify","userId":"late","messageId":"late-1","timestamp":"2026-10-01T00:00:00Z"}"#
                .to_string(),
        ])
        .await;
    assert!(
        refused.as_ref().is_err_and(|s| s.message().contains("was removed from the cluster")),
        "a write to the removed node: {refused:?}"
    );
    gone.terminate();
    assert_ne!(catalog_leader(&nodes[&staying[0]]).await, removed);

    // The three left take writes and count every acknowledged batch once.
    let next = seen.lock().acknowledged.iter().max().unwrap() + 1;
    let _ = under_load(
        "writes after the removal",
        next,
        grpc(&staying, &all),
        grpc(&staying, &all),
        seen.clone(),
        async {},
    )
    .await;
    let total = settled(&nodes).await;
    let seen = std::mem::take(&mut *seen.lock());
    assert_eq!(total, seen.acknowledged.len() as u64 * BATCH);
    for (id, node) in &nodes {
        let acked: Vec<String> = seen.acknowledged.iter().map(|k| format!("batch = \"b{k}\"")).collect();
        let acked: Vec<&str> = acked.iter().map(String::as_str).collect();
        for (k, c) in seen.acknowledged.iter().zip(node.count(&acked).await) {
            assert_eq!(c, BATCH, "node {id}: acknowledged batch {k} counts {c}");
        }
    }
    // Node 5 joins with no write going on: every group is quiet, and each
    // promotes it once it has the whole log (raft-rs only probes a learner
    // after its snapshot until the next entry).
    let five = Addrs { grpc: port(), http: port(), raft: port() };
    let node5 = Server::start_at(
        &root.path().join("node-5"),
        SHARDS,
        &five.grpc,
        &five.http,
        &["--node-id", "5", "--raft-addr", &five.raft, "--join", &all[&staying[0]].raft],
        &[],
    );
    let mut expected = staying.clone();
    expected.push(5);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let confs = configurations(&nodes[&staying[0]]);
        if confs.iter().all(|(voters, learners)| voters == &expected && learners.is_empty()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 5 is not a voter of every quiet group after 30 s: {confs:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    nodes.insert(5, node5);
    assert_eq!(settled(&nodes).await, total, "node 5 counts what the others count");
    eprintln!(
        "cluster_membership: {} batches acknowledged, none failed, {} profiles on each of nodes {staying:?}",
        seen.acknowledged.len(),
        total
    );
}
