//! `cohort-bench`: builds the synthetic dataset into in-process shards,
//! measures build rate and memory, runs the fixed query mix with a fixed
//! `now`, and optionally runs the same mix on DuckDB over the same data
//! (`duckdb_mix.py`) and puts the figures side by side.
#![allow(clippy::print_stdout)]

use std::collections::{BTreeMap, HashMap};

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use cohort::shard::Shard;
use cohort_bench::dataset::{self, BuildStats};
use cohort_bench::mix::{queries, run_query, Class, Kind, QueryResult};
use cohort_bench::pool::Pool;
use cohort_bench::stats::{p50_p99_us, percentile};
use cohort_bench::sysinfo;
use cohort_datagen::pipeline::{generate, Format};
use cohort_datagen::{Config, DEFAULT_NOW_MS, EVENTS_CSV_HEADER, PROFILES_CSV_HEADER};
use serde_json::{json, Value as Json};

/// Cohort's in-process benchmark, with an optional DuckDB comparison.
#[derive(Parser, Debug)]
#[command(version, about, args_override_self = true)]
struct Args {
    /// Number of profiles.
    #[arg(long, default_value_t = 10_000_000)]
    profiles: u64,
    /// Number of shards.
    #[arg(long, default_value_t = 16)]
    shards: u32,
    /// Threads for the build and for each query's fan-out.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Dataset seed.
    #[arg(long, default_value_t = cohort_datagen::DEFAULT_SEED)]
    seed: u64,
    /// Recorded runs per query (class c gets half, at least 10).
    #[arg(long, default_value_t = 200)]
    iterations: usize,
    /// Run the DuckDB comparison (writes CSV, runs duckdb_mix.py).
    #[arg(long)]
    duckdb: bool,
    /// Recorded runs per query on DuckDB (membership checks use as many as
    /// Cohort, so that the counts compare).
    #[arg(long, default_value_t = 20)]
    duckdb_iterations: usize,
    /// Append a results section to this markdown file.
    #[arg(long)]
    out_md: Option<PathBuf>,
    /// Where the CSV and Parquet files go (a subfolder per dataset).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/data"))]
    data_dir: PathBuf,
    /// The Python interpreter that has duckdb installed.
    #[arg(long, default_value = "python3")]
    python: String,
    /// How long pool threads spin before sleeping, in microseconds (0: block
    /// at once and pay a wake-up per query).
    #[arg(long, default_value_t = 1000)]
    spin_us: u64,
    /// The DuckDB side of the comparison.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/duckdb_mix.py"))]
    duckdb_script: PathBuf,
    /// Run only these queries of the mix (ids, comma-separated, e.g.
    /// `a2,c4`), for profiling; not with `--duckdb`.
    #[arg(long, value_delimiter = ',', conflicts_with = "duckdb")]
    only: Vec<String>,
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn runs_for(class: Class, iterations: usize) -> usize {
    match class {
        Class::Frequency => (iterations / 2).max(10),
        _ => iterations.max(1),
    }
}

/// Writes `profiles.csv` and `events.csv` of the dataset into `dir` unless a
/// complete earlier write of the same dataset is there.
fn ensure_csv(cfg: &Config, dir: &Path, threads: usize) -> std::io::Result<f64> {
    let marker = dir.join("dataset.txt");
    let want = format!("seed {} profiles {} now_ms {}\n", cfg.seed, cfg.profiles, cfg.now_ms);
    if fs::read_to_string(&marker).ok().as_deref() == Some(want.as_str()) {
        eprintln!("csv: {} is up to date", dir.display());
        return Ok(0.0);
    }
    fs::create_dir_all(dir)?;
    let _ = fs::remove_file(&marker);
    let start = Instant::now();
    let mut profiles = BufWriter::with_capacity(1 << 20, File::create(dir.join("profiles.csv"))?);
    let mut events = BufWriter::with_capacity(1 << 20, File::create(dir.join("events.csv"))?);
    profiles.write_all(PROFILES_CSV_HEADER.as_bytes())?;
    events.write_all(EVENTS_CSV_HEADER.as_bytes())?;
    generate(cfg, Format::Csv, threads, 4096, |chunk| {
        profiles.write_all(&chunk.main)?;
        events.write_all(&chunk.events)
    })?;
    profiles.flush()?;
    events.flush()?;
    drop((profiles, events));
    fs::write(&marker, want)?;
    let secs = start.elapsed().as_secs_f64();
    eprintln!("csv: wrote {} in {secs:.1} s", dir.display());
    Ok(secs)
}

/// Per-query DuckDB figures, as `duckdb_mix.py` prints them.
#[derive(Clone, Debug, Default)]
struct Duck {
    count: u64,
    checksum: u64,
    detail: String,
    p50_us: f64,
    p99_us: f64,
    samples_us: Vec<f64>,
}

struct DuckRun {
    queries: HashMap<String, Duck>,
    info: Json,
}

fn run_duckdb(args: &Args, cfg: &Config, dir: &Path, results: &[QueryResult]) -> Result<DuckRun, String> {
    let expect: serde_json::Map<String, Json> = results
        .iter()
        .map(|r| (r.query.id.clone(), json!({"count": r.count, "checksum": r.checksum, "detail": r.detail})))
        .collect();
    let expect_path = dir.join("cohort_expect.json");
    fs::write(&expect_path, Json::Object(expect).to_string()).map_err(|e| e.to_string())?;
    let member_runs = runs_for(Class::Membership, args.iterations);
    let mut cmd = Process::new(&args.python);
    cmd.arg(&args.duckdb_script)
        .arg("--data-dir")
        .arg(dir)
        .args(["--now-ms", &cfg.now_ms.to_string()])
        .args(["--iterations", &args.duckdb_iterations.to_string()])
        .args(["--member-runs", &member_runs.to_string()])
        .args(["--profiles", &cfg.profiles.to_string()])
        .args(["--shards", &args.shards.to_string()])
        .args(["--threads", &args.threads.to_string()])
        .arg("--expect")
        .arg(&expect_path)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    eprintln!("duckdb: {cmd:?}");
    let out = cmd.output().map_err(|e| format!("running {}: {e}", args.python))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!("duckdb_mix.py failed ({}): {stdout}", out.status));
    }
    let mut run = DuckRun { queries: HashMap::new(), info: Json::Null };
    for line in stdout.lines() {
        let Ok(v) = serde_json::from_str::<Json>(line) else {
            println!("{line}");
            continue;
        };
        if v.get("kind").and_then(Json::as_str) == Some("info") {
            run.info = v;
            continue;
        }
        let Some(id) = v.get("id").and_then(Json::as_str) else { continue };
        let num = |k: &str| v.get(k).and_then(Json::as_f64).unwrap_or(f64::NAN);
        run.queries.insert(
            id.to_string(),
            Duck {
                count: v.get("count").and_then(Json::as_u64).unwrap_or(u64::MAX),
                checksum: v.get("checksum").and_then(Json::as_u64).unwrap_or(0),
                detail: v.get("detail").and_then(Json::as_str).unwrap_or_default().to_string(),
                p50_us: num("p50_us"),
                p99_us: num("p99_us"),
                samples_us: v
                    .get("samples_us")
                    .and_then(Json::as_array)
                    .map(|a| a.iter().filter_map(Json::as_f64).collect())
                    .unwrap_or_default(),
            },
        );
    }
    Ok(run)
}

fn pct_f(samples: &[f64], p: f64) -> f64 {
    let scaled: Vec<u64> = samples.iter().map(|x| (x * 1000.0).round() as u64).collect();
    percentile(&scaled, p) as f64 / 1000.0
}

fn fmt_us(us: f64) -> String {
    if us.is_nan() {
        "-".into()
    } else if us >= 10_000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else if us >= 10.0 {
        format!("{us:.0} µs")
    } else {
        format!("{us:.2} µs")
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

fn same_answer(r: &QueryResult, d: &Duck) -> bool {
    r.count == d.count && r.checksum == d.checksum && r.detail == d.detail
}

/// Heap bytes per structure of `Shard::memory_report`, summed over the
/// shards: per profile for traits, identifiers and row structures, per event
/// (of that table) for event tables.
fn memory_breakdown(shards: &[Shard], profiles: f64, events: f64) -> String {
    let mut bytes: BTreeMap<String, usize> = BTreeMap::new();
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for s in shards {
        for (name, b) in s.memory_report() {
            *bytes.entry(name).or_default() += b;
        }
        for (name, t) in &s.events {
            *counts.entry(name.clone()).or_default() += t.total;
        }
    }
    let mut parts = Vec::new();
    let mut ev = Vec::new();
    let mut all_events = 0usize;
    for (name, b) in &bytes {
        match name.strip_prefix("event:") {
            Some(event) => {
                all_events += b;
                let n = counts.get(event).copied().unwrap_or(0).max(1);
                ev.push(format!("{event} {:.1}", *b as f64 / n as f64));
            }
            None => {
                let short = name.strip_prefix("trait:").unwrap_or(name);
                parts.push(format!("{short} {:.0}", *b as f64 / profiles));
            }
        }
    }
    format!(
        "bytes/profile: {}; bytes/event: {} (all {:.1})",
        parts.join(", "),
        ev.join(", "),
        all_events as f64 / events
    )
}

struct Memory {
    rss_before: u64,
    rss_after: u64,
    traits_heap: u64,
    events_heap: u64,
}

#[allow(clippy::too_many_lines)]
fn main() {
    let args = Args::parse();
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let cfg = Config { seed: args.seed, profiles: args.profiles, now_ms: DEFAULT_NOW_MS };
    let data_dir = args.data_dir.join(format!("p{}-s{}", cfg.profiles, cfg.seed));
    eprintln!(
        "cohort-bench: {} profiles, {} shards, {} threads, seed {}, now {}",
        cfg.profiles,
        args.shards,
        args.threads,
        cfg.seed,
        cohort_datagen::format_rfc3339_ms(cfg.now_ms)
    );

    let mut csv_secs = None;
    if args.duckdb {
        match ensure_csv(&cfg, &data_dir, args.threads) {
            Ok(s) => csv_secs = Some(s),
            Err(e) => {
                eprintln!("error: writing CSV to {}: {e}", data_dir.display());
                std::process::exit(2);
            }
        }
    }

    // Build.
    let rss_before = sysinfo::rss_bytes();
    let last = std::sync::Mutex::new(Instant::now());
    let progress = |f: f64| {
        let mut l = last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if l.elapsed().as_secs_f64() > 5.0 {
            *l = Instant::now();
            eprintln!("build: {:.0} %  rss {:.0} MB", f * 100.0, mb(sysinfo::rss_bytes()));
        }
    };
    let (shards, stats): (Vec<Shard>, BuildStats) =
        dataset::build(&cfg, args.shards, args.threads, &progress);
    if let Some(first) = &stats.first_rejection {
        eprintln!("warning: {} fields rejected while building; first: {first}", stats.rejections);
    }
    let rss_after = sysinfo::rss_bytes();
    let (traits_heap, events_heap) = shards.iter().fold((0u64, 0u64), |(t, e), s| {
        let (a, b) = s.heap_bytes();
        (t + a as u64, e + b as u64)
    });
    let mem = Memory { rss_before, rss_after, traits_heap, events_heap };
    let sizes: Vec<u64> = shards.iter().map(Shard::len).collect();
    let schema = dataset::schema();
    for s in &shards {
        let mut merged = schema.clone();
        if let Err(e) = merged.merge_from(&s.schema()) {
            eprintln!("warning: shard {} schema disagrees with the declared one: {e}", s.id);
        }
    }

    println!();
    println!("== Cohort in-process benchmark ==");
    println!("command : {command}");
    println!(
        "machine : {} ({} CPUs, {:.1} GiB)",
        sysinfo::cpu_model(),
        sysinfo::cpus(),
        sysinfo::mem_total_bytes() as f64 / (1u64 << 30) as f64
    );
    println!(
        "dataset : {} profiles, {} events, {} shards (sizes {}..{}), now {}",
        stats.profiles,
        stats.events,
        args.shards,
        sizes.iter().min().unwrap_or(&0),
        sizes.iter().max().unwrap_or(&0),
        cohort_datagen::format_rfc3339_ms(cfg.now_ms)
    );
    println!(
        "build   : {:.1} s wall on {} threads: {:.0} profiles/s, {:.0} events/s, {:.0} commands/s, {} rejections",
        stats.secs,
        args.threads,
        stats.profiles as f64 / stats.secs,
        stats.events as f64 / stats.secs,
        stats.commands as f64 / stats.secs,
        stats.rejections
    );
    let delta = mem.rss_after.saturating_sub(mem.rss_before);
    let n = stats.profiles.max(1) as f64;
    let ne = stats.events.max(1) as f64;
    println!(
        "memory  : RSS {:.0} MB -> {:.0} MB (+{:.0} MB): {:.0} bytes/profile all-in ({:.1} bytes per message)",
        mb(mem.rss_before),
        mb(mem.rss_after),
        mb(delta),
        delta as f64 / n,
        delta as f64 / (n + ne)
    );
    println!(
        "heap    : traits+indexes {:.0} MB = {:.0} bytes/profile (target <= 200); events {:.0} MB = {:.1} bytes/event (target <= 24)",
        mb(mem.traits_heap),
        mem.traits_heap as f64 / n,
        mb(mem.events_heap),
        mem.events_heap as f64 / ne
    );
    let heap = (mem.traits_heap + mem.events_heap).max(1) as f64;
    println!(
        "split   : RSS delta split by heap share: {:.0} bytes/profile (traits), {:.1} bytes/event",
        delta as f64 * (mem.traits_heap as f64 / heap) / n,
        delta as f64 * (mem.events_heap as f64 / heap) / ne
    );

    // Query mix.
    let breakdown = memory_breakdown(&shards, n, ne);
    println!("per part: {breakdown}");
    let pool =
        Pool::with_spin(Arc::new(shards), args.threads, std::time::Duration::from_micros(args.spin_us));
    let load_before = sysinfo::loadavg();
    let mut results: Vec<QueryResult> = Vec::new();
    let mix_start = Instant::now();
    for q in queries()
        .into_iter()
        .filter(|q| args.only.is_empty() || args.only.iter().any(|id| id.as_str() == q.id))
    {
        let runs = runs_for(q.class, args.iterations);
        match run_query(&pool, &schema, cfg.now_ms, cfg.profiles, &q, 3, runs) {
            Ok(r) => results.push(r),
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(3);
            }
        }
    }
    let mix_secs = mix_start.elapsed().as_secs_f64();
    let load_after = sysinfo::loadavg();
    drop(pool);
    let rss_dropped = sysinfo::rss_bytes();

    println!();
    println!(
        "{:<6} {:>10} {:>10} {:>10} {:>5}  {:<}",
        "query", "p50", "p99", "compile", "runs", "answer / segment"
    );
    for r in &results {
        let (p50, p99) = p50_p99_us(&r.samples_ns);
        let compile = percentile(&r.compile_ns, 50.0) as f64 / 1e3;
        let answer = match r.query.kind {
            Kind::Count => format!("{}", r.count),
            Kind::Member => format!("{} of {} in", r.count, r.samples_ns.len()),
            Kind::Breakdown { by, .. } => format!("by {by}: {}", r.detail),
            Kind::Page { .. } => format!("{} members, id sum {}", r.count, r.checksum),
        };
        println!(
            "{:<6} {:>10} {:>10} {:>10} {:>5}  {answer}  <- {}",
            r.query.id,
            fmt_us(p50),
            fmt_us(p99),
            fmt_us(compile),
            r.samples_ns.len(),
            r.query.text
        );
    }
    let by_class = |class: Class| -> Vec<u64> {
        results.iter().filter(|r| r.query.class == class).flat_map(|r| r.samples_ns.iter().copied()).collect()
    };
    println!();
    println!("{:<30} {:>10} {:>10} {:>12}", "class (pooled runs)", "p50", "p99", "target p50");
    for class in Class::ALL {
        let (p50, p99) = p50_p99_us(&by_class(class));
        let target = class.target_p50_us().map_or("-".to_string(), fmt_us);
        println!(
            "{:<30} {:>10} {:>10} {:>12}",
            format!("{}) {}", class.key(), class.title()),
            fmt_us(p50),
            fmt_us(p99),
            target
        );
    }
    println!(
        "query mix: {mix_secs:.1} s; load average {load_before} before, {load_after} after; RSS after dropping the shards {:.0} MB",
        mb(rss_dropped)
    );

    // DuckDB.
    let duck = if args.duckdb {
        match run_duckdb(&args, &cfg, &data_dir, &results) {
            Ok(d) => Some(d),
            Err(e) => {
                eprintln!("error: DuckDB comparison failed: {e}");
                None
            }
        }
    } else {
        None
    };
    let mut mismatches: Vec<String> = Vec::new();
    if let Some(d) = &duck {
        println!();
        println!("== DuckDB side by side ==  {}", d.info);
        println!(
            "{:<6} {:>10} {:>10} {:>10} {:>10} {:>9}  match",
            "query", "cohort p50", "duck p50", "cohort p99", "duck p99", "speedup"
        );
        for r in &results {
            let Some(x) = d.queries.get(&r.query.id) else {
                println!("{:<6} (no DuckDB figure)", r.query.id);
                continue;
            };
            let (p50, p99) = p50_p99_us(&r.samples_ns);
            let ok = same_answer(r, x);
            if !ok {
                let m = format!(
                    "{} `{}`: Cohort {} (sum {}, {}) vs DuckDB {} (sum {}, {})",
                    r.query.id, r.query.text, r.count, r.checksum, r.detail, x.count, x.checksum, x.detail
                );
                println!("!!! MISMATCH {m}");
                mismatches.push(m);
            }
            println!(
                "{:<6} {:>10} {:>10} {:>10} {:>10} {:>8.0}x  {}",
                r.query.id,
                fmt_us(p50),
                fmt_us(x.p50_us),
                fmt_us(p99),
                fmt_us(x.p99_us),
                x.p50_us / p50,
                if ok { "ok" } else { "MISMATCH" }
            );
        }
    }

    // Per-class and mix summaries, for stdout and markdown.
    struct ClassRow {
        class: Class,
        p50: f64,
        p99: f64,
        duck_p50: f64,
        duck_p99: f64,
    }
    let class_rows: Vec<ClassRow> = Class::ALL
        .into_iter()
        .map(|class| {
            let (p50, p99) = p50_p99_us(&by_class(class));
            let (duck_p50, duck_p99) = match &duck {
                Some(d) => {
                    let s: Vec<f64> = results
                        .iter()
                        .filter(|r| r.query.class == class)
                        .filter_map(|r| d.queries.get(&r.query.id))
                        .flat_map(|x| x.samples_us.iter().copied())
                        .collect();
                    (pct_f(&s, 50.0), pct_f(&s, 99.0))
                }
                None => (f64::NAN, f64::NAN),
            };
            ClassRow { class, p50, p99, duck_p50, duck_p99 }
        })
        .collect();
    let mix_cohort = median(results.iter().map(|r| p50_p99_us(&r.samples_ns).0).collect());
    let mix_duck = duck.as_ref().map_or(f64::NAN, |d| {
        median(results.iter().filter_map(|r| d.queries.get(&r.query.id)).map(|x| x.p50_us).collect())
    });
    if duck.is_some() {
        println!();
        println!(
            "{:<30} {:>10} {:>10} {:>10} {:>10} {:>9}",
            "class", "cohort p50", "duck p50", "cohort p99", "duck p99", "speedup"
        );
        for c in &class_rows {
            println!(
                "{:<30} {:>10} {:>10} {:>10} {:>10} {:>8.0}x",
                format!("{}) {}", c.class.key(), c.class.title()),
                fmt_us(c.p50),
                fmt_us(c.duck_p50),
                fmt_us(c.p99),
                fmt_us(c.duck_p99),
                c.duck_p50 / c.p50
            );
        }
        println!(
            "median of the mix (median of per-query p50): Cohort {}, DuckDB {}, speedup {:.0}x",
            fmt_us(mix_cohort),
            fmt_us(mix_duck),
            mix_duck / mix_cohort
        );
        if mismatches.is_empty() {
            println!("counts: DuckDB and Cohort agree on all {} queries", results.len());
        } else {
            println!("!!! {} COUNT MISMATCHES between DuckDB and Cohort (see above)", mismatches.len());
        }
    }

    // Markdown.
    if let Some(path) = &args.out_md {
        let now_wall = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        let mut md = String::new();
        let w = &mut md;
        let mut line = |s: String| {
            w.push_str(&s);
            w.push('\n');
        };
        line(format!(
            "\n## {} profiles, {} shards, {} threads — {}\n",
            stats.profiles,
            args.shards,
            args.threads,
            cohort_datagen::format_rfc3339_ms(now_wall)
        ));
        line(format!(
            "- Machine: {}, {} CPUs, {:.1} GiB RAM",
            sysinfo::cpu_model(),
            sysinfo::cpus(),
            sysinfo::mem_total_bytes() as f64 / (1u64 << 30) as f64
        ));
        line(format!("- Command: `{command}`"));
        line(format!(
            "- Load average (1/5/15 min) before the query mix: {load_before}, after: {load_after} (other processes share this machine)"
        ));
        line(format!(
            "- Dataset: seed {}, now {}, {} profiles, {} events ({:.1} per profile)",
            cfg.seed,
            cohort_datagen::format_rfc3339_ms(cfg.now_ms),
            stats.profiles,
            stats.events,
            ne / n
        ));
        line(format!(
            "- Build (in-process generation + `Shard::apply`, batches of {}, wall clock): {:.1} s, **{:.0} profiles/s, {:.0} events/s** ({:.0} commands/s), {} rejections",
            dataset::BATCH,
            stats.secs,
            n / stats.secs,
            ne / stats.secs,
            stats.commands as f64 / stats.secs,
            stats.rejections
        ));
        line(format!(
            "- Memory, RSS: {:.0} MB → {:.0} MB, **{:.0} bytes per profile all-in** (traits, indexes, events, allocator slack; peak RSS {:.0} MB)",
            mb(mem.rss_before),
            mb(mem.rss_after),
            delta as f64 / n,
            mb(sysinfo::peak_rss_bytes())
        ));
        line(format!(
            "- Memory, `Shard::heap_bytes`: traits and indexes **{:.0} bytes/profile** (target ≤ 200), events **{:.1} bytes/event** (target ≤ 24); RSS delta split by that share: {:.0} bytes/profile, {:.1} bytes/event",
            mem.traits_heap as f64 / n,
            mem.events_heap as f64 / ne,
            delta as f64 * (mem.traits_heap as f64 / heap) / n,
            delta as f64 * (mem.events_heap as f64 / heap) / ne
        ));
        line(format!("- Memory per part (`heap_bytes`): {breakdown}"));
        line(format!("- Query mix: {mix_secs:.1} s; pool threads spin {} µs before sleeping", args.spin_us));
        if let Some(d) = &duck {
            line(format!("- DuckDB: {}", d.info));
            if let Some(s) = csv_secs {
                line(format!("- CSV written in {s:.1} s (0 = reused)"));
            }
        }
        line(String::new());
        line(
            "| class | Cohort p50 | Cohort p99 | target p50 | DuckDB p50 | DuckDB p99 | speedup (p50) |"
                .into(),
        );
        line("|---|---:|---:|---:|---:|---:|---:|".into());
        for c in &class_rows {
            line(format!(
                "| {}) {} | {} | {} | {} | {} | {} | {} |",
                c.class.key(),
                c.class.title(),
                fmt_us(c.p50),
                fmt_us(c.p99),
                c.class.target_p50_us().map_or("-".into(), fmt_us),
                fmt_us(c.duck_p50),
                fmt_us(c.duck_p99),
                if c.duck_p50.is_nan() { "-".into() } else { format!("{:.0}×", c.duck_p50 / c.p50) }
            ));
        }
        line(format!(
            "| **median of the mix** (median of per-query p50) | {} | | | {} | | {} |",
            fmt_us(mix_cohort),
            fmt_us(mix_duck),
            if mix_duck.is_nan() { "-".into() } else { format!("**{:.0}×**", mix_duck / mix_cohort) }
        ));
        line(String::new());
        line("| id | segment | answer | Cohort p50 | p99 | compile p50 | runs | DuckDB p50 | p99 | speedup | same answer |".into());
        line("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|".into());
        for r in &results {
            let (p50, p99) = p50_p99_us(&r.samples_ns);
            let x = duck.as_ref().and_then(|d| d.queries.get(&r.query.id));
            let answer = match r.query.kind {
                Kind::Count => format!("{}", r.count),
                Kind::Member => format!("{}/{} in", r.count, r.samples_ns.len()),
                Kind::Breakdown { by, .. } => format!("by {by}, top-10 sum {}", r.count),
                Kind::Page { .. } => format!("{} ids, sum {}", r.count, r.checksum),
            };
            line(format!(
                "| {} | `{}` | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.query.id,
                r.query.text.replace('|', "\\|"),
                answer,
                fmt_us(p50),
                fmt_us(p99),
                fmt_us(percentile(&r.compile_ns, 50.0) as f64 / 1e3),
                r.samples_ns.len(),
                x.map_or("-".into(), |x| fmt_us(x.p50_us)),
                x.map_or("-".into(), |x| fmt_us(x.p99_us)),
                x.map_or("-".into(), |x| format!("{:.0}×", x.p50_us / p50)),
                x.map_or("-", |x| if same_answer(r, x) { "yes" } else { "**NO**" })
            ));
        }
        if duck.is_some() {
            line(String::new());
            if mismatches.is_empty() {
                line("DuckDB and Cohort give the same answer to every query.".into());
            } else {
                line("**Mismatches between DuckDB and Cohort (bugs):**".into());
                for m in &mismatches {
                    line(format!("- {m}"));
                }
            }
        }
        if !path.exists() {
            md.insert_str(
                0,
                "# Cohort benchmark results\n\nAppended by `cohort-bench --out-md` (see `bench/README.md`); newest last.\n",
            );
        }
        let appended = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| f.write_all(md.as_bytes()));
        match appended {
            Ok(()) => eprintln!("appended results to {}", path.display()),
            Err(e) => eprintln!("error: appending to {}: {e}", path.display()),
        }
    }
    if !mismatches.is_empty() {
        std::process::exit(4);
    }
}
