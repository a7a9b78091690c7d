//! A node starts whole or not at all: every way issue 12 found to damage a
//! data directory (a snapshot removed, the snapshots folder removed, the
//! raft log flipped, truncated, emptied or removed, an older snapshot put
//! back) makes `Node::open` refuse with a message naming the file, and
//! `cohort check-data` report the same without starting. A torn last
//! record is cut with a warning and nothing acknowledged is lost; a fresh
//! directory is the only one that starts empty.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cohort::ingest::Source;
use cohort::node::{check_data_dir, Node, NodeConfig};
use cohort::replication::manifest::Manifest;

fn config(dir: &Path, snapshot_entries: u64) -> NodeConfig {
    NodeConfig {
        data_dir: dir.to_path_buf(),
        shards: 4,
        snapshot_entries,
        query_threads: 2,
        ..NodeConfig::default()
    }
}

fn msgs(range: std::ops::Range<u32>) -> Vec<String> {
    range
        .map(|i| {
            format!(
                r#"{{"type":"identify","userId":"u{i}","messageId":"m{i}","timestamp":"2026-01-01T00:00:00Z","traits":{{"country":"{}","age":{}}}}}"#,
                ["FR", "DE", "US"][i as usize % 3],
                i % 90
            )
        })
        .collect()
}

/// Loads 2,000 users in 20 batches, waits until the manifest records the
/// applied indexes (observed, not slept for), then stops: gracefully
/// (snapshots written) or by dropping the node (as a kill -9 leaves it:
/// the log holds what the snapshots do not).
async fn loaded_dir(dir: &Path, snapshot_entries: u64, graceful: bool) {
    let node = Node::open(config(dir, snapshot_entries)).await.unwrap();
    for chunk in 0..20 {
        let r = node.ingest_text(msgs(chunk * 100..(chunk + 1) * 100), 1, Source::Grpc).await.unwrap();
        assert_eq!(r.applied, 100);
    }
    let catalog_applied = node.driver.status().iter().find(|g| g.id == 1).map(|g| g.applied).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let recorded = Manifest::read(dir).unwrap().unwrap().groups.get(&1).map_or(0, |g| g.applied_index);
        if recorded >= catalog_applied {
            break;
        }
        assert!(Instant::now() < deadline, "the manifest never recorded applied index {catalog_applied}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if graceful {
        let checkpoint = node.shutdown();
        assert!(checkpoint.failed.is_empty(), "{checkpoint:?}");
    } else {
        node.driver.stop();
    }
}

async fn open_err(dir: &Path) -> String {
    match Node::open(config(dir, 5)).await {
        Ok(node) => {
            let profiles: u64 = node.shards.iter().map(|s| s.read_state().shard.len()).sum();
            panic!("the node started on a damaged directory, with {profiles} profiles")
        }
        Err(e) => e.to_string(),
    }
}

fn log_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir.join("raft"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "raftlog"))
        .collect();
    files.sort();
    files
}

/// Both the open and `cohort check-data` refuse, naming `needle`.
async fn refused(dir: &Path, needle: &str) -> String {
    let checked = check_data_dir(dir).expect_err("check-data found no problem").to_string();
    assert!(checked.contains(needle), "check-data: {checked}");
    let e = open_err(dir).await;
    assert!(e.contains(needle), "{e}");
    e
}

async fn users(dir: &Path) -> u64 {
    let node = Node::open(config(dir, 5)).await.unwrap();
    let n = node.planner.count(&["user_id EXISTS".to_string()], 0, None).unwrap().0[0];
    node.driver.stop();
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_catalog_snapshot_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    loaded_dir(dir.path(), 5, true).await;
    std::fs::remove_file(dir.path().join("snapshots/catalog.snap")).unwrap();
    let e = refused(dir.path(), "catalog.snap").await;
    assert!(e.contains("is missing") && e.contains("group 1 (catalog)"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_shard_snapshot_or_folder_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    loaded_dir(dir.path(), 5, true).await;
    let backup = tempfile::tempdir().unwrap();
    let shard = dir.path().join("snapshots/shard-001.snap");
    std::fs::copy(&shard, backup.path().join("s")).unwrap();
    std::fs::remove_file(&shard).unwrap();
    let e = refused(dir.path(), "shard-001.snap").await;
    assert!(e.contains("shard 1"), "{e}");
    std::fs::copy(backup.path().join("s"), &shard).unwrap();
    assert_eq!(users(dir.path()).await, 2000, "put back, the directory is whole again");

    std::fs::remove_dir_all(dir.path().join("snapshots")).unwrap();
    let e = refused(dir.path(), "catalog.snap").await;
    for s in 0..4 {
        assert!(e.contains(&format!("shard-{s:03}.snap")), "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_snapshot_put_back_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::open(config(dir.path(), 2)).await.unwrap();
    node.ingest_text(msgs(0..100), 1, Source::Grpc).await.unwrap();
    node.ingest_text(msgs(100..200), 1, Source::Grpc).await.unwrap();
    node.ingest_text(msgs(200..300), 1, Source::Grpc).await.unwrap();
    assert!(node.shutdown().failed.is_empty());
    let old = std::fs::read(dir.path().join("snapshots/catalog.snap")).unwrap();
    let node = Node::open(config(dir.path(), 2)).await.unwrap();
    for chunk in 3..10 {
        node.ingest_text(msgs(chunk * 100..(chunk + 1) * 100), 1, Source::Grpc).await.unwrap();
    }
    assert!(node.shutdown().failed.is_empty());
    drop(node);
    std::fs::write(dir.path().join("snapshots/catalog.snap"), old).unwrap();
    let e = refused(dir.path(), "catalog.snap").await;
    assert!(e.contains("older than the index"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raft_log_damaged_near_its_start_refuses_to_start_naming_file_and_offset() {
    for offset in [0usize, 10, 60, 70, 100, 300, 500] {
        let dir = tempfile::tempdir().unwrap();
        loaded_dir(dir.path(), 1_000_000, false).await;
        let file = log_files(dir.path()).remove(0);
        let mut bytes = std::fs::read(&file).unwrap();
        bytes[offset] ^= 0x20;
        std::fs::write(&file, bytes).unwrap();
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let e = refused(dir.path(), &name).await;
        assert!(e.contains("damaged at byte"), "flip at {offset}: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_byte_flipped_deep_in_the_raft_log_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    loaded_dir(dir.path(), 1_000_000, false).await;
    let file = log_files(dir.path()).remove(0);
    let bytes = std::fs::read(&file).unwrap();
    let end = bytes.iter().rposition(|&b| b != 0).unwrap();
    for at in [end / 3, end / 2, 2 * end / 3] {
        let mut damaged = bytes.clone();
        damaged[at] ^= 0x01;
        std::fs::write(&file, &damaged).unwrap();
        let e = refused(dir.path(), &file.file_name().unwrap().to_string_lossy()).await;
        assert!(e.contains("damaged at byte") && e.contains("checksum"), "flip at {at}: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_emptied_or_removed_raft_log_refuses_to_start() {
    for damage in ["half", "empty", "folder"] {
        let dir = tempfile::tempdir().unwrap();
        loaded_dir(dir.path(), 1_000_000, false).await;
        let file = log_files(dir.path()).remove(0);
        match damage {
            "half" => {
                let bytes = std::fs::read(&file).unwrap();
                let end = bytes.iter().rposition(|&b| b != 0).unwrap();
                std::fs::write(&file, &bytes[..end / 2]).unwrap();
            }
            "empty" => std::fs::write(&file, b"").unwrap(),
            _ => std::fs::remove_dir_all(dir.path().join("raft")).unwrap(),
        }
        let e = open_err(dir.path()).await;
        assert!(e.contains("are missing") || e.contains("holds no log files"), "{damage}: {e}");
        let checked = check_data_dir(dir.path());
        assert!(
            checked.is_err() || checked.as_ref().is_ok_and(|r| r.contains("torn")),
            "{damage}: {checked:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_last_record_is_cut_and_nothing_acknowledged_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    loaded_dir(dir.path(), 1_000_000, false).await;
    let file = log_files(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&file).unwrap();
    let end = bytes.iter().rposition(|&b| b != 0).unwrap() + 1;
    // A write cut short: the first half of the file's first record (after
    // the 69-byte file header), written again where the next record goes.
    let first_len = (u64::from_be_bytes(bytes[69..77].try_into().unwrap()) >> 8) as usize;
    let torn: Vec<u8> = bytes[69..69 + first_len / 2].to_vec();
    bytes.truncate(end);
    bytes.extend_from_slice(&torn);
    std::fs::write(&file, &bytes).unwrap();
    let report = check_data_dir(dir.path()).unwrap();
    assert!(report.contains("torn last record"), "{report}");
    assert_eq!(users(dir.path()).await, 2000);
    // The cut was made once; the directory is clean now.
    let report = check_data_dir(dir.path()).unwrap();
    assert!(report.contains("no problem found"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_fresh_directory_starts_empty() {
    let dir = tempfile::tempdir().unwrap();
    assert!(check_data_dir(dir.path()).unwrap().contains("new, empty"));
    assert_eq!(users(dir.path()).await, 0);
    loaded_dir(dir.path(), 5, true).await;
    assert!(check_data_dir(dir.path()).unwrap().contains("no problem found"));
    assert_eq!(users(dir.path()).await, 2000);
    // Manifest and meta file removed too: the log and snapshots still say
    // this is not a new directory.
    std::fs::remove_file(dir.path().join("MANIFEST.json")).unwrap();
    let e = refused(dir.path(), "MANIFEST.json").await;
    assert!(e.contains("is missing"), "{e}");
    std::fs::remove_file(dir.path().join("cohort-node.json")).unwrap();
    refused(dir.path(), "cohort-node.json").await;
}

/// Writes an entry no build can decode at the end of `group`'s log, as
/// committed.
fn append_undecodable(dir: &Path, group: u64) -> u64 {
    use cohort::replication::storage::LogStore;
    let store = LogStore::open(&dir.join("raft")).unwrap();
    let g = store.group(group).unwrap();
    let last = raft::Storage::last_index(&g).unwrap();
    let term = raft::Storage::term(&g, last).unwrap();
    let mut batch = raft_engine::LogBatch::default();
    let entry =
        raft::eraftpb::Entry { index: last + 1, term, data: vec![0xff; 9].into(), ..Default::default() };
    g.append(&mut batch, &[entry]).unwrap();
    let mut hs = g.hard_state();
    hs.commit = last + 1;
    g.set_hard_state(&mut batch, &hs).unwrap();
    store.write(&mut batch, true).unwrap();
    last + 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_entry_stops_its_group_naming_it_instead_of_being_skipped() {
    for (group, name) in [(2u64, "shard 0"), (1, "catalog")] {
        let dir = tempfile::tempdir().unwrap();
        loaded_dir(dir.path(), 1_000_000, true).await;
        let index = append_undecodable(dir.path(), group);
        let e = open_err(dir.path()).await;
        assert!(e.contains(&format!("group {group} ({name}) stopped at entry {index}")), "{e}");
        assert!(e.contains("cannot decode"), "{e}");
    }
}
