//! The `cohort` command-line program.
//!
//! Today it runs the embedded default in-process: `cohort demo` builds shards
//! from the synthetic dataset, prints example segments with their counts and
//! latencies, then answers segments typed on standard input. The server,
//! the gRPC and HTTP doors and the operator subcommands arrive with the
//! issue "The node".

#![allow(clippy::print_stdout)]

use std::io::{BufRead, Write};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use cohort::demo;
use cohort::model::parse_rfc3339_ms;
use cohort::segment::{compile, CheckContext, Cond, NoSegments, SegmentError};
use cohort::shard::eval::top_n;
use cohort::shard::Shard;
use cohort_datagen::Config;

#[derive(Parser)]
#[command(name = "cohort", version, about = "Cohort: an in-memory profile database for customer data")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build shards from generated data in-process, show example segments,
    /// then answer segments typed on standard input (one per line).
    Demo {
        /// Number of generated profiles.
        #[arg(long, default_value_t = 1_000_000)]
        profiles: u64,
        /// Number of shards.
        #[arg(long, default_value_t = 8)]
        shards: usize,
        /// Threads used to build and to query.
        #[arg(long, default_value_t = std::thread::available_parallelism().map_or(2, |n| n.get()))]
        threads: usize,
        /// Seed of the generated data.
        #[arg(long, default_value_t = cohort_datagen::DEFAULT_SEED)]
        seed: u64,
        /// The query time `now`, RFC 3339 (default: the dataset's own now,
        /// 2026-11-01T00:00:00Z, so that windows hit the generated events).
        #[arg(long)]
        now: Option<String>,
        /// Print the examples and exit without reading standard input.
        #[arg(long)]
        no_prompt: bool,
    },
}

const EXAMPLES: &[&str] = &[
    r#"country = "FR""#,
    r#"country IN ("FR", "BE", "CH") AND age BETWEEN 25 AND 34 AND plan != "free""#,
    r#"tags CONTAINS "vip" OR ltv > 500"#,
    r#"DID "purchase" IN LAST 30 DAYS AND NOT DID "email_open" IN LAST 7 DAYS"#,
    r#"DID "purchase" WHERE amount > 100 AND category = "shoes" AT LEAST 2 TIMES IN LAST 90 DAYS"#,
    r#"last_seen < NOW - 14 DAYS AND user_id EXISTS"#,
    r#"signup_at BETWEEN "2026-01-01T00:00:00Z" AND "2026-03-31T23:59:59Z""#,
];

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Demo { profiles, shards, threads, seed, now, no_prompt } => {
            if shards == 0 {
                bail!("--shards must be at least 1");
            }
            let now_ms = match now {
                Some(text) => {
                    parse_rfc3339_ms(&text).with_context(|| format!("--now {text:?} is not RFC 3339"))?
                }
                None => cohort_datagen::DEFAULT_NOW_MS,
            };
            run_demo(
                Config { seed, profiles, now_ms: cohort_datagen::DEFAULT_NOW_MS },
                shards,
                threads,
                now_ms,
                no_prompt,
            )
        }
    }
}

/// Counts `cond` on every shard, the shards split over `threads` threads.
fn count(shards: &[Shard], cond: &Cond, threads: usize) -> u64 {
    if threads <= 1 || shards.len() <= 1 {
        return shards.iter().map(|s| s.count(cond)).sum();
    }
    let per = shards.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = shards
            .chunks(per)
            .map(|chunk| scope.spawn(move || chunk.iter().map(|s| s.count(cond)).sum::<u64>()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
    })
}

fn run_demo(cfg: Config, shards: usize, threads: usize, now_ms: i64, no_prompt: bool) -> Result<()> {
    println!("Building {} profiles on {shards} shards with {threads} threads...", cfg.profiles);
    let (built, stats) = demo::build(&cfg, shards, threads, &|_| {});
    if let Some(first) = &stats.first_rejection {
        bail!("the generated data was rejected ({} fields), first: {first}", stats.rejections);
    }
    let (secs, events) = (stats.secs, stats.events);
    println!(
        "Built {} profiles and {} events in {:.1} s ({:.0} profiles/s, {:.0} events/s).",
        cfg.profiles,
        events,
        secs,
        cfg.profiles as f64 / secs,
        events as f64 / secs
    );
    let (trait_bytes, event_bytes) =
        built.iter().map(Shard::heap_bytes).fold((0, 0), |(a, b), (x, y)| (a + x, b + y));
    println!(
        "Memory (heap estimate): {:.0} bytes per profile for traits and indexes, {:.1} bytes per event.",
        trait_bytes as f64 / cfg.profiles.max(1) as f64,
        event_bytes as f64 / events.max(1) as f64
    );
    if std::env::var_os("COHORT_MEMORY_DETAIL").is_some() {
        let mut totals = std::collections::BTreeMap::<String, usize>::new();
        for s in &built {
            for (name, bytes) in s.memory_report() {
                *totals.entry(name).or_default() += bytes;
            }
        }
        for (name, bytes) in totals {
            println!("  {name:<24} {:>8.1} bytes per profile", bytes as f64 / cfg.profiles.max(1) as f64);
        }
    }
    let schema = demo::schema();
    let ctx = CheckContext { schema: &schema, catalog: &NoSegments, now_ms };
    println!("\nExample segments (now = {}):\n", cohort::model::format_rfc3339_ms(now_ms));
    for text in EXAMPLES {
        answer(&built, &ctx, text, threads);
    }
    let by_country = {
        let cond = compile(r#"DID "purchase" IN LAST 30 DAYS"#, &ctx)?;
        let mut merged = std::collections::BTreeMap::<String, u64>::new();
        for s in &built {
            for (v, n) in s.breakdown(&cond, "country")? {
                *merged.entry(v).or_default() += n;
            }
        }
        top_n(merged.into_iter().collect(), 5)
    };
    println!("Top countries of recent buyers: {by_country:?}\n");
    if no_prompt {
        return Ok(());
    }
    println!("Type a segment and press Enter (Ctrl-D to quit).");
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    print!("segment> ");
    out.flush()?;
    for line in stdin.lock().lines() {
        let line = line?;
        if !line.trim().is_empty() {
            answer(&built, &ctx, &line, threads);
        }
        print!("segment> ");
        out.flush()?;
    }
    println!();
    Ok(())
}

fn answer(shards: &[Shard], ctx: &CheckContext<'_>, text: &str, threads: usize) {
    match compile(text, ctx) {
        Ok(cond) => {
            // The first run pages the indexes in; the second is what a
            // serving node answers in. Both are shown.
            let started = Instant::now();
            let n = count(shards, &cond, threads);
            let cold_us = started.elapsed().as_secs_f64() * 1e6;
            let started = Instant::now();
            let again = count(shards, &cond, threads);
            let warm_us = started.elapsed().as_secs_f64() * 1e6;
            debug_assert_eq!(n, again, "a count must not change between two runs");
            println!("  {text}\n    -> {n} profiles in {warm_us:.0} µs (first run {cold_us:.0} µs)\n");
        }
        Err(err) => {
            println!("  {text}");
            if let Some(pos) = err.position() {
                println!("  {}^", " ".repeat(pos.saturating_sub(1)));
            }
            let hint = match err {
                SegmentError::UnknownName { .. } => {
                    " (traits: country, city, age, plan, signup_at, ltv, email, tags, newsletter)"
                }
                _ => "",
            };
            println!("    error: {err}{hint}\n");
        }
    }
}
