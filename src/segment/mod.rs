//! The segment language: lexer, parser, syntax tree, type check against a
//! schema, and the normal form that shards evaluate.
//!
//! The pipeline is `text --parse--> Expr --check--> Cond --normalize--> Cond`.
//! [`compile`] runs all three; [`compile_many`] compiles the texts of one
//! query together, so that the saved segments they share are one node. The contract is `shared/SEGMENTS.md`; choices
//! where it is silent are documented in `parser.rs`, `check.rs` and the
//! README.

pub mod ast;
pub mod check;
pub mod cond;
pub mod error;
pub mod lexer;
pub mod parser;
pub mod wire;

pub use check::{
    check, check_save, compile, compile_many, references, Catalog, CheckContext, NoSegments,
    MAX_COMPILED_DEPTH, MAX_COMPILED_NODES,
};
pub use cond::{
    distinct_nodes, inline_single_uses, is_normal, node_key, normalize, uses_of, Cond, Did, Field, Leaf,
    LeafTest, SegmentNode,
};
pub use error::SegmentError;
pub use parser::{parse, parse_filter};
