//! Checked conditions as bytes, so that the node that compiled a query can
//! send it to replicas on other nodes (`Forward.Read`, in
//! `cluster/forward.rs`): the planner compiles once, against its own
//! catalog, and every replica evaluates exactly what it compiled.
//!
//! A [`Cond`] is a DAG: a saved segment used several times is one
//! [`SegmentNode`] shared by [`Arc`]. The wire form keeps it one: the
//! shared nodes come first, in an order where a node refers only to nodes
//! before it, and every reference is the node's index. Each condition
//! (a query's roots and each node's body) is written in postfix order, a
//! flat list of ops, so that decoding never recurses: a hostile or
//! damaged input can neither overflow the stack nor build a tree deeper
//! than [`MAX_WIRE_DEPTH`] (which the evaluator and `Drop` would then
//! recurse through). The bytes are bincode through
//! [`codec`], whose decoding is held to the
//! size of its input.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::check::MAX_COMPILED_DEPTH;
use super::cond::{node_key, Cond, Did, Leaf, SegmentNode};
use crate::replication::codec;

/// The deepest condition a decode accepts, counting the levels inside the
/// shared nodes it refers to: twice what a compile may produce, so that
/// anything this build compiles travels.
pub const MAX_WIRE_DEPTH: usize = 2 * MAX_COMPILED_DEPTH;

/// One step of a condition in postfix order: leaves push a condition,
/// operators pop theirs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum Op {
    All,
    Empty,
    /// Pops one.
    Not,
    /// Pops this many.
    And(u32),
    /// Pops this many.
    Or(u32),
    Leaf(Leaf),
    /// Pops its filter first when `filtered`.
    Did {
        event: String,
        filtered: bool,
        min: u32,
        max: Option<u32>,
        from_ms: i64,
        to_ms: i64,
    },
    /// A shared node, by its index in [`Wire::nodes`].
    Segment(u32),
}

/// A shared node: its name and its body.
#[derive(Debug, Serialize, Deserialize)]
struct WireNode {
    name: String,
    body: Vec<Op>,
}

/// What travels: the shared nodes, then each root condition.
#[derive(Debug, Serialize, Deserialize)]
struct Wire {
    nodes: Vec<WireNode>,
    roots: Vec<Vec<Op>>,
}

/// The bytes of `conds` (a query's checked conditions, in order).
pub fn encode_conds(conds: &[Cond]) -> Vec<u8> {
    let mut encoder = Encoder::default();
    let roots = conds
        .iter()
        .map(|c| {
            let mut ops = Vec::new();
            encoder.emit(c, &mut ops);
            ops
        })
        .collect();
    let wire = Wire { nodes: encoder.nodes, roots };
    codec::encode(&wire).expect("bincode encodes a condition into a Vec")
}

/// The conditions `bytes` holds, with every shared node shared again; an
/// error says what is wrong with the bytes.
pub fn decode_conds(bytes: &[u8]) -> Result<Vec<Cond>, String> {
    let (wire, used): (Wire, usize) =
        codec::decode(bytes).map_err(|e| format!("the conditions do not decode: {e}"))?;
    if used != bytes.len() {
        return Err(format!("{} bytes follow the conditions", bytes.len() - used));
    }
    let mut nodes: Vec<(Arc<SegmentNode>, usize)> = Vec::with_capacity(wire.nodes.len());
    for (i, node) in wire.nodes.into_iter().enumerate() {
        let (cond, depth) =
            build(node.body, &nodes).map_err(|e| format!("shared segment {i} ({:?}): {e}", node.name))?;
        nodes.push((Arc::new(SegmentNode { name: node.name, cond }), depth));
    }
    wire.roots
        .into_iter()
        .enumerate()
        .map(|(i, ops)| build(ops, &nodes).map(|(c, _)| c).map_err(|e| format!("condition {i}: {e}")))
        .collect()
}

#[derive(Default)]
struct Encoder {
    nodes: Vec<WireNode>,
    /// Shared node (by [`node_key`]) → its index.
    index: HashMap<usize, u32>,
}

impl Encoder {
    fn emit(&mut self, c: &Cond, ops: &mut Vec<Op>) {
        match c {
            Cond::All => ops.push(Op::All),
            Cond::Empty => ops.push(Op::Empty),
            Cond::Not(inner) => {
                self.emit(inner, ops);
                ops.push(Op::Not);
            }
            Cond::And(items) | Cond::Or(items) => {
                for item in items {
                    self.emit(item, ops);
                }
                let n = items.len() as u32;
                ops.push(if matches!(c, Cond::And(_)) { Op::And(n) } else { Op::Or(n) });
            }
            Cond::Leaf(leaf) => ops.push(Op::Leaf(leaf.clone())),
            Cond::Did(did) => {
                if let Some(filter) = &did.filter {
                    self.emit(filter, ops);
                }
                ops.push(Op::Did {
                    event: did.event.clone(),
                    filtered: did.filter.is_some(),
                    min: did.min,
                    max: did.max,
                    from_ms: did.from_ms,
                    to_ms: did.to_ms,
                });
            }
            Cond::Segment(node) => {
                let key = node_key(node);
                let at = match self.index.get(&key) {
                    Some(&at) => at,
                    None => {
                        // Its own nodes first: they get the lower indices.
                        let mut body = Vec::new();
                        self.emit(&node.cond, &mut body);
                        let at = self.nodes.len() as u32;
                        self.nodes.push(WireNode { name: node.name.clone(), body });
                        self.index.insert(key, at);
                        at
                    }
                };
                ops.push(Op::Segment(at));
            }
        }
    }
}

/// Builds one condition from its postfix `ops` over the shared `nodes`
/// decoded so far (each with its depth); returns it and its depth.
fn build(ops: Vec<Op>, nodes: &[(Arc<SegmentNode>, usize)]) -> Result<(Cond, usize), String> {
    let mut stack: Vec<(Cond, usize)> = Vec::new();
    let pop = |stack: &mut Vec<(Cond, usize)>, n: usize, what: &str| {
        if stack.len() < n {
            return Err(format!("{what} takes {n} operand(s) and {} are there", stack.len()));
        }
        Ok(stack.split_off(stack.len() - n))
    };
    for op in ops {
        let (cond, depth) = match op {
            Op::All => (Cond::All, 1),
            Op::Empty => (Cond::Empty, 1),
            Op::Leaf(leaf) => (Cond::Leaf(leaf), 1),
            Op::Not => {
                let (inner, d) = pop(&mut stack, 1, "NOT")?.remove(0);
                (Cond::Not(Box::new(inner)), d + 1)
            }
            Op::And(n) | Op::Or(n) => {
                let and = matches!(op, Op::And(_));
                let items = pop(&mut stack, n as usize, if and { "AND" } else { "OR" })?;
                let d = items.iter().map(|(_, d)| *d).max().unwrap_or(0) + 1;
                let items = items.into_iter().map(|(c, _)| c).collect();
                (if and { Cond::And(items) } else { Cond::Or(items) }, d)
            }
            Op::Did { event, filtered, min, max, from_ms, to_ms } => {
                let (filter, d) = if filtered {
                    let (f, d) = pop(&mut stack, 1, "a behaviour's filter")?.remove(0);
                    (Some(Box::new(f)), d + 1)
                } else {
                    (None, 1)
                };
                (Cond::Did(Did { event, filter, min, max, from_ms, to_ms }), d)
            }
            Op::Segment(at) => {
                let (node, d) = nodes.get(at as usize).ok_or_else(|| {
                    format!("refers to shared segment {at}, and only {} come before it", nodes.len())
                })?;
                (Cond::Segment(node.clone()), d + 1)
            }
        };
        if depth > MAX_WIRE_DEPTH {
            return Err(format!("deeper than {MAX_WIRE_DEPTH} levels"));
        }
        stack.push((cond, depth));
    }
    match stack.len() {
        1 => Ok(stack.pop().expect("one condition")),
        n => Err(format!("holds {n} conditions where one belongs")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{IdentifierKind, Schema, TraitType};
    use crate::segment::cond::{Field, LeafTest};
    use crate::segment::{compile_many, distinct_nodes, Catalog, CheckContext};

    struct Saved(Vec<(&'static str, &'static str)>);

    impl Catalog for Saved {
        fn segment_text(&self, name: &str) -> Option<String> {
            self.0.iter().find(|(n, _)| *n == name).map(|(_, e)| e.to_string())
        }
    }

    fn schema() -> Schema {
        let mut s = Schema::new();
        for (name, ty) in [
            ("plan", TraitType::Keyword),
            ("age", TraitType::Number),
            ("vip", TraitType::Bool),
            ("tags", TraitType::List),
            ("bio", TraitType::Text),
            ("signed_up", TraitType::Timestamp),
        ] {
            s.declare_trait(name, ty).unwrap();
        }
        s.declare_property("Order Completed", "total", TraitType::Number).unwrap();
        s.declare_property("Order Completed", "sku", TraitType::Keyword).unwrap();
        s
    }

    fn compiled(texts: &[&str], saved: &Saved) -> Vec<Cond> {
        let schema = schema();
        let ctx = CheckContext { schema: &schema, catalog: saved, now_ms: 1_790_000_000_000 };
        let texts: Vec<String> = texts.iter().map(|t| t.to_string()).collect();
        compile_many(&texts, &ctx).unwrap()
    }

    #[test]
    fn every_construct_survives_the_trip() {
        let saved = Saved(vec![("buyers", r#"DID "Order Completed" AT LEAST 2 TIMES IN LAST 30 DAYS"#)]);
        let conds = compiled(
            &[
                r#"plan = "pro" AND age >= 30 AND vip = true"#,
                r#"tags CONTAINS "beta" OR NOT bio EXISTS OR plan NOT IN ("free", "trial")"#,
                r#"DID "Order Completed" WHERE total > 100 AND sku = "A1" AT MOST 3 TIMES IN LAST 7 DAYS"#,
                r#"NOT DID "Order Completed" IN LAST 1 DAYS"#,
                r#"signed_up BETWEEN "2026-01-01T00:00:00Z" AND NOW AND age != 40"#,
                r#"IN SEGMENT "buyers" AND plan = "pro""#,
                r#"user_id = "u1" OR anonymous_id = "a1""#,
                "ALL",
            ],
            &saved,
        );
        let back = decode_conds(&encode_conds(&conds)).unwrap();
        assert_eq!(back, conds);
        // And hand-made leaves the language makes rarely.
        let odd = vec![
            Cond::Empty,
            Cond::Leaf(Leaf { field: Field::FirstSeen, test: LeafTest::Range { lo: 3, hi: 9 } }),
            Cond::Leaf(Leaf {
                field: Field::Identifier(IdentifierKind::UserId),
                test: LeafTest::StrIn(vec!["a".into(), "b".into()]),
            }),
            Cond::Leaf(Leaf {
                field: Field::Trait { name: "age".into(), ty: TraitType::Number },
                test: LeafTest::NotEq(7),
            }),
        ];
        assert_eq!(decode_conds(&encode_conds(&odd)).unwrap(), odd);
    }

    #[test]
    fn a_shared_segment_stays_one_node() {
        let saved = Saved(vec![
            ("a", r#"plan = "pro" AND age > 3"#),
            ("b", r#"IN SEGMENT "a" OR vip = true"#),
            ("c", r#"IN SEGMENT "a" AND IN SEGMENT "b""#),
        ]);
        let conds = compiled(&[r#"IN SEGMENT "c" OR IN SEGMENT "b""#, r#"IN SEGMENT "a""#], &saved);
        let shared_before = distinct_nodes(&conds.iter().collect::<Vec<_>>());
        assert!(shared_before >= 2, "the test needs shared nodes: {conds:?}");
        let back = decode_conds(&encode_conds(&conds)).unwrap();
        assert_eq!(back, conds);
        assert_eq!(distinct_nodes(&back.iter().collect::<Vec<_>>()), shared_before);
    }

    #[test]
    fn damaged_bytes_are_errors_never_panics() {
        let saved =
            Saved(vec![("a", r#"plan = "pro" AND age > 3"#), ("b", r#"IN SEGMENT "a" OR vip = true"#)]);
        let conds = compiled(&[r#"IN SEGMENT "b" AND IN SEGMENT "a" AND tags CONTAINS "x""#], &saved);
        let bytes = encode_conds(&conds);
        for cut in 0..bytes.len() {
            assert!(decode_conds(&bytes[..cut]).is_err(), "a cut at {cut} of {} decoded", bytes.len());
        }
        for at in 0..bytes.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut damaged = bytes.clone();
                damaged[at] ^= flip;
                // Any outcome but a panic: some flips still decode (a
                // different literal, say).
                let _ = decode_conds(&damaged);
            }
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode_conds(&longer).unwrap_err().contains("follow"));
    }

    #[test]
    fn malformed_postfix_is_refused_with_what_is_wrong() {
        let leaf = Op::Leaf(Leaf { field: Field::LastSeen, test: LeafTest::Exists });
        let refuse = |nodes: Vec<WireNode>, roots: Vec<Vec<Op>>| {
            decode_conds(&codec::encode(&Wire { nodes, roots }).unwrap()).unwrap_err()
        };
        assert!(refuse(vec![], vec![vec![Op::Not]]).contains("NOT takes 1"));
        assert!(refuse(vec![], vec![vec![leaf.clone(), Op::And(2)]]).contains("AND takes 2"));
        assert!(refuse(vec![], vec![vec![leaf.clone(), leaf.clone()]]).contains("holds 2 conditions"));
        assert!(refuse(vec![], vec![vec![]]).contains("holds 0 conditions"));
        assert!(refuse(vec![], vec![vec![Op::Segment(0)]]).contains("only 0 come before"));
        // A node may refer only to the nodes before it: no cycles.
        let selfish = WireNode { name: "s".into(), body: vec![Op::Segment(0)] };
        assert!(refuse(vec![selfish], vec![vec![Op::Segment(0)]]).contains("shared segment 0"));
        // Depth is bounded, counting through shared nodes.
        let mut deep = vec![leaf.clone()];
        deep.extend(std::iter::repeat_n(Op::Not, MAX_WIRE_DEPTH));
        assert!(refuse(vec![], vec![deep]).contains("deeper than"));
        let half = |body_len: usize| {
            let mut ops = vec![leaf.clone()];
            ops.extend(std::iter::repeat_n(Op::Not, body_len));
            ops
        };
        let node = WireNode { name: "n".into(), body: half(MAX_WIRE_DEPTH / 2) };
        let mut root = vec![Op::Segment(0)];
        root.extend(std::iter::repeat_n(Op::Not, MAX_WIRE_DEPTH / 2));
        assert!(refuse(vec![node], vec![root]).contains("deeper than"));
    }

    #[test]
    fn the_deepest_compiled_condition_travels() {
        // As deep as the parser lets a text be.
        let mut text = String::from(r#"plan = "pro""#);
        for i in 0..(crate::segment::parser::MAX_DEPTH - 2) {
            text = if i % 2 == 0 {
                format!("(age > {i} OR {text})")
            } else {
                format!("(vip = true AND {text})")
            };
        }
        let conds = compiled(&[text.as_str()], &Saved(vec![]));
        assert_eq!(decode_conds(&encode_conds(&conds)).unwrap(), conds);
    }
}
