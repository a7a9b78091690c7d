//! Type checking: turns a parsed [`Expr`] into a typed [`Cond`] against a
//! schema, a catalog of saved segments and the query's `now`.
//!
//! Every problem is an error with the character position of the offending
//! text (SEGMENTS.md): an unknown name, a literal of the wrong type, an
//! operator the type does not support, an unknown event or saved segment, a
//! cycle of saved segments. None of them is ever turned into an empty result.
//!
//! A saved segment is compiled once per compilation, however often it is
//! referred to, and the references share its node (see `cond.rs`): the
//! compiled size grows with the number of distinct segments, not with the
//! number of paths through them. A query or definition past
//! [`MAX_COMPILED_NODES`] distinct nodes or [`MAX_COMPILED_DEPTH`] levels is
//! refused with an error that names the bound.
//!
//! Choices where SEGMENTS.md is silent, written down here and in the README:
//! - `DID "e"` on an event the schema has never seen is an error, like an
//!   unknown trait (operators declare events they expect but have not seen).
//! - Inside `WHERE`, names are the event's properties; an unknown property is
//!   an error naming the event.
//! - Timestamps compare with RFC 3339 strings and `NOW ± n unit` only; a bare
//!   number against a timestamp is a type error (is it seconds or ms?).
//! - `!=` and `NOT IN` are refused on identifiers: SEGMENTS.md lists `=`,
//!   `IN` and `EXISTS` for them, and "has some other id" is rarely meant.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use super::ast::{CmpOp, Expr, Frequency, LitValue, Literal, Predicate, Test, TimeRef, Window};
use super::cond::{
    distinct_nodes, inline_single_uses, normalize, Cond, Did, Field, Leaf, LeafTest, SegmentNode,
};
use super::error::SegmentError;
use super::parser::parse;
use crate::model::{num_key, parse_rfc3339_ms, time_key, FieldType, Schema, TraitType};

/// Saved segments by name, as the planner knows them.
pub trait Catalog {
    /// The expression text of a saved segment.
    fn segment_text(&self, name: &str) -> Option<String>;
}

/// A catalog with no saved segments.
pub struct NoSegments;

impl Catalog for NoSegments {
    fn segment_text(&self, _name: &str) -> Option<String> {
        None
    }
}

impl<S: std::hash::BuildHasher> Catalog for std::collections::HashMap<String, String, S> {
    fn segment_text(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

impl Catalog for std::collections::BTreeMap<String, String> {
    fn segment_text(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// Everything a check needs besides the expression.
pub struct CheckContext<'a> {
    /// The types of traits and properties.
    pub schema: &'a Schema,
    /// Saved segments for `IN SEGMENT`.
    pub catalog: &'a dyn Catalog,
    /// The query's time, milliseconds since the epoch.
    pub now_ms: i64,
}

/// The most distinct condition nodes a compiled query or saved segment may
/// have: every AND, OR, NOT, leaf and behaviour, each saved segment it uses
/// counted once however often it is used (see
/// [`distinct_nodes`](super::cond::distinct_nodes)). Fixed rather than
/// configured: every replica must refuse the same definitions.
pub const MAX_COMPILED_NODES: usize = 10_000;

/// The deepest a query or saved segment may nest: every NOT, AND, OR, DID,
/// predicate and `IN SEGMENT` on the way down is a level, through saved
/// segments (a saved segment is checked as if referred to, so that a
/// definition accepted here can be queried as `IN SEGMENT "name"`). It bounds
/// the recursion of the checker and of the evaluator.
pub const MAX_COMPILED_DEPTH: usize = 256;

/// Parses, checks and normalises a segment in one step.
pub fn compile(text: &str, ctx: &CheckContext<'_>) -> Result<Cond, SegmentError> {
    compile_many(&[text], ctx).map_err(|(_, e)| e).and_then(first)
}

/// Compiles several segments of one query together, so that a saved
/// segment they share is compiled once and is one node in all of them. On
/// failure, returns the index of the first text that failed and why.
pub fn compile_many<S: AsRef<str>>(
    texts: &[S],
    ctx: &CheckContext<'_>,
) -> Result<Vec<Cond>, (usize, SegmentError)> {
    let mut session = Session::new(ctx);
    let mut raw = Vec::with_capacity(texts.len());
    for (i, text) in texts.iter().enumerate() {
        let expr = parse(text.as_ref()).map_err(|e| (i, e))?;
        raw.push(session.check(&expr, 0).map_err(|e| (i, e))?);
    }
    finish(raw)
}

/// Checks a parsed expression and returns its normal form.
pub fn check(expr: &Expr, ctx: &CheckContext<'_>) -> Result<Cond, SegmentError> {
    let raw = Session::new(ctx).check(expr, 0)?;
    finish(vec![raw]).map_err(|(_, e)| e).and_then(first)
}

/// The only condition of a one-text compilation.
fn first(conds: Vec<Cond>) -> Result<Cond, SegmentError> {
    // `finish` returns one condition per text, and there was one text; the
    // fallback is never taken.
    Ok(conds.into_iter().next().unwrap_or(Cond::Empty))
}

/// Inlines the saved segments used once, normalises, and refuses a
/// condition with more than [`MAX_COMPILED_NODES`] distinct nodes.
fn finish(raw: Vec<Cond>) -> Result<Vec<Cond>, (usize, SegmentError)> {
    let conds = inline_single_uses(raw);
    for (i, c) in conds.iter().enumerate() {
        let nodes = distinct_nodes(&[c]);
        if nodes > MAX_COMPILED_NODES {
            return Err((i, SegmentError::TooLarge { nodes, max: MAX_COMPILED_NODES }));
        }
    }
    Ok(conds)
}

/// The names of the saved segments that `expr` refers to directly.
pub fn references(expr: &Expr) -> BTreeSet<String> {
    fn walk(e: &Expr, out: &mut BTreeSet<String>) {
        match e {
            Expr::All(_) | Expr::Predicate(_) | Expr::Did(_) => {}
            Expr::Not(x, _) => walk(x, out),
            Expr::And(v) | Expr::Or(v) => v.iter().for_each(|x| walk(x, out)),
            Expr::InSegment { name, .. } => {
                out.insert(name.clone());
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(expr, &mut out);
    out
}

/// Checks that saving `text` under `name` is allowed: it parses, checks
/// against the schema, creates no cycle through the catalog (the new text
/// replaces any old one under that name), and stays within
/// [`MAX_COMPILED_NODES`] and [`MAX_COMPILED_DEPTH`].
pub fn check_save(name: &str, text: &str, ctx: &CheckContext<'_>) -> Result<Cond, SegmentError> {
    struct Overlay<'a> {
        name: &'a str,
        text: &'a str,
        base: &'a dyn Catalog,
    }
    impl Catalog for Overlay<'_> {
        fn segment_text(&self, n: &str) -> Option<String> {
            if n == self.name {
                Some(self.text.to_string())
            } else {
                self.base.segment_text(n)
            }
        }
    }
    let overlay = Overlay { name, text, base: ctx.catalog };
    let inner = CheckContext { schema: ctx.schema, catalog: &overlay, now_ms: ctx.now_ms };
    let expr = parse(text)?;
    let mut session = Session::new(&inner);
    session.stack.push(name.to_string());
    // Checked one level down, as the body of `IN SEGMENT "name"`.
    let raw = session.check(&expr, 1)?;
    finish(vec![raw]).map_err(|(_, e)| e).and_then(first)
}

/// The state of one compilation: the saved segments compiled so far (each
/// once, shared by every later reference), the chain of segments being
/// compiled (for cycles) and the depth of the walk (for the depth bound).
struct Session<'c, 'a> {
    ctx: &'c CheckContext<'a>,
    /// Saved segments compiled in this session: their condition (a shared
    /// node, or what it folded to) and how many levels they add below the
    /// `IN SEGMENT` that refers to them.
    segments: HashMap<String, (Cond, usize)>,
    /// Saved segments being compiled, outermost first, for cycle detection.
    stack: Vec<String>,
    /// The depth of the node being checked.
    depth: usize,
    /// The deepest level reached in the walk so far.
    deepest: usize,
}

impl<'c, 'a> Session<'c, 'a> {
    fn new(ctx: &'c CheckContext<'a>) -> Self {
        Session { ctx, segments: HashMap::new(), stack: Vec::new(), depth: 0, deepest: 0 }
    }

    /// Checks `expr` whose root is one level below `depth`.
    fn check(&mut self, expr: &Expr, depth: usize) -> Result<Cond, SegmentError> {
        self.depth = depth;
        self.deepest = depth;
        Checker { s: self }.expr(expr, Scope::Profile)
    }
}

#[derive(Clone, Copy)]
enum Scope<'e> {
    /// Names are traits and identifiers.
    Profile,
    /// Names are properties of this event.
    Event(&'e str),
}

struct Checker<'s, 'c, 'a> {
    s: &'s mut Session<'c, 'a>,
}

fn pos(span: super::ast::Span) -> usize {
    span.start + 1
}

impl Checker<'_, '_, '_> {
    /// Goes one level down, refusing to pass [`MAX_COMPILED_DEPTH`].
    fn descend(&mut self, levels: usize) -> Result<(), SegmentError> {
        let at = self.s.depth.saturating_add(levels);
        if at > MAX_COMPILED_DEPTH {
            return Err(SegmentError::TooDeep { max: MAX_COMPILED_DEPTH });
        }
        self.s.deepest = self.s.deepest.max(at);
        Ok(())
    }

    fn expr(&mut self, e: &Expr, scope: Scope<'_>) -> Result<Cond, SegmentError> {
        self.descend(1)?;
        self.s.depth += 1;
        let result = self.node(e, scope);
        self.s.depth -= 1;
        result
    }

    fn node(&mut self, e: &Expr, scope: Scope<'_>) -> Result<Cond, SegmentError> {
        Ok(match e {
            Expr::All(_) => Cond::All,
            Expr::Not(x, _) => Cond::Not(Box::new(self.expr(x, scope)?)),
            Expr::And(v) => Cond::And(v.iter().map(|x| self.expr(x, scope)).collect::<Result<_, _>>()?),
            Expr::Or(v) => Cond::Or(v.iter().map(|x| self.expr(x, scope)).collect::<Result<_, _>>()?),
            Expr::Predicate(p) => self.predicate(p, scope)?,
            Expr::Did(b) => {
                if !self.s.ctx.schema.has_event(&b.event) {
                    return Err(SegmentError::UnknownName {
                        position: pos(b.event_span),
                        name: b.event.clone(),
                        what: "event".to_string(),
                    });
                }
                let filter = match &b.filter {
                    Some(f) => Some(Box::new(self.expr(f, Scope::Event(&b.event))?)),
                    None => None,
                };
                let (min, max) = match b.frequency {
                    Frequency::AtLeast(n) => (n, None),
                    Frequency::AtMost(n) => (0, Some(n)),
                    Frequency::Exactly(n) => (n, Some(n)),
                };
                let now = self.s.ctx.now_ms;
                let at = |t: TimeRef| match t {
                    TimeRef::At(ms) => ms,
                    TimeRef::Now(offset) => now.saturating_add(offset),
                };
                let (from_ms, to_ms) = match b.window {
                    Window::AllTime => (i64::MIN, i64::MAX),
                    Window::Last(len) => (now.saturating_sub(len), now),
                    Window::Since(t) => (at(t), now),
                    Window::Between(a, z) => (at(a), at(z).saturating_sub(1)),
                };
                Cond::Did(Did { event: b.event.clone(), filter, min, max, from_ms, to_ms })
            }
            Expr::InSegment { name, span } => {
                if let Some((cond, height)) = self.s.segments.get(name) {
                    // Compiled before in this session: the same node, and
                    // the same levels below this reference.
                    let (cond, height) = (cond.clone(), *height);
                    self.descend(height)?;
                    return Ok(cond);
                }
                if let Some(i) = self.s.stack.iter().position(|s| s == name) {
                    let mut path = self.s.stack[i..].to_vec();
                    path.push(name.clone());
                    return Err(SegmentError::SegmentCycle { path });
                }
                let text = self.s.ctx.catalog.segment_text(name).ok_or_else(|| {
                    SegmentError::UnknownSegment { position: pos(*span), name: name.clone() }
                })?;
                let wrap = |source: SegmentError| match source {
                    // A cycle or a bound is reported as a whole, not wrapped
                    // per level.
                    SegmentError::SegmentCycle { .. }
                    | SegmentError::TooDeep { .. }
                    | SegmentError::TooLarge { .. } => source,
                    other => SegmentError::InSavedSegment { name: name.clone(), source: Box::new(other) },
                };
                let inner = parse(&text).map_err(wrap)?;
                self.s.stack.push(name.clone());
                let (depth, deepest) = (self.s.depth, self.s.deepest);
                self.s.deepest = depth;
                let result = self.expr(&inner, Scope::Profile).map_err(wrap);
                let height = self.s.deepest - depth;
                self.s.deepest = deepest.max(self.s.deepest);
                self.s.stack.pop();
                let node = SegmentNode { name: name.clone(), cond: normalize(result?) };
                let cond = Cond::Segment(Arc::new(node));
                self.s.segments.insert(name.clone(), (cond.clone(), height));
                cond
            }
        })
    }

    fn field(&self, p: &Predicate, scope: Scope<'_>) -> Result<Field, SegmentError> {
        let name = &p.name.text;
        let unknown =
            |what: String| SegmentError::UnknownName { position: pos(p.name.span), name: name.clone(), what };
        match scope {
            Scope::Profile => match self.s.ctx.schema.field(name) {
                Some(FieldType::Identifier(kind)) => Ok(Field::Identifier(kind)),
                Some(FieldType::Trait(ty)) => Ok(match name.as_str() {
                    "first_seen" => Field::FirstSeen,
                    "last_seen" => Field::LastSeen,
                    _ => Field::Trait { name: name.clone(), ty },
                }),
                None => Err(unknown("trait".to_string())),
            },
            Scope::Event(event) => match self.s.ctx.schema.property_type(event, name) {
                Some(ty) => Ok(Field::Trait { name: name.clone(), ty }),
                None => Err(unknown(format!("property of event \"{event}\""))),
            },
        }
    }

    fn predicate(&self, p: &Predicate, scope: Scope<'_>) -> Result<Cond, SegmentError> {
        let field = self.field(p, scope)?;
        let kind = Kind::of(&field);
        let unsupported = |op: &str| SegmentError::UnsupportedOperator {
            position: pos(p.span),
            name: p.name.text.clone(),
            ty: kind.describe(),
            op: op.to_string(),
        };
        let leaf = |test: LeafTest| Cond::Leaf(Leaf { field: field.clone(), test });
        let cond = match &p.test {
            Test::Exists { negated } => {
                let c = leaf(LeafTest::Exists);
                if *negated {
                    Cond::Not(Box::new(c))
                } else {
                    c
                }
            }
            Test::Compare { op, value } => match kind {
                Kind::Str { identifier } => match op {
                    CmpOp::Eq => leaf(LeafTest::StrIn(vec![self.string(p, value, kind)?])),
                    CmpOp::Ne if !identifier => leaf(LeafTest::StrNotIn(vec![self.string(p, value, kind)?])),
                    other => return Err(unsupported(&other.to_string())),
                },
                Kind::Ordered(ty) => {
                    let k = self.key(p, value, ty)?;
                    match op {
                        CmpOp::Eq => leaf(LeafTest::Range { lo: k, hi: k }),
                        CmpOp::Ne => leaf(LeafTest::NotEq(k)),
                        CmpOp::Lt => match k.checked_sub(1) {
                            Some(hi) => leaf(LeafTest::Range { lo: 0, hi }),
                            None => Cond::Empty,
                        },
                        CmpOp::Le => leaf(LeafTest::Range { lo: 0, hi: k }),
                        CmpOp::Gt => match k.checked_add(1) {
                            Some(lo) => leaf(LeafTest::Range { lo, hi: u64::MAX }),
                            None => Cond::Empty,
                        },
                        CmpOp::Ge => leaf(LeafTest::Range { lo: k, hi: u64::MAX }),
                    }
                }
                Kind::Bool => {
                    let b = match &value.value {
                        LitValue::Bool(b) => *b,
                        _ => return Err(mismatch(p, value, kind)),
                    };
                    match op {
                        CmpOp::Eq => leaf(LeafTest::Bool(b)),
                        CmpOp::Ne => leaf(LeafTest::Bool(!b)),
                        other => return Err(unsupported(&other.to_string())),
                    }
                }
                Kind::List => return Err(unsupported(&op.to_string())),
            },
            Test::In { negated, values } => match kind {
                Kind::Str { identifier } => {
                    if *negated && identifier {
                        return Err(unsupported("NOT IN"));
                    }
                    let mut set =
                        values.iter().map(|v| self.string(p, v, kind)).collect::<Result<Vec<_>, _>>()?;
                    set.sort();
                    set.dedup();
                    leaf(if *negated { LeafTest::StrNotIn(set) } else { LeafTest::StrIn(set) })
                }
                Kind::Ordered(ty) => {
                    let keys =
                        values.iter().map(|v| self.key(p, v, ty)).collect::<Result<BTreeSet<_>, _>>()?;
                    if *negated {
                        Cond::And(keys.into_iter().map(|k| leaf(LeafTest::NotEq(k))).collect())
                    } else {
                        Cond::Or(keys.into_iter().map(|k| leaf(LeafTest::Range { lo: k, hi: k })).collect())
                    }
                }
                Kind::Bool | Kind::List => return Err(unsupported(if *negated { "NOT IN" } else { "IN" })),
            },
            Test::Between { low, high } => match kind {
                Kind::Ordered(ty) => {
                    let lo = self.key(p, low, ty)?;
                    let hi = self.key(p, high, ty)?;
                    leaf(LeafTest::Range { lo, hi })
                }
                _ => return Err(unsupported("BETWEEN")),
            },
            Test::Contains { value } => match kind {
                Kind::List => match &value.value {
                    LitValue::Str(s) => leaf(LeafTest::Contains(s.clone())),
                    _ => return Err(mismatch(p, value, kind)),
                },
                _ => return Err(unsupported("CONTAINS")),
            },
        };
        Ok(cond)
    }

    fn string(&self, p: &Predicate, lit: &Literal, kind: Kind) -> Result<String, SegmentError> {
        match &lit.value {
            LitValue::Str(s) => Ok(s.clone()),
            _ => Err(mismatch(p, lit, kind)),
        }
    }

    /// The order key of a literal compared with a number or timestamp.
    fn key(&self, p: &Predicate, lit: &Literal, ty: TraitType) -> Result<u64, SegmentError> {
        match (ty, &lit.value) {
            (TraitType::Number, LitValue::Num(x)) => Ok(num_key(*x)),
            (TraitType::Timestamp, LitValue::Str(s)) => match parse_rfc3339_ms(s) {
                Some(ms) => Ok(time_key(ms)),
                None => Err(SegmentError::TypeMismatch {
                    position: pos(lit.span),
                    name: p.name.text.clone(),
                    expected: "a timestamp".to_string(),
                    found: format!("the string {s:?}, which is not an RFC 3339 timestamp"),
                }),
            },
            (TraitType::Timestamp, LitValue::Now { offset_ms }) => {
                Ok(time_key(self.s.ctx.now_ms.saturating_add(*offset_ms)))
            }
            _ => Err(mismatch(p, lit, Kind::Ordered(ty))),
        }
    }
}

/// The operator families of SEGMENTS.md.
#[derive(Clone, Copy)]
enum Kind {
    /// Keyword, text or identifier: `=`, `!=`, `IN`, `NOT IN`, `EXISTS`
    /// (identifiers: no `!=` nor `NOT IN`).
    Str { identifier: bool },
    /// Number or timestamp: every comparison, `IN`, `BETWEEN`, `EXISTS`.
    Ordered(TraitType),
    /// `=`, `!=`, `EXISTS`.
    Bool,
    /// `CONTAINS`, `EXISTS`.
    List,
}

impl Kind {
    fn of(field: &Field) -> Kind {
        match field {
            Field::Identifier(_) => Kind::Str { identifier: true },
            Field::FirstSeen | Field::LastSeen => Kind::Ordered(TraitType::Timestamp),
            Field::Trait { ty, .. } => match ty {
                TraitType::Keyword | TraitType::Text => Kind::Str { identifier: false },
                TraitType::Number | TraitType::Timestamp => Kind::Ordered(*ty),
                TraitType::Bool => Kind::Bool,
                TraitType::List => Kind::List,
            },
        }
    }

    fn describe(self) -> String {
        match self {
            Kind::Str { identifier: true } => "an identifier".to_string(),
            Kind::Str { identifier: false } => "a string".to_string(),
            Kind::Ordered(TraitType::Timestamp) => "a timestamp".to_string(),
            Kind::Ordered(_) => "a number".to_string(),
            Kind::Bool => "a bool".to_string(),
            Kind::List => "a list".to_string(),
        }
    }
}

fn describe_literal(lit: &Literal) -> String {
    match &lit.value {
        LitValue::Str(s) => format!("the string {s:?}"),
        LitValue::Num(x) => format!("the number {x}"),
        LitValue::Bool(b) => if *b { "TRUE" } else { "FALSE" }.to_string(),
        LitValue::Now { .. } => "a time relative to NOW".to_string(),
    }
}

fn mismatch(p: &Predicate, lit: &Literal, kind: Kind) -> SegmentError {
    SegmentError::TypeMismatch {
        position: pos(lit.span),
        name: p.name.text.clone(),
        expected: kind.describe(),
        found: describe_literal(lit),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{key_to_time, TraitType};
    use std::collections::BTreeMap;

    const NOW: i64 = 1_793_491_200_000; // 2026-11-01T00:00:00Z

    fn schema() -> Schema {
        let mut s = Schema::new();
        for (name, ty) in [
            ("country", TraitType::Keyword),
            ("age", TraitType::Number),
            ("tags", TraitType::List),
            ("newsletter", TraitType::Bool),
            ("signup_at", TraitType::Timestamp),
            ("email", TraitType::Text),
        ] {
            s.declare_trait(name, ty).unwrap();
        }
        s.declare_property("purchase", "amount", TraitType::Number).unwrap();
        s.declare_property("purchase", "category", TraitType::Keyword).unwrap();
        s
    }

    fn err(text: &str) -> String {
        let s = schema();
        let ctx = CheckContext { schema: &s, catalog: &NoSegments, now_ms: NOW };
        compile(text, &ctx).expect_err(text).to_string()
    }

    fn ok(text: &str) -> Cond {
        let s = schema();
        let ctx = CheckContext { schema: &s, catalog: &NoSegments, now_ms: NOW };
        compile(text, &ctx).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn bad_queries_name_the_problem_and_position() {
        assert_eq!(err(r#"plan = "pro""#), "unknown trait `plan` at position 1");
        assert_eq!(
            err(r#"country > "FR""#),
            "unsupported operator at position 1: `country` is a string, which does not support >"
        );
        assert_eq!(
            err(r#"age = "forty""#),
            "type mismatch at position 7: `age` is a number, but the value is the string \"forty\""
        );
        assert_eq!(
            err(r#"tags = "vip""#),
            "unsupported operator at position 1: `tags` is a list, which does not support ="
        );
        assert!(err(r#"DID "purchase" IN LAST 1 MONTH"#).starts_with("invalid query at position 26:"));
        assert!(err(r#"DID "purchase" IN LAST 1 MONTH"#).contains("MONTH"));
        assert_eq!(err("country ="), "syntax error at position 10: expected a value, found end of query");
        assert_eq!(
            err(r#"(country = "FR""#),
            "syntax error at position 16: expected AND, OR or \")\", found end of query"
        );
        assert_eq!(err(r#"DID "refund""#), "unknown event `refund` at position 5");
        assert_eq!(
            err(r#"DID "purchase" WHERE colour = "red""#),
            "unknown property of event \"purchase\" `colour` at position 22"
        );
        assert!(err(r#"signup_at > "yesterday""#).contains("not an RFC 3339 timestamp"));
        assert!(err("signup_at > 5").contains("type mismatch at position 13"));
        assert!(err(r#"newsletter > TRUE"#).contains("does not support >"));
        assert!(err(r#"user_id != "u1""#).contains("does not support !="));
        assert!(err(r#"country BETWEEN "A" AND "B""#).contains("does not support BETWEEN"));
        assert!(err(r#"IN SEGMENT "nope""#).contains("unknown segment \"nope\" at position 1"));
    }

    #[test]
    fn literals_become_typed_keys_and_now_is_fixed() {
        let c = ok("signup_at > NOW - 1 DAYS");
        let Cond::Leaf(Leaf { test: LeafTest::Range { lo, hi }, .. }) = c else { panic!("{c:?}") };
        assert_eq!(key_to_time(lo), NOW - 86_400_000 + 1);
        assert_eq!(hi, u64::MAX);
        let c = ok(r#"DID "purchase" BETWEEN "2026-01-01T00:00:00Z" AND NOW"#);
        let Cond::Did(d) = c else { panic!("{c:?}") };
        assert_eq!((d.from_ms, d.to_ms), (1_767_225_600_000, NOW - 1));
        assert_eq!(ok("age < 5 AND age > 10 OR ALL"), Cond::All);
    }

    #[test]
    fn saved_segments_inline_and_cycles_are_refused() {
        let s = schema();
        let mut catalog = BTreeMap::new();
        catalog.insert("fr".to_string(), r#"country = "FR""#.to_string());
        catalog.insert("a".to_string(), r#"IN SEGMENT "b""#.to_string());
        catalog.insert("b".to_string(), r#"IN SEGMENT "a""#.to_string());
        catalog.insert("broken".to_string(), r#"colour = "red""#.to_string());
        let ctx = CheckContext { schema: &s, catalog: &catalog, now_ms: NOW };
        assert_eq!(compile(r#"IN SEGMENT "fr""#, &ctx).unwrap(), ok(r#"country = "FR""#));
        let e = compile(r#"IN SEGMENT "a""#, &ctx).unwrap_err().to_string();
        assert_eq!(e, "segment cycle: a -> b -> a");
        let e = compile(r#"IN SEGMENT "broken""#, &ctx).unwrap_err().to_string();
        assert!(e.starts_with("saved segment \"broken\" is invalid: unknown trait `colour`"), "{e}");
        // Saving "fr" as a reference to itself, directly or through "x", is refused.
        assert!(check_save("fr", r#"IN SEGMENT "fr""#, &ctx).is_err());
        catalog.insert("x".to_string(), r#"IN SEGMENT "fr""#.to_string());
        let ctx = CheckContext { schema: &s, catalog: &catalog, now_ms: NOW };
        let e = check_save("fr", r#"IN SEGMENT "x""#, &ctx).unwrap_err().to_string();
        assert_eq!(e, "segment cycle: fr -> x -> fr");
        assert!(check_save("fr2", r#"IN SEGMENT "x""#, &ctx).is_ok());
        let refs = references(&crate::segment::parse(r#"IN SEGMENT "a" OR NOT IN SEGMENT "fr""#).unwrap());
        assert_eq!(refs.into_iter().collect::<Vec<_>>(), vec!["a".to_string(), "fr".to_string()]);
    }
}
