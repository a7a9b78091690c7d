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
//! - [`demo`]: the embedded default's data, built in-process from the
//!   synthetic dataset of `tools/datagen` (demo, benchmarks, tests).
//!
//! Layers still to come (see `ARCHITECTURE.md`): `identity` (identifier to
//! profile resolution and merges), `replication` (a raft-rs group per
//! shard), `cluster` (placement), `query` (planner and fan-out), `server`
//! (gRPC and HTTP) and `cli`.

pub mod cli;
pub mod cluster;
pub mod demo;
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
