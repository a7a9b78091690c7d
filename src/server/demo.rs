//! `cohort demo`: a single node on generated data, serving.
//!
//! The dataset of `tools/datagen` is built into shards in-process (the
//! same shard code the log applies), written as the snapshots of a fresh
//! data directory together with a catalog whose identity directory holds
//! every generated identifier, and the node is opened on it: from there on
//! it is an ordinary node (Raft log, gRPC and HTTP doors). Example segments
//! are printed with their counts and latency at the dataset's own `now`.

#![allow(clippy::print_stdout)]

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::cluster::catalog::CatalogMachine;
use crate::demo;
use crate::identity::Directory;
use crate::model::{format_rfc3339_ms, IdentifierKind};
use crate::node::{Node, NodeConfig};
use crate::replication::shard_machine::ShardMachine;

/// Options of `cohort demo`.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Generated profiles.
    pub profiles: u64,
    /// Shards.
    pub shards: u32,
    /// Seed of the dataset.
    pub seed: u64,
    /// Data directory (must be new or empty); default: a new directory
    /// under the system's temporary directory.
    pub data_dir: Option<PathBuf>,
    /// gRPC address.
    pub grpc_addr: String,
    /// HTTP address.
    pub http_addr: String,
    /// Keep serving after the examples.
    pub serve: bool,
    /// Serve a non-loopback address without API keys or TLS (the demo has
    /// neither).
    pub insecure: bool,
}

/// Example segments printed by the demo.
pub const EXAMPLES: &[&str] = &[
    r#"country = "FR""#,
    r#"country IN ("FR", "BE", "CH") AND age BETWEEN 25 AND 34 AND plan != "free""#,
    r#"tags CONTAINS "vip" OR ltv > 500"#,
    r#"DID "purchase" IN LAST 30 DAYS AND NOT DID "email_open" IN LAST 7 DAYS"#,
    r#"DID "purchase" WHERE amount > 100 AND category = "shoes" AT LEAST 2 TIMES IN LAST 90 DAYS"#,
    r#"last_seen < NOW - 14 DAYS AND user_id EXISTS"#,
];

/// Builds the dataset into a new data directory and returns its path.
pub fn build_data_dir(opts: &DemoOptions) -> Result<PathBuf> {
    let dir = match &opts.data_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("cohort-demo-{}", std::process::id())),
    };
    if dir.exists() && std::fs::read_dir(&dir).map(|mut d| d.next().is_some()).unwrap_or(true) {
        bail!("{} is not empty: the demo needs a new data directory (or omit --data-dir)", dir.display());
    }
    let snapshots = dir.join("snapshots");
    std::fs::create_dir_all(&snapshots).with_context(|| format!("creating {}", snapshots.display()))?;
    let cfg = cohort_datagen::Config {
        seed: opts.seed,
        profiles: opts.profiles,
        now_ms: cohort_datagen::DEFAULT_NOW_MS,
    };
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    println!("Generating {} profiles on {} shards...", opts.profiles, opts.shards);
    let started = Instant::now();
    let (shards, stats) = demo::build(&cfg, opts.shards as usize, threads, &|_| {});
    if let Some(first) = &stats.first_rejection {
        bail!("the generated data was rejected ({} fields), first: {first}", stats.rejections);
    }
    // The identity directory numbers profiles in the order it sees them,
    // which is the dataset's order: profile i is id i + 1.
    let mut ids: Vec<Vec<(IdentifierKind, String)>> = vec![Vec::new(); opts.profiles as usize];
    for s in &shards {
        for row in s.rows.live_rows() {
            let p = s.profile_of(row) as usize;
            let slot = &mut ids[p - 1];
            for kind in [IdentifierKind::UserId, IdentifierKind::AnonymousId] {
                for v in s.ids.of(kind).values(row) {
                    slot.push((kind, v.to_string()));
                }
            }
        }
    }
    let mut directory = Directory::new();
    for (i, profile_ids) in ids.into_iter().enumerate() {
        let r = directory.resolve(&profile_ids).map_err(|e| anyhow::anyhow!("profile {i}: {e}"))?;
        if r.profile != demo::profile_id(i as u64) {
            bail!("profile {i} got id {} in the directory", r.profile);
        }
    }
    CatalogMachine::install(&snapshots, opts.shards, demo::schema(), directory, 24)?;
    for s in &shards {
        ShardMachine::install(&snapshots, s)?;
    }
    crate::datadir::seal_bulk_load(&dir, NodeConfig::default().node_id, opts.shards)
        .map_err(anyhow::Error::msg)?;
    println!(
        "Built {} profiles and {} events in {:.1} s into {}.",
        stats.profiles,
        stats.events,
        started.elapsed().as_secs_f64(),
        dir.display()
    );
    Ok(dir)
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the demo.
pub async fn run(opts: DemoOptions) -> Result<()> {
    let config = NodeConfig {
        grpc_addr: opts.grpc_addr.clone(),
        http_addr: opts.http_addr.clone(),
        insecure: opts.insecure,
        ..NodeConfig::default()
    };
    if opts.serve {
        // Refuse an exposed address before spending time on the data.
        super::Security::prepare(&config).await?;
    }
    let o = opts.clone();
    let dir = tokio::task::spawn_blocking(move || build_data_dir(&o)).await??;
    // A data directory the demo chose itself is removed when it ends.
    let _cleanup = opts.data_dir.is_none().then(|| RemoveOnDrop(dir.clone()));
    let config = NodeConfig { data_dir: dir, shards: opts.shards, ..config };
    let node = Node::open(config).await.context("opening the demo node")?;
    let now = cohort_datagen::DEFAULT_NOW_MS;
    println!("\nExample segments (now = {}, the dataset's own):\n", format_rfc3339_ms(now));
    for text in EXAMPLES {
        let texts = vec![text.to_string()];
        let started = Instant::now();
        let first = node.planner.count(&texts, now, None);
        let first_us = started.elapsed().as_secs_f64() * 1e6;
        let started = Instant::now();
        let again = node.planner.count(&texts, now, None);
        let warm_us = started.elapsed().as_secs_f64() * 1e6;
        match (first, again) {
            (Ok((c, _)), Ok(_)) => {
                println!("  {:>9}  {text}\n             {warm_us:.0} µs (first run {first_us:.0} µs)", c[0])
            }
            (Err(e), _) | (_, Err(e)) => println!("  error: {e}"),
        }
    }
    if !opts.serve {
        node.shutdown();
        return Ok(());
    }
    println!(
        "\nTry, from another terminal:\n  cohort count --now {} 'country = \"FR\" AND DID \"purchase\" IN LAST 30 DAYS'\n  cohort profile u42\n  cohort status\n",
        format_rfc3339_ms(now)
    );
    super::serve_node(node).await
}
