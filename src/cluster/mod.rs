//! The cluster layer: placement of profiles on shards and shards on Raft
//! groups, and the catalog, the metadata group that sequences ingest and
//! holds the identity directory, the schema and saved segments.

pub mod catalog;
pub mod placement;
