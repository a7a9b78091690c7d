//! Evaluation of a checked condition on one shard: count, membership of one
//! profile, members in row order with a resume cursor, and breakdown.
//!
//! A condition in normal form ([`normalize`](crate::segment::normalize)) is
//! evaluated bottom-up as bitmap operations. Leaves borrow index bitmaps
//! where they can ([`Cow`]). `AND` evaluates its positive operands in order
//! of estimated cardinality (most selective first), subtracts its negative
//! operands (`NOT x`) afterwards, and stops as soon as the running result is
//! empty. A count does not build the final set: the last operation of an
//! `AND`/`OR`/`NOT` is done with `intersection_len`, `union_len` or by
//! subtraction of lengths, and a lone range is counted from its bins.
//!
//! Every leaf bitmap is a subset of the universe (removing a row clears it
//! from every index), so `NOT x` is `universe - x` and its count is
//! `|universe| - |x|`.
//!
//! A saved segment shared by several references of a query is one node of
//! the condition (a DAG): a [`Memo`] keeps, for one query on one shard, each
//! shared node's rows once built, its membership per row once checked, its
//! estimate and whether it is costly, so that each is computed once however
//! many paths lead to it. A node's rows are dropped after its last use.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use roaring::{MultiOps, RoaringBitmap};

use super::code_scan;
use super::events::{EventTable, Partition, PropColumn, DAY_MS};
use super::{Row, Shard, ShardError, TraitColumn, NO_CODE};
use crate::model::{num_key, time_key, IdentifierKind, TraitType};
use crate::segment::{node_key, uses_of, Cond, Did, Field, Leaf, LeafTest, SegmentNode};

type Bits<'a> = Cow<'a, RoaringBitmap>;

/// Below this many rows, an `AND` checks a costly operand row by row.
const ROW_BY_ROW_MAX: u64 = 256;

fn empty<'a>() -> Bits<'a> {
    Cow::Owned(RoaringBitmap::new())
}

/// A per-row event counter of [`Shard::did`]: one, two or four bytes.
trait Counter: Copy + Default + Ord + std::ops::AddAssign + From<bool> + TryFrom<u32> {
    /// Mask of the counters in `lo..=hi`.
    fn mask_between(counts: &[Self], lo: Self, hi: Self) -> Vec<u64>;
}

impl Counter for u8 {
    fn mask_between(counts: &[u8], lo: u8, hi: u8) -> Vec<u64> {
        code_scan::mask_between_u8(counts, lo, hi)
    }
}

impl Counter for u16 {
    fn mask_between(counts: &[u16], lo: u16, hi: u16) -> Vec<u64> {
        code_scan::mask_between_u16(counts, lo, hi)
    }
}

impl Counter for u32 {
    fn mask_between(counts: &[u32], lo: u32, hi: u32) -> Vec<u64> {
        code_scan::mask_between_u32(counts, lo, hi)
    }
}

/// What one query has computed of its shared saved segments on one shard.
///
/// Keyed by node identity ([`node_key`]); every entry holds its node, so
/// that the address cannot be reused by another node while the memo lives.
/// A memo belongs to one query's conditions on one shard (the shard's state
/// must not change while it is used).
pub struct Memo {
    /// What is known of each shared node met so far.
    nodes: HashMap<usize, Entry>,
    /// References to each node's rows not yet made; at zero the rows are
    /// handed over rather than kept.
    uses_left: HashMap<usize, usize>,
}

/// What a [`Memo`] knows of one shared node.
struct Entry {
    /// Keeps the node (and so its address, the key) alive.
    _node: Arc<SegmentNode>,
    /// Its rows, once built and while still needed.
    set: Option<RoaringBitmap>,
    /// Its membership of single rows, once checked.
    rows: HashMap<Row, bool>,
    /// Its estimate, once computed.
    estimate: Option<u64>,
    /// Whether it is costly to build, once known.
    costly: Option<bool>,
}

impl Memo {
    /// A memo for evaluating `conds` (the conditions of one query).
    pub fn for_query<'c>(conds: impl IntoIterator<Item = &'c Cond>) -> Memo {
        Memo { nodes: HashMap::new(), uses_left: uses_of(conds) }
    }

    /// The entry of `node`, created empty on first sight.
    fn entry(&mut self, node: &Arc<SegmentNode>) -> &mut Entry {
        self.nodes.entry(node_key(node)).or_insert_with(|| Entry {
            _node: node.clone(),
            set: None,
            rows: HashMap::new(),
            estimate: None,
            costly: None,
        })
    }

    /// Counts one use of `node`'s rows; true when it was the last one
    /// expected (a node not counted at creation is never the last).
    fn use_once(&mut self, node: &Arc<SegmentNode>) -> bool {
        match self.uses_left.get_mut(&node_key(node)) {
            Some(left) => {
                *left = left.saturating_sub(1);
                *left == 0
            }
            None => false,
        }
    }
}

/// Counts per value, as a breakdown returns them.
pub type Breakdown = Vec<(String, u64)>;

/// Keeps the `n` largest counts, ties broken by value, largest first.
pub fn top_n(mut counts: Breakdown, n: usize) -> Breakdown {
    counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    counts.truncate(n);
    counts
}

impl Shard {
    /// The rows that satisfy `cond`.
    pub fn eval<'a>(&'a self, cond: &Cond) -> Bits<'a> {
        self.eval_in(cond, &mut Memo::for_query([cond]))
    }

    /// The rows that satisfy `cond`, with the shared nodes' results in `memo`.
    pub fn eval_in<'a>(&'a self, cond: &Cond, memo: &mut Memo) -> Bits<'a> {
        match cond {
            Cond::All => Cow::Borrowed(&self.universe),
            Cond::Empty => empty(),
            Cond::Not(inner) => Cow::Owned(&self.universe - self.eval_in(inner, memo).as_ref()),
            Cond::And(items) => self.eval_and(items, memo),
            Cond::Or(items) => {
                let parts: Vec<Bits<'_>> = items.iter().map(|c| self.eval_in(c, memo)).collect();
                Cow::Owned(parts.iter().map(|b| b.as_ref()).union())
            }
            Cond::Leaf(leaf) => self.leaf(leaf),
            Cond::Did(did) => Cow::Owned(self.did(did)),
            Cond::Segment(node) => Cow::Owned(self.segment_rows(node, memo)),
        }
    }

    /// The rows of a shared node: built once per memo, and handed over
    /// (not copied) at the last use.
    fn segment_rows(&self, node: &Arc<SegmentNode>, memo: &mut Memo) -> RoaringBitmap {
        let last = memo.use_once(node);
        let entry = memo.entry(node);
        if let Some(set) = &entry.set {
            return if last { entry.set.take().unwrap_or_default() } else { set.clone() };
        }
        let set = self.eval_in(&node.cond, memo).into_owned();
        if !last {
            memo.entry(node).set = Some(set.clone());
        }
        set
    }

    /// Operands of an `AND` split into positives (most selective first) and
    /// negated ones (largest first, so the running set empties soonest).
    fn plan_and<'c>(&self, items: &'c [Cond], memo: &mut Memo) -> (Vec<&'c Cond>, Vec<&'c Cond>) {
        let mut pos: Vec<(u64, &Cond)> = Vec::new();
        let mut neg: Vec<(u64, &Cond)> = Vec::new();
        for c in items {
            match c {
                Cond::Not(inner) => neg.push((self.estimate_in(inner, memo), inner)),
                other => pos.push((self.estimate_in(other, memo), other)),
            }
        }
        // Most selective first, but ranges after the other operands: a range
        // cut against a running set reads only that set's rows in its edge
        // bins, where a range built whole reads every row of them.
        pos.sort_by_key(|(e, c)| (self.range_leaf(c).is_some(), *e));
        neg.sort_by_key(|(e, _)| std::cmp::Reverse(*e));
        (pos.into_iter().map(|x| x.1).collect(), neg.into_iter().map(|x| x.1).collect())
    }

    fn eval_and<'a>(&'a self, items: &[Cond], memo: &mut Memo) -> Bits<'a> {
        let (pos, neg) = self.plan_and(items, memo);
        self.and_of(&pos, &neg, memo)
    }

    /// The rows satisfying every `pos` and no `neg`, in the given order,
    /// stopping as soon as the running set is empty. Once the running set is
    /// small, a costly operand (a behaviour that scans events, a range with
    /// edge bins) is checked row by row instead of being built whole.
    fn and_of<'a>(&'a self, pos: &[&Cond], neg: &[&Cond], memo: &mut Memo) -> Bits<'a> {
        let mut acc: Bits<'a> = match pos.first() {
            Some(first) => self.eval_in(first, memo),
            None => Cow::Borrowed(&self.universe),
        };
        let steps = pos.iter().skip(1).map(|c| (*c, false)).chain(neg.iter().map(|c| (*c, true)));
        for (c, negated) in steps {
            if acc.is_empty() {
                return empty();
            }
            if acc.len() <= ROW_BY_ROW_MAX && self.is_costly(c, memo) {
                let mut set = acc.into_owned();
                set.retain(|row| self.row_matches_live(row, c, memo) != negated);
                acc = Cow::Owned(set);
                continue;
            }
            if let Some(hit) = self.restrict(c, &acc) {
                // Cut against the running set rather than built whole.
                acc = Cow::Owned(if negated { acc.as_ref() - &hit } else { hit });
                continue;
            }
            let b = self.eval_in(c, memo);
            acc = Cow::Owned(match (acc, negated) {
                (Cow::Owned(mut a), false) => {
                    a &= b.as_ref();
                    a
                }
                (Cow::Owned(mut a), true) => {
                    a -= b.as_ref();
                    a
                }
                (Cow::Borrowed(a), false) => a & b.as_ref(),
                (Cow::Borrowed(a), true) => a - b.as_ref(),
            });
        }
        acc
    }

    /// `c ∩ within` for the leaves that can be cut against a set more
    /// cheaply than built whole: ranges (only `within`'s rows of the edge
    /// bins are read), and the "has a value other than" tests, whose full
    /// sets are dense complements. `None` for every other condition.
    fn restrict(&self, c: &Cond, within: &RoaringBitmap) -> Option<RoaringBitmap> {
        if let Some((col, (lo, hi))) = self.range_leaf(c) {
            return Some(col.range_within(lo, hi, within));
        }
        let Cond::Leaf(leaf) = c else { return None };
        match (&leaf.field, &leaf.test) {
            (Field::Trait { name, ty }, LeafTest::StrNotIn(values)) => match self.traits.get(name) {
                Some(TraitColumn::Keyword(k)) if *ty == TraitType::Keyword => {
                    let mut out = within & &k.present;
                    for v in values.iter().filter_map(|v| k.rows_of(v)) {
                        out -= v;
                    }
                    Some(out)
                }
                _ => None,
            },
            (field, LeafTest::NotEq(key)) => {
                let col = self.range_column(field)?;
                let mut out = within & &col.present;
                out -= &col.range_within(*key, *key, within);
                Some(out)
            }
            _ => None,
        }
    }

    /// `|c ∩ within|` without building `c`, for the leaves where that is
    /// cheaper: ranges, and keyword tests (a row has one value, so the
    /// values' bitmaps are disjoint and their intersections add up).
    fn count_within(&self, c: &Cond, within: &RoaringBitmap) -> Option<u64> {
        if let Some((col, (lo, hi))) = self.range_leaf(c) {
            return Some(col.range_within_len(lo, hi, within));
        }
        let Cond::Leaf(leaf) = c else { return None };
        let Field::Trait { name, ty: TraitType::Keyword } = &leaf.field else { return None };
        let Some(TraitColumn::Keyword(k)) = self.traits.get(name) else { return None };
        let hits = |values: &[String]| -> u64 {
            values.iter().filter_map(|v| k.rows_of(v)).map(|b| within.intersection_len(b)).sum()
        };
        match &leaf.test {
            LeafTest::StrIn(values) => Some(hits(values)),
            LeafTest::StrNotIn(values) => Some(within.intersection_len(&k.present) - hits(values)),
            LeafTest::Exists => Some(within.intersection_len(&k.present)),
            _ => None,
        }
    }

    /// True for a keyword `IN` of more than one value.
    fn is_multi_keyword(&self, c: &Cond) -> bool {
        let Cond::Leaf(Leaf {
            field: Field::Trait { name, ty: TraitType::Keyword },
            test: LeafTest::StrIn(values),
        }) = c
        else {
            return false;
        };
        values.len() > 1 && matches!(self.traits.get(name), Some(TraitColumn::Keyword(_)))
    }

    /// True when [`Self::count_within`] answers for `c` without building it.
    fn countable_within(&self, c: &Cond) -> bool {
        if self.range_leaf(c).is_some() {
            return true;
        }
        let Cond::Leaf(leaf) = c else { return false };
        let Field::Trait { name, ty: TraitType::Keyword } = &leaf.field else { return false };
        matches!(self.traits.get(name), Some(TraitColumn::Keyword(_)))
            && matches!(leaf.test, LeafTest::StrIn(_) | LeafTest::StrNotIn(_) | LeafTest::Exists)
    }

    /// The range column and key bounds of a `Range` leaf.
    fn range_leaf(&self, c: &Cond) -> Option<(&super::RangeColumn, (u64, u64))> {
        match c {
            Cond::Leaf(Leaf { field, test: LeafTest::Range { lo, hi } }) => {
                self.range_column(field).map(|col| (col, (*lo, *hi)))
            }
            _ => None,
        }
    }

    /// True for operands whose bitmap is expensive to build: behaviours that
    /// scan events, and anything containing one. A shared node that is
    /// already built is not.
    fn is_costly(&self, c: &Cond, memo: &mut Memo) -> bool {
        match c {
            Cond::Did(d) => d.filter.is_some() || d.min > 1 || d.max.is_some(),
            Cond::Not(x) => self.is_costly(x, memo),
            Cond::And(v) | Cond::Or(v) => v.iter().any(|x| self.is_costly(x, memo)),
            Cond::Segment(node) => {
                let entry = memo.entry(node);
                if entry.set.is_some() {
                    return false;
                }
                if let Some(known) = entry.costly {
                    return known;
                }
                let costly = self.is_costly(&node.cond, memo);
                memo.entry(node).costly = Some(costly);
                costly
            }
            _ => false,
        }
    }

    /// How many live profiles satisfy `cond`, building as little as possible.
    pub fn count(&self, cond: &Cond) -> u64 {
        self.count_in(cond, &mut Memo::for_query([cond]))
    }

    /// The counts of several conditions of one query, each shared node
    /// computed once for all of them.
    pub fn count_all(&self, conds: &[Cond]) -> Vec<u64> {
        let mut memo = Memo::for_query(conds);
        conds.iter().map(|c| self.count_in(c, &mut memo)).collect()
    }

    /// How many live profiles satisfy `cond`, with the shared nodes' results
    /// in `memo`.
    pub fn count_in(&self, cond: &Cond, memo: &mut Memo) -> u64 {
        match cond {
            Cond::All => self.universe.len(),
            Cond::Empty => 0,
            Cond::Not(inner) => self.universe.len() - self.count_in(inner, memo),
            Cond::Leaf(Leaf { field, test: LeafTest::Range { lo, hi } }) => match self.range_column(field) {
                Some(col) => col.range_len(*lo, *hi),
                None => 0,
            },
            // A row has one value of a keyword or text trait: the values'
            // sets are disjoint and their sizes add up, no union needed.
            Cond::Leaf(Leaf { field: Field::Trait { name, ty }, test: LeafTest::StrIn(values) }) => {
                match self.traits.get(name).filter(|c| c.trait_type() == *ty) {
                    Some(TraitColumn::Keyword(c)) => {
                        values.iter().filter_map(|v| c.rows_of(v)).map(|b| b.len()).sum()
                    }
                    Some(TraitColumn::Text(c)) => values.iter().map(|v| c.rows_of(v).len() as u64).sum(),
                    _ => self.eval_in(cond, memo).len(),
                }
            }
            Cond::And(items) => {
                let (mut pos, neg) = self.plan_and(items, memo);
                // A keyword test of several values is counted last, as a sum
                // over its values: built first, its union is the small
                // running set whose containers roaring converts to arrays
                // after every operation (`a2` at 10 M, in process: 1.6-1.9 ms built
                // first, 0.88-0.94 ms counted last).
                if neg.is_empty() {
                    if let Some(at) = pos.iter().position(|c| self.is_multi_keyword(c)) {
                        let multi = pos.remove(at);
                        pos.push(multi);
                    }
                }
                // Build the set of all operands but the last, then count the
                // last operation without building its result.
                if let Some((last, rest_neg)) = neg.split_last() {
                    let rest = self.and_of(&pos, rest_neg, memo);
                    if rest.is_empty() {
                        return 0;
                    }
                    if let Some(n) = self.count_within(last, &rest) {
                        return rest.len() - n;
                    }
                    rest.difference_len(&self.eval_in(last, memo))
                } else if let Some((last, rest_pos)) = pos.split_last() {
                    if rest_pos.is_empty() {
                        return self.count_in(last, memo);
                    }
                    let rest = self.and_of(rest_pos, &[], memo);
                    if rest.is_empty() {
                        return 0;
                    }
                    if let Some(n) = self.count_within(last, &rest) {
                        return n;
                    }
                    if rest.len() <= ROW_BY_ROW_MAX && self.is_costly(last, memo) {
                        return rest.iter().filter(|&r| self.row_matches_live(r, last, memo)).count() as u64;
                    }
                    rest.intersection_len(&self.eval_in(last, memo))
                } else {
                    self.universe.len()
                }
            }
            Cond::Or(items) => {
                // Keep for last an operand that can be counted against a set
                // without being built (a range or keyword leaf), and count
                // |rest ∪ last| as |rest| + |last| - |rest ∩ last|.
                let countable = items.iter().rposition(|c| self.countable_within(c));
                let last_at = countable.unwrap_or(items.len().saturating_sub(1));
                let Some(last) = items.get(last_at) else { return 0 };
                let rest = items.iter().enumerate().filter(|&(i, _)| i != last_at).map(|(_, c)| c);
                let parts: Vec<Bits<'_>> = rest.map(|c| self.eval_in(c, memo)).collect();
                let acc: RoaringBitmap = parts.iter().map(|b| b.as_ref()).union();
                if let Some(both) = self.count_within(last, &acc) {
                    return acc.len() + self.count_in(last, memo) - both;
                }
                acc.union_len(&self.eval_in(last, memo))
            }
            other => self.eval_in(other, memo).len(),
        }
    }

    /// An upper bound on the number of rows `cond` selects, cheap to compute,
    /// used to order the operands of an `AND`.
    pub fn estimate(&self, cond: &Cond) -> u64 {
        self.estimate_in(cond, &mut Memo::for_query([cond]))
    }

    /// [`Self::estimate`], each shared node estimated once per memo (a built
    /// one by its size).
    fn estimate_in(&self, cond: &Cond, memo: &mut Memo) -> u64 {
        let universe = self.universe.len();
        match cond {
            Cond::All => universe,
            Cond::Empty => 0,
            Cond::Not(inner) => universe.saturating_sub(self.estimate_in(inner, memo) / 2),
            Cond::And(items) => items.iter().map(|c| self.estimate_in(c, memo)).min().unwrap_or(universe),
            Cond::Or(items) => items.iter().map(|c| self.estimate_in(c, memo)).sum::<u64>().min(universe),
            Cond::Did(d) => self.events.get(&d.event).map_or(0, |t| t.who.len() + t.staged_len() as u64),
            Cond::Leaf(leaf) => self.estimate_leaf(leaf),
            Cond::Segment(node) => {
                let entry = memo.entry(node);
                if let Some(set) = &entry.set {
                    return set.len();
                }
                if let Some(e) = entry.estimate {
                    return e;
                }
                let e = self.estimate_in(&node.cond, memo);
                memo.entry(node).estimate = Some(e);
                e
            }
        }
    }

    fn estimate_leaf(&self, leaf: &Leaf) -> u64 {
        match (&leaf.field, &leaf.test) {
            (Field::Identifier(kind), LeafTest::StrIn(values)) => {
                values.iter().map(|v| self.ids.of(*kind).rows_of(v).len() as u64).sum()
            }
            (Field::Identifier(kind), _) => self.ids.of(*kind).present.len(),
            (field, LeafTest::Range { lo, hi }) => {
                self.range_column(field).map_or(0, |c| c.estimate(*lo, *hi))
            }
            (Field::Trait { name, ty }, test) => match (self.traits.get(name), test) {
                (Some(col), _) if col.trait_type() != *ty => 0,
                (Some(TraitColumn::Keyword(c)), LeafTest::StrIn(values)) => {
                    values.iter().filter_map(|v| c.rows_of(v)).map(RoaringBitmap::len).sum()
                }
                (Some(TraitColumn::Text(c)), LeafTest::StrIn(values)) => {
                    values.iter().map(|v| c.rows_of(v).len() as u64).sum()
                }
                (Some(TraitColumn::List(c)), LeafTest::Contains(v)) => {
                    c.rows_of(v).map_or(0, RoaringBitmap::len)
                }
                (Some(TraitColumn::Bool(c)), LeafTest::Bool(true)) => c.trues.len(),
                (Some(TraitColumn::Bool(c)), LeafTest::Bool(false)) => c.falses.len(),
                (Some(col), _) => col.present().len(),
                (None, _) => 0,
            },
            (_, _) => self.universe.len(),
        }
    }

    fn range_column(&self, field: &Field) -> Option<&super::RangeColumn> {
        match field {
            Field::FirstSeen => Some(&self.first_seen),
            Field::LastSeen => Some(&self.last_seen),
            Field::Trait { name, ty } => match self.traits.get(name) {
                Some(TraitColumn::Range(t, c)) if t == ty => Some(c),
                _ => None,
            },
            Field::Identifier(_) => None,
        }
    }

    /// The rows of one leaf.
    fn leaf<'a>(&'a self, leaf: &Leaf) -> Bits<'a> {
        let test = &leaf.test;
        if let Some(col) = self.range_column(&leaf.field) {
            return match test {
                LeafTest::Exists => Cow::Borrowed(&col.present),
                LeafTest::Range { lo, hi } => Cow::Owned(col.range(*lo, *hi)),
                LeafTest::NotEq(k) => Cow::Owned(&col.present - &col.range(*k, *k)),
                _ => empty(),
            };
        }
        match &leaf.field {
            Field::Identifier(kind) => {
                let col = self.ids.of(*kind);
                match test {
                    LeafTest::Exists => Cow::Borrowed(&col.present),
                    LeafTest::StrIn(values) => Cow::Owned(rows_of_texts(|v| col.rows_of(v), values)),
                    _ => empty(),
                }
            }
            Field::Trait { name, ty } => {
                let Some(col) = self.traits.get(name).filter(|c| c.trait_type() == *ty) else {
                    return empty();
                };
                match (col, test) {
                    (col, LeafTest::Exists) => col.present(),
                    (TraitColumn::Keyword(c), LeafTest::StrIn(values)) => match values.as_slice() {
                        [one] => c.rows_of(one).map_or_else(empty, Cow::Borrowed),
                        many => Cow::Owned(many.iter().filter_map(|v| c.rows_of(v)).union()),
                    },
                    (TraitColumn::Keyword(c), LeafTest::StrNotIn(values)) => {
                        let excluded: RoaringBitmap = values.iter().filter_map(|v| c.rows_of(v)).union();
                        Cow::Owned(&c.present - &excluded)
                    }
                    (TraitColumn::Text(c), LeafTest::StrIn(values)) => {
                        Cow::Owned(rows_of_texts(|v| c.rows_of(v), values))
                    }
                    (TraitColumn::Text(c), LeafTest::StrNotIn(values)) => {
                        Cow::Owned(&c.present - &rows_of_texts(|v| c.rows_of(v), values))
                    }
                    (TraitColumn::Bool(c), LeafTest::Bool(true)) => Cow::Borrowed(&c.trues),
                    (TraitColumn::Bool(c), LeafTest::Bool(false)) => Cow::Borrowed(&c.falses),
                    (TraitColumn::List(c), LeafTest::Contains(v)) => {
                        c.rows_of(v).map_or_else(empty, Cow::Borrowed)
                    }
                    _ => empty(),
                }
            }
            Field::FirstSeen | Field::LastSeen => empty(),
        }
    }

    /// The rows whose count of matching events satisfies the behaviour.
    fn did(&self, d: &Did) -> RoaringBitmap {
        let Some(table) = self.events.get(&d.event) else { return RoaringBitmap::new() };
        if d.filter.is_none() && d.min <= 1 && d.max.is_none() {
            return table.who_in_window(d.from_ms, d.to_ms);
        }
        // Matching events per row, in a dense array (rows are dense), counted
        // only up to the first value that decides the frequency. One byte
        // per row when that value allows: the array is then half the size
        // and stays in cache under the random increments.
        let cap = d.max.map_or(d.min, |m| m.saturating_add(1)).max(1);
        if let Ok(cap) = u8::try_from(cap) {
            self.count_rows::<u8>(table, d, cap)
        } else if let Ok(cap) = u16::try_from(cap) {
            self.count_rows::<u16>(table, d, cap)
        } else {
            self.count_rows::<u32>(table, d, cap)
        }
    }

    /// The rows of [`Self::did`] for a filtered or counted behaviour, with
    /// counters of type `C` that stop at `cap`. The increments are
    /// branch-free; the rows whose count is in the frequency's bounds are
    /// then found 64 at a time and handed to roaring as a dense bit array.
    fn count_rows<C>(&self, table: &EventTable, d: &Did, cap: C) -> RoaringBitmap
    where
        C: Counter,
    {
        let mut counts = vec![C::default(); self.rows.profiles().len()];
        for (day, part) in table.partitions_in(d.from_ms, d.to_ms) {
            let mask = table.match_mask(day, part, d.from_ms, d.to_ms, d.filter.as_deref());
            for (w, &word) in mask.iter().enumerate() {
                let mut bits = word;
                while bits != 0 {
                    let i = w * 64 + bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    let c = &mut counts[part.rows[i] as usize];
                    *c += C::from(*c < cap);
                }
            }
        }
        // Counts stop at `cap`, which is at most `max + 1`: comparing with
        // `min` and `max` in the counter's own type is exact. A normal-form
        // behaviour has `min >= 1`, so rows without events never match.
        let min = C::try_from(d.min).unwrap_or(cap);
        let max = d.max.and_then(|m| C::try_from(m).ok()).unwrap_or(cap);
        let words = C::mask_between(&counts, min, max);
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        RoaringBitmap::from_lsb0_bytes(0, &bytes)
    }

    /// True when the live row satisfies `cond`.
    pub fn row_matches(&self, row: Row, cond: &Cond) -> bool {
        self.row_matches_all(row, std::slice::from_ref(cond)).first().copied().unwrap_or(false)
    }

    /// Whether the row is live and satisfies each of several conditions of
    /// one query, each shared node checked once for all of them.
    pub fn row_matches_all(&self, row: Row, conds: &[Cond]) -> Vec<bool> {
        if !self.universe.contains(row) {
            return vec![false; conds.len()];
        }
        let mut memo = Memo::for_query(conds);
        conds.iter().map(|c| self.row_matches_live(row, c, &mut memo)).collect()
    }

    fn row_matches_live(&self, row: Row, cond: &Cond, memo: &mut Memo) -> bool {
        match cond {
            Cond::All => true,
            Cond::Empty => false,
            Cond::Not(inner) => !self.row_matches_live(row, inner, memo),
            Cond::And(items) => items.iter().all(|c| self.row_matches_live(row, c, memo)),
            Cond::Or(items) => items.iter().any(|c| self.row_matches_live(row, c, memo)),
            Cond::Leaf(leaf) => self.leaf_contains(row, leaf),
            Cond::Segment(node) => {
                let entry = memo.entry(node);
                if let Some(set) = &entry.set {
                    return set.contains(row);
                }
                if let Some(&known) = entry.rows.get(&row) {
                    return known;
                }
                let hit = self.row_matches_live(row, &node.cond, memo);
                memo.entry(node).rows.insert(row, hit);
                hit
            }
            Cond::Did(d) => {
                let Some(table) = self.events.get(&d.event) else { return false };
                if !table.has_row(row) {
                    return false;
                }
                if d.filter.is_none() && d.min <= 1 && d.max.is_none() {
                    return table.did_in_window(row, d.from_ms, d.to_ms);
                }
                let mut n = 0u64;
                for (day, part) in table.partitions_in(d.from_ms, d.to_ms) {
                    if !table.day_has_row(day, part, row) {
                        continue;
                    }
                    let base = day * DAY_MS;
                    for (i, &r) in part.rows.iter().enumerate() {
                        if r != row {
                            continue;
                        }
                        let ts = base + i64::from(part.offsets[i]);
                        if ts < d.from_ms || ts > d.to_ms {
                            continue;
                        }
                        if d.filter.as_deref().is_none_or(|f| event_matches(table, part, i, f)) {
                            n += 1;
                        }
                    }
                }
                d.count_matches(n)
            }
        }
    }

    fn leaf_contains(&self, row: Row, leaf: &Leaf) -> bool {
        let test = &leaf.test;
        if let Some(col) = self.range_column(&leaf.field) {
            let Some(k) = col.get(row) else { return false };
            return match test {
                LeafTest::Exists => true,
                LeafTest::Range { lo, hi } => *lo <= k && k <= *hi,
                LeafTest::NotEq(x) => k != *x,
                _ => false,
            };
        }
        match &leaf.field {
            Field::Identifier(kind) => {
                let col = self.ids.of(*kind);
                match test {
                    LeafTest::Exists => col.present.contains(row),
                    LeafTest::StrIn(values) => values.iter().any(|v| col.holds(row, v)),
                    _ => false,
                }
            }
            Field::Trait { name, ty } => {
                let Some(col) = self.traits.get(name).filter(|c| c.trait_type() == *ty) else {
                    return false;
                };
                match (col, test) {
                    (TraitColumn::Keyword(c), t) => str_test(c.get(row), t),
                    (TraitColumn::Text(c), t) => str_test(c.first(row), t),
                    (TraitColumn::Bool(c), LeafTest::Exists) => c.get(row).is_some(),
                    (TraitColumn::Bool(c), LeafTest::Bool(b)) => c.get(row) == Some(*b),
                    (TraitColumn::List(c), LeafTest::Exists) => c.present.contains(row),
                    (TraitColumn::List(c), LeafTest::Contains(v)) => {
                        c.rows_of(v).is_some_and(|b| b.contains(row))
                    }
                    _ => false,
                }
            }
            Field::FirstSeen | Field::LastSeen => false,
        }
    }

    /// Up to `limit` rows satisfying `cond`, in row order, starting after
    /// `after` (the cursor: the last row of the previous page).
    pub fn members(&self, cond: &Cond, after: Option<Row>, limit: usize) -> Vec<Row> {
        let set = self.eval(cond);
        let mut it = set.iter();
        if let Some(a) = after {
            match a.checked_add(1) {
                Some(next) => it.advance_to(next),
                None => return Vec::new(),
            }
        }
        it.take(limit).collect()
    }

    /// Counts per value of a keyword, list or bool trait among the rows that
    /// satisfy `cond`; values with no row are left out. Unsorted: merge the
    /// shards' results, then take [`top_n`].
    pub fn breakdown(&self, cond: &Cond, name: &str) -> Result<Breakdown, ShardError> {
        self.breakdown_with_total(cond, name).map(|(b, _)| b)
    }

    /// [`Self::breakdown`] and the number of rows that satisfy `cond`, from
    /// one evaluation of it.
    pub fn breakdown_with_total(&self, cond: &Cond, name: &str) -> Result<(Breakdown, u64), ShardError> {
        let set = self.eval(cond);
        let total = set.len();
        let all = matches!(cond, Cond::All);
        let count = |b: &RoaringBitmap| if all { b.len() } else { b.intersection_len(&set) };
        let mut out = Vec::new();
        match self.traits.get(name) {
            None => {}
            Some(TraitColumn::Keyword(c)) => {
                for (code, bm) in c.bitmaps.iter().enumerate() {
                    let n = count(bm);
                    if n > 0 {
                        out.push((c.dict.value(code as u32).to_string(), n));
                    }
                }
            }
            Some(TraitColumn::List(c)) => {
                for (code, bm) in c.bitmaps.iter().enumerate() {
                    let n = count(bm);
                    if n > 0 {
                        out.push((c.dict.value(code as u32).to_string(), n));
                    }
                }
            }
            Some(TraitColumn::Bool(c)) => {
                for (value, bm) in [("false", &c.falses), ("true", &c.trues)] {
                    let n = count(bm);
                    if n > 0 {
                        out.push((value.to_string(), n));
                    }
                }
            }
            Some(other) => {
                return Err(ShardError::Breakdown {
                    name: name.to_string(),
                    reason: format!(
                        "it is {}; only keyword, list and bool traits break down",
                        other.trait_type()
                    ),
                })
            }
        }
        Ok((out, total))
    }
}

fn rows_of_texts(rows_of: impl Fn(&str) -> Vec<Row>, values: &[String]) -> RoaringBitmap {
    let mut rows: Vec<Row> = values.iter().flat_map(|v| rows_of(v)).collect();
    rows.sort_unstable();
    rows.dedup();
    RoaringBitmap::from_sorted_iter(rows).unwrap_or_default()
}

fn str_test(value: Option<&str>, test: &LeafTest) -> bool {
    let Some(v) = value else { return false };
    match test {
        LeafTest::Exists => true,
        LeafTest::StrIn(values) => values.iter().any(|x| x == v),
        LeafTest::StrNotIn(values) => !values.iter().any(|x| x == v),
        _ => false,
    }
}

/// True when event `i` of `part` satisfies a property condition (the scalar
/// twin of the column-at-a-time masks, for membership checks).
fn event_matches(table: &EventTable, part: &Partition, i: usize, cond: &Cond) -> bool {
    match cond {
        Cond::All => true,
        // The checker never puts a behaviour or a saved segment in a filter.
        Cond::Empty | Cond::Did(_) | Cond::Segment(_) => false,
        Cond::Not(inner) => !event_matches(table, part, i, inner),
        Cond::And(items) => items.iter().all(|c| event_matches(table, part, i, c)),
        Cond::Or(items) => items.iter().any(|c| event_matches(table, part, i, c)),
        Cond::Leaf(leaf) => {
            let Field::Trait { name, ty } = &leaf.field else { return false };
            let Some(&pi) = table.prop_index.get(name.as_str()) else { return false };
            if table.props[pi].1 != *ty {
                return false;
            }
            let dict = &table.dicts[pi];
            let Some(column) = part.props.get(pi) else { return false };
            match (column, &leaf.test) {
                (PropColumn::Codes(c), t) => {
                    let v = (c.get(i) != NO_CODE).then(|| dict.value(c.get(i)));
                    str_test(v, t)
                }
                (PropColumn::Keys { keys, present }, t) => {
                    if present[i / 64] >> (i % 64) & 1 == 0 {
                        return false;
                    }
                    let k = keys[i];
                    match t {
                        LeafTest::Exists => true,
                        LeafTest::Range { lo, hi } => *lo <= k && k <= *hi,
                        LeafTest::NotEq(x) => k != *x,
                        _ => false,
                    }
                }
                (PropColumn::Bools(b), LeafTest::Exists) => b[i] != 2,
                (PropColumn::Bools(b), LeafTest::Bool(want)) => b[i] == u8::from(*want),
                (PropColumn::Lists(l), LeafTest::Exists) => l[i].is_some(),
                (PropColumn::Lists(l), LeafTest::Contains(v)) => match dict.code(v) {
                    Some(code) => l[i].as_ref().is_some_and(|codes| codes.binary_search(&code).is_ok()),
                    None => false,
                },
                _ => false,
            }
        }
    }
}

/// Helpers to build leaves in tests and tools without the parser.
pub mod leaves {
    use super::*;

    /// `name = value` on a keyword trait.
    pub fn keyword_eq(name: &str, value: &str) -> Cond {
        Cond::Leaf(Leaf {
            field: Field::Trait { name: name.into(), ty: TraitType::Keyword },
            test: LeafTest::StrIn(vec![value.into()]),
        })
    }

    /// `lo <= name <= hi` on a number trait.
    pub fn number_between(name: &str, lo: f64, hi: f64) -> Cond {
        Cond::Leaf(Leaf {
            field: Field::Trait { name: name.into(), ty: TraitType::Number },
            test: LeafTest::Range { lo: num_key(lo), hi: num_key(hi) },
        })
    }

    /// `lo <= name <= hi` on a timestamp trait.
    pub fn time_between(name: &str, lo: i64, hi: i64) -> Cond {
        Cond::Leaf(Leaf {
            field: Field::Trait { name: name.into(), ty: TraitType::Timestamp },
            test: LeafTest::Range { lo: time_key(lo), hi: time_key(hi) },
        })
    }

    /// `user_id = id`.
    pub fn user_id(id: &str) -> Cond {
        Cond::Leaf(Leaf {
            field: Field::Identifier(IdentifierKind::UserId),
            test: LeafTest::StrIn(vec![id.into()]),
        })
    }
}
