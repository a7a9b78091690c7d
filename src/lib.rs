//! Cohort: an in-memory, distributed profile database, the engine at the
//! heart of a Customer Data Platform.
//!
//! Cohort collects customer messages (Segment Spec: identify, track, page,
//! screen, group, alias), reconciles every identifier into one profile per
//! person, and answers segment questions (how many match, is this person in,
//! who is in, how does it break down) over millions of profiles in well
//! under a millisecond.
//!
//! # Layout
//!
//! Each folder is one layer; a layer imports only the layers listed before it.
//!
//! - [`model`]: the vocabulary shared by all layers: trait types, typed
//!   values, the schema (declared and inferred types), RFC 3339 time, the
//!   order-preserving keys that range indexes use, and the Segment Spec
//!   message model shared by every ingestion door.
//! - [`segment`]: the segment language: lexer, parser, syntax tree, type
//!   check against a schema, normal form. Knows nothing of storage.
//! - [`shard`]: one shard's deterministic state machine: columns, dictionaries,
//!   bitmap and range indexes, the event store, `apply(batch)`, evaluation of
//!   a checked condition (count, membership, members, breakdown), and
//!   snapshot files. Knows nothing of Raft, gRPC or tokio.
//! - [`identity`]: the identifier directory and INGEST.md's merge rules.
//! - [`replication`]: raft-rs groups over one raft-engine log per node
//!   (the ready loop, storage, the shard as a state machine).
//! - [`cluster`]: placement (profile → shard → Raft group) and the catalog,
//!   the metadata group that sequences ingest.
//! - [`ingest`]: what doors hand over, and the pipeline from a batch to
//!   durable shard state.
//! - [`query`]: the planner: compile once, fan out to shards, merge.
//! - [`node`]: a node assembled from the layers above; [`datadir`]: its
//!   data directory's layout and the checks that it is whole.
//! - [`proto`]: generated `cohort.v1` code (used by `server` and `cli` only).
//! - [`server`]: the gRPC and HTTP doors, the one mapping of every error
//!   to a gRPC code, `serve` and `demo`.
//! - [`cli`]: the operator's command line.
//! - [`demo`]: the embedded default's data, built in-process from the
//!   synthetic dataset of `tools/datagen` (demo, benchmarks, tests).
//! - [`fuzzing`]: the bodies of the fuzz targets of `fuzz/`, shared with
//!   the test that replays their corpus and kept crash inputs.

pub mod cli;
pub mod cluster;
pub mod datadir;
pub mod demo;
pub mod fuzzing;
pub mod identity;
pub mod ingest;
pub mod model;
pub mod node;
pub mod proto;
pub mod query;
pub mod replication;
pub mod segment;
pub mod server;
pub mod shard;
