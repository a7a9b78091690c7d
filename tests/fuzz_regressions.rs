//! The fuzz targets' kept inputs, replayed: every file of `fuzz/corpus/NAME/`
//! (the seeds) and of `fuzz/regressions/NAME/` (crash inputs the fuzzer
//! found, minimised, each named for what it broke) goes through the body of
//! target NAME in `cohort::fuzzing`, the same function the fuzzer runs. A
//! body panics when the code breaks its promise for that input, so each
//! regression file is a test that failed before its fix.
//!
//! `fuzz/pending/NAME/` holds crash inputs whose fix belongs to another
//! part of the work; `pending_inputs` (ignored) replays them, and once one
//! passes its file moves to `fuzz/regressions/NAME/`. Some abort the process
//! (an allocation failure is not a panic), so run it alone:
//! `cargo test --locked --test fuzz_regressions -- --ignored pending_inputs`.
//!
//! `write_fuzz_seeds` (ignored) rewrites the seeds from a small node run in
//! process; run it when a snapshot or log format changes:
//! `cargo test --locked --test fuzz_regressions -- --ignored write_fuzz_seeds`.

use std::path::{Path, PathBuf};

use cohort::fuzzing::{self, LogImage, Scratch};
use cohort::ingest::Source;
use cohort::node::{Node, NodeConfig};
use cohort::replication::driver::StateMachine;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files of `fuzz/corpus/NAME` and `fuzz/regressions/NAME`, sorted;
/// fails when there are none (a target must keep its seeds).
fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let out = files(target, &["corpus", "regressions"]);
    assert!(!out.is_empty(), "no seed or regression input for fuzz target {target}");
    out
}

/// The files of `fuzz/KIND/NAME` for each kind, sorted.
fn files(target: &str, kinds: &[&str]) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for kind in kinds {
        let dir = fuzz_dir().join(kind).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_file() {
                let bytes = std::fs::read(&path).unwrap();
                out.push((path, bytes));
            }
        }
    }
    out.sort();
    out
}

/// Runs every input of `target` through `body`, naming the file that panics.
fn replay(target: &str, body: impl FnMut(&[u8])) {
    replay_files(target, inputs(target), body);
}

/// Runs `inputs` through `body`, naming the file that panics.
fn replay_files(target: &str, inputs: Vec<(PathBuf, Vec<u8>)>, mut body: impl FnMut(&[u8])) {
    for (path, bytes) in inputs {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(&bytes)));
        assert!(outcome.is_ok(), "fuzz target {target} panics on {}", path.display());
    }
}

#[test]
fn segment_inputs() {
    replay("segment", fuzzing::segment);
}

#[test]
fn message_inputs() {
    replay("message", fuzzing::message);
}

#[test]
fn shard_snapshot_inputs() {
    let scratch = Scratch::new("shard").unwrap();
    replay("shard_snapshot", |data| fuzzing::shard_snapshot(scratch.path(), data));
}

#[test]
fn catalog_snapshot_inputs() {
    let scratch = Scratch::new("catalog").unwrap();
    replay("catalog_snapshot", |data| fuzzing::catalog_snapshot(scratch.path(), data));
}

#[test]
fn directory_image_inputs() {
    replay("directory_image", fuzzing::directory_image);
}

#[test]
fn raft_log_inputs() {
    let base = LogImage::load(&fuzz_dir().join("seeds/raft-log")).unwrap();
    let scratch = Scratch::new("raft").unwrap();
    replay("raft_log", |data| fuzzing::raft_log(&base, scratch.path(), data));
}

/// Crash inputs waiting for a fix elsewhere (see the module comment).
#[test]
#[ignore = "inputs whose fix is pending; some abort the process"]
fn pending_inputs() {
    let scratch = Scratch::new("pending").unwrap();
    let base = LogImage::load(&fuzz_dir().join("seeds/raft-log")).unwrap();
    replay_files("segment", files("segment", &["pending"]), fuzzing::segment);
    replay_files("message", files("message", &["pending"]), fuzzing::message);
    replay_files("shard_snapshot", files("shard_snapshot", &["pending"]), |d| {
        fuzzing::shard_snapshot(scratch.path(), d)
    });
    replay_files("catalog_snapshot", files("catalog_snapshot", &["pending"]), |d| {
        fuzzing::catalog_snapshot(scratch.path(), d)
    });
    replay_files("directory_image", files("directory_image", &["pending"]), fuzzing::directory_image);
    replay_files("raft_log", files("raft_log", &["pending"]), |d| {
        fuzzing::raft_log(&base, scratch.path(), d)
    });
}

/// The seeds the fuzzer starts from are valid: the snapshots load, the
/// directory decodes, the undamaged log opens with its groups. A format
/// change that makes them stale fails here (rewrite them with
/// `write_fuzz_seeds`), rather than leaving the fuzzer to start from
/// inputs that every loader refuses at the first byte.
#[test]
fn seeds_are_valid() {
    let corpus = fuzz_dir().join("corpus");
    let scratch = Scratch::new("seeds").unwrap();
    let shard = std::fs::read(corpus.join("shard_snapshot/seed-shard-000")).unwrap();
    std::fs::write(scratch.path().join("shard-000.snap"), &shard[1..]).unwrap();
    let machine = cohort::replication::shard_machine::ShardMachine::open(scratch.path(), 0).unwrap();
    assert!(machine.read_state().shard.len() > 5, "the shard seed holds too few profiles");
    let catalog = std::fs::read(corpus.join("catalog_snapshot/seed-catalog")).unwrap();
    std::fs::write(scratch.path().join("catalog.snap"), &catalog[1..]).unwrap();
    let machine = cohort::cluster::catalog::CatalogMachine::open(scratch.path(), 2, 24).unwrap();
    assert!(machine.state.read().segments.len() >= 2, "the catalog seed holds no saved segments");
    let dir = std::fs::read(corpus.join("directory_image/seed-directory")).unwrap();
    let dir = cohort::identity::directory::Directory::decode(&dir[1..]).unwrap();
    assert!(dir.profiles() > 5, "the directory seed holds too few profiles");
    let log = LogImage::load(&fuzz_dir().join("seeds/raft-log")).unwrap();
    let at = scratch.path().join("raft");
    std::fs::create_dir_all(&at).unwrap();
    for (name, bytes) in &log.files {
        std::fs::write(at.join(name), bytes).unwrap();
    }
    let store = cohort::replication::storage::LogStore::open(&at).unwrap();
    assert_eq!(store.groups(), vec![1, 2, 3], "the log seed holds the catalog group and two shard groups");
}

/// Messages of every type, with traits and properties of every type, an
/// alias that merges two profiles and a resent message.
fn seed_messages() -> Vec<String> {
    let mut out = Vec::new();
    for i in 0..24 {
        let country = ["FR", "DE", "US", "BE"][i % 4];
        out.push(format!(
            r#"{{"type":"identify","userId":"u{i}","anonymousId":"a{i}","messageId":"id-{i}","timestamp":"2026-03-0{}T10:00:00Z","traits":{{"country":"{country}","plan":"{}","email":"p{i}@example.com","age":{},"vip":{},"signup":"2025-0{}-01T00:00:00Z","tags":["t{}","x"],"address":{{"city":"Lyon","zip":"6900{}"}}}}}}"#,
            1 + i % 9,
            ["free", "pro"][i % 2],
            20 + i,
            i % 3 == 0,
            1 + i % 9,
            i % 3,
            i % 10
        ));
        out.push(format!(
            r#"{{"type":"track","userId":"u{i}","event":"purchase","messageId":"p-{i}","timestamp":"2026-03-1{}T08:00:00Z","properties":{{"amount":{},"category":"{}","gift":{},"labels":["sale"],"item":{{"sku":"s{i}"}}}}}}"#,
            i % 5,
            10 * i + 5,
            ["shoes", "books"][i % 2],
            i % 2 == 0
        ));
    }
    out.push(r#"{"type":"page","anonymousId":"anon-x","name":"Pricing","category":"docs","properties":{"path":"/pricing"},"sentAt":"2026-03-10T00:00:10Z","originalTimestamp":"2026-03-10T00:00:04Z"}"#.into());
    out.push(r#"{"type":"screen","anonymousId":"anon-x","name":"Home"}"#.into());
    out.push(r#"{"type":"group","userId":"u1","groupId":"acme","traits":{"size":3}}"#.into());
    out.push(r#"{"type":"alias","userId":"u2","previousId":"anon-x"}"#.into());
    out.push(
        r#"{"type":"identify","userId":"u3","traits":{"plan":null},"context":{"traits":{"country":"IT"}}}"#
            .into(),
    );
    out.push(r#"{"type":"identify","userId":"u0","anonymousId":"a0","messageId":"id-0"}"#.into());
    out
}

/// Rewrites the seeds under `fuzz/`: a node with 2 shards takes a schema,
/// the messages above and two saved segments, snapshotting every 8 entries
/// so its log holds snapshot metadata and a compacted prefix; then its
/// snapshots, its directory image and its raft log are copied out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes the fuzz seeds into the source tree; run by hand"]
async fn write_fuzz_seeds() {
    let dir = tempfile::tempdir().unwrap();
    let config = NodeConfig {
        data_dir: dir.path().to_path_buf(),
        shards: 2,
        snapshot_entries: 8,
        query_threads: 1,
        ..NodeConfig::default()
    };
    let node = Node::open(config).await.unwrap();
    node.apply_schema(r#"{"traits":{"signup":"timestamp","email":"text","country":"keyword"}}"#.into())
        .await
        .unwrap();
    let messages = seed_messages();
    for chunk in messages.chunks(5) {
        node.ingest_text(chunk.to_vec(), fuzzing::NOW_MS, Source::Grpc).await.unwrap();
    }
    let segments = [
        ("buyers", r#"DID "purchase" WHERE amount > 50 AT LEAST 1 TIMES IN LAST 90 DAYS"#),
        ("fr_buyers", r#"IN SEGMENT "buyers" AND country = "FR""#),
    ];
    for (name, text) in segments {
        node.create_segment(name.into(), text.into(), "seed".into(), fuzzing::NOW_MS).await.unwrap();
    }
    // A last batch after the segments, so the log ends with entries that no
    // snapshot covers.
    node.ingest_text(messages[..3].to_vec(), fuzzing::NOW_MS, Source::Grpc).await.unwrap();
    // The log is copied once the driver has stopped (and released it),
    // before the snapshots below, which would let it be compacted.
    node.driver.stop();
    let fuzz = fuzz_dir();
    let log = fuzz.join("seeds/raft-log");
    if log.exists() {
        std::fs::remove_dir_all(&log).unwrap();
    }
    std::fs::create_dir_all(&log).unwrap();
    for (name, bytes) in LogImage::load(&dir.path().join("raft")).unwrap().files {
        std::fs::write(log.join(name), bytes).unwrap();
    }
    node.catalog.snapshot().unwrap();
    for shard in node.shards.iter() {
        shard.snapshot().unwrap();
    }
    let directory = node.catalog.state.read().directory.encode();

    let with_mode = |mode: u8, bytes: &[u8]| [&[mode][..], bytes].concat();
    let write = |target: &str, name: &str, bytes: &[u8]| {
        let at = fuzz.join("corpus").join(target);
        std::fs::create_dir_all(&at).unwrap();
        std::fs::write(at.join(name), bytes).unwrap();
    };
    let snapshots = dir.path().join("snapshots");
    let shard = std::fs::read(snapshots.join("shard-000.snap")).unwrap();
    write("shard_snapshot", "seed-shard-000", &with_mode(0, &shard));
    write("shard_snapshot", "seed-shard-000-fixed", &with_mode(1, &shard));
    let catalog = std::fs::read(snapshots.join("catalog.snap")).unwrap();
    write("catalog_snapshot", "seed-catalog", &with_mode(0, &catalog));
    write("catalog_snapshot", "seed-catalog-fixed", &with_mode(1, &catalog));
    write("directory_image", "seed-directory", &with_mode(0, &directory));
    write("directory_image", "seed-directory-fixed", &with_mode(1, &directory));
    for (i, text) in messages.iter().enumerate().step_by(7) {
        write("message", &format!("seed-node-{i}"), text.as_bytes());
    }
}
