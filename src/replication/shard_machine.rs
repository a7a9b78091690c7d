//! A shard as a Raft state machine.
//!
//! Log entries are [`ShardProposal`]s: a batch of shard commands tagged with
//! the step of the ingest pipeline that produced them (the catalog's log
//! index and the step within it). The machine remembers the highest tag it
//! applied (its *watermark*) and skips a proposal at or below it, so the
//! pipeline can re-propose the steps of an ingest that a crash interrupted
//! without applying anything twice.
//!
//! A proposal also names the tag it must follow (`after`: the previous
//! step the pipeline sent to this shard). The pipeline proposes the steps of
//! several entries before the first is committed; if one of them never
//! reached the log (a leader change drops it), a later one must not be
//! applied past the hole, or the retry of the lost one would be skipped as
//! a repeat. So a proposal whose `after` is above the watermark is refused
//! as a *gap*: nothing applied, the watermark unchanged, and the pipeline
//! retries from the lost step.
//!
//! Snapshots are the shard's snapshot files (`shard-NNN.snap` in the
//! node's data directory), with the Raft applied index and the watermark in
//! the file's extra section; the log is compacted behind them.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock, RwLockReadGuard};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::codec;
use super::driver::{ApplyResult, Halt, StateMachine};
use super::error::MachineError;
use crate::shard::{snapshot, ApplyOutcome, Command, Shard, ShardError};

/// Commands applied under one hold of a shard's write lock.
pub const APPLY_CHUNK: usize = 256;

/// Position of a step in the ingest pipeline: (catalog log index, step).
pub type Tag = (u64, u32);

/// Errors of a shard's state machine, each naming the shard and, where
/// there is one, the log index.
#[derive(Debug, Error)]
pub enum ShardMachineError {
    /// The shard's snapshot file cannot be read or is damaged (it names
    /// the file, the byte offset and the problem).
    #[error(transparent)]
    Shard(#[from] ShardError),
    /// A log entry this build cannot decode.
    #[error("shard {shard} cannot decode entry {index}: {source}")]
    Undecodable {
        /// The shard.
        shard: u32,
        /// The entry's log index.
        index: u64,
        /// The decoder's error.
        #[source]
        source: bincode::error::DecodeError,
    },
    /// The replication metadata (applied index, watermark) cannot be
    /// encoded for a snapshot.
    #[error("shard {shard}: encoding its replication metadata at index {index}: {source}")]
    EncodeMetadata {
        /// The shard.
        shard: u32,
        /// The applied index being recorded.
        index: u64,
        /// The encoder's error.
        #[source]
        source: bincode::error::EncodeError,
    },
    /// The snapshot file could not be written.
    #[error("shard {shard}: writing its snapshot at index {index}: {source}")]
    WriteSnapshot {
        /// The shard.
        shard: u32,
        /// The index the snapshot covers.
        index: u64,
        /// The shard layer's error (it names the file).
        #[source]
        source: ShardError,
    },
    /// A snapshot received from the leader is damaged.
    #[error("shard {shard}: the snapshot from the leader at index {index}: {source}")]
    ReceivedSnapshot {
        /// The shard.
        shard: u32,
        /// The index it covers.
        index: u64,
        /// The shard layer's error.
        #[source]
        source: ShardError,
    },
    /// A snapshot received from the leader has unreadable replication
    /// metadata.
    #[error("shard {shard}: the snapshot from the leader at index {index}: replication metadata: {source}")]
    ReceivedMetadata {
        /// The shard.
        shard: u32,
        /// The index it covers.
        index: u64,
        /// The decoder's error.
        #[source]
        source: bincode::error::DecodeError,
    },
}

/// One Raft entry of a shard group.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShardProposal {
    /// The step the shard must have applied first (the previous step sent
    /// to it, or its watermark when the pipeline started sending).
    pub after: Tag,
    /// The pipeline step that produced it.
    pub tag: Tag,
    /// The commands, applied in order.
    pub commands: Vec<Command>,
}

/// A borrowed [`ShardProposal`]: encodes to the same bytes without
/// copying the commands.
#[derive(Serialize)]
struct ShardProposalRef<'a> {
    after: Tag,
    tag: Tag,
    commands: &'a [Command],
}

impl ShardProposal {
    /// Encodes the proposal for the log.
    pub fn encode(&self) -> Vec<u8> {
        Self::encode_parts(self.after, self.tag, &self.commands)
    }

    /// Encodes a proposal from its parts, without copying the commands.
    pub fn encode_parts(after: Tag, tag: Tag, commands: &[Command]) -> Vec<u8> {
        bincode::serde::encode_to_vec(ShardProposalRef { after, tag, commands }, bincode::config::standard())
            .unwrap_or_default()
    }

    /// Decodes a log entry.
    pub fn decode(data: &[u8]) -> Result<ShardProposal, bincode::error::DecodeError> {
        codec::decode(data).map(|(p, _)| p)
    }
}

/// Commands a proposer still holds when it proposes them, handed to the
/// applier with the entry (see [`StateMachine::apply_proposed`]) so that
/// this node applies them without decoding the entry again. They must be
/// the very commands the entry encodes.
pub trait CommandSource: Send {
    /// The commands, in order.
    fn commands(&self) -> &[Command];
}

/// The local side of a shard proposal: its tag and where its commands are.
pub struct ProposedCommands {
    /// The tag it follows.
    pub after: Tag,
    /// The proposal's tag.
    pub tag: Tag,
    /// Its commands.
    pub source: Box<dyn CommandSource>,
}

/// What applying a proposal did.
#[derive(Debug, Default)]
pub struct ShardApplied {
    /// The shard's outcome (empty when skipped).
    pub outcome: ApplyOutcome,
    /// True when the tag was at or below the watermark: already applied.
    pub skipped: bool,
    /// True when the watermark was below the proposal's `after`: an
    /// earlier step is missing, so nothing was applied.
    pub gap: bool,
}

/// The state behind the lock: the shard and what the log has put into it.
pub struct ShardState {
    /// The shard.
    pub shard: Shard,
    /// Highest pipeline tag applied.
    pub watermark: Tag,
    /// Raft index of the last entry applied.
    pub applied_index: u64,
}

#[derive(Serialize, Deserialize)]
struct Extra {
    applied_index: u64,
    watermark: Tag,
}

/// A shard group's state machine.
pub struct ShardMachine {
    /// The shard's id.
    pub shard_id: u32,
    path: PathBuf,
    /// Readers take the read lock (through [`read_state`](ShardMachine::read_state));
    /// applying a batch takes the write lock for that batch only.
    state: RwLock<ShardState>,
    /// Held while a snapshot file is written (the applier and a follower's
    /// snapshot request may ask at once, and both write the same file) and
    /// while an entry is applied, so that a snapshot holds whole entries.
    snapshot_lock: Mutex<()>,
    applied: AtomicU64,
    snapshot_index: AtomicU64,
}

impl ShardMachine {
    /// Opens shard `shard_id` from its snapshot in `dir` (a fresh shard when
    /// there is none). A corrupt snapshot is an error that names the file.
    pub fn open(dir: &Path, shard_id: u32) -> Result<ShardMachine, ShardMachineError> {
        let path = dir.join(format!("shard-{shard_id:03}.snap"));
        let (shard, extra) = if path.exists() {
            let (shard, extra) = snapshot::read_with_extra(&path)?;
            let extra: Extra = codec::decode(&extra).map(|(e, _)| e).map_err(|e| ShardError::Corrupt {
                path: path.display().to_string(),
                offset: 0,
                problem: format!("replication metadata: {e}"),
            })?;
            (shard, extra)
        } else {
            (Shard::new(shard_id), Extra { applied_index: 0, watermark: (0, 0) })
        };
        Ok(ShardMachine {
            shard_id,
            path,
            state: RwLock::new(ShardState {
                shard,
                watermark: extra.watermark,
                applied_index: extra.applied_index,
            }),
            snapshot_lock: Mutex::new(()),
            applied: AtomicU64::new(extra.applied_index),
            snapshot_index: AtomicU64::new(extra.applied_index),
        })
    }

    /// Writes a bulk-built shard as the snapshot of a new data directory
    /// (nothing applied from the log yet).
    pub fn install(dir: &Path, shard: &Shard) -> Result<(), ShardMachineError> {
        let extra = Extra { applied_index: 0, watermark: (0, 0) };
        let bytes = bincode::serde::encode_to_vec(&extra, bincode::config::standard())
            .map_err(|source| ShardMachineError::EncodeMetadata { shard: shard.id, index: 0, source })?;
        snapshot::write_with_extra(shard, &dir.join(format!("shard-{:03}.snap", shard.id)), &bytes)
            .map_err(|source| ShardMachineError::WriteSnapshot { shard: shard.id, index: 0, source })
    }

    /// Highest pipeline tag applied.
    pub fn watermark(&self) -> Tag {
        self.state.read().watermark
    }

    /// The state, for reading: every applied write is visible.
    pub fn read_state(&self) -> RwLockReadGuard<'_, ShardState> {
        self.state.read()
    }

    /// Writes a snapshot now; returns the index it covers. Staged event
    /// rows are flushed first, under the write lock; the file is written
    /// under the read lock.
    pub fn snapshot_now(&self) -> Result<u64, ShardMachineError> {
        let _writing = self.snapshot_lock.lock();
        let mut state = self.state.write();
        state.shard.flush_events();
        let state = parking_lot::RwLockWriteGuard::downgrade(state);
        let (shard, index) = (self.shard_id, state.applied_index);
        let extra = Extra { applied_index: index, watermark: state.watermark };
        let bytes = bincode::serde::encode_to_vec(&extra, bincode::config::standard())
            .map_err(|source| ShardMachineError::EncodeMetadata { shard, index, source })?;
        snapshot::write_with_extra(&state.shard, &self.path, &bytes)
            .map_err(|source| ShardMachineError::WriteSnapshot { shard, index, source })?;
        self.snapshot_index.store(index, Ordering::Release);
        Ok(index)
    }
}

impl ShardMachine {
    /// Applies a decoded (or locally held) proposal at `index`, in chunks
    /// of [`APPLY_CHUNK`] commands with the write lock released between
    /// them: a read waits for one chunk, not for a whole entry (thousands of
    /// commands at full ingest). A reader may thus see part of an entry,
    /// each command whole; nothing of it is acknowledged before all of it
    /// is applied. The snapshot lock is held throughout, so that a snapshot
    /// never holds part of an entry.
    fn apply_commands(&self, index: u64, after: Tag, tag: Tag, commands: &[Command]) -> ApplyResult {
        let _entry = self.snapshot_lock.lock();
        let watermark = self.state.read().watermark;
        if tag <= watermark {
            return self.pass_over(index, ShardApplied { skipped: true, ..ShardApplied::default() });
        }
        if after > watermark {
            return self.pass_over(index, ShardApplied { gap: true, ..ShardApplied::default() });
        }
        let mut outcome = ApplyOutcome::default();
        let mut rest = commands;
        loop {
            // An empty entry is one empty chunk: it still moves the watermark.
            let (chunk, tail) = rest.split_at(rest.len().min(APPLY_CHUNK));
            let offset = commands.len() - rest.len();
            let mut state = self.state.write();
            let part = state.shard.apply(chunk);
            outcome.applied += part.applied;
            outcome.rejections.extend(part.rejections.into_iter().map(|mut r| {
                r.index += offset;
                r
            }));
            if tail.is_empty() {
                state.watermark = tag;
                state.applied_index = index;
                self.applied.store(index, Ordering::Release);
                break;
            }
            rest = tail;
            // Hand the lock to waiting readers before the next chunk.
            parking_lot::RwLockWriteGuard::unlock_fair(state);
        }
        Box::new(ShardApplied { outcome, ..ShardApplied::default() })
    }

    /// Consumes entry `index` without applying its commands.
    fn pass_over(&self, index: u64, applied: ShardApplied) -> ApplyResult {
        self.state.write().applied_index = index;
        self.applied.store(index, Ordering::Release);
        Box::new(applied)
    }
}

impl StateMachine for ShardMachine {
    fn apply(&self, index: u64, data: &[u8]) -> ApplyResult {
        // Decoded before the write lock: readers wait only for the apply.
        match ShardProposal::decode(data) {
            Ok(p) => self.apply_commands(index, p.after, p.tag, &p.commands),
            // Skipping an entry this build cannot read would leave this
            // replica without writes that others may have applied: the
            // group stops at it instead (see `Halt`).
            Err(source) => {
                Box::new(Halt::new(ShardMachineError::Undecodable { shard: self.shard_id, index, source }))
            }
        }
    }

    fn apply_proposed(&self, index: u64, data: &[u8], local: Box<dyn std::any::Any + Send>) -> ApplyResult {
        let Ok(local) = local.downcast::<ProposedCommands>() else { return self.apply(index, data) };
        debug_assert_eq!(
            ShardProposal::decode(data).map(|p| (p.after, p.tag, p.commands)).ok(),
            Some((local.after, local.tag, local.source.commands().to_vec())),
            "a proposer's commands differ from its entry"
        );
        self.apply_commands(index, local.after, local.tag, local.source.commands())
    }

    fn idle(&self) {
        if self.state.read().shard.has_staged() {
            self.state.write().shard.flush_events();
        }
    }

    fn pass(&self, index: u64) {
        self.state.write().applied_index = index;
        self.applied.store(index, Ordering::Release);
    }

    fn applied_index(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    fn snapshot(&self) -> Result<u64, MachineError> {
        Ok(self.snapshot_now()?)
    }

    fn snapshot_file(&self) -> &Path {
        &self.path
    }

    fn restore(&self, index: u64, data: &[u8]) -> Result<(), MachineError> {
        let id = self.shard_id;
        let (shard, extra) = snapshot::decode_with_extra(data, "snapshot from the leader")
            .map_err(|source| ShardMachineError::ReceivedSnapshot { shard: id, index, source })?;
        let extra: Extra = codec::decode(&extra)
            .map(|(e, _)| e)
            .map_err(|source| ShardMachineError::ReceivedMetadata { shard: id, index, source })?;
        let mut state = self.state.write();
        *state = ShardState { shard, watermark: extra.watermark, applied_index: index };
        self.applied.store(index, Ordering::Release);
        drop(state);
        self.snapshot_now()?;
        Ok(())
    }

    fn clear(&self) -> Result<(), MachineError> {
        let _writing = self.snapshot_lock.lock();
        if self.path.exists() {
            std::fs::remove_file(&self.path)?;
            if let Some(dir) = self.path.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
        }
        let empty = ShardState { shard: Shard::new(self.shard_id), watermark: (0, 0), applied_index: 0 };
        let old = std::mem::replace(&mut *self.state.write(), empty);
        self.applied.store(0, Ordering::Release);
        self.snapshot_index.store(0, Ordering::Release);
        // Freed here, not under the lock.
        drop(old);
        Ok(())
    }

    fn restore_file(&self, index: u64, path: &Path) -> Result<(), MachineError> {
        let id = self.shard_id;
        let (shard, extra) = snapshot::read_with_extra(path)
            .map_err(|source| ShardMachineError::ReceivedSnapshot { shard: id, index, source })?;
        let extra: Extra = codec::decode(&extra)
            .map(|(e, _)| e)
            .map_err(|source| ShardMachineError::ReceivedMetadata { shard: id, index, source })?;
        let _writing = self.snapshot_lock.lock();
        let mut state = self.state.write();
        *state = ShardState { shard, watermark: extra.watermark, applied_index: index };
        self.applied.store(index, Ordering::Release);
        drop(state);
        if extra.applied_index == index {
            // The leader's file is this state at this index: it becomes
            // this shard's snapshot as it is.
            crate::replication::snapshot_file::move_into_place(path, &self.path)?;
            self.snapshot_index.store(index, Ordering::Release);
        } else {
            drop(_writing);
            self.snapshot_now()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::ProfileWrite;

    #[test]
    fn borrowed_and_owned_proposals_encode_alike_and_watermarks_skip_repeats() {
        let commands =
            vec![Command::Write(ProfileWrite { profile: 1, time_ms: 5, ..ProfileWrite::default() })];
        let owned = ShardProposal { after: (0, 0), tag: (3, 1), commands: commands.clone() };
        assert_eq!(owned.encode(), ShardProposal::encode_parts((0, 0), (3, 1), &commands));
        let dir = tempfile::tempdir().unwrap();
        let m = ShardMachine::open(dir.path(), 0).unwrap();
        let first = m.apply(1, &owned.encode()).downcast::<ShardApplied>().unwrap();
        assert!(!first.skipped);
        let again = m.apply(2, &owned.encode()).downcast::<ShardApplied>().unwrap();
        assert!(again.skipped, "a tag at the watermark is not applied twice");
        assert_eq!(m.read_state().shard.len(), 1);
        // The watermark and applied index survive a snapshot.
        m.snapshot_now().unwrap();
        let back = ShardMachine::open(dir.path(), 0).unwrap();
        assert_eq!((back.watermark(), back.applied_index()), ((3, 1), 2));
        // A corrupt snapshot names its file.
        let path = dir.path().join("shard-000.snap");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[30] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        let e = ShardMachine::open(dir.path(), 0).err().unwrap().to_string();
        assert!(e.contains("shard-000.snap"), "{e}");
    }

    #[test]
    fn applied_event_rows_are_in_the_who_bitmaps_for_reads_and_snapshots() {
        use crate::shard::EventWrite;
        let event = |profile: u64, time_ms: i64| {
            Command::Write(ProfileWrite {
                profile,
                time_ms,
                event: Some(EventWrite { name: "buy".into(), properties: vec![] }),
                ..ProfileWrite::default()
            })
        };
        let dir = tempfile::tempdir().unwrap();
        let m = ShardMachine::open(dir.path(), 0).unwrap();
        let day = crate::shard::DAY_MS;
        let batch = vec![event(7, 3 * day), event(3, 3 * day + 5), event(9, 70 * day)];
        m.apply(1, &ShardProposal::encode_parts((0, 0), (1, 1), &batch));
        {
            let state = m.read_state();
            assert!(state.shard.has_staged(), "a small entry's event rows stay staged");
            state.shard.validate().unwrap();
            let table = &state.shard.events["buy"];
            assert_eq!(table.who_in_window(0, 100 * day).len(), 3);
            assert_eq!(table.who_in_window(0, 4 * day).len(), 2);
        }
        // An idle applier flushes them; reads do not change.
        m.idle();
        {
            let state = m.read_state();
            assert!(!state.shard.has_staged());
            state.shard.validate().unwrap();
            assert_eq!(state.shard.events["buy"].who_in_window(0, 4 * day).len(), 2);
        }
        // A snapshot flushes and holds them.
        m.apply(2, &ShardProposal::encode_parts((1, 1), (1, 2), &[event(11, 4 * day)]));
        assert!(m.read_state().shard.has_staged());
        m.snapshot_now().unwrap();
        assert!(!m.read_state().shard.has_staged());
        let back = ShardMachine::open(dir.path(), 0).unwrap();
        let state = back.read_state();
        state.shard.validate().unwrap();
        assert_eq!(state.shard.events["buy"].who_in_window(0, 100 * day).len(), 4);
    }

    #[test]
    fn an_undecodable_entry_halts_naming_the_shard_and_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let m = ShardMachine::open(dir.path(), 3).unwrap();
        let r = m.apply(17, &[0xff; 9]);
        let halt = r.downcast_ref::<Halt>().expect("a halt");
        let reason = halt.0.downcast_ref::<ShardMachineError>().expect("a shard machine error");
        assert!(matches!(reason, ShardMachineError::Undecodable { shard: 3, index: 17, .. }), "{reason:?}");
        assert!(reason.to_string().starts_with("shard 3 cannot decode entry 17: "), "{reason}");
        assert_eq!((m.applied_index(), m.watermark()), (0, (0, 0)), "nothing applied");
    }

    struct Held(Vec<Command>);
    impl CommandSource for Held {
        fn commands(&self) -> &[Command] {
            &self.0
        }
    }

    #[test]
    fn a_proposers_commands_apply_as_the_decoded_entry_does() {
        use crate::shard::EventWrite;
        let batch: Vec<Command> = (0..50u64)
            .map(|p| {
                Command::Write(ProfileWrite {
                    profile: p % 20,
                    time_ms: p as i64 * 3_600_000,
                    event: Some(EventWrite { name: "buy".into(), properties: vec![] }),
                    ..ProfileWrite::default()
                })
            })
            .collect();
        let data = ShardProposal::encode_parts((0, 0), (4, 0), &batch);
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let from_log = ShardMachine::open(a.path(), 0).unwrap();
        let proposed = ShardMachine::open(b.path(), 0).unwrap();
        from_log.apply(1, &data);
        let local = ProposedCommands { after: (0, 0), tag: (4, 0), source: Box::new(Held(batch.clone())) };
        let r = proposed.apply_proposed(1, &data, Box::new(local)).downcast::<ShardApplied>().unwrap();
        assert_eq!((r.skipped, r.outcome.applied), (false, 50));
        from_log.snapshot_now().unwrap();
        proposed.snapshot_now().unwrap();
        assert_eq!(
            std::fs::read(a.path().join("shard-000.snap")).unwrap(),
            std::fs::read(b.path().join("shard-000.snap")).unwrap()
        );
        // The tag is checked against the watermark either way.
        let again = ProposedCommands { after: (0, 0), tag: (4, 0), source: Box::new(Held(batch)) };
        let r = proposed.apply_proposed(2, &data, Box::new(again)).downcast::<ShardApplied>().unwrap();
        assert!(r.skipped);
    }

    #[test]
    fn an_entry_longer_than_a_chunk_applies_whole_with_rejections_at_their_positions() {
        let n = APPLY_CHUNK * 2 + 37;
        let batch: Vec<Command> = (0..n)
            .map(|i| match i {
                // A merge into itself is refused as a whole command.
                10 | 300 => Command::Merge { into: 1, from: 1 },
                _ => {
                    Command::Write(ProfileWrite { profile: i as u64, time_ms: 5, ..ProfileWrite::default() })
                }
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let m = ShardMachine::open(dir.path(), 0).unwrap();
        let r = m
            .apply(7, &ShardProposal::encode_parts((0, 0), (2, 0), &batch))
            .downcast::<ShardApplied>()
            .unwrap();
        assert_eq!(r.outcome.applied, n - 2);
        let at: Vec<usize> = r.outcome.rejections.iter().map(|r| r.index).collect();
        assert_eq!(at, vec![10, 300]);
        assert_eq!((m.watermark(), m.applied_index()), ((2, 0), 7));
        assert_eq!(m.read_state().shard.len() as usize, n - 2);
        // An empty entry still moves the watermark; a repeat is skipped.
        m.apply(8, &ShardProposal::encode_parts((2, 0), (2, 1), &[]));
        assert_eq!((m.watermark(), m.applied_index()), ((2, 1), 8));
        let again = m
            .apply(9, &ShardProposal::encode_parts((0, 0), (2, 0), &batch))
            .downcast::<ShardApplied>()
            .unwrap();
        assert!(again.skipped);
        assert_eq!((m.watermark(), m.applied_index()), ((2, 1), 9));
    }

    #[test]
    fn a_proposal_after_a_missing_step_is_refused_as_a_gap_and_applies_nothing() {
        let write =
            |profile: u64| Command::Write(ProfileWrite { profile, time_ms: 5, ..ProfileWrite::default() });
        let dir = tempfile::tempdir().unwrap();
        let m = ShardMachine::open(dir.path(), 0).unwrap();
        m.apply(1, &ShardProposal::encode_parts((0, 0), (1, 0), &[write(1)]));
        // Step (2, 0) never reached the log; (3, 0) follows it.
        let r = m.apply(2, &ShardProposal::encode_parts((2, 0), (3, 0), &[write(3)]));
        let r = r.downcast::<ShardApplied>().unwrap();
        assert!(r.gap && !r.skipped);
        assert_eq!(r.outcome.applied, 0);
        assert_eq!((m.watermark(), m.applied_index()), ((1, 0), 2));
        assert_eq!(m.read_state().shard.len(), 1);
        // The retry, in order, applies both.
        m.apply(3, &ShardProposal::encode_parts((1, 0), (2, 0), &[write(2)]));
        let r = m.apply(4, &ShardProposal::encode_parts((2, 0), (3, 0), &[write(3)]));
        assert!(!r.downcast::<ShardApplied>().unwrap().gap);
        assert_eq!((m.watermark(), m.read_state().shard.len()), ((3, 0), 3));
        // Following an older step than the watermark is no gap (a step was
        // applied that the proposer did not chain to); a repeat is skipped.
        let r = m.apply(5, &ShardProposal::encode_parts((1, 0), (4, 0), &[write(4)]));
        let r = r.downcast::<ShardApplied>().unwrap();
        assert!(!r.gap && !r.skipped);
        let r = m.apply(6, &ShardProposal::encode_parts((9, 0), (4, 0), &[write(4)]));
        assert!(r.downcast::<ShardApplied>().unwrap().skipped);
        assert_eq!((m.watermark(), m.read_state().shard.len()), ((4, 0), 4));
    }
}
