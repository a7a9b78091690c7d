//! The checked, typed condition tree that shards evaluate, and its normal
//! form.
//!
//! A [`Cond`] is what a parsed [`Expr`](super::ast::Expr) becomes once every
//! name is resolved against the schema, every literal is converted to the
//! trait's type, `NOW` is fixed to the query's time, windows are absolute
//! millisecond ranges and saved segments are inlined. [`normalize`] then
//! pushes `NOT` down to the leaves (De Morgan), flattens `AND`/`OR` and folds
//! constants, so that the evaluator sees only: `All`, `Empty`, leaves,
//! behaviours, `Not` of a leaf or behaviour, and `And`/`Or` of those.
//!
//! Two-valued logic is preserved: `Not(country = "FR")` is *not* rewritten
//! to `country != "FR"`, because the first is true for a profile with no
//! country and the second is false.

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
}

/// What a leaf tests.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
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
#[derive(Clone, Debug, PartialEq)]
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
#[derive(Clone, Debug, PartialEq)]
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
    }
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

/// True when `cond` is in the normal form [`normalize`] produces.
pub fn is_normal(cond: &Cond) -> bool {
    fn inner(c: &Cond, top: bool) -> bool {
        match c {
            Cond::All | Cond::Empty => top,
            Cond::Not(x) => matches!(**x, Cond::Leaf(_) | Cond::Did(_)) && inner(x, false),
            Cond::And(v) => v.len() >= 2 && v.iter().all(|x| !matches!(x, Cond::And(_)) && inner(x, false)),
            Cond::Or(v) => v.len() >= 2 && v.iter().all(|x| !matches!(x, Cond::Or(_)) && inner(x, false)),
            Cond::Leaf(l) => !matches!(l.test, LeafTest::Range { lo, hi } if lo > hi),
            Cond::Did(d) => {
                d.min >= 1
                    && !d.window_is_empty()
                    && d.filter
                        .as_deref()
                        .is_none_or(|f| !matches!(f, Cond::All | Cond::Empty) && inner(f, true))
            }
        }
    }
    inner(cond, true)
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
