//! `cohort-grpc-bench`: Cohort's performance contract measured over gRPC
//! against a real node (`cohort serve`), in one run:
//!
//! 1. durable ingest: generated NDJSON sent with `Ingest.IngestBatch` by
//!    several concurrent clients into a fresh node (every reply means
//!    fsynced), messages/s from the first send to the last reply, and the
//!    node's RSS;
//! 2. restart to serving: a data directory of the dataset built with
//!    `cohort demo --no-serve`, then the time from spawning `cohort serve`
//!    until health answers SERVING and a Count succeeds;
//! 3. the query mix of `cohort_bench::mix` over gRPC (Count, Check,
//!    Breakdown, Members) with 1 and with 8 concurrent clients, p50/p99 per
//!    class and throughput;
//! 4. the same mix on DuckDB (`duckdb_mix.py`) and on ClickHouse through chdb
//!    (`chdb_mix.py`) over the same data, every answer compared;
//! 5. a report on stdout and, with `--out-md`, a section of `RESULTS.md`.
//!
//! `bench/grpc_run.sh` builds, installs the Python side and runs it. See
//! `bench/README.md`.
#![allow(clippy::print_stdout)]

mod ingest;
mod mix;
mod node;
mod peers;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use cohort_bench::mix::{queries, Class, Kind, Query};
use cohort_bench::stats::{p50_p99_us, percentile};
use cohort_bench::sysinfo;
use cohort_datagen::{format_rfc3339_ms, Config, DEFAULT_NOW_MS};

use crate::mix::{runs_for, Answer, MixConfig, Phase};
use crate::node::Node;
use crate::peers::{PeerArgs, PeerRun};

/// Cohort over gRPC: durable ingest, restart to serving, the query mix
/// with 1 and 8 clients, beside DuckDB and chdb.
#[derive(Parser, Debug)]
#[command(version, about, args_override_self = true)]
struct Args {
    /// Profiles of the query dataset (`cohort demo --profiles`).
    #[arg(long, default_value_t = 10_000_000)]
    profiles: u64,
    /// Shards of both nodes.
    #[arg(long, default_value_t = 16)]
    shards: u32,
    /// Dataset seed.
    #[arg(long, default_value_t = cohort_datagen::DEFAULT_SEED)]
    seed: u64,
    /// Profiles of the ingest run (their NDJSON messages are sent); 0 skips
    /// the ingest run.
    #[arg(long, default_value_t = 500_000)]
    ingest_profiles: u64,
    /// Messages per IngestBatch call.
    #[arg(long, default_value_t = 5_000)]
    ingest_batch: usize,
    /// Concurrent ingest clients (one connection each).
    #[arg(long, default_value_t = 4)]
    ingest_clients: usize,
    /// Recorded runs per query and phase (class c: half, at least 10),
    /// shared by the phase's clients.
    #[arg(long, default_value_t = 200)]
    iterations: usize,
    /// Warm-up runs per query and client, not recorded.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Concurrent query clients of each phase (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    clients: Vec<usize>,
    /// Threads of the clients' tokio runtime (1: a current-thread runtime).
    /// On the 2-core VM, 2 gave lower single-client latency than 1.
    #[arg(long, default_value_t = 2)]
    client_threads: usize,
    /// Restarts of the query node to measure (the last one serves the mix).
    #[arg(long, default_value_t = 1)]
    restarts: usize,
    /// Where the NDJSON, the CSV/Parquet and the node data directories go.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/data"))]
    data_dir: PathBuf,
    /// Where `cohort` and `cohort-datagen` are (default: beside this program).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Build the query node's data directory again even if a complete one is
    /// there.
    #[arg(long)]
    rebuild: bool,
    /// Keep the ingest node's data directory.
    #[arg(long)]
    keep_ingest_dir: bool,
    /// Run the ingest (and the ingest node's restart) only: no query node,
    /// no query mix, no peers, no RESULTS section.
    #[arg(long)]
    ingest_only: bool,
    /// Peers to run beside Cohort: duckdb, chdb (comma-separated; empty: none).
    #[arg(long, value_delimiter = ',', default_value = "duckdb,chdb")]
    peers: Vec<String>,
    /// Recorded runs per count query on the peers (membership: as many
    /// checks as Cohort's).
    #[arg(long, default_value_t = 20)]
    peer_iterations: usize,
    /// chdb: `table` (MergeTree tables loaded from the Parquet files) or
    /// `file` (queries straight over the Parquet files).
    #[arg(long, default_value = "table")]
    chdb_mode: String,
    /// Threads of the peers and of the CSV writer.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// The Python interpreter with duckdb and chdb installed.
    #[arg(long, default_value = "python3")]
    python: String,
    /// Seconds a node may take to serve before the run gives up.
    #[arg(long, default_value_t = 900)]
    serve_timeout: u64,
    /// Run only these queries of the mix (ids, comma-separated).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Append a results section to this markdown file.
    #[arg(long)]
    out_md: Option<PathBuf>,
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
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

fn fmt_rate(x: f64) -> String {
    if x.is_nan() {
        return "-".into();
    }
    let n = x.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.retain(|x| !x.is_nan());
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

fn pct_f(samples: &[f64], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let scaled: Vec<u64> = samples.iter().map(|x| (x * 1000.0).round() as u64).collect();
    percentile(&scaled, p) as f64 / 1000.0
}

/// The over-gRPC targets of `shared/DESIGN.md` ("Performance contract"):
/// (p50 µs, p99 µs, text).
fn target(class: Class) -> (Option<f64>, Option<f64>, &'static str) {
    match class {
        Class::Attribute => (Some(1_000.0), Some(3_000.0), "p50 ≤ 1 ms, p99 ≤ 3 ms"),
        Class::Behaviour => (Some(2_000.0), None, "p50 ≤ 2 ms"),
        Class::Frequency => (Some(10_000.0), None, "p50 ≤ 10 ms"),
        Class::Membership => (Some(150.0), None, "p50 ≤ 150 µs"),
        Class::Breakdown | Class::Members => (None, None, "-"),
    }
}

fn met(class: Class, p50: f64, p99: f64) -> &'static str {
    let (t50, t99, _) = target(class);
    if t50.is_none() && t99.is_none() {
        return "";
    }
    let ok = t50.is_none_or(|t| p50 <= t) && t99.is_none_or(|t| p99 <= t);
    if ok {
        " (met)"
    } else {
        " (**missed**)"
    }
}

fn runtime(threads: usize) -> tokio::runtime::Runtime {
    let rt = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()
    };
    rt.expect("a tokio runtime")
}

fn die(msg: &str) -> ! {
    eprintln!("error: {msg}");
    std::process::exit(2);
}

/// Runs `cohort-datagen` into `path` unless the file is there.
fn ensure_ndjson(datagen: &Path, path: &Path, profiles: u64, seed: u64) -> Result<f64, String> {
    if path.exists() {
        eprintln!("ndjson: {} is there", path.display());
        return Ok(0.0);
    }
    let tmp = path.with_extension("ndjson.tmp");
    let mut cmd = Command::new(datagen);
    cmd.args(["--profiles", &profiles.to_string(), "--seed", &seed.to_string(), "--out"]).arg(&tmp);
    eprintln!("ndjson: {cmd:?}");
    let start = Instant::now();
    let status = cmd.status().map_err(|e| format!("running {}: {e}", datagen.display()))?;
    if !status.success() {
        return Err(format!("cohort-datagen failed: {status}"));
    }
    fs::rename(&tmp, path).map_err(|e| e.to_string())?;
    Ok(start.elapsed().as_secs_f64())
}

/// What the ingest run measured.
struct IngestReport {
    run: ingest::IngestRun,
    profiles: u64,
    rss_before: u64,
    rss_after: u64,
    hwm: u64,
    /// CPU seconds the node used during the ingest.
    node_cpu_secs: f64,
    status: Option<cohort::proto::v1::StatusReply>,
    restart: Option<Duration>,
    restart_status: Option<cohort::proto::v1::StatusReply>,
    notes: Vec<String>,
}

fn run_ingest(args: &Args, bin: &Path, now: &str) -> Result<IngestReport, String> {
    fs::create_dir_all(&args.data_dir).map_err(|e| e.to_string())?;
    let ndjson = args.data_dir.join(format!("ingest-p{}-s{}.ndjson", args.ingest_profiles, args.seed));
    ensure_ndjson(&bin.join("cohort-datagen"), &ndjson, args.ingest_profiles, args.seed)?;
    let t = Instant::now();
    let (batches, bytes) = ingest::read_batches(&ndjson, args.ingest_batch.max(1))?;
    eprintln!(
        "ingest: read {} batches ({:.0} MB) in {:.1} s",
        batches.len(),
        mb(bytes),
        t.elapsed().as_secs_f64()
    );
    let dir = args.data_dir.join("ingest-node");
    if dir.exists() {
        fs::remove_dir_all(&dir).map_err(|e| format!("removing {}: {e}", dir.display()))?;
    }
    fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let log = args.data_dir.join("ingest-node.log");
    let cohort = bin.join("cohort");
    let timeout = Duration::from_secs(args.serve_timeout);
    let rt = runtime(args.client_threads.max(2));
    let mut node = Node::spawn(&cohort, &dir, args.shards, &log)?;
    let opened = rt.block_on(node.wait_serving(now, timeout))?;
    eprintln!("ingest: fresh node serving after {:.2} s", opened.as_secs_f64());
    let mut notes = Vec::new();
    if let Err(e) = rt.block_on(ingest::apply_schema(&node.grpc_addr)) {
        notes.push(format!("ApplySchema failed: {e}"));
        eprintln!("warning: {e}");
    }
    let (rss_before, _) = node.rss();
    let cpu_before = node.cpu_secs();
    let run = rt.block_on(ingest::run(&node.grpc_addr, batches, bytes, args.ingest_clients));
    let node_cpu_secs = node.cpu_secs() - cpu_before;
    let (rss_after, hwm) = node.rss();
    let run = match run {
        Ok(r) => r,
        Err(e) => {
            node.check_alive().map_err(|d| format!("{e}\n{d}"))?;
            return Err(e);
        }
    };
    eprintln!(
        "ingest: {} messages in {:.2} s = {:.0} messages/s; node CPU {:.1} s ({:.2} µs per message, {:.2} cores busy); RSS {:.0} MB",
        run.messages,
        run.wall.as_secs_f64(),
        run.rate(),
        node_cpu_secs,
        node_cpu_secs * 1e6 / run.messages.max(1) as f64,
        node_cpu_secs / run.wall.as_secs_f64().max(1e-9),
        mb(rss_after)
    );
    let status = match rt.block_on(ingest::status(&node.grpc_addr)) {
        Ok(s) => Some(s),
        Err(e) => {
            notes.push(format!("Status failed: {e}"));
            None
        }
    };
    eprintln!("ingest: node {}", node.stop(Duration::from_secs(60)));
    // Restart: the node opens from its snapshots and replays its log tail.
    let mut restart = None;
    let mut restart_status = None;
    match Node::spawn(&cohort, &dir, args.shards, &args.data_dir.join("ingest-node-restart.log")) {
        Ok(mut again) => {
            match rt.block_on(again.wait_serving(now, timeout)) {
                Ok(d) => {
                    restart = Some(d);
                    restart_status = rt.block_on(ingest::status(&again.grpc_addr)).ok();
                }
                Err(e) => notes.push(format!("restart after ingest failed: {e}")),
            }
            eprintln!("ingest: restarted node {}", again.stop(Duration::from_secs(60)));
        }
        Err(e) => notes.push(format!("restart after ingest: {e}")),
    }
    if !args.keep_ingest_dir {
        let _ = fs::remove_dir_all(&dir);
    }
    Ok(IngestReport {
        run,
        profiles: args.ingest_profiles,
        rss_before,
        rss_after,
        hwm,
        node_cpu_secs,
        status,
        restart,
        restart_status,
        notes,
    })
}

/// What the query node measured.
struct QueryReport {
    build_secs: Option<f64>,
    restarts: Vec<Duration>,
    ready_lines: Vec<String>,
    rss_open: u64,
    rss_after: u64,
    hwm: u64,
    status: Option<cohort::proto::v1::StatusReply>,
    phases: Vec<Phase>,
    load_before: String,
    load_after: String,
}

fn ensure_node_dir(args: &Args, bin: &Path, dir: &Path) -> Result<Option<f64>, String> {
    let marker = dir.with_extension("built");
    let want = format!("profiles {} shards {} seed {}\n", args.profiles, args.shards, args.seed);
    if !args.rebuild && dir.exists() && fs::read_to_string(&marker).ok().as_deref() == Some(want.as_str()) {
        eprintln!("node: reusing {}", dir.display());
        return Ok(None);
    }
    let _ = fs::remove_file(&marker);
    if dir.exists() {
        fs::remove_dir_all(dir).map_err(|e| format!("removing {}: {e}", dir.display()))?;
    }
    let mut cmd = Command::new(bin.join("cohort"));
    cmd.arg("demo")
        .args(["--profiles", &args.profiles.to_string(), "--shards", &args.shards.to_string()])
        .arg("--data-dir")
        .arg(dir)
        .arg("--no-serve");
    if args.seed != cohort_datagen::DEFAULT_SEED {
        cmd.args(["--seed", &args.seed.to_string()]);
    }
    eprintln!("node: {cmd:?}");
    let start = Instant::now();
    let status = cmd.status().map_err(|e| format!("running cohort demo: {e}"))?;
    if !status.success() {
        return Err(format!("cohort demo --no-serve failed: {status}"));
    }
    let secs = start.elapsed().as_secs_f64();
    fs::write(&marker, want).map_err(|e| e.to_string())?;
    Ok(Some(secs))
}

fn run_queries(args: &Args, bin: &Path, now: &str, mix: &[Query]) -> Result<QueryReport, String> {
    fs::create_dir_all(&args.data_dir).map_err(|e| e.to_string())?;
    let dir = args.data_dir.join(format!("node-p{}-sh{}-s{}", args.profiles, args.shards, args.seed));
    let build_secs = ensure_node_dir(args, bin, &dir)?;
    let cohort = bin.join("cohort");
    let timeout = Duration::from_secs(args.serve_timeout);
    let control = runtime(2);
    let mut restarts = Vec::new();
    let mut ready_lines = Vec::new();
    let mut node = None;
    for i in 0..args.restarts.max(1) {
        let mut n = Node::spawn(&cohort, &dir, args.shards, &args.data_dir.join("query-node.log"))?;
        let d = control.block_on(n.wait_serving(now, timeout))?;
        eprintln!("node: serving {:.2} s after the spawn (restart {})", d.as_secs_f64(), i + 1);
        restarts.push(d);
        if let Some((_, line)) =
            n.ready_line.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
        {
            ready_lines.push(line);
        }
        if i + 1 < args.restarts.max(1) {
            eprintln!("node: {}", n.stop(Duration::from_secs(60)));
        } else {
            node = Some(n);
        }
    }
    let mut node = node.expect("at least one start");
    let (rss_open, _) = node.rss();
    let cfg = MixConfig {
        addr: node.grpc_addr.clone(),
        now: now.to_string(),
        profiles: args.profiles,
        iterations: args.iterations,
        warmup: args.warmup,
    };
    let load_before = sysinfo::loadavg();
    let mut phases = Vec::new();
    for &clients in &args.clients {
        let rt = runtime(args.client_threads);
        let start = Instant::now();
        let phase = rt.block_on(mix::run_phase(&cfg, mix, clients));
        match phase {
            Ok(p) => {
                eprintln!(
                    "mix: {clients} client(s) in {:.1} s, {} errors",
                    start.elapsed().as_secs_f64(),
                    p.errors().len()
                );
                for e in p.errors().iter().take(10) {
                    eprintln!("  !!! {e}");
                }
                phases.push(p);
            }
            Err(e) => {
                node.check_alive().map_err(|d| format!("{e}\n{d}"))?;
                return Err(e);
            }
        }
        node.check_alive()?;
    }
    let load_after = sysinfo::loadavg();
    let (rss_after, hwm) = node.rss();
    let status = control.block_on(ingest::status(&node.grpc_addr)).ok();
    eprintln!("node: {}", node.stop(Duration::from_secs(60)));
    Ok(QueryReport {
        build_secs,
        restarts,
        ready_lines,
        rss_open,
        rss_after,
        hwm,
        status,
        phases,
        load_before,
        load_after,
    })
}

/// The answer of `id` in every source that has it, and whether they agree.
struct Check {
    id: String,
    sources: Vec<(String, Answer)>,
}

impl Check {
    fn agree(&self) -> bool {
        self.sources.windows(2).all(|w| w[0].1 == w[1].1)
    }
}

#[allow(clippy::too_many_lines)]
fn main() {
    let args = Args::parse();
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let script_command = std::env::var("COHORT_GRPC_BENCH_COMMAND").ok().map(|s| s.trim().to_string());
    let bin = args.bin_dir.clone().unwrap_or_else(|| {
        std::env::current_exe().ok().and_then(|p| p.parent().map(Path::to_path_buf)).unwrap_or_default()
    });
    let now = format_rfc3339_ms(DEFAULT_NOW_MS);
    let cfg = Config { seed: args.seed, profiles: args.profiles, now_ms: DEFAULT_NOW_MS };
    let peers_wanted: Vec<String> =
        args.peers.iter().map(|p| p.trim().to_lowercase()).filter(|p| !p.is_empty() && p != "none").collect();
    for p in &peers_wanted {
        if p != "duckdb" && p != "chdb" {
            die(&format!("unknown peer {p:?} (duckdb, chdb)"));
        }
    }
    let mix: Vec<Query> = queries()
        .into_iter()
        .filter(|q| args.only.is_empty() || args.only.iter().any(|id| id.as_str() == q.id))
        .collect();
    eprintln!(
        "cohort-grpc-bench: {} profiles, {} shards, seed {}, now {now}; ingest {} profiles; clients {:?}; peers {:?}",
        args.profiles, args.shards, args.seed, args.ingest_profiles, args.clients, peers_wanted
    );
    let started = Instant::now();

    // The peers' files first, while nothing else runs.
    let csv_dir = args.data_dir.join(format!("p{}-s{}", cfg.profiles, cfg.seed));
    let mut csv_secs = None;
    if !peers_wanted.is_empty() && !args.ingest_only {
        match peers::ensure_csv(&cfg, &csv_dir, args.threads) {
            Ok(s) => csv_secs = Some(s),
            Err(e) => die(&format!("writing CSV to {}: {e}", csv_dir.display())),
        }
    }

    // 1. Durable ingest.
    let mut failures: Vec<String> = Vec::new();
    let ingest = if args.ingest_profiles > 0 {
        match run_ingest(&args, &bin, &now) {
            Ok(r) => {
                failures.extend(r.notes.iter().cloned());
                Some(r)
            }
            Err(e) => {
                eprintln!("error: ingest run failed: {e}");
                failures.push(format!("ingest run failed: {e}"));
                None
            }
        }
    } else {
        None
    };

    if args.ingest_only {
        if ingest.is_none() || !failures.is_empty() {
            die(&format!("ingest-only run: {}", failures.join("; ")));
        }
        return;
    }

    // 2–3. Restart to serving and the query mix.
    let q = match run_queries(&args, &bin, &now, &mix) {
        Ok(q) => q,
        Err(e) => die(&format!("query node: {e}")),
    };
    for p in &q.phases {
        for e in p.errors() {
            failures.push(format!("{} client(s): {e}", p.clients));
        }
    }
    let base = &q.phases[0];

    // 4. Peers.
    let mut peer_runs: Vec<PeerRun> = Vec::new();
    if !peers_wanted.is_empty() {
        let expect = peers::write_expect(&csv_dir, &base.queries).unwrap_or_else(|e| die(&e.to_string()));
        let here = Path::new(env!("CARGO_MANIFEST_DIR"));
        for p in &peers_wanted {
            let (name, script, extra): (&'static str, PathBuf, Vec<String>) = if p == "duckdb" {
                ("DuckDB", here.join("duckdb_mix.py"), Vec::new())
            } else {
                ("chdb", here.join("chdb_mix.py"), vec!["--mode".into(), args.chdb_mode.clone()])
            };
            let pa = PeerArgs {
                python: &args.python,
                script: &script,
                data_dir: &csv_dir,
                now_ms: DEFAULT_NOW_MS,
                iterations: args.peer_iterations,
                member_runs: runs_for(Class::Membership, args.iterations),
                profiles: args.profiles,
                shards: args.shards,
                threads: args.threads,
                extra,
            };
            match peers::run_peer(name, &pa, &expect) {
                Ok(r) => peer_runs.push(r),
                Err(e) => {
                    eprintln!("error: {name}: {e}");
                    failures.push(format!("{name} failed: {e}"));
                }
            }
        }
    }

    // Answers: every phase and every peer against the first phase.
    let mut checks: Vec<Check> = Vec::new();
    for (i, qs) in base.queries.iter().enumerate() {
        let mut sources = vec![(format!("Cohort ({} client)", base.clients), qs.answer.clone())];
        for p in &q.phases[1..] {
            sources.push((format!("Cohort ({} clients)", p.clients), p.queries[i].answer.clone()));
        }
        for pr in &peer_runs {
            if let Some(x) = pr.queries.get(&qs.query.id) {
                sources.push((pr.name.to_string(), x.answer.clone()));
            }
        }
        checks.push(Check { id: qs.query.id.clone(), sources });
    }
    let mismatches: Vec<String> = checks
        .iter()
        .filter(|c| !c.agree())
        .map(|c| {
            let parts: Vec<String> = c
                .sources
                .iter()
                .map(|(s, a)| format!("{s} {} (sum {}, {:?})", a.count, a.checksum, a.detail))
                .collect();
            format!("{}: {}", c.id, parts.join(" vs "))
        })
        .collect();

    // Report.
    let by_id = |id: &str| checks.iter().find(|c| c.id == id);
    let peer_p50 = |pr: &PeerRun, class: Class| -> (f64, f64) {
        let s: Vec<f64> = base
            .queries
            .iter()
            .filter(|x| x.query.class == class)
            .filter_map(|x| pr.queries.get(&x.query.id))
            .flat_map(|x| x.samples_us.iter().copied())
            .collect();
        (pct_f(&s, 50.0), pct_f(&s, 99.0))
    };
    let mix_median = |p: &Phase| median(p.queries.iter().map(|x| p50_p99_us(&x.samples_ns).0).collect());
    let peer_median = |pr: &PeerRun| {
        median(
            base.queries.iter().map(|x| pr.queries.get(&x.query.id).map_or(f64::NAN, |y| y.p50_us)).collect(),
        )
    };
    let find_peer = |name: &str| peer_runs.iter().find(|p| p.name == name);
    let membership_p50 = p50_p99_us(&base.class_samples(Class::Membership)).0;
    let restart = q.restarts.last().copied().unwrap_or_default();
    let machine = format!(
        "{}, {} CPUs, {:.1} GiB RAM",
        sysinfo::cpu_model(),
        sysinfo::cpus(),
        sysinfo::mem_total_bytes() as f64 / (1u64 << 30) as f64
    );

    let mut lines: Vec<String> = Vec::new();
    let mut out = |s: String| lines.push(s);
    out(format!("- Machine: {machine}; the node, the clients and the peers share it, one at a time"));
    match &script_command {
        Some(s) => out(format!("- Command: `{s}` (runs `{command}`)")),
        None => out(format!("- Command: `{command}`")),
    }
    out(format!(
        "- Dataset: seed {}, now {now}, {} profiles, {} shards{}",
        args.seed,
        args.profiles,
        args.shards,
        q.status.as_ref().map_or(String::new(), |s| format!(
            " ({} profiles and {} events in the node)",
            s.profiles, s.events
        ))
    ));
    if let Some(r) = &ingest {
        let (b50, b99) = r.run.batch_p50_p99_ms();
        out(format!(
            "- **Durable ingest: {} messages/s** (target ≥ 200,000): {} messages ({} profiles, {:.0} MB of JSON) into a fresh node with {} shards, {} concurrent clients each sending `IngestBatch` calls of {} messages on its own connection, {:.2} s from the first send to the last reply (a reply means fsynced); batch latency p50 {b50:.1} ms, p99 {b99:.1} ms; {} applied, {} duplicates, {} rejections; the node used {:.1} CPU seconds ({:.2} µs per message, {:.2} cores busy on average)",
            fmt_rate(r.run.rate()),
            r.run.messages,
            r.profiles,
            mb(r.run.bytes),
            args.shards,
            r.run.clients,
            args.ingest_batch,
            r.run.wall.as_secs_f64(),
            r.run.applied,
            r.run.duplicates,
            r.run.rejections,
            r.node_cpu_secs,
            r.node_cpu_secs * 1e6 / r.run.messages.max(1) as f64,
            r.node_cpu_secs / r.run.wall.as_secs_f64().max(1e-9)
        ));
        for x in &r.run.first_rejections {
            out(format!("  - rejection: {x}"));
        }
        out(format!(
            "- Ingest node memory: RSS {:.0} MB before, {:.0} MB after the ingest (peak {:.0} MB): {:.0} bytes per ingested profile{}",
            mb(r.rss_before),
            mb(r.rss_after),
            mb(r.hwm),
            r.rss_after as f64 / r.profiles.max(1) as f64,
            r.status.as_ref().map_or(String::new(), |s| format!(
                "; Status: {} profiles, {} events, {} applied, {} rejected, {} merges, memory_bytes {:.0} MB",
                s.profiles, s.events, s.messages_applied, s.messages_rejected, s.merges, mb(s.memory_bytes)
            ))
        ));
        if let Some(d) = r.restart {
            out(format!(
                "- Restart of the ingest node (snapshots + log replay) to serving: {:.2} s{}",
                d.as_secs_f64(),
                r.restart_status.as_ref().map_or(String::new(), |s| format!(
                    "; then {} profiles, {} events",
                    s.profiles, s.events
                ))
            ));
        }
    }
    match q.build_secs {
        Some(s) => out(format!(
            "- Data directory built with `cohort demo --profiles {} --shards {} --no-serve` in {s:.1} s",
            args.profiles, args.shards
        )),
        None => {
            out("- Data directory: reused from an earlier `cohort demo --no-serve` of the same dataset"
                .into())
        }
    }
    out(format!(
        "- **Restart to serving: {:.2} s** (target ≤ 5 s): from spawning `cohort serve` until `grpc.health.v1.Health` answers SERVING for `cohort.v1.Query` and a Count succeeds{}{}",
        restart.as_secs_f64(),
        if q.restarts.len() > 1 {
            format!(
                " (each of {} restarts: {})",
                q.restarts.len(),
                q.restarts.iter().map(|d| format!("{:.2} s", d.as_secs_f64())).collect::<Vec<_>>().join(", ")
            )
        } else {
            String::new()
        },
        q.ready_lines.last().map_or(String::new(), |l| format!("; the node printed `{l}`"))
    ));
    out(format!(
        "- **Node memory: {:.0} bytes per profile** (RSS {:.0} MB once serving, {:.0} MB after the mix, peak {:.0} MB){}",
        q.rss_open as f64 / args.profiles.max(1) as f64,
        mb(q.rss_open),
        mb(q.rss_after),
        mb(q.hwm),
        q.status.as_ref().map_or(String::new(), |s| format!("; Status memory_bytes {:.0} MB", mb(s.memory_bytes)))
    ));
    out(format!(
        "- **Membership check p50: {}** over gRPC, 1 client (target ≤ 150 µs)",
        fmt_us(membership_p50)
    ));
    let cohort_median = mix_median(base);
    let mut med = format!(
        "- Median of the mix (median of per-query p50): Cohort {} with 1 client",
        fmt_us(cohort_median)
    );
    for p in &q.phases[1..] {
        med.push_str(&format!(", {} with {} clients", fmt_us(mix_median(p)), p.clients));
    }
    for pr in &peer_runs {
        let m = peer_median(pr);
        med.push_str(&format!(
            "; {} {} ({:.0}× Cohort's 1-client median)",
            pr.name,
            fmt_us(m),
            m / cohort_median
        ));
    }
    if find_peer("DuckDB").is_some() {
        med.push_str(" (target: at least 20× faster than DuckDB)");
    }
    out(med);
    out(format!(
        "- Throughput over the whole mix: {}",
        q.phases
            .iter()
            .map(|p| format!("{:.0} queries/s with {} client(s)", p.total_qps(), p.clients))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    out(format!("- Load average (1/5/15 min) before the mix: {}, after: {}", q.load_before, q.load_after));
    for pr in &peer_runs {
        out(format!("- {}: {}", pr.name, pr.info));
    }
    if let Some(s) = csv_secs {
        out(format!("- CSV written in {s:.1} s (0 = reused)"));
    }
    out(format!("- Whole run: {:.1} min", started.elapsed().as_secs_f64() / 60.0));
    out(String::new());

    // Class table.
    let mut head = "| class |".to_string();
    let mut rule = "|---|".to_string();
    for p in &q.phases {
        let c = if p.clients == 1 { "1 client".to_string() } else { format!("{} clients", p.clients) };
        head.push_str(&format!(" Cohort p50 / p99, {c} | queries/s, {c} |"));
        rule.push_str("---:|---:|");
    }
    for pr in &peer_runs {
        head.push_str(&format!(" {} p50 |", pr.name));
        rule.push_str("---:|");
    }
    head.push_str(" target (DESIGN.md, over gRPC) |");
    rule.push_str("---|");
    out(head);
    out(rule);
    for class in Class::ALL {
        if base.class_samples(class).is_empty() {
            continue;
        }
        let mut row = format!("| {}) {} |", class.key(), class.title());
        for p in &q.phases {
            let (p50, p99) = p50_p99_us(&p.class_samples(class));
            row.push_str(&format!(" {} / {} | {:.0} |", fmt_us(p50), fmt_us(p99), p.class_qps(class)));
        }
        for pr in &peer_runs {
            row.push_str(&format!(" {} |", fmt_us(peer_p50(pr, class).0)));
        }
        let (p50, p99) = p50_p99_us(&base.class_samples(class));
        row.push_str(&format!(" {}{} |", target(class).2, met(class, p50, p99)));
        out(row);
    }
    let mut row = "| **median of the mix** |".to_string();
    for p in &q.phases {
        row.push_str(&format!(" {} | {:.0} |", fmt_us(mix_median(p)), p.total_qps()));
    }
    for pr in &peer_runs {
        row.push_str(&format!(" {} |", fmt_us(peer_median(pr))));
    }
    row.push_str(" ≥ 20× faster than DuckDB |");
    out(row);
    out(String::new());

    // Per-query table.
    let mut head = "| id | segment | answer |".to_string();
    let mut rule = "|---|---|---|".to_string();
    for p in &q.phases {
        head.push_str(&format!(
            " p50 / p99, {} client{} |",
            p.clients,
            if p.clients == 1 { "" } else { "s" }
        ));
        rule.push_str("---:|");
    }
    for pr in &peer_runs {
        head.push_str(&format!(" {} p50 |", pr.name));
        rule.push_str("---:|");
    }
    head.push_str(" same answer |");
    rule.push_str("---|");
    out(head);
    out(rule);
    for (i, x) in base.queries.iter().enumerate() {
        let a = &x.answer;
        let answer = match x.query.kind {
            Kind::Count => a.count.to_string(),
            Kind::Member => format!("{}/{} in", a.count, x.samples_ns.len()),
            Kind::Breakdown { by, .. } => format!("by {by}, top-10 sum {}", a.count),
            Kind::Page { .. } => format!("{} ids, sum {}", a.count, a.checksum),
        };
        let mut row = format!("| {} | `{}` | {answer} |", x.query.id, x.query.text.replace('|', "\\|"));
        for p in &q.phases {
            let (p50, p99) = p50_p99_us(&p.queries[i].samples_ns);
            row.push_str(&format!(" {} / {} |", fmt_us(p50), fmt_us(p99)));
        }
        for pr in &peer_runs {
            row.push_str(&format!(
                " {} |",
                pr.queries.get(&x.query.id).map_or("-".into(), |y| fmt_us(y.p50_us))
            ));
        }
        let same = by_id(&x.query.id).map_or("-", |c| if c.agree() { "yes" } else { "**NO**" });
        row.push_str(&format!(" {same} |"));
        out(row);
    }
    out(String::new());
    if mismatches.is_empty() {
        let who: Vec<String> = std::iter::once("Cohort".to_string())
            .chain(peer_runs.iter().map(|p| p.name.to_string()))
            .collect();
        out(format!(
            "{} give the same answer to every query (and Cohort the same with every number of clients).",
            who.join(", ")
        ));
    } else {
        out("**Mismatches (bugs in an engine or in a translation):**".into());
        for m in &mismatches {
            out(format!("- {m}"));
        }
    }
    if !failures.is_empty() {
        out(String::new());
        out("**Failures during the run:**".into());
        for f in &failures {
            out(format!("- {f}"));
        }
    }

    println!();
    println!("== Cohort over gRPC ==");
    for l in &lines {
        println!("{l}");
    }
    for m in &mismatches {
        println!("!!! MISMATCH {m}");
    }

    if let Some(path) = &args.out_md {
        let now_wall = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        let mut md = format!(
            "\n## Over gRPC (issue 3) — {} profiles, {} shards — {}\n\n",
            args.profiles,
            args.shards,
            format_rfc3339_ms(now_wall)
        );
        for l in &lines {
            md.push_str(l);
            md.push('\n');
        }
        if !path.exists() {
            md.insert_str(0, "# Cohort benchmark results\n\nNewest last (see `bench/README.md`).\n");
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
    if !failures.is_empty() {
        std::process::exit(3);
    }
}
