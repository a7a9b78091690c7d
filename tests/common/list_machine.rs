//! A replicated state machine for the driver tests: a list of `u64`s,
//! each entry appending one, its snapshot the list in a file.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use cohort::replication::driver::{ApplyResult, StateMachine};
use cohort::replication::error::MachineError;
use parking_lot::Mutex;

/// A list of `u64`s: each entry appends one. Its snapshot is the list,
/// then `ballast` zero bytes (to make a snapshot span several chunks).
pub struct ListMachine {
    path: PathBuf,
    ballast: usize,
    state: Mutex<(u64, Vec<u64>)>,
    applied: AtomicU64,
    /// Snapshots installed from a leader.
    pub restores: AtomicU64,
}

impl ListMachine {
    pub fn new(dir: &Path) -> Arc<ListMachine> {
        ListMachine::with_ballast(dir, 0)
    }

    pub fn with_ballast(dir: &Path, ballast: usize) -> Arc<ListMachine> {
        Arc::new(ListMachine {
            path: dir.join("list.snap"),
            ballast,
            state: Mutex::new((0, Vec::new())),
            applied: AtomicU64::new(0),
            restores: AtomicU64::new(0),
        })
    }

    /// The machine of a node that restarts: the list of its last snapshot
    /// file, if it wrote one (the log replays what follows).
    pub fn reopen(dir: &Path) -> Arc<ListMachine> {
        let machine = ListMachine::new(dir);
        if let Ok(data) = std::fs::read(&machine.path) {
            let (index, values) = decode(&data);
            *machine.state.lock() = (index, values);
            machine.applied.store(index, Ordering::Release);
        }
        machine
    }

    /// The values applied, in log order.
    pub fn values(&self) -> Vec<u64> {
        self.state.lock().1.clone()
    }
}

fn encode(index: u64, values: &[u64], ballast: usize) -> Vec<u8> {
    let mut data: Vec<u8> = [index, values.len() as u64]
        .into_iter()
        .chain(values.iter().copied())
        .flat_map(u64::to_le_bytes)
        .collect();
    data.resize(data.len() + ballast, 0);
    data
}

fn decode(data: &[u8]) -> (u64, Vec<u64>) {
    let mut words = data.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap()));
    let index = words.next().unwrap_or(0);
    let len = words.next().unwrap_or(0) as usize;
    (index, words.take(len).collect())
}

impl StateMachine for ListMachine {
    fn apply(&self, index: u64, data: &[u8]) -> ApplyResult {
        let value = u64::from_le_bytes(data.try_into().expect("an 8-byte value"));
        let mut state = self.state.lock();
        state.0 = index;
        state.1.push(value);
        self.applied.store(index, Ordering::Release);
        Box::new(value)
    }

    fn pass(&self, index: u64) {
        self.state.lock().0 = index;
        self.applied.store(index, Ordering::Release);
    }

    fn applied_index(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    fn snapshot(&self) -> Result<u64, MachineError> {
        let state = self.state.lock();
        // A new file renamed over the old one: the snapshot on its way to
        // a follower is a hard link to the old one.
        replace(&self.path, &encode(state.0, &state.1, self.ballast))?;
        Ok(state.0)
    }

    fn snapshot_file(&self) -> &Path {
        &self.path
    }

    fn clear(&self) -> Result<(), MachineError> {
        match std::fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        *self.state.lock() = (0, Vec::new());
        self.applied.store(0, Ordering::Release);
        Ok(())
    }

    fn restore(&self, index: u64, data: &[u8]) -> Result<(), MachineError> {
        let (at, values) = decode(data);
        assert_eq!(at, index, "a snapshot's data and its metadata name the same index");
        *self.state.lock() = (index, values);
        self.applied.store(index, Ordering::Release);
        self.restores.fetch_add(1, Ordering::Relaxed);
        replace(&self.path, data)?;
        Ok(())
    }
}

/// Writes `data` to a temporary file and renames it over `path`.
fn replace(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path)
}
