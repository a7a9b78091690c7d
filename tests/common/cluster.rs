//! Helpers of the multi-process cluster tests: three `cohort serve`
//! processes on loopback with `--node-id`, `--raft-addr` and a `--peer`
//! per node, the catalog's leader as a node sees it, and `cohort cluster
//! status --json`.

use std::collections::HashMap;
use std::path::Path;

use cohort::proto::v1 as pb;

use super::{free_port, Server};

/// Shards of every node in these tests.
pub const SHARDS: u32 = 4;

/// The addresses of one node.
#[derive(Clone)]
pub struct Addrs {
    pub grpc: String,
    pub http: String,
    pub raft: String,
}

/// Starts node `id` of `all` on `dir` and waits until it serves (it
/// serves once a quorum is there: start nodes together).
pub fn start_node(id: u64, dir: &Path, all: &HashMap<u64, Addrs>) -> Server {
    start_node_with(id, dir, all, &[])
}

/// [`start_node`] with more `cohort serve` flags.
pub fn start_node_with(id: u64, dir: &Path, all: &HashMap<u64, Addrs>, extra: &[&str]) -> Server {
    let me = &all[&id];
    let mut args: Vec<String> =
        vec!["--node-id".into(), id.to_string(), "--raft-addr".into(), me.raft.clone()];
    args.extend(extra.iter().map(|a| a.to_string()));
    for (peer, a) in all {
        args.push("--peer".into());
        args.push(format!("{peer}={},{}", a.raft, a.grpc));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start_at(dir, SHARDS, &me.grpc, &me.http, &args, &[])
}

/// The catalog's leader as `node` sees it (0: none known).
pub async fn catalog_leader(node: &Server) -> u64 {
    let mut c = pb::admin_client::AdminClient::new(node.channel().await);
    let status = c.status(pb::StatusRequest {}).await.unwrap().into_inner();
    status.groups.iter().find(|g| g.group_id == 1).map_or(0, |g| g.leader_id)
}

/// `cohort cluster status --json` asked through `node`.
pub fn cluster_status(node: &Server) -> serde_json::Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cohort"))
        .args(["--addr", &format!("http://{}", node.grpc), "--json", "--timeout", "3", "cluster", "status"])
        .output()
        .expect("run cohort");
    assert!(out.status.success(), "cohort cluster status failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON")
}

/// Waits (at most 15 s) until the leaders of every group, catalog first,
/// as `cohort cluster status` through `node` shows them, satisfy `placed`;
/// fails with `what` and the leaders seen.
pub async fn wait_for_leaders(node: &Server, what: &str, placed: impl Fn(&[u64]) -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let status = cluster_status(node);
        let leaders: Vec<u64> =
            status["groups"].as_array().unwrap().iter().map(|g| g["leader_id"].as_u64().unwrap()).collect();
        if placed(&leaders) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "the leaders are {leaders:?} after 15 s: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Starts the three nodes of `addrs` together (each waits for a quorum
/// before it serves), with data in `root/node-ID`.
pub fn start_three(root: &Path, addrs: &HashMap<u64, Addrs>) -> HashMap<u64, Server> {
    start_three_with(root, addrs, &[])
}

/// [`start_three`] with more `cohort serve` flags for every node.
pub fn start_three_with(root: &Path, addrs: &HashMap<u64, Addrs>, extra: &[&str]) -> HashMap<u64, Server> {
    let starting: Vec<_> = (1..=3u64)
        .map(|id| {
            let (d, a) = (root.join(format!("node-{id}")), addrs.clone());
            let extra: Vec<String> = extra.iter().map(|e| e.to_string()).collect();
            std::thread::spawn(move || {
                let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
                (id, start_node_with(id, &d, &a, &extra))
            })
        })
        .collect();
    starting.into_iter().map(|t| t.join().unwrap()).collect()
}

/// Free loopback addresses for three nodes.
pub fn loopback_addrs() -> HashMap<u64, Addrs> {
    (1..=3)
        .map(|id| {
            let port = || format!("127.0.0.1:{}", free_port());
            (id, Addrs { grpc: port(), http: port(), raft: port() })
        })
        .collect()
}
