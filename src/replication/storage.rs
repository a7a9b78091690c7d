//! Durable Raft storage for many Raft groups sharing one raft-engine
//! [`Engine`] per node.
//!
//! A node holds one Raft group per shard replica. Giving every group its own
//! write-ahead log would cost one fsync per group per round; instead all groups
//! of a node append to one raft-engine instance ([`LogStore`]), and the ready
//! loop puts the work of many groups into one [`LogBatch`] that is written
//! and fsynced once. [`GroupStorage`] is one group's view of that engine and
//! implements [`raft::Storage`] for raft-rs.
//!
//! # What is stored per group
//!
//! raft-engine keeps, per group id, a run of log entries (indexed by log
//! index) and a small key-value map. The entries hold the Raft log; the map
//! holds three protobuf messages under fixed keys:
//!
//! - `hard_state`: the [`HardState`] (term, vote, commit);
//! - `conf_state`: the current [`ConfState`] (voters and learners);
//! - `conf_index`: the index of the entry (or snapshot) that made it, as
//!   the `index` of a [`SnapshotMetadata`] (0 for the founding one), so
//!   that a replay does not apply a configuration change twice;
//! - `snapshot_meta`: the [`SnapshotMetadata`] of the last snapshot that
//!   covers the log (index, term, conf state at that index). Its index is the
//!   group's "truncated index": the log proper starts at `index + 1`.
//!
//! # Writing
//!
//! The `append`, `set_*` and `apply_snapshot` methods only add to a caller's
//! [`LogBatch`] (and update the in-memory view); nothing is durable until the
//! caller hands the batch to [`LogStore::write`] with `sync = true`. A batch
//! may carry any number of groups; per group, follow the order of a raft-rs
//! `Ready`: `apply_snapshot`, then `append`, then `set_hard_state`, with at
//! most one `append` per group per batch (see [`GroupStorage::append`]).
//! When a write fails the in-memory view may be ahead of the disk: the node
//! must stop, as it would after any other storage failure.
//!
//! # raft-engine behaviour this module relies on (0.4.2)
//!
//! - Appending entries whose first index is at or below the group's last
//!   index truncates the conflicting suffix and replaces it (memtable
//!   `prepare_append`), both when the batch is applied and when the log is
//!   replayed on open. So `append` needs no explicit truncation.
//! - Appending with a hole (first index above last index + 1), or into the
//!   compacted prefix of a non-empty log, panics inside `Engine::write`
//!   *after* the batch is on disk; a hole also panics on every later open.
//!   `append` therefore checks the index range before touching the batch.
//! - `Command::Clean` drops a group's key-value map as well as its entries
//!   and leaves a tombstone for the purge machinery, so `apply_snapshot`
//!   drops entries with `Command::Compact` past the last index instead.
//! - `Engine::compact_to` writes its own batch without fsync and only logs
//!   errors; that is harmless here because reads never go below the
//!   snapshot index, which is stored durably (see [`GroupStorage::compact_to`]).
//! - `Engine::write` returns at once for an empty batch, without an fsync,
//!   so `Engine::sync` does nothing in this version; an fsync failure
//!   inside `write` panics.
//! - The directory is locked while an engine is open: every [`LogStore`] and
//!   every [`GroupStorage`] (which share the engine) must be dropped before
//!   the directory can be opened again in the same process.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError as RaftStorageError, NO_LIMIT};
use raft_engine::{Command, Config, Engine, LogBatch, MessageExt, ReadableSize, RecoveryMode};
use thiserror::Error;

/// Key of a group's [`HardState`] in raft-engine's per-group key-value map.
const HARD_STATE_KEY: &[u8] = b"hard_state";
/// Key of a group's current [`ConfState`].
const CONF_STATE_KEY: &[u8] = b"conf_state";
/// Key of the index at which the current [`ConfState`] took effect.
const CONF_INDEX_KEY: &[u8] = b"conf_index";
/// Key of the [`SnapshotMetadata`] of the snapshot that covers a group's
/// compacted log prefix.
const SNAPSHOT_META_KEY: &[u8] = b"snapshot_meta";

/// Size at which raft-engine starts a new log file.
const TARGET_FILE_SIZE_MB: u64 = 128;
/// Total size of log files above which raft-engine purges (and rewrites the
/// live entries of lagging groups out of) the oldest files.
const PURGE_THRESHOLD_GB: u64 = 1;

/// Errors of the replication storage layer. Each names the directory or the
/// group (and index) it concerns.
#[derive(Debug, Error)]
pub enum StorageError {
    /// The raft log directory could not be created.
    #[error("cannot create the raft log directory {dir}: {source}")]
    CreateDir {
        /// The directory.
        dir: String,
        /// The cause.
        source: std::io::Error,
    },
    /// raft-engine takes its directory as a UTF-8 string.
    #[error("raft log directory {dir} is not valid UTF-8")]
    InvalidDir {
        /// The directory, lossily converted.
        dir: String,
    },
    /// raft-engine failed to open, write or purge the log.
    #[error("raft log in {dir}: {source}")]
    Engine {
        /// The engine's directory.
        dir: String,
        /// The cause.
        source: raft_engine::Error,
    },
    /// A stored per-group message (hard state, conf state, snapshot
    /// metadata) cannot be decoded.
    #[error("raft log in {dir}: group {group}: cannot decode the stored {key}: {source}")]
    Decode {
        /// The engine's directory.
        dir: String,
        /// The Raft group.
        group: u64,
        /// Which message (`hard_state`, `conf_state`, `snapshot_meta`).
        key: &'static str,
        /// The cause.
        source: raft_engine::Error,
    },
    /// Log entries cannot be read back.
    #[error("raft log in {dir}: group {group}: cannot read entries {low}..{high}: {source}")]
    Read {
        /// The engine's directory.
        dir: String,
        /// The Raft group.
        group: u64,
        /// First index asked for.
        low: u64,
        /// One past the last index asked for.
        high: u64,
        /// The cause.
        source: raft_engine::Error,
    },
    /// Something cannot be added to a write batch (encoding failed, or the
    /// batch is over raft-engine's 2 GiB limit).
    #[error("group {group}: cannot add the {what} to a write batch: {source}")]
    Batch {
        /// The Raft group.
        group: u64,
        /// What was being added (`entries`, `hard_state`, ...).
        what: &'static str,
        /// The cause.
        source: raft_engine::Error,
    },
    /// `initialize` was called on a group that already has state.
    #[error("group {group} is already initialised; only a brand-new group can be bootstrapped")]
    AlreadyInitialized {
        /// The Raft group.
        group: u64,
    },
    /// An append would leave a hole in the log, rewrite entries covered by
    /// the snapshot, or is not a run of consecutive indexes.
    #[error("group {group}: cannot append entry {index}: the next entry must lie in {lowest}..={highest}")]
    AppendOutOfRange {
        /// The Raft group.
        group: u64,
        /// Index of the offending entry.
        index: u64,
        /// Lowest acceptable index.
        lowest: u64,
        /// Highest acceptable index.
        highest: u64,
    },
    /// A snapshot no newer than the one that already covers the log.
    #[error("group {group}: snapshot at index {index} is not newer than the stored snapshot at index {snapshot_index}")]
    SnapshotOutOfDate {
        /// The Raft group.
        group: u64,
        /// Index of the snapshot offered.
        index: u64,
        /// Index of the stored snapshot.
        snapshot_index: u64,
    },
}

impl StorageError {
    /// Wraps this error for raft-rs, which only passes it through.
    fn into_raft(self) -> raft::Error {
        raft::Error::Store(RaftStorageError::Other(Box::new(self)))
    }
}

/// Teaches raft-engine where the index of a raft-rs [`Entry`] is.
///
/// raft-engine 0.4 implements [`MessageExt`] for `Entry` only in its own
/// tests, so the codec lives here.
pub struct EntryCodec;

impl MessageExt for EntryCodec {
    type Entry = Entry;

    fn index(e: &Entry) -> u64 {
        e.index
    }
}

/// Produces a snapshot for raft-rs to send to a lagging follower: called
/// with the index the snapshot must at least reach and the follower's id.
/// Return `raft::Error::Store(raft::StorageError::SnapshotTemporarilyUnavailable)`
/// while one is being built; raft-rs asks again later.
pub type SnapshotProvider = Arc<dyn Fn(u64, u64) -> raft::Result<Snapshot> + Send + Sync>;

/// The raft-engine log of one node, shared by all its Raft groups.
pub struct LogStore {
    /// The engine; every [`GroupStorage`] holds a clone.
    engine: Arc<Engine>,
    /// The directory, for error messages.
    dir: Arc<str>,
    /// The in-memory view of each group handed out so far, so that every
    /// handle of a group sees the same hard state and snapshot metadata.
    groups: Mutex<HashMap<u64, Arc<RwLock<GroupMeta>>>>,
}

impl LogStore {
    /// Opens the log in `dir`, creating the directory (and its parents) when
    /// missing, and replays it.
    ///
    /// Files roll over at 128 MiB and the oldest are purged once the log
    /// passes 1 GiB. A torn record at the tail (a crash mid-write) is cut;
    /// any other corruption fails the open.
    pub fn open(dir: &Path) -> Result<LogStore, StorageError> {
        let shown = dir.display().to_string();
        let dir_str = dir.to_str().ok_or_else(|| StorageError::InvalidDir { dir: shown.clone() })?;
        std::fs::create_dir_all(dir)
            .map_err(|source| StorageError::CreateDir { dir: shown.clone(), source })?;
        let cfg = Config {
            dir: dir_str.to_owned(),
            recovery_mode: RecoveryMode::TolerateTailCorruption,
            target_file_size: ReadableSize::mb(TARGET_FILE_SIZE_MB),
            purge_threshold: ReadableSize::gb(PURGE_THRESHOLD_GB),
            ..Config::default()
        };
        let engine =
            Engine::open(cfg).map_err(|source| StorageError::Engine { dir: shown.clone(), source })?;
        Ok(LogStore { engine: Arc::new(engine), dir: shown.into(), groups: Mutex::new(HashMap::new()) })
    }

    /// Returns the storage of one group, loading its state from the engine
    /// the first time. A group the engine knows nothing of comes back empty
    /// ([`GroupStorage::is_empty`]); nothing is written until the caller
    /// writes a batch for it.
    pub fn group(&self, group_id: u64) -> Result<GroupStorage, StorageError> {
        let mut groups = self.groups.lock();
        let meta = match groups.get(&group_id) {
            Some(meta) => meta.clone(),
            None => {
                let meta = Arc::new(RwLock::new(self.load_meta(group_id)?));
                groups.insert(group_id, meta.clone());
                meta
            }
        };
        Ok(GroupStorage { group_id, engine: self.engine.clone(), dir: self.dir.clone(), meta })
    }

    /// The log's directory.
    pub fn dir(&self) -> &str {
        &self.dir
    }

    /// Ids of the groups the engine holds anything for (entries or state),
    /// in ascending order.
    pub fn groups(&self) -> Vec<u64> {
        let mut ids = self.engine.raft_groups();
        ids.sort_unstable();
        ids
    }

    /// Writes `batch` and, when `sync` is true, fsyncs it before returning;
    /// returns the bytes written. Writes of concurrent callers are grouped
    /// into one fsync by raft-engine. The batch is empty afterwards and can
    /// be reused.
    ///
    /// An empty batch is not written and not fsynced, even with `sync`.
    pub fn write(&self, batch: &mut LogBatch, sync: bool) -> Result<usize, StorageError> {
        self.engine
            .write(batch, sync)
            .map_err(|source| StorageError::Engine { dir: self.dir.to_string(), source })
    }

    /// Deletes log files that no group needs any more; call it after
    /// compactions. raft-engine rewrites the live entries of groups that
    /// hold the oldest files back into its rewrite queue, so one lagging
    /// group does not pin the whole log.
    pub fn purge(&self) -> Result<(), StorageError> {
        // The ids raft-engine returns are groups it would like compacted;
        // compaction follows snapshots here, so they are only advisory.
        self.engine
            .purge_expired_files()
            .map(|_| ())
            .map_err(|source| StorageError::Engine { dir: self.dir.to_string(), source })
    }

    /// Drops everything stored for `group` (its entries and its state,
    /// `Command::Clean`) and fsyncs; the group's next handle is empty, as
    /// a group this node never held. For a replica the group's
    /// configuration no longer holds (moved to another node): nothing
    /// sends it entries any more, and a move back starts from a snapshot.
    pub fn clean_group(&self, group: u64) -> Result<(), StorageError> {
        let mut batch = LogBatch::default();
        batch.add_command(group, Command::Clean);
        self.write(&mut batch, true)?;
        self.groups.lock().remove(&group);
        Ok(())
    }

    /// Reads one group's stored messages.
    fn load_meta(&self, group: u64) -> Result<GroupMeta, StorageError> {
        Ok(GroupMeta {
            hard_state: self.load(group, HARD_STATE_KEY, "hard_state")?,
            conf_state: self.load(group, CONF_STATE_KEY, "conf_state")?,
            conf_index: self.load::<SnapshotMetadata>(group, CONF_INDEX_KEY, "conf_index")?.index,
            snapshot: self.load(group, SNAPSHOT_META_KEY, "snapshot_meta")?,
            provider: None,
            recent: RecentEntries::default(),
        })
    }

    /// Reads one message, or its default when none is stored.
    fn load<M: protobuf::Message>(
        &self,
        group: u64,
        key: &[u8],
        name: &'static str,
    ) -> Result<M, StorageError> {
        self.engine
            .get_message::<M>(group, key)
            .map(|stored| stored.unwrap_or_else(M::new))
            .map_err(|source| StorageError::Decode { dir: self.dir.to_string(), group, key: name, source })
    }
}

/// The in-memory view of one group's stored state, shared by its handles.
struct GroupMeta {
    /// The last hard state added to a batch.
    hard_state: HardState,
    /// The last conf state added to a batch.
    conf_state: ConfState,
    /// The index at which `conf_state` took effect.
    conf_index: u64,
    /// The snapshot covering the log up to and including `snapshot.index`
    /// (all zero when none).
    snapshot: SnapshotMetadata,
    /// Builds snapshots for followers; not stored.
    provider: Option<SnapshotProvider>,
    /// The newest entries appended; not stored.
    recent: RecentEntries,
}

/// Bytes of entry data a group keeps in [`RecentEntries`].
const RECENT_ENTRY_BYTES: usize = 8 << 20;

/// The newest entries appended to a group, in index order without gaps.
/// raft-rs reads entries back from storage once they are committed, right
/// after they were written; serving those reads from here saves reading,
/// decompressing and decoding them from the engine (entry data is shared,
/// not copied). Bounded by [`RECENT_ENTRY_BYTES`]; older reads go to the
/// engine.
#[derive(Default)]
struct RecentEntries {
    entries: VecDeque<Entry>,
    bytes: usize,
}

impl RecentEntries {
    /// Mirrors an append: entries from `new[0].index` on replace the ones
    /// held from there (a conflicting suffix), and a gap starts afresh.
    fn append(&mut self, new: &[Entry]) {
        let Some(first) = new.first().map(|e| e.index) else { return };
        while self.entries.back().is_some_and(|e| e.index >= first) {
            self.pop_back();
        }
        if self.entries.back().is_some_and(|e| e.index + 1 != first) {
            self.clear();
        }
        for e in new {
            self.bytes += e.data.len() + e.context.len();
            self.entries.push_back(e.clone());
        }
        while self.bytes > RECENT_ENTRY_BYTES && self.entries.len() > 1 {
            self.pop_front();
        }
    }

    /// Drops entries below `index`.
    fn compact_to(&mut self, index: u64) {
        while self.entries.front().is_some_and(|e| e.index < index) {
            self.pop_front();
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    fn pop_back(&mut self) {
        if let Some(e) = self.entries.pop_back() {
            self.bytes -= e.data.len() + e.context.len();
        }
    }

    fn pop_front(&mut self) {
        if let Some(e) = self.entries.pop_front() {
            self.bytes -= e.data.len() + e.context.len();
        }
    }

    /// The term of entry `index`, if held.
    fn term(&self, index: u64) -> Option<u64> {
        let first = self.entries.front()?.index;
        let e = self.entries.get(usize::try_from(index.checked_sub(first)?).ok()?)?;
        Some(e.term)
    }

    /// `[low, high)` if every one of them is held.
    fn get(&self, low: u64, high: u64) -> Option<Vec<Entry>> {
        let first = self.entries.front()?.index;
        let last = self.entries.back()?.index;
        if low < first || high > last + 1 || low >= high {
            return None;
        }
        let start = (low - first) as usize;
        Some(self.entries.range(start..start + (high - low) as usize).cloned().collect())
    }
}

/// One Raft group's storage over the node's shared raft-engine log; the
/// [`raft::Storage`] that raft-rs reads.
///
/// Handles are cheap to clone and share the group's in-memory view. Reads
/// go to the engine (log indexes) or to the view (hard state, conf state,
/// snapshot metadata); writes go into the caller's [`LogBatch`].
#[derive(Clone)]
pub struct GroupStorage {
    /// The Raft group (raft-engine's region id).
    group_id: u64,
    /// The node's engine.
    engine: Arc<Engine>,
    /// The engine's directory, for error messages.
    dir: Arc<str>,
    /// State shared by all handles of this group.
    meta: Arc<RwLock<GroupMeta>>,
}

impl GroupStorage {
    /// The Raft group id.
    pub fn group_id(&self) -> u64 {
        self.group_id
    }

    /// True when the group has never been initialised: no hard state, no
    /// conf state, no snapshot and no entries.
    pub fn is_empty(&self) -> bool {
        let meta = self.meta.read();
        meta.hard_state == HardState::default()
            && meta.conf_state == ConfState::default()
            && meta.snapshot.index == 0
            && self.engine.last_index(self.group_id).is_none()
    }

    /// Bootstraps a brand-new group with `voters` as its first
    /// configuration: writes the conf state durably (with fsync). Every
    /// founding replica must be initialised with the same voters. Fails
    /// with [`StorageError::AlreadyInitialized`] when the group has state.
    pub fn initialize(&self, store: &LogStore, voters: &[u64]) -> Result<(), StorageError> {
        assert!(
            Arc::ptr_eq(&self.engine, &store.engine),
            "group {}: initialize called with another node's LogStore",
            self.group_id
        );
        assert!(!voters.is_empty(), "group {}: cannot bootstrap without voters", self.group_id);
        if !self.is_empty() {
            return Err(StorageError::AlreadyInitialized { group: self.group_id });
        }
        let cs = ConfState { voters: voters.to_vec(), ..Default::default() };
        let mut batch = LogBatch::default();
        self.put(&mut batch, CONF_STATE_KEY, "conf_state", &cs)?;
        store.write(&mut batch, true)?;
        self.meta.write().conf_state = cs;
        Ok(())
    }

    /// Adds `entries` (consecutive indexes) to `batch`.
    ///
    /// Entries that overlap the log replace it from their first index on:
    /// raft-engine truncates the conflicting suffix itself when the batch is
    /// applied, and again when the log is replayed, so a shorter append of
    /// newer terms also shortens the log.
    ///
    /// The first index must lie in `snapshot index + 1 ..= last_index + 1`,
    /// checked against the engine as it is now; raft-engine would otherwise
    /// panic after writing the batch, and a hole would panic again on every
    /// open. So add at most one run of entries per group to a batch (a
    /// raft-rs `Ready` carries one), or write the batch in between.
    pub fn append(&self, batch: &mut LogBatch, entries: &[Entry]) -> Result<(), StorageError> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        let lowest = self.meta.read().snapshot.index + 1;
        let highest = raft::Storage::last_index(self).unwrap_or_default() + 1;
        if first.index < lowest || first.index > highest {
            return Err(StorageError::AppendOutOfRange {
                group: self.group_id,
                index: first.index,
                lowest,
                highest,
            });
        }
        for pair in entries.windows(2) {
            if pair[1].index != pair[0].index + 1 {
                return Err(StorageError::AppendOutOfRange {
                    group: self.group_id,
                    index: pair[1].index,
                    lowest: pair[0].index + 1,
                    highest: pair[0].index + 1,
                });
            }
        }
        batch.add_entries::<EntryCodec>(self.group_id, entries).map_err(|source| StorageError::Batch {
            group: self.group_id,
            what: "entries",
            source,
        })?;
        self.meta.write().recent.append(entries);
        Ok(())
    }

    /// Adds the hard state to `batch` and makes it the group's current one.
    pub fn set_hard_state(&self, batch: &mut LogBatch, hs: &HardState) -> Result<(), StorageError> {
        self.put(batch, HARD_STATE_KEY, "hard_state", hs)?;
        self.meta.write().hard_state = hs.clone();
        Ok(())
    }

    /// Adds the conf state to `batch` and makes it the group's current one
    /// (after the configuration change of entry `index` has been applied).
    pub fn set_conf_state(
        &self,
        batch: &mut LogBatch,
        cs: &ConfState,
        index: u64,
    ) -> Result<(), StorageError> {
        self.put(batch, CONF_STATE_KEY, "conf_state", cs)?;
        self.put(batch, CONF_INDEX_KEY, "conf_index", &SnapshotMetadata { index, ..Default::default() })?;
        let mut meta = self.meta.write();
        meta.conf_state = cs.clone();
        meta.conf_index = index;
        Ok(())
    }

    /// Records that a snapshot taken locally at (`meta.index`, `meta.term`,
    /// `meta.conf_state`) now covers the log up to `meta.index`: adds the
    /// metadata to `batch`, and from now on the log starts at
    /// `meta.index + 1`. Once the batch is written, call
    /// [`compact_to`](Self::compact_to)`(meta.index + 1)` to drop the
    /// covered entries.
    ///
    /// The snapshot index is committed (it has been applied), so a stored
    /// commit index below it is raised with it: raft-rs refuses to start
    /// from a hard state whose commit lies below the first index - 1.
    pub fn set_snapshot_meta(
        &self,
        batch: &mut LogBatch,
        meta: &SnapshotMetadata,
    ) -> Result<(), StorageError> {
        let current = self.meta.read().snapshot.index;
        if meta.index < current {
            return Err(StorageError::SnapshotOutOfDate {
                group: self.group_id,
                index: meta.index,
                snapshot_index: current,
            });
        }
        let last = raft::Storage::last_index(self).unwrap_or_default();
        assert!(
            meta.index <= last,
            "group {}: snapshot at index {} covers entries past the last index {}",
            self.group_id,
            meta.index,
            last
        );
        if meta.index > current {
            // The entry is in the log (current < index <= last): a snapshot
            // whose term disagrees with it would make this replica diverge.
            let term = self.entry_term(meta.index)?;
            assert_eq!(
                term, meta.term,
                "group {}: snapshot at index {} has term {} but the log has term {}",
                self.group_id, meta.index, meta.term, term
            );
        }
        self.put(batch, SNAPSHOT_META_KEY, "snapshot_meta", meta)?;
        let mut hs = self.meta.read().hard_state.clone();
        if hs.commit < meta.index {
            hs.commit = meta.index;
            self.put(batch, HARD_STATE_KEY, "hard_state", &hs)?;
        }
        let mut view = self.meta.write();
        view.snapshot = meta.clone();
        view.hard_state = hs;
        Ok(())
    }

    /// The metadata of the snapshot covering the log (index 0 when none).
    pub fn snapshot_meta(&self) -> SnapshotMetadata {
        self.meta.read().snapshot.clone()
    }

    /// The current hard state.
    pub fn hard_state(&self) -> HardState {
        self.meta.read().hard_state.clone()
    }

    /// The current conf state.
    pub fn conf_state(&self) -> ConfState {
        self.meta.read().conf_state.clone()
    }

    /// The index of the entry (or snapshot) whose configuration change made
    /// the current conf state; 0 for the founding configuration.
    pub fn conf_index(&self) -> u64 {
        self.meta.read().conf_index
    }

    /// Drops the log entries below `index`, which must be covered by the
    /// stored snapshot (`index <= snapshot index + 1`).
    ///
    /// raft-engine writes the compaction without fsync and only logs a
    /// failure; that is safe because the snapshot metadata written earlier
    /// is what bounds reads: entries that survive a crash below it are never
    /// read, and the next compaction drops them.
    pub fn compact_to(&self, index: u64) {
        let snapshot_index = self.meta.read().snapshot.index;
        assert!(
            index <= snapshot_index + 1,
            "group {}: compact_to({}) would drop entries past the snapshot at index {}",
            self.group_id,
            index,
            snapshot_index
        );
        self.engine.compact_to(self.group_id, index);
        self.meta.write().recent.compact_to(index);
    }

    /// Installs a snapshot received from the leader: adds to `batch` the
    /// removal of every log entry, the snapshot metadata, the snapshot's
    /// conf state and a hard state whose commit (and term) reach the
    /// snapshot. The log then starts at `snapshot index + 1`. The caller
    /// restores the shard from the snapshot's data.
    ///
    /// Add it to the batch before this group's entries and hard state of the
    /// same `Ready`: it drops the entries the engine holds now, and it must
    /// not drop the ones that follow it.
    pub fn apply_snapshot(&self, batch: &mut LogBatch, snap: &Snapshot) -> Result<(), StorageError> {
        let meta = snap.get_metadata();
        let current = self.meta.read().snapshot.index;
        if meta.index <= current {
            return Err(StorageError::SnapshotOutOfDate {
                group: self.group_id,
                index: meta.index,
                snapshot_index: current,
            });
        }
        // Every entry goes, also those past the snapshot index (they may
        // conflict with the leader): compacting past the engine's last
        // index empties the group's entries and leaves its key-value map
        // alone. An empty run accepts any next index, so the entries after
        // the snapshot can follow in the same batch.
        let engine_last = self.engine.last_index(self.group_id).unwrap_or_default();
        let drop_below = (meta.index + 1).max(engine_last + 1);
        batch.add_command(self.group_id, Command::Compact { index: drop_below });
        self.put(batch, SNAPSHOT_META_KEY, "snapshot_meta", meta)?;
        self.put(batch, CONF_STATE_KEY, "conf_state", meta.get_conf_state())?;
        self.put(
            batch,
            CONF_INDEX_KEY,
            "conf_index",
            &SnapshotMetadata { index: meta.index, ..Default::default() },
        )?;
        let mut hs = self.meta.read().hard_state.clone();
        hs.commit = hs.commit.max(meta.index);
        hs.term = hs.term.max(meta.term);
        self.put(batch, HARD_STATE_KEY, "hard_state", &hs)?;
        let mut view = self.meta.write();
        view.snapshot = meta.clone();
        view.conf_state = meta.get_conf_state().clone();
        view.conf_index = meta.index;
        view.hard_state = hs;
        view.recent.clear();
        Ok(())
    }

    /// Reads every entry of the group's log once, so that one raft-engine
    /// cannot read stops the start with the group and the indexes named:
    /// raft-rs panics on such a read. The file check before the engine
    /// opens ([`log_check`](super::log_check)) cannot see all damage inside
    /// a batch (a flipped compression flag, which no checksum covers, makes
    /// a sound block undecodable).
    pub fn check_readable(&self) -> Result<(), StorageError> {
        const CHUNK: u64 = 1024;
        let first = self.meta.read().snapshot.index + 1;
        let Some(last) = self.engine.last_index(self.group_id) else { return Ok(()) };
        let mut low = first;
        let mut entries = Vec::new();
        while low <= last {
            let high = (low + CHUNK).min(last + 1);
            entries.clear();
            match self.engine.fetch_entries_to::<EntryCodec>(self.group_id, low, high, None, &mut entries) {
                Ok(_) if entries.len() as u64 == high - low => {}
                Ok(_) => {
                    return Err(StorageError::Read {
                        dir: self.dir.to_string(),
                        group: self.group_id,
                        low,
                        high,
                        source: raft_engine::Error::Corruption(format!(
                            "{} of {} entries returned",
                            entries.len(),
                            high - low
                        )),
                    })
                }
                Err(source) => {
                    return Err(StorageError::Read {
                        dir: self.dir.to_string(),
                        group: self.group_id,
                        low,
                        high,
                        source,
                    })
                }
            }
            low = high;
        }
        Ok(())
    }

    /// Sets what [`raft::Storage::snapshot`] calls to build a snapshot for
    /// a follower.
    pub fn set_snapshot_provider(&self, f: SnapshotProvider) {
        self.meta.write().provider = Some(f);
    }

    /// Reads the term of the entry at `idx`, which must lie in the log
    /// (snapshot index < `idx` <= last index).
    fn entry_term(&self, idx: u64) -> Result<u64, StorageError> {
        // raft-rs asks the term of every entry just persisted: answered from
        // the recent entries, not by reading and decompressing it back.
        if let Some(term) = self.meta.read().recent.term(idx) {
            return Ok(term);
        }
        match self.engine.get_entry::<EntryCodec>(self.group_id, idx) {
            Ok(Some(entry)) => Ok(entry.term),
            Ok(None) => panic!(
                "group {}: index {} lies in the log (snapshot index {}) but the engine has no entry",
                self.group_id,
                idx,
                self.meta.read().snapshot.index
            ),
            Err(source) => Err(StorageError::Read {
                dir: self.dir.to_string(),
                group: self.group_id,
                low: idx,
                high: idx + 1,
                source,
            }),
        }
    }

    /// Adds one of the group's messages to `batch`.
    fn put<M: protobuf::Message>(
        &self,
        batch: &mut LogBatch,
        key: &[u8],
        what: &'static str,
        msg: &M,
    ) -> Result<(), StorageError> {
        batch.put_message(self.group_id, key.to_vec(), msg).map_err(|source| StorageError::Batch {
            group: self.group_id,
            what,
            source,
        })
    }
}

impl raft::Storage for GroupStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let meta = self.meta.read();
        Ok(RaftState::new(meta.hard_state.clone(), meta.conf_state.clone()))
    }

    /// Reads `[low, high)` from the engine, stopping once `max_size` bytes
    /// are reached (but returning at least one entry). Reads are synchronous,
    /// whatever `context` allows.
    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let snapshot_index = self.meta.read().snapshot.index;
        if low <= snapshot_index {
            return Err(raft::Error::Store(RaftStorageError::Compacted));
        }
        let last = self.last_index()?;
        assert!(
            high <= last + 1,
            "group {}: entries({}, {}) past the last index {}",
            self.group_id,
            low,
            high,
            last
        );
        if low >= high {
            return Ok(Vec::new());
        }
        let max_size = max_size.into();
        if let Some(mut entries) = self.meta.read().recent.get(low, high) {
            raft::util::limit_size(&mut entries, max_size);
            return Ok(entries);
        }
        // raft-engine counts the same encoded sizes as `limit_size`; the
        // latter runs again below so the result follows raft-rs exactly.
        let engine_max = match max_size {
            None | Some(NO_LIMIT) => None,
            Some(max) => Some(usize::try_from(max).unwrap_or(usize::MAX)),
        };
        let mut entries = Vec::with_capacity((high - low).min(1024) as usize);
        match self.engine.fetch_entries_to::<EntryCodec>(self.group_id, low, high, engine_max, &mut entries) {
            Ok(_) => {}
            Err(raft_engine::Error::EntryCompacted) => {
                return Err(raft::Error::Store(RaftStorageError::Compacted));
            }
            Err(source) => {
                return Err(StorageError::Read {
                    dir: self.dir.to_string(),
                    group: self.group_id,
                    low,
                    high,
                    source,
                }
                .into_raft());
            }
        }
        // The engine holds every index in (snapshot index, last index], so
        // a non-empty range yields at least one entry, starting at `low`.
        assert!(
            entries.first().map(|e| e.index) == Some(low),
            "group {}: the engine returned no entry at index {} (log {}..={})",
            self.group_id,
            low,
            snapshot_index + 1,
            last
        );
        raft::util::limit_size(&mut entries, max_size);
        Ok(entries)
    }

    /// The term of entry `idx`: the snapshot's term at the snapshot index,
    /// `Compacted` below it, `Unavailable` past the last index. Other
    /// entries are read from the engine.
    fn term(&self, idx: u64) -> raft::Result<u64> {
        let snapshot = {
            let meta = self.meta.read();
            (meta.snapshot.index, meta.snapshot.term)
        };
        if idx == snapshot.0 {
            return Ok(snapshot.1);
        }
        if idx < snapshot.0 {
            return Err(raft::Error::Store(RaftStorageError::Compacted));
        }
        if idx > self.last_index()? {
            return Err(raft::Error::Store(RaftStorageError::Unavailable));
        }
        self.entry_term(idx).map_err(StorageError::into_raft)
    }

    /// The snapshot index + 1 (1 for a group without snapshot).
    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.meta.read().snapshot.index + 1)
    }

    /// The engine's last index, or the snapshot index when the engine holds
    /// no later entry (right after a snapshot was installed).
    fn last_index(&self) -> raft::Result<u64> {
        let snapshot_index = self.meta.read().snapshot.index;
        Ok(self.engine.last_index(self.group_id).map_or(snapshot_index, |last| last.max(snapshot_index)))
    }

    /// Asks the snapshot provider; without one, the snapshot is
    /// temporarily unavailable.
    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        // Call outside the lock: the provider may read this storage.
        let provider = self.meta.read().provider.clone();
        match provider {
            Some(provide) => provide(request_index, to),
            None => Err(raft::Error::Store(RaftStorageError::SnapshotTemporarilyUnavailable)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protobuf::Message as _;
    use raft::Storage;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: format!("entry {index} term {term}").into_bytes().into(),
            ..Default::default()
        }
    }

    fn entries(range: std::ops::RangeInclusive<u64>, term: u64) -> Vec<Entry> {
        range.map(|i| entry(i, term)).collect()
    }

    fn ctx() -> GetEntriesContext {
        GetEntriesContext::empty(false)
    }

    fn hard_state(term: u64, vote: u64, commit: u64) -> HardState {
        HardState { term, vote, commit, ..Default::default() }
    }

    fn snapshot_meta(index: u64, term: u64, voters: &[u64]) -> SnapshotMetadata {
        let conf_state = ConfState { voters: voters.to_vec(), ..Default::default() };
        SnapshotMetadata { index, term, conf_state: Some(conf_state).into(), ..Default::default() }
    }

    fn is_compacted<T: std::fmt::Debug>(r: raft::Result<T>) -> bool {
        matches!(r, Err(raft::Error::Store(RaftStorageError::Compacted)))
    }

    /// Appends `ents` to group `g` alone in a batch, and writes it.
    fn append_and_write(store: &LogStore, g: &GroupStorage, ents: &[Entry]) {
        let mut batch = LogBatch::default();
        g.append(&mut batch, ents).unwrap();
        store.write(&mut batch, true).unwrap();
    }

    #[test]
    fn handles_can_move_across_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<LogStore>();
        send_sync::<GroupStorage>();
    }

    #[test]
    fn entries_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let written = entries(1..=10, 1);
        {
            let store = LogStore::open(dir.path()).unwrap();
            let g = store.group(1).unwrap();
            assert!(g.is_empty());
            g.initialize(&store, &[1, 2, 3]).unwrap();
            let mut batch = LogBatch::default();
            g.append(&mut batch, &written).unwrap();
            g.set_hard_state(&mut batch, &hard_state(1, 1, 5)).unwrap();
            assert!(store.write(&mut batch, true).unwrap() > 0);
            assert!(batch.is_empty());
            assert_eq!(g.entries(1, 11, None, ctx()).unwrap(), written);
        }
        let store = LogStore::open(dir.path()).unwrap();
        assert_eq!(store.groups(), vec![1]);
        let g = store.group(1).unwrap();
        assert!(!g.is_empty());
        assert_eq!(g.first_index().unwrap(), 1);
        assert_eq!(g.last_index().unwrap(), 10);
        assert_eq!(g.entries(1, 11, None, ctx()).unwrap(), written);
        assert_eq!(g.entries(3, 6, None, ctx()).unwrap(), written[2..5]);
        assert_eq!(g.term(0).unwrap(), 0);
        assert_eq!(g.term(7).unwrap(), 1);
        assert!(matches!(g.term(11), Err(raft::Error::Store(RaftStorageError::Unavailable))));
    }

    #[test]
    fn entries_honour_max_size() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(dir.path()).unwrap();
        let g = store.group(1).unwrap();
        let written = entries(1..=10, 1);
        append_and_write(&store, &g, &written);
        let two = u64::from(written[0].compute_size() + written[1].compute_size());
        assert_eq!(g.entries(1, 11, two, ctx()).unwrap(), written[..2]);
        // At least one entry, however small the limit.
        assert_eq!(g.entries(1, 11, 0, ctx()).unwrap(), written[..1]);
        assert_eq!(g.entries(1, 11, NO_LIMIT, ctx()).unwrap(), written);
        assert!(g.entries(4, 4, None, ctx()).unwrap().is_empty());
    }

    #[test]
    fn recent_entries_read_like_the_engine_through_conflicts_and_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(dir.path()).unwrap();
        let g = store.group(3).unwrap();
        append_and_write(&store, &g, &entries(1..=8, 1));
        // A new leader's entries replace the suffix from 5 on.
        append_and_write(&store, &g, &entries(5..=9, 2));
        let want: Vec<Entry> = entries(1..=4, 1).into_iter().chain(entries(5..=9, 2)).collect();
        assert_eq!(g.entries(1, 10, None, ctx()).unwrap(), want);
        assert_eq!(g.entries(3, 7, None, ctx()).unwrap(), want[2..6]);
        let terms = |g: &GroupStorage| (1..=9).map(|i| g.term(i).unwrap()).collect::<Vec<u64>>();
        let cached_terms = terms(&g);
        assert_eq!(cached_terms, want.iter().map(|e| e.term).collect::<Vec<_>>());
        // The engine, read through a store opened afresh (nothing cached),
        // holds the same.
        drop((g, store));
        let store = LogStore::open(dir.path()).unwrap();
        let g = store.group(3).unwrap();
        assert_eq!(g.entries(1, 10, None, ctx()).unwrap(), want);
        assert_eq!(terms(&g), cached_terms);
        // After compaction behind a snapshot, reads below it fail alike.
        append_and_write(&store, &g, &entries(10..=12, 2));
        let mut batch = LogBatch::default();
        g.set_snapshot_meta(&mut batch, &snapshot_meta(10, 2, &[1])).unwrap();
        store.write(&mut batch, true).unwrap();
        g.compact_to(11);
        assert!(matches!(
            g.entries(10, 12, None, ctx()),
            Err(raft::Error::Store(RaftStorageError::Compacted))
        ));
        assert_eq!(g.entries(11, 13, None, ctx()).unwrap(), entries(11..=12, 2));
        // A gap (entries from a snapshot on) starts the recent run afresh.
        let mut recent = RecentEntries::default();
        recent.append(&entries(1..=3, 1));
        recent.append(&entries(7..=8, 1));
        assert_eq!(recent.get(1, 2), None);
        assert_eq!(recent.get(7, 9), Some(entries(7..=8, 1)));
        assert_eq!(
            (recent.term(3), recent.term(7), recent.term(8), recent.term(9)),
            (None, Some(1), Some(1), None)
        );
    }

    #[test]
    fn hard_state_and_conf_state_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let cs = ConfState { voters: vec![1, 2, 3], learners: vec![4], ..Default::default() };
        {
            let store = LogStore::open(dir.path()).unwrap();
            let g = store.group(7).unwrap();
            g.initialize(&store, &[1, 2]).unwrap();
            assert!(matches!(
                g.initialize(&store, &[1, 2]),
                Err(StorageError::AlreadyInitialized { group: 7 })
            ));
            let mut batch = LogBatch::default();
            g.set_hard_state(&mut batch, &hard_state(4, 2, 0)).unwrap();
            g.set_conf_state(&mut batch, &cs, 7).unwrap();
            store.write(&mut batch, true).unwrap();
        }
        let store = LogStore::open(dir.path()).unwrap();
        let g = store.group(7).unwrap();
        let state = g.initial_state().unwrap();
        assert_eq!(state.hard_state, hard_state(4, 2, 0));
        assert_eq!(state.conf_state, cs);
        assert_eq!(g.conf_index(), 7, "the index of the change that made the conf state");
        assert!(state.initialized());
        assert!(!g.is_empty());
        // A group the engine never saw is empty, and reading it writes nothing.
        let other = store.group(8).unwrap();
        assert!(other.is_empty());
        assert_eq!(other.first_index().unwrap(), 1);
        assert_eq!(other.last_index().unwrap(), 0);
        assert_eq!(store.groups(), vec![7]);
    }

    #[test]
    fn handles_of_one_group_share_state() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(dir.path()).unwrap();
        let a = store.group(3).unwrap();
        let b = store.group(3).unwrap();
        let mut batch = LogBatch::default();
        a.set_hard_state(&mut batch, &hard_state(2, 1, 0)).unwrap();
        store.write(&mut batch, true).unwrap();
        assert_eq!(b.hard_state(), hard_state(2, 1, 0));
    }

    #[test]
    fn compaction_behind_a_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let check = |g: &GroupStorage| {
            assert_eq!(g.first_index().unwrap(), 51);
            assert_eq!(g.last_index().unwrap(), 60);
            assert_eq!(g.term(50).unwrap(), 3);
            assert!(is_compacted(g.term(49)));
            assert!(is_compacted(g.entries(40, 55, None, ctx())));
            assert!(is_compacted(g.entries(50, 55, None, ctx())));
            assert_eq!(g.entries(51, 61, None, ctx()).unwrap(), entries(51..=60, 3));
            assert_eq!(g.snapshot_meta(), snapshot_meta(50, 3, &[1]));
            // The commit follows the snapshot, as raft-rs requires.
            assert_eq!(g.hard_state().commit, 50);
        };
        {
            let store = LogStore::open(dir.path()).unwrap();
            let g = store.group(1).unwrap();
            g.initialize(&store, &[1]).unwrap();
            let mut batch = LogBatch::default();
            g.append(&mut batch, &entries(1..=60, 3)).unwrap();
            g.set_hard_state(&mut batch, &hard_state(3, 1, 40)).unwrap();
            store.write(&mut batch, true).unwrap();

            g.set_snapshot_meta(&mut batch, &snapshot_meta(50, 3, &[1])).unwrap();
            store.write(&mut batch, true).unwrap();
            g.compact_to(51);
            assert_eq!(g.engine.first_index(1), Some(51));
            check(&g);
            store.purge().unwrap();
            // An older snapshot is refused.
            assert!(matches!(
                g.set_snapshot_meta(&mut batch, &snapshot_meta(40, 3, &[1])),
                Err(StorageError::SnapshotOutOfDate { group: 1, index: 40, snapshot_index: 50 })
            ));
            // So is an append into the compacted prefix.
            assert!(matches!(
                g.append(&mut batch, &entries(50..=52, 4)),
                Err(StorageError::AppendOutOfRange { group: 1, index: 50, lowest: 51, highest: 61 })
            ));
            assert!(batch.is_empty());
        }
        let store = LogStore::open(dir.path()).unwrap();
        check(&store.group(1).unwrap());
    }

    #[test]
    fn overlapping_append_replaces_the_suffix() {
        let dir = tempfile::tempdir().unwrap();
        let expected: Vec<Entry> = entries(1..=6, 1).into_iter().chain(entries(7..=8, 2)).collect();
        {
            let store = LogStore::open(dir.path()).unwrap();
            let g = store.group(1).unwrap();
            append_and_write(&store, &g, &entries(1..=4, 1));
            append_and_write(&store, &g, &entries(5..=10, 1));
            assert_eq!(g.last_index().unwrap(), 10);
            append_and_write(&store, &g, &entries(7..=8, 2));
            assert_eq!(g.last_index().unwrap(), 8);
            assert_eq!(g.term(6).unwrap(), 1);
            assert_eq!(g.term(7).unwrap(), 2);
            assert_eq!(g.term(8).unwrap(), 2);
            assert_eq!(g.entries(1, 9, None, ctx()).unwrap(), expected);
        }
        // The replay on open truncates the same way.
        let store = LogStore::open(dir.path()).unwrap();
        let g = store.group(1).unwrap();
        assert_eq!(g.last_index().unwrap(), 8);
        assert_eq!(g.entries(1, 9, None, ctx()).unwrap(), expected);
    }

    #[test]
    fn appends_that_leave_a_hole_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(dir.path()).unwrap();
        let g = store.group(1).unwrap();
        let mut batch = LogBatch::default();
        // An empty group starts at 1.
        assert!(matches!(
            g.append(&mut batch, &entries(5..=10, 1)),
            Err(StorageError::AppendOutOfRange { group: 1, index: 5, lowest: 1, highest: 1 })
        ));
        append_and_write(&store, &g, &entries(1..=8, 1));
        assert!(matches!(
            g.append(&mut batch, &entries(10..=12, 1)),
            Err(StorageError::AppendOutOfRange { group: 1, index: 10, lowest: 1, highest: 9 })
        ));
        let mut gap = entries(9..=10, 1);
        gap.push(entry(12, 1));
        assert!(matches!(
            g.append(&mut batch, &gap),
            Err(StorageError::AppendOutOfRange { group: 1, index: 12, lowest: 11, highest: 11 })
        ));
        assert!(batch.is_empty());
        // The engine is still usable: nothing bad reached it.
        append_and_write(&store, &g, &entries(9..=9, 1));
        assert_eq!(g.last_index().unwrap(), 9);
    }

    #[test]
    fn groups_in_one_engine_are_independent() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = LogStore::open(dir.path()).unwrap();
            let a = store.group(1).unwrap();
            let b = store.group(2).unwrap();
            // Both groups in one batch, one fsync.
            let mut batch = LogBatch::default();
            a.append(&mut batch, &entries(1..=20, 1)).unwrap();
            b.append(&mut batch, &entries(1..=5, 7)).unwrap();
            a.set_hard_state(&mut batch, &hard_state(1, 1, 20)).unwrap();
            b.set_hard_state(&mut batch, &hard_state(7, 2, 3)).unwrap();
            store.write(&mut batch, true).unwrap();

            a.set_snapshot_meta(&mut batch, &snapshot_meta(15, 1, &[1])).unwrap();
            store.write(&mut batch, true).unwrap();
            a.compact_to(16);
            assert_eq!(b.first_index().unwrap(), 1);
            assert_eq!(b.entries(1, 6, None, ctx()).unwrap(), entries(1..=5, 7));
        }
        let store = LogStore::open(dir.path()).unwrap();
        assert_eq!(store.groups(), vec![1, 2]);
        let a = store.group(1).unwrap();
        let b = store.group(2).unwrap();
        assert_eq!((a.first_index().unwrap(), a.last_index().unwrap()), (16, 20));
        assert_eq!((b.first_index().unwrap(), b.last_index().unwrap()), (1, 5));
        assert_eq!(a.hard_state(), hard_state(1, 1, 20));
        assert_eq!(b.hard_state(), hard_state(7, 2, 3));
        assert_eq!(a.term(16).unwrap(), 1);
        assert_eq!(b.term(3).unwrap(), 7);
    }

    fn leader_snapshot(index: u64, term: u64, voters: &[u64]) -> Snapshot {
        let mut snap = Snapshot::default();
        snap.set_metadata(snapshot_meta(index, term, voters));
        snap.data = b"shard image".to_vec().into();
        snap
    }

    #[test]
    fn apply_snapshot_replaces_a_shorter_log() {
        let dir = tempfile::tempdir().unwrap();
        let snap = leader_snapshot(50, 5, &[1, 2, 3, 4]);
        let check = |g: &GroupStorage| {
            assert_eq!(g.first_index().unwrap(), 51);
            assert_eq!(g.last_index().unwrap(), 52);
            assert_eq!(g.term(50).unwrap(), 5);
            assert!(is_compacted(g.entries(10, 51, None, ctx())));
            assert_eq!(g.entries(51, 53, None, ctx()).unwrap(), entries(51..=52, 5));
            let state = g.initial_state().unwrap();
            assert_eq!(state.conf_state.voters, vec![1, 2, 3, 4]);
            assert_eq!(state.hard_state.commit, 50);
            assert_eq!(state.hard_state.term, 5);
            assert_eq!(g.snapshot_meta(), *snap.get_metadata());
        };
        {
            let store = LogStore::open(dir.path()).unwrap();
            let g = store.group(1).unwrap();
            g.initialize(&store, &[1, 2, 3]).unwrap();
            append_and_write(&store, &g, &entries(1..=10, 1));
            // One Ready: snapshot, then the entries after it.
            let mut batch = LogBatch::default();
            g.apply_snapshot(&mut batch, &snap).unwrap();
            g.append(&mut batch, &entries(51..=52, 5)).unwrap();
            store.write(&mut batch, true).unwrap();
            check(&g);
            assert!(matches!(
                g.apply_snapshot(&mut batch, &leader_snapshot(50, 5, &[1])),
                Err(StorageError::SnapshotOutOfDate { group: 1, index: 50, snapshot_index: 50 })
            ));
        }
        let store = LogStore::open(dir.path()).unwrap();
        check(&store.group(1).unwrap());
    }

    #[test]
    fn apply_snapshot_drops_a_longer_conflicting_log() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = LogStore::open(dir.path()).unwrap();
            let g = store.group(1).unwrap();
            append_and_write(&store, &g, &entries(1..=60, 1));
            let mut batch = LogBatch::default();
            g.apply_snapshot(&mut batch, &leader_snapshot(50, 5, &[1, 2, 3])).unwrap();
            store.write(&mut batch, true).unwrap();
            assert_eq!(g.last_index().unwrap(), 50);
            assert_eq!(g.term(50).unwrap(), 5);
            // The follower then receives the leader's entries after 50.
            append_and_write(&store, &g, &entries(51..=53, 5));
        }
        let store = LogStore::open(dir.path()).unwrap();
        let g = store.group(1).unwrap();
        assert_eq!((g.first_index().unwrap(), g.last_index().unwrap()), (51, 53));
        assert_eq!(g.entries(51, 54, None, ctx()).unwrap(), entries(51..=53, 5));
    }

    #[test]
    fn snapshot_comes_from_the_provider() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(dir.path()).unwrap();
        let g = store.group(1).unwrap();
        assert!(matches!(
            g.snapshot(10, 2),
            Err(raft::Error::Store(RaftStorageError::SnapshotTemporarilyUnavailable))
        ));
        let reader = g.clone();
        g.set_snapshot_provider(Arc::new(move |request_index, to| {
            // The provider may read the storage it serves.
            let _ = reader.hard_state();
            Ok(leader_snapshot(request_index, 3, &[1, to]))
        }));
        let snap = g.snapshot(10, 2).unwrap();
        assert_eq!(snap.get_metadata().index, 10);
        assert_eq!(snap.get_metadata().get_conf_state().voters, vec![1, 2]);
    }

    /// raft-rs itself runs on the storage: a single-voter group elects
    /// itself, commits proposals, and after a restart has the same log.
    #[test]
    fn raft_rs_runs_on_it_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let config = raft::Config { id: 1, election_tick: 10, heartbeat_tick: 3, ..Default::default() };
        // Persists and applies everything raft-rs has ready; returns the
        // data of the applied normal entries.
        fn drive(node: &mut raft::RawNode<GroupStorage>, store: &LogStore, applied: &mut Vec<Vec<u8>>) {
            while node.has_ready() {
                let mut ready = node.ready();
                let g = node.store().clone();
                let mut batch = LogBatch::default();
                if !ready.snapshot().is_empty() {
                    g.apply_snapshot(&mut batch, ready.snapshot()).unwrap();
                }
                g.append(&mut batch, ready.entries()).unwrap();
                if let Some(hs) = ready.hs() {
                    g.set_hard_state(&mut batch, hs).unwrap();
                }
                store.write(&mut batch, true).unwrap();
                let mut committed = ready.take_committed_entries();
                let mut light = node.advance(ready);
                if let Some(commit) = light.commit_index() {
                    let mut hs = g.hard_state();
                    hs.commit = commit;
                    g.set_hard_state(&mut batch, &hs).unwrap();
                    store.write(&mut batch, true).unwrap();
                }
                committed.extend(light.take_committed_entries());
                applied.extend(committed.into_iter().filter(|e| !e.data.is_empty()).map(|e| e.data.to_vec()));
                node.advance_apply();
            }
        }

        let mut applied = Vec::new();
        let last = {
            let store = LogStore::open(dir.path()).unwrap();
            let g = store.group(9).unwrap();
            g.initialize(&store, &[1]).unwrap();
            let mut node = raft::RawNode::new(&config, g, &logger).unwrap();
            node.campaign().unwrap();
            drive(&mut node, &store, &mut applied);
            for i in 0..5u8 {
                node.propose(vec![], vec![i]).unwrap();
                drive(&mut node, &store, &mut applied);
            }
            assert_eq!(applied, (0..5u8).map(|i| vec![i]).collect::<Vec<_>>());
            node.raft.raft_log.last_index()
        };
        let store = LogStore::open(dir.path()).unwrap();
        let g = store.group(9).unwrap();
        assert_eq!(g.last_index().unwrap(), last);
        assert_eq!(g.hard_state().commit, last);
        let node = raft::RawNode::new(&config, g, &logger).unwrap();
        assert_eq!(node.raft.raft_log.last_index(), last);
        assert_eq!(node.raft.raft_log.committed, last);
        assert!(node.raft.term >= 1);
    }
}
