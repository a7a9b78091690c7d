//! The node in-process: ingest through the catalog and shard groups, read
//! back through the planner, restart from snapshot plus log tail, or from
//! the snapshots a graceful shutdown writes.

use cohort::ingest::Source;
use cohort::node::{Node, NodeConfig};
use cohort::replication::driver::StateMachine;

fn config(dir: &std::path::Path, snapshot_entries: u64) -> NodeConfig {
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
                r#"{{"type":"identify","userId":"u{i}","anonymousId":"a{i}","messageId":"m{i}","timestamp":"2026-01-01T00:00:00Z","traits":{{"country":"{}","age":{}}}}}"#,
                ["FR", "DE", "US"][i as usize % 3],
                i % 90
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_count_restart_and_count_again() {
    let dir = tempfile::tempdir().unwrap();
    // (snapshot every N entries, snapshot at shutdown)
    for (snapshot_entries, at_shutdown) in [(3u64, false), (1_000_000, false), (1_000_000, true)] {
        let sub = dir.path().join(format!("s{snapshot_entries}-{at_shutdown}"));
        let exprs =
            vec![r#"country = "FR""#.to_string(), "age > 40".to_string(), "user_id EXISTS".to_string()];
        let before = {
            let node = Node::open(config(&sub, snapshot_entries)).await.unwrap();
            for chunk in 0..10 {
                let r =
                    node.ingest_text(msgs(chunk * 100..(chunk + 1) * 100), 1, Source::Grpc).await.unwrap();
                assert_eq!((r.applied, r.duplicates, r.rejections.len()), (100, 0, 0));
            }
            // A resent batch is acknowledged and not applied again.
            let r = node.ingest_text(msgs(0..100), 1, Source::Grpc).await.unwrap();
            assert_eq!((r.applied, r.duplicates), (0, 100));
            // Anonymous browsing, then an alias: the two profiles merge.
            let r = node
                .ingest_text(
                    vec![
                        r#"{"type":"track","anonymousId":"x1","event":"page_view","timestamp":"2026-01-02T00:00:00Z","properties":{"path":"/"}}"#.into(),
                        r#"{"type":"identify","anonymousId":"x1","traits":{"country":"IT"},"timestamp":"2025-01-02T00:00:00Z"}"#.into(),
                    ],
                    1,
                    Source::Grpc,
                )
                .await
                .unwrap();
            assert_eq!(r.applied, 2);
            assert_eq!(node.planner.count(&exprs, 0, None).unwrap().1, 1_001);
            let r = node
                .ingest_text(
                    vec![r#"{"type":"alias","userId":"u1","previousId":"x1"}"#.into()],
                    1,
                    Source::Grpc,
                )
                .await
                .unwrap();
            assert_eq!(r.applied, 1);
            let (counts, universe) = node.planner.count(&exprs, 0, None).unwrap();
            assert_eq!(universe, 1_000, "the alias merged x1's profile into u1's");
            assert_eq!(counts[2], 1_000);
            let applied = if at_shutdown {
                let checkpoint = node.shutdown();
                assert_eq!((checkpoint.written, checkpoint.failed.len()), (5, 0), "{checkpoint:?}");
                // Every applied entry is in a snapshot.
                let applied: Vec<u64> = std::iter::once(node.catalog.applied_index())
                    .chain(node.shards.iter().map(|s| s.applied_index()))
                    .collect();
                Some(applied)
            } else {
                // Stopped without snapshots: the next start replays the log.
                node.driver.stop();
                None
            };
            (counts, applied)
        };
        let (before, applied) = before;
        // The first node is dropped: reopen from snapshots plus log tail.
        let node = Node::open(config(&sub, snapshot_entries)).await.unwrap();
        let (counts, universe) = node.planner.count(&exprs, 0, None).unwrap();
        assert_eq!((counts, universe), (before, 1_000), "snapshot_entries {snapshot_entries}");
        if let Some(applied) = applied {
            // Nothing was left to replay: each group's snapshot covers all
            // it had applied.
            let mut status = node.driver.status();
            for _ in 0..100 {
                if status.len() == 5 {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                status = node.driver.status();
            }
            let covered: Vec<u64> = status.iter().map(|g| g.snapshot_index).collect();
            assert_eq!(covered, applied, "{status:?}");
        }
        let (p, m) = node
            .planner
            .check("anonymous_id:x1", &[r#"country = "DE""#.to_string(), r#"DID "page_view""#.to_string()], 0)
            .unwrap();
        assert_eq!(node.planner.locate("u1").unwrap().0, p);
        assert_eq!(m, vec![true, true], "u1 keeps its newer country and gains x1's event");
        let r = node.ingest_text(msgs(500..600), 1, Source::Grpc).await.unwrap();
        assert_eq!(r.duplicates, 100, "the dedup window survived the restart");
        for s in node.shards.iter() {
            s.read_state().shard.validate().unwrap();
        }
        if at_shutdown {
            // A short tail after the snapshots is left to the next start's
            // replay rather than rewriting every snapshot.
            let r = node.ingest_text(msgs(1_000..1_010), 1, Source::Grpc).await.unwrap();
            assert_eq!(r.applied, 10);
            let checkpoint = node.shutdown();
            assert!(checkpoint.left_to_replay >= 1 && checkpoint.failed.is_empty(), "{checkpoint:?}");
            let node = Node::open(config(&sub, snapshot_entries)).await.unwrap();
            assert_eq!(node.planner.count(&exprs, 0, None).unwrap().1, 1_010);
            node.shutdown();
        } else {
            node.driver.stop();
        }
    }
}

/// Cross-shard merges interleaved with writes to both sides of each merge,
/// from concurrent callers: the pipeline proposes several entries' writes
/// at once but holds a merge until every earlier write is committed, so no
/// event lands on a profile after its image was copied away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merges_interleaved_with_concurrent_writes_lose_no_event_and_apply_none_twice() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::open(NodeConfig {
        data_dir: dir.path().to_path_buf(),
        shards: 8,
        query_threads: 2,
        ..NodeConfig::default()
    })
    .await
    .unwrap();
    let n = 2_000u32;
    let setup: Vec<String> = (0..n)
        .flat_map(|k| {
            [
                format!(r#"{{"type":"identify","userId":"u{k}","timestamp":"2026-10-01T00:00:00Z","traits":{{"k":{k}}}}}"#),
                format!(r#"{{"type":"track","anonymousId":"a{k}","event":"browse","timestamp":"2026-10-01T00:00:00Z"}}"#),
            ]
        })
        .collect();
    node.ingest_text(setup, 1, Source::Grpc).await.unwrap();
    assert_eq!(node.planner.count(&[], 0, None).unwrap().1, 2 * n as u64);

    // Three callers at once, each in batches of 50: the aliases that merge
    // a{k} into u{k}, events on a{k}, events on u{k}.
    let batches = |make: fn(u32) -> String| -> Vec<Vec<String>> {
        (0..n).collect::<Vec<_>>().chunks(50).map(|ks| ks.iter().map(|&k| make(k)).collect()).collect()
    };
    let streams = [
        batches(|k| format!(r#"{{"type":"alias","userId":"u{k}","previousId":"a{k}"}}"#)),
        batches(|k| {
            format!(
                r#"{{"type":"track","anonymousId":"a{k}","event":"click","timestamp":"2026-10-02T00:00:00Z"}}"#
            )
        }),
        batches(|k| {
            format!(r#"{{"type":"track","userId":"u{k}","event":"view","timestamp":"2026-10-03T00:00:00Z"}}"#)
        }),
    ];
    let callers: Vec<_> = streams
        .into_iter()
        .map(|stream| {
            let node = node.clone();
            tokio::spawn(async move {
                for batch in stream {
                    let r = node.ingest_text(batch, 1, Source::Grpc).await.unwrap();
                    assert_eq!((r.applied, r.rejections.len()), (50, 0));
                }
            })
        })
        .collect();
    for c in callers {
        c.await.unwrap();
    }

    let exprs: Vec<String> = [
        r#"DID "browse""#,
        r#"DID "click""#,
        r#"DID "view""#,
        r#"user_id EXISTS AND anonymous_id EXISTS AND DID "browse" AND DID "click" AND DID "view""#,
    ]
    .iter()
    .map(|e| e.to_string())
    .collect();
    let (counts, universe) = node.planner.count(&exprs, 0, None).unwrap();
    assert_eq!(universe, n as u64, "every pair merged");
    assert_eq!(counts, vec![n as u64; 4], "every merged profile has all three events");
    let events: u64 =
        node.shards.iter().map(|s| s.read_state().shard.events.values().map(|t| t.total).sum::<u64>()).sum();
    assert_eq!(events, 3 * n as u64, "no event applied twice");
    for s in node.shards.iter() {
        s.read_state().shard.validate().unwrap();
    }
    node.shutdown();
}
