//! Tests of the segment parser: every construct of the grammar, every example
//! of `SEGMENTS.md`, the error messages and positions, and property tests
//! that the parser never panics and round-trips generated expressions.

use super::*;
use proptest::prelude::*;

const MIN: i64 = 60_000;
const HOUR: i64 = 60 * MIN;
const DAY: i64 = 24 * HOUR;
const WEEK: i64 = 7 * DAY;
/// 2026-01-01T00:00:00Z in milliseconds since the epoch.
const JAN_1: i64 = 1_767_225_600_000;

// ---- helpers -------------------------------------------------------------

/// Parses `text`, failing the test with the error if it does not parse.
fn parsed(text: &str) -> Expr {
    match parse(text) {
        Ok(e) => e,
        Err(e) => panic!("{text:?} did not parse: {e}"),
    }
}

/// Parses `text` and clears every span, to compare structure only.
fn p(text: &str) -> Expr {
    strip(parsed(text))
}

/// Parses `text` as a filter and clears every span.
fn pf(text: &str) -> Expr {
    match parse_filter(text) {
        Ok(e) => strip(e),
        Err(e) => panic!("{text:?} did not parse as a filter: {e}"),
    }
}

/// The error of `text`, failing the test if it parses.
fn err(text: &str) -> SegmentError {
    match parse(text) {
        Ok(e) => panic!("{text:?} parsed: {e:?}"),
        Err(e) => e,
    }
}

fn syntax(position: usize, expected: &str, found: &str) -> SegmentError {
    SegmentError::Syntax { position, expected: expected.into(), found: found.into() }
}

fn invalid_at(position: usize, message: &str) -> SegmentError {
    SegmentError::Invalid { position, message: message.into() }
}

fn strip_lit(l: Literal) -> Literal {
    Literal { value: l.value, span: Span::default() }
}

fn strip(e: Expr) -> Expr {
    let z = Span::default();
    match e {
        Expr::All(_) => Expr::All(z),
        Expr::Not(inner, _) => Expr::Not(Box::new(strip(*inner)), z),
        Expr::And(v) => Expr::And(v.into_iter().map(strip).collect()),
        Expr::Or(v) => Expr::Or(v.into_iter().map(strip).collect()),
        Expr::Predicate(pr) => {
            let test = match pr.test {
                Test::Compare { op, value } => Test::Compare { op, value: strip_lit(value) },
                Test::In { negated, values } => {
                    Test::In { negated, values: values.into_iter().map(strip_lit).collect() }
                }
                Test::Between { low, high } => Test::Between { low: strip_lit(low), high: strip_lit(high) },
                Test::Exists { negated } => Test::Exists { negated },
                Test::Contains { value } => Test::Contains { value: strip_lit(value) },
            };
            Expr::Predicate(Predicate { name: Name { text: pr.name.text, span: z }, test, span: z })
        }
        Expr::Did(b) => Expr::Did(Behaviour {
            event_span: z,
            span: z,
            filter: b.filter.map(|f| Box::new(strip(*f))),
            ..b
        }),
        Expr::InSegment { name, .. } => Expr::InSegment { name, span: z },
    }
}

fn lit(value: LitValue) -> Literal {
    Literal { value, span: Span::default() }
}
fn s(v: &str) -> Literal {
    lit(LitValue::Str(v.into()))
}
fn num(v: f64) -> Literal {
    lit(LitValue::Num(v))
}
fn boolean(v: bool) -> Literal {
    lit(LitValue::Bool(v))
}
fn now(offset_ms: i64) -> Literal {
    lit(LitValue::Now { offset_ms })
}

fn pred(name: &str, test: Test) -> Expr {
    Expr::Predicate(Predicate {
        name: Name { text: name.into(), span: Span::default() },
        test,
        span: Span::default(),
    })
}
fn cmp(name: &str, op: CmpOp, value: Literal) -> Expr {
    pred(name, Test::Compare { op, value })
}
fn eq(name: &str, value: Literal) -> Expr {
    cmp(name, CmpOp::Eq, value)
}
fn is_in(name: &str, negated: bool, values: Vec<Literal>) -> Expr {
    pred(name, Test::In { negated, values })
}
fn between(name: &str, low: Literal, high: Literal) -> Expr {
    pred(name, Test::Between { low, high })
}
fn exists(name: &str, negated: bool) -> Expr {
    pred(name, Test::Exists { negated })
}
fn contains(name: &str, value: Literal) -> Expr {
    pred(name, Test::Contains { value })
}
fn and(v: Vec<Expr>) -> Expr {
    Expr::And(v)
}
fn or(v: Vec<Expr>) -> Expr {
    Expr::Or(v)
}
fn not(e: Expr) -> Expr {
    Expr::Not(Box::new(e), Span::default())
}
fn all() -> Expr {
    Expr::All(Span::default())
}
fn seg(name: &str) -> Expr {
    Expr::InSegment { name: name.into(), span: Span::default() }
}
fn did(event: &str, filter: Option<Expr>, frequency: Frequency, window: Window) -> Expr {
    Expr::Did(Behaviour {
        event: event.into(),
        event_span: Span::default(),
        filter: filter.map(Box::new),
        frequency,
        window,
        span: Span::default(),
    })
}
fn did_plain(event: &str) -> Expr {
    did(event, None, Frequency::AtLeast(1), Window::AllTime)
}

// ---- the examples of SEGMENTS.md ----------------------------------------

#[test]
fn example_equality() {
    assert_eq!(p(r#"country = "FR""#), eq("country", s("FR")));
}

#[test]
fn example_in_between_ne() {
    assert_eq!(
        p(r#"country IN ("FR", "BE", "CH") AND age BETWEEN 25 AND 34 AND plan != "free""#),
        and(vec![
            is_in("country", false, vec![s("FR"), s("BE"), s("CH")]),
            between("age", num(25.0), num(34.0)),
            cmp("plan", CmpOp::Ne, s("free")),
        ])
    );
}

#[test]
fn example_contains_or() {
    assert_eq!(
        p(r#"tags CONTAINS "vip" OR ltv > 500"#),
        or(vec![contains("tags", s("vip")), cmp("ltv", CmpOp::Gt, num(500.0))])
    );
}

#[test]
fn example_did_and_not_did() {
    assert_eq!(
        p(r#"DID "purchase" IN LAST 30 DAYS AND NOT DID "email_open" IN LAST 7 DAYS"#),
        and(vec![
            did("purchase", None, Frequency::AtLeast(1), Window::Last(30 * DAY)),
            not(did("email_open", None, Frequency::AtLeast(1), Window::Last(7 * DAY))),
        ])
    );
}

#[test]
fn example_did_where_frequency_window() {
    assert_eq!(
        p(r#"DID "purchase" WHERE amount > 100 AND category = "shoes" AT LEAST 2 TIMES IN LAST 90 DAYS"#),
        did(
            "purchase",
            Some(and(vec![cmp("amount", CmpOp::Gt, num(100.0)), eq("category", s("shoes")),])),
            Frequency::AtLeast(2),
            Window::Last(90 * DAY),
        )
    );
}

#[test]
fn example_now_and_exists() {
    assert_eq!(
        p("last_seen < NOW - 14 DAYS AND user_id EXISTS"),
        and(vec![cmp("last_seen", CmpOp::Lt, now(-14 * DAY)), exists("user_id", false),])
    );
}

#[test]
fn example_in_segment() {
    assert_eq!(
        p(r#"IN SEGMENT "high_value" AND NOT IN SEGMENT "churned""#),
        and(vec![seg("high_value"), not(seg("churned"))])
    );
}

#[test]
fn example_between_timestamps_stays_strings() {
    assert_eq!(
        p(r#"signup_at BETWEEN "2026-01-01T00:00:00Z" AND "2026-03-31T23:59:59Z""#),
        between("signup_at", s("2026-01-01T00:00:00Z"), s("2026-03-31T23:59:59Z"))
    );
}

// ---- spans -----------------------------------------------------------------

#[test]
fn spans_of_a_predicate() {
    let Expr::Predicate(pr) = parsed(r#"country = "FR""#) else {
        panic!("not a predicate");
    };
    assert_eq!(pr.span, Span::new(0, 14));
    assert_eq!(pr.name.span, Span::new(0, 7));
    let Test::Compare { value, .. } = pr.test else {
        panic!("not a comparison");
    };
    assert_eq!(value.span, Span::new(10, 14));
}

#[test]
fn spans_of_chains_not_and_segments() {
    let e = parsed(r#"NOT a = 1 AND IN SEGMENT "x" OR ALL"#);
    assert_eq!(e.span(), Span::new(0, 35));
    let Expr::Or(ops) = e else {
        panic!("not an OR");
    };
    let Some(Expr::And(inner)) = ops.first() else {
        panic!("not an AND");
    };
    let spans: Vec<Span> = inner.iter().map(Expr::span).collect();
    assert_eq!(spans, vec![Span::new(0, 9), Span::new(14, 28)]);
    assert_eq!(ops.get(1).map(Expr::span), Some(Span::new(32, 35)));
}

#[test]
fn spans_of_a_behaviour_and_now_literal() {
    let text = r#"DID "buy" WHERE t < NOW - 14 DAYS IN LAST 7 DAYS"#;
    let Expr::Did(b) = parsed(text) else {
        panic!("not a behaviour");
    };
    assert_eq!(b.span, Span::new(0, 48));
    assert_eq!(b.event_span, Span::new(4, 9));
    let Some(Expr::Predicate(pr)) = b.filter.as_deref() else {
        panic!("no predicate filter");
    };
    let Test::Compare { value, .. } = &pr.test else {
        panic!("not a comparison");
    };
    assert_eq!(value.span, Span::new(20, 33));
}

#[test]
fn spans_of_backticked_names_include_the_backticks() {
    let Expr::Predicate(pr) = parsed("`first name` EXISTS") else {
        panic!("not a predicate");
    };
    assert_eq!(pr.name.text, "first name");
    assert_eq!(pr.name.span, Span::new(0, 12));
    assert_eq!(pr.span, Span::new(0, 19));
}

#[test]
fn spans_count_characters_not_bytes() {
    let Expr::And(v) = parsed(r#"ville = "Zürich" AND x = 1"#) else {
        panic!("not an AND");
    };
    assert_eq!(v.get(1).map(Expr::span), Some(Span::new(21, 26)));
}

// ---- every construct -------------------------------------------------------

#[test]
fn every_comparison_operator() {
    for (text, op) in [
        ("=", CmpOp::Eq),
        ("!=", CmpOp::Ne),
        ("<", CmpOp::Lt),
        ("<=", CmpOp::Le),
        (">", CmpOp::Gt),
        (">=", CmpOp::Ge),
    ] {
        assert_eq!(p(&format!("x {text} 1")), cmp("x", op, num(1.0)));
        assert_eq!(p(&format!("x{text}1")), cmp("x", op, num(1.0)));
    }
}

#[test]
fn every_predicate_form() {
    assert_eq!(p("x IN (1)"), is_in("x", false, vec![num(1.0)]));
    assert_eq!(p("x NOT IN ('a', TRUE, NOW)"), is_in("x", true, vec![s("a"), boolean(true), now(0)]));
    assert_eq!(p("x EXISTS"), exists("x", false));
    assert_eq!(p("x NOT EXISTS"), exists("x", true));
    assert_eq!(p("x CONTAINS 'a'"), contains("x", s("a")));
    assert_eq!(p("x BETWEEN NOW - 1 DAY AND NOW"), between("x", now(-DAY), now(0)));
    assert_eq!(p("x = FALSE"), eq("x", boolean(false)));
}

#[test]
fn all_in_segment_and_parentheses() {
    assert_eq!(p("ALL"), all());
    assert_eq!(p("NOT ALL"), not(all()));
    assert_eq!(p(r#"IN SEGMENT 'vip'"#), seg("vip"));
    assert_eq!(p("((x = 1))"), eq("x", num(1.0)));
    assert_eq!(p("NOT NOT x EXISTS"), not(not(exists("x", false))));
    assert_eq!(p(r#"DID "e""#), did_plain("e"));
}

#[test]
fn keywords_are_case_insensitive_names_are_not() {
    assert_eq!(
        p(r#"did "Buy" where Amount > 1 at least 2 times in last 3 days and not Country exists"#),
        and(vec![
            did(
                "Buy",
                Some(cmp("Amount", CmpOp::Gt, num(1.0))),
                Frequency::AtLeast(2),
                Window::Last(3 * DAY)
            ),
            not(exists("Country", false)),
        ])
    );
    assert_eq!(p("x = True Or y = fAlSe"), or(vec![eq("x", boolean(true)), eq("y", boolean(false))]));
    assert_eq!(p(r#"In Segment "a""#), seg("a"));
    assert_eq!(p("All"), all());
}

#[test]
fn backticked_names_may_be_keywords_or_any_text() {
    assert_eq!(p("`and` = 1"), eq("and", num(1.0)));
    assert_eq!(p("`DAYS` > 2"), cmp("DAYS", CmpOp::Gt, num(2.0)));
    assert_eq!(p("`first name` EXISTS"), exists("first name", false));
    assert_eq!(p("`a-b (c)` = 'x'"), eq("a-b (c)", s("x")));
    assert_eq!(p("traits.plan_v2 = 'x'"), eq("traits.plan_v2", s("x")));
}

/// Issue 12: a name holding a backtick was accepted at ingest but could not
/// be written in a query. A backtick inside a backticked name is written
/// twice, as SQL doubles a quote inside a quoted identifier.
#[test]
fn a_backtick_in_a_name_is_written_twice() {
    assert_eq!(p("`a``b` = 1"), eq("a`b", num(1.0)));
    assert_eq!(p("```` EXISTS"), exists("`", false));
    assert_eq!(p("```x``` = 'y'"), eq("`x`", s("y")));
    assert_eq!(p("`a````b` = 1 AND c = 2"), and(vec![eq("a``b", num(1.0)), eq("c", num(2.0))]));
    // A name is never empty: `` names nothing, ``` is never closed.
    assert!(err("`` = 1").to_string().contains("empty name"), "{}", err("`` = 1"));
    assert!(err("``` = 1").to_string().contains("unterminated"), "{}", err("``` = 1"));
}

#[test]
fn contextual_words_are_names() {
    // Only the listed keywords are reserved; TIME, MONTH and YEAR are not.
    assert_eq!(p("time = 1"), eq("time", num(1.0)));
    assert_eq!(p("month = 3 AND years > 2"), {
        and(vec![eq("month", num(3.0)), cmp("years", CmpOp::Gt, num(2.0))])
    });
}

#[test]
fn string_escapes() {
    assert_eq!(p(r#"x = "a\"b\'c\\d\ne\tf""#), eq("x", s("a\"b'c\\d\ne\tf")));
    assert_eq!(p(r#"x = 'a\"b\'c\\d\ne\tf'"#), eq("x", s("a\"b'c\\d\ne\tf")));
    assert_eq!(p(r#"x = 'say "hi"'"#), eq("x", s("say \"hi\"")));
    assert_eq!(p(r#"x = "" "#), eq("x", s("")));
    assert_eq!(p("x = \"日本\""), eq("x", s("日本")));
}

#[test]
fn numbers() {
    assert_eq!(p("x = -1"), eq("x", num(-1.0)));
    assert_eq!(p("x = 0"), eq("x", num(0.0)));
    assert_eq!(p("x > 30.5"), cmp("x", CmpOp::Gt, num(30.5)));
    assert_eq!(p("x < -0.25"), cmp("x", CmpOp::Lt, num(-0.25)));
    assert_eq!(p("x = 1e3"), eq("x", num(1000.0)));
    assert_eq!(p("x = 1E+2"), eq("x", num(100.0)));
    assert_eq!(p("x = -2.5e-3"), eq("x", num(-0.0025)));
    assert_eq!(p("x BETWEEN -5 AND -1"), between("x", num(-5.0), num(-1.0)));
}

#[test]
fn now_offsets() {
    assert_eq!(p("t < NOW"), cmp("t", CmpOp::Lt, now(0)));
    assert_eq!(p("t < NOW - 14 DAYS"), cmp("t", CmpOp::Lt, now(-14 * DAY)));
    assert_eq!(p("t < NOW -14 DAYS"), cmp("t", CmpOp::Lt, now(-14 * DAY)));
    assert_eq!(p("t < NOW-14DAYS"), cmp("t", CmpOp::Lt, now(-14 * DAY)));
    assert_eq!(p("t < now - 1 day"), cmp("t", CmpOp::Lt, now(-DAY)));
    assert_eq!(p("t > NOW + 2 HOURS"), cmp("t", CmpOp::Gt, now(2 * HOUR)));
    assert_eq!(p("t > NOW +2 HOUR"), cmp("t", CmpOp::Gt, now(2 * HOUR)));
    assert_eq!(p("t > NOW+1WEEK"), cmp("t", CmpOp::Gt, now(WEEK)));
    assert_eq!(p("t > NOW - 90 MINUTES"), cmp("t", CmpOp::Gt, now(-90 * MIN)));
    assert_eq!(p("t > NOW - 1 MINUTE"), cmp("t", CmpOp::Gt, now(-MIN)));
    assert_eq!(p("t > NOW - 0 DAYS"), cmp("t", CmpOp::Gt, now(0)));
    assert_eq!(p("t IN (NOW, NOW - 1 DAY)"), is_in("t", false, vec![now(0), now(-DAY)]));
}

// ---- behaviours: frequency and window ----------------------------------

#[test]
fn every_frequency_form() {
    let f = |text: &str| match p(text) {
        Expr::Did(b) => b.frequency,
        other => panic!("{text:?} is not a behaviour: {other:?}"),
    };
    assert_eq!(f(r#"DID "e""#), Frequency::AtLeast(1));
    assert_eq!(f(r#"DID "e" AT LEAST 2 TIMES"#), Frequency::AtLeast(2));
    assert_eq!(f(r#"DID "e" AT MOST 3 TIMES"#), Frequency::AtMost(3));
    assert_eq!(f(r#"DID "e" EXACTLY 0 TIMES"#), Frequency::Exactly(0));
    assert_eq!(f(r#"DID "e" EXACTLY 1 TIME"#), Frequency::Exactly(1));
    assert_eq!(f(r#"DID "e" at most 5 time"#), Frequency::AtMost(5));
    assert_eq!(f(r#"DID "e" AT LEAST 4294967295 TIMES"#), Frequency::AtLeast(u32::MAX));
}

#[test]
fn every_window_form() {
    let w = |text: &str| match p(text) {
        Expr::Did(b) => b.window,
        other => panic!("{text:?} is not a behaviour: {other:?}"),
    };
    assert_eq!(w(r#"DID "e""#), Window::AllTime);
    assert_eq!(w(r#"DID "e" IN LAST 5 MINUTES"#), Window::Last(5 * MIN));
    assert_eq!(w(r#"DID "e" IN LAST 1 MINUTE"#), Window::Last(MIN));
    assert_eq!(w(r#"DID "e" IN LAST 2 HOURS"#), Window::Last(2 * HOUR));
    assert_eq!(w(r#"DID "e" IN LAST 1 HOUR"#), Window::Last(HOUR));
    assert_eq!(w(r#"DID "e" IN LAST 3 DAYS"#), Window::Last(3 * DAY));
    assert_eq!(w(r#"DID "e" IN LAST 1 DAY"#), Window::Last(DAY));
    assert_eq!(w(r#"DID "e" IN LAST 4 WEEKS"#), Window::Last(4 * WEEK));
    assert_eq!(w(r#"DID "e" IN LAST 1 WEEK"#), Window::Last(WEEK));
    assert_eq!(w(r#"DID "e" IN LAST 0 DAYS"#), Window::Last(0));
    assert_eq!(w(r#"DID "e" SINCE "2026-01-01T00:00:00Z""#), Window::Since(TimeRef::At(JAN_1)));
    assert_eq!(w(r#"DID "e" SINCE '2026-01-01T02:00:00+02:00'"#), Window::Since(TimeRef::At(JAN_1)));
    assert_eq!(w(r#"DID "e" SINCE "2026-01-01T00:00:00.250Z""#), Window::Since(TimeRef::At(JAN_1 + 250)));
    assert_eq!(w(r#"DID "e" SINCE NOW - 7 DAYS"#), Window::Since(TimeRef::Now(-7 * DAY)));
    assert_eq!(
        w(r#"DID "e" BETWEEN "2026-01-01T00:00:00Z" AND "2026-03-31T23:59:59Z""#),
        Window::Between(TimeRef::At(JAN_1), TimeRef::At(1_775_001_599_000))
    );
    assert_eq!(
        w(r#"DID "e" BETWEEN NOW - 2 DAYS AND NOW -1 DAY"#),
        Window::Between(TimeRef::Now(-2 * DAY), TimeRef::Now(-DAY))
    );
    assert_eq!(
        w(r#"DID "e" BETWEEN "2026-01-01T00:00:00Z" AND NOW"#),
        Window::Between(TimeRef::At(JAN_1), TimeRef::Now(0))
    );
}

#[test]
fn frequency_then_window() {
    assert_eq!(
        p(r#"DID "e" EXACTLY 2 TIMES SINCE NOW - 1 WEEK"#),
        did("e", None, Frequency::Exactly(2), Window::Since(TimeRef::Now(-WEEK)))
    );
}

// ---- precedence --------------------------------------------------------------

#[test]
fn and_binds_tighter_than_or() {
    assert_eq!(
        p("a = 1 OR b = 2 AND c = 3"),
        or(vec![eq("a", num(1.0)), and(vec![eq("b", num(2.0)), eq("c", num(3.0))]),])
    );
    assert_eq!(
        p("a = 1 AND b = 2 OR c = 3"),
        or(vec![and(vec![eq("a", num(1.0)), eq("b", num(2.0))]), eq("c", num(3.0)),])
    );
}

#[test]
fn not_binds_tightest() {
    assert_eq!(p("NOT a = 1 AND b = 2"), and(vec![not(eq("a", num(1.0))), eq("b", num(2.0))]));
    assert_eq!(p("NOT (a = 1 OR b = 2)"), not(or(vec![eq("a", num(1.0)), eq("b", num(2.0))])));
    assert_eq!(p("a = 1 OR NOT b = 2"), or(vec![eq("a", num(1.0)), not(eq("b", num(2.0)))]));
}

#[test]
fn chains_are_flattened_groups_are_not() {
    assert_eq!(
        p("a = 1 AND b = 2 AND c = 3"),
        and(vec![eq("a", num(1.0)), eq("b", num(2.0)), eq("c", num(3.0))])
    );
    assert_eq!(
        p("a = 1 OR b = 2 OR c = 3"),
        or(vec![eq("a", num(1.0)), eq("b", num(2.0)), eq("c", num(3.0))])
    );
    assert_eq!(
        p("(a = 1 AND b = 2) AND c = 3"),
        and(vec![and(vec![eq("a", num(1.0)), eq("b", num(2.0))]), eq("c", num(3.0)),])
    );
    assert_eq!(p("(a = 1)"), eq("a", num(1.0)));
}

#[test]
fn between_inside_an_and_chain_is_the_range() {
    assert_eq!(
        p("age BETWEEN 1 AND 5 AND x = 1"),
        and(vec![between("age", num(1.0), num(5.0)), eq("x", num(1.0))])
    );
    assert_eq!(
        p("x = 1 AND age BETWEEN 1 AND 5 OR y BETWEEN 'a' AND 'b' AND z EXISTS"),
        or(vec![
            and(vec![eq("x", num(1.0)), between("age", num(1.0), num(5.0))]),
            and(vec![between("y", s("a"), s("b")), exists("z", false)]),
        ])
    );
}

// ---- the extent of WHERE ---------------------------------------------------

#[test]
fn where_takes_and_and_or_greedily() {
    assert_eq!(
        p(r#"DID "x" WHERE a = 1 AND b = 2"#),
        did(
            "x",
            Some(and(vec![eq("a", num(1.0)), eq("b", num(2.0))])),
            Frequency::AtLeast(1),
            Window::AllTime
        )
    );
    assert_eq!(
        p(r#"DID "x" WHERE a = 1 OR b = 2 AND c = 3"#),
        did(
            "x",
            Some(or(vec![eq("a", num(1.0)), and(vec![eq("b", num(2.0)), eq("c", num(3.0))]),])),
            Frequency::AtLeast(1),
            Window::AllTime
        )
    );
    assert_eq!(
        p(r#"NOT DID "x" WHERE a = 1 AND b = 2"#),
        not(did(
            "x",
            Some(and(vec![eq("a", num(1.0)), eq("b", num(2.0))])),
            Frequency::AtLeast(1),
            Window::AllTime
        ))
    );
}

#[test]
fn parentheses_end_where() {
    assert_eq!(
        p(r#"(DID "x" WHERE a = 1) AND country = "FR""#),
        and(vec![
            did("x", Some(eq("a", num(1.0))), Frequency::AtLeast(1), Window::AllTime),
            eq("country", s("FR")),
        ])
    );
    assert_eq!(
        p(r#"(DID "x" WHERE (a = 1 OR b = 2)) OR DID "y""#),
        or(vec![
            did(
                "x",
                Some(or(vec![eq("a", num(1.0)), eq("b", num(2.0))])),
                Frequency::AtLeast(1),
                Window::AllTime
            ),
            did_plain("y"),
        ])
    );
}

#[test]
fn frequency_and_window_end_where() {
    assert_eq!(
        p(r#"DID "x" WHERE a = 1 OR b = 2 IN LAST 7 DAYS AND country = "FR""#),
        and(vec![
            did(
                "x",
                Some(or(vec![eq("a", num(1.0)), eq("b", num(2.0))])),
                Frequency::AtLeast(1),
                Window::Last(7 * DAY)
            ),
            eq("country", s("FR")),
        ])
    );
    assert_eq!(
        p(r#"DID "x" WHERE a = 1 AT LEAST 2 TIMES OR DID "y""#),
        or(vec![did("x", Some(eq("a", num(1.0))), Frequency::AtLeast(2), Window::AllTime), did_plain("y"),])
    );
    assert_eq!(
        p(r#"DID "x" WHERE NOT (a = 1 OR b EXISTS) EXACTLY 3 TIMES"#),
        did(
            "x",
            Some(not(or(vec![eq("a", num(1.0)), exists("b", false)]))),
            Frequency::Exactly(3),
            Window::AllTime
        )
    );
    assert_eq!(
        p(r#"DID "x" WHERE a = 1 SINCE NOW - 1 DAY"#),
        did("x", Some(eq("a", num(1.0))), Frequency::AtLeast(1), Window::Since(TimeRef::Now(-DAY)))
    );
}

#[test]
fn in_and_between_after_a_property_condition_start_the_window() {
    assert_eq!(
        p(r#"DID "x" WHERE a IN (1, 2) IN LAST 1 DAY"#),
        did("x", Some(is_in("a", false, vec![num(1.0), num(2.0)])), Frequency::AtLeast(1), Window::Last(DAY))
    );
    assert_eq!(
        p(r#"DID "x" WHERE a = 1 BETWEEN NOW - 7 DAYS AND NOW"#),
        did(
            "x",
            Some(eq("a", num(1.0))),
            Frequency::AtLeast(1),
            Window::Between(TimeRef::Now(-7 * DAY), TimeRef::Now(0))
        )
    );
    assert_eq!(
        p(r#"DID "x" WHERE a BETWEEN 1 AND 2 AND b = 3 BETWEEN "2026-01-01T00:00:00Z" AND NOW"#),
        did(
            "x",
            Some(and(vec![between("a", num(1.0), num(2.0)), eq("b", num(3.0))])),
            Frequency::AtLeast(1),
            Window::Between(TimeRef::At(JAN_1), TimeRef::Now(0))
        )
    );
}

#[test]
fn parse_filter_accepts_property_conditions() {
    assert_eq!(
        pf(r#"amount > 100 AND (category = "shoes" OR NOT tag EXISTS)"#),
        and(vec![
            cmp("amount", CmpOp::Gt, num(100.0)),
            or(vec![eq("category", s("shoes")), not(exists("tag", false))]),
        ])
    );
}

// ---- errors ----------------------------------------------------------------

const CONDITION: &str = "a condition: a name, \"(\", NOT, DID, IN SEGMENT or ALL";
const IN_WHERE: &str = "a condition on an event property (DID, IN SEGMENT and ALL cannot \
                        be used inside WHERE; to combine a behaviour that has a WHERE clause \
                        with other conditions, put it in parentheses)";

#[test]
fn dangling_operator() {
    assert_eq!(err("country ="), syntax(10, "a value", "end of query"));
    assert_eq!(
        err("country =").to_string(),
        "syntax error at position 10: expected a value, found end of query"
    );
    assert_eq!(err("country = AND x = 1"), syntax(11, "a value", "\"AND\""));
    assert_eq!(err("country == 'FR'"), syntax(10, "a value", "\"=\""));
}

#[test]
fn unclosed_parenthesis() {
    assert_eq!(err(r#"(country = "FR""#), syntax(16, "AND, OR or \")\"", "end of query"));
    assert_eq!(err(r#"(a = 1 b = 2)"#), syntax(8, "AND, OR or \")\"", "\"b\""));
}

#[test]
fn month_and_year_are_not_units() {
    assert_eq!(
        err(r#"DID "x" IN LAST 1 MONTH"#),
        invalid_at(
            19,
            "there is no time unit MONTH: months and years have no fixed length; \
             use DAYS or WEEKS instead"
        )
    );
    assert_eq!(
        err("t < NOW - 2 years"),
        invalid_at(
            13,
            "there is no time unit years: months and years have no fixed length; \
             use DAYS or WEEKS instead"
        )
    );
    assert_eq!(err(r#"DID "x" SINCE NOW - 1 Months"#).position(), Some(23));
    assert_eq!(
        err(r#"DID "x" IN LAST 1 SECOND"#),
        syntax(19, "a time unit (MINUTES, HOURS, DAYS, WEEKS)", "\"SECOND\"")
    );
}

#[test]
fn unterminated_string() {
    assert_eq!(err(r#"country = "FR"#), invalid_at(11, "unterminated string: the \" here is never closed"));
    assert_eq!(err("country = 'FR\\'"), invalid_at(11, "unterminated string: the ' here is never closed"));
}

#[test]
fn bad_escape() {
    assert_eq!(
        err(r#"country = "F\R""#),
        invalid_at(13, "unknown escape `\\R` in a string: only \\\", \\', \\\\, \\n and \\t are allowed")
    );
    assert_eq!(err(r#"x = 'a\u0041'"#).position(), Some(7));
}

#[test]
fn stray_token_after_a_complete_expression() {
    assert_eq!(err(r#"country = "FR" "x""#), syntax(16, "AND, OR or the end of the query", "\"x\""));
    assert_eq!(err(r#"country = "FR" 'x'"#), syntax(16, "AND, OR or the end of the query", "'x'"));
    assert_eq!(err("a = 1)"), syntax(6, "AND, OR or the end of the query", "\")\""));
    assert_eq!(err("a = 1 @"), syntax(7, "AND, OR or the end of the query", "\"@\""));
}

#[test]
fn empty_input() {
    assert_eq!(err(""), syntax(1, CONDITION, "end of query"));
    assert_eq!(err("   "), syntax(4, CONDITION, "end of query"));
    assert_eq!(err("()"), syntax(2, CONDITION, "\")\""));
}

#[test]
fn event_name_must_be_quoted() {
    assert_eq!(
        err("DID purchase"),
        syntax(5, "an event name in quotes, as in DID \"purchase\"", "\"purchase\"")
    );
    assert_eq!(err("DID"), syntax(4, "an event name in quotes, as in DID \"purchase\"", "end of query"));
}

#[test]
fn did_segment_and_all_inside_where() {
    assert_eq!(err(r#"DID "a" WHERE DID "b""#), syntax(15, IN_WHERE, "\"DID\""));
    assert_eq!(err(r#"DID "a" WHERE x = 1 AND DID "b""#), syntax(25, IN_WHERE, "\"DID\""));
    assert_eq!(err(r#"DID "a" WHERE NOT IN SEGMENT "b""#), syntax(19, IN_WHERE, "\"IN\""));
    assert_eq!(err(r#"DID "a" WHERE ALL"#), syntax(15, IN_WHERE, "\"ALL\""));
    assert_eq!(parse_filter(r#"DID "b""#), Err(syntax(1, IN_WHERE, "\"DID\"")));
    assert_eq!(
        parse_filter(""),
        Err(syntax(1, "a condition on an event property: a name, \"(\" or NOT", "end of query"))
    );
}

#[test]
fn bad_timestamp_in_since() {
    let e = err(r#"DID "a" SINCE "2026-13-01""#);
    assert_eq!(e.position(), Some(15));
    let SegmentError::Invalid { message, .. } = &e else {
        panic!("not Invalid: {e:?}");
    };
    assert!(
        message.starts_with("\"2026-13-01\" is not an RFC 3339 timestamp such as \"2026-01-31T00:00:00Z\""),
        "{message}"
    );
    assert_eq!(err(r#"DID "a" BETWEEN NOW AND "yesterday""#).position(), Some(25));
    assert_eq!(
        err(r#"DID "a" SINCE 2026"#),
        syntax(15, "a time: an RFC 3339 timestamp in quotes or NOW", "\"2026\"")
    );
}

#[test]
fn positions_count_characters_after_non_ascii_text() {
    // "Zürich" has 6 characters but 7 bytes: the second AND starts at
    // character 22 (1-based), byte 23.
    assert_eq!(err(r#"ville = "Zürich" AND AND x = 1"#), syntax(22, CONDITION, "\"AND\""));
    assert_eq!(err("名前 = 1"), syntax(1, CONDITION, "\"名\""));
    assert_eq!(err(r#"`名前` = "東京"#).position(), Some(8));
}

#[test]
fn frequency_must_come_before_window() {
    assert_eq!(
        err(r#"DID "a" IN LAST 7 DAYS AT LEAST 2 TIMES"#),
        syntax(
            24,
            "the frequency before the window, as in DID \"e\" AT LEAST 2 TIMES IN LAST 30 DAYS",
            "\"AT\""
        )
    );
    assert_eq!(
        err(r#"DID "a" IN LAST 7 DAYS SINCE NOW"#),
        syntax(24, "AND, OR or the end of the query", "\"SINCE\"")
    );
}

#[test]
fn bad_counts() {
    assert_eq!(err(r#"DID "a" AT LEAST 2.5 TIMES"#), invalid_at(18, "`2.5` is not a whole number"));
    assert_eq!(
        err(r#"DID "a" AT LEAST -1 TIMES"#),
        invalid_at(18, "`-1` is negative: expected a whole number of 0 or more")
    );
    assert_eq!(
        err(r#"DID "a" EXACTLY 4294967296 TIMES"#),
        invalid_at(17, "4294967296 is too large: at most 4294967295 times")
    );
    assert_eq!(err(r#"DID "a" AT LEAST 2"#), syntax(19, "TIMES", "end of query"));
    assert_eq!(err(r#"DID "a" AT 2 TIMES"#), syntax(12, "LEAST or MOST", "\"2\""));
    assert_eq!(err(r#"DID "a" IN LAST DAYS"#), syntax(17, "a whole number", "\"DAYS\""));
    assert_eq!(
        err(r#"DID "a" IN LAST 99999999999999 WEEKS"#),
        invalid_at(17, "99999999999999 WEEKS is too long a duration")
    );
    assert_eq!(
        err(r#"DID "a" IN LAST 99999999999999999999 DAYS"#),
        invalid_at(17, "`99999999999999999999` is too large")
    );
    assert_eq!(err("t < NOW - 1e3 DAYS"), invalid_at(11, "`1e3` is not a whole number"));
    assert_eq!(err("t < NOW - - 1 DAYS"), syntax(11, "a whole number", "\"-\""));
    assert_eq!(err(r#"DID "a" IN SEGMENT "b""#), syntax(12, "LAST, as in IN LAST 30 DAYS", "\"SEGMENT\""));
}

#[test]
fn bad_predicates() {
    const OPERATOR: &str = "an operator such as =, !=, <, IN, BETWEEN, EXISTS or CONTAINS";
    assert_eq!(err("country"), syntax(8, OPERATOR, "end of query"));
    assert_eq!(err("country 'FR'"), syntax(9, OPERATOR, "'FR'"));
    assert_eq!(err("x NOT BETWEEN 1 AND 2"), syntax(7, "IN or EXISTS after NOT", "\"BETWEEN\""));
    assert_eq!(err("x IN 1"), syntax(6, "\"(\" to start a list of values", "\"1\""));
    assert_eq!(err("x IN ()"), syntax(7, "a value", "\")\""));
    assert_eq!(err("x IN (1 2)"), syntax(9, "\",\" or \")\"", "\"2\""));
    assert_eq!(err("x IN (1,)"), syntax(9, "a value", "\")\""));
    assert_eq!(err("x BETWEEN 1 OR 2"), syntax(13, "AND, as in BETWEEN low AND high", "\"OR\""));
    assert_eq!(err("IN 'x'"), syntax(4, "SEGMENT, as in IN SEGMENT \"name\"", "'x'"));
    assert_eq!(err("IN SEGMENT vip"), syntax(12, "a segment name in quotes", "\"vip\""));
    assert_eq!(err("a = 1 AND"), syntax(10, CONDITION, "end of query"));
    assert_eq!(err("a = 1 OR OR b = 1"), syntax(10, CONDITION, "\"OR\""));
}

#[test]
fn keyword_used_as_a_name_suggests_backticks() {
    assert_eq!(
        err("days > 3"),
        syntax(
            1,
            "a condition: a name, \"(\", NOT, DID, IN SEGMENT or ALL \
             (a keyword such as \"days\" is a name only in backticks: `days`)",
            "\"days\""
        )
    );
}

#[test]
fn long_tokens_are_shortened_in_errors() {
    let long = "x".repeat(100);
    let SegmentError::Syntax { found, .. } = err(&format!("a = 1 {long}")) else {
        panic!("not a syntax error");
    };
    assert_eq!(found, format!("\"{}…\"", "x".repeat(40)));
}

#[test]
fn nesting_is_limited() {
    let ok = format!("{}a = 1{}", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
    assert_eq!(p(&ok), eq("a", num(1.0)));
    let deep = format!("{}a = 1{}", "(".repeat(MAX_DEPTH + 1), ")".repeat(MAX_DEPTH + 1));
    assert_eq!(err(&deep).position(), Some(MAX_DEPTH + 1));
    let nots = format!("{}ALL", "NOT ".repeat(100_000));
    assert_eq!(err(&nots).position(), Some(4 * MAX_DEPTH + 1));
    let parens = "(".repeat(100_000);
    assert!(parse(&parens).is_err());
}

#[test]
fn errors_are_reported_in_text_order() {
    // The syntax error comes first; the malformed string after it is
    // never reached.
    assert_eq!(err(r#"x = = "unterminated"#), syntax(5, "a value", "\"=\""));
}

// ---- properties --------------------------------------------------------------

/// The position of an error, checked to lie within the text (or just after).
fn check_position(text: &str, result: &Result<Expr, SegmentError>) {
    if let Err(e) = result {
        let position = e.position().unwrap_or(0);
        let len = text.chars().count();
        assert!(
            (1..=len + 1).contains(&position),
            "{text:?}: position {position} out of 1..={}: {e}",
            len + 1
        );
    }
}

const SOUP: &[&str] = &[
    "AND",
    "OR",
    "NOT",
    "IN",
    "SEGMENT",
    "ALL",
    "DID",
    "WHERE",
    "AT",
    "LEAST",
    "MOST",
    "EXACTLY",
    "TIMES",
    "TIME",
    "LAST",
    "SINCE",
    "BETWEEN",
    "EXISTS",
    "CONTAINS",
    "TRUE",
    "FALSE",
    "NOW",
    "DAYS",
    "WEEK",
    "MONTH",
    "(",
    ")",
    ",",
    "=",
    "!=",
    "<",
    "<=",
    ">",
    ">=",
    "+",
    "-",
    "!",
    "x",
    "a.b",
    "`and`",
    "`",
    "\"e\"",
    "'x'",
    "\"2026-01-01T00:00:00Z\"",
    "\"",
    "'",
    "\\",
    "0",
    "-14",
    "1.5",
    "1e3",
    "007",
    "1.",
    "99999999999999999999",
    "é",
    "日本",
    "\"\\q\"",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_text_never_panics(text in "\\PC{0,60}") {
        let result = parse(&text);
        check_position(&text, &result);
        let result = parse_filter(&text);
        check_position(&text, &result);
    }

    #[test]
    fn random_ascii_never_panics(text in "[ -~\t\n]{0,60}") {
        let result = parse(&text);
        check_position(&text, &result);
    }

    #[test]
    fn token_soup_never_panics(
        words in proptest::collection::vec(proptest::sample::select(SOUP), 0..30),
        glue in proptest::sample::select(&[" ", "", "  "][..]),
    ) {
        let text = words.join(glue);
        let result = parse(&text);
        check_position(&text, &result);
        let result = parse_filter(&text);
        check_position(&text, &result);
    }

    #[test]
    fn printed_expressions_round_trip(expr in arb_expr(true)) {
        let text = print(&expr);
        let result = parse(&text).map(strip);
        prop_assert_eq!(result, Ok(expr), "text: {}", text);
    }
}

// ---- a printer and generator for the round-trip property -------------------

fn arb_name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z_][a-z0-9_.]{0,6}",
        "[^`]{1,8}",
        // Any text, backticks included (written twice in backticks).
        ".{1,8}",
        proptest::sample::select(&["and", "days", "Where", "now", "time", "month"][..])
            .prop_map(String::from),
    ]
}

fn arb_unit_ms() -> impl Strategy<Value = i64> {
    proptest::sample::select(&[MIN, HOUR, DAY, WEEK][..])
}

fn arb_offset() -> impl Strategy<Value = i64> {
    (0i64..10_000, arb_unit_ms(), any::<bool>()).prop_map(|(n, u, neg)| {
        let ms = n * u;
        if neg {
            -ms
        } else {
            ms
        }
    })
}

fn arb_literal() -> impl Strategy<Value = Literal> {
    prop_oneof![
        "\\PC{0,8}".prop_map(|v| s(&v)),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(num),
        (-1000i32..1000).prop_map(|n| num(f64::from(n))),
        any::<bool>().prop_map(boolean),
        arb_offset().prop_map(now),
    ]
}

fn arb_predicate() -> impl Strategy<Value = Expr> {
    let ops =
        proptest::sample::select(&[CmpOp::Eq, CmpOp::Ne, CmpOp::Lt, CmpOp::Le, CmpOp::Gt, CmpOp::Ge][..]);
    let test = prop_oneof![
        (ops, arb_literal()).prop_map(|(op, value)| Test::Compare { op, value }),
        (any::<bool>(), proptest::collection::vec(arb_literal(), 1..4))
            .prop_map(|(negated, values)| Test::In { negated, values }),
        (arb_literal(), arb_literal()).prop_map(|(low, high)| Test::Between { low, high }),
        any::<bool>().prop_map(|negated| Test::Exists { negated }),
        arb_literal().prop_map(|value| Test::Contains { value }),
    ];
    (arb_name(), test).prop_map(|(name, test)| pred(&name, test))
}

fn arb_time() -> impl Strategy<Value = TimeRef> {
    prop_oneof![
        // Whole milliseconds between 1970 and about 2100.
        (0i64..4_102_444_800_000).prop_map(TimeRef::At),
        arb_offset().prop_map(TimeRef::Now),
    ]
}

fn arb_behaviour() -> impl Strategy<Value = Expr> {
    let frequency = prop_oneof![
        any::<u32>().prop_map(Frequency::AtLeast),
        any::<u32>().prop_map(Frequency::AtMost),
        any::<u32>().prop_map(Frequency::Exactly),
    ];
    let window = prop_oneof![
        Just(Window::AllTime),
        (0i64..10_000, arb_unit_ms()).prop_map(|(n, u)| Window::Last(n * u)),
        arb_time().prop_map(Window::Since),
        (arb_time(), arb_time()).prop_map(|(a, b)| Window::Between(a, b)),
    ];
    ("\\PC{0,8}", proptest::option::of(arb_expr(false)), frequency, window)
        .prop_map(|(event, filter, frequency, window)| did(&event, filter, frequency, window))
}

/// An expression; with `segment`, behaviours, `IN SEGMENT` and `ALL` too.
fn arb_expr(segment: bool) -> BoxedStrategy<Expr> {
    let leaf = if segment {
        prop_oneof![
            4 => arb_predicate(),
            1 => Just(all()),
            1 => "\\PC{0,8}".prop_map(|n| seg(&n)),
            2 => arb_behaviour(),
        ]
        .boxed()
    } else {
        arb_predicate().boxed()
    };
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            inner.clone().prop_map(not),
            proptest::collection::vec(inner.clone(), 2..4).prop_map(and),
            proptest::collection::vec(inner, 2..4).prop_map(or),
        ]
    })
    .boxed()
}

fn print_str(v: &str) -> String {
    let mut out = String::from("\"");
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn print_offset(ms: i64) -> String {
    if ms == 0 {
        return "NOW".into();
    }
    let sign = if ms < 0 { "-" } else { "+" };
    let abs = ms.abs();
    let (n, unit) = [(WEEK, "WEEKS"), (DAY, "DAYS"), (HOUR, "HOURS"), (MIN, "MINUTES")]
        .into_iter()
        .find(|(u, _)| abs % u == 0)
        .map(|(u, name)| (abs / u, name))
        .unwrap_or((abs, "?"));
    format!("NOW {sign} {n} {unit}")
}

fn print_lit(l: &Literal) -> String {
    match &l.value {
        LitValue::Str(v) => print_str(v),
        LitValue::Num(n) => format!("{n}"),
        LitValue::Bool(b) => if *b { "TRUE" } else { "FALSE" }.into(),
        LitValue::Now { offset_ms } => print_offset(*offset_ms),
    }
}

fn print_time(t: &TimeRef) -> String {
    match t {
        TimeRef::At(ms) => chrono::DateTime::from_timestamp_millis(*ms)
            .map(|d| print_str(&d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)))
            .unwrap_or_default(),
        TimeRef::Now(ms) => print_offset(*ms),
    }
}

/// Prints an expression with every operand in parentheses.
fn print(e: &Expr) -> String {
    let join =
        |v: &[Expr], op: &str| v.iter().map(|e| format!("({})", print(e))).collect::<Vec<_>>().join(op);
    match e {
        Expr::All(_) => "ALL".into(),
        Expr::Not(inner, _) => format!("NOT ({})", print(inner)),
        Expr::And(v) => join(v, " AND "),
        Expr::Or(v) => join(v, " OR "),
        Expr::InSegment { name, .. } => format!("IN SEGMENT {}", print_str(name)),
        Expr::Predicate(pr) => {
            let name = format!("`{}`", pr.name.text.replace('`', "``"));
            match &pr.test {
                Test::Compare { op, value } => format!("{name} {op} {}", print_lit(value)),
                Test::In { negated, values } => format!(
                    "{name} {}IN ({})",
                    if *negated { "NOT " } else { "" },
                    values.iter().map(print_lit).collect::<Vec<_>>().join(", ")
                ),
                Test::Between { low, high } => {
                    format!("{name} BETWEEN {} AND {}", print_lit(low), print_lit(high))
                }
                Test::Exists { negated } => {
                    format!("{name} {}EXISTS", if *negated { "NOT " } else { "" })
                }
                Test::Contains { value } => format!("{name} CONTAINS {}", print_lit(value)),
            }
        }
        Expr::Did(b) => {
            let mut out = format!("DID {}", print_str(&b.event));
            if let Some(f) = &b.filter {
                out.push_str(&format!(" WHERE ({})", print(f)));
            }
            out.push_str(&match b.frequency {
                Frequency::AtLeast(n) => format!(" AT LEAST {n} TIMES"),
                Frequency::AtMost(n) => format!(" AT MOST {n} TIMES"),
                Frequency::Exactly(n) => format!(" EXACTLY {n} TIMES"),
            });
            match &b.window {
                Window::AllTime => {}
                Window::Last(ms) => out.push_str(&format!(" IN LAST {} MINUTES", ms / MIN)),
                Window::Since(t) => out.push_str(&format!(" SINCE {}", print_time(t))),
                Window::Between(a, z) => {
                    out.push_str(&format!(" BETWEEN {} AND {}", print_time(a), print_time(z)))
                }
            }
            out
        }
    }
}
