//! The peers: DuckDB (`duckdb_mix.py`) and ClickHouse through chdb
//! (`chdb_mix.py`), over the same dataset, as Python child processes that
//! print one JSON line per query.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use cohort_datagen::pipeline::{generate, Format};
use cohort_datagen::{Config, EVENTS_CSV_HEADER, PROFILES_CSV_HEADER};
use serde_json::{json, Value as Json};

use crate::mix::{Answer, QueryStats};

/// Writes `profiles.csv` and `events.csv` of the dataset into `dir` unless a
/// complete earlier write of the same dataset is there. The folder and its
/// `dataset.txt` marker are the ones `cohort-bench --duckdb` writes, so the
/// two benchmarks share the files.
pub fn ensure_csv(cfg: &Config, dir: &Path, threads: usize) -> std::io::Result<f64> {
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

/// One query's figures from a peer.
#[derive(Clone, Debug, Default)]
pub struct PeerQuery {
    /// Its answer.
    pub answer: Answer,
    /// p50, microseconds.
    pub p50_us: f64,
    /// Every recorded run, microseconds.
    pub samples_us: Vec<f64>,
}

/// A peer's run.
#[derive(Clone, Debug)]
pub struct PeerRun {
    /// `DuckDB` or `chdb`.
    pub name: &'static str,
    /// By query id.
    pub queries: HashMap<String, PeerQuery>,
    /// Its `{"kind": "info"}` line.
    pub info: Json,
}

/// How to run a peer.
pub struct PeerArgs<'a> {
    /// Interpreter.
    pub python: &'a str,
    /// Script.
    pub script: &'a Path,
    /// CSV/Parquet folder.
    pub data_dir: &'a Path,
    /// `now`, epoch ms.
    pub now_ms: i64,
    /// Recorded runs per count query.
    pub iterations: usize,
    /// Recorded membership checks per query.
    pub member_runs: usize,
    /// Dataset size.
    pub profiles: u64,
    /// Cohort's shard count (members page order).
    pub shards: u32,
    /// Engine threads.
    pub threads: usize,
    /// Extra arguments.
    pub extra: Vec<String>,
}

/// Writes Cohort's answers where the peers read them (`--expect`).
pub fn write_expect(dir: &Path, queries: &[QueryStats]) -> std::io::Result<PathBuf> {
    let expect: serde_json::Map<String, Json> = queries
        .iter()
        .map(|q| {
            let a = &q.answer;
            (q.query.id.clone(), json!({"count": a.count, "checksum": a.checksum, "detail": a.detail}))
        })
        .collect();
    let path = dir.join("cohort_grpc_expect.json");
    fs::write(&path, Json::Object(expect).to_string())?;
    Ok(path)
}

/// Runs a peer's script and reads its JSON lines.
pub fn run_peer(name: &'static str, a: &PeerArgs<'_>, expect: &Path) -> Result<PeerRun, String> {
    let mut cmd = Command::new(a.python);
    cmd.arg(a.script)
        .arg("--data-dir")
        .arg(a.data_dir)
        .args(["--now-ms", &a.now_ms.to_string()])
        .args(["--iterations", &a.iterations.to_string()])
        .args(["--member-runs", &a.member_runs.to_string()])
        .args(["--profiles", &a.profiles.to_string()])
        .args(["--shards", &a.shards.to_string()])
        .args(["--threads", &a.threads.to_string()])
        .arg("--expect")
        .arg(expect)
        .args(&a.extra)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    eprintln!("{name}: {cmd:?}");
    let out = cmd.output().map_err(|e| format!("running {}: {e}", a.python))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!("{} failed ({}): {stdout}", a.script.display(), out.status));
    }
    let mut run = PeerRun { name, queries: HashMap::new(), info: Json::Null };
    for line in stdout.lines() {
        let Ok(v) = serde_json::from_str::<Json>(line) else {
            eprintln!("{name}: {line}");
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
            PeerQuery {
                answer: Answer {
                    count: v.get("count").and_then(Json::as_u64).unwrap_or(u64::MAX),
                    checksum: v.get("checksum").and_then(Json::as_u64).unwrap_or(0),
                    detail: v.get("detail").and_then(Json::as_str).unwrap_or_default().to_string(),
                },
                p50_us: num("p50_us"),
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
