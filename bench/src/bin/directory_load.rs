//! `directory_load`: times the identity directory's snapshot round trip at
//! scale, the part of a node's restart that rebuilds identifier → profile.
//!
//! It builds a directory the way ingest does (one message `[userId,
//! anonymousId]` per profile, identifiers shaped like the generated
//! dataset's: `u{index}` and 16 hex digits), adds a few thousand merges so
//! that merged-away profiles exist (half "identify after browsing" aliases
//! that merge an anonymous profile into a user's, half anonymous-anonymous
//! merges), then times `encode`, `decode` (best of `--repeats`), `validate`,
//! a million `lookup`s of known and of unknown identifiers, and a million
//! `resolve`s of known `[userId, anonymousId]` pairs (the common ingest
//! case). Creation throughput is the build phase's own rate. Run it in
//! release mode:
//!
//! ```text
//! cargo run --release -p cohort-bench --bin directory_load -- --profiles 10000000
//! ```
#![allow(clippy::print_stdout)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use clap::Parser;
use cohort::identity::Directory;
use cohort::model::IdentifierKind;
use cohort_bench::sysinfo;

/// Times the identity directory's encode, decode, lookup and resolve.
#[derive(Parser, Debug)]
#[command(about)]
struct Args {
    /// Profiles created, each with a user id and an anonymous id.
    #[arg(long, default_value_t = 10_000_000)]
    profiles: u64,
    /// Merges added after the profiles (each merge first creates the
    /// profile it merges away).
    #[arg(long, default_value_t = 5_000)]
    merges: u64,
    /// Lookups and resolves timed, of each kind.
    #[arg(long, default_value_t = 1_000_000)]
    operations: u64,
    /// Encode and decode runs; the best is reported.
    #[arg(long, default_value_t = 3)]
    repeats: u32,
}

/// splitmix64: a small deterministic generator, so that runs are
/// comparable.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

type Message = Vec<(IdentifierKind, String)>;

/// The identifiers of dataset profile `index`, as the generator shapes
/// them: the anonymous id is 16 hex digits derived from the index.
fn profile_message(index: u64) -> Message {
    let anonymous = SplitMix(index ^ 0x5eed_0000_0000_0000).next();
    vec![
        (IdentifierKind::UserId, format!("u{index}")),
        (IdentifierKind::AnonymousId, format!("{anonymous:016x}")),
    ]
}

fn anonymous(value: String) -> Message {
    vec![(IdentifierKind::AnonymousId, value)]
}

fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn per_second(count: u64, d: Duration) -> f64 {
    count as f64 / d.as_secs_f64()
}

fn main() {
    let args = Args::parse();
    println!(
        "directory_load: {} profiles, {} merges, {} operations, best of {}; {} ({} cpus)",
        args.profiles,
        args.merges,
        args.operations,
        args.repeats,
        sysinfo::cpu_model(),
        sysinfo::cpus()
    );

    // Build, in chunks so that message strings are made outside the timing.
    const CHUNK: u64 = 1 << 20;
    let mut dir = Directory::new();
    let mut creating = Duration::ZERO;
    let mut start = 0;
    while start < args.profiles {
        let end = (start + CHUNK).min(args.profiles);
        let messages: Vec<Message> = (start..end).map(profile_message).collect();
        let began = Instant::now();
        for m in &messages {
            let r = dir.resolve(m).expect("non-empty message");
            debug_assert!(r.created);
        }
        creating += began.elapsed();
        start = end;
    }
    println!(
        "build: resolve creating [userId, anonymousId] profiles: {:.2} s, {:.0} resolves/s",
        seconds(creating),
        per_second(args.profiles, creating)
    );

    // Merges: an anonymous profile then an alias or a second anonymous
    // profile that links to it.
    let mut rng = SplitMix(42);
    let mut merged = 0u64;
    for j in 0..args.merges {
        let first = format!("m{j}");
        dir.resolve(&anonymous(first.clone())).expect("non-empty message");
        let linking = if j % 2 == 0 && args.profiles > 0 {
            // Identify after browsing: the user's profile absorbs it.
            let user = rng.next() % args.profiles;
            vec![(IdentifierKind::UserId, format!("u{user}")), (IdentifierKind::AnonymousId, first)]
        } else {
            let second = format!("n{j}");
            dir.resolve(&anonymous(second.clone())).expect("non-empty message");
            vec![(IdentifierKind::AnonymousId, second), (IdentifierKind::AnonymousId, first)]
        };
        merged += dir.resolve(&linking).expect("non-empty message").merged.len() as u64;
    }
    let identifiers = dir.identifiers();
    let heap = dir.heap_bytes();
    println!(
        "state: {} live profiles, {} ids allocated, {} identifiers, {} merges; heap {:.1} MiB = {:.1} bytes/identifier; RSS {:.1} MiB",
        dir.profiles(),
        dir.next_profile() - 1,
        identifiers,
        merged,
        heap as f64 / (1 << 20) as f64,
        heap as f64 / identifiers.max(1) as f64,
        sysinfo::rss_bytes() as f64 / (1 << 20) as f64
    );

    let mut best_encode = Duration::MAX;
    let mut bytes = Vec::new();
    for _ in 0..args.repeats.max(1) {
        drop(std::mem::take(&mut bytes));
        let began = Instant::now();
        bytes = dir.encode();
        best_encode = best_encode.min(began.elapsed());
    }
    println!(
        "encode: {:.3} s (best), {:.1} MiB",
        seconds(best_encode),
        bytes.len() as f64 / (1 << 20) as f64
    );

    let mut best_decode = Duration::MAX;
    let mut decode_runs = Vec::new();
    let mut decoded = None;
    for _ in 0..args.repeats.max(1) {
        drop(decoded.take());
        let began = Instant::now();
        let back = Directory::decode(&bytes).expect("the encoded directory decodes");
        let took = began.elapsed();
        decode_runs.push(format!("{:.3}", seconds(took)));
        best_decode = best_decode.min(took);
        decoded = Some(back);
    }
    let decoded = decoded.expect("at least one decode ran");
    println!("decode: {:.3} s (best; runs {} s)", seconds(best_decode), decode_runs.join(", "));
    let began = Instant::now();
    decoded.validate().expect("the decoded directory is valid");
    println!("validate: {:.3} s", seconds(began.elapsed()));
    assert_eq!(decoded.identifiers(), identifiers);
    assert_eq!(decoded.profiles(), dir.profiles());
    let began = Instant::now();
    let again = decoded.encode();
    println!("encode (the decoded copy, no merge since): {:.3} s", seconds(began.elapsed()));
    assert!(again == bytes, "decode then encode gives the same bytes");
    drop(again);
    let decoded_heap = decoded.heap_bytes();
    println!(
        "decoded: heap {:.1} MiB = {:.1} bytes/identifier",
        decoded_heap as f64 / (1 << 20) as f64,
        decoded_heap as f64 / identifiers.max(1) as f64
    );
    drop(decoded);
    drop(bytes);

    // Lookups and resolves of random known profiles, strings made first.
    let operations = if args.profiles == 0 { 0 } else { args.operations };
    let mut rng = SplitMix(7);
    let known: Vec<Message> = (0..operations).map(|_| profile_message(rng.next() % args.profiles)).collect();
    let began = Instant::now();
    let mut found = 0u64;
    for (i, m) in known.iter().enumerate() {
        let (kind, value) = &m[i % 2];
        found += u64::from(black_box(dir.lookup(*kind, value)).is_some());
    }
    let took = began.elapsed();
    assert_eq!(found, operations, "every known identifier is found");
    println!("lookup (known): {:.0} lookups/s", per_second(operations, took));

    let unknown: Vec<String> = (0..operations).map(|i| format!("absent-{i}")).collect();
    let began = Instant::now();
    let mut found = 0u64;
    for value in &unknown {
        found += u64::from(black_box(dir.lookup(IdentifierKind::AnonymousId, value)).is_some());
    }
    let took = began.elapsed();
    assert_eq!(found, 0, "no unknown identifier is found");
    println!("lookup (unknown): {:.0} lookups/s", per_second(operations, took));

    let began = Instant::now();
    for m in &known {
        let r = dir.resolve(m).expect("non-empty message");
        debug_assert!(!r.created && r.merged.is_empty());
        black_box(r);
    }
    let took = began.elapsed();
    println!("resolve (known [userId, anonymousId]): {:.0} resolves/s", per_second(operations, took));
    println!("peak RSS {:.1} MiB", sysinfo::peak_rss_bytes() as f64 / (1 << 20) as f64);
}
