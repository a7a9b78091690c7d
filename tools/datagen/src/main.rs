//! `cohort-datagen`: writes Cohort's deterministic synthetic dataset as
//! Segment Spec NDJSON (a file, stdout, or gzip) or as CSV for DuckDB.
//!
//! The output depends only on `--seed`, `--profiles` and `--now`, never on
//! `--threads` or the wall clock. A summary goes to stderr at the end.

#![allow(clippy::print_stdout)]

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, ValueEnum};
use cohort_datagen::pipeline::{self, Chunk, Format};
use cohort_datagen::{parse_rfc3339_ms, Config, EVENTS_CSV_HEADER, PROFILES_CSV_HEADER};
use flate2::write::GzEncoder;
use flate2::Compression;

/// Output format of the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum FormatArg {
    /// Segment Spec messages, one per line.
    Ndjson,
    /// profiles.csv and events.csv in the --out directory.
    Csv,
}

/// Generates Cohort's deterministic synthetic profiles and events.
#[derive(Debug, Parser)]
#[command(name = "cohort-datagen", version)]
struct Args {
    /// Seed of every random choice.
    #[arg(long, default_value_t = cohort_datagen::DEFAULT_SEED)]
    seed: u64,
    /// Number of profiles (each has 10 to 20 events).
    #[arg(long, default_value_t = 100_000)]
    profiles: u64,
    /// The fixed instant the data is generated as of (RFC 3339, or epoch ms).
    #[arg(long, default_value = "2026-11-01T00:00:00Z", value_parser = parse_rfc3339_ms)]
    now: i64,
    /// Output format.
    #[arg(long, value_enum, default_value_t = FormatArg::Ndjson)]
    format: FormatArg,
    /// ndjson: a file (`-` for stdout; a `.gz` suffix compresses);
    /// csv: a directory that receives profiles.csv and events.csv.
    #[arg(long, default_value = "-")]
    out: String,
    /// Generator threads (default: available parallelism).
    #[arg(long)]
    threads: Option<usize>,
    /// Profiles per chunk of work.
    #[arg(long, default_value_t = pipeline::DEFAULT_CHUNK_PROFILES, hide = true)]
    chunk: u64,
}

/// Where NDJSON goes: kept as an enum so a gzip stream is finished
/// explicitly and its errors reported (dropping the encoder would hide them).
enum Output {
    Plain(Box<dyn Write>),
    Gzip(GzEncoder<BufWriter<File>>),
}

impl Output {
    fn open(out: &str) -> io::Result<Self> {
        if out == "-" {
            let stdout = BufWriter::with_capacity(1 << 20, io::stdout().lock());
            return Ok(Self::Plain(Box::new(stdout)));
        }
        let file = File::create(out).map_err(|e| io::Error::new(e.kind(), format!("{out}: {e}")))?;
        if out.ends_with(".gz") {
            // Level 1: compression is the bottleneck even at this level.
            let buffered = BufWriter::with_capacity(1 << 20, file);
            Ok(Self::Gzip(GzEncoder::new(buffered, Compression::fast())))
        } else {
            // Chunks are megabytes: written straight to the file.
            Ok(Self::Plain(Box::new(file)))
        }
    }

    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Self::Plain(w) => w.write_all(bytes),
            Self::Gzip(w) => w.write_all(bytes),
        }
    }

    fn finish(self) -> io::Result<()> {
        match self {
            Self::Plain(mut w) => w.flush(),
            Self::Gzip(w) => w.finish()?.flush(),
        }
    }
}

fn create(path: &PathBuf) -> io::Result<File> {
    File::create(path).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

fn run(args: &Args) -> io::Result<()> {
    let cfg = Config { seed: args.seed, profiles: args.profiles, now_ms: args.now };
    let threads =
        args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())).max(1);
    let start = Instant::now();
    let (mut messages, mut bytes) = (0u64, 0u64);

    match args.format {
        FormatArg::Ndjson => {
            let mut w = Output::open(&args.out)?;
            pipeline::generate(&cfg, Format::Ndjson, threads, args.chunk, |c: &Chunk| {
                messages += c.messages;
                bytes += c.main.len() as u64;
                w.write_all(&c.main)
            })?;
            w.finish()?;
        }
        FormatArg::Csv => {
            let dir = PathBuf::from(&args.out);
            fs::create_dir_all(&dir)?;
            let mut profiles = create(&dir.join("profiles.csv"))?;
            let mut events = create(&dir.join("events.csv"))?;
            profiles.write_all(PROFILES_CSV_HEADER.as_bytes())?;
            events.write_all(EVENTS_CSV_HEADER.as_bytes())?;
            bytes += (PROFILES_CSV_HEADER.len() + EVENTS_CSV_HEADER.len()) as u64;
            pipeline::generate(&cfg, Format::Csv, threads, args.chunk, |c: &Chunk| {
                messages += c.messages;
                bytes += (c.main.len() + c.events.len()) as u64;
                profiles.write_all(&c.main)?;
                events.write_all(&c.events)
            })?;
        }
    }

    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "profiles {}  messages {}  bytes {}  seconds {:.3}  messages/s {:.0}  (threads {})",
        cfg.profiles,
        messages,
        bytes,
        secs,
        messages as f64 / secs.max(1e-9),
        threads
    );
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        // A closed pipe (`| head`) is a normal way to stop reading.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cohort-datagen: {e}");
            ExitCode::FAILURE
        }
    }
}
