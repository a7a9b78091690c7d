//! A write load for the multi-process cluster tests: numbered batches of
//! new users, written by a client that moves between nodes and records
//! each batch as acknowledged or unknown (a failed or timed-out call), and
//! the waits that go with it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cohort::proto::v1 as pb;
use parking_lot::Mutex;
use tonic::transport::Endpoint;

use super::Server;

/// Messages in each batch (each a new user).
pub const BATCH: u64 = 20;

pub fn batch(k: u64) -> Vec<String> {
    (0..BATCH)
        .map(|i| {
            format!(
                r#"{{"type":"identify","userId":"w{k}-{i}","messageId":"w{k}-{i}","traits":{{"batch":"b{k}","plan":"pro"}}}}"#
            )
        })
        .collect()
}

/// One ingest call to `addr`, all of it within 3 s.
pub async fn ingest_once(addr: &str, messages: Vec<String>) -> Result<pb::IngestReply, String> {
    let call = async {
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_timeout(Duration::from_millis(500))
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        let mut client = pb::ingest_client::IngestClient::new(channel);
        client
            .ingest_batch(pb::IngestBatchRequest { messages })
            .await
            .map(|r| r.into_inner())
            .map_err(|s| s.to_string())
    };
    tokio::time::timeout(Duration::from_secs(3), call)
        .await
        .unwrap_or_else(|_| Err("no answer within 3 s".into()))
}

/// What the writer saw.
#[derive(Default)]
pub struct Outcomes {
    pub acknowledged: Vec<u64>,
    pub unknown: Vec<u64>,
}

/// Writes batch after batch until `stop`, as a client that knows every
/// node would: to one node while it answers (moving on every 10 batches,
/// so that every node's door is used), to the next after a failure.
pub fn start_writer(
    addrs: Vec<String>,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Outcomes>>,
) -> tokio::task::JoinHandle<()> {
    start_writer_from(0, addrs, stop, seen)
}

/// [`start_writer`] numbering its batches from `first`.
pub fn start_writer_from(
    first: u64,
    addrs: Vec<String>,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Outcomes>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let (mut k, mut at) = (first, 0usize);
        while !stop.load(Ordering::Relaxed) {
            match ingest_once(&addrs[at % addrs.len()], batch(k)).await {
                Ok(reply) if reply.applied == BATCH => {
                    seen.lock().acknowledged.push(k);
                    if k % 10 == 9 {
                        at += 1;
                    }
                }
                Ok(reply) => panic!("batch {k}: {reply:?}"),
                Err(e) => {
                    eprintln!("writer: batch {k} to node {}: {e}", at % addrs.len() + 1);
                    seen.lock().unknown.push(k);
                    at += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            k += 1;
        }
    })
}

/// Waits until `count` more batches are acknowledged; says how long it
/// took.
pub async fn progress(seen: &Mutex<Outcomes>, count: usize, what: &str) {
    let (from, started) = (seen.lock().acknowledged.len(), Instant::now());
    let deadline = started + Duration::from_secs(60);
    while seen.lock().acknowledged.len() < from + count {
        assert!(Instant::now() < deadline, "{what}: no {count} batches acknowledged within 60 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("{what}: {count} batches acknowledged in {:.2} s", started.elapsed().as_secs_f64());
}

/// Waits until every node applied what the cluster committed: every node
/// counts the same total, twice in a row 200 ms apart.
pub async fn settled(nodes: &HashMap<u64, Server>) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = None;
    loop {
        let mut counts = Vec::new();
        for node in nodes.values() {
            counts.push(node.try_count(&["plan = \"pro\""]).await.map(|c| c[0]).unwrap_or(u64::MAX));
        }
        let agreed = counts.windows(2).all(|w| w[0] == w[1]) && counts[0] != u64::MAX;
        if agreed && last == Some(counts[0]) {
            return counts[0];
        }
        last = agreed.then_some(counts[0]);
        assert!(Instant::now() < deadline, "after 60 s the nodes count {counts:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
