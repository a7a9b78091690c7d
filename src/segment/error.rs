//! Errors of the segment language: syntax errors from the lexer and parser,
//! and check errors from typing an expression against a schema.
//!
//! Every variant carries the 1-based character position of the offending
//! text, so that a campaign engine can point at it. A query error is never
//! turned into an empty result.
//!
//! A message stays short whatever the query: names and values an error
//! repeats are cut to [`MAX_QUOTED_CHARS`] characters, and [`excerpt`]
//! quotes at most [`MAX_EXCERPT_CHARS`] characters of the query around the
//! position. A gRPC reply carries its message in a header, and clients
//! refuse headers of more than a few KiB (a whole 20 KB query made the
//! reply unreadable).

use std::borrow::Cow;

use thiserror::Error;

/// Most characters of a name or value that an error message repeats.
pub const MAX_QUOTED_CHARS: usize = 80;

/// Most characters of a query that [`excerpt`] quotes.
pub const MAX_EXCERPT_CHARS: usize = 200;

/// Most characters of the explanation an [`SegmentError::Invalid`] carries
/// (which may repeat a token).
const MAX_MESSAGE_CHARS: usize = 240;

/// `text`, cut to `max` characters with an ellipsis.
fn cut(text: &str, max: usize) -> Cow<'_, str> {
    match text.char_indices().nth(max) {
        None => Cow::Borrowed(text),
        Some((at, _)) => Cow::Owned(format!("{}…", &text[..at])),
    }
}

/// `text`, cut to [`MAX_QUOTED_CHARS`] characters with an ellipsis.
pub fn shorten(text: &str) -> Cow<'_, str> {
    cut(text, MAX_QUOTED_CHARS)
}

/// The query `text` quoted for an error message about the 1-based character
/// `position`: the whole text when it has at most [`MAX_EXCERPT_CHARS`]
/// characters (`"country = "`), otherwise a window of that many characters
/// around the position, with `…` where text was left out and the range it
/// covers (`"…= 1 AND …" (characters 1001-1200 of 20000)`). With no
/// position the window is the start of the text.
pub fn excerpt(text: &str, position: Option<usize>) -> String {
    let total = text.chars().count();
    if total <= MAX_EXCERPT_CHARS {
        return format!("{text:?}");
    }
    // A window of MAX_EXCERPT_CHARS characters, the position a quarter of
    // the way in (what led up to it matters less than what follows), kept
    // inside the text.
    let at = position.unwrap_or(1).clamp(1, total) - 1;
    let first = at.saturating_sub(MAX_EXCERPT_CHARS / 4).min(total - MAX_EXCERPT_CHARS);
    let last = first + MAX_EXCERPT_CHARS;
    let window: String = text.chars().skip(first).take(MAX_EXCERPT_CHARS).collect();
    let before = if first > 0 { "…" } else { "" };
    let after = if last < total { "…" } else { "" };
    format!("\"{before}{}{after}\" (characters {}-{last} of {total})", window.escape_debug(), first + 1)
}

/// A segment that cannot be parsed or checked.
#[derive(Clone, Debug, PartialEq, Error)]
pub enum SegmentError {
    /// The text does not follow the grammar.
    #[error("syntax error at position {position}: expected {expected}, found {}", shorten(found))]
    Syntax {
        /// 1-based character position.
        position: usize,
        /// What the grammar allows here, in words (`a value`, `")"`).
        expected: String,
        /// What stands there (`"AND"`, `end of query`).
        found: String,
    },
    /// A token is malformed (bad escape, unterminated string, bad number,
    /// bad timestamp, a unit of no fixed length, an out-of-range integer).
    #[error("invalid query at position {position}: {}", cut(message, MAX_MESSAGE_CHARS))]
    Invalid {
        /// 1-based character position.
        position: usize,
        /// What is wrong.
        message: String,
    },
    /// A name the schema does not know.
    #[error("unknown {} `{}` at position {position}", shorten(what), shorten(name))]
    UnknownName {
        /// 1-based character position.
        position: usize,
        /// The name as written.
        name: String,
        /// `trait` or `property of event "x"`.
        what: String,
    },
    /// A literal of the wrong type for the trait or property.
    #[error(
        "type mismatch at position {position}: `{}` is {expected}, but the value is {}",
        shorten(name),
        shorten(found)
    )]
    TypeMismatch {
        /// 1-based character position of the literal.
        position: usize,
        /// The trait or property.
        name: String,
        /// The trait's type, in words.
        expected: String,
        /// The literal, in words.
        found: String,
    },
    /// An operator that the trait's type does not support.
    #[error(
        "unsupported operator at position {position}: `{}` is {ty}, which does not support {}",
        shorten(name),
        shorten(op)
    )]
    UnsupportedOperator {
        /// 1-based character position of the predicate.
        position: usize,
        /// The trait or property.
        name: String,
        /// The trait's type, in words.
        ty: String,
        /// The operator, as written (`>`, `CONTAINS`).
        op: String,
    },
    /// `IN SEGMENT "x"` names no saved segment.
    #[error("unknown segment \"{}\" at position {position}", shorten(name))]
    UnknownSegment {
        /// 1-based character position.
        position: usize,
        /// The segment's name.
        name: String,
    },
    /// A saved segment refers to itself, directly or through others.
    #[error("segment cycle: {}", cycle(path))]
    SegmentCycle {
        /// The chain of names, first and last equal.
        path: Vec<String>,
    },
    /// The compiled condition has more distinct nodes than allowed.
    #[error(
        "the segment is too large: it compiles to {nodes} distinct condition nodes (each saved segment \
         it uses counted once), at most {max} are allowed"
    )]
    TooLarge {
        /// Its distinct nodes.
        nodes: usize,
        /// The bound, [`MAX_COMPILED_NODES`](crate::segment::MAX_COMPILED_NODES).
        max: usize,
    },
    /// The condition nests deeper than allowed, through saved segments.
    #[error(
        "the segment is nested too deeply: more than {max} levels (each NOT, AND, OR, DID, predicate \
         and IN SEGMENT is a level, through saved segments)"
    )]
    TooDeep {
        /// The bound, [`MAX_COMPILED_DEPTH`](crate::segment::MAX_COMPILED_DEPTH).
        max: usize,
    },
    /// A saved segment's stored text no longer parses or checks.
    #[error("saved segment \"{}\" is invalid: {source}", shorten(name))]
    InSavedSegment {
        /// The segment's name.
        name: String,
        /// What is wrong inside it.
        source: Box<SegmentError>,
    },
}

/// A cycle's chain of names for a message: each name shortened, and at most
/// the first and last four names of a long chain.
fn cycle(path: &[String]) -> String {
    const ENDS: usize = 4;
    let names: Vec<Cow<'_, str>> = path.iter().map(|n| shorten(n)).collect();
    if names.len() <= 2 * ENDS + 1 {
        return names.join(" -> ");
    }
    format!(
        "{} -> … ({} more) … -> {}",
        names[..ENDS].join(" -> "),
        names.len() - 2 * ENDS,
        names[names.len() - ENDS..].join(" -> ")
    )
}

impl SegmentError {
    /// The 1-based position the error points at, if it has one.
    pub fn position(&self) -> Option<usize> {
        match self {
            SegmentError::Syntax { position, .. }
            | SegmentError::Invalid { position, .. }
            | SegmentError::UnknownName { position, .. }
            | SegmentError::TypeMismatch { position, .. }
            | SegmentError::UnsupportedOperator { position, .. }
            | SegmentError::UnknownSegment { position, .. } => Some(*position),
            SegmentError::SegmentCycle { .. }
            | SegmentError::InSavedSegment { .. }
            | SegmentError::TooLarge { .. }
            | SegmentError::TooDeep { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_query_is_quoted_whole() {
        assert_eq!(excerpt("country = ", Some(11)), "\"country = \"");
        let at_limit = "x".repeat(MAX_EXCERPT_CHARS);
        assert_eq!(excerpt(&at_limit, Some(1)), format!("{at_limit:?}"));
    }

    #[test]
    fn a_long_query_is_quoted_around_the_position() {
        let text = format!("{}country = {}", "a ".repeat(5_000), "b ".repeat(5_000));
        let at = 10_001;
        let quoted = excerpt(&text, Some(at));
        assert!(quoted.chars().count() < MAX_EXCERPT_CHARS + 60, "{quoted}");
        assert!(quoted.contains("country = "), "{quoted}");
        assert!(
            quoted.starts_with("\"…") && quoted.contains("…\" (characters 9951-10150 of 20010)"),
            "{quoted}"
        );
        // At either end the window stays inside the text.
        assert!(excerpt(&text, Some(1)).contains("(characters 1-200 of 20010)"));
        assert!(excerpt(&text, Some(20_011)).contains("(characters 19811-20010 of 20010)"));
        assert!(excerpt(&text, None).contains("(characters 1-200 of 20010)"));
        // Multi-byte characters are counted as characters, never split.
        let wide = "é".repeat(1_000);
        assert!(excerpt(&wide, Some(500)).contains("(characters 450-649 of 1000)"));
    }

    #[test]
    fn names_and_values_in_a_message_are_cut() {
        let long = "n".repeat(10_000);
        let e = SegmentError::UnknownName { position: 3, name: long.clone(), what: "trait".into() };
        let text = e.to_string();
        assert!(text.len() < 200 && text.contains("n…` at position 3"), "{text}");
        let e = SegmentError::SegmentCycle { path: (0..1000).map(|i| format!("s{i}")).collect() };
        let text = e.to_string();
        assert!(text.len() < 200 && text.contains("(992 more)"), "{text}");
        let e = SegmentError::Invalid { position: 1, message: long };
        assert!(e.to_string().len() < 400);
    }
}
