//! The lexer of the segment language: it cuts query text into tokens.
//!
//! The parser pulls tokens one at a time with [`Lexer::next_token`], so a
//! malformed token is only reported when the parser reaches it and errors
//! always come in the order of the text. Every token carries its [`Span`] in
//! characters (not bytes) and the text exactly as written, which the parser
//! quotes back in syntax errors.
//!
//! Keywords are case-insensitive and reserved: a bare word that spells a
//! keyword (including the units `MINUTE[S]`, `HOUR[S]`, `DAY[S]`, `WEEK[S]`
//! and `TIMES`) is never a name; such a name must be written in backticks.
//! Inside backticks a backtick is written twice (`` `a``b` `` is the name
//! ``a`b``), so every name but the empty one can be written.
//! The lexer reports malformed tokens (an unterminated or badly escaped
//! string, an unterminated or empty backticked name, a number that is not a
//! JSON number) as [`SegmentError::Invalid`]. A character that starts no
//! token at all becomes a [`TokenKind::Unknown`] token, so that the parser
//! can say what it expected in its place. The lexer never panics, whatever
//! the input.

use super::ast::{CmpOp, Span, Unit};
use super::error::SegmentError;

/// A reserved word of the language. Keywords are matched case-insensitively.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keyword {
    /// `AND`
    And,
    /// `OR`
    Or,
    /// `NOT`
    Not,
    /// `IN`
    In,
    /// `SEGMENT`
    Segment,
    /// `ALL`
    All,
    /// `DID`
    Did,
    /// `WHERE`
    Where,
    /// `AT`
    At,
    /// `LEAST`
    Least,
    /// `MOST`
    Most,
    /// `EXACTLY`
    Exactly,
    /// `TIMES`
    Times,
    /// `LAST`
    Last,
    /// `SINCE`
    Since,
    /// `BETWEEN`
    Between,
    /// `EXISTS`
    Exists,
    /// `CONTAINS`
    Contains,
    /// `TRUE`
    True,
    /// `FALSE`
    False,
    /// `NOW`
    Now,
    /// A time unit, singular or plural: `MINUTE[S]`, `HOUR[S]`, `DAY[S]`,
    /// `WEEK[S]`.
    Unit(Unit),
}

/// Every keyword spelling, upper case, with its meaning.
const KEYWORDS: &[(&str, Keyword)] = &[
    ("AND", Keyword::And),
    ("OR", Keyword::Or),
    ("NOT", Keyword::Not),
    ("IN", Keyword::In),
    ("SEGMENT", Keyword::Segment),
    ("ALL", Keyword::All),
    ("DID", Keyword::Did),
    ("WHERE", Keyword::Where),
    ("AT", Keyword::At),
    ("LEAST", Keyword::Least),
    ("MOST", Keyword::Most),
    ("EXACTLY", Keyword::Exactly),
    ("TIMES", Keyword::Times),
    ("LAST", Keyword::Last),
    ("SINCE", Keyword::Since),
    ("BETWEEN", Keyword::Between),
    ("EXISTS", Keyword::Exists),
    ("CONTAINS", Keyword::Contains),
    ("TRUE", Keyword::True),
    ("FALSE", Keyword::False),
    ("NOW", Keyword::Now),
    ("MINUTE", Keyword::Unit(Unit::Minute)),
    ("MINUTES", Keyword::Unit(Unit::Minute)),
    ("HOUR", Keyword::Unit(Unit::Hour)),
    ("HOURS", Keyword::Unit(Unit::Hour)),
    ("DAY", Keyword::Unit(Unit::Day)),
    ("DAYS", Keyword::Unit(Unit::Day)),
    ("WEEK", Keyword::Unit(Unit::Week)),
    ("WEEKS", Keyword::Unit(Unit::Week)),
];

impl Keyword {
    /// The keyword spelled by `word`, ignoring ASCII case, if any.
    pub fn from_word(word: &str) -> Option<Keyword> {
        KEYWORDS.iter().find(|(spelling, _)| spelling.eq_ignore_ascii_case(word)).map(|&(_, keyword)| keyword)
    }
}

/// What a token is.
#[derive(Clone, Debug, PartialEq)]
pub enum TokenKind {
    /// A name: a bare word that is not a keyword, or any text in backticks.
    Name {
        /// The name, without backticks.
        text: String,
        /// True when written in backticks.
        quoted: bool,
    },
    /// A keyword.
    Keyword(Keyword),
    /// A quoted string, escapes resolved.
    Str(String),
    /// A JSON number, possibly negative (`-` directly followed by a digit
    /// is part of the number). The token's text keeps the digits as written.
    Number(f64),
    /// A comparison operator.
    Op(CmpOp),
    /// `(`
    LParen,
    /// `)`
    RParen,
    /// `,`
    Comma,
    /// `+`
    Plus,
    /// `-` not directly followed by a digit.
    Minus,
    /// A character that starts no token, such as `@` or a lone `!`.
    Unknown(char),
    /// The end of the text.
    End,
}

/// One token of the query text.
#[derive(Clone, Debug, PartialEq)]
pub struct Token {
    /// What the token is.
    pub kind: TokenKind,
    /// Where it stands, in characters.
    pub span: Span,
    /// The token exactly as written (empty for [`TokenKind::End`]).
    pub text: String,
}

/// A lexer over one query text, producing tokens on demand.
#[derive(Clone, Debug)]
pub struct Lexer {
    chars: Vec<char>,
    pos: usize,
}

impl Lexer {
    /// A lexer positioned at the start of `text`.
    pub fn new(text: &str) -> Self {
        Lexer { chars: text.chars().collect(), pos: 0 }
    }

    /// The length of the text in characters.
    pub fn len_chars(&self) -> usize {
        self.chars.len()
    }

    /// The next token. At the end of the text this returns a
    /// [`TokenKind::End`] token, again on every further call.
    pub fn next_token(&mut self) -> Result<Token, SegmentError> {
        while self.peek(0).is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
        let start = self.pos;
        let Some(c) = self.peek(0) else {
            return Ok(Token { kind: TokenKind::End, span: Span::new(start, start), text: String::new() });
        };
        let kind = match c {
            '(' => self.single(TokenKind::LParen),
            ')' => self.single(TokenKind::RParen),
            ',' => self.single(TokenKind::Comma),
            '+' => self.single(TokenKind::Plus),
            '=' => self.single(TokenKind::Op(CmpOp::Eq)),
            '!' if self.peek(1) == Some('=') => self.double(TokenKind::Op(CmpOp::Ne)),
            '<' if self.peek(1) == Some('=') => self.double(TokenKind::Op(CmpOp::Le)),
            '<' => self.single(TokenKind::Op(CmpOp::Lt)),
            '>' if self.peek(1) == Some('=') => self.double(TokenKind::Op(CmpOp::Ge)),
            '>' => self.single(TokenKind::Op(CmpOp::Gt)),
            '-' if self.peek(1).is_some_and(|d| d.is_ascii_digit()) => self.number()?,
            '-' => self.single(TokenKind::Minus),
            '0'..='9' => self.number()?,
            '"' | '\'' => self.string(c)?,
            '`' => self.backticked()?,
            c if c.is_ascii_alphabetic() || c == '_' => self.word(),
            other => self.single(TokenKind::Unknown(other)),
        };
        Ok(Token { kind, span: Span::new(start, self.pos), text: self.text(start, self.pos) })
    }

    /// The character `ahead` places after the current one, if any.
    fn peek(&self, ahead: usize) -> Option<char> {
        self.chars.get(self.pos + ahead).copied()
    }

    /// The text between two character positions.
    fn text(&self, start: usize, end: usize) -> String {
        self.chars.get(start..end).unwrap_or_default().iter().collect()
    }

    /// Consumes one character and returns `kind`.
    fn single(&mut self, kind: TokenKind) -> TokenKind {
        self.pos += 1;
        kind
    }

    /// Consumes two characters and returns `kind`.
    fn double(&mut self, kind: TokenKind) -> TokenKind {
        self.pos += 2;
        kind
    }

    /// Consumes ASCII digits and returns how many there were.
    fn digits(&mut self) -> usize {
        let start = self.pos;
        while self.peek(0).is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
        }
        self.pos - start
    }

    /// A bare word: a keyword or a name.
    fn word(&mut self) -> TokenKind {
        let start = self.pos;
        while self.peek(0).is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.') {
            self.pos += 1;
        }
        let text = self.text(start, self.pos);
        match Keyword::from_word(&text) {
            Some(keyword) => TokenKind::Keyword(keyword),
            None => TokenKind::Name { text, quoted: false },
        }
    }

    /// A JSON number: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
    fn number(&mut self) -> Result<TokenKind, SegmentError> {
        let start = self.pos;
        if self.peek(0) == Some('-') {
            self.pos += 1;
        }
        let int_start = self.pos;
        let int_digits = self.digits();
        if int_digits > 1 && self.chars.get(int_start) == Some(&'0') {
            return Err(invalid(
                int_start,
                format!(
                    "`{}` is not a valid number: a number cannot start with 0 unless it is 0",
                    self.text(start, self.pos)
                ),
            ));
        }
        if self.peek(0) == Some('.') {
            self.pos += 1;
            if self.digits() == 0 {
                return Err(invalid(
                    self.pos - 1,
                    format!(
                        "`{}` is not a valid number: a decimal point must be followed by a digit",
                        self.text(start, self.pos)
                    ),
                ));
            }
        }
        if matches!(self.peek(0), Some('e' | 'E')) {
            let e_pos = self.pos;
            self.pos += 1;
            if matches!(self.peek(0), Some('+' | '-')) {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return Err(invalid(
                    e_pos,
                    format!(
                        "`{}` is not a valid number: an exponent must be followed by digits",
                        self.text(start, self.pos)
                    ),
                ));
            }
        }
        let text = self.text(start, self.pos);
        match text.parse::<f64>() {
            Ok(value) if value.is_finite() => Ok(TokenKind::Number(value)),
            _ => Err(invalid(start, format!("`{text}` is out of the range of numbers"))),
        }
    }

    /// A string in `quote` (`"` or `'`), with escapes resolved.
    fn string(&mut self, quote: char) -> Result<TokenKind, SegmentError> {
        let start = self.pos;
        self.pos += 1;
        let mut value = String::new();
        loop {
            let Some(c) = self.peek(0) else {
                return Err(invalid(start, format!("unterminated string: the {quote} here is never closed")));
            };
            self.pos += 1;
            if c == quote {
                return Ok(TokenKind::Str(value));
            }
            if c != '\\' {
                value.push(c);
                continue;
            }
            let escaped = match self.peek(0) {
                Some('"') => '"',
                Some('\'') => '\'',
                Some('\\') => '\\',
                Some('n') => '\n',
                Some('t') => '\t',
                Some(other) => {
                    return Err(invalid(
                        self.pos - 1,
                        format!(
                            "unknown escape `\\{other}` in a string: \
                             only \\\", \\', \\\\, \\n and \\t are allowed"
                        ),
                    ))
                }
                None => {
                    return Err(invalid(
                        start,
                        format!("unterminated string: the {quote} here is never closed"),
                    ))
                }
            };
            self.pos += 1;
            value.push(escaped);
        }
    }

    /// A name in backticks: any text up to the next single backtick, where
    /// a doubled backtick stands for one backtick of the name (as SQL
    /// doubles a quote inside a quoted identifier), so that every
    /// non-empty name can be written.
    fn backticked(&mut self) -> Result<TokenKind, SegmentError> {
        let start = self.pos;
        self.pos += 1;
        let mut text = String::new();
        loop {
            match (self.peek(0), self.peek(1)) {
                (None, _) => {
                    return Err(invalid(start, "unterminated name: the ` here is never closed".to_string()))
                }
                (Some('`'), Some('`')) => {
                    text.push('`');
                    self.pos += 2;
                }
                (Some('`'), _) => break,
                (Some(c), _) => {
                    text.push(c);
                    self.pos += 1;
                }
            }
        }
        self.pos += 1;
        if text.is_empty() {
            return Err(invalid(start, "empty name: `` names nothing".to_string()));
        }
        Ok(TokenKind::Name { text, quoted: true })
    }
}

/// Every token of `text`, ending with one [`TokenKind::End`] token, or the
/// first malformed token's error.
pub fn tokenize(text: &str) -> Result<Vec<Token>, SegmentError> {
    let mut lexer = Lexer::new(text);
    let mut tokens = Vec::new();
    loop {
        let token = lexer.next_token()?;
        let end = token.kind == TokenKind::End;
        tokens.push(token);
        if end {
            return Ok(tokens);
        }
    }
}

/// An [`SegmentError::Invalid`] at the 0-based character index `index`.
fn invalid(index: usize, message: String) -> SegmentError {
    SegmentError::Invalid { position: index + 1, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(text: &str) -> Vec<TokenKind> {
        match tokenize(text) {
            Ok(tokens) => tokens.into_iter().map(|t| t.kind).collect(),
            Err(e) => panic!("{text:?} did not lex: {e}"),
        }
    }

    fn lex_error(text: &str) -> SegmentError {
        match tokenize(text) {
            Ok(tokens) => panic!("{text:?} lexed: {tokens:?}"),
            Err(e) => e,
        }
    }

    fn name(text: &str, quoted: bool) -> TokenKind {
        TokenKind::Name { text: text.to_string(), quoted }
    }

    #[test]
    fn operators_and_punctuation() {
        assert_eq!(
            kinds("= != < <= > >= ( ) , + -"),
            vec![
                TokenKind::Op(CmpOp::Eq),
                TokenKind::Op(CmpOp::Ne),
                TokenKind::Op(CmpOp::Lt),
                TokenKind::Op(CmpOp::Le),
                TokenKind::Op(CmpOp::Gt),
                TokenKind::Op(CmpOp::Ge),
                TokenKind::LParen,
                TokenKind::RParen,
                TokenKind::Comma,
                TokenKind::Plus,
                TokenKind::Minus,
                TokenKind::End,
            ]
        );
        assert_eq!(
            kinds("a>=1"),
            vec![name("a", false), TokenKind::Op(CmpOp::Ge), TokenKind::Number(1.0), TokenKind::End]
        );
    }

    #[test]
    fn keywords_are_case_insensitive_and_names_are_not_keywords() {
        assert_eq!(
            kinds("and And AND days Week"),
            vec![
                TokenKind::Keyword(Keyword::And),
                TokenKind::Keyword(Keyword::And),
                TokenKind::Keyword(Keyword::And),
                TokenKind::Keyword(Keyword::Unit(Unit::Day)),
                TokenKind::Keyword(Keyword::Unit(Unit::Week)),
                TokenKind::End,
            ]
        );
        assert_eq!(
            kinds("android _x a.b.c `and` `two words`"),
            vec![
                name("android", false),
                name("_x", false),
                name("a.b.c", false),
                name("and", true),
                name("two words", true),
                TokenKind::End,
            ]
        );
    }

    #[test]
    fn numbers() {
        assert_eq!(
            kinds("0 -0 12 -3.5 1e3 2.5E-2 -1e+2"),
            vec![
                TokenKind::Number(0.0),
                TokenKind::Number(-0.0),
                TokenKind::Number(12.0),
                TokenKind::Number(-3.5),
                TokenKind::Number(1000.0),
                TokenKind::Number(0.025),
                TokenKind::Number(-100.0),
                TokenKind::End,
            ]
        );
        // A minus sign not followed by a digit is its own token.
        assert_eq!(kinds("- 14"), vec![TokenKind::Minus, TokenKind::Number(14.0), TokenKind::End]);
        // A number may be directly followed by a word.
        assert_eq!(
            kinds("14DAYS"),
            vec![TokenKind::Number(14.0), TokenKind::Keyword(Keyword::Unit(Unit::Day)), TokenKind::End]
        );
    }

    #[test]
    fn bad_numbers() {
        let e = lex_error("x = 012");
        assert_eq!(e.position(), Some(5));
        assert!(e.to_string().contains("cannot start with 0"), "{e}");
        let e = lex_error("x = 1.");
        assert_eq!(e.position(), Some(6));
        assert!(e.to_string().contains("decimal point"), "{e}");
        let e = lex_error("x = 1e+");
        assert_eq!(e.position(), Some(6));
        assert!(e.to_string().contains("exponent"), "{e}");
        let e = lex_error("x = 1e999");
        assert_eq!(e.position(), Some(5));
        assert!(e.to_string().contains("out of the range"), "{e}");
    }

    #[test]
    fn strings_and_escapes() {
        assert_eq!(
            kinds(r#""a\"b" 'c\'d' "\\" "\n\t" 'say "hi"' "it's""#),
            vec![
                TokenKind::Str("a\"b".into()),
                TokenKind::Str("c'd".into()),
                TokenKind::Str("\\".into()),
                TokenKind::Str("\n\t".into()),
                TokenKind::Str("say \"hi\"".into()),
                TokenKind::Str("it's".into()),
                TokenKind::End,
            ]
        );
    }

    #[test]
    fn spans_and_text_count_characters() {
        let tokens = match tokenize("ville = \"Zürich\" é") {
            Ok(t) => t,
            Err(e) => panic!("{e}"),
        };
        let spans: Vec<(usize, usize, &str)> =
            tokens.iter().map(|t| (t.span.start, t.span.end, t.text.as_str())).collect();
        assert_eq!(
            spans,
            vec![(0, 5, "ville"), (6, 7, "="), (8, 16, "\"Zürich\""), (17, 18, "é"), (18, 18, ""),]
        );
        assert_eq!(tokens.get(3).map(|t| &t.kind), Some(&TokenKind::Unknown('é')));
    }

    #[test]
    fn malformed_strings_and_names() {
        assert_eq!(
            lex_error("x = \"abc"),
            SegmentError::Invalid {
                position: 5,
                message: "unterminated string: the \" here is never closed".into()
            }
        );
        assert_eq!(
            lex_error("x = 'abc\\"),
            SegmentError::Invalid {
                position: 5,
                message: "unterminated string: the ' here is never closed".into()
            }
        );
        assert_eq!(
            lex_error("x = \"a\\qb\""),
            SegmentError::Invalid {
                position: 7,
                message: "unknown escape `\\q` in a string: only \\\", \\', \\\\, \\n and \\t \
                          are allowed"
                    .into()
            }
        );
        assert_eq!(lex_error("`abc").position(), Some(1));
        assert_eq!(lex_error("a = 1 AND `` = 2").position(), Some(11));
    }

    #[test]
    fn end_repeats() {
        let mut lexer = Lexer::new("  ");
        for _ in 0..3 {
            assert_eq!(lexer.next_token().map(|t| (t.kind, t.span)), Ok((TokenKind::End, Span::new(2, 2))));
        }
        assert_eq!(lexer.len_chars(), 2);
    }
}
