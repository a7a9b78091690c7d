//! Three `cohort serve` processes under a steady write load through every
//! node, while the cluster goes through the faults an operator meets:
//! the catalog's leader stopped with SIGSTOP and resumed, a rolling
//! restart (each node in turn stopped with SIGTERM and started again on
//! its data), and a restart of the whole cluster. A writer records each
//! batch as acknowledged, or as unknown when its call failed or timed out;
//! at the end every node counts every acknowledged batch exactly once, and
//! each unknown one wholly or not at all.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::cluster::{catalog_leader, loopback_addrs, start_node, start_three, Addrs};
use common::load::{progress, settled, start_writer, Outcomes, BATCH};
use common::Server;
use parking_lot::Mutex;

fn restart(id: u64, root: &std::path::Path, addrs: &HashMap<u64, Addrs>) -> Server {
    start_node(id, &root.join(format!("node-{id}")), addrs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_leader_a_rolling_restart_and_a_whole_cluster_restart_lose_nothing_acknowledged() {
    let root = tempfile::tempdir().unwrap();
    let addrs = loopback_addrs();
    let mut nodes = start_three(root.path(), &addrs);
    let grpc: Vec<String> = (1..=3).map(|id| addrs[&id].grpc.clone()).collect();
    let seen = Arc::new(Mutex::new(Outcomes::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = start_writer(grpc.clone(), stop.clone(), seen.clone());
    progress(&seen, 20, "steady state").await;

    // SIGSTOP the catalog's leader: the two others elect one and go on
    // taking writes; resumed, it follows the new leader.
    let leader = catalog_leader(&nodes[&1]).await;
    assert_ne!(leader, 0);
    let pid = nodes[&leader].child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    progress(&seen, 20, "with the leader stopped").await;
    assert!(std::process::Command::new("kill").args(["-CONT", &pid]).status().unwrap().success());
    progress(&seen, 10, "after the leader resumed").await;
    let others: Vec<u64> = (1..=3).filter(|&id| id != leader).collect();
    assert_ne!(catalog_leader(&nodes[&others[0]]).await, leader, "the stopped node still leads");

    // A rolling restart: each node in turn stops gracefully and starts
    // again on its data, with writes going on.
    for id in 1..=3u64 {
        nodes.get_mut(&id).unwrap().terminate();
        progress(&seen, 5, &format!("with node {id} down")).await;
        nodes.insert(id, restart(id, root.path(), &addrs));
        progress(&seen, 5, &format!("after node {id} came back")).await;
    }

    // The whole cluster stops and starts again.
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let before = settled(&nodes).await;
    for node in nodes.values_mut() {
        node.terminate();
    }
    drop(nodes);
    let nodes = start_three(root.path(), &addrs);
    assert_eq!(settled(&nodes).await, before, "the restarted cluster counts another total");

    // Every acknowledged batch is there once on every node; an unknown
    // one wholly or not at all.
    let seen = std::mem::take(&mut *seen.lock());
    assert!(seen.acknowledged.len() >= 100, "only {} batches acknowledged", seen.acknowledged.len());
    let expr = |k: &u64| format!("batch = \"b{k}\"");
    for (id, node) in &nodes {
        let acked: Vec<String> = seen.acknowledged.iter().map(expr).collect();
        let acked: Vec<&str> = acked.iter().map(String::as_str).collect();
        let counts = node.count(&acked).await;
        for (k, c) in seen.acknowledged.iter().zip(&counts) {
            assert_eq!(*c, BATCH, "node {id}: acknowledged batch {k} counts {c}");
        }
        if !seen.unknown.is_empty() {
            let unknown: Vec<String> = seen.unknown.iter().map(expr).collect();
            let unknown: Vec<&str> = unknown.iter().map(String::as_str).collect();
            for (k, c) in seen.unknown.iter().zip(node.count(&unknown).await) {
                assert!(c == 0 || c == BATCH, "node {id}: batch {k}, whose call failed, counts {c}");
            }
        }
    }
    eprintln!(
        "cluster_faults: {} batches acknowledged, {} unknown (failed or timed out calls), {} profiles on every node",
        seen.acknowledged.len(),
        seen.unknown.len(),
        before
    );
}
