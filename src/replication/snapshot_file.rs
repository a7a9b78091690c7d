//! Snapshots that travel as files: a snapshot raft-rs hands around carries,
//! as its data, a reference to a file rather than the file's bytes.
//!
//! A shard of a 10 M-profile node is hundreds of megabytes, and a node's
//! snapshots several gigabytes together: held in a `Vec` on the way out
//! (and again on the way in), they would cost the memory of the data they
//! copy. So a leader's snapshot for a follower is its snapshot file, hard
//! linked into `snapshots/transfer/` (the machine's next snapshot replaces
//! its own file by a rename, so the link keeps the bytes it was built
//! from); the transport streams it from there in chunks; the receiving
//! transport writes the chunks to a file of its own `snapshots/transfer/`
//! (synced before the message goes to the driver); and the machine
//! restores from that file ([`StateMachine::restore_file`]), which it
//! moves into place as its own snapshot.
//!
//! A transport that does not cross a process (the in-process networks of
//! the tests) may instead put the bytes inline ([`inline`]); a machine
//! takes either.
//!
//! [`StateMachine::restore_file`]: super::driver::StateMachine::restore_file

use std::path::{Path, PathBuf};

use raft::eraftpb::Message;

/// What a reference starts with; no snapshot's own bytes do.
const MAGIC: &[u8] = b"cohort-snapshot-file\n";

/// A snapshot's bytes in a file.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SnapshotFile {
    /// Where they are.
    pub path: PathBuf,
    /// How many.
    pub len: u64,
}

impl SnapshotFile {
    /// The snapshot data that refers to this file.
    pub fn to_data(&self) -> Vec<u8> {
        let mut data = MAGIC.to_vec();
        data.extend(super::codec::encode(self).expect("bincode encodes a path"));
        data
    }

    /// The file `data` refers to, when it is a reference (`None`: the
    /// snapshot's bytes themselves).
    pub fn from_data(data: &[u8]) -> Option<SnapshotFile> {
        let rest = data.strip_prefix(MAGIC)?;
        super::codec::decode(rest).ok().map(|(f, _)| f)
    }
}

/// The folder of the files in transfer beside the snapshot file `of`.
pub fn transfer_dir(of: &Path) -> PathBuf {
    of.parent().unwrap_or(Path::new(".")).join("transfer")
}

/// Makes a file of `snapshot` (the machine's own snapshot file, covering
/// `index`) for sending: a hard link in the transfer folder, or a copy
/// where links are refused; older ones of `group` are removed. Returns it.
pub fn outgoing(snapshot: &Path, group: u64, index: u64) -> std::io::Result<SnapshotFile> {
    let dir = transfer_dir(snapshot);
    std::fs::create_dir_all(&dir)?;
    let prefix = format!("out-g{group}-");
    for entry in std::fs::read_dir(&dir)?.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    let path = dir.join(format!("{prefix}{index}.snap"));
    if std::fs::hard_link(snapshot, &path).is_err() {
        std::fs::copy(snapshot, &path)?;
    }
    let len = std::fs::metadata(&path)?.len();
    Ok(SnapshotFile { path, len })
}

/// Where a snapshot of `group` received from node `from` is written, in
/// the transfer folder `dir` (a new name each time).
pub fn incoming_path(dir: &Path, group: u64, from: u64) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    dir.join(format!("in-g{group}-from{from}-{}-{n}.snap", std::process::id()))
}

/// Removes what a stopped node left in the transfer folder `dir`
/// (nothing there outlives a run: a snapshot not yet restored is sent
/// again).
pub fn clear_transfers(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Replaces the reference in a snapshot message by the bytes it refers
/// to, for a transport that hands messages over in memory.
pub fn inline(m: &mut Message) -> std::io::Result<()> {
    if let Some(file) = SnapshotFile::from_data(m.get_snapshot().get_data()) {
        let bytes = std::fs::read(&file.path)?;
        m.mut_snapshot().set_data(bytes.into());
    }
    Ok(())
}

/// Moves the received file `from` into place as `to`, durably (the file
/// was synced when received; the folder is synced after the rename).
pub fn move_into_place(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::rename(from, to)?;
    if let Some(dir) = to.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reference_is_told_from_bytes_and_survives_the_trip() {
        let f = SnapshotFile { path: PathBuf::from("/data/snapshots/transfer/out-g3-17.snap"), len: 42 };
        assert_eq!(SnapshotFile::from_data(&f.to_data()), Some(f));
        assert_eq!(SnapshotFile::from_data(b"COHORTSH real snapshot bytes"), None);
        assert_eq!(SnapshotFile::from_data(b""), None);
    }

    #[test]
    fn an_outgoing_file_keeps_its_bytes_when_the_snapshot_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let snap = dir.path().join("shard-001.snap");
        std::fs::write(&snap, b"first").unwrap();
        let out = outgoing(&snap, 3, 10).unwrap();
        assert_eq!(out.len, 5);
        // The machine's next snapshot replaces its file by a rename.
        let tmp = dir.path().join("shard-001.snap.tmp");
        std::fs::write(&tmp, b"second!").unwrap();
        std::fs::rename(&tmp, &snap).unwrap();
        assert_eq!(std::fs::read(&out.path).unwrap(), b"first");
        // A newer outgoing file of the group replaces the older one.
        let newer = outgoing(&snap, 3, 11).unwrap();
        assert!(!out.path.exists());
        assert_eq!(std::fs::read(&newer.path).unwrap(), b"second!");
        let mut m = Message::default();
        m.mut_snapshot().set_data(newer.to_data().into());
        inline(&mut m).unwrap();
        assert_eq!(m.get_snapshot().get_data(), b"second!");
        clear_transfers(&transfer_dir(&snap));
        assert!(!newer.path.exists());
    }
}
