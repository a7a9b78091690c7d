//! The CSV writer: the bridge to DuckDB (and ClickHouse) for the benchmark.
//!
//! Two tables keyed by the profile index: `profiles.csv` (one row per
//! profile, tags joined with `|`, `signup_at_ms` in epoch milliseconds) and
//! `events.csv` (one row per event, one column per property, empty where the
//! event has no such property). Fields are quoted per RFC 4180 only when they
//! need it; numbers are written as in JSON.

use crate::json::write_json_num;
use crate::{Profile, Value, TRAIT_NAMES};

/// Header line of `profiles.csv`, with its newline.
pub const PROFILES_CSV_HEADER: &str =
    "profile,user_id,anonymous_id,country,city,age,plan,signup_at_ms,ltv,email,tags,newsletter\n";

/// Header line of `events.csv`, with its newline.
pub const EVENTS_CSV_HEADER: &str =
    "profile,name,ts_ms,path,referrer,platform,sku,price,amount,category,currency,campaign,link\n";

/// Property columns of `events.csv`, after `profile,name,ts_ms`.
const EVENT_PROPERTY_COLUMNS: [&str; 10] =
    ["path", "referrer", "platform", "sku", "price", "amount", "category", "currency", "campaign", "link"];

/// Appends `s` as one CSV field: as is, or quoted with inner quotes doubled
/// when it contains a comma, a quote or a line break.
pub fn write_csv_field(s: &str, out: &mut Vec<u8>) {
    if s.bytes().any(|b| matches!(b, b',' | b'"' | b'\n' | b'\r')) {
        out.push(b'"');
        for b in s.bytes() {
            if b == b'"' {
                out.push(b'"');
            }
            out.push(b);
        }
        out.push(b'"');
    } else {
        out.extend_from_slice(s.as_bytes());
    }
}

/// Appends a [`Value`] as one CSV field: lists joined with `|`, times as
/// epoch milliseconds, booleans as `true` / `false`.
pub fn write_csv_value(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Str(s) => write_csv_field(s, out),
        Value::Num(x) => write_json_num(*x, out),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::List(items) => {
            let joined = items.join("|");
            write_csv_field(&joined, out);
        }
        Value::Time(ts) => out.extend_from_slice(itoa::Buffer::new().format(*ts).as_bytes()),
    }
}

fn lookup<'a>(fields: &'a [(&'static str, Value)], name: &str) -> Option<&'a Value> {
    fields.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
}

/// Appends the row of `p` to `profiles` and one row per event to `events`
/// (no headers: see [`PROFILES_CSV_HEADER`] and [`EVENTS_CSV_HEADER`]).
/// Returns the number of messages the profile stands for (as in NDJSON).
pub fn write_csv_rows(p: &Profile, profiles: &mut Vec<u8>, events: &mut Vec<u8>) -> usize {
    let mut index = itoa::Buffer::new();
    let index = index.format(p.index).as_bytes();

    profiles.extend_from_slice(index);
    profiles.push(b',');
    write_csv_field(&p.user_id, profiles);
    profiles.push(b',');
    write_csv_field(&p.anonymous_id, profiles);
    // The trait columns follow TRAIT_NAMES (`signup_at` is `signup_at_ms`).
    for name in TRAIT_NAMES {
        profiles.push(b',');
        if let Some(v) = lookup(&p.traits, name) {
            write_csv_value(v, profiles);
        }
    }
    profiles.push(b'\n');

    for e in &p.events {
        events.extend_from_slice(index);
        events.push(b',');
        write_csv_field(e.name, events);
        events.push(b',');
        events.extend_from_slice(itoa::Buffer::new().format(e.ts_ms).as_bytes());
        for name in EVENT_PROPERTY_COLUMNS {
            events.push(b',');
            if let Some(v) = lookup(&e.properties, name) {
                write_csv_value(v, events);
            }
        }
        events.push(b'\n');
    }
    p.message_count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{profile, Config};

    #[test]
    fn quotes_only_when_needed() {
        let field = |s: &str| {
            let mut out = Vec::new();
            write_csv_field(s, &mut out);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(field("plain"), "plain");
        assert_eq!(field("a,b"), "\"a,b\"");
        assert_eq!(field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(field("two\nlines"), "\"two\nlines\"");
    }

    #[test]
    fn rows_match_the_headers() {
        let cfg = Config::default();
        let (mut profiles, mut events) = (Vec::new(), Vec::new());
        let mut n_events = 0;
        for i in 0..200 {
            let p = profile(&cfg, i);
            n_events += p.events.len();
            write_csv_rows(&p, &mut profiles, &mut events);
        }
        let cols = |h: &str| h.trim_end().split(',').count();
        let profiles = String::from_utf8(profiles).unwrap();
        let events = String::from_utf8(events).unwrap();
        assert_eq!(profiles.lines().count(), 200);
        assert_eq!(events.lines().count(), n_events);
        // Generated values contain no comma or quote, so a plain split works.
        for line in profiles.lines() {
            let f: Vec<&str> = line.split(',').collect();
            assert_eq!(f.len(), cols(PROFILES_CSV_HEADER), "{line}");
            assert_eq!(f[1], format!("u{}", f[0]));
            assert!(f[5].parse::<u32>().is_ok(), "age {line}");
            assert!(f[7].parse::<i64>().unwrap() < cfg.now_ms);
            assert!(f[11] == "true" || f[11] == "false");
        }
        for line in events.lines() {
            let f: Vec<&str> = line.split(',').collect();
            assert_eq!(f.len(), cols(EVENTS_CSV_HEADER), "{line}");
            let filled = f[3..].iter().filter(|v| !v.is_empty()).count();
            assert!((1..=3).contains(&filled), "{line}");
            if f[1] == "purchase" {
                assert!(f[8].parse::<f64>().unwrap() > 0.0);
                assert!(f[10] == "USD" || f[10] == "EUR");
            }
        }
    }
}
