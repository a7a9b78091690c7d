//! The NDJSON writer: Segment Spec messages, one per line.
//!
//! A profile becomes one `identify` (every trait, both identifiers, at the
//! signup time) followed by one `track` per event in time order. A track
//! carries the `userId`, or, for about 10 % of them, only the `anonymousId`.
//! Written by hand into a byte buffer, without serde, because this is the
//! generator's hot path.

use crate::time::write_rfc3339_ms;
use crate::{Profile, Value};

/// Appends `s` to `out` as a JSON string literal, quotes included: `"` and
/// `\` are escaped, control characters become `\n`, `\t`, ... or `\u00XX`;
/// everything else (including non-ASCII UTF-8) is copied as is.
pub fn write_json_str(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => {
                out.extend_from_slice(&bytes[start..i]);
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(esc);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Appends a number: integral values below 2^53 without a fraction
/// (`37`, not `37.0`), others in the shortest form that reads back exactly,
/// and `null` for NaN and infinities, which JSON cannot express.
pub fn write_json_num(x: f64, out: &mut Vec<u8>) {
    if x.is_finite() && x.fract() == 0.0 && x.abs() < 9_007_199_254_740_992.0 {
        out.extend_from_slice(itoa::Buffer::new().format(x as i64).as_bytes());
    } else if x.is_finite() {
        out.extend_from_slice(ryu::Buffer::new().format_finite(x).as_bytes());
    } else {
        out.extend_from_slice(b"null");
    }
}

/// Appends a [`Value`] as JSON (a [`Value::Time`] as an RFC 3339 string).
pub fn write_json_value(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Str(s) => write_json_str(s, out),
        Value::Num(x) => write_json_num(*x, out),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::List(items) => {
            out.push(b'[');
            for (k, item) in items.iter().enumerate() {
                if k > 0 {
                    out.push(b',');
                }
                write_json_str(item, out);
            }
            out.push(b']');
        }
        Value::Time(ts) => {
            out.push(b'"');
            write_rfc3339_ms(*ts, out);
            out.push(b'"');
        }
    }
}

/// Appends a JSON object of `(key, value)` pairs.
fn write_object(fields: &[(&'static str, Value)], out: &mut Vec<u8>) {
    out.push(b'{');
    for (k, (name, value)) in fields.iter().enumerate() {
        if k > 0 {
            out.push(b',');
        }
        write_json_str(name, out);
        out.push(b':');
        write_json_value(value, out);
    }
    out.push(b'}');
}

/// Appends `"messageId":"m{index}-{seq}"`.
fn write_message_id(index: u64, seq: usize, out: &mut Vec<u8>) {
    out.extend_from_slice(b"\"messageId\":\"m");
    out.extend_from_slice(itoa::Buffer::new().format(index).as_bytes());
    out.push(b'-');
    out.extend_from_slice(itoa::Buffer::new().format(seq).as_bytes());
    out.push(b'"');
}

fn write_timestamp(ts_ms: i64, out: &mut Vec<u8>) {
    out.extend_from_slice(b"\"timestamp\":\"");
    write_rfc3339_ms(ts_ms, out);
    out.push(b'"');
}

/// Appends the messages of `p` to `out`, one per line (each ends with
/// `\n`): the identify, then one track per event. Returns the number of
/// messages written.
pub fn write_ndjson(p: &Profile, out: &mut Vec<u8>) -> usize {
    out.extend_from_slice(b"{\"type\":\"identify\",");
    write_message_id(p.index, 0, out);
    out.extend_from_slice(b",\"userId\":");
    write_json_str(&p.user_id, out);
    out.extend_from_slice(b",\"anonymousId\":");
    write_json_str(&p.anonymous_id, out);
    out.push(b',');
    write_timestamp(p.identify_ts_ms, out);
    out.extend_from_slice(b",\"traits\":");
    write_object(&p.traits, out);
    out.extend_from_slice(b"}\n");

    for (k, e) in p.events.iter().enumerate() {
        out.extend_from_slice(b"{\"type\":\"track\",");
        write_message_id(p.index, k + 1, out);
        if e.anonymous_only {
            out.extend_from_slice(b",\"anonymousId\":");
            write_json_str(&p.anonymous_id, out);
        } else {
            out.extend_from_slice(b",\"userId\":");
            write_json_str(&p.user_id, out);
        }
        out.extend_from_slice(b",\"event\":");
        write_json_str(e.name, out);
        out.push(b',');
        write_timestamp(e.ts_ms, out);
        out.extend_from_slice(b",\"properties\":");
        write_object(&e.properties, out);
        out.extend_from_slice(b"}\n");
    }
    p.message_count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{parse_rfc3339_ms, profile, Config, DEFAULT_NOW_MS, EVENT_WINDOW_MS};
    use serde_json::Value as J;
    use std::collections::HashSet;

    fn escaped(s: &str) -> String {
        let mut out = Vec::new();
        write_json_str(s, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn escapes_strings() {
        assert_eq!(escaped("plain"), r#""plain""#);
        assert_eq!(escaped(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(escaped("l1\nl2\r\t\u{8}\u{c}"), r#""l1\nl2\r\t\b\f""#);
        assert_eq!(escaped("\u{0}\u{1f}x\u{7f}"), "\"\\u0000\\u001fx\u{7f}\"");
        assert_eq!(escaped("Zoë 東京 😀"), "\"Zoë 東京 😀\"");
        assert_eq!(escaped(""), r#""""#);
        // Every string survives a round trip through a real JSON parser.
        let all: String = (0u32..0x250).filter_map(char::from_u32).collect();
        for s in [all.as_str(), "\"\\\"\\", "end\\", "\u{2028}\u{2029}"] {
            let back: String = serde_json::from_str(&escaped(s)).unwrap();
            assert_eq!(back, s);
        }
    }

    #[test]
    fn writes_numbers() {
        let num = |x: f64| {
            let mut out = Vec::new();
            write_json_num(x, &mut out);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(num(37.0), "37");
        assert_eq!(num(0.0), "0");
        assert_eq!(num(12.34), "12.34");
        assert_eq!(num(-0.5), "-0.5");
        assert_eq!(num(1e300), "1e300");
        assert_eq!(num(f64::NAN), "null");
    }

    #[test]
    fn every_line_is_a_valid_segment_message() {
        let cfg = Config { seed: 3, profiles: 300, now_ms: DEFAULT_NOW_MS };
        let mut out = Vec::new();
        let mut expected = 0;
        for i in 0..cfg.profiles {
            expected += write_ndjson(&profile(&cfg, i), &mut out);
        }
        let text = std::str::from_utf8(&out).unwrap();
        assert!(text.ends_with('\n'));
        let mut ids = HashSet::new();
        let mut lines = 0;
        let mut current_user = String::new();
        let mut current_anon = String::new();
        for line in text.lines() {
            lines += 1;
            let m: J = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
            let id = m["messageId"].as_str().unwrap().to_owned();
            assert!(ids.insert(id), "duplicate messageId");
            let ts = parse_rfc3339_ms(m["timestamp"].as_str().unwrap()).unwrap();
            assert!(ts < cfg.now_ms);
            match m["type"].as_str().unwrap() {
                "identify" => {
                    current_user = m["userId"].as_str().unwrap().to_owned();
                    current_anon = m["anonymousId"].as_str().unwrap().to_owned();
                    let traits = m["traits"].as_object().unwrap();
                    for name in crate::TRAIT_NAMES {
                        assert!(traits.contains_key(name), "missing trait {name}");
                    }
                    assert!(traits["country"].is_string());
                    assert!(traits["age"].is_u64());
                    assert!(traits["ltv"].is_number());
                    assert!(traits["tags"].is_array());
                    assert!(traits["newsletter"].is_boolean());
                    let signup = parse_rfc3339_ms(traits["signup_at"].as_str().unwrap()).unwrap();
                    assert_eq!(signup, ts);
                    assert!(traits["email"].as_str().unwrap().starts_with(&current_user));
                }
                "track" => {
                    assert!(ts >= cfg.now_ms - EVENT_WINDOW_MS);
                    assert!(m["event"].is_string());
                    assert!(m["properties"].is_object());
                    // Either identifier, never both, and always the current
                    // profile's.
                    match (m.get("userId"), m.get("anonymousId")) {
                        (Some(u), None) => assert_eq!(u.as_str().unwrap(), current_user),
                        (None, Some(a)) => assert_eq!(a.as_str().unwrap(), current_anon),
                        other => panic!("bad identifiers {other:?}"),
                    }
                }
                other => panic!("unexpected type {other}"),
            }
        }
        assert_eq!(lines, expected);
    }
}
