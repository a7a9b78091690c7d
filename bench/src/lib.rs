//! Cohort's benchmark harness, as a library shared by the `cohort-bench`
//! binary and the criterion benches.
//!
//! - [`dataset`]: the in-process build of the generated dataset, from
//!   [`cohort::demo`] (schema, conversion, placement, parallel build).
//! - [`pool`]: a small persistent pool that runs one job over every shard in
//!   parallel (the calling thread takes its share), so that a query does not
//!   pay a thread spawn.
//! - [`mix`]: the fixed query mix (classes a–f), the code that runs one query
//!   the way a node would (compile, fan out, merge), and the identifiers that
//!   membership checks use (shared with `duckdb_mix.py`).
//! - [`stats`]: percentiles (nearest rank).
//! - [`sysinfo`]: RSS, CPU model and memory from `/proc`.

pub mod dataset;
pub mod mix;
pub mod pool;
pub mod stats;
pub mod sysinfo;
