//! The cluster layer: placement of profiles on shards and shards on Raft
//! groups, the catalog, the metadata group that sequences ingest and
//! holds the identity directory, the schema and saved segments, and the
//! forwarding of writes to the catalog's leader.

pub mod catalog;
pub mod forward;
pub mod membership;
pub mod placement;
