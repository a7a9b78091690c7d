//! A node's data directory: what is in it, and whether it is whole.
//!
//! ```text
//! DATA_DIR/cohort-node.json   node id and shard count it was created with
//! DATA_DIR/MANIFEST.json      what a restart must find (replication::manifest)
//! DATA_DIR/raft/              the raft-engine log of every group
//! DATA_DIR/snapshots/         catalog.snap, shard-NNN.snap
//! ```
//!
//! A node starts empty only on a fresh directory (nothing of the above).
//! Otherwise [`check_files`] runs before the log is opened and
//! [`check_groups`] once the snapshots are loaded; either returns every
//! [`Problem`] it finds, each naming the file and what is wrong, and the
//! node refuses to start on any. `cohort check-data DIR` runs the same
//! checks without starting.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::replication::driver::StateMachine;
use crate::replication::log_check::{self, LogCheck};
use crate::replication::manifest::{
    file_digest, GroupRecord, Manifest, ManifestState, SnapshotRecord, MANIFEST_FILE,
};
use crate::replication::storage::LogStore;

/// The file naming what a data directory was created with.
pub const META_FILE: &str = "cohort-node.json";

/// What a data directory was created with.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DataDirMeta {
    /// The node's Raft id.
    pub node_id: u64,
    /// Its shard count.
    pub shards: u32,
    /// True once the node keeps a manifest (every directory this build
    /// creates; older builds wrote none).
    #[serde(default)]
    pub manifest: bool,
}

/// One thing wrong with a data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file or folder concerned.
    pub path: PathBuf,
    /// What is wrong, in a sentence.
    pub what: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.what)
    }
}

/// Every problem found, as one error message (one per line).
pub fn describe(problems: &[Problem]) -> String {
    let lines: Vec<String> = problems.iter().map(|p| format!("  - {p}")).collect();
    format!(
        "the data directory is damaged or incomplete ({} problem{}); the node will not start on it:\n{}",
        problems.len(),
        if problems.len() == 1 { "" } else { "s" },
        lines.join("\n")
    )
}

/// What [`check_files`] learnt.
#[derive(Debug)]
pub struct FilesChecked {
    /// True for a new, empty directory.
    pub fresh: bool,
    /// The directory's meta file, if any.
    pub meta: Option<DataDirMeta>,
    /// The manifest, if any.
    pub manifest: Option<ManifestState>,
    /// What the log check found (its torn tails are warnings).
    pub log: LogCheck,
}

fn snapshot_files(snapshots: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(snapshots)
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "snap"))
                .collect()
        })
        .unwrap_or_default()
}

/// Checks what can be checked before the log opens: the meta file, the
/// manifest, the log files (read-only, see
/// [`log_check`](crate::replication::log_check)) and that each snapshot the
/// manifest records exists with its size. Returns the problems found, all
/// of them.
pub fn check_files(dir: &Path) -> Result<FilesChecked, Vec<Problem>> {
    let mut problems = Vec::new();
    let problem = |path: PathBuf, what: String| Problem { path, what };
    let meta_path = dir.join(META_FILE);
    let raft = dir.join("raft");
    let snapshots = dir.join("snapshots");
    let meta = match std::fs::read_to_string(&meta_path) {
        Ok(text) => match serde_json::from_str::<DataDirMeta>(&text) {
            Ok(m) => Some(m),
            Err(e) => {
                problems.push(problem(meta_path.clone(), format!("cannot be read: {e}")));
                None
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            problems.push(problem(meta_path.clone(), format!("cannot be read: {e}")));
            None
        }
    };
    let manifest = match Manifest::read(dir) {
        Ok(m) => m,
        Err(e) => {
            problems.push(problem(dir.join(MANIFEST_FILE), e.to_string()));
            None
        }
    };
    let log = match log_check::check_dir(&raft) {
        Ok(check) => check,
        Err(e) => {
            problems.push(problem(raft.clone(), format!("cannot be listed: {e}")));
            LogCheck::default()
        }
    };
    let snaps = snapshot_files(&snapshots);
    let fresh = meta.is_none()
        && manifest.is_none()
        && log.files == 0
        && snaps.is_empty()
        && !meta_path.exists()
        && !dir.join(MANIFEST_FILE).exists();
    if fresh {
        return Ok(FilesChecked { fresh, meta, manifest, log });
    }
    if meta.is_none() && meta_path.exists() {
        // Already reported as unreadable.
    } else if meta.is_none() {
        problems.push(problem(
            meta_path.clone(),
            format!(
                "is missing, but the directory holds {} log files and {} snapshots: it is not a new data directory",
                log.files,
                snaps.len()
            ),
        ));
    }
    if manifest.is_none()
        && meta.as_ref().is_some_and(|m| m.manifest)
        && dir.join(MANIFEST_FILE).metadata().is_err()
    {
        problems.push(problem(
            dir.join(MANIFEST_FILE),
            "is missing: this directory keeps a manifest, and without it the node cannot tell what must be there"
                .into(),
        ));
    }
    for d in &log.damage {
        problems.push(problem(d.file.clone(), format!("damaged at byte {}: {}", d.offset, d.problem)));
    }
    if let Some(m) = &manifest {
        for (group, record) in &m.groups {
            let Some(s) = &record.snapshot else { continue };
            let path = snapshots.join(&s.file);
            if std::fs::metadata(&path).is_err() {
                problems.push(problem(
                    path,
                    format!(
                        "is missing: the manifest records the snapshot of group {group} ({}) there, {} bytes at index {}",
                        record.name, s.bytes, s.index
                    ),
                ));
            }
        }
        if log.files == 0
            && m.groups.values().any(|g| g.applied_index > g.snapshot.as_ref().map_or(0, |s| s.index))
        {
            problems.push(problem(
                raft.clone(),
                "holds no log files, but the manifest records entries applied beyond the snapshots".into(),
            ));
        }
    }
    if problems.is_empty() {
        Ok(FilesChecked { fresh, meta, manifest, log })
    } else {
        Err(problems)
    }
}

/// A group as [`check_groups`] sees it: its id and name and its machine,
/// loaded from its snapshot.
pub struct LoadedGroup<'a> {
    /// Raft group id.
    pub id: u64,
    /// Its name (`catalog`, `shard 3`).
    pub name: String,
    /// The machine, opened from its snapshot (or fresh when it has none).
    pub machine: &'a dyn StateMachine,
}

/// The catalog and every shard as [`LoadedGroup`]s, in group order.
pub fn loaded_groups<'a>(
    catalog: &'a dyn StateMachine,
    shards: impl IntoIterator<Item = &'a dyn StateMachine>,
) -> Vec<LoadedGroup<'a>> {
    let mut loaded = vec![LoadedGroup {
        id: crate::cluster::placement::CATALOG_GROUP,
        name: "catalog".into(),
        machine: catalog,
    }];
    for (s, machine) in shards.into_iter().enumerate() {
        loaded.push(LoadedGroup {
            id: crate::cluster::placement::shard_group(s as u32),
            name: format!("shard {s}"),
            machine,
        });
    }
    loaded
}

/// Checks every loaded group against the manifest and the opened log: a
/// recorded snapshot must be there with its size and checksum, or be newer
/// than the record (a crash between writing and recording it); the log
/// must start right after the snapshot and reach the applied index the
/// manifest records. Returns the problems and, when there are none, the
/// records to write as the new manifest.
pub fn check_groups(
    manifest: Option<&ManifestState>,
    store: &LogStore,
    groups: &[LoadedGroup<'_>],
) -> Result<BTreeMap<u64, GroupRecord>, Vec<Problem>> {
    let mut problems = Vec::new();
    let empty = BTreeMap::new();
    let records = manifest.map_or(&empty, |m| &m.groups);
    let digests: Vec<Result<Option<(u64, String)>, String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = groups
            .iter()
            .map(|g| {
                scope.spawn(move || {
                    let path = g.machine.snapshot_file();
                    if !path.exists() {
                        return Ok(None);
                    }
                    file_digest(path).map(Some).map_err(|e| format!("cannot be read: {e}"))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("checksum thread panicked".into())))
            .collect()
    });
    let mut next = BTreeMap::new();
    for (g, digest) in groups.iter().zip(digests) {
        let file = g.machine.snapshot_file().to_path_buf();
        let record = records.get(&g.id);
        let machine_index = g.machine.applied_index();
        let mut new_record = GroupRecord {
            name: g.name.clone(),
            snapshot: None,
            applied_index: record.map_or(0, |r| r.applied_index),
        };
        match digest {
            Err(what) => problems.push(Problem { path: file.clone(), what }),
            Ok(None) => {}
            Ok(Some((bytes, xxh3))) => {
                if let Some(s) = record.and_then(|r| r.snapshot.as_ref()) {
                    if machine_index < s.index {
                        problems.push(Problem {
                            path: file.clone(),
                            what: format!(
                                "holds group {} ({}) at index {machine_index}, older than the index {} the manifest records",
                                g.id, g.name, s.index
                            ),
                        });
                    } else if machine_index == s.index && (bytes != s.bytes || xxh3 != s.xxh3) {
                        problems.push(Problem {
                            path: file.clone(),
                            what: format!(
                                "differs from what the manifest records for group {} ({}) at index {}: {} bytes with xxh3 {xxh3}, recorded {} bytes with xxh3 {}",
                                g.id, g.name, s.index, bytes, s.bytes, s.xxh3
                            ),
                        });
                    }
                }
                let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                new_record.snapshot = Some(SnapshotRecord { file: name, bytes, xxh3, index: machine_index });
            }
        }
        match store.group(g.id) {
            Err(e) => problems.push(Problem { path: store_dir(store), what: e.to_string() }),
            Ok(storage) => {
                let compacted = storage.snapshot_meta().index;
                let last = raft::Storage::last_index(&storage).unwrap_or(compacted);
                if machine_index < compacted {
                    problems.push(Problem {
                        path: file.clone(),
                        what: format!(
                            "holds group {} ({}) at index {machine_index}, but its log was compacted up to index {compacted}: entries {}..={compacted} are in neither",
                            g.id,
                            g.name,
                            machine_index + 1
                        ),
                    });
                }
                let reach = last.max(machine_index);
                let required = record.map_or(0, |r| r.applied_index);
                if reach < required {
                    problems.push(Problem {
                        path: store_dir(store),
                        what: format!(
                            "the log of group {} ({}) ends at index {last} and its snapshot covers {machine_index}, but the manifest records index {required} as applied: entries {}..={required} are missing (a truncated, emptied or removed log)",
                            g.id,
                            g.name,
                            reach + 1
                        ),
                    });
                }
            }
        }
        next.insert(g.id, new_record);
    }
    if problems.is_empty() {
        Ok(next)
    } else {
        Err(problems)
    }
}

fn store_dir(store: &LogStore) -> PathBuf {
    PathBuf::from(store.dir())
}

/// Marks a directory whose snapshots were just built in bulk (`cohort
/// demo`) as a data directory of node `node_id` with `shards` shards, with
/// a manifest that records those snapshots.
pub fn seal_bulk_load(dir: &Path, node_id: u64, shards: u32) -> Result<(), String> {
    let meta = DataDirMeta { node_id, shards, manifest: true };
    write_meta(dir, &meta)?;
    let mut state = ManifestState::default();
    for path in snapshot_files(&dir.join("snapshots")) {
        let (bytes, xxh3) = file_digest(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let file = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let group =
            group_of_file(&file, shards).ok_or_else(|| format!("{}: not a snapshot name", path.display()))?;
        state.groups.insert(
            group.0,
            GroupRecord {
                name: group.1,
                snapshot: Some(SnapshotRecord { file, bytes, xxh3, index: 0 }),
                applied_index: 0,
            },
        );
    }
    Manifest::create(dir, state).map(|_| ()).map_err(|e| e.to_string())
}

/// The group id and name of a snapshot file name.
fn group_of_file(file: &str, shards: u32) -> Option<(u64, String)> {
    if file == "catalog.snap" {
        return Some((crate::cluster::placement::CATALOG_GROUP, "catalog".into()));
    }
    let s: u32 = file.strip_prefix("shard-")?.strip_suffix(".snap")?.parse().ok()?;
    (s < shards).then(|| (crate::cluster::placement::shard_group(s), format!("shard {s}")))
}

/// Writes the meta file atomically.
pub fn write_meta(dir: &Path, meta: &DataDirMeta) -> Result<(), String> {
    let path = dir.join(META_FILE);
    let text = serde_json::to_vec_pretty(meta).unwrap_or_default();
    crate::replication::manifest::write_atomically(&path, &text)
        .map_err(|e| format!("{}: {e}", path.display()))
}
