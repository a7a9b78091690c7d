//! The ingestion layer shared by every door (gRPC, HTTP, `cohort load`):
//! what a door hands over (JSON messages and where they came from) and what
//! it gets back (how many were applied, each rejection with its position).

pub mod pipeline;

use std::future::Future;
use std::pin::Pin;

use serde_json::Value as Json;
use thiserror::Error;

use crate::replication::shard_machine::Tag;
use crate::replication::ReplicationError;

/// Which door a message came through; kept with its rejections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Source {
    /// `cohort.v1.Ingest`.
    Grpc,
    /// The Segment-compatible HTTP endpoint.
    Http,
    /// `cohort load`.
    Load,
}

impl Source {
    /// Its name in listings: `grpc`, `http`, `load`.
    pub fn name(self) -> &'static str {
        match self {
            Source::Grpc => "grpc",
            Source::Http => "http",
            Source::Load => "load",
        }
    }
}

/// A message or field that was refused.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RejectionRecord {
    /// 0-based position of the message in what the door handed over.
    pub position: u64,
    /// The refused field (`traits.age`), empty for the whole message.
    pub field: String,
    /// Why.
    pub reason: String,
    /// The message's `messageId`, if it had one.
    pub message_id: Option<String>,
    /// When the node received it, milliseconds since the epoch.
    pub received_ms: i64,
    /// The door.
    pub source: Source,
}

/// What an ingest call did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct IngestReport {
    /// Messages applied (possibly with some fields refused).
    pub applied: u64,
    /// Messages acknowledged but not applied again (their `messageId` was
    /// already applied).
    pub duplicates: u64,
    /// Messages and fields refused.
    pub rejections: Vec<RejectionRecord>,
}

/// Why an ingest call failed as a whole (nothing in it was acknowledged;
/// a retry is safe, as `messageId`s are deduplicated).
#[derive(Clone, Debug, Error)]
pub enum IngestError {
    /// Proposing the batch (to the catalog) or one of its steps (to a
    /// shard group) failed: no leader, shutting down, the log failed.
    #[error(transparent)]
    Replication(#[from] ReplicationError),
    /// A step proposed to shard `shard` follows one that never reached its
    /// log (a leader change dropped it); the steps are retried from the
    /// lost one.
    #[error("shard {shard} is missing a step before {tag:?} (a proposal was lost); the steps are retried")]
    Gap {
        /// The shard.
        shard: u32,
        /// The refused step's tag.
        tag: Tag,
    },
    /// The batch is in the catalog's log (entry `index`, on a quorum), so
    /// it is durable and will be applied, but its shard steps are not
    /// applied yet and this call stopped waiting for them. Resending it is
    /// safe when its messages carry `messageId`s (they are deduplicated).
    #[error("the batch is committed (catalog entry {index}) but not applied yet: {reason}; the catalog's leader applies it, and resending it is deduplicated by messageId")]
    StepsPending {
        /// Its catalog entry.
        index: u64,
        /// Why the steps wait.
        reason: String,
    },
    /// The pipeline has stopped: the node is shutting down.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// The task parsing a batch ended without an answer (it panicked).
    #[error("parsing the batch failed: {reason}")]
    ParseTask {
        /// Why the task ended.
        reason: String,
    },
    /// The catalog answered the batch's entry with a result of another
    /// kind (a bug).
    #[error("the catalog answered an ingest entry with an unexpected result")]
    UnexpectedResult,
    /// The data directory's disk is nearly full: nothing was written, and
    /// writes are taken again once space is freed.
    #[error("disk full: {0}")]
    DiskFull(String),
    /// The batch was forwarded to the catalog's leader, which (or whose
    /// connection) answered with a failure: `code` is its gRPC code, and
    /// what was said of a retry holds as for this node's own answers.
    #[error("forwarded to node {leader}, which leads the catalog: {message}")]
    Forwarded {
        /// The leader it went to.
        leader: u64,
        /// The gRPC code of the answer.
        code: i32,
        /// Its message.
        message: String,
        /// The leader refused the batch before anything was appended (it
        /// no longer led the catalog, or was handing it over): sending it
        /// again, to whichever node leads now, is safe.
        nothing_appended: bool,
    },
    /// The batch could not be forwarded to the catalog's leader (nothing
    /// was sent, or its answer does not decode).
    #[error("cannot forward the batch to node {leader}, which leads the catalog: {reason}")]
    ForwardFailed {
        /// The leader.
        leader: u64,
        /// Why.
        reason: String,
    },
}

impl IngestError {
    /// Whether the batch was refused before anything of it was appended
    /// to the catalog's log: this node (or the leader it was forwarded
    /// to) did not lead the catalog, or was handing it over. Sending it
    /// again, to whichever node leads now, cannot apply it twice.
    pub fn nothing_appended(&self) -> bool {
        match self {
            IngestError::Replication(ReplicationError::NotLeader { group, .. }) => {
                *group == crate::cluster::placement::CATALOG_GROUP
            }
            IngestError::Forwarded { nothing_appended, .. } => *nothing_appended,
            _ => false,
        }
    }
}

/// A boxed future, for object-safe async traits.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where doors hand messages over. Implemented by the node; doors hold an
/// `Arc<dyn IngestSink>`.
pub trait IngestSink: Send + Sync + 'static {
    /// Applies `messages` in order and returns once every applied message is
    /// durable. `received_ms` is the server's receive time (INGEST.md's time
    /// rule uses it).
    fn ingest(
        &self,
        messages: Vec<Json>,
        received_ms: i64,
        source: Source,
    ) -> BoxFuture<'_, Result<IngestReport, IngestError>>;
}
