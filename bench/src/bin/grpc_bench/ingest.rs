//! Durable ingest over gRPC: NDJSON messages of the generated dataset sent
//! with `Ingest.IngestBatch` by several concurrent clients. Every reply
//! means the batch is in the Raft log, fsynced.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::time::{Duration, Instant};

use cohort::proto::v1::admin_client::AdminClient;
use cohort::proto::v1::ingest_client::IngestClient;
use cohort::proto::v1::{ApplySchemaRequest, IngestBatchRequest, StatusReply, StatusRequest};
use cohort_bench::stats::percentile;

use crate::node::connect;

/// The trait types of the generated dataset, as `cohort::demo::schema`
/// declares them; applied before ingesting so that the ingested node types
/// `email` as text and `signup_at` as a timestamp, as the demo node does.
pub const SCHEMA_JSON: &str = r#"{"traits": {"country": "keyword", "city": "keyword", "age": "number", "plan": "keyword", "signup_at": "timestamp", "ltv": "number", "email": "text", "tags": "list", "newsletter": "bool"}}"#;

/// What an ingest run measured.
#[derive(Debug, Default)]
pub struct IngestRun {
    /// Messages sent.
    pub messages: u64,
    /// Bytes of message text sent.
    pub bytes: u64,
    /// Batches sent.
    pub batches: u64,
    /// Concurrent clients.
    pub clients: usize,
    /// From the first send to the last acknowledgement.
    pub wall: Duration,
    /// Applied, duplicates and rejections as the replies count them.
    pub applied: u64,
    /// Duplicates acknowledged.
    pub duplicates: u64,
    /// Rejections reported.
    pub rejections: u64,
    /// The first few rejections, for the report.
    pub first_rejections: Vec<String>,
    /// Latency of each batch call, nanoseconds.
    pub batch_ns: Vec<u64>,
}

impl IngestRun {
    /// Messages per second.
    pub fn rate(&self) -> f64 {
        self.messages as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    /// p50 and p99 of the batch latency, milliseconds.
    pub fn batch_p50_p99_ms(&self) -> (f64, f64) {
        (percentile(&self.batch_ns, 50.0) as f64 / 1e6, percentile(&self.batch_ns, 99.0) as f64 / 1e6)
    }
}

/// Reads the NDJSON file into batches of `batch` messages, in file order.
pub fn read_batches(path: &Path, batch: usize) -> Result<(Vec<Vec<String>>, u64), String> {
    let f = File::open(path).map_err(|e| format!("opening {}: {e}", path.display()))?;
    let mut out: Vec<Vec<String>> = Vec::new();
    let mut cur = Vec::with_capacity(batch);
    let mut bytes = 0u64;
    for line in BufReader::with_capacity(1 << 20, f).lines() {
        let line = line.map_err(|e| format!("reading {}: {e}", path.display()))?;
        if line.is_empty() {
            continue;
        }
        bytes += line.len() as u64;
        cur.push(line);
        if cur.len() == batch {
            out.push(std::mem::replace(&mut cur, Vec::with_capacity(batch)));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    Ok((out, bytes))
}

/// Applies the dataset's trait types.
pub async fn apply_schema(addr: &str) -> Result<(), String> {
    let mut admin = AdminClient::new(connect(addr).await?);
    admin
        .apply_schema(ApplySchemaRequest { json: SCHEMA_JSON.into() })
        .await
        .map_err(|s| format!("ApplySchema: {s}"))?;
    Ok(())
}

/// The node's Admin.Status.
pub async fn status(addr: &str) -> Result<StatusReply, String> {
    let mut admin = AdminClient::new(connect(addr).await?);
    Ok(admin.status(StatusRequest {}).await.map_err(|s| format!("Status: {s}"))?.into_inner())
}

/// Sends `batches` with `clients` concurrent clients, each on its own
/// connection. Client `c` sends a contiguous run of batches, so that the
/// messages of one profile keep their order (except where two runs meet).
pub async fn run(
    addr: &str,
    batches: Vec<Vec<String>>,
    bytes: u64,
    clients: usize,
) -> Result<IngestRun, String> {
    let clients = clients.max(1);
    let n = batches.len();
    let messages: u64 = batches.iter().map(|b| b.len() as u64).sum();
    let mut shares: Vec<Vec<Vec<String>>> = (0..clients).map(|_| Vec::new()).collect();
    for (i, b) in batches.into_iter().enumerate() {
        shares[i * clients / n.max(1)].push(b);
    }
    let mut conns = Vec::with_capacity(clients);
    for _ in 0..clients {
        conns.push(IngestClient::new(connect(addr).await?).max_encoding_message_size(usize::MAX));
    }
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(clients);
    for (mut client, share) in conns.into_iter().zip(shares) {
        tasks.push(tokio::spawn(async move {
            let mut r = IngestRun::default();
            for messages in share {
                let len = messages.len() as u64;
                let t0 = Instant::now();
                let reply = client
                    .ingest_batch(IngestBatchRequest { messages })
                    .await
                    .map_err(|s| format!("IngestBatch (after {} batches of this client): {s}", r.batches))?
                    .into_inner();
                r.batch_ns.push(t0.elapsed().as_nanos() as u64);
                r.batches += 1;
                r.messages += len;
                r.applied += reply.applied;
                r.duplicates += reply.duplicates;
                r.rejections += reply.rejections.len() as u64;
                for j in reply.rejections.iter().take(3usize.saturating_sub(r.first_rejections.len())) {
                    r.first_rejections.push(format!(
                        "position {} field {:?} message {:?}: {}",
                        j.position, j.field, j.message_id, j.reason
                    ));
                }
            }
            Ok::<IngestRun, String>(r)
        }));
    }
    let mut total = IngestRun { clients, bytes, ..IngestRun::default() };
    let mut first_err = None;
    for t in tasks {
        match t.await {
            Ok(Ok(r)) => {
                total.messages += r.messages;
                total.batches += r.batches;
                total.applied += r.applied;
                total.duplicates += r.duplicates;
                total.rejections += r.rejections;
                total.batch_ns.extend(r.batch_ns);
                for x in r.first_rejections {
                    if total.first_rejections.len() < 5 {
                        total.first_rejections.push(x);
                    }
                }
            }
            Ok(Err(e)) => first_err = first_err.or(Some(e)),
            Err(e) => first_err = first_err.or(Some(format!("ingest task: {e}"))),
        }
    }
    total.wall = start.elapsed();
    if let Some(e) = first_err {
        return Err(e);
    }
    debug_assert_eq!(total.messages, messages);
    Ok(total)
}
