//! The data directory's manifest: what a restart must find.
//!
//! Without it a node cannot tell a damaged directory from a young one: a
//! deleted snapshot reads as a shard that never snapshotted, an emptied log
//! as a group that never wrote. `MANIFEST.json` records, for every Raft
//! group, the snapshot file it last wrote (name, size, xxh3-64 of its bytes,
//! the index it covers) and an index the group is known to have applied.
//! At open the node checks the files against it (`crate::datadir`) and
//! refuses to start on anything missing, shorter or different.
//!
//! The manifest is written atomically (a temporary file, fsynced, renamed,
//! the directory fsynced). A group's record is updated right after each of
//! its snapshots is written and before the log is compacted behind it, and
//! applied indexes are written at most once a second by the node (and at a
//! graceful stop): an applied entry is committed, so it is in the fsynced log
//! and a restart must find it there or in a snapshot.
//!
//! A crash between writing a snapshot and recording it leaves a file newer
//! than its record; the check accepts a snapshot whose index is above the
//! record's (its own checksums are verified when it loads) and refuses one
//! below it.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The manifest's file name inside the data directory.
pub const MANIFEST_FILE: &str = "MANIFEST.json";
/// The format written here.
const FORMAT: u32 = 1;

/// Errors reading or writing the manifest; each names the file.
#[derive(Debug, Error)]
pub enum ManifestError {
    /// An I/O error on a file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The manifest is not valid JSON of the expected shape.
    #[error("{path}: not a valid manifest: {problem}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        problem: String,
    },
}

/// A snapshot file as the manifest records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    /// The file's name inside `snapshots/`.
    pub file: String,
    /// Its size in bytes.
    pub bytes: u64,
    /// xxh3-64 of its bytes, in hex.
    pub xxh3: String,
    /// The log index it covers.
    pub index: u64,
}

/// One group's record.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    /// The group's name (`catalog`, `shard 3`), for messages.
    pub name: String,
    /// Its latest snapshot, if it wrote one.
    pub snapshot: Option<SnapshotRecord>,
    /// An index it had applied: the log or the snapshot must reach it.
    pub applied_index: u64,
}

/// The manifest's content.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestState {
    /// Format version.
    pub format: u32,
    /// Records by group id.
    pub groups: BTreeMap<u64, GroupRecord>,
}

/// xxh3-64 of a file's bytes, read in 1 MiB pieces, with its length.
pub fn file_digest(path: &Path) -> std::io::Result<(u64, String)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok((bytes, format!("{:016x}", hasher.digest())))
}

/// Writes `data` to `path` atomically: a temporary file, fsynced, renamed
/// over `path`, then the directory fsynced.
pub fn write_atomically(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The manifest of an open data directory, shared by the driver (snapshot
/// records) and the node (applied indexes).
pub struct Manifest {
    path: PathBuf,
    snapshots: PathBuf,
    state: Mutex<ManifestState>,
    /// Applied indexes changed since the last write.
    dirty: std::sync::atomic::AtomicBool,
    /// Serialises writes, so an older state never lands after a newer one.
    writing: Mutex<()>,
}

impl std::fmt::Debug for Manifest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manifest").field("path", &self.path).finish()
    }
}

impl Manifest {
    /// Reads the manifest of data directory `dir`; `None` when it has none.
    pub fn read(dir: &Path) -> Result<Option<ManifestState>, ManifestError> {
        let path = dir.join(MANIFEST_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(ManifestError::Io { path: path.display().to_string(), source }),
        };
        let state: ManifestState = serde_json::from_str(&text).map_err(|e| ManifestError::Invalid {
            path: path.display().to_string(),
            problem: e.to_string(),
        })?;
        if state.format != FORMAT {
            return Err(ManifestError::Invalid {
                path: path.display().to_string(),
                problem: format!("format {} is not the format {FORMAT} this build reads", state.format),
            });
        }
        Ok(Some(state))
    }

    /// The manifest of `dir` holding `state`, written now.
    pub fn create(dir: &Path, mut state: ManifestState) -> Result<Manifest, ManifestError> {
        state.format = FORMAT;
        let manifest = Manifest {
            path: dir.join(MANIFEST_FILE),
            snapshots: dir.join("snapshots"),
            state: Mutex::new(state),
            dirty: std::sync::atomic::AtomicBool::new(false),
            writing: Mutex::new(()),
        };
        manifest.write()?;
        Ok(manifest)
    }

    /// A copy of what it holds.
    pub fn state(&self) -> ManifestState {
        self.state.lock().clone()
    }

    /// Records that `group` wrote its snapshot `file` (in `snapshots/`)
    /// covering `index`, and writes the manifest now: called after the file
    /// is in place and before the log is compacted behind it.
    pub fn record_snapshot(&self, group: u64, file: &Path, index: u64) -> Result<(), ManifestError> {
        let (bytes, xxh3) = file_digest(file)
            .map_err(|source| ManifestError::Io { path: file.display().to_string(), source })?;
        let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        {
            let mut state = self.state.lock();
            let record = state.groups.entry(group).or_default();
            record.snapshot = Some(SnapshotRecord { file: name, bytes, xxh3, index });
            record.applied_index = record.applied_index.max(index);
        }
        self.write()
    }

    /// Forgets `group` (this node's replica of it was dropped) and writes
    /// the manifest now.
    pub fn forget(&self, group: u64) -> Result<(), ManifestError> {
        self.state.lock().groups.remove(&group);
        self.write()
    }

    /// Notes that `group` applied `index`; written by the next
    /// [`flush`](Manifest::flush).
    pub fn record_applied(&self, group: u64, index: u64) {
        let mut state = self.state.lock();
        let record = state.groups.entry(group).or_default();
        if index > record.applied_index {
            record.applied_index = index;
            self.dirty.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Writes the manifest if applied indexes changed since the last write.
    pub fn flush(&self) -> Result<(), ManifestError> {
        if self.dirty.swap(false, std::sync::atomic::Ordering::Relaxed) {
            self.write()?;
        }
        Ok(())
    }

    /// The folder the snapshot files are in.
    pub fn snapshots_dir(&self) -> &Path {
        &self.snapshots
    }

    fn write(&self) -> Result<(), ManifestError> {
        let _writing = self.writing.lock();
        let text = serde_json::to_vec_pretty(&*self.state.lock()).unwrap_or_default();
        write_atomically(&self.path, &text)
            .map_err(|source| ManifestError::Io { path: self.path.display().to_string(), source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_a_reread() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("snapshots")).unwrap();
        let snap = dir.path().join("snapshots/shard-000.snap");
        std::fs::write(&snap, b"hello").unwrap();
        let m = Manifest::create(dir.path(), ManifestState::default()).unwrap();
        m.record_snapshot(2, &snap, 40).unwrap();
        m.record_applied(2, 45);
        m.record_applied(1, 3);
        m.flush().unwrap();
        let read = Manifest::read(dir.path()).unwrap().unwrap();
        let g = &read.groups[&2];
        assert_eq!(g.applied_index, 45);
        let s = g.snapshot.as_ref().unwrap();
        assert_eq!((s.file.as_str(), s.bytes, s.index), ("shard-000.snap", 5, 40));
        assert_eq!(s.xxh3, file_digest(&snap).unwrap().1);
        assert_eq!(read.groups[&1].applied_index, 3);
    }

    #[test]
    fn a_damaged_manifest_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(MANIFEST_FILE), b"{\"format\":1,\"gro").unwrap();
        let e = Manifest::read(dir.path()).unwrap_err().to_string();
        assert!(e.contains(MANIFEST_FILE) && e.contains("not a valid manifest"), "{e}");
    }
}
