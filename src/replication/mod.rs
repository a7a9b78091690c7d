//! Replication: drives raft-rs for the many Raft groups of a node (one per
//! shard replica), with their logs in one shared raft-engine instance.

pub mod codec;
pub mod driver;
pub mod error;
pub mod log_check;
pub mod manifest;
pub mod raft_logger;
pub mod shard_machine;
pub mod snapshot_file;
pub mod storage;
pub mod transport;

pub use error::ReplicationError;
