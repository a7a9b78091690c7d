//! Membership and placement under load, with real `cohort serve`
//! processes (replication factor 3): a fourth node joins a three-node
//! cluster (`--join`) while a writer and a reader keep going; it follows
//! the catalog as a learner and holds no shard, yet answers what the
//! others answer, also after a restart on its data (a join with another
//! shard count or a taken id is refused and writes nothing). Then one
//! shard's replica moves to it (`cohort cluster move-replica`: learner,
//! snapshot, one joint change) and `cohort cluster rebalance` gives it
//! its share, under load, reads going to all four nodes. Then the
//! catalog's leader is removed (`cohort cluster remove-node`): its
//! replicas move to the others, it hands its groups over, stops answering
//! counts, is stopped, and the three left keep taking writes; last, a
//! fifth node joins a quiet cluster and a rebalance gives it its share.
//! Not one write or read sent to a member fails during any move, and
//! every acknowledged batch is counted once on every node.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cohort::proto::v1 as pb;
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

/// One group as `cohort cluster status` shows it.
#[derive(Debug)]
struct Conf {
    group: u64,
    voters: Vec<u64>,
    learners: Vec<u64>,
    placed: Vec<u64>,
}

/// Every group as `cohort cluster status` through `node` shows it.
fn configurations(node: &Server) -> Vec<Conf> {
    let ids = |v: &serde_json::Value| -> Vec<u64> {
        let mut ids: Vec<u64> = v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect();
        ids.sort_unstable();
        ids
    };
    cluster_status(node)["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| Conf {
            group: g["group_id"].as_u64().unwrap(),
            voters: ids(&g["voters"]),
            learners: ids(&g["learners"]),
            placed: ids(&g["placed"]),
        })
        .collect()
}

/// Whether every group has its placement: 3 voters (or every member of
/// `members` when fewer), the catalog's other members of `members` as its
/// learners, no learner in a shard group.
fn placed(confs: &[Conf], members: &[u64]) -> bool {
    confs.iter().all(|c| {
        let learners: Vec<u64> = if c.group == 1 {
            members.iter().copied().filter(|id| !c.voters.contains(id)).collect()
        } else {
            Vec::new()
        };
        c.voters == c.placed && c.voters.len() == members.len().min(3) && c.learners == learners
    })
}

/// Waits (at most `secs`) until [`placed`].
async fn wait_placed(node: &Server, members: &[u64], secs: u64, what: &str) -> Vec<Conf> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let confs = tokio::task::block_in_place(|| configurations(node));
        if placed(&confs, members) {
            return confs;
        }
        assert!(Instant::now() < deadline, "{what}: not placed after {secs} s: {confs:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Voters per node over every group.
fn voters_per_node(confs: &[Conf]) -> std::collections::BTreeMap<u64, usize> {
    let mut load = std::collections::BTreeMap::new();
    for c in confs {
        for &id in &c.voters {
            *load.entry(id).or_default() += 1;
        }
    }
    load
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
async fn a_fourth_node_joins_takes_a_moved_replica_and_its_share_and_the_catalog_leader_is_removed_under_load_with_no_failed_request(
) {
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
    // go to the three members: it follows the catalog, and every shard
    // group keeps its three voters.
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
                    &["--node-id", "4", "--raft-addr", &four.raft, "--join", &join_at, "--zone", "rack-b"],
                    &[],
                )
            })
            .await
            .unwrap();
            *slot.lock() = Some(started);
            let confs = wait_placed(&observer, &[1, 2, 3, 4], 60, "the join of node 4").await;
            assert_eq!(confs[0].learners, vec![4], "node 4 follows the catalog: {confs:?}");
            assert!(confs.iter().all(|c| c.voters == [1, 2, 3]), "{confs:?}");
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
    assert_eq!(status["replication_factor"], 3);
    // Node 4 records its zone (`--zone`) through the catalog's leader.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = cluster_status(&nodes[&1]);
        let zones: Vec<String> = status["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["zone"].as_str().unwrap().to_string())
            .collect();
        if zones == ["", "", "", "rack-b"] {
            break;
        }
        assert!(Instant::now() < deadline, "the zones are {zones:?} after 10 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let total = settled(&nodes).await;
    assert_eq!(
        total,
        seen.lock().acknowledged.len() as u64 * BATCH,
        "node 4, with no shard, counts what the others count"
    );

    // Node 4 restarts on its data (`--join` is not asked again).
    let mut four = nodes.remove(&4).unwrap();
    four.terminate();
    let a = &all[&4];
    let four = Server::start_at(
        &root.path().join("node-4"),
        SHARDS,
        &a.grpc,
        &a.http,
        &["--node-id", "4", "--raft-addr", &a.raft, "--join", &addrs[&2].raft, "--zone", "rack-b"],
        &[],
    );
    nodes.insert(4, four);
    assert_eq!(settled(&nodes).await, total, "node 4 restarted on its data");
    wait_placed(&nodes[&4], &[1, 2, 3, 4], 30, "node 4 restarted").await;

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

    // Shard 0's replica on the node that does not lead the catalog moves
    // to node 4, under load, reads going to all four nodes.
    let catalog_leader_now = catalog_leader(&nodes[&1]).await;
    let from = (1..=3).find(|&id| id != catalog_leader_now).unwrap();
    let asked = nodes.remove(&1).unwrap();
    let from_text = from.to_string();
    let next = under_load(
        "a replica move to node 4",
        next,
        grpc(&[1, 2, 3], &all),
        grpc(&[1, 2, 3, 4], &all),
        seen.clone(),
        async {
            let out = tokio::task::block_in_place(|| {
                cohort(&asked, &["cluster", "move-replica", "0", &from_text, "4"])
            });
            assert!(out.contains(&format!("replica moved from node {from} to node 4")), "{out}");
        },
    )
    .await;
    nodes.insert(1, asked);
    let confs = wait_placed(&nodes[&1], &[1, 2, 3, 4], 30, "the move").await;
    let shard0 = confs.iter().find(|c| c.group == 2).unwrap();
    assert!(shard0.voters.contains(&4) && !shard0.voters.contains(&from), "{confs:?}");
    // A move the placement cannot take is refused, saying why.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cohort"))
        .args([
            "--addr",
            &format!("http://{}", nodes[&1].grpc),
            "cluster",
            "move-replica",
            "0",
            &from_text,
            "4",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("group 2 already has a replica on node 4"), "{stderr}");

    // A rebalance gives node 4 its share, under load.
    let asked = nodes.remove(&2).unwrap();
    let next = under_load(
        "the rebalance onto node 4",
        next,
        grpc(&[1, 2, 3], &all),
        grpc(&[1, 2, 3, 4], &all),
        seen.clone(),
        async {
            let out = tokio::task::block_in_place(|| cohort(&asked, &["cluster", "rebalance"]));
            assert!(out.contains("replica moves made"), "{out}");
        },
    )
    .await;
    nodes.insert(2, asked);
    let confs = wait_placed(&nodes[&2], &[1, 2, 3, 4], 30, "the rebalance").await;
    let load = voters_per_node(&confs);
    // (SHARDS + 1) groups of 3 voters over 4 nodes.
    let share = (SHARDS as usize + 1) * 3 / 4;
    assert!(load.values().all(|&n| n == share || n == share + 1), "{load:?}");
    let total = settled(&nodes).await;
    assert_eq!(total, seen.lock().acknowledged.len() as u64 * BATCH, "node 4 counts what the others count");

    // A founder from which the rebalance moved replicas away drops them
    // (their snapshot files, logs and memory), then restarts without them
    // and counts the same.
    let stepper = catalog_leader(&nodes[&1]).await;
    let restarted = (1..=3).find(|&id| id != stepper).unwrap();
    let moved_away: Vec<u64> =
        confs.iter().filter(|c| c.group > 1 && !c.voters.contains(&restarted)).map(|c| c.group).collect();
    assert!(!moved_away.is_empty(), "node {restarted} kept every shard: {confs:?}");
    let snap =
        |group: u64| root.path().join(format!("node-{restarted}/snapshots/shard-{:03}.snap", group - 2));
    // While it runs, it drops them already: their snapshot files go, its
    // own view of each group has no configuration, and it holds fewer
    // profiles than the cluster has (before, it kept every moved-away
    // shard in memory and on disk until its next start).
    let status = |id: u64| {
        let node = &nodes[&id];
        async move {
            let mut c = pb::admin_client::AdminClient::new(node.channel().await);
            c.status(pb::StatusRequest {}).await.unwrap().into_inner()
        }
    };
    let universe = {
        let mut q = pb::query_client::QueryClient::new(nodes[&restarted].channel().await);
        let count = pb::CountRequest {
            expressions: vec!["plan = \"pro\"".into()],
            now: String::new(),
            max_staleness_ms: 0,
            allow_partial: false,
        };
        q.count(count).await.unwrap().into_inner().universe
    };
    let started = Instant::now();
    loop {
        let own = status(restarted).await;
        let unconfigured = own
            .groups
            .iter()
            .filter(|g| moved_away.contains(&g.group_id))
            .all(|g| g.voters.is_empty() && g.learners.is_empty());
        if unconfigured && moved_away.iter().all(|&g| !snap(g).exists()) && own.profiles < universe {
            eprintln!(
                "cluster_membership: node {restarted} dropped its replicas of groups {moved_away:?} while running \
                 after {:.1} s: it holds {} of the {universe} profiles, {} bytes of heap",
                started.elapsed().as_secs_f64(),
                own.profiles,
                own.memory_bytes
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "node {restarted} keeps its moved-away replicas of {moved_away:?}: files {:?}, {} of {universe} profiles, groups {:?}",
            moved_away.iter().filter(|&&g| snap(g).exists()).collect::<Vec<_>>(),
            own.profiles,
            own.groups.iter().map(|g| (g.group_id, g.voters.clone())).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut old = nodes.remove(&restarted).unwrap();
    old.terminate();
    nodes.insert(
        restarted,
        common::cluster::start_node(restarted, &root.path().join(format!("node-{restarted}")), &addrs),
    );
    for &g in &moved_away {
        assert!(!snap(g).exists(), "node {restarted} kept {} after its restart", snap(g).display());
    }
    // Nor does it start those groups again as a founder would: its own
    // view of each has no configuration until a leader adds it (before,
    // it bootstrapped them afresh with the founders as voters, a replica
    // it believed it held).
    let own = {
        let mut c = pb::admin_client::AdminClient::new(nodes[&restarted].channel().await);
        c.status(pb::StatusRequest {}).await.unwrap().into_inner().groups
    };
    for g in own.iter().filter(|g| moved_away.contains(&g.group_id)) {
        assert!(
            !g.voters.contains(&restarted) && !g.learners.contains(&restarted),
            "node {restarted} started {} again with itself in it: voters {:?}, learners {:?}",
            g.name,
            g.voters,
            g.learners
        );
    }
    assert_eq!(settled(&nodes).await, total, "node {restarted}, restarted without its moved-away replicas");

    // Merges across shards, some of whose absorbed profiles live on
    // shards the catalog's leader (where the pipeline steps) holds no
    // replica of: they are exported by a node that holds one.
    let stepper = catalog_leader(&nodes[&1]).await;
    let lacks: Vec<u64> =
        confs.iter().filter(|c| c.group > 1 && !c.voters.contains(&stepper)).map(|c| c.group).collect();
    assert!(!lacks.is_empty(), "node {stepper} holds every shard: {confs:?}");
    const MERGES: usize = 60;
    let phases: [fn(usize) -> String; 3] = [
        |k| {
            format!(
                r#"{{"type":"identify","userId":"buyer-{k}","messageId":"buyer-{k}","traits":{{"plan":"merged"}}}}"#
            )
        },
        |k| {
            format!(
                r#"{{"type":"track","anonymousId":"anon-{k}","event":"browse","messageId":"browse-{k}"}}"#
            )
        },
        |k| {
            format!(
                r#"{{"type":"alias","previousId":"anon-{k}","userId":"buyer-{k}","messageId":"alias-{k}"}}"#
            )
        },
    ];
    for (p, phase) in phases.iter().enumerate() {
        let through = &all[&[1, 3, 4][p]].grpc;
        let reply = common::load::ingest_once(through, (0..MERGES).map(phase).collect()).await;
        assert_eq!(reply.map(|r| r.applied), Ok(MERGES as u64), "merge phase {p} through {through}");
    }
    for (id, node) in &nodes {
        let counts = node.count(&["plan = \"merged\" AND DID \"browse\"", "DID \"browse\""]).await;
        assert_eq!(counts, vec![MERGES as u64; 2], "node {id}: every browse merged into its buyer");
    }
    let merged = settled(&nodes).await;
    assert_eq!(merged, total, "the merges left the other profiles as they were");

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
    let confs = wait_placed(&nodes[&staying[0]], &staying, 30, "the removal").await;
    assert!(confs.iter().all(|c| c.voters == staying), "{confs:?}");
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
    // Node 5 joins with no write going on: the quiet catalog takes it as
    // a learner from a snapshot, and a rebalance then moves replicas to it
    // in quiet groups, each promoted once it has the whole log (raft-rs
    // only probes a learner after its snapshot until the next entry).
    let five = Addrs { grpc: port(), http: port(), raft: port() };
    let node5 = Server::start_at(
        &root.path().join("node-5"),
        SHARDS,
        &five.grpc,
        &five.http,
        &["--node-id", "5", "--raft-addr", &five.raft, "--join", &all[&staying[0]].raft],
        &[],
    );
    let mut members = staying.clone();
    members.push(5);
    wait_placed(&nodes[&staying[0]], &members, 30, "the join of node 5 to a quiet cluster").await;
    let out = tokio::task::block_in_place(|| cohort(&nodes[&staying[0]], &["cluster", "rebalance"]));
    assert!(out.contains("replica moves made"), "{out}");
    let confs = wait_placed(&nodes[&staying[0]], &members, 30, "a quiet rebalance").await;
    let load = voters_per_node(&confs);
    assert!(load.values().all(|&n| n == share || n == share + 1), "{load:?}");
    nodes.insert(5, node5);
    assert_eq!(settled(&nodes).await, total, "node 5 counts what the others count");
    eprintln!(
        "cluster_membership: {} batches acknowledged, none failed, {} profiles counted on each of nodes {members:?}",
        seen.acknowledged.len(),
        total
    );
}
