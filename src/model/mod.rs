//! The data model shared by every layer: trait types, typed values, the
//! schema with declared and inferred types, time parsing and the ordered key
//! encoding that the range indexes use.
//!
//! This is the vocabulary below everything else: the segment checker types
//! expressions against a [`Schema`], the shard stores [`Value`]s in columns
//! chosen by [`TraitType`], and ingestion coerces JSON into values here.

pub mod message;
mod schema;
mod time;
mod value;

pub use schema::{
    FieldType, IdentifierKind, Schema, SchemaCursor, SchemaLimits, SchemaPage, GROUPS_TRAIT, RESERVED_NAMES,
};
pub use time::{
    describe_time_ms, format_rfc3339_ms, is_rfc3339, parse_rfc3339_ms, time_in_range, MAX_TIME_MS,
    MIN_TIME_MS, TIME_RANGE,
};
pub use value::{key_to_num, key_to_time, num_key, time_key, TraitType, Value};

use thiserror::Error;

/// A value that does not fit the schema, or a schema change that is refused.
#[derive(Clone, Debug, PartialEq, Error)]
pub enum ModelError {
    /// A value of the wrong type for its trait or property.
    #[error("`{name}` is {expected}, but the value is {found}")]
    WrongType {
        /// The trait or property (dotted path for nested objects).
        name: String,
        /// The trait's type, in words.
        expected: String,
        /// What was sent, in words.
        found: String,
    },
    /// A value that no trait type can hold (an array of numbers, say).
    #[error("`{name}` cannot be stored: {reason}")]
    Unsupported {
        /// The trait or property.
        name: String,
        /// Why.
        reason: String,
    },
    /// Declaring a type that contradicts the one already in force.
    #[error("`{name}` is already {existing}; cannot declare it {requested}")]
    Conflict {
        /// The trait or property.
        name: String,
        /// The type in force.
        existing: TraitType,
        /// The type asked for.
        requested: TraitType,
    },
    /// A name the database maintains itself.
    #[error("`{name}` is reserved and maintained by the database")]
    Reserved {
        /// The reserved name.
        name: String,
    },
    /// A new name refused by one of the schema's caps.
    #[error(
        "{what} refused: {problem}, and the cap `{cap}` is {value} (raise it in the node's configuration)"
    )]
    OverCap {
        /// What was refused (`new trait `x``).
        what: String,
        /// Where the schema stands (`the schema holds 10000 traits`).
        problem: String,
        /// The configuration key of the cap.
        cap: &'static str,
        /// The cap's value.
        value: usize,
    },
    /// A type name that is not one of the six.
    #[error("unknown type `{0}`: expected keyword, text, number, bool, timestamp or list")]
    UnknownType(String),
}
