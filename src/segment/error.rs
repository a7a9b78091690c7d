//! Errors of the segment language: syntax errors from the lexer and parser,
//! and check errors from typing an expression against a schema.
//!
//! Every variant carries the 1-based character position of the offending
//! text, so that a campaign engine can point at it. A query error is never
//! turned into an empty result.

use thiserror::Error;

/// A segment that cannot be parsed or checked.
#[derive(Clone, Debug, PartialEq, Error)]
pub enum SegmentError {
    /// The text does not follow the grammar.
    #[error("syntax error at position {position}: expected {expected}, found {found}")]
    Syntax {
        /// 1-based character position.
        position: usize,
        /// What the grammar allows here, in words (`a value`, `")"`).
        expected: String,
        /// What stands there (`"AND"`, `end of query`).
        found: String,
    },
    /// A token is malformed (bad escape, unterminated string, bad number,
    /// bad timestamp, a unit of no fixed length, an out-of-range integer).
    #[error("invalid query at position {position}: {message}")]
    Invalid {
        /// 1-based character position.
        position: usize,
        /// What is wrong.
        message: String,
    },
    /// A name the schema does not know.
    #[error("unknown {what} `{name}` at position {position}")]
    UnknownName {
        /// 1-based character position.
        position: usize,
        /// The name as written.
        name: String,
        /// `trait` or `property of event "x"`.
        what: String,
    },
    /// A literal of the wrong type for the trait or property.
    #[error("type mismatch at position {position}: `{name}` is {expected}, but the value is {found}")]
    TypeMismatch {
        /// 1-based character position of the literal.
        position: usize,
        /// The trait or property.
        name: String,
        /// The trait's type, in words.
        expected: String,
        /// The literal, in words.
        found: String,
    },
    /// An operator that the trait's type does not support.
    #[error("unsupported operator at position {position}: `{name}` is {ty}, which does not support {op}")]
    UnsupportedOperator {
        /// 1-based character position of the predicate.
        position: usize,
        /// The trait or property.
        name: String,
        /// The trait's type, in words.
        ty: String,
        /// The operator, as written (`>`, `CONTAINS`).
        op: String,
    },
    /// `IN SEGMENT "x"` names no saved segment.
    #[error("unknown segment \"{name}\" at position {position}")]
    UnknownSegment {
        /// 1-based character position.
        position: usize,
        /// The segment's name.
        name: String,
    },
    /// A saved segment refers to itself, directly or through others.
    #[error("segment cycle: {}", path.join(" -> "))]
    SegmentCycle {
        /// The chain of names, first and last equal.
        path: Vec<String>,
    },
    /// The compiled condition has more distinct nodes than allowed.
    #[error(
        "the segment is too large: it compiles to {nodes} distinct condition nodes (each saved segment \
         it uses counted once), at most {max} are allowed"
    )]
    TooLarge {
        /// Its distinct nodes.
        nodes: usize,
        /// The bound, [`MAX_COMPILED_NODES`](crate::segment::MAX_COMPILED_NODES).
        max: usize,
    },
    /// The condition nests deeper than allowed, through saved segments.
    #[error(
        "the segment is nested too deeply: more than {max} levels (each NOT, AND, OR, DID, predicate \
         and IN SEGMENT is a level, through saved segments)"
    )]
    TooDeep {
        /// The bound, [`MAX_COMPILED_DEPTH`](crate::segment::MAX_COMPILED_DEPTH).
        max: usize,
    },
    /// A saved segment's stored text no longer parses or checks.
    #[error("saved segment \"{name}\" is invalid: {source}")]
    InSavedSegment {
        /// The segment's name.
        name: String,
        /// What is wrong inside it.
        source: Box<SegmentError>,
    },
}

impl SegmentError {
    /// The 1-based position the error points at, if it has one.
    pub fn position(&self) -> Option<usize> {
        match self {
            SegmentError::Syntax { position, .. }
            | SegmentError::Invalid { position, .. }
            | SegmentError::UnknownName { position, .. }
            | SegmentError::TypeMismatch { position, .. }
            | SegmentError::UnsupportedOperator { position, .. }
            | SegmentError::UnknownSegment { position, .. } => Some(*position),
            SegmentError::SegmentCycle { .. }
            | SegmentError::InSavedSegment { .. }
            | SegmentError::TooLarge { .. }
            | SegmentError::TooDeep { .. } => None,
        }
    }
}
