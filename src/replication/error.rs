//! The replication layer's errors: what the driver and its groups report,
//! each naming the group (and the entry, node or file) it concerns.
//!
//! A [`ReplicationError`] is `Clone`: one failure of the log answers every
//! proposal waiting on it, so the causes that are not `Clone` themselves
//! (an I/O error, raft-rs's and raft-engine's errors) are shared behind an
//! `Arc`.

use std::sync::Arc;

use thiserror::Error;

use super::manifest::ManifestError;
use super::storage::StorageError;

/// What a state machine reports when it cannot write a snapshot or install
/// one received from the leader. The machines live in the layers above
/// (the catalog in `cluster`) and bring their own error types; the driver
/// only passes them on, naming the group.
pub type MachineError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A [`MachineError`] shared between the proposers it fails.
pub type SharedError = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// Why a replication call failed: a proposal, the start of the driver, or a
/// step of its loop (which then stops the node taking writes).
#[derive(Clone, Debug, Error)]
pub enum ReplicationError {
    /// This node is not the group's leader (or the group has none yet).
    #[error("group {group} ({name}) has no leader on this node (leader: {})", leader_text(*.leader, .leader_addr.as_deref()))]
    NotLeader {
        /// The group.
        group: u64,
        /// Its name.
        name: String,
        /// The leader's Raft id, when this node knows one.
        leader: Option<u64>,
        /// The leader's client address, when this node knows it (a
        /// single-node build knows no other node's address).
        leader_addr: Option<String>,
    },
    /// This node proposed entry `index` in `term` as the group's leader,
    /// then lost the leadership before the entry committed. Another leader
    /// may still commit it, or replace it: the outcome is unknown. A retry
    /// is safe for messages with a `messageId` (they are deduplicated).
    #[error("group {group} ({name}): leadership lost before entry {index} (term {term}) committed; it may or may not apply (leader now: {})", leader_text(*.leader, .leader_addr.as_deref()))]
    LeadershipLost {
        /// The group.
        group: u64,
        /// Its name.
        name: String,
        /// The proposed entry's index.
        index: u64,
        /// The term it was proposed in.
        term: u64,
        /// The leader's Raft id, when this node knows one.
        leader: Option<u64>,
        /// The leader's client address, when known.
        leader_addr: Option<String>,
    },
    /// A proposal waited longer than the driver's proposal timeout for its
    /// entry to commit (a leader that lost its quorum): the outcome is
    /// unknown, as for [`LeadershipLost`](ReplicationError::LeadershipLost).
    #[error(
        "group {group} ({name}): entry {index} not committed after {waited_ms} ms; it may or may not apply"
    )]
    ProposalTimeout {
        /// The group.
        group: u64,
        /// Its name.
        name: String,
        /// The proposed entry's index.
        index: u64,
        /// How long it waited.
        waited_ms: u64,
    },
    /// No group of that id runs on this node.
    #[error("no raft group {group} on this node")]
    NoSuchGroup {
        /// The group asked for.
        group: u64,
    },
    /// The driver is stopping or has stopped.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// A group's state machine refused entry `index` (it cannot decode it,
    /// or applying it would break an invariant): the group applies nothing
    /// more, and the node stops taking writes.
    #[error("group {group} ({name}) stopped at entry {index}: {reason}")]
    Halted {
        /// The group.
        group: u64,
        /// Its name.
        name: String,
        /// The refused entry.
        index: u64,
        /// The machine's reason.
        #[source]
        reason: SharedError,
    },
    /// An earlier failure of the log or of a snapshot stopped this node
    /// taking writes; every proposal since is refused with it.
    #[error("this node stopped taking writes: {cause}")]
    WritesStopped {
        /// The failure that stopped it.
        #[source]
        cause: Arc<ReplicationError>,
    },
    /// The raft log (raft-engine) could not be read or written.
    #[error(transparent)]
    Storage(Arc<StorageError>),
    /// raft-rs refused an operation on a group.
    #[error("group {group} ({name}): {action}: {source}")]
    Raft {
        /// The group.
        group: u64,
        /// Its name.
        name: String,
        /// What was being done (`opening the raft node`, `campaigning`).
        action: String,
        /// raft-rs's error.
        #[source]
        source: Arc<raft::Error>,
    },
    /// A configuration change entry cannot be decoded.
    #[error("group {group}: entry {index} is not a valid configuration change: {source}")]
    BadConfChange {
        /// The group.
        group: u64,
        /// The entry.
        index: u64,
        /// The decoder's error.
        #[source]
        source: Arc<protobuf::ProtobufError>,
    },
    /// A group's state machine could not write its snapshot.
    #[error("group {group} ({name}): snapshot: {source}")]
    Snapshot {
        /// The group.
        group: u64,
        /// Its name.
        name: String,
        /// The machine's error.
        #[source]
        source: SharedError,
    },
    /// A group's state machine could not install a snapshot from the leader.
    #[error("group {group} ({name}): installing a snapshot at index {index}: {source}")]
    InstallSnapshot {
        /// The group.
        group: u64,
        /// Its name.
        name: String,
        /// The index the snapshot covers.
        index: u64,
        /// The machine's error.
        #[source]
        source: SharedError,
    },
    /// A snapshot file could not be read back to send it to a follower.
    #[error("{path}: {source}")]
    SnapshotFile {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// A snapshot was written but could not be recorded in the manifest
    /// (so the log is not compacted behind it).
    #[error("group {group}: recording its snapshot at index {index} in the manifest: {source}")]
    Manifest {
        /// The group.
        group: u64,
        /// The snapshot's index.
        index: u64,
        /// The manifest's error.
        #[source]
        source: Arc<ManifestError>,
    },
    /// The manifest's applied indexes could not be written (at a stop).
    #[error("writing the manifest: {source}")]
    WriteManifest {
        /// The manifest's error.
        #[source]
        source: Arc<ManifestError>,
    },
    /// A state machine's snapshot covers entries the log does not hold.
    #[error("group {group} ({name}): the state machine applied up to {applied} but the log ends at {last}")]
    AheadOfLog {
        /// The group.
        group: u64,
        /// Its name.
        name: String,
        /// What the machine applied.
        applied: u64,
        /// The log's last index.
        last: u64,
    },
    /// A group's applier thread is gone (it panicked).
    #[error("group {group} ({name}): its applier stopped")]
    ApplierStopped {
        /// The group.
        group: u64,
        /// Its name.
        name: String,
    },
    /// A thread of the driver could not be started.
    #[error("cannot start {thread}: {source}")]
    Thread {
        /// Which thread (`the raft thread`, `the applier of group 3`).
        thread: String,
        /// The cause.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The raft thread ended before the committed log was replayed (it
    /// panicked).
    #[error("the raft thread stopped during recovery")]
    RecoveryStopped,
    /// A proposal sent to the group's leader on another node failed there
    /// (or on the way): `code` is the gRPC code of the answer.
    #[error("group {group}: the proposal sent to its leader, node {leader}, failed: {message}")]
    Remote {
        /// The group.
        group: u64,
        /// The node it went to.
        leader: u64,
        /// The gRPC code of the answer.
        code: i32,
        /// Its message.
        message: String,
    },
    /// A read on this node needs its replica of the group to have applied
    /// entry `index`, and it has not within the wait: it is behind its
    /// leader.
    #[error("group {group} ({name}) on this node has applied {applied} of the {index} entries a read here needs; it is behind its leader (retry, or ask another node)")]
    ReadBehind {
        /// The group.
        group: u64,
        /// Its name.
        name: String,
        /// The index the read needs.
        index: u64,
        /// The index applied here.
        applied: u64,
    },
    /// A read that takes a staleness bound found this node's replica of
    /// the group last confirmed current longer ago than the bound, and no
    /// leader confirmed it within the bound.
    #[error("group {group} ({name}) on this node was last confirmed current {age} ago, more than the staleness bound of {bound_ms} ms, and its leader did not confirm it within the bound ({cause}); retry, or ask another node")]
    TooStale {
        /// The group.
        group: u64,
        /// Its name.
        name: String,
        /// The bound, milliseconds.
        bound_ms: u64,
        /// How long ago, as text (`never` before the first confirmation).
        age: String,
        /// Why the confirmation failed.
        cause: String,
    },
    /// This node was removed from the cluster (its member table says so):
    /// it answers no read and takes no write, since no group counts it
    /// any more.
    #[error("node {node} was removed from the cluster and answers no reads or writes; ask another member (cohort cluster status lists them), and stop this node")]
    Removed {
        /// This node.
        node: u64,
    },
    /// This node's replica of a group was not dropped: it is still in the
    /// group's configuration, or its files could not be removed.
    #[error("group {group} ({name}): this node's replica is not dropped: {problem}")]
    DropReplica {
        /// The group.
        group: u64,
        /// Its name.
        name: String,
        /// Why.
        problem: String,
    },
    /// This node holds no replica of the group (the placement puts it on
    /// other nodes): a read of it here must go to one of them.
    #[error(
        "node {node} holds no replica of group {group} ({name}); its replicas are on nodes {replicas:?}"
    )]
    NoReplica {
        /// The group.
        group: u64,
        /// Its name.
        name: String,
        /// This node.
        node: u64,
        /// The nodes that hold it, as this node knows.
        replicas: Vec<u64>,
    },
}

impl From<StorageError> for ReplicationError {
    fn from(e: StorageError) -> Self {
        ReplicationError::Storage(Arc::new(e))
    }
}

impl ReplicationError {
    /// The group the error names, if it names one.
    pub fn group(&self) -> Option<u64> {
        match self {
            ReplicationError::NotLeader { group, .. }
            | ReplicationError::LeadershipLost { group, .. }
            | ReplicationError::ProposalTimeout { group, .. }
            | ReplicationError::NoSuchGroup { group }
            | ReplicationError::Halted { group, .. }
            | ReplicationError::Raft { group, .. }
            | ReplicationError::BadConfChange { group, .. }
            | ReplicationError::Snapshot { group, .. }
            | ReplicationError::InstallSnapshot { group, .. }
            | ReplicationError::Manifest { group, .. }
            | ReplicationError::AheadOfLog { group, .. }
            | ReplicationError::ApplierStopped { group, .. }
            | ReplicationError::ReadBehind { group, .. }
            | ReplicationError::TooStale { group, .. }
            | ReplicationError::Remote { group, .. }
            | ReplicationError::DropReplica { group, .. }
            | ReplicationError::NoReplica { group, .. } => Some(*group),
            ReplicationError::WritesStopped { cause } => cause.group(),
            ReplicationError::ShuttingDown
            | ReplicationError::Removed { .. }
            | ReplicationError::Storage(_)
            | ReplicationError::SnapshotFile { .. }
            | ReplicationError::WriteManifest { .. }
            | ReplicationError::Thread { .. }
            | ReplicationError::RecoveryStopped => None,
        }
    }

    /// The leader's client address, when the error is "not leader" and the
    /// address is known: a client retries there.
    pub fn leader_addr(&self) -> Option<&str> {
        match self {
            ReplicationError::NotLeader { leader_addr, .. }
            | ReplicationError::LeadershipLost { leader_addr, .. } => leader_addr.as_deref(),
            _ => None,
        }
    }
}

/// The leader as a "not leader" error shows it.
fn leader_text(leader: Option<u64>, addr: Option<&str>) -> String {
    match (leader, addr) {
        (Some(id), Some(addr)) => format!("node {id} at {addr}"),
        (Some(id), None) => format!("node {id}"),
        (None, _) => "unknown".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_not_leader_error_names_the_leader_when_known() {
        let e = |leader, leader_addr: Option<&str>| ReplicationError::NotLeader {
            group: 3,
            name: "shard 1".into(),
            leader,
            leader_addr: leader_addr.map(String::from),
        };
        assert_eq!(
            e(None, None).to_string(),
            "group 3 (shard 1) has no leader on this node (leader: unknown)"
        );
        assert_eq!(
            e(Some(2), Some("10.0.0.2:7070")).to_string(),
            "group 3 (shard 1) has no leader on this node (leader: node 2 at 10.0.0.2:7070)"
        );
        assert_eq!(e(Some(2), Some("10.0.0.2:7070")).leader_addr(), Some("10.0.0.2:7070"));
        assert_eq!(e(Some(2), None).group(), Some(3));
    }
}
