//! The generated protobuf and gRPC code of `proto/cohort/v1/cohort.proto`,
//! behind one module: no other layer below `server` sees a prost type,
//! but for `replication::transport`, which speaks the internal service
//! between nodes (`proto/cohort/internal/v1/raft.proto`).

#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// `cohort.v1`.
pub mod v1 {
    tonic::include_proto!("cohort.v1");

    /// The encoded file descriptor set, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("cohort_descriptor");
}

/// `cohort.internal.v1`: between the nodes of a cluster
/// (`proto/cohort/internal/v1/raft.proto`).
pub mod internal {
    tonic::include_proto!("cohort.internal.v1");
}
