//! A nearly full disk: writes are refused before the log meets it, and are
//! taken again as soon as space is freed, with no restart; nothing
//! acknowledged is lost, and a restart on that disk opens with less free
//! space than its catalog's snapshot. With the guard off, a write that
//! meets the full disk at a log file switch leaves a torn tail across two
//! files, which the next start cuts (raft-engine refused to open it).
//!
//! The data directory is on a small tmpfs the test mounts (as root, which
//! the project's machines and CI are); where mounting is not allowed the
//! test says so on stderr and does nothing else.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::Server;
use tonic::Code;

/// A tmpfs mounted for the test, unmounted when dropped.
struct SmallDisk {
    path: PathBuf,
    _parent: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(mib: u64) -> Option<SmallDisk> {
        let parent = tempfile::tempdir().unwrap();
        let path = parent.path().join("disk");
        std::fs::create_dir(&path).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(&path)
            .output()
            .expect("running mount");
        if !out.status.success() {
            eprintln!(
                "disk_full: SKIPPED, cannot mount a tmpfs here: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Some(SmallDisk { path, _parent: parent })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn free_bytes(path: &Path) -> u64 {
    cohort::datadir::free_bytes(path).unwrap()
}

/// Writes a file of zeros until `path`'s disk has about `left` bytes free.
fn fill_to(dir: &Path, name: &str, left: u64) -> PathBuf {
    let file = dir.join(name);
    let size = free_bytes(dir).saturating_sub(left);
    std::fs::write(&file, vec![0u8; size as usize]).unwrap();
    file
}

fn identifies(from: usize, n: usize) -> Vec<String> {
    (from..from + n)
        .map(|i| {
            format!(
                r#"{{"type":"identify","userId":"u{i}","messageId":"m{i}","traits":{{"plan":"pro","bio":"{}"}}}}"#,
                "b".repeat(200)
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_refused_on_a_nearly_full_disk_and_taken_again_once_space_is_freed() {
    let Some(disk) = SmallDisk::mount(96) else { return };
    let data = disk.path.join("data");
    let config = disk.path.join("cohort.toml");
    let keep = 24u64 << 20;
    std::fs::write(&config, format!("min_free_disk_bytes = {keep}\nsnapshot_entries = 10\n")).unwrap();
    let config = config.to_str().unwrap().to_string();
    let s = Server::start(&data, 2, &["--config", &config]);
    let reply = s.ingest(identifies(0, 500)).await.unwrap();
    assert_eq!(reply.applied, 500);

    // Under the kept space: refused as a whole, with what and where.
    let ballast = fill_to(&disk.path, "ballast", keep - (4 << 20));
    let refused = s.ingest(identifies(500, 500)).await.expect_err("writes on a nearly full disk");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("disk full") && refused.message().contains("min_free_disk_bytes"),
        "{refused:?}"
    );
    assert!(refused.message().contains(data.to_str().unwrap()), "names the directory: {refused:?}");
    // Queries go on.
    assert_eq!(s.count(&["plan = \"pro\""]).await, vec![500]);

    // Space freed: writes are taken again, with no restart.
    std::fs::remove_file(&ballast).unwrap();
    let started = Instant::now();
    let reply = loop {
        match s.ingest(identifies(500, 500)).await {
            Ok(reply) => break reply,
            Err(e) if e.code() == Code::ResourceExhausted && started.elapsed() < Duration::from_secs(10) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("writes not taken again after space was freed: {e:?}"),
        }
    };
    assert_eq!(reply.applied, 500);
    assert_eq!(s.count(&["plan = \"pro\""]).await, vec![1000]);

    // More profiles, so that the catalog's snapshot is larger than the
    // space a restart is given below.
    for from in (1000..30_000).step_by(1000) {
        assert_eq!(s.ingest(identifies(from, 1000)).await.unwrap().applied, 1000);
    }
    let catalog_bytes = std::fs::metadata(data.join("snapshots/catalog.snap")).map_or(0, |m| m.len());
    assert!(catalog_bytes > RESTART_FREE, "the catalog's snapshot holds {catalog_bytes} bytes");

    // A graceful stop and a start on the same disk with only RESTART_FREE
    // bytes free: the snapshots that do not fit are skipped with a warning
    // (the log keeps what they cover), and the node opens with everything
    // acknowledged.
    let _ballast = fill_to(&disk.path, "ballast", RESTART_FREE);
    let mut s = s;
    s.terminate();
    let s = Server::start(&data, 2, &["--config", &config]);
    assert_eq!(s.count(&["plan = \"pro\""]).await, vec![30_000]);
    drop(s);
}

/// With the guard off, a write that meets the full disk itself fails as a
/// storage error, the node stops taking writes (raft-rs's view is ahead of
/// the disk), and a restart once space is freed opens with every
/// acknowledged message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_guard_off_a_full_disk_stops_writes_until_a_restart_and_loses_nothing_acknowledged() {
    let Some(disk) = SmallDisk::mount(96) else { return };
    let data = disk.path.join("data");
    let config = disk.path.join("cohort.toml");
    std::fs::write(&config, "min_free_disk_bytes = 0\n").unwrap();
    let config = config.to_str().unwrap().to_string();
    let s = Server::start(&data, 2, &["--config", &config]);
    assert_eq!(s.ingest(identifies(0, 500)).await.unwrap().applied, 500);
    let ballast = fill_to(&disk.path, "ballast", 0);
    let mut acknowledged = 500;
    let mut failed = None;
    for round in 1..=400 {
        match s.ingest(identifies(round * 500, 500)).await {
            Ok(reply) => acknowledged += reply.applied,
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    let failed = failed.expect("a full disk fails a write");
    assert_eq!(failed.code(), Code::Unavailable, "{failed:?}");
    assert!(
        failed.message().contains("stopped taking writes") && failed.message().contains("nospace"),
        "{failed:?}"
    );
    // Stopped until a restart, even with space freed.
    std::fs::remove_file(&ballast).unwrap();
    let again = s.ingest(identifies(1_000_000, 10)).await.expect_err("writes stay stopped");
    assert!(again.message().contains("nospace"), "{again:?}");

    // A restart with only RESTART_FREE bytes free opens.
    let _ballast = fill_to(&disk.path, "ballast", RESTART_FREE);
    let s = s.restart_after_kill();
    // Every acknowledged message is there; the failed call may have been
    // applied in part (as after a timeout), and sending it again is
    // deduplicated by its messageIds.
    let count = s.count(&["plan = \"pro\""]).await[0];
    assert!(
        (acknowledged..=acknowledged + 500).contains(&count),
        "{count} after {acknowledged} acknowledged"
    );
    let failed_round = (acknowledged / 500) as usize;
    s.ingest(identifies(failed_round * 500, 500)).await.unwrap();
    assert_eq!(s.count(&["plan = \"pro\""]).await, vec![acknowledged + 500]);
}

/// The free space a restart of the test's node is given: less than its
/// catalog's snapshot. A stop skips the snapshots that do not fit, and a
/// start needs room for the manifest only (README, "A full disk").
const RESTART_FREE: u64 = 1 << 20;
