//! The syntax tree of a segment expression, exactly as written.
//!
//! The parser produces it; the checker (`check.rs`) turns it into a typed
//! condition tree against a schema. Every node that can be wrong for the
//! schema carries the [`Span`] of its text so that a check error can name
//! the character position.

use std::fmt;

/// A range of characters in the query text: `start` is the 0-based index of
/// the first character, `end` one past the last. Positions count Unicode
/// scalar values (`char`s), not bytes, so that a position shown to a user
/// matches what they typed. Error messages show `start + 1` as "position".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub struct Span {
    /// First character, 0-based.
    pub start: usize,
    /// One past the last character.
    pub end: usize,
}

impl Span {
    /// A span from `start` (inclusive) to `end` (exclusive).
    pub fn new(start: usize, end: usize) -> Self {
        Span { start, end }
    }

    /// The smallest span that covers both.
    pub fn to(self, other: Span) -> Span {
        Span { start: self.start.min(other.start), end: self.end.max(other.end) }
    }
}

/// A boolean segment expression.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    /// `ALL`: every live profile.
    All(Span),
    /// `NOT e`.
    Not(Box<Expr>, Span),
    /// `a AND b AND ...`, two or more operands as written (the parser
    /// flattens a chain of ANDs into one node).
    And(Vec<Expr>),
    /// `a OR b OR ...`, two or more operands, flattened likewise.
    Or(Vec<Expr>),
    /// A test on a trait, identifier or (inside `WHERE`) event property.
    Predicate(Predicate),
    /// `DID "event" [WHERE ...] [frequency] [window]`.
    Did(Behaviour),
    /// `IN SEGMENT "name"`.
    InSegment {
        /// The saved segment's name.
        name: String,
        /// Span of the whole `IN SEGMENT "name"` text.
        span: Span,
    },
}

impl Expr {
    /// The span of the whole expression.
    pub fn span(&self) -> Span {
        match self {
            Expr::All(s) | Expr::Not(_, s) => *s,
            Expr::And(v) | Expr::Or(v) => {
                let first = v.first().map(Expr::span).unwrap_or_default();
                v.iter().fold(first, |acc, e| acc.to(e.span()))
            }
            Expr::Predicate(p) => p.span,
            Expr::Did(b) => b.span,
            Expr::InSegment { span, .. } => *span,
        }
    }
}

/// A trait, identifier or property name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Name {
    /// The name without backticks.
    pub text: String,
    /// Where it stands in the query.
    pub span: Span,
}

/// `name <test>`.
#[derive(Clone, Debug, PartialEq)]
pub struct Predicate {
    /// The trait, identifier or property tested.
    pub name: Name,
    /// What is tested.
    pub test: Test,
    /// Span of the whole predicate.
    pub span: Span,
}

/// The test part of a predicate.
#[derive(Clone, Debug, PartialEq)]
pub enum Test {
    /// `name op literal`.
    Compare {
        /// The operator.
        op: CmpOp,
        /// The right-hand side.
        value: Literal,
    },
    /// `name IN (a, b, ...)` or, with `negated`, `name NOT IN (...)`.
    In {
        /// True for `NOT IN`.
        negated: bool,
        /// One or more literals.
        values: Vec<Literal>,
    },
    /// `name BETWEEN low AND high`, inclusive at both ends.
    Between {
        /// Lower bound.
        low: Literal,
        /// Upper bound.
        high: Literal,
    },
    /// `name EXISTS` or, with `negated`, `name NOT EXISTS`.
    Exists {
        /// True for `NOT EXISTS`.
        negated: bool,
    },
    /// `name CONTAINS literal`.
    Contains {
        /// The element looked for.
        value: Literal,
    },
}

/// A comparison operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CmpOp {
    /// `=`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

impl fmt::Display for CmpOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CmpOp::Eq => "=",
            CmpOp::Ne => "!=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        })
    }
}

/// A literal value with its position.
#[derive(Clone, Debug, PartialEq)]
pub struct Literal {
    /// The value.
    pub value: LitValue,
    /// Where it stands in the query.
    pub span: Span,
}

/// The value of a literal. A quoted string stays a string here even when it
/// looks like a timestamp: the checker reads it as RFC 3339 when the trait
/// it is compared with is a timestamp.
#[derive(Clone, Debug, PartialEq)]
pub enum LitValue {
    /// A quoted string, escapes resolved.
    Str(String),
    /// A JSON number.
    Num(f64),
    /// `TRUE` or `FALSE`.
    Bool(bool),
    /// `NOW [(+|-) n unit]`: the query's `now` plus this offset in
    /// milliseconds (negative for `-`).
    Now {
        /// Offset from the query's `now`, in milliseconds.
        offset_ms: i64,
    },
}

/// `DID "event" [WHERE props] [frequency] [window]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Behaviour {
    /// The event name, exact and case-sensitive.
    pub event: String,
    /// Span of the event name's string literal.
    pub event_span: Span,
    /// The `WHERE` clause over event properties, if any. It uses the same
    /// grammar as a segment but contains no `DID`, `IN SEGMENT` or `ALL`.
    pub filter: Option<Box<Expr>>,
    /// How many matching events are needed; `AT LEAST 1 TIMES` by default.
    pub frequency: Frequency,
    /// Which events count by time; all time by default.
    pub window: Window,
    /// Span of the whole behaviour.
    pub span: Span,
}

/// The frequency clause of a behaviour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frequency {
    /// `AT LEAST n TIMES`.
    AtLeast(u32),
    /// `AT MOST n TIMES`.
    AtMost(u32),
    /// `EXACTLY n TIMES`.
    Exactly(u32),
}

/// A time unit of fixed length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// 60 seconds.
    Minute,
    /// 3,600 seconds.
    Hour,
    /// 86,400 seconds.
    Day,
    /// 7 days.
    Week,
}

impl Unit {
    /// The unit's length in milliseconds.
    pub fn millis(self) -> i64 {
        match self {
            Unit::Minute => 60_000,
            Unit::Hour => 3_600_000,
            Unit::Day => 86_400_000,
            Unit::Week => 7 * 86_400_000,
        }
    }
}

/// A point in time in a window clause.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeRef {
    /// An RFC 3339 timestamp, already parsed, in milliseconds since the epoch.
    At(i64),
    /// `NOW [(+|-) n unit]`: the query's `now` plus this many milliseconds.
    Now(i64),
}

/// The window clause of a behaviour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Window {
    /// No window: all time, future-dated events included.
    AllTime,
    /// `IN LAST n unit`: `now - n*unit <= ts <= now`. Holds the length in
    /// milliseconds.
    Last(i64),
    /// `SINCE t`: `t <= ts <= now`.
    Since(TimeRef),
    /// `BETWEEN a AND b`: `a <= ts < b`.
    Between(TimeRef, TimeRef),
}
