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

/// Keeps writes off a nearly full disk, so that the log never meets a full
/// one. A write the log cannot finish leaves raft-rs's view ahead of the
/// disk and stops the node until a restart; a write refused before it
/// starts costs nothing. So every client write (ingest, schema, segments)
/// first asks [`DiskGuard::check`]: while the data directory's file system
/// has less than `min_free` bytes free to unprivileged users, writes are
/// refused with a message that says so, and they are taken again, with no
/// restart, as soon as space is freed. Queries go on either way.
///
/// The free space is read (`statvfs`) at most every
/// [`DiskGuard::RECHECK`], so a write does not pay a system call.
pub struct DiskGuard {
    dir: PathBuf,
    min_free: u64,
    last: parking_lot::Mutex<Option<(std::time::Instant, Result<u64, String>)>>,
}

impl DiskGuard {
    /// How long a reading of the free space stands.
    pub const RECHECK: std::time::Duration = std::time::Duration::from_millis(100);

    /// A guard of the file system holding `dir` that keeps `min_free`
    /// bytes (0: no guard).
    pub fn new(dir: &Path, min_free: u64) -> DiskGuard {
        DiskGuard { dir: dir.to_path_buf(), min_free, last: parking_lot::Mutex::new(None) }
    }

    /// `Ok` when a write may start; otherwise why not.
    pub fn check(&self) -> Result<(), String> {
        if self.min_free == 0 {
            return Ok(());
        }
        let mut last = self.last.lock();
        let stale = last.as_ref().is_none_or(|(at, _)| at.elapsed() >= Self::RECHECK);
        if stale {
            let free = free_bytes(&self.dir)
                .map_err(|e| format!("{}: cannot read the free space: {e}", self.dir.display()));
            *last = Some((std::time::Instant::now(), free));
        }
        let Some((_, free)) = last.as_ref() else { return Ok(()) };
        match free {
            Ok(free) if *free >= self.min_free => Ok(()),
            Ok(free) => Err(format!(
                "the disk of {} has {} free, under the {} that min_free_disk_bytes keeps free for the log; \
                 writes are taken again as soon as space is freed (queries go on)",
                self.dir.display(),
                show_bytes(*free),
                show_bytes(self.min_free)
            )),
            // A file system that cannot say how full it is: the log finds
            // out when it writes.
            Err(_) => Ok(()),
        }
    }
}

/// Bytes free to unprivileged users on the file system holding `dir`.
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "a NUL byte in the path"))?;
    // SAFETY: `path` is a NUL-terminated string and `stat` a zeroed
    // struct that statvfs fills; neither outlives the call.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
}

/// `12.5 MiB`, `3.0 GiB`: bytes for people.
fn show_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod disk_guard_tests {
    use super::*;

    #[test]
    fn the_free_space_of_a_real_directory_is_read_and_compared() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_bytes(dir.path()).unwrap();
        assert!(free > 0);
        assert_eq!(DiskGuard::new(dir.path(), 0).check(), Ok(()));
        assert_eq!(DiskGuard::new(dir.path(), 1).check(), Ok(()));
        let err = DiskGuard::new(dir.path(), u64::MAX).check().unwrap_err();
        assert!(err.contains("min_free_disk_bytes") && err.contains("16777216.0 TiB"), "{err}");
        assert!(free_bytes(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn bytes_are_shown_in_units() {
        assert_eq!(show_bytes(512), "512 bytes");
        assert_eq!(show_bytes(1536), "1.5 KiB");
        assert_eq!(show_bytes(256 << 20), "256.0 MiB");
    }
}
