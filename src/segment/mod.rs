//! The segment language: lexer, parser, syntax tree, type check against a
//! schema, and the normal form that shards evaluate.
//!
//! The pipeline is `text --parse--> Expr --check--> Cond --normalize--> Cond`.
//! [`compile`] runs all three. The contract is `shared/SEGMENTS.md`; choices
//! where it is silent are documented in `parser.rs`, `check.rs` and the
//! README.

pub mod ast;
pub mod check;
pub mod cond;
pub mod error;
pub mod lexer;
pub mod parser;

pub use check::{check, check_save, compile, references, Catalog, CheckContext, NoSegments};
pub use cond::{is_normal, normalize, Cond, Did, Field, Leaf, LeafTest};
pub use error::SegmentError;
pub use parser::{parse, parse_filter};
