//! Times the node's query planner in process, on a data directory, without
//! gRPC: the same `Planner::count` and `Planner::check` the gRPC handlers
//! call, so the difference from `cohort-grpc-bench` is the transport.
//!
//! ```text
//! cargo run --release -p cohort-bench --bin planner_probe -- DATA_DIR --shards 16 [--only a2,c2] [--repeat N]
//! ```
#![allow(clippy::print_stdout)]

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use cohort::node::{Node, NodeConfig};
use cohort_bench::mix::{member_id, queries, Kind, Query};

/// The node's allocator, so that the timings are the node's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Times the planner in process.
#[derive(Parser, Debug)]
#[command(about)]
struct Args {
    /// The node's data directory (`cohort demo --data-dir`).
    data_dir: PathBuf,
    /// Its shards.
    #[arg(long, default_value_t = 16)]
    shards: u32,
    /// Profiles of the dataset (membership ids).
    #[arg(long, default_value_t = 10_000_000)]
    profiles: u64,
    /// Runs per query.
    #[arg(long, default_value_t = 100)]
    runs: usize,
    /// Run only these queries of the mix (ids, comma-separated).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Time these count expressions instead of the mix (repeatable).
    #[arg(long)]
    query: Vec<String>,
    /// Times the whole list is run (to profile with `perf record`).
    #[arg(long, default_value_t = 1)]
    repeat: usize,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), String> {
    let args = Args::parse();
    let config = NodeConfig {
        data_dir: args.data_dir.clone(),
        shards: args.shards,
        grpc_addr: "127.0.0.1:0".into(),
        http_addr: "127.0.0.1:0".into(),
        ..NodeConfig::default()
    };
    let node = Node::open(config).await.map_err(|e| e.to_string())?;
    let now = cohort_datagen::DEFAULT_NOW_MS;
    let planner = &node.planner;
    println!("{:<6} {:>10} {:>10}", "query", "p50 µs", "p99 µs");
    let chosen = queries()
        .into_iter()
        .filter(|q| args.only.is_empty() || args.only.iter().any(|o| o.as_str() == q.id));
    let mut chosen: Vec<_> = chosen.collect();
    if !args.query.is_empty() {
        // The mix's texts are static; these live as long as the program.
        let texts: Vec<&'static str> =
            args.query.iter().map(|q| &*Box::leak(q.clone().into_boxed_str())).collect();
        let class = queries()[0].class;
        chosen = texts
            .iter()
            .enumerate()
            .map(|(i, text)| Query { id: format!("q{i}"), class, text, kind: Kind::Count })
            .collect();
    }
    for q in chosen.iter().cycle().take(chosen.len() * args.repeat.max(1)) {
        let mut samples = Vec::with_capacity(args.runs);
        for k in 0..args.runs as u64 + 3 {
            let t = Instant::now();
            match q.kind {
                Kind::Count => {
                    planner.count(&[q.text.to_string()], now, None).map_err(|e| e.to_string())?;
                }
                Kind::Member => {
                    let id = format!("u{}", member_id(k, args.profiles));
                    planner.check(&id, &[q.text.to_string()], now).map_err(|e| e.to_string())?;
                }
                _ => break,
            }
            if k >= 3 {
                samples.push(t.elapsed().as_nanos() as f64 / 1000.0);
            }
        }
        if samples.is_empty() {
            continue;
        }
        samples.sort_by(f64::total_cmp);
        let p = |f: f64| samples[((samples.len() - 1) as f64 * f).round() as usize];
        println!("{:<6} {:>10.1} {:>10.1}", q.id, p(0.5), p(0.99));
    }
    node.shutdown();
    Ok(())
}
