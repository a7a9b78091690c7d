//! `snapshot_load`: times how long one thread takes to read each shard
//! snapshot file (`shard-*.snap`) found under a directory, best of N runs,
//! and prints seconds per file, MB/s and the loaded shard's heap bytes.
//!
//! ```text
//! cargo run --release -p cohort-bench --bin snapshot_load -- DIR [--runs 3] [--check] [--rewrite OUT]
//! ```
//!
//! `--check` also validates every index of each loaded shard and prints a
//! digest of its profiles (every 97th row read back with `read_profile`), so
//! that two files holding the same shard in different formats can be shown
//! to answer alike. `--rewrite OUT` writes each loaded shard again, in the
//! format of this build, under `OUT` with the same file name.
#![allow(clippy::print_stdout)]

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Parser;
use cohort::shard::{snapshot, Shard};

/// Times snapshot loading, file by file.
#[derive(Parser, Debug)]
#[command(about)]
struct Args {
    /// Directory searched (recursively) for `shard-*.snap` files.
    dir: PathBuf,
    /// Loads per file; the best is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Validate each shard and print a digest of its profiles.
    #[arg(long)]
    check: bool,
    /// Write each loaded shard again, in this build's format, into this directory.
    #[arg(long)]
    rewrite: Option<PathBuf>,
}

/// Every `shard-*.snap` file under `dir`, sorted.
fn snapshot_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else if path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("shard-") && n.ends_with(".snap"))
            {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// A digest of every 97th profile as read back, in row order.
fn profile_digest(shard: &Shard) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let mut live: Vec<u32> = shard.universe.iter().collect();
    live.sort_unstable();
    for &row in live.iter().step_by(97) {
        let profile = shard.rows.profile_of(row);
        format!("{:?}", shard.read_profile(profile)).hash(&mut h);
    }
    h.finish()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let files = snapshot_files(&args.dir)?;
    if files.is_empty() {
        return Err(format!("no shard-*.snap file under {}", args.dir.display()).into());
    }
    println!(
        "snapshot format version {}, {} file(s), best of {} loads each",
        snapshot::VERSION,
        files.len(),
        args.runs
    );
    let mut total_s = 0.0;
    for path in &files {
        let bytes = std::fs::metadata(path)?.len();
        // One untimed read warms the page cache.
        let _ = std::fs::read(path)?;
        let mut best = f64::INFINITY;
        let mut kept = None;
        for _ in 0..args.runs.max(1) {
            let start = Instant::now();
            let loaded = snapshot::read_with_extra(path)?;
            best = best.min(start.elapsed().as_secs_f64());
            // Dropping a shard is not part of loading it.
            kept = Some(loaded);
        }
        let Some((shard, extra)) = kept else { continue };
        total_s += best;
        let (traits, events) = shard.heap_bytes();
        let profiles = shard.universe.len();
        println!(
            "{}: {:.1} MB, {profiles} profiles, load {best:.3} s ({:.0} MB/s), heap_bytes {} + {} = {} ({:.0} B/profile)",
            path.display(),
            bytes as f64 / 1e6,
            bytes as f64 / 1e6 / best,
            traits,
            events,
            traits + events,
            (traits + events) as f64 / profiles.max(1) as f64,
        );
        if args.check {
            shard.validate()?;
            println!("  valid; profile digest {:016x}", profile_digest(&shard));
        }
        if let Some(out) = &args.rewrite {
            std::fs::create_dir_all(out)?;
            let name = path.file_name().ok_or("file without a name")?;
            snapshot::write_with_extra(&shard, &out.join(name), &extra)?;
        }
    }
    println!("total {total_s:.3} s for {} file(s) on one thread", files.len());
    Ok(())
}
