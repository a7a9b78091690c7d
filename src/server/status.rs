//! The one mapping from the errors of the layers below to what a door
//! answers: a gRPC code and a bounded message (the HTTP door takes its
//! status from the same code).
//!
//! | error | code |
//! | --- | --- |
//! | a bad query, request field or schema (`QueryError::Invalid`, `AdminError::Invalid`, `CatalogError::BadTime`, [`ServerError::BadRequest`]) | `INVALID_ARGUMENT` |
//! | an unknown profile, trait or segment (`QueryError::NotFound`, `AdminError::NotFound`, [`ServerError::NotFound`]) | `NOT_FOUND` |
//! | a saved segment that exists (`AdminError::Exists`) | `ALREADY_EXISTS` |
//! | a saved segment in use (`AdminError::InUse`) | `FAILED_PRECONDITION` |
//! | a shard past the deadline (`QueryError::DeadlineExceeded`) | `DEADLINE_EXCEEDED` |
//! | a shard that no replica could answer, here or on another node (`QueryError::Unavailable`) | `UNAVAILABLE` |
//! | not the leader, leadership lost or a proposal timed out before commit (outcome unknown), shutting down, a stopped group, a node that stopped taking writes, a replica behind its leader or past the staleness bound, a node removed from the cluster, a lost step (`ReplicationError::{NotLeader, LeadershipLost, ProposalTimeout, ShuttingDown, Halted, WritesStopped, ReadBehind, TooStale, Removed}`, `IngestError::{Gap, ShuttingDown, StepsPending}`) | `UNAVAILABLE`, with the leader's address in `x-cohort-leader` when known |
//! | a batch or a change forwarded to the catalog's leader that failed there (`IngestError::Forwarded`, `CatalogError::Forwarded`) | the leader's code; `UNAVAILABLE` when it could not be sent (`IngestError::ForwardFailed`) |
//! | no API key or an unknown one, a key whose role does not allow the call ([`ServerError::Unauthenticated`], [`ServerError::PermissionDenied`]) | `UNAUTHENTICATED`, `PERMISSION_DENIED` |
//! | the log, a snapshot, a thread, a bug (every other variant) | `INTERNAL` |
//!
//! A proposal that fails is never `INVALID_ARGUMENT`: the request was fine,
//! the node could not commit it, and a client may retry.

use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use crate::cluster::catalog::{AdminError, CatalogError};
use crate::ingest::IngestError;
use crate::query::QueryError;
use crate::replication::ReplicationError;

/// Most bytes of an error message sent back. The message travels in the
/// `grpc-message` header, percent-encoded (up to three times as long), and
/// clients refuse header lists past 16 KiB (tonic, grpc-go) or 8 KiB: a
/// longer one makes the whole reply unreadable (`h2 protocol error`).
/// Messages are short by construction (a query is quoted as an excerpt);
/// this is the backstop for any that is not.
pub const MAX_STATUS_MESSAGE_BYTES: usize = 2048;

/// The metadata key of a "not leader" answer that carries the leader's
/// client address.
pub const LEADER_HEADER: &str = "x-cohort-leader";

/// Every error a door answers with, by the layer it comes from.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A query failed (planner).
    #[error(transparent)]
    Query(#[from] QueryError),
    /// An ingest call failed (pipeline).
    #[error(transparent)]
    Ingest(#[from] IngestError),
    /// A schema or segment change failed (catalog).
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// A proposal failed (replication).
    #[error(transparent)]
    Replication(#[from] ReplicationError),
    /// A request field the door itself refuses (`page_size`,
    /// `grpc-timeout`, `page_token`, no expression).
    #[error("{0}")]
    BadRequest(String),
    /// Something the door looked up itself is not there.
    #[error("{0}")]
    NotFound(String),
    /// No API key, or one this node does not have.
    #[error("{0}")]
    Unauthenticated(String),
    /// An API key whose role does not allow the call.
    #[error("{0}")]
    PermissionDenied(String),
    /// The door failed itself (a task that panicked).
    #[error("{0}")]
    Internal(String),
}

/// The gRPC code of `e`: the mapping of the table above.
pub fn code(e: &ServerError) -> Code {
    // The code of a replication error, wherever it is wrapped.
    fn replication(e: &ReplicationError) -> Code {
        match e {
            ReplicationError::NotLeader { .. }
            | ReplicationError::LeadershipLost { .. }
            | ReplicationError::ProposalTimeout { .. }
            | ReplicationError::ShuttingDown
            | ReplicationError::Halted { .. }
            | ReplicationError::ReadBehind { .. }
            | ReplicationError::TooStale { .. }
            | ReplicationError::Removed { .. }
            | ReplicationError::NoReplica { .. }
            | ReplicationError::WritesStopped { .. } => Code::Unavailable,
            ReplicationError::NoSuchGroup { .. }
            | ReplicationError::Storage(_)
            | ReplicationError::Raft { .. }
            | ReplicationError::BadConfChange { .. }
            | ReplicationError::Snapshot { .. }
            | ReplicationError::InstallSnapshot { .. }
            | ReplicationError::SnapshotFile { .. }
            | ReplicationError::Manifest { .. }
            | ReplicationError::WriteManifest { .. }
            | ReplicationError::AheadOfLog { .. }
            | ReplicationError::ApplierStopped { .. }
            | ReplicationError::DropReplica { .. }
            | ReplicationError::Thread { .. }
            | ReplicationError::RecoveryStopped => Code::Internal,
            ReplicationError::Remote { code, .. } => Code::from_i32(*code),
        }
    }
    match e {
        ServerError::Query(QueryError::Invalid(_)) => Code::InvalidArgument,
        ServerError::Query(QueryError::NotFound(_)) => Code::NotFound,
        ServerError::Query(QueryError::DeadlineExceeded(_)) => Code::DeadlineExceeded,
        ServerError::Query(QueryError::Unavailable(_)) => Code::Unavailable,
        ServerError::Ingest(IngestError::Replication(r)) => replication(r),
        ServerError::Ingest(
            IngestError::Gap { .. } | IngestError::ShuttingDown | IngestError::StepsPending { .. },
        ) => Code::Unavailable,
        ServerError::Ingest(IngestError::ParseTask { .. } | IngestError::UnexpectedResult) => Code::Internal,
        ServerError::Ingest(IngestError::DiskFull(_)) => Code::ResourceExhausted,
        ServerError::Ingest(IngestError::Forwarded { code, .. }) => Code::from_i32(*code),
        ServerError::Ingest(IngestError::ForwardFailed { .. }) => Code::Unavailable,
        ServerError::Catalog(CatalogError::Refused(refused)) => match refused {
            AdminError::Invalid(_) => Code::InvalidArgument,
            AdminError::NotFound(_) => Code::NotFound,
            AdminError::InUse(_) => Code::FailedPrecondition,
            AdminError::Exists(_) => Code::AlreadyExists,
            AdminError::DiskFull(_) => Code::ResourceExhausted,
        },
        ServerError::Catalog(CatalogError::BadTime { .. }) => Code::InvalidArgument,
        ServerError::Catalog(CatalogError::Replication(r)) => replication(r),
        ServerError::Catalog(CatalogError::Forwarded { code, .. }) => Code::from_i32(*code),
        ServerError::Catalog(
            CatalogError::Io { .. }
            | CatalogError::Corrupt { .. }
            | CatalogError::ShardCount { .. }
            | CatalogError::Encode { .. }
            | CatalogError::Undecodable { .. }
            | CatalogError::UnexpectedResult { .. },
        ) => Code::Internal,
        ServerError::Replication(r) => replication(r),
        ServerError::BadRequest(_) => Code::InvalidArgument,
        ServerError::NotFound(_) => Code::NotFound,
        ServerError::Unauthenticated(_) => Code::Unauthenticated,
        ServerError::PermissionDenied(_) => Code::PermissionDenied,
        ServerError::Internal(_) => Code::Internal,
    }
}

/// The replication error inside `e`, if it is one.
fn replication_of(e: &ServerError) -> Option<&ReplicationError> {
    match e {
        ServerError::Replication(r)
        | ServerError::Ingest(IngestError::Replication(r))
        | ServerError::Catalog(CatalogError::Replication(r)) => Some(r),
        _ => None,
    }
}

/// The status a gRPC door answers `e` with: its [`code`], its message
/// (bounded), and for "not leader" the leader's address in
/// [`LEADER_HEADER`] when this node knows it.
pub fn status(e: impl Into<ServerError>) -> Status {
    let e = e.into();
    let mut status = Status::new(code(&e), bounded(e.to_string()));
    let leader = replication_of(&e).and_then(ReplicationError::leader_addr);
    if let Some(value) = leader.and_then(|addr| MetadataValue::try_from(addr).ok()) {
        status.metadata_mut().insert(LEADER_HEADER, value);
    }
    status
}

/// `message`, cut at a character boundary to at most
/// [`MAX_STATUS_MESSAGE_BYTES`] bytes, with an ellipsis when cut.
pub fn bounded(mut message: String) -> String {
    if message.len() > MAX_STATUS_MESSAGE_BYTES {
        let mut at = MAX_STATUS_MESSAGE_BYTES - '…'.len_utf8();
        while !message.is_char_boundary(at) {
            at -= 1;
        }
        message.truncate(at);
        message.push('…');
    }
    message
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn not_leader(leader_addr: Option<&str>) -> ReplicationError {
        ReplicationError::NotLeader {
            group: 1,
            name: "catalog".into(),
            leader: leader_addr.map(|_| 2),
            leader_addr: leader_addr.map(String::from),
        }
    }

    fn io() -> Arc<std::io::Error> {
        Arc::new(std::io::Error::other("disk on fire"))
    }

    /// One of every replication variant, with the code it must map to.
    fn replication_cases() -> Vec<(ReplicationError, Code)> {
        let raft_error = || Arc::new(raft::Error::ProposalDropped);
        let machine: crate::replication::error::SharedError = io();
        let storage = crate::replication::storage::StorageError::InvalidDir { dir: "d".into() };
        let manifest = || {
            Arc::new(crate::replication::manifest::ManifestError::Invalid {
                path: "MANIFEST.json".into(),
                problem: "x".into(),
            })
        };
        vec![
            (not_leader(None), Code::Unavailable),
            (ReplicationError::ShuttingDown, Code::Unavailable),
            (
                ReplicationError::TooStale {
                    group: 3,
                    name: "shard 1".into(),
                    bound_ms: 1000,
                    age: "2.5 s".into(),
                    cause: "no leader".into(),
                },
                Code::Unavailable,
            ),
            (
                ReplicationError::LeadershipLost {
                    group: 2,
                    name: "shard 0".into(),
                    index: 9,
                    term: 3,
                    leader: None,
                    leader_addr: None,
                },
                Code::Unavailable,
            ),
            (
                ReplicationError::ProposalTimeout {
                    group: 2,
                    name: "shard 0".into(),
                    index: 9,
                    waited_ms: 10_000,
                },
                Code::Unavailable,
            ),
            (
                ReplicationError::Halted {
                    group: 2,
                    name: "shard 0".into(),
                    index: 9,
                    reason: machine.clone(),
                },
                Code::Unavailable,
            ),
            (
                ReplicationError::WritesStopped { cause: Arc::new(ReplicationError::from(storage)) },
                Code::Unavailable,
            ),
            (ReplicationError::NoSuchGroup { group: 7 }, Code::Internal),
            (
                ReplicationError::from(crate::replication::storage::StorageError::AlreadyInitialized {
                    group: 1,
                }),
                Code::Internal,
            ),
            (
                ReplicationError::Raft {
                    group: 1,
                    name: "catalog".into(),
                    action: "campaigning".into(),
                    source: raft_error(),
                },
                Code::Internal,
            ),
            (
                ReplicationError::BadConfChange {
                    group: 1,
                    index: 3,
                    source: Arc::new(protobuf::ProtobufError::WireError(protobuf::error::WireError::Other)),
                },
                Code::Internal,
            ),
            (
                ReplicationError::Snapshot { group: 1, name: "catalog".into(), source: machine.clone() },
                Code::Internal,
            ),
            (
                ReplicationError::InstallSnapshot {
                    group: 1,
                    name: "catalog".into(),
                    index: 4,
                    source: machine,
                },
                Code::Internal,
            ),
            (ReplicationError::SnapshotFile { path: "catalog.snap".into(), source: io() }, Code::Internal),
            (ReplicationError::Manifest { group: 1, index: 4, source: manifest() }, Code::Internal),
            (ReplicationError::WriteManifest { source: manifest() }, Code::Internal),
            (
                ReplicationError::AheadOfLog { group: 1, name: "catalog".into(), applied: 9, last: 3 },
                Code::Internal,
            ),
            (ReplicationError::ApplierStopped { group: 1, name: "catalog".into() }, Code::Internal),
            (ReplicationError::Thread { thread: "the raft thread".into(), source: io() }, Code::Internal),
            (ReplicationError::RecoveryStopped, Code::Internal),
        ]
    }

    #[test]
    fn every_error_maps_to_its_code() {
        let decode_error = || bincode::error::DecodeError::Other("x");
        let mut cases: Vec<(ServerError, Code)> = vec![
            (QueryError::Invalid("at position 3".into()).into(), Code::InvalidArgument),
            (QueryError::NotFound("no profile".into()).into(), Code::NotFound),
            (QueryError::DeadlineExceeded("shard 3".into()).into(), Code::DeadlineExceeded),
            (QueryError::Unavailable("shard 3".into()).into(), Code::Unavailable),
            (IngestError::Gap { shard: 1, tag: (2, 0) }.into(), Code::Unavailable),
            (IngestError::ShuttingDown.into(), Code::Unavailable),
            (
                IngestError::StepsPending { index: 9, reason: "shard 1 has no leader".into() }.into(),
                Code::Unavailable,
            ),
            (IngestError::ParseTask { reason: "panicked".into() }.into(), Code::Internal),
            (IngestError::UnexpectedResult.into(), Code::Internal),
            (
                IngestError::Forwarded {
                    leader: 2,
                    code: Code::ResourceExhausted as i32,
                    message: "disk full".into(),
                    nothing_appended: false,
                }
                .into(),
                Code::ResourceExhausted,
            ),
            (IngestError::ForwardFailed { leader: 2, reason: "no address".into() }.into(), Code::Unavailable),
            (
                CatalogError::Forwarded {
                    leader: 2,
                    code: Code::AlreadyExists as i32,
                    message: "exists".into(),
                }
                .into(),
                Code::AlreadyExists,
            ),
            (CatalogError::Refused(AdminError::Invalid("schema".into())).into(), Code::InvalidArgument),
            (CatalogError::Refused(AdminError::NotFound("no segment".into())).into(), Code::NotFound),
            (CatalogError::Refused(AdminError::InUse("used by".into())).into(), Code::FailedPrecondition),
            (CatalogError::Refused(AdminError::Exists("exists".into())).into(), Code::AlreadyExists),
            (CatalogError::BadTime { field: "now", text: "yesterday".into() }.into(), Code::InvalidArgument),
            (
                CatalogError::Io { path: "catalog.snap".into(), source: std::io::Error::other("x") }.into(),
                Code::Internal,
            ),
            (
                CatalogError::Corrupt { path: "catalog.snap".into(), offset: 32, problem: "crc".into() }
                    .into(),
                Code::Internal,
            ),
            (
                CatalogError::ShardCount { path: "catalog.snap".into(), found: 4, configured: 8 }.into(),
                Code::Internal,
            ),
            (
                CatalogError::Encode { index: 3, source: bincode::error::EncodeError::Other("x") }.into(),
                Code::Internal,
            ),
            (CatalogError::Undecodable { index: 3, source: decode_error() }.into(), Code::Internal),
            (CatalogError::UnexpectedResult { index: 3 }.into(), Code::Internal),
            (ServerError::BadRequest("page_size".into()), Code::InvalidArgument),
            (ServerError::NotFound("no saved segment".into()), Code::NotFound),
            (ServerError::Unauthenticated("no key".into()), Code::Unauthenticated),
            (ServerError::PermissionDenied("read role".into()), Code::PermissionDenied),
            (ServerError::Internal("a task panicked".into()), Code::Internal),
        ];
        // A replication error maps alike on its own and inside an ingest
        // or a catalog error.
        for (r, want) in replication_cases() {
            cases.push((IngestError::Replication(r.clone()).into(), want));
            cases.push((CatalogError::Replication(r.clone()).into(), want));
            cases.push((r.into(), want));
        }
        for (e, want) in cases {
            assert_eq!(code(&e), want, "{e:?}");
            assert_eq!(status(e).code(), want);
        }
    }

    #[test]
    fn a_failed_proposal_is_never_invalid_argument() {
        for (r, _) in replication_cases() {
            for e in [
                ServerError::from(CatalogError::Replication(r.clone())),
                ServerError::from(IngestError::Replication(r.clone())),
                ServerError::from(r),
            ] {
                assert_ne!(code(&e), Code::InvalidArgument, "{e:?}");
            }
        }
        // A schema change the catalog could not commit (no leader) is not
        // a bad schema: the client may retry it.
        let e = CatalogError::Replication(not_leader(None));
        assert_eq!(status(e).code(), Code::Unavailable);
    }

    #[test]
    fn not_leader_carries_the_leaders_address_when_known() {
        let s = status(IngestError::Replication(not_leader(Some("10.1.2.3:7070"))));
        assert_eq!(s.code(), Code::Unavailable);
        assert_eq!(s.metadata().get(LEADER_HEADER).and_then(|v| v.to_str().ok()), Some("10.1.2.3:7070"));
        assert!(s.message().contains("node 2 at 10.1.2.3:7070"), "{}", s.message());
        let s = status(not_leader(None));
        assert!(s.metadata().get(LEADER_HEADER).is_none());
        assert!(s.message().contains("leader: unknown"), "{}", s.message());
    }

    #[test]
    fn long_messages_are_bounded() {
        let s = status(ServerError::BadRequest("é".repeat(MAX_STATUS_MESSAGE_BYTES)));
        assert!(s.message().len() <= MAX_STATUS_MESSAGE_BYTES && s.message().ends_with('…'));
    }
}
