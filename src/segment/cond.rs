//! The checked, typed condition tree that shards evaluate, and its normal
//! form.
//!
//! A [`Cond`] is what a parsed [`Expr`](super::ast::Expr) becomes once every
//! name is resolved against the schema, every literal is converted to the
//! trait's type, `NOW` is fixed to the query's time, windows are absolute
//! millisecond ranges and saved segments are resolved. [`normalize`] then
//! pushes `NOT` down to the leaves (De Morgan), flattens `AND`/`OR` and folds
//! constants, so that the evaluator sees only: `All`, `Empty`, leaves,
//! behaviours, shared saved segments, `Not` of a leaf, behaviour or shared
//! segment, and `And`/`Or` of those.
//!
//! A saved segment that a query uses once is inlined. One that it uses more
//! than once (directly, or through other saved segments) is compiled once
//! into a [`SegmentNode`] that every reference holds by [`Arc`]: the
//! condition is a DAG, not a tree, so that `IN SEGMENT "a" OR IN SEGMENT "a"`
//! nested 23 times is 23 nodes rather than 2^23 copies, and the evaluator
//! computes each shared node once per shard per query. A shared node's own
//! condition is in normal form; `NOT` stops above it rather than being pushed
//! into it (which would need a second, negated copy).
//!
//! Two-valued logic is preserved: `Not(country = "FR")` is *not* rewritten
//! to `country != "FR"`, because the first is true for a profile with no
//! country and the second is false.

use std::collections::HashMap;
use std::sync::Arc;

use crate::model::{IdentifierKind, TraitType};

/// A typed condition over one profile (or, inside a behaviour's filter,
/// over one event's properties).
#[derive(Clone, Debug, PartialEq)]
pub enum Cond {
    /// Every live profile (every event, inside a filter).
    All,
    /// Nothing.
    Empty,
    /// The complement within the universe.
    Not(Box<Cond>),
    /// All of these.
    And(Vec<Cond>),
    /// Any of these.
    Or(Vec<Cond>),
    /// A test on one trait, identifier or property.
    Leaf(Leaf),
    /// A behaviour: how many matching events in a window.
    Did(Did),
    /// A saved segment shared by several references in one query: one
    /// node, evaluated once per shard per query.
    Segment(Arc<SegmentNode>),
}

/// A saved segment compiled once and shared, by [`Arc`], by every place of a
/// query that refers to it.
#[derive(Debug)]
pub struct SegmentNode {
    /// The saved segment's name (for messages and debugging; identity is the
    /// node itself).
    pub name: String,
    /// Its condition, in normal form.
    pub cond: Cond,
}

impl PartialEq for SegmentNode {
    /// Two nodes are equal when they are one node, or when they have the
    /// same name and the same condition (two compilations of one segment).
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && (std::ptr::eq(self, other) || self.cond == other.cond)
    }
}

/// The identity of a shared node, as a key for per-query tables; valid while
/// the node is alive.
pub fn node_key(node: &Arc<SegmentNode>) -> usize {
    Arc::as_ptr(node) as usize
}

/// What a leaf tests.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum Field {
    /// A stored trait (or, inside a filter, an event property) and its type.
    Trait {
        /// The trait's name.
        name: String,
        /// The trait's type.
        ty: TraitType,
    },
    /// The earliest message time applied to the profile.
    FirstSeen,
    /// The latest message time applied to the profile.
    LastSeen,
    /// One kind of identifier; true if any identifier of the kind matches.
    Identifier(IdentifierKind),
}

/// A test on one field. Every test but `Not` of it is false for a profile
/// that does not have the field.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum LeafTest {
    /// The field has a value.
    Exists,
    /// A keyword, text or identifier equals one of these (sorted, distinct).
    StrIn(Vec<String>),
    /// A keyword or text has a value that is none of these (sorted, distinct).
    StrNotIn(Vec<String>),
    /// A number or timestamp whose order key lies in `lo..=hi` (keys from
    /// [`num_key`](crate::model::num_key) / [`time_key`](crate::model::time_key)).
    /// Normal form never holds an empty range (`lo > hi` folds to `Empty`).
    Range {
        /// Smallest key, inclusive.
        lo: u64,
        /// Largest key, inclusive.
        hi: u64,
    },
    /// A number or timestamp that has a value whose key is not this.
    NotEq(u64),
    /// A bool equal to this.
    Bool(bool),
    /// A list that holds this element.
    Contains(String),
}

/// A leaf: a field and a test.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Leaf {
    /// What is tested.
    pub field: Field,
    /// The test.
    pub test: LeafTest,
}

/// `DID "event" WHERE filter` with between `min` and `max` matching events
/// whose time lies in `from_ms..=to_ms`. Normal form has `min >= 1` (a
/// behaviour that admits zero events is rewritten with `Not`).
#[derive(Clone, Debug, PartialEq)]
pub struct Did {
    /// The event name.
    pub event: String,
    /// Condition on the event's properties, in normal form; `None` is all events.
    pub filter: Option<Box<Cond>>,
    /// Fewest matching events, at least 1 in normal form.
    pub min: u32,
    /// Most matching events, if bounded.
    pub max: Option<u32>,
    /// Earliest event time counted, inclusive.
    pub from_ms: i64,
    /// Latest event time counted, inclusive.
    pub to_ms: i64,
}

impl Did {
    /// True when the window admits no instant.
    pub fn window_is_empty(&self) -> bool {
        self.from_ms > self.to_ms
    }

    /// True when `count` matching events satisfy the frequency.
    pub fn count_matches(&self, count: u64) -> bool {
        count >= u64::from(self.min) && self.max.is_none_or(|m| count <= u64::from(m))
    }
}

/// Puts a condition in normal form: `NOT` only directly above a leaf or a
/// behaviour, no nested `AND` in `AND` nor `OR` in `OR`, no `All`/`Empty`
/// inside `AND`/`OR`, no one-operand `AND`/`OR`, no `Not(Not(..))`, behaviours
/// with `min >= 1` and a non-empty window, ranges that are not empty.
pub fn normalize(cond: Cond) -> Cond {
    norm(cond, false)
}

fn norm(cond: Cond, negate: bool) -> Cond {
    match cond {
        Cond::All => {
            if negate {
                Cond::Empty
            } else {
                Cond::All
            }
        }
        Cond::Empty => {
            if negate {
                Cond::All
            } else {
                Cond::Empty
            }
        }
        Cond::Not(inner) => norm(*inner, !negate),
        Cond::And(items) => {
            let items = items.into_iter().map(|c| norm(c, negate)).collect();
            if negate {
                make_or(items)
            } else {
                make_and(items)
            }
        }
        Cond::Or(items) => {
            let items = items.into_iter().map(|c| norm(c, negate)).collect();
            if negate {
                make_and(items)
            } else {
                make_or(items)
            }
        }
        Cond::Leaf(leaf) => {
            let base = match &leaf.test {
                LeafTest::Range { lo, hi } if lo > hi => Cond::Empty,
                LeafTest::StrIn(v) if v.is_empty() => Cond::Empty,
                _ => Cond::Leaf(leaf),
            };
            negated(base, negate)
        }
        Cond::Did(did) => {
            let did = Did { filter: did.filter.map(|f| Box::new(normalize(*f))), ..did };
            negated(norm_did(did), negate)
        }
        Cond::Segment(node) => negated(shared(node), negate),
    }
}

/// A shared segment as it stands in normal form: its condition folds away
/// when it is a constant, and is copied in when it is a single leaf (no
/// cheaper to share than to repeat); otherwise the node stays shared. Its
/// condition is already normal.
fn shared(node: Arc<SegmentNode>) -> Cond {
    match &node.cond {
        Cond::All => Cond::All,
        Cond::Empty => Cond::Empty,
        leaf @ Cond::Leaf(_) => leaf.clone(),
        not @ Cond::Not(inner) if matches!(**inner, Cond::Leaf(_)) => not.clone(),
        _ => Cond::Segment(node),
    }
}

/// Inlines the shared segments that `conds` use only once between them,
/// keeps the others shared (one node each, referred to by every use), and
/// returns the conditions in normal form. A use is a reference from one
/// node of the DAG: the body of a shared segment is counted once however
/// often the segment is used.
pub fn inline_single_uses(conds: Vec<Cond>) -> Vec<Cond> {
    let uses = uses_of(conds.iter());
    let mut rebuilt = HashMap::new();
    conds.iter().map(|c| normalize(inline(c, &uses, &mut rebuilt))).collect()
}

/// The number of references to each shared node of `conds` (by
/// [`node_key`]), each node's own condition visited once.
pub fn uses_of<'c>(conds: impl IntoIterator<Item = &'c Cond>) -> HashMap<usize, usize> {
    let mut uses = HashMap::new();
    for c in conds {
        count_uses(c, &mut uses);
    }
    uses
}

/// Counts the references to each shared node, visiting each node's body
/// once.
fn count_uses(c: &Cond, uses: &mut HashMap<usize, usize>) {
    match c {
        Cond::All | Cond::Empty | Cond::Leaf(_) | Cond::Did(_) => {}
        Cond::Not(x) => count_uses(x, uses),
        Cond::And(v) | Cond::Or(v) => v.iter().for_each(|x| count_uses(x, uses)),
        Cond::Segment(node) => {
            let n = uses.entry(node_key(node)).or_insert(0);
            *n += 1;
            if *n == 1 {
                count_uses(&node.cond, uses);
            }
        }
    }
}

/// `c` with the nodes used once replaced by their conditions; each node
/// used more than once is rebuilt once (in `rebuilt`) and shared.
fn inline(c: &Cond, uses: &HashMap<usize, usize>, rebuilt: &mut HashMap<usize, Cond>) -> Cond {
    match c {
        Cond::All => Cond::All,
        Cond::Empty => Cond::Empty,
        Cond::Leaf(l) => Cond::Leaf(l.clone()),
        Cond::Did(d) => Cond::Did(d.clone()),
        Cond::Not(x) => Cond::Not(Box::new(inline(x, uses, rebuilt))),
        Cond::And(v) => Cond::And(v.iter().map(|x| inline(x, uses, rebuilt)).collect()),
        Cond::Or(v) => Cond::Or(v.iter().map(|x| inline(x, uses, rebuilt)).collect()),
        Cond::Segment(node) => {
            let key = node_key(node);
            if uses.get(&key).copied().unwrap_or(0) <= 1 {
                return inline(&node.cond, uses, rebuilt);
            }
            if let Some(done) = rebuilt.get(&key) {
                return done.clone();
            }
            let cond = normalize(inline(&node.cond, uses, rebuilt));
            let done = shared(Arc::new(SegmentNode { name: node.name.clone(), cond }));
            rebuilt.insert(key, done.clone());
            done
        }
    }
}

/// The number of distinct nodes of a condition: every node of the tree,
/// but each shared segment and its condition counted once, however often
/// it is used. Behaviours count the nodes of their filters.
pub fn distinct_nodes(conds: &[&Cond]) -> usize {
    fn walk(c: &Cond, seen: &mut std::collections::HashSet<usize>) -> usize {
        match c {
            Cond::All | Cond::Empty | Cond::Leaf(_) => 1,
            Cond::Did(d) => 1 + d.filter.as_deref().map_or(0, |f| walk(f, seen)),
            Cond::Not(x) => 1 + walk(x, seen),
            Cond::And(v) | Cond::Or(v) => 1 + v.iter().map(|x| walk(x, seen)).sum::<usize>(),
            Cond::Segment(node) => {
                if seen.insert(node_key(node)) {
                    1 + walk(&node.cond, seen)
                } else {
                    0
                }
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    conds.iter().map(|c| walk(c, &mut seen)).sum()
}

/// Rewrites a behaviour so that `min >= 1`.
fn norm_did(did: Did) -> Cond {
    if let Some(max) = did.max {
        if max < did.min {
            return Cond::Empty;
        }
    }
    // A filter that no event can satisfy, or an empty window, leaves zero
    // matching events.
    let never = did.window_is_empty() || matches!(did.filter.as_deref(), Some(Cond::Empty));
    let did = Did { filter: did.filter.filter(|f| !matches!(**f, Cond::All)), ..did };
    if did.min == 0 {
        return match did.max {
            None => Cond::All,
            Some(_) if never => Cond::All,
            // count <= max  ==  NOT (count >= max + 1)
            Some(max) => match max.checked_add(1) {
                Some(next) => Cond::Not(Box::new(Cond::Did(Did { min: next, max: None, ..did }))),
                None => Cond::All,
            },
        };
    }
    if never {
        Cond::Empty
    } else {
        Cond::Did(did)
    }
}

fn negated(cond: Cond, negate: bool) -> Cond {
    if !negate {
        return cond;
    }
    match cond {
        Cond::All => Cond::Empty,
        Cond::Empty => Cond::All,
        Cond::Not(inner) => *inner,
        other => Cond::Not(Box::new(other)),
    }
}

fn make_and(items: Vec<Cond>) -> Cond {
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        match item {
            Cond::All => {}
            Cond::Empty => return Cond::Empty,
            Cond::And(inner) => out.extend(inner),
            other => out.push(other),
        }
    }
    match out.len() {
        0 => Cond::All,
        1 => out.pop().unwrap_or(Cond::All),
        _ => Cond::And(out),
    }
}

fn make_or(items: Vec<Cond>) -> Cond {
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        match item {
            Cond::Empty => {}
            Cond::All => return Cond::All,
            Cond::Or(inner) => out.extend(inner),
            other => out.push(other),
        }
    }
    match out.len() {
        0 => Cond::Empty,
        1 => out.pop().unwrap_or(Cond::Empty),
        _ => Cond::Or(out),
    }
}

/// True when `cond` is in the normal form [`normalize`] produces. Each
/// shared segment's condition is checked once, as a condition of its own.
pub fn is_normal(cond: &Cond) -> bool {
    fn inner(c: &Cond, top: bool, seen: &mut std::collections::HashSet<usize>) -> bool {
        match c {
            Cond::All | Cond::Empty => top,
            // A shared node holds no constant and no lone leaf (those are
            // folded or copied in), and its condition is checked once.
            Cond::Segment(node) => {
                !seen.insert(node_key(node))
                    || (matches!(shared(node.clone()), Cond::Segment(_)) && inner(&node.cond, true, seen))
            }
            Cond::Not(x) => {
                matches!(**x, Cond::Leaf(_) | Cond::Did(_) | Cond::Segment(_)) && inner(x, false, seen)
            }
            Cond::And(v) => {
                v.len() >= 2 && v.iter().all(|x| !matches!(x, Cond::And(_)) && inner(x, false, seen))
            }
            Cond::Or(v) => {
                v.len() >= 2 && v.iter().all(|x| !matches!(x, Cond::Or(_)) && inner(x, false, seen))
            }
            Cond::Leaf(l) => !matches!(l.test, LeafTest::Range { lo, hi } if lo > hi),
            Cond::Did(d) => {
                d.min >= 1
                    && !d.window_is_empty()
                    && d.filter
                        .as_deref()
                        .is_none_or(|f| !matches!(f, Cond::All | Cond::Empty) && inner(f, true, seen))
            }
        }
    }
    inner(cond, true, &mut std::collections::HashSet::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kw(name: &str, v: &str) -> Cond {
        Cond::Leaf(Leaf {
            field: Field::Trait { name: name.into(), ty: TraitType::Keyword },
            test: LeafTest::StrIn(vec![v.into()]),
        })
    }

    fn did(min: u32, max: Option<u32>) -> Did {
        Did { event: "e".into(), filter: None, min, max, from_ms: 0, to_ms: 10 }
    }

    #[test]
    fn de_morgan_keeps_not_on_leaves() {
        let c = Cond::Not(Box::new(Cond::And(vec![kw("a", "1"), Cond::Not(Box::new(kw("b", "2")))])));
        let n = normalize(c);
        assert_eq!(n, Cond::Or(vec![Cond::Not(Box::new(kw("a", "1"))), kw("b", "2")]));
        assert!(is_normal(&n));
    }

    #[test]
    fn folds_constants_and_flattens() {
        let c = Cond::And(vec![Cond::All, Cond::And(vec![kw("a", "1"), kw("b", "1")])]);
        assert_eq!(normalize(c), Cond::And(vec![kw("a", "1"), kw("b", "1")]));
        assert_eq!(normalize(Cond::Or(vec![kw("a", "1"), Cond::Not(Box::new(Cond::Empty))])), Cond::All);
        assert_eq!(normalize(Cond::And(vec![kw("a", "1"), Cond::Empty])), Cond::Empty);
        assert_eq!(normalize(Cond::Not(Box::new(Cond::Not(Box::new(kw("a", "1")))))), kw("a", "1"));
    }

    #[test]
    fn behaviours_admitting_zero_become_negations() {
        assert_eq!(normalize(Cond::Did(did(0, None))), Cond::All);
        assert_eq!(normalize(Cond::Did(did(0, Some(2)))), Cond::Not(Box::new(Cond::Did(did(3, None)))));
        assert_eq!(normalize(Cond::Did(did(3, Some(2)))), Cond::Empty);
        let empty_window = Did { from_ms: 5, to_ms: 4, ..did(1, None) };
        assert_eq!(normalize(Cond::Did(empty_window.clone())), Cond::Empty);
        assert_eq!(normalize(Cond::Did(Did { min: 0, max: Some(0), ..empty_window })), Cond::All);
    }

    #[test]
    fn empty_ranges_fold() {
        let c = Cond::Leaf(Leaf {
            field: Field::Trait { name: "n".into(), ty: TraitType::Number },
            test: LeafTest::Range { lo: 5, hi: 4 },
        });
        assert_eq!(normalize(c.clone()), Cond::Empty);
        assert_eq!(normalize(Cond::Not(Box::new(c))), Cond::All);
    }
}
