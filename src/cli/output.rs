//! What the CLI prints: aligned tables and key/value blocks for people,
//! JSON for programs (`--json`), and the small formatters they share
//! (counts with thousands separators, bytes, durations, JSON cells).
//!
//! Everything goes through [`Out`], which writes to standard output and
//! turns a closed pipe (`cohort members ... | head`) into a quiet stop rather
//! than the panic that `println!` would give.

#![allow(clippy::print_stdout)]

use std::fmt::Write as _;
use std::io::Write as _;

use serde_json::Value as Json;

/// How a column's cells line up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    /// Text: padded on the right.
    Left,
    /// Numbers: padded on the left, so that digits line up.
    Right,
}

/// One column of a [`Table`]: its header and alignment.
#[derive(Clone, Debug)]
pub struct Column {
    /// The header, printed in the first line.
    pub header: String,
    /// How the header and the cells line up.
    pub align: Align,
}

impl Column {
    /// A left-aligned text column.
    pub fn text(header: &str) -> Column {
        Column { header: header.to_string(), align: Align::Left }
    }

    /// A right-aligned number column.
    pub fn num(header: &str) -> Column {
        Column { header: header.to_string(), align: Align::Right }
    }
}

/// A table of text cells, printed with each column as wide as its widest
/// cell and two spaces between columns.
///
/// Widths count characters, not terminal cells: wide (CJK) characters and
/// combining marks may shift a row, which is the price of printing tables
/// without a Unicode width dependency. Control characters in cells are
/// escaped (`\n`, `\t`, `\u{1b}`) so that one value cannot break the layout.
#[derive(Clone, Debug)]
pub struct Table {
    columns: Vec<Column>,
    rows: Vec<Vec<String>>,
}

/// Spaces between two columns.
const GAP: usize = 2;

impl Table {
    /// An empty table with these columns.
    pub fn new(columns: Vec<Column>) -> Table {
        Table { columns, rows: Vec::new() }
    }

    /// Appends a row. Missing cells print empty; extra cells are dropped
    /// (a programming error, caught in debug builds).
    pub fn push(&mut self, row: Vec<String>) {
        debug_assert!(row.len() <= self.columns.len(), "a row has more cells than the table has columns");
        let mut row: Vec<String> = row.into_iter().take(self.columns.len()).map(|c| sanitize(&c)).collect();
        row.resize(self.columns.len(), String::new());
        self.rows.push(row);
    }

    /// Rows held so far.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// True when no row was pushed.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Drops the rows, keeping the columns (for printing page by page).
    pub fn clear(&mut self) {
        self.rows.clear();
    }

    /// The width of each column: its widest cell or header, in characters.
    pub fn widths(&self) -> Vec<usize> {
        self.columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let cells = self.rows.iter().map(|r| r[i].chars().count());
                cells.chain(std::iter::once(c.header.chars().count())).max().unwrap_or(0)
            })
            .collect()
    }

    /// The header line and every row, each ending with a newline.
    pub fn render(&self) -> String {
        self.render_with(&self.widths(), true)
    }

    /// Renders with given widths (at least the columns' own: a wider cell
    /// widens its column), with or without the header line. Printing a long
    /// stream page by page keeps the first page's widths this way.
    pub fn render_with(&self, widths: &[usize], header: bool) -> String {
        let own = self.widths();
        let widths: Vec<usize> =
            own.iter().enumerate().map(|(i, w)| (*w).max(widths.get(i).copied().unwrap_or(0))).collect();
        let mut out = String::new();
        if header {
            let cells: Vec<&str> = self.columns.iter().map(|c| c.header.as_str()).collect();
            self.render_line(&mut out, &cells, &widths);
        }
        for row in &self.rows {
            let cells: Vec<&str> = row.iter().map(String::as_str).collect();
            self.render_line(&mut out, &cells, &widths);
        }
        out
    }

    fn render_line(&self, out: &mut String, cells: &[&str], widths: &[usize]) {
        let mut line = String::new();
        for (i, (cell, column)) in cells.iter().zip(&self.columns).enumerate() {
            if i > 0 {
                line.push_str(&" ".repeat(GAP));
            }
            let pad = widths[i].saturating_sub(cell.chars().count());
            match column.align {
                Align::Left => {
                    line.push_str(cell);
                    line.push_str(&" ".repeat(pad));
                }
                Align::Right => {
                    line.push_str(&" ".repeat(pad));
                    line.push_str(cell);
                }
            }
        }
        // A left-aligned last column would leave trailing spaces.
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

/// Escapes control characters so that a cell stays on one line.
fn sanitize(cell: &str) -> String {
    if !cell.chars().any(char::is_control) {
        return cell.to_string();
    }
    let mut out = String::with_capacity(cell.len() + 8);
    for c in cell.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// Label/value lines with the values lined up:
///
/// ```text
/// node      1
/// version   0.1.0
/// ```
pub fn key_values(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.chars().count()).max().unwrap_or(0);
    let mut out = String::new();
    for (k, v) in pairs {
        let line = format!("{k:<width$}  {}", sanitize(v));
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A count with thousands separators: `1,234,567`.
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `part` as a percentage of `whole` with one decimal (`12.5%`), or `-`
/// when `whole` is zero.
pub fn share(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "-".to_string();
    }
    format!("{:.1}%", part as f64 * 100.0 / whole as f64)
}

/// Bytes in binary units: `512 B`, `1.5 KiB`, `3.2 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A duration for people: `850 ms`, `12 s`, `5m 3s`, `2h 14m`, `3d 4h`.
pub fn duration_ms(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0 => format!("{ms} ms"),
        1..=59 => format!("{s} s"),
        60..=3_599 => format!("{}m {}s", s / 60, s % 60),
        3_600..=86_399 => format!("{}h {}m", s / 3_600, s % 3_600 / 60),
        _ => format!("{}d {}h", s / 86_400, s % 86_400 / 3_600),
    }
}

/// A short elapsed time with sub-millisecond precision: `0.42 ms`, `12.3 ms`, `1.52 s`.
pub fn elapsed(d: std::time::Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else if ms < 1_000.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{:.2} s", ms / 1e3)
    }
}

/// A value that travels as JSON text (a trait value, a breakdown value),
/// shown to people: strings without their quotes, lists of strings joined
/// by commas, anything else as compact JSON; text that is not JSON as is.
pub fn json_cell(text: &str) -> String {
    match serde_json::from_str::<Json>(text).map(tidy) {
        Ok(Json::String(s)) => s,
        Ok(Json::Array(items)) if items.iter().all(Json::is_string) => {
            items.iter().filter_map(Json::as_str).collect::<Vec<_>>().join(", ")
        }
        Ok(other) => other.to_string(),
        Err(_) => text.to_string(),
    }
}

/// Whole numbers without their `.0`, recursively: the node stores numbers
/// as floats and sends `31.0` for an age of 31, which reads oddly in a table.
fn tidy(value: Json) -> Json {
    /// Largest integer a float holds exactly.
    const EXACT: f64 = 9_007_199_254_740_992.0;
    match value {
        Json::Number(n) => match n.as_f64() {
            Some(x) if n.is_f64() && x.fract() == 0.0 && x.abs() <= EXACT => Json::from(x as i64),
            _ => Json::Number(n),
        },
        Json::Array(items) => Json::Array(items.into_iter().map(tidy).collect()),
        Json::Object(map) => Json::Object(map.into_iter().map(|(k, v)| (k, tidy(v))).collect()),
        other => other,
    }
}

/// `1 member`, `2 members`, with thousands separators.
pub fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{} {}", count(n), if n == 1 { one } else { many })
}

/// A value that travels as JSON text, for `--json` output: the parsed value,
/// or the text as a JSON string when it does not parse.
pub fn json_value(text: &str) -> Json {
    serde_json::from_str(text).unwrap_or_else(|_| Json::String(text.to_string()))
}

/// Standard output for the CLI. A write to a closed pipe becomes
/// [`Closed`], which `main` turns into a quiet, successful exit.
pub struct Out;

/// Standard output was closed by the reader (`| head`): stop quietly.
#[derive(Debug)]
pub struct Closed;

impl std::fmt::Display for Closed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("standard output was closed")
    }
}

impl std::error::Error for Closed {}

impl Out {
    /// Writes `text` as is (callers end it with a newline).
    pub fn text(text: &str) -> anyhow::Result<()> {
        let mut stdout = std::io::stdout().lock();
        match stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(Closed.into()),
            Err(e) => Err(anyhow::Error::new(e).context("cannot write to standard output")),
        }
    }

    /// Writes `text` and a newline.
    pub fn line(text: &str) -> anyhow::Result<()> {
        Out::text(&format!("{text}\n"))
    }

    /// Writes a JSON value, pretty-printed, and a newline.
    pub fn json(value: &Json) -> anyhow::Result<()> {
        // Serializing a `Value` cannot fail: its keys are strings.
        let text = serde_json::to_string_pretty(value).unwrap_or_default();
        Out::line(&text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Table {
        Table::new(vec![Column::text("name"), Column::num("count"), Column::text("note")])
    }

    #[test]
    fn columns_are_as_wide_as_their_widest_cell() {
        let mut t = table();
        t.push(vec!["country".into(), "12".into(), "a".into()]);
        t.push(vec!["x".into(), "1,234".into(), "".into()]);
        assert_eq!(t.render(), "name     count  note\ncountry     12  a\nx        1,234\n");
        assert_eq!(t.widths(), vec![7, 5, 4]);
    }

    #[test]
    fn a_header_wider_than_the_cells_sets_the_width() {
        let mut t = Table::new(vec![Column::num("applied"), Column::text("x")]);
        t.push(vec!["3".into(), "y".into()]);
        assert_eq!(t.render(), "applied  x\n      3  y\n");
    }

    #[test]
    fn widths_count_characters_not_bytes() {
        let mut t = Table::new(vec![Column::text("city"), Column::num("n")]);
        t.push(vec!["Zürich".into(), "1".into()]);
        t.push(vec!["Lyon".into(), "22".into()]);
        assert_eq!(t.render(), "city     n\nZürich   1\nLyon    22\n");
    }

    #[test]
    fn short_rows_are_padded_and_control_characters_escaped() {
        let mut t = table();
        t.push(vec!["a\nb".into()]);
        assert_eq!(t.render(), "name  count  note\na\\nb\n");
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn an_empty_table_prints_its_header() {
        let t = table();
        assert!(t.is_empty());
        assert_eq!(t.render(), "name  count  note\n");
    }

    #[test]
    fn pages_keep_the_first_pages_widths_and_grow_when_needed() {
        let mut t = table();
        t.push(vec!["abc".into(), "1".into(), "n".into()]);
        let widths = t.widths();
        t.clear();
        t.push(vec!["a".into(), "2".into(), "m".into()]);
        assert_eq!(t.render_with(&widths, false), "a         2  m\n");
        t.clear();
        t.push(vec!["abcdef".into(), "3".into(), "o".into()]);
        assert_eq!(t.render_with(&widths, false), "abcdef      3  o\n");
    }

    #[test]
    fn key_values_line_up() {
        let text = key_values(&[("node", "1".into()), ("uptime", "5m 3s".into()), ("empty", String::new())]);
        assert_eq!(text, "node    1\nuptime  5m 3s\nempty\n");
    }

    #[test]
    fn formatters() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1_000), "1,000");
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(plural(1, "member", "members"), "1 member");
        assert_eq!(plural(1_000, "member", "members"), "1,000 members");
        assert_eq!(share(1, 8), "12.5%");
        assert_eq!(share(1, 0), "-");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
        assert_eq!(duration_ms(850), "850 ms");
        assert_eq!(duration_ms(12_000), "12 s");
        assert_eq!(duration_ms(303_000), "5m 3s");
        assert_eq!(duration_ms(2 * 3_600_000 + 14 * 60_000), "2h 14m");
        assert_eq!(duration_ms(3 * 86_400_000 + 4 * 3_600_000), "3d 4h");
        assert_eq!(elapsed(std::time::Duration::from_micros(420)), "0.42 ms");
        assert_eq!(elapsed(std::time::Duration::from_millis(1520)), "1.52 s");
    }

    #[test]
    fn json_cells_are_shown_plainly() {
        assert_eq!(json_cell(r#""FR""#), "FR");
        assert_eq!(json_cell(r#"["vip","beta"]"#), "vip, beta");
        assert_eq!(json_cell("42.5"), "42.5");
        assert_eq!(json_cell("31.0"), "31");
        assert_eq!(json_cell("-2.0"), "-2");
        assert_eq!(json_cell(r#"{"amount":120.0,"n":[1.5,2.0]}"#), r#"{"amount":120,"n":[1.5,2]}"#);
        assert_eq!(json_cell("true"), "true");
        assert_eq!(json_cell("null"), "null");
        assert_eq!(json_cell(r#"{"a": 1}"#), r#"{"a":1}"#);
        assert_eq!(json_cell("not json"), "not json");
        assert_eq!(json_value("3"), serde_json::json!(3));
        assert_eq!(json_value("oops"), serde_json::json!("oops"));
    }
}
