//! The parser of the segment language: it turns query text into the syntax
//! tree of [`super::ast`], following the grammar of `SEGMENTS.md`.
//!
//! It is a recursive-descent parser with one token of lookahead over the
//! [`Lexer`]. Segment text comes from the network, so the parser never
//! panics: every problem is a [`SegmentError`] with the 1-based character
//! position of the offending text, and nesting (parentheses, `NOT`, `WHERE`)
//! is limited to [`MAX_DEPTH`] levels so that hostile input cannot exhaust
//! the stack.
//!
//! `NOT` binds tightest, then `AND`, then `OR`. A direct chain such as
//! `a AND b AND c` becomes one [`Expr::And`] with three operands; a
//! parenthesised group stays a separate node, and a single operand is never
//! wrapped. `name BETWEEN x AND y` takes the `AND` as part of the range, as
//! in SQL, so `age BETWEEN 1 AND 5 AND x = 1` is a chain of two conditions.
//!
//! The `WHERE` clause of a behaviour is greedy: it takes a whole
//! `OR`-level expression over event properties, so in
//! `DID "purchase" WHERE amount > 100 AND category = "shoes" IN LAST 7 DAYS`
//! both comparisons belong to the clause. The clause ends at the first token
//! that cannot continue it: `AT`, `EXACTLY`, `IN` (which then must start
//! `IN LAST`), `SINCE`, `BETWEEN` (after a complete property condition a
//! `BETWEEN` can only start the window), a closing parenthesis or the end of
//! the text. To combine a behaviour that has a `WHERE` clause with another
//! condition, put the behaviour in parentheses:
//! `(DID "x" WHERE a = 1) AND country = "FR"`, or end the clause with a
//! frequency or window: `DID "x" WHERE a = 1 IN LAST 7 DAYS AND country = "FR"`.
//! Inside `WHERE`, `DID`, `IN SEGMENT` and `ALL` are syntax errors.
//!
//! A behaviour's frequency must come before its window; the other order is
//! a syntax error that says so. Counts and window lengths are whole numbers
//! of 0 or more (`TIME` is accepted for `TIMES`), `MONTH[S]` and `YEAR[S]`
//! are rejected because they have no fixed length, and window timestamps are
//! parsed here as RFC 3339, whereas a timestamp-like string in a predicate
//! stays a string for the checker to read.

use super::ast::{
    Behaviour, CmpOp, Expr, Frequency, LitValue, Literal, Name, Predicate, Span, Test, TimeRef, Unit, Window,
};
use super::error::SegmentError;
use super::lexer::{Keyword, Lexer, Token, TokenKind};

/// The deepest nesting of parentheses, `NOT` and `WHERE` the parser accepts.
pub const MAX_DEPTH: usize = 100;

/// The longest token text quoted back in an error, in characters.
const MAX_FOUND_CHARS: usize = 40;

/// Parses a full segment expression. The whole text must be consumed.
pub fn parse(text: &str) -> Result<Expr, SegmentError> {
    parse_with(text, Mode::Segment)
}

/// Parses a condition over event properties, as in a behaviour's `WHERE`
/// clause: the segment grammar without `DID`, `IN SEGMENT` or `ALL`. The
/// whole text must be consumed.
pub fn parse_filter(text: &str) -> Result<Expr, SegmentError> {
    parse_with(text, Mode::Filter)
}

/// Parses `text` in `mode` and checks that nothing is left over.
fn parse_with(text: &str, mode: Mode) -> Result<Expr, SegmentError> {
    let mut parser = Parser::new(text)?;
    let expr = parser.parse_or(mode)?;
    if parser.token.kind != TokenKind::End {
        return Err(parser.expected("AND, OR or the end of the query"));
    }
    Ok(expr)
}

/// Which conditions may appear.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// A segment: everything.
    Segment,
    /// A `WHERE` clause: no `DID`, `IN SEGMENT` or `ALL`.
    Filter,
}

impl Mode {
    /// What may start a condition, in words, for a syntax error.
    fn condition(self) -> &'static str {
        match self {
            Mode::Segment => "a condition: a name, \"(\", NOT, DID, IN SEGMENT or ALL",
            Mode::Filter => "a condition on an event property: a name, \"(\" or NOT",
        }
    }
}

/// A parser holding the current lookahead token.
struct Parser {
    lexer: Lexer,
    /// The next token, not yet consumed.
    token: Token,
    /// The end of the last consumed token.
    prev_end: usize,
    /// Current nesting depth.
    depth: usize,
}

impl Parser {
    fn new(text: &str) -> Result<Self, SegmentError> {
        let mut lexer = Lexer::new(text);
        let token = lexer.next_token()?;
        Ok(Parser { lexer, token, prev_end: 0, depth: 0 })
    }

    /// Consumes the current token and returns it.
    fn advance(&mut self) -> Result<Token, SegmentError> {
        let next = self.lexer.next_token()?;
        let token = std::mem::replace(&mut self.token, next);
        self.prev_end = token.span.end;
        Ok(token)
    }

    /// True when the current token is `keyword`.
    fn at(&self, keyword: Keyword) -> bool {
        self.token.kind == TokenKind::Keyword(keyword)
    }

    /// Consumes the current token if it is `keyword`.
    fn eat(&mut self, keyword: Keyword) -> Result<bool, SegmentError> {
        if self.at(keyword) {
            self.advance()?;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    /// Consumes `keyword` or fails with `expected`.
    fn expect(&mut self, keyword: Keyword, expected: &str) -> Result<Token, SegmentError> {
        if self.at(keyword) {
            self.advance()
        } else {
            Err(self.expected(expected))
        }
    }

    /// A syntax error at the current token.
    fn expected(&self, expected: &str) -> SegmentError {
        SegmentError::Syntax {
            position: self.token.span.start + 1,
            expected: expected.to_string(),
            found: describe(&self.token),
        }
    }

    /// Enters one level of nesting at the current token.
    fn enter(&mut self) -> Result<(), SegmentError> {
        if self.depth >= MAX_DEPTH {
            return Err(invalid(
                self.token.span,
                format!(
                    "the query is nested too deeply: at most {MAX_DEPTH} levels of \
                     parentheses, NOT and WHERE are allowed"
                ),
            ));
        }
        self.depth += 1;
        Ok(())
    }

    /// Leaves one level of nesting.
    fn leave(&mut self) {
        self.depth = self.depth.saturating_sub(1);
    }

    /// `or = and { "OR" and }`
    fn parse_or(&mut self, mode: Mode) -> Result<Expr, SegmentError> {
        let first = self.parse_and(mode)?;
        if !self.at(Keyword::Or) {
            return Ok(first);
        }
        let mut operands = vec![first];
        while self.eat(Keyword::Or)? {
            operands.push(self.parse_and(mode)?);
        }
        Ok(Expr::Or(operands))
    }

    /// `and = unary { "AND" unary }`
    fn parse_and(&mut self, mode: Mode) -> Result<Expr, SegmentError> {
        let first = self.parse_unary(mode)?;
        if !self.at(Keyword::And) {
            return Ok(first);
        }
        let mut operands = vec![first];
        while self.eat(Keyword::And)? {
            operands.push(self.parse_unary(mode)?);
        }
        Ok(Expr::And(operands))
    }

    /// `unary = "NOT" unary | atom`
    fn parse_unary(&mut self, mode: Mode) -> Result<Expr, SegmentError> {
        if !self.at(Keyword::Not) {
            return self.parse_atom(mode);
        }
        self.enter()?;
        let start = self.advance()?.span.start;
        let inner = self.parse_unary(mode)?;
        self.leave();
        Ok(Expr::Not(Box::new(inner), Span::new(start, self.prev_end)))
    }

    /// `atom = "(" expr ")" | "ALL" | predicate | behaviour | "IN" "SEGMENT" string`
    fn parse_atom(&mut self, mode: Mode) -> Result<Expr, SegmentError> {
        match &self.token.kind {
            TokenKind::LParen => {
                self.enter()?;
                self.advance()?;
                let inner = self.parse_or(mode)?;
                if self.token.kind != TokenKind::RParen {
                    return Err(self.expected("AND, OR or \")\""));
                }
                self.advance()?;
                self.leave();
                Ok(inner)
            }
            TokenKind::Name { text, .. } => {
                let name = Name { text: text.clone(), span: self.token.span };
                self.advance()?;
                self.parse_predicate(name)
            }
            TokenKind::Keyword(Keyword::All | Keyword::Did | Keyword::In) if mode == Mode::Filter => {
                Err(self.expected(
                    "a condition on an event property (DID, IN SEGMENT and ALL \
                     cannot be used inside WHERE; to combine a behaviour that has \
                     a WHERE clause with other conditions, put it in parentheses)",
                ))
            }
            TokenKind::Keyword(Keyword::All) => Ok(Expr::All(self.advance()?.span)),
            TokenKind::Keyword(Keyword::Did) => self.parse_behaviour(),
            TokenKind::Keyword(Keyword::In) => {
                let start = self.advance()?.span.start;
                self.expect(Keyword::Segment, "SEGMENT, as in IN SEGMENT \"name\"")?;
                let (name, span) = self.expect_string("a segment name in quotes")?;
                Ok(Expr::InSegment { name, span: Span::new(start, span.end) })
            }
            TokenKind::Keyword(keyword) => {
                let base = mode.condition();
                if matches!(keyword, Keyword::And | Keyword::Or | Keyword::Not) {
                    Err(self.expected(base))
                } else {
                    // A reserved word where a name could stand: say how to
                    // use it as a name.
                    let hint = format!(
                        "{base} (a keyword such as {} is a name only in backticks: `{}`)",
                        describe(&self.token),
                        self.token.text
                    );
                    Err(self.expected(&hint))
                }
            }
            _ => Err(self.expected(mode.condition())),
        }
    }

    /// `predicate = name op literal | name ["NOT"] "IN" "(" literal {"," literal} ")"
    /// | name "BETWEEN" literal "AND" literal | name ["NOT"] "EXISTS"
    /// | name "CONTAINS" literal`
    ///
    /// The name is already consumed.
    fn parse_predicate(&mut self, name: Name) -> Result<Expr, SegmentError> {
        let test = match &self.token.kind {
            TokenKind::Op(op) => {
                let op: CmpOp = *op;
                self.advance()?;
                let value = self.parse_literal()?;
                Test::Compare { op, value }
            }
            TokenKind::Keyword(Keyword::In) => {
                self.advance()?;
                let values = self.parse_list()?;
                Test::In { negated: false, values }
            }
            TokenKind::Keyword(Keyword::Not) => {
                self.advance()?;
                if self.eat(Keyword::Exists)? {
                    Test::Exists { negated: true }
                } else {
                    self.expect(Keyword::In, "IN or EXISTS after NOT")?;
                    let values = self.parse_list()?;
                    Test::In { negated: true, values }
                }
            }
            TokenKind::Keyword(Keyword::Between) => {
                self.advance()?;
                let low = self.parse_literal()?;
                self.expect(Keyword::And, "AND, as in BETWEEN low AND high")?;
                let high = self.parse_literal()?;
                Test::Between { low, high }
            }
            TokenKind::Keyword(Keyword::Exists) => {
                self.advance()?;
                Test::Exists { negated: false }
            }
            TokenKind::Keyword(Keyword::Contains) => {
                self.advance()?;
                let value = self.parse_literal()?;
                Test::Contains { value }
            }
            _ => return Err(self.expected("an operator such as =, !=, <, IN, BETWEEN, EXISTS or CONTAINS")),
        };
        let span = Span::new(name.span.start, self.prev_end);
        Ok(Expr::Predicate(Predicate { name, test, span }))
    }

    /// `"(" literal { "," literal } ")"`
    fn parse_list(&mut self) -> Result<Vec<Literal>, SegmentError> {
        if self.token.kind != TokenKind::LParen {
            return Err(self.expected("\"(\" to start a list of values"));
        }
        self.advance()?;
        let mut values = vec![self.parse_literal()?];
        loop {
            match self.token.kind {
                TokenKind::Comma => {
                    self.advance()?;
                    values.push(self.parse_literal()?);
                }
                TokenKind::RParen => {
                    self.advance()?;
                    return Ok(values);
                }
                _ => return Err(self.expected("\",\" or \")\"")),
            }
        }
    }

    /// `literal = string | number | "TRUE" | "FALSE" | "NOW" [("+"|"-") int unit]`
    fn parse_literal(&mut self) -> Result<Literal, SegmentError> {
        let value = match &self.token.kind {
            TokenKind::Str(s) => LitValue::Str(s.clone()),
            TokenKind::Number(n) => LitValue::Num(*n),
            TokenKind::Keyword(Keyword::True) => LitValue::Bool(true),
            TokenKind::Keyword(Keyword::False) => LitValue::Bool(false),
            TokenKind::Keyword(Keyword::Now) => {
                let start = self.advance()?.span.start;
                let offset_ms = self.parse_now_offset()?;
                return Ok(Literal {
                    value: LitValue::Now { offset_ms },
                    span: Span::new(start, self.prev_end),
                });
            }
            _ => return Err(self.expected("a value")),
        };
        let span = self.advance()?.span;
        Ok(Literal { value, span })
    }

    /// The optional `("+" | "-") int unit` after `NOW`, in milliseconds.
    /// `NOW -14 DAYS` lexes as `NOW` and the number `-14`; that is read as
    /// the same offset as `NOW - 14 DAYS`.
    fn parse_now_offset(&mut self) -> Result<i64, SegmentError> {
        let negative = match &self.token.kind {
            TokenKind::Plus | TokenKind::Minus => {
                let negative = self.token.kind == TokenKind::Minus;
                self.advance()?;
                negative
            }
            TokenKind::Number(_) if self.token.text.starts_with('-') => {
                let (count, count_span) = self.parse_whole(true)?;
                return self.duration(count, count_span).map(|ms| -ms);
            }
            _ => return Ok(0),
        };
        let (count, count_span) = self.parse_whole(false)?;
        let ms = self.duration(count, count_span)?;
        Ok(if negative { -ms } else { ms })
    }

    /// `int unit` after its count: the duration in milliseconds.
    fn duration(&mut self, count: u64, count_span: Span) -> Result<i64, SegmentError> {
        let (unit, unit_text) = self.parse_unit()?;
        i64::try_from(count)
            .ok()
            .and_then(|n| n.checked_mul(unit.millis()))
            .ok_or_else(|| invalid(count_span, format!("{count} {unit_text} is too long a duration")))
    }

    /// A whole number of 0 or more. With `signed`, a leading `-` is allowed
    /// and ignored (the caller negates): that is `NOW -14 DAYS`.
    fn parse_whole(&mut self, signed: bool) -> Result<(u64, Span), SegmentError> {
        if !matches!(self.token.kind, TokenKind::Number(_)) {
            return Err(self.expected("a whole number"));
        }
        let token = self.advance()?;
        let digits = match token.text.strip_prefix('-') {
            Some(digits) if signed => digits,
            Some(_) => {
                return Err(invalid(
                    token.span,
                    format!("`{}` is negative: expected a whole number of 0 or more", token.text),
                ))
            }
            None => token.text.as_str(),
        };
        if !digits.chars().all(|c| c.is_ascii_digit()) {
            return Err(invalid(token.span, format!("`{}` is not a whole number", token.text)));
        }
        let value = digits
            .parse::<u64>()
            .map_err(|_| invalid(token.span, format!("`{}` is too large", token.text)))?;
        Ok((value, token.span))
    }

    /// `unit = "MINUTE[S]" | "HOUR[S]" | "DAY[S]" | "WEEK[S]"`, with the text
    /// as written.
    fn parse_unit(&mut self) -> Result<(Unit, String), SegmentError> {
        match &self.token.kind {
            TokenKind::Keyword(Keyword::Unit(unit)) => {
                let unit = *unit;
                let token = self.advance()?;
                Ok((unit, token.text))
            }
            TokenKind::Name { text, quoted: false }
                if ["MONTH", "MONTHS", "YEAR", "YEARS"].iter().any(|u| u.eq_ignore_ascii_case(text)) =>
            {
                Err(invalid(
                    self.token.span,
                    format!(
                        "there is no time unit {text}: months and years have no fixed \
                         length; use DAYS or WEEKS instead"
                    ),
                ))
            }
            _ => Err(self.expected("a time unit (MINUTES, HOURS, DAYS, WEEKS)")),
        }
    }

    /// A quoted string, or a syntax error with `expected`.
    fn expect_string(&mut self, expected: &str) -> Result<(String, Span), SegmentError> {
        let TokenKind::Str(value) = &self.token.kind else {
            return Err(self.expected(expected));
        };
        let value = value.clone();
        let span = self.advance()?.span;
        Ok((value, span))
    }

    /// `behaviour = "DID" string ["WHERE" props] [frequency] [window]`
    fn parse_behaviour(&mut self) -> Result<Expr, SegmentError> {
        let start = self.advance()?.span.start;
        let (event, event_span) = self.expect_string("an event name in quotes, as in DID \"purchase\"")?;
        let filter = if self.at(Keyword::Where) {
            self.enter()?;
            self.advance()?;
            let filter = self.parse_or(Mode::Filter)?;
            self.leave();
            Some(Box::new(filter))
        } else {
            None
        };
        let frequency = self.parse_frequency()?;
        let window = self.parse_window()?;
        if window != Window::AllTime && (self.at(Keyword::At) || self.at(Keyword::Exactly)) {
            return Err(self.expected(
                "the frequency before the window, as in \
                 DID \"e\" AT LEAST 2 TIMES IN LAST 30 DAYS",
            ));
        }
        Ok(Expr::Did(Behaviour {
            event,
            event_span,
            filter,
            frequency,
            window,
            span: Span::new(start, self.prev_end),
        }))
    }

    /// `frequency = "AT" "LEAST" int "TIMES" | "AT" "MOST" int "TIMES"
    /// | "EXACTLY" int "TIMES"`; `AT LEAST 1 TIMES` when absent.
    fn parse_frequency(&mut self) -> Result<Frequency, SegmentError> {
        let make: fn(u32) -> Frequency = if self.eat(Keyword::At)? {
            if self.eat(Keyword::Least)? {
                Frequency::AtLeast
            } else if self.eat(Keyword::Most)? {
                Frequency::AtMost
            } else {
                return Err(self.expected("LEAST or MOST"));
            }
        } else if self.eat(Keyword::Exactly)? {
            Frequency::Exactly
        } else {
            return Ok(Frequency::AtLeast(1));
        };
        let (count, span) = self.parse_whole(false)?;
        let count = u32::try_from(count)
            .map_err(|_| invalid(span, format!("{count} is too large: at most {} times", u32::MAX)))?;
        let times = match &self.token.kind {
            TokenKind::Keyword(Keyword::Times) => true,
            TokenKind::Name { text, quoted: false } => text.eq_ignore_ascii_case("TIME"),
            _ => false,
        };
        if !times {
            return Err(self.expected("TIMES"));
        }
        self.advance()?;
        Ok(make(count))
    }

    /// `window = "IN" "LAST" int unit | "SINCE" time | "BETWEEN" time "AND" time`;
    /// all time when absent.
    fn parse_window(&mut self) -> Result<Window, SegmentError> {
        if self.eat(Keyword::In)? {
            self.expect(Keyword::Last, "LAST, as in IN LAST 30 DAYS")?;
            let (count, span) = self.parse_whole(false)?;
            Ok(Window::Last(self.duration(count, span)?))
        } else if self.eat(Keyword::Since)? {
            Ok(Window::Since(self.parse_time()?))
        } else if self.eat(Keyword::Between)? {
            let from = self.parse_time()?;
            self.expect(Keyword::And, "AND, as in BETWEEN a AND b")?;
            let to = self.parse_time()?;
            Ok(Window::Between(from, to))
        } else {
            Ok(Window::AllTime)
        }
    }

    /// `time = string (RFC 3339) | "NOW" [("+" | "-") int unit]`
    fn parse_time(&mut self) -> Result<TimeRef, SegmentError> {
        match &self.token.kind {
            TokenKind::Str(s) => {
                let parsed = chrono::DateTime::parse_from_rfc3339(s);
                let token = self.advance()?;
                match parsed {
                    Ok(time) => Ok(TimeRef::At(time.timestamp_millis())),
                    Err(e) => Err(invalid(
                        token.span,
                        format!(
                            "{} is not an RFC 3339 timestamp such as \
                             \"2026-01-31T00:00:00Z\" ({e})",
                            truncate(&token.text)
                        ),
                    )),
                }
            }
            TokenKind::Keyword(Keyword::Now) => {
                self.advance()?;
                Ok(TimeRef::Now(self.parse_now_offset()?))
            }
            _ => Err(self.expected("a time: an RFC 3339 timestamp in quotes or NOW")),
        }
    }
}

/// How a token is named in a syntax error: strings and backticked names as
/// written, other tokens as written in double quotes, the end as
/// `end of query`.
fn describe(token: &Token) -> String {
    match token.kind {
        TokenKind::End => "end of query".to_string(),
        TokenKind::Str(_) | TokenKind::Name { quoted: true, .. } => truncate(&token.text),
        _ => format!("\"{}\"", truncate(&token.text)),
    }
}

/// `text`, cut to [`MAX_FOUND_CHARS`] characters with an ellipsis.
fn truncate(text: &str) -> String {
    if text.chars().count() <= MAX_FOUND_CHARS {
        text.to_string()
    } else {
        let mut cut: String = text.chars().take(MAX_FOUND_CHARS).collect();
        cut.push('…');
        cut
    }
}

/// An [`SegmentError::Invalid`] at the start of `span`.
fn invalid(span: Span, message: String) -> SegmentError {
    SegmentError::Invalid { position: span.start + 1, message }
}

#[cfg(test)]
#[path = "parser_tests.rs"]
mod tests;
