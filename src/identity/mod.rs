//! Identity: which profile a message's identifiers belong to, and when two
//! profiles turn out to be one person.
//!
//! The layer holds one structure, the [`Directory`]: a map from every known
//! identifier (`user_id`, `anonymous_id`, by 128-bit hash) to the profile
//! that owns it, in one flat table kept in hash order, whose image is the
//! snapshot; a merge marks the absorbed profile as forwarded to its survivor
//! instead of rewriting its identifiers. [`Directory::resolve`] applies the
//! rules of INGEST.md "Identity resolution" (steps 1 to 5) to one message
//! and reports what happened as a [`Resolution`]: the profile the message
//! applies to, whether it was created, the merges in the order they happen
//! and the identifiers gained or dropped. The ingest layer turns that report
//! into shard commands (`Command::Merge`, `Command::Write`).
//!
//! The directory is replicated state: every replica applies the same
//! messages in the same order (from a Raft log) and must reach the same
//! directory. It therefore reads no clock, draws no random number and never
//! lets the iteration order of a hash table decide a result; profile ids are
//! allocated sequentially from 1, and [`Directory::encode`] gives the same
//! bytes for the same state. It depends on `model` (identifier kinds) and
//! `shard` (the profile id type) only.

pub mod directory;

pub use directory::{id_hash, Directory, DirectoryError, IdHash, MergeStep, Resolution};
